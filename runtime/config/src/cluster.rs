//! `[cluster]`: several nodes serving one fleet through NATS.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::name::is_name_token;
use crate::secret::SecretRef;

/// The default `[cluster] prefix`.
pub const DEFAULT_NATS_PREFIX: &str = "sluice";

/// Cluster mode: nodes share channels, sends and channel history through
/// NATS with JetStream (`[cluster]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:port`); the client fails over
    /// between them.
    pub nats_urls: Vec<String>,
    /// This node's name: unique in the fleet, 1-64 of `[A-Za-z0-9_-]`.
    pub node: String,
    /// NATS user and password (`user` with `password`), if the server
    /// requires them.
    #[serde(default)]
    pub user: Option<String>,
    /// The password for `user`.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// A NATS token, if the server requires one.
    #[serde(default)]
    pub token: Option<SecretRef>,
    /// A NATS `.creds` file (JWT + nkey), relative to the config file.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// JetStream replicas of the history streams (1, or 3 on a three-server
    /// NATS cluster so no acknowledged event is lost with one server).
    #[serde(default = "one_replica")]
    pub replicas: usize,
    /// The subject prefix every Sluice subject lives under ([`DEFAULT_NATS_PREFIX`]);
    /// two fleets on one NATS use different prefixes.
    #[serde(default = "default_nats_prefix")]
    pub prefix: String,
}

fn one_replica() -> usize {
    1
}

fn default_nats_prefix() -> String {
    DEFAULT_NATS_PREFIX.to_owned()
}

impl ClusterConfig {
    /// What is wrong with the section.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.nats_urls.is_empty() {
            problems.push("cluster: nats_urls must name at least one NATS server".into());
        }
        for url in &self.nats_urls {
            let rest = url
                .strip_prefix("nats://")
                .or_else(|| url.strip_prefix("tls://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains('/')) {
                problems.push(format!(
                    "cluster: nats_urls: `{url}` is not nats://host:port or tls://host:port"
                ));
            }
        }
        if !is_name_token(&self.node) {
            problems.push(format!(
                "cluster: node `{}` must be 1-64 of A-Z a-z 0-9 _ -",
                self.node
            ));
        }
        if !is_name_token(&self.prefix) {
            problems.push(format!(
                "cluster: prefix `{}` must be 1-64 of A-Z a-z 0-9 _ -",
                self.prefix
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            problems.push(format!(
                "cluster: replicas must be 1 to 5, not {}",
                self.replicas
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            problems.push("cluster: user and password go together".into());
        }
        let ways = [
            self.user.is_some(),
            self.token.is_some(),
            self.credentials_file.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            problems
                .push("cluster: set at most one of user/password, token, credentials_file".into());
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> ClusterConfig {
        toml::from_str("nats_urls = [\"nats://127.0.0.1:4222\"]\nnode = \"n1\"").unwrap()
    }

    fn secret() -> Option<SecretRef> {
        Some(SecretRef {
            secret_env: Some("NATS_SECRET".into()),
            secret_file: None,
        })
    }

    #[test]
    fn the_defaults_are_one_replica_under_the_sluice_prefix() {
        let c = minimal();
        assert_eq!(c.replicas, 1);
        assert_eq!(c.prefix, DEFAULT_NATS_PREFIX);
        assert_eq!(
            (c.user, c.password, c.token, c.credentials_file),
            (None, None, None, None)
        );
        assert!(minimal().problems().is_empty());
        let tls = ClusterConfig {
            nats_urls: vec!["tls://nats.example.com:4222".into()],
            ..minimal()
        };
        assert!(tls.problems().is_empty());
        assert!(
            toml::from_str::<ClusterConfig>("node = \"n1\"").is_err(),
            "nats_urls is required"
        );
    }

    #[test]
    fn urls_names_and_replicas_are_checked() {
        let c = ClusterConfig {
            nats_urls: vec![],
            ..minimal()
        };
        assert_eq!(
            c.problems(),
            ["cluster: nats_urls must name at least one NATS server"]
        );
        for bad in ["http://x", "nats://", "nats://host:4222/path", "host:4222"] {
            let c = ClusterConfig {
                nats_urls: vec![bad.into()],
                ..minimal()
            };
            assert_eq!(
                c.problems(),
                [format!(
                    "cluster: nats_urls: `{bad}` is not nats://host:port or tls://host:port"
                )]
            );
        }
        let c = ClusterConfig {
            node: "a.b".into(),
            prefix: String::new(),
            replicas: 0,
            ..minimal()
        };
        assert_eq!(
            c.problems(),
            [
                "cluster: node `a.b` must be 1-64 of A-Z a-z 0-9 _ -",
                "cluster: prefix `` must be 1-64 of A-Z a-z 0-9 _ -",
                "cluster: replicas must be 1 to 5, not 0",
            ]
        );
        let six = ClusterConfig {
            replicas: 6,
            ..minimal()
        };
        assert_eq!(six.problems(), ["cluster: replicas must be 1 to 5, not 6"]);
    }

    #[test]
    fn one_way_to_authenticate_and_user_with_password() {
        let user_alone = ClusterConfig {
            user: Some("u".into()),
            ..minimal()
        };
        assert_eq!(
            user_alone.problems(),
            ["cluster: user and password go together"]
        );
        let password_alone = ClusterConfig {
            password: secret(),
            ..minimal()
        };
        assert_eq!(
            password_alone.problems(),
            ["cluster: user and password go together"]
        );
        let both_ways = ClusterConfig {
            user: Some("u".into()),
            password: secret(),
            token: secret(),
            ..minimal()
        };
        assert_eq!(
            both_ways.problems(),
            ["cluster: set at most one of user/password, token, credentials_file"]
        );
        let token_and_creds = ClusterConfig {
            token: secret(),
            credentials_file: Some("fleet.creds".into()),
            ..minimal()
        };
        assert_eq!(
            token_and_creds.problems(),
            ["cluster: set at most one of user/password, token, credentials_file"]
        );
        let user_password = ClusterConfig {
            user: Some("u".into()),
            password: secret(),
            ..minimal()
        };
        assert!(user_password.problems().is_empty());
    }
}
