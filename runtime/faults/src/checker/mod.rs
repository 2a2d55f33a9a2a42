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
mod verdict;

use std::fmt;

pub use model::{End, Model, Op};
pub use verdict::{Counts, Status, Verdict, definite};

use crate::history::Record;

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
