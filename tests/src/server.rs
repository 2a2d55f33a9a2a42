//! A real Sluice server for tests: bound to port 0 on loopback, TLS with a
//! certificate made by rcgen at test time, tenants with real handlers, and a
//! real tokio-tungstenite + rustls client.

#![expect(
    clippy::expect_used,
    reason = "test helpers fail the test that called them by panicking"
)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};
use sluice::client::{ClientOptions, ClientSocket, ConnectError, TokenVia, connect};
use sluice::config::{
    AuthConfig, ChannelAccess, ChannelRuleConfig, Config, HandlerConfig, KeyConfig,
    ManagementConfig, RouteConfig, ServerConfig, TenantConfig, TenantLimits,
};
use sluice::node::Node;
use sluice::sandbox::{Capability, HandlerLimits, Isolation, SandboxConfig};
use sluice::server::ServerState;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::handlers;

/// HMAC secret of tenant `alpha`.
pub const ALPHA_SECRET: &str = "alpha-secret-0123456789abcdef0123456789";
/// HMAC secret of tenant `beta`.
pub const BETA_SECRET: &str = "beta-secret-0123456789abcdef0123456789ab";
/// The allowed browser origin of tenant `alpha`.
pub const ALPHA_ORIGIN: &str = "https://app.example.com";
/// Issuer and audience every test tenant expects.
pub const ISSUER: &str = "https://auth.example.com";
/// See [`ISSUER`].
pub const AUDIENCE: &str = "sluice";

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new empty directory.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sluice-test-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An EC P-256 key pair for ES256 tokens (tenant `gamma`).
pub struct EcKeys {
    /// PKCS#8 private key, PEM.
    pub private_pem: String,
    /// SubjectPublicKeyInfo, PEM.
    pub public_pem: String,
}

/// A handler of `component` with `grants`, reuse isolation and a generous
/// deadline.
pub fn handler(component: &str, grants: &[Capability]) -> HandlerConfig {
    HandlerConfig {
        component: PathBuf::from(component),
        isolation: Isolation::Reuse,
        grants: grants.to_vec(),
        // Calls are bounded by fuel; the deadline is generous because the
        // machine may be busy with other tests.
        limits: HandlerLimits {
            deadline: Duration::from_secs(2),
            ..HandlerLimits::default()
        },
    }
}

/// A route to `handler`.
pub fn route(
    handler: &str,
    channel: ChannelAccess,
    scopes: &[&str],
    schema: Option<Value>,
) -> RouteConfig {
    RouteConfig {
        handler: handler.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        channel,
        schema,
        schema_file: None,
    }
}

/// A channel rule.
pub fn rule(pattern: &str, publish: bool, publish_scopes: &[&str]) -> ChannelRuleConfig {
    ChannelRuleConfig {
        pattern: pattern.into(),
        subscribe: true,
        publish,
        subscribe_scopes: vec![],
        publish_scopes: publish_scopes.iter().map(|s| (*s).to_owned()).collect(),
        history: None,
        presence: false,
        presence_events: false,
    }
}

/// A tenant with the echo, chat and misbehave handlers, and these routes:
/// `echo`, `admin.echo` (scope `admin`), `profile.set` (a schema),
/// `chat.join`/`chat.leave` (subscribe), `chat.send` (publish, scope
/// `chat:write`, schema), `misbehave`. Channels: `room:{id}` (publish needs
/// `chat:write`), `user:{sub}` (subscribe only), `team:{claim:teams}`.
pub fn tenant(secret_file: &str) -> TenantConfig {
    let all = [Capability::State, Capability::Log, Capability::Clock];
    TenantConfig {
        auth: AuthConfig {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            leeway_secs: 0,
            keys: vec![KeyConfig {
                kid: Some("k1".into()),
                algorithm: "HS256".into(),
                secret_env: None,
                secret_file: Some(PathBuf::from(secret_file)),
                public_key_file: None,
                public_key_pem: None,
                secret: None,
            }],
            jwks_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            jwks_refresh_secs: 300,
        },
        origins: vec![ALPHA_ORIGIN.into()],
        require_origin: false,
        query_token: false,
        exposed_claims: vec!["name".into()],
        scopes_claim: "scope".into(),
        limits: TenantLimits::default(),
        handlers: [
            ("echo".to_owned(), handler(handlers::ECHO, &[])),
            ("chat".to_owned(), handler(handlers::CHAT, &[Capability::State, Capability::Clock])),
            ("misbehave".to_owned(), handler(handlers::MISBEHAVE, &all)),
        ]
        .into(),
        routes: [
            ("echo".to_owned(), route("echo", ChannelAccess::None, &[], None)),
            ("admin.echo".to_owned(), route("echo", ChannelAccess::None, &["admin"], None)),
            (
                "profile.set".to_owned(),
                route(
                    "echo",
                    ChannelAccess::None,
                    &[],
                    Some(json!({
                        "type": "object", "required": ["name"], "additionalProperties": false,
                        "properties": {
                            "name": {"type": "string", "minLength": 1, "maxLength": 20, "pattern": "^[a-z]+$"},
                            "age": {"type": "integer", "minimum": 0, "maximum": 150},
                            "tags": {"type": "array", "maxItems": 3, "uniqueItems": true, "items": {"type": "string"}},
                            "kind": {"enum": ["a", "b"]},
                            "score": {"type": "number", "multipleOf": 0.5, "exclusiveMaximum": 10},
                        }
                    })),
                ),
            ),
            ("chat.join".to_owned(), route("chat", ChannelAccess::Subscribe, &[], None)),
            ("chat.leave".to_owned(), route("chat", ChannelAccess::Subscribe, &[], None)),
            (
                "chat.send".to_owned(),
                route(
                    "chat",
                    ChannelAccess::Publish,
                    &["chat:write"],
                    Some(json!({"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "maxLength": 500}}})),
                ),
            ),
            ("misbehave".to_owned(), route("misbehave", ChannelAccess::None, &[], None)),
        ]
        .into(),
        channels: vec![
            rule("room:{id}", true, &["chat:write"]),
            rule("user:{sub}", false, &[]),
            rule("team:{claim:teams}", true, &[]),
        ],
        managed: None,
        quotas: Default::default(),
    }
}

/// A running server with tenants `alpha`, `beta` (same routes, other
/// secret, same kid) and `gamma` (ES256 public key, kid `ec1`).
pub struct TestServer {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Where its admin listener (metrics, health) listens.
    pub admin: Option<std::net::SocketAddr>,
    /// Where its management API (HTTPS) listens.
    pub management: Option<std::net::SocketAddr>,
    /// The certificate to trust.
    pub ca_pem: Vec<u8>,
    /// Tenant gamma's key pair.
    pub ec: EcKeys,
    /// The shared state (for assertions on registries).
    pub state: std::sync::Arc<ServerState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl TestServer {
    /// Start with the default test configuration.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Start after `customize` adjusted the configuration.
    pub async fn start_with(customize: impl FnOnce(&mut Config)) -> Self {
        let dir = TempDir::new();
        let (cert, key) =
            sluice::server::tls::self_signed(&["localhost", "127.0.0.1"]).expect("cert");
        std::fs::write(dir.0.join("cert.pem"), &cert).expect("write cert");
        std::fs::write(dir.0.join("key.pem"), key).expect("write key");
        std::fs::write(dir.0.join("alpha.secret"), ALPHA_SECRET).expect("secret");
        std::fs::write(dir.0.join("beta.secret"), BETA_SECRET).expect("secret");
        let kp = rcgen::KeyPair::generate().expect("ec key");
        let ec = EcKeys {
            private_pem: kp.serialize_pem(),
            public_pem: kp.public_key_pem(),
        };
        std::fs::write(dir.0.join("gamma.pub.pem"), &ec.public_pem).expect("pub");

        let mut gamma = tenant("unused");
        gamma.auth.keys = vec![KeyConfig {
            kid: Some("ec1".into()),
            algorithm: "ES256".into(),
            secret_env: None,
            secret_file: None,
            public_key_file: Some(PathBuf::from("gamma.pub.pem")),
            public_key_pem: None,
            secret: None,
        }];
        let mut config = Config {
            server: ServerConfig {
                listen: "127.0.0.1:0".parse().expect("addr"),
                tls_cert: "cert.pem".into(),
                tls_key: "key.pem".into(),
                max_connections_per_ip: 10_000,
                admin_listen: Some("127.0.0.1:0".parse().expect("addr")),
                handshakes_per_ip_per_sec: 10_000,
                handshake_burst_per_ip: 10_000,
                ..ServerConfig::default()
            },
            sandbox: SandboxConfig {
                pool_instances: 64,
                ..SandboxConfig::default()
            },
            tenants: [
                ("alpha".to_owned(), tenant("alpha.secret")),
                ("beta".to_owned(), tenant("beta.secret")),
                ("gamma".to_owned(), gamma),
            ]
            .into(),
            store: Default::default(),
            cluster: None,
            management: ManagementConfig {
                listen: "127.0.0.1:0".parse().expect("addr"),
                ..ManagementConfig::default()
            },
            base_dir: dir.0.clone(),
            source: None,
        };
        customize(&mut config);
        let node = match Node::build(config).await {
            Ok(n) => n,
            Err(e) => panic!("test server config: {e}"),
        };
        let state = node.state.clone();
        let listen = state.config.server.listen;
        let server = node.bind(listen).await.expect("bind");
        let addr = server.local_addr();
        let admin = server.admin_addr();
        let management = server.management_addr();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            admin,
            management,
            ca_pem: cert.into_bytes(),
            ec,
            state,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// The management API's client (HTTPS, trusting this server's
    /// certificate).
    pub fn management_client(&self) -> sluice::server::admin::client::Management {
        sluice::server::admin::client::Management {
            addr: self.management.expect("a management listener").to_string(),
            ca_pem: self.ca_pem.clone(),
            server_name: None,
        }
    }

    /// One request to the management API with `token`: the status and the
    /// answer (JSON, or the text as a JSON string).
    pub async fn manage(&self, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let method = http::Method::from_bytes(method.as_bytes()).expect("method");
        let (status, answer) = self
            .management_client()
            .request(method, path, Some(token), body)
            .await
            .expect("the management API answers");
        let value = serde_json::from_slice(&answer)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&answer).into_owned()));
        (status, value)
    }

    /// The wss URL of a tenant.
    pub fn url(&self, tenant: &str) -> String {
        format!("wss://{}/ws/{tenant}", self.addr)
    }

    /// A valid token of `tenant` (alpha or beta) for `sub` with `scopes`.
    pub fn token(&self, tenant: &str, sub: &str, scopes: &str) -> String {
        let claims = json!({
            "sub": sub, "iss": ISSUER, "aud": AUDIENCE, "scope": scopes,
            "exp": now() + 3600, "name": format!("{sub} example"), "teams": ["red"],
        });
        sign_hs(tenant_secret(tenant), &claims, Algorithm::HS256, Some("k1"))
    }

    /// Connect with a token in the `Authorization` header.
    pub async fn connect(&self, tenant: &str, token: &str) -> Result<Client, ConnectError> {
        self.connect_with(
            tenant,
            ClientOptions {
                token: Some(token.into()),
                ..self.options()
            },
        )
        .await
    }

    /// Connect with options.
    pub async fn connect_with(
        &self,
        tenant: &str,
        opts: ClientOptions,
    ) -> Result<Client, ConnectError> {
        let socket = connect(&self.url(tenant), &opts).await?;
        let mut client = Client { socket };
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "welcome", "first frame: {welcome}");
        Ok(client)
    }

    /// Options trusting the test certificate.
    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            ca_pem: self.ca_pem.clone(),
            token: None,
            via: TokenVia::Header,
            origin: None,
            ..Default::default()
        }
    }

    /// An honest client of `alpha`, connected, that round-trips an echo.
    pub async fn assert_honest_client_served(&self) {
        let token = self.token("alpha", "honest", "chat:write");
        let mut client = self
            .connect("alpha", &token)
            .await
            .expect("an honest client connects");
        let ack = client
            .request(json!({"type": "echo", "id": "h1", "data": {"still": "served"}}))
            .await;
        assert_eq!(
            ack,
            json!({"type": "ack", "id": "h1", "data": {"still": "served"}})
        );
    }
}

impl TestServer {
    /// Stop accepting, drain every connection, and wait for the server to
    /// finish; returns how long the drain took.
    pub async fn shutdown(&mut self) -> Duration {
        let started = std::time::Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("the server task ends cleanly");
        }
        started.elapsed()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// The HMAC secret of a test tenant.
pub fn tenant_secret(tenant: &str) -> &'static str {
    match tenant {
        "beta" => BETA_SECRET,
        _ => ALPHA_SECRET,
    }
}

/// Sign `claims` with an HMAC secret.
pub fn sign_hs(secret: &str, claims: &Value, alg: Algorithm, kid: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let key = EncodingKey::from_secret(secret.as_bytes()).expect("key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

/// Sign with a header given as JSON (with fields such as `jku`, `x5u`,
/// `jwk`, `crit` that attacks use) and an HMAC secret.
pub fn sign_raw(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let header: Header = serde_json::from_value(header.clone()).expect("a JWT header");
    let key = EncodingKey::from_secret(secret).expect("key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

/// The standard valid claims for `sub`.
pub fn claims(sub: &str) -> Map<String, Value> {
    json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 3600, "scope": "chat:write"})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

/// A connected test client.
pub struct Client {
    /// The socket.
    pub socket: ClientSocket,
}

const RECV_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    /// Send a JSON value as a text frame.
    pub async fn send(&mut self, value: Value) {
        self.socket
            .send(Message::text(value.to_string()))
            .await
            .expect("send");
    }

    /// Send raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// The next text frame as JSON.
    pub async fn recv(&mut self) -> Value {
        self.recv_within(RECV_TIMEOUT).await
    }

    /// The next text frame as JSON, waiting up to `within` for each frame.
    pub async fn recv_within(&mut self, within: Duration) -> Value {
        loop {
            let frame = tokio::time::timeout(within, self.socket.next())
                .await
                .expect("a frame within the timeout")
                .expect("the connection is open")
                .expect("a valid frame");
            match frame {
                Message::Text(t) => {
                    return serde_json::from_str(t.as_str()).expect("server frames are JSON");
                }
                Message::Close(c) => panic!("closed by the server: {c:?}"),
                _ => {}
            }
        }
    }

    /// Send a message with an id and return the `ack` or `error` answering
    /// it, skipping events.
    pub async fn request(&mut self, value: Value) -> Value {
        let id = value["id"].clone();
        self.send(value).await;
        loop {
            let frame = self.recv().await;
            if (frame["type"] == "ack" || frame["type"] == "error") && frame["id"] == id {
                return frame;
            }
        }
    }

    /// The next `event`, skipping anything else.
    pub async fn next_event(&mut self) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == "event" {
                return frame;
            }
        }
    }

    /// Wait for the server to close; returns the close code (None if the
    /// TCP connection ended without a close frame).
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(RECV_TIMEOUT, self.socket.next())
                .await
                .expect("closed within the timeout")
            {
                Some(Ok(Message::Close(c))) => return c.map(|c| u16::from(c.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Send a ping message and expect the pong: the connection is usable.
    pub async fn assert_usable(&mut self) {
        self.send(json!({"type": "ping", "id": "alive"})).await;
        loop {
            let frame = self.recv().await;
            if frame["type"] == "pong" {
                assert_eq!(frame["id"], "alive");
                return;
            }
        }
    }
}

impl Client {
    /// Send, reporting a failure instead of panicking (the server may
    /// already have closed).
    pub async fn socket_send_ok(
        &mut self,
        value: Value,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.socket.send(Message::text(value.to_string())).await
    }
}
