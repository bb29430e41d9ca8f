//! What the data plane counts, for Prometheus: per service, per upstream,
//! per listener. The counters are plain atomics kept where the request path
//! already is (a service's [`ServiceStats`] in its pools, an upstream's
//! [`UpstreamStats`] in the upstream), so counting costs a few relaxed
//! adds and no lookup, lock or allocation. They are carried across reloads
//! by service name and upstream, like health; what leaves the config leaves
//! the exposition with it, since [`Collector`] walks the snapshot in force
//! at scrape time. Nothing a client sends becomes a label value: labels are
//! service names, upstream addresses and fixed sets of words.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeMetric, LabelSetEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;

use crate::admission::Slot;
use crate::error::ProxyError;
use crate::Proxy;

/// Request and response times, in seconds: a proxy's answers take from
/// under a millisecond (a pooled connection on the same host) to the
/// longest upstream timeouts.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram of durations over [`DURATION_BUCKETS`], lock-free: one
/// bucket and the sum are bumped per observation; cumulative counts are
/// made at scrape time.
#[derive(Default)]
pub struct Histogram {
    /// Per bucket (not cumulative), the last one for +Inf.
    counts: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Sum in seconds, count, and each bucket's own count (+Inf included):
    /// the encoder makes them cumulative.
    fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let bound = DURATION_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
                (bound, c.load(Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        (self.sum_micros.load(Relaxed) as f64 / 1e6, count, buckets)
    }
}

/// Method classes: the common methods by name, any other as `other`, so a
/// client inventing methods cannot grow the label set.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];

pub fn method_class(method: &str) -> u8 {
    METHODS[..7].iter().position(|m| *m == method).unwrap_or(7) as u8
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// One service's requests, whichever upstream (or Portico itself) answered.
#[derive(Default)]
pub struct ServiceStats {
    requests: [[AtomicU64; STATUS_CLASSES.len()]; METHODS.len()],
    duration: Histogram,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
    /// The last few requests Portico failed, for the status page.
    recent: Mutex<VecDeque<RecentError>>,
}

/// How many failed requests a service remembers.
const RECENT_ERRORS: usize = 10;

/// A request Portico could not get answered by the service.
#[derive(Clone, Debug)]
pub struct RecentError {
    pub at: SystemTime,
    pub status: u16,
    pub message: String,
}

impl ServiceStats {
    /// Remembers a failed request (only the last [`RECENT_ERRORS`]).
    pub(crate) fn error(&self, status: u16, error: &ProxyError) {
        let mut recent = crate::io::lock(&self.recent);
        if recent.len() == RECENT_ERRORS {
            recent.pop_front();
        }
        recent.push_back(RecentError {
            at: SystemTime::now(),
            status,
            message: error.to_string(),
        });
    }

    /// The last failed requests, oldest first.
    pub fn recent_errors(&self) -> Vec<RecentError> {
        crate::io::lock(&self.recent).iter().cloned().collect()
    }

    /// Requests by status class (`1xx` … `5xx`), of every method.
    pub fn by_status(&self) -> [(&'static str, u64); 5] {
        std::array::from_fn(|c| {
            let n = self.requests.iter().map(|m| m[c].load(Relaxed)).sum();
            (STATUS_CLASSES[c], n)
        })
    }

    pub fn add_request_bytes(&self, n: u64) {
        self.request_bytes.fetch_add(n, Relaxed);
    }
}

/// A request counted against its service from its start to the end of its
/// response, when [`Tally::finish`] records it.
pub struct Tally {
    stats: Arc<ServiceStats>,
    method: u8,
    start: Instant,
}

impl Tally {
    pub fn new(stats: Arc<ServiceStats>, method: &str, start: Instant) -> Tally {
        Tally::with_class(stats, method_class(method), start)
    }

    /// With the method's class already worked out ([`method_class`]).
    pub fn with_class(stats: Arc<ServiceStats>, method: u8, start: Instant) -> Tally {
        Tally {
            stats,
            method,
            start,
        }
    }

    pub fn stats(&self) -> &Arc<ServiceStats> {
        &self.stats
    }

    pub fn finish(self, status: u16, response_bytes: u64) {
        let s = &self.stats;
        s.requests[usize::from(self.method)][status_class(status)].fetch_add(1, Relaxed);
        s.duration.observe(self.start.elapsed());
        s.response_bytes.fetch_add(response_bytes, Relaxed);
    }
}

/// Why an upstream failed a request (connect, timeout, reset, 5xx).
#[derive(Clone, Copy)]
pub enum Failure {
    /// No connection (refused, unreachable, TLS, or too slow to connect).
    Connect = 0,
    /// Sent, and no response within `upstream_timeout`.
    Timeout = 1,
    /// The connection broke before a response head.
    Reset = 2,
    /// The upstream answered with a 5xx status.
    Status5xx = 3,
}

const FAILURES: [&str; 4] = ["connect", "timeout", "reset", "5xx"];

/// One upstream's attempts, kept with the upstream (and carried to the one
/// that replaces it on a reload).
#[derive(Default)]
pub struct UpstreamStats {
    requests: AtomicU64,
    failures: [AtomicU64; FAILURES.len()],
    /// Time to the response head.
    response_time: Histogram,
    /// The last probe's outcome, while probes run (`probe_interval`).
    probe: Mutex<Option<ProbeResult>>,
}

/// What the last probe of an upstream found.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    pub at: SystemTime,
    pub ok: bool,
    /// `status 200`, or why there was no answer.
    pub said: String,
    pub took: Duration,
}

impl UpstreamStats {
    /// Records a probe's outcome; a change between passing and failing is
    /// one log line.
    pub(crate) fn record_probe(
        &self,
        addr: std::net::SocketAddr,
        host: &http::HeaderValue,
        ok: bool,
        result: Result<u16, String>,
        took: Duration,
    ) {
        let said = match result {
            Ok(status) => format!("status {status}"),
            Err(e) => e,
        };
        let host = host.to_str().unwrap_or("-");
        let mut last = crate::io::lock(&self.probe);
        match (last.as_ref().map(|p| p.ok), ok) {
            (Some(true) | None, false) => {
                tracing::warn!(upstream = %addr, host, result = %said, "probe failing")
            }
            (Some(false), true) => {
                tracing::info!(upstream = %addr, host, result = %said, "probe passing again")
            }
            _ => {}
        }
        *last = Some(ProbeResult {
            at: SystemTime::now(),
            ok,
            said,
            took,
        });
    }

    pub(crate) fn forget_probe(&self) {
        *crate::io::lock(&self.probe) = None;
    }

    /// The last probe's outcome, if probes run.
    pub fn last_probe(&self) -> Option<ProbeResult> {
        crate::io::lock(&self.probe).clone()
    }

    pub fn attempt(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    pub fn answered(&self, took: Duration, status: u16) {
        self.response_time.observe(took);
        if status >= 500 {
            self.failed(Failure::Status5xx);
        }
    }

    pub fn failed(&self, why: Failure) {
        self.failures[why as usize].fetch_add(1, Relaxed);
    }
}

/// Which listener a connection came in on.
#[derive(Clone, Copy)]
pub enum Listener {
    Http = 0,
    Https = 1,
}

const LISTENERS: [&str; 2] = ["http", "https"];

/// What a client connection speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1 = 0,
    H2 = 1,
    Passthrough = 2,
    Websocket = 3,
}

const PROTOCOLS: [&str; 4] = ["http1", "h2", "passthrough", "websocket"];

/// Why a TLS handshake failed: a fixed set, whatever the client sent.
#[derive(Clone, Copy)]
pub enum TlsFailure {
    /// Not TLS, or closed or silent before a whole ClientHello.
    NoClientHello = 0,
    /// No certificate for the server name asked for.
    UnknownName = 1,
    /// No protocol version, cipher suite or other parameter in common.
    Incompatible = 2,
    /// The client sent an alert (it distrusts the certificate, typically).
    AlertReceived = 3,
    /// Not done within `client_header_timeout`.
    Timeout = 4,
    /// Anything else (malformed messages, I/O errors).
    Other = 5,
}

const TLS_FAILURES: [&str; 6] = [
    "no_client_hello",
    "unknown_name",
    "incompatible",
    "alert_received",
    "timeout",
    "other",
];

impl TlsFailure {
    /// Classifies a failed rustls handshake, as tokio-rustls reports it.
    pub fn of(e: &std::io::Error) -> TlsFailure {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::PeerIncompatible(_)) => TlsFailure::Incompatible,
            Some(rustls::Error::AlertReceived(_)) => TlsFailure::AlertReceived,
            _ => TlsFailure::Other,
        }
    }
}

/// Requests Portico answered itself before choosing a service's upstreams.
const UNFORWARDED: [&str; 11] = [
    "bad_request",
    "no_route",
    "no_path",
    "misdirected",
    "method_not_allowed",
    "too_large",
    "no_upstreams",
    "redirect",
    "other",
    "health",
    "not_implemented",
];

/// `health_uri` requests, in [`UNFORWARDED`].
const HEALTH: usize = 9;

pub(crate) fn unforwarded_reason(error: Option<&ProxyError>) -> usize {
    match error {
        None => 7,
        Some(ProxyError::BadRequest(_)) => 0,
        Some(ProxyError::NoRoute { .. }) => 1,
        Some(ProxyError::NoPath { .. }) => 2,
        Some(ProxyError::Misdirected { .. }) => 3,
        Some(ProxyError::MethodNotAllowed(_)) => 4,
        Some(ProxyError::TooLarge { .. }) => 5,
        Some(ProxyError::NoUpstreams { .. }) => 6,
        Some(ProxyError::NotImplemented(_)) => 10,
        Some(_) => 8,
    }
}

/// The proxy's own counters: connections and handshakes, and requests no
/// service was chosen for.
#[derive(Default)]
pub struct ProxyStats {
    open: [[AtomicI64; PROTOCOLS.len()]; LISTENERS.len()],
    accepted: [[AtomicU64; PROTOCOLS.len()]; LISTENERS.len()],
    tls_handshakes: AtomicU64,
    tls_failures: [AtomicU64; TLS_FAILURES.len()],
    unforwarded: [AtomicU64; UNFORWARDED.len()],
}

impl ProxyStats {
    /// Counts a connection as open (and accepted) until the guard drops;
    /// the guard also holds the connection's place under
    /// `max_client_connections`.
    pub(crate) fn open(
        self: &Arc<Self>,
        listener: Listener,
        protocol: Protocol,
        slot: Option<Arc<Slot>>,
    ) -> OpenConn {
        self.accepted[listener as usize][protocol as usize].fetch_add(1, Relaxed);
        self.open[listener as usize][protocol as usize].fetch_add(1, Relaxed);
        OpenConn {
            stats: self.clone(),
            listener,
            protocol,
            slot,
        }
    }

    pub fn tls_handshake(&self) {
        self.tls_handshakes.fetch_add(1, Relaxed);
    }

    pub fn tls_failed(&self, why: TlsFailure) {
        self.tls_failures[why as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn unforwarded(&self, error: Option<&ProxyError>) {
        self.unforwarded[unforwarded_reason(error)].fetch_add(1, Relaxed);
    }

    /// A load balancer's check of `health_uri`.
    pub(crate) fn health_checked(&self) {
        self.unforwarded[HEALTH].fetch_add(1, Relaxed);
    }
}

/// A client connection counted as open; see [`ProxyStats::open`].
pub struct OpenConn {
    stats: Arc<ProxyStats>,
    listener: Listener,
    protocol: Protocol,
    /// Shared with a websocket tunnel, which outlives the connection's task.
    slot: Option<Arc<Slot>>,
}

impl OpenConn {
    /// The connection's place under `max_client_connections`.
    pub(crate) fn slot(&self) -> Option<Arc<Slot>> {
        self.slot.clone()
    }

    /// The connection turned out to speak `protocol` (h2c after the
    /// preface, a websocket after the upgrade).
    pub fn now(&mut self, protocol: Protocol) {
        if protocol != self.protocol {
            let l = self.listener as usize;
            self.stats.open[l][self.protocol as usize].fetch_sub(1, Relaxed);
            self.stats.open[l][protocol as usize].fetch_add(1, Relaxed);
            self.stats.accepted[l][protocol as usize].fetch_add(1, Relaxed);
            self.protocol = protocol;
        }
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.stats.open[self.listener as usize][self.protocol as usize].fetch_sub(1, Relaxed);
    }
}

/// A label set made at scrape time from `(name, value)` pairs (also used
/// by the binary's collectors).
pub struct Labels<'a>(pub &'a [(&'static str, &'a str)]);

impl prometheus_client::encoding::EncodeLabelSet for Labels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        for (k, v) in self.0 {
            (*k, *v).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

use prometheus_client::encoding::EncodeLabel as _;

/// A value encoded once, as the metric type its descriptor says.
enum Value<'a> {
    Counter(u64),
    Gauge(i64),
    GaugeF(f64),
    Histogram(&'a Histogram),
}

impl EncodeMetric for Value<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Value::Counter(v) => encoder.encode_counter::<NoLabelSet, _, u64>(v, None),
            Value::Gauge(v) => encoder.encode_gauge(v),
            Value::GaugeF(v) => encoder.encode_gauge(v),
            Value::Histogram(h) => {
                let (sum, count, buckets) = h.read();
                encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
            }
        }
    }

    fn metric_type(&self) -> MetricType {
        match self {
            Value::Counter(_) => MetricType::Counter,
            Value::Gauge(_) | Value::GaugeF(_) => MetricType::Gauge,
            Value::Histogram(_) => MetricType::Histogram,
        }
    }
}

/// One metric family: its descriptor, then each labelled sample.
fn family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&prometheus_client::registry::Unit>,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Vec<(&'static str, &'a str)>, Value<'a>)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&Labels(&labels))?)?;
    }
    Ok(())
}

/// The data plane's metrics, read from the proxy's current snapshot at each
/// scrape. Holds the proxy weakly: registering it does not keep a stopped
/// proxy alive.
#[derive(Debug)]
pub struct ProxyCollector(pub Weak<Proxy>);

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(proxy) = self.0.upgrade() else {
            return Ok(());
        };
        let snap = proxy.snapshot();
        let stats = &proxy.stats;
        let seconds = prometheus_client::registry::Unit::Seconds;
        let bytes = prometheus_client::registry::Unit::Bytes;

        // Services: one pool per route, several routes per service (path
        // rules) sharing one `ServiceStats`: each is encoded once.
        let mut services: Vec<(&str, &Arc<ServiceStats>)> = Vec::new();
        for pool in &snap.pools {
            if !services.iter().any(|(_, s)| Arc::ptr_eq(s, &pool.stats)) {
                services.push((&pool.label, &pool.stats));
            }
        }
        family(
            &mut encoder,
            "portico_requests",
            "Requests to each service, by method and status class (Portico's own answers included)",
            None,
            MetricType::Counter,
            services.iter().flat_map(|(name, s)| {
                METHODS.iter().enumerate().flat_map(move |(m, method)| {
                    STATUS_CLASSES
                        .iter()
                        .enumerate()
                        .filter_map(move |(c, class)| {
                            let n = s.requests[m][c].load(Relaxed);
                            (n > 0).then(|| {
                                (
                                    vec![
                                        ("service", *name),
                                        ("method", *method),
                                        ("status", *class),
                                    ],
                                    Value::Counter(n),
                                )
                            })
                        })
                })
            }),
        )?;
        family(
            &mut encoder,
            "portico_request_duration",
            "Time from a request's arrival to the end of its response, by service",
            Some(&seconds),
            MetricType::Histogram,
            services
                .iter()
                .map(|(name, s)| (vec![("service", *name)], Value::Histogram(&s.duration))),
        )?;
        family(
            &mut encoder,
            "portico_request_body",
            "Request body bytes received from clients, by service",
            Some(&bytes),
            MetricType::Counter,
            services.iter().map(|(name, s)| {
                (
                    vec![("service", *name)],
                    Value::Counter(s.request_bytes.load(Relaxed)),
                )
            }),
        )?;
        family(
            &mut encoder,
            "portico_response_body",
            "Response body bytes sent to clients, by service",
            Some(&bytes),
            MetricType::Counter,
            services.iter().map(|(name, s)| {
                (
                    vec![("service", *name)],
                    Value::Counter(s.response_bytes.load(Relaxed)),
                )
            }),
        )?;

        // Upstreams: an upstream shared by two routes is encoded once,
        // under the first route's service.
        let mut upstreams: Vec<(&str, &crate::upstream::Upstream, String)> = Vec::new();
        for pool in &snap.pools {
            for u in &pool.upstreams {
                if !upstreams.iter().any(|(_, v, _)| std::ptr::eq(*v, &**u)) {
                    upstreams.push((&pool.label, u, u.addr.to_string()));
                }
            }
        }
        family(
            &mut encoder,
            "portico_upstream_requests",
            "Requests sent to each upstream (each attempt, retries included)",
            None,
            MetricType::Counter,
            upstreams.iter().map(|(service, u, addr)| {
                (
                    vec![("service", *service), ("upstream", addr.as_str())],
                    Value::Counter(u.stats.requests.load(Relaxed)),
                )
            }),
        )?;
        family(
            &mut encoder,
            "portico_upstream_failures",
            "Failed attempts on each upstream, by cause (connect, timeout, reset, 5xx)",
            None,
            MetricType::Counter,
            upstreams.iter().flat_map(|(service, u, addr)| {
                FAILURES.iter().enumerate().map(move |(i, cause)| {
                    (
                        vec![
                            ("service", *service),
                            ("upstream", addr.as_str()),
                            ("cause", *cause),
                        ],
                        Value::Counter(u.stats.failures[i].load(Relaxed)),
                    )
                })
            }),
        )?;
        family(
            &mut encoder,
            "portico_upstream_response_time",
            "Time from sending a request to an upstream to its response head",
            Some(&seconds),
            MetricType::Histogram,
            upstreams.iter().map(|(service, u, addr)| {
                (
                    vec![("service", *service), ("upstream", addr.as_str())],
                    Value::Histogram(&u.stats.response_time),
                )
            }),
        )?;
        family(
            &mut encoder,
            "portico_upstream_up",
            "1 while the upstream takes requests, 0 while failed checks or the proxy's ejection keep it out",
            None,
            MetricType::Gauge,
            upstreams.iter().map(|(service, u, addr)| {
                (
                    vec![("service", *service), ("upstream", addr.as_str())],
                    Value::Gauge(i64::from(!u.health.is_down())),
                )
            }),
        )?;
        let probes: Vec<_> = upstreams
            .iter()
            .filter_map(|(service, u, addr)| Some((*service, addr, u.stats.last_probe()?)))
            .collect();
        family(
            &mut encoder,
            "portico_probe_success",
            "1 if the last probe of the upstream (the route's request, sent every probe_interval) got an answer under 500",
            None,
            MetricType::Gauge,
            probes.iter().map(|(service, addr, p)| {
                (
                    vec![("service", *service), ("upstream", addr.as_str())],
                    Value::Gauge(i64::from(p.ok)),
                )
            }),
        )?;
        family(
            &mut encoder,
            "portico_probe_duration",
            "How long the last probe of the upstream took",
            Some(&seconds),
            MetricType::Gauge,
            probes.iter().map(|(service, addr, p)| {
                (
                    vec![("service", *service), ("upstream", addr.as_str())],
                    Value::GaugeF(p.took.as_secs_f64()),
                )
            }),
        )?;
        let conns: Vec<(usize, usize)> =
            upstreams.iter().map(|(_, u, _)| u.connections()).collect();
        family(
            &mut encoder,
            "portico_upstream_connections",
            "Connections open to each upstream, busy and idle",
            None,
            MetricType::Gauge,
            upstreams
                .iter()
                .zip(&conns)
                .map(|((service, _, addr), (open, _))| {
                    (
                        vec![("service", *service), ("upstream", addr.as_str())],
                        Value::Gauge(*open as i64),
                    )
                }),
        )?;
        family(
            &mut encoder,
            "portico_upstream_idle_connections",
            "Idle keep-alive connections kept to each upstream",
            None,
            MetricType::Gauge,
            upstreams
                .iter()
                .zip(&conns)
                .map(|((service, _, addr), (_, idle))| {
                    (
                        vec![("service", *service), ("upstream", addr.as_str())],
                        Value::Gauge(*idle as i64),
                    )
                }),
        )?;

        // Client connections.
        let pairs = || {
            LISTENERS.iter().enumerate().flat_map(|(l, listener)| {
                PROTOCOLS
                    .iter()
                    .enumerate()
                    .map(move |(p, protocol)| (l, p, *listener, *protocol))
            })
        };
        family(
            &mut encoder,
            "portico_client_connections",
            "Client connections open, by listener and protocol",
            None,
            MetricType::Gauge,
            pairs().map(|(l, p, listener, protocol)| {
                (
                    vec![("listener", listener), ("protocol", protocol)],
                    Value::Gauge(stats.open[l][p].load(Relaxed)),
                )
            }),
        )?;
        family(
            &mut encoder,
            "portico_client_connections_accepted",
            "Client connections accepted, by listener and protocol (a connection that turns out to be h2c or a websocket counts under both)",
            None,
            MetricType::Counter,
            pairs().map(|(l, p, listener, protocol)| {
                (
                    vec![("listener", listener), ("protocol", protocol)],
                    Value::Counter(stats.accepted[l][p].load(Relaxed)),
                )
            }),
        )?;
        let admission = &proxy.admission;
        family(
            &mut encoder,
            "portico_client_connections_max",
            "max_client_connections in force (\"auto\" resolved from the descriptor limit)",
            None,
            MetricType::Gauge,
            [(
                vec![],
                Value::Gauge(
                    i64::try_from(admission.cap(snap.config.proxy.max_client_connections))
                        .unwrap_or(i64::MAX),
                ),
            )],
        )?;
        family(
            &mut encoder,
            "portico_accept_waits",
            "Accepted client connections that waited for a place under max_client_connections (those behind them wait in the listen backlog)",
            None,
            MetricType::Counter,
            [(vec![], Value::Counter(admission.waits()))],
        )?;
        family(
            &mut encoder,
            "portico_unforwarded_requests",
            "Requests Portico answered itself before choosing a service's upstreams, by reason (unknown hosts count here, never as a label)",
            None,
            MetricType::Counter,
            UNFORWARDED.iter().enumerate().map(|(i, reason)| {
                (
                    vec![("reason", *reason)],
                    Value::Counter(stats.unforwarded[i].load(Relaxed)),
                )
            }),
        )?;
        family(
            &mut encoder,
            "portico_tls_handshakes",
            "TLS handshakes completed on the HTTPS listener (passthrough excluded)",
            None,
            MetricType::Counter,
            [(vec![], Value::Counter(stats.tls_handshakes.load(Relaxed)))],
        )?;
        family(
            &mut encoder,
            "portico_tls_handshake_failures",
            "TLS handshakes that failed, by reason",
            None,
            MetricType::Counter,
            TLS_FAILURES.iter().enumerate().map(|(i, reason)| {
                (
                    vec![("reason", *reason)],
                    Value::Counter(stats.tls_failures[i].load(Relaxed)),
                )
            }),
        )?;
        let mut certs: Vec<_> = snap.certs.0.loaded().collect();
        certs.sort_by(|a, b| (&a.owner, &a.file).cmp(&(&b.owner, &b.file)));
        family(
            &mut encoder,
            "portico_tls_certificate_expiry_timestamp",
            "When each certificate in use expires (Unix time)",
            Some(&seconds),
            MetricType::Gauge,
            certs.iter().map(|c| {
                let at = c
                    .not_after
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                (
                    vec![("owner", c.owner.as_str()), ("file", c.file.as_str())],
                    Value::GaugeF(at),
                )
            }),
        )?;

        // The config in force.
        let version = snap.version.to_string();
        let mut info = encoder.encode_descriptor(
            "portico_config",
            "The config version in force",
            None,
            MetricType::Info,
        )?;
        info.encode_info(&Labels(&[("version", version.as_str())]))?;
        family(
            &mut encoder,
            "portico_services",
            "Services in the config in force",
            None,
            MetricType::Gauge,
            [(vec![], Value::Gauge(snap.config.services.len() as i64))],
        )?;
        family(
            &mut encoder,
            "portico_upstreams",
            "Distinct upstreams in the config in force",
            None,
            MetricType::Gauge,
            [(vec![], Value::Gauge(upstreams.len() as i64))],
        )?;
        family(
            &mut encoder,
            "portico_requests_in_flight",
            "Requests received whose responses are not finished",
            None,
            MetricType::Gauge,
            [(vec![], Value::Gauge(proxy.requests_in_flight() as i64))],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_count_their_own_with_inf() {
        let h = Histogram::default();
        for ms in [0, 1, 3, 40, 40, 2_000, 60_000] {
            h.observe(Duration::from_millis(ms));
        }
        let (sum, count, buckets) = h.read();
        assert_eq!(count, 7);
        assert!((sum - 62.084).abs() < 1e-9, "{sum}");
        let at = |le: f64| buckets.iter().find(|(b, _)| *b == le).unwrap().1;
        assert_eq!(at(0.001), 2, "0 ms and 1 ms are within le=0.001");
        assert_eq!(at(0.005), 1);
        assert_eq!(at(0.05), 2);
        assert_eq!(at(2.5), 1);
        assert_eq!(at(30.0), 0);
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 1));
    }

    #[test]
    fn classes_are_bounded() {
        assert_eq!(METHODS[usize::from(method_class("GET"))], "GET");
        assert_eq!(METHODS[usize::from(method_class("PATCH"))], "PATCH");
        assert_eq!(METHODS[usize::from(method_class("BREW"))], "other");
        assert_eq!(METHODS[usize::from(method_class("get"))], "other");
        assert_eq!(STATUS_CLASSES[status_class(101)], "1xx");
        assert_eq!(STATUS_CLASSES[status_class(404)], "4xx");
        assert_eq!(STATUS_CLASSES[status_class(599)], "5xx");
        assert_eq!(STATUS_CLASSES[status_class(0)], "1xx");
        assert_eq!(STATUS_CLASSES[status_class(999)], "5xx");
    }

    #[test]
    fn open_connections_follow_their_protocol() {
        let stats = Arc::new(ProxyStats::default());
        let mut c = stats.open(Listener::Http, Protocol::Http1, None);
        assert_eq!(stats.open[0][0].load(Relaxed), 1);
        c.now(Protocol::H2);
        assert_eq!(stats.open[0][0].load(Relaxed), 0);
        assert_eq!(stats.open[0][1].load(Relaxed), 1);
        drop(c);
        assert_eq!(stats.open[0][1].load(Relaxed), 0);
        assert_eq!(stats.accepted[0][0].load(Relaxed), 1);
        assert_eq!(stats.accepted[0][1].load(Relaxed), 1);
    }
}
