//! The management listener (`[management] listen`): the management API
//! (`/v1/`, the control plane's) and `POST /reload`, over HTTPS only, with
//! the server's certificate and the main listener's TLS policy (TLS 1.2 and
//! 1.3, AEAD suites; the acceptor is the one a reload swaps in). A tenant's
//! token and the operator's never cross a network in clear.
//!
//! A client that speaks plain HTTP to it gets one `400` answer in plain
//! text saying so, and the connection is closed: nothing it sent is read
//! as a request. Anything else that is not a TLS handshake is closed
//! without an answer. There is no `Host` check here (the admin listener
//! has one against DNS rebinding): a page on `evil.example` that rebinds
//! its name to this address cannot get through TLS, since the certificate
//! does not name `evil.example`; and every request needs a token.
//!
//! Bounded like the admin listener: at most
//! [`super::connections::MAX_CONNECTIONS`] connections (a new one closes
//! the oldest that is not inside a request), the TLS handshake and each
//! request's head within [`super::HEADER_TIMEOUT`], a failed accept pauses
//! the loop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};

use super::connections::{self, AcceptBackoff, Admitted, Connections};
use super::web::text;
use super::{HEADER_TIMEOUT, ManagementApi, reload};
use crate::state::ServerState;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// What a plain-HTTP client is told before its connection is closed.
pub const PLAINTEXT_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain\r\nconnection: close\r\ncontent-length: 94\r\n\r\n\
This port speaks HTTPS only: use https:// (sluice tenant|handler|reload --url HOST:PORT --ca)\n";

/// Serve the management API on `listener` until the server state is gone.
pub async fn serve(
    listener: TcpListener,
    state: std::sync::Weak<ServerState>,
    management: Arc<dyn ManagementApi>,
) {
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
                    "the management listener could not accept a connection; pausing");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let Some(strong) = state.upgrade() else {
            return;
        };
        let tls = tokio_rustls::TlsAcceptor::from(strong.tls());
        drop(strong);
        let Some(admitted) = table.admit() else {
            tracing::debug!(%peer, "management connection refused: every connection is inside a request");
            continue;
        };
        let (state, management) = (state.clone(), management.clone());
        tokio::spawn(async move {
            let mut admitted = admitted;
            let busy = admitted.busy();
            tokio::select! {
                () = connection(tcp, peer, tls, state, management, busy) => {}
                _ = &mut admitted.evicted => {
                    tracing::debug!(%peer, "management connection closed to make room for a newer one");
                }
            }
        });
    }
}

/// One connection: the TLS handshake (or the plain-HTTP answer), then
/// HTTP/1.1 requests until it closes.
async fn connection(
    mut tcp: TcpStream,
    peer: SocketAddr,
    tls: tokio_rustls::TlsAcceptor,
    state: std::sync::Weak<ServerState>,
    management: Arc<dyn ManagementApi>,
    busy: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HEADER_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(1)) if first[0].is_ascii_uppercase() => {
            tracing::debug!(%peer, "plain HTTP on the management listener: refused");
            let _ = tcp.write_all(PLAINTEXT_ANSWER).await;
            let _ = tcp.shutdown().await;
            return;
        }
        _ => return,
    }
    let stream = match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "management TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (state, management) = (state.clone(), management.clone());
        let in_request = Admitted::request(&busy);
        async move {
            let resp = respond(req, peer, state.upgrade(), management.as_ref()).await;
            drop(in_request);
            Ok::<_, Infallible>(resp)
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let served = http
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .without_shutdown()
        .await;
    if let Ok(parts) = served {
        linger(parts.io.into_inner()).await;
    }
}

/// At most this much of what a client still sends after the connection's
/// last answer is read and dropped (see [`linger`]).
const LINGER_BYTES: u64 = 64 * 1024 * 1024;

/// For at most this long.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Close the connection the way nginx's lingering close does: a request
/// refused before its body was read (401, 403, 429, ...) is answered at
/// once, and hyper then stops reading; closing a socket with unread bytes
/// makes the kernel reset the connection, and a client still writing its
/// body (a `sluice handler push` of a few MiB) gets "broken pipe" or
/// "connection reset" instead of the answer that is waiting for it. So the
/// write side is closed first (TLS close_notify, then FIN), and what the
/// client still sends is read and dropped until it closes too, up to
/// [`LINGER_BYTES`] and [`LINGER_TIME`].
async fn linger<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut stream: S) {
    use tokio::io::AsyncReadExt as _;
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = tokio::io::sink();
    let mut rest = (&mut stream).take(LINGER_BYTES);
    let _ = tokio::time::timeout(LINGER_TIME, tokio::io::copy(&mut rest, &mut sink)).await;
}

async fn respond(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: Option<Arc<ServerState>>,
    management: &dyn ManagementApi,
) -> Response<Full<Bytes>> {
    let Some(state) = state else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "stopped\n");
    };
    let path = req.uri().path();
    if path.starts_with("/v1/") || path == "/v1" {
        return management.respond(req, peer, &state).await;
    }
    if path == "/reload" {
        if req.method() != hyper::Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "POST /reload\n");
        }
        return reload(&req, &state).await;
    }
    text(
        StatusCode::NOT_FOUND,
        "not found: the management API is under /v1/ (POST /reload)\n",
    )
}
