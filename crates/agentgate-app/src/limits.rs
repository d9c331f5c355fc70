//! Admission limits decided before the upgrade: the handshake rate per IP (GCRA,
//! burst twice the rate) and the open connections per IP and per principal. Each
//! admitted connection holds [`Slot`]s that give their count back when dropped, so a
//! connection that ends in any way frees its place.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::LimitsConfig;
use crate::session::{FastHash, Owner};

/// Counts open connections per key, up to a cap. `S` hashes the keys: SipHash (the
/// default) for keys a client chooses, such as its IP address; see
/// [`crate::session::FastHash`] for keys it cannot.
#[derive(Debug)]
pub struct Counter<K: Eq + Hash, S = RandomState> {
    counts: Mutex<HashMap<K, usize, S>>,
    cap: usize,
}

/// One counted place; dropping it gives the place back.
#[derive(Debug)]
pub struct Slot<K: Eq + Hash + Clone, S: BuildHasher = RandomState> {
    counter: Arc<Counter<K, S>>,
    key: K,
}

impl<K: Eq + Hash + Clone, S: BuildHasher + Default> Counter<K, S> {
    /// A counter allowing `cap` per key.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self { counts: Mutex::new(HashMap::default()), cap })
    }

    /// Take a place for `key`, or `None` when it already holds `cap`.
    pub fn acquire(self: &Arc<Self>, key: K) -> Option<Slot<K, S>> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match counts.get_mut(&key) {
            Some(n) if *n >= self.cap => return None,
            Some(n) => *n += 1,
            // The map keeps its own copy only for a key it did not hold.
            None if self.cap == 0 => return None,
            None => {
                counts.insert(key.clone(), 1);
            }
        }
        Some(Slot { counter: Arc::clone(self), key })
    }

    /// Current count for `key`.
    pub fn count(&self, key: &K) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied().unwrap_or(0)
    }
}

impl<K: Eq + Hash + Clone, S: BuildHasher> Slot<K, S> {
    /// The key this place is counted under.
    pub fn key(&self) -> &K {
        &self.key
    }
}

impl<K: Eq + Hash + Clone, S: BuildHasher> Drop for Slot<K, S> {
    fn drop(&mut self) {
        let mut counts = self.counter.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

type IpLimiter = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>;

/// The node's admission limits.
#[derive(Debug)]
pub struct Limits {
    handshakes: IpLimiter,
    clock: DefaultClock,
    /// Open connections per IP.
    pub per_ip: Arc<Counter<IpAddr>>,
    /// Open connections per principal (subject and tenant).
    pub per_principal: Arc<Counter<Owner, FastHash>>,
}

impl Limits {
    /// Limits from `[limits]`.
    pub fn new(cfg: &LimitsConfig) -> Self {
        let rate = NonZeroU32::new(cfg.handshakes_per_ip_per_s).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.get().saturating_mul(2)).unwrap_or(rate);
        Self {
            handshakes: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
            per_ip: Counter::new(cfg.connections_per_ip),
            per_principal: Counter::new(cfg.connections_per_principal),
        }
    }

    /// The node's clock, for every per-connection limiter. Building a clock is costly
    /// (quanta probes the CPU with CPUID, a VM exit on virtual machines: 4% of a
    /// handshake's CPU in docs/performance.md), so connections clone this one instead.
    pub fn clock(&self) -> &DefaultClock {
        &self.clock
    }

    /// Count a handshake from `ip`; `Err` carries how long to wait.
    pub fn handshake(&self, ip: IpAddr) -> Result<(), Duration> {
        self.handshakes.check_key(&ip).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forget idle rate-limit buckets, bounding the limiter's memory.
    pub fn sweep(&self) {
        self.handshakes.retain_recent();
        self.handshakes.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_given_back_on_drop() {
        let c: Arc<Counter<&str>> = Counter::new(2);
        let a = c.acquire("x").unwrap();
        let _b = c.acquire("x").unwrap();
        assert!(c.acquire("x").is_none());
        drop(a);
        assert!(c.acquire("x").is_some());
        assert_eq!(c.count(&"y"), 0);
    }
}
