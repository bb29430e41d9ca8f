//! The routing table: host → route, compiled once per config version and
//! then only read. Lookups cost one hash probe for exact names plus one per
//! label for wildcards, whatever the number of hosts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{Config, TlsFiles, UpstreamOptions};
use crate::host::HostPattern;

/// Index of a [`Route`] in its table.
pub type RouteId = usize;

/// What a host resolves to: one pool, made of every service that lists the
/// host (Interlock's canary semantics: two services on one host share it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Names of the services pooled here, in config order.
    pub services: Vec<String>,
    /// Their upstreams, deduplicated, in config order.
    pub upstreams: Vec<SocketAddr>,
    /// How to talk to each of `upstreams` (same index): from the service
    /// that lists it first.
    pub upstream_options: Vec<UpstreamOptions>,
    /// The host patterns that lead here.
    pub hosts: Vec<HostPattern>,
    /// The certificate for these hosts, from the first service that has one.
    pub tls: Option<TlsFiles>,
    pub ssl_only: bool,
    pub hsts_max_age: Option<Duration>,
    pub passthrough: bool,
}

impl Route {
    /// `simple_foo` or `simple_foo+canary_foo`, for logs and error bodies.
    pub fn label(&self) -> String {
        self.services.join("+")
    }
}

#[derive(Clone, Debug, Default)]
pub struct RoutingTable {
    exact: HashMap<Box<str>, RouteId>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, RouteId>,
    routes: Vec<Route>,
}

impl RoutingTable {
    pub fn build(config: &Config) -> RoutingTable {
        // Which services claim each host, in config order.
        let mut claims: Vec<(&HostPattern, Vec<usize>)> = Vec::new();
        let mut claim_index: HashMap<&HostPattern, usize> = HashMap::new();
        for (si, svc) in config.services.iter().enumerate() {
            for host in &svc.hosts {
                let slot = *claim_index.entry(host).or_insert_with(|| {
                    claims.push((host, Vec::new()));
                    claims.len() - 1
                });
                claims[slot].1.push(si);
            }
        }
        let mut table = RoutingTable::default();
        let mut route_of: HashMap<Vec<usize>, RouteId> = HashMap::new();
        for (host, services) in claims {
            let id = *route_of.entry(services.clone()).or_insert_with(|| {
                let mut upstreams = Vec::new();
                let mut upstream_options = Vec::new();
                for &si in &services {
                    let svc = &config.services[si];
                    for u in &svc.upstreams {
                        if !upstreams.contains(u) {
                            upstreams.push(*u);
                            upstream_options.push(svc.upstream.clone());
                        }
                    }
                }
                // Validation makes services on one host agree on these.
                let first = &config.services[services[0]];
                table.routes.push(Route {
                    services: services
                        .iter()
                        .map(|&si| config.services[si].name.clone())
                        .collect(),
                    upstreams,
                    upstream_options,
                    hosts: Vec::new(),
                    tls: services
                        .iter()
                        .find_map(|&si| config.services[si].tls.clone()),
                    ssl_only: first.ssl_only,
                    hsts_max_age: first.hsts_max_age,
                    passthrough: first.passthrough,
                });
                table.routes.len() - 1
            });
            table.routes[id].hosts.push(host.clone());
            match host {
                HostPattern::Exact(name) => table.exact.insert(name.as_str().into(), id),
                HostPattern::Wildcard(suffix) => table.wildcard.insert(suffix.as_str().into(), id),
            };
        }
        table
    }

    /// Finds the route for a normalised host (see
    /// [`normalize_request_host`](crate::host::normalize_request_host)):
    /// the exact name first, then the most specific wildcard.
    pub fn lookup(&self, host: &str) -> Option<RouteId> {
        if let Some(id) = self.exact.get(host) {
            return Some(*id);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(id) = self.wildcard.get(rest) {
                return Some(*id);
            }
        }
        None
    }

    pub fn route(&self, id: RouteId) -> &Route {
        &self.routes[id]
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Hosts claimed by more than one service, with those services' names.
    pub fn shared_hosts(&self) -> impl Iterator<Item = (&HostPattern, &[String])> {
        self.routes
            .iter()
            .filter(|r| r.services.len() > 1)
            .flat_map(|r| r.hosts.iter().map(move |h| (h, r.services.as_slice())))
    }

    /// Configured host names, for suggesting the nearest one to a missing host.
    pub fn hosts(&self) -> impl Iterator<Item = &HostPattern> {
        self.routes.iter().flat_map(|r| r.hosts.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> RoutingTable {
        RoutingTable::build(&Config::parse(text, "t").unwrap())
    }

    #[test]
    fn exact_before_wildcard_and_most_specific_wildcard_wins() {
        let t = table(
            r#"
[[service]]
name = "wild"
hosts = ["*.example.com"]
upstreams = ["127.0.0.1:1"]
[[service]]
name = "deep"
hosts = ["*.api.example.com"]
upstreams = ["127.0.0.1:2"]
[[service]]
name = "exact"
hosts = ["www.api.example.com"]
upstreams = ["127.0.0.1:3"]
"#,
        );
        let svc = |h: &str| t.lookup(h).map(|id| t.route(id).label());
        assert_eq!(svc("www.api.example.com").as_deref(), Some("exact"));
        assert_eq!(svc("x.api.example.com").as_deref(), Some("deep"));
        assert_eq!(svc("a.b.api.example.com").as_deref(), Some("deep"));
        assert_eq!(svc("api.example.com").as_deref(), Some("wild"));
        assert_eq!(svc("example.com"), None);
        assert_eq!(svc("other.test"), None);
    }

    #[test]
    fn services_sharing_a_host_share_one_pool() {
        let t = table(
            r#"
[[service]]
name = "foo"
hosts = ["foo.test", "only-foo.test"]
upstreams = ["127.0.0.1:1", "127.0.0.1:2"]
[[service]]
name = "foo_canary"
hosts = ["foo.test"]
upstreams = ["127.0.0.1:2", "127.0.0.1:3"]
"#,
        );
        let shared = t.route(t.lookup("foo.test").unwrap());
        assert_eq!(shared.services, ["foo", "foo_canary"]);
        assert_eq!(shared.upstreams.len(), 3);
        let only = t.route(t.lookup("only-foo.test").unwrap());
        assert_eq!(only.services, ["foo"]);
        assert_eq!(only.upstreams.len(), 2);
        let shared: Vec<_> = t
            .shared_hosts()
            .map(|(h, s)| (h.to_string(), s.len()))
            .collect();
        assert_eq!(shared, [("foo.test".to_string(), 2)]);
    }
}
