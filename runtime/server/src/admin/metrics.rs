//! Everything the admin listener exposes on `/metrics`, in the Prometheus
//! text format, read from the server's state: per-tenant counters, JWKS
//! status, history, presence, handler statistics (configured handlers by
//! name, pushed ones per serving version) and accept refusals.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use crate::auth::JwksStatus;
use crate::metrics::{LATENCY_BUCKETS, label};
use crate::state::ServerState;
use crate::tenant::Tenant;

/// How one JWKS gauge reads a tenant's status.
type JwksGauge = fn(&JwksStatus) -> String;

/// The state of every JWKS URL (tenants without one have no series).
fn render_jwks(tenants: &HashMap<String, Arc<Tenant>>, out: &mut String) {
    let mut statuses: Vec<(&String, JwksStatus)> = tenants
        .iter()
        .filter_map(|(id, t)| t.keys.jwks_status().map(|s| (id, s)))
        .collect();
    statuses.sort_by(|a, b| a.0.cmp(b.0));
    let gauges: [(&str, &str, JwksGauge); 5] = [
        (
            "sluice_jwks_last_refresh_age_seconds",
            "Seconds since the tenant's JWKS URL was last refreshed successfully.",
            |s| format!("{:.3}", s.age.as_secs_f64()),
        ),
        (
            "sluice_jwks_refresh_failures",
            "Refreshes of the tenant's JWKS URL that failed since the last successful one.",
            |s| s.consecutive_failures.to_string(),
        ),
        (
            "sluice_jwks_stale",
            "1 while the tenant's JWKS is stale: its last refresh failed and the last good one is several refresh intervals old (/readyz answers 503).",
            |s| u8::from(s.stale).to_string(),
        ),
        (
            "sluice_jwks_keys",
            "Keys of the tenant's JWKS URL in use.",
            |s| s.keys.to_string(),
        ),
        (
            "sluice_jwks_skipped_keys",
            "Keys of the tenant's JWKS URL skipped as unusable at the last successful refresh.",
            |s| s.skipped_keys.to_string(),
        ),
    ];
    for (name, text, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} gauge");
        for (id, status) in &statuses {
            let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {}", label(id), value(status));
        }
    }
}

/// Tenants whose JWKS is stale, sorted (for `/readyz`).
pub fn stale_jwks(state: &ServerState) -> Vec<String> {
    let mut stale: Vec<String> = state
        .tenants()
        .iter()
        .filter(|(_, t)| t.keys.jwks_status().is_some_and(|s| s.stale))
        .map(|(id, _)| id.clone())
        .collect();
    stale.sort();
    stale
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
        "Client messages by outcome: ok, or the error code answered (handler codes past the first 32 of a tenant: other).",
    );
    for (id, t) in tenants.iter() {
        t.metrics.render_messages(id, &mut out);
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
    render_jwks(&tenants, &mut out);
    state.history.render(&mut out);
    state.presence.render(&mut out);
    if let Some(table) = &state.idempotency {
        let mut ids: Vec<(&str, &crate::tenant::Tenant)> = tenants
            .iter()
            .map(|(id, t)| (id.as_str(), t.as_ref()))
            .collect();
        ids.sort_unstable_by_key(|(id, _)| *id);
        crate::idempotency::render(table, &ids, &mut out);
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
    // Every handler's labels and counters, once: the config file's by name,
    // pushed ones per serving version (`version` label).
    let mut handlers: Vec<(String, sluice_sandbox::HandlerStats)> = Vec::new();
    for (id, t) in tenants.iter() {
        for (name, h) in &t.handlers {
            handlers.push((
                format!("tenant=\"{}\",handler=\"{}\"", label(id), label(name)),
                h.stats(),
            ));
        }
        if t.config.managed.is_some() {
            for slot in state.pushed.slots_of(id) {
                let mut loaded = slot.serving();
                loaded.sort_by_key(|(version, _)| *version);
                for (version, handler) in loaded {
                    handlers.push((
                        format!(
                            "tenant=\"{}\",handler=\"{}\",version=\"{version}\"",
                            label(id),
                            label(slot.name()),
                        ),
                        handler.stats(),
                    ));
                }
            }
        }
    }
    help(
        &mut out,
        "sluice_handler_calls_total",
        "counter",
        "Handler calls by outcome: ok, or the sandbox error kind (trap, out_of_fuel, deadline, memory_limit, quarantined, ...). Pushed handlers per version.",
    );
    for (labels, s) in &handlers {
        let _ = writeln!(
            out,
            "sluice_handler_calls_total{{{labels},outcome=\"ok\"}} {}",
            s.ok
        );
        for (kind, n) in &s.errors {
            let _ = writeln!(
                out,
                "sluice_handler_calls_total{{{labels},outcome=\"{}\"}} {n}",
                label(kind)
            );
        }
    }
    help(
        &mut out,
        "sluice_handler_call_seconds",
        "histogram",
        "Duration of handler calls that ran (instantiation included, waiting for a free instance excluded).",
    );
    for (labels, s) in &handlers {
        s.call_seconds.render(
            &mut out,
            "sluice_handler_call_seconds",
            labels,
            &sluice_sandbox::CALL_SECONDS_BUCKETS,
        );
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
    for (labels, s) in &handlers {
        let _ = writeln!(
            out,
            "sluice_handler_fuel_total{{{labels}}} {}",
            s.fuel_consumed
        );
        let _ = writeln!(
            out,
            "sluice_handler_quarantines_total{{{labels}}} {}",
            s.quarantines
        );
    }
    state.refused.render(&mut out);
    out
}
