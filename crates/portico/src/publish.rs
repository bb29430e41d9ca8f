//! How `portico controller run` hands a merged config to its proxies:
//! split by service cluster (`com.docker.lb.service_cluster`, or
//! `service_cluster` in the file), each cluster published on its own, so
//! that a change in one cluster sends nothing to the proxies of another.
//!
//! A cluster is published when a service names it, when it was published
//! before (its services gone, its proxies get a config without them), or
//! when a proxy announces it (a cluster with no services yet: its proxies
//! get the global settings and no routes, rather than waiting for one).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use portico_cluster::Controller as ClusterController;
use portico_model::Config;
use tokio_util::sync::CancellationToken;

use crate::history::Source;
use crate::metrics::Outcome;

/// The latest merged config and the clusters it has been published to.
pub struct Publisher {
    cluster: ClusterController,
    state: Mutex<State>,
}

struct State {
    latest: Arc<Config>,
    published: BTreeSet<String>,
}

impl Publisher {
    pub fn new(cluster: ClusterController) -> Arc<Publisher> {
        Arc::new(Publisher {
            cluster,
            state: Mutex::new(State {
                latest: Arc::new(Config::default()),
                published: BTreeSet::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain data, consistent field by field: a panic elsewhere must not
        // stop publishing.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `config` to every cluster it names, and to those
    /// published before or announced by a connected proxy. `Applied` when
    /// any cluster got a new version; `Rejected` when one could not be
    /// published (the others still are: one cluster's oversized snapshot
    /// must not freeze the rest).
    pub fn publish(&self, config: Config, source: Source) -> Outcome {
        let mut state = self.lock();
        state.latest = Arc::new(config);
        let mut names: BTreeSet<String> = state
            .latest
            .service_clusters()
            .into_iter()
            .map(str::to_owned)
            .collect();
        names.extend(state.published.iter().cloned());
        names.extend(self.announced());
        let mut outcome = Outcome::Unchanged;
        for name in names {
            match self.publish_one(&mut state, &name, source.as_str()) {
                Outcome::Unchanged => {}
                Outcome::Applied if outcome == Outcome::Unchanged => outcome = Outcome::Applied,
                Outcome::Applied => {}
                Outcome::Rejected => outcome = Outcome::Rejected,
            }
        }
        outcome
    }

    /// Clusters that connected proxies serve.
    fn announced(&self) -> BTreeSet<String> {
        self.cluster
            .proxies()
            .into_iter()
            .map(|p| p.service_cluster)
            .collect()
    }

    /// `source`: what caused it, for the log.
    fn publish_one(&self, state: &mut State, name: &str, source: &str) -> Outcome {
        let before = self.cluster.current(name);
        let config = Arc::new(state.latest.for_service_cluster(name));
        match self.cluster.publish(name, config) {
            Ok(v) => {
                state.published.insert(name.to_owned());
                if Some(v) == before {
                    Outcome::Unchanged
                } else {
                    tracing::info!(
                        service_cluster = name,
                        version = %v,
                        source,
                        "new version"
                    );
                    Outcome::Applied
                }
            }
            Err(e) => {
                tracing::error!(
                    service_cluster = name,
                    error = %e,
                    "not published; the cluster's proxies keep the version in force"
                );
                Outcome::Rejected
            }
        }
    }

    /// Until `shutdown`: whenever a proxy announces a cluster nothing was
    /// published to, publishes the latest config's share of it (no
    /// services, the global settings), so the proxy is not left waiting.
    pub async fn serve_newcomers(self: Arc<Self>, shutdown: CancellationToken) {
        let mut changes = self.cluster.watch_proxies();
        loop {
            let new: Vec<String> = {
                let state = self.lock();
                self.announced()
                    .into_iter()
                    .filter(|c| !state.published.contains(c))
                    .collect()
            };
            if !new.is_empty() {
                let mut state = self.lock();
                for name in new {
                    // Often a typo in --service-cluster: such a proxy
                    // routes nothing.
                    tracing::warn!(
                        service_cluster = %name,
                        "a proxy serves a service cluster no service names (yet): it gets no routes"
                    );
                    self.publish_one(&mut state, &name, "proxy");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
        }
    }
}
