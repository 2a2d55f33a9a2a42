//! The one place where failures outside the protocol crate become what a
//! client sees: a sandbox call error ([`for_call`]) and a WebSocket read
//! error ([`for_read`]). Everything else is already a
//! [`sluice_protocol::Rejection`], which maps itself to the wire.

use sluice_protocol::{CloseReason, Code, ErrorCode, Rejection};
use sluice_sandbox::CallErrorKind;
use tokio_tungstenite::tungstenite::Error as WsError;

/// The client's view of a failed handler call. Only a handler's own
/// rejection carries its code and message; every other kind's detail stays
/// in the logs.
pub fn for_call(kind: &CallErrorKind) -> Rejection {
    match kind {
        CallErrorKind::Rejected { code, message } => Rejection::Error {
            code: Code::Handler(code.clone()),
            message: message.clone(),
            retry_after_ms: None,
        },
        CallErrorKind::OutOfFuel | CallErrorKind::Deadline => {
            Rejection::error(ErrorCode::HandlerTimeout, "the handler ran out of time")
        }
        CallErrorKind::Quarantined { remaining } => Rejection::retry(
            ErrorCode::Unavailable,
            "the handler is temporarily unavailable",
            remaining.as_millis() as u64,
        ),
        CallErrorKind::Unavailable { .. } => Rejection::error(
            ErrorCode::Unavailable,
            "the handler is temporarily unavailable",
        ),
        CallErrorKind::Conflict => Rejection::error(
            ErrorCode::Conflict,
            "the state this message changes was changed elsewhere at the same moment; nothing was written, try again",
        ),
        CallErrorKind::Failed { .. }
        | CallErrorKind::MemoryLimit
        | CallErrorKind::TableLimit
        | CallErrorKind::StackOverflow
        | CallErrorKind::Trap { .. }
        | CallErrorKind::TooManyActions { .. }
        | CallErrorKind::OutputTooLarge { .. } => {
            Rejection::error(ErrorCode::HandlerFailed, "the handler failed")
        }
    }
}

/// The code a client gets for a failed call (what `sluice call` prints).
pub fn client_code(kind: &CallErrorKind) -> String {
    match for_call(kind) {
        Rejection::Error { code, .. } => code.as_str().to_owned(),
        Rejection::Close(reason) => reason.reason().to_owned(),
    }
}

/// Why a connection closes after a read error.
pub fn for_read(e: &WsError) -> CloseReason {
    match e {
        WsError::Capacity(_) => CloseReason::TooBig,
        WsError::Utf8(_) => CloseReason::InvalidUtf8,
        WsError::Protocol(_) => CloseReason::ProtocolError,
        _ => CloseReason::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn internal_details_never_reach_the_client() {
        let trap = CallErrorKind::Trap {
            detail: "SECRET at wasm offset 0x42".into(),
        };
        match for_call(&trap) {
            Rejection::Error { code, message, .. } => {
                assert_eq!(code, "handler_failed");
                assert!(!message.contains("SECRET"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(client_code(&CallErrorKind::Deadline), "handler_timeout");
        assert_eq!(
            for_call(&CallErrorKind::Quarantined {
                remaining: Duration::from_millis(1500)
            }),
            Rejection::retry(
                ErrorCode::Unavailable,
                "the handler is temporarily unavailable",
                1500
            )
        );
    }
}
