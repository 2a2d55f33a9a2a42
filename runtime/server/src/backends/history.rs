//! The history seam: where a channel's events are kept, with their offsets
//! and epoch, and how a subscriber recovers what it missed.
//!
//! Two implementations: [`super::local_history::LocalHistory`] (memory, or
//! the durable store on one node) and the fleet's JetStream history
//! (`sluice-fleet`). The session reaches either through
//! [`crate::history::History`], which counts recoveries for `/metrics`.
//!
//! A recovery is one call, not "read since" then "join": the events after
//! `since` must reach the subscriber's queue before anything published
//! after them, and the join must happen exactly between the two, under the
//! channel's order (one lock per channel on one node, the channel's relay
//! in a fleet). Splitting it would let a publish fall into the gap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use sluice_config::HistoryConfig;
use sluice_protocol::{self as protocol, Outcome, Position, Since};
use sluice_sandbox::BoxFuture;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::keys::{ChannelKey, Member};

/// A publish could not be made durable, or a history read failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The embedded store failed.
    #[error("history: {0}")]
    Store(#[from] sluice_store::StoreError),
    /// A networked history (JetStream) refused or did not answer.
    #[error("history: {0}")]
    Remote(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Makes a subscribe's answer from the channel's position: queued to the
/// subscriber first, before any replayed event (`None`: no answer).
pub type AckFrame<'a> = Box<dyn FnOnce(&Position) -> Option<String> + Send + 'a>;

/// What a channel keeps now, by channel (`None`: its rule no longer keeps
/// history), for [`HistoryStore::trim`].
pub type RuleOf<'a> = &'a (dyn Fn(&ChannelKey) -> Option<HistoryConfig> + Sync);

/// A subscribe with history: where the channel is, and how the recovery
/// went (`None` without `since`).
#[derive(Debug, Clone)]
pub struct Subscribed {
    /// The channel's position when the subscriber joined.
    pub position: Position,
    /// The recovery's outcome.
    pub outcome: Option<Outcome>,
}

/// A bound on history: channels, and bytes (events, plus
/// [`sluice_config::HISTORY_CHANNEL_COST`] per channel on one node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuota {
    /// Channels with history.
    pub channels: usize,
    /// Bytes of history.
    pub bytes: usize,
}

impl HistoryQuota {
    fn of(q: &sluice_config::Quotas) -> Self {
        Self {
            channels: q.history_channels as usize,
            bytes: q.history_bytes,
        }
    }
}

/// Every bound history is kept within: each tenant's quota
/// (`[tenants.<id>.quotas] history_channels`, `history_bytes`), and the
/// node's (`[store] history_channels`, `history_bytes`).
#[derive(Debug, Clone)]
pub struct HistoryQuotas {
    /// The node's bound, over every tenant.
    pub node: HistoryQuota,
    /// Tenants by id.
    pub tenants: std::collections::HashMap<Arc<str>, HistoryQuota>,
    /// A tenant not listed (the default quotas).
    pub default: HistoryQuota,
}

impl HistoryQuotas {
    /// The bounds `config` sets.
    pub fn from_config(config: &sluice_config::Config) -> Self {
        Self {
            node: HistoryQuota {
                channels: config.store.history_channels as usize,
                bytes: config.store.history_bytes,
            },
            tenants: config
                .tenants
                .iter()
                .map(|(id, t)| (Arc::from(id.as_str()), HistoryQuota::of(&t.quotas)))
                .collect(),
            default: HistoryQuota::of(&sluice_config::Quotas::default()),
        }
    }

    /// A tenant's quota.
    pub fn tenant(&self, id: &str) -> HistoryQuota {
        self.tenants.get(id).copied().unwrap_or(self.default)
    }
}

impl Default for HistoryQuotas {
    fn default() -> Self {
        Self::from_config(&sluice_config::Config::default())
    }
}

/// History held for one tenant, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistorySize {
    /// Channels with a log.
    pub channels: u64,
    /// Events kept.
    pub events: u64,
    /// Bytes of kept events.
    pub bytes: u64,
}

/// Where channel history lives.
pub trait HistoryStore: Send + Sync + 'static {
    /// Append `data` to a channel that keeps history: it gets the channel's
    /// next offset and reaches every subscriber; resolves once it is as
    /// durable as the store promises (fsync on one node, replicated in a
    /// fleet). How many local connections got it.
    fn append<'a>(
        &'a self,
        key: &'a ChannelKey,
        rule: HistoryConfig,
        data: &'a RawValue,
    ) -> BoxFuture<'a, Result<usize, HistoryError>>;

    /// Subscribe `member`: queue `ack(position)`, then (with `since`, when
    /// the epoch matches and nothing after it is gone) every event after
    /// `since` in order, then join the channel. Nothing published meanwhile
    /// is missed or doubled. An error: the channel's position could not be
    /// learnt; nothing was queued and `member` did not join.
    fn subscribe<'a>(
        &'a self,
        key: &'a ChannelKey,
        rule: HistoryConfig,
        since: Option<&'a Since>,
        member: Member,
        ack: AckFrame<'a>,
    ) -> BoxFuture<'a, Result<Subscribed, HistoryError>>;

    /// Drop events past their channel's size or age, and forget logs that
    /// are empty, unused for `idle` and without local subscribers. A store
    /// that trims itself (JetStream) does nothing.
    fn trim<'a>(&'a self, idle: Duration, rule: RuleOf<'a>) -> BoxFuture<'a, ()>;

    /// History held in this process, per tenant.
    fn sizes(&self) -> BTreeMap<Arc<str>, HistorySize>;

    /// The bounds to keep history within from now on (at start and after
    /// every reload).
    fn set_quotas(&self, quotas: HistoryQuotas);

    /// Let pending writes finish and record a clean shutdown.
    fn close(&self);
}

/// A history event's frame: the one place it is built, whether the event
/// was just published, read back from disk or relayed from the fleet.
pub fn event_frame(key: &ChannelKey, data: &RawValue, offset: u64, epoch: &str) -> Utf8Bytes {
    Utf8Bytes::from(protocol::event_at(&key.channel, data, offset, epoch))
}
