//! The fleet's KV buckets: opening one (created with this node's settings
//! when it is missing), and the key encoding every bucket uses.

use std::fmt::Write as _;

use async_nats::jetstream;

use crate::error::FleetError;

/// A KV bucket of the fleet: the existing one, or a new one made with
/// `config` (its settings apply only when this node creates it).
pub async fn open_bucket(
    js: &jetstream::Context,
    config: jetstream::kv::Config,
) -> Result<jetstream::kv::Store, FleetError> {
    match js.get_key_value(&config.bucket).await {
        Ok(s) => Ok(s),
        Err(_) => {
            let bucket = config.bucket.clone();
            js.create_key_value(config)
                .await
                .map_err(|e| FleetError::nats(format!("cannot create the bucket {bucket}"), e))
        }
    }
}

/// One part of a KV key: `A-Z a-z 0-9 _ -` as is, every other byte `=XX`.
pub fn kv_token(s: &str) -> String {
    if s.is_empty() {
        return "=".to_owned();
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') {
            out.push(b as char);
        } else {
            let _ = write!(out, "={b:02X}");
        }
    }
    out
}

pub fn kv_untoken(s: &str) -> Option<String> {
    if s == "=" {
        return Some(String::new());
    }
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_tokens_are_one_part_and_round_trip() {
        for s in ["", "a", "room:1", "a.b", "=", "=41", "é", "x y", "*", ">"] {
            let t = kv_token(s);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=')),
                "{s:?} -> {t:?}"
            );
            assert_eq!(kv_untoken(&t).as_deref(), Some(s));
        }
        assert_ne!(kv_token("a.b"), kv_token("a") + "." + &kv_token("b"));
    }
}
