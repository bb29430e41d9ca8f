//! The HTTP/1.1 exchange with an upstream as bytes, for both codecs: a
//! request is written on a bare pooled connection (with the fast path's
//! request body, if any, by [`crate::upload`]), the
//! response head is parsed by one set of rules ([`rewrite_response_head`])
//! into what the client's codec needs ([`ResponseSink`]): bytes for the
//! fast path (`h1`), which then copies the body through as it came; a
//! status and header map for hyper's server (`forward`), whose body
//! streams from the connection as [`RawBody`], its framing decoded.
//!
//! So a request hyper parsed (HTTP/2, or HTTP/1.x the fast path handed
//! over) to cleartext HTTP/1.1 upstreams costs neither a hyper client
//! connection (a task and a channel per upstream connection, a wake-up
//! across tasks each way) nor a second encoding of its headers, and uses
//! the same pooled connections as the fast path. Requests hyper parsed that
//! have a body or are not idempotent, upgrades, and TLS or HTTP/2
//! upstreams keep hyper's client.
//!
//! Trailer fields of a chunked response are dropped on the way to hyper's
//! server (RFC 9110 §6.5.1 lets a recipient discard them); a client that
//! asks for them (`TE: trailers`) is served by hyper's client, which passes
//! them on.

use std::io;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::body::{RawBody, ResponseBody};
use crate::error::ProxyError;
use crate::framing::{head_end, put_header, tokens, Framing, Listed};
use crate::headers::{is_hop_by_hop, is_set_on_responses};
use crate::pipeline::{self, Attempts, Outcome};
use crate::snapshot::Pool;
use crate::upload::{RawUpload, UploadBroke};
use crate::upstream::{ConnectError, RawConn, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Headers parsed per message; a message with more goes to hyper (which
/// allows 100) or, from an upstream, is a 502.
pub(crate) const MAX_HEADERS: usize = 100;
/// The first read of a response (head and the start of its body), and the
/// buffer response bodies are copied through on the fast path (nginx's
/// `proxy_buffer_size` in the benchmark's tuned config).
pub(crate) const RESPONSE_BUF: usize = 16 * 1024;

/// A response head read from an upstream and rewritten for the client
/// (into `out`, without the proxy's own headers and the final empty line).
pub(crate) struct UpstreamHead {
    /// Bytes of the head in the upstream buffer (the body follows).
    pub(crate) len: usize,
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    /// The upstream may be sent another request on this connection.
    pub(crate) reusable: bool,
}

/// How one exchange with an upstream failed.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// Reading or writing the connection failed; `nothing` when not one
    /// byte of a response had arrived (a reused connection closed under us).
    Io { error: io::Error, nothing: bool },
    /// The upstream sent something that is not a valid HTTP/1.x response.
    Protocol(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Io {
                error,
                nothing: true,
            } => {
                write!(f, "connection closed before a response: {error}")
            }
            UpstreamError::Io { error, .. } => write!(f, "{error}"),
            UpstreamError::Protocol(why) => write!(f, "invalid response: {why}"),
        }
    }
}

/// A `Date` header with the time now.
pub(crate) fn put_date(out: &mut Vec<u8>) {
    let now = httpdate::fmt_http_date(std::time::SystemTime::now());
    put_header(out, b"date", now.as_bytes());
}

/// A request on its way to an upstream as bytes. One that is idempotent and
/// body-less is safe to send again, so any failure before a response moves
/// on; any other only while nothing of it can have been acted on (a pooled
/// connection found closed, or a connection broken before its head was
/// written), as hyper's client retries on the general path.
pub(crate) struct RawExchange<'a, 'c, S> {
    /// The request's head, and any body bytes that came with it.
    pub(crate) request: &'a [u8],
    /// The rest of its body, on the client's connection (the fast path's).
    pub(crate) body: Option<&'a mut RawUpload<'c>>,
    /// The request may go to another upstream after it was sent: it is
    /// idempotent and has no body.
    pub(crate) retry: bool,
    /// The response head (and what follows it) as read.
    pub(crate) buf: &'a mut Vec<u8>,
    /// The client's version of the response head.
    pub(crate) out: &'a mut S,
    pub(crate) max_head: usize,
    pub(crate) hide: bool,
}

impl<S: ResponseSink> pipeline::Exchange for RawExchange<'_, '_, S> {
    type Conn = RawConn;
    type Out = (RawConn, UpstreamHead);

    async fn connect(
        &self,
        pool: &Pool,
        upstream: &Arc<Upstream>,
    ) -> Result<RawConn, ConnectError> {
        upstream.checkout_raw(pool.connect_timeout).await
    }

    fn status((_, head): &Self::Out) -> Option<u16> {
        Some(head.status)
    }

    async fn send(
        &mut self,
        pool: &Pool,
        upstream: &Arc<Upstream>,
        mut conn: RawConn,
    ) -> Outcome<Self::Out> {
        self.buf.clear();
        self.out.reset();
        let wait = pool.upstream_timeout;
        let timed_out = || {
            Outcome::Fatal(ProxyError::upstream_timeout(
                &pool.label,
                upstream.addr,
                wait,
            ))
        };
        let not_retried = |e: &dyn std::fmt::Display| {
            Outcome::Fatal(ProxyError::BadGateway {
                service: pool.label.clone(),
                detail: format!(
                    "upstream {}: {e} after the request was sent; not retried \
                     because the request is not idempotent or has a body",
                    upstream.addr
                ),
            })
        };
        // Without a body, upstream_timeout runs from the first byte sent;
        // with one, from its last: it measures the upstream, not a slow
        // client's upload.
        let deadline = tokio::time::Instant::now() + wait;
        match tokio::time::timeout_at(deadline, conn.stream.write_all(self.request)).await {
            Err(_) => return timed_out(),
            Ok(Err(error)) => {
                // Nothing of the body has been read from the client yet:
                // the request may go again whatever it is.
                let e = UpstreamError::Io {
                    error,
                    nothing: true,
                };
                return if conn.reused {
                    Outcome::Stale(e.to_string())
                } else {
                    Outcome::Next(e.to_string())
                };
            }
            Ok(Ok(())) => {}
        }
        let deadline = match self.body.as_deref_mut() {
            None => deadline,
            Some(body) => match body.send(&conn.stream, wait, self.buf).await {
                // A pooled connection the upstream closed before any of the
                // body was read from the client: the keep-alive race.
                Ok(false) if self.buf.is_empty() && !body.consumed() && conn.reused => {
                    return Outcome::Stale("connection closed before the request body".into())
                }
                Ok(_) => tokio::time::Instant::now() + wait,
                Err(UploadBroke::Client(e)) => return Outcome::Fatal(e),
                Err(UploadBroke::UpstreamStalled) => return timed_out(),
                Err(UploadBroke::Upstream(e)) => {
                    return not_retried(&format_args!("{e} while the request body was sent"))
                }
            },
        };
        let head_request = self.request.starts_with(b"HEAD ");
        let exchange = read_head(
            &mut conn.stream,
            self.buf,
            self.out,
            (self.max_head, self.hide),
            head_request,
        );
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(head)) => Outcome::Answered((conn, head)),
            Err(_elapsed) => timed_out(),
            Ok(Err(e)) if !self.retry => not_retried(&e),
            Ok(Err(e @ UpstreamError::Io { nothing: true, .. })) if conn.reused => {
                Outcome::Stale(e.to_string())
            }
            Ok(Err(e)) => Outcome::Next(e.to_string()),
        }
    }
}

/// Reads the response head into `buf` (after what is there already),
/// skipping 1xx interim responses, and rewrites it for the client into
/// `out`.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    out: &mut impl ResponseSink,
    (max_head, hide): (usize, bool),
    head_request: bool,
) -> Result<UpstreamHead, UpstreamError> {
    let mut scanned = 0;
    loop {
        if let Some(end) = head_end(buf, scanned) {
            match rewrite_response_head(&buf[..end], out, hide, head_request)? {
                Some(head) => return Ok(head),
                None => {
                    // An interim response (100, 103): the final one follows.
                    // A close after it still counts as no answer (on a
                    // reused connection, the keep-alive race, sent again):
                    // hyper's client reports it the same way (an incomplete
                    // message), and the general path treats that so.
                    buf.drain(..end);
                    out.reset();
                    scanned = 0;
                    continue;
                }
            }
        }
        if buf.len() >= max_head {
            return Err(UpstreamError::Protocol(format!(
                "response head larger than {max_head} bytes (max_header_bytes)"
            )));
        }
        scanned = buf.len().saturating_sub(3);
        if buf.capacity() == buf.len() {
            buf.reserve(RESPONSE_BUF);
        }
        match stream.read_buf(buf).await {
            Ok(0) => {
                return Err(UpstreamError::Io {
                    error: io::ErrorKind::UnexpectedEof.into(),
                    nothing: buf.is_empty(),
                })
            }
            Ok(_) => {}
            Err(error) => {
                return Err(UpstreamError::Io {
                    error,
                    nothing: buf.is_empty(),
                })
            }
        }
    }
}

/// Where the client's version of a response head goes: bytes for the fast
/// path's client connection, or a status and header map for hyper's server.
pub(crate) trait ResponseSink {
    /// Forgets what an earlier attempt (or an interim response) wrote.
    fn reset(&mut self);
    fn status(&mut self, status: u16, reason: Option<&str>) -> Result<(), UpstreamError>;
    fn header(&mut self, name: &str, value: &[u8]) -> Result<(), UpstreamError>;
    /// The upstream sent no `Date`.
    fn no_date(&mut self);
    /// Whether the body reaches the client with its transfer codings as
    /// they came (so their headers pass), rather than decoded.
    fn passes_codings(&self) -> bool;
}

impl ResponseSink for Vec<u8> {
    fn reset(&mut self) {
        self.clear();
    }

    fn status(&mut self, status: u16, reason: Option<&str>) -> Result<(), UpstreamError> {
        self.extend_from_slice(b"HTTP/1.1 ");
        self.extend_from_slice(itoa3(status).as_slice());
        self.push(b' ');
        let reason = reason.or_else(|| StatusCode::from_u16(status).ok()?.canonical_reason());
        self.extend_from_slice(reason.unwrap_or("").as_bytes());
        self.extend_from_slice(b"\r\n");
        Ok(())
    }

    fn header(&mut self, name: &str, value: &[u8]) -> Result<(), UpstreamError> {
        put_header(self, name.as_bytes(), value);
        Ok(())
    }

    /// As hyper does on the general path: a response without a Date gets one.
    fn no_date(&mut self) {
        put_date(self);
    }

    fn passes_codings(&self) -> bool {
        true
    }
}

/// Parses a response head and writes the client's version of it into
/// `out`: status line, the upstream's headers less hop-by-hop ones and
/// those the proxy sets, and its own framing header. `None` for an interim
/// (1xx) response.
pub(crate) fn rewrite_response_head(
    head: &[u8],
    out: &mut impl ResponseSink,
    hide: bool,
    head_request: bool,
) -> Result<Option<UpstreamHead>, UpstreamError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => return Err(UpstreamError::Protocol("malformed head".into())),
        Err(e) => return Err(UpstreamError::Protocol(e.to_string())),
    }
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(UpstreamError::Protocol("malformed status line".into()));
    };
    if status < 100 {
        return Err(UpstreamError::Protocol(format!("status code {status}")));
    }
    if status == 101 {
        return Err(UpstreamError::Protocol(
            "101 Switching Protocols to a request that asked for no upgrade".into(),
        ));
    }
    if (100..200).contains(&status) {
        return Ok(None);
    }
    let mut listed = Listed::default();
    let mut length: Option<u64> = None;
    // Transfer codings in order; the body is chunked when the last one is.
    let mut codings = false;
    let mut chunked = false;
    let mut reusable = version == 1;
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            if tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"close")) {
                reusable = false;
            }
            if !listed.push(h.value) {
                return Err(UpstreamError::Protocol(
                    "more than 8 Connection header lines".into(),
                ));
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(h.value.trim_ascii())
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| {
                    UpstreamError::Protocol(format!(
                        "invalid Content-Length {:?}",
                        String::from_utf8_lossy(h.value)
                    ))
                })?;
            if length.is_some_and(|l| l != value) {
                return Err(UpstreamError::Protocol(
                    "conflicting Content-Length headers".into(),
                ));
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only a final `chunked` frames the body; anything else runs to
            // the end of the connection (RFC 9112 §6.3).
            for t in tokens(h.value) {
                codings = true;
                chunked = t.eq_ignore_ascii_case(b"chunked");
            }
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if codings {
        Framing::UntilClose
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    if framing == Framing::UntilClose {
        reusable = false;
    }

    out.status(status, resp.reason.filter(|r| !r.is_empty()))?;
    // A sink that passes the body as it came (a chunked body is not
    // re-framed) passes its transfer codings' headers too.
    let pass_codings = codings && out.passes_codings();
    for h in resp.headers.iter() {
        let name = h.name;
        let framing_header =
            name.eq_ignore_ascii_case("transfer-encoding") || name.eq_ignore_ascii_case("trailer");
        // Framing headers are never dropped for being listed in
        // `Connection`: the body is passed as they frame it.
        let skip = (is_hop_by_hop(name) && !(framing_header && pass_codings))
            || (listed.contains(name)
                && !framing_header
                && !name.eq_ignore_ascii_case("content-length"))
            || is_set_on_responses(name, hide)
            || (codings && name.eq_ignore_ascii_case("content-length"));
        if !skip {
            out.header(name, h.value)?;
        }
    }
    if !resp
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("date"))
    {
        out.no_date();
    }
    Ok(Some(UpstreamHead {
        len: head.len(),
        status,
        framing,
        reusable,
    }))
}

fn itoa3(status: u16) -> [u8; 3] {
    [
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]
}

/// Whether a request can take this exchange: no body, idempotent (so it
/// may be sent again on another connection), no upgrade, not asking for
/// trailers, to a pool whose upstreams all speak cleartext HTTP/1.1.
pub(crate) fn serves(pool: &Pool, parts: &Parts, empty_body: bool, te_trailers: bool) -> bool {
    empty_body && !te_trailers && pool.plain_http1 && pipeline::is_idempotent(parts.method.as_str())
}

/// Sends the prepared request (hop-by-hop headers out, forwarding headers
/// in) to the pool's upstreams in turn, from `first`, as
/// [`pipeline::try_upstreams`] decides; returns the response with its body
/// still on the upstream connection.
pub(crate) async fn forward(
    pool: &Pool,
    first: usize,
    parts: &Parts,
    (max_head, hide): (usize, bool),
    attempts: &mut Attempts,
) -> Result<Response<ResponseBody>, ProxyError> {
    let mut request = Vec::with_capacity(512);
    write_request_head(&mut request, parts);
    let mut buf = Vec::with_capacity(RESPONSE_BUF);
    let mut head = HeadParts::default();
    let mut exchange = RawExchange {
        request: &request,
        body: None,
        retry: true,
        buf: &mut buf,
        out: &mut head,
        max_head,
        hide,
    };
    let ((conn, upstream_head), upstream, held) =
        pipeline::try_upstreams(pool, first, &mut exchange, attempts).await?;
    let mut rest = BytesMut::from(Bytes::from(buf));
    rest.advance(upstream_head.len);
    let body = RawBody::new(
        conn,
        upstream.clone(),
        rest,
        upstream_head.framing,
        upstream_head.reusable,
    );
    let mut resp = Response::new(ResponseBody::relayed(body, pool.upstream_timeout));
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    if let Some(reason) = head.reason {
        resp.extensions_mut().insert(reason);
    }
    resp.body_mut().set_held(held);
    Ok(resp)
}

/// The request line and headers as HTTP/1.1 bytes, as hyper's client would
/// write them for a request without a body.
fn write_request_head(out: &mut Vec<u8>, parts: &Parts) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// A response head for hyper's server: its status (with a reason phrase
/// hyper would not write itself) and headers. hyper adds `Date` and the
/// framing headers its own encoding needs.
struct HeadParts {
    status: StatusCode,
    reason: Option<hyper::ext::ReasonPhrase>,
    headers: HeaderMap,
}

impl Default for HeadParts {
    fn default() -> HeadParts {
        HeadParts {
            status: StatusCode::OK,
            reason: None,
            // Room for a typical response's headers and the proxy's own
            // (added later), so the map is not grown and rehashed.
            headers: HeaderMap::with_capacity(24),
        }
    }
}

impl ResponseSink for HeadParts {
    fn reset(&mut self) {
        self.reason = None;
        self.headers.clear();
    }

    fn status(&mut self, status: u16, reason: Option<&str>) -> Result<(), UpstreamError> {
        self.status = StatusCode::from_u16(status)
            .map_err(|_| UpstreamError::Protocol(format!("status code {status}")))?;
        self.reason = reason
            .filter(|r| Some(*r) != self.status.canonical_reason())
            .and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes()).ok());
        Ok(())
    }

    fn header(&mut self, name: &str, value: &[u8]) -> Result<(), UpstreamError> {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) else {
            return Err(UpstreamError::Protocol(format!(
                "invalid header field {name:?}"
            )));
        };
        self.headers.append(name, value);
        Ok(())
    }

    fn no_date(&mut self) {}

    fn passes_codings(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_a_response_head() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\nKeep-Alive: timeout=5\r\nx-request-id: theirs\r\nx-app: yes\r\nDate: then\r\n\r\n";
        let mut out = Vec::new();
        let h = rewrite_response_head(head, &mut out, false, false)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.reusable);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nx-app: yes\r\nDate: then\r\n"
        );

        let mut out = Vec::new();
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 7\r\n\r\n";
        let h = rewrite_response_head(head, &mut out, false, false)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        // No Date from the upstream: the proxy adds one.
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\ndate: "),
            "{out}"
        );

        // Framing headers stay even when `Connection` lists them.
        let mut out = Vec::new();
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: Content-Length, x-a\r\nx-a: 1\r\nDate: then\r\n\r\n";
        let h = rewrite_response_head(head, &mut out, false, false)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: then\r\n"
        );

        let mut out = Vec::new();
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        let h = rewrite_response_head(head, &mut out, false, false)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("Transfer-Encoding: gzip, chunked\r\n"));

        // A response to HEAD has no body, whatever its head says.
        let mut out = Vec::new();
        let h = rewrite_response_head(b"HTTP/1.1 200 OK\r\n\r\n", &mut out, false, true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.reusable);

        let mut out = Vec::new();
        let h = rewrite_response_head(b"HTTP/1.0 200 OK\r\n\r\n", &mut out, false, false)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.reusable);

        assert!(matches!(
            rewrite_response_head(
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
                &mut out,
                false,
                false
            ),
            Ok(None)
        ));
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"garbage\r\n\r\n",
            b"HTTP/1.1 099 Weird\r\n\r\n",
        ] {
            assert!(matches!(
                rewrite_response_head(bad, &mut Vec::new(), false, false),
                Err(UpstreamError::Protocol(_))
            ));
        }
    }
}
