//! `sluice health`: ask a running server's admin listener whether it is
//! ready (`GET /readyz`) or alive (`GET /healthz`), and say so in the exit
//! status. It is what a container's health check and a Kubernetes exec
//! probe run: the image has no shell and no curl, only this binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The longest a check may take; an orchestrator gives up on its own
/// timeout too, but a check must never hang.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Arguments of `sluice health`.
#[derive(clap::Args)]
pub struct HealthArgs {
    /// The server's configuration file: where its admin listener is
    /// (`admin_listen`).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// The admin listener's address (default: the config's
    /// `admin_listen`, else 127.0.0.1:9464).
    #[arg(long)]
    admin: Option<String>,
    /// Ask `/healthz` (the process answers: liveness) instead of `/readyz`
    /// (accepting connections: readiness; 503 while draining or cut off
    /// from NATS).
    #[arg(long)]
    live: bool,
}

/// Exit 0 when the endpoint answers 200; otherwise print what it answered
/// (or why it could not be reached) and exit 1.
pub async fn run(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(path) => Some(sluice::config::Config::load(path)?),
        None => None,
    };
    let admin =
        sluice::server::admin::client::admin_address(config.as_ref(), args.admin.as_deref());
    let path = if args.live { "/healthz" } else { "/readyz" };
    let asked =
        sluice::server::admin::client::request(&admin, http::Method::GET, path, None, Vec::new());
    match tokio::time::timeout(CHECK_TIMEOUT, asked).await {
        Ok(Ok((200, body))) => {
            print!("{}", String::from_utf8_lossy(&body));
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ok((status, body))) => {
            eprintln!(
                "http://{admin}{path}: {status} {}",
                String::from_utf8_lossy(&body).trim()
            );
            Ok(ExitCode::FAILURE)
        }
        Ok(Err(e)) => {
            eprintln!("http://{admin}{path}: {e:#}");
            Ok(ExitCode::FAILURE)
        }
        Err(_) => {
            eprintln!(
                "http://{admin}{path}: no answer within {} s",
                CHECK_TIMEOUT.as_secs()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
