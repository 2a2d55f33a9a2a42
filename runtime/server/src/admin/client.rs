//! The client side of the admin listener: what `sluice reload` and
//! `sluice handler` use to reach it.

use std::net::{IpAddr, SocketAddr};

/// The longest answer `request` reads (a summary, every problem, a report).
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// The admin listener's address: `admin` when given, else the `admin_listen`
/// of `config` (reached through loopback when it listens on every address),
/// else the default.
pub fn admin_address(config: Option<&sluice_config::Config>, admin: Option<&str>) -> String {
    match (admin, config.and_then(|c| c.server.admin_listen)) {
        (Some(a), _) => a.to_owned(),
        (None, Some(a)) if a.ip().is_unspecified() => {
            let loopback: IpAddr = if a.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            SocketAddr::new(loopback, a.port()).to_string()
        }
        (None, Some(a)) => a.to_string(),
        (None, None) => sluice_config::DEFAULT_ADMIN_LISTEN.to_owned(),
    }
}

/// One HTTP/1 request (hyper's client) to the admin listener at `admin`
/// (plain HTTP: `/metrics`, `/healthz`, `/readyz`), with `token` as a
/// bearer token: the status and the body.
pub async fn request(
    admin: &str,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    use anyhow::Context as _;
    let tcp = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("cannot reach the admin listener at {admin}"))?;
    exchange(tcp, admin, method, path, token, body).await
}

/// Where the management API is, and whom to trust for it.
#[derive(Clone, Debug)]
pub struct Management {
    /// `host:port` of `[management] listen`.
    pub addr: String,
    /// The CA certificate(s) to trust, PEM (`--ca`; the dev server's
    /// self-signed certificate is its own CA). Empty: the public web roots.
    pub ca_pem: Vec<u8>,
    /// The name the certificate must carry; by default the host of `addr`
    /// (`localhost` for a loopback address, which the dev certificate
    /// names).
    pub server_name: Option<String>,
}

impl Management {
    /// The API at `addr`, trusting the certificates in the PEM file `ca`
    /// (none: the public web roots).
    pub fn new(addr: &str, ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let ca_pem = match ca {
            Some(path) => std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read the CA file {}: {e}", path.display()))?,
            None => Vec::new(),
        };
        Ok(Self {
            addr: addr.to_owned(),
            ca_pem,
            server_name: None,
        })
    }

    /// One request over HTTPS, `token` as a bearer token: the status and
    /// the body.
    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        use anyhow::Context as _;
        let connector = tokio_rustls::TlsConnector::from(self.client_config()?);
        let name = self.server_name()?;
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .with_context(|| format!("cannot reach the management API at {}", self.addr))?;
        let tls = connector.connect(name, tcp).await.with_context(|| {
            format!(
                "TLS with the management API at {} (is --ca the server's certificate or its CA?)",
                self.addr
            )
        })?;
        exchange(tls, &self.addr, method, path, token, body).await
    }

    fn client_config(&self) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        if self.ca_pem.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        } else {
            for cert in CertificateDer::pem_slice_iter(&self.ca_pem) {
                roots.add(cert.map_err(|e| anyhow::anyhow!("the CA file: {e}"))?)?;
            }
            if roots.is_empty() {
                anyhow::bail!("the CA file holds no certificate");
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(std::sync::Arc::new(config))
    }

    fn server_name(&self) -> anyhow::Result<rustls::pki_types::ServerName<'static>> {
        let host = match &self.server_name {
            Some(n) => n.clone(),
            None => {
                let host = self
                    .addr
                    .rsplit_once(':')
                    .map_or(self.addr.as_str(), |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                match host.parse::<IpAddr>() {
                    Ok(ip) if ip.is_loopback() => "localhost".to_owned(),
                    _ => host.to_owned(),
                }
            }
        };
        rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| anyhow::anyhow!("{host:?} is not a valid server name"))
    }
}

/// Send one request on `io` and read the answer.
async fn exchange<IO>(
    io: IO,
    addr: &str,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Vec<u8>)>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use anyhow::Context as _;
    use http_body_util::BodyExt as _;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .with_context(|| format!("HTTP with {addr}"))?;
    let driver = tokio::spawn(conn);
    let mut request = http::Request::builder()
        .method(method.clone())
        .uri(path)
        .header(http::header::HOST, addr);
    if let Some(t) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if !body.is_empty() {
        request = request.header(http::header::CONTENT_TYPE, "application/json");
    }
    let request = request.body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("{method} {path} to {addr}"))?;
    let status = response.status().as_u16();
    let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer of {addr}: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((status, body.to_vec()))
}

/// What `sluice reload` does: `POST /reload` to the admin listener of the
/// server `config` describes (see [`admin_address`]), or to `admin` when
/// given, with the config's `admin_token`. Returns the HTTP status and body.
pub async fn request_reload(
    config: Option<&sluice_config::Config>,
    admin: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let token = match config {
        Some(c) => c.admin_token().map_err(anyhow::Error::msg)?,
        None => None,
    };
    let admin = admin_address(config, admin);
    let (status, body) = request(
        &admin,
        http::Method::POST,
        "/reload",
        token.as_deref(),
        Vec::new(),
    )
    .await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
