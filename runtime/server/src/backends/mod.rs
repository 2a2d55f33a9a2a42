//! The seams behind which a node keeps and shares what outlives a message,
//! one trait per backend:
//!
//! | backend | trait | one node | a fleet (`sluice-fleet`) |
//! |---|---|---|---|
//! | who receives a publish or a send | [`Broker`] | [`LocalBroker`] | NATS subjects |
//! | handler state | `sluice_sandbox::StateStore` | memory, or [`DurableState`] | JetStream KV |
//! | channel history | [`HistoryStore`] | [`LocalHistory`] (memory or durable) | a JetStream stream per tenant |
//! | presence on other nodes | [`PresenceShare`] | [`NodeOnly`] | JetStream KV |
//! | pushed handlers | [`RegistryStorage`] | [`MemoryRegistry`], [`DurableRegistry`] | Object Store + KV + a stream |
//! | answers under idempotency keys | [`OutcomeStore`] | memory, or [`DurableOutcomes`] | JetStream KV |
//! | tenants created through the API | [`TenantStorage`] | [`MemoryTenants`], [`DurableTenants`] | JetStream KV |
//! | the fleet itself | [`FleetLink`] | none | NATS |
//!
//! [`Backends`] holds one of each. The memory and durable sets are built
//! here; the fleet's set by `sluice-fleet`; the one place that chooses
//! between the three modes is the `sluice` crate's `node` module, the only
//! crate that knows them all.

pub mod broker;
pub mod durable_outcomes;
pub mod durable_state;
pub mod fleet;
pub mod history;
pub mod keys;
pub mod local_history;
pub mod presence;
pub mod registry;
pub mod tenants;

use std::sync::Arc;

use sluice_sandbox::StateStore;

use crate::idempotency::{MemoryOutcomeStore, OutcomeStore};

pub use broker::{Broker, BrokerError, LocalBroker};
pub use durable_outcomes::DurableOutcomes;
pub use durable_state::DurableState;
pub use fleet::FleetLink;
pub use history::{HistoryError, HistoryStore};
pub use keys::{ChannelKey, Member, SubjectKey};
pub use local_history::LocalHistory;
pub use presence::{NodeOnly, PresenceShare};
pub use registry::{DurableRegistry, MemoryRegistry, RegistryStorage};
pub use tenants::{DurableTenants, MemoryTenants, TenantStorage};

/// Where one node keeps and shares everything: one backend of each kind.
#[derive(Clone)]
pub struct Backends {
    /// Who receives what is published.
    pub broker: Arc<dyn Broker>,
    /// Handler state.
    pub state: Arc<dyn StateStore>,
    /// Channel history.
    pub history: Arc<dyn HistoryStore>,
    /// Presence shared with other nodes.
    pub presence: Arc<dyn PresenceShare>,
    /// Pushed handlers (the control plane's).
    pub registry: Arc<dyn RegistryStorage>,
    /// Where answers under idempotency keys are kept beyond the table's
    /// memory (memory, the durable store, the fleet's KV bucket). `None`:
    /// the node takes no keys (its `welcome` has no `idempotency` and a
    /// keyed request is `bad_envelope`).
    pub outcomes: Option<Arc<dyn OutcomeStore>>,
    /// Tenants created through the management API (the control plane's).
    pub tenants: Arc<dyn TenantStorage>,
    /// The fleet, when this node is part of one.
    pub fleet: Option<Arc<dyn FleetLink>>,
    /// Whether the node keeps files (a durable store or a fleet node): the
    /// compiled-component cache then defaults to `<data_dir>/compiled`.
    pub keeps_files: bool,
}

impl Backends {
    /// Everything in memory, gone at restart (`[store] kind = "memory"`,
    /// and what `sluice check` builds whatever the config says).
    pub fn memory() -> Self {
        Self::memory_with_state(sluice_sandbox::MemoryStateStore::new())
    }

    /// Everything in memory, with handler state kept in `state`.
    pub fn memory_with_state(state: Arc<dyn StateStore>) -> Self {
        let broker: Arc<dyn Broker> = Arc::new(LocalBroker::default());
        Self {
            history: Arc::new(LocalHistory::in_memory(broker.clone())),
            broker,
            state,
            presence: Arc::new(NodeOnly),
            registry: Arc::new(MemoryRegistry::default()),
            outcomes: Some(Arc::new(MemoryOutcomeStore::new())),
            tenants: Arc::new(MemoryTenants::default()),
            fleet: None,
            keeps_files: false,
        }
    }

    /// Everything in the durable store at `dir` (`[store] kind =
    /// "durable"`): state, history (within `quotas`: never more than a
    /// running node keeps) and pushed handlers read back, writes fsynced
    /// before they are acknowledged.
    pub fn durable(
        dir: &std::path::Path,
        quotas: &history::HistoryQuotas,
    ) -> Result<Self, sluice_store::StoreError> {
        let tenant = |id: &str| {
            let q = quotas.tenant(id);
            (q.channels, q.bytes)
        };
        let bound = sluice_store::HistoryBound {
            tenant: &tenant,
            node: (quotas.node.channels, quotas.node.bytes),
            events_per_channel: sluice_config::MAX_HISTORY_SIZE,
            channel_cost: sluice_config::HISTORY_CHANNEL_COST,
        };
        let opened = sluice_store::Store::open_bounded(dir, &bound)?;
        if opened.unclean {
            tracing::warn!(data_dir = %dir.display(),
                "the last run did not shut down cleanly: channel offsets jump past any that may have been lost");
        }
        tracing::info!(data_dir = %dir.display(), keys = opened.state.len(),
            channels = opened.channels.len(), pushed_handlers = opened.handlers.len(),
            "durable store opened");
        let broker: Arc<dyn Broker> = Arc::new(LocalBroker::default());
        let outcomes = DurableOutcomes::new(opened.store.clone(), opened.outcomes);
        let tenants: Arc<dyn TenantStorage> =
            DurableTenants::new(opened.store.clone(), opened.tenants, opened.tenant_revision);
        Ok(Self {
            history: Arc::new(LocalHistory::durable(
                broker.clone(),
                opened.store.clone(),
                opened.channels,
                opened.unclean,
            )),
            // A keyed call's answer is written with its state (one
            // transaction), and served by `outcomes` once on disk.
            state: DurableState::with_outcomes(
                opened.store.clone(),
                opened.state,
                outcomes.clone(),
            ),
            registry: Arc::new(DurableRegistry::new(
                opened.store,
                opened.handlers,
                opened.audit,
            )),
            broker,
            presence: Arc::new(NodeOnly),
            outcomes: Some(outcomes as Arc<dyn OutcomeStore>),
            tenants,
            fleet: None,
            keeps_files: true,
        })
    }
}
