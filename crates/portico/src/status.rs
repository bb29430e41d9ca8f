//! `GET /` on the admin listener: one HTML page, made by Portico itself
//! with no external assets and no JavaScript, for a person who wants to see
//! at a glance what is routed where and how it is doing: hosts and paths
//! with their services and upstreams and their health, recent errors per
//! service, the config version and the last changes, certificates with
//! their expiry, and the Docker provider's state. It refreshes itself every
//! 10 s (`<meta http-equiv=refresh>`), and its tables scroll sideways on a
//! phone rather than squeezing.
//!
//! A controller's page ([`controller_page`]) has the same look and shows
//! who has what: each service cluster's published version, every proxy
//! with the version it serves (those behind or refusing it marked), where
//! it serves traffic, its last NACK, and the proxies that left lately.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use portico_cluster::{DepartedProxy, SyncState};
use portico_discovery::docker::DockerStats;
use portico_proxy::metrics::ServiceStats;
use portico_proxy::Proxy;
use portico_trace::api::ListedProxy;

/// One applied config version, as the page lists it.
pub struct Change {
    pub version: String,
    pub applied: SystemTime,
    pub source: String,
    /// One line: what changed.
    pub summary: String,
}

/// What the page shows besides the proxy's own state.
pub struct Context<'a> {
    pub started: Instant,
    /// Newest first.
    pub history: &'a [Change],
    /// `None`: the Docker provider is not configured.
    pub docker: Option<DockerState>,
}

/// The Docker provider's state.
pub struct DockerState {
    /// `None` until it has reached the engine.
    pub stats: Option<Arc<DockerStats>>,
    /// Its current findings: `service: label: problem`.
    pub findings: Vec<String>,
}

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// "3m ago", "in 2d": times relative to now, rounded for reading.
fn relative(t: SystemTime) -> String {
    let now = SystemTime::now();
    let (d, ago) = match now.duration_since(t) {
        Ok(d) => (d, true),
        Err(e) => (e.duration(), false),
    };
    let s = d.as_secs();
    let text = match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    };
    if ago {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    format!(
        "{}d {:02}h {:02}m",
        s / 86_400,
        (s % 86_400) / 3600,
        (s % 3600) / 60
    )
}

const STYLE: &str = r#"
:root { color-scheme: light dark; --ok:#1a7f37; --bad:#cf222e; --warn:#9a6700; --mute:#6e7781; --line:#d0d7de; --card:#f6f8fa; }
@media (prefers-color-scheme: dark) { :root { --ok:#3fb950; --bad:#f85149; --warn:#d29922; --mute:#8b949e; --line:#30363d; --card:#161b22; } }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { padding: 14px 20px; border-bottom: 1px solid var(--line); display: flex; flex-wrap: wrap; gap: 6px 24px; align-items: baseline; }
header h1 { font-size: 20px; margin: 0; }
header .meta { color: var(--mute); font-size: 13px; }
main { padding: 8px 20px 40px; max-width: 1400px; }
h2 { font-size: 16px; margin: 26px 0 8px; }
.tiles { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 12px; }
.tile { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 130px; }
.tile b { display: block; font-size: 22px; }
.tile span { color: var(--mute); font-size: 12px; }
.scroll { overflow-x: auto; border: 1px solid var(--line); border-radius: 8px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; color: var(--mute); font-weight: 600; background: var(--card); white-space: nowrap; }
tr:last-child td { border-bottom: 0; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, monospace; }
.up { color: var(--ok); font-weight: 600; }
.down { color: var(--bad); font-weight: 600; }
.warn { color: var(--warn); font-weight: 600; }
.mute { color: var(--mute); }
ul.upstreams { list-style: none; margin: 0; padding: 0; }
ul.upstreams li { margin: 1px 0; }
ul.upstreams code, .nowrap { white-space: nowrap; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
@media (max-width: 600px) { header, main { padding-left: 10px; padding-right: 10px; } .tile { min-width: 44%; } }
"#;

/// The document's head, up to `<body>`: the style, and a refresh every 10 s.
fn head(h: &mut String, title: &str) {
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=refresh content=10>\
         <title>Portico · {}</title><style>{STYLE}</style></head><body>",
        esc(title)
    );
}

/// Renders the page.
pub fn page(proxy: &Proxy, ctx: &Context) -> String {
    let snap = proxy.snapshot();
    let identity = proxy.identity();
    let proxy_id = snap.proxy_id.to_str().unwrap_or("-").to_owned();
    let mut h = String::with_capacity(32 * 1024);
    head(&mut h, &proxy_id);
    let _ = write!(
        h,
        "<header><h1>Portico · <span id=proxy-id>{id}</span></h1>\
         <span class=meta>{info}</span>\
         <span class=meta>config <code id=version>{version}</code></span>\
         <span class=meta>up {up}</span>\
         <span class=meta>as of {now}</span></header><main>",
        id = esc(&proxy_id),
        info = esc(&identity.server_info),
        version = snap.version,
        up = uptime(ctx.started.elapsed()),
        now = rfc3339(SystemTime::now()),
    );

    // Services, once each (several routes may share one).
    let mut services: Vec<(&str, &Arc<ServiceStats>)> = Vec::new();
    for pool in &snap.pools {
        if !services.iter().any(|(_, s)| Arc::ptr_eq(s, &pool.stats)) {
            services.push((&pool.label, &pool.stats));
        }
    }
    let mut upstreams = 0;
    let mut down = 0;
    let mut seen: Vec<*const portico_proxy::upstream::Upstream> = Vec::new();
    for u in snap.pools.iter().flat_map(|p| p.upstreams.iter()) {
        if !seen.contains(&Arc::as_ptr(u)) {
            seen.push(Arc::as_ptr(u));
            upstreams += 1;
            down += usize::from(u.health.is_down());
        }
    }
    let total: u64 = services
        .iter()
        .map(|(_, s)| s.by_status().iter().map(|(_, n)| n).sum::<u64>())
        .sum();
    let errors: u64 = services.iter().map(|(_, s)| s.by_status()[4].1).sum();
    let tiles = [
        ("services", snap.config.services.len().to_string(), ""),
        ("hosts", snap.table.hosts().count().to_string(), ""),
        (
            "upstreams up",
            format!("{} / {upstreams}", upstreams - down),
            if down > 0 { "down" } else { "up" },
        ),
        ("requests", total.to_string(), ""),
        (
            "5xx answers",
            errors.to_string(),
            if errors > 0 { "warn" } else { "" },
        ),
        ("in flight", proxy.requests_in_flight().to_string(), ""),
    ];
    tile_row(&mut h, tiles);

    // Routes: host and path → services → upstreams.
    h.push_str(
        "<h2>Routes</h2><div class=scroll><table id=routes><thead><tr>\
         <th>hosts</th><th>path</th><th>services</th><th>upstreams</th>\
         <th class=num>2xx</th><th class=num>4xx</th><th class=num>5xx</th></tr></thead><tbody>",
    );
    if snap.pools.is_empty() {
        h.push_str("<tr><td colspan=7 class=mute>no routes: the config has no services with hosts</td></tr>");
    }
    for (i, pool) in snap.pools.iter().enumerate() {
        let route = snap.table.route(i);
        let hosts: Vec<String> = route.hosts.iter().map(|p| esc(&p.to_string())).collect();
        let path = route.path.as_deref().map_or_else(
            || "<span class=mute>/ (all)</span>".to_owned(),
            |p| format!("<code>{}</code>", esc(p)),
        );
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=nowrap>{path}</td><td>{}</td><td><ul class=upstreams>",
            hosts.join("<br>"),
            esc(&pool.label)
        );
        if pool.upstreams.is_empty() {
            h.push_str("<li class=down>none</li>");
        }
        for u in &pool.upstreams {
            let report = u.health.report();
            let down = u.health.is_down();
            let class = if down { "down" } else { "up" };
            // Without active checks an upstream is `unknown` until it
            // fails: taking traffic, it reads as up.
            let shown = if !down && report.state == "unknown" {
                "up"
            } else {
                report.state
            };
            let (open, idle) = u.connections();
            let mut detail = String::new();
            if let Some(reason) = &report.reason {
                let _ = write!(detail, " — {}", esc(reason));
            }
            if let Some(until) = report.until {
                let _ = write!(detail, " (until {})", relative(until));
            }
            if let Some(p) = u.stats.last_probe() {
                let _ = write!(
                    detail,
                    " · <span class={} data-probe=\"{}\" title=\"probed {}\">probe {}: {} in {} ms</span>",
                    if p.ok { "up" } else { "down" },
                    if p.ok { "ok" } else { "failing" },
                    rfc3339(p.at),
                    if p.ok { "ok" } else { "failing" },
                    esc(&p.said),
                    p.took.as_millis()
                );
            }
            let _ = write!(
                h,
                "<li data-upstream=\"{addr}\" data-state=\"{state}\"><code>{addr}</code> \
                 <span class={class}>{shown}</span>{detail} \
                 <span class=\"mute nowrap\">{open} conn, {idle} idle</span></li>",
                addr = u.addr,
                state = report.state,
            );
        }
        let by = pool.stats.by_status();
        let _ = write!(
            h,
            "</ul></td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td></tr>",
            by[1].1, by[3].1, by[4].1
        );
    }
    h.push_str("</tbody></table></div>");

    // Recent errors.
    h.push_str("<h2>Recent errors</h2>");
    let mut any = false;
    for (name, stats) in &services {
        let recent = stats.recent_errors();
        if recent.is_empty() {
            continue;
        }
        if !any {
            h.push_str(
                "<div class=scroll><table id=errors><thead><tr><th>service</th><th>when</th>\
                 <th>status</th><th>what</th></tr></thead><tbody>",
            );
            any = true;
        }
        for e in recent.iter().rev() {
            let _ = write!(
                h,
                "<tr><td>{}</td><td title=\"{}\">{}</td><td class=down>{}</td><td>{}</td></tr>",
                esc(name),
                rfc3339(e.at),
                relative(e.at),
                e.status,
                esc(&e.message)
            );
        }
    }
    if any {
        h.push_str("</tbody></table></div>");
    } else {
        h.push_str("<p class=mute>none since the proxy started</p>");
    }

    // Config history.
    h.push_str(
        "<h2>Config versions</h2><div class=scroll><table id=history><thead><tr>\
         <th>version</th><th>applied</th><th>source</th><th>what changed</th></tr></thead><tbody>",
    );
    for c in ctx.history {
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td title=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.version),
            rfc3339(c.applied),
            relative(c.applied),
            esc(&c.source),
            esc(&c.summary)
        );
    }
    h.push_str("</tbody></table></div>");

    // Certificates.
    h.push_str("<h2>Certificates</h2>");
    let mut certs: Vec<_> = snap.certs.0.loaded().collect();
    certs.sort_by_key(|c| c.not_after);
    if certs.is_empty() && snap.certs.0.problems.is_empty() {
        h.push_str("<p class=mute>none loaded</p>");
    } else {
        h.push_str(
            "<div class=scroll><table id=certificates><thead><tr><th>owner</th><th>names</th>\
             <th>file</th><th>expires</th></tr></thead><tbody>",
        );
        for c in certs {
            let left = c
                .not_after
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let class = if left < Duration::from_secs(7 * 86_400) {
                "down"
            } else if left < Duration::from_secs(30 * 86_400) {
                "warn"
            } else {
                "up"
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td>\
                 <td class={class} title=\"{}\">{}</td></tr>",
                esc(&c.owner),
                esc(&c.names.join(", ")),
                esc(&c.file),
                rfc3339(c.not_after),
                relative(c.not_after)
            );
        }
        for p in &snap.certs.0.problems {
            let kept = if p.kept_previous {
                " (the previous certificate is still served)"
            } else {
                ""
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=down colspan=2>{}{kept}</td><td><code>{}</code></td></tr>",
                esc(&p.owner),
                esc(&p.message),
                esc(&p.file)
            );
        }
        h.push_str("</tbody></table></div>");
    }

    docker_section(&mut h, ctx.docker.as_ref());
    h.push_str(
        "<p class=mute>Also: <a href=\"/metrics\">/metrics</a> · <a href=\"/routes\">/routes</a> · \
         <a href=\"/config/versions\">/config/versions</a> · refreshes every 10 s</p></main></body></html>",
    );
    h
}

/// The Docker provider's state: connected, its activity, its findings.
fn docker_section(h: &mut String, docker: Option<&DockerState>) {
    h.push_str("<h2>Docker provider</h2>");
    match docker {
        None => h.push_str("<p class=mute>not configured (no <code>[docker]</code> table)</p>"),
        Some(d) => {
            h.push_str("<div id=docker>");
            match &d.stats {
                None => h.push_str("<p class=down>the engine has not been reached yet</p>"),
                Some(s) => {
                    let connected = s.connected.load(Relaxed);
                    let last = s.last_event_unix.load(Relaxed);
                    let last = if last == 0 {
                        "none yet".to_owned()
                    } else {
                        relative(SystemTime::UNIX_EPOCH + Duration::from_secs(last))
                    };
                    let _ = write!(
                        h,
                        "<p><span class={}>{}</span> · last event {last} · {} events · {} syncs \
                         ({} failed) · {} damped</p>",
                        if connected { "up" } else { "down" },
                        if connected {
                            "watching events"
                        } else {
                            "event stream down, retrying"
                        },
                        s.events.load(Relaxed),
                        s.syncs.load(Relaxed),
                        s.sync_failures.load(Relaxed),
                        s.damped.load(Relaxed),
                    );
                }
            }
            if d.findings.is_empty() {
                h.push_str("<p class=mute>no findings: every labelled service is routed</p>");
            } else {
                h.push_str("<ul>");
                for f in &d.findings {
                    let _ = write!(h, "<li class=warn>{}</li>", esc(f));
                }
                h.push_str("</ul>");
            }
            h.push_str("</div>");
        }
    }
}

/// What the controller's page shows: the `/proxies` document and the
/// controller's own state.
pub struct ControllerContext<'a> {
    pub started: Instant,
    pub server_info: &'a str,
    /// The controller's host name, as the page's title.
    pub name: &'a str,
    /// Where proxies hold their streams.
    pub listen: std::net::SocketAddr,
    pub proxies: &'a portico_trace::api::Proxies,
    /// `None`: the Docker provider is not configured.
    pub docker: Option<DockerState>,
}

/// The first 12 hex digits of a version as the stream writes it, as the
/// logs and the proxies' pages show versions.
fn short(version: &str) -> &str {
    version.get(..12).unwrap_or(version)
}

/// What a proxy's state cell says, and its class.
fn sync_cell(p: &ListedProxy, published: Option<&str>) -> (String, &'static str) {
    let applied = p.status.applied_version.as_deref().map_or("none", short);
    match p.state {
        SyncState::Current => ("current".to_owned(), "up"),
        SyncState::Behind => (
            format!(
                "behind: serves {applied}, published {}",
                published.map_or("-", short)
            ),
            "warn",
        ),
        SyncState::Nacking => (
            format!(
                "refuses {} (NACK); serves {applied}",
                published.map_or("-", short)
            ),
            "down",
        ),
        SyncState::Unpublished => ("nothing published to its cluster".to_owned(), "mute"),
    }
}

/// Renders the controller's page.
pub fn controller_page(ctx: &ControllerContext) -> String {
    let doc = ctx.proxies;
    let mut h = String::with_capacity(16 * 1024);
    head(&mut h, &format!("controller {}", ctx.name));
    let _ = write!(
        h,
        "<header><h1>Portico controller · <span id=controller>{name}</span></h1>\
         <span class=meta>{info}</span>\
         <span class=meta>streams on <code>{listen}</code></span>\
         <span class=meta>up {up}</span>\
         <span class=meta>as of {now}</span></header><main>",
        name = esc(ctx.name),
        info = esc(ctx.server_info),
        listen = ctx.listen,
        up = uptime(ctx.started.elapsed()),
        now = rfc3339(SystemTime::now()),
    );
    let count = |state| doc.proxies.iter().filter(|p| p.state == state).count();
    let (current, behind, nacking) = (
        count(SyncState::Current),
        count(SyncState::Behind),
        count(SyncState::Nacking),
    );
    let tiles = [
        ("proxies", doc.proxies.len().to_string(), ""),
        (
            "serve the published version",
            format!("{current} / {}", doc.proxies.len()),
            if current == doc.proxies.len() {
                "up"
            } else {
                "warn"
            },
        ),
        (
            "behind",
            behind.to_string(),
            if behind > 0 { "warn" } else { "" },
        ),
        (
            "refusing (NACK)",
            nacking.to_string(),
            if nacking > 0 { "down" } else { "" },
        ),
        (
            "left in the last hour",
            doc.departed.len().to_string(),
            if doc.departed.is_empty() { "" } else { "warn" },
        ),
    ];
    tile_row(&mut h, tiles);

    h.push_str(
        "<h2>Service clusters</h2><div class=scroll><table id=clusters><thead><tr>\
         <th>service cluster</th><th>published version</th><th class=num>proxies</th>\
         <th class=num>current</th></tr></thead><tbody>",
    );
    if doc.clusters.is_empty() {
        h.push_str("<tr><td colspan=4 class=mute>nothing published yet</td></tr>");
    }
    for c in &doc.clusters {
        let class = if c.current == c.proxies { "up" } else { "warn" };
        let _ = write!(
            h,
            "<tr data-cluster=\"{name}\"><td>{name}</td><td><code>{}</code></td>\
             <td class=num>{}</td><td class=\"num {class}\">{}</td></tr>",
            esc(&c.version),
            c.proxies,
            c.current,
            name = esc(&c.service_cluster),
        );
    }
    h.push_str("</tbody></table></div>");

    h.push_str(
        "<h2>Proxies</h2><div class=scroll><table id=proxies><thead><tr>\
         <th>proxy</th><th>service cluster</th><th>version</th><th>state</th>\
         <th>serves traffic at</th><th>admin</th><th>last NACK</th><th>connected</th>\
         <th>last heartbeat</th><th>stream from</th></tr></thead><tbody>",
    );
    if doc.proxies.is_empty() {
        h.push_str("<tr><td colspan=10 class=mute>no proxy is connected</td></tr>");
    }
    for p in &doc.proxies {
        let s = &p.status;
        let published = doc
            .clusters
            .iter()
            .find(|c| c.service_cluster == s.service_cluster)
            .map(|c| c.version_full.as_str());
        let (state, class) = sync_cell(p, published);
        let listeners: Vec<String> = s
            .listeners
            .iter()
            .map(|l| format!("<code>{}</code>", esc(&l.to_string())))
            .collect();
        let nack = match &s.last_nack {
            None => "<span class=mute>none</span>".to_owned(),
            Some(n) => format!(
                "<code>{}</code> <span title=\"{}\">{}</span>: {}",
                esc(short(&n.version)),
                rfc3339(n.at),
                relative(n.at),
                esc(&n.reason)
            ),
        };
        let _ = write!(
            h,
            "<tr data-proxy=\"{id}\" data-state=\"{sync}\"><td>{id}</td><td>{cluster}</td>\
             <td><code>{version}</code></td><td class={class}>{state}</td><td>{listeners}</td>\
             <td>{admin}</td><td>{nack}</td><td title=\"{since}\">{since_rel}</td>\
             <td title=\"{beat}\">{beat_rel}</td><td><code>{from}</code></td></tr>",
            id = esc(s.id.as_str()),
            sync = p.state.as_str(),
            cluster = esc(&s.service_cluster),
            version = s.applied_version.as_deref().map_or("none", short),
            state = esc(&state),
            listeners = if listeners.is_empty() {
                "<span class=mute>not announced</span>".to_owned()
            } else {
                listeners.join("<br>")
            },
            admin = s.admin.map_or_else(
                || "<span class=mute>none</span>".to_owned(),
                |a| format!("<code>{a}</code>")
            ),
            since = rfc3339(s.connected_since),
            since_rel = relative(s.connected_since),
            beat = rfc3339(s.last_heartbeat),
            beat_rel = relative(s.last_heartbeat),
            from = s.address,
        );
    }
    h.push_str("</tbody></table></div>");

    h.push_str("<h2>Left in the last hour</h2>");
    if doc.departed.is_empty() {
        h.push_str("<p class=mute>none</p>");
    } else {
        h.push_str(
            "<div class=scroll><table id=departed><thead><tr><th>proxy</th>\
             <th>service cluster</th><th>last version</th><th>left</th><th>why</th>\
             <th>stream from</th></tr></thead><tbody>",
        );
        for d in &doc.departed {
            departed_row(&mut h, d);
        }
        h.push_str("</tbody></table></div>");
    }

    docker_section(&mut h, ctx.docker.as_ref());
    h.push_str(
        "<p class=mute>Also: <a href=\"/proxies\">/proxies</a> · <a href=\"/metrics\">/metrics</a> · \
         <a href=\"/health\">/health</a> · refreshes every 10 s</p></main></body></html>",
    );
    h
}

fn departed_row(h: &mut String, d: &DepartedProxy) {
    let s = &d.status;
    let _ = write!(
        h,
        "<tr data-proxy=\"{id}\"><td>{id}</td><td>{cluster}</td><td><code>{version}</code></td>\
         <td title=\"{at}\" class=warn>{at_rel}</td><td>{why}</td><td><code>{from}</code></td></tr>",
        id = esc(s.id.as_str()),
        cluster = esc(&s.service_cluster),
        version = s.applied_version.as_deref().map_or("none", short),
        at = rfc3339(d.departed_at),
        at_rel = relative(d.departed_at),
        why = esc(&d.reason),
        from = s.address,
    );
}

/// A row of figures: (label, value, CSS class) each.
fn tile_row<const N: usize>(h: &mut String, tiles: [(&str, String, &str); N]) {
    h.push_str("<div class=tiles>");
    for (label, value, class) in tiles {
        let _ = write!(
            h,
            "<div class=tile><b class=\"{class}\">{}</b><span>{label}</span></div>",
            esc(&value)
        );
    }
    h.push_str("</div>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }

    #[test]
    fn relative_times_read_well() {
        let now = SystemTime::now();
        assert_eq!(relative(now - Duration::from_secs(90)), "1m ago");
        assert!(relative(now + Duration::from_secs(3 * 86_400 + 60)).starts_with("in 3d"));
        assert_eq!(uptime(Duration::from_secs(90_061)), "1d 01h 01m");
    }
}
