//! The admin listener: plain HTTP on a separate address (loopback by
//! default), never on the public port. `GET /metrics` (Prometheus text),
//! `GET /healthz` (the process is up), `GET /readyz` (200 while accepting
//! connections; 503 while draining, or while a tenant's JWKS is stale), `POST /reload` (re-read the config file;
//! 200 with a summary, or 422 with every problem while the old configuration
//! keeps serving).
//!
//! Two guards, because any web page open on the machine can make the
//! browser send requests to loopback:
//! - every request must name the admin listener in `Host`: a loopback name
//!   or address (`localhost`, `127.0.0.1`, `[::1]`), the configured
//!   `admin_listen` address or the address the request arrived on; anything
//!   else is 403 (this defeats DNS rebinding, where a page on
//!   `evil.example` resolves its own name to 127.0.0.1 to read the answers);
//! - `/v1/` is the management API (`marketplace/api.rs`), with its own
//!   tokens;
//! - POST endpoints need `Authorization: Bearer <admin_token>` (`[server]
//!   admin_token`): 401 with a wrong or missing token, 403 when no token is
//!   configured (a page can send a POST it cannot read the answer of; it
//!   cannot know the token).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use super::{ServerState, metrics};

/// Serve the admin endpoints on `listener` until the server state is gone.
pub async fn serve(listener: TcpListener, state: std::sync::Weak<ServerState>) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let Ok(local) = tcp.local_addr() else {
            continue;
        };
        let Some(strong) = state.upgrade() else {
            return;
        };
        drop(strong);
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(req, local, peer, state.upgrade()).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

/// Why `POST /reload` is refused on a server without an admin token.
pub const NO_TOKEN_MESSAGE: &str = "POST /reload is disabled: no admin token is configured. \
Set `admin_token = { secret_file = \"admin.token\" }` (or `{ secret_env = \"VAR\" }`) in [server], \
then run `sluice reload -c <config>`, which sends it. SIGHUP reloads without a token.\n";

/// Whether `host` (a `Host` header's value) names this admin listener: a
/// loopback name or address, the configured `admin_listen` address or the
/// address the request arrived on (`local`). The port is not compared.
pub fn host_allowed(host: &str, local: SocketAddr, configured: Option<SocketAddr>) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6] or [v6]:port
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.starts_with(':') => v6,
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port))
                if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                name
            }
            Some(_) => return false,
            None => host,
        },
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let Ok(ip) = name.parse::<IpAddr>() else {
        return false;
    };
    ip.is_loopback()
        || ip == local.ip()
        || configured.is_some_and(|c| !c.ip().is_unspecified() && c.ip() == ip)
}

/// Compare without an early exit, so the time taken does not tell how much
/// of a guessed token was right.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// Check the bearer token of a POST request: `Some` is the refusal.
fn unauthorized(req: &Request<Incoming>, state: &ServerState) -> Option<Response<Full<Bytes>>> {
    let Some(expected) = state.admin_token() else {
        return Some(text(StatusCode::FORBIDDEN, NO_TOKEN_MESSAGE));
    };
    match bearer(req) {
        Some(token) if same_secret(token.as_bytes(), expected.as_bytes()) => None,
        _ => {
            let mut resp = text(
                StatusCode::UNAUTHORIZED,
                "POST /reload needs `Authorization: Bearer <admin token>` \
                 (`sluice reload -c <config>` sends it)\n",
            );
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            Some(resp)
        }
    }
}

async fn respond(
    req: Request<Incoming>,
    local: SocketAddr,
    peer: SocketAddr,
    state: Option<Arc<ServerState>>,
) -> Response<Full<Bytes>> {
    let Some(state) = state else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "stopped\n");
    };
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok());
    if !host.is_some_and(|h| host_allowed(h, local, state.config.server.admin_listen)) {
        tracing::warn!("admin request refused: its Host does not name the admin listener");
        return text(
            StatusCode::FORBIDDEN,
            "the Host header must name the admin listener (localhost or its address)\n",
        );
    }
    if req.uri().path().starts_with("/v1/") {
        return crate::marketplace::api::respond(req, peer, &state).await;
    }
    if req.method() == hyper::Method::POST && req.uri().path() == "/reload" {
        if let Some(refused) = unauthorized(&req, &state) {
            tracing::warn!(status = %refused.status(), "admin reload refused");
            return refused;
        }
        return match state.reload_from_source().await {
            Ok(summary) => {
                tracing::info!(%summary, "configuration reloaded");
                text(StatusCode::OK, format!("reloaded: {summary}\n"))
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused; the old configuration keeps serving");
                text(StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n"))
            }
        };
    }
    if req.method() != hyper::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only (POST /reload)\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut resp = text(StatusCode::OK, metrics::render(&state));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.is_draining() => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/readyz" if state.is_cut_off() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "cut off from NATS\n")
        }
        "/readyz" => match metrics::stale_jwks(&state).as_slice() {
            [] => text(StatusCode::OK, "ready\n"),
            stale => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("JWKS stale for tenant {}\n", stale.join(", ")),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hosts_that_name_the_admin_listener_are_allowed() {
        let local: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let private: SocketAddr = "10.1.2.3:9464".parse().unwrap();
        for ok in [
            "localhost",
            "LOCALHOST:9464",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:9464",
            "127.8.9.10:1",
            "[::1]",
            "[::1]:9464",
        ] {
            assert!(host_allowed(ok, local, None), "{ok}");
        }
        // The address the request arrived on, and the configured one.
        assert!(host_allowed("10.1.2.3:9464", private, None));
        assert!(host_allowed(
            "10.9.9.9",
            local,
            Some("10.9.9.9:9464".parse().unwrap())
        ));
        for refused in [
            "",
            "evil.example",
            "evil.example:9464",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.1.2.4:9464",
            "0.0.0.0:9464",
            "::1",
            "[::1",
            "[::1]x",
            "127.0.0.1:80:80",
            "localhost:port",
        ] {
            assert!(
                !host_allowed(refused, private, Some("0.0.0.0:9464".parse().unwrap())),
                "{refused}"
            );
        }
    }
}
