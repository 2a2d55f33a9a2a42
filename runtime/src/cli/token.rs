//! `sluice token`: mint a token for a tenant with its HMAC key
//! (development and tests).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::Value;
use sluice::token::Minter;

/// Arguments of `sluice token`.
#[derive(clap::Args)]
pub struct TokenArgs {
    /// The configuration file.
    #[arg(short, long)]
    config: PathBuf,
    /// The tenant.
    #[arg(long)]
    tenant: String,
    /// The subject (`sub`).
    #[arg(long)]
    sub: String,
    /// Scopes (repeatable).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Extra claims as NAME=VALUE (VALUE is JSON, or a string).
    #[arg(long = "claim")]
    claims: Vec<String>,
}

/// Print the token.
pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let config = sluice::config::Config::load(&args.config)?;
    let minter = Minter::for_tenant(&config, &args.tenant)?;
    let mut extra = serde_json::Map::new();
    for c in args.claims {
        let (k, v) = c
            .split_once('=')
            .with_context(|| format!("--claim {c:?} is not NAME=VALUE"))?;
        extra.insert(
            k.to_owned(),
            serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned())),
        );
    }
    println!("{}", minter.mint(&args.sub, &args.scopes, args.ttl, extra)?);
    Ok(ExitCode::SUCCESS)
}
