//! The snapshot stream over real sockets on 127.0.0.1: a controller
//! ([`Controller::serve`]) and proxies ([`ProxyClient::run`]) joining with a
//! token, receiving, applying, ACKing and NACKing snapshots, surviving the
//! controller's absence and a partition. Every wait is on a condition
//! (watch channels fed by the controller and by the proxies' `apply`),
//! bounded by [`WAIT`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_cluster::proxy::{CLIENT_CERT_FILE, CLIENT_KEY_FILE, LAST_GOOD_FILE};
use portico_cluster::{
    tls, ClusterCa, Controller, ControllerOptions, ControllerState, Endpoint, Enrollment,
    Heartbeat, JoinToken, JoinedProxy, LinkStatus, ProxyClient, ProxyId, ProxyOptions, ProxyStatus,
};
use portico_model::{Config, HostPattern, Service, Version};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

/// Every wait is bounded by this: a hang is a failure.
const WAIT: Duration = Duration::from_secs(10);
const SERVER_NAME: &str = "portico-controller";
const NAMES: [&str; 2] = [SERVER_NAME, "127.0.0.1"];

/// Fast enough that a silent peer is noticed in well under a second,
/// slow enough that a busy 2-core machine does not miss three in a row.
fn heartbeat() -> Heartbeat {
    Heartbeat {
        interval: Duration::from_millis(200),
        missed: 3,
    }
}

/// The crate's logs in the test's output (shown when it fails).
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("portico_cluster=debug")
        .try_init();
}

fn controller_options() -> ControllerOptions {
    ControllerOptions {
        heartbeat: heartbeat(),
        handshake_timeout: Duration::from_secs(2),
        shutdown_grace: Duration::from_secs(2),
    }
}

fn proxy_options() -> ProxyOptions {
    ProxyOptions {
        heartbeat: heartbeat(),
        connect_timeout: Duration::from_secs(2),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
    }
}

/// A config routing one host per name to a dummy upstream; a service
/// named `unloadable` is one the test proxies' `apply` refuses.
fn config(names: &[&str]) -> Arc<Config> {
    let services = names
        .iter()
        .map(|name| Service {
            name: (*name).to_owned(),
            hosts: vec![HostPattern::Exact(format!("{name}.test"))],
            upstreams: vec!["127.0.0.1:9".parse().unwrap()],
            ..Service::default()
        })
        .collect();
    Arc::new(Config {
        services,
        ..Config::default()
    })
}

/// A cluster's secrets in a state directory, as `portico controller init`
/// leaves them.
struct Secrets {
    dir: tempfile::TempDir,
}

impl Secrets {
    fn init() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::init(dir.path()).unwrap();
        JoinToken::generate(*ca.digest())
            .unwrap()
            .write_file(&dir.path().join("join-token"))
            .unwrap();
        Secrets { dir }
    }

    /// Loaded afresh, as a controller started anywhere does.
    fn load(&self) -> (Arc<ClusterCa>, JoinToken) {
        let ca = ClusterCa::load(self.dir.path()).unwrap();
        let token = JoinToken::read_file(&self.dir.path().join("join-token")).unwrap();
        (Arc::new(ca), token)
    }

    fn token(&self) -> JoinToken {
        self.load().1
    }
}

struct RunningController {
    controller: Controller,
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningController {
    async fn start(secrets: &Secrets) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        RunningController::start_on(secrets, listener)
    }

    fn start_on(secrets: &Secrets, listener: TcpListener) -> Self {
        logs();
        let (ca, token) = secrets.load();
        let state = ControllerState::new(ca, token, &NAMES).unwrap();
        let addr = listener.local_addr().unwrap();
        let controller = Controller::new(controller_options());
        let shutdown = CancellationToken::new();
        let task = {
            let (c, s) = (controller.clone(), shutdown.clone());
            tokio::spawn(async move { c.serve(listener, state, s).await.unwrap() })
        };
        RunningController {
            controller,
            addr,
            shutdown,
            task,
        }
    }

    /// Stops it and waits until its port is free.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the controller did not stop in time")
            .unwrap();
    }

    fn publish(&self, cluster: &str, config: &Arc<Config>) -> Version {
        self.controller.publish(cluster, config.clone()).unwrap()
    }

    /// Waits until the list of connected proxies satisfies `ok`.
    async fn until(&self, what: &str, mut ok: impl FnMut(&[ProxyStatus]) -> bool) {
        let mut changes = self.controller.watch_proxies();
        let c = self.controller.clone();
        tokio::time::timeout(WAIT, changes.wait_for(|_| ok(&c.proxies())))
            .await
            .unwrap_or_else(|_| panic!("{what}: not in time; proxies: {:#?}", c.proxies()))
            .unwrap();
    }

    fn proxy(&self, id: &str) -> ProxyStatus {
        self.controller
            .proxies()
            .into_iter()
            .find(|p| p.id.as_str() == id)
            .unwrap_or_else(|| panic!("{id} is not connected"))
    }
}

fn applied_everywhere(list: &[ProxyStatus], n: usize, version: &Version) -> bool {
    list.len() == n
        && list
            .iter()
            .all(|p| p.applied_version.as_deref() == Some(version.full().as_str()))
}

struct RunningProxy {
    /// Every version `apply` accepted, in order.
    applied: watch::Receiver<Vec<Version>>,
    status: watch::Receiver<LinkStatus>,
    state_dir: PathBuf,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), portico_cluster::proxy::ProxyError>>,
}

struct ProxySpec<'a> {
    controller: SocketAddr,
    id: &'a str,
    cluster: &'a str,
    state_dir: &'a Path,
    enrollment: Enrollment,
    applied: Option<Version>,
}

impl RunningProxy {
    fn start(spec: ProxySpec<'_>) -> Self {
        RunningProxy::announcing(spec, Vec::new(), None)
    }

    /// A proxy that announces `listeners` and `admin` in its hello.
    fn announcing(spec: ProxySpec<'_>, listeners: Vec<Endpoint>, admin: Option<Endpoint>) -> Self {
        let client = ProxyClient::new(
            spec.controller.to_string(),
            SERVER_NAME,
            spec.state_dir,
            spec.enrollment,
            ProxyId::new(spec.id).unwrap(),
            spec.cluster,
        )
        .with_options(proxy_options())
        .with_applied(spec.applied)
        .with_endpoints(listeners, admin);
        let status = client.status();
        let (record, applied) = watch::channel(Vec::new());
        let apply = move |config: Config, version: Version| {
            if config.services.iter().any(|s| s.name == "unloadable") {
                return Err("service unloadable: its certificate cannot be loaded".to_owned());
            }
            record.send_modify(|list| list.push(version));
            Ok(())
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(client.run(apply, shutdown.clone()));
        RunningProxy {
            applied,
            status,
            state_dir: spec.state_dir.to_owned(),
            shutdown,
            task,
        }
    }

    /// A proxy with `token`, its own state directory in `dir`.
    fn joining(
        controller: SocketAddr,
        token: &JoinToken,
        id: &str,
        cluster: &str,
        dir: &Path,
    ) -> Self {
        RunningProxy::start(ProxySpec {
            controller,
            id,
            cluster,
            state_dir: dir,
            enrollment: Enrollment::Token(token.clone()),
            applied: None,
        })
    }

    async fn until_applied(&mut self, what: &str, ok: impl FnMut(&Vec<Version>) -> bool) {
        let waited = tokio::time::timeout(WAIT, self.applied.wait_for(ok))
            .await
            .map(|r| r.is_ok());
        assert_eq!(
            waited,
            Ok(true),
            "{what}: not in time; applied {:?}",
            self.applied.borrow()
        );
        // The link reports a version applied once it is also persisted
        // (the last good snapshot on disk): wait for that too.
        let last = self.applied.borrow().last().copied();
        self.until_status(&format!("{what}, persisted"), |s| s.applied == last)
            .await;
    }

    async fn until_status(&mut self, what: &str, ok: impl FnMut(&LinkStatus) -> bool) {
        let waited = tokio::time::timeout(WAIT, self.status.wait_for(ok))
            .await
            .map(|r| r.is_ok());
        assert_eq!(
            waited,
            Ok(true),
            "{what}: not in time; status {:?}",
            self.status.borrow()
        );
    }

    fn applied(&self) -> Vec<Version> {
        self.applied.borrow().clone()
    }

    fn last_good(&self) -> Option<Version> {
        ProxyClient::last_good(&self.state_dir)
            .unwrap()
            .map(|(_, v)| v)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the proxy did not stop in time")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn a_published_config_reaches_both_proxies_and_both_ack_it() {
    let secrets = Secrets::init();
    let c = RunningController::start(&secrets).await;
    // Published before any proxy connects: each gets it on arrival.
    let v1 = c.publish("default", &config(&["web"]));
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut a = RunningProxy::joining(c.addr, &secrets.token(), "lb-1", "default", dirs[0].path());
    let mut b = RunningProxy::joining(c.addr, &secrets.token(), "lb-2", "default", dirs[1].path());
    a.until_applied("lb-1 applies v1", |l| l == &[v1]).await;
    b.until_applied("lb-2 applies v1", |l| l == &[v1]).await;
    c.until("both list v1 as applied", |l| applied_everywhere(l, 2, &v1))
        .await;
    let listed = c.controller.proxies();
    assert_eq!(
        listed.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["lb-1", "lb-2"]
    );
    for p in &listed {
        assert_eq!(p.service_cluster, "default");
        assert_eq!(p.address.ip(), std::net::Ipv4Addr::LOCALHOST);
        assert!(p.last_nack.is_none());
        assert!(p.connected_since <= p.last_heartbeat);
        assert_eq!(p.snapshots_sent, 1);
    }
    // Joined, persisted: the key private, the snapshot too (it holds keys).
    for dir in &dirs {
        assert_eq!(mode(&dir.path().join(CLIENT_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.path().join(LAST_GOOD_FILE)), 0o600);
        assert!(dir.path().join(CLIENT_CERT_FILE).exists());
    }
    assert_eq!(a.last_good(), Some(v1));
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn a_second_publish_is_acked_and_the_same_config_again_sends_nothing() {
    let secrets = Secrets::init();
    let c = RunningController::start(&secrets).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = RunningProxy::joining(c.addr, &secrets.token(), "lb-1", "default", dir.path());
    c.until("lb-1 connected", |l| l.len() == 1).await;

    let v1 = c.publish("default", &config(&["web"]));
    p.until_applied("v1", |l| l == &[v1]).await;
    let v2 = c.publish("default", &config(&["web", "api"]));
    p.until_applied("v2", |l| l == &[v1, v2]).await;
    c.until("v2 acked", |l| applied_everywhere(l, 1, &v2)).await;
    assert_eq!(c.proxy("lb-1").snapshots_sent, 2);

    // The same config again (a fresh Arc, equal content): same version,
    // nothing sent.
    assert_eq!(c.publish("default", &config(&["web", "api"])), v2);
    // The stream is ordered: had anything been sent for the republish, it
    // would arrive before v3.
    let v3 = c.publish("default", &config(&["api"]));
    p.until_applied("v3", |l| l.len() >= 3).await;
    assert_eq!(p.applied(), [v1, v2, v3]);
    c.until("v3 acked", |l| applied_everywhere(l, 1, &v3)).await;
    assert_eq!(c.proxy("lb-1").snapshots_sent, 3);
    p.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn each_service_cluster_receives_only_its_own_config() {
    let secrets = Secrets::init();
    let c = RunningController::start(&secrets).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut east = RunningProxy::joining(
        c.addr,
        &secrets.token(),
        "east-1",
        "us-east",
        dirs[0].path(),
    );
    let mut west = RunningProxy::joining(
        c.addr,
        &secrets.token(),
        "west-1",
        "us-west",
        dirs[1].path(),
    );
    c.until("both connected", |l| l.len() == 2).await;

    let a1 = c.publish("us-east", &config(&["east-web"]));
    let b1 = c.publish("us-west", &config(&["west-web"]));
    east.until_applied("east gets a1", |l| l == &[a1]).await;
    west.until_applied("west gets b1", |l| l == &[b1]).await;

    // A change in us-east: east gets it, west is sent nothing.
    let a2 = c.publish("us-east", &config(&["east-web", "east-api"]));
    east.until_applied("east gets a2", |l| l == &[a1, a2]).await;
    c.until("east acked a2", |l| {
        l.iter()
            .any(|p| p.id.as_str() == "east-1" && p.applied_version == Some(a2.full()))
    })
    .await;
    assert_eq!(c.proxy("west-1").snapshots_sent, 1);
    // West's stream is ordered too: its next snapshot is the next thing
    // it receives, with nothing of us-east's before it.
    let b2 = c.publish("us-west", &config(&["west-web", "west-api"]));
    west.until_applied("west gets b2", |l| l.len() >= 2).await;
    assert_eq!(west.applied(), [b1, b2]);
    assert_eq!(east.applied(), [a1, a2]);
    let west_status = c.proxy("west-1");
    assert_eq!(west_status.service_cluster, "us-west");
    assert_eq!(west_status.snapshots_sent, 2);
    east.stop().await;
    west.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn the_listing_says_where_proxies_serve_and_who_left_and_why() {
    let secrets = Secrets::init();
    let c = RunningController::start(&secrets).await;
    let v1 = c.publish("default", &config(&["web"]));
    let dir = tempfile::tempdir().unwrap();
    let spec = || ProxySpec {
        controller: c.addr,
        id: "lb-1",
        cluster: "default",
        state_dir: dir.path(),
        enrollment: Enrollment::Token(secrets.token()),
        applied: None,
    };
    let any = |port| Endpoint::http(SocketAddr::from(([0, 0, 0, 0], port)));
    let mut p = RunningProxy::announcing(
        spec(),
        vec![
            any(8080),
            Endpoint::https("127.0.0.2:8443".parse().unwrap()),
        ],
        Some(any(9090)),
    );
    p.until_applied("v1", |l| l == &[v1]).await;
    c.until("v1 acked", |l| applied_everywhere(l, 1, &v1)).await;
    let status = c.proxy("lb-1");
    // Every address is reached where the stream came from; a given one
    // stays as it is.
    let listed: Vec<String> = status.listeners.iter().map(ToString::to_string).collect();
    assert_eq!(listed, ["http://127.0.0.1:8080", "https://127.0.0.2:8443"]);
    assert_eq!(
        status.admin.map(|a| a.to_string()).as_deref(),
        Some("http://127.0.0.1:9090")
    );
    assert_eq!(c.controller.published(), [("default".to_owned(), v1)]);

    // The listing reads back as it was (times to the second, as written).
    let json = serde_json::to_value(&status).unwrap();
    let since = json["connected_since"].as_str().unwrap();
    assert!(since.ends_with('Z') && since.len() == 20, "{since}");
    assert_eq!(json["listeners"][0], "http://127.0.0.1:8080");
    let back: ProxyStatus = serde_json::from_value(json).unwrap();
    assert_eq!(back.id, status.id);
    assert_eq!(back.listeners, status.listeners);
    assert_eq!(
        back.connected_since
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        status
            .connected_since
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    );

    // It leaves: listed as departed, with why.
    p.stop().await;
    c.until("lb-1 gone", |l| l.is_empty()).await;
    let departed = c.controller.departed();
    assert_eq!(departed.len(), 1, "{departed:#?}");
    assert_eq!(departed[0].status.id.as_str(), "lb-1");
    assert_eq!(
        departed[0].status.applied_version.as_deref(),
        Some(v1.full().as_str())
    );
    assert!(!departed[0].reason.is_empty());
    // It comes back: no longer departed.
    let p = RunningProxy::start(spec());
    c.until("lb-1 back", |l| l.len() == 1).await;
    assert!(c.controller.departed().is_empty());
    p.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn a_snapshot_the_proxy_cannot_apply_is_nacked_and_it_keeps_its_version() {
    let secrets = Secrets::init();
    let c = RunningController::start(&secrets).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = RunningProxy::joining(c.addr, &secrets.token(), "lb-1", "default", dir.path());
    let v1 = c.publish("default", &config(&["web"]));
    p.until_applied("v1", |l| l == &[v1]).await;
    c.until("v1 acked", |l| applied_everywhere(l, 1, &v1)).await;

    let bad = c.publish("default", &config(&["web", "unloadable"]));
    c.until("the NACK is listed", |l| {
        l.len() == 1 && l[0].last_nack.as_ref().map(|n| n.version.clone()) == Some(bad.full())
    })
    .await;
    let status = c.proxy("lb-1");
    let nack = status.last_nack.unwrap();
    assert_eq!(
        nack.reason,
        "service unloadable: its certificate cannot be loaded"
    );
    assert_eq!(status.applied_version, Some(v1.full()));
    assert_eq!(status.nacks, 1);
    assert_eq!(c.controller.nacks_total().get("default"), Some(&1));
    assert_eq!(p.applied(), [v1]);
    assert_eq!(p.last_good(), Some(v1));
    assert_eq!(p.status.borrow().applied, Some(v1));

    // The controller fixes it: the proxy moves on.
    let v3 = c.publish("default", &config(&["web", "api"]));
    p.until_applied("v3", |l| l == &[v1, v3]).await;
    assert_eq!(p.last_good(), Some(v3));
    p.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn a_proxy_keeps_its_version_while_the_controller_is_down_and_converges_to_a_new_one() {
    let secrets = Secrets::init();
    let c = RunningController::start(&secrets).await;
    let addr = c.addr;
    let dir = tempfile::tempdir().unwrap();
    let mut p = RunningProxy::joining(addr, &secrets.token(), "lb-1", "default", dir.path());
    let v1 = c.publish("default", &config(&["web"]));
    p.until_applied("v1", |l| l == &[v1]).await;
    c.until("v1 acked", |l| applied_everywhere(l, 1, &v1)).await;

    c.stop().await;
    p.until_status("the proxy notices", |s| !s.connected && s.losses == 1)
        .await;
    assert_eq!(p.status.borrow().applied, Some(v1));
    assert_eq!(p.applied(), [v1]);
    assert_eq!(p.last_good(), Some(v1));

    // Another controller from the same secrets, on the same port, with
    // another config.
    let listener = TcpListener::bind(addr).await.unwrap();
    let c = RunningController::start_on(&secrets, listener);
    let v2 = c.publish("default", &config(&["web", "api"]));
    p.until_applied("v2 from the new controller", |l| l == &[v1, v2])
        .await;
    c.until("v2 acked", |l| applied_everywhere(l, 1, &v2)).await;
    assert_eq!(p.status.borrow().connects, 2);
    assert_eq!(p.last_good(), Some(v2));
    p.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn a_proxy_restarted_while_the_controller_is_down_boots_from_its_last_good_config() {
    let secrets = Secrets::init();
    let c = RunningController::start(&secrets).await;
    let addr = c.addr;
    let dir = tempfile::tempdir().unwrap();
    let published = config(&["web"]);
    let mut p = RunningProxy::joining(addr, &secrets.token(), "lb-1", "default", dir.path());
    let v1 = c.publish("default", &published);
    p.until_applied("v1", |l| l == &[v1]).await;
    p.stop().await;
    c.stop().await;

    // What the binary does at boot, before the controller answers.
    let (config, version) = ProxyClient::last_good(dir.path()).unwrap().unwrap();
    assert_eq!(version, v1);
    assert_eq!(config, *published);

    // It starts with that version and its stored credentials (no join is
    // possible now), and keeps trying.
    let mut p = RunningProxy::start(ProxySpec {
        controller: addr,
        id: "lb-1",
        cluster: "default",
        state_dir: dir.path(),
        enrollment: Enrollment::Token(secrets.token()),
        applied: Some(version),
    });
    p.until_status("the controller is unreachable", |s| s.last_error.is_some())
        .await;
    assert_eq!(p.status.borrow().applied, Some(v1));
    assert!(!p.status.borrow().connected);

    // The controller comes back with the same config: the proxy says it
    // has it, and is sent nothing.
    let listener = TcpListener::bind(addr).await.unwrap();
    let c = RunningController::start_on(&secrets, listener);
    assert_eq!(c.publish("default", &published), v1);
    c.until("lb-1 back with v1", |l| applied_everywhere(l, 1, &v1))
        .await;
    assert_eq!(c.proxy("lb-1").snapshots_sent, 0);
    let v2 = c.publish("default", &config_two());
    p.until_applied("v2", |l| l == &[v2]).await;
    p.stop().await;
    c.stop().await;
}

fn config_two() -> Arc<Config> {
    config(&["web", "api"])
}

#[tokio::test]
async fn a_wrong_secret_gets_no_certificate_and_receives_nothing() {
    let secrets = Secrets::init();
    let c = RunningController::start(&secrets).await;
    c.publish("default", &config(&["web"]));
    let (ca, _) = secrets.load();
    // The right CA digest (first contact succeeds), a guessed secret.
    let guess = JoinToken::generate(*ca.digest()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = RunningProxy::joining(c.addr, &guess, "lb-1", "default", dir.path());
    let err = tokio::time::timeout(WAIT, p.task)
        .await
        .expect("a refused join ends the run")
        .unwrap()
        .unwrap_err();
    match &err {
        portico_cluster::proxy::ProxyError::JoinRefused { status, reason } => {
            assert_eq!(status.as_u16(), 403);
            assert!(
                reason.contains("the join token's secret is wrong"),
                "{reason}"
            );
        }
        other => panic!("not a refused join: {other}"),
    }
    assert!(p.applied.borrow().is_empty());
    assert!(!dir.path().join(CLIENT_CERT_FILE).exists());
    assert!(!dir.path().join(CLIENT_KEY_FILE).exists());
    assert!(c.controller.proxies().is_empty());
    c.stop().await;
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_at_tls() {
    let secrets = Secrets::init();
    let c = RunningController::start(&secrets).await;
    c.publish("default", &config(&["web"]));
    let (ca, _) = secrets.load();
    let other = ClusterCa::generate().unwrap();
    let id = ProxyId::new("lb-1").unwrap();
    let stranger = JoinedProxy {
        proxy_id: id.clone(),
        credentials: other.issue_client(&id).unwrap(),
        // It trusts the real controller: only its own certificate is wrong.
        ca_cert: ca.cert().clone(),
    };

    // At the TLS layer: TLS 1.3 finishes the client's side first, and the
    // controller's refusal arrives as an alert on the first read.
    let connector = TlsConnector::from(Arc::new(stranger.client_config().unwrap()));
    let tcp = TcpStream::connect(c.addr).await.unwrap();
    let name = ServerName::try_from(SERVER_NAME).unwrap();
    let read = tokio::time::timeout(WAIT, async {
        let mut tls = connector.connect(name, tcp).await?;
        let mut byte = [0u8; 1];
        tls.read(&mut byte).await
    })
    .await
    .expect("no answer in time");
    let err = read.expect_err("the controller accepted a certificate from another CA");
    assert!(err.to_string().contains("alert"), "{err}");

    // The proxy with it: it never gets a stream, and keeps trying.
    let dir = tempfile::tempdir().unwrap();
    let mut p = RunningProxy::start(ProxySpec {
        controller: c.addr,
        id: "lb-1",
        cluster: "default",
        state_dir: dir.path(),
        enrollment: Enrollment::Credentials(stranger),
        applied: None,
    });
    p.until_status("a failed attempt", |s| s.last_error.is_some())
        .await;
    assert_eq!(p.status.borrow().connects, 0);
    assert!(p.applied().is_empty());
    assert!(c.controller.proxies().is_empty());
    p.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn an_anonymous_peer_asking_for_the_stream_gets_401() {
    let secrets = Secrets::init();
    let c = RunningController::start(&secrets).await;
    c.publish("default", &config(&["web"]));
    let token = secrets.token();
    let mut config = tls::first_contact_client_config(*token.ca_digest()).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let response = tokio::time::timeout(WAIT, async {
        let tcp = TcpStream::connect(c.addr).await.unwrap();
        let tls = connector
            .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
            .await
            .unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = http::Request::post(format!("https://{SERVER_NAME}/v1/stream"))
            .body(Full::new(bytes::Bytes::from_static(
                b"{\"type\":\"hello\",\"proxy_id\":\"lb-1\",\"service_cluster\":\"default\",\"applied_version\":null}\n",
            )))
            .unwrap();
        let response = send.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
    .await
    .expect("no answer in time");
    assert_eq!(response.0.as_u16(), 401, "{}", response.1);
    assert!(response.1.contains("client certificate"), "{}", response.1);
    assert!(c.controller.proxies().is_empty());
    c.stop().await;
}

/// A TCP forwarder that can be cut the way a network partition cuts: no
/// reset, no FIN, just silence. While cut, established connections carry
/// nothing (their sockets stay open) and new ones are accepted but never
/// answered.
struct Partition {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    stop: CancellationToken,
}

impl Partition {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, _) = watch::channel(true);
        let stop = CancellationToken::new();
        let (o, s) = (open.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                };
                tokio::spawn(relay(client, target, o.subscribe(), s.clone()));
            }
        });
        Partition { addr, open, stop }
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn heal(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    mut open: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    if !*open.borrow_and_update() {
        // Accepted into the void: held open, never answered.
        stop.cancelled().await;
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = async { let _ = open.wait_for(|open| !*open).await; } => {
            // Cut: both sockets stay open and silent until the end.
            stop.cancelled().await;
        }
        _ = stop.cancelled() => {}
    }
}

#[tokio::test]
async fn a_partitioned_proxy_notices_keeps_its_version_and_reconnects_when_it_heals() {
    let secrets = Secrets::init();
    let c = RunningController::start(&secrets).await;
    let partition = Partition::start(c.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = RunningProxy::joining(
        partition.addr,
        &secrets.token(),
        "lb-1",
        "default",
        dir.path(),
    );
    let v1 = c.publish("default", &config(&["web"]));
    p.until_applied("v1", |l| l == &[v1]).await;
    c.until("v1 acked", |l| applied_everywhere(l, 1, &v1)).await;

    let cut = Instant::now();
    partition.cut();
    p.until_status("the proxy notices the silence", |s| !s.connected)
        .await;
    let noticed = cut.elapsed();
    // Its patience is 3 heartbeats (600 ms); a loaded machine gets slack,
    // but not a TCP timeout's worth.
    assert!(
        noticed < Duration::from_secs(5),
        "noticed after {noticed:?}"
    );
    assert!(
        noticed >= heartbeat().patience() / 2,
        "noticed after {noticed:?}: before its patience ran out?"
    );
    // The controller drops the silent proxy too.
    c.until("the controller drops lb-1", |l| l.is_empty()).await;
    // Attempts into the partition fail (bounded by the connect timeout)
    // and change nothing the proxy serves.
    p.until_status("an attempt fails in the partition", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("no connection"))
    })
    .await;
    // And the proxy still serves v1.
    assert_eq!(p.status.borrow().applied, Some(v1));
    assert_eq!(p.applied(), [v1]);
    assert_eq!(p.last_good(), Some(v1));

    partition.heal();
    p.until_status("the proxy reconnects", |s| s.connected && s.connects == 2)
        .await;
    c.until("lb-1 back with v1", |l| applied_everywhere(l, 1, &v1))
        .await;
    let v2 = c.publish("default", &config(&["web", "api"]));
    p.until_applied("v2 after the partition", |l| l == &[v1, v2])
        .await;
    p.stop().await;
    c.stop().await;
}
