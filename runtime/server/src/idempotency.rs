//! Idempotency keys on the message path (see `docs/exactly-once.md`): a
//! route message with a `key` is begun in the node's
//! [`IdempotencyTable`] after it is authorized and validated (a retry
//! passes the same checks as the first attempt; a refusal before the call
//! takes no entry) and before the call:
//!
//! ```text
//! begin(tenant, subject, key, fingerprint)
//!   Run(ticket)   -> call, effects, then the answer is kept (complete) before it is sent;
//!                    a call that failed without effect is abandoned: a retry runs it
//!   Replay(answer) -> the first attempt's answer under this message's id; no call, no effects
//!   Refusal        -> key_reused / too_many_keys (retry_after_ms) / unavailable
//! ```
//!
//! This module holds what the session needs beyond the table: the limits
//! a tenant's configuration gives, which failures leave nothing behind,
//! and the `/metrics` series (one per configured tenant: bounded).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::value::RawValue;
use sluice_config::TenantConfig;
use sluice_idempotency::{DEFAULT_MAX_ENTRIES_PER_SUBJECT, IdempotencyTable, Limits};
use sluice_protocol::{Answer, Code, ErrorCode, Rejection};
use sluice_sandbox::Action;

use crate::metrics::label;
use crate::tenant::Tenant;

pub use sluice_idempotency::{
    Begin, BoxFuture, Claim, EntryId, MemoryOutcomeStore, OutcomeStore, Record, StoreError, Stored,
    SystemClock, Ticket,
};

/// The table's limits for a tenant: its window
/// (`[tenants.<id>.limits] idempotency_window_secs`) and its quota of
/// entries (`[tenants.<id>.quotas] idempotency_keys`; one subject holds at
/// most [`DEFAULT_MAX_ENTRIES_PER_SUBJECT`] of them, never more than the
/// tenant's quota).
pub fn limits(tc: &TenantConfig) -> Limits {
    let keys = tc.quotas.idempotency_keys as usize;
    Limits {
        window: Duration::from_secs(tc.limits.idempotency_window_secs),
        max_entries: keys,
        max_entries_per_subject: DEFAULT_MAX_ENTRIES_PER_SUBJECT.min(keys),
        ..Limits::default()
    }
}

/// The answer a call's refusal leaves under its key, or `None` when the
/// call left nothing behind and a retry must run it: a handler's own
/// rejection (`empty_text`, ...) is an answer; `handler_failed`,
/// `handler_timeout`, `unavailable` and `conflict` mean the call's writes
/// were not committed and nothing was published (the "definite" failures
/// of `docs/faults.md`), so the key is released.
pub fn answer_of_failed_call(rejection: &Rejection) -> Option<Answer> {
    match rejection {
        Rejection::Error {
            code: Code::Handler(_),
            ..
        } => Answer::from_rejection(rejection),
        _ => None,
    }
}

/// The answer a message that ran and applied its effects gets: its `ack`
/// (with the handler's reply), or, when a publish or send failed after the
/// call's state was written, the error that is sent (the effects stay, so
/// a retry gets the same error instead of writing them again).
pub fn answer_after_effects(reply: Option<&serde_json::value::RawValue>, lost: bool) -> Answer {
    if lost {
        Answer::Error {
            code: Code::Host(ErrorCode::Unavailable),
            message: LOST_MESSAGE.into(),
        }
    } else {
        Answer::Ack(reply.map(ToOwned::to_owned))
    }
}

/// The answer written with a keyed call's state, in the same transaction
/// (a store that [`attaches`](sluice_sandbox::StateStore::attaches)),
/// before any effect is applied: the `ack` with its reply when the call
/// publishes and sends nothing (nothing after the commit can change that
/// answer); else the `unavailable` a lost publish gets, which the `ack`
/// replaces once every publish and send went through. So a crash after the
/// commit leaves an answer that is true: the state was written, its events
/// may not have gone out; a retry gets that, and never writes the state a
/// second time. The reply is the first one that is JSON, as
/// [`crate::stages::effects`] takes it.
pub fn answer_before_effects(actions: &[Action]) -> Answer {
    if actions
        .iter()
        .any(|a| matches!(a, Action::Publish(_) | Action::Send(_)))
    {
        return answer_after_effects(None, true);
    }
    let reply = actions.iter().find_map(|a| match a {
        Action::Reply(data) => RawValue::from_string(data.clone()).ok(),
        _ => None,
    });
    answer_after_effects(reply.as_deref(), false)
}

/// A keyed message that ran: its ticket, and the answer written with its
/// state ([`answer_before_effects`]) when the state store keeps one.
pub struct Running {
    /// The key's entry.
    pub ticket: Ticket,
    /// What is on disk with the call's state, if anything.
    pub written: Option<Answer>,
}

impl Running {
    /// Keep `answer` for the key before it is sent: on disk already when it
    /// is the one written with the state, else written now (replacing it).
    pub async fn settle(self, answer: Answer) -> Result<(), StoreError> {
        match self.written {
            Some(written) if written == answer => {
                self.ticket.completed(answer);
                Ok(())
            }
            _ => self.ticket.complete(answer).await,
        }
    }
}

/// What a message whose publish or send failed is told.
pub const LOST_MESSAGE: &str = "an event could not be stored or delivered; it may not have reached every subscriber, try again";

/// The `sluice_idempotency_*` series of `/metrics`: one per configured
/// tenant each, so their number is bounded by the configuration.
pub fn render(table: &IdempotencyTable, tenants: &[(&str, &Tenant)], out: &mut String) {
    type Field = fn(&sluice_idempotency::Counters, &Tenant) -> u64;
    let series: [(&str, &str, &str, Field); 7] = [
        (
            "sluice_idempotency_hits_total",
            "counter",
            "Retries with a key answered with the first attempt's answer, without a call.",
            |c, _| c.hits,
        ),
        (
            "sluice_idempotency_misses_total",
            "counter",
            "Requests with a key that ran (no answer was remembered under it).",
            |_, t| t.metrics.idempotency_misses.load(Ordering::Relaxed),
        ),
        (
            "sluice_idempotency_waits_total",
            "counter",
            "Retries with a key that waited for the first attempt, still running.",
            |c, _| c.waits,
        ),
        (
            "sluice_idempotency_conflicts_total",
            "counter",
            "Requests refused with key_reused (the key was used with another type, channel or data).",
            |c, _| c.conflicts,
        ),
        (
            "sluice_idempotency_refusals_total",
            "counter",
            "Requests refused with too_many_keys (the tenant's or the subject's quota of keys).",
            |c, _| c.refusals,
        ),
        (
            "sluice_idempotency_entries",
            "gauge",
            "Answers (and running requests) remembered under keys.",
            |c, _| c.entries as u64,
        ),
        (
            "sluice_idempotency_bytes",
            "gauge",
            "Bytes the remembered answers count for.",
            |c, _| c.bytes as u64,
        ),
    ];
    let counters: Vec<_> = tenants
        .iter()
        .map(|(id, t)| (*id, *t, table.counters(id)))
        .collect();
    for (name, kind, help, field) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (id, t, c) in &counters {
            let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {}", label(id), field(c, t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_handlers_own_rejection_is_kept() {
        let refused = Rejection::Error {
            code: Code::Handler(sluice_protocol::HandlerCode::new("empty_text").expect("code")),
            message: "say something".into(),
            retry_after_ms: None,
        };
        assert!(matches!(
            answer_of_failed_call(&refused),
            Some(Answer::Error { .. })
        ));
        for code in [
            ErrorCode::HandlerFailed,
            ErrorCode::HandlerTimeout,
            ErrorCode::Unavailable,
            ErrorCode::Conflict,
        ] {
            assert_eq!(
                answer_of_failed_call(&Rejection::error(code, "x")),
                None,
                "{code:?}"
            );
        }
    }

    #[test]
    fn the_answer_written_with_the_state_is_the_ack_only_when_nothing_is_published() {
        let reply = |data: &str| Action::Reply(data.into());
        let ack = |data: Option<&str>| {
            Answer::Ack(data.map(|d| RawValue::from_string(d.into()).expect("json")))
        };
        assert_eq!(answer_before_effects(&[]), ack(None));
        assert_eq!(
            answer_before_effects(&[reply(r#"{"seq":12}"#)]),
            ack(Some(r#"{"seq":12}"#))
        );
        // As the effects stage takes it: the first reply that is JSON.
        assert_eq!(
            answer_before_effects(&[reply("not json"), reply("1"), reply("2")]),
            ack(Some("1"))
        );
        let publish = Action::Publish(sluice_sandbox::Publish {
            channel: "room:1".into(),
            data: "{}".into(),
        });
        assert_eq!(
            answer_before_effects(&[reply("1"), publish]),
            answer_after_effects(None, true),
            "replaced by the ack once the publish went through"
        );
    }

    #[test]
    fn limits_come_from_the_window_and_the_quota() {
        let mut tc: TenantConfig = toml::from_str(
            "auth = { issuer = \"i\", audience = \"a\", keys = [{ algorithm = \"HS256\", secret_env = \"S\" }] }\n[limits]\nidempotency_window_secs = 7\n[quotas]\nidempotency_keys = 50",
        )
        .expect("config");
        let l = limits(&tc);
        assert_eq!(l.window, Duration::from_secs(7));
        assert_eq!((l.max_entries, l.max_entries_per_subject), (50, 50));
        tc.quotas.idempotency_keys = 100_000;
        assert_eq!(limits(&tc).max_entries_per_subject, 1_000);
    }
}
