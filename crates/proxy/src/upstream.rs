//! Connections to one upstream address: a bounded set of HTTP/1.1 keep-alive
//! connections, reused across requests and across config versions.
//!
//! Why our own pool rather than hyper-util's client: the proxy must know
//! whether a request was sent before an error (to retry safely on another
//! replica), must cap connections per backend, and must get the request back
//! when a pooled connection turns out to be closed. Checking out a
//! connection *before* handing over the request gives all three.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_model::{FileData, UpstreamOptions, UpstreamProtocol};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::health::Health;
use crate::io::lock;
use crate::upload::ProxyBody;

/// Limits an [`Upstream`] is built with; a config change to them builds new ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamLimits {
    pub max_connections: usize,
    pub max_idle: usize,
}

/// How connections to an upstream are made: the protocol, and TLS if any.
#[derive(Clone)]
pub struct Transport {
    pub options: UpstreamOptions,
    /// The client TLS config, or why it could not be built (then every
    /// connect fails with that reason, and the service answers 502).
    pub tls: Option<Result<(Arc<ClientConfig>, ServerName<'static>), String>>,
    /// The CA file's contents the TLS config was built from, so a changed CA
    /// file makes a new upstream rather than reusing one with the old trust.
    pub ca_data: Option<FileData>,
}

impl Transport {
    pub fn plain() -> Transport {
        Transport {
            options: UpstreamOptions::default(),
            tls: None,
            ca_data: None,
        }
    }

    fn same_as(&self, other: &Transport) -> bool {
        self.options == other.options && self.ca_data == other.ca_data
    }
}

/// A health check's answer body read beyond this is not worth its
/// connection: the status counts, the connection is closed.
const MAX_CHECK_BODY: usize = 64 * 1024;

/// How long an idle connection is kept before it is closed instead of reused.
/// Shorter than the keep-alive timeout of common backends (nginx: 75 s,
/// Go net/http: none, Node: 5 s is the outlier), so reuse rarely races a close.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

pub struct Upstream {
    pub addr: SocketAddr,
    /// `addr` as a header value (`x-upstream-addr`), made once.
    pub addr_value: HeaderValue,
    /// [`stable_hash`] of `addr`, its identity for consistent hashing.
    pub addr_hash: u64,
    /// Requests sent and not yet answered, for least-request balancing.
    in_flight: AtomicUsize,
    pub limits: UpstreamLimits,
    pub transport: Transport,
    /// Counts open connections, busy and idle, against `max_connections`.
    slots: Arc<Semaphore>,
    /// Each worker's idle and multiplexed connections (see [`Shard`]).
    shards: Box<[Shard]>,
    /// What checks and failed requests say of it; carried over to the
    /// upstream that replaces it on a reload (same address and protocol).
    pub health: Arc<Health>,
    /// Its counters for metrics, carried over like `health`.
    pub stats: Arc<crate::metrics::UpstreamStats>,
}

/// One worker's connections to an upstream. A connection is served by the
/// reactor of the worker that opened it; kept apart per worker, it is never
/// driven from another thread (see [`crate::workers`]).
#[derive(Default)]
struct Shard {
    /// Idle keep-alive connections of both request paths, most recently
    /// used last, capped together at the worker's share of `max_idle`.
    idle: Mutex<Vec<Idle>>,
    /// The multiplexed connection, for HTTP/2 upstreams.
    shared: Mutex<Option<Conn>>,
}

/// A request in flight on an upstream (see [`Upstream::busy`]), until its
/// response has been passed on whole.
pub struct Busy(Arc<Upstream>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Idle {
    conn: IdleConn,
    since: Instant,
}

/// An idle connection as the path that used it last left it: hyper's
/// (HTTP/1.1 over cleartext or TLS), or the fast path's bare socket, which
/// hyper can take over (not the other way round).
enum IdleConn {
    Hyper(Conn),
    Raw(RawConn),
}

impl Idle {
    /// Still worth keeping: not idle too long, not closed by the upstream.
    fn usable(&self) -> bool {
        self.since.elapsed() <= IDLE_TIMEOUT
            && match &self.conn {
                IdleConn::Hyper(c) => !c.is_closed(),
                IdleConn::Raw(r) => still_open(&r.stream),
            }
    }
}

/// A bare connection for the HTTP/1.1 fast path, and the slot it occupies.
pub struct RawConn {
    pub stream: TcpStream,
    /// Whether it served an earlier request: a reused connection may have
    /// been closed by the upstream just as the request was written.
    pub reused: bool,
    slot: OwnedSemaphorePermit,
}

pub enum Sender {
    Http1(http1::SendRequest<ProxyBody>),
    Http2(http2::SendRequest<ProxyBody>),
}

/// An open connection (or, for HTTP/2, a handle on the shared one) and the
/// slot it occupies; the slot is freed when the last handle is dropped.
pub struct Conn {
    pub sender: Sender,
    slot: Arc<OwnedSemaphorePermit>,
    /// It came from the idle pool: the upstream may have closed it just as
    /// the request was written (the keep-alive race).
    pub reused: bool,
}

impl Conn {
    pub fn is_http2(&self) -> bool {
        matches!(self.sender, Sender::Http2(_))
    }

    fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::Http1(s) => s.is_closed(),
            Sender::Http2(s) => s.is_closed(),
        }
    }

    /// Sends the request; when the connection turned out unable to take it,
    /// the error carries the request back.
    pub async fn send(
        &mut self,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<ProxyBody>>> {
        match &mut self.sender {
            Sender::Http1(s) => s.try_send_request(req).await,
            Sender::Http2(s) => s.try_send_request(req).await,
        }
    }
}

/// Why a health check has no status.
#[derive(Debug)]
pub(crate) enum ProbeFailed {
    /// The upstream failed it.
    Upstream(String),
    /// This process could not open the connection: the check says nothing
    /// of the upstream.
    Local(String),
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection refused or failed: {0}")]
    Io(io::Error),
    /// This process, not the upstream, could not open the connection.
    #[error("the proxy cannot open a connection: {0} (out of descriptors or local ports: see max_client_connections)")]
    Local(io::Error),
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("all {0} connections to this upstream are busy")]
    Saturated(usize),
    #[error("TLS to the upstream failed: {0}")]
    Tls(String),
    #[error("HTTP handshake failed: {0}")]
    Handshake(hyper::Error),
}

impl From<io::Error> for ConnectError {
    /// A connect's error, told apart by who caused it: an upstream that
    /// failed is ejected after a few; a proxy out of descriptors must not
    /// eject every upstream it has.
    fn from(e: io::Error) -> ConnectError {
        use rustix::io::Errno;
        let local = [
            Errno::MFILE,
            Errno::NFILE,
            Errno::NOBUFS,
            Errno::NOMEM,
            Errno::ADDRNOTAVAIL,
        ]
        .iter()
        .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()));
        if local {
            ConnectError::Local(e)
        } else {
            ConnectError::Io(e)
        }
    }
}

impl ConnectError {
    /// The upstream is to blame (not the proxy's own connection cap or
    /// descriptors).
    pub fn blames_upstream(&self) -> bool {
        !matches!(self, ConnectError::Saturated(_) | ConnectError::Local(_))
    }
}

impl Upstream {
    pub fn new(
        addr: SocketAddr,
        limits: UpstreamLimits,
        transport: Transport,
        health: Arc<Health>,
    ) -> Upstream {
        Upstream {
            addr,
            addr_value: HeaderValue::from_str(&addr.to_string())
                .expect("a socket address is a valid header value"),
            addr_hash: stable_hash(addr.to_string().as_bytes()),
            in_flight: AtomicUsize::new(0),
            limits,
            transport,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            shards: (0..crate::workers::count())
                .map(|_| Shard::default())
                .collect(),
            health,
            stats: Arc::default(),
        }
    }

    /// Connections open to it (busy and idle), and of those idle.
    pub fn connections(&self) -> (usize, usize) {
        let idle = self.shards.iter().map(|s| lock(&s.idle).len()).sum();
        let open = self.limits.max_connections - self.slots.available_permits();
        (open.max(idle), idle)
    }

    /// Requests sent to it and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight on this upstream until the guard drops.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Whether this upstream can stand in for one configured with these settings.
    pub fn reusable_for(&self, limits: &UpstreamLimits, transport: &Transport) -> bool {
        self.limits == *limits && self.transport.same_as(transport)
    }

    /// The calling worker's connections.
    fn shard(&self) -> &Shard {
        &self.shards[crate::workers::current() % self.shards.len()]
    }

    fn is_multiplexed(&self) -> bool {
        self.transport.options.protocol != UpstreamProtocol::Http1
    }

    /// A connection ready for a request: for HTTP/1.1 the most recently used
    /// idle one (warm, least likely to have been closed by the peer), for
    /// HTTP/2 the shared one; else a new one.
    pub async fn checkout(&self, connect_timeout: Duration) -> Result<Conn, ConnectError> {
        let shard = self.shard();
        if self.is_multiplexed() {
            let current = lock(&shard.shared).as_ref().and_then(|c| match &c.sender {
                Sender::Http2(s) if !s.is_closed() => Some(Conn {
                    sender: Sender::Http2(s.clone()),
                    slot: c.slot.clone(),
                    reused: true,
                }),
                _ => None,
            });
            if let Some(conn) = current {
                return Ok(conn);
            }
            let conn = self.connect_boxed(connect_timeout).await?;
            if let Sender::Http2(s) = &conn.sender {
                *lock(&shard.shared) = Some(Conn {
                    sender: Sender::Http2(s.clone()),
                    slot: conn.slot.clone(),
                    reused: true,
                });
            }
            return Ok(conn);
        }
        loop {
            // hyper's own idle connections first: a bare one taken over is
            // lost to the fast path for good.
            let taken = {
                let mut idle = lock(&shard.idle);
                match idle
                    .iter()
                    .rposition(|i| matches!(i.conn, IdleConn::Hyper(_)))
                {
                    Some(at) => Some(idle.remove(at)),
                    None => idle.pop(),
                }
            };
            let Some(idle) = taken else { break };
            if idle.since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            match idle.conn {
                IdleConn::Hyper(mut conn) => {
                    // A connection returned as soon as its response body
                    // ended may take a moment to become ready; a closed one
                    // errors here.
                    if let Sender::Http1(s) = &mut conn.sender {
                        if s.ready().await.is_ok() {
                            conn.reused = true;
                            return Ok(conn);
                        }
                    }
                }
                IdleConn::Raw(raw) if still_open(&raw.stream) => {
                    // The fast path's connection, taken over by hyper: the
                    // HTTP/1.1 handshake exchanges nothing on the wire.
                    // Boxed for the reason `connect_boxed` is.
                    let sender =
                        Box::pin(self.handshake(raw.stream, UpstreamProtocol::Http1)).await?;
                    return Ok(Conn {
                        sender,
                        slot: Arc::new(raw.slot),
                        reused: true,
                    });
                }
                IdleConn::Raw(_) => {}
            }
        }
        self.connect_boxed(connect_timeout).await
    }

    /// [`connect`](Self::connect), on the heap. Connecting (TCP, TLS and
    /// the HTTP handshake) needs a future of several KiB; inline, it would
    /// make every request's future that large, and that future is moved
    /// (copied) several times per request, while a connect is rare.
    async fn connect_boxed(&self, timeout: Duration) -> Result<Conn, ConnectError> {
        Box::pin(self.connect(timeout)).await
    }

    /// Returns a connection whose exchange completed, for reuse.
    pub fn checkin(&self, conn: Conn) {
        if conn.is_http2() || conn.is_closed() {
            return;
        }
        self.keep_idle(IdleConn::Hyper(conn));
    }

    /// Keeps a connection for reuse; when `max_idle` are kept already, the
    /// one idle longest is closed instead (the warm one is worth more, and
    /// neither path's connections can crowd out the other's for good).
    fn keep_idle(&self, conn: IdleConn) {
        if self.limits.max_idle == 0 {
            return;
        }
        // Each worker's share, rounded up: a worker is never left without.
        let cap = self.limits.max_idle.div_ceil(self.shards.len());
        let mut idle = lock(&self.shard().idle);
        if idle.len() >= cap {
            idle.remove(0);
        }
        idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// A bare keep-alive connection for the fast path: the most recently
    /// used idle one that is still open, else a new one.
    pub async fn checkout_raw(&self, connect_timeout: Duration) -> Result<RawConn, ConnectError> {
        loop {
            // The most recently used bare one (hyper's can't be unwrapped).
            let taken = {
                let mut idle = lock(&self.shard().idle);
                idle.iter()
                    .rposition(|i| matches!(i.conn, IdleConn::Raw(_)))
                    .map(|at| idle.remove(at))
            };
            let Some(idle) = taken else { break };
            if let (true, IdleConn::Raw(raw)) = (idle.usable(), idle.conn) {
                return Ok(raw);
            }
        }
        if self.slots.available_permits() == 0 {
            // At max_connections with hyper's idle connections holding
            // slots (left by requests with bodies): one of them makes room,
            // rather than this request waiting out connect_timeout for a
            // slot nothing is using.
            let mut idle = lock(&self.shard().idle);
            if let Some(at) = idle
                .iter()
                .position(|i| matches!(i.conn, IdleConn::Hyper(_)))
            {
                drop(idle.remove(at));
            }
        }
        Box::pin(async {
            let (slot, stream) = self.open(connect_timeout).await?;
            Ok(RawConn {
                stream,
                reused: false,
                slot,
            })
        })
        .await
    }

    /// Returns a fast-path connection whose exchange completed cleanly.
    pub fn checkin_raw(&self, mut conn: RawConn) {
        conn.reused = true;
        self.keep_idle(IdleConn::Raw(conn));
    }

    /// Closes idle connections the upstream has closed (so none lingers in
    /// CLOSE_WAIT) and those idle longer than [`IDLE_TIMEOUT`].
    pub fn sweep_idle(&self) {
        for shard in &self.shards {
            lock(&shard.idle).retain(Idle::usable);
        }
    }

    /// A slot and a TCP connection, both within `timeout`.
    async fn open(
        &self,
        timeout: Duration,
    ) -> Result<(OwnedSemaphorePermit, TcpStream), ConnectError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let slot = match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await
        {
            Ok(Ok(slot)) => slot,
            // The semaphore is never closed; treat it like saturation if it were.
            Ok(Err(_)) | Err(_) => {
                return Err(ConnectError::Saturated(self.limits.max_connections))
            }
        };
        Ok((slot, self.dial(deadline, timeout).await?))
    }

    /// A TCP connection by `deadline` (`timeout` is how it is reported).
    async fn dial(
        &self,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<TcpStream, ConnectError> {
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(ConnectError::Timeout(timeout)),
        };
        // Requests are written whole; don't let Nagle hold back their tails.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect(&self, timeout: Duration) -> Result<Conn, ConnectError> {
        // TCP, TLS and the HTTP handshake, all within `timeout`.
        let deadline = tokio::time::Instant::now() + timeout;
        let (slot, stream) = self.open(timeout).await?;
        let sender = self.establish(stream, deadline, timeout).await?;
        Ok(Conn {
            sender,
            slot: Arc::new(slot),
            reused: false,
        })
    }

    /// TLS (if the upstream wants it) and the HTTP handshake on `stream`.
    async fn establish(
        &self,
        stream: TcpStream,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Sender, ConnectError> {
        let protocol = self.transport.options.protocol;
        match &self.transport.tls {
            None => self.handshake(stream, protocol).await,
            Some(Err(e)) => Err(ConnectError::Tls(e.clone())),
            Some(Ok((config, name))) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = match tokio::time::timeout_at(
                    deadline,
                    connector.connect(name.clone(), stream),
                )
                .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return Err(ConnectError::Tls(e.to_string())),
                    Err(_) => return Err(ConnectError::Timeout(timeout)),
                };
                if protocol == UpstreamProtocol::H2
                    && tls.get_ref().1.alpn_protocol() != Some(b"h2")
                {
                    return Err(ConnectError::Tls(
                        "the upstream did not agree to HTTP/2 (ALPN h2)".into(),
                    ));
                }
                self.handshake(tls, protocol).await
            }
        }
    }

    /// One health check: `GET path` with `host`, all within `timeout`, on
    /// the check's own connection (`kept`: TLS and protocol as for
    /// requests), which is kept for the next check while the upstream keeps
    /// it open, as Envoy's checks do. Counts against no connection cap: a
    /// check must not wait behind the traffic it judges.
    pub(crate) async fn probe(
        &self,
        kept: &mut Option<Sender>,
        host: &HeaderValue,
        path: &str,
        timeout: Duration,
    ) -> Result<u16, ProbeFailed> {
        let deadline = tokio::time::Instant::now() + timeout;
        let check = async {
            let reusable = match kept.as_mut() {
                Some(Sender::Http1(s)) => s.ready().await.is_ok(),
                Some(Sender::Http2(s)) => !s.is_closed(),
                None => false,
            };
            if !reusable {
                *kept = None;
                let stream = self.dial(deadline, timeout).await.map_err(|e| {
                    if e.blames_upstream() {
                        ProbeFailed::Upstream(e.to_string())
                    } else {
                        ProbeFailed::Local(e.to_string())
                    }
                })?;
                let sender = self
                    .establish(stream, deadline, timeout)
                    .await
                    .map_err(|e| ProbeFailed::Upstream(e.to_string()))?;
                *kept = Some(sender);
            }
            let Some(sender) = kept.as_mut() else {
                unreachable!("set above")
            };
            let mut req = Request::new(ProxyBody::Empty);
            let uri = match sender {
                Sender::Http1(_) => path.to_owned(),
                Sender::Http2(_) => {
                    let scheme = if self.transport.tls.is_some() {
                        "https"
                    } else {
                        "http"
                    };
                    format!("{scheme}://{}{path}", host.to_str().unwrap_or("localhost"))
                }
            };
            *req.uri_mut() = uri.parse().map_err(|e| {
                ProbeFailed::Upstream(format!("{path:?} is not a request target: {e}"))
            })?;
            let headers = req.headers_mut();
            headers.insert(http::header::HOST, host.clone());
            headers.insert(
                http::header::USER_AGENT,
                HeaderValue::from_static("portico-health-check"),
            );
            let resp = match sender {
                Sender::Http1(s) => s.send_request(req).await,
                Sender::Http2(s) => {
                    *req.version_mut() = http::Version::HTTP_2;
                    s.send_request(req).await
                }
            };
            let resp = resp.map_err(|e| ProbeFailed::Upstream(e.to_string()))?;
            let status = resp.status().as_u16();
            // Read the body, so that the connection can carry the next
            // check; one too long to bother with (or broken) ends it.
            let mut body = resp.into_body();
            let mut read = 0usize;
            while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
                match frame {
                    Ok(f) => read += f.data_ref().map_or(0, |d| d.len()),
                    Err(_) => return Ok((status, false)),
                }
                if read > MAX_CHECK_BODY {
                    return Ok((status, false));
                }
            }
            Ok((status, true))
        };
        let result = match tokio::time::timeout_at(deadline, check).await {
            Ok(result) => result,
            Err(_) => Err(ProbeFailed::Upstream(format!(
                "no answer within {timeout:?}"
            ))),
        };
        if !matches!(result, Ok((_, true))) {
            *kept = None;
        }
        result.map(|(status, _)| status)
    }

    async fn handshake<I>(&self, io: I, protocol: UpstreamProtocol) -> Result<Sender, ConnectError>
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let addr = self.addr;
        let log_end = move |e: hyper::Error| {
            tracing::debug!(upstream = %addr, error = %e, "upstream connection ended");
        };
        match protocol {
            UpstreamProtocol::Http1 => {
                let (sender, conn) = http1::Builder::new()
                    .handshake(TokioIo::new(io))
                    .await
                    .map_err(ConnectError::Handshake)?;
                // With upgrades: a 101 hands the connection over to a tunnel.
                tokio::spawn(async move { conn.with_upgrades().await.map_err(log_end) });
                Ok(Sender::Http1(sender))
            }
            UpstreamProtocol::H2 | UpstreamProtocol::H2c => {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .handshake(TokioIo::new(io))
                    .await
                    .map_err(ConnectError::Handshake)?;
                tokio::spawn(async move { conn.await.map_err(log_end) });
                Ok(Sender::Http2(sender))
            }
        }
    }

    #[cfg(test)]
    fn idle_len(&self) -> usize {
        self.connections().1
    }
}

/// Whether an idle connection can take a request: not closed by the peer,
/// and with no stray bytes waiting. Asks the socket only when the reactor
/// has seen it become readable since it was last read to the end.
fn still_open(stream: &TcpStream) -> bool {
    if !readable_now(stream) {
        return true;
    }
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Whether the reactor has seen the socket become readable (data, or the
/// peer's close) since it was last read to the end; asks nothing of the OS.
pub(crate) fn readable_now(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    stream.poll_read_ready(&mut cx).is_ready()
}

/// FNV-1a: a hash that is the same on every proxy, every build and every
/// restart, so that proxies behind one load balancer pin a session (or a
/// client address) to the same upstream. Not for untrusted keys in hash
/// tables; here it only ranks a pool's few upstreams.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn limits() -> UpstreamLimits {
        UpstreamLimits {
            max_connections: 1,
            max_idle: 4,
        }
    }

    #[test]
    fn the_proxys_own_shortages_blame_no_upstream() {
        use rustix::io::Errno;
        for errno in [
            Errno::MFILE,
            Errno::NFILE,
            Errno::NOBUFS,
            Errno::NOMEM,
            Errno::ADDRNOTAVAIL,
        ] {
            let e = ConnectError::from(io::Error::from_raw_os_error(errno.raw_os_error()));
            assert!(matches!(e, ConnectError::Local(_)), "{e}");
            assert!(!e.blames_upstream(), "{e}");
        }
        for errno in [
            Errno::CONNREFUSED,
            Errno::HOSTUNREACH,
            Errno::NETUNREACH,
            Errno::TIMEDOUT,
        ] {
            let e = ConnectError::from(io::Error::from_raw_os_error(errno.raw_os_error()));
            assert!(e.blames_upstream(), "{e}");
        }
    }

    #[tokio::test]
    async fn refused_and_saturated_connects_are_told_apart() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let up = Upstream::new(addr, limits(), Transport::plain(), Arc::default());
        assert!(matches!(
            up.checkout(Duration::from_millis(200)).await,
            Err(ConnectError::Io(_))
        ));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Upstream::new(
            listener.local_addr().unwrap(),
            limits(),
            Transport::plain(),
            Arc::default(),
        );
        let held = up.checkout(Duration::from_millis(200)).await.unwrap();
        assert!(matches!(
            up.checkout(Duration::from_millis(200)).await,
            Err(ConnectError::Saturated(1))
        ));
        up.checkin(held);
        assert_eq!(up.idle_len(), 1);
    }

    #[tokio::test]
    async fn both_paths_share_one_idle_cap_and_hyper_takes_over_bare_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Holds the accepted sockets open, as an idle upstream would.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let limits = UpstreamLimits {
            max_connections: 8,
            max_idle: 2,
        };
        let up = Upstream::new(addr, limits, Transport::plain(), Arc::default());
        let (a, b) = (
            up.checkout_raw(Duration::from_millis(200)).await.unwrap(),
            up.checkout_raw(Duration::from_millis(200)).await.unwrap(),
        );
        let h = up.checkout(Duration::from_millis(200)).await.unwrap();
        up.checkin_raw(a);
        up.checkin_raw(b);
        up.checkin(h);
        assert_eq!(up.idle_len(), 2, "one cap for both paths");
        let taken = up.checkout(Duration::from_millis(200)).await.unwrap();
        assert!(
            taken.reused,
            "the fast path's idle connection, reused by hyper"
        );
        assert!(!taken.is_http2());
        assert_eq!(up.idle_len(), 1);
        let raw = up.checkout_raw(Duration::from_millis(200)).await.unwrap();
        assert!(raw.reused);
        assert_eq!(up.idle_len(), 0);

        // A store full of hyper's connections doesn't shut the fast path
        // out: the one idle longest makes room.
        let (h1, h2) = (
            up.checkout(Duration::from_millis(200)).await.unwrap(),
            up.checkout(Duration::from_millis(200)).await.unwrap(),
        );
        up.checkin(taken);
        up.checkin(h1);
        up.checkin(h2);
        assert_eq!(up.idle_len(), 2);
        up.checkin_raw(raw);
        let again = up.checkout_raw(Duration::from_millis(200)).await.unwrap();
        assert!(again.reused, "the bare connection was kept");
        assert_eq!(up.idle_len(), 1);
    }
}
