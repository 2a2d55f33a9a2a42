//! The frames the server sends (`welcome`, `ack`, `event`, presence,
//! `subscribed`, `unsubscribed`, `pong`); `error` frames and closes are
//! [`crate::Rejection`]'s.

use serde_json::value::RawValue;

/// `{"type":"welcome",...}`.
pub fn welcome(connection_id: u64, subject: &str, expires_at: u64) -> String {
    serde_json::json!({
        "type": "welcome",
        "data": { "connection_id": connection_id, "subject": subject, "expires_at": expires_at },
    })
    .to_string()
}

/// `{"type":"welcome",...,"data":{...,"idempotency":{"window_secs":N}}}`:
/// the welcome of a server that takes idempotency keys and remembers
/// answers for `window_secs`. A client sends `key` only after such a
/// welcome.
pub fn welcome_keyed(
    connection_id: u64,
    subject: &str,
    expires_at: u64,
    window_secs: u64,
) -> String {
    serde_json::json!({
        "type": "welcome",
        "data": {
            "connection_id": connection_id,
            "subject": subject,
            "expires_at": expires_at,
            "idempotency": { "window_secs": window_secs },
        },
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

/// `{"type":"event","channel":...,"data":...,"offset":...,"epoch":...}`: an
/// event of a channel that keeps history, at its place in the channel's
/// stream. `data` must be valid JSON.
pub fn event_at(channel: &str, data: &RawValue, offset: u64, epoch: &str) -> String {
    #[derive(serde::Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        data: &'a RawValue,
        offset: u64,
        epoch: &'a str,
    }
    serde_json::to_string(&Event {
        kind: "event",
        channel,
        data,
        offset,
        epoch,
    })
    .unwrap_or_default()
}

/// `{"type":"join"|"leave","channel":...,"data":{"subject":...,"claims":{...}}}`:
/// a subject arrived in or left a presence channel. `claims` must be a
/// JSON object's text (the tenant's exposed claims).
pub fn presence_event(joined: bool, channel: &str, subject: &str, claims: &RawValue) -> String {
    #[derive(serde::Serialize)]
    struct Who<'a> {
        subject: &'a str,
        claims: &'a RawValue,
    }
    #[derive(serde::Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        data: Who<'a>,
    }
    serde_json::to_string(&Event {
        kind: if joined { "join" } else { "leave" },
        channel,
        data: Who { subject, claims },
    })
    .unwrap_or_default()
}

/// `{"type":"subscribed","channel":...,"data":{"offset":...,"epoch":...}}`:
/// a handler subscribed this connection to a channel with history (with
/// `"recovered"` when it asked to recover); `data` must be valid JSON.
pub fn subscribed(channel: &str, data: &RawValue) -> String {
    #[derive(serde::Serialize)]
    struct Subscribed<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        data: &'a RawValue,
    }
    serde_json::to_string(&Subscribed {
        kind: "subscribed",
        channel,
        data,
    })
    .unwrap_or_default()
}

/// `{"type":"unsubscribed","channel":...,"reason":...}`: the server ended a
/// subscription (a reload's channel rules no longer allow it).
pub fn unsubscribed(channel: &str, reason: &str) -> String {
    serde_json::json!({ "type": "unsubscribed", "channel": channel, "reason": reason }).to_string()
}

/// `{"type":"pong","id":...}`.
pub fn pong(id: Option<&str>) -> String {
    serde_json::json!({ "type": "pong", "id": id }).to_string()
}
