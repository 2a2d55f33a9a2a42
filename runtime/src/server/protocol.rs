//! The client protocol: JSON text frames.
//!
//! ```text
//! client -> {"type":"chat.send","id":"c1","channel":"room:42","data":{...}}
//! server -> {"type":"welcome","data":{"connection_id":7,"subject":"alice","expires_at":1795939200}}
//!           {"type":"ack","id":"c1","data":...}
//!           {"type":"error","id":"c1","code":"schema_invalid","message":"..."}
//!           {"type":"event","channel":"room:42","data":...}
//!           {"type":"pong","id":"p1"}
//! ```
//!
//! Every rejection knows its wire response ([`Rejection`]): an `error` frame
//! (the connection stays usable) or a close frame with an RFC 6455 code.
//! [`Rejection::frame`] is the one place that turns a refusal into bytes.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Message types the host handles itself; no route may use them.
pub const RESERVED_TYPES: [&str; 9] = [
    "subscribe",
    "unsubscribe",
    "ping",
    "refresh",
    "welcome",
    "ack",
    "error",
    "event",
    "pong",
];

/// Whether `t` is reserved for the host.
pub fn is_reserved_type(t: &str) -> bool {
    RESERVED_TYPES.contains(&t) || t.starts_with("sluice.")
}

/// Longest client-chosen `id`.
pub const MAX_ID_BYTES: usize = 64;
/// Longest channel name.
pub const MAX_CHANNEL_BYTES: usize = 128;

/// A client message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The route or reserved type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The client's correlation id, echoed in `ack` and `error`.
    #[serde(default)]
    pub id: Option<String>,
    /// The channel the message targets.
    #[serde(default)]
    pub channel: Option<String>,
    /// The payload; `null` when absent.
    #[serde(default)]
    pub data: serde_json::Value,
}

/// The error codes a client can receive. A handler's own rejection codes
/// come on top of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not JSON.
    BadJson,
    /// JSON nested deeper than the server allows.
    TooDeep,
    /// JSON, but not a valid envelope (missing `type`, unknown field, wrong
    /// types, a channel where none is taken, an id too long).
    BadEnvelope,
    /// No route for this type.
    UnknownType,
    /// The principal lacks a scope or channel permission.
    Forbidden,
    /// The channel name is not valid.
    InvalidChannel,
    /// `data` fails the route's schema.
    SchemaInvalid,
    /// Over a rate limit; `retry_after_ms` says when to try again.
    RateLimited,
    /// Binary frames are not accepted.
    BinaryNotSupported,
    /// Too many channels subscribed on this connection.
    TooManySubscriptions,
    /// A `refresh` carried a token that does not verify.
    InvalidToken,
    /// The handler failed.
    HandlerFailed,
    /// The handler ran out of fuel or time.
    HandlerTimeout,
    /// The handler is quarantined or no instance could be created.
    Unavailable,
}

impl ErrorCode {
    /// Every host code (keep in step with the enum): `/metrics` always gives
    /// these a label of their own, whatever codes handlers invent.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BadJson,
        ErrorCode::TooDeep,
        ErrorCode::BadEnvelope,
        ErrorCode::UnknownType,
        ErrorCode::Forbidden,
        ErrorCode::InvalidChannel,
        ErrorCode::SchemaInvalid,
        ErrorCode::RateLimited,
        ErrorCode::BinaryNotSupported,
        ErrorCode::TooManySubscriptions,
        ErrorCode::InvalidToken,
        ErrorCode::HandlerFailed,
        ErrorCode::HandlerTimeout,
        ErrorCode::Unavailable,
    ];

    /// The code on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::TooDeep => "too_deep",
            ErrorCode::BadEnvelope => "bad_envelope",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::SchemaInvalid => "schema_invalid",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::HandlerFailed => "handler_failed",
            ErrorCode::HandlerTimeout => "handler_timeout",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// Close codes (RFC 6455) the server uses.
pub mod close {
    /// Normal closure (a handler asked for it).
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol violation at the WebSocket layer.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy: sustained rate-limit abuse, token expired.
    pub const POLICY: u16 = 1008;
    /// A frame or message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// An internal error.
    pub const INTERNAL: u16 = 1011;
    /// The server is overloaded (a slow consumer's queue is full).
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// A refusal and its wire response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// An `error` frame; the connection stays usable.
    Error {
        /// The code.
        code: String,
        /// A message for the client: never an echo of its input, never an
        /// internal detail.
        message: String,
        /// For `rate_limited`: when to try again.
        retry_after_ms: Option<u64>,
    },
    /// Close the connection.
    Close {
        /// The RFC 6455 code.
        code: u16,
        /// A short reason.
        reason: &'static str,
    },
}

impl Rejection {
    /// An error frame with a host code.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection::Error {
            code: code.as_str().to_owned(),
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// The frame to send for this rejection, answering message `id`; `None`
    /// for a close (the session sends the close frame).
    pub fn frame(&self, id: Option<&str>) -> Option<String> {
        match self {
            Rejection::Error {
                code,
                message,
                retry_after_ms,
            } => {
                let mut frame = serde_json::json!({
                    "type": "error", "id": id, "code": code, "message": message,
                });
                if let Some(ms) = retry_after_ms {
                    frame["retry_after_ms"] = serde_json::json!(ms);
                }
                Some(frame.to_string())
            }
            Rejection::Close { .. } => None,
        }
    }
}

/// Depth of the deepest nesting of arrays and objects in `text`, stopping
/// early once `max` is exceeded. Brackets inside strings do not count.
pub fn json_depth_exceeds(text: &str, max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parse a client frame into an envelope, after the depth check.
pub fn decode(text: &str, max_depth: usize) -> Result<Envelope, Rejection> {
    if json_depth_exceeds(text, max_depth) {
        return Err(Rejection::error(
            ErrorCode::TooDeep,
            format!("JSON nested deeper than {max_depth} levels"),
        ));
    }
    // serde would take a JSON array as a positional envelope
    // (`["echo","id",null,{}]`): an envelope is an object, nothing else.
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Rejection::error(
                ErrorCode::BadEnvelope,
                "not a valid envelope {type, id, channel, data}: expected an object",
            ),
            Err(e) => Rejection::error(
                ErrorCode::BadJson,
                format!("not valid JSON (line {}, column {})", e.line(), e.column()),
            ),
        });
    }
    let envelope: Envelope = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Rejection::error(
            ErrorCode::BadEnvelope,
            format!(
                "not a valid envelope {{type, id, channel, data}}: {}",
                redact_serde(&e)
            ),
        ),
        _ => Rejection::error(
            ErrorCode::BadJson,
            format!("not valid JSON (line {}, column {})", e.line(), e.column()),
        ),
    })?;
    if envelope
        .id
        .as_ref()
        .is_some_and(|id| id.len() > MAX_ID_BYTES)
    {
        return Err(Rejection::error(
            ErrorCode::BadEnvelope,
            format!("id longer than {MAX_ID_BYTES} bytes"),
        ));
    }
    if envelope.kind.is_empty() || envelope.kind.len() > 128 {
        return Err(Rejection::error(
            ErrorCode::BadEnvelope,
            "type must be 1-128 bytes",
        ));
    }
    Ok(envelope)
}

/// What is wrong with an envelope, in words of our own: serde's messages
/// quote the client's input (an unknown field's name, a wrong value), which
/// must never be echoed back. Found by the `envelope` fuzz target: a long
/// unknown field name came back whole.
fn redact_serde(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let what = if text.starts_with("unknown field") {
        "an unknown field (the fields are type, id, channel, data)"
    } else if text.starts_with("missing field `type`") {
        "missing field `type`"
    } else if text.starts_with("duplicate field `") {
        // serde names only known fields as duplicates.
        match ["type", "id", "channel", "data"]
            .iter()
            .find(|f| text.starts_with(&format!("duplicate field `{f}`")))
        {
            Some(&"type") => "duplicate field `type`",
            Some(&"id") => "duplicate field `id`",
            Some(&"channel") => "duplicate field `channel`",
            Some(_) => "duplicate field `data`",
            None => "a duplicate field",
        }
    } else if text.starts_with("invalid type") || text.starts_with("invalid value") {
        "a field of the wrong type (type, id and channel are strings)"
    } else {
        "expected an object"
    };
    what.to_owned()
}

#[cfg(test)]
mod envelope_message_tests {
    use super::*;

    #[test]
    fn only_an_object_is_an_envelope() {
        for text in [
            r#"["echo","x",null,{"a":1}]"#,
            "5",
            r#""echo""#,
            "null",
            " [] ",
        ] {
            match decode(text, 32) {
                Err(Rejection::Error { code, message, .. }) => {
                    assert_eq!(code, ErrorCode::BadEnvelope.as_str(), "{text}");
                    assert!(message.ends_with("expected an object"), "{text}: {message}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            decode("[1,", 32),
            Err(Rejection::Error { code, .. }) if code == ErrorCode::BadJson.as_str()
        ));
        assert!(decode(r#" {"type":"echo"}"#, 32).is_ok());
    }

    #[test]
    fn refusals_never_echo_the_input() {
        for input in [
            format!(r#"{{"type":"a","{}":1}}"#, "SECRET".repeat(1000)),
            r#"{"type":"SECRET-TYPE-AS-NUMBER","id":12345678}"#.to_owned(),
            r#"{"type":["SECRET"]}"#.to_owned(),
        ] {
            match decode(&input, 32) {
                Err(Rejection::Error { message, .. }) => {
                    assert!(
                        !message.contains("SECRET") && !message.contains("12345678"),
                        "{message}"
                    );
                    assert!(message.len() < 120, "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

/// Whether `name` is a valid channel name: 1-128 of `A-Z a-z 0-9 : _ - .`.
pub fn is_valid_channel(name: &str) -> bool {
    (1..=MAX_CHANNEL_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-' | b'.'))
}

/// `{"type":"welcome",...}`.
pub fn welcome(connection_id: u64, subject: &str, expires_at: u64) -> String {
    serde_json::json!({
        "type": "welcome",
        "data": { "connection_id": connection_id, "subject": subject, "expires_at": expires_at },
    })
    .to_string()
}

/// `{"type":"ack","id":...,"data":...}`; `data` must be valid JSON text.
pub fn ack(id: Option<&str>, data: Option<&RawValue>) -> String {
    #[derive(serde::Serialize)]
    struct Ack<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        id: Option<&'a str>,
        data: Option<&'a RawValue>,
    }
    serde_json::to_string(&Ack {
        kind: "ack",
        id,
        data,
    })
    .unwrap_or_default()
}

/// `{"type":"event","channel":...,"data":...}`; `data` must be valid JSON.
pub fn event(channel: Option<&str>, data: &RawValue) -> String {
    #[derive(serde::Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: Option<&'a str>,
        data: &'a RawValue,
    }
    serde_json::to_string(&Event {
        kind: "event",
        channel,
        data,
    })
    .unwrap_or_default()
}

/// `{"type":"pong","id":...}`.
pub fn pong(id: Option<&str>) -> String {
    serde_json::json!({ "type": "pong", "id": id }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert!(!json_depth_exceeds(r#"{"a":"[[[[[[[[[["}"#, 2));
        assert!(json_depth_exceeds(r#"{"a":[[1]]}"#, 2));
        assert!(!json_depth_exceeds(r#"{"a":[1]}"#, 2));
        assert!(!json_depth_exceeds(r#"{"a":"\"[[[["}"#, 1));
    }

    #[test]
    fn decode_classifies_errors() {
        let code = |t: &str| match decode(t, 4) {
            Err(Rejection::Error { code, .. }) => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code("{"), "bad_json");
        assert_eq!(code("[[[[[[1]]]]]]"), "too_deep");
        assert_eq!(code(r#"{"id":"x"}"#), "bad_envelope");
        assert_eq!(code(r#"{"type":"a","extra":1}"#), "bad_envelope");
        assert_eq!(code(r#"{"type":5}"#), "bad_envelope");
        assert!(decode(r#"{"type":"a","data":{"x":1}}"#, 4).is_ok());
    }

    #[test]
    fn frames_embed_validated_json() {
        let raw = RawValue::from_string(r#"{"x":1}"#.to_owned()).expect("json");
        assert_eq!(
            event(Some("c"), &raw),
            r#"{"type":"event","channel":"c","data":{"x":1}}"#
        );
        assert_eq!(
            ack(Some("1"), None),
            r#"{"type":"ack","id":"1","data":null}"#
        );
    }

    #[test]
    fn channel_names() {
        assert!(is_valid_channel("room:42"));
        assert!(!is_valid_channel(""));
        assert!(!is_valid_channel("room 42"));
        assert!(!is_valid_channel(&"a".repeat(129)));
    }
}
