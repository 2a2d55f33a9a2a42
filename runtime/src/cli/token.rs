//! `sluice token`: mint a token with a tenant's HMAC key (development and
//! tests): a tenant of a config file (`-c sluice.toml --tenant T`), or one
//! created through the management API, with the secret the API generated
//! (`--secret-file DIR/<id>.<kid>.secret --kid K --issuer I --audience A`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use serde_json::Value;
use sluice::config::JwtAlgorithm;
use sluice::token::Minter;

/// Arguments of `sluice token`.
#[derive(clap::Args)]
pub struct TokenArgs {
    /// The configuration file (with --tenant).
    #[arg(short, long, requires = "tenant", conflicts_with = "secret_file")]
    config: Option<PathBuf>,
    /// The tenant of the configuration file.
    #[arg(long, requires = "config")]
    tenant: Option<String>,
    /// A file holding the key's HMAC secret, as `sluice tenant create
    /// --secrets-out DIR` writes it (DIR/<id>.<kid>.secret): for a tenant
    /// created through the management API. With --kid, --issuer, --audience.
    #[arg(long, value_name = "FILE", requires_all = ["issuer", "audience"])]
    secret_file: Option<PathBuf>,
    /// The key's kid (the `kid` header the server picks the key by).
    #[arg(long, requires = "secret_file")]
    kid: Option<String>,
    /// The tenant's auth.issuer (`iss`).
    #[arg(long, requires = "secret_file")]
    issuer: Option<String>,
    /// The tenant's auth.audience (`aud`).
    #[arg(long, requires = "secret_file")]
    audience: Option<String>,
    /// The key's algorithm.
    #[arg(long, default_value = "HS256", requires = "secret_file")]
    algorithm: String,
    /// The tenant's scopes_claim.
    #[arg(long, default_value = "scope", requires = "secret_file")]
    scopes_claim: String,
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
    let minter = match (&args.config, &args.tenant, &args.secret_file) {
        (Some(config), Some(tenant), _) => {
            let config = sluice::config::Config::load(config)?;
            Minter::for_tenant(&config, tenant)?
        }
        (_, _, Some(file)) => {
            let secret = std::fs::read_to_string(file)
                .with_context(|| format!("reading --secret-file {}", file.display()))?;
            let algorithm: JwtAlgorithm = args
                .algorithm
                .parse()
                .map_err(|e| anyhow::anyhow!("--algorithm: {e}"))?;
            if !algorithm.is_hmac() {
                bail!(
                    "--algorithm {}: only HS256, HS384, HS512 sign with a secret",
                    algorithm.as_str()
                );
            }
            Minter::from_secret(
                secret.trim().as_bytes(),
                args.kid.as_deref(),
                algorithm,
                args.issuer.as_deref().unwrap_or_default(),
                args.audience.as_deref().unwrap_or_default(),
                &args.scopes_claim,
            )
            .with_context(|| format!("--secret-file {}", file.display()))?
        }
        _ => bail!(
            "say whose key signs: -c sluice.toml --tenant T (a tenant of the file), or \
             --secret-file FILE --kid K --issuer I --audience A (a tenant of the management API)"
        ),
    };
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
