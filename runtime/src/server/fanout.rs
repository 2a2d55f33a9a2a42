//! Fan-out: the channel registry and every connection's bounded outbound
//! queue. A frame is serialized once and its bytes shared by every
//! subscriber (`Utf8Bytes` clones are reference-counted).
//!
//! The in-process registry is the single-node default. Channels and subjects
//! are keyed by tenant first, so nothing published by one tenant can reach
//! another's connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// What a connection's writer sends.
#[derive(Debug)]
pub enum Outgoing {
    /// A text frame.
    Text(Utf8Bytes),
    /// A ping (keep-alive and liveness check).
    Ping,
    /// A close frame; the writer stops after it.
    Close(u16, String),
}

/// The sending side of one connection's outbound queue, bounded in bytes.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Outgoing>,
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    overflowed: Arc<AtomicBool>,
    wake: Arc<Notify>,
}

/// The receiving side, owned by the connection's writer.
pub struct OutboxReader {
    /// Frames to write.
    pub rx: mpsc::UnboundedReceiver<Outgoing>,
    queued: Arc<AtomicUsize>,
}

impl OutboxReader {
    /// Account for a frame that was written.
    pub fn written(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl Outbox {
    /// A queue holding at most `max_bytes` of unsent frames.
    pub fn new(max_bytes: usize) -> (Self, OutboxReader) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (
            Self {
                tx,
                queued: queued.clone(),
                max_bytes,
                overflowed: Arc::new(AtomicBool::new(false)),
                wake: Arc::new(Notify::new()),
            },
            OutboxReader { rx, queued },
        )
    }

    /// Queue a text frame. Returns false, and marks the connection as a slow
    /// consumer to be disconnected, when the queue is full.
    pub fn send(&self, frame: Utf8Bytes) -> bool {
        let len = frame.len();
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        if before + len > self.max_bytes {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            if !self.overflowed.swap(true, Ordering::Relaxed) {
                self.wake.notify_one();
            }
            return false;
        }
        if self.tx.send(Outgoing::Text(frame)).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Queue a ping.
    pub fn ping(&self) {
        let _ = self.tx.send(Outgoing::Ping);
    }

    /// Queue a close frame.
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        let _ = self.tx.send(Outgoing::Close(code, reason.into()));
    }

    /// Resolves once the queue has overflowed.
    pub async fn overflowed(&self) {
        loop {
            let notified = self.wake.notified();
            if self.overflowed.load(Ordering::Relaxed) {
                return;
            }
            notified.await;
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

type Members = HashMap<u64, Outbox>;

/// Channel and subject registry.
#[derive(Default)]
pub struct Fanout {
    channels: RwLock<HashMap<String, Members>>,
    subjects: RwLock<HashMap<String, Members>>,
}

fn key(tenant: &str, name: &str) -> String {
    let mut k = String::with_capacity(tenant.len() + name.len() + 1);
    k.push_str(tenant);
    k.push('\0');
    k.push_str(name);
    k
}

fn add(map: &RwLock<HashMap<String, Members>>, k: String, id: u64, outbox: &Outbox) {
    map.write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(k)
        .or_default()
        .insert(id, outbox.clone());
}

fn remove(map: &RwLock<HashMap<String, Members>>, k: &str, id: u64) {
    let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(members) = map.get_mut(k) {
        members.remove(&id);
        if members.is_empty() {
            map.remove(k);
        }
    }
}

fn deliver(map: &RwLock<HashMap<String, Members>>, k: &str, frame: &Utf8Bytes) -> usize {
    let map = map.read().unwrap_or_else(PoisonError::into_inner);
    map.get(k).map_or(0, |members| {
        members.values().filter(|o| o.send(frame.clone())).count()
    })
}

impl Fanout {
    /// Subscribe connection `id` to a channel of `tenant`.
    pub fn subscribe(&self, tenant: &str, channel: &str, id: u64, outbox: &Outbox) {
        add(&self.channels, key(tenant, channel), id, outbox);
    }

    /// Unsubscribe connection `id`.
    pub fn unsubscribe(&self, tenant: &str, channel: &str, id: u64) {
        remove(&self.channels, &key(tenant, channel), id);
    }

    /// Register connection `id` as one of `subject`'s.
    pub fn join_subject(&self, tenant: &str, subject: &str, id: u64, outbox: &Outbox) {
        add(&self.subjects, key(tenant, subject), id, outbox);
    }

    /// Forget connection `id` of `subject`.
    pub fn leave_subject(&self, tenant: &str, subject: &str, id: u64) {
        remove(&self.subjects, &key(tenant, subject), id);
    }

    /// Deliver a frame to every subscriber; returns how many got it.
    pub fn publish(&self, tenant: &str, channel: &str, frame: &Utf8Bytes) -> usize {
        deliver(&self.channels, &key(tenant, channel), frame)
    }

    /// Deliver a frame to every connection of a subject.
    pub fn send_to_subject(&self, tenant: &str, subject: &str, frame: &Utf8Bytes) -> usize {
        deliver(&self.subjects, &key(tenant, subject), frame)
    }

    /// Subscribers of a channel.
    pub fn subscribers(&self, tenant: &str, channel: &str) -> usize {
        self.channels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key(tenant, channel))
            .map_or(0, HashMap::len)
    }

    /// Channels with at least one subscriber.
    pub fn channel_count(&self) -> usize {
        self.channels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_separate_and_empty_channels_are_dropped() {
        let fanout = Fanout::default();
        let (a, mut ra) = Outbox::new(1024);
        let (b, mut rb) = Outbox::new(1024);
        fanout.subscribe("t1", "room:1", 1, &a);
        fanout.subscribe("t2", "room:1", 2, &b);
        assert_eq!(fanout.publish("t1", "room:1", &Utf8Bytes::from("x")), 1);
        assert!(matches!(ra.rx.try_recv(), Ok(Outgoing::Text(t)) if t.as_str() == "x"));
        assert!(rb.rx.try_recv().is_err());
        fanout.unsubscribe("t1", "room:1", 1);
        fanout.unsubscribe("t2", "room:1", 2);
        assert_eq!(fanout.channel_count(), 0);
    }

    #[test]
    fn a_full_queue_marks_a_slow_consumer() {
        let (o, r) = Outbox::new(10);
        assert!(o.send(Utf8Bytes::from("12345")));
        assert!(o.send(Utf8Bytes::from("12345")));
        assert!(!o.send(Utf8Bytes::from("1")));
        assert!(o.overflowed.load(Ordering::Relaxed));
        r.written(5);
        assert_eq!(o.queued_bytes(), 5);
    }
}
