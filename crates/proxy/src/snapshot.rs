//! The compiled, immutable routing snapshot the data plane reads. One is
//! built per config version and swapped in atomically; a request loads it
//! once and keeps that `Arc` to its end, so a swap never changes the rules
//! under a request in flight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::HeaderValue;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use portico_model::{Config, RoutingTable, Version};

use crate::upstream::{Upstream, UpstreamLimits};

pub struct Snapshot {
    pub version: Version,
    pub config: Arc<Config>,
    pub table: RoutingTable,
    /// One per route of `table`, same index.
    pub pools: Vec<Pool>,
    pub proxy_id: HeaderValue,
    /// Connection settings for new client connections.
    pub(crate) conn_builder: auto::Builder<TokioExecutor>,
}

/// The upstreams behind one route, with its round-robin cursor.
pub struct Pool {
    /// The service name(s), for logs and error bodies.
    pub label: String,
    pub upstreams: Vec<Arc<Upstream>>,
    next: AtomicUsize,
}

impl Pool {
    /// Index of the upstream to try first for the next request.
    pub fn next_start(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

impl Snapshot {
    /// Compiles `config`. Upstreams found in `previous` with the same limits
    /// are reused, so their idle keep-alive connections survive the swap.
    pub fn build(
        config: Arc<Config>,
        version: Version,
        default_proxy_id: &str,
        previous: Option<&Snapshot>,
    ) -> Snapshot {
        let p = &config.proxy;
        let limits = UpstreamLimits {
            max_connections: p.max_connections_per_upstream,
            max_idle: p.idle_connections_per_upstream,
            connect_timeout: p.connect_timeout,
        };
        let mut known: HashMap<SocketAddr, Arc<Upstream>> = previous
            .into_iter()
            .flat_map(|s| s.pools.iter())
            .flat_map(|pool| pool.upstreams.iter())
            .filter(|u| u.limits == limits)
            .map(|u| (u.addr, u.clone()))
            .collect();
        let table = RoutingTable::build(&config);
        let pools = table
            .routes()
            .iter()
            .map(|route| Pool {
                label: route.label(),
                upstreams: route
                    .upstreams
                    .iter()
                    .map(|addr| {
                        known
                            .entry(*addr)
                            .or_insert_with(|| Arc::new(Upstream::new(*addr, limits)))
                            .clone()
                    })
                    .collect(),
                next: AtomicUsize::new(0),
            })
            .collect();
        let proxy_id = p.proxy_id.as_deref().unwrap_or(default_proxy_id);
        let proxy_id =
            HeaderValue::from_str(proxy_id).unwrap_or_else(|_| HeaderValue::from_static("portico"));

        let mut conn_builder = auto::Builder::new(TokioExecutor::new());
        conn_builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(p.client_header_timeout)
            .max_buf_size(p.max_header_bytes);
        conn_builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(p.max_header_bytes).unwrap_or(u32::MAX));
        Snapshot {
            version,
            config,
            table,
            pools,
            proxy_id,
            conn_builder,
        }
    }
}
