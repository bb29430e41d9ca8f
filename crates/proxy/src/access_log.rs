//! One access-log line per request, written when the response body is done
//! (or abandoned), so it can report the bytes actually sent and the total time.
//!
//! Lines go through `tracing` with the target [`TARGET`]; the binary's
//! formatter renders them as logfmt or JSON like every other line, or, with
//! `access_log_format = "combined"`, passes on nginx's combined line (the
//! event's message is [`COMBINED`], its one field `line`) as it is.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, StatusCode, Uri};

pub const TARGET: &str = "portico::access";

/// The message of an access event that carries a finished combined line.
pub const COMBINED: &str = "combined";

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
    /// Written as nginx's combined format rather than as fields; with the
    /// request's HTTP version, `Referer` and `User-Agent`, which only that
    /// format prints.
    pub combined: Option<Box<CombinedExtra>>,
}

/// What nginx's combined line has that Interlock's fields have not.
#[derive(Default)]
pub struct CombinedExtra {
    pub version: http::Version,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
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
            combined: None,
        })
    }

    pub fn emit(self, bytes: u64, complete: bool) {
        if let Some(extra) = &self.combined {
            let line = self.combined_line(extra, bytes);
            tracing::info!(target: TARGET, line = %line, "{}", COMBINED);
            return;
        }
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

impl AccessLog {
    /// `$remote_addr - $remote_user [$time_local] "$request" $status
    /// $body_bytes_sent "$http_referer" "$http_user_agent"`, the time in UTC.
    /// What the client sent is escaped as nginx escapes it (`"`, `\`,
    /// control and non-ASCII bytes as `\xHH`), so a request cannot forge a
    /// line or a field.
    fn combined_line(&self, extra: &CombinedExtra, bytes: u64) -> String {
        use std::fmt::Write as _;
        let mut line = String::with_capacity(256);
        let _ = write!(
            line,
            "{} - - [{}] \"",
            self.client.ip(),
            clf_time(std::time::SystemTime::now())
        );
        escape_into(&mut line, self.method.as_str().as_bytes());
        line.push(' ');
        escape_into(
            &mut line,
            self.uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes(),
        );
        let _ = write!(
            line,
            " {:?}\" {} {bytes} \"",
            extra.version,
            self.status.as_u16()
        );
        escape_into(&mut line, header_or_dash(&extra.referer));
        line.push_str("\" \"");
        escape_into(&mut line, header_or_dash(&extra.user_agent));
        line.push('"');
        line
    }
}

fn header_or_dash(v: &Option<HeaderValue>) -> &[u8] {
    v.as_ref().map_or(b"-", HeaderValue::as_bytes)
}

fn escape_into(out: &mut String, bytes: &[u8]) {
    use std::fmt::Write as _;
    for &b in bytes {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
}

/// `10/Oct/2000:13:55:36 +0000`, nginx's `$time_local` in UTC.
fn clf_time(t: std::time::SystemTime) -> String {
    // 2000-10-10T13:55:36Z
    let iso = humantime::format_rfc3339_seconds(t).to_string();
    let month = match &iso[5..7] {
        "01" => "Jan",
        "02" => "Feb",
        "03" => "Mar",
        "04" => "Apr",
        "05" => "May",
        "06" => "Jun",
        "07" => "Jul",
        "08" => "Aug",
        "09" => "Sep",
        "10" => "Oct",
        "11" => "Nov",
        _ => "Dec",
    };
    format!(
        "{}/{month}/{}:{} +0000",
        &iso[8..10],
        &iso[0..4],
        &iso[11..19]
    )
}

/// Seconds with millisecond precision, as nginx prints `$upstream_response_time`.
pub fn seconds(d: Duration) -> String {
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_lines_escape_what_the_client_sent() {
        let mut log = AccessLog::start(
            Instant::now(),
            "192.0.2.7:5000".parse().unwrap(),
            Method::GET,
            None,
            Uri::from_static("/a%20b?q=1"),
            HeaderValue::from_static("id"),
        );
        log.status = StatusCode::NOT_FOUND;
        let extra = CombinedExtra {
            version: http::Version::HTTP_11,
            referer: None,
            user_agent: Some(HeaderValue::from_bytes(b"curl/8 \"x\" \xff").unwrap()),
        };
        let line = log.combined_line(&extra, 42);
        let (head, rest) = line.split_once(" [").unwrap();
        assert_eq!(head, "192.0.2.7 - -");
        let rest = &rest[rest.find(']').unwrap()..];
        assert_eq!(
            rest,
            r#"] "GET /a%20b?q=1 HTTP/1.1" 404 42 "-" "curl/8 \x22x\x22 \xFF""#
        );
    }

    #[test]
    fn clf_times_are_nginx_shaped() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(971_186_136);
        assert_eq!(clf_time(t), "10/Oct/2000:13:55:36 +0000");
    }
}
