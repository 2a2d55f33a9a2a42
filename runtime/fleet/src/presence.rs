//! Presence across the fleet on JetStream KV.
//!
//! Two buckets. `{prefix}_presence_members` holds, per presence channel
//! with members on a node, one entry `{tenant}.{channel}.{node}` with that
//! node's members (subject, connections, exposed claims), written when
//! they change and never otherwise. `{prefix}_presence_nodes` holds one
//! key per live node, rewritten every [`HEARTBEAT`] and expiring
//! [`ENTRY_TTL`] after its last write: the heartbeat is one write whatever
//! the number of channels, so it never queues behind (or stalls) the
//! channels' writes and never outlasts the TTL. A node whose key expires
//! (it died, or was cut off from NATS) stops counting on every node at
//! once, within [`VANISH_BOUND`] (the bucket places a marker when the key
//! expires, which every node's watch sees), and every node purges its
//! entries; if it was only cut off, it writes its key and its entries
//! again when it is back.
//!
//! Changes are coalesced: a join or leave marks its channel dirty (a set:
//! bounded by the channels a node has, never by the rate of changes), and
//! one writer writes each dirty channel's members as they are when it gets
//! there, [`WRITES_IN_FLIGHT`] at a time. A thousand joins to one channel
//! in a moment are a few writes, not a thousand copies of a growing list.
//!
//! Every node mirrors both buckets through watches, so a `presence`
//! request is answered from memory: this node's own members plus every
//! live node's entry. A `join` or `leave` event is sent only when a
//! subject arrives in or leaves the whole fleet: not when it connects to a
//! second node, not when it leaves one node while still on another. A dead
//! node's members vanish from answers but get no `leave` event.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;

use sluice_server::backends::keys::ChannelKey;
use sluice_server::backends::presence::{PresenceEntry, PresenceShare, PresenceSource};

use crate::bucket::{kv_token, open_bucket};
use crate::error::FleetError;

/// How often a node rewrites its key in the nodes bucket.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long a node's key outlives its last write.
pub const ENTRY_TTL: Duration = Duration::from_secs(15);

/// Within how long a dead node's members vanish from every answer: the
/// TTL, plus a heartbeat the key may have just been refreshed before, plus
/// the server's expiry sweep.
pub const VANISH_BOUND: Duration = Duration::from_secs(21);

/// Channel writes in flight at once.
pub const WRITES_IN_FLIGHT: usize = 64;

/// How long the writer waits after a failed write before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What this node sees of the others.
#[derive(Default)]
struct View {
    /// Entries by `{tenant}.{channel}` (KV tokens), then by node.
    entries: HashMap<String, BTreeMap<String, PresenceEntry>>,
    /// The channels each node has an entry for.
    by_node: HashMap<String, HashSet<String>>,
    /// Nodes whose key is in the nodes bucket now.
    alive: HashSet<String>,
    /// Nodes with entries but no key, since when (purged after the TTL).
    suspect: HashMap<String, Instant>,
}

impl View {
    fn put(&mut self, channel: &str, node: &str, entry: PresenceEntry) {
        self.entries
            .entry(channel.to_owned())
            .or_default()
            .insert(node.to_owned(), entry);
        self.by_node
            .entry(node.to_owned())
            .or_default()
            .insert(channel.to_owned());
    }

    fn remove(&mut self, channel: &str, node: &str) {
        if let Some(nodes) = self.entries.get_mut(channel) {
            nodes.remove(node);
            if nodes.is_empty() {
                self.entries.remove(channel);
            }
        }
        if let Some(channels) = self.by_node.get_mut(node) {
            channels.remove(channel);
            if channels.is_empty() {
                self.by_node.remove(node);
            }
        }
    }

    /// Forget a node: the keys of its entries, to purge from the bucket.
    fn forget(&mut self, node: &str) -> Vec<String> {
        self.suspect.remove(node);
        let channels = self.by_node.remove(node).unwrap_or_default();
        channels
            .into_iter()
            .map(|channel| {
                if let Some(nodes) = self.entries.get_mut(&channel) {
                    nodes.remove(node);
                    if nodes.is_empty() {
                        self.entries.remove(&channel);
                    }
                }
                format!("{channel}.{node}")
            })
            .collect()
    }
}

/// Channels whose members changed and are not written yet.
#[derive(Default)]
struct Dirty {
    keys: Mutex<HashSet<ChannelKey>>,
    wake: tokio::sync::Notify,
}

impl Dirty {
    fn mark(&self, key: ChannelKey) {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key);
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<ChannelKey> {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect()
    }
}

/// This node's entries in the bucket (or being written): KV key ->
/// channel. A key is added before its put and removed before its purge, so
/// the watch can tell this node's own writes from another node purging
/// them.
type Written = Arc<Mutex<HashMap<String, ChannelKey>>>;

/// This node's view of the fleet's presence, and its writer.
pub struct FleetPresence {
    me: String,
    view: Arc<Mutex<View>>,
    dirty: Arc<Dirty>,
    source: Arc<OnceLock<Weak<dyn PresenceSource>>>,
    members: kv::Store,
    nodes: kv::Store,
    written: Written,
    tasks: Vec<tokio::task::AbortHandle>,
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Purge `keys` from `store`, [`WRITES_IN_FLIGHT`] at a time.
async fn purge_all(store: &kv::Store, keys: Vec<String>) {
    futures_util::stream::iter(keys)
        .map(|k| async move { store.purge(&k).await })
        .buffer_unordered(WRITES_IN_FLIGHT)
        .for_each(|_| async {})
        .await;
}

impl FleetPresence {
    /// Open (or create) the buckets, announce this node, start the
    /// watches, the writer and the heartbeat.
    pub async fn open(
        js: &jetstream::Context,
        prefix: &str,
        node: String,
        replicas: usize,
    ) -> Result<Arc<Self>, FleetError> {
        let members = open_bucket(
            js,
            kv::Config {
                bucket: format!("{prefix}_presence_members"),
                description: "Sluice presence: one entry per node and channel".into(),
                history: 1,
                storage: jetstream::stream::StorageType::Memory,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let nodes = open_bucket(
            js,
            kv::Config {
                bucket: format!("{prefix}_presence_nodes"),
                description: "Sluice presence: one key per live node".into(),
                history: 1,
                max_age: ENTRY_TTL,
                storage: jetstream::stream::StorageType::Memory,
                num_replicas: replicas,
                limit_markers: Some(ENTRY_TTL),
                ..Default::default()
            },
        )
        .await?;
        let me = kv_token(&node);
        let alive = nodes
            .put(&me, Bytes::from_static(b"1"))
            .await
            .map_err(|e| FleetError::nats("cannot announce this node's presence", e))?;
        let view: Arc<Mutex<View>> = Arc::default();
        let dirty: Arc<Dirty> = Arc::default();
        let written: Written = Arc::default();
        let source: Arc<OnceLock<Weak<dyn PresenceSource>>> = Arc::default();

        let mut member_watch = members
            .watch_all()
            .await
            .map_err(|e| FleetError::nats("cannot watch the presence bucket", e))?;
        let mut node_watch = nodes
            .watch_all()
            .await
            .map_err(|e| FleetError::nats("cannot watch the presence nodes", e))?;

        let (v, d, w, m, me2) = (
            view.clone(),
            dirty.clone(),
            written.clone(),
            members.clone(),
            me.clone(),
        );
        let member_watcher = tokio::spawn(async move {
            while let Some(entry) = member_watch.next().await {
                let Ok(entry) = entry else { continue };
                let Some((channel, node)) = entry.key.rsplit_once('.') else {
                    continue;
                };
                let put = entry.operation == kv::Operation::Put;
                if node == me2 {
                    let mine = lock(&w).get(&entry.key).cloned();
                    match (put, mine) {
                        // Another node purged a live entry of ours (it
                        // thought this node dead): write it again.
                        (false, Some(key)) => d.mark(key),
                        // Left by an earlier run of this node.
                        (true, None) => {
                            let (m, k) = (m.clone(), entry.key.clone());
                            tokio::spawn(async move { m.purge(&k).await });
                        }
                        _ => {}
                    }
                    continue;
                }
                let parsed = put
                    .then(|| serde_json::from_slice::<PresenceEntry>(&entry.value).ok())
                    .flatten();
                let mut view = lock(&v);
                match parsed {
                    Some(e) => view.put(channel, node, e),
                    None => view.remove(channel, node),
                }
            }
        })
        .abort_handle();

        let (v, m, me2) = (view.clone(), members.clone(), me.clone());
        let node_watcher = tokio::spawn(async move {
            while let Some(entry) = node_watch.next().await {
                let Ok(entry) = entry else { continue };
                if entry.key == me2 {
                    continue;
                }
                if entry.operation == kv::Operation::Put {
                    let mut view = lock(&v);
                    view.alive.insert(entry.key.clone());
                    view.suspect.remove(&entry.key);
                    continue;
                }
                // The node's key expired or was removed: it is gone.
                let keys = {
                    let mut view = lock(&v);
                    view.alive.remove(&entry.key);
                    view.forget(&entry.key)
                };
                tracing::info!(node = %entry.key, "a node left the fleet's presence");
                let m = m.clone();
                tokio::spawn(async move { purge_all(&m, keys).await });
            }
        })
        .abort_handle();

        let writer = tokio::spawn(write_loop(
            members.clone(),
            me.clone(),
            dirty.clone(),
            written.clone(),
            source.clone(),
        ))
        .abort_handle();

        let heartbeat = tokio::spawn(heartbeat(
            nodes.clone(),
            members.clone(),
            me.clone(),
            alive,
            view.clone(),
            dirty.clone(),
            written.clone(),
        ))
        .abort_handle();

        Ok(Arc::new(Self {
            me,
            view,
            dirty,
            source,
            members,
            nodes,
            written,
            tasks: vec![member_watcher, node_watcher, writer, heartbeat],
        }))
    }

    /// Remove this node's entries and its key (a clean shutdown): its
    /// members leave every other node's answers at once rather than after
    /// the TTL.
    pub async fn withdraw(&self) {
        for t in &self.tasks {
            t.abort();
        }
        let keys: Vec<String> = lock(&self.written).drain().map(|(k, _)| k).collect();
        let _ = self.nodes.purge(&self.me).await;
        purge_all(&self.members, keys).await;
    }

    /// Other nodes' live entries for a channel, by node.
    fn live(&self, key: &ChannelKey) -> Vec<PresenceEntry> {
        let view = lock(&self.view);
        view.entries
            .get(&channel_prefix(key))
            .map(|nodes| {
                nodes
                    .iter()
                    .filter(|(n, _)| view.alive.contains(*n))
                    .map(|(_, e)| e.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Write every dirty channel's members as they are now, coalesced.
async fn write_loop(
    members: kv::Store,
    me: String,
    dirty: Arc<Dirty>,
    written: Written,
    source: Arc<OnceLock<Weak<dyn PresenceSource>>>,
) {
    loop {
        dirty.wake.notified().await;
        let batch = dirty.take();
        if batch.is_empty() {
            continue;
        }
        let Some(source) = source.get().and_then(Weak::upgrade) else {
            continue;
        };
        let failed = futures_util::stream::iter(batch)
            .map(|key| {
                let k = format!("{}.{me}", channel_prefix(&key));
                let value = source
                    .entry(&key)
                    .and_then(|e| serde_json::to_vec(&e).ok().map(Bytes::from));
                {
                    let mut w = lock(&written);
                    match &value {
                        Some(_) => w.insert(k.clone(), key.clone()),
                        None => w.remove(&k),
                    };
                }
                let members = &members;
                async move {
                    let result = match value {
                        Some(v) => members
                            .put(&k, v)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        None => members.purge(&k).await.map_err(|e| e.to_string()),
                    };
                    result.map_err(|e| (key, e))
                }
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .filter_map(|r| async move { r.err() })
            .collect::<Vec<_>>()
            .await;
        if !failed.is_empty() {
            tracing::warn!(failed = failed.len(), error = %failed[0].1, "presence writes failed; retrying");
            tokio::time::sleep(RETRY_AFTER).await;
            for (key, _) in failed {
                dirty.mark(key);
            }
        }
    }
}

/// Keep this node's key alive; write everything again when it was lost
/// (expired while the node was cut off, or NATS lost it); forget nodes
/// that have entries but no key for longer than the TTL.
async fn heartbeat(
    nodes: kv::Store,
    members: kv::Store,
    me: String,
    mut revision: u64,
    view: Arc<Mutex<View>>,
    dirty: Arc<Dirty>,
    written: Written,
) {
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    loop {
        beat.tick().await;
        match nodes.update(&me, Bytes::from_static(b"1"), revision).await {
            Ok(r) => revision = r,
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                match nodes.put(&me, Bytes::from_static(b"1")).await {
                    Ok(r) => {
                        revision = r;
                        tracing::warn!("this node's presence had expired; writing it again");
                        let mine: Vec<ChannelKey> = lock(&written).values().cloned().collect();
                        for key in mine {
                            dirty.mark(key);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "presence heartbeat failed"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "presence heartbeat failed"),
        }
        // Entries whose node has no key: left by a node that died while
        // no node was watching, or not yet announced (a node writes its
        // key first). Gone after the TTL.
        let stale: Vec<String> = {
            let mut view = lock(&view);
            let now = Instant::now();
            let orphans: Vec<String> = view
                .by_node
                .keys()
                .filter(|n| !view.alive.contains(*n))
                .cloned()
                .collect();
            view.suspect.retain(|n, _| orphans.contains(n));
            let mut stale = Vec::new();
            for n in orphans {
                let since = *view.suspect.entry(n.clone()).or_insert(now);
                if now.duration_since(since) >= ENTRY_TTL {
                    stale.extend(view.forget(&n));
                }
            }
            stale
        };
        if !stale.is_empty() {
            purge_all(&members, stale).await;
        }
    }
}

impl PresenceShare for FleetPresence {
    fn shared(&self) -> bool {
        true
    }

    fn attach(&self, source: Weak<dyn PresenceSource>) {
        let _ = self.source.set(source);
    }

    fn changed(&self, key: &ChannelKey) {
        self.dirty.mark(key.clone());
    }

    fn elsewhere(&self, key: &ChannelKey) -> Vec<PresenceEntry> {
        self.live(key)
    }

    fn present_elsewhere(&self, key: &ChannelKey, subject: &str) -> bool {
        let view = lock(&self.view);
        view.entries.get(&channel_prefix(key)).is_some_and(|nodes| {
            nodes.iter().any(|(n, e)| {
                view.alive.contains(n) && e.members.iter().any(|m| m.subject == subject)
            })
        })
    }
}
