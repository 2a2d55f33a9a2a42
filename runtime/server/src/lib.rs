//! The server: the pipeline from TCP accept to a handler's effects.
//!
//! ```text
//! accept     handshakes-in-flight cap; PROXY v2 from configured load
//!            balancers (proxy.rs); per-IP (IPv6: per-/64) connection cap
//!            and handshake rate                                       (mod.rs)
//! tls        rustls, wss only                                         (tls.rs)
//! handshake  path -> tenant, Origin, token, connection caps           (handshake.rs)
//! auth       JWT -> Principal                                         (auth.rs)
//! session    one task per connection, bounded reads and queue         (session/)
//! decode     UTF-8, JSON depth, envelope -> Request                   (stages/decode.rs)
//! limit      connection, subject, tenant quotas                       (ratelimit.rs)
//! authorize  route scopes, channel rules -> Authorized                (stages/authorize.rs, authz.rs)
//! validate   the route's JSON Schema -> Validated                     (stages/validate.rs, validate.rs)
//! call       the tenant's handler under limits -> Proposed            (stages/call.rs, sluice-sandbox)
//! effects    every returned action authorized again -> Vec<Effect>    (stages/effects.rs)
//! broker     who receives what is published                           (broker.rs)
//! history    offsets, epochs, recovery of missed events               (history.rs)
//! presence   who is subscribed, join/leave with debounce              (presence.rs)
//! cluster    a fleet on NATS: broker, history, state, presence, caps  (cluster/)
//! marketplace pushed handlers: management API, verify, versions,
//!            canary/shadow routing, audit                             (marketplace/)
//! store      handler state and history on disk (sluice-store)         (durable_state.rs)
//! outbox     per-connection bounded queues                            (outbox.rs)
//! rejection  sandbox and read failures -> what the client sees        (rejection.rs)
//! ```

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod authz;
pub mod broker;
pub mod cluster;
pub mod durable_state;
pub mod handshake;
pub mod history;
pub mod jwks;
pub mod marketplace;
pub mod metrics;
pub mod outbox;
pub mod presence;
pub mod proxy;
pub mod ratelimit;
pub mod rejection;
pub mod session;
pub mod stages;
pub mod tenant;
pub mod validate;

pub use sluice_protocol as protocol;
pub use sluice_tls as tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use ratelimit::{ConnectionCounter, KeyedLimiter, quota};
use sluice_config::{Config, ConfigErrors, StoreKind};
use sluice_sandbox::{Sandbox, StateStore};
use tenant::Tenant;

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
    pub broker: Arc<dyn broker::Broker>,
    /// Channel history: offsets, epochs, recovery.
    pub history: history::History,
    /// Who is present in presence channels.
    pub presence: presence::Presence,
    /// Cluster mode: this node's link to the fleet (NATS).
    pub cluster: Option<Arc<cluster::Cluster>>,
    /// Handlers tenants push through the management API.
    pub registry: marketplace::Registry,
    tls: RwLock<TlsAcceptor>,
    ws_config: WebSocketConfig,
    ip_connections: ConnectionCounter<IpAddr>,
    ip_handshakes: KeyedLimiter<IpAddr>,
    /// Connections between accept and the end of the WebSocket upgrade.
    handshakes_in_flight: ConnectionCounter<()>,
    /// Connections closed at accept, by reason (`/metrics`).
    pub refused: metrics::AcceptMetrics,
    next_id: AtomicU64,
    /// The bearer token POST endpoints of the admin listener require;
    /// swapped by a reload.
    admin_token: RwLock<Option<Arc<str>>>,
    /// Held for the whole of a reload: two reloads never interleave, and the
    /// one asked for last is the one that stays.
    reload_lock: tokio::sync::Mutex<()>,
    /// Set to true when the server drains; every session watches it.
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Bumped by every reload; every session watches it and checks itself
    /// against the new configuration at once.
    reloads: tokio::sync::watch::Sender<u64>,
}

impl ServerState {
    /// Build everything the configuration describes: TLS, keys, schemas,
    /// handlers. Reports every problem at once.
    pub async fn build(config: Config) -> Result<Arc<Self>, ConfigErrors> {
        Self::build_with_state(config, None).await
    }

    /// Like [`ServerState::build`], with handler state kept in `state`
    /// (and channel history in memory) instead of the configured store; a
    /// `[cluster]` table is checked but NATS is not contacted (what
    /// `sluice check` does).
    pub async fn build_with_state(
        config: Config,
        state: Option<Arc<dyn StateStore>>,
    ) -> Result<Arc<Self>, ConfigErrors> {
        let s = &config.server;
        // Only a server on its configured store gets the default on-disk
        // compilation cache (`sluice check` and tests with a given state
        // write nothing).
        let built_on_store = state.is_none();
        // With a given state (`sluice check`) nothing is contacted.
        let cluster = match &config.cluster {
            Some(c) if built_on_store => Some(Arc::new(
                cluster::Cluster::connect(&config, c)
                    .await
                    .map_err(|e| ConfigErrors(vec![e]))?,
            )),
            _ => None,
        };
        let mut registry_source = marketplace::Source::Memory;
        let (state, history): (Arc<dyn StateStore>, history::History) = match (state, &cluster) {
            (Some(st), _) => (st, history::History::in_memory()),
            // A node of a fleet keeps nothing of its own: handler state on
            // JetStream KV, channel history on JetStream.
            (None, Some(c)) => (
                c.state.clone(),
                history::History::cluster(c.history.clone()),
            ),
            (None, None) => match config.store.kind {
                StoreKind::Memory => (
                    sluice_sandbox::MemoryStateStore::new(),
                    history::History::in_memory(),
                ),
                StoreKind::Durable => {
                    let dir = config.path(&config.store.data_dir);
                    let opened = sluice_store::Store::open(&dir)
                        .map_err(|e| ConfigErrors(vec![format!("store.data_dir: {e}")]))?;
                    if opened.unclean {
                        tracing::warn!(data_dir = %dir.display(),
                            "the last run did not shut down cleanly: channel offsets jump past any that may have been lost");
                    }
                    tracing::info!(data_dir = %dir.display(), keys = opened.state.len(),
                        channels = opened.channels.len(), pushed_handlers = opened.handlers.len(),
                        "durable store opened");
                    registry_source = marketplace::Source::Durable((
                        opened.store.clone(),
                        opened.handlers,
                        opened.audit,
                    ));
                    (
                        durable_state::DurableState::new(opened.store.clone(), opened.state),
                        history::History::durable(opened.store, opened.channels, opened.unclean),
                    )
                }
            },
        };
        let broker: Arc<dyn broker::Broker> = match &cluster {
            Some(c) => c.broker.clone(),
            None => Arc::new(broker::LocalBroker::default()),
        };
        let sandbox = Sandbox::with_state(sandbox_config(&config, built_on_store), state)
            .map_err(|e| ConfigErrors(vec![format!("sandbox: {e:#}")]))?;
        let mut problems = Vec::new();
        let admin_token = config
            .admin_token()
            .map_err(|e| problems.push(e))
            .ok()
            .flatten();
        if let Some(c) = &cluster {
            registry_source =
                marketplace::Source::Fleet(c.registry.clone(), c.take_registry_records());
        }
        let registry = marketplace::Registry::open(sandbox.clone(), registry_source);
        let (tls, tenants) = load_parts(&config, &sandbox, &registry, None, problems).await?;
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(s.max_message_bytes))
            .max_frame_size(Some(s.max_frame_bytes))
            .read_buffer_size(s.read_buffer_bytes)
            .write_buffer_size(s.write_buffer_bytes)
            .max_write_buffer_size(s.max_outbound_bytes.max(s.write_buffer_bytes + 1))
            .accept_unmasked_frames(false);
        let ip_handshakes =
            KeyedLimiter::new(quota(s.handshakes_per_ip_per_sec, s.handshake_burst_per_ip));
        let presence = presence::Presence::default();
        if let Some(c) = &cluster {
            presence.join_fleet(c.presence.clone());
        }
        let state = Arc::new(Self {
            tls: RwLock::new(TlsAcceptor::from(tls)),
            ws_config,
            ip_connections: ConnectionCounter::default(),
            ip_handshakes,
            handshakes_in_flight: ConnectionCounter::default(),
            refused: metrics::AcceptMetrics::default(),
            next_id: AtomicU64::new(1),
            admin_token: RwLock::new(admin_token.map(Arc::from)),
            reload_lock: tokio::sync::Mutex::new(()),
            shutdown: tokio::sync::watch::channel(false).0,
            reloads: tokio::sync::watch::channel(0).0,
            broker,
            history,
            presence,
            cluster,
            registry,
            tenants: RwLock::new(Arc::new(tenants)),
            sandbox,
            config,
        });
        if let Some(c) = &state.cluster {
            c.start_counts(Arc::downgrade(&state));
            c.start_registry(Arc::downgrade(&state))
                .await
                .map_err(|e| ConfigErrors(vec![e]))?;
        }
        Ok(state)
    }

    /// Connections other nodes of the fleet hold for `tenant` and for its
    /// `subject` (0 without a cluster).
    pub fn connections_elsewhere(&self, tenant: &str, subject: &str) -> (u32, u32) {
        self.cluster
            .as_ref()
            .map_or((0, 0), |c| c.counts.elsewhere(tenant, subject))
    }

    /// Local subscribers of `channel` of `tenant`.
    pub fn subscribers(&self, tenant: &str, channel: &str) -> usize {
        self.broker
            .subscribers(&broker::ChannelKey::new(&Arc::from(tenant), channel))
    }

    /// Whether the server is draining (shutting down).
    pub fn is_draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// In cluster mode, whether this node is cut off from NATS (it then
    /// refuses new connections and `/readyz` answers 503).
    pub fn is_cut_off(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| !c.connected())
    }

    fn next_connection_id(&self) -> u64 {
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

    fn tls(&self) -> TlsAcceptor {
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
        let (tls, tenants) = load_parts(
            &config,
            &self.sandbox,
            &self.registry,
            Some(&current),
            problems,
        )
        .await?;
        let summary = format!(
            "{} tenant(s), {} handler(s)",
            tenants.len(),
            tenants.values().map(|t| t.handlers.len()).sum::<usize>()
        );
        *self.tls.write().unwrap_or_else(PoisonError::into_inner) = TlsAcceptor::from(tls);
        *self
            .admin_token
            .write()
            .unwrap_or_else(PoisonError::into_inner) = admin_token.map(Arc::from);
        *self.tenants.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tenants);
        self.reloads.send_modify(|n| *n += 1);
        Ok(summary)
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
    fn admit_ip(&self, ip: IpAddr) -> Option<ratelimit::ConnectionSlot<IpAddr>> {
        let s = &self.config.server;
        let key = ratelimit::ip_key(ip, s.ipv6_prefix_len);
        if self.ip_handshakes.check(&key).is_err() {
            tracing::debug!("handshake rate exceeded for a client address");
            self.refused.count(metrics::AcceptRefusal::IpHandshakeRate);
            return None;
        }
        let slot = self.ip_connections.acquire(key, s.max_connections_per_ip);
        if slot.is_none() {
            tracing::debug!("connection cap reached for a client address");
            self.refused.count(metrics::AcceptRefusal::IpConnections);
        }
        slot
    }

    /// Whether connections from `peer` must start with a PROXY v2 header.
    fn is_load_balancer(&self, peer: IpAddr) -> bool {
        self.config
            .server
            .proxy_protocol_from
            .iter()
            .any(|c| c.contains(peer))
    }

    async fn sweep(&self) {
        self.ip_handshakes.sweep();
        for t in self.tenants().values() {
            t.subject_limiter.sweep();
        }
        let tenants = self.tenants();
        self.history
            .sweep(self.broker.as_ref(), SWEEP_INTERVAL * 6, |key| {
                tenants
                    .get(key.tenant.as_ref())
                    .and_then(|t| authz::channel_features(&t.channels, &key.channel).history)
            })
            .await;
    }
}

/// The sandbox settings, with the compilation cache defaulting to
/// `<data_dir>/compiled` when the server keeps files (a durable store, or a
/// node of a fleet): a restart or reload then loads each compiled component
/// from disk instead of compiling it again (seconds for a 12-18 MB
/// JavaScript or Python component). The directory must be writable; if it
/// cannot be created the server starts without the cache and says so.
fn sandbox_config(config: &Config, on_store: bool) -> sluice_config::SandboxConfig {
    let mut sandbox = config.sandbox.clone();
    // A configured folder is relative to the config file, like every path;
    // wasmtime's cache wants it absolute.
    if let Some(dir) = &sandbox.cache_dir {
        let dir = config.path(dir);
        sandbox.cache_dir = Some(std::path::absolute(&dir).unwrap_or(dir));
    }
    let keeps_files = config.store.kind == StoreKind::Durable || config.cluster.is_some();
    if sandbox.cache_dir.is_none() && on_store && keeps_files {
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

/// The TLS configuration and the tenants `config` describes, or every
/// problem (added to `problems`). `current` hands live counters over to the
/// new tenants on a reload. Key refresh starts only when everything loaded.
async fn load_parts(
    config: &Config,
    sandbox: &Sandbox,
    registry: &marketplace::Registry,
    current: Option<&HashMap<String, Arc<Tenant>>>,
    mut problems: Vec<String>,
) -> Result<(Arc<rustls::ServerConfig>, HashMap<String, Arc<Tenant>>), ConfigErrors> {
    let s = &config.server;
    let tls = tls::server_config(&config.path(&s.tls_cert), &config.path(&s.tls_key))
        .map_err(|e| problems.push(format!("server: {e}")))
        .ok();
    let mut tenants = HashMap::new();
    for (id, tc) in &config.tenants {
        let previous = current.and_then(|c| c.get(id)).map(Arc::as_ref);
        match Tenant::load(id, tc, config, sandbox, registry, previous).await {
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

/// A bound server.
pub struct Server {
    state: Arc<ServerState>,
    listener: TcpListener,
    admin: Option<TcpListener>,
}

impl Server {
    /// Build the state and bind the configured address.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let listen = config.server.listen;
        let state = ServerState::build(config).await?;
        Self::bind_state(state, listen).await
    }

    /// Bind `addr` for prepared state.
    pub async fn bind_state(state: Arc<ServerState>, addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let admin = match state.config.server.admin_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {a} (admin): {e}"))?,
            ),
            None => None,
        };
        Ok(Self {
            state,
            listener,
            admin,
        })
    }

    /// A server on listeners bound by the caller (the dev server binds its
    /// admin listener itself, falling back to a free port).
    pub fn from_listeners(
        state: Arc<ServerState>,
        listener: TcpListener,
        admin: Option<TcpListener>,
    ) -> Self {
        Self {
            state,
            listener,
            admin,
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.state.config.server.listen)
    }

    /// The address of the admin listener, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared state.
    pub fn state(&self) -> &Arc<ServerState> {
        &self.state
    }

    /// Accept connections until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let state = self.state;
        let admin = self
            .admin
            .map(|listener| tokio::spawn(admin::serve(listener, Arc::downgrade(&state))));
        let sweeper = {
            let state = Arc::downgrade(&state);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_INTERVAL);
                loop {
                    tick.tick().await;
                    match state.upgrade() {
                        Some(s) => s.sweep().await,
                        None => return,
                    }
                }
            })
        };
        let handshake_deadline = Duration::from_millis(state.config.server.handshake_timeout_ms);
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            // Every connection in TLS/upgrade holds a file descriptor and
            // ~9 KB: past the cap a new one is closed at once, before any
            // read, whoever it is from.
            let Some(in_flight) = state
                .handshakes_in_flight
                .acquire((), state.config.server.max_handshakes_in_flight)
            else {
                tracing::debug!("too many handshakes in flight");
                state
                    .refused
                    .count(metrics::AcceptRefusal::HandshakesInFlight);
                continue;
            };
            // A direct client is checked here, before a task exists; behind
            // a load balancer the client's address comes in the PROXY
            // header, read in the connection's task under the deadline.
            let behind_proxy = state.is_load_balancer(peer.ip());
            let ip_slot = if behind_proxy {
                None
            } else {
                match state.admit_ip(peer.ip()) {
                    Some(slot) => Some(slot),
                    None => continue,
                }
            };
            let _ = tcp.set_nodelay(true);
            let state = state.clone();
            tokio::spawn(async move {
                // The handshake's state (TLS, HTTP upgrade: ~9 KB) lives on
                // the heap and is freed once it is done, so that an idle
                // connection's task holds only the session.
                let handshake = Box::pin(async {
                    let mut tcp = tcp;
                    let ip_slot = match ip_slot {
                        Some(slot) => slot,
                        None => {
                            let client = match proxy::read_header(&mut tcp).await {
                                Ok(client) => client.unwrap_or(peer.ip()),
                                Err(e) => {
                                    tracing::debug!(error = %e, "load balancer connection refused");
                                    state.refused.count(metrics::AcceptRefusal::ProxyHeader);
                                    return None;
                                }
                            };
                            state.admit_ip(client)?
                        }
                    };
                    // The socket (~3.5 KB: rustls' connection and the
                    // WebSocket's state) is boxed here: the result of the
                    // handshake keeps its place in this task's future for
                    // the whole session, so it must be small.
                    handshake::accept(&state, tcp)
                        .await
                        .map(|(socket, admitted)| ((Box::new(socket), admitted), ip_slot))
                });
                let accepted = tokio::time::timeout(handshake_deadline, handshake).await;
                drop(in_flight);
                match accepted {
                    Ok(Some(((socket, admitted), _ip_slot))) => {
                        session::run(state, socket, admitted).await
                    }
                    Ok(None) => {}
                    Err(_) => tracing::debug!("handshake deadline passed"),
                }
            });
        }
        sweeper.abort();
        // Drain (readyz answers 503 from here on): every session finishes the message it is handling, applies
        // its effects, sends close 1001 and ends; wait for all of them, but
        // no longer than the drain time.
        state.shutdown.send_replace(true);
        let drain = Duration::from_millis(state.config.server.drain_timeout_ms);
        if tokio::time::timeout(drain, state.shutdown.closed())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = state.shutdown.receiver_count(),
                "drain time passed with connections still open"
            );
        }
        if let Some(admin) = admin {
            admin.abort();
        }
        // Everything queued for the disk is written; the store records a
        // clean shutdown and releases its data_dir.
        state.history.close();
        if let Some(c) = &state.cluster {
            c.close().await;
        }
    }
}
