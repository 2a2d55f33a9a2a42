//! A tenant's limits on remembered answers, and their defaults.

use std::time::Duration;

/// How long an answer is remembered from the first attempt
/// (`idempotency_window_secs`).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
/// Entries a tenant may hold at once (all its subjects together).
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
/// Bytes a tenant's entries may count for (see [`ENTRY_OVERHEAD_BYTES`]).
pub const DEFAULT_MAX_BYTES: usize = 16 << 20;
/// Entries one subject may hold at once: one subject cannot use up its
/// tenant's quota (3.3 keyed requests a second, sustained over the window).
pub const DEFAULT_MAX_ENTRIES_PER_SUBJECT: usize = 1_000;
/// How long a node's claim on a running request holds in a shared store:
/// longer than any call's hard deadline. A retry on another node waits at
/// most this for an attempt whose node died.
pub const DEFAULT_IN_FLIGHT_LEASE: Duration = Duration::from_secs(30);
/// How often a retry polls a shared store for another node's attempt.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// What an entry counts for beyond its subject, key and answer: the
/// fingerprint, times, map and index slots.
pub const ENTRY_OVERHEAD_BYTES: usize = 160;

/// A tenant's limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How long an answer is remembered ([`DEFAULT_WINDOW`]).
    pub window: Duration,
    /// Entries the tenant may hold ([`DEFAULT_MAX_ENTRIES`]).
    pub max_entries: usize,
    /// Bytes they may count for ([`DEFAULT_MAX_BYTES`]): subject, key and
    /// answer, plus [`ENTRY_OVERHEAD_BYTES`] each. Checked when a request
    /// begins; its answer is added when it completes, so concurrent calls
    /// may overshoot by their answers' size.
    pub max_bytes: usize,
    /// Entries one subject may hold ([`DEFAULT_MAX_ENTRIES_PER_SUBJECT`]).
    pub max_entries_per_subject: usize,
    /// See [`DEFAULT_IN_FLIGHT_LEASE`].
    pub in_flight_lease: Duration,
    /// See [`DEFAULT_POLL_INTERVAL`].
    pub poll_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_bytes: DEFAULT_MAX_BYTES,
            max_entries_per_subject: DEFAULT_MAX_ENTRIES_PER_SUBJECT,
            in_flight_lease: DEFAULT_IN_FLIGHT_LEASE,
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }
}
