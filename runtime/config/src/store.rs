//! `[store]`: where handler state and channel history are kept.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the durable store lives, relative to the config file.
pub const DEFAULT_DATA_DIR: &str = "data";

/// Where handler state and channel history are kept (`[store]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `durable` (the default): an embedded database under `data_dir`;
    /// every state write and history entry is on disk before the client's
    /// `ack`. `memory`: nothing survives a restart.
    pub kind: StoreKind,
    /// The directory of the durable store, relative to the config file
    /// ([`DEFAULT_DATA_DIR`]). One server at a time may use it.
    pub data_dir: PathBuf,
    /// Bytes of channel history this node holds, over every tenant
    /// ([`DEFAULT_NODE_HISTORY_BYTES`]; each channel also counts
    /// [`HISTORY_CHANNEL_COST`]). Past it the history of the tenant holding
    /// the most is trimmed first, its least recently used channel first.
    /// A fleet keeps history on JetStream, bounded per tenant instead.
    pub history_bytes: usize,
    /// Channels with history this node holds, over every tenant
    /// ([`DEFAULT_NODE_HISTORY_CHANNELS`]); past it the tenant with the
    /// most channels loses its least recently used one.
    pub history_channels: u32,
}

/// Bytes of channel history one node holds at most, by default (a tenant's
/// default quota sixteen times).
pub const DEFAULT_NODE_HISTORY_BYTES: usize = 1 << 30;
/// Channels with history one node holds at most, by default.
pub const DEFAULT_NODE_HISTORY_CHANNELS: u32 = 1_000_000;
/// What a channel's history costs besides its events, in the byte bounds
/// (its log, its key, its place in the eviction order).
pub const HISTORY_CHANNEL_COST: usize = 256;

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Durable,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            history_bytes: DEFAULT_NODE_HISTORY_BYTES,
            history_channels: DEFAULT_NODE_HISTORY_CHANNELS,
        }
    }
}

impl StoreConfig {
    /// Every problem of the section's values.
    pub(crate) fn problems(&self) -> Vec<String> {
        if self.history_bytes < HISTORY_CHANNEL_COST || self.history_channels == 0 {
            return vec![format!(
                "store: history_bytes must be at least {HISTORY_CHANNEL_COST} and history_channels more than zero"
            )];
        }
        Vec::new()
    }
}

/// Which store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// redb under `data_dir`.
    Durable,
    /// This process's memory.
    Memory,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_durable_under_data() {
        let d = StoreConfig::default();
        assert_eq!(d.kind, StoreKind::Durable);
        assert_eq!(d.data_dir, PathBuf::from("data"));
        assert_eq!(toml::from_str::<StoreConfig>("").unwrap(), d);
        let memory: StoreConfig = toml::from_str("kind = \"memory\"").unwrap();
        assert_eq!(memory.kind, StoreKind::Memory);
        assert!(toml::from_str::<StoreConfig>("kind = \"disk\"").is_err());
        assert!(toml::from_str::<StoreConfig>("dir = \"x\"").is_err());
    }
}
