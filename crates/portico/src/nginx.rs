//! A config version as an nginx.conf, in the shape Interlock's operators
//! know from `docker config inspect --pretty com.docker.interlock.proxy.<id>`:
//! one `upstream up-<host>` per host (and path), one `server` per host and
//! listener, `proxy_pass http://up-<host>`, Interlock's response headers.
//!
//! It is built from the same routing table the proxy compiles, so it routes
//! as Portico does: exact names before wildcards, a context root on segment
//! boundaries (`location = /app` and `location /app/`), the longest first,
//! 404 for a host's unknown paths, 503 for unknown hosts, redirects before
//! paths, `ssl_only` before the context root's own 301. What nginx cannot
//! do, or does differently, is said in a `# portico:` comment where it
//! would be, never left out silently.
//!
//! Every value taken from the config is written so that nginx reads it as
//! one literal token: bare when it holds only harmless characters, else
//! quoted with `"` and `\` escaped, and (in directives that expand
//! variables) each `$` spelt `${portico_dollar}`; a value with control
//! characters is not written at all. A hostile label cannot add a directive.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use portico_discovery::docker::CONFIG_OBJECT_PREFIX;
use portico_model::{
    Balance, Config, HostPattern, Route, RouteId, RoutingTable, TlsFiles, UpstreamProtocol, Version,
};

pub struct Options<'a> {
    /// The directory relative file paths in the config are relative to
    /// (the config file's); nginx resolves them against its own prefix.
    pub base_dir: Option<&'a Path>,
    /// Sent as `x-server-info`, as the proxy sends it.
    pub server_info: &'a str,
}

/// The config as an nginx.conf (a whole file: `events` and `http`).
pub fn render(config: &Config, opts: &Options<'_>) -> String {
    let table = RoutingTable::build(config);
    // The proxy's own certificate checks, so that a certificate Portico
    // refuses is refused here too. Quietly: rendering is no time to log.
    let (problems, _) =
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            portico_proxy::tls::check_certificates(config)
        });
    let mut w = Writer {
        config,
        opts,
        table: &table,
        refused: problems.into_iter().map(|p| (p.file, p.message)).collect(),
        maps: String::new(),
        upstreams: String::new(),
        servers: String::new(),
        names: HashSet::new(),
        upstream_of: HashMap::new(),
        hash_maps: 0,
    };
    w.write_sites();
    w.write_default_servers();
    w.finish(Version::of(config))
}

/// Quotes `v` for nginx, or `None` if it holds control characters (which
/// no nginx token can carry safely). `expand`: the directive expands
/// variables, so a literal `$` must be spelt through `$portico_dollar`.
fn quoted(v: &str, expand: bool) -> Option<String> {
    let bare = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:*".contains(&b));
    if bare {
        return Some(v.to_owned());
    }
    Some(format!("\"{}\"", escape(v, expand)?))
}

/// The inside of a quoted value (see [`quoted`]).
fn escape(v: &str, expand: bool) -> Option<String> {
    if v.bytes().any(|b| b.is_ascii_control()) {
        return None;
    }
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '$' if expand => out.push_str("${portico_dollar}"),
            c => out.push(c),
        }
    }
    Some(out)
}

/// A quoted `value` followed by nginx variables (`$request_uri`), for `return`.
fn then_vars(value: &str, vars: &str) -> Option<String> {
    Some(format!("\"{}{vars}\"", escape(value, true)?))
}

/// A value for a directive that reads it literally (`server_name`,
/// `location`, map keys).
fn lit(v: &str) -> Option<String> {
    quoted(v, false)
}

/// A value for a directive that expands variables (`add_header`,
/// `return`, `ssl_certificate`, ...).
fn var(v: &str) -> Option<String> {
    quoted(v, true)
}

/// Text for a comment: one line, whatever the value held.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn note(out: &mut String, indent: &str, text: &str) {
    let _ = writeln!(out, "{indent}# portico: {}", clean(text));
}

/// nginx's time syntax: seconds, or milliseconds when not whole.
fn time(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The characters of `v` an upstream name may hold (it is also a host
/// name in `proxy_pass http://NAME`), others as `_`.
fn name_part(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What a server block is for: the listener, and how it learns a client's address.
struct Listener {
    listen: String,
    tls: bool,
    proxy_protocol: bool,
}

struct Writer<'a> {
    config: &'a Config,
    opts: &'a Options<'a>,
    table: &'a RoutingTable,
    /// Certificate files the proxy refuses, with why.
    refused: HashMap<String, String>,
    maps: String,
    upstreams: String,
    servers: String,
    /// Upstream names taken.
    names: HashSet<String>,
    /// (host, route) → its upstream's name.
    upstream_of: HashMap<(String, RouteId), String>,
    hash_maps: usize,
}

impl Writer<'_> {
    fn listeners(&self) -> Vec<Listener> {
        let p = &self.config.proxy;
        let mut out = vec![Listener {
            listen: p.http_listen.to_string(),
            tls: false,
            proxy_protocol: p.http_proxy_protocol,
        }];
        if let Some(https) = p.https_listen {
            out.push(Listener {
                listen: https.to_string(),
                tls: true,
                proxy_protocol: p.https_proxy_protocol,
            });
        }
        out
    }

    /// A file path as nginx must be given it: absolute, from the config
    /// file's directory.
    fn path(&self, file: &str) -> String {
        match self.opts.base_dir {
            Some(base) if !Path::new(file).is_absolute() => {
                base.join(file).to_string_lossy().into_owned()
            }
            _ => file.to_owned(),
        }
    }

    fn write_sites(&mut self) {
        let table = self.table;
        for site in table.sites() {
            let hosts: Vec<String> = site.hosts.iter().map(ToString::to_string).collect();
            if site.passthrough {
                let mut out = String::new();
                note(
                    &mut out,
                    "    ",
                    &format!(
                        "{} ({}) is TLS passthrough: nginx relays TLS by SNI only in a stream {{}} \
                         block with ssl_preread, on a port of its own, so it is not rendered",
                        site.services.join("+"),
                        hosts.join(", ")
                    ),
                );
                out.push('\n');
                self.servers.push_str(&out);
                continue;
            }
            for host in &site.hosts {
                for listener in self.listeners() {
                    self.write_host_server(site, host, &listener);
                }
            }
        }
    }

    /// The certificate Portico presents for `host` (of `site`): the site's,
    /// else that of the most specific wildcard above it with one, else the
    /// default.
    fn cert_for<'s>(
        &'s self,
        site: &'s portico_model::Site,
        host: &HostPattern,
    ) -> Option<(&'s TlsFiles, &'static str)> {
        let table = self.table;
        if let Some(tls) = &site.tls {
            return Some((tls, "its own"));
        }
        let name = match host {
            HostPattern::Exact(n) | HostPattern::Wildcard(n) => n.as_str(),
        };
        let mut rest = name;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            let above = HostPattern::Wildcard(rest.to_owned());
            let found = table
                .sites()
                .iter()
                .find(|s| s.hosts.contains(&above))
                .and_then(|s| s.tls.as_ref());
            if let Some(tls) = found {
                return Some((tls, "the wildcard's above it"));
            }
        }
        self.config
            .proxy
            .default_tls
            .as_ref()
            .map(|t| (t, "the default"))
    }

    /// `ssl_certificate` lines for `files`, or why nginx can't have them
    /// (the handshake is then refused, as Portico refuses it).
    fn certificate(&self, files: &TlsFiles, indent: &str) -> Result<String, String> {
        for f in [&files.cert, &files.key] {
            if let Some(object) = f.strip_prefix(CONFIG_OBJECT_PREFIX) {
                return Err(format!(
                    "certificate material from Docker config object {object:?}: nginx reads files; \
                     write it to one and name it in ssl_certificate/ssl_certificate_key"
                ));
            }
            if let Some(why) = self.refused.get(f) {
                return Err(format!(
                    "Portico refuses {f:?} ({why}), so the handshake fails"
                ));
            }
        }
        let mut out = String::new();
        let (Some(cert), Some(key)) = (var(&self.path(&files.cert)), var(&self.path(&files.key)))
        else {
            return Err("a certificate path holds control characters".into());
        };
        let _ = writeln!(out, "{indent}ssl_certificate {cert};");
        let _ = writeln!(out, "{indent}ssl_certificate_key {key};");
        if let Some(ocsp) = files.ocsp.as_ref().and_then(|o| var(&self.path(o))) {
            let _ = writeln!(out, "{indent}ssl_stapling on;");
            let _ = writeln!(out, "{indent}ssl_stapling_file {ocsp};");
        }
        Ok(out)
    }

    fn listen_line(&self, listener: &Listener, default: bool) -> String {
        let mut line = format!("        listen {}", listener.listen);
        if listener.tls {
            line.push_str(" ssl http2");
        }
        if listener.proxy_protocol {
            line.push_str(" proxy_protocol");
        }
        if default {
            line.push_str(" default_server");
        }
        line.push_str(";\n");
        if listener.proxy_protocol {
            line.push_str("        real_ip_header proxy_protocol;\n");
            if self.config.proxy.trusted_proxies.is_empty() {
                // Portico believes the header from any peer when no
                // trusted_proxies are set (the port must be firewalled).
                line.push_str(
                    "        set_real_ip_from 0.0.0.0/0;\n        set_real_ip_from ::/0;\n",
                );
            }
        }
        line
    }

    fn write_host_server(
        &mut self,
        site: &portico_model::Site,
        host: &HostPattern,
        listener: &Listener,
    ) {
        let table = self.table;
        let name = host.to_string();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "    # {} for {} ({})",
            if listener.tls { "HTTPS" } else { "HTTP" },
            name,
            clean(&site.services.join("+"))
        );
        let cert = if listener.tls {
            match self.cert_for(site, host) {
                Some((files, whose)) => Some(
                    self.certificate(files, "        ")
                        .map(|lines| (lines, whose)),
                ),
                None => {
                    note(
                        &mut out,
                        "    ",
                        "no certificate covers it: the default server refuses its handshakes, as Portico does",
                    );
                    out.push('\n');
                    self.servers.push_str(&out);
                    return;
                }
            }
        } else {
            None
        };
        out.push_str("    server {\n");
        out.push_str(&self.listen_line(listener, false));
        // Host names are validated to [a-z0-9_-.] and a leading "*.", which
        // nginx reads as the same wildcard.
        let _ = writeln!(
            out,
            "        server_name {};",
            lit(&name).unwrap_or_default()
        );
        match cert {
            Some(Ok((lines, whose))) => {
                if whose != "its own" {
                    let _ = writeln!(out, "        # certificate: {whose}");
                }
                out.push_str(&lines);
            }
            Some(Err(why)) => {
                note(&mut out, "        ", &why);
                out.push_str("        ssl_reject_handshake on;\n    }\n\n");
                self.servers.push_str(&out);
                return;
            }
            None => {}
        }
        let scheme = if listener.tls { "https" } else { "http" };
        let redirect = site
            .redirects
            .iter()
            .find(|r| r.from_scheme == scheme && HostPattern::Exact(r.from_host.clone()) == *host);
        if let Some(r) = redirect {
            out.push_str(&self.headers("        ", None, listener));
            // Interlock's own form: `return 302 target$request_uri`.
            match then_vars(&r.to, "$request_uri") {
                Some(target) => {
                    let _ = writeln!(out, "        return 302 {target};");
                }
                None => note(
                    &mut out,
                    "        ",
                    "a redirect target holds control characters",
                ),
            }
            out.push_str("    }\n\n");
            self.servers.push_str(&out);
            return;
        }
        let mut catch_all = false;
        for &route_id in &site.rules {
            catch_all |= table.route(route_id).path.is_none();
            let upstream = self.upstream_for(&name, route_id);
            out.push_str(&self.locations(route_id, &upstream, listener));
        }
        if !catch_all {
            // Portico answers 404 for a served host's other paths.
            out.push_str("        location / {\n            return 404;\n");
            out.push_str(&self.headers("            ", None, listener));
            out.push_str("        }\n");
        }
        out.push_str("    }\n\n");
        self.servers.push_str(&out);
    }

    /// The servers for hosts nobody claims: the default backend, or 503.
    fn write_default_servers(&mut self) {
        let default_route = self.table.default_backend();
        let upstream = default_route.map(|r| self.upstream_for("default", r));
        for listener in self.listeners() {
            let mut out = String::new();
            let _ = writeln!(
                out,
                "    # {} for hosts no service claims",
                if listener.tls { "HTTPS" } else { "HTTP" }
            );
            out.push_str("    server {\n");
            out.push_str(&self.listen_line(&listener, true));
            out.push_str("        server_name _;\n");
            if listener.tls {
                let default_cert = self
                    .config
                    .proxy
                    .default_tls
                    .as_ref()
                    .map(|f| self.certificate(f, "        "));
                match default_cert {
                    Some(Ok(lines)) => out.push_str(&lines),
                    Some(Err(why)) => {
                        note(&mut out, "        ", &why);
                        out.push_str("        ssl_reject_handshake on;\n");
                    }
                    None => {
                        // Portico fails such handshakes with unrecognized_name.
                        out.push_str("        ssl_reject_handshake on;\n");
                    }
                }
            }
            let mut catch_all = false;
            if let (Some(route_id), Some(upstream)) = (default_route, &upstream) {
                catch_all = self.table.route(route_id).path.is_none();
                out.push_str(&self.locations(route_id, upstream, &listener));
            }
            if !catch_all {
                out.push_str("        location / {\n            return 503;\n");
                out.push_str(&self.headers("            ", None, &listener));
                out.push_str("        }\n");
            }
            out.push_str("    }\n\n");
            self.servers.push_str(&out);
        }
    }

    /// The upstream of `route` as reached through `host`, written on first use.
    fn upstream_for(&mut self, host: &str, route_id: RouteId) -> String {
        if let Some(name) = self.upstream_of.get(&(host.to_owned(), route_id)) {
            return name.clone();
        }
        let route = self.table.route(route_id);
        let mut base = format!("up-{}", name_part(&host.replace('*', "wildcard")));
        if let Some(path) = &route.path {
            base.push_str(&name_part(path));
        }
        let mut name = base.clone();
        let mut n = 1;
        while !self.names.insert(name.clone()) {
            n += 1;
            name = format!("{base}-{n}");
        }
        self.upstream_of
            .insert((host.to_owned(), route_id), name.clone());
        if !route.upstreams.is_empty() {
            let block = self.upstream_block(&name, route);
            self.upstreams.push_str(&block);
        }
        name
    }

    fn upstream_block(&mut self, name: &str, route: &Route) -> String {
        let p = &self.config.proxy;
        let mut out = String::new();
        let _ = writeln!(out, "    upstream {name} {{");
        let _ = writeln!(out, "        zone {name}_backend 64k;");
        match (&route.sticky_cookie, route.ip_hash) {
            (Some(cookie), false) => {
                let key = self.cookie_var(cookie);
                let _ = writeln!(out, "        hash {key} consistent;");
            }
            (Some(cookie), true) => {
                // The cookie when the request has it, else the client's address.
                let cookie = self.cookie_var(cookie);
                self.hash_maps += 1;
                let var_name = format!("$portico_hash_{}", self.hash_maps);
                let _ = writeln!(
                    self.maps,
                    "    map {cookie} {var_name} {{\n        \"\" $remote_addr;\n        default {cookie};\n    }}\n"
                );
                let _ = writeln!(out, "        hash {var_name} consistent;");
            }
            (None, true) => {
                note(
                    &mut out,
                    "        ",
                    "ip_hash: nginx keys IPv4 clients by their first three octets; Portico by the whole address",
                );
                out.push_str("        ip_hash;\n");
            }
            (None, false) => {
                if route.balance == Balance::LeastRequest {
                    // Two random upstreams, the less busy: Portico's least_request.
                    out.push_str("        random two least_conn;\n");
                }
            }
        }
        if route.sticky_cookie.is_some() && route.balance == Balance::LeastRequest {
            note(
                &mut out,
                "        ",
                "requests without the cookie are balanced round robin here, least_request in Portico",
            );
        }
        if let Some(h) = &route.health {
            note(
                &mut out,
                "        ",
                &format!(
                    "active health checks (GET {} every {}) need nginx Plus; only passive checks below",
                    h.path,
                    time(h.interval)
                ),
            );
        }
        if let Some(n) = route.max_requests {
            note(
                &mut out,
                "        ",
                &format!(
                    "max_requests = {n} (503 beyond it) has no nginx equivalent for a whole pool"
                ),
            );
        }
        if route
            .upstream_options
            .iter()
            .any(|o| o.protocol != UpstreamProtocol::Http1)
        {
            note(
                &mut out,
                "        ",
                "upstream_protocol h2/h2c: nginx proxies HTTP/1.1 to upstreams (grpc_pass speaks HTTP/2, for gRPC only)",
            );
        }
        // Passive health: nginx ejects after max_fails failures within
        // fail_timeout, for fail_timeout.
        let (fails, timeout) = (p.outlier_consecutive_failures, p.outlier_base_ejection_time);
        for u in &route.upstreams {
            let _ = writeln!(
                out,
                "        server {u} max_conns={} max_fails={fails} fail_timeout={};",
                p.max_connections_per_upstream,
                time(timeout)
            );
        }
        if p.idle_connections_per_upstream > 0 {
            let _ = writeln!(
                out,
                "        keepalive {};",
                p.idle_connections_per_upstream
            );
        }
        out.push_str("    }\n\n");
        out
    }

    /// The variable holding a cookie's value: `$cookie_NAME` when the name
    /// is one nginx can spell so, else a map reading the Cookie header.
    fn cookie_var(&mut self, cookie: &str) -> String {
        if !cookie.is_empty()
            && cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return format!("$cookie_{cookie}");
        }
        self.hash_maps += 1;
        let var_name = format!("$portico_cookie_{}", self.hash_maps);
        let escaped: String = cookie
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_string()
                } else {
                    format!("\\{c}")
                }
            })
            .collect();
        let pattern =
            lit(&format!("~(?:^|;)\\s*{escaped}=(?<portico_value>[^;]*)")).unwrap_or_default();
        let _ = writeln!(
            self.maps,
            "    map $http_cookie {var_name} {{\n        default \"\";\n        {pattern} $portico_value;\n    }}\n"
        );
        var_name
    }

    /// Interlock's headers (and HSTS on HTTPS routes that ask for it),
    /// written whole in every block that has any: nginx's `add_header` in a
    /// block replaces, rather than adds to, those of the blocks around it.
    fn headers(&self, indent: &str, route: Option<&Route>, listener: &Listener) -> String {
        let p = &self.config.proxy;
        let mut out = String::new();
        let _ = writeln!(out, "{indent}add_header x-request-id $request_id always;");
        let proxy_id = match &p.proxy_id {
            Some(id) => var(id).unwrap_or_else(|| "$hostname".to_owned()),
            None => "$hostname".to_owned(),
        };
        let _ = writeln!(out, "{indent}add_header x-proxy-id {proxy_id} always;");
        if !p.hide_info_headers {
            if let Some(info) = var(self.opts.server_info) {
                let _ = writeln!(out, "{indent}add_header x-server-info {info} always;");
            }
            let _ = writeln!(
                out,
                "{indent}add_header x-upstream-addr $upstream_addr always;"
            );
            let _ = writeln!(
                out,
                "{indent}add_header x-upstream-response-time $upstream_response_time always;"
            );
        }
        if let (true, Some(max_age)) = (listener.tls, route.and_then(|r| r.hsts_max_age)) {
            let _ = writeln!(
                out,
                "{indent}add_header Strict-Transport-Security \"max-age={}\" always;",
                max_age.as_secs()
            );
        }
        out
    }

    /// The locations of one route: `/` for a route without a context root;
    /// else `= /app` and `/app/`, so that `/apple` is not under `/app`.
    fn locations(&self, route_id: RouteId, upstream: &str, listener: &Listener) -> String {
        let route = self.table.route(route_id);
        let mut out = String::new();
        match &route.path {
            None => {
                out.push_str("        location / {\n");
                out.push_str(&self.location_body(route, upstream, listener, false));
                out.push_str("        }\n");
            }
            Some(path) => {
                let (Some(exact), Some(prefix)) = (lit(path), lit(&format!("{path}/"))) else {
                    note(
                        &mut out,
                        "        ",
                        "a context root holds control characters",
                    );
                    return out;
                };
                let _ = writeln!(out, "        location = {exact} {{");
                out.push_str(&self.location_body(route, upstream, listener, true));
                out.push_str("        }\n");
                let _ = writeln!(out, "        location {prefix} {{");
                out.push_str(&self.location_body(route, upstream, listener, false));
                out.push_str("        }\n");
            }
        }
        out
    }

    /// What one location does, in Portico's order: `ssl_only`'s 301, the
    /// bare context root's 301, 503 without upstreams, else proxy.
    fn location_body(
        &self,
        route: &Route,
        upstream: &str,
        listener: &Listener,
        bare_root: bool,
    ) -> String {
        // What it does first, so that `grep -A4 HOST` shows the proxy_pass
        // under the server_name, as in Interlock's file.
        let mut out = self.location_action(route, upstream, listener, bare_root);
        out.push_str(&self.headers("            ", Some(route), listener));
        out
    }

    fn location_action(
        &self,
        route: &Route,
        upstream: &str,
        listener: &Listener,
        bare_root: bool,
    ) -> String {
        let p = &self.config.proxy;
        let i = "            ";
        let mut out = String::new();
        if route.ssl_only && !listener.tls {
            let port = if p.https_redirect_port == 443 {
                String::new()
            } else {
                format!(":{}", p.https_redirect_port)
            };
            let _ = writeln!(out, "{i}return 301 \"https://$host{port}$request_uri\";");
            return out;
        }
        if let (true, true, Some(path)) = (bare_root, route.rewrite, &route.path) {
            // `/app` → `/app/`, the query kept, as Portico answers.
            match then_vars(&format!("{path}/"), "$is_args$args") {
                Some(target) => {
                    let _ = writeln!(out, "{i}return 301 {target};");
                }
                None => note(&mut out, i, "a context root holds control characters"),
            }
            return out;
        }
        if route.upstreams.is_empty() {
            note(&mut out, i, &format!("{} has no upstreams", route.label()));
            let _ = writeln!(out, "{i}return 503;");
            return out;
        }
        let tls = route.upstream_options.first().and_then(|o| o.tls.as_ref());
        if route
            .upstream_options
            .iter()
            .any(|o| o.tls.is_some() != tls.is_some())
        {
            note(
                &mut out,
                i,
                "the pool's services disagree on upstream_tls; nginx uses one scheme per location (the first's)",
            );
        }
        // With a rewrite, the URI part replaces the matched `/app/` with `/`.
        let uri = if route.rewrite && route.path.is_some() && !bare_root {
            "/"
        } else {
            ""
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let _ = writeln!(out, "{i}proxy_pass {scheme}://{upstream}{uri};");
        let _ = writeln!(
            out,
            "{i}client_max_body_size {};",
            route.max_body_size.unwrap_or(0)
        );
        let _ = writeln!(
            out,
            "{i}proxy_connect_timeout {};",
            time(route.connect_timeout)
        );
        // nginx times each read, Portico the wait for the response head.
        let _ = writeln!(
            out,
            "{i}proxy_read_timeout {};",
            time(route.upstream_timeout)
        );
        let _ = writeln!(
            out,
            "{i}proxy_send_timeout {};",
            time(route.upstream_timeout)
        );
        if let Some(t) = tls {
            out.push_str(&format!("{i}proxy_ssl_server_name on;\n"));
            match var(&t.server_name) {
                Some(n) => {
                    let _ = writeln!(out, "{i}proxy_ssl_name {n};");
                }
                None => note(&mut out, i, "upstream_tls_name holds control characters"),
            }
            if t.verify {
                let _ = writeln!(out, "{i}proxy_ssl_verify on;");
                let ca = match &t.ca {
                    Some(ca) => var(&self.path(ca)),
                    // The system's roots, where Debian keeps them.
                    None => Some("/etc/ssl/certs/ca-certificates.crt".to_owned()),
                };
                if let Some(ca) = ca {
                    let _ = writeln!(out, "{i}proxy_ssl_trusted_certificate {ca};");
                }
            } else {
                let _ = writeln!(out, "{i}proxy_ssl_verify off;");
            }
        }
        let xff = if listener.proxy_protocol || p.trusted_proxies.is_empty() {
            "$remote_addr"
        } else {
            "$portico_x_forwarded_for"
        };
        for (name, value) in [
            ("Host", "$http_host"),
            ("X-Forwarded-For", xff),
            ("X-Real-IP", "$remote_addr"),
            ("X-Forwarded-Proto", "$scheme"),
            ("X-Forwarded-Host", "$http_host"),
            ("x-request-id", "$request_id"),
            ("Forwarded", "\"\""),
            ("Upgrade", "$http_upgrade"),
            ("Connection", "$portico_connection"),
        ] {
            let _ = writeln!(out, "{i}proxy_set_header {name} {value};");
        }
        out
    }

    fn finish(self, version: Version) -> String {
        let p = &self.config.proxy;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# nginx.conf for Portico config version {version} ({}),",
            version.short()
        );
        out.push_str(
            "# rendered by `portico config render --format nginx`: the same routing, as nginx\n\
             # would do it. \"# portico:\" comments say where nginx differs or cannot follow.\n\n",
        );
        out.push_str("worker_processes auto;\nerror_log /dev/stderr warn;\n");
        match p.max_client_connections {
            // nginx counts upstream connections in worker_connections too,
            // per worker; Portico's cap is on client connections, overall.
            // nginx does not raise its own descriptor limit unless told.
            Some(n) => {
                let _ = writeln!(
                    out,
                    "worker_rlimit_nofile {};\n",
                    n.saturating_mul(2).saturating_add(1024)
                );
                out.push_str("events {\n");
                note(
                    &mut out,
                    "    ",
                    &format!(
                        "max_client_connections {n}: worker_connections counts client and upstream connections, per worker"
                    ),
                );
                let _ = writeln!(
                    out,
                    "    worker_connections {};\n}}\n\nhttp {{",
                    n.saturating_mul(2)
                );
            }
            None => out.push_str("\nevents {\n    worker_connections 1024;\n}\n\nhttp {\n"),
        }
        let g = "    ";
        out.push_str("    server_tokens off;\n");
        // Portico's own redirects name a path, not a whole URL.
        out.push_str("    absolute_redirect off;\n");
        out.push_str(
            "    log_format portico 'time=\"$time_iso8601\" level=info msg=\"request\" client=$remote_addr \
             method=$request_method host=$host path=\"$request_uri\" status=$status bytes=$body_bytes_sent \
             upstream=$upstream_addr upstream_time=$upstream_response_time request_time=$request_time \
             request_id=$request_id';\n",
        );
        if p.access_log {
            out.push_str("    access_log /dev/stdout portico;\n");
        } else {
            out.push_str("    access_log off;\n");
        }
        let _ = writeln!(
            out,
            "{g}client_header_timeout {};",
            time(p.client_header_timeout)
        );
        let _ = writeln!(
            out,
            "{g}client_body_timeout {};",
            time(p.client_body_timeout)
        );
        let _ = writeln!(out, "{g}send_timeout {};", time(p.client_send_timeout));
        // A head's lines share these buffers; Portico caps the head as a whole.
        let buffer = (p.max_header_bytes / 4).max(1024) / 1024;
        let _ = writeln!(out, "{g}large_client_header_buffers 4 {buffer}k;");
        out.push_str("    proxy_http_version 1.1;\n");
        for h in [
            "x-request-id",
            "x-proxy-id",
            "x-server-info",
            "x-upstream-addr",
            "x-upstream-response-time",
        ] {
            // Portico replaces an upstream's own.
            let _ = writeln!(out, "{g}proxy_hide_header {h};");
        }
        if p.https_listen.is_some() {
            match p.tls_profile {
                portico_model::TlsProfile::Intermediate => {
                    out.push_str("    ssl_protocols TLSv1.2 TLSv1.3;\n");
                    out.push_str(
                        "    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
                         ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
                         ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;\n",
                    );
                }
                portico_model::TlsProfile::Modern => out.push_str("    ssl_protocols TLSv1.3;\n"),
            }
            out.push_str("    ssl_prefer_server_ciphers on;\n");
            out.push_str("    ssl_session_cache shared:portico_tls:10m;\n");
            note(&mut out, g, "key exchange: Portico offers X25519MLKEM768 first; nginx offers what its OpenSSL does");
            note(&mut out, g, "Portico answers 421 when a request's Host is another site than its SNI; nginx serves it by Host");
        }
        let mut notes = Vec::new();
        if let Some(delay) = p.hedge_delay {
            notes.push(format!(
                "hedge_delay {} (a slow connect raced by one to the next upstream) has no nginx equivalent",
                time(delay)
            ));
        }
        if p.retry_budget_percent < 100 {
            notes.push(format!(
                "retry budget ({}% of requests + {}/s) has no nginx equivalent; proxy_next_upstream retries every failure",
                p.retry_budget_percent, p.retry_budget_min_per_second
            ));
        }
        if p.outlier_consecutive_failures > 0 {
            notes.push(format!(
                "passive ejection: Portico ejects after {} failures in a row, doubling repeated ejections up to {}, \
                 never more than {}% of a pool; nginx's max_fails/fail_timeout count failures within fail_timeout",
                p.outlier_consecutive_failures,
                time(p.outlier_max_ejection_time),
                p.max_ejected_percent
            ));
        }
        if let Some(rate) = p.client_body_min_rate {
            notes.push(format!(
                "client_body_min_rate {rate} B/s after {} (slow bodies get 408): nginx has client_body_timeout only",
                time(p.client_body_grace)
            ));
        }
        if p.max_bodies_per_client > 0 {
            notes.push(format!(
                "max_bodies_per_client {} (429 above it) has no exact nginx equivalent (limit_conn counts connections)",
                p.max_bodies_per_client
            ));
        }
        notes.push(
            "clients speaking HTTP/2 in cleartext (h2c) are served by Portico's plain listener; nginx's serves HTTP/1.x"
                .to_owned(),
        );
        for n in &notes {
            note(&mut out, g, n);
        }
        out.push('\n');
        out.push_str("    # A literal \"$\" in values nginx would read as a variable.\n");
        out.push_str("    geo $portico_dollar {\n        default \"$\";\n    }\n\n");
        out.push_str("    # Websockets (any upgrade) pass through; keep-alive otherwise.\n");
        out.push_str(
            "    map $http_upgrade $portico_connection {\n        default upgrade;\n        \"\" \"\";\n    }\n\n",
        );
        if !p.trusted_proxies.is_empty() {
            out.push_str(
                "    # trusted_proxies: their X-Forwarded-For is believed (its rightmost untrusted\n\
                 \x20   # entry is the client) and extended; anyone else's is replaced.\n",
            );
            for c in &p.trusted_proxies {
                let _ = writeln!(out, "{g}set_real_ip_from {c};");
            }
            out.push_str("    real_ip_header X-Forwarded-For;\n    real_ip_recursive on;\n");
            out.push_str(
                "    geo $realip_remote_addr $portico_trusted_peer {\n        default 0;\n",
            );
            for c in &p.trusted_proxies {
                let _ = writeln!(out, "        {c} 1;");
            }
            out.push_str("    }\n");
            out.push_str(
                "    map \"$portico_trusted_peer|$http_x_forwarded_for\" $portico_x_forwarded_for {\n\
                 \x20       \"~^1\\|(?<portico_xff>.+)$\" \"$portico_xff, $realip_remote_addr\";\n\
                 \x20       default $realip_remote_addr;\n    }\n\n",
            );
        }
        out.push_str(&self.maps);
        out.push_str(&self.upstreams);
        out.push_str(&self.servers);
        out.push_str("}\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_one_token_whatever_they_hold() {
        assert_eq!(lit("foo.app.test").unwrap(), "foo.app.test");
        assert_eq!(lit("*.foo.test").unwrap(), "*.foo.test");
        assert_eq!(lit("/a b;c{d}").unwrap(), "\"/a b;c{d}\"");
        assert_eq!(lit("/q\"uo\\te").unwrap(), "\"/q\\\"uo\\\\te\"");
        assert_eq!(lit("/a$b").unwrap(), "\"/a$b\"");
        assert_eq!(var("a$b").unwrap(), "\"a${portico_dollar}b\"");
        assert_eq!(lit("=/x").unwrap(), "\"=/x\"");
        assert_eq!(lit("").unwrap(), "\"\"");
        assert!(lit("a\nb").is_none());
        assert!(var("a\rb").is_none());
        assert_eq!(clean("x\n}\nserver {"), "x?}?server {");
    }

    /// `nginx -t` on `text`, with its files in `dir`; `None` without nginx
    /// (unless `PORTICO_REQUIRE_NGINX=1`).
    fn nginx_t(dir: &Path, text: &str) -> Option<std::process::Output> {
        let found = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file());
        let Some(bin) = found else {
            assert_ne!(
                std::env::var("PORTICO_REQUIRE_NGINX").as_deref(),
                Ok("1"),
                "PORTICO_REQUIRE_NGINX=1 but nginx is not installed"
            );
            eprintln!("nginx is not installed: not checked with nginx -t");
            return None;
        };
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, text).unwrap();
        let pid = format!("pid {};", dir.join("nginx.pid").display());
        Some(
            std::process::Command::new(bin)
                .args(["-t", "-e", "stderr", "-p"])
                .arg(dir)
                .arg("-c")
                .arg(&conf)
                .args(["-g", &pid])
                .output()
                .unwrap(),
        )
    }

    /// Every feature at once, with values a hostile label could carry:
    /// nginx must read the rendering as Portico means it, or refuse
    /// nothing.
    #[test]
    fn every_feature_renders_as_a_file_nginx_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let ca = portico_testkit::TestCa::new("render CA");
        ca.write(dir.path());
        ca.issue(&["default.test"]).write(dir.path(), "default");
        ca.issue(&["*.wild.test"]).write(dir.path(), "wild");
        ca.issue(&["dock.test"]).write(dir.path(), "dock");
        std::fs::write(dir.path().join("bad.crt"), "not a certificate").unwrap();
        std::fs::write(dir.path().join("bad.key"), "not a key").unwrap();
        let text = r#"
[proxy]
http_listen = "127.0.0.1:18081"
https_listen = "[::1]:18443"
default_tls_cert = "default.crt"
default_tls_key = "default.key"
trusted_proxies = ["10.0.0.0/8", "::1"]
https_proxy_protocol = true
hide_info_headers = true
proxy_id = "lb-\"1$x;}"
tls_profile = "modern"
hedge_delay = "off"
max_client_connections = 3000

[[service]]
name = "hostile"
hosts = ["h.test"]
upstreams = ["127.0.0.1:9001", "127.0.0.1:9002"]
context_root = "/a\"b;{c}$d\\e'"
context_root_rewrite = true
sticky_session_cookie = "s$i'd"

[[service]]
name = "mover"
hosts = ["r.test", "r2.test"]
upstreams = ["127.0.0.1:9003"]
redirects = [{ from = "https://r.test", to = "https://x.test/p\";${q}" }]

[[service]]
name = "fallback"
upstreams = ["127.0.0.1:9004"]
default_backend = true
context_root = "/d"

[[service]]
name = "relay"
hosts = ["pt.test"]
upstreams = ["127.0.0.1:9005"]
passthrough = true

[[service]]
name = "secure_up"
hosts = ["up.test"]
upstreams = ["127.0.0.1:9006"]
upstream_tls = true
upstream_tls_ca = "ca.crt"
upstream_tls_name = "internal.test"
health_path = "/healthz"
balance = "least_request"
max_requests = 5
max_body_size = "1MiB"
connect_timeout = "250ms"

[[service]]
name = "grpc"
hosts = ["g.test"]
upstreams = ["[::1]:9007"]
upstream_protocol = "h2c"
ip_hash = true
sticky_session_cookie = "sid"

[[service]]
name = "empty"
hosts = ["empty.test"]
upstreams = []

[[service]]
name = "wild"
hosts = ["*.wild.test"]
upstreams = ["127.0.0.1:9008"]
tls_cert = "wild.crt"
tls_key = "wild.key"
hsts_max_age = "1h"

[[service]]
name = "below"
hosts = ["a.wild.test"]
upstreams = ["127.0.0.1:9009"]

[[service]]
name = "refused"
hosts = ["bad.test"]
upstreams = ["127.0.0.1:9010"]
tls_cert = "bad.crt"
tls_key = "bad.key"

[[service]]
name = "docked"
hosts = ["dock.test"]
upstreams = ["127.0.0.1:9011"]
tls_cert = "dock.crt"
tls_key = "dock.key"
"#;
        let path = dir.path().join("portico.toml");
        std::fs::write(&path, text).unwrap();
        let mut config = portico_discovery::file::load(&path).unwrap_or_else(|e| panic!("{e}"));
        // As the Docker provider names a config object's material.
        let docked = config
            .services
            .iter_mut()
            .find(|s| s.name == "docked")
            .unwrap();
        let tls = docked.tls.as_mut().unwrap();
        for (file, object) in [(&mut tls.cert, "dock_cert"), (&mut tls.key, "dock_key")] {
            let data = config.files.remove(file.as_str()).unwrap();
            *file = format!("{CONFIG_OBJECT_PREFIX}{object}");
            config.files.insert(file.clone(), data);
        }
        let out = render(
            &config,
            &Options {
                base_dir: Some(dir.path()),
                server_info: "portico/test (0000000) linux/amd64",
            },
        );
        let has = |line: &str| assert!(out.contains(line), "{line:?} in\n{out}");
        has("        location = \"/a\\\"b;{c}$d\\\\e'\" {\n");
        has("            return 301 \"/a\\\"b;{c}${portico_dollar}d\\\\e'/$is_args$args\";\n");
        has("            proxy_pass http://up-h.test_a_b__c__d_e_/;\n");
        has("add_header x-proxy-id \"lb-\\\"1${portico_dollar}x;}\" always;");
        has("        \"~(?:^|;)\\\\s*s\\\\$i\\\\'d=(?<portico_value>[^;]*)\" $portico_value;\n");
        has("        random two least_conn;\n");
        has("        return 302 \"https://x.test/p\\\";${portico_dollar}{q}$request_uri\";\n");
        has("    upstream up-default_d {\n");
        has("is TLS passthrough");
        has("            proxy_pass https://up-up.test;\n");
        has(&format!(
            "            proxy_ssl_trusted_certificate {};\n",
            dir.path().join("ca.crt").display()
        ));
        has("            client_max_body_size 1048576;\n");
        has("            proxy_connect_timeout 250ms;\n");
        has("active health checks (GET /healthz every 5s) need nginx Plus");
        has("max_requests = 5");
        has("upstream_protocol h2/h2c");
        has("    map $cookie_sid $portico_hash_2 {\n        \"\" $remote_addr;\n");
        has("            return 503;\n");
        has("add_header Strict-Transport-Security \"max-age=3600\" always;");
        has("        listen [::1]:18443 ssl http2 proxy_protocol;\n");
        has("        real_ip_header proxy_protocol;\n");
        has("    ssl_protocols TLSv1.3;\n");
        has("    worker_connections 6000;\n");
        has("worker_rlimit_nofile 7024;\n");
        has("max_client_connections 3000: worker_connections counts client and upstream connections");
        assert!(!out.contains("x-server-info \""), "hidden: {out}");
        assert!(!out.contains("hedge_delay"), "off: {out}");
        // a.wild.test has no certificate of its own: the wildcard's above it.
        let below = out.split("# HTTPS for a.wild.test").nth(1).unwrap();
        assert!(
            below.contains(&format!(
                "ssl_certificate {};",
                dir.path().join("wild.crt").display()
            )),
            "{below}"
        );
        for refused in ["# HTTPS for bad.test", "# HTTPS for dock.test"] {
            let server = out.split(refused).nth(1).unwrap();
            let server = &server[..server.find("    }\n").unwrap()];
            assert!(server.contains("ssl_reject_handshake on;"), "{server}");
        }
        assert!(out.contains("Docker config object \"dock_cert\""), "{out}");
        // One server per host and listener, two default ones; no more, so
        // no value opened a block of its own.
        let servers = out.matches("    server {\n").count();
        assert_eq!(servers, 2 * 10 + 2, "{out}");
        if let Some(check) = nginx_t(dir.path(), &out) {
            let log = String::from_utf8_lossy(&check.stderr);
            assert!(check.status.success(), "nginx -t:\n{log}\n{out}");
        }
    }

    #[test]
    fn times_and_names() {
        assert_eq!(time(Duration::from_secs(5)), "5s");
        assert_eq!(time(Duration::from_millis(250)), "250ms");
        assert_eq!(name_part("*.a/b c"), "_.a_b_c");
    }
}
