//! `sluice call`: one handler call run locally, through the same sandbox the
//! server uses, its actions (or its error) printed as JSON.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sluice::sandbox::{
    Capability, Connection, HandlerLimits, HandlerSpec, Isolation, Message, Principal, Sandbox,
    SandboxConfig,
};

/// Arguments of `sluice call`.
#[derive(clap::Args)]
pub struct CallArgs {
    /// The handler component (.wasm).
    component: PathBuf,
    /// The route (the envelope's `type`), e.g. `chat.send`.
    route: String,
    /// The message's data, as JSON.
    #[arg(long, default_value = "{}")]
    data: String,
    /// The channel the message targets.
    #[arg(long)]
    channel: Option<String>,
    /// Which export to call.
    #[arg(long, default_value = "message")]
    event: sluice::sandbox::Export,
    /// The tenant of the connection and the handler.
    #[arg(long, default_value = "dev")]
    tenant: String,
    /// The subject (`sub`) of the connection.
    #[arg(long, default_value = "dev-user")]
    subject: String,
    /// Claims exposed to the handler, as a JSON object.
    #[arg(long, default_value = "{}")]
    claims: String,
    /// Capabilities granted (comma-separated: state,log,clock).
    #[arg(long, value_delimiter = ',', default_value = "state,log,clock")]
    grant: Vec<Capability>,
    /// Isolation mode: reuse or fresh.
    #[arg(long, default_value = "reuse")]
    isolation: Isolation,
    /// Fuel for the call.
    #[arg(long, default_value_t = sluice::sandbox::DEFAULT_FUEL)]
    fuel: u64,
    /// Run without fuel metering (only the deadline bounds the call).
    #[arg(long)]
    no_fuel: bool,
    /// Wall-clock deadline, in milliseconds.
    #[arg(long, default_value_t = sluice::sandbox::DEFAULT_DEADLINE.as_millis() as u64)]
    deadline_ms: u64,
    /// Memory cap, in bytes.
    #[arg(long, default_value_t = sluice::sandbox::DEFAULT_MEMORY_BYTES)]
    memory: usize,
    /// Print the call report (fuel, time, logs, stdout/stderr) too.
    #[arg(long, short)]
    verbose: bool,
}

/// Make the call and print its outcome; exit status 2 when it failed.
pub async fn run(args: CallArgs) -> anyhow::Result<ExitCode> {
    let data: Value = serde_json::from_str(&args.data).context("--data is not valid JSON")?;
    let claims: Value = serde_json::from_str(&args.claims).context("--claims is not valid JSON")?;
    if !claims.is_object() {
        bail!("--claims must be a JSON object");
    }
    let sandbox = Sandbox::new(SandboxConfig {
        fuel: !args.no_fuel,
        ..SandboxConfig::default()
    })?;
    let limits = HandlerLimits {
        fuel: args.fuel,
        deadline: Duration::from_millis(args.deadline_ms),
        memory_bytes: args.memory,
        ..HandlerLimits::default()
    };
    let spec = HandlerSpec::new(args.component.display().to_string(), args.tenant.clone())
        .isolation(args.isolation)
        .limits(limits)
        .grant(args.grant.iter().copied().collect::<BTreeSet<_>>());
    let handler = sandbox
        .load_file(&args.component, spec)
        .await
        .with_context(|| format!("cannot load {}", args.component.display()))?;
    let conn = Connection {
        id: 1,
        principal: Principal {
            tenant: args.tenant,
            subject: args.subject,
            claims: claims.to_string(),
        },
    };
    let msg = Message {
        route: args.route,
        channel: args.channel,
        data: data.to_string(),
    };
    let result = handler.call_export(args.event, &conn, &msg).await;
    let (mut out, code) = match result {
        Ok(outcome) => {
            let mut out = json!({ "ok": true, "actions": outcome.actions.iter().map(sluice::control::shadow::action_json).collect::<Vec<_>>() });
            if args.verbose {
                out["report"] = serde_json::to_value(&outcome.report)?;
            }
            (out, ExitCode::SUCCESS)
        }
        Err(err) => {
            let mut error = json!({ "kind": err.kind.name(), "message": err.kind.to_string(), "client_code": sluice::server::rejection::client_code(&err.kind) });
            if let sluice::sandbox::CallErrorKind::Rejected { code, message } = &err.kind {
                error["code"] = json!(code.as_str());
                error["message"] = json!(message);
            }
            let mut out = json!({ "ok": false, "error": error });
            if args.verbose || !err.report.stderr.is_empty() {
                out["report"] = serde_json::to_value(&err.report)?;
            }
            (out, ExitCode::from(2))
        }
    };
    if args.verbose
        && let Some(peak) = peak_rss_bytes()
    {
        // What running this handler cost the host process at most, for a
        // handler author tuning limits (and the host-copy budget's test).
        out["peak_rss_bytes"] = json!(peak);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(code)
}

/// This process's peak resident memory (Linux: `VmHWM`), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
