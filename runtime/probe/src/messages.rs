//! Active checks (`--active`): what the endpoint does with messages it
//! should refuse, and with a burst far beyond a plausible rate. Each check
//! uses a fresh connection, so one check's close cannot spoil the next.
//!
//! Messages use Sluice's envelope (`{"type":"echo","id":..,"data":..}`).
//! A control message of the same shape is sent first: where a verdict
//! depends on the content (nesting depth, the burst), it counts only if the
//! control is served.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::handshake::Base;
use crate::report::{Check, Spec, Status};
use crate::target::{Endpoint, STEP, Socket, Upgrade, preview};

const VALIDATION: &str = "Message validation";
const VALIDATION_REFS: &str = "OWASP WebSocket CS: Input Validation; ASVS 5.0 2.2.1";

/// `messages.malformed_json`.
pub const MALFORMED: Spec = Spec {
    id: "messages.malformed_json",
    group: VALIDATION,
    title: "malformed JSON is refused, not served",
    refs: VALIDATION_REFS,
};
/// `messages.deep_json`.
pub const DEEP: Spec = Spec {
    id: "messages.deep_json",
    group: VALIDATION,
    title: "JSON nested 1,000 deep is refused (a depth limit)",
    refs: "OWASP WebSocket CS: Input Validation, Denial-of-Service Protection; ASVS 5.0 2.2.1, 15.2.2",
};
/// `messages.oversize`.
pub const OVERSIZE: Spec = Spec {
    id: "messages.oversize",
    group: VALIDATION,
    title: "a 1 MiB frame is refused (close 1009 expected)",
    refs: "OWASP WebSocket CS: Denial-of-Service Protection (message size limits); ASVS 5.0 15.2.2",
};
/// `messages.invalid_utf8`.
pub const INVALID_UTF8: Spec = Spec {
    id: "messages.invalid_utf8",
    group: VALIDATION,
    title: "a text frame that is not UTF-8 closes the connection (1007 expected)",
    refs: "OWASP WebSocket CS: Input Validation; RFC 6455 8.1; ASVS 5.0 2.2.1",
};
/// `messages.binary`.
pub const BINARY: Spec = Spec {
    id: "messages.binary",
    group: VALIDATION,
    title: "a binary frame where text is expected is refused",
    refs: VALIDATION_REFS,
};
/// `flood.burst`.
pub const FLOOD: Spec = Spec {
    id: "flood.burst",
    group: "Flooding",
    title: "a burst of 500 messages at once is refused or throttled, not served in full",
    refs: "OWASP WebSocket CS: Denial-of-Service Protection (rate limiting); ASVS 5.0 2.4.1",
};

/// Every check of this module, in order.
pub const SPECS: [Spec; 6] = [MALFORMED, DEEP, OVERSIZE, INVALID_UTF8, BINARY, FLOOD];

/// Nesting depth of the deep message.
pub const DEPTH: usize = 1000;
/// Size of the oversize frame's payload.
pub const OVERSIZE_BYTES: usize = 1 << 20;
/// Messages in the burst.
pub const BURST: usize = 500;
/// How long the probe waits for an answer to one message.
const ANSWER_WAIT: Duration = Duration::from_secs(3);
/// How long it reads answers to the burst.
const BURST_WAIT: Duration = Duration::from_secs(5);

/// An echo envelope cut short: not JSON.
const MALFORMED_JSON: &str = r#"{"type":"echo","id":"probe-malformed","data":{"#;

fn envelope(id: &str, data: &str) -> String {
    format!(r#"{{"type":"echo","id":"{id}","data":{data}}}"#)
}

/// What the server did with one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A frame that does not look like an error: the message was served.
    Served(String),
    /// An error frame (its code, or a preview).
    Refused(String),
    /// A close frame.
    Closed(Option<u16>, String),
    /// The connection ended without a close frame, or broke.
    Dropped(String),
    /// Nothing within the bound, the connection open.
    Silent,
    /// The server sent something that is not valid WebSocket.
    Broken(String),
}

impl Answer {
    fn describe(&self) -> String {
        match self {
            Self::Served(p) => format!("an answer that is not an error: {p}"),
            Self::Refused(code) => format!("an error frame: {code}"),
            Self::Closed(Some(code), reason) if reason.is_empty() => format!("close {code}"),
            Self::Closed(Some(code), reason) => format!("close {code} ({reason})"),
            Self::Closed(None, _) => "a close frame without a code".into(),
            Self::Dropped(why) => format!("the connection ended: {why}"),
            Self::Broken(why) => format!("frames that break the protocol: {why}"),
            Self::Silent => format!(
                "no answer within {} s; the connection stayed open",
                ANSWER_WAIT.as_secs()
            ),
        }
    }

    fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused(_) | Self::Closed(..) | Self::Dropped(_))
    }
}

/// An error frame: a JSON object with `type: "error"` or an `error(s)`
/// field, or text that says error.
pub fn classify_text(text: &str) -> Answer {
    if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) {
        let is_error = obj.get("type").and_then(Value::as_str) == Some("error")
            || obj.contains_key("error")
            || obj.contains_key("errors");
        if is_error {
            let code = obj.get("code").or_else(|| obj.get("error")).map_or_else(
                || preview(text.as_bytes()),
                |c| c.as_str().map_or_else(|| c.to_string(), str::to_owned),
            );
            return Answer::Refused(code);
        }
        return Answer::Served(preview(text.as_bytes()));
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("error") || lower.contains("invalid") {
        Answer::Refused(preview(text.as_bytes()))
    } else {
        Answer::Served(preview(text.as_bytes()))
    }
}

/// Upgrade with the base request and read past what the server sends on
/// its own at the start (e.g. a welcome frame).
async fn session(endpoint: &Endpoint, base: Base<'_>) -> Result<Socket, String> {
    match endpoint.upgrade(&base.request()).await {
        Upgrade::Open(_, mut socket) => {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(2) {
                match tokio::time::timeout(Duration::from_millis(300), socket.next()).await {
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(e))) => {
                        return Err(format!("the connection broke at the start: {e}"));
                    }
                    Ok(None) => return Err("the connection closed at the start".into()),
                    Err(_) => break,
                }
            }
            Ok(*socket)
        }
        other => Err(other.summary()),
    }
}

/// The next answer on `socket`, within `wait`.
async fn answer(socket: &mut Socket, wait: Duration) -> Answer {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let next = tokio::time::timeout_at(deadline, socket.next()).await;
        match next {
            Err(_) => return Answer::Silent,
            Ok(None) => return Answer::Dropped("closed without a close frame".into()),
            Ok(Some(Ok(Message::Text(t)))) => return classify_text(t.as_str()),
            Ok(Some(Ok(Message::Binary(b)))) => {
                return Answer::Served(format!("a binary frame of {} bytes", b.len()));
            }
            Ok(Some(Ok(Message::Close(c)))) => {
                return match c {
                    Some(c) => Answer::Closed(Some(u16::from(c.code)), c.reason.to_string()),
                    None => Answer::Closed(None, String::new()),
                };
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(
                e @ (WsError::Io(_) | WsError::ConnectionClosed | WsError::AlreadyClosed),
            ))) => {
                return Answer::Dropped(ws_error(&e));
            }
            Ok(Some(Err(e))) => return Answer::Broken(ws_error(&e)),
        }
    }
}

fn ws_error(e: &WsError) -> String {
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".into(),
        WsError::Protocol(p) => format!("protocol error: {p}"),
        WsError::Io(io) => format!("{io}"),
        other => format!("{other}"),
    }
}

/// Send `message` and read the answer; a send that fails is followed by a
/// read (the close frame may be there already).
async fn exchange(socket: &mut Socket, message: Message) -> Answer {
    let sent = tokio::time::timeout(STEP, socket.send(message)).await;
    let answer = answer(socket, ANSWER_WAIT).await;
    match (sent, answer) {
        (Ok(Err(e)), Answer::Silent) => {
            Answer::Dropped(format!("sending failed: {}", ws_error(&e)))
        }
        (Err(_), Answer::Silent) => Answer::Dropped(format!(
            "the server stopped reading: sending did not finish within {} s",
            STEP.as_secs()
        )),
        (_, a) => a,
    }
}

/// Run the active checks.
pub async fn run(endpoint: &Endpoint, base: Base<'_>) -> Vec<Check> {
    let control_msg = envelope("probe-control", r#"{"probe":"control"}"#);
    let control = match session(endpoint, base).await {
        Ok(mut s) => exchange(&mut s, Message::text(control_msg.clone())).await,
        Err(why) => {
            let reason =
                format!("needs a connection the endpoint accepts (give --token / --origin): {why}");
            return SPECS
                .iter()
                .map(|s| Check::skipped(*s, Status::CouldNotTell, reason.clone()))
                .collect();
        }
    };
    let served = matches!(control, Answer::Served(_));
    let control_note = format!(
        "the control message {control_msg} got {}",
        control.describe()
    );

    let mut checks = Vec::new();
    let malformed = MALFORMED_JSON.to_owned();
    checks.push(
        probe(endpoint, base, MALFORMED, Message::text(malformed.clone()), format!("a text frame {malformed}"))
            .await
            .verdict(|a| match a {
                Answer::Served(_) => (Status::Fail, "malformed input was answered as if it were valid: parse strictly and refuse what does not parse".into()),
                Answer::Silent if served => (Status::Pass, "ignored (a valid message is answered)".into()),
                Answer::Silent => (Status::CouldNotTell, control_note.clone()),
                _ => (Status::Pass, "refused".into()),
            }),
    );

    // Inside an object, like the control's data, so that a schema asking
    // for an object does not refuse it for its type.
    let deep = envelope(
        "probe-deep",
        &format!(r#"{{"nested":{}{}}}"#, "[".repeat(DEPTH), "]".repeat(DEPTH)),
    );
    checks.push(
        probe(endpoint, base, DEEP, Message::text(deep), format!("an echo envelope whose data holds {DEPTH} nested arrays ({} bytes)", 2 * DEPTH))
            .await
            .verdict(|a| match a {
                _ if !served => (Status::CouldNotTell, format!("{control_note}: a refusal would say nothing about depth")),
                Answer::Served(_) => (Status::Fail, format!("the same message nested {DEPTH} deep was served: without a depth limit, deep JSON costs stack and time in every parser and handler on the way. Refuse JSON deeper than a few dozen levels (Sluice: server.max_json_depth, default 32)")),
                Answer::Silent => (Status::CouldNotTell, "no answer, while the control was answered".into()),
                _ => (Status::Pass, "refused".into()),
            }),
    );

    let big = envelope(
        "probe-oversize",
        &format!("\"{}\"", "x".repeat(OVERSIZE_BYTES)),
    );
    checks.push(
        probe(endpoint, base, OVERSIZE, Message::text(big), format!("one text frame of {} bytes (an echo envelope)", OVERSIZE_BYTES + 40))
            .await
            .verdict(|a| match a {
                Answer::Closed(Some(1009), _) => (Status::Pass, "closed with 1009 (message too big)".into()),
                Answer::Served(_) => (Status::Fail, "a 1 MiB frame was served: without a size limit a client makes the server buffer whatever it sends. Cap frames and messages and close with 1009 (Sluice: server.max_frame_bytes / max_message_bytes, default 64 KiB)".into()),
                Answer::Silent => (Status::CouldNotTell, String::new()),
                _ => (Status::Pass, "refused, though 1009 is the code RFC 6455 names for it".into()),
            }),
    );

    let mut utf8 = br#"{"type":"echo","id":"probe-utf8","data":""#.to_vec();
    utf8.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    utf8.extend_from_slice(b"\"}");
    checks.push(
        probe(
            endpoint,
            base,
            INVALID_UTF8,
            Message::Frame(Frame::message(utf8, OpCode::Data(Data::Text), true)),
            "a text frame with the bytes ff fe c3 in a string (not UTF-8)".into(),
        )
        .await
        .verdict(|a| match a {
            Answer::Closed(Some(1007), _) => (Status::Pass, "closed with 1007 (invalid payload data)".into()),
            Answer::Served(_) => (Status::Fail, "text that is not UTF-8 reached the application and was answered: RFC 6455 requires failing the connection with 1007 (Sluice does)".into()),
            Answer::Silent => (Status::CouldNotTell, String::new()),
            _ => (Status::Pass, "refused, though 1007 is the code RFC 6455 names for it".into()),
        }),
    );

    checks.push(
        probe(endpoint, base, BINARY, Message::binary(control_msg.clone().into_bytes()), format!("a binary frame holding {control_msg}"))
            .await
            .verdict(|a| match a {
                Answer::Served(_) => (Status::Fail, "a binary frame was served where the protocol is JSON text: refuse frame types the protocol does not use (Sluice answers binary_not_supported)".into()),
                Answer::Silent if served => (Status::Pass, "ignored (a valid message is answered)".into()),
                Answer::Silent => (Status::CouldNotTell, control_note.clone()),
                _ => (Status::Pass, "refused".into()),
            }),
    );

    checks.push(if served {
        flood(endpoint, base).await
    } else {
        Check::skipped(
            FLOOD,
            Status::CouldNotTell,
            format!("{control_note}: a burst of refused messages says nothing about rate limits"),
        )
    });
    checks
}

/// One message on a fresh session.
struct Probed {
    spec: Spec,
    sent: String,
    answer: Result<Answer, String>,
}

impl Probed {
    fn verdict(self, judge: impl FnOnce(&Answer) -> (Status, String)) -> Check {
        match self.answer {
            Ok(answer @ Answer::Broken(_)) => Check::new(
                self.spec,
                Status::CouldNotTell,
                self.sent,
                answer.describe(),
            ),
            Ok(answer) => {
                let (status, detail) = judge(&answer);
                Check::new(self.spec, status, self.sent, answer.describe()).detail(detail)
            }
            Err(why) => Check::new(self.spec, Status::CouldNotTell, self.sent, "not sent")
                .detail(format!("no session for it: {why}")),
        }
    }
}

async fn probe(
    endpoint: &Endpoint,
    base: Base<'_>,
    spec: Spec,
    message: Message,
    sent: String,
) -> Probed {
    let answer = match session(endpoint, base).await {
        Ok(mut socket) => {
            let a = exchange(&mut socket, message).await;
            let _ = tokio::time::timeout(Duration::from_millis(200), socket.close(None)).await;
            Ok(a)
        }
        Err(why) => Err(why),
    };
    Probed { spec, sent, answer }
}

async fn flood(endpoint: &Endpoint, base: Base<'_>) -> Check {
    let sent_desc = format!(
        "{BURST} echo envelopes written at once, then answers read for {} s",
        BURST_WAIT.as_secs()
    );
    let mut socket = match session(endpoint, base).await {
        Ok(s) => s,
        Err(why) => {
            return Check::new(FLOOD, Status::CouldNotTell, sent_desc, "not sent")
                .detail(format!("no session for it: {why}"));
        }
    };
    let started = Instant::now();
    let mut written = 0;
    let write = async {
        for i in 0..BURST {
            if socket
                .feed(Message::text(envelope(&format!("probe-burst-{i}"), "{}")))
                .await
                .is_err()
            {
                break;
            }
            written += 1;
        }
        let _ = socket.flush().await;
    };
    let _ = tokio::time::timeout(STEP, write).await;
    let write_time = started.elapsed();
    let (mut served, mut refused, mut codes) = (0usize, 0usize, Vec::<String>::new());
    let mut end = None;
    let deadline = tokio::time::Instant::now() + BURST_WAIT;
    while served + refused < written {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match answer(&mut socket, remaining).await {
            Answer::Served(_) => served += 1,
            Answer::Refused(code) => {
                refused += 1;
                if !codes.contains(&code) && codes.len() < 3 {
                    codes.push(code);
                }
            }
            Answer::Silent => break,
            other => {
                end = Some(other);
                break;
            }
        }
    }
    let received = format!(
        "{written} written in {} ms; {served} served, {refused} refused{}{}",
        write_time.as_millis(),
        if codes.is_empty() {
            String::new()
        } else {
            format!(" ({})", codes.join(", "))
        },
        end.as_ref()
            .map_or_else(String::new, |e| format!("; then {}", e.describe()))
    );
    let (status, detail) = if matches!(end, Some(Answer::Broken(_))) {
        (Status::CouldNotTell, "the answers broke the protocol")
    } else if served >= BURST {
        (
            Status::Fail,
            "every message of the burst was served: one client can make the server (and every \
             handler and database behind it) work as fast as it can send. Limit messages per \
             connection and per user (Sluice: tenants.<id>.limits.messages_per_sec / \
             message_burst, subject and tenant rates, abuse_close_after)",
        )
    } else if refused > 0 || end.as_ref().is_some_and(Answer::is_refusal) {
        (Status::Pass, "refused past a rate")
    } else {
        (Status::Pass, "throttled: not all answered within the bound")
    };
    Check::new(FLOOD, status, sent_desc, received).detail(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_frames_are_told_from_answers() {
        assert_eq!(
            classify_text(r#"{"type":"error","id":"1","code":"too_deep","message":"x"}"#),
            Answer::Refused("too_deep".into())
        );
        assert_eq!(
            classify_text(r#"{"error":"bad"}"#),
            Answer::Refused("bad".into())
        );
        assert!(matches!(
            classify_text(r#"{"type":"ack","id":"1","data":{}}"#),
            Answer::Served(_)
        ));
        assert!(matches!(
            classify_text("Invalid message"),
            Answer::Refused(_)
        ));
        assert!(matches!(classify_text("[[[]]]"), Answer::Served(_)));
    }

    #[test]
    fn the_malformed_message_does_not_parse() {
        assert!(serde_json::from_str::<Value>(MALFORMED_JSON).is_err());
        assert!(MALFORMED_JSON.starts_with(r#"{"type":"echo""#));
        let deep = format!(r#"{{"nested":{}{}}}"#, "[".repeat(3), "]".repeat(3));
        assert_eq!(deep, r#"{"nested":[[[]]]}"#);
    }
}
