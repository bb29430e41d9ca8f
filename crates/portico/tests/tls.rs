//! End-to-end tests of HTTPS: SNI certificate selection, HTTP/2, Host/SNI
//! agreement, redirects, TLS and HTTP/2 upstreams, passthrough. A real
//! proxy in process, real `curl` and `h2load` as clients, a test CA.

use std::convert::Infallible;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_testkit::{curl, Backend, Echo, TestCa, TestProxy};
use tokio::net::{TcpListener, TcpStream};

struct Site {
    dir: tempfile::TempDir,
    ca: TestCa,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("Portico Test CA");
        ca.write(dir.path());
        Site { dir, ca }
    }

    fn ca_file(&self) -> String {
        self.dir.path().join("ca.crt").display().to_string()
    }

    /// Issues a certificate for `names` and returns the TOML lines naming its files.
    fn cert(&self, stem: &str, names: &[&str]) -> String {
        let (c, k) = self.ca.issue(names).write(self.dir.path(), stem);
        format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            c.display().to_string(),
            k.display().to_string()
        )
    }

    /// A config serving HTTPS for foo.app.test (its own certificate) from
    /// `upstreams`, with `proxy_extra` lines in `[proxy]`.
    fn foo_config(&self, proxy_extra: &str, upstreams: &[std::net::SocketAddr]) -> String {
        format!(
            "{HTTPS}{proxy_extra}{}",
            service(
                "foo",
                &["foo.app.test"],
                upstreams,
                &self.cert("foo", &["foo.app.test"])
            )
        )
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

use portico_testkit::service_toml as service;

const HTTPS: &str = "[proxy]\nhttps_listen = \"127.0.0.1:0\"\n";

/// `curl --resolve HOST:PORT:127.0.0.1 https://HOST:PORT/PATH` verifying against the test CA.
async fn curl_https(
    proxy: &TestProxy,
    site: &Site,
    host: &str,
    path: &str,
    extra: &[&str],
) -> portico_testkit::CurlResponse {
    let port = proxy.https_port();
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}{path}");
    let ca = site.ca_file();
    let mut args: Vec<&str> = vec!["-v", "--cacert", &ca, "--resolve", &resolve];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args).await
}

fn subject(r: &portico_testkit::CurlResponse) -> Option<String> {
    r.stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("* ")
                .unwrap_or(l.trim())
                .trim()
                .strip_prefix("subject: ")
        })
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_each_sites_certificate_on_one_port() {
    let site = Site::new();
    let foo = Backend::echo("foo").await;
    let bar = Backend::echo("bar").await;
    let wild = Backend::echo("wild").await;
    let proxy = TestProxy::start(&format!(
        "{HTTPS}{}{}{}",
        service(
            "foo",
            &["foo.app.test"],
            &[foo.addr],
            &site.cert("foo", &["foo.app.test"])
        ),
        service(
            "bar",
            &["bar.app.test"],
            &[bar.addr],
            &site.cert("bar", &["bar.app.test"])
        ),
        service(
            "wild",
            &["*.wild.test"],
            &[wild.addr],
            &site.cert("wild", &["*.wild.test"])
        ),
    ))
    .await;

    let r = curl_https(&proxy, &site, "foo.app.test", "/", &[]).await;
    assert_eq!((r.exit, r.status), (0, 200), "{}", r.stderr);
    assert_eq!(subject(&r).as_deref(), Some("CN=foo.app.test"));
    let echo: Echo = serde_json::from_str(&r.body).unwrap();
    assert_eq!(echo.replica, "foo");
    assert_eq!(echo.header("x-forwarded-proto"), Some("https"));
    assert!(r.header("x-request-id").is_some() && r.header("x-upstream-addr").is_some());

    let r = curl_https(&proxy, &site, "bar.app.test", "/", &[]).await;
    assert_eq!((r.exit, r.status), (0, 200), "{}", r.stderr);
    assert_eq!(subject(&r).as_deref(), Some("CN=bar.app.test"));
    assert!(r.body.contains("\"replica\":\"bar\""));

    let r = curl_https(&proxy, &site, "api.wild.test", "/", &[]).await;
    assert_eq!((r.exit, r.status), (0, 200), "{}", r.stderr);
    assert_eq!(subject(&r).as_deref(), Some("CN=*.wild.test"));

    // A name with no certificate and no default: the handshake is refused
    // with unrecognized_name.
    let r = curl_https(&proxy, &site, "nobody.test", "/", &[]).await;
    assert_eq!(r.exit, 35, "{r:?}");
    assert!(r.stderr.contains("unrecognized name"), "{}", r.stderr);
    // So is a client sending no SNI (an IP address): never someone else's certificate.
    let url = format!("https://127.0.0.1:{}/", proxy.https_port());
    let r = curl(&["-v", "-k", &url]).await;
    assert_eq!(r.exit, 35, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_certificate_serves_unmatched_names_but_not_a_refused_service() {
    let site = Site::new();
    let b = Backend::echo("b").await;
    let (dc, dk) = site
        .ca
        .issue(&["default.test"])
        .write(site.dir.path(), "default");
    let proxy = TestProxy::start(&format!(
        "[proxy]\nhttps_listen = \"127.0.0.1:0\"\ndefault_tls_cert = {:?}\ndefault_tls_key = {:?}\n{}{}",
        dc.display().to_string(),
        dk.display().to_string(),
        service("plain", &["plain.test"], &[b.addr], ""),
        service("broken", &["broken.test"], &[b.addr], &format!("tls_cert = {:?}\ntls_key = {:?}\n", site.path("missing.crt"), site.path("missing.key"))),
    ))
    .await;
    // A service without a certificate of its own is served with the default.
    let r = curl_https(&proxy, &site, "plain.test", "/", &["-k"]).await;
    assert_eq!((r.exit, r.status), (0, 200), "{}", r.stderr);
    assert_eq!(subject(&r).as_deref(), Some("CN=default.test"));
    // So is a client without SNI.
    let url = format!("https://127.0.0.1:{}/", proxy.https_port());
    let r = curl(&["-v", "-k", &url]).await;
    assert_eq!(r.exit, 0, "{}", r.stderr);
    assert_eq!(subject(&r).as_deref(), Some("CN=default.test"));
    assert_eq!(r.status, 503);
    // A service whose certificate failed to load is refused, not handed the default.
    let r = curl_https(&proxy, &site, "broken.test", "/", &["-k"]).await;
    assert_eq!(r.exit, 35, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_by_alpn_and_h2load_over_tls_without_errors() {
    let site = Site::new();
    let b1 = Backend::echo("b1").await;
    let b2 = Backend::echo("b2").await;
    let proxy = TestProxy::start(&site.foo_config("", &[b1.addr, b2.addr])).await;
    let r = curl_https(&proxy, &site, "foo.app.test", "/h2", &["--http2"]).await;
    assert_eq!(
        r.status_line.split_whitespace().next(),
        Some("HTTP/2"),
        "{r:?}"
    );
    assert_eq!(r.status, 200);
    assert!(r.header("x-request-id").is_some());
    let echo: Echo = serde_json::from_str(&r.body).unwrap();
    assert_eq!(echo.header("x-forwarded-proto"), Some("https"));
    assert_eq!(echo.path, "/h2");
    // Clients that don't offer h2 get HTTP/1.1.
    let r = curl_https(&proxy, &site, "foo.app.test", "/", &["--http1.1"]).await;
    assert_eq!(
        r.status_line.split_whitespace().next(),
        Some("HTTP/1.1"),
        "{r:?}"
    );

    let port = proxy.https_port();
    let out = tokio::process::Command::new("h2load")
        .args(["-n", "3000", "-c", "10", "-m", "10"])
        .arg(format!("--connect-to=127.0.0.1:{port}"))
        .arg(format!("https://foo.app.test:{port}/load"))
        .output()
        .await
        .expect("h2load must be installed (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("3000 total, 3000 started, 3000 done, 3000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("status codes: 3000 2xx"), "{text}");
    assert!(text.contains("Application protocol: h2"), "{text}");
    assert_eq!(b1.hits() + b2.hits(), 3000 + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_naming_another_site_than_the_sni_is_421() {
    let site = Site::new();
    let foo = Backend::echo("foo").await;
    let bar = Backend::echo("bar").await;
    let proxy = TestProxy::start(&format!(
        "{HTTPS}{}{}",
        service(
            "foo",
            &["foo.app.test"],
            &[foo.addr],
            &site.cert("foo", &["foo.app.test"])
        ),
        service(
            "bar",
            &["bar.app.test"],
            &[bar.addr],
            &site.cert("bar", &["bar.app.test"])
        ),
    ))
    .await;
    for version in ["--http1.1", "--http2"] {
        let r = curl_https(
            &proxy,
            &site,
            "foo.app.test",
            "/",
            &[version, "-H", "Host: bar.app.test"],
        )
        .await;
        assert_eq!(r.status, 421, "{r:?}");
        assert!(
            r.body.contains("not served on this connection"),
            "{}",
            r.body
        );
        assert!(r.header("x-request-id").is_some());
    }
    // Same site with the port in Host is fine.
    let host = format!("Host: foo.app.test:{}", proxy.https_port());
    let r = curl_https(&proxy, &site, "foo.app.test", "/", &["-H", &host]).await;
    assert_eq!(r.status, 200);
    assert_eq!(bar.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_only_redirects_plain_http_and_hsts_is_sent_over_https() {
    let site = Site::new();
    let b = Backend::echo("b").await;
    let proxy = TestProxy::start(&format!(
        "{HTTPS}{}{}",
        service(
            "secure",
            &["secure.test"],
            &[b.addr],
            &format!(
                "ssl_only = true\nhsts_max_age = \"365d\"\n{}",
                site.cert("s", &["secure.test"])
            )
        ),
        service("open", &["open.test"], &[b.addr], ""),
    ))
    .await;
    let r = curl(&["-H", "Host: secure.test:8080", &proxy.url("/a/b?c=d&e")]).await;
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(r.header("location"), Some("https://secure.test/a/b?c=d&e"));
    assert!(r.header("x-request-id").is_some());
    let r = curl(&["-H", "Host: open.test", &proxy.url("/")]).await;
    assert_eq!(r.status, 200);
    assert!(r.header("strict-transport-security").is_none());
    let r = curl_https(&proxy, &site, "secure.test", "/", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    assert_eq!(b.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstreams_verified_unverified_and_h2() {
    let site = Site::new();
    let backend_ca = TestCa::new("Backend CA");
    let ca_path = site.dir.path().join("backend-ca.crt");
    std::fs::write(&ca_path, &backend_ca.cert_pem).unwrap();
    let issued = backend_ca.issue(&["backend.internal"]);
    let h1 = Backend::echo_tls("tls-h1", issued.server_config(&[b"http/1.1"])).await;
    let h2 = Backend::echo_tls("tls-h2", issued.server_config(&[b"h2"])).await;
    let ca = ca_path.display().to_string();
    let proxy = TestProxy::start(&format!(
        "{}{}{}{}",
        service("verified", &["v.test"], &[h1.addr], &format!("upstream_tls = true\nupstream_tls_ca = {ca:?}\nupstream_tls_name = \"backend.internal\"\n")),
        service("unverified", &["u.test"], &[h1.addr], "upstream_tls = true\nupstream_tls_verify = \"none\"\n"),
        service("wrongca", &["w.test"], &[h1.addr], &format!("upstream_tls = true\nupstream_tls_ca = {:?}\nupstream_tls_name = \"backend.internal\"\n", site.ca_file())),
        service("h2", &["h2.test"], &[h2.addr], &format!("upstream_tls = true\nupstream_protocol = \"h2\"\nupstream_tls_ca = {ca:?}\nupstream_tls_name = \"backend.internal\"\n")),
    ))
    .await;
    for host in ["v.test", "u.test"] {
        let r = curl(&["-H", &format!("Host: {host}"), &proxy.url("/x")]).await;
        assert_eq!(r.status, 200, "{host}: {r:?}");
        let echo: Echo = serde_json::from_str(&r.body).unwrap();
        assert_eq!(echo.replica, "tls-h1");
        assert_eq!(echo.version, "HTTP/1.1");
    }
    let r = curl(&["-H", "Host: w.test", &proxy.url("/")]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("TLS to the upstream failed"), "{}", r.body);
    let r = curl(&["-H", "Host: h2.test", &proxy.url("/over/h2?q=1")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let echo: Echo = serde_json::from_str(&r.body).unwrap();
    assert_eq!(echo.version, "HTTP/2.0");
    assert!(echo.path.ends_with("/over/h2?q=1"), "{}", echo.path);
    assert_eq!(h1.hits(), 2);
}

/// A response body with trailers, as gRPC sends.
struct WithTrailers {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for WithTrailers {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// An h2c server answering like a gRPC service: echoing the request's TE
/// header and message, with `grpc-status` in trailers.
async fn grpc_like_backend() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let te = req.headers().get("te").cloned();
                    let msg = req.into_body().collect().await.unwrap().to_bytes();
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    trailers.insert("grpc-message", HeaderValue::from_static("ok"));
                    let mut resp = Response::new(WithTrailers {
                        data: Some(msg),
                        trailers: Some(trailers),
                    });
                    resp.headers_mut()
                        .insert("content-type", HeaderValue::from_static("application/grpc"));
                    if let Some(te) = te {
                        resp.headers_mut().insert("x-seen-te", te);
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_keeps_trailers() {
    let backend = grpc_like_backend().await;
    let proxy = TestProxy::start(&service(
        "grpc",
        &["grpc.test"],
        &[backend],
        "upstream_protocol = \"h2c\"\n",
    ))
    .await;
    // The client speaks h2c with prior knowledge to the plain listener, as a gRPC client would.
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let message = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let req = Request::builder()
        .method("POST")
        .uri("http://grpc.test/pkg.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(message.clone()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-seen-te"], "trailers");
    assert!(resp.headers().contains_key("x-request-id"));
    let body = resp.into_body().collect().await.unwrap();
    let trailers = body.trailers().cloned().expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
    assert_eq!(body.to_bytes(), message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_relays_tls_to_the_backend_which_presents_its_own_certificate() {
    let site = Site::new();
    let backend_ca = TestCa::new("Backend CA");
    let backend_ca_file = site.dir.path().join("backend-ca.crt");
    std::fs::write(&backend_ca_file, &backend_ca.cert_pem).unwrap();
    let tls_backend = Backend::echo_tls(
        "pass-backend",
        backend_ca
            .issue(&["pass.test"])
            .server_config(&[b"h2", b"http/1.1"]),
    )
    .await;
    let other = Backend::echo("other").await;
    let proxy = TestProxy::start(&format!(
        "{HTTPS}{}{}",
        service(
            "pass",
            &["pass.test"],
            &[tls_backend.addr],
            "passthrough = true\n"
        ),
        service(
            "term",
            &["term.test"],
            &[other.addr],
            &site.cert("term", &["term.test"])
        ),
    ))
    .await;
    let port = proxy.https_port();
    let resolve = format!("pass.test:{port}:127.0.0.1");
    let url = format!("https://pass.test:{port}/direct");
    let ca = backend_ca_file.display().to_string();
    let r = curl(&["-v", "--cacert", &ca, "--resolve", &resolve, &url]).await;
    assert_eq!((r.exit, r.status), (0, 200), "{}", r.stderr);
    // The backend's own certificate, from the backend's CA, reached the client.
    assert_eq!(subject(&r).as_deref(), Some("CN=pass.test"));
    let echo: Echo = serde_json::from_str(&r.body).unwrap();
    assert_eq!(echo.replica, "pass-backend");
    // Nothing was terminated or rewritten on the way.
    assert!(r.header("x-proxy-id").is_none());
    assert!(echo.header("x-forwarded-for").is_none());
    // The same port still terminates TLS for other services.
    let r = curl_https(&proxy, &site, "term.test", "/", &[]).await;
    assert_eq!((r.exit, r.status), (0, 200), "{}", r.stderr);
    assert_eq!(r.header("x-proxy-id"), Some("test-proxy"));
}

/// A rustls client trusting the test CA; connects twice with one config.
async fn handshake_kind(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> Option<rustls::HandshakeKind> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap(),
            stream,
        )
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind();
    // TLS 1.3 tickets arrive after the handshake: read a response to get them.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    kind
}

fn client_config(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_across_a_reload_on_tls12_and_tls13() {
    let site = Site::new();
    let b = Backend::echo("b").await;
    let config = site.foo_config("", &[b.addr]);
    let proxy = TestProxy::start(&config).await;
    let addr = proxy.https_addr.unwrap();
    let ca = site.dir.path().join("ca.crt");
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let client = client_config(&ca, versions);
        assert_eq!(
            handshake_kind(addr, client.clone(), "foo.app.test").await,
            Some(rustls::HandshakeKind::Full)
        );
        assert_eq!(
            handshake_kind(addr, client.clone(), "foo.app.test").await,
            Some(rustls::HandshakeKind::Resumed)
        );
        // A reload builds a new TLS config; sessions survive it.
        proxy.apply(&format!(
            "{config}\n# reloaded\n{}",
            service("bar", &["bar.test"], &[b.addr], "")
        ));
        assert_eq!(
            handshake_kind(addr, client.clone(), "foo.app.test").await,
            Some(rustls::HandshakeKind::Resumed)
        );
    }
    // TLS 1.1 and older are not offered: curl asking for at most 1.1 fails.
    let port = proxy.https_port();
    let r = curl(&[
        "--cacert",
        &site.ca_file(),
        "--resolve",
        &format!("foo.app.test:{port}:127.0.0.1"),
        "--tlsv1.0",
        "--tls-max",
        "1.1",
        &format!("https://foo.app.test:{port}/"),
    ])
    .await;
    assert_ne!(r.exit, 0, "{r:?}");
}

/// Accepts any certificate and records the stapled OCSP response.
#[derive(Debug)]
struct RecordOcsp(Arc<Mutex<Vec<u8>>>, Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for RecordOcsp {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = ocsp.to_vec();
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.1.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.1.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_ocsp_response_is_stapled() {
    let site = Site::new();
    let b = Backend::echo("b").await;
    std::fs::write(
        site.dir.path().join("foo.ocsp"),
        b"pretend-der-ocsp-response",
    )
    .unwrap();
    let proxy = TestProxy::start(&format!(
        "{HTTPS}{}",
        service(
            "foo",
            &["foo.app.test"],
            &[b.addr],
            &format!(
                "{}tls_ocsp = {:?}\n",
                site.cert("foo", &["foo.app.test"]),
                site.path("foo.ocsp")
            )
        ),
    ))
    .await;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordOcsp(seen.clone(), provider)))
        .with_no_client_auth();
    let kind = handshake_kind(proxy.https_addr.unwrap(), Arc::new(config), "foo.app.test").await;
    assert!(kind.is_some());
    assert_eq!(&seen.lock().unwrap()[..], b"pretend-der-ocsp-response");
}

/// Regression: after the TLS handshake, a client that sends nothing is
/// closed after client_header_timeout (ALPN decides the protocol; nothing
/// waits to detect it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_connections_are_closed_after_the_handshake() {
    let site = Site::new();
    let b = Backend::echo("b").await;
    let proxy =
        TestProxy::start(&site.foo_config("client_header_timeout = \"300ms\"\n", &[b.addr])).await;
    let ca = site.dir.path().join("ca.crt");
    let connector =
        tokio_rustls::TlsConnector::from(client_config(&ca, &[&rustls::version::TLS13]));
    let stream = TcpStream::connect(proxy.https_addr.unwrap()).await.unwrap();
    let mut tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("foo.app.test").unwrap(),
            stream,
        )
        .await
        .unwrap();
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let closed =
        tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "a silent TLS connection stayed open");
}

/// Regression: a client without SNI (served the default certificate) may
/// not reach a site that has a certificate of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sni_reaches_only_sites_served_by_the_default_certificate() {
    let site = Site::new();
    let b = Backend::echo("b").await;
    let (dc, dk) = site
        .ca
        .issue(&["default.test"])
        .write(site.dir.path(), "default");
    let proxy = TestProxy::start(&format!(
        "[proxy]\nhttps_listen = \"127.0.0.1:0\"\ndefault_tls_cert = {:?}\ndefault_tls_key = {:?}\n{}{}",
        dc.display().to_string(),
        dk.display().to_string(),
        service("own", &["own.test"], &[b.addr], &site.cert("own", &["own.test"])),
        service("plain", &["plain.test"], &[b.addr], ""),
    ))
    .await;
    let url = format!("https://127.0.0.1:{}/", proxy.https_port());
    let r = curl(&["-k", "-H", "Host: own.test", &url]).await;
    assert_eq!(r.status, 421, "{r:?}");
    let r = curl(&["-k", "-H", "Host: plain.test", &url]).await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// Regression: a passthrough tunnel where nothing moves is closed after
/// tunnel_idle_timeout instead of holding two sockets forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_passthrough_tunnels_are_closed() {
    // A "TLS backend" that accepts and never says anything.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let proxy = TestProxy::start(&format!(
        "{HTTPS}tunnel_idle_timeout = \"300ms\"\n{}",
        service("pass", &["pass.test"], &[backend], "passthrough = true\n"),
    ))
    .await;
    // A client starting a TLS handshake for pass.test, then silence.
    let config = client_config(
        &Site::new().dir.path().join("ca.crt"),
        &[&rustls::version::TLS13],
    );
    let stream = TcpStream::connect(proxy.https_addr.unwrap()).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let handshake = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        connector.connect(
            rustls::pki_types::ServerName::try_from("pass.test").unwrap(),
            stream,
        ),
    )
    .await;
    // The proxy closes the idle tunnel, which fails the handshake, in time.
    assert!(
        matches!(handshake, Ok(Err(_))),
        "the idle tunnel was not closed"
    );
}

/// Reads one HTTP/1.1 response with a `Content-Length` body from `r`,
/// keeping what follows it in `buf`; returns the head and the body.
async fn read_one(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let wait = std::time::Duration::from_secs(10);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            while buf.len() < end + 4 + len {
                let n = tokio::time::timeout(wait, r.read_buf(buf))
                    .await
                    .expect("the body within 10 s")
                    .unwrap();
                assert!(n > 0, "closed within a body: {head}");
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return (head, body);
        }
        let n = tokio::time::timeout(wait, r.read_buf(buf))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(n > 0, "closed before a response");
    }
}

/// HTTP/1.1 over TLS on the fast path: with more than a thousand
/// connections open, each is parked (no task) as soon as it goes idle, and
/// still answers its next requests; a request that rustls holds decrypted
/// while the socket has nothing more to say (the first of two pipelined
/// requests fills the proxy's first read exactly) is answered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_keep_alive_connections_park_and_answer_pipelined_requests() {
    use tokio::io::AsyncWriteExt;
    let site = Site::new();
    let b = Backend::echo("b").await;
    let proxy = TestProxy::start(&site.foo_config("", &[b.addr])).await;
    let ca = site.dir.path().join("ca.crt");
    let config = client_config(&ca, &[&rustls::version::TLS13]);
    let addr = proxy.https_addr.unwrap();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: foo.app.test\r\n\r\n");

    let mut conns = Vec::new();
    for batch in 0..11 {
        let mut opening = tokio::task::JoinSet::new();
        for i in 0..100 {
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let first = get(&format!("/first/{}", batch * 100 + i));
            opening.spawn(async move {
                let stream = TcpStream::connect(addr).await.unwrap();
                let mut tls = connector
                    .connect(
                        rustls::pki_types::ServerName::try_from("foo.app.test").unwrap(),
                        stream,
                    )
                    .await
                    .unwrap();
                tls.write_all(first.as_bytes()).await.unwrap();
                let mut buf = Vec::new();
                let (head, _) = read_one(&mut tls, &mut buf).await;
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                (tls, buf)
            });
        }
        conns.extend(opening.join_all().await);
    }
    assert_eq!(conns.len(), 1100);

    // A first request of exactly the proxy's first read (4 KiB), and a
    // second one behind it, in one write.
    let short = get("/pad");
    let pad = 4096 - short.len() - "x-pad: \r\n".len();
    let padded = format!(
        "GET /pad HTTP/1.1\r\nHost: foo.app.test\r\nx-pad: {}\r\n\r\n",
        "p".repeat(pad)
    );
    assert_eq!(padded.len(), 4096);
    let mut answering = tokio::task::JoinSet::new();
    for (i, (mut tls, mut buf)) in conns.into_iter().enumerate() {
        let pipelined = format!("{padded}{}", get(&format!("/second/{i}")));
        answering.spawn(async move {
            tls.write_all(pipelined.as_bytes()).await.unwrap();
            let (_, first) = read_one(&mut tls, &mut buf).await;
            let (_, second) = read_one(&mut tls, &mut buf).await;
            let first: Echo = serde_json::from_slice(&first).unwrap();
            let second: Echo = serde_json::from_slice(&second).unwrap();
            assert_eq!(first.path, "/pad");
            assert_eq!(second.path, format!("/second/{i}"));
            assert_eq!(second.header("x-forwarded-proto"), Some("https"));
        });
    }
    let answered = answering.join_all().await;
    assert_eq!(answered.len(), 1100);
}
