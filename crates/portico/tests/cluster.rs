//! Cluster mode end to end, with the real binary: `portico controller
//! init`, a `portico controller run` with the file provider, two
//! `portico proxy` processes fed by it. A change to the controller's file
//! reaches both; with the controller killed both keep serving, and a proxy
//! restarted meanwhile serves its last good config at once.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use portico_testkit::cluster::{controller_config, path, replica, ProxySpec};
use portico_testkit::process::parse_logfmt;
use portico_testkit::{curl, service_toml, wait_until, Backend, Portico};

const WAIT: Duration = Duration::from_secs(20);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portico"))
}

fn spawn_proxy(dir: &Path, id: &str, controller: SocketAddr) -> Portico {
    spawn_proxy_in(dir, id, controller, "default")
}

fn spawn_proxy_in(dir: &Path, id: &str, controller: SocketAddr, cluster: &str) -> Portico {
    let spec = ProxySpec {
        service_cluster: cluster,
        ..ProxySpec::new(id, controller)
    };
    portico_testkit::cluster::spawn_proxy(bin(), dir, &spec)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_controller_feeds_two_proxies_that_outlive_it() {
    let dir = tempfile::tempdir().unwrap();
    let init = std::process::Command::new(bin())
        .args(["controller", "init", "--state-dir"])
        .arg(dir.path().join("ctl"))
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");

    let web = Backend::echo("web").await;
    let api = Backend::echo("api").await;
    let web_toml = service_toml("web", &["web.test"], &[web.addr], "");
    let config = dir.path().join("controller.toml");
    std::fs::write(&config, controller_config(&web_toml)).unwrap();
    let mut controller = Portico::spawn(bin(), &["controller", "run", "--config", &path(&config)]);
    let line = controller
        .wait_for_line(|l| l.contains("starting controller"), WAIT)
        .await;
    let at: SocketAddr = parse_logfmt(&line)["listen"].parse().unwrap();

    let p1 = spawn_proxy(dir.path(), "p1", at);
    let mut p2 = spawn_proxy(dir.path(), "p2", at);
    let (a1, a2) = (p1.listen_addr().await, p2.listen_addr().await);
    for a in [a1, a2] {
        wait_until(WAIT, &format!("{a} routes web.test"), || async move {
            replica(a, "web.test").await.as_deref() == Some("web")
        })
        .await;
    }

    // A change to the controller's file reaches both proxies.
    let api_toml = service_toml("api", &["api.test"], &[api.addr], "");
    std::fs::write(
        &config,
        controller_config(&format!("{web_toml}\n{api_toml}")),
    )
    .unwrap();
    for a in [a1, a2] {
        wait_until(WAIT, &format!("{a} routes api.test"), || async move {
            replica(a, "api.test").await.as_deref() == Some("api")
        })
        .await;
    }
    // p2's last good snapshot is on disk (written right after it applied).
    let last_good = dir.path().join("p2").join("last-good.json");
    wait_until(WAIT, "p2's last good snapshot holds api.test", || {
        let last_good = last_good.clone();
        async move { std::fs::read_to_string(&last_good).is_ok_and(|t| t.contains("api.test")) }
    })
    .await;

    // The controller dies: both proxies keep serving.
    controller.signal("KILL");
    controller.wait_exit(WAIT).await;
    for a in [a1, a2] {
        assert_eq!(replica(a, "web.test").await.as_deref(), Some("web"));
        assert_eq!(replica(a, "api.test").await.as_deref(), Some("api"));
    }

    // A proxy restarted while the controller is away serves its last good
    // config from its first request.
    p2.signal("TERM");
    p2.wait_exit(WAIT).await;
    let p2 = spawn_proxy(dir.path(), "p2", at);
    let a2 = p2.listen_addr().await;
    assert_eq!(replica(a2, "web.test").await.as_deref(), Some("web"));
    assert_eq!(replica(a2, "api.test").await.as_deref(), Some("api"));
    assert_eq!(
        p2.count_lines(|l| l.contains("serving the last good snapshot")),
        1
    );
    assert_eq!(replica(a1, "api.test").await.as_deref(), Some("api"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_controller_without_credentials_says_how_to_make_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("controller.toml");
    std::fs::write(&config, controller_config("")).unwrap();
    let mut controller = Portico::spawn(bin(), &["controller", "run", "--config", &path(&config)]);
    let status = controller.wait_exit(WAIT).await;
    assert!(!status.success());
    let log = controller.stderr_lines().join("\n") + &controller.stdout_lines().join("\n");
    assert!(log.contains("ca.crt is missing"), "{log}");
    assert!(log.contains("portico controller init"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_config_with_services_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    let web = service_toml("web", &["web.test"], &["127.0.0.1:9".parse().unwrap()], "");
    std::fs::write(
        &config,
        format!("[proxy]\nhttp_listen = \"127.0.0.1:0\"\n\n{web}"),
    )
    .unwrap();
    let token = dir.path().join("token");
    let mut proxy = Portico::spawn(
        bin(),
        &[
            "proxy",
            "--controller",
            "127.0.0.1:9",
            "--join-token-file",
            &path(&token),
            "--state-dir",
            &path(dir.path()),
            "--config",
            &path(&config),
        ],
    );
    let status = proxy.wait_exit(WAIT).await;
    assert!(!status.success());
    let log = proxy.stderr_lines().join("\n") + &proxy.stdout_lines().join("\n");
    assert!(
        log.contains("a proxy's config holds only [proxy] and [admin]"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_whose_certificate_does_not_load_is_nacked() {
    let dir = tempfile::tempdir().unwrap();
    let init = std::process::Command::new(bin())
        .args(["controller", "init", "--state-dir"])
        .arg(dir.path().join("ctl"))
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let web = Backend::echo("web").await;
    let web_toml = service_toml("web", &["web.test"], &[web.addr], "");
    let config = dir.path().join("controller.toml");
    std::fs::write(&config, controller_config(&web_toml)).unwrap();
    let controller = Portico::spawn(bin(), &["controller", "run", "--config", &path(&config)]);
    let line = controller
        .wait_for_line(|l| l.contains("starting controller"), WAIT)
        .await;
    let at: SocketAddr = parse_logfmt(&line)["listen"].parse().unwrap();
    let p1 = spawn_proxy(dir.path(), "p1", at);
    let a1 = p1.listen_addr().await;
    wait_until(WAIT, "p1 routes web.test", || async move {
        replica(a1, "web.test").await.as_deref() == Some("web")
    })
    .await;

    // A certificate that is not one: the controller publishes it (its
    // file provider reads files, the proxy loads them), the proxy refuses.
    std::fs::write(dir.path().join("bad.crt"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("bad.key"), "not a key").unwrap();
    let bad = service_toml(
        "bad",
        &["bad.test"],
        &[web.addr],
        "tls_cert = \"bad.crt\"\ntls_key = \"bad.key\"",
    );
    std::fs::write(
        &config,
        format!(
            "[proxy]\nhttps_listen = \"127.0.0.1:0\"\n\n{}\n{bad}",
            controller_config(&web_toml)
        ),
    )
    .unwrap();
    let rejected = p1
        .wait_for_line(|l| l.contains("snapshot rejected"), WAIT)
        .await;
    assert!(rejected.contains("bad"), "{rejected}");
    // It keeps its version: web.test still served, bad.test not routed,
    // and its last good snapshot is the one before.
    assert_eq!(replica(a1, "web.test").await.as_deref(), Some("web"));
    assert_eq!(replica(a1, "bad.test").await, None);
    let last_good = std::fs::read_to_string(dir.path().join("p1").join("last-good.json")).unwrap();
    assert!(!last_good.contains("bad.test"));
}

/// Interlock's service clusters: each proxy serves only the services of
/// the cluster it announces; a proxy of a cluster no service names yet is
/// given the global settings and no routes; a change in one cluster sends
/// nothing to the proxies of another.
#[tokio::test(flavor = "multi_thread")]
async fn each_service_cluster_is_served_by_its_own_proxies_only() {
    let dir = tempfile::tempdir().unwrap();
    let init = std::process::Command::new(bin())
        .args(["controller", "init", "--state-dir"])
        .arg(dir.path().join("ctl"))
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let web = Backend::echo("web").await;
    let east = Backend::echo("east").await;
    let east2 = Backend::echo("east2").await;
    let web_toml = service_toml("web", &["web.test"], &[web.addr], "");
    let east_toml = |upstream: SocketAddr| {
        service_toml(
            "east",
            &["east.test"],
            &[upstream],
            "service_cluster = \"us-east\"",
        )
    };
    let config = dir.path().join("controller.toml");
    let write = |east: &str| {
        std::fs::write(&config, controller_config(&format!("{web_toml}\n{east}"))).unwrap()
    };
    write(&east_toml(east.addr));
    let controller = Portico::spawn(bin(), &["controller", "run", "--config", &path(&config)]);
    let line = controller
        .wait_for_line(|l| l.contains("starting controller"), WAIT)
        .await;
    let at: SocketAddr = parse_logfmt(&line)["listen"].parse().unwrap();

    let plain = spawn_proxy(dir.path(), "plain", at);
    let east_proxy = spawn_proxy_in(dir.path(), "east", at, "us-east");
    let north = spawn_proxy_in(dir.path(), "north", at, "eu-north");
    let (a_plain, a_east, a_north) = (
        plain.listen_addr().await,
        east_proxy.listen_addr().await,
        north.listen_addr().await,
    );
    wait_until(
        WAIT,
        "the default cluster's proxy routes web.test",
        || async move { replica(a_plain, "web.test").await.as_deref() == Some("web") },
    )
    .await;
    wait_until(WAIT, "the us-east proxy routes east.test", || async move {
        replica(a_east, "east.test").await.as_deref() == Some("east")
    })
    .await;
    north
        .wait_for_line(|l| l.contains("applied the controller's snapshot"), WAIT)
        .await;
    assert_eq!(replica(a_plain, "east.test").await, None);
    assert_eq!(replica(a_east, "web.test").await, None);
    for host in ["web.test", "east.test"] {
        assert_eq!(replica(a_north, host).await, None);
    }
    // No private key or route of another cluster is on a proxy's disk.
    let last_good =
        std::fs::read_to_string(dir.path().join("plain").join("last-good.json")).unwrap();
    assert!(!last_good.contains("east.test"), "{last_good}");

    // A change in us-east reaches its proxy and sends nothing to the others.
    write(&east_toml(east2.addr));
    wait_until(
        WAIT,
        "the us-east proxy follows the change",
        || async move { replica(a_east, "east.test").await.as_deref() == Some("east2") },
    )
    .await;
    assert_eq!(replica(a_plain, "web.test").await.as_deref(), Some("web"));
    for p in [&plain, &north] {
        assert_eq!(
            p.count_lines(|l| l.contains("applied the controller's snapshot")),
            1,
            "a proxy of another cluster was sent the us-east change"
        );
    }
}

/// A cluster proxy's `health_uri` says 503 until it has routes (no last
/// good snapshot, the controller not reached yet), then 200; on SIGTERM it
/// says 503 while the proxy keeps serving for `drain_delay`, and keeps its
/// stream meanwhile (the controller does not list it as gone while it
/// serves); a second SIGTERM cuts the delay short.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_is_healthy_only_with_routes_and_stays_listed_while_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    portico_testkit::cluster::init(bin(), dir.path());
    // The proxy dials the controller through a forwarder that leads
    // nowhere until the controller is up.
    let link =
        portico_testkit::forwarder::Forwarder::start(portico_testkit::dead_addr().await).await;
    let spec = ProxySpec {
        config: "health_uri = \"/healthz\"\ndrain_delay = \"60s\"\n",
        ..ProxySpec::new("lb", link.addr)
    };
    let mut proxy = portico_testkit::cluster::spawn_proxy(bin(), dir.path(), &spec);
    let at = proxy.listen_addr().await;
    let health = || async move {
        let r = curl(&[&format!("http://{at}/healthz")]).await;
        (r.status, r.body)
    };
    let (status, body) = health().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not ready"), "{body}");

    let web = Backend::echo("web").await;
    let config = dir.path().join("controller.toml");
    let web_toml = service_toml("web", &["web.test"], &[web.addr], "");
    std::fs::write(&config, controller_config(&web_toml)).unwrap();
    let (controller, ctl) = portico_testkit::cluster::start_controller(bin(), &config).await;
    link.set_target(ctl);
    wait_until(WAIT, "the proxy routes web.test", || async move {
        replica(at, "web.test").await.as_deref() == Some("web")
    })
    .await;
    assert_eq!(health().await.0, 200);

    proxy.signal("TERM");
    wait_until(WAIT, "the health URI to say draining", || async move {
        health().await.1.contains("draining")
    })
    .await;
    assert_eq!(replica(at, "web.test").await.as_deref(), Some("web"));
    assert_eq!(
        controller.count_lines(|l| l.contains("proxy closed its stream")),
        0,
        "the controller lost a proxy that still serves"
    );
    // The second SIGTERM: no waiting out the 60 s.
    proxy.signal("TERM");
    let started = std::time::Instant::now();
    proxy.wait_exit(WAIT).await;
    assert!(started.elapsed() < WAIT);
    controller
        .wait_for_line(|l| l.contains("proxy closed its stream"), WAIT)
        .await;
}
