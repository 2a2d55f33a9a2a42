//! Every connection's bounded outbound queue. A frame is serialized once and
//! its bytes shared by every receiver (`Utf8Bytes` clones are
//! reference-counted). A queue that would grow past its byte bound marks its
//! connection as a slow consumer, which the session then closes (1013).
//!
//! One allocation per connection holds the queue and its counters, and an
//! idle queue holds one frame slot: an idle connection's queue costs ~200
//! bytes (tokio's unbounded channel allocated a block of 32 slots, ~1.2 KB,
//! for every connection).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sluice_protocol::CloseReason;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// What a connection's writer sends.
#[derive(Debug)]
pub enum Outgoing {
    /// A text frame.
    Text(Utf8Bytes),
    /// A ping (keep-alive and liveness check).
    Ping,
    /// A close frame; the writer stops after it.
    Close(CloseReason),
}

struct Shared {
    frames: Mutex<VecDeque<Outgoing>>,
    /// Wakes the writer: a frame was queued, or the last sender went.
    frame_queued: Notify,
    /// Bytes of text frames queued and not yet written.
    queued: AtomicUsize,
    max_bytes: usize,
    overflowed: AtomicBool,
    /// Wakes the session once the queue has overflowed.
    overflow: Notify,
    /// [`Outbox`] clones alive.
    senders: AtomicUsize,
    /// The writer is gone: nothing more is queued.
    reader_gone: AtomicBool,
}

impl Shared {
    fn frames(&self) -> std::sync::MutexGuard<'_, VecDeque<Outgoing>> {
        self.frames.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, frame: Outgoing) -> bool {
        if self.reader_gone.load(Ordering::Acquire) {
            return false;
        }
        let mut frames = self.frames();
        // The first frame into an empty queue gets one slot, not the four a
        // `VecDeque` takes: most connections are idle, and an idle one's
        // queue then holds 40 bytes (its welcome, its pings) for its life.
        if frames.capacity() == 0 {
            frames.reserve_exact(1);
        }
        frames.push_back(frame);
        drop(frames);
        self.frame_queued.notify_one();
        true
    }
}

/// The sending side of one connection's outbound queue, bounded in bytes.
pub struct Outbox {
    shared: Arc<Shared>,
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.frame_queued.notify_one();
        }
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("queued_bytes", &self.queued_bytes())
            .field("max_bytes", &self.shared.max_bytes)
            .finish()
    }
}

/// The receiving side, owned by the connection's writer.
pub struct OutboxReader {
    /// Frames to write.
    pub rx: Frames,
}

/// The frames of one connection's queue, in the order they were queued.
pub struct Frames {
    shared: Arc<Shared>,
}

/// [`Frames::try_recv`] found nothing.
#[derive(Debug, PartialEq, Eq)]
pub struct Empty;

impl Frames {
    /// The next frame, waiting for one; `None` once the queue is empty and
    /// every [`Outbox`] is gone.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        loop {
            // Registered before the check: a frame queued in between still
            // wakes it.
            let queued = self.shared.frame_queued.notified();
            if let Ok(frame) = self.pop() {
                return Some(frame);
            }
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                return None;
            }
            queued.await;
        }
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Result<Outgoing, Empty> {
        self.pop()
    }

    fn pop(&self) -> Result<Outgoing, Empty> {
        let mut frames = self.shared.frames();
        let frame = frames.pop_front().ok_or(Empty)?;
        // A burst's slots are given back once it has been written.
        if frames.is_empty() && frames.capacity() > IDLE_SLOTS {
            *frames = VecDeque::new();
        }
        Ok(frame)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.shared.frames().is_empty()
    }
}

/// Frame slots an empty queue may keep.
const IDLE_SLOTS: usize = 8;

impl Drop for Frames {
    fn drop(&mut self) {
        self.shared.reader_gone.store(true, Ordering::Release);
        // Frames queued by a sender that raced the flag are dropped now,
        // not when the last sender goes.
        self.shared.frames().clear();
    }
}

impl OutboxReader {
    /// Account for a frame that was written.
    pub fn written(&self, bytes: usize) {
        self.rx.shared.queued.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl Outbox {
    /// A queue holding at most `max_bytes` of unsent frames.
    pub fn new(max_bytes: usize) -> (Self, OutboxReader) {
        let shared = Arc::new(Shared {
            frames: Mutex::new(VecDeque::new()),
            frame_queued: Notify::new(),
            queued: AtomicUsize::new(0),
            max_bytes,
            overflowed: AtomicBool::new(false),
            overflow: Notify::new(),
            senders: AtomicUsize::new(1),
            reader_gone: AtomicBool::new(false),
        });
        (
            Self {
                shared: shared.clone(),
            },
            OutboxReader {
                rx: Frames { shared },
            },
        )
    }

    /// Queue a text frame. Returns false, and marks the connection as a slow
    /// consumer to be disconnected, when the queue is full.
    pub fn send(&self, frame: Utf8Bytes) -> bool {
        let shared = &*self.shared;
        let len = frame.len();
        let before = shared.queued.fetch_add(len, Ordering::Relaxed);
        if before + len > shared.max_bytes {
            shared.queued.fetch_sub(len, Ordering::Relaxed);
            if !shared.overflowed.swap(true, Ordering::Relaxed) {
                shared.overflow.notify_one();
            }
            return false;
        }
        if !shared.push(Outgoing::Text(frame)) {
            shared.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Queue a ping.
    pub fn ping(&self) {
        self.shared.push(Outgoing::Ping);
    }

    /// Queue a close frame.
    pub fn close(&self, reason: CloseReason) {
        self.shared.push(Outgoing::Close(reason));
    }

    /// Resolves once the queue has overflowed.
    pub async fn overflowed(&self) {
        loop {
            let notified = self.shared.overflow.notified();
            if self.shared.overflowed.load(Ordering::Relaxed) {
                return;
            }
            notified.await;
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_marks_a_slow_consumer() {
        let (o, r) = Outbox::new(10);
        assert!(o.send(Utf8Bytes::from("12345")));
        assert!(o.send(Utf8Bytes::from("12345")));
        assert!(!o.send(Utf8Bytes::from("1")));
        assert!(o.shared.overflowed.load(Ordering::Relaxed));
        r.written(5);
        assert_eq!(o.queued_bytes(), 5);
    }

    #[tokio::test]
    async fn frames_arrive_in_order_and_the_queue_ends_with_its_senders() {
        let (o, mut r) = Outbox::new(1 << 20);
        let o2 = o.clone();
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(frame) = r.rx.recv().await {
                got.push(match frame {
                    Outgoing::Text(t) => t.to_string(),
                    Outgoing::Ping => "ping".into(),
                    Outgoing::Close(_) => "close".into(),
                });
            }
            got
        });
        for i in 0..100 {
            assert!(o.send(Utf8Bytes::from(i.to_string())));
        }
        o2.ping();
        o.close(CloseReason::ServerShutdown);
        drop(o);
        drop(o2);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the reader ends once every sender is gone")
            .expect("join");
        let mut want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        want.extend(["ping".into(), "close".into()]);
        assert_eq!(got, want);
    }

    #[test]
    fn nothing_is_queued_for_a_writer_that_is_gone() {
        let (o, r) = Outbox::new(1 << 20);
        drop(r);
        assert!(!o.send(Utf8Bytes::from("late")));
        assert_eq!(o.queued_bytes(), 0);
    }

    #[test]
    fn an_idle_queue_keeps_one_slot() {
        let (o, mut r) = Outbox::new(1 << 20);
        assert!(o.send(Utf8Bytes::from("welcome")));
        assert!(matches!(r.rx.try_recv(), Ok(Outgoing::Text(_))));
        o.ping();
        assert!(matches!(r.rx.try_recv(), Ok(Outgoing::Ping)));
        assert_eq!(r.rx.shared.frames().capacity(), 1);
        // Two at once grow it as usual.
        assert!(o.send(Utf8Bytes::from("a")));
        assert!(o.send(Utf8Bytes::from("b")));
        assert!(matches!(r.rx.try_recv(), Ok(Outgoing::Text(t)) if t == "a"));
        assert!(matches!(r.rx.try_recv(), Ok(Outgoing::Text(t)) if t == "b"));
    }

    #[test]
    fn a_drained_burst_gives_its_slots_back() {
        let (o, mut r) = Outbox::new(1 << 20);
        for _ in 0..1000 {
            assert!(o.send(Utf8Bytes::from("x")));
        }
        while r.rx.try_recv().is_ok() {}
        assert!(matches!(r.rx.try_recv(), Err(Empty)));
        assert!(r.rx.shared.frames().capacity() <= IDLE_SLOTS);
    }
}
