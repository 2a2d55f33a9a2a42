//! Channel history as the session uses it: offsets, epochs and recovery of
//! missed events, over whichever [`HistoryStore`] this node was built with
//! (memory, the durable store, or JetStream in a fleet), with the
//! recovery outcomes counted for `/metrics`.
//!
//! A channel whose rule keeps history (`history = { size, ttl_secs }`) has
//! a log: its epoch, the last offset handed out, and its last events. Every
//! event published on it gets the next offset and carries `offset` and
//! `epoch`. The publisher's `ack` waits until the event is durable;
//! subscribers get it at once. The epoch changes whenever the history was
//! lost, so a client's old position then fails to recover.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::value::RawValue;
use sluice_config::HistoryConfig;
use sluice_protocol::{Outcome, Position, Since};

use crate::backends::history::{AckFrame, HistoryError, HistoryStore, RuleOf};
use crate::backends::keys::{ChannelKey, Member};
use crate::metrics::{label, tenant_series};

/// Every channel's history.
pub struct History {
    store: Arc<dyn HistoryStore>,
    outcomes: Mutex<BTreeMap<(Arc<str>, Outcome), u64>>,
}

impl History {
    /// History kept by `store`.
    pub fn new(store: Arc<dyn HistoryStore>) -> Self {
        Self {
            store,
            outcomes: Mutex::new(BTreeMap::new()),
        }
    }

    /// Publish `data` on a channel that keeps history: the next offset,
    /// kept, delivered to every subscriber, and durable before this
    /// returns. How many local connections got it.
    pub async fn publish(
        &self,
        key: &ChannelKey,
        rule: HistoryConfig,
        data: &RawValue,
    ) -> Result<usize, HistoryError> {
        self.store.append(key, rule, data).await
    }

    /// Subscribe `member` to a channel that keeps history, recovering what
    /// came after `since` (see [`HistoryStore::subscribe`]).
    pub async fn subscribe(
        &self,
        key: &ChannelKey,
        rule: HistoryConfig,
        since: Option<&Since>,
        member: Member,
        ack: AckFrame<'_>,
    ) -> Result<Position, HistoryError> {
        let subscribed = self.store.subscribe(key, rule, since, member, ack).await?;
        if let Some(o) = subscribed.outcome {
            *self
                .outcomes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry((key.tenant.clone(), o))
                .or_default() += 1;
        }
        Ok(subscribed.position)
    }

    /// The bounds to keep history within (at start and after a reload).
    pub fn set_quotas(&self, quotas: crate::backends::history::HistoryQuotas) {
        self.store.set_quotas(quotas);
    }

    /// Drop expired events and forget idle logs (the sweeper).
    pub async fn sweep(&self, idle: Duration, rule: RuleOf<'_>) {
        self.store.trim(idle, rule).await;
    }

    /// The history series of `/metrics`.
    pub fn render(&self, out: &mut String) {
        let sizes = self.store.sizes();
        type Field = fn(&crate::backends::history::HistorySize) -> u64;
        let series: [(&str, &str, Field); 3] = [
            (
                "sluice_history_channels",
                "Channels with history, per tenant.",
                |s| s.channels,
            ),
            (
                "sluice_history_events",
                "Events kept in channel history, per tenant.",
                |s| s.events,
            ),
            (
                "sluice_history_bytes",
                "Bytes of channel history in memory, per tenant.",
                |s| s.bytes,
            ),
        ];
        for (name, help, field) in series {
            let rows = sizes.iter().map(|(t, s)| (&**t, field(s)));
            tenant_series(out, (name, "gauge", help), rows);
        }
        let _ = writeln!(
            out,
            "# HELP sluice_recoveries_total Subscribes with `since`, by outcome.\n# TYPE sluice_recoveries_total counter"
        );
        for ((tenant, outcome), n) in self
            .outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "sluice_recoveries_total{{tenant=\"{}\",outcome=\"{}\"}} {n}",
                label(tenant),
                outcome.label()
            );
        }
    }

    /// Let the store finish what it is writing and record a clean shutdown.
    pub fn close(&self) {
        self.store.close();
    }
}
