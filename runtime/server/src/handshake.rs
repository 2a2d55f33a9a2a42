//! The handshake: TLS, then the HTTP upgrade, all under one deadline.
//!
//! Before any `101 Switching Protocols`:
//! - the path must be `/ws/<tenant>` of a known tenant (404);
//! - the `Origin`, when present, must be one of the tenant's exact origins;
//!   `null` and anything else get 403. No `Origin` (native mobile clients)
//!   is allowed unless the tenant requires one;
//! - a token must verify (401, no detail): from `Authorization: Bearer`,
//!   or, for browsers, from `Sec-WebSocket-Protocol: sluice.v1, bearer.<token>`
//!   (the server answers `sluice.v1`), or from `?access_token=` only where
//!   the tenant opts in;
//! - the subject and the tenant must be under their connection caps (429).

pub use sluice_protocol::{SUBPROTOCOL, TOKEN_PROTOCOL_PREFIX};
use std::sync::Arc;

use crate::tls_stream::ServerTlsStream;
use http::{HeaderValue, StatusCode};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

use crate::authz::Principal;
use crate::ratelimit::ConnectionSlot;
use crate::state::ServerState;
use crate::tenant::Tenant;

/// A connection that passed the handshake.
pub struct Admitted {
    /// The tenant.
    pub tenant: Arc<Tenant>,
    /// Who it is.
    pub principal: Principal,
    /// The token it was admitted with, kept to verify it again when a
    /// reload changes the tenant's keys.
    pub token: Box<str>,
    /// The `Origin` it came from (browsers send one; native apps none),
    /// checked again when the tenant's origins change.
    pub origin: Option<Box<str>>,
    /// Its slots in the subject's and the tenant's connection counts.
    pub slots: (ConnectionSlot<String>, ConnectionSlot<()>),
}

/// The WebSocket stream of an admitted connection.
pub type Socket = WebSocketStream<ServerTlsStream<TcpStream>>;

/// TLS, then the upgrade. The caller bounds this with the handshake deadline.
pub async fn accept(state: &ServerState, tcp: TcpStream) -> Option<(Socket, Admitted)> {
    let tls = match crate::tls_stream::accept(state.tls(), tcp).await {
        Ok(tls) => tls,
        Err(e) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return None;
        }
    };
    let mut admitted = None;
    #[expect(
        clippy::result_large_err,
        reason = "the callback's signature is tungstenite's"
    )]
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        match admit(state, req) {
            Ok((admission, protocol)) => {
                if protocol {
                    resp.headers_mut().insert(
                        http::header::SEC_WEBSOCKET_PROTOCOL,
                        HeaderValue::from_static(SUBPROTOCOL),
                    );
                }
                admitted = Some(admission);
                Ok(resp)
            }
            Err(status) => {
                let mut err = ErrorResponse::new(Some(
                    status.canonical_reason().unwrap_or("refused").to_owned(),
                ));
                *err.status_mut() = status;
                Err(err)
            }
        }
    };
    match tokio_tungstenite::accept_hdr_async_with_config(tls, callback, Some(state.ws_config))
        .await
    {
        Ok(ws) => admitted.map(|a| (ws, a)),
        Err(e) => {
            tracing::debug!(error = %e, "WebSocket upgrade refused or failed");
            None
        }
    }
}

/// Decide on an upgrade request. `Ok(.., true)` when the client offered the
/// `sluice.v1` subprotocol and must get it back.
fn admit(state: &ServerState, req: &Request) -> Result<(Admitted, bool), StatusCode> {
    // The path only: the query may hold a token and is never logged.
    let path = req.uri().path();
    let tenant_id = path
        .strip_prefix("/ws/")
        .filter(|t| !t.contains('/'))
        .ok_or(StatusCode::NOT_FOUND)?;
    let tenant = state.tenant(tenant_id).ok_or(StatusCode::NOT_FOUND)?;
    if state.is_cut_off() {
        // Cluster mode without NATS: this node cannot reach the fleet.
        tracing::debug!(tenant = %tenant.id, "refused: cut off from NATS");
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }

    let origin = match req.headers().get(http::header::ORIGIN) {
        Some(origin) => {
            let origin = origin.to_str().map_err(|_| StatusCode::FORBIDDEN)?;
            if !tenant.config.origins.iter().any(|o| o == origin) {
                tracing::debug!(tenant = %tenant.id, "foreign origin refused");
                return Err(StatusCode::FORBIDDEN);
            }
            Some(Box::from(origin))
        }
        None if tenant.config.require_origin => return Err(StatusCode::FORBIDDEN),
        None => None,
    };

    let (token, offered_protocol) =
        token(req, tenant.config.query_token).ok_or(StatusCode::UNAUTHORIZED)?;
    let principal = tenant.keys.verify(token).map_err(|e| {
        tracing::debug!(tenant = %tenant.id, reason = %e, "token refused");
        StatusCode::UNAUTHORIZED
    })?;

    let limits = &tenant.config.limits;
    // In a fleet the caps count every node's connections (as last reported).
    let (tenant_elsewhere, subject_elsewhere) =
        state.connections_elsewhere(&tenant.id, &principal.subject);
    let subject_slot = tenant
        .subject_connections
        .acquire(
            principal.subject.clone(),
            limits
                .max_connections_per_subject
                .saturating_sub(subject_elsewhere),
        )
        .ok_or(StatusCode::TOO_MANY_REQUESTS)?;
    let tenant_slot = tenant
        .connections
        .acquire((), limits.max_connections.saturating_sub(tenant_elsewhere))
        .ok_or(StatusCode::TOO_MANY_REQUESTS)?;
    Ok((
        Admitted {
            tenant,
            principal,
            token: token.into(),
            origin,
            slots: (subject_slot, tenant_slot),
        },
        offered_protocol,
    ))
}

/// The token, and whether the client offered the `sluice.v1` subprotocol.
fn token(req: &Request, query_allowed: bool) -> Option<(&str, bool)> {
    let offered: Vec<&str> = req
        .headers()
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let offers_sluice = offered.contains(&SUBPROTOCOL);
    if let Some(auth) = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = auth.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then_some((token.trim(), offers_sluice));
    }
    if let Some(token) = offered
        .iter()
        .find_map(|p| p.strip_prefix(TOKEN_PROTOCOL_PREFIX))
    {
        return Some((token, offers_sluice));
    }
    if query_allowed {
        let query = req.uri().query()?;
        let token = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("access_token="))?;
        return Some((token, offers_sluice));
    }
    None
}
