//! What the management API holds back before any work: requests without a
//! valid token reach the audit log at most once per source address per
//! [`UNAUTHENTICATED_INTERVAL`]; a tenant's token makes at most its
//! `[tenants.<id>.quotas] management_requests_per_sec`; and a tenant has
//! one push in flight at a time (what a push holds, its body and its
//! verification, is then bounded per tenant). Each refusal is a 429 with
//! `Retry-After`.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::DefaultDirectRateLimiter;
use governor::clock::Clock as _;
use sluice_server::ratelimit;

/// At most one audit record of unauthenticated requests per source
/// address (IPv6: per /64) in this interval.
pub const UNAUTHENTICATED_INTERVAL: Duration = Duration::from_secs(60);
/// Source addresses remembered for that; past it, requests from addresses
/// not remembered are recorded together, as from "many addresses".
pub const MAX_UNAUTHENTICATED_SOURCES: usize = 4096;

/// Unauthenticated requests per source, for the audit log.
#[derive(Default)]
pub struct Unauthenticated {
    sources: Mutex<HashMap<Option<IpAddr>, Source>>,
}

struct Source {
    recorded: Instant,
    /// Requests since the last record.
    since: u64,
}

/// A record to write: who (`None`: many addresses) and how many requests
/// it stands for.
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    /// The source (an address, or an IPv6 /64), `None` for many.
    pub source: Option<IpAddr>,
    /// Requests without a valid token it stands for (this one included).
    pub requests: u64,
}

impl Unauthenticated {
    /// A request without a valid token from `ip` at `now`: the record to
    /// write, or `None` when this source was recorded less than an
    /// interval ago (the request is counted into its next record).
    pub fn request(&self, ip: IpAddr, now: Instant) -> Option<Record> {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        let mut key = Some(ratelimit::ip_key(ip, 64));
        if !sources.contains_key(&key) && sources.len() >= MAX_UNAUTHENTICATED_SOURCES {
            sources.retain(|_, s| now.duration_since(s.recorded) < UNAUTHENTICATED_INTERVAL);
            if sources.len() >= MAX_UNAUTHENTICATED_SOURCES {
                key = None;
            }
        }
        match sources.get_mut(&key) {
            Some(s) if now.duration_since(s.recorded) < UNAUTHENTICATED_INTERVAL => {
                s.since += 1;
                None
            }
            Some(s) => {
                let requests = s.since + 1;
                *s = Source {
                    recorded: now,
                    since: 0,
                };
                Some(Record {
                    source: key,
                    requests,
                })
            }
            None => {
                sources.insert(
                    key,
                    Source {
                        recorded: now,
                        since: 0,
                    },
                );
                Some(Record {
                    source: key,
                    requests: 1,
                })
            }
        }
    }
}

/// Each tenant's management request rate.
#[derive(Default)]
pub struct TenantRates {
    limiters: Mutex<HashMap<String, (u32, Arc<DefaultDirectRateLimiter>)>>,
}

impl TenantRates {
    /// A request with `tenant`'s token, allowed `per_sec` (and as many at
    /// once): `Err` is how long until the next is allowed.
    pub fn check(&self, tenant: &str, per_sec: u32) -> Result<(), Duration> {
        let limiter = {
            let mut limiters = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
            match limiters.get(tenant) {
                // A reload that changed the quota starts a fresh bucket.
                Some((rate, l)) if *rate == per_sec => l.clone(),
                _ => {
                    let l = Arc::new(ratelimit::direct(ratelimit::quota(per_sec, per_sec)));
                    limiters.insert(tenant.to_owned(), (per_sec, l.clone()));
                    l
                }
            }
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(ratelimit::clock().now()))
    }
}

/// The tenants with a push in flight.
#[derive(Default)]
pub struct Pushes {
    tenants: Arc<Mutex<HashSet<String>>>,
}

/// A push in flight; the tenant may push again once it is dropped.
pub struct PushInFlight {
    tenant: String,
    tenants: Arc<Mutex<HashSet<String>>>,
}

impl Pushes {
    /// Start a push for `tenant`; `None` while another is in flight.
    pub fn begin(&self, tenant: &str) -> Option<PushInFlight> {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        tenants.insert(tenant.to_owned()).then(|| PushInFlight {
            tenant: tenant.to_owned(),
            tenants: self.tenants.clone(),
        })
    }
}

impl Drop for PushInFlight {
    fn drop(&mut self) {
        self.tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.tenant);
    }
}

/// `Retry-After` for a wait: whole seconds, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_millis().div_ceil(1000) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_per_source_per_interval_counting_what_it_stands_for() {
        let u = Unauthenticated::default();
        let t0 = Instant::now();
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let b_same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
        assert_eq!(u.request(a, t0).map(|r| r.requests), Some(1));
        for n in 1..1000 {
            assert_eq!(u.request(a, t0 + Duration::from_millis(n)), None);
        }
        assert!(u.request(b, t0).is_some());
        assert_eq!(u.request(b_same_64, t0), None, "one /64 is one source");
        let next = u.request(a, t0 + UNAUTHENTICATED_INTERVAL).unwrap();
        assert_eq!(
            next.requests, 1000,
            "the next record counts what was held back"
        );
    }

    #[test]
    fn past_the_remembered_sources_the_rest_are_recorded_as_many() {
        let u = Unauthenticated::default();
        let t0 = Instant::now();
        let mut records = 0;
        for n in 0..(MAX_UNAUTHENTICATED_SOURCES as u32 + 1000) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            if u.request(ip, t0).is_some() {
                records += 1;
            }
        }
        assert_eq!(
            records,
            MAX_UNAUTHENTICATED_SOURCES + 1,
            "one record for the many"
        );
        // Once the interval passed, remembered sources make room.
        let late = IpAddr::from(std::net::Ipv4Addr::new(192, 0, 2, 1));
        let r = u.request(late, t0 + UNAUTHENTICATED_INTERVAL).unwrap();
        assert_eq!(r.source, Some(late));
    }

    #[test]
    fn one_push_in_flight_per_tenant() {
        let p = Pushes::default();
        let a = p.begin("a").unwrap();
        assert!(p.begin("a").is_none());
        let _b = p.begin("b").expect("another tenant is not held back");
        drop(a);
        assert!(p.begin("a").is_some());
    }

    #[test]
    fn a_tenant_past_its_rate_waits_and_another_does_not() {
        let r = TenantRates::default();
        assert!(r.check("a", 2).is_ok());
        assert!(r.check("a", 2).is_ok());
        let wait = r.check("a", 2).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(r.check("b", 2).is_ok());
        assert_eq!(retry_after_secs(wait), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
    }
}
