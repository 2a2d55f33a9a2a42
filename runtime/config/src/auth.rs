//! `[tenants.<id>.auth]`: how a tenant's tokens are verified: issuer,
//! audience, keys (each pinned to one algorithm), a JWKS file or URL.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::jwt::JwtAlgorithm;

/// How often a JWKS URL is fetched again.
pub const DEFAULT_JWKS_REFRESH_SECS: u64 = 300;
/// Clock skew tolerated on `exp` and `nbf`.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

/// Token verification for one tenant.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Tolerated clock skew, seconds ([`DEFAULT_LEEWAY_SECS`]).
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Verification keys.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// A JWKS file (public keys with `kid` and `alg`).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (`https://` only), fetched at start and refreshed.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Extra CA certificates (PEM) to trust for `jwks_url`, besides the
    /// public web roots.
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    /// Seconds between refreshes of `jwks_url` ([`DEFAULT_JWKS_REFRESH_SECS`]).
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_secs: u64,
}

fn default_jwks_refresh() -> u64 {
    DEFAULT_JWKS_REFRESH_SECS
}

fn default_leeway() -> u64 {
    DEFAULT_LEEWAY_SECS
}

/// One verification key. Exactly one of `secret_env`, `secret_file`,
/// `public_key_file`, `public_key_pem` (or, for tenants created through the
/// management API only, `secret`) must be set; the algorithm is pinned to
/// the key.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The `kid` tokens name this key by; a key without one matches tokens
    /// without a `kid`.
    #[serde(default)]
    pub kid: Option<String>,
    /// `HS256`, `HS384`, `HS512`, `RS256`, `RS384`, `RS512`, `PS256`,
    /// `PS384`, `PS512`, `ES256`, `ES384` or `EdDSA`.
    pub algorithm: String,
    /// Environment variable holding an HMAC secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding an HMAC secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// PEM public key (RSA, EC or Ed25519).
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// A PEM public key inline (RSA, EC or Ed25519).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
    /// An HMAC secret inline: only in a tenant created through the
    /// management API, which generates it (refused in the config file,
    /// where secrets go by reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl KeyConfig {
    /// The algorithm, typed; `None` when the configured name is not one
    /// Sluice supports (reported by `Config::parse`).
    pub fn algorithm(&self) -> Option<JwtAlgorithm> {
        self.algorithm.parse().ok()
    }

    /// Whether the key is a public key (from a file or inline).
    pub fn is_public(&self) -> bool {
        self.public_key_file.is_some() || self.public_key_pem.is_some()
    }

    /// How many sources the key names.
    pub fn sources(&self) -> usize {
        [
            self.secret_env.is_some(),
            self.secret_file.is_some(),
            self.public_key_file.is_some(),
            self.public_key_pem.is_some(),
            self.secret.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count()
    }
}

impl AuthConfig {
    /// What is wrong with the section of the tenant at `at`
    /// (`tenants.<id>`).
    pub(crate) fn problems(&self, at: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.keys.is_empty() && self.jwks_file.is_none() && self.jwks_url.is_none() {
            problems.push(format!(
                "{at}.auth: no keys, no jwks_file and no jwks_url: no token could ever verify"
            ));
        }
        if let Some(url) = &self.jwks_url
            && !url.starts_with("https://")
        {
            problems.push(format!(
                "{at}.auth.jwks_url: {url:?} must be an https:// URL"
            ));
        }
        for (i, k) in self.keys.iter().enumerate() {
            if k.sources() != 1 {
                problems.push(format!(
                    "{at}.auth.keys[{i}]: set exactly one of secret_env, secret_file, public_key_file, public_key_pem"
                ));
            }
            if k.algorithm().is_none() {
                problems.push(format!(
                    "{at}.auth.keys[{i}]: unknown algorithm {:?}",
                    k.algorithm
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(text: &str) -> AuthConfig {
        toml::from_str(&format!("issuer = \"i\"\naudience = \"a\"\n{text}")).unwrap()
    }

    #[test]
    fn the_defaults_tolerate_30_s_of_skew_and_refresh_every_5_min() {
        let a = auth("keys = [{ algorithm = \"HS256\", secret_env = \"S\" }]");
        assert_eq!(a.leeway_secs, DEFAULT_LEEWAY_SECS);
        assert_eq!(a.jwks_refresh_secs, DEFAULT_JWKS_REFRESH_SECS);
        assert_eq!(a.keys[0].algorithm(), Some(JwtAlgorithm::Hs256));
        assert_eq!(a.keys[0].kid, None);
        assert!(a.problems("tenants.t").is_empty());
        assert!(
            auth("jwks_file = \"keys.json\"")
                .problems("tenants.t")
                .is_empty()
        );
        assert!(
            auth("jwks_url = \"https://id.example.com/jwks\"")
                .problems("tenants.t")
                .is_empty()
        );
        assert!(
            toml::from_str::<AuthConfig>("issuer = \"i\"").is_err(),
            "audience is required"
        );
    }

    #[test]
    fn a_tenant_whose_tokens_could_never_verify_is_refused() {
        assert_eq!(
            auth("").problems("tenants.t"),
            ["tenants.t.auth: no keys, no jwks_file and no jwks_url: no token could ever verify"]
        );
    }

    #[test]
    fn a_jwks_url_is_https() {
        assert_eq!(
            auth("jwks_url = \"http://id.example.com/jwks\"").problems("tenants.t"),
            ["tenants.t.auth.jwks_url: \"http://id.example.com/jwks\" must be an https:// URL"]
        );
    }

    #[test]
    fn each_key_has_one_source_and_a_known_algorithm() {
        let a = auth(
            "keys = [\n\
             { algorithm = \"HS256\" },\n\
             { algorithm = \"HS256\", secret_env = \"S\", secret_file = \"s\" },\n\
             { algorithm = \"none\", public_key_file = \"k.pem\" },\n\
             { algorithm = \"RS256\", public_key_file = \"k.pem\" },\n]",
        );
        assert_eq!(
            a.problems("tenants.t"),
            [
                "tenants.t.auth.keys[0]: set exactly one of secret_env, secret_file, public_key_file, public_key_pem",
                "tenants.t.auth.keys[1]: set exactly one of secret_env, secret_file, public_key_file, public_key_pem",
                "tenants.t.auth.keys[2]: unknown algorithm \"none\"",
            ]
        );
    }
}
