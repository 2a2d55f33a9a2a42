//! Pushed handlers across the fleet: components in a JetStream Object Store
//! (`{prefix}_components`, by SHA-256), records in a KV bucket
//! (`{prefix}_handlers`, key `<tenant>.<name>`, written with the revision
//! the node last saw: two nodes changing one handler at once cannot both
//! win), the audit log on a stream (`{PREFIX}_AUDIT`, its latest
//! `sluice_store::MAX_AUDIT_ENTRIES` entries). Every node watches the
//! records and the audit stream, so a push, promote or rollback made on one
//! node serves on all of them within moments.
//!
//! Nothing read from NATS is trusted as it comes: a component's bytes must
//! hash to the digest they are stored under (anyone who can write to the
//! object store could otherwise swap the code every node runs), and a
//! record must be a JSON object under a `<tenant>.<name>` key of valid
//! names; anything else is refused and logged, and the versions a node
//! serves stay as they were.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_nats::jetstream;
use futures_util::StreamExt as _;
use sluice_sandbox::BoxFuture;
use sluice_server::backends::registry::{
    AuditNumbering, MAX_AUDIT_ENTRIES, RecordKey, RegistryContents, RegistryError, RegistryStorage,
    StoredRecord,
};
use tokio::io::AsyncReadExt as _;

use crate::bucket::open_bucket;
use crate::error::FleetError;

/// The fleet's copy of the registry.
pub struct FleetRegistry {
    js: jetstream::Context,
    objects: jetstream::object_store::ObjectStore,
    records: jetstream::kv::Store,
    audit_subject: String,
    audit_stream: String,
    /// The revision of each record this node last saw (0: none).
    revisions: Mutex<HashMap<(String, String), u64>>,
    /// The records as they were when the node joined (taken once).
    at_start: Mutex<Vec<StoredRecord>>,
}

/// A change to a record seen on the bucket: (tenant, name), the record
/// (`None`: removed).
pub type RecordChange = ((String, String), Option<Vec<u8>>);

/// `bytes`, if they hash to `digest`.
fn verified(digest: &str, bytes: Vec<u8>) -> Result<Vec<u8>, RegistryError> {
    let actual = sluice_sandbox::digest(&bytes);
    if actual == digest {
        Ok(bytes)
    } else {
        tracing::error!(%digest, %actual, "a component in the fleet's object store does not match its digest: refused");
        Err(RegistryError::Failed(format!(
            "component {digest}: its bytes in the object store hash to {actual}"
        )))
    }
}

/// A name in a record's key: what the config and the API accept.
fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// A record key's (tenant, name), and the record if it is one: a JSON
/// object. `None`: malformed (logged), to be ignored.
fn checked(key: &str, value: Option<&[u8]>) -> Option<(String, String)> {
    let well_formed = key
        .split_once('.')
        .filter(|(t, n)| is_name(t) && is_name(n))
        .filter(|_| {
            value.is_none_or(|v| {
                serde_json::from_slice::<serde_json::Value>(v).is_ok_and(|j| j.is_object())
            })
        });
    if well_formed.is_none() {
        tracing::error!(
            key,
            "a malformed pushed handler record in the fleet's bucket: ignored"
        );
    }
    well_formed.map(|(t, n)| (t.to_owned(), n.to_owned()))
}

impl FleetRegistry {
    /// Open (or create) the buckets and the audit stream, and read the
    /// records as they are now.
    pub async fn open(
        js: &jetstream::Context,
        prefix: &str,
        replicas: usize,
    ) -> Result<Arc<Self>, FleetError> {
        let bucket = format!("{prefix}_components");
        let objects = match js.get_object_store(&bucket).await {
            Ok(o) => o,
            Err(_) => js
                .create_object_store(jetstream::object_store::Config {
                    bucket: bucket.clone(),
                    description: Some("Sluice: pushed handler components by SHA-256".into()),
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    FleetError::nats(format!("cannot create the object store {bucket}"), e)
                })?,
        };
        let records = open_bucket(
            js,
            jetstream::kv::Config {
                bucket: format!("{prefix}_handlers"),
                description: "Sluice: pushed handlers' records".into(),
                history: 1,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let audit_stream = format!("{}_AUDIT", prefix.to_uppercase());
        let audit_subject = format!("{prefix}.audit");
        js.get_or_create_stream(jetstream::stream::Config {
            name: audit_stream.clone(),
            description: Some("Sluice: the management audit log".into()),
            subjects: vec![audit_subject.clone()],
            max_messages: MAX_AUDIT_ENTRIES as i64,
            num_replicas: replicas,
            discard: jetstream::stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            FleetError::nats(format!("cannot create the audit stream {audit_stream}"), e)
        })?;
        let mut now = Vec::new();
        let mut revisions = HashMap::new();
        let mut keys = records
            .keys()
            .await
            .map_err(|e| FleetError::nats("cannot list pushed handlers", e))?;
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| FleetError::nats("cannot list pushed handlers", e))?;
            if let Ok(Some(entry)) = records.entry(key.clone()).await
                && entry.operation == jetstream::kv::Operation::Put
                && let Some((tenant, name)) = checked(&key, Some(&entry.value))
            {
                revisions.insert((tenant.clone(), name.clone()), entry.revision);
                now.push((tenant, name, entry.value.to_vec()));
            }
        }
        Ok(Arc::new(Self {
            js: js.clone(),
            objects,
            records,
            audit_subject,
            audit_stream,
            revisions: Mutex::new(revisions),
            at_start: Mutex::new(now),
        }))
    }

    /// A component's bytes, only if they are the bytes of `digest`.
    async fn read_component(&self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let failed =
            |e: &dyn std::fmt::Display| RegistryError::Failed(format!("component {digest}: {e}"));
        let mut object = self.objects.get(digest).await.map_err(|e| failed(&e))?;
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| failed(&e))?;
        verified(digest, bytes)
    }

    /// Write a change: the component first (so a record never names one
    /// that is missing), then the record at the revision this node last saw,
    /// then forget components nothing refers to.
    async fn write_change(
        &self,
        key: &RecordKey,
        record: Option<Vec<u8>>,
        component: Option<(&str, Vec<u8>)>,
        forget: Vec<String>,
    ) -> Result<(), RegistryError> {
        if let Some((digest, bytes)) = component {
            let mut reader = std::io::Cursor::new(bytes);
            self.objects
                .put(digest, &mut reader)
                .await
                .map_err(|e| RegistryError::Failed(format!("storing component {digest}: {e}")))?;
        }
        let name = format!("{}.{}", key.0, key.1);
        let seen = self
            .revisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0);
        let revision = match record {
            Some(value) if seen == 0 => {
                self.records
                    .create(&name, value.into())
                    .await
                    .map_err(|e| match e.kind() {
                        jetstream::kv::CreateErrorKind::AlreadyExists => RegistryError::Conflict,
                        _ => RegistryError::Failed(format!("storing the record: {e}")),
                    })?
            }
            Some(value) => self
                .records
                .update(&name, value.into(), seen)
                .await
                .map_err(|e| match e.kind() {
                    jetstream::kv::UpdateErrorKind::WrongLastRevision => RegistryError::Conflict,
                    _ => RegistryError::Failed(format!("storing the record: {e}")),
                })?,
            None => {
                self.records
                    .delete(&name)
                    .await
                    .map_err(|e| RegistryError::Failed(format!("removing the record: {e}")))?;
                0
            }
        };
        self.revisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone(), revision);
        for digest in forget {
            if let Err(e) = self.objects.delete(&digest).await {
                tracing::warn!(%digest, error = %e, "a component no version refers to could not be removed");
            }
        }
        Ok(())
    }

    /// Append an audit entry to the fleet's log: its sequence number.
    async fn append_audit_entry(&self, entry: Vec<u8>) -> Result<u64, RegistryError> {
        let failed = |e: &dyn std::fmt::Display| RegistryError::Failed(format!("audit: {e}"));
        self.js
            .publish(self.audit_subject.clone(), entry.into())
            .await
            .map_err(|e| failed(&e))?
            .await
            .map(|ack| ack.sequence)
            .map_err(|e| failed(&e))
    }

    /// Watch the records: every change (this node's too), with its
    /// revision remembered, goes to `apply`.
    pub async fn watch_records(
        self: &Arc<Self>,
        apply: impl Fn(RecordChange) -> futures_util::future::BoxFuture<'static, ()> + Send + 'static,
    ) -> Result<tokio::task::AbortHandle, FleetError> {
        let mut watch = self
            .records
            .watch_all()
            .await
            .map_err(|e| FleetError::nats("cannot watch pushed handlers", e))?;
        let this = Arc::downgrade(self);
        Ok(tokio::spawn(async move {
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { continue };
                let put = entry.operation == jetstream::kv::Operation::Put;
                let Some(key) = checked(&entry.key, put.then_some(&entry.value[..])) else {
                    continue;
                };
                let Some(this) = this.upgrade() else { return };
                let value = match entry.operation {
                    jetstream::kv::Operation::Put => {
                        this.revisions
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(key.clone(), entry.revision);
                        Some(entry.value.to_vec())
                    }
                    _ => {
                        this.revisions
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&key);
                        None
                    }
                };
                drop(this);
                apply((key, value)).await;
            }
        })
        .abort_handle())
    }

    /// Follow the audit stream from its start: every entry, with its
    /// stream sequence, goes to `apply`.
    pub async fn follow_audit(
        &self,
        apply: impl Fn(u64, Vec<u8>) + Send + 'static,
    ) -> Result<tokio::task::AbortHandle, FleetError> {
        let stream = self
            .js
            .get_stream(&self.audit_stream)
            .await
            .map_err(|e| FleetError::nats("the audit stream", e))?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| FleetError::nats("following the audit stream", e))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| FleetError::nats("following the audit stream", e))?;
        Ok(tokio::spawn(async move {
            while let Some(m) = messages.next().await {
                let Ok(m) = m else { continue };
                let seq = m.info().map_or(0, |i| i.stream_sequence);
                apply(seq, m.payload.to_vec());
            }
        })
        .abort_handle())
    }
}

impl RegistryStorage for FleetRegistry {
    fn durable(&self) -> bool {
        true
    }

    fn audit_numbering(&self) -> AuditNumbering {
        AuditNumbering::Fleet
    }

    fn take_contents(&self) -> RegistryContents {
        RegistryContents {
            records: std::mem::take(
                &mut *self.at_start.lock().unwrap_or_else(PoisonError::into_inner),
            ),
            // The audit log reaches every node through its follower.
            audit: Vec::new(),
        }
    }

    fn component<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<Vec<u8>, RegistryError>> {
        Box::pin(self.read_component(digest))
    }

    fn write<'a>(
        &'a self,
        key: &'a RecordKey,
        record: Option<Vec<u8>>,
        component: Option<(&'a str, Vec<u8>)>,
        forget: Vec<String>,
    ) -> BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(self.write_change(key, record, component, forget))
    }

    fn keep_audit(&self, _seq: u64, _entry: Vec<u8>) -> BoxFuture<'_, Result<(), RegistryError>> {
        Box::pin(std::future::ready(Err(RegistryError::Failed(
            "the fleet numbers its own audit log".into(),
        ))))
    }

    fn append_audit(&self, entry: Vec<u8>) -> BoxFuture<'_, Result<u64, RegistryError>> {
        Box::pin(self.append_audit_entry(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_that_do_not_hash_to_their_digest_are_refused() {
        let good = b"component".to_vec();
        let digest = sluice_sandbox::digest(&good);
        assert_eq!(verified(&digest, good.clone()).ok(), Some(good));
        assert!(verified(&digest, b"swapped".to_vec()).is_err());
    }

    #[test]
    fn malformed_records_are_ignored() {
        assert!(checked("t.h", Some(br#"{"versions":[]}"#)).is_some());
        assert!(checked("t.h", None).is_some());
        for (k, v) in [
            ("th", Some(&b"{}"[..])),
            ("t.h", Some(&b"not json"[..])),
            ("t.h", Some(&b"[1]"[..])),
            ("t.h.x", Some(&b"{}"[..])),
            (".h", None),
        ] {
            assert!(checked(k, v).is_none(), "{k}");
        }
    }
}
