//! One typed rejection vocabulary: host error codes ([`ErrorCode`]),
//! handler codes ([`HandlerCode`]) and close reasons ([`CloseReason`]), and
//! the one mapping ([`Rejection::to_wire`]) from any of them to what the
//! client receives.

use std::fmt;

use crate::error_code::ErrorCode;
use crate::text::truncate_utf8;

/// Close codes (RFC 6455) the server uses.
pub mod close {
    /// Normal closure (a handler asked for it, idle timeout).
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down, or the tenant was removed.
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol violation at the WebSocket layer.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy: sustained rate-limit abuse, token expired, key revoked.
    pub const POLICY: u16 = 1008;
    /// A frame or message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// An internal error.
    pub const INTERNAL: u16 = 1011;
    /// The server is overloaded (a slow consumer's queue is full).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Longest close reason (RFC 6455: 125 bytes of payload minus the code).
    pub const MAX_REASON_BYTES: usize = 123;
}

/// A code a handler rejected a message with: 1-64 of `a-z 0-9 _ .`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HandlerCode(String);

impl HandlerCode {
    /// Longest handler code.
    pub const MAX_BYTES: usize = 64;

    /// A handler code, if `code` is one.
    pub fn new(code: impl Into<String>) -> Option<Self> {
        let code = code.into();
        let valid = (1..=Self::MAX_BYTES).contains(&code.len())
            && code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
        valid.then_some(Self(code))
    }

    /// The code on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HandlerCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `code` of an `error` frame: the host's or the handler's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Code {
    /// A host code (documented, fixed).
    Host(ErrorCode),
    /// A code the tenant's handler chose.
    Handler(HandlerCode),
}

impl Code {
    /// The code on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Code::Host(c) => c.as_str(),
            Code::Handler(c) => c.as_str(),
        }
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the server closes a connection. Each reason has one close code and
/// one reason text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The handler asked for it; its code is 1000 or 4000-4999 (anything
    /// else becomes 1000), its reason at most 123 bytes.
    Handler {
        /// The code.
        code: u16,
        /// The reason.
        reason: String,
    },
    /// Nothing heard from the client (not even a pong) for the idle timeout.
    IdleTimeout,
    /// The server is draining.
    ServerShutdown,
    /// A reload removed the connection's tenant.
    TenantRemoved,
    /// A WebSocket protocol violation.
    ProtocolError,
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// The token expired and was not refreshed.
    TokenExpired,
    /// The key that verified the token is no longer configured.
    KeyRevoked,
    /// The tenant no longer allows the `Origin` the connection came from.
    OriginRevoked,
    /// Rate-limited messages, many in a row.
    RateLimitAbuse,
    /// A frame or message over the size limit.
    TooBig,
    /// An internal error (never detailed to the client).
    Internal,
    /// The outbound queue overflowed: the client does not read.
    SlowConsumer,
    /// Live events of a channel the connection subscribes could not be
    /// delivered (in a fleet, the node's path from the history stream was
    /// cut and the missed events could not be read back): resume with
    /// `since`, which recovers them or says `recovered: false`.
    MissedEvents,
}

impl CloseReason {
    /// A handler's close request, bounded: a code outside 1000 and
    /// 4000-4999 becomes 1000, the reason is cut to 123 bytes.
    pub fn handler(code: u16, reason: String) -> Self {
        let code = if code == close::NORMAL || (4000..=4999).contains(&code) {
            code
        } else {
            close::NORMAL
        };
        CloseReason::Handler {
            code,
            reason: truncate_utf8(reason, close::MAX_REASON_BYTES),
        }
    }

    /// The RFC 6455 close code.
    pub fn code(&self) -> u16 {
        match self {
            CloseReason::Handler { code, .. } => *code,
            CloseReason::IdleTimeout => close::NORMAL,
            CloseReason::ServerShutdown | CloseReason::TenantRemoved => close::GOING_AWAY,
            CloseReason::ProtocolError => close::PROTOCOL_ERROR,
            CloseReason::InvalidUtf8 => close::INVALID_PAYLOAD,
            CloseReason::TokenExpired
            | CloseReason::KeyRevoked
            | CloseReason::OriginRevoked
            | CloseReason::RateLimitAbuse => close::POLICY,
            CloseReason::TooBig => close::TOO_BIG,
            CloseReason::Internal => close::INTERNAL,
            CloseReason::SlowConsumer | CloseReason::MissedEvents => close::TRY_AGAIN_LATER,
        }
    }

    /// The reason text sent in the close frame.
    pub fn reason(&self) -> &str {
        match self {
            CloseReason::Handler { reason, .. } => reason,
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::ServerShutdown => "server shutting down",
            CloseReason::TenantRemoved => "tenant removed",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::InvalidUtf8 => "invalid UTF-8",
            CloseReason::TokenExpired => "token expired",
            CloseReason::KeyRevoked => "key revoked",
            CloseReason::OriginRevoked => "origin revoked",
            CloseReason::RateLimitAbuse => "rate limit abuse",
            CloseReason::TooBig => "message too big",
            CloseReason::Internal => "",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::MissedEvents => "missed events: resume with since",
        }
    }
}

/// A refusal: an `error` frame (the connection stays usable) or a close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// An `error` frame.
    Error {
        /// The code.
        code: Code,
        /// A message for the client: never an echo of its input, never an
        /// internal detail.
        message: String,
        /// For `rate_limited` and `unavailable`: when to try again.
        retry_after_ms: Option<u64>,
    },
    /// Close the connection.
    Close(CloseReason),
}

/// What the client receives for a [`Rejection`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wire {
    /// This text frame.
    Frame(String),
    /// A close frame with this code and reason.
    Close {
        /// The RFC 6455 code.
        code: u16,
        /// The reason.
        reason: String,
    },
}

impl Rejection {
    /// An error frame with a host code.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection::Error {
            code: Code::Host(code),
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// An error frame with a host code and a retry hint.
    pub fn retry(code: ErrorCode, message: impl Into<String>, after_ms: u64) -> Self {
        Rejection::Error {
            code: Code::Host(code),
            message: message.into(),
            retry_after_ms: Some(after_ms.max(1)),
        }
    }

    /// The code of an error frame, `None` for a close.
    pub fn code(&self) -> Option<&Code> {
        match self {
            Rejection::Error { code, .. } => Some(code),
            Rejection::Close(_) => None,
        }
    }

    /// The one mapping from a refusal to the wire, answering message `id`.
    pub fn to_wire(&self, id: Option<&str>) -> Wire {
        match self {
            Rejection::Error {
                code,
                message,
                retry_after_ms,
            } => {
                let mut frame = serde_json::json!({
                    "type": "error", "id": id, "code": code.as_str(), "message": message,
                });
                if let Some(ms) = retry_after_ms {
                    frame["retry_after_ms"] = serde_json::json!(ms);
                }
                Wire::Frame(frame.to_string())
            }
            Rejection::Close(reason) => Wire::Close {
                code: reason.code(),
                reason: reason.reason().to_owned(),
            },
        }
    }
}

impl From<CloseReason> for Rejection {
    fn from(reason: CloseReason) -> Self {
        Rejection::Close(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mapping_to_the_wire() {
        let r = Rejection::retry(ErrorCode::RateLimited, "too many messages", 0);
        assert_eq!(
            r.to_wire(Some("m1")),
            Wire::Frame(
                r#"{"type":"error","id":"m1","code":"rate_limited","message":"too many messages","retry_after_ms":1}"#
                    .into()
            )
        );
        let handler = Rejection::Error {
            code: Code::Handler(HandlerCode::new("empty_text").expect("valid")),
            message: "say something".into(),
            retry_after_ms: None,
        };
        assert_eq!(
            handler.to_wire(None),
            Wire::Frame(
                r#"{"type":"error","id":null,"code":"empty_text","message":"say something"}"#
                    .into()
            )
        );
        assert_eq!(
            Rejection::Close(CloseReason::KeyRevoked).to_wire(None),
            Wire::Close {
                code: 1008,
                reason: "key revoked".into()
            }
        );
    }

    #[test]
    fn handler_codes_and_closes_are_bounded() {
        assert!(HandlerCode::new("a.b_c9").is_some());
        for bad in ["", "Caps", "a b", "a\"b"] {
            assert!(HandlerCode::new(bad).is_none(), "{bad}");
        }
        assert!(HandlerCode::new("a".repeat(65)).is_none());
        assert_eq!(CloseReason::handler(1011, String::new()).code(), 1000);
        assert_eq!(CloseReason::handler(4001, String::new()).code(), 4001);
        let long = CloseReason::handler(1000, "é".repeat(100));
        assert!(long.reason().len() <= 123);
    }
}
