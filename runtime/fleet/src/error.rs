//! Why a node could not join its fleet, or a fleet operation failed.

/// A fleet error: a `[cluster]` setting that cannot be used, or NATS
/// refusing or failing a request (with what was being done).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A setting cannot be used (the message names it).
    #[error("{0}")]
    Setting(String),
    /// NATS (or JetStream) failed.
    #[error("cluster: {what}: {source}")]
    Nats {
        /// What was being done.
        what: String,
        /// What NATS answered.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl FleetError {
    /// NATS failed while doing `what`.
    pub fn nats(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Nats {
            what: what.into(),
            source: source.into(),
        }
    }
}
