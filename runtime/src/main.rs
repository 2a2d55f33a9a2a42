//! The `sluice` command: the command line, and each command handed to its
//! module in `cli/` (which owns its options).

#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A WebSocket runtime for realtime apps with WebAssembly handlers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve wss:// for the tenants in a config file.
    Serve(cli::serve::ServeArgs),
    /// A dev server: self-signed certificate, demo tenant with the echo and
    /// chat handlers, a printed token and client command.
    Dev(cli::dev::DevArgs),
    /// Write a self-signed ECDSA P-256 certificate (and with --secret an
    /// HMAC secret) to a folder: the files the benchmark peers share.
    Cert(cli::cert::CertArgs),
    /// Mint a token with a tenant's HMAC key (development and tests): a
    /// tenant of a config file, or one created through the management API.
    Token(cli::token::TokenArgs),
    /// Check a configuration: syntax, unknown fields, files, keys, schemas,
    /// handlers against the WIT world. Reports every problem at once.
    Check(cli::check::CheckArgs),
    /// Ask a running server to reload its configuration file (same as
    /// SIGHUP), through its management API (HTTPS), with the admin token.
    Reload(cli::reload::ReloadArgs),
    /// Manage tenants through a running server's management API (HTTPS):
    /// create, list, show, update, rm, keys. See docs/management.md.
    Tenant(cli::tenant::TenantArgs),
    /// Manage pushed handlers through a running server's management API:
    /// push (verified), list, show, promote (stable, canary, shadow),
    /// rollback, rm, audit.
    Handler(cli::handler::HandlerArgs),
    /// An interactive wss client: sends each line of stdin as a text frame,
    /// prints every frame received.
    Connect(cli::connect::ConnectArgs),
    /// Ask a running server's admin listener whether it is ready
    /// (`/readyz`) or, with --live, alive (`/healthz`): exit 0 on 200, else
    /// 1. For container health checks and exec probes (no shell needed).
    Health(cli::health::HealthArgs),
    /// Run one handler call locally, through the same sandbox the server
    /// uses, and print the returned actions as JSON.
    ///
    /// Exit status: 0 when the handler returned actions, 2 when the call
    /// failed (the error kind is printed), 1 when the component could not be
    /// loaded or the arguments are wrong.
    Call(cli::call::CallArgs),
    /// Print benchmark figures.
    #[command(subcommand)]
    Bench(cli::bench::BenchCommand),
    /// Audit any WebSocket endpoint from the outside: transport, handshake
    /// authentication, Origin, timeouts, compression, and with --active
    /// message validation and flooding. Exit status 1 if a check fails.
    Probe(sluice_probe::ProbeArgs),
    /// Read a mobile app (.apk, .aab, .ipa, or a folder of one) without
    /// running it: the endpoints it talks to, its transport policy, secrets
    /// it carries (MASVS); with --probe, audit its wss:// endpoints too.
    /// Exit status 1 on a high finding, 2 when the package is refused.
    Scan(cli::scan::ScanArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve(_) | Command::Dev(_));
    sluice::logging::init(if serving { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => cli::serve::run(args).await,
            Command::Dev(args) => cli::dev::run(args).await,
            Command::Cert(args) => cli::cert::run(&args),
            Command::Token(args) => cli::token::run(args),
            Command::Check(args) => cli::check::run(args).await,
            Command::Reload(args) => cli::reload::run(args).await,
            Command::Health(args) => cli::health::run(args).await,
            Command::Handler(args) => cli::handler::run(args).await,
            Command::Tenant(args) => cli::tenant::run(args).await,
            Command::Connect(args) => cli::connect::run(args).await,
            Command::Call(args) => cli::call::run(args).await,
            Command::Bench(command) => cli::bench::run(command).await,
            Command::Probe(args) => sluice_probe::run(args).await,
            Command::Scan(args) => cli::scan::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
