//! The endpoint: its URL, how to reach it (TCP, then TLS for `wss`), and the
//! WebSocket upgrade, written and read by hand so that every answer is seen
//! as it came, with every step under a time bound and the answer's head
//! under a size bound.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// The bound on each network step: connect, TLS handshake, the answer to
/// an upgrade.
pub const STEP: Duration = Duration::from_secs(5);
/// The most of an upgrade answer's head the probe reads.
pub const MAX_HEAD: usize = 16 << 10;
/// The largest frame and message the probe accepts from a server (enough
/// to see a 1 MiB probe echoed back, bounded against hostile servers).
pub const MAX_INBOUND: usize = 2 << 20;

/// `ws` or `wss`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plaintext.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

/// A parsed `ws://` or `wss://` URL.
#[derive(Clone, Debug)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// Its scheme.
    pub scheme: Scheme,
    /// The host, without brackets.
    pub host: String,
    /// The port (80 / 443 when the URL names none).
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
    /// The `Host` header: the URL's authority.
    pub authority: String,
}

impl Target {
    /// Whether the host is this machine (`localhost`, `127.0.0.0/8`,
    /// `::1`): plaintext to it never crosses a network.
    pub fn is_loopback(&self) -> bool {
        let host = self.host.strip_suffix('.').unwrap_or(&self.host);
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// Parse `url`; only `ws://` and `wss://` URLs without user info.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("wss://") {
            (Scheme::Wss, rest)
        } else if let Some(rest) = url.strip_prefix("ws://") {
            (Scheme::Ws, rest)
        } else {
            anyhow::bail!("{url}: the URL must start with wss:// (or ws://)");
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() || authority.contains('@') {
            anyhow::bail!("{url}: expected wss://HOST[:PORT]/PATH without user info");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| anyhow::anyhow!("{url}: unclosed [ in the host"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse()
                .map_err(|_| anyhow::anyhow!("{url}: {p:?} is not a port"))?,
            None if scheme == Scheme::Wss => 443,
            None => 80,
        };
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        Ok(Self {
            url: url.to_owned(),
            scheme,
            host: host.to_owned(),
            port,
            path,
            authority: authority.to_owned(),
        })
    }

    /// The name TLS verifies the certificate against (a DNS name or an IP).
    pub fn server_name(&self) -> anyhow::Result<ServerName<'static>> {
        ServerName::try_from(self.host.clone())
            .map_err(|e| anyhow::anyhow!("{}: not a valid host name: {e}", self.host))
    }

    /// Whether the host is a DNS name (IP addresses get no SNI).
    pub fn host_is_dns_name(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_err()
    }
}

/// Anything the probe can speak HTTP and WebSocket over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
/// A connection to the endpoint: TCP, or TLS over TCP.
pub type Stream = Box<dyn Io>;
/// An upgraded connection.
pub type Socket = WebSocketStream<BufReader<Stream>>;

/// What the probe adds to the upgrade request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Request<'a> {
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<&'a str>,
    /// Sent as `Origin`.
    pub origin: Option<&'a str>,
    /// Sent as `Sec-WebSocket-Extensions`.
    pub extensions: Option<&'a str>,
}

/// The status line and headers of an answer.
#[derive(Clone, Debug)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// The status line as sent.
    pub status_line: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How an upgrade attempt ended.
pub enum Upgrade {
    /// 101: the connection is a WebSocket now.
    Open(Head, Box<Socket>),
    /// Any other status.
    Refused(Head),
    /// No HTTP answer: the connection failed, timed out, closed, or
    /// answered something that is not HTTP (or too large).
    Failed(String),
}

impl Upgrade {
    /// What came back, in a line.
    pub fn summary(&self) -> String {
        match self {
            Self::Open(head, _) => head.status_line.clone(),
            Self::Refused(head) => head.status_line.clone(),
            Self::Failed(why) => why.clone(),
        }
    }

    /// The HTTP status, if there was an HTTP answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Open(head, _) | Self::Refused(head) => Some(head.status),
            Self::Failed(_) => None,
        }
    }
}

/// The endpoint with the TLS configuration every connection uses.
#[derive(Clone)]
pub struct Endpoint {
    /// Where.
    pub target: Target,
    tls: Option<TlsConnector>,
}

impl Endpoint {
    /// `tls` must be given for `wss` targets.
    pub fn new(target: Target, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        Self {
            target,
            tls: tls.map(TlsConnector::from),
        }
    }

    /// A TCP connection, bounded by [`STEP`].
    pub async fn tcp(&self) -> Result<TcpStream, String> {
        let addr = (self.target.host.as_str(), self.target.port);
        match tokio::time::timeout(STEP, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                Ok(tcp)
            }
            Ok(Err(e)) => Err(format!("TCP connect failed: {e}")),
            Err(_) => Err(format!("TCP connect timed out after {} s", STEP.as_secs())),
        }
    }

    /// TCP, then TLS for `wss`, each bounded by [`STEP`].
    pub async fn open(&self) -> Result<Stream, String> {
        let tcp = self.tcp().await?;
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let name = self.target.server_name().map_err(|e| e.to_string())?;
        match tokio::time::timeout(STEP, tls.connect(name, tcp)).await {
            Ok(Ok(tls)) => Ok(Box::new(tls)),
            Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
            Err(_) => Err(format!(
                "TLS handshake timed out after {} s",
                STEP.as_secs()
            )),
        }
    }

    /// The upgrade request for `req`.
    pub fn request_text(&self, req: &Request<'_>) -> String {
        let mut text = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: sluice-probe\r\n",
            self.target.path,
            self.target.authority,
            websocket_key()
        );
        if let Some(token) = req.token {
            text.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(origin) = req.origin {
            text.push_str(&format!("Origin: {origin}\r\n"));
        }
        if let Some(ext) = req.extensions {
            text.push_str(&format!("Sec-WebSocket-Extensions: {ext}\r\n"));
        }
        text.push_str("\r\n");
        text
    }

    /// Connect and ask for the upgrade.
    pub async fn upgrade(&self, req: &Request<'_>) -> Upgrade {
        let stream = match self.open().await {
            Ok(s) => s,
            Err(e) => return Upgrade::Failed(e),
        };
        upgrade_on(stream, &self.request_text(req)).await
    }
}

/// Send `request` on `stream` and read the answer's head.
pub async fn upgrade_on(mut stream: Stream, request: &str) -> Upgrade {
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return Upgrade::Failed(format!("sending the upgrade request failed: {e}"));
    }
    if let Err(e) = stream.flush().await {
        return Upgrade::Failed(format!("sending the upgrade request failed: {e}"));
    }
    let mut reader = BufReader::new(stream);
    let head = match tokio::time::timeout(STEP, read_head(&mut reader)).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => return Upgrade::Failed(e),
        Err(_) => {
            return Upgrade::Failed(format!(
                "no answer to the upgrade within {} s",
                STEP.as_secs()
            ));
        }
    };
    if head.status != 101 {
        return Upgrade::Refused(head);
    }
    let socket = WebSocketStream::from_raw_socket(reader, Role::Client, Some(ws_config())).await;
    Upgrade::Open(head, Box::new(socket))
}

/// The probe's WebSocket limits for what servers send.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_INBOUND))
        .max_frame_size(Some(MAX_INBOUND))
        .read_buffer_size(16 << 10)
        .write_buffer_size(0)
}

/// Read an HTTP answer's head, at most [`MAX_HEAD`] bytes.
pub async fn read_head<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Head, String> {
    let mut raw = Vec::new();
    loop {
        let limit = (MAX_HEAD - raw.len()) as u64;
        let n = (&mut *reader)
            .take(limit)
            .read_until(b'\n', &mut raw)
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?;
        if raw.len() >= 5 && !raw.starts_with(b"HTTP/") {
            return Err(format!("an answer that is not HTTP: {}", preview(&raw)));
        }
        if n == 0 {
            return Err(if raw.is_empty() {
                "the connection closed without an answer".to_owned()
            } else {
                format!(
                    "the connection closed in the middle of the answer: {}",
                    preview(&raw)
                )
            });
        }
        if raw.ends_with(b"\r\n\r\n") || raw.ends_with(b"\n\n") {
            break;
        }
        if raw.len() >= MAX_HEAD {
            return Err(format!(
                "the answer's head exceeded {} KiB; the probe stopped reading ({})",
                MAX_HEAD >> 10,
                preview(&raw[..raw.len().min(80)])
            ));
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let mut lines = text.lines();
    let status_line = lines.next().unwrap_or_default().trim().to_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("an HTTP answer without a status: {}", preview(&raw)))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Head {
        status,
        status_line,
        headers,
    })
}

/// Bytes as text when printable, else as hex; at most 120 characters.
pub fn preview(bytes: &[u8]) -> String {
    let printable = bytes
        .iter()
        .all(|b| b.is_ascii_graphic() || matches!(b, b' ' | b'\r' | b'\n' | b'\t'));
    let mut s = if printable {
        String::from_utf8_lossy(bytes)
            .replace('\r', "\\r")
            .replace('\n', "\\n")
    } else {
        bytes
            .iter()
            .take(40)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if s.len() > 120 {
        let mut cut = 117;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// 16 random bytes, base64: the `Sec-WebSocket-Key`.
fn websocket_key() -> String {
    use base64::Engine as _;
    let mut nonce = [0u8; 16];
    if rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut nonce)
        .is_err()
    {
        // The key only has to differ between requests; it protects nothing.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        nonce = t.to_le_bytes();
    }
    base64::engine::general_purpose::STANDARD.encode(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_scheme_host_port_and_path() -> anyhow::Result<()> {
        let t = Target::parse("wss://127.0.0.1:8443/ws/demo?x=1")?;
        assert_eq!(
            (t.scheme, t.host.as_str(), t.port),
            (Scheme::Wss, "127.0.0.1", 8443)
        );
        assert_eq!(t.path, "/ws/demo?x=1");
        let t = Target::parse("ws://[::1]/")?;
        assert_eq!((t.scheme, t.host.as_str(), t.port), (Scheme::Ws, "::1", 80));
        let t = Target::parse("wss://example.com")?;
        assert_eq!((t.port, t.path.as_str()), (443, "/"));
        assert!(t.host_is_dns_name());
        assert!(Target::parse("https://example.com/").is_err());
        assert!(Target::parse("wss://user@example.com/").is_err());
        assert!(Target::parse("wss://example.com:99999/").is_err());
        Ok(())
    }

    #[tokio::test]
    async fn a_head_is_parsed_and_a_huge_or_foreign_answer_is_refused() {
        let mut ok: &[u8] = b"HTTP/1.1 401 Unauthorized\r\nX-A: b\r\n\r\nrest";
        let head = read_head(&mut ok).await;
        let head = head.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(head.status, 401);
        assert_eq!(head.header("x-a"), Some("b"));

        let huge = format!("HTTP/1.1 101 OK\r\nX: {}\r\n\r\n", "a".repeat(1 << 20));
        let mut huge = huge.as_bytes();
        let err = read_head(&mut huge).await.err().unwrap_or_default();
        assert!(err.contains("exceeded 16 KiB"), "{err}");

        let mut alert: &[u8] = &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32];
        let err = read_head(&mut alert).await.err().unwrap_or_default();
        assert!(
            err.contains("not HTTP") && err.contains("15 03 03"),
            "{err}"
        );
    }
}
