//! Tenant-scoped key-value state and the host side of `sluice:handler/state`.
//!
//! A call never writes to the store directly: its writes are buffered in the
//! call and committed in one step only when the handler returns `ok` (and its
//! actions pass the output limits). A rejection, failure, trap or timeout
//! leaves the store as it was. Reads see the call's own buffered writes.
//!
//! Quota: a `set` of a new key is refused when the tenant's keys plus the
//! call's new keys reach the limit. Calls running at the same moment are
//! checked against the same committed count, so a tenant can overshoot its
//! quota by at most (concurrent calls x writes per call).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use super::bindings::sluice::handler::state::{self as wit, StateError};
use super::call::CallCtx;

/// Where committed state lives. One store serves every tenant; every method
/// takes the tenant, and implementations must keep tenants apart.
pub trait StateStore: Send + Sync + 'static {
    /// The value under `key` for `tenant`.
    fn get(&self, tenant: &str, key: &str) -> Option<Vec<u8>>;
    /// Whether `tenant` has `key`.
    fn contains(&self, tenant: &str, key: &str) -> bool;
    /// How many keys `tenant` holds.
    fn key_count(&self, tenant: &str) -> usize;
    /// Apply a call's writes (`None` deletes) atomically.
    fn commit(&self, tenant: &str, writes: BTreeMap<String, Option<Vec<u8>>>);
}

/// The embedded default: state in this process's memory.
#[derive(Default, Debug)]
pub struct MemoryStateStore {
    tenants: RwLock<HashMap<String, HashMap<String, Vec<u8>>>>,
}

impl MemoryStateStore {
    /// An empty store.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

impl StateStore for MemoryStateStore {
    fn get(&self, tenant: &str, key: &str) -> Option<Vec<u8>> {
        let tenants = self.tenants.read().unwrap_or_else(PoisonError::into_inner);
        tenants.get(tenant)?.get(key).cloned()
    }

    fn contains(&self, tenant: &str, key: &str) -> bool {
        let tenants = self.tenants.read().unwrap_or_else(PoisonError::into_inner);
        tenants.get(tenant).is_some_and(|t| t.contains_key(key))
    }

    fn key_count(&self, tenant: &str) -> usize {
        let tenants = self.tenants.read().unwrap_or_else(PoisonError::into_inner);
        tenants.get(tenant).map_or(0, HashMap::len)
    }

    fn commit(&self, tenant: &str, writes: BTreeMap<String, Option<Vec<u8>>>) {
        if writes.is_empty() {
            return;
        }
        let mut tenants = self.tenants.write().unwrap_or_else(PoisonError::into_inner);
        let entries = tenants.entry(tenant.to_owned()).or_default();
        for (key, value) in writes {
            match value {
                Some(v) => {
                    entries.insert(key, v);
                }
                None => {
                    entries.remove(&key);
                }
            }
        }
    }
}

impl CallCtx {
    fn check_write(&self, key: &str) -> Result<(), StateError> {
        let limits = &self.handler.limits;
        if key.is_empty() || key.len() > limits.max_state_key_bytes {
            return Err(StateError::KeyTooLarge);
        }
        if !self.call.writes.contains_key(key) && self.call.writes.len() >= limits.max_state_writes
        {
            return Err(StateError::TooManyWrites);
        }
        Ok(())
    }

    /// Whether `key` exists once the call's buffered writes are applied.
    fn exists(&self, key: &str) -> bool {
        match self.call.writes.get(key) {
            Some(value) => value.is_some(),
            None => self.handler.state.contains(&self.handler.tenant, key),
        }
    }
}

impl wit::Host for CallCtx {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        match self.call.writes.get(&key) {
            Some(buffered) => buffered.clone(),
            None => self.handler.state.get(&self.handler.tenant, &key),
        }
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), StateError> {
        self.check_write(&key)?;
        if value.len() > self.handler.limits.max_state_value_bytes {
            return Err(StateError::ValueTooLarge);
        }
        if !self.exists(&key) {
            let committed = self.handler.state.key_count(&self.handler.tenant);
            let added = self
                .call
                .writes
                .iter()
                .filter(|(k, v)| {
                    v.is_some() && !self.handler.state.contains(&self.handler.tenant, k)
                })
                .count();
            if committed + added >= self.handler.limits.max_state_keys {
                return Err(StateError::QuotaExceeded);
            }
        }
        self.call.writes.insert(key, Some(value));
        Ok(())
    }

    fn delete(&mut self, key: String) -> Result<(), StateError> {
        self.check_write(&key)?;
        self.call.writes.insert(key, None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_kept_apart() {
        let store = MemoryStateStore::new();
        store.commit("a", BTreeMap::from([("k".to_owned(), Some(b"1".to_vec()))]));
        assert_eq!(store.get("a", "k"), Some(b"1".to_vec()));
        assert_eq!(store.get("b", "k"), None);
        assert_eq!(store.key_count("a"), 1);
        assert_eq!(store.key_count("b"), 0);
        store.commit("a", BTreeMap::from([("k".to_owned(), None)]));
        assert!(!store.contains("a", "k"));
    }
}
