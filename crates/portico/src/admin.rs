//! The admin API: what the proxy is doing, for people and for `portico
//! trace`. Served only when the config has an `[admin]` table; a bearer
//! token is checked on every request when one is configured (and config
//! validation requires one off loopback).
//!
//! - `GET /health`: up, with the config version and the proxy's identity.
//! - `GET /routes[?host=NAME]`: host → services → upstreams, versioned; with
//!   `host`, the one route it matches, or the nearest configured hosts.
//! - `GET /config`: the active config, versioned (the token is never shown).
//! - `GET /config/versions`, `GET /config/versions/{v}`: the last applied
//!   versions (when, from whose input, what changed), and one of them
//!   whole; `GET /config/diff?from=A&to=B`: what changed between two;
//!   `GET /config/render?format=nginx[&version=V]`: a version as nginx.conf.
//! - `POST /probe` `{"host": …, "path": "/", "timeout_ms": 5000}`: the proxy
//!   itself sends a GET to each upstream of the host, since only it is sure
//!   to reach the service's network.
//!
//! The documents are the types of `portico_trace::api`, shared with the
//! tracer's client.
//!
//! The listener, the token check and the response helpers are shared with
//! the controller's admin API (`controller_admin`): each answers through
//! [`Api`], behind the same [`serve`].

use std::convert::Infallible;
use std::future::Future;
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
use portico_model::diff::{
    access_log_format_name, balance_name, protocol_name, size, statuses, tls_profile_name,
};
use portico_model::{normalize_request_host, AdminSettings, Config, ConfigDiff, Version};
use portico_proxy::{Proxy, Snapshot};
use portico_trace::api::{
    nearest_hosts, AdminConfig, ApiError, ConfigBody, ConfigDiffDocument, ConfigDocument,
    ConfigVersion, ConfigVersions, Health, Probe, ProbeRequest, ProbeResponse, ProxyConfig,
    RedirectConfig, RouteInfo, Routes, ServiceConfig, UpstreamHealth, VersionInfo, RENDER_FORMATS,
};
use portico_trace::http::{fetch, Fetch};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::history::{Entry, FindError, History};
use crate::metrics::Metrics;
use crate::status;

/// Largest request body accepted (a probe request is a few dozen bytes).
const MAX_BODY: usize = 64 * 1024;
const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the admin API reads: the proxy, its config history and metrics.
pub struct Admin {
    pub proxy: Arc<Proxy>,
    pub history: Arc<History>,
    pub metrics: Arc<Metrics>,
}

/// What an admin listener answers once [`serve`] has checked the token:
/// the proxy's API ([`Admin`]) or the controller's.
pub trait Api: Send + Sync + 'static {
    /// `started`: when the listener started, for uptimes.
    fn handle(&self, req: Request<Incoming>, started: Instant)
        -> impl Future<Output = Resp> + Send;
}

impl Api for Admin {
    async fn handle(&self, req: Request<Incoming>, started: Instant) -> Resp {
        handle(self, started, req).await
    }
}

/// Binds `settings.listen` and serves the admin API until `shutdown`.
pub async fn start<A: Api>(
    admin: Arc<A>,
    settings: &AdminSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", settings.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, auth = settings.token.is_some(), "starting admin server");
    tokio::spawn(serve(admin, listener, settings.token.clone(), shutdown));
    Ok(local)
}

/// Serves the admin API on an already-bound listener until `shutdown`.
///
/// The token is the one the listener was started with, for its whole life:
/// a reload that removed `[admin]` or its token must never leave a socket
/// bound to a public address without authentication. Changes to `[admin]`
/// take effect on restart (and a reload says so).
pub async fn serve<A: Api>(
    admin: Arc<A>,
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
        let admin = admin.clone();
        let stop = shutdown.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (admin, token) = (admin.clone(), token.clone());
                async move {
                    if let Some(token) = token.as_deref() {
                        if !authorized(req.headers().get(header::AUTHORIZATION), token) {
                            return Ok::<_, Infallible>(unauthorized());
                        }
                    }
                    Ok(admin.handle(req, started).await)
                }
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

pub type Resp = Response<Full<Bytes>>;

fn unauthorized() -> Resp {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "a valid token is required: Authorization: Bearer TOKEN (or, from a browser, \
         any user name with the token as password)",
    );
    // Programs use the bearer token; a browser shows its login prompt for
    // Basic and sends the token as the password.
    let h = r.headers_mut();
    h.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    h.append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"portico admin\", charset=\"UTF-8\""),
    );
    r
}

async fn handle(admin: &Admin, started: Instant, req: Request<Incoming>) -> Resp {
    let (proxy, history) = (&*admin.proxy, &*admin.history);
    let snap = proxy.snapshot();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET | Method::HEAD, "/") => status_page(admin, started),
        (Method::GET | Method::HEAD, "/metrics") => metrics(&admin.metrics, &req),
        (Method::GET | Method::HEAD, "/health") => ok(&health(proxy, &snap, started)),
        (Method::GET | Method::HEAD, "/routes") => routes(&snap, &query),
        (Method::GET | Method::HEAD, "/config") => ok(&config(&snap)),
        (Method::GET | Method::HEAD, "/config/versions") => ok(&versions(&snap, history)),
        (Method::GET | Method::HEAD, "/config/diff") => diff(&snap, history, &query),
        (Method::GET | Method::HEAD, "/config/render") => render(proxy, &snap, history, &query),
        (Method::GET | Method::HEAD, p) if p.starts_with("/config/versions/") => {
            let id = portico_trace::api::decode_query(&p["/config/versions/".len()..]);
            version(&snap, history, &id)
        }
        (Method::POST, "/probe") => probe(&snap, req).await,
        (_, "/" | "/metrics" | "/health" | "/routes" | "/config" | "/config/versions")
        | (_, "/config/diff")
        | (_, "/config/render") => not_allowed("GET"),
        (_, p) if p.starts_with("/config/versions/") => not_allowed("GET"),
        (_, "/probe") => not_allowed("POST"),
        _ => error(
            StatusCode::NOT_FOUND,
            "no such endpoint: try / (the status page), /metrics, /health, /routes, /config, \
             /config/versions, /config/diff, /config/render or POST /probe",
        ),
    }
}

/// Compares in time independent of where the bytes differ, so the token
/// cannot be guessed byte by byte from response times.
fn authorized(value: Option<&HeaderValue>, token: &str) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if let Some(presented) = value.strip_prefix("Bearer ") {
        return constant_time_eq(presented.trim().as_bytes(), token.as_bytes());
    }
    // A browser's Basic credentials: any user name, the token as password.
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return false;
    };
    use base64::Engine as _;
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let password = match decoded.iter().position(|&b| b == b':') {
        Some(colon) => &decoded[colon + 1..],
        None => return false,
    };
    constant_time_eq(password, token.as_bytes())
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

fn config(snap: &Snapshot) -> ConfigDocument {
    ConfigDocument {
        version: snap.version.to_string(),
        version_full: snap.version.full(),
        config: config_body(&snap.config),
    }
}

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A config as the admin documents show it: every key named as in the
/// TOML file, the token only as whether there is one.
fn config_body(c: &Config) -> ConfigBody {
    let p = &c.proxy;
    let d = duration;
    let opt_d = |v: Option<Duration>| v.map(d);
    let proxy = ProxyConfig {
        http_listen: p.http_listen,
        proxy_id: p.proxy_id.clone(),
        hide_info_headers: p.hide_info_headers,
        access_log: p.access_log,
        access_log_format: access_log_format_name(p.access_log_format).to_owned(),
        connect_timeout: d(p.connect_timeout),
        upstream_timeout: d(p.upstream_timeout),
        client_header_timeout: d(p.client_header_timeout),
        shutdown_grace: d(p.shutdown_grace),
        max_client_connections: p.max_client_connections,
        max_connections_per_upstream: p.max_connections_per_upstream,
        idle_connections_per_upstream: p.idle_connections_per_upstream,
        max_header_bytes: p.max_header_bytes,
        tunnel_idle_timeout: d(p.tunnel_idle_timeout),
        client_body_timeout: d(p.client_body_timeout),
        client_send_timeout: d(p.client_send_timeout),
        client_body_min_rate: p
            .client_body_min_rate
            .map_or_else(|| "off".to_owned(), |r| format!("{}/s", size(r))),
        client_body_grace: d(p.client_body_grace),
        max_bodies_per_client: p.max_bodies_per_client,
        https_listen: p.https_listen,
        default_tls_cert: p.default_tls.as_ref().map(|t| t.cert.clone()),
        default_tls_key: p.default_tls.as_ref().map(|t| t.key.clone()),
        default_tls_ocsp: p.default_tls.as_ref().and_then(|t| t.ocsp.clone()),
        https_redirect_port: p.https_redirect_port,
        max_body_size: p.max_body_size,
        trusted_proxies: p.trusted_proxies.iter().map(ToString::to_string).collect(),
        http_proxy_protocol: p.http_proxy_protocol,
        https_proxy_protocol: p.https_proxy_protocol,
        outlier_consecutive_failures: p.outlier_consecutive_failures,
        outlier_base_ejection_time: d(p.outlier_base_ejection_time),
        outlier_max_ejection_time: d(p.outlier_max_ejection_time),
        max_ejected_percent: p.max_ejected_percent,
        retry_budget_percent: p.retry_budget_percent,
        retry_budget_min_per_second: p.retry_budget_min_per_second,
        hedge_delay: p.hedge_delay.map_or_else(|| "off".to_owned(), d),
        probe_interval: p.probe_interval.map_or_else(|| "off".to_owned(), d),
        health_concurrency: p.health_concurrency,
        tls_profile: tls_profile_name(p.tls_profile).to_owned(),
    };
    let services = c
        .services
        .iter()
        .map(|s| {
            let tls = s.upstream.tls.as_ref();
            let health = s.health.as_ref();
            ServiceConfig {
                name: s.name.clone(),
                hosts: s.hosts.iter().map(ToString::to_string).collect(),
                upstreams: s.upstreams.clone(),
                tls_cert: s.tls.as_ref().map(|t| t.cert.clone()),
                tls_key: s.tls.as_ref().map(|t| t.key.clone()),
                tls_ocsp: s.tls.as_ref().and_then(|t| t.ocsp.clone()),
                ssl_only: s.ssl_only,
                hsts_max_age: opt_d(s.hsts_max_age),
                passthrough: s.passthrough,
                upstream_tls: tls.is_some(),
                upstream_tls_verify: tls
                    .map(|t| if t.verify { "required" } else { "none" }.to_owned()),
                upstream_tls_ca: tls.and_then(|t| t.ca.clone()),
                upstream_tls_name: tls.map(|t| t.server_name.clone()),
                upstream_protocol: protocol_name(s.upstream.protocol).to_owned(),
                context_root: s.context_root.clone(),
                context_root_rewrite: s.context_root_rewrite,
                redirects: s
                    .redirects
                    .iter()
                    .map(|r| RedirectConfig {
                        from: format!("{}://{}", r.from_scheme, r.from_host),
                        to: r.to.clone(),
                    })
                    .collect(),
                sticky_session_cookie: s.sticky_session_cookie.clone(),
                ip_hash: s.ip_hash,
                balance: balance_name(s.balance).to_owned(),
                default_backend: s.default_backend,
                max_body_size: s.max_body_size,
                connect_timeout: opt_d(s.connect_timeout),
                upstream_timeout: opt_d(s.upstream_timeout),
                health_path: health.map(|h| h.path.clone()),
                health_interval: health.map(|h| d(h.interval)),
                health_timeout: health.map(|h| d(h.timeout)),
                health_healthy: health.map(|h| h.healthy),
                health_unhealthy: health.map(|h| h.unhealthy),
                health_status: health.map(|h| statuses(&h.status)),
                health_host: health.and_then(|h| h.host.clone()),
                max_requests: s.max_requests,
                max_ejected_percent: s.max_ejected_percent,
            }
        })
        .collect();
    ConfigBody {
        proxy,
        admin: c.admin.as_ref().map(|a| AdminConfig {
            listen: a.listen,
            token_set: a.token.is_some(),
            config_history: a.config_history,
        }),
        services,
    }
}

fn version_info(entry: &Entry, current: Version) -> VersionInfo {
    VersionInfo {
        version: entry.version.to_string(),
        short: entry.version.short(),
        version_full: entry.version.full(),
        applied: entry.applied_rfc3339(),
        source: entry.source.as_str().to_owned(),
        summary: entry.summary.clone(),
        current: entry.version == current,
    }
}

fn versions(snap: &Snapshot, history: &History) -> ConfigVersions {
    ConfigVersions {
        current: snap.version.to_string(),
        kept: history.capacity(),
        versions: history
            .entries()
            .iter()
            .map(|e| version_info(e, snap.version))
            .collect(),
    }
}

/// The kept version `id` names, or the error that says which exist.
fn find(history: &History, id: &str) -> Result<Arc<Entry>, Box<Resp>> {
    let kept: Vec<String> = history
        .entries()
        .iter()
        .map(|e| e.version.to_string())
        .collect();
    let listed = if kept.is_empty() {
        "none".to_owned()
    } else {
        kept.join(", ")
    };
    let (status, message, versions) = match history.find(id) {
        Ok(entry) => return Ok(entry),
        Err(FindError::Malformed) => (
            StatusCode::BAD_REQUEST,
            format!(
                "{id:?} is not a version id (4 to 64 hex digits, as the logs' \
                 updatedVersion= or version=); the versions kept are: {listed}"
            ),
            kept,
        ),
        Err(FindError::NotFound) => (
            StatusCode::NOT_FOUND,
            format!(
                "no version {id:?} is kept (this proxy keeps its last {}); the versions kept are: {listed}",
                history.capacity()
            ),
            kept,
        ),
        Err(FindError::Ambiguous(matching)) => (
            StatusCode::BAD_REQUEST,
            format!(
                "{id:?} names several versions ({}): give more digits",
                matching.join(", ")
            ),
            matching,
        ),
    };
    Err(Box::new(json_response(
        status,
        &ApiError {
            error: message,
            versions,
            ..ApiError::default()
        },
    )))
}

fn version(snap: &Snapshot, history: &History, id: &str) -> Resp {
    let entry = match find(history, id) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let (previous, diff) = match &entry.previous {
        Some((v, d)) => (Some(v.to_string()), Some(d.clone())),
        None => (None, None),
    };
    ok(&ConfigVersion::<ConfigDiff> {
        info: version_info(&entry, snap.version),
        config: config_body(&entry.config),
        previous,
        diff_text: diff.as_ref().map(ToString::to_string),
        diff,
    })
}

/// `from` and `to` default to the version in force and the one before it.
fn diff(snap: &Snapshot, history: &History, query: &str) -> Resp {
    let to = match query_param(query, "to") {
        Some(id) => find(history, &id),
        None => find(history, &snap.version.full()),
    };
    let to = match to {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let from = match (query_param(query, "from"), &to.previous) {
        (Some(id), _) => find(history, &id),
        (None, Some((v, _))) => find(history, &v.full()),
        (None, None) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "version {} is the first this proxy applied: name the other with from=",
                    to.version
                ),
            )
        }
    };
    let from = match from {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let diff = ConfigDiff::between(&from.config, &to.config);
    ok(&ConfigDiffDocument {
        from: version_info(&from, snap.version),
        to: version_info(&to, snap.version),
        text: diff.to_string(),
        diff,
    })
}

fn render(proxy: &Proxy, snap: &Snapshot, history: &History, query: &str) -> Resp {
    let format = query_param(query, "format").unwrap_or_default();
    if !RENDER_FORMATS.contains(&format.as_str()) {
        let what = if format.is_empty() {
            "a format= is required".to_owned()
        } else {
            format!("unknown format {format:?}")
        };
        return error(
            StatusCode::BAD_REQUEST,
            &format!("{what}: the formats are {}", RENDER_FORMATS.join(", ")),
        );
    }
    let config = match query_param(query, "version") {
        Some(id) => match find(history, &id) {
            Ok(e) => e.config.clone(),
            Err(r) => return *r,
        },
        None => snap.config.clone(),
    };
    let text = crate::nginx::render(
        &config,
        &crate::nginx::Options {
            base_dir: history.base_dir(),
            server_info: &proxy.identity().server_info,
        },
    );
    self::text("text/plain; charset=utf-8", text)
}

/// `GET /metrics`, in the format the scraper asks for.
pub fn metrics(metrics: &Metrics, req: &Request<Incoming>) -> Resp {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok());
    let (body, content_type) = metrics.render(accept);
    text(content_type, body)
}

/// A text document that is never cached (it describes the moment).
pub fn text(content_type: &'static str, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn status_page(admin: &Admin, started: Instant) -> Resp {
    let history: Vec<status::Change> = admin
        .history
        .entries()
        .iter()
        .map(|e| status::Change {
            version: e.version.to_string(),
            applied: e.applied,
            source: e.source.as_str().to_owned(),
            summary: e.summary.clone(),
        })
        .collect();
    let docker = admin
        .proxy
        .snapshot()
        .config
        .docker
        .is_some()
        .then(|| status::DockerState {
            stats: admin.metrics.docker.get(),
            findings: admin.metrics.docker.findings(),
        });
    html(status::page(
        &admin.proxy,
        &status::Context {
            started,
            history: &history,
            docker,
        },
    ))
}

/// A status page.
pub fn html(page: String) -> Resp {
    let mut r = text("text/html; charset=utf-8", page);
    // Its own inline style only: nothing else may load, and no other site
    // may frame it.
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    r
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
            ..ApiError::default()
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

pub fn ok<T: Serialize>(body: &T) -> Resp {
    json_response(StatusCode::OK, body)
}

pub fn error(status: StatusCode, message: &str) -> Resp {
    json_response(
        status,
        &ApiError {
            error: message.to_owned(),
            ..ApiError::default()
        },
    )
}

pub fn not_allowed(allow: &'static str) -> Resp {
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
        // base64("admin:0123456789abcdef"), and the same with a wrong password.
        let basic = HeaderValue::from_static("Basic YWRtaW46MDEyMzQ1Njc4OWFiY2RlZg==");
        assert!(authorized(Some(&basic), "0123456789abcdef"));
        let wrong = HeaderValue::from_static("Basic YWRtaW46MDEyMzQ1Njc4OWFiY2RlRg==");
        assert!(!authorized(Some(&wrong), "0123456789abcdef"));
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
