//! The signals a serving command answers: SIGINT and SIGTERM stop it,
//! SIGHUP reloads its configuration file.

use std::sync::Arc;

use sluice::server::ServerState;

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// SIGHUP: reload the configuration file; a refused reload is logged and
/// the old configuration keeps serving.
pub fn reload_on_sighup(state: Arc<ServerState>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            match state.reload_from_source().await {
                Ok(summary) => tracing::info!(%summary, "configuration reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "reload refused; the old configuration keeps serving")
                }
            }
        }
    });
}
