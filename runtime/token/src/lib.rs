//! Dev tokens: a JWT signed with a tenant's configured HMAC key, carrying
//! what the tenant's `[tenants.<id>.auth]` requires (`iss`, `aud`, `exp`)
//! and the scopes in its scopes claim. What `sluice token`, `sluice dev`
//! and the load generator (`sluice bench --config`) hand out.
//!
//! Only a shared secret (HS256, HS384, HS512) can sign: a tenant verified
//! by public keys (`public_key_file`, a JWKS) gets its tokens from its
//! identity provider, and [`Minter::for_tenant`] says so. Only the signing
//! key is read: nothing is fetched, no other key needs to be usable.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};
use sluice_config::{Config, JwtAlgorithm, KeyConfig, TenantConfig};

/// Shortest HMAC secret a key may have, in bytes (the server refuses a
/// shorter one too).
pub const MIN_SECRET_BYTES: usize = 32;

/// Why no token could be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The configuration has no such tenant.
    #[error("no tenant {0:?} in the config")]
    NoTenant(String),
    /// None of the tenant's keys is a shared secret.
    #[error("this tenant has no HMAC secret to sign with (public keys cannot sign)")]
    NoSecret,
    /// The signing key's secret could not be read (`at` names the key:
    /// `tenants.<id>.auth.keys[<i>]`).
    #[error("{at}: {problem}")]
    Secret {
        /// The key in the configuration.
        at: String,
        /// What is wrong with its secret.
        problem: SecretProblem,
    },
    /// jsonwebtoken refused the key or the claims.
    #[error(transparent)]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// What is wrong with an HMAC key's secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretProblem {
    /// `secret_env` names a variable that is not set.
    #[error("environment variable ${0} is not set")]
    Unset(String),
    /// The secret is shorter than [`MIN_SECRET_BYTES`] (`from`: `$VAR` or
    /// the file).
    #[error("the secret in {from} is shorter than {MIN_SECRET_BYTES} bytes")]
    Short {
        /// Where it was read from.
        from: String,
    },
    /// `secret_file` could not be read.
    #[error("cannot read {}: {error}", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

/// The HMAC secret of `key`, read as the server reads it: `secret_env` as
/// it is, `secret_file` trimmed (relative to the config file); at least
/// [`MIN_SECRET_BYTES`]. `None` for a key that is not a shared secret.
pub fn hmac_secret(config: &Config, key: &KeyConfig) -> Option<Result<Vec<u8>, SecretProblem>> {
    if key.is_public() || !key.algorithm().is_some_and(JwtAlgorithm::is_hmac) {
        return None;
    }
    let read = |secret: Vec<u8>, from: String| {
        if secret.len() >= MIN_SECRET_BYTES {
            Ok(secret)
        } else {
            Err(SecretProblem::Short { from })
        }
    };
    if let Some(secret) = &key.secret {
        return Some(read(secret.as_bytes().to_vec(), "the API's record".into()));
    }
    if let Some(var) = &key.secret_env {
        return Some(match std::env::var(var) {
            Ok(s) => read(s.into_bytes(), format!("${var}")),
            Err(_) => Err(SecretProblem::Unset(var.clone())),
        });
    }
    let path = config.path(key.secret_file.as_deref()?);
    Some(match std::fs::read(&path) {
        Ok(bytes) => read(
            String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec(),
            path.display().to_string(),
        ),
        Err(error) => Err(SecretProblem::Unreadable { path, error }),
    })
}

/// Mints tokens for one tenant with its first HMAC key.
pub struct Minter {
    issuer: String,
    audience: String,
    scopes_claim: String,
    algorithm: Algorithm,
    kid: Option<String>,
    key: EncodingKey,
}

impl Minter {
    /// A minter for `tenant` of `config`, with the first of its keys that
    /// is a shared secret.
    pub fn for_tenant(config: &Config, tenant: &str) -> Result<Self, MintError> {
        let tc = config
            .tenants
            .get(tenant)
            .ok_or_else(|| MintError::NoTenant(tenant.to_owned()))?;
        Self::for_tenant_config(config, tenant, tc)
    }

    /// A minter for the tenant `tc` (named `tenant` in errors), from the
    /// config file or created through the management API (whose HMAC
    /// secret is inline in its record), with the first of its keys that is
    /// a shared secret; file paths resolve against `config`.
    pub fn for_tenant_config(
        config: &Config,
        tenant: &str,
        tc: &TenantConfig,
    ) -> Result<Self, MintError> {
        let (i, key, secret) = tc
            .auth
            .keys
            .iter()
            .enumerate()
            .find_map(|(i, k)| hmac_secret(config, k).map(|s| (i, k, s)))
            .ok_or(MintError::NoSecret)?;
        let secret = secret.map_err(|problem| MintError::Secret {
            at: format!("tenants.{tenant}.auth.keys[{i}]"),
            problem,
        })?;
        Ok(Self {
            issuer: tc.auth.issuer.clone(),
            audience: tc.auth.audience.clone(),
            scopes_claim: tc.scopes_claim.clone(),
            algorithm: match key.algorithm() {
                Some(JwtAlgorithm::Hs384) => Algorithm::HS384,
                Some(JwtAlgorithm::Hs512) => Algorithm::HS512,
                _ => Algorithm::HS256,
            },
            kid: key.kid.clone(),
            key: EncodingKey::from_secret(&secret)?,
        })
    }

    /// A minter for a tenant created through the management API (or any
    /// issuer): its HMAC `secret` (as the server keeps it: the text the API
    /// generated, at least [`MIN_SECRET_BYTES`]), the key's `kid` and
    /// `algorithm` (HS256, HS384, HS512), and what the tenant's `auth`
    /// requires: `issuer`, `audience`, and its `scopes_claim`.
    pub fn from_secret(
        secret: &[u8],
        kid: Option<&str>,
        algorithm: JwtAlgorithm,
        issuer: &str,
        audience: &str,
        scopes_claim: &str,
    ) -> Result<Self, MintError> {
        let algorithm = match algorithm {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Hs384 => Algorithm::HS384,
            JwtAlgorithm::Hs512 => Algorithm::HS512,
            _ => return Err(MintError::NoSecret),
        };
        if secret.len() < MIN_SECRET_BYTES {
            return Err(MintError::Secret {
                at: "the key".into(),
                problem: SecretProblem::Short {
                    from: "the secret given".into(),
                },
            });
        }
        Ok(Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            scopes_claim: scopes_claim.to_owned(),
            algorithm,
            kid: kid.map(str::to_owned),
            key: EncodingKey::from_secret(secret)?,
        })
    }

    /// A token for `subject` with `scopes`, valid for `ttl_secs` from now,
    /// with `extra` claims (which the required ones override).
    pub fn mint(
        &self,
        subject: &str,
        scopes: &[String],
        ttl_secs: u64,
        extra: Map<String, Value>,
    ) -> Result<String, MintError> {
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims = extra;
        claims.insert("sub".into(), subject.into());
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), self.audience.clone().into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + ttl_secs).into());
        claims.insert(self.scopes_claim.clone(), scopes.join(" ").into());
        let mut header = Header::new(self.algorithm);
        header.kid = self.kid.clone();
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn config(dir: &Path, keys: &str) -> Config {
        let text = format!(
            "[server]\ntls_cert = \"c\"\ntls_key = \"k\"\n\
             [tenants.t]\nscopes_claim = \"scp\"\n\
             [tenants.t.auth]\nissuer = \"iss\"\naudience = \"aud\"\n{keys}"
        );
        Config::parse(&text, dir).unwrap()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-token-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_minted_token_carries_what_the_tenant_requires_and_verifies_with_its_secret() {
        let dir = temp_dir("mint");
        std::fs::write(dir.join("secret.key"), format!("{SECRET}\n")).unwrap();
        let c = config(
            &dir,
            "[[tenants.t.auth.keys]]\nalgorithm = \"RS256\"\npublic_key_file = \"missing.pem\"\n\
             [[tenants.t.auth.keys]]\nkid = \"k2\"\nalgorithm = \"HS384\"\nsecret_file = \"secret.key\"\n",
        );
        let minter = Minter::for_tenant(&c, "t").unwrap();
        let extra = Map::from_iter([
            ("name".to_owned(), Value::from("Alice")),
            ("sub".to_owned(), Value::from("mallory")),
        ]);
        let token = minter
            .mint("alice", &["a".into(), "b".into()], 60, extra)
            .unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(
            (header.alg, header.kid.as_deref()),
            (Algorithm::HS384, Some("k2"))
        );
        let mut v = Validation::new(Algorithm::HS384);
        v.set_issuer(&["iss"]);
        v.set_audience(&["aud"]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(
            &token,
            &DecodingKey::from_secret(SECRET.as_bytes()).unwrap(),
            &v,
        )
        .unwrap()
        .claims;
        assert_eq!(
            claims["sub"], "alice",
            "the required claims win over extra ones"
        );
        assert_eq!(claims["scp"], "a b");
        assert_eq!(claims["name"], "Alice");
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(exp - iat, 60);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_minter_from_a_generated_secret_signs_what_the_server_verifies_with_it() {
        let secret = "Zm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyZm9v";
        let minter = Minter::from_secret(
            secret.as_bytes(),
            Some("k1"),
            JwtAlgorithm::Hs256,
            "iss",
            "aud",
            "scope",
        )
        .unwrap();
        let token = minter
            .mint("bob", &["chat:write".into()], 60, Map::new())
            .unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(
            (header.alg, header.kid.as_deref()),
            (Algorithm::HS256, Some("k1"))
        );
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&["iss"]);
        v.set_audience(&["aud"]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(
            &token,
            &DecodingKey::from_secret(secret.as_bytes()).unwrap(),
            &v,
        )
        .unwrap()
        .claims;
        assert_eq!(
            (claims["sub"].as_str(), claims["scope"].as_str()),
            (Some("bob"), Some("chat:write"))
        );
        let short = Minter::from_secret(b"short", None, JwtAlgorithm::Hs256, "i", "a", "scope");
        assert!(
            short
                .err()
                .unwrap()
                .to_string()
                .contains("shorter than 32 bytes")
        );
        let public = Minter::from_secret(
            secret.as_bytes(),
            None,
            JwtAlgorithm::Es256,
            "i",
            "a",
            "scope",
        );
        assert!(matches!(public, Err(MintError::NoSecret)));
    }

    #[test]
    fn a_tenant_without_a_usable_secret_gets_no_token_and_is_told_why() {
        let dir = temp_dir("refused");
        std::fs::write(dir.join("short.key"), "short\n").unwrap();
        let public = config(
            &dir,
            "[[tenants.t.auth.keys]]\nalgorithm = \"ES256\"\npublic_key_file = \"k.pem\"\n",
        );
        let e = Minter::for_tenant(&public, "t").err().unwrap();
        assert_eq!(
            e.to_string(),
            "this tenant has no HMAC secret to sign with (public keys cannot sign)"
        );
        let e = Minter::for_tenant(&public, "nobody").err().unwrap();
        assert_eq!(e.to_string(), "no tenant \"nobody\" in the config");
        let short = config(
            &dir,
            "[[tenants.t.auth.keys]]\nalgorithm = \"HS256\"\nsecret_file = \"short.key\"\n",
        );
        let e = Minter::for_tenant(&short, "t").err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "tenants.t.auth.keys[0]: the secret in {} is shorter than 32 bytes",
                dir.join("short.key").display()
            )
        );
        let missing = config(
            &dir,
            "[[tenants.t.auth.keys]]\nalgorithm = \"HS256\"\nsecret_file = \"none.key\"\n",
        );
        let e = Minter::for_tenant(&missing, "t").err().unwrap().to_string();
        assert!(
            e.starts_with(&format!(
                "tenants.t.auth.keys[0]: cannot read {}: ",
                dir.join("none.key").display()
            )),
            "{e}"
        );
        let unset = config(
            &dir,
            "[[tenants.t.auth.keys]]\nalgorithm = \"HS512\"\nsecret_env = \"SLUICE_TOKEN_TEST_UNSET\"\n",
        );
        let e = Minter::for_tenant(&unset, "t").err().unwrap();
        assert_eq!(
            e.to_string(),
            "tenants.t.auth.keys[0]: environment variable $SLUICE_TOKEN_TEST_UNSET is not set"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
