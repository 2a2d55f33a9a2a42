//! Where a client is in a channel's stream, and how a recovery went: the
//! types every history backend and the session share (they are part of
//! the client protocol: `since` in a subscribe, `offset`/`epoch` in the
//! answer).

use std::sync::Arc;

/// Largest offset a client may send: offsets are JSON numbers, exact in
/// every client up to 2^53 - 1.
pub const MAX_OFFSET: u64 = (1 << 53) - 1;

/// A position in a channel's stream, as a client sends it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// The last offset the client saw.
    pub offset: u64,
    /// The epoch that offset belongs to.
    pub epoch: String,
}

/// Where a channel's stream is, as a subscribe's answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The last offset handed out (0: nothing published yet).
    pub offset: u64,
    /// The channel's epoch.
    pub epoch: Arc<str>,
    /// With `since`: whether every event after it was replayed.
    pub recovered: Option<bool>,
}

/// How a recovery went (`/metrics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Every event after `since` was replayed.
    Recovered,
    /// Some of them are gone (or `since` is ahead of the channel).
    TooOld,
    /// `since` is from another epoch.
    EpochChanged,
}

impl Outcome {
    /// Its label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Recovered => "recovered",
            Self::TooOld => "too_old",
            Self::EpochChanged => "epoch_changed",
        }
    }
}
