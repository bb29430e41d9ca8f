//! `GET /metrics`: the proxy's counters (see `portico_proxy::metrics`), the
//! providers' and the process's, in the Prometheus text format (or
//! OpenMetrics when the scraper asks for it). A controller's show its
//! proxies and published versions instead of a proxy's counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use portico_discovery::docker::DockerStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::history::Source;
use portico_cluster::{Controller as ClusterController, LinkStatus, ProxyStatus, SyncState};
use portico_proxy::metrics::{Labels, ProxyCollector};
use portico_proxy::Proxy;

const SOURCES: [Source; 4] = [
    Source::File,
    Source::Docker,
    Source::FileAndDocker,
    Source::Controller,
];

/// What became of a provider's report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new version, applied.
    Applied = 0,
    /// Nothing changed: same version.
    Unchanged = 1,
    /// Invalid: the version in force was kept.
    Rejected = 2,
}

const OUTCOMES: [&str; 3] = ["applied", "unchanged", "rejected"];

/// Reloads by source and outcome, and when the last one was applied.
#[derive(Debug, Default)]
pub struct Reloads {
    counts: [[AtomicU64; OUTCOMES.len()]; SOURCES.len()],
    last_applied_unix: AtomicU64,
}

impl Reloads {
    pub fn record(&self, source: Source, outcome: Outcome) {
        let s = SOURCES.iter().position(|x| *x == source).unwrap_or(0);
        self.counts[s][outcome as usize].fetch_add(1, Relaxed);
        if outcome == Outcome::Applied {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.last_applied_unix.store(now, Relaxed);
        }
    }
}

#[derive(Debug)]
struct ReloadCollector(Arc<Reloads>);

impl Collector for ReloadCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = encoder.encode_descriptor(
            "portico_config_reloads",
            "Reports from the providers, by source and outcome (applied, unchanged, rejected)",
            None,
            MetricType::Counter,
        )?;
        for (s, source) in SOURCES.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                let labels = [("source", source.as_str()), ("outcome", *outcome)];
                let n = self.0.counts[s][o].load(Relaxed);
                ConstCounter::new(n).encode(m.encode_family(&Labels(&labels))?)?;
            }
        }
        let at = self.0.last_applied_unix.load(Relaxed);
        if at > 0 {
            let m = encoder.encode_descriptor(
                "portico_config_last_reload_success_timestamp",
                "When a new config version was last applied (Unix time)",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            ConstGauge::new(at as i64).encode(m)?;
        }
        Ok(())
    }
}

/// The process's own figures under the names every Prometheus client
/// library uses (`process_cpu_seconds_total`, …), read from /proc.
#[derive(Debug)]
struct ProcessCollector;

/// `/proc/self/stat` counts CPU time in clock ticks of `USER_HZ`, which the
/// kernel fixes at 100 for every architecture's user-space ABI.
const USER_HZ: f64 = 100.0;

struct ProcessFigures {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    start_time: f64,
    open_fds: u64,
    max_fds: Option<u64>,
    threads: u64,
}

fn process_figures() -> Option<ProcessFigures> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name, in parentheses, may hold spaces: fields count from
    // the last `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name, field 3 (state) is index 0: utime is field 14.
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let cpu_ticks = field(14)? + field(15)?;
    let threads = field(20)?;
    let start_ticks = field(22)?;
    let virtual_bytes = field(23)?;
    let boot_time: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let resident_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        });
    Some(ProcessFigures {
        cpu_seconds: cpu_ticks as f64 / USER_HZ,
        resident_bytes: resident_kib * 1024,
        virtual_bytes,
        start_time: boot_time as f64 + start_ticks as f64 / USER_HZ,
        open_fds,
        max_fds,
        threads,
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = process_figures() else {
            return Ok(());
        };
        let m = encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        ConstCounter::new(p.cpu_seconds).encode(m)?;
        let gauges: [(&str, &str, Option<Unit>, f64); 5] = [
            (
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                p.resident_bytes as f64,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                Some(Unit::Bytes),
                p.virtual_bytes as f64,
            ),
            (
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(Unit::Seconds),
                p.start_time,
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                None,
                p.open_fds as f64,
            ),
            ("process_threads", "OS threads", None, p.threads as f64),
        ];
        for (name, help, unit, value) in gauges {
            let m = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
            ConstGauge::new(value).encode(m)?;
        }
        if let Some(max) = p.max_fds {
            let m = encoder.encode_descriptor(
                "process_max_fds",
                "Limit on open file descriptors",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(max as f64).encode(m)?;
        }
        Ok(())
    }
}

/// The Docker provider's activity once it has connected, and its latest
/// findings, for `/metrics` and the status page.
#[derive(Debug, Default)]
pub struct DockerSlot {
    stats: Mutex<Option<Arc<DockerStats>>>,
    findings: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DockerSlot {
    pub fn set(&self, stats: Arc<DockerStats>) {
        *lock(&self.stats) = Some(stats);
    }

    pub fn get(&self) -> Option<Arc<DockerStats>> {
        lock(&self.stats).clone()
    }

    pub fn set_findings(&self, findings: Vec<String>) {
        *lock(&self.findings) = findings;
    }

    pub fn findings(&self) -> Vec<String> {
        lock(&self.findings).clone()
    }
}

#[derive(Debug)]
struct DockerCollector(Arc<DockerSlot>);

impl Collector for DockerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self.0.get() else {
            return Ok(());
        };
        let counters = [
            (
                "portico_docker_events",
                "Docker events that led to a sync",
                &s.events,
            ),
            (
                "portico_docker_resyncs",
                "Subscriptions to Docker's event stream (the first, and one after each lost stream, each followed by a full resync)",
                &s.subscriptions,
            ),
            (
                "portico_docker_syncs",
                "Reads of the engine's services, tasks and containers",
                &s.syncs,
            ),
            (
                "portico_docker_sync_failures",
                "Reads of the engine that failed (the last routes were kept)",
                &s.sync_failures,
            ),
        ];
        for (name, help, n) in counters {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(n.load(Relaxed)).encode(m)?;
        }
        let m = encoder.encode_descriptor(
            "portico_docker_damped_services",
            "Services whose updates are damped because they keep restarting",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.damped.load(Relaxed) as i64).encode(m)?;
        let m = encoder.encode_descriptor(
            "portico_docker_connected",
            "1 while the Docker event stream is up",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(s.connected.load(Relaxed))).encode(m)?;
        Ok(())
    }
}

/// A controller's view of its proxies: how many per service cluster, what
/// each has applied and whether that is the version in force, its NACKs,
/// its heartbeats. One series per connected proxy: as many as the
/// deployment has proxies, gone when a proxy leaves.
struct ClusterCollector(ClusterController);

impl std::fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCollector").finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch, for timestamp gauges.
fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let published = self.0.published();
        let proxies = self.0.proxies();
        let sync = |p: &ProxyStatus| {
            p.sync(
                published
                    .iter()
                    .find(|(name, _)| *name == p.service_cluster)
                    .map(|(_, v)| v),
            )
        };

        let mut m = encoder.encode_descriptor(
            "portico_controller_published",
            "The config version published to each service cluster",
            None,
            MetricType::Info,
        )?;
        for (cluster, version) in &published {
            let version = version.to_string();
            let labels = [("service_cluster", cluster.as_str()), ("version", &version)];
            m.encode_family(&Labels(&labels))?
                .encode_info(&Labels(&[]))?;
        }

        // Every cluster with a published config or a proxy, so that a
        // cluster left without proxies reads 0 rather than vanishing.
        let mut counts: std::collections::BTreeMap<&str, i64> =
            published.iter().map(|(c, _)| (c.as_str(), 0)).collect();
        for p in &proxies {
            *counts.entry(p.service_cluster.as_str()).or_default() += 1;
        }
        let mut m = encoder.encode_descriptor(
            "portico_controller_proxies",
            "Proxies connected, by service cluster",
            None,
            MetricType::Gauge,
        )?;
        for (cluster, n) in &counts {
            ConstGauge::new(*n)
                .encode(m.encode_family(&Labels(&[("service_cluster", cluster)]))?)?;
        }

        let nacks = self.0.nacks_total();
        let mut m = encoder.encode_descriptor(
            "portico_controller_nacks",
            "Snapshots proxies refused, by service cluster, since the controller started",
            None,
            MetricType::Counter,
        )?;
        for cluster in counts.keys() {
            let n = nacks.get(*cluster).copied().unwrap_or(0);
            ConstCounter::new(n)
                .encode(m.encode_family(&Labels(&[("service_cluster", cluster)]))?)?;
        }

        let m = encoder.encode_descriptor(
            "portico_controller_departed_proxies",
            "Proxies whose stream ended in the last hour and that have not come back",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.0.departed().len() as i64).encode(m)?;

        let mut m = encoder.encode_descriptor(
            "portico_controller_proxy",
            "Each connected proxy: where its stream comes from and the version it has applied \
             (12 hex digits; none before its first)",
            None,
            MetricType::Info,
        )?;
        for p in &proxies {
            // The IP only: the port is the stream's ephemeral one, a new series
            // at every reconnect.
            let address = p.address.ip().to_string();
            let applied = p
                .applied_version
                .as_deref()
                .map_or("none", |v| v.get(..12).unwrap_or(v));
            let labels = [
                ("proxy_id", p.id.as_str()),
                ("service_cluster", p.service_cluster.as_str()),
                ("address", address.as_str()),
                ("applied_version", applied),
            ];
            m.encode_family(&Labels(&labels))?
                .encode_info(&Labels(&[]))?;
        }
        type PerProxy = fn(&ProxyStatus, SyncState) -> f64;
        let per_proxy: [(&str, &str, Option<Unit>, PerProxy); 4] = [
            (
                "portico_controller_proxy_current",
                "1 when the proxy has applied the version published to its service cluster",
                None,
                |_, sync| f64::from(u8::from(sync == SyncState::Current)),
            ),
            (
                "portico_controller_proxy_nacking",
                "1 when the proxy's last NACK refused the version published to its service cluster",
                None,
                |_, sync| f64::from(u8::from(sync == SyncState::Nacking)),
            ),
            (
                "portico_controller_proxy_last_heartbeat_timestamp",
                "When anything last came up the proxy's stream (Unix time)",
                Some(Unit::Seconds),
                |p, _| unix(p.last_heartbeat),
            ),
            (
                "portico_controller_proxy_connected_timestamp",
                "When the proxy's stream began (Unix time)",
                Some(Unit::Seconds),
                |p, _| unix(p.connected_since),
            ),
        ];
        for (name, help, unit, value) in per_proxy {
            let mut m = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
            for p in &proxies {
                let labels = [
                    ("proxy_id", p.id.as_str()),
                    ("service_cluster", p.service_cluster.as_str()),
                ];
                ConstGauge::new(value(p, sync(p))).encode(m.encode_family(&Labels(&labels))?)?;
            }
        }
        Ok(())
    }
}

/// A cluster proxy's link to its controller, once it has one (`portico
/// proxy`; empty in the other roles).
#[derive(Debug, Default)]
pub struct LinkSlot(Mutex<Option<tokio::sync::watch::Receiver<LinkStatus>>>);

impl LinkSlot {
    pub fn set(&self, status: tokio::sync::watch::Receiver<LinkStatus>) {
        *lock(&self.0) = Some(status);
    }
}

/// The proxy's side of the stream: what an alert on "this proxy lost its
/// controller" or "this proxy is stuck on an old version" needs.
#[derive(Debug)]
struct LinkCollector(Arc<LinkSlot>);

impl Collector for LinkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(status) = lock(&self.0 .0).as_ref().map(|s| s.borrow().clone()) else {
            return Ok(());
        };
        let m = encoder.encode_descriptor(
            "portico_cluster_link_up",
            "1 while the stream to the controller is established",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(status.connected)).encode(m)?;
        let counters = [
            (
                "portico_cluster_link_connects",
                "Streams to the controller established",
                status.connects,
            ),
            (
                "portico_cluster_link_losses",
                "Established streams to the controller lost (the last version kept serving)",
                status.losses,
            ),
        ];
        for (name, help, n) in counters {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(n).encode(m)?;
        }
        if let Some(v) = status.applied {
            let mut m = encoder.encode_descriptor(
                "portico_cluster_applied_info",
                "The controller's snapshot version this proxy serves (as the controller names it)",
                None,
                MetricType::Gauge,
            )?;
            let version = portico_cluster::stream::version_text(&v);
            ConstGauge::new(1).encode(m.encode_family(&Labels(&[("version", &version)]))?)?;
        }
        Ok(())
    }
}

/// Everything `/metrics` shows, built once at startup.
pub struct Metrics {
    registry: Registry,
    pub reloads: Arc<Reloads>,
    pub docker: Arc<DockerSlot>,
    pub link: Arc<LinkSlot>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A proxy's: its own counters, the providers' and the process's.
    pub fn new(proxy: Weak<Proxy>) -> Metrics {
        Metrics::with(Box::new(ProxyCollector(proxy)))
    }

    /// A controller's: its proxies, the providers' and the process's.
    pub fn controller(cluster: ClusterController) -> Metrics {
        Metrics::with(Box::new(ClusterCollector(cluster)))
    }

    /// `role`'s figures first, then what every role has.
    fn with(role: Box<dyn Collector>) -> Metrics {
        let mut registry = Registry::default();
        let reloads = Arc::new(Reloads::default());
        registry.register_collector(role);
        registry.register_collector(Box::new(ReloadCollector(reloads.clone())));
        registry.register_collector(Box::new(ProcessCollector));
        let docker = Arc::new(DockerSlot::default());
        registry.register_collector(Box::new(DockerCollector(docker.clone())));
        let link = Arc::new(LinkSlot::default());
        registry.register_collector(Box::new(LinkCollector(link.clone())));
        Metrics {
            registry,
            reloads,
            docker,
            link,
        }
    }

    /// The exposition, and its content type: OpenMetrics when `accept`
    /// asks for it, else Prometheus' text format (0.0.4).
    pub fn render(&self, accept: Option<&str>) -> (String, &'static str) {
        let mut out = String::with_capacity(16 * 1024);
        let openmetrics = accept.is_some_and(|a| a.contains("application/openmetrics-text"));
        // Writing to a String cannot fail; an encoder error would be a bug
        // in a collector, and a partial page is still worth serving.
        if openmetrics {
            let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
            (
                out,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        } else {
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
            (
                out,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )
        }
    }
}
