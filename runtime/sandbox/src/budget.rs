//! Who holds what the sandbox shares: instance slots of the pooling
//! allocator and compiled code, counted per tenant (`[tenants.<id>.quotas]
//! instances` and `compiled_bytes`) and for the node (`[sandbox]
//! pool_instances`).
//!
//! Every live instance, idle or busy, holds a [`Ticket`]: one slot of its
//! tenant's quota and one of the node's pool, given back when the instance
//! is dropped (wherever that happens: after a trap, when a `fresh` call
//! ends, when its handler is unloaded, when it is evicted). A handler's idle
//! instances are reachable from here through [`IdlePool`], so that when a
//! new instance is needed and
//! - the tenant is at its quota, the tenant's least recently used idle
//!   instance (over all its handlers and versions) is dropped;
//! - the node's pool is full, the least recently used idle instance of the
//!   tenant holding the most instances is dropped (a tenant pays for its
//!   own growth first; plain global LRU would let a tenant that makes
//!   instances fast keep evicting a quiet tenant's warm ones);
//! - nothing is idle (every instance is busy in a call), the call waits for
//!   one to be given back, at most one deadline, like a call over
//!   `max_concurrency`, then answers `unavailable`.
//!
//! Compiled code is held per tenant by digest: a handler holds its
//! component's compiled bytes for as long as it is loaded ([`Holding`]),
//! and a load of a pushed component past `compiled_bytes` is refused.
//!
//! On the message path this costs nothing while an idle instance is there
//! (a `reuse` call takes one and gives it back with a stamp from one atomic
//! counter); making an instance costs two atomic increments, dropping one
//! two decrements.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use serde::Serialize;
use sluice_config::Quotas;
use tokio::sync::Notify;

/// A handler's idle instances, as the budget reaches them to evict one.
pub(crate) trait IdlePool: Send + Sync {
    /// The stamp ([`Budget::stamp`]) of its least recently used idle
    /// instance, if it has one.
    fn oldest_idle(&self) -> Option<u64>;
    /// Drop its least recently used idle instance; false when it had none.
    fn drop_oldest_idle(&self) -> bool;
}

/// The node's instance pool and every tenant's account.
pub(crate) struct Budget {
    /// Instances the node's pool has slots for.
    pool: u32,
    /// Instances alive, idle and busy, over every tenant.
    live: AtomicU32,
    /// The LRU clock: stamps of idle instances.
    clock: AtomicU64,
    /// Calls waiting for a ticket (nobody is notified when none wait).
    waiting: AtomicUsize,
    /// A ticket was given back.
    released: Notify,
    accounts: Mutex<HashMap<Arc<str>, Arc<Account>>>,
    /// Idle instances dropped to make room, for the node or a tenant.
    evicted: AtomicU64,
}

/// What one tenant holds, and may hold.
pub(crate) struct Account {
    tenant: Arc<str>,
    /// `quotas.instances`.
    max_instances: AtomicU32,
    /// Instances alive, idle and busy.
    live: AtomicU32,
    /// `quotas.compiled_bytes`.
    max_compiled: AtomicUsize,
    /// Compiled components held by the tenant's loaded handlers: digest ->
    /// (bytes, handlers holding it).
    compiled: Mutex<HashMap<String, (usize, usize)>>,
    /// The tenant's handlers (dead ones pruned as they are met).
    pools: Mutex<Vec<Weak<dyn IdlePool>>>,
}

/// One live instance's place in its tenant's quota and the node's pool.
pub(crate) struct Ticket {
    budget: Arc<Budget>,
    account: Arc<Account>,
}

/// No instance could be had within the wait.
#[derive(Debug)]
pub(crate) enum Exhausted {
    /// Every instance the tenant may hold is busy.
    Tenant(u32),
    /// Every slot of the node's pool is busy.
    Node(u32),
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exhausted::Tenant(n) => write!(
                f,
                "the tenant's {n} instances ([tenants.<id>.quotas] instances) stayed busy for a whole deadline"
            ),
            Exhausted::Node(n) => write!(
                f,
                "the node's {n} instance slots ([sandbox] pool_instances) stayed busy for a whole deadline"
            ),
        }
    }
}

/// A pushed component's compiled code would pass the tenant's quota.
#[derive(Debug)]
pub(crate) struct OverQuota {
    pub(crate) held: usize,
    pub(crate) size: usize,
    pub(crate) max: usize,
}

/// A loaded handler's hold on its compiled component, given back when
/// the handler is dropped.
pub(crate) struct Holding {
    account: Arc<Account>,
    digest: String,
}

/// What the sandbox holds now, from its own counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SandboxUsage {
    /// Instances alive (idle and busy), over every tenant.
    pub instances: u32,
    /// Slots of the pool (`[sandbox] pool_instances`).
    pub pool_instances: u32,
    /// Component instances the pooling allocator holds now (wasmtime's own
    /// count).
    pub pool_in_use: u64,
    /// Idle instances dropped to make room since start.
    pub evicted: u64,
    /// Distinct compiled components in memory.
    pub compiled_components: usize,
    /// Bytes of their compiled code.
    pub compiled_bytes: usize,
    /// Per tenant.
    pub tenants: BTreeMap<String, TenantUsage>,
}

/// What one tenant holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TenantUsage {
    /// Instances alive, idle and busy.
    pub instances: u32,
    /// Its quota.
    pub max_instances: u32,
    /// Bytes of compiled code its loaded handlers hold.
    pub compiled_bytes: usize,
    /// Its quota.
    pub max_compiled_bytes: usize,
}

impl Budget {
    pub(crate) fn new(pool: u32) -> Arc<Self> {
        Arc::new(Self {
            pool,
            live: AtomicU32::new(0),
            clock: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            released: Notify::new(),
            accounts: Mutex::default(),
            evicted: AtomicU64::new(0),
        })
    }

    /// A stamp for an instance going idle now: later stamps are more
    /// recently used.
    pub(crate) fn stamp(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// The account of `tenant` (made with the default quotas if it has
    /// none yet).
    pub(crate) fn account(&self, tenant: &str) -> Arc<Account> {
        let mut accounts = self.accounts();
        if let Some(a) = accounts.get(tenant) {
            return a.clone();
        }
        let tenant: Arc<str> = Arc::from(tenant);
        let quotas = Quotas::default();
        let account = Arc::new(Account {
            tenant: tenant.clone(),
            max_instances: AtomicU32::new(quotas.instances),
            live: AtomicU32::new(0),
            max_compiled: AtomicUsize::new(quotas.compiled_bytes),
            compiled: Mutex::default(),
            pools: Mutex::default(),
        });
        accounts.insert(tenant, account.clone());
        account
    }

    /// Set `tenant`'s quotas (a tenant loaded or reloaded). A lower
    /// instance quota is met as instances are next needed or given back.
    pub(crate) fn set_quotas(&self, tenant: &str, quotas: &Quotas) {
        let account = self.account(tenant);
        account
            .max_instances
            .store(quotas.instances, Ordering::Relaxed);
        account
            .max_compiled
            .store(quotas.compiled_bytes, Ordering::Relaxed);
    }

    fn accounts(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Account>>> {
        self.accounts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A ticket for one more instance of `account`'s tenant, now, if its
    /// quota and the pool have room.
    pub(crate) fn try_ticket(
        self: &Arc<Self>,
        account: &Arc<Account>,
    ) -> Result<Ticket, Exhausted> {
        let max = account.max_instances.load(Ordering::Relaxed);
        if !take_one(&account.live, max) {
            return Err(Exhausted::Tenant(max));
        }
        if !take_one(&self.live, self.pool) {
            account.live.fetch_sub(1, Ordering::AcqRel);
            return Err(Exhausted::Node(self.pool));
        }
        Ok(Ticket {
            budget: self.clone(),
            account: account.clone(),
        })
    }

    /// A ticket for one more instance: evicting idle instances to make
    /// room, else waiting for one to be given back, at most `wait`.
    pub(crate) async fn ticket(
        self: &Arc<Self>,
        account: &Arc<Account>,
        wait: Duration,
    ) -> Result<Ticket, Exhausted> {
        if let Ok(t) = self.try_ticket(account) {
            return Ok(t);
        }
        let deadline = tokio::time::Instant::now() + wait;
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(self);
        loop {
            // Listen before looking, so a ticket given back in between
            // is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let full = match self.try_ticket(account) {
                Ok(t) => return Ok(t),
                Err(full) => full,
            };
            let made_room = match full {
                Exhausted::Tenant(_) => self.evict_from(account),
                Exhausted::Node(_) => self.evict_for_node(),
            };
            if made_room {
                continue;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(full);
            }
        }
    }

    /// Drop one idle instance to make room in the node's pool: the least
    /// recently used of the tenant holding the most instances (then the
    /// next one, if that tenant has none idle). False when none is idle.
    pub(crate) fn evict_for_node(&self) -> bool {
        let mut accounts: Vec<Arc<Account>> = self.accounts().values().cloned().collect();
        accounts.sort_by_key(|a| std::cmp::Reverse(a.live.load(Ordering::Relaxed)));
        accounts.iter().any(|a| self.evict_from(a))
    }

    /// Drop `account`'s least recently used idle instance.
    fn evict_from(&self, account: &Account) -> bool {
        loop {
            let oldest = {
                let mut pools = account.pools();
                pools.retain(|p| p.strong_count() > 0);
                pools
                    .iter()
                    .filter_map(|p| p.upgrade())
                    .filter_map(|p| p.oldest_idle().map(|stamp| (stamp, p)))
                    .min_by_key(|(stamp, _)| *stamp)
            };
            let Some((_, pool)) = oldest else {
                return false;
            };
            // Another call may have taken it meanwhile: then look again.
            if pool.drop_oldest_idle() {
                self.evicted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(tenant = %account.tenant, "idle instance evicted to make room");
                return true;
            }
        }
    }

    /// Instances alive and accounts, for [`SandboxUsage`].
    pub(crate) fn usage(&self) -> (u32, u32, u64, BTreeMap<String, TenantUsage>) {
        let tenants = self
            .accounts()
            .iter()
            .map(|(t, a)| {
                (
                    t.to_string(),
                    TenantUsage {
                        instances: a.live.load(Ordering::Relaxed),
                        max_instances: a.max_instances.load(Ordering::Relaxed),
                        compiled_bytes: a.compiled_bytes(),
                        max_compiled_bytes: a.max_compiled.load(Ordering::Relaxed),
                    },
                )
            })
            .collect();
        (
            self.live.load(Ordering::Relaxed),
            self.pool,
            self.evicted.load(Ordering::Relaxed),
            tenants,
        )
    }
}

/// Take one of `max` from `counter`, if one is left.
fn take_one(counter: &AtomicU32, max: u32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// A call counted among those waiting for a ticket.
struct Waiting<'a>(&'a Budget);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.account.live.fetch_sub(1, Ordering::AcqRel);
        self.budget.live.fetch_sub(1, Ordering::AcqRel);
        if self.budget.waiting.load(Ordering::Acquire) > 0 {
            self.budget.released.notify_waiters();
        }
    }
}

impl Account {
    fn pools(&self) -> std::sync::MutexGuard<'_, Vec<Weak<dyn IdlePool>>> {
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn compiled(&self) -> std::sync::MutexGuard<'_, HashMap<String, (usize, usize)>> {
        self.compiled.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A handler of this tenant was loaded: its idle instances may be
    /// evicted from now on.
    pub(crate) fn register(&self, pool: Weak<dyn IdlePool>) {
        let mut pools = self.pools();
        pools.retain(|p| p.strong_count() > 0);
        pools.push(pool);
    }

    /// Bytes of compiled code the tenant's loaded handlers hold.
    pub(crate) fn compiled_bytes(&self) -> usize {
        self.compiled().values().map(|(bytes, _)| bytes).sum()
    }

    /// Hold `digest`'s compiled code (`size` bytes) for a handler being
    /// loaded. With `enforce` (a pushed component), refused when a
    /// component the tenant does not hold yet would take it past its
    /// `compiled_bytes`.
    pub(crate) fn hold(
        self: &Arc<Self>,
        digest: &str,
        size: usize,
        enforce: bool,
    ) -> Result<Holding, OverQuota> {
        let mut compiled = self.compiled();
        match compiled.get_mut(digest) {
            Some((_, holders)) => *holders += 1,
            None => {
                let held: usize = compiled.values().map(|(bytes, _)| bytes).sum();
                let max = self.max_compiled.load(Ordering::Relaxed);
                if enforce && held.saturating_add(size) > max {
                    return Err(OverQuota { held, size, max });
                }
                compiled.insert(digest.to_owned(), (size, 1));
            }
        }
        Ok(Holding {
            account: self.clone(),
            digest: digest.to_owned(),
        })
    }

    /// Whether the tenant already holds all the compiled code it may (a
    /// push is refused before it is compiled).
    pub(crate) fn compiled_full(&self) -> Option<OverQuota> {
        let held = self.compiled_bytes();
        let max = self.max_compiled.load(Ordering::Relaxed);
        (held >= max).then_some(OverQuota { held, size: 0, max })
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        let mut compiled = self.account.compiled();
        if let Some((_, holders)) = compiled.get_mut(&self.digest) {
            *holders -= 1;
            if *holders == 0 {
                compiled.remove(&self.digest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle instances as stamps, each holding a ticket.
    struct Pool(Mutex<Vec<(u64, Ticket)>>);

    impl IdlePool for Pool {
        fn oldest_idle(&self) -> Option<u64> {
            self.0.lock().expect("pool").first().map(|(s, _)| *s)
        }
        fn drop_oldest_idle(&self) -> bool {
            let mut idle = self.0.lock().expect("pool");
            if idle.is_empty() {
                return false;
            }
            drop(idle.remove(0));
            true
        }
    }

    fn pool_of(budget: &Budget, tenant: &str) -> Arc<Pool> {
        let pool = Arc::new(Pool(Mutex::default()));
        let weak: Weak<dyn IdlePool> = Arc::downgrade(&pool) as Weak<dyn IdlePool>;
        budget.account(tenant).register(weak);
        pool
    }

    fn quotas(instances: u32) -> Quotas {
        Quotas {
            instances,
            ..Quotas::default()
        }
    }

    #[tokio::test]
    async fn past_its_quota_a_tenant_loses_its_least_recently_used_idle_instance() {
        let budget = Budget::new(100);
        budget.set_quotas("a", &quotas(3));
        let a = budget.account("a");
        let (p1, p2) = (pool_of(&budget, "a"), pool_of(&budget, "a"));
        for pool in [&p1, &p2, &p1] {
            let t = budget.try_ticket(&a).expect("room");
            pool.0.lock().expect("pool").push((budget.stamp(), t));
        }
        assert!(matches!(budget.try_ticket(&a), Err(Exhausted::Tenant(3))));
        // The oldest (p1's first) goes; p2's stays.
        let t = budget
            .ticket(&a, Duration::from_millis(10))
            .await
            .expect("made room");
        assert_eq!(p1.0.lock().expect("pool").len(), 1);
        assert_eq!(p2.0.lock().expect("pool").len(), 1);
        assert_eq!(budget.usage().0, 3);
        drop(t);
        assert_eq!(budget.usage().0, 2);
    }

    #[tokio::test]
    async fn a_full_pool_takes_from_the_biggest_holder_and_all_busy_waits_then_gives_up() {
        let budget = Budget::new(4);
        let (a, b) = (budget.account("a"), budget.account("b"));
        let pa = pool_of(&budget, "a");
        pool_of(&budget, "b");
        for _ in 0..3 {
            let t = budget.try_ticket(&a).expect("room");
            pa.0.lock().expect("pool").push((budget.stamp(), t));
        }
        let busy_b = budget.try_ticket(&b).expect("room");
        assert!(matches!(budget.try_ticket(&b), Err(Exhausted::Node(4))));
        let t = budget
            .ticket(&b, Duration::from_millis(10))
            .await
            .expect("a's idle instance made room");
        assert_eq!(pa.0.lock().expect("pool").len(), 2);
        assert_eq!(budget.usage().2, 1, "one eviction");

        // Nothing idle: the wait ends with the first ticket given back, or
        // the deadline.
        let busy: Vec<Ticket> =
            pa.0.lock()
                .expect("pool")
                .drain(..)
                .map(|(_, t)| t)
                .collect();
        let started = std::time::Instant::now();
        assert!(matches!(
            budget.ticket(&b, Duration::from_millis(50)).await,
            Err(Exhausted::Node(4))
        ));
        assert!(started.elapsed() >= Duration::from_millis(50));
        let waiter = {
            let (budget, b) = (budget.clone(), b.clone());
            tokio::spawn(async move { budget.ticket(&b, Duration::from_secs(5)).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(t);
        assert!(
            waiter.await.expect("waiter"),
            "a ticket given back wakes the waiter"
        );
        drop((busy, busy_b));
    }

    #[test]
    fn compiled_code_is_held_once_per_digest_and_a_push_past_the_quota_is_refused() {
        let budget = Budget::new(10);
        budget.set_quotas(
            "a",
            &Quotas {
                compiled_bytes: 1000,
                ..Quotas::default()
            },
        );
        let a = budget.account("a");
        let h1 = a.hold("d1", 600, true).expect("fits");
        let h1b = a.hold("d1", 600, true).expect("held already: free");
        let over = a.hold("d2", 600, true).err().expect("past the quota");
        assert_eq!((over.held, over.size, over.max), (600, 600, 1000));
        let trusted = a.hold("d2", 600, false).expect("not enforced");
        assert_eq!(a.compiled_bytes(), 1200);
        drop((h1, trusted));
        assert_eq!(a.compiled_bytes(), 600);
        drop(h1b);
        assert_eq!(a.compiled_bytes(), 0);
        assert!(a.compiled_full().is_none());
    }
}
