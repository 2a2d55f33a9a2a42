//! Channel history on JetStream: the same guarantees as on one node, with
//! the same offsets on every node.
//!
//! One stream (`{PREFIX}_HISTORY`) keeps every channel's events, one
//! subject per channel. An event's offset is its stream sequence number:
//! strictly increasing per channel, the same on every node, never reused.
//! Each event also records the offset before it in its channel
//! (`Sluice-Prev`), and is only accepted by the stream if that is still
//! the channel's last (`Nats-Expected-Last-Subject-Sequence`): two nodes
//! publishing at once never interleave wrongly, the loser retries. So the
//! chain of `Sluice-Prev` tells a recovery whether anything after the
//! client's offset is gone.
//!
//! The stream republishes each stored event (never one it refused) to the
//! channel's `.r` subject, which every node with subscribers relays
//! ([`crate::broker`]). A recovery holds the channel's relay, replays from
//! the stream what came after the client's offset up to the last offset
//! the relay delivered, and joins the channel before letting the relay go
//! on: every event exactly once, in order.
//!
//! Size: the stream keeps at most `MAX_HISTORY_SIZE` events per channel, the
//! publishing node purges down to the channel's `size` every `size / 2`
//! publishes, and a recovery never reaches further back than `size`
//! events. Age: each event carries its channel's TTL (`Nats-TTL`); when a
//! channel's last event expires the stream leaves a delete marker, so a
//! client resuming from before is told it missed events.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;
use serde_json::value::RawValue;
use sluice_config::HistoryConfig;
use sluice_protocol::{Outcome, Position, Since};
use sluice_sandbox::BoxFuture;
use sluice_server::backends::Broker as _;
use sluice_server::backends::history::{
    AckFrame, HistoryError, HistorySize, HistoryStore, RuleOf, Subscribed, event_frame,
};
use sluice_server::backends::keys::{ChannelKey, Member};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::broker::{Delivered, NatsBroker};
use crate::subject::Subjects;

/// The header with the offset of the channel's previous event.
pub const PREV: &str = "Sluice-Prev";

/// How many times a publish that lost a race to another node retries.
const PUBLISH_ATTEMPTS: usize = 32;

/// How long a publish may take in all (lookups, retries) before the
/// message is answered `unavailable`.
const PUBLISH_WITHIN: Duration = Duration::from_secs(4);

/// How many times a recovery's read of one event is retried.
const REPLAY_ATTEMPTS: usize = 3;

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

/// History on JetStream.
pub struct ClusterHistory {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    subjects: Subjects,
    epoch: Arc<str>,
    broker: Arc<NatsBroker>,
    publishers: Mutex<HashMap<ChannelKey, Arc<tokio::sync::Mutex<Publisher>>>>,
}

fn err(e: impl std::fmt::Display) -> ClusterHistoryError {
    ClusterHistoryError(e.to_string())
}

impl ClusterHistory {
    pub(crate) fn new(
        js: jetstream::Context,
        stream: jetstream::stream::Stream,
        subjects: Subjects,
        epoch: Arc<str>,
        broker: Arc<NatsBroker>,
    ) -> Self {
        Self {
            js,
            stream,
            subjects,
            epoch,
            broker,
            publishers: Mutex::new(HashMap::new()),
        }
    }

    /// The fleet's epoch.
    pub fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }

    /// The channel's last offset in the stream (0: none).
    async fn last(&self, key: &ChannelKey) -> Result<u64, ClusterHistoryError> {
        match self
            .stream
            .direct_get_last_for_subject(self.subjects.history(key))
            .await
        {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(0),
            Err(e) => Err(err(e)),
        }
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
        let publisher = self
            .publishers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone();
        let mut p = publisher.lock().await;
        let subject = self.subjects.history(key);
        let payload = Bytes::copy_from_slice(data.get().as_bytes());
        for _ in 0..PUBLISH_ATTEMPTS {
            let last = match p.last {
                Some(l) => l,
                None => self.last(key).await?,
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
                        self.trim(subject.clone(), rule.size as u64);
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

    /// Purge a channel down to its last `keep` events, in the background.
    fn trim(&self, subject: String, keep: u64) {
        let stream = self.stream.clone();
        tokio::spawn(async move {
            if let Err(e) = stream.purge().filter(subject).keep(keep).await {
                tracing::warn!(error = %e, "history trim failed");
            }
        });
    }

    /// Subscribe `member` with recovery from `since` (see the module docs).
    async fn subscribe_relayed(
        &self,
        key: &ChannelKey,
        rule: HistoryConfig,
        since: Option<&Since>,
        member: Member,
        ack: AckFrame<'_>,
    ) -> Subscribed {
        let relay = self.broker.pin(key);
        relay.ready().await;
        let mut delivered = relay.delivered.lock().await;
        if !delivered.known {
            match self.last(key).await {
                Ok(offset) => {
                    *delivered = Delivered {
                        known: true,
                        offset,
                    };
                }
                Err(e) => tracing::warn!(error = %e, "history lookup failed"),
            }
        }
        let last = delivered.offset;
        let mut replay = Vec::new();
        let outcome = match since {
            None => None,
            Some(s) if *s.epoch != *self.epoch => Some(Outcome::EpochChanged),
            Some(s) if s.offset > last => Some(Outcome::TooOld),
            Some(s) if s.offset == last => Some(Outcome::Recovered),
            Some(s) => match self.replay(key, s.offset, last, rule.size).await {
                Ok(Some(frames)) => {
                    replay = frames;
                    Some(Outcome::Recovered)
                }
                Ok(None) => Some(Outcome::TooOld),
                Err(e) => {
                    tracing::warn!(error = %e, "history replay failed");
                    Some(Outcome::TooOld)
                }
            },
        };
        let position = Position {
            offset: last,
            epoch: self.epoch.clone(),
            recovered: outcome.map(|o| o == Outcome::Recovered),
        };
        if let Some(frame) = ack(&position) {
            member.outbox.send(Utf8Bytes::from(frame));
        }
        for frame in replay {
            member.outbox.send(frame);
        }
        self.broker.unpin(key, Some(member));
        drop(delivered);
        Subscribed { position, outcome }
    }

    /// The events after `since` up to `last`, as frames; `None` when one
    /// of them is gone or they are more than `size`. Read with direct gets,
    /// which any replica of the stream answers (no consumer to create, so
    /// it works while NATS elects a new leader), each retried on a timeout.
    async fn replay(
        &self,
        key: &ChannelKey,
        since: u64,
        last: u64,
        size: usize,
    ) -> Result<Option<Vec<Utf8Bytes>>, ClusterHistoryError> {
        let subject = self.subjects.history(key);
        let mut frames = Vec::new();
        let mut next = since + 1;
        let mut first = true;
        while next <= last {
            let message = self.next_stored(&subject, next).await?;
            let Some(message) = message else {
                // Nothing from `next` on: the stream lost what it had.
                return Ok(None);
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
                None => return Ok(None),
                Some(prev) if first && prev != since => return Ok(None),
                Some(_) => {}
            }
            first = false;
            let Some(data) = std::str::from_utf8(&message.payload)
                .ok()
                .and_then(|t| serde_json::from_str::<&RawValue>(t).ok())
            else {
                return Ok(None);
            };
            frames.push(event_frame(key, data, offset, &self.epoch));
            if frames.len() > size {
                return Ok(None);
            }
            next = offset + 1;
        }
        Ok((!frames.is_empty()).then_some(frames))
    }

    /// The first stored message of `subject` at or after `seq`.
    async fn next_stored(
        &self,
        subject: &str,
        seq: u64,
    ) -> Result<Option<jetstream::message::StreamMessage>, ClusterHistoryError> {
        let mut attempt = 0;
        loop {
            match self
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
    ) -> BoxFuture<'a, Subscribed> {
        Box::pin(self.subscribe_relayed(key, rule, since, member, ack))
    }

    /// The stream trims itself: by count when a node publishes, by age with
    /// each event's TTL.
    fn trim<'a>(&'a self, _idle: Duration, _rule: RuleOf<'a>) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Nothing is held in this process: the history is on JetStream.
    fn sizes(&self) -> BTreeMap<Arc<str>, HistorySize> {
        BTreeMap::new()
    }

    fn close(&self) {}
}
