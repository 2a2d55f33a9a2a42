//! Subscriptions: subscribe (with history recovery when the channel
//! keeps it), unsubscribe, presence (join/leave with the debounce, the
//! `presence` request), and dropping what the rules no longer allow.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use sluice_protocol::{self as protocol, ErrorCode, Position, Rejection, Since};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::connection::Session;
use crate::authz::{ChannelFeatures, ChannelOp, channel_allowed, channel_features};
use crate::backends::keys::{ChannelKey, Member};
use crate::presence::Joined;
use crate::stages::authorize;

/// Channels one connection may be subscribed to at once.
pub const MAX_SUBSCRIPTIONS: usize = 256;

/// `retry_after_ms` of a subscribe refused because the channel's history
/// could not be reached.
const SUBSCRIBE_RETRY_MS: u64 = 500;

/// Who asked for a subscription, and so how it is answered.
#[derive(Clone, Copy)]
pub(super) enum Requester<'a> {
    /// The client, with a `subscribe` message: an `ack` to its id.
    Client(Option<&'a str>),
    /// A handler's action: a `subscribed` frame when the channel has a
    /// position to tell, nothing otherwise.
    Handler,
}

impl Session {
    /// Unsubscribe from every channel the tenant's rules no longer let the
    /// principal subscribe to; the channels dropped, sorted.
    pub(super) fn drop_disallowed_subscriptions(&mut self) -> Vec<String> {
        let mut dropped: Vec<String> = self
            .subscriptions
            .keys()
            .filter(|ch| {
                !channel_allowed(
                    &self.tenant.channels,
                    &self.principal,
                    ch,
                    ChannelOp::Subscribe,
                )
            })
            .cloned()
            .collect();
        dropped.sort();
        for channel in &dropped {
            self.unsubscribe(channel);
        }
        dropped
    }

    pub(super) fn features(&self, channel: &str) -> ChannelFeatures {
        channel_features(&self.tenant.channels, channel)
    }

    /// Subscribe to `channel`, answering `requester` (see [`Requester`]).
    /// With history, the answer carries the channel's offset and epoch,
    /// and with `since` whether the events missed since then follow it.
    pub(super) async fn subscribe(
        &mut self,
        channel: &str,
        since: Option<&Since>,
        requester: Requester<'_>,
    ) -> Result<(), Rejection> {
        let features = authorize::subscription(&self.tenant, &self.principal, channel)?;
        let new = !self.subscriptions.contains_key(channel);
        if new && self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            return Err(Rejection::error(
                ErrorCode::TooManySubscriptions,
                "too many subscriptions",
            ));
        }
        let key = self.channel_key(channel);
        let member = Member {
            id: self.id,
            outbox: self.outbox.clone(),
        };
        match features.history {
            Some(rule) => {
                // A client's subscribe gets an ack with the position; a
                // handler's gets a `subscribed` frame with it.
                let ack = move |p: &Position| {
                    let mut data = serde_json::json!({ "offset": p.offset, "epoch": &*p.epoch });
                    if let Some(r) = p.recovered {
                        data["recovered"] = r.into();
                    }
                    let raw = RawValue::from_string(data.to_string()).ok()?;
                    Some(match requester {
                        Requester::Client(id) => protocol::ack(id, Some(&raw)),
                        Requester::Handler => protocol::subscribed(channel, &raw),
                    })
                };
                if let Err(e) = self
                    .state
                    .history
                    .subscribe(&key, rule, since, member, Box::new(ack))
                    .await
                {
                    tracing::warn!(tenant = %self.tenant.id, error = %e, "subscribe refused: the channel's position is unknown");
                    return Err(Rejection::retry(
                        ErrorCode::Unavailable,
                        "the channel's history cannot be reached; subscribe again",
                        SUBSCRIBE_RETRY_MS,
                    ));
                }
            }
            None => {
                self.state.broker.subscribe(&key, member);
                self.state.broker.channel_ready(&key).await;
                if let Requester::Client(id) = requester {
                    // No history: nothing can be recovered.
                    let raw = since.and_then(|_| {
                        RawValue::from_string(r#"{"recovered":false}"#.to_owned()).ok()
                    });
                    self.send(protocol::ack(id, raw.as_deref()));
                }
            }
        }
        if new {
            let joined = match features.presence {
                true => Some(self.join_presence(&key, features).await),
                false => None,
            };
            self.subscriptions.insert(channel.to_owned(), joined);
        }
        Ok(())
    }

    pub(super) async fn join_presence(
        &self,
        key: &ChannelKey,
        features: ChannelFeatures,
    ) -> Joined {
        let claims = RawValue::from_string(self.conn.principal.claims.clone())
            .unwrap_or_else(|_| empty_object());
        let joined = self.state.presence.join(
            key,
            &self.principal.subject,
            &claims,
            self.tenant.config.limits.max_presence_members,
        );
        if joined == Joined::New
            && features.presence_events
            && !self
                .state
                .presence
                .present_elsewhere(key, &self.principal.subject)
        {
            let frame =
                protocol::presence_event(true, &key.channel, &self.principal.subject, &claims);
            let _ = self.state.broker.publish(key, Utf8Bytes::from(frame)).await;
        }
        joined
    }

    /// This connection no longer counts in the channel's presence; after
    /// the debounce, if the subject did not come back, it leaves.
    pub(super) fn leave_presence(&self, key: ChannelKey, joined: Joined) {
        let Some(generation) = self
            .state
            .presence
            .leave(&key, &self.principal.subject, joined)
        else {
            return;
        };
        let state = Arc::downgrade(&self.state);
        let subject = self.principal.subject.clone();
        let debounce = Duration::from_millis(self.tenant.config.limits.presence_debounce_ms);
        let events = self.features(&key.channel).presence_events;
        tokio::spawn(async move {
            tokio::time::sleep(debounce).await;
            let Some(state) = state.upgrade() else {
                return;
            };
            if let Some(claims) = state.presence.expire(&key, &subject, generation)
                && events
                && !state.presence.present_elsewhere(&key, &subject)
            {
                let frame = protocol::presence_event(false, &key.channel, &subject, &claims);
                let _ = state.broker.publish(&key, Utf8Bytes::from(frame)).await;
            }
        });
    }

    /// `{"type":"presence","channel":...}`: the channel's members, if its
    /// rule has presence and the principal may subscribe to it.
    pub(super) fn presence(&self, channel: &str, id: Option<&str>) -> Result<(), Rejection> {
        let features = authorize::subscription(&self.tenant, &self.principal, channel)?;
        if !features.presence {
            return Err(Rejection::error(
                ErrorCode::Forbidden,
                "presence is not enabled on this channel",
            ));
        }
        let (members, truncated) = self.state.presence.list(&self.channel_key(channel));
        let data = serde_json::json!({ "members": members, "truncated": truncated });
        let raw = RawValue::from_string(data.to_string()).ok();
        self.send(protocol::ack(id, raw.as_deref()));
        Ok(())
    }

    pub(super) fn unsubscribe(&mut self, channel: &str) {
        if let Some(joined) = self.subscriptions.remove(channel) {
            let key = self.channel_key(channel);
            self.state.broker.unsubscribe(&key, self.id);
            if let Some(joined) = joined {
                self.leave_presence(key, joined);
            }
        }
    }
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).unwrap_or_else(|_| RawValue::NULL.to_owned())
}
