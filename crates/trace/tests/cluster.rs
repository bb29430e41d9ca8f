//! The trace over a cluster's controller, against a fake controller admin
//! API on loopback: which token goes where, departed proxies listed but
//! not tried, and the proxies checked concurrently.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use portico_testkit::Backend;
use portico_trace::{Hop, Options, Outcome, Target};
use serde_json::{json, Value};

const CONTROLLER_TOKEN: &str = "controller-token";
const VERSION: &str = "3edc6f0000000000000000000000000000000000000000000000000000000000";

fn proxy(id: &str, listen: SocketAddr, admin: Option<SocketAddr>) -> Value {
    json!({
        "id": id,
        "address": "127.0.0.1:40000",
        "service_cluster": "default",
        "applied_version": VERSION,
        "last_nack": null,
        "nacks": 0,
        "connected_since": "2026-01-01T00:00:00Z",
        "last_heartbeat": "2026-01-01T00:00:00Z",
        "snapshots_sent": 1,
        "listeners": [format!("http://{listen}")],
        "admin": admin.map(|a| format!("http://{a}")),
    })
}

/// A controller admin API listing `connected` (state current) and
/// `departed`, answering only with its own token.
async fn controller(connected: Vec<Value>, departed: Vec<Value>) -> Backend {
    let proxies: Vec<Value> = connected
        .into_iter()
        .map(|mut p| {
            p["state"] = json!("current");
            p
        })
        .collect();
    let departed: Vec<Value> = departed
        .into_iter()
        .map(|mut p| {
            p["departed_at"] = json!("2026-01-01T00:00:00Z");
            p["reason"] = json!("it closed its stream");
            p
        })
        .collect();
    let doc = json!({
        "clusters": [{
            "service_cluster": "default",
            "version": &VERSION[..12],
            "version_full": VERSION,
            "proxies": proxies.len(),
            "current": proxies.len(),
        }],
        "proxies": proxies,
        "departed": departed,
    })
    .to_string();
    Backend::start("controller", move |req| {
        let ok = req
            .headers()
            .get("authorization")
            .is_some_and(|v| v == format!("Bearer {CONTROLLER_TOKEN}").as_str());
        let doc = doc.clone();
        async move {
            let mut r = Response::new(Full::new(Bytes::from(if ok { doc } else { String::new() })));
            if !ok {
                *r.status_mut() = StatusCode::UNAUTHORIZED;
            }
            r
        }
    })
    .await
}

/// An admin API that records the Authorization header of each request
/// and answers 401 to all.
async fn recording_admin() -> (Backend, Arc<Mutex<Vec<Option<String>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let b = Backend::start("proxy-admin", move |req| {
        log.lock().unwrap().push(
            req.headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned()),
        );
        async move {
            let mut r = Response::new(Full::new(Bytes::from_static(b"{\"error\":\"token\"}")));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r
        }
    })
    .await;
    (b, seen)
}

fn options(client: SocketAddr, controller: SocketAddr) -> Options {
    let target = Target::parse(&format!("http://{client}/"), false, None).unwrap();
    let mut opts = Options::new(target, None).unwrap();
    opts.controller_admin = Some(controller);
    opts.admin_token = Some(CONTROLLER_TOKEN.to_owned());
    opts.timeout = Duration::from_millis(500);
    opts
}

#[tokio::test]
async fn the_controller_s_token_is_never_sent_to_a_proxy_s_admin_api() {
    let web = Backend::echo("web").await;
    let (padmin, seen) = recording_admin().await;
    let ctl = controller(vec![proxy("p1", web.addr, Some(padmin.addr))], vec![]).await;
    let mut opts = options(web.addr, ctl.addr);

    // Without --proxy-admin-token-file: asked without a token, and
    // skipped (not failed) when it wants one, saying which option to give.
    let report = portico_trace::trace(&opts).await;
    let route = report.hops.iter().find(|h| h.hop == Hop::Route).unwrap();
    assert_eq!(route.result, Outcome::Skip, "{}", report.render());
    assert!(
        route.evidence.contains("--proxy-admin-token-file"),
        "{}",
        route.evidence
    );
    let upstream = report.hops.iter().find(|h| h.hop == Hop::Upstream).unwrap();
    assert_eq!(upstream.result, Outcome::Skip);
    assert_eq!(report.exit_code(), 0, "{}", report.render());
    let heard = seen.lock().unwrap().clone();
    assert!(!heard.is_empty());
    assert!(heard.iter().all(Option::is_none), "{heard:?}");

    // With it: that token, and only that one.
    seen.lock().unwrap().clear();
    opts.proxy_admin_token = Some("proxy-token".to_owned());
    let report = portico_trace::trace(&opts).await;
    let route = report.hops.iter().find(|h| h.hop == Hop::Route).unwrap();
    assert_eq!(route.result, Outcome::Fail, "{}", report.render());
    assert!(
        route
            .remedy
            .as_deref()
            .is_some_and(|r| r.contains("--proxy-admin-token-file")),
        "{route:?}"
    );
    let heard = seen.lock().unwrap().clone();
    assert!(!heard.is_empty());
    assert!(
        heard
            .iter()
            .all(|h| h.as_deref() == Some("Bearer proxy-token")),
        "{heard:?}"
    );
}

#[tokio::test]
async fn departed_proxies_are_listed_not_tried_and_the_rest_at_once() {
    let web = Backend::echo("web").await;
    // 20 connected proxies that never answer: one timeout for all of them.
    let hung = Backend::hang("hung").await;
    let connected: Vec<Value> = (0..20)
        .map(|i| proxy(&format!("p{i}"), hung.addr, None))
        .collect();
    let gone = Backend::echo("gone").await;
    let departed = vec![proxy("old", gone.addr, None)];
    let ctl = controller(connected, departed).await;
    let opts = options(web.addr, ctl.addr);

    let started = Instant::now();
    let report = portico_trace::trace(&opts).await;
    let took = started.elapsed();
    let table = report.render();
    assert!(took < Duration::from_secs(3), "{took:?}\n{table}");
    assert_eq!(gone.hits(), 0, "{table}");

    assert_eq!(report.proxies.len(), 21, "{table}");
    let old = report.proxies.iter().find(|p| p.id == "old").unwrap();
    assert_eq!(
        (old.state.as_str(), old.request),
        ("departed", Outcome::Skip)
    );
    let hop = report
        .hops
        .iter()
        .find(|h| h.hop == Hop::Proxy && h.target.contains("(old)"))
        .unwrap();
    assert_eq!(hop.result, Outcome::Skip);
    assert!(hop.evidence.contains("departed"), "{}", hop.evidence);
    let version = report
        .hops
        .iter()
        .find(|h| h.hop == Hop::Version && h.target == "old")
        .unwrap();
    assert_eq!(version.result, Outcome::Skip);
    assert!(
        version.evidence.contains("left the controller"),
        "{}",
        version.evidence
    );
    // Counted apart from those that serve (or not) the published version.
    assert!(
        table.contains("proxies: 20 of 20 serve the published version (1 departed, not checked)"),
        "{table}"
    );
    // The hung ones fail, each within the bound.
    let failed = report
        .hops
        .iter()
        .filter(|h| h.hop == Hop::Proxy && h.result == Outcome::Fail)
        .count();
    assert_eq!(failed, 20, "{table}");
}
