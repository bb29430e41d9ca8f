//! The listener loop: accept, serve HTTP/1.1 and h2c on each connection,
//! and on shutdown stop accepting and drain for the grace period.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{forward, Proxy};

/// Serves plain HTTP on an already-bound listener until `shutdown` is
/// cancelled, then lets in-flight requests finish within the configured
/// grace period. Returns once every connection is closed or the grace
/// period is over.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors or similar: back off briefly
                // rather than spin; the listener itself stays usable.
                tracing::warn!(listen = %local, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let snapshot = proxy.snapshot();
        let handler = proxy.clone();
        let service = service_fn(move |req| {
            let proxy = handler.clone();
            async move { Ok::<_, Infallible>(forward::handle(proxy, peer, req).await) }
        });
        let conn = snapshot
            .conn_builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    let open = graceful.count();
    let grace = proxy.snapshot().config.proxy.shutdown_grace;
    tracing::info!(listen = %local, connections = open, grace = ?grace, "stopped accepting; draining");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listen = %local, grace = ?grace, "grace period over; closing the remaining connections");
    }
    Ok(())
}
