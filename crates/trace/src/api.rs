//! The admin API's JSON documents, shared by the server (in the `portico`
//! binary) and the tracer's client, so the two cannot drift apart; and the
//! client itself.
//!
//! These shapes are a stable interface: fields are only ever added.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use portico_cluster::{DepartedProxy, ProxyStatus, SyncState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::http::{fetch, Fetch, FetchError, Timings};

/// `GET /health`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Health {
    /// Always `"ok"`: the process answers and has a config.
    pub status: String,
    /// The config version in force (12 hex digits, as in the logs).
    pub version: String,
    /// The `x-server-info` string.
    pub server_info: String,
    /// The `x-proxy-id` this proxy sends.
    pub proxy_id: String,
    /// The configured `[proxy] http_listen`.
    pub http_listen: SocketAddr,
    /// The configured `[proxy] https_listen`, if HTTPS is served.
    #[serde(default)]
    pub https_listen: Option<SocketAddr>,
    pub services: usize,
    pub uptime_seconds: u64,
}

/// `GET /routes` and `GET /routes?host=NAME`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Routes {
    pub version: String,
    /// The host asked about (normalised), or `null` for the whole table.
    pub host: Option<String>,
    /// Every route, or with `host` the one route it matches (or none).
    pub routes: Vec<RouteInfo>,
    /// With `host` and no match: the configured hosts nearest to it.
    pub nearest: Vec<NearHost>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RouteInfo {
    /// Host patterns leading here (`foo.example`, `*.foo.example`).
    pub hosts: Vec<String>,
    /// With `?host=`: the pattern that matched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<String>,
    /// The path prefix the route serves (`/api`); absent: every path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Services pooled on these hosts (and path).
    pub services: Vec<String>,
    /// Their upstreams, in round-robin order.
    pub upstreams: Vec<SocketAddr>,
    /// What the proxy makes of each upstream's health, in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<UpstreamHealth>,
}

/// One upstream's health as the proxy judges it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UpstreamHealth {
    pub upstream: SocketAddr,
    /// `unknown` (no checks, or none conclusive yet), `healthy`,
    /// `unhealthy` (failed its checks) or `ejected` (failed requests).
    pub state: String,
    /// Why it is unhealthy or ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Since when (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Until when it is ejected (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// The last check's result and when (`status 200 at 2026-...Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<String>,
}

impl UpstreamHealth {
    /// It takes no traffic while others of its pool do.
    pub fn is_down(&self) -> bool {
        matches!(self.state.as_str(), "unhealthy" | "ejected")
    }

    /// A sentence for a report: `ejected until ... (reason)`.
    pub fn describe(&self) -> String {
        let mut out = match (self.state.as_str(), &self.until, &self.since) {
            ("ejected", Some(until), _) => format!("ejected by the proxy until {until}"),
            ("unhealthy", _, Some(since)) => format!("failing its health checks since {since}"),
            (state, _, _) => state.to_owned(),
        };
        if let Some(reason) = &self.reason {
            out.push_str(&format!(" ({reason})"));
        }
        out
    }
}

/// `GET /health` on a controller's admin API.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ControllerHealth {
    /// Always `"ok"`.
    pub status: String,
    /// Always `"controller"`: tells it from a proxy's `/health`.
    pub role: String,
    pub server_info: String,
    /// Where proxies hold their streams (`[controller] listen`).
    pub listen: SocketAddr,
    /// Proxies connected now.
    pub proxies: usize,
    /// Service clusters with a published config.
    pub service_clusters: usize,
    pub uptime_seconds: u64,
}

/// `GET /proxies` on a controller's admin API: who has what.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Proxies {
    /// Each service cluster with a published config, by name.
    pub clusters: Vec<PublishedCluster>,
    /// Every connected proxy, by id.
    pub proxies: Vec<ListedProxy>,
    /// Proxies whose stream ended in the last hour and that have not come
    /// back, the latest first.
    #[serde(default)]
    pub departed: Vec<DepartedProxy>,
}

/// A service cluster's published config, and how many of its proxies
/// serve it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PublishedCluster {
    pub service_cluster: String,
    /// 12 hex digits, as in the logs.
    pub version: String,
    /// 64 hex digits, as proxies' `applied_version`.
    pub version_full: String,
    /// Its connected proxies.
    pub proxies: usize,
    /// Those of them that have applied `version`.
    pub current: usize,
}

/// A connected proxy as the controller lists it (times RFC 3339,
/// versions 64 hex digits), with where it stands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ListedProxy {
    #[serde(flatten)]
    pub status: ProxyStatus,
    /// Against its cluster's published version: `current`, `behind`,
    /// `nacking` (its last NACK refused it) or `unpublished`.
    pub state: SyncState,
}

/// A configured host close to one that is not configured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NearHost {
    pub host: String,
    pub services: Vec<String>,
    /// Edit distance to the host asked about.
    pub distance: usize,
}

/// `POST /probe` body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProbeRequest {
    pub host: String,
    #[serde(default = "default_path")]
    pub path: String,
    /// Per-upstream bound; default 5000, at most 30000.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

fn default_path() -> String {
    "/".to_owned()
}

/// `POST /probe` answer: one probe per upstream of the host's route, sent
/// by the proxy process itself (only it is sure to reach the tasks' network).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProbeResponse {
    pub version: String,
    pub host: String,
    pub services: Vec<String>,
    pub probes: Vec<Probe>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Probe {
    pub upstream: SocketAddr,
    /// An answer below 500 arrived.
    pub ok: bool,
    pub status: Option<u16>,
    pub timings: Timings,
    pub error: Option<String>,
}

/// The body of every admin error (4xx/5xx).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ApiError {
    pub error: String,
    /// For an unknown host: the configured hosts nearest to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nearest: Vec<NearHost>,
    /// For an unknown config version: the versions the proxy keeps, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
}

/// `GET /config`: the config in force, every setting named as in the
/// TOML file (durations as `"5s"`, sizes in bytes, unset as `null`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConfigDocument {
    pub version: String,
    pub version_full: String,
    pub config: ConfigBody,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConfigBody {
    pub proxy: ProxyConfig,
    /// `null` without an `[admin]` table. The token itself is never shown.
    pub admin: Option<AdminConfig>,
    pub services: Vec<ServiceConfig>,
}

/// `[proxy]`. Fields after `max_header_bytes` were added with config
/// history; a client reading an older proxy gets their defaults.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProxyConfig {
    pub http_listen: SocketAddr,
    pub proxy_id: Option<String>,
    pub hide_info_headers: bool,
    pub access_log: bool,
    /// `interlock` or `combined`.
    #[serde(default)]
    pub access_log_format: String,
    pub connect_timeout: String,
    pub upstream_timeout: String,
    pub client_header_timeout: String,
    pub shutdown_grace: String,
    /// `None`: `"auto"` (from the descriptor limit).
    #[serde(default)]
    pub max_client_connections: Option<usize>,
    pub max_connections_per_upstream: usize,
    pub idle_connections_per_upstream: usize,
    pub max_header_bytes: usize,
    #[serde(default)]
    pub tunnel_idle_timeout: String,
    #[serde(default)]
    pub client_body_timeout: String,
    #[serde(default)]
    pub client_send_timeout: String,
    /// `"1KiB/s"`, or `"off"`.
    #[serde(default)]
    pub client_body_min_rate: String,
    #[serde(default)]
    pub client_body_grace: String,
    #[serde(default)]
    pub max_bodies_per_client: usize,
    #[serde(default)]
    pub https_listen: Option<SocketAddr>,
    #[serde(default)]
    pub default_tls_cert: Option<String>,
    #[serde(default)]
    pub default_tls_key: Option<String>,
    #[serde(default)]
    pub default_tls_ocsp: Option<String>,
    #[serde(default)]
    pub https_redirect_port: u16,
    #[serde(default)]
    pub max_body_size: Option<u64>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub http_proxy_protocol: bool,
    #[serde(default)]
    pub https_proxy_protocol: bool,
    #[serde(default)]
    pub outlier_consecutive_failures: u32,
    #[serde(default)]
    pub outlier_base_ejection_time: String,
    #[serde(default)]
    pub outlier_max_ejection_time: String,
    #[serde(default)]
    pub max_ejected_percent: u8,
    #[serde(default)]
    pub retry_budget_percent: u8,
    #[serde(default)]
    pub retry_budget_min_per_second: u32,
    /// A duration, or `"off"`.
    #[serde(default)]
    pub hedge_delay: String,
    /// `off`, or how often each upstream is probed.
    #[serde(default)]
    pub probe_interval: String,
    #[serde(default)]
    pub health_concurrency: usize,
    #[serde(default)]
    pub tls_profile: String,
}

/// `[admin]`, without the token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token_set: bool,
    #[serde(default)]
    pub config_history: usize,
}

/// One `[[service]]` (or Docker service), every key as the file names it.
/// Fields after `upstreams` were added with config history.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServiceConfig {
    pub name: String,
    pub hosts: Vec<String>,
    pub upstreams: Vec<SocketAddr>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_ocsp: Option<String>,
    pub ssl_only: bool,
    pub hsts_max_age: Option<String>,
    pub passthrough: bool,
    pub upstream_tls: bool,
    /// `"required"` or `"none"` with `upstream_tls`.
    pub upstream_tls_verify: Option<String>,
    pub upstream_tls_ca: Option<String>,
    pub upstream_tls_name: Option<String>,
    /// `"http1"`, `"h2"` or `"h2c"`.
    pub upstream_protocol: String,
    /// `null`: every path.
    pub context_root: Option<String>,
    pub context_root_rewrite: bool,
    pub redirects: Vec<RedirectConfig>,
    pub sticky_session_cookie: Option<String>,
    pub ip_hash: bool,
    /// `"round_robin"` or `"least_request"`.
    pub balance: String,
    pub default_backend: bool,
    pub max_body_size: Option<u64>,
    pub connect_timeout: Option<String>,
    pub upstream_timeout: Option<String>,
    pub health_path: Option<String>,
    pub health_interval: Option<String>,
    pub health_timeout: Option<String>,
    pub health_healthy: Option<u32>,
    pub health_unhealthy: Option<u32>,
    pub health_status: Option<String>,
    pub health_host: Option<String>,
    pub max_requests: Option<u32>,
    pub max_ejected_percent: Option<u8>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RedirectConfig {
    pub from: String,
    pub to: String,
}

/// `GET /config/versions`: the versions the proxy keeps, newest first.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConfigVersions {
    /// The version in force (12 hex digits).
    pub current: String,
    /// How many versions are kept (`[admin] config_history`).
    pub kept: usize,
    pub versions: Vec<VersionInfo>,
}

/// One applied version, as listed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VersionInfo {
    /// 12 hex digits, as in the logs' `version=`.
    pub version: String,
    /// 6 hex digits, as in the logs' `updatedVersion=`.
    pub short: String,
    pub version_full: String,
    /// When it was applied (RFC 3339, UTC).
    pub applied: String,
    /// Whose input changed to make it: `file`, `docker` or `file+docker`.
    pub source: String,
    /// What changed from the version before, in one line.
    pub summary: String,
    /// It is the version in force.
    pub current: bool,
}

/// `GET /config/versions/{v}`: one version's config (the `/config`
/// document's `version`, `version_full` and `config`, with the list's
/// fields) and what changed from the version before it. `D` is the diff's
/// type: `portico_model::ConfigDiff` on both sides; generic because this
/// crate does not depend on the model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConfigVersion<D> {
    #[serde(flatten)]
    pub info: VersionInfo,
    pub config: ConfigBody,
    /// The version applied before it (12 hex digits); `null` for the first.
    pub previous: Option<String>,
    /// What changed from `previous`, structured and as text.
    pub diff: Option<D>,
    pub diff_text: Option<String>,
}

/// `GET /config/diff?from=A&to=B`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConfigDiffDocument<D> {
    pub from: VersionInfo,
    pub to: VersionInfo,
    pub diff: D,
    /// The same, for a person: one line per change.
    pub text: String,
}

/// What `GET /config/render?format=` offers.
pub const RENDER_FORMATS: &[&str] = &["nginx"];

/// The configured hosts nearest to `host` (at most 3, closest first), from
/// `(pattern, services)` pairs; only those within a plausible typo
/// distance, so an unrelated name suggests nothing.
pub fn nearest_hosts<'a>(
    host: &str,
    candidates: impl IntoIterator<Item = (String, &'a [String])>,
) -> Vec<NearHost> {
    let limit = (host.len() / 3).max(2);
    let mut near: Vec<NearHost> = candidates
        .into_iter()
        .map(|(pattern, services)| NearHost {
            distance: distance(host, &pattern),
            host: pattern,
            services: services.to_vec(),
        })
        .filter(|n| n.distance <= limit)
        .collect();
    near.sort_by(|a, b| a.distance.cmp(&b.distance).then(a.host.cmp(&b.host)));
    near.truncate(3);
    near
}

/// Levenshtein distance over bytes (host names are ASCII).
fn distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Why an admin call gave no document.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum AdminError {
    #[error("admin API at {addr}: {error}")]
    Unreachable { addr: SocketAddr, error: FetchError },
    #[error(
        "admin API at {addr} refused the token (401): pass --admin-token or PORTICO_ADMIN_TOKEN"
    )]
    Unauthorized { addr: SocketAddr },
    #[error("admin API at {addr} answered {status}: {error}")]
    Status {
        addr: SocketAddr,
        status: u16,
        error: String,
        body: Option<ApiError>,
    },
    #[error("admin API at {addr} sent an unreadable document: {error}")]
    Decode { addr: SocketAddr, error: String },
}

/// A client for one proxy's (or a controller's) admin API.
#[derive(Clone, Debug)]
pub struct AdminClient {
    pub addr: SocketAddr,
    pub token: Option<String>,
    pub timeout: Duration,
}

impl AdminClient {
    pub async fn health(&self) -> Result<Health, AdminError> {
        self.call(Method::GET, "/health", Bytes::new()).await
    }

    pub async fn routes_for(&self, host: &str) -> Result<Routes, AdminError> {
        let path = format!("/routes?host={}", encode_query(host));
        self.call(Method::GET, &path, Bytes::new()).await
    }

    pub async fn probe(&self, req: &ProbeRequest) -> Result<ProbeResponse, AdminError> {
        let body = serde_json::to_vec(req).expect("a probe request serialises");
        self.call(Method::POST, "/probe", Bytes::from(body)).await
    }

    /// A controller's listing of its proxies.
    pub async fn proxies(&self) -> Result<Proxies, AdminError> {
        self.call(Method::GET, "/proxies", Bytes::new()).await
    }

    pub async fn config_versions(&self) -> Result<ConfigVersions, AdminError> {
        self.call(Method::GET, "/config/versions", Bytes::new())
            .await
    }

    /// One version by id (full, 12 or 6 hex digits, or a unique prefix of
    /// at least 4).
    pub async fn config_version<D: DeserializeOwned>(
        &self,
        version: &str,
    ) -> Result<ConfigVersion<D>, AdminError> {
        let path = format!("/config/versions/{}", encode_query(version));
        self.call(Method::GET, &path, Bytes::new()).await
    }

    pub async fn config_diff<D: DeserializeOwned>(
        &self,
        from: &str,
        to: &str,
    ) -> Result<ConfigDiffDocument<D>, AdminError> {
        let path = format!(
            "/config/diff?from={}&to={}",
            encode_query(from),
            encode_query(to)
        );
        self.call(Method::GET, &path, Bytes::new()).await
    }

    /// A version (default: the one in force) rendered in `format`, as text.
    pub async fn config_render(
        &self,
        format: &str,
        version: Option<&str>,
    ) -> Result<String, AdminError> {
        let mut path = format!("/config/render?format={}", encode_query(format));
        if let Some(v) = version {
            path.push_str(&format!("&version={}", encode_query(v)));
        }
        let answer = self.send(Method::GET, &path, Bytes::new()).await?;
        String::from_utf8(answer.body.to_vec()).map_err(|e| AdminError::Decode {
            addr: self.addr,
            error: e.to_string(),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<T, AdminError> {
        let answer = self.send(method, path, body).await?;
        serde_json::from_slice(&answer.body).map_err(|e| AdminError::Decode {
            addr: self.addr,
            error: e.to_string(),
        })
    }

    /// One exchange; a 4xx/5xx answer is an error carrying the API's
    /// error document when there is one.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<crate::http::Answer, AdminError> {
        let host = self.addr.to_string();
        let mut headers = vec![("accept", "application/json".to_owned())];
        if !body.is_empty() {
            headers.push(("content-type", "application/json".to_owned()));
        }
        if let Some(t) = &self.token {
            headers.push(("authorization", format!("Bearer {t}")));
        }
        let ex = fetch(Fetch {
            addr: self.addr,
            method,
            host: &host,
            path,
            headers,
            body,
            tls: None,
            timeout: self.timeout,
            // A rendered config of thousands of services runs to megabytes.
            body_limit: 64 << 20,
        })
        .await;
        let answer = ex.result.map_err(|error| AdminError::Unreachable {
            addr: self.addr,
            error,
        })?;
        if answer.status == 401 {
            return Err(AdminError::Unauthorized { addr: self.addr });
        }
        if answer.status >= 400 {
            let parsed: Option<ApiError> = serde_json::from_slice(&answer.body).ok();
            return Err(AdminError::Status {
                addr: self.addr,
                status: answer.status,
                error: parsed
                    .as_ref()
                    .map_or_else(|| answer.body_text(), |e| e.error.clone()),
                body: parsed,
            });
        }
        Ok(answer)
    }
}

/// Percent-encodes a query value (host names need little, but never trust
/// what a user typed to be one).
fn encode_query(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'*') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded query value (the server's side of [`encode_query`]).
pub fn decode_query(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_near_and_strangers_are_not() {
        let svc = vec!["simple_foo".to_owned()];
        let near = nearest_hosts(
            "foo.app.domain.com",
            [
                ("foo.app.domain.co".to_owned(), svc.as_slice()),
                ("bar.example.org".to_owned(), svc.as_slice()),
            ],
        );
        assert_eq!(near.len(), 1);
        assert_eq!(near[0].host, "foo.app.domain.co");
        assert_eq!(near[0].distance, 1);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn query_round_trip() {
        for v in ["foo.app.test", "a b&c=d", "é%"] {
            assert_eq!(decode_query(&encode_query(v)), v);
        }
        assert_eq!(decode_query("%zz"), "%zz");
        assert_eq!(decode_query("abc%"), "abc%");
    }
}
