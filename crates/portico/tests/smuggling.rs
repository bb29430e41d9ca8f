//! How HTTP/1.x requests from clients are parsed, framed and forwarded:
//! request smuggling, desync, and agreement between the fast path (`h1`)
//! and the general path (hyper). From an independent review; the first
//! five tests failed before the fixes they came with.
//!
//! Every test drives the real proxy through real sockets, on both request
//! paths where a request could take either (`force_general_path`).

use std::time::Duration;

use portico_testkit::raw::{ok_with, RawBackend, RawRequest, RawResponse, Wire};
use portico_testkit::service_toml as service;
use portico_testkit::TestProxy;

const HOST: &str = "s.test";

/// An upstream that answers every request with what it received (method,
/// target, body), so a test can see the framing it parsed.
async fn echo_upstream() -> RawBackend {
    RawBackend::answering(|req| {
        ok_with(
            format!(
                "{} {} body={:?}",
                req.method,
                req.target,
                String::from_utf8_lossy(&req.body)
            )
            .as_bytes(),
            "",
        )
    })
    .await
}

async fn proxy_to(upstream: &RawBackend, settings: &str) -> TestProxy {
    TestProxy::start(&format!(
        "[proxy]\n{settings}\n\n{}",
        service("app", &[HOST], &[upstream.addr], "")
    ))
    .await
}

/// Sends `bytes` on a new connection and reads one response to `method`.
async fn one(proxy: &TestProxy, bytes: impl AsRef<[u8]>, method: &str) -> (Wire, RawResponse) {
    let mut c = Wire::connect(proxy.addr).await;
    c.send(bytes).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), c.read_response(method))
        .await
        .expect("an answer within 5 s")
        .expect("a response");
    (c, r)
}

/// The requests the upstream got since `before` of them. Read once the
/// client has its response: a forwarded request was recorded before the
/// upstream answered it.
fn since(b: &RawBackend, before: usize) -> Vec<RawRequest> {
    b.requests()[before..].to_vec()
}

fn path_name(general: bool) -> &'static str {
    if general {
        "general path"
    } else {
        "fast path"
    }
}

/// `Transfer-Encoding: gzip, chunked` (any coding before the final
/// `chunked`), or `chunked` applied twice: hyper decodes only the last
/// chunked, and Transfer-Encoding is hop-by-hop, so the upstream got the
/// rest of the coding as a plain body. RFC 9112 §6.1: a server answers 501
/// to a transfer coding it does not understand, and chunked is never
/// applied twice (400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coding_other_than_one_chunked_is_refused() {
    let b = echo_upstream().await;
    let proxy = proxy_to(&b, "").await;
    // Transfer-Encoding always sends a request to the general path (hyper).
    for (codings, status) in [
        ("Transfer-Encoding: gzip, chunked", 501),
        ("Transfer-Encoding: deflate, chunked", 501),
        (
            "Transfer-Encoding: x-custom\r\nTransfer-Encoding: chunked",
            501,
        ),
        ("Transfer-Encoding: chunked, chunked", 400),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            400,
        ),
    ] {
        let before = b.requests().len();
        // "hello" stands for bytes the client coded; what matters is what
        // the upstream is told about them.
        let (_c, r) = one(
            &proxy,
            format!(
                "POST /up HTTP/1.1\r\nHost: {HOST}\r\n{codings}\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n"
            ),
            "POST",
        )
        .await;
        let ups = since(&b, before);
        assert!(
            r.status == status && ups.is_empty(),
            "`{codings}` answered {} and the upstream got {:?}",
            r.status,
            ups.iter().map(|u| u.head.text()).collect::<Vec<_>>()
        );
    }
    // CONNECT is refused as CONNECT, whatever its codings.
    let (_c, r) = one(
        &proxy,
        format!("CONNECT /x HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        "CONNECT",
    )
    .await;
    assert_eq!(r.status, 405);
}

/// Header names with underscores are dropped on both paths, as
/// Interlock's nginx drops them (`underscores_in_headers off`,
/// `ignore_invalid_headers on`, the defaults) because upstreams behind a
/// CGI-style interface (PHP-FPM/FastCGI, WSGI, Rack) map `-` and `_` to the
/// same variable: a client's `X_Real_IP` or `X_Forwarded_For` then competes
/// with (and, by order, may override) the `X-Real-IP`/`X-Forwarded-For`
/// the proxy sets, and `Transfer_Encoding`/`Content_Length` reach a server
/// that may frame by them while Portico treated the request as body-less.
/// RFC 9110 §5.1 allows `_` in a field name: this is defence in depth, and
/// what Interlock's users' upstreams are used to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscored_twins_of_framing_and_forwarding_headers_are_dropped() {
    let b = echo_upstream().await;
    let proxy = proxy_to(&b, "").await;
    for general in [false, true] {
        proxy.proxy.force_general_path(general);
        let before = b.requests().len();
        let (_c, r) = one(
            &proxy,
            format!(
                "GET /u HTTP/1.1\r\nHost: {HOST}\r\nX_Real_IP: 6.6.6.6\r\nX_Forwarded_For: 6.6.6.6\r\n\
                 Transfer_Encoding: chunked\r\nContent_Length: 40\r\n\r\n"
            ),
            "GET",
        )
        .await;
        assert_eq!(r.status, 200);
        let ups = since(&b, before);
        assert_eq!(ups.len(), 1);
        let leaked: Vec<&str> = ups[0]
            .head
            .headers
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|n| n.contains('_'))
            .collect();
        assert!(
            leaked.is_empty(),
            "{}: the upstream got {leaked:?}:\n{}",
            path_name(general),
            ups[0].head.text()
        );
    }
}

/// `CONNECT <health_uri>` was answered 200, the health answer. A 2xx to
/// CONNECT means "the tunnel is established" (RFC 9110 §9.3.6): an
/// HTTP-mode proxy in front of Portico that forwards CONNECT would take it
/// as one. Every CONNECT is 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_the_health_uri_is_refused_like_any_connect() {
    let b = echo_upstream().await;
    let proxy = proxy_to(&b, "health_uri = \"/healthz\"").await;
    let (_c, r) = one(
        &proxy,
        format!("CONNECT /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
        "CONNECT",
    )
    .await;
    assert!(
        r.status == 405,
        "CONNECT /healthz got {}:\n{}",
        r.status,
        r.head.text()
    );
}

/// An HTTP/1.1 request in absolute form without any Host header was
/// forwarded (with a Host made from the target's authority). RFC 9112 §3.2: "A server MUST respond with a 400
/// (Bad Request) status code to any HTTP/1.1 request message that lacks a
/// Host header field". (With a Host that differs from the target's
/// authority, using the authority is right: RFC 9112 §3.2.2.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http11_absolute_form_request_without_host_is_refused() {
    let b = echo_upstream().await;
    let proxy = proxy_to(&b, "").await;
    let before = b.requests().len();
    let (_c, r) = one(
        &proxy,
        format!("GET http://{HOST}/abs HTTP/1.1\r\n\r\n"),
        "GET",
    )
    .await;
    let ups = since(&b, before);
    assert!(
        r.status == 400 && ups.is_empty(),
        "answered {}, upstream got {:?}",
        r.status,
        ups.iter().map(|u| u.head.text()).collect::<Vec<_>>()
    );
}

/// A `Connection` value with a non-ASCII byte: the fast path split it
/// byte-wise and stripped the headers it lists; the general path skipped
/// the whole value, so the listed header reached the upstream there. Both
/// now strip it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_strip_what_a_connection_value_with_obs_text_lists() {
    let b = echo_upstream().await;
    let proxy = proxy_to(&b, "").await;
    let mut seen = Vec::new();
    for general in [false, true] {
        proxy.proxy.force_general_path(general);
        let before = b.requests().len();
        let mut req =
            format!("GET /c HTTP/1.1\r\nHost: {HOST}\r\nX-Secret: 1\r\nConnection: x-secret, ")
                .into_bytes();
        req.extend_from_slice(b"\xe9t\xe9\r\n\r\n");
        let (_c, r) = one(&proxy, req, "GET").await;
        assert_eq!(r.status, 200);
        let ups = since(&b, before);
        assert_eq!(ups.len(), 1);
        seen.push((path_name(general), ups[0].head.has("x-secret")));
    }
    assert!(
        seen.iter().all(|(_, has)| !has),
        "X-Secret, listed in Connection, reached the upstream: {seen:?}"
    );
}

/// Malformed heads are refused (400, close) on both paths, never forwarded:
/// the fast path hands them to hyper before consuming anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_get_heads_are_refused_on_both_paths() {
    let b = echo_upstream().await;
    let proxy = proxy_to(&b, "").await;
    let bad: &[&[u8]] = &[
        // obs-fold
        b"GET / HTTP/1.1\r\nHost: s.test\r\nX-A: a\r\n b\r\n\r\n",
        // whitespace before the colon
        b"GET / HTTP/1.1\r\nHost: s.test\r\nContent-Length : 5\r\n\r\nhello",
        // NUL, bare CR in values
        b"GET / HTTP/1.1\r\nHost: s.test\r\nX-A: a\0b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: s.test\r\nX-A: a\rb\r\n\r\n",
        // differing and list Content-Length
        b"GET / HTTP/1.1\r\nHost: s.test\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello",
        b"GET / HTTP/1.1\r\nHost: s.test\r\nContent-Length: 0, 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: s.test\r\nContent-Length: +0\r\n\r\n",
        // a coding other than chunked last; HTTP/1.0 with TE
        b"GET / HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // two Host lines
        b"GET / HTTP/1.1\r\nHost: s.test\r\nHost: other.test\r\n\r\n",
        // invalid chunk framing, overflowing size, bare LF in a chunk line
        b"POST / HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
        b"POST / HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n",
    ];
    for general in [false, true] {
        proxy.proxy.force_general_path(general);
        for req in bad {
            let before = b.requests().len();
            let method = if req.starts_with(b"POST") {
                "POST"
            } else {
                "GET"
            };
            let (mut c, r) = one(&proxy, req, method).await;
            assert_eq!(
                r.status,
                400,
                "{}: {:?}",
                path_name(general),
                String::from_utf8_lossy(req)
            );
            c.closed().await.unwrap();
            let ups = since(&b, before);
            // A chunked body that breaks part-way may have had its head
            // streamed upstream; it must never complete as a request.
            assert!(
                ups.is_empty(),
                "{}: {:?} reached the upstream",
                path_name(general),
                String::from_utf8_lossy(req)
            );
        }
    }
}

/// What the upstream gets is framed as the client framed it, whatever the
/// path: a GET with a body, both CL and TE (chunked wins, CL dropped,
/// connection closed), `Content-Length: 0` followed by pipelined bytes,
/// and an upgrade the upstream declines (the connection stays HTTP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_after_bodies_are_framed_the_same_upstream() {
    let b = echo_upstream().await;
    let proxy = proxy_to(&b, "").await;
    let next = format!("GET /next HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    for general in [false, true] {
        proxy.proxy.force_general_path(general);
        for (first, body, closes) in [
            (
                format!("GET /a HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n\r\nhello"),
                "hello",
                false,
            ),
            (
                format!("GET /a HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\n\r\n"),
                "",
                false,
            ),
            (
                format!(
                    "GET /a HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n\
                     5\r\nhello\r\n0\r\n\r\n"
                ),
                "hello",
                true,
            ),
            (
                format!(
                    "GET /a HTTP/1.1\r\nHost: {HOST}\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
                ),
                "",
                false,
            ),
        ] {
            let before = b.requests().len();
            let mut c = Wire::connect(proxy.addr).await;
            c.send(format!("{first}{next}")).await.unwrap();
            let r = c.read_response("GET").await.unwrap();
            assert_eq!(r.status, 200, "{first:?}");
            if closes {
                assert!(r.head.connection_has("close"), "{first:?}");
                c.closed().await.unwrap();
            } else {
                let r2 = c.read_response("GET").await.unwrap();
                assert_eq!(r2.body_text(), "GET /next body=\"\"", "{first:?}");
            }
            let ups = since(&b, before);
            assert_eq!(ups.len(), if closes { 1 } else { 2 }, "{first:?}");
            assert_eq!(ups[0].target, "/a");
            assert_eq!(ups[0].body, body.as_bytes(), "{first:?}");
            assert!(
                !(ups[0].head.has("content-length") && ups[0].head.has("transfer-encoding")),
                "{}",
                ups[0].head.text()
            );
        }
    }
}
