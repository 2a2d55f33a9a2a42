//! Presence: who is subscribed to a channel whose rule sets `presence`.
//!
//! Members are subjects (with how many of their connections are
//! subscribed, and the tenant's exposed claims, never the token). When a
//! subject's last connection leaves, it stays a member for the tenant's
//! `presence_debounce_ms`: a reconnect inside that window is neither a
//! `leave` nor a `join`. At most `max_presence_members` subjects are
//! tracked per channel; past that, the `presence` answer says `truncated`
//! and the others come and go without events.
//!
//! Per tenant, `[tenants.<id>.quotas] presence_channels` bounds the
//! channels tracked at once and `presence_members` the members over all of
//! them: a connection joining past either is served, not tracked (the
//! channel's answer says `truncated`, no `join` or `leave` is sent for
//! it), as past a channel's cap.
//!
//! Channels are kept in shards, each behind its own lock, so joins to
//! different channels do not wait for each other; a change only tells the
//! share which channel changed ([`PresenceShare::changed`]): the fleet
//! reads the channel's members when it writes them, once for any number
//! of changes in between.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde_json::value::RawValue;

use crate::backends::keys::ChannelKey;
use crate::backends::presence::{PresenceEntry, PresenceShare, PresenceSource, Reported};
use crate::metrics::tenant_series;

/// Shards of the channel table (each its own lock).
const SHARDS: usize = 64;

struct Present {
    connections: u32,
    claims: Box<RawValue>,
    /// Set while the subject has no connection left and its `leave` waits
    /// out the debounce: the generation that may remove it.
    leaving: Option<u64>,
}

#[derive(Default)]
struct Channel {
    members: HashMap<Box<str>, Present>,
    /// Connections of subjects over the cap.
    untracked: u32,
}

/// What a connection joining means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// A new member: send `join`.
    New,
    /// Already a member (another connection, or back inside the debounce).
    Again,
    /// Over the channel's cap or the tenant's `presence_members`: not
    /// tracked.
    Untracked,
    /// Over the tenant's `presence_channels`: the channel is not tracked
    /// at all.
    Unlisted,
}

/// A member listed by a `presence` request.
#[derive(Debug, serde::Serialize)]
pub struct Listed {
    /// The subject.
    pub subject: String,
    /// Its connections subscribed now (0 while a leave is debounced).
    pub connections: u32,
    /// The tenant's exposed claims.
    pub claims: Box<RawValue>,
}

/// A tenant's presence quota: (channels, members).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceQuota {
    /// Channels tracked at once.
    pub channels: u32,
    /// Members over every channel.
    pub members: u32,
}

/// Every tenant's presence quota.
#[derive(Debug, Clone)]
pub struct PresenceQuotas {
    tenants: HashMap<Arc<str>, PresenceQuota>,
    default: PresenceQuota,
}

impl PresenceQuotas {
    /// The quotas `config` sets.
    pub fn from_config(config: &sluice_config::Config) -> Self {
        let of = |q: &sluice_config::Quotas| PresenceQuota {
            channels: q.presence_channels,
            members: q.presence_members,
        };
        Self {
            tenants: config
                .tenants
                .iter()
                .map(|(id, t)| (Arc::from(id.as_str()), of(&t.quotas)))
                .collect(),
            default: of(&sluice_config::Quotas::default()),
        }
    }

    fn tenant(&self, id: &str) -> PresenceQuota {
        self.tenants.get(id).copied().unwrap_or(self.default)
    }
}

/// A tenant's presence on this node.
#[derive(Default)]
struct TenantUse {
    channels: u32,
    members: u32,
    /// Connections in channels over the channel quota, by channel.
    unlisted: HashMap<Box<str>, u32>,
}

struct Inner {
    shards: Box<[Mutex<HashMap<ChannelKey, Channel>>]>,
    hasher: std::collections::hash_map::RandomState,
    /// Taken inside a shard's lock, never the other way round.
    tenants: Mutex<HashMap<Arc<str>, TenantUse>>,
    quotas: RwLock<PresenceQuotas>,
}

impl Inner {
    fn shard(&self, key: &ChannelKey) -> std::sync::MutexGuard<'_, HashMap<ChannelKey, Channel>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn tenants(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, TenantUse>> {
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn quota(&self, tenant: &str) -> PresenceQuota {
        self.quotas
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .tenant(tenant)
    }

    /// The channel left `channels` (under its shard's lock): forget it
    /// when it has nobody.
    fn drop_if_empty(&self, channels: &mut HashMap<ChannelKey, Channel>, key: &ChannelKey) {
        if channels
            .get(key)
            .is_some_and(|c| c.members.is_empty() && c.untracked == 0)
        {
            channels.remove(key);
            let mut tenants = self.tenants();
            if let Some(t) = tenants.get_mut(&key.tenant) {
                t.channels = t.channels.saturating_sub(1);
            }
        }
    }
}

impl PresenceSource for Inner {
    fn entry(&self, key: &ChannelKey) -> Option<PresenceEntry> {
        let channels = self.shard(key);
        let c = channels.get(key)?;
        Some(PresenceEntry {
            members: c
                .members
                .iter()
                .map(|(s, p)| Reported {
                    subject: s.to_string(),
                    connections: p.connections,
                    claims: p.claims.clone(),
                })
                .collect(),
            truncated: c.untracked > 0,
        })
    }
}

/// Every presence channel.
pub struct Presence {
    inner: Arc<Inner>,
    /// The other nodes' members, and where this node's go (nothing on one
    /// node).
    share: Arc<dyn PresenceShare>,
    generation: std::sync::atomic::AtomicU64,
}

impl Presence {
    /// Presence on this node, shared through `share`.
    pub fn new(share: Arc<dyn PresenceShare>) -> Self {
        let inner = Arc::new(Inner {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            tenants: Mutex::default(),
            quotas: RwLock::new(PresenceQuotas {
                tenants: HashMap::new(),
                default: PresenceQuota {
                    channels: sluice_config::quotas::DEFAULT_QUOTA_PRESENCE_CHANNELS,
                    members: sluice_config::quotas::DEFAULT_QUOTA_PRESENCE_MEMBERS,
                },
            }),
        });
        let source: Arc<dyn PresenceSource> = inner.clone();
        share.attach(Arc::downgrade(&source));
        Self {
            inner,
            share,
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The quotas to keep presence within (at start and after a reload).
    pub fn set_quotas(&self, quotas: PresenceQuotas) {
        *self
            .inner
            .quotas
            .write()
            .unwrap_or_else(PoisonError::into_inner) = quotas;
    }

    /// Tell the fleet that this node's members of `key` changed.
    fn changed(&self, key: &ChannelKey) {
        if self.share.shared() {
            self.share.changed(key);
        }
    }

    /// Whether `subject` is present in the channel on another node of the
    /// fleet (then its arrival or departure here is no join or leave).
    pub fn present_elsewhere(&self, key: &ChannelKey, subject: &str) -> bool {
        self.share.present_elsewhere(key, subject)
    }

    /// A connection of `subject` joined the channel.
    pub fn join(&self, key: &ChannelKey, subject: &str, claims: &RawValue, max: u32) -> Joined {
        let quota = self.inner.quota(&key.tenant);
        let mut channels = self.inner.shard(key);
        if !channels.contains_key(key) {
            let mut tenants = self.inner.tenants();
            let t = tenants.entry(key.tenant.clone()).or_default();
            if t.channels >= quota.channels {
                *t.unlisted.entry(key.channel.as_ref().into()).or_default() += 1;
                return Joined::Unlisted;
            }
            t.channels += 1;
            drop(tenants);
            channels.insert(key.clone(), Channel::default());
        }
        let Some(ch) = channels.get_mut(key) else {
            return Joined::Unlisted;
        };
        let joined = if let Some(p) = ch.members.get_mut(subject) {
            p.connections += 1;
            p.leaving = None;
            Joined::Again
        } else if ch.members.len() >= max as usize {
            ch.untracked += 1;
            Joined::Untracked
        } else {
            let mut tenants = self.inner.tenants();
            let t = tenants.entry(key.tenant.clone()).or_default();
            if t.members >= quota.members {
                ch.untracked += 1;
                Joined::Untracked
            } else {
                t.members += 1;
                ch.members.insert(
                    subject.into(),
                    Present {
                        connections: 1,
                        claims: claims.to_owned(),
                        leaving: None,
                    },
                );
                Joined::New
            }
        };
        drop(channels);
        self.changed(key);
        joined
    }

    /// A connection that joined with `joined` left. `Some(generation)`
    /// when it was the subject's last: call [`Presence::expire`] with it
    /// after the debounce.
    pub fn leave(&self, key: &ChannelKey, subject: &str, joined: Joined) -> Option<u64> {
        if joined == Joined::Unlisted {
            let mut tenants = self.inner.tenants();
            let t = tenants.get_mut(&key.tenant)?;
            if let Some(n) = t.unlisted.get_mut(key.channel.as_ref()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    t.unlisted.remove(key.channel.as_ref());
                }
            }
            return None;
        }
        let mut channels = self.inner.shard(key);
        let ch = channels.get_mut(key)?;
        if joined == Joined::Untracked {
            ch.untracked = ch.untracked.saturating_sub(1);
            self.inner.drop_if_empty(&mut channels, key);
            drop(channels);
            self.changed(key);
            return None;
        }
        let p = ch.members.get_mut(subject)?;
        p.connections = p.connections.saturating_sub(1);
        let last = p.connections == 0;
        let generation = last.then(|| {
            let g = self
                .generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            p.leaving = Some(g);
            g
        });
        drop(channels);
        self.changed(key);
        generation
    }

    /// The debounce of leave `generation` ended: remove the subject unless
    /// it came back. The claims to send the `leave` with, if it left.
    pub fn expire(
        &self,
        key: &ChannelKey,
        subject: &str,
        generation: u64,
    ) -> Option<Box<RawValue>> {
        let mut channels = self.inner.shard(key);
        let ch = channels.get_mut(key)?;
        if ch.members.get(subject)?.leaving != Some(generation) {
            return None;
        }
        let gone = ch.members.remove(subject).map(|p| p.claims);
        if gone.is_some()
            && let Some(t) = self.inner.tenants().get_mut(&key.tenant)
        {
            t.members = t.members.saturating_sub(1);
        }
        self.inner.drop_if_empty(&mut channels, key);
        drop(channels);
        self.changed(key);
        gone
    }

    /// The channel's members, sorted by subject, and whether some subjects
    /// are over a cap or quota and not listed. In a fleet: every node's
    /// members (connections summed), each node listing at most its cap.
    pub fn list(&self, key: &ChannelKey) -> (Vec<Listed>, bool) {
        let mut merged: BTreeMap<String, Listed> = BTreeMap::new();
        let mut truncated = self
            .inner
            .tenants()
            .get(&key.tenant)
            .is_some_and(|t| t.unlisted.contains_key(key.channel.as_ref()));
        if let Some(ch) = self.inner.shard(key).get(key) {
            truncated |= ch.untracked > 0;
            for (s, p) in &ch.members {
                merged.insert(
                    s.to_string(),
                    Listed {
                        subject: s.to_string(),
                        connections: p.connections,
                        claims: p.claims.clone(),
                    },
                );
            }
        }
        for entry in self.share.elsewhere(key) {
            truncated |= entry.truncated;
            for m in entry.members {
                merged
                    .entry(m.subject.clone())
                    .and_modify(|l| l.connections += m.connections)
                    .or_insert(Listed {
                        subject: m.subject,
                        connections: m.connections,
                        claims: m.claims,
                    });
            }
        }
        (merged.into_values().collect(), truncated)
    }

    /// The presence series of `/metrics`.
    pub fn render(&self, out: &mut String) {
        let mut by_tenant: BTreeMap<Arc<str>, (u64, u64)> = BTreeMap::new();
        for shard in &self.inner.shards {
            for (key, ch) in shard.lock().unwrap_or_else(PoisonError::into_inner).iter() {
                let e = by_tenant.entry(key.tenant.clone()).or_default();
                e.0 += 1;
                e.1 += ch.members.len() as u64 + u64::from(ch.untracked);
            }
        }
        let channels = by_tenant.iter().map(|(t, (c, _))| (&**t, *c));
        tenant_series(
            out,
            (
                "sluice_presence_channels",
                "gauge",
                "Channels with members present, per tenant.",
            ),
            channels,
        );
        let members = by_tenant.iter().map(|(t, (_, m))| (&**t, *m));
        tenant_series(
            out,
            (
                "sluice_presence_members",
                "gauge",
                "Members present over all channels, per tenant.",
            ),
            members,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quick_reconnect_is_neither_a_leave_nor_a_join_and_the_cap_holds() {
        let p = Presence::new(Arc::new(crate::backends::presence::NodeOnly));
        let t: Arc<str> = "t".into();
        let key = ChannelKey::new(&t, "room:1");
        let claims: Box<RawValue> = RawValue::from_string("{}".into()).unwrap();
        assert_eq!(p.join(&key, "alice", &claims, 2), Joined::New);
        assert_eq!(p.join(&key, "alice", &claims, 2), Joined::Again);
        assert_eq!(
            p.leave(&key, "alice", Joined::New),
            None,
            "one connection left"
        );
        let g = p.leave(&key, "alice", Joined::Again).unwrap();
        // Back inside the debounce: the old leave does nothing.
        assert_eq!(p.join(&key, "alice", &claims, 2), Joined::Again);
        assert!(p.expire(&key, "alice", g).is_none());
        assert_eq!(p.list(&key).0[0].connections, 1);
        assert_eq!(p.join(&key, "bob", &claims, 2), Joined::New);
        assert_eq!(p.join(&key, "carol", &claims, 2), Joined::Untracked);
        let (members, truncated) = p.list(&key);
        assert_eq!(members.len(), 2);
        assert!(truncated);
        assert_eq!(p.leave(&key, "carol", Joined::Untracked), None);
        assert!(!p.list(&key).1);
        let g = p.leave(&key, "bob", Joined::New).unwrap();
        assert!(p.expire(&key, "bob", g).is_some());
        assert_eq!(p.list(&key).0.len(), 1);
    }
}
