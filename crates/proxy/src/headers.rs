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
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The hop-by-hop headers removed whatever `Connection` says (in the
/// order of the bits `strip_hop_by_hop` gives them).
static FIXED_HOP_BY_HOP: [HeaderName; 8] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Whether `name` (any case) is one of the fixed hop-by-hop headers or
/// `Connection`: the same set [`strip_hop_by_hop`] removes, for code that
/// works on header names as text (the HTTP/1.1 fast path).
pub fn is_hop_by_hop(name: &str) -> bool {
    // Every one starts with c, k, p, t or u: most names are told apart by
    // their first letter (the fast path asks this of every header).
    if !matches!(
        name.as_bytes().first().map(u8::to_ascii_lowercase),
        Some(b'c' | b'k' | b'p' | b't' | b'u')
    ) {
        return false;
    }
    name.eq_ignore_ascii_case("connection")
        || FIXED_HOP_BY_HOP
            .iter()
            .any(|h| h.as_str().eq_ignore_ascii_case(name))
}

/// Removes hop-by-hop headers: the fixed set (RFC 9110 §7.6.1 and the
/// customary extras) and every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names present (a handful, compared without hashing)
    // finds which need removing; most messages carry none, or only
    // `Connection: keep-alive`, and then nothing else is looked up.
    const CONNECTION_BIT: u16 = 1 << 15;
    let mut present = 0u16;
    for name in headers.keys() {
        present |= match name.as_str() {
            "connection" => CONNECTION_BIT,
            "keep-alive" => 1 << 0,
            "proxy-connection" => 1 << 1,
            "te" => 1 << 2,
            "trailer" => 1 << 3,
            "transfer-encoding" => 1 << 4,
            "upgrade" => 1 << 5,
            "proxy-authorization" => 1 << 6,
            "proxy-authenticate" => 1 << 7,
            _ => 0,
        };
    }
    if present == 0 {
        return;
    }
    if present & CONNECTION_BIT != 0 {
        // Names listed in Connection are collected first: removing while
        // iterating the Connection values is not possible. Only names that
        // are present are collected (looking one up by its text allocates
        // nothing), so `Connection: keep-alive` costs no allocation.
        let mut listed: Vec<HeaderName> = Vec::new();
        // Split as bytes, as the fast path does: a value with a byte past
        // ASCII in one token still lists the others.
        for token in headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        {
            let Ok(token) = std::str::from_utf8(token.trim_ascii()) else {
                continue;
            };
            if !headers.contains_key(token) {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                // Never let a client strip what the proxy itself relies on.
                if name != header::HOST {
                    listed.push(name);
                }
            }
        }
        for name in listed {
            headers.remove(&name);
        }
        headers.remove(header::CONNECTION);
    }
    for (i, name) in FIXED_HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Request headers the proxy sets (or, `Forwarded`, removes) itself, so a
/// client's own never reach the upstream (`X-Forwarded-For` aside: it may
/// be extended). [`set_forwarding`] writes each on the general path; the
/// fast path drops the client's by this list and writes its own.
pub(crate) static SET_ON_REQUESTS: [&HeaderName; 5] = [
    &X_REAL_IP,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &X_REQUEST_ID,
    &header::FORWARDED,
];

/// Whether a client's request header is dropped instead of forwarded: a
/// name with an underscore, as nginx (so Interlock) drops by default
/// (`underscores_in_headers off`). Upstreams behind CGI-style interfaces
/// (FastCGI, WSGI, Rack) read `X_Real_IP` and `X-Real-IP` as one variable,
/// so a client's underscored twin could stand in for a header the proxy
/// sets, or for a framing header it acted on.
pub(crate) fn is_underscored(name: &str) -> bool {
    name.as_bytes().contains(&b'_')
}

/// Removes the request headers [`is_underscored`] names.
pub(crate) fn strip_underscored(headers: &mut HeaderMap) {
    if !headers.keys().any(|n| is_underscored(n.as_str())) {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_underscored(n.as_str()))
        .cloned()
        .collect();
    for name in names {
        headers.remove(&name);
    }
}

/// Whether `name` (any case) is in [`SET_ON_REQUESTS`].
pub(crate) fn is_set_on_requests(name: &str) -> bool {
    // `x-…` or `forwarded`: the first letter rules out most names.
    if !matches!(
        name.as_bytes().first().map(u8::to_ascii_lowercase),
        Some(b'x' | b'f')
    ) {
        return false;
    }
    SET_ON_REQUESTS
        .iter()
        .any(|h| h.as_str().eq_ignore_ascii_case(name))
}

/// Interlock's response headers, which the proxy sets on every response
/// (`crate::pipeline::interlock_headers`): always the first two, the rest
/// unless `hide_info_headers`, when an upstream's own pass instead.
pub(crate) static SET_ON_RESPONSES: [&HeaderName; 5] = [
    &X_REQUEST_ID,
    &X_PROXY_ID,
    &X_SERVER_INFO,
    &X_UPSTREAM_ADDR,
    &X_UPSTREAM_RESPONSE_TIME,
];

/// Whether an upstream's response header `name` (any case) gives way to
/// the proxy's own.
pub(crate) fn is_set_on_responses(name: &str, hide_info: bool) -> bool {
    // All `x-…`: the first letter rules out most names.
    if !name
        .as_bytes()
        .first()
        .is_some_and(|b| b.eq_ignore_ascii_case(&b'x'))
    {
        return false;
    }
    let set = if hide_info {
        &SET_ON_RESPONSES[..2]
    } else {
        &SET_ON_RESPONSES[..]
    };
    set.iter().any(|h| h.as_str().eq_ignore_ascii_case(name))
}

/// A client address as a header value (`X-Real-IP`, `X-Forwarded-For`),
/// made once per connection and shared by its requests.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value")
}

/// Sets the forwarding headers on a request about to go upstream. `peer`
/// is the address the connection came from, appended to `X-Forwarded-For`;
/// `client` the client's address (`X-Real-IP`): the peer's, or the one a
/// trusted proxy named. Both as made by [`ip_value`]. `extend` says whether
/// the request's own `X-Forwarded-For` is kept (it came from a trusted
/// proxy) or replaced.
pub fn set_forwarding(
    headers: &mut HeaderMap,
    (peer, client): (&HeaderValue, &HeaderValue),
    extend: bool,
    proto: &'static str,
    host: Option<&HeaderValue>,
    request_id: &HeaderValue,
) {
    let mut xff: Option<String> = None;
    for prior in headers.get_all(&X_FORWARDED_FOR).iter().filter(|_| extend) {
        if let Some(prior) = prior.to_str().ok().map(str::trim).filter(|p| !p.is_empty()) {
            let xff = xff.get_or_insert_with(String::new);
            xff.push_str(prior);
            xff.push_str(", ");
        }
    }
    // Several X-Forwarded-For lines are one list; replace them with the joined value.
    match xff {
        None => {
            headers.insert(X_FORWARDED_FOR.clone(), peer.clone());
        }
        Some(mut xff) => {
            xff.push_str(peer.to_str().unwrap_or_default());
            if let Ok(v) = HeaderValue::from_str(&xff) {
                headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
    }
    headers.insert(X_REAL_IP.clone(), client.clone());
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match host {
        Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    // RFC 7239's Forwarded says the same as the X-Forwarded-* family, but
    // Portico doesn't maintain it: a client's own would pass unchecked to
    // applications that trust it.
    headers.remove(header::FORWARDED);
}

/// A fresh request id: 32 lower-case hex digits, like nginx's `$request_id`.
pub fn new_request_id() -> HeaderValue {
    // One allocation, shared (by reference count) by the copies that go to
    // the upstream, to the client and into the access log.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(request_id_bytes()))
        .expect("hex digits are a valid header value")
}

/// The text of a fresh request id, for paths that write headers as bytes.
pub fn request_id_bytes() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut out = [0u8; 32];
    for byte in out.iter_mut().rev() {
        *byte = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    out
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
            (
                &ip_value("127.0.0.2".parse().unwrap()),
                &ip_value("127.0.0.2".parse().unwrap()),
            ),
            true,
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

    #[test]
    fn set_forwarding_replaces_every_header_the_proxy_owns() {
        let mut h = HeaderMap::new();
        for name in SET_ON_REQUESTS {
            h.insert(name.clone(), HeaderValue::from_static("from-the-client"));
        }
        let ip = ip_value("127.0.0.2".parse().unwrap());
        set_forwarding(&mut h, (&ip, &ip), false, "http", None, &new_request_id());
        for name in SET_ON_REQUESTS {
            assert_ne!(
                h.get(name).map(HeaderValue::as_bytes),
                Some(&b"from-the-client"[..]),
                "{name}"
            );
        }
    }

    #[test]
    fn name_tests_agree_with_the_lists_in_any_case() {
        for h in &FIXED_HOP_BY_HOP {
            assert!(is_hop_by_hop(&h.as_str().to_ascii_uppercase()), "{h}");
        }
        assert!(is_hop_by_hop("Connection"));
        for h in SET_ON_REQUESTS {
            assert!(is_set_on_requests(&h.as_str().to_ascii_uppercase()), "{h}");
        }
        for h in SET_ON_RESPONSES {
            assert!(
                is_set_on_responses(&h.as_str().to_ascii_uppercase(), false),
                "{h}"
            );
        }
        assert!(!is_set_on_responses("x-server-info", true));
        assert!(is_set_on_responses("X-Request-Id", true));
        for other in [
            "content-length",
            "date",
            "x-app",
            "host",
            "",
            "cache-control",
        ] {
            assert!(!is_hop_by_hop(other), "{other}");
            assert!(!is_set_on_requests(other), "{other}");
            assert!(!is_set_on_responses(other, false), "{other}");
        }
    }
}
