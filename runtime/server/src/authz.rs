//! Authorization of every action: route scopes, and channel rules for
//! subscribing and publishing. Used twice per message: before the handler
//! runs (the client's request) and after (every action the handler returns).

use serde_json::{Map, Value};

pub use sluice_config::channel::{ChannelPattern, Part};
use sluice_config::{ChannelRuleConfig, HistoryConfig};

/// The verified identity of a connection.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The token's `sub`.
    pub subject: String,
    /// The token's claims that the tenant reads (its `{claim:..}` patterns
    /// and exposed claims: see [`crate::auth::KeySet::load`]).
    pub claims: Claims,
    /// Scopes from the tenant's scopes claim.
    pub scopes: Scopes,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
}

/// A token's claims, held for the connection's whole life: names and values
/// in one exact-size slice (a map's hash table and spare capacity were
/// two thirds of what an idle connection kept for them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Claims(Box<[(Box<str>, Value)]>);

impl Claims {
    /// The claim named `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| &**k == name).map(|(_, v)| v)
    }
}

impl From<Map<String, Value>> for Claims {
    fn from(map: Map<String, Value>) -> Self {
        Self(
            map.into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v))
                .collect(),
        )
    }
}

/// A principal's scopes: sorted, without duplicates, exact size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes(Box<[Box<str>]>);

impl Scopes {
    /// Whether `scope` is one of them.
    pub fn contains(&self, scope: &str) -> bool {
        self.0.binary_search_by(|s| (**s).cmp(scope)).is_ok()
    }
}

impl<S: Into<Box<str>>> FromIterator<S> for Scopes {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut scopes: Vec<Box<str>> = iter.into_iter().map(Into::into).collect();
        scopes.sort_unstable();
        scopes.dedup();
        Self(scopes.into_boxed_slice())
    }
}

/// Whether `channel` matches `pattern` for `principal`.
pub fn pattern_matches(pattern: &ChannelPattern, channel: &str, principal: &Principal) -> bool {
    match_parts(pattern.parts(), channel, Some(principal))
}

/// Whether `channel` has the shape of `pattern`, for some principal
/// (`{sub}` and `{claim:..}` stand for any segment): which rule's channel
/// features (history, presence) a channel has does not depend on who asks.
pub fn pattern_shape_matches(pattern: &ChannelPattern, channel: &str) -> bool {
    match_parts(pattern.parts(), channel, None)
}

fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn match_parts(parts: &[Part], channel: &str, principal: Option<&Principal>) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return channel.is_empty();
    };
    match first {
        Part::Literal(l) => channel
            .strip_prefix(l.as_str())
            .is_some_and(|c| match_parts(rest, c, principal)),
        placeholder => {
            // The segment runs to the next literal (or the end).
            let (segment, remaining) = match rest.first() {
                Some(Part::Literal(l)) => match channel.find(l.as_str()) {
                    Some(i) => (&channel[..i], &channel[i..]),
                    None => return false,
                },
                _ => (channel, ""),
            };
            // Every placeholder stands for exactly one segment: a subject
            // or claim value with a `:` (or any character a segment cannot
            // hold) never matches, or `user:{sub}` for subject `bob:inbox`
            // would name `user:{sub}:inbox` of subject `bob`.
            let ok = is_segment(segment)
                && match (placeholder, principal) {
                    (_, None) => true,
                    (Part::Subject, Some(principal)) => segment == principal.subject,
                    (Part::Claim(name), Some(principal)) => match principal.claims.get(name) {
                        Some(Value::String(s)) => segment == s,
                        Some(Value::Array(items)) => {
                            items.iter().any(|v| v.as_str() == Some(segment))
                        }
                        Some(Value::Number(n)) => segment == n.to_string(),
                        _ => false,
                    },
                    _ => true,
                };
            ok && match_parts(rest, remaining, principal)
        }
    }
}

/// What a principal wants to do with a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelOp {
    /// Receive its events.
    Subscribe,
    /// Send events to it.
    Publish,
}

/// A compiled channel rule.
#[derive(Clone, Debug)]
pub struct ChannelRule {
    pattern: ChannelPattern,
    subscribe: bool,
    publish: bool,
    subscribe_scopes: Vec<String>,
    publish_scopes: Vec<String>,
    features: ChannelFeatures,
}

/// What the server keeps for a channel besides its subscribers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelFeatures {
    /// Its history, if it keeps one.
    pub history: Option<HistoryConfig>,
    /// Whether `presence` requests are answered.
    pub presence: bool,
    /// Whether `join` and `leave` events are sent.
    pub presence_events: bool,
}

/// The features of `channel`: each one from the first rule whose pattern
/// has the channel's shape and that sets it.
pub fn channel_features(rules: &[ChannelRule], channel: &str) -> ChannelFeatures {
    let mut f = ChannelFeatures::default();
    let (mut history_set, mut presence_set) = (false, false);
    for r in rules {
        if history_set && presence_set {
            break;
        }
        let sets_history = !history_set && r.features.history.is_some();
        let sets_presence = !presence_set && r.features.presence;
        if !(sets_history || sets_presence) || !pattern_shape_matches(&r.pattern, channel) {
            continue;
        }
        if sets_history {
            f.history = r.features.history;
            history_set = true;
        }
        if sets_presence {
            f.presence = true;
            f.presence_events = r.features.presence_events;
            presence_set = true;
        }
    }
    f
}

impl ChannelRule {
    /// Compile a rule from config.
    pub fn compile(c: &ChannelRuleConfig) -> Result<Self, String> {
        Ok(Self {
            pattern: ChannelPattern::parse(&c.pattern)?,
            subscribe: c.subscribe,
            publish: c.publish,
            subscribe_scopes: c.subscribe_scopes.clone(),
            publish_scopes: c.publish_scopes.clone(),
            features: ChannelFeatures {
                history: c.history,
                presence: c.presence,
                presence_events: c.presence && c.presence_events,
            },
        })
    }
}

/// Whether `principal` holds every scope in `needed`.
pub fn has_scopes(principal: &Principal, needed: &[String]) -> bool {
    needed.iter().all(|s| principal.scopes.contains(s))
}

/// Whether any rule lets `principal` do `op` on `channel`. No rule, no
/// access: channels are deny-by-default.
pub fn channel_allowed(
    rules: &[ChannelRule],
    principal: &Principal,
    channel: &str,
    op: ChannelOp,
) -> bool {
    sluice_protocol::is_valid_channel(channel)
        && rules.iter().any(|r| {
            let (allowed, scopes) = match op {
                ChannelOp::Subscribe => (r.subscribe, &r.subscribe_scopes),
                ChannelOp::Publish => (r.publish, &r.publish_scopes),
            };
            allowed
                && has_scopes(principal, scopes)
                && pattern_matches(&r.pattern, channel, principal)
        })
}

/// Whether any rule lets `principal` do `op` on `channel` and, if so, the
/// channel's features, in one pass over the rules (a publish needs both:
/// its authorization and whether the channel keeps history).
pub fn permit(
    rules: &[ChannelRule],
    principal: &Principal,
    channel: &str,
    op: ChannelOp,
) -> Option<ChannelFeatures> {
    if !sluice_protocol::is_valid_channel(channel) {
        return None;
    }
    let mut allowed = false;
    let mut f = ChannelFeatures::default();
    let (mut history_set, mut presence_set) = (false, false);
    for r in rules {
        if allowed && history_set && presence_set {
            break;
        }
        let (op_allowed, scopes) = match op {
            ChannelOp::Subscribe => (r.subscribe, &r.subscribe_scopes),
            ChannelOp::Publish => (r.publish, &r.publish_scopes),
        };
        let sets_history = !history_set && r.features.history.is_some();
        let sets_presence = !presence_set && r.features.presence;
        let may_allow = !allowed && op_allowed && has_scopes(principal, scopes);
        if !(may_allow || sets_history || sets_presence) {
            continue;
        }
        // A match for this principal is also a match of the shape.
        let shape = if may_allow && pattern_matches(&r.pattern, channel, principal) {
            allowed = true;
            true
        } else {
            (sets_history || sets_presence) && pattern_shape_matches(&r.pattern, channel)
        };
        if !shape {
            continue;
        }
        if sets_history {
            f.history = r.features.history;
            history_set = true;
        }
        if sets_presence {
            f.presence = true;
            f.presence_events = r.features.presence_events;
            presence_set = true;
        }
    }
    allowed.then_some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Principal {
        let claims = serde_json::json!({"teams": ["red", "blue"], "org": "acme"});
        Principal {
            subject: "alice".into(),
            claims: claims.as_object().cloned().unwrap_or_default().into(),
            scopes: ["chat"].into_iter().collect(),
            expires_at: 0,
        }
    }

    #[test]
    fn placeholders_match_subject_claims_and_segments() {
        let p = alice();
        let user = ChannelPattern::parse("user:{sub}").unwrap();
        assert!(pattern_matches(&user, "user:alice", &p));
        assert!(!pattern_matches(&user, "user:bob", &p));
        assert!(!pattern_matches(&user, "user:alice:x", &p));
        let team = ChannelPattern::parse("team:{claim:teams}:chat").unwrap();
        assert!(pattern_matches(&team, "team:red:chat", &p));
        assert!(!pattern_matches(&team, "team:green:chat", &p));
        let room = ChannelPattern::parse("room:{id}").unwrap();
        assert!(pattern_matches(&room, "room:42", &p));
        assert!(!pattern_matches(&room, "room:", &p));
        assert!(!pattern_matches(&room, "room:4:2", &p));
        assert!(!pattern_matches(&room, "lobby:1", &p));
        let org = ChannelPattern::parse("org:{claim:org}").unwrap();
        assert!(pattern_matches(&org, "org:acme", &p));
        assert!(!pattern_matches(&org, "org:acm", &p));
    }

    fn principal(subject: &str, claims: serde_json::Value) -> Principal {
        Principal {
            subject: subject.into(),
            claims: claims.as_object().cloned().unwrap_or_default().into(),
            scopes: Scopes::default(),
            expires_at: 0,
        }
    }

    #[test]
    fn placeholder_values_are_one_segment_so_channels_cannot_collide() {
        let user = ChannelPattern::parse("user:{sub}").unwrap();
        let inbox = ChannelPattern::parse("user:{sub}:inbox").unwrap();
        let bob = principal("bob", serde_json::json!({}));
        let forger = principal("bob:inbox", serde_json::json!({}));
        assert!(pattern_matches(&inbox, "user:bob:inbox", &bob));
        assert!(pattern_matches(&user, "user:bob", &bob));
        // `user:{sub}` for `bob:inbox` would be bob's inbox.
        assert!(!pattern_matches(&user, "user:bob:inbox", &forger));
        assert!(!pattern_matches(&inbox, "user:bob:inbox:inbox", &forger));
        // Values a segment cannot hold, or an empty one, match nothing.
        for subject in ["", "a b", "a/b", "a:b", "é", "a}", "a\nb"] {
            let p = principal(subject, serde_json::json!({}));
            for channel in [format!("user:{subject}"), format!("user:{subject}:inbox")] {
                assert!(
                    !pattern_matches(&user, &channel, &p),
                    "{subject:?} {channel}"
                );
                assert!(
                    !pattern_matches(&inbox, &channel, &p),
                    "{subject:?} {channel}"
                );
            }
        }
        // Claims: strings, array items and numbers alike.
        let team = ChannelPattern::parse("team:{claim:team}").unwrap();
        let team_chat = ChannelPattern::parse("team:{claim:team}:chat").unwrap();
        for claim in [
            serde_json::json!({"team": "red:chat"}),
            serde_json::json!({"team": ["blue", "red:chat"]}),
        ] {
            let p = principal("carol", claim.clone());
            assert!(!pattern_matches(&team, "team:red:chat", &p), "{claim}");
            assert!(
                !pattern_matches(&team_chat, "team:red:chat:chat", &p),
                "{claim}"
            );
        }
        let p = principal("carol", serde_json::json!({"team": ["blue", "red:chat"]}));
        assert!(pattern_matches(&team, "team:blue", &p));
        assert!(pattern_matches(&team_chat, "team:blue:chat", &p));
        let p = principal("carol", serde_json::json!({"team": 7}));
        assert!(pattern_matches(&team, "team:7", &p));
        let p = principal("carol", serde_json::json!({"team": ""}));
        assert!(!pattern_matches(&team, "team:", &p));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "",
            "room:{",
            "room:{a b}",
            "{a}{b}",
            "room:{claim:}",
            "room x",
        ] {
            assert!(ChannelPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_are_deny_by_default_and_scoped() {
        let rules = vec![
            ChannelRule::compile(&ChannelRuleConfig {
                pattern: "room:{id}".into(),
                subscribe: true,
                publish: true,
                subscribe_scopes: vec![],
                publish_scopes: vec!["admin".into()],
                history: None,
                presence: false,
                presence_events: false,
            })
            .unwrap(),
        ];
        let p = alice();
        assert!(channel_allowed(&rules, &p, "room:1", ChannelOp::Subscribe));
        assert!(!channel_allowed(&rules, &p, "room:1", ChannelOp::Publish));
        assert!(!channel_allowed(
            &rules,
            &p,
            "other:1",
            ChannelOp::Subscribe
        ));
        assert!(!channel_allowed(&[], &p, "room:1", ChannelOp::Subscribe));
    }

    #[test]
    fn features_come_from_the_first_rule_of_the_channels_shape() {
        let rule = |pattern: &str, history: Option<usize>, presence: bool| {
            ChannelRule::compile(&ChannelRuleConfig {
                pattern: pattern.into(),
                subscribe: true,
                publish: true,
                subscribe_scopes: vec![],
                publish_scopes: vec![],
                history: history.map(|size| HistoryConfig { size, ttl_secs: 60 }),
                presence,
                presence_events: presence,
            })
            .unwrap()
        };
        let rules = vec![
            rule("user:{sub}", Some(5), false),
            rule("room:{id}", None, true),
            rule("room:{id}", Some(100), false),
        ];
        // `{sub}` is any segment here: every user channel keeps history.
        assert_eq!(
            channel_features(&rules, "user:bob").history.map(|h| h.size),
            Some(5)
        );
        let room = channel_features(&rules, "room:1");
        assert_eq!(room.history.map(|h| h.size), Some(100));
        assert!(room.presence && room.presence_events);
        assert_eq!(
            channel_features(&rules, "other:1"),
            ChannelFeatures::default()
        );
        assert_eq!(
            channel_features(&rules, "room:1:x"),
            ChannelFeatures::default()
        );
    }
}
