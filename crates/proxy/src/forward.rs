//! One request's life, in the order it happens: load the snapshot, find the
//! route for the host, choose an upstream, send, retry where that is safe,
//! and finish the response with Interlock's headers and the access log.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version as HttpVersion};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulConnection, Watcher};
use portico_model::table::Route;
use portico_model::UpstreamProtocol;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use crate::access_log::{AccessLog, CombinedExtra};
use crate::answer::Answer;
use crate::balance;
use crate::body::ResponseBody;
use crate::context::ConnInfo;
use crate::error::ProxyError;
use crate::headers::{
    ip_value, new_request_id, set_forwarding, strip_hop_by_hop, strip_underscored, X_FORWARDED_FOR,
};
use crate::metrics::{Listener, Protocol, ServiceStats, Tally};
use crate::pipeline::{self, log_failure, Attempts, Outcome, RequestHead};
use crate::relay;
use crate::snapshot::{Pool, Snapshot};
use crate::upload::{
    BodyTooLarge, ClientBodyBroken, ClientStalled, ClientTooSlow, Handed, ProxyBody, Upload,
    UploadLimits,
};
use crate::upstream::{Conn, ConnectError, Upstream};
use portico_model::AccessLogFormat;

/// What the connection's protocol is known to be.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// Cleartext: HTTP/1.1, or h2c by its preface.
    Detect,
    Http1,
    H2,
}

/// Serves a connection on hyper until it closes. With no `watcher` the
/// listener is already stopping: the request the connection carries is
/// answered, with `Connection: close`, and that is all. After TLS, ALPN
/// decides the protocol: `h2` speaks only HTTP/2 (anything else is an
/// invalid preface: GOAWAY), `http/1.1` or none only HTTP/1.x (hyper's
/// version detection, which would take an HTTP/2 preface anyway, is kept
/// from seeing one).
pub(crate) async fn serve_http<I>(io: I, info: ConnInfo, alpn: Alpn, watcher: Option<Watcher>)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let snapshot = info.proxy.snapshot();
    let mut builder = match alpn {
        Alpn::Detect => &snapshot.conn_builder,
        Alpn::Http1 => &snapshot.h1_builder,
        Alpn::H2 => &snapshot.h2_builder,
    };
    // Stopping: answer what the connection carries, then close. (hyper's
    // graceful shutdown would close it unanswered: it hasn't read a byte.)
    let closing;
    if watcher.is_none() {
        let mut b = builder.clone();
        b.http1().keep_alive(false);
        closing = b;
        builder = &closing;
    }
    let client = info.client;
    let info = Arc::new(info);
    let io = crate::io::Lingering::new(crate::io::SendDeadline::new(
        io,
        snapshot.config.proxy.client_send_timeout,
        info.send_timed_out.clone(),
    ));
    let service = service_fn(move |req| {
        // On the heap: an HTTP/2 stream moves its request's future into a
        // task of its own, copying it each time (4-5 KiB, some 2 % of the
        // CPU per request in `perf`); a box moves as a pointer.
        let request = Box::pin(handle(info.clone(), req));
        async move { Ok::<_, Infallible>(request.await) }
    });
    let ended = match alpn {
        // HTTP/2 has no upgrades (and `serve_connection` honours
        // http2_only, where the upgradeable one detects the version).
        Alpn::H2 => {
            let Some(io) = keep_to_alpn(io, true).await else {
                return;
            };
            let conn = builder
                .serve_connection(TokioIo::new(io), service)
                .into_owned();
            drop(snapshot);
            until_closed(conn, watcher).await
        }
        Alpn::Http1 => {
            let Some(io) = keep_to_alpn(io, false).await else {
                return;
            };
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned();
            drop(snapshot);
            until_closed(conn, watcher).await
        }
        Alpn::Detect => {
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned();
            drop(snapshot);
            until_closed(conn, watcher).await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(client = %client, error = %e, "client connection ended with an error");
    }
}

/// Runs a connection to its end, counted by `watcher` (which also tells it
/// when to wind down).
async fn until_closed<C>(conn: C, watcher: Option<Watcher>) -> Result<(), C::Error>
where
    C: GracefulConnection<Output = Result<(), <C as GracefulConnection>::Error>>,
{
    match watcher {
        Some(watcher) => watcher.watch(conn).await,
        None => conn.await,
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Makes a TLS connection keep to the protocol ALPN agreed: reads its
/// first bytes and, when they are HTTP/2's preface and `h2` was not agreed,
/// answers 400; when `h2` was agreed and they are not the preface, answers
/// as RFC 9113 §3.4 allows (SETTINGS, then GOAWAY with PROTOCOL_ERROR); and
/// closes (`None`). Else gives the stream back with those bytes still to be
/// read.
async fn keep_to_alpn<I>(mut io: I, h2: bool) -> Option<crate::io::Prefixed<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut first = Vec::with_capacity(1024);
    // The stream's own first-read deadline bounds the wait.
    while first.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&first) {
        match io.read_buf(&mut first).await {
            Ok(n) if n > 0 => {}
            _ => return None,
        }
    }
    let is_h2 = first.starts_with(H2_PREFACE);
    if is_h2 == h2 {
        return Some(crate::io::Prefixed::new(first, io));
    }
    let mut out = Vec::new();
    if h2 {
        let why = b"invalid connection preface: ALPN agreed on h2";
        // An empty SETTINGS frame (the server's preface), then GOAWAY:
        // last stream 0, PROTOCOL_ERROR, the reason as debug data.
        out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        let len = u8::try_from(8 + why.len()).expect("a short reason");
        out.extend_from_slice(&[0, 0, len, 0x7, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x1]);
        out.extend_from_slice(why);
    } else {
        let answer = Answer::error(ProxyError::BadRequest(
            "HTTP/2 was not agreed for this connection (ALPN said http/1.1, or nothing)".into(),
        ));
        answer.write_head(
            &mut out,
            httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes(),
        );
        out.extend_from_slice(b"connection: close\r\n\r\n");
        out.extend_from_slice(&answer.body);
    }
    let _ = io.write_all(&out).await;
    let _ = io.shutdown().await;
    None
}

pub(crate) async fn handle(conn: Arc<ConnInfo>, req: Request<Incoming>) -> Response<ResponseBody> {
    let start = Instant::now();
    let proxy = &conn.proxy;
    let in_flight = crate::body::InFlight::enter(&proxy.in_flight);
    let snap = proxy.snapshot();
    let (client_ip, trusted) = pipeline::client_address(
        conn.client.ip(),
        &snap.config.proxy.trusted_proxies,
        req.headers()
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    let client = SocketAddr::new(client_ip, conn.client.port());
    let client = Client {
        addr: client,
        // Only a trusted proxy's word makes it differ from the peer's, which
        // the connection holds already.
        named_ip: (client_ip != conn.client.ip()).then(|| ip_value(client_ip)),
        trusted,
    };
    let request_id = new_request_id();
    let mut log = snap.config.proxy.access_log.then(|| {
        AccessLog::start(
            start,
            client.addr,
            req.method().clone(),
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                .or_else(|| req.headers().get(header::HOST).cloned()),
            req.uri().clone(),
            request_id.clone(),
        )
    });
    if let Some(log) = &mut log {
        if snap.config.proxy.access_log_format == AccessLogFormat::Combined {
            log.combined = Some(Box::new(CombinedExtra {
                version: req.version(),
                referer: req.headers().get(header::REFERER).cloned(),
                user_agent: req.headers().get(header::USER_AGENT).cloned(),
            }));
        }
    }

    let http1 = req.version() < HttpVersion::HTTP_2;
    let method = crate::metrics::method_class(req.method().as_str());
    let mut attempts = Attempts::default();
    let mut service = None;
    let forwarded = forward(
        &snap,
        &conn,
        &client,
        &request_id,
        req,
        (&mut attempts, &mut service),
    )
    .await;
    if let (None, Err(answer)) = (&service, &forwarded) {
        answer.count(&proxy.stats);
        if answer.health {
            log = None;
        }
    }
    let mut resp = match forwarded {
        Ok(resp) => resp,
        Err(answer) => {
            let (resp, error) = answer.into_response(http1);
            if let Some(e) = error {
                if let Some(stats) = &service {
                    stats.error(resp.status().as_u16(), &e);
                }
                log_failure(&e, client.addr, &request_id, &attempts);
                if let Some(log) = &mut log {
                    log.error = Some(e.to_string());
                }
            }
            resp
        }
    };

    pipeline::interlock_headers(
        resp.headers_mut(),
        &snap,
        &proxy.server_info,
        (request_id.as_bytes(), Some(&request_id)),
        &attempts,
    );
    if http1 && proxy.is_draining() && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Its client reconnects, through the balancer, to a proxy that stays.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(stats) = service {
        let status = resp.status().as_u16();
        resp.body_mut()
            .set_tally(Tally::with_class(stats, method, start), status);
    }
    if let Some(mut log) = log {
        pipeline::record(&mut log, resp.status(), &attempts);
        resp.body_mut().set_log(log, conn.send_timed_out.clone());
    }
    resp.body_mut().set_in_flight(in_flight);
    resp
}

/// Who the request is from, as far as the proxy believes.
struct Client {
    addr: SocketAddr,
    /// `addr`'s IP as a header value, when it is not the connection's peer.
    named_ip: Option<HeaderValue>,
    /// The peer is a trusted proxy: its `X-Forwarded-For` is extended.
    trusted: bool,
}

/// The parts of a request needed to send it again, kept only for requests
/// that may be retried after being sent: idempotent and without a body.
struct RetryTemplate {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl RetryTemplate {
    fn build(&self) -> Request<ProxyBody> {
        let mut req = Request::new(ProxyBody::Empty);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

async fn forward(
    snap: &Snapshot,
    conn: &ConnInfo,
    client: &Client,
    request_id: &HeaderValue,
    mut req: Request<Incoming>,
    (attempts, service): (&mut Attempts, &mut Option<Arc<ServiceStats>>),
) -> Result<Response<ResponseBody>, Box<Answer>> {
    // The decision's temporaries stay in this block, out of the request's
    // future (which an HTTP/2 stream spawns as a task of its own).
    let (host_value, route_id, first) = {
        let host_value = request_host(&req);
        let host = match &host_value {
            Ok(v) => v
                .to_str()
                .map_err(|_| "the Host header is not a valid host name"),
            Err(why) => Err(*why),
        };
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let declared = req.body().size_hint().exact().filter(|n| *n > 0);
        let decision = pipeline::decide(
            snap,
            &RequestHead {
                method: req.method().as_str(),
                host,
                target,
                tls: conn.tls.as_ref(),
                content_length: declared,
            },
            conn.proxy.readiness(),
        )?;
        // After the pipeline's own answers (CONNECT, health, routing), which
        // forward nothing: only a body that would go upstream is judged.
        if let Some(problem) = transfer_coding_problem(req.headers()) {
            return Err(Answer::error(problem));
        }
        let route_id = decision.route;
        let rewritten = (decision.target.len() != target.len()).then(|| {
            decision
                .target
                .parse::<Uri>()
                .unwrap_or_else(|_| Uri::from_static("/"))
        });
        let route = snap.table.route(route_id);
        let pool = &snap.pools[route_id];
        let affinity = pipeline::affinity(
            route,
            req.headers()
                .get_all(header::COOKIE)
                .iter()
                .map(HeaderValue::as_bytes),
            client.addr.ip(),
        );
        let first = balance::first(&pool.upstreams, route.balance, affinity, || {
            pool.next_start()
        });
        if let Some(uri) = rewritten {
            *req.uri_mut() = uri;
        }
        // `decide` forwards only requests whose host it could read.
        let host_value =
            host_value.map_err(|why| Answer::error(ProxyError::BadRequest(why.into())))?;
        (host_value, route_id, first)
    };
    let route = snap.table.route(route_id);
    let pool = &snap.pools[route_id];
    *service = Some(pool.stats.clone());

    // A protocol upgrade (websockets): the client asks with `Connection:
    // upgrade` and `Upgrade`. Those are hop-by-hop, so they are set again
    // for the upstream hop, and on a 101 the two connections are joined.
    let upgrade = upgrade_requested(&req).map(|protocol| (protocol, hyper::upgrade::on(&mut req)));
    let (mut parts, body) = req.into_parts();
    let te_trailers = parts
        .headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let proto = if conn.tls.is_some() { "https" } else { "http" };
    prepare_upstream_request(
        &mut parts,
        (
            &conn.client_ip,
            client.named_ip.as_ref().unwrap_or(&conn.client_ip),
            client.trusted,
        ),
        proto,
        host_value,
        request_id,
    );
    if let Some((protocol, _)) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol.clone());
    }
    let empty_body = body.is_end_stream();
    if upgrade.is_none() && relay::serves(pool, &parts, empty_body, te_trailers) {
        let p = &snap.config.proxy;
        let mut resp = relay::forward(
            pool,
            first,
            &parts,
            (p.max_header_bytes, p.hide_info_headers),
            attempts,
        )
        .await
        .map_err(Answer::error)?;
        set_hsts(&mut resp, conn, route);
        return Ok(resp);
    }
    if !empty_body && body.size_hint().exact().is_none() {
        // A body of unknown length goes chunked. Said explicitly: hyper
        // sends a GET or HEAD whose length it doesn't know without its body.
        parts.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    let template =
        (empty_body && pipeline::is_idempotent(parts.method.as_str())).then(|| RetryTemplate {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        });
    let (body, upload_sent) =
        if empty_body {
            (ProxyBody::Empty, None)
        } else {
            let p = &snap.config.proxy;
            let slot =
                match p.max_bodies_per_client {
                    0 => None,
                    max => Some(conn.proxy.bodies.take(client.addr.ip(), max).ok_or_else(
                        || {
                            Answer::error(ProxyError::TooManyBodies {
                                client: client.addr.ip(),
                                max,
                            })
                        },
                    )?),
                };
            let limits = UploadLimits {
                stall: p.client_body_timeout,
                min_rate: p.client_body_min_rate.map(|r| (r, p.client_body_grace)),
                max_size: route.max_body_size,
            };
            let (body, sent, handed) = Upload::start(body, limits, slot, pool.stats.clone());
            (body, Some((sent, handed)))
        };
    let mut exchange = HyperExchange {
        pending: Some(Request::from_parts(parts, body)),
        template,
        upload_sent,
        te_trailers,
    };
    let (mut resp, _, held) = pipeline::try_upstreams(pool, first, &mut exchange, attempts)
        .await
        .map_err(Answer::error)?;
    resp.body_mut().set_held(held);
    if let Some((protocol, client_side)) = upgrade {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream_side = hyper::upgrade::on(&mut resp);
            let headers = resp.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol);
            let idle = snap.config.proxy.tunnel_idle_timeout;
            let listener = if conn.tls.is_some() {
                Listener::Https
            } else {
                Listener::Http
            };
            let gauge = conn
                .proxy
                .stats
                .open(listener, Protocol::Websocket, conn.slot.clone());
            tokio::spawn(async move {
                join_upgraded(client_side, upstream_side, idle).await;
                drop(gauge);
            });
        }
    }
    set_hsts(&mut resp, conn, route);
    Ok(resp)
}

fn set_hsts(resp: &mut Response<ResponseBody>, conn: &ConnInfo, route: &Route) {
    if let (Some(_), Some(max_age)) = (&conn.tls, route.hsts_max_age) {
        if let Ok(v) = HeaderValue::from_str(&format!("max-age={}", max_age.as_secs())) {
            resp.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, v);
        }
    }
}

/// The protocol a request asks to upgrade to (HTTP/1.1 only: h2 has no
/// Upgrade), when its `Connection` header lists `upgrade`.
fn upgrade_requested(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != HttpVersion::HTTP_11 {
        return None;
    }
    let protocol = req.headers().get(header::UPGRADE)?;
    let asks = req.headers().get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    asks.then(|| protocol.clone())
}

/// Joins the client's and the upstream's upgraded connections until either
/// side closes or nothing moves for `idle`.
async fn join_upgraded(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Duration,
) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (c, u) => {
            tracing::debug!(
                client_ok = c.is_ok(),
                upstream_ok = u.is_ok(),
                "upgrade failed"
            );
            return;
        }
    };
    let client = hyper_util::rt::TokioIo::new(client);
    let upstream = hyper_util::rt::TokioIo::new(upstream);
    if let (Err(e), _) = crate::io::relay(client, upstream, idle).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}

/// What is wrong with the request's transfer codings, if anything. hyper's
/// server accepts any codings before a final chunked (`gzip, chunked`,
/// `chunked, chunked`) and decodes only the last: passed on under a plain
/// chunked framing, the body would reach the upstream as something it is
/// not. RFC 9112 §6.1: a server answers 501 to a coding it does not
/// understand, and chunked is never applied twice.
fn transfer_coding_problem(headers: &HeaderMap) -> Option<ProxyError> {
    let mut chunked = 0;
    for coding in headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|coding| !coding.is_empty())
    {
        if !coding.eq_ignore_ascii_case(b"chunked") {
            return Some(ProxyError::NotImplemented(format!(
                "transfer coding {:?} is not supported (only chunked is)",
                String::from_utf8_lossy(coding)
            )));
        }
        chunked += 1;
    }
    (chunked > 1).then(|| {
        ProxyError::BadRequest("the chunked transfer coding is applied more than once".into())
    })
}

/// The host a request names: the `:authority` (HTTP/2, or an absolute-form
/// URI) or else its one `Host` header.
/// An error is why there is none, for a 400.
fn request_host(req: &Request<Incoming>) -> Result<HeaderValue, &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    // An HTTP/1.1 request must carry Host even with an absolute-form
    // target, which then wins (RFC 9112 §3.2, §3.2.2); HTTP/2 names the
    // authority in :authority instead.
    if host_header.is_none() && req.version() == HttpVersion::HTTP_11 {
        return Err("the request has no Host header");
    }
    match req.uri().authority() {
        Some(authority) => {
            HeaderValue::from_str(authority.as_str()).map_err(|_| "invalid authority")
        }
        None => host_header.cloned().ok_or("the request has no Host header"),
    }
}

fn prepare_upstream_request(
    parts: &mut Parts,
    (peer_ip, client_ip, trusted): (&HeaderValue, &HeaderValue, bool),
    proto: &'static str,
    host: HeaderValue,
    request_id: &HeaderValue,
) {
    strip_hop_by_hop(&mut parts.headers);
    strip_underscored(&mut parts.headers);
    // Room for the forwarding headers at once, rather than growing (and
    // rehashing) the map for them one by one.
    parts.headers.reserve(8);
    set_forwarding(
        &mut parts.headers,
        (peer_ip, client_ip),
        trusted,
        proto,
        Some(&host),
        request_id,
    );
    // The upstream gets the Host the client asked for (HTTP/2 carries it as
    // :authority, which HTTP/1.1 has no place for but Host).
    parts.headers.insert(header::HOST, host);
    if parts.version == HttpVersion::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    if parts.uri.authority().is_some() || parts.uri.scheme().is_some() {
        let origin_form = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse::<Uri>()
            .unwrap_or_else(|_| Uri::from_static("/"));
        parts.uri = origin_form;
    }
    parts.version = HttpVersion::HTTP_11;
}

/// HTTP/2 lets a client send `Cookie` as several fields, a cookie each, for
/// better compression; on the way to HTTP/1.1 they become one field joined
/// with "; " (RFC 9113 §8.2.3), as HTTP/1.1 servers expect.
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter().peekable();
    let Some(first) = values.next() else { return };
    if values.peek().is_none() {
        return;
    }
    let mut joined = first.as_bytes().to_vec();
    for v in values {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Shapes the request for the upstream's protocol. HTTP/2 needs an absolute
/// URI (its `:scheme` and `:authority`) and gRPC needs `TE: trailers`, the
/// one `TE` value that may cross a proxy that forwards trailers.
fn adapt_for(req: &mut Request<ProxyBody>, upstream: &Upstream, te_trailers: bool) {
    match upstream.transport.options.protocol {
        UpstreamProtocol::Http1 => {
            *req.version_mut() = HttpVersion::HTTP_11;
            if req.uri().scheme().is_some() {
                let origin = req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .parse::<Uri>()
                    .unwrap_or_else(|_| Uri::from_static("/"));
                *req.uri_mut() = origin;
            }
            req.headers_mut().remove(header::TE);
        }
        UpstreamProtocol::H2 | UpstreamProtocol::H2c => {
            *req.version_mut() = HttpVersion::HTTP_2;
            // HTTP/2 frames bodies itself.
            req.headers_mut().remove(header::TRANSFER_ENCODING);
            let scheme = if upstream.transport.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let authority = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost")
                .to_owned();
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            if let Ok(uri) = format!("{scheme}://{authority}{path}").parse::<Uri>() {
                *req.uri_mut() = uri;
            }
            if te_trailers {
                req.headers_mut()
                    .insert(header::TE, HeaderValue::from_static("trailers"));
            }
        }
    }
}

/// A request on its way to an upstream over hyper, with what it needs to
/// be sent again.
struct HyperExchange {
    /// The request, until a connection has taken it.
    pending: Option<Request<ProxyBody>>,
    /// Set for requests that may be sent again after being sent.
    template: Option<RetryTemplate>,
    /// Fires once the request body has all been sent; and whether the
    /// upstream still takes it.
    upload_sent: Option<(oneshot::Receiver<()>, Arc<Handed>)>,
    te_trailers: bool,
}

impl pipeline::Exchange for HyperExchange {
    type Conn = Conn;
    type Out = Response<ResponseBody>;

    async fn connect(&self, pool: &Pool, upstream: &Arc<Upstream>) -> Result<Conn, ConnectError> {
        upstream.checkout(pool.connect_timeout).await
    }

    fn status(out: &Self::Out) -> Option<u16> {
        Some(out.status().as_u16())
    }

    async fn send(
        &mut self,
        pool: &Pool,
        upstream: &Arc<Upstream>,
        mut conn: Conn,
    ) -> Outcome<Self::Out> {
        let template = self.template.as_ref();
        let Some(mut req) = self
            .pending
            .take()
            .or_else(|| template.map(RetryTemplate::build))
        else {
            return Outcome::Fatal(ProxyError::BadGateway {
                service: pool.label.clone(),
                detail: "the request body was consumed by an earlier attempt".into(),
            });
        };
        adapt_for(&mut req, upstream, self.te_trailers);
        let timeout = pool.upstream_timeout;
        // upstream_timeout measures the upstream, not the client: with a
        // body, it starts once the body has all been sent.
        let outcome = match self.upload_sent.take() {
            None => tokio::time::timeout(timeout, conn.send(req)).await,
            Some((mut sent, handed)) => {
                let watched = !conn.is_http2();
                let send = conn.send(req);
                tokio::pin!(send);
                tokio::select! {
                    biased;
                    r = &mut send => {
                        // An early answer (or a connection that never took
                        // the body): keep the signal for a retry.
                        self.upload_sent = Some((sent, handed));
                        Ok(r)
                    }
                    _ = &mut sent => tokio::time::timeout(timeout, send).await,
                    // hyper waits for an upstream that stopped reading the
                    // body without a limit (and the client, no longer read,
                    // would be the one timed out).
                    () = handed.stuck(timeout), if watched => {
                        return Outcome::Fatal(ProxyError::upstream_timeout(
                            &pool.label,
                            upstream.addr,
                            timeout,
                        ))
                    }
                }
            }
        };
        let mut err = match outcome {
            Ok(Ok(resp)) => {
                return Outcome::Answered(upstream_response(resp, conn, upstream, timeout))
            }
            Err(_elapsed) => {
                return Outcome::Fatal(ProxyError::upstream_timeout(
                    &pool.label,
                    upstream.addr,
                    timeout,
                ))
            }
            Ok(Err(err)) => err,
        };
        if let Some(req) = err.take_message() {
            // hyper found the pooled connection closed and gives the
            // request back unsent.
            self.pending = Some(req);
            return Outcome::Stale("connection closed before the request was sent".into());
        }
        if let Some(stalled) = body_error::<ClientStalled>(err.error()) {
            return Outcome::Fatal(ProxyError::ClientTimeout(stalled.to_string()));
        }
        if let Some(slow) = body_error::<ClientTooSlow>(err.error()) {
            return Outcome::Fatal(ProxyError::ClientTimeout(slow.to_string()));
        }
        if let Some(broken) = body_error::<ClientBodyBroken>(err.error()) {
            return Outcome::Fatal(ProxyError::BadRequest(broken.to_string()));
        }
        if let Some(large) = body_error::<BodyTooLarge>(err.error()) {
            return Outcome::Fatal(ProxyError::TooLarge {
                service: pool.label.clone(),
                limit: large.0,
            });
        }
        if self.template.is_none() {
            return Outcome::Fatal(ProxyError::BadGateway {
                service: pool.label.clone(),
                detail: format!(
                    "upstream {}: {} after the request was sent; not retried \
                     because the request is not idempotent or has a body",
                    upstream.addr,
                    err.error()
                ),
            });
        }
        if conn.reused && err.error().is_incomplete_message() {
            // The keep-alive race: a pooled connection closed with the
            // request on its way and no byte of an answer.
            return Outcome::Stale(err.error().to_string());
        }
        Outcome::Next(err.error().to_string())
    }
}

/// The request body's own error (the client's stall, a body over the
/// limit), if that is what broke the exchange.
fn body_error<E: std::error::Error + 'static>(err: &hyper::Error) -> Option<&E> {
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        source = e.source();
    }
    None
}

fn upstream_response(
    resp: Response<Incoming>,
    conn: Conn,
    upstream: &Arc<Upstream>,
    idle: Duration,
) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        // Framed by its transfer coding, which hyper has decoded: a
        // Content-Length beside it is wrong (RFC 9112 §6.3) and would cut
        // the body short on the client's side.
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut parts.headers);
    parts.version = HttpVersion::HTTP_11;
    Response::from_parts(
        parts,
        ResponseBody::upstream(body, conn, upstream.clone(), idle),
    )
}
