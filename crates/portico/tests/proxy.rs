//! End-to-end tests of the data plane, in process: a real proxy on
//! 127.0.0.1:0, real backends, real `curl` and raw sockets as clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use portico_testkit::{
    curl, dead_addr, is_hex32, is_seconds, wait_until, Backend, Echo, HttpClient, TestProxy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

fn service(name: &str, hosts: &[&str], upstreams: &[SocketAddr]) -> String {
    portico_testkit::service_toml(name, hosts, upstreams, "")
}

/// Sends raw bytes and returns everything the proxy answers before closing
/// (or until the timeout).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_transcripts_host_header_routes_and_unknown_host_gets_503() {
    let b1 = Backend::echo("simple_foo.1").await;
    let b2 = Backend::echo("simple_foo.2").await;
    let proxy = TestProxy::start(&format!(
        "[proxy]\nproxy_id = \"lb-1\"\n{}",
        service("simple_foo", &["foo.app.domain.com"], &[b1.addr, b2.addr])
    ))
    .await;

    // curl -LSsvvvv -H "Host: foo.app.domain.com" http://127.0.0.1:8080
    let r = curl(&["-L", "-H", "Host: foo.app.domain.com", &proxy.url("/")]).await;
    assert_eq!(r.exit, 0, "{}", r.stderr);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(is_hex32(r.header("x-request-id").unwrap()), "{r:?}");
    assert_eq!(r.header("x-proxy-id"), Some("lb-1"));
    assert_eq!(
        r.header("x-server-info"),
        Some(portico_testkit::harness::TEST_SERVER_INFO)
    );
    let upstream = r.header("x-upstream-addr").unwrap();
    assert!(
        upstream == b1.addr.to_string() || upstream == b2.addr.to_string(),
        "{upstream}"
    );
    assert!(
        is_seconds(r.header("x-upstream-response-time").unwrap()),
        "{r:?}"
    );
    let echo: Echo = serde_json::from_str(&r.body).unwrap();
    assert!(echo.replica.starts_with("simple_foo."));
    assert_eq!(echo.header("host"), Some("foo.app.domain.com"));
    // The id the client sees is the one the upstream was sent.
    assert_eq!(echo.header("x-request-id"), r.header("x-request-id"));

    // Without a matching Host header the proxy does not deliver the request.
    let r = curl(&["-L", &proxy.url("/")]).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(is_hex32(r.header("x-request-id").unwrap()));
    assert_eq!(r.header("x-proxy-id"), Some("lb-1"));
    assert!(r.header("x-server-info").is_some());
    assert!(r.header("x-upstream-addr").is_none());
    assert!(
        r.body
            .contains("no service is configured for host \"127.0.0.1\""),
        "{}",
        r.body
    );
    assert_eq!(b1.hits() + b2.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_match_case_insensitively_without_port_exact_before_wildcard() {
    let exact = Backend::echo("exact").await;
    let wild = Backend::echo("wild").await;
    let proxy = TestProxy::start(&format!(
        "{}{}",
        service("exact", &["www.foo.example"], &[exact.addr]),
        service("wild", &["*.foo.example"], &[wild.addr])
    ))
    .await;
    let client = HttpClient::new(proxy.addr);
    for (host, want) in [
        ("WWW.Foo.Example:8080", "exact"),
        ("www.foo.example.", "exact"),
        ("api.foo.example", "wild"),
        ("a.b.foo.example:1", "wild"),
    ] {
        let (status, _, body) = client.get(host, "/").await.unwrap();
        assert_eq!(status, 200, "{host}");
        let echo: Echo = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo.replica, want, "{host}");
    }
    let (status, _, _) = client.get("foo.example", "/").await.unwrap();
    assert_eq!(status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_over_replicas_on_reused_connections() {
    let b1 = Backend::echo("r1").await;
    let b2 = Backend::echo("r2").await;
    let proxy = TestProxy::start(&service("svc", &["rr.test"], &[b1.addr, b2.addr])).await;
    let client = HttpClient::new(proxy.addr);
    let mut seen = Vec::new();
    for _ in 0..20 {
        let (status, headers, body) = client.get("rr.test", "/").await.unwrap();
        assert_eq!(status, 200);
        let echo: Echo = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            headers["x-upstream-addr"].to_str().unwrap(),
            if echo.replica == "r1" {
                b1.addr.to_string()
            } else {
                b2.addr.to_string()
            }
        );
        seen.push(echo.replica);
    }
    // Strict alternation: sequential requests visit r1, r2, r1, r2...
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1], "{seen:?}");
    }
    assert_eq!(b1.hits(), 10);
    assert_eq!(b2.hits(), 10);
    // Keep-alive to upstreams: twenty sequential requests need no more than
    // a connection or two per replica.
    assert!(
        b1.connections() <= 2 && b2.connections() <= 2,
        "{} {}",
        b1.connections(),
        b2.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_listing_the_same_host_share_one_pool() {
    let main = Backend::echo("main").await;
    let canary = Backend::echo("canary").await;
    let proxy = TestProxy::start(&format!(
        "{}{}",
        service("foo", &["foo.test"], &[main.addr]),
        service("foo_canary", &["foo.test"], &[canary.addr])
    ))
    .await;
    let client = HttpClient::new(proxy.addr);
    for _ in 0..4 {
        assert_eq!(client.get("foo.test", "/").await.unwrap().0, 200);
    }
    assert_eq!((main.hits(), canary.hits()), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_is_skipped_for_every_method() {
    let live = Backend::echo("live").await;
    let dead = dead_addr().await;
    let proxy = TestProxy::start(&service("svc", &["x.test"], &[dead, live.addr])).await;
    let client = HttpClient::new(proxy.addr);
    for i in 0..10 {
        // POST with a body too: a refused connect means nothing was sent.
        let (status, headers, body) = client
            .request(
                "POST",
                "x.test",
                "/submit",
                Bytes::from(vec![b'a'; 1000 + i]),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let echo: Echo = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo.body_len, 1000 + i);
        // When the dead one was tried first, both are listed, nginx-style.
        let addrs = headers["x-upstream-addr"].to_str().unwrap();
        assert!(addrs.ends_with(&live.addr.to_string()), "{addrs}");
    }
    assert_eq!(live.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_replicas_dead_is_502_naming_each_cause() {
    let (d1, d2) = (dead_addr().await, dead_addr().await);
    let proxy = TestProxy::start(&service("simple_foo", &["x.test"], &[d1, d2])).await;
    let r = curl(&["-H", "Host: x.test", &proxy.url("/")]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.body
            .contains("service simple_foo: no upstream could take the request"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains(&format!("{d1}: connection refused")),
        "{}",
        r.body
    );
    assert!(
        r.body.contains(&format!("{d2}: connection refused")),
        "{}",
        r.body
    );
    assert!(is_hex32(r.header("x-request-id").unwrap()));
    assert!(r
        .header("x-upstream-addr")
        .unwrap()
        .contains(&d1.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_answers_gives_504_after_the_timeout() {
    let hang = Backend::hang("hang").await;
    let proxy = TestProxy::start(&format!(
        "[proxy]\nupstream_timeout = \"300ms\"\n{}",
        service("slow", &["slow.test"], &[hang.addr])
    ))
    .await;
    let r = curl(&["-H", "Host: slow.test", &proxy.url("/")]).await;
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        r.body.contains(&format!(
            "upstream {} sent no response within 300ms",
            hang.addr
        )),
        "{}",
        r.body
    );
    assert_eq!(
        r.header("x-upstream-addr"),
        Some(hang.addr.to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_service_is_503() {
    let proxy =
        TestProxy::start("[[service]]\nname = \"scaled_to_zero\"\nhosts = [\"z.test\"]\n").await;
    let r = curl(&["-H", "Host: z.test", &proxy.url("/")]).await;
    assert_eq!(r.status, 503);
    assert!(
        r.body.contains("service scaled_to_zero has no upstreams"),
        "{}",
        r.body
    );
}

/// A backend that reads a request head and closes the connection without
/// answering: the request was sent, the response never came.
async fn slamming_backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = vec![0u8; 65536];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_after_send_retries_only_idempotent_requests() {
    let (slam, slam_count) = slamming_backend().await;
    let live = Backend::echo("live").await;
    let proxy = TestProxy::start(&service("svc", &["b.test"], &[slam, live.addr])).await;
    let client = HttpClient::new(proxy.addr);
    // Round robin starts at the slamming one for the first request.
    let (status, headers, _) = client.get("b.test", "/").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        headers["x-upstream-addr"].to_str().unwrap(),
        format!("{slam}, {}", live.addr)
    );
    assert_eq!(slam_count.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The second goes to live first; the third to slam again, and a POST
    // with a body must not be replayed.
    assert_eq!(client.get("b.test", "/").await.unwrap().0, 200);
    let (status, _, body) = client
        .request("POST", "b.test", "/pay", Bytes::from_static(b"once"))
        .await
        .unwrap();
    assert_eq!(status, 502);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("after the request was sent; not retried"),
        "{body}"
    );
    assert_eq!(live.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_and_forwarding_headers_set() {
    let b = Backend::echo("b").await;
    let proxy = TestProxy::start(&service("svc", &["h.test"], &[b.addr])).await;
    let r = curl(&[
        "-H",
        "Host: h.test:8080",
        "-H",
        "Connection: keep-alive, X-Secret",
        "-H",
        "X-Secret: drop-me",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "Proxy-Connection: keep-alive",
        "-H",
        "TE: trailers",
        "-H",
        "Trailer: X-Sum",
        "-H",
        "Upgrade: websocket",
        "-H",
        "X-Forwarded-For: 203.0.113.7",
        "-H",
        "X-Real-IP: 198.51.100.1",
        "-H",
        "Forwarded: for=198.51.100.9;proto=https",
        "-H",
        "X-Request-Id: client-chosen",
        "-H",
        "X-Kept: yes",
        &proxy.url("/p?q=1"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let echo: Echo = serde_json::from_str(&r.body).unwrap();
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            echo.header(gone).is_none(),
            "{gone} reached the upstream: {:?}",
            echo.headers
        );
    }
    // Connection is the upstream hop's own: keep-alive, never the client's list.
    assert_ne!(echo.header("connection"), Some("keep-alive, X-Secret"));
    assert_eq!(echo.header("x-kept"), Some("yes"));
    assert_eq!(echo.header("host"), Some("h.test:8080"));
    assert_eq!(echo.path, "/p?q=1");
    // The client (127.0.0.1) is no trusted proxy: its X-Forwarded-For is
    // replaced, not believed.
    assert_eq!(echo.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(echo.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(echo.header("forwarded"), None);
    assert_eq!(echo.header("x-forwarded-proto"), Some("http"));
    assert_eq!(echo.header("x-forwarded-host"), Some("h.test:8080"));
    let id = echo.header("x-request-id").unwrap();
    assert!(is_hex32(id), "{id}");
    assert_eq!(r.header("x-request-id"), Some(id));
    // The backend's own hop-by-hop header does not reach the client.
    assert_eq!(r.header("x-backend-replica"), Some("b"));
    assert!(r.header("keep-alive").is_none(), "{:?}", r.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hide_info_headers_drops_the_three_informational_headers() {
    let b = Backend::echo("b").await;
    let proxy = TestProxy::start(&format!(
        "[proxy]\nhide_info_headers = true\n{}",
        service("svc", &["h.test"], &[b.addr])
    ))
    .await;
    for url_host in ["h.test", "unknown.test"] {
        let r = curl(&["-H", &format!("Host: {url_host}"), &proxy.url("/")]).await;
        assert!(r.header("x-request-id").is_some());
        assert_eq!(r.header("x-proxy-id"), Some("test-proxy"));
        for hidden in [
            "x-server-info",
            "x-upstream-addr",
            "x-upstream-response-time",
        ] {
            assert!(r.header(hidden).is_none(), "{hidden}: {:?}", r.headers);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_never_reach_an_upstream() {
    let b = Backend::echo("b").await;
    let proxy = TestProxy::start(&service("svc", &["m.test"], &[b.addr])).await;
    let cases: [&[u8]; 7] = [
        // HTTP/1.0 without Host: nothing to route on.
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: m.test\r\nHost: m.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: m.test:abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: m test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: m.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"GET / HTTP/1.1\r\nHost: m.test\r\nBad Header: x\r\n\r\n",
        b"NOT A REQUEST\r\n\r\n",
    ];
    for case in cases {
        let resp = raw(proxy.addr, case).await;
        assert!(
            resp.starts_with("HTTP/1.1 400") || resp.starts_with("HTTP/1.0 400"),
            "{:?} -> {resp:?}",
            String::from_utf8_lossy(case)
        );
    }
    let resp = raw(
        proxy.addr,
        b"CONNECT m.test:443 HTTP/1.1\r\nHost: m.test:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    // Not an open proxy: an absolute URI for an unconfigured host goes nowhere.
    let resp = raw(
        proxy.addr,
        b"GET http://example.com/ HTTP/1.1\r\nHost: m.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert_eq!(b.hits(), 0);
    // An absolute URI for a configured host is routed like its Host.
    let resp = raw(
        proxy.addr,
        b"GET http://m.test/abs HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"path\":\"/abs\""), "{resp}");
    assert_eq!(b.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_routes_by_authority() {
    let b = Backend::echo("b").await;
    let proxy = TestProxy::start(&service("svc", &["h2.test"], &[b.addr])).await;
    let port = proxy.addr.port();
    let r = curl(&[
        "--http2-prior-knowledge",
        "--resolve",
        &format!("h2.test:{port}:127.0.0.1"),
        &format!("http://h2.test:{port}/two"),
    ])
    .await;
    assert_eq!(
        r.status_line.split_whitespace().next(),
        Some("HTTP/2"),
        "{r:?}"
    );
    assert_eq!(r.status, 200);
    assert!(is_hex32(r.header("x-request-id").unwrap()));
    assert_eq!(
        r.header("x-upstream-addr"),
        Some(b.addr.to_string().as_str())
    );
    let echo: Echo = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        echo.header("host"),
        Some(format!("h2.test:{port}").as_str())
    );
    assert_eq!(echo.path, "/two");
    assert_eq!(echo.version, "HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_in_both_directions() {
    // A backend that sends the first chunk, then waits for the test's word
    // before sending the rest: the client must get the first chunk first.
    let release = Arc::new(Notify::new());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    let r2 = release.clone();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 65536];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            .await
            .unwrap();
        r2.notified().await;
        s.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await.unwrap();
        let _ = s.read(&mut buf).await;
    });
    let proxy = TestProxy::start(&service("svc", &["s.test"], &[backend])).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: s.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("first") {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("the first chunk arrives before the backend finishes")
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(!String::from_utf8_lossy(&got).contains("second"));
    release.notify_one();
    while !String::from_utf8_lossy(&got).ends_with("0\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("second"));

    // Upload: a large chunked request body arrives whole at the backend.
    let b = Backend::echo("b").await;
    proxy.apply(&service("svc", &["s.test"], &[b.addr]));
    let big = vec![b'z'; 4 * 1024 * 1024];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    std::fs::write(&file, &big).unwrap();
    let r = curl(&[
        "-H",
        "Host: s.test",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", file.display()),
        &proxy.url("/upload"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let echo: Echo = serde_json::from_str(&r.body).unwrap();
    assert_eq!(echo.body_len, big.len());
    assert_eq!(echo.method, "POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_an_in_flight_request() {
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let slow = Backend::start("slow", move |_req| {
        let r = r.clone();
        async move {
            r.notified().await;
            http::Response::new(Full::new(Bytes::from_static(b"finished")))
        }
    })
    .await;
    let proxy = TestProxy::start(&service("svc", &["g.test"], &[slow.addr])).await;
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move { HttpClient::new(addr).get("g.test", "/").await });
    wait_until(
        Duration::from_secs(5),
        "the backend to receive the request",
        || async { slow.hits() == 1 },
    )
    .await;

    let drained = tokio::spawn(proxy.shutdown());
    // New connections are refused once the listener is closed...
    wait_until(Duration::from_secs(5), "the listener to close", || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(!drained.is_finished());
    // ...while the request in flight completes normally.
    release.notify_one();
    let (status, _, body) = in_flight.await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"finished");
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .expect("drain finishes")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_routes_without_failing_requests_in_flight() {
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let old = Backend::start("old", move |_req| {
        let r = r.clone();
        async move {
            r.notified().await;
            http::Response::new(Full::new(Bytes::from_static(b"old")))
        }
    })
    .await;
    let new = Backend::echo("new").await;
    let proxy = TestProxy::start(&service("svc", &["r.test"], &[old.addr])).await;
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move { HttpClient::new(addr).get("r.test", "/").await });
    wait_until(
        Duration::from_secs(5),
        "the old backend to receive the request",
        || async { old.hits() == 1 },
    )
    .await;
    proxy.apply(&service("svc", &["r.test"], &[new.addr]));
    // New requests use the new snapshot at once...
    let (status, _, body) = HttpClient::new(addr).get("r.test", "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("\"replica\":\"new\""));
    // ...while the one in flight finishes on the old one.
    release.notify_one();
    let (status, _, body) = in_flight.await.unwrap().unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"old"[..]));
}

/// Regression: a connection that never sends a byte (nor the h2c preface's
/// follow-up) is closed after client_header_timeout, not held forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_client_header_timeout() {
    let proxy = TestProxy::start("[proxy]\nclient_header_timeout = \"300ms\"\n").await;
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the proxy closes a silent connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
    // A keep-alive connection that goes quiet after a request is closed too.
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut got)).await;
    assert!(closed.is_ok(), "idle keep-alive connection stayed open");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 503"));
}

/// A backend that accepts a websocket upgrade and then echoes upper-cased.
async fn upgrading_backend() -> (SocketAddr, Arc<std::sync::Mutex<String>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = s2.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                *seen.lock().unwrap() = String::from_utf8_lossy(&head).to_lowercase();
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n").await.unwrap();
                let mut buf = [0u8; 1024];
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    let up: Vec<u8> = buf[..n].to_ascii_uppercase();
                    if s.write_all(&up).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Opens a websocket to `ws.test` through the proxy at `addr`: the
/// connection, and the response head, lower case.
async fn open_websocket(addr: std::net::SocketAddr) -> (TcpStream, String) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    (c, String::from_utf8_lossy(&head).to_lowercase())
}

/// Sends `msg` on a websocket to the upgrading backend and reads its echo.
async fn echoed(c: &mut TcpStream, msg: &[u8]) {
    c.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, msg.to_ascii_uppercase());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_tunnelled_both_ways() {
    let (backend, seen) = upgrading_backend().await;
    let proxy = TestProxy::start(&service("ws", &["ws.test"], &[backend])).await;
    let (mut c, head) = open_websocket(proxy.addr).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("upgrade: websocket") && head.contains("connection: upgrade"),
        "{head}"
    );
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(head.contains("x-request-id: "), "{head}");
    // The upstream got the upgrade asked for, and the websocket headers.
    let upstream_head = seen.lock().unwrap().clone();
    assert!(
        upstream_head.contains("upgrade: websocket")
            && upstream_head.contains("connection: upgrade"),
        "{upstream_head}"
    );
    assert!(
        upstream_head.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="),
        "{upstream_head}"
    );
    for msg in [&b"hello"[..], b"second frame"] {
        echoed(&mut c, msg).await;
    }
}

/// A websocket outlives the task of the connection it was upgraded on; it
/// still holds that connection's place under max_client_connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_keeps_its_place_under_max_client_connections() {
    let (backend, _) = upgrading_backend().await;
    let proxy = TestProxy::start(&format!(
        "[proxy]\nmax_client_connections = 1\n\n{}",
        service("ws", &["ws.test"], &[backend])
    ))
    .await;
    let (mut ws, head) = open_websocket(proxy.addr).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    echoed(&mut ws, b"hello").await;
    let mut other = TcpStream::connect(proxy.addr).await.unwrap();
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: ws.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), other.read(&mut byte)).await;
    assert!(early.is_err(), "served beside the websocket: {early:?}");
    echoed(&mut ws, b"still open").await;
    drop(ws);
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), other.read_to_end(&mut out))
        .await
        .expect("never served after the websocket closed")
        .unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

/// upstream_timeout measures the upstream: a slow upload is not its fault.
/// A client that stops sending its body gets 408 after client_body_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_are_not_upstream_timeouts_but_stalled_ones_get_408() {
    let b = Backend::echo("b").await;
    let proxy = TestProxy::start(&format!(
        "[proxy]\nupstream_timeout = \"300ms\"\nclient_body_timeout = \"400ms\"\n{}",
        service("up", &["up.test"], &[b.addr])
    ))
    .await;
    // Ten bytes, one every 100 ms: a second in all, three upstream timeouts.
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(
        b"POST /slow HTTP/1.1\r\nHost: up.test\r\nContent-Length: 10\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.write_all(b"x").await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"body_len\":10"), "{out}");

    // Three bytes of ten, then silence.
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(b"POST /stall HTTP/1.1\r\nHost: up.test\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out))
        .await
        .expect("answered and closed")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("client_body_timeout"), "{out}");
}
