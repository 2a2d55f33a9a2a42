//! Authentication at the handshake: verify a JWT with the tenant's keys and
//! produce a [`Principal`].
//!
//! Refused (each one a 401 with no detail to the client; the reason goes to
//! the debug log, never the token):
//! - `alg: none` and any algorithm that is not the one pinned to the key the
//!   token names (so an HS256 token "signed" with an RSA public key finds no
//!   key: no key confusion);
//! - headers that try to bring their own key or key location (`jku`, `x5u`,
//!   `jwk`, `x5c`) or critical extensions (`crit`); a `kid` that is not a
//!   plain identifier (no paths, no URLs), or that no key of this tenant has;
//! - missing or expired `exp`, `nbf` in the future (nbf checking is on),
//!   `exp`/`nbf` that are not numbers, missing or wrong `iss`/`aud`, missing
//!   `sub`;
//! - a tampered payload or signature.
//!
//! Keys live in the tenant, so a lookup is by tenant, issuer and kid, never
//! by kid alone: a token of tenant A cannot verify at tenant B even if both
//! use the same kid.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Map, Value};

pub mod jwks;

use self::jwks::JwksError;
use crate::authz::{Principal, Scopes};
use sluice_config::{AuthConfig, Config, JwtAlgorithm};

/// Parse an algorithm name from config.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    name.parse::<JwtAlgorithm>().ok().map(jose_algorithm)
}

/// jsonwebtoken's name for a configured algorithm.
pub fn jose_algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::Hs256 => Algorithm::HS256,
        JwtAlgorithm::Hs384 => Algorithm::HS384,
        JwtAlgorithm::Hs512 => Algorithm::HS512,
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Rs384 => Algorithm::RS384,
        JwtAlgorithm::Rs512 => Algorithm::RS512,
        JwtAlgorithm::Ps256 => Algorithm::PS256,
        JwtAlgorithm::Ps384 => Algorithm::PS384,
        JwtAlgorithm::Ps512 => Algorithm::PS512,
        JwtAlgorithm::Es256 => Algorithm::ES256,
        JwtAlgorithm::Es384 => Algorithm::ES384,
        JwtAlgorithm::EdDsa => Algorithm::EdDSA,
    }
}

/// One verification key with its pinned algorithm.
pub struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
    /// The HMAC secret, kept to mint dev tokens (`sluice token`).
    secret: Option<Vec<u8>>,
}

/// Every key of one tenant, and what its tokens must say.
pub struct KeySet {
    issuer: String,
    audience: String,
    leeway: u64,
    scopes_claim: String,
    /// The claims a principal keeps: those the tenant's channel rules and
    /// exposed claims read. A connection holds its principal for its whole
    /// life; the rest of a token's claims are never read after the
    /// handshake (a reload verifies the kept token again, with the new
    /// tenant's list).
    kept_claims: Box<[Box<str>]>,
    keys: Vec<Key>,
    remote: Option<Arc<RemoteKeys>>,
}

/// Keys from a JWKS URL, swapped as a whole on every successful refresh.
struct RemoteKeys {
    tenant: String,
    url: String,
    tls: Arc<rustls::ClientConfig>,
    refresh: Duration,
    keys: RwLock<Arc<Vec<Key>>>,
    /// When the last fetch started (successful or not).
    last_fetch: Mutex<Instant>,
    /// When the last successful refresh ended.
    last_refresh: Mutex<Instant>,
    /// Refreshes that failed since the last successful one.
    failures: AtomicU32,
    /// Keys the last successful refresh skipped.
    skipped: AtomicUsize,
    fetching: AtomicBool,
}

/// How a tenant's JWKS URL is doing, for `/metrics` and `/readyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JwksStatus {
    /// Time since the last successful refresh.
    pub age: Duration,
    /// Refreshes that failed since then.
    pub consecutive_failures: u32,
    /// Keys in use.
    pub keys: usize,
    /// Keys the last successful refresh skipped (unusable).
    pub skipped_keys: usize,
    /// The last refresh failed and the last good one is at least
    /// [`jwks::STALE_AFTER_INTERVALS`] refresh intervals old.
    pub stale: bool,
}

impl RemoteKeys {
    async fn refresh_now(&self) -> Result<usize, JwksError> {
        *self
            .last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        let result = jwks::fetch(&self.url, self.tls.clone())
            .await
            .and_then(|doc| usable_keys(&self.tenant, &doc));
        match result {
            Ok((keys, skipped)) => {
                let n = keys.len();
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
                *self
                    .last_refresh
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Instant::now();
                self.skipped.store(skipped, Ordering::Relaxed);
                self.failures.store(0, Ordering::Relaxed);
                Ok(n)
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn status(&self) -> JwksStatus {
        let age = self
            .last_refresh
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed();
        let consecutive_failures = self.failures.load(Ordering::Relaxed);
        JwksStatus {
            age,
            consecutive_failures,
            keys: self
                .keys
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            skipped_keys: self.skipped.load(Ordering::Relaxed),
            stale: consecutive_failures > 0 && age >= self.refresh * jwks::STALE_AFTER_INTERVALS,
        }
    }

    /// A token named a kid we do not have: fetch again, at most once per
    /// MIN_REFETCH, in the background.
    fn refetch_soon(self: &Arc<Self>) {
        let since = self
            .last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed();
        if since < jwks::MIN_REFETCH || self.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.fetching.store(false, Ordering::Release);
            return;
        };
        let this = self.clone();
        rt.spawn(async move {
            if let Err(e) = this.refresh_now().await {
                tracing::warn!(tenant = %this.tenant, error = %e, "JWKS refresh failed; keeping the current keys");
            }
            this.fetching.store(false, Ordering::Release);
        });
    }
}

/// The usable keys of a JWKS document and how many were skipped. A key
/// this server cannot verify with is skipped with a warning naming its kid
/// (never its material): no plain `kid`, `use` other than `sig`, `key_ops`
/// without `verify`, no `alg`, an algorithm it does not support, a key type
/// or curve that does not fit the algorithm, or unreadable parameters. A
/// document whose keys are all unusable is an error (an empty one is not:
/// the identity provider has withdrawn every key).
fn usable_keys(tenant: &str, doc: &jwks::Document) -> Result<(Vec<Key>, usize), JwksError> {
    let mut keys = Vec::new();
    let mut reasons = Vec::new();
    for jwk in &doc.keys {
        match usable_key(jwk) {
            Ok(key) => keys.push(key),
            Err(reason) => {
                let kid = match jwk.get("kid").and_then(Value::as_str) {
                    Some(kid) if is_plain_kid(kid) => kid,
                    _ => "(none)",
                };
                tracing::warn!(%tenant, %kid, %reason, "JWKS key skipped");
                reasons.push(format!("kid {kid}: {reason}"));
            }
        }
    }
    if keys.is_empty() && !reasons.is_empty() {
        return Err(JwksError::NoUsableKey(reasons.join("; ")));
    }
    Ok((keys, reasons.len()))
}

/// One JWKS key, or why it cannot be used.
fn usable_key(jwk: &Value) -> Result<Key, String> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    let kid = field("kid")
        .filter(|k| is_plain_kid(k))
        .ok_or("no plain `kid`")?;
    match field("use") {
        None | Some("sig") => {}
        Some("enc") => return Err("an encryption key (`use`: `enc`)".into()),
        Some(_) => return Err("`use` is not `sig`".into()),
    }
    if let Some(ops) = jwk.get("key_ops")
        && !ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o.as_str() == Some("verify")))
    {
        return Err("`key_ops` does not include `verify`".into());
    }
    let alg_name = field("alg").ok_or("no `alg`")?;
    let algorithm = parse_algorithm(alg_name).ok_or_else(|| {
        let shown: String = alg_name
            .chars()
            .take(32)
            .filter(char::is_ascii_graphic)
            .collect();
        format!("unsupported `alg` {shown:?}")
    })?;
    let fits = matches!(
        (algorithm, field("kty"), field("crv")),
        (
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512,
            Some("oct"),
            _
        ) | (
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512,
            Some("RSA"),
            _,
        ) | (Algorithm::ES256, Some("EC"), Some("P-256"))
            | (Algorithm::ES384, Some("EC"), Some("P-384"))
            | (Algorithm::EdDSA, Some("OKP"), Some("Ed25519"))
    );
    if !fits {
        return Err(format!("key type or curve does not fit `alg` {alg_name}"));
    }
    let parsed: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(jwk.clone()).map_err(|_| "unreadable key parameters".to_owned())?;
    let key = DecodingKey::from_jwk(&parsed).map_err(|_| "invalid key parameters".to_owned())?;
    Ok(Key {
        kid: Some(kid.to_owned()),
        algorithm,
        key,
        secret: None,
    })
}

/// Why a token was refused (for logs; the client only sees 401).
#[derive(Debug)]
pub struct AuthError(pub String);

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_plain_kid(kid: &str) -> bool {
    (1..=128).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !kid.contains("..")
}

impl KeySet {
    /// Load a tenant's keys: secrets from env or files, PEM public keys,
    /// a JWKS file. Every problem is reported. A verified principal keeps
    /// the claims named in `kept_claims`.
    pub async fn load(
        tenant: &str,
        auth: &AuthConfig,
        scopes_claim: &str,
        kept_claims: impl IntoIterator<Item = String>,
        config: &Config,
    ) -> Result<Self, Vec<String>> {
        let mut keys = Vec::new();
        let mut problems = Vec::new();
        let at = format!("tenants.{tenant}.auth");
        for (i, k) in auth.keys.iter().enumerate() {
            let Some(algorithm) = parse_algorithm(&k.algorithm) else {
                continue;
            };
            if let Some(kid) = &k.kid
                && !is_plain_kid(kid)
            {
                problems.push(format!(
                    "{at}.keys[{i}]: kid {kid:?} must be 1-128 of A-Z a-z 0-9 - _ ."
                ));
            }
            let hmac = matches!(
                algorithm,
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
            );
            let public = |pem: &[u8], from: &str| {
                match algorithm {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
                    _ => DecodingKey::from_rsa_pem(pem),
                }
                .map(|key| (key, None))
                .map_err(|e| format!("{from} is not a {} public key: {e}", k.algorithm))
            };
            let loaded: Result<(DecodingKey, Option<Vec<u8>>), String> = if let Some(s) = &k.secret
            {
                if s.len() >= 32 {
                    DecodingKey::from_secret(s.as_bytes())
                        .map(|key| (key, Some(s.as_bytes().to_vec())))
                        .map_err(|e| format!("bad secret: {e}"))
                } else {
                    Err("the secret is shorter than 32 bytes".into())
                }
            } else if let Some(pem) = &k.public_key_pem {
                public(pem.as_bytes(), "public_key_pem")
            } else if let Some(var) = &k.secret_env {
                match std::env::var(var) {
                    Ok(s) if s.len() >= 32 => DecodingKey::from_secret(s.as_bytes())
                        .map(|k| (k, Some(s.into_bytes())))
                        .map_err(|e| format!("bad secret in ${var}: {e}")),
                    Ok(_) => Err(format!("the secret in ${var} is shorter than 32 bytes")),
                    Err(_) => Err(format!("environment variable ${var} is not set")),
                }
            } else if let Some(file) = &k.secret_file {
                let path = config.path(file);
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        let s = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
                        if s.len() >= 32 {
                            DecodingKey::from_secret(&s)
                                .map(|k| (k, Some(s)))
                                .map_err(|e| format!("bad secret in {}: {e}", path.display()))
                        } else {
                            Err(format!(
                                "the secret in {} is shorter than 32 bytes",
                                path.display()
                            ))
                        }
                    }
                    Err(e) => Err(format!("cannot read {}: {e}", path.display())),
                }
            } else if let Some(file) = &k.public_key_file {
                let path = config.path(file);
                match std::fs::read(&path) {
                    Ok(pem) => public(&pem, &path.display().to_string()),
                    Err(e) => Err(format!("cannot read {}: {e}", path.display())),
                }
            } else {
                continue;
            };
            if hmac == k.is_public() {
                problems.push(format!(
                    "{at}.keys[{i}]: {} needs {}",
                    k.algorithm,
                    if hmac {
                        "a secret (secret_env or secret_file)"
                    } else {
                        "a public_key_file or public_key_pem"
                    }
                ));
                continue;
            }
            match loaded {
                Ok((key, secret)) => keys.push(Key {
                    kid: k.kid.clone(),
                    algorithm,
                    key,
                    secret,
                }),
                Err(e) => problems.push(format!("{at}.keys[{i}]: {e}")),
            }
        }
        if let Some(file) = &auth.jwks_file {
            let path = config.path(file);
            match std::fs::read(&path)
                .map_err(JwksError::from)
                .and_then(|b| jwks::Document::parse(&b))
                .and_then(|doc| usable_keys(tenant, &doc))
            {
                Ok((more, _skipped)) => keys.extend(more),
                Err(e) => problems.push(format!("{at}.jwks_file {}: {e}", path.display())),
            }
        }
        let mut remote = None;
        if let Some(url) = &auth.jwks_url {
            let ca = match &auth.jwks_ca_file {
                Some(f) => match std::fs::read(config.path(f)) {
                    Ok(pem) => Some(pem),
                    Err(e) => {
                        problems.push(format!(
                            "{at}.jwks_ca_file {}: {e}",
                            config.path(f).display()
                        ));
                        None
                    }
                },
                None => None,
            };
            match jwks::client_config(ca.as_deref()) {
                Ok(tls) => {
                    let r = Arc::new(RemoteKeys {
                        tenant: tenant.to_owned(),
                        url: url.clone(),
                        tls,
                        refresh: Duration::from_secs(auth.jwks_refresh_secs.max(1)),
                        keys: RwLock::new(Arc::new(Vec::new())),
                        last_fetch: Mutex::new(Instant::now()),
                        last_refresh: Mutex::new(Instant::now()),
                        failures: AtomicU32::new(0),
                        skipped: AtomicUsize::new(0),
                        fetching: AtomicBool::new(false),
                    });
                    match r.refresh_now().await {
                        Ok(_) => remote = Some(r),
                        Err(e) => problems.push(format!("{at}.jwks_url: {e}")),
                    }
                }
                Err(e) => problems.push(format!("{at}.jwks_ca_file: {e}")),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            leeway: auth.leeway_secs,
            scopes_claim: scopes_claim.to_owned(),
            kept_claims: kept_claims
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
            keys,
            remote,
        })
    }

    /// Refresh the JWKS URL's keys every `jwks_refresh_secs` until the key
    /// set is dropped. Does nothing without a JWKS URL.
    pub fn start_refresh(&self) {
        let Some(remote) = &self.remote else { return };
        let weak: Weak<RemoteKeys> = Arc::downgrade(remote);
        let every = remote.refresh;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(remote) = weak.upgrade() else { return };
                if let Err(e) = remote.refresh_now().await {
                    let status = remote.status();
                    tracing::warn!(
                        tenant = %remote.tenant,
                        error = %e,
                        consecutive_failures = status.consecutive_failures,
                        stale = status.stale,
                        "JWKS refresh failed; keeping the current keys"
                    );
                }
            }
        });
    }

    /// The state of the tenant's JWKS URL; `None` without one.
    pub fn jwks_status(&self) -> Option<JwksStatus> {
        self.remote.as_ref().map(|r| r.status())
    }

    /// Verify `token` and build the principal.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError(format!("bad header: {e}")))?;
        if header.jku.is_some()
            || header.x5u.is_some()
            || header.jwk.is_some()
            || header.x5c.is_some()
        {
            return Err(AuthError(
                "header names its own key (jku/x5u/jwk/x5c)".into(),
            ));
        }
        if header.crit.is_some() {
            return Err(AuthError("header has crit extensions".into()));
        }
        if let Some(kid) = &header.kid
            && !is_plain_kid(kid)
        {
            return Err(AuthError("kid is not a plain identifier".into()));
        }
        let matches = |k: &&Key| k.kid == header.kid && k.algorithm == header.alg;
        let remote_keys = self.remote.as_ref().map(|r| {
            r.keys
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        });
        let key = match self.keys.iter().find(matches) {
            Some(k) => k,
            None => match remote_keys.as_ref().and_then(|ks| ks.iter().find(matches)) {
                Some(k) => k,
                None => {
                    if let Some(r) = &self.remote {
                        r.refetch_soon();
                    }
                    return Err(AuthError(format!(
                        "no key for kid {:?} and alg {:?}",
                        header.kid, header.alg
                    )));
                }
            },
        };
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        let data = decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| AuthError(format!("invalid token: {e}")))?;
        let claims = data.claims;
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| AuthError("exp is not a number".into()))?;
        if claims.get("nbf").is_some_and(|v| !v.is_number()) {
            return Err(AuthError("nbf is not a number".into()));
        }
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s.clone(),
            _ => return Err(AuthError("sub is missing or not a short string".into())),
        };
        let scopes: Scopes = match claims.get(&self.scopes_claim) {
            Some(Value::String(s)) => s.split_whitespace().collect(),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Scopes::default(),
        };
        let claims: Map<String, Value> = claims
            .into_iter()
            .filter(|(name, _)| self.kept_claims.iter().any(|k| **k == **name))
            .collect();
        Ok(Principal {
            subject,
            claims: claims.into(),
            scopes,
            expires_at,
        })
    }

    /// Mint a token with the tenant's first HMAC key (dev tooling only).
    pub fn mint(
        &self,
        subject: &str,
        scopes: &[String],
        ttl_secs: u64,
        extra: Map<String, Value>,
    ) -> Result<String, String> {
        let key = self
            .keys
            .iter()
            .find(|k| k.secret.is_some())
            .ok_or("this tenant has no HMAC secret to sign with (public keys cannot sign)")?;
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims = extra;
        claims.insert("sub".into(), subject.into());
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), self.audience.clone().into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + ttl_secs).into());
        claims.insert(self.scopes_claim.clone(), scopes.join(" ").into());
        let mut header = jsonwebtoken::Header::new(key.algorithm);
        header.kid = key.kid.clone();
        let secret = key.secret.as_deref().unwrap_or_default();
        let key = jsonwebtoken::EncodingKey::from_secret(secret).map_err(|e| e.to_string())?;
        jsonwebtoken::encode(&header, &claims, &key).map_err(|e| e.to_string())
    }
}

/// A new secret: 32 bytes from the operating system's secure random
/// source, base64url without padding (43 printable characters): an HMAC
/// key the management API generates for a tenant, or a management token.
pub fn new_secret() -> Result<String, String> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| "no secure random source".to_owned())?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::jwks::Document;
    use super::*;

    /// RFC 7517 A.1's P-256 public key, as a signing key.
    fn ec(kid: &str) -> Value {
        json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
            "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM",
        })
    }

    /// RFC 7517 A.1's RSA public key.
    fn rsa(kid: &str) -> Value {
        json!({
            "kty": "RSA", "alg": "RS256", "kid": kid, "e": "AQAB",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        })
    }

    fn with(mut key: Value, field: &str, value: Value) -> Value {
        if let Some(o) = key.as_object_mut() {
            if value.is_null() {
                o.remove(field);
            } else {
                o.insert(field.into(), value);
            }
        }
        key
    }

    fn kids(keys: &[Key]) -> Vec<&str> {
        keys.iter().filter_map(|k| k.kid.as_deref()).collect()
    }

    #[test]
    fn unusable_jwks_keys_are_skipped_and_the_rest_are_kept() {
        let doc = Document {
            keys: vec![
                with(ec("enc"), "use", json!("enc")),
                with(ec("no-alg"), "alg", Value::Null),
                with(ec("es512"), "alg", json!("ES512")),
                with(rsa("oaep"), "alg", json!("RSA-OAEP")),
                with(ec("wrong-crv"), "alg", json!("ES384")),
                with(rsa("rsa-as-ec"), "alg", json!("ES256")),
                with(ec("ops"), "key_ops", json!(["encrypt"])),
                with(ec("x"), "kid", Value::Null),
                with(ec("../etc"), "use", json!("sig")),
                json!({"kty": "OKP", "crv": "X25519", "kid": "ecdh", "x": "AAAA"}),
                json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "broken", "x": "!", "y": "!"}),
                json!("not a key"),
                ec("good-ec"),
                rsa("good-rsa"),
                json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "good-ed",
                       "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
                with(ec("verify-op"), "key_ops", json!(["verify"])),
            ],
        };
        let (keys, skipped) = usable_keys("t", &doc).unwrap();
        assert_eq!(kids(&keys), ["good-ec", "good-rsa", "good-ed", "verify-op"]);
        assert_eq!(skipped, 12);
        assert_eq!(keys[0].algorithm, Algorithm::ES256);
        assert_eq!(keys[2].algorithm, Algorithm::EdDSA);
    }

    #[test]
    fn a_jwks_with_only_unusable_keys_is_an_error_and_an_empty_one_is_not() {
        let doc = Document {
            keys: vec![
                with(ec("enc"), "use", json!("enc")),
                with(ec("no-alg"), "alg", Value::Null),
            ],
        };
        let err = usable_keys("t", &doc).err().unwrap().to_string();
        assert!(err.contains("no usable key"), "{err}");
        assert!(err.contains("kid enc: an encryption key"), "{err}");
        assert!(err.contains("kid no-alg: no `alg`"), "{err}");
        // Key material never appears in the reasons.
        assert!(!err.contains("MKBCTNIc"), "{err}");
        let (keys, skipped) = usable_keys("t", &Document { keys: vec![] }).unwrap();
        assert!(keys.is_empty());
        assert_eq!(skipped, 0);
        // A whole document that one odd key used to make unreadable.
        let doc = Document::parse(
            json!({"keys": [{"kty": "OKP", "crv": "X25519", "kid": "a", "x": "AAAA"}, ec("b")]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(kids(&usable_keys("t", &doc).unwrap().0), ["b"]);
        assert!(Document::parse(b"{\"keys\": 1}").is_err());
    }
}
