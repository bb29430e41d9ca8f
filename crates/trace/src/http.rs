//! One HTTP exchange over a fresh connection, timed phase by phase (connect,
//! TLS, first byte) and bounded by one deadline, so no hop can hang.
//!
//! A fresh connection per exchange, never a pool: each hop must test its
//! own path from the TCP handshake on, and a reused connection would hide a
//! listener that went away.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout_at;

use crate::tls::{TlsClient, TlsReport};

/// Phase durations of one hop, in milliseconds; `None` for a phase that did
/// not happen (no DNS for an address, no TLS for plain HTTP, or a failure
/// before it).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Timings {
    pub dns_ms: Option<f64>,
    pub connect_ms: Option<f64>,
    pub tls_ms: Option<f64>,
    /// From the request being written to the response head arriving.
    pub first_byte_ms: Option<f64>,
}

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Why an exchange produced no response head.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    #[error("connection refused")]
    Refused,
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("connect timed out after {0}")]
    ConnectTimeout(String),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("TLS handshake timed out after {0}")]
    TlsTimeout(String),
    #[error("the connection was closed without a response")]
    Closed,
    #[error("no response within {0}")]
    ResponseTimeout(String),
    #[error("HTTP error: {0}")]
    Http(String),
}

/// A response head and the start of its body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    /// At most the `body_limit` asked for.
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What one exchange gave.
#[derive(Debug)]
pub struct Exchange {
    pub timings: Timings,
    pub result: Result<Answer, FetchError>,
    /// The certificate report, when TLS got as far as a certificate.
    pub tls: Option<TlsReport>,
}

/// One request to send.
pub struct Fetch<'a> {
    pub addr: SocketAddr,
    pub method: Method,
    /// The `Host` header (and, without port, the SNI).
    pub host: &'a str,
    pub path: &'a str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    pub tls: Option<&'a TlsClient>,
    /// Bound on the whole exchange: connect, handshake and response head.
    pub timeout: Duration,
    pub body_limit: usize,
}

impl<'a> Fetch<'a> {
    pub fn get(addr: SocketAddr, host: &'a str, path: &'a str, timeout: Duration) -> Fetch<'a> {
        Fetch {
            addr,
            method: Method::GET,
            host,
            path,
            headers: Vec::new(),
            body: Bytes::new(),
            tls: None,
            timeout,
            body_limit: 4096,
        }
    }
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Sends `f` and waits for the response head (and up to `body_limit` bytes
/// of body), all within `f.timeout`.
pub async fn fetch(f: Fetch<'_>) -> Exchange {
    let deadline = tokio::time::Instant::now() + f.timeout;
    let mut timings = Timings::default();
    let started = Instant::now();
    let tcp = match timeout_at(deadline, TcpStream::connect(f.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let err = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                FetchError::Refused
            } else {
                FetchError::Connect(e.to_string())
            };
            return Exchange {
                timings,
                result: Err(err),
                tls: None,
            };
        }
        Err(_) => {
            return Exchange {
                timings,
                result: Err(FetchError::ConnectTimeout(human(f.timeout))),
                tls: None,
            }
        }
    };
    let _ = tcp.set_nodelay(true);
    timings.connect_ms = Some(ms(started.elapsed()));
    let Some(tls) = f.tls else {
        let result = exchange(tcp, &f, deadline, &mut timings).await;
        return Exchange {
            timings,
            result,
            tls: None,
        };
    };
    let sni_host = sni_name(f.host);
    let (config, slot) = tls.for_connection();
    let server_name = match ServerName::try_from(sni_host.clone()) {
        Ok(n) => n,
        Err(e) => {
            return Exchange {
                timings,
                result: Err(FetchError::Tls(format!(
                    "{sni_host:?} is not a server name: {e}"
                ))),
                tls: None,
            }
        }
    };
    let tls_start = Instant::now();
    let connector = tokio_rustls::TlsConnector::from(config);
    let handshake = timeout_at(deadline, connector.connect(server_name, tcp)).await;
    let recorded = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    match handshake {
        Ok(Ok(stream)) => {
            timings.tls_ms = Some(ms(tls_start.elapsed()));
            let version = stream.get_ref().1.protocol_version();
            let report = recorded.map(|r| TlsReport::build(r, &sni_host, version, &tls.trust));
            let result = exchange(stream, &f, deadline, &mut timings).await;
            Exchange {
                timings,
                result,
                tls: report,
            }
        }
        Ok(Err(e)) => Exchange {
            timings,
            result: Err(FetchError::Tls(e.to_string())),
            tls: recorded.map(|r| TlsReport::build(r, &sni_host, None, &tls.trust)),
        },
        Err(_) => Exchange {
            timings,
            result: Err(FetchError::TlsTimeout(human(f.timeout))),
            tls: None,
        },
    }
}

/// Whether the peer went away before answering: EOF, reset or a broken
/// pipe all mean the same to the person reading the trace.
fn closed_early(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionAborted
            );
        }
        source = s.source();
    }
    false
}

/// The SNI for a `Host` value: without the port and the brackets of an
/// IPv6 literal.
fn sni_name(host: &str) -> String {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_owned();
    }
    host.split(':').next().unwrap_or(host).to_owned()
}

async fn exchange<S>(
    io: S,
    f: &Fetch<'_>,
    deadline: tokio::time::Instant,
    timings: &mut Timings,
) -> Result<Answer, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout_text = human(f.timeout);
    let (mut sender, conn) = match timeout_at(
        deadline,
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(io)),
    )
    .await
    {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Err(FetchError::Http(e.to_string())),
        Err(_) => return Err(FetchError::ResponseTimeout(timeout_text)),
    };
    let driver = tokio::spawn(conn);
    let mut req = Request::builder()
        .method(f.method.clone())
        .uri(f.path)
        .body(Full::new(f.body.clone()))
        .map_err(|e| FetchError::Http(format!("cannot build the request: {e}")))?;
    let headers = req.headers_mut();
    headers.insert(
        http::header::HOST,
        HeaderValue::from_str(f.host).map_err(|_| FetchError::Http("invalid host".into()))?,
    );
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(concat!("portico-trace/", env!("CARGO_PKG_VERSION"))),
    );
    headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    for (name, value) in &f.headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(*name, v);
        }
    }
    let sent = Instant::now();
    let resp = match timeout_at(deadline, sender.send_request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            driver.abort();
            return Err(if closed_early(&e) {
                FetchError::Closed
            } else {
                FetchError::Http(e.to_string())
            });
        }
        Err(_) => {
            driver.abort();
            return Err(FetchError::ResponseTimeout(timeout_text));
        }
    };
    timings.first_byte_ms = Some(ms(sent.elapsed()));
    let (parts, mut body) = resp.into_parts();
    let mut buf = BytesMut::new();
    // The head is the evidence; the body only adds an error text. Read what
    // arrives in time and stop at the limit.
    while buf.len() < f.body_limit {
        match timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    buf.truncate(f.body_limit);
    driver.abort();
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: buf.freeze(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_drops_port_and_brackets() {
        assert_eq!(sni_name("foo.test:8443"), "foo.test");
        assert_eq!(sni_name("foo.test"), "foo.test");
        assert_eq!(sni_name("[::1]:443"), "::1");
    }
}
