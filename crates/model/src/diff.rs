//! What changed between two configs, for people (`portico config diff`,
//! the version list's one-line summaries) and for the admin API (the same
//! type, serialised).
//!
//! Services are matched by name; a service present in both is compared
//! field by field, each field named by its TOML key and shown as the file
//! would say it (`"5s"`, `"/app"`), so `connect_timeout: 5s → 2s` reads
//! like the edit that caused it. Hosts and upstreams are also summed up
//! over the whole config: a host that moved from one service to another
//! was neither added nor removed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{
    AccessLogFormat, AdminSettings, Balance, Config, ControllerSettings, DockerSettings,
    ProxySettings, Service, TlsProfile, UpstreamProtocol,
};
use crate::rules;

/// Everything that differs between an older and a newer config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDiff {
    /// Names, sorted.
    pub services_added: Vec<String>,
    pub services_removed: Vec<String>,
    /// Services in both whose settings differ, by name.
    pub services_changed: Vec<ServiceDiff>,
    /// Host patterns no service had before / has any more, over the whole config.
    pub hosts_added: Vec<String>,
    pub hosts_removed: Vec<String>,
    /// Upstream addresses no service had before / has any more.
    pub upstreams_added: Vec<SocketAddr>,
    pub upstreams_removed: Vec<SocketAddr>,
    /// `[proxy]`, `[admin]` and `[docker]` settings, named `proxy.connect_timeout` etc.
    pub settings: Vec<Change>,
    /// Referenced files (certificates, keys, CAs) still referenced whose
    /// contents changed: a renewed certificate is a version of its own.
    pub files_changed: Vec<String>,
}

/// How one service changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDiff {
    pub name: String,
    pub upstreams_added: Vec<SocketAddr>,
    pub upstreams_removed: Vec<SocketAddr>,
    /// Every other field that differs (and `upstreams` when only their
    /// round-robin order changed), in the order of the config reference.
    pub changes: Vec<Change>,
}

/// One field's old and new value, as the config file would write them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub field: String,
    pub old: String,
    pub new: String,
}

/// A field's name (its TOML key) and how its value is shown. Comparing the
/// shown values is what decides a change, so two values that print alike
/// are alike to the person reading the diff too.
type Field<T> = (&'static str, fn(&T) -> String);

/// What an unset optional value shows as.
const UNSET: &str = "(unset)";

fn opt<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| UNSET.to_owned(), |v| v.to_string())
}

fn dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn opt_dur(d: Option<Duration>) -> String {
    d.map_or_else(|| UNSET.to_owned(), dur)
}

/// A size as the config would write it: the largest binary unit that
/// divides it, else bytes.
pub fn size(bytes: u64) -> String {
    for (unit, factor) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        // Powers of two: a mask tests divisibility.
        if bytes >= factor && bytes & (factor - 1) == 0 {
            return format!("{}{unit}", bytes / factor);
        }
    }
    bytes.to_string()
}

fn opt_size(v: Option<u64>) -> String {
    v.map_or_else(|| UNSET.to_owned(), size)
}

fn list<T: fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    format!("[{}]", items.join(", "))
}

/// `200-399` / `200,204`, as `health_status` is written.
pub fn statuses(ranges: &[(u16, u16)]) -> String {
    ranges
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub fn balance_name(b: Balance) -> &'static str {
    match b {
        Balance::RoundRobin => "round_robin",
        Balance::LeastRequest => "least_request",
    }
}

pub fn protocol_name(p: UpstreamProtocol) -> &'static str {
    match p {
        UpstreamProtocol::Http1 => "http1",
        UpstreamProtocol::H2 => "h2",
        UpstreamProtocol::H2c => "h2c",
    }
}

pub fn access_log_format_name(f: AccessLogFormat) -> &'static str {
    match f {
        AccessLogFormat::Interlock => "interlock",
        AccessLogFormat::Combined => "combined",
    }
}

pub fn tls_profile_name(p: TlsProfile) -> &'static str {
    match p {
        TlsProfile::Intermediate => "intermediate",
        TlsProfile::Modern => "modern",
    }
}

/// A service's hosts as a set: their order carries no meaning.
fn hosts_of(s: &Service) -> BTreeSet<String> {
    s.hosts.iter().map(ToString::to_string).collect()
}

/// Every field of [`Service`] but its name (the key) and its upstreams
/// (compared as added and removed), in the order of the config reference.
static SERVICE_FIELDS: &[Field<Service>] = &[
    ("hosts", |s| list(hosts_of(s))),
    ("tls_cert", |s| opt(s.tls.as_ref().map(|t| &t.cert))),
    ("tls_key", |s| opt(s.tls.as_ref().map(|t| &t.key))),
    ("tls_ocsp", |s| {
        opt(s.tls.as_ref().and_then(|t| t.ocsp.as_ref()))
    }),
    ("ssl_only", |s| s.ssl_only.to_string()),
    ("hsts_max_age", |s| opt_dur(s.hsts_max_age)),
    ("passthrough", |s| s.passthrough.to_string()),
    ("upstream_tls", |s| s.upstream.tls.is_some().to_string()),
    ("upstream_tls_verify", |s| {
        opt(s
            .upstream
            .tls
            .as_ref()
            .map(|t| if t.verify { "required" } else { "none" }))
    }),
    ("upstream_tls_ca", |s| {
        opt(s.upstream.tls.as_ref().and_then(|t| t.ca.as_ref()))
    }),
    ("upstream_tls_name", |s| {
        opt(s.upstream.tls.as_ref().map(|t| &t.server_name))
    }),
    ("upstream_protocol", |s| {
        protocol_name(s.upstream.protocol).to_owned()
    }),
    ("context_root", |s| {
        s.context_root.clone().unwrap_or_else(|| "/".to_owned())
    }),
    ("context_root_rewrite", |s| {
        s.context_root_rewrite.to_string()
    }),
    ("redirects", |s| {
        list(
            s.redirects
                .iter()
                .map(|r| format!("{}://{} → {}", r.from_scheme, r.from_host, r.to)),
        )
    }),
    ("sticky_session_cookie", |s| {
        opt(s.sticky_session_cookie.as_ref())
    }),
    ("ip_hash", |s| s.ip_hash.to_string()),
    ("balance", |s| balance_name(s.balance).to_owned()),
    ("default_backend", |s| s.default_backend.to_string()),
    ("max_body_size", |s| opt_size(s.max_body_size)),
    ("connect_timeout", |s| opt_dur(s.connect_timeout)),
    ("upstream_timeout", |s| opt_dur(s.upstream_timeout)),
    ("health_path", |s| opt(s.health.as_ref().map(|h| &h.path))),
    ("health_interval", |s| {
        opt(s.health.as_ref().map(|h| dur(h.interval)))
    }),
    ("health_timeout", |s| {
        opt(s.health.as_ref().map(|h| dur(h.timeout)))
    }),
    ("health_healthy", |s| {
        opt(s.health.as_ref().map(|h| h.healthy))
    }),
    ("health_unhealthy", |s| {
        opt(s.health.as_ref().map(|h| h.unhealthy))
    }),
    ("health_status", |s| {
        opt(s.health.as_ref().map(|h| statuses(&h.status)))
    }),
    ("health_host", |s| {
        opt(s.health.as_ref().and_then(|h| h.host.as_ref()))
    }),
    ("max_requests", |s| opt(s.max_requests)),
    ("max_ejected_percent", |s| opt(s.max_ejected_percent)),
    ("service_cluster", |s| {
        s.service_cluster
            .as_deref()
            .unwrap_or(rules::DEFAULT_SERVICE_CLUSTER)
            .to_owned()
    }),
];

/// Every `[proxy]` setting, by its key.
static PROXY_FIELDS: &[Field<ProxySettings>] = &[
    ("http_listen", |p| p.http_listen.to_string()),
    ("proxy_id", |p| opt(p.proxy_id.as_ref())),
    ("hide_info_headers", |p| p.hide_info_headers.to_string()),
    ("access_log", |p| p.access_log.to_string()),
    ("access_log_format", |p| {
        access_log_format_name(p.access_log_format).to_owned()
    }),
    ("connect_timeout", |p| dur(p.connect_timeout)),
    ("upstream_timeout", |p| dur(p.upstream_timeout)),
    ("client_header_timeout", |p| dur(p.client_header_timeout)),
    ("shutdown_grace", |p| dur(p.shutdown_grace)),
    ("drain_delay", |p| dur(p.drain_delay)),
    ("health_uri", |p| opt(p.health_uri.as_ref())),
    ("tunnel_idle_timeout", |p| dur(p.tunnel_idle_timeout)),
    ("client_body_timeout", |p| dur(p.client_body_timeout)),
    ("client_send_timeout", |p| dur(p.client_send_timeout)),
    ("client_body_min_rate", |p| {
        p.client_body_min_rate
            .map_or_else(|| "off".to_owned(), |r| format!("{}/s", size(r)))
    }),
    ("client_body_grace", |p| dur(p.client_body_grace)),
    ("max_bodies_per_client", |p| {
        p.max_bodies_per_client.to_string()
    }),
    ("max_client_connections", |p| {
        p.max_client_connections
            .map_or_else(|| "auto".to_owned(), |n| n.to_string())
    }),
    ("max_connections_per_upstream", |p| {
        p.max_connections_per_upstream.to_string()
    }),
    ("idle_connections_per_upstream", |p| {
        p.idle_connections_per_upstream.to_string()
    }),
    ("max_header_bytes", |p| p.max_header_bytes.to_string()),
    ("https_listen", |p| opt(p.https_listen)),
    ("default_tls_cert", |p| {
        opt(p.default_tls.as_ref().map(|t| &t.cert))
    }),
    ("default_tls_key", |p| {
        opt(p.default_tls.as_ref().map(|t| &t.key))
    }),
    ("default_tls_ocsp", |p| {
        opt(p.default_tls.as_ref().and_then(|t| t.ocsp.as_ref()))
    }),
    ("https_redirect_port", |p| p.https_redirect_port.to_string()),
    ("max_body_size", |p| opt_size(p.max_body_size)),
    ("trusted_proxies", |p| list(&p.trusted_proxies)),
    ("http_proxy_protocol", |p| p.http_proxy_protocol.to_string()),
    ("https_proxy_protocol", |p| {
        p.https_proxy_protocol.to_string()
    }),
    ("outlier_consecutive_failures", |p| {
        p.outlier_consecutive_failures.to_string()
    }),
    ("outlier_base_ejection_time", |p| {
        dur(p.outlier_base_ejection_time)
    }),
    ("outlier_max_ejection_time", |p| {
        dur(p.outlier_max_ejection_time)
    }),
    ("max_ejected_percent", |p| p.max_ejected_percent.to_string()),
    ("retry_budget_percent", |p| {
        p.retry_budget_percent.to_string()
    }),
    ("retry_budget_min_per_second", |p| {
        p.retry_budget_min_per_second.to_string()
    }),
    ("hedge_delay", |p| {
        p.hedge_delay.map_or_else(|| "off".to_owned(), dur)
    }),
    ("probe_interval", |p| {
        p.probe_interval.map_or_else(|| "off".to_owned(), dur)
    }),
    ("health_concurrency", |p| p.health_concurrency.to_string()),
    ("tls_profile", |p| {
        tls_profile_name(p.tls_profile).to_owned()
    }),
];

/// `[admin]`: the token only as whether there is one (it is never shown;
/// a new token is reported by [`diff_admin`]).
static ADMIN_FIELDS: &[Field<AdminSettings>] = &[
    ("listen", |a| a.listen.to_string()),
    ("token", |a| {
        if a.token.is_some() { "(set)" } else { UNSET }.to_owned()
    }),
    ("config_history", |a| a.config_history.to_string()),
];

static DOCKER_FIELDS: &[Field<DockerSettings>] = &[
    ("endpoint", |d| opt(d.endpoint.as_ref())),
    ("poll_interval", |d| dur(d.poll_interval)),
    ("tls_ca", |d| opt(d.tls_ca.as_ref())),
    ("tls_cert", |d| opt(d.tls_cert.as_ref())),
    ("tls_key", |d| opt(d.tls_key.as_ref())),
    ("damping_changes", |d| d.damping_changes.to_string()),
    ("damping_window", |d| dur(d.damping_window)),
    ("damping_interval", |d| dur(d.damping_interval)),
    ("attach_networks", |d| d.attach_networks.to_string()),
    ("exposed_by_default", |d| d.exposed_by_default.to_string()),
    ("constraints", |d| {
        opt(d.constraints.as_ref().map(|c| &c.text))
    }),
    ("allow_shared_hosts", |d| d.allow_shared_hosts.to_string()),
];

static CONTROLLER_FIELDS: &[Field<ControllerSettings>] = &[
    ("listen", |c| c.listen.to_string()),
    ("state_dir", |c| opt(c.state_dir.as_ref())),
    ("server_names", |c| c.server_names.join(", ")),
    ("proxy_networks", |c| c.proxy_networks.join(", ")),
];

/// Fails to compile when a field is added to one of the settings types
/// without being added here, as a reminder to list it in its `*_FIELDS`
/// table too: a diff that silently skips a field would tell an operator
/// that nothing changed when something did.
#[allow(dead_code)]
fn every_field_is_listed(
    s: &Service,
    p: &ProxySettings,
    a: &AdminSettings,
    d: &DockerSettings,
    c: &ControllerSettings,
) {
    let Service {
        name: _,
        hosts: _,
        upstreams: _,
        tls: _,
        ssl_only: _,
        hsts_max_age: _,
        passthrough: _,
        upstream: _,
        context_root: _,
        context_root_rewrite: _,
        redirects: _,
        sticky_session_cookie: _,
        ip_hash: _,
        balance: _,
        default_backend: _,
        max_body_size: _,
        connect_timeout: _,
        upstream_timeout: _,
        health: _,
        max_requests: _,
        max_ejected_percent: _,
        service_cluster: _,
    } = s;
    let ProxySettings {
        http_listen: _,
        proxy_id: _,
        hide_info_headers: _,
        access_log: _,
        access_log_format: _,
        connect_timeout: _,
        upstream_timeout: _,
        client_header_timeout: _,
        shutdown_grace: _,
        drain_delay: _,
        health_uri: _,
        tunnel_idle_timeout: _,
        client_body_timeout: _,
        client_send_timeout: _,
        max_client_connections: _,
        max_connections_per_upstream: _,
        idle_connections_per_upstream: _,
        max_header_bytes: _,
        https_listen: _,
        default_tls: _,
        https_redirect_port: _,
        max_body_size: _,
        trusted_proxies: _,
        http_proxy_protocol: _,
        https_proxy_protocol: _,
        outlier_consecutive_failures: _,
        outlier_base_ejection_time: _,
        outlier_max_ejection_time: _,
        max_ejected_percent: _,
        retry_budget_percent: _,
        retry_budget_min_per_second: _,
        hedge_delay: _,
        probe_interval: _,
        health_concurrency: _,
        tls_profile: _,
        client_body_min_rate: _,
        client_body_grace: _,
        max_bodies_per_client: _,
    } = p;
    let AdminSettings {
        listen: _,
        token: _,
        config_history: _,
    } = a;
    let DockerSettings {
        endpoint: _,
        poll_interval: _,
        tls_ca: _,
        tls_cert: _,
        tls_key: _,
        damping_changes: _,
        damping_window: _,
        damping_interval: _,
        attach_networks: _,
        exposed_by_default: _,
        constraints: _,
        allow_shared_hosts: _,
    } = d;
    let ControllerSettings {
        listen: _,
        state_dir: _,
        server_names: _,
        proxy_networks: _,
    } = c;
}

/// The fields of `fields` whose shown values differ, each named `prefix` + key.
fn compare<T>(prefix: &str, fields: &[Field<T>], old: &T, new: &T) -> Vec<Change> {
    fields
        .iter()
        .filter_map(|(name, show)| {
            let (o, n) = (show(old), show(new));
            (o != n).then(|| Change {
                field: format!("{prefix}{name}"),
                old: o,
                new: n,
            })
        })
        .collect()
}

/// A settings table that may be absent: absent on one side is "off" → "on"
/// (or back); present on both, compared field by field.
fn compare_table<T>(
    table: &str,
    fields: &[Field<T>],
    old: Option<&T>,
    new: Option<&T>,
) -> Vec<Change> {
    let on_off = |present: bool| if present { "on" } else { "off" }.to_owned();
    match (old, new) {
        (Some(o), Some(n)) => compare(&format!("{table}."), fields, o, n),
        (None, None) => Vec::new(),
        (o, n) => vec![Change {
            field: format!("[{table}]"),
            old: on_off(o.is_some()),
            new: on_off(n.is_some()),
        }],
    }
}

fn diff_admin(old: Option<&AdminSettings>, new: Option<&AdminSettings>) -> Vec<Change> {
    let mut changes = compare_table("admin", ADMIN_FIELDS, old, new);
    if let (Some(Some(o)), Some(Some(n))) = (old.map(|a| &a.token), new.map(|a| &a.token)) {
        if o != n {
            changes.push(Change {
                field: "admin.token".into(),
                old: "(set)".into(),
                new: "(a different token)".into(),
            });
        }
    }
    changes
}

/// Added and removed, each sorted; `T`'s order decides.
fn added_removed<T: Ord + Clone>(old: &BTreeSet<T>, new: &BTreeSet<T>) -> (Vec<T>, Vec<T>) {
    (
        new.difference(old).cloned().collect(),
        old.difference(new).cloned().collect(),
    )
}

fn diff_service(old: &Service, new: &Service) -> ServiceDiff {
    let o: BTreeSet<SocketAddr> = old.upstreams.iter().copied().collect();
    let n: BTreeSet<SocketAddr> = new.upstreams.iter().copied().collect();
    let (upstreams_added, upstreams_removed) = added_removed(&o, &n);
    let mut changes = compare("", SERVICE_FIELDS, old, new);
    if o == n && old.upstreams != new.upstreams {
        // Same replicas, another round-robin order: still a new version.
        changes.insert(
            0,
            Change {
                field: "upstreams".into(),
                old: list(&old.upstreams),
                new: list(&new.upstreams),
            },
        );
    }
    ServiceDiff {
        name: new.name.clone(),
        upstreams_added,
        upstreams_removed,
        changes,
    }
}

impl ServiceDiff {
    pub fn is_empty(&self) -> bool {
        self.upstreams_added.is_empty()
            && self.upstreams_removed.is_empty()
            && self.changes.is_empty()
    }

    /// What changed, in a few words: `upstreams, context_root`.
    fn fields(&self) -> String {
        let mut names: Vec<&str> = Vec::new();
        if !self.upstreams_added.is_empty() || !self.upstreams_removed.is_empty() {
            names.push("upstreams");
        }
        names.extend(self.changes.iter().map(|c| c.field.as_str()));
        names.join(", ")
    }
}

impl ConfigDiff {
    /// What changed from `old` to `new`.
    pub fn between(old: &Config, new: &Config) -> ConfigDiff {
        let old_services: BTreeMap<&str, &Service> =
            old.services.iter().map(|s| (s.name.as_str(), s)).collect();
        let new_services: BTreeMap<&str, &Service> =
            new.services.iter().map(|s| (s.name.as_str(), s)).collect();
        let old_names: BTreeSet<&str> = old_services.keys().copied().collect();
        let new_names: BTreeSet<&str> = new_services.keys().copied().collect();
        let (added, removed) = added_removed(&old_names, &new_names);
        let services_changed = new_services
            .iter()
            .filter_map(|(name, n)| {
                let o = old_services.get(name)?;
                // Most services of a reload are untouched: skip the
                // field-by-field rendering for them.
                if o == n {
                    return None;
                }
                let d = diff_service(o, n);
                (!d.is_empty()).then_some(d)
            })
            .collect();
        let hosts =
            |c: &Config| -> BTreeSet<String> { c.services.iter().flat_map(hosts_of).collect() };
        let upstreams = |c: &Config| -> BTreeSet<SocketAddr> {
            c.services
                .iter()
                .flat_map(|s| s.upstreams.iter().copied())
                .collect()
        };
        let (hosts_added, hosts_removed) = added_removed(&hosts(old), &hosts(new));
        let (upstreams_added, upstreams_removed) = added_removed(&upstreams(old), &upstreams(new));
        let mut settings = compare("proxy.", PROXY_FIELDS, &old.proxy, &new.proxy);
        settings.extend(diff_admin(old.admin.as_ref(), new.admin.as_ref()));
        settings.extend(compare_table(
            "docker",
            DOCKER_FIELDS,
            old.docker.as_ref(),
            new.docker.as_ref(),
        ));
        settings.extend(compare_table(
            "controller",
            CONTROLLER_FIELDS,
            old.controller.as_ref(),
            new.controller.as_ref(),
        ));
        let files_changed = new
            .files
            .iter()
            .filter(|(path, data)| old.files.get(*path).is_some_and(|o| o != *data))
            .map(|(path, _)| path.clone())
            .collect();
        ConfigDiff {
            services_added: added.into_iter().map(str::to_owned).collect(),
            services_removed: removed.into_iter().map(str::to_owned).collect(),
            services_changed,
            hosts_added,
            hosts_removed,
            upstreams_added,
            upstreams_removed,
            settings,
            files_changed,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == ConfigDiff::default()
    }

    /// One line for a list of versions: `service api added; service web
    /// changed (upstreams); +1 host; +2 -1 upstreams; proxy.connect_timeout`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        fn as_strs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let named = |what: &str, names: &[&str], verb: &str| -> String {
            let shown = names.iter().take(3).copied().collect::<Vec<_>>().join(", ");
            let more = names.len().saturating_sub(3);
            let plural = if names.len() == 1 { "" } else { "s" };
            if more > 0 {
                format!("{what}{plural} {shown} and {more} more {verb}")
            } else {
                format!("{what}{plural} {shown} {verb}")
            }
        };
        if !self.services_added.is_empty() {
            parts.push(named("service", &as_strs(&self.services_added), "added"));
        }
        if !self.services_removed.is_empty() {
            parts.push(named(
                "service",
                &as_strs(&self.services_removed),
                "removed",
            ));
        }
        match self.services_changed.as_slice() {
            [] => {}
            [one] => parts.push(format!("service {} changed ({})", one.name, one.fields())),
            many => {
                let names: Vec<&str> = many.iter().map(|s| s.name.as_str()).collect();
                parts.push(named("service", &names, "changed"));
            }
        }
        let counts = |what: &str, added: usize, removed: usize| -> Option<String> {
            let plural = if added + removed == 1 { "" } else { "s" };
            match (added, removed) {
                (0, 0) => None,
                (a, 0) => Some(format!("+{a} {what}{plural}")),
                (0, r) => Some(format!("-{r} {what}{plural}")),
                (a, r) => Some(format!("+{a} -{r} {what}s")),
            }
        };
        parts.extend(counts(
            "host",
            self.hosts_added.len(),
            self.hosts_removed.len(),
        ));
        parts.extend(counts(
            "upstream",
            self.upstreams_added.len(),
            self.upstreams_removed.len(),
        ));
        if !self.settings.is_empty() {
            let fields: Vec<&str> = self.settings.iter().map(|c| c.field.as_str()).collect();
            parts.push(named("setting", &fields, "changed"));
        }
        if !self.files_changed.is_empty() {
            parts.push(named("file", &as_strs(&self.files_changed), "changed"));
        }
        if parts.is_empty() {
            "no change".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

fn write_list<T: fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    indent: &str,
    label: &str,
    items: &[T],
) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    writeln!(f, "{indent}{label} {}", items.join(", "))
}

fn write_change(f: &mut fmt::Formatter<'_>, indent: &str, c: &Change) -> fmt::Result {
    writeln!(f, "{indent}{}: {} → {}", c.field, c.old, c.new)
}

/// For a person: one line per change, services first, each changed
/// service with its fields indented beneath it; `no change` when empty.
impl fmt::Display for ConfigDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "no change");
        }
        write_list(f, "", "services added:", &self.services_added)?;
        write_list(f, "", "services removed:", &self.services_removed)?;
        for s in &self.services_changed {
            writeln!(f, "service {}:", s.name)?;
            write_list(f, "  ", "upstreams added:", &s.upstreams_added)?;
            write_list(f, "  ", "upstreams removed:", &s.upstreams_removed)?;
            for c in &s.changes {
                write_change(f, "  ", c)?;
            }
        }
        write_list(f, "", "hosts added:", &self.hosts_added)?;
        write_list(f, "", "hosts removed:", &self.hosts_removed)?;
        write_list(f, "", "upstreams added:", &self.upstreams_added)?;
        write_list(f, "", "upstreams removed:", &self.upstreams_removed)?;
        for c in &self.settings {
            write_change(f, "", c)?;
        }
        write_list(f, "", "file contents changed:", &self.files_changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, "t.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    const BASE: &str = "[proxy]\nconnect_timeout = \"5s\"\n\
        [[service]]\nname = \"web\"\nhosts = [\"web.test\", \"www.test\"]\nupstreams = [\"10.0.0.1:80\", \"10.0.0.2:80\"]\n\
        [[service]]\nname = \"old\"\nhosts = [\"old.test\"]\nupstreams = [\"10.0.0.9:80\"]\n";

    #[test]
    fn the_same_config_has_no_diff() {
        let d = ConfigDiff::between(&parse(BASE), &parse(BASE));
        assert!(d.is_empty());
        assert_eq!(d.summary(), "no change");
        assert_eq!(d.to_string(), "no change\n");
    }

    #[test]
    fn services_hosts_upstreams_and_settings_are_each_reported() {
        let new = "[proxy]\nconnect_timeout = \"2s\"\n\
            [[service]]\nname = \"web\"\nhosts = [\"www.test\", \"web.test\"]\nupstreams = [\"10.0.0.2:80\", \"10.0.0.3:80\"]\n\
            context_root = \"/app\"\nsticky_session_cookie = \"sid\"\n\
            [[service]]\nname = \"api\"\nhosts = [\"api.test\"]\nupstreams = [\"10.0.0.9:80\"]\n";
        let d = ConfigDiff::between(&parse(BASE), &parse(new));
        assert_eq!(d.services_added, ["api"]);
        assert_eq!(d.services_removed, ["old"]);
        assert_eq!(d.hosts_added, ["api.test"]);
        assert_eq!(d.hosts_removed, ["old.test"]);
        // 10.0.0.9 moved from old to api: neither added nor removed overall.
        assert_eq!(
            d.upstreams_added,
            ["10.0.0.3:80".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            d.upstreams_removed,
            ["10.0.0.1:80".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(d.services_changed.len(), 1);
        let web = &d.services_changed[0];
        assert_eq!(web.name, "web");
        assert_eq!(
            web.upstreams_added,
            ["10.0.0.3:80".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            web.upstreams_removed,
            ["10.0.0.1:80".parse::<SocketAddr>().unwrap()]
        );
        // Host order is no change; the other two fields are.
        let fields: Vec<&str> = web.changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["context_root", "sticky_session_cookie"]);
        assert_eq!(web.changes[0].old, "/");
        assert_eq!(web.changes[0].new, "/app");
        assert_eq!(web.changes[1].old, "(unset)");
        assert_eq!(
            d.settings,
            [Change {
                field: "proxy.connect_timeout".into(),
                old: "5s".into(),
                new: "2s".into()
            }]
        );
        assert_eq!(
            d.summary(),
            "service api added; service old removed; service web changed (upstreams, context_root, sticky_session_cookie); \
             +1 -1 hosts; +1 -1 upstreams; setting proxy.connect_timeout changed"
        );
        let text = d.to_string();
        for line in [
            "services added: api\n",
            "services removed: old\n",
            "service web:\n  upstreams added: 10.0.0.3:80\n  upstreams removed: 10.0.0.1:80\n  context_root: / → /app\n  sticky_session_cookie: (unset) → sid\n",
            "hosts added: api.test\n",
            "hosts removed: old.test\n",
            "proxy.connect_timeout: 5s → 2s\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }

    #[test]
    fn every_service_field_is_compared_by_its_key() {
        let a = parse(
            "[[service]]\nname = \"s\"\nhosts = [\"a.test\"]\nupstreams = [\"10.0.0.1:80\"]\n",
        );
        let b = parse(
            "[proxy]\nhttps_listen = \"127.0.0.1:8443\"\n[[service]]\nname = \"s\"\nhosts = [\"b.test\"]\nupstreams = [\"10.0.0.1:80\"]\n\
             tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_ocsp = \"o.der\"\nssl_only = true\nhsts_max_age = \"1d\"\n\
             upstream_tls = true\nupstream_tls_verify = \"none\"\nupstream_tls_ca = \"ca.pem\"\nupstream_tls_name = \"in.test\"\n\
             upstream_protocol = \"h2\"\ncontext_root = \"/x\"\ncontext_root_rewrite = true\n\
             redirects = [{ from = \"http://b.test\", to = \"https://c.test\" }]\nsticky_session_cookie = \"sid\"\nip_hash = true\n\
             balance = \"least_request\"\ndefault_backend = true\nmax_body_size = \"1MiB\"\nconnect_timeout = \"1s\"\n\
             upstream_timeout = \"2s\"\nhealth_path = \"/h\"\nhealth_interval = \"3s\"\nhealth_timeout = \"1s\"\n\
             health_healthy = 4\nhealth_unhealthy = 5\nhealth_status = \"200,204\"\nhealth_host = \"h.test\"\n\
             max_requests = 9\nmax_ejected_percent = 10\nservice_cluster = \"edge\"\n",
        );
        let d = ConfigDiff::between(&a, &b);
        let fields: Vec<&str> = d.services_changed[0]
            .changes
            .iter()
            .map(|c| c.field.as_str())
            .collect();
        // All but passthrough, which excludes most of the others.
        let keys: Vec<&str> = SERVICE_FIELDS
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| *k != "passthrough")
            .collect();
        assert_eq!(fields, keys, "every field differs, so every key is listed");
        let relayed = parse(
            "[proxy]\nhttps_listen = \"127.0.0.1:8443\"\n[[service]]\nname = \"s\"\nhosts = [\"a.test\"]\nupstreams = [\"10.0.0.1:80\"]\npassthrough = true\n",
        );
        let p = ConfigDiff::between(&a, &relayed);
        assert_eq!(p.services_changed[0].changes[0].field, "passthrough");
        let shown: BTreeMap<&str, &str> = d.services_changed[0]
            .changes
            .iter()
            .map(|c| (c.field.as_str(), c.new.as_str()))
            .collect();
        assert_eq!(shown["max_body_size"], "1MiB");
        assert_eq!(shown["hsts_max_age"], "1day");
        assert_eq!(shown["health_status"], "200,204");
        assert_eq!(shown["redirects"], "[http://b.test → https://c.test]");
        assert_eq!(shown["upstream_tls_verify"], "none");
    }

    #[test]
    fn round_robin_order_tables_and_files() {
        let a = parse(
            "[admin]\nlisten = \"127.0.0.1:9090\"\ntoken = \"0123456789abcdef\"\n\
             [[service]]\nname = \"s\"\nhosts = [\"a.test\"]\nupstreams = [\"10.0.0.1:80\", \"10.0.0.2:80\"]\n",
        );
        let mut b = parse(
            "[admin]\nlisten = \"127.0.0.1:9090\"\ntoken = \"fedcba9876543210\"\nconfig_history = 5\n[docker]\n\
             [[service]]\nname = \"s\"\nhosts = [\"a.test\"]\nupstreams = [\"10.0.0.2:80\", \"10.0.0.1:80\"]\n",
        );
        let mut a = a;
        a.files.insert("c.pem".into(), Ok(b"one".to_vec().into()));
        b.files.insert("c.pem".into(), Ok(b"two".to_vec().into()));
        let d = ConfigDiff::between(&a, &b);
        assert_eq!(d.services_changed[0].changes[0].field, "upstreams");
        assert_eq!(
            d.services_changed[0].changes[0].new,
            "[10.0.0.2:80, 10.0.0.1:80]"
        );
        assert!(d.upstreams_added.is_empty() && d.upstreams_removed.is_empty());
        let settings: Vec<(&str, &str, &str)> = d
            .settings
            .iter()
            .map(|c| (c.field.as_str(), c.old.as_str(), c.new.as_str()))
            .collect();
        assert_eq!(
            settings,
            [
                ("admin.config_history", "20", "5"),
                ("admin.token", "(set)", "(a different token)"),
                ("[docker]", "off", "on"),
            ]
        );
        let text = d.to_string();
        assert!(
            !text.contains("0123456789abcdef") && !text.contains("fedcba9876543210"),
            "{text}"
        );
        assert_eq!(d.files_changed, ["c.pem"]);
        assert!(text.contains("file contents changed: c.pem\n"), "{text}");
    }

    #[test]
    fn summaries_stay_one_short_line() {
        let many: String = (0..6)
            .map(|i| format!("[[service]]\nname = \"s{i}\"\nhosts = [\"s{i}.test\"]\n"))
            .collect();
        let d = ConfigDiff::between(&parse(""), &parse(&many));
        assert_eq!(
            d.summary(),
            "services s0, s1, s2 and 3 more added; +6 hosts"
        );
        assert!(!d.summary().contains('\n'));
    }

    #[test]
    fn serialises_and_reads_back() {
        let d = ConfigDiff::between(
            &parse(BASE),
            &parse("[[service]]\nname = \"web\"\nhosts = [\"web.test\"]\nupstreams = [\"10.0.0.1:80\"]\n"),
        );
        let text = toml::to_string(&d).expect("a diff serialises");
        let back: ConfigDiff = toml::from_str(&text).expect("and reads back");
        assert_eq!(back, d);
    }
}
