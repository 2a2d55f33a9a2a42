//! `[management]`: the management API's own listener, HTTPS with the
//! server's certificate (tenants, keys, pushed handlers, reload, audit).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Where the management API listens by default: loopback only.
pub const DEFAULT_MANAGEMENT_LISTEN: &str = "127.0.0.1:9443";

/// The most tenants the management API creates on one node or fleet
/// ([`ManagementConfig::max_tenants`]).
pub const DEFAULT_MAX_API_TENANTS: usize = 100_000;

/// The management API's listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagementConfig {
    /// The address it listens on ([`DEFAULT_MANAGEMENT_LISTEN`]), HTTPS
    /// only, with `[server] tls_cert` and the main listener's TLS policy.
    /// Keep it on loopback or a private network unless the platform's
    /// backend reaches it across one: every request needs a token.
    pub listen: SocketAddr,
    /// Serve it at all (`false`: no management API; tenants come from the
    /// file only, and `sluice reload` is replaced by SIGHUP).
    pub enabled: bool,
    /// The most tenants created through the API ([`DEFAULT_MAX_API_TENANTS`]).
    pub max_tenants: usize,
}

impl Default for ManagementConfig {
    fn default() -> Self {
        Self {
            // DEFAULT_MANAGEMENT_LISTEN (a test checks they agree).
            listen: SocketAddr::from(([127, 0, 0, 1], 9443)),
            enabled: true,
            max_tenants: DEFAULT_MAX_API_TENANTS,
        }
    }
}

impl ManagementConfig {
    /// The address to bind, when the API is served.
    pub fn address(&self) -> Option<SocketAddr> {
        self.enabled.then_some(self.listen)
    }

    /// What is wrong with the section.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_tenants == 0 {
            problems.push(
                "management.max_tenants must be greater than zero (set enabled = false for no API)"
                    .into(),
            );
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_listens_on_loopback_by_default_and_can_be_turned_off() {
        let m = ManagementConfig::default();
        assert_eq!(m.address().unwrap().to_string(), DEFAULT_MANAGEMENT_LISTEN);
        let off: ManagementConfig = toml::from_str("enabled = false").unwrap();
        assert_eq!(off.address(), None);
        assert!(toml::from_str::<ManagementConfig>("listn = \"0.0.0.0:1\"").is_err());
        let zero: ManagementConfig = toml::from_str("max_tenants = 0").unwrap();
        assert_eq!(zero.problems().len(), 1);
    }
}
