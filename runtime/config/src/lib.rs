//! The configuration file: one TOML document, strict (unknown fields are
//! errors), every default a named constant, secrets by reference (an
//! environment variable or a file, never inline).
//!
//! [`Config::parse`] reports every problem it can find at once: each tenant,
//! handler, route and key is read separately, so one typo does not hide the
//! next. Semantic checks (files, schemas, handlers) happen when the server is
//! built (`sluice check` runs both).
//!
//! One module per section, each with its defaults and its own checks:
//! [`server`](ServerConfig), [`sandbox`](SandboxConfig) (`limits`),
//! [`store`](StoreConfig), [`cluster`](ClusterConfig), and per tenant
//! ([`TenantConfig`]) its [`auth`](AuthConfig), handlers, routes, channel
//! rules and [`managed`](ManagedConfig) handlers. [`Config::parse`] reads
//! them (`read`) and gathers their problems in the file's order.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

mod auth;
pub mod channel;
mod cidr;
mod cluster;
mod handler;
pub mod jwt;
mod limits;
mod managed;
mod management;
mod name;
pub mod quotas;
mod read;
mod route;
mod secret;
mod server;
mod store;
mod tenant;

pub use auth::{AuthConfig, DEFAULT_JWKS_REFRESH_SECS, DEFAULT_LEEWAY_SECS, KeyConfig};
pub use channel::{ChannelRuleConfig, HistoryConfig, MAX_HISTORY_SIZE, MAX_HISTORY_TTL_SECS};
pub use cidr::{Cidr, CidrError, mask};
pub use cluster::{ClusterConfig, DEFAULT_NATS_PREFIX};
pub use handler::HandlerConfig;
pub use jwt::JwtAlgorithm;
pub use limits::*;
pub use managed::{DEFAULT_MAX_VERSIONS, ManagedConfig};
pub use management::{DEFAULT_MANAGEMENT_LISTEN, DEFAULT_MAX_API_TENANTS, ManagementConfig};
pub use name::is_name;
pub use quotas::Quotas;
pub use route::{ChannelAccess, RouteConfig};
pub use secret::{BaseDir, MIN_ADMIN_TOKEN_BYTES, SecretRef};
pub use server::{
    DEFAULT_ADMIN_LISTEN, DEFAULT_DRAIN_TIMEOUT, DEFAULT_HANDSHAKE_BURST_PER_IP,
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HANDSHAKES_PER_IP_PER_SEC, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_IPV6_PREFIX_LEN, DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS_PER_IP,
    DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_HANDSHAKES_IN_FLIGHT, DEFAULT_MAX_JSON_DEPTH,
    DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_OUTBOUND_BYTES, DEFAULT_PING_INTERVAL,
    DEFAULT_READ_BUFFER_BYTES, DEFAULT_WRITE_BUFFER_BYTES, ServerConfig,
};
pub use store::{
    DEFAULT_DATA_DIR, DEFAULT_NODE_HISTORY_BYTES, DEFAULT_NODE_HISTORY_CHANNELS,
    HISTORY_CHANNEL_COST, StoreConfig, StoreKind,
};
pub use tenant::{
    DEFAULT_ABUSE_CLOSE_AFTER, DEFAULT_IDEMPOTENCY_WINDOW_SECS,
    DEFAULT_MAX_CONNECTIONS_PER_SUBJECT, DEFAULT_MAX_CONNECTIONS_PER_TENANT,
    DEFAULT_MAX_PRESENCE_MEMBERS, DEFAULT_MESSAGE_BURST, DEFAULT_MESSAGES_PER_SEC,
    DEFAULT_PRESENCE_DEBOUNCE, DEFAULT_SCOPES_CLAIM, DEFAULT_SUBJECT_MESSAGES_PER_SEC,
    DEFAULT_TENANT_MESSAGES_PER_SEC, MAX_IDEMPOTENCY_WINDOW_SECS, TenantConfig, TenantLimits,
};

/// The whole configuration.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Config {
    /// Listener, TLS and WebSocket settings.
    pub server: ServerConfig,
    /// Engine-wide sandbox settings.
    pub sandbox: SandboxConfig,
    /// Where handler state and channel history are kept.
    pub store: StoreConfig,
    /// Several nodes serving one fleet through NATS (absent: one node).
    pub cluster: Option<ClusterConfig>,
    /// The management API's listener.
    pub management: ManagementConfig,
    /// Tenants by id (the `<tenant>` in `/ws/<tenant>`).
    pub tenants: BTreeMap<String, TenantConfig>,
    /// The directory relative paths are resolved against.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file it was read from, if any (what a reload reads again).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl BaseDir for Config {
    fn base_dir(&self) -> &Path {
        &self.base_dir
    }
}

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s) in the configuration:\n  - {}", .0.len(), .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

impl Config {
    /// Read and parse a file; relative paths in it resolve against its
    /// directory.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("cannot read {}: {e}", path.display())]))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut config = Self::parse(&text, &base)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parse TOML text, reporting every problem at once.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, ConfigErrors> {
        let mut problems = Vec::new();
        let mut root: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => return Err(ConfigErrors(vec![format!("not valid TOML: {e}")])),
        };
        let server_present = root.contains_key("server");
        let server = read::section::<ServerConfig>(&mut root, "server", &mut problems);
        let server_parsed = server.is_some() || !server_present;
        let server = server.unwrap_or_default();
        let sandbox =
            read::section::<SandboxConfig>(&mut root, "sandbox", &mut problems).unwrap_or_default();
        let store =
            read::section::<StoreConfig>(&mut root, "store", &mut problems).unwrap_or_default();
        problems.extend(store.problems());
        let cluster = read::section::<ClusterConfig>(&mut root, "cluster", &mut problems);
        let management = read::section::<ManagementConfig>(&mut root, "management", &mut problems)
            .unwrap_or_default();
        problems.extend(management.problems());
        if let Some(c) = &cluster {
            problems.extend(c.problems());
        }
        let mut tenants = BTreeMap::new();
        let mut unparsed_handlers = Vec::new();
        if let Some(value) = root.remove("tenants") {
            match value {
                toml::Value::Table(table) => {
                    for (id, value) in table {
                        if let Some(t) =
                            read::tenant(&id, value, &mut problems, &mut unparsed_handlers)
                        {
                            tenants.insert(id, t);
                        }
                    }
                }
                _ => problems.push("`tenants` must be a table of tenants".into()),
            }
        }
        for key in root.keys() {
            problems.push(format!(
                "unknown top-level key `{key}` (expected server, sandbox, store, cluster, management, tenants)"
            ));
        }
        let config = Config {
            server,
            sandbox,
            store,
            cluster,
            management,
            tenants,
            base_dir: base_dir.to_path_buf(),
            source: None,
        };
        problems.extend(config.problems(server_parsed, &unparsed_handlers));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// The admin token (`[server] admin_token`), read from its source.
    pub fn admin_token(&self) -> Result<Option<String>, String> {
        self.server
            .admin_token
            .as_ref()
            .map(|t| t.read(self, "server.admin_token"))
            .transpose()
    }

    /// The management token of tenant `id` (`[tenants.<id>.managed] token`),
    /// read from its source.
    pub fn managed_token(&self, id: &str) -> Result<Option<String>, String> {
        self.tenants
            .get(id)
            .and_then(|t| t.managed.as_ref())
            .and_then(|m| m.token.as_ref())
            .map(|t| t.read(self, &format!("tenants.{id}.managed.token")))
            .transpose()
    }

    /// A path from the file, resolved against its directory.
    pub fn path(&self, p: &Path) -> PathBuf {
        secret::resolve(&self.base_dir, p)
    }

    /// Checks that need no files: references, names, numbers; each section
    /// checks itself, in the file's order ([`ClusterConfig`]'s were made as
    /// it was read).
    fn problems(&self, server_parsed: bool, unparsed_handlers: &[(String, String)]) -> Vec<String> {
        let mut problems = self.server.problems(server_parsed);
        if self.sandbox.compile_workers == Some(0) {
            problems.push("sandbox.compile_workers must be greater than zero (leave it out for half the cores)".into());
        }
        if self.sandbox.compile_timeout.is_zero() {
            problems.push("sandbox.compile_timeout_ms must be greater than zero".into());
        }
        if self.tenants.is_empty() && !self.management.enabled {
            problems.push(
                "no tenants: add at least one [tenants.<id>], or serve the management API \
                 ([management] enabled) and create them with `sluice tenant create`"
                    .into(),
            );
        }
        for (id, t) in &self.tenants {
            problems.extend(t.problems(id, &self.sandbox, &self.server, unparsed_handlers));
            for (i, k) in t.auth.keys.iter().enumerate() {
                if k.secret.is_some() {
                    problems.push(format!(
                        "tenants.{id}.auth.keys[{i}]: a secret inline is not allowed in the file \
                         (secrets go by reference: secret_env or secret_file)"
                    ));
                }
            }
        }
        problems
    }

    /// A tenant given as JSON (the management API's), read and checked by
    /// the same code as a `[tenants.<id>]` table of the file: every problem
    /// at once, in the same words (`tenants.<id>.…`). Checks that need
    /// files and the sandbox (keys, schemas, handlers) come when the tenant
    /// is built, as for the file.
    pub fn tenant_from_json(
        &self,
        id: &str,
        json: &serde_json::Value,
    ) -> Result<TenantConfig, Vec<String>> {
        let mut problems = Vec::new();
        let value = match toml::Value::try_from(json) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!(
                    "tenants.{id}: {e} (null is not a value here: leave the field out)"
                ));
                return Err(problems);
            }
        };
        let mut unparsed_handlers = Vec::new();
        let tenant = read::tenant(id, value, &mut problems, &mut unparsed_handlers);
        if let Some(t) = &tenant {
            problems.extend(t.problems(id, &self.sandbox, &self.server, &unparsed_handlers));
        }
        match tenant {
            Some(t) if problems.is_empty() => Ok(t),
            _ => Err(problems),
        }
    }
}

/// Why a JSON file the configuration names could not be used: which file
/// and what is wrong, never its content.
#[derive(Debug, thiserror::Error)]
pub enum JsonFileError {
    /// It could not be read.
    #[error("cannot read {}: {error}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// It is not JSON of the expected shape.
    #[error("{} is not valid JSON: {error}", .path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Where and why (serde_json names no content).
        error: serde_json::Error,
    },
}

/// Read a file the configuration names and parse it as JSON (schemas, JWKS
/// files).
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, JsonFileError> {
    let bytes = std::fs::read(path).map_err(|error| JsonFileError::Read {
        path: path.to_owned(),
        error,
    })?;
    serde_json::from_slice(&bytes).map_err(|error| JsonFileError::Json {
        path: path.to_owned(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[server]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n\
        [tenants.t.auth]\nissuer = \"i\"\naudience = \"a\"\n\
        keys = [{ algorithm = \"HS256\", secret_env = \"S\" }]\n";

    fn problems(text: &str) -> Vec<String> {
        Config::parse(text, Path::new("/etc/sluice"))
            .map(|_| Vec::new())
            .unwrap_or_else(|e| e.0)
    }

    #[test]
    fn a_minimal_file_takes_every_default() {
        let c = Config::parse(MINIMAL, Path::new("/etc/sluice")).unwrap();
        assert_eq!(c.store, StoreConfig::default());
        assert_eq!(c.sandbox, SandboxConfig::default());
        assert!(c.cluster.is_none());
        assert_eq!(c.base_dir, Path::new("/etc/sluice"));
        assert_eq!(c.path(Path::new("c.pem")), Path::new("/etc/sluice/c.pem"));
        assert_eq!(c.path(Path::new("/abs/c.pem")), Path::new("/abs/c.pem"));
        assert_eq!(c.admin_token(), Ok(None));
        assert_eq!(c.managed_token("t"), Ok(None));
    }

    #[test]
    fn the_file_itself_and_its_top_level() {
        assert!(problems("[server")[0].starts_with("not valid TOML: "));
        assert_eq!(
            problems(""),
            ["server: tls_cert and tls_key are required (Sluice serves wss:// only)"],
            "no tenants in the file: they come from the management API"
        );
        assert_eq!(
            problems("[management]\nenabled = false\n[server]\ntls_cert = \"c\"\ntls_key = \"k\""),
            [
                "no tenants: add at least one [tenants.<id>], or serve the management API \
              ([management] enabled) and create them with `sluice tenant create`"
            ]
        );
        assert_eq!(
            problems(&format!("colour = 1\ntenants2 = 2\n{MINIMAL}")),
            [
                "unknown top-level key `colour` (expected server, sandbox, store, cluster, management, tenants)",
                "unknown top-level key `tenants2` (expected server, sandbox, store, cluster, management, tenants)",
            ]
        );
        assert_eq!(
            problems("tenants = 1\n[server]\ntls_cert = \"c\"\ntls_key = \"k\""),
            ["`tenants` must be a table of tenants"]
        );
    }

    #[test]
    fn problems_of_every_section_are_reported_together_in_the_files_order() {
        let text = "[server]\nmax_mesage_bytes = 1\n\
            [sandbox]\nfuel = \"yes\"\n\
            [store]\nkind = \"disk\"\n\
            [cluster]\nnats_urls = []\nnode = \"n\"\n\
            [tenants.t]\nauth = { issuer = \"i\", audience = \"a\" }\n\
            [tenants.u]\nauth = 1\n\
            [tenants.v.auth]\nissuer = \"i\"\naudience = \"a\"\nkeys = [{ algorithm = \"HS256\", secret_env = \"S\" }]\n\
            [tenants.v.handlers.Echo]\ncomponent = \"e.wasm\"\n\
            [tenants.v.handlers.gone]\nfuel = 1\n\
            [tenants.v.routes.a]\nhandler = \"gone\"\n\
            [tenants.v.routes.b]\nhandler = 1\n";
        let got = problems(text);
        let starts = [
            "server: unknown field `max_mesage_bytes`",
            "sandbox: invalid type",
            "store: unknown variant `disk`",
            "cluster: nats_urls must name at least one NATS server",
            "tenants.u: invalid type",
            "tenants.v.handlers.Echo: handler names are 1-64 of a-z 0-9 _ -",
            "tenants.v.handlers.gone: unknown field `fuel`",
            "tenants.v.routes.b: invalid type",
            "tenants.t.auth: no keys, no jwks_file and no jwks_url: no token could ever verify",
        ];
        assert_eq!(got.len(), starts.len(), "{got:#?}");
        for (got, want) in got.iter().zip(starts) {
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
    }

    #[test]
    fn tokens_are_read_from_their_source_relative_to_the_file() {
        let dir = std::env::temp_dir().join(format!("sluice-config-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admin.token"), "a".repeat(40)).unwrap();
        std::fs::write(dir.join("manage.token"), "short").unwrap();
        let text =
            format!("{MINIMAL}[tenants.t.managed]\ntoken = {{ secret_file = \"manage.token\" }}\n")
                .replace(
                    "[server]\n",
                    "[server]\nadmin_token = { secret_file = \"admin.token\" }\n",
                );
        let c = Config::parse(&text, &dir).unwrap();
        assert_eq!(c.admin_token(), Ok(Some("a".repeat(40))));
        assert_eq!(
            c.managed_token("t"),
            Err(format!(
                "tenants.t.managed.token: the secret in {} is shorter than 32 bytes",
                dir.join("manage.token").display()
            ))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn read_json_names_the_file_and_never_its_content() {
        let dir = std::env::temp_dir().join(format!("sluice-config-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bad.json"), "{secret").unwrap();
        let e = read_json::<serde_json::Value>(&dir.join("bad.json"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(&format!(
            "{} is not valid JSON: ",
            dir.join("bad.json").display()
        )));
        assert!(!e.contains("{secret"), "{e}");
        let missing = read_json::<serde_json::Value>(&dir.join("none.json"))
            .unwrap_err()
            .to_string();
        assert!(missing.starts_with("cannot read "), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
