//! End-to-end tests of the admin API: a real `portico run` (child process)
//! with an `[admin]` table, asked with real curl. Off unless configured; a
//! token required off loopback (portico refuses to start without one); 401
//! without the token; stable JSON documents.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use portico_testkit::process::parse_logfmt;
use portico_testkit::{curl, dead_addr, Backend, Portico};

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "s3cr3t-t0ken-0123456789";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portico"))
}

fn config(admin: &str, upstreams: &[SocketAddr]) -> String {
    let ups: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[proxy]\nhttp_listen = \"127.0.0.1:0\"\nproxy_id = \"lb-admin-1\"\n\n{admin}\n\
         [[service]]\nname = \"simple_foo\"\nhosts = [\"foo.app.test\", \"*.foo.example\"]\nupstreams = [{}]\n\n\
         [[service]]\nname = \"other\"\nhosts = [\"bar.app.test\"]\nupstreams = []\n",
        ups.join(", ")
    )
}

struct Running {
    _dir: tempfile::TempDir,
    portico: Portico,
    admin: SocketAddr,
}

async fn start(admin_table: &str, upstreams: &[SocketAddr]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.toml");
    std::fs::write(&path, config(admin_table, upstreams)).unwrap();
    let portico = Portico::spawn(bin(), &["run", "--config", path.to_str().unwrap()]);
    let line = portico
        .wait_for_line(|l| l.contains(r#"msg="starting admin server""#), WAIT)
        .await;
    let listen: SocketAddr = parse_logfmt(&line)["listen"].parse().unwrap();
    // A wildcard listen is reached, in tests, through loopback only.
    let admin = SocketAddr::new([127, 0, 0, 1].into(), listen.port());
    Running {
        _dir: dir,
        portico,
        admin,
    }
}

fn keys(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

async fn get_json(url: &str, extra: &[&str]) -> (u16, serde_json::Value) {
    let mut args: Vec<&str> = extra.to_vec();
    args.push(url);
    let r = curl(&args).await;
    assert_eq!(r.exit, 0, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    let v = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    (r.status, v)
}

#[tokio::test]
async fn admin_is_off_unless_configured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.toml");
    std::fs::write(&path, config("", &[])).unwrap();
    let mut portico = Portico::spawn(bin(), &["run", "--config", path.to_str().unwrap()]);
    portico.listen_addr().await;
    // Both servers start before the proxy's line; after it, none can come.
    assert_eq!(
        portico.count_lines(|l| l.contains("admin")),
        0,
        "{:?}",
        portico.stderr_lines()
    );
    portico.signal("TERM");
    assert!(portico.wait_exit(WAIT).await.success());
}

#[tokio::test]
async fn a_token_is_required_off_loopback_and_portico_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.toml");
    std::fs::write(&path, config("[admin]\nlisten = \"0.0.0.0:0\"\n", &[])).unwrap();
    let mut portico = Portico::spawn(bin(), &["run", "--config", path.to_str().unwrap()]);
    let status = portico.wait_exit(WAIT).await;
    assert!(!status.success(), "portico must refuse to start");
    let log = portico.stderr_lines().join("\n");
    assert!(log.contains("admin.token"), "{log}");
    assert_eq!(portico.count_lines(|l| l.contains("starting")), 0, "{log}");

    // With a token it starts, on every interface, and demands it.
    let r = start(
        &format!("[admin]\nlisten = \"0.0.0.0:0\"\ntoken = \"{TOKEN}\"\n"),
        &[],
    )
    .await;
    let url = format!("http://{}/health", r.admin);
    let denied = curl(&[&url]).await;
    assert_eq!(denied.status, 401, "{denied:?}");
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (status, health) = get_json(&url, &["-H", &bearer]).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    drop(r.portico);
}

#[tokio::test]
async fn requests_without_the_token_get_401() {
    let r = start(
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
        &[],
    )
    .await;
    for path in ["/health", "/routes", "/config", "/nope"] {
        let url = format!("http://{}{path}", r.admin);
        let none = curl(&[&url]).await;
        assert_eq!(none.status, 401, "{path}: {none:?}");
        let challenges: Vec<&str> = none
            .headers
            .iter()
            .filter(|(k, _)| k == "www-authenticate")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(
            challenges,
            ["Bearer", "Basic realm=\"portico admin\", charset=\"UTF-8\""]
        );
        let body: serde_json::Value = serde_json::from_str(&none.body).unwrap();
        assert_eq!(keys(&body), set(&["error"]));
        let wrong = curl(&["-H", "Authorization: Bearer s3cr3t-t0ken-0123456780", &url]).await;
        assert_eq!(wrong.status, 401, "{path}: {wrong:?}");
        let short = curl(&["-H", "Authorization: Bearer s3cr3t", &url]).await;
        assert_eq!(short.status, 401, "{path}: {short:?}");
        // A browser's Basic credentials carry the token as the password.
        let basic = curl(&["-u", "x:s3cr3t-t0ken-0123456780", &url]).await;
        assert_eq!(basic.status, 401, "{path}: {basic:?}");
        let basic = curl(&["-u", &format!("x:{TOKEN}"), &url]).await;
        assert_ne!(basic.status, 401, "{path}: {basic:?}");
    }
    let probe = curl(&[
        "-X",
        "POST",
        "-d",
        r#"{"host":"foo.app.test"}"#,
        &format!("http://{}/probe", r.admin),
    ])
    .await;
    assert_eq!(probe.status, 401);
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (status, _) = get_json(&format!("http://{}/routes", r.admin), &["-H", &bearer]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn documents_have_stable_schemas() {
    let up = Backend::echo("task-1").await;
    let bad = Backend::status("task-2", 500).await;
    let dead = dead_addr().await;
    let r = start(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &[up.addr, bad.addr, dead],
    )
    .await;
    let base = format!("http://{}", r.admin);

    let (status, health) = get_json(&format!("{base}/health"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        keys(&health),
        set(&[
            "status",
            "version",
            "server_info",
            "proxy_id",
            "http_listen",
            "https_listen",
            "services",
            "uptime_seconds"
        ])
    );
    assert_eq!(health["proxy_id"], "lb-admin-1");
    assert_eq!(health["services"], 2);
    let version = health["version"].as_str().unwrap().to_owned();
    assert_eq!(version.len(), 12);
    assert!(health["server_info"]
        .as_str()
        .unwrap()
        .starts_with("portico/"));
    let proxy: SocketAddr = health["http_listen"].as_str().unwrap().parse().unwrap();
    assert_eq!(proxy.port(), 0, "the configured address, as written");

    let (_, routes) = get_json(&format!("{base}/routes"), &[]).await;
    assert_eq!(
        keys(&routes),
        set(&["version", "host", "routes", "nearest"])
    );
    assert_eq!(routes["version"], version.as_str());
    assert!(routes["host"].is_null());
    let all = routes["routes"].as_array().unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        keys(&all[0]),
        set(&["hosts", "services", "upstreams", "health"])
    );
    // One health entry per upstream, in the same order; nothing is known of
    // them yet (no checks, no failed requests).
    for (h, addr) in all[0]["health"]
        .as_array()
        .unwrap()
        .iter()
        .zip(all[0]["upstreams"].as_array().unwrap())
    {
        assert_eq!(keys(h), set(&["upstream", "state"]));
        assert_eq!(&h["upstream"], addr);
        assert_eq!(h["state"], "unknown");
    }
    assert_eq!(all[0]["services"], serde_json::json!(["simple_foo"]));
    assert_eq!(
        all[0]["hosts"],
        serde_json::json!(["foo.app.test", "*.foo.example"])
    );
    assert_eq!(all[0]["upstreams"].as_array().unwrap().len(), 3);

    let (_, one) = get_json(&format!("{base}/routes?host=API.foo.example:8080"), &[]).await;
    assert_eq!(one["host"], "api.foo.example");
    let matched = &one["routes"][0];
    assert_eq!(
        keys(matched),
        set(&["hosts", "matched", "services", "upstreams", "health"])
    );
    assert_eq!(matched["matched"], "*.foo.example");
    let (_, none) = get_json(&format!("{base}/routes?host=foo.app.tset"), &[]).await;
    assert_eq!(none["routes"], serde_json::json!([]));
    let near = &none["nearest"][0];
    assert_eq!(keys(near), set(&["host", "services", "distance"]));
    assert_eq!(near["host"], "foo.app.test");
    assert_eq!(near["services"], serde_json::json!(["simple_foo"]));
    let (status, _) = get_json(&format!("{base}/routes?host=bad%20host"), &[]).await;
    assert_eq!(status, 400);

    let (_, config) = get_json(&format!("{base}/config"), &[]).await;
    assert_eq!(keys(&config), set(&["version", "version_full", "config"]));
    assert_eq!(config["version"], version.as_str());
    assert!(config["version_full"]
        .as_str()
        .unwrap()
        .starts_with(&version));
    assert_eq!(
        keys(&config["config"]),
        set(&["proxy", "admin", "services"])
    );
    assert_eq!(config["config"]["proxy"]["connect_timeout"], "5s");
    assert_eq!(
        keys(&config["config"]["admin"]),
        set(&["listen", "token_set", "config_history"])
    );
    assert_eq!(config["config"]["admin"]["config_history"], 20);
    // Every service key of the TOML file, unset ones as null.
    assert_eq!(
        keys(&config["config"]["services"][0]),
        set(&[
            "name",
            "hosts",
            "upstreams",
            "tls_cert",
            "tls_key",
            "tls_ocsp",
            "ssl_only",
            "hsts_max_age",
            "passthrough",
            "upstream_tls",
            "upstream_tls_verify",
            "upstream_tls_ca",
            "upstream_tls_name",
            "upstream_protocol",
            "context_root",
            "context_root_rewrite",
            "redirects",
            "sticky_session_cookie",
            "ip_hash",
            "balance",
            "default_backend",
            "max_body_size",
            "connect_timeout",
            "upstream_timeout",
            "health_path",
            "health_interval",
            "health_timeout",
            "health_healthy",
            "health_unhealthy",
            "health_status",
            "health_host",
            "max_requests",
            "max_ejected_percent",
        ])
    );
    assert!(config["config"]["services"][0]["context_root"].is_null());
    assert_eq!(config["config"]["services"][0]["balance"], "round_robin");

    let probe_url = format!("{base}/probe");
    let (status, probe) = get_json(
        &probe_url,
        &[
            "-X",
            "POST",
            "-d",
            r#"{"host":"foo.app.test","path":"/x","timeout_ms":2000}"#,
        ],
    )
    .await;
    assert_eq!(status, 200, "{probe}");
    assert_eq!(
        keys(&probe),
        set(&["version", "host", "services", "probes"])
    );
    let probes = probe["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 3);
    for p in probes {
        assert_eq!(
            keys(p),
            set(&["upstream", "ok", "status", "timings", "error"])
        );
        assert_eq!(
            keys(&p["timings"]),
            set(&["dns_ms", "connect_ms", "tls_ms", "first_byte_ms"])
        );
    }
    assert_eq!(probes[0]["upstream"], up.addr.to_string());
    assert_eq!(probes[0]["ok"], true);
    assert_eq!(probes[0]["status"], 200);
    assert_eq!(probes[1]["ok"], false);
    assert_eq!(probes[1]["status"], 500);
    assert_eq!(probes[2]["ok"], false);
    assert!(probes[2]["status"].is_null());
    assert!(probes[2]["error"]
        .as_str()
        .unwrap()
        .contains("connection refused"));
    assert_eq!(up.hits(), 1, "the proxy itself sent the probe");

    let (status, missing) = get_json(
        &probe_url,
        &["-X", "POST", "-d", r#"{"host":"foo.app.tset"}"#],
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(keys(&missing), set(&["error", "nearest"]));
    let (status, bad_json) = get_json(&probe_url, &["-X", "POST", "-d", "not json"]).await;
    assert_eq!(status, 400);
    assert_eq!(keys(&bad_json), set(&["error"]));
    let (status, _) = get_json(&format!("{base}/nope"), &[]).await;
    assert_eq!(status, 404);
    let wrong_method = curl(&["-X", "DELETE", &format!("{base}/routes")]).await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("GET"));
    let get_probe = curl(&[&probe_url]).await;
    assert_eq!(get_probe.status, 405);
}

#[tokio::test]
async fn the_token_is_never_shown() {
    let r = start(
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
        &[],
    )
    .await;
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let c = curl(&["-H", &bearer, &format!("http://{}/config", r.admin)]).await;
    assert_eq!(c.status, 200);
    assert!(!c.body.contains(TOKEN), "{}", c.body);
    let v: serde_json::Value = serde_json::from_str(&c.body).unwrap();
    assert_eq!(v["config"]["admin"]["token_set"], true);
    let log = r.portico.stderr_lines().join("\n");
    assert!(!log.contains(TOKEN), "{log}");
}

#[tokio::test]
async fn routes_follow_a_reload() {
    let up = Backend::echo("task-1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.toml");
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    std::fs::write(&path, config(admin, &[])).unwrap();
    let portico = Portico::spawn(bin(), &["run", "--config", path.to_str().unwrap()]);
    let line = portico
        .wait_for_line(|l| l.contains(r#"msg="starting admin server""#), WAIT)
        .await;
    let addr: SocketAddr = parse_logfmt(&line)["listen"].parse().unwrap();
    let url = format!("http://{addr}/routes?host=foo.app.test");
    let (_, before) = get_json(&url, &[]).await;
    assert_eq!(before["routes"][0]["upstreams"], serde_json::json!([]));
    portico
        .wait_for_line(|l| l.contains(r#"msg="watching config file""#), WAIT)
        .await;
    let tmp = dir.path().join(".portico.toml.tmp");
    std::fs::write(&tmp, config(admin, &[up.addr])).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    portico
        .wait_for_count(|l| l.contains(r#"msg="configured proxy""#), 2, WAIT)
        .await;
    let (_, after) = get_json(&url, &[]).await;
    assert_ne!(after["version"], before["version"]);
    assert_eq!(
        after["routes"][0]["upstreams"],
        serde_json::json!([up.addr.to_string()])
    );
}

/// Regression: a reload that drops `[admin]` (or its token) must not leave
/// the running admin listener open without authentication.
#[tokio::test]
async fn a_reload_never_relaxes_the_running_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.toml");
    let admin = format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n");
    std::fs::write(&path, config(&admin, &[])).unwrap();
    let portico = Portico::spawn(bin(), &["run", "--config", path.to_str().unwrap()]);
    let line = portico
        .wait_for_line(|l| l.contains(r#"msg="starting admin server""#), WAIT)
        .await;
    let addr: SocketAddr = parse_logfmt(&line)["listen"].parse().unwrap();
    portico
        .wait_for_line(|l| l.contains(r#"msg="watching config file""#), WAIT)
        .await;
    let tmp = dir.path().join(".portico.toml.tmp");
    std::fs::write(&tmp, config("", &[])).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    portico
        .wait_for_line(
            |l| {
                l.contains("listeners keep their settings until a restart")
                    && l.contains("setting=[admin]")
            },
            WAIT,
        )
        .await;
    let r = curl(&[&format!("http://{addr}/routes")]).await;
    assert_eq!(r.status, 401, "{r:?}");
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (status, _) = get_json(&format!("http://{addr}/routes"), &["-H", &bearer]).await;
    assert_eq!(status, 200);
}
