//! Secrets that belong on a server: private keys, JWTs, signing keys kept
//! under a telling name, well-known API key shapes, and keys that verify a
//! token the app also carries. A secret is never printed whole: evidence
//! shows its first characters and its length.

use std::sync::LazyLock;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use regex::Regex;

use crate::report::Severity;

/// A secret found in a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    /// Finding id, e.g. `secret.private_key`.
    pub id: &'static str,
    /// How bad.
    pub severity: Severity,
    /// MASVS control.
    pub masvs: &'static str,
    /// What it is, with the value redacted.
    pub title: String,
    /// Byte index in the text.
    pub start: usize,
    /// The value (kept in memory to verify tokens; never printed whole).
    pub value: String,
}

/// `abcd… (40 chars)`.
pub fn redact(value: &str) -> String {
    let head: String = value.chars().take(4).collect();
    format!("{head}… ({} chars)", value.chars().count())
}

struct Shape {
    id: &'static str,
    /// A literal every match contains: a cheap test before the pattern.
    anchor: &'static str,
    what: &'static str,
    severity: Severity,
    pattern: &'static str,
}

/// Well-known shapes of credentials.
const SHAPES: &[Shape] = &[
    Shape {
        id: "secret.private_key",
        anchor: "PRIVATE KEY-----",
        what: "a PEM private key",
        severity: Severity::High,
        // The header alone is what every PEM parser carries: key material must follow.
        pattern: r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----\s*[0-9A-Za-z+/=]{40,}",
    },
    Shape {
        id: "secret.aws_access_key",
        anchor: "IA",
        what: "an AWS access key id",
        severity: Severity::High,
        pattern: r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    },
    Shape {
        id: "secret.stripe_secret_key",
        anchor: "_live_",
        what: "a Stripe secret key",
        severity: Severity::High,
        pattern: r"\b(?:sk|rk)_live_[0-9A-Za-z]{20,}",
    },
    Shape {
        id: "secret.slack_token",
        anchor: "xox",
        what: "a Slack token",
        severity: Severity::High,
        pattern: r"\bxox[abposr]-[0-9A-Za-z-]{10,}",
    },
    Shape {
        id: "secret.slack_webhook",
        anchor: "hooks.slack.com",
        what: "a Slack webhook URL",
        severity: Severity::High,
        pattern: r"https://hooks\.slack\.com/services/T[0-9A-Za-z_]+/B[0-9A-Za-z_]+/[0-9A-Za-z]+",
    },
    Shape {
        id: "secret.github_token",
        anchor: "gh",
        what: "a GitHub token",
        severity: Severity::High,
        pattern: r"\bgh[pousr]_[0-9A-Za-z]{36}\b",
    },
    Shape {
        id: "secret.sendgrid_key",
        anchor: "SG.",
        what: "a SendGrid API key",
        severity: Severity::High,
        pattern: r"\bSG\.[0-9A-Za-z_-]{22}\.[0-9A-Za-z_-]{43}\b",
    },
    Shape {
        id: "secret.google_api_key",
        anchor: "AIza",
        what: "a Google API key (expected in apps using Firebase or Maps: restrict it to the app's signature and APIs)",
        severity: Severity::Low,
        pattern: r"\bAIza[0-9A-Za-z_-]{35}\b",
    },
];

#[expect(
    clippy::expect_used,
    reason = "constant patterns, covered by the tests below"
)]
static SHAPE_RES: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    SHAPES
        .iter()
        .map(|s| Regex::new(s.pattern).expect("a secret shape"))
        .collect()
});

#[expect(
    clippy::expect_used,
    reason = "constant patterns, covered by the tests below"
)]
static JWT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\beyJ[0-9A-Za-z_-]{8,}\.eyJ[0-9A-Za-z_-]{8,}\.[0-9A-Za-z_-]{16,}")
        .expect("the JWT shape")
});

#[expect(
    clippy::expect_used,
    reason = "constant patterns, covered by the tests below"
)]
static SECRET_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(secret|signing_?key|hmac_?key|jwt_?key|private_?key|api_?key|access_?key|passw(?:or)?d)")
        .expect("the secret name")
});

#[expect(
    clippy::expect_used,
    reason = "constant patterns, covered by the tests below"
)]
static ASSIGNMENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)["']?([A-Za-z0-9_.-]*(?:secret|signing_?key|hmac_?key|jwt_?key|private_?key|api_?key|access_?key|passw(?:or)?d)[A-Za-z0-9_]*)["']?\s*[:=]\s*["']([^"'\s]{12,200})["']"#,
    )
    .expect("the assignment shape")
});

/// Secrets in a text: known shapes, JWTs, and `name = "value"` or
/// `"name": "value"` assignments whose name says secret.
pub fn in_text(text: &str) -> Vec<Secret> {
    let mut out = Vec::new();
    for (shape, re) in SHAPES.iter().zip(SHAPE_RES.iter()) {
        if !text.contains(shape.anchor) {
            continue;
        }
        for m in re.find_iter(text) {
            out.push(Secret {
                id: shape.id,
                severity: shape.severity,
                masvs: "MASVS-CRYPTO-2",
                title: format!("{} in the app: {}", shape.what, redact(m.as_str())),
                start: m.start(),
                value: m.as_str().to_owned(),
            });
        }
    }
    if text.contains("eyJ") {
        for m in JWT.find_iter(text) {
            if let Some(s) = jwt(m.as_str(), m.start()) {
                out.push(s);
            }
        }
    }
    if SECRET_NAME.is_match(text) {
        for c in ASSIGNMENT.captures_iter(text) {
            if let (Some(name), Some(value)) = (c.get(1), c.get(2))
                && let Some(mut s) = named(name.as_str(), value.as_str())
            {
                s.start = name.start();
                out.push(s);
            }
        }
    }
    out
}

/// A JWT: its header names the algorithm; the claims are described, the
/// signature is not shown.
fn jwt(token: &str, start: usize) -> Option<Secret> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let header: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts.next()?).ok()?).ok()?;
    let claims: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts.next()?).ok()?).ok()?;
    let alg = header.get("alg")?.as_str()?.to_owned();
    let keys: Vec<&str> = claims
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    Some(Secret {
        id: "secret.jwt",
        severity: Severity::High,
        masvs: "MASVS-AUTH-1",
        title: format!(
            "a JWT ({alg}; claims {}) is built into the app: every copy of the app holds the same credential",
            keys.join(", ")
        ),
        start,
        value: token.to_owned(),
    })
}

/// A value kept under a name that says it is secret (a static field, a
/// plist or JSON key, a string resource).
pub fn named(name: &str, value: &str) -> Option<Secret> {
    if !SECRET_NAME.is_match(name) || !looks_secret(value) {
        return None;
    }
    let lower = name.to_ascii_lowercase();
    let signing = [
        "jwt",
        "signing",
        "hmac",
        "hs256",
        "token_secret",
        "tokensecret",
    ]
    .iter()
    .any(|k| lower.contains(k));
    let (id, severity, masvs, what) = if signing {
        (
            "secret.signing_key",
            Severity::High,
            "MASVS-AUTH-1",
            "a token signing key",
        )
    } else if lower.contains("api") && lower.contains("key") {
        (
            "secret.api_key",
            Severity::Medium,
            "MASVS-CRYPTO-2",
            "an API key",
        )
    } else {
        ("secret.named", Severity::High, "MASVS-CRYPTO-2", "a secret")
    };
    Some(Secret {
        id,
        severity,
        masvs,
        title: format!("{what} kept as `{name}` = {}", redact(value)),
        start: 0,
        value: value.to_owned(),
    })
}

/// Whether a value could be a key rather than a label: long enough, no
/// spaces, several distinct characters, not a placeholder or a path.
fn looks_secret(value: &str) -> bool {
    let distinct = {
        let mut c: Vec<char> = value.chars().collect();
        c.sort_unstable();
        c.dedup();
        c.len()
    };
    let classes = [
        value.bytes().any(|b| b.is_ascii_lowercase()),
        value.bytes().any(|b| b.is_ascii_uppercase()),
        value.bytes().any(|b| b.is_ascii_digit()),
    ]
    .iter()
    .filter(|c| **c)
    .count();
    // `java.net.socks.password`, `client_secret`: names, not values.
    let identifier = value
        .bytes()
        .all(|b| b.is_ascii_alphabetic() || b == b'.' || b == b'_' || b == b'-');
    value.len() >= 12
        && value.len() <= 4096
        && classes >= 2
        && !identifier
        && !value.contains(char::is_whitespace)
        && distinct >= 8
        && !value.starts_with(['@', '$', '{', '%', '<', '/'])
        && !value.contains("://")
        && !["change", "example", "your", "placeholder", "xxxx"]
            .iter()
            .any(|p| value.to_ascii_lowercase().contains(p))
}

/// Whether `key` is the HMAC key that signed `token` (HS256/384/512).
pub fn signs(token: &str, key: &str) -> bool {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let Some((signed, sig)) = token.rsplit_once('.') else {
        return false;
    };
    let Ok(sig) = b64.decode(sig) else {
        return false;
    };
    let Some(header) = token
        .split('.')
        .next()
        .and_then(|h| b64.decode(h).ok())
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
    else {
        return false;
    };
    let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("");
    let check = |mac: Result<Vec<u8>, ()>| mac.is_ok_and(|m| m == sig);
    match alg {
        "HS256" => check(
            Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes())
                .map(|mut m| {
                    m.update(signed.as_bytes());
                    m.finalize().into_bytes().to_vec()
                })
                .map_err(|_| ()),
        ),
        "HS384" => check(
            Hmac::<sha2::Sha384>::new_from_slice(key.as_bytes())
                .map(|mut m| {
                    m.update(signed.as_bytes());
                    m.finalize().into_bytes().to_vec()
                })
                .map_err(|_| ()),
        ),
        "HS512" => check(
            Hmac::<sha2::Sha512>::new_from_slice(key.as_bytes())
                .map(|mut m| {
                    m.update(signed.as_bytes());
                    m.finalize().into_bytes().to_vec()
                })
                .map_err(|_| ()),
        ),
        _ => false,
    }
}

/// Whether the token's header says HMAC.
pub fn is_hmac_token(token: &str) -> bool {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    token
        .split('.')
        .next()
        .and_then(|h| b64.decode(h).ok())
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .and_then(|h| {
            h.get("alg")
                .and_then(|a| a.as_str())
                .map(|a| a.starts_with("HS"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs256(key: &str, claims: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signed = format!(
            "{}.{}",
            b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            b64.encode(claims)
        );
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(signed.as_bytes());
        format!("{signed}.{}", b64.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn shapes_tokens_and_named_keys_are_found_and_redacted() {
        let token = hs256("k3y-Th4t-S1gns-Ev3ry-T0ken", r#"{"sub":"app","iss":"x"}"#);
        let text = format!(
            "const jwtSecret = \"k3y-Th4t-S1gns-Ev3ry-T0ken\";\nlet t = \"{token}\";\n\
             -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\nkey: AKIAABCDEFGHIJKLMNOP\n"
        );
        let found = in_text(&text);
        let ids: Vec<&str> = found.iter().map(|s| s.id).collect();
        for id in [
            "secret.private_key",
            "secret.aws_access_key",
            "secret.jwt",
            "secret.signing_key",
        ] {
            assert!(ids.contains(&id), "{id} in {ids:?}");
        }
        assert!(found.iter().all(|s| !s.title.contains("Th4t-S1gns")));
        assert!(signs(&token, "k3y-Th4t-S1gns-Ev3ry-T0ken"));
        // A PEM parser's header constant is not a key.
        assert!(in_text("\"-----BEGIN PRIVATE KEY-----\"").is_empty());
        assert!(!signs(&token, "another-key-of-some-length"));
        assert!(is_hmac_token(&token));
        // Labels and placeholders are not secrets.
        assert_eq!(named("api_key_label", "Enter your API key"), None);
        assert_eq!(named("password_hint", "@string/x"), None);
        assert_eq!(named("colorPrimary", "a8Fz9Qw2Lk3Jx7"), None);
        assert_eq!(
            named("JAVA_NET_SOCKS_PASSWORD", "java.net.socks.password"),
            None
        );
        assert!(named("JWT_SECRET", "k3y-Th4t-S1gns-Ev3ry-T0ken").is_some());
    }
}
