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

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Map, Value};

use super::authz::Principal;
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
    tenant: String,
    issuer: String,
    audience: String,
    leeway: u64,
    scopes_claim: String,
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
    last_fetch: Mutex<Instant>,
    fetching: AtomicBool,
}

impl RemoteKeys {
    async fn refresh_now(&self) -> Result<usize, String> {
        *self
            .last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        let set = super::jwks::fetch(&self.url, self.tls.clone()).await?;
        let (keys, problems) = keys_from_jwks(&set);
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let n = keys.len();
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        Ok(n)
    }

    /// A token named a kid we do not have: fetch again, at most once per
    /// MIN_REFETCH, in the background.
    fn refetch_soon(self: &Arc<Self>) {
        let since = self
            .last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed();
        if since < super::jwks::MIN_REFETCH || self.fetching.swap(true, Ordering::AcqRel) {
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

/// Keys from a JWKS document: every key needs a plain kid and an alg.
fn keys_from_jwks(set: &jsonwebtoken::jwk::JwkSet) -> (Vec<Key>, Vec<String>) {
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| parse_algorithm(&a.to_string()));
        match (kid, alg, DecodingKey::from_jwk(jwk)) {
            (Some(kid), Some(algorithm), Ok(key)) if is_plain_kid(&kid) => {
                keys.push(Key {
                    kid: Some(kid),
                    algorithm,
                    key,
                    secret: None,
                });
            }
            _ => problems.push(
                "every JWKS key needs a plain `kid`, an `alg` and valid parameters".to_owned(),
            ),
        }
    }
    (keys, problems)
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
    /// a JWKS file. Every problem is reported.
    pub async fn load(
        tenant: &str,
        auth: &AuthConfig,
        scopes_claim: &str,
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
            let loaded: Result<(DecodingKey, Option<Vec<u8>>), String> =
                if let Some(var) = &k.secret_env {
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
                        Ok(pem) => match algorithm {
                            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                            Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                            _ => DecodingKey::from_rsa_pem(&pem),
                        }
                        .map(|key| (key, None))
                        .map_err(|e| {
                            format!(
                                "{} is not a {} public key: {e}",
                                path.display(),
                                k.algorithm
                            )
                        }),
                        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
                    }
                } else {
                    continue;
                };
            if hmac != (k.public_key_file.is_none()) {
                problems.push(format!(
                    "{at}.keys[{i}]: {} needs {}",
                    k.algorithm,
                    if hmac {
                        "a secret (secret_env or secret_file)"
                    } else {
                        "a public_key_file"
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
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    serde_json::from_slice::<jsonwebtoken::jwk::JwkSet>(&b)
                        .map_err(|e| e.to_string())
                }) {
                Ok(set) => {
                    let (more, bad) = keys_from_jwks(&set);
                    keys.extend(more);
                    problems.extend(
                        bad.into_iter()
                            .map(|p| format!("{at}.jwks_file {}: {p}", path.display())),
                    );
                }
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
            match super::jwks::client_config(ca.as_deref()) {
                Ok(tls) => {
                    let r = Arc::new(RemoteKeys {
                        tenant: tenant.to_owned(),
                        url: url.clone(),
                        tls,
                        refresh: Duration::from_secs(auth.jwks_refresh_secs.max(1)),
                        keys: RwLock::new(Arc::new(Vec::new())),
                        last_fetch: Mutex::new(Instant::now()),
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
            tenant: tenant.to_owned(),
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            leeway: auth.leeway_secs,
            scopes_claim: scopes_claim.to_owned(),
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
                    tracing::warn!(tenant = %remote.tenant, error = %e, "JWKS refresh failed; keeping the current keys");
                }
            }
        });
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
        let scopes: BTreeSet<String> = match claims.get(&self.scopes_claim) {
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => BTreeSet::new(),
        };
        Ok(Principal {
            tenant: self.tenant.clone(),
            subject,
            claims,
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
