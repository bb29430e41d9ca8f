//! `portico config list/show/diff/render` against a real `portico run`:
//! the config file rewritten three times, each version waited for on the
//! admin API (never by sleeping), then read back through the real CLI; and
//! the CLI's errors (unknown version or format, no or wrong token, no admin
//! API) with their messages and exit codes. The admin endpoints behind it
//! are checked as documents too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portico_testkit::process::parse_logfmt;
use portico_testkit::{curl, dead_addr, Portico};
use portico_trace::api::AdminClient;

const WAIT: Duration = Duration::from_secs(15);
const TOKEN: &str = "hist0ry-t0ken-0123456789";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portico"))
}

/// The file replaced as config managers do: a new file renamed over it.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_file_name(".portico.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The config at each step: `web` with `web_upstreams` (and a context
/// root from step 3), `api` from step 2, and `[proxy] connect_timeout`.
fn config(step: usize) -> String {
    let web_upstreams = if step >= 1 {
        "\"10.1.0.1:80\", \"10.1.0.2:80\""
    } else {
        "\"10.1.0.1:80\""
    };
    let mut text = format!(
        "[proxy]\nhttp_listen = \"127.0.0.1:0\"\naccess_log = false\nconnect_timeout = \"{}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\nconfig_history = 3\n\n\
         [[service]]\nname = \"web\"\nhosts = [\"web.test\"]\nupstreams = [{web_upstreams}]\n",
        if step >= 3 { "2s" } else { "5s" }
    );
    if step >= 3 {
        text.push_str("context_root = \"/app\"\n");
    }
    if step >= 2 {
        text.push_str("\n[[service]]\nname = \"api\"\nhosts = [\"api.test\"]\nupstreams = [\"10.2.0.1:80\"]\n");
    }
    text
}

struct Running {
    _dir: tempfile::TempDir,
    path: PathBuf,
    portico: Portico,
    admin: SocketAddr,
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.toml");
    write_atomic(&path, &config(0));
    let portico = Portico::spawn(bin(), &["run", "--config", path.to_str().unwrap()]);
    let line = portico
        .wait_for_line(|l| l.contains(r#"msg="starting admin server""#), WAIT)
        .await;
    let admin: SocketAddr = parse_logfmt(&line)["listen"].parse().unwrap();
    // Edits before this line would go unnoticed.
    portico
        .wait_for_line(|l| l.contains(r#"msg="watching config file""#), WAIT)
        .await;
    Running {
        _dir: dir,
        path,
        portico,
        admin,
    }
}

fn client(admin: SocketAddr) -> AdminClient {
    AdminClient {
        addr: admin,
        token: Some(TOKEN.to_owned()),
        timeout: Duration::from_secs(5),
    }
}

/// The version in force, as the admin API says.
async fn version_in_force(admin: SocketAddr) -> String {
    client(admin).health().await.expect("admin /health").version
}

/// Rewrites the config for `step` and waits until the admin API serves a
/// new version; returns it.
async fn reload(r: &Running, step: usize) -> String {
    let before = version_in_force(r.admin).await;
    write_atomic(&r.path, &config(step));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = version_in_force(r.admin).await;
        if now != before {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "step {step}: the version stayed {before}\n{}",
            r.portico.stderr_lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `portico ARGS` to completion: exit code, stdout, stderr.
async fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(bin())
            .args(args)
            .env_remove("PORTICO_ADMIN_TOKEN")
            .env_remove("PORTICO_LOG")
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("portico config finished in time")
    .expect("portico runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `portico config ARGS --admin URL --admin-token TOKEN`, which must succeed.
async fn config_ok(admin: SocketAddr, args: &[&str]) -> String {
    let url = format!("http://{admin}");
    let mut all = vec!["config"];
    all.extend_from_slice(args);
    all.extend(["--admin", &url, "--admin-token", TOKEN]);
    let (code, stdout, stderr) = cli(&all, &[]).await;
    assert_eq!(
        code, 0,
        "portico {all:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    stdout
}

/// The same, which must fail with exit 1: its stderr.
async fn config_fails(admin: SocketAddr, args: &[&str]) -> String {
    let url = format!("http://{admin}");
    let mut all = vec!["config"];
    all.extend_from_slice(args);
    all.extend(["--admin", &url, "--admin-token", TOKEN]);
    let (code, stdout, stderr) = cli(&all, &[]).await;
    assert_eq!(
        code, 1,
        "portico {all:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.is_empty(), "errors go to stderr: {stdout}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_reloads_are_listed_shown_and_diffed() {
    let r = start().await;
    let v0 = version_in_force(r.admin).await;
    let list = config_ok(r.admin, &["list"]).await;
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(
        lines[0].contains("VERSION") && lines[0].contains("SOURCE"),
        "{list}"
    );
    assert!(lines[1].starts_with(&format!("* {v0}  ")), "{list}");
    assert!(lines[1].contains("  file  "), "{list}");
    assert!(
        lines[1].ends_with("first version: 1 service, 1 host, 1 upstream"),
        "{list}"
    );

    let v1 = reload(&r, 1).await;
    let v2 = reload(&r, 2).await;
    let v3 = reload(&r, 3).await;

    // Newest first; at most config_history = 3 kept, so v0 is gone.
    let list = config_ok(r.admin, &["list"]).await;
    let rows: Vec<&str> = list.lines().skip(1).take(3).collect();
    let expected = [
        (
            &v3,
            '*',
            "service web changed (context_root); setting proxy.connect_timeout changed",
        ),
        (&v2, ' ', "service api added; +1 host; +1 upstream"),
        (&v1, ' ', "service web changed (upstreams); +1 upstream"),
    ];
    for (row, (version, mark, summary)) in rows.iter().zip(expected) {
        assert!(
            row.starts_with(&format!("{mark} {version}  ")),
            "{row:?} in\n{list}"
        );
        assert!(row.contains("  file  "), "{row:?}");
        assert!(
            row.ends_with(summary),
            "{row:?} should end with {summary:?}"
        );
    }
    assert!(!list.contains(&v0), "{list}");
    assert!(
        list.ends_with("3 version(s) kept of at most 3; * is in force\n"),
        "{list}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&config_ok(r.admin, &["list", "--json"]).await).unwrap();
    assert_eq!(json["current"], v3.as_str());
    assert_eq!(json["kept"], 3);
    let versions = json["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 3);
    for v in versions {
        assert_eq!(v["source"], "file");
        let full = v["version_full"].as_str().unwrap();
        assert_eq!(full.len(), 64);
        assert!(full.starts_with(v["version"].as_str().unwrap()));
        assert!(full.starts_with(v["short"].as_str().unwrap()));
        let applied = v["applied"].as_str().unwrap();
        assert!(applied.len() == 20 && applied.ends_with('Z'), "{applied}");
    }

    // show: the version in force by default, with its changes and config.
    let show = config_ok(r.admin, &["show"]).await;
    assert!(
        show.starts_with(&format!("version {v3} (applied ")),
        "{show}"
    );
    assert!(show.contains("from file, in force)"), "{show}");
    assert!(show.contains(&format!("changes from {v2}:\n")), "{show}");
    assert!(
        show.contains("  service web:\n    context_root: / → /app\n"),
        "{show}"
    );
    assert!(
        show.contains("  proxy.connect_timeout: 5s → 2s\n"),
        "{show}"
    );
    assert!(show.contains("\nconfig:\n[proxy]\n"), "{show}");
    assert!(show.contains("connect_timeout = \"2s\"\n"), "{show}");
    assert!(
        show.contains(
            "[[service]]\nname = \"api\"\nhosts = [\"api.test\"]\nupstreams = [\"10.2.0.1:80\"]\n"
        ),
        "{show}"
    );
    assert!(!show.contains(TOKEN), "the token is never shown: {show}");
    assert!(show.contains("token_set = true"), "{show}");

    // By the logs' short id, with the token from the environment.
    let url = format!("http://{}", r.admin);
    let short = &v1[..6];
    let (code, show1, stderr) = cli(
        &["config", "show", short, "--admin", &url],
        &[("PORTICO_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        show1.starts_with(&format!("version {v1} (applied ")),
        "{show1}"
    );
    assert!(!show1.contains("in force"), "{show1}");
    assert!(
        show1.contains("  service web:\n    upstreams added: 10.1.0.2:80\n"),
        "{show1}"
    );

    // diff across two reloads: everything between them, per service.
    let diff = config_ok(r.admin, &["diff", &v1, &v3[..8]]).await;
    assert!(diff.starts_with(&format!("from {v1} (applied ")), "{diff}");
    assert!(diff.contains(&format!("\nto   {v3} (applied ")), "{diff}");
    for line in [
        "services added: api\n",
        "service web:\n  context_root: / → /app\n",
        "hosts added: api.test\n",
        "upstreams added: 10.2.0.1:80\n",
        "proxy.connect_timeout: 5s → 2s\n",
    ] {
        assert!(diff.contains(line), "{line:?} in\n{diff}");
    }
    assert!(
        !diff.contains("10.1.0.2"),
        "unchanged between v1 and v3: {diff}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&config_ok(r.admin, &["diff", &v3, &v1, "--json"]).await).unwrap();
    assert_eq!(json["from"]["version"], v3.as_str());
    assert_eq!(json["diff"]["services_removed"], serde_json::json!(["api"]));
    assert_eq!(
        json["diff"]["hosts_removed"],
        serde_json::json!(["api.test"])
    );

    // render: a version as nginx.conf, in the seed's shape.
    let nginx = config_ok(r.admin, &["render", "--format", "nginx", &v2]).await;
    assert!(
        nginx.contains("    upstream up-web.test {\n        zone up-web.test_backend 64k;\n"),
        "{nginx}"
    );
    assert!(nginx.contains("        server 10.1.0.2:80 "), "{nginx}");
    assert!(nginx.contains("        server_name api.test;\n"), "{nginx}");
    assert!(
        nginx.contains("            proxy_pass http://up-api.test;\n"),
        "{nginx}"
    );
    assert!(
        !nginx.contains("location = /app"),
        "v2 has no context root: {nginx}"
    );

    // Unknown versions name those that exist.
    let gone = config_fails(r.admin, &["show", &v0]).await;
    assert!(
        gone.starts_with(&format!("portico config: no version \"{v0}\" is kept")),
        "{gone}"
    );
    assert!(
        gone.contains(&format!("the versions kept are: {v3}, {v2}, {v1}")),
        "{gone}"
    );
    let bad = config_fails(r.admin, &["diff", &v1, "not-hex"]).await;
    assert!(bad.contains("\"not-hex\" is not a version id"), "{bad}");
    assert!(bad.contains(&v3), "{bad}");
    let bad = config_fails(r.admin, &["render", "--format", "nginx", "fffffff"]).await;
    assert!(bad.contains("no version \"fffffff\" is kept"), "{bad}");
    let format = config_fails(r.admin, &["render", "--format", "apache"]).await;
    assert_eq!(
        format,
        "portico config: unknown format \"apache\": the formats are nginx\n"
    );
    drop(r.portico);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_says_how_to_reach_and_authenticate() {
    let r = start().await;
    let url = format!("http://{}", r.admin);

    let (code, stdout, stderr) = cli(&["config", "list", "--admin", &url], &[]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(
        stderr,
        format!(
            "portico config: the admin API at {} requires a token (401): pass the [admin] token \
             with --admin-token TOKEN or PORTICO_ADMIN_TOKEN\n",
            r.admin
        )
    );
    for (args, env) in [
        (
            vec![
                "config",
                "show",
                "--admin",
                &url,
                "--admin-token",
                "wrong-token-0123456789",
            ],
            vec![],
        ),
        (
            vec!["config", "diff", "abcd", "ef01", "--admin", &url],
            vec![("PORTICO_ADMIN_TOKEN", "wrong-token-0123456789")],
        ),
    ] {
        let (code, stdout, stderr) = cli(&args, &env).await;
        assert_eq!(code, 1, "{args:?}: {stdout}{stderr}");
        assert!(stdout.is_empty());
        assert!(
            stderr.contains(&format!(
                "the admin API at {} refused the token (401)",
                r.admin
            )) && stderr.contains("--admin-token TOKEN or PORTICO_ADMIN_TOKEN"),
            "{args:?}: {stderr}"
        );
    }

    // Nothing listening: the address, and that [admin] must be configured.
    let dead = dead_addr().await;
    let (code, _, stderr) = cli(
        &["config", "list", "--admin", &format!("http://{dead}/")],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "portico config: cannot reach the admin API at {dead} (connection refused)"
        )) && stderr.contains("[admin] table"),
        "{stderr}"
    );

    // Usage: no --admin, a bad one, no subcommand.
    let (code, _, stderr) = cli(&["config", "list"], &[]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--admin http://IP:PORT is required"),
        "{stderr}"
    );
    let (code, _, stderr) = cli(&["config", "list", "--admin", "https://127.0.0.1:1"], &[]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("expected http://IP:PORT"), "{stderr}");
    let (code, _, _) = cli(&["config", "--admin", &url], &[]).await;
    assert_eq!(code, 2);
    drop(r.portico);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoints_answer_documents_and_json_errors() {
    let r = start().await;
    let v0 = version_in_force(r.admin).await;
    let v1 = reload(&r, 1).await;
    let base = format!("http://{}", r.admin);
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let get = |path: &str| {
        let url = format!("{base}{path}");
        let bearer = bearer.clone();
        async move {
            let c = curl(&["-H", &bearer, &url]).await;
            assert_eq!(c.exit, 0, "{c:?}");
            c
        }
    };

    let one = get(&format!("/config/versions/{}", &v1[..6])).await;
    assert_eq!(one.status, 200, "{one:?}");
    assert_eq!(one.header("content-type"), Some("application/json"));
    let doc: serde_json::Value = serde_json::from_str(&one.body).unwrap();
    for key in [
        "version",
        "short",
        "version_full",
        "applied",
        "source",
        "summary",
        "current",
        "config",
        "previous",
        "diff",
        "diff_text",
    ] {
        assert!(doc.get(key).is_some(), "{key} in {doc}");
    }
    assert_eq!(doc["previous"], v0.as_str());
    assert_eq!(doc["current"], true);
    assert_eq!(
        doc["diff"]["services_changed"][0]["upstreams_added"],
        serde_json::json!(["10.1.0.2:80"])
    );
    assert_eq!(
        doc["config"]["services"][0]["upstreams"],
        serde_json::json!(["10.1.0.1:80", "10.1.0.2:80"])
    );
    let first = get(&format!("/config/versions/{v0}")).await;
    let doc: serde_json::Value = serde_json::from_str(&first.body).unwrap();
    assert!(doc["previous"].is_null() && doc["diff"].is_null(), "{doc}");

    // Without from/to: the version in force against the one before.
    let diff = get("/config/diff").await;
    let doc: serde_json::Value = serde_json::from_str(&diff.body).unwrap();
    assert_eq!(doc["from"]["version"], v0.as_str());
    assert_eq!(doc["to"]["version"], v1.as_str());
    assert!(
        doc["text"]
            .as_str()
            .unwrap()
            .contains("upstreams added: 10.1.0.2:80"),
        "{doc}"
    );

    let missing = get("/config/versions/abcdef").await;
    assert_eq!(missing.status, 404);
    let err: serde_json::Value = serde_json::from_str(&missing.body).unwrap();
    assert_eq!(err["versions"], serde_json::json!([v1, v0]));
    assert!(err["error"].as_str().unwrap().contains("abcdef"), "{err}");
    let short = get("/config/versions/ab").await;
    assert_eq!(short.status, 400);

    let render = get("/config/render?format=nginx").await;
    assert_eq!(render.status, 200);
    assert_eq!(
        render.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(
        render.body.contains("upstream up-web.test {"),
        "{}",
        render.body
    );
    for path in ["/config/render", "/config/render?format=NGINX"] {
        let bad = get(path).await;
        assert_eq!(bad.status, 400, "{path}");
        let err: serde_json::Value = serde_json::from_str(&bad.body).unwrap();
        assert!(
            err["error"]
                .as_str()
                .unwrap()
                .ends_with("the formats are nginx"),
            "{err}"
        );
    }
    let no_token = curl(&[&format!("{base}/config/versions")]).await;
    assert_eq!(no_token.status, 401);
    let post = curl(&[
        "-X",
        "POST",
        "-H",
        &bearer,
        &format!("{base}/config/versions/{v0}"),
    ])
    .await;
    assert_eq!(post.status, 405);
}
