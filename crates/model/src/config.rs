//! The TOML config: a raw schema that mirrors the file (with source spans),
//! then validation into [`Config`], which the rest of Portico trusts.
//!
//! Every problem found is reported, each with the file, line, column and the
//! field it concerns, so `portico check` can list them all at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::host::HostPattern;
use crate::rules;

/// Proxy-wide settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// Where plain HTTP is served. Changing it needs a restart.
    pub http_listen: SocketAddr,
    /// Sent as `x-proxy-id`; `None` means the machine's hostname.
    pub proxy_id: Option<String>,
    /// Drops `x-server-info`, `x-upstream-addr` and `x-upstream-response-time`.
    pub hide_info_headers: bool,
    pub access_log: bool,
    /// How access-log lines are written.
    pub access_log_format: AccessLogFormat,
    /// Limit for opening a TCP connection to one upstream; on expiry the next one is tried.
    pub connect_timeout: Duration,
    /// Limit between sending a request upstream and receiving its response
    /// head (504 after); also the longest a response body may bring no data.
    pub upstream_timeout: Duration,
    /// How long a client may take to send a request head (slow-loris guard).
    pub client_header_timeout: Duration,
    /// How long in-flight requests may run on after SIGTERM.
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long the proxy keeps accepting and serving, with
    /// `health_uri` answering 503, before it stops listening and drains:
    /// the time an external load balancer's health checks need to take it
    /// out, so that no request is sent to a port that is closing. Zero:
    /// drain at once.
    pub drain_delay: Duration,
    /// A path the proxy answers itself on its data listeners, for every
    /// host and before routing (HAProxy's `monitor-uri`, Traefik's ping):
    /// 200 while it serves, 503 from the moment it starts draining.
    pub health_uri: Option<String>,
    /// A passthrough tunnel with no bytes either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// A request body that brings no data for this long is abandoned (408).
    pub client_body_timeout: Duration,
    /// A client that takes none of its response for this long is
    /// disconnected (nginx's `send_timeout`).
    pub client_send_timeout: Duration,
    /// Cap on client connections open at once, over every listener and
    /// worker. At the cap, new connections wait in the kernel's listen
    /// backlog until one closes, so that a flood of connections cannot take
    /// the descriptors that upstream connections, health checks, config
    /// files and the admin API need. `None` (`"auto"`, the default): half
    /// of the descriptors the process may open, less a reserve (HAProxy's
    /// rule: each client connection may need an upstream one).
    pub max_client_connections: Option<usize>,
    /// Cap on open connections to each upstream address (busy and idle).
    pub max_connections_per_upstream: usize,
    /// How many idle keep-alive connections are kept per upstream address.
    pub idle_connections_per_upstream: usize,
    /// Cap on the size of a request head, which bounds the per-connection read buffer.
    pub max_header_bytes: usize,
    /// Where HTTPS (and TLS passthrough) is served, if anywhere. Needs a restart to change.
    pub https_listen: Option<SocketAddr>,
    /// Certificate for clients whose SNI matches no service (or who send none).
    pub default_tls: Option<TlsFiles>,
    /// Port put in `ssl_only` redirects; 443 is left out of the URL. Differs
    /// from `https_listen`'s port when a load balancer maps 443 to it.
    pub https_redirect_port: u16,
    /// Largest request body accepted (413 above it); `None`: no limit.
    /// A service's own `max_body_size` takes precedence.
    pub max_body_size: Option<u64>,
    /// Peers whose `X-Forwarded-For` is believed: from them it is extended
    /// and its last entry is the client's address; from anyone else it is
    /// replaced. Empty: no peer is trusted.
    pub trusted_proxies: Vec<Cidr>,
    /// The plain-HTTP listener expects a PROXY protocol (v1 or v2) header
    /// first on every connection, which then gives the client's address.
    pub http_proxy_protocol: bool,
    /// The same, for the HTTPS listener (before the TLS ClientHello).
    pub https_proxy_protocol: bool,
    /// Passive health: an upstream that fails this many requests in a row
    /// (connect refused or timed out, reset before the response head, 502,
    /// 503 or 504 from it) is ejected from its pools for a while. 0 turns
    /// passive ejection off.
    pub outlier_consecutive_failures: u32,
    /// How long a first ejection lasts; an upstream ejected again soon
    /// after is ejected for longer, up to `outlier_max_ejection_time`.
    pub outlier_base_ejection_time: Duration,
    /// Cap on one ejection (at least `outlier_base_ejection_time`).
    pub outlier_max_ejection_time: Duration,
    /// At most this percentage of a pool's upstreams is taken out at once,
    /// so a fault every replica shares (or a wrong check) never empties a
    /// pool: when all look bad, requests still go to them rather than
    /// getting a 503 on a guess. A service's `max_ejected_percent` takes
    /// precedence.
    pub max_ejected_percent: u8,
    /// Retries may add at most this percentage to a service's recent
    /// requests, so an outage of every replica does not multiply their load.
    pub retry_budget_percent: u8,
    /// ... but a service may always retry this many requests per second, so
    /// a quiet service still gets its retries.
    pub retry_budget_min_per_second: u32,
    /// A connect to an upstream not completed after this long is raced by
    /// one to the next upstream (nothing has been sent, so this is safe for
    /// every method): a vanished replica, which sends no reset, costs no
    /// one a whole `connect_timeout`. `None` (`"off"`): no hedging.
    pub hedge_delay: Option<Duration>,
    /// When set, every upstream of every route is sent the route's request
    /// (its host, its path, the upstream's TLS) once per interval, spread
    /// over it: `portico trace`'s upstream hop, always on. Results are
    /// metrics and status-page lines; they never take an upstream out.
    /// `None` (`"off"`, the default): no probes.
    pub probe_interval: Option<Duration>,
    /// Cap on active health checks in flight at once, over all services, so
    /// thousands of upstreams are never probed all at one moment.
    pub health_concurrency: usize,
    /// What the HTTPS listener offers (versions, cipher suites).
    pub tls_profile: TlsProfile,
    /// A request body must average at least this many bytes a second once
    /// `client_body_grace` has passed (408 below it): `client_body_timeout`
    /// alone lets a byte every minute hold a connection forever. `None`
    /// (`"off"`): no minimum.
    pub client_body_min_rate: Option<u64>,
    pub client_body_grace: Duration,
    /// Request bodies one client address may be sending at once (429
    /// above it); 0: no cap.
    pub max_bodies_per_client: usize,
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `::1/128`); a bare
/// address is a network of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// `10.0.0.0/8`, `fd00::/8`, or a bare address (`127.0.0.1`, `::1`).
    /// Bits set beyond the prefix (`10.0.0.1/8`) are refused: such a typo
    /// would silently trust a different network than the one meant.
    fn from_str(text: &str) -> Result<Cidr, String> {
        use std::net::IpAddr;
        let bad = || {
            format!("{text:?} is not an address or network such as \"10.0.0.0/8\" or \"127.0.0.1\"")
        };
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            // Digits only: no sign, no leading zeros.
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && n.to_string() == p => n,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {max}")),
            },
        };
        let cidr = Cidr { addr, prefix };
        let network = cidr.network();
        if network != addr {
            return Err(format!(
                "{text:?} has bits set beyond the prefix; did you mean \"{network}/{prefix}\"?"
            ));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// On the wire, the written form (`10.0.0.0/8`), read back by
/// [`FromStr`](std::str::FromStr): the same checks as the config file's.
impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::wire::parse_str(d, "a network such as \"10.0.0.0/8\"", str::parse)
    }
}

impl Cidr {
    /// The address with every bit beyond the prefix cleared.
    pub fn network(&self) -> std::net::IpAddr {
        use std::net::IpAddr;
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    /// Whether `ip` lies in this network (IPv4-mapped IPv6 addresses count
    /// as the IPv4 address they carry).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The shape of an access-log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// Interlock's fields (client, method, host, path, status, bytes,
    /// upstream, times, request id), in logfmt or JSON like every other
    /// line (`--log-format`).
    #[default]
    Interlock,
    /// nginx's `combined` format, as is, for tools that parse it.
    Combined,
}

/// Mozilla's server-side TLS profiles; the server's order of preference
/// decides, not the client's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsProfile {
    /// TLS 1.3 and 1.2, AEAD suites with forward secrecy only (Mozilla's
    /// "intermediate": every client of the last decade or so).
    #[default]
    Intermediate,
    /// TLS 1.3 only (Mozilla's "modern").
    Modern,
}

/// How a pool's upstreams are chosen for requests that no hash (sticky
/// cookie, client address) decides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    /// The less busy of two upstreams picked at random (by requests in flight).
    LeastRequest,
}

/// Interlock's `redirects`: requests for `from` (a scheme and one of the
/// service's hosts) get a 302 to `to` with the request's path and query
/// appended.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// `"http"` or `"https"`.
    pub from_scheme: String,
    /// Lower case, without port: compared with the request's normalised host.
    pub from_host: String,
    /// The target as written, without a trailing `/` (the request's path,
    /// which starts with one, is appended).
    pub to: String,
}

/// An active health check: each upstream of the service is sent
/// `GET path` every `interval`; `unhealthy` failures in a row take it out
/// of its pools, `healthy` successes in a row bring it back. A check fails
/// when no response head arrives within `timeout`, or its status is not
/// one of `status`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path (and optional query) to request, as written: starts with `/`.
    pub path: String,
    pub interval: Duration,
    /// At most `interval`, so checks of one upstream never overlap.
    pub timeout: Duration,
    /// Successes in a row that bring an upstream back (at least 1).
    pub healthy: u32,
    /// Failures in a row that take an upstream out (at least 1).
    pub unhealthy: u32,
    /// Inclusive ranges of statuses that count as healthy.
    pub status: Vec<(u16, u16)>,
    /// Sent as `Host`; `None`: the route's first exact host.
    pub host: Option<String>,
}

impl HealthCheck {
    /// Whether a check answered with `status` passed.
    pub fn accepts(&self, status: u16) -> bool {
        self.status
            .iter()
            .any(|&(low, high)| (low..=high).contains(&status))
    }
}

/// PEM files of a certificate chain and its private key, and optionally a
/// DER OCSP response to staple. Paths as written in the config; their
/// contents travel in [`Config::files`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: String,
    pub key: String,
    pub ocsp: Option<String>,
}

/// How the proxy talks to a service's upstreams.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamOptions {
    pub protocol: UpstreamProtocol,
    /// TLS to the upstream (Interlock's `ssl_backend`); `None` is cleartext.
    pub tls: Option<UpstreamTls>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 over TLS (ALPN h2), e.g. for gRPC.
    H2,
    /// HTTP/2 in cleartext with prior knowledge, e.g. for gRPC.
    H2c,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Verify the upstream's certificate (against `ca`, else the system's roots).
    pub verify: bool,
    /// PEM file of the CA(s) to trust, a key of [`Config::files`].
    pub ca: Option<String>,
    /// Name sent as SNI and checked against the certificate.
    pub server_name: String,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            proxy_id: None,
            hide_info_headers: false,
            access_log: true,
            access_log_format: AccessLogFormat::Interlock,
            connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            client_header_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            health_uri: None,
            tunnel_idle_timeout: Duration::from_secs(600),
            client_body_timeout: Duration::from_secs(60),
            client_send_timeout: Duration::from_secs(60),
            max_client_connections: None,
            max_connections_per_upstream: 1024,
            idle_connections_per_upstream: 128,
            max_header_bytes: 64 * 1024,
            https_listen: None,
            default_tls: None,
            https_redirect_port: 443,
            max_body_size: None,
            trusted_proxies: Vec::new(),
            http_proxy_protocol: false,
            https_proxy_protocol: false,
            outlier_consecutive_failures: 5,
            outlier_base_ejection_time: Duration::from_secs(10),
            outlier_max_ejection_time: Duration::from_secs(300),
            max_ejected_percent: 50,
            retry_budget_percent: 20,
            retry_budget_min_per_second: 3,
            hedge_delay: Some(Duration::from_millis(200)),
            probe_interval: None,
            health_concurrency: 64,
            tls_profile: TlsProfile::Intermediate,
            client_body_min_rate: Some(1024),
            client_body_grace: Duration::from_secs(10),
            max_bodies_per_client: 100,
        }
    }
}

/// One routed service: the hosts it answers for and the replicas behind it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    /// Replica addresses, in the order round robin visits them.
    pub upstreams: Vec<SocketAddr>,
    /// This service's certificate, chosen by SNI for its hosts.
    pub tls: Option<TlsFiles>,
    /// Plain-HTTP requests are redirected to HTTPS (301).
    pub ssl_only: bool,
    /// Adds `Strict-Transport-Security: max-age=...` to HTTPS responses.
    pub hsts_max_age: Option<Duration>,
    /// TLS is not terminated: connections whose SNI names one of this
    /// service's hosts are relayed as they are to its upstreams.
    pub passthrough: bool,
    pub upstream: UpstreamOptions,
    /// Interlock's `context_root`: the path prefix the service is reached
    /// under, normalised to start with `/` and end without one (`/app`);
    /// `None` (or `/` as written): every path of its hosts not claimed by a
    /// longer prefix.
    pub context_root: Option<String>,
    /// The prefix is removed before the request goes upstream, and the
    /// bare prefix (`/app`) is answered with a 301 to `/app/`.
    pub context_root_rewrite: bool,
    pub redirects: Vec<Redirect>,
    /// Requests carrying this cookie go to the upstream a consistent hash
    /// of its value picks.
    pub sticky_session_cookie: Option<String>,
    /// Requests go to the upstream a consistent hash of the client's
    /// address picks.
    pub ip_hash: bool,
    pub balance: Balance,
    /// Answers every request whose host no service claims.
    pub default_backend: bool,
    /// Overrides `[proxy] max_body_size` for this service.
    pub max_body_size: Option<u64>,
    /// Override `[proxy] connect_timeout` / `upstream_timeout`.
    pub connect_timeout: Option<Duration>,
    pub upstream_timeout: Option<Duration>,
    /// Active health checks of the upstreams; `None` (no `health_path`):
    /// none, only passive ejection.
    pub health: Option<HealthCheck>,
    /// Cap on requests in flight to the service (its whole pool), so a
    /// slow service cannot tie up every connection; `None`: no cap.
    pub max_requests: Option<u32>,
    /// Overrides `[proxy] max_ejected_percent` for this service.
    pub max_ejected_percent: Option<u8>,
    /// Interlock's `service_cluster`: which proxies serve the service, in
    /// cluster mode (those started with `--service-cluster NAME`); `None`:
    /// the default cluster. `portico run` serves every cluster.
    ///
    /// Left out of the wire form when `None`, so that configs without
    /// clusters keep the versions they had before clusters existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_cluster: Option<String>,
}

/// A validated config.
///
/// It crosses the wire (a cluster controller's snapshots) as JSON: see
/// [`crate::wire`] for the form. Deserializing it checks what the TOML path
/// checks, so no deserializer can build one the file could not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "crate::wire::Unchecked")]
pub struct Config {
    pub proxy: ProxySettings,
    /// The admin API; `None` (no `[admin]` table) means it is not served.
    pub admin: Option<AdminSettings>,
    /// The Docker provider; `None` (no `[docker]` table) means it is off.
    pub docker: Option<DockerSettings>,
    /// Cluster mode's controller (`portico controller run`); `None` (no
    /// `[controller]` table) elsewhere. The controller's own setting: never
    /// on the wire (a snapshot for a proxy has none), not in the version.
    #[serde(skip)]
    pub controller: Option<ControllerSettings>,
    pub services: Vec<Service>,
    /// Contents of the files the config refers to (certificates, keys,
    /// CAs), read by the provider, keyed by path as written. Part of the
    /// config so that a changed certificate is a new version like any other
    /// change. An `Err` holds why the file could not be read.
    ///
    /// On the wire: `{"ok": BASE64}` or `{"error": WHY}` per path. These
    /// are private keys too: the wire form is a secret.
    #[serde(with = "crate::wire::files")]
    pub files: BTreeMap<String, FileData>,
}

/// A referenced file's bytes, or why they could not be read.
pub type FileData = Result<Arc<[u8]>, String>;

impl Config {
    /// Every service cluster the services name, and the default one.
    pub fn service_clusters(&self) -> BTreeSet<&str> {
        let mut out: BTreeSet<&str> = self
            .services
            .iter()
            .filter_map(|s| s.service_cluster.as_deref())
            .collect();
        out.insert(rules::DEFAULT_SERVICE_CLUSTER);
        out
    }

    /// What the proxies of `cluster` serve: the same settings, the services
    /// of that cluster only, and only the files those refer to (a proxy is
    /// sent no other cluster's private keys).
    pub fn for_service_cluster(&self, cluster: &str) -> Config {
        let of = |s: &Service| {
            s.service_cluster
                .as_deref()
                .unwrap_or(rules::DEFAULT_SERVICE_CLUSTER)
                == cluster
        };
        let mut out = Config {
            services: self.services.iter().filter(|s| of(s)).cloned().collect(),
            files: BTreeMap::new(),
            ..self.clone_settings()
        };
        for path in out.referenced_files() {
            if let Some(data) = self.files.get(&path) {
                out.files.insert(path, data.clone());
            }
        }
        out
    }

    /// The config without services or files.
    fn clone_settings(&self) -> Config {
        Config {
            proxy: self.proxy.clone(),
            admin: self.admin.clone(),
            docker: self.docker.clone(),
            controller: self.controller.clone(),
            services: Vec::new(),
            files: BTreeMap::new(),
        }
    }

    /// Paths of every file the config refers to, each once.
    pub fn referenced_files(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |p: &String| {
            if !out.contains(p) {
                out.push(p.clone());
            }
        };
        let tls = self
            .proxy
            .default_tls
            .iter()
            .chain(self.services.iter().filter_map(|s| s.tls.as_ref()));
        for t in tls {
            add(&t.cert);
            add(&t.key);
            if let Some(o) = &t.ocsp {
                add(o);
            }
        }
        for s in &self.services {
            if let Some(ca) = s.upstream.tls.as_ref().and_then(|t| t.ca.as_ref()) {
                add(ca);
            }
        }
        out
    }
}

/// How the Docker provider reaches the engine and paces its updates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerSettings {
    /// `unix:///var/run/docker.sock`, `tcp://host:2376`, ...; `None` means
    /// `DOCKER_HOST`, else the local socket.
    pub endpoint: Option<String>,
    /// Full resynchronisation interval (Interlock's PollInterval), on top of events.
    pub poll_interval: Duration,
    /// PEM files for a TLS `tcp://` endpoint: CA, client certificate and key.
    pub tls_ca: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// A service changing its upstreams more than this many times within
    /// `damping_window` is damped.
    pub damping_changes: usize,
    pub damping_window: Duration,
    /// How often a damped service's changes are applied.
    pub damping_interval: Duration,
    /// Attach Portico's own container to the networks of labelled services.
    pub attach_networks: bool,
    /// Route labelled workloads that do not say `portico.enable=true`
    /// (Interlock's behaviour, the default). `false` is Traefik's model:
    /// nothing joins a host's pool unless it opts in.
    pub exposed_by_default: bool,
    /// An expression over labels a workload must satisfy to be routed;
    /// one that does not is left alone (not routed, not reported).
    pub constraints: Option<crate::labels::Constraint>,
    /// Let workloads of different stack namespaces serve one host. Off,
    /// the first to claim a host (oldest, then by name) owns it for its
    /// namespace, and a claim from another namespace is refused with an
    /// error: a service of one stack cannot take another stack's traffic.
    pub allow_shared_hosts: bool,
}

impl Default for DockerSettings {
    fn default() -> Self {
        DockerSettings {
            endpoint: None,
            poll_interval: Duration::from_secs(3),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            damping_changes: 5,
            damping_window: Duration::from_secs(60),
            damping_interval: Duration::from_secs(5),
            attach_networks: true,
            exposed_by_default: true,
            constraints: None,
            allow_shared_hosts: false,
        }
    }
}

/// `[controller]`: where `portico controller run` serves its proxies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerSettings {
    /// Where proxies dial in (the stream, TLS).
    pub listen: SocketAddr,
    /// Holds `ca.crt`, `ca.key` and `join-token` (`portico controller
    /// init`); relative to the config file's directory. `None`: that
    /// directory.
    pub state_dir: Option<String>,
    /// Names the controller's server certificate carries (what proxies
    /// dial). Empty: the host's name.
    pub server_names: Vec<String>,
    /// The Docker networks the proxies are attached to (the stack's list):
    /// a labelled service on none of them could not be reached by any
    /// proxy, so it is reported, with the remedy, and not routed. Empty:
    /// not checked.
    pub proxy_networks: Vec<String>,
}

/// Where the admin API listens and how it is protected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// Bearer token required on every admin request. Mandatory when
    /// `listen` is not a loopback address: the admin API shows routes and
    /// can make the proxy send probes, so it is never open to the world.
    ///
    /// Never serialized: the wire form (a controller's snapshots for its
    /// proxies) leaves it out and reads back `None`, and refuses a
    /// snapshot that carries one. A proxy's admin token comes from its own
    /// config, never from the controller; so a config with a token does
    /// not come back equal (nor with an equal [`Version`](crate::Version),
    /// which counts the token) until its token is cleared.
    #[serde(skip)]
    pub token: Option<String>,
    /// How many applied versions the proxy keeps in memory (with their
    /// configs and diffs) for `portico config` and `/config/versions`.
    pub config_history: usize,
}

/// `[admin] config_history` when unset: enough to look back over a day of
/// ordinary deploys, small enough to keep (each entry shares its config).
pub const DEFAULT_CONFIG_HISTORY: usize = 20;
/// Each kept version holds a whole config; beyond this, memory for a large
/// Docker cluster's configs would matter more than the look back.
pub const MAX_CONFIG_HISTORY: u32 = 1000;

/// One problem in a config source, located as precisely as the source allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or other origin) the text came from.
    pub origin: String,
    /// 1-based line and column; 0 when the problem has no position.
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field, such as `service[2].hosts`; empty when unknown.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a config source (never empty).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    proxy: RawProxy,
    admin: Option<Spanned<RawAdmin>>,
    docker: Option<Spanned<RawDocker>>,
    controller: Option<Spanned<RawController>>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawController {
    listen: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    server_names: Option<Spanned<Vec<Spanned<String>>>>,
    proxy_networks: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocker {
    endpoint: Option<Spanned<String>>,
    poll_interval: Option<Spanned<String>>,
    tls_ca: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    damping_changes: Option<Spanned<i64>>,
    damping_window: Option<Spanned<String>>,
    damping_interval: Option<Spanned<String>>,
    attach_networks: Option<bool>,
    exposed_by_default: Option<bool>,
    constraints: Option<Spanned<String>>,
    allow_shared_hosts: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Spanned<String>,
    token: Option<Spanned<String>>,
    config_history: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    http_listen: Option<Spanned<String>>,
    proxy_id: Option<Spanned<String>>,
    hide_info_headers: Option<bool>,
    access_log: Option<bool>,
    access_log_format: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    upstream_timeout: Option<Spanned<String>>,
    client_header_timeout: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    drain_delay: Option<Spanned<String>>,
    health_uri: Option<Spanned<String>>,
    tunnel_idle_timeout: Option<Spanned<String>>,
    client_body_timeout: Option<Spanned<String>>,
    client_send_timeout: Option<Spanned<String>>,
    max_client_connections: Option<Spanned<RawCount>>,
    max_connections_per_upstream: Option<Spanned<i64>>,
    idle_connections_per_upstream: Option<Spanned<i64>>,
    max_header_bytes: Option<Spanned<i64>>,
    https_listen: Option<Spanned<String>>,
    default_tls_cert: Option<Spanned<String>>,
    default_tls_key: Option<Spanned<String>>,
    default_tls_ocsp: Option<Spanned<String>>,
    https_redirect_port: Option<Spanned<i64>>,
    max_body_size: Option<Spanned<RawSize>>,
    trusted_proxies: Option<Vec<Spanned<String>>>,
    http_proxy_protocol: Option<bool>,
    https_proxy_protocol: Option<Spanned<bool>>,
    outlier_consecutive_failures: Option<Spanned<i64>>,
    outlier_base_ejection_time: Option<Spanned<String>>,
    outlier_max_ejection_time: Option<Spanned<String>>,
    max_ejected_percent: Option<Spanned<i64>>,
    retry_budget_percent: Option<Spanned<i64>>,
    retry_budget_min_per_second: Option<Spanned<i64>>,
    hedge_delay: Option<Spanned<String>>,
    probe_interval: Option<Spanned<String>>,
    health_concurrency: Option<Spanned<i64>>,
    tls_profile: Option<Spanned<String>>,
    client_body_min_rate: Option<Spanned<String>>,
    client_body_grace: Option<Spanned<String>>,
    max_bodies_per_client: Option<Spanned<i64>>,
}

/// A size as written: `"1MiB"` or a plain integer of bytes.
enum RawSize {
    Int(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"1MiB\" or a number of bytes")
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawSize, E> {
                i64::try_from(v)
                    .map(RawSize::Int)
                    .map_err(|_| E::custom("too large"))
            }
            fn visit_str<E>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_owned()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl RawSize {
    fn parse(&self) -> Result<u64, String> {
        match self {
            RawSize::Int(n) => rules::size_from_int(*n),
            RawSize::Text(t) => rules::parse_size(t),
        }
    }
}

/// A count that may also be left to Portico: a number, or `"auto"`.
enum RawCount {
    Int(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawCount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, or \"auto\"")
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawCount, E> {
                Ok(RawCount::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawCount, E> {
                i64::try_from(v)
                    .map(RawCount::Int)
                    .map_err(|_| E::custom("too large"))
            }
            fn visit_str<E>(self, v: &str) -> Result<RawCount, E> {
                Ok(RawCount::Text(v.to_owned()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl RawCount {
    /// At least `min`, or `None` for `"auto"`.
    fn parse(&self, min: u32) -> Result<Option<usize>, String> {
        match self {
            RawCount::Int(n) => rules::number_in(*n, min, u32::MAX).map(|n| Some(n as usize)),
            RawCount::Text(t) if t == "auto" => Ok(None),
            RawCount::Text(t) => Err(format!("{t:?} is not a number or \"auto\"")),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedirect {
    from: Spanned<String>,
    to: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    /// Optional only for a `default_backend`, which answers unclaimed hosts.
    #[serde(default)]
    hosts: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    upstreams: Vec<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    tls_ocsp: Option<Spanned<String>>,
    ssl_only: Option<Spanned<bool>>,
    hsts_max_age: Option<Spanned<String>>,
    passthrough: Option<Spanned<bool>>,
    upstream_tls: Option<Spanned<bool>>,
    upstream_tls_verify: Option<Spanned<String>>,
    upstream_tls_ca: Option<Spanned<String>>,
    upstream_tls_name: Option<Spanned<String>>,
    upstream_protocol: Option<Spanned<String>>,
    context_root: Option<Spanned<String>>,
    context_root_rewrite: Option<Spanned<bool>>,
    redirects: Option<Spanned<Vec<Spanned<RawRedirect>>>>,
    sticky_session_cookie: Option<Spanned<String>>,
    ip_hash: Option<Spanned<bool>>,
    balance: Option<Spanned<String>>,
    default_backend: Option<Spanned<bool>>,
    max_body_size: Option<Spanned<RawSize>>,
    connect_timeout: Option<Spanned<String>>,
    upstream_timeout: Option<Spanned<String>>,
    health_path: Option<Spanned<String>>,
    health_interval: Option<Spanned<String>>,
    health_timeout: Option<Spanned<String>>,
    health_healthy: Option<Spanned<i64>>,
    health_unhealthy: Option<Spanned<i64>>,
    health_status: Option<Spanned<String>>,
    health_host: Option<Spanned<String>>,
    max_requests: Option<Spanned<i64>>,
    max_ejected_percent: Option<Spanned<i64>>,
    service_cluster: Option<Spanned<String>>,
}

impl RawService {
    /// Where the key for a setting (by its TOML name) is, for errors
    /// found after the values were read; the service's name if absent.
    fn span_of(&self, setting: &str) -> usize {
        fn at<T>(v: &Option<Spanned<T>>) -> Option<usize> {
            v.as_ref().map(|v| v.span().start)
        }
        let found = match setting {
            "context_root" => at(&self.context_root),
            "context_root_rewrite" => at(&self.context_root_rewrite),
            "redirects" => at(&self.redirects),
            "sticky_session_cookie" => at(&self.sticky_session_cookie),
            "ip_hash" => at(&self.ip_hash),
            "balance" => at(&self.balance),
            "default_backend" => at(&self.default_backend),
            "max_body_size" => at(&self.max_body_size),
            "connect_timeout" => at(&self.connect_timeout),
            "upstream_timeout" => at(&self.upstream_timeout),
            "passthrough" => at(&self.passthrough),
            "ssl_only" => at(&self.ssl_only),
            "hsts_max_age" => at(&self.hsts_max_age),
            "tls_cert" => at(&self.tls_cert),
            "health_path" => at(&self.health_path),
            "health_interval" => at(&self.health_interval),
            "health_timeout" => at(&self.health_timeout),
            "health_healthy" => at(&self.health_healthy),
            "health_unhealthy" => at(&self.health_unhealthy),
            "health_status" => at(&self.health_status),
            "health_host" => at(&self.health_host),
            "max_requests" => at(&self.max_requests),
            "max_ejected_percent" => at(&self.max_ejected_percent),
            _ => None,
        };
        found.unwrap_or(self.name.span().start)
    }
}

/// Collects errors against one source text, turning byte spans into lines.
struct Reporter<'a> {
    origin: &'a str,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Reporter<'_> {
    fn at(&mut self, offset: usize, field: impl Into<String>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, offset);
        self.errors.push(ConfigError {
            origin: self.origin.to_owned(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        });
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    (line, offset - line_start + 1)
}

/// Names the field at `offset` from the text itself, for errors the TOML
/// parser reports without a key path: the enclosing table (`proxy`, or
/// `service[N]` counting `[[service]]` headers) and the key on that line.
fn field_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let mut table = String::new();
    let mut services = 0usize;
    // Up to the end of the offset's line: an error on a table header (such
    // as a missing field) belongs to that table.
    let line_end = text[offset..].find('\n').map_or(text.len(), |p| offset + p);
    for line in text[..line_end].split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed == "[[service]]" {
            table = format!("service[{services}]");
            services += 1;
        } else if trimmed.starts_with('[') {
            table = trimmed
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
        }
    }
    let line_begin = text[..offset].rfind('\n').map_or(0, |p| p + 1);
    let line = text[line_begin..].lines().next().unwrap_or_default();
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    match (table.is_empty(), key) {
        (true, Some(k)) => k.to_owned(),
        (false, Some(k)) => format!("{table}.{k}"),
        (_, None) => table,
    }
}

impl Config {
    /// Parses and validates config text. `origin` names the source (a path) in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                let (line, column) = if e.span().is_some() {
                    line_col(text, offset)
                } else {
                    (0, 0)
                };
                return Err(ConfigErrors(vec![ConfigError {
                    origin: origin.to_owned(),
                    line,
                    column,
                    field: if e.span().is_some() {
                        field_at(text, offset)
                    } else {
                        String::new()
                    },
                    message: e.message().trim().to_owned(),
                }]));
            }
        };
        let mut r = Reporter {
            origin,
            text,
            errors: Vec::new(),
        };
        let proxy = validate_proxy(&raw.proxy, &mut r);
        let admin = raw.admin.as_ref().and_then(|a| validate_admin(a, &mut r));
        let docker = raw
            .docker
            .as_ref()
            .map(|d| validate_docker(d.get_ref(), &mut r));
        let controller = raw
            .controller
            .as_ref()
            .and_then(|c| validate_controller(c, &mut r));
        let mut services = Vec::with_capacity(raw.service.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, svc) in raw.service.iter().enumerate() {
            if let Some(s) = validate_service(i, svc, &mut names, &mut r) {
                services.push(s);
            }
        }
        check_services_agree(&raw, &services, &proxy, &mut r);
        check_listeners_differ(&raw, &proxy, admin.as_ref(), &mut r);
        if r.errors.is_empty() {
            Ok(Config {
                proxy,
                admin,
                docker,
                controller,
                services,
                files: BTreeMap::new(),
            })
        } else {
            Err(ConfigErrors(r.errors))
        }
    }
}

fn validate_proxy(raw: &RawProxy, r: &mut Reporter<'_>) -> ProxySettings {
    let mut p = ProxySettings::default();
    if let Some(addr) = &raw.http_listen {
        match addr.get_ref().parse::<SocketAddr>() {
            Ok(a) => p.http_listen = a,
            Err(_) => r.at(
                addr.span().start,
                "proxy.http_listen",
                format!("{:?} is not an IP:PORT address", addr.get_ref()),
            ),
        }
    }
    if let Some(id) = &raw.proxy_id {
        match check_proxy_id(id.get_ref()) {
            Ok(()) => p.proxy_id = Some(id.get_ref().clone()),
            Err(e) => r.at(id.span().start, "proxy.proxy_id", e),
        }
    }
    p.hide_info_headers = raw.hide_info_headers.unwrap_or(p.hide_info_headers);
    p.access_log = raw.access_log.unwrap_or(p.access_log);
    if let Some(f) = read(
        &raw.access_log_format,
        "proxy.access_log_format",
        |t| access_log_format(t),
        r,
    ) {
        p.access_log_format = f;
    }
    let durations = [
        (
            &raw.connect_timeout,
            "proxy.connect_timeout",
            &mut p.connect_timeout,
        ),
        (
            &raw.upstream_timeout,
            "proxy.upstream_timeout",
            &mut p.upstream_timeout,
        ),
        (
            &raw.client_header_timeout,
            "proxy.client_header_timeout",
            &mut p.client_header_timeout,
        ),
        (
            &raw.shutdown_grace,
            "proxy.shutdown_grace",
            &mut p.shutdown_grace,
        ),
        (
            &raw.tunnel_idle_timeout,
            "proxy.tunnel_idle_timeout",
            &mut p.tunnel_idle_timeout,
        ),
        (
            &raw.client_body_timeout,
            "proxy.client_body_timeout",
            &mut p.client_body_timeout,
        ),
        (
            &raw.client_send_timeout,
            "proxy.client_send_timeout",
            &mut p.client_send_timeout,
        ),
        (
            &raw.client_body_grace,
            "proxy.client_body_grace",
            &mut p.client_body_grace,
        ),
    ];
    for (value, field, slot) in durations {
        if let Some(d) = timeout(value, field, r) {
            *slot = d;
        }
    }
    let base_ejection = timeout(
        &raw.outlier_base_ejection_time,
        "proxy.outlier_base_ejection_time",
        r,
    );
    let max_ejection = timeout(
        &raw.outlier_max_ejection_time,
        "proxy.outlier_max_ejection_time",
        r,
    );
    let ejection_times = rules::not_longer(
        rules::Timed {
            setting: "outlier_base_ejection_time",
            text: text(&raw.outlier_base_ejection_time),
            read: base_ejection,
            default: p.outlier_base_ejection_time,
        },
        rules::Timed {
            setting: "outlier_max_ejection_time",
            text: text(&raw.outlier_max_ejection_time),
            read: max_ejection,
            default: p.outlier_max_ejection_time,
        },
    );
    if let Some(problem) = ejection_times {
        let at = match problem.setting {
            "outlier_base_ejection_time" => &raw.outlier_base_ejection_time,
            _ => &raw.outlier_max_ejection_time,
        };
        r.at(
            at.as_ref().map_or(0, |v| v.span().start),
            format!("proxy.{}", problem.setting),
            problem.message,
        );
    }
    p.outlier_base_ejection_time = base_ejection.unwrap_or(p.outlier_base_ejection_time);
    p.outlier_max_ejection_time = max_ejection.unwrap_or(p.outlier_max_ejection_time);
    let counts = [
        (
            &raw.max_connections_per_upstream,
            "proxy.max_connections_per_upstream",
            1,
            &mut p.max_connections_per_upstream,
        ),
        (
            &raw.idle_connections_per_upstream,
            "proxy.idle_connections_per_upstream",
            0,
            &mut p.idle_connections_per_upstream,
        ),
        (
            &raw.max_header_bytes,
            "proxy.max_header_bytes",
            8192,
            &mut p.max_header_bytes,
        ),
        (
            &raw.health_concurrency,
            "proxy.health_concurrency",
            1,
            &mut p.health_concurrency,
        ),
        (
            &raw.max_bodies_per_client,
            "proxy.max_bodies_per_client",
            0,
            &mut p.max_bodies_per_client,
        ),
    ];
    for (value, field, min, slot) in counts {
        if let Some(v) = read(value, field, |&n| rules::number_in(n, min, u32::MAX), r) {
            *slot = v as usize;
        }
    }
    let unsigned = [
        (
            &raw.outlier_consecutive_failures,
            "proxy.outlier_consecutive_failures",
            &mut p.outlier_consecutive_failures,
        ),
        (
            &raw.retry_budget_min_per_second,
            "proxy.retry_budget_min_per_second",
            &mut p.retry_budget_min_per_second,
        ),
    ];
    for (value, field, slot) in unsigned {
        if let Some(v) = read(value, field, |&n| rules::number_in(n, 0, u32::MAX), r) {
            *slot = v;
        }
    }
    let percents = [
        (
            &raw.max_ejected_percent,
            "proxy.max_ejected_percent",
            &mut p.max_ejected_percent,
        ),
        (
            &raw.retry_budget_percent,
            "proxy.retry_budget_percent",
            &mut p.retry_budget_percent,
        ),
    ];
    for (value, field, slot) in percents {
        if let Some(v) = read(value, field, |&n| rules::percent(n), r) {
            *slot = v;
        }
    }
    if let Some(n) = read(
        &raw.max_client_connections,
        "proxy.max_client_connections",
        |c| c.parse(1),
        r,
    ) {
        p.max_client_connections = n;
    }
    if let Some(d) = read(&raw.hedge_delay, "proxy.hedge_delay", |t| hedge_delay(t), r) {
        p.hedge_delay = d;
    }
    if let Some(d) = read(
        &raw.probe_interval,
        "proxy.probe_interval",
        |t| probe_interval(t),
        r,
    ) {
        p.probe_interval = d;
    }
    if let Some(d) = read(
        &raw.drain_delay,
        "proxy.drain_delay",
        |t| rules::parse_drain_delay(t),
        r,
    ) {
        p.drain_delay = d;
    }
    if let Some(u) = read(
        &raw.health_uri,
        "proxy.health_uri",
        |u| rules::parse_health_uri(u),
        r,
    ) {
        p.health_uri = Some(u);
    }
    if let Some(t) = read(&raw.tls_profile, "proxy.tls_profile", |t| tls_profile(t), r) {
        p.tls_profile = t;
    }
    if let Some(v) = read(
        &raw.client_body_min_rate,
        "proxy.client_body_min_rate",
        |t| rate(t),
        r,
    ) {
        p.client_body_min_rate = v;
    }
    if let Some(addr) = &raw.https_listen {
        match addr.get_ref().parse::<SocketAddr>() {
            Ok(a) => p.https_listen = Some(a),
            Err(_) => r.at(
                addr.span().start,
                "proxy.https_listen",
                format!("{:?} is not an IP:PORT address", addr.get_ref()),
            ),
        }
    }
    p.default_tls = tls_files(
        (
            &raw.default_tls_cert,
            &raw.default_tls_key,
            &raw.default_tls_ocsp,
        ),
        "proxy.default_tls_cert",
        "proxy.default_tls_key",
        r,
    );
    if let Some(v) = &raw.max_body_size {
        p.max_body_size = size(v, "proxy.max_body_size", r);
    }
    for t in raw.trusted_proxies.iter().flatten() {
        match t.get_ref().parse::<Cidr>() {
            Ok(c) if p.trusted_proxies.contains(&c) => r.at(
                t.span().start,
                "proxy.trusted_proxies",
                format!("{:?} is listed twice", t.get_ref()),
            ),
            Ok(c) => p.trusted_proxies.push(c),
            Err(e) => r.at(t.span().start, "proxy.trusted_proxies", e),
        }
    }
    p.http_proxy_protocol = raw.http_proxy_protocol.unwrap_or(false);
    if let Some(v) = &raw.https_proxy_protocol {
        p.https_proxy_protocol = *v.get_ref();
        if p.https_proxy_protocol && raw.https_listen.is_none() {
            r.at(
                v.span().start,
                "proxy.https_proxy_protocol",
                "needs [proxy] https_listen",
            );
        }
    }
    if let Some(port) = &raw.https_redirect_port {
        match u16::try_from(*port.get_ref()) {
            Ok(v) if v > 0 => p.https_redirect_port = v,
            _ => r.at(
                port.span().start,
                "proxy.https_redirect_port",
                "must be a port, 1 to 65535",
            ),
        }
    }
    p
}

/// `proxy_id`: sent as a header, so printable ASCII without spaces.
pub(crate) fn check_proxy_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > 255 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "must be 1 to 255 printable ASCII characters without spaces (it is sent as a header)",
        );
    }
    Ok(())
}

/// A service's name: it names the service in logs, metrics and the
/// admin API.
pub(crate) fn check_service_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err("must be non-empty and use only letters, digits, '_', '-' and '.'");
    }
    Ok(())
}

/// An upstream must be an address a connection can be made to.
pub(crate) fn check_upstream(a: SocketAddr) -> Result<(), String> {
    if a.ip().is_unspecified()
        || a.ip().is_multicast()
        || a.ip() == std::net::IpAddr::from([255, 255, 255, 255])
    {
        return Err(format!("{a}: not an address a connection can be made to"));
    }
    if a.port() == 0 {
        return Err(format!("{a}: port 0 cannot be connected to"));
    }
    Ok(())
}

/// `[docker] endpoint`: a URL of one of the schemes the provider dials.
pub(crate) fn check_docker_endpoint(endpoint: &str) -> Result<(), String> {
    if ["unix://", "tcp://", "http://", "https://"]
        .iter()
        .any(|p| endpoint.starts_with(p))
    {
        Ok(())
    } else {
        Err(format!(
            "{endpoint:?} is not unix:///path/to/docker.sock or tcp://host:port"
        ))
    }
}

/// The optional certificate, key and OCSP path keys of one table.
type TlsKeys<'a> = (
    &'a Option<Spanned<String>>,
    &'a Option<Spanned<String>>,
    &'a Option<Spanned<String>>,
);

/// A certificate/key pair from two optional keys: both or neither.
fn tls_files(
    (cert, key, ocsp): TlsKeys<'_>,
    cert_field: &str,
    key_field: &str,
    r: &mut Reporter<'_>,
) -> Option<TlsFiles> {
    match (cert, key) {
        (Some(c), Some(k)) => {
            for (v, field) in [(c, cert_field), (k, key_field)] {
                if v.get_ref().is_empty() {
                    r.at(v.span().start, field, "must be a file path");
                }
            }
            Some(TlsFiles {
                cert: c.get_ref().clone(),
                key: k.get_ref().clone(),
                ocsp: ocsp.as_ref().map(|o| o.get_ref().clone()),
            })
        }
        (Some(c), None) => {
            r.at(
                c.span().start,
                key_field,
                format!("{cert_field} is set, so {key_field} must be too"),
            );
            None
        }
        (None, Some(k)) => {
            r.at(
                k.span().start,
                cert_field,
                format!("{key_field} is set, so {cert_field} must be too"),
            );
            None
        }
        (None, None) => {
            if let Some(o) = ocsp {
                r.at(
                    o.span().start,
                    cert_field,
                    "an OCSP response needs a certificate",
                );
            }
            None
        }
    }
}

/// Timeouts beyond this are surely typos, and would overflow the clock.
const MAX_DURATION: Duration = rules::MAX_TIMEOUT;

/// An optional key read by `rule`; a problem is reported at its value.
fn read<V, T>(
    value: &Option<Spanned<V>>,
    field: &str,
    rule: impl FnOnce(&V) -> Result<T, String>,
    r: &mut Reporter<'_>,
) -> Option<T> {
    let value = value.as_ref()?;
    rule(value.get_ref())
        .map_err(|e| r.at(value.span().start, field, e))
        .ok()
}

/// A timeout key, read by the rules every provider shares.
fn timeout(value: &Option<Spanned<String>>, field: &str, r: &mut Reporter<'_>) -> Option<Duration> {
    read(value, field, |t| rules::parse_timeout(t), r)
}

/// An optional string key's text, as written.
fn text(value: &Option<Spanned<String>>) -> Option<&str> {
    value.as_ref().map(|v| v.get_ref().as_str())
}

/// A rate such as `"1KiB/s"` (a size a second), or `"off"` for none.
fn rate(text: &str) -> Result<Option<u64>, String> {
    if text == "off" {
        return Ok(None);
    }
    match text.strip_suffix("/s") {
        Some(size) => rules::parse_size(size)
            .map(Some)
            .map_err(|e| format!("{text:?}: {e}")),
        None => Err(format!(
            "{text:?} is not a rate such as \"1KiB/s\" (a size a second), or \"off\""
        )),
    }
}

/// `tls_profile`: `"intermediate"` or `"modern"`.
fn access_log_format(text: &str) -> Result<AccessLogFormat, String> {
    match text {
        "interlock" => Ok(AccessLogFormat::Interlock),
        "combined" => Ok(AccessLogFormat::Combined),
        other => Err(format!(
            "{other:?} is not one of \"interlock\" (Interlock's fields, as logfmt or JSON by --log-format), \"combined\" (nginx's combined format)"
        )),
    }
}

fn tls_profile(text: &str) -> Result<TlsProfile, String> {
    match text {
        "intermediate" => Ok(TlsProfile::Intermediate),
        "modern" => Ok(TlsProfile::Modern),
        other => Err(format!(
            "{other:?} is not one of \"intermediate\" (TLS 1.3 and 1.2), \"modern\" (TLS 1.3 only)"
        )),
    }
}

/// `hedge_delay`: a duration, or `"off"` for none.
fn hedge_delay(text: &str) -> Result<Option<Duration>, String> {
    if text == "off" {
        return Ok(None);
    }
    rules::parse_timeout(text)
        .map(Some)
        .map_err(|e| format!("{e} (or \"off\" for no hedging)"))
}

/// `probe_interval`: a duration of at least a second, or `"off"`.
fn probe_interval(text: &str) -> Result<Option<Duration>, String> {
    if text == "off" {
        return Ok(None);
    }
    let d = rules::parse_timeout(text).map_err(|e| format!("{e} (or \"off\" for no probes)"))?;
    if d < Duration::from_secs(1) {
        return Err(format!(
            "{text:?} is under a second: probes that often would be load, not watch (or \"off\")"
        ));
    }
    Ok(Some(d))
}

/// A size key (`"1MiB"` or bytes).
fn size(value: &Spanned<RawSize>, field: &str, r: &mut Reporter<'_>) -> Option<u64> {
    value
        .get_ref()
        .parse()
        .map_err(|e| r.at(value.span().start, field, e))
        .ok()
}

/// The listeners must not share an address: `run` could not bind them.
fn check_listeners_differ(
    raw: &RawConfig,
    proxy: &ProxySettings,
    admin: Option<&AdminSettings>,
    r: &mut Reporter<'_>,
) {
    let https = proxy.https_listen;
    let admin_listen = admin.map(|a| a.listen);
    let at = |v: &Option<Spanned<String>>| v.as_ref().map_or(0, |v| v.span().start);
    if https.is_some() && https == Some(proxy.http_listen) && proxy.http_listen.port() != 0 {
        r.at(
            at(&raw.proxy.https_listen),
            "proxy.https_listen",
            "is the same address as http_listen",
        );
    }
    if let Some(a) = admin_listen.filter(|a| a.port() != 0) {
        if a == proxy.http_listen || Some(a) == https {
            let span = raw
                .admin
                .as_ref()
                .map_or(0, |v| v.get_ref().listen.span().start);
            r.at(
                span,
                "admin.listen",
                "is the same address as a proxy listener",
            );
        }
    }
}

/// Checks across services: what HTTPS needs, and the rules every provider
/// shares (see [`rules::disagreements`]): services sharing a host, or a
/// host and a path (one pool), agree on how they are served, and at most
/// one is the default backend.
fn check_services_agree(
    raw: &RawConfig,
    services: &[Service],
    proxy: &ProxySettings,
    r: &mut Reporter<'_>,
) {
    // Names are unique among valid services; the first raw one is theirs.
    let mut spans: HashMap<&str, usize> = HashMap::with_capacity(raw.service.len());
    for s in &raw.service {
        let name = &s.get_ref().name;
        spans
            .entry(name.get_ref().as_str())
            .or_insert(name.span().start);
    }
    let span_of = |name: &str| spans.get(name).copied().unwrap_or(0);
    // A controller serves no traffic: its proxies' own https_listen is
    // what HTTPS services need, and a proxy without one refuses (NACKs)
    // the snapshot saying so.
    let serves = raw.controller.is_none();
    for s in services {
        if serves && proxy.https_listen.is_none() {
            let needs = [
                (s.tls.is_some(), "tls_cert"),
                (s.ssl_only, "ssl_only"),
                (s.passthrough, "passthrough"),
            ];
            for (set, key) in needs {
                if set {
                    r.at(
                        span_of(&s.name),
                        format!("service ({}).{key}", s.name),
                        "needs [proxy] https_listen",
                    );
                }
            }
        }
    }
    for d in rules::disagreements(services) {
        let s = &services[d.service];
        r.at(
            span_of(&s.name),
            format!("service ({}).{}", s.name, d.setting),
            d.to_string(),
        );
    }
}

fn validate_docker(raw: &RawDocker, r: &mut Reporter<'_>) -> DockerSettings {
    let mut d = DockerSettings::default();
    if let Some(e) = &raw.endpoint {
        match check_docker_endpoint(e.get_ref()) {
            Ok(()) => d.endpoint = Some(e.get_ref().clone()),
            Err(message) => r.at(e.span().start, "docker.endpoint", message),
        }
    }
    for (value, field, slot) in [
        (
            &raw.poll_interval,
            "docker.poll_interval",
            &mut d.poll_interval,
        ),
        (
            &raw.damping_window,
            "docker.damping_window",
            &mut d.damping_window,
        ),
        (
            &raw.damping_interval,
            "docker.damping_interval",
            &mut d.damping_interval,
        ),
    ] {
        let Some(value) = value else { continue };
        match humantime::parse_duration(value.get_ref()) {
            Ok(v) if v > MAX_DURATION => r.at(value.span().start, field, "must be at most 30 days"),
            Ok(v) if !v.is_zero() => *slot = v,
            Ok(_) => r.at(value.span().start, field, "must be greater than zero"),
            Err(e) => r.at(
                value.span().start,
                field,
                format!(
                    "{:?} is not a duration such as \"3s\": {e}",
                    value.get_ref()
                ),
            ),
        }
    }
    if let Some(n) = &raw.damping_changes {
        match usize::try_from(*n.get_ref()) {
            Ok(v) if v > 0 => d.damping_changes = v,
            _ => r.at(
                n.span().start,
                "docker.damping_changes",
                "must be a positive count",
            ),
        }
    }
    d.tls_ca = raw.tls_ca.as_ref().map(|v| v.get_ref().clone());
    d.tls_cert = raw.tls_cert.as_ref().map(|v| v.get_ref().clone());
    d.tls_key = raw.tls_key.as_ref().map(|v| v.get_ref().clone());
    if d.tls_cert.is_some() != d.tls_key.is_some() {
        let at = raw
            .tls_cert
            .as_ref()
            .or(raw.tls_key.as_ref())
            .map_or(0, |v| v.span().start);
        r.at(at, "docker.tls_cert", "tls_cert and tls_key go together");
    }
    d.attach_networks = raw.attach_networks.unwrap_or(d.attach_networks);
    d.exposed_by_default = raw.exposed_by_default.unwrap_or(d.exposed_by_default);
    d.allow_shared_hosts = raw.allow_shared_hosts.unwrap_or(d.allow_shared_hosts);
    if let Some(c) = &raw.constraints {
        // Reported at the string's start, with the column inside the
        // expression: escapes make the two columns differ.
        match crate::labels::Constraint::parse(c.get_ref()) {
            Ok(parsed) => d.constraints = Some(parsed),
            Err(e) => r.at(c.span().start, "docker.constraints", e.to_string()),
        }
    }
    d
}

fn validate_controller(
    raw: &Spanned<RawController>,
    r: &mut Reporter<'_>,
) -> Option<ControllerSettings> {
    let c = raw.get_ref();
    let mut ok = true;
    let state_dir = match &c.state_dir {
        Some(d) if d.get_ref().trim().is_empty() => {
            r.at(d.span().start, "controller.state_dir", "must not be empty");
            ok = false;
            None
        }
        Some(d) => Some(d.get_ref().clone()),
        None => None,
    };
    let mut server_names = Vec::new();
    for name in c.server_names.iter().flat_map(|n| n.get_ref()) {
        let n = name.get_ref();
        if n.is_empty()
            || n.bytes()
                .any(|b| !(b.is_ascii_alphanumeric() || b"-.:".contains(&b)))
        {
            r.at(
                name.span().start,
                "controller.server_names",
                format!("{n:?} is not a host name or IP address"),
            );
            ok = false;
        } else {
            server_names.push(n.clone());
        }
    }
    let listen = match &c.listen {
        None => {
            r.at(
                raw.span().start,
                "controller.listen",
                "is required in [controller] (an IP:PORT, e.g. \"0.0.0.0:7443\")",
            );
            return None;
        }
        Some(l) => match l.get_ref().parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                r.at(
                    l.span().start,
                    "controller.listen",
                    format!("{:?} is not an IP:PORT address", l.get_ref()),
                );
                return None;
            }
        },
    };
    let mut proxy_networks: Vec<String> = Vec::new();
    for name in c.proxy_networks.iter().flatten() {
        let n = name.get_ref();
        // Docker's own rule for network names.
        let valid = n.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        let problem = if !valid {
            Some(format!("{n:?} is not a Docker network name"))
        } else if proxy_networks.contains(n) {
            Some(format!("{n:?} is listed twice"))
        } else {
            None
        };
        match problem {
            Some(p) => {
                r.at(name.span().start, "controller.proxy_networks", p);
                ok = false;
            }
            None => proxy_networks.push(n.clone()),
        }
    }
    ok.then_some(ControllerSettings {
        listen,
        state_dir,
        server_names,
        proxy_networks,
    })
}

fn validate_admin(raw: &Spanned<RawAdmin>, r: &mut Reporter<'_>) -> Option<AdminSettings> {
    let a = raw.get_ref();
    // Read first, so its problem is listed even when listen's is too.
    let config_history = read(
        &a.config_history,
        "admin.config_history",
        |n| rules::number_in(*n, 1, MAX_CONFIG_HISTORY).map(|n| n as usize),
        r,
    );
    let listen = match a.listen.get_ref().parse::<SocketAddr>() {
        Ok(l) => l,
        Err(_) => {
            r.at(
                a.listen.span().start,
                "admin.listen",
                format!("{:?} is not an IP:PORT address", a.listen.get_ref()),
            );
            return None;
        }
    };
    let token = match &a.token {
        Some(t) if t.get_ref().len() < 16 || t.get_ref().bytes().any(|b| !b.is_ascii_graphic()) => {
            r.at(
                t.span().start,
                "admin.token",
                "must be at least 16 printable characters without spaces",
            );
            return None;
        }
        Some(t) => Some(t.get_ref().clone()),
        None => None,
    };
    if token.is_none() && !listen.ip().is_loopback() {
        r.at(
            a.listen.span().start,
            "admin.listen",
            format!(
                "{listen} is reachable from other machines, so admin.token is required \
                 (or listen on 127.0.0.1)"
            ),
        );
        return None;
    }
    if a.config_history.is_some() && config_history.is_none() {
        return None;
    }
    Some(AdminSettings {
        listen,
        token,
        config_history: config_history.unwrap_or(DEFAULT_CONFIG_HISTORY),
    })
}

fn validate_service(
    index: usize,
    raw: &Spanned<RawService>,
    names: &mut HashMap<String, usize>,
    r: &mut Reporter<'_>,
) -> Option<Service> {
    let before = r.errors.len();
    let svc = raw.get_ref();
    let name = svc.name.get_ref().clone();
    let label = if name.is_empty() {
        format!("service[{index}]")
    } else {
        format!("service[{index}] ({name})")
    };
    if let Err(e) = check_service_name(&name) {
        r.at(svc.name.span().start, format!("{label}.name"), e);
    } else if let Some(first) = names.get(&name) {
        let (line, _) = line_col(r.text, *first);
        r.at(
            svc.name.span().start,
            format!("{label}.name"),
            format!("duplicate service name {name:?} (first defined on line {line})"),
        );
    } else {
        names.insert(name.clone(), svc.name.span().start);
    }

    let is_default = svc.default_backend.as_ref().is_some_and(|d| *d.get_ref());
    let listed: &[Spanned<String>] = svc.hosts.as_ref().map_or(&[], |h| h.get_ref());
    // Where host problems are reported: the list, or the service's table.
    let hosts_at = svc
        .hosts
        .as_ref()
        .map_or(raw.span().start, |h| h.span().start);
    let mut hosts = Vec::with_capacity(listed.len());
    match &svc.hosts {
        None if !is_default => r.at(
            hosts_at,
            format!("{label}.hosts"),
            "missing: list the host names routed to this service (only a default_backend may have none)",
        ),
        Some(h) if h.get_ref().is_empty() && !is_default => r.at(
            hosts_at,
            format!("{label}.hosts"),
            "must list at least one host name",
        ),
        _ => {}
    }
    for h in listed {
        match HostPattern::parse(h.get_ref()) {
            Ok(p) if hosts.contains(&p) => r.at(
                h.span().start,
                format!("{label}.hosts"),
                format!("{:?} is listed twice", h.get_ref()),
            ),
            Ok(p) => hosts.push(p),
            Err(e) => r.at(h.span().start, format!("{label}.hosts"), e),
        }
    }

    let mut upstreams = Vec::with_capacity(svc.upstreams.len());
    for u in &svc.upstreams {
        match u.get_ref().parse::<SocketAddr>() {
            Ok(a) if upstreams.contains(&a) => r.at(
                u.span().start,
                format!("{label}.upstreams"),
                format!("{a} is listed twice"),
            ),
            Ok(a) => match check_upstream(a) {
                Ok(()) => upstreams.push(a),
                Err(e) => r.at(u.span().start, format!("{label}.upstreams"), e),
            },
            Err(_) => r.at(
                u.span().start,
                format!("{label}.upstreams"),
                format!(
                    "{:?} is not an IP:PORT address (host names are not resolved)",
                    u.get_ref()
                ),
            ),
        }
    }
    let field = |key: &str| format!("{label}.{key}");
    let tls = tls_files(
        (&svc.tls_cert, &svc.tls_key, &svc.tls_ocsp),
        &field("tls_cert"),
        &field("tls_key"),
        r,
    );
    let flag = |v: &Option<Spanned<bool>>| v.as_ref().is_some_and(|b| *b.get_ref());
    let passthrough = flag(&svc.passthrough);
    let ssl_only = flag(&svc.ssl_only);
    let hsts_max_age =
        svc.hsts_max_age
            .as_ref()
            .and_then(|v| match humantime::parse_duration(v.get_ref()) {
                Ok(d) => Some(d),
                Err(e) => {
                    r.at(
                        v.span().start,
                        field("hsts_max_age"),
                        format!("{:?} is not a duration such as \"365d\": {e}", v.get_ref()),
                    );
                    None
                }
            });
    let upstream_tls = flag(&svc.upstream_tls);
    let protocol = match svc
        .upstream_protocol
        .as_ref()
        .map(|p| (p, p.get_ref().as_str()))
    {
        None | Some((_, "http1")) => UpstreamProtocol::Http1,
        Some((_, "h2")) => UpstreamProtocol::H2,
        Some((_, "h2c")) => UpstreamProtocol::H2c,
        Some((p, other)) => {
            r.at(
                p.span().start,
                field("upstream_protocol"),
                format!("{other:?} is not one of \"http1\", \"h2\", \"h2c\""),
            );
            UpstreamProtocol::Http1
        }
    };
    if let Some(p) = &svc.upstream_protocol {
        match protocol {
            UpstreamProtocol::H2 if !upstream_tls => r.at(p.span().start, field("upstream_protocol"), "\"h2\" is HTTP/2 over TLS and needs upstream_tls = true (use \"h2c\" for cleartext)"),
            UpstreamProtocol::H2c if upstream_tls => r.at(p.span().start, field("upstream_protocol"), "\"h2c\" is cleartext HTTP/2; with upstream_tls = true use \"h2\""),
            _ => {}
        }
    }
    let verify = match svc
        .upstream_tls_verify
        .as_ref()
        .map(|v| (v, v.get_ref().as_str()))
    {
        None | Some((_, "required")) => true,
        Some((_, "none")) => false,
        Some((v, other)) => {
            r.at(
                v.span().start,
                field("upstream_tls_verify"),
                format!("{other:?} is not one of \"required\", \"none\""),
            );
            true
        }
    };
    if !upstream_tls {
        for (v, key) in [
            (
                svc.upstream_tls_verify.as_ref().map(|v| v.span()),
                "upstream_tls_verify",
            ),
            (
                svc.upstream_tls_ca.as_ref().map(|v| v.span()),
                "upstream_tls_ca",
            ),
            (
                svc.upstream_tls_name.as_ref().map(|v| v.span()),
                "upstream_tls_name",
            ),
        ] {
            if let Some(span) = v {
                r.at(
                    span.start,
                    field(key),
                    "only applies with upstream_tls = true",
                );
            }
        }
    }
    let server_name = match &svc.upstream_tls_name {
        Some(n) => match HostPattern::parse(n.get_ref()) {
            Ok(HostPattern::Exact(name)) => name,
            _ => {
                r.at(
                    n.span().start,
                    field("upstream_tls_name"),
                    format!("{:?} is not a host name", n.get_ref()),
                );
                String::new()
            }
        },
        // The first exact host: a pooled connection serves every host of
        // the service, so the name can't follow each request's Host.
        None => hosts
            .iter()
            .find_map(|h| match h {
                HostPattern::Exact(n) => Some(n.clone()),
                HostPattern::Wildcard(_) => None,
            })
            .unwrap_or_default(),
    };
    if upstream_tls
        && server_name.is_empty()
        && svc.upstream_tls_name.is_none()
        && !hosts.is_empty()
    {
        r.at(hosts_at, field("upstream_tls_name"), "every host is a wildcard: set upstream_tls_name to the name the upstreams' certificate carries");
    }
    let upstream = UpstreamOptions {
        protocol,
        tls: upstream_tls.then(|| UpstreamTls {
            verify,
            ca: svc.upstream_tls_ca.as_ref().map(|c| c.get_ref().clone()),
            server_name,
        }),
    };
    if passthrough {
        let span = svc.passthrough.as_ref().map_or(0, |p| p.span().start);
        if tls.is_some() {
            r.at(
                span,
                field("passthrough"),
                "a passthrough service does not terminate TLS, so it takes no tls_cert/tls_key",
            );
        }
        if upstream_tls || svc.upstream_protocol.is_some() || hsts_max_age.is_some() {
            r.at(span, field("passthrough"), "a passthrough service relays raw TLS; upstream_tls, upstream_protocol and hsts_max_age do not apply");
        }
    }
    let context_root = svc.context_root.as_ref().and_then(|v| {
        rules::parse_context_root(v.get_ref())
            .map_err(|e| r.at(v.span().start, field("context_root"), e))
            .ok()
            .flatten()
    });
    let mut redirects = Vec::new();
    for v in svc.redirects.iter().flat_map(|v| v.get_ref()) {
        let raw = v.get_ref();
        match rules::parse_redirect(raw.from.get_ref(), raw.to.get_ref()) {
            Ok(red) => redirects.push(red),
            Err(e) => {
                // Point at the half that is wrong.
                let at = if e.starts_with("to ") {
                    &raw.to
                } else {
                    &raw.from
                };
                r.at(at.span().start, field("redirects"), e);
            }
        }
    }
    let sticky_session_cookie = svc.sticky_session_cookie.as_ref().and_then(|v| {
        rules::parse_cookie_name(v.get_ref())
            .map_err(|e| r.at(v.span().start, field("sticky_session_cookie"), e))
            .ok()
    });
    let balance = svc.balance.as_ref().map_or(Balance::default(), |v| {
        rules::parse_balance(v.get_ref()).unwrap_or_else(|e| {
            r.at(v.span().start, field("balance"), e);
            Balance::default()
        })
    });
    let max_body_size = svc
        .max_body_size
        .as_ref()
        .and_then(|v| size(v, &field("max_body_size"), r));
    let connect_timeout = timeout(&svc.connect_timeout, &field("connect_timeout"), r);
    let upstream_timeout = timeout(&svc.upstream_timeout, &field("upstream_timeout"), r);
    let int = |v: &Option<Spanned<i64>>| v.as_ref().map(|v| *v.get_ref());
    let health = rules::health_check(&rules::HealthKeys {
        path: text(&svc.health_path),
        interval: text(&svc.health_interval),
        timeout: text(&svc.health_timeout),
        healthy: int(&svc.health_healthy),
        unhealthy: int(&svc.health_unhealthy),
        status: text(&svc.health_status),
        host: text(&svc.health_host),
    })
    .unwrap_or_else(|problems| {
        for p in problems {
            r.at(svc.span_of(p.setting), field(p.setting), p.message);
        }
        None
    });
    let max_requests = read(
        &svc.max_requests,
        &field("max_requests"),
        |&n| rules::max_requests(n),
        r,
    );
    let max_ejected_percent = read(
        &svc.max_ejected_percent,
        &field("max_ejected_percent"),
        |&n| rules::percent(n),
        r,
    );
    let service_cluster = svc.service_cluster.as_ref().and_then(|v| {
        rules::parse_service_cluster(v.get_ref())
            .map_err(|e| r.at(v.span().start, field("service_cluster"), e))
            .ok()
    });
    let service = Service {
        name,
        hosts,
        upstreams,
        tls,
        ssl_only,
        hsts_max_age,
        passthrough,
        upstream,
        context_root,
        context_root_rewrite: flag(&svc.context_root_rewrite),
        redirects,
        sticky_session_cookie,
        ip_hash: flag(&svc.ip_hash),
        balance,
        default_backend: flag(&svc.default_backend),
        max_body_size,
        connect_timeout,
        upstream_timeout,
        health,
        max_requests,
        max_ejected_percent,
        service_cluster,
    };
    // Only a service whose values all read can be judged as a whole.
    if r.errors.len() != before {
        return None;
    }
    for p in rules::service_problems(&service) {
        r.at(svc.span_of(p.setting), field(p.setting), p.message);
    }
    (r.errors.len() == before).then_some(service)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[proxy]
http_listen = "127.0.0.1:8080"
proxy_id = "lb-1"
hide_info_headers = false
connect_timeout = "250ms"

[[service]]
name = "simple_foo"
hosts = ["foo.app.domain.com", "*.foo.example"]
upstreams = ["127.0.0.1:9001", "127.0.0.1:9002"]
"#;

    #[test]
    fn parses_the_documented_shape() {
        let c = Config::parse(GOOD, "p.toml").unwrap();
        assert_eq!(c.proxy.proxy_id.as_deref(), Some("lb-1"));
        assert_eq!(c.proxy.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.services.len(), 1);
        assert_eq!(
            c.services[0].hosts[1],
            HostPattern::Wildcard("foo.example".into())
        );
        assert_eq!(
            c.services[0].upstreams[1],
            "127.0.0.1:9002".parse().unwrap()
        );
    }

    #[test]
    fn empty_file_is_a_valid_empty_config() {
        let c = Config::parse("", "p.toml").unwrap();
        assert!(c.services.is_empty());
    }

    fn errors(text: &str) -> Vec<String> {
        Config::parse(text, "p.toml")
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn docker_exposure_constraints_and_shared_hosts() {
        let d = Config::parse("[docker]\n", "p.toml")
            .unwrap()
            .docker
            .unwrap();
        assert!(d.exposed_by_default && !d.allow_shared_hosts);
        assert_eq!(d.constraints, None);
        let text = "[docker]\nexposed_by_default = false\nallow_shared_hosts = true\nconstraints = 'label(\"com.docker.stack.namespace\") == \"prod\"'\n";
        let d = Config::parse(text, "p.toml").unwrap().docker.unwrap();
        assert!(!d.exposed_by_default && d.allow_shared_hosts);
        let c = d.constraints.unwrap();
        let prod = [("com.docker.stack.namespace".to_owned(), "prod".to_owned())].into();
        assert!(c.admits(&prod));
        assert!(!c.admits(&Default::default()));
        // A bad expression: the file's line and column (the string's
        // start), then the column inside the expression.
        let e = errors("[docker]\nconstraints = 'has_label(\"a\") && lable(\"b\") == \"c\"'\n");
        assert_eq!(
            e,
            ["p.toml:2:15: docker.constraints: column 19 of the expression: unknown function \"lable\": use label(\"...\") == \"...\", label(\"...\") != \"...\" or has_label(\"...\")"]
        );
    }

    #[test]
    fn bad_toml_names_line_and_field() {
        let e = errors("[proxy]\nhide_info_headers = \"yes\"\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("p.toml:2:21: proxy.hide_info_headers: "),
            "{e:?}"
        );
        assert!(e[0].contains("expected a boolean"), "{e:?}");

        let e = errors("[[service]]\nname = \"a\"\nhosts = [\"a.test\"]\n[[service]]\nname = \"b\"\nhostz = [\"b\"]\n");
        assert!(
            e[0].starts_with("p.toml:6:1: service[1].hostz: unknown field `hostz`"),
            "{e:?}"
        );

        let e = errors("[proxy\n");
        assert!(e[0].starts_with("p.toml:1:"), "{e:?}");
    }

    #[test]
    fn every_validation_problem_is_listed() {
        let e = errors(
            r#"
[proxy]
http_listen = "localhost"
connect_timeout = "soon"

[[service]]
name = "a"
hosts = []
upstreams = ["127.0.0.1:1"]

[[service]]
name = "a"
hosts = ["ok.test", "bad host", "ok.test"]
upstreams = ["127.0.0.1:1", "nope:80", "127.0.0.1:1"]
"#,
        );
        let expect = [
            "p.toml:3:15: proxy.http_listen: \"localhost\" is not an IP:PORT address",
            "p.toml:4:19: proxy.connect_timeout: \"soon\" is not a duration",
            "p.toml:8:9: service[0] (a).hosts: must list at least one host name",
            "p.toml:12:8: service[1] (a).name: duplicate service name \"a\" (first defined on line 7)",
            "p.toml:13:21: service[1] (a).hosts: \"bad host\": invalid character ' '",
            "p.toml:13:33: service[1] (a).hosts: \"ok.test\" is listed twice",
            "p.toml:14:29: service[1] (a).upstreams: \"nope:80\" is not an IP:PORT address",
            "p.toml:14:40: service[1] (a).upstreams: 127.0.0.1:1 is listed twice",
        ];
        assert_eq!(e.len(), expect.len(), "{e:#?}");
        for (got, want) in e.iter().zip(expect) {
            assert!(got.starts_with(want), "got {got:?}\nwant {want:?}");
        }
    }

    #[test]
    fn the_controller_table() {
        let c = Config::parse(
            "[controller]\nlisten = \"127.0.0.1:7443\"\nstate_dir = \"state\"\nserver_names = [\"lb.example\"]\n",
            "p.toml",
        )
        .unwrap();
        let c = c.controller.unwrap();
        assert_eq!(c.listen, "127.0.0.1:7443".parse().unwrap());
        assert_eq!(c.state_dir.as_deref(), Some("state"));
        assert_eq!(c.server_names, ["lb.example"]);
        assert!(Config::parse("", "p.toml").unwrap().controller.is_none());
        let e = errors("[controller]\nstate_dir = \"s\"\n");
        assert!(
            e[0].starts_with("p.toml:1:1: controller.listen: is required"),
            "{e:?}"
        );
        let e = errors("[controller]\nlisten = \"nowhere\"\n");
        assert!(
            e[0].starts_with("p.toml:2:10: controller.listen: \"nowhere\" is not an IP:PORT"),
            "{e:?}"
        );
        let e = errors("[controller]\nlisten = \"127.0.0.1:1\"\nserver_names = [\"a b\"]\n");
        assert!(
            e[0].starts_with("p.toml:3:17: controller.server_names:"),
            "{e:?}"
        );
        let c = Config::parse(
            "[controller]\nlisten = \"127.0.0.1:1\"\nproxy_networks = [\"web\", \"shop_default\"]\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(
            c.controller.unwrap().proxy_networks,
            ["web", "shop_default"]
        );
        let e = errors(
            "[controller]\nlisten = \"127.0.0.1:1\"\nproxy_networks = [\"web\", \"web\", \"-x\"]\n",
        );
        assert_eq!(
            e,
            [
                "p.toml:3:26: controller.proxy_networks: \"web\" is listed twice",
                "p.toml:3:33: controller.proxy_networks: \"-x\" is not a Docker network name",
            ],
            "{e:?}"
        );
    }

    #[test]
    fn admin_off_loopback_requires_a_token() {
        let c = Config::parse("[admin]\nlisten = \"127.0.0.1:9090\"\n", "p.toml").unwrap();
        assert_eq!(c.admin.unwrap().token, None);
        let e = errors("[admin]\nlisten = \"0.0.0.0:9090\"\n");
        assert!(e[0].starts_with("p.toml:2:10: admin.listen: 0.0.0.0:9090 is reachable from other machines, so admin.token is required"), "{e:?}");
        let e = errors("[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"short\"\n");
        assert!(e[0].contains("admin.token: must be at least 16"), "{e:?}");
        let c = Config::parse(
            "[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"0123456789abcdef\"\n",
            "p.toml",
        )
        .unwrap();
        assert!(c.admin.unwrap().token.is_some());
        assert!(Config::parse("", "p.toml").unwrap().admin.is_none());
    }

    #[test]
    fn config_history_is_1_to_1000_versions() {
        let c = Config::parse("[admin]\nlisten = \"127.0.0.1:9090\"\n", "p.toml").unwrap();
        assert_eq!(c.admin.unwrap().config_history, DEFAULT_CONFIG_HISTORY);
        let c = Config::parse(
            "[admin]\nlisten = \"127.0.0.1:9090\"\nconfig_history = 1000\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(c.admin.unwrap().config_history, 1000);
        let e = errors("[admin]\nlisten = \"127.0.0.1:9090\"\nconfig_history = 0\n");
        assert_eq!(
            e,
            ["p.toml:3:18: admin.config_history: must be at least 1"],
            "{e:?}"
        );
        let e = errors("[admin]\nlisten = \"127.0.0.1:9090\"\nconfig_history = 1001\n");
        assert_eq!(
            e,
            ["p.toml:3:18: admin.config_history: must be at most 1000"],
            "{e:?}"
        );
        let e = errors("[admin]\nlisten = \"127.0.0.1:9090\"\nconfig_history = \"20\"\n");
        assert!(e[0].starts_with("p.toml:3:"), "{e:?}");
        assert!(e[0].contains("config_history"), "{e:?}");
    }

    #[test]
    fn tls_settings_are_checked_together() {
        let e = errors(
            r#"
[proxy]
default_tls_cert = "d.crt"

[[service]]
name = "a"
hosts = ["a.test"]
tls_cert = "a.crt"
passthrough = true
upstream_protocol = "h2"
upstream_tls_verify = "maybe"

[[service]]
name = "b"
hosts = ["a.test"]
ssl_only = true
upstream_tls_name = "x.test"
"#,
        );
        let expect = [
            "p.toml:3:20: proxy.default_tls_key: proxy.default_tls_cert is set, so proxy.default_tls_key must be too",
            "p.toml:8:12: service[0] (a).tls_key: service[0] (a).tls_cert is set, so service[0] (a).tls_key must be too",
            "p.toml:10:21: service[0] (a).upstream_protocol: \"h2\" is HTTP/2 over TLS and needs upstream_tls = true",
            "p.toml:11:23: service[0] (a).upstream_tls_verify: \"maybe\" is not one of",
            "p.toml:11:23: service[0] (a).upstream_tls_verify: only applies with upstream_tls = true",
            "p.toml:9:15: service[0] (a).passthrough: a passthrough service relays raw TLS",
            "p.toml:17:21: service[1] (b).upstream_tls_name: only applies with upstream_tls = true",
        ];
        assert_eq!(e.len(), expect.len(), "{e:#?}");
        for (got, want) in e.iter().zip(expect) {
            assert!(got.starts_with(want), "got {got:?}\nwant {want:?}");
        }
        // Services valid on their own, but not together or without HTTPS.
        let e = errors(
            r#"
[[service]]
name = "a"
hosts = ["a.test"]
passthrough = true

[[service]]
name = "b"
hosts = ["a.test", "b.test"]
ssl_only = true
tls_cert = "b.crt"
tls_key = "b.key"
"#,
        );
        let expect = [
            "p.toml:3:8: service (a).passthrough: needs [proxy] https_listen",
            "p.toml:8:8: service (b).tls_cert: needs [proxy] https_listen",
            "p.toml:8:8: service (b).ssl_only: needs [proxy] https_listen",
            // (Its ssl_only is not listed on top: a passthrough host has no
            // pool of requests for ssl_only to apply to.)
            "p.toml:8:8: service (b).passthrough: shares host a.test with service a but not its passthrough",
        ];
        assert_eq!(e.len(), expect.len(), "{e:#?}");
        for (got, want) in e.iter().zip(expect) {
            assert!(got.starts_with(want), "got {got:?}\nwant {want:?}");
        }
        let ok = Config::parse(
            "[proxy]\nhttps_listen = \"127.0.0.1:8443\"\n[[service]]\nname = \"g\"\nhosts = [\"*.g.test\", \"g.test\"]\nupstream_tls = true\nupstream_protocol = \"h2\"\n",
            "p.toml",
        )
        .unwrap();
        let tls = ok.services[0].upstream.tls.as_ref().unwrap();
        assert_eq!(tls.server_name, "g.test");
        assert!(tls.verify);
    }

    #[test]
    fn absurd_values_that_would_break_at_run_time_are_refused() {
        let e = errors(
            "[proxy]\nhttp_listen = \"127.0.0.1:8080\"\nhttps_listen = \"127.0.0.1:8080\"\nconnect_timeout = \"300000000000y\"\n[admin]\nlisten = \"127.0.0.1:8080\"\n[[service]]\nname = \"a\"\nhosts = [\"a.test\"]\nupstreams = [\"0.0.0.0:80\", \"255.255.255.255:80\", \"224.0.0.1:80\"]\n",
        );
        let want = [
            "p.toml:4:19: proxy.connect_timeout: must be at most 30 days",
            "p.toml:10:14: service[0] (a).upstreams: 0.0.0.0:80: not an address a connection can be made to",
            "p.toml:10:28: service[0] (a).upstreams: 255.255.255.255:80: not an address",
            "p.toml:10:50: service[0] (a).upstreams: 224.0.0.1:80: not an address",
            "p.toml:3:16: proxy.https_listen: is the same address as http_listen",
            "p.toml:6:10: admin.listen: is the same address as a proxy listener",
        ];
        assert_eq!(e.len(), want.len(), "{e:#?}");
        for (got, want) in e.iter().zip(want) {
            assert!(got.starts_with(want), "got {got:?}\nwant {want:?}");
        }
    }

    #[test]
    fn a_table_missing_a_field_is_named() {
        let e = errors("[proxy]\naccess_log = true\n\n[[service]]\nhosts = [\"a.test\"]\n");
        assert!(
            e[0].starts_with("p.toml:4:1: service[0]: missing field `name`"),
            "{e:?}"
        );
    }

    #[test]
    fn routing_and_traffic_keys_are_read() {
        let c = Config::parse(
            r#"
[proxy]
https_listen = "127.0.0.1:8443"
max_body_size = "1MiB"
trusted_proxies = ["10.0.0.0/8", "127.0.0.1", "fd00::/8", "::1"]
http_proxy_protocol = true
https_proxy_protocol = true

[[service]]
name = "app"
hosts = ["a.test", "old.test"]
upstreams = ["127.0.0.1:1"]
context_root = "/app/"
context_root_rewrite = true
redirects = [{ from = "http://old.test", to = "https://a.test/" }, { from = "https://old.test/", to = "https://a.test" }]
sticky_session_cookie = "session"
ip_hash = true
balance = "least_request"
default_backend = true
max_body_size = 2048
connect_timeout = "2s"
upstream_timeout = "30s"

[[service]]
name = "root"
hosts = ["a.test"]
context_root = "/"
max_body_size = "512 KiB"
"#,
            "p.toml",
        )
        .unwrap();
        let p = &c.proxy;
        assert_eq!(p.max_body_size, Some(1 << 20));
        let nets: Vec<String> = p.trusted_proxies.iter().map(|c| c.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8", "::1/128"]);
        assert!(p.trusted_proxies[0].contains("10.1.2.3".parse().unwrap()));
        assert!(p.http_proxy_protocol && p.https_proxy_protocol);
        let s = &c.services[0];
        assert_eq!(s.context_root.as_deref(), Some("/app"));
        assert!(s.context_root_rewrite);
        assert_eq!(
            s.redirects,
            [
                Redirect {
                    from_scheme: "http".into(),
                    from_host: "old.test".into(),
                    to: "https://a.test".into()
                },
                Redirect {
                    from_scheme: "https".into(),
                    from_host: "old.test".into(),
                    to: "https://a.test".into()
                },
            ]
        );
        assert_eq!(s.sticky_session_cookie.as_deref(), Some("session"));
        assert!(s.ip_hash && s.default_backend);
        assert_eq!(s.balance, Balance::LeastRequest);
        assert_eq!(s.max_body_size, Some(2048));
        assert_eq!(s.connect_timeout, Some(Duration::from_secs(2)));
        assert_eq!(s.upstream_timeout, Some(Duration::from_secs(30)));
        // "/" is the whole host; unset keys keep their defaults.
        let root = &c.services[1];
        assert_eq!(root.context_root, None);
        assert_eq!(root.max_body_size, Some(512 * 1024));
        assert_eq!(root.balance, Balance::RoundRobin);
        assert!(!root.ip_hash && root.redirects.is_empty());
        let d = Config::parse("", "p.toml").unwrap();
        assert_eq!(d.proxy.max_body_size, None);
        assert!(d.proxy.trusted_proxies.is_empty());
    }

    fn assert_errors(text: &str, want: &[&str]) {
        let e = errors(text);
        assert_eq!(e.len(), want.len(), "{e:#?}");
        for (got, want) in e.iter().zip(want) {
            assert!(got.starts_with(want), "got {got:?}\nwant {want:?}");
        }
    }

    #[test]
    fn bad_proxy_traffic_keys_are_named() {
        assert_errors(
            r#"
[proxy]
max_body_size = "1MB"
trusted_proxies = ["10.0.0.1/8", "nope", "10.0.0.0/33", "127.0.0.1", "127.0.0.1/32"]
https_proxy_protocol = true
"#,
            &[
                "p.toml:3:17: proxy.max_body_size: \"1MB\" is not a size such as \"512KiB\", \"1MiB\" or \"1048576\" (units: B, KiB, MiB, GiB)",
                "p.toml:4:20: proxy.trusted_proxies: \"10.0.0.1/8\" has bits set beyond the prefix; did you mean \"10.0.0.0/8\"?",
                "p.toml:4:34: proxy.trusted_proxies: \"nope\" is not an address or network such as \"10.0.0.0/8\"",
                "p.toml:4:42: proxy.trusted_proxies: \"10.0.0.0/33\": the prefix length must be 0 to 32",
                "p.toml:4:70: proxy.trusted_proxies: \"127.0.0.1/32\" is listed twice",
                "p.toml:5:24: proxy.https_proxy_protocol: needs [proxy] https_listen",
            ],
        );
        assert_errors(
            "[proxy]\nmax_body_size = 0\n",
            &["p.toml:2:17: proxy.max_body_size: must be greater than zero"],
        );
        assert_errors(
            "[proxy]\nmax_body_size = -1\n",
            &["p.toml:2:17: proxy.max_body_size: -1 is not a size"],
        );
        assert_errors(
            "[proxy]\nmax_body_size = true\n",
            &["p.toml:2:17: proxy.max_body_size: invalid type: boolean `true`, expected a size such as \"1MiB\" or a number of bytes"],
        );
    }

    #[test]
    fn bad_service_traffic_keys_are_named() {
        assert_errors(
            r#"
[[service]]
name = "a"
hosts = ["a.test"]
context_root = "app"
redirects = [{ from = "ftp://a.test", to = "http://b.test" }, { from = "http://a.test", to = "b.test" }]
sticky_session_cookie = "my cookie"
balance = "random"
max_body_size = "1.5MiB"
connect_timeout = "0s"
upstream_timeout = "31d"

[[service]]
name = "b"
hosts = ["b.test"]
context_root = "/x/../y"
sticky_session_cookie = ""
"#,
            &[
                "p.toml:5:16: service[0] (a).context_root: \"app\" must start with '/', as in \"/app\"",
                "p.toml:6:23: service[0] (a).redirects: from \"ftp://a.test\" must be http://host or https://host",
                "p.toml:6:94: service[0] (a).redirects: to \"b.test\" must be an absolute http:// or https:// URL",
                "p.toml:7:25: service[0] (a).sticky_session_cookie: \"my cookie\" is not a cookie name: ' ' is not allowed",
                "p.toml:8:11: service[0] (a).balance: \"random\" is not one of \"round_robin\", \"least_request\"",
                "p.toml:9:17: service[0] (a).max_body_size: \"1.5MiB\" is not a size such as",
                "p.toml:10:19: service[0] (a).connect_timeout: must be greater than zero",
                "p.toml:11:20: service[0] (a).upstream_timeout: must be at most 30 days",
                "p.toml:16:16: service[1] (b).context_root: \"/x/../y\" contains a \".\" or \"..\" segment",
                "p.toml:17:25: service[1] (b).sticky_session_cookie: must not be empty",
            ],
        );
        // Values that read, but not together.
        assert_errors(
            r#"
[proxy]
https_listen = "127.0.0.1:8443"

[[service]]
name = "a"
hosts = ["a.test", "*.a.test"]
context_root = "/"
context_root_rewrite = true
redirects = [{ from = "http://old.test", to = "https://a.test" }]

[[service]]
name = "p"
hosts = ["p.test"]
passthrough = true
redirects = [{ from = "http://p.test", to = "https://q.test" }]
default_backend = true
context_root = "/x"
"#,
            &[
                "p.toml:9:24: service[0] (a).context_root_rewrite: needs a context_root (other than \"/\"): there is no prefix to remove",
                "p.toml:10:13: service[0] (a).redirects: from http://old.test: host old.test is not one of the service's hosts (a.test, *.a.test)",
                "p.toml:18:16: service[1] (p).context_root: does not apply to a passthrough service: it relays TLS unread and sees no requests",
                "p.toml:16:13: service[1] (p).redirects: does not apply to a passthrough service",
                "p.toml:17:19: service[1] (p).default_backend: does not apply to a passthrough service",
            ],
        );
        let e = errors("[[service]]\nname = \"a\"\nhosts = [\"a.test\"]\nredirects = [{ from = \"http://a.test\" }]\n");
        assert!(e[0].contains("missing field `to`"), "{e:?}");
    }

    #[test]
    fn services_on_one_host_and_path_must_agree() {
        assert_errors(
            r#"
[[service]]
name = "a"
hosts = ["a.test"]
context_root = "/api"
balance = "least_request"
default_backend = true

[[service]]
name = "b"
hosts = ["a.test"]
context_root = "/api/"
sticky_session_cookie = "sid"

[[service]]
name = "c"
hosts = ["a.test"]
ip_hash = true
connect_timeout = "1s"

[[service]]
name = "d"
hosts = ["d.test"]
default_backend = true
"#,
            &[
                "p.toml:10:8: service (b).sticky_session_cookie: shares host a.test and path /api with service a but not its sticky_session_cookie; services on one host and path must agree",
                "p.toml:10:8: service (b).balance: shares host a.test and path /api with service a but not its balance; services on one host and path must agree",
                "p.toml:22:8: service (d).default_backend: service a already has default_backend; only one service may have it",
            ],
        );
    }

    #[test]
    fn health_and_overload_keys_default() {
        let c = Config::parse(
            "[[service]]\nname = \"a\"\nhosts = [\"a.test\"]\n",
            "p.toml",
        )
        .unwrap();
        let p = &c.proxy;
        assert_eq!(p.outlier_consecutive_failures, 5);
        assert_eq!(p.outlier_base_ejection_time, Duration::from_secs(10));
        assert_eq!(p.outlier_max_ejection_time, Duration::from_secs(300));
        assert_eq!(p.max_ejected_percent, 50);
        assert_eq!(p.retry_budget_percent, 20);
        assert_eq!(p.retry_budget_min_per_second, 3);
        assert_eq!(p.hedge_delay, Some(Duration::from_millis(200)));
        assert_eq!(p.health_concurrency, 64);
        let s = &c.services[0];
        assert_eq!(s.health, None);
        assert_eq!((s.max_requests, s.max_ejected_percent), (None, None));
    }

    #[test]
    fn slow_body_limits_are_read_and_bad_ones_named() {
        let d = Config::parse("", "p.toml").unwrap().proxy;
        assert_eq!(d.client_body_min_rate, Some(1024));
        assert_eq!(d.client_body_grace, Duration::from_secs(10));
        assert_eq!(d.max_bodies_per_client, 100);
        let c = Config::parse(
            "[proxy]\nclient_body_min_rate = \"64KiB/s\"\nclient_body_grace = \"2s\"\nmax_bodies_per_client = 0\n",
            "p.toml",
        )
        .unwrap()
        .proxy;
        assert_eq!(c.client_body_min_rate, Some(64 * 1024));
        assert_eq!(c.client_body_grace, Duration::from_secs(2));
        assert_eq!(c.max_bodies_per_client, 0);
        let off = Config::parse("[proxy]\nclient_body_min_rate = \"off\"\n", "p.toml").unwrap();
        assert_eq!(off.proxy.client_body_min_rate, None);
        assert_eq!(
            errors("[proxy]\nclient_body_min_rate = \"1KiB\"\nmax_bodies_per_client = -1\n"),
            [
                "p.toml:3:25: proxy.max_bodies_per_client: must be at least 0",
                "p.toml:2:24: proxy.client_body_min_rate: \"1KiB\" is not a rate such as \"1KiB/s\" (a size a second), or \"off\"",
            ]
        );
    }

    #[test]
    fn max_client_connections_is_a_number_or_auto() {
        assert_eq!(ProxySettings::default().max_client_connections, None);
        let n = Config::parse("[proxy]\nmax_client_connections = 5000\n", "p.toml").unwrap();
        assert_eq!(n.proxy.max_client_connections, Some(5000));
        let auto = Config::parse("[proxy]\nmax_client_connections = \"auto\"\n", "p.toml").unwrap();
        assert_eq!(auto.proxy.max_client_connections, None);
        assert_eq!(
            errors("[proxy]\nmax_client_connections = 0\n"),
            ["p.toml:2:26: proxy.max_client_connections: must be at least 1"]
        );
        assert_eq!(
            errors("[proxy]\nmax_client_connections = \"lots\"\n"),
            ["p.toml:2:26: proxy.max_client_connections: \"lots\" is not a number or \"auto\""]
        );
        let wrong = errors("[proxy]\nmax_client_connections = true\n");
        assert!(
            wrong[0].contains("expected a number, or \"auto\""),
            "{wrong:?}"
        );
    }

    #[test]
    fn access_log_formats_are_read_and_a_bad_one_named() {
        let c = Config::parse("[proxy]\naccess_log_format = \"combined\"\n", "p.toml").unwrap();
        assert_eq!(c.proxy.access_log_format, AccessLogFormat::Combined);
        let c = Config::parse("", "p.toml").unwrap();
        assert_eq!(c.proxy.access_log_format, AccessLogFormat::Interlock);
        assert_eq!(
            errors("[proxy]\naccess_log_format = \"apache\"\n"),
            ["p.toml:2:21: proxy.access_log_format: \"apache\" is not one of \"interlock\" (Interlock's fields, as logfmt or JSON by --log-format), \"combined\" (nginx's combined format)"]
        );
    }

    #[test]
    fn tls_profiles_are_read_and_a_bad_one_named() {
        let c = Config::parse("[proxy]\ntls_profile = \"modern\"\n", "p.toml").unwrap();
        assert_eq!(c.proxy.tls_profile, TlsProfile::Modern);
        let c = Config::parse("", "p.toml").unwrap();
        assert_eq!(c.proxy.tls_profile, TlsProfile::Intermediate);
        assert_eq!(
            errors("[proxy]\ntls_profile = \"old\"\n"),
            ["p.toml:2:15: proxy.tls_profile: \"old\" is not one of \"intermediate\" (TLS 1.3 and 1.2), \"modern\" (TLS 1.3 only)"]
        );
    }

    #[test]
    fn health_and_overload_keys_are_read() {
        let c = Config::parse(
            r#"
[proxy]
outlier_consecutive_failures = 0
outlier_base_ejection_time = "30s"
outlier_max_ejection_time = "30s"
max_ejected_percent = 100
retry_budget_percent = 0
retry_budget_min_per_second = 10
hedge_delay = "off"
health_concurrency = 1

[[service]]
name = "full"
hosts = ["a.test"]
health_path = "/status?full=1"
health_interval = "10s"
health_timeout = "10s"
health_healthy = 1
health_unhealthy = 5
health_status = "204, 300-399,200"
health_host = "Check.Internal"
max_requests = 100
max_ejected_percent = 0

[[service]]
name = "defaults"
hosts = ["b.test"]
health_path = "/healthz"
"#,
            "p.toml",
        )
        .unwrap();
        let p = &c.proxy;
        assert_eq!(p.outlier_consecutive_failures, 0);
        assert_eq!(p.outlier_base_ejection_time, Duration::from_secs(30));
        assert_eq!(p.outlier_max_ejection_time, Duration::from_secs(30));
        assert_eq!((p.max_ejected_percent, p.retry_budget_percent), (100, 0));
        assert_eq!(p.retry_budget_min_per_second, 10);
        assert_eq!(p.hedge_delay, None);
        assert_eq!(p.health_concurrency, 1);
        let full = &c.services[0];
        assert_eq!(
            full.health,
            Some(HealthCheck {
                path: "/status?full=1".into(),
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(10),
                healthy: 1,
                unhealthy: 5,
                status: vec![(200, 200), (204, 204), (300, 399)],
                host: Some("check.internal".into()),
            })
        );
        assert_eq!(full.max_requests, Some(100));
        assert_eq!(full.max_ejected_percent, Some(0));
        // The path alone: the shared rule's defaults (see rules' tests).
        let path_alone = rules::health_check(&rules::HealthKeys {
            path: Some("/healthz"),
            ..Default::default()
        });
        assert_eq!(Ok(c.services[1].health.clone()), path_alone);
        assert_eq!(
            c.services[1].health.as_ref().unwrap().interval,
            Duration::from_secs(5)
        );
        let c = Config::parse("[proxy]\nhedge_delay = \"50ms\"\n", "p.toml").unwrap();
        assert_eq!(c.proxy.hedge_delay, Some(Duration::from_millis(50)));
    }

    #[test]
    fn probe_interval_is_off_or_a_second_or_more() {
        let p = |text: &str| Config::parse(&format!("[proxy]\n{text}\n"), "p.toml");
        assert_eq!(p("").unwrap().proxy.probe_interval, None);
        assert_eq!(
            p("probe_interval = \"off\"").unwrap().proxy.probe_interval,
            None
        );
        assert_eq!(
            p("probe_interval = \"15s\"").unwrap().proxy.probe_interval,
            Some(Duration::from_secs(15))
        );
        let e = p("probe_interval = \"100ms\"").unwrap_err().to_string();
        assert!(
            e.contains("p.toml:2:18: proxy.probe_interval: \"100ms\" is under a second"),
            "{e}"
        );
        let e = p("probe_interval = \"often\"").unwrap_err().to_string();
        assert!(e.contains("(or \"off\" for no probes)"), "{e}");
    }

    #[test]
    fn drain_delay_and_health_uri() {
        let p = |text: &str| Config::parse(&format!("[proxy]\n{text}\n"), "p.toml");
        let defaults = p("").unwrap().proxy;
        assert_eq!(
            (defaults.drain_delay, defaults.health_uri),
            (Duration::ZERO, None)
        );
        let set = p("drain_delay = \"10s\"\nhealth_uri = \"/healthz\"")
            .unwrap()
            .proxy;
        assert_eq!(set.drain_delay, Duration::from_secs(10));
        assert_eq!(set.health_uri.as_deref(), Some("/healthz"));
        assert_eq!(
            p("drain_delay = \"0s\"").unwrap().proxy.drain_delay,
            Duration::ZERO
        );
        for (text, want) in [
            (
                "drain_delay = \"soon\"",
                "p.toml:2:15: proxy.drain_delay: \"soon\" is not a duration",
            ),
            (
                "drain_delay = \"2h\"",
                "p.toml:2:15: proxy.drain_delay: \"2h\" must be at most an hour",
            ),
            (
                "health_uri = \"/\"",
                "proxy.health_uri: \"/\" would answer every site's root page",
            ),
            (
                "health_uri = \"healthz\"",
                "p.toml:2:14: proxy.health_uri: \"healthz\" must be a path starting with '/'",
            ),
            (
                "health_uri = \"/health?x=1\"",
                "proxy.health_uri: \"/health?x=1\": '?' is not allowed in a path",
            ),
            ("health_uri = \"/a b\"", "' ' is not allowed"),
        ] {
            let e = p(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn bad_health_and_overload_keys_are_named() {
        assert_eq!(
            errors(
                r#"
[proxy]
outlier_consecutive_failures = -1
outlier_base_ejection_time = "0s"
outlier_max_ejection_time = "never"
max_ejected_percent = 101
retry_budget_percent = -5
retry_budget_min_per_second = 5000000000
hedge_delay = "0ms"
health_concurrency = 0
"#
            ),
            [
                "p.toml:4:30: proxy.outlier_base_ejection_time: must be greater than zero",
                "p.toml:5:29: proxy.outlier_max_ejection_time: \"never\" is not a duration such as \"5s\" or \"250ms\": expected number at 0",
                "p.toml:10:22: proxy.health_concurrency: must be at least 1",
                "p.toml:3:32: proxy.outlier_consecutive_failures: must be at least 0",
                "p.toml:8:31: proxy.retry_budget_min_per_second: must be at most 4294967295",
                "p.toml:6:23: proxy.max_ejected_percent: must be at most 100",
                "p.toml:7:24: proxy.retry_budget_percent: must be at least 0",
                "p.toml:9:15: proxy.hedge_delay: must be greater than zero (or \"off\" for no hedging)",
            ]
        );
        assert_eq!(
            errors("[proxy]\noutlier_base_ejection_time = \"10m\"\nhedge_delay = \"soon\"\n"),
            [
                "p.toml:2:30: proxy.outlier_base_ejection_time: outlier_base_ejection_time \"10m\" is longer than outlier_max_ejection_time \"5m\"",
                "p.toml:3:15: proxy.hedge_delay: \"soon\" is not a duration such as \"5s\" or \"250ms\": expected number at 0 (or \"off\" for no hedging)",
            ]
        );
        assert_eq!(
            errors("[proxy]\noutlier_max_ejection_time = \"5s\"\n"),
            ["p.toml:2:29: proxy.outlier_max_ejection_time: outlier_base_ejection_time \"10s\" is longer than outlier_max_ejection_time \"5s\""]
        );
        assert_eq!(
            errors(
                r#"
[[service]]
name = "a"
hosts = ["a.test"]
health_path = "healthz"
health_interval = "0s"
health_timeout = "forever"
health_healthy = 0
health_unhealthy = -2
health_status = "200-99"
health_host = "*.a.test"
max_requests = 0
max_ejected_percent = 200

[[service]]
name = "b"
hosts = ["b.test"]
health_path = "/health z"
health_status = "2xx"
health_host = "b.test:8080"

[[service]]
name = "c"
hosts = ["c.test"]
health_path = "/x#y"
health_status = "200,600"
health_host = "bad host"
"#
            ),
            [
                "p.toml:5:15: service[0] (a).health_path: \"healthz\" must start with '/', as in \"/healthz\"",
                "p.toml:6:19: service[0] (a).health_interval: must be greater than zero",
                "p.toml:7:18: service[0] (a).health_timeout: \"forever\" is not a duration such as \"5s\" or \"250ms\": expected number at 0",
                "p.toml:8:18: service[0] (a).health_healthy: must be at least 1",
                "p.toml:9:20: service[0] (a).health_unhealthy: must be at least 1",
                "p.toml:10:17: service[0] (a).health_status: \"200-99\": 99 is not a status code (100 to 599)",
                "p.toml:11:15: service[0] (a).health_host: \"*.a.test\": a check sends one host name, not a wildcard",
                "p.toml:12:16: service[0] (a).max_requests: must be at least 1",
                "p.toml:13:23: service[0] (a).max_ejected_percent: must be at most 100",
                "p.toml:18:15: service[1] (b).health_path: \"/health z\" contains ' ': use printable ASCII without spaces (percent-encode the rest)",
                "p.toml:19:17: service[1] (b).health_status: \"2xx\": \"2xx\" is not a status code or a range such as \"200-399\"",
                "p.toml:20:15: service[1] (b).health_host: \"b.test:8080\": give the host name without a port",
                "p.toml:25:15: service[2] (c).health_path: \"/x#y\" contains '#': a fragment is never sent to a server",
                "p.toml:26:17: service[2] (c).health_status: \"200,600\": 600 is not a status code (100 to 599)",
                "p.toml:27:15: service[2] (c).health_host: \"bad host\": invalid character ' '",
            ]
        );
        // Values that read, but not together.
        assert_eq!(
            errors(
                r#"
[[service]]
name = "a"
hosts = ["a.test"]
health_path = "/healthz"
health_timeout = "10s"

[[service]]
name = "b"
hosts = ["b.test"]
health_path = "/healthz"
health_interval = "1s"
health_status = "300-200"

[[service]]
name = "c"
hosts = ["c.test"]
health_interval = "1s"
health_status = "200"
health_unhealthy = 2

[[service]]
name = "p"
hosts = ["p.test"]
passthrough = true
health_path = "/healthz"
"#
            ),
            [
                "p.toml:6:18: service[0] (a).health_timeout: health_timeout \"10s\" is longer than health_interval \"5s\"",
                "p.toml:13:17: service[1] (b).health_status: \"300-200\": the range 300-200 runs backwards; write it low to high",
                "p.toml:18:19: service[2] (c).health_interval: health_interval is set but health_path is not; no check would run",
                "p.toml:20:20: service[2] (c).health_unhealthy: health_unhealthy is set but health_path is not; no check would run",
                "p.toml:19:17: service[2] (c).health_status: health_status is set but health_path is not; no check would run",
                "p.toml:26:15: service[3] (p).health_path: does not apply to a passthrough service: a check is an HTTP request, and its upstreams expect the clients' TLS",
            ]
        );
        let e = errors("[[service]]\nname = \"a\"\nhosts = [\"a.test\"]\nhealth_healthy = \"2\"\n");
        assert!(
            e[0].starts_with(
                "p.toml:4:18: service[0].health_healthy: invalid type: string \"2\", expected i64"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn services_on_one_route_must_agree_on_health() {
        assert_errors(
            r#"
[[service]]
name = "a"
hosts = ["a.test"]
health_path = "/healthz"
max_requests = 10

[[service]]
name = "b"
hosts = ["a.test"]
health_path = "/healthz"
health_interval = "3s"
max_ejected_percent = 20

[[service]]
name = "c"
hosts = ["a.test"]
max_requests = 10
"#,
            &[
                "p.toml:9:8: service (b).health_interval: shares host a.test and path / with service a but not its health_interval; services on one host and path must agree",
                "p.toml:9:8: service (b).max_requests: shares host a.test and path / with service a but not its max_requests; services on one host and path must agree",
                "p.toml:9:8: service (b).max_ejected_percent: shares host a.test and path / with service a but not its max_ejected_percent; services on one host and path must agree",
                "p.toml:16:8: service (c).health_path: shares host a.test and path / with service a but not its health_path; services on one host and path must agree",
            ],
        );
    }

    /// 10,000 services, a tenth of them sharing hosts at several paths:
    /// parsed and validated fast enough for every reload.
    #[test]
    fn ten_thousand_services_parse_quickly() {
        let mut text = String::new();
        for i in 0..10_000 {
            text.push_str(&format!(
                "[[service]]\nname = \"s{i}\"\nhosts = [\"h{}.test\"]\ncontext_root = \"/p{}\"\nupstreams = [\"127.0.0.1:{}\"]\nsticky_session_cookie = \"sid\"\n",
                i / 10,
                i % 3,
                1 + i % 60000
            ));
        }
        let start = std::time::Instant::now();
        let c = Config::parse(&text, "p.toml").unwrap();
        eprintln!(
            "10,000 services parsed and validated in {:?}",
            start.elapsed()
        );
        assert_eq!(c.services.len(), 10_000);
    }

    #[test]
    fn only_a_default_backend_may_list_no_hosts() {
        let c = Config::parse(
            "[[service]]\nname = \"fallback\"\nupstreams = [\"127.0.0.1:9\"]\ndefault_backend = true\n",
            "p.toml",
        )
        .unwrap();
        assert!(c.services[0].hosts.is_empty());
        let e = errors("[[service]]\nname = \"a\"\nupstreams = [\"127.0.0.1:9\"]\n");
        assert!(
            e[0].starts_with("p.toml:1:1: service[0] (a).hosts: missing: list the host names"),
            "{e:?}"
        );
    }

    #[test]
    fn a_controller_leaves_https_listen_to_its_proxies() {
        let services =
            "[[service]]\nname = \"b\"\nhosts = [\"b.test\"]\nupstreams = [\"127.0.0.1:1\"]\n\
                        ssl_only = true\ntls_cert = \"b.crt\"\ntls_key = \"b.key\"\n";
        assert_eq!(
            errors(services),
            [
                "p.toml:2:8: service (b).tls_cert: needs [proxy] https_listen",
                "p.toml:2:8: service (b).ssl_only: needs [proxy] https_listen"
            ]
        );
        let controller = format!("[controller]\nlisten = \"127.0.0.1:7443\"\n\n{services}");
        let c = Config::parse(&controller, "p.toml").unwrap();
        assert!(c.services[0].ssl_only);
    }

    #[test]
    fn each_service_cluster_gets_its_services_and_their_files_only() {
        let mut c = Config::parse(
            r#"
[proxy]
http_listen = "127.0.0.1:0"
https_listen = "127.0.0.1:0"

[[service]]
name = "plain"
hosts = ["plain.test"]
upstreams = ["127.0.0.1:1"]

[[service]]
name = "east"
hosts = ["east.test"]
upstreams = ["127.0.0.1:2"]
service_cluster = "us-east"
tls_cert = "east.pem"
tls_key = "east.key"

[[service]]
name = "west"
hosts = ["west.test"]
upstreams = ["127.0.0.1:3"]
service_cluster = "us-west"
tls_cert = "west.pem"
tls_key = "west.key"
"#,
            "p.toml",
        )
        .unwrap();
        for f in ["east.pem", "east.key", "west.pem", "west.key"] {
            c.files.insert(f.into(), Ok(Arc::from(f.as_bytes())));
        }
        assert_eq!(
            c.service_clusters().into_iter().collect::<Vec<_>>(),
            ["default", "us-east", "us-west"]
        );
        let names = |c: &Config| {
            c.services
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>()
        };
        let east = c.for_service_cluster("us-east");
        assert_eq!(names(&east), ["east"]);
        assert_eq!(
            east.files.keys().collect::<Vec<_>>(),
            ["east.key", "east.pem"]
        );
        assert_eq!(east.proxy, c.proxy);
        assert_eq!(names(&c.for_service_cluster("default")), ["plain"]);
        let nobody = c.for_service_cluster("eu-north");
        assert!(nobody.services.is_empty() && nobody.files.is_empty());
        assert_eq!(
            errors("[[service]]\nname = \"a\"\nhosts = [\"a.test\"]\nupstreams = [\"127.0.0.1:1\"]\nservice_cluster = \"-east\"\n"),
            ["p.toml:5:19: service[0] (a).service_cluster: a service cluster name holds 1 to 63 ASCII letters, digits, '-', '_' or '.', starting with a letter or a digit; this one starts with \"-\""]
        );
    }
}
