//! Header rules, split by concern: hop-by-hop headers (which describe one
//! connection and must not cross the proxy), the forwarding headers the
//! upstream sees, and Interlock's informational response headers.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_PROXY_ID: HeaderName = HeaderName::from_static("x-proxy-id");
pub static X_SERVER_INFO: HeaderName = HeaderName::from_static("x-server-info");
pub static X_UPSTREAM_ADDR: HeaderName = HeaderName::from_static("x-upstream-addr");
pub static X_UPSTREAM_RESPONSE_TIME: HeaderName =
    HeaderName::from_static("x-upstream-response-time");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers: the fixed set (RFC 9110 §7.6.1 and the
/// customary extras) and every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Names listed in Connection are collected first: removing while
    // iterating the Connection values is not possible.
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            // Never let a client strip what the proxy itself relies on.
            if name != header::HOST {
                headers.remove(&name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHORIZATION,
        &header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
}

/// Sets the forwarding headers on a request about to go upstream.
pub fn set_forwarding(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<&HeaderValue>,
    request_id: &HeaderValue,
) {
    let client_text = client.to_string();
    let mut xff = String::new();
    for prior in headers.get_all(&X_FORWARDED_FOR) {
        if let Some(prior) = prior.to_str().ok().map(str::trim).filter(|p| !p.is_empty()) {
            xff.push_str(prior);
            xff.push_str(", ");
        }
    }
    xff.push_str(&client_text);
    // Several X-Forwarded-For lines are one list; replace them with the joined value.
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&client_text) {
        headers.insert(X_REAL_IP.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match host {
        Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
}

/// A fresh request id: 32 lower-case hex digits, like nginx's `$request_id`.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut out = [0u8; 32];
    for byte in out.iter_mut().rev() {
        *byte = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&out).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_and_listed_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret, Host"),
            ("connection", "upgrade"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("host", "foo.test"),
            ("x-kept", "yes"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["host", "x-kept"]);
    }

    #[test]
    fn forwarding_headers_append_and_set() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.3"));
        h.insert(&X_REAL_IP, HeaderValue::from_static("spoofed"));
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("spoofed"));
        let id = new_request_id();
        let host = HeaderValue::from_static("foo.test:8080");
        set_forwarding(
            &mut h,
            "127.0.0.2".parse().unwrap(),
            "http",
            Some(&host),
            &id,
        );
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 10.0.0.3, 127.0.0.2");
        assert_eq!(h[&X_REAL_IP], "127.0.0.2");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "foo.test:8080");
        assert_eq!(h[&X_REQUEST_ID], id);
    }

    #[test]
    fn request_ids_are_32_hex_and_distinct() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
