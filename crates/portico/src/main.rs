//! The `portico` binary: command line, logging and the wiring of providers,
//! controller and proxy. Thin by design: the work happens in the crates.
//!
//! # Layout
//! - `main.rs`: the CLI (`run`, `demo`, `check`, `health`) and process
//!   lifecycle (signals, reload, draining, graceful shutdown).
//! - `logging`: Interlock-style logfmt (or JSON) log lines.
//! - `demo`: the built-in echo replicas behind `portico demo`.
//! - `admin`: the admin API (`[admin]`): health, routes, config and its
//!   history, probes.
//! - `history`: the last applied config versions, with their diffs.
//! - `metrics`: `/metrics`: the proxy's, the providers' and the process's
//!   counters in Prometheus' text format.
//! - `status`: `/`, the status page: routes and health, recent errors,
//!   config versions, certificates, the Docker provider.
//! - `nginx`: a config version rendered as an nginx.conf.
//! - `trace_cmd`: `portico trace`, the hop-by-hop functional test.
//! - `config_cmd`: `portico config list|show|diff|render`, over the admin API.
//! - `controller_cmd`: `portico controller init|token`, cluster mode's CA
//!   and join token.
//! - `cluster_cmd`: cluster mode's roles, `portico controller run` and
//!   `portico proxy`.
//! - `controller_admin`: the controller's admin API (`[admin]` in its
//!   config): its proxies, their versions and NACKs, as JSON, metrics and
//!   a page.
//! - `publish`: the controller's publishing: each service cluster gets its
//!   share of the merged config.
//! - `providers`: the file and Docker providers wired to an apply callback
//!   (the proxy's in `run`, the publisher's in `controller run`), and
//!   `portico check --docker`.
#![forbid(unsafe_code)]

mod admin;
mod cluster_cmd;
mod config_cmd;
mod controller_admin;
mod controller_cmd;
mod demo;
mod history;
mod logging;
mod metrics;
mod nginx;
mod providers;
mod publish;
mod status;
mod trace_cmd;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use portico_discovery::{docker, file, Controller};
use portico_model::Config;
use portico_proxy::{Identity, Proxy};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::history::{History, Source};
use crate::logging::LogFormat;
use crate::metrics::Metrics;
use portico_model::config::DEFAULT_CONFIG_HISTORY;

/// `portico/<version> (<git sha>) <os>/<arch>`: `--version` and `x-server-info`.
const SERVER_INFO: &str = env!("PORTICO_SERVER_INFO");

#[derive(Parser)]
#[command(
    name = "portico",
    about = "A Layer 7 load balancer for container clusters",
    disable_version_flag = true
)]
struct Cli {
    /// Print the version (the same string as the x-server-info header).
    #[arg(short = 'V', long)]
    version: bool,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "logfmt")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

/// `--workers`, for both commands that serve traffic.
pub(crate) const WORKERS_HELP: &str =
    "Worker threads serving connections, each with its own listeners (default: one per CPU)";

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a config file, reloading it when it changes or on SIGHUP.
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..), help = WORKERS_HELP)]
        workers: Option<u16>,
    },
    /// Run two built-in demo replicas behind the proxy, routing foo.app.test.
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Also serve the admin API here (loopback, no token), for `portico trace`.
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
    },
    /// Serve a tiny echo backend (its name, and the request it got), e.g. as a test service's image.
    Echo {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// The replica name it answers with (default: the hostname, a container's short id).
        #[arg(long)]
        name: Option<String>,
        /// Exit with status 1 after this long (e.g. "2s"): a crash-looping service for tests.
        #[arg(long, value_parser = humantime::parse_duration)]
        exit_after: Option<std::time::Duration>,
    },
    /// Validate a config file; list every problem and exit non-zero if any.
    Check {
        #[arg(short, long, value_name = "FILE", required_unless_present = "docker")]
        config: Option<PathBuf>,
        /// Also check the Docker engine's labelled services and containers
        /// (with the config's [docker] settings, else the defaults).
        #[arg(long)]
        docker: bool,
    },
    /// Ask the proxy's own health URI (`[proxy] health_uri`) on its HTTP
    /// listener; exit 0 on 200. For Docker's HEALTHCHECK: the image has no curl.
    Health {
        /// The proxy's config, for `http_listen` and `health_uri`.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// How long the whole check may take.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Check each hop to a service (route, tasks, proxies, LB, DNS, client) and name the first that fails.
    Trace(Box<trace_cmd::TraceArgs>),
    /// The proxy's applied config versions: list, show, diff, render as nginx.conf.
    Config(config_cmd::ConfigArgs),
    /// Cluster mode's controller: `init` makes the cluster CA and a join token, `token` prints it, `run` runs it.
    #[command(subcommand)]
    Controller(controller_cmd::ControllerCommand),
    /// Cluster mode's proxy: serves the routes a controller sends it.
    Proxy(Box<cluster_cmd::ProxyArgs>),
}

/// jemalloc, configured in `.cargo/config.toml` to hand freed memory back
/// to the system within a second or two, from a background thread even
/// when the process is idle. Measured: after a storm of 1,700 slow sockets
/// (16 KiB partial heads, then closed), glibc's malloc kept 44.6 MiB of its
/// 47 MiB peak for good (idle before: 9.9 MiB), mimalloc 77 MiB (idle
/// 21 MiB); jemalloc fell from 46.8 to 12.3 MiB within 10 s (idle 11.1).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("{SERVER_INFO}");
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        eprintln!("portico: a command is required (run, demo or check); see `portico --help`");
        return ExitCode::from(2);
    };
    if let Command::Check { config, docker } = &command {
        let mut ok = true;
        let mut settings = None;
        let mut proxies = docker::ProxyNetworks::Own;
        if let Some(config) = config {
            if check(config) != ExitCode::SUCCESS {
                ok = false;
            }
            let loaded = file::load(config).ok();
            if let Some(c) = loaded.as_ref().and_then(|c| c.controller.as_ref()) {
                proxies = providers::controller_proxy_networks(c);
            }
            settings = loaded.and_then(|c| c.docker);
        }
        if *docker {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let checked = runtime.map_err(anyhow::Error::from).and_then(|rt| {
                rt.block_on(providers::check_docker(
                    settings.unwrap_or_default(),
                    proxies,
                ))
            });
            match checked {
                Ok(clean) => ok &= clean,
                Err(e) => {
                    println!("docker: {e:#}");
                    ok = false;
                }
            }
        }
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let command = match command {
        Command::Health { config, timeout } => return health(&config, timeout),
        Command::Trace(args) => return trace_cmd::run(*args),
        Command::Config(args) => return config_cmd::run(args),
        Command::Controller(command)
            if !matches!(command, controller_cmd::ControllerCommand::Run { .. }) =>
        {
            return controller_cmd::run(command)
        }
        other => other,
    };
    logging::init(cli.log_format);
    // The proxies' data plane runs on worker threads of its own (see
    // `portico_proxy::workers`); this thread's runtime is the control
    // plane's: providers, reloads, the admin API, signals.
    let workers = match &command {
        Command::Run { workers, .. } => Some(*workers),
        Command::Proxy(args) => Some(args.workers),
        _ => None,
    };
    // Every command left runs a server. Before the proxy is built:
    // max_client_connections = "auto" is read from this limit.
    match portico_proxy::raise_descriptor_limit() {
        Ok((before, after)) if before != after => {
            tracing::info!(
                before,
                after,
                "raised the descriptor limit to its hard limit"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(
            limit = portico_proxy::descriptor_limit(),
            error = %e,
            "cannot raise the descriptor limit"
        ),
    }
    let mut builder = match workers {
        Some(_) => tokio::runtime::Builder::new_current_thread(),
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let workers = workers.flatten().map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portico: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Run { config, .. } => run(config, workers).await,
            Command::Controller(controller_cmd::ControllerCommand::Run { config }) => {
                cluster_cmd::controller_run(config).await
            }
            Command::Proxy(args) => cluster_cmd::proxy(*args, workers).await,
            Command::Demo { listen, admin } => demo(listen, admin).await,
            Command::Echo {
                listen,
                name,
                exit_after,
            } => echo(listen, name, exit_after).await,
            Command::Check { .. }
            | Command::Health { .. }
            | Command::Trace(_)
            | Command::Config(_)
            | Command::Controller(_) => {
                unreachable!("handled above")
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "portico stopped");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match file::load(path) {
        Ok(config) => {
            let (problems, expiring) = portico_proxy::tls::check_certificates(&config);
            for info in &expiring {
                println!(
                    "{}: warning: service {}: certificate {} expires on {}",
                    path.display(),
                    info.owner,
                    info.file,
                    humantime::format_rfc3339_seconds(info.not_after)
                );
            }
            if !problems.is_empty() {
                for p in &problems {
                    println!("{}: service {}: {}", path.display(), p.owner, p.message);
                }
                println!("{}: {} problem(s)", path.display(), problems.len());
                return ExitCode::FAILURE;
            }
            println!(
                "{}: ok: {} service(s), version {}",
                path.display(),
                config.services.len(),
                portico_model::Version::of(&config)
            );
            ExitCode::SUCCESS
        }
        Err(file::LoadError::Invalid(errors)) => {
            for e in &errors.0 {
                println!("{e}");
            }
            println!("{}: {} problem(s)", path.display(), errors.0.len());
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `portico health`: one GET of `health_uri` on the HTTP listener, as a
/// load balancer would send it.
fn health(path: &std::path::Path, timeout: std::time::Duration) -> ExitCode {
    let proxy = match file::load(path) {
        Ok(c) => c.proxy,
        Err(e) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(uri) = proxy.health_uri else {
        println!(
            "{}: no [proxy] health_uri to ask; set one, e.g. health_uri = \"/healthz\"",
            path.display()
        );
        return ExitCode::FAILURE;
    };
    let mut addr = proxy.http_listen;
    if addr.ip().is_unspecified() {
        // Listening everywhere: loopback is one of them.
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    match health_status(addr, &uri, proxy.http_proxy_protocol, timeout) {
        Ok(200) => {
            println!("healthy: http://{addr}{uri} answered 200");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("unhealthy: http://{addr}{uri} answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("unhealthy: http://{addr}{uri}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The status a GET of `uri` gets from `addr`, within `timeout`.
fn health_status(
    addr: SocketAddr,
    uri: &str,
    proxy_protocol: bool,
    timeout: std::time::Duration,
) -> std::io::Result<u16> {
    use std::io::{Read as _, Write as _};
    let deadline = std::time::Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))
    };
    let mut stream = std::net::TcpStream::connect_timeout(&addr, left()?)?;
    // UNKNOWN: a balancer's own check, which names no client.
    let preamble = if proxy_protocol {
        "PROXY UNKNOWN\r\n"
    } else {
        ""
    };
    stream.set_write_timeout(Some(left()?))?;
    write!(
        stream,
        "{preamble}GET {uri} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: portico-health\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        stream.set_read_timeout(Some(left()?))?;
        let n = stream.read(&mut buf)?;
        if n == 0 || head.len() > 8192 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    // "HTTP/1.1 200 OK"
    std::str::from_utf8(&head)
        .ok()
        .and_then(|h| h.strip_prefix("HTTP/1."))
        .and_then(|h| h.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP response"))
}

fn identity() -> Identity {
    Identity {
        server_info: SERVER_INFO.to_owned(),
        default_proxy_id: gethostname::gethostname().to_string_lossy().into_owned(),
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT; notifies `reload` on SIGHUP.
fn handle_signals(shutdown: CancellationToken, reload: Arc<Notify>) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        // The first SIGTERM or SIGINT starts a graceful stop; a second
        // skips what is left of `drain_delay` (an operator at a terminal
        // who does not want to wait); a third exits at once.
        let mut stops = 0;
        loop {
            let signal = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => {
                    reload.notify_one();
                    continue;
                }
            };
            stops += 1;
            match stops {
                1 => {
                    tracing::info!(signal, "shutting down");
                    shutdown.cancel();
                }
                2 => {
                    tracing::warn!(signal, "second stop signal: not waiting out drain_delay");
                    hurry().cancel();
                }
                _ => {
                    tracing::warn!(signal, "third stop signal: exiting now");
                    std::process::exit(130);
                }
            }
        }
    });
    Ok(())
}

/// Cancelled by a second stop signal: the process-wide "stop waiting"
/// (signals are process-wide too).
fn hurry() -> &'static CancellationToken {
    static HURRY: std::sync::OnceLock<CancellationToken> = std::sync::OnceLock::new();
    HURRY.get_or_init(CancellationToken::new)
}

/// The first step of a stop: when `shutdown` is cancelled (SIGTERM), the
/// proxy starts draining (its health URI answers 503) but keeps listening
/// for `drain_delay`, so that a load balancer's health checks take it out
/// before its ports close; the token returned is cancelled after that, and
/// the listeners then stop accepting and let in-flight requests finish.
fn drain_gate(proxy: Arc<Proxy>, shutdown: CancellationToken) -> CancellationToken {
    let serving = CancellationToken::new();
    let gate = serving.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        proxy.start_draining();
        let (delay, uri) = {
            let snap = proxy.snapshot();
            let p = &snap.config.proxy;
            (p.drain_delay, p.health_uri.clone())
        };
        if !delay.is_zero() {
            tracing::info!(
                drain_delay = %humantime::format_duration(delay),
                health_uri = uri.as_deref().unwrap_or("-"),
                "draining: the health URI answers 503; serving until drain_delay is over"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = hurry().cancelled() => {}
            }
        }
        gate.cancel();
    });
    serving
}

struct Running {
    proxy: Arc<Proxy>,
    /// Cancelled when the listeners stop (after `drain_delay`): what else
    /// should live as long as the proxy serves (a cluster proxy's stream,
    /// so that its controller does not list it as gone while it serves).
    serving: CancellationToken,
    history: Arc<History>,
    metrics: Arc<Metrics>,
    local: SocketAddr,
    /// The HTTPS listener's address, if it serves HTTPS.
    https: Option<SocketAddr>,
    /// The admin API's address, if it serves one.
    admin: Option<SocketAddr>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds the listeners and starts the proxy for `config` on `workers`
/// worker threads; it serves until `shutdown` is cancelled and then
/// drains. `config_dir` is what relative paths in it are relative to.
async fn start(
    config: Config,
    config_dir: Option<PathBuf>,
    controller: &mut Controller,
    source: Source,
    shutdown: CancellationToken,
    workers: usize,
) -> anyhow::Result<Running> {
    let listen = config.proxy.http_listen;
    let plain = portico_proxy::workers::bind(listen, workers)
        .with_context(|| format!("cannot listen on {listen}"))?;
    portico_proxy::workers::set_count(workers);
    let (config, version) = controller
        .offer(config)
        .context("a first config is always an update")?;
    let services = config.services.len();
    // Kept from the first config on, like the admin listener's settings.
    let history = Arc::new(History::new(
        config
            .admin
            .as_ref()
            .map_or(DEFAULT_CONFIG_HISTORY, |a| a.config_history),
        config_dir,
    ));
    history.record(version, config.clone(), source);
    let proxy = Proxy::new(identity(), config, version);
    tracing::info!(version = %version, services, "configured proxy");
    let metrics = Arc::new(Metrics::new(Arc::downgrade(&proxy)));
    let local = plain[0].local_addr()?;
    let serving = drain_gate(proxy.clone(), shutdown.clone());
    let mut admin_addr = None;
    if let Some(settings) = proxy.snapshot().config.admin.clone() {
        let state = Arc::new(admin::Admin {
            proxy: proxy.clone(),
            history: history.clone(),
            metrics: metrics.clone(),
        });
        admin_addr = Some(admin::start(state, &settings, shutdown.clone()).await?);
    }
    let https = match proxy.snapshot().config.proxy.https_listen {
        Some(addr) => portico_proxy::workers::bind(addr, workers)
            .with_context(|| format!("cannot listen on {addr} (https_listen)"))?,
        None => Vec::new(),
    };
    let https_addr = match https.first() {
        Some(listener) => Some(listener.local_addr()?),
        None => None,
    };
    tracing::info!(
        listen = %local,
        workers,
        max_client_connections = proxy.max_client_connections(),
        descriptors = portico_proxy::descriptor_limit(),
        "starting server"
    );
    if let Some(addr) = https_addr {
        tracing::info!(listen = %addr, "starting HTTPS server");
    }
    let served = portico_proxy::workers::spawn(proxy.clone(), plain, https, serving.clone())?;
    let expiry_watch = proxy.clone();
    tokio::spawn(async move {
        // Certificates are checked when loaded; this repeats the expiry
        // warning daily for a long-running proxy whose files don't change.
        let mut daily = tokio::time::interval(std::time::Duration::from_secs(24 * 3600));
        daily.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = daily.tick() => expiry_watch.snapshot().certs.0.warn_expiring(),
            }
        }
    });
    let task = tokio::spawn(served);
    Ok(Running {
        proxy,
        serving,
        history,
        metrics,
        local,
        https: https_addr,
        admin: admin_addr,
        task,
    })
}

async fn run(path: PathBuf, workers: usize) -> anyhow::Result<()> {
    tracing::info!(version = SERVER_INFO, "portico");
    let file_config = file::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let shutdown = CancellationToken::new();
    let reload = Arc::new(Notify::new());
    handle_signals(shutdown.clone(), reload.clone())?;
    let (provider, docker_view) = match &file_config.docker {
        Some(settings) => providers::first_docker_view(settings, &docker::ProxyNetworks::Own).await,
        None => (None, Default::default()),
    };
    let first = providers::merged(&file_config, &docker_view, &mut Vec::new());
    let mut controller = Controller::new();
    // Absolute, so a rendering of the config names files wherever it is read.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let config_dir = Some(std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()));
    let source = if file_config.docker.is_some() {
        Source::FileAndDocker
    } else {
        Source::File
    };
    let running = start(
        first,
        config_dir,
        &mut controller,
        source,
        shutdown.clone(),
        workers,
    )
    .await?;
    let watcher = providers::spawn(
        path,
        file_config,
        (provider, docker::ProxyNetworks::Own),
        docker_view,
        Some(running.metrics.clone()),
        reload,
        shutdown.clone(),
        providers::apply_to_proxy(controller, running.proxy.clone(), running.history.clone()),
    );
    running.task.await.context("proxy task")??;
    shutdown.cancel();
    watcher.await.context("watcher task")??;
    tracing::info!("stopped");
    Ok(())
}

async fn echo(
    listen: SocketAddr,
    name: Option<String>,
    exit_after: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let name = name.unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(listen = %listener.local_addr()?, name = %name, "echo backend serving");
    let shutdown = CancellationToken::new();
    handle_signals(shutdown.clone(), Arc::new(Notify::new()))?;
    let serving = tokio::spawn(demo::serve_replica(listener, name.into(), shutdown.clone()));
    match exit_after {
        Some(after) => {
            tokio::select! {
                _ = tokio::time::sleep(after) => {
                    tracing::error!(after = ?after, "exiting as asked (--exit-after)");
                    std::process::exit(1);
                }
                _ = shutdown.cancelled() => {}
            }
        }
        None => shutdown.cancelled().await,
    }
    let _ = serving.await;
    Ok(())
}

async fn demo(listen: SocketAddr, admin: Option<SocketAddr>) -> anyhow::Result<()> {
    tracing::info!(version = SERVER_INFO, "portico");
    let shutdown = CancellationToken::new();
    handle_signals(shutdown.clone(), Arc::new(Notify::new()))?;
    let replicas = [
        demo::start_replica("demo-1", shutdown.clone()).await?,
        demo::start_replica("demo-2", shutdown.clone()).await?,
    ];
    let mut text = demo::config_text(listen, &replicas);
    if let Some(admin) = admin {
        text.push_str(&format!("\n[admin]\nlisten = \"{admin}\"\n"));
    }
    let config = Config::parse(&text, "demo").map_err(|e| anyhow::anyhow!("{e}"))?;
    let running = start(
        config,
        None,
        &mut Controller::new(),
        Source::File,
        shutdown,
        1,
    )
    .await?;
    println!("{}", demo::instructions(running.local));
    running.task.await.context("proxy task")??;
    tracing::info!("stopped");
    Ok(())
}
