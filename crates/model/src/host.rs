//! Host names: validation of configured host patterns and normalisation of
//! the `Host` a request carries, so both sides of a lookup agree on one form
//! (lower case, no port, no trailing dot).

use std::borrow::Cow;
use std::fmt;

/// Longest DNS name we accept (RFC 1035 limit without the trailing dot).
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// A configured host: an exact name, or `*.suffix` matching every name below `suffix`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    Exact(String),
    /// Holds the suffix without the leading `*.`.
    Wildcard(String),
}

impl HostPattern {
    /// Parses a configured host such as `foo.app.domain.com` or `*.foo.example`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim_end_matches('.').to_ascii_lowercase();
        if let Some(suffix) = lower.strip_prefix("*.") {
            check_name(suffix)?;
            return Ok(HostPattern::Wildcard(suffix.to_owned()));
        }
        if lower.contains('*') {
            return Err(format!(
                "{text:?}: a wildcard must be the whole first label, as in \"*.example.com\""
            ));
        }
        if lower.contains(':') {
            return Err(format!(
                "{text:?}: hosts are matched without the port; remove \":{}\"",
                lower.rsplit(':').next().unwrap_or_default()
            ));
        }
        check_name(&lower).map_err(|e| format!("{text:?}: {e}"))?;
        Ok(HostPattern::Exact(lower))
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// On the wire (a controller's snapshots), a pattern is its written form,
/// `*.example.com` or `a.example.com`, and is read back by
/// [`HostPattern::parse`]: a snapshot cannot hold a pattern the config
/// file would refuse.
impl serde::Serialize for HostPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HostPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::wire::parse_str(
            d,
            "a host such as \"a.example.com\" or \"*.example.com\"",
            |text| {
                HostPattern::parse(text).map_err(|e| {
                    // Exact names' messages quote the text already; wildcards' don't.
                    let quoted = format!("{text:?}");
                    if e.starts_with(&quoted) {
                        e
                    } else {
                        format!("{quoted}: {e}")
                    }
                })
            },
        )
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty host name".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!("longer than {MAX_NAME} characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (two dots in a row?)".into());
        }
        if label.len() > MAX_LABEL {
            return Err(format!(
                "label {label:?} is longer than {MAX_LABEL} characters"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("invalid character {c:?}"));
        }
    }
    Ok(())
}

/// Why a request's host could not be used for routing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestHostError {
    #[error("the request has no Host header")]
    Missing,
    #[error("the Host header is not a valid host name")]
    Invalid,
}

/// Normalises the host a request names (`Host` header or `:authority`):
/// strips the port and a trailing dot, lower-cases, and rejects anything that
/// is not a host name or IP literal. Borrows when the input is already normal,
/// which is the common case, so the request path does not allocate.
pub fn normalize_request_host(raw: &str) -> Result<Cow<'_, str>, RequestHostError> {
    if raw.is_empty() {
        return Err(RequestHostError::Missing);
    }
    if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: [::1]:8080
        let end = rest.find(']').ok_or(RequestHostError::Invalid)?;
        let (addr, after) = rest.split_at(end);
        let after = &after[1..];
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return Err(RequestHostError::Invalid);
        }
        if addr.is_empty()
            || !addr
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(RequestHostError::Invalid);
        }
        return Ok(lower_case(&raw[..end + 2]));
    }
    // One pass over the name (every request's host comes here): where it
    // ends, whether every byte may be in a name, and whether any needs
    // lower-casing.
    let mut end = raw.len();
    let mut upper = false;
    for (i, &b) in raw.as_bytes().iter().enumerate() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {}
            b'A'..=b'Z' => upper = true,
            b':' if is_port(&raw[i + 1..]) => {
                end = i;
                break;
            }
            _ => return Err(RequestHostError::Invalid),
        }
    }
    let name = &raw[..end];
    let name = name.strip_suffix('.').unwrap_or(name);
    // Empty labels (`..`, `.x`, `x..`) name nothing; `..` would otherwise
    // pass as `.` (found by the idempotence property).
    if name.is_empty()
        || name.len() > MAX_NAME
        || name.starts_with('.')
        || name.ends_with('.')
        || name.contains("..")
    {
        return Err(RequestHostError::Invalid);
    }
    Ok(if upper {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

/// `name`, lower-cased only if it has to be.
fn lower_case(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert_eq!(
            HostPattern::parse("Foo.App.Domain.com.").unwrap(),
            HostPattern::Exact("foo.app.domain.com".into())
        );
        assert_eq!(
            HostPattern::parse("*.foo.example").unwrap(),
            HostPattern::Wildcard("foo.example".into())
        );
        assert!(HostPattern::parse("").is_err());
        assert!(HostPattern::parse("*").is_err());
        assert!(HostPattern::parse("a.*.example").is_err());
        assert!(HostPattern::parse("foo..example").is_err());
        assert!(HostPattern::parse("foo example").is_err());
        let err = HostPattern::parse("foo.example:8080").unwrap_err();
        assert!(err.contains("without the port"), "{err}");
    }

    #[test]
    fn request_hosts() {
        assert_eq!(normalize_request_host("foo.test").unwrap(), "foo.test");
        assert!(matches!(
            normalize_request_host("foo.test").unwrap(),
            Cow::Borrowed(_)
        ));
        assert_eq!(normalize_request_host("FOO.test:8080").unwrap(), "foo.test");
        assert_eq!(normalize_request_host("foo.test.").unwrap(), "foo.test");
        assert_eq!(normalize_request_host("127.0.0.1:80").unwrap(), "127.0.0.1");
        assert_eq!(normalize_request_host("[::1]:80").unwrap(), "[::1]");
        assert_eq!(normalize_request_host(""), Err(RequestHostError::Missing));
        for bad in [
            "foo bar",
            "foo:",
            "foo:abc",
            "foo/bar",
            "[::1",
            "[zz]",
            ":80",
            "a:1:2",
            "..",
            ".",
            ".foo.test",
            "foo..test",
            "foo.test..",
            "..:80",
        ] {
            assert_eq!(
                normalize_request_host(bad),
                Err(RequestHostError::Invalid),
                "{bad}"
            );
        }
    }
}

/// Properties of host normalisation and patterns, over generated names.
#[cfg(test)]
pub(crate) mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A valid lower-case host name of one to five labels.
    pub(crate) fn name() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-z0-9][a-z0-9_-]{0,7}", 1..5).prop_map(|labels| labels.join("."))
    }

    /// `name` as a client may send it: any case, maybe a trailing dot,
    /// maybe a port.
    pub(crate) fn as_sent(name: &str) -> impl Strategy<Value = String> {
        let len = name.len();
        (
            prop::collection::vec(any::<bool>(), len),
            any::<bool>(),
            prop::option::of(0u32..=65535),
        )
            .prop_map({
                let name = name.to_owned();
                move |(upper, dot, port)| {
                    let mut sent: String = name
                        .chars()
                        .zip(upper)
                        .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
                        .collect();
                    if dot {
                        sent.push('.');
                    }
                    if let Some(port) = port {
                        sent.push_str(&format!(":{port}"));
                    }
                    sent
                }
            })
    }

    proptest! {
        #[test]
        fn case_a_trailing_dot_and_a_port_normalise_away(
            (name, sent) in name().prop_flat_map(|n| (Just(n.clone()), as_sent(&n)))
        ) {
            prop_assert_eq!(normalize_request_host(&sent).unwrap(), name.as_str());
        }

        #[test]
        fn normalising_is_idempotent_and_never_panics(raw in "[a-zA-Z0-9._:\\[\\]-]{0,20}|\\PC{0,12}") {
            if let Ok(once) = normalize_request_host(&raw) {
                let twice = normalize_request_host(&once).unwrap();
                prop_assert_eq!(&twice, &once);
                prop_assert!(!once.bytes().any(|b| b.is_ascii_uppercase()));
                prop_assert!(!once.ends_with('.'));
            }
        }

        #[test]
        fn patterns_are_lower_case_and_display_round_trips(
            (name, sent) in name().prop_flat_map(|n| (Just(n.clone()), as_sent(&n))),
            wild in any::<bool>(),
        ) {
            // A configured host has no port.
            let sent = sent.split(':').next().unwrap();
            let text = if wild { format!("*.{sent}") } else { sent.to_owned() };
            let pattern = HostPattern::parse(&text).unwrap();
            prop_assert_eq!(
                &pattern,
                &if wild { HostPattern::Wildcard(name) } else { HostPattern::Exact(name) }
            );
            prop_assert_eq!(HostPattern::parse(&pattern.to_string()).unwrap(), pattern);
        }
    }
}
