//! A frame, as the session handles it: counted against the rate limits
//! before it is parsed, checked against a reload, decoded, and either
//! answered by the host (the reserved types: ping, subscribe, presence,
//! unsubscribe, refresh) or sent down the message path of
//! [`crate::stages`] (authorize -> validate -> call -> effects) and
//! applied.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use sluice_protocol::{self as protocol, Answer, CloseReason, ErrorCode, Rejection};
use sluice_sandbox::{Action, Attach, Attachment, Export};

use super::connection::{Flow, Session, expiry};
use super::subscriptions::Requester;
use crate::idempotency::{self, Begin, EntryId, Record, Running, Ticket};
use crate::stages::decode::{self, Request};
use crate::stages::{authorize, call, effects, validate};

impl Session {
    /// Every frame counts against the connection's, the subject's and the
    /// tenant's quotas, valid or not.
    pub(super) fn check_rate(&self) -> Result<(), Duration> {
        // The limiters' own clocks: building a clock (quanta calibrates
        // with cpuid) per message cost a third of the server's CPU.
        use governor::clock::Clock as _;
        self.limiter
            .check()
            .map_err(|n| n.wait_time_from(self.limiter.clock().now()))?;
        self.tenant.subject_limiter.check(&self.principal.subject)?;
        let tenant = &self.tenant.tenant_limiter;
        tenant
            .check()
            .map_err(|n| n.wait_time_from(tenant.clock().now()))?;
        Ok(())
    }

    /// Check this session against the configuration as it is now (after
    /// a reload): the tenant still there and the same incarnation, the
    /// token still verifying with its keys, every subscription still
    /// allowed by its channel rules.
    pub(super) fn recheck(&mut self) -> Flow {
        let Some(current) = self.state.tenant(&self.tenant.id) else {
            tracing::debug!(tenant = %self.tenant.id, connection = self.id, "tenant removed");
            return Flow::Close(CloseReason::TenantRemoved);
        };
        if current.incarnation != self.tenant.incarnation {
            return Flow::Close(CloseReason::TenantRemoved);
        }
        if Arc::ptr_eq(&current, &self.tenant) {
            return Flow::Continue;
        }
        let origin_allowed = match &self.origin {
            Some(o) => current.config.origins.iter().any(|a| **a == **o),
            None => !current.config.require_origin,
        };
        if !origin_allowed {
            tracing::info!(tenant = %self.tenant.id, connection = self.id,
                "the tenant no longer allows this connection's origin: closing");
            return Flow::Close(CloseReason::OriginRevoked);
        }
        // A token past its expiry is the expiry timer's to close.
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let expired = self
            .principal
            .expires_at
            .saturating_add(current.config.auth.leeway_secs)
            <= now_unix;
        if !expired {
            match current.keys.verify(&self.token) {
                Ok(principal) if principal.subject == self.principal.subject => {
                    self.principal = principal;
                }
                _ => {
                    tracing::info!(tenant = %self.tenant.id, connection = self.id,
                        "the token no longer verifies after the tenant changed: closing");
                    return Flow::Close(CloseReason::KeyRevoked);
                }
            }
        }
        self.conn.principal.claims = current.exposed_claims(&self.principal.claims);
        self.tenant = current;
        for channel in self.drop_disallowed_subscriptions() {
            self.send(protocol::unsubscribed(
                &channel,
                "the channel rules no longer allow this subscription",
            ));
        }
        Flow::Continue
    }

    /// Count one frame against the rate limits, before anything else is
    /// done with it. `Err(flow)` when it is refused: a `rate_limited` error
    /// (for a data frame, answering the id peeked from `text` if any), or a
    /// close for sustained abuse.
    pub(super) fn count_frame(&mut self, text: Option<&str>, answer: bool) -> Result<(), Flow> {
        let Err(wait) = self.check_rate() else {
            self.limited_in_a_row = 0;
            return Ok(());
        };
        self.limited_in_a_row += 1;
        if self.limited_in_a_row >= self.tenant.config.limits.abuse_close_after {
            tracing::info!(tenant = %self.tenant.id, connection = self.id, "closed for rate-limit abuse");
            return Err(Flow::Close(CloseReason::RateLimitAbuse));
        }
        if !answer {
            return Err(Flow::Continue);
        }
        let rejection = Rejection::retry(
            ErrorCode::RateLimited,
            "too many messages",
            wait.as_millis() as u64,
        );
        Err(self.reject(text.and_then(protocol::peek_id), &rejection))
    }

    pub(super) async fn on_text(&mut self, text: &str) -> Flow {
        self.started = std::time::Instant::now();
        // A reload swaps tenants: check against the current one (its keys,
        // routes, schemas, handlers, rules) before this message.
        if let Flow::Close(reason) = self.recheck() {
            return Flow::Close(reason);
        }
        // Refused before parsing: a flood costs no JSON work.
        if let Err(flow) = self.count_frame(Some(text), true) {
            return flow;
        }
        let decode::Decoded { id, request } = decode::decode(
            text,
            self.state.config.server.max_json_depth,
            self.state.idempotency.is_some(),
        );
        let result = match request {
            Ok(request) => self.dispatch(request, id.as_deref()).await,
            Err(rejection) => Err(rejection),
        };
        match result {
            Ok(flow) => flow,
            Err(rejection) => self.reject(id.as_deref(), &rejection),
        }
    }

    pub(super) async fn dispatch(
        &mut self,
        request: Request,
        id: Option<&str>,
    ) -> Result<Flow, Rejection> {
        let envelope = match request {
            Request::Ping => {
                self.tenant.metrics.message_ok(self.started.elapsed());
                self.send(protocol::pong(id));
                return Ok(Flow::Continue);
            }
            Request::Subscribe { channel, since } => {
                self.subscribe(&channel, since.as_ref(), Requester::Client(id))
                    .await?;
                self.tenant.metrics.message_ok(self.started.elapsed());
                return Ok(Flow::Continue);
            }
            Request::Presence { channel } => {
                self.presence(&channel, id)?;
                self.tenant.metrics.message_ok(self.started.elapsed());
                return Ok(Flow::Continue);
            }
            Request::Unsubscribe { channel } => {
                self.unsubscribe(&channel);
                self.tenant.metrics.message_ok(self.started.elapsed());
                self.send(protocol::ack(id, None));
                return Ok(Flow::Continue);
            }
            Request::Refresh { token } => {
                self.refresh(&token, id)?;
                return Ok(Flow::Continue);
            }
            Request::Route(envelope) => envelope,
        };
        let tenant = self.tenant.clone();
        // The key's entry and the request's fingerprint, taken before
        // authorize takes the envelope (a message without a key costs
        // nothing here).
        let keyed = match (&self.state.idempotency, envelope.key.as_deref()) {
            (Some(table), Some(key)) => Some((
                table.clone(),
                EntryId::new(tenant.id.as_str(), self.principal.subject.as_str(), key),
                envelope.fingerprint(),
            )),
            _ => None,
        };
        let authorized = authorize::authorize(&tenant, &self.principal, envelope)?;
        let validated = validate::validate(authorized)?;
        // A retry passed the same checks as its first attempt; a refusal
        // before this point took no entry.
        let ticket = match keyed {
            None => None,
            Some((table, entry, fingerprint)) => match table.begin(&entry, fingerprint).await {
                Ok(Begin::Run(ticket)) => {
                    tenant.metrics.idempotency_miss();
                    Some(ticket)
                }
                Ok(Begin::Replay(answer)) => {
                    self.replay(&answer, id);
                    return Ok(Flow::Continue);
                }
                Err(refusal) => return Err(refusal.rejection()),
            },
        };
        // On a durable store the answer is written in the call's own state
        // transaction, before any effect (`answer_before_effects`): a crash
        // leaves both or neither.
        let attach = ticket.as_ref().map(|ticket| {
            let id = ticket.id().clone();
            let blank = ticket.record(&Answer::Ack(None));
            move |actions: &[Action]| Attachment {
                subject: id.subject.clone(),
                key: id.key.clone(),
                expires_at_ms: blank.expires_at_ms,
                record: Record {
                    answer: idempotency::answer_before_effects(actions),
                    ..blank.clone()
                }
                .encode(),
            }
        });
        let attach = attach.as_ref().map(|a| a as Attach<'_>);
        let proposed = match call::call(validated, &self.conn, attach).await {
            Ok(proposed) => proposed,
            Err(rejection) => {
                if let Some(ticket) = ticket {
                    settle_failed_call(ticket, &rejection).await;
                }
                return Err(rejection);
            }
        };
        let running = ticket.map(|ticket| Running {
            ticket,
            written: proposed
                .attached
                .then(|| idempotency::answer_before_effects(&proposed.actions)),
        });
        let effects = effects::authorize(&tenant, &self.principal, proposed);
        Ok(self.apply(effects, Export::Message, id, running).await)
    }

    /// Answer a retry with its first attempt's answer, under the retry's
    /// own `id`; counted like the answer it is.
    fn replay(&self, answer: &Answer, id: Option<&str>) {
        let took = self.started.elapsed();
        match answer {
            Answer::Ack(_) => self.tenant.metrics.message_ok(took),
            Answer::Error { code, .. } => self.tenant.metrics.message_error(code.as_str(), took),
        }
        self.send(answer.frame(id));
    }

    /// `{"type":"refresh","data":{"token":"..."}}`: a new token for the same
    /// tenant and subject extends the connection; subscriptions the new
    /// claims no longer allow are dropped and listed in the ack.
    pub(super) fn refresh(&mut self, token: &str, id: Option<&str>) -> Result<(), Rejection> {
        let principal = self.tenant.keys.verify(token).map_err(|e| {
            tracing::debug!(tenant = %self.tenant.id, connection = self.id, reason = %e, "refresh token refused");
            Rejection::error(ErrorCode::InvalidToken, "the token is not valid")
        })?;
        if principal.subject != self.principal.subject {
            return Err(Rejection::error(
                ErrorCode::Forbidden,
                "a refresh must keep the same subject",
            ));
        }
        self.expires = expiry(principal.expires_at, self.tenant.config.auth.leeway_secs);
        self.token = token.into();
        self.conn.principal.claims = self.tenant.exposed_claims(&principal.claims);
        self.principal = principal;
        let dropped = self.drop_disallowed_subscriptions();
        let data =
            serde_json::json!({ "expires_at": self.principal.expires_at, "dropped": dropped });
        let raw = RawValue::from_string(data.to_string()).ok();
        self.send(protocol::ack(id, raw.as_deref()));
        Ok(())
    }
}

/// A keyed call that failed before its effects: a handler's rejection is
/// its answer (kept); anything else left nothing behind (released: a
/// retry runs it).
async fn settle_failed_call(ticket: Ticket, rejection: &Rejection) {
    match idempotency::answer_of_failed_call(rejection) {
        Some(answer) => {
            if let Err(e) = ticket.complete(answer).await {
                tracing::warn!(error = %e, "an answer under a key could not be stored");
            }
        }
        None => ticket.abandon().await,
    }
}
