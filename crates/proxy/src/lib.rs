//! Portico's data plane: accepts client connections, routes each request by
//! host and path to a pool of upstreams, forwards it, and adds Interlock's
//! headers.
//!
//! The [`Proxy`] holds the current [`Snapshot`] in an `ArcSwap`; the
//! controller calls [`Proxy::apply`] with each new config version, and every
//! request loads the snapshot exactly once.
//!
//! # Layout
//! Data flows one way: listener → codec → pipeline → balance → upstream, and
//! back through the same codec. Modules, from the top of that graph down
//! (each uses only modules below it, and the crate root's `Proxy`):
//! - [`workers`]: worker threads, each a single-threaded runtime serving
//!   its own `SO_REUSEPORT` listeners.
//! - [`server`]: the accept loops over already-bound listeners (PROXY
//!   protocol, TLS by SNI, passthrough), graceful drain.
//! - `admission`: client connections against `max_client_connections`
//!   (at the cap an accept loop holds the connection it accepted, unread,
//!   and accepts no more; a connection's slot lives as long as its
//!   descriptor).
//! - `h1`: the HTTP/1.1 byte codec, for requests without a body or with a
//!   `Content-Length` one (from cleartext or TLS clients) to cleartext
//!   HTTP/1.1 upstreams; hands anything else, with the bytes it read, to
//!   `forward`.
//! - `forward`: the hyper codec (HTTP/1.1, h2, h2c, bodies, upgrades), and
//!   the retries and response headers of one request on it.
//! - `relay`: the HTTP/1.1 exchange with an upstream as bytes, for both
//!   codecs: a request out on a bare pooled connection (with `h1`'s
//!   request body, if any), the response head in by one set of rules (as
//!   bytes for `h1`, as a header map for `forward`); hyper's client serves
//!   the rest.
//! - `pipeline`: one request's policy for both codecs: route by host and
//!   path, Portico's own answers, the target the upstream sees, affinity.
//! - `answer`: Portico's own responses (errors, redirects), rendered per codec.
//! - `balance`: which upstream first: consistent hashes, round robin, least request.
//! - `checks`: the active health checks, a task per upstream, started and
//!   stopped with config versions.
//! - [`snapshot`]: the compiled routing snapshot and its upstream pools.
//! - [`body`]: response bodies that return connections and log on completion
//!   (from hyper's client, or relayed as bytes and decoded).
//! - [`upstream`]: bounded keep-alive connections to one upstream address
//!   (HTTP/1.1, or one multiplexed HTTP/2 connection; cleartext or TLS).
//! - [`health`]: what checks and failed requests say of each upstream
//!   (unhealthy, ejected), and each service's retry budget and request cap.
//! - [`upload`]: request bodies on their way upstream, with their limits
//!   (through hyper's client, or socket to socket for `h1`).
//! - [`error`]: failures classified into HTTP statuses.
//! - `context`: what a connection knows (client, TLS server name).
//! - [`tls`]: certificates by SNI, server and upstream TLS configs.
//! - [`headers`]: hop-by-hop, forwarding and Interlock header rules.
//! - `framing`: HTTP/1.1 framing as bytes: head ends, chunked bodies, and
//!   how much of a response body is left (`Rest`, for the fast path and the
//!   relay alike).
//! - `splice`: large bodies moved socket to socket through a pipe
//!   (`splice(2)`), responses and uploads, for `h1` when neither side is
//!   TLS.
//! - `io`: stream adapters (replayed prefixes, first-read deadlines, send
//!   deadlines, relays) and the progress timer (`Stall`) that bounds waits
//!   on a body or a client.
//! - `proxy_protocol`: the PROXY protocol header an external load balancer
//!   may send first, with the client's address.
//! - [`access_log`]: the per-request log line.
//! - [`metrics`]: counters kept beside the services, upstreams and
//!   listeners they count, and their Prometheus exposition.
#![forbid(unsafe_code)]

mod admission;
pub use admission::{descriptor_limit, raise_descriptor_limit};
pub mod access_log;
mod answer;
mod balance;
pub mod body;
mod checks;
mod context;
pub mod error;
mod forward;
mod framing;
#[doc(hidden)]
pub mod fuzzing;
mod h1;
pub mod headers;
pub mod health;
mod io;
pub mod metrics;
mod pipeline;
mod proxy_protocol;
mod relay;
pub mod server;
pub mod snapshot;
mod splice;
pub mod tls;
pub mod upload;
pub mod upstream;
pub mod workers;

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;
use portico_model::{Config, Version};

pub use server::{serve, serve_https};
pub use snapshot::Snapshot;

/// Who this proxy says it is.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Sent as `x-server-info`, e.g. `portico/0.1.0 (1a2b3c4) linux/amd64`.
    pub server_info: String,
    /// `x-proxy-id` when the config sets none; normally the hostname.
    pub default_proxy_id: String,
}

pub struct Proxy {
    current: ArcSwap<Snapshot>,
    identity: Identity,
    server_info: HeaderValue,
    tls_provider: Arc<rustls::crypto::CryptoProvider>,
    sessions: tls::SessionState,
    /// Requests whose responses are not done yet (see [`body::InFlight`]).
    pub(crate) in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Whether [`Proxy::start_upkeep`] has run.
    upkeep: std::sync::atomic::AtomicBool,
    /// Every request takes the general path (see [`Proxy::force_general_path`]).
    general_only: std::sync::atomic::AtomicBool,
    checks: checks::Checkers,
    /// Request bodies in progress per client address.
    pub(crate) bodies: Arc<upload::BodySlots>,
    /// Connections, handshakes and unrouted requests, for metrics.
    pub(crate) stats: Arc<metrics::ProxyStats>,
    /// Client connections open against `max_client_connections`.
    pub(crate) admission: Arc<admission::Admission>,
    /// Set by [`Proxy::start_draining`]; never cleared.
    draining: std::sync::atomic::AtomicBool,
    /// Cleared by [`Proxy::set_ready`] while the proxy has no routes worth
    /// sending traffic to (a cluster proxy before its first snapshot).
    not_ready: std::sync::atomic::AtomicBool,
}

impl Proxy {
    pub fn new(identity: Identity, config: Arc<Config>, version: Version) -> Arc<Proxy> {
        let tls_provider = tls::provider();
        let sessions = tls::SessionState::new();
        let snapshot = Snapshot::build(
            config,
            version,
            &identity.default_proxy_id,
            None,
            &tls_provider,
            &sessions,
        );
        let server_info = HeaderValue::from_str(&identity.server_info)
            .unwrap_or_else(|_| HeaderValue::from_static("portico"));
        let admission = Arc::new(admission::Admission::new());
        admission.check(snapshot.config.proxy.max_client_connections);
        Arc::new(Proxy {
            current: ArcSwap::from_pointee(snapshot),
            identity,
            server_info,
            tls_provider,
            sessions,
            in_flight: Arc::default(),
            upkeep: Default::default(),
            general_only: Default::default(),
            checks: Default::default(),
            bodies: Arc::default(),
            stats: Arc::default(),
            admission,
            draining: Default::default(),
            not_ready: Default::default(),
        })
    }

    /// Starts, once per proxy, the background upkeep of upstreams: every
    /// second, idle connections that were closed by their upstream or have
    /// idled too long are closed, ejections whose time is up end, and the
    /// active health checks are brought in line with the config version.
    /// Ends with the proxy.
    pub(crate) fn start_upkeep(self: &Arc<Self>) {
        if self.upkeep.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let proxy = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(proxy) = proxy.upgrade() else { return };
                let snap = proxy.snapshot();
                for upstream in snap.pools.iter().flat_map(|p| p.upstreams.iter()) {
                    upstream.sweep_idle();
                    upstream.health.expire(upstream.addr);
                }
                proxy.checks.reconcile(&snap);
            }
        });
    }

    /// For tests: sends every request down the general (hyper) path, so
    /// that tests of wire behaviour can run against both request paths.
    #[doc(hidden)]
    pub fn force_general_path(&self, on: bool) {
        self.general_only
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn general_path_forced(&self) -> bool {
        self.general_only.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The proxy is about to stop: from now on `health_uri` answers 503 so
    /// that load balancers take it out, and HTTP/1 connections close after
    /// their current response so that their clients reconnect (through
    /// the balancer, to another proxy). Requests are still served until
    /// the listeners are shut down.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether [`Proxy::start_draining`] has been called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a load balancer should send this proxy traffic: `false`
    /// makes `health_uri` answer 503 until it is set again. A proxy is
    /// ready from the start unless told otherwise: a cluster proxy with
    /// neither a snapshot nor a last good one has no routes, and a
    /// balancer that believed it healthy would get 503 for every host.
    pub fn set_ready(&self, ready: bool) {
        self.not_ready
            .store(!ready, std::sync::atomic::Ordering::Relaxed);
    }

    /// What `health_uri` answers.
    pub(crate) fn readiness(&self) -> answer::Readiness {
        use std::sync::atomic::Ordering::Relaxed;
        if self.draining.load(Relaxed) {
            answer::Readiness::Draining
        } else if self.not_ready.load(Relaxed) {
            answer::Readiness::NotReady
        } else {
            answer::Readiness::Serving
        }
    }

    /// Requests received whose responses are not finished.
    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The snapshot in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Compiles `config` and swaps it in. Requests already running keep the
    /// snapshot they loaded; the next request sees the new one.
    pub fn apply(&self, config: Arc<Config>, version: Version) {
        let previous = self.current.load_full();
        for (what, changed) in [
            (
                "https_listen",
                config.proxy.https_listen != previous.config.proxy.https_listen,
            ),
            ("[admin]", config.admin != previous.config.admin),
        ] {
            if changed {
                tracing::warn!(
                    setting = what,
                    "changed; listeners keep their settings until a restart"
                );
            }
        }
        if config.proxy.http_listen != previous.config.proxy.http_listen {
            tracing::warn!(
                current = %previous.config.proxy.http_listen,
                configured = %config.proxy.http_listen,
                "http_listen changed; the new address takes effect after a restart"
            );
        }
        let services = config.services.len();
        let next = Snapshot::build(
            config,
            version,
            &self.identity.default_proxy_id,
            Some(&previous),
            &self.tls_provider,
            &self.sessions,
        );
        let cap = next.config.proxy.max_client_connections;
        self.current.store(Arc::new(next));
        if cap != previous.config.proxy.max_client_connections {
            self.admission.check(cap);
            // It may have risen: waiting accept loops look again.
            self.admission.recheck();
        }
        tracing::info!(version = %version, services, "configured proxy");
    }

    /// The cap on client connections in force: `max_client_connections`,
    /// or what `"auto"` stands for in this process.
    pub fn max_client_connections(&self) -> usize {
        self.admission
            .cap(self.snapshot().config.proxy.max_client_connections)
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}
