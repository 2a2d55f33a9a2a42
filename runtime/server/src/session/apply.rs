//! Apply: what the handler proposed and the host authorized, in order:
//! publishes (with an offset and a durable write when the channel keeps
//! history), sends to a subject, subscriptions, a close; a message's
//! answer last. The `ack` goes out only when every publish and send of the
//! message succeeded (and was stored), whatever order the handler gave. Also the lifecycle calls (`on-connect`,
//! `on-disconnect`), whose effects are applied the same way.

use serde_json::value::RawValue;
use sluice_protocol::{self as protocol, Code, ErrorCode, Rejection};
use sluice_sandbox::{Export, Handler};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::connection::{Flow, Session};
use super::subscriptions::Requester;
use crate::authz::ChannelFeatures;
use crate::backends::keys::ChannelKey;
use crate::idempotency::{self, Running};
use crate::stages::call;
use crate::stages::effects::{self, Effect};
use crate::tenant::RouteHandler;

impl Session {
    /// Call `on-connect` / `on-disconnect` on every configured handler of
    /// the tenant and every pushed one a route names (once each): a pushed
    /// handler no route reaches never runs for a connection, so pushing
    /// many cannot make each connection hold an instance of each.
    pub(super) async fn lifecycle(&mut self, export: Export) -> Flow {
        let mut handlers: Vec<Handler> = self.tenant.handlers.values().cloned().collect();
        let mut pushed: Vec<&str> = Vec::new();
        for route in self.tenant.routes.values() {
            if let RouteHandler::Pushed(slot) = &route.handler
                && !pushed.contains(&slot.name())
            {
                pushed.push(slot.name());
                handlers.extend(call::lifecycle_handler(&route.handler, self.id));
            }
        }
        let mut flow = Flow::Continue;
        for handler in handlers {
            let Some(proposed) = call::lifecycle(&handler, export, &self.conn).await else {
                continue;
            };
            let tenant = self.tenant.clone();
            let effects = effects::authorize(&tenant, &self.principal, proposed);
            if let Flow::Close(reason) = self.apply(effects, export, None, None).await {
                flow = Flow::Close(reason);
            }
        }
        flow
    }

    /// Apply authorized effects, in order. For a message, its answer goes
    /// out last, whatever the handler's order: the `ack` (carrying the
    /// reply, if any) only once every publish and send of the call
    /// succeeded (a publish to a channel with history is on disk by then),
    /// else `unavailable`. A handler that replies first and publishes
    /// second never acknowledges a publish that failed.
    ///
    /// A message with an idempotency key (`keyed`) has its answer kept
    /// under the key before the answer is sent: a retry finds it from the
    /// moment the client could have read it. (On a durable store a record
    /// went to disk with the call's state already; it is replaced only if
    /// the answer turned out otherwise.)
    pub(super) async fn apply(
        &mut self,
        effects: Vec<Effect>,
        export: Export,
        reply_to: Option<&str>,
        keyed: Option<Running>,
    ) -> Flow {
        let mut reply = None;
        // A publish or send that failed (history on a store or JetStream
        // that failed, a broker that could not take it): the message is
        // answered `unavailable`, never acknowledged.
        let mut lost = false;
        let mut flow = Flow::Continue;
        for effect in effects {
            match effect {
                Effect::Reply(raw) if export == Export::Message => reply = Some(raw),
                Effect::Reply(raw) => self.send(protocol::event(None, &raw)),
                Effect::Publish {
                    key,
                    data,
                    features,
                } => lost |= !self.publish(&key, &data, features).await,
                Effect::Send { key, frame } => {
                    if let Err(e) = self.state.broker.send(&key, frame).await {
                        tracing::warn!(tenant = %self.tenant.id, error = %e, "send failed");
                        lost = true;
                    }
                }
                Effect::Subscribe { channel, since } => {
                    if let Err(r) = self
                        .subscribe(&channel, since.as_ref(), Requester::Handler)
                        .await
                    {
                        self.tenant.metrics.action_refused();
                        tracing::warn!(tenant = %self.tenant.id, action = "subscribe", refusal = ?r, "handler action refused");
                        // The channel's history could not be reached: the
                        // message is not acknowledged, so the client retries.
                        lost |= r.code() == Some(&Code::Host(ErrorCode::Unavailable));
                    }
                }
                Effect::Unsubscribe(channel) => self.unsubscribe(&channel),
                Effect::Close(reason) => flow = Flow::Close(reason),
            }
        }
        if export == Export::Message {
            if let Some(keyed) = keyed {
                let answer = idempotency::answer_after_effects(reply.as_deref(), lost);
                if let Err(e) = keyed.settle(answer).await {
                    tracing::warn!(tenant = %self.tenant.id, error = %e,
                        "an answer under a key could not be stored");
                }
            }
            if lost {
                let _ = self.reject(
                    reply_to,
                    &Rejection::error(ErrorCode::Unavailable, idempotency::LOST_MESSAGE),
                );
            } else {
                self.tenant.metrics.message_ok(self.started.elapsed());
                self.send(protocol::ack(reply_to, reply.as_deref()));
            }
        }
        flow
    }

    /// Publish `data` on a channel: with its history (an offset, kept, on
    /// disk before this returns) or straight to the broker. False when it
    /// could not be stored or handed to the broker.
    pub(super) async fn publish(
        &self,
        key: &ChannelKey,
        data: &RawValue,
        features: ChannelFeatures,
    ) -> bool {
        let result = match features.history {
            Some(rule) => self
                .state
                .history
                .publish(key, rule, data)
                .await
                .map_err(|e| e.to_string()),
            None => {
                let frame = Utf8Bytes::from(protocol::event(Some(&key.channel), data));
                self.state
                    .broker
                    .publish(key, frame)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        match result {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(tenant = %self.tenant.id, error = %e, "publish failed");
                false
            }
        }
    }
}
