//! The active health checks, and the always-on probes (`probe_interval`):
//! one task per upstream and check, started and stopped as config versions
//! come and go. A check's results decide health (see [`crate::health`]);
//! a probe's only report: it sends what a client's request would be (the
//! route's host and path), as `portico trace` does, and its outcome is a
//! metric and a status-page line, and a log line when it changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use portico_model::HealthCheck;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::io::{lock, Every};
use crate::snapshot::Snapshot;
use crate::upstream::{ProbeFailed, Upstream};

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
    /// A probe, not a health check.
    probe: bool,
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
        let mut wanted: HashMap<CheckKey, Arc<Upstream>> = HashMap::new();
        let probes = snap.config.proxy.probe_interval;
        for (route, pool) in snap.table.routes().iter().zip(&snap.pools) {
            let checks = route
                .health
                .iter()
                .map(|c| (c.clone(), false))
                .chain(probes.map(|every| (probe(route, every), true)));
            for (check, probe) in checks {
                let host = check.host.clone().unwrap_or_else(|| check_host(route));
                for u in &pool.upstreams {
                    let key = CheckKey {
                        upstream: Arc::as_ptr(u) as usize,
                        check: check.clone(),
                        host: host.clone(),
                        probe,
                    };
                    wanted.insert(key, u.clone());
                }
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
        for (key, upstream) in wanted {
            if running.tasks.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(check_loop(upstream.clone(), key.clone(), limit.clone()));
            running.tasks.insert(key, (upstream, task));
        }
        for u in before {
            let kept = |probe: bool| {
                running
                    .tasks
                    .iter()
                    .any(|(k, (v, _))| k.probe == probe && Arc::ptr_eq(v, &u))
            };
            if !kept(false) {
                u.health.forget_checks();
            }
            if !kept(true) {
                u.stats.forget_probe();
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

/// A probe of `route`'s upstreams: its request as a client would send it
/// (the path prefix as the upstream sees it), any answer under 500 a pass.
fn probe(route: &portico_model::Route, every: std::time::Duration) -> HealthCheck {
    let path = match (&route.path, route.rewrite) {
        (Some(prefix), false) => prefix.clone(),
        _ => "/".to_owned(),
    };
    HealthCheck {
        path,
        interval: every,
        timeout: every.min(std::time::Duration::from_secs(5)),
        healthy: 1,
        unhealthy: 1,
        status: vec![(100, 499)],
        host: None,
    }
}

async fn check_loop(upstream: Arc<Upstream>, key: CheckKey, limit: Arc<Semaphore>) {
    let CheckKey {
        check, host, probe, ..
    } = key;
    let host =
        HeaderValue::from_str(&host).unwrap_or_else(|_| HeaderValue::from_static("localhost"));
    // The first check at a random point of the interval, so that checks
    // configured at once (a reload, a start) are spread over it.
    tokio::time::sleep(check.interval.mul_f64(fastrand::f64())).await;
    let mut kept = None;
    loop {
        let started = std::time::Instant::now();
        let result = {
            let _permit = limit.acquire().await;
            upstream
                .probe(&mut kept, &host, &check.path, check.timeout)
                .await
        };
        let result = match result {
            Ok(status) => Some(Ok(status)),
            Err(ProbeFailed::Upstream(why)) => Some(Err(why)),
            Err(ProbeFailed::Local(why)) => {
                // Out of descriptors: this says nothing of the upstream.
                static WARNED: Every = Every::new(std::time::Duration::from_secs(10));
                if WARNED.due() {
                    tracing::warn!(upstream = %upstream.addr, error = %why, "health checks not made (not counted) while the proxy cannot open connections");
                }
                None
            }
        };
        match result {
            None => {}
            Some(result) if probe => {
                let ok = matches!(result, Ok(status) if check.accepts(status));
                upstream
                    .stats
                    .record_probe(upstream.addr, &host, ok, result, started.elapsed());
            }
            Some(result) => upstream.health.record_check(upstream.addr, &check, result),
        }
        // ±10 %: checks that started together drift apart.
        let jitter = 0.9 + fastrand::f64() * 0.2;
        tokio::time::sleep(check.interval.mul_f64(jitter)).await;
    }
}
