//! The controller's admin API (`[admin]` in `portico controller run`'s
//! config): who has what. Served by `admin::serve`, so with the same token
//! rules as a proxy's.
//!
//! - `GET /proxies`: each service cluster's published version and how many
//!   of its proxies serve it; every connected proxy (id, stream address,
//!   service cluster, applied version and where that stands, last NACK,
//!   connected since, last heartbeat, where it serves traffic, its admin
//!   API); the proxies that left in the last hour, and why.
//! - `GET /metrics`: the same as figures, with the providers' and the
//!   process's.
//! - `GET /`: the same as a page.
//! - `GET /health`: up, with counts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use portico_cluster::Controller as ClusterController;
use portico_model::Version;
use portico_trace::api::{ControllerHealth, ListedProxy, Proxies, PublishedCluster};

use crate::admin::{self, Api, Resp};
use crate::metrics::Metrics;
use crate::status;

/// What the controller's admin API reads.
pub struct ControllerAdmin {
    pub cluster: ClusterController,
    pub metrics: Arc<Metrics>,
    /// Where proxies hold their streams.
    pub listen: SocketAddr,
    /// The Docker provider is configured.
    pub docker: bool,
}

impl Api for ControllerAdmin {
    async fn handle(&self, req: Request<Incoming>, started: Instant) -> Resp {
        match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/") => self.page(started),
            (&Method::GET | &Method::HEAD, "/proxies") => admin::ok(&proxies(&self.cluster)),
            (&Method::GET | &Method::HEAD, "/metrics") => admin::metrics(&self.metrics, &req),
            (&Method::GET | &Method::HEAD, "/health") => admin::ok(&self.health(started)),
            (_, "/" | "/proxies" | "/metrics" | "/health") => admin::not_allowed("GET"),
            _ => admin::error(
                StatusCode::NOT_FOUND,
                "no such endpoint on a controller: try / (the status page), /proxies, /metrics \
                 or /health (routes and config versions are on each proxy's admin API)",
            ),
        }
    }
}

impl ControllerAdmin {
    fn health(&self, started: Instant) -> ControllerHealth {
        ControllerHealth {
            status: "ok".to_owned(),
            role: "controller".to_owned(),
            server_info: crate::SERVER_INFO.to_owned(),
            listen: self.listen,
            proxies: self.cluster.proxies().len(),
            service_clusters: self.cluster.published().len(),
            uptime_seconds: started.elapsed().as_secs(),
        }
    }

    fn page(&self, started: Instant) -> Resp {
        let docker = self.docker.then(|| status::DockerState {
            stats: self.metrics.docker.get(),
            findings: self.metrics.docker.findings(),
        });
        let name = gethostname::gethostname().to_string_lossy().into_owned();
        admin::html(status::controller_page(&status::ControllerContext {
            started,
            server_info: crate::SERVER_INFO,
            name: &name,
            listen: self.listen,
            proxies: &proxies(&self.cluster),
            docker,
        }))
    }
}

/// The `/proxies` document: one reading of the controller's state, so that
/// the clusters' counts agree with the list.
pub fn proxies(cluster: &ClusterController) -> Proxies {
    let published = cluster.published();
    let version = |name: &str| published.iter().find(|(c, _)| c == name).map(|(_, v)| v);
    let proxies: Vec<ListedProxy> = cluster
        .proxies()
        .into_iter()
        .map(|status| ListedProxy {
            state: status.sync(version(&status.service_cluster)),
            status,
        })
        .collect();
    Proxies {
        clusters: published
            .iter()
            .map(|(name, v)| published_cluster(name, v, &proxies))
            .collect(),
        proxies,
        departed: cluster.departed(),
    }
}

fn published_cluster(name: &str, version: &Version, proxies: &[ListedProxy]) -> PublishedCluster {
    let mine = proxies.iter().filter(|p| p.status.service_cluster == name);
    PublishedCluster {
        service_cluster: name.to_owned(),
        version: version.to_string(),
        version_full: version.full(),
        proxies: mine.clone().count(),
        current: mine
            .filter(|p| p.state == portico_cluster::SyncState::Current)
            .count(),
    }
}
