//! `[server]`: the listener, TLS, the WebSocket limits, per-IP limits, the
//! admin listener and its token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
use crate::secret::SecretRef;

pub use sluice_protocol::{
    DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_JSON_DEPTH, DEFAULT_MAX_MESSAGE_BYTES,
};

/// Address `sluice serve` listens on by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Time for TCP accept + TLS + HTTP upgrade, after which a client is dropped.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Read buffer per connection, and the most tungstenite reads from TLS at
/// once (its default is 128 KiB). It zero-fills up to this much before
/// every read, including the one that finds the socket empty, so a small
/// buffer is cheaper per message (bench/instructions-per-message: 52,443
/// instructions per echo message at 4 KiB, 46,890 at 1 KiB) and per idle
/// connection (it is held for the connection's life: 9.9 KiB per idle
/// connection at 1 KiB, 9.4 at 512 bytes); a larger message is read in more
/// steps from the TLS layer's plaintext, without more syscalls.
pub const DEFAULT_READ_BUFFER_BYTES: usize = 512;
/// Bytes buffered before a write reaches the socket.
pub const DEFAULT_WRITE_BUFFER_BYTES: usize = 16 << 10;
/// Bytes of outbound frames queued for one connection before it is
/// disconnected as a slow consumer.
pub const DEFAULT_MAX_OUTBOUND_BYTES: usize = 1 << 20;
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
/// On shutdown, how long connections get to finish their in-flight message.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// [`crate::MIN_ADMIN_TOKEN_BYTES`] printable characters). None: no POST
    /// endpoint is served (SIGHUP still reloads).
    pub admin_token: Option<SecretRef>,
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

impl ServerConfig {
    /// What is wrong with the section. `parsed`: it was read (a section that
    /// failed to parse has had its problem reported, and its missing
    /// certificate would only repeat it).
    pub(crate) fn problems(&self, parsed: bool) -> Vec<String> {
        let mut problems = Vec::new();
        if parsed && (self.tls_cert.as_os_str().is_empty() || self.tls_key.as_os_str().is_empty()) {
            problems.push(
                "server: tls_cert and tls_key are required (Sluice serves wss:// only)".into(),
            );
        }
        for (name, v) in [
            ("max_message_bytes", self.max_message_bytes),
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_outbound_bytes", self.max_outbound_bytes),
            ("max_json_depth", self.max_json_depth),
            ("handshake_timeout_ms", self.handshake_timeout_ms as usize),
            ("ping_interval_ms", self.ping_interval_ms as usize),
            ("idle_timeout_ms", self.idle_timeout_ms as usize),
            (
                "handshakes_per_ip_per_sec",
                self.handshakes_per_ip_per_sec as usize,
            ),
            (
                "max_connections_per_ip",
                self.max_connections_per_ip as usize,
            ),
            (
                "max_handshakes_in_flight",
                self.max_handshakes_in_flight as usize,
            ),
        ] {
            if v == 0 {
                problems.push(format!("server.{name} must be greater than zero"));
            }
        }
        if self.ping_interval_ms > 0 && self.ping_interval_ms >= self.idle_timeout_ms {
            problems.push(format!(
                "server.ping_interval_ms ({}) must be less than server.idle_timeout_ms ({}): a quiet connection is kept open by its pongs, so a longer interval closes it as idle",
                self.ping_interval_ms, self.idle_timeout_ms
            ));
        }
        if !(1..=128).contains(&self.ipv6_prefix_len) {
            problems.push(format!(
                "server.ipv6_prefix_len: {} must be 1-128 (64 keys each /64, 128 each address)",
                self.ipv6_prefix_len
            ));
        }
        if let Some(token) = &self.admin_token
            && !token.names_one_source()
        {
            problems.push("server.admin_token: set exactly one of secret_env, secret_file".into());
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_certificate() -> ServerConfig {
        ServerConfig {
            tls_cert: "cert.pem".into(),
            tls_key: "key.pem".into(),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn the_defaults_are_the_documented_constants_and_need_only_a_certificate() {
        let s = ServerConfig::default();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(
            s.admin_listen.map(|a| a.to_string()).as_deref(),
            Some(DEFAULT_ADMIN_LISTEN)
        );
        assert_eq!(s.max_message_bytes, 64 << 10);
        assert_eq!(s.max_frame_bytes, 64 << 10);
        assert_eq!(s.max_json_depth, 32);
        assert_eq!(s.read_buffer_bytes, DEFAULT_READ_BUFFER_BYTES);
        assert_eq!(s.write_buffer_bytes, DEFAULT_WRITE_BUFFER_BYTES);
        assert_eq!(s.max_outbound_bytes, DEFAULT_MAX_OUTBOUND_BYTES);
        assert_eq!(s.handshake_timeout_ms, 5_000);
        assert_eq!(s.ping_interval_ms, 20_000);
        assert_eq!(s.idle_timeout_ms, 60_000);
        assert_eq!(s.drain_timeout_ms, 10_000);
        assert_eq!(s.max_connections_per_ip, DEFAULT_MAX_CONNECTIONS_PER_IP);
        assert_eq!(
            s.handshakes_per_ip_per_sec,
            DEFAULT_HANDSHAKES_PER_IP_PER_SEC
        );
        assert_eq!(s.handshake_burst_per_ip, DEFAULT_HANDSHAKE_BURST_PER_IP);
        assert_eq!(s.ipv6_prefix_len, 64);
        assert_eq!(s.max_handshakes_in_flight, DEFAULT_MAX_HANDSHAKES_IN_FLIGHT);
        assert!(s.proxy_protocol_from.is_empty());
        assert!(s.admin_token.is_none());
        assert!(with_certificate().problems(true).is_empty());
        // The section read from an empty table is the default.
        let parsed: ServerConfig = toml::from_str("").unwrap();
        assert_eq!(parsed.listen, s.listen);
        assert_eq!(parsed.max_message_bytes, s.max_message_bytes);
    }

    #[test]
    fn a_server_without_a_certificate_is_refused_unless_its_section_failed_to_parse() {
        let want = ["server: tls_cert and tls_key are required (Sluice serves wss:// only)"];
        assert_eq!(ServerConfig::default().problems(true), want);
        let half = ServerConfig {
            tls_cert: "cert.pem".into(),
            ..ServerConfig::default()
        };
        assert_eq!(half.problems(true), want);
        assert!(ServerConfig::default().problems(false).is_empty());
    }

    #[test]
    fn a_ping_interval_at_or_over_the_idle_timeout_is_refused() {
        for (ping, idle, refused) in [
            (20_000, 60_000, false),
            (60_000, 60_000, true),
            (90_000, 60_000, true),
        ] {
            let s = ServerConfig {
                ping_interval_ms: ping,
                idle_timeout_ms: idle,
                ..with_certificate()
            };
            let problems = s.problems(true);
            assert_eq!(
                problems.iter().any(|p| p.starts_with(&format!(
                    "server.ping_interval_ms ({ping}) must be less than server.idle_timeout_ms ({idle})"
                ))),
                refused,
                "{ping} / {idle}: {problems:?}"
            );
        }
    }

    #[test]
    fn every_zero_limit_is_named() {
        let s = ServerConfig {
            max_message_bytes: 0,
            max_frame_bytes: 0,
            max_outbound_bytes: 0,
            max_json_depth: 0,
            handshake_timeout_ms: 0,
            ping_interval_ms: 0,
            idle_timeout_ms: 0,
            handshakes_per_ip_per_sec: 0,
            max_connections_per_ip: 0,
            max_handshakes_in_flight: 0,
            ..with_certificate()
        };
        let names = [
            "max_message_bytes",
            "max_frame_bytes",
            "max_outbound_bytes",
            "max_json_depth",
            "handshake_timeout_ms",
            "ping_interval_ms",
            "idle_timeout_ms",
            "handshakes_per_ip_per_sec",
            "max_connections_per_ip",
            "max_handshakes_in_flight",
        ];
        let want: Vec<String> = names
            .iter()
            .map(|n| format!("server.{n} must be greater than zero"))
            .collect();
        assert_eq!(s.problems(true), want);
    }

    #[test]
    fn the_ipv6_prefix_is_1_to_128() {
        for (len, ok) in [(0, false), (1, true), (64, true), (128, true), (129, false)] {
            let s = ServerConfig {
                ipv6_prefix_len: len,
                ..with_certificate()
            };
            let problems = s.problems(true);
            if ok {
                assert!(problems.is_empty(), "{len}: {problems:?}");
            } else {
                assert_eq!(
                    problems,
                    [format!(
                        "server.ipv6_prefix_len: {len} must be 1-128 (64 keys each /64, 128 each address)"
                    )]
                );
            }
        }
    }

    #[test]
    fn the_admin_token_names_exactly_one_source() {
        let want = ["server.admin_token: set exactly one of secret_env, secret_file"];
        for (env, file, ok) in [
            (None, None, false),
            (Some("T"), Some("t.token"), false),
            (Some("T"), None, true),
            (None, Some("t.token"), true),
        ] {
            let s = ServerConfig {
                admin_token: Some(SecretRef {
                    secret_env: env.map(str::to_owned),
                    secret_file: file.map(PathBuf::from),
                }),
                ..with_certificate()
            };
            if ok {
                assert!(s.problems(true).is_empty());
            } else {
                assert_eq!(s.problems(true), want);
            }
        }
    }
}
