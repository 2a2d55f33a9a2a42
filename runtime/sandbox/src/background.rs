//! Work kept off the call path: one thread per sandbox (started by the
//! first handler loaded with `ready_instances`), with its own
//! single-threaded async runtime, that makes `fresh` handlers' next
//! instances before their calls need them and tears used instances down
//! after them (the pooling allocator resets a slot's memory when its store
//! is dropped).
//!
//! A thread of its own rather than tasks on the server's runtime: the
//! scheduler puts it on whichever core is idle, and a burst of instantiation
//! never sits in a worker's queue in front of messages.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

pub(crate) struct Background {
    handle: Handle,
    /// Values handed to `drop_later` and not dropped yet.
    behind: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
}

/// Values `drop_later` may leave queued before it drops the next one on the
/// caller: a thread that cannot keep up must not hold pool slots (or memory)
/// without bound.
const MAX_BEHIND: usize = 8;

impl Background {
    pub(crate) fn start() -> anyhow::Result<Self> {
        // Time for call deadlines (an instantiation runs under one, like a
        // call); no I/O: instances act only through the host.
        let runtime = Builder::new_current_thread().enable_time().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        thread::Builder::new()
            .name("sluice-instances".into())
            .spawn(move || {
                // Runs the spawned tasks until the sandbox and every handler
                // it loaded are gone; dropping the runtime then drops what
                // was still queued.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(Self {
            handle,
            behind: Arc::new(AtomicUsize::new(0)),
            stop: Some(stop),
        })
    }

    /// Run `work` on the background thread.
    pub(crate) fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(work);
    }

    /// Drop `value` on the background thread, or here when that thread is
    /// [`MAX_BEHIND`] values behind.
    pub(crate) fn drop_later<T: Send + 'static>(&self, value: T) {
        if self.behind.fetch_add(1, Ordering::AcqRel) >= MAX_BEHIND {
            self.behind.fetch_sub(1, Ordering::AcqRel);
            drop(value);
            return;
        }
        let behind = self.behind.clone();
        self.handle.spawn(async move {
            drop(value);
            behind.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Not joined: the last handler may be dropped on this very thread.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
