//! The admin listener: plain HTTP on a separate address (loopback by
//! default), never on the public port. `GET /metrics` (Prometheus text),
//! `GET /healthz` (the process is up), `GET /readyz` (200 while accepting
//! connections; 503 while draining, or while a tenant's JWKS is stale), `POST /reload` (re-read the config file;
//! 200 with a summary, or 422 with every problem while the old configuration
//! keeps serving).

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use super::{ServerState, metrics};

/// Serve the admin endpoints on `listener` until the server state is gone.
pub async fn serve(listener: TcpListener, state: std::sync::Weak<ServerState>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
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
                async move { Ok::<_, Infallible>(respond(&req, state.upgrade()).await) }
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

async fn respond(
    req: &Request<Incoming>,
    state: Option<Arc<ServerState>>,
) -> Response<Full<Bytes>> {
    let Some(state) = state else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "stopped\n");
    };
    if req.method() == hyper::Method::POST && req.uri().path() == "/reload" {
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
