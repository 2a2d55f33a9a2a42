//! Cluster mode: several Sluice nodes serve one fleet through NATS with
//! JetStream (`[cluster]` in the config; without it nothing here runs).
//! Every part implements one of the data path's backend traits
//! (`sluice_server::backends`); this crate depends on the data path, never
//! the reverse.
//!
//! - Fan-out over core NATS ([`NatsBroker`]): one subject per tenant and
//!   channel ([`subject`]), subscribed to only by nodes with local
//!   subscribers; `send` to a subject reaches its connections on every node.
//! - Channel history on one JetStream stream ([`history`]): offsets are the
//!   stream's sequence numbers, the same on every node, so a client that
//!   reconnects to another node recovers there.
//! - Handler state on JetStream KV ([`state`]), with optimistic
//!   concurrency at commit: a call whose keys another node changed first
//!   runs once more, then fails with `conflict`.
//! - Presence across the fleet on JetStream KV ([`presence`]): a dead
//!   node's members vanish within [`presence::VANISH_BOUND`].
//! - Connection caps across the fleet, approximately ([`caps`]).
//! - Readiness: a node cut off from NATS answers 503 on `/readyz` and
//!   refuses new connections with HTTP 503 until NATS is back (the client
//!   reconnects and resubscribes by itself).

pub mod broker;
pub mod bucket;
pub mod caps;
pub mod error;
pub mod history;
pub mod presence;
pub mod registry;
pub mod state;
pub mod subject;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use sluice_config::{ClusterConfig, Config};
use sluice_sandbox::BoxFuture;
use sluice_server::backends::{Backends, FleetLink};
use sluice_server::state::ServerState;

use self::broker::NatsBroker;
use self::caps::FleetCounts;
pub use self::error::FleetError;
use self::history::ClusterHistory;
use self::presence::FleetPresence;
use self::registry::{FleetRegistry, RecordChange};
use self::state::KvState;
use self::subject::Subjects;

/// How long to wait for NATS at start before giving up with a clear error.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a JetStream request (a publish's ack, a lookup) may take
/// before it counts as failed: a message is answered `unavailable` within
/// a few of these even while NATS elects new leaders.
pub const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a subject delete marker stays in the history stream after a
/// channel's last event expired: within it, a client resuming from before
/// the expiry is told it missed events (`recovered: false`).
pub const DELETE_MARKER_TTL: Duration = Duration::from_secs(24 * 3600);

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
        let (source, destination) = subjects.republish();
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: subjects.stream(),
                description: Some("Sluice channel history".into()),
                subjects: vec![subjects.history_all()],
                max_messages_per_subject: sluice_config::MAX_HISTORY_SIZE as i64,
                storage: jetstream::stream::StorageType::File,
                num_replicas: cluster.replicas,
                discard: jetstream::stream::DiscardPolicy::Old,
                allow_direct: true,
                allow_message_ttl: true,
                subject_delete_marker_ttl: Some(DELETE_MARKER_TTL),
                republish: Some(jetstream::stream::Republish {
                    source,
                    destination,
                    headers_only: false,
                }),
                ..Default::default()
            })
            .await
            .map_err(|e| FleetError::nats("cannot create the JetStream history stream (is JetStream enabled on the NATS server? nats-server -js)", e))?;
        let created = stream.cached_info().created.unix_timestamp_nanos();
        let epoch = epoch_of(created, &subjects.stream());
        let broker = Arc::new(NatsBroker::new(
            client.clone(),
            subjects.clone(),
            epoch.clone(),
        ));
        let state = KvState::open(
            &js,
            client.clone(),
            format!("{}_state", cluster.prefix),
            cluster.replicas,
        )
        .await?;
        let presence = FleetPresence::open(
            &js,
            format!("{}_presence", cluster.prefix),
            cluster.node.clone(),
            cluster.replicas,
        )
        .await?;
        let registry = FleetRegistry::open(&js, &cluster.prefix, cluster.replicas).await?;
        let history = Arc::new(ClusterHistory::new(
            js,
            stream,
            subjects,
            epoch,
            broker.clone(),
        ));
        tracing::info!(node = %cluster.node, nats = %urls, "cluster mode: connected to NATS");
        Ok(Self {
            node: cluster.node.clone(),
            broker,
            history,
            state,
            presence,
            counts: Arc::default(),
            registry,
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

    fn keep(&self, tasks: impl IntoIterator<Item = tokio::task::AbortHandle>) {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(tasks);
    }

    /// Whether NATS is reachable now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
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
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.drain()).await;
    }
}

/// The epoch of every channel of a fleet: derived from when the history
/// stream was created, so every node agrees, and it changes when the
/// stream (the history) is wiped and created again.
fn epoch_of(created_nanos: i128, name: &str) -> Arc<str> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in created_nanos.to_le_bytes().iter().chain(name.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Arc::from(format!("{h:016x}"))
}

impl FleetLink for Cluster {
    fn connected(&self) -> bool {
        Cluster::connected(self)
    }

    fn connections_elsewhere(&self, tenant: &str, subject: &str) -> (u32, u32) {
        self.counts.elsewhere(tenant, subject)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(Cluster::close(self))
    }
}
