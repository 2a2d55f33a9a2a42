//! A tenant as the server runs it: keys, routes with compiled schemas,
//! loaded handlers, channel rules, limiters and connection counters, all
//! built from config once, with every problem reported.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use governor::DefaultDirectRateLimiter;

use crate::auth::KeySet;
use crate::authz::ChannelRule;
use crate::metrics::TenantMetrics;
use crate::ratelimit::{self, ConnectionCounter, KeyedLimiter, quota};
use crate::schema::Schema;
use crate::slot::{HandlerSlot, PushedHandlers};
use sluice_config::{ChannelAccess, Config, TenantConfig};
use sluice_sandbox::{Handler, HandlerSpec, Sandbox};

/// The handler a route goes to.
#[derive(Clone)]
pub enum RouteHandler {
    /// One named in the config file.
    Configured(Handler),
    /// One pushed through the management API: the version is picked per
    /// connection, message by message.
    Pushed(Arc<dyn HandlerSlot>),
}

/// One route, ready to serve.
pub struct Route {
    /// The handler that receives it.
    pub handler: RouteHandler,
    /// Scopes required.
    pub scopes: Vec<String>,
    /// What the route does with its channel.
    pub channel: ChannelAccess,
    /// The compiled schema of `data`.
    pub schema: Option<Schema>,
}

/// A tenant, ready to serve.
pub struct Tenant {
    /// Its id.
    pub id: String,
    /// Its id as the first part of broker keys.
    pub key: Arc<str>,
    /// Which life of this tenant id this is: kept across reloads, new when
    /// the id is removed and added again (old sessions never adopt it).
    pub incarnation: u64,
    /// Where it comes from: `None` the config file, `Some(revision)` the
    /// management API (the revision of its record).
    pub revision: Option<u64>,
    /// Notified (`notify_waiters`) when this tenant changes (a reload, an
    /// API update or removal): its live sessions, and only they, re-check
    /// themselves. Shared by every version of one incarnation. A session
    /// waits on one `Notified` (64 bytes) for its whole life, where a watch
    /// channel's receiver and `changed()` future took 136.
    pub changes: Arc<tokio::sync::Notify>,
    /// Its configuration.
    pub config: TenantConfig,
    /// Its verification keys.
    pub keys: KeySet,
    /// Routes by message type.
    pub routes: HashMap<String, Route>,
    /// Handlers by name (the config file's).
    pub handlers: BTreeMap<String, Handler>,
    /// The JSON Schemas of routes, as written (inline or from their file).
    pub schema_sources: HashMap<String, serde_json::Value>,
    /// The tenant's management token (`[tenants.<id>.managed] token`).
    pub managed_token: Option<Arc<str>>,
    /// Channel rules.
    pub channels: Vec<ChannelRule>,
    /// Messages per subject, over all its connections. Shared with the
    /// tenant a reload replaces when the rate did not change.
    pub subject_limiter: Arc<KeyedLimiter<String>>,
    /// Messages over the whole tenant; carried over like `subject_limiter`.
    pub tenant_limiter: Arc<DefaultDirectRateLimiter>,
    /// Live connections per subject.
    pub subject_connections: ConnectionCounter<String>,
    /// Live connections of the tenant.
    pub connections: ConnectionCounter<()>,
    /// Counters for `/metrics`.
    pub metrics: Arc<TenantMetrics>,
}

impl Tenant {
    /// Build a tenant: load keys, compile schemas (off the async runtime),
    /// load handlers into the sandbox.
    pub async fn load(
        id: &str,
        tc: &TenantConfig,
        config: &Config,
        sandbox: &Sandbox,
        pushed_handlers: &dyn PushedHandlers,
        previous: Option<&Tenant>,
        revision: Option<u64>,
    ) -> Result<Arc<Tenant>, Vec<String>> {
        let mut problems = Vec::new();
        let at = format!("tenants.{id}");
        // The claims a connection keeps: what its channel rules and the
        // handler's view of the principal can read.
        let mut kept_claims: std::collections::BTreeSet<String> =
            tc.exposed_claims.iter().cloned().collect();
        for rule in &tc.channels {
            if let Ok(pattern) = crate::authz::ChannelPattern::parse(&rule.pattern) {
                kept_claims.extend(pattern.claims().map(str::to_owned));
            }
        }
        let keys = KeySet::load(id, &tc.auth, &tc.scopes_claim, kept_claims, config)
            .await
            .map_err(|p| problems.extend(p))
            .ok();

        let mut handlers = BTreeMap::new();
        for (name, hc) in &tc.handlers {
            let spec = HandlerSpec::new(name.clone(), id)
                .isolation(hc.isolation)
                .limits(hc.limits.clone())
                .grant(hc.grants.iter().copied());
            match sandbox.load_file(&config.path(&hc.component), spec).await {
                Ok(h) => {
                    handlers.insert(name.clone(), h);
                }
                Err(e) => problems.push(format!("{at}.handlers.{name}: {e}")),
            }
        }

        let managed_token = config
            .managed_token(id)
            .map_err(|e| problems.push(e))
            .ok()
            .flatten()
            .map(Arc::from);
        // Pushed handlers: every one the registry keeps for this tenant and
        // every one a route names, ready for the tenant's managed settings.
        let mut pushed = BTreeMap::new();
        if let Some(managed) = &tc.managed {
            let mut names = pushed_handlers.names(id).await;
            names.extend(
                tc.routes
                    .values()
                    .filter(|r| !handlers.contains_key(&r.handler))
                    .map(|r| r.handler.clone()),
            );
            for name in names {
                if pushed.contains_key(&name) || handlers.contains_key(&name) {
                    continue;
                }
                match pushed_handlers.slot(id, &name, managed).await {
                    Ok(slot) => {
                        pushed.insert(name, slot);
                    }
                    Err(p) => problems.extend(p),
                }
            }
        }

        let mut schema_sources = HashMap::new();
        let mut routes = HashMap::new();
        for (route, rc) in &tc.routes {
            let schema_value = match (&rc.schema, &rc.schema_file) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(file)) => {
                    let path = config.path(file);
                    match sluice_config::read_json::<serde_json::Value>(&path) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            problems.push(format!("{at}.routes.{route}: schema_file: {e}"));
                            continue;
                        }
                    }
                }
                (None, None) => None,
            };
            if let Some(v) = &schema_value {
                schema_sources.insert(route.clone(), v.clone());
            }
            let schema = match schema_value {
                Some(v) => match tokio::task::spawn_blocking(move || Schema::compile(&v)).await {
                    Ok(Ok(s)) => Some(s),
                    Ok(Err(e)) => {
                        problems.push(format!("{at}.routes.{route}: {e}"));
                        continue;
                    }
                    Err(e) => {
                        problems.push(format!("{at}.routes.{route}: schema compiler failed: {e}"));
                        continue;
                    }
                },
                None => None,
            };
            let handler = match (handlers.get(&rc.handler), pushed.get(&rc.handler)) {
                (Some(h), _) => Some(RouteHandler::Configured(h.clone())),
                (None, Some(slot)) => Some(RouteHandler::Pushed(slot.clone())),
                (None, None) => None,
            };
            if let Some(handler) = handler {
                routes.insert(
                    route.clone(),
                    Route {
                        handler,
                        scopes: rc.scopes.clone(),
                        channel: rc.channel,
                        schema,
                    },
                );
            }
        }

        let mut channels = Vec::new();
        for rule in &tc.channels {
            match ChannelRule::compile(rule) {
                Ok(r) => channels.push(r),
                Err(e) => problems.push(format!("{at}.channels: {e}")),
            }
        }

        let (Some(keys), true) = (keys, problems.is_empty()) else {
            return Err(problems);
        };
        let limits = &tc.limits;
        // A reload keeps the rate-limit buckets (a subject over its rate
        // stays over it: reloading must not lift limits) unless the rate
        // itself changed.
        let same_rate = |rate: fn(&sluice_config::TenantLimits) -> u32| {
            previous.filter(|p| rate(&p.config.limits) == rate(limits))
        };
        let subject_limiter = match same_rate(|l| l.subject_messages_per_sec) {
            Some(p) => p.subject_limiter.clone(),
            None => Arc::new(KeyedLimiter::new(quota(
                limits.subject_messages_per_sec,
                limits.subject_messages_per_sec.saturating_mul(2),
            ))),
        };
        let tenant_limiter = match same_rate(|l| l.tenant_messages_per_sec) {
            Some(p) => p.tenant_limiter.clone(),
            None => Arc::new(ratelimit::direct(quota(
                limits.tenant_messages_per_sec,
                limits.tenant_messages_per_sec.saturating_mul(2),
            ))),
        };
        Ok(Arc::new(Tenant {
            id: id.to_owned(),
            key: Arc::from(id),
            incarnation: previous.map_or_else(next_incarnation, |p| p.incarnation),
            revision,
            changes: previous.map_or_else(
                || Arc::new(tokio::sync::Notify::new()),
                |p| p.changes.clone(),
            ),
            config: tc.clone(),
            keys,
            routes,
            handlers,
            schema_sources,
            managed_token,
            channels,
            subject_limiter,
            tenant_limiter,
            // A reload keeps the live counts: connections admitted under the
            // old configuration still hold their slots.
            subject_connections: previous
                .map(|p| p.subject_connections.clone())
                .unwrap_or_default(),
            connections: previous.map(|p| p.connections.clone()).unwrap_or_default(),
            metrics: previous.map(|p| p.metrics.clone()).unwrap_or_default(),
        }))
    }

    /// The claims handlers may see, as a JSON object.
    pub fn exposed_claims(&self, claims: &crate::authz::Claims) -> String {
        let exposed: serde_json::Map<String, serde_json::Value> = self
            .config
            .exposed_claims
            .iter()
            .filter_map(|name| claims.get(name).map(|v| (name.clone(), v.clone())))
            .collect();
        serde_json::Value::Object(exposed).to_string()
    }
}

/// A new tenant incarnation number.
fn next_incarnation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
