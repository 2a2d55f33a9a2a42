//! A minimal wss:// client: TLS trusting one certificate, the token in the
//! `Authorization` header, JSON text frames. The suite's own, so that it
//! depends on no Sluice crate but the protocol and TLS ones.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// How long a TCP connect, TLS and upgrade may take together.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// Makes connections that trust one certificate.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
}

/// An open connection.
pub struct Conn {
    ws: WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
}

impl Connector {
    /// Trust the PEM certificate `cert_pem` (the nodes' self-signed one).
    pub fn new(cert_pem: &str) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
            roots.add(cert.context("the nodes' certificate")?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(sluice_tls::provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Connect to `wss://{addr}/ws/{tenant}` with `token`, and read the
    /// `welcome`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        tenant: &str,
        token: &str,
    ) -> anyhow::Result<Conn> {
        tokio::time::timeout(CONNECT_WITHIN, self.connect_inner(addr, tenant, token))
            .await
            .unwrap_or_else(|_| bail!("no connection within {CONNECT_WITHIN:?}"))
    }

    async fn connect_inner(
        &self,
        addr: SocketAddr,
        tenant: &str,
        token: &str,
    ) -> anyhow::Result<Conn> {
        let mut request = format!("wss://{addr}/ws/{tenant}").into_client_request()?;
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await?;
        let (ws, _) = tokio_tungstenite::client_async(request, tls).await?;
        let mut conn = Conn { ws };
        match conn.recv().await? {
            Some(w) if w["type"] == "welcome" => Ok(conn),
            other => bail!("expected a welcome, got {other:?}"),
        }
    }
}

impl Conn {
    /// Send one JSON frame.
    pub async fn send(&mut self, frame: &Value) -> anyhow::Result<()> {
        self.ws.send(Message::text(frame.to_string())).await?;
        Ok(())
    }

    /// The next JSON frame; `None` once the connection closed. Safe to
    /// cancel (the stream keeps a partly read frame).
    pub async fn recv(&mut self) -> anyhow::Result<Option<Value>> {
        loop {
            match self.ws.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(t))) => return Ok(Some(serde_json::from_str(&t)?)),
                Some(Ok(Message::Close(c))) => {
                    let reason = c.map(|c| format!("{} {}", u16::from(c.code), c.reason));
                    bail!("closed by the server: {}", reason.unwrap_or_default())
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Close politely (bounded).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}
