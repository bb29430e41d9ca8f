//! Portico's own answers (errors, redirects): one description, rendered by
//! each codec — as a `Response` for hyper, as bytes for the HTTP/1.1 fast
//! path — so both paths send the same status, headers and body.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;
use crate::error::ProxyError;
use crate::metrics::ProxyStats;

/// What `health_uri` says of the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Readiness {
    Serving,
    /// Stopping: load balancers should take it out.
    Draining,
    /// No routes yet: load balancers should not put it in.
    NotReady,
}

/// Boxed where it is made: it travels in the `Err` side of results whose
/// `Ok` side is the common, small case.
pub(crate) struct Answer {
    pub status: StatusCode,
    /// `Location`, for redirects.
    pub location: Option<HeaderValue>,
    pub body: Bytes,
    /// The request's framing can't be trusted after it (a malformed or
    /// abandoned request): the connection closes, as nginx does.
    pub close: bool,
    /// Why the request was not forwarded, for the logs; `None` for a redirect.
    pub error: Option<ProxyError>,
    /// `Retry-After: 1`: the refusal is momentary (a service at its
    /// `max_requests`).
    pub retry_after: bool,
    /// The answer to `health_uri`: a load balancer's check, every second or
    /// two from each balancer, which would drown the access log (HAProxy
    /// does not log `monitor-uri` requests either).
    pub health: bool,
}

impl Answer {
    pub fn error(e: ProxyError) -> Box<Answer> {
        let status = e.status();
        Box::new(Answer {
            status,
            location: None,
            body: Bytes::from(format!(
                "{} {}\n{}\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                e
            )),
            close: matches!(
                status,
                StatusCode::BAD_REQUEST
                    | StatusCode::REQUEST_TIMEOUT
                    | StatusCode::PAYLOAD_TOO_LARGE
                    | StatusCode::TOO_MANY_REQUESTS
            ),
            retry_after: matches!(
                e,
                ProxyError::Overloaded { .. } | ProxyError::TooManyBodies { .. }
            ),
            error: Some(e),
            health: false,
        })
    }

    /// The answer to `health_uri`: 200 while the proxy serves, 503 before
    /// it has routes or once it drains (and then the connection closes,
    /// so a balancer's next check is not held on a connection about to go).
    pub fn health(readiness: Readiness) -> Box<Answer> {
        let draining = readiness == Readiness::Draining;
        let (status, body) = match readiness {
            Readiness::Serving => (StatusCode::OK, "ok\n"),
            Readiness::Draining => (
                StatusCode::SERVICE_UNAVAILABLE,
                "503 Service Unavailable\ndraining: this proxy is shutting down\n",
            ),
            Readiness::NotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                "503 Service Unavailable\nnot ready: no routes yet (waiting for the controller's first snapshot)\n",
            ),
        };
        Box::new(Answer {
            status,
            location: None,
            body: Bytes::from_static(body.as_bytes()),
            close: draining,
            error: None,
            retry_after: false,
            health: true,
        })
    }

    /// A redirect to `location` (301, or Interlock's 302 for `redirects`).
    pub fn redirect(status: StatusCode, location: &str) -> Box<Answer> {
        Box::new(Answer {
            status,
            location: HeaderValue::from_str(location).ok(),
            body: Bytes::from(format!(
                "{} {}\n{location}\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )),
            close: false,
            error: None,
            retry_after: false,
            health: false,
        })
    }

    /// Counts the answer among the requests no service was chosen for.
    pub fn count(&self, stats: &ProxyStats) {
        if self.health {
            stats.health_checked();
        } else {
            stats.unforwarded(self.error.as_ref());
        }
    }

    /// For hyper: the proxy's headers are added by the caller. `Connection`
    /// exists in HTTP/1 only.
    pub fn into_response(self, http1: bool) -> (Response<ResponseBody>, Option<ProxyError>) {
        let mut resp = Response::new(ResponseBody::full(self.body));
        *resp.status_mut() = self.status;
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, TEXT_PLAIN.clone());
        if let Some(location) = self.location {
            headers.insert(header::LOCATION, location);
        }
        if self.close && http1 {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        (resp, self.error)
    }

    /// For the byte codec: the status line and the answer's own headers,
    /// without the final empty line (the caller adds the proxy's headers
    /// and ends the head).
    pub fn write_head(&self, out: &mut Vec<u8>, date: &[u8]) {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\ncontent-type: ");
        out.extend_from_slice(TEXT_PLAIN.as_bytes());
        if let Some(location) = &self.location {
            out.extend_from_slice(b"\r\nlocation: ");
            out.extend_from_slice(location.as_bytes());
        }
        if self.retry_after {
            out.extend_from_slice(b"\r\nretry-after: 1");
        }
        out.extend_from_slice(b"\r\ndate: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\ncontent-length: ");
        out.extend_from_slice(self.body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
