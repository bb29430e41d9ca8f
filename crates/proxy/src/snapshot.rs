//! The compiled, immutable routing snapshot the data plane reads. One is
//! built per config version and swapped in atomically; a request (or a TLS
//! handshake) loads it once and keeps that `Arc` to its end, so a swap never
//! changes the rules under a request in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use portico_model::{Config, RoutingTable, UpstreamOptions, UpstreamProtocol, Version};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::ServerConfig;

use crate::health::{Guards, Outlier};
use crate::metrics::ServiceStats;
use crate::tls::{self, CertStore, CertStoreHandle, SessionState};
use crate::upstream::{Transport, Upstream, UpstreamLimits};

pub struct Snapshot {
    pub version: Version,
    pub config: Arc<Config>,
    pub table: RoutingTable,
    /// One per route of `table`, same index.
    pub pools: Vec<Pool>,
    pub proxy_id: HeaderValue,
    /// Certificates by SNI, for the HTTPS listener.
    pub certs: Arc<CertStoreHandle>,
    /// The HTTPS listener's TLS config (over `certs`); `None` if it can't be built.
    pub(crate) tls_config: Option<Arc<ServerConfig>>,
    /// Connection settings for new client connections.
    pub(crate) conn_builder: auto::Builder<TokioExecutor>,
    /// The same, for TLS connections that negotiated HTTP/1.1 or h2 by ALPN.
    pub(crate) h1_builder: auto::Builder<TokioExecutor>,
    pub(crate) h2_builder: auto::Builder<TokioExecutor>,
}

/// The upstreams behind one route, with its round-robin cursor.
pub struct Pool {
    /// The service name(s), for logs and error bodies.
    pub label: String,
    /// The route's `upstream_timeout` and `connect_timeout` (the
    /// service's, else the proxy's).
    pub upstream_timeout: std::time::Duration,
    pub connect_timeout: std::time::Duration,
    /// Balanced by requests in flight: each upstream counts its own.
    pub least_request: bool,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Every upstream speaks HTTP/1.1 in cleartext: the pool can be served
    /// by the fast path (`crate::h1`).
    pub plain_http1: bool,
    next: AtomicUsize,
    /// How failed requests eject its upstreams.
    pub outlier: Outlier,
    /// The service's retry budget and request cap, shared by its routes
    /// and kept across reloads.
    pub guards: Arc<Guards>,
    /// The service's request counters, shared and kept the same way.
    pub stats: Arc<ServiceStats>,
    /// The service's cap on concurrent requests.
    pub max_requests: Option<u32>,
    /// Retries may add this percentage of recent requests, plus this many
    /// a second.
    pub retry_budget: (u8, u32),
    /// A connect not done by then is raced by one to the next upstream.
    pub hedge_delay: Option<Duration>,
}

impl Pool {
    /// Index of the upstream to try first for the next request.
    pub fn next_start(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Every upstream is down, so requests go to all of them rather than to
    /// none: the proxy's judgement alone never empties a pool.
    pub(crate) fn all_down(&self) -> bool {
        self.upstreams.iter().all(|u| u.health.is_down())
    }

    /// A failed request to `upstream`, for passive ejection.
    pub(crate) fn failed(&self, upstream: &Upstream, why: &str) {
        upstream.health.failure(
            upstream.addr,
            &self.label,
            self.outlier,
            self.upstreams.iter().map(|u| &*u.health),
            why,
        );
    }
}

impl Snapshot {
    /// Compiles `config`. Upstreams found in `previous` with the same
    /// settings are reused, so their keep-alive connections survive the swap.
    pub fn build(
        config: Arc<Config>,
        version: Version,
        default_proxy_id: &str,
        previous: Option<&Snapshot>,
        provider: &Arc<CryptoProvider>,
        sessions: &SessionState,
    ) -> Snapshot {
        let p = &config.proxy;
        let limits = UpstreamLimits {
            max_connections: p.max_connections_per_upstream,
            max_idle: p.idle_connections_per_upstream,
        };
        let mut known: HashMap<_, Arc<Upstream>> = HashMap::new();
        for u in previous
            .into_iter()
            .flat_map(|s| s.pools.iter())
            .flat_map(|pool| pool.upstreams.iter())
        {
            known.insert((u.addr, u.transport.options.clone()), u.clone());
        }
        // A service's guards and counters stay with it (by name) across
        // versions.
        let mut guards: HashMap<String, (Arc<Guards>, Arc<ServiceStats>)> = previous
            .into_iter()
            .flat_map(|s| s.pools.iter())
            .map(|pool| {
                (
                    pool.label.clone(),
                    (pool.guards.clone(), pool.stats.clone()),
                )
            })
            .collect();
        let mut transports: HashMap<UpstreamOptions, Transport> = HashMap::new();
        let table = RoutingTable::build(&config);
        let pools = table
            .routes()
            .iter()
            .map(|route| {
                let (guards, stats) = guards
                    .entry(route.label())
                    .or_insert_with(|| (Guards::new(), Arc::default()))
                    .clone();
                Pool {
                    guards,
                    stats,
                    outlier: Outlier {
                        consecutive_failures: p.outlier_consecutive_failures,
                        base_ejection: p.outlier_base_ejection_time,
                        max_ejection: p.outlier_max_ejection_time,
                        max_ejected_percent: route.max_ejected_percent,
                    },
                    max_requests: route.max_requests,
                    retry_budget: (p.retry_budget_percent, p.retry_budget_min_per_second),
                    hedge_delay: p.hedge_delay,
                    label: route.label(),
                    upstream_timeout: route.upstream_timeout,
                    connect_timeout: route.connect_timeout,
                    least_request: route.balance == portico_model::Balance::LeastRequest,
                    plain_http1: route
                        .upstream_options
                        .iter()
                        .all(|o| o.protocol == UpstreamProtocol::Http1 && o.tls.is_none()),
                    upstreams: route
                        .upstreams
                        .iter()
                        .zip(&route.upstream_options)
                        .map(|(addr, options)| {
                            let transport = transports
                                .entry(options.clone())
                                .or_insert_with(|| transport(options, &config, provider));
                            let key = (*addr, options.clone());
                            match known.get(&key) {
                                Some(u) if u.reusable_for(&limits, transport) => u.clone(),
                                was => {
                                    // New settings, same upstream: what is known
                                    // of its health still holds.
                                    let health =
                                        was.map_or_else(Arc::default, |u| u.health.clone());
                                    let mut u =
                                        Upstream::new(*addr, limits, transport.clone(), health);
                                    if let Some(was) = was {
                                        u.stats = was.stats.clone();
                                    }
                                    let u = Arc::new(u);
                                    known.insert(key, u.clone());
                                    u
                                }
                            }
                        })
                        .collect(),
                    next: AtomicUsize::new(0),
                }
            })
            .collect();
        let proxy_id = p.proxy_id.as_deref().unwrap_or(default_proxy_id);
        let proxy_id =
            HeaderValue::from_str(proxy_id).unwrap_or_else(|_| HeaderValue::from_static("portico"));

        let certs = Arc::new(CertStoreHandle(if p.https_listen.is_some() {
            CertStore::build(&config, &table, provider, previous.map(|p| &p.certs.0))
        } else {
            CertStore::default()
        }));
        let tls_config = match tls::server_config(certs.clone(), provider, sessions, p.tls_profile)
        {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "cannot build the HTTPS configuration");
                None
            }
        };

        let mut conn_builder = auto::Builder::new(TokioExecutor::new());
        conn_builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(p.client_header_timeout)
            .max_buf_size(p.max_header_bytes);
        conn_builder
            .http2()
            .timer(TokioTimer::new())
            // Pings find peers that vanished without closing.
            .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
            .keep_alive_timeout(std::time::Duration::from_secs(10))
            .max_header_list_size(u32::try_from(p.max_header_bytes).unwrap_or(u32::MAX));
        // After TLS, ALPN has already said which protocol it is: no waiting
        // to detect it, so HTTP/1's header timeout runs from the start.
        let h1_builder = conn_builder.clone().http1_only();
        let h2_builder = conn_builder.clone().http2_only();
        Snapshot {
            version,
            config,
            table,
            pools,
            proxy_id,
            certs,
            tls_config,
            conn_builder,
            h1_builder,
            h2_builder,
        }
    }
}

fn transport(
    options: &UpstreamOptions,
    config: &Config,
    provider: &Arc<CryptoProvider>,
) -> Transport {
    let tls = options.tls.as_ref().map(|t| {
        let alpn: &[u8] = match options.protocol {
            UpstreamProtocol::H2 => b"h2",
            _ => b"http/1.1",
        };
        let name = ServerName::try_from(t.server_name.clone())
            .map_err(|e| format!("{:?} is not a valid TLS server name: {e}", t.server_name))?;
        let client = tls::client_config(t, config, alpn, provider.clone())?;
        Ok((client, name))
    });
    if let Some(Err(e)) = &tls {
        tracing::error!(error = %e, "TLS to upstreams cannot be set up; their requests will fail with 502");
    }
    Transport {
        options: options.clone(),
        tls,
        ca_data: options
            .tls
            .as_ref()
            .and_then(|t| t.ca.as_ref())
            .and_then(|ca| config.files.get(ca).cloned()),
    }
}
