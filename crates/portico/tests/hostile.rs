//! Hostile and broken clients (issue 15's defects), each through real
//! sockets: what the client gets, and that nothing is blamed on an
//! upstream that did nothing wrong.

use std::sync::Arc;
use std::time::Duration;

use portico_testkit::raw::Wire;
use portico_testkit::service_toml as service;
use portico_testkit::{Backend, TestCa, TestProxy};
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// A TLS connection to the proxy's HTTPS listener offering `alpn`, on which
/// `bytes` are sent; returns what came back before the proxy closed (within
/// a bound), and the protocol agreed.
async fn tls_exchange(
    proxy: &TestProxy,
    ca: &TestCa,
    host: &str,
    alpn: &[&[u8]],
    bytes: &[u8],
) -> (Option<Vec<u8>>, Vec<u8>) {
    tls_exchange_sni(proxy, ca, host, alpn, bytes, true).await
}

/// [`tls_exchange`], with or without SNI (`host` is still the name the
/// certificate is verified for).
async fn tls_exchange_sni(
    proxy: &TestProxy,
    ca: &TestCa,
    host: &str,
    alpn: &[&[u8]],
    bytes: &[u8],
    sni: bool,
) -> (Option<Vec<u8>>, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.enable_sni = sni;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(proxy.https_addr.unwrap())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS");
    let agreed = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    tls.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out))
        .await
        .expect("the proxy closed the connection");
    (agreed, out)
}

/// HTTP/2 frames in `bytes`: (type, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        let end = (9 + len).min(bytes.len());
        out.push((bytes[3], bytes[9..end].to_vec()));
        bytes = &bytes[end..];
    }
    out
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// ALPN is honoured: after `h2` only HTTP/2 is spoken (an HTTP/1.1
/// request is an invalid preface: GOAWAY with PROTOCOL_ERROR), after
/// `http/1.1` or no ALPN only HTTP/1.x (the HTTP/2 preface is a bad
/// request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_decides_the_protocol_on_tls_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Portico Test CA");
    let (cert, key) = ca.issue(&["a.test"]).write(dir.path(), "a");
    let app = Backend::echo("app").await;
    let proxy = TestProxy::start(&format!(
        "[proxy]\nhttps_listen = \"127.0.0.1:0\"\n\n{}",
        service(
            "app",
            &["a.test"],
            &[app.addr],
            &format!(
                "tls_cert = {:?}\ntls_key = {:?}",
                cert.display().to_string(),
                key.display().to_string()
            )
        )
    ))
    .await;
    let http1 = b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";

    let (agreed, out) = tls_exchange(&proxy, &ca, "a.test", &[b"h2"], http1).await;
    assert_eq!(agreed.as_deref(), Some(&b"h2"[..]));
    assert!(
        !out.starts_with(b"HTTP/"),
        "HTTP/1.1 spoken after ALPN h2: {}",
        String::from_utf8_lossy(&out)
    );
    let goaway = frames(&out)
        .into_iter()
        .find(|(t, _)| *t == 0x7)
        .unwrap_or_else(|| panic!("no GOAWAY in {out:?}"));
    assert_eq!(&goaway.1[4..8], &[0, 0, 0, 1], "GOAWAY(PROTOCOL_ERROR)");

    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let mut h2 = H2_PREFACE.to_vec();
        h2.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // an empty SETTINGS frame
        let (agreed, out) = tls_exchange(&proxy, &ca, "a.test", alpn, &h2).await;
        assert_ne!(agreed.as_deref(), Some(&b"h2"[..]));
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400"), "ALPN {alpn:?}: {text:?}");
        // And HTTP/1.1 is served there.
        let (_, out) = tls_exchange(&proxy, &ca, "a.test", alpn, http1).await;
        assert!(
            out.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
}

/// A request head far over `max_header_bytes` gets 431, and the client
/// reads it, over TLS as over plain HTTP: the proxy answers, then keeps
/// reading (and discarding) for a bounded while before it closes, so the
/// client's unsent bytes don't turn the close into a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_head_is_answered_431_and_read_over_tls_too() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Portico Test CA");
    let (cert, key) = ca.issue(&["a.test"]).write(dir.path(), "a");
    let app = Backend::echo("app").await;
    let proxy = TestProxy::start(&format!(
        "[proxy]\nhttps_listen = \"127.0.0.1:0\"\n\n{}",
        service(
            "app",
            &["a.test"],
            &[app.addr],
            &format!(
                "tls_cert = {:?}\ntls_key = {:?}",
                cert.display().to_string(),
                key.display().to_string()
            )
        )
    ))
    .await;
    let mut head = b"GET / HTTP/1.1\r\nHost: a.test\r\n".to_vec();
    while head.len() < 4_000_000 {
        head.extend_from_slice(b"X-Filler: ");
        head.extend_from_slice(&[b'a'; 1000]);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let (_, out) = tls_exchange(&proxy, &ca, "a.test", alpn, &head).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 431"), "ALPN {alpn:?}: {text:?}");
    }
    // And on the plain port.
    let mut c = Wire::connect(proxy.addr).await;
    let _ = c.send(&head).await;
    let r = c.read_response("GET").await.expect("a response");
    assert_eq!(r.status, 431);
}

/// What `openssl s_client` agrees with the HTTPS listener: the cipher
/// suite, or `None` when the handshake fails.
async fn negotiated(proxy: &TestProxy, args: &[&str]) -> Option<String> {
    let connect = format!("127.0.0.1:{}", proxy.https_port());
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("openssl")
            .args(["s_client", "-connect", &connect, "-servername", "a.test"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("openssl s_client ended")
    .expect("openssl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let cipher = text
        .lines()
        .find_map(|l| l.split_once("Cipher is ").map(|(_, c)| c.trim().to_owned()))?;
    (cipher != "(NONE)").then_some(cipher)
}

/// The HTTPS listener picks the cipher suite by its own order (Mozilla's
/// intermediate profile by default), refuses suites without forward
/// secrecy, and with `tls_profile = "modern"` speaks TLS 1.3 only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_picks_its_own_cipher_order_under_its_tls_profile() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Portico Test CA");
    let (cert, key) = ca.issue(&["a.test"]).write(dir.path(), "a");
    let app = Backend::echo("app").await;
    let config = |profile: &str| {
        format!(
            "[proxy]\nhttps_listen = \"127.0.0.1:0\"\n{profile}\n{}",
            service(
                "app",
                &["a.test"],
                &[app.addr],
                &format!(
                    "tls_cert = {:?}\ntls_key = {:?}",
                    cert.display().to_string(),
                    key.display().to_string()
                )
            )
        )
    };
    let proxy = TestProxy::start(&config("")).await;
    // The client lists ChaCha20 first; the server's first choice wins.
    let tls12 = negotiated(
        &proxy,
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256",
        ],
    )
    .await;
    assert_eq!(tls12.as_deref(), Some("ECDHE-ECDSA-AES128-GCM-SHA256"));
    let tls13 = negotiated(
        &proxy,
        &[
            "-tls1_3",
            "-ciphersuites",
            "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
        ],
    )
    .await;
    assert_eq!(tls13.as_deref(), Some("TLS_AES_128_GCM_SHA256"));
    // A client that offers only CBC suites gets no handshake.
    assert_eq!(
        negotiated(
            &proxy,
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA:AES128-SHA"]
        )
        .await,
        None
    );

    proxy.apply(&config("tls_profile = \"modern\""));
    assert_eq!(
        negotiated(&proxy, &["-tls1_2"]).await,
        None,
        "TLS 1.2 under modern"
    );
    assert_eq!(
        negotiated(&proxy, &["-tls1_3"]).await.as_deref(),
        Some("TLS_AES_128_GCM_SHA256")
    );
}

/// A client without SNI gets the default certificate; a site with a
/// certificate of its own is served on that connection only if the default
/// certificate covers its name too, else 421.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sni_a_host_the_default_certificate_covers_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Portico Test CA");
    let (dc, dk) = ca.issue(&["*.app.test"]).write(dir.path(), "default");
    let (ac, ak) = ca.issue(&["a.app.test"]).write(dir.path(), "a");
    let (oc, ok) = ca.issue(&["other.test"]).write(dir.path(), "other");
    let app = Backend::echo("app").await;
    let files = |c: &std::path::Path, k: &std::path::Path| {
        format!(
            "tls_cert = {:?}\ntls_key = {:?}",
            c.display().to_string(),
            k.display().to_string()
        )
    };
    let proxy = TestProxy::start(&format!(
        "[proxy]\nhttps_listen = \"127.0.0.1:0\"\ndefault_tls_cert = {:?}\ndefault_tls_key = {:?}\n\n{}{}",
        dc.display().to_string(),
        dk.display().to_string(),
        service("a", &["a.app.test"], &[app.addr], &files(&ac, &ak)),
        service("other", &["other.test"], &[app.addr], &files(&oc, &ok)),
    ))
    .await;
    let ask = |host: &str| {
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
    };
    let (_, out) = tls_exchange_sni(
        &proxy,
        &ca,
        "a.app.test",
        &[b"http/1.1"],
        &ask("a.app.test"),
        false,
    )
    .await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let (_, out) = tls_exchange_sni(
        &proxy,
        &ca,
        "a.app.test",
        &[b"http/1.1"],
        &ask("other.test"),
        false,
    )
    .await;
    assert!(
        out.starts_with(b"HTTP/1.1 421"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

/// Sends a POST head declaring `len` bytes, then trickles one byte every
/// `every` until the proxy answers or closes; returns the status (if any)
/// and when the proxy ended it.
async fn trickle(
    addr: std::net::SocketAddr,
    from: std::net::IpAddr,
    len: usize,
    every: Duration,
) -> (Option<u16>, std::time::Instant) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(
            format!("POST /up HTTP/1.1\r\nHost: s.test\r\nContent-Length: {len}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    loop {
        let mut buf = [0u8; 1024];
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(every) => {
                if stream.write_all(b"x").await.is_err() {
                    // Closed on us; read what was answered.
                    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut answer)).await;
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|s| s.parse().ok());
    (status, std::time::Instant::now())
}

/// Clients trickling their request bodies (a byte every half second, far
/// under the minimum rate) are cut with 408 once the grace period is over,
/// all 300 of them within the bound, while a normal client is served
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_request_bodies_are_cut_while_others_are_served() {
    let app = Backend::echo("app").await;
    let proxy = TestProxy::start(&format!(
        "[proxy]\nclient_body_min_rate = \"1KiB/s\"\nclient_body_grace = \"2s\"\nmax_bodies_per_client = 1000\n\n{}",
        service("app", &["s.test"], &[app.addr], "")
    ))
    .await;
    let started = std::time::Instant::now();
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let addr = proxy.addr;
        slow.spawn(trickle(
            addr,
            [127, 0, 0, 1].into(),
            100_000,
            Duration::from_millis(500),
        ));
    }
    // Meanwhile a normal client's uploads go through.
    let mut c = Wire::connect(proxy.addr).await;
    for _ in 0..20 {
        c.send("POST /ok HTTP/1.1\r\nHost: s.test\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .unwrap();
        let r = c.read_response("POST").await.unwrap();
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut cut = 0;
    let mut latest = started;
    while let Some(r) = slow.join_next().await {
        let (status, at) = r.unwrap();
        assert_eq!(status, Some(408));
        cut += 1;
        latest = latest.max(at);
    }
    assert_eq!(cut, 300);
    // The grace period, plus room for a loaded machine: not the 60 s
    // client_body_timeout a byte every half second would never reach.
    let took = latest.duration_since(started);
    assert!(
        took < Duration::from_secs(8),
        "the last trickler was cut after {took:?}"
    );
}

/// One client address may send only `max_bodies_per_client` bodies at once:
/// the next is refused with 429, another address is not affected, and the
/// cap frees as bodies end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_may_send_only_so_many_bodies_at_once() {
    let app = Backend::echo("app").await;
    let proxy = TestProxy::start(&format!(
        "[proxy]\nmax_bodies_per_client = 3\nclient_body_min_rate = \"off\"\n\n{}",
        service("app", &["s.test"], &[app.addr], "")
    ))
    .await;
    let post = "POST /up HTTP/1.1\r\nHost: s.test\r\nContent-Length: 4\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Wire::connect(proxy.addr).await;
        c.send(post).await.unwrap();
        held.push(c);
    }
    // Wait until all three are forwarded (each holds its place from then
    // on); a fourth sent earlier could itself take the third place.
    let start = std::time::Instant::now();
    while app.hits() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the held uploads were not forwarded: {} of 3",
            app.hits()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = Wire::connect(proxy.addr).await;
    c.send(post).await.unwrap();
    c.send("body").await.unwrap();
    let refused = c.read_response("POST").await.unwrap();
    assert_eq!(refused.status, 429, "{}", refused.body_text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(
        refused.body_text().contains("max_bodies_per_client"),
        "{}",
        refused.body_text()
    );
    // Another address is not affected.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = Wire::new(socket.connect(proxy.addr).await.unwrap());
    other.send(post).await.unwrap();
    other.send("body").await.unwrap();
    assert_eq!(other.read_response("POST").await.unwrap().status, 200);
    // The held bodies end; the address may send again.
    for c in &mut held {
        c.send("body").await.unwrap();
        assert_eq!(c.read_response("POST").await.unwrap().status, 200);
    }
    let mut c = Wire::connect(proxy.addr).await;
    c.send(post).await.unwrap();
    c.send("body").await.unwrap();
    assert_eq!(c.read_response("POST").await.unwrap().status, 200);
}

/// An HTTP/2 frame as sent: its 9-byte head, then `payload`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = u32::try_from(payload.len()).unwrap().to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HEADERS with END_STREAM and END_HEADERS.
fn h2_request(stream: u32, block: &[u8]) -> Vec<u8> {
    h2_frame(0x1, 0x1 | 0x4, stream, block)
}

/// HPACK for a field with a new name, no Huffman: `kind` 0x00 is literal
/// without indexing, 0x40 literal with incremental indexing.
fn hpack_literal(kind: u8, name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut b = vec![kind, u8::try_from(name.len()).unwrap()];
    b.extend_from_slice(name);
    b.push(u8::try_from(value.len()).unwrap());
    b.extend_from_slice(value);
    b
}

/// HPACK for `GET http://{host}/`: the static table's `:method: GET`,
/// `:scheme: http`, `:path: /`, and `:authority` by name index, not indexed
/// (so the dynamic table holds only what a test adds).
fn hpack_get(host: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01, u8::try_from(host.len()).unwrap()];
    b.extend_from_slice(host.as_bytes());
    b
}

/// A received HTTP/2 frame.
#[derive(Debug)]
struct H2Frame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl H2Frame {
    /// RST_STREAM on `stream`, with its error code.
    fn reset(&self, stream: u32) -> Option<u32> {
        (self.kind == 0x3 && self.stream == stream)
            .then(|| u32::from_be_bytes(self.payload[..4].try_into().unwrap()))
    }

    /// HEADERS on `stream` opening with `:status: 200` (static index 8).
    fn ok(&self, stream: u32) -> bool {
        self.kind == 0x1 && self.stream == stream && self.payload.first() == Some(&0x88)
    }
}

/// Opens an h2c connection (prior knowledge) to `addr`, exchanges SETTINGS,
/// sends `frames`, then reads until `done` holds for what came back, a
/// GOAWAY arrives, the proxy closes, or 5 s pass.
async fn h2c_exchange(
    addr: std::net::SocketAddr,
    frames: &[Vec<u8>],
    done: impl Fn(&[H2Frame]) -> bool,
) -> Vec<H2Frame> {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(H2_PREFACE).await.unwrap();
    c.write_all(&h2_frame(0x4, 0, 0, &[])).await.unwrap();
    let mut got = Vec::new();
    let mut buf = Vec::new();
    let mut sent = false;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            while buf.len() >= 9 {
                let len =
                    usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                let frame: Vec<u8> = buf.drain(..9 + len).collect();
                let f = H2Frame {
                    kind: frame[3],
                    stream: u32::from_be_bytes(frame[5..9].try_into().unwrap()) & 0x7fff_ffff,
                    payload: frame[9..].to_vec(),
                };
                if f.kind == 0x4 && frame[4] & 0x1 == 0 && !sent {
                    // The server's SETTINGS: acknowledge, then ask.
                    c.write_all(&h2_frame(0x4, 0x1, 0, &[])).await.unwrap();
                    for frame in frames {
                        c.write_all(frame).await.unwrap();
                    }
                    sent = true;
                }
                let goaway = f.kind == 0x7;
                got.push(f);
                if goaway || done(&got) {
                    return;
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match c.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    got
}

/// A header field HTTP forbids in an HTTP/2 request (CR, LF or NUL in its
/// value, an uppercase name) makes that request malformed (RFC 9113
/// §8.2.1): its stream is reset with PROTOCOL_ERROR, and the connection and
/// its other streams go on. Also when the field is followed by a
/// CONTINUATION, whole or cut in two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_byte_in_an_h2_header_resets_its_stream_not_the_connection() {
    let app = Backend::echo("app").await;
    let proxy = TestProxy::start(&service("app", &["h.test"], &[app.addr], "")).await;
    let get = hpack_get("h.test");
    let with = |name: &[u8], value: &[u8]| [&get[..], &hpack_literal(0, name, value)].concat();
    let mut cases = Vec::new();
    for (name, value) in [
        (&b"x-bad"[..], &b"a\r\nb"[..]),
        (b"x-bad", b"a\nb"),
        (b"x-bad", b"a\0b"),
        (b"X-Bad", b"b"),
    ] {
        cases.push((
            format!(
                "{}: {:?}",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(value)
            ),
            vec![h2_request(1, &with(name, value))],
        ));
    }
    // HEADERS without END_HEADERS, then a CONTINUATION with `x-ok: 1`:
    // whole, or its first byte still in the HEADERS frame.
    let block = [with(b"x-bad", b"a\r\nb"), hpack_literal(0, b"x-ok", b"1")].concat();
    for cut in [
        with(b"x-bad", b"a\r\nb").len(),
        with(b"x-bad", b"a\r\nb").len() + 1,
    ] {
        cases.push((
            format!("over a CONTINUATION, cut at {cut}"),
            vec![
                h2_frame(0x1, 0x1, 1, &block[..cut]),
                h2_frame(0x9, 0x4, 1, &block[cut..]),
            ],
        ));
    }
    for (case, mut frames) in cases {
        frames.push(h2_request(3, &get));
        let got = h2c_exchange(proxy.addr, &frames, |got| {
            got.iter().any(|f| f.reset(1).is_some()) && got.iter().any(|f| f.ok(3))
        })
        .await;
        assert!(
            !got.iter().any(|f| f.kind == 0x7),
            "{case}: GOAWAY in {got:?}"
        );
        assert!(
            got.iter().any(|f| f.reset(1) == Some(1)),
            "{case}: no RST_STREAM(PROTOCOL_ERROR) on stream 1 in {got:?}"
        );
        assert!(
            got.iter().any(|f| f.ok(3)),
            "{case}: no 200 on stream 3 in {got:?}"
        );
        assert!(!got.iter().any(|f| f.ok(1)), "{case}: stream 1 answered");
    }
    // Only the valid requests reached the upstream.
    assert_eq!(app.hits(), 6);
}

/// A field HTTP forbids, sent with incremental indexing, still takes its
/// place in the HPACK dynamic table (the connection's state must stay in
/// step): a later request that refers to it is malformed too, by index, or
/// by name if its name was the bad part; one that doesn't is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexed_forbidden_h2_header_resets_every_stream_that_refers_to_it() {
    let app = Backend::echo("app").await;
    let proxy = TestProxy::start(&service("app", &["h.test"], &[app.addr], "")).await;
    let get = hpack_get("h.test");
    let with = |field: &[u8]| [&get[..], field].concat();
    // Literal without indexing, name index 62, value `ok`.
    let name_62_ok = [0x0f, 62 - 15, 2, b'o', b'k'];
    let frames = [
        // `x-bad: a\r\nb`, indexed: dynamic index 62.
        h2_request(1, &with(&hpack_literal(0x40, b"x-bad", b"a\r\nb"))),
        // Indexed header field, index 62.
        h2_request(3, &with(&[0x80 | 62])),
        // Its name with a value of its own: only the value was bad.
        h2_request(5, &with(&name_62_ok)),
        // `X-Upper: v`, indexed: now 62, `x-bad` 63.
        h2_request(7, &with(&hpack_literal(0x40, b"X-Upper", b"v"))),
        // Its name, bad with any value.
        h2_request(9, &with(&name_62_ok)),
        h2_request(11, &with(&[0x80 | 63])),
        h2_request(13, &get),
    ];
    let got = h2c_exchange(proxy.addr, &frames, |got| {
        got.iter().any(|f| f.reset(11).is_some())
            && got.iter().any(|f| f.ok(5))
            && got.iter().any(|f| f.ok(13))
    })
    .await;
    assert!(!got.iter().any(|f| f.kind == 0x7), "GOAWAY in {got:?}");
    for stream in [1, 3, 7, 9, 11] {
        assert!(
            got.iter().any(|f| f.reset(stream) == Some(1)),
            "no RST_STREAM(PROTOCOL_ERROR) on stream {stream} in {got:?}"
        );
    }
    for stream in [5, 13] {
        assert!(
            got.iter().any(|f| f.ok(stream)),
            "no 200 on stream {stream} in {got:?}"
        );
    }
    assert_eq!(app.hits(), 2);
}
