//! One task per connection: read a frame, then decode -> rate-limit ->
//! authorize -> validate -> call the handler -> authorize and apply its
//! actions, in that order, one message at a time. The same task drains the
//! connection's bounded outbound queue once no more input is buffered,
//! batching every frame that is ready into one flush: a message costs no
//! wake-up of a second task, and a pipelining client's answers go out in one
//! write.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use governor::DefaultDirectRateLimiter;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::ServerState;
use super::authz::{ChannelOp, Principal, channel_allowed, has_scopes};
use super::fanout::{Outbox, OutboxReader, Outgoing};
use super::handshake::{Admitted, Socket};
use super::protocol::{self, ErrorCode, Rejection, close};
use super::ratelimit::quota;
use super::tenant::Tenant;
use crate::config::ChannelAccess;
use crate::sandbox::{self, Action, CallErrorKind, Handler};

/// Channels one connection may be subscribed to at once.
pub const MAX_SUBSCRIPTIONS: usize = 256;
/// How long the server waits for a client's answer to its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a closing connection's writer may take to flush.
const WRITER_GRACE: Duration = Duration::from_secs(2);

/// What to do after a message.
enum Flow {
    Continue,
    Close(u16, String),
}

/// Which export produced a set of actions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connect,
    Message,
    Disconnect,
}

struct Session {
    state: Arc<ServerState>,
    tenant: Arc<Tenant>,
    principal: Principal,
    conn: sandbox::Connection,
    id: u64,
    outbox: Outbox,
    subscriptions: HashSet<String>,
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

/// Serve an admitted connection until it closes.
pub async fn run(state: Arc<ServerState>, mut socket: Box<Socket>, admitted: Admitted) {
    let Admitted {
        tenant,
        principal,
        slots: _slots,
    } = admitted;
    let principal_expires_at = principal.expires_at;
    let server = &state.config.server;
    let ping_every = Duration::from_millis(server.ping_interval_ms);
    let idle_timeout = Duration::from_millis(server.idle_timeout_ms);
    let mut shutdown = state.shutdown.subscribe();
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
        limiter: crate::server::ratelimit::direct(quota(
            limits.messages_per_sec,
            limits.message_burst,
        )),
        state: state.clone(),
        tenant: tenant.clone(),
        principal,
        id,
        outbox: outbox.clone(),
        subscriptions: HashSet::new(),
        limited_in_a_row: 0,
        expires: expiry(principal_expires_at, tenant.config.auth.leeway_secs),
        started: std::time::Instant::now(),
    };
    tracing::debug!(tenant = %tenant.id, connection = id, "connected");
    state
        .fanout
        .join_subject(&tenant.id, &session.principal.subject, id, &outbox);
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
            _ = ticker.tick() => Woke::Tick,
            next = socket.next(), if !must_write => Woke::Read(next),
            Some(first) = reader.rx.recv() => Woke::Write(first),
        };
        let next = match woke {
            Woke::Read(next) => next,
            Woke::Overflowed => {
                tracing::debug!(tenant = %tenant.id, connection = id, "slow consumer disconnected");
                flow = Flow::Close(close::TRY_AGAIN_LATER, "slow consumer".into());
                break;
            }
            Woke::Draining => {
                flow = Flow::Close(close::GOING_AWAY, "server shutting down".into());
                break;
            }
            Woke::Expired => {
                tracing::debug!(tenant = %tenant.id, connection = id, "token expired");
                flow = Flow::Close(close::POLICY, "token expired".into());
                break;
            }
            Woke::Tick => {
                if last_heard.elapsed() >= idle_timeout {
                    tracing::debug!(tenant = %tenant.id, connection = id, "idle timeout");
                    flow = Flow::Close(close::NORMAL, "idle timeout".into());
                    break;
                }
                outbox.ping();
                continue;
            }
            Woke::Write(first) => {
                reads_since_write = 0;
                // A client that stops reading blocks the flush: the queue
                // then overflows (1013), or the server drains (1001).
                let written = tokio::select! {
                    biased;
                    written = write_queued(&mut socket, &mut reader, first) => written,
                    () = outbox.overflowed() => Written::Overflowed,
                    _ = shutdown.wait_for(|draining| *draining) => Written::Draining,
                };
                match written {
                    Written::Ok => continue,
                    Written::Closed => break,
                    Written::Overflowed => {
                        flow = Flow::Close(close::TRY_AGAIN_LATER, "slow consumer".into());
                        break;
                    }
                    Written::Draining => {
                        flow = Flow::Close(close::GOING_AWAY, "server shutting down".into());
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
            Some(Ok(Message::Binary(_))) => {
                session.reject(
                    None,
                    &Rejection::error(
                        ErrorCode::BinaryNotSupported,
                        "binary frames are not accepted",
                    ),
                );
                Flow::Continue
            }
            Some(Ok(_)) => Flow::Continue,
            Some(Err(e)) => read_error(&e),
        };
    }
    // Whatever the handler answered before the end still goes out, then
    // our close frame (if we are the ones closing).
    if let Flow::Close(code, reason) = &flow {
        tenant.metrics.closed(*code);
        outbox.close(*code, reason.clone());
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

/// Frames read before queued output is written, at most.
const MAX_READS_PER_WRITE: usize = 32;

/// What woke the connection's task.
enum Woke {
    Overflowed,
    Draining,
    Expired,
    Tick,
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
}

/// The wire response to a read error.
fn read_error(e: &WsError) -> Flow {
    match e {
        WsError::Capacity(_) => Flow::Close(close::TOO_BIG, "message too big".into()),
        WsError::Utf8(_) => Flow::Close(close::INVALID_PAYLOAD, "invalid UTF-8".into()),
        WsError::Protocol(_) => Flow::Close(close::PROTOCOL_ERROR, "protocol error".into()),
        _ => Flow::Close(close::INTERNAL, String::new()),
    }
}

/// Write `first` and everything else already queued, then flush once.
async fn write_queued(socket: &mut Socket, reader: &mut OutboxReader, first: Outgoing) -> Written {
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
            Outgoing::Close(code, reason) => {
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: Utf8Bytes::from(reason),
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

    fn reject(&self, id: Option<&str>, rejection: &Rejection) {
        if let Rejection::Error { code, .. } = rejection {
            self.tenant
                .metrics
                .message_error(code, self.started.elapsed());
        }
        if let Some(frame) = rejection.frame(id) {
            self.send(frame);
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

    async fn on_text(&mut self, text: &str) -> Flow {
        self.started = std::time::Instant::now();
        // A reload swaps tenants: pick up the current one (its routes,
        // schemas, handlers, rules) for this message.
        match self.state.tenant(&self.tenant.id) {
            Some(current) if !Arc::ptr_eq(&current, &self.tenant) => {
                self.conn.principal.claims = current.exposed_claims(&self.principal.claims);
                self.tenant = current;
            }
            Some(_) => {}
            None => return Flow::Close(close::GOING_AWAY, "tenant removed".into()),
        }
        let rate = self.check_rate();
        let decoded = protocol::decode(text, self.state.config.server.max_json_depth);
        if let Err(wait) = rate {
            self.limited_in_a_row += 1;
            let abuse = self.tenant.config.limits.abuse_close_after;
            if self.limited_in_a_row >= abuse {
                tracing::info!(tenant = %self.tenant.id, connection = self.id, "closed for rate-limit abuse");
                return Flow::Close(close::POLICY, "rate limit abuse".into());
            }
            let id = decoded.as_ref().ok().and_then(|e| e.id.as_deref());
            let rejection = Rejection::Error {
                code: ErrorCode::RateLimited.as_str().to_owned(),
                message: "too many messages".into(),
                retry_after_ms: Some(wait.as_millis().max(1) as u64),
            };
            self.reject(id, &rejection);
            return Flow::Continue;
        }
        self.limited_in_a_row = 0;
        let envelope = match decoded {
            Ok(e) => e,
            Err(rejection) => {
                self.reject(None, &rejection);
                return Flow::Continue;
            }
        };
        let id = envelope.id.clone();
        match self.dispatch(envelope).await {
            Ok(flow) => flow,
            Err(rejection) => {
                self.reject(id.as_deref(), &rejection);
                Flow::Continue
            }
        }
    }

    async fn dispatch(&mut self, envelope: protocol::Envelope) -> Result<Flow, Rejection> {
        let id = envelope.id.as_deref();
        match envelope.kind.as_str() {
            "ping" => {
                self.tenant.metrics.message_ok(self.started.elapsed());
                self.send(protocol::pong(id));
                return Ok(Flow::Continue);
            }
            "subscribe" | "unsubscribe" => {
                let channel = envelope.channel.as_deref().ok_or_else(|| {
                    Rejection::error(ErrorCode::BadEnvelope, "subscribe needs a channel")
                })?;
                if envelope.kind == "subscribe" {
                    self.subscribe(channel)?;
                } else {
                    self.unsubscribe(channel);
                }
                self.tenant.metrics.message_ok(self.started.elapsed());
                self.send(protocol::ack(id, None));
                return Ok(Flow::Continue);
            }
            "refresh" => {
                self.refresh(&envelope)?;
                return Ok(Flow::Continue);
            }
            kind if protocol::is_reserved_type(kind) => {
                return Err(Rejection::error(ErrorCode::UnknownType, "reserved type"));
            }
            _ => {}
        }
        let route = self
            .tenant
            .routes
            .get(&envelope.kind)
            .ok_or_else(|| Rejection::error(ErrorCode::UnknownType, "no such message type"))?;
        if !has_scopes(&self.principal, &route.scopes) {
            return Err(Rejection::error(
                ErrorCode::Forbidden,
                "missing scope for this message type",
            ));
        }
        match (route.channel, envelope.channel.as_deref()) {
            (ChannelAccess::None, None) => {}
            (ChannelAccess::None, Some(_)) => {
                return Err(Rejection::error(
                    ErrorCode::BadEnvelope,
                    "this message type takes no channel",
                ));
            }
            (_, None) => {
                return Err(Rejection::error(
                    ErrorCode::BadEnvelope,
                    "this message type needs a channel",
                ));
            }
            (access, Some(channel)) => {
                if !protocol::is_valid_channel(channel) {
                    return Err(Rejection::error(
                        ErrorCode::InvalidChannel,
                        "invalid channel name",
                    ));
                }
                let op = if access == ChannelAccess::Publish {
                    ChannelOp::Publish
                } else {
                    ChannelOp::Subscribe
                };
                if !channel_allowed(&self.tenant.channels, &self.principal, channel, op) {
                    return Err(Rejection::error(
                        ErrorCode::Forbidden,
                        "not allowed on this channel",
                    ));
                }
            }
        }
        if let Some(schema) = &route.schema {
            schema.check(&envelope.data)?;
        }
        let msg = sandbox::Message {
            route: envelope.kind.clone(),
            channel: envelope.channel.clone(),
            data: envelope.data.to_string(),
        };
        let handler = route.handler.clone();
        match handler.on_message(&self.conn, &msg).await {
            Ok(outcome) => Ok(self.apply(&handler, outcome.actions, Phase::Message, id)),
            Err(e) => Err(call_rejection(&e.kind)),
        }
    }

    /// `{"type":"refresh","data":{"token":"..."}}`: a new token for the same
    /// tenant and subject extends the connection; subscriptions the new
    /// claims no longer allow are dropped and listed in the ack.
    fn refresh(&mut self, envelope: &protocol::Envelope) -> Result<(), Rejection> {
        let token = envelope
            .data
            .get("token")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| Rejection::error(ErrorCode::BadEnvelope, "refresh needs data.token"))?;
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
        self.conn.principal.claims = self.tenant.exposed_claims(&principal.claims);
        self.principal = principal;
        let mut dropped: Vec<String> = self
            .subscriptions
            .iter()
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
        let data =
            serde_json::json!({ "expires_at": self.principal.expires_at, "dropped": dropped });
        let raw = RawValue::from_string(data.to_string()).ok();
        self.send(protocol::ack(envelope.id.as_deref(), raw.as_deref()));
        Ok(())
    }

    fn subscribe(&mut self, channel: &str) -> Result<(), Rejection> {
        if !protocol::is_valid_channel(channel) {
            return Err(Rejection::error(
                ErrorCode::InvalidChannel,
                "invalid channel name",
            ));
        }
        if !channel_allowed(
            &self.tenant.channels,
            &self.principal,
            channel,
            ChannelOp::Subscribe,
        ) {
            return Err(Rejection::error(
                ErrorCode::Forbidden,
                "not allowed to subscribe to this channel",
            ));
        }
        if !self.subscriptions.contains(channel) {
            if self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
                return Err(Rejection::error(
                    ErrorCode::TooManySubscriptions,
                    "too many subscriptions",
                ));
            }
            self.subscriptions.insert(channel.to_owned());
            self.state
                .fanout
                .subscribe(&self.tenant.id, channel, self.id, &self.outbox);
        }
        Ok(())
    }

    fn unsubscribe(&mut self, channel: &str) {
        if self.subscriptions.remove(channel) {
            self.state
                .fanout
                .unsubscribe(&self.tenant.id, channel, self.id);
        }
    }

    /// Call `on-connect` / `on-disconnect` on every handler of the tenant.
    async fn lifecycle(&mut self, phase: Phase) -> Flow {
        let handlers: Vec<Handler> = self.tenant.handlers.values().cloned().collect();
        let mut flow = Flow::Continue;
        for handler in handlers {
            let result = match phase {
                Phase::Connect => handler.on_connect(&self.conn).await,
                _ => handler.on_disconnect(&self.conn).await,
            };
            match result {
                Ok(outcome) => {
                    if let Flow::Close(code, reason) =
                        self.apply(&handler, outcome.actions, phase, None)
                    {
                        flow = Flow::Close(code, reason);
                    }
                }
                Err(e) if phase == Phase::Connect && e.kind.is_handler_failure() => {
                    tracing::debug!(tenant = %self.tenant.id, handler = %handler.spec().name, kind = e.kind.name(), "on-connect failed");
                }
                Err(_) => {}
            }
        }
        flow
    }

    /// Authorize and apply a handler's actions. Each action is checked on
    /// its own, as if the client had asked for it; a refused action is
    /// dropped and logged, the others apply.
    fn apply(
        &mut self,
        handler: &Handler,
        actions: Vec<Action>,
        phase: Phase,
        reply_to: Option<&str>,
    ) -> Flow {
        let mut replied = false;
        let mut flow = Flow::Continue;
        let tenant = self.tenant.clone();
        let refused = |what: &str| {
            tenant.metrics.action_refused();
            tracing::warn!(tenant = %tenant.id, handler = %handler.spec().name, action = what, "handler action refused");
        };
        for action in actions {
            if phase == Phase::Disconnect && !matches!(action, Action::Publish(_) | Action::Send(_))
            {
                continue;
            }
            match action {
                Action::Reply(data) => {
                    if replied {
                        refused("second reply");
                        continue;
                    }
                    let Ok(raw) = RawValue::from_string(data) else {
                        refused("reply with invalid JSON");
                        continue;
                    };
                    replied = true;
                    match phase {
                        Phase::Message => self.send(protocol::ack(reply_to, Some(&raw))),
                        _ => self.send(protocol::event(None, &raw)),
                    }
                }
                Action::Publish(p) => {
                    let Ok(raw) = RawValue::from_string(p.data) else {
                        refused("publish with invalid JSON");
                        continue;
                    };
                    if !channel_allowed(
                        &self.tenant.channels,
                        &self.principal,
                        &p.channel,
                        ChannelOp::Publish,
                    ) {
                        refused("publish to a channel this principal may not publish to");
                        continue;
                    }
                    let frame = Utf8Bytes::from(protocol::event(Some(&p.channel), &raw));
                    self.state
                        .fanout
                        .publish(&self.tenant.id, &p.channel, &frame);
                }
                Action::Send(s) => {
                    let Ok(raw) = RawValue::from_string(s.data) else {
                        refused("send with invalid JSON");
                        continue;
                    };
                    if s.subject.is_empty() || s.subject.len() > 256 {
                        refused("send to an invalid subject");
                        continue;
                    }
                    let frame = Utf8Bytes::from(protocol::event(None, &raw));
                    self.state
                        .fanout
                        .send_to_subject(&self.tenant.id, &s.subject, &frame);
                }
                Action::Subscribe(channel) => {
                    if self.subscribe(&channel).is_err() {
                        refused("subscribe to a channel this principal may not subscribe to");
                    }
                }
                Action::Unsubscribe(channel) => self.unsubscribe(&channel),
                Action::Close(c) => {
                    let code = if c.code == close::NORMAL || (4000..=4999).contains(&c.code) {
                        c.code
                    } else {
                        close::NORMAL
                    };
                    let reason = sandbox::truncate_utf8(c.reason, 123);
                    flow = Flow::Close(code, reason);
                }
            }
        }
        if phase == Phase::Message {
            self.tenant.metrics.message_ok(self.started.elapsed());
            if !replied {
                self.send(protocol::ack(reply_to, None));
            }
        }
        flow
    }

    async fn cleanup(&mut self) {
        for channel in std::mem::take(&mut self.subscriptions) {
            self.state
                .fanout
                .unsubscribe(&self.tenant.id, &channel, self.id);
        }
        self.state
            .fanout
            .leave_subject(&self.tenant.id, &self.principal.subject, self.id);
        let _ = self.lifecycle(Phase::Disconnect).await;
    }
}

/// The wire response to a failed handler call: the one place a sandbox
/// error becomes something a client sees.
pub fn call_rejection(kind: &CallErrorKind) -> Rejection {
    match kind {
        CallErrorKind::Rejected { code, message } => Rejection::Error {
            code: code.clone(),
            message: message.clone(),
            retry_after_ms: None,
        },
        CallErrorKind::OutOfFuel | CallErrorKind::Deadline => {
            Rejection::error(ErrorCode::HandlerTimeout, "the handler ran out of time")
        }
        CallErrorKind::Quarantined { remaining } => Rejection::Error {
            code: ErrorCode::Unavailable.as_str().to_owned(),
            message: "the handler is temporarily unavailable".into(),
            retry_after_ms: Some(remaining.as_millis().max(1) as u64),
        },
        CallErrorKind::Unavailable { .. } => Rejection::error(
            ErrorCode::Unavailable,
            "the handler is temporarily unavailable",
        ),
        _ => Rejection::error(ErrorCode::HandlerFailed, "the handler failed"),
    }
}
