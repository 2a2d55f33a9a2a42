//! The admin listener: plain HTTP on a separate address (loopback by
//! default), never on the public port, and read-only: `GET /metrics`
//! (Prometheus text), `GET /healthz` (the process is up), `GET /readyz`
//! (200 while accepting connections; 503 while draining, or while a
//! tenant's JWKS is stale). The management API (`/v1/`) and `POST /reload`
//! are served over HTTPS on the management listener ([`https`]); asked
//! here, they answer 404 saying where they are.
//!
//! Every request must name the admin listener in `Host`: a loopback name or
//! address (`localhost`, `127.0.0.1`, `[::1]`), the configured
//! `admin_listen` address or the address the request arrived on; anything
//! else is 403 (this defeats DNS rebinding, where a page on `evil.example`
//! resolves its own name to 127.0.0.1 to read the answers).
//!
//! It is bounded like the public listener, so a client that opens
//! connections and never finishes a request cannot take the process's file
//! descriptors: see [`serve`].

pub mod client;
pub mod connections;
pub mod https;
pub mod metrics;
pub mod web;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use sluice_sandbox::BoxFuture;
use tokio::net::TcpListener;

use self::connections::{AcceptBackoff, Admitted, Connections};
use self::web::{bearer, host_allowed, same_secret, text};

use crate::state::ServerState;

/// The management API (the control plane's), answering every request under
/// `/v1/` on the management listener ([`https`]). The data path defines the seam; `sluice-control`
/// implements it.
pub trait ManagementApi: Send + Sync + 'static {
    /// Answer one request. `peer` is who sent it (for the audit log).
    fn respond<'a>(
        &'a self,
        req: Request<Incoming>,
        peer: SocketAddr,
        state: &'a Arc<ServerState>,
    ) -> BoxFuture<'a, Response<Full<Bytes>>>;
}

/// How long a connection may take to send a request's head, and how long
/// an idle keep-alive connection is kept: then it is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve the admin endpoints on `listener` until the server state is gone.
///
/// Bounded against a client that holds connections open: a request's head
/// must arrive within [`HEADER_TIMEOUT`] (hyper's timer; also the idle
/// keep-alive limit), a body within [`web::BODY_TIMEOUT`], at most
/// [`connections::MAX_CONNECTIONS`] are open (a new one closes the oldest
/// that is not inside a request), and a failed accept (out of file
/// descriptors) pauses the loop instead of spinning on the error.
pub async fn serve(listener: TcpListener, state: std::sync::Weak<ServerState>) {
    let table = Connections::new(connections::MAX_CONNECTIONS);
    let mut backoff = AcceptBackoff::default();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(e) => {
                let pause = backoff.failed();
                tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64,
                    "the admin listener could not accept a connection; pausing");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let Ok(local) = tcp.local_addr() else {
            continue;
        };
        let Some(strong) = state.upgrade() else {
            return;
        };
        drop(strong);
        let Some(admitted) = table.admit() else {
            tracing::debug!(%peer, "admin connection refused: every connection is inside a request");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            // Leaves the table when this task ends.
            let busy = admitted.busy();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                let in_request = Admitted::request(&busy);
                async move {
                    let resp = respond(req, local, state.upgrade()).await;
                    drop(in_request);
                    Ok::<_, Infallible>(resp)
                }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            let mut admitted = admitted;
            tokio::select! {
                _ = conn => {}
                _ = &mut admitted.evicted => {
                    tracing::debug!(%peer, "admin connection closed to make room for a newer one");
                }
            }
        });
    }
}

/// Why `POST /reload` is refused on a server without an admin token.
pub const NO_TOKEN_MESSAGE: &str = "POST /reload is disabled: no admin token is configured. \
Set `admin_token = { secret_file = \"admin.token\" }` (or `{ secret_env = \"VAR\" }`) in [server], \
then run `sluice reload -c <config>`, which sends it. SIGHUP reloads without a token.\n";

/// What the admin listener answers for the paths that moved to the
/// management listener.
pub const MOVED_MESSAGE: &str = "not here: the management API (/v1/) and POST /reload are served \
over HTTPS on the management listener ([management] listen, default 127.0.0.1:9443): \
`sluice tenant|handler|reload --url HOST:PORT --ca CERT`\n";

/// `POST /reload` (on the management listener): the operator's token, then
/// re-read the config file; 200 with a summary, or 422 with every problem
/// while the old configuration keeps serving.
pub(crate) async fn reload(req: &Request<Incoming>, state: &ServerState) -> Response<Full<Bytes>> {
    if let Some(refused) = unauthorized(req, state) {
        tracing::warn!(status = %refused.status(), "reload refused");
        return refused;
    }
    match state.reload_from_source().await {
        Ok(summary) => {
            tracing::info!(%summary, "configuration reloaded");
            text(StatusCode::OK, format!("reloaded: {summary}\n"))
        }
        Err(e) => {
            tracing::error!(error = %e, "reload refused; the old configuration keeps serving");
            text(StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n"))
        }
    }
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
    let path = req.uri().path();
    if path.starts_with("/v1/") || path == "/v1" || path == "/reload" {
        return text(StatusCode::NOT_FOUND, MOVED_MESSAGE);
    }
    if req.method() != hyper::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
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
