//! A node, composed: the one place that knows every crate and chooses the
//! backends for the configured mode.
//!
//! ```text
//! [store] kind = "memory"    Backends::memory()     (sluice-server)
//! [store] kind = "durable"   Backends::durable(dir) (sluice-server, on sluice-store)
//! [cluster]                  Cluster::backends()    (sluice-fleet, on NATS)
//! ```
//!
//! Then the sandbox (on the backends' state store), the control plane's
//! registry (on the backends' registry storage), and the data path's
//! server state with the registry plugged in as its pushed handlers; in a
//! fleet, the node starts gossiping its connection counts and following
//! the fleet's pushed handlers, its tenants and its audit log.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use sluice_config::{Config, ConfigErrors, StoreKind};
use sluice_control::{Management, Registry, Tenants};
use sluice_fleet::Cluster;
use sluice_sandbox::StateStore;
use sluice_server::backends::Backends;
use sluice_server::{Server, ServerState};
use tokio::net::TcpListener;

/// A node: the data path's state, and the control plane's registry beside
/// it.
pub struct Node {
    /// What the server shares between connections.
    pub state: Arc<ServerState>,
    /// The pushed handlers and their management API.
    pub registry: Arc<Registry>,
    /// The tenants created through the management API.
    pub tenants: Arc<Tenants>,
}

impl Node {
    /// Build a node for `config`: its backends (memory, durable, or the
    /// fleet's), its sandbox, its registry and its tenants. Reports every
    /// problem at once.
    pub async fn build(config: Config) -> Result<Self, ConfigErrors> {
        let (backends, cluster) = backends(&config).await?;
        let node = Self::on(config, backends).await?;
        if let Some(cluster) = cluster {
            node.join(&cluster).await?;
        }
        Ok(node)
    }

    /// Build a node whose handler state lives in `state` and everything
    /// else in memory, whatever the config says (`[store]` and `[cluster]`
    /// are checked, nothing is opened or contacted): what `sluice check`
    /// and tests that bring their own state store do.
    pub async fn with_state(
        config: Config,
        state: Arc<dyn StateStore>,
    ) -> Result<Self, ConfigErrors> {
        Self::on(config, Backends::memory_with_state(state)).await
    }

    async fn on(config: Config, backends: Backends) -> Result<Self, ConfigErrors> {
        let sandbox = sluice_server::state::sandbox(&config, &backends)?;
        let registry = Arc::new(Registry::open(sandbox.clone(), backends.registry.clone()));
        let tenants = Arc::new(Tenants::new(
            backends.tenants.clone(),
            config.management.max_tenants,
        ));
        let state = ServerState::build(config, sandbox, backends, registry.clone()).await?;
        let started = std::time::Instant::now();
        let served = tenants.start(&state).await;
        if served > 0 {
            tracing::info!(
                tenants = served,
                took_ms = started.elapsed().as_millis() as u64,
                "tenants of the management API loaded"
            );
        }
        Ok(Self {
            state,
            registry,
            tenants,
        })
    }

    /// Take part in the fleet: report this node's connection counts, and
    /// serve what other nodes push, promote and audit.
    async fn join(&self, cluster: &Arc<Cluster>) -> Result<(), ConfigErrors> {
        cluster.start_counts(Arc::downgrade(&self.state));
        let (state, registry) = (Arc::downgrade(&self.state), Arc::downgrade(&self.registry));
        let on_record = move |(key, value): ((String, String), Option<Vec<u8>>)| {
            let (state, registry): (Weak<ServerState>, Weak<Registry>) =
                (state.clone(), registry.clone());
            let applied: futures_util::future::BoxFuture<'static, ()> = Box::pin(async move {
                if let (Some(s), Some(r)) = (state.upgrade(), registry.upgrade()) {
                    let config = s.tenant(&key.0).and_then(|t| t.config.managed.clone());
                    r.apply_remote(key, value, config).await;
                }
            });
            applied
        };
        let audit_registry = Arc::downgrade(&self.registry);
        let on_audit = move |seq: u64, bytes: Vec<u8>| {
            if let Some(r) = audit_registry.upgrade() {
                r.audit.insert(seq, &bytes);
            }
        };
        cluster
            .follow_registry(on_record, on_audit)
            .await
            .map_err(|e| ConfigErrors(vec![e.to_string()]))?;
        // Tenants created, changed or removed on any node (this one's own
        // come back too, and are skipped by their revision).
        let (state, tenants) = (Arc::downgrade(&self.state), Arc::downgrade(&self.tenants));
        let on_tenant = move |(id, change): sluice_server::backends::tenants::TenantChange| {
            let (state, tenants): (Weak<ServerState>, Weak<Tenants>) =
                (state.clone(), tenants.clone());
            let applied: futures_util::future::BoxFuture<'static, ()> = Box::pin(async move {
                if let (Some(s), Some(t)) = (state.upgrade(), tenants.upgrade()) {
                    t.apply_remote(&s, &id, change).await;
                }
            });
            applied
        };
        cluster
            .follow_tenants(on_tenant)
            .await
            .map_err(|e| ConfigErrors(vec![e.to_string()]))
    }

    /// Bind `addr` (and the configured admin listener) for this node.
    pub async fn bind(self, addr: SocketAddr) -> anyhow::Result<Server> {
        let management = self.management();
        Ok(Server::bind_state(self.state, addr)
            .await?
            .with_management(management))
    }

    /// A server for this node on listeners the caller bound (no
    /// management listener: see [`Node::serve_on_all`]).
    pub fn serve_on(self, listener: TcpListener, admin: Option<TcpListener>) -> Server {
        let management = self.management();
        Server::from_listeners(self.state, listener, admin).with_management(management)
    }

    /// A server for this node on listeners the caller bound, the
    /// management listener (HTTPS) among them.
    pub fn serve_on_all(
        self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        management: TcpListener,
    ) -> Server {
        self.serve_on(listener, admin)
            .with_management_listener(management)
    }

    fn management(&self) -> Arc<dyn sluice_server::admin::ManagementApi> {
        Arc::new(Management::new(self.registry.clone(), self.tenants.clone()))
    }
}

/// The backends for the configured mode, and the fleet when there is one:
/// the one place that chooses between memory, the durable store and NATS.
async fn backends(config: &Config) -> Result<(Backends, Option<Arc<Cluster>>), ConfigErrors> {
    if let Some(c) = &config.cluster {
        let cluster = Arc::new(
            Cluster::connect(config, c)
                .await
                .map_err(|e| ConfigErrors(vec![e.to_string()]))?,
        );
        // A node of a fleet keeps nothing of its own: handler state on
        // JetStream KV, channel history on JetStream.
        return Ok((cluster.backends(), Some(cluster)));
    }
    let backends = match config.store.kind {
        StoreKind::Memory => Backends::memory(),
        StoreKind::Durable => {
            let dir = config.path(&config.store.data_dir);
            let quotas = sluice_server::backends::history::HistoryQuotas::from_config(config);
            Backends::durable(&dir, &quotas)
                .map_err(|e| ConfigErrors(vec![format!("store.data_dir: {e}")]))?
        }
    };
    Ok((backends, None))
}
