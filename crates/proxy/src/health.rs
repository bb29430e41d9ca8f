//! What the proxy believes about each upstream's health, and the guards
//! that keep a sick service from being made sicker.
//!
//! - Active checks (a route's `health_path`): a task per upstream probes it
//!   on a connection of its own every interval, jittered; so many results
//!   in a row mark it unhealthy or healthy again. An upstream starts as
//!   unknown and takes traffic: only failures take it out.
//! - Passive ejection (outlier detection, on by default): so many failed
//!   requests in a row (no connection, reset or timeout before the answer,
//!   502/503/504 from it) eject an upstream for a time that doubles on each
//!   repeated ejection, up to a cap, and starts over once it has stayed in
//!   long enough.
//! - Neither takes a pool down by itself: an ejection that would leave more
//!   than `max_ejected_percent` of the pool out is not made, and when every
//!   upstream of a pool is down, requests go to all of them (a guess is no
//!   reason to answer 503).
//! - Per service: a retry budget (retries may add at most a share of the
//!   recent requests, plus a small floor), and a cap on concurrent requests.
//!
//! The request path reads a flag and a timestamp per upstream; locks are
//! taken only when something changes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use portico_model::HealthCheck;

use crate::io::lock;

/// Milliseconds since the first call: the clock ejections are kept in, so
/// that the request path compares one integer.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let ms = EPOCH.get_or_init(Instant::now).elapsed().as_millis();
    // Never 0: 0 means "not ejected".
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// How passive ejection treats one pool (the route's settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outlier {
    /// Failures in a row that eject; 0: never.
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejected_percent: u8,
}

/// One upstream's health, shared by every pool it is in and kept across
/// reloads for as long as the upstream stays configured.
#[derive(Default)]
pub struct Health {
    /// Active checks have found it unhealthy.
    down_by_check: AtomicBool,
    /// [`now_ms`] until which it is ejected; 0: not ejected.
    ejected_until: AtomicU64,
    /// Failed requests in a row.
    failures: AtomicU32,
    detail: Mutex<Detail>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Checked {
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
}

#[derive(Default)]
struct Detail {
    checked: Checked,
    /// Results in a row equal to the last one.
    run: u32,
    last_ok: Option<bool>,
    /// The last check's result, as said in logs (`200`, `timed out`...), and when.
    last_check: Option<(SystemTime, String)>,
    /// When `checked` last changed, and why (for unhealthy).
    checked_since: Option<SystemTime>,
    unhealthy_reason: Option<String>,
    /// Ejections since it last stayed in for `max_ejection`.
    ejections: u32,
    ejection: Option<Ejection>,
}

struct Ejection {
    reason: String,
    at: SystemTime,
    until: SystemTime,
    /// When the ejection ends, on the monotonic clock.
    ends: Instant,
}

/// An upstream's health as the admin API and `portico trace` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// `unknown`, `healthy`, `unhealthy` or `ejected`.
    pub state: &'static str,
    /// Why it is unhealthy or ejected.
    pub reason: Option<String>,
    /// Since when it is in this state (unhealthy, healthy) or ejected.
    pub since: Option<SystemTime>,
    /// Until when it is ejected.
    pub until: Option<SystemTime>,
    /// The last check's result and when, if checks run.
    pub last_check: Option<(SystemTime, String)>,
}

impl Health {
    /// Takes no traffic unless its whole pool is down.
    #[inline]
    pub fn is_down(&self) -> bool {
        self.down_by_check.load(Ordering::Relaxed) || self.is_ejected()
    }

    #[inline]
    fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// A request it answered (with anything but 502, 503, 504).
    #[inline]
    pub fn success(&self) {
        // Read first: the common case writes nothing to a shared line.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A request it failed; ejects it when that makes `consecutive_failures`
    /// in a row and its pool (`pool`: every member's health, this one's
    /// too) can spare it.
    pub fn failure<'a>(
        &self,
        upstream: SocketAddr,
        service: &str,
        policy: Outlier,
        pool: impl ExactSizeIterator<Item = &'a Health>,
        why: &str,
    ) {
        if policy.consecutive_failures == 0 {
            return;
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < policy.consecutive_failures || self.is_ejected() {
            return;
        }
        let total = pool.len();
        let down = pool.filter(|h| h.is_down()).count();
        if (down + 1) * 100 > usize::from(policy.max_ejected_percent) * total {
            // The pool cannot spare it: it stays, and the next failure
            // asks again.
            return;
        }
        let mut d = lock(&self.detail);
        if self.is_ejected() {
            return;
        }
        if d.ejection
            .as_ref()
            .is_some_and(|e| e.ends.elapsed() > policy.max_ejection)
        {
            d.ejections = 0;
        }
        let time = policy
            .base_ejection
            .saturating_mul(1 << d.ejections.min(20))
            .min(policy.max_ejection);
        d.ejections += 1;
        let now = SystemTime::now();
        d.ejection = Some(Ejection {
            reason: format!("{n} failures in a row, the last: {why}"),
            at: now,
            until: now + time,
            ends: Instant::now() + time,
        });
        self.failures.store(0, Ordering::Relaxed);
        self.ejected_until.store(
            now_ms().saturating_add(u64::try_from(time.as_millis()).unwrap_or(u64::MAX)),
            Ordering::Relaxed,
        );
        tracing::warn!(
            service = %service,
            upstream = %upstream,
            reason = %why,
            failures = n,
            ejected_for = ?time,
            "upstream ejected"
        );
    }

    /// Ends an ejection whose time is up, with its log line. Run by the
    /// proxy's upkeep, so that the end is said once, when it happens.
    pub(crate) fn expire(&self, upstream: SocketAddr) {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0
            && now_ms() >= until
            && self
                .ejected_until
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::info!(upstream = %upstream, "upstream back in rotation after its ejection");
        }
    }

    /// One active check's result.
    pub(crate) fn record_check(
        &self,
        upstream: SocketAddr,
        check: &HealthCheck,
        result: Result<u16, String>,
    ) {
        let ok = matches!(result, Ok(status) if check.accepts(status));
        let said = match &result {
            Ok(status) => format!("status {status}"),
            Err(e) => e.clone(),
        };
        let mut d = lock(&self.detail);
        let now = SystemTime::now();
        d.last_check = Some((now, said.clone()));
        if d.last_ok == Some(ok) {
            d.run = d.run.saturating_add(1);
        } else {
            d.last_ok = Some(ok);
            d.run = 1;
        }
        let next = match (d.checked, ok) {
            (Checked::Unknown | Checked::Unhealthy, true) if d.run >= check.healthy => {
                Checked::Healthy
            }
            (Checked::Unknown | Checked::Healthy, false) if d.run >= check.unhealthy => {
                Checked::Unhealthy
            }
            (same, _) => same,
        };
        if next == d.checked {
            return;
        }
        let was = d.checked;
        d.checked = next;
        d.checked_since = Some(now);
        self.down_by_check
            .store(next == Checked::Unhealthy, Ordering::Relaxed);
        if next == Checked::Unhealthy {
            let reason = format!(
                "{} checks of {} failed in a row, the last: {said}",
                d.run, check.path
            );
            tracing::warn!(upstream = %upstream, reason = %reason, "upstream unhealthy");
            d.unhealthy_reason = Some(reason);
        } else {
            d.unhealthy_reason = None;
            if was == Checked::Unhealthy {
                tracing::info!(upstream = %upstream, checks = d.run, path = %check.path, "upstream healthy");
            }
        }
    }

    /// Checks no longer run on it: what they concluded no longer holds.
    pub(crate) fn forget_checks(&self) {
        let mut d = lock(&self.detail);
        d.checked = Checked::Unknown;
        d.run = 0;
        d.last_ok = None;
        d.last_check = None;
        d.checked_since = None;
        d.unhealthy_reason = None;
        self.down_by_check.store(false, Ordering::Relaxed);
    }

    pub fn report(&self) -> Report {
        let d = lock(&self.detail);
        if self.is_ejected() {
            if let Some(e) = &d.ejection {
                return Report {
                    state: "ejected",
                    reason: Some(e.reason.clone()),
                    since: Some(e.at),
                    until: Some(e.until),
                    last_check: d.last_check.clone(),
                };
            }
        }
        Report {
            state: match d.checked {
                Checked::Unknown => "unknown",
                Checked::Healthy => "healthy",
                Checked::Unhealthy => "unhealthy",
            },
            reason: d.unhealthy_reason.clone(),
            since: d.checked_since,
            until: None,
            last_check: d.last_check.clone(),
        }
    }
}

/// The guards of one service, kept across reloads for as long as the
/// service (by its label) stays.
pub struct Guards {
    /// Concurrent requests, counted only when the service has a cap.
    in_flight: AtomicUsize,
    budget: RetryBudget,
}

impl Guards {
    pub(crate) fn new() -> Arc<Guards> {
        Arc::new(Guards {
            in_flight: AtomicUsize::new(0),
            budget: RetryBudget::default(),
        })
    }

    /// Admits a request under `max`, or says no; the guard counts it until
    /// it drops (when the response has been passed on).
    pub(crate) fn admit(self: &Arc<Self>, max: u32) -> Option<Admitted> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let mut now = self.in_flight.load(Ordering::Relaxed);
        loop {
            if now >= max {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                now,
                now + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Admitted(self.clone())),
                Err(seen) => now = seen,
            }
        }
    }

    /// Counts a request for the retry budget.
    #[inline]
    pub(crate) fn request(&self) {
        self.budget.add(false);
    }

    /// Whether one more retry is within the budget; if so, it is counted.
    pub(crate) fn may_retry(&self, percent: u8, min_per_second: u32) -> bool {
        self.budget.try_retry(percent, min_per_second)
    }
}

/// A request counted against its service's `max_requests`.
pub struct Admitted(Arc<Guards>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Seconds kept by the retry budget.
const BUDGET_WINDOW: usize = 10;

/// Requests and retries of the last [`BUDGET_WINDOW`] seconds, one bucket
/// per second (Finagle's and Linkerd's retry budget).
#[derive(Default)]
struct RetryBudget {
    buckets: [Bucket; BUDGET_WINDOW],
}

#[derive(Default)]
struct Bucket {
    /// The second this bucket counts (since [`now_ms`]'s epoch).
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

impl RetryBudget {
    fn bucket(&self, second: u64) -> &Bucket {
        let b = &self.buckets[(second % BUDGET_WINDOW as u64) as usize];
        let was = b.second.load(Ordering::Relaxed);
        if was != second
            && b.second
                .compare_exchange(was, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // A new second in an old bucket: start it over. (A count
            // racing with the reset may be lost; the budget is a bound, not
            // a ledger.)
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        b
    }

    fn add(&self, retry: bool) {
        let b = self.bucket(now_ms() / 1000);
        if retry {
            b.retries.fetch_add(1, Ordering::Relaxed);
        } else {
            b.requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn try_retry(&self, percent: u8, min_per_second: u32) -> bool {
        let second = now_ms() / 1000;
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in &self.buckets {
            let s = b.second.load(Ordering::Relaxed);
            if s + (BUDGET_WINDOW as u64) > second && s <= second {
                requests += u64::from(b.requests.load(Ordering::Relaxed));
                retries += u64::from(b.retries.load(Ordering::Relaxed));
            }
        }
        let allowed =
            requests * u64::from(percent) / 100 + u64::from(min_per_second) * BUDGET_WINDOW as u64;
        if retries >= allowed {
            return false;
        }
        self.add(true);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_budget_allows_a_share_of_requests_plus_a_floor() {
        let b = RetryBudget::default();
        // No requests yet: only the floor (1 per second over the window).
        let mut allowed = 0;
        while b.try_retry(20, 1) {
            allowed += 1;
            assert!(allowed <= 100, "unbounded");
        }
        assert_eq!(allowed, BUDGET_WINDOW);
        for _ in 0..100 {
            b.add(false);
        }
        let mut more = 0;
        while b.try_retry(20, 1) {
            more += 1;
            assert!(more <= 100, "unbounded");
        }
        assert_eq!(more, 20);
    }

    fn eject(h: &Health, pool: &[Health], policy: Outlier) -> Duration {
        for _ in 0..policy.consecutive_failures {
            h.failure(
                "127.0.0.1:1".parse().unwrap(),
                "app",
                policy,
                pool.iter(),
                "refused",
            );
        }
        let r = h.report();
        assert_eq!(r.state, "ejected");
        r.until.unwrap().duration_since(r.since.unwrap()).unwrap()
    }

    #[test]
    fn ejections_double_up_to_the_cap_and_never_empty_the_pool() {
        let policy = Outlier {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(35),
            max_ejected_percent: 50,
        };
        let pool = [Health::default(), Health::default()];
        let h = &pool[0];
        let mut times = Vec::new();
        for _ in 0..4 {
            times.push(eject(h, &pool, policy).as_secs());
            // Its time is up (as the upkeep would find it).
            h.ejected_until.store(1, Ordering::Relaxed);
            h.expire("127.0.0.1:1".parse().unwrap());
            assert_eq!(h.report().state, "unknown");
        }
        assert_eq!(times, [10, 20, 35, 35]);
        // One failure short of the threshold ejects nothing.
        h.failure(
            "127.0.0.1:1".parse().unwrap(),
            "app",
            policy,
            pool.iter(),
            "x",
        );
        assert!(!h.is_down());
        // With one of two out, the other stays in however it fails.
        eject(h, &pool, policy);
        for _ in 0..10 {
            pool[1].failure(
                "127.0.0.1:2".parse().unwrap(),
                "app",
                policy,
                pool.iter(),
                "x",
            );
        }
        assert!(!pool[1].is_down());
        // A success in between starts the count over.
        let fresh = [Health::default(), Health::default(), Health::default()];
        fresh[0].failure(
            "127.0.0.1:3".parse().unwrap(),
            "app",
            policy,
            fresh.iter(),
            "x",
        );
        fresh[0].success();
        fresh[0].failure(
            "127.0.0.1:3".parse().unwrap(),
            "app",
            policy,
            fresh.iter(),
            "x",
        );
        assert!(!fresh[0].is_down());
    }

    #[test]
    fn admission_caps_concurrent_requests_and_frees_on_drop() {
        let g = Guards::new();
        let a = g.admit(2).unwrap();
        let _b = g.admit(2).unwrap();
        assert!(g.admit(2).is_none());
        drop(a);
        assert!(g.admit(2).is_some());
    }
}
