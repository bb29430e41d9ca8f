//! The walk itself, innermost first, as the functional-test article does it
//! by hand: the route in the active config, each task (probed by the proxy),
//! each proxy's config version (from a cluster's controller), each proxy
//! with a crafted `Host`/SNI, each load balancer, DNS, and the request by
//! name. Each hop is judged on what it alone adds, so a failure further in
//! is not blamed on the hops around it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use portico_cluster::{DepartedProxy, ProxyStatus, SyncState};

use crate::api::{
    AdminClient, AdminError, Health, ListedProxy, NearHost, ProbeRequest, Proxies, RouteInfo,
};
use crate::dns::{self, DnsError};
use crate::http::{fetch, Exchange, Fetch, FetchError};
use crate::options::Options;
use crate::report::{Hop, HopResult, Outcome, ProxySummary, Report};

/// How many proxies the request is sent through at a time.
const PROXIES_AT_ONCE: usize = 16;

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

/// What the controller says of a proxy.
enum Listed<'a> {
    Connected {
        proxy: &'a ListedProxy,
        /// Its cluster's published version (64 hex digits).
        published: Option<&'a str>,
    },
    Departed(&'a DepartedProxy),
    /// A `--proxy` the controller does not list.
    Unlisted,
}

impl Listed<'_> {
    fn status(&self) -> Option<&ProxyStatus> {
        match self {
            Listed::Connected { proxy, .. } => Some(&proxy.status),
            Listed::Departed(d) => Some(&d.status),
            Listed::Unlisted => None,
        }
    }
}

/// One proxy to send the request through, and what is known of it.
struct ProxyCheck<'a> {
    /// `None`: it announces no listener for the target's scheme.
    addr: Option<SocketAddr>,
    /// `None` without a controller.
    listed: Option<Listed<'a>>,
    /// Whether the request is sent through it: not for a proxy the
    /// controller lists as departed (unless `--proxy` names it).
    probe: bool,
}

/// The first 12 hex digits of a version, as the logs show it.
fn short(version: &str) -> &str {
    version.get(..12).unwrap_or(version)
}

/// The listener of `status` for the target's scheme.
fn data_addr(status: &ProxyStatus, https: bool) -> Option<SocketAddr> {
    status
        .listeners
        .iter()
        .find(|l| l.https == https)
        .map(|l| l.addr)
}

/// The admin API the route and upstream hops ask, and with which token.
#[derive(Clone, Debug)]
struct AdminAt {
    addr: SocketAddr,
    token: Option<String>,
    /// The proxy that announced it (`None`: `--admin`).
    announced_by: Option<String>,
}

impl AdminAt {
    fn client(&self, opts: &Options) -> AdminClient {
        AdminClient {
            addr: self.addr,
            token: self.token.clone(),
            timeout: opts.timeout,
        }
    }
}

/// Whether the trace may ask an admin API a proxy announced at `addr`: one
/// on loopback is this machine's, not the proxy's, unless the controller
/// itself is asked on loopback (all on one machine).
fn usable_announced(opts: &Options, addr: SocketAddr) -> bool {
    !addr.ip().is_loopback() || opts.controller_admin.is_some_and(|c| c.ip().is_loopback())
}

/// Without `--admin`: the admin API the route and upstream hops ask (one
/// a listed proxy announced, asked with `--proxy-admin-token-file`'s token
/// only, never `--admin-token-file`'s), and the service cluster whose
/// proxies serve the target's host: with several clusters, the first whose
/// proxy has a route for it (`None`: every cluster's proxies are checked).
async fn host_cluster(opts: &Options, fleet: &Proxies) -> (Option<AdminAt>, Option<String>) {
    // One admin API per service cluster, in the listing's order, a
    // proxy's that serves the published version first.
    let mut candidates: Vec<(&str, AdminAt)> = Vec::new();
    for current in [true, false] {
        for p in &fleet.proxies {
            let cluster = p.status.service_cluster.as_str();
            let Some(admin) = p.status.admin.filter(|a| usable_announced(opts, a.addr)) else {
                continue;
            };
            if (p.state == SyncState::Current) == current
                && !candidates.iter().any(|(c, _)| *c == cluster)
            {
                candidates.push((
                    cluster,
                    AdminAt {
                        addr: admin.addr,
                        token: opts.proxy_admin_token.clone(),
                        announced_by: Some(p.status.id.to_string()),
                    },
                ));
            }
        }
    }
    let Some(first) = candidates.first().map(|(_, a)| a.clone()) else {
        return (None, None);
    };
    let several = fleet
        .proxies
        .iter()
        .map(|p| p.status.service_cluster.as_str())
        .chain(
            fleet
                .departed
                .iter()
                .map(|d| d.status.service_cluster.as_str()),
        )
        .any(|c| c != candidates[0].0);
    if !several {
        return (Some(first), None);
    }
    for (cluster, admin) in &candidates {
        if admin
            .client(opts)
            .routes_for(&opts.target.host)
            .await
            .is_ok_and(|r| !r.routes.is_empty())
        {
            return (Some(admin.clone()), Some((*cluster).to_owned()));
        }
    }
    (Some(first), None)
}

/// The proxies to check: every `--proxy`, then every proxy the controller
/// lists (connected, then departed; of `cluster` only, if given) not among
/// them.
fn proxy_checks<'a>(
    opts: &Options,
    fleet: Option<&'a Proxies>,
    cluster: Option<&str>,
) -> Vec<ProxyCheck<'a>> {
    let in_cluster = |s: &ProxyStatus| cluster.is_none_or(|c| s.service_cluster == c);
    let https = opts.target.https;
    let published = |cluster: &str| {
        fleet?
            .clusters
            .iter()
            .find(|c| c.service_cluster == cluster)
            .map(|c| c.version_full.as_str())
    };
    let connected = |p: &'a ListedProxy| Listed::Connected {
        proxy: p,
        published: published(&p.status.service_cluster),
    };
    let mut checks: Vec<ProxyCheck<'a>> = Vec::new();
    for addr in &opts.proxies {
        let listed = fleet.map(|f| {
            let at = |s: &ProxyStatus| s.listeners.iter().any(|l| l.addr == *addr);
            if let Some(p) = f.proxies.iter().find(|p| at(&p.status)) {
                connected(p)
            } else if let Some(d) = f.departed.iter().find(|d| at(&d.status)) {
                Listed::Departed(d)
            } else {
                Listed::Unlisted
            }
        });
        checks.push(ProxyCheck {
            addr: Some(*addr),
            listed,
            probe: true,
        });
    }
    let Some(fleet) = fleet else {
        return checks;
    };
    let known = |checks: &[ProxyCheck], id: &str| {
        checks.iter().any(|c| {
            c.listed
                .as_ref()
                .and_then(Listed::status)
                .is_some_and(|s| s.id.as_str() == id)
        })
    };
    for p in &fleet.proxies {
        if in_cluster(&p.status) && !known(&checks, p.status.id.as_str()) {
            checks.push(ProxyCheck {
                addr: data_addr(&p.status, https),
                listed: Some(connected(p)),
                probe: true,
            });
        }
    }
    for d in &fleet.departed {
        if in_cluster(&d.status) && !known(&checks, d.status.id.as_str()) {
            // Listed, not probed: a departed proxy is most likely
            // stopped, and each would cost a whole --timeout.
            checks.push(ProxyCheck {
                addr: data_addr(&d.status, https),
                listed: Some(Listed::Departed(d)),
                probe: false,
            });
        }
    }
    checks
}

/// Asks the controller's admin API for its proxies; a failure is the
/// version hop's row.
async fn fleet(opts: &Options, addr: SocketAddr) -> Result<Proxies, HopResult> {
    let client = AdminClient {
        addr,
        token: opts.admin_token.clone(),
        timeout: opts.timeout,
    };
    client.proxies().await.map_err(|e| {
        let (cause, remedy) = match &e {
            AdminError::Unauthorized { .. } => (
                "the controller's admin API requires its token".to_owned(),
                "pass its [admin] token with --admin-token-file (or --admin-token, PORTICO_ADMIN_TOKEN)"
                    .to_owned(),
            ),
            AdminError::Unreachable { .. } => (
                format!("nothing answers on {addr}: the controller is not running there, or its config has no [admin]"),
                "check the [admin] listen address in the controller's config".to_owned(),
            ),
            _ => (
                format!("{addr} is not a controller's admin API (a proxy's has no /proxies)"),
                "give --controller-admin the controller's [admin] address, and a proxy's to --admin".to_owned(),
            ),
        };
        HopResult::new(
            Hop::Version,
            format!("controller admin {addr}"),
            Outcome::Fail,
            e.to_string(),
        )
        .failed(cause, remedy)
    })
}

/// The version row of a listed proxy; `probed`: whether the request was
/// sent to its address; `answered`: the `x-proxy-id` that answered there,
/// if any did.
fn version_row(
    listed: &Listed,
    addr: Option<SocketAddr>,
    probed: bool,
    answered: Option<&str>,
) -> Option<HopResult> {
    let row = |id: &str, result, evidence: String| {
        HopResult::new(Hop::Version, id.to_owned(), result, evidence)
    };
    Some(match listed {
        Listed::Connected { proxy, published } => {
            let s = &proxy.status;
            let id = s.id.as_str();
            let cluster = &s.service_cluster;
            let applied = s.applied_version.as_deref().map_or("nothing yet", short);
            let published_short = published.map_or("-", short);
            match proxy.state {
                SyncState::Current => row(
                    id,
                    Outcome::Pass,
                    format!("serves {applied}, the version published to service cluster {cluster}"),
                ),
                SyncState::Unpublished => HopResult::skip(
                    Hop::Version,
                    id,
                    format!("not checked: nothing is published to service cluster {cluster}"),
                ),
                SyncState::Behind => {
                    let heartbeat = humantime::format_rfc3339_seconds(s.last_heartbeat);
                    row(
                        id,
                        Outcome::Fail,
                        format!("serves {applied}; {cluster}'s published version is {published_short} (last heartbeat {heartbeat})"),
                    )
                    .failed(
                        format!("{id} has not applied {published_short}: it is still applying it, or its stream is stuck"),
                        format!("check {id}'s log ('applied the controller's snapshot', 'snapshot rejected') and its link to the controller"),
                    )
                }
                SyncState::Nacking => {
                    let (reason, at) =
                        s.last_nack
                            .as_ref()
                            .map_or(("?".to_owned(), String::new()), |n| {
                                (
                                    n.reason.clone(),
                                    format!(" at {}", humantime::format_rfc3339_seconds(n.at)),
                                )
                            });
                    row(
                        id,
                        Outcome::Fail,
                        format!("refused {published_short}{at} (NACK): {reason}; it serves {applied}"),
                    )
                    .failed(
                        format!("{id} cannot apply {cluster}'s published config: {reason}"),
                        format!("fix what the reason names in the controller's config (a service, its files); {id} keeps serving {applied} meanwhile"),
                    )
                }
            }
        }
        Listed::Departed(d) => {
            let s = &d.status;
            let id = s.id.as_str();
            let left = format!(
                "left the controller at {} ({})",
                humantime::format_rfc3339_seconds(d.departed_at),
                d.reason
            );
            let applied = s.applied_version.as_deref().map_or("nothing", short);
            match (answered, addr) {
                _ if !probed => HopResult::skip(
                    Hop::Version,
                    id,
                    format!("not checked: {left}"),
                ),
                (Some(answered), Some(addr)) if answered == id => row(
                    id,
                    Outcome::Fail,
                    format!("{left}, but still answers at {addr}, serving {applied}"),
                )
                .failed(
                    format!("{id} serves traffic without a stream to the controller: it keeps {applied} and misses every change"),
                    format!("check the network between {id} and the controller ({id}'s log says 'lost the controller stream'), or take it out of the load balancer"),
                ),
                (Some(other), Some(addr)) => HopResult::skip(
                    Hop::Version,
                    id,
                    format!("not checked: {left}; {other} answers at {addr} now"),
                ),
                _ => HopResult::skip(
                    Hop::Version,
                    id,
                    format!("not checked: {left}; it no longer answers (stopped)"),
                ),
            }
        }
        Listed::Unlisted => {
            let (Some(answered), Some(addr)) = (answered, addr) else {
                return None;
            };
            row(
                answered,
                Outcome::Fail,
                format!("answers at {addr}, but the controller lists no proxy there"),
            )
            .failed(
                format!("{answered} at {addr} has no stream to the controller (not joined, partitioned, or another cluster's): its routes may be stale"),
                format!("check {answered}'s log and its --controller address"),
            )
        }
    })
}

/// Runs every hop the options allow and returns the report.
pub async fn trace(opts: &Options) -> Report {
    let mut hops = Vec::new();
    let mut ctx = Context::default();
    let mut fleet_failure = None;
    let fleet = match opts.controller_admin {
        Some(addr) => fleet(opts, addr)
            .await
            .map_err(|row| fleet_failure = Some(row))
            .ok(),
        None => None,
    };
    let (admin, cluster) = match (opts.admin, &fleet) {
        (None, Some(fleet)) => host_cluster(opts, fleet).await,
        (admin, _) => (
            admin.map(|addr| AdminAt {
                addr,
                token: opts.admin_token.clone(),
                announced_by: None,
            }),
            None,
        ),
    };
    admin_hops(opts, admin.as_ref(), &mut ctx, &mut hops).await;
    hops.extend(fleet_failure);

    let mut checks = proxy_checks(opts, fleet.as_ref(), cluster.as_deref());
    if checks.is_empty() {
        // The admin API knows where its own proxy listens.
        if let Some(addr) = own_listener(opts, &ctx, admin.as_ref().map(|a| a.addr)) {
            checks.push(ProxyCheck {
                addr: Some(addr),
                listed: None,
                probe: true,
            });
        }
    }
    let summary = proxy_hops(opts, &mut ctx, &checks, &mut hops).await;

    if opts.lbs.is_empty() {
        hops.push(HopResult::skip(Hop::Lb, "-", "not checked: no --lb given"));
    }
    for addr in &opts.lbs {
        let ex = fetch(request(opts, *addr, &opts.target.host)).await;
        hops.push(judge(
            Hop::Lb,
            addr.to_string(),
            ex,
            opts,
            &ctx,
            *addr,
            None,
        ));
    }

    let addresses = dns_hop(opts, &mut hops).await;
    client_hops(opts, &ctx, addresses, &mut hops).await;
    let report = Report::new(opts.target.clone(), ctx.version.clone(), hops);
    if opts.controller_admin.is_some() {
        report.with_proxies(summary)
    } else {
        report
    }
}

/// Where the admin API's own proxy serves the target's scheme.
fn own_listener(opts: &Options, ctx: &Context, admin: Option<SocketAddr>) -> Option<SocketAddr> {
    let (h, admin) = (ctx.health.as_ref()?, admin?);
    let listen = if opts.target.https {
        h.https_listen
    } else {
        Some(h.http_listen)
    };
    let listen = listen.filter(|l| l.port() != 0)?;
    let ip = if listen.ip().is_unspecified() {
        admin.ip()
    } else {
        listen.ip()
    };
    Some(SocketAddr::new(ip, listen.port()))
}

/// The request through each proxy, and (with a controller) each proxy's
/// version: the version rows first, as the hop order says, though they
/// depend on who answered. Returns the proxies' summary.
async fn proxy_hops(
    opts: &Options,
    ctx: &mut Context,
    checks: &[ProxyCheck<'_>],
    hops: &mut Vec<HopResult>,
) -> Vec<ProxySummary> {
    if checks.is_empty() {
        hops.push(HopResult::skip(
            Hop::Proxy,
            "-",
            "not checked: no --proxy given",
        ));
        return Vec::new();
    }
    // Concurrently, a bounded number at a time, so that a trace over many
    // proxies takes about one --timeout; in the checks' order.
    let shared: &Context = ctx;
    let rows: Vec<Option<HopResult>> = stream::iter(checks.iter().map(|c| async move {
        let expected = c
            .listed
            .as_ref()
            .and_then(Listed::status)
            .map(|s| s.id.as_str());
        let addr = c.addr.filter(|_| c.probe)?;
        let ex = fetch(request(opts, addr, &opts.target.host)).await;
        let target = match expected {
            Some(id) => format!("{addr} ({id})"),
            None => addr.to_string(),
        };
        Some(judge(Hop::Proxy, target, ex, opts, shared, addr, expected))
    }))
    .buffered(PROXIES_AT_ONCE)
    .collect()
    .await;
    for (c, row) in checks.iter().zip(&rows) {
        let answered = row
            .as_ref()
            .filter(|r| r.status.is_some())
            .and_then(|r| r.proxy_id.as_deref());
        if let Some(v) = c
            .listed
            .as_ref()
            .and_then(|l| version_row(l, c.addr, c.probe, answered))
        {
            hops.push(v);
        }
    }
    let scheme = if opts.target.https { "https" } else { "http" };
    let mut summary = Vec::with_capacity(checks.len());
    for (c, row) in checks.iter().zip(rows) {
        let status = c.listed.as_ref().and_then(Listed::status);
        let id = status.map(|s| s.id.as_str()).unwrap_or("-");
        let row = match row {
            // Gone from the controller and from its address: stopped,
            // which the version row says; nothing to blame on this hop.
            Some(r) if matches!(c.listed, Some(Listed::Departed(_))) && r.status.is_none() => {
                HopResult::skip(
                    Hop::Proxy,
                    r.target,
                    format!(
                        "not checked: {id} left the controller and nothing answers ({})",
                        r.evidence
                    ),
                )
            }
            Some(r) => r,
            None if !c.probe => HopResult::skip(
                Hop::Proxy,
                c.addr.map_or_else(|| id.to_owned(), |a| format!("{a} ({id})")),
                format!("not checked: {id} left the controller; the request is not sent through departed proxies (name one with --proxy to try it)"),
            ),
            None => HopResult::skip(
                Hop::Proxy,
                id,
                format!("not checked: {id} announces no {scheme} listener"),
            ),
        };
        if let Some(answered) = &row.proxy_id {
            if row.result == Outcome::Pass && !ctx.proxy_ids.contains(answered) {
                ctx.proxy_ids.push(answered.clone());
            }
        }
        summary.push(summarize(c, &row, scheme));
        hops.push(row);
    }
    summary
}

fn summarize(c: &ProxyCheck, row: &HopResult, scheme: &str) -> ProxySummary {
    let status = c.listed.as_ref().and_then(Listed::status);
    let (state, detail) = match &c.listed {
        None => ("unknown", None),
        Some(Listed::Unlisted) => (
            "unlisted",
            Some("the controller lists no proxy at this address".to_owned()),
        ),
        Some(Listed::Departed(d)) => (
            "departed",
            Some(format!(
                "left at {} ({})",
                humantime::format_rfc3339_seconds(d.departed_at),
                d.reason
            )),
        ),
        Some(Listed::Connected { proxy, published }) => {
            let published = published.map_or("-", short);
            match proxy.state {
                SyncState::Current => ("current", None),
                SyncState::Behind => ("behind", Some(format!("published is {published}"))),
                SyncState::Nacking => (
                    "nacking",
                    Some(format!(
                        "refuses {published}: {}",
                        proxy
                            .status
                            .last_nack
                            .as_ref()
                            .map_or("?", |n| n.reason.as_str())
                    )),
                ),
                SyncState::Unpublished => (
                    "unpublished",
                    Some("nothing is published to its service cluster".to_owned()),
                ),
            }
        }
    };
    ProxySummary {
        id: status
            .map(|s| s.id.to_string())
            .or_else(|| row.proxy_id.clone())
            .unwrap_or_else(|| "-".to_owned()),
        service_cluster: status.map(|s| s.service_cluster.clone()),
        address: c.addr.map(|a| format!("{scheme}://{a}")),
        request: row.result,
        status: row.status,
        state: state.to_owned(),
        applied_version: status
            .and_then(|s| s.applied_version.as_deref())
            .map(|v| short(v).to_owned()),
        detail,
    }
}

fn request<'a>(opts: &'a Options, addr: SocketAddr, host: &'a str) -> Fetch<'a> {
    let mut f = Fetch::get(addr, host, &opts.target.path, opts.timeout);
    f.tls = opts.tls.as_ref();
    f
}

async fn admin_hops(
    opts: &Options,
    admin: Option<&AdminAt>,
    ctx: &mut Context,
    hops: &mut Vec<HopResult>,
) {
    let host = &opts.target.host;
    let Some(at) = admin else {
        let why = "not checked: no --admin (only the proxy's admin API knows the route and can reach the tasks)";
        hops.push(HopResult::skip(Hop::Route, "-", why));
        hops.push(HopResult::skip(Hop::Upstream, "-", why));
        return;
    };
    let admin = at.addr;
    let client = at.client(opts);
    let target = match &at.announced_by {
        Some(id) => format!("admin {admin} ({id})"),
        None => format!("admin {admin}"),
    };
    // A proxy's announced admin API that wants a token it was not given:
    // not a failure of the path, a question the trace may not ask.
    let health = client.health().await;
    if let (Some(id), None, Err(AdminError::Unauthorized { .. })) =
        (&at.announced_by, &at.token, &health)
    {
        let why = format!(
            "not checked: {id}'s admin API at {admin} requires its token; give the proxies' [admin] token with --proxy-admin-token-file (or a proxy's admin API with --admin and --admin-token-file)"
        );
        hops.push(HopResult::skip(Hop::Route, target, why.clone()));
        hops.push(HopResult::skip(Hop::Upstream, "-", why));
        return;
    }
    let admin_failed = |e: AdminError, target: &str| {
        let (cause, remedy) = match (&e, &at.announced_by) {
            (AdminError::Unauthorized { .. }, Some(id)) => (
                format!("{id}'s admin API refuses the token from --proxy-admin-token-file"),
                format!("pass {id}'s [admin] token with --proxy-admin-token-file"),
            ),
            (AdminError::Unauthorized { .. }, None) => (
                "the admin API requires a bearer token".to_owned(),
                "pass its [admin] token with --admin-token-file (or --admin-token, PORTICO_ADMIN_TOKEN)".to_owned(),
            ),
            (AdminError::Unreachable { .. }, _) => (
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
    let health = match health {
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
        target.clone(),
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
            let mut row = admin_failed(e, &target);
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
        let mut row = judge(Hop::Client, addr.to_string(), ex, opts, ctx, addr, None);
        row.timings.dns_ms = dns_ms;
        hops.push(row);
    }
}

/// Judges an answer (or its absence) at a proxy, LB or client hop.
/// `expected_id`: the proxy the controller lists at `addr`.
fn judge(
    hop: Hop,
    target: String,
    ex: Exchange,
    opts: &Options,
    ctx: &Context,
    addr: SocketAddr,
    expected_id: Option<&str>,
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
    if let (Hop::Proxy, Some(expected), Some(id)) = (hop, expected_id, &row.proxy_id) {
        if id != expected {
            row.evidence = format!("{}: x-proxy-id is {id}, expected {expected}", answer.status);
            return row.failed(
                format!("another proxy than the controller's {expected} answers on {addr}"),
                "check which process listens on that address (a proxy restarted with another id?)",
            );
        }
    } else if let (Hop::Proxy, Some(h), Some(id)) = (hop, &ctx.health, &row.proxy_id) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Target;

    #[test]
    fn an_announced_loopback_admin_api_is_used_only_with_a_controller_on_loopback() {
        let target = Target::parse("web.test", false, None).unwrap();
        let mut opts = Options::new(target, None).unwrap();
        let local: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let remote: SocketAddr = "10.0.0.5:9090".parse().unwrap();
        opts.controller_admin = Some("10.0.0.1:9090".parse().unwrap());
        assert!(!usable_announced(&opts, local));
        assert!(!usable_announced(&opts, "[::1]:9090".parse().unwrap()));
        assert!(usable_announced(&opts, remote));
        opts.controller_admin = Some("127.0.0.1:9091".parse().unwrap());
        assert!(usable_announced(&opts, local));
        assert!(usable_announced(&opts, remote));
    }
}
