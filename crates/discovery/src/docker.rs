//! The Docker provider: Swarm services (their running tasks, or their VIP)
//! and plain containers labelled `com.docker.lb.*`, kept equal to what runs.
//!
//! Each sync reads the whole picture (services, tasks, networks,
//! containers) and derives the services to route; events only trigger
//! syncs early, so a missed or reordered event can never leave routes
//! wrong for longer than one poll interval. One thing is taken from the
//! events themselves: a container's death (`die`, or `kill` with SIGKILL)
//! takes its addresses out of the routes at once, and keeps them out while
//! Swarm's task list still calls the task running. Services whose
//! upstreams keep changing are damped: their changes are applied at most
//! every `damping_interval`, while every other service's are applied at
//! once.
//!
//! Who may claim a host ([`Scan::admit`]): a workload is routed only if it
//! satisfies `[docker] constraints` and is exposed (`portico.enable`, else
//! `exposed_by_default`); and, unless `allow_shared_hosts`, a host belongs
//! to the stack namespace of its oldest claimant, so a service of another
//! stack that names it is refused it, with an error naming both.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use portico_model::labels::{self, Finding, Severity, Workload, WorkloadKind};
use portico_model::{rules, Config, DockerSettings, FileData, Service};
use tokio_util::sync::CancellationToken;

use crate::engine::{
    filters, ConfigObj, ContainerInspect, ContainerObj, Engine, EngineError, Event, Events, Info,
    NetworkObj, ServiceObj, TaskObj,
};

/// Prefix of the keys under which certificates from Docker config objects
/// are kept in [`Config::files`], so they can't collide with file paths.
pub const CONFIG_OBJECT_PREFIX: &str = "docker-config:";

/// What the provider sees at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerView {
    pub services: Vec<Service>,
    /// Certificate material named by `ssl_cert`/`ssl_key` labels.
    pub files: BTreeMap<String, FileData>,
    pub findings: Vec<Finding>,
    /// Labelled workloads left out by `[docker] exposed_by_default` or
    /// `constraints`, with the reason: not problems, but worth showing.
    pub excluded: Vec<(String, String)>,
}

/// A workload that may be routed, once its network is reached (see
/// [`Scan::admit`]).
#[derive(Debug)]
pub struct Candidate {
    pub name: String,
    pub service: Service,
    /// The network its upstreams are addressed on.
    pub network: String,
    /// Its failed tasks (Swarm services only).
    pub failures: Option<Vec<Failure>>,
}

/// What [`Scan::admit`] decides.
#[derive(Debug, Default)]
pub struct Admitted {
    /// In the workloads' order (by name).
    pub candidates: Vec<Candidate>,
    pub findings: Vec<Finding>,
    pub excluded: Vec<(String, String)>,
}

/// Everything a scan reads from the engine, before interpretation.
#[derive(Debug, Default)]
pub struct Scan {
    pub swarm: bool,
    pub services: Vec<ServiceObj>,
    pub tasks: Vec<TaskObj>,
    pub networks: Vec<NetworkObj>,
    pub containers: Vec<ContainerObj>,
    /// Containers the engine has reported dead (full IDs) that the lists
    /// above may still show running: Swarm's task list lags its
    /// containers (here, a task still read `running` 270 ms after its
    /// container's `die`), and a dead task's address sends no reset, so a
    /// request sent there waits out the whole connect timeout. Their tasks
    /// and containers are not routed.
    pub dead: HashSet<String>,
    /// When each service and container (by ID) was created, as the engine
    /// says: the oldest claimant of a host owns it (see [`Scan::admit`]).
    pub born: HashMap<String, std::time::SystemTime>,
}

/// How soon to look again while tasks are on their way to running: task
/// state changes on other nodes raise no event here, and a task that just
/// started should be routed within a second.
const CONVERGING_POLL: Duration = Duration::from_millis(250);
/// How long after its last state change a task still counts as on its way.
const CONVERGING_FOR: Duration = Duration::from_secs(30);

impl Scan {
    /// Whether some wanted task or container is not running (or healthy)
    /// yet, so its arrival is imminent.
    pub fn converging(&self) -> bool {
        let now = std::time::SystemTime::now();
        // Only tasks that changed lately: one stuck in `pending` (an
        // impossible constraint) must not keep the engine polled fast forever.
        let recent = |stamp: &str| {
            humantime::parse_rfc3339_weak(stamp)
                .is_ok_and(|at| now.duration_since(at).unwrap_or_default() < CONVERGING_FOR)
        };
        self.tasks.iter().any(|t| {
            t.desired_state == "running"
                && t.status.state != "running"
                && recent(&t.status.timestamp)
        }) || self
            .containers
            .iter()
            .any(|c| labels::is_labelled(&c.labels) && c.status.contains("(health: starting)"))
    }

    /// Whether the lists show container `id` running: as a task's
    /// container, or as a container of this node.
    fn shows_running(&self, id: &str) -> bool {
        self.tasks
            .iter()
            .any(|t| t.status.state == "running" && t.status.container_status.container_id == id)
            || self
                .containers
                .iter()
                .any(|c| c.state == "running" && c.id == id)
    }

    /// The addresses each routed container (a running task of a labelled
    /// service, or a labelled container) contributes, under its workload's
    /// name: what its death takes out of the routes.
    fn addresses_by_container(&self) -> HashMap<String, (String, Vec<IpAddr>)> {
        let labelled: HashMap<&str, &str> = self
            .services
            .iter()
            .filter(|s| labels::is_labelled(&s.spec.labels))
            .map(|s| (s.id.as_str(), s.spec.name.as_str()))
            .collect();
        let mut out = HashMap::new();
        for t in &self.tasks {
            let id = &t.status.container_status.container_id;
            let Some(service) = labelled.get(t.service_id.as_str()) else {
                continue;
            };
            if id.is_empty() || t.desired_state != "running" || t.status.state != "running" {
                continue;
            }
            let ips = t
                .networks_attachments
                .iter()
                .flat_map(|a| &a.addresses)
                .filter_map(|a| cidr_ip(a))
                .collect();
            out.insert(id.clone(), (service.to_string(), ips));
        }
        for c in &self.containers {
            if c.labels.contains_key("com.docker.swarm.service.id")
                || !labels::is_labelled(&c.labels)
            {
                continue;
            }
            let ips = c
                .network_settings
                .networks
                .values()
                .filter_map(|e| e.ip_address.parse().ok())
                .collect();
            out.insert(c.id.clone(), (container_name(c), ips));
        }
        out
    }

    /// Describes each labelled service and container as a [`Workload`].
    pub fn workloads(&self) -> Vec<(Workload, String)> {
        self.workloads_with_failures()
            .into_iter()
            .map(|(w, id, _)| (w, id))
            .collect()
    }

    /// [`Scan::workloads`], each with its failed tasks' IDs and failure
    /// times (for services; `None` for containers).
    #[allow(clippy::type_complexity)]
    pub fn workloads_with_failures(&self) -> Vec<(Workload, String, Option<Vec<Failure>>)> {
        let net_name: HashMap<&str, &str> = self
            .networks
            .iter()
            .map(|n| (n.id.as_str(), n.name.as_str()))
            .collect();
        let name_of = |target: &str| -> String {
            net_name
                .get(target)
                .map(|n| n.to_string())
                // A target may be a name already, or an ID prefix.
                .or_else(|| {
                    self.networks
                        .iter()
                        .find(|n| n.name == target || n.id.starts_with(target))
                        .map(|n| n.name.clone())
                })
                .unwrap_or_else(|| target.to_owned())
        };
        let mut tasks_of: HashMap<&str, Vec<&TaskObj>> = HashMap::new();
        for t in &self.tasks {
            tasks_of.entry(t.service_id.as_str()).or_default().push(t);
        }
        let mut out = Vec::new();
        for svc in &self.services {
            if !labels::is_labelled(&svc.spec.labels) {
                continue;
            }
            let mut networks: Vec<String> = svc
                .spec
                .task_template
                .networks
                .iter()
                .chain(&svc.spec.networks)
                .map(|n| name_of(&n.target))
                .collect();
            networks.sort();
            networks.dedup();
            let mut addresses: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
            // Only tasks that run and are meant to: a task being stopped
            // (desired state shutdown) leaves at once, before it dies; a
            // task whose container died leaves at once too, whatever the
            // task list says yet.
            let tasks = tasks_of.get(svc.id.as_str()).map_or(&[][..], Vec::as_slice);
            for task in tasks.iter().filter(|t| {
                t.desired_state == "running"
                    && t.status.state == "running"
                    && !self.dead.contains(&t.status.container_status.container_id)
            }) {
                for att in &task.networks_attachments {
                    let name = if att.network.spec.name.is_empty() {
                        name_of(&att.network.id)
                    } else {
                        att.network.spec.name.clone()
                    };
                    for a in &att.addresses {
                        if let Some(ip) = cidr_ip(a) {
                            addresses.entry(name.clone()).or_default().push(ip);
                        }
                    }
                }
            }
            for ips in addresses.values_mut() {
                ips.sort();
                ips.dedup();
            }
            let vips = svc
                .endpoint
                .virtual_ips
                .iter()
                .filter_map(|v| Some((name_of(&v.network_id), cidr_ip(&v.addr)?)))
                .collect();
            let failures = tasks
                .iter()
                .filter(|t| matches!(t.status.state.as_str(), "failed" | "rejected"))
                .map(|t| Failure {
                    task: t.id.clone(),
                    at: humantime::parse_rfc3339_weak(&t.status.timestamp).ok(),
                })
                .collect();
            out.push((
                Workload {
                    kind: WorkloadKind::Service,
                    name: svc.spec.name.clone(),
                    labels: svc.spec.labels.clone(),
                    networks,
                    addresses,
                    vips,
                },
                svc.id.clone(),
                Some(failures),
            ));
        }
        for c in &self.containers {
            // Task containers are routed through their service.
            if c.labels.contains_key("com.docker.swarm.service.id")
                || !labels::is_labelled(&c.labels)
            {
                continue;
            }
            let healthy = c.state == "running"
                && !self.dead.contains(&c.id)
                && !c.status.contains("(unhealthy)")
                && !c.status.contains("(health: starting)");
            let networks: Vec<String> = c.network_settings.networks.keys().cloned().collect();
            let addresses = c
                .network_settings
                .networks
                .iter()
                .filter(|_| healthy)
                .filter_map(|(n, e)| Some((n.clone(), vec![e.ip_address.parse().ok()?])))
                .collect();
            out.push((
                Workload {
                    kind: WorkloadKind::Container,
                    name: container_name(c),
                    labels: c.labels.clone(),
                    networks,
                    addresses,
                    vips: BTreeMap::new(),
                },
                c.id.clone(),
                None,
            ));
        }
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        out
    }
}

impl Scan {
    /// Which labelled workloads may be routed, as `settings` allow: each
    /// name once; satisfying `constraints` and opted in (`portico.enable`,
    /// else `exposed_by_default`), or left out silently (noted in
    /// `excluded`); translated by its labels; and, unless
    /// `allow_shared_hosts`, refused the hosts that a workload of another
    /// stack namespace claimed first. Claims are taken oldest first (by
    /// creation time, then by name), so a host's owner is stable across
    /// syncs and a newcomer cannot take it over; a refused host is an error
    /// naming both services, and a workload refused all its hosts is
    /// dropped. Workloads of one namespace share hosts as before
    /// (Interlock's canaries). Pure: networks are reached by the caller.
    pub fn admit(&self, settings: &DockerSettings) -> Admitted {
        let mut out = Admitted::default();
        let mut names = BTreeSet::new();
        let mut translated = Vec::new();
        for (workload, id, failures) in self.workloads_with_failures() {
            if !names.insert(workload.name.clone()) {
                out.findings.push(Finding {
                    workload: workload.name.clone(),
                    label: String::new(),
                    severity: Severity::Error,
                    message: "another labelled service or container has this name; rename one"
                        .into(),
                });
                continue;
            }
            // Outside the constraints, a workload is not ours to judge:
            // nothing about it is reported, its portico.enable included.
            if let Some(c) = &settings.constraints {
                if !c.admits(&workload.labels) {
                    out.excluded.push((
                        workload.name,
                        format!("does not satisfy [docker] constraints: {}", c.text),
                    ));
                    continue;
                }
            }
            match labels::exposed(&workload.labels, settings.exposed_by_default) {
                Err(message) => {
                    out.findings.push(Finding {
                        workload: workload.name.clone(),
                        label: labels::ENABLE.into(),
                        severity: Severity::Error,
                        message,
                    });
                    continue;
                }
                Ok(false) => {
                    let reason = if workload.labels.contains_key(labels::ENABLE) {
                        format!("{}=false", labels::ENABLE)
                    } else {
                        format!(
                            "[docker] exposed_by_default = false and no {}=true label",
                            labels::ENABLE
                        )
                    };
                    out.excluded.push((workload.name, reason));
                    continue;
                }
                Ok(true) => {}
            }
            let t = labels::translate(&workload);
            out.findings.extend(t.findings);
            let Some(service) = t.service else {
                continue;
            };
            let born = self.born.get(&id).copied();
            translated.push((
                born,
                labels::namespace(&workload.labels).to_owned(),
                Candidate {
                    name: workload.name,
                    service,
                    network: t.network.unwrap_or_default(),
                    failures,
                },
            ));
        }
        if !settings.allow_shared_hosts {
            // Oldest first; a workload the engine gave no time is newest.
            let mut order: Vec<usize> = (0..translated.len()).collect();
            order.sort_by(|&a, &b| {
                let key = |i: usize| {
                    let (born, _, c) = &translated[i];
                    (born.is_none(), *born, c.name.clone())
                };
                key(a).cmp(&key(b))
            });
            let mut owners = rules::HostOwners::new();
            let mut dropped = BTreeSet::new();
            for i in order {
                let (_, namespace, c) = &mut translated[i];
                let refused = owners.claim(&c.name, namespace, &c.service.hosts);
                if refused.is_empty() {
                    continue;
                }
                let allow = "[docker] allow_shared_hosts = true";
                for r in &refused {
                    out.findings.push(Finding {
                        workload: c.name.clone(),
                        label: format!("{}hosts", labels::PREFIX),
                        severity: Severity::Error,
                        message: r.message("stack namespace", allow),
                    });
                }
                let s = &mut c.service;
                s.hosts.retain(|h| !refused.iter().any(|r| r.host == *h));
                // Its redirects from refused hosts go with them.
                s.redirects.retain(|r| {
                    s.hosts.iter().any(
                        |h| matches!(h, portico_model::HostPattern::Exact(n) if *n == r.from_host),
                    )
                });
                if s.hosts.is_empty() {
                    dropped.insert(i);
                }
            }
            let mut i = 0;
            translated.retain(|_| {
                i += 1;
                !dropped.contains(&(i - 1))
            });
        }
        out.candidates = translated.into_iter().map(|(_, _, c)| c).collect();
        // Each workload's findings together, in the workloads' order.
        out.findings.sort_by(|a, b| a.workload.cmp(&b.workload));
        out
    }
}

/// Deserialises the engine's list `items` as `T`, noting each item's
/// creation time in `born` by its ID: a service's `CreatedAt` (RFC 3339),
/// a container's `Created` (Unix seconds).
fn with_birth<T: serde::de::DeserializeOwned>(
    path: &str,
    items: Vec<serde_json::Value>,
    born: &mut HashMap<String, std::time::SystemTime>,
) -> Result<Vec<T>, EngineError> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let id = item
            .get("ID")
            .or_else(|| item.get("Id"))
            .and_then(|v| v.as_str());
        let at = match (item.get("CreatedAt"), item.get("Created")) {
            (Some(serde_json::Value::String(t)), _) => humantime::parse_rfc3339_weak(t).ok(),
            (_, Some(serde_json::Value::Number(n))) => n
                .as_u64()
                .map(|secs| std::time::UNIX_EPOCH + Duration::from_secs(secs)),
            _ => None,
        };
        if let (Some(id), Some(at)) = (id, at) {
            born.insert(id.to_owned(), at);
        }
        out.push(
            serde_json::from_value(item).map_err(|e| EngineError::Decode {
                path: path.to_owned(),
                error: e.to_string(),
            })?,
        );
    }
    Ok(out)
}

/// A plain container's workload name: its name, else its short ID.
fn container_name(c: &ContainerObj) -> String {
    c.names
        .first()
        .map(|n| n.trim_start_matches('/').to_owned())
        .unwrap_or_else(|| c.id.chars().take(12).collect())
}

fn cidr_ip(addr: &str) -> Option<IpAddr> {
    addr.split('/').next()?.parse().ok()
}

/// A failed task, as the engine lists it.
#[derive(Clone, Debug)]
pub struct Failure {
    pub task: String,
    /// When it failed, if the engine said.
    pub at: Option<std::time::SystemTime>,
}

/// Portico's own container, when it runs in one.
struct SelfContainer {
    id: String,
    networks: BTreeSet<String>,
}

/// Per-service change history, for flap damping.
#[derive(Default)]
struct Flaps {
    /// When the service's upstream set changed recently.
    changes: VecDeque<Instant>,
    /// The last set seen from the engine.
    last_seen: Vec<SocketAddr>,
    /// What is applied while damped, and since when.
    applied: Vec<SocketAddr>,
    applied_at: Option<Instant>,
    damped: bool,
    /// Failed task IDs, with when they failed.
    failed: HashMap<String, std::time::SystemTime>,
}

/// Where the proxies that will route the provider's services run, for the
/// check that each service's network is one they reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ProxyNetworks {
    /// In this process (`portico run`): its own container must be on the
    /// network (attaching itself when `attach_networks` allows); outside
    /// a container, the network must not be an overlay.
    #[default]
    Own,
    /// Elsewhere (cluster mode's proxies), on these networks (`[controller]
    /// proxy_networks`, the stack's list): a service on another one is
    /// reported with the remedy, and not routed.
    Declared(BTreeSet<String>),
    /// Elsewhere, on networks nobody declared: not checked.
    Unknown,
}

pub struct DockerProvider {
    engine: Engine,
    settings: DockerSettings,
    own: Option<SelfContainer>,
    proxies: ProxyNetworks,
    flaps: HashMap<String, Flaps>,
    /// Set by the last sync: tasks are on their way to running.
    converging: bool,
    /// Containers reported dead by events (see [`Scan::dead`]). An ID is
    /// forgotten once a scan no longer shows it running, so this never
    /// holds more than the IDs of tasks and containers still listed.
    dead: HashSet<String>,
    /// From the last scan: each routed container's workload and addresses,
    /// so that its death can be applied before the next scan.
    routed: HashMap<String, (String, Vec<IpAddr>)>,
    /// What the provider has been doing, for metrics and the status page.
    stats: Arc<DockerStats>,
}

/// The Docker provider's activity, readable while it runs (its counters
/// only grow).
#[derive(Debug, Default)]
pub struct DockerStats {
    /// Events that led to a sync (noise excluded).
    pub events: AtomicU64,
    /// Subscriptions to the event stream, the first included: each later
    /// one follows a lost stream and resyncs from the lists.
    pub subscriptions: AtomicU64,
    pub syncs: AtomicU64,
    pub sync_failures: AtomicU64,
    /// Services whose updates are damped now.
    pub damped: AtomicU64,
    /// The event stream is up.
    pub connected: AtomicBool,
    /// When the last event arrived (Unix seconds; 0: none yet).
    pub last_event_unix: AtomicU64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl DockerProvider {
    pub async fn connect(settings: DockerSettings) -> Result<DockerProvider, EngineError> {
        let engine = Engine::from_settings(&settings)?;
        engine.get::<serde_json::Value>("/version").await?;
        // In a container, the hostname is the container's short ID.
        let own = match std::env::var("HOSTNAME") {
            Ok(h) if !h.is_empty() => engine
                .get::<ContainerInspect>(&format!("/containers/{h}/json"))
                .await
                .ok()
                .map(|c| SelfContainer {
                    id: c.id,
                    networks: c.network_settings.networks.into_keys().collect(),
                }),
            _ => None,
        };
        match &own {
            Some(c) => {
                tracing::info!(endpoint = %engine.name, container = %&c.id[..c.id.len().min(12)], "connected to the Docker engine; running in a container")
            }
            None => tracing::info!(endpoint = %engine.name, "connected to the Docker engine"),
        }
        Ok(DockerProvider {
            engine,
            settings,
            own,
            proxies: ProxyNetworks::Own,
            flaps: HashMap::new(),
            converging: false,
            dead: HashSet::new(),
            routed: HashMap::new(),
            stats: Arc::default(),
        })
    }

    /// Says where the proxies run (by default, in this process).
    pub fn set_proxy_networks(&mut self, proxies: ProxyNetworks) {
        self.proxies = proxies;
    }

    /// Whether this process runs in a container (the engine knows its
    /// hostname as one).
    pub fn in_container(&self) -> bool {
        self.own.is_some()
    }

    /// Its activity counters, shared: they stay readable while
    /// [`watch`] owns the provider.
    pub fn stats(&self) -> Arc<DockerStats> {
        self.stats.clone()
    }

    /// Notes what a container event says about the container's life: `die`
    /// (the one event every end sends: a crash, `docker stop`, `docker
    /// kill`) and `kill` with SIGKILL (which nothing survives; it comes up
    /// to a few hundred milliseconds before its `die`) mark it dead; `start`
    /// marks it alive again (a container restarted by its restart policy
    /// keeps its ID). Other signals (a SIGHUP to reload, the SIGTERM of a
    /// stop that may drain for a while) leave it routed until it dies.
    /// Returns the ID of a container that has just died.
    fn observe<'e>(&mut self, ev: &'e Event) -> Option<&'e str> {
        if ev.kind != "container" || ev.actor.id.is_empty() {
            return None;
        }
        let sigkill = || {
            ev.actor
                .attributes
                .get("signal")
                .is_some_and(|s| matches!(s.as_str(), "9" | "KILL" | "SIGKILL"))
        };
        match ev.action.as_str() {
            "die" => {}
            "kill" if sigkill() => {}
            "start" => {
                self.dead.remove(&ev.actor.id);
                return None;
            }
            _ => return None,
        }
        self.dead
            .insert(ev.actor.id.clone())
            .then_some(ev.actor.id.as_str())
    }

    /// `view` without the addresses the container `id` contributed (as the
    /// last scan saw them), or `None` if it contributed none. Applied the
    /// moment the container dies: the sync that follows comes after the
    /// event burst, and the engine, busy with the death, answers it slowly
    /// (a scan took 117 ms then, against 20 ms otherwise), which would
    /// leave a window in which requests go to an address that no longer
    /// answers.
    fn without(&self, view: &DockerView, id: &str) -> Option<DockerView> {
        let (name, ips) = self.routed.get(id)?;
        let mut out = view.clone();
        let service = out.services.iter_mut().find(|s| &s.name == name)?;
        let before = service.upstreams.len();
        service.upstreams.retain(|u| !ips.contains(&u.ip()));
        (service.upstreams.len() < before).then_some(out)
    }

    /// Forgets dead containers the scan no longer shows running (their
    /// tasks have caught up, or they are gone) and hands the rest to the
    /// scan, whose workloads then leave them out.
    fn apply_dead(&mut self, scan: &mut Scan) {
        self.dead.retain(|id| scan.shows_running(id));
        scan.dead = self.dead.clone();
        self.routed = scan.addresses_by_container();
    }

    /// Reads services, tasks, networks and containers.
    pub async fn scan(&self) -> Result<Scan, EngineError> {
        let info: Info = self.engine.get("/info").await?;
        let swarm = info.swarm.local_node_state == "active" && info.swarm.control_available;
        let networks: Vec<NetworkObj> = self.engine.get("/networks").await?;
        let mut born = HashMap::new();
        let containers: Vec<ContainerObj> = with_birth(
            "/containers/json",
            self.engine.get("/containers/json").await?,
            &mut born,
        )?;
        let (services, tasks) = if swarm {
            let services: Vec<ServiceObj> =
                with_birth("/services", self.engine.get("/services").await?, &mut born)?;
            // All tasks, history included: the failed ones measure crash loops.
            let tasks: Vec<TaskObj> = self.engine.get("/tasks").await?;
            (services, tasks)
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(Scan {
            swarm,
            services,
            tasks,
            networks,
            containers,
            dead: HashSet::new(),
            born,
        })
    }

    /// One full sync: scan, translate labels, make networks reachable,
    /// fetch certificates, damp flapping services.
    pub async fn sync(&mut self) -> Result<DockerView, EngineError> {
        let mut scan = self.scan().await?;
        self.apply_dead(&mut scan);
        self.converging = scan.converging();
        let mut view = DockerView::default();
        if let Some(own) = &mut self.own {
            // Refresh: someone may have detached us.
            if let Ok(c) = self
                .engine
                .get::<ContainerInspect>(&format!("/containers/{}/json", own.id))
                .await
            {
                own.networks = c.network_settings.networks.into_keys().collect();
            }
        }
        let drivers: HashMap<&str, &NetworkObj> =
            scan.networks.iter().map(|n| (n.name.as_str(), n)).collect();
        let admitted = scan.admit(&self.settings);
        view.findings = admitted.findings;
        view.excluded = admitted.excluded;
        for Candidate {
            name,
            mut service,
            network,
            failures: failed,
        } in admitted.candidates
        {
            if let Err(message) = self
                .reach(&network, drivers.get(network.as_str()).copied())
                .await
            {
                view.findings.push(Finding {
                    workload: name,
                    label: format!("{}network", labels::PREFIX),
                    severity: Severity::Error,
                    message,
                });
                continue;
            }
            if let Some(tls) = &mut service.tls {
                for path in [&mut tls.cert, &mut tls.key] {
                    let (key, data) = self.material(path).await;
                    view.files.insert(key.clone(), data);
                    *path = key;
                }
            }
            let failures = failed.map(|ids| self.recent_failures(&service.name, ids));
            service.upstreams = self.damp(
                &service.name,
                std::mem::take(&mut service.upstreams),
                failures,
            );
            view.services.push(service);
        }
        view.findings.sort_by(|a, b| a.workload.cmp(&b.workload));
        let live: BTreeSet<&str> = view.services.iter().map(|s| s.name.as_str()).collect();
        self.flaps.retain(|name, _| live.contains(name.as_str()));
        Ok(view)
    }

    /// Makes sure the proxy can reach `network`, attaching its own container
    /// when it runs in one; says why not otherwise.
    async fn reach(&mut self, network: &str, net: Option<&NetworkObj>) -> Result<(), String> {
        match &self.proxies {
            ProxyNetworks::Own => {}
            ProxyNetworks::Unknown => return Ok(()),
            ProxyNetworks::Declared(networks) if networks.contains(network) => return Ok(()),
            ProxyNetworks::Declared(networks) => {
                let list: Vec<&str> = networks.iter().map(String::as_str).collect();
                return Err(format!(
                    "no proxy is on network {network:?} (the proxies' networks, [controller] proxy_networks: {}): add it to the proxy service's networks in the stack and to proxy_networks, and redeploy (Swarm restarts the proxies, one node at a time); or attach this service to one of those networks and name it with com.docker.lb.network",
                    list.join(", ")
                ));
            }
        }
        let Some(own) = &mut self.own else {
            // On the host: local bridge networks are routed to; overlays are not.
            return match net {
                Some(n) if n.driver == "overlay" => Err(format!(
                    "network {network:?} is an overlay network, which Portico running outside a container cannot reach; run Portico as a container or service attached to it"
                )),
                _ => Ok(()),
            };
        };
        if own.networks.contains(network) {
            return Ok(());
        }
        if !self.settings.attach_networks {
            return Err(format!(
                "Portico's container is not attached to network {network:?}; attach it (docker network connect {network} <portico>) or set [docker] attach_networks = true"
            ));
        }
        let body = serde_json::json!({ "Container": own.id });
        match self.engine.post(&format!("/networks/{network}/connect"), body).await {
            Ok(()) => {
                tracing::info!(network, "attached Portico's container to the network");
                own.networks.insert(network.to_owned());
                Ok(())
            }
            Err(e) => Err(format!(
                "Portico's container is not on network {network:?} and could not attach itself ({e}); create the network with --attachable, or attach Portico to it"
            )),
        }
    }

    /// Certificate bytes for an `ssl_cert`/`ssl_key` label value: a file
    /// mounted into the proxy (an absolute path), or a Docker config object
    /// of that name.
    async fn material(&self, value: &str) -> (String, FileData) {
        if value.starts_with('/') {
            let path = std::path::PathBuf::from(value);
            let data = tokio::task::spawn_blocking(move || crate::file::read_limited(&path))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map(Arc::from).map_err(|e| format!("{value}: {e}")));
            return (value.to_owned(), data);
        }
        let key = format!("{CONFIG_OBJECT_PREFIX}{value}");
        let path = format!("/configs?filters={}", filters(&[("name", value)]));
        let data = match self.engine.get::<Vec<ConfigObj>>(&path).await {
            Ok(configs) => match configs.into_iter().find(|c| c.spec.name == value) {
                Some(c) => base64::engine::general_purpose::STANDARD
                    .decode(c.spec.data.as_bytes())
                    .map(Arc::from)
                    .map_err(|e| format!("docker config {value}: {e}")),
                None => Err(format!(
                    "no docker config named {value:?} (and not an absolute file path)"
                )),
            },
            Err(e) => Err(e.to_string()),
        };
        (key, data)
    }

    /// Counts a service's task failures within `damping_window`, by the time
    /// the engine gives (else when first seen). Failures are remembered
    /// here, not just read from the engine's task history, which keeps only
    /// a few tasks per slot; and a task still listed is never counted anew.
    fn recent_failures(&mut self, service: &str, failed: Vec<Failure>) -> usize {
        let now = std::time::SystemTime::now();
        let window = self.settings.damping_window;
        let seen = &mut self.flaps.entry(service.to_owned()).or_default().failed;
        let listed: BTreeSet<String> = failed.iter().map(|f| f.task.clone()).collect();
        for f in failed {
            seen.entry(f.task).or_insert(f.at.unwrap_or(now));
        }
        let age = |at: &std::time::SystemTime| now.duration_since(*at).unwrap_or_default();
        seen.retain(|id, at| listed.contains(id) || age(at) <= window * 2);
        seen.values().filter(|at| age(at) <= window).count()
    }

    /// Flap damping. A service under pressure (Swarm services: tasks that
    /// failed within `damping_window`; containers: upstream changes within
    /// it) beyond `damping_changes` is damped: upstreams that went away
    /// leave at once (never route to a dead task), new ones join at most
    /// every `damping_interval`. Rolling updates stop tasks without failing
    /// them, so they are never damped.
    fn damp(
        &mut self,
        service: &str,
        upstreams: Vec<SocketAddr>,
        failures: Option<usize>,
    ) -> Vec<SocketAddr> {
        let now = Instant::now();
        let s = &self.settings;
        let f = self.flaps.entry(service.to_owned()).or_default();
        if f.applied_at.is_none() {
            f.last_seen = upstreams.clone();
        }
        if f.last_seen != upstreams {
            f.last_seen = upstreams.clone();
            f.changes.push_back(now);
        }
        while f
            .changes
            .front()
            .is_some_and(|t| now.duration_since(*t) > s.damping_window)
        {
            f.changes.pop_front();
        }
        let pressure = failures.unwrap_or(f.changes.len());
        if !f.damped && pressure > s.damping_changes {
            f.damped = true;
            tracing::warn!(service, changes = pressure, window = ?s.damping_window, "service is restarting repeatedly; damping its updates");
        } else if f.damped && pressure == 0 {
            f.damped = false;
            tracing::info!(
                service,
                "service is stable again; its updates apply at once"
            );
        }
        let due = f
            .applied_at
            .is_none_or(|t| now.duration_since(t) >= s.damping_interval);
        if !f.damped || due {
            f.applied = upstreams;
            f.applied_at = Some(now);
        } else {
            f.applied.retain(|u| upstreams.contains(u));
        }
        f.applied.clone()
    }

    /// When the next damped service is due for an update, if any.
    fn next_damping_deadline(&self) -> Option<Duration> {
        let now = Instant::now();
        self.flaps
            .values()
            .filter(|f| f.damped && f.applied != f.last_seen)
            .filter_map(|f| f.applied_at)
            .map(|t| (t + self.settings.damping_interval).saturating_duration_since(now))
            .min()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// Runs the provider until `shutdown`: syncs at start, on every relevant
/// event, every `poll_interval`, and after reconnecting; calls `on_view`
/// with each view that differs from the last. A container's death is
/// applied to the last view the moment its event arrives, before the sync.
pub async fn watch(
    mut provider: DockerProvider,
    shutdown: CancellationToken,
    mut on_view: impl FnMut(DockerView),
) {
    use tokio::time::Instant as At;
    let poll = provider.settings.poll_interval;
    let mut last: Option<DockerView> = None;
    let mut events: Option<Events> = None;
    let mut next_sync = At::now();
    let mut resubscribe_at = At::now();
    let mut retry = RETRY_MIN;
    loop {
        if events.is_none() && At::now() >= resubscribe_at {
            match provider.engine.events(EVENT_TYPES).await {
                Ok(e) => {
                    events = Some(e);
                    provider.stats.subscriptions.fetch_add(1, Relaxed);
                    provider.stats.connected.store(true, Relaxed);
                    // A fresh subscription may have missed changes: resync
                    // now, trusting the lists alone (a dead container's
                    // `start` may be among the missed).
                    provider.dead.clear();
                    next_sync = At::now();
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?retry, "cannot subscribe to Docker events");
                    resubscribe_at = At::now() + retry;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
        let mut wake = next_sync;
        if let Some(d) = provider.next_damping_deadline() {
            wake = wake.min(At::now() + d);
        }
        if events.is_none() {
            wake = wake.min(resubscribe_at);
        }
        let event = async {
            match &mut events {
                Some(e) => e.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {
                let damping_due = provider.next_damping_deadline().is_some_and(|d| d.is_zero());
                if At::now() < next_sync && !damping_due {
                    // Woken only to resubscribe.
                    continue;
                }
            }
            ev = event => match ev {
                Some(ev) if is_noise(&ev) => continue,
                Some(ev) => {
                    tracing::debug!(kind = %ev.kind, action = %ev.action, id = %ev.actor.id, "docker event");
                    provider.stats.events.fetch_add(1, Relaxed);
                    provider.stats.last_event_unix.store(unix_now(), Relaxed);
                    died(&mut provider, &ev, &mut last, &mut on_view);
                    // Events come in bursts (a scale-up is several): gather
                    // the burst, then sync once for all of it. Deaths in
                    // it still apply at once.
                    let until = At::now() + EVENT_COALESCE;
                    while let Some(stream) = &mut events {
                        tokio::select! {
                            _ = tokio::time::sleep_until(until) => break,
                            more = stream.next() => match more {
                                Some(ev) => died(&mut provider, &ev, &mut last, &mut on_view),
                                None => events = None,
                            },
                        }
                    }
                }
                None => {
                    tracing::warn!("Docker event stream ended; reconnecting");
                    provider.stats.connected.store(false, Relaxed);
                    events = None;
                    continue;
                }
            },
        }
        let synced = provider.sync().await;
        let damped = provider.flaps.values().filter(|f| f.damped).count();
        provider.stats.damped.store(damped as u64, Relaxed);
        match synced {
            Ok(view) => {
                provider.stats.syncs.fetch_add(1, Relaxed);
                retry = RETRY_MIN;
                let wait = if provider.converging {
                    CONVERGING_POLL.min(poll)
                } else {
                    poll
                };
                next_sync = At::now() + wait;
                if last.as_ref() != Some(&view) {
                    log_new_findings(
                        last.as_ref().map(|v| &v.findings[..]).unwrap_or(&[]),
                        &view.findings,
                    );
                    let before = last.as_ref().map(|v| &v.excluded[..]).unwrap_or(&[]);
                    for (name, reason) in view.excluded.iter().filter(|e| !before.contains(e)) {
                        tracing::info!(service = %name, reason = %reason, "service not routed");
                    }
                    last = Some(view.clone());
                    on_view(view);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?retry, "Docker sync failed; keeping the last routes");
                provider.stats.sync_failures.fetch_add(1, Relaxed);
                provider.stats.connected.store(false, Relaxed);
                next_sync = At::now() + retry;
                resubscribe_at = next_sync;
                retry = (retry * 2).min(RETRY_MAX);
                events = None;
            }
        }
    }
}

/// Notes a container's death told by `ev`, and takes its addresses out of
/// the last view at once (the sync that follows confirms it).
fn died(
    provider: &mut DockerProvider,
    ev: &Event,
    last: &mut Option<DockerView>,
    on_view: &mut impl FnMut(DockerView),
) {
    let Some(id) = provider.observe(ev) else {
        return;
    };
    if let Some(view) = last.as_ref().and_then(|v| provider.without(v, id)) {
        tracing::debug!(container = %id, action = %ev.action, "container died; its addresses leave the routes");
        *last = Some(view.clone());
        on_view(view);
    }
}

const EVENT_TYPES: &[&str] = &["service", "container", "network", "node", "config"];
/// Quiet time gathered after an event before syncing once for the burst.
const EVENT_COALESCE: Duration = Duration::from_millis(30);
/// Back-off after a failed sync or subscription: doubled up to the maximum.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Events that say nothing about routing: exec sessions, and health probes
/// of anything but containers (a container's health decides its routing).
fn is_noise(ev: &crate::engine::Event) -> bool {
    ev.action.starts_with("exec_")
        || (ev.action.starts_with("health_status") && ev.kind != "container")
}

fn log_new_findings(before: &[Finding], now: &[Finding]) {
    for f in now.iter().filter(|f| !before.contains(f)) {
        match f.severity {
            Severity::Error => {
                tracing::error!(service = %f.workload, label = %f.label, error = %f.message, "service skipped")
            }
            Severity::Warning => {
                tracing::warn!(service = %f.workload, label = %f.label, warning = %f.message, "label not applied")
            }
        }
    }
}

/// The file config with the Docker services added. File services win: a
/// Docker service whose name or host a file service already has loses
/// that name or host, and this is reported. Then the rules every provider
/// shares ([`rules::Claims`]) are applied in Docker's order (by name),
/// after the file's services: a Docker service that disagrees with an
/// earlier one on a host or a host and path (or is a second default
/// backend) is dropped with an error naming both, and the earlier one is
/// kept.
pub fn merge(file: &Config, docker: &DockerView) -> (Config, Vec<Finding>) {
    let mut config = file.clone();
    let mut findings = Vec::new();
    let names: BTreeSet<&str> = file.services.iter().map(|s| s.name.as_str()).collect();
    let hosts: BTreeMap<_, &str> = file
        .services
        .iter()
        .flat_map(|s| s.hosts.iter().map(move |h| (h.clone(), s.name.as_str())))
        .collect();
    // A controller's proxies decide, with their own https_listen (one
    // without refuses such a snapshot, saying so).
    let https = file.proxy.https_listen.is_some() || file.controller.is_some();
    let error = |workload: &str, label: &str, message: String| Finding {
        workload: workload.to_owned(),
        label: label.to_owned(),
        severity: Severity::Error,
        message,
    };
    // What the file leaves to each Docker service.
    let mut candidates: Vec<Service> = Vec::with_capacity(docker.services.len());
    for svc in &docker.services {
        if names.contains(svc.name.as_str()) {
            findings.push(error(
                &svc.name,
                "",
                format!(
                    "a service named {:?} is in the config file; the file's wins",
                    svc.name
                ),
            ));
            continue;
        }
        if !https && (svc.tls.is_some() || svc.ssl_only || svc.passthrough) {
            findings.push(error(
                &svc.name,
                "com.docker.lb.ssl_cert",
                "HTTPS labels need [proxy] https_listen in Portico's config".into(),
            ));
            continue;
        }
        let mut kept = Vec::new();
        for h in &svc.hosts {
            match hosts.get(h) {
                Some(owner) => findings.push(error(
                    &svc.name,
                    "com.docker.lb.hosts",
                    format!("host {h} is also claimed by service {owner} in the config file, which keeps it"),
                )),
                None => kept.push(h.clone()),
            }
        }
        if kept.is_empty() {
            continue;
        }
        candidates.push(Service {
            hosts: kept,
            ..svc.clone()
        });
    }
    // The shared rules, against the file's services (valid together, as
    // the file was checked) and the Docker services kept before.
    let mut claims = rules::Claims::new();
    for s in &file.services {
        claims.admit(s);
    }
    for svc in &candidates {
        let disagreements = claims.check(svc);
        if disagreements.is_empty() {
            claims.admit(svc);
            config.services.push(svc.clone());
            continue;
        }
        for d in disagreements {
            let label = labels::label_for(d.setting).unwrap_or_default();
            let name = label
                .strip_prefix(labels::PREFIX)
                .or_else(|| label.strip_prefix(labels::PORTICO_PREFIX))
                .filter(|n| !n.is_empty())
                .unwrap_or(d.setting);
            findings.push(error(&svc.name, &label, d.message(name)));
        }
    }
    // Each workload's findings together, in Docker's order.
    let order: HashMap<&str, usize> = docker
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    findings.sort_by_key(|f| order.get(f.workload.as_str()).copied());
    for (k, v) in &docker.files {
        config.files.insert(k.clone(), v.clone());
    }
    (config, findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_from_fixtures() -> Scan {
        let read = |name: &str| {
            std::fs::read_to_string(format!(
                "{}/tests/fixtures/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let info: Info = serde_json::from_str(&read("info_swarm.json")).unwrap();
        Scan {
            swarm: info.swarm.local_node_state == "active" && info.swarm.control_available,
            services: serde_json::from_str(&read("services.json")).unwrap(),
            tasks: serde_json::from_str(&read("tasks.json")).unwrap(),
            networks: serde_json::from_str(&read("networks.json")).unwrap(),
            containers: serde_json::from_str(&read("containers.json")).unwrap(),
            dead: HashSet::new(),
            born: HashMap::new(),
        }
    }

    #[test]
    fn creation_times_are_read_from_recorded_lists() {
        let read = |name: &str| -> Vec<serde_json::Value> {
            let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
        };
        let mut born = HashMap::new();
        let services: Vec<ServiceObj> = with_birth("s", read("services.json"), &mut born).unwrap();
        let containers: Vec<ContainerObj> =
            with_birth("c", read("containers.json"), &mut born).unwrap();
        assert!(!services.is_empty() && !containers.is_empty());
        assert!(services.iter().all(|s| born.contains_key(&s.id)));
        assert!(containers.iter().all(|c| born.contains_key(&c.id)));
        let at = |s: &str| humantime::format_rfc3339(born[s]).to_string();
        let first = &services[0];
        assert!(at(&first.id).starts_with("2026-"), "{}", at(&first.id));
    }

    /// A scan of Swarm services on one overlay network, each with one
    /// running task: (name, labels, created at).
    type Labelled<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

    fn scan_of(services: &[Labelled<'_>]) -> Scan {
        let mut scan = Scan {
            swarm: true,
            networks: vec![NetworkObj {
                id: "net1".into(),
                name: "apps".into(),
                driver: "overlay".into(),
                attachable: true,
            }],
            ..Scan::default()
        };
        let mut items = Vec::new();
        for (i, (name, labels, created)) in services.iter().enumerate() {
            let mut l: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            l.insert("com.docker.lb.port".into(), "8080".into());
            items.push(serde_json::json!({
                "ID": format!("svc{i}"),
                "CreatedAt": created,
                "Spec": {"Name": name, "Labels": l, "TaskTemplate": {"Networks": [{"Target": "net1"}]}}
            }));
            scan.tasks.push(serde_json::from_value(serde_json::json!({
                "ID": format!("task{i}"),
                "ServiceID": format!("svc{i}"),
                "DesiredState": "running",
                "Status": {"State": "running"},
                "NetworksAttachments": [{"Network": {"ID": "net1", "Spec": {"Name": "apps"}}, "Addresses": [format!("10.0.0.{}/24", i + 2)]}]
            })).unwrap());
        }
        scan.services = with_birth("test", items, &mut scan.born).unwrap();
        scan
    }

    fn routed(a: &Admitted) -> Vec<String> {
        a.candidates
            .iter()
            .map(|c| {
                let hosts: Vec<String> = c.service.hosts.iter().map(|h| h.to_string()).collect();
                format!("{} {}", c.name, hosts.join(","))
            })
            .collect()
    }

    #[test]
    fn exposure_and_constraints_leave_workloads_out_quietly() {
        let scan = scan_of(&[
            (
                "a_plain",
                &[("com.docker.lb.hosts", "a.test")],
                "2026-01-01T00:00:00Z",
            ),
            (
                "b_in",
                &[
                    ("com.docker.lb.hosts", "b.test"),
                    ("portico.enable", "true"),
                    ("com.docker.stack.namespace", "prod"),
                ],
                "2026-01-01T00:00:00Z",
            ),
            (
                "c_out",
                &[
                    ("com.docker.lb.hosts", "c.test"),
                    ("portico.enable", "false"),
                ],
                "2026-01-01T00:00:00Z",
            ),
            (
                "d_bad",
                &[
                    ("com.docker.lb.hosts", "d.test"),
                    ("portico.enable", "sure"),
                ],
                "2026-01-01T00:00:00Z",
            ),
            // Bad labels, but left out: nothing is reported about them.
            (
                "e_dev",
                &[
                    ("com.docker.lb.hosts", "e.test"),
                    ("com.docker.lb.colour", "red"),
                    ("com.docker.stack.namespace", "dev"),
                ],
                "2026-01-01T00:00:00Z",
            ),
        ]);
        let shown = |a: &Admitted| -> (Vec<String>, Vec<String>, Vec<String>) {
            (
                routed(a),
                a.findings.iter().map(|f| f.to_string()).collect(),
                a.excluded
                    .iter()
                    .map(|(n, r)| format!("{n}: {r}"))
                    .collect(),
            )
        };
        // The defaults: everything labelled, except an explicit opt-out.
        let a = scan.admit(&DockerSettings::default());
        let (routes, findings, excluded) = shown(&a);
        assert_eq!(routes, ["a_plain a.test", "b_in b.test"]);
        assert_eq!(
            findings,
            [
                "error d_bad portico.enable: \"sure\" is not true or false",
                "error e_dev com.docker.lb.colour: unknown label",
            ]
        );
        assert_eq!(excluded, ["c_out: portico.enable=false"]);

        // Opt-in only.
        let settings = DockerSettings {
            exposed_by_default: false,
            ..DockerSettings::default()
        };
        let (routes, _, excluded) = shown(&scan.admit(&settings));
        assert_eq!(routes, ["b_in b.test"]);
        assert_eq!(
            excluded,
            [
                "a_plain: [docker] exposed_by_default = false and no portico.enable=true label",
                "c_out: portico.enable=false",
                "e_dev: [docker] exposed_by_default = false and no portico.enable=true label",
            ]
        );

        // A constraint: only stack prod, or anything with no namespace
        // that is not the bad one.
        let text = r#"label("com.docker.stack.namespace") == "prod" || !has_label("com.docker.stack.namespace") && label("portico.enable") != "sure""#;
        let settings = DockerSettings {
            constraints: Some(labels::Constraint::parse(text).unwrap()),
            ..DockerSettings::default()
        };
        let (routes, findings, excluded) = shown(&scan.admit(&settings));
        assert_eq!(routes, ["a_plain a.test", "b_in b.test"]);
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(
            excluded,
            [
                "c_out: portico.enable=false".to_owned(),
                format!("d_bad: does not satisfy [docker] constraints: {text}"),
                format!("e_dev: does not satisfy [docker] constraints: {text}"),
            ]
        );
    }

    #[test]
    fn a_host_belongs_to_the_oldest_claimants_stack() {
        let ns = "com.docker.stack.namespace";
        let scan = scan_of(&[
            // Newer than prod_web, and first by name: still refused.
            (
                "a_dev_evil",
                &[("com.docker.lb.hosts", "shop.test,dev.test"), (ns, "dev")],
                "2026-03-01T00:00:00Z",
            ),
            (
                "b_dev_only",
                &[("com.docker.lb.hosts", "shop.test"), (ns, "dev")],
                "2026-03-01T00:00:00Z",
            ),
            (
                "prod_canary",
                &[("com.docker.lb.hosts", "shop.test"), (ns, "prod")],
                "2026-02-01T00:00:00Z",
            ),
            (
                "prod_web",
                &[("com.docker.lb.hosts", "shop.test"), (ns, "prod")],
                "2026-01-01T00:00:00Z",
            ),
            // No namespace: the namespace "".
            (
                "x_loose",
                &[("com.docker.lb.hosts", "loose.test")],
                "2026-01-01T00:00:00Z",
            ),
            (
                "y_loose",
                &[("com.docker.lb.hosts", "loose.test")],
                "2026-01-02T00:00:00Z",
            ),
            (
                "z_prod",
                &[("com.docker.lb.hosts", "loose.test"), (ns, "prod")],
                "2026-01-03T00:00:00Z",
            ),
        ]);
        let a = scan.admit(&DockerSettings::default());
        assert_eq!(
            routed(&a),
            [
                "a_dev_evil dev.test",
                "prod_canary shop.test",
                "prod_web shop.test",
                "x_loose loose.test",
                "y_loose loose.test",
            ]
        );
        let findings: Vec<String> = a.findings.iter().map(|f| f.to_string()).collect();
        let refused = |who: &str, host: &str, owner: &str, theirs: &str, ours: &str| {
            format!("error {who} com.docker.lb.hosts: host {host} belongs to service {owner} (stack namespace {theirs}); this service's stack namespace is {ours}, so it may not join it (set [docker] allow_shared_hosts = true to let them share hosts)")
        };
        assert_eq!(
            findings,
            [
                refused("a_dev_evil", "shop.test", "prod_web", "\"prod\"", "\"dev\""),
                refused("b_dev_only", "shop.test", "prod_web", "\"prod\"", "\"dev\""),
                refused("z_prod", "loose.test", "x_loose", "none", "\"prod\""),
            ]
        );
        // Allowed to share: everyone joins, as Interlock has it.
        let settings = DockerSettings {
            allow_shared_hosts: true,
            ..DockerSettings::default()
        };
        let a = scan.admit(&settings);
        assert_eq!(a.candidates.len(), 7);
        assert!(a.findings.is_empty());
        // Same creation time: by name.
        let tie = scan_of(&[
            (
                "b_prod",
                &[("com.docker.lb.hosts", "t.test"), (ns, "prod")],
                "2026-01-01T00:00:00Z",
            ),
            (
                "a_dev",
                &[("com.docker.lb.hosts", "t.test"), (ns, "dev")],
                "2026-01-01T00:00:00Z",
            ),
        ]);
        assert_eq!(
            routed(&tie.admit(&DockerSettings::default())),
            ["a_dev t.test"]
        );
    }

    /// The services a scan's labels translate to (neither networks reached
    /// nor damping applied, as [`DockerProvider::sync`] would).
    fn view_of(scan: &Scan) -> DockerView {
        DockerView {
            services: scan
                .workloads()
                .iter()
                .filter_map(|(w, _)| labels::translate(w).service)
                .collect(),
            ..DockerView::default()
        }
    }

    /// Recorded from a real engine (20.10, swarm mode): service fx_foo with
    /// two replicas on overlay fx_net; fx_bad with a typo'd label on two
    /// networks; a plain container fx_plain on the default bridge.
    #[test]
    fn recorded_engine_json_becomes_workloads_and_services() {
        let scan = scan_from_fixtures();
        assert!(scan.swarm);
        let workloads = scan.workloads();
        let names: Vec<&str> = workloads.iter().map(|(w, _)| w.name.as_str()).collect();
        assert_eq!(names, ["fx_bad", "fx_foo", "fx_plain"]);

        let foo = &workloads[1].0;
        assert_eq!(foo.kind, WorkloadKind::Service);
        assert_eq!(foo.networks, ["fx_net"]);
        assert_eq!(foo.addresses["fx_net"].len(), 2);
        assert!(foo.vips.contains_key("fx_net"));
        let t = labels::translate(foo);
        let svc = t.service.expect("fx_foo routes");
        assert_eq!(svc.hosts[0].to_string(), "foo.app.test");
        assert_eq!(svc.upstreams.len(), 2);
        assert!(svc
            .upstreams
            .iter()
            .all(|u| u.port() == 8080 && u.ip().to_string().starts_with("10.0.1.")));
        // Its sticky_session_cookie label is implemented: no finding.
        assert!(t.findings.is_empty(), "{:?}", t.findings);
        assert_eq!(svc.sticky_session_cookie.as_deref(), Some("sid"));

        let bad = labels::translate(&workloads[0].0);
        assert!(bad.service.is_none());
        let msgs: Vec<String> = bad.findings.iter().map(|f| f.to_string()).collect();
        assert!(
            msgs.iter().any(|m| m
                .contains("com.docker.lb.host: unknown label (did you mean com.docker.lb.hosts?)")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("several networks (fx_net, fx_other)")),
            "{msgs:?}"
        );

        let plain = &workloads[2].0;
        assert_eq!(plain.kind, WorkloadKind::Container);
        assert_eq!(plain.networks, ["bridge"]);
        let t = labels::translate(plain);
        assert_eq!(t.service.unwrap().upstreams[0].port(), 8080);
    }

    #[test]
    fn merge_lets_file_services_win_and_reports_it() {
        let file = Config::parse(
            "[[service]]\nname = \"web\"\nhosts = [\"foo.app.test\"]\nupstreams = [\"127.0.0.1:1\"]\n",
            "f",
        )
        .unwrap();
        let docker = view_of(&scan_from_fixtures());
        let (merged, findings) = merge(&file, &docker);
        let names: Vec<&str> = merged.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "fx_plain"]);
        assert!(
            findings[0]
                .to_string()
                .contains("host foo.app.test is also claimed by service web in the config file"),
            "{findings:?}"
        );
    }

    fn provider(damping_changes: usize, damping_interval: Duration) -> DockerProvider {
        let settings = DockerSettings {
            damping_changes,
            damping_interval,
            ..DockerSettings::default()
        };
        DockerProvider {
            engine: Engine::from_settings(&settings).unwrap(),
            settings,
            own: None,
            proxies: ProxyNetworks::Own,
            flaps: HashMap::new(),
            converging: false,
            dead: HashSet::new(),
            routed: HashMap::new(),
            stats: Arc::default(),
        }
    }

    #[tokio::test]
    async fn a_service_must_share_a_network_with_proxies_elsewhere() {
        let mut p = provider(5, Duration::from_secs(1));
        p.set_proxy_networks(ProxyNetworks::Declared(
            ["apps".to_owned(), "web".to_owned()].into(),
        ));
        assert_eq!(p.reach("apps", None).await, Ok(()));
        let e = p.reach("shop_net", None).await.unwrap_err();
        assert!(
            e.starts_with(
                "no proxy is on network \"shop_net\" (the proxies' networks, [controller] proxy_networks: apps, web): add it to the proxy service's networks"
            ),
            "{e}"
        );
        // Undeclared: nothing to check against, and nothing attached (the
        // engine here is never called).
        p.set_proxy_networks(ProxyNetworks::Unknown);
        assert_eq!(p.reach("shop_net", None).await, Ok(()));
    }

    fn addrs(ports: &[u16]) -> Vec<SocketAddr> {
        ports
            .iter()
            .map(|p| SocketAddr::from(([10, 0, 0, 1], *p)))
            .collect()
    }

    /// A container event as the engine sends it (`docker kill` sends
    /// `kill` with `signal=9`, then `die` with `exitCode=137`; a crash only
    /// `die`; `docker stop` `kill` with `signal=15`, `die`, `stop`).
    fn event(action: &str, id: &str, attributes: serde_json::Value) -> Event {
        serde_json::from_value(serde_json::json!({
            "Type": "container",
            "Action": action,
            "Actor": {"ID": id, "Attributes": attributes},
        }))
        .unwrap()
    }

    /// The upstreams of the scan's workload `name`.
    fn upstreams_of(scan: &Scan, name: &str) -> Vec<IpAddr> {
        let (w, _) = scan
            .workloads()
            .into_iter()
            .find(|(w, _)| w.name == name)
            .unwrap();
        w.addresses.into_values().flatten().collect()
    }

    #[test]
    fn a_container_reported_dead_leaves_at_once_though_its_task_still_says_running() {
        // As recorded: fx_foo's tasks run at 10.0.1.4 (container a) and
        // 10.0.1.3 (container b); plain is fx_plain's container.
        let a = "24efc46ef6561c966ed1fc3b780b3e5c3dee47fbff51746df56dbab6a297ca4b";
        let b = "648172bff5b2ad6465bf9fdcc53235aeda768a83299a6a1884f42fcce784fce5";
        let plain = "ddb67ee9d6de8d3c09c8de6833aeb56356ad99cc9868791c6351fba04d950569";
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut p = provider(2, Duration::from_secs(3600));

        // A SIGHUP (a reload) or the SIGTERM of a stop leaves it routed.
        p.observe(&event("kill", a, serde_json::json!({"signal": "1"})));
        p.observe(&event("kill", a, serde_json::json!({"signal": "15"})));
        let mut scan = scan_from_fixtures();
        p.apply_dead(&mut scan);
        assert_eq!(
            upstreams_of(&scan, "fx_foo"),
            [ip("10.0.1.3"), ip("10.0.1.4")]
        );

        // `die`: the task leaves though the task list (and this node's
        // container list, as recorded) still says running.
        p.observe(&event("die", a, serde_json::json!({"exitCode": "137"})));
        // SIGKILL: dead before its `die` comes; and a plain container alike.
        p.observe(&event("kill", plain, serde_json::json!({"signal": "9"})));
        let mut scan = scan_from_fixtures();
        p.apply_dead(&mut scan);
        assert_eq!(upstreams_of(&scan, "fx_foo"), [ip("10.0.1.3")]);
        assert!(upstreams_of(&scan, "fx_plain").is_empty());
        // Remembered while the lists still show them running.
        assert_eq!(p.dead.len(), 2);

        // Restarted by its restart policy (same ID): routed again.
        p.observe(&event("start", plain, serde_json::json!({})));
        let mut scan = scan_from_fixtures();
        p.apply_dead(&mut scan);
        assert_eq!(upstreams_of(&scan, "fx_plain").len(), 1);
        assert_eq!(p.dead.len(), 1);

        // Other kinds of event (a service's, a network's) change nothing.
        for kind in ["service", "network"] {
            let mut ev = event("die", b, serde_json::json!({}));
            ev.kind = kind.into();
            p.observe(&ev);
        }
        assert_eq!(p.dead.len(), 1);

        // The task list catches up (the task failed, its container is no
        // longer listed): the ID is forgotten, the task stays out by its state.
        let mut scan = scan_from_fixtures();
        for t in &mut scan.tasks {
            if t.status.container_status.container_id == a {
                t.status.state = "failed".into();
            }
        }
        scan.containers.retain(|c| c.id != a);
        p.apply_dead(&mut scan);
        assert!(p.dead.is_empty());
        assert_eq!(upstreams_of(&scan, "fx_foo"), [ip("10.0.1.3")]);

        // A burst of deaths of containers not listed running (another
        // node's, or gone already) is forgotten at the next sync.
        for i in 0..1000 {
            p.observe(&event("die", &format!("gone{i}"), serde_json::json!({})));
        }
        p.apply_dead(&mut scan_from_fixtures());
        assert!(p.dead.is_empty());
    }

    /// The last view loses a dead container's addresses the moment its
    /// death is told, before any scan; the sync that follows agrees.
    #[test]
    fn a_death_takes_its_addresses_out_of_the_last_view_at_once() {
        let a = "24efc46ef6561c966ed1fc3b780b3e5c3dee47fbff51746df56dbab6a297ca4b";
        let plain = "ddb67ee9d6de8d3c09c8de6833aeb56356ad99cc9868791c6351fba04d950569";
        let upstreams = |view: &DockerView, name: &str| -> Vec<String> {
            let s = view.services.iter().find(|s| s.name == name).unwrap();
            s.upstreams.iter().map(|u| u.to_string()).collect()
        };
        let mut p = provider(2, Duration::from_secs(3600));
        let mut scan = scan_from_fixtures();
        p.apply_dead(&mut scan);
        let mut last = Some(view_of(&scan));
        assert_eq!(
            upstreams(last.as_ref().unwrap(), "fx_foo"),
            ["10.0.1.3:8080", "10.0.1.4:8080"]
        );
        let mut published = Vec::new();

        // Not a death, or not a routed container: nothing published.
        for ev in [
            event("kill", a, serde_json::json!({"signal": "15"})),
            event("start", a, serde_json::json!({})),
            event("die", "not-routed", serde_json::json!({"exitCode": "1"})),
        ] {
            died(&mut p, &ev, &mut last, &mut |v| published.push(v));
        }
        assert!(published.is_empty());

        // SIGKILL: out at once, the other service untouched.
        let kill = event("kill", a, serde_json::json!({"signal": "9"}));
        died(&mut p, &kill, &mut last, &mut |v| published.push(v));
        assert_eq!(published.len(), 1);
        assert_eq!(upstreams(&published[0], "fx_foo"), ["10.0.1.3:8080"]);
        assert_eq!(upstreams(&published[0], "fx_plain").len(), 1);
        assert_eq!(last.as_ref(), Some(&published[0]));
        // Its `die` changes nothing more.
        let die = event("die", a, serde_json::json!({"exitCode": "137"}));
        died(&mut p, &die, &mut last, &mut |v| published.push(v));
        assert_eq!(published.len(), 1);
        // A plain container, alike.
        let die = event("die", plain, serde_json::json!({"exitCode": "1"}));
        died(&mut p, &die, &mut last, &mut |v| published.push(v));
        assert_eq!(published.len(), 2);
        assert!(upstreams(&published[1], "fx_plain").is_empty());

        // The next scan, though the task list still says running, agrees.
        let mut scan = scan_from_fixtures();
        p.apply_dead(&mut scan);
        assert_eq!(Some(view_of(&scan)), last);
    }

    #[test]
    fn damping_holds_back_new_tasks_of_a_crash_looping_service_but_drops_dead_ones_at_once() {
        let mut p = provider(2, Duration::from_secs(3600));
        // Changes without failures (a rolling update) pass straight through.
        for ports in [&[1, 2][..], &[2, 3], &[3, 4], &[4, 5]] {
            assert_eq!(p.damp("roll", addrs(ports), Some(0)), addrs(ports));
        }
        // Three failed tasks (more than 2): damped.
        assert_eq!(p.damp("crash", addrs(&[1, 2]), Some(0)), addrs(&[1, 2]));
        let fail = |ids: &[&str]| -> Vec<Failure> {
            ids.iter()
                .map(|t| Failure {
                    task: t.to_string(),
                    at: None,
                })
                .collect()
        };
        let n = p.recent_failures("crash", fail(&["t1", "t2", "t3"]));
        assert_eq!(n, 3);
        // A new task is held back; a dead one leaves at once.
        assert_eq!(p.damp("crash", addrs(&[1, 2, 3]), Some(n)), addrs(&[1, 2]));
        assert_eq!(p.damp("crash", addrs(&[2, 3]), Some(n)), addrs(&[2]));
        assert!(p.next_damping_deadline().is_some());
        // Other services are untouched.
        assert_eq!(p.damp("calm", addrs(&[7]), Some(0)), addrs(&[7]));
        // The same failures seen again are not counted twice.
        assert_eq!(p.recent_failures("crash", fail(&["t1", "t3"])), 3);
        // Failures the engine dates outside the window don't count.
        let old = Failure {
            task: "t0".into(),
            at: Some(std::time::SystemTime::now() - Duration::from_secs(3600)),
        };
        assert_eq!(p.recent_failures("old", vec![old]), 0);
    }

    #[test]
    fn a_damped_service_catches_up_when_its_interval_is_due() {
        let mut p = provider(0, Duration::ZERO);
        assert_eq!(p.damp("crash", addrs(&[1]), Some(1)), addrs(&[1]));
        // Damped, but with a zero interval every change is due at once.
        assert_eq!(p.damp("crash", addrs(&[1, 2]), Some(1)), addrs(&[1, 2]));
    }

    /// A resync of 1,000 labelled services (2 tasks each): every one is
    /// translated. The CPU time is printed, not asserted (a figure, not a test).
    #[test]
    fn a_thousand_services_resync() {
        let mut scan = Scan {
            swarm: true,
            networks: vec![NetworkObj {
                id: "net1".into(),
                name: "apps".into(),
                driver: "overlay".into(),
                attachable: true,
            }],
            ..Scan::default()
        };
        for i in 0..1000u32 {
            let svc: ServiceObj = serde_json::from_value(serde_json::json!({
                "ID": format!("svc{i}"),
                "Spec": {
                    "Name": format!("app{i}"),
                    "Labels": {"com.docker.lb.hosts": format!("app{i}.example.com"), "com.docker.lb.port": "8080"},
                    "TaskTemplate": {"Networks": [{"Target": "net1"}]}
                }
            }))
            .unwrap();
            scan.services.push(svc);
            for t in 0..2u32 {
                scan.tasks.push(serde_json::from_value(serde_json::json!({
                    "ID": format!("task{i}-{t}"),
                    "ServiceID": format!("svc{i}"),
                    "DesiredState": "running",
                    "Status": {"State": "running"},
                    "NetworksAttachments": [{"Network": {"ID": "net1", "Spec": {"Name": "apps"}}, "Addresses": [format!("10.{}.{}.{}/8", i / 256, i % 256, t + 2)]}]
                })).unwrap());
            }
        }
        let start = std::time::Instant::now();
        let services: Vec<Service> = scan
            .workloads()
            .iter()
            .filter_map(|(w, _)| labels::translate(w).service)
            .collect();
        let config = Config {
            services,
            ..Config::default()
        };
        let table = portico_model::RoutingTable::build(&config);
        eprintln!(
            "1,000 services: scan interpreted, translated and compiled in {:?}",
            start.elapsed()
        );
        assert_eq!(config.services.len(), 1000);
        assert!(config.services.iter().all(|s| s.upstreams.len() == 2));
        assert!(table.lookup_site("app999.example.com").is_some());
    }

    #[test]
    fn docker_services_on_one_host_must_agree() {
        let svc = |name: &str, passthrough: bool| Service {
            name: name.into(),
            hosts: vec![portico_model::HostPattern::Exact("shared.test".into())],
            upstreams: addrs(&[1]),
            tls: None,
            ssl_only: false,
            hsts_max_age: None,
            passthrough,
            ..Default::default()
        };
        let file = Config::parse("[proxy]\nhttps_listen = \"127.0.0.1:0\"\n", "f").unwrap();
        let docker = DockerView {
            services: vec![
                svc("a_victim", false),
                svc("b_canary", false),
                svc("c_evil", true),
            ],
            ..DockerView::default()
        };
        let (merged, findings) = merge(&file, &docker);
        let names: Vec<&str> = merged.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a_victim", "b_canary"]);
        assert_eq!(findings.len(), 1);
        assert_eq!(
            findings[0].to_string(),
            "error c_evil com.docker.lb.ssl_passthrough: shares host shared.test with service a_victim but not its ssl_passthrough; services on one host must agree"
        );

        // One pool (host and path) must agree on its settings; another path
        // on the same host is another pool. A dropped service claims
        // nothing: d_api_ok is checked against a_api, not c_api_sticky.
        let at = |name: &str, path: Option<&str>| Service {
            context_root: path.map(str::to_owned),
            ..svc(name, false)
        };
        let docker = DockerView {
            services: vec![
                at("a_api", Some("/api")),
                Service {
                    balance: portico_model::Balance::LeastRequest,
                    ..at("b_root", None)
                },
                Service {
                    sticky_session_cookie: Some("sid".into()),
                    max_body_size: Some(1),
                    ..at("c_api_sticky", Some("/api"))
                },
                at("d_api_ok", Some("/api")),
                Service {
                    default_backend: true,
                    hosts: vec![portico_model::HostPattern::Exact("e.test".into())],
                    ..svc("e_default", false)
                },
                Service {
                    default_backend: true,
                    hosts: vec![portico_model::HostPattern::Exact("f.test".into())],
                    ..svc("f_default", false)
                },
            ],
            ..DockerView::default()
        };
        let (merged, findings) = merge(&file, &docker);
        let names: Vec<&str> = merged.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a_api", "b_root", "d_api_ok", "e_default"]);
        let got: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
        assert_eq!(
            got,
            [
                "error c_api_sticky com.docker.lb.sticky_session_cookie: shares host shared.test and path /api with service a_api but not its sticky_session_cookie; services on one host and path must agree",
                "error c_api_sticky portico.max_body_size: shares host shared.test and path /api with service a_api but not its max_body_size; services on one host and path must agree",
                "error f_default com.docker.lb.default_backend: service e_default already has default_backend; only one service may have it",
            ]
        );

        // The file's default backend comes first; the file's hosts are its own.
        let file = Config::parse(
            "[[service]]\nname = \"web\"\nhosts = [\"shared.test\"]\ndefault_backend = true\n",
            "f",
        )
        .unwrap();
        let docker = DockerView {
            services: vec![Service {
                default_backend: true,
                hosts: vec![portico_model::HostPattern::Exact("e.test".into())],
                ..svc("e_default", false)
            }],
            ..DockerView::default()
        };
        let (merged, findings) = merge(&file, &docker);
        assert_eq!(merged.services.len(), 1);
        assert_eq!(
            findings[0].to_string(),
            "error e_default com.docker.lb.default_backend: service web already has default_backend; only one service may have it"
        );
    }

    /// Recorded from a real engine: one service per label case (created
    /// with `--replicas 0`), so every label and every bad value goes through
    /// the Engine API's JSON, not only through hand-made workloads.
    #[test]
    fn recorded_services_with_every_label_and_bad_value() {
        let read = |name: &str| {
            std::fs::read_to_string(format!(
                "{}/tests/fixtures/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let scan = Scan {
            swarm: true,
            services: serde_json::from_str(&read("services_labels.json")).unwrap(),
            networks: serde_json::from_str(&read("networks_labels.json")).unwrap(),
            ..Scan::default()
        };
        let results: BTreeMap<String, labels::Translation> = scan
            .workloads()
            .into_iter()
            .map(|(w, _)| (w.name.clone(), labels::translate(&w)))
            .collect();
        assert_eq!(results.len(), 16);
        let messages = |name: &str| -> Vec<String> {
            results[name]
                .findings
                .iter()
                .map(|f| f.to_string())
                .collect()
        };

        // Every label at once. As recorded, its redirect comes from a host
        // the service does not serve ("a"), which the rules refuse; with
        // that one label fixed, every label maps onto the model.
        assert_eq!(
            messages("fxl_all"),
            [
                "error fxl_all com.docker.lb.redirects: from http://a: host a is not one of the service's hosts (all.test, *.all.test)",
            ]
        );
        assert!(results["fxl_all"].service.is_none());
        let mut fixed = scan
            .workloads()
            .into_iter()
            .map(|(w, _)| w)
            .find(|w| w.name == "fxl_all")
            .unwrap();
        fixed.labels.insert(
            "com.docker.lb.redirects".into(),
            "http://all.test,https://all.test".into(),
        );
        let t = labels::translate(&fixed);
        let all = t.service.clone().expect("fxl_all routes");
        assert_eq!(all.context_root.as_deref(), Some("/app"));
        assert!(all.context_root_rewrite && all.ip_hash && all.default_backend);
        assert_eq!(all.sticky_session_cookie.as_deref(), Some("sid"));
        assert_eq!(all.service_cluster.as_deref(), Some("us-east"));
        assert_eq!(all.redirects[0].to, "https://all.test");
        assert_eq!(
            all.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            ["all.test", "*.all.test"]
        );
        assert!(all.ssl_only);
        assert_eq!(
            all.tls.as_ref().map(|t| (t.cert.as_str(), t.key.as_str())),
            Some(("all_cert", "all_key"))
        );
        let up = all.upstream.tls.as_ref().unwrap();
        assert!(!up.verify);
        // backend_mode=vip: the service's virtual IP, though no task runs.
        assert_eq!(all.upstreams.len(), 1);
        assert_eq!(all.upstreams[0].port(), 8443);
        assert!(t.findings.is_empty(), "{:?}", t.findings);
        assert!(results["fxl_pass"].service.as_ref().unwrap().passthrough);

        let cases = [
            ("fxl_no_hosts", "error fxl_no_hosts com.docker.lb.hosts: missing"),
            ("fxl_typo_host", "error fxl_typo_host com.docker.lb.host: unknown label (did you mean com.docker.lb.hosts?)"),
            ("fxl_bad_host", "error fxl_bad_host com.docker.lb.hosts: \"bad host.test\": invalid character"),
            ("fxl_no_port", "error fxl_no_port com.docker.lb.port: missing"),
            ("fxl_bad_port", "error fxl_bad_port com.docker.lb.port: \"http\" is not a port"),
            ("fxl_wrong_net", "error fxl_wrong_net com.docker.lb.network: the service is not attached to network \"elsewhere\" (it is on: fxl_net)"),
            ("fxl_bad_bool", "error fxl_bad_bool com.docker.lb.ssl_only: \"maybe\" is not true or false"),
            ("fxl_bad_verify", "error fxl_bad_verify com.docker.lb.ssl_backend_tls_verify: \"strict\" is not"),
            ("fxl_verify_alone", "error fxl_verify_alone com.docker.lb.ssl_backend_tls_verify: only applies with com.docker.lb.ssl_backend=true"),
            ("fxl_bad_mode", "error fxl_bad_mode com.docker.lb.backend_mode: \"dnsrr\" is not \"task\" or \"vip\""),
            ("fxl_cert_alone", "error fxl_cert_alone com.docker.lb.ssl_key: missing"),
            ("fxl_pass_tls", "error fxl_pass_tls com.docker.lb.ssl_passthrough: a passthrough service does not terminate TLS"),
            ("fxl_unknown", "error fxl_unknown com.docker.lb.colour: unknown label"),
            ("fxl_two_nets", "error fxl_two_nets com.docker.lb.network: missing, and the service is on several networks (fxl_net, fxl_other)"),
        ];
        for (name, want) in cases {
            assert!(results[name].service.is_none(), "{name} should be skipped");
            let got = messages(name);
            assert!(
                got.iter().any(|m| m.starts_with(want)),
                "{name}: want {want:?}, got {got:?}"
            );
        }
    }
}
