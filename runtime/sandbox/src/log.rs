//! Host side of `sluice:handler/log` ([`LogHost`]) and where handler log
//! lines go ([`GuestLog`]).
//!
//! A handler's lines are bounded three ways: per call (`max_log_lines`,
//! `max_log_line_bytes`), per second over all its calls
//! (`log_lines_per_sec`), and by a bounded queue to one logging thread, so
//! that writing them never blocks a worker thread that runs handlers. Control
//! characters (newlines, escape sequences) are escaped, so a handler cannot
//! forge a line that looks like the host's or another tenant's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sluice_config::HandlerLimits;
use sluice_protocol::truncate_utf8;

use super::bindings::sluice::handler::log;

/// Severity of a handler's log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Detail.
    Debug,
    /// Normal operation.
    Info,
    /// Unexpected but handled.
    Warn,
    /// Failure.
    Error,
}

/// One line a handler logged during a call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Its severity.
    pub level: LogLevel,
    /// Its text, truncated to the handler's line limit, control characters
    /// escaped.
    pub message: String,
}

/// `text` with every control character (and the Unicode line and paragraph
/// separators) escaped as `\n`, `\u{1b}`, ...: one line, no terminal codes.
pub fn escape_control(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// A per-second budget of log lines shared by every call of one handler.
#[derive(Debug, Default)]
pub(crate) struct LogBudget {
    /// `second << 32 | lines written in that second`.
    window: AtomicU64,
    /// Lines dropped by the budget, ever.
    pub(crate) dropped: AtomicU64,
}

impl LogBudget {
    /// Take one line from the budget of the current second.
    pub(crate) fn take(&self, per_sec: u32) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            & 0xffff_ffff;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (second, used) = (current >> 32, current & 0xffff_ffff);
            let next = if second == now {
                if used >= u64::from(per_sec) {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                current + 1
            } else {
                (now << 32) | 1
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }
}

/// The host side of `sluice:handler/log` for one instance.
pub(crate) struct LogHost {
    limits: HandlerLimits,
    budget: Arc<LogBudget>,
    pub(crate) lines: Vec<LogLine>,
    pub(crate) dropped: u64,
}

impl LogHost {
    pub(crate) fn new(limits: HandlerLimits, budget: Arc<LogBudget>) -> Self {
        Self {
            limits,
            budget,
            lines: Vec::new(),
            dropped: 0,
        }
    }

    pub(crate) fn begin(&mut self) {
        self.lines.clear();
        self.dropped = 0;
    }
}

impl log::Host for LogHost {
    async fn write(&mut self, level: log::Level, message: String) {
        if self.lines.len() >= self.limits.max_log_lines
            || !self.budget.take(self.limits.log_lines_per_sec)
        {
            self.dropped += 1;
            return;
        }
        let level = match level {
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        // Truncated first (and the rest freed), then escaped.
        let message = escape_control(&truncate_utf8(message, self.limits.max_log_line_bytes));
        self.lines.push(LogLine { level, message });
    }
}

/// One record for the logging thread.
struct Record {
    tenant: Arc<str>,
    handler: Arc<str>,
    lines: Vec<LogLine>,
    dropped: u64,
}

/// Lines queued for the logging thread at most; past it, lines are dropped
/// and counted ([`GuestLog::dropped`]).
pub const GUEST_LOG_QUEUE: usize = 4096;

/// Where handler log lines go: a bounded queue drained by one thread that
/// writes them to the host's `tracing` logs with their tenant and handler.
pub struct GuestLog {
    tx: SyncSender<Record>,
    dropped: AtomicU64,
}

impl GuestLog {
    /// The process's guest log (its thread starts on first use).
    pub fn global() -> &'static GuestLog {
        static LOG: OnceLock<GuestLog> = OnceLock::new();
        LOG.get_or_init(|| {
            let (tx, rx) = sync_channel(GUEST_LOG_QUEUE);
            let spawned = std::thread::Builder::new()
                .name("sluice-guest-log".into())
                .spawn(move || drain(rx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the guest log thread: handler logs are dropped");
            }
            GuestLog {
                tx,
                dropped: AtomicU64::new(0),
            }
        })
    }

    /// Queue a call's lines; never blocks.
    pub(crate) fn emit(
        &self,
        tenant: &Arc<str>,
        handler: &Arc<str>,
        lines: &[LogLine],
        dropped: u64,
    ) {
        if lines.is_empty() && dropped == 0 {
            return;
        }
        let record = Record {
            tenant: tenant.clone(),
            handler: handler.clone(),
            lines: lines.to_vec(),
            dropped,
        };
        if let Err(TrySendError::Full(r) | TrySendError::Disconnected(r)) = self.tx.try_send(record)
        {
            self.dropped
                .fetch_add(r.lines.len() as u64, Ordering::Relaxed);
        }
    }

    /// Lines dropped because the logging thread fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn drain(rx: Receiver<Record>) {
    while let Ok(r) = rx.recv() {
        let (handler, tenant) = (&*r.handler, &*r.tenant);
        for line in &r.lines {
            let message = &line.message;
            match line.level {
                LogLevel::Debug => {
                    tracing::debug!(target: "sluice::guest", %handler, %tenant, "{message}")
                }
                LogLevel::Info => {
                    tracing::info!(target: "sluice::guest", %handler, %tenant, "{message}")
                }
                LogLevel::Warn => {
                    tracing::warn!(target: "sluice::guest", %handler, %tenant, "{message}")
                }
                LogLevel::Error => {
                    tracing::error!(target: "sluice::guest", %handler, %tenant, "{message}")
                }
            }
        }
        if r.dropped > 0 {
            tracing::warn!(target: "sluice::guest", %handler, %tenant, dropped = r.dropped,
                "log lines dropped past the per-call or per-second limit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_control("plain"), "plain");
        assert_eq!(
            escape_control("a\nINFO sluice: forged\r\u{1b}[31m"),
            "a\\nINFO sluice: forged\\r\\u{1b}[31m"
        );
        assert_eq!(escape_control("x\u{2028}y"), "x\\u{2028}y");
    }

    #[test]
    fn the_budget_is_per_second() {
        let b = LogBudget::default();
        let taken = (0..50).filter(|_| b.take(10)).count();
        // At most two windows can be seen in this loop.
        assert!((10..=20).contains(&taken), "{taken}");
        assert!(b.dropped.load(Ordering::Relaxed) >= 30);
    }
}
