//! One connection's session state and what every part of the session
//! uses: its queue, its keys, and the one way a rejection is answered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use governor::DefaultDirectRateLimiter;
use sluice_protocol::{CloseReason, Rejection, Wire};
use sluice_sandbox as sandbox;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::authz::Principal;
use crate::backends::keys::{ChannelKey, SubjectKey};
use crate::outbox::Outbox;
use crate::presence::Joined;
use crate::state::ServerState;
use crate::tenant::Tenant;

/// What to do after a message.
pub(super) enum Flow {
    Continue,
    Close(CloseReason),
}

/// One connection, as its task holds it.
pub(super) struct Session {
    pub(super) state: Arc<ServerState>,
    pub(super) tenant: Arc<Tenant>,
    pub(super) principal: Principal,
    /// The token the principal came from (verified again after a reload).
    pub(super) token: Box<str>,
    /// The `Origin` it connected from, if any.
    pub(super) origin: Option<Box<str>>,
    pub(super) conn: sandbox::Connection,
    pub(super) id: u64,
    pub(super) outbox: Outbox,
    /// Channels subscribed, with how the connection counts in the
    /// channel's presence (if the channel has presence).
    pub(super) subscriptions: HashMap<String, Option<Joined>>,
    pub(super) limiter: DefaultDirectRateLimiter,
    pub(super) limited_in_a_row: u32,
    /// When the token (plus the tenant's leeway) expires.
    pub(super) expires: tokio::time::Instant,
    /// When the message being handled arrived (for the latency histogram).
    pub(super) started: std::time::Instant,
}

/// The instant a token expiring at `exp` (seconds since the epoch) stops
/// being valid, allowing `leeway` seconds of clock skew.
pub(super) fn expiry(exp: u64, leeway: u64) -> tokio::time::Instant {
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let left = exp.saturating_add(leeway).saturating_sub(now_unix);
    tokio::time::Instant::now() + Duration::from_secs(left.min(10 * 365 * 24 * 3600))
}

impl Session {
    pub(super) fn send(&self, frame: String) {
        self.outbox.send(Utf8Bytes::from(frame));
    }

    pub(super) fn subject_key(&self) -> SubjectKey {
        SubjectKey::new(&self.tenant.key, &self.principal.subject)
    }

    pub(super) fn channel_key(&self, channel: &str) -> ChannelKey {
        ChannelKey::new(&self.tenant.key, channel)
    }

    /// Answer message `id` with `rejection`: an error frame, or a close.
    pub(super) fn reject(&self, id: Option<&str>, rejection: &Rejection) -> Flow {
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
}
