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
use crate::authz::{ChannelFeatures, ChannelOp, Principal, channel_allowed, permit};
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
pub fn authorize(tenant: &Tenant, principal: &Principal, proposed: Proposed) -> Vec<Effect> {
    let Proposed {
        handler,
        export,
        actions,
    } = proposed;
    let refused = |what: &str| {
        tenant.metrics.action_refused();
        tracing::warn!(tenant = %tenant.id, handler = %handler.spec().name, action = what, "handler action refused");
    };
    let json =
        |data: String, what: &str| RawValue::from_string(data).map_err(|_| refused(what)).ok();
    let tenant_id: Arc<str> = Arc::clone(&tenant.key);
    let mut effects = Vec::with_capacity(actions.len());
    let mut replied = false;
    for action in actions {
        // A connection that is going away can only reach others.
        if export == Export::Disconnect && !matches!(action, Action::Publish(_) | Action::Send(_)) {
            continue;
        }
        match action {
            Action::Reply(data) => {
                if replied {
                    refused("second reply");
                    continue;
                }
                let Some(raw) = json(data, "reply with invalid JSON") else {
                    continue;
                };
                replied = true;
                effects.push(Effect::Reply(raw));
            }
            Action::Publish(p) => {
                let Some(raw) = json(p.data, "publish with invalid JSON") else {
                    continue;
                };
                let Some(features) =
                    permit(&tenant.channels, principal, &p.channel, ChannelOp::Publish)
                else {
                    refused("publish to a channel this principal may not publish to");
                    continue;
                };
                effects.push(Effect::Publish {
                    key: ChannelKey::new(&tenant_id, &p.channel),
                    data: raw,
                    features,
                });
            }
            Action::Send(s) => {
                let Some(raw) = json(s.data, "send with invalid JSON") else {
                    continue;
                };
                if s.subject.is_empty() || s.subject.len() > MAX_SUBJECT_BYTES {
                    refused("send to an invalid subject");
                    continue;
                }
                let frame = Utf8Bytes::from(protocol::event(None, &raw));
                effects.push(Effect::Send {
                    key: SubjectKey::new(&tenant_id, &s.subject),
                    frame,
                });
            }
            Action::Subscribe(channel) => {
                if channel_allowed(&tenant.channels, principal, &channel, ChannelOp::Subscribe) {
                    effects.push(Effect::Subscribe {
                        channel,
                        since: None,
                    });
                } else {
                    refused("subscribe to a channel this principal may not subscribe to");
                }
            }
            Action::SubscribeSince(r) => {
                let epoch_ok =
                    !r.since.epoch.is_empty() && r.since.epoch.len() <= protocol::MAX_EPOCH_BYTES;
                if !epoch_ok || r.since.offset > MAX_OFFSET {
                    refused("subscribe-since with an offset or epoch out of range");
                } else if channel_allowed(
                    &tenant.channels,
                    principal,
                    &r.channel,
                    ChannelOp::Subscribe,
                ) {
                    effects.push(Effect::Subscribe {
                        channel: r.channel,
                        since: Some(Since {
                            offset: r.since.offset,
                            epoch: r.since.epoch,
                        }),
                    });
                } else {
                    refused("subscribe to a channel this principal may not subscribe to");
                }
            }
            Action::Unsubscribe(channel) => effects.push(Effect::Unsubscribe(channel)),
            Action::Close(c) => effects.push(Effect::Close(CloseReason::handler(c.code, c.reason))),
        }
    }
    effects
}
