//! The HTTP/1.1 fast path, for the requests that make up nearly all of a
//! load balancer's traffic: an HTTP/1.1 request without a body or with one
//! framed by a `Content-Length`, in cleartext or over TLS terminated here,
//! routed to a pool of cleartext HTTP/1.1 upstreams.
//!
//! Such a request is parsed once (httparse), its head is rewritten as bytes
//! straight into the buffer that goes upstream (hop-by-hop headers out,
//! forwarding headers in), the response head is rewritten the same way on
//! its way back (by [`crate::relay`]'s rules, which requests served by
//! hyper share), and the body is copied through a buffer without being
//! framed again: a chunked body passes as it came, after its framing has
//! been checked. A request body goes the other way the same way
//! ([`crate::upload`]'s `RawUpload`, by splice when it can), under the
//! general path's limits; a request that was sent with a body, or is not
//! idempotent, is not sent again. No `HeaderMap`, no hyper dispatch, a
//! handful of allocations per request, and an idle keep-alive connection
//! holds no buffer at all.
//!
//! Routing and Portico's own answers (unknown hosts and paths, redirects)
//! come from the pipeline shared with the general path, and are written
//! here as bytes. Everything else (a chunked request body, an upgrade,
//! `Expect`, an absolute URI, HTTP/1.0, upstreams over TLS or HTTP/2, a
//! head that does not parse, h2c, HSTS over TLS) is not refused here: the
//! connection is handed, with every byte already read, to hyper's server
//! and the general path in [`crate::forward`], which serves it from then on.
//! So the fast path decides only before it has consumed anything, and each
//! of its answers matches what the general path would have sent.

use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{HeaderValue, Method, StatusCode, Uri};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

use crate::access_log::{AccessLog, CombinedExtra};
use crate::admission::Slot;
use crate::answer::Answer;
use crate::balance;
use crate::body::{InFlight, UpstreamStalled};
use crate::context::{ConnInfo, TlsInfo};
use crate::forward;
use crate::forward::Alpn;
use crate::framing::{head_end, put_header, tokens, Cut, Framing, Listed, Rest};
use crate::headers::{is_hop_by_hop, is_set_on_requests, is_underscored, request_id_bytes};
use crate::io::{lock, send_timed_out, Client, Lingering, Prefixed, Waits};
use crate::metrics::{Listener, OpenConn, Protocol, Tally};
use crate::pipeline::Attempts;
use crate::pipeline::{self, RequestHead};
use crate::relay::{RawExchange, MAX_HEADERS, RESPONSE_BUF};
use crate::snapshot::Snapshot;
use crate::splice;
use crate::upload::{RawUpload, UploadLimits};
use crate::upstream::{RawConn, Upstream};
use portico_model::AccessLogFormat;

/// The first read of a request head; heads rarely need more.
const REQUEST_BUF: usize = 4 * 1024;
/// The buffer for the rest of a body that did not fit in the first one.
const LARGE_BODY_BUF: usize = 64 * 1024;

/// What a listener's fast-path connections share. An idle connection waits
/// for its socket to become readable or for [`Shared::wake`]: a tick that
/// lets it check its idle time, and shutdown. One timer and one flag for
/// the listener instead of a timer and a cancellation future per
/// connection keeps an idle connection's task to a few hundred bytes.
pub(crate) struct Shared {
    /// Connections idle long enough (or while many are open) go here: the
    /// listener's parking task holds them without a task each.
    parker: mpsc::UnboundedSender<Parked>,
    wake: Notify,
    stopping: AtomicBool,
    /// `client_header_timeout` in milliseconds, as of the last tick: how
    /// long a connection may idle (read here so an idle connection loads no
    /// snapshot).
    idle_limit_ms: AtomicU64,
    /// Fast-path connections open now (hyper's are counted by `graceful`).
    open: AtomicUsize,
    /// Taken at shutdown; connections handed to hyper are watched by it.
    graceful: Mutex<Option<GracefulShutdown>>,
}

impl Shared {
    /// The shared state, and the receiving end of the parking channel for
    /// [`Shared::park`].
    pub(crate) fn new(idle_limit: Duration) -> (Arc<Shared>, mpsc::UnboundedReceiver<Parked>) {
        let (parker, parked) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            parker,
            wake: Notify::new(),
            idle_limit_ms: AtomicU64::new(millis(idle_limit)),
            stopping: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            graceful: Mutex::new(Some(GracefulShutdown::new())),
        });
        (shared, parked)
    }

    /// A watcher for a connection served by hyper; `None` once stopping.
    pub(crate) fn watcher(&self) -> Option<Watcher> {
        lock(&self.graceful).as_ref().map(GracefulShutdown::watcher)
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub(crate) fn hyper_connections(&self) -> usize {
        lock(&self.graceful)
            .as_ref()
            .map_or(0, GracefulShutdown::count)
    }

    /// Wakes idle connections to check their idle time, every `period`
    /// until shutdown.
    pub(crate) async fn tick(self: Arc<Self>, proxy: Arc<crate::Proxy>) {
        while !self.stopping.load(Ordering::Acquire) {
            let limit = proxy.snapshot().config.proxy.client_header_timeout;
            self.idle_limit_ms.store(millis(limit), Ordering::Relaxed);
            // Idle connections close between `limit` and `limit` + a tick,
            // and are parked after one to two ticks.
            let period = tick_period(limit);
            tokio::time::sleep(period).await;
            self.wake.notify_waiters();
        }
    }

    /// Stops: idle connections close now, busy ones after their response.
    /// Returns hyper's part, to wind down its connections.
    pub(crate) fn stop(&self) -> Option<GracefulShutdown> {
        self.stopping.store(true, Ordering::Release);
        self.wake.notify_waiters();
        lock(&self.graceful).take()
    }

    fn idle_limit(&self) -> Duration {
        Duration::from_millis(self.idle_limit_ms.load(Ordering::Relaxed))
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// `waiting` accepted connections wait at max_client_connections: as
    /// many idle ones make room, those idle longest first (nginx drains its
    /// reusable connections the same way). Each worker's listeners do so,
    /// so a few more than needed may close. One whose client has just sent
    /// a request is served instead, never closed under it.
    fn drain(
        self: &Arc<Self>,
        parked: FuturesUnordered<WaitReadable>,
        waiting: usize,
        proxy: &Arc<crate::Proxy>,
    ) -> FuturesUnordered<WaitReadable> {
        let mut all: Vec<Parked> = parked.into_iter().filter_map(|w| w.0).collect();
        all.sort_by_key(|p| p.since);
        let kept = all.split_off(all.len().min(waiting));
        for p in all {
            if p.stream.readable_now() {
                tokio::spawn(p.serve(proxy.clone(), self.clone()));
            } else {
                p.close();
            }
        }
        kept.into_iter().map(|p| WaitReadable(Some(p))).collect()
    }

    /// Holds parked connections until their client sends the next request
    /// (then they get a task again), their idle time runs out, or the
    /// listener stops (then they are closed).
    pub(crate) async fn park(
        self: Arc<Self>,
        proxy: Arc<crate::Proxy>,
        mut arrivals: mpsc::UnboundedReceiver<Parked>,
    ) {
        let mut parked = FuturesUnordered::new();
        loop {
            let woken = self.wake.notified();
            if self.stopping() {
                // Answer what was already sent; close the rest.
                for p in parked.into_iter().filter_map(|w: WaitReadable| w.0) {
                    if p.stream.readable_now() {
                        tokio::spawn(p.serve(proxy.clone(), self.clone()));
                    } else {
                        p.close();
                    }
                }
                return;
            }
            let short = proxy.admission.short();
            tokio::select! {
                Some(p) = arrivals.recv() => parked.push(WaitReadable(Some(p))),
                Some(p) = parked.next(), if !parked.is_empty() => {
                    let p: Parked = p;
                    tokio::spawn(p.serve(proxy.clone(), self.clone()));
                }
                _ = woken => {
                    let limit = self.idle_limit();
                    let expired = |w: &WaitReadable| w.0.as_ref().is_none_or(|p| p.since.elapsed() >= limit);
                    if parked.iter().any(expired) {
                        let (gone, kept): (Vec<_>, Vec<_>) = parked.into_iter().partition(expired);
                        parked = kept.into_iter().collect();
                        for p in gone.into_iter().filter_map(|w| w.0) {
                            p.close();
                        }
                    }
                    // Still short: those parked since the last drain.
                    let waiting = proxy.admission.short_now();
                    if waiting > 0 {
                        parked = self.drain(parked, waiting, &proxy);
                    }
                }
                _ = short, if !parked.is_empty() => {
                    let waiting = proxy.admission.short_now();
                    parked = self.drain(parked, waiting, &proxy);
                }
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How often idle connections are woken to check their idle time.
fn tick_period(limit: Duration) -> Duration {
    (limit / 8).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// How long an idle connection waits for a request already on its way when
/// the listener stops.
const STOP_LINGER: Duration = Duration::from_millis(100);

/// Fast-path connections with a task of their own above which a connection
/// that goes idle is parked at once rather than after a tick.
const PARK_ABOVE: usize = 1024;

/// An idle connection without a task: what it needs to be served again.
pub(crate) struct Parked {
    stream: Client,
    client: SocketAddr,
    tls: Option<Box<TlsInfo>>,
    /// When it went idle.
    since: Instant,
    /// It has served a request (so it is HTTP/1.1, not h2c).
    served: bool,
    /// It still counts as an open connection.
    gauge: OpenConn,
}

impl Parked {
    /// Closes it (over TLS with a close_notify, on a task of its own); it
    /// counts as open until then.
    fn close(self) {
        self.stream.close_idle_later(self.gauge);
    }

    /// Serves the connection again, with a task of its own.
    fn serve(
        self,
        proxy: Arc<crate::Proxy>,
        shared: Arc<Shared>,
    ) -> impl std::future::Future<Output = ()> {
        let conn = (self.client, self.tls, self.served, self.gauge);
        serve_from(self.stream, proxy, shared, conn)
    }
}

/// Ready when a parked connection's client has sent something (or closed).
struct WaitReadable(Option<Parked>);

impl std::future::Future for WaitReadable {
    type Output = Parked;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Parked> {
        let ready = match &self.0 {
            Some(p) => p.stream.poll_read_ready(cx).is_ready(),
            None => false,
        };
        match self.0.take() {
            Some(p) if ready => std::task::Poll::Ready(p),
            still_waiting => {
                self.0 = still_waiting;
                std::task::Poll::Pending
            }
        }
    }
}

/// Counts a fast-path connection as open for as long as it lives.
struct Open(Arc<Shared>);

impl Open {
    fn new(shared: Arc<Shared>) -> Open {
        shared.open.fetch_add(1, Ordering::AcqRel);
        Open(shared)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What an idle connection's wait ended with.
enum Idle {
    /// The client sent something (or closed).
    Readable,
    /// Idle for a tick, or many connections are open: park it.
    Park,
    /// Idle too long, or the listener is stopping.
    Close,
}

/// Waits until the client sends something, or the connection should be
/// parked or closed.
async fn idle(stream: &Client, shared: &Shared, limit: Duration, since: Instant) -> Idle {
    let crowded = shared.open() > PARK_ABOVE;
    let mut ticks = 0u8;
    loop {
        let woken = shared.wake.notified();
        if shared.stopping() {
            // A request already sent is answered (with `Connection:
            // close`); only a connection with nothing to read is closed.
            // Bytes that arrived just before the stop may not have reached
            // the reactor yet: a moment's grace, at shutdown only.
            let readable = std::future::poll_fn(|cx| stream.poll_read_ready(cx));
            return match tokio::time::timeout(STOP_LINGER, readable).await {
                Ok(Ok(())) => Idle::Readable,
                _ => Idle::Close,
            };
        }
        // Polled through the socket's own reader slot: `readable()` would
        // put a 150-byte waiter in every idle connection's task.
        let readable = std::future::poll_fn(|cx| stream.poll_read_ready(cx));
        tokio::select! {
            biased;
            r = readable => return if r.is_ok() { Idle::Readable } else { Idle::Close },
            _ = woken => {
                if since.elapsed() >= limit {
                    return Idle::Close;
                }
                // Two ticks seen: idle for at least a whole tick.
                ticks += 1;
                if ticks >= 2 {
                    return Idle::Park;
                }
            }
            _ = std::future::ready(()), if crowded => return Idle::Park,
        }
    }
}

/// Serves a cleartext client connection: on the fast path while its
/// requests qualify, then, from the first one that doesn't, on hyper.
pub(crate) async fn serve(
    stream: TcpStream,
    proxy: Arc<crate::Proxy>,
    client: SocketAddr,
    shared: Arc<Shared>,
    slot: Arc<Slot>,
) {
    let gauge = proxy
        .stats
        .open(Listener::Http, Protocol::Http1, Some(slot));
    let conn = (client, None, false, gauge);
    serve_from(Client::Plain(stream), proxy, shared, conn).await;
}

/// [`serve`], for a connection whose TLS handshake (without ALPN, or with
/// HTTP/1.1's) is done; `gauge` counts it on the HTTPS listener.
pub(crate) async fn serve_tls(
    stream: crate::io::TlsStream,
    tls: TlsInfo,
    proxy: Arc<crate::Proxy>,
    client: SocketAddr,
    shared: Arc<Shared>,
    gauge: OpenConn,
) {
    let conn = (client, Some(Box::new(tls)), false, gauge);
    serve_from(Client::Tls(Box::new(stream)), proxy, shared, conn).await;
}

/// [`serve`], for a new connection or (`served`) one that was parked.
async fn serve_from(
    mut stream: Client,
    proxy: Arc<crate::Proxy>,
    shared: Arc<Shared>,
    (client, tls, mut served, mut gauge): (SocketAddr, Option<Box<TlsInfo>>, bool, OpenConn),
) {
    let open = Open::new(shared);
    let shared = &open.0;
    // Bytes read and not yet served: a request head, and whatever a
    // pipelining client sent after it. Empty (and unallocated) when idle.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        if pending.is_empty() {
            let since = Instant::now();
            match idle(&stream, shared, shared.idle_limit(), since).await {
                Idle::Readable => {}
                Idle::Park => {
                    let parked = Parked {
                        stream,
                        client,
                        tls,
                        since,
                        served,
                        gauge,
                    };
                    let _ = shared.parker.send(parked);
                    return;
                }
                Idle::Close => {
                    if !served && !shared.stopping() {
                        tracing::debug!(client = %client, "nothing received within client_header_timeout");
                    }
                    stream.close_idle().await;
                    return;
                }
            }
            pending.reserve_exact(REQUEST_BUF);
            match stream.try_read_buf(&mut pending) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    pending = Vec::new();
                    continue;
                }
                Err(_) => return,
            }
        }
        if proxy.general_path_forced() {
            break;
        }
        // The request's snapshot, loaded once: for its limits and its route.
        let snap = proxy.snapshot();
        let (limit, max_head, send) = (
            snap.config.proxy.client_header_timeout,
            snap.config.proxy.max_header_bytes,
            snap.config.proxy.client_send_timeout,
        );
        // Nearly always the first read brought the whole head; reading more
        // happens on the heap, keeping its timer out of the idle task.
        let head = match head_end(&pending, 0) {
            Some(n) if n <= max_head => n,
            // Over max_header_bytes: hyper answers 431.
            Some(_) => break,
            None => match Box::pin(read_head(&mut stream, &mut pending, limit, max_head)).await {
                ReadHead::Complete(n) => n,
                ReadHead::Closed => return,
                ReadHead::NotMine => break,
            },
        };
        let conn = ConnRef {
            proxy: &proxy,
            client,
            tls: tls.as_deref(),
        };
        match Box::pin(exchange(&mut stream, conn, snap, (&pending, head), shared)).await {
            Exchange::KeepAlive(used) => {
                pending.drain(..used);
                if pending.is_empty() {
                    pending = Vec::new();
                }
                served = true;
            }
            Exchange::Close => {
                // Over TLS this writes what rustls still holds, then
                // close_notify: bounded, or a client that stopped reading
                // would hold the connection here.
                let _ = sending(send, stream.shutdown()).await;
                return;
            }
            Exchange::Linger => {
                let _ = sending(send, Lingering::new(&mut stream).shutdown()).await;
                return;
            }
            Exchange::NotMine => break,
        }
    }
    // While the listener stops there is no watcher: the connection is still
    // served (its request was read), and counted open so the drain waits.
    let watcher = shared.watcher();
    let open = watcher.is_none().then_some(open);
    // Before the first request a cleartext connection may still be h2c by
    // prior knowledge; after one, it is HTTP/1.1 for good. Over TLS, ALPN
    // decided before the fast path was chosen.
    let alpn = if !served && tls.is_none() {
        Alpn::Detect
    } else {
        Alpn::Http1
    };
    if alpn == Alpn::Detect && pending.starts_with(b"PRI * HTTP/2.0") {
        gauge.now(Protocol::H2);
    }
    let io = Prefixed::new(pending, stream);
    let info = ConnInfo::new(proxy, client, tls.map(|t| *t), gauge.slot());
    // On the heap: hyper's connection future is large, and inline it would
    // make every connection's task that large, idle ones included.
    Box::pin(forward::serve_http(io, info, alpn, watcher)).await;
    drop((open, gauge));
}

/// What a request on the fast path knows of its connection.
#[derive(Clone, Copy)]
struct ConnRef<'a> {
    proxy: &'a Arc<crate::Proxy>,
    client: SocketAddr,
    /// Set when the connection came in over TLS.
    tls: Option<&'a TlsInfo>,
}

enum ReadHead {
    /// The head is `pending[..n]`.
    Complete(usize),
    /// The client closed, failed or stalled: nothing to answer.
    Closed,
    /// Too large for `max_header_bytes`: hyper answers that (431).
    NotMine,
}

/// Reads until `buf` holds a whole request head. A head that needs more
/// than the read that began it must be complete within `limit`.
async fn read_head(
    stream: &mut Client,
    buf: &mut Vec<u8>,
    limit: Duration,
    max: usize,
) -> ReadHead {
    let mut scanned = 0;
    let mut deadline = None;
    loop {
        if let Some(end) = head_end(buf, scanned) {
            return if end <= max {
                ReadHead::Complete(end)
            } else {
                ReadHead::NotMine
            };
        }
        if buf.len() >= max || !could_be_a_request(buf) {
            // hyper answers both: 431, or 400 for bytes that can never
            // become a request (rather than waiting out the header timeout
            // on garbage).
            return ReadHead::NotMine;
        }
        scanned = buf.len().saturating_sub(3);
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(buf.len().max(REQUEST_BUF));
        }
        let deadline = deadline.get_or_insert_with(|| tokio::time::Instant::now() + limit);
        match tokio::time::timeout_at(*deadline, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return ReadHead::Closed,
            Err(_) => {
                tracing::debug!("request head incomplete within client_header_timeout");
                return ReadHead::Closed;
            }
        }
    }
}

/// Whether the bytes of an incomplete head may still become a valid
/// request (httparse stops at the first byte that cannot).
pub(crate) fn could_be_a_request(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    matches!(
        httparse::Request::new(&mut headers).parse(buf),
        Ok(_) | Err(httparse::Error::TooManyHeaders)
    )
}

enum Exchange {
    /// Served: the request took this many bytes of what was read.
    KeepAlive(usize),
    Close,
    /// Close while the client may still be sending the request's body:
    /// read and drop what comes for a while, so the answer is not lost to
    /// a reset ([`Lingering`]).
    Linger,
    /// Nothing was consumed or sent: hyper takes the connection.
    NotMine,
}

/// What the request's headers say about how it may be handled.
#[derive(Default)]
pub(crate) struct RequestScan<'a> {
    pub(crate) host: Option<&'a [u8]>,
    pub(crate) hosts: usize,
    close: bool,
    /// Something only the general path handles: a chunked body, `Expect`,
    /// an upgrade...
    pub(crate) general: bool,
    /// The body's length, from a single valid `Content-Length`.
    pub(crate) length: Option<u64>,
    /// Names the `Connection` header lists (hop-by-hop for this message).
    listed: Listed<'a>,
}

impl<'a> RequestScan<'a> {
    pub(crate) fn of(headers: &[httparse::Header<'a>]) -> RequestScan<'a> {
        let mut scan = RequestScan::default();
        for h in headers {
            let name = h.name;
            if name.eq_ignore_ascii_case("host") {
                scan.hosts += 1;
                scan.host = Some(h.value);
            } else if name.eq_ignore_ascii_case("connection") {
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        scan.close = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        scan.general = true;
                    }
                }
                scan.general |= !scan.listed.push(h.value);
            } else if name.eq_ignore_ascii_case("content-length") {
                // A second one, or one that is not a plain number, is
                // hyper's to judge (and refuse).
                let value = h.value.trim_ascii();
                let number =
                    (1..=18).contains(&value.len()) && value.iter().all(u8::is_ascii_digit);
                match (scan.length, number) {
                    (None, true) => {
                        scan.length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                    }
                    _ => scan.general = true,
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                || name.eq_ignore_ascii_case("expect")
                || name.eq_ignore_ascii_case("upgrade")
            {
                scan.general = true;
            }
        }
        // A Content-Length the client calls hop-by-hop would be dropped on
        // the way (with the Connection header's other names) while its body
        // still goes: the upstream would read that body as a request.
        if scan.length.is_some() && scan.listed.contains("content-length") {
            scan.general = true;
        }
        scan
    }

    /// Whether the fast path serves a request with these headers and this
    /// target: the target as hyper would take it (a fragment, a character
    /// the URI grammar forbids, or over 64 KiB goes to hyper, to be refused
    /// or cleaned up there), one `Host`, nothing only hyper handles.
    pub(crate) fn takes(&self, target: &str) -> bool {
        let target_ok = target.starts_with('/')
            && target.len() < 65_535
            && http::uri::PathAndQuery::try_from(target).is_ok_and(|pq| pq.as_str() == target);
        !self.general && self.hosts == 1 && target_ok
    }
}

/// What the fast path does with a request whose head it has parsed.
enum Plan {
    /// Forward it to the route's upstreams, starting with `first`.
    Forward { route: usize, first: usize },
    /// Portico answers it itself.
    Answer(Box<Answer>),
}

/// One request on the fast path, or [`Exchange::NotMine`] before anything
/// is consumed.
async fn exchange(
    client: &mut Client,
    conn: ConnRef<'_>,
    snap: Arc<Snapshot>,
    (pending, head_len): (&[u8], usize),
    shared: &Shared,
) -> Exchange {
    let start = Instant::now();
    let head = &pending[..head_len];
    let id = request_id_bytes();
    let mut upstream_req = Vec::with_capacity(head.len() + 256);
    // The parsed headers (3 KiB of slices) live only in this block, so they
    // are not part of the future across its awaits.
    let (method, path, host, close, client_addr, length, plan) = {
        // Left uninitialised: httparse writes the ones it fills, and
        // initialising a hundred would cost more than parsing most heads.
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(head, &mut headers) {
            Ok(httparse::Status::Complete(n)) if n == head.len() => {}
            _ => return Exchange::NotMine,
        }
        let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
            return Exchange::NotMine;
        };
        let scan = RequestScan::of(req.headers);
        if !scan.takes(path) {
            return Exchange::NotMine;
        }
        let Some(host_text) = scan.host.and_then(|h| std::str::from_utf8(h).ok()) else {
            return Exchange::NotMine;
        };
        let named = |name: &'static str| {
            req.headers
                .iter()
                .filter(move |h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let (client_ip, trusted) = pipeline::client_address(
            conn.client.ip(),
            &snap.config.proxy.trusted_proxies,
            named("x-forwarded-for"),
        );
        let request = RequestHead {
            method,
            host: Ok(host_text),
            target: path,
            tls: conn.tls,
            content_length: scan.length.filter(|n| *n > 0),
        };
        let plan = match pipeline::decide(&snap, &request, conn.proxy.readiness()) {
            Err(answer) => Plan::Answer(answer),
            Ok(forward) => {
                let pool = &snap.pools[forward.route];
                if !pool.plain_http1 {
                    return Exchange::NotMine;
                }
                let route = snap.table.route(forward.route);
                if conn.tls.is_some() && route.hsts_max_age.is_some() {
                    // The general path sets Strict-Transport-Security.
                    return Exchange::NotMine;
                }
                let affinity = pipeline::affinity(route, named("cookie"), client_ip);
                write_upstream_head(
                    &mut upstream_req,
                    method,
                    &forward.target,
                    req.headers,
                    &scan,
                    Forwarded {
                        peer: conn.client.ip(),
                        client: client_ip,
                        extend: trusted,
                        https: conn.tls.is_some(),
                    },
                    host_text.as_bytes(),
                    &id,
                );
                Plan::Forward {
                    route: forward.route,
                    first: balance::first(&pool.upstreams, route.balance, affinity, || {
                        pool.next_start()
                    }),
                }
            }
        };
        let client_addr = SocketAddr::new(client_ip, conn.client.port());
        let p = &snap.config.proxy;
        let combined =
            (p.access_log && p.access_log_format == AccessLogFormat::Combined).then(|| {
                let value = |name| {
                    named(name)
                        .next()
                        .and_then(|v| HeaderValue::from_bytes(v).ok())
                };
                Box::new(CombinedExtra {
                    version: http::Version::HTTP_11,
                    referer: value("referer"),
                    user_agent: value("user-agent"),
                })
            });
        (
            method,
            path,
            host_text.as_bytes(),
            scan.close,
            client_addr,
            scan.length.unwrap_or(0),
            (plan, combined),
        )
    };
    let (mut plan, combined) = plan;
    // The body's bytes that came with the head go upstream with it.
    let with_head = usize::try_from(length)
        .unwrap_or(usize::MAX)
        .min(pending.len() - head_len);
    let used = head_len + with_head;
    let mut slot = None;
    if let (Plan::Forward { .. }, true, max @ 1..) =
        (&plan, length > 0, snap.config.proxy.max_bodies_per_client)
    {
        slot = conn.proxy.bodies.take(client_addr.ip(), max);
        if slot.is_none() {
            plan = Plan::Answer(Answer::error(crate::error::ProxyError::TooManyBodies {
                client: client_addr.ip(),
                max,
            }));
        }
    }
    let _in_flight = InFlight::enter(&conn.proxy.in_flight);
    let tally = match &plan {
        Plan::Forward { route, .. } => {
            Some(Tally::new(snap.pools[*route].stats.clone(), method, start))
        }
        Plan::Answer(answer) => {
            answer.count(&conn.proxy.stats);
            None
        }
    };
    let quiet = matches!(&plan, Plan::Answer(a) if a.health);
    let mut log = (snap.config.proxy.access_log && !quiet).then(|| {
        let mut log = access_log(start, client_addr, method, path, host, &id);
        log.combined = combined;
        log
    });

    let mut attempts = Attempts::default();
    let mut from_upstream: Vec<u8> = match plan {
        Plan::Forward { .. } => Vec::with_capacity(RESPONSE_BUF),
        Plan::Answer(_) => Vec::new(),
    };
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    // Whether all of the body has been read from the client; if not, the
    // connection cannot carry another request.
    let mut body_read = used - head_len == usize::try_from(length).unwrap_or(usize::MAX);
    // Whether the upstream has all of it: an upstream that answered early
    // may have read the whole body from the client but not all of it sent.
    let mut delivered = true;
    let sent = match plan {
        Plan::Forward { route, first } => {
            let pool = &snap.pools[route];
            upstream_req.extend_from_slice(&pending[head_len..used]);
            let p = &snap.config.proxy;
            let limits = UploadLimits {
                stall: p.client_body_timeout,
                min_rate: p.client_body_min_rate.map(|r| (r, p.client_body_grace)),
                max_size: None,
            };
            let mut upload = (length > 0).then(|| {
                RawUpload::new(
                    client,
                    (length, with_head),
                    &limits,
                    slot.take(),
                    pool.stats.clone(),
                )
            });
            let mut exchange = RawExchange {
                request: &upstream_req,
                body: upload.as_mut(),
                retry: length == 0 && pipeline::is_idempotent(method),
                buf: &mut from_upstream,
                out: &mut out,
                max_head: p.max_header_bytes,
                hide: p.hide_info_headers,
            };
            let sent = pipeline::try_upstreams(pool, first, &mut exchange, &mut attempts)
                .await
                .map(|((conn, head), upstream, held)| {
                    (conn, upstream, head, held, pool.upstream_timeout)
                })
                .map_err(Answer::error);
            body_read = upload.as_ref().is_none_or(RawUpload::finished);
            delivered = upload.as_ref().is_none_or(RawUpload::delivered);
            sent
        }
        Plan::Answer(answer) => Err(answer),
    };
    drop(upstream_req);
    let (upstream_conn, upstream, resp, _held, idle) = match sent {
        Ok(ok) => ok,
        Err(answer) => {
            let request_id = HeaderValue::from_bytes(&id).expect("hex digits");
            if let Some(e) = &answer.error {
                pipeline::log_failure(e, client_addr, &request_id, &attempts);
            }
            let close = close
                || answer.close
                || !body_read
                || shared.stopping()
                || conn.proxy.is_draining();
            out.clear();
            answer.write_head(
                &mut out,
                httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes(),
            );
            finish_client_head(&mut out, &snap, conn, &id, &attempts, close);
            let head_only = method == "HEAD";
            if !head_only {
                out.extend_from_slice(&answer.body);
            }
            if let Some(log) = &mut log {
                pipeline::record(log, answer.status, &attempts);
                log.error = answer.error.as_ref().map(ToString::to_string);
            }
            let body_len = if head_only {
                0
            } else {
                answer.body.len() as u64
            };
            let limit = snap.config.proxy.client_send_timeout;
            let ok = write_all(client, &out, limit).await.is_ok()
                && sending(limit, flush(client)).await.is_ok();
            if let Some(tally) = tally {
                if let Some(e) = &answer.error {
                    tally.stats().error(answer.status.as_u16(), e);
                }
                tally.finish(answer.status.as_u16(), body_len);
            }
            if let Some(log) = log {
                log.emit(body_len, ok);
            }
            return if !ok {
                Exchange::Close
            } else if !body_read {
                Exchange::Linger
            } else if !close {
                Exchange::KeepAlive(used)
            } else {
                Exchange::Close
            };
        }
    };

    let framing = resp.framing;
    let close = close
        || !body_read
        || framing == Framing::UntilClose
        || shared.stopping()
        || conn.proxy.is_draining();
    finish_client_head(&mut out, &snap, conn, &id, &attempts, close);

    // An upstream that answered before it had the whole body has the rest
    // of the message still owed to it.
    let lease = Lease {
        conn: Some(upstream_conn),
        upstream,
        reusable: resp.reusable && delivered,
    };
    let (bytes, outcome) = copy_body(
        client,
        lease,
        (&mut from_upstream, resp.len),
        &out,
        framing,
        Waits {
            upstream: idle,
            client: snap.config.proxy.client_send_timeout,
        },
    )
    .await;
    if let Some(tally) = tally {
        tally.finish(resp.status, bytes);
    }
    if let Some(mut log) = log.take() {
        let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
        pipeline::record(&mut log, status, &attempts);
        if let Err(e) = &outcome {
            log.error = Some(e.to_string());
        }
        log.emit(bytes, outcome.is_ok());
    }
    match outcome {
        Ok(()) if !body_read => Exchange::Linger,
        Ok(()) if !close => Exchange::KeepAlive(used),
        Ok(()) => Exchange::Close,
        Err(e) => {
            tracing::debug!(client = %conn.client, error = %e, "response broke off");
            Exchange::Close
        }
    }
}

fn access_log(
    start: Instant,
    client: SocketAddr,
    method: &str,
    path: &str,
    host: &[u8],
    id: &[u8; 32],
) -> Box<AccessLog> {
    AccessLog::start(
        start,
        client,
        Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET),
        HeaderValue::from_bytes(host).ok(),
        path.parse::<Uri>()
            .unwrap_or_else(|_| Uri::from_static("/")),
        HeaderValue::from_bytes(id).expect("hex digits"),
    )
}

/// Who the forwarding headers name (see [`crate::headers::set_forwarding`]).
#[derive(Clone, Copy)]
pub(crate) struct Forwarded {
    /// The connection's peer, appended to `X-Forwarded-For`.
    pub(crate) peer: IpAddr,
    /// The client (`X-Real-IP`).
    pub(crate) client: IpAddr,
    /// The request's own `X-Forwarded-For` is kept and extended.
    pub(crate) extend: bool,
    /// The client's connection is TLS (`X-Forwarded-Proto`).
    pub(crate) https: bool,
}

/// The request head as the upstream gets it: the client's headers less the
/// hop-by-hop ones and those the proxy sets, then the forwarding headers
/// (as [`crate::headers::set_forwarding`] sets them on the general path).
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_upstream_head(
    out: &mut Vec<u8>,
    method: &str,
    path: &str,
    headers: &[httparse::Header<'_>],
    scan: &RequestScan<'_>,
    forwarded: Forwarded,
    host: &[u8],
    id: &[u8; 32],
) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    let mut xff_prior = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            // Kept (and extended) only from a trusted proxy, and unless
            // `Connection` makes it hop-by-hop (as hyper's path drops it).
            xff_prior = forwarded.extend && !scan.listed.contains("x-forwarded-for");
            continue;
        }
        if name.eq_ignore_ascii_case("host")
            || is_hop_by_hop(name)
            || is_set_on_requests(name)
            || is_underscored(name)
            || scan.listed.contains(name)
        {
            continue;
        }
        put_header(out, name.as_bytes(), h.value);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if xff_prior {
        // Several X-Forwarded-For lines are one list: joined, then ours.
        for h in headers {
            if h.name.eq_ignore_ascii_case("x-forwarded-for") {
                let prior = h.value.trim_ascii();
                if !prior.is_empty() {
                    out.extend_from_slice(prior);
                    out.extend_from_slice(b", ");
                }
            }
        }
    }
    let ip_at = out.len();
    write_ip(out, forwarded.peer);
    let ip_end = out.len();
    out.extend_from_slice(b"\r\nx-real-ip: ");
    if forwarded.client == forwarded.peer {
        out.extend_from_within(ip_at..ip_end);
    } else {
        write_ip(out, forwarded.client);
    }
    out.extend_from_slice(if forwarded.https {
        b"\r\nx-forwarded-proto: https\r\nx-forwarded-host: ".as_slice()
    } else {
        b"\r\nx-forwarded-proto: http\r\nx-forwarded-host: "
    });
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\nx-request-id: ");
    out.extend_from_slice(id);
    out.extend_from_slice(b"\r\n\r\n");
}

/// An IP address as text; IPv4 without going through `fmt`.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(_) => {
            use std::io::Write as _;
            let _ = write!(out, "{ip}");
        }
    }
}

/// Ends the client's response head with the proxy's headers.
fn finish_client_head(
    out: &mut Vec<u8>,
    snap: &Snapshot,
    conn: ConnRef<'_>,
    id: &[u8; 32],
    attempts: &Attempts,
    close: bool,
) {
    pipeline::interlock_headers(out, snap, &conn.proxy.server_info, (id, None), attempts);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Why a response body could not be passed on whole.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("client: {0}")]
    Client(io::Error),
    #[error("upstream: {0}")]
    Upstream(io::Error),
    #[error("upstream closed the connection {0} bytes before the end of the body")]
    Short(u64),
    #[error("upstream sent a malformed chunked body")]
    BadChunk,
    #[error(transparent)]
    Stalled(#[from] UpstreamStalled),
}

/// The upstream connection a response arrives on, returned to its pool as
/// soon as the message has ended cleanly: before the last bytes go to the
/// client, so the client's next request finds it there.
struct Lease<'a> {
    conn: Option<RawConn>,
    upstream: &'a Upstream,
    /// The response head allows another request on this connection.
    reusable: bool,
}

impl Lease<'_> {
    fn stream(&mut self) -> &mut TcpStream {
        &mut self
            .conn
            .as_mut()
            .expect("the connection is leased until the body ends")
            .stream
    }

    /// The message is over; `stray` when the upstream sent more after it.
    fn end(&mut self, stray: bool) {
        if let Some(conn) = self.conn.take() {
            if self.reusable && !stray {
                self.upstream.checkin_raw(conn);
            }
        }
    }
}

/// Sends the client `head` and the body that follows the upstream's head
/// (`buf[head_len..]` and what is still to come), giving up on either side
/// when it stalls past its [`Waits`]. Returns the body bytes sent, and how
/// the body ended.
async fn copy_body(
    client: &mut Client,
    mut lease: Lease<'_>,
    (buf, head_len): (&mut Vec<u8>, usize),
    head: &[u8],
    framing: Framing,
    waits: Waits,
) -> (u64, Result<(), BodyError>) {
    let mut sent = 0u64;
    let first = &buf[head_len..];
    let mut rest = Rest::new(framing);
    let take = match rest.pass(first) {
        Ok(take) => take,
        Err(()) => {
            // The head is good and goes out; the body is cut short where
            // it broke, and the connection closes.
            let _ = write_all(client, head, waits.client).await;
            return (0, Err(BodyError::BadChunk));
        }
    };
    if rest.is_done() {
        lease.end(take < first.len());
    }
    if let Err(e) = write_two(client, head, &first[..take], waits.client).await {
        return (0, Err(BodyError::Client(e)));
    }
    sent += take as u64;
    if let (Client::Plain(to), Rest::Length(left)) = (&*client, &rest) {
        if *left >= splice::MIN_LEN {
            if let Some(outcome) = splice_body(to, &mut lease, *left, waits, &mut sent).await {
                return (sent, outcome);
            }
        }
    }
    let more = rest
        .known_left()
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    if more > buf.capacity() {
        // A large body moves in fewer, larger reads and writes.
        *buf = Vec::with_capacity(more.min(LARGE_BODY_BUF));
    }
    while !rest.is_done() {
        buf.clear();
        let n = match tokio::time::timeout(waits.upstream, lease.stream().read_buf(buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return (sent, Err(BodyError::Upstream(e))),
            Err(_) => return (sent, Err(UpstreamStalled(waits.upstream).into())),
        };
        if n == 0 {
            match rest.close() {
                Ok(()) => break,
                Err(Cut::Short(left)) => return (sent, Err(BodyError::Short(left))),
                Err(Cut::InChunked) => {
                    let eof = io::ErrorKind::UnexpectedEof.into();
                    return (sent, Err(BodyError::Upstream(eof)));
                }
            }
        }
        let take = match rest.pass(&buf[..n]) {
            Ok(take) => take,
            Err(()) => return (sent, Err(BodyError::BadChunk)),
        };
        if rest.is_done() {
            lease.end(take < n);
        }
        if let Err(e) = write_all(client, &buf[..take], waits.client).await {
            return (sent, Err(BodyError::Client(e)));
        }
        sent += take as u64;
    }
    match sending(waits.client, flush(client)).await {
        Ok(()) => (sent, Ok(())),
        Err(e) => (sent, Err(BodyError::Client(e))),
    }
}

/// The rest of a body, `left` bytes, moved from the lease's connection to
/// `to` through a pipe. The connection goes back to its pool as soon as all
/// of the body has been read from it, before the last bytes reach the
/// client. `None` when nothing was moved and the caller should copy: no
/// pipe could be had, or splice does not work here.
async fn splice_body(
    to: &TcpStream,
    lease: &mut Lease<'_>,
    mut left: u64,
    waits: Waits,
    sent: &mut u64,
) -> Option<Result<(), BodyError>> {
    let broke = |broke, left| match broke {
        splice::Broke::Read(e) => BodyError::Upstream(e),
        splice::Broke::Closed => BodyError::Short(left),
        splice::Broke::ReadStalled => UpstreamStalled(waits.upstream).into(),
        splice::Broke::Write(e) => BodyError::Client(e),
        splice::Broke::WriteStalled => BodyError::Client(send_timed_out(waits.client)),
        splice::Broke::Unsupported => BodyError::Upstream(io::ErrorKind::Unsupported.into()),
    };
    let mut pipe = splice::Pipe::take()?;
    while left > 0 {
        match pipe.fill(lease.stream(), left, waits.upstream).await {
            Ok(n) => left -= n as u64,
            Err(splice::Broke::Unsupported) => return None,
            Err(e) => return Some(Err(broke(e, left))),
        }
        if left == 0 {
            lease.end(false);
        }
        if let Err(e) = pipe.drain(to, waits.client, sent).await {
            return Some(Err(broke(e, left)));
        }
    }
    pipe.give_back();
    Some(Ok(()))
}

/// Ends a response: over TLS, its last records leave rustls's buffer
/// before the connection waits for the next request.
async fn flush(client: &mut Client) -> io::Result<()> {
    if client.buffers_writes() {
        client.flush().await
    } else {
        Ok(())
    }
}

/// Something sent to the client, which must take it within `limit`
/// (`client_send_timeout`; the general path counts the same limit between
/// two writes that move bytes, in [`crate::io::SendDeadline`]).
async fn sending<T>(
    limit: Duration,
    write: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(limit, write)
        .await
        .unwrap_or_else(|_| Err(send_timed_out(limit)))
}

/// Writes all of `buf`, each write taking at most `limit` to move bytes.
async fn write_all(stream: &mut Client, mut buf: &[u8], limit: Duration) -> io::Result<()> {
    while !buf.is_empty() {
        match sending(limit, stream.write(buf)).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => buf = &buf[n..],
        }
    }
    Ok(())
}

/// Writes `a` then `b`, in one system call when the socket takes both;
/// each write taking at most `limit` to move bytes.
async fn write_two(
    stream: &mut Client,
    mut a: &[u8],
    mut b: &[u8],
    limit: Duration,
) -> io::Result<()> {
    while !a.is_empty() {
        let slices = [IoSlice::new(a), IoSlice::new(b)];
        let n = sending(limit, stream.write_vectored(&slices)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n < a.len() {
            a = &a[n..];
        } else {
            b = &b[n - a.len()..];
            a = &[];
        }
    }
    write_all(stream, b, limit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_ip_addresses() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.255.9", "::1", "2001:db8::5"] {
            let mut out = Vec::new();
            write_ip(&mut out, ip.parse().unwrap());
            assert_eq!(out, ip.as_bytes());
        }
    }
}
