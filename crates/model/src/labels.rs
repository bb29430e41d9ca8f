//! Interlock's `com.docker.lb.*` labels, translated into the same
//! [`Service`] the file provider fills. The Docker provider describes each
//! labelled Swarm service or container as a [`Workload`] (its labels, its
//! networks, the addresses of its running tasks); this module decides what
//! that means for routing, and reports every problem as a [`Finding`] naming
//! the workload, the label and the reason. A workload with an error is
//! skipped; warnings keep it.
//!
//! Settings Interlock has no label for are Portico's own `portico.*`
//! labels (`portico.balance`, ...); a workload still needs a
//! `com.docker.lb.*` label to be routed at all. Values are read, and
//! services judged, by the [`rules`](crate::rules) the file provider
//! uses too. Which workloads are routed at all is decided by their
//! [`ENABLE`] label and by a [`Constraint`] over their labels (`[docker]
//! exposed_by_default` and `constraints`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::config::{Balance, Service, TlsFiles, UpstreamOptions, UpstreamTls};
use crate::host::HostPattern;
use crate::rules;

pub const PREFIX: &str = "com.docker.lb.";
/// Prefix of Portico's own labels, for settings Interlock has none for.
pub const PORTICO_PREFIX: &str = "portico.";

/// Labels Portico implements.
const SUPPORTED: &[&str] = &[
    "hosts",
    "port",
    "network",
    "ssl_cert",
    "ssl_key",
    "ssl_only",
    "ssl_backend",
    "ssl_backend_tls_verify",
    "ssl_passthrough",
    "backend_mode",
    // Every route upgrades to websockets when a client asks, so the paths
    // Interlock needed listed are served as they are.
    "websocket_endpoints",
    "context_root",
    "context_root_rewrite",
    "redirects",
    "sticky_session_cookie",
    "ip_hash",
    "default_backend",
    "service_cluster",
];

/// Portico's own labels, after [`PORTICO_PREFIX`]: a setting's TOML key,
/// with `health_` written `health.` (see [`portico_key`]).
const PORTICO: &[&str] = &[
    "balance",
    "max_body_size",
    "connect_timeout",
    "upstream_timeout",
    "max_requests",
    "max_ejected_percent",
    "health.path",
    "health.interval",
    "health.timeout",
    "health.healthy",
    "health.unhealthy",
    "health.status",
    "health.host",
    // Whether the workload is routed at all; see [`exposed`].
    "enable",
];

/// A Portico setting's label key: its TOML key, the health check's
/// written as a group (`health_path` is `health.path`).
fn portico_key(setting: &str) -> String {
    match setting.strip_prefix("health_") {
        Some(rest) => format!("health.{rest}"),
        None => setting.to_owned(),
    }
}

/// The full label that sets a service setting (named by its TOML key),
/// for reporting rule findings such as a
/// [`Disagreement`](crate::rules::Disagreement); `None` for settings no
/// label sets (`hsts_max_age`).
pub fn label_for(setting: &str) -> Option<String> {
    let key = match setting {
        "passthrough" => "ssl_passthrough",
        "tls_cert" => "ssl_cert",
        "hsts_max_age" => return None,
        s if PORTICO.contains(&portico_key(s).as_str()) => {
            return Some(format!("{PORTICO_PREFIX}{}", portico_key(s)))
        }
        s => s,
    };
    Some(format!("{PREFIX}{key}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// A Swarm service: upstreams are its running tasks (or its VIP).
    Service,
    /// A plain container.
    Container,
}

/// A labelled Swarm service or container, reduced to what routing needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Names of the networks it is attached to.
    pub networks: Vec<String>,
    /// Addresses of its running (and, with a health check, healthy) tasks
    /// or its container, per network name.
    pub addresses: BTreeMap<String, Vec<IpAddr>>,
    /// The service's virtual IP per network name.
    pub vips: BTreeMap<String, IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One problem with a workload's labels or placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub workload: String,
    /// The full label name, or empty when the problem is not one label's.
    pub label: String,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.severity, self.workload)?;
        if !self.label.is_empty() {
            write!(f, " {}", self.label)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What a workload's labels amount to.
#[derive(Clone, Debug, Default)]
pub struct Translation {
    /// The service to route, unless an error skipped it.
    pub service: Option<Service>,
    /// The network its upstreams are addressed on.
    pub network: Option<String>,
    pub findings: Vec<Finding>,
}

/// Whether a workload carries any `com.docker.lb.*` label, and so concerns
/// us. (`portico.*` labels alone do not: they only refine a routed service.)
pub fn is_labelled(labels: &BTreeMap<String, String>) -> bool {
    labels.keys().any(|k| k.starts_with(PREFIX))
}

/// The label that opts a workload in or out of routing (Traefik's
/// `traefik.enable`): `true` routes it even when `[docker]
/// exposed_by_default = false`; `false` never routes it.
pub const ENABLE: &str = "portico.enable";

/// The label Swarm stacks put on their services (`docker stack deploy`):
/// a host's owner is a namespace, and a workload without it is in `""`.
pub const STACK_NAMESPACE: &str = "com.docker.stack.namespace";

/// Whether a labelled workload is to be routed, by its [`ENABLE`] label and
/// the provider's `exposed_by_default`; a value that is not a boolean is an
/// error naming the label (the workload is then not routed).
pub fn exposed(labels: &BTreeMap<String, String>, by_default: bool) -> Result<bool, String> {
    match labels.get(ENABLE).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(by_default),
        Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => Ok(true),
        Some(v) if matches!(v.as_str(), "false" | "0" | "no") => Ok(false),
        Some(v) => Err(format!("{v:?} is not true or false")),
    }
}

/// A workload's stack namespace: its [`STACK_NAMESPACE`] label, or `""`.
pub fn namespace(labels: &BTreeMap<String, String>) -> &str {
    labels.get(STACK_NAMESPACE).map_or("", String::as_str)
}

/// `[docker] constraints`: an expression over a workload's labels that it
/// must satisfy to be routed (Traefik's constraints), such as
/// `label("com.docker.stack.namespace") == "prod" && !has_label("canary")`.
///
/// Grammar, loosest first: `a || b`, `a && b`, `!a`, `(a)`, and the tests
/// `label("k") == "v"`, `label("k") != "v"` and `has_label("k")`. Strings
/// are in double or single quotes, with `\"`, `\'` and `\\` escapes. A
/// missing label equals no string: `label("k") != "v"` holds for a
/// workload without `k`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    /// The expression as written, for messages.
    pub text: String,
    expr: Expr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Equals {
        label: String,
        value: String,
        negated: bool,
    },
    Has(String),
}

/// Why an expression does not parse, and where: `column` counts
/// characters from 1 within the expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConstraintError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConstraintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "column {} of the expression: {}",
            self.column, self.message
        )
    }
}

impl Constraint {
    pub fn parse(text: &str) -> Result<Constraint, ConstraintError> {
        let mut p = Parser {
            chars: text.chars().collect(),
            at: 0,
        };
        p.skip_space();
        if p.at == p.chars.len() {
            return Err(p.error("the expression is empty; remove the key to route every workload"));
        }
        let expr = p.or()?;
        p.skip_space();
        if p.at < p.chars.len() {
            return Err(p.error(&format!(
                "unexpected {}: expected && or || between tests",
                p.shown()
            )));
        }
        Ok(Constraint {
            text: text.to_owned(),
            expr,
        })
    }

    /// Whether a workload with `labels` satisfies the expression.
    pub fn admits(&self, labels: &BTreeMap<String, String>) -> bool {
        fn eval(e: &Expr, labels: &BTreeMap<String, String>) -> bool {
            match e {
                Expr::Or(a, b) => eval(a, labels) || eval(b, labels),
                Expr::And(a, b) => eval(a, labels) && eval(b, labels),
                Expr::Not(a) => !eval(a, labels),
                Expr::Equals {
                    label,
                    value,
                    negated,
                } => (labels.get(label) == Some(value)) != *negated,
                Expr::Has(label) => labels.contains_key(label),
            }
        }
        eval(&self.expr, labels)
    }
}

/// A recursive-descent parser over the expression's characters (columns
/// are characters, as an editor counts them).
struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn error(&self, message: &str) -> ConstraintError {
        ConstraintError {
            column: self.at + 1,
            message: message.to_owned(),
        }
    }

    /// The next character, as a message shows it.
    fn shown(&self) -> String {
        match self.chars.get(self.at) {
            Some(c) => format!("{c:?}"),
            None => "end of expression".into(),
        }
    }

    fn skip_space(&mut self) {
        while self.chars.get(self.at).is_some_and(|c| c.is_whitespace()) {
            self.at += 1;
        }
    }

    /// Consumes `token` (after spaces) if it comes next.
    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        let n = token.chars().count();
        let next = self.chars.get(self.at..self.at + n);
        if next.is_some_and(|s| s.iter().copied().eq(token.chars())) {
            self.at += n;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str, what: &str) -> Result<(), ConstraintError> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.error(&format!("expected {what}, found {}", self.shown())))
        }
    }

    fn or(&mut self) -> Result<Expr, ConstraintError> {
        let mut left = self.and()?;
        while self.eat("||") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ConstraintError> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ConstraintError> {
        self.skip_space();
        // `!=` only ever follows a label(...), so a `!` here is a negation.
        if self.eat("!") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let inner = self.or()?;
            self.expect(")", "\")\" closing the parenthesis")?;
            return Ok(inner);
        }
        let start = self.at;
        let mut name = String::new();
        while let Some(c) = self
            .chars
            .get(self.at)
            .filter(|c| c.is_ascii_alphanumeric() || **c == '_')
        {
            name.push(*c);
            self.at += 1;
        }
        match name.as_str() {
            "label" => {
                let label = self.argument()?;
                self.skip_space();
                let negated = if self.eat("==") {
                    false
                } else if self.eat("!=") {
                    true
                } else {
                    return Err(self.error(&format!(
                        "expected == or != after label(...), found {}",
                        self.shown()
                    )));
                };
                let value = self.string()?;
                Ok(Expr::Equals {
                    label,
                    value,
                    negated,
                })
            }
            "has_label" => Ok(Expr::Has(self.argument()?)),
            "" => Err(self.error(&format!(
                "expected label(\"...\"), has_label(\"...\"), ! or (, found {}",
                self.shown()
            ))),
            other => {
                self.at = start;
                Err(self.error(&format!(
                    "unknown function {other:?}: use label(\"...\") == \"...\", label(\"...\") != \"...\" or has_label(\"...\")"
                )))
            }
        }
    }

    /// `("name")` after a function's name.
    fn argument(&mut self) -> Result<String, ConstraintError> {
        self.expect("(", "\"(\" after the function name")?;
        let name = self.string()?;
        if name.is_empty() {
            return Err(self.error("a label name is not empty"));
        }
        self.expect(")", "\")\" after the label name")?;
        Ok(name)
    }

    /// A quoted string.
    fn string(&mut self) -> Result<String, ConstraintError> {
        self.skip_space();
        let quote = match self.chars.get(self.at) {
            Some(&q @ ('"' | '\'')) => q,
            _ => {
                return Err(self.error(&format!("expected a quoted string, found {}", self.shown())))
            }
        };
        let open = self.at;
        self.at += 1;
        let mut out = String::new();
        loop {
            match self.chars.get(self.at) {
                None => {
                    self.at = open;
                    return Err(self.error("this string is never closed"));
                }
                Some('\\') => match self.chars.get(self.at + 1) {
                    Some(&c @ ('"' | '\'' | '\\')) => {
                        out.push(c);
                        self.at += 2;
                    }
                    _ => {
                        return Err(
                            self.error("unknown escape: only \\\", \\' and \\\\ are escapes")
                        )
                    }
                },
                Some(&c) if c == quote => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(&c) => {
                    out.push(c);
                    self.at += 1;
                }
            }
        }
    }
}

pub fn translate(w: &Workload) -> Translation {
    let mut t = Translation::default();
    // Keys are `com.docker.lb.` labels without the prefix, or `portico.`
    // labels in full.
    let error = |t: &mut Translation, key: &str, message: String| {
        t.findings.push(Finding {
            workload: w.name.clone(),
            label: full_label(key),
            severity: Severity::Error,
            message,
        });
    };
    let mut ours: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in &w.labels {
        if let Some(key) = k.strip_prefix(PORTICO_PREFIX) {
            if PORTICO.contains(&key) {
                ours.insert(k, v.trim());
            } else {
                let hint = nearest(key, PORTICO)
                    .map(|s| format!(" (did you mean {PORTICO_PREFIX}{s}?)"))
                    .unwrap_or_default();
                error(&mut t, k, format!("unknown label{hint}"));
            }
            continue;
        }
        let Some(key) = k.strip_prefix(PREFIX) else {
            continue;
        };
        if SUPPORTED.contains(&key) {
            ours.insert(key, v.trim());
        } else {
            let hint = nearest(key, SUPPORTED)
                .map(|s| format!(" (did you mean {PREFIX}{s}?)"))
                .unwrap_or_default();
            error(&mut t, key, format!("unknown label{hint}"));
        }
    }

    // Interlock's own default backend carries no hosts label.
    let is_default = ours
        .get("default_backend")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    let hosts: Vec<HostPattern> = match ours.get("hosts") {
        None if is_default => Vec::new(),
        None => {
            error(
                &mut t,
                "hosts",
                "missing: it lists the host names to route to this service".into(),
            );
            Vec::new()
        }
        Some(v) => {
            let mut hosts = Vec::new();
            for h in v.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                match HostPattern::parse(h) {
                    Ok(p) if !hosts.contains(&p) => hosts.push(p),
                    Ok(_) => {}
                    Err(e) => error(&mut t, "hosts", e),
                }
            }
            if hosts.is_empty() {
                error(&mut t, "hosts", "lists no host name".into());
            }
            hosts
        }
    };
    let port = match ours.get("port").map(|p| (p, p.parse::<u16>())) {
        None => {
            error(
                &mut t,
                "port",
                "missing: the port the service listens on inside its tasks".into(),
            );
            0
        }
        Some((_, Ok(p))) if p > 0 => p,
        Some((p, _)) => {
            error(&mut t, "port", format!("{p:?} is not a port (1 to 65535)"));
            0
        }
    };
    let bools = |t: &mut Translation, key: &str| -> bool {
        match ours.get(key).map(|v| v.to_ascii_lowercase()) {
            None => false,
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => true,
            Some(v) if matches!(v.as_str(), "false" | "0" | "no") => false,
            Some(v) => {
                t.findings.push(Finding {
                    workload: w.name.clone(),
                    label: full_label(key),
                    severity: Severity::Error,
                    message: format!("{v:?} is not true or false"),
                });
                false
            }
        }
    };
    let ssl_only = bools(&mut t, "ssl_only");
    let ssl_backend = bools(&mut t, "ssl_backend");
    let passthrough = bools(&mut t, "ssl_passthrough");
    let verify = match ours.get("ssl_backend_tls_verify") {
        None | Some(&"required") => true,
        Some(&"none") => false,
        Some(v) => {
            error(
                &mut t,
                "ssl_backend_tls_verify",
                format!("{v:?} is not \"none\" or \"required\""),
            );
            true
        }
    };
    if ours.contains_key("ssl_backend_tls_verify") && !ssl_backend {
        error(
            &mut t,
            "ssl_backend_tls_verify",
            "only applies with com.docker.lb.ssl_backend=true".into(),
        );
    }
    let vip = match ours.get("backend_mode") {
        None | Some(&"task") => false,
        Some(&"vip") => true,
        Some(v) => {
            error(
                &mut t,
                "backend_mode",
                format!("{v:?} is not \"task\" or \"vip\""),
            );
            false
        }
    };
    if vip && w.kind == WorkloadKind::Container {
        error(
            &mut t,
            "backend_mode",
            "\"vip\" applies to Swarm services, not containers".into(),
        );
    }
    let tls = match (ours.get("ssl_cert"), ours.get("ssl_key")) {
        (Some(c), Some(k)) => Some(TlsFiles {
            cert: (*c).to_owned(),
            key: (*k).to_owned(),
            ocsp: None,
        }),
        (Some(_), None) => {
            error(
                &mut t,
                "ssl_key",
                "missing: com.docker.lb.ssl_cert needs it".into(),
            );
            None
        }
        (None, Some(_)) => {
            error(
                &mut t,
                "ssl_cert",
                "missing: com.docker.lb.ssl_key needs it".into(),
            );
            None
        }
        (None, None) => None,
    };
    if passthrough && (tls.is_some() || ssl_backend) {
        error(
            &mut t,
            "ssl_passthrough",
            "a passthrough service does not terminate TLS: drop ssl_cert/ssl_key/ssl_backend"
                .into(),
        );
    }

    // Labels read by the rules the file provider shares; an error names
    // the label and keeps the default.
    fn read<T>(
        t: &mut Translation,
        w: &Workload,
        ours: &BTreeMap<&str, &str>,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let v = ours.get(key)?;
        parse(v)
            .map_err(|message| {
                t.findings.push(Finding {
                    workload: w.name.clone(),
                    label: full_label(key),
                    severity: Severity::Error,
                    message,
                })
            })
            .ok()
    }
    let context_root = read(&mut t, w, &ours, "context_root", rules::parse_context_root).flatten();
    let context_root_rewrite = bools(&mut t, "context_root_rewrite");
    let redirects =
        read(&mut t, w, &ours, "redirects", rules::parse_redirect_list).unwrap_or_default();
    let sticky_session_cookie = read(
        &mut t,
        w,
        &ours,
        "sticky_session_cookie",
        rules::parse_cookie_name,
    );
    let ip_hash = bools(&mut t, "ip_hash");
    let service_cluster = read(
        &mut t,
        w,
        &ours,
        "service_cluster",
        rules::parse_service_cluster,
    );
    let default_backend = bools(&mut t, "default_backend");
    let balance = read(&mut t, w, &ours, "portico.balance", rules::parse_balance)
        .unwrap_or(Balance::RoundRobin);
    let max_body_size = read(&mut t, w, &ours, "portico.max_body_size", rules::parse_size);
    let connect_timeout = read(
        &mut t,
        w,
        &ours,
        "portico.connect_timeout",
        rules::parse_timeout,
    );
    let upstream_timeout = read(
        &mut t,
        w,
        &ours,
        "portico.upstream_timeout",
        rules::parse_timeout,
    );
    let max_requests = read(&mut t, w, &ours, "portico.max_requests", |v| {
        rules::parse_number(v).and_then(rules::max_requests)
    });
    let max_ejected_percent = read(&mut t, w, &ours, "portico.max_ejected_percent", |v| {
        rules::parse_number(v).and_then(rules::percent)
    });
    let health_keys = rules::HealthKeys {
        path: ours.get("portico.health.path").copied(),
        interval: ours.get("portico.health.interval").copied(),
        timeout: ours.get("portico.health.timeout").copied(),
        healthy: read(
            &mut t,
            w,
            &ours,
            "portico.health.healthy",
            rules::parse_number,
        ),
        unhealthy: read(
            &mut t,
            w,
            &ours,
            "portico.health.unhealthy",
            rules::parse_number,
        ),
        status: ours.get("portico.health.status").copied(),
        host: ours.get("portico.health.host").copied(),
    };
    let health = rules::health_check(&health_keys).unwrap_or_else(|problems| {
        report(&mut t, w, problems);
        None
    });

    let network = match ours.get("network") {
        Some(n) if w.networks.iter().any(|x| x == n) => Some((*n).to_owned()),
        Some(n) => {
            error(
                &mut t,
                "network",
                format!(
                    "the service is not attached to network {n:?} (it is on: {})",
                    list(&w.networks)
                ),
            );
            None
        }
        None => match w.networks.as_slice() {
            [only] => Some(only.clone()),
            [] => {
                error(
                    &mut t,
                    "network",
                    "the service is on no network the proxy could reach".into(),
                );
                None
            }
            several => {
                error(
                    &mut t,
                    "network",
                    format!(
                        "missing, and the service is on several networks ({}): name the one the proxy should use",
                        list(several)
                    ),
                );
                None
            }
        },
    };
    t.network = network.clone();

    if t.findings.iter().any(|f| f.severity == Severity::Error) {
        return t;
    }
    let network = network.unwrap_or_default();
    let upstreams: Vec<SocketAddr> = if vip {
        match w.vips.get(&network) {
            Some(ip) => vec![SocketAddr::new(*ip, port)],
            None => {
                error(
                    &mut t,
                    "backend_mode",
                    format!("the service has no virtual IP on {network:?} (is its endpoint mode dnsrr?)"),
                );
                return t;
            }
        }
    } else {
        w.addresses
            .get(&network)
            .into_iter()
            .flatten()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect()
    };
    let server_name = hosts
        .iter()
        .find_map(|h| match h {
            HostPattern::Exact(n) => Some(n.clone()),
            HostPattern::Wildcard(_) => None,
        })
        .unwrap_or_else(|| w.name.clone());
    let service = Service {
        name: w.name.clone(),
        hosts,
        upstreams,
        tls,
        ssl_only,
        hsts_max_age: None,
        passthrough,
        upstream: UpstreamOptions {
            protocol: Default::default(),
            tls: ssl_backend.then_some(UpstreamTls {
                verify,
                ca: None,
                server_name,
            }),
        },
        context_root,
        context_root_rewrite,
        redirects,
        sticky_session_cookie,
        ip_hash,
        balance,
        default_backend,
        max_body_size,
        connect_timeout,
        upstream_timeout,
        health,
        max_requests,
        max_ejected_percent,
        service_cluster,
    };
    let problems = rules::service_problems(&service);
    if problems.is_empty() {
        t.service = Some(service);
    }
    report(&mut t, w, problems);
    t
}

/// Errors for problems the rules found, each naming the setting's label.
fn report(t: &mut Translation, w: &Workload, problems: Vec<rules::Problem>) {
    for p in problems {
        t.findings.push(Finding {
            workload: w.name.clone(),
            label: label_for(p.setting).unwrap_or_default(),
            severity: Severity::Error,
            message: p.message,
        });
    }
}

/// `com.docker.lb.{key}`, or a `portico.` key as it is; empty stays empty.
fn full_label(key: &str) -> String {
    if key.is_empty() || key.starts_with(PORTICO_PREFIX) {
        key.to_owned()
    } else {
        format!("{PREFIX}{key}")
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// The label among `known` nearest to a misspelt one, if it is close.
fn nearest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn constraints_parse_and_admit() {
        let prod = labels_of(&[(STACK_NAMESPACE, "prod"), ("team", "web")]);
        let dev = labels_of(&[(STACK_NAMESPACE, "dev")]);
        let bare = labels_of(&[]);
        let cases: &[(&str, [bool; 3])] = &[
            (
                r#"label("com.docker.stack.namespace") == "prod""#,
                [true, false, false],
            ),
            (
                r#"label("com.docker.stack.namespace") != "prod""#,
                [false, true, true],
            ),
            (r#"has_label("team")"#, [true, false, false]),
            (r#"!has_label("team")"#, [false, true, true]),
            (
                r#"has_label('team') || label("com.docker.stack.namespace")=="dev""#,
                [true, true, false],
            ),
            // && binds tighter than ||; parentheses override.
            (
                r#"has_label("x") && has_label("y") || has_label("team")"#,
                [true, false, false],
            ),
            (
                r#"has_label("team") && (has_label("y") || !has_label("x"))"#,
                [true, false, false],
            ),
            (r#"!!( label("team") == "web" )"#, [true, false, false]),
            (
                r#"label("team") == 'w\'eb' || label("team") == "a\"b\\c""#,
                [false, false, false],
            ),
        ];
        for (text, want) in cases {
            let c = Constraint::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let got = [c.admits(&prod), c.admits(&dev), c.admits(&bare)];
            assert_eq!(&got, want, "{text}");
        }
        let escaped = Constraint::parse(r#"label("k") == "a\"b\\c""#).unwrap();
        assert!(escaped.admits(&labels_of(&[("k", r#"a"b\c"#)])));
    }

    #[test]
    fn bad_constraints_say_where_and_why() {
        let cases = [
            ("", "column 1 of the expression: the expression is empty; remove the key to route every workload"),
            ("   ", "column 4 of the expression: the expression is empty; remove the key to route every workload"),
            (r#"label("a")"#, "column 11 of the expression: expected == or != after label(...), found end of expression"),
            (r#"label("a") = "b""#, "column 12 of the expression: expected == or != after label(...), found '='"),
            (r#"lable("a") == "b""#, r#"column 1 of the expression: unknown function "lable": use label("...") == "...", label("...") != "..." or has_label("...")"#),
            (r#"has_label(a)"#, "column 11 of the expression: expected a quoted string, found 'a'"),
            (r#"has_label("a""#, "column 14 of the expression: expected \")\" after the label name, found end of expression"),
            (r#"has_label("")"#, "column 13 of the expression: a label name is not empty"),
            (r#"has_label("a) && x"#, "column 11 of the expression: this string is never closed"),
            (r#"(has_label("a")"#, "column 16 of the expression: expected \")\" closing the parenthesis, found end of expression"),
            (r#"has_label("a") has_label("b")"#, "column 16 of the expression: unexpected 'h': expected && or || between tests"),
            (r#"has_label("a") &&"#, "column 18 of the expression: expected label(\"...\"), has_label(\"...\"), ! or (, found end of expression"),
            (r#"has_label("a") & has_label("b")"#, "column 16 of the expression: unexpected '&': expected && or || between tests"),
            (r#"label("a") == "\n""#, r#"column 16 of the expression: unknown escape: only \", \' and \\ are escapes"#),
            (r#"label("a") == b"#, "column 15 of the expression: expected a quoted string, found 'b'"),
        ];
        for (text, want) in cases {
            let got = Constraint::parse(text).map(|_| ()).unwrap_err().to_string();
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn exposure_by_label_and_default() {
        assert_eq!(exposed(&labels_of(&[]), true), Ok(true));
        assert_eq!(exposed(&labels_of(&[]), false), Ok(false));
        assert_eq!(exposed(&labels_of(&[(ENABLE, "true")]), false), Ok(true));
        assert_eq!(exposed(&labels_of(&[(ENABLE, "False")]), true), Ok(false));
        assert_eq!(
            exposed(&labels_of(&[(ENABLE, "maybe")]), true),
            Err("\"maybe\" is not true or false".into())
        );
        // A known label: translation reports nothing about it.
        let mut w = workload(&[("hosts", "a.test"), ("port", "80")]);
        w.labels.insert(ENABLE.into(), "true".into());
        assert!(translate(&w).findings.is_empty());
        assert_eq!(namespace(&labels_of(&[(STACK_NAMESPACE, "prod")])), "prod");
        assert_eq!(namespace(&labels_of(&[])), "");
    }

    fn workload(labels: &[(&str, &str)]) -> Workload {
        Workload {
            kind: WorkloadKind::Service,
            name: "demo_foo".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
                .collect(),
            networks: vec!["demo_net".into()],
            addresses: [(
                "demo_net".to_string(),
                vec!["10.0.1.5".parse().unwrap(), "10.0.1.6".parse().unwrap()],
            )]
            .into_iter()
            .collect(),
            vips: [("demo_net".to_string(), "10.0.1.2".parse().unwrap())]
                .into_iter()
                .collect(),
        }
    }

    fn messages(t: &Translation) -> Vec<String> {
        t.findings.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn tasks_on_the_only_network_at_the_port() {
        let t = translate(&workload(&[
            ("hosts", "foo.app.test, *.foo.test"),
            ("port", "8080"),
        ]));
        assert!(t.findings.is_empty(), "{:?}", messages(&t));
        let s = t.service.unwrap();
        assert_eq!(s.hosts.len(), 2);
        assert_eq!(
            s.upstreams,
            [
                "10.0.1.5:8080".parse().unwrap(),
                "10.0.1.6:8080".parse().unwrap()
            ]
        );
        assert_eq!(t.network.as_deref(), Some("demo_net"));
    }

    #[test]
    fn vip_mode_and_tls_labels_map_onto_the_model() {
        let t = translate(&workload(&[
            ("hosts", "foo.app.test"),
            ("port", "443"),
            ("backend_mode", "vip"),
            ("ssl_cert", "foo_cert"),
            ("ssl_key", "foo_key"),
            ("ssl_only", "true"),
            ("ssl_backend", "true"),
            ("ssl_backend_tls_verify", "none"),
        ]));
        assert!(t.findings.is_empty(), "{:?}", messages(&t));
        let s = t.service.unwrap();
        assert_eq!(s.upstreams, ["10.0.1.2:443".parse().unwrap()]);
        assert_eq!(s.tls.as_ref().map(|t| t.cert.as_str()), Some("foo_cert"));
        assert!(s.ssl_only);
        let up = s.upstream.tls.unwrap();
        assert!(!up.verify);
        assert_eq!(up.server_name, "foo.app.test");
        let t = translate(&workload(&[
            ("hosts", "p.test"),
            ("port", "443"),
            ("ssl_passthrough", "true"),
        ]));
        assert!(t.service.unwrap().passthrough);
    }

    #[test]
    fn every_bad_value_is_an_error_naming_the_label() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("port", "80")], "error demo_foo com.docker.lb.hosts: missing"),
            (&[("hosts", " , "), ("port", "80")], "error demo_foo com.docker.lb.hosts: lists no host name"),
            (&[("hosts", "bad host"), ("port", "80")], "error demo_foo com.docker.lb.hosts: \"bad host\": invalid character"),
            (&[("hosts", "a.test")], "error demo_foo com.docker.lb.port: missing"),
            (&[("hosts", "a.test"), ("port", "http")], "error demo_foo com.docker.lb.port: \"http\" is not a port"),
            (&[("hosts", "a.test"), ("port", "0")], "error demo_foo com.docker.lb.port: \"0\" is not a port"),
            (&[("hosts", "a.test"), ("port", "80"), ("network", "other")], "error demo_foo com.docker.lb.network: the service is not attached to network \"other\" (it is on: demo_net)"),
            (&[("hosts", "a.test"), ("port", "80"), ("ssl_only", "maybe")], "error demo_foo com.docker.lb.ssl_only: \"maybe\" is not true or false"),
            (&[("hosts", "a.test"), ("port", "80"), ("ssl_backend", "yes please")], "error demo_foo com.docker.lb.ssl_backend: \"yes please\" is not true or false"),
            (&[("hosts", "a.test"), ("port", "80"), ("ssl_passthrough", "2")], "error demo_foo com.docker.lb.ssl_passthrough: \"2\" is not true or false"),
            (&[("hosts", "a.test"), ("port", "80"), ("ssl_backend_tls_verify", "none")], "error demo_foo com.docker.lb.ssl_backend_tls_verify: only applies with com.docker.lb.ssl_backend=true"),
            (&[("hosts", "a.test"), ("port", "80"), ("ssl_backend", "true"), ("ssl_backend_tls_verify", "strict")], "error demo_foo com.docker.lb.ssl_backend_tls_verify: \"strict\" is not \"none\" or \"required\""),
            (&[("hosts", "a.test"), ("port", "80"), ("backend_mode", "dnsrr")], "error demo_foo com.docker.lb.backend_mode: \"dnsrr\" is not \"task\" or \"vip\""),
            (&[("hosts", "a.test"), ("port", "80"), ("ssl_cert", "c")], "error demo_foo com.docker.lb.ssl_key: missing"),
            (&[("hosts", "a.test"), ("port", "80"), ("ssl_key", "k")], "error demo_foo com.docker.lb.ssl_cert: missing"),
            (&[("hosts", "a.test"), ("port", "80"), ("ssl_passthrough", "true"), ("ssl_backend", "true")], "error demo_foo com.docker.lb.ssl_passthrough: a passthrough service does not terminate TLS"),
            (&[("host", "a.test"), ("port", "80")], "error demo_foo com.docker.lb.host: unknown label (did you mean com.docker.lb.hosts?)"),
            (&[("hosts", "a.test"), ("prot", "80")], "error demo_foo com.docker.lb.prot: unknown label (did you mean com.docker.lb.port?)"),
            (&[("hosts", "a.test"), ("port", "80"), ("colour", "blue")], "error demo_foo com.docker.lb.colour: unknown label"),
        ];
        for (labels, want) in cases {
            let t = translate(&workload(labels));
            assert!(t.service.is_none(), "{labels:?} should be skipped");
            let got = messages(&t);
            assert!(
                got.iter().any(|m| m.starts_with(want)),
                "{labels:?}: want {want:?}, got {got:?}"
            );
        }
    }

    #[test]
    fn networks_must_be_unambiguous_and_vip_needs_a_vip() {
        let mut w = workload(&[("hosts", "a.test"), ("port", "80")]);
        w.networks.push("other_net".into());
        let t = translate(&w);
        assert!(messages(&t)[0].starts_with("error demo_foo com.docker.lb.network: missing, and the service is on several networks (demo_net, other_net)"));
        w.labels
            .insert(format!("{PREFIX}network"), "other_net".into());
        let t = translate(&w);
        // Named network with no running task there: routed, with no upstreams.
        assert_eq!(t.service.unwrap().upstreams, []);
        w.labels
            .insert(format!("{PREFIX}backend_mode"), "vip".into());
        let t = translate(&w);
        assert!(
            messages(&t)[0].contains("has no virtual IP on \"other_net\""),
            "{:?}",
            messages(&t)
        );
        let mut c = workload(&[("hosts", "a.test"), ("port", "80"), ("backend_mode", "vip")]);
        c.kind = WorkloadKind::Container;
        assert!(messages(&translate(&c))[0].contains("applies to Swarm services, not containers"));
    }

    #[test]
    fn a_service_cluster_label_names_the_proxies_that_serve_it() {
        let t = translate(&workload(&[
            ("hosts", "a.test"),
            ("port", "80"),
            ("service_cluster", "us-east"),
        ]));
        assert!(messages(&t).is_empty(), "{:?}", messages(&t));
        assert_eq!(
            t.service.unwrap().service_cluster.as_deref(),
            Some("us-east")
        );
        let t = translate(&workload(&[("hosts", "a.test"), ("port", "80")]));
        assert_eq!(t.service.unwrap().service_cluster, None);
        let t = translate(&workload(&[
            ("hosts", "a.test"),
            ("port", "80"),
            ("service_cluster", "us east"),
        ]));
        assert!(t.service.is_none());
        assert_eq!(
            messages(&t),
            ["error demo_foo com.docker.lb.service_cluster: a service cluster name holds 1 to 63 ASCII letters, digits, '-', '_' or '.', starting with a letter or a digit; found ' ' at position 2"]
        );
    }

    fn with_portico(labels: &[(&str, &str)], own: &[(&str, &str)]) -> Workload {
        let mut w = workload(labels);
        for (k, v) in own {
            w.labels
                .insert(format!("{PORTICO_PREFIX}{k}"), v.to_string());
        }
        w
    }

    #[test]
    fn traffic_labels_map_onto_the_model() {
        let t = translate(&with_portico(
            &[
                ("hosts", "a.test,old.test"),
                ("port", "80"),
                ("context_root", "/app/"),
                ("context_root_rewrite", "true"),
                (
                    "redirects",
                    "http://old.test,https://a.test/; https://old.test,https://a.test",
                ),
                ("sticky_session_cookie", "JSESSIONID"),
                ("ip_hash", "yes"),
                ("default_backend", "1"),
            ],
            &[
                ("balance", "least_request"),
                ("max_body_size", "10MiB"),
                ("connect_timeout", "2s"),
                ("upstream_timeout", "1m"),
            ],
        ));
        assert!(t.findings.is_empty(), "{:?}", messages(&t));
        let s = t.service.unwrap();
        assert_eq!(s.context_root.as_deref(), Some("/app"));
        assert!(s.context_root_rewrite && s.ip_hash && s.default_backend);
        assert_eq!(s.redirects.len(), 2);
        assert_eq!(
            (
                s.redirects[0].from_scheme.as_str(),
                s.redirects[0].from_host.as_str(),
                s.redirects[0].to.as_str()
            ),
            ("http", "old.test", "https://a.test")
        );
        assert_eq!(s.sticky_session_cookie.as_deref(), Some("JSESSIONID"));
        assert_eq!(s.balance, Balance::LeastRequest);
        assert_eq!(s.max_body_size, Some(10 << 20));
        assert_eq!(s.connect_timeout, Some(std::time::Duration::from_secs(2)));
        assert_eq!(s.upstream_timeout, Some(std::time::Duration::from_secs(60)));
        // "/" is the whole host; no label, the defaults.
        let t = translate(&workload(&[
            ("hosts", "a.test"),
            ("port", "80"),
            ("context_root", "/"),
        ]));
        let s = t.service.unwrap();
        assert_eq!(s.context_root, None);
        assert_eq!(s.balance, Balance::RoundRobin);
        assert_eq!((s.max_body_size, s.connect_timeout), (None, None));
    }

    #[test]
    fn health_and_overload_labels_map_onto_the_model() {
        let t = translate(&with_portico(
            &[("hosts", "a.test"), ("port", "80")],
            &[
                ("health.path", "/status?full=1"),
                ("health.interval", "10s"),
                ("health.timeout", "3s"),
                ("health.healthy", "1"),
                ("health.unhealthy", " 4 "),
                ("health.status", "200,204,300-399"),
                ("health.host", "Check.Internal"),
                ("max_requests", "250"),
                ("max_ejected_percent", "100"),
            ],
        ));
        assert!(t.findings.is_empty(), "{:?}", messages(&t));
        let s = t.service.unwrap();
        assert_eq!(
            s.health,
            Some(crate::config::HealthCheck {
                path: "/status?full=1".into(),
                interval: std::time::Duration::from_secs(10),
                timeout: std::time::Duration::from_secs(3),
                healthy: 1,
                unhealthy: 4,
                status: vec![(200, 200), (204, 204), (300, 399)],
                host: Some("check.internal".into()),
            })
        );
        assert_eq!(s.max_requests, Some(250));
        assert_eq!(s.max_ejected_percent, Some(100));
        // The path alone: the defaults. No label: no check, no caps.
        let t = translate(&with_portico(
            &[("hosts", "a.test"), ("port", "80")],
            &[("health.path", "/healthz")],
        ));
        let h = t.service.unwrap().health.unwrap();
        assert_eq!(
            (
                h.interval.as_secs(),
                h.timeout.as_secs(),
                h.healthy,
                h.unhealthy
            ),
            (5, 2, 2, 3)
        );
        assert_eq!((h.status, h.host), (vec![(200, 399)], None));
        let s = translate(&workload(&[("hosts", "a.test"), ("port", "80")]))
            .service
            .unwrap();
        assert_eq!(
            (s.health, s.max_requests, s.max_ejected_percent),
            (None, None, None)
        );
    }

    #[test]
    fn bad_traffic_labels_are_errors_naming_the_label() {
        let ok: &[(&str, &str)] = &[("hosts", "a.test"), ("port", "80")];
        type Labels<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Labels, Labels, &str)] = &[
            (&[("context_root", "app")], &[], "error demo_foo com.docker.lb.context_root: \"app\" must start with '/', as in \"/app\""),
            (&[("context_root", "/a/../b")], &[], "error demo_foo com.docker.lb.context_root: \"/a/../b\" contains a \".\" or \"..\" segment"),
            (&[("context_root", "/a b")], &[], "error demo_foo com.docker.lb.context_root: \"/a b\" contains ' '"),
            (&[("context_root", "/a?b")], &[], "error demo_foo com.docker.lb.context_root: \"/a?b\" contains '?'"),
            (&[("context_root_rewrite", "true")], &[], "error demo_foo com.docker.lb.context_root_rewrite: needs a context_root (other than \"/\")"),
            (&[("context_root_rewrite", "sure")], &[], "error demo_foo com.docker.lb.context_root_rewrite: \"sure\" is not true or false"),
            (&[("redirects", "http://a.test")], &[], "error demo_foo com.docker.lb.redirects: \"http://a.test\" is not a \"from,to\" pair such as \"http://old.example.com,http://new.example.com\""),
            (&[("redirects", "http://a.test,ftp://b.test")], &[], "error demo_foo com.docker.lb.redirects: to \"ftp://b.test\" must be an absolute http:// or https:// URL"),
            (&[("redirects", "http://a.test/x,http://b.test")], &[], "error demo_foo com.docker.lb.redirects: from \"http://a.test/x\" must be a scheme and a host only"),
            (&[("redirects", "http://b.test,http://c.test")], &[], "error demo_foo com.docker.lb.redirects: from http://b.test: host b.test is not one of the service's hosts (a.test)"),
            (&[("sticky_session_cookie", "")], &[], "error demo_foo com.docker.lb.sticky_session_cookie: must not be empty"),
            (&[("sticky_session_cookie", "a;b")], &[], "error demo_foo com.docker.lb.sticky_session_cookie: \"a;b\" is not a cookie name: ';' is not allowed"),
            (&[("ip_hash", "2")], &[], "error demo_foo com.docker.lb.ip_hash: \"2\" is not true or false"),
            (&[("default_backend", "maybe")], &[], "error demo_foo com.docker.lb.default_backend: \"maybe\" is not true or false"),
            (&[("ssl_passthrough", "true"), ("default_backend", "true")], &[], "error demo_foo com.docker.lb.default_backend: does not apply to a passthrough service"),
            (&[("ssl_passthrough", "true"), ("redirects", "http://a.test,https://b.test")], &[], "error demo_foo com.docker.lb.redirects: does not apply to a passthrough service"),
            (&[], &[("balance", "random")], "error demo_foo portico.balance: \"random\" is not one of \"round_robin\", \"least_request\""),
            (&[], &[("max_body_size", "1MB")], "error demo_foo portico.max_body_size: \"1MB\" is not a size such as \"512KiB\", \"1MiB\" or \"1048576\""),
            (&[], &[("connect_timeout", "0s")], "error demo_foo portico.connect_timeout: must be greater than zero"),
            (&[], &[("upstream_timeout", "later")], "error demo_foo portico.upstream_timeout: \"later\" is not a duration such as \"5s\""),
            (&[], &[("balanse", "round_robin")], "error demo_foo portico.balanse: unknown label (did you mean portico.balance?)"),
            (&[], &[("colour", "blue")], "error demo_foo portico.colour: unknown label"),
            (&[], &[("max_requests", "0")], "error demo_foo portico.max_requests: must be at least 1"),
            (&[], &[("max_requests", "lots")], "error demo_foo portico.max_requests: \"lots\" is not a whole number"),
            (&[], &[("max_ejected_percent", "101")], "error demo_foo portico.max_ejected_percent: must be at most 100"),
            (&[], &[("max_ejected_percent", "50%")], "error demo_foo portico.max_ejected_percent: \"50%\" is not a whole number"),
            (&[], &[("health.path", "healthz")], "error demo_foo portico.health.path: \"healthz\" must start with '/', as in \"/healthz\""),
            (&[], &[("health.path", "/a#b")], "error demo_foo portico.health.path: \"/a#b\" contains '#': a fragment is never sent to a server"),
            (&[], &[("health.path", "/h"), ("health.interval", "0s")], "error demo_foo portico.health.interval: must be greater than zero"),
            (&[], &[("health.path", "/h"), ("health.timeout", "soon")], "error demo_foo portico.health.timeout: \"soon\" is not a duration such as \"5s\" or \"250ms\": expected number at 0"),
            (&[], &[("health.path", "/h"), ("health.timeout", "10s")], "error demo_foo portico.health.timeout: health_timeout \"10s\" is longer than health_interval \"5s\""),
            (&[], &[("health.path", "/h"), ("health.interval", "1s"), ("health.timeout", "2s")], "error demo_foo portico.health.timeout: health_timeout \"2s\" is longer than health_interval \"1s\""),
            (&[], &[("health.path", "/h"), ("health.healthy", "0")], "error demo_foo portico.health.healthy: must be at least 1"),
            (&[], &[("health.path", "/h"), ("health.unhealthy", "three")], "error demo_foo portico.health.unhealthy: \"three\" is not a whole number"),
            (&[], &[("health.path", "/h"), ("health.status", "200-99")], "error demo_foo portico.health.status: \"200-99\": 99 is not a status code (100 to 599)"),
            (&[], &[("health.path", "/h"), ("health.status", "2xx")], "error demo_foo portico.health.status: \"2xx\": \"2xx\" is not a status code or a range such as \"200-399\""),
            (&[], &[("health.path", "/h"), ("health.status", "300-200")], "error demo_foo portico.health.status: \"300-200\": the range 300-200 runs backwards; write it low to high"),
            (&[], &[("health.path", "/h"), ("health.host", "*.a.test")], "error demo_foo portico.health.host: \"*.a.test\": a check sends one host name, not a wildcard"),
            (&[], &[("health.interval", "1s")], "error demo_foo portico.health.interval: health_interval is set but health_path is not; no check would run"),
            (&[], &[("health.host", "a.test")], "error demo_foo portico.health.host: health_host is set but health_path is not; no check would run"),
            (&[("ssl_passthrough", "true")], &[("health.path", "/h")], "error demo_foo portico.health.path: does not apply to a passthrough service: a check is an HTTP request"),
            (&[], &[("health.pth", "/h")], "error demo_foo portico.health.pth: unknown label (did you mean portico.health.path?)"),
            (&[], &[("health_path", "/h")], "error demo_foo portico.health_path: unknown label (did you mean portico.health.path?)"),
            (&[("stiky_session_cookie", "s")], &[], "error demo_foo com.docker.lb.stiky_session_cookie: unknown label (did you mean com.docker.lb.sticky_session_cookie?)"),
            (&[("service_clustr", "x")], &[], "error demo_foo com.docker.lb.service_clustr: unknown label (did you mean com.docker.lb.service_cluster?)"),
        ];
        for (labels, own, want) in cases {
            let labels: Vec<(&str, &str)> = ok.iter().chain(labels.iter()).copied().collect();
            let t = translate(&with_portico(&labels, own));
            assert!(t.service.is_none(), "{labels:?} {own:?} should be skipped");
            let got = messages(&t);
            assert!(
                got.iter().any(|m| m.starts_with(want)),
                "{labels:?} {own:?}: want {want:?}, got {got:?}"
            );
        }
        // portico.* labels alone do not make a workload ours.
        let mut only_own = BTreeMap::new();
        only_own.insert("portico.balance".to_string(), "least_request".to_string());
        assert!(!is_labelled(&only_own));
    }

    #[test]
    fn every_setting_a_rule_names_has_a_label() {
        assert_eq!(
            label_for("passthrough").unwrap(),
            "com.docker.lb.ssl_passthrough"
        );
        assert_eq!(label_for("tls_cert").unwrap(), "com.docker.lb.ssl_cert");
        assert_eq!(label_for("balance").unwrap(), "portico.balance");
        for (setting, label) in [
            ("max_requests", "portico.max_requests"),
            ("max_ejected_percent", "portico.max_ejected_percent"),
            ("health_path", "portico.health.path"),
            ("health_interval", "portico.health.interval"),
            ("health_timeout", "portico.health.timeout"),
            ("health_healthy", "portico.health.healthy"),
            ("health_unhealthy", "portico.health.unhealthy"),
            ("health_status", "portico.health.status"),
            ("health_host", "portico.health.host"),
        ] {
            assert_eq!(label_for(setting).unwrap(), label);
        }
        assert_eq!(label_for("hsts_max_age"), None);
        for s in [
            "ssl_only",
            "context_root",
            "context_root_rewrite",
            "sticky_session_cookie",
            "ip_hash",
            "redirects",
            "default_backend",
        ] {
            assert_eq!(label_for(s).unwrap(), format!("com.docker.lb.{s}"));
            assert!(SUPPORTED.contains(&s));
        }
    }

    #[test]
    fn interlocks_default_backend_needs_no_hosts() {
        let t = translate(&workload(&[("default_backend", "true"), ("port", "8080")]));
        assert!(t.findings.is_empty(), "{:?}", messages(&t));
        let s = t.service.unwrap();
        assert!(s.default_backend && s.hosts.is_empty());
        let t = translate(&workload(&[("default_backend", "false"), ("port", "8080")]));
        assert!(messages(&t)[0].starts_with("error demo_foo com.docker.lb.hosts: missing"));
    }
}
