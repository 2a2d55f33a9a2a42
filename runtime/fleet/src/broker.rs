//! [`NatsBroker`]: the [`Broker`] of a node in a fleet.
//!
//! Every publish and send goes through NATS, also to this node's own
//! connections, so every subscriber of a channel, on every node, sees the
//! channel's events in the same order (the order NATS received them).
//! A node holds one NATS subscription per channel with local subscribers
//! (and per subject with local connections), dropped when the last one
//! leaves; the relay task behind it hands each frame to the local queues.
//!
//! History events arrive on the channel's `.r` subject, republished by the
//! JetStream stream once stored (so an event whose publish the stream
//! refused never reaches anyone); the relay builds the frame once per node
//! from the stored data, its stream sequence (the offset) and the epoch,
//! and remembers the last offset it delivered so that a recovery can take
//! over exactly where live delivery starts (`cluster::history`).
//!
//! Nothing from NATS is trusted as it comes: a frame reaches local queues
//! only if it is what a Sluice node publishes on that subject (an `event`
//! of that channel or a `join`/`leave` of it on a channel's subject, an
//! `event` without channel on a subject's), and a history event only if
//! its headers say the tenant's stream stored it under that channel's
//! subject. Anything else is dropped and counted in the log.
//!
//! Gap repair: every stored event carries the offset of the channel's
//! previous one (`Sluice-Prev`, kept by the republish). When a node's path
//! from the stream was cut (the node cut off from NATS, or its NATS server
//! from the stream's leader), the events republished meanwhile never reach
//! it; the next one that does names a previous offset the relay has not
//! delivered. The relay then reads the missing events back from the stream
//! ([`Backfill`], the direct gets a recovery uses) and delivers them first,
//! under the same `delivered` lock, so every local subscriber still gets
//! each event once, in order. When it cannot (the events are gone, too
//! many, or the stream does not answer in time), it closes its local
//! subscribers' connections (1013, `missed events`): they resume with
//! `since`, recovering the events or being told `recovered: false`, never
//! silently skipping them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::value::RawValue;
use sluice_protocol::CloseReason;
use sluice_sandbox::BoxFuture;
use sluice_server::backends::history::event_frame;
use sluice_server::backends::keys::{ChannelKey, Member, SubjectKey};
use sluice_server::backends::{Broker, BrokerError, LocalBroker};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::subject::Subjects;

/// The header of a stored event with the offset of its channel's previous
/// event (written by the history when it publishes, kept by the
/// republish, read by the relay and by a recovery).
pub const PREV: &str = "Sluice-Prev";

/// Events a relay reads back to repair one gap at most; past it the local
/// subscribers resume with `since` instead.
pub const GAP_REPAIR_MAX: u64 = 1024;

/// How long a relay's gap repair may take before it gives up (and closes
/// its local subscribers' connections).
const GAP_REPAIR_WITHIN: Duration = Duration::from_secs(5);

/// Reads a channel's stored events back, for a relay that found a gap
/// (implemented by the history on JetStream).
pub trait Backfill: Send + Sync + 'static {
    /// The frames of the channel's stored events after offset `after` up
    /// to `through`, in order; `None` when one of them is gone (expired,
    /// purged), they are more than [`GAP_REPAIR_MAX`], or the stream could
    /// not be read.
    fn between<'a>(
        &'a self,
        key: &'a ChannelKey,
        after: u64,
        through: u64,
    ) -> BoxFuture<'a, Option<Vec<Utf8Bytes>>>;
}

/// Where relays read gaps back from (set once the history exists; weak,
/// since the history holds the broker).
type BackfillSlot = Arc<OnceLock<Weak<dyn Backfill>>>;

/// What a channel's relay delivered last (history channels).
#[derive(Debug, Default)]
pub struct Delivered {
    /// Whether `offset` is known (set by the first history event or by the
    /// first recovery on this node).
    pub known: bool,
    /// The stream sequence of the last history event delivered here.
    pub offset: u64,
}

/// One channel's (or subject's) subscription on this node.
pub struct Relay {
    /// Held while delivering a history event, and by a recovery while it
    /// replays and joins, so the two never interleave.
    pub delivered: tokio::sync::Mutex<Delivered>,
    ready: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::AbortHandle,
}

impl Relay {
    /// Resolves once NATS has registered this node's interest: anything
    /// published after reaches this node.
    pub async fn ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }
}

struct Entry {
    relay: Arc<Relay>,
    /// Recoveries holding the relay before their member joins.
    pins: usize,
}

/// Each tenant's history epoch (of its stream), by tenant id: set by
/// the history when it opens a tenant's stream, read by the relays.
pub type Epochs = Arc<RwLock<HashMap<Arc<str>, Arc<str>>>>;

/// The broker of a node in a fleet.
pub struct NatsBroker {
    local: Arc<LocalBroker>,
    client: async_nats::Client,
    subjects: Subjects,
    epochs: Epochs,
    channels: Mutex<HashMap<ChannelKey, Entry>>,
    connections: Mutex<HashMap<SubjectKey, Arc<Relay>>>,
    backfill: BackfillSlot,
}

enum Target {
    Channel(ChannelKey),
    Subject(SubjectKey),
}

impl NatsBroker {
    /// A broker on `client`; history frames carry their tenant's epoch
    /// from `epochs`.
    pub fn new(client: async_nats::Client, subjects: Subjects, epochs: Epochs) -> Self {
        Self {
            local: Arc::new(LocalBroker::default()),
            client,
            subjects,
            epochs,
            channels: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            backfill: Arc::default(),
        }
    }

    /// Where relays read back the events of a gap (the history, once made).
    pub fn set_backfill(&self, backfill: Weak<dyn Backfill>) {
        let _ = self.backfill.set(backfill);
    }

    /// Bring a channel's relay up to `through`, under its `delivered`
    /// lock (held by the caller): the events after what it delivered are
    /// read back and delivered to the local subscribers, or, when they
    /// cannot be, those subscribers' connections are closed. Either way
    /// the relay then stands at `through`.
    pub async fn catch_up(&self, key: &ChannelKey, delivered: &mut Delivered, through: u64) {
        repair(&self.backfill, &self.local, key, delivered, through).await;
    }

    /// Whether NATS is connected now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn relay(&self, target: Target) -> Arc<Relay> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let relay_slot: Arc<std::sync::OnceLock<std::sync::Weak<Relay>>> = Arc::default();
        let subject = match &target {
            Target::Channel(k) => self.subjects.channel_interest(k),
            Target::Subject(k) => self.subjects.send(k),
        };
        let task = tokio::spawn(run(
            RelayContext {
                client: self.client.clone(),
                subjects: self.subjects.clone(),
                local: self.local.clone(),
                epochs: self.epochs.clone(),
                backfill: self.backfill.clone(),
            },
            subject,
            target,
            relay_slot.clone(),
            tx,
        ));
        let relay = Arc::new(Relay {
            delivered: tokio::sync::Mutex::new(Delivered::default()),
            ready: rx,
            task: task.abort_handle(),
        });
        let _ = relay_slot.set(Arc::downgrade(&relay));
        relay
    }

    /// The channel's relay, kept alive (even with no local subscriber)
    /// until [`NatsBroker::unpin`].
    pub fn pin(&self, key: &ChannelKey) -> Arc<Relay> {
        let mut map = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = map.entry(key.clone()).or_insert_with(|| Entry {
            relay: self.relay(Target::Channel(key.clone())),
            pins: 0,
        });
        entry.pins += 1;
        entry.relay.clone()
    }

    /// Release a pin, joining `member` to the channel first.
    pub fn unpin(&self, key: &ChannelKey, member: Option<Member>) {
        let mut map = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = member {
            self.local.subscribe(key, m);
        }
        if let Some(entry) = map.get_mut(key) {
            entry.pins = entry.pins.saturating_sub(1);
            if entry.pins == 0 && self.local.subscribers(key) == 0 {
                entry.relay.task.abort();
                map.remove(key);
            }
        }
    }

    async fn publish_core(&self, subject: String, frame: Utf8Bytes) -> Result<(), BrokerError> {
        if !self.connected() {
            return Err(BrokerError::Unreachable);
        }
        self.client
            .publish(subject, Bytes::from(frame))
            .await
            .map_err(|e| BrokerError::Transport(Box::new(e)))
    }
}

/// A frame as a Sluice node publishes it on a channel's or a subject's
/// NATS subject: what the relay checks before handing it on.
#[derive(serde::Deserialize)]
struct Published<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Whether `frame` is what a node publishes: on a channel (`Some`), an
/// `event` of it or a `join`/`leave` of it with a subject; on a
/// subject's connections (`None`), an `event` without a channel.
fn well_formed(frame: &str, channel: Option<&str>) -> bool {
    #[derive(serde::Deserialize)]
    struct Who<'a> {
        #[serde(borrow)]
        #[expect(dead_code, reason = "only checked to be a string")]
        subject: Cow<'a, str>,
    }
    // serde would take an array for the struct (its fields in order).
    if !frame.starts_with('{') {
        return false;
    }
    let Ok(f) = serde_json::from_str::<Published<'_>>(frame) else {
        return false;
    };
    match (channel, f.kind.as_ref()) {
        (None, "event") => f.channel.is_none(),
        (Some(c), "event") => f.channel.as_deref() == Some(c),
        (Some(c), "join" | "leave") => {
            f.channel.as_deref() == Some(c) && serde_json::from_str::<Who<'_>>(f.data.get()).is_ok()
        }
        _ => false,
    }
}

/// A message republished by the tenant's stream, if its headers say the
/// stream stored it under `stored_as`: its offset, the channel's previous
/// offset (`None`: no `Sluice-Prev`, not an event, e.g. a delete marker),
/// and its data if it is an event's.
fn stored_event<'m>(
    msg: &'m async_nats::Message,
    stream: &str,
    stored_as: &str,
) -> Option<(u64, Option<u64>, Option<&'m RawValue>)> {
    use async_nats::header::{NATS_SEQUENCE, NATS_STREAM, NATS_SUBJECT};
    let headers = msg.headers.as_ref()?;
    if headers.get(NATS_STREAM).map(|v| v.as_str()) != Some(stream)
        || headers.get(NATS_SUBJECT).map(|v| v.as_str()) != Some(stored_as)
    {
        return None;
    }
    let offset = headers.get(NATS_SEQUENCE)?.as_str().parse::<u64>().ok()?;
    let prev = headers
        .get(PREV)
        .and_then(|v| v.as_str().parse::<u64>().ok());
    let data = std::str::from_utf8(&msg.payload)
        .ok()
        .and_then(|t| serde_json::from_str::<&RawValue>(t).ok())
        .filter(|_| prev.is_some());
    Some((offset, prev, data))
}

/// Read back what a relay missed, after `delivered` up to `through`, and
/// deliver it; or close the local subscribers' connections when it cannot
/// be read. The relay stands at `through` after.
async fn repair(
    backfill: &BackfillSlot,
    local: &LocalBroker,
    key: &ChannelKey,
    delivered: &mut Delivered,
    through: u64,
) {
    let after = delivered.offset;
    let source = backfill.get().and_then(Weak::upgrade);
    let frames = match source {
        Some(source) if through - after <= GAP_REPAIR_MAX => {
            tokio::time::timeout(GAP_REPAIR_WITHIN, source.between(key, after, through))
                .await
                .ok()
                .flatten()
        }
        _ => None,
    };
    match frames {
        Some(frames) => {
            tracing::info!(
                tenant = %key.tenant,
                events = frames.len(),
                after,
                through,
                "relay gap repaired from the stream"
            );
            for frame in &frames {
                local.publish_now(key, frame);
            }
        }
        None => {
            let closed = local.close_subscribers(key, &CloseReason::MissedEvents);
            tracing::warn!(
                tenant = %key.tenant,
                after,
                through,
                closed,
                "relay gap could not be read back: local subscribers told to resume"
            );
        }
    }
    *delivered = Delivered {
        known: true,
        offset: through,
    };
}

/// What every relay task shares with the broker.
struct RelayContext {
    client: async_nats::Client,
    subjects: Subjects,
    local: Arc<LocalBroker>,
    epochs: Epochs,
    backfill: BackfillSlot,
}

/// One relay: subscribe, wait until the server has registered the
/// interest, then hand every well-formed frame to the local queues.
async fn run(
    cx: RelayContext,
    subject: String,
    target: Target,
    relay: Arc<OnceLock<Weak<Relay>>>,
    ready: tokio::sync::watch::Sender<bool>,
) {
    let RelayContext {
        client,
        subjects,
        local,
        epochs,
        backfill,
    } = cx;
    let mut sub = loop {
        match client.subscribe(subject.clone()).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "NATS subscribe failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    };
    // A request nobody answers: NATS processes this client's commands in
    // order, so once "no responders" comes back the subscription is live.
    let _ = client.request(subjects.barrier(), Bytes::new()).await;
    let _ = ready.send(true);
    let (stream, stored_as) = match &target {
        Target::Channel(key) => (subjects.stream_of(&key.tenant), subjects.history(key)),
        Target::Subject(_) => (String::new(), String::new()),
    };
    while let Some(msg) = sub.next().await {
        match &target {
            Target::Subject(key) => match Utf8Bytes::try_from(msg.payload) {
                Ok(frame) if well_formed(frame.as_str(), None) => {
                    local.send_now(key, &frame);
                }
                _ => tracing::warn!("a malformed frame from NATS was dropped"),
            },
            Target::Channel(key) if msg.subject.ends_with(".e") => {
                match Utf8Bytes::try_from(msg.payload) {
                    Ok(frame) if well_formed(frame.as_str(), Some(&key.channel)) => {
                        local.publish_now(key, &frame);
                    }
                    _ => tracing::warn!("a malformed frame from NATS was dropped"),
                }
            }
            Target::Channel(key) => {
                let Some((offset, prev, data)) = stored_event(&msg, &stream, &stored_as) else {
                    tracing::warn!("a history event not stored by the tenant's stream was dropped");
                    continue;
                };
                let epoch = epochs
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&key.tenant)
                    .cloned();
                let (Some(epoch), Some(relay)) = (epoch, relay.get().and_then(Weak::upgrade))
                else {
                    continue;
                };
                let mut delivered = relay.delivered.lock().await;
                if delivered.known && offset <= delivered.offset {
                    continue;
                }
                match prev {
                    // Something stored after what was delivered last, and
                    // before this one, never came: read it back first.
                    Some(prev) if delivered.known && prev > delivered.offset => {
                        repair(&backfill, &local, key, &mut delivered, prev).await;
                    }
                    // The chain starts before what was delivered: the
                    // channel's history was dropped (purged) meanwhile,
                    // perhaps with events this node never saw.
                    Some(prev) if delivered.known && prev < delivered.offset => {
                        let closed = local.close_subscribers(key, &CloseReason::MissedEvents);
                        tracing::warn!(
                            tenant = %key.tenant,
                            prev,
                            delivered = delivered.offset,
                            closed,
                            "a channel's history was dropped under its relay: local subscribers told to resume"
                        );
                    }
                    _ => {}
                }
                match data {
                    Some(data) => {
                        let frame = event_frame(key, data, offset, &epoch);
                        local.publish_now(key, &frame);
                    }
                    // Stored in the channel's order but no event (a delete
                    // marker): nothing to deliver, but the chain goes on
                    // from it.
                    None => tracing::debug!("a stored message that is not an event was skipped"),
                }
                *delivered = Delivered {
                    known: true,
                    offset,
                };
            }
        }
    }
}

impl Broker for NatsBroker {
    fn subscribe(&self, key: &ChannelKey, member: Member) {
        self.pin(key);
        self.unpin(key, Some(member));
    }

    fn unsubscribe(&self, key: &ChannelKey, id: u64) {
        let mut map = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        self.local.unsubscribe(key, id);
        if self.local.subscribers(key) == 0
            && let Some(entry) = map.get(key)
            && entry.pins == 0
        {
            entry.relay.task.abort();
            map.remove(key);
        }
    }

    fn join_subject(&self, key: &SubjectKey, member: Member) {
        let mut map = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.local.join_subject(key, member);
        if !map.contains_key(key) {
            let relay = self.relay(Target::Subject(key.clone()));
            map.insert(key.clone(), relay);
        }
    }

    fn leave_subject(&self, key: &SubjectKey, id: u64) {
        let mut map = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.local.leave_subject(key, id);
        if self.local.subject_connections(key) == 0
            && let Some(relay) = map.remove(key)
        {
            relay.task.abort();
        }
    }

    fn publish<'a>(
        &'a self,
        key: &'a ChannelKey,
        frame: Utf8Bytes,
    ) -> BoxFuture<'a, Result<usize, BrokerError>> {
        Box::pin(async move {
            self.publish_core(self.subjects.events(key), frame).await?;
            Ok(self.local.subscribers(key))
        })
    }

    fn send<'a>(
        &'a self,
        key: &'a SubjectKey,
        frame: Utf8Bytes,
    ) -> BoxFuture<'a, Result<usize, BrokerError>> {
        Box::pin(async move {
            self.publish_core(self.subjects.send(key), frame).await?;
            Ok(self.local.subject_connections(key))
        })
    }

    fn subscribers(&self, key: &ChannelKey) -> usize {
        self.local.subscribers(key)
    }

    fn channel_count(&self) -> usize {
        self.local.channel_count()
    }

    fn channel_ready<'a>(&'a self, key: &'a ChannelKey) -> BoxFuture<'a, ()> {
        let relay = self
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map(|e| e.relay.clone());
        Box::pin(async move {
            if let Some(r) = relay {
                r.ready().await;
            }
        })
    }

    fn subject_ready<'a>(&'a self, key: &'a SubjectKey) -> BoxFuture<'a, ()> {
        let relay = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned();
        Box::pin(async move {
            if let Some(r) = relay {
                r.ready().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::well_formed;

    #[test]
    fn only_frames_a_node_publishes_are_relayed() {
        let ok = [
            (
                r#"{"type":"event","channel":"room:1","data":{"a":1}}"#,
                Some("room:1"),
            ),
            (
                r#"{"type":"join","channel":"room:1","data":{"subject":"al","claims":{}}}"#,
                Some("room:1"),
            ),
            (
                r#"{"type":"event","channel":null,"data":{"dm":true}}"#,
                None,
            ),
        ];
        for (f, c) in ok {
            assert!(well_formed(f, c), "{f}");
        }
        let bad = [
            ("not json", Some("room:1")),
            (
                r#"{"type":"event","channel":"room:2","data":{}}"#,
                Some("room:1"),
            ),
            (r#"{"type":"ack","id":"x","data":{}}"#, Some("room:1")),
            (r#"{"type":"welcome","data":{}}"#, None),
            (r#"{"type":"event","channel":"room:1","data":{}}"#, None),
            (
                r#"{"type":"leave","channel":"room:1","data":{"subject":7}}"#,
                Some("room:1"),
            ),
            (r#"["event","room:1",{}]"#, Some("room:1")),
            (r#"{"type":"event","channel":"room:1"}"#, Some("room:1")),
        ];
        for (f, c) in bad {
            assert!(!well_formed(f, c), "{f}");
        }
    }
}
