//! A guarantee's verdict, the history's counts, and which error codes mean
//! a request did not take effect.

use std::collections::BTreeMap;

/// Counter-examples kept per guarantee.
const EXAMPLES: usize = 12;

/// How a guarantee fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Every check passed, and there was something to check.
    Holds,
    /// At least one counter-example.
    Violated,
    /// The history cannot decide (e.g. no final read): a failed run.
    Unknown,
}

/// One guarantee's verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Short name.
    pub name: &'static str,
    /// The guarantee, as stated.
    pub statement: &'static str,
    /// How many things were checked (operations, events, reads).
    pub checked: u64,
    /// How many violations.
    pub violations: u64,
    /// The first counter-examples.
    pub examples: Vec<String>,
    /// Why the history cannot decide, if it cannot.
    pub unknown: Option<String>,
}

impl Verdict {
    pub(super) fn new(name: &'static str, statement: &'static str) -> Self {
        Self {
            name,
            statement,
            checked: 0,
            violations: 0,
            examples: Vec::new(),
            unknown: None,
        }
    }

    pub(super) fn violation(&mut self, example: String) {
        self.violations += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(example);
        }
    }

    pub(super) fn cannot_decide(&mut self, why: String) {
        if self.unknown.is_none() {
            self.unknown = Some(why);
        }
    }

    /// The verdict.
    pub fn status(&self) -> Status {
        if self.violations > 0 {
            Status::Violated
        } else if self.unknown.is_some() || self.checked == 0 {
            Status::Unknown
        } else {
            Status::Holds
        }
    }
}

/// What the history holds, counted.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Operations by kind and outcome (`send ok`, `join info`, ...).
    pub ops: BTreeMap<String, u64>,
    /// Indeterminate sends found to have taken effect (in the final
    /// history or a state read) and not found.
    pub indeterminate_sends: (u64, u64),
    /// Events received by subscribers (final reads included).
    pub events: u64,
    /// Recoveries: told `recovered: true`, told `false`.
    pub recoveries: (u64, u64),
    /// Connections opened.
    pub connections: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Error codes and reasons of operations that were not acknowledged.
    pub refusals: BTreeMap<String, u64>,
}

/// Whether an `error` code means the request did not take effect: refused
/// before the handler ran, a `conflict` (nothing was written), or a
/// handler's own rejection (any code Sluice does not define). After
/// `unavailable`, `handler_failed` and `handler_timeout` a request may have
/// taken effect in part (state committed, the publish not stored).
pub fn definite(code: &str) -> bool {
    use sluice_protocol::ErrorCode as E;
    match E::ALL.iter().find(|c| c.as_str() == code) {
        Some(E::Unavailable | E::HandlerFailed | E::HandlerTimeout) => false,
        Some(_) | None => true,
    }
}
