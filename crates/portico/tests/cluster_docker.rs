//! Cluster mode against the real engine (issue 13): `portico controller
//! run` with the Docker provider in a container (the socket mounted
//! read-only, the cluster's credentials mounted where its secrets would
//! be), and `portico proxy` replicas in containers of their own, without
//! the socket, each with its own state directory, attached to the echo
//! service's overlay network and to a bridge network, "control", the only
//! one on which the controller's name resolves: a proxy cut from it
//! (`docker network disconnect`) cannot reach the controller another way.
//!
//! The tests reach the proxies through ports published on 127.0.0.1 (on
//! the default bridge, which no test cuts), kill the controller with
//! `docker kill`, and read what each side logged. Everything created is
//! removed at the end, failed or not. The image, the swarm and the
//! networks are made per test, so no test depends on another; one swarm
//! test runs at a time on the machine (`Cleanup::ensure_swarm` waits).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portico_cluster::{ClusterCa, JoinToken, ProxyId};
use portico_testkit::docker::{self as dk, Cleanup};
use portico_testkit::process::parse_logfmt;
use portico_testkit::{wait_until, HttpClient};

const BIN: &str = env!("CARGO_BIN_EXE_portico");
const CONVERGE: Duration = Duration::from_secs(60);
/// The controller's stream port inside its container.
const STREAM_PORT: u16 = 7443;
/// The controller's admin API, in its container.
const ADMIN_PORT: u16 = 9090;
const ADMIN_TOKEN: &str = "cluster-docker-admin-token";
/// Where a proxy container finds its join token (a secret, in a stack).
const TOKEN_IN_CONTAINER: &str = "/run/secrets/portico_join_token";

/// Polls `check` until it gives a value; panics naming `what` after
/// [`CONVERGE`]. (`wait_until`, for a check that finds something.)
async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + CONVERGE;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {CONVERGE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `docker ARGS`: stdout, or the failure with stderr.
async fn try_d(args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// `docker ARGS`, panicking on failure.
async fn d(args: &[&str]) -> String {
    match try_d(args).await {
        Ok(out) => out,
        Err(e) => panic!("docker {}: {e}", args.join(" ")),
    }
}

/// A container's log, stderr and stdout.
async fn logs(container: &str) -> String {
    let out = tokio::process::Command::new("docker")
        .args(["logs", container])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

/// The lines of `log` whose message is `msg`, as fields.
fn lines_with(log: &str, msg: &str) -> Vec<BTreeMap<String, String>> {
    log.lines()
        .map(parse_logfmt)
        .filter(|f| f.get("msg").is_some_and(|m| m == msg))
        .collect()
}

/// `field` of the last line of `log` whose message is one of `msgs` and
/// that has that field.
fn last_field(log: &str, msgs: &[&str], field: &str) -> Option<String> {
    log.lines()
        .rev()
        .map(parse_logfmt)
        .filter(|f| f.get("msg").is_some_and(|m| msgs.contains(&m.as_str())))
        .find_map(|f| f.get(field).cloned())
}

/// The container's address on `network`.
async fn ip_on(container: &str, network: &str) -> String {
    d(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        container,
    ])
    .await
}

/// The replica name from a `portico echo` answer, if the request got one.
async fn replica(client: &HttpClient, host: &str) -> Option<String> {
    let (status, _, body) = client.get(host, "/").await.ok()?;
    if status != 200 {
        return None;
    }
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("replica: "))
        .map(str::to_owned)
}

async fn status(client: &HttpClient, host: &str) -> u16 {
    client
        .get(host, "/")
        .await
        .map_or(0, |(s, _, _)| s.as_u16())
}

/// One controller container, its networks and credentials; proxies are
/// added with [`Cluster::proxy`].
struct Cluster {
    /// First, so that containers go before the directories they mount.
    cleanup: Cleanup,
    image: String,
    /// The echo services' overlay network, which the proxies join.
    net: String,
    /// The bridge between the controller and the proxies.
    control: String,
    /// The controller's name, an alias on `control` only.
    alias: String,
    controller: String,
    /// `ca.crt`, `ca.key`, `join-token`: the controller's secrets.
    secrets: PathBuf,
    /// Configs and the proxies' state directories.
    dir: tempfile::TempDir,
}

/// A proxy container.
struct Proxy {
    id: String,
    container: String,
    /// Its state directory, on the host.
    state: PathBuf,
}

impl Cluster {
    /// A swarm, the image, the two networks, the credentials from `portico
    /// controller init`, and the controller running with the Docker
    /// provider.
    async fn start() -> Cluster {
        let mut cleanup = Cleanup::default();
        if let Err(e) = cleanup.ensure_swarm() {
            panic!("swarm mode is unavailable here: {e}");
        }
        let image = format!("portico-cluster-test:{}", std::process::id());
        let tag = image.clone();
        tokio::task::spawn_blocking(move || dk::build_image(Path::new(BIN), &tag))
            .await
            .unwrap();
        cleanup.images.push(image.clone());
        let net = dk::unique("ptc-net");
        d(&["network", "create", "-d", "overlay", "--attachable", &net]).await;
        cleanup.networks.push(net.clone());
        let control = dk::unique("ptc-control");
        d(&["network", "create", "-d", "bridge", &control]).await;
        cleanup.networks.push(control.clone());

        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        let init = tokio::process::Command::new(BIN)
            .args(["controller", "init", "--state-dir"])
            .arg(&secrets)
            .output()
            .await
            .unwrap();
        assert!(init.status.success(), "{init:?}");

        let alias = dk::unique("ptc-controller");
        let config = dir.path().join("controller");
        std::fs::create_dir(&config).unwrap();
        std::fs::write(
            config.join("controller.toml"),
            format!(
                "[controller]\nlisten = \"0.0.0.0:{STREAM_PORT}\"\n\
                 state_dir = \"/run/secrets/portico\"\nserver_names = [\"{alias}\"]\n\n\
                 [admin]\nlisten = \"0.0.0.0:{ADMIN_PORT}\"\ntoken = \"{ADMIN_TOKEN}\"\n\n\
                 [docker]\npoll_interval = \"2s\"\n"
            ),
        )
        .unwrap();
        let controller = dk::unique("ptc-ctl");
        cleanup.containers.push(controller.clone());
        d(&[
            "run",
            "-d",
            "--name",
            &controller,
            "--network",
            &control,
            "--network-alias",
            &alias,
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock:ro",
            "-v",
            &format!("{}:/run/secrets/portico:ro", secrets.display()),
            "-v",
            &format!("{}:/etc/portico:ro", config.display()),
            &image,
            "controller",
            "run",
            "--config",
            "/etc/portico/controller.toml",
        ])
        .await;
        let cluster = Cluster {
            cleanup,
            image,
            net,
            control,
            alias,
            controller,
            secrets,
            dir,
        };
        cluster.wait_for_controller(1).await;
        cluster
    }

    /// `portico trace --json` of `http://{host}:8080/` entering at
    /// `entry`, with every proxy the controller's admin API lists.
    async fn trace(&self, host: &str, entry: &Proxy) -> serde_json::Value {
        let admin = ip_on(&self.controller, &self.control).await;
        let entry_ip = ip_on(&entry.container, &self.control).await;
        let token = self.dir.path().join("admin-token");
        std::fs::write(&token, ADMIN_TOKEN).unwrap();
        let out = tokio::process::Command::new(BIN)
            .arg("trace")
            .arg(format!("http://{host}:8080/"))
            .args([
                "--controller-admin",
                &format!("http://{admin}:{ADMIN_PORT}"),
            ])
            .arg("--admin-token-file")
            .arg(&token)
            .args(["--resolve", &format!("{host}:8080:{entry_ip}")])
            .args(["--timeout", "5s", "--json"])
            .env_remove("PORTICO_ADMIN_TOKEN")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "no trace report ({e}):\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Waits for the controller's `n`th start to be logged.
    async fn wait_for_controller(&self, n: usize) {
        wait_until(CONVERGE, "the controller to start", || async {
            lines_with(&logs(&self.controller).await, "starting controller").len() >= n
        })
        .await;
    }

    /// The version the controller publishes now (to the default service
    /// cluster, the only one here), by its log.
    async fn version(&self) -> Option<String> {
        last_field(
            &logs(&self.controller).await,
            &["starting controller", "new version"],
            "version",
        )
    }

    /// A proxy container `id` holding the cluster's join token.
    async fn proxy(&mut self, id: &str) -> Proxy {
        let token = self.secrets.join("join-token");
        let proxy = self.proxy_with(id, Some(&token), &[]).await;
        wait_until(CONVERGE, &format!("proxy {id} to answer"), || async {
            HttpClient::new(proxy.addr().await)
                .get("nothing.test", "/")
                .await
                .is_ok()
        })
        .await;
        proxy
    }

    /// The host directory mounted as proxy `id`'s state directory.
    fn state_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("state-{id}"))
    }

    /// A proxy container `id` with the join token in `token` (a host
    /// file; `None`: no file where its `--join-token-file` points), on the
    /// default bridge (its port published there), `control` and the echo
    /// services' network; `network` replaces all three (`--network
    /// container:NAME`). Not waited for.
    async fn proxy_with(&mut self, id: &str, token: Option<&Path>, network: &[&str]) -> Proxy {
        let container = dk::unique(&format!("ptc-{id}"));
        let state = self.state_dir(id);
        std::fs::create_dir_all(&state).unwrap();
        let config = self.dir.path().join(format!("config-{id}"));
        std::fs::create_dir(&config).unwrap();
        std::fs::write(
            config.join("proxy.toml"),
            "[proxy]\nhttp_listen = \"0.0.0.0:8080\"\n",
        )
        .unwrap();
        let controller = format!("{}:{STREAM_PORT}", self.alias);
        let token_mount = token.map(|t| format!("{}:{TOKEN_IN_CONTAINER}:ro", t.display()));
        let state_mount = format!("{}:/var/lib/portico", state.display());
        let config_mount = format!("{}:/etc/portico:ro", config.display());
        let mut args = vec!["create", "--name", &container];
        if network.is_empty() {
            args.extend(["-p", "127.0.0.1::8080"]);
        } else {
            args.extend(network);
        }
        if let Some(mount) = &token_mount {
            args.extend(["-v", mount]);
        }
        args.extend([
            "-v",
            &state_mount,
            "-v",
            &config_mount,
            &self.image,
            "proxy",
            "--controller",
            &controller,
            "--join-token-file",
            TOKEN_IN_CONTAINER,
            "--state-dir",
            "/var/lib/portico",
            "--config",
            "/etc/portico/proxy.toml",
            "--proxy-id",
            id,
        ]);
        self.cleanup.containers.push(container.clone());
        d(&args).await;
        if network.is_empty() {
            d(&["network", "connect", &self.control, &container]).await;
            d(&["network", "connect", &self.net, &container]).await;
        }
        d(&["start", &container]).await;
        Proxy {
            id: id.to_owned(),
            container,
            state,
        }
    }

    /// A service of `portico echo --name NAME` on the overlay network,
    /// labelled to serve `hosts`; its replicas answer with its name.
    async fn echo_service(&mut self, name: &str, hosts: &str) {
        self.cleanup.services.push(name.to_owned());
        d(&[
            "service",
            "create",
            "-d",
            "--name",
            name,
            "--network",
            &self.net,
            "--label",
            &format!("com.docker.lb.hosts={hosts}"),
            "--label",
            "com.docker.lb.port=8080",
            &self.image,
            "echo",
            "--name",
            name,
        ])
        .await;
    }

    /// Waits until every proxy in `proxies` has applied the version the
    /// controller publishes; returns it.
    async fn converged(&self, proxies: &[&Proxy]) -> String {
        poll("the proxies to apply the controller's version", || async {
            let current = self.version().await?;
            for p in proxies {
                if p.applied().await.as_deref() != Some(current.as_str()) {
                    return None;
                }
            }
            Some(current)
        })
        .await
    }
}

impl Proxy {
    /// Where the test reaches it (re-read: a restart may move it).
    async fn addr(&self) -> SocketAddr {
        let out = d(&["port", &self.container, "8080/tcp"]).await;
        out.lines()
            .find_map(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("no published port for {}: {out}", self.container))
    }

    async fn client(&self) -> HttpClient {
        HttpClient::new(self.addr().await)
    }

    async fn log(&self) -> String {
        logs(&self.container).await
    }

    /// The version it serves, by its log: the last snapshot applied, or
    /// the one it booted from.
    async fn applied(&self) -> Option<String> {
        last_field(
            &self.log().await,
            &[
                "applied the controller's snapshot",
                "serving the last good snapshot until the controller answers",
            ],
            "version",
        )
    }

    /// Waits until `host` is served by the replicas of `service`.
    async fn wait_routes(&self, host: &str, service: &str) {
        let client = self.client().await;
        wait_until(
            CONVERGE,
            &format!("{} to route {host}", self.id),
            || async { replica(&client, host).await.as_deref() == Some(service) },
        )
        .await;
    }

    /// The last line with message `msg`, once there is one.
    async fn wait_for_log(&self, msg: &str) -> BTreeMap<String, String> {
        poll(&format!("{} to log {msg:?}", self.id), || async {
            lines_with(&self.log().await, msg).pop()
        })
        .await
    }
}

/// Requests to one host through one proxy, paced, until stopped: every
/// one must be answered 200 by the expected replica.
struct ClientLoop {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ClientLoop {
    fn start(client: HttpClient, host: &str, service: &str) -> ClientLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, n, f) = (stop.clone(), sent.clone(), failures.clone());
        let (host, service) = (host.to_owned(), service.to_owned());
        let task = tokio::spawn(async move {
            // 100 requests a second per proxy: enough to see a gap of a few
            // milliseconds, little enough for two cores shared with Docker.
            let mut pace = tokio::time::interval(Duration::from_millis(10));
            while !s.load(Ordering::SeqCst) {
                pace.tick().await;
                match client.get(&host, "/").await {
                    Ok((code, _, body)) => {
                        let body = String::from_utf8_lossy(&body);
                        if code != 200 || !body.contains(&format!("replica: {service}\n")) {
                            f.lock().unwrap().push(format!("{code}: {body}"));
                        }
                    }
                    Err(e) => f.lock().unwrap().push(e),
                }
                n.fetch_add(1, Ordering::SeqCst);
            }
        });
        ClientLoop {
            stop,
            sent,
            failures,
            task,
        }
    }

    fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    /// Waits until `more` requests have been sent from now.
    async fn wait_for(&self, more: usize) {
        let target = self.sent() + more;
        wait_until(CONVERGE, "the client loop to send more", || async {
            self.sent() >= target
        })
        .await;
    }

    /// Stops it: (requests sent, failures).
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let failures = self.failures.lock().unwrap().clone();
        (self.sent.load(Ordering::SeqCst), failures)
    }
}

async fn assert_no_failure(what: &str, loops: Vec<ClientLoop>) {
    for (i, l) in loops.into_iter().enumerate() {
        let (sent, failures) = l.finish().await;
        assert!(
            failures.is_empty(),
            "{what}, proxy {}: {} of {sent} requests failed: {:?}",
            i + 1,
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(sent > 20, "{what}, proxy {}: only {sent} requests", i + 1);
        eprintln!("{what}, proxy {}: {sent} requests, none failed", i + 1);
    }
}

/// Two proxies fed by a controller on a real swarm: both serve a labelled
/// service and reach the same version; a label change reaches both, timed
/// ten times from `docker service update` returning to the new host being
/// routed on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_feeds_two_proxies_from_swarm_labels() {
    if !dk::available() {
        return;
    }
    let mut cluster = Cluster::start().await;
    let svc = dk::unique("ptc-web");
    let host = format!("{svc}.test");
    cluster.echo_service(&svc, &host).await;
    let p1 = cluster.proxy("p1").await;
    let p2 = cluster.proxy("p2").await;
    for p in [&p1, &p2] {
        p.wait_routes(&host, &svc).await;
    }
    let first = cluster.converged(&[&p1, &p2]).await;
    // The controller knows both by their ids, and that they applied it.
    let log = logs(&cluster.controller).await;
    for p in [&p1, &p2] {
        assert!(
            lines_with(&log, "proxy connected")
                .iter()
                .any(|f| f.get("proxy") == Some(&p.id)),
            "{log}"
        );
    }
    // Neither proxy has the Docker socket, nor a service of its own: what
    // they route came over the stream, and is on their disks.
    for p in [&p1, &p2] {
        let last_good = std::fs::read_to_string(p.state.join("last-good.json")).unwrap();
        assert!(last_good.contains(&host), "{}", p.id);
    }

    let mut samples = Vec::new();
    let (c1, c2) = (p1.client().await, p2.client().await);
    for i in 0..10 {
        let new_host = format!("t{i}-{host}");
        d(&[
            "service",
            "update",
            "-d",
            "--label-add",
            &format!("com.docker.lb.hosts={host},{new_host}"),
            &svc,
        ])
        .await;
        let updated = Instant::now();
        let routed = |client: &HttpClient| {
            let (client, new_host, svc) = (client.clone(), new_host.clone(), svc.clone());
            async move {
                // Polled every 5 ms: the figure's resolution.
                let deadline = updated + Duration::from_secs(20);
                loop {
                    if replica(&client, &new_host).await.as_deref() == Some(svc.as_str()) {
                        return updated.elapsed();
                    }
                    assert!(Instant::now() < deadline, "{new_host} not routed in 20 s");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        let (t1, t2) = tokio::join!(routed(&c1), routed(&c2));
        samples.push(t1.max(t2));
    }
    let version = cluster.converged(&[&p1, &p2]).await;
    assert_ne!(version, first);
    // Both ACKed it: the controller says so of each.
    wait_until(CONVERGE, "the controller to hear both ACKs", || async {
        let acks = lines_with(&logs(&cluster.controller).await, "proxy applied");
        [&p1, &p2].iter().all(|p| {
            acks.iter()
                .any(|f| f.get("proxy") == Some(&p.id) && f.get("version") == Some(&version))
        })
    })
    .await;
    // `portico trace` through p1, asking the controller for the rest:
    // the request passes through both proxies, both on the published
    // version.
    let trace = cluster.trace(&host, &p1).await;
    let proxies = trace["proxies"].as_array().expect("a proxies table");
    let seen: BTreeMap<&str, (&str, &str)> = proxies
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap_or("-"),
                (
                    p["request"].as_str().unwrap_or("?"),
                    p["state"].as_str().unwrap_or("?"),
                ),
            )
        })
        .collect();
    assert_eq!(
        seen,
        BTreeMap::from([
            (p1.id.as_str(), ("pass", "current")),
            (p2.id.as_str(), ("pass", "current"))
        ]),
        "{trace:#}"
    );
    samples.sort();
    let median = (samples[4] + samples[5]) / 2;
    eprintln!(
        "label change to routed on both proxies (10 runs): median {:?}, max {:?}, all {:?}",
        median, samples[9], samples
    );
    drop(cluster);
}

/// The controller killed: no request through either proxy fails; a proxy
/// restarted meanwhile serves its last good version from its first
/// request; a change made while the controller was away reaches both when
/// it is back, still with no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_outlive_a_killed_controller_and_converge_when_it_returns() {
    if !dk::available() {
        return;
    }
    let mut cluster = Cluster::start().await;
    let svc = dk::unique("ptc-web");
    let host = format!("{svc}.test");
    cluster.echo_service(&svc, &host).await;
    let p1 = cluster.proxy("p1").await;
    let p2 = cluster.proxy("p2").await;
    for p in [&p1, &p2] {
        p.wait_routes(&host, &svc).await;
    }
    let before = cluster.converged(&[&p1, &p2]).await;

    let loops = vec![
        ClientLoop::start(p1.client().await, &host, &svc),
        ClientLoop::start(p2.client().await, &host, &svc),
    ];
    d(&["kill", &cluster.controller]).await;
    for p in [&p1, &p2] {
        let lost = p
            .wait_for_log("lost the controller stream; serving the last version until it is back")
            .await;
        assert_eq!(lost.get("serving"), Some(&before), "{}", p.id);
    }
    for l in &loops {
        l.wait_for(100).await;
    }
    assert_no_failure("controller killed", loops).await;

    // A change while the controller is away: nobody hears of it yet.
    let added = format!("added-{host}");
    d(&[
        "service",
        "update",
        "-d",
        "--label-add",
        &format!("com.docker.lb.hosts={host},{added}"),
        &svc,
    ])
    .await;

    // p2 restarts meanwhile: it serves its last good version from its
    // first answer (its listener opens with that config in place).
    d(&["restart", &p2.container]).await;
    let c2 = p2.client().await;
    wait_until(CONVERGE, "the restarted p2 to answer", || async {
        c2.get("nothing.test", "/").await.is_ok()
    })
    .await;
    assert_eq!(replica(&c2, &host).await.as_deref(), Some(svc.as_str()));
    assert_eq!(status(&c2, &added).await, 503);
    let log = p2.log().await;
    let booted = lines_with(
        &log,
        "serving the last good snapshot until the controller answers",
    );
    assert_eq!(booted.len(), 1, "{log}");
    assert_eq!(booted[0].get("version"), Some(&before));

    // The controller returns (its container restarted, as Swarm would
    // restart its task): both proxies converge to the current version,
    // which has the host added while it was away, without a failed request.
    let loops = vec![
        ClientLoop::start(p1.client().await, &host, &svc),
        ClientLoop::start(c2, &host, &svc),
    ];
    for l in &loops {
        l.wait_for(20).await;
    }
    d(&["start", &cluster.controller]).await;
    let started = Instant::now();
    cluster.wait_for_controller(2).await;
    for p in [&p1, &p2] {
        p.wait_routes(&added, &svc).await;
    }
    let after = cluster.converged(&[&p1, &p2]).await;
    assert_ne!(after, before);
    eprintln!(
        "both proxies converged {:?} after the controller's container was started again",
        started.elapsed()
    );
    p1.wait_for_log("reconnected to the controller").await;
    for l in &loops {
        l.wait_for(20).await;
    }
    assert_no_failure("controller back", loops).await;
    drop(cluster);
}

/// One proxy cut from the controller's network: it keeps serving, says
/// it lost the controller, misses a change the other proxy gets, and
/// catches up once the network is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_proxy_keeps_serving_and_converges_after_the_heal() {
    if !dk::available() {
        return;
    }
    let mut cluster = Cluster::start().await;
    let svc = dk::unique("ptc-web");
    let host = format!("{svc}.test");
    cluster.echo_service(&svc, &host).await;
    let p1 = cluster.proxy("p1").await;
    let p2 = cluster.proxy("p2").await;
    for p in [&p1, &p2] {
        p.wait_routes(&host, &svc).await;
    }
    let before = cluster.converged(&[&p1, &p2]).await;

    let loops = vec![ClientLoop::start(p1.client().await, &host, &svc)];
    d(&["network", "disconnect", &cluster.control, &p1.container]).await;
    let cut = Instant::now();
    // Nothing closes the stream: its packets are dropped from here on, and
    // the proxy learns of it from the controller's silence.
    let lost = p1
        .wait_for_log("lost the controller stream; serving the last version until it is back")
        .await;
    eprintln!(
        "partition noticed by the proxy after {:?}: {}",
        cut.elapsed(),
        lost.get("reason").map_or("", String::as_str)
    );
    assert_eq!(lost.get("serving"), Some(&before));

    // A change during the partition reaches p2 only.
    let added = format!("added-{host}");
    d(&[
        "service",
        "update",
        "-d",
        "--label-add",
        &format!("com.docker.lb.hosts={host},{added}"),
        &svc,
    ])
    .await;
    p2.wait_routes(&added, &svc).await;
    assert_eq!(status(&p1.client().await, &added).await, 503);
    assert_eq!(p1.applied().await.as_ref(), Some(&before));
    // The controller noticed too: p1 is no longer among its streams.
    wait_until(CONVERGE, "the controller to drop p1's stream", || async {
        let log = logs(&cluster.controller).await;
        ["proxy silent", "stream lost"].iter().any(|m| {
            log.lines()
                .any(|l| l.contains(m) && l.contains(&format!("proxy={}", p1.id)))
        })
    })
    .await;

    d(&["network", "connect", &cluster.control, &p1.container]).await;
    let healed = Instant::now();
    p1.wait_routes(&added, &svc).await;
    eprintln!(
        "p1 routed the missed change {:?} after the heal",
        healed.elapsed()
    );
    p1.wait_for_log("reconnected to the controller").await;
    let after = cluster.converged(&[&p1, &p2]).await;
    assert_ne!(after, before);
    assert_no_failure("partition", loops).await;
    drop(cluster);
}

/// Proxies without valid credentials: a wrong join secret, no token file,
/// a token of another cluster, a client certificate from another CA. Each
/// is refused, the controller logs the refusal with the proxy's address
/// (where it got that far), and none receives a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_without_valid_credentials_are_refused_and_logged() {
    if !dk::available() {
        return;
    }
    let mut cluster = Cluster::start().await;
    let svc = dk::unique("ptc-web");
    let host = format!("{svc}.test");
    cluster.echo_service(&svc, &host).await;
    // A good proxy first: there is a snapshot to be had.
    let good = cluster.proxy("good").await;
    good.wait_routes(&host, &svc).await;

    // Every bad proxy runs in the network namespace of one stand-in
    // container on the control network, so the address the controller
    // logs is known (a refused proxy may exit before it could be read).
    let peer = dk::unique("ptc-peer");
    cluster.cleanup.containers.push(peer.clone());
    d(&[
        "run",
        "-d",
        "--name",
        &peer,
        "--network",
        &cluster.control,
        &cluster.image,
        "echo",
        "--listen",
        "0.0.0.0:9999",
    ])
    .await;
    let peer_ip = ip_on(&peer, &cluster.control).await;
    assert!(!peer_ip.is_empty());
    let in_peer = format!("container:{peer}");
    let in_peer = ["--network", in_peer.as_str()];
    let tokens = cluster.dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let real_path = cluster.secrets.join("join-token");
    let real = JoinToken::read_file(&real_path).unwrap();
    let controller = cluster.controller.clone();
    let refusals = |msg: &'static str| {
        let (controller, peer_ip) = (controller.clone(), peer_ip.clone());
        async move { from_peer(&logs(&controller).await, &peer_ip, msg).len() }
    };

    // 1. The right CA, a wrong secret: the join is refused (403) and the
    // proxy stops, saying why.
    let wrong = tokens.join("wrong-secret");
    JoinToken::generate(*real.ca_digest())
        .unwrap()
        .write_file(&wrong)
        .unwrap();
    let p = cluster
        .proxy_with("wrong-secret", Some(&wrong), &in_peer)
        .await;
    assert_ne!(wait_exit(&p.container).await, 0);
    let log = p.log().await;
    assert!(
        log.contains("the controller refused to join this proxy (403 Forbidden)"),
        "{log}"
    );
    wait_until(
        CONVERGE,
        "the controller to log the refused join",
        || async { refusals("join refused").await > 0 },
    )
    .await;
    assert_received_nothing(&p).await;
    d(&["rm", "-f", &p.container]).await;

    // 2. No token file: it stops before any connection, naming the file.
    let p = cluster.proxy_with("no-token", None, &in_peer).await;
    assert_ne!(wait_exit(&p.container).await, 0);
    let log = p.log().await;
    assert!(log.contains(TOKEN_IN_CONTAINER), "{log}");
    assert_received_nothing(&p).await;
    d(&["rm", "-f", &p.container]).await;

    // 3. A token of another cluster: the proxy cannot trust this
    // controller (its certificate does not lead to the CA the token
    // names) and sends it nothing; the controller sees the handshake fail.
    let before = refusals("TLS handshake refused").await;
    let other = tempfile::tempdir().unwrap();
    let other_ca = ClusterCa::init(&other.path().join("ca")).unwrap();
    let foreign = tokens.join("other-cluster");
    JoinToken::generate(*other_ca.digest())
        .unwrap()
        .write_file(&foreign)
        .unwrap();
    let p = cluster
        .proxy_with("other-cluster", Some(&foreign), &in_peer)
        .await;
    wait_until(
        CONVERGE,
        "the controller to log the failed handshake",
        || async { refusals("TLS handshake refused").await > before },
    )
    .await;
    let line = p
        .wait_for_log("cannot reach the controller to join; retrying")
        .await;
    eprintln!("a proxy with another cluster's token logs: {line:?}");
    assert_received_nothing(&p).await;
    d(&["rm", "-f", &p.container]).await;

    // 4. A client certificate from another CA, with the real token (so
    // the proxy uses the certificate rather than join again): the
    // controller refuses the handshake.
    let before = refusals("TLS handshake refused").await;
    let id = ProxyId::new("foreign-cert".to_owned()).unwrap();
    let credentials = other_ca.issue_client(&id).unwrap();
    let state = cluster.state_dir("foreign-cert");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("client.key"), credentials.key_pem()).unwrap();
    std::fs::write(state.join("client.crt"), &credentials.cert.pem).unwrap();
    std::fs::copy(cluster.secrets.join("ca.crt"), state.join("cluster-ca.crt")).unwrap();
    let p = cluster
        .proxy_with("foreign-cert", Some(&real_path), &in_peer)
        .await;
    wait_until(
        CONVERGE,
        "the controller to refuse the certificate",
        || async { refusals("TLS handshake refused").await > before },
    )
    .await;
    let line = p.wait_for_log("controller unreachable; retrying").await;
    let reason = line.get("reason").cloned().unwrap_or_default();
    assert!(
        reason.contains("refuses this proxy's certificate"),
        "the proxy's log should say its certificate is the likely cause: {line:?}"
    );
    assert_received_nothing(&p).await;

    let log = logs(&cluster.controller).await;
    for line in from_peer(&log, &peer_ip, "join refused")
        .into_iter()
        .chain(from_peer(&log, &peer_ip, "TLS handshake refused"))
    {
        eprintln!("controller: {line:?}");
    }
    for bad in ["wrong-secret", "no-token", "other-cluster", "foreign-cert"] {
        assert!(
            !lines_with(&log, "proxy connected")
                .iter()
                .any(|f| f.get("proxy").is_some_and(|p| p == bad)),
            "{bad} connected: {log}"
        );
    }
    drop(cluster);
}

/// The lines of `log` with message `msg` about a peer at `ip`.
fn from_peer(log: &str, ip: &str, msg: &str) -> Vec<BTreeMap<String, String>> {
    lines_with(log, msg)
        .into_iter()
        .filter(|f| {
            f.get("peer")
                .is_some_and(|p| p.starts_with(&format!("{ip}:")))
        })
        .collect()
}

/// The container's exit code, once it has stopped.
async fn wait_exit(container: &str) -> i32 {
    let code = tokio::time::timeout(CONVERGE, d(&["wait", container]))
        .await
        .unwrap_or_else(|_| panic!("{container} still running after {CONVERGE:?}"));
    code.parse().unwrap()
}

/// Nothing from the controller reached the proxy: no snapshot applied or
/// stored, no credentials issued (beyond what the test put there).
async fn assert_received_nothing(p: &Proxy) {
    let log = p.log().await;
    for msg in [
        "applied a snapshot",
        "applied the controller's snapshot",
        "joined the cluster",
    ] {
        assert!(lines_with(&log, msg).is_empty(), "{}: {log}", p.id);
    }
    assert!(
        !p.state.join("last-good.json").exists(),
        "{} has a snapshot",
        p.id
    );
}
