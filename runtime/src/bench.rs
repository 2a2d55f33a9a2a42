//! Microbenchmarks that print figures (never timed tests).
//!
//! `sluice bench sandbox <echo.wasm>`: the per-call cost of a handler in each
//! isolation mode, with fuel metering on and off. Configurations are run in
//! alternating rounds so that a noisy machine slows them all alike; the
//! figure reported is the median over rounds of the mean time per call.

use std::time::Instant;

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::sandbox::{
    Connection, HandlerSpec, Isolation, Message, Principal, Sandbox, SandboxConfig,
};

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

/// Run the sandbox microbenchmark on `component` (an echo handler: it must
/// answer the message with a reply).
pub async fn sandbox(
    component: Vec<u8>,
    base: SandboxConfig,
    calls_per_round: u64,
    rounds: u32,
) -> anyhow::Result<Vec<SandboxBenchRow>> {
    let conn = Connection {
        id: 1,
        principal: Principal {
            tenant: "bench".into(),
            subject: "user-1".into(),
            claims: "{}".into(),
        },
    };
    let msg = Message {
        route: "echo".into(),
        channel: Some("room:1".into()),
        data: r#"{"text":"hello, sluice","n":42}"#.into(),
    };
    let configs = [
        (Isolation::Reuse, true),
        (Isolation::Reuse, false),
        (Isolation::Fresh, true),
        (Isolation::Fresh, false),
    ];
    let mut handlers = Vec::new();
    for (isolation, fuel) in configs {
        let sandbox = Sandbox::new(SandboxConfig {
            fuel,
            ..base.clone()
        })?;
        let handler = sandbox
            .load(
                component.clone(),
                HandlerSpec::new("bench", "bench").isolation(isolation),
            )
            .await
            .context("loading the benchmark component")?;
        let out = handler
            .on_message(&conn, &msg)
            .await
            .context("the warm-up call failed")?;
        if out.actions.is_empty() {
            bail!("the benchmark component returned no actions: use the echo handler");
        }
        for _ in 0..calls_per_round.min(1000) {
            handler.on_message(&conn, &msg).await?;
        }
        handlers.push((isolation, fuel, sandbox, handler, Vec::new()));
    }
    for _ in 0..rounds {
        for (_, _, _, handler, samples) in &mut handlers {
            let start = Instant::now();
            for _ in 0..calls_per_round {
                handler.on_message(&conn, &msg).await?;
            }
            samples.push(start.elapsed().as_secs_f64() * 1e6 / calls_per_round as f64);
        }
    }
    Ok(handlers
        .into_iter()
        .map(|(isolation, fuel, _, _, mut samples)| {
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
        .collect())
}
