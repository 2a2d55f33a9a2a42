//! Shadow mode: a copy of each message runs on the shadow version as a
//! rehearsal (its state writes dropped, its actions never applied), just
//! before stable answers it, so both read the same state. What each
//! proposed is compared; where they diverge is counted and the latest
//! divergences are kept for the diff report.

use std::collections::VecDeque;

use serde::Serialize;
use serde_json::{Value, json};
use sluice_sandbox::{Action, CallError, CallErrorKind, CallOutcome};

/// Divergences kept per shadow version (the latest).
pub const KEPT_DIVERGENCES: usize = 20;

/// How the shadow version compares with stable.
#[derive(Clone, Debug, Serialize)]
pub struct ShadowReport {
    /// The shadow version these figures are about.
    pub version: Option<u32>,
    /// Messages run on both.
    pub compared: u64,
    /// Messages where both proposed the same.
    pub same: u64,
    /// Messages where they did not.
    pub diverged: u64,
    /// Of those, messages the shadow failed (trap, fuel, deadline...) and
    /// stable did not.
    pub shadow_failed: u64,
    /// The latest divergences, oldest first.
    pub divergences: VecDeque<Divergence>,
}

/// One message where stable and shadow disagreed.
#[derive(Clone, Debug, Serialize)]
pub struct Divergence {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The message's route.
    pub route: String,
    /// What stable proposed (applied).
    pub stable: Value,
    /// What the shadow proposed (never applied).
    pub shadow: Value,
}

impl ShadowReport {
    /// Empty figures for `version`.
    pub fn new(version: Option<u32>) -> Self {
        Self {
            version,
            compared: 0,
            same: 0,
            diverged: 0,
            shadow_failed: 0,
            divergences: VecDeque::new(),
        }
    }

    /// Count one message.
    pub fn compare(
        &mut self,
        route: &str,
        stable: &Result<CallOutcome, CallError>,
        shadow: &Result<CallOutcome, CallError>,
    ) {
        self.compared += 1;
        let (s, h) = (outcome_json(stable), outcome_json(shadow));
        if s == h {
            self.same += 1;
            return;
        }
        self.diverged += 1;
        if shadow.as_ref().is_err_and(|e| e.kind.is_handler_failure())
            && !stable.as_ref().is_err_and(|e| e.kind.is_handler_failure())
        {
            self.shadow_failed += 1;
        }
        if self.divergences.len() == KEPT_DIVERGENCES {
            self.divergences.pop_front();
        }
        self.divergences.push_back(Divergence {
            at_ms: crate::audit::now_ms(),
            route: route.to_owned(),
            stable: s,
            shadow: h,
        });
    }
}

/// A call's outcome as JSON: `{"actions": [...]}`, `{"rejected": code}` or
/// `{"failed": kind}`.
pub fn outcome_json(r: &Result<CallOutcome, CallError>) -> Value {
    match r {
        Ok(o) => json!({ "actions": o.actions.iter().map(action_json).collect::<Vec<_>>() }),
        Err(e) => match &e.kind {
            CallErrorKind::Rejected { code, message } => {
                json!({ "rejected": code.as_str(), "message": message })
            }
            kind => json!({ "failed": kind.name() }),
        },
    }
}

/// An action as JSON, with its JSON-text payloads parsed back into values
/// (`sluice call` prints the same).
pub fn action_json(action: &Action) -> Value {
    fn data(text: &str) -> Value {
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
    }
    match action {
        Action::Reply(d) => json!({ "reply": data(d) }),
        Action::Publish(p) => json!({ "publish": { "channel": p.channel, "data": data(&p.data) } }),
        Action::Send(s) => json!({ "send": { "subject": s.subject, "data": data(&s.data) } }),
        Action::Subscribe(c) => json!({ "subscribe": c }),
        Action::SubscribeSince(r) => {
            json!({ "subscribe": r.channel, "since": { "offset": r.since.offset, "epoch": r.since.epoch } })
        }
        Action::Unsubscribe(c) => json!({ "unsubscribe": c }),
        Action::Close(c) => json!({ "close": { "code": c.code, "reason": c.reason } }),
    }
}
