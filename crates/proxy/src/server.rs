//! The listeners: accept, then serve HTTP/1.1 and HTTP/2 on each
//! connection: in cleartext (HTTP/2 by prior knowledge), or over TLS after
//! reading the ClientHello, which decides between terminating TLS with the
//! certificate its SNI selects, relaying the raw connection to a
//! passthrough service, or refusing the name. On shutdown, stop accepting
//! and drain for the grace period.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Slot;
use crate::context::{ConnInfo, TlsInfo};
use crate::forward;
use crate::metrics::{Listener, Protocol, TlsFailure};
use crate::snapshot::Snapshot;
use crate::Proxy;

/// Largest ClientHello read before giving up on a connection.
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// A fatal `unrecognized_name` alert record (TLS 1.2 framing, which TLS 1.3
/// clients accept before the handshake has negotiated anything).
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// Serves plain HTTP on an already-bound listener until `shutdown` is
/// cancelled, then lets in-flight requests finish within the configured
/// grace period. Returns once every connection is closed or the grace
/// period is over.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> io::Result<()> {
    run(proxy, listener, shutdown, false).await
}

/// Serves HTTPS (and TLS passthrough) on an already-bound listener, like [`serve`].
pub async fn serve_https(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> io::Result<()> {
    run(proxy, listener, shutdown, true).await
}

async fn run(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    shutdown: CancellationToken,
    https: bool,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    proxy.start_upkeep();
    let (shared, parked) =
        crate::h1::Shared::new(proxy.snapshot().config.proxy.client_header_timeout);
    tokio::spawn(shared.clone().tick(proxy.clone()));
    tokio::spawn(shared.clone().park(proxy.clone(), parked));
    // Passthrough tunnels are not HTTP connections hyper can wind down;
    // they are tracked separately and get the same grace period.
    let tunnels = TaskTracker::new();
    let admission = proxy.admission.clone();
    let cap = || admission.cap(proxy.snapshot().config.proxy.max_client_connections);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (mut stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors or similar: back off briefly
                // rather than spin; the listener itself stays usable.
                tracing::warn!(listen = %local, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A place under max_client_connections. At the cap this loop holds
        // the one connection it accepted, unread, and accepts no more: the
        // rest wait in the backlog rather than take descriptors that
        // upstream connections need, and idle connections are closed to
        // make room (see `h1::Shared::park`).
        let slot = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            s = admission.admit(cap) => Arc::new(s),
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let expect_header = {
            let p = &proxy.snapshot().config.proxy;
            if https {
                p.https_proxy_protocol
            } else {
                p.http_proxy_protocol
            }
        };
        if https {
            let tunnels = tunnels.clone();
            let shared = shared.clone();
            if expect_header {
                tokio::spawn(async move {
                    if let Some(peer) = proxied_peer(&proxy, &mut stream, peer).await {
                        tls_connection(proxy, stream, peer, shared, tunnels, slot).await;
                    }
                });
            } else {
                tokio::spawn(tls_connection(proxy, stream, peer, shared, tunnels, slot));
            }
        } else if expect_header {
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Some(peer) = proxied_peer(&proxy, &mut stream, peer).await {
                    crate::h1::serve(stream, proxy, peer, shared, slot).await;
                }
            });
        } else {
            tokio::spawn(crate::h1::serve(stream, proxy, peer, shared.clone(), slot));
        }
    }
    drop(listener);
    tunnels.close();
    let grace = proxy.snapshot().config.proxy.shutdown_grace;
    let connections = shared.open() + shared.hyper_connections() + tunnels.len();
    tracing::info!(listen = %local, connections, grace = ?grace, "stopped accepting; draining");
    let graceful = shared.stop();
    let drained = async {
        // Done when every connection has closed, or when no request is in
        // flight any more: an idle keep-alive connection that hyper hasn't
        // wound down yet has nothing left to lose.
        let closed = async {
            if let Some(graceful) = graceful {
                graceful.shutdown().await;
            }
            while shared.open() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::pin!(closed);
        tokio::select! {
            _ = &mut closed => {}
            _ = async {
                while proxy.requests_in_flight() > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            } => {
                // The last responses are written; give their connections a
                // moment to flush and close before the process goes.
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut closed).await;
            }
        }
        tunnels.wait().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(listen = %local, grace = ?grace, "grace period over; closing the remaining connections");
    }
    Ok(())
}

struct ClientHello {
    /// Every byte read so far, to be replayed to rustls or to a passthrough upstream.
    bytes: Vec<u8>,
    /// The server name asked for, lower case.
    sni: Option<String>,
}

async fn read_client_hello(stream: &mut TcpStream) -> Result<ClientHello, String> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut bytes = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before a complete ClientHello".into());
        }
        bytes.extend_from_slice(&chunk[..n]);
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            acceptor.read_tls(&mut fresh).map_err(|e| e.to_string())?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted
                    .client_hello()
                    .server_name()
                    .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
                return Ok(ClientHello { bytes, sni });
            }
            Ok(None) if bytes.len() > MAX_CLIENT_HELLO => {
                return Err(format!(
                    "no complete ClientHello in {MAX_CLIENT_HELLO} bytes"
                ));
            }
            Ok(None) => {}
            Err((e, _)) => return Err(format!("not a TLS ClientHello: {e}")),
        }
    }
}

async fn tls_connection(
    proxy: Arc<Proxy>,
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<crate::h1::Shared>,
    tunnels: TaskTracker,
    slot: Arc<Slot>,
) {
    let snap = proxy.snapshot();
    let limit = snap.config.proxy.client_header_timeout;
    let hello = match tokio::time::timeout(limit, read_client_hello(&mut stream)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, error = %e, "TLS connection refused");
            proxy.stats.tls_failed(TlsFailure::NoClientHello);
            return;
        }
        Err(_) => {
            tracing::debug!(client = %peer, "no ClientHello within client_header_timeout");
            proxy.stats.tls_failed(TlsFailure::NoClientHello);
            return;
        }
    };
    let site = hello.sni.as_deref().and_then(|s| snap.table.lookup_site(s));
    if let Some(site) = site.map(|s| snap.table.site(s)) {
        // Validation keeps a passthrough site to one path: the connection's
        // bytes are never read, so no path could choose between several.
        if let (true, Some(&route)) = (site.passthrough, site.rules.last()) {
            let _gauge = proxy
                .stats
                .open(Listener::Https, Protocol::Passthrough, Some(slot));
            tunnels
                .track_future(passthrough(snap, route, stream, hello, peer))
                .await;
            return;
        }
    }
    if snap.certs.0.resolve(hello.sni.as_deref()).is_none() {
        tracing::warn!(
            sni = hello.sni.as_deref().unwrap_or("-"),
            client = %peer,
            "no certificate for the requested name; handshake refused"
        );
        proxy.stats.tls_failed(TlsFailure::UnknownName);
        let _ = stream.write_all(&UNRECOGNIZED_NAME_ALERT).await;
        return;
    }
    let Some(config) = snap.tls_config.clone() else {
        return;
    };
    drop(snap);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let io = crate::io::Prefixed::new(hello.bytes, stream);
    let tls = match tokio::time::timeout(limit, acceptor.accept(io)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, sni = hello.sni.as_deref().unwrap_or("-"), error = %e, "TLS handshake failed");
            proxy.stats.tls_failed(TlsFailure::of(&e));
            return;
        }
        Err(_) => {
            tracing::debug!(client = %peer, "TLS handshake timed out");
            proxy.stats.tls_failed(TlsFailure::Timeout);
            return;
        }
    };
    proxy.stats.tls_handshake();
    let (alpn, protocol) = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => (forward::Alpn::H2, Protocol::H2),
        _ => (forward::Alpn::Http1, Protocol::Http1),
    };
    let gauge = proxy.stats.open(Listener::Https, protocol, Some(slot));
    let info = TlsInfo { sni: hello.sni };
    if alpn == forward::Alpn::Http1 {
        // HTTP/1.1 over TLS is bytes like any other: the fast path serves
        // it (and hands it to hyper where it would a cleartext one).
        crate::h1::serve_tls(tls, info, proxy, peer, shared, gauge).await;
        return;
    }
    let info = ConnInfo::new(proxy, peer, Some(info), gauge.slot());
    let io = crate::io::FirstReadDeadline {
        inner: tls,
        deadline: Some(Box::pin(tokio::time::sleep(limit))),
    };
    // A connection accepted as the listener stopped is still answered
    // (without a watcher, hyper closes it after what it carries).
    forward::serve_http(io, info, alpn, shared.watcher()).await;
    drop(gauge);
}

/// The client's address from the PROXY protocol header an external load
/// balancer sends first (the balancer's own for its health checks), or
/// `None` when the header is missing or malformed: such a connection is
/// closed, since who the client is cannot be known.
async fn proxied_peer(
    proxy: &Proxy,
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Option<SocketAddr> {
    let (limit, from_trusted) = {
        let p = &proxy.snapshot().config.proxy;
        let trusted = &p.trusted_proxies;
        let from_trusted = trusted.is_empty() || trusted.iter().any(|c| c.contains(peer.ip()));
        (p.client_header_timeout, from_trusted)
    };
    if !from_trusted {
        // With trusted_proxies set, only they may say who the client is:
        // anyone else reaching the port directly could claim any address.
        tracing::debug!(peer = %peer, "connection refused: PROXY protocol header from a peer not in trusted_proxies");
        return None;
    }
    match crate::proxy_protocol::read_header(stream, limit).await {
        Ok(crate::proxy_protocol::Header::Proxied { source, .. }) => Some(source),
        Ok(crate::proxy_protocol::Header::Local) => Some(peer),
        Err(e) => {
            tracing::debug!(peer = %peer, error = %e, "connection refused: PROXY protocol header expected");
            None
        }
    }
}

/// Relays a TLS connection as it is to one of the route's upstreams, which
/// terminates TLS itself; the ClientHello already read is sent first.
async fn passthrough(
    snap: Arc<Snapshot>,
    route: usize,
    client: TcpStream,
    hello: ClientHello,
    peer: SocketAddr,
) {
    let start = Instant::now();
    let pool = &snap.pools[route];
    let rules = snap.table.route(route);
    let affinity = crate::pipeline::affinity(rules, std::iter::empty(), peer.ip());
    let first = crate::balance::first(&pool.upstreams, rules.balance, affinity, || {
        pool.next_start()
    });
    let mut exchange = TunnelExchange {
        hello: &hello.bytes,
    };
    let mut attempts = crate::pipeline::Attempts::default();
    let tried = crate::pipeline::try_upstreams(pool, first, &mut exchange, &mut attempts)
        .await
        .map(|(up, upstream, held)| (up, upstream.addr, held));
    // Keep what the tunnel needs and let the snapshot go: a tunnel may live
    // for hours, and must not keep old configs alive.
    let label = pool.label.clone();
    let idle = snap.config.proxy.tunnel_idle_timeout;
    drop(snap);
    let sni = hello.sni.as_deref().unwrap_or("-");
    // `_held` counts the tunnel (service cap, upstream) while it lasts.
    let (up, addr, _held) = match tried {
        Ok(ok) => ok,
        Err(e) => {
            tracing::warn!(client = %peer.ip(), sni, service = %label, error = %e, "passthrough failed: no upstream could take the connection");
            return;
        }
    };
    let (result, (sent, received)) = crate::io::relay(client, up, idle).await;
    tracing::info!(
        target: crate::access_log::TARGET,
        client = %peer.ip(),
        sni,
        service = %label,
        upstream = %addr,
        bytes_in = sent + hello.bytes.len() as u64,
        bytes_out = received,
        duration = %crate::access_log::seconds(start.elapsed()),
        end = %result.err().map_or_else(|| "closed".to_owned(), |e| e.to_string()),
        "tunnel"
    );
}

/// A passthrough connection on its way to an upstream: connected, and the
/// ClientHello already read from the client replayed to it.
struct TunnelExchange<'a> {
    hello: &'a [u8],
}

impl crate::pipeline::Exchange for TunnelExchange<'_> {
    type Conn = TcpStream;
    type Out = TcpStream;

    async fn connect(
        &self,
        pool: &crate::snapshot::Pool,
        upstream: &Arc<crate::upstream::Upstream>,
    ) -> Result<TcpStream, crate::upstream::ConnectError> {
        use crate::upstream::ConnectError;
        let connect = TcpStream::connect(upstream.addr);
        match tokio::time::timeout(pool.connect_timeout, connect).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ConnectError::Timeout(pool.connect_timeout)),
        }
    }

    fn status(_: &TcpStream) -> Option<u16> {
        None
    }

    async fn send(
        &mut self,
        _pool: &crate::snapshot::Pool,
        _upstream: &Arc<crate::upstream::Upstream>,
        mut up: TcpStream,
    ) -> crate::pipeline::Outcome<TcpStream> {
        use crate::pipeline::Outcome;
        match up.write_all(self.hello).await {
            Ok(()) => Outcome::Answered(up),
            Err(e) => Outcome::Next(e.to_string()),
        }
    }
}
