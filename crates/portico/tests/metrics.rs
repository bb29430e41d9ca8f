//! `GET /metrics` end to end: a real `portico run` (child process) with an
//! admin API, known traffic sent with real curl (both request paths, TLS,
//! a dead upstream, a failing one, unknown hosts), then the exposition
//! read back: the counters equal what was sent, `promtool check metrics`
//! accepts it, unknown hosts never become series, and a service that
//! leaves the config leaves the exposition.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use portico_testkit::raw::Wire;
use portico_testkit::{curl, dead_addr, promtool_accepts, wait_until, Backend, Portico, TestCa};

const WAIT: Duration = Duration::from_secs(10);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portico"))
}

/// A backend answering 500 on `/fail` and 200 (its name) elsewhere.
async fn backend(name: &'static str) -> Backend {
    Backend::start(name, move |req| async move {
        let status = if req.uri().path() == "/fail" {
            500
        } else {
            200
        };
        let mut r = hyper::Response::new(Full::new(Bytes::from(format!("{name}\n"))));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        r
    })
    .await
}

struct Setup {
    dir: tempfile::TempDir,
    ca: TestCa,
    web: Backend,
    secure: Backend,
    dead: SocketAddr,
}

impl Setup {
    fn config(&self, with_dead: bool) -> String {
        let (cert, key) = self
            .ca
            .issue(&["secure.test"])
            .write(self.dir.path(), "secure");
        let mut s = format!(
            "[proxy]\nhttp_listen = \"127.0.0.1:0\"\nhttps_listen = \"127.0.0.1:0\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[service]]\nname = \"web\"\nhosts = [\"web.test\"]\nupstreams = [\"{}\"]\n\n\
             [[service]]\nname = \"secure\"\nhosts = [\"secure.test\"]\nupstreams = [\"{}\"]\n\
             tls_cert = {:?}\ntls_key = {:?}\n\n",
            self.web.addr,
            self.secure.addr,
            cert.display().to_string(),
            key.display().to_string(),
        );
        if with_dead {
            s.push_str(&format!(
                "[[service]]\nname = \"dead\"\nhosts = [\"dead.test\"]\nupstreams = [\"{}\"]\n",
                self.dead
            ));
        }
        s
    }
}

/// Scrapes `/metrics`; returns the body and each sample (`name{labels}` →
/// value).
async fn scrape(admin: SocketAddr) -> (String, BTreeMap<String, f64>) {
    let r = curl(&[&format!("http://{admin}/metrics")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "{r:?}"
    );
    let samples = r
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l:?}"));
            (key.to_owned(), value.parse::<f64>().unwrap_or(f64::NAN))
        })
        .collect();
    (r.body, samples)
}

fn value(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key} in:\n{}", keys(samples).join("\n")))
}

fn keys(samples: &BTreeMap<String, f64>) -> Vec<String> {
    samples.keys().cloned().collect()
}

#[tokio::test]
async fn metrics_count_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Portico Metrics CA");
    ca.write(dir.path());
    let setup = Setup {
        web: backend("web-1").await,
        secure: backend("secure-1").await,
        dead: dead_addr().await,
        ca,
        dir,
    };
    let path = setup.dir.path().join("portico.toml");
    std::fs::write(&path, setup.config(true)).unwrap();
    let portico = Portico::spawn(bin(), &["run", "--config", path.to_str().unwrap()]);
    let admin = portico.admin_addr().await;
    let http = portico.listen_addr().await;
    let https = portico.https_addr().await;

    // Known traffic.
    let get = |host: &'static str, path: &'static str| async move {
        curl(&[
            "-H",
            &format!("Host: {host}"),
            &format!("http://{http}{path}"),
        ])
        .await
    };
    for _ in 0..4 {
        assert_eq!(get("web.test", "/").await.status, 200);
    }
    for _ in 0..3 {
        let r = curl(&[
            "-H",
            "Host: web.test",
            "--data-binary",
            "hello",
            &format!("http://{http}/upload"),
        ])
        .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    for _ in 0..2 {
        assert_eq!(get("web.test", "/fail").await.status, 500);
        assert_eq!(get("dead.test", "/").await.status, 502);
    }
    // A transfer coding no upstream could be sent: 501, before any upstream.
    let mut wire = Wire::connect(http).await;
    wire.send(
        "POST /upload HTTP/1.1\r\nHost: web.test\r\n\
         Transfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(wire.read_response("POST").await.unwrap().status, 501);
    drop(wire);
    for i in 0..5 {
        let r = curl(&[
            "-H",
            &format!("Host: nobody-{i}.test"),
            &format!("http://{http}/"),
        ])
        .await;
        assert_eq!(r.status, 503, "{r:?}");
    }
    let ca_file = setup.dir.path().join("ca.crt");
    let r = curl(&[
        "--cacert",
        ca_file.to_str().unwrap(),
        "--resolve",
        &format!("secure.test:{}:127.0.0.1", https.port()),
        &format!("https://secure.test:{}/", https.port()),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // A name with no certificate: the handshake is refused.
    let r = curl(&[
        "--cacert",
        ca_file.to_str().unwrap(),
        "--resolve",
        &format!("nosuch.test:{}:127.0.0.1", https.port()),
        &format!("https://nosuch.test:{}/", https.port()),
    ])
    .await;
    assert_ne!(r.exit, 0, "{r:?}");

    let (body, m) = scrape(admin).await;
    let req = |service: &str, method: &str, status: &str| {
        format!(
            "portico_requests_total{{service=\"{service}\",method=\"{method}\",status=\"{status}\"}}"
        )
    };
    assert_eq!(value(&m, &req("web", "GET", "2xx")), 4.0);
    assert_eq!(value(&m, &req("web", "POST", "2xx")), 3.0);
    assert_eq!(value(&m, &req("web", "GET", "5xx")), 2.0);
    assert_eq!(value(&m, &req("dead", "GET", "5xx")), 2.0);
    assert_eq!(value(&m, &req("secure", "GET", "2xx")), 1.0);
    assert!(
        !m.contains_key(&req("web", "GET", "4xx")),
        "no zero series for status classes never seen"
    );
    assert_eq!(
        value(&m, "portico_request_body_bytes_total{service=\"web\"}"),
        15.0
    );
    assert_eq!(
        value(
            &m,
            "portico_request_duration_seconds_count{service=\"web\"}"
        ),
        9.0
    );
    assert_eq!(
        value(
            &m,
            "portico_request_duration_seconds_bucket{service=\"web\",le=\"+Inf\"}"
        ),
        9.0
    );
    let web_up = format!("service=\"web\",upstream=\"{}\"", setup.web.addr);
    let dead_up = format!("service=\"dead\",upstream=\"{}\"", setup.dead);
    assert_eq!(
        value(&m, &format!("portico_upstream_requests_total{{{web_up}}}")),
        9.0
    );
    assert_eq!(
        value(
            &m,
            &format!("portico_upstream_failures_total{{{web_up},cause=\"5xx\"}}")
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            &format!("portico_upstream_failures_total{{{dead_up},cause=\"connect\"}}")
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            &format!("portico_upstream_response_time_seconds_count{{{web_up}}}")
        ),
        9.0
    );
    assert_eq!(value(&m, &format!("portico_upstream_up{{{web_up}}}")), 1.0);
    assert_eq!(
        value(
            &m,
            "portico_unforwarded_requests_total{reason=\"no_route\"}"
        ),
        5.0
    );
    assert_eq!(
        value(
            &m,
            "portico_unforwarded_requests_total{reason=\"not_implemented\"}"
        ),
        1.0
    );
    assert_eq!(value(&m, "portico_tls_handshakes_total"), 1.0);
    assert_eq!(
        value(
            &m,
            "portico_tls_handshake_failures_total{reason=\"unknown_name\"}"
        ),
        1.0
    );
    let expiry: Vec<&String> = m
        .keys()
        .filter(|k| {
            k.starts_with("portico_tls_certificate_expiry_timestamp_seconds{owner=\"secure\"")
        })
        .collect();
    assert_eq!(expiry.len(), 1, "{expiry:?}");
    assert!(m[expiry[0]] > 1.7e9, "{}", m[expiry[0]]);
    assert_eq!(value(&m, "portico_services"), 3.0);
    assert!(value(&m, "process_resident_memory_bytes") > 1e6);
    assert!(value(&m, "process_open_fds") > 5.0);
    assert!(value(&m, "process_start_time_seconds") > 1.7e9);
    let info: Vec<&String> = m
        .keys()
        .filter(|k| k.starts_with("portico_config_info{version=\""))
        .collect();
    assert_eq!(info.len(), 1, "{info:?}");
    promtool_accepts(&body).await;

    // 10,000 requests to random unknown hosts add no series.
    let series = |m: &BTreeMap<String, f64>| -> Vec<String> {
        m.keys()
            .filter(|k| !k.starts_with("process_"))
            .cloned()
            .collect()
    };
    let before = series(&m);
    let mut wire = Wire::connect(http).await;
    for i in 0..10_000u32 {
        let host = format!("{:08x}.random.test", fastrand::u32(..) ^ i);
        wire.send(format!("GET /x{i} HTTP/1.1\r\nHost: {host}\r\n\r\n"))
            .await
            .unwrap();
        let r = wire.read_response("GET").await.unwrap();
        assert_eq!(r.status, 503);
    }
    let (_, m) = scrape(admin).await;
    assert_eq!(series(&m), before, "unknown hosts added series");
    assert_eq!(
        value(
            &m,
            "portico_unforwarded_requests_total{reason=\"no_route\"}"
        ),
        10_005.0
    );

    // A service that leaves the config leaves the exposition; the others'
    // counts go on.
    std::fs::write(&path, setup.config(false)).unwrap();
    wait_until(WAIT, "the dead service's series to go", || async move {
        let (body, _) = scrape(admin).await;
        !body.contains("service=\"dead\"")
    })
    .await;
    let (body, m) = scrape(admin).await;
    assert_eq!(value(&m, "portico_services"), 2.0);
    assert_eq!(value(&m, &req("web", "GET", "2xx")), 4.0);
    assert!(!body.contains("dead"), "{body}");
    promtool_accepts(&body).await;
    let reloads = |outcome: &str| {
        format!("portico_config_reloads_total{{source=\"file\",outcome=\"{outcome}\"}}")
    };
    assert_eq!(value(&m, &reloads("applied")), 1.0);
    assert!(value(&m, "portico_config_last_reload_success_timestamp_seconds") > 1.7e9);

    // A config that does not load is counted as rejected; the version in
    // force stays.
    let version = |m: &BTreeMap<String, f64>| -> String {
        m.keys()
            .find(|k| k.starts_with("portico_config_info"))
            .cloned()
            .unwrap()
    };
    let before = version(&m);
    std::fs::write(&path, "[proxy]\nhttp_listen = 42\n").unwrap();
    wait_until(WAIT, "the rejected reload to be counted", || async move {
        let (_, m) = scrape(admin).await;
        m.get(&reloads("rejected")) == Some(&1.0)
    })
    .await;
    let (_, m) = scrape(admin).await;
    assert_eq!(version(&m), before);
    assert_eq!(value(&m, &reloads("applied")), 1.0);
}

/// A scraper asking for OpenMetrics gets it.
#[tokio::test]
async fn openmetrics_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.toml");
    std::fs::write(
        &path,
        "[proxy]\nhttp_listen = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let portico = Portico::spawn(bin(), &["run", "--config", path.to_str().unwrap()]);
    let admin = portico.admin_addr().await;
    let r = curl(&[
        "-H",
        "Accept: application/openmetrics-text; version=1.0.0",
        &format!("http://{admin}/metrics"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{r:?}"
    );
    assert!(r.body.ends_with("# EOF\n"), "{}", r.body);
    assert!(
        r.body.contains("portico_config_info{version="),
        "{}",
        r.body
    );
}
