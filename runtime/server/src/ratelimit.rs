//! Rate limits and connection caps (governor), bounded in memory.
//!
//! Keyed limiters grow with every new key; [`KeyedLimiter::sweep`] drops the
//! keys whose state is indistinguishable from a fresh one, and the server
//! sweeps every few seconds. Connection counters remove a key when its count
//! drops to zero, so they hold only live keys.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// The process's clock for every limiter. Building a [`DefaultClock`]
/// (quanta) runs `cpuid` and costs microseconds; a clone is a copy. Before
/// this, one per connection and two per message took a third of the
/// server's CPU under load.
pub fn clock() -> DefaultClock {
    static CLOCK: std::sync::OnceLock<DefaultClock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(DefaultClock::default).clone()
}

/// A direct (unkeyed) limiter on [`clock`].
pub fn direct(quota: Quota) -> governor::DefaultDirectRateLimiter {
    RateLimiter::direct_with_clock(quota, clock())
}

/// A quota of `per_sec` per second with a burst of `burst`.
pub fn quota(per_sec: u32, burst: u32) -> Quota {
    let per_sec = NonZeroU32::new(per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_sec).allow_burst(burst)
}

/// The key per-IP limits count a client under: an IPv4 address as it is
/// (an IPv4-mapped IPv6 address as its IPv4 address), an IPv6 address cut
/// to its first `v6_prefix` bits, since one host or customer usually holds
/// a whole /64 and could otherwise take a fresh cap per address.
pub fn ip_key(ip: std::net::IpAddr, v6_prefix: u8) -> std::net::IpAddr {
    match ip.to_canonical() {
        v4 @ std::net::IpAddr::V4(_) => v4,
        v6 => sluice_config::mask(v6, v6_prefix),
    }
}

/// A limiter per key, generic over the clock so it can be tested with a
/// fake one.
pub struct KeyedLimiter<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    limiter: RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// A limiter on the real clock.
    pub fn new(quota: Quota) -> Self {
        Self::with_clock(quota, clock())
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> KeyedLimiter<K, C> {
    /// A limiter on `clock`.
    pub fn with_clock(quota: Quota, clock: C) -> Self {
        Self {
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// `Err(retry_after)` when `key` is over its quota.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forget keys that are back to a full quota; returns how many remain.
    pub fn sweep(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.limiter.len()
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// Counts live connections per key, with a cap.
pub struct ConnectionCounter<K: Hash + Eq + Clone> {
    counts: Arc<Mutex<HashMap<K, u32>>>,
}

impl<K: Hash + Eq + Clone> Clone for ConnectionCounter<K> {
    /// A handle to the same counts.
    fn clone(&self) -> Self {
        Self {
            counts: self.counts.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone> Default for ConnectionCounter<K> {
    fn default() -> Self {
        Self {
            counts: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// A held slot; released when dropped.
pub struct ConnectionSlot<K: Hash + Eq + Clone> {
    counts: Arc<Mutex<HashMap<K, u32>>>,
    key: K,
}

impl<K: Hash + Eq + Clone> ConnectionCounter<K> {
    /// Every key holding at least one slot, with its count.
    pub fn snapshot(&self) -> Vec<(K, u32)> {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k.clone(), *n))
            .collect()
    }

    /// Take a slot for `key` unless it already holds `max`.
    pub fn acquire(&self, key: K, max: u32) -> Option<ConnectionSlot<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= max {
            if *n == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(ConnectionSlot {
            counts: self.counts.clone(),
            key,
        })
    }

    /// Live connections of `key`.
    pub fn count(&self, key: &K) -> u32 {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Keys with at least one live connection.
    pub fn keys(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl<K: Hash + Eq + Clone> Drop for ConnectionSlot<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn a_million_distinct_keys_are_swept_once_recovered() {
        let clock = FakeRelativeClock::default();
        let limiter: KeyedLimiter<u64, FakeRelativeClock> =
            KeyedLimiter::with_clock(quota(10, 10), clock.clone());
        for key in 0..1_000_000u64 {
            assert!(limiter.check(&key).is_ok());
        }
        assert_eq!(limiter.len(), 1_000_000);
        // Not yet recovered: kept (forgetting them would reset their quota).
        assert_eq!(limiter.sweep(), 1_000_000);
        clock.advance(Duration::from_secs(2));
        assert_eq!(limiter.sweep(), 0);
    }

    #[test]
    fn over_quota_reports_when_to_retry() {
        let clock = FakeRelativeClock::default();
        let limiter: KeyedLimiter<&str, FakeRelativeClock> =
            KeyedLimiter::with_clock(quota(2, 2), clock.clone());
        assert!(limiter.check(&"a").is_ok());
        assert!(limiter.check(&"a").is_ok());
        let retry = limiter.check(&"a").unwrap_err();
        assert!(
            retry > Duration::ZERO && retry <= Duration::from_millis(500),
            "{retry:?}"
        );
        assert!(limiter.check(&"b").is_ok(), "keys are independent");
        clock.advance(Duration::from_millis(500));
        assert!(limiter.check(&"a").is_ok());
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_prefix() {
        let key = |ip: &str, prefix| ip_key(ip.parse().unwrap(), prefix);
        // Two addresses of one /64 share a key; the next /64 does not.
        assert_eq!(key("2001:db8:1:2::1", 64), key("2001:db8:1:2:ffff::9", 64));
        assert_eq!(key("2001:db8:1:2::1", 64).to_string(), "2001:db8:1:2::");
        assert_ne!(key("2001:db8:1:2::1", 64), key("2001:db8:1:3::1", 64));
        assert_eq!(key("2001:db8:1:2::1", 48), key("2001:db8:1:3::1", 48));
        assert_ne!(key("2001:db8::1", 128), key("2001:db8::2", 128));
        assert_eq!(key("::1", 64).to_string(), "::");
        // IPv4 as it is, also when it arrives IPv4-mapped on a dual-stack
        // listener.
        assert_eq!(key("192.0.2.7", 64).to_string(), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7", 64).to_string(), "192.0.2.7");
        assert_ne!(key("192.0.2.7", 64), key("192.0.2.8", 64));
    }

    #[test]
    fn connection_slots_are_capped_and_released() {
        let counter = ConnectionCounter::default();
        let a = counter.acquire("ip", 2).unwrap();
        let _b = counter.acquire("ip", 2).unwrap();
        assert!(counter.acquire("ip", 2).is_none());
        drop(a);
        assert!(counter.acquire("ip", 2).is_some());
        assert_eq!(counter.keys(), 1);
        drop(_b);
        assert_eq!(counter.keys(), 0, "no key is kept without connections");
    }
}
