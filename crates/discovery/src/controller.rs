//! Turns configs offered by providers into versions, once per real change.

use std::collections::BTreeSet;
use std::sync::Arc;

use portico_model::{Config, RoutingTable, Version};

/// Remembers the version in force and what has already been reported.
#[derive(Default)]
pub struct Controller {
    current: Option<Version>,
    /// Hosts shared by several services, as already logged, so each sharing
    /// is reported once rather than on every version.
    shared_logged: BTreeSet<(String, Vec<String>)>,
}

impl Controller {
    pub fn new() -> Controller {
        Controller::default()
    }

    pub fn current(&self) -> Option<Version> {
        self.current
    }

    /// Offers a config. Returns it with its version when it differs from the
    /// one in force (and logs the update); returns `None` when nothing changed.
    pub fn offer(&mut self, config: Config) -> Option<(Arc<Config>, Version)> {
        let version = Version::of(&config);
        if self.current == Some(version) {
            tracing::debug!(version = %version, "config unchanged");
            return None;
        }
        let current = self.current.map(|v| v.short()).unwrap_or_default();
        tracing::info!(currentVersion = %current, updatedVersion = %version.short(), "update detected");
        self.log_shared_hosts(&config);
        self.current = Some(version);
        Some((Arc::new(config), version))
    }

    fn log_shared_hosts(&mut self, config: &Config) {
        let table = RoutingTable::build(config);
        let now: BTreeSet<(String, Vec<String>)> = table
            .shared_hosts()
            .map(|(h, s)| (h.to_string(), s.to_vec()))
            .collect();
        for (host, services) in now.difference(&self.shared_logged) {
            tracing::info!(
                host = %host,
                services = %services.join(","),
                "services share a host; requests are balanced over all their upstreams"
            );
        }
        self.shared_logged = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_configs_are_not_versions() {
        let mut c = Controller::new();
        let a = Config::parse("[[service]]\nname=\"a\"\nhosts=[\"a.test\"]\n", "t").unwrap();
        let a_again = Config::parse(
            "# same\n[[service]]\nname = \"a\"\nhosts = [\"A.test\"]\n",
            "t",
        )
        .unwrap();
        let b = Config::parse("[[service]]\nname=\"b\"\nhosts=[\"a.test\"]\n", "t").unwrap();
        let (_, v1) = c.offer(a).expect("first config is an update");
        assert!(c.offer(a_again).is_none());
        let (_, v2) = c.offer(b).expect("a real change is an update");
        assert_ne!(v1, v2);
        assert_eq!(c.current(), Some(v2));
    }
}
