//! `sluice bench storm`: connect-and-close as fast as W workers can: TCP,
//! a full TLS 1.3 handshake (no session resumption unless `--resume`), the
//! WebSocket upgrade with a token (which Sluice verifies before its 101),
//! then close. Reports new sessions per second and the time each took.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use super::probe::Probe;
use super::{
    Counters, Latencies, LatencySummary, Target, TargetArgs, parse_duration, spawn_progress,
    thousands,
};

/// Arguments of `sluice bench storm`.
#[derive(clap::Args, Clone, Debug)]
pub struct StormArgs {
    /// Where to connect and how to authenticate.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Concurrent connect-and-close loops.
    #[arg(long, short = 'w', default_value_t = 32)]
    pub workers: u64,
    /// Measured time (e.g. 8s).
    #[arg(long, short = 'd', default_value = "8s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up time, not measured.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Distinct tokens minted up front and cycled through (each connection
    /// of a real storm brings its own token; minting is not measured).
    #[arg(long, default_value_t = 1024)]
    pub tokens: u64,
    /// Offer TLS session resumption (abbreviated handshakes).
    #[arg(long)]
    pub resume: bool,
}

/// The result of a storm.
#[derive(Debug, Serialize)]
pub struct StormReport {
    /// Concurrent workers.
    pub workers: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Sessions established (upgrade answered with 101) in the window.
    pub sessions: u64,
    /// Sessions per second.
    pub sessions_per_sec: f64,
    /// Connection attempts that failed or were refused in the window.
    pub failed: u64,
    /// Time from connect() to the 101.
    pub connect_latency: LatencySummary,
    /// Server CPU per session, with --server-pid.
    pub server_cpu_us_per_session: Option<f64>,
    /// Whether TLS sessions were resumed.
    pub resumed: bool,
}

/// Run `sluice bench storm`.
pub async fn run(args: StormArgs) -> anyhow::Result<StormReport> {
    if args.workers == 0 || args.tokens == 0 {
        bail!("--workers and --tokens must be at least 1");
    }
    let target = Arc::new(Target::new(&args.target, args.resume).await?);
    let probe = target.server_pid.map(Probe::new).transpose()?;
    let tokens: Arc<Vec<Option<String>>> = Arc::new(
        (0..args.tokens)
            .map(|n| target.token(n))
            .collect::<anyhow::Result<_>>()?,
    );
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(Latencies::new()?);
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..args.workers {
        let (target, tokens, counters, latencies, failed, first_error) = (
            Arc::clone(&target),
            Arc::clone(&tokens),
            Arc::clone(&counters),
            Arc::clone(&latencies),
            Arc::clone(&failed),
            Arc::clone(&first_error),
        );
        tasks.spawn(async move {
            let mut n = w;
            while !counters.stopped() {
                let token = tokens[(n % tokens.len() as u64) as usize].as_deref();
                let began = Instant::now();
                match target.connect(n, token).await {
                    Ok(socket) => {
                        counters.total.fetch_add(1, Ordering::Relaxed);
                        if counters.measuring() {
                            counters.answered.fetch_add(1, Ordering::Relaxed);
                            latencies.record(w, began.elapsed());
                        }
                        // Close by dropping the connection: the storm
                        // measures sessions, not close handshakes.
                        drop(socket);
                    }
                    Err(e) => {
                        if counters.measuring() {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        counters.failed_connections.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert_with(|| e.to_string());
                        }
                        // Do not spin on a server that refuses everything.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                n += args.workers;
            }
        });
    }
    let progress = spawn_progress(Arc::clone(&counters), "sessions", target.quiet);
    tokio::time::sleep(args.warmup).await;
    let before = probe.map(|p| p.read()).transpose()?;
    counters.measuring.store(true, Ordering::Relaxed);
    let window = Instant::now();
    tokio::time::sleep(args.duration).await;
    counters.measuring.store(false, Ordering::Relaxed);
    counters.stop.store(true, Ordering::Relaxed);
    let seconds = window.elapsed().as_secs_f64();
    let after = probe.map(|p| p.read()).transpose()?;
    let _ = progress.await;
    if tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tasks.abort_all();
    }
    let sessions = counters.answered.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    if sessions == 0 {
        let why = first_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_else(|| "no connection completed".into());
        bail!("no session was established: {why}");
    }
    Ok(StormReport {
        workers: args.workers,
        seconds,
        sessions,
        sessions_per_sec: sessions as f64 / seconds,
        failed,
        connect_latency: LatencySummary::of(&latencies.merged()),
        server_cpu_us_per_session: match (before, after) {
            (Some(b), Some(a)) => {
                Some(a.cpu.saturating_sub(b.cpu).as_secs_f64() * 1e6 / sessions as f64)
            }
            _ => None,
        },
        resumed: args.resume,
    })
}

/// The human summary.
pub fn print_human(r: &StormReport) {
    println!(
        "{} workers, {:.1} s measured, TLS {}",
        r.workers,
        r.seconds,
        if r.resumed {
            "resumed"
        } else {
            "full handshakes"
        }
    );
    println!(
        "  {:.0} new sessions/s   ({} sessions, {} failed)",
        r.sessions_per_sec,
        thousands(r.sessions),
        thousands(r.failed)
    );
    println!("  connect to 101: {}", r.connect_latency.line());
    if let Some(cpu) = r.server_cpu_us_per_session {
        println!("  server: {cpu:.0} us CPU per session");
    }
}
