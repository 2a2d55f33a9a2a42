//! The counters the data path records: per tenant (messages, errors,
//! closes, latency, refused actions) and at accept. Plain atomics:
//! recording is a few relaxed adds on the hot path. Also the text format's
//! helpers every renderer shares.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sluice_protocol::ErrorCode;
use sluice_sandbox::Histogram;

/// Upper bounds (seconds) of the message latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// How many distinct codes invented by a tenant's handlers get a label of
/// their own in `sluice_messages_total`. Handlers choose their rejection
/// codes freely (1-64 of `a-z 0-9 _ .`), so without a bound one handler
/// could grow `/metrics` (and the monitoring system's series count) by one
/// series per message. The host's own codes ([`ErrorCode::ALL`]) always
/// have their own label and do not count against this bound.
pub const MAX_HANDLER_CODE_LABELS: usize = 32;

/// The label that counts every handler code past
/// [`MAX_HANDLER_CODE_LABELS`], and a handler code `ok` or `other` (which
/// would otherwise be mistaken for the `ok` outcome or this one).
pub const OTHER_CODE_LABEL: &str = "other";

/// Error frames by label: the host codes, at most
/// [`MAX_HANDLER_CODE_LABELS`] handler codes, and [`OTHER_CODE_LABEL`].
#[derive(Default)]
struct ErrorCounts {
    by_label: BTreeMap<String, u64>,
    handler_labels: usize,
}

impl ErrorCounts {
    fn record(&mut self, code: &str) {
        if let Some(n) = self.by_label.get_mut(code) {
            *n += 1;
            return;
        }
        let host = ErrorCode::ALL.iter().any(|c| c.as_str() == code);
        let label = if host {
            code
        } else if self.handler_labels < MAX_HANDLER_CODE_LABELS
            && code != "ok"
            && code != OTHER_CODE_LABEL
        {
            self.handler_labels += 1;
            code
        } else {
            OTHER_CODE_LABEL
        };
        *self.by_label.entry(label.to_owned()).or_default() += 1;
    }
}

/// Counters of one tenant. A reload keeps them (and so the label bound).
pub struct TenantMetrics {
    messages_ok: AtomicU64,
    errors: Mutex<ErrorCounts>,
    pub(crate) closes: Mutex<BTreeMap<u16, u64>>,
    pub(crate) latency: Histogram,
    pub(crate) refused_actions: AtomicU64,
    /// Requests with an idempotency key that ran (no answer was
    /// remembered under the key).
    pub(crate) idempotency_misses: AtomicU64,
}

impl TenantMetrics {
    /// A message answered with an `ack`, after `took`.
    pub fn message_ok(&self, took: Duration) {
        self.messages_ok.fetch_add(1, Ordering::Relaxed);
        self.observe(took);
    }

    /// A message answered with an `error` frame of `code`; counted under
    /// `code`, or under [`OTHER_CODE_LABEL`] once the tenant's handlers have
    /// used [`MAX_HANDLER_CODE_LABELS`] codes of their own.
    pub fn message_error(&self, code: &str, took: Duration) {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(code);
        self.observe(took);
    }

    /// The `sluice_messages_total` series of tenant `id`.
    pub(crate) fn render_messages(&self, id: &str, out: &mut String) {
        let _ = writeln!(
            out,
            "sluice_messages_total{{tenant=\"{}\",outcome=\"ok\"}} {}",
            label(id),
            self.messages_ok.load(Ordering::Relaxed)
        );
        for (code, n) in &self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_label
        {
            let _ = writeln!(
                out,
                "sluice_messages_total{{tenant=\"{}\",outcome=\"{}\"}} {n}",
                label(id),
                label(code)
            );
        }
    }

    /// The server closed a connection with `code`.
    pub fn closed(&self, code: u16) {
        *self
            .closes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(code)
            .or_default() += 1;
    }

    /// A request with an idempotency key ran (no answer was remembered).
    pub fn idempotency_miss(&self) {
        self.idempotency_misses.fetch_add(1, Ordering::Relaxed);
    }

    /// A handler's action was refused by the host.
    pub fn action_refused(&self) {
        self.refused_actions.fetch_add(1, Ordering::Relaxed);
    }

    fn observe(&self, took: Duration) {
        self.latency.observe(took);
    }
}

impl Default for TenantMetrics {
    fn default() -> Self {
        Self {
            messages_ok: AtomicU64::new(0),
            errors: Mutex::new(ErrorCounts::default()),
            closes: Mutex::new(BTreeMap::new()),
            latency: Histogram::new(&LATENCY_BUCKETS),
            refused_actions: AtomicU64::new(0),
            idempotency_misses: AtomicU64::new(0),
        }
    }
}

/// Escape a label value.
/// A gauge or counter with one series per tenant: its `# HELP` and
/// `# TYPE` lines, then `name{tenant="..."} value` for each row.
pub fn tenant_series<'a>(
    out: &mut String,
    (name, kind, help): (&str, &str, &str),
    rows: impl IntoIterator<Item = (&'a str, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (tenant, value) in rows {
        let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {value}", label(tenant));
    }
}

/// A label value, escaped for the text format.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Why a TCP connection was closed at accept, before TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptRefusal {
    /// `max_handshakes_in_flight` connections were already in TLS/upgrade.
    HandshakesInFlight,
    /// The client's address is over `handshakes_per_ip_per_sec`.
    IpHandshakeRate,
    /// The client's address holds `max_connections_per_ip` connections.
    IpConnections,
    /// A configured load balancer sent no valid PROXY protocol v2 header.
    ProxyHeader,
}

impl AcceptRefusal {
    const ALL: [AcceptRefusal; 4] = [
        Self::HandshakesInFlight,
        Self::IpHandshakeRate,
        Self::IpConnections,
        Self::ProxyHeader,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HandshakesInFlight => "handshakes_in_flight",
            Self::IpHandshakeRate => "ip_handshake_rate",
            Self::IpConnections => "ip_connections",
            Self::ProxyHeader => "proxy_header",
        }
    }
}

/// Connections closed at accept, by reason.
#[derive(Default)]
pub struct AcceptMetrics {
    counts: [AtomicU64; AcceptRefusal::ALL.len()],
}

impl AcceptMetrics {
    /// Count one refusal.
    pub fn count(&self, why: AcceptRefusal) {
        self.counts[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals so far for `why`.
    pub fn get(&self, why: AcceptRefusal) -> u64 {
        self.counts[why as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP sluice_accept_refused_total TCP connections closed at accept, before TLS, by reason.\n# TYPE sluice_accept_refused_total counter"
        );
        for why in AcceptRefusal::ALL {
            let _ = writeln!(
                out,
                "sluice_accept_refused_total{{reason=\"{}\"}} {}",
                why.as_str(),
                self.get(why)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_codes_get_a_bounded_set_of_labels() {
        let m = TenantMetrics::default();
        let took = Duration::from_micros(10);
        for i in 0..100_000 {
            m.message_error(&format!("code_{i}"), took);
        }
        // Host codes keep their own label after the flood, and handler codes
        // that could pass for another outcome go to `other`.
        m.message_error("rate_limited", took);
        m.message_error("ok", took);
        m.message_error("code_0", took);
        let errors = m.errors.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(errors.by_label.len(), MAX_HANDLER_CODE_LABELS + 2);
        assert_eq!(errors.by_label["code_0"], 2);
        assert_eq!(errors.by_label["code_31"], 1);
        assert!(!errors.by_label.contains_key("code_32"));
        assert_eq!(
            errors.by_label[OTHER_CODE_LABEL],
            100_000 - MAX_HANDLER_CODE_LABELS as u64 + 1
        );
        assert_eq!(errors.by_label["rate_limited"], 1);
        drop(errors);

        let mut text = String::new();
        m.render_messages("t", &mut text);
        // ok, 32 handler codes, rate_limited, other.
        assert_eq!(text.lines().count(), MAX_HANDLER_CODE_LABELS + 3, "{text}");
        assert!(text.len() < 4096, "{} bytes", text.len());
        assert!(text.contains("sluice_messages_total{tenant=\"t\",outcome=\"other\"} 99969\n"));
        assert!(text.contains("sluice_messages_total{tenant=\"t\",outcome=\"ok\"} 0\n"));
    }

    #[test]
    fn every_host_code_has_its_own_label_even_after_the_handler_codes_are_used_up() {
        let m = TenantMetrics::default();
        for i in 0..MAX_HANDLER_CODE_LABELS + 5 {
            m.message_error(&format!("h{i}"), Duration::ZERO);
        }
        for code in ErrorCode::ALL {
            m.message_error(code.as_str(), Duration::ZERO);
        }
        let errors = m.errors.lock().unwrap_or_else(PoisonError::into_inner);
        for code in ErrorCode::ALL {
            assert_eq!(errors.by_label[code.as_str()], 1, "{}", code.as_str());
        }
        assert_eq!(errors.by_label[OTHER_CODE_LABEL], 5);
    }
}
