//! The configuration file: one TOML document, strict (unknown fields are
//! errors), every default a named constant, secrets by reference (an
//! environment variable or a file, never inline).
//!
//! [`Config::parse`] reports every problem it can find at once: each tenant,
//! handler, route and key is read separately, so one typo does not hide the
//! next. Semantic checks (files, schemas, handlers) happen when the server is
//! built (`sluice check` runs both).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub mod channel;
pub mod jwt;
mod limits;
pub mod quotas;

pub use jwt::JwtAlgorithm;
pub use limits::*;
pub use quotas::Quotas;

/// Address `sluice serve` listens on by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Time for TCP accept + TLS + HTTP upgrade, after which a client is dropped.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message (after reassembly of fragments).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 10;
/// Largest single frame.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 << 10;
/// Read buffer per connection, and the most tungstenite reads from TLS at
/// once (its default is 128 KiB). It zero-fills up to this much before
/// every read, including the one that finds the socket empty, so a small
/// buffer is cheaper per message (bench/instructions-per-message: 52,443
/// instructions per echo message at 4 KiB, 46,890 at 1 KiB) and per idle
/// connection; a larger message is read in more steps from rustls'
/// plaintext buffer, without more syscalls.
pub const DEFAULT_READ_BUFFER_BYTES: usize = 1 << 10;
/// Bytes buffered before a write reaches the socket.
pub const DEFAULT_WRITE_BUFFER_BYTES: usize = 16 << 10;
/// Bytes of outbound frames queued for one connection before it is
/// disconnected as a slow consumer.
pub const DEFAULT_MAX_OUTBOUND_BYTES: usize = 1 << 20;
/// Deepest JSON nesting accepted in a client message.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 32;
/// Concurrent connections from one IP address.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 256;
/// Handshakes per second from one IP address (sustained).
pub const DEFAULT_HANDSHAKES_PER_IP_PER_SEC: u32 = 50;
/// Handshake burst from one IP address.
pub const DEFAULT_HANDSHAKE_BURST_PER_IP: u32 = 100;
/// How often the server pings an otherwise quiet connection.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(20);
/// A connection that sends nothing (not even a pong) for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Where the admin listener (metrics, health) listens by default.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";
/// IPv6 clients are keyed by this prefix for per-IP limits: one host (or
/// one customer of a provider) usually holds a whole /64, so keying by the
/// full address would give it 2^64 separate caps.
pub const DEFAULT_IPV6_PREFIX_LEN: u8 = 64;
/// Connections in the TLS/upgrade phase at once, over all clients; past it
/// a new connection is closed at accept (file descriptors stay bounded).
pub const DEFAULT_MAX_HANDSHAKES_IN_FLIGHT: u32 = 1024;
/// Shortest admin token accepted, in bytes (`[server] admin_token`).
pub const MIN_ADMIN_TOKEN_BYTES: usize = 32;
/// On shutdown, how long connections get to finish their in-flight message.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
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
/// Where the durable store lives, relative to the config file.
pub const DEFAULT_DATA_DIR: &str = "data";
/// Subjects tracked in one channel's presence; past it, the presence
/// answer says `truncated` and no join events are sent for the others.
pub const DEFAULT_MAX_PRESENCE_MEMBERS: u32 = 1000;
/// A subject whose last connection left a presence channel is kept (and
/// no `leave` is sent) for this long: a reconnect inside it is neither a
/// leave nor a join.
pub const DEFAULT_PRESENCE_DEBOUNCE: Duration = Duration::from_secs(5);
/// Most events one channel's history may keep.
pub const MAX_HISTORY_SIZE: usize = 100_000;
/// Longest a channel's history may keep an event.
pub const MAX_HISTORY_TTL_SECS: u64 = 30 * 24 * 3600;
/// How often a JWKS URL is fetched again.
pub const DEFAULT_JWKS_REFRESH_SECS: u64 = 300;
/// Clock skew tolerated on `exp` and `nbf`.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// The claim that carries scopes (a space-separated string or an array).
pub const DEFAULT_SCOPES_CLAIM: &str = "scope";

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
    /// Tenants by id (the `<tenant>` in `/ws/<tenant>`).
    pub tenants: BTreeMap<String, TenantConfig>,
    /// The directory relative paths are resolved against.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file it was read from, if any (what a reload reads again).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Listener, TLS and WebSocket settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on ([`DEFAULT_LISTEN`]).
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub tls_cert: PathBuf,
    /// PEM private key.
    pub tls_key: PathBuf,
    /// Handshake deadline, ms ([`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub handshake_timeout_ms: u64,
    /// [`DEFAULT_MAX_MESSAGE_BYTES`].
    pub max_message_bytes: usize,
    /// [`DEFAULT_MAX_FRAME_BYTES`].
    pub max_frame_bytes: usize,
    /// [`DEFAULT_READ_BUFFER_BYTES`].
    pub read_buffer_bytes: usize,
    /// [`DEFAULT_WRITE_BUFFER_BYTES`].
    pub write_buffer_bytes: usize,
    /// [`DEFAULT_MAX_OUTBOUND_BYTES`].
    pub max_outbound_bytes: usize,
    /// [`DEFAULT_MAX_JSON_DEPTH`].
    pub max_json_depth: usize,
    /// [`DEFAULT_MAX_CONNECTIONS_PER_IP`].
    pub max_connections_per_ip: u32,
    /// [`DEFAULT_HANDSHAKES_PER_IP_PER_SEC`].
    pub handshakes_per_ip_per_sec: u32,
    /// [`DEFAULT_HANDSHAKE_BURST_PER_IP`].
    pub handshake_burst_per_ip: u32,
    /// Per-IP limits key IPv6 clients by this many leading bits of their
    /// address, 1-128 ([`DEFAULT_IPV6_PREFIX_LEN`]; 128: each address).
    pub ipv6_prefix_len: u8,
    /// Connections in the TLS/upgrade phase at once
    /// ([`DEFAULT_MAX_HANDSHAKES_IN_FLIGHT`]).
    pub max_handshakes_in_flight: u32,
    /// TCP load balancers whose connections start with a PROXY protocol v2
    /// header carrying the client's address (`["10.0.0.0/8"]`); per-IP
    /// limits then apply to that address. A connection from these
    /// addresses without a valid header is closed; from any other address
    /// a header is never read (it fails the TLS handshake). Empty (the
    /// default): no PROXY protocol.
    pub proxy_protocol_from: Vec<Cidr>,
    /// [`DEFAULT_PING_INTERVAL`], ms.
    pub ping_interval_ms: u64,
    /// [`DEFAULT_IDLE_TIMEOUT`], ms.
    pub idle_timeout_ms: u64,
    /// [`DEFAULT_DRAIN_TIMEOUT`], ms.
    pub drain_timeout_ms: u64,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`), plain HTTP;
    /// keep it on loopback or a private network ([`DEFAULT_ADMIN_LISTEN`]).
    pub admin_listen: Option<SocketAddr>,
    /// The bearer token `POST /reload` on the admin listener requires
    /// (`admin_token = { secret_file = "admin.token" }` or
    /// `{ secret_env = "SLUICE_ADMIN_TOKEN" }`, at least
    /// [`MIN_ADMIN_TOKEN_BYTES`] printable characters). None: no POST
    /// endpoint is served (SIGHUP still reloads).
    pub admin_token: Option<SecretRef>,
}

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

/// The default `[cluster] prefix`.
pub const DEFAULT_NATS_PREFIX: &str = "sluice";

fn one_replica() -> usize {
    1
}

fn default_nats_prefix() -> String {
    DEFAULT_NATS_PREFIX.to_owned()
}

fn is_name_token(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl ClusterConfig {
    /// What is wrong with it.
    fn problems(&self, problems: &mut Vec<String>) {
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

/// An address range in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`; a bare
/// address is one host).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    /// The network's address (bits past the prefix are zero).
    pub addr: std::net::IpAddr,
    /// Leading bits that must match.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as
    /// their IPv4 address).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

/// `ip` with every bit past the first `prefix` cleared.
pub fn mask(ip: std::net::IpAddr, prefix: u8) -> std::net::IpAddr {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let keep = u32::from(prefix.min(32));
            let bits = if keep == 0 {
                0
            } else {
                u32::MAX << (32 - keep)
            };
            IpAddr::V4((u32::from(v4) & bits).into())
        }
        IpAddr::V6(v6) => {
            let keep = u32::from(prefix.min(128));
            let bits = if keep == 0 {
                0
            } else {
                u128::MAX << (128 - keep)
            };
            IpAddr::V6((u128::from(v6) & bits).into())
        }
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an address range like 10.0.0.0/8 or 2001:db8::/32");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.as_str(), None),
        };
        let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        if mask(addr, prefix) != addr {
            return Err(format!(
                "{s:?} has bits set past its /{prefix} prefix (did you mean {}/{prefix}?)",
                mask(addr, prefix)
            ));
        }
        Ok(Self { addr, prefix })
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        format!("{}/{}", c.addr, c.prefix)
    }
}

/// A secret by reference: exactly one of an environment variable or a file
/// (its contents, trimmed), never the secret inline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Environment variable holding the secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the secret (relative to the config file).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

impl SecretRef {
    /// Read the secret; `at` names the setting in messages.
    pub fn read(&self, config: &Config, at: &str) -> Result<String, String> {
        let (secret, from) = match (&self.secret_env, &self.secret_file) {
            (Some(var), None) => (
                std::env::var(var)
                    .map_err(|_| format!("{at}: environment variable ${var} is not set"))?,
                format!("${var}"),
            ),
            (None, Some(file)) => {
                let path = config.path(file);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{at}: cannot read {}: {e}", path.display()))?;
                (text, path.display().to_string())
            }
            _ => return Err(format!("{at}: set exactly one of secret_env, secret_file")),
        };
        let secret = secret.trim();
        if secret.len() < MIN_ADMIN_TOKEN_BYTES {
            return Err(format!(
                "{at}: the secret in {from} is shorter than {MIN_ADMIN_TOKEN_BYTES} bytes"
            ));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{at}: the secret in {from} must be printable ASCII without spaces (it is sent in an HTTP header)"
            ));
        }
        Ok(secret.to_owned())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8443))),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT.as_millis() as u64,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            read_buffer_bytes: DEFAULT_READ_BUFFER_BYTES,
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_BYTES,
            max_outbound_bytes: DEFAULT_MAX_OUTBOUND_BYTES,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            handshakes_per_ip_per_sec: DEFAULT_HANDSHAKES_PER_IP_PER_SEC,
            handshake_burst_per_ip: DEFAULT_HANDSHAKE_BURST_PER_IP,
            ipv6_prefix_len: DEFAULT_IPV6_PREFIX_LEN,
            max_handshakes_in_flight: DEFAULT_MAX_HANDSHAKES_IN_FLIGHT,
            proxy_protocol_from: Vec::new(),
            ping_interval_ms: DEFAULT_PING_INTERVAL.as_millis() as u64,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT.as_millis() as u64,
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT.as_millis() as u64,
            admin_listen: DEFAULT_ADMIN_LISTEN.parse().ok(),
            admin_token: None,
        }
    }
}

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
    pub quotas: Quotas,
}

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

/// Versions of a pushed handler kept by default.
pub const DEFAULT_MAX_VERSIONS: usize = 20;

fn default_max_versions() -> usize {
    DEFAULT_MAX_VERSIONS
}

impl TenantConfig {
    /// The handler names a route may use: the configured ones, and any name
    /// when the tenant manages handlers through the API.
    pub fn accepts_handler(&self, name: &str) -> bool {
        self.handlers.contains_key(name) || (self.managed.is_some() && is_name(name))
    }
}

fn default_scopes_claim() -> String {
    DEFAULT_SCOPES_CLAIM.to_owned()
}

/// Token verification for one tenant.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Tolerated clock skew, seconds ([`DEFAULT_LEEWAY_SECS`]).
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Verification keys.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// A JWKS file (public keys with `kid` and `alg`).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (`https://` only), fetched at start and refreshed.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Extra CA certificates (PEM) to trust for `jwks_url`, besides the
    /// public web roots.
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    /// Seconds between refreshes of `jwks_url` ([`DEFAULT_JWKS_REFRESH_SECS`]).
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_secs: u64,
}

fn default_jwks_refresh() -> u64 {
    DEFAULT_JWKS_REFRESH_SECS
}

fn default_leeway() -> u64 {
    DEFAULT_LEEWAY_SECS
}

/// One verification key. Exactly one of `secret_env`, `secret_file`,
/// `public_key_file` must be set; the algorithm is pinned to the key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The `kid` tokens name this key by; a key without one matches tokens
    /// without a `kid`.
    #[serde(default)]
    pub kid: Option<String>,
    /// `HS256`, `HS384`, `HS512`, `RS256`, `RS384`, `RS512`, `PS256`,
    /// `PS384`, `PS512`, `ES256`, `ES384` or `EdDSA`.
    pub algorithm: String,
    /// Environment variable holding an HMAC secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding an HMAC secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// PEM public key (RSA, EC or Ed25519).
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
}

impl KeyConfig {
    /// The algorithm, typed; `None` when the configured name is not one
    /// Sluice supports (reported by [`Config::parse`]).
    pub fn algorithm(&self) -> Option<JwtAlgorithm> {
        self.algorithm.parse().ok()
    }
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
        }
    }
}

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
    /// Per-call limits (docs/configuration.md, *Handler limits*). `fuel`,
    /// `deadline_ms` and `memory_bytes` left unset are sized for the
    /// component at load (interpreter components get more).
    #[serde(default, deserialize_with = "HandlerLimits::from_table")]
    pub limits: HandlerLimits,
}

/// What a route does with its channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelAccess {
    /// The route takes no channel; a message carrying one is refused.
    #[default]
    None,
    /// The message publishes to its channel: needs publish permission.
    Publish,
    /// The message subscribes to (or leaves) its channel: needs subscribe
    /// permission.
    Subscribe,
}

/// One message type a tenant accepts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The handler (by name) that receives it.
    pub handler: String,
    /// Scopes the token must carry.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// What the route does with its channel.
    #[serde(default)]
    pub channel: ChannelAccess,
    /// The JSON Schema of `data`, inline.
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    /// The JSON Schema of `data`, from a file.
    #[serde(default)]
    pub schema_file: Option<PathBuf>,
}

/// A channel rule: the channels matching `pattern` may be subscribed to
/// and/or published to by principals holding the listed scopes.
///
/// Pattern syntax: literal text and placeholders. `{sub}` matches only the
/// principal's own subject; `{claim:NAME}` matches the value of claim NAME
/// (or any element, if it is an array); any other `{name}` matches one
/// segment of `A-Z a-z 0-9 _ - .` (no `:`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRuleConfig {
    /// e.g. `room:{id}`, `user:{sub}`, `team:{claim:teams}`.
    pub pattern: String,
    /// Whether matching channels may be subscribed to.
    #[serde(default = "yes")]
    pub subscribe: bool,
    /// Whether matching channels may be published to.
    #[serde(default = "yes")]
    pub publish: bool,
    /// Scopes needed to subscribe.
    #[serde(default)]
    pub subscribe_scopes: Vec<String>,
    /// Scopes needed to publish.
    #[serde(default)]
    pub publish_scopes: Vec<String>,
    /// Keep the last events of each matching channel, so that a client
    /// that reconnects can recover what it missed
    /// (`history = { size = 100, ttl_secs = 600 }`).
    #[serde(default)]
    pub history: Option<HistoryConfig>,
    /// Answer `presence` requests: who is subscribed.
    #[serde(default)]
    pub presence: bool,
    /// Send `join` and `leave` events to the channel's subscribers
    /// (needs `presence`).
    #[serde(default)]
    pub presence_events: bool,
}

/// How much of a channel's past is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Events kept per channel, at most (1..=[`MAX_HISTORY_SIZE`]).
    pub size: usize,
    /// Seconds an event is kept (1..=[`MAX_HISTORY_TTL_SECS`]).
    pub ttl_secs: u64,
}

fn yes() -> bool {
    true
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
        let server = section::<ServerConfig>(&mut root, "server", &mut problems);
        let server_ok = server.is_some() || !server_present;
        let server = server.unwrap_or_default();
        let sandbox =
            section::<SandboxConfig>(&mut root, "sandbox", &mut problems).unwrap_or_default();
        let store = section::<StoreConfig>(&mut root, "store", &mut problems).unwrap_or_default();
        let cluster = if root.contains_key("cluster") {
            section::<ClusterConfig>(&mut root, "cluster", &mut problems)
        } else {
            None
        };
        if let Some(c) = &cluster {
            c.problems(&mut problems);
        }
        if store.history_bytes < HISTORY_CHANNEL_COST || store.history_channels == 0 {
            problems.push(format!(
                "store: history_bytes must be at least {HISTORY_CHANNEL_COST} and history_channels more than zero"
            ));
        }
        let mut tenants = BTreeMap::new();
        let mut unparsed_handlers = Vec::new();
        if let Some(value) = root.remove("tenants") {
            match value {
                toml::Value::Table(table) => {
                    for (id, value) in table {
                        if let Some(t) = tenant(&id, value, &mut problems, &mut unparsed_handlers) {
                            tenants.insert(id, t);
                        }
                    }
                }
                _ => problems.push("`tenants` must be a table of tenants".into()),
            }
        }
        for key in root.keys() {
            problems.push(format!(
                "unknown top-level key `{key}` (expected server, sandbox, store, cluster, tenants)"
            ));
        }
        let config = Config {
            server,
            sandbox,
            store,
            cluster,
            tenants,
            base_dir: base_dir.to_path_buf(),
            source: None,
        };
        problems.extend(config.problems(server_ok, &unparsed_handlers));
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
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Checks that need no files: references, names, numbers.
    fn problems(&self, server_ok: bool, unparsed_handlers: &[(String, String)]) -> Vec<String> {
        let mut problems = Vec::new();
        let s = &self.server;
        if server_ok && (s.tls_cert.as_os_str().is_empty() || s.tls_key.as_os_str().is_empty()) {
            problems.push(
                "server: tls_cert and tls_key are required (Sluice serves wss:// only)".into(),
            );
        }
        for (name, v) in [
            ("max_message_bytes", s.max_message_bytes),
            ("max_frame_bytes", s.max_frame_bytes),
            ("max_outbound_bytes", s.max_outbound_bytes),
            ("max_json_depth", s.max_json_depth),
            ("handshake_timeout_ms", s.handshake_timeout_ms as usize),
            ("ping_interval_ms", s.ping_interval_ms as usize),
            ("idle_timeout_ms", s.idle_timeout_ms as usize),
            (
                "handshakes_per_ip_per_sec",
                s.handshakes_per_ip_per_sec as usize,
            ),
            ("max_connections_per_ip", s.max_connections_per_ip as usize),
            (
                "max_handshakes_in_flight",
                s.max_handshakes_in_flight as usize,
            ),
        ] {
            if v == 0 {
                problems.push(format!("server.{name} must be greater than zero"));
            }
        }
        if !(1..=128).contains(&s.ipv6_prefix_len) {
            problems.push(format!(
                "server.ipv6_prefix_len: {} must be 1-128 (64 keys each /64, 128 each address)",
                s.ipv6_prefix_len
            ));
        }
        if let Some(token) = &s.admin_token
            && token.secret_env.is_some() == token.secret_file.is_some()
        {
            problems.push("server.admin_token: set exactly one of secret_env, secret_file".into());
        }
        if self.tenants.is_empty() {
            problems.push("no tenants: add at least one [tenants.<id>]".into());
        }
        for (id, t) in &self.tenants {
            if !is_name(id) {
                problems.push(format!("tenant id {id:?} must be 1-64 of a-z 0-9 _ -"));
            }
            let at = format!("tenants.{id}");
            if t.auth.keys.is_empty() && t.auth.jwks_file.is_none() && t.auth.jwks_url.is_none() {
                problems.push(format!(
                    "{at}.auth: no keys, no jwks_file and no jwks_url: no token could ever verify"
                ));
            }
            if let Some(url) = &t.auth.jwks_url
                && !url.starts_with("https://")
            {
                problems.push(format!(
                    "{at}.auth.jwks_url: {url:?} must be an https:// URL"
                ));
            }
            for (i, k) in t.auth.keys.iter().enumerate() {
                let sources = [
                    k.secret_env.is_some(),
                    k.secret_file.is_some(),
                    k.public_key_file.is_some(),
                ];
                if sources.iter().filter(|s| **s).count() != 1 {
                    problems.push(format!(
                        "{at}.auth.keys[{i}]: set exactly one of secret_env, secret_file, public_key_file"
                    ));
                }
                if k.algorithm().is_none() {
                    problems.push(format!(
                        "{at}.auth.keys[{i}]: unknown algorithm {:?}",
                        k.algorithm
                    ));
                }
            }
            for o in &t.origins {
                if o == "null"
                    || o.contains('*')
                    || o.ends_with('/')
                    || !(o.starts_with("https://") || o.starts_with("http://"))
                {
                    problems.push(format!(
                        "{at}.origins: {o:?} is not an exact origin like https://app.example.com (no wildcards, no path, not \"null\")"
                    ));
                }
            }
            for (route, r) in &t.routes {
                if sluice_protocol::is_reserved_type(route) {
                    problems.push(format!(
                        "{at}.routes.{route}: `{route}` is a reserved message type"
                    ));
                }
                let unparsed = unparsed_handlers
                    .iter()
                    .any(|(tid, h)| tid == id && *h == r.handler);
                if !t.accepts_handler(&r.handler) && !unparsed {
                    problems.push(format!(
                        "{at}.routes.{route}: no handler named {:?}{}",
                        r.handler,
                        if t.managed.is_some() {
                            ""
                        } else {
                            " (a handler pushed through the management API needs [tenants.<id>.managed])"
                        }
                    ));
                }
                if r.schema.is_some() && r.schema_file.is_some() {
                    problems.push(format!(
                        "{at}.routes.{route}: set schema or schema_file, not both"
                    ));
                }
            }
            t.quotas
                .problems(&at, self.sandbox.pool_instances, &mut problems);
            if let Some(m) = &t.managed {
                if let Some(token) = &m.token
                    && token.secret_env.is_some() == token.secret_file.is_some()
                {
                    problems.push(format!(
                        "{at}.managed.token: set exactly one of secret_env, secret_file"
                    ));
                }
                if m.max_versions == 0 {
                    problems.push(format!(
                        "{at}.managed.max_versions must be greater than zero"
                    ));
                }
                match m.max_component_bytes {
                    Some(0) => problems.push(format!(
                        "{at}.managed.max_component_bytes must be greater than zero"
                    )),
                    Some(n) if n > self.sandbox.max_component_bytes => problems.push(format!(
                        "{at}.managed.max_component_bytes: {n} is more than [sandbox] max_component_bytes {}",
                        self.sandbox.max_component_bytes
                    )),
                    _ => {}
                }
                for p in m.limits.problems(&self.sandbox) {
                    problems.push(format!("{at}.managed.limits: {p}"));
                }
            }
            for (i, rule) in t.channels.iter().enumerate() {
                if let Err(e) = channel::ChannelPattern::parse(&rule.pattern) {
                    problems.push(format!("{at}.channels[{i}]: {e}"));
                }
                if let Some(h) = &rule.history {
                    if !(1..=MAX_HISTORY_SIZE).contains(&h.size) {
                        problems.push(format!(
                            "{at}.channels[{i}].history.size: {} must be 1-{MAX_HISTORY_SIZE}",
                            h.size
                        ));
                    }
                    if !(1..=MAX_HISTORY_TTL_SECS).contains(&h.ttl_secs) {
                        problems.push(format!(
                            "{at}.channels[{i}].history.ttl_secs: {} must be 1-{MAX_HISTORY_TTL_SECS}",
                            h.ttl_secs
                        ));
                    }
                }
                if rule.presence_events && !rule.presence {
                    problems.push(format!(
                        "{at}.channels[{i}]: presence_events needs presence = true"
                    ));
                }
            }
        }
        problems
    }
}

/// Read a file the configuration names and parse it as JSON (schemas, JWKS
/// files). The error says which file and what is wrong, without its content.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{} is not valid JSON: {e}", path.display()))
}

/// A name for tenants and handlers: 1-64 of `a-z 0-9 _ -`.
pub fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn section<T: DeserializeOwned>(
    root: &mut toml::Table,
    key: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    let value = root.remove(key)?;
    deserialize(value, key, problems)
}

fn deserialize<T: DeserializeOwned>(
    value: toml::Value,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    match T::deserialize(value) {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(format!("{at}: {}", e.to_string().trim()));
            None
        }
    }
}

/// Read one tenant, table by table, so that problems in its handlers,
/// routes and auth are all reported.
fn tenant(
    id: &str,
    value: toml::Value,
    problems: &mut Vec<String>,
    unparsed_handlers: &mut Vec<(String, String)>,
) -> Option<TenantConfig> {
    let at = format!("tenants.{id}");
    let toml::Value::Table(mut table) = value else {
        problems.push(format!("{at} must be a table"));
        return None;
    };
    let mut handlers = BTreeMap::new();
    if let Some(toml::Value::Table(hs)) = table.remove("handlers") {
        for (name, v) in hs {
            if !is_name(&name) {
                problems.push(format!(
                    "{at}.handlers.{name}: handler names are 1-64 of a-z 0-9 _ -"
                ));
            }
            match deserialize::<HandlerConfig>(v, &format!("{at}.handlers.{name}"), problems) {
                Some(h) => {
                    handlers.insert(name, h);
                }
                None => unparsed_handlers.push((id.to_owned(), name)),
            }
        }
    }
    let mut routes = BTreeMap::new();
    if let Some(toml::Value::Table(rs)) = table.remove("routes") {
        for (name, v) in rs {
            if let Some(r) = deserialize::<RouteConfig>(v, &format!("{at}.routes.{name}"), problems)
            {
                routes.insert(name, r);
            }
        }
    }
    table.insert("handlers".into(), toml::Value::Table(toml::Table::new()));
    table.insert("routes".into(), toml::Value::Table(toml::Table::new()));
    let mut tenant = deserialize::<TenantConfig>(toml::Value::Table(table), &at, problems)?;
    tenant.handlers = handlers;
    tenant.routes = routes;
    // Kept even when some of its parts failed, so that the checks that
    // follow report their problems too.
    Some(tenant)
}
