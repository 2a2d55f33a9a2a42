//! Tenants created through the management API, across the fleet: one
//! record per tenant in a JetStream KV bucket (`{prefix}_tenants`, history
//! 1), key the tenant id, value the control plane's JSON. Every node
//! watches the bucket, so a tenant created, changed or removed on one node
//! is served the same way on all of them within moments.
//!
//! Revisions are the bucket's (its stream's sequence numbers): they only
//! grow and are never reused, a removal's being the sequence of its delete
//! marker. Every write carries the revision it expects to replace
//! (`Nats-Expected-Last-Subject-Sequence`), checked by the stream's leader:
//! two nodes writing one tenant at once can never both win.
//!
//! Nothing read from the bucket is trusted as it comes: a key must be a
//! tenant id (`sluice_config::is_name`) and a value a JSON object; anything
//! else is ignored and logged, and what a node serves stays as it was.

use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv::Operation;
use futures_util::StreamExt as _;
use sluice_sandbox::BoxFuture;
use sluice_server::backends::tenants::{
    Expected, StoredTenant, TenantChange, TenantStorage, TenantStoreError,
};

use crate::bucket::open_bucket;
use crate::error::FleetError;

/// How long reading the bucket at open may wait for its next record
/// before the node gives up joining (the records are few and small).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The fleet's tenants.
pub struct FleetTenants {
    js: jetstream::Context,
    bucket: jetstream::kv::Store,
    /// The bucket's stream sequence the tenants read at open are as of: the
    /// watch starts just after it, so nothing is missed or seen twice.
    read_up_to: u64,
    /// The tenants as they were when the node joined (taken once).
    at_start: Mutex<Vec<StoredTenant>>,
}

/// A record read from the bucket, if it is one: its tenant id, with the
/// record unless removed. `None`: malformed (logged), to be ignored.
fn checked(key: &str, value: Option<&[u8]>) -> Option<String> {
    if !sluice_config::is_name(key) {
        tracing::error!(
            key,
            "a key in the fleet's tenants bucket that is no tenant id: ignored"
        );
        return None;
    }
    if let Some(v) = value
        && !is_object(v)
    {
        tracing::error!(
            tenant = key,
            "a tenant record in the fleet's bucket that is not a JSON object: ignored"
        );
        return None;
    }
    Some(key.to_owned())
}

fn is_object(v: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(v).is_ok_and(|j| j.is_object())
}

/// Whether a message of the bucket removes its key (a delete or purge
/// marker, or a marker the server left).
fn removes(headers: &async_nats::HeaderMap) -> bool {
    if let Some(op) = headers.get("KV-Operation") {
        return !matches!(Operation::from_str(op.as_str()), Ok(Operation::Put));
    }
    headers
        .get(async_nats::header::NATS_MARKER_REASON)
        .is_some()
}

fn failed(what: &str, e: &dyn std::fmt::Display) -> TenantStoreError {
    TenantStoreError::Failed(format!("{what}: {e}"))
}

impl FleetTenants {
    /// Open (or create) the bucket and read the tenants as they are now.
    pub async fn open(
        js: &jetstream::Context,
        prefix: &str,
        replicas: usize,
    ) -> Result<Arc<Self>, FleetError> {
        let bucket = open_bucket(
            js,
            jetstream::kv::Config {
                bucket: format!("{prefix}_tenants"),
                description: "Sluice: tenants created through the management API".into(),
                history: 1,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        if bucket.use_jetstream_prefix {
            return Err(FleetError::Setting(format!(
                "cluster: the bucket {} is reached through a JetStream domain or prefix, which Sluice does not use: connect the node to the account that holds it",
                bucket.name
            )));
        }
        let (read_up_to, tenants) = Self::read_all(&bucket).await?;
        let at_start = tenants
            .into_iter()
            .map(|(id, (revision, record))| StoredTenant {
                id,
                revision,
                record,
            })
            .collect();
        Ok(Arc::new(Self {
            js: js.clone(),
            bucket,
            read_up_to,
            at_start: Mutex::new(at_start),
        }))
    }

    /// Every tenant in the bucket, and the stream sequence that is as of:
    /// the last record of each key, then whatever arrived meanwhile, until
    /// nothing is pending.
    async fn read_all(
        bucket: &jetstream::kv::Store,
    ) -> Result<(u64, BTreeMap<String, (u64, Vec<u8>)>), FleetError> {
        let what = || format!("reading the tenants in {}", bucket.name);
        let status = bucket
            .status()
            .await
            .map_err(|e| FleetError::nats(what(), e))?;
        let mut up_to = status.info.state.last_sequence;
        let mut tenants = BTreeMap::new();
        if status.info.state.messages == 0 {
            // Anything written from now on comes through the watch.
            return Ok((up_to, tenants));
        }
        let mut records = bucket
            .watch_with_history(">")
            .await
            .map_err(|e| FleetError::nats(what(), e))?;
        loop {
            let entry = match tokio::time::timeout(READ_TIMEOUT, records.next()).await {
                Ok(Some(Ok(entry))) => entry,
                Ok(Some(Err(e))) => return Err(FleetError::nats(what(), e)),
                Ok(None) => return Err(FleetError::nats(what(), "the watch ended")),
                Err(_) => {
                    return Err(FleetError::nats(
                        what(),
                        format!(
                            "no record within {}s though the bucket holds {}",
                            READ_TIMEOUT.as_secs(),
                            status.info.state.messages
                        ),
                    ));
                }
            };
            up_to = up_to.max(entry.revision);
            let put = entry.operation == Operation::Put;
            if let Some(id) = checked(&entry.key, put.then_some(&entry.value[..])) {
                if put {
                    tenants.insert(id, (entry.revision, entry.value.to_vec()));
                } else {
                    tenants.remove(&id);
                }
            }
            if entry.delta == 0 {
                return Ok((up_to, tenants));
            }
        }
    }

    /// What the bucket's leader holds for `id` now: the revision of its
    /// last record, and whether that record removed it. `None`: never
    /// written.
    async fn last(&self, id: &str) -> Result<Option<(u64, bool)>, TenantStoreError> {
        let subject = format!("{}{id}", self.bucket.prefix);
        match self
            .bucket
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(m) => Ok(Some((m.sequence, removes(&m.headers)))),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(failed(&format!("reading tenant {id}"), &e)),
        }
    }

    /// The revision of `id` now, for a conflict (`None`: no such tenant).
    async fn current(&self, id: &str) -> Result<Option<u64>, TenantStoreError> {
        Ok(self
            .last(id)
            .await?
            .and_then(|(rev, removed)| (!removed).then_some(rev)))
    }

    /// Write `record` (`None`: a delete marker) for `id` if what is kept is
    /// what `expected` says.
    async fn write_change(
        &self,
        id: &str,
        expected: Expected,
        record: Option<Vec<u8>>,
    ) -> Result<u64, TenantStoreError> {
        if !sluice_config::is_name(id) {
            return Err(TenantStoreError::Failed(format!(
                "`{id}` is no tenant id (1-64 of a-z 0-9 _ -)"
            )));
        }
        if record.as_deref().is_some_and(|r| !is_object(r)) {
            return Err(TenantStoreError::Failed(format!(
                "tenant {id}: the record is not a JSON object (every node would ignore it)"
            )));
        }
        // Which sequence the write must follow. The leader's check on
        // publish is what decides; reading first tells a removed tenant
        // (whose delete marker has a revision too) from a kept one.
        let last = self.last(id).await?;
        let follows = match (expected, last) {
            (Expected::Absent, None) => 0,
            (Expected::Absent, Some((marker, true))) => marker,
            (Expected::Revision(r), Some((rev, false))) if rev == r => r,
            (_, last) => {
                return Err(TenantStoreError::Conflict {
                    current: last.and_then(|(rev, removed)| (!removed).then_some(rev)),
                });
            }
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            follows.to_string(),
        );
        if record.is_none() {
            headers.insert("KV-Operation", "DEL");
        }
        let subject = format!(
            "{}{id}",
            self.bucket
                .put_prefix
                .as_ref()
                .unwrap_or(&self.bucket.prefix)
        );
        let what = format!("writing tenant {id}");
        let ack = self
            .js
            .publish_with_headers(subject, headers, record.unwrap_or_default().into())
            .await
            .map_err(|e| failed(&what, &e))?
            .await;
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Err(TenantStoreError::Conflict {
                    current: self.current(id).await?,
                })
            }
            Err(e) => Err(failed(&what, &e)),
        }
    }

    /// Watch the bucket from just after what was read at open: every
    /// change (this node's own too), in the bucket's order, goes to
    /// `apply`, a put with its revision and record, a removal as `None`.
    pub async fn watch(
        self: &Arc<Self>,
        apply: impl Fn(TenantChange) -> futures_util::future::BoxFuture<'static, ()> + Send + 'static,
    ) -> Result<tokio::task::AbortHandle, FleetError> {
        let mut watch = self
            .bucket
            .watch_all_from_revision(self.read_up_to + 1)
            .await
            .map_err(|e| FleetError::nats("cannot watch the fleet's tenants", e))?;
        let mut seen = self.read_up_to;
        Ok(tokio::spawn(async move {
            while let Some(entry) = watch.next().await {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        tracing::warn!(error = %e, "watching the fleet's tenants");
                        continue;
                    }
                };
                // The watch is ordered; a record it gave already is not
                // applied again.
                if entry.revision <= seen {
                    continue;
                }
                seen = entry.revision;
                let put = entry.operation == Operation::Put;
                let Some(id) = checked(&entry.key, put.then_some(&entry.value[..])) else {
                    continue;
                };
                let record = put.then(|| (entry.revision, entry.value.to_vec()));
                apply((id, record)).await;
            }
        })
        .abort_handle())
    }
}

impl TenantStorage for FleetTenants {
    fn durable(&self) -> bool {
        true
    }

    fn shared(&self) -> bool {
        true
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
        Box::pin(self.write_change(id, expected, record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_records_are_ignored() {
        assert_eq!(
            checked("acme", Some(br#"{"a":1}"#)).as_deref(),
            Some("acme")
        );
        assert_eq!(checked("acme", None).as_deref(), Some("acme"));
        for (k, v) in [
            ("Acme", Some(&b"{}"[..])),
            ("a.b", Some(&b"{}"[..])),
            ("", None),
            ("acme", Some(&b"not json"[..])),
            ("acme", Some(&b"[1]"[..])),
            ("acme", Some(&b""[..])),
        ] {
            assert!(checked(k, v).is_none(), "{k} {v:?}");
        }
    }

    #[test]
    fn delete_and_purge_markers_remove() {
        let mut h = async_nats::HeaderMap::new();
        assert!(!removes(&h));
        h.insert("KV-Operation", "DEL");
        assert!(removes(&h));
        let mut h = async_nats::HeaderMap::new();
        h.insert("KV-Operation", "PURGE");
        assert!(removes(&h));
        let mut h = async_nats::HeaderMap::new();
        h.insert(async_nats::header::NATS_MARKER_REASON, "MaxAge");
        assert!(removes(&h));
    }
}
