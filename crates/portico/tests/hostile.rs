//! Hostile and broken clients (issue 15's defects), each through real
//! sockets: what the client gets, and that nothing is blamed on an
//! upstream that did nothing wrong.

use std::time::Duration;

use portico_testkit::raw::Wire;
use portico_testkit::service_toml as service;
use portico_testkit::{Backend, TestProxy};

/// A malformed chunked request body is the client's error: 400 to the
/// client and a close, the upstream not blamed (with ejection after two
/// failures, ten such requests would otherwise eject it), and the next
/// client served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_the_clients_400_not_the_upstreams_502() {
    let app = Backend::echo("app").await;
    let proxy = TestProxy::start(&format!(
        "[proxy]\noutlier_consecutive_failures = 2\n\n{}",
        service("app", &["c.test"], &[app.addr], "")
    ))
    .await;
    for body in [
        // Not a chunk size at all, as a fuzzer sent it.
        &b"hello\r\n5\r\n0\r\n\r\n"[..],
        // A chunk longer than its size says.
        b"3\r\nhello\r\n0\r\n\r\n",
        // A size that overflows.
        b"fffffffffffffffffffff\r\nx\r\n0\r\n\r\n",
    ] {
        for _ in 0..4 {
            let mut c = Wire::connect(proxy.addr).await;
            let mut req =
                b"POST /up HTTP/1.1\r\nHost: c.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            req.extend_from_slice(body);
            c.send(&req).await.unwrap();
            let r = c.read_response("POST").await.expect("an answer");
            assert_eq!(
                r.status,
                400,
                "{}: {}",
                String::from_utf8_lossy(body),
                r.body_text()
            );
            assert!(r.body_text().contains("request body"), "{}", r.body_text());
            c.closed().await.expect("closed after a 400");
        }
    }
    let snap = proxy.proxy.snapshot();
    let state = snap.pools[0].upstreams[0].health.report().state;
    assert_eq!(
        state, "unknown",
        "the upstream was blamed for the client's body"
    );
    let mut c = Wire::connect(proxy.addr).await;
    c.send("POST /up HTTP/1.1\r\nHost: c.test\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), c.read_response("POST"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
}

/// Bytes that can never start a request are answered 400 at once, on the
/// plain port as over TLS, not held until `client_header_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_400_at_once_not_a_wait_for_the_header_timeout() {
    let app = Backend::echo("app").await;
    let proxy = TestProxy::start(&service("app", &["g.test"], &[app.addr], "")).await;
    for garbage in [
        &[0xce, 0x90, 0x0d, 0xce, 0x90, 0x0d][..],
        b"GET /\x01 HTTP/1.1\r\n",
        b"\x16\x03\x01\x00",
        b"GET / HTTP/1.1\r\nHo st: x\r\n",
    ] {
        let mut c = Wire::connect(proxy.addr).await;
        c.send(garbage).await.unwrap();
        // The header timeout is 30 s; the answer must not wait for it.
        let r = tokio::time::timeout(Duration::from_secs(5), c.read_response("GET"))
            .await
            .unwrap_or_else(|_| panic!("no answer to {garbage:?}"))
            .expect("a response");
        assert_eq!(r.status, 400, "{garbage:?}");
        c.closed().await.expect("closed after a 400");
    }
    // A head that merely arrives in pieces is still served.
    let mut c = Wire::connect(proxy.addr).await;
    for piece in ["GE", "T / HT", "TP/1.1\r\nHo", "st: g.test\r\n", "\r\n"] {
        c.send(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = c.read_response("GET").await.unwrap();
    assert_eq!(r.status, 200);
}
