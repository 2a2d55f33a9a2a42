//! Effects: every action a handler returns is authorized again, as if the
//! client had asked for it, and becomes a typed [`Effect`]. A refused action
//! is dropped, counted and logged; the others apply. Frames are serialized
//! once, before they reach the broker: here, or (a publish, which may get
//! an offset) when it is published.

use std::sync::Arc;

use serde_json::value::RawValue;
use sluice_protocol::{self as protocol, CloseReason, MAX_OFFSET, Since};
use sluice_sandbox::{Action, Export};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::call::Proposed;
use crate::authz::{ChannelFeatures, ChannelOp, ChannelRule, Principal, channel_allowed, permit};
use crate::backends::keys::{ChannelKey, SubjectKey};
use crate::tenant::Tenant;

/// Longest subject a `send` may address.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// An authorized action.
#[derive(Debug)]
pub enum Effect {
    /// Answer the message (`ack` data), or an `event` to this connection
    /// outside a message.
    Reply(Box<RawValue>),
    /// Publish on a channel (the frame is made when it is published: a
    /// channel with history gives it its offset).
    Publish {
        /// The channel.
        key: ChannelKey,
        /// The event's `data`.
        data: Box<RawValue>,
        /// What the channel keeps (its history), read with its rules once.
        features: ChannelFeatures,
    },
    /// Send this frame to every connection of a subject.
    Send {
        /// The subject.
        key: SubjectKey,
        /// The `event` frame.
        frame: Utf8Bytes,
    },
    /// Subscribe this connection (the session still checks its own
    /// subscription cap), recovering after `since` if given.
    Subscribe {
        /// The channel.
        channel: String,
        /// Where the client left off (`subscribe-since`).
        since: Option<Since>,
    },
    /// Unsubscribe this connection.
    Unsubscribe(String),
    /// Close this connection.
    Close(CloseReason),
}

/// Authorize `proposed` for the connection of `principal` on `tenant`.
/// Refused actions are dropped, counted and logged.
pub fn authorize(tenant: &Tenant, principal: &Principal, proposed: Proposed) -> Vec<Effect> {
    let Proposed {
        handler,
        export,
        actions,
        ..
    } = proposed;
    let mut effects = Vec::with_capacity(actions.len());
    let mut replied = false;
    for action in actions {
        match effect(
            &tenant.channels,
            &tenant.key,
            principal,
            export,
            action,
            &mut replied,
        ) {
            Ok(Some(e)) => effects.push(e),
            Ok(None) => {}
            Err(what) => {
                tenant.metrics.action_refused();
                tracing::warn!(tenant = %tenant.id, handler = %handler.spec().name, action = what, "handler action refused");
            }
        }
    }
    effects
}

/// One action, authorized as if the client had asked for it, for a
/// connection of `principal` on the tenant keyed `tenant` with `channels`:
/// its effect, `None` when it does not apply (a disconnecting connection
/// can only reach others), or why it is refused. `replied`: whether an
/// earlier action of the same call replied (a second reply is refused).
pub fn effect(
    channels: &[ChannelRule],
    tenant: &Arc<str>,
    principal: &Principal,
    export: Export,
    action: Action,
    replied: &mut bool,
) -> Result<Option<Effect>, &'static str> {
    // A connection that is going away can only reach others.
    if export == Export::Disconnect && !matches!(action, Action::Publish(_) | Action::Send(_)) {
        return Ok(None);
    }
    let json = |data: String, what: &'static str| RawValue::from_string(data).map_err(|_| what);
    let subscribable = |channel: &str| {
        channel_allowed(channels, principal, channel, ChannelOp::Subscribe)
            .then_some(())
            .ok_or("subscribe to a channel this principal may not subscribe to")
    };
    Ok(Some(match action {
        Action::Reply(data) => {
            if *replied {
                return Err("second reply");
            }
            let raw = json(data, "reply with invalid JSON")?;
            *replied = true;
            Effect::Reply(raw)
        }
        Action::Publish(p) => {
            let raw = json(p.data, "publish with invalid JSON")?;
            let features = permit(channels, principal, &p.channel, ChannelOp::Publish)
                .ok_or("publish to a channel this principal may not publish to")?;
            Effect::Publish {
                key: ChannelKey::new(tenant, &p.channel),
                data: raw,
                features,
            }
        }
        Action::Send(s) => {
            let raw = json(s.data, "send with invalid JSON")?;
            if s.subject.is_empty() || s.subject.len() > MAX_SUBJECT_BYTES {
                return Err("send to an invalid subject");
            }
            Effect::Send {
                key: SubjectKey::new(tenant, &s.subject),
                frame: Utf8Bytes::from(protocol::event(None, &raw)),
            }
        }
        Action::Subscribe(channel) => {
            subscribable(&channel)?;
            Effect::Subscribe {
                channel,
                since: None,
            }
        }
        Action::SubscribeSince(r) => {
            let epoch_ok =
                !r.since.epoch.is_empty() && r.since.epoch.len() <= protocol::MAX_EPOCH_BYTES;
            if !epoch_ok || r.since.offset > MAX_OFFSET {
                return Err("subscribe-since with an offset or epoch out of range");
            }
            subscribable(&r.channel)?;
            Effect::Subscribe {
                channel: r.channel,
                since: Some(Since {
                    offset: r.since.offset,
                    epoch: r.since.epoch,
                }),
            }
        }
        Action::Unsubscribe(channel) => Effect::Unsubscribe(channel),
        Action::Close(c) => Effect::Close(CloseReason::handler(c.code, c.reason)),
    }))
}

#[cfg(test)]
mod tests {
    use sluice_config::ChannelRuleConfig;
    use sluice_sandbox::{CloseRequest, Position, Publish, Resubscribe, SendToSubject};

    use super::*;

    fn rules() -> Vec<ChannelRule> {
        let rule = |pattern: &str, subscribe: bool, publish: bool, history: bool| {
            let mut c = serde_json::json!({
                "pattern": pattern, "subscribe": subscribe, "publish": publish,
            });
            if history {
                c["history"] = serde_json::json!({ "size": 10, "ttl_secs": 60 });
            }
            let c: ChannelRuleConfig = serde_json::from_value(c).unwrap();
            ChannelRule::compile(&c).unwrap()
        };
        vec![
            rule("room:{id}", true, true, true),
            rule("user:{sub}", true, false, false),
            rule("news", true, false, false),
        ]
    }

    fn alice() -> Principal {
        Principal {
            subject: "alice".into(),
            claims: Default::default(),
            scopes: Default::default(),
            expires_at: 0,
        }
    }

    fn run(export: Export, actions: Vec<Action>) -> Vec<Result<Option<Effect>, &'static str>> {
        let tenant: Arc<str> = "t".into();
        let mut replied = false;
        actions
            .into_iter()
            .map(|a| effect(&rules(), &tenant, &alice(), export, a, &mut replied))
            .collect()
    }

    fn publish(channel: &str, data: &str) -> Action {
        Action::Publish(Publish {
            channel: channel.into(),
            data: data.into(),
        })
    }

    #[test]
    fn publishes_follow_the_channel_rules_and_carry_the_channel_features() {
        let got = run(
            Export::Message,
            vec![
                publish("room:1", "{}"),
                publish("news", "{}"),
                publish("user:alice", "{}"),
                publish("room:1", "not json"),
                publish("elsewhere:1", "{}"),
            ],
        );
        match &got[0] {
            Ok(Some(Effect::Publish { key, features, .. })) => {
                assert_eq!((&*key.tenant, &*key.channel), ("t", "room:1"));
                assert!(features.history.is_some(), "room:* keeps history");
            }
            other => panic!("room:1 is publishable: {other:?}"),
        }
        for refused in &got[1..3] {
            assert_eq!(
                refused.as_ref().err(),
                Some(&"publish to a channel this principal may not publish to")
            );
        }
        assert_eq!(got[3].as_ref().err(), Some(&"publish with invalid JSON"));
        assert!(got[4].is_err(), "no rule, no access");
    }

    #[test]
    fn one_reply_per_call_and_subscriptions_are_checked_like_a_client_s() {
        let got = run(
            Export::Message,
            vec![
                Action::Reply("{\"a\":1}".into()),
                Action::Reply("{}".into()),
                Action::Subscribe("user:alice".into()),
                Action::Subscribe("user:bob".into()),
                Action::SubscribeSince(Resubscribe {
                    channel: "room:2".into(),
                    since: Position {
                        offset: 3,
                        epoch: "e".into(),
                    },
                }),
                Action::SubscribeSince(Resubscribe {
                    channel: "room:2".into(),
                    since: Position {
                        offset: MAX_OFFSET + 1,
                        epoch: "e".into(),
                    },
                }),
                Action::SubscribeSince(Resubscribe {
                    channel: "room:2".into(),
                    since: Position {
                        offset: 1,
                        epoch: "x".repeat(protocol::MAX_EPOCH_BYTES + 1),
                    },
                }),
            ],
        );
        assert!(matches!(&got[0], Ok(Some(Effect::Reply(r))) if r.get() == "{\"a\":1}"));
        assert_eq!(got[1].as_ref().err(), Some(&"second reply"));
        assert!(matches!(
            &got[2],
            Ok(Some(Effect::Subscribe { since: None, .. }))
        ));
        assert!(got[3].is_err(), "another subject's channel");
        assert!(matches!(
            &got[4],
            Ok(Some(Effect::Subscribe { since: Some(s), .. })) if s.offset == 3
        ));
        assert!(got[5].is_err() && got[6].is_err(), "positions out of range");
    }

    #[test]
    fn sends_are_bounded_and_stay_in_the_tenant() {
        let send = |subject: String| {
            Action::Send(SendToSubject {
                subject,
                data: "{}".into(),
            })
        };
        let got = run(
            Export::Message,
            vec![
                send("bob".into()),
                send(String::new()),
                send("x".repeat(MAX_SUBJECT_BYTES + 1)),
            ],
        );
        assert!(matches!(&got[0], Ok(Some(Effect::Send { key, .. })) if &*key.tenant == "t"));
        assert!(got[1].is_err() && got[2].is_err());
    }

    #[test]
    fn a_disconnecting_connection_only_reaches_others() {
        let got = run(
            Export::Disconnect,
            vec![
                Action::Reply("{}".into()),
                Action::Subscribe("news".into()),
                Action::Close(CloseRequest {
                    code: 4000,
                    reason: "bye".into(),
                }),
                publish("room:1", "{}"),
            ],
        );
        assert!(got[..3].iter().all(|e| matches!(e, Ok(None))), "{got:?}");
        assert!(matches!(&got[3], Ok(Some(Effect::Publish { .. }))));
    }
}
