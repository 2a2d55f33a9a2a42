//! Centrifuge's JSON client protocol (protocol v0.3, as the Centrifuge
//! library v0.15 in Debian speaks it), for `sluice bench --protocol
//! centrifuge` against `peers/centrifuge`.
//!
//! - The token goes in a connect command, the first command on the
//!   connection (`{"id":1,"params":{"token":"..."}}`; connect is method 0,
//!   left out), not in the upgrade.
//! - A route without a channel is an RPC (method 9) with the route as its
//!   method; a route with a channel is a publish (method 3); a join is a
//!   subscribe (method 1).
//! - Every command has a non-zero `id`; its reply carries it back, with
//!   `result` or `error`. A push (a publication to a subscribed channel) is
//!   a reply without an `id`.
//! - The server may put several replies in one WebSocket frame, each a JSON
//!   object followed by a newline: its writer sends up to 4 queued replies
//!   at once.

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::frame_kind::FrameKind;
use crate::client::{ClientSocket, ConnectError};

/// Method numbers of Centrifuge's protocol.
const SUBSCRIBE: u32 = 1;
const PUBLISH: u32 = 3;
const RPC: u32 = 9;

/// The id of the connect command; requests count up from the next.
pub const CONNECT_ID: u32 = 1;

/// The connect command carrying `token`.
pub fn connect_command(token: Option<&str>) -> String {
    match token {
        Some(t) => json!({"id": CONNECT_ID, "params": {"token": t}}),
        None => json!({"id": CONNECT_ID, "params": {}}),
    }
    .to_string()
}

/// The command for one message of a route: an RPC named `route`, or with a
/// channel a publish to it.
pub fn request(id: u32, route: &str, channel: Option<&str>, data: &Value) -> String {
    match channel {
        Some(c) => json!({"id": id, "method": PUBLISH, "params": {"channel": c, "data": data}}),
        None => json!({"id": id, "method": RPC, "params": {"method": route, "data": data}}),
    }
    .to_string()
}

/// The subscribe command for `channel`.
pub fn subscribe(id: u32, channel: &str) -> String {
    json!({"id": id, "method": SUBSCRIBE, "params": {"channel": channel}}).to_string()
}

/// What one reply (one line of a frame) is: `{"id":N,"error":...}` a
/// refusal, `{"id":N,...}` an answer, no id a push. Go's encoder writes
/// the fields in this order, so the first bytes decide.
pub fn classify(line: &str) -> FrameKind {
    let Some(rest) = line.strip_prefix(r#"{"id":"#) else {
        return FrameKind::Other;
    };
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    if rest.starts_with(r#","error":"#) {
        FrameKind::Refused
    } else {
        FrameKind::Answer
    }
}

/// The replies in one frame's text: its non-empty lines.
pub fn replies(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').filter(|l| !l.trim().is_empty())
}

/// Send the connect command on a fresh connection and wait for its reply:
/// a refusal (an error reply, or the server closing, e.g. with 3002
/// "invalid token") fails the connection.
pub async fn authenticate(
    socket: &mut ClientSocket,
    token: Option<&str>,
) -> Result<(), ConnectError> {
    let fail = |what: String| ConnectError::Failed(format!("centrifuge connect: {what}"));
    socket
        .send(Message::text(connect_command(token)))
        .await
        .map_err(|e| fail(e.to_string()))?;
    while let Some(frame) = socket.next().await {
        match frame.map_err(|e| fail(e.to_string()))? {
            Message::Text(t) => {
                for line in replies(&t) {
                    match classify(line) {
                        FrameKind::Answer => return Ok(()),
                        FrameKind::Refused => return Err(fail(format!("refused: {line}"))),
                        FrameKind::Other => {}
                    }
                }
            }
            Message::Close(c) => {
                return Err(fail(match c {
                    Some(c) => format!("closed with {} {}", u16::from(c.code), c.reason),
                    None => "closed".into(),
                }));
            }
            _ => {}
        }
    }
    Err(fail("the connection ended before the connect reply".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_classified_by_id_and_error() {
        assert_eq!(
            classify(r#"{"id":12,"result":{"data":{"text":"x"}}}"#),
            FrameKind::Answer
        );
        assert_eq!(
            classify(r#"{"id":3,"error":{"code":400,"message":"schema_invalid: x"}}"#),
            FrameKind::Refused
        );
        // A push: no id.
        assert_eq!(
            classify(r#"{"result":{"channel":"room:1","data":{"data":{"text":"b1"}}}}"#),
            FrameKind::Other
        );
        // A result that mentions an error further on is still an answer.
        assert_eq!(
            classify(r#"{"id":4,"result":{"data":{"error":1}}}"#),
            FrameKind::Answer
        );
    }

    #[test]
    fn a_frame_holds_replies_one_per_line() {
        let frame = "{\"id\":2,\"result\":{}}\n{\"id\":3,\"error\":{\"code\":1,\"message\":\"\"}}\n{\"result\":{}}\n";
        let kinds: Vec<FrameKind> = replies(frame).map(classify).collect();
        assert_eq!(
            kinds,
            [FrameKind::Answer, FrameKind::Refused, FrameKind::Other]
        );
    }

    #[test]
    fn commands_are_centrifuges() {
        assert_eq!(
            connect_command(Some("t.k.n")),
            r#"{"id":1,"params":{"token":"t.k.n"}}"#
        );
        assert_eq!(
            request(5, "echo", None, &json!({"a": 1})),
            r#"{"id":5,"method":9,"params":{"method":"echo","data":{"a":1}}}"#
        );
        assert_eq!(
            request(6, "chat.send", Some("room:1"), &json!({"text": "x"})),
            r#"{"id":6,"method":3,"params":{"channel":"room:1","data":{"text":"x"}}}"#
        );
        assert_eq!(
            subscribe(7, "room:1"),
            r#"{"id":7,"method":1,"params":{"channel":"room:1"}}"#
        );
    }
}
