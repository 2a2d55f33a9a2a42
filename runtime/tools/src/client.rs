//! A wss client for Sluice's own tools (`sluice connect`, `sluice bench`)
//! and tests: rustls with a given CA, the token in any of the three places
//! the server accepts it.

use std::sync::Arc;

use http::HeaderValue;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use sluice_protocol::{SUBPROTOCOL, TOKEN_PROTOCOL_PREFIX};

/// Where the client puts its token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenVia {
    /// `Authorization: Bearer <token>` (native clients).
    #[default]
    Header,
    /// `Sec-WebSocket-Protocol: sluice.v1, bearer.<token>` (browsers).
    Subprotocol,
    /// `?access_token=<token>` (only where the tenant opts in).
    Query,
}

/// How to connect.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// PEM certificates to trust (the server's CA or its self-signed cert);
    /// empty: the public web PKI roots (Mozilla's, from `webpki-roots`).
    pub ca_pem: Vec<u8>,
    /// The token, if any.
    pub token: Option<String>,
    /// Where to put it.
    pub via: TokenVia,
    /// An `Origin` header to send, as a browser would.
    pub origin: Option<String>,
    /// A local address to connect from (e.g. `127.0.0.7`), so that a load
    /// generator can open more connections than one source address has
    /// ephemeral ports.
    pub bind: Option<std::net::IpAddr>,
    /// Offer TLS session resumption (a ticket from an earlier connection to
    /// the same server). Off: every connection does a full handshake.
    pub resume_sessions: bool,
}

/// A connected client.
pub type ClientSocket = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server answered the upgrade with this HTTP status.
    #[error("the server refused the upgrade with HTTP {0}")]
    Refused(u16),
    /// The server's certificate was refused (not issued by a trusted CA,
    /// expired, or for another name).
    #[error("{0}")]
    Certificate(String),
    /// Anything else (TCP, TLS, a bad URL).
    #[error("{0}")]
    Failed(String),
}

/// Connect to a `wss://host:port/ws/<tenant>` URL.
pub async fn connect(url: &str, opts: &ClientOptions) -> Result<ClientSocket, ConnectError> {
    Connector::new(opts)?
        .connect(url, opts.token.as_deref())
        .await
}

/// A prepared client: the TLS configuration is built once and shared by
/// every connection (what a load generator needs: building it per
/// connection would cost more than the handshake it measures).
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    via: TokenVia,
    origin: Option<String>,
    bind: Option<std::net::IpAddr>,
}

impl Connector {
    /// Trust `opts.ca_pem` (or, when it is empty, the public web PKI roots);
    /// `opts.token` is ignored (each connection brings its own).
    pub fn new(opts: &ClientOptions) -> Result<Self, ConnectError> {
        let fail = |e: &dyn std::fmt::Display| ConnectError::Failed(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&opts.ca_pem) {
            roots
                .add(cert.map_err(|e| fail(&e))?)
                .map_err(|e| fail(&e))?;
        }
        if opts.ca_pem.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        } else if roots.is_empty() {
            return Err(ConnectError::Failed(
                "no CA certificate given to trust".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(&e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        if !opts.resume_sessions {
            tls.resumption = rustls::client::Resumption::disabled();
        }
        Ok(Self {
            tls: TlsConnector::from(Arc::new(tls)),
            via: opts.via,
            origin: opts.origin.clone(),
            bind: opts.bind,
        })
    }

    /// Open one connection with `token`.
    pub async fn connect(
        &self,
        url: &str,
        token: Option<&str>,
    ) -> Result<ClientSocket, ConnectError> {
        let fail = |e: &dyn std::fmt::Display| ConnectError::Failed(e.to_string());
        let mut url = url.to_owned();
        if self.via == TokenVia::Query
            && let Some(token) = token
        {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str("access_token=");
            url.push_str(token);
        }
        let mut request = url.as_str().into_client_request().map_err(|e| fail(&e))?;
        if request.uri().scheme_str() != Some("wss") {
            return Err(ConnectError::Failed(
                "only wss:// URLs are supported".into(),
            ));
        }
        let host = request
            .uri()
            .host()
            .ok_or_else(|| ConnectError::Failed("the URL has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = request.uri().port_u16().unwrap_or(443);
        let headers = request.headers_mut();
        match (token, self.via) {
            (Some(token), TokenVia::Header) => {
                headers.insert(
                    http::header::AUTHORIZATION,
                    header(&format!("Bearer {token}"))?,
                );
            }
            (Some(token), TokenVia::Subprotocol) => {
                headers.insert(
                    http::header::SEC_WEBSOCKET_PROTOCOL,
                    header(&format!("{SUBPROTOCOL}, {TOKEN_PROTOCOL_PREFIX}{token}"))?,
                );
            }
            _ => {}
        }
        if let Some(origin) = &self.origin {
            headers.insert(http::header::ORIGIN, header(origin)?);
        }
        let server_name = ServerName::try_from(host.clone()).map_err(|e| fail(&e))?;
        let tcp = match self.bind {
            None => TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| fail(&e))?,
            Some(local) => {
                let remote = tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map_err(|e| fail(&e))?
                    .find(|a| a.is_ipv4() == local.is_ipv4())
                    .ok_or_else(|| {
                        ConnectError::Failed(format!("{host} has no address of {local}'s family"))
                    })?;
                let socket = if local.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()
                } else {
                    tokio::net::TcpSocket::new_v6()
                }
                .map_err(|e| fail(&e))?;
                socket
                    .bind(std::net::SocketAddr::new(local, 0))
                    .map_err(|e| fail(&format!("binding {local}: {e}")))?;
                socket.connect(remote).await.map_err(|e| fail(&e))?
            }
        };
        let _ = tcp.set_nodelay(true);
        let stream = self.tls.connect(server_name, tcp).await.map_err(|e| {
            match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                Some(tls @ rustls::Error::InvalidCertificate(_)) => {
                    ConnectError::Certificate(tls.to_string())
                }
                _ => fail(&e),
            }
        })?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(16 << 20))
            .max_frame_size(Some(16 << 20));
        match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                Err(ConnectError::Refused(resp.status().as_u16()))
            }
            Err(e) => Err(fail(&e)),
        }
    }
}

fn header(value: &str) -> Result<HeaderValue, ConnectError> {
    HeaderValue::from_str(value).map_err(|e| ConnectError::Failed(e.to_string()))
}
