//! Timeouts: a handshake that never completes is cut off, an idle
//! connection is pinged or closed. Both wait at most `--wait`; a server
//! that does neither within it fails the first and leaves the second
//! undecided (it may ping later than the probe waits).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::handshake::Base;
use crate::report::{Check, Spec, Status};
use crate::target::{Endpoint, Upgrade};

const GROUP: &str = "Timeouts";

/// `timeouts.handshake`.
pub const HANDSHAKE: Spec = Spec {
    id: "timeouts.handshake",
    group: GROUP,
    title: "an upgrade request that never completes is cut off",
    refs: "OWASP WebSocket CS: Denial-of-Service Protection (connection limits, timeouts); ASVS 5.0 15.2.2",
};
/// `timeouts.idle`.
pub const IDLE: Spec = Spec {
    id: "timeouts.idle",
    group: GROUP,
    title: "an idle connection is pinged or closed",
    refs: "OWASP WebSocket CS: Denial-of-Service Protection (idle timeouts, heartbeats); ASVS 5.0 15.2.2",
};

/// Open a connection (with TLS for `wss`), send the first lines of an
/// upgrade request and never finish it; how long until the server closes?
pub async fn handshake(endpoint: &Endpoint, wait: Duration) -> Check {
    let partial = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n",
        endpoint.target.path, endpoint.target.authority
    );
    let sent = format!(
        "the first two lines of an upgrade request ({} bytes), then nothing for up to {} s",
        partial.len(),
        wait.as_secs()
    );
    let mut stream = match endpoint.open().await {
        Ok(s) => s,
        Err(e) => return Check::new(HANDSHAKE, Status::CouldNotTell, sent, e),
    };
    if let Err(e) = stream.write_all(partial.as_bytes()).await {
        return Check::new(
            HANDSHAKE,
            Status::CouldNotTell,
            sent,
            format!("sending failed: {e}"),
        );
    }
    let _ = stream.flush().await;
    let started = Instant::now();
    let mut answered = 0usize;
    let closed = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answered += n,
            }
        }
    };
    let result = tokio::time::timeout(wait, closed).await;
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => Check::new(
            HANDSHAKE,
            Status::Pass,
            sent,
            format!(
                "closed after {secs:.1} s{}",
                if answered > 0 {
                    format!(" (after {answered} bytes of answer)")
                } else {
                    String::new()
                }
            ),
        ),
        Err(_) => Check::new(
            HANDSHAKE,
            Status::Fail,
            sent,
            format!("still open after {secs:.1} s"),
        )
        .detail(
            "a client can hold connections in the handshake for free, until the server runs \
                 out of sockets or memory (slowloris). Bound TLS plus the upgrade by a deadline of \
                 a few seconds (Sluice: server.handshake_timeout_ms, default 5000)",
        ),
    }
}

/// Open an accepted connection and send nothing: does the server ping it
/// or close it within `wait`?
pub async fn idle(endpoint: &Endpoint, base: Base<'_>, wait: Duration) -> Check {
    let sent = format!(
        "an accepted connection, then nothing for up to {} s",
        wait.as_secs()
    );
    let mut socket = match endpoint.upgrade(&base.request()).await {
        Upgrade::Open(_, socket) => socket,
        other => {
            return Check::new(IDLE, Status::CouldNotTell, sent, other.summary())
                .detail("needs a connection the endpoint accepts (give --token / --origin)");
        }
    };
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + wait;
    let mut frames = 0usize;
    loop {
        let next = tokio::time::timeout_at(deadline, socket.next()).await;
        let secs = started.elapsed().as_secs_f64();
        let seen = match next {
            Err(_) => {
                return Check::new(
                    IDLE,
                    Status::CouldNotTell,
                    sent,
                    format!("neither a ping nor a close within {secs:.1} s ({frames} other frames)"),
                )
                .detail(
                    "the probe waited --wait seconds; a server that pings or closes later passes \
                     with a longer --wait. Without either, dead connections (a phone that lost its \
                     network) hold their memory forever. Ping idle connections and close the silent \
                     ones (Sluice: server.ping_interval_ms, default 20 s; idle_timeout_ms, 60 s)",
                );
            }
            Ok(Some(Ok(Message::Ping(_)))) => format!("a ping after {secs:.1} s"),
            Ok(Some(Ok(Message::Close(c)))) => format!(
                "a close ({}) after {secs:.1} s",
                c.map_or_else(|| "no code".to_owned(), |c| u16::from(c.code).to_string())
            ),
            Ok(Some(Ok(_))) => {
                frames += 1;
                continue;
            }
            Ok(Some(Err(WsError::Io(e)))) => {
                format!("the connection ended after {secs:.1} s ({e})")
            }
            Ok(Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed))) => {
                format!("the connection closed after {secs:.1} s")
            }
            Ok(Some(Err(e))) => {
                return Check::new(
                    IDLE,
                    Status::CouldNotTell,
                    sent,
                    format!("after {secs:.1} s: {e}"),
                )
                .detail("the server sent what is not valid WebSocket, so the probe stopped");
            }
            Ok(None) => format!("the connection closed after {secs:.1} s"),
        };
        return Check::new(IDLE, Status::Pass, sent, seen);
    }
}
