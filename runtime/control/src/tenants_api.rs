//! `/v1/tenants`: tenants as data, over the management API.
//!
//! ```text
//! GET    /v1/tenants                 the operator: every tenant (id, revision, source)
//! POST   /v1/tenants                 the operator: {id, tenant} -> 201 {id, revision, token, secrets}
//! GET    /v1/tenants/{t}             the operator or t: the tenant (generated secrets hidden)
//! PATCH  /v1/tenants/{t}             the operator or t: {revision, patch} (a JSON merge patch)
//! DELETE /v1/tenants/{t}?revision=N  the operator: remove it; its sessions close 1001
//! POST   /v1/tenants/{t}/keys        the operator or t: {revision?, rotate|add|remove|management_token}
//! ```
//!
//! Who may: the caller was authenticated and its rate checked before this
//! module; here a tenant's token is refused (403) for another tenant's path
//! and for the operator's actions before anything is looked up, so a
//! refusal never tells whether a tenant exists.

use std::net::SocketAddr;

use hyper::Request;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use sluice_server::state::ServerState;

use crate::audit::{Actor, AuditEntry, now_ms};
use crate::http::{Resp, error, json_response, parse_query, read_body, refusal};
use crate::refusal::Refusal;
use crate::registry::Registry;
use crate::tenants::{KeyChange, Tenants};

/// The largest tenant a request may carry (routes with their schemas).
const MAX_TENANT_BODY: usize = 1 << 20;

/// What a request under `/v1/tenants` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantAction {
    /// `GET /v1/tenants`.
    List,
    /// `POST /v1/tenants`.
    Create,
    /// `GET /v1/tenants/{t}`.
    Show,
    /// `PATCH /v1/tenants/{t}`.
    Update,
    /// `DELETE /v1/tenants/{t}`.
    Remove,
    /// `POST /v1/tenants/{t}/keys`.
    Keys,
}

impl TenantAction {
    /// The action of `method` on `segments` (the path after `/v1/`), if it
    /// is one of these.
    pub fn of(method: &hyper::Method, segments: &[&str]) -> Option<Self> {
        use hyper::Method;
        Some(match (method, segments) {
            (&Method::GET, ["tenants"]) => Self::List,
            (&Method::POST, ["tenants"]) => Self::Create,
            (&Method::GET, ["tenants", _]) => Self::Show,
            (&Method::PATCH, ["tenants", _]) => Self::Update,
            (&Method::DELETE, ["tenants", _]) => Self::Remove,
            (&Method::POST, ["tenants", _, "keys"]) => Self::Keys,
            _ => return None,
        })
    }

    /// As the audit log names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::List => "tenant.list",
            Self::Create => "tenant.create",
            Self::Show => "tenant.show",
            Self::Update => "tenant.update",
            Self::Remove => "tenant.remove",
            Self::Keys => "tenant.keys",
        }
    }

    /// Only the operator may.
    fn operators_only(self) -> bool {
        matches!(self, Self::List | Self::Create | Self::Remove)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    id: String,
    tenant: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    revision: u64,
    patch: Value,
}

struct Audit<'a> {
    registry: &'a Registry,
    actor: &'a Actor,
    from: SocketAddr,
    action: TenantAction,
    tenant: Option<String>,
}

impl Audit<'_> {
    async fn record(&self, outcome: &str, detail: impl Into<String>) {
        self.registry
            .record_audit(AuditEntry {
                seq: 0,
                at_ms: now_ms(),
                actor: self.actor.name(),
                from: self.from.to_string(),
                action: self.action.name().to_owned(),
                tenant: self.tenant.clone(),
                handler: None,
                version: None,
                outcome: outcome.to_owned(),
                detail: detail.into(),
            })
            .await;
    }

    async fn refused(&self, r: &Refusal) -> Resp {
        let outcome = if r.status == 401 || r.status == 403 {
            "refused"
        } else {
            "failed"
        };
        let mut detail = r.message.clone();
        if !r.problems.is_empty() {
            detail = format!("{detail}: {}", r.problems.join("; "));
        }
        self.record(outcome, detail).await;
        refusal(r)
    }
}

/// Answer one request under `/v1/tenants` from an authenticated `actor`.
#[allow(clippy::too_many_arguments)]
pub async fn respond(
    req: Request<Incoming>,
    action: TenantAction,
    path_tenant: Option<&str>,
    actor: &Actor,
    from: SocketAddr,
    state: &ServerState,
    tenants: &Tenants,
    registry: &Registry,
) -> Resp {
    let operator = *actor == Actor::Operator;
    let path_tenant = path_tenant.map(str::to_owned);
    let mut audit = Audit {
        registry,
        actor,
        from,
        action,
        // A path's tenant is recorded only once the caller may see it.
        tenant: None,
    };
    // Refused before anything is looked up: no answer tells whether a
    // tenant exists.
    if !operator && action.operators_only() {
        return audit
            .refused(&Refusal::new(
                403,
                "forbidden",
                "only the operator lists, creates and removes tenants",
            ))
            .await;
    }
    if let Some(t) = &path_tenant
        && !actor.may_manage(t)
    {
        return audit
            .refused(&Refusal::new(
                403,
                "forbidden",
                "this token manages another tenant",
            ))
            .await;
    }
    audit.tenant = path_tenant.clone().filter(|t| sluice_config::is_name(t));
    let id = path_tenant.clone().unwrap_or_default();
    match action {
        TenantAction::List => json_response(200, &json!({ "tenants": tenants.list(state) })),
        TenantAction::Show => match tenants.show(state, &id) {
            Some(t) => json_response(200, &t),
            None => error(404, "no_such_tenant", &format!("no tenant {id}")),
        },
        TenantAction::Create => {
            let body: CreateBody = match body(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            audit.tenant = Some(body.id.clone()).filter(|t| sluice_config::is_name(t));
            match tenants.create(state, &body.id, body.tenant).await {
                Ok(created) => {
                    audit
                        .record("ok", format!("created at revision {}", created.revision))
                        .await;
                    json_response(201, &serde_json::to_value(&created).unwrap_or(Value::Null))
                }
                Err(r) => audit.refused(&r).await,
            }
        }
        TenantAction::Update => {
            let body: UpdateBody = match body(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match tenants
                .update(state, &id, body.revision, &body.patch, operator)
                .await
            {
                Ok(changed) => {
                    audit
                        .record(
                            "ok",
                            format!(
                                "revision {} -> {}: {}",
                                body.revision, changed.revision, body.patch
                            ),
                        )
                        .await;
                    json_response(200, &serde_json::to_value(&changed).unwrap_or(Value::Null))
                }
                Err(r) => audit.refused(&r).await,
            }
        }
        TenantAction::Remove => {
            let query = parse_query(req.uri().query());
            let revision = match query.iter().find(|(k, _)| k == "revision") {
                Some((_, v)) => match v.parse::<u64>() {
                    Ok(r) => Some(r),
                    Err(_) => return error(400, "bad_request", "revision is a number"),
                },
                None => None,
            };
            match tenants.remove(state, &id, revision).await {
                Ok(r) => {
                    audit.record("ok", format!("removed (revision {r})")).await;
                    json_response(200, &json!({ "id": id, "removed": true, "revision": r }))
                }
                Err(r) => audit.refused(&r).await,
            }
        }
        TenantAction::Keys => {
            let mut change: KeyChange = match body(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            change.operator = operator;
            let what = format!(
                "{}{}{}{}",
                change
                    .rotate
                    .as_ref()
                    .map_or(String::new(), |a| format!("rotate to a new {a} key; ")),
                change.add.as_ref().map_or(String::new(), |k| format!(
                    "add key {}; ",
                    k.get("kid").unwrap_or(&Value::Null)
                )),
                change
                    .remove
                    .as_ref()
                    .map_or(String::new(), |k| format!("remove key {k}; ")),
                if change.management_token {
                    "new management token"
                } else {
                    ""
                },
            );
            match tenants.keys(state, &id, change).await {
                Ok(changed) => {
                    audit
                        .record(
                            "ok",
                            format!(
                                "revision {}: {}",
                                changed.revision,
                                what.trim_end_matches("; ")
                            ),
                        )
                        .await;
                    json_response(200, &serde_json::to_value(&changed).unwrap_or(Value::Null))
                }
                Err(r) => audit.refused(&r).await,
            }
        }
    }
}

/// A JSON body of `T`, or the answer that says why not.
async fn body<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Resp> {
    let bytes = read_body(req, MAX_TENANT_BODY).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| error(400, "bad_request", &format!("the request body: {e}")))
}
