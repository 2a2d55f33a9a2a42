//! The registry seam: where the control plane keeps pushed handlers'
//! components (by SHA-256), their records (opaque bytes, one per tenant and
//! handler) and its audit log. Memory ([`MemoryRegistry`]), the durable
//! store ([`DurableRegistry`]), or the fleet's JetStream buckets
//! (`sluice-fleet`). The data path only carries it: the control plane
//! (`sluice-control`) is its one user.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sluice_sandbox::BoxFuture;
use sluice_store::Store;

/// The audit log's bound: the latest entries kept (on disk, and in the
/// fleet's stream).
pub use sluice_store::MAX_AUDIT_ENTRIES;

/// A pushed handler's record key: (tenant, handler name).
pub type RecordKey = (String, String);

/// A record as stored: (tenant, name, the record's bytes).
pub type StoredRecord = (String, String, Vec<u8>);

/// A write to the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Another node changed the handler since this node last saw it.
    #[error("the handler was changed on another node at the same moment")]
    Conflict,
    /// A component the record names is not kept.
    #[error("component {0} is not kept")]
    Missing(String),
    /// The storage failed.
    #[error("registry storage: {0}")]
    Failed(String),
}

/// Who numbers the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditNumbering {
    /// This node: entries are numbered as they are recorded here, then
    /// persisted with [`RegistryStorage::keep_audit`].
    Local,
    /// The fleet: [`RegistryStorage::append_audit`] returns the fleet's
    /// number, and the entry comes back to every node (this one too) from
    /// the fleet's log.
    Fleet,
}

/// What was kept when the node started.
#[derive(Debug, Default)]
pub struct RegistryContents {
    /// Every record.
    pub records: Vec<StoredRecord>,
    /// The audit log, oldest first: (number, entry).
    pub audit: Vec<(u64, Vec<u8>)>,
}

/// Where pushed handlers are kept.
pub trait RegistryStorage: Send + Sync + 'static {
    /// Whether what is kept survives a restart.
    fn durable(&self) -> bool;
    /// Who numbers the audit log.
    fn audit_numbering(&self) -> AuditNumbering;
    /// What was kept when the node started (taken once).
    fn take_contents(&self) -> RegistryContents;
    /// A component's bytes.
    fn component<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<Vec<u8>, RegistryError>>;
    /// Write a change: a new component first (a record never names one
    /// that is missing), then the record (`None`: removed), then forget
    /// components nothing refers to any more.
    fn write<'a>(
        &'a self,
        key: &'a RecordKey,
        record: Option<Vec<u8>>,
        component: Option<(&'a str, Vec<u8>)>,
        forget: Vec<String>,
    ) -> BoxFuture<'a, Result<(), RegistryError>>;
    /// Persist an audit entry this node numbered (`AuditNumbering::Local`).
    fn keep_audit(&self, seq: u64, entry: Vec<u8>) -> BoxFuture<'_, Result<(), RegistryError>>;
    /// Append an audit entry to the fleet's log (`AuditNumbering::Fleet`):
    /// its number there.
    fn append_audit(&self, entry: Vec<u8>) -> BoxFuture<'_, Result<u64, RegistryError>>;
}

/// Components in memory: gone at restart (`[store] kind = "memory"`).
#[derive(Default)]
pub struct MemoryRegistry {
    components: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

impl RegistryStorage for MemoryRegistry {
    fn durable(&self) -> bool {
        false
    }

    fn audit_numbering(&self) -> AuditNumbering {
        AuditNumbering::Local
    }

    fn take_contents(&self) -> RegistryContents {
        RegistryContents::default()
    }

    fn component<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<Vec<u8>, RegistryError>> {
        let found = self
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .map(|b| b.to_vec())
            .ok_or_else(|| RegistryError::Missing(digest.to_owned()));
        Box::pin(std::future::ready(found))
    }

    fn write<'a>(
        &'a self,
        _key: &'a RecordKey,
        _record: Option<Vec<u8>>,
        component: Option<(&'a str, Vec<u8>)>,
        forget: Vec<String>,
    ) -> BoxFuture<'a, Result<(), RegistryError>> {
        let mut m = self
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((d, b)) = component {
            m.insert(d.to_owned(), Arc::new(b));
        }
        for d in &forget {
            m.remove(d);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn keep_audit(&self, _seq: u64, _entry: Vec<u8>) -> BoxFuture<'_, Result<(), RegistryError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn append_audit(&self, _entry: Vec<u8>) -> BoxFuture<'_, Result<u64, RegistryError>> {
        Box::pin(std::future::ready(Err(RegistryError::Failed(
            "a node's own registry keeps no fleet log".into(),
        ))))
    }
}

/// Pushed handlers in the durable store, beside state and history.
pub struct DurableRegistry {
    store: Arc<Store>,
    contents: Mutex<RegistryContents>,
}

impl DurableRegistry {
    /// Over `store`, with the records and audit log it read back at open.
    pub fn new(store: Arc<Store>, records: Vec<StoredRecord>, audit: Vec<(u64, Vec<u8>)>) -> Self {
        Self {
            store,
            contents: Mutex::new(RegistryContents { records, audit }),
        }
    }

    async fn commit(&self, write: sluice_store::RegistryWrite) -> Result<(), RegistryError> {
        let failed = |e: sluice_store::StoreError| RegistryError::Failed(e.to_string());
        self.store
            .reserve()
            .await
            .map_err(failed)?
            .registry(write)
            .wait()
            .await
            .map_err(failed)
    }
}

impl RegistryStorage for DurableRegistry {
    fn durable(&self) -> bool {
        true
    }

    fn audit_numbering(&self) -> AuditNumbering {
        AuditNumbering::Local
    }

    fn take_contents(&self) -> RegistryContents {
        std::mem::take(&mut *self.contents.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn component<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<Vec<u8>, RegistryError>> {
        Box::pin(async move {
            let store = self.store.clone();
            let d = digest.to_owned();
            tokio::task::spawn_blocking(move || store.component(&d))
                .await
                .map_err(|e| RegistryError::Failed(e.to_string()))?
                .map_err(|e| RegistryError::Failed(e.to_string()))?
                .ok_or_else(|| RegistryError::Missing(digest.to_owned()))
        })
    }

    fn write<'a>(
        &'a self,
        key: &'a RecordKey,
        record: Option<Vec<u8>>,
        component: Option<(&'a str, Vec<u8>)>,
        forget: Vec<String>,
    ) -> BoxFuture<'a, Result<(), RegistryError>> {
        let write = sluice_store::RegistryWrite {
            components: component
                .map(|(d, b)| vec![(d.to_owned(), b)])
                .unwrap_or_default(),
            forget_components: forget,
            record: Some((key.clone(), record)),
            audit: None,
        };
        Box::pin(self.commit(write))
    }

    fn keep_audit(&self, seq: u64, entry: Vec<u8>) -> BoxFuture<'_, Result<(), RegistryError>> {
        Box::pin(self.commit(sluice_store::RegistryWrite {
            audit: Some((seq, entry)),
            ..Default::default()
        }))
    }

    fn append_audit(&self, _entry: Vec<u8>) -> BoxFuture<'_, Result<u64, RegistryError>> {
        Box::pin(std::future::ready(Err(RegistryError::Failed(
            "a node's own registry keeps no fleet log".into(),
        ))))
    }
}
