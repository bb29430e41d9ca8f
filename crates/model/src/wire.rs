//! The wire form of a [`Config`]: JSON, for the full snapshots a cluster's
//! controller sends its proxies (issue 13), read back into a config equal
//! to the one sent, with an equal [`Version`](crate::Version).
//!
//! `Config` and everything in it derive `Serialize` and `Deserialize`;
//! this module holds what the derives need, [`Config::to_json`] and
//! [`Config::from_json`], and the checks a decoded config must pass.
//!
//! # The form
//! - Durations: serde's own `{"secs": 5, "nanos": 0}`. Exact to the
//!   nanosecond, as the file is (`"1500us"` and `"1ns"` are valid there),
//!   for every length a `Duration` holds (`hsts_max_age` has no cap, so a
//!   count of nanoseconds in a `u64` would not do), with no parser of ours.
//! - Socket addresses as `"127.0.0.1:8080"` and `"[::1]:443"` (serde's own,
//!   read by the standard parser, as the file's are); networks as
//!   `"10.0.0.0/8"` and host patterns as written (`"*.example.com"`), read
//!   by [`Cidr`](crate::Cidr)'s `FromStr` and [`HostPattern::parse`]; a
//!   Docker constraint as its expression, read by [`Constraint::parse`].
//! - Enums as the file spells them: `"round_robin"`, `"h2c"`, `"modern"`.
//! - `files`: `{"PATH": {"ok": "BASE64"}}` or `{"PATH": {"error": "WHY"}}`.
//!   Base64 (standard alphabet, padded, strict) rather than serde's `rc`
//!   feature, which writes bytes as an array of numbers: three to four
//!   bytes of JSON per byte of certificate, where base64 takes 4/3.
//! - `admin.token` is never written, reads back as `None`, and a snapshot
//!   carrying one is refused: a proxy's admin token is its own.
//! - Every field is written (`null` for none), and unknown fields are
//!   refused: a proxy older than its controller rejects a setting it does
//!   not know rather than silently ignoring it.
//!
//! The form holds private keys (in `files`): send it only over an
//! authenticated, encrypted channel, never log it, and store it with mode
//! 0600.
//!
//! ```json
//! {"proxy":{"http_listen":"127.0.0.1:8080","proxy_id":null,...,
//!   "connect_timeout":{"secs":0,"nanos":250000000},...,
//!   "trusted_proxies":["10.0.0.0/8","::1/128"],"hedge_delay":{"secs":0,"nanos":200000000},
//!   "probe_interval":null,"tls_profile":"intermediate",...},
//!  "admin":{"listen":"127.0.0.1:9090","config_history":20},
//!  "docker":null,
//!  "services":[{"name":"web","hosts":["a.test","*.b.test"],"upstreams":["10.0.0.5:80"],
//!    "tls":{"cert":"certs/a.pem","key":"certs/a.key","ocsp":null},"ssl_only":true,
//!    "hsts_max_age":{"secs":31536000,"nanos":0},"passthrough":false,
//!    "upstream":{"protocol":"h2","tls":{"verify":true,"ca":null,"server_name":"a.test"}},
//!    "context_root":"/app","context_root_rewrite":true,
//!    "redirects":[{"from_scheme":"http","from_host":"a.test","to":"https://b.test"}],
//!    "balance":"least_request",...,
//!    "health":{"path":"/healthz","interval":{"secs":5,"nanos":0},"timeout":{"secs":2,"nanos":0},
//!      "healthy":2,"unhealthy":3,"status":[[200,399]],"host":null},...}],
//!  "files":{"certs/a.key":{"error":"No such file or directory"},"certs/a.pem":{"ok":"LS0tLS1CRUdJTi..."}}}
//! ```
//!
//! # Checks
//! Reading checks what the TOML path checks, by the same functions: host
//! patterns, addresses, networks and constraints as each value is read,
//! then every rule on values and combinations ([`rules`]'s readers, each
//! service's [`rules::service_problems`], the services together by
//! [`rules::disagreements`]), so a hostile or corrupted snapshot cannot
//! build a config the file could not. Three of the file's checks are left
//! out: an admin token for a non-loopback `admin.listen` (the token is
//! never on the wire); "needs `https_listen`" for services with TLS (a
//! rule on where a config is served rather than on what it routes: the
//! Docker provider applies it before a config exists); and non-empty
//! certificate paths (a Docker label may name an empty one, and the proxy
//! reports an unreadable certificate when it loads them, for that service
//! alone, where refusing here would refuse the whole snapshot).
//!
//! [`Config::from_json`] names the field of a problem by its JSON path
//! (`services[2].hosts[0]`, `files["certs/a.pem"].ok`). Any other
//! deserializer gets the same checks through `Config`'s `Deserialize`,
//! with serde's own messages for the schema (no path) and the paths in
//! the message for the rules.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::{
    self, AdminSettings, Config, ConfigError, ConfigErrors, DockerSettings, FileData, HealthCheck,
    ProxySettings, Service, UpstreamProtocol, MAX_CONFIG_HISTORY,
};
use crate::host::HostPattern;
use crate::labels::Constraint;
use crate::rules::{self, Timed};

impl Config {
    /// The wire form, as compact JSON. Holds private keys: see the
    /// [module](crate::wire) docs.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .expect("a Config always serializes: its maps are keyed by strings")
    }

    /// Reads the wire form and checks it as [`Config::parse`] checks a
    /// file (see the [module](crate::wire) docs). `origin` names the source
    /// in errors. A value that does not fit the schema is one error with
    /// its line, column and JSON path (`origin:1:57: services[0].hosts[1]:
    /// "a..b": empty label`); values that break a rule are listed all,
    /// each with its path (`origin: proxy.connect_timeout: must be greater
    /// than zero`).
    pub fn from_json(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
        let unchecked: Unchecked = serde_json::from_str(text)
            .map_err(|e| ConfigErrors(vec![schema_error(text, origin, &e)]))?;
        let config = unchecked.into_config();
        let found = problems(&config);
        if found.is_empty() {
            return Ok(config);
        }
        Err(ConfigErrors(
            found
                .into_iter()
                .map(|(field, message)| ConfigError {
                    origin: origin.to_owned(),
                    line: 0,
                    column: 0,
                    field,
                    message,
                })
                .collect(),
        ))
    }
}

/// A config as the schema reads it, before the rules: what `Config`'s
/// `Deserialize` reads first (`#[serde(try_from)]`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Unchecked {
    proxy: ProxySettings,
    admin: Option<AdminSettings>,
    docker: Option<DockerSettings>,
    services: Vec<Service>,
    #[serde(with = "files")]
    files: BTreeMap<String, FileData>,
}

impl Unchecked {
    fn into_config(self) -> Config {
        Config {
            proxy: self.proxy,
            admin: self.admin,
            docker: self.docker,
            // The controller's own setting: never on the wire.
            controller: None,
            services: self.services,
            files: self.files,
        }
    }
}

impl TryFrom<Unchecked> for Config {
    /// Every problem, `path: message`, separated by `; `.
    type Error = String;

    fn try_from(unchecked: Unchecked) -> Result<Config, String> {
        let config = unchecked.into_config();
        let found = problems(&config);
        if found.is_empty() {
            return Ok(config);
        }
        let mut out = String::new();
        for (i, (field, message)) in found.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            let _ = write!(out, "{sep}{field}: {message}");
        }
        Err(out)
    }
}

/// Reads a string value with `parse`. The error is raised inside the
/// visitor, so `serde_json` places it at the end of that string (raised
/// after `String::deserialize` returned, it would be placed where the
/// enclosing array or object ends, past the value), and
/// [`Config::from_json`] names the value's own path.
pub(crate) fn parse_str<'de, D, T>(
    d: D,
    expecting: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct Visitor<F>(F, &'static str);
    impl<T, F: FnOnce(&str) -> Result<T, String>> serde::de::Visitor<'_> for Visitor<F> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.1)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(Visitor(parse, expecting))
}

/// `Config::files` on the wire: `{"ok": BASE64}` or `{"error": WHY}` per path.
pub(crate) mod files {
    use super::*;

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Out<'a> {
        Ok(Base64Out<'a>),
        Error(&'a str),
    }

    struct Base64Out<'a>(&'a [u8]);

    impl Serialize for Base64Out<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&base64::display::Base64Display::new(self.0, &STANDARD))
        }
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum In {
        Ok(Base64In),
        Error(String),
    }

    struct Base64In(Arc<[u8]>);

    impl<'de> Deserialize<'de> for Base64In {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            parse_str(d, "a file's contents in base64", |text| {
                STANDARD
                    .decode(text.as_bytes())
                    .map(|bytes| Base64In(bytes.into()))
                    .map_err(|e| format!("not standard padded base64: {e}"))
            })
        }
    }

    pub(crate) fn serialize<S: Serializer>(
        files: &BTreeMap<String, FileData>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(files.iter().map(|(path, data)| {
            let data = match data {
                Ok(bytes) => Out::Ok(Base64Out(bytes)),
                Err(why) => Out::Error(why),
            };
            (path, data)
        }))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, FileData>, D::Error> {
        let read = BTreeMap::<String, In>::deserialize(d)?;
        Ok(read
            .into_iter()
            .map(|(path, data)| {
                let data = match data {
                    In::Ok(bytes) => Ok(bytes.0),
                    In::Error(why) => Err(why),
                };
                (path, data)
            })
            .collect())
    }
}

/// A constraint travels as its expression, and is parsed again on arrival.
impl Serialize for Constraint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Constraint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "a constraint expression", |text| {
            Constraint::parse(text).map_err(|e| format!("{text:?}: {e}"))
        })
    }
}

/// A schema error from `serde_json`, located: its line and column, and
/// the JSON path of the value it was reading there.
fn schema_error(text: &str, origin: &str, e: &serde_json::Error) -> ConfigError {
    let full = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&position).unwrap_or(&full).to_owned();
    let field = if e.line() == 0 {
        String::new()
    } else {
        path_at(text, offset_of(text, e.line(), e.column()))
    };
    ConfigError {
        origin: origin.to_owned(),
        line: e.line(),
        column: e.column(),
        field,
        message,
    }
}

/// The byte offset of `serde_json`'s line (from 1) and column (bytes
/// into the line).
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let start = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum::<usize>();
    (start + column).min(text.len())
}

/// The JSON path (`services[2].hosts[0]`) of the value being read at
/// `offset`: JSON's structure up to there, scanned as `field_at` scans
/// TOML for the file's errors. Keys that are not plain names are quoted
/// (`files["certs/a.pem"]`).
fn path_at(text: &str, offset: usize) -> String {
    enum Frame {
        /// The key being read or last read; whether its `:` was seen.
        Object(Option<String>, bool),
        Array(usize),
    }
    let bytes = text.as_bytes();
    let end = offset.min(bytes.len());
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < end {
        match bytes[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                if let Some(Frame::Object(key, false)) = stack.last_mut() {
                    *key = text
                        .get(start..i.min(bytes.len()))
                        .and_then(|k| serde_json::from_str(k).ok());
                }
                continue;
            }
            b'{' => stack.push(Frame::Object(None, false)),
            b'[' => stack.push(Frame::Array(0)),
            b'}' | b']' => {
                stack.pop();
            }
            b':' => {
                if let Some(Frame::Object(_, value)) = stack.last_mut() {
                    *value = true;
                }
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object(key, value)) => {
                    *key = None;
                    *value = false;
                }
                Some(Frame::Array(index)) => *index += 1,
                None => {}
            },
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object(Some(key), _) => {
                let plain =
                    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                match (plain, path.is_empty()) {
                    (true, true) => path.push_str(key),
                    (true, false) => {
                        let _ = write!(path, ".{key}");
                    }
                    (false, _) => {
                        let _ = write!(path, "[{key:?}]");
                    }
                }
            }
            Frame::Object(None, _) => {}
            Frame::Array(index) => {
                let _ = write!(path, "[{index}]");
            }
        }
    }
    path
}

/// Problems found in a decoded config, `(JSON path, message)`.
#[derive(Default)]
struct Problems(Vec<(String, String)>);

impl Problems {
    fn add(&mut self, at: &str, key: &str, message: impl Into<String>) {
        let field = if at.is_empty() {
            key.to_owned()
        } else {
            format!("{at}.{key}")
        };
        self.0.push((field, message.into()));
    }

    fn check<E: Into<String>>(&mut self, at: &str, key: &str, result: Result<(), E>) {
        if let Err(e) = result {
            self.add(at, key, e);
        }
    }
}

/// [`rules::parse_timeout`]'s bounds on a read value: above zero, at
/// most 30 days.
fn timeout(d: Duration) -> Result<(), String> {
    if d.is_zero() {
        Err("must be greater than zero".into())
    } else if d > rules::MAX_TIMEOUT {
        Err("must be at most 30 days".into())
    } else {
        Ok(())
    }
}

/// A count read as the file's TOML integers are.
fn count(n: impl TryInto<i64>, min: u32) -> Result<(), String> {
    rules::number_in(n.try_into().unwrap_or(i64::MAX), min, u32::MAX).map(drop)
}

fn percent(n: u8) -> Result<(), String> {
    rules::percent(i64::from(n)).map(drop)
}

fn size(n: u64) -> Result<(), String> {
    rules::size_from_int(i64::try_from(n).unwrap_or(i64::MAX)).map(drop)
}

/// The JSON path, within a service, of a setting a rule names by its TOML key.
fn service_key(setting: &str) -> String {
    match setting {
        "tls_cert" | "tls_key" => "tls".into(),
        "upstream_protocol" => "upstream.protocol".into(),
        "upstream_tls_name" => "upstream.tls.server_name".into(),
        s => match s.strip_prefix("health_") {
            Some(rest) => format!("health.{rest}"),
            None => s.into(),
        },
    }
}

/// What the TOML path checks beyond the schema, on a decoded config.
fn problems(c: &Config) -> Vec<(String, String)> {
    let mut out = Problems::default();
    proxy(&c.proxy, &mut out);
    if let Some(a) = &c.admin {
        out.check(
            "admin",
            "config_history",
            rules::number_in(
                i64::try_from(a.config_history).unwrap_or(i64::MAX),
                1,
                MAX_CONFIG_HISTORY,
            )
            .map(drop),
        );
    }
    listeners(c, &mut out);
    if let Some(d) = &c.docker {
        docker(d, &mut out);
    }
    let before = out.0.len();
    let mut names = HashSet::with_capacity(c.services.len());
    for (i, s) in c.services.iter().enumerate() {
        service(i, s, &mut names, &mut out);
    }
    // As in the file: only services valid on their own are judged together.
    if out.0.len() == before {
        for d in rules::disagreements(&c.services) {
            out.add(
                &format!("services[{}]", d.service),
                &service_key(d.setting),
                d.to_string(),
            );
        }
    }
    out.0
}

fn proxy(p: &ProxySettings, out: &mut Problems) {
    let at = "proxy";
    if let Some(id) = &p.proxy_id {
        out.check(at, "proxy_id", config::check_proxy_id(id));
    }
    let timeouts = [
        ("connect_timeout", p.connect_timeout),
        ("upstream_timeout", p.upstream_timeout),
        ("client_header_timeout", p.client_header_timeout),
        ("shutdown_grace", p.shutdown_grace),
        ("tunnel_idle_timeout", p.tunnel_idle_timeout),
        ("client_body_timeout", p.client_body_timeout),
        ("client_send_timeout", p.client_send_timeout),
        ("client_body_grace", p.client_body_grace),
        ("outlier_base_ejection_time", p.outlier_base_ejection_time),
        ("outlier_max_ejection_time", p.outlier_max_ejection_time),
    ];
    for (key, d) in timeouts {
        out.check(at, key, timeout(d));
    }
    let value = |setting, d| Timed {
        setting,
        text: None,
        read: None,
        default: d,
    };
    if let Some(problem) = rules::not_longer(
        value("outlier_base_ejection_time", p.outlier_base_ejection_time),
        value("outlier_max_ejection_time", p.outlier_max_ejection_time),
    ) {
        out.add(at, "outlier_base_ejection_time", problem.message);
    }
    let counts = [
        (
            "max_connections_per_upstream",
            p.max_connections_per_upstream,
            1,
        ),
        (
            "idle_connections_per_upstream",
            p.idle_connections_per_upstream,
            0,
        ),
        ("max_header_bytes", p.max_header_bytes, 8192),
        ("health_concurrency", p.health_concurrency, 1),
        ("max_bodies_per_client", p.max_bodies_per_client, 0),
    ];
    for (key, n, min) in counts {
        out.check(at, key, count(n, min));
    }
    if let Some(n) = p.max_client_connections {
        out.check(at, "max_client_connections", count(n, 1));
    }
    if let Some(uri) = &p.health_uri {
        out.check(at, "health_uri", rules::parse_health_uri(uri).map(drop));
    }
    out.check(
        at,
        "drain_delay",
        rules::drain_delay_in_range(p.drain_delay),
    );
    out.check(at, "max_ejected_percent", percent(p.max_ejected_percent));
    out.check(at, "retry_budget_percent", percent(p.retry_budget_percent));
    if let Some(d) = p.hedge_delay {
        out.check(at, "hedge_delay", timeout(d));
    }
    if let Some(d) = p.probe_interval {
        let under_a_second = if d < Duration::from_secs(1) {
            Err(format!(
                "{d:?} is under a second: probes that often would be load, not watch"
            ))
        } else {
            timeout(d)
        };
        out.check(at, "probe_interval", under_a_second);
    }
    if let Some(n) = p.max_body_size {
        out.check(at, "max_body_size", size(n));
    }
    if let Some(n) = p.client_body_min_rate {
        out.check(at, "client_body_min_rate", size(n));
    }
    for (i, net) in p.trusted_proxies.iter().enumerate() {
        if p.trusted_proxies[..i].contains(net) {
            out.add(
                at,
                &format!("trusted_proxies[{i}]"),
                format!("{net} is listed twice"),
            );
        }
    }
    if p.https_proxy_protocol && p.https_listen.is_none() {
        out.add(at, "https_proxy_protocol", "needs https_listen");
    }
    if p.https_redirect_port == 0 {
        out.add(at, "https_redirect_port", "must be a port, 1 to 65535");
    }
}

/// The listeners must not share an address: they could not all be bound.
fn listeners(c: &Config, out: &mut Problems) {
    let p = &c.proxy;
    if p.https_listen == Some(p.http_listen) && p.http_listen.port() != 0 {
        out.add(
            "proxy",
            "https_listen",
            "is the same address as http_listen",
        );
    }
    if let Some(a) = c.admin.as_ref().map(|a| a.listen).filter(|a| a.port() != 0) {
        if a == p.http_listen || Some(a) == p.https_listen {
            out.add("admin", "listen", "is the same address as a proxy listener");
        }
    }
}

fn docker(d: &DockerSettings, out: &mut Problems) {
    let at = "docker";
    if let Some(e) = &d.endpoint {
        out.check(at, "endpoint", config::check_docker_endpoint(e));
    }
    for (key, v) in [
        ("poll_interval", d.poll_interval),
        ("damping_window", d.damping_window),
        ("damping_interval", d.damping_interval),
    ] {
        out.check(at, key, timeout(v));
    }
    if d.damping_changes == 0 {
        out.add(at, "damping_changes", "must be a positive count");
    }
    if d.tls_cert.is_some() != d.tls_key.is_some() {
        out.add(at, "tls_cert", "tls_cert and tls_key go together");
    }
}

fn service<'a>(i: usize, s: &'a Service, names: &mut HashSet<&'a str>, out: &mut Problems) {
    let at = &format!("services[{i}]");
    let before = out.0.len();
    match config::check_service_name(&s.name) {
        Err(e) => out.add(at, "name", e),
        Ok(()) if !names.insert(s.name.as_str()) => {
            out.add(at, "name", format!("duplicate service name {:?}", s.name))
        }
        Ok(()) => {}
    }
    if s.hosts.is_empty() && !s.default_backend {
        out.add(at, "hosts", "must list at least one host name");
    }
    for (j, h) in s.hosts.iter().enumerate() {
        if s.hosts[..j].contains(h) {
            out.add(
                at,
                &format!("hosts[{j}]"),
                format!("\"{h}\" is listed twice"),
            );
        }
    }
    let mut seen = HashSet::with_capacity(s.upstreams.len());
    for (j, u) in s.upstreams.iter().enumerate() {
        let problem = if seen.insert(*u) {
            config::check_upstream(*u)
        } else {
            Err(format!("{u} is listed twice"))
        };
        out.check(at, &format!("upstreams[{j}]"), problem);
    }
    let upstream = &s.upstream;
    match (upstream.protocol, upstream.tls.is_some()) {
        (UpstreamProtocol::H2, false) => out.add(
            at,
            "upstream.protocol",
            "\"h2\" is HTTP/2 over TLS and needs upstream.tls (use \"h2c\" for cleartext)",
        ),
        (UpstreamProtocol::H2c, true) => out.add(
            at,
            "upstream.protocol",
            "\"h2c\" is cleartext HTTP/2; with upstream.tls use \"h2\"",
        ),
        _ => {}
    }
    if let Some(tls) = &upstream.tls {
        let name = &tls.server_name;
        if name.is_empty() {
            if !s.hosts.is_empty() {
                out.add(
                    at,
                    "upstream.tls.server_name",
                    "is empty: name the host the upstreams' certificate carries",
                );
            }
        } else if !matches!(HostPattern::parse(name), Ok(HostPattern::Exact(_))) {
            out.add(
                at,
                "upstream.tls.server_name",
                format!("{name:?} is not a host name"),
            );
        }
    }
    if s.passthrough {
        if s.tls.is_some() {
            out.add(
                at,
                "tls",
                "a passthrough service does not terminate TLS, so it takes no certificate",
            );
        }
        if upstream.tls.is_some()
            || upstream.protocol != UpstreamProtocol::Http1
            || s.hsts_max_age.is_some()
        {
            out.add(
                at,
                "passthrough",
                "a passthrough service relays raw TLS; upstream.tls, upstream.protocol and hsts_max_age do not apply",
            );
        }
    }
    if let Some(root) = &s.context_root {
        match rules::parse_context_root(root) {
            Ok(Some(normal)) if normal == *root => {}
            Ok(Some(normal)) => out.add(at, "context_root", format!("must be written {normal:?}")),
            Ok(None) => out.add(
                at,
                "context_root",
                format!("{root:?} is the whole host: write null"),
            ),
            Err(e) => out.add(at, "context_root", e),
        }
    }
    for (j, r) in s.redirects.iter().enumerate() {
        let from = format!("{}://{}", r.from_scheme, r.from_host);
        match rules::parse_redirect(&from, &r.to) {
            Ok(normal) if normal == *r => {}
            Ok(normal) => out.add(
                at,
                &format!("redirects[{j}]"),
                format!(
                    "must be written from_scheme {:?}, from_host {:?}, to {:?}",
                    normal.from_scheme, normal.from_host, normal.to
                ),
            ),
            Err(e) => out.add(at, &format!("redirects[{j}]"), e),
        }
    }
    if let Some(cookie) = &s.sticky_session_cookie {
        out.check(
            at,
            "sticky_session_cookie",
            rules::parse_cookie_name(cookie).map(drop),
        );
    }
    if let Some(cluster) = &s.service_cluster {
        out.check(
            at,
            "service_cluster",
            rules::parse_service_cluster(cluster).map(drop),
        );
    }
    if let Some(n) = s.max_body_size {
        out.check(at, "max_body_size", size(n));
    }
    if let Some(d) = s.connect_timeout {
        out.check(at, "connect_timeout", timeout(d));
    }
    if let Some(d) = s.upstream_timeout {
        out.check(at, "upstream_timeout", timeout(d));
    }
    if let Some(h) = &s.health {
        health(&format!("{at}.health"), h, out);
    }
    if let Some(n) = s.max_requests {
        out.check(
            at,
            "max_requests",
            rules::max_requests(i64::from(n)).map(drop),
        );
    }
    if let Some(n) = s.max_ejected_percent {
        out.check(at, "max_ejected_percent", percent(n));
    }
    // As in the file: only a service whose values all read is judged whole.
    if out.0.len() == before {
        for p in rules::service_problems(s) {
            out.add(at, &service_key(p.setting), p.message);
        }
    }
}

fn health(at: &str, h: &HealthCheck, out: &mut Problems) {
    out.check(at, "path", rules::parse_health_path(&h.path).map(drop));
    out.check(at, "interval", timeout(h.interval));
    out.check(at, "timeout", timeout(h.timeout));
    let value = |setting, d| Timed {
        setting,
        text: None,
        read: None,
        default: d,
    };
    if let Some(problem) = rules::not_longer(
        value("health_timeout", h.timeout),
        value("health_interval", h.interval),
    ) {
        out.add(at, "timeout", problem.message);
    }
    out.check(at, "healthy", count(h.healthy, 1));
    out.check(at, "unhealthy", count(h.unhealthy, 1));
    // The file's reader sorts and merges the ranges; a list it would not
    // have written is refused.
    let written = h
        .status
        .iter()
        .map(|(low, high)| format!("{low}-{high}"))
        .collect::<Vec<_>>()
        .join(",");
    match rules::parse_statuses(&written) {
        Ok(normal) if normal == h.status => {}
        Ok(normal) => out.add(
            at,
            "status",
            format!("must be sorted, overlapping ranges merged: {normal:?}"),
        ),
        Err(e) => out.add(at, "status", e),
    }
    if let Some(host) = &h.host {
        match rules::parse_health_host(host) {
            Ok(normal) if normal == *host => {}
            Ok(normal) => out.add(at, "host", format!("must be written {normal:?}")),
            Err(e) => out.add(at, "host", e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Version;
    use serde_json::{json, Value};

    /// Every setting away from its default (checked below, so a setting
    /// added later without a value here fails the test), durations finer
    /// than a millisecond, IPv6, wildcards, a constraint, and every kind
    /// of service: TLS with OCSP, h2 to TLS upstreams, h2c, passthrough, a
    /// host-less default backend, health checks, redirects, sticky.
    const EVERYTHING: &str = r#"
[proxy]
http_listen = "127.0.0.1:8081"
proxy_id = "lb-1"
hide_info_headers = true
access_log = false
access_log_format = "combined"
connect_timeout = "1500us"
upstream_timeout = "1m 1ns"
client_header_timeout = "31s"
shutdown_grace = "5s"
drain_delay = "7s 5ms"
health_uri = "/-/healthz"
tunnel_idle_timeout = "1h"
client_body_timeout = "61s"
client_send_timeout = "59s"
max_client_connections = 5000
max_connections_per_upstream = 10
idle_connections_per_upstream = 3
max_header_bytes = 16384
https_listen = "[::1]:8443"
default_tls_cert = "certs/default.pem"
default_tls_key = "certs/default.key"
default_tls_ocsp = "certs/default.ocsp"
https_redirect_port = 8443
max_body_size = "1MiB"
trusted_proxies = ["10.0.0.0/8", "127.0.0.1", "fd00::/8"]
http_proxy_protocol = true
https_proxy_protocol = true
outlier_consecutive_failures = 7
outlier_base_ejection_time = "20s"
outlier_max_ejection_time = "10m"
max_ejected_percent = 30
retry_budget_percent = 25
retry_budget_min_per_second = 4
hedge_delay = "off"
probe_interval = "15s"
health_concurrency = 8
tls_profile = "modern"
client_body_min_rate = "off"
client_body_grace = "20s"
max_bodies_per_client = 0

[admin]
listen = "127.0.0.1:9090"
config_history = 50

[docker]
endpoint = "tcp://docker.internal:2376"
poll_interval = "7s"
tls_ca = "docker/ca.pem"
tls_cert = "docker/cert.pem"
tls_key = "docker/key.pem"
damping_changes = 9
damping_window = "2m"
damping_interval = "9s"
attach_networks = false
exposed_by_default = false
constraints = 'label("com.docker.stack.namespace") == "prod" && !has_label("canary")'
allow_shared_hosts = true

[[service]]
name = "web"
hosts = ["a.test", "*.wild.test", "old.test"]
upstreams = ["127.0.0.1:9001", "[::1]:9002"]
tls_cert = "certs/a.pem"
tls_key = "certs/a.key"
tls_ocsp = "certs/a.ocsp"
ssl_only = true
hsts_max_age = "365d"
upstream_tls = true
upstream_tls_verify = "none"
upstream_tls_ca = "certs/ca.pem"
upstream_tls_name = "backend.internal"
upstream_protocol = "h2"
context_root = "/app/"
context_root_rewrite = true
redirects = [{ from = "http://old.test", to = "https://a.test/" }]
sticky_session_cookie = "session"
service_cluster = "edge"
balance = "least_request"
max_body_size = 2048
connect_timeout = "2s"
upstream_timeout = "30s"
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
name = "grpc"
hosts = ["g.test"]
upstreams = ["10.1.2.3:50051"]
upstream_protocol = "h2c"
ip_hash = true

[[service]]
name = "tunnel"
hosts = ["t.test"]
upstreams = ["10.1.2.4:443"]
passthrough = true

[[service]]
name = "fallback"
upstreams = ["10.1.2.5:80"]
default_backend = true
"#;

    fn everything() -> Config {
        let mut c = Config::parse(EVERYTHING, "everything.toml").unwrap();
        let files = [
            (
                "certs/a.pem",
                Ok(b"-----BEGIN CERTIFICATE-----\nMIIB\n".to_vec()),
            ),
            ("certs/a.key", Ok(vec![0, 1, 2, 0xfe, 0xff, b'"', b'\\'])),
            ("certs/a.ocsp", Ok(Vec::new())),
            (
                "certs/default.pem",
                Err("No such file or directory (os error 2)".to_owned()),
            ),
        ];
        for (path, data) in files {
            c.files.insert(path.into(), data.map(Arc::from));
        }
        c
    }

    fn round_trip(c: &Config) -> Config {
        Config::from_json(&c.to_json(), "snapshot.json").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_field_comes_back_equal_with_an_equal_version() {
        let c = everything();
        let back = round_trip(&c);
        assert_eq!(back, c);
        assert_eq!(Version::of(&back), Version::of(&c));
        // The same through serde alone (any deserializer gets the checks).
        let generic: Config = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(generic, c);
        let pretty = serde_json::to_string_pretty(&c).unwrap();
        assert_eq!(Config::from_json(&pretty, "p").unwrap(), c);
        // The empty config too.
        assert_eq!(round_trip(&Config::default()), Config::default());
    }

    /// The config above sets every field away from its default, so the
    /// round trip covers each (a new field fails here until it is set).
    #[test]
    fn the_round_trip_config_sets_every_field() {
        let c = everything();
        let differs = |what: &str, got: Value, default: Value| {
            let (got, default) = (got.as_object().unwrap(), default.as_object().unwrap());
            assert_eq!(got.len(), default.len());
            for (key, value) in default {
                assert_ne!(&got[key], value, "{what}.{key} is its default");
            }
        };
        let value = |v: &dyn erased::Ser| v.value();
        differs("proxy", value(&c.proxy), value(&ProxySettings::default()));
        differs(
            "docker",
            value(c.docker.as_ref().unwrap()),
            value(&DockerSettings::default()),
        );
        let default = value(&Service::default());
        for (key, unset) in default.as_object().unwrap() {
            assert!(
                c.services
                    .iter()
                    .any(|s| value(s).get(key).unwrap() != unset),
                "no service sets {key}"
            );
        }
        assert!(c.admin.is_some());
        assert!(c.files.values().any(Result::is_err));
        assert!(c
            .files
            .values()
            .any(|f| f.as_ref().is_ok_and(|b| b.is_empty())));
    }

    /// `serde_json::to_value` through a trait object, for the closure above.
    mod erased {
        pub trait Ser {
            fn value(&self) -> serde_json::Value;
        }
        impl<T: serde::Serialize> Ser for T {
            fn value(&self) -> serde_json::Value {
                serde_json::to_value(self).unwrap()
            }
        }
    }

    /// The shape other programs (and people reading a snapshot) see.
    #[test]
    fn the_wire_shape_is_pinned() {
        let json = everything().to_json();
        // Fields in the order of the structs (a `Value` would sort them).
        let at = |key: &str| json.find(&format!("\"{key}\":")).unwrap();
        assert_eq!(at("proxy"), 1);
        assert!(at("proxy") < at("admin") && at("admin") < at("docker"));
        assert!(at("docker") < at("services") && at("services") < at("files"));
        let v: Value = serde_json::from_str(&json).unwrap();
        let p = &v["proxy"];
        assert_eq!(p["http_listen"], "127.0.0.1:8081");
        assert_eq!(p["https_listen"], "[::1]:8443");
        assert_eq!(p["connect_timeout"], json!({"secs": 0, "nanos": 1_500_000}));
        assert_eq!(p["upstream_timeout"], json!({"secs": 60, "nanos": 1}));
        assert_eq!(p["hedge_delay"], Value::Null);
        assert_eq!(p["access_log_format"], "combined");
        assert_eq!(p["tls_profile"], "modern");
        assert_eq!(
            p["trusted_proxies"],
            json!(["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"])
        );
        assert_eq!(
            p["default_tls"],
            json!({"cert": "certs/default.pem", "key": "certs/default.key", "ocsp": "certs/default.ocsp"})
        );
        assert_eq!(
            v["admin"],
            json!({"listen": "127.0.0.1:9090", "config_history": 50})
        );
        assert_eq!(
            v["docker"]["constraints"],
            r#"label("com.docker.stack.namespace") == "prod" && !has_label("canary")"#
        );
        let web = &v["services"][0];
        assert_eq!(web["hosts"], json!(["a.test", "*.wild.test", "old.test"]));
        assert_eq!(web["upstreams"], json!(["127.0.0.1:9001", "[::1]:9002"]));
        assert_eq!(
            web["upstream"],
            json!({"protocol": "h2", "tls": {"verify": false, "ca": "certs/ca.pem", "server_name": "backend.internal"}})
        );
        assert_eq!(web["balance"], "least_request");
        assert_eq!(
            web["redirects"],
            json!([{"from_scheme": "http", "from_host": "old.test", "to": "https://a.test"}])
        );
        assert_eq!(
            web["health"]["status"],
            json!([[200, 200], [204, 204], [300, 399]])
        );
        assert_eq!(v["services"][1]["upstream"]["protocol"], "h2c");
        assert_eq!(
            v["files"],
            json!({
                "certs/a.key": {"ok": "AAEC/v8iXA=="},
                "certs/a.ocsp": {"ok": ""},
                "certs/a.pem": {"ok": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUIK"},
                "certs/default.pem": {"error": "No such file or directory (os error 2)"},
            })
        );
    }

    #[test]
    fn the_admin_token_never_crosses() {
        let mut c = everything();
        let token = "0123456789abcdef-secret";
        c.admin.as_mut().unwrap().token = Some(token.into());
        let json = c.to_json();
        assert!(!json.contains(token) && !json.contains("token"), "{json}");
        let back = round_trip(&c);
        assert_eq!(back.admin.as_ref().unwrap().token, None);
        // Equal to the config without its token; the token is part of the
        // version (a local edit of it is a change), so only that one matches.
        let mut without = c.clone();
        without.admin.as_mut().unwrap().token = None;
        assert_eq!(back, without);
        assert_eq!(Version::of(&back), Version::of(&without));
        assert_ne!(Version::of(&back), Version::of(&c));
        // A snapshot can't set one.
        let mut v: Value = serde_json::from_str(&json).unwrap();
        v["admin"]["token"] = json!(token);
        let e = Config::from_json(&v.to_string(), "s").unwrap_err().0;
        assert_eq!(e[0].field, "admin.token");
        assert!(e[0].message.starts_with("unknown field `token`"), "{e:?}");
    }

    /// The version hashes services and hosts sorted; the wire keeps their
    /// order. Same state, same version, whatever the JSON bytes.
    #[test]
    fn the_version_ignores_the_order_the_wire_keeps() {
        let c = everything();
        let mut reordered = c.clone();
        reordered.services.reverse();
        reordered.services[3].hosts.reverse();
        assert_ne!(reordered.to_json(), c.to_json());
        assert_eq!(round_trip(&reordered), reordered);
        assert_eq!(Version::of(&round_trip(&reordered)), Version::of(&c));
    }

    /// `everything()` as pretty JSON (several lines, so positions are
    /// tested past the first), edited, then read back: its errors.
    fn broken(edit: impl FnOnce(&mut Value)) -> Vec<ConfigError> {
        let mut v: Value = serde_json::from_str(&everything().to_json()).unwrap();
        edit(&mut v);
        let text = serde_json::to_string_pretty(&v).unwrap();
        Config::from_json(&text, "snap.json")
            .expect_err("the edit breaks the config")
            .0
    }

    /// The one error a schema problem gives: its path and the start of its message.
    fn schema(edit: impl FnOnce(&mut Value)) -> (String, String) {
        let e = broken(edit);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].line > 1 && e[0].column > 0, "{e:?}");
        let shown = e[0].to_string();
        let at = format!("snap.json:{}:{}: {}: ", e[0].line, e[0].column, e[0].field);
        assert!(shown.starts_with(&at), "{shown}");
        (e[0].field.clone(), e[0].message.clone())
    }

    #[test]
    fn malformed_values_are_named_by_their_path() {
        let (field, message) = schema(|v| v["services"][0]["hosts"][1] = json!("bad host"));
        assert_eq!(field, "services[0].hosts[1]");
        assert_eq!(message, "\"bad host\": invalid character ' '");
        let (field, message) = schema(|v| v["services"][0]["hosts"][0] = json!("*.a..b"));
        assert_eq!(field, "services[0].hosts[0]");
        assert_eq!(message, "\"*.a..b\": empty label (two dots in a row?)");
        let (field, message) = schema(|v| v["services"][0]["hosts"][2] = json!("a.test:80"));
        assert_eq!(field, "services[0].hosts[2]");
        assert!(message.contains("without the port"), "{message}");
        let (field, message) = schema(|v| v["proxy"]["http_listen"] = json!("localhost:80"));
        assert_eq!(field, "proxy.http_listen");
        assert_eq!(message, "invalid socket address syntax");
        let (field, _) = schema(|v| v["services"][2]["upstreams"][0] = json!("nope:80"));
        assert_eq!(field, "services[2].upstreams[0]");
        let (field, message) = schema(|v| v["files"]["certs/a.pem"]["ok"] = json!("not base64!"));
        assert_eq!(field, "files[\"certs/a.pem\"].ok");
        assert!(
            message.starts_with("not standard padded base64: "),
            "{message}"
        );
        let (field, _) = schema(|v| v["files"]["certs/a.key"]["ok"] = json!("AAEC/v8iXA"));
        assert_eq!(field, "files[\"certs/a.key\"].ok");
        let (field, message) =
            schema(|v| v["files"]["certs/a.key"] = json!({"Ok": "AAEC/v8iXA=="}));
        assert_eq!(field, "files[\"certs/a.key\"].Ok");
        assert!(message.starts_with("unknown variant `Ok`"), "{message}");
        let (field, message) = schema(|v| v["proxy"]["trusted_proxies"][0] = json!("10.0.0.1/8"));
        assert_eq!(field, "proxy.trusted_proxies[0]");
        assert!(message.contains("bits set beyond the prefix"), "{message}");
        let (_, message) = schema(|v| v["proxy"]["trusted_proxies"][2] = json!("fd00::/200"));
        assert!(
            message.contains("prefix length must be 0 to 128"),
            "{message}"
        );
        let (field, message) = schema(|v| v["docker"]["constraints"] = json!("lable(\"a\")"));
        assert_eq!(field, "docker.constraints");
        assert!(message.contains("unknown function \"lable\""), "{message}");
        let (field, message) = schema(|v| v["services"][1]["balance"] = json!("random"));
        assert_eq!(field, "services[1].balance");
        assert!(message.starts_with("unknown variant `random`"), "{message}");
        let (field, message) = schema(|v| {
            v["proxy"]["connect_timeout"] = json!({"secs": u64::MAX, "nanos": 2_000_000_000u32})
        });
        assert_eq!(field, "proxy.connect_timeout");
        assert!(message.contains("overflow"), "{message}");
        let (field, message) = schema(|v| v["proxy"]["access_log"] = json!("yes"));
        assert_eq!(field, "proxy.access_log");
        assert!(message.contains("expected a boolean"), "{message}");
        let (field, message) = schema(|v| v["services"][0]["colour"] = json!("red"));
        assert_eq!(field, "services[0].colour");
        assert!(message.starts_with("unknown field `colour`"), "{message}");
        let (field, message) =
            schema(|v| drop(v["services"][3].as_object_mut().unwrap().remove("name")));
        assert_eq!(field, "services[3]");
        assert_eq!(message, "missing field `name`");
        let e = Config::from_json("{\"proxy\": {", "s").unwrap_err().0;
        assert_eq!((e[0].line, e[0].field.as_str()), (1, "proxy"));
        assert!(e[0].message.starts_with("EOF while parsing"), "{e:?}");
    }

    #[test]
    fn values_that_break_the_files_rules_are_all_listed() {
        let e = broken(|v| {
            v["proxy"]["connect_timeout"] = json!({"secs": 0, "nanos": 0});
            v["proxy"]["max_ejected_percent"] = json!(101);
            v["proxy"]["outlier_base_ejection_time"] = json!({"secs": 3600, "nanos": 0});
            v["admin"]["listen"] = json!("127.0.0.1:8081");
            v["docker"]["damping_changes"] = json!(0);
            let web = &mut v["services"][0];
            web["upstreams"][1] = json!("0.0.0.0:80");
            web["context_root"] = json!("/app/");
            web["redirects"][0]["from_scheme"] = json!("HTTP");
            web["health"]["timeout"] = json!({"secs": 60, "nanos": 0});
            web["health"]["status"] = json!([[399, 200]]);
            v["services"][1]["name"] = json!("web");
            v["services"][2]["upstream"]["protocol"] = json!("h2");
        });
        let got: Vec<(String, String)> = e
            .iter()
            .map(|e| {
                assert_eq!((e.line, e.column), (0, 0));
                (e.field.clone(), e.to_string())
            })
            .collect();
        let want = [
            ("proxy.connect_timeout", "snap.json: proxy.connect_timeout: must be greater than zero"),
            ("proxy.outlier_base_ejection_time", "snap.json: proxy.outlier_base_ejection_time: outlier_base_ejection_time \"1h\" is longer than outlier_max_ejection_time \"10m\""),
            ("proxy.max_ejected_percent", "snap.json: proxy.max_ejected_percent: must be at most 100"),
            ("admin.listen", "snap.json: admin.listen: is the same address as a proxy listener"),
            ("docker.damping_changes", "snap.json: docker.damping_changes: must be a positive count"),
            ("services[0].upstreams[1]", "snap.json: services[0].upstreams[1]: 0.0.0.0:80: not an address a connection can be made to"),
            ("services[0].context_root", "snap.json: services[0].context_root: must be written \"/app\""),
            ("services[0].redirects[0]", "snap.json: services[0].redirects[0]: must be written from_scheme \"http\""),
            ("services[0].health.timeout", "snap.json: services[0].health.timeout: health_timeout \"1m\" is longer than health_interval \"10s\""),
            ("services[0].health.status", "snap.json: services[0].health.status: \"399-200\": the range 399-200 runs backwards"),
            ("services[1].name", "snap.json: services[1].name: duplicate service name \"web\""),
            ("services[2].upstream.protocol", "snap.json: services[2].upstream.protocol: \"h2\" is HTTP/2 over TLS and needs upstream.tls"),
            ("services[2].passthrough", "snap.json: services[2].passthrough: a passthrough service relays raw TLS"),
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for ((field, shown), (want_field, want_shown)) in got.iter().zip(want) {
            assert_eq!(field, want_field);
            assert!(
                shown.starts_with(want_shown),
                "got {shown:?}\nwant {want_shown:?}"
            );
        }
    }

    #[test]
    fn the_shared_service_rules_apply() {
        // One service's combination, then two services on one host.
        let e = broken(|v| v["services"][2]["max_body_size"] = json!(10));
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].field, "services[2].max_body_size");
        assert!(
            e[0].message
                .contains("does not apply to a passthrough service"),
            "{e:?}"
        );
        let e = broken(|v| v["services"][1]["hosts"] = json!(["g.test", "t.test"]));
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].field, "services[2].passthrough");
        assert_eq!(
            e[0].message,
            "shares host t.test with service grpc but not its passthrough; services on one host must agree"
        );
        // serde's own path (no JSON positions) lists them in its message.
        let mut v: Value = serde_json::from_str(&everything().to_json()).unwrap();
        v["services"][1]["hosts"] = json!([]);
        v["proxy"]["probe_interval"] = json!({"secs": 0, "nanos": 500_000_000});
        let e = serde_json::from_value::<Config>(v).unwrap_err().to_string();
        assert_eq!(
            e,
            "proxy.probe_interval: 500ms is under a second: probes that often would be load, not watch; services[1].hosts: must list at least one host name"
        );
    }

    /// Services as any provider could build them, over generated values.
    mod properties {
        use super::*;
        use crate::config::{Balance, Redirect, TlsFiles, UpstreamOptions, UpstreamTls};
        use crate::host::properties::name;
        use proptest::prelude::*;
        use std::net::SocketAddr;

        /// Any duration a timeout may be: a nanosecond to 30 days.
        fn timeout() -> impl Strategy<Value = Duration> {
            (1..=rules::MAX_TIMEOUT.as_nanos() as u64).prop_map(Duration::from_nanos)
        }

        fn upstream() -> impl Strategy<Value = SocketAddr> {
            prop_oneof![
                (1u8..=223, any::<[u8; 3]>(), 1u16..)
                    .prop_map(|(a, [b, c, d], port)| { SocketAddr::from(([a, b, c, d], port)) }),
                (any::<u128>(), 1u16..).prop_map(|(ip, port)| {
                    // Below the multicast range, never unspecified.
                    SocketAddr::from((std::net::Ipv6Addr::from((ip >> 8) | 1), port))
                }),
            ]
        }

        fn health() -> impl Strategy<Value = HealthCheck> {
            (
                "/[a-z0-9/?=]{0,10}",
                timeout(),
                timeout(),
                1u32..,
                1u32..,
                prop::sample::select(vec![
                    vec![(200, 399)],
                    vec![(200, 200), (204, 204)],
                    vec![(100, 599)],
                ]),
                prop::option::of(name()),
            )
                .prop_map(|(path, a, b, healthy, unhealthy, status, host)| {
                    HealthCheck {
                        path,
                        interval: a.max(b),
                        timeout: a.min(b),
                        healthy,
                        unhealthy,
                        status,
                        host,
                    }
                })
        }

        /// Service `i`: its hosts end in `.s{i}`, so services never share
        /// one (sharing is the rules' business, tested there).
        fn service(i: usize) -> impl Strategy<Value = Service> {
            let hosts =
                prop::collection::vec((name(), any::<bool>()), 1..4).prop_map(move |names| {
                    let mut hosts: Vec<HostPattern> = Vec::new();
                    for (n, wild) in names {
                        let n = format!("{n}.s{i}");
                        let h = if wild {
                            HostPattern::Wildcard(n)
                        } else {
                            HostPattern::Exact(n)
                        };
                        if !hosts.contains(&h) {
                            hosts.push(h);
                        }
                    }
                    hosts
                });
            let upstreams = prop::collection::btree_set(upstream(), 0..5)
                .prop_map(|set| set.into_iter().collect::<Vec<_>>());
            let upstream_options = prop_oneof![
                Just(UpstreamOptions::default()),
                Just(UpstreamOptions {
                    protocol: UpstreamProtocol::H2c,
                    tls: None
                }),
                (
                    any::<bool>(),
                    prop::option::of("[a-z/]{1,12}\\.pem"),
                    name(),
                    any::<bool>()
                )
                    .prop_map(|(verify, ca, server_name, h2)| UpstreamOptions {
                        protocol: if h2 {
                            UpstreamProtocol::H2
                        } else {
                            UpstreamProtocol::Http1
                        },
                        tls: Some(UpstreamTls {
                            verify,
                            ca,
                            server_name
                        }),
                    }),
            ];
            let tls =
                prop::option::of(
                    ("[a-z]{1,8}", any::<bool>()).prop_map(|(f, ocsp)| TlsFiles {
                        cert: format!("{f}.pem"),
                        key: format!("{f}.key"),
                        ocsp: ocsp.then(|| format!("{f}.ocsp")),
                    }),
                );
            let routing = (
                prop::option::of("/[a-z0-9]{1,6}(/[a-z0-9]{1,6})?"),
                any::<bool>(),
                prop::option::of("[A-Za-z0-9_-]{1,12}"),
                any::<bool>(),
                prop::sample::select(vec![Balance::RoundRobin, Balance::LeastRequest]),
                any::<bool>(),
            );
            let limits = (
                prop::option::of(1u64..),
                prop::option::of(timeout()),
                prop::option::of(timeout()),
                prop::option::of(health()),
                prop::option::of(1u32..),
                prop::option::of(0u8..=100),
                // hsts_max_age has no cap: any Duration.
                prop::option::of((any::<u64>(), 0u32..1_000_000_000)),
            );
            (
                hosts,
                upstreams,
                upstream_options,
                tls,
                any::<bool>(),
                routing,
                limits,
            )
                .prop_map(
                    move |(hosts, upstreams, upstream, tls, ssl_only, routing, limits)| {
                        let (context_root, rewrite, sticky, ip_hash, balance, redirect) = routing;
                        let (
                            max_body_size,
                            connect,
                            upstream_timeout,
                            health,
                            max_requests,
                            ejected,
                            hsts,
                        ) = limits;
                        let first_exact = hosts.iter().find_map(|h| match h {
                            HostPattern::Exact(n) => Some(n.clone()),
                            HostPattern::Wildcard(_) => None,
                        });
                        let redirects = match first_exact {
                            Some(from_host) if redirect => vec![Redirect {
                                from_scheme: "http".into(),
                                from_host,
                                to: format!("https://elsewhere.test:8443/s{i}"),
                            }],
                            _ => Vec::new(),
                        };
                        Service {
                            name: format!("s{i}"),
                            hosts,
                            upstreams,
                            tls,
                            ssl_only,
                            hsts_max_age: hsts.map(|(s, n)| Duration::new(s, n)),
                            passthrough: false,
                            upstream,
                            context_root_rewrite: rewrite && context_root.is_some(),
                            context_root,
                            redirects,
                            sticky_session_cookie: sticky,
                            ip_hash,
                            balance,
                            default_backend: false,
                            max_body_size,
                            connect_timeout: connect,
                            upstream_timeout,
                            health,
                            max_requests,
                            max_ejected_percent: ejected,
                            service_cluster: (i % 3 == 1).then(|| format!("c{}", i % 2)),
                        }
                    },
                )
        }

        fn services() -> impl Strategy<Value = Vec<Service>> {
            (0usize..6).prop_flat_map(|n| (0..n).map(service).collect::<Vec<_>>())
        }

        fn files() -> impl Strategy<Value = BTreeMap<String, FileData>> {
            prop::collection::btree_map(
                "[a-z./]{1,16}",
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| Ok(Arc::from(b))),
                    "\\PC{0,20}".prop_map(Err),
                ],
                0..4,
            )
        }

        proptest! {
            #[test]
            fn generated_configs_come_back_equal(services in services(), files in files()) {
                let c = Config {
                    proxy: ProxySettings {
                        https_listen: Some("[::1]:8443".parse().unwrap()),
                        ..ProxySettings::default()
                    },
                    services,
                    files,
                    ..Config::default()
                };
                let json = c.to_json();
                let back = Config::from_json(&json, "p");
                prop_assert_eq!(back.as_ref(), Ok(&c), "{}", json);
                prop_assert_eq!(Version::of(&back.unwrap()), Version::of(&c));
            }
        }
    }
}
