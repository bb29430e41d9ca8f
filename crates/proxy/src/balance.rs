//! Which upstream of a pool a request tries first: a consistent hash when
//! the route pins requests (sticky cookie, client address), else the
//! route's policy (round robin, or the less busy of two random picks).
//! Retries go on from there through the rest of the pool in order, passing
//! over upstreams that are down (`crate::pipeline::try_upstreams`).

use std::sync::Arc;

use portico_model::Balance;

use crate::upstream::Upstream;

/// splitmix64's finaliser: spreads a combination of two hashes evenly.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Index of the upstream of `upstreams` to try first; `round_robin` gives
/// the pool's next turn.
pub(crate) fn first(
    upstreams: &[Arc<Upstream>],
    policy: Balance,
    affinity: Option<u64>,
    round_robin: impl FnOnce() -> usize,
) -> usize {
    if let Some(key) = affinity {
        // Rendezvous hashing: each upstream scores the key, the highest
        // wins. Adding an upstream to N moves only the keys it now wins,
        // about 1/(N+1) of them; removing one moves only its own.
        // An upstream that is down is left out, so its keys go elsewhere
        // and come back when it does (all of them down: all ranked).
        let pick = |skip_down: bool| {
            upstreams
                .iter()
                .enumerate()
                .filter(|(_, u)| !skip_down || !u.health.is_down())
                .max_by_key(|(_, u)| mix(key ^ u.addr_hash))
                .map(|(i, _)| i)
        };
        return pick(true).or_else(|| pick(false)).unwrap_or(0);
    }
    match policy {
        Balance::RoundRobin => round_robin() % upstreams.len().max(1),
        Balance::LeastRequest => {
            let n = upstreams.len();
            if n < 2 {
                return 0;
            }
            // Power of two choices: nearly as good as the least busy of
            // all, without scanning them or herding onto one.
            let a = fastrand::usize(..n);
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            if upstreams[b].in_flight() < upstreams[a].in_flight() {
                b
            } else {
                a
            }
        }
    }
}
