//! Handler state on the durable store: reads are served from memory (the
//! whole state is read back at start), and a call's commit returns only
//! once its writes are on disk, so the call's `ack` never acknowledges a
//! write that a crash could lose.
//!
//! Memory takes a commit only after the disk did: the store's writer
//! applies it once the transaction is fsync'd, in the writer's queue order
//! (the disk's order), whether or not the call that made it still waits,
//! and never when the write failed. So no read ever sees a value that the
//! disk does not hold or will not hold (a failed write leaves memory as the
//! disk is), and memory and disk agree.

use std::sync::Arc;

use sluice_sandbox::{BoxFuture, MemoryStateStore, StateStore, StoreError, Usage, Writes};
use sluice_store::Store;

/// [`StateStore`] on [`Store`].
pub struct DurableState {
    memory: Arc<MemoryStateStore>,
    store: Arc<Store>,
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
        Arc::new(Self { memory, store })
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
            let list = writes.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let memory = self.memory.clone();
            let owner = tenant.to_owned();
            let durable = permit.commit_state_then(
                tenant,
                list,
                Box::new(move |written| {
                    if written.is_ok() {
                        memory.commit_now(&owner, writes);
                    }
                }),
            );
            durable.wait().await.map_err(|e| {
                tracing::error!(tenant, error = %e, "state writes could not be made durable");
                StoreError(e.to_string())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_store::MemoryDisk;

    #[tokio::test]
    async fn a_write_the_disk_refused_is_never_read() {
        let disk = MemoryDisk::new();
        let opened = Store::open_on(disk.clone(), std::path::Path::new("memory")).unwrap();
        let state = DurableState::new(opened.store, opened.state);
        let write = |v: &str| Writes::from([("k".to_owned(), Some(v.as_bytes().to_vec()))]);
        state.commit("t", write("v1")).await.unwrap();
        assert_eq!(state.get("t", "k").await.unwrap(), Some(b"v1".to_vec()));
        disk.fail(true);
        assert!(state.commit("t", write("v2")).await.is_err());
        assert_eq!(
            state.get("t", "k").await.unwrap(),
            Some(b"v1".to_vec()),
            "memory holds what the disk holds, not the write it refused"
        );
        assert_eq!(state.usage("t").await.unwrap().keys, 1);
    }
}
