//! Tokens derived from `--token` by re-encoding its header or claims: the
//! probe has no key, so every derived token either carries no signature
//! (`alg: none`) or the original signature over changed content. A server
//! that verifies signatures refuses each; one that decodes without
//! verifying (or trusts the header's `alg`) accepts them.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value};

/// A JWT split into its decoded parts.
#[derive(Clone, Debug)]
pub struct Jwt {
    header: Map<String, Value>,
    claims: Map<String, Value>,
    header_b64: String,
    claims_b64: String,
    signature: Vec<u8>,
}

/// One derived token and how it was made.
#[derive(Clone, Debug)]
pub struct Derived {
    /// The token.
    pub token: String,
    /// What was changed, for the evidence (never the token itself).
    pub how: String,
}

impl Jwt {
    /// Decode a compact JWS; `None` if `token` is not one with JSON header
    /// and claims.
    pub fn parse(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header = serde_json::from_slice::<Value>(&B64.decode(h).ok()?).ok()?;
        let claims = serde_json::from_slice::<Value>(&B64.decode(c).ok()?).ok()?;
        Some(Self {
            header: header.as_object()?.clone(),
            claims: claims.as_object()?.clone(),
            header_b64: h.to_owned(),
            claims_b64: c.to_owned(),
            signature: B64.decode(s).ok()?,
        })
    }

    /// The header's `alg`.
    pub fn alg(&self) -> &str {
        self.header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or("?")
    }

    fn encode(map: &Map<String, Value>) -> String {
        B64.encode(Value::Object(map.clone()).to_string())
    }

    /// The header with `alg: none`, the claims as they were, no signature.
    pub fn alg_none(&self) -> Derived {
        let mut header = self.header.clone();
        header.insert("alg".into(), Value::from("none"));
        Derived {
            token: format!("{}.{}.", Self::encode(&header), self.claims_b64),
            how: format!(
                "header {} (was alg {}), claims unchanged, no signature",
                Value::Object(header.clone()),
                self.alg()
            ),
        }
    }

    /// Header and claims as they were, one bit of the signature flipped.
    pub fn tampered_signature(&self) -> Derived {
        let mut sig = self.signature.clone();
        match sig.first_mut() {
            Some(b) => *b ^= 0x01,
            None => sig.push(0x01),
        }
        Derived {
            token: format!(
                "{}.{}.{}",
                self.header_b64,
                self.claims_b64,
                B64.encode(&sig)
            ),
            how: "header and claims unchanged, the first bit of the signature's first byte flipped"
                .into(),
        }
    }

    /// `exp` an hour in the past (`iat` and `nbf` before it), the original
    /// header and signature.
    pub fn expired(&self, now: u64) -> Derived {
        let mut claims = self.claims.clone();
        let exp = now.saturating_sub(3600);
        claims.insert("exp".into(), Value::from(exp));
        for k in ["iat", "nbf"] {
            if claims.contains_key(k) {
                claims.insert(k.into(), Value::from(exp.saturating_sub(3600)));
            }
        }
        Derived {
            token: format!(
                "{}.{}.{}",
                self.header_b64,
                Self::encode(&claims),
                B64.encode(&self.signature)
            ),
            how: format!(
                "claims re-encoded with exp {exp} (an hour ago); header and signature as in --token \
                 (the probe has no key, so the signature no longer matches either)"
            ),
        }
    }

    /// `aud` replaced, the original header and signature.
    pub fn wrong_audience(&self) -> Derived {
        let mut claims = self.claims.clone();
        let was = claims
            .get("aud")
            .map_or_else(|| "none".to_owned(), Value::to_string);
        claims.insert("aud".into(), Value::from("sluice-probe.invalid"));
        Derived {
            token: format!(
                "{}.{}.{}",
                self.header_b64,
                Self::encode(&claims),
                B64.encode(&self.signature)
            ),
            how: format!(
                "claims re-encoded with aud \"sluice-probe.invalid\" (was {was}); header and signature \
                 as in --token (the probe has no key, so the signature no longer matches either)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> String {
        let h = B64.encode(r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#);
        let c = B64.encode(r#"{"sub":"a","aud":"sluice","exp":4000000000,"iat":1}"#);
        format!("{h}.{c}.{}", B64.encode([9u8; 32]))
    }

    fn parts(token: &str) -> (Value, Value, Vec<u8>) {
        let mut p = token.split('.');
        let h =
            serde_json::from_slice(&B64.decode(p.next().unwrap_or_default()).unwrap_or_default());
        let c =
            serde_json::from_slice(&B64.decode(p.next().unwrap_or_default()).unwrap_or_default());
        let s = B64.decode(p.next().unwrap_or_default()).unwrap_or_default();
        (h.unwrap_or_default(), c.unwrap_or_default(), s)
    }

    #[test]
    fn derived_tokens_change_exactly_what_they_claim() {
        let jwt = Jwt::parse(&token()).unwrap_or_else(|| panic!("parses"));
        assert_eq!(jwt.alg(), "HS256");

        let none = jwt.alg_none();
        let (h, c, s) = parts(&none.token);
        assert_eq!(h["alg"], "none");
        assert_eq!(h["kid"], "k1");
        assert_eq!(c["sub"], "a");
        assert!(s.is_empty() && none.token.ends_with('.'));

        let (h, c, s) = parts(&jwt.tampered_signature().token);
        assert_eq!(
            (h["alg"].clone(), c["exp"].clone()),
            ("HS256".into(), 4_000_000_000u64.into())
        );
        assert_eq!(s.len(), 32);
        assert_ne!(s, vec![9u8; 32]);

        let (_, c, s) = parts(&jwt.expired(1_000_000).token);
        assert_eq!(c["exp"], 1_000_000 - 3600);
        assert_eq!(c["iat"], 1_000_000 - 7200);
        assert_eq!(s, vec![9u8; 32]);

        let (_, c, _) = parts(&jwt.wrong_audience().token);
        assert_eq!(c["aud"], "sluice-probe.invalid");
        assert_eq!(c["sub"], "a");

        assert!(Jwt::parse("not-a-jwt").is_none());
        assert!(Jwt::parse("a.b.c.d").is_none());
    }
}
