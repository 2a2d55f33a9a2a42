//! Tenants as data: tenants created, changed and removed through the
//! management API, kept through the data path's tenant-storage seam
//! (memory, the durable store, or a fleet's KV bucket every node watches),
//! checked by the same code as the config file, versioned (every change a
//! new revision; a change names the revision it read), and applied without
//! a restart (only that tenant's live sessions re-check themselves).
//!
//! A record is JSON: the tenant as the API was given it (the file's
//! `[tenants.<id>]` table as JSON, with generated HMAC secrets filled in),
//! the SHA-256 of its management token, and when it was created and last
//! changed. The tenant is kept as given, not as parsed: defaults added
//! later apply to it as they do to the file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use sluice_server::backends::tenants::{Expected, TenantStorage, TenantStoreError};
use sluice_server::state::ServerState;

use crate::audit::now_ms;
use crate::refusal::Refusal;

/// What is kept for one tenant.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    /// The tenant, as the file's `[tenants.<id>]` table would say it (JSON).
    pub tenant: Value,
    /// SHA-256 (hex) of the tenant's management token.
    pub token_sha256: String,
    /// When it was created, ms since the Unix epoch.
    pub created_ms: u64,
    /// When it last changed.
    pub updated_ms: u64,
}

/// A tenant of the API as this node knows it.
#[derive(Clone, Debug)]
struct Known {
    revision: u64,
    record: TenantRecord,
}

/// What a change made: the revision, and the secrets shown this once.
#[derive(Debug, Default, Serialize)]
pub struct Changed {
    /// The tenant.
    pub id: String,
    /// Its revision now.
    pub revision: u64,
    /// The management token, when the change made one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Generated HMAC secrets by `kid`.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub secrets: Map<String, Value>,
}

/// What a tenant's own token may change with a patch: the first path
/// segment, or `routes.<route>.schema`.
pub const TENANT_MAY_CHANGE: &[&str] = &["origins", "require_origin", "routes.*.schema"];

/// The tenants of the API, on one node.
pub struct Tenants {
    storage: Arc<dyn TenantStorage>,
    known: Mutex<HashMap<String, Known>>,
    /// SHA-256 of each tenant's management token -> tenant id.
    tokens: Mutex<HashMap<String, String>>,
    /// One change at a time on this node (the storage's revision check
    /// decides between nodes).
    writes: tokio::sync::Mutex<()>,
    max_tenants: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// SHA-256 (hex) of a token.
pub fn token_digest(token: &str) -> String {
    sluice_sandbox::digest(token.as_bytes())
}

fn store_refusal(e: TenantStoreError) -> Refusal {
    match e {
        TenantStoreError::Conflict { current } => Refusal::new(
            409,
            "conflict",
            match current {
                Some(r) => format!(
                    "the tenant changed meanwhile: it is at revision {r} now; read it again and apply your change to that"
                ),
                None => "the tenant was removed meanwhile".to_owned(),
            },
        )
        .with_revision(current),
        TenantStoreError::Failed(m) => Refusal::new(
            503,
            "store_failed",
            format!("the change could not be kept: {m}"),
        ),
    }
}

/// RFC 7386 JSON merge patch of `target` by `patch`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The paths a patch touches, segment by segment, down to the leaves it
/// sets (a route's name may hold dots: `chat.send`).
fn touched(patch: &Value, at: &[String], out: &mut Vec<Vec<String>>) {
    match patch {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let mut path = at.to_vec();
                path.push(k.clone());
                touched(v, &path, out);
            }
        }
        _ => out.push(at.to_vec()),
    }
}

/// Whether a tenant's own token may set `path`.
fn tenant_may_change(path: &[String]) -> bool {
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    matches!(
        parts.as_slice(),
        ["origins" | "require_origin"] | ["routes", _, "schema", ..]
    )
}

/// Fill in a secret for every HMAC key given without a source; the
/// generated secrets by kid. Keys may not name the server's files unless
/// the operator asks.
fn generate_secrets(tenant: &mut Value) -> Result<Map<String, Value>, Refusal> {
    let mut secrets = Map::new();
    let Some(keys) = tenant
        .get_mut("auth")
        .and_then(|a| a.get_mut("keys"))
        .and_then(Value::as_array_mut)
    else {
        return Ok(secrets);
    };
    for (i, key) in keys.iter_mut().enumerate() {
        let Some(k) = key.as_object_mut() else {
            continue;
        };
        let sourced = [
            "secret_env",
            "secret_file",
            "public_key_file",
            "public_key_pem",
            "secret",
        ]
        .iter()
        .any(|s| k.contains_key(*s));
        let hmac = k
            .get("algorithm")
            .and_then(Value::as_str)
            .is_some_and(|a| a.starts_with("HS"));
        if sourced || !hmac {
            continue;
        }
        let secret =
            sluice_server::auth::new_secret().map_err(|e| Refusal::new(503, "no_randomness", e))?;
        let kid = k
            .get("kid")
            .and_then(Value::as_str)
            .map_or_else(|| format!("keys[{i}]"), str::to_owned);
        k.insert("secret".into(), Value::String(secret.clone()));
        secrets.insert(kid, Value::String(secret));
    }
    Ok(secrets)
}

/// `tenant` with generated secrets hidden, for reading back.
fn redacted(tenant: &Value) -> Value {
    let mut t = tenant.clone();
    if let Some(keys) = t
        .get_mut("auth")
        .and_then(|a| a.get_mut("keys"))
        .and_then(Value::as_array_mut)
    {
        for key in keys {
            if let Some(s) = key.get_mut("secret") {
                *s = Value::String("(hidden)".into());
            }
        }
    }
    t
}

/// Fields an API tenant may not use when a tenant's token asks, and
/// files only the operator may name.
const FILE_FIELDS: &[&str] = &[
    "secret_file",
    "public_key_file",
    "jwks_file",
    "jwks_ca_file",
    "schema_file",
    "component",
];

impl Tenants {
    /// Over `storage`; at most `max_tenants` (`[management] max_tenants`).
    pub fn new(storage: Arc<dyn TenantStorage>, max_tenants: usize) -> Self {
        Self {
            storage,
            known: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            writes: tokio::sync::Mutex::new(()),
            max_tenants,
        }
    }

    /// Whether the storage shares tenants with other nodes.
    pub fn shared(&self) -> bool {
        self.storage.shared()
    }

    /// Serve every tenant kept (at start, before the listeners open). A
    /// kept tenant that no longer loads is reported and left out; the
    /// others serve. The number served.
    pub async fn start(&self, state: &ServerState) -> usize {
        // Built one by one, installed in one swap of the tenant map (one
        // install each would copy the map once per tenant: start-up time
        // growing with the square of the number of tenants).
        let mut built = Vec::new();
        for stored in self.storage.take_contents() {
            if let Some((t, record)) = self
                .build(state, &stored.id, stored.revision, &stored.record)
                .await
            {
                self.remember(&stored.id, stored.revision, record);
                built.push(t);
            }
        }
        state.install_tenants(built).await
    }

    /// A change seen on the shared storage (another node's, or this node's
    /// own coming back): applied when it is newer than what this node has.
    pub async fn apply_remote(
        &self,
        state: &ServerState,
        id: &str,
        change: Option<(u64, Vec<u8>)>,
    ) {
        let newer = match (&change, lock(&self.known).get(id)) {
            (Some((rev, _)), Some(k)) => *rev > k.revision,
            (None, known) => known.is_some(),
            (Some(_), None) => true,
        };
        if newer {
            self.apply(state, id, change).await;
        }
    }

    /// Install a kept record (or its removal) on this node.
    async fn apply(&self, state: &ServerState, id: &str, change: Option<(u64, Vec<u8>)>) -> bool {
        let Some((revision, bytes)) = change else {
            self.forget(id);
            state.install_tenant(id, None).await;
            return true;
        };
        match self.build(state, id, revision, &bytes).await {
            Some((t, record)) => {
                self.remember(id, revision, record);
                state.install_tenant(id, Some(t)).await;
                true
            }
            None => false,
        }
    }

    /// A kept record, read and built (not installed); `None` when it does
    /// not load (logged: the others serve).
    async fn build(
        &self,
        state: &ServerState,
        id: &str,
        revision: u64,
        bytes: &[u8],
    ) -> Option<(Arc<sluice_server::tenant::Tenant>, TenantRecord)> {
        let record: TenantRecord = match serde_json::from_slice(bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(tenant = id, revision, error = %e, "a kept tenant record is not readable: not served");
                return None;
            }
        };
        let built = match state.config.tenant_from_json(id, &record.tenant) {
            Ok(tc) => state.build_tenant(id, &tc, revision).await,
            Err(p) => Err(p),
        };
        match built {
            Ok(t) => Some((t, record)),
            Err(problems) => {
                tracing::error!(tenant = id, revision, problems = %problems.join("; "),
                    "a kept tenant no longer loads: not served");
                None
            }
        }
    }

    fn remember(&self, id: &str, revision: u64, record: TenantRecord) {
        let mut tokens = lock(&self.tokens);
        let mut known = lock(&self.known);
        if let Some(old) = known.get(id) {
            tokens.remove(&old.record.token_sha256);
        }
        tokens.insert(record.token_sha256.clone(), id.to_owned());
        known.insert(id.to_owned(), Known { revision, record });
    }

    fn forget(&self, id: &str) {
        if let Some(old) = lock(&self.known).remove(id) {
            lock(&self.tokens).remove(&old.record.token_sha256);
        }
    }

    /// The API tenant whose management token is `token`, if any: one hash
    /// and one lookup, whatever the number of tenants.
    pub fn tenant_of_token(&self, token: &str) -> Option<String> {
        lock(&self.tokens).get(&token_digest(token)).cloned()
    }

    /// Every tenant: (id, revision, source), sorted by id.
    pub fn list(&self, state: &ServerState) -> Vec<Value> {
        let mut all: Vec<Value> = state
            .tenants()
            .values()
            .map(|t| match t.revision {
                Some(r) => json!({ "id": t.id, "revision": r, "source": "api" }),
                None => json!({ "id": t.id, "revision": Value::Null, "source": "config" }),
            })
            .collect();
        all.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        all
    }

    /// One tenant, as kept (secrets hidden), or as the file configures it.
    pub fn show(&self, state: &ServerState, id: &str) -> Option<Value> {
        if let Some(k) = lock(&self.known).get(id) {
            return Some(json!({
                "id": id,
                "revision": k.revision,
                "source": "api",
                "created_ms": k.record.created_ms,
                "updated_ms": k.record.updated_ms,
                "tenant": redacted(&k.record.tenant),
            }));
        }
        let t = state.tenant(id).filter(|t| t.revision.is_none())?;
        let mut tenant = serde_json::to_value(&t.config).unwrap_or(Value::Null);
        tenant = redacted(&tenant);
        Some(json!({ "id": id, "revision": Value::Null, "source": "config", "tenant": tenant }))
    }

    /// Whether `id` is a tenant of the config file (read-only here).
    fn configured(state: &ServerState, id: &str) -> bool {
        state.tenant(id).is_some_and(|t| t.revision.is_none())
    }

    fn configured_refusal(id: &str) -> Refusal {
        Refusal::new(
            409,
            "configured_tenant",
            format!(
                "tenant {id} comes from the config file: it is read-only through the API (edit the file and reload)"
            ),
        )
    }

    /// Check `tenant` for `id` as the file's code does, and build it: every
    /// problem, 422.
    async fn check(
        &self,
        state: &ServerState,
        id: &str,
        tenant: &Value,
        operator: bool,
    ) -> Result<Arc<sluice_server::tenant::Tenant>, Refusal> {
        let _ = operator;
        let mut problems = Vec::new();
        if tenant.pointer("/managed/token").is_some() {
            problems.push(format!(
                "tenants.{id}.managed.token: a tenant of the API gets its token from the API (POST /v1/tenants/{id}/keys {{\"management_token\":true}})"
            ));
        }
        let built = match state.config.tenant_from_json(id, tenant) {
            Ok(tc) => state.build_tenant(id, &tc, 0).await,
            Err(p) => Err(p),
        };
        match built {
            Ok(t) if problems.is_empty() => Ok(t),
            Ok(_) => Err(Refusal::invalid(problems)),
            Err(p) => {
                problems.extend(p);
                Err(Refusal::invalid(problems))
            }
        }
    }

    /// Create tenant `id` (the operator's): checked, kept, served.
    pub async fn create(
        &self,
        state: &ServerState,
        id: &str,
        mut tenant: Value,
    ) -> Result<Changed, Refusal> {
        let _one = self.writes.lock().await;
        if Self::configured(state, id) {
            return Err(Self::configured_refusal(id));
        }
        if lock(&self.known).contains_key(id) {
            return Err(Refusal::new(
                409,
                "exists",
                format!("tenant {id} exists: change it with PATCH /v1/tenants/{id}"),
            ));
        }
        if lock(&self.known).len() >= self.max_tenants {
            return Err(Refusal::new(
                409,
                "too_many_tenants",
                format!(
                    "the API keeps at most {} tenants ([management] max_tenants)",
                    self.max_tenants
                ),
            ));
        }
        if !tenant.is_object() {
            return Err(Refusal::invalid(vec![format!(
                "tenants.{id} must be a JSON object"
            )]));
        }
        let secrets = generate_secrets(&mut tenant)?;
        self.check(state, id, &tenant, true).await?;
        let token =
            sluice_server::auth::new_secret().map_err(|e| Refusal::new(503, "no_randomness", e))?;
        let now = now_ms();
        let record = TenantRecord {
            tenant,
            token_sha256: token_digest(&token),
            created_ms: now,
            updated_ms: now,
        };
        let revision = self.keep(state, id, Expected::Absent, record).await?;
        Ok(Changed {
            id: id.to_owned(),
            revision,
            token: Some(token),
            secrets,
        })
    }

    /// Write `record` expecting `expected`, then serve it here (a fleet's
    /// other nodes serve it when their watch brings it).
    async fn keep(
        &self,
        state: &ServerState,
        id: &str,
        expected: Expected,
        record: TenantRecord,
    ) -> Result<u64, Refusal> {
        let bytes = serde_json::to_vec(&record)
            .map_err(|e| Refusal::new(500, "internal", e.to_string()))?;
        let revision = self
            .storage
            .write(id, expected, Some(bytes.clone()))
            .await
            .map_err(store_refusal)?;
        // In a fleet the watch may have brought it here first.
        self.apply_remote(state, id, Some((revision, bytes))).await;
        Ok(revision)
    }

    fn current(
        &self,
        state: &ServerState,
        id: &str,
        revision: Option<u64>,
    ) -> Result<Known, Refusal> {
        if Self::configured(state, id) {
            return Err(Self::configured_refusal(id));
        }
        let Some(k) = lock(&self.known).get(id).cloned() else {
            return Err(Refusal::new(
                404,
                "no_such_tenant",
                format!("no tenant {id}"),
            ));
        };
        if let Some(r) = revision
            && r != k.revision
        {
            return Err(store_refusal(TenantStoreError::Conflict {
                current: Some(k.revision),
            }));
        }
        Ok(k)
    }

    /// Change tenant `id` by a JSON merge patch, from `revision`. A
    /// tenant's own token changes only [`TENANT_MAY_CHANGE`].
    pub async fn update(
        &self,
        state: &ServerState,
        id: &str,
        revision: u64,
        patch: &Value,
        operator: bool,
    ) -> Result<Changed, Refusal> {
        let mut paths = Vec::new();
        touched(patch, &[], &mut paths);
        if !operator {
            let refused: Vec<String> = paths
                .iter()
                .filter(|p| !tenant_may_change(p))
                .map(|p| p.join("."))
                .collect();
            if !refused.is_empty() {
                return Err(Refusal::new(
                    403,
                    "operator_only",
                    format!(
                        "a tenant's token may change {}; only the operator may change {}",
                        TENANT_MAY_CHANGE.join(", "),
                        refused.join(", ")
                    ),
                )
                .with_fields(refused));
            }
        }
        if paths
            .iter()
            .any(|p| p.len() >= 2 && p[0] == "auth" && p[1] == "keys")
        {
            return Err(Refusal::invalid(vec![format!(
                "tenants.{id}.auth.keys: keys change through POST /v1/tenants/{id}/keys (rotate, add, remove), not a patch"
            )]));
        }
        let _one = self.writes.lock().await;
        let k = self.current(state, id, Some(revision))?;
        let mut tenant = k.record.tenant.clone();
        merge_patch(&mut tenant, patch);
        self.check(state, id, &tenant, operator).await?;
        let record = TenantRecord {
            tenant,
            updated_ms: now_ms(),
            ..k.record
        };
        let revision = self
            .keep(state, id, Expected::Revision(revision), record)
            .await?;
        Ok(Changed {
            id: id.to_owned(),
            revision,
            ..Changed::default()
        })
    }

    /// Remove tenant `id` (the operator's), from `revision` (`None`: the
    /// current one): its sessions close 1001.
    pub async fn remove(
        &self,
        state: &ServerState,
        id: &str,
        revision: Option<u64>,
    ) -> Result<u64, Refusal> {
        let _one = self.writes.lock().await;
        let k = self.current(state, id, revision)?;
        let removed = self
            .storage
            .write(id, Expected::Revision(k.revision), None)
            .await
            .map_err(store_refusal)?;
        self.forget(id);
        state.install_tenant(id, None).await;
        Ok(removed)
    }

    /// Change tenant `id`'s keys or its management token.
    pub async fn keys(
        &self,
        state: &ServerState,
        id: &str,
        change: KeyChange,
    ) -> Result<Changed, Refusal> {
        let _one = self.writes.lock().await;
        let k = self.current(state, id, change.revision)?;
        let mut tenant = k.record.tenant.clone();
        let mut record = k.record.clone();
        let mut token = None;
        let mut secrets = Map::new();
        let keys = tenant
            .pointer_mut("/auth")
            .and_then(Value::as_object_mut)
            .map(|auth| {
                auth.entry("keys")
                    .or_insert_with(|| Value::Array(Vec::new()))
            })
            .and_then(Value::as_array_mut);
        let Some(keys) = keys else {
            return Err(Refusal::invalid(vec![format!(
                "tenants.{id}.auth is missing"
            )]));
        };
        let new_kid = format!("k{}", k.revision + 1);
        if let Some(algorithm) = &change.rotate {
            keys.clear();
            keys.push(json!({ "kid": new_kid, "algorithm": algorithm }));
        }
        if let Some(add) = &change.add {
            if !add.is_object() {
                return Err(Refusal::invalid(vec!["`add` must be a key object".into()]));
            }
            let mut files = Vec::new();
            find_fields(add, "add", &mut files);
            if !change.operator && !files.is_empty() {
                return Err(Refusal::new(
                    403,
                    "operator_only",
                    format!(
                        "{} names a file on the server: only the operator may",
                        files.join(", ")
                    ),
                )
                .with_fields(files));
            }
            keys.push(add.clone());
        }
        if let Some(kid) = &change.remove {
            let before = keys.len();
            keys.retain(|key| key.get("kid").and_then(Value::as_str) != Some(kid.as_str()));
            if keys.len() == before {
                return Err(Refusal::new(
                    404,
                    "no_such_key",
                    format!("tenant {id} has no key {kid}"),
                ));
            }
        }
        secrets.extend(generate_secrets(&mut tenant)?);
        if change.management_token {
            let t = sluice_server::auth::new_secret()
                .map_err(|e| Refusal::new(503, "no_randomness", e))?;
            record.token_sha256 = token_digest(&t);
            token = Some(t);
        }
        if change.rotate.is_none()
            && change.add.is_none()
            && change.remove.is_none()
            && !change.management_token
        {
            return Err(Refusal::new(
                400,
                "bad_request",
                "say what to change: rotate, add, remove or management_token",
            ));
        }
        self.check(state, id, &tenant, change.operator).await?;
        record.tenant = tenant;
        record.updated_ms = now_ms();
        let revision = self
            .keep(state, id, Expected::Revision(k.revision), record)
            .await?;
        Ok(Changed {
            id: id.to_owned(),
            revision,
            token,
            secrets,
        })
    }
}

/// A change to a tenant's keys (`POST /v1/tenants/{id}/keys`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyChange {
    /// The revision read (`None`: whatever is current).
    #[serde(default)]
    pub revision: Option<u64>,
    /// Replace every key by one new generated key of this algorithm.
    #[serde(default)]
    pub rotate: Option<String>,
    /// Add this key (`{"kid","algorithm","public_key_pem"}`, or an HMAC
    /// key without a source: generated).
    #[serde(default)]
    pub add: Option<Value>,
    /// Remove the key with this kid.
    #[serde(default)]
    pub remove: Option<String>,
    /// A new management token (the old one stops at once).
    #[serde(default)]
    pub management_token: bool,
    /// Whether the operator asks (set by the API, not the body).
    #[serde(skip)]
    pub operator: bool,
}

/// The fields in `v` that name files on the server.
fn find_fields(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                if FILE_FIELDS.contains(&k.as_str()) && !v.is_null() {
                    out.push(path.clone());
                }
                find_fields(v, &path, out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                find_fields(v, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_patch_sets_replaces_and_removes() {
        let mut t = json!({"origins": ["a"], "routes": {"chat": {"handler": "h", "schema": {"type": "object"}}}, "x": 1});
        merge_patch(
            &mut t,
            &json!({"origins": ["b"], "routes": {"chat": {"schema": {"type": "string"}}}, "x": null}),
        );
        assert_eq!(
            t,
            json!({"origins": ["b"], "routes": {"chat": {"handler": "h", "schema": {"type": "string"}}}})
        );
    }

    #[test]
    fn a_tenant_token_changes_origins_and_schemas_only() {
        let mut paths = Vec::new();
        touched(
            &json!({"origins": ["b"], "routes": {"chat.send": {"schema": {"type": "string"}, "scopes": ["x"]}}, "limits": {"max_connections": 9}}),
            &[],
            &mut paths,
        );
        let mut refused: Vec<String> = paths
            .iter()
            .filter(|p| !tenant_may_change(p))
            .map(|p| p.join("."))
            .collect();
        // serde_json keeps the patch's order or sorts, by its features.
        refused.sort();
        assert_eq!(
            refused,
            ["limits.max_connections", "routes.chat.send.scopes"]
        );
    }

    #[test]
    fn hmac_keys_without_a_source_get_a_secret_and_it_is_hidden_when_read() {
        let mut t = json!({"auth": {"keys": [{"kid": "k1", "algorithm": "HS256"}, {"kid": "e", "algorithm": "ES256", "public_key_pem": "x"}]}});
        let secrets = generate_secrets(&mut t).unwrap();
        assert_eq!(secrets.len(), 1);
        let s = secrets["k1"].as_str().unwrap();
        assert_eq!(s.len(), 43);
        assert_eq!(t["auth"]["keys"][0]["secret"], s);
        assert_eq!(redacted(&t)["auth"]["keys"][0]["secret"], "(hidden)");
        assert!(t["auth"]["keys"][1].get("secret").is_none());
    }

    #[test]
    fn files_on_the_server_are_found_wherever_they_are_named() {
        let mut out = Vec::new();
        find_fields(
            &json!({"auth": {"keys": [{"public_key_file": "/etc/shadow"}]}, "routes": {"r": {"schema_file": "s.json"}}}),
            "",
            &mut out,
        );
        assert_eq!(
            out,
            ["auth.keys[0].public_key_file", "routes.r.schema_file"]
        );
    }
}
