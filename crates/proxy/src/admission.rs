//! Client connections against `max_client_connections`: each accept loop
//! takes a [`Slot`] for the connection it accepted, and at the cap it
//! waits with that one connection unread, so the rest queue in the
//! kernel's listen backlog (served as soon as one closes) instead of being
//! accepted into a process that has no descriptors left for their upstream
//! connections, its health checks, its config files or its admin API.
//! While a connection waits, idle keep-alive connections are closed to
//! make room (`h1::Shared::park`).
//!
//! A slot lives as long as the client's descriptor: it travels with the
//! connection's gauge (parked connections included) and is shared with a
//! websocket tunnel that outlives its connection's task.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tokio::sync::Notify;

use crate::io::Every;

/// Descriptors the automatic cap keeps back from client and upstream
/// connections: listeners, config and certificate files, the Docker
/// socket, health checks, the admin API, the log. A quarter of a small
/// limit.
const RESERVE: u64 = 1024;

/// A process limit counted as this many when it is "unlimited".
const UNLIMITED: u64 = 1 << 20;

/// The warning that new connections wait is given at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The cap `"auto"` stands for with `limit` descriptors: what is left
/// after the reserve, halved (each client connection may need an
/// upstream one: HAProxy's rule for its automatic `maxconn`).
pub fn auto_cap(limit: u64) -> usize {
    let limit = limit.min(UNLIMITED);
    let reserve = RESERVE.min(limit / 4);
    usize::try_from((limit - reserve) / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// The descriptors `cap` client connections may need with their upstream
/// connections and the reserve, when `limit` is fewer.
fn too_high(cap: usize, limit: u64) -> Option<u64> {
    let limit = limit.min(UNLIMITED);
    let needs = (cap as u64)
        .saturating_mul(2)
        .saturating_add(RESERVE.min(limit / 4));
    (needs > limit).then_some(needs)
}

/// The descriptors this process may open (`RLIMIT_NOFILE`'s soft limit).
pub fn descriptor_limit() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(UNLIMITED)
}

/// Raises the descriptor limit's soft value to its hard one, as Go's
/// runtime does for every program: containers commonly start with a soft
/// limit of 1024 (systemd's default, and Docker's since 25) under a hard
/// limit hundreds of times that, which no proxy should live within.
/// Returns the limit before and after.
pub fn raise_descriptor_limit() -> std::io::Result<(u64, u64)> {
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current.unwrap_or(UNLIMITED);
    // Linux allows no "unlimited" here (the ceiling is fs.nr_open).
    let hard = limit.maximum.unwrap_or(UNLIMITED);
    if before >= hard {
        return Ok((before, before));
    }
    let raised = Rlimit {
        current: Some(hard),
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, raised)?;
    Ok((before, descriptor_limit()))
}

pub(crate) struct Admission {
    /// Client connections holding a slot.
    open: AtomicUsize,
    /// Told when a slot is given back or the cap may have risen.
    freed: Notify,
    /// Accepted connections waiting at the cap.
    waiting: AtomicUsize,
    /// Told when an accepted connection starts waiting at the cap: parked
    /// idle connections are closed to make room.
    short: Notify,
    /// What `"auto"` means in this process, from the descriptor limit at
    /// start (the binary raises it first).
    auto: usize,
    /// Accepted connections that had to wait for a slot.
    waits: AtomicU64,
    /// The warning that connections wait, at most every [`WARN_EVERY`].
    warned: Every,
}

impl Admission {
    pub fn new() -> Admission {
        Admission {
            open: AtomicUsize::new(0),
            freed: Notify::new(),
            waiting: AtomicUsize::new(0),
            short: Notify::new(),
            auto: auto_cap(descriptor_limit()),
            waits: AtomicU64::new(0),
            warned: Every::new(WARN_EVERY),
        }
    }

    /// Warns when a configured cap leaves too few descriptors for the
    /// upstream connections its clients may need (the same rule as
    /// `"auto"`), so a too-high setting is seen before connects fail.
    pub fn check(&self, configured: Option<usize>) {
        let limit = descriptor_limit();
        let Some(cap) = configured else { return };
        if let Some(needs) = too_high(cap, limit) {
            tracing::warn!(
                max_client_connections = cap,
                needs,
                descriptors = limit,
                auto = self.auto,
                "max_client_connections needs more descriptors than the limit allows (each client connection may need an upstream one): upstream connects may fail for want of them"
            );
        }
    }

    /// The cap in force for a configured `max_client_connections`.
    pub fn cap(&self, configured: Option<usize>) -> usize {
        configured.unwrap_or(self.auto)
    }

    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    pub fn waits(&self) -> u64 {
        self.waits.load(Relaxed)
    }

    /// A slot for one more client connection (one accepted already), once
    /// fewer than `cap()` are open (`cap` is read again after each wait: a
    /// reload may change it).
    pub async fn admit(self: &Arc<Self>, cap: impl Fn() -> usize) -> Slot {
        let mut waited = false;
        loop {
            if let Some(slot) = self.try_take(&cap) {
                return slot;
            }
            // At the cap. Counted as waiting and registered before looking
            // again, so that a slot given back in between is not missed
            // (see `Slot`'s drop).
            let _waiting = Waiting::new(&self.waiting);
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.try_take(&cap) {
                return slot;
            }
            if !waited {
                waited = true;
                self.waits.fetch_add(1, Relaxed);
                self.short.notify_waiters();
                self.warn(cap());
            }
            freed.await;
        }
    }

    /// A slot, if fewer than `cap()` are open.
    fn try_take(self: &Arc<Self>, cap: impl Fn() -> usize) -> Option<Slot> {
        let cap = cap();
        loop {
            let open = self.open.load(SeqCst);
            if open >= cap {
                return None;
            }
            if self
                .open
                .compare_exchange(open, open + 1, SeqCst, SeqCst)
                .is_ok()
            {
                return Some(Slot(self.clone()));
            }
        }
    }

    /// Accepted connections waiting at the cap now.
    pub fn short_now(&self) -> usize {
        self.waiting.load(Relaxed)
    }

    /// Resolves when an accept loop starts waiting at the cap.
    pub fn short(&self) -> tokio::sync::futures::Notified<'_> {
        self.short.notified()
    }

    /// The cap may have changed (a new config version): waiting accept
    /// loops look again.
    pub fn recheck(&self) {
        self.freed.notify_waiters();
    }

    fn warn(&self, cap: usize) {
        if !self.warned.due() {
            return;
        }
        tracing::warn!(
            max_client_connections = cap,
            "client connections at max_client_connections; new ones wait in the listen backlog until one closes"
        );
    }
}

/// One client connection's place under the cap, given back on drop.
pub(crate) struct Slot(Arc<Admission>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, SeqCst);
        // Only when someone waits (the usual case has no one, and the
        // notify takes a lock). A waiter counted after this read looks at
        // `open` after the decrement above, so it sees the slot.
        if self.0.waiting.load(SeqCst) > 0 {
            self.0.freed.notify_waiters();
        }
    }
}

/// An accepted connection counted in `Admission::waiting` while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Waiting<'a> {
        count.fetch_add(1, SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_keeps_a_reserve_and_halves_the_rest() {
        assert_eq!(auto_cap(1_048_576), (1_048_576 - 1024) / 2);
        assert_eq!(auto_cap(20_000), (20_000 - 1024) / 2);
        // A small limit keeps a quarter back.
        assert_eq!(auto_cap(1024), 384);
        assert_eq!(auto_cap(u64::MAX), auto_cap(UNLIMITED));
        assert_eq!(auto_cap(1), 1);
    }

    #[test]
    fn a_cap_above_what_the_limit_allows_is_told() {
        assert_eq!(too_high(auto_cap(20_000), 20_000), None);
        assert_eq!(too_high(19_000, 20_000), Some(39_024));
        assert_eq!(too_high(384, 1024), None);
        assert_eq!(too_high(385, 1024), Some(1026));
    }

    #[tokio::test]
    async fn at_the_cap_admission_waits_for_a_slot_to_be_given_back() {
        let admission = Arc::new(Admission::new());
        let first = admission.admit(|| 2).await;
        let _second = admission.admit(|| 2).await;
        let mut third = Box::pin(admission.admit(|| 2));
        assert!(futures_poll_once(&mut third).await.is_none());
        assert_eq!(admission.waits(), 1);
        drop(first);
        let _third = third.await;
        assert_eq!(admission.open(), 2);
    }

    #[tokio::test]
    async fn a_raised_cap_lets_a_waiting_accept_go_on() {
        let admission = Arc::new(Admission::new());
        let cap = Arc::new(AtomicUsize::new(1));
        let _first = admission.admit(|| cap.load(Relaxed)).await;
        let mut second = Box::pin(admission.admit(|| cap.load(Relaxed)));
        assert!(futures_poll_once(&mut second).await.is_none());
        cap.store(2, Relaxed);
        admission.recheck();
        let _second = second.await;
        assert_eq!(admission.open(), 2);
    }

    /// Polls a future once: `Some` if it finished.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
