//! `sluice probe`: audit any WebSocket endpoint from the outside, as an
//! attacker would, and say what is wrong.
//!
//! Each check maps to the OWASP WebSocket Security Cheat Sheet and ASVS 5.0
//! requirements it covers, and reports pass, fail, not applicable or could
//! not tell, with what was sent and what came back. Every network step is
//! bounded in time and size, active checks are bounded in count, and only
//! the host, port and path of the given URL are ever touched.

pub mod handshake;
pub mod hello;
pub mod messages;
pub mod report;
pub mod target;
pub mod timeouts;
pub mod tokens;
pub mod transport;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

pub use report::{Check, Report, Status};

use crate::handshake::Base;
use crate::report::Spec;
use crate::target::{Endpoint, Scheme, Target};

/// The default of `--wait`, seconds.
pub const DEFAULT_WAIT_SECS: u64 = 30;

/// `sluice probe`'s arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct ProbeArgs {
    /// The endpoint, e.g. wss://api.example.com/ws/chat.
    pub url: String,
    /// A valid token for the endpoint, sent as `Authorization: Bearer`. The
    /// alg:none, tampered, expired and wrong-audience tokens are derived
    /// from it.
    #[arg(long)]
    pub token: Option<String>,
    /// The browser Origin the endpoint allows; sent with every request,
    /// and the look-alike Origin is derived from it.
    #[arg(long)]
    pub origin: Option<String>,
    /// PEM file of CA certificates to trust instead of the public web roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Also send messages: malformed, deeply nested, oversize, invalid
    /// UTF-8, binary, and a burst of 500.
    #[arg(long)]
    pub active: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Seconds the timeout checks wait for the server to cut off a hanging
    /// handshake and to ping or close an idle connection.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_WAIT_SECS)]
    pub wait: u64,
}

/// Run the audit, print it, and return the exit status: 1 when a check
/// failed, 0 otherwise.
pub async fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let report = audit(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.human());
    }
    Ok(if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Why the probe refuses to send `--token` to a `ws://` URL of another
/// machine.
pub const PLAINTEXT_TOKEN_REFUSAL: &str = "refusing to send --token over ws://: \
the connection is plaintext, so the token would cross the network readable (and replayable) \
by anyone on the path. Probe the wss:// URL, or leave out --token (the checks that need it \
then say could not tell); ws:// with a token is allowed only to this machine \
(localhost, 127.0.0.1, [::1]).";

/// Run every check and collect the report. Refuses to send a token over
/// `ws://` to anything but a loopback host, before connecting.
pub async fn audit(args: &ProbeArgs) -> anyhow::Result<Report> {
    let target = Target::parse(&args.url)?;
    if target.scheme == Scheme::Ws && args.token.is_some() && !target.is_loopback() {
        anyhow::bail!("{}: {PLAINTEXT_TOKEN_REFUSAL}", target.url);
    }
    let tls = match target.scheme {
        Scheme::Wss => Some(transport::client_config(args.ca.as_deref())?),
        Scheme::Ws => None,
    };
    let endpoint = Endpoint::new(target, tls);
    let (mut checks, tls_ok) = transport::run(&endpoint, args.ca.as_deref()).await;
    if !tls_ok {
        let reason = "not run: the certificate check did not pass, and the probe sends no token over \
                      a connection it could not verify (see transport.certificate)";
        checks.extend(later_specs().map(|s| Check::skipped(s, Status::CouldNotTell, reason)));
        return Ok(Report::new(args.url.clone(), args.active, checks));
    }

    let base = Base {
        token: args.token.as_deref(),
        origin: args.origin.as_deref(),
    };
    let wait = Duration::from_secs(args.wait.max(1));
    let rest = async {
        let control = handshake::control(&endpoint, base).await;
        let mut checks = handshake::run(&endpoint, base, &control).await;
        if !args.active {
            checks.extend(messages::SPECS.iter().map(|s| {
                Check::skipped(
                    *s,
                    Status::NotApplicable,
                    "sends messages: run with --active",
                )
            }));
        } else if !control.accepted {
            let reason = format!(
                "needs a connection the endpoint accepts (give --token / --origin): {}",
                control.summary
            );
            checks.extend(
                messages::SPECS
                    .iter()
                    .map(|s| Check::skipped(*s, Status::CouldNotTell, reason.clone())),
            );
        } else {
            checks.extend(messages::run(&endpoint, base).await);
        }
        checks
    };
    let (rest, hanging, idle) = tokio::join!(
        rest,
        timeouts::handshake(&endpoint, wait),
        timeouts::idle(&endpoint, base, wait),
    );
    // Checklist order: the compression note last.
    let (compression, rest): (Vec<Check>, Vec<Check>) = rest
        .into_iter()
        .partition(|c| c.id == handshake::COMPRESSION.id);
    checks.extend(rest);
    checks.extend([hanging, idle]);
    checks.extend(compression);
    Ok(Report::new(args.url.clone(), args.active, checks))
}

/// Every check after the transport ones, in checklist order.
fn later_specs() -> impl Iterator<Item = Spec> {
    let (compression, handshake): (Vec<Spec>, Vec<Spec>) = handshake::SPECS
        .into_iter()
        .partition(|s| s.id == handshake::COMPRESSION.id);
    handshake
        .into_iter()
        .chain(messages::SPECS)
        .chain([timeouts::HANDSHAKE, timeouts::IDLE])
        .chain(compression)
}
