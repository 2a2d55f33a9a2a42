//! Decode: UTF-8 text (checked by the WebSocket layer) -> JSON with a depth
//! bound -> an envelope -> a [`Request`]: a reserved request the host
//! answers itself, or a message for a route.

use sluice_protocol::{self as protocol, Envelope, ErrorCode, Rejection, ReservedType};

/// A decoded client message.
#[derive(Debug)]
pub enum Request {
    /// `ping`: answered with `pong`.
    Ping,
    /// `subscribe` to a channel.
    Subscribe {
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

/// What decoding produced: the client's correlation id (when the envelope
/// parsed far enough to have one) and the request or its refusal.
#[derive(Debug)]
pub struct Decoded {
    /// The `id` to answer with.
    pub id: Option<String>,
    /// The request, or why it is refused.
    pub request: Result<Request, Rejection>,
}

/// Decode one text frame.
pub fn decode(text: &str, max_depth: usize) -> Decoded {
    match protocol::decode(text, max_depth) {
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
        | ReservedType::Unsubscribed => {
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
            decode(r#"{"type":"ping","id":"p"}"#, 8).request,
            Ok(Request::Ping)
        ));
        let d = decode(r#"{"type":"subscribe","id":"s"}"#, 8);
        assert_eq!(d.id.as_deref(), Some("s"));
        assert_eq!(code(&d), "bad_envelope");
        assert!(matches!(
            decode(r#"{"type":"subscribe","channel":"room:1"}"#, 8).request,
            Ok(Request::Subscribe { channel }) if channel == "room:1"
        ));
        assert_eq!(code(&decode(r#"{"type":"ack"}"#, 8)), "unknown_type");
        assert_eq!(code(&decode(r#"{"type":"sluice.x"}"#, 8)), "unknown_type");
        assert_eq!(
            code(&decode(r#"{"type":"refresh","data":{}}"#, 8)),
            "bad_envelope"
        );
        assert!(matches!(
            decode(r#"{"type":"chat.send","data":{"t":1}}"#, 8).request,
            Ok(Request::Route(e)) if e.kind == "chat.send"
        ));
        let bad = decode("{", 8);
        assert_eq!(bad.id, None);
        assert_eq!(code(&bad), "bad_json");
    }
}
