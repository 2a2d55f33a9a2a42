//! The management API, on the management listener (HTTPS) under `/v1/`
//! (JSON). Tenants themselves: [`crate::tenants_api`].
//!
//! ```text
//! GET    /v1/tenants/{t}/handlers                      list pushed handlers
//! GET    /v1/tenants/{t}/handlers/{h}                  versions, reports, routing, metrics, shadow diff
//! POST   /v1/tenants/{t}/handlers/{h}/versions         push {component (base64), samples?, stage?, percent?}
//! POST   /v1/tenants/{t}/handlers/{h}/promote          {version, stage? (stable|canary|shadow|none), percent?}
//! POST   /v1/tenants/{t}/handlers/{h}/rollback         {to?}
//! DELETE /v1/tenants/{t}/handlers/{h}                  remove the handler
//! DELETE /v1/tenants/{t}/handlers/{h}/versions/{v}     remove a version that does not serve
//! GET    /v1/audit?tenant={t}&limit={n}                the audit log
//! ```
//!
//! Every request needs `Authorization: Bearer <token>`: the admin token
//! (the operator: every tenant) or a tenant's management token (that tenant
//! only). A missing or unknown token is 401, another tenant's path 403;
//! both are audited, as is every change. What a request's path names
//! reaches the audit log only when it is a configured tenant or a valid
//! handler name; requests without a valid token are recorded at most once
//! per source address per minute, as `unauthenticated`, naming nothing
//! from the request ([`crate::throttle`]).
//!
//! A tenant's token makes at most `[tenants.<id>.quotas]
//! management_requests_per_sec`, and a tenant has one push in flight at a
//! time: past either, 429 with `Retry-After` (not audited).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use sluice_sandbox::BoxFuture;
use sluice_server::admin::web::{bearer, same_secret};
use sluice_server::state::ServerState;
use sluice_server::tenant::Tenant;

use crate::audit::{Actor, AuditEntry, now_ms};
use crate::http::{Resp, error, json_response, parse_query, read_body, refusal, too_many};
use crate::record::{Routing, Stage};
use crate::refusal::Refusal;
use crate::registry::Registry;
use crate::tenants::Tenants;
use crate::tenants_api::{self, TenantAction};
use crate::throttle::{Pushes, TenantRates, Unauthenticated};
use crate::verify::{Sample, Status};

/// The management API over a registry: what the admin listener answers
/// under `/v1/`.
pub struct Management {
    registry: Arc<Registry>,
    tenants: Arc<Tenants>,
    unauthenticated: Unauthenticated,
    rates: TenantRates,
    pushes: Pushes,
}

impl Management {
    /// The API of `registry` and `tenants`.
    pub fn new(registry: Arc<Registry>, tenants: Arc<Tenants>) -> Self {
        Self {
            registry,
            tenants,
            unauthenticated: Unauthenticated::default(),
            rates: TenantRates::default(),
            pushes: Pushes::default(),
        }
    }
}

impl sluice_server::admin::ManagementApi for Management {
    fn respond<'a>(
        &'a self,
        req: Request<Incoming>,
        peer: SocketAddr,
        state: &'a Arc<ServerState>,
    ) -> BoxFuture<'a, Response<Full<Bytes>>> {
        Box::pin(respond(req, peer, state, self))
    }
}

/// A push body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushBody {
    /// The component's bytes, base64 (standard alphabet, padded).
    component: String,
    #[serde(default)]
    samples: Option<Vec<Sample>>,
    #[serde(default)]
    stage: Option<Stage>,
    #[serde(default)]
    percent: Option<u8>,
}

/// A promote body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    version: u32,
    #[serde(default)]
    stage: Option<Stage>,
    #[serde(default)]
    percent: Option<u8>,
}

/// A rollback body.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    to: Option<u32>,
}

/// What a push body may carry beside the component's base64: the JSON
/// around it and up to `verify::MAX_SAMPLES` sample messages.
const PUSH_BODY_SLACK: usize = 256 << 10;

/// Who `req`'s bearer token says is asking.
fn authenticate(req: &Request<Incoming>, state: &ServerState, tenants: &Tenants) -> Actor {
    let Some(offered) = bearer(req) else {
        return Actor::Anonymous;
    };
    // A tenant of the API: by the token's SHA-256, one lookup.
    if let Some(id) = tenants.tenant_of_token(offered) {
        return Actor::Tenant(id);
    }
    let offered = offered.as_bytes();
    if state
        .admin_token()
        .is_some_and(|t| same_secret(offered, t.as_bytes()))
    {
        return Actor::Operator;
    }
    // Every tenant's token is compared (no early exit on a match's position).
    let mut found = None;
    for t in state.tenants().values() {
        if let Some(token) = &t.managed_token
            && same_secret(offered, token.as_bytes())
        {
            found = Some(t.id.clone());
        }
    }
    found.map_or(Actor::Anonymous, Actor::Tenant)
}

/// One request to the API.
struct Call<'a> {
    registry: &'a Registry,
    actor: Actor,
    from: SocketAddr,
    action: &'static str,
    tenant: Option<String>,
    handler: Option<String>,
    version: Option<u32>,
}

impl Call<'_> {
    async fn audit(&self, outcome: &str, detail: impl Into<String>) {
        self.registry
            .record_audit(AuditEntry {
                seq: 0,
                at_ms: now_ms(),
                actor: self.actor.name(),
                from: self.from.to_string(),
                action: self.action.to_owned(),
                tenant: self.tenant.clone(),
                handler: self.handler.clone(),
                version: self.version,
                outcome: outcome.to_owned(),
                detail: detail.into(),
            })
            .await;
    }

    /// A refusal, audited.
    async fn refuse(&self, status: u16, code: &str, message: &str) -> Resp {
        let outcome = if status == 401 || status == 403 {
            "refused"
        } else {
            "failed"
        };
        self.audit(outcome, message).await;
        error(status, code, message)
    }
}

/// Answer a request under `/v1/`.
pub async fn respond(
    req: Request<Incoming>,
    from: SocketAddr,
    state: &Arc<ServerState>,
    api: &Management,
) -> Resp {
    let registry = &*api.registry;
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path
        .trim_start_matches("/v1/")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let method = req.method().clone();
    let tenant_action = TenantAction::of(&method, &segments);
    let action = match (&method, segments.as_slice()) {
        _ if tenant_action.is_some() => "tenant",
        (&Method::GET, ["audit"]) => "audit",
        (&Method::GET, ["tenants", _, "handlers"]) => "list",
        (&Method::GET, ["tenants", _, "handlers", _]) => "show",
        (&Method::DELETE, ["tenants", _, "handlers", _]) => "remove",
        (&Method::POST, ["tenants", _, "handlers", _, "versions"]) => "push",
        (&Method::DELETE, ["tenants", _, "handlers", _, "versions", _]) => "remove",
        (&Method::POST, ["tenants", _, "handlers", _, "promote"]) => "promote",
        (&Method::POST, ["tenants", _, "handlers", _, "rollback"]) => "rollback",
        _ => {
            return error(
                404,
                "not_found",
                "no such management endpoint (see docs/marketplace.md)",
            );
        }
    };
    let actor = authenticate(&req, state, &api.tenants);
    if actor == Actor::Anonymous {
        // Nothing from the request is recorded: its path is the sender's.
        if let Some(record) = api.unauthenticated.request(from.ip(), Instant::now()) {
            let source = record
                .source
                .map_or_else(|| "many addresses".to_owned(), |ip| ip.to_string());
            registry
                .record_audit(AuditEntry {
                    seq: 0,
                    at_ms: now_ms(),
                    actor: actor.name(),
                    from: source,
                    action: "unauthenticated".to_owned(),
                    tenant: None,
                    handler: None,
                    version: None,
                    outcome: "refused".to_owned(),
                    detail: format!(
                        "{} request(s) without a valid token since this source's last record (at most one a minute)",
                        record.requests
                    ),
                })
                .await;
        }
        let mut resp = error(
            401,
            "unauthorized",
            "needs `Authorization: Bearer <admin token or the tenant's management token>`",
        );
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return resp;
    }
    if let Actor::Tenant(t) = &actor {
        let per_sec = state.tenant(t).map_or(
            sluice_config::quotas::DEFAULT_QUOTA_MANAGEMENT_REQUESTS_PER_SEC,
            |t| t.config.quotas.management_requests_per_sec,
        );
        if let Err(wait) = api.rates.check(t, per_sec) {
            return too_many(
                wait,
                "rate_limited",
                &format!(
                    "tenant {t}'s token makes at most {per_sec} management requests a second ([tenants.{t}.quotas] management_requests_per_sec)"
                ),
            );
        }
    }
    if let Some(action) = tenant_action {
        return tenants_api::respond(
            req,
            action,
            segments.get(1).copied(),
            &actor,
            from,
            state,
            &api.tenants,
            registry,
        )
        .await;
    }
    // The path's tenant and handler are audited only when they name a
    // configured tenant and a valid handler name.
    let path_tenant = segments
        .get(1)
        .filter(|_| segments[0] == "tenants")
        .map(|s| (*s).to_owned());
    let path_handler = segments.get(3).map(|s| (*s).to_owned());
    let configured = |t: &str| state.tenant(t).is_some().then(|| t.to_owned());
    let mut call = Call {
        registry,
        actor,
        from,
        action,
        tenant: path_tenant.as_deref().and_then(configured),
        handler: path_handler.clone().filter(|h| sluice_config::is_name(h)),
        version: None,
    };
    if action == "audit" {
        let query = parse_query(req.uri().query());
        let tenant = query
            .iter()
            .find(|(k, _)| k == "tenant")
            .map(|(_, v)| v.as_str());
        let limit = query
            .iter()
            .find(|(k, _)| k == "limit")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(100usize);
        if let Some(t) = tenant
            && !call.actor.may_manage(t)
        {
            call.tenant = configured(t);
            return call
                .refuse(403, "forbidden", "this token manages another tenant")
                .await;
        }
        let entries = registry.audit.read(&call.actor, tenant, limit);
        return json_response(200, &json!({ "entries": entries }));
    }
    let tenant_id = path_tenant.unwrap_or_default();
    if !call.actor.may_manage(&tenant_id) {
        return call
            .refuse(403, "forbidden", "this token manages another tenant")
            .await;
    }
    let Some(tenant) = state.tenant(&tenant_id) else {
        return call.refuse(404, "no_such_tenant", "no such tenant").await;
    };
    let Some(managed) = tenant.config.managed.clone() else {
        return call
            .refuse(404, "not_managed", &format!("tenant {tenant_id} takes no pushed handlers: the operator enables them with [tenants.{tenant_id}.managed]"))
            .await;
    };
    if action == "list" {
        return list(registry, &tenant).await;
    }
    let name = path_handler.unwrap_or_default();
    if !sluice_config::is_name(&name) {
        return call
            .refuse(400, "bad_name", "handler names are 1-64 of a-z 0-9 _ -")
            .await;
    }
    if tenant.config.handlers.contains_key(&name) {
        return call
            .refuse(409, "configured_handler", &format!("handler {name} is configured in the config file: it is the operator's, changed by editing the file and reloading"))
            .await;
    }
    match action {
        "show" => show(registry, &tenant, &name).await,
        "push" => {
            // One push per tenant at a time, taken before its body is read:
            // a tenant holds at most one push body and one verification.
            let Some(_in_flight) = api.pushes.begin(&tenant_id) else {
                return too_many(
                    Duration::from_secs(1),
                    "push_in_flight",
                    &format!("tenant {tenant_id} has a push in flight: one at a time"),
                );
            };
            // The tenant's own component limit bounds what is read, before
            // anything is decoded or compiled.
            let sandbox_max = state.sandbox.config().max_component_bytes;
            let max = managed
                .max_component_bytes
                .unwrap_or(sandbox_max)
                .min(sandbox_max);
            let body = match read_body(req, max.div_ceil(3) * 4 + PUSH_BODY_SLACK).await {
                Ok(b) => b,
                Err(resp) => {
                    call.audit("failed", "the push body is too large or unreadable")
                        .await;
                    return resp;
                }
            };
            let body: PushBody = match serde_json::from_slice(&body) {
                Ok(b) => b,
                Err(e) => {
                    return call
                        .refuse(400, "bad_request", &format!("the push body: {e}"))
                        .await;
                }
            };
            let Ok(bytes) =
                base64::engine::general_purpose::STANDARD.decode(body.component.as_bytes())
            else {
                return call
                    .refuse(
                        400,
                        "bad_request",
                        "`component` must be the component's bytes in base64",
                    )
                    .await;
            };
            let stage = body.stage.map(|s| (s, body.percent));
            match registry
                .push(
                    &tenant,
                    &managed,
                    &name,
                    bytes,
                    body.samples,
                    stage,
                    &call.actor,
                )
                .await
            {
                Ok(pushed) => {
                    call.version = Some(pushed.version);
                    let detail = if pushed.already {
                        format!("the same bytes are v{} already", pushed.version)
                    } else {
                        format!(
                            "v{} pushed ({}), verified in {} ms; routing {}",
                            pushed.version,
                            pushed.report.digest,
                            pushed.report.took_ms,
                            routing_words(&pushed.routing)
                        )
                    };
                    call.audit("ok", detail).await;
                    let status = if pushed.already { 200 } else { 201 };
                    json_response(
                        status,
                        &serde_json::to_value(&pushed).unwrap_or(Value::Null),
                    )
                }
                Err(r) => {
                    let failed: Vec<String> = r
                        .report
                        .iter()
                        .flat_map(|rep| rep.checks.iter())
                        .filter(|c| c.status == Status::Fail)
                        .map(|c| format!("{}: {}", c.name, c.detail))
                        .collect();
                    call.audit(
                        "failed",
                        if failed.is_empty() {
                            r.message.clone()
                        } else {
                            format!("refused by verification: {}", failed.join("; "))
                        },
                    )
                    .await;
                    refusal(&r)
                }
            }
        }
        "promote" => {
            let body = match read_body(req, 64 * 1024).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let body: PromoteBody = match serde_json::from_slice(&body) {
                Ok(b) => b,
                Err(e) => {
                    return call
                        .refuse(400, "bad_request", &format!("the promote body: {e}"))
                        .await;
                }
            };
            call.version = Some(body.version);
            let stage = body.stage.unwrap_or(Stage::Stable);
            changed(
                &call,
                registry
                    .promote(
                        &tenant_id,
                        &managed,
                        &name,
                        body.version,
                        stage,
                        body.percent,
                    )
                    .await,
            )
            .await
        }
        "rollback" => {
            let body = match read_body(req, 64 * 1024).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let body: RollbackBody = if body.iter().all(u8::is_ascii_whitespace) {
                RollbackBody::default()
            } else {
                match serde_json::from_slice(&body) {
                    Ok(b) => b,
                    Err(e) => {
                        return call
                            .refuse(400, "bad_request", &format!("the rollback body: {e}"))
                            .await;
                    }
                }
            };
            call.version = body.to;
            changed(
                &call,
                registry
                    .rollback(&tenant_id, &managed, &name, body.to)
                    .await,
            )
            .await
        }
        "remove" => {
            let version = match segments.get(5) {
                Some(v) => match v.trim_start_matches('v').parse::<u32>() {
                    Ok(v) => Some(v),
                    Err(_) => {
                        return call
                            .refuse(400, "bad_request", "a version is a number")
                            .await;
                    }
                },
                None => None,
            };
            call.version = version;
            match registry.remove(&tenant_id, &managed, &name, version).await {
                Ok(routing) => {
                    let detail = match version {
                        Some(v) => format!("v{v} removed"),
                        None => "handler removed with every version".to_owned(),
                    };
                    call.audit("ok", &detail).await;
                    json_response(200, &json!({ "removed": detail, "routing": routing }))
                }
                Err(r) => {
                    call.audit("failed", &r.message).await;
                    refusal(&r)
                }
            }
        }
        _ => error(404, "not_found", "no such management endpoint"),
    }
}

async fn changed(call: &Call<'_>, result: Result<Routing, Refusal>) -> Resp {
    match result {
        Ok(routing) => {
            call.audit("ok", format!("routing {}", routing_words(&routing)))
                .await;
            json_response(200, &json!({ "routing": routing }))
        }
        Err(r) => {
            call.audit("failed", &r.message).await;
            refusal(&r)
        }
    }
}

/// `stable v2, canary v3 at 10%, shadow v4`.
pub fn routing_words(r: &Routing) -> String {
    let mut parts = Vec::new();
    match r.stable {
        Some(v) => parts.push(format!("stable v{v}")),
        None => parts.push("nothing stable".to_owned()),
    }
    if let Some(c) = r.canary {
        parts.push(format!("canary v{} at {}%", c.version, c.percent));
    }
    if let Some(s) = r.shadow {
        parts.push(format!("shadow v{s}"));
    }
    parts.join(", ")
}

async fn list(registry: &Registry, tenant: &Tenant) -> Resp {
    let records = registry.list(&tenant.id).await;
    let handlers: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "routing": r.routing,
                "versions": r.versions.iter().map(|v| json!({
                    "version": v.version,
                    "digest": v.digest,
                    "size": v.size,
                    "pushed_at_ms": v.pushed_at_ms,
                    "pushed_by": v.pushed_by,
                    "stage": r.routing.stage_of(v.version),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json_response(
        200,
        &json!({ "tenant": tenant.id, "durable": registry.durable(), "handlers": handlers }),
    )
}

async fn show(registry: &Registry, tenant: &Tenant, name: &str) -> Resp {
    let Some(record) = registry.get(&tenant.id, name).await else {
        return error(
            404,
            "no_such_handler",
            &format!("tenant {} has no pushed handler named {name}", tenant.id),
        );
    };
    let slot = registry.existing_slot(&tenant.id, name);
    let serving = slot.as_ref().map(|s| s.serving());
    let stats = |v: u32| {
        serving
            .as_ref()?
            .loaded()
            .find(|l| l.version == v)
            .map(|l| l.handler.stats())
    };
    let versions: Vec<Value> = record
        .versions
        .iter()
        .map(|v| {
            json!({
                "version": v.version,
                "digest": v.digest,
                "size": v.size,
                "pushed_at_ms": v.pushed_at_ms,
                "pushed_by": v.pushed_by,
                "stage": record.routing.stage_of(v.version),
                "report": v.report,
                "metrics": stats(v.version),
            })
        })
        .collect();
    let shadow = slot.map(|s| {
        s.shadow
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    });
    let routes: Vec<&String> = tenant
        .config
        .routes
        .iter()
        .filter(|(_, r)| r.handler == name)
        .map(|(k, _)| k)
        .collect();
    json_response(
        200,
        &json!({
            "tenant": tenant.id,
            "name": name,
            "routes": routes,
            "routing": record.routing,
            "stable_history": record.stable_history,
            "versions": versions,
            "shadow": shadow,
        }),
    )
}
