//! The controller's side of the stream: an HTTP/2 server over
//! [`tls::controller_server_config`] with two endpoints, the current
//! config of each service cluster, and the list of connected proxies.
//!
//! - `POST /v1/join`: any peer, certificate or not. A JSON
//!   [`JoinRequest`] in, a [`JoinResponse`] out if [`verify_join`] accepts
//!   it; a wrong secret is a 403 with the reason, logged with the peer's
//!   address.
//! - `POST /v1/stream`: a peer whose certificate names a proxy
//!   ([`Peer::Proxy`]) only; anyone else gets a 401, logged with its
//!   address. See [`crate::stream`] for the messages.
//!
//! [`Controller::proxies`] lists the connected proxies (who, from where,
//! serving what, the last NACK, where they serve traffic), and
//! [`Controller::departed`] those that left lately and why: what the
//! binary's admin API, status page and metrics show, serializable as they
//! are.
//!
//! [`Controller::publish`] sets a service cluster's config. Each cluster
//! has its own `watch` channel holding the snapshot line, encoded once for
//! all its proxies: a publish wakes that cluster's streams and no other's,
//! and a stream that wakes sends the snapshot only if it is not the version
//! it last sent (or the proxy said it had). Several publishes between two
//! wake-ups send only the newest: a proxy wants the current state, not
//! the history.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portico_model::{Config, ProxySettings, Version};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ca::{CaError, ClusterCa, Credentials};
use crate::id::ProxyId;
use crate::join::{verify_join, JoinError, JoinRequest, JoinResponse};
use crate::stream::{
    self, bounded_reason, check_cluster_name, encode, is_version, Down, Endpoint, Heartbeat,
    LineReader, Lines, Up, ALPN_H2, JOIN_PATH, MAX_LISTENERS, MAX_SMALL_MESSAGE, MAX_SNAPSHOT_LINE,
    STREAM_PATH,
};
use crate::tls::{self, Peer, TlsError};
use crate::token::JoinToken;

type ResponseBody = Either<Full<Bytes>, Lines>;

/// Timings of the controller's side.
#[derive(Clone, Copy, Debug)]
pub struct ControllerOptions {
    pub heartbeat: Heartbeat,
    /// Bounds a peer's TLS handshake, and reading a join request.
    pub handshake_timeout: Duration,
    /// At shutdown, how long connections are given to close before they
    /// are cut.
    pub shutdown_grace: Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            heartbeat: Heartbeat::default(),
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// What the controller serves with: the cluster CA (it signs proxies'
/// certificates), the join token (its secret checks join requests), and
/// its own server certificate.
pub struct ControllerState {
    ca: Arc<ClusterCa>,
    token: JoinToken,
    server: Credentials,
}

impl ControllerState {
    /// Issues the controller a fresh server certificate for `server_names`
    /// (what proxies dial: `--controller https://HOST:PORT`). Refuses a
    /// token made for another CA: every join would fail, so say so now.
    pub fn new<S: AsRef<str>>(
        ca: Arc<ClusterCa>,
        token: JoinToken,
        server_names: &[S],
    ) -> Result<Self, ControllerError> {
        if token.ca_digest() != ca.digest() {
            return Err(ControllerError::Join(JoinError::TokenForAnotherCa {
                token: *token.ca_digest(),
                ca: *ca.digest(),
            }));
        }
        let server = ca.issue_server(server_names)?;
        Ok(ControllerState { ca, token, server })
    }
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Join(JoinError),
    #[error("issuing the controller's server certificate failed: {0}")]
    Ca(#[from] CaError),
    #[error("building the controller's TLS config failed: {0}")]
    Tls(#[from] TlsError),
}

/// Why a config could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    ClusterName(String),
    #[error(
        "the snapshot for service cluster {cluster:?} is {size} bytes, over the stream's \
         {limit}-byte limit"
    )]
    TooLarge {
        cluster: String,
        size: usize,
        limit: usize,
    },
}

/// How long a departed proxy stays listed by [`Controller::departed`]:
/// long enough to notice it is gone, not so long that a Swarm replacing
/// its tasks (a new id each) fills the listing with the dead.
pub const DEPARTED_FOR: Duration = Duration::from_secs(3600);
/// At most this many departed proxies are listed, the latest.
pub const DEPARTED_KEPT: usize = 64;

/// A proxy's last refusal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    pub version: String,
    pub reason: String,
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
}

/// One connected proxy, as [`Controller::proxies`] lists it. Times are
/// serialized as RFC 3339 (UTC, seconds), versions as 64 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStatus {
    pub id: ProxyId,
    /// The address its stream comes from (a NAT's, behind one).
    pub address: SocketAddr,
    pub service_cluster: String,
    /// The version it last ACKed, or the one it said it had when it
    /// connected; `None` before either.
    pub applied_version: Option<String>,
    pub last_nack: Option<Nack>,
    /// NACKs on this stream.
    #[serde(default)]
    pub nacks: u64,
    #[serde(with = "rfc3339")]
    pub connected_since: SystemTime,
    /// When anything last came up its stream (heartbeats, ACKs, NACKs all
    /// show it alive).
    #[serde(with = "rfc3339")]
    pub last_heartbeat: SystemTime,
    /// Snapshots sent on this stream: lets a test (or an operator) see
    /// that a publish sent nothing to a proxy.
    pub snapshots_sent: u64,
    /// Where it serves traffic, as its hello announced, a listener on
    /// every address given the stream's address instead, and one on
    /// loopback dropped unless the stream comes from loopback too (see
    /// [`Endpoint::listed_for`]). Empty for a proxy that announces none.
    #[serde(default)]
    pub listeners: Vec<Endpoint>,
    /// Its admin API, the same way, if it serves one.
    #[serde(default)]
    pub admin: Option<Endpoint>,
}

/// Where a proxy stands against the version published to its service
/// cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// It has applied the published version.
    Current,
    /// It serves another version and has not refused the published one:
    /// still applying it, or its stream is stuck.
    Behind,
    /// Its last NACK refused the published version: it keeps serving the
    /// one before, until the config changes.
    Nacking,
    /// Nothing is published to its service cluster (a cluster no service
    /// names yet).
    Unpublished,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Current => "current",
            SyncState::Behind => "behind",
            SyncState::Nacking => "nacking",
            SyncState::Unpublished => "unpublished",
        }
    }
}

impl ProxyStatus {
    /// Where it stands against `published`, its cluster's version.
    pub fn sync(&self, published: Option<&Version>) -> SyncState {
        let Some(published) = published.map(stream::version_text) else {
            return SyncState::Unpublished;
        };
        if self.applied_version.as_deref() == Some(published.as_str()) {
            SyncState::Current
        } else if self
            .last_nack
            .as_ref()
            .is_some_and(|n| n.version == published)
        {
            SyncState::Nacking
        } else {
            SyncState::Behind
        }
    }
}

/// A proxy whose stream ended (not replaced by a newer one of its own, not
/// at the controller's shutdown), as it was last listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepartedProxy {
    #[serde(flatten)]
    pub status: ProxyStatus,
    #[serde(with = "rfc3339")]
    pub departed_at: SystemTime,
    /// Why its stream ended: it closed it, went silent, or it broke.
    pub reason: String,
}

/// Times as the admin API writes them elsewhere: RFC 3339, UTC, seconds.
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_seconds(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(D::Error::custom)
    }
}

/// The controller: publish configs, serve streams, list proxies. Cheap to
/// clone (one shared state).
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    options: ControllerOptions,
    clusters: Mutex<HashMap<String, watch::Sender<Option<Arc<Snapshot>>>>>,
    proxies: Mutex<BTreeMap<u64, Entry>>,
    /// Oldest first.
    departed: Mutex<VecDeque<DepartedProxy>>,
    /// NACKs received per service cluster since the controller started
    /// (a proxy's own count restarts with its stream).
    nacks: Mutex<BTreeMap<String, u64>>,
    next_stream: AtomicU64,
    /// Bumped at every change to `proxies`, so that callers can wait for a
    /// condition instead of polling.
    changes: watch::Sender<u64>,
}

/// A cluster's current config, encoded once as the line every stream sends.
struct Snapshot {
    version: Version,
    line: Bytes,
}

struct Entry {
    status: ProxyStatus,
    /// Ends the stream: when the same proxy connects again, its old stream
    /// (dead, or about to be) is replaced.
    cancel: CancellationToken,
}

impl Default for Controller {
    fn default() -> Self {
        Controller::new(ControllerOptions::default())
    }
}

impl Controller {
    pub fn new(options: ControllerOptions) -> Self {
        Controller {
            inner: Arc::new(Inner {
                options,
                clusters: Mutex::new(HashMap::new()),
                proxies: Mutex::new(BTreeMap::new()),
                departed: Mutex::new(VecDeque::new()),
                nacks: Mutex::new(BTreeMap::new()),
                next_stream: AtomicU64::new(0),
                changes: watch::channel(0).0,
            }),
        }
    }

    /// Sets `cluster`'s config and returns its version. Every connected
    /// proxy of that cluster whose version differs is sent the snapshot;
    /// publishing the version a cluster already has sends nothing.
    ///
    /// The snapshot carries no `admin` or `docker` table, and `[proxy]` at
    /// its defaults: a proxy's admin API and its listeners and limits are
    /// its own (its config file's), and a proxy has no Docker socket; so
    /// a change to the controller's own `[proxy]` sends nothing. The
    /// version is that of what is sent.
    pub fn publish(&self, cluster: &str, config: Arc<Config>) -> Result<Version, PublishError> {
        check_cluster_name(cluster).map_err(PublishError::ClusterName)?;
        let own = |c: &Config| {
            c.admin.is_some() || c.docker.is_some() || c.proxy != ProxySettings::default()
        };
        let config = if own(&config) {
            let mut c = Config::clone(&config);
            c.admin = None;
            c.docker = None;
            c.proxy = ProxySettings::default();
            Arc::new(c)
        } else {
            config
        };
        let version = Version::of(&config);
        let mut clusters = lock(&self.inner.clusters);
        let tx = clusters
            .entry(cluster.to_owned())
            .or_insert_with(|| watch::channel(None).0);
        if tx.borrow().as_ref().map(|s| s.version) == Some(version) {
            debug!(cluster, %version, "published the version the cluster already has; nothing sent");
            return Ok(version);
        }
        let line = encode(&Down::Snapshot {
            version: stream::version_text(&version),
            config_json: config.to_json(),
        });
        if line.len() > MAX_SNAPSHOT_LINE {
            return Err(PublishError::TooLarge {
                cluster: cluster.to_owned(),
                size: line.len(),
                limit: MAX_SNAPSHOT_LINE,
            });
        }
        info!(cluster, %version, bytes = line.len(), "publishing");
        tx.send_replace(Some(Arc::new(Snapshot { version, line })));
        Ok(version)
    }

    /// The version currently published for `cluster`.
    pub fn current(&self, cluster: &str) -> Option<Version> {
        lock(&self.inner.clusters)
            .get(cluster)
            .and_then(|tx| tx.borrow().as_ref().map(|s| s.version))
    }

    /// Every service cluster with a published config, and its version, by
    /// name.
    pub fn published(&self) -> Vec<(String, Version)> {
        let mut list: Vec<(String, Version)> = lock(&self.inner.clusters)
            .iter()
            .filter_map(|(name, tx)| Some((name.clone(), tx.borrow().as_ref()?.version)))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Proxies whose stream ended within [`DEPARTED_FOR`] and that have not
    /// come back since (at most [`DEPARTED_KEPT`]), the latest first.
    pub fn departed(&self) -> Vec<DepartedProxy> {
        let mut departed = lock(&self.inner.departed);
        prune(&mut departed, SystemTime::now());
        departed.iter().rev().cloned().collect()
    }

    /// NACKs received per service cluster since the controller started.
    pub fn nacks_total(&self) -> BTreeMap<String, u64> {
        lock(&self.inner.nacks).clone()
    }

    /// Every connected proxy, by id (then by connection order).
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        let mut list: Vec<ProxyStatus> = lock(&self.inner.proxies)
            .values()
            .map(|e| e.status.clone())
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// Changes whenever [`Controller::proxies`] would answer differently
    /// (a proxy connected, left, ACKed, NACKed, or sent a heartbeat), for
    /// an admin API's long poll or a test's wait.
    pub fn watch_proxies(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Serves joins and streams on `listener` until `shutdown`, then ends
    /// every stream, gives connections [`ControllerOptions::shutdown_grace`]
    /// to close, and returns (the listener is closed by then, so its port
    /// can be bound again).
    pub async fn serve(
        &self,
        listener: TcpListener,
        state: ControllerState,
        shutdown: CancellationToken,
    ) -> Result<(), ControllerError> {
        let mut config = tls::controller_server_config(state.ca.cert_der(), &state.server)?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let state = Arc::new(state);
        let mut connections = JoinSet::new();
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, ca = %state.ca.digest(), "controller listening");
        }
        loop {
            let (tcp, addr) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors, most likely: give the
                        // process a moment rather than spin on the error.
                        warn!(error = %e, "accept failed");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        }
                    }
                },
            };
            while connections.try_join_next().is_some() {}
            let _ = tcp.set_nodelay(true);
            connections.spawn(connection(
                self.inner.clone(),
                acceptor.clone(),
                state.clone(),
                tcp,
                addr,
                shutdown.clone(),
            ));
        }
        drop(listener);
        let grace = self.inner.options.shutdown_grace;
        let closed = timeout(grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if closed.is_err() {
            warn!(
                left = connections.len(),
                "connections still open after the shutdown grace; cutting them"
            );
            connections.shutdown().await;
        }
        info!("controller stopped");
        Ok(())
    }
}

/// Drops departed proxies listed for longer than [`DEPARTED_FOR`] (or
/// beyond the [`DEPARTED_KEPT`] latest).
fn prune(departed: &mut VecDeque<DepartedProxy>, now: SystemTime) {
    while departed.len() > DEPARTED_KEPT
        || departed.front().is_some_and(|d| {
            now.duration_since(d.departed_at)
                .is_ok_and(|age| age > DEPARTED_FOR)
        })
    {
        departed.pop_front();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind, still
    // consistent field by field: keep serving rather than poison everyone.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn connection(
    inner: Arc<Inner>,
    acceptor: TlsAcceptor,
    state: Arc<ControllerState>,
    tcp: TcpStream,
    addr: SocketAddr,
    shutdown: CancellationToken,
) {
    let tls = match timeout(inner.options.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            warn!(peer = %addr, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            warn!(peer = %addr, "TLS handshake timed out");
            return;
        }
    };
    let peer = match tls::peer(tls.get_ref().1) {
        Ok(peer) => peer,
        Err(e) => {
            warn!(peer = %addr, error = %e, "refused a client certificate");
            return;
        }
    };
    debug!(peer = %addr, ?peer, "connection");
    let service = {
        let (inner, state, shutdown) = (inner.clone(), state.clone(), shutdown.clone());
        service_fn(move |request| {
            let (inner, state, peer, shutdown) =
                (inner.clone(), state.clone(), peer.clone(), shutdown.clone());
            async move { Ok::<_, Infallible>(handle(request, inner, state, peer, addr, shutdown).await) }
        })
    };
    let heartbeat = inner.options.heartbeat;
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // A partitioned proxy's connection outlives its stream (dropped for
        // silence) until something notices: HTTP/2 pings do, on the
        // stream's own schedule, so a shutdown need not wait out its grace.
        .keep_alive_interval(Some(heartbeat.interval))
        .keep_alive_timeout(heartbeat.patience())
        // A proxy needs one stream (a join is a connection of its own):
        // a few more cost nothing, hundreds would be someone else.
        .max_concurrent_streams(8)
        .max_header_list_size(16 << 10)
        // Snapshots can be large: let the window grow with the link.
        .adaptive_window(true)
        .serve_connection(TokioIo::new(tls), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(peer = %addr, error = %e, "connection ended");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            // `serve` bounds this wait (it cuts what is left).
            let _ = conn.await;
        }
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<ResponseBody> {
    let mut body: String = body.into();
    body.push('\n');
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn handle(
    request: Request<Incoming>,
    inner: Arc<Inner>,
    state: Arc<ControllerState>,
    peer: Peer,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Response<ResponseBody> {
    let path = request.uri().path();
    if path != JOIN_PATH && path != STREAM_PATH {
        return text(StatusCode::NOT_FOUND, "no such endpoint");
    }
    if request.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST only");
    }
    if path == JOIN_PATH {
        return join(request, &inner, &state, addr).await;
    }
    let Peer::Proxy(id) = peer else {
        warn!(peer = %addr, "refused a stream from a peer without a client certificate");
        return text(
            StatusCode::UNAUTHORIZED,
            "the stream needs a client certificate from the cluster CA: join first",
        );
    };
    let (tx, body) = Lines::channel(8);
    tokio::spawn(proxy_stream(
        inner,
        id,
        addr,
        request.into_body(),
        tx,
        shutdown,
    ));
    let mut response = Response::new(Either::Right(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

async fn join(
    request: Request<Incoming>,
    inner: &Inner,
    state: &ControllerState,
    addr: SocketAddr,
) -> Response<ResponseBody> {
    let body = Limited::new(request.into_body(), MAX_SMALL_MESSAGE);
    let bytes = match timeout(inner.options.handshake_timeout, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => {
            warn!(peer = %addr, error = %e, "join request unreadable");
            return text(
                StatusCode::BAD_REQUEST,
                format!("the join request is unreadable: {e}"),
            );
        }
        Err(_) => {
            warn!(peer = %addr, "join request not received in time");
            return text(
                StatusCode::REQUEST_TIMEOUT,
                "the join request took too long",
            );
        }
    };
    let request: JoinRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            warn!(peer = %addr, error = %e, "join request malformed");
            return text(
                StatusCode::BAD_REQUEST,
                format!("the join request is not JSON of the expected form: {e}"),
            );
        }
    };
    match verify_join(&request, &state.token, &state.ca) {
        Ok(cert) => {
            // `verify_join` accepted the id, so it is a valid one to log.
            info!(peer = %addr, proxy = %request.proxy_id, "proxy joined");
            let body = serde_json::to_vec(&JoinResponse::new(&cert, &state.ca))
                .expect("a join response always serializes");
            let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => {
            let status = match &e {
                JoinError::WrongSecret | JoinError::MalformedProof => StatusCode::FORBIDDEN,
                JoinError::TokenForAnotherCa { .. } | JoinError::Issue(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                _ => StatusCode::BAD_REQUEST,
            };
            // The requested id is not logged: it is unauthenticated input.
            warn!(peer = %addr, status = status.as_u16(), reason = %e, "join refused");
            text(status, format!("join refused: {e}"))
        }
    }
}

/// Removes a stream's entry when the stream ends, however it ends.
struct Registration {
    inner: Arc<Inner>,
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.inner.proxies).remove(&self.key);
        self.inner.changes.send_modify(|n| *n += 1);
    }
}

impl Inner {
    fn update(&self, key: u64, f: impl FnOnce(&mut ProxyStatus)) {
        if let Some(entry) = lock(&self.proxies).get_mut(&key) {
            f(&mut entry.status);
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Lists the proxy of stream `key` as departed, for `reason`.
    fn depart(&self, key: u64, reason: String) {
        // `proxies` stays locked until the entry is listed: a registration
        // (which takes `proxies`, then clears the id from `departed`) in
        // between would leave the proxy both connected and departed.
        let proxies = lock(&self.proxies);
        let Some(status) = proxies.get(&key).map(|e| e.status.clone()) else {
            return;
        };
        // Its old stream may end after its new one began.
        if proxies
            .iter()
            .any(|(k, e)| *k != key && e.status.id == status.id)
        {
            return;
        }
        let mut departed = lock(&self.departed);
        departed.push_back(DepartedProxy {
            status,
            departed_at: SystemTime::now(),
            reason,
        });
        prune(&mut departed, SystemTime::now());
    }

    fn subscribe(&self, cluster: &str) -> watch::Receiver<Option<Arc<Snapshot>>> {
        lock(&self.clusters)
            .entry(cluster.to_owned())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }
}

/// Why a stream ended, for its log line.
enum End {
    Shutdown,
    Replaced,
    Silent(Duration),
    Closed,
    Broken(String),
}

async fn proxy_stream(
    inner: Arc<Inner>,
    id: ProxyId,
    addr: SocketAddr,
    body: Incoming,
    tx: mpsc::Sender<Bytes>,
    shutdown: CancellationToken,
) {
    let patience = inner.options.heartbeat.patience();
    let mut reader = LineReader::new(body, MAX_SMALL_MESSAGE);
    let hello = match timeout(patience, reader.next::<Up>()).await {
        Ok(Ok(Some(Up::Hello {
            proxy_id,
            service_cluster,
            applied_version,
            listeners,
            admin,
        }))) => (proxy_id, service_cluster, applied_version, listeners, admin),
        Ok(Ok(Some(_))) => {
            warn!(peer = %addr, proxy = %id, "stream refused: it did not start with a hello");
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            warn!(peer = %addr, proxy = %id, error = %e, "stream refused");
            return;
        }
        Err(_) => {
            warn!(peer = %addr, proxy = %id, "stream refused: no hello in {patience:?}");
            return;
        }
    };
    let (claimed, cluster, applied, listeners, admin) = hello;
    if claimed != id.as_str() {
        // Its certificate says who it is; a hello naming someone else is a
        // misconfigured proxy (or a copied key), not to be listed as either.
        warn!(peer = %addr, proxy = %id, "stream refused: the hello names another proxy id than the certificate");
        return;
    }
    if let Err(e) = check_cluster_name(&cluster) {
        warn!(peer = %addr, proxy = %id, error = %e, "stream refused");
        return;
    }
    let applied = applied.filter(|v| is_version(v));
    let (listeners, admin) = announced(&id, addr, &listeners, admin.as_deref());

    let key = inner.next_stream.fetch_add(1, Ordering::Relaxed);
    let cancel = shutdown.child_token();
    let now = SystemTime::now();
    {
        let mut proxies = lock(&inner.proxies);
        for entry in proxies.values().filter(|e| e.status.id == id) {
            entry.cancel.cancel();
        }
        // Back: no longer departed.
        lock(&inner.departed).retain(|d| d.status.id != id);
        proxies.insert(
            key,
            Entry {
                status: ProxyStatus {
                    id: id.clone(),
                    address: addr,
                    service_cluster: cluster.clone(),
                    applied_version: applied.clone(),
                    last_nack: None,
                    nacks: 0,
                    connected_since: now,
                    last_heartbeat: now,
                    snapshots_sent: 0,
                    listeners,
                    admin,
                },
                cancel: cancel.clone(),
            },
        );
    }
    let _registration = Registration {
        inner: inner.clone(),
        key,
    };
    inner.changes.send_modify(|n| *n += 1);
    info!(peer = %addr, proxy = %id, cluster, applied = applied.as_deref().map(short).unwrap_or("none"), "proxy connected");

    let end = stream_loop(&inner, key, &id, &cluster, applied, reader, &tx, &cancel).await;
    let departure = match &end {
        End::Shutdown | End::Replaced => None,
        End::Silent(d) => Some(format!("silent for {d:?}")),
        End::Closed => Some("it closed its stream".to_owned()),
        End::Broken(e) => Some(e.clone()),
    };
    if let Some(reason) = departure.filter(|_| !shutdown.is_cancelled()) {
        inner.depart(key, reason);
    }
    match end {
        End::Shutdown => debug!(proxy = %id, "stream ended: shutting down"),
        End::Replaced if shutdown.is_cancelled() => {
            debug!(proxy = %id, "stream ended: shutting down")
        }
        End::Replaced => {
            info!(peer = %addr, proxy = %id, "stream replaced by a newer one from the same proxy")
        }
        End::Silent(d) => warn!(peer = %addr, proxy = %id, "proxy silent for {d:?}: dropped"),
        End::Closed => info!(peer = %addr, proxy = %id, "proxy closed its stream"),
        End::Broken(e) => warn!(peer = %addr, proxy = %id, error = %e, "stream lost"),
    }
}

/// A hello's listeners and admin address as the controller lists them:
/// readable ones only (at most [`MAX_LISTENERS`]), reachable from
/// elsewhere. What cannot be read is logged, not refused: the listing is
/// for people, and the stream is what matters.
fn announced(
    id: &ProxyId,
    addr: SocketAddr,
    listeners: &[String],
    admin: Option<&str>,
) -> (Vec<Endpoint>, Option<Endpoint>) {
    let read = |text: &str| match text.parse::<Endpoint>() {
        Ok(e) => e.listed_for(addr.ip()),
        Err(e) => {
            // Bounded: it comes from the peer.
            let shown: String = text.chars().take(80).collect();
            warn!(peer = %addr, proxy = %id, endpoint = shown, error = e, "unreadable endpoint in a hello; not listed");
            None
        }
    };
    let listeners = listeners
        .iter()
        .take(MAX_LISTENERS)
        .filter_map(|l| read(l))
        .collect();
    (listeners, admin.and_then(read))
}

fn short(version: &str) -> &str {
    version.get(..12).unwrap_or(version)
}

#[allow(clippy::too_many_arguments)]
async fn stream_loop(
    inner: &Inner,
    key: u64,
    id: &ProxyId,
    cluster: &str,
    applied: Option<String>,
    mut reader: LineReader<Incoming>,
    tx: &mpsc::Sender<Bytes>,
    cancel: &CancellationToken,
) -> End {
    let patience = inner.options.heartbeat.patience();
    let mut snapshots = inner.subscribe(cluster);
    // Look at the current snapshot once at the start, as if it had just
    // been published.
    snapshots.mark_changed();
    // What this proxy has or was last sent: a snapshot of that version is
    // not sent (again).
    let mut sent = applied;
    let mut beat = tokio::time::interval(inner.options.heartbeat.interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let heartbeat = encode(&Down::Heartbeat);
    let mut deadline = Instant::now() + patience;
    // A proxy that stops reading makes sends wait; as long as it may stay
    // silent, then it is gone.
    let send = |line: Bytes| async move {
        match timeout(patience, tx.send(line)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Closed),
            Err(_) => Err(End::Silent(patience)),
        }
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return End::Replaced,
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return End::Shutdown;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                let Some(snapshot) = snapshot else { continue };
                let version = stream::version_text(&snapshot.version);
                if sent.as_deref() == Some(version.as_str()) {
                    continue;
                }
                debug!(proxy = %id, version = %snapshot.version, "sending snapshot");
                if let Err(end) = send(snapshot.line.clone()).await {
                    return end;
                }
                sent = Some(version);
                inner.update(key, |s| s.snapshots_sent += 1);
            }
            _ = beat.tick() => {
                if let Err(end) = send(heartbeat.clone()).await {
                    return end;
                }
            }
            _ = sleep_until(deadline) => return End::Silent(patience),
            message = reader.next::<Up>() => {
                let message = match message {
                    Ok(Some(m)) => m,
                    Ok(None) => return End::Closed,
                    Err(e) => return End::Broken(e.to_string()),
                };
                deadline = Instant::now() + patience;
                let now = SystemTime::now();
                match message {
                    Up::Heartbeat => inner.update(key, |s| s.last_heartbeat = now),
                    Up::Ack { version } if is_version(&version) => {
                        info!(proxy = %id, cluster, version = short(&version), "proxy applied");
                        inner.update(key, |s| {
                            s.last_heartbeat = now;
                            s.applied_version = Some(version);
                        });
                    }
                    Up::Nack { version, reason } if is_version(&version) => {
                        let reason = bounded_reason(&reason);
                        warn!(proxy = %id, cluster, version = short(&version), reason, "proxy refused a snapshot");
                        *lock(&inner.nacks).entry(cluster.to_owned()).or_default() += 1;
                        inner.update(key, |s| {
                            s.last_heartbeat = now;
                            s.nacks += 1;
                            s.last_nack = Some(Nack { version, reason, at: now });
                        });
                    }
                    Up::Ack { .. } | Up::Nack { .. } => {
                        return End::Broken("an ACK or NACK names no valid version".into())
                    }
                    Up::Hello { .. } => return End::Broken("a second hello".into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn departed(id: &str, at: SystemTime) -> DepartedProxy {
        DepartedProxy {
            status: ProxyStatus {
                id: ProxyId::new(id).unwrap(),
                address: "127.0.0.1:1".parse().unwrap(),
                service_cluster: "default".into(),
                applied_version: None,
                last_nack: None,
                nacks: 0,
                connected_since: at,
                last_heartbeat: at,
                snapshots_sent: 0,
                listeners: Vec::new(),
                admin: None,
            },
            departed_at: at,
            reason: "it closed its stream".into(),
        }
    }

    #[test]
    fn departed_proxies_are_kept_an_hour_and_the_latest_few() {
        let now = SystemTime::now();
        let mut list: VecDeque<DepartedProxy> = [
            departed("old", now - DEPARTED_FOR - Duration::from_secs(1)),
            departed("recent", now - Duration::from_secs(60)),
        ]
        .into();
        prune(&mut list, now);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].status.id.as_str(), "recent");
        for i in 0..DEPARTED_KEPT + 5 {
            list.push_back(departed(&format!("p{i}"), now));
        }
        prune(&mut list, now);
        assert_eq!(list.len(), DEPARTED_KEPT);
        assert_eq!(list[0].status.id.as_str(), "p5");
    }

    #[test]
    fn a_proxy_is_current_behind_or_nacking() {
        let (v1, v2) = (
            Version::of(&Config::default()),
            Version::of(&Config {
                services: vec![portico_model::Service {
                    name: "web".into(),
                    ..Default::default()
                }],
                ..Config::default()
            }),
        );
        let mut p = departed("lb-1", SystemTime::now()).status;
        assert_eq!(p.sync(None), SyncState::Unpublished);
        assert_eq!(p.sync(Some(&v1)), SyncState::Behind);
        p.applied_version = Some(v1.full());
        assert_eq!(p.sync(Some(&v1)), SyncState::Current);
        assert_eq!(p.sync(Some(&v2)), SyncState::Behind);
        p.last_nack = Some(Nack {
            version: v2.full(),
            reason: "no".into(),
            at: SystemTime::now(),
        });
        assert_eq!(p.sync(Some(&v2)), SyncState::Nacking);
        // A NACK of an older version says nothing of the current one.
        assert_eq!(p.sync(Some(&v1)), SyncState::Current);
    }

    #[test]
    fn a_hello_s_endpoints_are_read_leniently_and_made_reachable() {
        let id = ProxyId::new("lb-1").unwrap();
        let peer: SocketAddr = "10.0.0.7:51234".parse().unwrap();
        let many: Vec<String> = (0..40)
            .map(|p| format!("http://0.0.0.0:{}", 8000 + p))
            .collect();
        let (listeners, admin) = announced(&id, peer, &many, Some("gopher://x"));
        assert_eq!(listeners.len(), MAX_LISTENERS);
        assert_eq!(listeners[0].to_string(), "http://10.0.0.7:8000");
        assert_eq!(admin, None);
    }
}
