//! Service rules written once, for every provider: how a value of a
//! service setting is read (sizes, timeouts, numbers, context roots,
//! redirects, cookie names, balance, health checks), what one service may
//! not combine, what services sharing a host (or a host and a path)
//! must agree on, and which group of services owns a host
//! ([`HostOwners`]; Docker's stack namespaces).
//!
//! The TOML file and the Docker labels both build a [`Service`] and ask
//! these functions; they only decide how to report an answer (a
//! [`ConfigError`](crate::ConfigError) at the key's span, or a
//! [`Finding`](crate::labels::Finding) naming the label), so a rule and its
//! wording cannot drift between them.
//!
//! Messages name settings by their TOML key (`passthrough`, `balance`);
//! a provider that names them otherwise passes its own name to
//! [`Disagreement::message`] or maps [`Problem::setting`].

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::config::{Balance, HealthCheck, Redirect, Service};
use crate::host::HostPattern;

/// Timeouts beyond this are surely typos, and would overflow the clock.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// A timeout such as `"5s"` or `"250ms"`: above zero, at most 30 days.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d > MAX_TIMEOUT => Err("must be at most 30 days".into()),
        Ok(d) if d.is_zero() => Err("must be greater than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "{text:?} is not a duration such as \"5s\" or \"250ms\": {e}"
        )),
    }
}

/// A size in bytes: a plain integer (`"1048576"`), or an integer with one
/// of the units `B`, `KiB`, `MiB`, `GiB` (powers of 1024), with or without
/// a space before it. Decimal units (`MB`) are refused rather than
/// guessed at. Zero is refused: some proxies read it as "no limit", others
/// as "no body", so it would mean something different to every reader.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let example = "a size such as \"512KiB\", \"1MiB\" or \"1048576\" (units: B, KiB, MiB, GiB)";
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = t.split_at(digits);
    let factor: u64 = match unit.trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("{text:?} is not {example}")),
    };
    let Ok(n) = number.parse::<u64>() else {
        return Err(format!("{text:?} is not {example}"));
    };
    match n.checked_mul(factor) {
        Some(0) => Err("must be greater than zero".into()),
        Some(v) => Ok(v),
        None => Err(format!("{text:?} is too large")),
    }
}

/// The same for a size written as a TOML integer.
pub fn size_from_int(n: i64) -> Result<u64, String> {
    match u64::try_from(n) {
        Ok(0) => Err("must be greater than zero".into()),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("{n} is not a size (bytes, above zero)")),
    }
}

/// The service cluster every service without one belongs to, and the one
/// a proxy that names none serves.
pub const DEFAULT_SERVICE_CLUSTER: &str = "default";

/// A service cluster's name (Interlock's `service_cluster`): 1 to 63
/// ASCII letters, digits, `-`, `_` or `.`, starting with a letter or a
/// digit. The same shape as a proxy id, for the same reason: names end up
/// in file names, metrics labels and command lines.
pub fn parse_service_cluster(text: &str) -> Result<String, String> {
    let what = "a service cluster name holds 1 to 63 ASCII letters, digits, '-', '_' or '.', \
                starting with a letter or a digit";
    let length = text.chars().count();
    if length == 0 {
        return Err(format!("{what}; this one is empty"));
    }
    if length > 63 {
        return Err(format!("{what}; this one has {length} characters"));
    }
    if let Some((position, c)) = text
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!("{what}; found {c:?} at position {position}"));
    }
    if !text.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{what}; this one starts with {:?}", &text[..1]));
    }
    Ok(text.to_owned())
}

/// The longest `drain_delay`: a load balancer takes a proxy out within
/// seconds; an hour is surely a typo.
pub const MAX_DRAIN_DELAY: Duration = Duration::from_secs(3600);

/// `drain_delay` as read: at most [`MAX_DRAIN_DELAY`].
pub fn drain_delay_in_range(d: Duration) -> Result<(), String> {
    if d > MAX_DRAIN_DELAY {
        Err("must be at most an hour: a load balancer takes a proxy out within seconds".into())
    } else {
        Ok(())
    }
}

/// `drain_delay`: a duration, zero included (no delay).
pub fn parse_drain_delay(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration such as \"10s\" (\"0s\": none): {e}"))?;
    drain_delay_in_range(d).map_err(|e| format!("{text:?} {e}"))?;
    Ok(d)
}

/// `health_uri`: an absolute path other than `/` (which would hide every
/// site's root), without query or fragment, written as a request target
/// would carry it (so that it can match one).
pub fn parse_health_uri(uri: &str) -> Result<String, String> {
    let path_char = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b);
    if !uri.starts_with('/') {
        Err(format!(
            "{uri:?} must be a path starting with '/', e.g. \"/healthz\""
        ))
    } else if uri == "/" {
        Err("\"/\" would answer every site's root page: choose a path of its own, e.g. \"/healthz\"".into())
    } else if uri.len() > 1024 {
        Err("must be at most 1024 characters".into())
    } else if let Some(c) = uri.bytes().find(|&b| !path_char(b)) {
        Err(format!(
            "{uri:?}: {:?} is not allowed in a path (no query, fragment or spaces)",
            char::from(c)
        ))
    } else {
        Ok(uri.to_owned())
    }
}

/// A whole number written as text (a label's value), such as `"3"`;
/// its range is checked by [`number_in`].
pub fn parse_number(text: &str) -> Result<i64, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a whole number"))
}

/// A whole number from `min` to `max`.
pub fn number_in(n: i64, min: u32, max: u32) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ if n < i64::from(min) => Err(format!("must be at least {min}")),
        _ => Err(format!("must be at most {max}")),
    }
}

/// A percentage: 0 to 100.
pub fn percent(n: i64) -> Result<u8, String> {
    number_in(n, 0, 100).map(|p| p as u8)
}

/// A service's `max_requests`: at least 1 (0 would refuse every request;
/// leave it unset for no cap).
pub fn max_requests(n: i64) -> Result<u32, String> {
    number_in(n, 1, u32::MAX)
}

/// A path a setting names must be absolute and of printable ASCII (it is
/// matched against, or sent as, a request target).
fn check_path(text: &str, example: &str) -> Result<(), String> {
    if !text.starts_with('/') {
        return Err(format!("{text:?} must start with '/', as in {example:?}"));
    }
    if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{text:?} contains {c:?}: use printable ASCII without spaces (percent-encode the rest)"
        ));
    }
    Ok(())
}

/// A context root as written (`/app`, `/app/`), normalised to start with
/// `/` and end without one; `/` alone is `None` (the whole host).
///
/// Refused: anything but an absolute path of printable ASCII, and the
/// forms a request path could only match after normalisation (`//`, `.`
/// and `..` segments), or never (`?`, `#`).
pub fn parse_context_root(text: &str) -> Result<Option<String>, String> {
    check_path(text, "/app")?;
    if let Some(c) = text.chars().find(|c| matches!(c, '?' | '#')) {
        return Err(format!(
            "{text:?} contains {c:?}: a context root is a path, without query or fragment"
        ));
    }
    if text.contains("//") {
        return Err(format!("{text:?} contains \"//\""));
    }
    if text.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("{text:?} contains a \".\" or \"..\" segment"));
    }
    let trimmed = text.trim_end_matches('/');
    Ok((!trimmed.is_empty()).then(|| trimmed.to_owned()))
}

/// A cookie name: an RFC 6265 token (letters, digits and
/// ``!#$%&'*+-.^_`|~``), not empty.
pub fn parse_cookie_name(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("must not be empty: it names the cookie that picks the upstream".into());
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    match text.chars().find(|c| !token(*c)) {
        Some(c) => Err(format!(
            "{text:?} is not a cookie name: {c:?} is not allowed (use letters, digits and !#$%&'*+-.^_`|~)"
        )),
        None => Ok(text.to_owned()),
    }
}

/// `"round_robin"` or `"least_request"`.
pub fn parse_balance(text: &str) -> Result<Balance, String> {
    match text {
        "round_robin" => Ok(Balance::RoundRobin),
        "least_request" => Ok(Balance::LeastRequest),
        other => Err(format!(
            "{other:?} is not one of \"round_robin\", \"least_request\""
        )),
    }
}

/// One redirect, `from` → `to`.
///
/// `from` is `http://host` or `https://host`, with an optional trailing
/// `/` and nothing else: no path (a redirect applies to every path of the
/// host) and no port (hosts are matched without the port, as everywhere in
/// Portico; `http://a.test:8080` is refused rather than silently widened).
/// `to` is an absolute `http(s)://` URL, with an optional port and path
/// but no query or fragment (the request's path and query are appended);
/// its trailing `/` is dropped.
pub fn parse_redirect(from: &str, to: &str) -> Result<Redirect, String> {
    let (from_scheme, rest) = split_scheme(from).ok_or_else(|| {
        format!(
            "from {from:?} must be http://host or https://host, as in \"http://old.example.com\""
        )
    })?;
    let host_text = rest.strip_suffix('/').unwrap_or(rest);
    if host_text.contains('/') || host_text.contains('?') || host_text.contains('#') {
        return Err(format!(
            "from {from:?} must be a scheme and a host only: a redirect applies to every path"
        ));
    }
    let from_host = match HostPattern::parse(host_text) {
        Ok(HostPattern::Exact(h)) => h,
        Ok(HostPattern::Wildcard(_)) => {
            return Err(format!(
                "from {from:?}: a redirect's host must be exact, not a wildcard"
            ))
        }
        Err(e) => return Err(format!("from {from:?}: {e}")),
    };
    let Some((_, rest)) = split_scheme(to) else {
        return Err(format!(
            "to {to:?} must be an absolute http:// or https:// URL, as in \"https://new.example.com\""
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if let Some(c) = to.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "to {to:?} contains {c:?}: use printable ASCII without spaces"
        ));
    }
    if let Some(c) = rest.chars().find(|c| matches!(c, '?' | '#')) {
        return Err(format!(
            "to {to:?} contains {c:?}: the request's path and query are appended to it"
        ));
    }
    if !valid_authority(authority) {
        return Err(format!(
            "to {to:?} must be an absolute http:// or https:// URL, as in \"https://new.example.com\""
        ));
    }
    let to = to.trim_end_matches('/').to_owned();
    if to.eq_ignore_ascii_case(&format!("{from_scheme}://{from_host}")) {
        return Err(format!("{from:?} redirects to itself"));
    }
    Ok(Redirect {
        from_scheme: from_scheme.to_owned(),
        from_host,
        to,
    })
}

/// Interlock's `redirects` label: `from,to` pairs separated by `;`
/// (`http://old.example.com,http://new.example.com;https://a,https://b`).
/// Empty pairs (a trailing `;`) are skipped.
pub fn parse_redirect_list(text: &str) -> Result<Vec<Redirect>, String> {
    let mut out = Vec::new();
    for pair in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once(',') {
            Some((from, to)) if !to.contains(',') => {
                out.push(parse_redirect(from.trim(), to.trim())?)
            }
            _ => {
                return Err(format!(
                    "{pair:?} is not a \"from,to\" pair such as \"http://old.example.com,http://new.example.com\" (pairs are separated by ';')"
                ))
            }
        }
    }
    Ok(out)
}

/// `http` or `https` (any case) and what follows `://`.
fn split_scheme(url: &str) -> Option<(&'static str, &str)> {
    for scheme in ["http", "https"] {
        // Byte-wise: a URL may hold any character where the scheme should
        // be, and a str slice must not cut one in two.
        let bytes = url.as_bytes();
        if bytes.len() > scheme.len() + 3
            && bytes[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
            && bytes[scheme.len()..].starts_with(b"://")
        {
            return Some((scheme, &url[scheme.len() + 3..]));
        }
    }
    None
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`, without user info.
fn valid_authority(authority: &str) -> bool {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    let host_ok = host.is_empty() && authority.starts_with('[')
        || matches!(HostPattern::parse(host), Ok(HostPattern::Exact(_)));
    port_ok && host_ok
}

/// What a health check requests: a path with an optional query
/// (`/healthz`, `/status?full=1`), sent as it is written.
pub fn parse_health_path(text: &str) -> Result<String, String> {
    check_path(text, "/healthz")?;
    if text.contains('#') {
        return Err(format!(
            "{text:?} contains '#': a fragment is never sent to a server"
        ));
    }
    Ok(text.to_owned())
}

/// The statuses a health check accepts: codes and inclusive ranges,
/// comma-separated (`"200-399"`, `"200,204,300-399"`), each code 100 to
/// 599. Returned sorted, with overlapping and adjacent ranges merged, so
/// two lists that accept the same codes are equal.
pub fn parse_statuses(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let code = |item: &str| match item.trim().parse::<u16>() {
        Ok(c) if (100..=599).contains(&c) => Ok(c),
        Ok(c) => Err(format!("{text:?}: {c} is not a status code (100 to 599)")),
        Err(_) => Err(format!(
            "{text:?}: {:?} is not a status code or a range such as \"200-399\"",
            item.trim()
        )),
    };
    let mut ranges = Vec::new();
    for item in text.split(',') {
        let (low, high) = match item.split_once('-') {
            Some((low, high)) => (code(low)?, code(high)?),
            None => code(item).map(|c| (c, c))?,
        };
        if low > high {
            return Err(format!(
                "{text:?}: the range {low}-{high} runs backwards; write it low to high"
            ));
        }
        ranges.push((low, high));
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (low, high) in ranges {
        match merged.last_mut() {
            Some(last) if low <= last.1 + 1 => last.1 = last.1.max(high),
            _ => merged.push((low, high)),
        }
    }
    Ok(merged)
}

/// The name a health check sends as `Host`: one exact host name, without
/// a port.
pub fn parse_health_host(text: &str) -> Result<String, String> {
    match HostPattern::parse(text) {
        Ok(HostPattern::Exact(name)) => Ok(name),
        Err(e) if !text.contains(['*', ':']) => Err(e),
        _ if text.contains(':') => Err(format!("{text:?}: give the host name without a port")),
        _ => Err(format!(
            "{text:?}: a check sends one host name, not a wildcard"
        )),
    }
}

/// A duration setting, for comparing two of them.
#[derive(Clone, Copy, Debug)]
pub struct Timed<'a> {
    /// Its key.
    pub setting: &'static str,
    /// Its text as written; `None`: not set.
    pub text: Option<&'a str>,
    /// The value read from `text`; `None` when it could not be read (a
    /// problem reported already, so there is nothing to compare).
    pub read: Option<Duration>,
    /// Its value when not set.
    pub default: Duration,
}

impl Timed<'_> {
    /// The value in force, unless the text did not read.
    fn value(&self) -> Option<Duration> {
        match self.text {
            None => Some(self.default),
            Some(_) => self.read,
        }
    }

    /// As written, or the default as `humantime` writes it.
    fn shown(&self) -> String {
        self.text.map_or_else(
            || humantime::format_duration(self.default).to_string(),
            str::to_owned,
        )
    }
}

/// `shorter` may not be longer than `longer` (a check's timeout and its
/// interval). The problem names both as written, and is reported at
/// `shorter` if it was written, else at `longer`.
pub fn not_longer(shorter: Timed<'_>, longer: Timed<'_>) -> Option<Problem> {
    if shorter.value()? <= longer.value()? {
        return None;
    }
    Some(Problem {
        setting: if shorter.text.is_some() {
            shorter.setting
        } else {
            longer.setting
        },
        message: format!(
            "{} {:?} is longer than {} {:?}",
            shorter.setting,
            shorter.shown(),
            longer.setting,
            longer.shown()
        ),
    })
}

/// A service's `health_*` settings as written (`None`: not set). The
/// thresholds are numbers already: the file's are TOML integers, and a
/// label is read with [`parse_number`] first.
#[derive(Clone, Copy, Debug, Default)]
pub struct HealthKeys<'a> {
    pub path: Option<&'a str>,
    pub interval: Option<&'a str>,
    pub timeout: Option<&'a str>,
    pub healthy: Option<i64>,
    pub unhealthy: Option<i64>,
    pub status: Option<&'a str>,
    pub host: Option<&'a str>,
}

const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
const HEALTH_HEALTHY: u32 = 2;
const HEALTH_UNHEALTHY: u32 = 3;
const HEALTH_STATUS: (u16, u16) = (200, 399);

/// A setting read by `parse` if it is set; why it could not be is noted.
fn noted<V, T>(
    problems: &mut Vec<Problem>,
    setting: &'static str,
    value: Option<V>,
    parse: impl FnOnce(V) -> Result<T, String>,
) -> Option<T> {
    parse(value?)
        .map_err(|message| problems.push(Problem { setting, message }))
        .ok()
}

/// A service's health check, from its `health_*` settings with the
/// defaults filled in; or every problem with them, each naming its key.
/// `health_path` turns checks on: without it there is no check, and any
/// other `health_*` key set is an error, since it would do nothing.
pub fn health_check(k: &HealthKeys<'_>) -> Result<Option<HealthCheck>, Vec<Problem>> {
    let mut problems = Vec::new();
    let p = &mut problems;
    let threshold = |n| number_in(n, 1, u32::MAX);
    let path = noted(p, "health_path", k.path, parse_health_path);
    let interval = noted(p, "health_interval", k.interval, parse_timeout);
    let timeout = noted(p, "health_timeout", k.timeout, parse_timeout);
    let healthy = noted(p, "health_healthy", k.healthy, threshold);
    let unhealthy = noted(p, "health_unhealthy", k.unhealthy, threshold);
    let status = noted(p, "health_status", k.status, parse_statuses);
    let host = noted(p, "health_host", k.host, parse_health_host);
    if k.path.is_none() {
        let others = [
            (k.interval.is_some(), "health_interval"),
            (k.timeout.is_some(), "health_timeout"),
            (k.healthy.is_some(), "health_healthy"),
            (k.unhealthy.is_some(), "health_unhealthy"),
            (k.status.is_some(), "health_status"),
            (k.host.is_some(), "health_host"),
        ];
        for (set, setting) in others {
            if set {
                problems.push(Problem {
                    setting,
                    message: format!("{setting} is set but health_path is not; no check would run"),
                });
            }
        }
    } else if k.timeout.is_some() {
        // Only a timeout written out can be too long: the default one is
        // shortened to a short interval.
        problems.extend(not_longer(
            Timed {
                setting: "health_timeout",
                text: k.timeout,
                read: timeout,
                default: HEALTH_TIMEOUT,
            },
            Timed {
                setting: "health_interval",
                text: k.interval,
                read: interval,
                default: HEALTH_INTERVAL,
            },
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(path.map(|path| HealthCheck {
        path,
        interval: interval.unwrap_or(HEALTH_INTERVAL),
        timeout: timeout.unwrap_or(HEALTH_TIMEOUT.min(interval.unwrap_or(HEALTH_INTERVAL))),
        healthy: healthy.unwrap_or(HEALTH_HEALTHY),
        unhealthy: unhealthy.unwrap_or(HEALTH_UNHEALTHY),
        status: status.unwrap_or_else(|| vec![HEALTH_STATUS]),
        host,
    }))
}

/// A problem within one service, found after its values were read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The setting it concerns, by its TOML key.
    pub setting: &'static str,
    pub message: String,
}

/// What one service's settings may not combine: a context-root rewrite
/// without a context root, redirects from hosts the service does not
/// serve (or the same source twice), and request-level settings or health
/// checks on a passthrough service (which relays TLS unread and never sees
/// a request).
pub fn service_problems(s: &Service) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut add = |setting, message: String| out.push(Problem { setting, message });
    if s.context_root_rewrite && s.context_root.is_none() {
        add(
            "context_root_rewrite",
            "needs a context_root (other than \"/\"): there is no prefix to remove".into(),
        );
    }
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for r in &s.redirects {
        let from = format!("{}://{}", r.from_scheme, r.from_host);
        if !s
            .hosts
            .iter()
            .any(|h| matches!(h, HostPattern::Exact(n) if *n == r.from_host))
        {
            let hosts: Vec<String> = s.hosts.iter().map(ToString::to_string).collect();
            add(
                "redirects",
                format!(
                    "from {from}: host {} is not one of the service's hosts ({})",
                    r.from_host,
                    hosts.join(", ")
                ),
            );
        }
        if seen.contains(&(&r.from_scheme, &r.from_host)) {
            add("redirects", format!("from {from} is listed twice"));
        }
        seen.push((&r.from_scheme, &r.from_host));
    }
    if s.passthrough {
        let request_level = [
            (s.context_root.is_some(), "context_root"),
            (s.context_root_rewrite, "context_root_rewrite"),
            (!s.redirects.is_empty(), "redirects"),
            (s.sticky_session_cookie.is_some(), "sticky_session_cookie"),
            (s.default_backend, "default_backend"),
            (s.max_body_size.is_some(), "max_body_size"),
            (s.upstream_timeout.is_some(), "upstream_timeout"),
        ];
        for (set, setting) in request_level {
            if set {
                add(
                    setting,
                    "does not apply to a passthrough service: it relays TLS unread and sees no requests".into(),
                );
            }
        }
        if s.health.is_some() {
            add(
                "health_path",
                "does not apply to a passthrough service: a check is an HTTP request, and its upstreams expect the clients' TLS".into(),
            );
        }
    }
    out
}

/// Where two services meet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// They share this host: host-level settings (passthrough, certificate).
    Host(HostPattern),
    /// They share this host and this path (`/` when neither has a context
    /// root), so they form one pool: pool-level settings.
    Route(HostPattern, String),
    /// Anywhere: settings only one service may have (`default_backend`).
    Anywhere,
}

/// Two services that must agree on a setting, and don't.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disagreement {
    /// Index of the later service, the one to report (or drop): its index
    /// in the slice given to [`disagreements`], or the index
    /// [`Claims::admit`] would give it.
    pub service: usize,
    /// Index of the earlier service it disagrees with, counted the same way.
    pub other: usize,
    /// The earlier service's name.
    pub other_name: String,
    /// The setting, by its TOML key.
    pub setting: &'static str,
    pub scope: Scope,
}

impl Disagreement {
    /// The message, naming the setting `setting` (a provider's own name for
    /// it, such as a label; [`Display`](fmt::Display) uses the TOML key).
    pub fn message(&self, setting: &str) -> String {
        let other = &self.other_name;
        match &self.scope {
            Scope::Host(h) => format!(
                "shares host {h} with service {other} but not its {setting}; services on one host must agree"
            ),
            Scope::Route(h, p) => format!(
                "shares host {h} and path {p} with service {other} but not its {setting}; services on one host and path must agree"
            ),
            Scope::Anywhere => format!(
                "service {other} already has {setting}; only one service may have it"
            ),
        }
    }
}

impl fmt::Display for Disagreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message(self.setting))
    }
}

type Agrees = fn(&Service, &Service) -> bool;
/// Settings compared at one kind of meeting, with their TOML keys.
type Settings = &'static [(&'static str, Agrees)];

/// Settings of a host: whether TLS is terminated there. (Its certificate
/// is compared in [`CERT`], against the first service that has one.)
const HOST_SETTINGS: Settings = &[("passthrough", |a, b| a.passthrough == b.passthrough)];

/// One certificate per host name (SNI picks it before any path is seen);
/// a service without one is served with its neighbour's.
const CERT: Settings = &[("tls_cert", |a, b| {
    a.tls.is_none() || b.tls.is_none() || a.tls == b.tls
})];

/// Settings of a pool (one host and path): a request is matched to the
/// pool, not to one of its services, so they must say the same.
const POOL_SETTINGS: Settings = &[
    ("ssl_only", |a, b| a.ssl_only == b.ssl_only),
    ("hsts_max_age", |a, b| a.hsts_max_age == b.hsts_max_age),
    ("context_root_rewrite", |a, b| {
        a.context_root_rewrite == b.context_root_rewrite
    }),
    ("sticky_session_cookie", |a, b| {
        a.sticky_session_cookie == b.sticky_session_cookie
    }),
    ("ip_hash", |a, b| a.ip_hash == b.ip_hash),
    ("balance", |a, b| a.balance == b.balance),
    ("max_body_size", |a, b| a.max_body_size == b.max_body_size),
    ("connect_timeout", |a, b| {
        a.connect_timeout == b.connect_timeout
    }),
    ("upstream_timeout", |a, b| {
        a.upstream_timeout == b.upstream_timeout
    }),
    ("health_path", |a, b| {
        a.health.as_ref().map(|h| &h.path) == b.health.as_ref().map(|h| &h.path)
    }),
    ("health_interval", |a, b| same_check(a, b, |h| &h.interval)),
    ("health_timeout", |a, b| same_check(a, b, |h| &h.timeout)),
    ("health_healthy", |a, b| same_check(a, b, |h| &h.healthy)),
    ("health_unhealthy", |a, b| {
        same_check(a, b, |h| &h.unhealthy)
    }),
    ("health_status", |a, b| same_check(a, b, |h| &h.status)),
    ("health_host", |a, b| same_check(a, b, |h| &h.host)),
    ("max_requests", |a, b| a.max_requests == b.max_requests),
    ("max_ejected_percent", |a, b| {
        a.max_ejected_percent == b.max_ejected_percent
    }),
];

/// One setting of the pool's health check, compared when both services
/// check (when only one does, their `health_path` already differs).
fn same_check<T: PartialEq>(a: &Service, b: &Service, get: fn(&HealthCheck) -> &T) -> bool {
    match (&a.health, &b.health) {
        (Some(x), Some(y)) => get(x) == get(y),
        _ => true,
    }
}

/// A pool's redirects, compared against the first service of the pool
/// that has any: services without redirects join either way.
const REDIRECTS: Settings = &[("redirects", |a, b| {
    a.redirects.is_empty()
        || b.redirects.is_empty()
        || (a.redirects.len() == b.redirects.len()
            && a.redirects.iter().all(|r| b.redirects.contains(r)))
})];

const DEFAULT_BACKEND: Settings = &[("default_backend", |_, _| false)];

/// The path a service's routes sit at: its context root, or `/`.
pub fn path_of(s: &Service) -> &str {
    s.context_root.as_deref().unwrap_or("/")
}

/// Services admitted one at a time, each checked against those before it.
///
/// Each setting is compared with one earlier service only: the first to
/// claim the host (or the host and path), or for settings that need only
/// agree when both services have them (certificate, redirects) the first
/// that has it there. So checking stays linear in the number of hosts:
/// 10,000-service configs are checked on every reload. Nothing is
/// copied: the services admitted are borrowed.
#[derive(Debug, Default)]
pub struct Claims<'a> {
    admitted: Vec<&'a Service>,
    hosts: HashMap<&'a HostPattern, usize>,
    certs: HashMap<&'a HostPattern, usize>,
    routes: HashMap<(&'a HostPattern, &'a str), usize>,
    redirects: HashMap<(&'a HostPattern, &'a str), usize>,
    default_backend: Option<usize>,
}

impl<'a> Claims<'a> {
    pub fn new() -> Claims<'a> {
        Claims::default()
    }

    /// How `s` disagrees with the services admitted so far: earliest other
    /// service first; for each, host-level settings before pool-level ones.
    pub fn check(&self, s: &'a Service) -> Vec<Disagreement> {
        let service = self.admitted.len();
        let path = path_of(s);
        // (other service, the host they meet at, what is compared there);
        // the scope is only built for a disagreement.
        let mut meetings: Vec<(usize, Option<&HostPattern>, Settings)> = Vec::new();
        let mut meet = |j: Option<&usize>, h: Option<&'a HostPattern>, settings: Settings| {
            if let Some(&j) = j {
                let seen = meetings
                    .iter()
                    .any(|(k, _, set)| *k == j && std::ptr::eq(*set, settings));
                if !seen {
                    meetings.push((j, h, settings));
                }
            }
        };
        for h in &s.hosts {
            meet(self.hosts.get(h), Some(h), HOST_SETTINGS);
            if s.tls.is_some() {
                meet(self.certs.get(h), Some(h), CERT);
            }
            meet(self.routes.get(&(h, path)), Some(h), POOL_SETTINGS);
            if !s.redirects.is_empty() {
                meet(self.redirects.get(&(h, path)), Some(h), REDIRECTS);
            }
        }
        if s.default_backend {
            meet(self.default_backend.as_ref(), None, DEFAULT_BACKEND);
        }
        // Stable: per other service, in the order met above.
        meetings.sort_by_key(|(j, _, _)| *j);
        let mut out = Vec::new();
        for (j, host, settings) in meetings {
            let other = self.admitted[j];
            let pool = std::ptr::eq(settings, POOL_SETTINGS) || std::ptr::eq(settings, REDIRECTS);
            // A pool of a passthrough and a terminating service is already
            // wrong at host level; its pool settings would only add noise.
            if pool && other.passthrough != s.passthrough {
                continue;
            }
            let scope = || match host {
                None => Scope::Anywhere,
                Some(h) if pool => Scope::Route(h.clone(), path.to_owned()),
                Some(h) => Scope::Host(h.clone()),
            };
            for (setting, agrees) in settings {
                if !agrees(s, other) {
                    out.push(Disagreement {
                        service,
                        other: j,
                        other_name: other.name.clone(),
                        setting,
                        scope: scope(),
                    });
                }
            }
        }
        out
    }

    /// Adds `s` as the next service, the one to agree with wherever it
    /// is the first claimant. Returns its index.
    pub fn admit(&mut self, s: &'a Service) -> usize {
        let i = self.admitted.len();
        let path = path_of(s);
        for h in &s.hosts {
            self.hosts.entry(h).or_insert(i);
            if s.tls.is_some() {
                self.certs.entry(h).or_insert(i);
            }
            if !s.redirects.is_empty() {
                self.redirects.entry((h, path)).or_insert(i);
            }
            self.routes.entry((h, path)).or_insert(i);
        }
        if s.default_backend && self.default_backend.is_none() {
            self.default_backend = Some(i);
        }
        self.admitted.push(s);
        i
    }
}

/// Every disagreement among `services`, each reported at the later
/// service, checked against the first claimant of each host and route.
/// Every service is admitted, so this suits a provider that refuses the
/// whole set on any error (the file); one that drops the later service
/// and goes on (Docker) uses [`Claims`] and admits only what it keeps.
pub fn disagreements(services: &[Service]) -> Vec<Disagreement> {
    let mut claims = Claims::new();
    let mut out = Vec::new();
    for s in services {
        out.extend(claims.check(s));
        claims.admit(s);
    }
    out
}

/// Hosts owned by a group of services (for Docker, a stack namespace):
/// the first service to claim a host owns it for its group, and a service
/// of another group may not join it. Services are offered in the order
/// that decides ownership (for Docker, oldest first).
#[derive(Debug, Default)]
pub struct HostOwners {
    /// Host → (group, first claimant).
    owners: HashMap<HostPattern, (String, String)>,
}

/// A host a service may not have: another group owns it, or a wildcard
/// above it (which an exact name would otherwise take traffic from).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub host: HostPattern,
    /// The pattern owned: `host` itself, or a wildcard covering it.
    pub owned: HostPattern,
    /// The service that owns it, and its group.
    pub owner: String,
    pub owner_group: String,
    /// The refused service's group.
    pub group: String,
}

impl Refusal {
    /// The message, naming groups as `group` (such as "stack namespace")
    /// and the setting that would allow sharing.
    pub fn message(&self, group: &str, allow: &str) -> String {
        let shown = |g: &str| {
            if g.is_empty() {
                "none".to_owned()
            } else {
                format!("{g:?}")
            }
        };
        let whose = if self.owned == self.host {
            format!("host {} belongs to", self.host)
        } else {
            format!(
                "host {} falls under {}, which belongs to",
                self.host, self.owned
            )
        };
        format!(
            "{whose} service {} ({group} {}); this service's {group} is {}, so it may not join it (set {allow} to let them share hosts)",
            self.owner,
            shown(&self.owner_group),
            shown(&self.group)
        )
    }
}

impl HostOwners {
    pub fn new() -> HostOwners {
        HostOwners::default()
    }

    /// Claims `hosts` for `service` of `group`: returns the refusals (the
    /// hosts another group owns, itself or through the nearest wildcard
    /// above it, which serves the host's requests until an exact name
    /// claims it); the rest become the group's if they had no owner yet.
    pub fn claim(&mut self, service: &str, group: &str, hosts: &[HostPattern]) -> Vec<Refusal> {
        let mut refused = Vec::new();
        for h in hosts {
            // The host itself, else the nearest wildcard above it (the one
            // that serves its requests today).
            let mut owned = h.clone();
            let mut owner = self.owners.get(h);
            let (HostPattern::Exact(name) | HostPattern::Wildcard(name)) = h;
            let mut rest = name.as_str();
            while owner.is_none() {
                let Some((_, above)) = rest.split_once('.') else {
                    break;
                };
                rest = above;
                let w = HostPattern::Wildcard(rest.to_owned());
                if let Some(o) = self.owners.get(&w) {
                    owner = Some(o);
                    owned = w;
                }
            }
            match owner {
                Some((g, owner)) if g != group => refused.push(Refusal {
                    owned,
                    host: h.clone(),
                    owner: owner.clone(),
                    owner_group: g.clone(),
                    group: group.to_owned(),
                }),
                // The group's own, or nobody's yet: the first claimant of
                // this very pattern is named as its owner.
                _ => {
                    self.owners
                        .entry(h.clone())
                        .or_insert_with(|| (group.to_owned(), service.to_owned()));
                }
            }
        }
        refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::TlsFiles;

    #[test]
    fn a_redirect_with_any_character_in_its_scheme_is_an_error_not_a_panic() {
        // Found by the `labels` fuzz target: "ht\u{fffd}ps://a.test" once
        // sliced the string inside a character.
        for bad in [
            "http://old.test,ht\u{fffd}ps://a.test",
            "h\u{e9}tp://a.test,http://b.test",
            "\u{fffd}\u{fffd}://x,http://y",
        ] {
            assert!(parse_redirect_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("10B"), Ok(10));
        for bad in ["1MB", "1.5MiB", "MiB", "", "-1", "1 mib", "1kb"] {
            let e = parse_size(bad).unwrap_err();
            assert!(
                e.starts_with(&format!("{bad:?} is not a size such as \"512KiB\"")),
                "{bad}: {e}"
            );
        }
        assert_eq!(parse_size("0KiB").unwrap_err(), "must be greater than zero");
        assert_eq!(
            parse_size("99999999999999GiB").unwrap_err(),
            "\"99999999999999GiB\" is too large"
        );
        assert_eq!(size_from_int(0).unwrap_err(), "must be greater than zero");
        assert_eq!(
            size_from_int(-5).unwrap_err(),
            "-5 is not a size (bytes, above zero)"
        );
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(
            parse_timeout("0s").unwrap_err(),
            "must be greater than zero"
        );
        assert_eq!(parse_timeout("31d").unwrap_err(), "must be at most 30 days");
        assert!(parse_timeout("soon")
            .unwrap_err()
            .starts_with("\"soon\" is not a duration such as \"5s\""));
        // Milliseconds, as hedge_delay's default is written.
        assert_eq!(parse_timeout("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_timeout("1s 500ms"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("42"), Ok(42));
        assert_eq!(parse_number("-1"), Ok(-1));
        for bad in ["", "1.5", "ten", "1e3", "99999999999999999999"] {
            assert_eq!(
                parse_number(bad).unwrap_err(),
                format!("{bad:?} is not a whole number")
            );
        }
        assert_eq!(number_in(0, 0, 5), Ok(0));
        assert_eq!(number_in(5, 0, 5), Ok(5));
        assert_eq!(number_in(-1, 0, 5).unwrap_err(), "must be at least 0");
        assert_eq!(number_in(6, 0, 5).unwrap_err(), "must be at most 5");
        assert_eq!(
            number_in(i64::MAX, 1, u32::MAX).unwrap_err(),
            "must be at most 4294967295"
        );
        assert_eq!(percent(0), Ok(0));
        assert_eq!(percent(100), Ok(100));
        assert_eq!(percent(101).unwrap_err(), "must be at most 100");
        assert_eq!(percent(-1).unwrap_err(), "must be at least 0");
        assert_eq!(max_requests(1), Ok(1));
        assert_eq!(max_requests(0).unwrap_err(), "must be at least 1");
    }

    #[test]
    fn health_paths_statuses_and_hosts() {
        assert_eq!(parse_health_path("/healthz"), Ok("/healthz".into()));
        assert_eq!(
            parse_health_path("/status?full=1&x=%20"),
            Ok("/status?full=1&x=%20".into())
        );
        let cases = [
            ("healthz", "\"healthz\" must start with '/', as in \"/healthz\""),
            ("", "\"\" must start with '/', as in \"/healthz\""),
            ("/a b", "\"/a b\" contains ' ': use printable ASCII without spaces (percent-encode the rest)"),
            ("/a\tb", "\"/a\\tb\" contains '\\t': use printable ASCII without spaces (percent-encode the rest)"),
            ("/a\u{7f}", "\"/a\\u{7f}\" contains '\\u{7f}': use printable ASCII without spaces (percent-encode the rest)"),
            ("/é", "\"/é\" contains 'é': use printable ASCII without spaces (percent-encode the rest)"),
            ("/a#b", "\"/a#b\" contains '#': a fragment is never sent to a server"),
        ];
        for (text, want) in cases {
            assert_eq!(parse_health_path(text).unwrap_err(), want, "{text:?}");
        }

        assert_eq!(parse_statuses("200-399"), Ok(vec![(200, 399)]));
        assert_eq!(
            parse_statuses("200,204,300-399"),
            Ok(vec![(200, 200), (204, 204), (300, 399)])
        );
        // Sorted, overlapping and adjacent ranges merged: one meaning, one form.
        assert_eq!(
            parse_statuses(" 300-399 , 200-299,250-260, 404,100"),
            Ok(vec![(100, 100), (200, 399), (404, 404)])
        );
        assert_eq!(parse_statuses("599-599"), Ok(vec![(599, 599)]));
        let cases = [
            (
                "",
                "\"\": \"\" is not a status code or a range such as \"200-399\"",
            ),
            (
                "2xx",
                "\"2xx\": \"2xx\" is not a status code or a range such as \"200-399\"",
            ),
            (
                "200,",
                "\"200,\": \"\" is not a status code or a range such as \"200-399\"",
            ),
            (
                "200-",
                "\"200-\": \"\" is not a status code or a range such as \"200-399\"",
            ),
            (
                "200-300-400",
                "\"200-300-400\": \"300-400\" is not a status code or a range such as \"200-399\"",
            ),
            (
                "200;204",
                "\"200;204\": \"200;204\" is not a status code or a range such as \"200-399\"",
            ),
            ("99", "\"99\": 99 is not a status code (100 to 599)"),
            (
                "200-600",
                "\"200-600\": 600 is not a status code (100 to 599)",
            ),
            (
                "-200",
                "\"-200\": \"\" is not a status code or a range such as \"200-399\"",
            ),
            (
                "399-200",
                "\"399-200\": the range 399-200 runs backwards; write it low to high",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_statuses(text).unwrap_err(), want, "{text:?}");
        }

        assert_eq!(
            parse_health_host("Check.Internal."),
            Ok("check.internal".into())
        );
        let cases = [
            (
                "*.a.test",
                "\"*.a.test\": a check sends one host name, not a wildcard",
            ),
            (
                "a.test:80",
                "\"a.test:80\": give the host name without a port",
            ),
            ("a b", "\"a b\": invalid character ' '"),
            ("", "\"\": empty host name"),
        ];
        for (text, want) in cases {
            assert_eq!(parse_health_host(text).unwrap_err(), want, "{text:?}");
        }
    }

    fn check(keys: HealthKeys<'_>) -> Result<Option<HealthCheck>, Vec<String>> {
        health_check(&keys).map_err(|problems| {
            problems
                .into_iter()
                .map(|p| format!("{}: {}", p.setting, p.message))
                .collect()
        })
    }

    #[test]
    fn health_checks_fill_defaults_and_need_a_path() {
        assert_eq!(check(HealthKeys::default()), Ok(None));
        let defaults = check(HealthKeys {
            path: Some("/healthz"),
            ..HealthKeys::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            defaults,
            HealthCheck {
                path: "/healthz".into(),
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                healthy: 2,
                unhealthy: 3,
                status: vec![(200, 399)],
                host: None,
            }
        );
        for (status, accepted) in [
            (199, false),
            (200, true),
            (302, true),
            (399, true),
            (400, false),
            (503, false),
        ] {
            assert_eq!(defaults.accepts(status), accepted, "{status}");
        }
        let set = check(HealthKeys {
            path: Some("/ready"),
            interval: Some("1m"),
            timeout: Some("1m"),
            healthy: Some(1),
            unhealthy: Some(10),
            status: Some("204,500-503"),
            host: Some("a.test"),
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            (set.interval, set.timeout, set.healthy, set.unhealthy),
            (Duration::from_secs(60), Duration::from_secs(60), 1, 10)
        );
        assert!(set.accepts(204) && set.accepts(502) && !set.accepts(200));
        assert_eq!(set.host.as_deref(), Some("a.test"));

        // Every other key without a path is an error, each named.
        assert_eq!(
            check(HealthKeys {
                interval: Some("1s"),
                timeout: Some("1s"),
                healthy: Some(1),
                unhealthy: Some(1),
                status: Some("200"),
                host: Some("a.test"),
                ..HealthKeys::default()
            })
            .unwrap_err(),
            [
                "health_interval: health_interval is set but health_path is not; no check would run",
                "health_timeout: health_timeout is set but health_path is not; no check would run",
                "health_healthy: health_healthy is set but health_path is not; no check would run",
                "health_unhealthy: health_unhealthy is set but health_path is not; no check would run",
                "health_status: health_status is set but health_path is not; no check would run",
                "health_host: health_host is set but health_path is not; no check would run",
            ]
        );
        // Every bad value, each named; a bad value is not compared further.
        assert_eq!(
            check(HealthKeys {
                path: Some("x"),
                interval: Some("0s"),
                timeout: Some("31d"),
                healthy: Some(0),
                unhealthy: Some(-3),
                status: Some("600"),
                host: Some("*.a.test"),
            })
            .unwrap_err(),
            [
                "health_path: \"x\" must start with '/', as in \"/healthz\"",
                "health_interval: must be greater than zero",
                "health_timeout: must be at most 30 days",
                "health_healthy: must be at least 1",
                "health_unhealthy: must be at least 1",
                "health_status: \"600\": 600 is not a status code (100 to 599)",
                "health_host: \"*.a.test\": a check sends one host name, not a wildcard",
            ]
        );
    }

    #[test]
    fn a_checks_timeout_is_at_most_its_interval() {
        let with = |interval, timeout| {
            check(HealthKeys {
                path: Some("/h"),
                interval,
                timeout,
                ..HealthKeys::default()
            })
        };
        assert!(with(Some("2s"), None).unwrap().is_some());
        assert!(with(None, Some("5s")).unwrap().is_some());
        assert!(with(Some("1s"), Some("1000ms")).unwrap().is_some());
        assert_eq!(
            with(None, Some("10s")).unwrap_err(),
            ["health_timeout: health_timeout \"10s\" is longer than health_interval \"5s\""]
        );
        // The default timeout is shortened to a short interval.
        assert_eq!(
            with(Some("1s"), None).unwrap().unwrap().timeout,
            Duration::from_secs(1)
        );
        assert_eq!(
            with(Some("500ms"), Some("1s")).unwrap_err(),
            ["health_timeout: health_timeout \"1s\" is longer than health_interval \"500ms\""]
        );
        // A value that did not read is not compared: its own problem says it.
        assert_eq!(with(Some("1s"), Some("later")).unwrap_err().len(), 1);
        // A bad path still gets its timings checked: every problem at once.
        let e = check(HealthKeys {
            path: Some("h"),
            timeout: Some("9s"),
            ..HealthKeys::default()
        })
        .unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[1].starts_with("health_timeout: health_timeout \"9s\" is longer"));
        // A default shown as humantime writes it.
        let p = not_longer(
            Timed {
                setting: "base",
                text: Some("10m"),
                read: Some(Duration::from_secs(600)),
                default: Duration::from_secs(10),
            },
            Timed {
                setting: "max",
                text: None,
                read: None,
                default: Duration::from_secs(300),
            },
        )
        .unwrap();
        assert_eq!(
            (p.setting, p.message.as_str()),
            ("base", "base \"10m\" is longer than max \"5m\"")
        );
    }

    #[test]
    fn context_roots() {
        assert_eq!(parse_context_root("/app"), Ok(Some("/app".into())));
        assert_eq!(parse_context_root("/app/"), Ok(Some("/app".into())));
        assert_eq!(parse_context_root("/a/b"), Ok(Some("/a/b".into())));
        assert_eq!(parse_context_root("/"), Ok(None));
        let cases = [
            ("app", "\"app\" must start with '/'"),
            ("", "\"\" must start with '/'"),
            ("/a b", "\"/a b\" contains ' ': use printable ASCII"),
            ("/a\tb", "\"/a\\tb\" contains '\\t'"),
            ("/é", "\"/é\" contains 'é'"),
            (
                "/a?x=1",
                "\"/a?x=1\" contains '?': a context root is a path",
            ),
            ("/a#x", "\"/a#x\" contains '#'"),
            ("/a//b", "\"/a//b\" contains \"//\""),
            ("//", "\"//\" contains \"//\""),
            ("/a/../b", "\"/a/../b\" contains a \".\" or \"..\" segment"),
            ("/..", "\"/..\" contains a \".\" or \"..\" segment"),
            ("/./a", "\"/./a\" contains a \".\" or \"..\" segment"),
        ];
        for (text, want) in cases {
            let e = parse_context_root(text).unwrap_err();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
        // Dots inside a segment are a name like any other.
        assert_eq!(parse_context_root("/a..b"), Ok(Some("/a..b".into())));
    }

    #[test]
    fn cookie_names_and_balance() {
        assert_eq!(parse_cookie_name("JSESSIONID"), Ok("JSESSIONID".into()));
        assert_eq!(parse_cookie_name("a.b-c_d!~"), Ok("a.b-c_d!~".into()));
        assert!(parse_cookie_name("")
            .unwrap_err()
            .starts_with("must not be empty"));
        for (bad, c) in [("a b", "' '"), ("a=b", "'='"), ("a;", "';'"), ("é", "'é'")] {
            let e = parse_cookie_name(bad).unwrap_err();
            assert!(
                e.starts_with(&format!("{bad:?} is not a cookie name: {c} is not allowed")),
                "{e}"
            );
        }
        assert_eq!(parse_balance("least_request"), Ok(Balance::LeastRequest));
        assert_eq!(parse_balance("round_robin"), Ok(Balance::RoundRobin));
        assert_eq!(
            parse_balance("random").unwrap_err(),
            "\"random\" is not one of \"round_robin\", \"least_request\""
        );
    }

    #[test]
    fn redirects() {
        let r = parse_redirect("http://Old.Example.com/", "https://new.example.com/").unwrap();
        assert_eq!(
            r,
            Redirect {
                from_scheme: "http".into(),
                from_host: "old.example.com".into(),
                to: "https://new.example.com".into()
            }
        );
        let r = parse_redirect("HTTPS://a.test", "http://[::1]:8080/base/").unwrap();
        assert_eq!(
            (r.from_scheme.as_str(), r.to.as_str()),
            ("https", "http://[::1]:8080/base")
        );
        let cases = [
            (
                "a.test",
                "http://b.test",
                "from \"a.test\" must be http://host or https://host",
            ),
            (
                "ftp://a.test",
                "http://b.test",
                "from \"ftp://a.test\" must be http://host",
            ),
            (
                "http://",
                "http://b.test",
                "from \"http://\" must be http://host",
            ),
            (
                "http://a.test/x",
                "http://b.test",
                "from \"http://a.test/x\" must be a scheme and a host only",
            ),
            (
                "http://a.test:8080",
                "http://b.test",
                "from \"http://a.test:8080\": \"a.test:8080\": hosts are matched without the port",
            ),
            (
                "http://*.a.test",
                "http://b.test",
                "from \"http://*.a.test\": a redirect's host must be exact",
            ),
            (
                "http://a.test",
                "b.test",
                "to \"b.test\" must be an absolute http:// or https:// URL",
            ),
            (
                "http://a.test",
                "http://",
                "to \"http://\" must be an absolute",
            ),
            (
                "http://a.test",
                "http://b.test:0",
                "to \"http://b.test:0\" must be an absolute",
            ),
            (
                "http://a.test",
                "http://u@b.test",
                "to \"http://u@b.test\" must be an absolute",
            ),
            (
                "http://a.test",
                "http://b.test/?q",
                "to \"http://b.test/?q\" contains '?'",
            ),
            (
                "http://a.test",
                "http://b .test",
                "to \"http://b .test\" contains ' '",
            ),
            (
                "http://a.test",
                "http://A.test/",
                "\"http://a.test\" redirects to itself",
            ),
        ];
        for (from, to, want) in cases {
            let e = parse_redirect(from, to).unwrap_err();
            assert!(e.starts_with(want), "{from} {to}: {e}");
        }
        let list =
            parse_redirect_list("http://a.test,https://a.test; https://b.test , https://c.test;")
                .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].from_host, "b.test");
        for bad in ["http://a.test", "http://a.test,http://b.test,http://c.test"] {
            let e = parse_redirect_list(bad).unwrap_err();
            assert!(
                e.starts_with(&format!("{bad:?} is not a \"from,to\" pair")),
                "{e}"
            );
        }
    }

    fn svc(name: &str, hosts: &[&str]) -> Service {
        Service {
            name: name.into(),
            hosts: hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            ..Service::default()
        }
    }

    fn problems(s: &Service) -> Vec<String> {
        service_problems(s)
            .into_iter()
            .map(|p| format!("{}: {}", p.setting, p.message))
            .collect()
    }

    #[test]
    fn one_service_problems() {
        let mut s = svc("a", &["a.test", "*.w.test"]);
        assert!(problems(&s).is_empty());
        s.context_root_rewrite = true;
        assert_eq!(
            problems(&s),
            ["context_root_rewrite: needs a context_root (other than \"/\"): there is no prefix to remove"]
        );
        s.context_root = Some("/app".into());
        assert!(problems(&s).is_empty());
        s.redirects = vec![
            parse_redirect("http://a.test", "https://a.test").unwrap(),
            parse_redirect("http://b.test", "https://a.test").unwrap(),
            parse_redirect("http://a.test", "https://c.test").unwrap(),
        ];
        assert_eq!(
            problems(&s),
            [
                "redirects: from http://b.test: host b.test is not one of the service's hosts (a.test, *.w.test)",
                "redirects: from http://a.test is listed twice",
            ]
        );
        let mut p = svc("p", &["p.test"]);
        p.passthrough = true;
        p.ip_hash = true;
        p.balance = Balance::LeastRequest;
        p.connect_timeout = Some(Duration::from_secs(1));
        assert!(problems(&p).is_empty());
        p.redirects = vec![parse_redirect("http://p.test", "https://q.test").unwrap()];
        p.default_backend = true;
        p.context_root = Some("/x".into());
        p.sticky_session_cookie = Some("s".into());
        p.max_body_size = Some(1);
        p.upstream_timeout = Some(Duration::from_secs(1));
        let got = problems(&p);
        let settings: Vec<&str> = got.iter().map(|m| m.split(':').next().unwrap()).collect();
        assert_eq!(
            settings,
            [
                "context_root",
                "redirects",
                "sticky_session_cookie",
                "default_backend",
                "max_body_size",
                "upstream_timeout"
            ]
        );
        assert!(got[1].ends_with(
            "does not apply to a passthrough service: it relays TLS unread and sees no requests"
        ));
        // Overload settings apply to tunnels too; a check does not.
        let mut p = svc("p", &["p.test"]);
        p.passthrough = true;
        p.max_requests = Some(1);
        p.max_ejected_percent = Some(10);
        assert!(problems(&p).is_empty());
        p.health = Some(health("/h"));
        assert_eq!(
            problems(&p),
            ["health_path: does not apply to a passthrough service: a check is an HTTP request, and its upstreams expect the clients' TLS"]
        );
    }

    fn messages(services: &[Service]) -> Vec<String> {
        disagreements(services)
            .iter()
            .map(|d| format!("{} {}: {d}", services[d.service].name, d.setting))
            .collect()
    }

    #[test]
    fn host_and_pool_settings_must_agree() {
        let a = svc("a", &["a.test", "x.test"]);
        let mut b = svc("b", &["x.test", "a.test"]);
        b.balance = Balance::LeastRequest;
        b.ssl_only = true;
        b.tls = Some(TlsFiles {
            cert: "b.crt".into(),
            key: "b.key".into(),
            ocsp: None,
        });
        // One pool (both at /): each setting reported once, at the first shared host.
        assert_eq!(
            messages(&[a.clone(), b.clone()]),
            [
                "b ssl_only: shares host x.test and path / with service a but not its ssl_only; services on one host and path must agree",
                "b balance: shares host x.test and path / with service a but not its balance; services on one host and path must agree",
            ]
        );
        // Another path on the same host is another pool: only host settings count.
        b.context_root = Some("/api".into());
        assert!(messages(&[a.clone(), b.clone()]).is_empty());
        let mut c = svc("c", &["a.test"]);
        c.context_root = Some("/api".into());
        c.tls = Some(TlsFiles {
            cert: "c.crt".into(),
            key: "c.key".into(),
            ocsp: None,
        });
        c.sticky_session_cookie = Some("sid".into());
        c.passthrough = false;
        assert_eq!(
            messages(&[a.clone(), b.clone(), c.clone()]),
            [
                "c tls_cert: shares host a.test with service b but not its tls_cert; services on one host must agree",
                "c ssl_only: shares host a.test and path /api with service b but not its ssl_only; services on one host and path must agree",
                "c sticky_session_cookie: shares host a.test and path /api with service b but not its sticky_session_cookie; services on one host and path must agree",
                "c balance: shares host a.test and path /api with service b but not its balance; services on one host and path must agree",
            ]
        );
        // Every pool-level setting is compared.
        let base = svc("a", &["a.test"]);
        let variants: Vec<(&str, Service)> = vec![
            (
                "hsts_max_age",
                Service {
                    hsts_max_age: Some(Duration::from_secs(1)),
                    ..base.clone()
                },
            ),
            (
                "context_root_rewrite",
                Service {
                    context_root_rewrite: true,
                    ..base.clone()
                },
            ),
            (
                "ip_hash",
                Service {
                    ip_hash: true,
                    ..base.clone()
                },
            ),
            (
                "max_body_size",
                Service {
                    max_body_size: Some(1),
                    ..base.clone()
                },
            ),
            (
                "connect_timeout",
                Service {
                    connect_timeout: Some(Duration::from_secs(1)),
                    ..base.clone()
                },
            ),
            (
                "upstream_timeout",
                Service {
                    upstream_timeout: Some(Duration::from_secs(1)),
                    ..base.clone()
                },
            ),
            (
                "health_path",
                Service {
                    health: Some(health("/h")),
                    ..base.clone()
                },
            ),
            (
                "max_requests",
                Service {
                    max_requests: Some(1),
                    ..base.clone()
                },
            ),
            (
                "max_ejected_percent",
                Service {
                    max_ejected_percent: Some(1),
                    ..base.clone()
                },
            ),
        ];
        for (setting, mut v) in variants {
            v.name = "v".into();
            let d = disagreements(&[base.clone(), v]);
            assert_eq!(d.len(), 1, "{setting}: {d:?}");
            assert_eq!(d[0].setting, setting);
            assert_eq!(
                (d[0].service, d[0].other, d[0].other_name.as_str()),
                (1, 0, "a")
            );
        }
    }

    fn health(path: &str) -> HealthCheck {
        health_check(&HealthKeys {
            path: Some(path),
            ..HealthKeys::default()
        })
        .unwrap()
        .unwrap()
    }

    /// Services that both check must check alike, each setting named by
    /// its key; one that checks and one that doesn't differ in the path only.
    #[test]
    fn a_pools_health_checks_must_agree_setting_by_setting() {
        let a = Service {
            health: Some(health("/h")),
            ..svc("a", &["a.test"])
        };
        let with = |edit: fn(&mut HealthCheck)| {
            let mut h = health("/h");
            edit(&mut h);
            Service {
                health: Some(h),
                ..svc("b", &["a.test"])
            }
        };
        type Edit = fn(&mut HealthCheck);
        let edits: [(&str, Edit); 7] = [
            ("health_path", |h| h.path = "/other".into()),
            ("health_interval", |h| h.interval = Duration::from_secs(9)),
            ("health_timeout", |h| h.timeout = Duration::from_secs(1)),
            ("health_healthy", |h| h.healthy = 9),
            ("health_unhealthy", |h| h.unhealthy = 9),
            ("health_status", |h| h.status = vec![(200, 200)]),
            ("health_host", |h| h.host = Some("x.test".into())),
        ];
        for (setting, edit) in edits {
            assert_eq!(
                messages(&[a.clone(), with(edit)]),
                [format!("b {setting}: shares host a.test and path / with service a but not its {setting}; services on one host and path must agree")]
            );
        }
        assert!(messages(&[a.clone(), with(|_| {})]).is_empty());
        let unchecked = svc("c", &["a.test"]);
        assert_eq!(
            messages(&[a, unchecked]),
            ["c health_path: shares host a.test and path / with service a but not its health_path; services on one host and path must agree"]
        );
    }

    #[test]
    fn redirects_agree_when_both_have_some_and_passthrough_is_host_level() {
        let r1 = parse_redirect("http://a.test", "https://a.test").unwrap();
        let r2 = parse_redirect("https://a.test", "https://b.test").unwrap();
        let a = Service {
            redirects: vec![r1.clone(), r2.clone()],
            ..svc("a", &["a.test"])
        };
        let b = Service {
            redirects: vec![r2.clone(), r1.clone()],
            ..svc("b", &["a.test"])
        };
        let c = svc("c", &["a.test"]);
        let d = Service {
            redirects: vec![r1.clone()],
            ..svc("d", &["a.test"])
        };
        assert_eq!(
            messages(&[a, b, c, d]),
            ["d redirects: shares host a.test and path / with service a but not its redirects; services on one host and path must agree"]
        );
        let mut p = svc("p", &["a.test"]);
        p.passthrough = true;
        p.ssl_only = true;
        // Passthrough differs: the pool settings are not listed on top.
        assert_eq!(
            messages(&[svc("a", &["a.test"]), p]),
            ["p passthrough: shares host a.test with service a but not its passthrough; services on one host must agree"]
        );
    }

    #[test]
    fn one_default_backend() {
        let mut a = svc("a", &["a.test"]);
        a.default_backend = true;
        let mut b = svc("b", &["b.test"]);
        b.default_backend = true;
        let c = svc("c", &["c.test"]);
        let mut d = svc("d", &["d.test"]);
        d.default_backend = true;
        assert_eq!(
            messages(&[a, b, c, d]),
            [
                "b default_backend: service a already has default_backend; only one service may have it",
                "d default_backend: service a already has default_backend; only one service may have it",
            ]
        );
    }

    #[test]
    fn hosts_belong_to_the_first_claimants_group() {
        let mut owners = HostOwners::new();
        let hosts = |names: &[&str]| -> Vec<HostPattern> {
            names
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect()
        };
        assert!(owners
            .claim("prod_web", "prod", &hosts(&["a.test", "*.b.test"]))
            .is_empty());
        // The same group shares (a canary within one stack).
        assert!(owners
            .claim("prod_canary", "prod", &hosts(&["a.test"]))
            .is_empty());
        // Another group is refused the owned hosts only.
        let refused = owners.claim("dev_web", "dev", &hosts(&["a.test", "c.test", "*.b.test"]));
        let shown: Vec<String> = refused
            .iter()
            .map(|r| r.message("stack namespace", "[docker] allow_shared_hosts = true"))
            .collect();
        assert_eq!(
            shown,
            [
                "host a.test belongs to service prod_web (stack namespace \"prod\"); this service's stack namespace is \"dev\", so it may not join it (set [docker] allow_shared_hosts = true to let them share hosts)",
                "host *.b.test belongs to service prod_web (stack namespace \"prod\"); this service's stack namespace is \"dev\", so it may not join it (set [docker] allow_shared_hosts = true to let them share hosts)",
            ]
        );
        // Under a wildcard another group owns: refused; the nearest
        // wildcard decides (dev's *.d.b.test sits under prod's *.b.test).
        assert!(
            owners
                .claim("dev_sub", "dev", &hosts(&["*.d.b.test"]))
                .len()
                == 1
        );
        let mut owners = HostOwners::new();
        owners.claim("prod_web", "prod", &hosts(&["*.b.test"]));
        owners.claim("dev_web", "dev", &hosts(&["x.test"]));
        let refused = owners.claim(
            "dev_api",
            "dev",
            &hosts(&["api.b.test", "*.c.b.test", "b.test"]),
        );
        let shown: Vec<String> = refused.iter().map(|r| r.message("ns", "x")).collect();
        assert_eq!(
            shown,
            [
                "host api.b.test falls under *.b.test, which belongs to service prod_web (ns \"prod\"); this service's ns is \"dev\", so it may not join it (set x to let them share hosts)",
                "host *.c.b.test falls under *.b.test, which belongs to service prod_web (ns \"prod\"); this service's ns is \"dev\", so it may not join it (set x to let them share hosts)",
            ]
        );
        let mut owners = HostOwners::new();
        owners.claim("prod_web", "prod", &hosts(&["*.b.test"]));
        owners.claim("prod_x", "prod", &hosts(&["*.x.b.test"]));
        assert!(owners
            .claim("prod_y", "prod", &hosts(&["y.x.b.test"]))
            .is_empty());
        let refused = owners.claim("dev_y", "dev", &hosts(&["z.x.b.test"]));
        assert_eq!(refused[0].owned.to_string(), "*.x.b.test");

        let mut owners = HostOwners::new();
        owners.claim("prod_web", "prod", &hosts(&["a.test"]));
        owners.claim("dev_web", "dev", &hosts(&["c.test"]));
        // A service in no namespace is a group too.
        let refused = owners.claim("loose", "", &hosts(&["c.test"]));
        assert_eq!(refused.len(), 1);
        assert!(refused[0]
            .message("stack namespace", "x")
            .contains("belongs to service dev_web (stack namespace \"dev\"); this service's stack namespace is none"));
    }

    #[test]
    fn claims_admit_only_what_the_caller_keeps() {
        let a = svc("a", &["a.test"]);
        let b = Service {
            ip_hash: true,
            ..svc("b", &["a.test"])
        };
        let c = Service {
            ip_hash: true,
            ..svc("c", &["a.test"])
        };
        let mut claims = Claims::new();
        assert!(claims.check(&a).is_empty());
        assert_eq!(claims.admit(&a), 0);
        let d = claims.check(&b);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].service, d[0].other), (1, 0));
        assert_eq!(
            d[0].message("com.docker.lb.ip_hash"),
            "shares host a.test and path / with service a but not its com.docker.lb.ip_hash; services on one host and path must agree"
        );
        // b was dropped: c is checked against a, not b.
        assert_eq!(claims.check(&c).len(), 1);
    }

    /// 10,000 services over 1,000 hosts (10 paths each), all agreeing:
    /// checked well within a reload's budget.
    #[test]
    fn ten_thousand_services_are_checked_quickly() {
        let services: Vec<Service> = (0..10_000)
            .map(|i| Service {
                context_root: Some(format!("/p{}", i % 10)),
                ..svc(
                    &format!("s{i}"),
                    &[&format!("h{}.test", i / 10), "shared.test"],
                )
            })
            .collect();
        let start = std::time::Instant::now();
        let d = disagreements(&services);
        let took = start.elapsed();
        assert!(d.is_empty(), "{:?}", &d[..3.min(d.len())]);
        eprintln!("10,000 services checked in {took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}
