//! Handler state on JetStream KV (cluster mode): every node reads and
//! commits the same state, with optimistic concurrency.
//!
//! Reads go to the bucket stream's leader (`STREAM.MSG.GET`, last message
//! of the key's subject), not to KV's direct gets, which any replica
//! answers: a replica cut off from the leader keeps answering direct gets
//! from what it had, so a read could be seconds behind an acknowledged
//! write (docs/faults.md, Found 4). The leader has every acknowledged
//! write; the cost is the hop from this node's NATS server to it.
//!
//! One bucket (`{prefix}_state`) holds every tenant's keys as
//! `{tenant}.{key}` (each part encoded into KV's key alphabet, so no key
//! can name another tenant's). A call reads each key it touches with its
//! revision; its commit writes every key with
//! `Nats-Expected-Last-Subject-Sequence` set to the revision it read, as
//! one message or, for several keys, one atomic batch (nats-server >= 2.12,
//! `allow_atomic`): all or nothing. When another node wrote one of the keys
//! first, nothing is written and the call fails with
//! [`CommitError::Conflict`]; the server runs it once more on fresh state,
//! then answers `conflict`.
//!
//! Quotas (`max_state_keys`, `max_state_bytes`) are checked against this
//! node's view of each tenant's usage, kept current by a watch on the
//! bucket: across the fleet a tenant can overshoot by what other nodes
//! commit in the moment before the watch delivers it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::bucket::{kv_token, kv_untoken, open_bucket};
use crate::error::FleetError;
use async_nats::HeaderMap;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use sluice_sandbox::{
    BoxFuture, CommitError, Revisions, StateStore, StoreError, Usage, Versioned, Writes,
};

/// The header a KV delete or purge marker carries (`DEL`, `PURGE`).
const KV_OPERATION: &str = "KV-Operation";
/// The header of a marker the server writes (a TTL's or a purge's).
const MARKER_REASON: &str = "Nats-Marker-Reason";

/// Error code JetStream answers when an expected last sequence is not the
/// subject's last.
const WRONG_LAST_SEQUENCE: u64 = 10071;

/// Longest atomic batch nats-server accepts.
pub const MAX_BATCH: usize = 1000;

#[derive(Default)]
struct Mirror {
    /// Entry size (key and value bytes) by (tenant, key).
    sizes: HashMap<(String, String), usize>,
    usage: HashMap<String, Usage>,
}

impl Mirror {
    fn apply(&mut self, tenant: String, key: String, size: Option<usize>) {
        let before = match size {
            Some(s) => self.sizes.insert((tenant.clone(), key), s),
            None => self.sizes.remove(&(tenant.clone(), key)),
        };
        let u = self.usage.entry(tenant).or_default();
        if let Some(b) = before {
            u.keys -= 1;
            u.bytes -= b;
        }
        if let Some(s) = size {
            u.keys += 1;
            u.bytes += s;
        }
    }
}

/// [`StateStore`] on a JetStream KV bucket.
pub struct KvState {
    client: async_nats::Client,
    /// The bucket's stream: reads ask its leader.
    stream: jetstream::stream::Stream,
    bucket: String,
    mirror: Arc<Mutex<Mirror>>,
    watcher: tokio::task::AbortHandle,
}

impl Drop for KvState {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("JetStream KV: {e}"))
}

impl KvState {
    /// Open (or create) the bucket, allow atomic batches on it, and start
    /// the usage watch.
    pub async fn open(
        js: &jetstream::Context,
        client: async_nats::Client,
        bucket: String,
        replicas: usize,
    ) -> Result<Arc<Self>, FleetError> {
        let store = open_bucket(
            js,
            kv::Config {
                bucket: bucket.clone(),
                description: "Sluice handler state".into(),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let stream_name = format!("KV_{bucket}");
        let mut stream = js
            .get_stream(&stream_name)
            .await
            .map_err(|e| FleetError::nats("the state bucket's stream", e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| FleetError::nats("the state bucket's stream", e))?;
        if !info.config.allow_atomic_publish {
            let mut config = info.config.clone();
            config.allow_atomic_publish = true;
            js.update_stream(config).await.map_err(|e| {
                FleetError::nats(
                    format!(
                        "cannot allow atomic batches on {stream_name} (nats-server >= 2.12 needed)"
                    ),
                    e,
                )
            })?;
        }
        let mirror = Arc::new(Mutex::new(Mirror::default()));
        let mut watch = store
            .watch_all()
            .await
            .map_err(|e| FleetError::nats("cannot watch the state bucket", e))?;
        let m = mirror.clone();
        let watcher = tokio::spawn(async move {
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { continue };
                let Some((t, k)) = entry.key.split_once('.') else {
                    continue;
                };
                let (Some(tenant), Some(key)) = (kv_untoken(t), kv_untoken(k)) else {
                    continue;
                };
                let size =
                    (entry.operation == kv::Operation::Put).then(|| key.len() + entry.value.len());
                m.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .apply(tenant, key, size);
            }
        })
        .abort_handle();
        Ok(Arc::new(Self {
            client,
            stream,
            bucket,
            mirror,
            watcher,
        }))
    }

    /// The NATS server leading the bucket's stream (which answers every
    /// read), if one does.
    pub async fn leader(&self) -> Option<String> {
        let info = self.stream.get_info().await.ok()?;
        info.cluster?.leader
    }

    fn key(tenant: &str, key: &str) -> String {
        format!("{}.{}", kv_token(tenant), kv_token(key))
    }

    fn subject(&self, tenant: &str, key: &str) -> String {
        format!("$KV.{}.{}", self.bucket, Self::key(tenant, key))
    }

    /// Commit `writes` (already checked to be at most [`MAX_BATCH`]).
    async fn write(
        &self,
        tenant: &str,
        expected: &Revisions,
        writes: Writes,
    ) -> Result<(), CommitError> {
        let batch_id = self.client.new_inbox().replace('.', "");
        let n = writes.len();
        for (i, (key, value)) in writes.into_iter().enumerate() {
            let mut headers = HeaderMap::new();
            let revision = expected.get(&key).copied().unwrap_or(0);
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                revision.to_string().as_str(),
            );
            let payload = match value {
                Some(v) => Bytes::from(v),
                None => {
                    headers.insert("KV-Operation", "DEL");
                    Bytes::new()
                }
            };
            if n > 1 {
                headers.insert("Nats-Batch-Id", batch_id.as_str());
                headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            }
            let subject = self.subject(tenant, &key);
            if i + 1 < n {
                self.client
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(|e| CommitError::Store(failed(e)))?;
                continue;
            }
            if n > 1 {
                headers.insert("Nats-Batch-Commit", "1");
            }
            let response = self
                .client
                .request_with_headers(subject, headers, payload)
                .await
                .map_err(|e| CommitError::Store(failed(e)))?;
            return match serde_json::from_slice::<serde_json::Value>(&response.payload) {
                Ok(v) if v.get("error").is_none() => Ok(()),
                Ok(v) if v["error"]["err_code"].as_u64() == Some(WRONG_LAST_SEQUENCE) => {
                    Err(CommitError::Conflict)
                }
                Ok(v) => Err(CommitError::Store(failed(&v["error"]))),
                Err(e) => Err(CommitError::Store(failed(e))),
            };
        }
        Ok(())
    }
}

/// A key's value as its last message says: none for a delete or purge
/// marker (KV's own, or one the server wrote), else the payload.
fn value_of(m: &jetstream::message::StreamMessage) -> Option<Vec<u8>> {
    let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
    let deleted = matches!(header(KV_OPERATION).as_deref(), Some("DEL" | "PURGE"))
        || header(MARKER_REASON).is_some();
    (!deleted).then(|| m.payload.to_vec())
}

impl StateStore for KvState {
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move { Ok(self.get_versioned(tenant, key).await?.0) })
    }

    fn entry_bytes<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<usize>, StoreError>> {
        Box::pin(async move { Ok(self.get(tenant, key).await?.map(|v| key.len() + v.len())) })
    }

    fn usage<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<Usage, StoreError>> {
        let usage = self
            .mirror
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .usage
            .get(tenant)
            .copied()
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(usage)))
    }

    fn commit<'a>(
        &'a self,
        tenant: &'a str,
        writes: Writes,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        // Unchecked: used by nothing in the server (calls commit checked).
        Box::pin(async move {
            let mut expected = Revisions::new();
            for key in writes.keys() {
                expected.insert(key.clone(), self.get_versioned(tenant, key).await?.1);
            }
            self.commit_checked(tenant, expected, writes)
                .await
                .map_err(|e| match e {
                    CommitError::Conflict => StoreError("a key changed during the commit".into()),
                    CommitError::Store(e) => e,
                })
        })
    }

    fn versioned(&self) -> bool {
        true
    }

    fn get_versioned<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Versioned, StoreError>> {
        Box::pin(async move {
            let subject = self.subject(tenant, key);
            match self.stream.get_last_raw_message_by_subject(&subject).await {
                Ok(m) => Ok((value_of(&m), m.sequence)),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok((None, 0)),
                Err(e) => Err(failed(format!(
                    "reading {key:?} from the stream leader: {e}"
                ))),
            }
        })
    }

    fn commit_checked<'a>(
        &'a self,
        tenant: &'a str,
        expected: Revisions,
        writes: Writes,
    ) -> BoxFuture<'a, Result<(), CommitError>> {
        Box::pin(async move {
            if writes.is_empty() {
                return Ok(());
            }
            if writes.len() > MAX_BATCH {
                return Err(CommitError::Store(StoreError(format!(
                    "a commit of more than {MAX_BATCH} keys cannot be atomic"
                ))));
            }
            self.write(tenant, &expected, writes).await
        })
    }
}
