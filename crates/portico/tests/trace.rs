//! End-to-end tests of `portico trace`: a real `portico run` (child process,
//! with its admin API), real backends, a TCP forwarder standing in for the
//! external load balancer, a DNS server of the test's own, a TLS front
//! standing in for an HTTPS proxy, and `portico trace` itself as a child
//! process (exit code, table, JSON). One broken component at a time; each
//! must be named as the failing hop, with the right evidence, and no hop
//! that works may be blamed.
//!
//! Everything binds 127.0.0.1:0; every wait is bounded.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use portico_testkit::dns::DnsServer;
use portico_testkit::forwarder::Forwarder;
use portico_testkit::process::parse_logfmt;
use portico_testkit::tls_front::TlsFront;
use portico_testkit::{curl, dead_addr, Backend, Portico, TestCa};
use portico_trace::{Hop, HopResult, Outcome, Report};

const WAIT: Duration = Duration::from_secs(10);
const HOST: &str = "foo.app.test";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portico"))
}

fn loopback() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// A proxy with its admin API, its backends, an LB in front and a DNS
/// server that names the LB.
struct Cluster {
    _dir: tempfile::TempDir,
    backends: Vec<Backend>,
    _portico: Portico,
    proxy: SocketAddr,
    admin: SocketAddr,
    lb: Forwarder,
    dns: DnsServer,
}

fn config(hosts: &[&str], upstreams: &[SocketAddr]) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    let ups: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[proxy]\nhttp_listen = \"127.0.0.1:0\"\nproxy_id = \"lb-test-1\"\nconnect_timeout = \"1s\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[service]]\nname = \"simple_foo\"\nhosts = [{}]\nupstreams = [{}]\n",
        hosts.join(", "),
        ups.join(", ")
    )
}

async fn admin_addr(portico: &Portico) -> SocketAddr {
    let line = portico
        .wait_for_line(|l| l.contains(r#"msg="starting admin server""#), WAIT)
        .await;
    parse_logfmt(&line)["listen"].parse().unwrap()
}

impl Cluster {
    /// `backends` behind a service on `hosts`, plus `extra` upstreams (dead ones).
    async fn start(hosts: &[&str], backends: Vec<Backend>, extra: &[SocketAddr]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut upstreams: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
        upstreams.extend_from_slice(extra);
        let path = dir.path().join("portico.toml");
        std::fs::write(&path, config(hosts, &upstreams)).unwrap();
        let portico = Portico::spawn(bin(), &["run", "--config", path.to_str().unwrap()]);
        let proxy = portico.listen_addr().await;
        let admin = admin_addr(&portico).await;
        let lb = Forwarder::start(proxy).await;
        let dns = DnsServer::start(&[(HOST, loopback())]).await;
        Cluster {
            _dir: dir,
            backends,
            _portico: portico,
            proxy,
            admin,
            lb,
            dns,
        }
    }

    async fn echo(hosts: &[&str]) -> Cluster {
        let backends = vec![Backend::echo("task-1").await, Backend::echo("task-2").await];
        Cluster::start(hosts, backends, &[]).await
    }

    /// The full trace command line: the URL by name through the LB's port.
    fn args(&self) -> Vec<String> {
        vec![
            format!("http://{HOST}:{}/", self.lb.addr.port()),
            "--admin".into(),
            format!("http://{}", self.admin),
            "--proxy".into(),
            self.proxy.to_string(),
            "--lb".into(),
            self.lb.addr.to_string(),
            "--dns".into(),
            self.dns.addr.to_string(),
            "--timeout".into(),
            "2s".into(),
        ]
    }
}

struct Traced {
    exit: i32,
    report: Report,
    stdout: String,
}

/// Runs `portico trace ARGS --json`; also runs it without `--json` and
/// checks that the table ends with the same verdict and the same exit code.
async fn trace(args: &[String]) -> Traced {
    let (exit, stdout, stderr) = run_trace(args, true).await;
    let report: Report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("trace --json printed no report ({e}):\n{stdout}\n{stderr}"));
    let (table_exit, table, _) = run_trace(args, false).await;
    // Shown with the test's output when it fails (or with --no-capture).
    println!("portico trace {}\n{table}", args.join(" "));
    assert_eq!(table_exit, exit, "{table}");
    assert!(
        table.trim_end().ends_with(&report.verdict.line) || table.contains("verdict: "),
        "{table}"
    );
    // The table shows every hop row.
    for hop in &report.hops {
        assert!(table.contains(hop.hop.name()), "{table}");
    }
    Traced {
        exit,
        report,
        stdout: table,
    }
}

async fn run_trace(args: &[String], json: bool) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.arg("trace").args(args).kill_on_drop(true);
    if json {
        cmd.arg("--json");
    }
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("trace must end on its own")
        .expect("trace runs");
    assert!(started.elapsed() < Duration::from_secs(30));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn rows(report: &Report, hop: Hop) -> Vec<&HopResult> {
    report.hops.iter().filter(|h| h.hop == hop).collect()
}

fn only(report: &Report, hop: Hop) -> &HopResult {
    let r = rows(report, hop);
    assert_eq!(r.len(), 1, "one {hop:?} row expected: {report:#?}");
    r[0]
}

fn assert_passes(report: &Report, hops: &[Hop]) {
    for hop in hops {
        for row in rows(report, *hop) {
            assert_eq!(
                row.result,
                Outcome::Pass,
                "{hop:?} must pass: {row:#?}\n{}",
                report.render()
            );
        }
    }
}

/// The verdict names `hop` at `target`, and the verdict line carries `evidence`.
fn assert_verdict(t: &Traced, hop: Hop, target: &str, evidence: &[&str]) {
    assert_eq!(t.exit, 1, "{}", t.stdout);
    let v = &t.report.verdict;
    assert!(!v.ok);
    assert_eq!(v.hop, Some(hop), "{}", t.stdout);
    assert_eq!(v.target.as_deref(), Some(target), "{}", t.stdout);
    for e in evidence {
        assert!(v.line.contains(e), "verdict lacks {e:?}: {}", v.line);
    }
    // The table comes from a second run, whose evidence may differ: round
    // robin may reach the other upstream, and a certificate's "N days ago"
    // can tick over between the runs (CI saw both). The verdict's hop and
    // target ("FAIL at proxy 127.0.0.1:PORT") must agree.
    let line = v.line.strip_prefix("verdict: ").unwrap_or(&v.line);
    let hop_and_target = line.split(": ").next().unwrap_or(line);
    assert!(
        t.stdout.contains(&format!("verdict: {hop_and_target}: ")),
        "{hop_and_target:?} not in\n{}",
        t.stdout
    );
}

#[tokio::test]
async fn healthy_path_every_hop_passes() {
    let c = Cluster::echo(&[HOST]).await;
    let t = trace(&c.args()).await;
    assert_eq!(t.exit, 0, "{}", t.stdout);
    assert!(t.report.verdict.ok);
    assert!(t.stdout.contains("verdict: OK"), "{}", t.stdout);
    let hops: Vec<Hop> = t.report.hops.iter().map(|h| h.hop).collect();
    assert_eq!(
        hops,
        [
            Hop::Route,
            Hop::Upstream,
            Hop::Upstream,
            Hop::Proxy,
            Hop::Lb,
            Hop::Dns,
            Hop::Client
        ]
    );
    assert!(t.report.hops.iter().all(|h| h.result == Outcome::Pass));
    let version = t.report.config_version.clone().expect("a config version");
    assert_eq!(version.len(), 12);
    assert!(only(&t.report, Hop::Route).evidence.contains("simple_foo"));
    let probed: Vec<String> = rows(&t.report, Hop::Upstream)
        .iter()
        .map(|h| h.target.clone())
        .collect();
    let backends: Vec<String> = c.backends.iter().map(|b| b.addr.to_string()).collect();
    assert_eq!(probed, backends);
    let proxy = only(&t.report, Hop::Proxy);
    assert_eq!(proxy.status, Some(200));
    assert_eq!(proxy.proxy_id.as_deref(), Some("lb-test-1"));
    assert!(proxy.timings.connect_ms.is_some() && proxy.timings.first_byte_ms.is_some());
    let dns = only(&t.report, Hop::Dns);
    assert_eq!(dns.addresses, [loopback()]);
    assert!(dns.timings.dns_ms.is_some());
    let client = only(&t.report, Hop::Client);
    assert_eq!(client.target, c.lb.addr.to_string());
    assert!(client.timings.dns_ms.is_some());
    assert!(c.dns.queries() >= 2, "A and AAAA asked");

    // The raw JSON lists every hop with the documented fields.
    let (_, raw, _) = run_trace(&c.args(), true).await;
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    for key in ["target", "url", "config_version", "hops", "verdict"] {
        assert!(v.get(key).is_some(), "{key} missing: {raw}");
    }
    assert_eq!(v["hops"].as_array().unwrap().len(), 7);

    // curl, the way the article tests the same path, sees what trace saw.
    let lb_port = c.lb.addr.port();
    let resolve = format!("{HOST}:{lb_port}:127.0.0.1");
    let url = format!("http://{HOST}:{lb_port}/");
    let r = curl(&["--resolve", &resolve, &url]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-proxy-id"), Some("lb-test-1"));
    assert!(backends
        .iter()
        .any(|b| Some(b.as_str()) == r.header("x-upstream-addr")));
}

#[tokio::test]
async fn a_task_down_is_the_failing_upstream() {
    let dead = dead_addr().await;
    let backends = vec![Backend::echo("task-1").await];
    let c = Cluster::start(&[HOST], backends, &[dead]).await;
    let t = trace(&c.args()).await;
    assert_verdict(
        &t,
        Hop::Upstream,
        &dead.to_string(),
        &["connection refused", "is down"],
    );
    let ups = rows(&t.report, Hop::Upstream);
    assert_eq!(ups.len(), 2);
    assert_eq!(ups[0].result, Outcome::Pass);
    // The proxy retries on the live task, so everything outside works.
    assert_passes(
        &t.report,
        &[Hop::Route, Hop::Proxy, Hop::Lb, Hop::Dns, Hop::Client],
    );
}

#[tokio::test]
async fn an_ejected_task_is_shown_in_routes_and_in_the_trace() {
    let dead = dead_addr().await;
    let backends = vec![Backend::echo("task-1").await];
    let c = Cluster::start(&[HOST], backends, &[dead]).await;
    // Requests the proxy sends to the dead task fail to connect (and go on
    // to the live one); five in a row eject it.
    for _ in 0..12 {
        let out = curl(&[
            "-H",
            &format!("Host: {HOST}"),
            &format!("http://{}/", c.proxy),
        ])
        .await;
        assert_eq!(out.status, 200, "{out:?}");
    }
    let routes = curl(&[&format!("http://{}/routes?host={HOST}", c.admin)]).await;
    assert_eq!(routes.status, 200, "{routes:?}");
    let routes: serde_json::Value = serde_json::from_str(&routes.body).unwrap();
    let health = &routes["routes"][0]["health"];
    let dead_row = health
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["upstream"] == dead.to_string())
        .unwrap_or_else(|| panic!("{routes}"));
    assert_eq!(dead_row["state"], "ejected", "{routes}");
    assert!(
        dead_row["reason"]
            .as_str()
            .unwrap()
            .contains("5 failures in a row"),
        "{routes}"
    );
    assert!(
        dead_row["until"].as_str().unwrap().ends_with('Z'),
        "{routes}"
    );

    let t = trace(&c.args()).await;
    let route = only(&t.report, Hop::Route);
    assert!(
        route.evidence.contains("1 of them down"),
        "{}",
        route.evidence
    );
    let row = rows(&t.report, Hop::Upstream)
        .into_iter()
        .find(|r| r.target == dead.to_string())
        .unwrap();
    assert!(
        row.evidence.contains("ejected by the proxy until")
            && row.evidence.contains("failures in a row"),
        "{}",
        row.evidence
    );
}

#[tokio::test]
async fn a_host_typo_is_the_failing_route_with_the_nearest_host() {
    let c = Cluster::echo(&["foo.app.tset"]).await;
    let t = trace(&c.args()).await;
    let target = format!("admin {}", c.admin);
    assert_verdict(
        &t,
        Hop::Route,
        &target,
        &[
            "no route for foo.app.test",
            "foo.app.tset",
            "simple_foo",
            "com.docker.lb.hosts",
        ],
    );
    let version = t.report.config_version.clone().unwrap();
    assert!(t.report.verdict.line.contains(&version));
    assert_eq!(only(&t.report, Hop::Upstream).result, Outcome::Skip);
    // The proxy does answer 503 for it: failing too, with the proxy's own words.
    let proxy = only(&t.report, Hop::Proxy);
    assert_eq!(proxy.result, Outcome::Fail);
    assert_eq!(proxy.status, Some(503));
    assert!(
        proxy.evidence.contains("no service is configured"),
        "{proxy:?}"
    );
    assert_passes(&t.report, &[Hop::Dns]);
}

#[tokio::test]
async fn a_proxy_node_not_listening_is_the_failing_proxy() {
    let c = Cluster::echo(&[HOST]).await;
    let down = dead_addr().await;
    let mut args = c.args();
    args.extend(["--proxy".into(), down.to_string()]);
    let t = trace(&args).await;
    assert_verdict(
        &t,
        Hop::Proxy,
        &down.to_string(),
        &["connection refused", "nothing listens"],
    );
    let proxies = rows(&t.report, Hop::Proxy);
    assert_eq!(proxies.len(), 2);
    assert_eq!(proxies[0].target, c.proxy.to_string());
    assert_eq!(proxies[0].result, Outcome::Pass);
    assert_passes(
        &t.report,
        &[Hop::Route, Hop::Upstream, Hop::Lb, Hop::Dns, Hop::Client],
    );
}

#[tokio::test]
async fn an_lb_forwarding_to_the_wrong_port_is_the_failing_lb() {
    let c = Cluster::echo(&[HOST]).await;
    c.lb.set_target(dead_addr().await);
    let t = trace(&c.args()).await;
    assert_verdict(
        &t,
        Hop::Lb,
        &c.lb.addr.to_string(),
        &[
            "closed without a response",
            "wrong port",
            &c.proxy.to_string(),
        ],
    );
    assert_passes(
        &t.report,
        &[Hop::Route, Hop::Upstream, Hop::Proxy, Hop::Dns],
    );
    let client = only(&t.report, Hop::Client);
    assert_eq!(client.result, Outcome::Fail);
    assert!(
        client.evidence.contains("closed without a response"),
        "{client:?}"
    );
}

#[tokio::test]
async fn dns_answering_another_address_is_the_failing_dns() {
    let c = Cluster::echo(&[HOST]).await;
    let wrong = IpAddr::from([127, 0, 0, 2]);
    let dns = DnsServer::start(&[(HOST, wrong)]).await;
    let mut args = c.args();
    let i = args.iter().position(|a| a == "--dns").unwrap();
    args[i + 1] = dns.addr.to_string();
    let t = trace(&args).await;
    assert_verdict(
        &t,
        Hop::Dns,
        &dns.addr.to_string(),
        &["127.0.0.2", "not the load balancer", "127.0.0.1"],
    );
    assert_eq!(only(&t.report, Hop::Dns).addresses, [wrong]);
    assert_passes(&t.report, &[Hop::Route, Hop::Upstream, Hop::Proxy, Hop::Lb]);
}

#[tokio::test]
async fn an_unknown_name_in_dns_is_the_failing_dns() {
    let c = Cluster::echo(&[HOST]).await;
    let dns = DnsServer::start(&[("other.test", loopback())]).await;
    let mut args = c.args();
    let i = args.iter().position(|a| a == "--dns").unwrap();
    args[i + 1] = dns.addr.to_string();
    let t = trace(&args).await;
    assert_verdict(
        &t,
        Hop::Dns,
        &dns.addr.to_string(),
        &["NXDOMAIN", "create an A record"],
    );
    assert_eq!(only(&t.report, Hop::Client).result, Outcome::Skip);
}

#[tokio::test]
async fn an_upstream_answering_500_is_the_failing_upstream() {
    let good = Backend::echo("task-1").await;
    let bad = Backend::status("task-2", 500).await;
    let bad_addr = bad.addr;
    let c = Cluster::start(&[HOST], vec![good, bad], &[]).await;
    let t = trace(&c.args()).await;
    assert_verdict(
        &t,
        Hop::Upstream,
        &bad_addr.to_string(),
        &["answered 500", "logs"],
    );
    // Whichever task the proxy picks, the proxy itself works.
    assert_passes(
        &t.report,
        &[Hop::Route, Hop::Proxy, Hop::Lb, Hop::Dns, Hop::Client],
    );
}

#[tokio::test]
async fn without_an_admin_api_the_outer_hops_still_run() {
    let c = Cluster::echo(&[HOST]).await;
    let mut args = c.args();
    let i = args.iter().position(|a| a == "--admin").unwrap();
    args.drain(i..i + 2);
    let t = trace(&args).await;
    assert_eq!(t.exit, 0, "{}", t.stdout);
    assert_eq!(only(&t.report, Hop::Route).result, Outcome::Skip);
    assert_eq!(only(&t.report, Hop::Upstream).result, Outcome::Skip);
    assert!(t
        .report
        .verdict
        .line
        .contains("not checked: route, upstream"));
    assert_passes(&t.report, &[Hop::Proxy, Hop::Lb, Hop::Dns, Hop::Client]);
    assert!(t.report.config_version.is_none());
}

#[tokio::test]
async fn a_hung_proxy_times_out_and_trace_ends() {
    let hung = Backend::hang("hung-proxy").await;
    let args = vec![
        HOST.to_owned(),
        "--proxy".into(),
        hung.addr.to_string(),
        "--resolve".into(),
        format!("{HOST}:80:127.0.0.2"),
        "--timeout".into(),
        "300ms".into(),
    ];
    let started = Instant::now();
    let t = trace(&args).await;
    assert!(started.elapsed() < WAIT, "took {:?}", started.elapsed());
    assert_verdict(
        &t,
        Hop::Proxy,
        &hung.addr.to_string(),
        &["no response within 300ms"],
    );
}

#[tokio::test]
async fn bad_usage_exits_2() {
    for args in [
        vec![],
        vec!["foo.test".to_owned(), "--resolve".into(), "nonsense".into()],
        vec![
            "foo.test".to_owned(),
            "--proxy".into(),
            "not-an-addr".into(),
        ],
        vec!["ftp://foo.test".to_owned()],
        vec![
            "https://foo.test/".to_owned(),
            "--cacert".into(),
            "/nonexistent/ca.pem".into(),
        ],
        vec!["foo.test".to_owned(), "--timeout".into(), "0s".into()],
    ] {
        let (exit, stdout, stderr) = run_trace(&args, false).await;
        assert_eq!(exit, 2, "{args:?}: {stdout}{stderr}");
        assert!(!stderr.is_empty(), "{args:?}");
    }
}

/// An HTTPS hop: a TLS front presenting `issued` forwards to the proxy.
async fn tls_trace(c: &Cluster, ca_path: &Path, front: &TlsFront) -> Traced {
    let port = front.addr.port();
    let args = vec![
        format!("https://{HOST}:{port}/"),
        "--admin".into(),
        format!("http://{}", c.admin),
        "--proxy".into(),
        front.addr.to_string(),
        "--resolve".into(),
        format!("{HOST}:{port}:127.0.0.1"),
        "--cacert".into(),
        ca_path.to_str().unwrap().to_owned(),
        "--timeout".into(),
        "2s".into(),
    ];
    trace(&args).await
}

#[tokio::test]
async fn https_hop_with_a_good_certificate_passes() {
    let c = Cluster::echo(&[HOST]).await;
    let ca = TestCa::new("Portico Test CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write(dir.path());
    let front = TlsFront::start(ca.issue(&[HOST]).server_config(&[b"http/1.1"]), c.proxy).await;
    let t = tls_trace(&c, &ca_path, &front).await;
    assert_eq!(t.exit, 0, "{}", t.stdout);
    let proxy = only(&t.report, Hop::Proxy);
    let tls = proxy.tls.as_ref().expect("a TLS report");
    assert!(tls.verified, "{tls:?}");
    assert_eq!(tls.names, [HOST]);
    assert_eq!(tls.server_name, HOST);
    assert!(tls.expires_in_days > 30);
    assert!(proxy.timings.tls_ms.is_some());
    assert!(proxy.evidence.contains("(verified)"), "{}", proxy.evidence);
    assert_passes(&t.report, &[Hop::Client]);

    // curl agrees, with SNI by --resolve as the article does it.
    let port = front.addr.port();
    let resolve = format!("{HOST}:{port}:127.0.0.1");
    let url = format!("https://{HOST}:{port}/");
    let r = curl(&[
        "--cacert",
        ca_path.to_str().unwrap(),
        "--resolve",
        &resolve,
        &url,
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn a_certificate_for_the_wrong_name_is_the_failing_proxy() {
    let c = Cluster::echo(&[HOST]).await;
    let ca = TestCa::new("Portico Test CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write(dir.path());
    let front = TlsFront::start(
        ca.issue(&["bar.app.test"]).server_config(&[b"http/1.1"]),
        c.proxy,
    )
    .await;
    let t = tls_trace(&c, &ca_path, &front).await;
    assert_verdict(
        &t,
        Hop::Proxy,
        &front.addr.to_string(),
        &["certificate is for bar.app.test, not foo.app.test", "SNI"],
    );
    let tls = only(&t.report, Hop::Proxy).tls.clone().unwrap();
    assert!(!tls.verified);
    assert_passes(&t.report, &[Hop::Route, Hop::Upstream]);
}

#[tokio::test]
async fn an_expired_certificate_is_the_failing_proxy() {
    let c = Cluster::echo(&[HOST]).await;
    let ca = TestCa::new("Portico Test CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write(dir.path());
    let front = TlsFront::start(
        ca.issue_valid(&[HOST], -400, -30)
            .server_config(&[b"http/1.1"]),
        c.proxy,
    )
    .await;
    let t = tls_trace(&c, &ca_path, &front).await;
    assert_verdict(
        &t,
        Hop::Proxy,
        &front.addr.to_string(),
        &["expired", "renew"],
    );
    let tls = only(&t.report, Hop::Proxy).tls.clone().unwrap();
    assert!(tls.expires_in_days < 0);
    assert_eq!(tls.problems.len(), 1, "{tls:?}");
    assert_passes(&t.report, &[Hop::Route, Hop::Upstream]);

    // curl refuses it too.
    let port = front.addr.port();
    let resolve = format!("{HOST}:{port}:127.0.0.1");
    let url = format!("https://{HOST}:{port}/");
    let r = curl(&[
        "--cacert",
        ca_path.to_str().unwrap(),
        "--resolve",
        &resolve,
        &url,
    ])
    .await;
    assert_ne!(r.exit, 0, "{r:?}");
}

#[tokio::test]
async fn an_untrusted_chain_is_reported_with_the_trust_used() {
    let c = Cluster::echo(&[HOST]).await;
    let ca = TestCa::new("Portico Test CA");
    let other = TestCa::new("Some Other CA");
    let dir = tempfile::tempdir().unwrap();
    let other_path = other.write(dir.path());
    let front = TlsFront::start(ca.issue(&[HOST]).server_config(&[b"http/1.1"]), c.proxy).await;
    let t = tls_trace(&c, &other_path, &front).await;
    assert_verdict(
        &t,
        Hop::Proxy,
        &front.addr.to_string(),
        &["does not lead to", "--cacert"],
    );
}

/// Portico's own HTTPS listener as the proxy hop: the certificate chosen by
/// SNI is checked, and a host served with the default certificate (for
/// another name) is named as the failing proxy.
#[tokio::test]
async fn portico_https_listener_certificates_are_checked_by_sni() {
    let backend = Backend::echo("task-1").await;
    let ca = TestCa::new("Portico Test CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write(dir.path());
    let (foo_cert, foo_key) = ca.issue(&[HOST]).write(dir.path(), "foo");
    let (def_cert, def_key) = ca.issue(&["default.app.test"]).write(dir.path(), "default");
    let text = format!(
        "[proxy]\nhttp_listen = \"127.0.0.1:0\"\nhttps_listen = \"127.0.0.1:0\"\nproxy_id = \"lb-tls-1\"\n\
         default_tls_cert = {def_cert:?}\ndefault_tls_key = {def_key:?}\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[service]]\nname = \"simple_foo\"\nhosts = [\"{HOST}\"]\nupstreams = [\"{up}\"]\n\
         tls_cert = {foo_cert:?}\ntls_key = {foo_key:?}\n\n\
         [[service]]\nname = \"plain_bar\"\nhosts = [\"bar.app.test\"]\nupstreams = [\"{up}\"]\n",
        up = backend.addr,
    );
    let path = dir.path().join("portico.toml");
    std::fs::write(&path, text).unwrap();
    let portico = Portico::spawn(bin(), &["run", "--config", path.to_str().unwrap()]);
    portico.listen_addr().await;
    let admin = admin_addr(&portico).await;
    let line = portico
        .wait_for_line(|l| l.contains(r#"msg="starting HTTPS server""#), WAIT)
        .await;
    let https: SocketAddr = parse_logfmt(&line)["listen"].parse().unwrap();
    let args = |host: &str| {
        vec![
            format!("https://{host}:{}/", https.port()),
            "--admin".into(),
            format!("http://{admin}"),
            "--proxy".into(),
            https.to_string(),
            "--resolve".into(),
            format!("{host}:{}:127.0.0.1", https.port()),
            "--cacert".into(),
            ca_path.to_str().unwrap().to_owned(),
            "--timeout".into(),
            "2s".into(),
        ]
    };
    let t = trace(&args(HOST)).await;
    assert_eq!(t.exit, 0, "{}", t.stdout);
    let proxy = only(&t.report, Hop::Proxy);
    assert_eq!(proxy.proxy_id.as_deref(), Some("lb-tls-1"));
    let tls = proxy.tls.as_ref().unwrap();
    assert!(tls.verified && tls.names == [HOST], "{tls:?}");

    let t = trace(&args("bar.app.test")).await;
    assert_verdict(
        &t,
        Hop::Proxy,
        &https.to_string(),
        &[
            "certificate is for default.app.test, not bar.app.test",
            "tls_cert",
        ],
    );
    assert_passes(&t.report, &[Hop::Route, Hop::Upstream]);
}
