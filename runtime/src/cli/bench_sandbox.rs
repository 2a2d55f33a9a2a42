//! Microbenchmarks that print figures (never timed tests).
//!
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

use std::time::Instant;

use anyhow::{Context as _, bail};
use serde::Serialize;

use sluice_sandbox::{
    Capability, Connection, HandlerLimits, HandlerSpec, Isolation, Message, Principal, Sandbox,
    SandboxConfig,
};

/// What to send and how often.
#[derive(Clone, Debug)]
pub struct SandboxBenchOptions {
    /// The route of every message.
    pub route: String,
    /// The channel of every message.
    pub channel: Option<String>,
    /// The data of every message (JSON text).
    pub data: String,
    /// Calls per round and configuration.
    pub calls_per_round: u64,
    /// Rounds.
    pub rounds: u32,
    /// The handler's limits.
    pub limits: HandlerLimits,
}

impl Default for SandboxBenchOptions {
    fn default() -> Self {
        Self {
            route: "echo".into(),
            channel: Some("room:1".into()),
            data: r#"{"text":"hello, sluice","n":42}"#.into(),
            calls_per_round: 20_000,
            rounds: 7,
            limits: HandlerLimits::default(),
        }
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

fn cost(report: &sluice_sandbox::CallReport) -> CallCost {
    CallCost {
        elapsed_us: report.elapsed_us,
        fuel: report.fuel_consumed.unwrap_or(0),
        memory_bytes: report.memory_bytes,
    }
}

/// Run the sandbox microbenchmark on `component` (a handler that answers
/// the message with at least one action).
pub async fn sandbox(
    component: Vec<u8>,
    base: SandboxConfig,
    opts: &SandboxBenchOptions,
) -> anyhow::Result<SandboxBenchReport> {
    let conn = Connection {
        id: 1,
        principal: Principal {
            tenant: "bench".into(),
            subject: "user-1".into(),
            claims: "{}".into(),
        },
    };
    let msg = Message {
        route: opts.route.clone(),
        channel: opts.channel.clone(),
        data: opts.data.clone(),
    };
    let calls_per_round = opts.calls_per_round.max(1);
    let component_bytes = component.len();
    let mut compile_ms = 0;
    let mut limits = opts.limits.clone();
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
                .limits(opts.limits.clone())
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
    for _ in 0..opts.rounds.max(1) {
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
