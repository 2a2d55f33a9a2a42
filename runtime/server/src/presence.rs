//! Presence: who is subscribed to a channel whose rule sets `presence`.
//!
//! Members are subjects (with how many of their connections are
//! subscribed, and the tenant's exposed claims, never the token). When a
//! subject's last connection leaves, it stays a member for the tenant's
//! `presence_debounce_ms`: a reconnect inside that window is neither a
//! `leave` nor a `join`. At most `max_presence_members` subjects are
//! tracked per channel; past that, the `presence` answer says `truncated`
//! and the others come and go without events.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::value::RawValue;

use crate::backends::keys::ChannelKey;
use crate::backends::presence::{PresenceEntry, PresenceShare, Reported};
use crate::metrics::tenant_series;

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
    /// Over the channel's cap: not tracked.
    Untracked,
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

/// Every presence channel.
pub struct Presence {
    channels: Mutex<HashMap<ChannelKey, Channel>>,
    /// The other nodes' members, and where this node's go (nothing on one
    /// node).
    share: Arc<dyn PresenceShare>,
    generation: std::sync::atomic::AtomicU64,
}

impl Presence {
    /// Presence on this node, shared through `share`.
    pub fn new(share: Arc<dyn PresenceShare>) -> Self {
        Self {
            channels: Mutex::default(),
            share,
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Tell the fleet what this node now has in `key` (called under the lock).
    fn report(&self, key: &ChannelKey, ch: Option<&Channel>) {
        if !self.share.shared() {
            return;
        }
        let entry = ch
            .filter(|c| !c.members.is_empty() || c.untracked > 0)
            .map(|c| PresenceEntry {
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
            });
        self.share.report(key, entry);
    }

    /// Whether `subject` is present in the channel on another node of the
    /// fleet (then its arrival or departure here is no join or leave).
    pub fn present_elsewhere(&self, key: &ChannelKey, subject: &str) -> bool {
        self.share.present_elsewhere(key, subject)
    }

    /// A connection of `subject` joined the channel.
    pub fn join(&self, key: &ChannelKey, subject: &str, claims: &RawValue, max: u32) -> Joined {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let ch = channels.entry(key.clone()).or_default();
        let joined = if let Some(p) = ch.members.get_mut(subject) {
            p.connections += 1;
            p.leaving = None;
            Joined::Again
        } else if ch.members.len() >= max as usize {
            ch.untracked += 1;
            Joined::Untracked
        } else {
            ch.members.insert(
                subject.into(),
                Present {
                    connections: 1,
                    claims: claims.to_owned(),
                    leaving: None,
                },
            );
            Joined::New
        };
        self.report(key, channels.get(key));
        joined
    }

    /// A connection that joined with `joined` left. `Some(generation)`
    /// when it was the subject's last: call [`Presence::expire`] with it
    /// after the debounce.
    pub fn leave(&self, key: &ChannelKey, subject: &str, joined: Joined) -> Option<u64> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let ch = channels.get_mut(key)?;
        if joined == Joined::Untracked {
            ch.untracked = ch.untracked.saturating_sub(1);
            if ch.members.is_empty() && ch.untracked == 0 {
                channels.remove(key);
            }
            self.report(key, channels.get(key));
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
        self.report(key, channels.get(key));
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
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let ch = channels.get_mut(key)?;
        if ch.members.get(subject)?.leaving != Some(generation) {
            return None;
        }
        let gone = ch.members.remove(subject).map(|p| p.claims);
        if ch.members.is_empty() && ch.untracked == 0 {
            channels.remove(key);
        }
        self.report(key, channels.get(key));
        gone
    }

    /// The channel's members, sorted by subject, and whether some subjects
    /// are over the cap and not listed. In a fleet: every node's members
    /// (connections summed), each node listing at most its cap.
    pub fn list(&self, key: &ChannelKey) -> (Vec<Listed>, bool) {
        let mut merged: BTreeMap<String, Listed> = BTreeMap::new();
        let mut truncated = false;
        if let Some(ch) = self
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            truncated = ch.untracked > 0;
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
        for (key, ch) in self
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let e = by_tenant.entry(key.tenant.clone()).or_default();
            e.0 += 1;
            e.1 += ch.members.len() as u64 + u64::from(ch.untracked);
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
