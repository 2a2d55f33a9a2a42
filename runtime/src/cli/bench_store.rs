//! `sluice bench store`: what durability costs, side by side in one run.
//!
//! - publish throughput on one channel with history off (broker only), on
//!   in memory, and on with the durable store (every publish awaited until
//!   it is on disk, as a publisher's ack is), with N concurrent publishers;
//! - the time to recover 1,000 missed events: a subscribe with `since` that
//!   queues the ack and the 1,000 events to a connection's queue, and the
//!   queue drained;
//! - handler state commits per second on the durable store against the
//!   in-memory one, N concurrent calls each committing one write.
//!
//! Configurations alternate between rounds; each figure is the median over
//! rounds. The durable store lives in a temporary directory (or `--dir`):
//! put it on the disk production would use, fsync is most of its cost.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::value::RawValue;
use sluice::config::HistoryConfig;
use sluice::protocol::Since;
use sluice::sandbox::{MemoryStateStore, StateStore, Writes};
use sluice::server::backends::history::HistoryStore;
use sluice::server::backends::{
    Broker, ChannelKey, DurableState, LocalBroker, LocalHistory, Member,
};
use sluice::server::outbox::{Outbox, Outgoing};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::report;

/// Arguments of `sluice bench store`.
#[derive(clap::Args, Clone, Debug)]
pub struct StoreBenchArgs {
    /// Where the durable store goes (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Concurrent publishers / committing calls.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds per configuration and round.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds (configurations alternate between rounds).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Missed events to recover.
    #[arg(long, default_value_t = 1000)]
    missed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The figures.
#[derive(Debug, Serialize)]
pub struct StoreBenchReport {
    /// Concurrent publishers / calls.
    pub concurrency: usize,
    /// Publishes per second, history off.
    pub publish_history_off_per_sec: f64,
    /// Publishes per second, history in memory.
    pub publish_history_memory_per_sec: f64,
    /// Publishes per second, durable history (each one on disk before it
    /// returns).
    pub publish_history_durable_per_sec: f64,
    /// Microseconds to queue the ack and `missed` events and drain them.
    pub recover_us: f64,
    /// Missed events recovered.
    pub missed: u64,
    /// State commits per second, in-memory store.
    pub state_commits_memory_per_sec: f64,
    /// State commits per second, durable store.
    pub state_commits_durable_per_sec: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn payload() -> Arc<RawValue> {
    let text = format!(
        r#"{{"kind":"message","from":"alice","text":"{}"}}"#,
        "x".repeat(80)
    );
    Arc::from(RawValue::from_string(text).unwrap_or_else(|_| RawValue::NULL.to_owned()))
}

/// Publishes per second for `secs` with `n` publishers; `history` None:
/// straight to `broker` (the one the histories deliver through).
async fn publish_rate(
    broker: &Arc<LocalBroker>,
    history: Option<Arc<LocalHistory>>,
    n: usize,
    secs: f64,
) -> f64 {
    let tenant: Arc<str> = "bench".into();
    let key = ChannelKey::new(&tenant, "room:bench");
    // One subscriber, drained as fast as it can.
    let (outbox, mut reader) = Outbox::new(usize::MAX / 2);
    broker.subscribe(&key, Member { id: 1, outbox });
    let drain = tokio::spawn(async move { while reader.rx.recv().await.is_some() {} });
    let rule = HistoryConfig {
        size: 100,
        ttl_secs: 600,
    };
    let data = payload();
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (history, broker, key, data) =
            (history.clone(), broker.clone(), key.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < until {
                match &history {
                    Some(h) => {
                        if h.append(&key, rule, &data).await.is_err() {
                            break;
                        }
                    }
                    None => {
                        let frame =
                            Utf8Bytes::from(sluice::protocol::event(Some(&key.channel), &data));
                        let _ = broker.publish(&key, frame).await;
                    }
                }
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    broker.unsubscribe(&key, 1);
    drain.abort();
    rate
}

/// Microseconds to recover `missed` events into a fresh connection's queue
/// and drain it.
async fn recover_us(broker: &LocalBroker, history: &LocalHistory, missed: u64) -> f64 {
    let tenant: Arc<str> = "bench".into();
    let key = ChannelKey::new(&tenant, "room:recover");
    let rule = HistoryConfig {
        size: missed as usize + 1,
        ttl_secs: 600,
    };
    let data = payload();
    let (o, mut r) = Outbox::new(usize::MAX / 2);
    // One node's history always knows the position.
    let Ok(first) = history
        .subscribe(
            &key,
            rule,
            None,
            Member { id: 1, outbox: o },
            Box::new(|_| None),
        )
        .await
        .map(|s| s.position)
    else {
        return f64::NAN;
    };
    broker.unsubscribe(&key, 1);
    for _ in 0..missed {
        let _ = history.append(&key, rule, &data).await;
    }
    while r.rx.try_recv().is_ok() {}
    let since = Since {
        offset: first.offset,
        epoch: first.epoch.to_string(),
    };
    let (o, mut r) = Outbox::new(usize::MAX / 2);
    let started = Instant::now();
    let _ = history
        .subscribe(
            &key,
            rule,
            Some(&since),
            Member { id: 2, outbox: o },
            Box::new(|_| Some("{}".to_owned())),
        )
        .await;
    let mut got = 0u64;
    while let Ok(Outgoing::Text(_)) = r.rx.try_recv() {
        got += 1;
    }
    let took = started.elapsed();
    debug_assert_eq!(got, missed + 1);
    broker.unsubscribe(&key, 2);
    took.as_secs_f64() * 1e6
}

/// State commits per second for `secs` with `n` concurrent calls.
async fn commit_rate(store: Arc<dyn StateStore>, n: usize, secs: f64) -> f64 {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < until {
                let writes = Writes::from([(format!("key-{i}"), Some(vec![b'v'; 100]))]);
                if store.commit("bench", writes).await.is_err() {
                    break;
                }
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Run it and print the figures.
pub async fn run(args: StoreBenchArgs) -> anyhow::Result<ExitCode> {
    let measured = measure(&args).await?;
    report::print(args.json, &measured, print_human)
}

/// The report as a table.
fn print_human(r: &StoreBenchReport) {
    println!(
        "sluice bench store: {} concurrent publishers / calls, medians of rounds",
        r.concurrency
    );
    println!(
        "  publish, history off:      {:>10.0} /s",
        r.publish_history_off_per_sec
    );
    println!(
        "  publish, history memory:   {:>10.0} /s",
        r.publish_history_memory_per_sec
    );
    println!(
        "  publish, history durable:  {:>10.0} /s (each on disk before it returns)",
        r.publish_history_durable_per_sec
    );
    println!(
        "  recover {} missed events: {:>10.0} us (ack + events queued and drained)",
        r.missed, r.recover_us
    );
    println!(
        "  state commits, memory:     {:>10.0} /s",
        r.state_commits_memory_per_sec
    );
    println!(
        "  state commits, durable:    {:>10.0} /s (each on disk before it returns)",
        r.state_commits_durable_per_sec
    );
}

/// Every figure, configurations alternating between rounds.
async fn measure(opts: &StoreBenchArgs) -> anyhow::Result<StoreBenchReport> {
    let temp;
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => {
            temp = std::env::temp_dir().join(format!("sluice-bench-store-{}", std::process::id()));
            temp.clone()
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    let opened = sluice::store::Store::open(&dir)?;
    let store = opened.store.clone();
    let broker = Arc::new(LocalBroker::default());
    let durable_history = Arc::new(LocalHistory::durable(
        broker.clone(),
        opened.store,
        opened.channels,
        opened.unclean,
    ));
    let durable_state: Arc<dyn StateStore> = DurableState::new(store.clone(), opened.state);
    let memory_state: Arc<dyn StateStore> = MemoryStateStore::new();
    let memory_history = Arc::new(LocalHistory::in_memory(broker.clone()));
    let (n, secs) = (opts.concurrency.max(1), opts.seconds);
    let (mut off, mut mem, mut dur, mut rec, mut sm, mut sd) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..opts.rounds.max(1) {
        off.push(publish_rate(&broker, None, n, secs).await);
        mem.push(publish_rate(&broker, Some(memory_history.clone()), n, secs).await);
        dur.push(publish_rate(&broker, Some(durable_history.clone()), n, secs).await);
        rec.push(recover_us(&broker, &durable_history, opts.missed).await);
        sm.push(commit_rate(memory_state.clone(), n, secs).await);
        sd.push(commit_rate(durable_state.clone(), n, secs).await);
    }
    drop(durable_state);
    durable_history.close();
    drop(durable_history);
    store.close();
    drop(store);
    if opts.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(StoreBenchReport {
        concurrency: n,
        publish_history_off_per_sec: median(off),
        publish_history_memory_per_sec: median(mem),
        publish_history_durable_per_sec: median(dur),
        recover_us: median(rec),
        missed: opts.missed,
        state_commits_memory_per_sec: median(sm),
        state_commits_durable_per_sec: median(sd),
    })
}
