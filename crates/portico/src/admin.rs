//! The admin API: what the proxy is doing, for people and for `portico
//! trace`. Served only when the config has an `[admin]` table; a bearer
//! token is checked on every request when one is configured (and config
//! validation requires one off loopback).
//!
//! - `GET /health`: up, with the config version and the proxy's identity.
//! - `GET /routes[?host=NAME]`: host → services → upstreams, versioned; with
//!   `host`, the one route it matches, or the nearest configured hosts.
//! - `GET /config`: the active config, versioned (the token is never shown).
//! - `POST /probe` `{"host": …, "path": "/", "timeout_ms": 5000}`: the proxy
//!   itself sends a GET to each upstream of the host, since only it is sure
//!   to reach the service's network.
//!
//! The documents are the types of `portico_trace::api`, shared with the
//! tracer's client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use portico_model::{normalize_request_host, AdminSettings};
use portico_proxy::{Proxy, Snapshot};
use portico_trace::api::{
    nearest_hosts, ApiError, Health, Probe, ProbeRequest, ProbeResponse, RouteInfo, Routes,
    UpstreamHealth,
};
use portico_trace::http::{fetch, Fetch};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Largest request body accepted (a probe request is a few dozen bytes).
const MAX_BODY: usize = 64 * 1024;
const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds `settings.listen` and serves the admin API until `shutdown`.
pub async fn start(
    proxy: Arc<Proxy>,
    settings: &AdminSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", settings.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, auth = settings.token.is_some(), "starting admin server");
    tokio::spawn(serve(proxy, listener, settings.token.clone(), shutdown));
    Ok(local)
}

/// Serves the admin API on an already-bound listener until `shutdown`.
///
/// The token is the one the listener was started with, for its whole life:
/// a reload that removed `[admin]` or its token must never leave a socket
/// bound to a public address without authentication. Changes to `[admin]`
/// take effect on restart (and a reload says so).
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    token: Option<String>,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let token: Option<Arc<str>> = token.map(Arc::from);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    // Out of descriptors: give the system a moment rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let proxy = proxy.clone();
        let stop = shutdown.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (proxy, token) = (proxy.clone(), token.clone());
                async move { Ok::<_, Infallible>(handle(&proxy, token.as_deref(), started, req).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(client = %peer, error = %e, "admin connection ended with an error");
                },
                _ = stop.cancelled() => {}
            }
        });
    }
}

type Resp = Response<Full<Bytes>>;

async fn handle(
    proxy: &Proxy,
    token: Option<&str>,
    started: Instant,
    req: Request<Incoming>,
) -> Resp {
    let snap = proxy.snapshot();
    if let Some(token) = token {
        if !authorized(req.headers().get(header::AUTHORIZATION), token) {
            let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET | Method::HEAD, "/health") => ok(&health(proxy, &snap, started)),
        (Method::GET | Method::HEAD, "/routes") => routes(&snap, &query),
        (Method::GET | Method::HEAD, "/config") => ok(&config(&snap)),
        (Method::POST, "/probe") => probe(&snap, req).await,
        (_, "/health" | "/routes" | "/config") => not_allowed("GET"),
        (_, "/probe") => not_allowed("POST"),
        _ => error(
            StatusCode::NOT_FOUND,
            "no such endpoint: try /health, /routes, /config or POST /probe",
        ),
    }
}

/// Compares in time independent of where the bytes differ, so the token
/// cannot be guessed byte by byte from response times.
fn authorized(value: Option<&HeaderValue>, token: &str) -> bool {
    let Some(presented) = value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    constant_time_eq(presented.trim().as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u64::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

fn health(proxy: &Proxy, snap: &Snapshot, started: Instant) -> Health {
    Health {
        status: "ok".to_owned(),
        version: snap.version.to_string(),
        server_info: proxy.identity().server_info.clone(),
        proxy_id: snap.proxy_id.to_str().unwrap_or_default().to_owned(),
        http_listen: snap.config.proxy.http_listen,
        https_listen: snap.config.proxy.https_listen,
        services: snap.config.services.len(),
        uptime_seconds: started.elapsed().as_secs(),
    }
}

fn route_info(snap: &Snapshot, id: usize, matched: Option<String>) -> RouteInfo {
    let route = snap.table.route(id);
    let time = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    RouteInfo {
        hosts: route.hosts.iter().map(ToString::to_string).collect(),
        matched,
        path: route.path.clone(),
        services: route.services.clone(),
        upstreams: route.upstreams.clone(),
        health: snap.pools[id]
            .upstreams
            .iter()
            .map(|u| {
                let r = u.health.report();
                UpstreamHealth {
                    upstream: u.addr,
                    state: r.state.to_owned(),
                    reason: r.reason,
                    since: r.since.map(time),
                    until: r.until.map(time),
                    last_check: r
                        .last_check
                        .map(|(at, said)| format!("{said} at {}", time(at))),
                }
            })
            .collect(),
    }
}

/// The route for `host` (normalised), with the pattern that matched, or
/// the nearest configured hosts.
fn lookup(snap: &Snapshot, host: &str) -> (Vec<RouteInfo>, Vec<portico_trace::api::NearHost>) {
    match snap.table.lookup_site(host) {
        Some(id) => {
            let site = snap.table.site(id);
            let matched = site
                .hosts
                .iter()
                .map(ToString::to_string)
                .find(|h| h == host)
                .or_else(|| {
                    // The most specific wildcard is the longest suffix that matches.
                    site.hosts
                        .iter()
                        .map(ToString::to_string)
                        .filter(|h| {
                            h.strip_prefix("*.")
                                .is_some_and(|s| host.ends_with(&format!(".{s}")))
                        })
                        .max_by_key(String::len)
                });
            // Every path rule of the host, longest prefix first.
            let routes = site
                .rules
                .iter()
                .map(|&r| route_info(snap, r, matched.clone()))
                .collect();
            (routes, Vec::new())
        }
        None => {
            let candidates = snap.table.routes().iter().flat_map(|r| {
                r.hosts
                    .iter()
                    .map(move |h| (h.to_string(), r.services.as_slice()))
            });
            (Vec::new(), nearest_hosts(host, candidates))
        }
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| portico_trace::api::decode_query(v))
}

fn routes(snap: &Snapshot, query: &str) -> Resp {
    let version = snap.version.to_string();
    let Some(raw) = query_param(query, "host") else {
        return ok(&Routes {
            version,
            host: None,
            routes: (0..snap.table.routes().len())
                .map(|id| route_info(snap, id, None))
                .collect(),
            nearest: Vec::new(),
        });
    };
    let host = match normalize_request_host(&raw) {
        Ok(h) => h.into_owned(),
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("host {raw:?}: {e}")),
    };
    let (route, nearest) = lookup(snap, &host);
    ok(&Routes {
        version,
        host: Some(host),
        routes: route,
        nearest,
    })
}

fn config(snap: &Snapshot) -> serde_json::Value {
    let c = &snap.config;
    let p = &c.proxy;
    let d = |d: Duration| humantime::format_duration(d).to_string();
    json!({
        "version": snap.version.to_string(),
        "version_full": snap.version.full(),
        "config": {
            "proxy": {
                "http_listen": p.http_listen,
                "proxy_id": p.proxy_id,
                "hide_info_headers": p.hide_info_headers,
                "access_log": p.access_log,
                "connect_timeout": d(p.connect_timeout),
                "upstream_timeout": d(p.upstream_timeout),
                "client_header_timeout": d(p.client_header_timeout),
                "shutdown_grace": d(p.shutdown_grace),
                "max_connections_per_upstream": p.max_connections_per_upstream,
                "idle_connections_per_upstream": p.idle_connections_per_upstream,
                "max_header_bytes": p.max_header_bytes,
            },
            "admin": c.admin.as_ref().map(|a| json!({
                "listen": a.listen,
                "token_set": a.token.is_some(),
            })),
            "services": c.services.iter().map(|s| json!({
                "name": s.name,
                "hosts": s.hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "upstreams": s.upstreams,
            })).collect::<Vec<_>>(),
        }
    })
}

async fn probe(snap: &Snapshot, req: Request<Incoming>) -> Resp {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            )
        }
    };
    let probe: ProbeRequest = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"host\": NAME, \"path\": \"/\", \"timeout_ms\": 5000}}: {e}"),
            )
        }
    };
    let host = match normalize_request_host(&probe.host) {
        Ok(h) => h.into_owned(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("host {:?}: {e}", probe.host),
            )
        }
    };
    if !probe.path.starts_with('/') || probe.path.parse::<http::Uri>().is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "path must be an absolute path such as \"/\"",
        );
    }
    let timeout = probe
        .timeout_ms
        .map_or(DEFAULT_PROBE_TIMEOUT, Duration::from_millis)
        .clamp(Duration::from_millis(1), MAX_PROBE_TIMEOUT);
    let path_only = probe.path.split('?').next().unwrap_or("/");
    let route = match snap.table.lookup(&host, path_only) {
        portico_model::Lookup::Route(id) => Some(snap.table.route(id)),
        _ => None,
    };
    let Some(route) = route else {
        let (_, nearest) = lookup(snap, &host);
        let body = ApiError {
            error: format!("no route for {host}{path_only} in config {}", snap.version),
            nearest,
        };
        return json_response(StatusCode::NOT_FOUND, &body);
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (i, addr) in route.upstreams.iter().copied().enumerate() {
        let (host, path) = (probe.host.clone(), probe.path.clone());
        tasks.spawn(async move {
            let ex = fetch(Fetch::get(addr, &host, &path, timeout)).await;
            let status = ex.result.as_ref().ok().map(|a| a.status);
            let probe = Probe {
                upstream: addr,
                ok: status.is_some_and(|s| s < 500),
                status,
                timings: ex.timings,
                error: ex.result.err().map(|e| e.to_string()),
            };
            (i, probe)
        });
    }
    let mut probes: Vec<(usize, Probe)> = Vec::with_capacity(route.upstreams.len());
    while let Some(done) = tasks.join_next().await {
        if let Ok(p) = done {
            probes.push(p);
        }
    }
    probes.sort_by_key(|(i, _)| *i);
    ok(&ProbeResponse {
        version: snap.version.to_string(),
        host,
        services: route.services.clone(),
        probes: probes.into_iter().map(|(_, p)| p).collect(),
    })
}

fn ok<T: Serialize>(body: &T) -> Resp {
    json_response(StatusCode::OK, body)
}

fn error(status: StatusCode, message: &str) -> Resp {
    json_response(
        status,
        &ApiError {
            error: message.to_owned(),
            nearest: Vec::new(),
        },
    )
}

fn not_allowed(allow: &'static str) -> Resp {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, &format!("use {allow}"));
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Resp {
    let mut text = serde_json::to_vec_pretty(body).expect("admin documents serialise");
    text.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdef", b"0123456789abcdeF"));
        assert!(!constant_time_eq(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!constant_time_eq(b"", b"x"));
        let v = HeaderValue::from_static("Bearer 0123456789abcdef");
        assert!(authorized(Some(&v), "0123456789abcdef"));
        assert!(!authorized(None, "0123456789abcdef"));
        let basic = HeaderValue::from_static("Basic 0123456789abcdef");
        assert!(!authorized(Some(&basic), "0123456789abcdef"));
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param("host=foo.test&x=1", "host").as_deref(),
            Some("foo.test")
        );
        assert_eq!(query_param("x=1", "host"), None);
        assert_eq!(query_param("host=a%2Eb", "host").as_deref(), Some("a.b"));
    }
}
