//! One request's policy, whichever codec carries it: where the request goes
//! (host, then the longest path prefix; the default backend for unclaimed
//! hosts), what Portico answers itself instead (redirects, misdirected
//! requests, bodies over the limit, unroutable requests), the target the
//! upstream sees (a context root stripped), and which upstream to try first.
//! The HTTP/1.1 byte codec (`h1`) and the hyper codec (`forward`) both call
//! this; neither holds a routing rule of its own.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, StatusCode};
use portico_model::{normalize_request_host, Cidr, Route, RouteId};

use crate::access_log::{seconds, AccessLog};
use crate::answer::{Answer, Readiness};
use crate::body::Held;
use crate::context::TlsInfo;
use crate::error::ProxyError;
use crate::headers::{
    X_PROXY_ID, X_REQUEST_ID, X_SERVER_INFO, X_UPSTREAM_ADDR, X_UPSTREAM_RESPONSE_TIME,
};
use crate::metrics::Failure;
use crate::snapshot::{Pool, Snapshot};
use crate::upstream::{ConnectError, Upstream};

/// What the pipeline needs of a request head, as either codec read it.
pub(crate) struct RequestHead<'a> {
    pub method: &'a str,
    /// The `Host` header or `:authority`, as sent; or why the request has
    /// no usable one (a 400, unless Portico answers the request itself
    /// first: a load balancer's HTTP/1.0 health check sends no Host).
    pub host: Result<&'a str, &'static str>,
    /// The request target in origin form: path and query.
    pub target: &'a str,
    /// Set on connections that came in over TLS.
    pub tls: Option<&'a TlsInfo>,
    /// The declared body length, when the request has one.
    pub content_length: Option<u64>,
}

/// Where a request that is to be forwarded goes.
pub(crate) struct Forward<'a> {
    pub route: RouteId,
    /// The target the upstream gets (the context root removed, when the
    /// route rewrites).
    pub target: Cow<'a, str>,
}

/// Routes a request, or says what Portico answers instead. `readiness`:
/// what `health_uri` answers (see `Proxy::start_draining`, `set_ready`).
pub(crate) fn decide<'a>(
    snap: &Snapshot,
    req: &RequestHead<'a>,
    readiness: Readiness,
) -> Result<Forward<'a>, Box<Answer>> {
    // First: a 2xx to CONNECT, even the health answer, would tell a proxy
    // in front that a tunnel is open (RFC 9110 §9.3.6).
    if req.method == "CONNECT" {
        return Err(Answer::error(ProxyError::MethodNotAllowed(
            "CONNECT is not supported: Portico routes by host name and is not a forward proxy"
                .into(),
        )));
    }
    if let Some(uri) = &snap.config.proxy.health_uri {
        // Before the host is looked at: a balancer checks the proxy, not a
        // site, with whatever Host it has (an address, or none).
        if req.target.split('?').next() == Some(uri.as_str()) {
            return Err(Answer::health(readiness));
        }
    }
    let req_host = req
        .host
        .map_err(|why| Answer::error(ProxyError::BadRequest(why.into())))?;
    let host = normalize_request_host(req_host)
        .map_err(|e| Answer::error(ProxyError::BadRequest(e.to_string())))?;
    // Origin form, or `*` (OPTIONS); anything else would make a redirect's
    // Location name another authority.
    if !req.target.starts_with('/') && req.target != "*" {
        return Err(Answer::error(ProxyError::BadRequest(
            "the request target is not an absolute path".into(),
        )));
    }
    let path = req.target.split('?').next().unwrap_or("/");
    let table = &snap.table;
    let site = table.lookup_site(&host);
    if let Some(tls) = req.tls {
        // The connection was set up for the SNI's site: serving another
        // site's request on it would route around that site's certificate
        // (domain fronting, or a browser reusing a connection too eagerly).
        let misdirected = match &tls.sni {
            Some(sni) => table.lookup_site(sni) != site,
            // Without SNI the connection got the default certificate: it may
            // carry sites that have no certificate of their own, and those
            // whose names the default certificate covers too.
            None => {
                site.is_some_and(|s| table.site(s).tls.is_some())
                    && !snap.certs.0.default_covers(&host)
            }
        };
        if misdirected {
            return Err(Answer::error(ProxyError::Misdirected {
                host: req_host.to_owned(),
                sni: tls.sni.clone().unwrap_or_else(|| "(none)".into()),
            }));
        }
    }
    let scheme = if req.tls.is_some() { "https" } else { "http" };
    let route_id = match site {
        Some(site) => {
            let redirect = table
                .site(site)
                .redirects
                .iter()
                .find(|r| r.from_scheme == scheme && r.from_host == host);
            if let Some(r) = redirect {
                // Interlock's `return 302 target$request_uri`, for every
                // path of the host.
                return Err(Answer::redirect(
                    StatusCode::FOUND,
                    &format!("{}{}", r.to, location_path(req.target)),
                ));
            }
            match table.match_path(site, path) {
                Some(id) => id,
                None => {
                    let paths = table
                        .site(site)
                        .rules
                        .iter()
                        .filter_map(|&r| table.route(r).path.clone())
                        .collect();
                    return Err(Answer::error(ProxyError::NoPath {
                        host: host.into_owned(),
                        paths,
                    }));
                }
            }
        }
        None => match table.default_backend() {
            Some(id) if table.route(id).matches(path) => id,
            _ => {
                return Err(Answer::error(ProxyError::NoRoute {
                    host: host.into_owned(),
                }))
            }
        },
    };
    let route = table.route(route_id);
    if route.ssl_only && req.tls.is_none() {
        return Err(redirect_to_https(snap, req_host, req.target));
    }
    let target = match (&route.path, route.rewrite) {
        (Some(prefix), true) => {
            let rest = &req.target[prefix.len()..];
            if rest.is_empty() || rest.starts_with('?') {
                // `/app` → `/app/`: relative links in the application's
                // pages then resolve under the prefix (Interlock does this).
                return Err(Answer::redirect(
                    StatusCode::MOVED_PERMANENTLY,
                    &format!("{prefix}/{rest}"),
                ));
            }
            Cow::Borrowed(rest)
        }
        _ => Cow::Borrowed(req.target),
    };
    if let (Some(limit), Some(length)) = (route.max_body_size, req.content_length) {
        if length > limit {
            return Err(Answer::error(ProxyError::TooLarge {
                service: route.label(),
                limit,
            }));
        }
    }
    if route.upstreams.is_empty() {
        return Err(Answer::error(ProxyError::NoUpstreams {
            service: route.label(),
        }));
    }
    Ok(Forward {
        route: route_id,
        target,
    })
}

/// The request target as the path of a redirect's Location (`*` is `/`).
fn location_path(target: &str) -> &str {
    if target.starts_with('/') {
        target
    } else {
        "/"
    }
}

/// Methods whose requests may be sent again after a failure (RFC 9110
/// §9.2.2), when they have no body: the retry rule of both codecs.
pub(crate) fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    )
}

/// `ssl_only`: 301 to the same host, path and query over HTTPS.
fn redirect_to_https(snap: &Snapshot, host: &str, target: &str) -> Box<Answer> {
    // Drop any port the client used for plain HTTP; add the HTTPS one unless it is 443.
    let name = match host.strip_prefix('[') {
        Some(v6) => format!("[{}]", v6.split(']').next().unwrap_or_default()),
        None => host.split(':').next().unwrap_or_default().to_owned(),
    };
    let port = snap.config.proxy.https_redirect_port;
    let authority = if port == 443 {
        name
    } else {
        format!("{name}:{port}")
    };
    Answer::redirect(
        StatusCode::MOVED_PERMANENTLY,
        &format!("https://{authority}{}", location_path(target)),
    )
}

/// The hash that pins a request to an upstream, if the route asks for one:
/// its sticky cookie's value when the request carries it, else the
/// client's address under `ip_hash`.
pub(crate) fn affinity<'h>(
    route: &Route,
    cookie_headers: impl Iterator<Item = &'h [u8]>,
    client: IpAddr,
) -> Option<u64> {
    if let Some(name) = &route.sticky_cookie {
        for header in cookie_headers {
            if let Some(value) = cookie_value(header, name) {
                return Some(crate::upstream::stable_hash(value));
            }
        }
    }
    route.ip_hash.then(|| match client {
        IpAddr::V4(v4) => crate::upstream::stable_hash(&v4.octets()),
        IpAddr::V6(v6) => crate::upstream::stable_hash(&v6.octets()),
    })
}

/// The value of cookie `name` in one `Cookie` header (`a=1; b=2`).
fn cookie_value<'h>(header: &'h [u8], name: &str) -> Option<&'h [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (&pair[..eq] == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
    })
}

/// The client's address: the peer's, unless the peer is a trusted proxy,
/// whose `X-Forwarded-For` then names it (the rightmost entry that is not
/// itself a trusted proxy). Also whether the peer is trusted, so that its
/// `X-Forwarded-For` is extended rather than replaced.
pub(crate) fn client_address<'h>(
    peer: IpAddr,
    trusted: &[Cidr],
    forwarded_for: impl Iterator<Item = &'h [u8]>,
) -> (IpAddr, bool) {
    if trusted.is_empty() || !trusted.iter().any(|c| c.contains(peer)) {
        return (peer, false);
    }
    let entries: Vec<&[u8]> = forwarded_for
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty())
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(ip) = std::str::from_utf8(entry)
            .ok()
            .and_then(|e| e.parse::<IpAddr>().ok())
        else {
            // Garbage in the list: nothing left of it can be believed.
            break;
        };
        client = ip;
        if !trusted.iter().any(|c| c.contains(ip)) {
            break;
        }
    }
    (client, true)
}

/// One upstream tried for a request, and how long it took.
pub(crate) struct Attempt {
    addr: SocketAddr,
    /// `addr` as a header value, made once per upstream.
    addr_value: HeaderValue,
    took: Duration,
}

impl Attempt {
    pub(crate) fn new(upstream: &Upstream, took: Duration) -> Attempt {
        Attempt {
            addr: upstream.addr,
            addr_value: upstream.addr_value.clone(),
            took,
        }
    }
}

/// Upstreams tried for one request, with the time each took, for
/// `x-upstream-addr`, `x-upstream-response-time` and the access log
/// (comma-separated when several were tried, as nginx prints them).
/// Nearly every request tries one; that one is kept without allocating.
#[derive(Default)]
pub(crate) struct Attempts {
    first: Option<Attempt>,
    more: Vec<Attempt>,
}

impl Attempts {
    pub(crate) fn push(&mut self, attempt: Attempt) {
        if self.first.is_none() {
            self.first = Some(attempt);
        } else {
            self.more.push(attempt);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Attempt> {
        self.first.iter().chain(&self.more)
    }

    fn render(&self, mut item: impl FnMut(&mut String, &Attempt)) -> Option<String> {
        self.first.as_ref()?;
        let mut out = String::new();
        for (i, a) in self.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            item(&mut out, a);
        }
        Some(out)
    }

    pub(crate) fn addrs(&self) -> Option<String> {
        self.render(|out, a| {
            let _ = write!(out, "{}", a.addr);
        })
    }

    pub(crate) fn times(&self) -> Option<String> {
        self.render(|out, a| out.push_str(&seconds(a.took)))
    }

    /// `x-upstream-addr`; for a single attempt without formatting anything.
    pub(crate) fn addrs_value(&self) -> Option<HeaderValue> {
        match (&self.first, self.more.is_empty()) {
            (None, _) => None,
            (Some(a), true) => Some(a.addr_value.clone()),
            (Some(_), false) => self.addrs().and_then(|a| HeaderValue::from_str(&a).ok()),
        }
    }

    /// `x-upstream-response-time`; for a single attempt under a second
    /// without formatting or allocating anything.
    pub(crate) fn times_value(&self) -> Option<HeaderValue> {
        match (&self.first, self.more.is_empty()) {
            (None, _) => None,
            (Some(a), true) => Some(seconds_value(a.took)),
            (Some(_), false) => self.times().and_then(|t| HeaderValue::from_str(&t).ok()),
        }
    }
}

/// [`seconds`] as a header value. Times under a second come from a table
/// made on first use ("0.000" to "0.999"), so they cost no formatting.
fn seconds_value(d: Duration) -> HeaderValue {
    static UNDER_A_SECOND: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    if d.as_secs() == 0 {
        let table = UNDER_A_SECOND.get_or_init(|| {
            // One string for all of them, kept for the life of the process,
            // so each value is a static slice: cloning one is a copy.
            let all: &'static str = Box::leak(
                (0..1000)
                    .map(|ms| format!("0.{ms:03}"))
                    .collect::<String>()
                    .into_boxed_str(),
            );
            (0..1000)
                .map(|i| HeaderValue::from_static(&all[i * 5..i * 5 + 5]))
                .collect()
        });
        return table[d.subsec_millis() as usize].clone();
    }
    HeaderValue::from_str(&seconds(d)).expect("digits and a dot are a valid header value")
}

/// Logs a request that got an error response: upstream trouble is the
/// operator's business; a client's bad or unroutable request is only the
/// access log's.
pub(crate) fn log_failure(
    e: &ProxyError,
    client: SocketAddr,
    request_id: &HeaderValue,
    attempts: &Attempts,
) {
    let upstream = attempts.addrs();
    let upstream = upstream.as_deref().unwrap_or("-");
    let id = request_id.to_str().unwrap_or("-");
    let status = e.status().as_u16();
    if e.is_upstream_failure() {
        tracing::warn!(status, client = %client.ip(), request_id = id, upstream, error = %e, "request failed");
    } else {
        tracing::debug!(status, client = %client.ip(), request_id = id, error = %e, "request refused");
    }
}

/// Where a codec writes response headers: a `HeaderMap` (hyper) or the
/// bytes of a head (the fast path). `unique` marks a value no other
/// response will repeat (a request id, a response time).
pub(crate) trait HeaderSink {
    fn put(
        &mut self,
        name: &'static HeaderName,
        value: &[u8],
        shared: Option<&HeaderValue>,
        unique: bool,
    );
}

impl HeaderSink for http::HeaderMap {
    fn put(
        &mut self,
        name: &'static HeaderName,
        value: &[u8],
        shared: Option<&HeaderValue>,
        unique: bool,
    ) {
        let mut value = match shared {
            Some(v) => v.clone(),
            None => match HeaderValue::from_bytes(value) {
                Ok(v) => v,
                Err(_) => return,
            },
        };
        // HTTP/2 sends it as a literal never indexed (RFC 7541 §6.2.3):
        // added to the connection's HPACK table, a value seen once would
        // only push out the fields every response repeats (server,
        // content type, the proxy's id), which would then go out as
        // literals too. callgrind put HPACK encoding at 8 % of an HTTP/2
        // request's instructions before.
        value.set_sensitive(unique);
        self.insert(name.clone(), value);
    }
}

impl HeaderSink for Vec<u8> {
    fn put(&mut self, name: &'static HeaderName, value: &[u8], _: Option<&HeaderValue>, _: bool) {
        crate::framing::put_header(self, name.as_str().as_bytes(), value);
    }
}

/// Interlock's response headers, on every response (Portico's own
/// included): `x-request-id`, `x-proxy-id`, and unless hidden
/// `x-server-info`, `x-upstream-addr`, `x-upstream-response-time`.
/// `request_id` as text, and as a shared value when the codec has one.
pub(crate) fn interlock_headers(
    sink: &mut impl HeaderSink,
    snap: &Snapshot,
    server_info: &HeaderValue,
    (request_id, shared_id): (&[u8], Option<&HeaderValue>),
    attempts: &Attempts,
) {
    sink.put(&X_REQUEST_ID, request_id, shared_id, true);
    sink.put(
        &X_PROXY_ID,
        snap.proxy_id.as_bytes(),
        Some(&snap.proxy_id),
        false,
    );
    if !snap.config.proxy.hide_info_headers {
        sink.put(
            &X_SERVER_INFO,
            server_info.as_bytes(),
            Some(server_info),
            false,
        );
        if let Some(v) = attempts.addrs_value() {
            sink.put(&X_UPSTREAM_ADDR, v.as_bytes(), Some(&v), false);
        }
        if let Some(v) = attempts.times_value() {
            sink.put(&X_UPSTREAM_RESPONSE_TIME, v.as_bytes(), Some(&v), true);
        }
    }
}

/// Records in a request's access-log line how it was answered: the status
/// and the upstreams tried (both codecs' lines carry the same fields).
pub(crate) fn record(log: &mut AccessLog, status: StatusCode, attempts: &Attempts) {
    log.status = status;
    log.upstream = attempts.addrs();
    log.upstream_time = attempts.times();
}

/// How one attempt to have an upstream answer ended, as a codec reports it.
pub(crate) enum Outcome<T> {
    /// The upstream answered (a response head arrived).
    Answered(T),
    /// A pooled connection turned out closed before the upstream could have
    /// acted on the request (the keep-alive race): it may go again, once,
    /// on another connection to the same upstream, without counting as a
    /// failure.
    Stale(String),
    /// The upstream failed in a way that lets the request move on to the
    /// next one (it could not be connected to, or failed before answering a
    /// request that is safe to repeat).
    Next(String),
    /// The request ends here with this error (a timeout after it was sent,
    /// a request that may not be repeated, the client's own failure).
    Fatal(ProxyError),
}

/// One codec's way of sending a request to one upstream, in two steps, so
/// that the driver can race a slow connect (hedge) and tell a connect's
/// failure from the exchange's.
pub(crate) trait Exchange {
    /// A connection as the codec uses it.
    type Conn;
    type Out;
    /// A connection to `upstream`, within the pool's `connect_timeout`.
    /// Takes `&self`: a hedged connect runs two at once.
    async fn connect(
        &self,
        pool: &Pool,
        upstream: &Arc<Upstream>,
    ) -> Result<Self::Conn, ConnectError>;
    /// Sends the request on `conn`, up to the answer's head.
    async fn send(
        &mut self,
        pool: &Pool,
        upstream: &Arc<Upstream>,
        conn: Self::Conn,
    ) -> Outcome<Self::Out>;
    /// The answer's status, when it is an HTTP response.
    fn status(out: &Self::Out) -> Option<u16>;
}

/// Whether the upstream answered with a status that counts against it
/// (502, 503, 504).
fn failing_status(status: u16) -> bool {
    matches!(status, 502..=504)
}

/// Tries the pool's upstreams from `first` on, in order, as the outcomes
/// allow: the one retry policy of every codec (nginx's `proxy_next_upstream
/// error timeout` for what was never sent, and for idempotent requests
/// without a body). Upstreams that are down (failed checks, ejected) are
/// passed over unless the whole pool is down; moving on to another
/// upstream spends the service's retry budget; a connect that is not done
/// within `hedge_delay` is raced by one to the next upstream. Every outcome
/// is reported to the upstream's health, every attempt but a stale
/// connection's is recorded in `attempts` (for `x-upstream-addr` and the
/// log), with its whole time.
pub(crate) async fn try_upstreams<'p, E: Exchange>(
    pool: &'p Pool,
    first: usize,
    exchange: &mut E,
    attempts: &mut Attempts,
) -> Result<(E::Out, &'p Arc<Upstream>, Held), ProxyError> {
    let admitted = match pool.max_requests {
        None => None,
        Some(max) => Some(
            pool.guards
                .admit(max)
                .ok_or_else(|| ProxyError::Overloaded {
                    service: pool.label.clone(),
                    max,
                })?,
        ),
    };
    pool.guards.request();
    let n = pool.upstreams.len();
    let first = if n == 0 { 0 } else { first % n };
    // When every upstream is down, all of them take requests again.
    let everyone = n > 0 && pool.upstreams[first].health.is_down() && pool.all_down();
    let usable = |u: &Upstream| everyone || !u.health.is_down();
    let mut failures: Vec<String> = Vec::new();
    let mut stale_retry_used = false;
    let mut moved_on = false;
    let mut i = 0;
    while i < n {
        let mut upstream = &pool.upstreams[(first + i) % n];
        if !usable(upstream) {
            i += 1;
            continue;
        }
        if moved_on
            && !pool
                .guards
                .may_retry(pool.retry_budget.0, pool.retry_budget.1)
        {
            failures.push("not retried further: the service's retry budget is spent".into());
            break;
        }
        moved_on = false;
        let started = Instant::now();
        // The connect's future borrows `exchange`: it ends in this block.
        let connected = {
            let connect = exchange.connect(pool, upstream);
            let mut connect = std::pin::pin!(connect);
            let ready = std::future::poll_fn(|cx| Poll::Ready(connect.as_mut().poll(cx))).await;
            match ready {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    let next = (1..n)
                        .map(|k| (i + k, &pool.upstreams[(first + i + k) % n]))
                        .find(|(_, u)| usable(u));
                    match (pool.hedge_delay, next) {
                        (Some(delay), Some((j, other))) => {
                            let raced =
                                Box::pin(hedge(exchange, pool, connect, other, delay)).await;
                            match raced {
                                Hedged::First(r) => r,
                                Hedged::Second(r) => {
                                    // The first was slower than `hedge_delay`
                                    // and lost: it counts against its upstream.
                                    let why = format!(
                                        "connect not done within hedge_delay {}",
                                        crate::error::humanize(delay)
                                    );
                                    pool.failed(upstream, &why);
                                    upstream.stats.attempt();
                                    upstream.stats.failed(Failure::Connect);
                                    attempts.push(Attempt::new(upstream, started.elapsed()));
                                    failures.push(format!("{}: {why}", upstream.addr));
                                    i = j;
                                    upstream = other;
                                    r
                                }
                            }
                        }
                        _ => connect.await,
                    }
                }
            }
        };
        let busy = pool.least_request.then(|| upstream.busy());
        let sent = connected.is_ok();
        let outcome = match connected {
            Ok(conn) => exchange.send(pool, upstream, conn).await,
            Err(e) => {
                if e.blames_upstream() {
                    pool.failed(upstream, &e.to_string());
                    upstream.stats.failed(Failure::Connect);
                }
                Outcome::Next(e.to_string())
            }
        };
        let tried = Attempt::new(upstream, started.elapsed());
        if !matches!(outcome, Outcome::Stale(_)) || stale_retry_used {
            upstream.stats.attempt();
        }
        match outcome {
            Outcome::Answered(out) => {
                let status = E::status(&out);
                if status.is_some_and(failing_status) {
                    pool.failed(upstream, "it answered 502, 503 or 504");
                } else {
                    upstream.health.success();
                }
                upstream.stats.answered(tried.took, status.unwrap_or(0));
                attempts.push(tried);
                let held = Held { admitted, busy };
                return Ok((out, upstream, held));
            }
            Outcome::Stale(_) if !stale_retry_used => stale_retry_used = true,
            Outcome::Stale(why) | Outcome::Next(why) => {
                if sent {
                    pool.failed(upstream, &why);
                    upstream.stats.failed(Failure::Reset);
                }
                attempts.push(tried);
                failures.push(format!("{}: {why}", upstream.addr));
                moved_on = true;
                i += 1;
            }
            Outcome::Fatal(e) => {
                match e {
                    ProxyError::Timeout { .. } => upstream.stats.failed(Failure::Timeout),
                    ProxyError::BadGateway { .. } => upstream.stats.failed(Failure::Reset),
                    _ => {}
                }
                if matches!(
                    e,
                    ProxyError::Timeout { .. } | ProxyError::BadGateway { .. }
                ) {
                    pool.failed(upstream, &e.to_string());
                }
                attempts.push(tried);
                return Err(e);
            }
        }
    }
    Err(ProxyError::no_upstream_took(&pool.label, &failures))
}

/// Which of two racing connects won.
enum Hedged<T> {
    First(T),
    Second(T),
}

/// Races `first` (already under way) against a connect to `other`,
/// started after `delay`: whichever connects first is used, and the other
/// dropped. A failed one leaves the race to the other. Nothing has been
/// sent yet, so this is safe for every request.
async fn hedge<E: Exchange, F>(
    exchange: &E,
    pool: &Pool,
    mut first: Pin<&mut F>,
    other: &Arc<Upstream>,
    delay: Duration,
) -> Hedged<Result<E::Conn, ConnectError>>
where
    F: Future<Output = Result<E::Conn, ConnectError>>,
{
    tokio::select! {
        r = first.as_mut() => return Hedged::First(r),
        () = tokio::time::sleep(delay) => {}
    }
    let second = exchange.connect(pool, other);
    tokio::pin!(second);
    tokio::select! {
        r = first.as_mut() => match r {
            Ok(c) => Hedged::First(Ok(c)),
            Err(_) => Hedged::Second(second.await),
        },
        r = second.as_mut() => match r {
            Ok(c) => Hedged::Second(Ok(c)),
            Err(_) => Hedged::First(first.await),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_cookie_among_others() {
        assert_eq!(
            cookie_value(b"a=1; session=xyz; b=2", "session"),
            Some(&b"xyz"[..])
        );
        assert_eq!(cookie_value(b"session=", "session"), Some(&b""[..]));
        assert_eq!(cookie_value(b"xsession=1; sessionx=2", "session"), None);
        assert_eq!(cookie_value(b"flag; session=v", "session"), Some(&b"v"[..]));
    }

    #[test]
    fn only_a_trusted_peer_names_the_client() {
        let trusted = [Cidr {
            addr: "10.0.0.0".parse().unwrap(),
            prefix: 8,
        }];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let xff = [&b"203.0.113.9, 10.1.1.1"[..]];
        assert_eq!(
            client_address(ip("192.0.2.1"), &trusted, xff.iter().copied()),
            (ip("192.0.2.1"), false)
        );
        assert_eq!(
            client_address(ip("10.0.0.5"), &trusted, xff.iter().copied()),
            (ip("203.0.113.9"), true)
        );
        assert_eq!(
            client_address(
                ip("10.0.0.5"),
                &trusted,
                [&b"junk, 198.51.100.7"[..]].into_iter()
            ),
            (ip("198.51.100.7"), true)
        );
        assert_eq!(
            client_address(ip("10.0.0.5"), &trusted, std::iter::empty()),
            (ip("10.0.0.5"), true)
        );
        assert_eq!(
            client_address(ip("10.0.0.5"), &[], xff.iter().copied()),
            (ip("10.0.0.5"), false)
        );
    }
}
