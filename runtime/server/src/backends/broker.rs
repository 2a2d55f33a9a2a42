//! The Broker seam: who receives what is published on a channel or sent to
//! a subject. Channels and subjects are keyed by a typed key whose first part
//! is the tenant, so nothing published by one tenant can reach another's
//! connections, whatever the names. A frame is serialized once, before it is
//! handed to the broker, and its bytes are shared by every receiver.
//!
//! The broker is separate from each connection's outbound queue
//! ([`Outbox`]): a broker only decides which queues get a frame. The
//! in-process [`LocalBroker`] is the embedded default; a networked broker
//! (NATS), channel history and presence plug in behind the same trait
//! without touching the session (docs/ARCHITECTURE.md).

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use sluice_protocol::CloseReason;
use sluice_sandbox::BoxFuture;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::keys::{ChannelKey, Member, SubjectKey};
use crate::outbox::Outbox;

/// A broker that could not take a frame (a networked broker cut off).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The fleet's message bus cannot be reached now.
    #[error("broker: the fleet's message bus is unreachable")]
    Unreachable,
    /// The message bus refused or failed the publish.
    #[error("broker: {0}")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Channels and subjects. Membership changes are synchronous and cheap
/// (a networked broker updates its remote interest in the background);
/// publishing and sending may wait, and the session awaits them under the
/// message's handling.
pub trait Broker: Send + Sync + 'static {
    /// Add `member` to a channel.
    fn subscribe(&self, key: &ChannelKey, member: Member);
    /// Remove connection `id` from a channel.
    fn unsubscribe(&self, key: &ChannelKey, id: u64);
    /// Register `member` as one of a subject's connections.
    fn join_subject(&self, key: &SubjectKey, member: Member);
    /// Forget connection `id` of a subject.
    fn leave_subject(&self, key: &SubjectKey, id: u64);
    /// Deliver `frame` to every subscriber of a channel; how many local
    /// connections got it.
    fn publish<'a>(
        &'a self,
        key: &'a ChannelKey,
        frame: Utf8Bytes,
    ) -> BoxFuture<'a, Result<usize, BrokerError>>;
    /// Deliver `frame` to every connection of a subject.
    fn send<'a>(
        &'a self,
        key: &'a SubjectKey,
        frame: Utf8Bytes,
    ) -> BoxFuture<'a, Result<usize, BrokerError>>;
    /// Local subscribers of a channel.
    fn subscribers(&self, key: &ChannelKey) -> usize;
    /// Channels with at least one local subscriber.
    fn channel_count(&self) -> usize;
    /// Resolves once publishes from every node reach this node's
    /// subscribers of the channel (a networked broker registers its
    /// interest remotely after [`Broker::subscribe`]); the subscribe's ack
    /// waits for it.
    fn channel_ready<'a>(&'a self, _key: &'a ChannelKey) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }
    /// The same for a subject's connections after [`Broker::join_subject`].
    fn subject_ready<'a>(&'a self, _key: &'a SubjectKey) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }
}

type Members = HashMap<u64, Outbox>;

/// The in-process broker: the single-node default.
#[derive(Default)]
pub struct LocalBroker {
    channels: RwLock<HashMap<ChannelKey, Members>>,
    subjects: RwLock<HashMap<SubjectKey, Members>>,
}

fn add<K: std::hash::Hash + Eq + Clone>(map: &RwLock<HashMap<K, Members>>, k: &K, m: Member) {
    map.write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(k.clone())
        .or_default()
        .insert(m.id, m.outbox);
}

fn remove<K: std::hash::Hash + Eq>(map: &RwLock<HashMap<K, Members>>, k: &K, id: u64) {
    let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(members) = map.get_mut(k) {
        members.remove(&id);
        if members.is_empty() {
            map.remove(k);
        }
    }
}

fn deliver<K: std::hash::Hash + Eq>(
    map: &RwLock<HashMap<K, Members>>,
    k: &K,
    frame: &Utf8Bytes,
) -> usize {
    let map = map.read().unwrap_or_else(PoisonError::into_inner);
    map.get(k).map_or(0, |members| {
        members.values().filter(|o| o.send(frame.clone())).count()
    })
}

impl LocalBroker {
    /// Deliver at once (the local broker never waits).
    pub fn publish_now(&self, key: &ChannelKey, frame: &Utf8Bytes) -> usize {
        deliver(&self.channels, key, frame)
    }

    /// Local connections of a subject.
    pub fn subject_connections(&self, key: &SubjectKey) -> usize {
        self.subjects
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map_or(0, HashMap::len)
    }

    /// Close the connection of every local subscriber of a channel with
    /// `reason` (they resume elsewhere or later); how many.
    pub fn close_subscribers(&self, key: &ChannelKey, reason: &CloseReason) -> usize {
        let map = self.channels.read().unwrap_or_else(PoisonError::into_inner);
        map.get(key).map_or(0, |members| {
            for o in members.values() {
                o.close(reason.clone());
            }
            members.len()
        })
    }

    /// Deliver at once to a subject's connections.
    pub fn send_now(&self, key: &SubjectKey, frame: &Utf8Bytes) -> usize {
        deliver(&self.subjects, key, frame)
    }
}

impl Broker for LocalBroker {
    fn subscribe(&self, key: &ChannelKey, member: Member) {
        add(&self.channels, key, member);
    }

    fn unsubscribe(&self, key: &ChannelKey, id: u64) {
        remove(&self.channels, key, id);
    }

    fn join_subject(&self, key: &SubjectKey, member: Member) {
        add(&self.subjects, key, member);
    }

    fn leave_subject(&self, key: &SubjectKey, id: u64) {
        remove(&self.subjects, key, id);
    }

    fn publish<'a>(
        &'a self,
        key: &'a ChannelKey,
        frame: Utf8Bytes,
    ) -> BoxFuture<'a, Result<usize, BrokerError>> {
        let n = self.publish_now(key, &frame);
        Box::pin(std::future::ready(Ok(n)))
    }

    fn send<'a>(
        &'a self,
        key: &'a SubjectKey,
        frame: Utf8Bytes,
    ) -> BoxFuture<'a, Result<usize, BrokerError>> {
        let n = self.send_now(key, &frame);
        Box::pin(std::future::ready(Ok(n)))
    }

    fn subscribers(&self, key: &ChannelKey) -> usize {
        self.channels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map_or(0, HashMap::len)
    }

    fn channel_count(&self) -> usize {
        self.channels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::outbox::Outgoing;

    #[test]
    fn tenants_are_separate_and_empty_channels_are_dropped() {
        let broker = LocalBroker::default();
        let (t1, t2): (Arc<str>, Arc<str>) = ("t1".into(), "t2".into());
        let (a, mut ra) = Outbox::new(1024);
        let (b, mut rb) = Outbox::new(1024);
        let k1 = ChannelKey::new(&t1, "room:1");
        let k2 = ChannelKey::new(&t2, "room:1");
        broker.subscribe(&k1, Member { id: 1, outbox: a });
        broker.subscribe(&k2, Member { id: 2, outbox: b });
        assert_eq!(broker.publish_now(&k1, &Utf8Bytes::from("x")), 1);
        assert!(matches!(ra.rx.try_recv(), Ok(Outgoing::Text(t)) if t.as_str() == "x"));
        assert!(rb.rx.try_recv().is_err());
        broker.unsubscribe(&k1, 1);
        broker.unsubscribe(&k2, 2);
        assert_eq!(broker.channel_count(), 0);
    }

    #[test]
    fn a_tenant_name_cannot_spill_into_a_channel_name() {
        // With string keys "a\0b:c" style joins, a crafted tenant/channel pair
        // could collide; typed keys compare part by part.
        let broker = LocalBroker::default();
        let (o, mut r) = Outbox::new(1024);
        let (ta, tab): (Arc<str>, Arc<str>) = ("a".into(), "a:b".into());
        broker.subscribe(&ChannelKey::new(&tab, "c"), Member { id: 1, outbox: o });
        assert_eq!(
            broker.publish_now(&ChannelKey::new(&ta, "b:c"), &Utf8Bytes::from("x")),
            0
        );
        assert!(r.rx.try_recv().is_err());
    }
}
