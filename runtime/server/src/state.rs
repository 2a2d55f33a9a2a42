//! What the running server shares between connections ([`ServerState`]):
//! the configuration, the tenants (swapped as a whole by a reload), the
//! sandbox, the backends this node was built on, the control plane's
//! pushed handlers (through [`crate::slot::PushedHandlers`]), the accept
//! stage's counters, and the drain and reload signals every session
//! watches.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::authz;
use crate::backends::history::HistoryQuotas;
use crate::backends::{Backends, Broker, ChannelKey, FleetLink};
use crate::history::History;
use crate::idempotency::SystemClock;
use crate::metrics::{AcceptMetrics, AcceptRefusal};
use crate::presence::{Presence, PresenceQuotas};
use crate::ratelimit::{self, ConnectionCounter, ConnectionSlot, KeyedLimiter, quota};
use crate::slot::PushedHandlers;
use crate::tenant::Tenant;
use sluice_config::{Config, ConfigErrors};
use sluice_idempotency::{IdempotencyTable, Limits};
use sluice_sandbox::Sandbox;

/// How often idle keys are swept from the keyed rate limiters.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Everything the running server shares between connections.
pub struct ServerState {
    /// The configuration it was built from.
    pub config: Config,
    /// Tenants by id; swapped as a whole by a reload.
    tenants: RwLock<Arc<HashMap<String, Arc<Tenant>>>>,
    /// The sandbox every handler runs in.
    pub sandbox: Sandbox,
    /// Who receives what is published (the in-process broker by default).
    pub broker: Arc<dyn Broker>,
    /// Channel history: offsets, epochs, recovery.
    pub history: History,
    /// Who is present in presence channels.
    pub presence: Presence,
    /// The fleet this node is part of, if any.
    pub fleet: Option<Arc<dyn FleetLink>>,
    /// Answers remembered under idempotency keys (`None`: this node takes
    /// no keys; see [`crate::backends::Backends::outcomes`]).
    pub idempotency: Option<IdempotencyTable>,
    /// Handlers tenants push through the management API (the control
    /// plane's, seen through the data path's seam).
    pub pushed: Arc<dyn PushedHandlers>,
    pub(crate) tls: RwLock<Arc<rustls::ServerConfig>>,
    pub(crate) ws_config: WebSocketConfig,
    pub(crate) ip_connections: ConnectionCounter<IpAddr>,
    pub(crate) ip_handshakes: KeyedLimiter<IpAddr>,
    /// Connections between accept and the end of the WebSocket upgrade.
    pub(crate) handshakes_in_flight: ConnectionCounter<()>,
    /// Connections closed at accept, by reason (`/metrics`).
    pub refused: AcceptMetrics,
    pub(crate) next_id: AtomicU64,
    /// The bearer token POST endpoints of the admin listener require;
    /// swapped by a reload.
    admin_token: RwLock<Option<Arc<str>>>,
    /// Held for the whole of a reload: two reloads never interleave, and the
    /// one asked for last is the one that stays.
    reload_lock: tokio::sync::Mutex<()>,
    /// Set to true when the server drains. Every session holds a receiver:
    /// the drain waits until none is left.
    pub(crate) shutdown: tokio::sync::watch::Sender<bool>,
    /// Notified when the server drains: every session waits on it.
    pub(crate) draining: tokio::sync::Notify,
}

impl ServerState {
    /// Build everything the configuration describes on `backends`: TLS,
    /// keys, schemas, handlers (configured ones into `sandbox`, pushed ones
    /// through `pushed`). Reports every problem at once.
    pub async fn build(
        config: Config,
        sandbox: Sandbox,
        backends: Backends,
        pushed: Arc<dyn PushedHandlers>,
    ) -> Result<Arc<Self>, ConfigErrors> {
        let s = &config.server;
        let mut problems = Vec::new();
        let admin_token = config
            .admin_token()
            .map_err(|e| problems.push(e))
            .ok()
            .flatten();
        let (tls, tenants) = load_parts(&config, &sandbox, pushed.as_ref(), None, problems).await?;
        let idempotency = backends.outcomes.clone().map(|store| {
            IdempotencyTable::new(Limits::default(), store, Arc::new(SystemClock), node_id())
        });
        set_quotas(&sandbox, idempotency.as_ref(), &tenants);
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(s.max_message_bytes))
            .max_frame_size(Some(s.max_frame_bytes))
            .read_buffer_size(s.read_buffer_bytes)
            .write_buffer_size(s.write_buffer_bytes)
            .max_write_buffer_size(s.max_outbound_bytes.max(s.write_buffer_bytes + 1))
            .accept_unmasked_frames(false);
        let ip_handshakes =
            KeyedLimiter::new(quota(s.handshakes_per_ip_per_sec, s.handshake_burst_per_ip));
        let Backends {
            broker,
            history,
            presence,
            fleet,
            ..
        } = backends;
        let history = History::new(history);
        history.set_quotas(HistoryQuotas::from_config(&config));
        let presence = Presence::new(presence);
        presence.set_quotas(PresenceQuotas::from_config(&config));
        Ok(Arc::new(Self {
            tls: RwLock::new(tls),
            ws_config,
            ip_connections: ConnectionCounter::default(),
            ip_handshakes,
            handshakes_in_flight: ConnectionCounter::default(),
            refused: AcceptMetrics::default(),
            next_id: AtomicU64::new(1),
            admin_token: RwLock::new(admin_token.map(Arc::from)),
            reload_lock: tokio::sync::Mutex::new(()),
            shutdown: tokio::sync::watch::channel(false).0,
            draining: tokio::sync::Notify::new(),
            broker,
            history,
            presence,
            fleet,
            idempotency,
            pushed,
            tenants: RwLock::new(Arc::new(tenants)),
            sandbox,
            config,
        }))
    }

    /// Connections other nodes of the fleet hold for `tenant` and for its
    /// `subject` (0 without a cluster).
    pub fn connections_elsewhere(&self, tenant: &str, subject: &str) -> (u32, u32) {
        self.fleet
            .as_ref()
            .map_or((0, 0), |f| f.connections_elsewhere(tenant, subject))
    }

    /// Local subscribers of `channel` of `tenant`.
    pub fn subscribers(&self, tenant: &str, channel: &str) -> usize {
        self.broker
            .subscribers(&ChannelKey::new(&Arc::from(tenant), channel))
    }

    /// Whether the server is draining (shutting down).
    pub fn is_draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Start draining: every session finishes the message it is handling
    /// and closes with 1001. A session that starts after this sees
    /// [`Self::is_draining`] (it looks after it has begun to wait).
    pub(crate) fn drain(&self) {
        self.shutdown.send_replace(true);
        self.draining.notify_waiters();
    }

    /// In cluster mode, whether this node is cut off from NATS (it then
    /// refuses new connections and `/readyz` answers 503).
    pub fn is_cut_off(&self) -> bool {
        self.fleet.as_ref().is_some_and(|f| !f.connected())
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A tenant by id, as currently configured.
    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        self.tenants().get(id).cloned()
    }

    /// Every tenant, as currently configured.
    pub fn tenants(&self) -> Arc<HashMap<String, Arc<Tenant>>> {
        self.tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The TLS configuration new connections are accepted with.
    pub(crate) fn tls(&self) -> Arc<rustls::ServerConfig> {
        self.tls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The admin token POST endpoints require, if one is configured.
    pub fn admin_token(&self) -> Option<Arc<str>> {
        self.admin_token
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Apply a new configuration without dropping a connection: tenants,
    /// keys, routes, schemas, handlers and the TLS certificate are rebuilt
    /// and swapped in at once. Every live session then checks itself against
    /// the new configuration at once (a message in flight finishes on the
    /// old one): a removed tenant's connections close (1001), a connection
    /// whose token no longer verifies closes (1008 "key revoked"), and
    /// subscriptions the new channel rules no longer allow are dropped, the
    /// client told with an `unsubscribed` frame. Anything
    /// that fails to load refuses the whole reload, and the old
    /// configuration keeps serving. Listener addresses and engine-wide
    /// sandbox settings need a restart. The admin token is swapped too.
    /// Reloads run one at a time, in the order they were asked for.
    pub async fn reload(&self, config: Config) -> Result<String, ConfigErrors> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let mut problems = Vec::new();
        let admin_token = config
            .admin_token()
            .map_err(|e| problems.push(e))
            .ok()
            .flatten();
        let (old, new) = (&self.config.server, &config.server);
        if old.listen != new.listen || old.admin_listen != new.admin_listen {
            problems.push("server: listen and admin_listen change only with a restart".to_owned());
        }
        if self.config.sandbox != config.sandbox {
            problems.push("sandbox: engine settings change only with a restart".to_owned());
        }
        if self.config.cluster != config.cluster {
            problems.push("cluster: the cluster settings change only with a restart".to_owned());
        }
        if self.config.store != config.store {
            problems.push("store: the store changes only with a restart".to_owned());
        }
        let current = self.tenants();
        // Tenants created through the management API stay as they are; the
        // file may not take one of their ids.
        for (id, t) in current.iter() {
            if t.revision.is_some() && config.tenants.contains_key(id) {
                problems.push(format!(
                    "tenants.{id}: a tenant created through the management API has this id; \
                     remove it there first (`sluice tenant rm {id}`) or choose another id"
                ));
            }
        }
        let (tls, mut tenants) = load_parts(
            &config,
            &self.sandbox,
            self.pushed.as_ref(),
            Some(&current),
            problems,
        )
        .await?;
        for (id, t) in current.iter() {
            if t.revision.is_some() {
                tenants.insert(id.clone(), t.clone());
            }
        }
        let summary = format!(
            "{} tenant(s), {} handler(s)",
            tenants.len(),
            tenants.values().map(|t| t.handlers.len()).sum::<usize>()
        );
        *self.tls.write().unwrap_or_else(PoisonError::into_inner) = tls;
        *self
            .admin_token
            .write()
            .unwrap_or_else(PoisonError::into_inner) = admin_token.map(Arc::from);
        set_quotas(&self.sandbox, self.idempotency.as_ref(), &tenants);
        let tenants = Arc::new(tenants);
        *self.tenants.write().unwrap_or_else(PoisonError::into_inner) = tenants.clone();
        self.history.set_quotas(HistoryQuotas::from_config(&config));
        self.presence
            .set_quotas(PresenceQuotas::from_config(&config));
        // Every session of a tenant of the file checks itself against the
        // new configuration (a removed tenant's sessions find it gone).
        for t in current.values().chain(tenants.values()) {
            if t.revision.is_none() {
                t.changes.notify_waiters();
            }
        }
        Ok(summary)
    }

    /// Build tenant `id` from `tc` as the management API's revision
    /// `revision`, every problem reported (the same checks as the file's),
    /// without installing it: what the API checks before it keeps a change.
    pub async fn build_tenant(
        &self,
        id: &str,
        tc: &sluice_config::TenantConfig,
        revision: u64,
    ) -> Result<Arc<Tenant>, Vec<String>> {
        let current = self.tenant(id);
        let previous = current.as_deref().filter(|p| p.revision.is_some());
        Tenant::load(
            id,
            tc,
            &self.config,
            &self.sandbox,
            self.pushed.as_ref(),
            previous,
            Some(revision),
        )
        .await
    }

    /// Install a tenant of the management API built by [`Self::build_tenant`]
    /// (`None`: remove `id`), without a reload: only that tenant's live
    /// sessions re-check themselves (a removed tenant's close 1001, a
    /// session whose token no longer verifies closes 1008 `key revoked`,
    /// one from an origin no longer allowed 1008 `origin revoked`,
    /// subscriptions the channel rules no longer allow are dropped). A
    /// tenant of the config file is never replaced here: `false`. A change
    /// older than the installed revision is ignored (`false`).
    pub async fn install_tenant(&self, id: &str, tenant: Option<Arc<Tenant>>) -> bool {
        let _one_at_a_time = self.reload_lock.lock().await;
        let current = self.tenants();
        let mut map: HashMap<String, Arc<Tenant>> = (*current).clone();
        let installed = match tenant {
            Some(t) => self.put_tenant(&mut map, t),
            None => match map.get(id) {
                Some(p) if p.revision.is_some() => map.remove(id),
                _ => None,
            }
            .map(Some),
        };
        let Some(previous) = installed else {
            return false;
        };
        *self.tenants.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(map);
        if let Some(p) = previous {
            p.changes.notify_waiters();
        }
        true
    }

    /// Install many tenants of the management API in one swap of the
    /// tenant map (at start: the store's tenants); how many were
    /// installed. The rules of [`Self::install_tenant`] hold for each.
    pub async fn install_tenants(&self, tenants: Vec<Arc<Tenant>>) -> usize {
        let _one_at_a_time = self.reload_lock.lock().await;
        let current = self.tenants();
        let mut map: HashMap<String, Arc<Tenant>> = (*current).clone();
        let mut replaced = Vec::new();
        let mut installed = 0;
        for t in tenants {
            if let Some(previous) = self.put_tenant(&mut map, t) {
                installed += 1;
                replaced.extend(previous);
            }
        }
        *self.tenants.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(map);
        for p in replaced {
            p.changes.notify_waiters();
        }
        installed
    }

    /// Put `t` into `map` unless a tenant of the file has its id or a
    /// newer revision is there: `Some(what it replaced)` when it went in.
    fn put_tenant(
        &self,
        map: &mut HashMap<String, Arc<Tenant>>,
        t: Arc<Tenant>,
    ) -> Option<Option<Arc<Tenant>>> {
        if let Some(p) = map.get(&t.id)
            && (p.revision.is_none() || p.revision >= t.revision)
        {
            return None;
        }
        t.keys.start_refresh();
        self.sandbox.set_quotas(&t.id, &t.config.quotas);
        if let Some(table) = &self.idempotency {
            table.set_limits(&t.id, crate::idempotency::limits(&t.config));
        }
        Some(map.insert(t.id.clone(), t))
    }

    /// Reload from the file the configuration came from.
    pub async fn reload_from_source(&self) -> Result<String, ConfigErrors> {
        let Some(path) = &self.config.source else {
            return Err(ConfigErrors(vec![
                "this server was not started from a config file".into(),
            ]));
        };
        self.reload(Config::load(path)?).await
    }

    /// Connections in the TLS/upgrade phase now.
    pub fn handshakes_in_flight(&self) -> u32 {
        self.handshakes_in_flight.count(&())
    }

    /// The per-IP checks for a client at `ip`: its handshake rate, then a
    /// slot under its connection cap (IPv6 keyed by its prefix). `None`:
    /// close the connection (counted).
    pub(crate) fn admit_ip(&self, ip: IpAddr) -> Option<ConnectionSlot<IpAddr>> {
        let s = &self.config.server;
        let key = ratelimit::ip_key(ip, s.ipv6_prefix_len);
        if self.ip_handshakes.check(&key).is_err() {
            tracing::debug!("handshake rate exceeded for a client address");
            self.refused.count(AcceptRefusal::IpHandshakeRate);
            return None;
        }
        let slot = self.ip_connections.acquire(key, s.max_connections_per_ip);
        if slot.is_none() {
            tracing::debug!("connection cap reached for a client address");
            self.refused.count(AcceptRefusal::IpConnections);
        }
        slot
    }

    /// Whether connections from `peer` must start with a PROXY v2 header.
    pub(crate) fn is_load_balancer(&self, peer: IpAddr) -> bool {
        self.config
            .server
            .proxy_protocol_from
            .iter()
            .any(|c| c.contains(peer))
    }

    pub(crate) async fn sweep(&self) {
        self.ip_handshakes.sweep();
        for t in self.tenants().values() {
            t.subject_limiter.sweep();
        }
        let tenants = self.tenants();
        let rule = |key: &ChannelKey| {
            tenants
                .get(key.tenant.as_ref())
                .and_then(|t| authz::channel_features(&t.channels, &key.channel).history)
        };
        self.history.sweep(SWEEP_INTERVAL * 6, &rule).await;
        if let Some(table) = &self.idempotency {
            table.sweep();
        }
    }

    /// The window (seconds) this node remembers `tenant`'s answers under
    /// keys for, when it takes keys (what its `welcome` says).
    pub fn idempotency_window(&self, tenant: &Tenant) -> Option<u64> {
        self.idempotency
            .as_ref()
            .map(|_| tenant.config.limits.idempotency_window_secs)
    }
}

/// The sandbox a server on `backends` runs handlers in (see
/// [`sandbox_config`]).
pub fn sandbox(config: &Config, backends: &Backends) -> Result<Sandbox, ConfigErrors> {
    Sandbox::with_state(
        sandbox_config(config, backends.keeps_files),
        backends.state.clone(),
    )
    .map_err(|e| ConfigErrors(vec![format!("sandbox: {e:#}")]))
}

/// The sandbox settings, with the compilation cache defaulting to
/// `<data_dir>/compiled` when the server keeps files (a durable store, or a
/// node of a fleet): a restart or reload then loads each compiled component
/// from disk instead of compiling it again (seconds for a 12-18 MB
/// JavaScript or Python component). The directory must be writable; if it
/// cannot be created the server starts without the cache and says so.
pub fn sandbox_config(config: &Config, keeps_files: bool) -> sluice_config::SandboxConfig {
    let mut sandbox = config.sandbox.clone();
    // A configured folder is relative to the config file, like every path;
    // wasmtime's cache wants it absolute.
    if let Some(dir) = &sandbox.cache_dir {
        let dir = config.path(dir);
        sandbox.cache_dir = Some(std::path::absolute(&dir).unwrap_or(dir));
    }
    if sandbox.cache_dir.is_none() && keeps_files {
        let dir = config.path(&config.store.data_dir).join(COMPILED_DIR);
        // wasmtime's cache wants an absolute path.
        match std::fs::create_dir_all(&dir).and_then(|()| std::path::absolute(&dir)) {
            Ok(dir) => sandbox.cache_dir = Some(dir),
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e,
                "no compilation cache: components are compiled at every start"),
        }
    }
    sandbox
}

/// The default compilation cache's folder under `data_dir`.
pub const COMPILED_DIR: &str = "compiled";

/// Hand each tenant's quotas to the sandbox and its limits on keys to the
/// idempotency table (when its configuration takes effect: a refused
/// reload changes nothing).
fn set_quotas(
    sandbox: &Sandbox,
    idempotency: Option<&IdempotencyTable>,
    tenants: &HashMap<String, Arc<Tenant>>,
) {
    for (id, tenant) in tenants {
        sandbox.set_quotas(id, &tenant.config.quotas);
        if let Some(table) = idempotency {
            table.set_limits(id, crate::idempotency::limits(&tenant.config));
        }
    }
}

/// This node's id in a shared store of answers: the claims of a running
/// request are told apart by it. Unique enough: the time, the process id
/// and a hash seed the operating system randomizes.
fn node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// The TLS configuration and the tenants `config` describes, or every
/// problem (added to `problems`). `current` hands live counters over to the
/// new tenants on a reload. Key refresh starts only when everything loaded.
async fn load_parts(
    config: &Config,
    sandbox: &Sandbox,
    pushed: &dyn PushedHandlers,
    current: Option<&HashMap<String, Arc<Tenant>>>,
    mut problems: Vec<String>,
) -> Result<(Arc<rustls::ServerConfig>, HashMap<String, Arc<Tenant>>), ConfigErrors> {
    let s = &config.server;
    let tls = sluice_tls::server_config(&config.path(&s.tls_cert), &config.path(&s.tls_key))
        .map_err(|e| problems.push(format!("server: {e}")))
        .ok();
    let mut tenants = HashMap::new();
    for (id, tc) in &config.tenants {
        let previous = current.and_then(|c| c.get(id)).map(Arc::as_ref);
        match Tenant::load(id, tc, config, sandbox, pushed, previous, None).await {
            Ok(t) => {
                tenants.insert(id.clone(), t);
            }
            Err(p) => problems.extend(p),
        }
    }
    match tls {
        Some(tls) if problems.is_empty() => {
            for t in tenants.values() {
                t.keys.start_refresh();
            }
            Ok((tls, tenants))
        }
        _ => Err(ConfigErrors(problems)),
    }
}
