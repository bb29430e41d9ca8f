//! `portico demo`: two in-process echo replicas behind the proxy, so a
//! fresh checkout shows routing, round robin and Interlock's headers with
//! nothing else installed.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const DEMO_HOST: &str = "foo.app.test";

/// Starts a replica that answers with its name and what it received.
pub async fn start_replica(
    name: &'static str,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve_replica(listener, name.into(), stop));
    Ok(addr)
}

/// Serves the echo replica on `listener` until `stop`, then closes its
/// keep-alive connections gracefully (finishing requests in flight), as a
/// well-behaved backend does when its orchestrator stops it.
pub async fn serve_replica(listener: TcpListener, name: Arc<str>, stop: CancellationToken) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
        };
        let name = name.clone();
        let svc = service_fn(move |req| {
            let name = name.clone();
            async move { Ok::<_, Infallible>(echo(&name, req)) }
        });
        let builder = auto::Builder::new(TokioExecutor::new());
        let conn = graceful.watch(
            builder
                .serve_connection(TokioIo::new(stream), svc)
                .into_owned(),
        );
        tokio::spawn(conn);
    }
    drop(listener);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
}

fn echo(name: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut body = String::new();
    let _ = writeln!(body, "replica: {name}");
    let _ = writeln!(body, "method: {}", req.method());
    let _ = writeln!(body, "path: {}", req.uri());
    let _ = writeln!(body, "headers:");
    for (k, v) in req.headers() {
        let _ = writeln!(body, "  {k}: {}", String::from_utf8_lossy(v.as_bytes()));
    }
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        "content-type",
        "text/plain; charset=utf-8".parse().expect("static"),
    );
    resp
}

/// The config the demo runs: one service on [`DEMO_HOST`] over the replicas.
pub fn config_text(listen: SocketAddr, replicas: &[SocketAddr]) -> String {
    let upstreams: Vec<String> = replicas.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[proxy]\nhttp_listen = \"{listen}\"\n\n[[service]]\nname = \"demo_foo\"\nhosts = [\"{DEMO_HOST}\"]\nupstreams = [{}]\n",
        upstreams.join(", ")
    )
}

pub fn instructions(listen: SocketAddr) -> String {
    format!(
        "\nPortico demo: {DEMO_HOST} is routed to two replicas (demo-1, demo-2).\n\
         Try, as in the Interlock functional test:\n\n\
         \x20 curl -sS -D - -H \"Host: {DEMO_HOST}\" http://{listen}/\n\
         \x20     (repeat it: the replica alternates; note the x-* headers)\n\
         \x20 curl -sS -D - http://{listen}/\n\
         \x20     (no matching Host: 503, as Interlock answers)\n\
         \x20 curl -sS -D - --resolve {DEMO_HOST}:{port}:{ip} http://{DEMO_HOST}:{port}/hello\n\n\
         Press Ctrl-C to stop.\n",
        port = listen.port(),
        ip = listen.ip(),
    )
}
