//! What the registry keeps, through the data path's `RegistryStorage` seam:
//! records serialized to JSON, components by SHA-256, the audit log
//! numbered by this node (memory, the durable store) or by the fleet.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_server::backends::RegistryStorage;
use sluice_server::backends::registry::{AuditNumbering, RecordKey, RegistryError};

use crate::audit::{AuditEntry, AuditLog};
use crate::record::Record;
use crate::refusal::Refusal;

/// How long the node that wrote an audit entry to the fleet waits for its
/// follower to bring it back, so that a read right after sees it.
const AUDIT_ECHO_WITHIN: Duration = Duration::from_secs(2);

/// The registry's storage.
pub struct Kept {
    storage: Arc<dyn RegistryStorage>,
}

impl Kept {
    /// Over `storage`.
    pub fn new(storage: Arc<dyn RegistryStorage>) -> Self {
        Self { storage }
    }

    /// Whether what is kept survives a restart.
    pub fn durable(&self) -> bool {
        self.storage.durable()
    }

    /// A component's bytes.
    pub async fn component(&self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        self.storage.component(digest).await
    }

    /// Write a change: the record (`None`: removed), a new component, and
    /// components no longer referred to.
    pub async fn write(
        &self,
        key: &RecordKey,
        record: Option<&Record>,
        component: Option<(&str, Vec<u8>)>,
        forget: Vec<String>,
    ) -> Result<(), Refusal> {
        let record = match record {
            Some(r) => Some(
                serde_json::to_vec(r)
                    .map_err(|e| Refusal::new(503, "store_failed", e.to_string()))?,
            ),
            None => None,
        };
        self.storage
            .write(key, record, component, forget)
            .await
            .map_err(|e| match e {
                RegistryError::Conflict => Refusal::new(
                    409,
                    "conflict",
                    "the handler was changed on another node at the same moment: try again",
                ),
                other => Refusal::new(503, "store_failed", other.to_string()),
            })
    }

    /// Record an audit entry in `log`, and where the storage keeps it: this
    /// node numbers it and the storage persists it, or the fleet numbers
    /// it and it comes back through the fleet's log (waited for, briefly,
    /// so that a read right after sees it).
    pub async fn audit(&self, log: &AuditLog, entry: AuditEntry) {
        match self.storage.audit_numbering() {
            AuditNumbering::Local => {
                let (seq, bytes) = log.push(entry);
                if let Err(e) = self.storage.keep_audit(seq, bytes).await {
                    tracing::error!(error = %e, "an audit entry could not be written to the store");
                }
            }
            AuditNumbering::Fleet => {
                match self.storage.append_audit(AuditLog::encode(&entry)).await {
                    Ok(seq) => {
                        let waited = Instant::now();
                        while log.last_seq() < seq && waited.elapsed() < AUDIT_ECHO_WITHIN {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "an audit entry could not be written to NATS")
                    }
                }
            }
        }
    }
}
