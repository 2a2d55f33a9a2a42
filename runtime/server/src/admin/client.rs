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

/// One HTTP/1 request (hyper's client) to the admin listener at `admin`,
/// with `token` as a bearer token: the status and the body.
pub async fn request(
    admin: &str,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    use anyhow::Context as _;
    use http_body_util::BodyExt as _;
    let tcp = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("cannot reach the admin listener at {admin}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .with_context(|| format!("HTTP with the admin listener at {admin}"))?;
    let driver = tokio::spawn(conn);
    let mut request = http::Request::builder()
        .method(method.clone())
        .uri(path)
        .header(http::header::HOST, admin);
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
        .with_context(|| format!("{method} {path} to {admin}"))?;
    let status = response.status().as_u16();
    let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer of {admin}: {e}"))?
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
