//! `sluice dev`'s chat demo page, on an origin of its own (by default
//! `https://127.0.0.1:8444`, the dev certificate): the page, the built
//! `@sluice/client` bundle, and a dev-only endpoint that mints short-lived
//! demo tokens. Only `sluice dev` starts it; `sluice serve` has no such
//! endpoint.
//!
//! | path | answer |
//! |---|---|
//! | `GET /` | the chat page (`demo_page.html`) |
//! | `GET /demo.js` | its script (`demo_page.js`) |
//! | `GET /sluice-client.js` | `clients/typescript/dist/sluice-client.min.js` |
//! | `GET /token?name=NAME` | `{"token": "...", "expires_in": 120}`: subject NAME, scope `chat:write`, for the demo tenant; same-origin requests only |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Weak};

use anyhow::{Context as _, bail};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use sluice::dev_files::{DEMO_TENANT, DEV_SCOPE};
use sluice::server::ServerState;
use sluice::token::Minter;
use tokio::net::TcpListener;

/// Lifetime of a page token: short, so the page shows a refresh every
/// couple of minutes.
pub const TOKEN_TTL_SECS: u64 = 120;

const PAGE: &str = include_str!("demo_page.html");
const PAGE_JS: &str = include_str!("demo_page.js");

/// The page's listener, bound before the demo config is written so its
/// origin can go into the tenant's origin list.
pub struct DemoPage {
    listener: TcpListener,
    addr: SocketAddr,
}

/// Bind the page's address.
pub async fn bind(addr: &str) -> anyhow::Result<DemoPage> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the demo page to {addr}"))?;
    let addr = listener.local_addr()?;
    Ok(DemoPage { listener, addr })
}

impl DemoPage {
    /// The page's URL.
    pub fn url(&self) -> String {
        format!("https://{}/", self.host())
    }

    /// The origins a browser sends from the page: its address and
    /// `localhost` on the same port.
    pub fn origins(&self) -> Vec<String> {
        vec![
            format!("https://{}", self.host()),
            format!("https://localhost:{}", self.addr.port()),
        ]
    }

    /// The address to browse to (loopback for an unspecified address).
    fn host(&self) -> SocketAddr {
        if self.addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], self.addr.port()))
        } else {
            self.addr
        }
    }

    /// Serve the page until the process exits. `ws_url` is the demo
    /// tenant's wss URL; tokens are minted with the tenant's current keys.
    pub fn serve(
        self,
        cert: &Path,
        key: &Path,
        state: Weak<ServerState>,
        ws_url: String,
        client_js: PathBuf,
    ) -> anyhow::Result<()> {
        let tls = sluice::server::tls::server_config(cert, key).map_err(anyhow::Error::msg)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let site = Arc::new(Site {
            page: PAGE.replace("{{WS_URL}}", &ws_url),
            csp: format!(
                "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self' {ws_url}; base-uri 'none'; form-action 'none'"
            ),
            client_js,
            state,
        });
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = self.listener.accept().await else {
                    continue;
                };
                let (acceptor, site) = (acceptor.clone(), site.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let site = site.clone();
                        async move { Ok::<_, Infallible>(site.respond(&req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(())
    }
}

struct Site {
    page: String,
    csp: String,
    client_js: PathBuf,
    state: Weak<ServerState>,
}

impl Site {
    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
        }
        match req.uri().path() {
            "/" => {
                let mut resp = reply(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    self.page.clone(),
                );
                if let Ok(csp) = header::HeaderValue::from_str(&self.csp) {
                    resp.headers_mut()
                        .insert(header::CONTENT_SECURITY_POLICY, csp);
                }
                resp
            }
            "/demo.js" => reply(StatusCode::OK, "text/javascript; charset=utf-8", PAGE_JS),
            "/sluice-client.js" => match std::fs::read(&self.client_js) {
                Ok(js) => reply(StatusCode::OK, "text/javascript; charset=utf-8", js),
                Err(_) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "the client is not built: run clients/typescript/build\n",
                ),
            },
            "/token" => self.token(req),
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }

    /// A demo token for `?name=`, for the page itself only: browsers mark
    /// cross-site requests with `Sec-Fetch-Site`, and those are refused.
    fn token(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let site = req
            .headers()
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok());
        if site.is_some_and(|s| s != "same-origin" && s != "none") {
            return reply(StatusCode::FORBIDDEN, "text/plain", "same-origin only\n");
        }
        let name = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("name="))
            .unwrap_or("");
        if name.is_empty()
            || name.len() > 24
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "name: 1-24 of A-Z a-z 0-9 - _\n",
            );
        }
        // The tenant as it is now (created through the management API, its
        // secret in its record; a key rotated since is used at once).
        let Some((state, tenant)) = self
            .state
            .upgrade()
            .and_then(|s| s.tenant(DEMO_TENANT).map(|t| (s, t)))
        else {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "no demo tenant\n",
            );
        };
        let minted = Minter::for_tenant_config(&state.config, DEMO_TENANT, &tenant.config)
            .and_then(|m| {
                m.mint(
                    name,
                    &[DEV_SCOPE.to_owned()],
                    TOKEN_TTL_SECS,
                    serde_json::Map::new(),
                )
            });
        match minted {
            Ok(token) => reply(
                StatusCode::OK,
                "application/json",
                serde_json::json!({ "token": token, "expires_in": TOKEN_TTL_SECS }).to_string(),
            ),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n"),
            ),
        }
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// The built client bundle, built with `clients/typescript/build` (npm)
/// when missing, as `sluice dev` builds the demo handlers.
pub fn client_bundle(repo: &Path) -> anyhow::Result<PathBuf> {
    let bundle = repo.join("clients/typescript/dist/sluice-client.min.js");
    if !bundle.exists() {
        let script = repo.join("clients/typescript/build");
        if !script.exists() {
            bail!("{} is missing", script.display());
        }
        eprintln!("building the TypeScript client for the demo page (first run only)...");
        let status = Command::new("bash")
            .arg(&script)
            .status()
            .context("running clients/typescript/build")?;
        if !status.success() || !bundle.exists() {
            bail!("clients/typescript/build failed (it needs Node 20+ and npm)");
        }
    }
    Ok(bundle)
}
