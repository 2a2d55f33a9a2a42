//! Channel history on JetStream: the same guarantees as on one node, with
//! the same offsets on every node.
//!
//! One stream per tenant (`{PREFIX}_HISTORY_{tenant}`) keeps the tenant's
//! channels' events, one subject per channel. An event's offset is its
//! stream sequence number: strictly increasing per channel, the same on
//! every node, never reused. Each event also records the offset before it
//! in its channel (`Sluice-Prev`), and is only accepted by the stream if
//! that is still the channel's last (`Nats-Expected-Last-Subject-Sequence`):
//! two nodes publishing at once never interleave wrongly, the loser
//! retries. So the chain of `Sluice-Prev` tells a recovery whether anything
//! after the client's offset is gone.
//!
//! Why a stream per tenant: JetStream enforces its limits per stream, for
//! the whole fleet, across restarts, with nothing for Sluice to count. The
//! stream's `max_bytes` is the tenant's `history_bytes` quota (discarding
//! the tenant's oldest events first, whatever their channel), so one
//! tenant can never fill the storage the others' history needs. JetStream
//! has no limit on a stream's subjects, so `history_channels` is counted
//! from the stream's own subject count (asked at most once a second, plus
//! what this node opened since): a publish that opens a channel past it
//! first purges the channel holding the tenant's oldest event. The price:
//! a stream (a Raft group with replicas) per tenant with history.
//!
//! The stream republishes each stored event (never one it refused) to the
//! channel's `.r` subject, which every node with subscribers relays
//! ([`crate::broker`]). A recovery reads what came after the client's
//! offset from the stream without holding the channel's relay (live
//! events keep flowing to the channel's other subscribers meanwhile), in
//! rounds, each up to the last offset the relay had delivered when it
//! began; once a round's gap is small it holds the relay, reads the rest,
//! queues everything and joins the channel before letting the relay go on:
//! every event exactly once, in order. A recovery from an offset this
//! node's relay has not delivered yet (its path from the stream was cut,
//! or the republish is still on its way) first brings the relay up to the
//! stream's last offset ([`NatsBroker::catch_up`]) rather than answer
//! `recovered: false` from a stale position. The relay repairs its own
//! gaps with the same reads ([`crate::broker::Backfill`]).
//!
//! Size: the stream keeps at most `MAX_HISTORY_SIZE` events per channel, the
//! publishing node purges down to the channel's `size` every `size / 2`
//! publishes, and a recovery never reaches further back than `size`
//! events. Age: each event carries its channel's TTL (`Nats-TTL`); when a
//! channel's last event expires the stream leaves a delete marker, so a
//! client resuming from before is told it missed events.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;
use serde_json::value::RawValue;
use sluice_config::HistoryConfig;
use sluice_protocol::{Outcome, Position, Since};
use sluice_sandbox::BoxFuture;
use sluice_server::backends::Broker as _;
use sluice_server::backends::history::{
    AckFrame, HistoryError, HistoryQuota, HistoryQuotas, HistorySize, HistoryStore, RuleOf,
    Subscribed, event_frame,
};
use sluice_server::backends::keys::{ChannelKey, Member};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::broker::{Backfill, Delivered, Epochs, GAP_REPAIR_MAX, NatsBroker};
use crate::subject::Subjects;

/// The header with the offset of the channel's previous event.
pub use crate::broker::PREV;

/// How long a subject delete marker stays in the history stream after a
/// channel's last event expired: within it, a client resuming from before
/// the expiry is told it missed events (`recovered: false`).
pub const DELETE_MARKER_TTL: Duration = Duration::from_secs(24 * 3600);

/// How many times a publish that lost a race to another node retries.
const PUBLISH_ATTEMPTS: usize = 32;

/// How long a publish may take in all (lookups, retries) before the
/// message is answered `unavailable`.
const PUBLISH_WITHIN: Duration = Duration::from_secs(4);

/// How many times a recovery's read of one event is retried.
const REPLAY_ATTEMPTS: usize = 3;

/// Lookups of a channel's last offset a subscribe tries (a pause between
/// each) before it is refused `unavailable`.
const LOOKUP_ATTEMPTS: usize = 3;

/// The pause between two of them.
const LOOKUP_PAUSE: Duration = Duration::from_millis(200);

/// A recovery holds the channel's relay once the events left to read are
/// at most this many (or after [`REPLAY_ROUNDS`] rounds without it).
const REPLAY_TAIL: u64 = 32;

/// Rounds of reading without the relay before a recovery holds it anyway.
const REPLAY_ROUNDS: usize = 8;

/// Channels whose last offset a node remembers (for publishing without a
/// lookup) at most; past it the ones not in use are forgotten.
pub const MAX_PUBLISHERS: usize = 4096;

/// How often a tenant's channel count is asked of JetStream at most.
const COUNT_EVERY: Duration = Duration::from_secs(1);

/// A publish or lookup that JetStream refused or did not answer.
#[derive(Debug, thiserror::Error)]
#[error("JetStream: {0}")]
pub struct ClusterHistoryError(pub String);

#[derive(Default)]
struct Publisher {
    /// The channel's last offset, as this node last saw it.
    last: Option<u64>,
    published: u64,
}

/// How many channels a tenant's stream has, as far as this node knows.
#[derive(Default)]
struct ChannelCount {
    /// The stream's subject count when last asked, and when.
    known: u64,
    at: Option<Instant>,
    /// Channels this node opened since, minus the ones it purged.
    opened: i64,
}

/// One tenant's stream.
struct TenantStream {
    stream: jetstream::stream::Stream,
    epoch: Arc<str>,
    quota: HistoryQuota,
    count: tokio::sync::Mutex<ChannelCount>,
}

/// History on JetStream.
pub struct ClusterHistory {
    js: jetstream::Context,
    subjects: Subjects,
    replicas: usize,
    epochs: Epochs,
    broker: Arc<NatsBroker>,
    streams: Mutex<HashMap<Arc<str>, Arc<TenantStream>>>,
    /// Held while a tenant's stream is made or its limits changed.
    opening: tokio::sync::Mutex<()>,
    quotas: Mutex<HistoryQuotas>,
    publishers: Mutex<HashMap<ChannelKey, Arc<tokio::sync::Mutex<Publisher>>>>,
}

fn err(e: impl std::fmt::Display) -> ClusterHistoryError {
    ClusterHistoryError(e.to_string())
}

/// The epoch of a tenant's channels: derived from when its stream was
/// created, so every node agrees, and it changes when the stream (the
/// history) is wiped and created again.
fn epoch_of(created_nanos: i128, name: &str) -> Arc<str> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in created_nanos.to_le_bytes().iter().chain(name.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Arc::from(format!("{h:016x}"))
}

/// Forget the remembered channels no publish is using, once there are
/// more than [`MAX_PUBLISHERS`].
fn prune<K, V>(map: &mut HashMap<K, Arc<V>>) {
    if map.len() > MAX_PUBLISHERS {
        map.retain(|_, p| Arc::strong_count(p) > 1);
    }
}

/// What a recovery has read so far.
struct Replay {
    since: u64,
    /// The next offset to read from.
    next: u64,
    frames: Vec<Utf8Bytes>,
    /// Something after `since` is gone, or more than `size` events.
    lost: bool,
}

impl ClusterHistory {
    pub(crate) fn new(
        js: jetstream::Context,
        subjects: Subjects,
        replicas: usize,
        epochs: Epochs,
        broker: Arc<NatsBroker>,
    ) -> Self {
        Self {
            js,
            subjects,
            replicas,
            epochs,
            broker,
            streams: Mutex::default(),
            opening: tokio::sync::Mutex::new(()),
            quotas: Mutex::default(),
            publishers: Mutex::new(HashMap::new()),
        }
    }

    /// The epoch of `tenant`'s channels (its stream made if needed).
    pub async fn epoch(&self, tenant: &Arc<str>) -> Result<Arc<str>, ClusterHistoryError> {
        Ok(self.stream_of(tenant).await?.epoch.clone())
    }

    /// How many publishers' last offsets this node remembers.
    pub fn remembered_channels(&self) -> usize {
        self.publishers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The tenant's stream: made with its quota, or its limits brought to
    /// the quota, on first use (and after a reload changed the quota).
    async fn stream_of(&self, tenant: &Arc<str>) -> Result<Arc<TenantStream>, ClusterHistoryError> {
        if let Some(s) = self
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
        {
            return Ok(s.clone());
        }
        let _one = self.opening.lock().await;
        if let Some(s) = self
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
        {
            return Ok(s.clone());
        }
        let quota = self
            .quotas
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tenant(tenant);
        let name = self.subjects.stream_of(tenant);
        let (source, destination) = self.subjects.republish_of(tenant);
        let config = jetstream::stream::Config {
            name: name.clone(),
            description: Some(format!("Sluice channel history of tenant {tenant}")),
            subjects: vec![self.subjects.history_of(tenant)],
            max_bytes: i64::try_from(quota.bytes).unwrap_or(i64::MAX),
            max_messages_per_subject: sluice_config::MAX_HISTORY_SIZE as i64,
            storage: jetstream::stream::StorageType::File,
            num_replicas: self.replicas,
            discard: jetstream::stream::DiscardPolicy::Old,
            allow_direct: true,
            allow_message_ttl: true,
            subject_delete_marker_ttl: Some(DELETE_MARKER_TTL),
            republish: Some(jetstream::stream::Republish {
                source,
                destination,
                headers_only: false,
            }),
            ..Default::default()
        };
        let mut stream = self
            .js
            .get_or_create_stream(config.clone())
            .await
            .map_err(|e| ClusterHistoryError(format!("the history stream {name}: {e}")))?;
        if stream.cached_info().config.max_bytes != config.max_bytes {
            self.js
                .update_stream(&config)
                .await
                .map_err(|e| ClusterHistoryError(format!("the history stream {name}: {e}")))?;
            stream = self.js.get_stream(&name).await.map_err(err)?;
        }
        let created = stream.cached_info().created.unix_timestamp_nanos();
        let epoch = epoch_of(created, &name);
        self.epochs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tenant.clone(), epoch.clone());
        let opened = Arc::new(TenantStream {
            stream,
            epoch,
            quota,
            count: tokio::sync::Mutex::default(),
        });
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tenant.clone(), opened.clone());
        Ok(opened)
    }

    /// The channel's last offset in its stream (0: none).
    async fn last(&self, ts: &TenantStream, key: &ChannelKey) -> Result<u64, ClusterHistoryError> {
        match ts
            .stream
            .direct_get_last_for_subject(self.subjects.history(key))
            .await
        {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(0),
            Err(e) => Err(err(e)),
        }
    }

    /// A channel is about to be opened in `ts`: if the tenant has
    /// `history_channels` already, purge the channel holding its oldest
    /// event first.
    async fn make_room(
        &self,
        tenant: &Arc<str>,
        ts: &TenantStream,
    ) -> Result<(), ClusterHistoryError> {
        let mut count = ts.count.lock().await;
        if count.at.is_none_or(|at| at.elapsed() >= COUNT_EVERY) {
            let info = ts.stream.get_info().await.map_err(err)?;
            *count = ChannelCount {
                known: info.state.subjects_count,
                at: Some(Instant::now()),
                opened: 0,
            };
        }
        let channels = (count.known as i64 + count.opened).max(0) as u64;
        count.opened += 1;
        if channels < ts.quota.channels as u64 {
            return Ok(());
        }
        let all = self.subjects.history_of(tenant);
        let oldest = match ts.stream.direct_get_next_for_subject(&all, Some(1)).await {
            Ok(m) => m.subject.to_string(),
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(err(e)),
        };
        ts.stream.purge().filter(&oldest).await.map_err(err)?;
        count.opened -= 1;
        tracing::debug!(%tenant, "channel history dropped: the tenant is at its history_channels quota");
        Ok(())
    }

    /// Store an event; its offset once the stream has it (replicated as the
    /// stream is configured). Every node's subscribers get it from the
    /// stream's republish.
    pub async fn publish(
        &self,
        key: &ChannelKey,
        rule: HistoryConfig,
        data: &RawValue,
    ) -> Result<u64, ClusterHistoryError> {
        tokio::time::timeout(PUBLISH_WITHIN, self.publish_inner(key, rule, data))
            .await
            .unwrap_or_else(|_| {
                Err(ClusterHistoryError(format!(
                    "not stored within {PUBLISH_WITHIN:?}"
                )))
            })
    }

    async fn publish_inner(
        &self,
        key: &ChannelKey,
        rule: HistoryConfig,
        data: &RawValue,
    ) -> Result<u64, ClusterHistoryError> {
        let ts = self.stream_of(&key.tenant).await?;
        let publisher = {
            let mut publishers = self
                .publishers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let p = publishers.entry(key.clone()).or_default().clone();
            prune(&mut publishers);
            p
        };
        let mut p = publisher.lock().await;
        let subject = self.subjects.history(key);
        let payload = Bytes::copy_from_slice(data.get().as_bytes());
        for _ in 0..PUBLISH_ATTEMPTS {
            let last = match p.last {
                Some(l) => l,
                None => {
                    let last = self.last(&ts, key).await?;
                    if last == 0 {
                        self.make_room(&key.tenant, &ts).await?;
                    }
                    last
                }
            };
            let message = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .header(PREV, last.to_string())
                .expected_last_subject_sequence(last)
                .ttl(Duration::from_secs(rule.ttl_secs));
            let ack = self
                .js
                .send_publish(subject.clone(), message)
                .await
                .map_err(err)?
                .await;
            match ack {
                Ok(ack) => {
                    p.last = Some(ack.sequence);
                    p.published += 1;
                    let every = (rule.size as u64 / 2).max(1);
                    if p.published % every == 0 {
                        trim(&ts.stream, subject.clone(), rule.size as u64);
                    }
                    return Ok(ack.sequence);
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    // Another node published on this channel meanwhile.
                    p.last = None;
                }
                Err(e) => {
                    p.last = None;
                    return Err(err(e));
                }
            }
        }
        Err(ClusterHistoryError(format!(
            "lost the race for the channel's next offset {PUBLISH_ATTEMPTS} times"
        )))
    }

    /// Subscribe `member` with recovery from `since` (see the module docs).
    async fn subscribe_relayed(
        &self,
        key: &ChannelKey,
        rule: HistoryConfig,
        since: Option<&Since>,
        member: Member,
        ack: AckFrame<'_>,
    ) -> Result<Subscribed, HistoryError> {
        let relay = self.broker.pin(key);
        relay.ready().await;
        // Without the tenant's stream there is no epoch and no position to
        // answer: retry, then refuse (docs/faults.md, Found 7; answering
        // offset 0 in an empty epoch made the client take every later
        // event for another epoch's).
        let mut opens = 0;
        let ts = loop {
            match self.stream_of(&key.tenant).await {
                Ok(ts) => break ts,
                Err(e) if opens + 1 < LOOKUP_ATTEMPTS => {
                    tracing::debug!(error = %e, "history stream open retried");
                    opens += 1;
                    tokio::time::sleep(LOOKUP_PAUSE).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "history stream unavailable: subscribe refused");
                    self.broker.unpin(key, None);
                    return Err(HistoryError::Remote(Box::new(e)));
                }
            }
        };
        let epoch = ts.epoch.clone();
        let subject = self.subjects.history(key);
        let wanted = since.filter(|s| *s.epoch == *epoch);
        let mut replay = wanted.map(|s| Replay {
            since: s.offset,
            next: s.offset + 1,
            frames: Vec::new(),
            lost: false,
        });
        let mut failed = false;
        // Read without holding the relay while much is left: live events
        // keep reaching the channel's other subscribers meanwhile.
        let mut rounds = 0;
        let mut lookups = 0;
        let delivered = loop {
            let mut delivered = relay.delivered.lock().await;
            if !delivered.known {
                match self.last(&ts, key).await {
                    Ok(offset) => {
                        *delivered = Delivered {
                            known: true,
                            offset,
                        };
                    }
                    // Never answer a position the relay does not have
                    // (docs/faults.md, Found 5): retry, then refuse.
                    Err(e) if lookups + 1 < LOOKUP_ATTEMPTS => {
                        tracing::debug!(error = %e, "history lookup retried");
                        lookups += 1;
                        drop(delivered);
                        tokio::time::sleep(LOOKUP_PAUSE).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "history lookup failed: subscribe refused");
                        drop(delivered);
                        self.broker.unpin(key, None);
                        return Err(HistoryError::Remote(Box::new(e)));
                    }
                }
            }
            // A position this node's relay has not reached: look the
            // channel's last offset up and bring the relay there first.
            if let Some(r) = replay.as_ref()
                && delivered.known
                && r.since > delivered.offset
            {
                match self.last(&ts, key).await {
                    Ok(last) if last > delivered.offset => {
                        self.broker.catch_up(key, &mut delivered, last).await;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "history lookup failed"),
                }
            }
            let last = delivered.offset;
            let left = replay
                .as_ref()
                .filter(|r| !r.lost)
                .map_or(0, |r| last.saturating_sub(r.next.saturating_sub(1)));
            if left <= REPLAY_TAIL || rounds >= REPLAY_ROUNDS || failed {
                break delivered;
            }
            drop(delivered);
            rounds += 1;
            if let Some(r) = replay.as_mut()
                && let Err(e) = self.read(&ts, key, &subject, r, last, rule.size).await
            {
                tracing::warn!(error = %e, "history replay failed");
                failed = true;
            }
        };
        let last = delivered.offset;
        if let (Some(r), false) = (replay.as_mut(), failed)
            && let Err(e) = self.read(&ts, key, &subject, r, last, rule.size).await
        {
            tracing::warn!(error = %e, "history replay failed");
            failed = true;
        }
        let outcome = match (since, &replay) {
            (None, _) => None,
            (Some(_), None) => Some(Outcome::EpochChanged),
            (Some(s), Some(_)) if s.offset > last => Some(Outcome::TooOld),
            (Some(s), Some(_)) if s.offset == last => Some(Outcome::Recovered),
            (Some(_), Some(r)) if failed || r.lost || r.frames.is_empty() => Some(Outcome::TooOld),
            (Some(_), Some(_)) => Some(Outcome::Recovered),
        };
        let position = Position {
            offset: last,
            epoch,
            recovered: outcome.map(|o| o == Outcome::Recovered),
        };
        if let Some(frame) = ack(&position) {
            member.outbox.send(Utf8Bytes::from(frame));
        }
        if outcome == Some(Outcome::Recovered)
            && let Some(r) = replay
        {
            for frame in r.frames {
                member.outbox.send(frame);
            }
        }
        self.broker.unpin(key, Some(member));
        drop(delivered);
        Ok(Subscribed { position, outcome })
    }

    /// Read the channel's events after what `r` has up to `last`, as
    /// frames; marks `r` lost when one of them is gone or they are more
    /// than `size`. Read with direct gets, which any replica of the stream
    /// answers (no consumer to create, so it works while NATS elects a new
    /// leader), each retried on a timeout.
    async fn read(
        &self,
        ts: &TenantStream,
        key: &ChannelKey,
        subject: &str,
        r: &mut Replay,
        last: u64,
        size: usize,
    ) -> Result<(), ClusterHistoryError> {
        while !r.lost && r.next <= last {
            let Some(message) = self.next_stored(ts, subject, r.next).await? else {
                // Nothing from `next` on: the stream lost what it had.
                r.lost = true;
                break;
            };
            let offset = message.sequence;
            if offset > last {
                break;
            }
            let prev = message
                .headers
                .get(PREV)
                .and_then(|v| v.as_str().parse::<u64>().ok());
            match prev {
                // A delete marker (the channel's events expired) or a
                // foreign message: what came before is gone.
                None => r.lost = true,
                Some(prev) if r.frames.is_empty() && prev != r.since => r.lost = true,
                Some(_) => {}
            }
            let data = std::str::from_utf8(&message.payload)
                .ok()
                .and_then(|t| serde_json::from_str::<&RawValue>(t).ok());
            match data {
                Some(data) if !r.lost => {
                    r.frames.push(event_frame(key, data, offset, &ts.epoch));
                }
                _ => r.lost = true,
            }
            if r.frames.len() > size {
                r.lost = true;
            }
            r.next = offset + 1;
        }
        if r.lost {
            r.frames = Vec::new();
        }
        Ok(())
    }

    /// The first stored message of `subject` at or after `seq`.
    async fn next_stored(
        &self,
        ts: &TenantStream,
        subject: &str,
        seq: u64,
    ) -> Result<Option<jetstream::message::StreamMessage>, ClusterHistoryError> {
        let mut attempt = 0;
        loop {
            match ts
                .stream
                .direct_get_next_for_subject(subject, Some(seq))
                .await
            {
                Ok(m) => return Ok(Some(m)),
                Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {
                    return Ok(None);
                }
                Err(e) if attempt < REPLAY_ATTEMPTS => {
                    tracing::debug!(error = %e, "history read retried");
                    attempt += 1;
                }
                Err(e) => return Err(err(e)),
            }
        }
    }
}

impl Backfill for ClusterHistory {
    fn between<'a>(
        &'a self,
        key: &'a ChannelKey,
        after: u64,
        through: u64,
    ) -> BoxFuture<'a, Option<Vec<Utf8Bytes>>> {
        Box::pin(async move {
            let ts = self.stream_of(&key.tenant).await.ok()?;
            let mut r = Replay {
                since: after,
                next: after + 1,
                frames: Vec::new(),
                lost: false,
            };
            let subject = self.subjects.history(key);
            let size = usize::try_from(GAP_REPAIR_MAX).unwrap_or(usize::MAX);
            match self.read(&ts, key, &subject, &mut r, through, size).await {
                // Nothing found where the next event says one was stored:
                // gone too.
                Ok(()) if !r.lost && !r.frames.is_empty() => Some(r.frames),
                Ok(()) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "relay gap read failed");
                    None
                }
            }
        })
    }
}

/// Purge a channel down to its last `keep` events, in the background.
fn trim(stream: &jetstream::stream::Stream, subject: String, keep: u64) {
    let stream = stream.clone();
    tokio::spawn(async move {
        if let Err(e) = stream.purge().filter(subject).keep(keep).await {
            tracing::warn!(error = %e, "history trim failed");
        }
    });
}

impl HistoryStore for ClusterHistory {
    fn append<'a>(
        &'a self,
        key: &'a ChannelKey,
        rule: HistoryConfig,
        data: &'a RawValue,
    ) -> BoxFuture<'a, Result<usize, HistoryError>> {
        Box::pin(async move {
            self.publish(key, rule, data)
                .await
                .map_err(|e| HistoryError::Remote(Box::new(e)))?;
            // Subscribers here get it from the stream's republish, like
            // every other node's.
            Ok(self.broker.subscribers(key))
        })
    }

    fn subscribe<'a>(
        &'a self,
        key: &'a ChannelKey,
        rule: HistoryConfig,
        since: Option<&'a Since>,
        member: Member,
        ack: AckFrame<'a>,
    ) -> BoxFuture<'a, Result<Subscribed, HistoryError>> {
        Box::pin(self.subscribe_relayed(key, rule, since, member, ack))
    }

    /// The streams trim themselves: by count when a node publishes, by age
    /// with each event's TTL, by bytes with the tenant's quota.
    fn trim<'a>(&'a self, _idle: Duration, _rule: RuleOf<'a>) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Nothing is held in this process: the history is on JetStream.
    fn sizes(&self) -> BTreeMap<Arc<str>, HistorySize> {
        BTreeMap::new()
    }

    /// New quotas: a tenant's stream whose quota changed has its limits
    /// brought to it on next use.
    fn set_quotas(&self, quotas: HistoryQuotas) {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|tenant, s| quotas.tenant(tenant) == s.quota);
        *self.quotas.lock().unwrap_or_else(PoisonError::into_inner) = quotas;
    }

    fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_publishers_in_use_stay_and_idle_ones_go_past_the_bound() {
        let mut map: HashMap<u32, Arc<()>> = HashMap::new();
        let in_use: Vec<Arc<()>> = (0..10)
            .map(|i| {
                let p = Arc::new(());
                map.insert(i, p.clone());
                p
            })
            .collect();
        for i in 10..MAX_PUBLISHERS as u32 {
            map.insert(i, Arc::new(()));
        }
        prune(&mut map);
        assert_eq!(map.len(), MAX_PUBLISHERS, "at the bound nothing goes");
        map.insert(u32::MAX, Arc::new(()));
        prune(&mut map);
        assert_eq!(map.len(), in_use.len(), "only the ones in use stay");
    }
}
