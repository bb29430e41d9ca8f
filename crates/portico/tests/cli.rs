//! End-to-end tests of the `portico` binary: the CLI (`--version`, `check`,
//! `run`, `demo`), its log lines, hot reload, signals and graceful shutdown.
//!
//! Each test runs the real binary as a child process (killed on drop) with a
//! config in its own temporary directory, listening on 127.0.0.1:0; backends
//! run in the test's runtime. Nothing sleeps to synchronise: every wait is
//! on a condition (a log line, a response) with a bounded timeout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use portico_testkit::process::parse_logfmt;
use portico_testkit::{curl, wait_until, Backend, Echo, HttpClient, Portico};
use tokio::sync::Notify;

/// The bound on every wait for the process or the network.
const WAIT: Duration = Duration::from_secs(10);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portico"))
}

/// One `[[service]]` table.
fn service(name: &str, hosts: &[&str], upstreams: &[SocketAddr]) -> String {
    portico_testkit::service_toml(name, hosts, upstreams, "")
}

/// A whole config: `[proxy]` on 127.0.0.1:0 with `proxy_extra` lines, then `services`.
fn config(proxy_extra: &str, services: &[String]) -> String {
    format!(
        "[proxy]\nhttp_listen = \"127.0.0.1:0\"\n{proxy_extra}\n{}",
        services.concat()
    )
}

/// Replaces `path` the way config managers do: a new file in the same
/// directory, renamed over the old one, so the proxy never reads half a file.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Writes `text` as `portico.toml` in `dir` and runs `portico ARGS... run
/// --config FILE`; returns the process, its listen address and the file.
async fn run_config(
    dir: &Path,
    text: &str,
    global_args: &[&str],
) -> (Portico, SocketAddr, PathBuf) {
    run_config_env(dir, text, global_args, &[]).await
}

/// [`run_config`] with extra environment variables for the process.
async fn run_config_env(
    dir: &Path,
    text: &str,
    global_args: &[&str],
    env: &[(&str, &str)],
) -> (Portico, SocketAddr, PathBuf) {
    let path = dir.join("portico.toml");
    write_atomic(&path, text);
    let path_str = path.to_str().unwrap().to_owned();
    let mut args: Vec<&str> = global_args.to_vec();
    args.extend(["run", "--config", &path_str]);
    let portico = Portico::spawn_with_env(bin(), &args, env);
    let addr = portico.listen_addr().await;
    // The file is watched only from this line on: an edit made before it
    // would go unnoticed (see the report on the startup race).
    portico
        .wait_for_line(msg_is("watching config file"), WAIT)
        .await;
    (portico, addr, path)
}

/// Polls `host` through the proxy until it answers `want`; on timeout,
/// panics with the proxy's log (access lines left out).
async fn wait_status(
    portico: &Portico,
    probe: &HttpClient,
    host: &str,
    want: StatusCode,
    what: &str,
) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let last = match probe.get(host, "/").await {
            Ok((status, _, _)) if status == want => return,
            Ok((status, _, body)) => format!("{status} {}", String::from_utf8_lossy(&body)),
            Err(e) => e,
        };
        if std::time::Instant::now() >= deadline {
            let log: Vec<String> = portico
                .stderr_lines()
                .into_iter()
                .filter(|l| msg_of(l).as_deref() != Some("request"))
                .collect();
            panic!(
                "{what}: {host} did not answer {want} within {WAIT:?} (last: {last})\n{}",
                log.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the binary to completion (for `--version` and `check`).
async fn output(args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(bin())
            .args(args)
            .env_remove("PORTICO_LOG")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("portico finished in time")
    .expect("portico runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `text` as `name` in a new directory and runs `portico check` on
/// it, which must fail: its stdout, and the file's path as it names it.
async fn check_fails(name: &str, text: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let (code, stdout, stderr) = output(&["check", "--config", path.to_str().unwrap()]).await;
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    (stdout, path.display().to_string())
}

/// The `msg` of a log line, logfmt or JSON.
fn msg_of(line: &str) -> Option<String> {
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        return v.get("msg")?.as_str().map(str::to_owned);
    }
    parse_logfmt(line).remove("msg")
}

/// A predicate for log lines whose `msg` is exactly `msg`.
fn msg_is(msg: &'static str) -> impl Fn(&str) -> bool {
    move |line| msg_of(line).as_deref() == Some(msg)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `^\d+\.\d{3}$`: seconds with milliseconds, as nginx prints them.
fn is_seconds(s: &str) -> bool {
    match s.split_once('.') {
        Some((secs, ms)) => {
            !secs.is_empty()
                && secs.bytes().all(|b| b.is_ascii_digit())
                && ms.len() == 3
                && ms.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn is_rfc3339_seconds(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// `portico/<semver> (<7 hex or unknown>) linux/amd64`.
fn assert_server_info(s: &str) {
    let rest = s
        .strip_prefix("portico/")
        .unwrap_or_else(|| panic!("{s:?} does not start with portico/"));
    let (semver, rest) = rest
        .split_once(" (")
        .unwrap_or_else(|| panic!("{s:?}: no ' (' after the version"));
    let core = semver.split(['-', '+']).next().unwrap();
    let parts: Vec<&str> = core.split('.').collect();
    assert!(
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
        "{s:?}: {semver:?} is not a semantic version"
    );
    let (sha, platform) = rest
        .split_once(") ")
        .unwrap_or_else(|| panic!("{s:?}: no ') ' after the commit"));
    assert!(
        sha == "unknown" || is_hex(sha, 7),
        "{s:?}: {sha:?} is neither 7 hex digits nor unknown"
    );
    assert_eq!(platform, "linux/amd64", "{s:?}");
}

/// The headers every proxied answer carries, whether routed or not.
fn assert_identity_headers(r: &portico_testkit::CurlResponse, proxy_id: &str, server_info: &str) {
    let id = r.header("x-request-id").expect("x-request-id");
    assert!(is_hex(id, 32), "x-request-id {id:?}");
    assert_eq!(r.header("x-proxy-id"), Some(proxy_id));
    assert_eq!(r.header("x-server-info"), Some(server_info));
}

async fn version_string() -> String {
    let (code, stdout, stderr) = output(&["--version"]).await;
    assert_eq!(code, 0, "stderr: {stderr}");
    stdout.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_flag_matches_the_server_info_header() {
    let version = version_string().await;
    assert_server_info(&version);
    let (code, short, _) = output(&["-V"]).await;
    assert_eq!(code, 0);
    assert_eq!(short.trim(), version);

    let backend = Backend::echo("web").await;
    let dir = tempfile::tempdir().unwrap();
    let text = config("", &[service("web", &["web.test"], &[backend.addr])]);
    let (_portico, addr, _) = run_config(dir.path(), &text, &[]).await;
    let r = curl(&["-H", "Host: web.test", &format!("http://{addr}/")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-server-info"), Some(version.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.toml");
    let text = config(
        "proxy_id = \"lb-1\"\nconnect_timeout = \"250ms\"",
        &[
            service(
                "a",
                &["a.test", "*.a.test"],
                &["127.0.0.1:9001".parse().unwrap()],
            ),
            service("b", &["b.test"], &[]),
        ],
    );
    std::fs::write(&path, text).unwrap();
    let (code, stdout, stderr) = output(&["check", "--config", path.to_str().unwrap()]).await;
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(
        stdout.starts_with(&format!("{}: ok: 2 service(s), version ", path.display())),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_lists_every_problem_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = r#"[proxy]
http_listen = "nowhere"

[[service]]
name = "a"
hosts = []
upstreams = ["127.0.0.1:1"]

[[service]]
name = "a"
hosts = ["b.test"]
upstreams = ["not-an-address"]
"#;
    std::fs::write(&path, text).unwrap();
    let (code, stdout, stderr) = output(&["check", "--config", path.to_str().unwrap()]).await;
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    let p = path.display();
    let expected = [
        format!("{p}:2:15: proxy.http_listen: \"nowhere\" is not an IP:PORT address"),
        format!("{p}:6:9: service[0] (a).hosts: must list at least one host name"),
        format!(
            "{p}:10:8: service[1] (a).name: duplicate service name \"a\" (first defined on line 5)"
        ),
        format!(
            "{p}:12:14: service[1] (a).upstreams: \"not-an-address\" is not an IP:PORT address \
             (host names are not resolved)"
        ),
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    for want in &expected {
        assert!(
            lines.contains(&want.as_str()),
            "missing {want:?} in:\n{stdout}"
        );
    }
    assert!(
        lines.contains(&format!("{p}: 4 problem(s)").as_str()),
        "no problem count in:\n{stdout}"
    );
    assert_eq!(lines.len(), expected.len() + 1, "{stdout}");

    // An unknown key is a parse error: reported alone, located and named.
    let path = dir.path().join("unknown.toml");
    std::fs::write(&path, "[proxy]\nhttp_listen = \"127.0.0.1:0\"\nbogus = 1\n").unwrap();
    let (code, stdout, stderr) = output(&["check", "--config", path.to_str().unwrap()]).await;
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    let want = format!("{}:3:1: proxy.bogus: unknown field `bogus`", path.display());
    assert!(
        stdout.lines().next().is_some_and(|l| l.starts_with(&want)),
        "want {want:?} in:\n{stdout}"
    );
    assert!(
        stdout.contains(&format!("{}: 1 problem(s)", path.display())),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_every_bad_routing_value() {
    let text = r#"[proxy]
max_body_size = "lots"

[[service]]
name = "a"
hosts = ["a.test"]
context_root = "app"
sticky_session_cookie = ""
balance = "fastest"

[[service]]
name = "b"
hosts = ["b.test"]
context_root = "/x/../y"
max_body_size = "1 lot"

[[service]]
name = "e"
hosts = ["e.test"]
redirects = [{ from = "http://elsewhere.test", to = "http://e.test" }]

[[service]]
name = "c"
hosts = ["c.test"]
default_backend = true

[[service]]
name = "d"
hosts = ["c.test"]
balance = "least_request"
default_backend = true
"#;
    let (stdout, p) = check_fails("routing.toml", text).await;
    for (line, field) in [
        (2, "proxy.max_body_size"),
        (7, "service[0] (a).context_root"),
        (8, "service[0] (a).sticky_session_cookie"),
        (9, "service[0] (a).balance"),
        (14, "service[1] (b).context_root"),
        (15, "service[1] (b).max_body_size"),
    ] {
        let want = format!("{p}:{line}:");
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&want) && l.contains(&format!(" {field}: "))),
            "no {field} at line {line} in:\n{stdout}"
        );
    }
    // A redirect from a host the service doesn't serve; across services:
    // the second default backend, and d's disagreement with c on the pool
    // they share.
    for (service, setting) in [
        ("e", "redirects"),
        ("d", "default_backend"),
        ("d", "balance"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(&format!("service ({service}).{setting}"))
                    || l.contains(&format!("({service}).{setting}: "))),
            "no {service}.{setting} in:\n{stdout}"
        );
    }
    assert!(stdout.contains("9 problem(s)"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_every_bad_health_value() {
    let text = r#"[proxy]
outlier_consecutive_failures = -1
outlier_base_ejection_time = "10m"
max_ejected_percent = 150
retry_budget_percent = 101
retry_budget_min_per_second = -3
hedge_delay = "soon"
health_concurrency = 0

[[service]]
name = "a"
hosts = ["a.test"]
health_path = "healthz"
health_interval = "0s"
health_healthy = 0
health_unhealthy = 0
health_status = "200-99"
health_host = "*.a.test"
max_requests = 0
max_ejected_percent = 101

[[service]]
name = "b"
hosts = ["b.test"]
health_path = "/healthz"
health_interval = "5s"
health_timeout = "10s"
health_status = "2xx"

[[service]]
name = "c"
hosts = ["c.test"]
health_interval = "1s"

[[service]]
name = "d"
hosts = ["d.test"]
health_path = "/healthz"

[[service]]
name = "e"
hosts = ["d.test"]
health_path = "/ready"
"#;
    let (stdout, p) = check_fails("health.toml", text).await;
    let expected = [
        (2, "proxy.outlier_consecutive_failures", "must be at least 0"),
        (3, "proxy.outlier_base_ejection_time", "outlier_base_ejection_time \"10m\" is longer than outlier_max_ejection_time \"5m\""),
        (4, "proxy.max_ejected_percent", "must be at most 100"),
        (5, "proxy.retry_budget_percent", "must be at most 100"),
        (6, "proxy.retry_budget_min_per_second", "must be at least 0"),
        (7, "proxy.hedge_delay", "\"soon\" is not a duration such as \"5s\" or \"250ms\": expected number at 0 (or \"off\" for no hedging)"),
        (8, "proxy.health_concurrency", "must be at least 1"),
        (13, "service[0] (a).health_path", "\"healthz\" must start with '/', as in \"/healthz\""),
        (14, "service[0] (a).health_interval", "must be greater than zero"),
        (15, "service[0] (a).health_healthy", "must be at least 1"),
        (16, "service[0] (a).health_unhealthy", "must be at least 1"),
        (17, "service[0] (a).health_status", "\"200-99\": 99 is not a status code (100 to 599)"),
        (18, "service[0] (a).health_host", "\"*.a.test\": a check sends one host name, not a wildcard"),
        (19, "service[0] (a).max_requests", "must be at least 1"),
        (20, "service[0] (a).max_ejected_percent", "must be at most 100"),
        (28, "service[1] (b).health_status", "\"2xx\": \"2xx\" is not a status code or a range such as \"200-399\""),
        (27, "service[1] (b).health_timeout", "health_timeout \"10s\" is longer than health_interval \"5s\""),
        (33, "service[2] (c).health_interval", "health_interval is set but health_path is not; no check would run"),
        // Services pooled on one host and path must check alike.
        (41, "service (e).health_path", "shares host d.test and path / with service d but not its health_path; services on one host and path must agree"),
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    for (line, field, message) in expected {
        let (start, end) = (format!("{p}:{line}:"), format!(" {field}: {message}"));
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&start) && l.ends_with(&end)),
            "no {start}..{end} in:\n{stdout}"
        );
    }
    assert!(
        lines.contains(&format!("{p}: {} problem(s)", expected.len()).as_str()),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let (code, stdout, stderr) = output(&["check", "--config", path.to_str().unwrap()]).await;
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(
        all.contains(&format!("cannot read {}", path.display())),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_routes_by_host_and_adds_interlock_headers() {
    let version = version_string().await;
    let backend = Backend::echo("web-1").await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        "proxy_id = \"lb-test-1\"",
        &[service("web", &["web.test"], &[backend.addr])],
    );
    let (_portico, addr, _) = run_config(dir.path(), &text, &[]).await;

    let r = curl(&["-H", "Host: web.test", &format!("http://{addr}/hello?x=1")]).await;
    assert_eq!((r.exit, r.status), (0, 200), "{r:?}");
    let echo: Echo = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
    assert_eq!(echo.replica, "web-1");
    assert_eq!(echo.path, "/hello?x=1");
    assert_eq!(echo.header("host"), Some("web.test"));
    assert_identity_headers(&r, "lb-test-1", &version);
    assert_eq!(
        echo.header("x-request-id"),
        r.header("x-request-id"),
        "the backend sees the request id the client gets"
    );
    let backend_addr = backend.addr.to_string();
    assert_eq!(r.header("x-upstream-addr"), Some(backend_addr.as_str()));
    let t = r
        .header("x-upstream-response-time")
        .expect("x-upstream-response-time");
    assert!(is_seconds(t), "x-upstream-response-time {t:?}");

    let r = curl(&["-H", "Host: unknown.test", &format!("http://{addr}/")]).await;
    assert_eq!((r.exit, r.status), (0, 503), "{r:?}");
    assert_identity_headers(&r, "lb-test-1", &version);
    assert_eq!(r.header("x-upstream-addr"), None);
    assert_eq!(backend.hits(), 1);
}

/// Listening sockets on `port` (TCP state 0A) in this network namespace.
fn listeners_on(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&format!(":{port:04X}")) && f[3] == "0A"
        })
        .count()
}

/// `--workers 3`: three threads, each with its own listener on the one
/// port (`SO_REUSEPORT`; `:0` resolved once), and requests over many
/// connections (spread over the listeners by the kernel) all answered;
/// SIGTERM drains every worker and the process exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_each_listen_on_the_port_and_all_serve() {
    let backend = Backend::echo("web-1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.toml");
    write_atomic(
        &path,
        &config("", &[service("web", &["web.test"], &[backend.addr])]),
    );
    let mut portico = Portico::spawn(
        bin(),
        &["run", "--config", path.to_str().unwrap(), "--workers", "3"],
    );
    let addr = portico.listen_addr().await;
    let starting = portico.wait_for_line(msg_is("starting server"), WAIT).await;
    assert_eq!(parse_logfmt(&starting)["workers"], "3", "{starting:?}");
    assert_eq!(listeners_on(addr.port()), 3);
    // A new thread names itself once it runs, which may be just after
    // the listeners are up.
    let pid = portico.pid();
    let workers = || {
        let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
            .map(|c| c.trim().to_owned())
            .filter(|c| c.starts_with("portico-w"))
            .collect();
        names.sort();
        names
    };
    wait_until(WAIT, "three named worker threads", || {
        let names = workers();
        async move { names.len() == 3 }
    })
    .await;
    assert_eq!(workers(), ["portico-w0", "portico-w1", "portico-w2"]);

    // A client per connection: each request opens its own.
    let mut answered = 0;
    for _ in 0..48 {
        let client = HttpClient::new(addr);
        let (status, _, body) = client.get("web.test", "/w").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let echo: Echo = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo.replica, "web-1");
        answered += 1;
    }
    assert_eq!(answered, 48);

    portico.signal("TERM");
    let status = portico.wait_exit(WAIT).await;
    assert!(
        status.success(),
        "{status:?}\n{}",
        portico.stderr_lines().join("\n")
    );
    assert_eq!(
        portico.count_lines(msg_is("stopped accepting; draining")),
        3,
        "each worker drains its own listener"
    );
}

/// A port another process listens on is refused with several workers as
/// with one: their `SO_REUSEPORT` sockets never join (and split the
/// traffic of) a listener that is not theirs, even one with the option set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_do_not_share_a_port_with_another_process() {
    let taken = tokio::net::TcpSocket::new_v4().unwrap();
    taken.set_reuseport(true).unwrap();
    taken.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let taken = taken.listen(16).unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.toml");
    write_atomic(
        &path,
        &format!("[proxy]\nhttp_listen = \"127.0.0.1:{port}\"\n"),
    );
    let mut portico = Portico::spawn(
        bin(),
        &["run", "--config", path.to_str().unwrap(), "--workers", "2"],
    );
    let status = portico.wait_exit(WAIT).await;
    assert!(!status.success());
    let log = portico.stderr_lines().join("\n");
    assert!(
        log.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{log}"
    );
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_startup_updates_and_one_access_line_per_request() {
    let backend = Backend::echo("web-1").await;
    let dir = tempfile::tempdir().unwrap();
    let text = config("", &[service("web", &["web.test"], &[backend.addr])]);
    let (mut portico, addr, _) = run_config(dir.path(), &text, &[]).await;

    // Every line so far is logfmt with time, level and msg first.
    for line in portico.stderr_lines() {
        let rest = line
            .strip_prefix("time=\"")
            .unwrap_or_else(|| panic!("{line:?} does not start with time=\""));
        let (time, rest) = rest.split_once("\" ").unwrap();
        assert!(is_rfc3339_seconds(time), "{line:?}");
        assert!(rest.starts_with("level=info msg=\""), "{line:?}");
    }
    let starting = portico.wait_for_line(msg_is("starting server"), WAIT).await;
    assert!(
        starting.contains(&format!(
            "level=info msg=\"starting server\" listen={addr} workers="
        )),
        "{starting:?}"
    );

    let update = portico.wait_for_line(msg_is("update detected"), WAIT).await;
    let f = parse_logfmt(&update);
    assert!(
        update.contains(" msg=\"update detected\" currentVersion= updatedVersion="),
        "{update:?}"
    );
    let short = f["updatedVersion"].clone();
    assert!(is_hex(&short, 6), "{update:?}");
    let configured = portico
        .wait_for_line(msg_is("configured proxy"), WAIT)
        .await;
    let f = parse_logfmt(&configured);
    assert!(is_hex(&f["version"], 12), "{configured:?}");
    assert!(
        f["version"].starts_with(&short),
        "{configured:?} vs {update:?}"
    );
    assert_eq!(f["services"], "1", "{configured:?}");
    let lines = portico.stderr_lines();
    let pos = |pred: &dyn Fn(&str) -> bool| lines.iter().position(|l| pred(l)).unwrap();
    assert!(
        pos(&msg_is("update detected")) < pos(&msg_is("configured proxy"))
            && pos(&msg_is("configured proxy")) < pos(&msg_is("starting server")),
        "{lines:#?}"
    );

    // Three requests, three access lines, each naming its request id.
    let mut ids = Vec::new();
    for path in ["/a", "/b?q=1", "/c"] {
        let r = curl(&["-H", "Host: web.test", &format!("http://{addr}{path}")]).await;
        assert_eq!(r.status, 200, "{r:?}");
        let id = r.header("x-request-id").unwrap().to_owned();
        let line = request_line(&portico, &id).await;
        let f = parse_logfmt(&line);
        assert_eq!(f["level"], "info", "{line:?}");
        assert_eq!(f["client"], "127.0.0.1", "{line:?}");
        assert_eq!(f["method"], "GET", "{line:?}");
        assert_eq!(f["host"], "web.test", "{line:?}");
        assert_eq!(f["path"], path, "{line:?}");
        assert_eq!(f["status"], "200", "{line:?}");
        assert_eq!(f["bytes"], r.body.len().to_string(), "{line:?}");
        assert_eq!(f["upstream"], backend.addr.to_string(), "{line:?}");
        assert!(is_seconds(&f["upstream_time"]), "{line:?}");
        assert!(is_seconds(&f["request_time"]), "{line:?}");
        ids.push(id);
    }
    // A refused request is logged too.
    let r = curl(&["-H", "Host: nobody.test", &format!("http://{addr}/")]).await;
    assert_eq!(r.status, 503, "{r:?}");
    let id = r.header("x-request-id").unwrap().to_owned();
    let line = request_line(&portico, &id).await;
    let f = parse_logfmt(&line);
    assert_eq!(
        (f["status"].as_str(), f["upstream"].as_str()),
        ("503", "-"),
        "{line:?}"
    );
    ids.push(id);

    // Once the process has exited its log is complete: exactly one line each.
    portico.signal("TERM");
    assert!(portico.wait_exit(WAIT).await.success());
    let requests: Vec<String> = portico
        .stderr_lines()
        .into_iter()
        .filter(|l| msg_of(l).as_deref() == Some("request"))
        .collect();
    assert_eq!(requests.len(), ids.len(), "{requests:#?}");
    for id in &ids {
        let n = requests
            .iter()
            .filter(|l| parse_logfmt(l).get("request_id") == Some(id))
            .count();
        assert_eq!(n, 1, "request {id}: {requests:#?}");
    }
}

/// The access-log line of the request with this id, once it is written.
async fn request_line(portico: &Portico, id: &str) -> String {
    access_line(portico, "request_id", id).await
}

/// The access-log line of the one request to `path`, once it is written.
async fn path_line(portico: &Portico, path: &str) -> String {
    access_line(portico, "path", path).await
}

/// The access-log line whose `key` is `value`, once it is written.
async fn access_line(portico: &Portico, key: &str, value: &str) -> String {
    portico
        .wait_for_line(
            |l| {
                let f = parse_logfmt(l);
                f.get("msg").map(String::as_str) == Some("request")
                    && f.get(key).map(String::as_str) == Some(value)
            },
            WAIT,
        )
        .await
}

/// An HTTP/2 client's GET goes to its HTTP/1.1 upstream through the relay
/// (`crates/proxy/src/relay.rs`); a body that breaks off there is logged
/// as incomplete, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_body_that_breaks_off_is_logged_incomplete() {
    let backend = portico_testkit::raw::RawBackend::start(|mut conn| async move {
        if conn.next_request().await.is_some() {
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".as_slice())
                .await;
            conn.send([b'x'; 50]).await;
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let text = config("", &[service("web", &["web.test"], &[backend.addr])]);
    let (mut portico, addr, _) = run_config(dir.path(), &text, &[]).await;
    let r = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: web.test",
        &format!("http://{addr}/short"),
    ])
    .await;
    assert_ne!(r.exit, 0, "the stream is reset: {r:?}");
    // Whether curl sees the head first is a race inside h2: a reset drops
    // the frames still queued for the stream, HEADERS among them, if the
    // connection task has not written them yet. The log line is found by
    // its path, the only request to /short.
    let line = path_line(&portico, "/short").await;
    let f = parse_logfmt(&line);
    if let Some(id) = r.header("x-request-id") {
        assert_eq!(f["request_id"], id, "{line:?}");
    }
    assert_eq!(f["status"], "200", "{line:?}");
    assert_eq!(f["bytes"], "50", "{line:?}");
    assert_eq!(f["complete"], "false", "{line:?}");
    assert!(
        f.get("error")
            .is_some_and(|e| e.contains("50 bytes before the end")),
        "{line:?}"
    );
    portico.signal("TERM");
    assert!(portico.wait_exit(WAIT).await.success());
}

/// A client that stops reading its response is disconnected after
/// `client_send_timeout`, and the request's log line says so, on both
/// request paths (a GET on the fast path, a chunked POST on hyper's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_send_timeout_is_logged_as_the_reason() {
    // A body larger than every socket buffer on the way holds.
    const LEN: usize = 256 * 1024 * 1024;
    let backend = portico_testkit::raw::RawBackend::start(|mut conn| async move {
        if conn.next_request().await.is_some() {
            conn.send(format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\n\r\n"))
                .await;
            let piece = vec![b'x'; 65_536];
            for _ in 0..LEN / piece.len() {
                match conn.wire.send(&piece).await {
                    Ok(()) => {}
                    // The test's own bound on a write, not the proxy.
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return,
                }
            }
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        "client_send_timeout = \"1s\"",
        &[service("web", &["web.test"], &[backend.addr])],
    );
    let (mut portico, addr, _) = run_config(dir.path(), &text, &[]).await;
    let mut clients = Vec::new();
    for request in [
        "GET /fast HTTP/1.1\r\nHost: web.test\r\n\r\n",
        "POST /hyper HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    ] {
        let mut c = portico_testkit::raw::Wire::connect(addr).await;
        c.send(request).await.unwrap();
        // Reads the head and nothing more, the connection left open.
        c.read_head().await.unwrap().expect("a response head");
        clients.push(c);
    }
    for path in ["/fast", "/hyper"] {
        let line = path_line(&portico, path).await;
        let f = parse_logfmt(&line);
        assert_eq!(f["status"], "200", "{line:?}");
        assert_eq!(f["complete"], "false", "{line:?}");
        assert!(
            f.get("error")
                .is_some_and(|e| e.contains("client_send_timeout")),
            "{line:?}"
        );
    }
    drop(clients);
    portico.signal("TERM");
    assert!(portico.wait_exit(WAIT).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_can_be_turned_off() {
    let backend = Backend::echo("web-1").await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        "access_log = false",
        &[service("web", &["web.test"], &[backend.addr])],
    );
    let (mut portico, addr, _) = run_config(dir.path(), &text, &[]).await;
    let client = HttpClient::new(addr);
    for _ in 0..5 {
        let (status, _, _) = client.get("web.test", "/").await.unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _, _) = client.get("nobody.test", "/").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    portico.signal("TERM");
    assert!(portico.wait_exit(WAIT).await.success());
    let lines = portico.stderr_lines();
    assert!(
        lines
            .iter()
            .any(|l| msg_of(l).as_deref() == Some("stopped")),
        "{lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| msg_of(l).as_deref() == Some("request")),
        "{lines:#?}"
    );
}

/// `access_log_format = "combined"`: nginx's combined line, as is, for
/// both request paths (a GET on the fast path, a POST on hyper's, which
/// takes chunked bodies, an h2c request, an unknown host), what the client
/// sent escaped as nginx does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_in_nginx_combined_format() {
    let backend = Backend::echo("web-1").await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        "access_log_format = \"combined\"",
        &[service("web", &["web.test"], &[backend.addr])],
    );
    let (mut portico, addr, _) = run_config(dir.path(), &text, &[]).await;
    let base = format!("http://{addr}");
    let r = curl(&[
        "-H",
        "Host: web.test",
        "-H",
        "Referer: http://ref.test/page",
        "-A",
        "ua \"quoted\"",
        &format!("{base}/get?x=1"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = curl(&[
        "-H",
        "Host: web.test",
        "-A",
        "poster",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "hello",
        &format!("{base}/post"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: web.test",
        "-A",
        "h2c",
        &format!("{base}/h2"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = curl(&["-H", "Host: nobody.test", "-A", "lost", &format!("{base}/")]).await;
    assert_eq!(r.status, 503, "{r:?}");
    portico.signal("TERM");
    assert!(portico.wait_exit(WAIT).await.success());
    let lines: Vec<String> = portico
        .stderr_lines()
        .into_iter()
        .filter(|l| l.starts_with("127.0.0.1 - - ["))
        .collect();
    // `[02/Dec/2026:10:44:53 +0000] "REQUEST" STATUS BYTES "REFERER" "UA"`
    let tail = |l: &String| {
        let time = &l["127.0.0.1 - - [".len()..l.find(']').unwrap()];
        assert_eq!(time.len(), "02/Dec/2026:10:44:53 +0000".len(), "{l}");
        assert!(
            time.ends_with(" +0000") && time.as_bytes()[2] == b'/',
            "{l}"
        );
        l[l.find(']').unwrap() + 2..].to_owned()
    };
    let tails: Vec<String> = lines.iter().map(tail).collect();
    let body_of = |t: &str| -> u64 { t.split(' ').nth(4).unwrap().parse().unwrap() };
    let expect = [
        (
            "\"GET /get?x=1 HTTP/1.1\" 200 ",
            "\"http://ref.test/page\" \"ua \\x22quoted\\x22\"",
        ),
        ("\"POST /post HTTP/1.1\" 200 ", "\"-\" \"poster\""),
        ("\"GET /h2 HTTP/2.0\" 200 ", "\"-\" \"h2c\""),
        ("\"GET / HTTP/1.1\" 503 ", "\"-\" \"lost\""),
    ];
    assert_eq!(tails.len(), expect.len(), "{lines:#?}");
    for (t, (start, end)) in tails.iter().zip(expect) {
        assert!(
            t.starts_with(start) && t.ends_with(end),
            "{t:?} is not {start}… {end}"
        );
        assert!(body_of(t) > 0, "{t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_prints_one_object_per_line() {
    let backend = Backend::echo("web-1").await;
    let dir = tempfile::tempdir().unwrap();
    let text = config("", &[service("web", &["web.test"], &[backend.addr])]);
    let (mut portico, addr, _) = run_config(dir.path(), &text, &["--log-format", "json"]).await;
    let r = curl(&["-H", "Host: web.test", &format!("http://{addr}/json")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let id = r.header("x-request-id").unwrap().to_owned();
    let line = portico.wait_for_line(|l| l.contains(&id), WAIT).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["msg"], "request", "{line}");
    assert_eq!(v["status"], 200, "{line}");
    assert_eq!(v["path"], "/json", "{line}");
    assert_eq!(v["host"], "web.test", "{line}");

    portico.signal("TERM");
    assert!(portico.wait_exit(WAIT).await.success());
    let lines = portico.stderr_lines();
    assert!(lines.len() >= 6, "{lines:#?}");
    let mut msgs = Vec::new();
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("{line:?} is not an object"));
        for key in ["time", "level", "msg"] {
            assert!(
                obj.get(key).is_some_and(|v| v.is_string()),
                "{line:?} lacks {key}"
            );
        }
        assert!(
            is_rfc3339_seconds(obj["time"].as_str().unwrap()),
            "{line:?}"
        );
        msgs.push(obj["msg"].as_str().unwrap().to_owned());
    }
    for want in [
        "update detected",
        "configured proxy",
        "starting server",
        "stopped",
    ] {
        assert!(msgs.iter().any(|m| m == want), "no {want:?} in {msgs:?}");
    }
    let update: serde_json::Value = serde_json::from_str(
        lines
            .iter()
            .find(|l| l.contains("\"update detected\""))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(update["currentVersion"], "");
    assert!(
        is_hex(update["updatedVersion"].as_str().unwrap(), 6),
        "{update}"
    );
}

/// The main one: 50 rewrites of the config while a client loop hammers a
/// service that every version keeps; not one request may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_loses_no_request() {
    const REWRITES: usize = 50;
    const MIN_REQUESTS: usize = 2_000;
    let (s1, s2) = (
        Backend::echo("stable-1").await,
        Backend::echo("stable-2").await,
    );
    let extra = Backend::echo("extra").await;
    let stable = service("stable", &["stable.test"], &[s1.addr, s2.addr]);
    let with_extra = |n: Option<usize>| {
        let mut services = vec![stable.clone()];
        if let Some(n) = n {
            services.push(service(
                &format!("extra-{n}"),
                &[&format!("extra-{n}.test")],
                &[extra.addr],
            ));
        }
        config("proxy_id = \"lb-reload\"", &services)
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut portico, addr, path) = run_config_env(
        dir.path(),
        &with_extra(None),
        &[],
        &[("PORTICO_LOG", "info,portico_discovery=debug")],
    )
    .await;
    let first_configured = portico
        .wait_for_line(msg_is("configured proxy"), WAIT)
        .await;
    let updates = msg_is("update detected");

    // The load: one keep-alive client, sequential GETs, until told to stop
    // and at least MIN_REQUESTS were sent.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let load = tokio::spawn({
        let (stop, sent, failures) = (stop.clone(), sent.clone(), failures.clone());
        let client = HttpClient::new(addr);
        async move {
            while !stop.load(Ordering::SeqCst) || sent.load(Ordering::SeqCst) < MIN_REQUESTS {
                let n = sent.fetch_add(1, Ordering::SeqCst);
                match client.get("stable.test", &format!("/load/{n}")).await {
                    Ok((StatusCode::OK, _, _)) => {}
                    Ok((status, _, body)) => failures
                        .lock()
                        .unwrap()
                        .push(format!("#{n}: {status} {}", String::from_utf8_lossy(&body))),
                    Err(e) => failures.lock().unwrap().push(format!("#{n}: {e}")),
                }
            }
        }
    });

    let probe = HttpClient::new(addr);
    for i in 0..REWRITES {
        // Even rewrites add extra-i.test; odd ones remove extra-(i-1).test.
        let (text, host, want) = if i % 2 == 0 {
            (
                with_extra(Some(i)),
                format!("extra-{i}.test"),
                StatusCode::OK,
            )
        } else {
            (
                with_extra(None),
                format!("extra-{}.test", i - 1),
                StatusCode::SERVICE_UNAVAILABLE,
            )
        };
        write_atomic(&path, &text);
        wait_status(&portico, &probe, &host, want, &format!("rewrite {i}")).await;
    }
    stop.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(30), load)
        .await
        .expect("the load loop finishes")
        .unwrap();
    let sent = sent.load(Ordering::SeqCst);
    let failures = failures.lock().unwrap().clone();
    assert!(sent >= MIN_REQUESTS, "only {sent} requests");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed during reloads, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        s1.hits() + s2.hits() >= sent,
        "every load request reached a stable replica"
    );

    // An invalid file is rejected with its location; the last good version serves on.
    let invalid = with_extra(None).replace("hosts = [\"stable.test\"]", "hosts = []");
    assert_ne!(invalid, with_extra(None));
    let hosts_line = invalid.lines().position(|l| l == "hosts = []").unwrap() + 1;
    write_atomic(&path, &invalid);
    let rejected = portico
        .wait_for_line(|l| l.contains("config rejected"), WAIT)
        .await;
    assert!(rejected.contains("level=error"), "{rejected:?}");
    let error = portico
        .wait_for_line(
            |l| l.contains("level=error") && l.contains("service[0] (stable).hosts"),
            WAIT,
        )
        .await;
    let f = parse_logfmt(&error);
    let path_str = path.display().to_string();
    assert_eq!(f.get("file"), Some(&path_str), "{error:?}");
    assert_eq!(f.get("line"), Some(&hosts_line.to_string()), "{error:?}");
    assert_eq!(
        f.get("field").map(String::as_str),
        Some("service[0] (stable).hosts"),
        "{error:?}"
    );
    assert!(
        error.contains(&format!("{path_str}:{hosts_line}:")),
        "{error:?}"
    );
    // "config rejected" comes after every update line: the count is final.
    assert_eq!(
        portico.count_lines(&updates),
        1 + REWRITES,
        "update detected lines"
    );
    let (status, _, _) = probe.get("stable.test", "/").await.unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "stable.test after the rejected edit"
    );

    // An edit that changes only comments, whitespace and order is no update,
    // whether noticed by the watcher or reloaded by SIGHUP.
    let same = format!(
        "# the same config, written differently\n\n[[service]]\nupstreams = [\"{}\", \"{}\"]\n\
         hosts = [ \"STABLE.test\" ]   # upper case is the same host\nname = \"stable\"\n\n\
         [proxy]\nproxy_id = \"lb-reload\"\nhttp_listen = \"127.0.0.1:0\"\n",
        s1.addr, s2.addr
    );
    // `config unchanged` (a debug line, enabled for this process) shows the
    // edit was read and judged. Any such line after `mark` comes from
    // reading `same`: what was there before is the invalid file.
    let mark = portico.stderr_len();
    write_atomic(&path, &same);
    let (seen, unchanged) = portico
        .wait_for_line_from(mark, msg_is("config unchanged"), WAIT)
        .await;
    assert_eq!(
        parse_logfmt(&unchanged).get("version"),
        parse_logfmt(&first_configured).get("version"),
        "the no-op edit has the first version's digest: {unchanged:?}"
    );
    portico.signal("HUP");
    let (requested, _) = portico
        .wait_for_line_from(seen + 1, msg_is("reload requested"), WAIT)
        .await;
    portico
        .wait_for_line_from(requested + 1, msg_is("config unchanged"), WAIT)
        .await;
    // A real change after it: its update is the only new one.
    let last = format!("extra-{REWRITES}.test");
    write_atomic(&path, &with_extra(Some(REWRITES)));
    wait_status(&portico, &probe, &last, StatusCode::OK, "the real change").await;
    portico.signal("TERM");
    assert!(portico.wait_exit(WAIT).await.success());
    let lines = portico.stderr_lines();
    assert_eq!(
        portico.count_lines(&updates),
        1 + REWRITES + 1,
        "the no-op edit must not be an update:\n{}",
        lines
            .iter()
            .filter(|l| updates(l))
            .rev()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(portico.count_lines(msg_is("reload requested")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let release = Arc::new(Notify::new());
    let backend = Backend::start("slow", {
        let release = release.clone();
        move |_req| {
            let release = release.clone();
            async move {
                release.notified().await;
                Response::new(Full::new(Bytes::from_static(b"released\n")))
            }
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        "shutdown_grace = \"15s\"",
        &[service("slow", &["slow.test"], &[backend.addr])],
    );
    let (mut portico, addr, _) = run_config(dir.path(), &text, &[]).await;

    let client = HttpClient::new(addr);
    let in_flight = tokio::spawn(async move { client.get("slow.test", "/slow").await });
    wait_until(WAIT, "the backend to receive the request", || {
        let hits = backend.hits();
        async move { hits == 1 }
    })
    .await;
    portico.signal("TERM");
    portico
        .wait_for_line(|l| l.contains("stopped accepting"), WAIT)
        .await;
    let shutting = portico.wait_for_line(msg_is("shutting down"), WAIT).await;
    assert!(shutting.contains("signal=SIGTERM"), "{shutting:?}");
    assert!(
        !in_flight.is_finished(),
        "the request must still be waiting on the backend"
    );
    release.notify_one();

    let (status, _, body) = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("the in-flight request completes")
        .unwrap()
        .expect("the in-flight request succeeds");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"released\n");
    let exit = portico.wait_exit(WAIT).await;
    assert_eq!(exit.code(), Some(0), "{exit}");
    let lines = portico.stderr_lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| msg_of(l).as_deref() == Some("stopped"))
            .count(),
        1,
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("grace period over")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (mut portico, _addr, _) = run_config(dir.path(), &config("", &[]), &[]).await;
    portico.signal("INT");
    let exit = portico.wait_exit(WAIT).await;
    assert_eq!(exit.code(), Some(0), "{exit}");
    let lines = portico.stderr_lines();
    assert!(
        lines
            .iter()
            .any(|l| msg_of(l).as_deref() == Some("shutting down") && l.contains("signal=SIGINT")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| msg_of(l).as_deref() == Some("stopped")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_routes_foo_app_test_to_two_replicas() {
    let portico = Portico::spawn(bin(), &["demo", "--listen", "127.0.0.1:0"]);
    let addr = portico.listen_addr().await;
    portico
        .wait_for_stdout_line(|l| l.contains("Press Ctrl-C"), WAIT)
        .await;
    let stdout = portico.stdout_lines().join("\n");
    assert!(stdout.contains("curl"), "{stdout}");
    assert!(
        stdout.contains(&format!("-H \"Host: foo.app.test\" http://{addr}/")),
        "{stdout}"
    );

    let mut replicas = Vec::new();
    for _ in 0..2 {
        let r = curl(&["-H", "Host: foo.app.test", &format!("http://{addr}/")]).await;
        assert_eq!(r.status, 200, "{r:?}");
        let replica = r
            .body
            .lines()
            .find_map(|l| l.strip_prefix("replica: "))
            .unwrap_or_else(|| panic!("no replica line in {:?}", r.body))
            .to_owned();
        replicas.push(replica);
    }
    replicas.sort();
    assert_eq!(replicas, ["demo-1", "demo-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_a_config_that_does_not_parse() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.toml");
    std::fs::write(
        &path,
        "[proxy]\nhttp_listen = \"127.0.0.1:0\"\n\n[[service]]\nname = \"a\"\nhosts = [\"a.test\"\n",
    )
    .unwrap();
    let mut portico = Portico::spawn(bin(), &["run", "--config", path.to_str().unwrap()]);
    let exit = portico.wait_exit(WAIT).await;
    assert!(!exit.success(), "{exit}");
    let log = portico.stderr_lines().join("\n");
    assert!(log.contains(&format!("{}:6:", path.display())), "{log}");
    assert!(log.contains("service[0].hosts"), "{log}");
    assert!(log.contains("level=error"), "{log}");
    assert!(!log.contains("starting server"), "{log}");
}

/// `portico controller init` makes the cluster's CA and join token (private
/// files 0600), refuses to replace them, and `portico controller token`
/// prints a token naming that CA.
#[test]
fn controller_init_makes_the_cluster_credentials_once() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(bin())
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["controller", "init", "--state-dir", state_arg]);
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("docker secret create portico_join_token"),
        "{printed}"
    );
    let mode = |f: &str| {
        std::fs::metadata(state.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("ca.key"), 0o600);
    assert_eq!(mode("join-token"), 0o600);

    let out = run(&["controller", "token", "--state-dir", state_arg]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let token: portico_cluster::JoinToken = text.trim().parse().unwrap();
    let ca = portico_cluster::ClusterCa::load(&state).unwrap();
    assert_eq!(token.ca_digest(), ca.digest());

    let again = run(&["controller", "init", "--state-dir", state_arg]);
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("already holds a cluster's credentials"),
        "{err}"
    );
    assert_eq!(
        portico_cluster::ClusterCa::load(&state).unwrap().digest(),
        ca.digest(),
        "the CA was not replaced"
    );
    let missing = run(&[
        "controller",
        "token",
        "--state-dir",
        dir.path().join("nope").to_str().unwrap(),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("join-token"),
        "{missing:?}"
    );
}
