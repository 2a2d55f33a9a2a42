//! Handler state on the durable store: reads are served from memory (the
//! whole state is read back at start), and a call's commit returns only
//! once its writes are on disk, so the call's `ack` never acknowledges a
//! write that a crash could lose. Commits reach memory and the writer's
//! queue in the same order, under one lock: memory and disk agree.

use std::sync::{Arc, Mutex, PoisonError};

use sluice_sandbox::{BoxFuture, MemoryStateStore, StateStore, StoreError, Usage, Writes};
use sluice_store::Store;

/// [`StateStore`] on [`Store`].
pub struct DurableState {
    memory: Arc<MemoryStateStore>,
    store: Arc<Store>,
    order: Mutex<()>,
}

impl DurableState {
    /// State in `store`, starting from what it read back.
    pub fn new(store: Arc<Store>, state: Vec<(String, String, Vec<u8>)>) -> Arc<Self> {
        let memory = MemoryStateStore::new();
        let mut by_tenant: std::collections::BTreeMap<String, Writes> = Default::default();
        for (tenant, key, value) in state {
            by_tenant
                .entry(tenant)
                .or_default()
                .insert(key, Some(value));
        }
        for (tenant, writes) in by_tenant {
            memory.commit_now(&tenant, writes);
        }
        Arc::new(Self {
            memory,
            store,
            order: Mutex::new(()),
        })
    }
}

impl StateStore for DurableState {
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        self.memory.get(tenant, key)
    }

    fn entry_bytes<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<usize>, StoreError>> {
        self.memory.entry_bytes(tenant, key)
    }

    fn usage<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<Usage, StoreError>> {
        self.memory.usage(tenant)
    }

    fn commit<'a>(
        &'a self,
        tenant: &'a str,
        writes: Writes,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if writes.is_empty() {
                return Ok(());
            }
            let permit = self
                .store
                .reserve()
                .await
                .map_err(|e| StoreError(e.to_string()))?;
            let durable = {
                let _order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
                let list = writes.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                self.memory.commit_now(tenant, writes);
                permit.commit_state(tenant, list)
            };
            durable.wait().await.map_err(|e| {
                tracing::error!(tenant, error = %e, "state writes could not be made durable");
                StoreError(e.to_string())
            })
        })
    }
}
