//! Upstream health end to end: active checks, passive ejection, the
//! max_ejected_percent floor, the retry budget, max_requests and hedged
//! connects, each driven through real sockets against backends that fail
//! on cue. State is read from the proxy's own report (what `/routes`
//! shows), never guessed from timing; every wait is bounded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use portico_testkit::raw::{RawResponse, Wire};
use portico_testkit::service_toml as service;
use portico_testkit::{Backend, Echo, TestProxy};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

async fn get(c: &mut Wire, host: &str, path: &str) -> RawResponse {
    c.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"))
        .await
        .expect("send");
    c.read_response("GET").await.expect("a response")
}

fn replica(r: &RawResponse) -> String {
    let e: Echo =
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body_text()));
    e.replica
}

/// The health state the proxy reports for `addr` (in the first route that
/// has it), as `/routes` shows it.
fn state(proxy: &TestProxy, addr: SocketAddr) -> &'static str {
    let snap = proxy.proxy.snapshot();
    snap.pools
        .iter()
        .flat_map(|p| p.upstreams.iter())
        .find(|u| u.addr == addr)
        .map(|u| u.health.report().state)
        .expect("the upstream is configured")
}

/// Waits (bounded by `within`) until `addr` is in `want` state; returns
/// how long it took.
async fn await_state(
    proxy: &TestProxy,
    addr: SocketAddr,
    want: &str,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    while state(proxy, addr) != want {
        assert!(
            start.elapsed() < within,
            "{addr} still {} after {within:?}, want {want}",
            state(proxy, addr)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// An echo backend whose `/healthz` answers with the status in `health`.
async fn checked_backend(name: &str, health: Arc<AtomicU16>) -> Backend {
    let replica = name.to_owned();
    Backend::start(name, move |req| {
        let health = health.clone();
        let replica = replica.clone();
        async move {
            if req.uri().path() == "/healthz" {
                let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"checked\n")));
                *r.status_mut() =
                    hyper::StatusCode::from_u16(health.load(Ordering::SeqCst)).unwrap();
                return r;
            }
            let body = serde_json::json!({
                "replica": replica, "method": req.method().as_str(), "path": req.uri().to_string(),
                "version": "HTTP/1.1", "headers": {}, "body_len": 0
            });
            hyper::Response::new(Full::new(Bytes::from(body.to_string())))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_failing_its_checks_gets_no_traffic_until_it_passes_again() {
    let sick_health = Arc::new(AtomicU16::new(200));
    let sick = checked_backend("sick", sick_health.clone()).await;
    let well = checked_backend("well", Arc::new(AtomicU16::new(200))).await;
    let interval = Duration::from_millis(200);
    let proxy = TestProxy::start(&service(
        "app",
        &["h.test"],
        &[sick.addr, well.addr],
        "health_path = \"/healthz\"\nhealth_interval = \"200ms\"\nhealth_timeout = \"100ms\"\nhealth_unhealthy = 2\nhealth_healthy = 2",
    ))
    .await;
    let mut c = Wire::connect(proxy.addr).await;
    // Unknown, then healthy: both take traffic from the start.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let r = get(&mut c, "h.test", "/").await;
        assert_eq!(r.status, 200);
        seen.insert(replica(&r));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    await_state(&proxy, sick.addr, "healthy", Duration::from_secs(5)).await;

    // The replica's checks start failing; a client loop meanwhile never
    // sees a failure.
    sick_health.store(500, Ordering::SeqCst);
    let flipped = Instant::now();
    let mut loop_client = Wire::connect(proxy.addr).await;
    while state(&proxy, sick.addr) != "unhealthy" {
        let r = get(&mut loop_client, "h.test", "/").await;
        assert_eq!(r.status, 200, "{}", r.body_text());
        // interval × unhealthy, plus one interval for the first check's
        // phase, plus room for a loaded CI machine.
        assert!(
            flipped.elapsed() < interval * 3 + Duration::from_secs(2),
            "not marked unhealthy in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hits = sick.hits();
    for _ in 0..20 {
        let r = get(&mut c, "h.test", "/").await;
        assert_eq!(r.status, 200);
        assert_eq!(replica(&r), "well");
    }
    // Only its checks reach it now.
    let checks_meanwhile = sick.hits() - hits;
    assert!(
        checks_meanwhile <= 20,
        "{checks_meanwhile} requests reached the sick replica"
    );
    let report = proxy.proxy.snapshot().pools[0]
        .upstreams
        .iter()
        .find(|u| u.addr == sick.addr)
        .unwrap()
        .health
        .report();
    let reason = report.reason.unwrap();
    assert!(
        reason.contains("/healthz") && reason.contains("status 500"),
        "{reason}"
    );

    // It recovers: back in rotation.
    sick_health.store(200, Ordering::SeqCst);
    await_state(
        &proxy,
        sick.addr,
        "healthy",
        interval * 3 + Duration::from_secs(2),
    )
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(replica(&get(&mut c, "h.test", "/").await));
    }
    assert!(seen.contains("sick"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_answers_is_ejected_and_no_longer_waited_on() {
    let hung = Backend::hang("hung").await;
    let fast = Backend::echo("fast").await;
    let proxy = TestProxy::start(&format!(
        "[proxy]\nupstream_timeout = \"300ms\"\noutlier_consecutive_failures = 3\n\n{}",
        service("app", &["e.test"], &[hung.addr, fast.addr], "")
    ))
    .await;
    let mut c = Wire::connect(proxy.addr).await;
    let mut timeouts = 0;
    for _ in 0..20 {
        let r = get(&mut c, "e.test", "/").await;
        match r.status {
            200 => {}
            504 => timeouts += 1,
            other => panic!("{other}: {}", r.body_text()),
        }
        if state(&proxy, hung.addr) == "ejected" {
            break;
        }
    }
    assert_eq!(state(&proxy, hung.addr), "ejected");
    assert_eq!(timeouts, 3, "ejected after its third timeout in a row");
    let hits = hung.hits();
    for _ in 0..20 {
        let r = get(&mut c, "e.test", "/").await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        hung.hits(),
        hits,
        "requests still sent to the ejected replica"
    );
}

/// A listener that accepts and closes at once, before any answer: every
/// request sent there fails before a response head. Counts its accepts.
async fn resetter() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_replica_failing_requests_still_reach_them() {
    let (a, a_count) = resetter().await;
    let (b, b_count) = resetter().await;
    let proxy = TestProxy::start(&format!(
        "[proxy]\noutlier_consecutive_failures = 2\n\n{}",
        service("app", &["f.test"], &[a, b], "")
    ))
    .await;
    let mut c = Wire::connect(proxy.addr).await;
    let requests = 50;
    for _ in 0..requests {
        let r = get(&mut c, "f.test", "/").await;
        assert_eq!(r.status, 502, "{}", r.body_text());
    }
    // One of two may be ejected (max_ejected_percent 50), never both: every
    // request reached an upstream.
    let attempts = a_count.load(Ordering::SeqCst) + b_count.load(Ordering::SeqCst);
    assert!(
        attempts >= requests,
        "{attempts} attempts for {requests} requests"
    );
    assert!(
        state(&proxy, a) != "ejected" || state(&proxy, b) != "ejected",
        "the whole pool was ejected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_bounds_the_extra_attempts_of_an_outage() {
    let (a, a_count) = resetter().await;
    let (b, b_count) = resetter().await;
    // Ejection off: without a budget every request would be tried twice.
    let proxy = TestProxy::start(&format!(
        "[proxy]\noutlier_consecutive_failures = 0\nretry_budget_percent = 20\nretry_budget_min_per_second = 1\n\n{}",
        service("app", &["f.test"], &[a, b], "")
    ))
    .await;
    let mut c = Wire::connect(proxy.addr).await;
    let requests = 200;
    let mut refused = 0;
    for _ in 0..requests {
        let r = get(&mut c, "f.test", "/").await;
        assert_eq!(r.status, 502, "{}", r.body_text());
        if r.body_text().contains("retry budget") {
            refused += 1;
        }
    }
    let attempts = a_count.load(Ordering::SeqCst) + b_count.load(Ordering::SeqCst);
    let retries = attempts - requests;
    // At most 20 % of the requests plus the floor (1 a second over the
    // 10 s window); and the budget was used, not merely never reached.
    assert!(
        retries <= requests / 5 + 10,
        "{retries} retries for {requests} requests"
    );
    assert!(retries >= 10, "{retries} retries for {requests} requests");
    assert!(
        refused >= requests / 2,
        "{refused} requests said the budget was spent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_refuses_with_retry_after_and_frees_as_requests_finish() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let slow = Backend::start("gated", move |_req| {
        let g = g.clone();
        async move {
            g.acquire().await.unwrap().forget();
            hyper::Response::new(Full::new(Bytes::from_static(b"done\n")))
        }
    })
    .await;
    let proxy = TestProxy::start(&service(
        "app",
        &["m.test"],
        &[slow.addr],
        "max_requests = 2",
    ))
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let addr = proxy.addr;
        held.push(tokio::spawn(async move {
            let mut c = Wire::connect(addr).await;
            get(&mut c, "m.test", "/").await.status
        }));
    }
    let start = Instant::now();
    while slow.hits() < 2 {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = Wire::connect(proxy.addr).await;
    for path in ["/", "/x"] {
        let r = get(&mut c, "m.test", path).await;
        assert_eq!(r.status, 503, "{}", r.body_text());
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(r.body_text().contains("max_requests"), "{}", r.body_text());
    }
    // Also on the general path, which takes chunked bodies.
    c.send(
        "POST / HTTP/1.1\r\nHost: m.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let r = c.read_response("POST").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    gate.add_permits(2);
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    gate.add_permits(1);
    assert_eq!(get(&mut c, "m.test", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_an_ejected_upstream_ejected() {
    let (dead, dead_count) = resetter().await;
    let live = Backend::echo("live").await;
    let config = |extra: &str| {
        format!(
            "[proxy]\noutlier_consecutive_failures = 2\n\n{}{extra}",
            service("app", &["r.test"], &[dead, live.addr], "")
        )
    };
    let proxy = TestProxy::start(&config("")).await;
    let mut c = Wire::connect(proxy.addr).await;
    for _ in 0..10 {
        assert_eq!(get(&mut c, "r.test", "/").await.status, 200);
        if state(&proxy, dead) == "ejected" {
            break;
        }
    }
    assert_eq!(state(&proxy, dead), "ejected");
    let other = Backend::echo("other").await;
    proxy.apply(&config(&service("other", &["o.test"], &[other.addr], "")));
    assert_eq!(state(&proxy, dead), "ejected", "the reload re-admitted it");
    let before = dead_count.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(replica(&get(&mut c, "r.test", "/").await), "live");
    }
    assert_eq!(dead_count.load(Ordering::SeqCst), before);
}

/// A listener whose accept queue is full and never drained: the kernel
/// drops further SYNs, so a connect to it neither completes nor fails (a
/// vanished container's address behaves so).
async fn blackhole() -> (SocketAddr, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the queue (backlog 1 holds two on Linux), then leave it be.
    let mut fill = Vec::new();
    for _ in 0..3 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await
        {
            fill.push(s);
        }
    }
    std::mem::forget(listener);
    (addr, fill)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_hangs_is_hedged_to_the_next_replica() {
    let (hole, _fill) = blackhole().await;
    // The kernel must really leave the connect hanging for the test to mean anything.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(hole))
            .await
            .is_err(),
        "the blackhole answered"
    );
    let live = Backend::echo("live").await;
    let proxy = TestProxy::start(&format!(
        "[proxy]\nconnect_timeout = \"5s\"\nhedge_delay = \"200ms\"\n\n{}",
        service("app", &["b.test"], &[hole, live.addr], "")
    ))
    .await;
    let mut c = Wire::connect(proxy.addr).await;
    // Both request paths hedge: the GET takes the fast one, the POST, with
    // a chunked body, the general one.
    for method in ["GET", "POST"] {
        for _ in 0..6 {
            let started = Instant::now();
            let r = if method == "GET" {
                get(&mut c, "b.test", "/").await
            } else {
                c.send(
                    "POST / HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\n\r\n\
                     2\r\nhi\r\n0\r\n\r\n",
                )
                .await
                .unwrap();
                c.read_response("POST").await.unwrap()
            };
            assert_eq!(r.status, 200, "{method}: {}", r.body_text());
            assert_eq!(replica(&r), "live");
            // Not the 5 s connect timeout: the hedge delay and the other
            // replica's answer (a generous bound for a loaded machine).
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{method} took {:?}",
                started.elapsed()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_speak_the_upstreams_tls_and_protocol_and_stop_when_removed() {
    let dir = tempfile::tempdir().unwrap();
    let backend_ca = portico_testkit::TestCa::new("Backend CA");
    let ca_path = dir.path().join("backend-ca.crt");
    std::fs::write(&ca_path, &backend_ca.cert_pem).unwrap();
    let issued = backend_ca.issue(&["backend.internal"]);
    let h1 = Backend::echo_tls("tls-h1", issued.server_config(&[b"http/1.1"])).await;
    let h2 = Backend::echo_tls("tls-h2", issued.server_config(&[b"h2"])).await;
    let other_ca = portico_testkit::TestCa::new("Another CA");
    let wrong = Backend::echo_tls(
        "wrong",
        other_ca
            .issue(&["backend.internal"])
            .server_config(&[b"http/1.1"]),
    )
    .await;
    let ca = ca_path.display().to_string();
    let checks = "health_path = \"/healthz\"\nhealth_interval = \"100ms\"\nhealth_timeout = \"100ms\"\nhealth_healthy = 1\nhealth_unhealthy = 1\n";
    let tls = format!(
        "upstream_tls = true\nupstream_tls_ca = {ca:?}\nupstream_tls_name = \"backend.internal\"\n"
    );
    let config = |checks: &str| {
        format!(
            "{}{}",
            service(
                "h1",
                &["h1.test"],
                &[h1.addr, wrong.addr],
                &format!("{tls}{checks}")
            ),
            service(
                "h2",
                &["h2.test"],
                &[h2.addr],
                &format!("{tls}upstream_protocol = \"h2\"\n{checks}")
            ),
        )
    };
    let proxy = TestProxy::start(&config(checks)).await;
    let within = Duration::from_secs(5);
    await_state(&proxy, h1.addr, "healthy", within).await;
    await_state(&proxy, h2.addr, "healthy", within).await;
    // A certificate from another CA fails the check as it would fail requests.
    await_state(&proxy, wrong.addr, "unhealthy", within).await;
    let report = proxy.proxy.snapshot().pools[0]
        .upstreams
        .iter()
        .find(|u| u.addr == wrong.addr)
        .unwrap()
        .health
        .report();
    assert!(
        report.reason.unwrap().contains("TLS"),
        "{:?}",
        report.last_check
    );
    // Traffic follows the checks' verdict.
    let mut c = Wire::connect(proxy.addr).await;
    let r = get(&mut c, "h1.test", "/").await;
    assert_eq!(
        replica(&r),
        "tls-h1",
        "the unhealthy replica is passed over"
    );

    // Checks removed by a reload: what they concluded is forgotten, and
    // they stop.
    proxy.apply(&config(""));
    await_state(&proxy, wrong.addr, "unknown", within).await;
    await_state(&proxy, h2.addr, "unknown", within).await;
    let hits = (h1.hits(), h2.hits());
    // Five check intervals, with no request sent meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((h1.hits(), h2.hits()), hits, "checks still running");
}

/// Checks of many upstreams configured at once are spread over the
/// interval, not sent in one burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_of_many_upstreams_are_spread_over_the_interval() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut backends = Vec::new();
    for i in 0..50 {
        let seen = seen.clone();
        backends.push(
            Backend::start(&format!("b{i}"), move |_req| {
                seen.lock().unwrap().push((i, Instant::now()));
                async { hyper::Response::new(Full::new(Bytes::from_static(b"ok\n"))) }
            })
            .await,
        );
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let started = Instant::now();
    let _proxy = TestProxy::start(&service(
        "many",
        &["many.test"],
        &addrs,
        "health_path = \"/healthz\"\nhealth_interval = \"1s\"",
    ))
    .await;
    // Every upstream's first check, within the interval and a margin.
    let firsts = loop {
        let firsts: std::collections::BTreeMap<usize, Instant> = seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .map(|&(i, at)| (i, at))
            .collect();
        if firsts.len() == 50 {
            break firsts;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{} of 50 checked",
            firsts.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let earliest = firsts.values().min().unwrap();
    let latest = firsts.values().max().unwrap();
    let span = latest.duration_since(*earliest);
    // Uniform over 1 s, 50 starts span about 960 ms; in lockstep, a few ms.
    assert!(
        span > Duration::from_millis(500),
        "first checks all within {span:?}"
    );
    // And no more than a handful in any 50 ms.
    let mut times: Vec<Instant> = firsts.values().copied().collect();
    times.sort();
    let crowded = times
        .windows(10)
        .filter(|w| w[9].duration_since(w[0]) < Duration::from_millis(50))
        .count();
    assert_eq!(crowded, 0, "ten first checks within 50 ms");
}
