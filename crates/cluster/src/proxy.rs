//! A proxy's side of the stream: join once (or use the credentials in its
//! state directory), then hold the stream, apply snapshots, persist the
//! last good one, and reconnect when the controller goes away.
//!
//! # The state directory
//! - `client.key` (0600), `client.crt`, `cluster-ca.crt`: what the join
//!   gave. Written key first and CA last, each atomically, and read only
//!   when all three are there: a crash in between means joining again.
//! - `last-good.json` (0600: it holds the services' private keys): the
//!   snapshot last applied, as received. [`ProxyClient::last_good`] reads
//!   it so that a proxy restarted while the controller is away serves at
//!   once.
//!
//! # When the controller is away
//! The proxy serves whatever `apply` last accepted; nothing here ever
//! takes a version back. A lost stream (ended, broken, or silent for
//! [`Heartbeat::patience`]) is logged once, reconnection attempts at debug
//! level, and the reconnection once, with how long it took.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portico_model::{Config, Version};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ca::{CertFacts, Credentials, IssuedCert};
use crate::id::ProxyId;
use crate::join::{JoinError, JoinResponse, JoinedProxy, PendingJoin};
use crate::state;
use crate::stream::{
    self, bounded_reason, check_cluster_name, encode, Down, Endpoint, Heartbeat, LineReader, Lines,
    Up, ALPN_H2, JOIN_PATH, MAX_SMALL_MESSAGE, MAX_SNAPSHOT_LINE, STREAM_PATH,
};
use crate::tls::{self, TlsError};
use crate::token::JoinToken;

/// The proxy's private key, in its state directory (0600).
pub const CLIENT_KEY_FILE: &str = "client.key";
/// The proxy's client certificate.
pub const CLIENT_CERT_FILE: &str = "client.crt";
/// The cluster CA the join answered with: the only CA the proxy trusts.
pub const CLUSTER_CA_FILE: &str = "cluster-ca.crt";
/// The last snapshot applied (0600).
pub const LAST_GOOD_FILE: &str = "last-good.json";

/// How a proxy gets its certificate.
#[derive(Clone, Debug)]
pub enum Enrollment {
    /// Use the credentials in the state directory if they are there, for
    /// this proxy id, from this token's CA, and not expired; join with the
    /// token otherwise.
    Token(JoinToken),
    /// A certificate given directly (issued by `ClusterCa::issue_client`):
    /// no join, nothing read from or written to the state directory but
    /// the last good snapshot.
    Credentials(JoinedProxy),
}

/// Timings of the proxy's side.
#[derive(Clone, Copy, Debug)]
pub struct ProxyOptions {
    pub heartbeat: Heartbeat,
    /// Bounds connecting (TCP, TLS, HTTP/2) and the controller's answer to
    /// a join or to the stream's request.
    pub connect_timeout: Duration,
    /// The first wait before reconnecting; it doubles at each failure.
    pub backoff_min: Duration,
    /// The longest wait between two attempts.
    pub backoff_max: Duration,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            heartbeat: Heartbeat::default(),
            connect_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// Where a proxy's link to the controller stands, for its admin API (and
/// tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// A stream is established (the controller answered the hello).
    pub connected: bool,
    /// The version `apply` last accepted here, or the one the proxy was
    /// started with.
    pub applied: Option<Version>,
    /// Streams established so far.
    pub connects: u64,
    /// Established streams lost so far.
    pub losses: u64,
    /// Why the last stream or attempt ended.
    pub last_error: Option<String>,
}

/// Why [`ProxyClient::run`] gave up. Network trouble is never a reason:
/// it retries that for as long as it runs.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid service cluster name: {0}")]
    ClusterName(String),
    #[error("the controller refused to join this proxy ({status}): {reason}")]
    JoinRefused { status: StatusCode, reason: String },
    #[error("the controller's join answer is not acceptable: {0}")]
    JoinAnswer(JoinError),
    #[error("preparing the join failed: {0}")]
    Join(JoinError),
    #[error("building the TLS config failed: {0}")]
    Tls(#[from] TlsError),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the controller name {0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// Why the last good snapshot could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LastGoodError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Config(portico_model::ConfigErrors),
}

/// One proxy's link to its controller.
pub struct ProxyClient {
    /// `HOST:PORT`, resolved at each attempt (the controller may move).
    pub controller: String,
    /// The name the controller's certificate must carry.
    pub server_name: String,
    pub state_dir: PathBuf,
    pub enrollment: Enrollment,
    pub proxy_id: ProxyId,
    pub service_cluster: String,
    /// The version the proxy already serves (the last good it booted from,
    /// say): sent in the hello so that a controller with the same sends
    /// nothing. `None`: the controller sends its current snapshot.
    pub applied: Option<Version>,
    /// Where the proxy serves traffic, announced in every hello so that
    /// the controller can list it (the controller never dials proxies).
    pub listeners: Vec<Endpoint>,
    /// Its admin API, announced the same way.
    pub admin: Option<Endpoint>,
    pub options: ProxyOptions,
    status: watch::Sender<LinkStatus>,
}

impl ProxyClient {
    pub fn new(
        controller: impl Into<String>,
        server_name: impl Into<String>,
        state_dir: impl Into<PathBuf>,
        enrollment: Enrollment,
        proxy_id: ProxyId,
        service_cluster: impl Into<String>,
    ) -> Self {
        ProxyClient {
            controller: controller.into(),
            server_name: server_name.into(),
            state_dir: state_dir.into(),
            enrollment,
            proxy_id,
            service_cluster: service_cluster.into(),
            applied: None,
            listeners: Vec::new(),
            admin: None,
            options: ProxyOptions::default(),
            status: watch::channel(LinkStatus::default()).0,
        }
    }

    pub fn with_options(mut self, options: ProxyOptions) -> Self {
        self.options = options;
        self
    }

    pub fn with_applied(mut self, applied: Option<Version>) -> Self {
        self.applied = applied;
        self
    }

    /// Announces where the proxy serves traffic and its admin API.
    pub fn with_endpoints(mut self, listeners: Vec<Endpoint>, admin: Option<Endpoint>) -> Self {
        self.listeners = listeners;
        self.admin = admin;
        self
    }

    /// The link's state, updated as it changes.
    pub fn status(&self) -> watch::Receiver<LinkStatus> {
        self.status.subscribe()
    }

    /// The snapshot last applied, from `state_dir`, checked as any snapshot
    /// is; `None` if there is none yet.
    pub fn last_good(state_dir: &Path) -> Result<Option<(Config, Version)>, LastGoodError> {
        let path = state_dir.join(LAST_GOOD_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(LastGoodError::Io { path, source }),
        };
        let config =
            Config::from_json(&text, &path.display().to_string()).map_err(LastGoodError::Config)?;
        let version = Version::of(&config);
        Ok(Some((config, version)))
    }

    /// Joins if needed, then holds the stream until `shutdown`, calling
    /// `apply` with each snapshot: `Ok` is persisted and ACKed, `Err(why)`
    /// NACKed with `why`. `apply` runs on the stream's task: it should
    /// compile and swap, not wait on the network.
    ///
    /// Returns `Ok` at shutdown, and an error only for what retrying cannot
    /// fix (a refused join, an unwritable state directory).
    pub async fn run<F>(self, apply: F, shutdown: CancellationToken) -> Result<(), ProxyError>
    where
        F: FnMut(Config, Version) -> Result<(), String> + Send + 'static,
    {
        // Applying a snapshot is blocking work (parse, check, build the
        // routing table, two fsyncs): it runs on the blocking pool, not on
        // the runtime that also serves the proxy's traffic.
        let apply = Arc::new(std::sync::Mutex::new(apply));
        check_cluster_name(&self.service_cluster).map_err(ProxyError::ClusterName)?;
        ServerName::try_from(self.server_name.clone())
            .map_err(|_| ProxyError::ServerName(self.server_name.clone()))?;
        let Some(joined) = self.credentials(&shutdown).await? else {
            return Ok(());
        };
        let mut config = joined.client_config()?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        let connector = TlsConnector::from(Arc::new(config));
        self.status.send_modify(|s| s.applied = self.applied);

        let mut backoff = Backoff::new(self.options.backoff_min, self.options.backoff_max);
        // Since when the controller has been away, and whether that was
        // said: each loss is logged once, not at every attempt.
        let mut away: Option<(Instant, bool)> = None;
        let mut attempts = 0u32;
        loop {
            let outcome = self
                .session(&connector, &apply, &shutdown, &mut away, &mut attempts)
                .await;
            let (established, reason) = match outcome {
                Session::Shutdown => return Ok(()),
                Session::Lost(reason) => (true, reason),
                Session::Failed(reason) => (false, reason),
            };
            let serving = self
                .status
                .borrow()
                .applied
                .map(|v| v.to_string())
                .unwrap_or_else(|| "none".into());
            if established {
                backoff.reset();
                attempts = 0;
                warn!(controller = %self.controller, reason, serving, "lost the controller stream; serving the last version until it is back");
                away = Some((Instant::now(), true));
                self.status.send_modify(|s| {
                    s.connected = false;
                    s.losses += 1;
                    s.last_error = Some(reason);
                });
            } else {
                attempts += 1;
                match &mut away {
                    Some((_, true)) => {
                        debug!(controller = %self.controller, reason, attempts, "controller still unreachable")
                    }
                    _ => {
                        warn!(controller = %self.controller, reason, serving, "controller unreachable; retrying");
                        away = Some((away.map_or_else(Instant::now, |a| a.0), true));
                    }
                }
                self.status.send_modify(|s| s.last_error = Some(reason));
            }
            let wait = backoff.next();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The proxy's credentials: given, stored, or joined for (`None` if
    /// shut down while joining).
    async fn credentials(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Option<JoinedProxy>, ProxyError> {
        let token = match &self.enrollment {
            Enrollment::Credentials(joined) => return Ok(Some(joined.clone())),
            Enrollment::Token(token) => token,
        };
        match self.stored(token) {
            Ok(joined) => return Ok(Some(joined)),
            Err(why) => info!(dir = %self.state_dir.display(), why, "joining the cluster"),
        }
        let mut backoff = Backoff::new(self.options.backoff_min, self.options.backoff_max);
        let mut logged = false;
        loop {
            let pending =
                PendingJoin::new(token, self.proxy_id.clone()).map_err(ProxyError::Join)?;
            match self.join_once(token, &pending).await {
                Ok(response) => {
                    let joined = pending.finish(&response).map_err(ProxyError::JoinAnswer)?;
                    self.store(&joined)?;
                    info!(controller = %self.controller, proxy = %self.proxy_id, "joined the cluster");
                    return Ok(Some(joined));
                }
                Err(JoinAttempt::Refused { status, reason }) => {
                    return Err(ProxyError::JoinRefused { status, reason })
                }
                Err(JoinAttempt::Failed(reason)) => {
                    if logged {
                        debug!(controller = %self.controller, reason, "join attempt failed");
                    } else {
                        warn!(controller = %self.controller, reason, "cannot reach the controller to join; retrying");
                        logged = true;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(backoff.next()) => {}
            }
        }
    }

    /// The credentials in the state directory, if all there and usable.
    fn stored(&self, token: &JoinToken) -> Result<JoinedProxy, String> {
        let read = |name: &str| {
            fs::read_to_string(self.state_dir.join(name)).map_err(|e| format!("{name}: {e}"))
        };
        let (key, cert, ca) = (
            read(CLIENT_KEY_FILE)?,
            read(CLIENT_CERT_FILE)?,
            read(CLUSTER_CA_FILE)?,
        );
        let credentials = Credentials::from_pem(&cert, &key).map_err(|e| e.to_string())?;
        let ca_cert = IssuedCert::from_pem(&ca).map_err(|e| format!("{CLUSTER_CA_FILE}: {e}"))?;
        if crate::ca::CaDigest::of(&ca_cert.der) != *token.ca_digest() {
            return Err(
                "the stored credentials are from another cluster CA than the token's".into(),
            );
        }
        let facts = CertFacts::of(&credentials.cert.der)?;
        if facts.common_name.as_deref() != Some(self.proxy_id.as_str()) {
            return Err("the stored certificate is for another proxy id".into());
        }
        // Renewal over the stream is still to come: until then, a
        // certificate close to its end is replaced by joining again.
        if credentials.cert.renew_at() <= SystemTime::now() {
            return Err("the stored certificate is due for renewal".into());
        }
        Ok(JoinedProxy {
            proxy_id: self.proxy_id.clone(),
            credentials,
            ca_cert,
        })
    }

    fn store(&self, joined: &JoinedProxy) -> Result<(), ProxyError> {
        state::create_dir(&self.state_dir).map_err(|source| ProxyError::Io {
            action: "creating",
            path: self.state_dir.clone(),
            source,
        })?;
        for (name, contents, mode) in [
            (
                CLIENT_KEY_FILE,
                joined.credentials.key_pem(),
                state::PRIVATE,
            ),
            (
                CLIENT_CERT_FILE,
                joined.credentials.cert.pem.as_str(),
                state::PUBLIC,
            ),
            (CLUSTER_CA_FILE, joined.ca_cert.pem.as_str(), state::PUBLIC),
        ] {
            let path = self.state_dir.join(name);
            state::write_atomic(&path, contents.as_bytes(), mode).map_err(|source| {
                ProxyError::Io {
                    action: "writing",
                    path,
                    source,
                }
            })?;
        }
        Ok(())
    }

    async fn connect<B>(&self, config: TlsConnector) -> Result<http2::SendRequest<B>, String>
    where
        B: hyper::body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let name = ServerName::try_from(self.server_name.clone())
            .map_err(|_| format!("invalid server name {:?}", self.server_name))?;
        let attempt = async {
            let tcp = TcpStream::connect(self.controller.as_str())
                .await
                .map_err(|e| format!("connecting: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let tls = config
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .adaptive_window(true)
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP/2: {e}"))?;
            tokio::spawn(async move {
                // Ends when the connection does: every handle dropped, or
                // the peer gone. Its error is the stream's, reported there.
                let _ = conn.await;
            });
            Ok::<_, String>(send)
        };
        timeout(self.options.connect_timeout, attempt)
            .await
            .map_err(|_| format!("no connection in {:?}", self.options.connect_timeout))?
    }

    fn uri(&self, path: &str) -> String {
        format!("https://{}{path}", self.server_name)
    }

    async fn join_once(
        &self,
        token: &JoinToken,
        pending: &PendingJoin,
    ) -> Result<JoinResponse, JoinAttempt> {
        let mut config = tls::first_contact_client_config(*token.ca_digest())
            .map_err(|e| JoinAttempt::Failed(e.to_string()))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        let mut send = self
            .connect::<Full<Bytes>>(TlsConnector::from(Arc::new(config)))
            .await
            .map_err(JoinAttempt::Failed)?;
        let body = serde_json::to_vec(pending.request()).expect("a join request serializes");
        let request = Request::post(self.uri(JOIN_PATH))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| JoinAttempt::Failed(e.to_string()))?;
        let exchange = async {
            let response = send
                .send_request(request)
                .await
                .map_err(|e| JoinAttempt::Failed(e.to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_SMALL_MESSAGE)
                .collect()
                .await
                .map_err(|e| JoinAttempt::Failed(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok((status, body))
        };
        let (status, body) = timeout(self.options.connect_timeout, exchange)
            .await
            .map_err(|_| JoinAttempt::Failed("no answer to the join in time".into()))??;
        if status == StatusCode::OK {
            return serde_json::from_slice(&body)
                .map_err(|e| JoinAttempt::Failed(format!("the join answer does not parse: {e}")));
        }
        let reason = bounded_reason(String::from_utf8_lossy(&body).trim());
        if status.is_client_error() {
            Err(JoinAttempt::Refused { status, reason })
        } else {
            // The controller's trouble (a token for another CA, say):
            // perhaps fixed by the time we retry.
            Err(JoinAttempt::Failed(format!("{status}: {reason}")))
        }
    }

    /// One stream, from connecting to its end.
    async fn session<F>(
        &self,
        connector: &TlsConnector,
        apply: &Arc<std::sync::Mutex<F>>,
        shutdown: &CancellationToken,
        away: &mut Option<(Instant, bool)>,
        attempts: &mut u32,
    ) -> Session
    where
        F: FnMut(Config, Version) -> Result<(), String> + Send + 'static,
    {
        let connect = tokio::select! {
            _ = shutdown.cancelled() => return Session::Shutdown,
            c = self.connect::<Lines>(connector.clone()) => c,
        };
        let mut send = match connect {
            Ok(s) => s,
            Err(e) => return Session::Failed(e),
        };
        let (tx, body) = Lines::channel(8);
        let hello = encode(&Up::Hello {
            proxy_id: self.proxy_id.to_string(),
            service_cluster: self.service_cluster.clone(),
            applied_version: self
                .status
                .borrow()
                .applied
                .as_ref()
                .map(stream::version_text),
            listeners: self.listeners.iter().map(ToString::to_string).collect(),
            admin: self.admin.map(|a| a.to_string()),
        });
        // The channel is empty: this cannot wait.
        let _ = tx.try_send(hello);
        let request = match Request::post(self.uri(STREAM_PATH))
            .header(http::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body)
        {
            Ok(r) => r,
            Err(e) => return Session::Failed(e.to_string()),
        };
        let response = tokio::select! {
            _ = shutdown.cancelled() => return Session::Shutdown,
            r = timeout(self.options.connect_timeout, send.send_request(request)) => r,
        };
        let response = match response {
            Ok(Ok(r)) => r,
            // TLS 1.3 lets the client finish its handshake before the
            // server has checked its certificate: a refused certificate
            // shows up here as a connection gone without a word, or as an
            // I/O error under hyper's (the server's alert, a reset).
            Ok(Err(e)) if e.is_canceled() || e.is_closed() || broke_below(&e) => {
                let e = with_sources(&e);
                return Session::Failed(format!(
                    "the controller closed the connection before answering ({e}): if this \
                     persists, it refuses this proxy's certificate (issued by another cluster's \
                     CA?); its log says why; to join again with the token, remove \
                     {CLIENT_CERT_FILE} and {CLIENT_KEY_FILE} from {}",
                    self.state_dir.display()
                ));
            }
            Ok(Err(e)) => return Session::Failed(format!("the stream request failed: {e}")),
            Err(_) => return Session::Failed("no answer to the stream request in time".into()),
        };
        if response.status() != StatusCode::OK {
            let status = response.status();
            let body = timeout(
                self.options.connect_timeout,
                Limited::new(response.into_body(), MAX_SMALL_MESSAGE).collect(),
            )
            .await;
            let text = match body {
                Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).trim().to_owned(),
                _ => String::new(),
            };
            return Session::Failed(format!("the controller answered {status}: {text}"));
        }

        match away.take() {
            Some((since, _)) => info!(
                controller = %self.controller,
                after = ?since.elapsed(),
                attempts = *attempts + 1,
                "reconnected to the controller"
            ),
            None => {
                info!(controller = %self.controller, cluster = %self.service_cluster, "connected to the controller")
            }
        }
        self.status.send_modify(|s| {
            s.connected = true;
            s.connects += 1;
        });

        let patience = self.options.heartbeat.patience();
        let mut reader = LineReader::new(response.into_body(), MAX_SNAPSHOT_LINE);
        let heartbeat = encode(&Up::Heartbeat);
        let mut beat = tokio::time::interval(self.options.heartbeat.interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The hello went first: the first heartbeat is one interval later.
        beat.reset();
        let mut deadline = Instant::now() + patience;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // End the request body and let the controller end its
                    // side: it then lists a proxy that left, not a stream
                    // that broke. Bounded: a shutdown does not wait on it.
                    drop(tx);
                    let _ = timeout(Duration::from_secs(1), async {
                        while let Ok(Some(_)) = reader.next::<Down>().await {}
                    })
                    .await;
                    return Session::Shutdown;
                }
                _ = beat.tick() => {
                    // A full channel means the controller is not reading:
                    // nothing to add to it; its silence will tell.
                    let _ = tx.try_send(heartbeat.clone());
                }
                _ = sleep_until(deadline) => {
                    return Session::Lost(format!("nothing from the controller in {patience:?}"));
                }
                message = reader.next::<Down>() => {
                    let message = match message {
                        Ok(Some(m)) => m,
                        Ok(None) => return Session::Lost("the controller ended the stream".into()),
                        Err(e) => return Session::Lost(e.to_string()),
                    };
                    match message {
                        Down::Heartbeat => {}
                        Down::Snapshot { version, config_json } => {
                            let job = {
                                let (apply, dir) = (apply.clone(), self.state_dir.clone());
                                move || {
                                    // A panic inside `apply` leaves nothing
                                    // half-done that the next call relies on.
                                    let mut apply = apply.lock().unwrap_or_else(|p| p.into_inner());
                                    apply_snapshot(&dir, version, &config_json, &mut *apply)
                                }
                            };
                            let (answer, applied) = match tokio::task::spawn_blocking(job).await {
                                Ok(done) => done,
                                Err(e) => return Session::Lost(format!("applying a snapshot failed: {e}")),
                            };
                            if let Some(found) = applied {
                                self.status.send_modify(|s| s.applied = Some(found));
                            }
                            match timeout(patience, tx.send(encode(&answer))).await {
                                Ok(Ok(())) => {}
                                _ => return Session::Lost("the controller stopped reading".into()),
                            }
                        }
                    }
                    // After the snapshot is applied: time spent applying is
                    // not the controller's silence.
                    deadline = Instant::now() + patience;
                }
            }
        }
    }
}

/// Applies one snapshot and persists it as the last good one: the ACK or
/// NACK to send, and the version now applied if it was.
fn apply_snapshot<F>(
    state_dir: &Path,
    version: String,
    config_json: &str,
    apply: &mut F,
) -> (Up, Option<Version>)
where
    F: FnMut(Config, Version) -> Result<(), String>,
{
    let nack = |reason: String| {
        let reason = bounded_reason(&reason);
        warn!(
            version = version.get(..12).unwrap_or(&version),
            reason, "refused a snapshot; keeping the current version"
        );
        Up::Nack {
            version: version.clone(),
            reason,
        }
    };
    let config = match Config::from_json(config_json, "snapshot") {
        Ok(c) => c,
        Err(e) => return (nack(format!("the snapshot does not parse: {e}")), None),
    };
    let found = Version::of(&config);
    if stream::version_text(&found) != version {
        let reason =
            format!("the snapshot's content is version {found}, not the version it was sent as");
        return (nack(reason), None);
    }
    if let Err(reason) = apply(config, found) {
        return (nack(reason), None);
    }
    // Applied: from here on this is the version to boot from. Should the
    // write fail, the proxy still serves it: say so, and ACK what is true.
    let path = state_dir.join(LAST_GOOD_FILE);
    let persisted = state::create_dir(state_dir)
        .and_then(|()| state::write_atomic(&path, config_json.as_bytes(), state::PRIVATE));
    if let Err(e) = persisted {
        warn!(path = %path.display(), error = %e, "applied a snapshot but could not persist it: a restart would boot from an older one");
    }
    info!(%found, "applied a snapshot");
    (Up::Ack { version }, Some(found))
}

enum Session {
    Shutdown,
    /// An established stream ended.
    Lost(String),
    /// No stream was established.
    Failed(String),
}

enum JoinAttempt {
    /// The controller said no: retrying would get the same answer.
    Refused {
        status: StatusCode,
        reason: String,
    },
    Failed(String),
}

/// Exponential backoff with jitter: each wait is drawn between half and
/// all of the current step, so that proxies cut off together do not all
/// come back in the same millisecond.
struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Backoff {
            min,
            max,
            step: min,
        }
    }

    fn reset(&mut self) {
        self.step = self.min;
    }

    fn next(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        let mut random = [0u8; 4];
        // Without randomness, no jitter: still a bounded wait.
        let fraction = match aws_lc_rs::rand::fill(&mut random) {
            Ok(()) => f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX),
            Err(_) => 1.0,
        };
        step.mul_f64(0.5 + 0.5 * fraction)
    }
}

/// Whether hyper's error has an I/O error under it: the connection broke
/// (rather than HTTP/2 going wrong on a working one).
fn broke_below(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// An error and its sources, as one line: hyper's own text ("connection
/// error") says nothing of a TLS alert under it.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_told_with_its_sources() {
        #[derive(Debug)]
        struct Outer(io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("connection error")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            "received fatal alert: BadCertificate",
        );
        assert_eq!(
            with_sources(&Outer(alert)),
            "connection error: received fatal alert: BadCertificate"
        );
    }

    #[test]
    fn backoff_doubles_within_its_bounds_and_resets() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(10));
        let mut b = Backoff::new(min, max);
        let mut step = min;
        for _ in 0..12 {
            let wait = b.next();
            assert!(wait >= step / 2 && wait <= step, "{wait:?} for {step:?}");
            step = (step * 2).min(max);
        }
        assert_eq!(b.step, max);
        b.reset();
        assert!(b.next() <= min);
    }
}
