//! The routing table: host → site → path rule → route, compiled once per
//! config version and then only read. Host lookups cost one hash probe for
//! exact names plus one per label for wildcards, whatever the number of
//! hosts; a path is then matched against the site's few prefixes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{Balance, Config, HealthCheck, Redirect, TlsFiles, UpstreamOptions};
use crate::host::HostPattern;

/// Index of a [`Route`] in its table.
pub type RouteId = usize;
/// Index of a [`Site`] in its table.
pub type SiteId = usize;

/// Every host claimed by the same set of services: what a TLS handshake and
/// a `Host` header resolve to before the path is looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// Names of the services claiming these hosts, in config order.
    pub services: Vec<String>,
    pub hosts: Vec<HostPattern>,
    /// The certificate for these hosts, from the first service that has one.
    pub tls: Option<TlsFiles>,
    pub passthrough: bool,
    /// Interlock's `redirects` of the site's services: they apply to every
    /// path of the host (a `return 302` in its nginx server block).
    pub redirects: Vec<Redirect>,
    /// The site's path rules, longest prefix first; the catch-all (no
    /// prefix), if any, last.
    pub rules: Vec<RouteId>,
}

/// What a host and path resolve to: one pool, made of every service that
/// lists the host at that path (Interlock's canary semantics: two services
/// on one host and path share it).
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
    /// The path prefix (`/app`); `None` matches every path.
    pub path: Option<String>,
    pub ssl_only: bool,
    pub hsts_max_age: Option<Duration>,
    pub passthrough: bool,
    /// Strip `path` before forwarding (and 301 the bare prefix to `prefix/`).
    pub rewrite: bool,
    pub sticky_cookie: Option<String>,
    pub ip_hash: bool,
    pub balance: Balance,
    /// The service's limit, else the proxy's.
    pub max_body_size: Option<u64>,
    /// The service's timeouts, else the proxy's.
    pub connect_timeout: Duration,
    pub upstream_timeout: Duration,
    /// Active checks of `upstreams`; `None`: passive ejection only.
    pub health: Option<HealthCheck>,
    /// Cap on requests in flight to the pool; `None`: no cap.
    pub max_requests: Option<u32>,
    /// The service's `max_ejected_percent`, else the proxy's.
    pub max_ejected_percent: u8,
}

impl Route {
    /// `simple_foo` or `simple_foo+canary_foo`, for logs and error bodies.
    pub fn label(&self) -> String {
        self.services.join("+")
    }

    /// Whether `path` (without its query) lies under this route's prefix,
    /// on a segment boundary: `/app` matches `/app`, `/app/` and `/app/x`,
    /// not `/apple`.
    pub fn matches(&self, path: &str) -> bool {
        match &self.path {
            None => true,
            Some(prefix) => path
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct RoutingTable {
    exact: HashMap<Box<str>, SiteId>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, SiteId>,
    sites: Vec<Site>,
    routes: Vec<Route>,
    default_backend: Option<RouteId>,
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
        let mut site_of: HashMap<Vec<usize>, SiteId> = HashMap::new();
        let mut route_of: HashMap<(Vec<usize>, Option<&str>), RouteId> = HashMap::new();
        for (host, services) in claims {
            let id = match site_of.get(&services) {
                Some(id) => *id,
                None => {
                    let id = table.add_site(config, &services, &mut route_of);
                    site_of.insert(services, id);
                    id
                }
            };
            table.sites[id].hosts.push(host.clone());
            for &r in &table.sites[id].rules {
                table.routes[r].hosts.push(host.clone());
            }
            match host {
                HostPattern::Exact(name) => table.exact.insert(name.as_str().into(), id),
                HostPattern::Wildcard(suffix) => table.wildcard.insert(suffix.as_str().into(), id),
            };
        }
        // Validation allows one default backend. It gets a pool of its
        // own: the services it shares a host with don't answer for hosts
        // nobody claims. Interlock's has no hosts at all.
        if let Some(si) = config.services.iter().position(|s| s.default_backend) {
            let key = (vec![si], config.services[si].context_root.as_deref());
            let id = match route_of.get(&key) {
                Some(id) => *id,
                None => {
                    table.routes.push(route(config, &key.0, key.1));
                    table.routes.len() - 1
                }
            };
            table.default_backend = Some(id);
        }
        table
    }

    /// The site for one set of services (those claiming a host), with a
    /// route per distinct path among them.
    fn add_site<'c>(
        &mut self,
        config: &'c Config,
        services: &[usize],
        route_of: &mut HashMap<(Vec<usize>, Option<&'c str>), RouteId>,
    ) -> SiteId {
        // The services at each path, in config order.
        let mut paths: Vec<(Option<&str>, Vec<usize>)> = Vec::new();
        for &si in services {
            let path = config.services[si].context_root.as_deref();
            match paths.iter_mut().find(|(p, _)| *p == path) {
                Some((_, at)) => at.push(si),
                None => paths.push((path, vec![si])),
            }
        }
        // Longest prefix first; the catch-all last.
        paths.sort_by_key(|(p, _)| std::cmp::Reverse(p.map_or(0, |p| p.len() + 1)));
        let tls = services
            .iter()
            .find_map(|&si| config.services[si].tls.clone());
        let mut rules = Vec::with_capacity(paths.len());
        for (path, pooled) in paths {
            let key = (pooled, path);
            let id = match route_of.get(&key) {
                Some(id) => *id,
                None => {
                    self.routes.push(route(config, &key.0, path));
                    let id = self.routes.len() - 1;
                    route_of.insert(key, id);
                    id
                }
            };
            rules.push(id);
        }
        self.sites.push(Site {
            services: services
                .iter()
                .map(|&si| config.services[si].name.clone())
                .collect(),
            hosts: Vec::new(),
            tls,
            // Validation makes services on one host agree on it.
            passthrough: config.services[services[0]].passthrough,
            redirects: services
                .iter()
                .flat_map(|&si| config.services[si].redirects.iter())
                .fold(Vec::new(), |mut all, r| {
                    if !all.iter().any(|a: &Redirect| {
                        a.from_scheme == r.from_scheme && a.from_host == r.from_host
                    }) {
                        all.push(r.clone());
                    }
                    all
                }),
            rules,
        });
        self.sites.len() - 1
    }

    /// Finds the site for a normalised host (see
    /// [`normalize_request_host`](crate::host::normalize_request_host)):
    /// the exact name first, then the most specific wildcard.
    pub fn lookup_site(&self, host: &str) -> Option<SiteId> {
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

    /// The route of `site` whose prefix is the longest to match `path`
    /// (the request's path, without its query).
    pub fn match_path(&self, site: SiteId, path: &str) -> Option<RouteId> {
        self.sites[site]
            .rules
            .iter()
            .copied()
            .find(|&r| self.routes[r].matches(path))
    }

    /// The route for a normalised host and a path: the host's longest
    /// matching prefix; for a host no service claims, the default backend.
    pub fn lookup(&self, host: &str, path: &str) -> Lookup {
        match self.lookup_site(host) {
            Some(site) => match self.match_path(site, path) {
                Some(route) => Lookup::Route(route),
                None => Lookup::NoPath(site),
            },
            None => match self.default_backend {
                Some(route) if self.routes[route].matches(path) => Lookup::Route(route),
                _ => Lookup::NoHost,
            },
        }
    }

    pub fn route(&self, id: RouteId) -> &Route {
        &self.routes[id]
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn site(&self, id: SiteId) -> &Site {
        &self.sites[id]
    }

    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// The route that answers hosts no service claims, if one is configured.
    pub fn default_backend(&self) -> Option<RouteId> {
        self.default_backend
    }

    /// Hosts claimed by more than one service, with those services' names.
    pub fn shared_hosts(&self) -> impl Iterator<Item = (&HostPattern, &[String])> {
        self.sites
            .iter()
            .filter(|s| s.services.len() > 1)
            .flat_map(|s| s.hosts.iter().map(move |h| (h, s.services.as_slice())))
    }

    /// Configured host names, for suggesting the nearest one to a missing host.
    pub fn hosts(&self) -> impl Iterator<Item = &HostPattern> {
        self.sites.iter().flat_map(|s| s.hosts.iter())
    }
}

/// Where a request's host and path lead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Route(RouteId),
    /// The host is served, but none of its paths matches.
    NoPath(SiteId),
    /// No service claims the host, and no default backend takes it.
    NoHost,
}

/// The pool of `services` (which share a host and `path`).
fn route(config: &Config, services: &[usize], path: Option<&str>) -> Route {
    let mut upstreams = Vec::new();
    let mut upstream_options = Vec::new();
    for &si in services {
        let svc = &config.services[si];
        for u in &svc.upstreams {
            if !upstreams.contains(u) {
                upstreams.push(*u);
                upstream_options.push(svc.upstream.clone());
            }
        }
    }
    // Validation makes services on one host and path agree on these.
    let first = &config.services[services[0]];
    let p = &config.proxy;
    Route {
        services: services
            .iter()
            .map(|&si| config.services[si].name.clone())
            .collect(),
        upstreams,
        upstream_options,
        hosts: Vec::new(),
        path: path.map(str::to_owned),
        ssl_only: first.ssl_only,
        hsts_max_age: first.hsts_max_age,
        passthrough: first.passthrough,
        rewrite: first.context_root_rewrite,
        sticky_cookie: first.sticky_session_cookie.clone(),
        ip_hash: first.ip_hash,
        balance: first.balance,
        max_body_size: first.max_body_size.or(p.max_body_size),
        connect_timeout: first.connect_timeout.unwrap_or(p.connect_timeout),
        upstream_timeout: first.upstream_timeout.unwrap_or(p.upstream_timeout),
        health: first.health.clone(),
        max_requests: first.max_requests,
        max_ejected_percent: first.max_ejected_percent.unwrap_or(p.max_ejected_percent),
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
        let svc = |h: &str| match t.lookup(h, "/") {
            Lookup::Route(id) => Some(t.route(id).label()),
            _ => None,
        };
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
        let route = |h: &str| match t.lookup(h, "/") {
            Lookup::Route(id) => t.route(id),
            other => panic!("{h}: {other:?}"),
        };
        let shared = route("foo.test");
        assert_eq!(shared.services, ["foo", "foo_canary"]);
        assert_eq!(shared.upstreams.len(), 3);
        let only = route("only-foo.test");
        assert_eq!(only.services, ["foo"]);
        assert_eq!(only.upstreams.len(), 2);
        let shared: Vec<_> = t
            .shared_hosts()
            .map(|(h, s)| (h.to_string(), s.len()))
            .collect();
        assert_eq!(shared, [("foo.test".to_string(), 2)]);
    }

    #[test]
    fn a_route_carries_its_health_check_and_caps() {
        // Two services pooled on a.test, with the same settings.
        let mut text = String::from("[proxy]\nmax_ejected_percent = 30\n");
        for name in ["checked", "canary"] {
            text.push_str(&format!(
                "[[service]]\nname = \"{name}\"\nhosts = [\"a.test\"]\nhealth_path = \"/healthz\"\nhealth_status = \"204\"\nmax_requests = 50\nmax_ejected_percent = 100\n"
            ));
        }
        text.push_str("[[service]]\nname = \"plain\"\nhosts = [\"b.test\"]\n");
        let t = table(&text);
        let route = |h: &str| match t.lookup(h, "/") {
            Lookup::Route(id) => t.route(id),
            other => panic!("{h}: {other:?}"),
        };
        let checked = route("a.test");
        assert_eq!(checked.label(), "checked+canary");
        let health = checked.health.as_ref().unwrap();
        assert_eq!(health.path, "/healthz");
        assert!(health.accepts(204) && !health.accepts(200));
        assert_eq!(checked.max_requests, Some(50));
        assert_eq!(checked.max_ejected_percent, 100);
        // Nothing set: no check, no cap, the proxy's percentage.
        let plain = route("b.test");
        assert_eq!(plain.health, None);
        assert_eq!(plain.max_requests, None);
        assert_eq!(plain.max_ejected_percent, 30);
    }

    /// A config with path rules set on the model directly (the file's
    /// `context_root` key is parsed elsewhere).
    fn with_paths(services: &[(&str, &[&str], Option<&str>, u16)]) -> RoutingTable {
        let mut config = Config::default();
        for (name, hosts, path, port) in services {
            config.services.push(crate::config::Service {
                name: (*name).into(),
                hosts: hosts
                    .iter()
                    .map(|h| HostPattern::parse(h).unwrap())
                    .collect(),
                upstreams: vec![SocketAddr::from(([127, 0, 0, 1], *port))],
                context_root: path.map(str::to_owned),
                ..Default::default()
            });
        }
        RoutingTable::build(&config)
    }

    #[test]
    fn the_longest_prefix_on_a_segment_boundary_wins() {
        let t = with_paths(&[
            ("root", &["a.test"], None, 1),
            ("api", &["a.test", "b.test"], Some("/api"), 2),
            ("v2", &["a.test"], Some("/api/v2"), 3),
            ("v2_canary", &["a.test"], Some("/api/v2"), 4),
        ]);
        let at = |h: &str, p: &str| match t.lookup(h, p) {
            Lookup::Route(id) => t.route(id).label(),
            other => format!("{other:?}"),
        };
        assert_eq!(at("a.test", "/"), "root");
        assert_eq!(at("a.test", "/apix"), "root");
        assert_eq!(at("a.test", "/api"), "api");
        assert_eq!(at("a.test", "/api/"), "api");
        assert_eq!(at("a.test", "/api/v1/x"), "api");
        assert_eq!(at("a.test", "/api/v2"), "v2+v2_canary");
        assert_eq!(at("a.test", "/api/v2/x"), "v2+v2_canary");
        assert_eq!(at("a.test", "/api/v20"), "api");
        // b.test has only the /api rule: the same pool as a.test's.
        assert_eq!(at("b.test", "/api/x"), "api");
        assert!(matches!(t.lookup("b.test", "/other"), Lookup::NoPath(_)));
        assert_eq!(t.lookup("c.test", "/"), Lookup::NoHost);
        let api = t.routes().iter().find(|r| r.label() == "api").unwrap();
        assert_eq!(api.hosts.len(), 2);
        assert!(t.default_backend().is_none());
    }

    #[test]
    fn the_default_backend_takes_unclaimed_hosts() {
        let mut config = Config::default();
        config.services.push(crate::config::Service {
            name: "fallback".into(),
            hosts: vec![HostPattern::parse("fallback.test").unwrap()],
            default_backend: true,
            ..Default::default()
        });
        let t = RoutingTable::build(&config);
        let id = t.default_backend().expect("a default backend");
        assert_eq!(t.lookup("nowhere.test", "/x"), Lookup::Route(id));
        assert_eq!(t.lookup("fallback.test", "/"), Lookup::Route(id));
    }
}

/// Properties of host and path matching, against a plain reading of the
/// rules over generated tables.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::config::Service;
    use crate::host::normalize_request_host;
    use proptest::prelude::*;

    /// Names from a few labels, so that generated hosts and patterns overlap.
    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "www", "api"]), 1..4)
            .prop_map(|labels| labels.join("."))
    }

    fn pattern() -> impl Strategy<Value = HostPattern> {
        (any::<bool>(), name()).prop_map(|(wild, name)| {
            if wild {
                HostPattern::Wildcard(name)
            } else {
                HostPattern::Exact(name)
            }
        })
    }

    /// One service per pattern (so a pattern listed twice is shared).
    fn hosts_table(patterns: &[HostPattern]) -> RoutingTable {
        let mut config = Config::default();
        for (i, p) in patterns.iter().enumerate() {
            config.services.push(Service {
                name: format!("s{i}"),
                hosts: vec![p.clone()],
                ..Default::default()
            });
        }
        RoutingTable::build(&config)
    }

    /// The services claiming the pattern `host` should match: its exact
    /// name, else the wildcard with the longest suffix `host` is below.
    fn expected_services(patterns: &[HostPattern], host: &str) -> Option<Vec<String>> {
        let claiming = |want: &HostPattern| {
            let names: Vec<String> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| *p == want)
                .map(|(i, _)| format!("s{i}"))
                .collect();
            (!names.is_empty()).then_some(names)
        };
        claiming(&HostPattern::Exact(host.to_owned())).or_else(|| {
            patterns
                .iter()
                .filter_map(|p| match p {
                    HostPattern::Wildcard(suffix)
                        if host
                            .strip_suffix(suffix.as_str())
                            .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')) =>
                    {
                        Some(suffix)
                    }
                    _ => None,
                })
                .max_by_key(|suffix| suffix.len())
                .and_then(|suffix| claiming(&HostPattern::Wildcard(suffix.clone())))
        })
    }

    /// A path prefix of one to three segments from a few names, so that
    /// prefixes nest and share beginnings (`/app`, `/apple`, `/app/x`).
    fn prefix() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "app", "apple", "x"]), 1..4)
            .prop_map(|segments| format!("/{}", segments.join("/")))
    }

    /// A request path: a prefix, maybe followed by a slash or more bytes.
    fn path() -> impl Strategy<Value = String> {
        (
            prefix(),
            prop::sample::select(vec!["", "/", "/more", "le", "x/y", "?q"]),
        )
            .prop_map(|(p, tail)| {
                // Paths are matched without their query.
                let path = format!("{p}{tail}");
                path.split('?').next().unwrap_or_default().to_owned()
            })
    }

    /// Whether `path` is under `prefix`, by its definition.
    fn under(prefix: &str, path: &str) -> bool {
        path == prefix || path.starts_with(&format!("{prefix}/"))
    }

    /// One service per path rule, all on `a.test`; `None` is a catch-all.
    fn paths_table(rules: &[Option<String>]) -> RoutingTable {
        let mut config = Config::default();
        for (i, rule) in rules.iter().enumerate() {
            config.services.push(Service {
                name: format!("r{i}"),
                hosts: vec![HostPattern::Exact("a.test".into())],
                context_root: rule.clone(),
                ..Default::default()
            });
        }
        RoutingTable::build(&config)
    }

    /// The services the route `path` leads to on `a.test`, if any.
    fn served_by(table: &RoutingTable, path: &str) -> Option<Vec<String>> {
        match table.lookup("a.test", path) {
            Lookup::Route(id) => Some(table.route(id).services.clone()),
            Lookup::NoPath(_) => None,
            Lookup::NoHost => panic!("a.test is claimed"),
        }
    }

    proptest! {
        #[test]
        fn hosts_match_their_exact_name_else_the_longest_wildcard(
            patterns in prop::collection::vec(pattern(), 1..8),
            host in name(),
        ) {
            let table = hosts_table(&patterns);
            let found = table
                .lookup_site(&host)
                .map(|site| table.site(site).services.clone());
            prop_assert_eq!(found, expected_services(&patterns, &host));
        }

        #[test]
        fn an_exact_host_beats_every_wildcard(
            patterns in prop::collection::vec(pattern(), 0..6),
            host in name(),
        ) {
            let mut patterns = patterns;
            patterns.retain(|p| *p != HostPattern::Exact(host.clone()));
            // Every wildcard above the host, and the host itself last.
            let labels: Vec<&str> = host.split('.').collect();
            for i in 1..labels.len() {
                patterns.push(HostPattern::Wildcard(labels[i..].join(".")));
            }
            patterns.push(HostPattern::Exact(host.clone()));
            let table = hosts_table(&patterns);
            let site = table.lookup_site(&host).expect("claimed");
            prop_assert_eq!(
                &table.site(site).services,
                &vec![format!("s{}", patterns.len() - 1)]
            );
        }

        #[test]
        fn a_wildcard_matches_names_below_its_suffix_only(
            suffix in name(),
            below in prop::collection::vec(prop::sample::select(vec!["a", "b", "www"]), 0..3),
        ) {
            let table = hosts_table(&[HostPattern::Wildcard(suffix.clone())]);
            let mut host = suffix.clone();
            for label in &below {
                host = format!("{label}.{host}");
            }
            // The suffix itself is not below it; one or more labels are.
            prop_assert_eq!(table.lookup_site(&host).is_some(), !below.is_empty());
            // Nor does a name that merely ends with the same letters.
            let glued = format!("x{suffix}");
            prop_assert_eq!(table.lookup_site(&glued), None);
        }

        #[test]
        fn case_a_trailing_dot_and_a_port_never_change_the_site(
            patterns in prop::collection::vec(pattern(), 1..6),
            (host, sent) in name().prop_flat_map(|n| (Just(n.clone()), crate::host::properties::as_sent(&n))),
        ) {
            let table = hosts_table(&patterns);
            let normal = normalize_request_host(&sent).unwrap();
            prop_assert_eq!(table.lookup_site(&normal), table.lookup_site(&host));
        }

        #[test]
        fn a_prefix_matches_on_segment_boundaries_only(prefix in prefix(), path in path()) {
            let route = Route {
                path: Some(prefix.clone()),
                ..paths_table(&[None]).route(0).clone()
            };
            prop_assert_eq!(route.matches(&path), under(&prefix, &path));
            // `/app` never matches `/apple`.
            let glued = [format!("{prefix}le"), format!("{prefix}-x/")];
            prop_assert!(!glued.iter().any(|p| route.matches(p)));
        }

        #[test]
        fn the_longest_matching_prefix_wins(
            rules in prop::collection::vec(prop::option::weighted(0.85, prefix()), 1..6),
            path in path(),
        ) {
            let table = paths_table(&rules);
            // Rank of a rule that matches: longer prefixes first, the
            // catch-all last.
            let rank = |r: &Option<String>| match r {
                None => Some(0),
                Some(p) => under(p, &path).then_some(p.len() + 1),
            };
            let longest = rules.iter().filter_map(rank).max();
            // Every service whose rule is the winning one is pooled there.
            let expected = longest.map(|len| {
                rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| rank(r) == Some(len))
                    .map(|(i, _)| format!("r{i}"))
                    .collect::<Vec<_>>()
            });
            prop_assert_eq!(served_by(&table, &path), expected);
        }

        #[test]
        fn adding_a_rule_never_changes_paths_outside_it(
            rules in prop::collection::vec(prop::option::weighted(0.85, prefix()), 1..6),
            added in prefix(),
            path in path(),
        ) {
            prop_assume!(!under(&added, &path));
            let before = served_by(&paths_table(&rules), &path);
            let mut more = rules.clone();
            more.push(Some(added));
            prop_assert_eq!(served_by(&paths_table(&more), &path), before);
        }
    }
}
