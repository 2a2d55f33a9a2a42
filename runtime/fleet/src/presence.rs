//! Presence across the fleet on JetStream KV.
//!
//! Each node writes, per presence channel with local members, one entry
//! `{tenant}.{channel}.{node}` holding its members (subject, connections,
//! exposed claims) to the `{prefix}_presence` bucket, when they change and
//! again every [`HEARTBEAT`]. Entries live [`ENTRY_TTL`] past their last
//! write: a node that dies stops writing, and its members disappear from
//! every node's answer within [`VANISH_BOUND`] (the bucket places a marker
//! when an entry expires, which every node's watch sees).
//!
//! Every node mirrors the bucket through a watch, so a `presence` request
//! is answered from memory: this node's own members plus every other
//! node's entry. A `join` or `leave` event is sent only when a subject
//! arrives in or leaves the whole fleet: not when it connects to a second
//! node, not when it leaves one node while still on another. A dead node's
//! members vanish from answers but get no `leave` event.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;

use sluice_server::backends::keys::ChannelKey;
use sluice_server::backends::presence::{PresenceEntry, PresenceShare};

use crate::bucket::{kv_token, open_bucket};
use crate::error::FleetError;

/// How often a node rewrites its entries.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long an entry outlives its last write.
pub const ENTRY_TTL: Duration = Duration::from_secs(15);

/// Within how long a dead node's members vanish from every answer: the
/// TTL, plus a heartbeat the entry may have just been refreshed before, plus
/// the server's expiry sweep.
pub const VANISH_BOUND: Duration = Duration::from_secs(21);

type Mirror = HashMap<String, BTreeMap<String, PresenceEntry>>;

/// This node's view of the fleet's presence, and its writer.
pub struct FleetPresence {
    node: String,
    /// Other nodes' entries by `{tenant}.{channel}` (KV tokens).
    mirror: Arc<Mutex<Mirror>>,
    writes: tokio::sync::mpsc::UnboundedSender<(String, Option<Bytes>)>,
    tasks: Vec<tokio::task::AbortHandle>,
    store: kv::Store,
    /// What this node last wrote, by key (rewritten every heartbeat).
    written: Arc<Mutex<HashMap<String, Bytes>>>,
}

impl Drop for FleetPresence {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn channel_prefix(key: &ChannelKey) -> String {
    format!("{}.{}", kv_token(&key.tenant), kv_token(&key.channel))
}

impl FleetPresence {
    /// Open (or create) the bucket, start the watch and the writer.
    pub async fn open(
        js: &jetstream::Context,
        bucket: String,
        node: String,
        replicas: usize,
    ) -> Result<Arc<Self>, FleetError> {
        let store = open_bucket(
            js,
            kv::Config {
                bucket,
                description: "Sluice presence, one entry per node and channel".into(),
                history: 1,
                max_age: ENTRY_TTL,
                storage: jetstream::stream::StorageType::Memory,
                num_replicas: replicas,
                limit_markers: Some(ENTRY_TTL),
                ..Default::default()
            },
        )
        .await?;
        let mirror: Arc<Mutex<Mirror>> = Arc::default();
        let mut watch = store
            .watch_all()
            .await
            .map_err(|e| FleetError::nats("cannot watch the presence bucket", e))?;
        let (m, me) = (mirror.clone(), kv_token(&node));
        let watcher = tokio::spawn(async move {
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { continue };
                let Some((channel, node)) = entry.key.rsplit_once('.') else {
                    continue;
                };
                if node == me {
                    continue;
                }
                let mut mirror = m.lock().unwrap_or_else(PoisonError::into_inner);
                let parsed = (entry.operation == kv::Operation::Put)
                    .then(|| serde_json::from_slice::<PresenceEntry>(&entry.value).ok())
                    .flatten();
                match parsed {
                    Some(e) => {
                        mirror
                            .entry(channel.to_owned())
                            .or_default()
                            .insert(node.to_owned(), e);
                    }
                    None => {
                        if let Some(nodes) = mirror.get_mut(channel) {
                            nodes.remove(node);
                            if nodes.is_empty() {
                                mirror.remove(channel);
                            }
                        }
                    }
                }
            }
        })
        .abort_handle();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Option<Bytes>)>();
        let written: Arc<Mutex<HashMap<String, Bytes>>> = Arc::default();
        let (w_store, w_written) = (store.clone(), written.clone());
        let writer = tokio::spawn(async move {
            let mut beat = tokio::time::interval(HEARTBEAT);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    next = rx.recv() => {
                        let Some((key, value)) = next else { break };
                        // Only the latest write per key matters.
                        let mut batch: HashMap<String, Option<Bytes>> = HashMap::new();
                        batch.insert(key, value);
                        while let Ok((k, v)) = rx.try_recv() {
                            batch.insert(k, v);
                        }
                        for (key, value) in batch {
                            let result = match &value {
                                Some(v) => w_store.put(&key, v.clone()).await.map(|_| ()).map_err(|e| e.to_string()),
                                None => w_store.purge(&key).await.map_err(|e| e.to_string()),
                            };
                            if let Err(e) = result {
                                tracing::warn!(error = %e, "presence write failed");
                            }
                            let mut w = w_written.lock().unwrap_or_else(PoisonError::into_inner);
                            match value {
                                Some(v) => { w.insert(key, v); }
                                None => { w.remove(&key); }
                            }
                        }
                    }
                    _ = beat.tick() => {
                        let all: Vec<(String, Bytes)> = w_written
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        for (key, value) in all {
                            if let Err(e) = w_store.put(&key, value).await {
                                tracing::warn!(error = %e, "presence heartbeat failed");
                                break;
                            }
                        }
                    }
                }
            }
        })
        .abort_handle();
        Ok(Arc::new(Self {
            node,
            mirror,
            writes: tx,
            tasks: vec![watcher, writer],
            store,
            written,
        }))
    }

    /// Remove this node's entries (a clean shutdown): its members leave
    /// every other node's answers at once rather than after the TTL.
    pub async fn withdraw(&self) {
        let keys: Vec<String> = self
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        for key in keys {
            let _ = self.store.purge(&key).await;
        }
    }
}

impl PresenceShare for FleetPresence {
    fn shared(&self) -> bool {
        true
    }

    /// This node's members of a channel changed (`None`: it has none).
    fn report(&self, key: &ChannelKey, entry: Option<PresenceEntry>) {
        let k = format!("{}.{}", channel_prefix(key), kv_token(&self.node));
        let value = entry.and_then(|e| serde_json::to_vec(&e).ok().map(Bytes::from));
        let _ = self.writes.send((k, value));
    }

    /// Other nodes' entries for a channel.
    fn elsewhere(&self, key: &ChannelKey) -> Vec<PresenceEntry> {
        self.mirror
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&channel_prefix(key))
            .map(|nodes| nodes.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether `subject` is present in a channel on another node.
    fn present_elsewhere(&self, key: &ChannelKey, subject: &str) -> bool {
        self.mirror
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&channel_prefix(key))
            .is_some_and(|nodes| {
                nodes
                    .values()
                    .any(|e| e.members.iter().any(|m| m.subject == subject))
            })
    }
}
