//! What a frame from the server is, for counting answers.

/// What a frame from the server is, seen by a load generator: only the
/// first bytes are looked at (every Sluice frame starts with its `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// An answer to a request: `ack`, or anything a bare echo sends back.
    Answer,
    /// `error`: an answer that refused the request.
    Refused,
    /// `welcome`, `event`, `pong`: not an answer to a request.
    Other,
}

/// Classify a text frame by its leading `"type"`.
pub fn classify(text: &str) -> FrameKind {
    let head = &text.as_bytes()[..text.len().min(24)];
    let starts = |t: &[u8]| head.windows(t.len()).any(|w| w == t);
    if starts(br#""type":"error""#) {
        FrameKind::Refused
    } else if starts(br#""type":"event""#) || starts(br#""type":"welcome""#) {
        FrameKind::Other
    } else {
        FrameKind::Answer
    }
}
