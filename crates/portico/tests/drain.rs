//! Stopping behind an external load balancer (issue 13, item 8), with the
//! real binary: `[proxy] health_uri` answers 200 while the proxy serves and
//! 503 from the moment it gets SIGTERM; for `drain_delay` it keeps
//! accepting and serving (so the balancer's checks take it out before its
//! port closes), then it stops listening and lets in-flight requests
//! finish. A client loop standing in for the balancer's traffic loses no
//! request.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use portico_testkit::{curl, service_toml, wait_until, Backend, HttpClient, Portico};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DRAIN_DELAY: Duration = Duration::from_secs(2);
/// How long a slow request takes upstream: it is sent just before the
/// listener closes and must still be answered.
const SLOW: Duration = Duration::from_millis(1500);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portico"))
}

/// Sends `request` on a new connection and reads until the proxy closes
/// it; the error is the connect's or the read's.
async fn raw(addr: SocketAddr, request: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::other("no end of response within 5s"))??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A load balancer's check as HAProxy's `option httpchk` sends it: HTTP/1.0,
/// no Host (so it takes the general request path).
async fn health_http10(addr: SocketAddr) -> u16 {
    status_of(&raw(addr, "GET /healthz HTTP/1.0\r\n\r\n").await.unwrap())
}

#[tokio::test]
async fn sigterm_fails_health_at_once_serves_through_drain_delay_then_drains() {
    let backend = Backend::start("app", |req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(SLOW).await;
        }
        let mut r = Response::new(Full::new(Bytes::from_static(b"app")));
        *r.status_mut() = StatusCode::OK;
        r
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portico.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nhttp_listen = \"127.0.0.1:0\"\nhealth_uri = \"/healthz\"\n\
             drain_delay = \"{}s\"\nshutdown_grace = \"10s\"\n\n{}",
            DRAIN_DELAY.as_secs(),
            service_toml("app", &["app.test"], &[backend.addr], "")
        ),
    )
    .unwrap();
    let mut portico = Portico::spawn(bin(), &["run", "--config", config.to_str().unwrap()]);
    let addr = portico.listen_addr().await;

    // Healthy, on every request path: the byte codec (HTTP/1.1 with any
    // Host, a query string ignored), the general one (HTTP/1.0 without a
    // Host, and h2c).
    let fast = raw(
        addr,
        "GET /healthz?from=lb HTTP/1.1\r\nHost: 192.0.2.7\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status_of(&fast), 200, "{fast}");
    assert!(fast.ends_with("\r\n\r\nok\n"), "{fast}");
    assert_eq!(health_http10(addr).await, 200);
    let h2 = curl(&["--http2-prior-knowledge", &format!("http://{addr}/healthz")]).await;
    assert_eq!((h2.status, h2.body.as_str()), (200, "ok\n"), "{h2:?}");
    assert_eq!(
        backend.hits(),
        0,
        "the health URI is the proxy's own, never forwarded"
    );

    // The balancer's traffic: a keep-alive client looping until told to stop.
    let client = HttpClient::new(addr);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let looping = {
        let (client, stop, answered, failures) = (
            client.clone(),
            stop.clone(),
            answered.clone(),
            failures.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match client.get("app.test", "/").await {
                    Ok((StatusCode::OK, _, body)) if body == "app" => {
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok((status, _, body)) => {
                        failures.lock().unwrap().push(format!("{status}: {body:?}"))
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        })
    };
    wait_until(
        Duration::from_secs(10),
        "the client loop to get going",
        || {
            let n = answered.load(Ordering::SeqCst);
            async move { n >= 20 }
        },
    )
    .await;

    let before = answered.load(Ordering::SeqCst);
    let sigterm = Instant::now();
    portico.signal("TERM");
    wait_until(
        Duration::from_secs(1),
        "the health URI to answer 503",
        || async { health_http10(addr).await == 503 },
    )
    .await;
    let turned = sigterm.elapsed();
    assert!(
        turned < Duration::from_millis(500),
        "503 only {turned:?} after SIGTERM"
    );
    let fast = raw(addr, "GET /healthz HTTP/1.1\r\nHost: 192.0.2.7\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&fast), 503, "{fast}");
    assert!(
        fast.to_ascii_lowercase().contains("connection: close"),
        "{fast}"
    );
    // While draining, HTTP/1 responses close their connections: a client
    // reconnects through the balancer, which by then sends it elsewhere.
    let routed = raw(addr, "GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&routed), 200, "{routed}");
    assert!(
        routed.to_ascii_lowercase().contains("connection: close"),
        "{routed}"
    );

    // The balancer has taken the proxy out well within the delay: its
    // traffic stops, one slow request still in flight as the port closes.
    let stop_sending = DRAIN_DELAY - Duration::from_millis(500);
    tokio::time::sleep_until((sigterm + stop_sending).into()).await;
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.get("app.test", "/slow").await })
    };
    stop.store(true, Ordering::SeqCst);
    looping.await.unwrap();
    let during = answered.load(Ordering::SeqCst) - before;
    assert!(
        failures.lock().unwrap().is_empty(),
        "requests failed: {:?}",
        failures.lock().unwrap()
    );
    assert!(
        during >= 10,
        "only {during} requests answered during the drain delay"
    );

    // Then the listener closes: new connections are refused.
    wait_until(
        DRAIN_DELAY + Duration::from_secs(5),
        "the listener to close",
        || async {
            matches!(
                tokio::net::TcpStream::connect(addr).await,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            )
        },
    )
    .await;
    let closed = sigterm.elapsed();
    assert!(
        closed >= DRAIN_DELAY,
        "the listener closed {closed:?} after SIGTERM, before drain_delay"
    );
    let (status, _, body) = slow.await.unwrap().expect("the slow request is answered");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"app"[..]));

    let exit = portico.wait_exit(Duration::from_secs(15)).await;
    assert!(exit.success(), "{exit}");
    let lines = portico.stderr_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("draining: the health URI answers 503")
                && l.contains("drain_delay=2s")),
        "{lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("msg=request") && l.contains("/healthz")),
        "health checks are not access-logged: {lines:#?}"
    );
}

#[tokio::test]
async fn portico_health_asks_the_health_uri() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portico.toml");
    // An address nothing listens on yet: the check must fail, not hang.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    std::fs::write(
        &config,
        format!(
            "[proxy]\nhttp_listen = \"0.0.0.0:{port}\"\nhealth_uri = \"/healthz\"\n\
             drain_delay = \"60s\"\n"
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let check = || {
        std::process::Command::new(bin())
            .args(["health", "--config", config])
            .output()
            .unwrap()
    };
    let down = check();
    assert!(!down.status.success());
    let said = String::from_utf8_lossy(&down.stdout);
    assert!(said.starts_with("unhealthy: http://127.0.0.1:"), "{said}");

    let mut portico = Portico::spawn(bin(), &["run", "--config", config]);
    portico.listen_addr().await;
    let up = check();
    let said = String::from_utf8_lossy(&up.stdout);
    assert!(up.status.success(), "{said}");
    assert_eq!(
        said.trim(),
        format!("healthy: http://127.0.0.1:{port}/healthz answered 200")
    );
    // Draining: the check fails (what Docker's HEALTHCHECK and a balancer
    // act on) while the proxy still listens.
    portico.signal("TERM");
    wait_until(
        Duration::from_secs(10),
        "portico health to fail",
        || async {
            let draining = check();
            !draining.status.success()
                && String::from_utf8_lossy(&draining.stdout).contains("answered 503")
        },
    )
    .await;
    // A second SIGTERM does not wait out the 60 s.
    portico.signal("TERM");
    portico.wait_exit(Duration::from_secs(10)).await;

    // Without a health_uri there is nothing to ask: said, and a failure.
    std::fs::write(config, "[proxy]\nhttp_listen = \"127.0.0.1:8080\"\n").unwrap();
    let none = check();
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stdout).contains("no [proxy] health_uri"),
        "{:?}",
        none
    );
}
