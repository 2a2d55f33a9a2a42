//! `sluice reload`: ask a running server to reload its configuration file
//! (as SIGHUP does), through its admin listener, with the admin token.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `sluice reload`.
#[derive(clap::Args)]
pub struct ReloadArgs {
    /// The server's configuration file: where its admin listener is
    /// (`admin_listen`) and the token to send (`admin_token`).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// The admin listener's address (default: the config's
    /// `admin_listen`, else 127.0.0.1:9464).
    #[arg(long)]
    admin: Option<String>,
}

/// Ask, and print the server's answer (on stderr when it refused).
pub async fn run(args: ReloadArgs) -> anyhow::Result<ExitCode> {
    let config = match args.config {
        Some(path) => Some(sluice::config::Config::load(&path)?),
        None => None,
    };
    let (status, body) =
        sluice::server::admin::client::request_reload(config.as_ref(), args.admin.as_deref())
            .await?;
    if status == 200 {
        print!("{body}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprint!("{body}");
        Ok(ExitCode::FAILURE)
    }
}
