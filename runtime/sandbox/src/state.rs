//! Tenant-scoped key-value state: the store interface ([`StateStore`],
//! async, so that a networked store can be awaited under a call's deadline),
//! the embedded in-memory store, and the host side of
//! `sluice:handler/state` ([`StateHost`]).
//!
//! A call never writes to the store directly: its writes are buffered in the
//! call and committed in one step only when the handler returns `ok` (and its
//! actions pass the output limits). A rejection, failure, trap or timeout
//! leaves the store as it was. Reads see the call's own buffered writes.
//!
//! Quotas per tenant: keys (`max_state_keys`) and bytes of keys and values
//! (`max_state_bytes`). A `set` or `delete` is checked against the committed
//! usage plus what the call has buffered so far; calls running at the same
//! moment are checked against the same committed usage, so a tenant can
//! overshoot by at most (concurrent calls x writes per call).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use sluice_config::HandlerLimits;

use super::bindings::sluice::handler::state::{self as wit, StateError};
use super::bindings::sluice::handler::types::Action;

/// A boxed, sendable future (what the store's methods return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One call's writes: `None` deletes.
pub type Writes = BTreeMap<String, Option<Vec<u8>>>;

/// A store that could not answer (a networked store cut off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "state store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

/// Why a commit did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitError {
    /// A key the call read changed before its commit (another node wrote
    /// it): nothing was written; the call may run again.
    Conflict,
    /// The store failed.
    Store(StoreError),
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommitError::Conflict => f.write_str("state store: a key changed before the commit"),
            CommitError::Store(e) => e.fmt(f),
        }
    }
}

/// Revisions a call saw, by key (0: the key did not exist).
pub type Revisions = BTreeMap<String, u64>;

/// A value (if any) and its revision (0: absent).
pub type Versioned = (Option<Vec<u8>>, u64);

/// A record a host keeps with a call's state writes, in the same atomic
/// step: an answer under an idempotency key (`docs/exactly-once.md`), so
/// that a crash leaves both or neither. The sandbox only carries it; its
/// bytes are the host's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// Whose key it is (the token's subject).
    pub subject: String,
    /// The key.
    pub key: String,
    /// When the record is forgotten (Unix ms).
    pub expires_at_ms: u64,
    /// The record, as the host encodes it.
    pub record: Vec<u8>,
}

/// Makes a call's [`Attachment`] from its actions, once the handler
/// returned `ok` and before its writes are committed.
pub type Attach<'a> = &'a (dyn Fn(&[Action]) -> Attachment + Send + Sync);

/// What a tenant holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Keys.
    pub keys: usize,
    /// Bytes of keys and values.
    pub bytes: usize,
}

/// Where committed state lives. One store serves every tenant; every method
/// takes the tenant, and implementations must keep tenants apart.
pub trait StateStore: Send + Sync + 'static {
    /// The value under `key` for `tenant`.
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;
    /// The size of the entry under `key` (key and value bytes), if any.
    fn entry_bytes<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<usize>, StoreError>>;
    /// What `tenant` holds.
    fn usage<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<Usage, StoreError>>;
    /// Apply a call's writes atomically; durable (for a durable store)
    /// before the future resolves.
    fn commit<'a>(
        &'a self,
        tenant: &'a str,
        writes: Writes,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Whether values carry revisions that a commit checks (a store shared
    /// by several nodes: optimistic concurrency). Then a call reads each
    /// key it touches with [`StateStore::get_versioned`] and commits with
    /// [`StateStore::commit_checked`].
    fn versioned(&self) -> bool {
        false
    }
    /// The value under `key` and its revision (0: absent).
    fn get_versioned<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Versioned, StoreError>> {
        Box::pin(async move { Ok((self.get(tenant, key).await?, 0)) })
    }
    /// Apply `writes` atomically only if every key in `expected` is still at
    /// its revision; otherwise write nothing and say [`CommitError::Conflict`].
    fn commit_checked<'a>(
        &'a self,
        tenant: &'a str,
        expected: Revisions,
        writes: Writes,
    ) -> BoxFuture<'a, Result<(), CommitError>> {
        let _ = expected;
        Box::pin(async move {
            self.commit(tenant, writes)
                .await
                .map_err(CommitError::Store)
        })
    }
    /// Whether [`StateStore::commit_attached`] keeps an [`Attachment`] in
    /// the same atomic step as the writes (a store on one disk). A store
    /// that cannot says `false`, and its caller keeps the record itself.
    fn attaches(&self) -> bool {
        false
    }
    /// [`StateStore::commit_checked`] (the revisions are checked when the
    /// store is versioned) and `attachment`, in one atomic step: both are
    /// durable when this resolves, or neither was written. Called with no
    /// writes, it keeps the attachment alone.
    fn commit_attached<'a>(
        &'a self,
        tenant: &'a str,
        expected: Revisions,
        writes: Writes,
        attachment: Attachment,
    ) -> BoxFuture<'a, Result<(), CommitError>> {
        let _ = (tenant, expected, writes, attachment);
        Box::pin(std::future::ready(Err(CommitError::Store(StoreError(
            "this state store cannot keep a record with a call's writes".into(),
        )))))
    }
}

/// The size an entry counts for.
fn entry_size(key: &str, value: &[u8]) -> usize {
    key.len() + value.len()
}

#[derive(Default, Debug)]
struct TenantState {
    entries: HashMap<String, Vec<u8>>,
    bytes: usize,
    /// Each present key's revision: the tenant's commit counter when it
    /// was last written.
    revisions: HashMap<String, u64>,
    commits: u64,
}

impl TenantState {
    fn apply(&mut self, writes: Writes) {
        self.commits += 1;
        for (key, value) in writes {
            let old = match value {
                Some(v) => {
                    self.bytes += entry_size(&key, &v);
                    self.revisions.insert(key.clone(), self.commits);
                    self.entries.insert(key.clone(), v)
                }
                None => {
                    self.revisions.remove(&key);
                    self.entries.remove(&key)
                }
            };
            if let Some(old) = old {
                self.bytes -= entry_size(&key, &old);
            }
        }
    }
}

/// The embedded default: state in this process's memory, one lock per
/// tenant (tenants never wait for each other). Versioned: a call's commit
/// writes nothing if a key it writes changed since it read it (calls run
/// concurrently, so a read-modify-write would otherwise overwrite another
/// call's write: a lost update).
#[derive(Default, Debug)]
pub struct MemoryStateStore {
    tenants: RwLock<HashMap<String, Arc<Mutex<TenantState>>>>,
}

impl MemoryStateStore {
    /// An empty store.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn tenant(&self, tenant: &str) -> Option<Arc<Mutex<TenantState>>> {
        self.tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .cloned()
    }

    fn tenant_or_new(&self, tenant: &str) -> Arc<Mutex<TenantState>> {
        if let Some(t) = self.tenant(tenant) {
            return t;
        }
        self.tenants
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant.to_owned())
            .or_default()
            .clone()
    }

    /// Synchronous read (tests and tools).
    pub fn get_now(&self, tenant: &str, key: &str) -> Option<Vec<u8>> {
        let t = self.tenant(tenant)?;
        let t = t.lock().unwrap_or_else(PoisonError::into_inner);
        t.entries.get(key).cloned()
    }

    /// Synchronous usage (tests and tools).
    pub fn usage_now(&self, tenant: &str) -> Usage {
        self.tenant(tenant).map_or(Usage::default(), |t| {
            let t = t.lock().unwrap_or_else(PoisonError::into_inner);
            Usage {
                keys: t.entries.len(),
                bytes: t.bytes,
            }
        })
    }

    /// Synchronous commit (tests and tools).
    pub fn commit_now(&self, tenant: &str, writes: Writes) {
        if writes.is_empty() {
            return;
        }
        let t = self.tenant_or_new(tenant);
        t.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(writes);
    }

    /// Synchronous read with the value's revision (0: absent).
    pub fn get_versioned_now(&self, tenant: &str, key: &str) -> Versioned {
        self.tenant(tenant).map_or((None, 0), |t| {
            let t = t.lock().unwrap_or_else(PoisonError::into_inner);
            (
                t.entries.get(key).cloned(),
                t.revisions.get(key).copied().unwrap_or(0),
            )
        })
    }

    /// Synchronous checked commit: `writes` only if every key in
    /// `expected` is still at its revision.
    pub fn commit_checked_now(
        &self,
        tenant: &str,
        expected: &Revisions,
        writes: Writes,
    ) -> Result<(), CommitError> {
        if writes.is_empty() {
            return Ok(());
        }
        let t = self.tenant_or_new(tenant);
        let mut t = t.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = expected
            .iter()
            .any(|(k, rev)| t.revisions.get(k).copied().unwrap_or(0) != *rev);
        if changed {
            return Err(CommitError::Conflict);
        }
        t.apply(writes);
        Ok(())
    }
}

impl StateStore for MemoryStateStore {
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(std::future::ready(Ok(self.get_now(tenant, key))))
    }

    fn entry_bytes<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<usize>, StoreError>> {
        let size = self.tenant(tenant).and_then(|t| {
            let t = t.lock().unwrap_or_else(PoisonError::into_inner);
            t.entries.get(key).map(|v| entry_size(key, v))
        });
        Box::pin(std::future::ready(Ok(size)))
    }

    fn usage<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<Usage, StoreError>> {
        Box::pin(std::future::ready(Ok(self.usage_now(tenant))))
    }

    fn commit<'a>(
        &'a self,
        tenant: &'a str,
        writes: Writes,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.commit_now(tenant, writes);
        Box::pin(std::future::ready(Ok(())))
    }

    fn versioned(&self) -> bool {
        true
    }

    fn get_versioned<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Versioned, StoreError>> {
        Box::pin(std::future::ready(Ok(self.get_versioned_now(tenant, key))))
    }

    fn commit_checked<'a>(
        &'a self,
        tenant: &'a str,
        expected: Revisions,
        writes: Writes,
    ) -> BoxFuture<'a, Result<(), CommitError>> {
        Box::pin(std::future::ready(
            self.commit_checked_now(tenant, &expected, writes),
        ))
    }
}

/// The host side of `sluice:handler/state` for one instance: the store, the
/// tenant and limits, and the current call's buffered writes.
pub(crate) struct StateHost {
    tenant: String,
    limits: HandlerLimits,
    store: Arc<dyn StateStore>,
    writes: Writes,
    /// With a versioned store: the revision of every key the call read.
    revisions: Revisions,
    /// Keys and bytes the buffered writes add to the committed usage (may
    /// be negative after deletes).
    added_keys: isize,
    added_bytes: isize,
    /// The store failed during this call: the call must not succeed.
    pub(crate) failed: Option<StoreError>,
    /// A store request is in flight (still true after the call was
    /// stopped at its deadline while waiting on the store).
    pub(crate) waiting: bool,
}

impl StateHost {
    pub(crate) fn new(tenant: String, limits: HandlerLimits, store: Arc<dyn StateStore>) -> Self {
        Self {
            tenant,
            limits,
            store,
            writes: Writes::new(),
            revisions: Revisions::new(),
            added_keys: 0,
            added_bytes: 0,
            failed: None,
            waiting: false,
        }
    }

    /// Forget the last call's writes.
    pub(crate) fn begin(&mut self) {
        self.writes.clear();
        self.revisions.clear();
        self.added_keys = 0;
        self.added_bytes = 0;
        self.failed = None;
        self.waiting = false;
    }

    /// Whether the store keeps an [`Attachment`] with the writes.
    pub(crate) fn attaches(&self) -> bool {
        self.store.attaches()
    }

    /// Commit the call's buffered writes (with a versioned store, only if
    /// none of the keys it writes changed since it read them), with
    /// `attachment` in the same atomic step (only when
    /// [`StateHost::attaches`]).
    pub(crate) async fn commit(
        &mut self,
        attachment: Option<Attachment>,
    ) -> Result<(), CommitError> {
        let writes = std::mem::take(&mut self.writes);
        if let Some(attachment) = attachment {
            let mut revisions = std::mem::take(&mut self.revisions);
            revisions.retain(|k, _| writes.contains_key(k));
            return self
                .store
                .commit_attached(&self.tenant, revisions, writes, attachment)
                .await;
        }
        if writes.is_empty() {
            return Ok(());
        }
        if self.store.versioned() {
            let mut revisions = std::mem::take(&mut self.revisions);
            revisions.retain(|k, _| writes.contains_key(k));
            return self
                .store
                .commit_checked(&self.tenant, revisions, writes)
                .await;
        }
        self.store
            .commit(&self.tenant, writes)
            .await
            .map_err(CommitError::Store)
    }

    /// Read `key` from a versioned store, remembering the first revision
    /// seen (the one the commit checks).
    async fn read_versioned(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.waiting = true;
        let read = self.store.get_versioned(&self.tenant, key).await;
        self.waiting = false;
        let (value, revision) = read?;
        self.revisions.entry(key.to_owned()).or_insert(revision);
        Ok(value)
    }

    fn check_key(&self, key: &str) -> Result<(), StateError> {
        if key.is_empty() || key.len() > self.limits.max_state_key_bytes {
            return Err(StateError::KeyTooLarge);
        }
        if !self.writes.contains_key(key) && self.writes.len() >= self.limits.max_state_writes {
            return Err(StateError::TooManyWrites);
        }
        Ok(())
    }

    /// The size `key` has once the call's buffered writes are applied.
    async fn current_size(&mut self, key: &str) -> Result<Option<usize>, StateError> {
        match self.writes.get(key) {
            Some(Some(v)) => Ok(Some(entry_size(key, v))),
            Some(None) => Ok(None),
            None if self.store.versioned() => match self.read_versioned(key).await {
                Ok(v) => Ok(v.map(|v| entry_size(key, &v))),
                Err(e) => Err(self.store_failed(e)),
            },
            None => match self.store.entry_bytes(&self.tenant, key).await {
                Ok(size) => Ok(size),
                Err(e) => Err(self.store_failed(e)),
            },
        }
    }

    fn store_failed(&mut self, e: StoreError) -> StateError {
        tracing::warn!(tenant = %self.tenant, error = %e, "state store failed during a call");
        self.failed = Some(e);
        StateError::QuotaExceeded
    }
}

impl wit::Host for StateHost {
    async fn get(&mut self, key: String) -> Option<Vec<u8>> {
        if let Some(buffered) = self.writes.get(&key) {
            return buffered.clone();
        }
        if self.store.versioned() {
            return match self.read_versioned(&key).await {
                Ok(v) => v,
                Err(e) => {
                    let _ = self.store_failed(e);
                    None
                }
            };
        }
        match self.store.get(&self.tenant, &key).await {
            Ok(v) => v,
            Err(e) => {
                let _ = self.store_failed(e);
                None
            }
        }
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), StateError> {
        self.check_key(&key)?;
        if value.len() > self.limits.max_state_value_bytes {
            return Err(StateError::ValueTooLarge);
        }
        let before = self.current_size(&key).await?;
        let after = entry_size(&key, &value);
        let keys = self.added_keys + isize::from(before.is_none());
        let bytes = self.added_bytes + after as isize - before.unwrap_or(0) as isize;
        if keys > 0 || bytes > 0 {
            let usage = match self.store.usage(&self.tenant).await {
                Ok(u) => u,
                Err(e) => return Err(self.store_failed(e)),
            };
            if usage.keys as isize + keys > self.limits.max_state_keys as isize
                || usage.bytes as isize + bytes > self.limits.max_state_bytes as isize
            {
                return Err(StateError::QuotaExceeded);
            }
        }
        self.added_keys = keys;
        self.added_bytes = bytes;
        self.writes.insert(key, Some(value));
        Ok(())
    }

    async fn delete(&mut self, key: String) -> Result<(), StateError> {
        self.check_key(&key)?;
        let before = self.current_size(&key).await?;
        if let Some(size) = before {
            self.added_keys -= 1;
            self.added_bytes -= size as isize;
        }
        self.writes.insert(key, None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_kept_apart_and_bytes_counted() {
        let store = MemoryStateStore::new();
        store.commit_now("a", Writes::from([("k".to_owned(), Some(b"12".to_vec()))]));
        assert_eq!(store.get_now("a", "k"), Some(b"12".to_vec()));
        assert_eq!(store.get_now("b", "k"), None);
        assert_eq!(store.usage_now("a"), Usage { keys: 1, bytes: 3 });
        assert_eq!(store.usage_now("b"), Usage::default());
        store.commit_now(
            "a",
            Writes::from([("k".to_owned(), Some(b"1234".to_vec()))]),
        );
        assert_eq!(store.usage_now("a"), Usage { keys: 1, bytes: 5 });
        store.commit_now("a", Writes::from([("k".to_owned(), None)]));
        assert_eq!(store.usage_now("a"), Usage::default());
    }

    #[test]
    fn a_read_modify_write_that_lost_a_race_writes_nothing() {
        let store = MemoryStateStore::new();
        let one = |v: &str| Writes::from([("n".to_owned(), Some(v.as_bytes().to_vec()))]);
        store.commit_now("a", one("1"));
        // Two calls read n = 1 at the same revision...
        let (_, seen) = store.get_versioned_now("a", "n");
        let (_, also) = store.get_versioned_now("a", "n");
        assert_eq!(seen, also);
        let expected = Revisions::from([("n".to_owned(), seen)]);
        // ...the first commits 2, the second's 2 would overwrite it.
        assert_eq!(store.commit_checked_now("a", &expected, one("2")), Ok(()));
        assert_eq!(
            store.commit_checked_now("a", &expected, one("2")),
            Err(CommitError::Conflict)
        );
        assert_eq!(store.get_now("a", "n"), Some(b"2".to_vec()));
        // Run again on fresh state, it commits.
        let (_, fresh) = store.get_versioned_now("a", "n");
        let expected = Revisions::from([("n".to_owned(), fresh)]);
        assert_eq!(store.commit_checked_now("a", &expected, one("3")), Ok(()));
        // An absent key reads as revision 0; creating it races the same way.
        let absent = Revisions::from([("m".to_owned(), 0)]);
        let m = Writes::from([("m".to_owned(), Some(vec![1]))]);
        assert_eq!(store.commit_checked_now("a", &absent, m.clone()), Ok(()));
        assert_eq!(
            store.commit_checked_now("a", &absent, m),
            Err(CommitError::Conflict)
        );
        // Tenants do not conflict with each other.
        assert_eq!(
            store.commit_checked_now("b", &absent, Writes::from([("m".to_owned(), None)])),
            Ok(())
        );
    }
}
