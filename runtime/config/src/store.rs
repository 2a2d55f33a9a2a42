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
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Durable,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
        }
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
