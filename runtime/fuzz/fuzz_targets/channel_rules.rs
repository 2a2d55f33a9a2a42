//! Channel patterns come from config and channel names from clients; the
//! matcher must never panic, and a pattern without placeholders matches
//! exactly itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::server::authz::{ChannelPattern, Principal, pattern_matches};

fuzz_target!(|input: (&str, &str, &str)| {
    let (pattern, channel, subject) = input;
    let claims = serde_json::json!({"teams": ["red", subject], "org": subject});
    let principal = Principal {
                subject: subject.into(),
        claims: claims.as_object().cloned().unwrap_or_default().into(),
        scopes: Default::default(),
        expires_at: 0,
    };
    if let Ok(p) = ChannelPattern::parse(pattern) {
        let _ = pattern_matches(&p, channel, &principal);
        if !pattern.contains('{') {
            assert!(pattern_matches(&p, pattern, &principal));
            assert_eq!(pattern_matches(&p, channel, &principal), channel == pattern);
        }
    }
});
