//! The error codes of the protocol's `error` frame.

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
    /// Cluster mode: the handler's state writes lost a race with another
    /// node twice in a row (the call ran again once); nothing was written.
    Conflict,
    /// The request's idempotency `key` was used within the window by a
    /// request with another type, channel or data; nothing was run.
    KeyReused,
    /// The tenant (or the subject) has as many requests with keys
    /// remembered as its quota allows; `retry_after_ms` says when the
    /// oldest is forgotten. Nothing was run.
    TooManyKeys,
}

impl ErrorCode {
    /// Every host code (keep in step with the enum): `/metrics` always gives
    /// these a label of their own, whatever codes handlers invent.
    pub const ALL: [ErrorCode; 17] = [
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
        ErrorCode::Conflict,
        ErrorCode::KeyReused,
        ErrorCode::TooManyKeys,
    ];

    /// The host code spelled `code` on the wire, if it is one.
    pub fn parse(code: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }

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
            ErrorCode::Conflict => "conflict",
            ErrorCode::KeyReused => "key_reused",
            ErrorCode::TooManyKeys => "too_many_keys",
        }
    }
}
