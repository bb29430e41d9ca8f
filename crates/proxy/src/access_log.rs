//! One access-log line per request, written when the response body is done
//! (or abandoned), so it can report the bytes actually sent and the total time.
//!
//! Lines go through `tracing` with the target [`TARGET`]; the binary's
//! formatter renders them as logfmt or JSON like every other line.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, StatusCode, Uri};

pub const TARGET: &str = "portico::access";

pub struct AccessLog {
    pub start: Instant,
    pub client: SocketAddr,
    pub method: Method,
    pub host: Option<HeaderValue>,
    pub uri: Uri,
    pub status: StatusCode,
    /// Upstream address(es) tried, comma-separated as nginx prints them.
    pub upstream: Option<String>,
    pub upstream_time: Option<String>,
    pub request_id: HeaderValue,
    /// Set when the response body broke off.
    pub error: Option<String>,
}

impl AccessLog {
    /// A request's line, to be finished when its response is.
    pub fn start(
        start: Instant,
        client: SocketAddr,
        method: Method,
        host: Option<HeaderValue>,
        uri: Uri,
        request_id: HeaderValue,
    ) -> Box<AccessLog> {
        Box::new(AccessLog {
            start,
            client,
            method,
            host,
            uri,
            status: StatusCode::OK,
            upstream: None,
            upstream_time: None,
            request_id,
            error: None,
        })
    }

    pub fn emit(self, bytes: u64, complete: bool) {
        let host = self
            .host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-");
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let upstream = self.upstream.as_deref().unwrap_or("-");
        let upstream_time = self.upstream_time.as_deref().unwrap_or("-");
        let request_time = seconds(self.start.elapsed());
        let request_id = self.request_id.to_str().unwrap_or("-");
        macro_rules! line {
            ($($error:tt)*) => {
                tracing::info!(
                    target: TARGET,
                    client = %self.client.ip(),
                    method = %self.method,
                    host,
                    path,
                    status = self.status.as_u16(),
                    bytes,
                    upstream,
                    upstream_time,
                    request_time = %request_time,
                    request_id,
                    complete,
                    $($error)*
                    "request"
                )
            };
        }
        match &self.error {
            Some(error) => line!(error = %error,),
            None => line!(),
        }
    }
}

/// Seconds with millisecond precision, as nginx prints `$upstream_response_time`.
pub fn seconds(d: Duration) -> String {
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}
