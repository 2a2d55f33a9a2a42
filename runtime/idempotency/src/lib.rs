//! The idempotency table: what makes a retried request take effect once.
//!
//! A client gives a request a `key` (see `sluice_protocol::is_valid_key`);
//! the server asks the table before running it:
//!
//! ```text
//! begin(tenant, subject, key, fingerprint)
//!   nothing remembered           -> Run(ticket): run it, then ticket.complete(answer)
//!                                   (or abandon: no effect, a retry runs it)
//!   the same request, answered   -> Replay(answer): send it under the retry's id, run nothing
//!   the same request, running    -> wait for it, then Replay(answer)
//!                                   (or, if it ends without an answer, Run)
//!   another request, same key    -> Refusal::KeyReused   (`key_reused`)
//!   the tenant's quota is full   -> Refusal::TooManyKeys (`too_many_keys`, retry_after_ms)
//! ```
//!
//! Entries are kept per (tenant, subject, key): a subject's keys never
//! reach another subject's answers. Each lasts `window` from its first
//! attempt (default 300 s), counts against its tenant's quota of entries
//! and bytes and its subject's share, and is counted (hits, waits,
//! conflicts, evictions, refusals).
//!
//! Answers are also written to an [`OutcomeStore`], where a restart or
//! another node of a fleet finds them. Time comes from a [`Clock`], so
//! expiry is tested without sleeping.
//!
//! The crate knows the protocol (answers, fingerprints, error codes) and
//! tokio's sync primitives; nothing of the server, the sandbox or NATS.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod clock;
mod limits;
mod store;
mod table;

#[cfg(test)]
mod tests;

pub use clock::{Clock, ManualClock, SystemClock};
pub use limits::{
    DEFAULT_IN_FLIGHT_LEASE, DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_ENTRIES_PER_SUBJECT, DEFAULT_POLL_INTERVAL, DEFAULT_WINDOW, ENTRY_OVERHEAD_BYTES,
    Limits,
};
pub use store::{
    BoxFuture, Claim, EntryId, MemoryOutcomeStore, OutcomeStore, Record, StoreError, Stored,
};
pub use table::{Begin, Counters, IdempotencyTable, Refusal, Ticket};
