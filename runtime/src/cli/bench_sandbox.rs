//! `sluice bench sandbox <component>`: what a handler costs — its size, the
//! time to compile it, its first call (a new instance: instantiation
//! included), the fuel and memory of a call, and the per-call cost in each
//! isolation mode with fuel metering on and off. Configurations are run in
//! alternating rounds so that a noisy machine slows them all alike; the
//! figure reported is the median over rounds of the mean time per call.
//!
//! The message sent is configurable (`--route`, `--channel`, `--data`), so
//! the same command measures the echo handler and the chat handlers of every
//! language (`chat.send`). The benchmark grants every capability.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use sluice::sandbox::{
    CallReport, Capability, Connection, HandlerLimits, HandlerSpec, Isolation, Message, Principal,
    Sandbox, SandboxConfig,
};

use super::report;

/// Arguments of `sluice bench sandbox`: what to send, how often, and the
/// limits it runs under.
#[derive(clap::Args, Clone, Debug)]
pub struct SandboxBenchArgs {
    /// The component (e.g. handlers/target/wasm32-wasip2/release/echo.wasm).
    component: PathBuf,
    /// The route of every message (e.g. `chat.send`).
    #[arg(long, default_value = "echo")]
    route: String,
    /// The channel of every message.
    #[arg(long, default_value = "room:1")]
    channel: String,
    /// The data of every message, as JSON (e.g. '{"text":"hi"}').
    #[arg(long, default_value = r#"{"text":"hello, sluice","n":42}"#)]
    data: String,
    /// Calls per round and configuration.
    #[arg(long, default_value_t = 20_000)]
    calls: u64,
    /// Rounds (configurations alternate between rounds).
    #[arg(long, default_value_t = 7)]
    rounds: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Bytes of a freed memory slot reset by memset (the rest by madvise).
    #[arg(long, default_value_t = sluice::sandbox::DEFAULT_KEEP_RESIDENT)]
    keep_resident: usize,
    /// Fuel per call (default: the handler default).
    #[arg(long)]
    fuel: Option<u64>,
    /// Wall-clock budget per call in ms (default: the handler default).
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// Memory per instance in bytes (default: the handler default).
    #[arg(long)]
    memory: Option<usize>,
}

impl SandboxBenchArgs {
    /// The handler's limits: the defaults, with what the arguments set.
    fn limits(&self) -> HandlerLimits {
        let mut limits = HandlerLimits::default();
        if let Some(fuel) = self.fuel {
            limits.fuel = fuel;
        }
        if let Some(ms) = self.deadline_ms {
            limits.deadline = Duration::from_millis(ms);
        }
        if let Some(memory) = self.memory {
            limits.memory_bytes = memory;
        }
        limits
    }
}

/// One configuration's result.
#[derive(Clone, Debug, Serialize)]
pub struct SandboxBenchRow {
    /// `reuse` or `fresh`.
    pub isolation: Isolation,
    /// Whether fuel was metered.
    pub fuel: bool,
    /// Median over rounds of the mean microseconds per call.
    pub us_per_call: f64,
    /// Fastest and slowest round's mean.
    pub round_min_us: f64,
    /// See `round_min_us`.
    pub round_max_us: f64,
    /// Calls per round.
    pub calls_per_round: u64,
}

/// The cost of one call, from its report.
#[derive(Clone, Debug, Serialize)]
pub struct CallCost {
    /// Wall-clock time, microseconds.
    pub elapsed_us: u64,
    /// Fuel spent.
    pub fuel: u64,
    /// Linear memory the instance held afterwards, bytes.
    pub memory_bytes: u64,
}

/// Everything `sluice bench sandbox` measures.
#[derive(Clone, Debug, Serialize)]
pub struct SandboxBenchReport {
    /// Size of the component file.
    pub component_bytes: usize,
    /// Time to compile it (Cranelift) and check it against the world.
    pub compile_ms: u64,
    /// The limits it ran under, after sizing for the component's kind.
    pub fuel_limit: u64,
    /// See `fuel_limit`.
    pub deadline_ms: u64,
    /// See `fuel_limit`.
    pub memory_limit_bytes: usize,
    /// The first call after loading: a new instance, instantiation included.
    pub first_call: CallCost,
    /// A call on a warm instance (`reuse`), after the warm-up calls.
    pub warm_call: CallCost,
    /// A call on a new instance (`fresh`), after the warm-up calls.
    pub fresh_call: CallCost,
    /// Per-call cost by configuration.
    pub rows: Vec<SandboxBenchRow>,
}

fn cost(report: &CallReport) -> CallCost {
    CallCost {
        elapsed_us: report.elapsed_us,
        fuel: report.fuel_consumed.unwrap_or(0),
        memory_bytes: report.memory_bytes,
    }
}

/// Run the benchmark and print its figures.
pub async fn run(args: SandboxBenchArgs) -> anyhow::Result<ExitCode> {
    let bytes = tokio::fs::read(&args.component)
        .await
        .with_context(|| format!("cannot read {}", args.component.display()))?;
    let measured = measure(bytes, &args).await?;
    report::print(args.json, &measured, |r| print_human(&args, r))
}

/// Run the sandbox microbenchmark on `component` (a handler that answers
/// the message with at least one action).
async fn measure(
    component: Vec<u8>,
    args: &SandboxBenchArgs,
) -> anyhow::Result<SandboxBenchReport> {
    let base = SandboxConfig {
        keep_resident: args.keep_resident,
        ..SandboxConfig::default()
    };
    let configured = args.limits();
    let conn = Connection {
        id: 1,
        principal: Principal {
            tenant: "bench".into(),
            subject: "user-1".into(),
            claims: "{}".into(),
        },
    };
    let msg = Message {
        route: args.route.clone(),
        channel: Some(args.channel.clone()),
        data: args.data.clone(),
    };
    let calls_per_round = args.calls.max(1);
    let component_bytes = component.len();
    let mut compile_ms = 0;
    let mut limits = configured.clone();
    let mut first_call = None;
    let mut warm_call = None;
    let mut fresh_call = None;
    let mut handlers = Vec::new();
    for fuel in [true, false] {
        // One engine per fuel setting; both isolation modes share it (and
        // its compiled component).
        let sandbox = Sandbox::new(SandboxConfig {
            fuel,
            ..base.clone()
        })?;
        for isolation in [Isolation::Reuse, Isolation::Fresh] {
            let spec = HandlerSpec::new("bench", "bench")
                .isolation(isolation)
                .limits(configured.clone())
                .grant(Capability::ALL);
            let started = Instant::now();
            let handler = sandbox
                .load(component.clone(), spec)
                .await
                .context("loading the benchmark component")?;
            if fuel && isolation == Isolation::Reuse {
                compile_ms = started.elapsed().as_millis() as u64;
                limits = handler.spec().limits.clone();
            }
            let out = match handler.on_message(&conn, &msg).await {
                Ok(out) => out,
                Err(e) => bail!(
                    "the first call failed: {e} (stderr: {:?}); raise the limits \
                     (--memory, --fuel, --deadline-ms) or send another message",
                    e.report.stderr
                ),
            };
            if out.actions.is_empty() {
                bail!("the benchmark component returned no actions for this message");
            }
            if fuel && isolation == Isolation::Reuse {
                first_call = Some(cost(&out.report));
            }
            let mut last = out.report;
            for _ in 0..calls_per_round.min(1000) {
                last = handler.on_message(&conn, &msg).await?.report;
            }
            if fuel {
                match isolation {
                    Isolation::Reuse => warm_call = Some(cost(&last)),
                    Isolation::Fresh => fresh_call = Some(cost(&last)),
                }
            }
            handlers.push((isolation, fuel, handler, Vec::new()));
        }
    }
    for _ in 0..args.rounds.max(1) {
        for (_, _, handler, samples) in &mut handlers {
            let start = Instant::now();
            for _ in 0..calls_per_round {
                handler.on_message(&conn, &msg).await?;
            }
            samples.push(start.elapsed().as_secs_f64() * 1e6 / calls_per_round as f64);
        }
    }
    let rows = handlers
        .into_iter()
        .map(|(isolation, fuel, _, mut samples)| {
            samples.sort_by(f64::total_cmp);
            SandboxBenchRow {
                isolation,
                fuel,
                us_per_call: samples[samples.len() / 2],
                round_min_us: samples[0],
                round_max_us: samples[samples.len() - 1],
                calls_per_round,
            }
        })
        .collect();
    let (Some(first_call), Some(warm_call), Some(fresh_call)) = (first_call, warm_call, fresh_call)
    else {
        bail!("no call was measured");
    };
    Ok(SandboxBenchReport {
        component_bytes,
        compile_ms,
        fuel_limit: limits.fuel,
        deadline_ms: limits.deadline.as_millis() as u64,
        memory_limit_bytes: limits.memory_bytes,
        first_call,
        warm_call,
        fresh_call,
        rows,
    })
}

/// The report as a table.
fn print_human(args: &SandboxBenchArgs, report: &SandboxBenchReport) {
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    let data: String = args.data.chars().take(40).collect();
    let more = if data.len() < args.data.len() {
        "..."
    } else {
        ""
    };
    println!(
        "handler {} ({} {data}{more})",
        args.component.display(),
        args.route
    );
    println!(
        "  component {:.1} MiB, compiled in {} ms; limits: fuel {}, deadline {} ms, memory {:.0} MiB",
        mib(report.component_bytes as u64),
        report.compile_ms,
        report.fuel_limit,
        report.deadline_ms,
        mib(report.memory_limit_bytes as u64)
    );
    for (what, c) in [
        ("first call (new instance)", &report.first_call),
        ("warm call (reuse)", &report.warm_call),
        ("fresh call (new instance)", &report.fresh_call),
    ] {
        println!(
            "  {what:<26} {:>8} us {:>11} fuel {:>8.1} MiB memory",
            c.elapsed_us,
            c.fuel,
            mib(c.memory_bytes)
        );
    }
    println!(
        "per-call cost ({} rounds x {} calls, median of round means)",
        args.rounds, args.calls
    );
    println!(
        "{:<8} {:<5} {:>10} {:>10} {:>10}",
        "mode", "fuel", "us/call", "min", "max"
    );
    for r in &report.rows {
        println!(
            "{:<8} {:<5} {:>10.2} {:>10.2} {:>10.2}",
            r.isolation.to_string(),
            if r.fuel { "on" } else { "off" },
            r.us_per_call,
            r.round_min_us,
            r.round_max_us
        );
    }
}
