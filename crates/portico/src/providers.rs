//! Wiring of the providers to the proxy: the file and (when configured)
//! Docker providers each report what they see; their latest reports are
//! merged, versioned by the controller, and applied to the proxy. Also
//! `portico check --docker`.

use std::sync::Arc;

use portico_discovery::docker::{self, DockerProvider, DockerView, ProxyNetworks};
use portico_discovery::{file, Controller};
use portico_model::labels::{Finding, Severity};
use portico_model::{Config, ControllerSettings, DockerSettings};
use portico_proxy::Proxy;
use tokio::sync::{mpsc, Notify};

use crate::history::{History, Source};
use crate::metrics::{Metrics, Outcome};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

enum Update {
    File(Box<Config>),
    /// The file changed and does not load: the version in force stays.
    FileRejected,
    Docker(DockerView),
}

/// The first Docker view, read before the proxy starts so that it serves
/// Docker routes from its first request. A missing engine is not fatal:
/// the provider keeps trying in the background. `proxies`: where the
/// proxies that route its services run.
pub async fn first_docker_view(
    settings: &DockerSettings,
    proxies: &ProxyNetworks,
) -> (Option<DockerProvider>, DockerView) {
    match DockerProvider::connect(settings.clone()).await {
        Ok(mut provider) => {
            provider.set_proxy_networks(proxies.clone());
            match provider.sync().await {
                Ok(view) => (Some(provider), view),
                Err(e) => {
                    tracing::warn!(error = %e, "first Docker sync failed; retrying");
                    (Some(provider), DockerView::default())
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot reach the Docker engine; serving the file's routes and retrying");
            (None, DockerView::default())
        }
    }
}

/// Where a controller's proxies are, by its `[controller]` table: the
/// controller routes nothing itself, so its own networks say nothing.
pub fn controller_proxy_networks(settings: &ControllerSettings) -> ProxyNetworks {
    if settings.proxy_networks.is_empty() {
        ProxyNetworks::Unknown
    } else {
        ProxyNetworks::Declared(settings.proxy_networks.iter().cloned().collect())
    }
}

/// Merges the file's config with a Docker view, logging merge findings
/// that are new since `logged`.
pub fn merged(file: &Config, docker: &DockerView, logged: &mut Vec<Finding>) -> Config {
    let (config, findings) = docker::merge(file, docker);
    for f in findings.iter().filter(|f| !logged.contains(f)) {
        tracing::error!(service = %f.workload, label = %f.label, error = %f.message, "service skipped");
    }
    *logged = findings;
    config
}

/// Runs the providers until `shutdown`, handing every merged config to
/// `apply` (which says what became of it: `portico run` versions and
/// applies it to its proxy, `portico controller run` publishes it).
/// `metrics`, when there are some, count the outcomes. `proxies` is as
/// for [`first_docker_view`], for a provider connected later.
#[allow(clippy::too_many_arguments)]
pub fn spawn<F>(
    path: std::path::PathBuf,
    mut file_config: Config,
    (provider, proxies): (Option<DockerProvider>, ProxyNetworks),
    mut docker_view: DockerView,
    metrics: Option<Arc<Metrics>>,
    reload: Arc<Notify>,
    shutdown: CancellationToken,
    mut apply: F,
) -> JoinHandle<Result<(), notify::Error>>
where
    F: FnMut(Config, Source) -> Outcome + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Some(settings) = file_config.docker.clone() {
        let (tx, shutdown) = (tx.clone(), shutdown.clone());
        let slot = metrics.as_ref().map(|m| m.docker.clone());
        tokio::spawn(async move {
            let provider = match provider {
                Some(p) => p,
                None => loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(settings.poll_interval) => {}
                    }
                    if let Ok(mut p) = DockerProvider::connect(settings.clone()).await {
                        p.set_proxy_networks(proxies);
                        break p;
                    }
                },
            };
            if let Some(slot) = slot {
                slot.set(provider.stats());
            }
            docker::watch(provider, shutdown, move |view| {
                let _ = tx.send(Update::Docker(view));
            })
            .await;
        });
    }
    let file_tx = tx;
    let watcher = tokio::spawn(file::watch(path, reload, shutdown.clone(), move |loaded| {
        let _ = file_tx.send(match loaded {
            Ok(config) => Update::File(Box::new(config)),
            Err(_) => Update::FileRejected,
        });
    }));
    tokio::spawn(async move {
        let mut logged = Vec::new();
        while let Some(update) = rx.recv().await {
            let source = match update {
                Update::File(c) => {
                    if c.docker != file_config.docker {
                        tracing::warn!(
                            "[docker] settings changed; they take effect after a restart"
                        );
                    }
                    file_config = *c;
                    Source::File
                }
                Update::FileRejected => {
                    if let Some(m) = &metrics {
                        m.reloads.record(Source::File, Outcome::Rejected);
                    }
                    continue;
                }
                Update::Docker(v) => {
                    docker_view = v;
                    Source::Docker
                }
            };
            let config = merged(&file_config, &docker_view, &mut logged);
            if let Some(m) = &metrics {
                m.docker.set_findings(
                    docker_view
                        .findings
                        .iter()
                        .chain(&logged)
                        .map(|f| format!("{}: {}: {}", f.workload, f.label, f.message))
                        .collect(),
                );
            }
            let outcome = apply(config, source);
            if let Some(m) = &metrics {
                m.reloads.record(source, outcome);
            }
        }
    });
    watcher
}

/// `portico run`'s way to apply a merged config: version it, record it in
/// the history, and apply it to the proxy.
pub fn apply_to_proxy(
    mut controller: Controller,
    proxy: Arc<Proxy>,
    history: Arc<History>,
) -> impl FnMut(Config, Source) -> Outcome + Send + 'static {
    move |config, source| match controller.offer(config) {
        Some((config, version)) => {
            // Recorded first, so every version the proxy serves can be
            // looked up in the history.
            history.record(version, config.clone(), source);
            proxy.apply(config, version);
            Outcome::Applied
        }
        None => Outcome::Unchanged,
    }
}

/// `portico check --docker`: every finding about the engine's labelled
/// services and containers, as a table. Returns whether there were none.
pub async fn check_docker(
    settings: DockerSettings,
    proxies: ProxyNetworks,
) -> anyhow::Result<bool> {
    let mut provider = DockerProvider::connect(DockerSettings {
        // A check only reads: it never attaches networks.
        attach_networks: false,
        ..settings
    })
    .await?;
    let declared = proxies != ProxyNetworks::Own;
    provider.set_proxy_networks(proxies);
    let view = provider.sync().await?;
    let outside = !declared && !provider.in_container();
    let findings = &view.findings;
    let routed: Vec<&str> = view.services.iter().map(|s| s.name.as_str()).collect();
    println!("{} service(s) routed: {}", routed.len(), routed.join(", "));
    // Left out by [docker] exposed_by_default or constraints: as asked,
    // not a problem.
    for (workload, reason) in &view.excluded {
        println!("not routed: {workload}: {reason}");
    }
    if findings.is_empty() {
        println!("no problems found");
        return Ok(true);
    }
    let w1 = findings
        .iter()
        .map(|f| f.workload.len())
        .max()
        .unwrap_or(0)
        .max(7);
    let w2 = findings
        .iter()
        .map(|f| f.label.len())
        .max()
        .unwrap_or(0)
        .max(5);
    println!(
        "{:<w1$}  {:<w2$}  {:<8}  PROBLEM",
        "SERVICE", "LABEL", "SEVERITY"
    );
    for f in findings {
        let label = if f.label.is_empty() { "-" } else { &f.label };
        println!(
            "{:<w1$}  {:<w2$}  {:<8}  {}",
            f.workload,
            label,
            f.severity.to_string(),
            f.message
        );
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    println!(
        "{} problem(s): {errors} error(s), {} warning(s)",
        findings.len(),
        findings.len() - errors
    );
    let network = format!("{}network", portico_model::labels::PREFIX);
    if outside && findings.iter().any(|f| f.label == network) {
        // Reachability is the checking process's own: from the host,
        // overlay networks are out of reach however well the proxy does.
        println!(
            "note: this check ran outside Portico's container, so it could not reach overlay \
             networks, and says so of every service on one; run it where Portico runs: \
             docker exec $(docker ps -q -f label=com.docker.swarm.service.name=portico_portico \
             | head -n1) /portico check --docker --config /etc/portico/portico.toml"
        );
    }
    Ok(false)
}
