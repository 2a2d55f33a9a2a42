//! `[tenants.<id>.handlers.<name>]`: a handler component the operator
//! configures, its isolation, grants and limits.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::limits::{Capability, HandlerLimits, Isolation};

/// A handler component of a tenant.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// The component file.
    pub component: PathBuf,
    /// `reuse` (default) or `fresh`.
    #[serde(default)]
    pub isolation: Isolation,
    /// Capabilities granted: `state`, `log`, `clock`. None by default.
    #[serde(default)]
    pub grants: Vec<Capability>,
    /// Per-call limits (see the README's limits table). `fuel`,
    /// `deadline_ms` and `memory_bytes` left unset are sized for the
    /// component at load (interpreter components get more).
    #[serde(default, deserialize_with = "HandlerLimits::from_table")]
    pub limits: HandlerLimits,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handler_is_reused_granted_nothing_and_sized_at_load_by_default() {
        let h: HandlerConfig = toml::from_str("component = \"echo.wasm\"").unwrap();
        assert_eq!(h.isolation, Isolation::Reuse);
        assert!(h.grants.is_empty());
        assert_eq!(h.limits, HandlerLimits::default());
        assert!(!h.limits.explicit.fuel);
        let h: HandlerConfig =
            toml::from_str("component = \"c.wasm\"\ngrants = [\"state\"]\nlimits = { fuel = 5 }")
                .unwrap();
        assert_eq!(h.grants, [Capability::State]);
        assert!(h.limits.explicit.fuel && h.limits.fuel == 5);
        assert!(toml::from_str::<HandlerConfig>("component = \"c\"\nfuel_limit = 1").is_err());
    }
}
