//! Decode: UTF-8 text (checked by the WebSocket layer) -> JSON with a depth
//! bound -> an envelope -> a [`Request`]: a reserved request the host
//! answers itself, or a message for a route.

use sluice_protocol::{
    self as protocol, Envelope, ErrorCode, MAX_OFFSET, Rejection, ReservedType, Since,
};

/// A decoded client message.
#[derive(Debug)]
pub enum Request {
    /// `ping`: answered with `pong`.
    Ping,
    /// `subscribe` to a channel, recovering what was missed since a
    /// position (channels with history).
    Subscribe {
        /// The channel.
        channel: String,
        /// `data.since`, if given.
        since: Option<Since>,
    },
    /// `presence`: who is subscribed to a channel.
    Presence {
        /// The channel.
        channel: String,
    },
    /// `unsubscribe` from a channel.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
    /// `refresh` the token.
    Refresh {
        /// The new token.
        token: String,
    },
    /// A message for the tenant's route `envelope.kind`.
    Route(Envelope),
}

/// `data` of a `subscribe`: `null`, `{}` or `{"since":{"offset":N,"epoch":"..."}}`.
fn since(data: &serde_json::Value) -> Result<Option<Since>, Rejection> {
    let bad = |why: &str| Rejection::error(ErrorCode::BadEnvelope, format!("subscribe: {why}"));
    let obj = match data {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Object(o) => o,
        _ => return Err(bad("data must be an object with an optional `since`")),
    };
    if obj.keys().any(|k| k != "since") {
        return Err(bad("data takes only `since`"));
    }
    let Some(since) = obj.get("since") else {
        return Ok(None);
    };
    let Some(since) = since.as_object() else {
        return Err(bad("since must be {\"offset\": N, \"epoch\": \"...\"}"));
    };
    if since.keys().any(|k| k != "offset" && k != "epoch") {
        return Err(bad("since takes only `offset` and `epoch`"));
    }
    let offset = since
        .get("offset")
        .and_then(serde_json::Value::as_u64)
        .filter(|o| *o <= MAX_OFFSET)
        .ok_or_else(|| bad("since.offset must be an integer from 0 to 2^53-1"))?;
    let epoch = since
        .get("epoch")
        .and_then(serde_json::Value::as_str)
        .filter(|e| !e.is_empty() && e.len() <= protocol::MAX_EPOCH_BYTES)
        .ok_or_else(|| {
            bad(&format!(
                "since.epoch must be a string of 1-{} bytes",
                protocol::MAX_EPOCH_BYTES
            ))
        })?;
    Ok(Some(Since {
        offset,
        epoch: epoch.to_owned(),
    }))
}

/// What decoding produced: the client's correlation id (when the envelope
/// parsed far enough to have one) and the request or its refusal.
#[derive(Debug)]
pub struct Decoded {
    /// The `id` to answer with.
    pub id: Option<String>,
    /// The request, or why it is refused.
    pub request: Result<Request, Rejection>,
}

/// Decode one text frame. `keyed`: the node keeps an idempotency table,
/// so a route message may carry a `key` (otherwise a `key` is
/// `bad_envelope`: a keyed request is never run as if it were protected).
pub fn decode(text: &str, max_depth: usize, keyed: bool) -> Decoded {
    let parsed = if keyed {
        protocol::decode_keyed(text, max_depth)
    } else {
        protocol::decode(text, max_depth)
    };
    match parsed {
        Ok(envelope) => Decoded {
            id: envelope.id.clone(),
            request: classify(envelope),
        },
        Err(rejection) => Decoded {
            id: None,
            request: Err(rejection),
        },
    }
}

/// Reserved types become typed requests; everything else goes to a route.
fn classify(envelope: Envelope) -> Result<Request, Rejection> {
    let Some(reserved) = ReservedType::parse(&envelope.kind) else {
        if protocol::is_reserved_type(&envelope.kind) {
            return Err(Rejection::error(ErrorCode::UnknownType, "reserved type"));
        }
        return Ok(Request::Route(envelope));
    };
    let channel = |what: &str| {
        envelope.channel.clone().ok_or_else(|| {
            Rejection::error(ErrorCode::BadEnvelope, format!("{what} needs a channel"))
        })
    };
    match reserved {
        ReservedType::Ping => Ok(Request::Ping),
        // The old wording says "subscribe" for both.
        ReservedType::Subscribe => Ok(Request::Subscribe {
            channel: channel("subscribe")?,
            since: since(&envelope.data)?,
        }),
        ReservedType::Presence => Ok(Request::Presence {
            channel: channel("presence")?,
        }),
        ReservedType::Unsubscribe => Ok(Request::Unsubscribe {
            channel: channel("subscribe")?,
        }),
        ReservedType::Refresh => envelope
            .data
            .get("token")
            .and_then(serde_json::Value::as_str)
            .map(|token| Request::Refresh {
                token: token.to_owned(),
            })
            .ok_or_else(|| Rejection::error(ErrorCode::BadEnvelope, "refresh needs data.token")),
        ReservedType::Welcome
        | ReservedType::Ack
        | ReservedType::Error
        | ReservedType::Event
        | ReservedType::Pong
        | ReservedType::Unsubscribed
        | ReservedType::Join
        | ReservedType::Leave
        | ReservedType::Subscribed => {
            Err(Rejection::error(ErrorCode::UnknownType, "reserved type"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(d: &Decoded) -> &str {
        match &d.request {
            Err(Rejection::Error { code, .. }) => code.as_str(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reserved_types_are_typed_and_server_frames_refused() {
        assert!(matches!(
            decode(r#"{"type":"ping","id":"p"}"#, 8, false).request,
            Ok(Request::Ping)
        ));
        let d = decode(r#"{"type":"subscribe","id":"s"}"#, 8, false);
        assert_eq!(d.id.as_deref(), Some("s"));
        assert_eq!(code(&d), "bad_envelope");
        assert!(matches!(
            decode(r#"{"type":"subscribe","channel":"room:1"}"#, 8, false).request,
            Ok(Request::Subscribe { channel, since: None }) if channel == "room:1"
        ));
        assert_eq!(code(&decode(r#"{"type":"ack"}"#, 8, false)), "unknown_type");
        assert_eq!(
            code(&decode(r#"{"type":"sluice.x"}"#, 8, false)),
            "unknown_type"
        );
        assert_eq!(
            code(&decode(r#"{"type":"refresh","data":{}}"#, 8, false)),
            "bad_envelope"
        );
        assert!(matches!(
            decode(r#"{"type":"chat.send","data":{"t":1}}"#, 8, false).request,
            Ok(Request::Route(e)) if e.kind == "chat.send"
        ));
        let bad = decode("{", 8, false);
        assert_eq!(bad.id, None);
        assert_eq!(code(&bad), "bad_json");
    }

    #[test]
    fn a_key_is_taken_only_by_a_node_with_a_table_and_only_on_routes() {
        let text = r#"{"type":"chat.send","id":"c","key":"k1","data":{}}"#;
        assert_eq!(code(&decode(text, 8, false)), "bad_envelope");
        assert!(matches!(
            decode(text, 8, true).request,
            Ok(Request::Route(e)) if e.key.as_deref() == Some("k1")
        ));
        assert_eq!(
            code(&decode(r#"{"type":"ping","key":"k1"}"#, 8, true)),
            "bad_envelope"
        );
        assert_eq!(
            code(&decode(r#"{"type":"chat.send","key":"a b"}"#, 8, true)),
            "bad_envelope"
        );
    }

    #[test]
    fn since_is_checked_strictly() {
        let sub = |data: &str| {
            decode(
                &format!(r#"{{"type":"subscribe","id":"s","channel":"room:1","data":{data}}}"#),
                8,
                false,
            )
        };
        assert!(matches!(
            sub(r#"{"since":{"offset":41,"epoch":"ab12"}}"#).request,
            Ok(Request::Subscribe { since: Some(Since { offset: 41, ref epoch }), .. }) if epoch == "ab12"
        ));
        assert!(matches!(
            sub("{}").request,
            Ok(Request::Subscribe { since: None, .. })
        ));
        let long_epoch = format!(
            r#"{{"since":{{"offset":1,"epoch":"{}"}}}}"#,
            "e".repeat(10_000)
        );
        for bad in [
            r#"{"since":{"offset":-1,"epoch":"e"}}"#,
            r#"{"since":{"offset":1e300,"epoch":"e"}}"#,
            r#"{"since":{"offset":18446744073709551616,"epoch":"e"}}"#,
            r#"{"since":{"offset":9007199254740992,"epoch":"e"}}"#,
            r#"{"since":{"offset":"41","epoch":"e"}}"#,
            r#"{"since":{"offset":1.5,"epoch":"e"}}"#,
            r#"{"since":{"offset":1,"epoch":""}}"#,
            r#"{"since":{"offset":1,"epoch":7}}"#,
            r#"{"since":{"offset":1}}"#,
            r#"{"since":{"offset":1,"epoch":"e","x":1}}"#,
            r#"{"since":[1,"e"]}"#,
            r#"{"other":1}"#,
            r#""since""#,
            long_epoch.as_str(),
        ] {
            let d = sub(bad);
            assert_eq!(code(&d), "bad_envelope", "{bad}");
            assert_eq!(d.id.as_deref(), Some("s"));
        }
        assert!(matches!(
            decode(r#"{"type":"presence","channel":"room:1"}"#, 8, false).request,
            Ok(Request::Presence { channel }) if channel == "room:1"
        ));
        assert_eq!(
            code(&decode(r#"{"type":"join"}"#, 8, false)),
            "unknown_type"
        );
    }
}
