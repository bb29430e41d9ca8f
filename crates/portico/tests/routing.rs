//! Routing by host and path, and Interlock's traffic labels as `[[service]]`
//! keys (context_root, redirects, sticky_session_cookie, ip_hash,
//! default_backend), balancing policies, body limits, trusted proxies and
//! the PROXY protocol: each driven end to end through real sockets, with
//! `curl` or a raw client, against echo backends that report what they got.
//!
//! Body-less GETs take the HTTP/1.1 fast path; the POSTs here carry chunked
//! bodies, which take the general path (hyper). Behaviour both must share is
//! checked with both.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use portico_testkit::raw::{RawResponse, Wire};
use portico_testkit::{curl, Backend, Echo, TestProxy};

use portico_testkit::service_toml as service;

/// Sends one request on `c` and reads its response: a POST with a chunked
/// body, so that it takes the general path (a `Content-Length` would not).
async fn send(c: &mut Wire, method: &str, host: &str, path: &str, headers: &str) -> RawResponse {
    let body = if method == "POST" {
        "Transfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"
    } else {
        "\r\n"
    };
    c.send(format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}{body}"
    ))
    .await
    .expect("send");
    c.read_response(method).await.expect("a response")
}

fn echo(r: &RawResponse) -> Echo {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body_text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_lands_on_the_service_with_the_longest_matching_path() {
    let root = Backend::echo("root").await;
    let api = Backend::echo("api").await;
    let v2 = Backend::echo("v2").await;
    let proxy = TestProxy::start(&format!(
        "{}{}{}",
        service("root", &["p.test"], &[root.addr], ""),
        service("api", &["p.test"], &[api.addr], "context_root = \"/api\""),
        service("v2", &["p.test"], &[v2.addr], "context_root = \"/api/v2/\""),
    ))
    .await;
    let mut c = Wire::connect(proxy.addr).await;
    for method in ["GET", "POST"] {
        for (path, want) in [
            ("/", "root"),
            ("/apix", "root"),
            ("/other/api", "root"),
            ("/api", "api"),
            ("/api/", "api"),
            ("/api/v1/x?q=1", "api"),
            ("/api/v20", "api"),
            ("/api/v2", "v2"),
            ("/api/v2/deep/x?y", "v2"),
        ] {
            let r = send(&mut c, method, "p.test", path, "").await;
            assert_eq!(r.status, 200, "{method} {path}: {}", r.body_text());
            let e = echo(&r);
            assert_eq!(e.replica, want, "{method} {path}");
            // Without rewrite the upstream sees the path as sent.
            assert_eq!(e.path, path, "{method} {path}");
        }
    }
    // Through curl, the way an operator checks a hop.
    let r = curl(&[
        "-sS",
        "-D",
        "-",
        "-H",
        "Host: p.test",
        &proxy.url("/api/v2/z"),
    ])
    .await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("\"replica\":\"v2\""), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_served_only_under_other_paths_answers_404_naming_them() {
    let api = Backend::echo("api").await;
    let proxy = TestProxy::start(&format!(
        "{}{}",
        service(
            "api",
            &["only.test"],
            &[api.addr],
            "context_root = \"/api\""
        ),
        service(
            "admin",
            &["only.test"],
            &[api.addr],
            "context_root = \"/admin\""
        ),
    ))
    .await;
    let mut c = Wire::connect(proxy.addr).await;
    for method in ["GET", "POST"] {
        let r = send(&mut c, method, "only.test", "/elsewhere", "").await;
        assert_eq!(r.status, 404, "{method}");
        let body = r.body_text();
        assert!(body.contains("only.test"), "{body}");
        assert!(
            body.contains("/admin, /api") || body.contains("/api, /admin"),
            "{body}"
        );
        assert!(r.header("x-request-id").is_some());
        assert_eq!(r.header("x-proxy-id"), Some("test-proxy"));
        assert!(r.header("x-server-info").is_some());
    }
    assert_eq!(api.hits(), 0);
    // An unknown host is still 503, as Interlock answers.
    let r = send(&mut c, "GET", "nowhere.test", "/", "").await;
    assert_eq!(r.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewriting_context_root_is_stripped_and_its_bare_prefix_redirected() {
    let b = Backend::echo("app").await;
    let kept = Backend::echo("kept").await;
    let proxy = TestProxy::start(&format!(
        "{}{}",
        service(
            "app",
            &["r.test"],
            &[b.addr],
            "context_root = \"/app\"\ncontext_root_rewrite = true"
        ),
        service("kept", &["k.test"], &[kept.addr], "context_root = \"/app\""),
    ))
    .await;
    let mut c = Wire::connect(proxy.addr).await;
    for method in ["GET", "POST"] {
        for (path, upstream_sees) in [
            ("/app/x?q=1", "/x?q=1"),
            ("/app/", "/"),
            ("/app/a/b", "/a/b"),
        ] {
            let r = send(&mut c, method, "r.test", path, "").await;
            assert_eq!(r.status, 200, "{method} {path}: {}", r.body_text());
            assert_eq!(echo(&r).path, upstream_sees, "{method} {path}");
        }
        let r = send(&mut c, method, "r.test", "/app", "").await;
        assert_eq!(r.status, 301, "{method}");
        assert_eq!(r.header("location"), Some("/app/"));
        let r = send(&mut c, method, "r.test", "/app?q=1", "").await;
        assert_eq!(r.status, 301, "{method}");
        assert_eq!(r.header("location"), Some("/app/?q=1"));
        // Without rewrite, the upstream sees the prefix.
        let r = send(&mut c, method, "k.test", "/app/x", "").await;
        assert_eq!(echo(&r).path, "/app/x", "{method}");
    }
    // curl follows the redirect to the application.
    let r = curl(&["-sS", "-L", "-H", "Host: r.test", &proxy.url("/app")]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("\"path\":\"/\""), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_send_302_to_the_target_with_path_and_query() {
    let b = Backend::echo("new").await;
    let proxy = TestProxy::start(&service(
        "web",
        &["old.test", "new.test"],
        &[b.addr],
        "context_root = \"/a\"\nredirects = [{ from = \"http://old.test\", to = \"http://new.test\" }]",
    ))
    .await;
    let mut c = Wire::connect(proxy.addr).await;
    for method in ["GET", "POST"] {
        let r = send(&mut c, method, "old.test", "/a/b?c=1&d", "").await;
        assert_eq!(r.status, 302, "{method}: {}", r.body_text());
        assert_eq!(r.header("location"), Some("http://new.test/a/b?c=1&d"));
        assert!(r.header("x-request-id").is_some());
        // Every path of the source host, as in Interlock's server block,
        // not only the service's own.
        let r = send(&mut c, method, "old.test", "/elsewhere", "").await;
        assert_eq!(r.status, 302, "{method}: {}", r.body_text());
        assert_eq!(r.header("location"), Some("http://new.test/elsewhere"));
        let r = send(&mut c, method, "new.test", "/a", "").await;
        assert_eq!(r.status, 200, "{method}");
    }
    assert_eq!(b.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_apply_over_https_too() {
    let dir = tempfile::tempdir().unwrap();
    let ca = portico_testkit::TestCa::new("Portico Test CA");
    let ca_file = ca.write(dir.path());
    let (cert, key) = ca
        .issue(&["old.test", "new.test"])
        .write(dir.path(), "site");
    let b = Backend::echo("new").await;
    let proxy = TestProxy::start(&format!(
        "[proxy]\nhttps_listen = \"127.0.0.1:0\"\n{}",
        service(
            "web",
            &["old.test", "new.test"],
            &[b.addr],
            &format!(
                "tls_cert = {:?}\ntls_key = {:?}\nredirects = [{{ from = \"https://old.test\", to = \"https://new.test\" }}]",
                cert.display().to_string(),
                key.display().to_string()
            ),
        )
    ))
    .await;
    let port = proxy.https_port();
    let ca = ca_file.display().to_string();
    let resolve = format!("old.test:{port}:127.0.0.1");
    let url = format!("https://old.test:{port}/x?y=1");
    let r = curl(&[
        "-sS",
        "-D",
        "-",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        &url,
    ])
    .await;
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(r.header("location"), Some("https://new.test/x?y=1"));
    // Plain HTTP to the same host is not the redirect's source.
    let r = curl(&["-sS", "-D", "-", "-H", "Host: old.test", &proxy.url("/x")]).await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// Which replica answers each of `cookies`, one request each.
async fn replicas_for(c: &mut Wire, host: &str, cookies: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(cookies.len());
    for cookie in cookies {
        let r = send(
            c,
            "GET",
            host,
            "/",
            &format!("Cookie: other=1; sid={cookie}\r\n"),
        )
        .await;
        assert_eq!(r.status, 200);
        out.push(echo(&r).replica);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_cookie_pins_each_session_and_scaling_moves_few() {
    let replicas = [
        Backend::echo("r1").await,
        Backend::echo("r2").await,
        Backend::echo("r3").await,
        Backend::echo("r4").await,
    ];
    let addrs: Vec<SocketAddr> = replicas.iter().map(|b| b.addr).collect();
    let config = |n: usize| {
        service(
            "app",
            &["s.test"],
            &addrs[..n],
            "sticky_session_cookie = \"sid\"",
        )
    };
    let proxy = TestProxy::start(&config(3)).await;
    let mut c = Wire::connect(proxy.addr).await;

    let same = vec!["abc123".to_string(); 100];
    let got = replicas_for(&mut c, "s.test", &same).await;
    assert!(
        got.iter().all(|r| *r == got[0]),
        "one session, one replica: {got:?}"
    );

    let many: Vec<String> = (0..300).map(|i| format!("session-{i}")).collect();
    let before = replicas_for(&mut c, "s.test", &many).await;
    let mut spread: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &before {
        *spread.entry(r.as_str()).or_default() += 1;
    }
    assert_eq!(spread.len(), 3, "{spread:?}");
    assert!(spread.values().all(|n| *n >= 50), "{spread:?}");

    // Requests without the cookie are balanced normally (round robin).
    let mut plain = std::collections::BTreeSet::new();
    for _ in 0..6 {
        plain.insert(echo(&send(&mut c, "GET", "s.test", "/", "").await).replica);
    }
    assert_eq!(plain.len(), 3, "{plain:?}");

    // Scale 3 → 4: about a quarter of the sessions move, all to the new one.
    proxy.apply(&config(4));
    let after = replicas_for(&mut c, "s.test", &many).await;
    let moved: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a)
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(moved.iter().all(|r| *r == "r4"), "{moved:?}");
    assert!(
        (40..=110).contains(&moved.len()),
        "{} of 300 sessions moved",
        moved.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_sends_each_client_address_to_one_replica() {
    let replicas = [
        Backend::echo("r1").await,
        Backend::echo("r2").await,
        Backend::echo("r3").await,
    ];
    let addrs: Vec<SocketAddr> = replicas.iter().map(|b| b.addr).collect();
    let proxy = TestProxy::start(&service("app", &["ip.test"], &addrs, "ip_hash = true")).await;
    let mut seen: HashMap<u8, String> = HashMap::new();
    for round in 0..3 {
        for last in 1..=12u8 {
            let source = format!("127.0.0.{last}");
            let r = curl(&[
                "-sS",
                "--interface",
                &source,
                "-H",
                "Host: ip.test",
                &proxy.url("/"),
            ])
            .await;
            assert_eq!(r.status, 200, "{r:?}");
            let e: Echo = serde_json::from_str(&r.body).unwrap();
            assert_eq!(e.header("x-real-ip"), Some(source.as_str()));
            match seen.get(&last) {
                Some(first) => assert_eq!(*first, e.replica, "{source}, round {round}"),
                None => {
                    seen.insert(last, e.replica);
                }
            }
        }
    }
    let distinct: std::collections::BTreeSet<_> = seen.values().collect();
    assert!(
        distinct.len() >= 2,
        "12 addresses all on one replica: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_most_requests_to_the_fast_replica() {
    let slow = Backend::start("slow", |_req| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
            b"slow",
        )))
    })
    .await;
    let fast = Backend::echo("fast").await;
    let proxy = TestProxy::start(&service(
        "app",
        &["lr.test"],
        &[slow.addr, fast.addr],
        "balance = \"least_request\"",
    ))
    .await;
    // Eight clients, ten requests each, all at once.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let addr = proxy.addr;
        tasks.spawn(async move {
            let mut c = Wire::connect(addr).await;
            for _ in 0..10 {
                let r = send(&mut c, "GET", "lr.test", "/", "").await;
                assert_eq!(r.status, 200);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(slow.hits() + fast.hits(), 80);
    assert!(
        fast.hits() >= 60,
        "fast {} / slow {}",
        fast.hits(),
        slow.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_backend_answers_unknown_hosts() {
    let fallback = Backend::echo("fallback").await;
    let app = Backend::echo("app").await;
    let services = format!(
        "{}{}",
        service("app", &["app.test"], &[app.addr], ""),
        service(
            "fallback",
            &["fallback.test"],
            &[fallback.addr],
            "default_backend = true"
        ),
    );
    let proxy = TestProxy::start(&services).await;
    let mut c = Wire::connect(proxy.addr).await;
    for method in ["GET", "POST"] {
        let r = send(&mut c, method, "unknown.test", "/x", "").await;
        assert_eq!(r.status, 200, "{method}");
        let e = echo(&r);
        assert_eq!(e.replica, "fallback");
        assert_eq!(e.header("host"), Some("unknown.test"));
        assert_eq!(
            echo(&send(&mut c, method, "app.test", "/", "").await).replica,
            "app"
        );
    }
    // Interlock's own default backend lists no hosts.
    proxy.apply(&format!(
        "{}[[service]]\nname = \"fallback\"\nupstreams = [\"{}\"]\ndefault_backend = true\n",
        service("app", &["app.test"], &[app.addr], ""),
        fallback.addr
    ));
    let r = send(&mut c, "GET", "unknown.test", "/x", "").await;
    assert_eq!(echo(&r).replica, "fallback");
    // A service sharing a host with the default backend does not answer
    // for hosts nobody claims: the default backend's pool is its own.
    proxy.apply(&format!(
        "{}{}",
        service("app", &["app.test"], &[app.addr], ""),
        service(
            "fallback",
            &["app.test"],
            &[fallback.addr],
            "default_backend = true"
        ),
    ));
    for _ in 0..4 {
        let r = send(&mut c, "GET", "unknown.test", "/x", "").await;
        assert_eq!(echo(&r).replica, "fallback");
    }
    // Without one, 503 as Interlock.
    proxy.apply(&service("app", &["app.test"], &[app.addr], ""));
    let r = send(&mut c, "GET", "unknown.test", "/x", "").await;
    assert_eq!(r.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_body_size_get_413() {
    let b = Backend::echo("app").await;
    let proxy = TestProxy::start(&format!(
        "[proxy]\nmax_body_size = \"1MiB\"\n{}{}",
        service(
            "small",
            &["small.test"],
            &[b.addr],
            "max_body_size = \"1KiB\""
        ),
        service("big", &["big.test"], &[b.addr], ""),
    ))
    .await;
    // Declared too large: refused before anything reaches the upstream.
    let mut c = Wire::connect(proxy.addr).await;
    c.send("POST /up HTTP/1.1\r\nHost: small.test\r\nContent-Length: 2048\r\n\r\n")
        .await
        .unwrap();
    let r = c.read_response("POST").await.unwrap();
    assert_eq!(r.status, 413, "{}", r.body_text());
    assert!(r.body_text().contains("max_body_size"), "{}", r.body_text());
    assert_eq!(b.hits(), 0);
    // The proxy-wide limit applies where the service sets none.
    let big = vec![b'x'; 2 * 1024 * 1024];
    let mut c = Wire::connect(proxy.addr).await;
    c.send(format!(
        "POST /up HTTP/1.1\r\nHost: big.test\r\nContent-Length: {}\r\n\r\n",
        big.len()
    ))
    .await
    .unwrap();
    assert_eq!(c.read_response("POST").await.unwrap().status, 413);
    assert_eq!(b.hits(), 0);
    // Within the limit: forwarded.
    let mut c = Wire::connect(proxy.addr).await;
    let r = send(&mut c, "POST", "small.test", "/ok", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(echo(&r).body_len, 4);

    // A chunked body declares nothing, and grows past the limit.
    let mut c = Wire::connect(proxy.addr).await;
    let chunk = format!("400\r\n{}\r\n", "y".repeat(1024));
    c.send(format!(
        "POST /chunked HTTP/1.1\r\nHost: small.test\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n"
    ))
    .await
    .unwrap();
    let r = c.read_response("POST").await.unwrap();
    assert_eq!(r.status, 413, "{}", r.body_text());
    // curl sees the same.
    let data = "z".repeat(4096);
    let r = curl(&[
        "-sS",
        "-H",
        "Host: small.test",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &data,
        &proxy.url("/curl"),
    ])
    .await;
    assert_eq!(r.status, 413, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_gives_the_client_address() {
    let b = Backend::echo("app").await;
    let proxy = TestProxy::start(&format!(
        "[proxy]\nhttp_proxy_protocol = true\n{}",
        service("app", &["pp.test"], &[b.addr], "")
    ))
    .await;
    // v1, then a GET (fast path) and a chunked POST (general path) on the
    // connection.
    let mut c = Wire::connect(proxy.addr).await;
    c.send("PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\n")
        .await
        .unwrap();
    for method in ["GET", "POST"] {
        let e = echo(
            &send(
                &mut c,
                method,
                "pp.test",
                "/",
                "X-Forwarded-For: 6.6.6.6\r\n",
            )
            .await,
        );
        assert_eq!(e.header("x-real-ip"), Some("203.0.113.7"), "{method}");
        // The balancer is no trusted proxy: its client's list is replaced.
        assert_eq!(e.header("x-forwarded-for"), Some("203.0.113.7"), "{method}");
    }
    // v2, IPv6.
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    header.extend_from_slice(
        &"2001:db8::9"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    header.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    header.extend_from_slice(&[0xc0, 0x00, 0x00, 0x50]);
    let mut c = Wire::connect(proxy.addr).await;
    c.send(&header).await.unwrap();
    let e = echo(&send(&mut c, "GET", "pp.test", "/", "").await);
    assert_eq!(e.header("x-real-ip"), Some("2001:db8::9"));
    // Without the header, the connection is closed unanswered.
    let mut c = Wire::connect(proxy.addr).await;
    c.send("GET / HTTP/1.1\r\nHost: pp.test\r\n\r\n")
        .await
        .unwrap();
    c.closed().await.expect("closed without an answer");
    // With trusted_proxies set, only they may send the header: a client
    // reaching the port directly can't claim an address.
    proxy.apply(&format!(
        "[proxy]\nhttp_proxy_protocol = true\ntrusted_proxies = [\"10.9.9.9\"]\n{}",
        service("app", &["pp.test"], &[b.addr], "")
    ));
    let mut c = Wire::connect(proxy.addr).await;
    c.send("PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\nGET / HTTP/1.1\r\nHost: pp.test\r\n\r\n")
        .await
        .unwrap();
    c.closed().await.expect("closed without an answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_names_the_client_for_ip_hash_and_logs() {
    let replicas = [Backend::echo("r1").await, Backend::echo("r2").await];
    let addrs: Vec<SocketAddr> = replicas.iter().map(|b| b.addr).collect();
    let proxy = TestProxy::start(&format!(
        "[proxy]\ntrusted_proxies = [\"127.0.0.1\"]\n{}",
        service("app", &["t.test"], &addrs, "ip_hash = true")
    ))
    .await;
    let mut c = Wire::connect(proxy.addr).await;
    let mut first: HashMap<String, String> = HashMap::new();
    for _ in 0..3 {
        for i in 1..=8 {
            let client = format!("198.51.100.{i}");
            for method in ["GET", "POST"] {
                let e = echo(
                    &send(
                        &mut c,
                        method,
                        "t.test",
                        "/",
                        &format!("X-Forwarded-For: {client}\r\n"),
                    )
                    .await,
                );
                assert_eq!(e.header("x-real-ip"), Some(client.as_str()));
                assert_eq!(
                    e.header("x-forwarded-for"),
                    Some(format!("{client}, 127.0.0.1").as_str())
                );
                let replica = first.entry(client.clone()).or_insert(e.replica.clone());
                assert_eq!(*replica, e.replica, "{client} {method}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_precedes_tls_on_the_https_listener() {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let ca = portico_testkit::TestCa::new("Portico Test CA");
    let ca_file = ca.write(dir.path());
    let (cert, key) = ca.issue(&["pp.test"]).write(dir.path(), "site");
    let b = Backend::echo("app").await;
    let proxy = TestProxy::start(&format!(
        "[proxy]\nhttps_listen = \"127.0.0.1:0\"\nhttps_proxy_protocol = true\n{}",
        service(
            "app",
            &["pp.test"],
            &[b.addr],
            &format!(
                "tls_cert = {:?}\ntls_key = {:?}",
                cert.display().to_string(),
                key.display().to_string()
            ),
        )
    ))
    .await;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&ca_file).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut tcp = tokio::net::TcpStream::connect(proxy.https_addr.unwrap())
        .await
        .unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.9 10.0.0.1 40000 443\r\n")
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("pp.test").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS after the header");
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: pp.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let e: Echo = serde_json::from_str(body).unwrap();
    assert_eq!(e.header("x-real-ip"), Some("203.0.113.9"));
    assert_eq!(e.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_a_certificate_never_gets_anothers_through_a_shared_path() {
    let dir = tempfile::tempdir().unwrap();
    let ca = portico_testkit::TestCa::new("Portico Test CA");
    let ca_file = ca.write(dir.path());
    let (cert, key) = ca.issue(&["a.test"]).write(dir.path(), "a");
    let (dcert, dkey) = ca.issue(&["default.test"]).write(dir.path(), "default");
    let b = Backend::echo("api").await;
    let a = Backend::echo("a").await;
    // `api` serves /api on a.test and b.test; only `a` brings a certificate,
    // for a.test. b.test must get the default certificate, and a request
    // on the default certificate's connection for b.test is not misdirected.
    let proxy = TestProxy::start(&format!(
        "[proxy]\nhttps_listen = \"127.0.0.1:0\"\ndefault_tls_cert = {:?}\ndefault_tls_key = {:?}\n{}{}",
        dcert.display().to_string(),
        dkey.display().to_string(),
        service("api", &["a.test", "b.test"], &[b.addr], "context_root = \"/api\""),
        service(
            "a",
            &["a.test"],
            &[a.addr],
            &format!(
                "tls_cert = {:?}\ntls_key = {:?}",
                cert.display().to_string(),
                key.display().to_string()
            )
        ),
    ))
    .await;
    let port = proxy.https_port();
    let ca = ca_file.display().to_string();
    let subject_of = |r: &portico_testkit::CurlResponse| {
        r.stderr
            .lines()
            .find_map(|l| l.split_once("subject: ").map(|(_, s)| s.trim().to_owned()))
            .unwrap_or_default()
    };
    for (host, want) in [("a.test", "CN=a.test"), ("b.test", "CN=default.test")] {
        let resolve = format!("{host}:{port}:127.0.0.1");
        let url = format!("https://{host}:{port}/api/x");
        let r = curl(&["-sS", "-v", "-k", "--resolve", &resolve, &url]).await;
        assert_eq!(r.status, 200, "{host}: {r:?}");
        assert!(subject_of(&r).contains(want), "{host}: {}", subject_of(&r));
    }
    // Without SNI (an IP address in the URL), the default certificate, and
    // b.test, which has no certificate of its own, may be asked for on it.
    let url = format!("https://127.0.0.1:{port}/api/x");
    let r = curl(&[
        "-sS",
        "-v",
        "--cacert",
        &ca,
        "-k",
        "-H",
        "Host: b.test",
        &url,
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        subject_of(&r).contains("CN=default.test"),
        "{}",
        subject_of(&r)
    );
    // a.test has its own: asked for on the default certificate, 421.
    let r = curl(&["-sS", "-k", "-H", "Host: a.test", &url]).await;
    assert_eq!(r.status, 421, "{r:?}");
}
