//! What verification of a pushed component found: each check, each smoke
//! call, the whole report (returned by a push and kept with the version).

use serde::{Deserialize, Serialize};

/// How a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Passed.
    Pass,
    /// Failed: the component is refused.
    Fail,
    /// Not reached (an earlier check failed).
    Skipped,
}

/// One check.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Check {
    /// `size`, `component`, `limits`, `compile`, `memory`, `world`,
    /// `imports`, `samples` or `smoke`.
    pub name: String,
    /// How it ended.
    pub status: Status,
    /// What it found.
    pub detail: String,
}

/// One smoke call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SmokeCall {
    /// `on-connect`, `on-message` or `on-disconnect`.
    pub export: String,
    /// The sample's route (on-message).
    #[serde(default)]
    pub route: Option<String>,
    /// `ok`, `rejected: <code>`, or the failure.
    pub outcome: String,
    /// Whether it counts as passed (answered, or refused by the handler's
    /// own error code).
    pub passed: bool,
    /// Actions returned.
    pub actions: usize,
    /// Fuel spent.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Wall-clock time, microseconds (instantiation included when it made one).
    pub elapsed_us: u64,
    /// Linear memory held when it ended, bytes.
    pub memory_bytes: u64,
}

/// A verification report, returned by a push and kept with the version.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Every check passed.
    pub passed: bool,
    /// SHA-256 of the component, hex.
    pub digest: String,
    /// Bytes.
    pub size: usize,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// The smoke calls.
    pub smoke: Vec<SmokeCall>,
    /// How long verification took, compile included, ms.
    pub took_ms: u64,
}
