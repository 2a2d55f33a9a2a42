//! NATS subjects for Sluice's keys.
//!
//! Every tenant id, channel name and subject (the token's `sub`) becomes
//! exactly one NATS token: bytes other than `A-Z a-z 0-9 _ - :` are written
//! `~XX` (hex), so `.`, `*`, `>`, whitespace and `~` itself never reach the
//! bus raw. A channel named `a.b` or `>` cannot address another subject,
//! and the tenant is always its own token right after the kind: one
//! tenant's publish can never match another tenant's subscription.
//!
//! ```text
//! {prefix}.d.{tenant}.{channel}.e   events without history, join/leave  (core NATS)
//! {prefix}.d.{tenant}.{channel}.r   history events, republished by the stream once stored
//! {prefix}.h.{tenant}.{channel}     history events as published (captured by the tenant's stream)
//! {prefix}.s.{tenant}.{subject}     frames sent to a subject's connections
//! ```
//!
//! A node subscribes to `{prefix}.d.{tenant}.{channel}.*` for each channel
//! with local subscribers, and to `{prefix}.s.{tenant}.{subject}` for each
//! subject with local connections.

use std::fmt::Write as _;

use sluice_server::backends::keys::{ChannelKey, SubjectKey};

/// One NATS token for any string (see the module docs).
pub fn token(s: &str) -> String {
    if s.is_empty() {
        // No encoding of a non-empty string is a lone `~`.
        return "~".to_owned();
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':') {
            out.push(b as char);
        } else {
            let _ = write!(out, "~{b:02X}");
        }
    }
    out
}

/// The subjects of one fleet (one `[cluster] prefix`).
#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (already a valid token: config checks it).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    fn channel(&self, key: &ChannelKey) -> String {
        format!(
            "{}.d.{}.{}",
            self.prefix,
            token(&key.tenant),
            token(&key.channel)
        )
    }

    /// Where events without history (and join/leave) are published.
    pub fn events(&self, key: &ChannelKey) -> String {
        self.channel(key) + ".e"
    }

    /// Where the stream republishes a channel's stored history events.
    pub fn republished(&self, key: &ChannelKey) -> String {
        self.channel(key) + ".r"
    }

    /// What a node subscribes to for a channel: both of the above.
    pub fn channel_interest(&self, key: &ChannelKey) -> String {
        self.channel(key) + ".*"
    }

    /// Where a channel's history events are published (the stream keeps them).
    pub fn history(&self, key: &ChannelKey) -> String {
        format!(
            "{}.h.{}.{}",
            self.prefix,
            token(&key.tenant),
            token(&key.channel)
        )
    }

    /// Every history subject of a tenant (its stream's subjects).
    pub fn history_of(&self, tenant: &str) -> String {
        format!("{}.h.{}.*", self.prefix, token(tenant))
    }

    /// A tenant's stream's republish source and destination.
    pub fn republish_of(&self, tenant: &str) -> (String, String) {
        (
            self.history_of(tenant),
            format!("{}.d.{}.{{{{wildcard(1)}}}}.r", self.prefix, token(tenant)),
        )
    }

    /// A subject's connections.
    pub fn send(&self, key: &SubjectKey) -> String {
        format!(
            "{}.s.{}.{}",
            self.prefix,
            token(&key.tenant),
            token(&key.subject)
        )
    }

    /// A subject nobody listens on (a round trip to the server: everything
    /// this client sent before it has been processed when it answers).
    pub fn barrier(&self) -> String {
        format!("{}.barrier", self.prefix)
    }

    /// A tenant's history stream's name.
    pub fn stream_of(&self, tenant: &str) -> String {
        format!(
            "{}_HISTORY_{}",
            self.prefix.to_ascii_uppercase(),
            crate::bucket::kv_token(tenant)
        )
    }

    /// The one history stream of every tenant that earlier versions made
    /// (its subjects overlap the per-tenant streams').
    pub fn shared_stream(&self) -> String {
        format!("{}_HISTORY", self.prefix.to_ascii_uppercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_name_is_one_token_and_the_encoding_is_one_to_one() {
        let names = [
            "room:1", "a.b", "a", "b", "*", ">", "a.*", "~", "~2E", ".", "", " ", "é", "a>b",
        ];
        let mut seen = std::collections::HashSet::new();
        for n in names {
            let t = token(n);
            assert!(!t.is_empty());
            assert!(
                !t.contains(['.', '*', '>', ' ', '\t', '\r', '\n']),
                "{n:?} -> {t:?}"
            );
            assert!(seen.insert(t.clone()), "{n:?} collides as {t:?}");
        }
        assert_eq!(token("room:1"), "room:1");
        assert_eq!(token("a.b"), "a~2Eb");
    }

    #[test]
    fn a_channel_name_cannot_reach_into_another_tenant() {
        let s = Subjects::new("sluice");
        let t1: Arc<str> = "t1".into();
        let sub = s.events(&ChannelKey::new(&t1, "x.y"));
        assert_eq!(sub, "sluice.d.t1.x~2Ey.e");
        assert_eq!(sub.split('.').count(), 5);
        let sub = s.send(&SubjectKey::new(&t1, "*.>"));
        assert_eq!(sub, "sluice.s.t1.~2A~2E~3E");
    }
}
