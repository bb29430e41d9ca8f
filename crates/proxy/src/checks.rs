//! The active health checks: one task per upstream and check, started and
//! stopped as config versions come and go (see [`crate::health`] for what
//! their results do).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use portico_model::HealthCheck;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::health::lock;
use crate::snapshot::Snapshot;
use crate::upstream::Upstream;

/// The active checks running, one task per upstream and check.
#[derive(Default)]
pub(crate) struct Checkers {
    running: Mutex<Running>,
}

#[derive(Default)]
struct Running {
    /// Which snapshot they were set up for.
    version: Option<portico_model::Version>,
    tasks: HashMap<CheckKey, (Arc<Upstream>, JoinHandle<()>)>,
    limit: Option<(usize, Arc<Semaphore>)>,
}

/// An upstream (by identity) and what is checked on it.
#[derive(Clone, PartialEq, Eq, Hash)]
struct CheckKey {
    upstream: usize,
    check: HealthCheck,
    host: String,
}

impl Checkers {
    /// Starts the checks `snap` asks for and stops the others. Checks that
    /// stay keep running (and their counts); an upstream whose checks all
    /// stopped forgets what they concluded.
    pub(crate) fn reconcile(&self, snap: &Snapshot) {
        let mut running = lock(&self.running);
        if running.version == Some(snap.version) {
            return;
        }
        running.version = Some(snap.version);
        let size = snap.config.proxy.health_concurrency.max(1);
        let limit = match &running.limit {
            Some((n, s)) if *n == size => s.clone(),
            _ => {
                let s = Arc::new(Semaphore::new(size));
                running.limit = Some((size, s.clone()));
                s
            }
        };
        let mut wanted: HashMap<CheckKey, (Arc<Upstream>, HealthCheck, String)> = HashMap::new();
        for (route, pool) in snap.table.routes().iter().zip(&snap.pools) {
            let Some(check) = &route.health else { continue };
            let host = check.host.clone().unwrap_or_else(|| check_host(route));
            for u in &pool.upstreams {
                let key = CheckKey {
                    upstream: Arc::as_ptr(u) as usize,
                    check: check.clone(),
                    host: host.clone(),
                };
                wanted.insert(key, (u.clone(), check.clone(), host.clone()));
            }
        }
        let before: Vec<Arc<Upstream>> = running.tasks.values().map(|(u, _)| u.clone()).collect();
        running.tasks.retain(|key, (_, task)| {
            let keep = wanted.contains_key(key);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, (upstream, check, host)) in wanted {
            if running.tasks.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(check_loop(upstream.clone(), check, host, limit.clone()));
            running.tasks.insert(key, (upstream, task));
        }
        for u in before {
            let still = running.tasks.values().any(|(v, _)| Arc::ptr_eq(v, &u));
            if !still {
                u.health.forget_checks();
            }
        }
    }
}

impl Drop for Checkers {
    fn drop(&mut self) {
        for (_, task) in lock(&self.running).tasks.values() {
            task.abort();
        }
    }
}

/// The Host a route's checks send by default: its first exact host name.
fn check_host(route: &portico_model::Route) -> String {
    route
        .hosts
        .iter()
        .map(ToString::to_string)
        .find(|h| !h.starts_with("*."))
        .unwrap_or_else(|| "localhost".to_owned())
}

async fn check_loop(
    upstream: Arc<Upstream>,
    check: HealthCheck,
    host: String,
    limit: Arc<Semaphore>,
) {
    let host =
        HeaderValue::from_str(&host).unwrap_or_else(|_| HeaderValue::from_static("localhost"));
    // The first check at a random point of the interval, so that checks
    // configured at once (a reload, a start) are spread over it.
    tokio::time::sleep(check.interval.mul_f64(fastrand::f64())).await;
    let mut kept = None;
    loop {
        let result = {
            let _permit = limit.acquire().await;
            upstream
                .probe(&mut kept, &host, &check.path, check.timeout)
                .await
        };
        upstream.health.record_check(upstream.addr, &check, result);
        // ±10 %: checks that started together drift apart.
        let jitter = 0.9 + fastrand::f64() * 0.2;
        tokio::time::sleep(check.interval.mul_f64(jitter)).await;
    }
}
