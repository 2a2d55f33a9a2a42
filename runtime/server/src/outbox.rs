//! Every connection's bounded outbound queue. A frame is serialized once and
//! its bytes shared by every receiver (`Utf8Bytes` clones are
//! reference-counted). A queue that would grow past its byte bound marks its
//! connection as a slow consumer, which the session then closes (1013).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sluice_protocol::CloseReason;
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
    Close(CloseReason),
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
    pub fn close(&self, reason: CloseReason) {
        let _ = self.tx.send(Outgoing::Close(reason));
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

#[cfg(test)]
mod tests {
    use super::*;

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
