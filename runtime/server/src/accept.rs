//! The accept stage and the server's life: bind the listeners, accept TCP
//! connections under the handshakes-in-flight cap, the PROXY header from
//! configured load balancers and the per-IP caps, run each connection's
//! handshake under its deadline and its session after; sweep idle limiter
//! keys and history; on shutdown, drain (every session closes 1001) within
//! the drain time, then close the backends.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use tokio::net::TcpListener;

use crate::admin::{self, ManagementApi};
use crate::metrics::AcceptRefusal;
use crate::state::{SWEEP_INTERVAL, ServerState};
use crate::{handshake, proxy, session};

/// A bound server.
pub struct Server {
    state: Arc<ServerState>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    /// The management listener (HTTPS), when the API is served.
    management_listener: Option<TcpListener>,
    management: Option<Arc<dyn ManagementApi>>,
}

impl Server {
    /// Bind `addr` for prepared state.
    pub async fn bind_state(state: Arc<ServerState>, addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let admin = match state.config.server.admin_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {a} (admin): {e}"))?,
            ),
            None => None,
        };
        let management_listener = match state.config.management.address() {
            Some(a) => Some(TcpListener::bind(a).await.map_err(|e| {
                anyhow::anyhow!("cannot listen on {a} (management API, [management] listen): {e}")
            })?),
            None => None,
        };
        Ok(Self {
            state,
            listener,
            admin,
            management_listener,
            management: None,
        })
    }

    /// A server on listeners bound by the caller (the dev server binds its
    /// admin listener itself, falling back to a free port).
    pub fn from_listeners(
        state: Arc<ServerState>,
        listener: TcpListener,
        admin: Option<TcpListener>,
    ) -> Self {
        Self {
            state,
            listener,
            admin,
            management_listener: None,
            management: None,
        }
    }

    /// Serve the management API (the control plane's) under `/v1/` on the
    /// management listener.
    pub fn with_management(mut self, api: Arc<dyn ManagementApi>) -> Self {
        self.management = Some(api);
        self
    }

    /// Serve the management API on `listener` (bound by the caller).
    pub fn with_management_listener(mut self, listener: TcpListener) -> Self {
        self.management_listener = Some(listener);
        self
    }

    /// The address of the management listener, if there is one.
    pub fn management_addr(&self) -> Option<SocketAddr> {
        self.management_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.state.config.server.listen)
    }

    /// The address of the admin listener, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared state.
    pub fn state(&self) -> &Arc<ServerState> {
        &self.state
    }

    /// Accept connections until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let state = self.state;
        let admin = self
            .admin
            .map(|listener| tokio::spawn(admin::serve(listener, Arc::downgrade(&state))));
        let management = match (self.management_listener, self.management.clone()) {
            (Some(listener), Some(api)) => Some(tokio::spawn(admin::https::serve(
                listener,
                Arc::downgrade(&state),
                api,
            ))),
            _ => None,
        };
        let sweeper = {
            let state = Arc::downgrade(&state);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_INTERVAL);
                loop {
                    tick.tick().await;
                    match state.upgrade() {
                        Some(s) => s.sweep().await,
                        None => return,
                    }
                }
            })
        };
        let handshake_deadline = Duration::from_millis(state.config.server.handshake_timeout_ms);
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            // Every connection in TLS/upgrade holds a file descriptor and
            // ~9 KB: past the cap a new one is closed at once, before any
            // read, whoever it is from.
            let Some(in_flight) = state
                .handshakes_in_flight
                .acquire((), state.config.server.max_handshakes_in_flight)
            else {
                tracing::debug!("too many handshakes in flight");
                state.refused.count(AcceptRefusal::HandshakesInFlight);
                continue;
            };
            // A direct client is checked here, before a task exists; behind
            // a load balancer the client's address comes in the PROXY
            // header, read in the connection's task under the deadline.
            let behind_proxy = state.is_load_balancer(peer.ip());
            let ip_slot = if behind_proxy {
                None
            } else {
                match state.admit_ip(peer.ip()) {
                    Some(slot) => Some(slot),
                    None => continue,
                }
            };
            let _ = tcp.set_nodelay(true);
            // The handshake (TLS, the upgrade, its deadline's timer: ~9 KB)
            // lives on the heap and is freed once it is done. The task's
            // future is then the session's alone: `then` keeps one of the
            // two at a time, where an async block held the session's future
            // beside its own state for the connection's whole life.
            let handshake = Box::pin(tokio::time::timeout(handshake_deadline, {
                let state = state.clone();
                async move {
                    let mut tcp = tcp;
                    let ip_slot = match ip_slot {
                        Some(slot) => slot,
                        None => {
                            let client = match proxy::read_header(&mut tcp).await {
                                Ok(client) => client.unwrap_or(peer.ip()),
                                Err(e) => {
                                    tracing::debug!(error = %e, "load balancer connection refused");
                                    state.refused.count(AcceptRefusal::ProxyHeader);
                                    return None;
                                }
                            };
                            state.admit_ip(client)?
                        }
                    };
                    // The socket (~1.5 KB: rustls' connection and the
                    // WebSocket's state) is boxed: the session's future
                    // holds it for the connection's life.
                    handshake::accept(&state, tcp)
                        .await
                        .map(|(socket, admitted)| (Box::new(socket), admitted, ip_slot))
                }
            }));
            let state = state.clone();
            tokio::spawn(handshake.then(move |accepted| {
                drop(in_flight);
                match accepted {
                    Ok(Some((socket, admitted, ip_slot))) => Either::Left(
                        // The client address's slot is held until the session ends.
                        session::run(state, socket, admitted).map(move |()| drop(ip_slot)),
                    ),
                    Ok(None) => Either::Right(std::future::ready(())),
                    Err(_) => {
                        tracing::debug!("handshake deadline passed");
                        Either::Right(std::future::ready(()))
                    }
                }
            }));
        }
        sweeper.abort();
        // Drain (readyz answers 503 from here on): every session finishes the message it is handling, applies
        // its effects, sends close 1001 and ends; wait for all of them, but
        // no longer than the drain time.
        state.drain();
        let drain = Duration::from_millis(state.config.server.drain_timeout_ms);
        if tokio::time::timeout(drain, state.shutdown.closed())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = state.shutdown.receiver_count(),
                "drain time passed with connections still open"
            );
        }
        for task in [admin, management].into_iter().flatten() {
            task.abort();
        }
        // Everything queued for the disk is written; the store records a
        // clean shutdown and releases its data_dir.
        state.history.close();
        if let Some(fleet) = &state.fleet {
            fleet.close().await;
        }
    }
}
