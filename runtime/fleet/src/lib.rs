//! Cluster mode: several Sluice nodes serve one fleet through NATS with
//! JetStream (`[cluster]` in the config; without it nothing here runs).
//! Every part implements one of the data path's backend traits
//! (`sluice_server::backends`); this crate depends on the data path, never
//! the reverse.
//!
//! - Fan-out over core NATS ([`NatsBroker`]): one subject per tenant and
//!   channel ([`subject`]), subscribed to only by nodes with local
//!   subscribers; `send` to a subject reaches its connections on every node.
//! - Channel history on one JetStream stream per tenant ([`history`]):
//!   offsets are the stream's sequence numbers, the same on every node, so
//!   a client that reconnects to another node recovers there; the stream's
//!   limits are the tenant's history quotas.
//! - Handler state on JetStream KV ([`state`]), with optimistic
//!   concurrency at commit: a call whose keys another node changed first
//!   runs once more, then fails with `conflict`.
//! - Presence across the fleet on JetStream KV ([`presence`]): a dead
//!   node's members vanish within [`presence::VANISH_BOUND`].
//! - Answers under idempotency keys on JetStream KV ([`outcomes`]): a
//!   retry on another node finds the first attempt's answer, or waits for
//!   it while it runs.
//! - Connection caps across the fleet, approximately, failing closed
//!   ([`caps`]).
//! - Tenants created through the management API on JetStream KV
//!   ([`tenants`]): written with the revision read (two nodes changing one
//!   tenant at once cannot both win), watched by every node.
//! - Readiness: a node cut off from NATS answers 503 on `/readyz` and
//!   refuses new connections with HTTP 503 until NATS is back (the client
//!   reconnects and resubscribes by itself).

pub mod broker;
pub mod bucket;
pub mod caps;
pub mod error;
pub mod history;
pub mod outcomes;
pub use history::DELETE_MARKER_TTL;
pub mod presence;
pub mod registry;
pub mod state;
pub mod subject;
pub mod tenants;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use sluice_config::{ClusterConfig, Config};
use sluice_sandbox::BoxFuture;
use sluice_server::backends::tenants::TenantChange;
use sluice_server::backends::{Backends, FleetLink};
use sluice_server::state::ServerState;

use self::broker::NatsBroker;
use self::caps::FleetCounts;
pub use self::error::FleetError;
use self::history::ClusterHistory;
use self::outcomes::KvOutcomes;
use self::presence::FleetPresence;
use self::registry::{FleetRegistry, RecordChange};
use self::state::KvState;
use self::subject::Subjects;
use self::tenants::FleetTenants;

/// How long to wait for NATS at start before giving up with a clear error.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a JetStream request (a publish's ack, a lookup) may take
/// before it counts as failed: a message is answered `unavailable` within
/// a few of these even while NATS elects new leaders.
pub const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// This node's part of the fleet.
pub struct Cluster {
    /// The node's name (`[cluster] node`).
    pub node: String,
    /// The broker every session uses.
    pub broker: Arc<NatsBroker>,
    /// Channel history on JetStream.
    pub history: Arc<ClusterHistory>,
    /// Handler state on JetStream KV.
    pub state: Arc<KvState>,
    /// Presence across the fleet on JetStream KV.
    pub presence: Arc<FleetPresence>,
    /// Other nodes' connection counts (the caps across the fleet).
    pub counts: Arc<FleetCounts>,
    /// Pushed handlers across the fleet.
    pub registry: Arc<FleetRegistry>,
    /// Answers under idempotency keys across the fleet.
    pub outcomes: Arc<KvOutcomes>,
    /// Tenants created through the management API, across the fleet.
    pub tenants: Arc<FleetTenants>,
    prefix: String,
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
    client: async_nats::Client,
}

impl Cluster {
    /// Connect to NATS and make sure the history stream exists.
    pub async fn connect(config: &Config, cluster: &ClusterConfig) -> Result<Self, FleetError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("sluice-{}", cluster.node))
            .connection_timeout(CONNECT_TIMEOUT)
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!(
                            "NATS disconnected: refusing new connections until it is back"
                        );
                    }
                    other => tracing::info!(event = %other, "NATS"),
                }
            });
        if let (Some(user), Some(password)) = (&cluster.user, &cluster.password) {
            let password = password
                .read(config, "cluster.password")
                .map_err(FleetError::Setting)?;
            options = options.user_and_password(user.clone(), password.trim().to_owned());
        }
        if let Some(token) = &cluster.token {
            let token = token
                .read(config, "cluster.token")
                .map_err(FleetError::Setting)?;
            options = options.token(token.trim().to_owned());
        }
        if let Some(file) = &cluster.credentials_file {
            let path = config.path(file);
            options = options.credentials_file(&path).await.map_err(|e| {
                FleetError::Setting(format!(
                    "cluster.credentials_file: cannot read {}: {e}",
                    path.display()
                ))
            })?;
        }
        let urls = cluster.nats_urls.join(",");
        let addrs = cluster
            .nats_urls
            .iter()
            .map(|u| {
                u.parse::<async_nats::ServerAddr>()
                    .map_err(|e| FleetError::Setting(format!("cluster: nats_urls: `{u}`: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client = options
            .connect(addrs)
            .await
            .map_err(|e| FleetError::nats(format!("cannot reach NATS at {urls}"), e))?;
        let subjects = Subjects::new(&cluster.prefix);
        let mut js = jetstream::new(client.clone());
        js.set_timeout(JETSTREAM_TIMEOUT);
        let shared = subjects.shared_stream();
        if js.get_stream(&shared).await.is_ok() {
            return Err(FleetError::Setting(format!(
                "cluster: the JetStream stream {shared} (channel history of every tenant, kept by an earlier version of Sluice) holds the subjects each tenant's history stream needs now: delete it (`nats stream rm {shared}`; clients resuming from it are told they missed events) and start again"
            )));
        }
        let epochs: broker::Epochs = Arc::default();
        let broker = Arc::new(NatsBroker::new(
            client.clone(),
            subjects.clone(),
            epochs.clone(),
        ));
        let state = KvState::open(
            &js,
            client.clone(),
            format!("{}_state", cluster.prefix),
            cluster.replicas,
        )
        .await?;
        let presence =
            FleetPresence::open(&js, &cluster.prefix, cluster.node.clone(), cluster.replicas)
                .await?;
        let registry = FleetRegistry::open(&js, &cluster.prefix, cluster.replicas).await?;
        let tenants = FleetTenants::open(&js, &cluster.prefix, cluster.replicas).await?;
        // The bucket keeps answers for the longest window configured now.
        let window = config
            .tenants
            .values()
            .map(|t| t.limits.idempotency_window_secs)
            .max()
            .unwrap_or(sluice_config::DEFAULT_IDEMPOTENCY_WINDOW_SECS);
        let outcomes = Arc::new(
            KvOutcomes::open(
                &js,
                &cluster.prefix,
                cluster.replicas,
                Duration::from_secs(window),
            )
            .await?,
        );
        let history = Arc::new(ClusterHistory::new(
            js,
            subjects,
            cluster.replicas,
            epochs,
            broker.clone(),
        ));
        let backfill: std::sync::Weak<dyn broker::Backfill> =
            Arc::<ClusterHistory>::downgrade(&history);
        broker.set_backfill(backfill);
        tracing::info!(node = %cluster.node, nats = %urls, "cluster mode: connected to NATS");
        Ok(Self {
            node: cluster.node.clone(),
            broker,
            history,
            state,
            presence,
            counts: Arc::default(),
            registry,
            outcomes,
            tenants,
            prefix: cluster.prefix.clone(),
            tasks: std::sync::Mutex::default(),
            client,
        })
    }

    /// The backends of a node of this fleet: everything on NATS.
    pub fn backends(self: &Arc<Self>) -> Backends {
        Backends {
            broker: self.broker.clone(),
            state: self.state.clone(),
            history: self.history.clone(),
            presence: self.presence.clone(),
            registry: self.registry.clone(),
            fleet: Some(self.clone()),
            outcomes: Some(self.outcomes.clone()),
            tenants: self.tenants.clone(),
            keeps_files: true,
        }
    }

    /// Start reporting this node's connection counts to the fleet.
    pub fn start_counts(&self, state: std::sync::Weak<ServerState>) {
        let tasks = self.counts.start(
            self.client.clone(),
            format!("{}.conns", self.prefix),
            self.node.clone(),
            state,
        );
        self.keep(tasks);
    }

    /// Follow the fleet's pushed handlers: every change to a record (this
    /// node's own too) goes to `on_record`, every audit entry, with the
    /// fleet's number, to `on_audit`, until [`Cluster::close`].
    pub async fn follow_registry(
        &self,
        on_record: impl Fn(RecordChange) -> futures_util::future::BoxFuture<'static, ()>
        + Send
        + 'static,
        on_audit: impl Fn(u64, Vec<u8>) + Send + 'static,
    ) -> Result<(), FleetError> {
        let records = self.registry.watch_records(on_record).await?;
        let audit = self.registry.follow_audit(on_audit).await?;
        self.keep([records, audit]);
        Ok(())
    }

    /// Follow the fleet's tenants: every change after what
    /// [`FleetTenants`]' `take_contents` gave (this node's own writes too),
    /// in the bucket's order, goes to `on_change`, until [`Cluster::close`].
    pub async fn follow_tenants(
        &self,
        on_change: impl Fn(TenantChange) -> futures_util::future::BoxFuture<'static, ()>
        + Send
        + 'static,
    ) -> Result<(), FleetError> {
        let watch = self.tenants.watch(on_change).await?;
        self.keep([watch]);
        Ok(())
    }

    fn keep(&self, tasks: impl IntoIterator<Item = tokio::task::AbortHandle>) {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(tasks);
    }

    /// Whether NATS is reachable now, and this node's connection reports
    /// reach the fleet.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
            && !self.counts.cut_off()
    }

    /// Withdraw this node's presence entries, send what is buffered and
    /// close the connection to NATS.
    pub async fn close(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            t.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.presence.withdraw()).await;
        FleetCounts::leave(&self.client, format!("{}.conns", self.prefix), &self.node).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.drain()).await;
    }
}

impl FleetLink for Cluster {
    fn connected(&self) -> bool {
        Cluster::connected(self)
    }

    fn connections_elsewhere(&self, tenant: &str, subject: &str) -> (u32, u32) {
        self.counts.elsewhere(tenant, subject)
    }

    fn shed_connections(&self) -> bool {
        self.counts.cut_off()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(Cluster::close(self))
    }
}
