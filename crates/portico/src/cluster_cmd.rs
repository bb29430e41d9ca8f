//! Cluster mode's two roles in the binary: `portico controller run` (the
//! providers, publishing each merged config to its proxies; no data-plane
//! listener; with `[admin]`, an admin API listing its proxies, see
//! `controller_admin`) and `portico proxy` (serves traffic with the
//! controller's snapshots, merged with its own `[proxy]` and `[admin]`;
//! boots from its last good snapshot when the controller is away; tells
//! the controller where it serves traffic and its admin API). The work is
//! done by `portico_cluster`; this is wiring.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use portico_cluster::ca::{ClusterCa, CA_CERT_FILE, CA_KEY_FILE};
use portico_cluster::{
    Controller as ClusterController, ControllerOptions, ControllerState, Endpoint, Enrollment,
    JoinToken, ProxyClient, ProxyId,
};
use portico_discovery::{file, Controller};
use portico_model::rules::DEFAULT_SERVICE_CLUSTER;
use portico_model::{Config, Version};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::controller_admin::ControllerAdmin;
use crate::controller_cmd::TOKEN_FILE;
use crate::history::Source;
use crate::metrics::{Metrics, Outcome};
use crate::publish::Publisher;
use crate::{handle_signals, providers, start, SERVER_INFO};

/// `portico proxy`'s arguments.
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// The controller's stream address, HOST:PORT (an `https://` prefix is
    /// accepted); HOST is also the name its certificate must carry.
    #[arg(long, value_name = "HOST:PORT")]
    controller: String,
    /// The join token (`portico controller token`), e.g. a Docker secret.
    #[arg(long, value_name = "FILE")]
    join_token_file: PathBuf,
    /// Where the proxy keeps its certificate and its last good snapshot.
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// The proxy's own settings: only `[proxy]` and `[admin]`.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The service cluster whose routes this proxy serves.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_SERVICE_CLUSTER)]
    service_cluster: String,
    /// The proxy's id (default: `[proxy] proxy_id`, else the host name).
    #[arg(long, value_name = "ID")]
    proxy_id: Option<String>,
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..), help = crate::WORKERS_HELP)]
    pub workers: Option<u16>,
}

fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// The absolute directory of a config file: what its relative paths are
/// relative to.
fn dir_of(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// `portico controller run --config FILE`.
pub async fn controller_run(path: PathBuf) -> anyhow::Result<()> {
    tracing::info!(version = SERVER_INFO, "portico controller");
    let file_config = file::load(&path).map_err(|e| anyhow!("{e}"))?;
    let Some(settings) = file_config.controller.clone() else {
        bail!(
            "{}: no [controller] table: `portico controller run` needs one, with at least \
             listen = \"IP:PORT\"",
            path.display()
        );
    };
    let config_dir = dir_of(&path);
    let state_dir = match &settings.state_dir {
        Some(d) => config_dir.join(d),
        None => config_dir.clone(),
    };
    for name in [CA_CERT_FILE, CA_KEY_FILE, TOKEN_FILE] {
        let file = state_dir.join(name);
        if !file.exists() {
            bail!(
                "{} is missing: create the cluster's credentials with `portico controller init \
                 --state-dir {}` (or mount them as secrets there)",
                file.display(),
                state_dir.display()
            );
        }
    }
    let ca = ClusterCa::load(&state_dir)
        .with_context(|| format!("loading the cluster CA from {}", state_dir.display()))?;
    let token_path = state_dir.join(TOKEN_FILE);
    let token = JoinToken::read_file(&token_path)
        .with_context(|| format!("reading {}", token_path.display()))?;
    let server_names = if settings.server_names.is_empty() {
        vec![hostname()]
    } else {
        settings.server_names.clone()
    };
    let state = ControllerState::new(Arc::new(ca), token, &server_names)?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} (controller.listen)", settings.listen))?;

    let shutdown = CancellationToken::new();
    let reload = Arc::new(Notify::new());
    handle_signals(shutdown.clone(), reload.clone())?;
    let proxy_networks = providers::controller_proxy_networks(&settings);
    let (provider, docker_view) = match &file_config.docker {
        Some(d) => providers::first_docker_view(d, &proxy_networks).await,
        None => (None, Default::default()),
    };
    let cluster = ClusterController::new(ControllerOptions::default());
    let first = providers::merged(&file_config, &docker_view, &mut Vec::new());
    let publisher = Publisher::new(cluster.clone());
    if publisher.publish(first, Source::File) == Outcome::Rejected {
        bail!("the first config could not be published (see the error above)");
    }
    tracing::info!(
        listen = %listener.local_addr()?,
        server_names = %server_names.join(","),
        "starting controller"
    );
    // The controller's own admin API: who has what. The table is the
    // controller's (never sent to proxies), its token checked as a proxy's.
    let metrics = Arc::new(Metrics::controller(cluster.clone()));
    if let Some(admin_settings) = &file_config.admin {
        let api = Arc::new(ControllerAdmin {
            cluster: cluster.clone(),
            metrics: metrics.clone(),
            listen: listener.local_addr()?,
            docker: file_config.docker.is_some(),
        });
        admin::start(api, admin_settings, shutdown.clone()).await?;
    }
    tokio::spawn(publisher.clone().serve_newcomers(shutdown.clone()));
    let watcher = providers::spawn(
        path,
        file_config,
        (provider, proxy_networks),
        docker_view,
        Some(metrics),
        reload,
        shutdown.clone(),
        move |config, source| publisher.publish(config, source),
    );
    cluster.serve(listener, state, shutdown.clone()).await?;
    shutdown.cancel();
    watcher.await.context("watcher task")??;
    tracing::info!("stopped");
    Ok(())
}

/// A proxy's config: the controller's services and files, with the
/// proxy's own `[proxy]` and `[admin]` (and its own files, e.g. a default
/// certificate).
fn merge(local: &Config, snapshot: &Config) -> Config {
    let mut files = local.files.clone();
    files.extend(snapshot.files.iter().map(|(k, v)| (k.clone(), v.clone())));
    Config {
        proxy: local.proxy.clone(),
        admin: local.admin.clone(),
        docker: None,
        controller: None,
        services: snapshot.services.clone(),
        files,
    }
}

/// Whether the proxy can serve `config`: the rules a file is checked with
/// hold for the merged whole, and its certificates load.
fn usable(config: &Config) -> Result<(), String> {
    // The admin table is the proxy's own, already checked (and its token
    // never crosses the wire form this check goes through).
    let without_admin = Config {
        admin: None,
        ..config.clone()
    };
    Config::from_json(
        &without_admin.to_json(),
        "snapshot merged with the local config",
    )
    .map_err(|e| e.to_string().replace('\n', "; "))?;
    let (problems, _) = portico_proxy::tls::check_certificates(config);
    if !problems.is_empty() {
        let all: Vec<String> = problems
            .iter()
            .map(|p| format!("service {}: {}", p.owner, p.message))
            .collect();
        return Err(all.join("; "));
    }
    Ok(())
}

/// `HOST:PORT` (or `https://HOST:PORT`) → (the address to dial, HOST).
fn controller_address(arg: &str) -> anyhow::Result<(String, String)> {
    let addr = arg
        .strip_prefix("https://")
        .unwrap_or(arg)
        .trim_end_matches('/');
    let Some((host, port)) = addr.rsplit_once(':') else {
        bail!("--controller {arg:?}: expected HOST:PORT");
    };
    if port.parse::<u16>().is_err() || host.is_empty() {
        bail!("--controller {arg:?}: expected HOST:PORT");
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((addr.to_owned(), host.to_owned()))
}

/// `portico proxy`.
pub async fn proxy(args: ProxyArgs, workers: usize) -> anyhow::Result<()> {
    tracing::info!(version = SERVER_INFO, "portico proxy");
    let (mut local, config_dir) = match &args.config {
        Some(path) => {
            let c = file::load(path).map_err(|e| anyhow!("{e}"))?;
            if !c.services.is_empty() {
                bail!(
                    "{}: {} service(s) here, but a proxy's config holds only [proxy] and \
                     [admin]: services come from the controller (move them to its config)",
                    path.display(),
                    c.services.len()
                );
            }
            if c.docker.is_some() {
                bail!(
                    "{}: [docker] belongs in the controller's config: a proxy has no providers",
                    path.display()
                );
            }
            if c.controller.is_some() {
                bail!(
                    "{}: [controller] belongs in the controller's config",
                    path.display()
                );
            }
            (c, Some(dir_of(path)))
        }
        None => (Config::default(), None),
    };
    let (address, server_name) = controller_address(&args.controller)?;
    let token = JoinToken::read_file(&args.join_token_file)
        .with_context(|| format!("reading {}", args.join_token_file.display()))?;
    let id = args
        .proxy_id
        .clone()
        .or_else(|| local.proxy.proxy_id.clone())
        .unwrap_or_else(hostname);
    let proxy_id = ProxyId::new(id.clone()).map_err(|e| anyhow!("proxy id {id:?}: {e}"))?;
    // The id the controller lists is the one `x-proxy-id` says, so that a
    // trace through this proxy can tell it answered.
    local.proxy.proxy_id = Some(id);

    let last_good = match ProxyClient::last_good(&args.state_dir) {
        Ok(last) => last,
        Err(e) => {
            tracing::warn!(error = %e, "the last good snapshot does not load; waiting for the controller");
            None
        }
    };
    let (first, applied) = match &last_good {
        Some((snapshot, version)) => {
            let merged = merge(&local, snapshot);
            match usable(&merged) {
                Ok(()) => {
                    tracing::info!(
                        version = %version,
                        services = merged.services.len(),
                        "serving the last good snapshot until the controller answers"
                    );
                    (merged, Some(*version))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the last good snapshot is not usable here; waiting for the controller");
                    (local.clone(), None)
                }
            }
        }
        None => (local.clone(), None),
    };

    let shutdown = CancellationToken::new();
    handle_signals(shutdown.clone(), Arc::new(Notify::new()))?;
    let mut controller = Controller::new();
    let running = start(
        first,
        config_dir,
        &mut controller,
        Source::Controller,
        shutdown.clone(),
        workers,
    )
    .await?;

    let client = ProxyClient::new(
        address.clone(),
        server_name,
        args.state_dir.clone(),
        Enrollment::Token(token),
        proxy_id,
        args.service_cluster.clone(),
    )
    .with_applied(applied)
    .with_endpoints(
        std::iter::once(Endpoint::http(running.local))
            .chain(running.https.map(Endpoint::https))
            .collect(),
        running.admin.map(Endpoint::http),
    );
    running.metrics.link.set(client.status());
    if applied.is_none() {
        // Nothing to route until the controller answers: `health_uri` says
        // so, so that a load balancer does not send traffic here yet.
        running.proxy.set_ready(false);
    }
    let ready = running.proxy.clone();
    let mut apply_to_proxy =
        providers::apply_to_proxy(controller, running.proxy.clone(), running.history.clone());
    let metrics = running.metrics.clone();
    let apply = move |snapshot: Config, version: Version| {
        let merged = merge(&local, &snapshot);
        if let Err(reason) = usable(&merged) {
            tracing::error!(version = %version, error = %reason, "snapshot rejected; the version in force stays");
            metrics
                .reloads
                .record(Source::Controller, Outcome::Rejected);
            return Err(reason);
        }
        let outcome = apply_to_proxy(merged, Source::Controller);
        ready.set_ready(true);
        metrics.reloads.record(Source::Controller, outcome);
        tracing::info!(version = %version, "applied the controller's snapshot");
        Ok(())
    };
    tracing::info!(controller = %address, cluster = %args.service_cluster, "connecting to the controller");
    let link_shutdown = shutdown.clone();
    // The stream lives while the proxy serves: through `drain_delay` too,
    // so the controller does not list a draining proxy as gone (and it
    // still gets changes meanwhile).
    let link_stop = running.serving.clone();
    let link = tokio::spawn(async move {
        let result = client.run(apply, link_stop).await;
        if let Err(e) = &result {
            // Retrying cannot fix it (a refused join, say): stop, loudly.
            tracing::error!(error = %e, "the link to the controller gave up");
            link_shutdown.cancel();
        }
        result
    });
    running.task.await.context("proxy task")??;
    shutdown.cancel();
    link.await.context("controller link task")??;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_addresses() {
        let (a, h) = controller_address("https://ctl.example:7443").unwrap();
        assert_eq!(
            (a.as_str(), h.as_str()),
            ("ctl.example:7443", "ctl.example")
        );
        let (a, h) = controller_address("127.0.0.1:7443").unwrap();
        assert_eq!((a.as_str(), h.as_str()), ("127.0.0.1:7443", "127.0.0.1"));
        let (_, h) = controller_address("[::1]:7443").unwrap();
        assert_eq!(h, "::1");
        assert!(controller_address("ctl.example").is_err());
        assert!(controller_address(":7443").is_err());
    }
}
