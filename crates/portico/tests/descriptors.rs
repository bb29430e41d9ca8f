//! Descriptors, end to end on a real `portico run` (child process, some
//! started under `prlimit`): the soft limit is raised to the hard one and
//! sets the automatic `max_client_connections`; at the cap new connections
//! wait in the backlog and are served when one closes, while the admin API
//! still answers; and a proxy that runs out of descriptors anyway answers
//! 502 without ejecting the upstream it could not reach.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use portico_testkit::process::parse_logfmt;
use portico_testkit::raw::Wire;
use portico_testkit::service_toml as service;
use portico_testkit::{curl, wait_until, Backend, Portico, TestProxy};

const WAIT: Duration = Duration::from_secs(10);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portico")
}

/// A config routing app.test to `app`: `[proxy]` listening on port 0 with
/// `proxy` lines added, then the `tables` (such as `[admin]`).
fn write_config(dir: &tempfile::TempDir, proxy: &str, tables: &str, app: SocketAddr) -> String {
    let text = format!(
        "[proxy]\nhttp_listen = \"127.0.0.1:0\"\n{proxy}\n{tables}\n{}",
        service("app", &["app.test"], &[app], "")
    );
    let path = dir.path().join("portico.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// Waits for the log line holding `needle` and checks its logfmt fields.
async fn logged(portico: &Portico, needle: &str, expected: &[(&str, &str)]) {
    let line = portico.wait_for_line(|l| l.contains(needle), WAIT).await;
    let fields = parse_logfmt(&line);
    for (key, value) in expected {
        assert_eq!(
            fields.get(*key).map(String::as_str),
            Some(*value),
            "{key} in {line}"
        );
    }
}

/// `portico run --config CONFIG [EXTRA]` with the descriptor limit
/// `soft:hard` (by util-linux's `prlimit`, which execs it).
fn run_limited(config: &str, soft: u64, hard: u64, extra: &[&str]) -> Portico {
    let limit = format!("--nofile={soft}:{hard}");
    let mut args = vec![limit.as_str(), "--", bin(), "run", "--config", config];
    args.extend_from_slice(extra);
    Portico::spawn(Path::new("prlimit"), &args)
}

async fn samples(admin: SocketAddr) -> BTreeMap<String, f64> {
    let r = curl(&[&format!("http://{admin}/metrics")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn get(wire: &mut Wire) -> portico_testkit::raw::RawResponse {
    wire.send("GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    wire.read_response("GET").await.unwrap()
}

/// Descriptors the process has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test]
async fn the_soft_descriptor_limit_is_raised_and_sets_the_automatic_cap() {
    let dir = tempfile::tempdir().unwrap();
    let app = Backend::echo("app").await;
    let config = write_config(&dir, "", ADMIN, app.addr);
    let portico = run_limited(&config, 256, 4096, &[]);
    logged(
        &portico,
        "raised the descriptor limit",
        &[("before", "256"), ("after", "4096")],
    )
    .await;
    // (4096 - 1024 kept back) / 2: each client connection may need an
    // upstream one.
    logged(
        &portico,
        "starting server",
        &[("max_client_connections", "1536"), ("descriptors", "4096")],
    )
    .await;
    let admin = portico.admin_addr().await;
    assert_eq!(
        samples(admin).await["portico_client_connections_max"],
        1536.0
    );
}

/// At `max_client_connections`, a new connection is not refused: it waits
/// in the listen backlog, and is served as soon as another closes. The
/// admin API is not behind the cap.
#[tokio::test]
async fn at_the_cap_new_connections_wait_and_are_served_when_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let app = Backend::echo("app").await;
    let config = write_config(&dir, "max_client_connections = 2", ADMIN, app.addr);
    let portico = Portico::spawn(Path::new(bin()), &["run", "--config", &config]);
    let http = portico.listen_addr().await;
    let admin = portico.admin_addr().await;
    // Two uploads in progress hold both places (busy connections: none is
    // idle, so none is closed to make room).
    let upload = "POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\nabc";
    let mut first = Wire::connect(http).await;
    let mut second = Wire::connect(http).await;
    first.send(upload).await.unwrap();
    second.send(upload).await.unwrap();
    wait_until(WAIT, "both uploads to reach the upstream", || async {
        app.hits() >= 2
    })
    .await;

    // The third connects (the kernel completes the handshake) but is not
    // accepted, so its request is not read.
    let mut third = Wire::connect(http).await;
    third
        .send("GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), third.read_response("GET")).await;
    assert!(early.is_err(), "answered beyond the cap: {early:?}");
    portico
        .wait_for_line(|l| l.contains("at max_client_connections"), WAIT)
        .await;
    let at_cap = samples(admin).await;
    assert_eq!(at_cap["portico_client_connections_max"], 2.0);
    assert!(at_cap["portico_accept_waits_total"] >= 1.0, "{at_cap:?}");

    // One closes: the waiting connection is accepted and its request served.
    drop(first);
    let served = tokio::time::timeout(WAIT, third.read_response("GET"))
        .await
        .expect("the waiting connection was never served")
        .unwrap();
    assert_eq!(served.status, 200);
    second.send("defghij").await.unwrap();
    assert_eq!(second.read_response("POST").await.unwrap().status, 200);
}

/// At the cap, idle keep-alive connections make room for new ones: those
/// idle longest are closed (as nginx drains its reusable connections).
#[tokio::test]
async fn at_the_cap_idle_connections_are_closed_for_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let app = Backend::echo("app").await;
    let config = write_config(&dir, "max_client_connections = 2", "", app.addr);
    let portico = Portico::spawn(Path::new(bin()), &["run", "--config", &config]);
    let http = portico.listen_addr().await;
    let mut idle = [Wire::connect(http).await, Wire::connect(http).await];
    for c in &mut idle {
        assert_eq!(get(c).await.status, 200);
    }
    let mut third = Wire::connect(http).await;
    let served = tokio::time::timeout(WAIT, get(&mut third))
        .await
        .expect("no idle connection was closed for the new one");
    assert_eq!(served.status, 200);
    let mut closed = 0;
    for c in &mut idle {
        if c.send("GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await
            .is_err()
            || c.read_response("GET").await.is_err()
        {
            closed += 1;
        }
    }
    assert!(closed >= 1, "both idle connections were still served");
}

/// A proxy out of descriptors (the cap set above what the limit allows)
/// cannot connect upstream: that is its own failure, answered 502 with the
/// reason, and never counted against the upstream, which is not ejected
/// and serves again once descriptors are free.
#[tokio::test]
async fn out_of_descriptors_the_upstream_is_not_blamed() {
    let dir = tempfile::tempdir().unwrap();
    let app = Backend::echo("app").await;
    let config = write_config(
        &dir,
        "max_client_connections = 10000\nidle_connections_per_upstream = 0\n\
         outlier_consecutive_failures = 2\nmax_ejected_percent = 100",
        "",
        app.addr,
    );
    const LIMIT: usize = 128;
    let portico = run_limited(&config, LIMIT as u64, LIMIT as u64, &["--workers", "1"]);
    let http = portico.listen_addr().await;
    logged(
        &portico,
        "needs more descriptors than the limit",
        &[("needs", "20032"), ("descriptors", "128")],
    )
    .await;
    let pid = portico.pid();
    let mut client = Wire::connect(http).await;
    assert_eq!(get(&mut client).await.status, 200);

    // Idle connections until the proxy's every descriptor is taken (those
    // beyond wait in the backlog: accept fails, and is retried).
    let mut idle = Vec::new();
    for _ in 0..LIMIT {
        idle.push(Wire::connect(http).await);
    }
    wait_until(WAIT, "the proxy to run out of descriptors", || async move {
        open_fds(pid) >= LIMIT
    })
    .await;

    for _ in 0..4 {
        let r = get(&mut client).await;
        assert_eq!(r.status, 502, "{}", r.body_text());
        assert!(
            r.body_text().contains("cannot open a connection"),
            "{}",
            r.body_text()
        );
    }

    assert_eq!(
        portico.count_lines(|l| l.contains("upstream ejected")),
        0,
        "{:#?}",
        portico.stderr_lines()
    );

    drop(idle);
    wait_until(WAIT, "the idle connections to close", || async move {
        open_fds(pid) < LIMIT - 16
    })
    .await;
    // Not ejected: served at once.
    let r = get(&mut client).await;
    assert_eq!(r.status, 200, "{}", r.body_text());
}

/// A reload that raises `max_client_connections` lets the connections
/// waiting at the old cap in, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_raises_the_cap_lets_waiting_connections_in() {
    let app = Backend::echo("app").await;
    let config = |cap: usize| {
        format!(
            "[proxy]\nmax_client_connections = {cap}\n\n{}",
            service("app", &["app.test"], &[app.addr], "")
        )
    };
    let proxy = TestProxy::start(&config(1)).await;
    // A busy connection holds the one place.
    let mut busy = Wire::connect(proxy.addr).await;
    busy.send("POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\n\r\na")
        .await
        .unwrap();
    wait_until(WAIT, "the upload to reach the upstream", || async {
        app.hits() >= 1
    })
    .await;
    let mut waiting = Wire::connect(proxy.addr).await;
    waiting
        .send("GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let early =
        tokio::time::timeout(Duration::from_millis(500), waiting.read_response("GET")).await;
    assert!(early.is_err(), "answered beyond the cap: {early:?}");
    proxy.apply(&config(2));
    let served = tokio::time::timeout(WAIT, waiting.read_response("GET"))
        .await
        .expect("the raised cap did not let the waiting connection in")
        .unwrap();
    assert_eq!(served.status, 200);
    busy.send("bcd").await.unwrap();
    assert_eq!(busy.read_response("POST").await.unwrap().status, 200);
}
