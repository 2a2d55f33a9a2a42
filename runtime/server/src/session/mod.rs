//! One task per connection. The loop ([`run`]) is generic over a
//! Sink/Stream of WebSocket messages, so it runs over a TLS socket in the
//! server and over in-memory channels in unit tests. It reads a frame, then
//! runs the message path of [`crate::stages`] (decode -> rate limit ->
//! authorize -> validate -> call -> authorize effects -> apply), one message
//! at a time. The same task drains the connection's bounded outbound queue
//! once no more input is buffered, batching every frame that is ready into
//! one flush: a message costs no wake-up of a second task, and a pipelining
//! client's answers go out in one write.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use governor::DefaultDirectRateLimiter;
use serde_json::value::RawValue;
use sluice_protocol::{self as protocol, CloseReason, ErrorCode, Rejection, Wire};
use sluice_sandbox::{self as sandbox, Handler};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::ServerState;
use crate::authz::{ChannelFeatures, ChannelOp, Principal, channel_allowed, channel_features};
use crate::broker::{ChannelKey, Member, SubjectKey};
use crate::handshake::Admitted;
use crate::history::Position;
use crate::outbox::{Outbox, OutboxReader, Outgoing};
use crate::presence::Joined;
use crate::ratelimit::quota;
use crate::stages::call::Phase;
use crate::stages::decode::{Request, Since};
use crate::stages::effects::Effect;
use crate::stages::{authorize, call, decode, effects, validate};
use crate::tenant::Tenant;

/// Channels one connection may be subscribed to at once.
pub const MAX_SUBSCRIPTIONS: usize = 256;
/// How long the server waits for a client's answer to its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a closing connection's writer may take to flush.
const WRITER_GRACE: Duration = Duration::from_secs(2);
/// Frames read before queued output is written, at most.
const MAX_READS_PER_WRITE: usize = 32;

/// A connection's WebSocket: frames in, frames out.
pub trait FrameSocket:
    Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + Send
{
}

impl<S> FrameSocket for S where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + Send
{
}

/// What to do after a message.
enum Flow {
    Continue,
    Close(CloseReason),
}

struct Session {
    state: Arc<ServerState>,
    tenant: Arc<Tenant>,
    principal: Principal,
    /// The token the principal came from (verified again after a reload).
    token: Box<str>,
    conn: sandbox::Connection,
    id: u64,
    outbox: Outbox,
    /// Channels subscribed, with how the connection counts in the
    /// channel's presence (if the channel has presence).
    subscriptions: HashMap<String, Option<Joined>>,
    limiter: DefaultDirectRateLimiter,
    limited_in_a_row: u32,
    /// When the token (plus the tenant's leeway) expires.
    expires: tokio::time::Instant,
    /// When the message being handled arrived (for the latency histogram).
    started: std::time::Instant,
}

/// The instant a token expiring at `exp` (seconds since the epoch) stops
/// being valid, allowing `leeway` seconds of clock skew.
fn expiry(exp: u64, leeway: u64) -> tokio::time::Instant {
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let left = exp.saturating_add(leeway).saturating_sub(now_unix);
    tokio::time::Instant::now() + Duration::from_secs(left.min(10 * 365 * 24 * 3600))
}

/// What woke the connection's task.
enum Woke {
    Overflowed,
    Draining,
    Expired,
    Tick,
    Reloaded,
    Read(Option<Result<Message, WsError>>),
    Write(Outgoing),
}

/// How writing the queue ended.
enum Written {
    /// Everything queued was written and flushed.
    Ok,
    /// The connection is gone, or our close frame went out.
    Closed,
    /// The queue overflowed while a flush was blocked.
    Overflowed,
    /// The server started draining while a flush was blocked.
    Draining,
    /// The token expired while a flush was blocked.
    Expired,
    /// Nothing was heard for the idle timeout while a flush was blocked.
    Idle,
}

/// Serve an admitted connection until it closes.
pub async fn run<S: FrameSocket>(state: Arc<ServerState>, mut socket: S, admitted: Admitted) {
    let Admitted {
        tenant,
        principal,
        token,
        slots: _slots,
    } = admitted;
    let principal_expires_at = principal.expires_at;
    let server = &state.config.server;
    let ping_every = Duration::from_millis(server.ping_interval_ms);
    let idle_timeout = Duration::from_millis(server.idle_timeout_ms);
    let mut shutdown = state.shutdown.subscribe();
    let mut reloads = state.reloads.subscribe();
    let id = state.next_connection_id();
    let (outbox, mut reader) = Outbox::new(state.config.server.max_outbound_bytes);
    let limits = &tenant.config.limits;
    let mut session = Session {
        conn: sandbox::Connection {
            id,
            principal: sandbox::Principal {
                tenant: tenant.id.clone(),
                subject: principal.subject.clone(),
                claims: tenant.exposed_claims(&principal.claims),
            },
        },
        limiter: crate::ratelimit::direct(quota(limits.messages_per_sec, limits.message_burst)),
        state: state.clone(),
        tenant: tenant.clone(),
        principal,
        token,
        id,
        outbox: outbox.clone(),
        subscriptions: HashMap::new(),
        limited_in_a_row: 0,
        expires: expiry(principal_expires_at, tenant.config.auth.leeway_secs),
        started: std::time::Instant::now(),
    };
    tracing::debug!(tenant = %tenant.id, connection = id, "connected");
    state.broker.join_subject(
        &session.subject_key(),
        Member {
            id,
            outbox: outbox.clone(),
        },
    );
    // In a fleet: `send` from any node reaches this connection once welcomed.
    state.broker.subject_ready(&session.subject_key()).await;
    session.send(protocol::welcome(
        id,
        &session.principal.subject,
        session.principal.expires_at,
    ));

    // Message handling is boxed (one allocation per message): its state,
    // with the handler call inside, is kilobytes that an idle connection
    // would otherwise carry for its whole life.
    let mut flow = Box::pin(session.lifecycle(Phase::Connect)).await;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    let token_expiry = tokio::time::sleep_until(session.expires);
    tokio::pin!(token_expiry);
    // Frames read since the last write: reads that are already buffered are
    // all handled before one flush (a pipelining client's answers go out in
    // one write), but never more than this many, so that a client that
    // never pauses still gets its answers.
    let mut reads_since_write = 0usize;
    while matches!(flow, Flow::Continue) {
        if token_expiry.deadline() != session.expires {
            token_expiry.as_mut().reset(session.expires);
        }
        let must_write = reads_since_write >= MAX_READS_PER_WRITE && !reader.rx.is_empty();
        let woke = tokio::select! {
            biased;
            () = outbox.overflowed() => Woke::Overflowed,
            _ = shutdown.wait_for(|draining| *draining) => Woke::Draining,
            () = &mut token_expiry => Woke::Expired,
            Ok(()) = reloads.changed() => Woke::Reloaded,
            _ = ticker.tick() => Woke::Tick,
            next = socket.next(), if !must_write => Woke::Read(next),
            Some(first) = reader.rx.recv() => Woke::Write(first),
        };
        let next = match woke {
            Woke::Read(next) => next,
            Woke::Overflowed => {
                tracing::debug!(tenant = %tenant.id, connection = id, "slow consumer disconnected");
                flow = Flow::Close(CloseReason::SlowConsumer);
                break;
            }
            Woke::Draining => {
                flow = Flow::Close(CloseReason::ServerShutdown);
                break;
            }
            Woke::Expired => {
                tracing::debug!(tenant = %tenant.id, connection = id, "token expired");
                flow = Flow::Close(CloseReason::TokenExpired);
                break;
            }
            Woke::Reloaded => {
                flow = session.recheck();
                continue;
            }
            Woke::Tick => {
                if last_heard.elapsed() >= idle_timeout {
                    tracing::debug!(tenant = %tenant.id, connection = id, "idle timeout");
                    flow = Flow::Close(CloseReason::IdleTimeout);
                    break;
                }
                outbox.ping();
                continue;
            }
            Woke::Write(first) => {
                reads_since_write = 0;
                // A client that stops reading blocks the flush: the queue
                // then overflows (1013), the server drains (1001), its token
                // expires (1008) or it goes idle (1000), whichever comes
                // first: a blocked write holds no connection past its limits.
                let idle_at = last_heard + idle_timeout;
                let written = tokio::select! {
                    biased;
                    written = write_queued(&mut socket, &mut reader, first) => written,
                    () = outbox.overflowed() => Written::Overflowed,
                    _ = shutdown.wait_for(|draining| *draining) => Written::Draining,
                    () = &mut token_expiry => Written::Expired,
                    () = tokio::time::sleep_until(idle_at) => Written::Idle,
                };
                match written {
                    Written::Ok => continue,
                    Written::Closed => break,
                    Written::Overflowed => {
                        flow = Flow::Close(CloseReason::SlowConsumer);
                        break;
                    }
                    Written::Draining => {
                        flow = Flow::Close(CloseReason::ServerShutdown);
                        break;
                    }
                    Written::Expired => {
                        tracing::debug!(tenant = %tenant.id, connection = id, "token expired while a write was blocked");
                        flow = Flow::Close(CloseReason::TokenExpired);
                        break;
                    }
                    Written::Idle => {
                        tracing::debug!(tenant = %tenant.id, connection = id, "idle while a write was blocked");
                        flow = Flow::Close(CloseReason::IdleTimeout);
                        break;
                    }
                }
            }
        };
        reads_since_write += 1;
        last_heard = tokio::time::Instant::now();
        flow = match next {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Text(text))) => Box::pin(session.on_text(text.as_str())).await,
            Some(Ok(Message::Binary(_))) => match session.count_frame(None, true) {
                Err(flow) => flow,
                Ok(()) => session.reject(
                    None,
                    &Rejection::error(
                        ErrorCode::BinaryNotSupported,
                        "binary frames are not accepted",
                    ),
                ),
            },
            // Control frames count too (tungstenite answers pings itself).
            Some(Ok(_)) => session
                .count_frame(None, false)
                .err()
                .unwrap_or(Flow::Continue),
            Some(Err(e)) => Flow::Close(crate::rejection::for_read(&e)),
        };
    }
    // Whatever the handler answered before the end still goes out, then
    // our close frame (if we are the ones closing).
    if let Flow::Close(reason) = &flow {
        tenant.metrics.closed(reason.code());
        outbox.close(reason.clone());
    }
    Box::pin(session.cleanup()).await;
    drop(session);
    drop(outbox);
    let _ = tokio::time::timeout(WRITER_GRACE, async {
        while let Ok(out) = reader.rx.try_recv() {
            if matches!(
                write_queued(&mut socket, &mut reader, out).await,
                Written::Closed
            ) {
                return;
            }
        }
        let _ = socket.flush().await;
    })
    .await;
    if matches!(flow, Flow::Close(..)) {
        // The closing handshake: wait (briefly) for the client's close frame
        // before the TCP connection goes, so that the client reads our code
        // instead of a reset.
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(frame)) = socket.next().await {
                if frame.is_close() {
                    break;
                }
            }
        })
        .await;
    } else {
        let _ = tokio::time::timeout(CLOSE_GRACE, SinkExt::close(&mut socket)).await;
    }
    tracing::debug!(tenant = %tenant.id, connection = id, "disconnected");
}

/// Write `first` and everything else already queued, then flush once.
async fn write_queued<S: FrameSocket>(
    socket: &mut S,
    reader: &mut OutboxReader,
    first: Outgoing,
) -> Written {
    let mut next = Some(first);
    while let Some(out) = next.take() {
        match out {
            Outgoing::Text(text) => {
                let len = text.len();
                let fed = socket.feed(Message::Text(text)).await;
                reader.written(len);
                if fed.is_err() {
                    return Written::Closed;
                }
            }
            Outgoing::Ping => {
                if socket
                    .feed(Message::Ping(Default::default()))
                    .await
                    .is_err()
                {
                    return Written::Closed;
                }
            }
            Outgoing::Close(reason) => {
                let frame = CloseFrame {
                    code: CloseCode::from(reason.code()),
                    reason: Utf8Bytes::from(reason.reason()),
                };
                let _ = socket.send(Message::Close(Some(frame))).await;
                return Written::Closed;
            }
        }
        next = reader.rx.try_recv().ok();
    }
    if socket.flush().await.is_err() {
        return Written::Closed;
    }
    Written::Ok
}

impl Session {
    fn send(&self, frame: String) {
        self.outbox.send(Utf8Bytes::from(frame));
    }

    fn subject_key(&self) -> SubjectKey {
        SubjectKey::new(&self.tenant.key, &self.principal.subject)
    }

    fn channel_key(&self, channel: &str) -> ChannelKey {
        ChannelKey::new(&self.tenant.key, channel)
    }

    /// Answer message `id` with `rejection`: an error frame, or a close.
    fn reject(&self, id: Option<&str>, rejection: &Rejection) -> Flow {
        if let Some(code) = rejection.code() {
            self.tenant
                .metrics
                .message_error(code.as_str(), self.started.elapsed());
        }
        match rejection.to_wire(id) {
            Wire::Frame(frame) => {
                self.send(frame);
                Flow::Continue
            }
            Wire::Close { .. } => match rejection {
                Rejection::Close(reason) => Flow::Close(reason.clone()),
                Rejection::Error { .. } => Flow::Continue,
            },
        }
    }

    /// Every frame counts against the connection's, the subject's and the
    /// tenant's quotas, valid or not.
    fn check_rate(&self) -> Result<(), Duration> {
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
    fn recheck(&mut self) -> Flow {
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
                        "the token no longer verifies after a reload: closing");
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
    fn count_frame(&mut self, text: Option<&str>, answer: bool) -> Result<(), Flow> {
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

    async fn on_text(&mut self, text: &str) -> Flow {
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
        let decode::Decoded { id, request } =
            decode::decode(text, self.state.config.server.max_json_depth);
        let result = match request {
            Ok(request) => self.dispatch(request, id.as_deref()).await,
            Err(rejection) => Err(rejection),
        };
        match result {
            Ok(flow) => flow,
            Err(rejection) => self.reject(id.as_deref(), &rejection),
        }
    }

    async fn dispatch(&mut self, request: Request, id: Option<&str>) -> Result<Flow, Rejection> {
        let envelope = match request {
            Request::Ping => {
                self.tenant.metrics.message_ok(self.started.elapsed());
                self.send(protocol::pong(id));
                return Ok(Flow::Continue);
            }
            Request::Subscribe { channel, since } => {
                self.subscribe(&channel, since.as_ref(), Some(id)).await?;
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
        let authorized = authorize::authorize(&tenant, &self.principal, envelope)?;
        let validated = validate::validate(authorized)?;
        let proposed = call::call(validated, &self.conn).await?;
        let effects = effects::authorize(&tenant, &self.principal, proposed);
        Ok(self.apply(effects, Phase::Message, id).await)
    }

    /// `{"type":"refresh","data":{"token":"..."}}`: a new token for the same
    /// tenant and subject extends the connection; subscriptions the new
    /// claims no longer allow are dropped and listed in the ack.
    fn refresh(&mut self, token: &str, id: Option<&str>) -> Result<(), Rejection> {
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

    /// Unsubscribe from every channel the tenant's rules no longer let the
    /// principal subscribe to; the channels dropped, sorted.
    fn drop_disallowed_subscriptions(&mut self) -> Vec<String> {
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

    fn features(&self, channel: &str) -> ChannelFeatures {
        channel_features(&self.tenant.channels, channel)
    }

    /// Subscribe to `channel`. `reply_to`: answer with an `ack` (a client's
    /// `subscribe`; `None` for a handler's action). With history, the ack
    /// carries the channel's offset and epoch, and with `since` whether
    /// the events missed since then follow it.
    async fn subscribe(
        &mut self,
        channel: &str,
        since: Option<&Since>,
        reply_to: Option<Option<&str>>,
    ) -> Result<(), Rejection> {
        authorize::subscription(&self.tenant, &self.principal, channel)?;
        let new = !self.subscriptions.contains_key(channel);
        if new && self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            return Err(Rejection::error(
                ErrorCode::TooManySubscriptions,
                "too many subscriptions",
            ));
        }
        let features = self.features(channel);
        let key = self.channel_key(channel);
        let member = Member {
            id: self.id,
            outbox: self.outbox.clone(),
        };
        match features.history {
            Some(rule) => {
                // A client's subscribe gets an ack with the position; a
                // handler's gets a `subscribed` frame with it.
                let ack = |p: &Position| {
                    let mut data = serde_json::json!({ "offset": p.offset, "epoch": &*p.epoch });
                    if let Some(r) = p.recovered {
                        data["recovered"] = r.into();
                    }
                    let raw = RawValue::from_string(data.to_string()).ok()?;
                    Some(match reply_to {
                        Some(id) => protocol::ack(id, Some(&raw)),
                        None => protocol::subscribed(channel, &raw),
                    })
                };
                self.state
                    .history
                    .subscribe(self.state.broker.as_ref(), &key, rule, since, member, ack)
                    .await;
            }
            None => {
                self.state.broker.subscribe(&key, member);
                self.state.broker.channel_ready(&key).await;
                if let Some(id) = reply_to {
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

    async fn join_presence(&self, key: &ChannelKey, features: ChannelFeatures) -> Joined {
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
    fn leave_presence(&self, key: ChannelKey, joined: Joined) {
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
    fn presence(&self, channel: &str, id: Option<&str>) -> Result<(), Rejection> {
        authorize::subscription(&self.tenant, &self.principal, channel)?;
        if !self.features(channel).presence {
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

    fn unsubscribe(&mut self, channel: &str) {
        if let Some(joined) = self.subscriptions.remove(channel) {
            let key = self.channel_key(channel);
            self.state.broker.unsubscribe(&key, self.id);
            if let Some(joined) = joined {
                self.leave_presence(key, joined);
            }
        }
    }

    /// Call `on-connect` / `on-disconnect` on every handler of the tenant.
    async fn lifecycle(&mut self, phase: Phase) -> Flow {
        let mut handlers: Vec<Handler> = self.tenant.handlers.values().cloned().collect();
        if self.tenant.config.managed.is_some() {
            handlers.extend(
                self.state
                    .registry
                    .slots_of(&self.tenant.id)
                    .into_iter()
                    .filter_map(|slot| {
                        call::lifecycle_handler(&crate::tenant::RouteHandler::Pushed(slot), self.id)
                    }),
            );
        }
        let mut flow = Flow::Continue;
        for handler in handlers {
            let Some(proposed) = call::lifecycle(&handler, phase, &self.conn).await else {
                continue;
            };
            let tenant = self.tenant.clone();
            let effects = effects::authorize(&tenant, &self.principal, proposed);
            if let Flow::Close(reason) = self.apply(effects, phase, None).await {
                flow = Flow::Close(reason);
            }
        }
        flow
    }

    /// Apply authorized effects, in order.
    async fn apply(&mut self, effects: Vec<Effect>, phase: Phase, reply_to: Option<&str>) -> Flow {
        let mut replied = false;
        // A publish that could not be stored (history on a store or
        // JetStream that failed): the message is answered `unavailable`,
        // never acknowledged.
        let mut lost = false;
        let unstored = || {
            Rejection::error(
                ErrorCode::Unavailable,
                "an event could not be stored; it may not have reached every subscriber, try again",
            )
        };
        let mut flow = Flow::Continue;
        for effect in effects {
            match effect {
                Effect::Reply(raw) => {
                    replied = true;
                    match phase {
                        Phase::Message if lost => {
                            let _ = self.reject(reply_to, &unstored());
                        }
                        Phase::Message => self.send(protocol::ack(reply_to, Some(&raw))),
                        _ => self.send(protocol::event(None, &raw)),
                    }
                }
                Effect::Publish { key, data } => lost |= !self.publish(&key, &data).await,
                Effect::Send { key, frame } => {
                    if let Err(e) = self.state.broker.send(&key, frame).await {
                        tracing::warn!(tenant = %self.tenant.id, error = %e, "send failed");
                    }
                }
                Effect::Subscribe { channel, since } => {
                    if self
                        .subscribe(&channel, since.as_ref(), None)
                        .await
                        .is_err()
                    {
                        self.tenant.metrics.action_refused();
                        tracing::warn!(tenant = %self.tenant.id, action = "subscribe over the subscription limit", "handler action refused");
                    }
                }
                Effect::Unsubscribe(channel) => self.unsubscribe(&channel),
                Effect::Close(reason) => flow = Flow::Close(reason),
            }
        }
        if phase == Phase::Message {
            if lost && !replied {
                let _ = self.reject(reply_to, &unstored());
            } else if !lost {
                self.tenant.metrics.message_ok(self.started.elapsed());
                if !replied {
                    self.send(protocol::ack(reply_to, None));
                }
            }
        }
        flow
    }

    /// Publish `data` on a channel: with its history (an offset, kept, on
    /// disk before this returns) or straight to the broker. False when it
    /// could not be stored or handed to the broker.
    async fn publish(&self, key: &ChannelKey, data: &RawValue) -> bool {
        let result = match self.features(&key.channel).history {
            Some(rule) => self
                .state
                .history
                .publish(self.state.broker.as_ref(), key, rule, data)
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

    async fn cleanup(&mut self) {
        let channels: Vec<String> = self.subscriptions.keys().cloned().collect();
        for channel in channels {
            self.unsubscribe(&channel);
        }
        self.state
            .broker
            .leave_subject(&self.subject_key(), self.id);
        let _ = self.lifecycle(Phase::Disconnect).await;
    }
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).unwrap_or_else(|_| RawValue::NULL.to_owned())
}
