//! The names a configuration gives things: tenants and handlers (lowercase,
//! they appear in URLs and paths) and fleet names (NATS subject tokens).

/// A name for tenants and handlers: 1-64 of `a-z 0-9 _ -`.
pub fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A node name or subject prefix of a fleet: 1-64 of `A-Z a-z 0-9 _ -`
/// (one NATS subject token).
pub(crate) fn is_name_token(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_lowercase_words() {
        for good in ["a", "shop", "chat-2", "my_tenant", &"x".repeat(64)] {
            assert!(is_name(good), "{good}");
        }
        for bad in ["", "Shop", "a.b", "a b", "a/b", &"x".repeat(65)] {
            assert!(!is_name(bad), "{bad}");
        }
        assert!(is_name_token("Node-1_A"));
        for bad in ["", "a.b", "a*", "a>", &"x".repeat(65)] {
            assert!(!is_name_token(bad), "{bad}");
        }
    }
}
