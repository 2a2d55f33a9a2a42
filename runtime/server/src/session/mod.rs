//! One task per connection. The loop ([`run`]) is generic over a
//! Sink/Stream of WebSocket messages, so it runs over a TLS socket in the
//! server and over in-memory channels in unit tests. It reads a frame, then
//! handles it to the end ([`messages`]: rate limit, decode, the message path
//! of [`crate::stages`], [`apply`]), one message at a time. The same task
//! drains the connection's bounded outbound queue once no more input is
//! buffered, batching every frame that is ready into one flush: a message
//! costs no wake-up of a second task, and a pipelining client's answers go
//! out in one write.

mod apply;
mod connection;
mod messages;
mod subscriptions;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use sluice_protocol::{self as protocol, CloseReason, ErrorCode, Rejection};
use sluice_sandbox::{self as sandbox, Export};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use self::connection::{Flow, Session, expiry};
use crate::backends::keys::Member;
use crate::handshake::Admitted;
use crate::outbox::{Outbox, OutboxReader, Outgoing};
use crate::ratelimit::{self, quota};
use crate::state::ServerState;

pub use self::subscriptions::MAX_SUBSCRIPTIONS;

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

/// A limit that ends a connection outside any message, whether the task
/// was waiting for input or blocked writing: each closes with its reason.
#[derive(Clone, Copy, Debug)]
enum Limit {
    /// The outbound queue overflowed (a slow consumer).
    Overflowed,
    /// The server is draining.
    Draining,
    /// The token expired.
    Expired,
    /// Nothing was heard for the idle timeout.
    Idle,
}

impl Limit {
    fn reason(self) -> CloseReason {
        match self {
            Self::Overflowed => CloseReason::SlowConsumer,
            Self::Draining => CloseReason::ServerShutdown,
            Self::Expired => CloseReason::TokenExpired,
            Self::Idle => CloseReason::IdleTimeout,
        }
    }

    fn log(self, tenant: &str, connection: u64) {
        let what = match self {
            Self::Overflowed => "slow consumer disconnected",
            Self::Draining => return,
            Self::Expired => "token expired",
            Self::Idle => "idle timeout",
        };
        tracing::debug!(%tenant, connection, "{what}");
    }
}

/// What woke the connection's task.
enum Woke {
    Limit(Limit),
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
    /// A limit was reached while a flush was blocked.
    Limit(Limit),
}

/// Serve an admitted connection until it closes.
///
/// The setup is done here, before the future: an `async fn` would keep its
/// arguments (the admission, the principal) in the future beside the
/// session built from them, for the connection's whole life.
pub fn run<S: FrameSocket>(
    state: Arc<ServerState>,
    mut socket: S,
    admitted: Admitted,
) -> impl Future<Output = ()> + Send {
    let Admitted {
        tenant,
        principal,
        token,
        origin,
        slots,
    } = admitted;
    let principal_expires_at = principal.expires_at;
    let server = &state.config.server;
    // The tenant's own interval (`[tenants.<id>.limits] ping_interval_ms`)
    // or the server's; a reload that changes it applies at once.
    let mut ping_every = tenant.config.limits.ping_interval(server);
    let idle_timeout = Duration::from_millis(server.idle_timeout_ms);
    // Held for the connection's life: the drain waits until none is left.
    let shutdown = state.shutdown.subscribe();
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
        limiter: ratelimit::direct(quota(limits.messages_per_sec, limits.message_burst)),
        state: state.clone(),
        tenant: tenant.clone(),
        principal,
        token,
        origin,
        id,
        outbox: outbox.clone(),
        subscriptions: HashMap::new(),
        limited_in_a_row: 0,
        expires: expiry(principal_expires_at, tenant.config.auth.leeway_secs),
        started: std::time::Instant::now(),
    };
    async move {
        // The connection's places in the subject's and the tenant's counts,
        // and in the drain's.
        let _slots = slots;
        let _shutdown = shutdown;
        let server = &state.config.server;
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
        session.send(match state.idempotency_window(&session.tenant) {
            Some(window_secs) => protocol::welcome_keyed(
                id,
                &session.principal.subject,
                session.principal.expires_at,
                window_secs,
            ),
            None => protocol::welcome(id, &session.principal.subject, session.principal.expires_at),
        });

        // Message handling is boxed (one allocation per message): its state,
        // with the handler call inside, is kilobytes that an idle connection
        // would otherwise carry for its whole life.
        let mut flow = Box::pin(session.lifecycle(Export::Connect)).await;
        let mut last_heard = tokio::time::Instant::now();
        // One timer for the connection's two deadlines: the next ping (and
        // idle check), and the token's expiry, whichever comes first. A
        // tick is never made up for: the next is a period after it ran.
        let mut next_tick = last_heard + ping_every;
        let timer = tokio::time::sleep_until(next_tick.min(session.expires));
        tokio::pin!(timer);
        // Frames read since the last write: reads that are already buffered are
        // all handled before one flush (a pipelining client's answers go out in
        // one write), but never more than this many, so that a client that
        // never pauses still gets its answers.
        let mut reads_since_write = 0usize;
        // What a connection waits for all its life, made once: a `Notified`
        // made anew on every wake registers and unregisters a waiter under a
        // lock each time (twice per message). The two ends complete at most
        // once, and the loop ends when one does; a change to the tenant is
        // waited for again after each. Dropped with the block, before the
        // outbox is.
        {
            let overflowed = outbox.overflowed();
            tokio::pin!(overflowed);
            let draining = state.draining.notified();
            tokio::pin!(draining);
            // Changes to this tenant only (a reload, the management API); its
            // revisions share the `Notify`.
            let changed = tenant.changes.notified();
            tokio::pin!(changed);
            // A drain or a change to the tenant before the waits were made
            // (a `Notified` sees every notification after it was made).
            if state.is_draining() {
                flow = Flow::Close(Limit::Draining.reason());
            } else if matches!(flow, Flow::Continue) {
                flow = session.recheck();
            }
            while matches!(flow, Flow::Continue) {
                let due = next_tick.min(session.expires);
                if timer.deadline() != due {
                    timer.as_mut().reset(due);
                }
                let must_write = reads_since_write >= MAX_READS_PER_WRITE && !reader.rx.is_empty();
                let woke = tokio::select! {
                    biased;
                    () = &mut overflowed => Woke::Limit(Limit::Overflowed),
                    () = &mut draining => Woke::Limit(Limit::Draining),
                    () = &mut timer => if tokio::time::Instant::now() >= session.expires {
                        Woke::Limit(Limit::Expired)
                    } else {
                        Woke::Tick
                    },
                    () = &mut changed => Woke::Reloaded,
                    next = socket.next(), if !must_write => Woke::Read(next),
                    Some(first) = reader.rx.recv() => Woke::Write(first),
                };
                let next = match woke {
                    Woke::Read(next) => next,
                    Woke::Limit(limit) => {
                        limit.log(&tenant.id, id);
                        flow = Flow::Close(limit.reason());
                        break;
                    }
                    Woke::Reloaded => {
                        // Waiting again before the check: a change during it
                        // is seen.
                        changed.set(tenant.changes.notified());
                        flow = session.recheck();
                        let every = session.tenant.config.limits.ping_interval(server);
                        if every != ping_every {
                            ping_every = every;
                            next_tick = tokio::time::Instant::now() + every;
                        }
                        continue;
                    }
                    Woke::Tick => {
                        next_tick = tokio::time::Instant::now() + ping_every;
                        if state.fleet.as_ref().is_some_and(|f| f.shed_connections()) {
                            tracing::info!(tenant = %tenant.id, connection = id,
                            "cut off from the fleet's connection counts: closing");
                            flow = Flow::Close(Limit::Draining.reason());
                            break;
                        }
                        if last_heard.elapsed() >= idle_timeout {
                            Limit::Idle.log(&tenant.id, id);
                            flow = Flow::Close(Limit::Idle.reason());
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
                        let expires = session.expires;
                        // Boxed, like message handling: the write's state (the
                        // sink's, its timer) is held only while it runs.
                        let written = Box::pin(async {
                            tokio::select! {
                                biased;
                                written = write_queued(&mut socket, &mut reader, first) => written,
                                () = &mut overflowed => Written::Limit(Limit::Overflowed),
                                () = &mut draining => Written::Limit(Limit::Draining),
                                () = tokio::time::sleep_until(expires.min(idle_at)) => {
                                    Written::Limit(if expires <= idle_at {
                                        Limit::Expired
                                    } else {
                                        Limit::Idle
                                    })
                                }
                            }
                        })
                        .await;
                        match written {
                            Written::Ok => continue,
                            Written::Closed => break,
                            Written::Limit(limit) => {
                                limit.log(&tenant.id, id);
                                flow = Flow::Close(limit.reason());
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
        // Boxed: the closing writes' state is held only while the connection ends.
        Box::pin(async {
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
        })
        .await;
        tracing::debug!(tenant = %tenant.id, connection = id, "disconnected");
    }
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
    async fn cleanup(&mut self) {
        let channels: Vec<String> = self.subscriptions.keys().cloned().collect();
        for channel in channels {
            self.unsubscribe(&channel);
        }
        self.state
            .broker
            .leave_subject(&self.subject_key(), self.id);
        let _ = self.lifecycle(Export::Disconnect).await;
    }
}
