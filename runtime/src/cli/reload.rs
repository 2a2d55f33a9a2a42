//! `sluice reload`: ask a running server to reload its configuration file
//! (as SIGHUP does), through its management API (HTTPS), with the admin
//! token (see [`super::api`] for the address, the CA and the token).

use std::process::ExitCode;

use super::api::Target;

/// Arguments of `sluice reload`.
#[derive(clap::Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    target: Target,
}

/// Ask, and print the server's answer (on stderr when it refused).
pub async fn run(args: ReloadArgs) -> anyhow::Result<ExitCode> {
    let api = args.target.api()?;
    let (status, body) = api
        .management
        .request(http::Method::POST, "/reload", Some(&api.token), Vec::new())
        .await?;
    let body = String::from_utf8_lossy(&body);
    if status == 200 {
        print!("{body}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprint!(
            "{}",
            super::api::failure(status, &super::api::parse(body.as_bytes()))
        );
        Ok(ExitCode::FAILURE)
    }
}
