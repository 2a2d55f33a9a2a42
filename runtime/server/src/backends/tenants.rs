//! The tenants seam: where tenants created through the management API are
//! kept, one record (opaque bytes: the control plane's JSON) per tenant id,
//! each at a revision. Memory ([`MemoryTenants`]: gone at restart), the
//! durable store ([`DurableTenants`]), or a JetStream KV bucket every node
//! of a fleet watches (`sluice-fleet`). The control plane
//! (`sluice-control`) is its one user.
//!
//! Every write names what it expects ([`Expected`]): a create expects no
//! tenant, an update or a removal the revision it read. A write whose
//! expectation does not hold changes nothing and says what is there
//! ([`TenantStoreError::Conflict`]): two writers can never both win, on one
//! node or across a fleet. Revisions only grow, and are never reused for
//! another change (a removed and re-created tenant gets a new one).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sluice_sandbox::BoxFuture;
use sluice_store::Store;

/// A tenant as kept: its id, its revision, its record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredTenant {
    /// The tenant id.
    pub id: String,
    /// The revision of this record.
    pub revision: u64,
    /// The control plane's record (JSON).
    pub record: Vec<u8>,
}

/// What a write expects to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// No tenant with this id (a create).
    Absent,
    /// The tenant at this revision (an update or a removal).
    Revision(u64),
}

/// A write to the tenants' storage failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantStoreError {
    /// What is kept is not what the write expected: the revision there now
    /// (`None`: no such tenant).
    #[error("the tenant was changed meanwhile (now at revision {current:?})")]
    Conflict {
        /// The revision kept now, if the tenant exists.
        current: Option<u64>,
    },
    /// The storage failed; nothing is known to have changed.
    #[error("tenant storage: {0}")]
    Failed(String),
}

/// A change seen on a shared storage: the tenant id and its record at a
/// revision (`None`: removed).
pub type TenantChange = (String, Option<(u64, Vec<u8>)>);

/// Where tenants created through the API are kept.
pub trait TenantStorage: Send + Sync + 'static {
    /// Whether what is kept survives a restart.
    fn durable(&self) -> bool;
    /// Whether other nodes share it (their changes then arrive through the
    /// fleet's watch, and this node's own come back that way too).
    fn shared(&self) -> bool;
    /// Every tenant kept when the node started (taken once).
    fn take_contents(&self) -> Vec<StoredTenant>;
    /// Write `record` for `id` (`None`: remove it) if what is kept is what
    /// `expected` says; the new revision (for a removal, the revision the
    /// removal was given).
    fn write<'a>(
        &'a self,
        id: &'a str,
        expected: Expected,
        record: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<u64, TenantStoreError>>;
}

/// The revisions kept, checked and handed out under one lock: what the
/// memory and the durable storage share.
#[derive(Default)]
struct Revisions {
    kept: HashMap<String, u64>,
    last: u64,
}

impl Revisions {
    /// The next revision for a write to `id` expecting `expected`, or the
    /// conflict.
    fn next(&mut self, id: &str, expected: Expected) -> Result<u64, TenantStoreError> {
        let current = self.kept.get(id).copied();
        let holds = match expected {
            Expected::Absent => current.is_none(),
            Expected::Revision(r) => current == Some(r),
        };
        if !holds {
            return Err(TenantStoreError::Conflict { current });
        }
        self.last += 1;
        Ok(self.last)
    }

    fn set(&mut self, id: &str, revision: u64, removed: bool) {
        if removed {
            self.kept.remove(id);
        } else {
            self.kept.insert(id.to_owned(), revision);
        }
    }
}

/// Tenants in memory, gone at restart (`[store] kind = "memory"`).
#[derive(Default)]
pub struct MemoryTenants {
    revisions: Mutex<Revisions>,
}

impl TenantStorage for MemoryTenants {
    fn durable(&self) -> bool {
        false
    }

    fn shared(&self) -> bool {
        false
    }

    fn take_contents(&self) -> Vec<StoredTenant> {
        Vec::new()
    }

    fn write<'a>(
        &'a self,
        id: &'a str,
        expected: Expected,
        record: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<u64, TenantStoreError>> {
        let mut r = self
            .revisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let written = r.next(id, expected).inspect(|&rev| {
            r.set(id, rev, record.is_none());
        });
        Box::pin(std::future::ready(written))
    }
}

/// Tenants in the durable store: a change is on disk (fsynced) before the
/// write returns.
pub struct DurableTenants {
    store: Arc<Store>,
    /// Held across a write's check and its fsync: writes to tenants are
    /// rare, and one at a time keeps the check and the disk in step.
    revisions: tokio::sync::Mutex<Revisions>,
    at_start: Mutex<Vec<StoredTenant>>,
}

impl DurableTenants {
    /// Over `store`, with what it read back at open: (id, revision, record)
    /// and the highest revision handed out.
    pub fn new(store: Arc<Store>, kept: Vec<(String, u64, Vec<u8>)>, last: u64) -> Arc<Self> {
        let mut revisions = Revisions {
            kept: HashMap::new(),
            last,
        };
        let mut at_start = Vec::with_capacity(kept.len());
        for (id, revision, record) in kept {
            revisions.set(&id, revision, false);
            revisions.last = revisions.last.max(revision);
            at_start.push(StoredTenant {
                id,
                revision,
                record,
            });
        }
        Arc::new(Self {
            store,
            revisions: tokio::sync::Mutex::new(revisions),
            at_start: Mutex::new(at_start),
        })
    }
}

impl TenantStorage for DurableTenants {
    fn durable(&self) -> bool {
        true
    }

    fn shared(&self) -> bool {
        false
    }

    fn take_contents(&self) -> Vec<StoredTenant> {
        std::mem::take(&mut *self.at_start.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn write<'a>(
        &'a self,
        id: &'a str,
        expected: Expected,
        record: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<u64, TenantStoreError>> {
        Box::pin(async move {
            let mut r = self.revisions.lock().await;
            let revision = r.next(id, expected)?;
            let removed = record.is_none();
            let permit = self
                .store
                .reserve()
                .await
                .map_err(|e| TenantStoreError::Failed(e.to_string()))?;
            permit
                .tenant(id, revision, record)
                .wait()
                .await
                .map_err(|e| TenantStoreError::Failed(e.to_string()))?;
            r.set(id, revision, removed);
            Ok(revision)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<T>(f: BoxFuture<'_, T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_write_holds_only_against_what_it_read() {
        let m = MemoryTenants::default();
        let r1 = block(m.write("a", Expected::Absent, Some(b"{}".to_vec()))).unwrap();
        assert_eq!(
            block(m.write("a", Expected::Absent, Some(b"{}".to_vec()))),
            Err(TenantStoreError::Conflict { current: Some(r1) }),
            "a second create of one id"
        );
        let r2 = block(m.write("a", Expected::Revision(r1), Some(b"{}".to_vec()))).unwrap();
        assert!(r2 > r1);
        assert_eq!(
            block(m.write("a", Expected::Revision(r1), Some(b"{}".to_vec()))),
            Err(TenantStoreError::Conflict { current: Some(r2) }),
            "an update from a stale read"
        );
        let r3 = block(m.write("a", Expected::Revision(r2), None)).unwrap();
        assert_eq!(
            block(m.write("a", Expected::Revision(r3), None)),
            Err(TenantStoreError::Conflict { current: None })
        );
        let r4 = block(m.write("a", Expected::Absent, Some(b"{}".to_vec()))).unwrap();
        assert!(r4 > r3, "a re-created tenant never gets an old revision");
    }

    #[test]
    fn the_durable_store_keeps_tenants_and_never_reuses_a_revision() {
        let dir = std::env::temp_dir().join(format!("sluice-tenants-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (kept, last) = {
            let opened = Store::open(&dir).unwrap();
            let t =
                DurableTenants::new(opened.store.clone(), opened.tenants, opened.tenant_revision);
            let a = block(t.write("a", Expected::Absent, Some(b"{\"a\":1}".to_vec()))).unwrap();
            let b = block(t.write("b", Expected::Absent, Some(b"{\"b\":1}".to_vec()))).unwrap();
            block(t.write("b", Expected::Revision(b), None)).unwrap();
            let a2 =
                block(t.write("a", Expected::Revision(a), Some(b"{\"a\":2}".to_vec()))).unwrap();
            let removal = block(t.write("a", Expected::Absent, None));
            assert!(removal.is_err(), "a create of a kept id");
            // The last revision handed out is a removal's.
            let c = block(t.write("c", Expected::Absent, Some(b"{}".to_vec()))).unwrap();
            let gone = block(t.write("c", Expected::Revision(c), None)).unwrap();
            opened.store.close();
            (a2, gone)
        };
        let opened = Store::open(&dir).unwrap();
        let t = DurableTenants::new(opened.store.clone(), opened.tenants, opened.tenant_revision);
        assert_eq!(
            t.take_contents(),
            [StoredTenant {
                id: "a".into(),
                revision: kept,
                record: b"{\"a\":2}".to_vec()
            }]
        );
        let c = block(t.write("b", Expected::Absent, Some(b"{}".to_vec()))).unwrap();
        assert!(c > kept && c > last, "revision {c} after {kept} and {last}");
        opened.store.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
