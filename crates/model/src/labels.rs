//! Interlock's `com.docker.lb.*` labels, translated into the same
//! [`Service`] the file provider fills. The Docker provider describes each
//! labelled Swarm service or container as a [`Workload`] (its labels, its
//! networks, the addresses of its running tasks); this module decides what
//! that means for routing, and reports every problem as a [`Finding`] naming
//! the workload, the label and the reason. A workload with an error is
//! skipped; warnings keep it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::config::{Service, TlsFiles, UpstreamOptions, UpstreamTls};
use crate::host::HostPattern;

pub const PREFIX: &str = "com.docker.lb.";

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
];

/// Interlock labels Portico knows but does not implement yet: reported, never
/// silently ignored.
const NOT_YET: &[&str] = &[
    "context_root",
    "context_root_rewrite",
    "sticky_session_cookie",
    "ip_hash",
    "redirects",
    "default_backend",
    "service_cluster",
];

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

/// Whether a workload carries any `com.docker.lb.*` label, and so concerns us.
pub fn is_labelled(labels: &BTreeMap<String, String>) -> bool {
    labels.keys().any(|k| k.starts_with(PREFIX))
}

pub fn translate(w: &Workload) -> Translation {
    let mut t = Translation::default();
    let error = |t: &mut Translation, key: &str, message: String| {
        t.findings.push(Finding {
            workload: w.name.clone(),
            label: if key.is_empty() {
                String::new()
            } else {
                format!("{PREFIX}{key}")
            },
            severity: Severity::Error,
            message,
        });
    };
    let mut ours: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in &w.labels {
        let Some(key) = k.strip_prefix(PREFIX) else {
            continue;
        };
        if SUPPORTED.contains(&key) {
            ours.insert(key, v.trim());
        } else if NOT_YET.contains(&key) {
            t.findings.push(Finding {
                workload: w.name.clone(),
                label: k.clone(),
                severity: Severity::Warning,
                message: "not implemented by Portico yet; the label is ignored".into(),
            });
        } else {
            let hint = nearest(key)
                .map(|s| format!(" (did you mean {PREFIX}{s}?)"))
                .unwrap_or_default();
            error(&mut t, key, format!("unknown label{hint}"));
        }
    }

    let hosts: Vec<HostPattern> = match ours.get("hosts") {
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
                    label: format!("{PREFIX}{key}"),
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
    t.service = Some(Service {
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
        ..Service::default()
    });
    t
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// The known label nearest to a misspelt one, if it is close.
fn nearest(key: &str) -> Option<&'static str> {
    SUPPORTED
        .iter()
        .chain(NOT_YET)
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
    fn unimplemented_labels_are_warned_about_and_the_service_kept() {
        let t = translate(&workload(&[
            ("hosts", "a.test"),
            ("port", "80"),
            ("sticky_session_cookie", "sid"),
            ("context_root", "/app"),
        ]));
        assert!(t.service.is_some());
        let got = messages(&t);
        assert!(got.contains(&"warning demo_foo com.docker.lb.context_root: not implemented by Portico yet; the label is ignored".to_string()), "{got:?}");
        assert_eq!(got.len(), 2);
    }
}
