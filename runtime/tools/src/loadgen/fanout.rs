//! `sluice bench fanout`: M subscribers of one channel and one publisher.
//! Each broadcast carries its number in its text (`"b<k>"`); a subscriber
//! that receives it reports the time, and a collector works out, per
//! broadcast, when the last subscriber got it. Two figures come out: the
//! latency of every delivery and of each broadcast's last delivery, and the
//! sustained deliveries per second.
//!
//! `--rate 0` (the default) sends the next broadcast only when the previous
//! one reached every subscriber: the clean latency of one broadcast.
//! `--rate R` publishes R broadcasts per second regardless: throughput.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use super::probe::Probe;
use super::{
    FrameKind, LatencySummary, Target, TargetArgs, centrifuge, new_histogram, parse_duration,
    thousands,
};

/// Arguments of `sluice bench fanout`.
#[derive(clap::Args, Clone, Debug)]
pub struct FanoutArgs {
    /// Where to connect and how to authenticate.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Subscribers.
    #[arg(long, short = 'm', default_value_t = 1000)]
    pub subscribers: u64,
    /// The channel.
    #[arg(long, default_value = "room:fanout")]
    pub channel: String,
    /// What subscribers send to join the channel: the reserved `subscribe`
    /// (no handler call), or a route such as `chat.join` (whose handler may
    /// publish to everyone already there: n joins cost n^2/2 deliveries).
    /// With `--protocol centrifuge`, a subscribe command whatever this says.
    #[arg(long, default_value = "subscribe")]
    pub join: String,
    /// The route the publisher sends (its `data` is `{"text":"b<k>"}`);
    /// with `--protocol centrifuge`, a publish command to the channel.
    #[arg(long, default_value = "chat.send")]
    pub publish: String,
    /// Broadcasts to send.
    #[arg(long, default_value_t = 200)]
    pub broadcasts: u64,
    /// Broadcasts per second; 0 waits for each to reach everyone first.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// How long to wait for a broadcast's last delivery.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Subscribers connecting at once during set-up.
    #[arg(long, default_value_t = 64)]
    pub connect_parallel: usize,
}

/// The result of a fan-out run.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    /// Subscribers.
    pub subscribers: u64,
    /// Broadcasts sent.
    pub broadcasts: u64,
    /// Broadcasts every subscriber received.
    pub complete_broadcasts: u64,
    /// Deliveries counted.
    pub deliveries: u64,
    /// Deliveries expected (broadcasts x subscribers).
    pub expected_deliveries: u64,
    /// Seconds from the first publish to the last delivery.
    pub seconds: f64,
    /// Deliveries per second over that time.
    pub deliveries_per_sec: f64,
    /// Publish to each delivery.
    pub delivery_latency: LatencySummary,
    /// Publish to a broadcast's last delivery.
    pub last_delivery_latency: LatencySummary,
    /// Broadcasts per second asked for (0: one at a time).
    pub rate: f64,
    /// The server's CPU time (user + system) per delivery, from the first
    /// publish to the end (`--server-pid`), microseconds.
    pub server_cpu_us_per_delivery: Option<f64>,
}

/// The broadcast number in an event's text (`"b<k>"`).
fn broadcast_number(text: &str) -> Option<usize> {
    let at = text.find("\"text\":\"b")? + 9;
    let digits = &text[at..];
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits[..end].parse().ok()
}

/// Run `sluice bench fanout`.
pub async fn run(args: FanoutArgs) -> anyhow::Result<FanoutReport> {
    if args.subscribers == 0 || args.broadcasts == 0 {
        bail!("--subscribers and --broadcasts must be at least 1");
    }
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        bail!("--rate must be 0 or a positive number of broadcasts per second");
    }
    let target = Arc::new(Target::new(&args.target, true).await?);
    if !target.quiet {
        eprintln!("connecting {} subscribers ...", args.subscribers);
    }
    let subscribers = target
        .open_many(args.subscribers, args.connect_parallel, 1)
        .await?;
    let protocol = target.protocol;
    let join =
        Message::text(protocol.join(centrifuge::CONNECT_ID + 1, &args.join, Some(&args.channel)));
    let broadcasts = args.broadcasts as usize;
    // Per broadcast: when it was published.
    let published: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; broadcasts]));
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let joined = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (_, mut socket) in subscribers {
        let (join, tx, joined) = (join.clone(), tx.clone(), Arc::clone(&joined));
        tasks.spawn(async move {
            socket.send(join).await?;
            let mut is_joined = false;
            while let Some(frame) = socket.next().await {
                let Message::Text(t) = frame? else { continue };
                // Centrifuge may put several publications in one frame.
                for (kind, reply) in protocol.replies(&t) {
                    match kind {
                        FrameKind::Answer if !is_joined => {
                            is_joined = true;
                            joined.add_permits(1);
                        }
                        FrameKind::Refused if !is_joined => {
                            bail!("the join was refused: {reply}")
                        }
                        FrameKind::Other => {
                            if let Some(k) = broadcast_number(reply) {
                                let _ = tx.send((k, Instant::now()));
                            }
                        }
                        _ => {}
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    drop(tx);
    // Every subscriber has joined (or one failed).
    tokio::select! {
        permits = joined.acquire_many(args.subscribers as u32) => {
            permits.context("join semaphore closed")?.forget();
        }
        Some(r) = tasks.join_next() => {
            r.context("subscriber panicked")??;
            bail!("a subscriber's connection ended before it joined");
        }
    }
    if !target.quiet {
        eprintln!(
            "all {} subscribed; publishing {} broadcasts",
            args.subscribers, broadcasts
        );
    }

    let publisher = target.connect(0, target.token(0)?.as_deref()).await?;
    // One past the highest broadcast that reached everyone.
    let (done_tx, mut done_rx) = watch::channel(0usize);
    let m = args.subscribers as u32;
    // The collector: counts deliveries per broadcast.
    let (mut delivery, mut last) = (new_histogram()?, new_histogram()?);
    let collector = {
        let published = Arc::clone(&published);
        tokio::spawn(async move {
            let mut counts = vec![0u32; broadcasts];

            let mut deliveries = 0u64;
            let mut complete = 0u64;
            let mut last_at = None;
            while let Some((k, at)) = rx.recv().await {
                let Some(count) = counts.get_mut(k) else {
                    continue;
                };
                let Some(sent) = published.lock().ok().and_then(|p| p[k]) else {
                    continue;
                };
                *count += 1;
                deliveries += 1;
                last_at = Some(at);
                let us = at.saturating_duration_since(sent).as_micros().max(1) as u64;
                delivery.saturating_record(us);
                if *count == m {
                    last.saturating_record(us);
                    complete += 1;
                    done_tx.send_modify(|d| *d = (*d).max(k + 1));
                }
            }
            (delivery, last, deliveries, complete, last_at)
        })
    };
    let probe = target.server_pid.map(Probe::new).transpose()?;
    let cpu_before = probe.as_ref().map(Probe::read).transpose()?;
    let first_publish = Instant::now();
    let every = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let mut due = first_publish;
    // The publisher's acks are read in the background.
    let (mut sink, mut acks) = publisher.split();
    let ack_reader = tokio::spawn(async move {
        let mut refused = 0u64;
        while let Some(Ok(frame)) = acks.next().await {
            let Message::Text(t) = frame else { continue };
            for (kind, reply) in protocol.replies(&t) {
                if kind == FrameKind::Refused {
                    refused += 1;
                    eprintln!("publish refused: {reply}");
                }
            }
        }
        refused
    });
    for k in 0..broadcasts {
        if let Some(every) = every {
            tokio::time::sleep_until(due.into()).await;
            due += every;
        }
        let frame = protocol.request(
            centrifuge::CONNECT_ID + 1 + (k as u32 % 1_000_000),
            &args.publish,
            Some(&args.channel),
            &json!({"text": format!("b{k}")}),
        );
        if let Ok(mut p) = published.lock() {
            p[k] = Some(Instant::now());
        }
        sink.send(Message::text(frame)).await?;
        if every.is_none()
            && tokio::time::timeout(args.timeout, done_rx.wait_for(|d| *d > k))
                .await
                .is_err()
        {
            eprintln!(
                "broadcast {k} did not reach every subscriber within {:?}",
                args.timeout
            );
        }
    }
    // Wait for the stragglers, then stop everyone.
    tokio::time::sleep(if every.is_some() {
        args.timeout.min(Duration::from_secs(2))
    } else {
        Duration::from_millis(100)
    })
    .await;
    let _ = sink.close().await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    ack_reader.abort();
    let (delivery, last, deliveries, complete, last_at) =
        collector.await.context("collector panicked")?;
    let cpu_after = probe.as_ref().map(Probe::read).transpose()?;
    let server_cpu_us_per_delivery = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) if deliveries > 0 => {
            Some(a.cpu.saturating_sub(b.cpu).as_secs_f64() * 1e6 / deliveries as f64)
        }
        _ => None,
    };
    let seconds = last_at
        .map(|t| t.saturating_duration_since(first_publish).as_secs_f64())
        .unwrap_or(0.0);
    Ok(FanoutReport {
        subscribers: args.subscribers,
        broadcasts: args.broadcasts,
        complete_broadcasts: complete,
        deliveries,
        expected_deliveries: args.broadcasts * args.subscribers,
        seconds,
        deliveries_per_sec: if seconds > 0.0 {
            deliveries as f64 / seconds
        } else {
            0.0
        },
        delivery_latency: LatencySummary::of(&delivery),
        last_delivery_latency: LatencySummary::of(&last),
        rate: args.rate,
        server_cpu_us_per_delivery,
    })
}

/// The human summary.
pub fn print_human(r: &FanoutReport) {
    println!(
        "{} subscribers, {} broadcasts ({}), {:.2} s",
        thousands(r.subscribers),
        r.broadcasts,
        if r.rate > 0.0 {
            format!("{:.0}/s", r.rate)
        } else {
            "one at a time".into()
        },
        r.seconds
    );
    println!(
        "  {:.0} deliveries/s   ({} of {} delivered, {} broadcasts complete)",
        r.deliveries_per_sec,
        thousands(r.deliveries),
        thousands(r.expected_deliveries),
        r.complete_broadcasts
    );
    println!("  each delivery:      {}", r.delivery_latency.line());
    println!("  last of broadcast:  {}", r.last_delivery_latency.line());
    if let Some(cpu) = r.server_cpu_us_per_delivery {
        println!("  server CPU:         {cpu:.2} us per delivery");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broadcast_number_is_found_in_an_event() {
        let event = r#"{"type":"event","channel":"room:x","data":{"kind":"message","seq":9,"from":"bench-0","text":"b42","at":1}}"#;
        assert_eq!(broadcast_number(event), Some(42));
        assert_eq!(
            broadcast_number(r#"{"type":"event","data":{"kind":"joined"}}"#),
            None
        );
    }
}
