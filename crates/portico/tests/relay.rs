//! HTTP/2 clients (real curl, h2c by prior knowledge) to HTTP/1.1 upstreams
//! through the relay: a body-less GET or HEAD that hyper's server parsed is
//! exchanged as bytes on a pooled upstream connection, and its response
//! body decoded from the upstream's framing into HTTP/2 DATA frames. The
//! HTTP/1.1 side of the same code runs in the wire suite (`http1_general`
//! sends every request through hyper's server).

use portico_testkit::raw::RawBackend;
use portico_testkit::{curl, service_toml, CurlResponse, TestProxy};

const HOST: &str = "r.test";

async fn h2(proxy: &TestProxy, args: &[&str], path: &str) -> CurlResponse {
    let port = proxy.addr.port();
    let resolve = format!("{HOST}:{port}:127.0.0.1");
    let url = format!("http://{HOST}:{port}{path}");
    let mut all = vec!["--http2-prior-knowledge", "--resolve", &resolve];
    all.extend_from_slice(args);
    all.push(&url);
    curl(&all).await
}

/// An upstream that answers each path its own way, on one keep-alive
/// connection as long as the proxy keeps it.
async fn upstream() -> RawBackend {
    RawBackend::start(|mut conn| async move {
        while let Some(req) = conn.next_request().await {
            let answer: &[u8] = match req.target.as_str() {
                // Chunks split across writes, an extension, and trailers.
                "/chunked" => {
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
                    Trailer: X-Sum\r\nX-Kept: yes\r\n\r\n\
                    5;ext=1\r\nhello\r\n2\r\n, \r\n5\r\nworld\r\n0\r\nX-Sum: 12\r\n\r\n"
                }
                "/length" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Kept: yes\r\n\r\nhello",
                "/empty" => b"HTTP/1.1 204 No Content\r\nX-Kept: yes\r\n\r\n",
                "/short" => {
                    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".as_slice())
                        .await;
                    conn.send([b'x'; 50]).await;
                    return;
                }
                "/bad-chunk" => {
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
                }
                _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            };
            if req.method == "HEAD" && req.target == "/length" {
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".as_slice())
                    .await;
                continue;
            }
            conn.send(answer).await;
            if req.target == "/bad-chunk" {
                // The connection stays open: only the framing tells.
                std::future::pending::<()>().await;
            }
        }
    })
    .await
}

/// An upstream that answers every request "ok", keeping its connections.
async fn ok_upstream() -> RawBackend {
    RawBackend::start(|mut conn| async move {
        conn.serve(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_gets_decoded_bodies_over_one_pooled_upstream_connection() {
    let b = upstream().await;
    let proxy = TestProxy::start(&service_toml("svc", &[HOST], &[b.addr], "")).await;

    let r = h2(&proxy, &[], "/chunked").await;
    assert_eq!(r.exit, 0, "{r:?}");
    assert!(r.status_line.starts_with("HTTP/2 200"), "{r:?}");
    assert_eq!(r.body, "hello, world", "chunk framing decoded: {r:?}");
    assert_eq!(r.header("x-kept"), Some("yes"));
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("trailer"), None);
    assert!(r.header("x-request-id").is_some(), "{r:?}");
    assert_eq!(
        r.header("x-upstream-addr"),
        Some(b.addr.to_string().as_str())
    );

    let r = h2(&proxy, &[], "/length").await;
    assert_eq!(
        (r.exit, r.status, r.body.as_str()),
        (0, 200, "hello"),
        "{r:?}"
    );
    assert_eq!(r.header("content-length"), Some("5"));

    let r = h2(&proxy, &["-I"], "/length").await;
    assert_eq!((r.exit, r.status, r.body.as_str()), (0, 200, ""), "{r:?}");
    assert_eq!(
        r.header("content-length"),
        Some("5"),
        "HEAD keeps the length"
    );

    let r = h2(&proxy, &[], "/empty").await;
    assert_eq!((r.exit, r.status, r.body.as_str()), (0, 204, ""), "{r:?}");
    assert_eq!(r.header("x-kept"), Some("yes"));

    // Every exchange ended as its framing said: one upstream connection
    // served them all, one after the other.
    assert_eq!(b.connections(), 1, "the upstream connection is reused");
    let seen: Vec<String> = b.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(seen, ["/chunked", "/length", "/length", "/empty"]);
    for req in b.requests() {
        assert_eq!(req.version, "HTTP/1.1");
        assert_eq!(
            req.header("host"),
            Some(format!("{HOST}:{}", proxy.addr.port()).as_str())
        );
        assert!(req.header("x-request-id").is_some());
        assert_eq!(req.header("x-forwarded-proto"), Some("http"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upstream_body_resets_the_stream_and_its_connection_is_dropped() {
    let b = upstream().await;
    let proxy = TestProxy::start(&service_toml("svc", &[HOST], &[b.addr], "")).await;

    // The head went out before the body broke: the client sees a 200 whose
    // stream is reset, not a complete response.
    for path in ["/short", "/bad-chunk"] {
        let r = h2(&proxy, &[], path).await;
        assert_ne!(r.exit, 0, "{path}: the stream must not end cleanly: {r:?}");
        assert!(r.body.len() < 100, "{path}: {r:?}");
    }
    // Neither connection went back to the pool: the next request opens a
    // third, and is served whole.
    let r = h2(&proxy, &[], "/length").await;
    assert_eq!(
        (r.exit, r.status, r.body.as_str()),
        (0, 200, "hello"),
        "{r:?}"
    );
    assert_eq!(b.connections(), 3);
}

/// At `max_connections_per_upstream`, a connection hyper's client left
/// idle (after a request with a body) makes room for a relayed request
/// rather than making it wait out `connect_timeout` for a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_of_hyper_s_client_makes_room_at_the_connection_cap() {
    let b = ok_upstream().await;
    let proxy = TestProxy::start(&format!(
        "[proxy]\nmax_connections_per_upstream = 1\nconnect_timeout = \"1s\"\n{}",
        service_toml("svc", &[HOST], &[b.addr], "")
    ))
    .await;
    // A POST goes through hyper's client, whose connection stays idle.
    let r = h2(&proxy, &["-d", "payload"], "/post").await;
    assert_eq!((r.exit, r.status), (0, 200), "{r:?}");
    // Without room made, the GET waits connect_timeout for the slot, then
    // gets a 502 ("all 1 connections to this upstream are busy").
    let r = h2(&proxy, &[], "/get").await;
    assert_eq!((r.exit, r.status, r.body.as_str()), (0, 200, "ok"), "{r:?}");
    assert_eq!(
        b.connections(),
        2,
        "the idle one was closed for the new one"
    );
}

/// HTTP/2 lets a client split `Cookie` into one field per cookie; the
/// HTTP/1.1 upstream gets them as one field, joined with "; " (RFC 9113
/// §8.2.3), on the relay and on hyper's client alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_split_by_an_h2_client_reach_the_upstream_as_one_field() {
    let b = ok_upstream().await;
    let proxy = TestProxy::start(&service_toml("svc", &[HOST], &[b.addr], "")).await;
    let cookies = ["-H", "Cookie: a=1", "-H", "Cookie: b=2"];
    let r = h2(&proxy, &cookies, "/get").await;
    assert_eq!((r.exit, r.status), (0, 200), "{r:?}");
    let post = [&cookies[..], &["-d", "x"]].concat();
    let r = h2(&proxy, &post, "/post").await;
    assert_eq!((r.exit, r.status), (0, 200), "{r:?}");
    let requests = b.requests();
    assert_eq!(requests.len(), 2);
    for req in requests {
        assert_eq!(
            req.head.all("cookie"),
            ["a=1; b=2"],
            "{} {}",
            req.method,
            req.target
        );
    }
}

/// A chunked body whose last chunk arrives with its final data ends the
/// client's stream on that DATA frame (END_STREAM set on it, no empty frame
/// after), as nghttp's frame log shows; the log also shows which response
/// headers were sent never indexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_ends_the_stream_with_its_last_data() {
    let b = upstream().await;
    let proxy = TestProxy::start(&service_toml("svc", &[HOST], &[b.addr], "")).await;
    let out = tokio::process::Command::new("nghttp")
        .args(["-nv", "-H", &format!(":authority: {HOST}")])
        .arg(format!("http://127.0.0.1:{}/chunked", proxy.addr.port()))
        .output()
        .await
        .expect("nghttp (Debian's nghttp2-client) must be installed");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}");
    let data: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("recv DATA frame"))
        .collect();
    assert!(!data.is_empty(), "{log}");
    let last = data.last().unwrap();
    assert!(last.contains("flags=0x01"), "END_STREAM on the last: {log}");
    assert!(
        !last.contains("length=0,"),
        "an empty DATA frame ended it: {log}"
    );
    assert_eq!(b.connections(), 1);
    // Values no other response repeats are sent never indexed (HPACK).
    for (name, sensitive) in [
        ("x-request-id", true),
        ("x-upstream-response-time", true),
        ("x-proxy-id", false),
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!(") {name}:")))
            .unwrap_or_else(|| panic!("no {name}: {log}"));
        assert_eq!(line.contains("sensitive"), sensitive, "{line}");
    }
}
