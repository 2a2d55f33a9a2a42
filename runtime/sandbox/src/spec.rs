//! What a handler is, as the host loads it: a name, its tenant, its
//! isolation, limits and grants (the last three from the configuration).

use std::collections::BTreeSet;

use sluice_config::{Capability, HandlerLimits, Isolation};

/// What a handler is, as the host loads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerSpec {
    /// A name for logs and errors.
    pub name: String,
    /// The tenant whose state and channels the handler may reach.
    pub tenant: String,
    /// How instances are shared between calls.
    pub isolation: Isolation,
    /// Per-call limits.
    pub limits: HandlerLimits,
    /// Capabilities the handler may import.
    pub grants: BTreeSet<Capability>,
}

impl HandlerSpec {
    /// A spec with default limits, `reuse` isolation and no capabilities.
    pub fn new(name: impl Into<String>, tenant: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            tenant: tenant.into(),
            isolation: Isolation::default(),
            limits: HandlerLimits::default(),
            grants: BTreeSet::new(),
        }
    }

    /// Grant `capabilities`.
    #[must_use]
    pub fn grant(mut self, capabilities: impl IntoIterator<Item = Capability>) -> Self {
        self.grants.extend(capabilities);
        self
    }

    /// Use `isolation`.
    #[must_use]
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// Use `limits`.
    #[must_use]
    pub fn limits(mut self, limits: HandlerLimits) -> Self {
        self.limits = limits;
        self
    }
}
