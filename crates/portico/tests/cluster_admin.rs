//! Who has what, with the real binary: a `portico controller run` with an
//! `[admin]` table and two `portico proxy` processes with admin APIs of
//! their own. The controller's `/proxies`, `/metrics` (checked by
//! `promtool`), status page and `/health` list both proxies, where they
//! serve traffic, and the version each serves; a snapshot both refuse
//! shows as their NACK everywhere; a proxy that stops is listed as gone;
//! and `portico trace --controller-admin` checks the request through each
//! proxy and says which serve the published version.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use portico_testkit::cluster::{
    controller_config, init, path, replica, spawn_proxy, start_controller, ProxySpec,
};
use portico_testkit::{
    curl, promtool_accepts, service_toml, wait_until, Backend, CurlResponse, Portico,
};
use portico_trace::api::Proxies;
use portico_trace::{Hop, Outcome, Report};

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "controller-admin-token-0123";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portico"))
}

fn admin_table() -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n")
}

async fn get(admin: SocketAddr, path: &str) -> CurlResponse {
    curl(&[
        "-H",
        &format!("Authorization: Bearer {TOKEN}"),
        &format!("http://{admin}{path}"),
    ])
    .await
}

async fn proxies(admin: SocketAddr) -> Proxies {
    let r = get(admin, "/proxies").await;
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

/// Waits until `/proxies` satisfies `ok`, and returns it; panics with the
/// last one read if it does not within [`WAIT`].
async fn until_listed(admin: SocketAddr, what: &str, ok: impl Fn(&Proxies) -> bool) -> Proxies {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let doc = proxies(admin).await;
        if ok(&doc) {
            return doc;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}; /proxies: {doc:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `/metrics` as `name{labels}` → value, after `promtool check metrics`.
async fn metrics(admin: SocketAddr) -> (String, Vec<(String, f64)>) {
    let r = get(admin, "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.body);
    promtool_accepts(&r.body).await;
    let series = r
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect();
    (r.body, series)
}

fn value(series: &[(String, f64)], name: &str) -> Option<f64> {
    series.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// `portico trace URL --controller-admin ADMIN --admin-token-file F --json`
/// for web.test through `via`'s port (resolved to 127.0.0.1); also as a table, which must carry
/// the proxies' table and end with the same verdict.
async fn trace(dir: &Path, admin: SocketAddr, via: SocketAddr) -> (i32, Report, String) {
    trace_host(dir, admin, "web.test", via).await
}

/// [`trace`] for `host`.
async fn trace_host(
    dir: &Path,
    admin: SocketAddr,
    host: &str,
    via: SocketAddr,
) -> (i32, Report, String) {
    trace_with(dir, admin, host, via, &[]).await
}

/// [`trace_host`] with more arguments.
async fn trace_with(
    dir: &Path,
    admin: SocketAddr,
    host: &str,
    via: SocketAddr,
    extra: &[String],
) -> (i32, Report, String) {
    let token = dir.join("admin-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let mut args = vec![
        format!("http://{host}:{}/", via.port()),
        "--controller-admin".to_owned(),
        format!("http://{admin}"),
        "--admin-token-file".to_owned(),
        path(&token),
        "--resolve".to_owned(),
        format!("{host}:{}:127.0.0.1", via.port()),
        "--timeout".to_owned(),
        "2s".to_owned(),
    ];
    args.extend_from_slice(extra);
    let run = |json: bool| {
        let mut cmd = tokio::process::Command::new(bin());
        cmd.arg("trace").args(&args);
        if json {
            cmd.arg("--json");
        }
        cmd.env_remove("PORTICO_ADMIN_TOKEN").output()
    };
    let out = run(true).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no report ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let table = run(false).await.unwrap();
    let table_text = String::from_utf8_lossy(&table.stdout).into_owned();
    println!("portico trace {}\n{table_text}", args.join(" "));
    assert_eq!(table.status.code(), out.status.code(), "{table_text}");
    assert!(table_text.contains("PROXY"), "{table_text}");
    assert!(
        table_text.trim_end().ends_with(&report.verdict.line),
        "{table_text}"
    );
    (out.status.code().unwrap_or(-1), report, table_text)
}

struct Setup {
    dir: tempfile::TempDir,
    _web: Backend,
    web_toml: String,
    config: std::path::PathBuf,
    controller: Portico,
    admin: SocketAddr,
    proxies: Vec<(Portico, SocketAddr, SocketAddr)>,
}

/// A controller with `[admin]` routing web.test, and proxies p1 and p2
/// (each with an admin API) serving it.
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    init(bin(), dir.path());
    let web = Backend::echo("web").await;
    let web_toml = service_toml("web", &["web.test"], &[web.addr], "");
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        controller_config(&format!("{}\n{web_toml}", admin_table())),
    )
    .unwrap();
    let (controller, at) = start_controller(bin(), &config).await;
    let admin = controller.admin_addr().await;
    let own_admin = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let mut proxies = Vec::new();
    for id in ["p1", "p2"] {
        let spec = ProxySpec {
            config: own_admin,
            ..ProxySpec::new(id, at)
        };
        let p = spawn_proxy(bin(), dir.path(), &spec);
        let (listen, padmin) = (p.listen_addr().await, p.admin_addr().await);
        wait_until(WAIT, &format!("{id} routes web.test"), || async move {
            replica(listen, "web.test").await.as_deref() == Some("web")
        })
        .await;
        proxies.push((p, listen, padmin));
    }
    Setup {
        dir,
        _web: web,
        web_toml,
        config,
        controller,
        admin,
        proxies,
    }
}

fn all_current(doc: &Proxies, n: usize) -> bool {
    doc.proxies.len() == n
        && doc.clusters.len() == 1
        && doc.proxies.iter().all(|p| {
            p.status.applied_version.as_deref() == Some(doc.clusters[0].version_full.as_str())
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_controller_lists_its_proxies_and_their_versions() {
    let s = setup().await;
    let admin = s.admin;

    // Its admin API needs its token, as a proxy's does.
    let anonymous = curl(&[&format!("http://{admin}/proxies")]).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    let wrong = curl(&[
        "-H",
        "Authorization: Bearer not-the-token-at-all",
        &format!("http://{admin}/metrics"),
    ])
    .await;
    assert_eq!(wrong.status, 401);

    let doc = until_listed(admin, "both proxies on the published version", |d| {
        all_current(d, 2)
    })
    .await;
    let published = &doc.clusters[0];
    assert_eq!(published.service_cluster, "default");
    assert_eq!((published.proxies, published.current), (2, 2));
    assert_eq!(published.version, &published.version_full[..12]);
    for (p, (_, listen, padmin)) in doc.proxies.iter().zip(&s.proxies) {
        let st = &p.status;
        assert_eq!(p.state, portico_cluster::SyncState::Current);
        assert_eq!(st.service_cluster, "default");
        assert_eq!(st.address.ip(), std::net::Ipv4Addr::LOCALHOST);
        // Where it serves traffic, and its admin API, as it announced them.
        let listeners: Vec<String> = st.listeners.iter().map(ToString::to_string).collect();
        assert_eq!(listeners, [format!("http://{listen}")]);
        assert_eq!(st.admin.map(|a| a.addr), Some(*padmin));
        assert!(st.last_nack.is_none());
        assert!(st.connected_since <= st.last_heartbeat);
    }
    assert_eq!(
        doc.proxies
            .iter()
            .map(|p| p.status.id.as_str())
            .collect::<Vec<_>>(),
        ["p1", "p2"]
    );
    // Times as the rest of the admin API writes them.
    let raw = get(admin, "/proxies").await;
    let v: serde_json::Value = serde_json::from_str(&raw.body).unwrap();
    let since = v["proxies"][0]["connected_since"].as_str().unwrap();
    assert!(since.ends_with('Z') && since.contains('T'), "{since}");

    let health = get(admin, "/health").await;
    let h: portico_trace::api::ControllerHealth = serde_json::from_str(&health.body).unwrap();
    assert_eq!(
        (h.role.as_str(), h.proxies, h.service_clusters),
        ("controller", 2, 1)
    );

    // Each proxy's own /metrics tells its side of the stream.
    for (_, _, padmin) in &s.proxies {
        let (_, series) = metrics(*padmin).await;
        let applied = format!(
            "portico_cluster_applied_info{{version=\"{}\"}}",
            published.version_full
        );
        assert_eq!(value(&series, &applied), Some(1.0));
        assert_eq!(value(&series, "portico_cluster_link_up"), Some(1.0));
        assert_eq!(
            value(&series, "portico_cluster_link_connects_total"),
            Some(1.0)
        );
        assert_eq!(
            value(&series, "portico_cluster_link_losses_total"),
            Some(0.0)
        );
    }

    let (body, series) = metrics(admin).await;
    let short = &published.version;
    assert_eq!(
        value(
            &series,
            "portico_controller_proxies{service_cluster=\"default\"}"
        ),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        value(
            &series,
            &format!(
                "portico_controller_published_info{{service_cluster=\"default\",version=\"{short}\"}}"
            )
        ),
        Some(1.0),
        "{body}"
    );
    for id in ["p1", "p2"] {
        let labels = format!("{{proxy_id=\"{id}\",service_cluster=\"default\"}}");
        for (name, want) in [
            ("portico_controller_proxy_current", 1.0),
            ("portico_controller_proxy_nacking", 0.0),
        ] {
            assert_eq!(
                value(&series, &format!("{name}{labels}")),
                Some(want),
                "{body}"
            );
        }
        assert!(
            body.contains(&format!("portico_controller_proxy_info{{proxy_id=\"{id}\",service_cluster=\"default\",address=\"127.0.0.1\",applied_version=")),
            "{body}"
        );
        assert!(
            body.contains(&format!("applied_version=\"{short}\"}} 1")),
            "{body}"
        );
    }
    assert_eq!(
        value(
            &series,
            "portico_controller_nacks_total{service_cluster=\"default\"}"
        ),
        Some(0.0),
        "{body}"
    );

    let page = curl(&[
        "-D",
        "-",
        "-H",
        &format!("Authorization: Bearer {TOKEN}"),
        &format!("http://{admin}/"),
    ])
    .await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-security-policy")
        .is_some_and(|c| c.contains("default-src 'none'")));
    assert!(!page.body.contains("<script"), "{}", page.body);
    for id in ["p1", "p2"] {
        assert!(
            page.body
                .contains(&format!("data-proxy=\"{id}\" data-state=\"current\"")),
            "{}",
            page.body
        );
    }

    // The trace through every proxy the controller lists: both answer,
    // both serve the published version.
    let (_, p1_listen, _) = &s.proxies[0];
    let (exit, report, table) = trace(s.dir.path(), admin, *p1_listen).await;
    assert_eq!(exit, 0, "{table}");
    assert_eq!(report.proxies.len(), 2, "{table}");
    for (p, (_, listen, _)) in report.proxies.iter().zip(&s.proxies) {
        assert_eq!(p.state, "current", "{table}");
        assert_eq!(p.request, Outcome::Pass, "{table}");
        assert_eq!(p.status, Some(200));
        assert_eq!(
            p.address.as_deref(),
            Some(format!("http://{listen}").as_str())
        );
        assert_eq!(p.applied_version.as_deref(), Some(short.as_str()));
    }
    // The route and upstream hops asked a proxy's own admin API.
    let route = report.hops.iter().find(|h| h.hop == Hop::Route).unwrap();
    assert_eq!(route.result, Outcome::Pass, "{table}");
    let proxy_hops: Vec<_> = report.hops.iter().filter(|h| h.hop == Hop::Proxy).collect();
    assert_eq!(proxy_hops.len(), 2);
    for (hop, id) in proxy_hops.iter().zip(["p1", "p2"]) {
        assert_eq!(hop.proxy_id.as_deref(), Some(id), "{table}");
    }
    assert!(
        table.contains("proxies: 2 of 2 serve the published version"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nack_and_a_stopped_proxy_show_everywhere() {
    let mut s = setup().await;
    let admin = s.admin;
    let first = until_listed(admin, "both current", |d| all_current(d, 2)).await;
    let v1 = first.clusters[0].version_full.clone();

    // A certificate that does not load: both proxies refuse the snapshot
    // and keep serving v1.
    let dir = s.dir.path();
    std::fs::write(dir.join("bad.crt"), "not a certificate").unwrap();
    std::fs::write(dir.join("bad.key"), "not a key").unwrap();
    let bad = service_toml(
        "bad",
        &["bad.test"],
        &["127.0.0.1:9".parse().unwrap()],
        "tls_cert = \"bad.crt\"\ntls_key = \"bad.key\"",
    );
    // (A certificate needs an HTTPS listener to be valid in the file; the
    // proxies' own [proxy] is what they serve with.)
    std::fs::write(
        &s.config,
        format!(
            "[proxy]\nhttps_listen = \"127.0.0.1:0\"\n\n{}",
            controller_config(&format!("{}\n{}\n{bad}", admin_table(), s.web_toml))
        ),
    )
    .unwrap();
    let doc = until_listed(admin, "both proxies NACK the new version", |d| {
        d.proxies.len() == 2
            && d.proxies
                .iter()
                .all(|p| p.state == portico_cluster::SyncState::Nacking)
    })
    .await;
    let v2 = doc.clusters[0].version_full.clone();
    assert_ne!(v1, v2);
    for p in &doc.proxies {
        let nack = p.status.last_nack.as_ref().unwrap();
        assert_eq!(nack.version, v2);
        assert!(nack.reason.contains("bad"), "{}", nack.reason);
        assert_eq!(p.status.applied_version.as_deref(), Some(v1.as_str()));
        assert_eq!(p.status.nacks, 1);
    }
    assert_eq!((doc.clusters[0].proxies, doc.clusters[0].current), (2, 0));
    let reason = doc.proxies[0]
        .status
        .last_nack
        .as_ref()
        .unwrap()
        .reason
        .clone();

    let (body, series) = metrics(admin).await;
    for id in ["p1", "p2"] {
        let labels = format!("{{proxy_id=\"{id}\",service_cluster=\"default\"}}");
        assert_eq!(
            value(
                &series,
                &format!("portico_controller_proxy_nacking{labels}")
            ),
            Some(1.0),
            "{body}"
        );
        assert_eq!(
            value(
                &series,
                &format!("portico_controller_proxy_current{labels}")
            ),
            Some(0.0),
            "{body}"
        );
    }
    assert_eq!(
        value(
            &series,
            "portico_controller_nacks_total{service_cluster=\"default\"}"
        ),
        Some(2.0),
        "{body}"
    );

    let page = get(admin, "/").await;
    for id in ["p1", "p2"] {
        assert!(
            page.body
                .contains(&format!("data-proxy=\"{id}\" data-state=\"nacking\"")),
            "{}",
            page.body
        );
    }
    // The reason as the page escapes it.
    let escaped = reason
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;");
    assert!(page.body.contains(&escaped), "{reason}\n{}", page.body);

    // The trace: requests through both still work (v1 is served), and
    // both refuse the published version, with the reason.
    let (_, p1_listen, _) = s.proxies[0];
    let (exit, report, table) = trace(dir, admin, p1_listen).await;
    assert_eq!(exit, 1, "{table}");
    assert_eq!(report.verdict.hop, Some(Hop::Version), "{table}");
    for p in &report.proxies {
        assert_eq!(p.state, "nacking", "{table}");
        assert_eq!(p.request, Outcome::Pass, "{table}");
        assert!(
            p.detail.as_deref().is_some_and(|d| d.contains("bad")),
            "{table}"
        );
    }
    let version_rows: Vec<_> = report
        .hops
        .iter()
        .filter(|h| h.hop == Hop::Version)
        .collect();
    assert_eq!(version_rows.len(), 2, "{table}");
    for row in version_rows {
        assert_eq!(row.result, Outcome::Fail, "{table}");
        assert!(
            row.cause
                .as_deref()
                .is_some_and(|c| c.contains("cannot apply")),
            "{table}"
        );
    }

    // The config is mended: both are current again.
    std::fs::write(
        &s.config,
        controller_config(&format!("{}\n{}", admin_table(), s.web_toml)),
    )
    .unwrap();
    until_listed(admin, "both current again", |d| {
        all_current(d, 2)
            && d.proxies
                .iter()
                .all(|p| p.state == portico_cluster::SyncState::Current)
    })
    .await;

    // p2 stops: the controller lists it as gone, with why; the trace says
    // so and still passes through p1.
    let (mut p2, _, _) = s.proxies.pop().unwrap();
    p2.signal("TERM");
    p2.wait_exit(WAIT).await;
    let doc = until_listed(admin, "p2 departed", |d| {
        d.proxies.len() == 1 && d.departed.iter().any(|g| g.status.id.as_str() == "p2")
    })
    .await;
    assert_eq!(doc.proxies[0].status.id.as_str(), "p1");
    // A proxy stopped by its operator says goodbye: not a broken stream.
    let gone = doc.departed.iter().find(|g| g.status.id.as_str() == "p2");
    assert_eq!(gone.unwrap().reason, "it closed its stream");
    let page = get(admin, "/").await;
    assert!(page.body.contains("id=departed"), "{}", page.body);
    let (_, series) = metrics(admin).await;
    assert_eq!(
        value(&series, "portico_controller_departed_proxies"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &series,
            "portico_controller_proxies{service_cluster=\"default\"}"
        ),
        Some(1.0)
    );

    let (exit, report, table) = trace(dir, admin, p1_listen).await;
    assert_eq!(exit, 0, "{table}");
    let states: Vec<(&str, &str)> = report
        .proxies
        .iter()
        .map(|p| (p.id.as_str(), p.state.as_str()))
        .collect();
    assert_eq!(states, [("p1", "current"), ("p2", "departed")], "{table}");
    assert_eq!(report.proxies[1].request, Outcome::Skip, "{table}");
    assert!(table.contains("left the controller"), "{table}");
    // Listed, not tried, and not counted among those that serve (or not)
    // the published version.
    assert!(
        table.contains("proxies: 1 of 1 serve the published version (1 departed, not checked)"),
        "{table}"
    );
    let p2_hop = report
        .hops
        .iter()
        .find(|h| h.hop == Hop::Proxy && h.target.contains("(p2)"))
        .unwrap();
    assert_eq!(p2_hop.result, Outcome::Skip, "{table}");
    assert!(
        p2_hop
            .evidence
            .contains("not sent through departed proxies"),
        "{table}"
    );
    drop(s.controller);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_controller_s_token_goes_to_the_controller_only() {
    let dir = tempfile::tempdir().unwrap();
    init(bin(), dir.path());
    let web = Backend::echo("web").await;
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        controller_config(&format!(
            "{}\n{}",
            admin_table(),
            service_toml("web", &["web.test"], &[web.addr], "")
        )),
    )
    .unwrap();
    let (controller, at) = start_controller(bin(), &config).await;
    let admin = controller.admin_addr().await;
    // The proxy's admin API takes the very token the controller's does: a
    // trace that sent it there would get in.
    let own_admin = format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n");
    let spec = ProxySpec {
        config: &own_admin,
        ..ProxySpec::new("p1", at)
    };
    let p1 = spawn_proxy(bin(), dir.path(), &spec);
    let listen = p1.listen_addr().await;
    wait_until(WAIT, "p1 routes web.test", || async move {
        replica(listen, "web.test").await.as_deref() == Some("web")
    })
    .await;
    until_listed(admin, "p1 current", |d| all_current(d, 1)).await;

    // --admin-token-file is for the controller: p1's admin API is asked
    // without it, wants a token, and the route and upstream hops are
    // skipped, naming the option that would give it.
    let (exit, report, table) = trace(dir.path(), admin, listen).await;
    assert_eq!(exit, 0, "{table}");
    for hop in [Hop::Route, Hop::Upstream] {
        let row = report.hops.iter().find(|h| h.hop == hop).unwrap();
        assert_eq!(row.result, Outcome::Skip, "{table}");
        assert!(row.evidence.contains("--proxy-admin-token-file"), "{table}");
    }
    assert_eq!(report.proxies[0].request, Outcome::Pass, "{table}");

    // With the proxies' own token, they are checked.
    let proxy_token = dir.path().join("proxy-admin-token");
    std::fs::write(&proxy_token, format!("{TOKEN}\n")).unwrap();
    let extra = ["--proxy-admin-token-file".to_owned(), path(&proxy_token)];
    let (exit, report, table) = trace_with(dir.path(), admin, "web.test", listen, &extra).await;
    assert_eq!(exit, 0, "{table}");
    for hop in [Hop::Route, Hop::Upstream] {
        let row = report.hops.iter().find(|h| h.hop == hop).unwrap();
        assert_eq!(row.result, Outcome::Pass, "{table}");
    }
    drop(p1);
    drop(controller);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_trace_checks_the_proxies_of_the_host_s_service_cluster() {
    let dir = tempfile::tempdir().unwrap();
    init(bin(), dir.path());
    let web = Backend::echo("web").await;
    let edge = Backend::echo("edge").await;
    let services = format!(
        "{}\n{}",
        service_toml("web", &["web.test"], &[web.addr], ""),
        service_toml(
            "edge",
            &["edge.test"],
            &[edge.addr],
            "service_cluster = \"edge\""
        )
    );
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        controller_config(&format!("{}\n{services}", admin_table())),
    )
    .unwrap();
    let (controller, at) = start_controller(bin(), &config).await;
    let admin = controller.admin_addr().await;
    let own_admin = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let mut running = Vec::new();
    for (id, cluster, host, replica_name) in [
        ("d1", "default", "web.test", "web"),
        ("e1", "edge", "edge.test", "edge"),
    ] {
        let spec = ProxySpec {
            service_cluster: cluster,
            config: own_admin,
            ..ProxySpec::new(id, at)
        };
        let p = spawn_proxy(bin(), dir.path(), &spec);
        let listen = p.listen_addr().await;
        wait_until(WAIT, &format!("{id} routes {host}"), || async move {
            replica(listen, host).await.as_deref() == Some(replica_name)
        })
        .await;
        running.push((p, listen));
    }
    until_listed(admin, "both current", |d| {
        d.proxies.len() == 2
            && d.proxies
                .iter()
                .all(|p| p.state == portico_cluster::SyncState::Current)
    })
    .await;

    // web.test is the default cluster's: e1 (edge) is not asked for it,
    // and the route comes from d1's admin API.
    let (exit, report, table) = trace(dir.path(), admin, running[0].1).await;
    assert_eq!(exit, 0, "{table}");
    let ids: Vec<&str> = report.proxies.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["d1"], "{table}");
    assert_eq!(
        report
            .hops
            .iter()
            .find(|h| h.hop == Hop::Route)
            .unwrap()
            .result,
        Outcome::Pass,
        "{table}"
    );
    // And edge.test the edge cluster's.
    let (exit, report, table) = trace_host(dir.path(), admin, "edge.test", running[1].1).await;
    assert_eq!(exit, 0, "{table}");
    let ids: Vec<&str> = report.proxies.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["e1"], "{table}");
}
