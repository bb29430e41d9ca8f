//! The walk itself, innermost first, as the functional-test article does it
//! by hand: the route in the active config, each task (probed by the proxy),
//! each proxy with a crafted `Host`/SNI, each load balancer, DNS, and the
//! request by name. Each hop is judged on what it alone adds, so a failure
//! further in is not blamed on the hops around it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::api::{AdminClient, AdminError, Health, NearHost, ProbeRequest, RouteInfo};
use crate::dns::{self, DnsError};
use crate::http::{fetch, Exchange, Fetch, FetchError};
use crate::options::Options;
use crate::report::{Hop, HopResult, Outcome, Report};

/// What the inner hops learnt, for judging the outer ones.
#[derive(Default)]
struct Context {
    health: Option<Health>,
    version: Option<String>,
    route: Option<RouteInfo>,
    /// Set when the admin API answered that no route matches.
    no_route: bool,
    nearest: Vec<NearHost>,
    /// Upstreams whose probe failed, with the status they answered, if any.
    failing_upstreams: HashMap<SocketAddr, Option<u16>>,
    /// `x-proxy-id`s the proxy hops saw.
    proxy_ids: Vec<String>,
}

/// Runs every hop the options allow and returns the report.
pub async fn trace(opts: &Options) -> Report {
    let mut hops = Vec::new();
    let mut ctx = Context::default();
    admin_hops(opts, &mut ctx, &mut hops).await;

    let mut proxies = opts.proxies.clone();
    if proxies.is_empty() {
        // The admin API knows where its own proxy listens.
        if let (Some(h), Some(admin)) = (&ctx.health, opts.admin) {
            let listen = if opts.target.https {
                h.https_listen
            } else {
                Some(h.http_listen)
            };
            if let Some(listen) = listen.filter(|l| l.port() != 0) {
                let ip = if listen.ip().is_unspecified() {
                    admin.ip()
                } else {
                    listen.ip()
                };
                proxies.push(SocketAddr::new(ip, listen.port()));
            }
        }
    }
    if proxies.is_empty() {
        hops.push(HopResult::skip(
            Hop::Proxy,
            "-",
            "not checked: no --proxy given",
        ));
    }
    for addr in &proxies {
        let ex = fetch(request(opts, *addr, &opts.target.host)).await;
        let row = judge(Hop::Proxy, addr.to_string(), ex, opts, &ctx, *addr);
        if let Some(id) = &row.proxy_id {
            if row.result == Outcome::Pass && !ctx.proxy_ids.contains(id) {
                ctx.proxy_ids.push(id.clone());
            }
        }
        hops.push(row);
    }

    if opts.lbs.is_empty() {
        hops.push(HopResult::skip(Hop::Lb, "-", "not checked: no --lb given"));
    }
    for addr in &opts.lbs {
        let ex = fetch(request(opts, *addr, &opts.target.host)).await;
        hops.push(judge(Hop::Lb, addr.to_string(), ex, opts, &ctx, *addr));
    }

    let addresses = dns_hop(opts, &mut hops).await;
    client_hops(opts, &ctx, addresses, &mut hops).await;
    Report::new(opts.target.clone(), ctx.version.clone(), hops)
}

fn request<'a>(opts: &'a Options, addr: SocketAddr, host: &'a str) -> Fetch<'a> {
    let mut f = Fetch::get(addr, host, &opts.target.path, opts.timeout);
    f.tls = opts.tls.as_ref();
    f
}

async fn admin_hops(opts: &Options, ctx: &mut Context, hops: &mut Vec<HopResult>) {
    let host = &opts.target.host;
    let Some(admin) = opts.admin else {
        let why = "not checked: no --admin (only the proxy's admin API knows the route and can reach the tasks)";
        hops.push(HopResult::skip(Hop::Route, "-", why));
        hops.push(HopResult::skip(Hop::Upstream, "-", why));
        return;
    };
    let client = AdminClient {
        addr: admin,
        token: opts.admin_token.clone(),
        timeout: opts.timeout,
    };
    let target = format!("admin {admin}");
    let admin_failed = |e: AdminError, target: &str| {
        let (cause, remedy) = match &e {
            AdminError::Unauthorized { .. } => (
                "the admin API requires a bearer token".to_owned(),
                "pass the [admin] token with --admin-token (or PORTICO_ADMIN_TOKEN)".to_owned(),
            ),
            AdminError::Unreachable { .. } => (
                format!("nothing answers on {admin}: portico is not running there, or [admin] is not configured"),
                "check the [admin] listen address in portico's config".to_owned(),
            ),
            _ => (
                format!("{admin} does not speak Portico's admin API"),
                "check the --admin address".to_owned(),
            ),
        };
        HopResult::new(Hop::Route, target, Outcome::Fail, e.to_string()).failed(cause, remedy)
    };
    let health = match client.health().await {
        Ok(h) => h,
        Err(e) => {
            hops.push(admin_failed(e, &target));
            hops.push(HopResult::skip(
                Hop::Upstream,
                "-",
                "not checked: the admin API failed",
            ));
            return;
        }
    };
    ctx.version = Some(health.version.clone());
    ctx.health = Some(health.clone());
    let routes = match client.routes_for(host).await {
        Ok(r) => r,
        Err(e) => {
            hops.push(admin_failed(e, &target));
            hops.push(HopResult::skip(
                Hop::Upstream,
                "-",
                "not checked: the admin API failed",
            ));
            return;
        }
    };
    let version = routes.version.clone();
    ctx.version = Some(version.clone());
    let Some(route) = routes.routes.into_iter().next() else {
        ctx.no_route = true;
        ctx.nearest = routes.nearest.clone();
        let mut evidence = format!("no route for {host} in config {version}");
        let (cause, remedy) = match routes.nearest.first() {
            Some(n) => {
                let _ = std::fmt::Write::write_fmt(
                    &mut evidence,
                    format_args!("; nearest configured host: {} ({})", n.host, n.services.join("+")),
                );
                (
                    format!(
                        "the service {} has host {}, not {host} (a typo?)",
                        n.services.join("+"),
                        n.host
                    ),
                    format!(
                        "check its hosts (the com.docker.lb.hosts label, or hosts in the config file) for {host}"
                    ),
                )
            }
            None => (
                format!("no service lists {host} among its hosts"),
                format!("add {host} to the service's hosts (com.docker.lb.hosts label), or check that the service is deployed"),
            ),
        };
        hops.push(
            HopResult::new(Hop::Route, target, Outcome::Fail, evidence).failed(cause, remedy),
        );
        hops.push(HopResult::skip(
            Hop::Upstream,
            "-",
            format!("not checked: no route for {host}"),
        ));
        return;
    };
    let label = route.services.join("+");
    if route.upstreams.is_empty() {
        hops.push(
            HopResult::new(
                Hop::Route,
                target,
                Outcome::Fail,
                format!("{host} → {label}, which has no upstreams in config {version}"),
            )
            .failed(
                format!("the service {label} has no running tasks"),
                format!("check its tasks (docker service ps {label}) and why they are not running"),
            ),
        );
        hops.push(HopResult::skip(
            Hop::Upstream,
            "-",
            "not checked: no upstreams",
        ));
        ctx.route = Some(route);
        return;
    }
    let via = match &route.matched {
        Some(m) if m != host => format!(" (by {m})"),
        _ => String::new(),
    };
    hops.push(HopResult::new(
        Hop::Route,
        target,
        Outcome::Pass,
        format!(
            "{host}{via} → {label} → {} upstream(s){}; config {version}",
            route.upstreams.len(),
            match route.health.iter().filter(|h| h.is_down()).count() {
                0 => String::new(),
                down => format!(", {down} of them down (failed checks or ejected)"),
            }
        ),
    ));
    ctx.route = Some(route.clone());

    let probe = ProbeRequest {
        host: host.clone(),
        path: opts.target.path.clone(),
        timeout_ms: Some(opts.timeout.as_millis().min(30_000) as u64),
    };
    // The proxy probes its upstreams concurrently, each within the timeout.
    let probe_client = AdminClient {
        timeout: opts.timeout + Duration::from_secs(1),
        ..client
    };
    match probe_client.probe(&probe).await {
        Ok(resp) => {
            for p in resp.probes {
                let mut row =
                    HopResult::new(Hop::Upstream, p.upstream.to_string(), Outcome::Pass, "");
                row.status = p.status;
                row.timings = p.timings;
                match (&p.error, p.status) {
                    (None, Some(status)) if p.ok => {
                        row.evidence = format!("{status} to the proxy's probe ({label})");
                    }
                    (_, Some(status)) => {
                        ctx.failing_upstreams.insert(p.upstream, Some(status));
                        row.evidence = format!(
                            "answered {status} to the proxy's probe of {}",
                            opts.target.path
                        );
                        row = row.failed(
                            format!(
                                "the task at {} ({label}) fails: the application answers {status}",
                                p.upstream
                            ),
                            format!("check the service's logs (docker service logs {label})"),
                        );
                    }
                    (Some(e), None) => {
                        ctx.failing_upstreams.insert(p.upstream, None);
                        row.evidence = format!("the proxy cannot reach it: {e}");
                        let cause = if e.contains("refused") {
                            format!(
                                "the task at {} ({label}) is down: nothing listens there",
                                p.upstream
                            )
                        } else if e.contains("timed out") || e.contains("no response") {
                            format!("the task at {} ({label}) does not answer in time (hung, or the network drops traffic)", p.upstream)
                        } else {
                            format!(
                                "the task at {} ({label}) is unreachable from the proxy",
                                p.upstream
                            )
                        };
                        row = row.failed(
                            cause,
                            format!("check the task (docker service ps {label}) and the network between the proxy and it"),
                        );
                    }
                    (None, None) => {
                        row.evidence = "no result".to_owned();
                        row.result = Outcome::Skip;
                    }
                }
                // What the proxy itself concluded of it, from its checks
                // and the requests it sent: the probe alone is one request.
                if let Some(h) = route
                    .health
                    .iter()
                    .find(|h| h.upstream == p.upstream && h.state != "unknown")
                {
                    row.evidence.push_str(&format!("; {}", h.describe()));
                }
                hops.push(row);
            }
        }
        Err(e) => {
            let mut row = admin_failed(e, &format!("admin {admin}"));
            row.hop = Hop::Upstream;
            hops.push(row);
        }
    }
}

/// The DNS hop; returns the addresses to use for the client hop, with the
/// lookup time.
async fn dns_hop(opts: &Options, hops: &mut Vec<HopResult>) -> Option<(Vec<IpAddr>, Option<f64>)> {
    let host = &opts.target.host;
    let overridden = opts.resolved();
    if host.parse::<IpAddr>().is_ok() {
        hops.push(HopResult::skip(
            Hop::Dns,
            "-",
            format!("not checked: {host} is an address"),
        ));
        return Some((vec![host.parse().expect("checked")], None));
    }
    if overridden.is_some() && opts.dns.is_none() {
        hops.push(HopResult::skip(
            Hop::Dns,
            "-",
            format!("not checked: --resolve {host}:{} given", opts.target.port),
        ));
        return overridden.map(|a| (vec![a], None));
    }
    let source = opts
        .dns
        .map_or("system resolver".to_owned(), |s| s.to_string());
    let mut row = HopResult::new(Hop::Dns, source.clone(), Outcome::Pass, "");
    let resolution = match dns::resolve(host, opts.dns, opts.timeout).await {
        Ok(r) => r,
        Err(e) => {
            row.evidence = e.to_string();
            let (cause, remedy) = match &e {
                DnsError::NxDomain { .. } | DnsError::NoRecords { .. } => (
                    format!("there is no DNS record for {host}"),
                    format!("create an A record for {host} (or a wildcard above it) pointing at the load balancer"),
                ),
                DnsError::Timeout { .. } => (
                    format!("the DNS server {source} does not answer"),
                    "check --dns or the resolver in /etc/resolv.conf".to_owned(),
                ),
                _ => (
                    format!("{source} cannot resolve {host}"),
                    "check the DNS server and the record".to_owned(),
                ),
            };
            hops.push(row.failed(cause, remedy));
            return overridden.map(|a| (vec![a], None));
        }
    };
    row.timings.dns_ms = Some(resolution.elapsed_ms);
    row.addresses = resolution.addresses.clone();
    let shown: Vec<String> = resolution
        .addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    let (expected, role): (Vec<IpAddr>, &str) = if !opts.lbs.is_empty() {
        (
            opts.lbs.iter().map(SocketAddr::ip).collect(),
            "load balancer",
        )
    } else {
        (opts.proxies.iter().map(SocketAddr::ip).collect(), "proxy")
    };
    let strangers: Vec<String> = resolution
        .addresses
        .iter()
        .filter(|a| !expected.is_empty() && !expected.contains(a))
        .map(ToString::to_string)
        .collect();
    if strangers.is_empty() {
        row.evidence = if expected.is_empty() {
            format!("{host} → {}", shown.join(", "))
        } else {
            format!("{host} → {}, the {role}'s address", shown.join(", "))
        };
        hops.push(row);
    } else {
        let mut wanted: Vec<String> = expected.iter().map(ToString::to_string).collect();
        wanted.dedup();
        row.evidence = format!(
            "{host} → {}; {} is not the {role} ({})",
            shown.join(", "),
            strangers.join(", "),
            wanted.join(", ")
        );
        hops.push(row.failed(
            format!(
                "the DNS record for {host} points at {} instead of the {role}",
                strangers.join(", ")
            ),
            format!(
                "point {host}'s A/AAAA record (or its wildcard) at {}",
                wanted.join(", ")
            ),
        ));
    }
    let addrs = match overridden {
        Some(a) => vec![a],
        None => resolution.addresses,
    };
    Some((addrs, Some(resolution.elapsed_ms)))
}

async fn client_hops(
    opts: &Options,
    ctx: &Context,
    addresses: Option<(Vec<IpAddr>, Option<f64>)>,
    hops: &mut Vec<HopResult>,
) {
    let Some((addrs, dns_ms)) = addresses.filter(|(a, _)| !a.is_empty()) else {
        hops.push(HopResult::skip(
            Hop::Client,
            "-",
            format!("not checked: {} resolves to no address", opts.target.host),
        ));
        return;
    };
    let host_header = opts.target.host_header();
    let mut seen = Vec::new();
    for ip in addrs {
        if seen.contains(&ip) || seen.len() == 4 {
            continue;
        }
        seen.push(ip);
        let addr = SocketAddr::new(ip, opts.target.port);
        let ex = fetch(request(opts, addr, &host_header)).await;
        let mut row = judge(Hop::Client, addr.to_string(), ex, opts, ctx, addr);
        row.timings.dns_ms = dns_ms;
        hops.push(row);
    }
}

/// Judges an answer (or its absence) at a proxy, LB or client hop.
fn judge(
    hop: Hop,
    target: String,
    ex: Exchange,
    opts: &Options,
    ctx: &Context,
    addr: SocketAddr,
) -> HopResult {
    let host = &opts.target.host;
    let mut row = HopResult::new(hop, target, Outcome::Pass, "");
    row.timings = ex.timings;
    row.tls = ex.tls.clone();
    let role = match hop {
        Hop::Proxy => "proxy",
        Hop::Lb => "load balancer",
        _ => "address",
    };
    let answer = match ex.result {
        Ok(a) => a,
        Err(e) => {
            row.evidence = e.to_string();
            let (cause, remedy) = match (&e, hop) {
                (FetchError::Refused, Hop::Proxy) => (
                    format!("nothing listens on {addr}: the proxy is down or listens elsewhere"),
                    format!(
                        "start portico there, or check [proxy] {} and the --proxy address",
                        if opts.target.https { "https_listen" } else { "http_listen" }
                    ),
                ),
                (FetchError::Refused, Hop::Lb) => (
                    format!("nothing listens on {addr}: the load balancer's listener is down"),
                    "check the load balancer's listener and port".to_owned(),
                ),
                (FetchError::Refused, _) => (
                    format!("nothing listens on {addr}, where {host} leads"),
                    "check the DNS record and the load balancer's listener".to_owned(),
                ),
                (FetchError::Closed, Hop::Proxy) => (
                    format!("{addr} accepted the connection and closed it without an answer: not an HTTP proxy, or it crashed"),
                    "check what listens on that port, and the proxy's log".to_owned(),
                ),
                (FetchError::Closed, _) => (
                    format!("the {role} at {addr} accepted the connection but what it forwards to did not answer: it forwards to the wrong port, or to a node whose proxy is down"),
                    forward_remedy(opts),
                ),
                (FetchError::Tls(_), _) => (
                    format!("the TLS handshake with {addr} for SNI {host} failed: it does not serve HTTPS there, or has no certificate for {host}"),
                    format!("check the HTTPS listener and the certificate configured for {host}"),
                ),
                (FetchError::ConnectTimeout(_) | FetchError::TlsTimeout(_) | FetchError::ResponseTimeout(_), _) => (
                    format!("{addr} does not answer in time: a firewall drops the traffic, or the {role} is overloaded or hung"),
                    "check the path to it (security groups, firewall) and its load".to_owned(),
                ),
                _ => (
                    format!("{addr} does not speak HTTP as expected"),
                    format!("check what listens on {addr}"),
                ),
            };
            return row.failed(cause, remedy);
        }
    };
    row.status = Some(answer.status);
    row.upstream_addr = answer.header("x-upstream-addr").map(str::to_owned);
    row.proxy_id = answer.header("x-proxy-id").map(str::to_owned);
    let body = answer.body_text();
    let detail = body.lines().nth(1).unwrap_or_default().trim().to_owned();
    let from = match &row.upstream_addr {
        Some(u) => format!(" from upstream {u}"),
        None => String::new(),
    };
    let via = match &row.proxy_id {
        Some(id) => format!(" (x-proxy-id {id})"),
        None => String::new(),
    };
    row.evidence = format!("{}{from}{via}", answer.status);

    if let Some(tls) = &ex.tls {
        if !tls.problems.is_empty() {
            row.evidence = format!("{}; {}", tls.problems.join("; "), row.evidence);
            let (cause, remedy) = tls_diagnosis(tls, host, opts);
            return row.failed(cause, remedy);
        }
    }

    let proxy_error = answer.header("x-server-info").is_some()
        && body.starts_with(&format!("{} ", answer.status));
    if answer.status >= 500 {
        let version = ctx.version.as_deref().unwrap_or("?");
        if answer.status == 503 && body.contains("no service is configured for host") {
            row.evidence = format!("answered 503: {detail}");
            let cause = if ctx.route.is_some() {
                format!("this proxy has no route for {host}, but the admin API's config {version} has one: it runs another (stale) config")
            } else if let Some(n) = ctx.nearest.first() {
                format!(
                    "no route for {host} in config {version}; the service {} has host {}",
                    n.services.join("+"),
                    n.host
                )
            } else {
                format!("no service is configured for {host}")
            };
            return row.failed(cause, "check the service's hosts (com.docker.lb.hosts label, or hosts in the config file)");
        }
        if answer.status == 503 && body.contains("has no upstreams") {
            row.evidence = format!("answered 503: {detail}");
            return row.failed(
                "the service has no running tasks",
                "check its tasks (docker service ps) and why they are not running",
            );
        }
        let upstreams: Vec<SocketAddr> = row
            .upstream_addr
            .as_deref()
            .map(|u| u.split(',').filter_map(|a| a.trim().parse().ok()).collect())
            .unwrap_or_default();
        if !proxy_error
            && !upstreams.is_empty()
            && upstreams
                .iter()
                .all(|u| ctx.failing_upstreams.contains_key(u))
        {
            // The proxy did its job: it delivered the upstream's own error,
            // already reported on the upstream hop.
            row.evidence = format!(
                "{}{from}{via}: the upstream's own answer (see its hop)",
                answer.status
            );
            return row;
        }
        if proxy_error && matches!(answer.status, 502 | 504) {
            row.evidence = format!("answered {}: {detail}", answer.status);
            return row.failed(
                "the proxy could not get an answer from the service's tasks",
                "check the tasks (the upstream hop, docker service ps) and the network between the proxy and them",
            );
        }
        row.evidence = format!("answered {}{from}{via}", answer.status);
        return match row.upstream_addr.clone() {
            Some(u) => row.failed(
                format!(
                    "the upstream {u} answered {}: the application fails",
                    answer.status
                ),
                "check the service's logs (docker service logs)",
            ),
            None => row.failed(
                format!("{addr} answered {} itself", answer.status),
                format!("check the {role}'s log"),
            ),
        };
    }

    if let (Some(route), Some(ups)) = (&ctx.route, &row.upstream_addr) {
        let strangers: Vec<&str> = ups
            .split(',')
            .map(str::trim)
            .filter(|u| {
                u.parse::<SocketAddr>()
                    .map_or(true, |a| !route.upstreams.contains(&a))
            })
            .collect();
        if !strangers.is_empty() {
            let version = ctx.version.as_deref().unwrap_or("?");
            row.evidence = format!(
                "{}: answered by {}, not an upstream of {host} in config {version}",
                answer.status,
                strangers.join(", ")
            );
            return row.failed(
                format!("the {role} at {addr} does not run config {version} (stale config, or another cluster's proxy)"),
                "compare its version (admin /health, the 'configured proxy' log line) and reload it",
            );
        }
    }
    if let (Hop::Proxy, Some(h), Some(id)) = (hop, &ctx.health, &row.proxy_id) {
        let listen = if opts.target.https {
            h.https_listen
        } else {
            Some(h.http_listen)
        };
        let same_listener = listen.is_some_and(|l| {
            l.port() == addr.port() && (l.ip() == addr.ip() || l.ip().is_unspecified())
        });
        if same_listener && *id != h.proxy_id {
            row.evidence = format!(
                "{}: x-proxy-id is {id}, expected {}",
                answer.status, h.proxy_id
            );
            return row.failed(
                format!("another proxy than the admin API's answers on {addr}"),
                "check which process listens on that address",
            );
        }
    }
    if hop != Hop::Proxy && !ctx.proxy_ids.is_empty() && row.proxy_id.is_none() {
        row.evidence = format!(
            "{}: no x-proxy-id, so not one of the proxies ({})",
            answer.status,
            ctx.proxy_ids.join(", ")
        );
        return row.failed(
            format!("the {role} at {addr} forwards to something other than the proxies: the wrong port or service"),
            forward_remedy(opts),
        );
    }
    if let Some(tls) = &ex.tls {
        row.evidence = format!("{}; {}", row.evidence, tls.summary());
    }
    row
}

fn forward_remedy(opts: &Options) -> String {
    if opts.proxies.is_empty() {
        "check the load balancer's targets: they must be the proxies' listen address and port"
            .to_owned()
    } else {
        let list: Vec<String> = opts.proxies.iter().map(ToString::to_string).collect();
        format!(
            "point the load balancer's targets at the proxies' listen port ({})",
            list.join(", ")
        )
    }
}

fn tls_diagnosis(tls: &crate::tls::TlsReport, host: &str, opts: &Options) -> (String, String) {
    let first = tls.problems.first().map(String::as_str).unwrap_or_default();
    if first.contains(", not ") || first.contains("no DNS names") {
        (
            format!("the certificate served for SNI {host} is another name's (the default, or another service's)"),
            format!("configure a certificate for {host} on its service (tls_cert/tls_key), or add {host} to the certificate's names"),
        )
    } else if first.contains("expired") {
        (
            format!("the certificate for {host} has expired"),
            "renew it and reload the proxy".to_owned(),
        )
    } else if first.contains("not valid before") {
        (
            format!(
                "the certificate for {host} is not valid yet (or this machine's clock is wrong)"
            ),
            "check the clocks, or the certificate's dates".to_owned(),
        )
    } else {
        let trust = opts
            .tls
            .as_ref()
            .map_or("the system CAs".to_owned(), |t| t.trust.clone());
        (
            format!("the certificate chain does not verify against {trust}"),
            "serve the full chain (leaf and intermediates), or pass --cacert with the CA that signed it".to_owned(),
        )
    }
}
