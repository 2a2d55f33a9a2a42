//! The checker: proves a history against Sluice's guarantees, from the
//! history alone, with a verdict per guarantee and counter-examples.
//!
//! The approach is Jepsen's: an operation that got an answer is either
//! acknowledged (it took effect) or refused with a code that says nothing
//! happened; one that got no answer (a timeout, a lost connection, or a
//! code after which it may have taken effect) is *indeterminate*, and the
//! checker allows it both ways. A final read, made after every fault was
//! healed and the workload stopped, gives each room's whole channel history
//! (a recovery from offset 0) and state, like the final read of Jepsen's set
//! checker; subscribers' views are compared with it, like its queue
//! checker's, and the state's read-modify-writes are checked like a
//! counter whose every increment is unique.
//!
//! - [`publish`]: acknowledged publishes are in the history exactly once;
//!   one event per offset; history order follows real time; every
//!   subscriber sees every event exactly once, in order, across its
//!   recoveries, or was told `recovered: false`.
//! - [`state`]: no lost update, no read of a value never written, no stale
//!   read.

mod model;
pub mod publish;
pub mod state;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

pub use model::{End, Model, Op};

use crate::history::Record;

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
    fn new(name: &'static str, statement: &'static str) -> Self {
        Self {
            name,
            statement,
            checked: 0,
            violations: 0,
            examples: Vec::new(),
            unknown: None,
        }
    }

    fn violation(&mut self, example: String) {
        self.violations += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(example);
        }
    }

    fn cannot_decide(&mut self, why: String) {
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

/// The checker's answer.
#[derive(Debug, Clone)]
pub struct Report {
    /// One verdict per guarantee.
    pub verdicts: Vec<Verdict>,
    /// Counts.
    pub counts: Counts,
}

impl Report {
    /// Whether every guarantee holds.
    pub fn all_hold(&self) -> bool {
        self.verdicts.iter().all(|v| v.status() == Status::Holds)
    }

    /// The verdict named `name`.
    pub fn verdict(&self, name: &str) -> Option<&Verdict> {
        self.verdicts.iter().find(|v| v.name == name)
    }
}

/// Check a history.
pub fn check(records: &[Record]) -> Report {
    let model = Model::build(records);
    let mut verdicts = publish::check(&model);
    verdicts.extend(state::check(&model));
    let mut counts = model.counts();
    counts.indeterminate_sends = state::indeterminate_sends(&model);
    Report { verdicts, counts }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        writeln!(f, "Operations:")?;
        for (k, n) in &c.ops {
            writeln!(f, "  {k:<14} {n}")?;
        }
        if !c.refusals.is_empty() {
            let list: Vec<String> = c.refusals.iter().map(|(k, n)| format!("{k} {n}")).collect();
            writeln!(f, "  not acknowledged: {}", list.join(", "))?;
        }
        writeln!(
            f,
            "  indeterminate sends: {} took effect, {} not seen",
            c.indeterminate_sends.0, c.indeterminate_sends.1
        )?;
        writeln!(
            f,
            "Events checked: {}; connections: {}; recoveries: {} recovered, {} told recovered:false",
            c.events, c.connections, c.recoveries.0, c.recoveries.1
        )?;
        let faults: Vec<String> = c.faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(
            f,
            "Faults injected: {}",
            if faults.is_empty() {
                "none".to_owned()
            } else {
                faults.join(", ")
            }
        )?;
        writeln!(f, "Verdicts:")?;
        for v in &self.verdicts {
            let status = match v.status() {
                Status::Holds => "holds",
                Status::Violated => "VIOLATED",
                Status::Unknown => "UNKNOWN",
            };
            writeln!(
                f,
                "  {status:<8} {:<28} ({} checked, {} violations) {}",
                v.name, v.checked, v.violations, v.statement
            )?;
            if let Some(why) = &v.unknown {
                writeln!(f, "           cannot decide: {why}")?;
            }
            for e in &v.examples {
                writeln!(f, "           - {e}")?;
            }
        }
        Ok(())
    }
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
