//! `[[tenants.<id>.channels]]`: channel rules ([`ChannelRuleConfig`]: who
//! may subscribe and publish, history, presence), and channel patterns
//! (`room:{id}`, `user:{sub}`, `team:{claim:teams}:chat`) as validated
//! values: a [`ChannelPattern`] exists only if its text parsed. Matching a
//! channel against a principal is the server's (authz).

use serde::{Deserialize, Serialize};

/// Most events one channel's history may keep.
pub const MAX_HISTORY_SIZE: usize = 100_000;
/// Longest a channel's history may keep an event.
pub const MAX_HISTORY_TTL_SECS: u64 = 30 * 24 * 3600;

/// A channel rule: the channels matching `pattern` may be subscribed to
/// and/or published to by principals holding the listed scopes.
///
/// Pattern syntax: literal text and placeholders. `{sub}` matches only the
/// principal's own subject; `{claim:NAME}` matches the value of claim NAME
/// (or any element, if it is an array); any other `{name}` matches one
/// segment of `A-Z a-z 0-9 _ - .` (no `:`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRuleConfig {
    /// e.g. `room:{id}`, `user:{sub}`, `team:{claim:teams}`.
    pub pattern: String,
    /// Whether matching channels may be subscribed to.
    #[serde(default = "yes")]
    pub subscribe: bool,
    /// Whether matching channels may be published to.
    #[serde(default = "yes")]
    pub publish: bool,
    /// Scopes needed to subscribe.
    #[serde(default)]
    pub subscribe_scopes: Vec<String>,
    /// Scopes needed to publish.
    #[serde(default)]
    pub publish_scopes: Vec<String>,
    /// Keep the last events of each matching channel, so that a client
    /// that reconnects can recover what it missed
    /// (`history = { size = 100, ttl_secs = 600 }`).
    #[serde(default)]
    pub history: Option<HistoryConfig>,
    /// Answer `presence` requests: who is subscribed.
    #[serde(default)]
    pub presence: bool,
    /// Send `join` and `leave` events to the channel's subscribers
    /// (needs `presence`).
    #[serde(default)]
    pub presence_events: bool,
}

/// How much of a channel's past is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Events kept per channel, at most (1..=[`MAX_HISTORY_SIZE`]).
    pub size: usize,
    /// Seconds an event is kept (1..=[`MAX_HISTORY_TTL_SECS`]).
    pub ttl_secs: u64,
}

fn yes() -> bool {
    true
}

impl ChannelRuleConfig {
    /// What is wrong with rule `i` of the tenant at `at` (`tenants.<id>`).
    pub(crate) fn problems(&self, at: &str, i: usize) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = ChannelPattern::parse(&self.pattern) {
            problems.push(format!("{at}.channels[{i}]: {e}"));
        }
        if let Some(h) = &self.history {
            if !(1..=MAX_HISTORY_SIZE).contains(&h.size) {
                problems.push(format!(
                    "{at}.channels[{i}].history.size: {} must be 1-{MAX_HISTORY_SIZE}",
                    h.size
                ));
            }
            if !(1..=MAX_HISTORY_TTL_SECS).contains(&h.ttl_secs) {
                problems.push(format!(
                    "{at}.channels[{i}].history.ttl_secs: {} must be 1-{MAX_HISTORY_TTL_SECS}",
                    h.ttl_secs
                ));
            }
        }
        if self.presence_events && !self.presence {
            problems.push(format!(
                "{at}.channels[{i}]: presence_events needs presence = true"
            ));
        }
        problems
    }
}

/// One piece of a channel pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Text that must appear as it is.
    Literal(String),
    /// `{sub}`: the principal's subject.
    Subject,
    /// `{claim:NAME}`: a value of the named claim.
    Claim(String),
    /// `{name}`: any one segment.
    Any,
}

/// Why a channel pattern was refused (the message quotes the pattern).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is empty.
    #[error("empty channel pattern")]
    Empty,
    /// A `{` without its `}`.
    #[error("pattern {0:?}: unclosed {{")]
    Unclosed(String),
    /// `{claim:}`.
    #[error("pattern {0:?}: empty claim name")]
    EmptyClaim(String),
    /// A placeholder that is neither `{sub}`, `{claim:NAME}` nor `{name}`.
    #[error("pattern {pattern:?}: bad placeholder {{{placeholder}}}")]
    BadPlaceholder {
        /// The pattern.
        pattern: String,
        /// What stood between the braces.
        placeholder: String,
    },
    /// Two placeholders in a row (`{a}{b}`): where one ends is unknowable.
    #[error("pattern {0:?}: placeholders must be separated by text")]
    Adjacent(String),
    /// Literal text that cannot be part of a channel name.
    #[error("pattern {pattern:?}: {text:?} is not valid channel text")]
    BadText {
        /// The pattern.
        pattern: String,
        /// The offending text.
        text: String,
    },
}

/// Callers that collect problems as text (the server's rule compiler).
impl From<PatternError> for String {
    fn from(e: PatternError) -> String {
        e.to_string()
    }
}

/// A parsed channel pattern such as `room:{id}` or `user:{sub}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelPattern {
    parts: Vec<Part>,
}

impl ChannelPattern {
    /// Parse a pattern; placeholders must be separated by literal text.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let mut parts = Vec::new();
        let mut rest = pattern;
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest
                        .find('}')
                        .ok_or_else(|| PatternError::Unclosed(pattern.to_owned()))?;
                    let name = &rest[1..end];
                    let part = if name == "sub" {
                        Part::Subject
                    } else if let Some(claim) = name.strip_prefix("claim:") {
                        if claim.is_empty() {
                            return Err(PatternError::EmptyClaim(pattern.to_owned()));
                        }
                        Part::Claim(claim.to_owned())
                    } else if !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        Part::Any
                    } else {
                        return Err(PatternError::BadPlaceholder {
                            pattern: pattern.to_owned(),
                            placeholder: name.to_owned(),
                        });
                    };
                    if parts.last().is_some_and(|p| !matches!(p, Part::Literal(_))) {
                        return Err(PatternError::Adjacent(pattern.to_owned()));
                    }
                    parts.push(part);
                    rest = &rest[end + 1..];
                }
                Some(i) => {
                    parts.push(Part::Literal(rest[..i].to_owned()));
                    rest = &rest[i..];
                }
                None => {
                    parts.push(Part::Literal(rest.to_owned()));
                    rest = "";
                }
            }
        }
        for p in &parts {
            if let Part::Literal(l) = p
                && (l.contains('}') || !sluice_protocol::is_valid_channel(l))
            {
                return Err(PatternError::BadText {
                    pattern: pattern.to_owned(),
                    text: l.clone(),
                });
            }
        }
        Ok(Self { parts })
    }

    /// The pattern's parts, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The names of the claims its `{claim:NAME}` placeholders read.
    pub fn claims(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Claim(name) => Some(name.as_str()),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> ChannelRuleConfig {
        toml::from_str(&format!("pattern = \"room:{{id}}\"\n{text}")).unwrap()
    }

    #[test]
    fn a_rule_allows_both_ways_without_scopes_history_or_presence_by_default() {
        let r = rule("");
        assert!(r.subscribe && r.publish);
        assert!(r.subscribe_scopes.is_empty() && r.publish_scopes.is_empty());
        assert_eq!(r.history, None);
        assert!(!r.presence && !r.presence_events);
        assert!(r.problems("tenants.t", 0).is_empty());
        let full = rule(
            "history = { size = 100000, ttl_secs = 2592000 }\npresence = true\npresence_events = true",
        );
        assert!(full.problems("tenants.t", 0).is_empty());
    }

    #[test]
    fn every_problem_of_a_rule_is_named() {
        let r = ChannelRuleConfig {
            pattern: "room:{a b}".into(),
            ..rule("history = { size = 0, ttl_secs = 0 }\npresence_events = true")
        };
        assert_eq!(
            r.problems("tenants.t", 2),
            [
                "tenants.t.channels[2]: pattern \"room:{a b}\": bad placeholder {a b}",
                "tenants.t.channels[2].history.size: 0 must be 1-100000",
                "tenants.t.channels[2].history.ttl_secs: 0 must be 1-2592000",
                "tenants.t.channels[2]: presence_events needs presence = true",
            ]
        );
        let r = rule("history = { size = 100001, ttl_secs = 2592001 }");
        assert_eq!(
            r.problems("tenants.t", 0),
            [
                "tenants.t.channels[0].history.size: 100001 must be 1-100000",
                "tenants.t.channels[0].history.ttl_secs: 2592001 must be 1-2592000",
            ]
        );
    }

    #[test]
    fn patterns_parse_or_say_why_not() {
        let p = ChannelPattern::parse("team:{claim:teams}:chat").unwrap();
        assert_eq!(p.claims().collect::<Vec<_>>(), ["teams"]);
        assert_eq!(
            p.parts(),
            [
                Part::Literal("team:".into()),
                Part::Claim("teams".into()),
                Part::Literal(":chat".into()),
            ]
        );
        for (bad, why) in [
            ("", "empty channel pattern"),
            ("room:{id", "pattern \"room:{id\": unclosed {"),
            ("t:{claim:}", "pattern \"t:{claim:}\": empty claim name"),
            (
                "room:{a-b}",
                "pattern \"room:{a-b}\": bad placeholder {a-b}",
            ),
            (
                "r:{a}{b}",
                "pattern \"r:{a}{b}\": placeholders must be separated by text",
            ),
            (
                "room }:{id}",
                "pattern \"room }:{id}\": \"room }:\" is not valid channel text",
            ),
        ] {
            let e = ChannelPattern::parse(bad).unwrap_err();
            assert_eq!(e.to_string(), why);
            assert_eq!(String::from(e), why);
        }
    }
}
