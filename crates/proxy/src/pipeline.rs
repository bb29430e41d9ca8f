//! One request's policy, whichever codec carries it: where the request goes
//! (host, then the longest path prefix; the default backend for unclaimed
//! hosts), what Portico answers itself instead (redirects, misdirected
//! requests, bodies over the limit, unroutable requests), the target the
//! upstream sees (a context root stripped), and which upstream to try first.
//! The HTTP/1.1 byte codec (`h1`) and the hyper codec (`forward`) both call
//! this; neither holds a routing rule of its own.

use std::borrow::Cow;
use std::net::IpAddr;

use http::StatusCode;
use portico_model::{normalize_request_host, Cidr, Lookup, Route, RouteId};

use crate::answer::Answer;
use crate::context::TlsInfo;
use crate::error::ProxyError;
use crate::snapshot::Snapshot;

/// What the pipeline needs of a request head, as either codec read it.
pub(crate) struct RequestHead<'a> {
    pub method: &'a str,
    /// The `Host` header or `:authority`, as sent.
    pub host: &'a str,
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

/// Routes a request, or says what Portico answers instead.
pub(crate) fn decide<'a>(
    snap: &Snapshot,
    req: &RequestHead<'a>,
) -> Result<Forward<'a>, Box<Answer>> {
    if req.method == "CONNECT" {
        return Err(Answer::error(ProxyError::MethodNotAllowed(
            "CONNECT is not supported: Portico routes by host name and is not a forward proxy"
                .into(),
        )));
    }
    let host = normalize_request_host(req.host)
        .map_err(|e| Answer::error(ProxyError::BadRequest(e.to_string())))?;
    let path = req.target.split('?').next().unwrap_or("/");
    let table = &snap.table;
    let route_id = match table.lookup(&host, path) {
        Lookup::Route(id) => id,
        Lookup::NoPath(site) => {
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
        Lookup::NoHost => {
            return Err(Answer::error(ProxyError::NoRoute {
                host: host.into_owned(),
            }))
        }
    };
    let route = table.route(route_id);
    if let Some(tls) = req.tls {
        // The connection was set up for the SNI's site: serving another
        // site's request on it would route around that site's certificate
        // (domain fronting, or a browser reusing a connection too eagerly).
        let site = table.lookup_site(&host);
        let misdirected = match &tls.sni {
            Some(sni) => table.lookup_site(sni) != site,
            // Without SNI the connection got the default certificate: it may
            // carry only sites that have no certificate of their own.
            None => site.is_some() && route.tls.is_some(),
        };
        if misdirected {
            return Err(Answer::error(ProxyError::Misdirected {
                host: req.host.to_owned(),
                sni: tls.sni.clone().unwrap_or_else(|| "(none)".into()),
            }));
        }
    }
    let scheme = if req.tls.is_some() { "https" } else { "http" };
    if let Some(r) = route
        .redirects
        .iter()
        .find(|r| r.from_scheme == scheme && r.from_host == host)
    {
        // Interlock's `return 302 target$request_uri`.
        return Err(Answer::redirect(
            StatusCode::FOUND,
            &format!("{}{}", r.to, req.target),
        ));
    }
    if route.ssl_only && req.tls.is_none() {
        return Err(redirect_to_https(snap, req.host, req.target));
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
        &format!("https://{authority}{target}"),
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
                return Some(crate::balance::hash_bytes(value));
            }
        }
    }
    route.ip_hash.then(|| match client {
        IpAddr::V4(v4) => crate::balance::hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => crate::balance::hash_bytes(&v6.octets()),
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
