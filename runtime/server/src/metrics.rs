//! Per-tenant counters and the Prometheus text rendering of everything the
//! admin listener exposes. Plain atomics: recording is a few relaxed adds on
//! the hot path.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sluice_sandbox::Histogram;

use super::ServerState;

/// Upper bounds (seconds) of the message latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Counters of one tenant.
pub struct TenantMetrics {
    messages_ok: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    closes: Mutex<BTreeMap<u16, u64>>,
    latency: Histogram,
    refused_actions: AtomicU64,
}

impl TenantMetrics {
    /// A message answered with an `ack`, after `took`.
    pub fn message_ok(&self, took: Duration) {
        self.messages_ok.fetch_add(1, Ordering::Relaxed);
        self.observe(took);
    }

    /// A message answered with an `error` frame of `code`.
    pub fn message_error(&self, code: &str, took: Duration) {
        *self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(code.to_owned())
            .or_default() += 1;
        self.observe(took);
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
            errors: Mutex::new(BTreeMap::new()),
            closes: Mutex::new(BTreeMap::new()),
            latency: Histogram::new(&LATENCY_BUCKETS),
            refused_actions: AtomicU64::new(0),
        }
    }
}

/// Escape a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Everything, in the Prometheus text exposition format.
pub fn render(state: &ServerState) -> String {
    let tenants = state.tenants();
    let mut out = String::new();
    let help = |out: &mut String, name: &str, kind: &str, text: &str| {
        let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
    };
    help(&mut out, "sluice_connections", "gauge", "Open connections.");
    for (id, t) in tenants.iter() {
        let _ = writeln!(
            out,
            "sluice_connections{{tenant=\"{}\"}} {}",
            label(id),
            t.connections.count(&())
        );
    }
    help(
        &mut out,
        "sluice_messages_total",
        "counter",
        "Client messages by outcome: ok, or the error code answered.",
    );
    for (id, t) in tenants.iter() {
        let m = &t.metrics;
        let _ = writeln!(
            out,
            "sluice_messages_total{{tenant=\"{}\",outcome=\"ok\"}} {}",
            label(id),
            m.messages_ok.load(Ordering::Relaxed)
        );
        for (code, n) in m
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "sluice_messages_total{{tenant=\"{}\",outcome=\"{}\"}} {n}",
                label(id),
                label(code)
            );
        }
    }
    help(
        &mut out,
        "sluice_closes_total",
        "counter",
        "Connections closed by the server, by close code (1008 expiry/abuse, 1013 slow consumer, ...).",
    );
    for (id, t) in tenants.iter() {
        for (code, n) in t
            .metrics
            .closes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "sluice_closes_total{{tenant=\"{}\",code=\"{code}\"}} {n}",
                label(id)
            );
        }
    }
    help(
        &mut out,
        "sluice_refused_actions_total",
        "counter",
        "Actions returned by handlers and refused by the host.",
    );
    for (id, t) in tenants.iter() {
        let _ = writeln!(
            out,
            "sluice_refused_actions_total{{tenant=\"{}\"}} {}",
            label(id),
            t.metrics.refused_actions.load(Ordering::Relaxed)
        );
    }
    help(
        &mut out,
        "sluice_message_seconds",
        "histogram",
        "Time from a message's arrival to its answer.",
    );
    for (id, t) in tenants.iter() {
        let labels = format!("tenant=\"{}\"", label(id));
        t.metrics.latency.snapshot().render(
            &mut out,
            "sluice_message_seconds",
            &labels,
            &LATENCY_BUCKETS,
        );
    }
    help(
        &mut out,
        "sluice_handler_calls_total",
        "counter",
        "Handler calls by outcome: ok, or the sandbox error kind (trap, out_of_fuel, deadline, memory_limit, quarantined, ...).",
    );
    for (id, t) in tenants.iter() {
        for (name, h) in &t.handlers {
            let s = h.stats();
            let _ = writeln!(
                out,
                "sluice_handler_calls_total{{tenant=\"{}\",handler=\"{}\",outcome=\"ok\"}} {}",
                label(id),
                label(name),
                s.ok
            );
            for (kind, n) in &s.errors {
                let _ = writeln!(
                    out,
                    "sluice_handler_calls_total{{tenant=\"{}\",handler=\"{}\",outcome=\"{}\"}} {n}",
                    label(id),
                    label(name),
                    label(kind)
                );
            }
        }
    }
    help(
        &mut out,
        "sluice_handler_call_seconds",
        "histogram",
        "Duration of handler calls that ran (instantiation included, waiting for a free instance excluded).",
    );
    for (id, t) in tenants.iter() {
        for (name, h) in &t.handlers {
            let s = h.stats();
            let labels = format!("tenant=\"{}\",handler=\"{}\"", label(id), label(name));
            s.call_seconds.render(
                &mut out,
                "sluice_handler_call_seconds",
                &labels,
                &sluice_sandbox::CALL_SECONDS_BUCKETS,
            );
        }
    }
    help(
        &mut out,
        "sluice_handler_fuel_total",
        "counter",
        "Fuel spent by handler calls.",
    );
    help(
        &mut out,
        "sluice_handler_quarantines_total",
        "counter",
        "Times a handler was quarantined.",
    );
    for (id, t) in tenants.iter() {
        for (name, h) in &t.handlers {
            let s = h.stats();
            let _ = writeln!(
                out,
                "sluice_handler_fuel_total{{tenant=\"{}\",handler=\"{}\"}} {}",
                label(id),
                label(name),
                s.fuel_consumed
            );
            let _ = writeln!(
                out,
                "sluice_handler_quarantines_total{{tenant=\"{}\",handler=\"{}\"}} {}",
                label(id),
                label(name),
                s.quarantines
            );
        }
    }
    state.refused.render(&mut out);
    out
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

    fn render(&self, out: &mut String) {
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
