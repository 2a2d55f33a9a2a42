//! Logs: `tracing` to stderr, text or JSON, with a last line of defence
//! against leaking credentials.
//!
//! Sluice never logs request URIs, headers, tokens or message bodies (only
//! the path's tenant, ids, kinds and counts). On top of that, every line
//! goes through [`redact`], which masks anything shaped like a JWT and any
//! `access_token=` value, so that a future log statement, or a dependency's,
//! cannot leak a token that a tenant allowed in the query string.

use std::io::{self, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Replace JWT-shaped strings and `access_token=` values with `[redacted]`.
pub fn redact(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if line[i..].starts_with("access_token=") {
            out.push_str("access_token=[redacted]");
            i += "access_token=".len();
            while i < bytes.len() && !matches!(bytes[i], b'&' | b' ' | b'"' | b'\'' | b'\n') {
                i += 1;
            }
            continue;
        }
        if line[i..].starts_with("eyJ") {
            let end = jwt_end(bytes, i);
            if end > i {
                out.push_str("[redacted]");
                i = end;
                continue;
            }
        }
        let c = line[i..].chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// If a JWT (three base64url segments joined by dots) starts at `start`,
/// where it ends.
fn jwt_end(bytes: &[u8], start: usize) -> usize {
    let b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let mut i = start;
    let mut dots = 0;
    while i < bytes.len() && (b64(bytes[i]) || bytes[i] == b'.') {
        if bytes[i] == b'.' {
            dots += 1;
        }
        i += 1;
    }
    if dots >= 2 { i } else { start }
}

/// Wraps a writer so that every write is redacted first.
#[derive(Clone, Copy, Default)]
pub struct Redacting<W>(pub W);

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// A [`MakeWriter`] that redacts whatever `M`'s writers write.
#[derive(Clone, Default)]
pub struct RedactingWriter<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingWriter<M> {
    type Writer = Redacting<M::Writer>;
    fn make_writer(&'a self) -> Self::Writer {
        Redacting(self.0.make_writer())
    }
}

/// Install the global subscriber: filter from `SLUICE_LOG` (default
/// `info`, or `warn` for one-shot commands), JSON when `SLUICE_LOG_FORMAT=json`.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&io::stderr()))
        .with_writer(RedactingWriter(io::stderr));
    let _ = if std::env::var("SLUICE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn tokens_and_query_tokens_are_masked() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl";
        assert_eq!(redact(&format!("token {jwt} end")), "token [redacted] end");
        assert_eq!(
            redact("GET /ws/demo?x=1&access_token=abc.def.ghi&y=2 HTTP/1.1"),
            "GET /ws/demo?x=1&access_token=[redacted]&y=2 HTTP/1.1"
        );
        assert_eq!(
            redact("eyJ alone is fine, héllo"),
            "eyJ alone is fine, héllo"
        );
    }
}
