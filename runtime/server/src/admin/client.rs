//! The client side of the admin listener (plain HTTP: `/metrics`,
//! `/healthz`, `/readyz`, what `sluice health` asks) and of the management
//! API (HTTPS only: tenants, keys, pushed handlers, reload, audit, what
//! `sluice tenant`, `sluice handler` and `sluice reload` speak).

use std::net::{IpAddr, SocketAddr};

/// The longest answer `request` reads (a summary, every problem, a report).
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// The admin listener's address: `admin` when given, else the `admin_listen`
/// of `config` (reached through loopback when it listens on every address),
/// else the default.
pub fn admin_address(config: Option<&sluice_config::Config>, admin: Option<&str>) -> String {
    match (admin, config.and_then(|c| c.server.admin_listen)) {
        (Some(a), _) => a.to_owned(),
        (None, Some(a)) => reachable(a).to_string(),
        (None, None) => sluice_config::DEFAULT_ADMIN_LISTEN.to_owned(),
    }
}

/// `a`, or loopback at its port when it listens on every address.
fn reachable(a: SocketAddr) -> SocketAddr {
    if !a.ip().is_unspecified() {
        return a;
    }
    let loopback: IpAddr = if a.is_ipv4() {
        std::net::Ipv4Addr::LOCALHOST.into()
    } else {
        std::net::Ipv6Addr::LOCALHOST.into()
    };
    SocketAddr::new(loopback, a.port())
}

/// The management API's `host:port`: `url` when given (`host:port`, or
/// `https://host:port`; `http://` is refused: the API speaks HTTPS only),
/// else the `[management] listen` of `config` (through loopback when it
/// listens on every address), else [`sluice_config::DEFAULT_MANAGEMENT_LISTEN`].
pub fn management_address(
    config: Option<&sluice_config::Config>,
    url: Option<&str>,
) -> anyhow::Result<String> {
    let Some(url) = url else {
        return Ok(match config {
            Some(c) => reachable(c.management.listen).to_string(),
            None => sluice_config::DEFAULT_MANAGEMENT_LISTEN.to_owned(),
        });
    };
    if url.starts_with("http://") {
        anyhow::bail!(
            "--url {url}: the management API speaks HTTPS only (give host:port or https://host:port)"
        );
    }
    let addr = url.strip_prefix("https://").unwrap_or(url);
    let addr = addr.strip_suffix('/').unwrap_or(addr);
    let port = addr.rsplit_once(':').map(|(_, p)| p);
    if addr.is_empty() || addr.contains('/') || port.is_none_or(|p| p.parse::<u16>().is_err()) {
        anyhow::bail!("--url {url}: expected host:port, e.g. 127.0.0.1:9443");
    }
    Ok(addr.to_owned())
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
    /// The API of the server `config` describes, or at `url` (see
    /// [`management_address`]), trusting the PEM file `ca`, else the
    /// config's `[server] tls_cert` (the dev server's self-signed
    /// certificate is its own CA), else the public web roots.
    pub fn for_config(
        config: Option<&sluice_config::Config>,
        url: Option<&str>,
        ca: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let addr = management_address(config, url)?;
        let cert = config.map(|c| c.path(&c.server.tls_cert));
        Self::new(&addr, ca.or(cert.as_deref()))
    }

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
        let tls = match connector.connect(name, tcp).await {
            Ok(tls) => tls,
            Err(e) => {
                let plain = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|r| matches!(r, rustls::Error::InvalidMessage(_)));
                let hint = if plain {
                    "it does not speak TLS: is this the admin listener (plain HTTP)? \
                     The management API is the config's [management] listen"
                } else {
                    "is --ca the server's certificate or its CA?"
                };
                return Err(anyhow::Error::new(e).context(format!(
                    "TLS with the management API at {} ({hint})",
                    self.addr
                )));
            }
        };
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

/// What `sluice reload` does: `POST /reload` to the management API of the
/// server `config` describes, or at `url` (see [`Management::for_config`]:
/// the config's certificate is the CA), with the config's `admin_token`
/// (the operator's). Returns the HTTP status and body.
pub async fn request_reload(
    config: Option<&sluice_config::Config>,
    url: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let token = match config {
        Some(c) => c.admin_token().map_err(anyhow::Error::msg)?,
        None => None,
    };
    let api = Management::for_config(config, url, None)?;
    let (status, body) = api
        .request(http::Method::POST, "/reload", token.as_deref(), Vec::new())
        .await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> sluice_config::Config {
        let text = format!("[server]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n{text}");
        sluice_config::Config::parse(&text, std::path::Path::new("/srv/sluice")).expect("config")
    }

    #[test]
    fn the_management_address_comes_from_url_else_the_config_else_the_default() {
        assert_eq!(management_address(None, None).unwrap(), "127.0.0.1:9443");
        let c = config("[management]\nlisten = \"0.0.0.0:9500\"\n");
        assert_eq!(
            management_address(Some(&c), None).unwrap(),
            "127.0.0.1:9500",
            "every address: reached through loopback"
        );
        for url in [
            "api.example:443",
            "https://api.example:443",
            "https://api.example:443/",
        ] {
            assert_eq!(
                management_address(Some(&c), Some(url)).unwrap(),
                "api.example:443"
            );
        }
        let e = management_address(None, Some("http://127.0.0.1:9443")).unwrap_err();
        assert!(e.to_string().contains("HTTPS only"), "{e}");
        for bad in ["127.0.0.1", "https://h:9443/v1", "h:port", ""] {
            let e = management_address(None, Some(bad)).unwrap_err();
            assert!(e.to_string().contains("expected host:port"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_ca_defaults_to_the_configs_certificate_and_loopback_is_localhost() {
        let c = config("");
        let e = Management::for_config(Some(&c), None, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot read the CA file /srv/sluice/cert.pem"),
            "{e}"
        );
        let api = Management::new("127.0.0.1:9443", None).unwrap();
        assert!(api.ca_pem.is_empty());
        assert_eq!(
            format!("{:?}", api.server_name().unwrap()),
            format!(
                "{:?}",
                rustls::pki_types::ServerName::try_from("localhost").unwrap()
            )
        );
    }
}
