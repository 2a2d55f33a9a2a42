//! The envelope decoder takes any text a client sends: it must never panic,
//! and whatever it accepts must be within the bounds it promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::server::protocol::{self, MAX_ID_BYTES, Rejection};

fuzz_target!(|text: &str| {
    match protocol::decode(text, 32) {
        Ok(envelope) => {
            assert!(!envelope.kind.is_empty() && envelope.kind.len() <= 128);
            assert!(envelope.id.as_ref().is_none_or(|id| id.len() <= MAX_ID_BYTES));
            assert!(envelope.key.is_none(), "decode never takes a key");
            assert!(!protocol::json_depth_exceeds(text, 32));
        }
        Err(Rejection::Error { code, message, .. }) => {
            assert!(["bad_json", "too_deep", "bad_envelope"].contains(&code.as_str()));
            assert!(message.len() < 400, "{message}");
        }
        Err(other) => panic!("decode never closes: {other:?}"),
    }
    // With a table: a key taken is a valid one, on a route.
    if let Ok(envelope) = protocol::decode_keyed(text, 32) {
        if let Some(key) = &envelope.key {
            assert!(protocol::is_valid_key(key));
            assert!(!protocol::is_reserved_type(&envelope.kind));
        }
    }
});
