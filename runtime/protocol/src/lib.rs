//! The client protocol: JSON text frames.
//!
//! ```text
//! client -> {"type":"chat.send","id":"c1","channel":"room:42","data":{...}}
//!           {"type":"chat.send","id":"c1","key":"k1","channel":"room:42","data":{...}}  (idempotency key)
//! server -> {"type":"welcome","data":{"connection_id":7,"subject":"alice","expires_at":1795939200}}
//!           {"type":"ack","id":"c1","data":...}
//!           {"type":"error","id":"c1","code":"schema_invalid","message":"..."}
//!           {"type":"event","channel":"room:42","data":...}
//!           {"type":"event","channel":"room:42","data":...,"offset":42,"epoch":"..."}  (history)
//!           {"type":"join","channel":"room:42","data":{"subject":"bob","claims":{}}}   (presence)
//!           {"type":"pong","id":"p1"}
//! ```
//!
//! Every rejection knows its wire response ([`Rejection`]): an `error` frame
//! (the connection stays usable) or a close frame with an RFC 6455 code and
//! a [`CloseReason`]. [`Rejection::to_wire`] is the one place that turns a
//! refusal into what the client receives.
//!
//! This crate is the bottom of Sluice's crate graph: no wasmtime, no tokio,
//! nothing of Sluice.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error_code;
mod frames;
mod idempotency;
mod position;
mod rejection;
mod reserved;
mod text;

pub use error_code::ErrorCode;
pub use frames::{
    ack, event, event_at, pong, presence_event, subscribed, unsubscribed, welcome, welcome_keyed,
};
pub use idempotency::{Answer, Fingerprint, MAX_KEY_BYTES, fingerprint, is_valid_key};
pub use position::{MAX_OFFSET, Outcome, Position, Since};
pub use rejection::{CloseReason, Code, HandlerCode, Rejection, Wire, close};
pub use reserved::{ReservedType, is_reserved_type};
pub use text::truncate_utf8;

use serde::Deserialize;

/// The WebSocket subprotocol Sluice speaks.
pub const SUBPROTOCOL: &str = "sluice.v1";
/// Prefix of the subprotocol entry that carries a token (browsers).
pub const TOKEN_PROTOCOL_PREFIX: &str = "bearer.";

/// Longest client-chosen `id`.
pub const MAX_ID_BYTES: usize = 64;
/// Longest channel name.
pub const MAX_CHANNEL_BYTES: usize = 128;

/// Largest message (after reassembly of fragments) a server accepts unless
/// configured otherwise (`[server] max_message_bytes`). A wire limit: the
/// benchmark's baseline peer enforces the same without Sluice's config.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 10;
/// Largest single frame (`[server] max_frame_bytes`).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 << 10;
/// Deepest JSON nesting accepted in a client message (`[server]
/// max_json_depth`; see [`decode`]).
pub const DEFAULT_MAX_JSON_DEPTH: usize = 32;

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
    /// The idempotency key (see [`is_valid_key`]): a retry with the same
    /// key gets the first attempt's answer. Only [`decode_keyed`] accepts
    /// one; [`decode`] refuses it.
    #[serde(default)]
    pub key: Option<String>,
}

impl Envelope {
    /// This request's [`Fingerprint`]: what a retry with its key must match.
    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint(&self.kind, self.channel.as_deref(), &self.data)
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

/// Parse a client frame into an envelope, after the depth check. An
/// envelope with a `key` is refused (`bad_envelope`): a server that keeps
/// no idempotency table must not run a keyed request as if it did (see
/// [`decode_keyed`]).
pub fn decode(text: &str, max_depth: usize) -> Result<Envelope, Rejection> {
    let envelope = decode_keyed(text, max_depth)?;
    if envelope.key.is_some() {
        return Err(Rejection::error(
            ErrorCode::BadEnvelope,
            "this server takes no idempotency key (its welcome has no `idempotency`)",
        ));
    }
    Ok(envelope)
}

/// [`decode`] for a server with an idempotency table: a `key` is taken, on
/// a route (not on a reserved type, which the host answers itself and
/// which are idempotent already), when it is 1-64 of `A-Z a-z 0-9 - _ . :`;
/// anything else is `bad_envelope`.
pub fn decode_keyed(text: &str, max_depth: usize) -> Result<Envelope, Rejection> {
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
    if let Some(key) = &envelope.key {
        if !is_valid_key(key) {
            return Err(Rejection::error(
                ErrorCode::BadEnvelope,
                format!("key must be 1-{MAX_KEY_BYTES} of A-Z a-z 0-9 - _ . :"),
            ));
        }
        if is_reserved_type(&envelope.kind) {
            return Err(Rejection::error(
                ErrorCode::BadEnvelope,
                "key is taken on routes only, not on reserved types",
            ));
        }
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
        "an unknown field (the fields are type, id, key, channel, data)"
    } else if text.starts_with("missing field `type`") {
        "missing field `type`"
    } else if text.starts_with("duplicate field `") {
        // serde names only known fields as duplicates.
        match ["type", "id", "key", "channel", "data"]
            .iter()
            .find(|f| text.starts_with(&format!("duplicate field `{f}`")))
        {
            Some(&"type") => "duplicate field `type`",
            Some(&"id") => "duplicate field `id`",
            Some(&"channel") => "duplicate field `channel`",
            Some(&"key") => "duplicate field `key`",
            Some(_) => "duplicate field `data`",
            None => "a duplicate field",
        }
    } else if text.starts_with("invalid type") || text.starts_with("invalid value") {
        "a field of the wrong type (type, id, key and channel are strings)"
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
                    assert_eq!(code, Code::Host(ErrorCode::BadEnvelope), "{text}");
                    assert!(message.ends_with("expected an object"), "{text}: {message}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            decode("[1,", 32),
            Err(Rejection::Error { code, .. }) if code == Code::Host(ErrorCode::BadJson)
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

/// Longest epoch a client may send back in `since`.
pub const MAX_EPOCH_BYTES: usize = 64;

/// How far into a frame [`peek_id`] looks.
pub const PEEK_ID_BYTES: usize = 512;

/// The top-level `"id"` of an envelope, if it is a plain string within the
/// first [`PEEK_ID_BYTES`] bytes, without parsing the frame: what a refusal
/// made before parsing (rate limits) can still answer to. Strings with
/// escapes and ids over [`MAX_ID_BYTES`] are not taken.
pub fn peek_id(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let end = bytes.len().min(PEEK_ID_BYTES);
    let (mut i, mut depth) = (0usize, 0usize);
    // Whether the next string at depth 1 is a key.
    let mut expect_key = false;
    while i < end {
        match bytes[i] {
            b'{' | b'[' => {
                depth += 1;
                expect_key = depth == 1 && bytes[i] == b'{';
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b',' => {
                expect_key = depth == 1;
                i += 1;
            }
            b'"' => {
                let start = i + 1;
                let mut j = start;
                let mut escaped = false;
                while j < end && (escaped || bytes[j] != b'"') {
                    escaped = !escaped && bytes[j] == b'\\';
                    j += 1;
                }
                if j >= end {
                    return None;
                }
                let is_id_key = expect_key && depth == 1 && &bytes[start..j] == b"id";
                expect_key = false;
                i = j + 1;
                if is_id_key {
                    while i < end && matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r' | b':') {
                        i += 1;
                    }
                    if i < end && bytes[i] == b'"' {
                        let s = i + 1;
                        let e = bytes[s..end].iter().position(|b| *b == b'"')? + s;
                        let id = text.get(s..e)?;
                        return (id.len() <= MAX_ID_BYTES && !id.contains('\\')).then_some(id);
                    }
                    return None;
                }
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

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
            Err(Rejection::Error { code, .. }) => code.as_str().to_owned(),
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
    fn a_key_is_taken_only_by_decode_keyed_and_only_when_valid() {
        let keyed = r#"{"type":"chat.send","id":"c1","key":"k-1:a.B_2","channel":"room:1","data":{"text":"hi"}}"#;
        let e = decode_keyed(keyed, 8).expect("a valid keyed envelope");
        assert_eq!(e.key.as_deref(), Some("k-1:a.B_2"));
        assert_eq!(
            e.fingerprint(),
            fingerprint(
                "chat.send",
                Some("room:1"),
                &serde_json::json!({"text":"hi"})
            )
        );
        // A server without a table refuses it rather than run it unprotected.
        match decode(keyed, 8) {
            Err(Rejection::Error { code, message, .. }) => {
                assert_eq!(code, Code::Host(ErrorCode::BadEnvelope));
                assert!(message.contains("idempotency"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(decode(r#"{"type":"chat.send","data":1}"#, 8).is_ok_and(|e| e.key.is_none()));
        let long = format!(r#"{{"type":"a","key":"{}"}}"#, "k".repeat(65));
        for bad in [
            r#"{"type":"a","key":""}"#,
            r#"{"type":"a","key":"a b"}"#,
            r#"{"type":"a","key":"SECRET/x"}"#,
            r#"{"type":"a","key":7}"#,
            r#"{"type":"a","key":null,"key":"x"}"#,
            r#"{"type":"a","key":"x","key":"x"}"#,
            r#"{"type":"subscribe","channel":"room:1","key":"x"}"#,
            r#"{"type":"sluice.anything","key":"x"}"#,
            long.as_str(),
        ] {
            match decode_keyed(bad, 8) {
                Err(Rejection::Error { code, message, .. }) => {
                    assert_eq!(code, Code::Host(ErrorCode::BadEnvelope), "{bad}");
                    assert!(!message.contains("SECRET"), "{message}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        // `"key":null` is no key.
        assert!(decode(r#"{"type":"a","key":null}"#, 8).is_ok());
    }

    #[test]
    fn host_codes_parse_back() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(ErrorCode::parse("key_reused"), Some(ErrorCode::KeyReused));
        assert_eq!(
            ErrorCode::parse("too_many_keys"),
            Some(ErrorCode::TooManyKeys)
        );
        assert_eq!(ErrorCode::parse("empty_text"), None);
    }

    #[test]
    fn a_keyed_welcome_advertises_the_window() {
        let w: serde_json::Value =
            serde_json::from_str(&welcome_keyed(7, "alice", 99, 300)).expect("json");
        assert_eq!(w["data"]["idempotency"]["window_secs"], 300);
        assert_eq!(w["data"]["subject"], "alice");
        let plain: serde_json::Value =
            serde_json::from_str(&welcome(7, "alice", 99)).expect("json");
        assert!(plain["data"].get("idempotency").is_none());
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
    fn the_id_is_peeked_at_top_level_only() {
        assert_eq!(peek_id(r#"{"type":"a","id":"m1","data":1}"#), Some("m1"));
        assert_eq!(peek_id(r#"{"id" : "x"}"#), Some("x"));
        assert_eq!(
            peek_id(r#"{"type":"a","data":{"id":"fake"},"id":"real"}"#),
            Some("real")
        );
        assert_eq!(peek_id(r#"{"type":"id","data":"id"}"#), None);
        assert_eq!(peek_id(r#"{"type":"a","id":5}"#), None);
        assert_eq!(peek_id(r#"{"a":"\"id\"","id":"ok"}"#), Some("ok"));
        assert_eq!(peek_id(&format!(r#"{{"id":"{}"}}"#, "x".repeat(65))), None);
        assert_eq!(
            peek_id(&format!(r#"{{"data":"{}","id":"late"}}"#, "x".repeat(600))),
            None
        );
        assert_eq!(peek_id("garbage"), None);
    }

    #[test]
    fn channel_names() {
        assert!(is_valid_channel("room:42"));
        assert!(!is_valid_channel(""));
        assert!(!is_valid_channel("room 42"));
        assert!(!is_valid_channel(&"a".repeat(129)));
    }
}
