//! `sluice serve`: serve wss:// for the tenants in a config file until
//! SIGINT or SIGTERM; SIGHUP reloads the file.

use std::path::PathBuf;
use std::process::ExitCode;

use super::signals::{reload_on_sighup, shutdown_signal};

/// Arguments of `sluice serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// The configuration file.
    #[arg(short, long)]
    config: PathBuf,
}

/// Serve until stopped.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = sluice::config::Config::load(&args.config)?;
    let listen = config.server.listen;
    let server = sluice::node::Node::build(config)
        .await?
        .bind(listen)
        .await?;
    eprintln!("sluice listening on wss://{}", server.local_addr());
    reload_on_sighup(server.state().clone());
    server.run(shutdown_signal()).await;
    Ok(ExitCode::SUCCESS)
}
