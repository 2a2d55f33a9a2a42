//! What the admin listener holds open: at most [`MAX_CONNECTIONS`]
//! connections, and a pause after a failed accept.
//!
//! A connection that is not inside a request (waiting for a request's
//! head, idle between keep-alive requests, or writing an answer) is
//! *idle*. When the table is full, a new connection closes the oldest idle
//! one: a flood of connections that never finish a request (slowloris)
//! keeps at most [`MAX_CONNECTIONS`] descriptors and cannot keep an honest
//! client out, whose request starts as soon as it is accepted. Only when
//! every connection is inside a request is the new one closed at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

/// Connections the admin listener holds at once.
pub const MAX_CONNECTIONS: usize = 256;
/// The first pause after a failed accept (out of file descriptors:
/// `EMFILE`, `ENFILE`; out of memory), doubled while accepts keep failing.
pub const ACCEPT_PAUSE_FIRST: Duration = Duration::from_millis(5);
/// The longest pause after a failed accept.
pub const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

struct Open {
    busy: Arc<AtomicUsize>,
    close: oneshot::Sender<()>,
}

/// The admin listener's open connections.
pub struct Connections {
    max: usize,
    table: Mutex<(u64, BTreeMap<u64, Open>)>,
}

/// One admitted connection: its requests mark it busy
/// ([`Admitted::request`]); it leaves the table when dropped.
pub struct Admitted {
    id: u64,
    busy: Arc<AtomicUsize>,
    table: Arc<Connections>,
    /// Resolves when a newer connection took this one's place.
    pub evicted: oneshot::Receiver<()>,
}

/// A request in progress on a connection: it is not evicted meanwhile.
pub struct InRequest(Arc<AtomicUsize>);

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connections {
    /// A table of at most `max` connections.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            table: Mutex::new((0, BTreeMap::new())),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .len()
    }

    /// Take a place for a new connection, closing the oldest idle one when
    /// the table is full; `None` when every connection is inside a request.
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.1.len() >= self.max {
            let oldest_idle = table
                .1
                .iter()
                .find(|(_, o)| o.busy.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id)?;
            if let Some(o) = table.1.remove(&oldest_idle) {
                let _ = o.close.send(());
            }
        }
        table.0 += 1;
        let id = table.0;
        let busy = Arc::new(AtomicUsize::new(0));
        let (close, evicted) = oneshot::channel();
        table.1.insert(
            id,
            Open {
                busy: busy.clone(),
                close,
            },
        );
        Some(Admitted {
            id,
            busy,
            table: self.clone(),
            evicted,
        })
    }
}

impl Admitted {
    /// Mark a request in progress until the guard is dropped.
    pub fn request(busy: &Arc<AtomicUsize>) -> InRequest {
        busy.fetch_add(1, Ordering::AcqRel);
        InRequest(busy.clone())
    }

    /// The counter [`Admitted::request`] takes.
    pub fn busy(&self) -> Arc<AtomicUsize> {
        self.busy.clone()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.table
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .remove(&self.id);
    }
}

/// The pause after each failed accept: doubling from
/// [`ACCEPT_PAUSE_FIRST`] to [`ACCEPT_PAUSE_MAX`], back to the first after
/// an accept succeeds. A listener out of file descriptors would otherwise
/// spin on the error and take a core from everything else.
#[derive(Debug)]
pub struct AcceptBackoff {
    next: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self {
            next: ACCEPT_PAUSE_FIRST,
        }
    }
}

impl AcceptBackoff {
    /// An accept failed: how long to pause before the next.
    pub fn failed(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(ACCEPT_PAUSE_MAX);
        pause
    }

    /// An accept succeeded.
    pub fn succeeded(&mut self) {
        self.next = ACCEPT_PAUSE_FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_closes_the_oldest_idle_connection_never_a_busy_one() {
        let table = Connections::new(3);
        let mut a = table.admit().unwrap();
        let b = table.admit().unwrap();
        let mut c = table.admit().unwrap();
        // a is inside a request: b is the oldest idle one.
        let in_a = Admitted::request(&a.busy());
        let d = table.admit().unwrap();
        assert_eq!(table.open(), 3);
        let mut b = b;
        assert!(b.evicted.try_recv().is_ok(), "b made room");
        assert!(a.evicted.try_recv().is_err());
        assert!(c.evicted.try_recv().is_err());
        // Every connection busy: the new one is refused.
        let _in_c = Admitted::request(&c.busy());
        let _in_d = Admitted::request(&d.busy());
        assert!(table.admit().is_none());
        // A request ends: its connection can make room again.
        drop(in_a);
        let _e = table.admit().unwrap();
        assert!(a.evicted.try_recv().is_ok());
        drop(b);
        drop(c);
        assert_eq!(table.open(), 2, "a dropped connection leaves the table");
    }

    #[test]
    fn failed_accepts_back_off_up_to_a_second_and_reset_on_success() {
        let mut b = AcceptBackoff::default();
        let pauses: Vec<Duration> = (0..10).map(|_| b.failed()).collect();
        assert_eq!(pauses[0], ACCEPT_PAUSE_FIRST);
        assert_eq!(pauses[1], ACCEPT_PAUSE_FIRST * 2);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*pauses.last().unwrap(), ACCEPT_PAUSE_MAX);
        b.succeeded();
        assert_eq!(b.failed(), ACCEPT_PAUSE_FIRST);
    }
}
