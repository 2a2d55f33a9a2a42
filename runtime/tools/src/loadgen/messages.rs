//! `sluice bench load`: request/answer traffic over N connections, closed
//! loop (a fixed number of messages in flight per connection) or open loop
//! (a fixed total rate, latency measured from each message's scheduled send
//! time so a stalled server cannot hide its queueing: no coordinated
//! omission; the load generator's own timer lateness, below
//! [`TIMER_SLACK`], is not counted).
//!
//! Answers are matched to requests in order per connection (Sluice answers
//! a connection's messages in the order they arrive; so do the peers).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use serde::Serialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::probe::Probe;
use super::{
    Counters, FrameKind, Latencies, LatencySummary, Protocol, Target, TargetArgs, centrifuge,
    parse_duration, spawn_progress, text_of, thousands,
};
use crate::client::ClientSocket;

/// Arguments of `sluice bench load`.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// Where to connect and how to authenticate.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connections.
    #[arg(long, short = 'c', default_value_t = 50)]
    pub connections: u64,
    /// Measured time, after the warm-up (e.g. 8s, 500ms, 1m).
    #[arg(long, short = 'd', default_value = "8s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up time, not measured.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Closed loop: messages in flight per connection.
    #[arg(long, default_value_t = 1, conflicts_with = "rate")]
    pub depth: usize,
    /// Open loop: total messages per second over all connections.
    #[arg(long)]
    pub rate: Option<f64>,
    /// A route to send, `ROUTE[:WEIGHT][@CHANNEL]`, repeatable for a mix
    /// (e.g. `--route echo:9 --route 'chat.send:1@room:{n}'`); `{n}` in a
    /// channel is the connection's number.
    #[arg(long = "route", default_value = "echo")]
    pub routes: Vec<String>,
    /// The `data` of every message (JSON).
    #[arg(long, default_value = r#"{"text":"hello from sluice bench"}"#)]
    pub data: String,
    /// Send this route once per connection before measuring, with the
    /// channel of the first routed message that has one (e.g. chat.join).
    #[arg(long)]
    pub join: Option<String>,
    /// Connections opened at once during set-up.
    #[arg(long, default_value_t = 64)]
    pub connect_parallel: usize,
    /// Give every message a fresh idempotency key (`"key":"N.SEQ"`,
    /// unique per connection and message; Sluice's protocol only): what a
    /// key costs the server (docs/exactly-once.md). Each key is remembered
    /// for the tenant's window, within its quota of keys: a run longer or
    /// faster than the quota allows gets `too_many_keys` refusals, which
    /// the report counts.
    #[arg(long)]
    pub keys: bool,
}

/// One route of the mix.
#[derive(Clone, Debug, PartialEq)]
struct RouteSpec {
    route: String,
    weight: u32,
    channel: Option<String>,
}

fn parse_route(s: &str) -> anyhow::Result<RouteSpec> {
    let (head, channel) = match s.split_once('@') {
        Some((h, c)) => (h, Some(c.to_owned())),
        None => (s, None),
    };
    let (route, weight) = match head.rsplit_once(':') {
        Some((r, w)) if w.chars().all(|c| c.is_ascii_digit()) && !w.is_empty() => {
            (r, w.parse::<u32>().context("weight")?)
        }
        _ => (head, 1),
    };
    if route.is_empty() || weight == 0 {
        bail!("--route {s:?}: expected ROUTE[:WEIGHT][@CHANNEL] with a weight of at least 1");
    }
    Ok(RouteSpec {
        route: route.to_owned(),
        weight,
        channel,
    })
}

/// The frames one connection sends, repeated by weight, cycled in order.
/// Centrifuge's commands are numbered from 2 (1 was the connect command).
fn frames_for(protocol: Protocol, routes: &[RouteSpec], data: &Value, n: u64) -> Vec<Message> {
    let mut out = Vec::new();
    for r in routes {
        let channel = r.channel.as_ref().map(|c| c.replace("{n}", &n.to_string()));
        for _ in 0..r.weight {
            let id = centrifuge::CONNECT_ID + 1 + out.len() as u32;
            out.push(Message::text(protocol.request(
                id,
                &r.route,
                channel.as_deref(),
                data,
            )));
        }
    }
    out
}

/// What one connection sends: its frames in order, from where connection
/// `n` starts, each with a fresh idempotency key when keyed.
struct Frames {
    frames: Vec<Message>,
    next: usize,
    /// The connection's number and the last key's sequence number.
    keyed: Option<(u64, u64)>,
}

impl Frames {
    fn new(frames: Vec<Message>, n: u64, keys: bool) -> Self {
        Self {
            next: (n as usize) % frames.len(),
            frames,
            keyed: keys.then_some((n, 0)),
        }
    }

    fn next(&mut self) -> Message {
        let frame = &self.frames[self.next];
        self.next = (self.next + 1) % self.frames.len();
        let Some((n, seq)) = &mut self.keyed else {
            return frame.clone();
        };
        *seq += 1;
        // A Sluice envelope is a JSON object with members: the key goes
        // first.
        let text = frame.to_text().unwrap_or_default();
        Message::text(format!(
            "{{\"key\":\"{n}.{seq}\",{}",
            text.get(1..).unwrap_or_default()
        ))
    }
}

/// The result of a load run.
#[derive(Debug, Serialize)]
pub struct LoadReport {
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Connections that ran.
    pub connections: u64,
    /// Messages in flight per connection (closed loop).
    pub depth: Option<usize>,
    /// Target rate (open loop).
    pub target_rate: Option<f64>,
    /// Measured seconds.
    pub seconds: f64,
    /// Answers in the measured window.
    pub answered: u64,
    /// Refusals (`error` frames) in the measured window.
    pub refused: u64,
    /// Answers per second.
    pub messages_per_sec: f64,
    /// Round-trip latency of answers.
    pub latency: LatencySummary,
    /// Connections that failed mid-run.
    pub failed_connections: u64,
    /// Open loop: sends skipped because a connection already had 1024
    /// unanswered messages (the server could not keep up).
    pub skipped_sends: u64,
    /// Server CPU (user + system) per answered message, with --server-pid.
    pub server_cpu_us_per_message: Option<f64>,
    /// Server CPU time over the window, seconds.
    pub server_cpu_seconds: Option<f64>,
    /// Server RSS at the end, bytes.
    pub server_rss_bytes: Option<u64>,
}

const MAX_OPEN_LOOP_IN_FLIGHT: usize = 1024;

/// How late the load generator's own timer may wake a send and have the
/// latency still counted from the moment it was sent: tokio's timer rounds a
/// sleep up to the next millisecond, and counting that from the schedule
/// gave a 50 us round trip a 1.8 ms median. A send later than this (the
/// generator stalled, or fell behind a slow server's answers) is counted
/// from its scheduled time.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Run `sluice bench load`.
pub async fn run(args: LoadArgs) -> anyhow::Result<LoadReport> {
    let routes = args
        .routes
        .iter()
        .map(|r| parse_route(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let data: Value = serde_json::from_str(&args.data).context("--data is not JSON")?;
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.depth == 0 {
        bail!("--depth must be at least 1");
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--rate must be a positive number of messages per second");
    }
    if args.keys && args.target.protocol != Protocol::Sluice {
        bail!("--keys needs --protocol sluice (Centrifuge's protocol has no idempotency keys)");
    }
    let target = Arc::new(Target::new(&args.target, true).await?);
    let probe = target.server_pid.map(Probe::new).transpose()?;

    if !target.quiet {
        eprintln!(
            "opening {} connections to {} ...",
            args.connections, args.target.url
        );
    }
    let sockets = target
        .open_many(args.connections, args.connect_parallel, 0)
        .await?;
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(Latencies::new()?);
    let skipped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let join_channel = routes.iter().find_map(|r| r.channel.clone());
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now() + Duration::from_millis(50);
    let protocol = target.protocol;
    for (n, socket) in sockets {
        let frames = Frames::new(frames_for(protocol, &routes, &data, n), n, args.keys);
        let join = args.join.as_ref().map(|route| {
            let channel = join_channel
                .as_ref()
                .map(|c| c.replace("{n}", &n.to_string()));
            Message::text(protocol.join(u32::MAX, route, channel.as_deref()))
        });
        let counters = Arc::clone(&counters);
        let latencies = Arc::clone(&latencies);
        let skipped = Arc::clone(&skipped);
        let depth = args.depth;
        let connections = args.connections;
        let interval = args
            .rate
            .map(|r| Duration::from_secs_f64(args.connections as f64 / r));
        tasks.spawn(async move {
            let result = async {
                let mut socket = socket;
                if let Some(join) = join {
                    socket.send(join).await?;
                    wait_answer(protocol, &mut socket).await?;
                }
                match interval {
                    None => {
                        closed_loop(protocol, socket, frames, depth, n, &counters, &latencies).await
                    }
                    Some(every) => {
                        let offset = first_send_offset(n, connections, every);
                        open_loop(
                            protocol,
                            socket,
                            frames,
                            start + offset,
                            every,
                            n,
                            &counters,
                            &latencies,
                            &skipped,
                        )
                        .await
                    }
                }
            }
            .await;
            if result.is_err() && !counters.stopped() {
                counters.failed_connections.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    let progress = spawn_progress(Arc::clone(&counters), "msg", target.quiet);
    tokio::time::sleep_until((start + args.warmup).into()).await;
    let before = probe.map(|p| p.read()).transpose()?;
    counters.measuring.store(true, Ordering::Relaxed);
    let window_start = Instant::now();
    tokio::time::sleep(args.duration).await;
    counters.measuring.store(false, Ordering::Relaxed);
    counters.stop.store(true, Ordering::Relaxed);
    let seconds = window_start.elapsed().as_secs_f64();
    let after = probe.map(|p| p.read()).transpose()?;
    let _ = progress.await;
    // Let connections see their last answers, then drop the rest.
    let drain = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drain.is_err() {
        tasks.abort_all();
    }

    let answered = counters.answered.load(Ordering::Relaxed);
    let cpu = match (before, after) {
        (Some(b), Some(a)) => Some(a.cpu.saturating_sub(b.cpu)),
        _ => None,
    };
    Ok(LoadReport {
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        connections: args.connections,
        depth: args.rate.is_none().then_some(args.depth),
        target_rate: args.rate,
        seconds,
        answered,
        refused: counters.refused.load(Ordering::Relaxed),
        messages_per_sec: answered as f64 / seconds,
        latency: LatencySummary::of(&latencies.merged()),
        failed_connections: counters.failed_connections.load(Ordering::Relaxed),
        skipped_sends: skipped.load(Ordering::Relaxed),
        server_cpu_us_per_message: cpu
            .filter(|_| answered > 0)
            .map(|c| c.as_secs_f64() * 1e6 / answered as f64),
        server_cpu_seconds: cpu.map(|c| c.as_secs_f64()),
        server_rss_bytes: after.map(|a| a.rss_bytes),
    })
}

/// Read until one answer (or refusal) arrives; fail on a refusal.
async fn wait_answer(protocol: Protocol, socket: &mut ClientSocket) -> anyhow::Result<()> {
    while let Some(frame) = socket.next().await {
        if let Message::Text(t) = frame? {
            for (kind, reply) in protocol.replies(&t) {
                match kind {
                    FrameKind::Answer => return Ok(()),
                    FrameKind::Refused => bail!("the join was refused: {reply}"),
                    FrameKind::Other => {}
                }
            }
        }
    }
    bail!("the server closed the connection")
}

/// Count one answer (or refusal) sent at `sent`.
fn count(kind: FrameKind, sent: Instant, n: u64, counters: &Counters, latencies: &Latencies) {
    counters.total.fetch_add(1, Ordering::Relaxed);
    if counters.measuring() {
        match kind {
            FrameKind::Refused => {
                counters.refused.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                counters.answered.fetch_add(1, Ordering::Relaxed);
                latencies.record(n, sent.elapsed());
            }
        }
    }
}

/// `depth` messages in flight: each answer sends the next message. Frames
/// already received are all handled before one flush, so a burst of answers
/// costs one write.
async fn closed_loop(
    protocol: Protocol,
    mut socket: ClientSocket,
    mut frames: Frames,
    depth: usize,
    n: u64,
    counters: &Counters,
    latencies: &Latencies,
) -> anyhow::Result<()> {
    let mut sent = VecDeque::with_capacity(depth);
    for _ in 0..depth {
        socket.feed(frames.next()).await?;
        sent.push_back(Instant::now());
    }
    socket.flush().await?;
    let mut pending = None;
    loop {
        let frame = match pending.take() {
            Some(f) => f,
            None => match socket.next().await {
                Some(f) => f?,
                None => bail!("closed by the server"),
            },
        };
        // One frame may hold several answers (Centrifuge's writer).
        let text = text_of(&frame)?.unwrap_or_default();
        for (kind, _) in protocol.replies(text) {
            if kind == FrameKind::Other {
                continue;
            }
            let Some(at) = sent.pop_front() else {
                bail!("an answer nobody asked for")
            };
            count(kind, at, n, counters, latencies);
            if !counters.stopped() {
                socket.feed(frames.next()).await?;
                sent.push_back(Instant::now());
            }
        }
        if counters.stopped() && sent.is_empty() {
            socket.flush().await?;
            let _ = socket.close(None).await;
            return Ok(());
        }
        // Another frame already buffered? Handle it before flushing.
        match socket.next().now_or_never() {
            Some(Some(f)) => pending = Some(f?),
            Some(None) => bail!("closed by the server"),
            None => socket.flush().await?,
        }
    }
}

/// Send on a fixed schedule whatever the answers do; latency counts from
/// the scheduled time.
/// When connection `n` of `connections` first sends, after the start: the
/// connections spread evenly over one interval. (Spreading them over
/// 1/1000ths of it sent 50 connections' messages in bursts of 50 within 5%
/// of each interval: the queueing measured was the generator's own.)
fn first_send_offset(n: u64, connections: u64, every: Duration) -> Duration {
    every.mul_f64(n as f64 / connections.max(1) as f64)
}

/// Where a message's latency is counted from: its scheduled time, unless
/// the generator's own timer woke at most [`TIMER_SLACK`] late for it.
fn latency_origin(due: Instant, now: Instant) -> Instant {
    if now.saturating_duration_since(due) <= TIMER_SLACK {
        now
    } else {
        due
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "the open loop's parameters are its configuration, passed once"
)]
async fn open_loop(
    protocol: Protocol,
    socket: ClientSocket,
    mut frames: Frames,
    first: Instant,
    every: Duration,
    n: u64,
    counters: &Counters,
    latencies: &Latencies,
    skipped: &std::sync::atomic::AtomicU64,
) -> anyhow::Result<()> {
    let (mut sink, mut stream) = socket.split();
    let mut sent: VecDeque<Instant> = VecDeque::new();
    let mut due = first;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(due.into()), if !counters.stopped() => {
                // Catch up on every send that fell due (bursts after a stall).
                let now = Instant::now();
                while due <= now {
                    if sent.len() >= MAX_OPEN_LOOP_IN_FLIGHT {
                        if counters.measuring() {
                            skipped.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        sink.feed(frames.next()).await?;
                        sent.push_back(latency_origin(due, now));
                    }
                    due += every;
                }
                sink.flush().await?;
            }
            frame = stream.next() => {
                let frame = match frame {
                    Some(f) => f?,
                    None => bail!("closed by the server"),
                };
                let text = text_of(&frame)?.unwrap_or_default();
                for (kind, _) in protocol.replies(text) {
                    if kind == FrameKind::Other {
                        continue;
                    }
                    let Some(at) = sent.pop_front() else {
                        bail!("an answer nobody asked for")
                    };
                    count(kind, at, n, counters, latencies);
                }
                if counters.stopped() && sent.is_empty() {
                    let _ = sink.close().await;
                    return Ok(());
                }
            }
        }
    }
}

/// The human summary.
pub fn print_human(r: &LoadReport) {
    let shape = match (r.depth, r.target_rate) {
        (Some(d), _) => format!("closed loop, {d} in flight per connection"),
        (None, Some(rate)) => format!("open loop at {rate:.0} msg/s"),
        (None, None) => String::new(),
    };
    println!(
        "{} connections, {shape}, {:.1} s measured",
        r.connections, r.seconds
    );
    println!(
        "  {:.0} msg/s   ({} answered, {} refused, {} failed connections{})",
        r.messages_per_sec,
        thousands(r.answered),
        thousands(r.refused),
        r.failed_connections,
        if r.skipped_sends > 0 {
            format!(
                ", {} sends skipped: server behind",
                thousands(r.skipped_sends)
            )
        } else {
            String::new()
        }
    );
    println!("  round trip: {}", r.latency.line());
    if let Some(cpu) = r.server_cpu_us_per_message {
        println!(
            "  server: {cpu:.1} us CPU per message, RSS {:.1} MiB",
            r.server_rss_bytes.unwrap_or(0) as f64 / 1048576.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_connections_start_evenly_over_one_interval() {
        let every = Duration::from_millis(50);
        let offsets: Vec<Duration> = (0..50).map(|n| first_send_offset(n, 50, every)).collect();
        assert_eq!(offsets[0], Duration::ZERO);
        for pair in offsets.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap.abs_diff(Duration::from_millis(1)) < Duration::from_micros(1),
                "{gap:?}"
            );
        }
        assert!(offsets[49] < every);
    }

    #[test]
    fn a_late_timer_is_not_latency_but_a_stall_is() {
        let due = Instant::now();
        let woke = due + Duration::from_millis(1);
        assert_eq!(latency_origin(due, woke), woke);
        let stalled = due + Duration::from_millis(30);
        assert_eq!(latency_origin(due, stalled), due);
    }

    #[test]
    fn routes_parse_with_weight_and_channel() {
        assert_eq!(
            parse_route("echo").ok(),
            Some(RouteSpec {
                route: "echo".into(),
                weight: 1,
                channel: None
            })
        );
        assert_eq!(
            parse_route("chat.send:3@room:{n}").ok(),
            Some(RouteSpec {
                route: "chat.send".into(),
                weight: 3,
                channel: Some("room:{n}".into())
            })
        );
        // A colon in a route name that is not followed by a number is part
        // of the name.
        assert_eq!(parse_route("a:b").ok().map(|r| r.route), Some("a:b".into()));
        assert!(parse_route(":2").is_err());
        assert!(parse_route("echo:0").is_err());
    }

    #[test]
    fn with_keys_every_message_gets_a_fresh_key_and_is_otherwise_the_same() {
        let routes = [
            parse_route("echo").unwrap(),
            parse_route("chat.send@room:{n}").unwrap(),
        ];
        let data = serde_json::json!({"text": "hi"});
        let plain: Vec<Value> = frames_for(Protocol::Sluice, &routes, &data, 3)
            .iter()
            .map(|m| serde_json::from_str(m.to_text().unwrap()).unwrap())
            .collect();
        let mut frames = Frames::new(frames_for(Protocol::Sluice, &routes, &data, 3), 3, true);
        let mut keys = std::collections::HashSet::new();
        for i in 0..6 {
            let mut sent: Value = serde_json::from_str(frames.next().to_text().unwrap()).unwrap();
            let key = sent.as_object_mut().unwrap().remove("key").unwrap();
            assert_eq!(key, format!("3.{}", i + 1));
            assert!(keys.insert(key));
            // Connection 3 starts at frame 3 % 2 = 1 of the cycle.
            assert_eq!(sent, plain[(i + 1) % 2]);
        }
        let mut unkeyed = Frames::new(frames_for(Protocol::Sluice, &routes, &data, 3), 3, false);
        let sent: Value = serde_json::from_str(unkeyed.next().to_text().unwrap()).unwrap();
        assert_eq!(sent, plain[1]);
    }

    #[test]
    fn frames_follow_the_weights_and_fill_in_the_channel() {
        let routes = vec![
            RouteSpec {
                route: "echo".into(),
                weight: 2,
                channel: None,
            },
            RouteSpec {
                route: "chat.send".into(),
                weight: 1,
                channel: Some("room:{n}".into()),
            },
        ];
        let frames = frames_for(
            Protocol::Sluice,
            &routes,
            &serde_json::json!({"text": "x"}),
            7,
        );
        let texts: Vec<String> = frames
            .iter()
            .map(|m| m.to_text().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            texts,
            vec![
                r#"{"type":"echo","data":{"text":"x"}}"#,
                r#"{"type":"echo","data":{"text":"x"}}"#,
                r#"{"type":"chat.send","channel":"room:7","data":{"text":"x"}}"#,
            ]
        );
    }
}
