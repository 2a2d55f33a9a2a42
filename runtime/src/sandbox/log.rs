//! Host side of `sluice:handler/log`: lines are kept per call, capped in
//! number and length, and emitted to the host's `tracing` logs after the call
//! with the handler and tenant they came from.

use serde::Serialize;

use super::bindings::sluice::handler::log;
use super::call::CallCtx;

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
    /// Its text, truncated to the handler's line limit.
    pub message: String,
}

/// Cut `text` to at most `max` bytes on a character boundary.
pub(crate) fn truncate_utf8(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

impl log::Host for CallCtx {
    fn write(&mut self, level: log::Level, message: String) {
        let limits = &self.handler.limits;
        if self.call.logs.len() >= limits.max_log_lines {
            self.call.logs_dropped += 1;
            return;
        }
        let level = match level {
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        let message = truncate_utf8(message, limits.max_log_line_bytes);
        self.call.logs.push(LogLine { level, message });
    }
}

#[cfg(test)]
mod tests {
    use super::truncate_utf8;

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_utf8("héllo".to_owned(), 2), "h");
        assert_eq!(truncate_utf8("héllo".to_owned(), 3), "hé");
        assert_eq!(truncate_utf8("abc".to_owned(), 10), "abc");
    }
}
