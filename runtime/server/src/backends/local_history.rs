//! Channel history on one node: in memory, or in the durable store
//! (`sluice-store`).
//!
//! A channel whose rule keeps history (`history = { size, ttl_secs }`) has
//! a log: its epoch, the last offset handed out, and its last events, in
//! memory and (with the durable store) on disk. Every event published on it
//! gets the next offset and carries `offset` and `epoch`.
//!
//! One lock per channel orders everything: a publish takes it to assign
//! the offset, keep the event, queue its durable write and deliver it; a
//! subscribe with `since` takes it to queue the ack and the missed events
//! to the connection and join the channel. So a resubscribe that races
//! publishes sees every event exactly once, in order: each one either
//! before the lock (replayed) or after (delivered live).
//!
//! The publisher's `ack` waits until the event is on disk; subscribers get
//! it at once. Offsets handed out but not yet written when the process
//! died are never handed out again: after an unclean shutdown every
//! channel's offsets jump by [`sluice_store::UNCLEAN_OFFSET_JUMP`].
//!
//! The epoch changes whenever the history was lost: the store was wiped,
//! the channel sat empty past its TTL and was forgotten, or its history
//! was dropped to keep a bound.
//!
//! Bounded across channels: each tenant's history (`[tenants.<id>.quotas]
//! history_channels`, `history_bytes`) and the node's (`[store]
//! history_channels`, `history_bytes`), bytes counting every channel's
//! fixed cost ([`HISTORY_CHANNEL_COST`]) besides its events. Channels are
//! kept in least-recently-used order per tenant; past its quota a tenant
//! loses its least recently used channel's history (a channel alone over
//! it loses its oldest events), and past the node's bound the tenant
//! holding the most loses first. So a tenant publishing to a fresh
//! channel per message only ever evicts its own history.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use sluice_config::{HISTORY_CHANNEL_COST, HistoryConfig};
use sluice_protocol::{Outcome, Position, Since};
use sluice_sandbox::BoxFuture;
use sluice_store::{ChannelHistory, Entry, Store};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::broker::Broker;
use super::history::{
    AckFrame, HistoryError, HistoryQuota, HistoryQuotas, HistorySize, HistoryStore, RuleOf,
    Subscribed, event_frame,
};
use super::keys::{ChannelKey, Member};

/// A kept event.
struct Kept {
    offset: u64,
    unix_ms: u64,
    frame: Utf8Bytes,
}

/// One channel's log.
struct Log {
    epoch: Arc<str>,
    last_offset: u64,
    /// Every offset up to this one is gone from the log (trimmed by size or
    /// age, or never written before a crash): recovery from an earlier
    /// position is impossible.
    gone_through: u64,
    entries: VecDeque<Kept>,
    bytes: usize,
    /// When the log was last published to or subscribed to.
    used: Instant,
    /// Whether the store has a record of this channel.
    stored: bool,
    /// Its place in its tenant's least-recently-used order.
    tick: u64,
    /// Dropped to keep a bound: whoever holds it looks the channel up
    /// again (and gets a new log).
    evicted: bool,
}

impl Log {
    fn new(tick: u64) -> Self {
        Self {
            epoch: new_epoch(),
            last_offset: 0,
            gone_through: 0,
            entries: VecDeque::new(),
            bytes: 0,
            used: Instant::now(),
            stored: false,
            tick,
            evicted: false,
        }
    }

    /// Drop the oldest events until at most `bytes` are kept.
    fn trim_bytes(&mut self, bytes: usize) {
        while self.bytes > bytes {
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= e.frame.len();
            self.gone_through = e.offset;
        }
    }

    /// Drop the oldest events past `size` or older than `ttl`; the last
    /// offset dropped, if any.
    fn trim(&mut self, size: usize, oldest_ms: u64) -> Option<u64> {
        let mut dropped = None;
        while let Some(front) = self.entries.front() {
            if self.entries.len() <= size && front.unix_ms >= oldest_ms {
                break;
            }
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= e.frame.len();
                self.gone_through = e.offset;
                dropped = Some(e.offset);
            }
        }
        dropped
    }
}

/// One tenant's history on this node.
#[derive(Default)]
struct Usage {
    channels: usize,
    /// Events' bytes, and [`HISTORY_CHANNEL_COST`] per channel.
    bytes: usize,
    /// Its channels, least recently used first, by tick.
    lru: BTreeMap<u64, Arc<str>>,
}

/// What every tenant holds, and the bounds.
#[derive(Default)]
struct Accounts {
    next_tick: u64,
    tenants: HashMap<Arc<str>, Usage>,
    node: Usage,
    quotas: HistoryQuotas,
}

/// What to do to get back within the bounds.
enum Over {
    /// Drop this channel's history.
    Drop(ChannelKey),
    /// The tenant has this one channel and it is over on its own: keep at
    /// most this many bytes of its events.
    Trim(ChannelKey, usize),
}

impl Accounts {
    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    fn created(&mut self, key: &ChannelKey) -> u64 {
        let tick = self.tick();
        let u = self.tenants.entry(key.tenant.clone()).or_default();
        u.channels += 1;
        u.bytes += HISTORY_CHANNEL_COST;
        u.lru.insert(tick, Arc::from(key.channel.as_ref()));
        self.node.channels += 1;
        self.node.bytes += HISTORY_CHANNEL_COST;
        tick
    }

    fn touched(&mut self, key: &ChannelKey, old: u64) -> u64 {
        let tick = self.tick();
        if let Some(u) = self.tenants.get_mut(&key.tenant)
            && let Some(name) = u.lru.remove(&old)
        {
            u.lru.insert(tick, name);
        }
        tick
    }

    fn resized(&mut self, tenant: &Arc<str>, before: usize, after: usize) {
        let u = self.tenants.entry(tenant.clone()).or_default();
        u.bytes = (u.bytes + after).saturating_sub(before);
        self.node.bytes = (self.node.bytes + after).saturating_sub(before);
    }

    fn removed(&mut self, key: &ChannelKey, tick: u64, bytes: usize) {
        let cost = bytes + HISTORY_CHANNEL_COST;
        if let Some(u) = self.tenants.get_mut(&key.tenant) {
            u.lru.remove(&tick);
            u.channels = u.channels.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(cost);
            if u.channels == 0 {
                self.tenants.remove(&key.tenant);
            }
        }
        self.node.channels = self.node.channels.saturating_sub(1);
        self.node.bytes = self.node.bytes.saturating_sub(cost);
    }

    /// The first step back within the bounds after `tenant` grew, if any
    /// bound is passed: the tenant's own quota first, then the node's,
    /// taken from the tenant holding the most.
    fn over(&self, tenant: &Arc<str>) -> Option<Over> {
        let over = |u: &Usage, q: HistoryQuota| u.channels > q.channels || u.bytes > q.bytes;
        let quota = self.quotas.tenant(tenant);
        let (victim, bound) = match self.tenants.get(tenant) {
            Some(u) if over(u, quota) => (tenant.clone(), quota),
            _ if over(&self.node, self.quotas.node) => {
                let by_channels = self.node.channels > self.quotas.node.channels;
                let (id, _) = self
                    .tenants
                    .iter()
                    .max_by_key(|(_, u)| if by_channels { u.channels } else { u.bytes })?;
                let u = &self.tenants[id];
                // What the tenant may keep so that the node is back within.
                let excess = self.node.bytes.saturating_sub(self.quotas.node.bytes);
                let bound = HistoryQuota {
                    channels: u.channels.saturating_sub(1),
                    bytes: u.bytes.saturating_sub(excess),
                };
                (id.clone(), bound)
            }
            _ => return None,
        };
        let u = self.tenants.get(&victim)?;
        let (_, channel) = u.lru.first_key_value()?;
        let key = ChannelKey::new(&victim, channel);
        if u.channels > 1 {
            Some(Over::Drop(key))
        } else {
            Some(Over::Trim(
                key,
                bound.bytes.saturating_sub(HISTORY_CHANNEL_COST),
            ))
        }
    }
}

/// Steps taken to get back within the bounds after one append, at most: a
/// bound passed by more is caught up by the next appends.
const MAX_EVICTIONS_PER_APPEND: usize = 16;

/// Every channel's history on this node.
pub struct LocalHistory {
    /// Who delivers a published event to its subscribers.
    broker: Arc<dyn Broker>,
    store: Option<Arc<Store>>,
    logs: Mutex<HashMap<ChannelKey, Arc<tokio::sync::Mutex<Log>>>>,
    accounts: Mutex<Accounts>,
}

static EPOCHS: AtomicU64 = AtomicU64::new(0);

/// A new epoch: unique per process start and channel creation.
fn new_epoch() -> Arc<str> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = EPOCHS.fetch_add(1, Ordering::Relaxed);
    // Mixed so that epochs do not look like (or sort as) times.
    let mixed = (nanos ^ n.rotate_left(40)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Arc::from(format!("{mixed:016x}"))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl LocalHistory {
    /// History kept in memory only, delivered by `broker`.
    pub fn in_memory(broker: Arc<dyn Broker>) -> Self {
        Self {
            broker,
            store: None,
            logs: Mutex::new(HashMap::new()),
            accounts: Mutex::default(),
        }
    }

    /// History backed by `store`, starting from what it read back, delivered
    /// by `broker`. `unclean`: the last run crashed, so offsets jump.
    /// `channels` come most recently published first (as
    /// [`Store::open_bounded`] reads them back).
    pub fn durable(
        broker: Arc<dyn Broker>,
        store: Arc<Store>,
        channels: Vec<ChannelHistory>,
        unclean: bool,
    ) -> Self {
        let jump = if unclean {
            sluice_store::UNCLEAN_OFFSET_JUMP
        } else {
            0
        };
        let mut logs = HashMap::new();
        let mut accounts = Accounts::default();
        // The oldest first, so that they are the first to go.
        for ch in channels.into_iter().rev() {
            let tenant: Arc<str> = Arc::from(ch.tenant.as_str());
            let key = ChannelKey::new(&tenant, &ch.channel);
            let mut log = Log {
                epoch: Arc::from(ch.epoch.as_str()),
                last_offset: ch.last_offset,
                gone_through: ch.entries.first().map_or(ch.last_offset, |e| e.offset - 1),
                entries: VecDeque::with_capacity(ch.entries.len()),
                bytes: 0,
                used: Instant::now(),
                stored: true,
                tick: accounts.created(&key),
                evicted: false,
            };
            for e in ch.entries {
                let Ok(data) = std::str::from_utf8(&e.data)
                    .map_err(|_| ())
                    .and_then(|t| serde_json::from_str::<&RawValue>(t).map_err(|_| ()))
                else {
                    continue;
                };
                let key = ChannelKey::new(&tenant, &ch.channel);
                let frame = event_frame(&key, data, e.offset, &log.epoch);
                log.bytes += frame.len();
                log.entries.push_back(Kept {
                    offset: e.offset,
                    unix_ms: e.unix_ms,
                    frame,
                });
            }
            // Offsets past the last one written may have been delivered
            // live before the crash: never hand them out again. Resuming
            // from any of them is fine (nothing after them was kept).
            log.last_offset += jump;
            accounts.resized(&tenant, 0, log.bytes);
            logs.insert(key, Arc::new(tokio::sync::Mutex::new(log)));
        }
        Self {
            broker,
            store: Some(store),
            logs: Mutex::new(logs),
            accounts: Mutex::new(accounts),
        }
    }

    fn accounts(&self) -> std::sync::MutexGuard<'_, Accounts> {
        self.accounts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every log, taken out of the map's lock (each log has its own).
    fn snapshot(&self) -> Vec<(ChannelKey, Arc<tokio::sync::Mutex<Log>>)> {
        self.logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn log(&self, key: &ChannelKey) -> Arc<tokio::sync::Mutex<Log>> {
        if let Some(log) = self
            .logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return log.clone();
        }
        let tick = self.accounts().created(key);
        let mut logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        match logs.get(key) {
            Some(log) => {
                // Another task made it meanwhile: this one was never used.
                let log = log.clone();
                drop(logs);
                self.accounts().removed(key, tick, 0);
                log
            }
            None => {
                let log = Arc::new(tokio::sync::Mutex::new(Log::new(tick)));
                logs.insert(key.clone(), log.clone());
                log
            }
        }
    }

    /// The channel's log, locked, never one dropped meanwhile; marked as
    /// used now.
    async fn locked(&self, key: &ChannelKey) -> tokio::sync::OwnedMutexGuard<Log> {
        loop {
            let log = self.log(key).lock_owned().await;
            if !log.evicted {
                let mut log = log;
                log.used = Instant::now();
                log.tick = self.accounts().touched(key, log.tick);
                return log;
            }
        }
    }

    /// Get back within the bounds after `tenant`'s history grew: drop
    /// least recently used channels (their records on disk too), or trim
    /// a channel over a bound on its own.
    async fn keep_within(&self, tenant: &Arc<str>) {
        for _ in 0..MAX_EVICTIONS_PER_APPEND {
            let Some(over) = self.accounts().over(tenant) else {
                return;
            };
            let key = match &over {
                Over::Drop(k) | Over::Trim(k, _) => k.clone(),
            };
            let found = self
                .logs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key)
                .cloned();
            let Some(log) = found else {
                // Gone meanwhile, without telling the accounts: forget it.
                let mut a = self.accounts();
                let tick = a
                    .tenants
                    .get(&key.tenant)
                    .and_then(|u| {
                        u.lru
                            .iter()
                            .find(|(_, c)| c.as_ref() == key.channel.as_ref())
                    })
                    .map(|(t, _)| *t);
                if let Some(t) = tick {
                    a.removed(&key, t, 0);
                }
                continue;
            };
            let mut l = log.clone().lock_owned().await;
            if l.evicted {
                continue;
            }
            let write = match over {
                Over::Trim(_, keep) => {
                    let before = l.bytes;
                    l.trim_bytes(keep);
                    self.accounts().resized(&key.tenant, before, l.bytes);
                    match &self.store {
                        Some(store) if l.stored && l.bytes < before => store
                            .reserve()
                            .await
                            .ok()
                            .map(|p| p.trim(&key.tenant, &key.channel, l.gone_through)),
                        _ => None,
                    }
                }
                Over::Drop(_) => {
                    let write = match &self.store {
                        Some(store) if l.stored => store
                            .reserve()
                            .await
                            .ok()
                            .map(|p| p.forget(&key.tenant, &key.channel)),
                        _ => None,
                    };
                    l.evicted = true;
                    let mut logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
                    if logs.get(&key).is_some_and(|v| Arc::ptr_eq(v, &log)) {
                        logs.remove(&key);
                    }
                    drop(logs);
                    self.accounts().removed(&key, l.tick, l.bytes);
                    tracing::debug!(tenant = %key.tenant, "channel history dropped to keep a bound");
                    write
                }
            };
            drop(l);
            if let Some(w) = write
                && let Err(e) = w.wait().await
            {
                tracing::warn!(error = %e, "history bound write failed");
            }
        }
    }

    /// Publish `data` on a channel that keeps history: the next offset,
    /// kept, delivered to every subscriber, and on disk before this
    /// returns. How many local connections got it.
    async fn append_here(
        &self,
        key: &ChannelKey,
        rule: HistoryConfig,
        data: &RawValue,
    ) -> Result<usize, HistoryError> {
        let mut log = self.locked(key).await;
        let permit = match &self.store {
            Some(store) => Some(store.reserve().await?),
            None => None,
        };
        let before = log.bytes;
        log.last_offset += 1;
        let offset = log.last_offset;
        let now = unix_ms();
        let frame = event_frame(key, data, offset, &log.epoch);
        log.bytes += frame.len();
        log.entries.push_back(Kept {
            offset,
            unix_ms: now,
            frame: frame.clone(),
        });
        let oldest = now.saturating_sub(rule.ttl_secs.saturating_mul(1000));
        log.trim(rule.size, oldest);
        self.accounts().resized(&key.tenant, before, log.bytes);
        let durable = permit.map(|p| {
            p.append(
                &key.tenant,
                &key.channel,
                &log.epoch,
                Entry {
                    offset,
                    unix_ms: now,
                    data: data.get().as_bytes().to_vec(),
                },
                log.gone_through,
            )
        });
        log.stored = log.stored || durable.is_some();
        let delivered = self.broker.publish(key, frame).await.unwrap_or_else(|e| {
            tracing::warn!(tenant = %key.tenant, error = %e, "publish failed");
            0
        });
        drop(log);
        self.keep_within(&key.tenant).await;
        if let Some(d) = durable {
            d.wait().await?;
        }
        Ok(delivered)
    }

    /// Subscribe `member` to a channel that keeps history. With `since`,
    /// the events after it are queued to the member in order (when the
    /// epoch matches and none of them is gone), then it joins the channel;
    /// `ack` makes the subscribe's answer from the position and is queued
    /// first. Nothing published meanwhile is missed or doubled.
    async fn subscribe_here(
        &self,
        key: &ChannelKey,
        since: Option<&Since>,
        member: Member,
        ack: AckFrame<'_>,
    ) -> Subscribed {
        let log = self.locked(key).await;
        let outcome = since.map(|s| {
            if *s.epoch != *log.epoch {
                Outcome::EpochChanged
            } else if s.offset < log.gone_through || s.offset > log.last_offset {
                Outcome::TooOld
            } else {
                Outcome::Recovered
            }
        });
        let position = Position {
            offset: log.last_offset,
            epoch: log.epoch.clone(),
            recovered: outcome.map(|o| o == Outcome::Recovered),
        };
        if let Some(frame) = ack(&position) {
            member.outbox.send(Utf8Bytes::from(frame));
        }
        if let (Some(Outcome::Recovered), Some(s)) = (outcome, since) {
            let from = log.entries.partition_point(|e| e.offset <= s.offset);
            for e in log.entries.range(from..) {
                member.outbox.send(e.frame.clone());
            }
        }
        self.broker.subscribe(key, member);
        drop(log);
        self.keep_within(&key.tenant).await;
        Subscribed { position, outcome }
    }

    /// Drop expired events and forget logs that are empty, unused for
    /// `idle` and without local subscribers. `rule` says what a channel
    /// keeps now (`None`: its rule no longer keeps history).
    async fn trim_here(&self, idle: Duration, rule: RuleOf<'_>) {
        let logs = self.snapshot();
        let now = unix_ms();
        for (key, log) in logs {
            let mut l = log.lock().await;
            if l.evicted {
                continue;
            }
            let before = l.bytes;
            let (trimmed, ttl) = match rule(&key) {
                Some(r) => (
                    l.trim(r.size, now.saturating_sub(r.ttl_secs.saturating_mul(1000))),
                    Duration::from_secs(r.ttl_secs),
                ),
                None => (l.trim(0, u64::MAX), Duration::ZERO),
            };
            // A log that never held an event (subscribes only) goes after
            // `idle`: subscribing to many channels cannot pin memory for a
            // whole TTL. One that did keeps its epoch for its TTL, so that
            // a client coming back within it is told nothing was lost.
            let keep_for = if l.stored || l.last_offset > 0 {
                idle.max(ttl)
            } else {
                idle
            };
            let forget = l.entries.is_empty()
                && l.used.elapsed() >= keep_for
                && self.broker.subscribers(&key) == 0;
            let write = match &self.store {
                Some(store) if l.stored && (forget || trimmed.is_some()) => {
                    match store.reserve().await {
                        Ok(p) if forget => Some(p.forget(&key.tenant, &key.channel)),
                        Ok(p) => trimmed.map(|t| p.trim(&key.tenant, &key.channel, t)),
                        Err(e) => {
                            tracing::warn!(error = %e, "history sweep could not write");
                            None
                        }
                    }
                }
                _ => None,
            };
            self.accounts().resized(&key.tenant, before, l.bytes);
            if forget {
                l.evicted = true;
                let mut logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
                if logs.get(&key).is_some_and(|v| Arc::ptr_eq(v, &log)) {
                    logs.remove(&key);
                }
                drop(logs);
                self.accounts().removed(&key, l.tick, l.bytes);
            }
            drop(l);
            if let Some(w) = write
                && let Err(e) = w.wait().await
            {
                tracing::warn!(error = %e, "history sweep write failed");
            }
        }
    }
}

impl HistoryStore for LocalHistory {
    fn append<'a>(
        &'a self,
        key: &'a ChannelKey,
        rule: HistoryConfig,
        data: &'a RawValue,
    ) -> BoxFuture<'a, Result<usize, HistoryError>> {
        Box::pin(self.append_here(key, rule, data))
    }

    fn subscribe<'a>(
        &'a self,
        key: &'a ChannelKey,
        _rule: HistoryConfig,
        since: Option<&'a Since>,
        member: Member,
        ack: AckFrame<'a>,
    ) -> BoxFuture<'a, Result<Subscribed, HistoryError>> {
        Box::pin(async move { Ok(self.subscribe_here(key, since, member, ack).await) })
    }

    fn trim<'a>(&'a self, idle: Duration, rule: RuleOf<'a>) -> BoxFuture<'a, ()> {
        Box::pin(self.trim_here(idle, rule))
    }

    fn sizes(&self) -> BTreeMap<Arc<str>, HistorySize> {
        let logs = self.snapshot();
        let mut out: BTreeMap<Arc<str>, HistorySize> = BTreeMap::new();
        for (key, log) in logs {
            // A log busy right now is skipped rather than waited for.
            if let Ok(l) = log.try_lock() {
                let e = out.entry(key.tenant.clone()).or_default();
                e.channels += 1;
                e.events += l.entries.len() as u64;
                e.bytes += l.bytes as u64;
            }
        }
        out
    }

    fn set_quotas(&self, quotas: HistoryQuotas) {
        self.accounts().quotas = quotas;
    }

    fn close(&self) {
        if let Some(s) = &self.store {
            s.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::broker::LocalBroker;
    use crate::outbox::{Outbox, Outgoing};

    fn drain(r: &mut crate::outbox::OutboxReader) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Ok(Outgoing::Text(t)) = r.rx.try_recv() {
            out.push(serde_json::from_str(t.as_str()).unwrap());
        }
        out
    }

    fn data(n: u64) -> Box<RawValue> {
        RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap()
    }

    const RULE: HistoryConfig = HistoryConfig {
        size: 5,
        ttl_secs: 600,
    };

    #[tokio::test]
    async fn recovery_replays_exactly_what_was_missed_and_refuses_what_is_gone() {
        let broker = Arc::new(LocalBroker::default());
        let history = LocalHistory::in_memory(broker.clone());
        let tenant: Arc<str> = "t".into();
        let key = ChannelKey::new(&tenant, "room:1");
        for n in 1..=3 {
            history.append(&key, RULE, &data(n)).await.unwrap();
        }
        let (outbox, mut reader) = Outbox::new(1 << 20);
        let pos = history
            .subscribe(
                &key,
                RULE,
                None,
                Member { id: 1, outbox },
                Box::new(|_| Some("{}".into())),
            )
            .await
            .unwrap()
            .position;
        assert_eq!((pos.offset, pos.recovered), (3, None));
        let epoch = pos.epoch.to_string();
        assert_eq!(drain(&mut reader).len(), 1, "only the ack");
        // Missed 4 and 5 (a second connection resumes after 3).
        for n in 4..=5 {
            history.append(&key, RULE, &data(n)).await.unwrap();
        }
        let (outbox2, mut reader2) = Outbox::new(1 << 20);
        let since = Since {
            offset: 3,
            epoch: epoch.clone(),
        };
        let pos = history
            .subscribe(
                &key,
                RULE,
                Some(&since),
                Member {
                    id: 2,
                    outbox: outbox2,
                },
                Box::new(|p| Some(format!("{{\"recovered\":{}}}", p.recovered == Some(true)))),
            )
            .await
            .unwrap()
            .position;
        assert_eq!(pos.recovered, Some(true));
        let got = drain(&mut reader2);
        assert_eq!(got[0]["recovered"], true);
        let offsets: Vec<u64> = got[1..]
            .iter()
            .map(|e| e["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, vec![4, 5]);
        assert!(got[1..].iter().all(|e| e["epoch"] == epoch.as_str()));
        // Six more: only five are kept, so offset 5 is the last one that can resume.
        for n in 6..=11 {
            history.append(&key, RULE, &data(n)).await.unwrap();
        }
        let try_since = |offset: u64, epoch: &str| Since {
            offset,
            epoch: epoch.to_owned(),
        };
        for (since, ok) in [
            (try_since(5, &epoch), false),
            (try_since(6, &epoch), true),
            (try_since(11, &epoch), true),
            (try_since(12, &epoch), false),
            (try_since(6, "other"), false),
        ] {
            let (o, mut r) = Outbox::new(1 << 20);
            let pos = history
                .subscribe(
                    &key,
                    RULE,
                    Some(&since),
                    Member { id: 9, outbox: o },
                    Box::new(|_| Some("{}".into())),
                )
                .await
                .unwrap()
                .position;
            assert_eq!(pos.recovered, Some(ok), "{since:?}");
            let replayed = drain(&mut r).len() - 1;
            assert_eq!(replayed as u64, if ok { 11 - since.offset } else { 0 });
            broker.unsubscribe(&key, 9);
        }
    }

    #[tokio::test]
    async fn memory_stays_within_the_size_bound() {
        let broker = Arc::new(LocalBroker::default());
        let history = LocalHistory::in_memory(broker.clone());
        let tenant: Arc<str> = "t".into();
        let key = ChannelKey::new(&tenant, "room:flood");
        for n in 1..=10_000 {
            history.append(&key, RULE, &data(n)).await.unwrap();
        }
        let sizes = history.sizes();
        let HistorySize {
            channels,
            events,
            bytes,
        } = sizes[&tenant];
        assert_eq!((channels, events), (1, 5));
        assert!(bytes < 5 * 200, "{bytes}");
    }

    #[tokio::test]
    async fn subscribing_to_many_channels_pins_no_memory_once_they_are_left() {
        let broker = Arc::new(LocalBroker::default());
        let history = LocalHistory::in_memory(broker.clone());
        let tenant: Arc<str> = "t".into();
        for n in 0..1000 {
            let key = ChannelKey::new(&tenant, &format!("room:{n}"));
            let (o, _r) = Outbox::new(1 << 20);
            history
                .subscribe(
                    &key,
                    RULE,
                    None,
                    Member { id: 1, outbox: o },
                    Box::new(|_| None),
                )
                .await
                .unwrap();
            broker.unsubscribe(&key, 1);
        }
        // One channel that had events keeps its epoch for its TTL.
        let kept = ChannelKey::new(&tenant, "room:kept");
        history.append(&kept, RULE, &data(1)).await.unwrap();
        assert_eq!(history.sizes()[&tenant].channels, 1001);
        history.trim(Duration::ZERO, &|_| Some(RULE)).await;
        assert_eq!(
            history.sizes()[&tenant].channels,
            1,
            "only the channel with events stays"
        );
    }
}
