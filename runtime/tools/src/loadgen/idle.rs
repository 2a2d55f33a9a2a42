//! `sluice bench idle`: open N connections, keep them idle, and report the
//! server's resident memory per connection (RSS after minus RSS before,
//! divided by N). A process here may hold at most `ulimit -n` files, so the
//! connections can be split over several client processes (`--processes`):
//! the parent starts copies of itself, each opens its share and reports
//! `ready <ok> <failed>` on stdout, and all hold until the parent is done.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

use super::probe::Probe;
use super::{Protocol, Target, TargetArgs, parse_duration, thousands};

/// Arguments of `sluice bench idle`.
#[derive(clap::Args, Clone, Debug)]
pub struct IdleArgs {
    /// Where to connect and how to authenticate.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connections in all.
    #[arg(long, short = 'c', default_value_t = 5000)]
    pub connections: u64,
    /// Client processes to split them over.
    #[arg(long, default_value_t = 1)]
    pub processes: u64,
    /// How long to hold them once all are open (RSS is read at the end).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Connections opened at once per process.
    #[arg(long, default_value_t = 64)]
    pub connect_parallel: usize,
    /// Internal: run as a child holding connections `first..first+connections`.
    #[arg(long, hide = true)]
    pub child_first: Option<u64>,
}

/// The result of an idle run.
#[derive(Debug, Serialize)]
pub struct IdleReport {
    /// Connections asked for.
    pub connections: u64,
    /// Connections open at the end.
    pub open: u64,
    /// Connections that failed to open.
    pub failed: u64,
    /// Client processes.
    pub processes: u64,
    /// Seconds to open them all.
    pub open_seconds: f64,
    /// Server RSS before, bytes (with --server-pid).
    pub server_rss_before: Option<u64>,
    /// Server RSS with every connection open.
    pub server_rss_after: Option<u64>,
    /// (after - before) / open.
    pub server_bytes_per_connection: Option<f64>,
}

/// Open `count` connections from `first`, each on its own, counting
/// failures instead of stopping at the first.
async fn open(
    target: &Arc<Target>,
    first: u64,
    count: u64,
    parallel: usize,
) -> anyhow::Result<(Vec<crate::client::ClientSocket>, u64, Option<String>)> {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for n in first..first + count {
        let token = target.token(n)?;
        let target = Arc::clone(target);
        let permit = Arc::clone(&sem).acquire_owned().await?;
        tasks.spawn(async move {
            let _permit = permit;
            target.connect(n, token.as_deref()).await
        });
    }
    let (mut ok, mut failed, mut why) = (Vec::new(), 0, None);
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(s) => ok.push(s),
            Err(e) => {
                failed += 1;
                why.get_or_insert_with(|| e.to_string());
            }
        }
    }
    Ok((ok, failed, why))
}

/// Keep the connections alive: answer pings, drop whatever else comes.
fn keep(sockets: Vec<crate::client::ClientSocket>) -> Vec<tokio::task::JoinHandle<()>> {
    use futures_util::StreamExt as _;
    sockets
        .into_iter()
        .map(|mut s| tokio::spawn(async move { while let Some(Ok(_)) = s.next().await {} }))
        .collect()
}

/// Run `sluice bench idle` (parent or child).
pub async fn run(args: IdleArgs) -> anyhow::Result<Option<IdleReport>> {
    if args.connections == 0 || args.processes == 0 {
        bail!("--connections and --processes must be at least 1");
    }
    let target = Arc::new(Target::new(&args.target, true).await?);
    if let Some(first) = args.child_first {
        let (sockets, failed, why) =
            open(&target, first, args.connections, args.connect_parallel).await?;
        println!(
            "ready {} {} {}",
            sockets.len(),
            failed,
            why.unwrap_or_default()
        );
        let _held = keep(sockets);
        // Hold until the parent closes our stdin.
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        return Ok(None);
    }

    let probe = target.server_pid.map(Probe::new).transpose()?;
    let before = probe.map(|p| p.read()).transpose()?;
    let began = Instant::now();
    let mut open_count = 0;
    let mut failed = 0;
    let mut first_error = None;
    let mut children = Vec::new();
    let mut held = Vec::new();
    if args.processes == 1 {
        let (sockets, f, why) = open(&target, 0, args.connections, args.connect_parallel).await?;
        open_count = sockets.len() as u64;
        failed = f;
        first_error = why;
        held = keep(sockets);
    } else {
        let exe = std::env::current_exe().context("finding the sluice executable")?;
        let per = args.connections.div_ceil(args.processes);
        let mut first = 0;
        while first < args.connections {
            let count = per.min(args.connections - first);
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.args(child_args(&args, first, count))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            children.push(cmd.spawn().context("starting a client process")?);
            first += count;
        }
        for child in &mut children {
            let stdout = child.stdout.take().context("child stdout")?;
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).await?;
            let mut parts = line.trim().splitn(4, ' ');
            if parts.next() != Some("ready") {
                bail!("a client process failed before opening its connections");
            }
            open_count += parts
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            failed += parts
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if let Some(why) = parts.next().filter(|w| !w.is_empty()) {
                first_error.get_or_insert_with(|| why.to_owned());
            }
        }
    }
    let open_seconds = began.elapsed().as_secs_f64();
    if !target.quiet {
        eprintln!(
            "{} open, {} failed in {open_seconds:.1} s{}; holding for {:?}",
            thousands(open_count),
            thousands(failed),
            first_error
                .map(|e| format!(" (first failure: {e})"))
                .unwrap_or_default(),
            args.hold
        );
    }
    tokio::time::sleep(args.hold).await;
    let after = probe.map(|p| p.read()).transpose()?;
    for h in held {
        h.abort();
    }
    for mut child in children {
        drop(child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
    let per_connection = match (before, after) {
        (Some(b), Some(a)) if open_count > 0 => {
            Some((a.rss_bytes as f64 - b.rss_bytes as f64) / open_count as f64)
        }
        _ => None,
    };
    Ok(Some(IdleReport {
        connections: args.connections,
        open: open_count,
        failed,
        processes: args.processes,
        open_seconds,
        server_rss_before: before.map(|b| b.rss_bytes),
        server_rss_after: after.map(|a| a.rss_bytes),
        server_bytes_per_connection: per_connection,
    }))
}

/// The command line of a child holding `count` connections from `first`.
fn child_args(args: &IdleArgs, first: u64, count: u64) -> Vec<String> {
    let t = &args.target;
    let mut v = vec![
        "bench".into(),
        "idle".into(),
        t.url.clone(),
        "--ca".into(),
        t.ca.display().to_string(),
        "--subject".into(),
        t.subject.clone(),
        "--via".into(),
        t.via.clone(),
        "--sources".into(),
        t.sources.to_string(),
        "--protocol".into(),
        match t.protocol {
            Protocol::Sluice => "sluice",
            Protocol::Centrifuge => "centrifuge",
        }
        .into(),
        "--connections".into(),
        count.to_string(),
        "--connect-parallel".into(),
        args.connect_parallel.to_string(),
        "--child-first".into(),
        first.to_string(),
        "--quiet".into(),
    ];
    if let Some(c) = &t.config {
        v.extend(["--config".into(), c.display().to_string()]);
    }
    if let Some(tenant) = &t.tenant {
        v.extend(["--tenant".into(), tenant.clone()]);
    }
    if !t.scopes.is_empty() {
        v.extend(["--scopes".into(), t.scopes.join(",")]);
    }
    if let Some(token) = &t.token {
        v.extend(["--token".into(), token.clone()]);
    }
    v
}

/// The human summary.
pub fn print_human(r: &IdleReport) {
    println!(
        "{} idle connections open ({} failed) from {} process(es), opened in {:.1} s",
        thousands(r.open),
        thousands(r.failed),
        r.processes,
        r.open_seconds
    );
    if let (Some(b), Some(a), Some(per)) = (
        r.server_rss_before,
        r.server_rss_after,
        r.server_bytes_per_connection,
    ) {
        println!(
            "  server RSS {:.1} MiB -> {:.1} MiB: {:.1} KiB per connection",
            b as f64 / 1048576.0,
            a as f64 / 1048576.0,
            per / 1024.0
        );
    }
}
