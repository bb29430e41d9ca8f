//! Content digests of configs. Two configs that mean the same thing (same
//! settings, same services, whatever the order of services and hosts, the
//! comments or the whitespace) get the same version, so an edit that changes
//! nothing is recognised and skipped.

use std::fmt::{self, Write as _};

use sha2::{Digest, Sha256};

use crate::config::Config;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version([u8; 32]);

impl Version {
    /// The digest of `config`'s canonical form (see `canonical` below).
    ///
    /// A config read back from its wire form ([`crate::wire`]) has the
    /// version it was sent with: the form carries everything hashed here
    /// except the admin token, which it never carries (so a config with a
    /// token matches only once its token is cleared). The form also keeps
    /// what is not hashed, the order of services and of each service's
    /// hosts: two snapshots that differ only in that order are one version
    /// with different JSON bytes, so name snapshots by this version, never
    /// by a digest of the bytes.
    pub fn of(config: &Config) -> Version {
        Version(Sha256::digest(canonical(config).as_bytes()).into())
    }

    /// Six hex digits, as Interlock prints versions (`updatedVersion=3edc6f`).
    pub fn short(&self) -> String {
        hex(&self.0[..3])
    }

    /// The whole digest in hex.
    pub fn full(&self) -> String {
        hex(&self.0)
    }
}

/// Displays the first 12 hex digits: unique enough to name a version in
/// logs and APIs, and it starts with [`Version::short`].
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0[..6]))
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({self})")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A rendering with every field spelt out (the derived `Debug` forms, which
/// are deterministic); services and hosts are sorted because their order
/// carries no meaning. Upstream order is kept: it is the round-robin order.
/// Referenced files count by their content digest.
fn canonical(config: &Config) -> String {
    let mut out = format!("{:?}\n", config.proxy);
    if let Some(admin) = &config.admin {
        // A token change is a real change; the text is only hashed, never shown.
        let _ = writeln!(out, "{admin:?}");
    }
    if let Some(docker) = &config.docker {
        let _ = writeln!(out, "{docker:?}");
    }
    let mut services: Vec<_> = config.services.iter().collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    for s in services {
        let mut s = s.clone();
        s.hosts.sort();
        let _ = writeln!(out, "{s:?}");
    }
    for (path, data) in &config.files {
        match data {
            Ok(bytes) => {
                let _ = writeln!(out, "file {path:?} {}", hex(&Sha256::digest(bytes)));
            }
            Err(e) => {
                let _ = writeln!(out, "file {path:?} unreadable: {e}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::of(&Config::parse(text, "t").unwrap())
    }

    #[test]
    fn meaning_not_formatting_decides_the_version() {
        let a = v("[[service]]\nname = \"a\"\nhosts = [\"x.test\", \"y.test\"]\nupstreams = [\"127.0.0.1:1\"]\n[[service]]\nname = \"b\"\nhosts = [\"z.test\"]\n");
        let same = v("# comment\n[[service]]\nname = \"b\"\nhosts = [\"Z.test\"]\n\n[[service]]\nname=\"a\"\nhosts=[\"y.test\",\"x.test\"]\nupstreams=[\"127.0.0.1:1\"]\n");
        assert_eq!(a, same);
        let other = v("[[service]]\nname = \"a\"\nhosts = [\"x.test\", \"y.test\"]\nupstreams = [\"127.0.0.1:2\"]\n[[service]]\nname = \"b\"\nhosts = [\"z.test\"]\n");
        assert_ne!(a, other);
        // A referenced file's content is part of the version.
        let mut with_file = Config::parse("", "t").unwrap();
        with_file
            .files
            .insert("c.pem".into(), Ok(b"one".to_vec().into()));
        let before = Version::of(&with_file);
        with_file
            .files
            .insert("c.pem".into(), Ok(b"two".to_vec().into()));
        assert_ne!(before, Version::of(&with_file));
        assert_eq!(a.short().len(), 6);
        assert!(a.to_string().starts_with(&a.short()));
        assert_eq!(a.full().len(), 64);
    }
}
