//! Why a request could not be proxied, classified once at the edge into an
//! HTTP status. The body and the log both carry the cause in words.

use std::fmt;

use std::time::Duration;

use http::StatusCode;

#[derive(Debug)]
pub enum ProxyError {
    /// The request itself is unusable (no or bad Host, forbidden method...).
    BadRequest(String),
    /// No service is configured for the host (Interlock answers 503).
    NoRoute {
        host: String,
    },
    /// The host is served, but at other paths (Interlock's context roots).
    NoPath {
        host: String,
        paths: Vec<String>,
    },
    /// The request body is larger than `max_body_size`.
    TooLarge {
        service: String,
        limit: u64,
    },
    /// The service exists but has no upstreams at the moment.
    NoUpstreams {
        service: String,
    },
    /// Not one upstream could take the request, or the one that had it broke
    /// off after it was sent.
    BadGateway {
        service: String,
        detail: String,
    },
    /// An upstream took the request and did not answer in time.
    Timeout {
        service: String,
        detail: String,
    },
    MethodNotAllowed(String),
    /// The request uses something Portico does not implement (a transfer
    /// coding other than chunked).
    NotImplemented(String),
    /// The client stopped sending its request body.
    ClientTimeout(String),
    /// The service has `max_requests` requests in flight already.
    Overloaded {
        service: String,
        max: u32,
    },
    /// The client address has `max_bodies_per_client` request bodies in
    /// progress already.
    TooManyBodies {
        client: std::net::IpAddr,
        max: usize,
    },
    /// Over TLS, the Host names another site than the SNI the connection
    /// was set up for.
    Misdirected {
        host: String,
        sni: String,
    },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute { .. }
            | ProxyError::NoUpstreams { .. }
            | ProxyError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NoPath { .. } => StatusCode::NOT_FOUND,
            ProxyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::TooManyBodies { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The upstream at `addr` took a request for `service` and sent no
    /// response within `timeout`.
    pub(crate) fn upstream_timeout(
        service: &str,
        addr: std::net::SocketAddr,
        timeout: Duration,
    ) -> ProxyError {
        ProxyError::Timeout {
            service: service.to_owned(),
            detail: format!(
                "upstream {addr} sent no response within {} (upstream_timeout)",
                humanize(timeout)
            ),
        }
    }

    /// Every upstream of `service` was tried and failed, as `failures` say.
    pub(crate) fn no_upstream_took(service: &str, failures: &[String]) -> ProxyError {
        ProxyError::BadGateway {
            service: service.to_owned(),
            detail: format!(
                "no upstream could take the request: {}",
                failures.join("; ")
            ),
        }
    }

    /// Whether the failure lies with the upstreams (the operator's concern)
    /// rather than with the client's request.
    pub fn is_upstream_failure(&self) -> bool {
        matches!(
            self,
            ProxyError::NoUpstreams { .. }
                | ProxyError::BadGateway { .. }
                | ProxyError::Timeout { .. }
        )
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::BadRequest(why) => write!(f, "bad request: {why}"),
            ProxyError::NoRoute { host } => {
                write!(f, "no service is configured for host {host:?}")
            }
            ProxyError::NoPath { host, paths } => write!(
                f,
                "host {host:?} is served only under {}",
                paths.join(", ")
            ),
            ProxyError::TooLarge { service, limit } => write!(
                f,
                "service {service}: the request body is larger than {limit} bytes (max_body_size)"
            ),
            ProxyError::NoUpstreams { service } => {
                write!(f, "service {service} has no upstreams")
            }
            ProxyError::BadGateway { service, detail } => {
                write!(f, "service {service}: {detail}")
            }
            ProxyError::Timeout { service, detail } => write!(f, "service {service}: {detail}"),
            ProxyError::Overloaded { service, max } => write!(
                f,
                "service {service} has {max} requests in progress, its max_requests; try again shortly"
            ),
            ProxyError::TooManyBodies { client, max } => write!(
                f,
                "{client} is sending {max} request bodies already (max_bodies_per_client); try again shortly"
            ),
            ProxyError::MethodNotAllowed(why) | ProxyError::NotImplemented(why) => {
                write!(f, "{why}")
            }
            ProxyError::ClientTimeout(why) => write!(f, "{why} (client_body_timeout)"),
            ProxyError::Misdirected { host, sni } => write!(
                f,
                "host {host:?} is not served on this connection, which was opened for {sni:?} (TLS server name); open a new connection for {host:?}"
            ),
        }
    }
}

/// A duration as written in the config (`60s`, `250ms`), for messages.
pub(crate) fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
