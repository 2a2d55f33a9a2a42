//! `[tenants.<id>.managed]`: handlers a tenant pushes itself through the
//! management API, and the operator's bounds on them.

use serde::{Deserialize, Serialize};

use crate::limits::{Capability, HandlerLimits, Isolation, SandboxConfig};
use crate::secret::SecretRef;

/// Versions of a pushed handler kept by default.
pub const DEFAULT_MAX_VERSIONS: usize = 20;

/// Handlers a tenant manages itself through the management API: pushed,
/// verified, versioned, canaried, shadowed and rolled back without a restart.
/// What they may import and the limits they run under stay the operator's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedConfig {
    /// The tenant's management token: it manages this tenant's pushed
    /// handlers and nothing else. Without one only the operator (the admin
    /// token) manages them.
    #[serde(default)]
    pub token: Option<SecretRef>,
    /// Capabilities a pushed handler may import: `state`, `log`, `clock`.
    #[serde(default)]
    pub grants: Vec<Capability>,
    /// `reuse` (default) or `fresh`, for every pushed handler.
    #[serde(default)]
    pub isolation: Isolation,
    /// Per-call limits of pushed handlers (the handler limits table).
    #[serde(default, deserialize_with = "HandlerLimits::from_table")]
    pub limits: HandlerLimits,
    /// The largest component a push may carry, in bytes (at most
    /// `[sandbox] max_component_bytes`, which is the default).
    #[serde(default)]
    pub max_component_bytes: Option<usize>,
    /// Versions kept per handler ([`DEFAULT_MAX_VERSIONS`]); a push past it
    /// forgets the oldest version that is not serving.
    #[serde(default = "default_max_versions")]
    pub max_versions: usize,
}

fn default_max_versions() -> usize {
    DEFAULT_MAX_VERSIONS
}

impl ManagedConfig {
    /// What is wrong with the section of the tenant at `at` (`tenants.<id>`),
    /// against the engine-wide `sandbox` settings.
    pub(crate) fn problems(&self, at: &str, sandbox: &SandboxConfig) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(token) = &self.token
            && !token.names_one_source()
        {
            problems.push(format!(
                "{at}.managed.token: set exactly one of secret_env, secret_file"
            ));
        }
        if self.max_versions == 0 {
            problems.push(format!(
                "{at}.managed.max_versions must be greater than zero"
            ));
        }
        match self.max_component_bytes {
            Some(0) => problems.push(format!(
                "{at}.managed.max_component_bytes must be greater than zero"
            )),
            Some(n) if n > sandbox.max_component_bytes => problems.push(format!(
                "{at}.managed.max_component_bytes: {n} is more than [sandbox] max_component_bytes {}",
                sandbox.max_component_bytes
            )),
            _ => {}
        }
        for p in self.limits.problems(sandbox) {
            problems.push(format!("{at}.managed.limits: {p}"));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn managed(text: &str) -> ManagedConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn by_default_nothing_is_granted_and_20_versions_are_kept() {
        let m = managed("");
        assert_eq!(m.token, None);
        assert!(m.grants.is_empty());
        assert_eq!(m.isolation, Isolation::Reuse);
        assert_eq!(m.limits, HandlerLimits::default());
        assert_eq!(m.max_component_bytes, None);
        assert_eq!(m.max_versions, DEFAULT_MAX_VERSIONS);
        assert!(
            m.problems("tenants.t", &SandboxConfig::default())
                .is_empty()
        );
    }

    #[test]
    fn every_problem_of_the_section_is_named() {
        let sandbox = SandboxConfig::default();
        let m = managed(
            "token = { secret_env = \"A\", secret_file = \"b\" }\n\
             max_versions = 0\n\
             max_component_bytes = 0\n\
             limits = { fuel = 0 }",
        );
        assert_eq!(
            m.problems("tenants.t", &sandbox),
            [
                "tenants.t.managed.token: set exactly one of secret_env, secret_file",
                "tenants.t.managed.max_versions must be greater than zero",
                "tenants.t.managed.max_component_bytes must be greater than zero",
                "tenants.t.managed.limits: fuel must be greater than zero",
            ]
        );
        let too_big = ManagedConfig {
            max_component_bytes: Some(sandbox.max_component_bytes + 1),
            ..managed("")
        };
        assert_eq!(
            too_big.problems("tenants.t", &sandbox),
            [format!(
                "tenants.t.managed.max_component_bytes: {} is more than [sandbox] max_component_bytes {}",
                sandbox.max_component_bytes + 1,
                sandbox.max_component_bytes
            )]
        );
    }
}
