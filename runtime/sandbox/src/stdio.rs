//! The guest's stdout and stderr: captured into a per-call buffer of bounded
//! size. Output past the cap is dropped (and counted), never an error, so a
//! chatty guest cannot trap itself by printing and cannot grow host memory.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// A capped, shared capture buffer that WASI writes into.
#[derive(Clone, Debug)]
pub(crate) struct CapturedOutput {
    inner: Arc<Captured>,
}

#[derive(Debug)]
struct Captured {
    cap: usize,
    buf: Mutex<Vec<u8>>,
    dropped: AtomicU64,
}

impl CapturedOutput {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            inner: Arc::new(Captured {
                cap,
                buf: Mutex::new(Vec::new()),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut buf = self
            .inner
            .buf
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let room = self.inner.cap.saturating_sub(buf.len());
        let kept = bytes.len().min(room);
        buf.extend_from_slice(&bytes[..kept]);
        let dropped = (bytes.len() - kept) as u64;
        if dropped > 0 {
            self.inner.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Take what was captured since the last call, as text, and the number
    /// of bytes dropped past the cap.
    pub(crate) fn take(&self) -> (String, u64) {
        let bytes = std::mem::take(
            &mut *self
                .inner
                .buf
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let dropped = self.inner.dropped.swap(0, Ordering::Relaxed);
        (String::from_utf8_lossy(&bytes).into_owned(), dropped)
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always accept: what does not fit is dropped, not refused.
        Ok(64 << 10)
    }
}

impl AsyncWrite for CapturedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::CapturedOutput;

    #[test]
    fn output_past_the_cap_is_dropped_and_counted() {
        let out = CapturedOutput::new(4);
        out.push(b"abc");
        out.push(b"def");
        assert_eq!(out.take(), ("abcd".to_owned(), 2));
        assert_eq!(out.take(), (String::new(), 0));
    }
}
