//! Idempotency keys: a request may carry `key`, and a server that supports
//! them answers a retry with the same key with the first attempt's answer
//! instead of running the request again.
//!
//! ```text
//! -> {"type":"chat.send","id":"c1","key":"k7Hq2-0","channel":"room:1","data":{"text":"hi"}}
//!    ... the connection drops before the ack; the client reconnects ...
//! -> {"type":"chat.send","id":"c9","key":"k7Hq2-0","channel":"room:1","data":{"text":"hi"}}
//! <- {"type":"ack","id":"c9","data":{"seq":12}}          (the first call's reply; no second call)
//! ```
//!
//! This module holds what the wire needs: the key's syntax
//! ([`is_valid_key`]), the request's [`Fingerprint`] (a retry must be the
//! same request: same type, channel and data), and the [`Answer`] a server
//! keeps and replays under the retry's own `id`.

use std::io::Write as _;

use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::error_code::ErrorCode;
use crate::rejection::{Code, HandlerCode, Rejection};

/// Longest `key`.
pub const MAX_KEY_BYTES: usize = 64;

/// Whether `key` is a valid idempotency key: 1-64 of `A-Z a-z 0-9 - _ . :`.
///
/// Why this set: it holds every usual unique-id format as it is (UUIDs,
/// ULIDs, nanoid and base64url ids, hex digests) and an app's own
/// namespacing (`order:1234`, `draft.42`); nothing in it needs escaping in
/// JSON, a log line or a URL, so a key is compared byte for byte (no two
/// spellings of one key, no Unicode normalization) and is printable in
/// metrics and logs; and it is the channel-name set, which the fleet already
/// encodes into NATS subjects and KV keys.
pub fn is_valid_key(key: &str) -> bool {
    (1..=MAX_KEY_BYTES).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// What makes two requests with one key "the same request": a SHA-256 of
/// the type, the channel and the data in canonical form (object members
/// sorted by name, no white space). A retry whose fingerprint differs from
/// the first attempt's is refused with `key_reused`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("..")
    }
}

/// The fingerprint of a request of `kind` on `channel` with `data`.
///
/// Canonical data: objects with their members in byte order of their
/// names, no white space, strings escaped as serde_json escapes them,
/// numbers as serde_json prints them (so `1` and `1.0` differ, as they do
/// for a handler that reads them). Two requests whose data differ only in
/// member order or spacing have one fingerprint. The parts are length
/// prefixed, so no choice of type, channel and data can pass for another.
pub fn fingerprint(kind: &str, channel: Option<&str>, data: &Value) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(b"sluice.request.v1\0");
    h.update((kind.len() as u64).to_be_bytes());
    h.update(kind.as_bytes());
    match channel {
        None => h.update([0u8]),
        Some(c) => {
            h.update([1u8]);
            h.update((c.len() as u64).to_be_bytes());
            h.update(c.as_bytes());
        }
    }
    // The canonical text is built whole and hashed at once: one buffer
    // instead of an allocation per string and a hash update per token.
    let mut text = Vec::with_capacity(256);
    canonical(&mut text, data);
    h.update(&text);
    Fingerprint(h.finalize().into())
}

/// Append `v` in canonical JSON to `out`.
fn canonical(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (name, value)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, name);
                out.push(b':');
                canonical(out, value);
            }
            out.push(b'}');
        }
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    // serde_json's own escaping: one spelling per string. Writing to a Vec
    // cannot fail; if it did, the raw bytes are tagged apart.
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.push(1);
        out.extend_from_slice(s.as_bytes());
    }
}

/// The answer to a request without its `id`: what a server keeps under an
/// idempotency key and replays, under the retry's own `id`, to a retry.
#[derive(Clone, Debug)]
pub enum Answer {
    /// `{"type":"ack","data":...}`: the handler's reply (`None`: `null`).
    Ack(Option<Box<RawValue>>),
    /// `{"type":"error","code":...,"message":...}`. A retry hint is never
    /// kept: a replayed refusal is final.
    Error {
        /// The code (a handler's own or the host's).
        code: Code,
        /// The message.
        message: String,
    },
}

impl PartialEq for Answer {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Answer::Ack(a), Answer::Ack(b)) => {
                a.as_deref().map(RawValue::get) == b.as_deref().map(RawValue::get)
            }
            (
                Answer::Error { code, message },
                Answer::Error {
                    code: c2,
                    message: m2,
                },
            ) => code == c2 && message == m2,
            _ => false,
        }
    }
}
impl Eq for Answer {}

impl Answer {
    /// An ack whose data is this JSON text; `None` when it is not JSON.
    pub fn ack_json(data: &str) -> Option<Self> {
        if data == "null" {
            return Some(Answer::Ack(None));
        }
        RawValue::from_string(data.to_owned())
            .ok()
            .map(|raw| Answer::Ack(Some(raw)))
    }

    /// The error frame a rejection answers with, if it is one.
    pub fn from_rejection(r: &Rejection) -> Option<Self> {
        match r {
            Rejection::Error { code, message, .. } => Some(Answer::Error {
                code: code.clone(),
                message: message.clone(),
            }),
            Rejection::Close(_) => None,
        }
    }

    /// An error answer from its wire code: a host code if it is one, else a
    /// handler code; `None` when `code` is neither.
    pub fn error(code: &str, message: String) -> Option<Self> {
        let code = match ErrorCode::parse(code) {
            Some(c) => Code::Host(c),
            None => Code::Handler(HandlerCode::new(code)?),
        };
        Some(Answer::Error { code, message })
    }

    /// The frame answering message `id`.
    pub fn frame(&self, id: Option<&str>) -> String {
        match self {
            Answer::Ack(data) => crate::frames::ack(id, data.as_deref()),
            Answer::Error { code, message } => match (Rejection::Error {
                code: code.clone(),
                message: message.clone(),
                retry_after_ms: None,
            })
            .to_wire(id)
            {
                crate::rejection::Wire::Frame(f) => f,
                crate::rejection::Wire::Close { .. } => String::new(),
            },
        }
    }

    /// Bytes it takes (the data's text, or the code and message): what a
    /// quota counts.
    pub fn size(&self) -> usize {
        match self {
            Answer::Ack(None) => 4,
            Answer::Ack(Some(raw)) => raw.get().len(),
            Answer::Error { code, message } => code.as_str().len() + message.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_1_to_64_of_the_documented_set() {
        for good in [
            "a",
            "0b4a7c1e-9d2f-4c3a-8e5b-6f7a8b9c0d1e",
            "01HZX3J5K8M9N2P4Q6R7S8T9V0",
            "V1StGXR8_Z5jdHi6B-myT",
            "order:1234",
            "draft.42",
            &"k".repeat(64),
        ] {
            assert!(is_valid_key(good), "{good}");
        }
        for bad in [
            "",
            &"k".repeat(65),
            "a b",
            "a/b",
            "a\"b",
            "a\\b",
            "é",
            "a\nb",
            "a=b",
            "a+b",
            "a~b",
            "a\0b",
        ] {
            assert!(!is_valid_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_fingerprint_ignores_member_order_and_spacing_only() {
        let a: Value =
            serde_json::from_str(r#"{"text":"hi","to":{"b":1,"a":[1,2]}}"#).expect("json");
        let b: Value =
            serde_json::from_str(r#"{ "to" : { "a" : [1, 2], "b" : 1 }, "text" : "hi" }"#)
                .expect("json");
        let fp = |kind, channel, data: &Value| fingerprint(kind, channel, data);
        assert_eq!(
            fp("chat.send", Some("room:1"), &a),
            fp("chat.send", Some("room:1"), &b)
        );
        // Any difference in type, channel or data is another request.
        let base = fp("chat.send", Some("room:1"), &a);
        assert_ne!(base, fp("chat.edit", Some("room:1"), &a));
        assert_ne!(base, fp("chat.send", Some("room:2"), &a));
        assert_ne!(base, fp("chat.send", None, &a));
        for other in [
            json!({"text":"hi ","to":{"b":1,"a":[1,2]}}),
            json!({"text":"hi","to":{"b":1,"a":[2,1]}}),
            json!({"text":"hi","to":{"b":1.0,"a":[1,2]}}),
            json!({"text":"hi","to":{"b":"1","a":[1,2]}}),
            json!({"text":"hi","to":{"b":1,"a":[1,2]},"x":null}),
            json!(null),
        ] {
            assert_ne!(base, fp("chat.send", Some("room:1"), &other), "{other}");
        }
        // Parts cannot slide into each other.
        assert_ne!(
            fp("ab", Some("c"), &json!(1)),
            fp("a", Some("bc"), &json!(1))
        );
        assert_ne!(fp("a", None, &json!("x")), fp("a", Some(""), &json!("x")));
        // Escapes: one spelling per string.
        let e1: Value = serde_json::from_str(r#""\u0041""#).expect("json");
        assert_eq!(fp("a", None, &e1), fp("a", None, &json!("A")));
    }

    #[test]
    fn an_answer_is_replayed_under_the_retrys_id() {
        let ack = Answer::ack_json(r#"{"seq":12}"#).expect("json");
        assert_eq!(
            ack.frame(Some("c9")),
            r#"{"type":"ack","id":"c9","data":{"seq":12}}"#
        );
        assert_eq!(
            Answer::ack_json("null").expect("json").frame(None),
            r#"{"type":"ack","id":null,"data":null}"#
        );
        assert!(Answer::ack_json("{").is_none());
        let refused = Answer::error("empty_text", "say something".into()).expect("code");
        assert_eq!(
            refused.frame(Some("c2")),
            r#"{"type":"error","id":"c2","code":"empty_text","message":"say something"}"#
        );
        assert_eq!(
            Answer::error("handler_failed", "x".into()),
            Some(Answer::Error {
                code: Code::Host(ErrorCode::HandlerFailed),
                message: "x".into()
            })
        );
        assert!(Answer::error("Not A Code", String::new()).is_none());
        let limited = Rejection::retry(ErrorCode::Unavailable, "busy", 50);
        let kept = Answer::from_rejection(&limited).expect("an error");
        assert!(!kept.frame(Some("x")).contains("retry_after_ms"));
    }
}
