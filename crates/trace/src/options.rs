//! What to trace: the target (host, port, path, scheme) and the hops to
//! check, parsed from curl-like arguments. Everything here fails with a
//! [`UsageError`] (the CLI's exit 2) before any traffic is sent.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tls::{TlsClient, TlsSetupError};

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("{0:?} is not a host name or an http(s) URL")]
    Target(String),
    #[error("--resolve {0:?}: expected HOST:PORT:ADDRESS, as curl takes it")]
    Resolve(String),
    #[error("{what} {value:?}: expected IP:PORT{hint}")]
    Addr {
        what: &'static str,
        value: String,
        hint: &'static str,
    },
    #[error("{what} {value:?}: expected http://IP:PORT (the admin API serves plain HTTP)")]
    Admin { what: &'static str, value: String },
    #[error("--timeout must be greater than zero")]
    Timeout,
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// The request as a client would send it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Target {
    /// Lower case, no trailing dot.
    pub host: String,
    /// The client's port: from the URL, else 80 or 443.
    pub port: u16,
    pub path: String,
    pub https: bool,
}

impl Target {
    /// Parses `foo.app.test`, `foo.app.test:8080`, `http://foo.app.test/x`
    /// or `https://foo.app.test:8443/`. `https` forces the scheme; `path`
    /// replaces the URL's path.
    pub fn parse(text: &str, https: bool, path: Option<&str>) -> Result<Target, UsageError> {
        let bad = || UsageError::Target(text.to_owned());
        let (scheme_https, rest) = if let Some(r) = text.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = text.strip_prefix("http://") {
            (false, r)
        } else if text.contains("://") {
            return Err(bad());
        } else {
            (false, text)
        };
        let https = https || scheme_https;
        let (authority, url_path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let url_path = if url_path.starts_with('?') {
            format!("/{url_path}")
        } else {
            url_path.to_owned()
        };
        if authority.contains('@') {
            return Err(bad());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                (h, p.parse::<u16>().map_err(|_| bad())?)
            }
            _ => (authority, if https { 443 } else { 80 }),
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let valid = !host.is_empty()
            && host.len() <= 253
            && (host.parse::<IpAddr>().is_ok()
                || host.split('.').all(|l| {
                    !l.is_empty()
                        && l.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                }));
        if !valid || port == 0 {
            return Err(bad());
        }
        let path = match path {
            Some(p) if p.starts_with('/') => p.to_owned(),
            Some(p) => format!("/{p}"),
            None => url_path,
        };
        Ok(Target {
            host,
            port,
            path,
            https,
        })
    }

    /// `Host` as a client sends it: with the port unless it is the scheme's default.
    pub fn host_header(&self) -> String {
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn url(&self) -> String {
        format!(
            "{}://{}{}",
            if self.https { "https" } else { "http" },
            self.host_header(),
            self.path
        )
    }
}

/// `--resolve HOST:PORT:ADDRESS`: send requests for HOST:PORT to ADDRESS,
/// without asking DNS (curl's option, same syntax).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolve {
    pub host: String,
    pub port: u16,
    pub addr: IpAddr,
}

impl FromStr for Resolve {
    type Err = UsageError;

    fn from_str(s: &str) -> Result<Resolve, UsageError> {
        let bad = || UsageError::Resolve(s.to_owned());
        let (host, rest) = s.split_once(':').ok_or_else(bad)?;
        let (port, addr) = rest.split_once(':').ok_or_else(bad)?;
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        Ok(Resolve {
            host: host.trim_end_matches('.').to_ascii_lowercase(),
            port: port.parse().map_err(|_| bad())?,
            addr: addr.parse().map_err(|_| bad())?,
        })
    }
}

/// Parses `IP:PORT`, or a bare IP with `default_port`.
pub fn parse_addr(
    what: &'static str,
    value: &str,
    default_port: Option<u16>,
) -> Result<SocketAddr, UsageError> {
    if let Ok(a) = value.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Some(port) = default_port {
        let bare = value.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
    }
    Err(UsageError::Addr {
        what,
        value: value.to_owned(),
        hint: if default_port.is_some() { " or IP" } else { "" },
    })
}

/// Parses `--admin`: `http://IP:PORT[/]` or `IP:PORT`.
pub fn parse_admin(value: &str) -> Result<SocketAddr, UsageError> {
    parse_admin_url("--admin", value)
}

/// Parses an admin API's address given as `what`: `http://IP:PORT[/]` or
/// `IP:PORT`.
pub fn parse_admin_url(what: &'static str, value: &str) -> Result<SocketAddr, UsageError> {
    let bad = || UsageError::Admin {
        what,
        value: value.to_owned(),
    };
    let bare = value
        .strip_prefix("http://")
        .unwrap_or(value)
        .trim_end_matches('/');
    if value.starts_with("https://") {
        return Err(bad());
    }
    bare.parse().map_err(|_| bad())
}

/// Everything one trace run needs.
#[derive(Clone)]
pub struct Options {
    pub target: Target,
    /// The proxy nodes, each asked directly with the crafted `Host`.
    pub proxies: Vec<SocketAddr>,
    /// The external load balancer's addresses.
    pub lbs: Vec<SocketAddr>,
    pub resolve: Vec<Resolve>,
    /// Ask this DNS server instead of the system resolver.
    pub dns: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// A cluster's controller's admin API: its proxies are checked too,
    /// and whether each serves the published version.
    pub controller_admin: Option<SocketAddr>,
    /// For the admin APIs given by hand: `admin` and `controller_admin`.
    /// Never sent to an admin API a proxy announces.
    pub admin_token: Option<String>,
    /// For the admin APIs the controller's proxies announce (they have
    /// tokens of their own). Without it they are asked without a token.
    pub proxy_admin_token: Option<String>,
    /// Bound on each hop.
    pub timeout: Duration,
    /// Trust anchors, for HTTPS targets.
    pub tls: Option<TlsClient>,
}

impl Options {
    /// Options for `target` with nothing else set, the default 5 s timeout,
    /// and, for HTTPS, trust in `cacert` or the system CAs.
    pub fn new(target: Target, cacert: Option<PathBuf>) -> Result<Options, UsageError> {
        let tls = if target.https {
            Some(TlsClient::new(cacert.as_deref())?)
        } else {
            None
        };
        Ok(Options {
            target,
            proxies: Vec::new(),
            lbs: Vec::new(),
            resolve: Vec::new(),
            dns: None,
            admin: None,
            controller_admin: None,
            admin_token: None,
            proxy_admin_token: None,
            timeout: Duration::from_secs(5),
            tls,
        })
    }

    /// The `--resolve` entry for the target, if any.
    pub fn resolved(&self) -> Option<IpAddr> {
        self.resolve
            .iter()
            .find(|r| r.host == self.target.host && r.port == self.target.port)
            .map(|r| r.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("Foo.App.Test", false, None).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str(), t.https),
            ("foo.app.test", 80, "/", false)
        );
        let t = Target::parse("https://foo.test:8443/a?b=1", false, None).unwrap();
        assert_eq!((t.port, t.path.as_str(), t.https), (8443, "/a?b=1", true));
        assert_eq!(t.host_header(), "foo.test:8443");
        let t = Target::parse("foo.test", true, Some("health")).unwrap();
        assert_eq!((t.port, t.path.as_str()), (443, "/health"));
        assert_eq!(t.url(), "https://foo.test/health");
        for bad in [
            "",
            "ftp://x",
            "foo bar",
            "foo.test:99999",
            "a..b",
            "u@foo.test",
        ] {
            assert!(Target::parse(bad, false, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolve_and_addresses() {
        let r: Resolve = "Foo.test:8080:127.0.0.1".parse().unwrap();
        assert_eq!((r.host.as_str(), r.port), ("foo.test", 8080));
        let r: Resolve = "foo.test:443:[::1]".parse().unwrap();
        assert_eq!(r.addr, "::1".parse::<IpAddr>().unwrap());
        assert!("foo.test:127.0.0.1".parse::<Resolve>().is_err());
        assert_eq!(
            parse_addr("--dns", "127.0.0.1", Some(53)).unwrap(),
            "127.0.0.1:53".parse().unwrap()
        );
        assert!(parse_addr("--proxy", "127.0.0.1", None).is_err());
        assert_eq!(
            parse_admin("http://127.0.0.1:9000/").unwrap(),
            "127.0.0.1:9000".parse().unwrap()
        );
        assert!(parse_admin("https://127.0.0.1:9000").is_err());
    }
}
