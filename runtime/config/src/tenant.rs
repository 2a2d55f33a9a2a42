//! `[tenants.<id>]`: one tenant (application): its origins, claims, limits,
//! and the sections that are its own (auth, handlers, routes, channel rules,
//! managed handlers), whose problems it gathers.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::channel::ChannelRuleConfig;
use crate::handler::HandlerConfig;
use crate::limits::SandboxConfig;
use crate::managed::ManagedConfig;
use crate::name::is_name;
use crate::route::{HandlerKnown, RouteConfig};

/// Connections one tenant may hold.
pub const DEFAULT_MAX_CONNECTIONS_PER_TENANT: u32 = 10_000;
/// Connections one subject may hold.
pub const DEFAULT_MAX_CONNECTIONS_PER_SUBJECT: u32 = 16;
/// Messages per second one connection may send (sustained).
pub const DEFAULT_MESSAGES_PER_SEC: u32 = 50;
/// Message burst of one connection.
pub const DEFAULT_MESSAGE_BURST: u32 = 100;
/// Messages per second one subject may send over all its connections.
pub const DEFAULT_SUBJECT_MESSAGES_PER_SEC: u32 = 100;
/// Messages per second one tenant may receive over all its connections.
pub const DEFAULT_TENANT_MESSAGES_PER_SEC: u32 = 10_000;
/// Rate-limited messages in a row after which a connection is closed (1008).
pub const DEFAULT_ABUSE_CLOSE_AFTER: u32 = 50;
/// Subjects tracked in one channel's presence; past it, the presence
/// answer says `truncated` and no join events are sent for the others.
pub const DEFAULT_MAX_PRESENCE_MEMBERS: u32 = 1000;
/// A subject whose last connection left a presence channel is kept (and
/// no `leave` is sent) for this long: a reconnect inside it is neither a
/// leave nor a join.
pub const DEFAULT_PRESENCE_DEBOUNCE: Duration = Duration::from_secs(5);
/// How long a request's answer is remembered under its idempotency key
/// (`idempotency_window_secs`), from its first attempt.
pub const DEFAULT_IDEMPOTENCY_WINDOW_SECS: u64 = 300;
/// The longest window a tenant may configure: a day (answers are held in
/// memory, on disk and in the fleet's KV bucket for the whole window).
pub const MAX_IDEMPOTENCY_WINDOW_SECS: u64 = 86_400;
/// The claim that carries scopes (a space-separated string or an array).
pub const DEFAULT_SCOPES_CLAIM: &str = "scope";

/// One tenant (application).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// How tokens are verified.
    pub auth: AuthConfig,
    /// Browser origins allowed to connect, matched exactly
    /// (`https://app.example.com`). Empty: no browser origin is allowed.
    #[serde(default)]
    pub origins: Vec<String>,
    /// Refuse clients that send no `Origin` (native mobile apps send none).
    #[serde(default)]
    pub require_origin: bool,
    /// Accept the token in the query string (`?access_token=`); off by
    /// default because URLs end up in logs. It is redacted from Sluice's own.
    #[serde(default)]
    pub query_token: bool,
    /// The claims handlers see (besides the subject).
    #[serde(default)]
    pub exposed_claims: Vec<String>,
    /// The claim that carries scopes ([`DEFAULT_SCOPES_CLAIM`]).
    #[serde(default = "default_scopes_claim")]
    pub scopes_claim: String,
    /// Connection and message limits.
    #[serde(default)]
    pub limits: TenantLimits,
    /// Handlers by name.
    #[serde(default)]
    pub handlers: BTreeMap<String, HandlerConfig>,
    /// Routes by message type.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
    /// Who may subscribe and publish to which channels.
    #[serde(default)]
    pub channels: Vec<ChannelRuleConfig>,
    /// Handlers the tenant pushes through the management API (`[tenants.<id>.managed]`):
    /// a route may name one that is not in `handlers`.
    #[serde(default)]
    pub managed: Option<ManagedConfig>,
    /// What the tenant may make the host hold (`[tenants.<id>.quotas]`).
    #[serde(default)]
    pub quotas: crate::quotas::Quotas,
}

fn default_scopes_claim() -> String {
    DEFAULT_SCOPES_CLAIM.to_owned()
}

/// Connection and message limits of one tenant.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimits {
    /// [`DEFAULT_MAX_CONNECTIONS_PER_TENANT`].
    pub max_connections: u32,
    /// [`DEFAULT_MAX_CONNECTIONS_PER_SUBJECT`].
    pub max_connections_per_subject: u32,
    /// [`DEFAULT_MESSAGES_PER_SEC`], per connection.
    pub messages_per_sec: u32,
    /// [`DEFAULT_MESSAGE_BURST`], per connection.
    pub message_burst: u32,
    /// [`DEFAULT_SUBJECT_MESSAGES_PER_SEC`].
    pub subject_messages_per_sec: u32,
    /// [`DEFAULT_TENANT_MESSAGES_PER_SEC`].
    pub tenant_messages_per_sec: u32,
    /// [`DEFAULT_ABUSE_CLOSE_AFTER`].
    pub abuse_close_after: u32,
    /// [`DEFAULT_MAX_PRESENCE_MEMBERS`], per channel.
    pub max_presence_members: u32,
    /// [`DEFAULT_PRESENCE_DEBOUNCE`], ms.
    pub presence_debounce_ms: u64,
    /// [`DEFAULT_IDEMPOTENCY_WINDOW_SECS`]: how long an answer is
    /// remembered under its key (1 to [`MAX_IDEMPOTENCY_WINDOW_SECS`]); the
    /// `welcome` says it (`idempotency.window_secs`). How many keys are
    /// remembered at once is `[tenants.<id>.quotas] idempotency_keys`.
    pub idempotency_window_secs: u64,
    /// How often the server pings each of the tenant's connections, ms;
    /// unset: `[server] ping_interval_ms`. Greater than zero and less than
    /// `[server] idle_timeout_ms` (a quiet connection is kept open by its
    /// pongs). Goes with the client's heartbeat (`docs/exactly-once.md`,
    /// *Heartbeats and liveness*): e.g. shorter for a mobile app that must
    /// find a dead network sooner.
    pub ping_interval_ms: Option<u64>,
}

impl Default for TenantLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS_PER_TENANT,
            max_connections_per_subject: DEFAULT_MAX_CONNECTIONS_PER_SUBJECT,
            messages_per_sec: DEFAULT_MESSAGES_PER_SEC,
            message_burst: DEFAULT_MESSAGE_BURST,
            subject_messages_per_sec: DEFAULT_SUBJECT_MESSAGES_PER_SEC,
            tenant_messages_per_sec: DEFAULT_TENANT_MESSAGES_PER_SEC,
            abuse_close_after: DEFAULT_ABUSE_CLOSE_AFTER,
            max_presence_members: DEFAULT_MAX_PRESENCE_MEMBERS,
            presence_debounce_ms: DEFAULT_PRESENCE_DEBOUNCE.as_millis() as u64,
            idempotency_window_secs: DEFAULT_IDEMPOTENCY_WINDOW_SECS,
            ping_interval_ms: None,
        }
    }
}

impl TenantLimits {
    /// How often the tenant's connections are pinged: its own
    /// `ping_interval_ms`, else the server's.
    pub fn ping_interval(&self, server: &crate::server::ServerConfig) -> Duration {
        Duration::from_millis(self.ping_interval_ms.unwrap_or(server.ping_interval_ms))
    }
}

impl TenantConfig {
    /// The handler names a route may use: the configured ones, and any name
    /// when the tenant manages handlers through the API.
    pub fn accepts_handler(&self, name: &str) -> bool {
        self.handlers.contains_key(name) || (self.managed.is_some() && is_name(name))
    }

    /// Every problem of tenant `id` and its sections, in the order of the
    /// file's sections: its id, auth, origins, routes, managed handlers,
    /// channel rules. `unparsed_handlers` (tenant, name) were configured
    /// but could not be read (reported already: a route naming one is not
    /// reported again).
    pub(crate) fn problems(
        &self,
        id: &str,
        sandbox: &SandboxConfig,
        server: &crate::server::ServerConfig,
        unparsed_handlers: &[(String, String)],
    ) -> Vec<String> {
        let mut problems = Vec::new();
        if !is_name(id) {
            problems.push(format!("tenant id {id:?} must be 1-64 of a-z 0-9 _ -"));
        }
        let at = format!("tenants.{id}");
        problems.extend(self.auth.problems(&at));
        for o in &self.origins {
            if !is_exact_origin(o) {
                problems.push(format!(
                    "{at}.origins: {o:?} is not an exact origin like https://app.example.com (no wildcards, no path, not \"null\")"
                ));
            }
        }
        let window = self.limits.idempotency_window_secs;
        if !(1..=MAX_IDEMPOTENCY_WINDOW_SECS).contains(&window) {
            problems.push(format!(
                "{at}.limits.idempotency_window_secs must be 1 to {MAX_IDEMPOTENCY_WINDOW_SECS} (a day), not {window}"
            ));
        }
        if let Some(ping) = self.limits.ping_interval_ms {
            let idle = server.idle_timeout_ms;
            if ping == 0 || ping >= idle {
                problems.push(format!(
                    "{at}.limits.ping_interval_ms must be greater than zero and less than server.idle_timeout_ms ({idle}), not {ping}: a quiet connection is kept open by its pongs, so a longer interval closes it as idle"
                ));
            }
        }
        for (route, r) in &self.routes {
            let unparsed = unparsed_handlers
                .iter()
                .any(|(tid, h)| tid == id && *h == r.handler);
            let known = match (self.accepts_handler(&r.handler) || unparsed, &self.managed) {
                (true, _) => HandlerKnown::Yes,
                (false, Some(_)) => HandlerKnown::NoManaged,
                (false, None) => HandlerKnown::No,
            };
            problems.extend(r.problems(&at, route, known));
        }
        if let Some(m) = &self.managed {
            problems.extend(m.problems(&at, sandbox));
        }
        for (i, rule) in self.channels.iter().enumerate() {
            problems.extend(rule.problems(&at, i));
        }
        self.quotas
            .problems(&at, sandbox.pool_instances, &mut problems);
        problems
    }
}

/// A browser origin as the `Origin` header sends it: scheme and host (and
/// port), no path, no wildcard, not the opaque `null`.
fn is_exact_origin(o: &str) -> bool {
    !(o == "null"
        || o.contains('*')
        || o.ends_with('/')
        || !(o.starts_with("https://") || o.starts_with("http://")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(text: &str) -> TenantConfig {
        toml::from_str(&format!(
            "auth = {{ issuer = \"i\", audience = \"a\", keys = [{{ algorithm = \"HS256\", secret_env = \"S\" }}] }}\n{text}"
        ))
        .unwrap()
    }

    fn problems(t: &TenantConfig) -> Vec<String> {
        t.problems(
            "t",
            &SandboxConfig::default(),
            &crate::server::ServerConfig::default(),
            &[],
        )
    }

    #[test]
    fn the_defaults_allow_no_browser_and_use_the_documented_limits() {
        let t = tenant("");
        assert!(t.origins.is_empty() && !t.require_origin && !t.query_token);
        assert!(t.exposed_claims.is_empty());
        assert_eq!(t.scopes_claim, "scope");
        assert!(t.handlers.is_empty() && t.routes.is_empty() && t.channels.is_empty());
        assert!(t.managed.is_none());
        let l = &t.limits;
        assert_eq!(l.max_connections, 10_000);
        assert_eq!(l.max_connections_per_subject, 16);
        assert_eq!((l.messages_per_sec, l.message_burst), (50, 100));
        assert_eq!(l.subject_messages_per_sec, 100);
        assert_eq!(l.tenant_messages_per_sec, 10_000);
        assert_eq!(l.abuse_close_after, 50);
        assert_eq!(l.max_presence_members, 1000);
        assert_eq!(l.presence_debounce_ms, 5_000);
        assert_eq!(l.idempotency_window_secs, 300);
        assert!(problems(&t).is_empty());
    }

    #[test]
    fn the_idempotency_window_and_key_quota_are_checked_with_everything_else() {
        let t = tenant(
            "origins = [\"null\"]\n[limits]\nidempotency_window_secs = 0\n[quotas]\nidempotency_keys = 0",
        );
        assert_eq!(
            problems(&t),
            [
                "tenants.t.origins: \"null\" is not an exact origin like https://app.example.com (no wildcards, no path, not \"null\")",
                "tenants.t.limits.idempotency_window_secs must be 1 to 86400 (a day), not 0",
                "tenants.t.quotas.idempotency_keys must be greater than zero",
            ]
        );
        let long = tenant("[limits]\nidempotency_window_secs = 86401");
        assert_eq!(
            problems(&long),
            ["tenants.t.limits.idempotency_window_secs must be 1 to 86400 (a day), not 86401"]
        );
        let ok =
            tenant("[limits]\nidempotency_window_secs = 86400\n[quotas]\nidempotency_keys = 10");
        assert!(problems(&ok).is_empty());
        assert_eq!(ok.quotas.idempotency_keys, 10);
    }

    #[test]
    fn a_tenants_ping_interval_defaults_to_the_servers_and_stays_under_the_idle_timeout() {
        let server = crate::server::ServerConfig::default();
        let t = tenant("");
        assert_eq!(t.limits.ping_interval_ms, None);
        assert_eq!(
            t.limits.ping_interval(&server),
            Duration::from_millis(server.ping_interval_ms)
        );
        let quick = tenant("[limits]\nping_interval_ms = 5000");
        assert!(problems(&quick).is_empty());
        assert_eq!(
            quick.limits.ping_interval(&server),
            Duration::from_millis(5000)
        );
        for (ping, idle) in [(0, 60000), (60000, 60000), (90000, 60000)] {
            let t = tenant(&format!(
                "origins = [\"null\"]\n[limits]\nping_interval_ms = {ping}"
            ));
            let server = crate::server::ServerConfig {
                idle_timeout_ms: idle,
                ..crate::server::ServerConfig::default()
            };
            assert_eq!(
                t.problems("t", &SandboxConfig::default(), &server, &[]),
                [
                    "tenants.t.origins: \"null\" is not an exact origin like https://app.example.com (no wildcards, no path, not \"null\")".to_owned(),
                    format!("tenants.t.limits.ping_interval_ms must be greater than zero and less than server.idle_timeout_ms ({idle}), not {ping}: a quiet connection is kept open by its pongs, so a longer interval closes it as idle"),
                ],
                "reported with the tenant's other problems"
            );
        }
    }

    #[test]
    fn a_tenant_id_is_a_name() {
        let t = tenant("");
        assert_eq!(
            t.problems(
                "Bad Tenant",
                &SandboxConfig::default(),
                &crate::server::ServerConfig::default(),
                &[]
            ),
            ["tenant id \"Bad Tenant\" must be 1-64 of a-z 0-9 _ -"]
        );
    }

    #[test]
    fn origins_are_exact() {
        let t = tenant(
            "origins = [\"https://app.example.com\", \"http://localhost:5173\", \"null\", \"https://*.example.com\", \"https://a.example.com/\", \"app.example.com\"]",
        );
        let refused: Vec<String> = ["null", "https://*.example.com", "https://a.example.com/", "app.example.com"]
            .iter()
            .map(|o| format!("tenants.t.origins: {o:?} is not an exact origin like https://app.example.com (no wildcards, no path, not \"null\")"))
            .collect();
        assert_eq!(problems(&t), refused);
    }

    #[test]
    fn a_route_names_a_configured_handler_or_one_the_tenant_may_push() {
        let unmanaged = tenant("[routes.a]\nhandler = \"bot\"");
        assert_eq!(
            problems(&unmanaged),
            [
                "tenants.t.routes.a: no handler named \"bot\" (a handler pushed through the management API needs [tenants.<id>.managed])"
            ]
        );
        assert!(!unmanaged.accepts_handler("bot"));
        // A configured handler that could not be read is not reported again.
        let unparsed = [("t".to_owned(), "bot".to_owned())];
        assert!(
            unmanaged
                .problems(
                    "t",
                    &SandboxConfig::default(),
                    &crate::server::ServerConfig::default(),
                    &unparsed
                )
                .is_empty()
        );
        let managed = tenant(
            "[routes.a]\nhandler = \"bot\"\n[routes.b]\nhandler = \"Not A Name\"\n[managed]",
        );
        assert!(managed.accepts_handler("bot"));
        assert_eq!(
            problems(&managed),
            ["tenants.t.routes.b: no handler named \"Not A Name\""]
        );
        let configured =
            tenant("[handlers.echo]\ncomponent = \"e.wasm\"\n[routes.echo]\nhandler = \"echo\"");
        assert!(configured.accepts_handler("echo"));
        assert!(problems(&configured).is_empty());
    }

    #[test]
    fn problems_come_in_the_order_of_the_sections() {
        let t = tenant(
            "origins = [\"null\"]\n\
             [routes.ping]\nhandler = \"h\"\n\
             [managed]\nmax_versions = 0\n\
             [[channels]]\npattern = \"\"\n",
        );
        let mut t = t;
        t.auth.keys[0].algorithm = "HS1".into();
        assert_eq!(
            problems(&t),
            [
                "tenants.t.auth.keys[0]: unknown algorithm \"HS1\"",
                "tenants.t.origins: \"null\" is not an exact origin like https://app.example.com (no wildcards, no path, not \"null\")",
                "tenants.t.routes.ping: `ping` is a reserved message type",
                "tenants.t.managed.max_versions must be greater than zero",
                "tenants.t.channels[0]: empty channel pattern",
            ]
        );
    }
}
