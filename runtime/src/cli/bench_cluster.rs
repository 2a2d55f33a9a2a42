//! `sluice bench cluster`: what a fleet costs, side by side in one run, on
//! one machine (nats-server and every node share its cores):
//! - broadcast latency (p50/p99) from a publisher on node 0 to a subscriber
//!   on one node without NATS, on the publisher's node, and on another node;
//! - deliveries per second with 1, 2 and 3 nodes (subscribers spread over
//!   the nodes, one pipelining publisher per node);
//! - handler state read-modify-write commits per second on JetStream KV
//!   against the embedded stores;
//! - state reads and commits on three NATS servers (R3), from a node whose
//!   server leads the state stream and from one whose server follows
//!   (reads go to the leader: the follower's pay a hop).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use sluice::config::Config;
use sluice::dev_files::{DEMO_TENANT, DemoConfig};
use sluice::nats_server::{NatsOptions, NatsRoutes, NatsServer};
use sluice::sandbox::{StateStore, Writes};
use sluice::server::ServerState;
use sluice::token::Minter;
use tokio_tungstenite::tungstenite::Message;

use super::demo_handlers::{demo_components, repo_root};

/// Arguments of `sluice bench cluster`.
#[derive(clap::Args)]
pub struct ClusterBenchArgs {
    /// Subscribers per node in the throughput runs.
    #[arg(long, default_value_t = 30)]
    subscribers: usize,
    /// Seconds per throughput and state run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Latency samples per configuration.
    #[arg(long, default_value_t = 500)]
    samples: usize,
}

struct Fleet {
    dir: PathBuf,
    nats_url: String,
    _nats: NatsServer,
}

fn bench_config(echo: &Path, chat: &Path) -> DemoConfig {
    DemoConfig {
        data_dir: None,
        ..DemoConfig::new("127.0.0.1:0", echo, chat)
    }
}

/// The demo tenant in memory, with the misbehave handler on route `pub`
/// (it publishes what it is sent) and channels `live:{id}`.
fn bench_text(demo: &DemoConfig, misbehave: &Path) -> String {
    format!(
        "{}\n[tenants.demo.handlers.misbehave]\ncomponent = {m:?}\ngrants = [\"state\", \"log\", \"clock\"]\n\n[tenants.demo.routes.pub]\nhandler = \"misbehave\"\n\n[[tenants.demo.channels]]\npattern = \"live:{{id}}\"\n",
        demo.toml(),
        m = misbehave.display().to_string()
    )
}

/// A server started in this process.
pub(crate) struct Node {
    pub(crate) url: String,
    pub(crate) state: Arc<ServerState>,
    /// Its management API (HTTPS, the bench certificate), when asked for.
    pub(crate) management: Option<std::net::SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start_node(text: &str, dir: &Path) -> anyhow::Result<Node> {
    start_node_with(text, dir, false).await
}

/// Start a server on `text` (tenant `demo`, limits lifted) on port 0, with
/// an admin listener and the management API on free loopback ports when
/// `admin`.
pub(crate) async fn start_node_with(text: &str, dir: &Path, admin: bool) -> anyhow::Result<Node> {
    let mut config = Config::parse(text, dir)?;
    config.server.listen = "127.0.0.1:0".parse()?;
    config.server.admin_listen = if admin {
        Some("127.0.0.1:0".parse()?)
    } else {
        None
    };
    // Any free port: never the default one a dev server may hold.
    config.management.listen = "127.0.0.1:0".parse()?;
    config.management.enabled = admin;
    config.server.max_connections_per_ip = 100_000;
    let demo = config.tenants.get_mut("demo").context("demo tenant")?;
    let l = &mut demo.limits;
    l.messages_per_sec = 1_000_000;
    l.message_burst = 1_000_000;
    l.subject_messages_per_sec = 1_000_000;
    l.tenant_messages_per_sec = 1_000_000;
    l.max_connections_per_subject = 100_000;
    let listen = config.server.listen;
    let node = sluice::node::Node::build(config).await?;
    let state = node.state.clone();
    let server = node.bind(listen).await?;
    let url = format!("wss://{}/ws/demo", server.local_addr());
    let management = server.management_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Ok(Node {
        url,
        state,
        management,
        stop: Some(stop),
    })
}

pub(crate) type Socket = sluice::client::ClientSocket;

/// A client of `node`'s tenant `demo`, past its `welcome`.
pub(crate) async fn client(node: &Node, ca: &[u8], token: &str) -> anyhow::Result<Socket> {
    let opts = sluice::client::ClientOptions {
        ca_pem: ca.to_vec(),
        token: Some(token.to_owned()),
        via: sluice::client::TokenVia::Header,
        ..Default::default()
    };
    let mut s = sluice::client::connect(&node.url, &opts)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    next_json(&mut s).await?; // welcome
    Ok(s)
}

/// The next text frame, as JSON.
pub(crate) async fn next_json(s: &mut Socket) -> anyhow::Result<serde_json::Value> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .context("no frame within 10 s")?
            .context("closed")??;
        if let Message::Text(t) = m {
            return Ok(serde_json::from_str(t.as_str())?);
        }
    }
}

async fn subscribe(s: &mut Socket, channel: &str) -> anyhow::Result<()> {
    s.send(Message::text(
        serde_json::json!({"type":"subscribe","id":"s","channel":channel}).to_string(),
    ))
    .await?;
    loop {
        let f = next_json(s).await?;
        if f["type"] == "ack" {
            return Ok(());
        }
        if f["type"] == "error" {
            bail!("subscribe refused: {f}");
        }
    }
}

fn publish_msg(channel: &str, id: u64) -> Message {
    Message::text(
        serde_json::json!({"type":"pub","id":id.to_string(),"data":{"mode":"publish","target":channel}})
            .to_string(),
    )
}

/// The `p` quantile of sorted durations.
pub(crate) fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One publish at a time from node 0; when each subscriber got it.
async fn latency(
    nodes: &[Node],
    ca: &[u8],
    token: &str,
    samples: usize,
    channel: &str,
) -> anyhow::Result<Vec<Vec<Duration>>> {
    let mut publisher = client(&nodes[0], ca, token).await?;
    let mut subs = Vec::new();
    for n in nodes {
        let mut s = client(n, ca, token).await?;
        subscribe(&mut s, channel).await?;
        subs.push(s);
    }
    let mut out = vec![Vec::with_capacity(samples); subs.len()];
    for i in 0..samples as u64 + 20 {
        let sent = Instant::now();
        publisher.send(publish_msg(channel, i)).await?;
        for (k, s) in subs.iter_mut().enumerate() {
            loop {
                let f = next_json(s).await?;
                if f["type"] == "event" {
                    if i >= 20 {
                        out[k].push(sent.elapsed());
                    }
                    break;
                }
            }
        }
        loop {
            let f = next_json(&mut publisher).await?;
            if f["id"].as_str().and_then(|s| s.parse::<u64>().ok()) == Some(i) {
                break;
            }
        }
    }
    for o in &mut out {
        o.sort_unstable();
    }
    Ok(out)
}

/// Deliveries per second: `subscribers` per node on one channel, one
/// publisher per node keeping 32 publishes in flight.
async fn throughput(
    nodes: &[Node],
    ca: &[u8],
    token: &str,
    subscribers: usize,
    seconds: f64,
    channel: &str,
) -> anyhow::Result<(f64, f64)> {
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for n in nodes {
        for _ in 0..subscribers {
            let mut s = client(n, ca, token).await?;
            subscribe(&mut s, channel).await?;
            let d = delivered.clone();
            readers.push(tokio::spawn(async move {
                while let Some(Ok(m)) = s.next().await {
                    if matches!(&m, Message::Text(t) if t.as_str().starts_with("{\"type\":\"event\"")) {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    let published = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut writers = Vec::new();
    for n in nodes {
        let mut s = client(n, ca, token).await?;
        let (p, channel) = (published.clone(), channel.to_owned());
        writers.push(tokio::spawn(async move {
            let (mut sent, mut answered) = (0u64, 0u64);
            while Instant::now() < deadline {
                while sent - answered < 32 {
                    if s.send(publish_msg(&channel, sent)).await.is_err() {
                        return;
                    }
                    sent += 1;
                }
                match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
                    Ok(Some(Ok(Message::Text(t))))
                        if t.as_str().starts_with("{\"type\":\"ack\"") =>
                    {
                        answered += 1;
                        p.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => return,
                }
            }
        }));
    }
    let started = Instant::now();
    let before = delivered.load(Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    // Let in-flight deliveries land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let got = delivered.load(Ordering::Relaxed) - before;
    for r in readers {
        r.abort();
    }
    Ok((
        got as f64 / elapsed,
        published.load(Ordering::Relaxed) as f64 / elapsed,
    ))
}

/// Read-modify-write commits per second: 16 tasks, each on its own keys.
async fn state_writes(store: Arc<dyn StateStore>, seconds: f64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (store, done) = (store.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let key = format!("k{t}-{}", i % 64);
                let (value, revision) = match store.get_versioned("bench", &key).await {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                let n: u64 = value
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let mut writes = Writes::new();
                writes.insert(key.clone(), Some((n + 1).to_string().into_bytes()));
                let expected = [(key, revision)].into_iter().collect();
                if store
                    .commit_checked("bench", expected, writes)
                    .await
                    .is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Reads per second (16 tasks, each on its own keys) and the latency of
/// one read at a time (`samples`).
async fn state_reads(
    store: Arc<dyn StateStore>,
    seconds: f64,
    samples: usize,
) -> (f64, Vec<Duration>) {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (store, done) = (store.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                if store
                    .get_versioned("bench", &format!("k{t}-{}", i % 64))
                    .await
                    .is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let mut one = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        if store
            .get_versioned("bench", &format!("k0-{}", i % 64))
            .await
            .is_ok()
        {
            one.push(t.elapsed());
        }
    }
    one.sort_unstable();
    (rate, one)
}

/// Three nats-servers (`s0`..`s2`) in one JetStream cluster.
fn start_nats_cluster(repo: &Path, dir: &Path) -> anyhow::Result<Vec<NatsServer>> {
    let bin = sluice::nats_server::binary(repo)?;
    let loopback: std::net::IpAddr = std::net::Ipv4Addr::LOCALHOST.into();
    let routes = (0..3)
        .map(|_| sluice::listening_child::free_port(loopback))
        .collect::<anyhow::Result<Vec<u16>>>()?;
    (0..3)
        .map(|i| {
            let peers = (0..3)
                .filter(|j| *j != i)
                .map(|j| format!("nats://{loopback}:{}", routes[j]))
                .collect();
            let options = NatsOptions {
                name: Some(format!("s{i}")),
                routes: Some(NatsRoutes {
                    cluster: "bench".into(),
                    port: routes[i],
                    peers,
                }),
                ..NatsOptions::new(loopback, dir.join(format!("nats-s{i}")))
            };
            NatsServer::start(&bin, options)
        })
        .collect()
}

/// State reads and commits on three NATS servers (R3): from a fleet's
/// state on the server leading the state stream, and on a follower.
async fn state_on_three_servers(
    repo: &Path,
    dir: &Path,
    base: &str,
    opts: &ClusterBenchArgs,
) -> anyhow::Result<()> {
    let servers = tokio::task::block_in_place(|| start_nats_cluster(repo, dir))?;
    let connect = |i: usize| {
        let text = format!(
            "{base}\n[cluster]\nnats_urls = [\"{}\"]\nnode = \"r{i}\"\nprefix = \"r3\"\nreplicas = 3\n",
            servers[i].url()
        );
        async move {
            let config = Config::parse(&text, dir)?;
            let cluster = config.cluster.clone().context("a [cluster] section")?;
            // JetStream needs a meta leader first: try for a while.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match sluice::fleet::Cluster::connect(&config, &cluster).await {
                    Ok(c) => return anyhow::Ok(c),
                    Err(e) if Instant::now() > deadline => return Err(e.into()),
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        }
    };
    let first = connect(0).await?;
    let leader = first
        .state
        .leader()
        .await
        .context("the state stream has no leader")?;
    let at = (0..3)
        .find(|i| format!("s{i}") == leader)
        .context("the state stream's leader is none of the three servers")?;
    first.close().await;
    println!(
        "\nState on three NATS servers (R3, file; reads and commits of 16 tasks, {:.0} s; {} reads one at a time):",
        opts.seconds, opts.samples
    );
    println!(
        "| node's NATS server | commits/s | reads/s | read p50 | read p99 |\n|---|---|---|---|---|"
    );
    for (what, i) in [("the stream leader", at), ("a follower", (at + 1) % 3)] {
        let fleet = connect(i).await?;
        let store: Arc<dyn StateStore> = fleet.state.clone();
        let commits = state_writes(store.clone(), opts.seconds).await;
        let (reads, one) = state_reads(store, opts.seconds, opts.samples).await;
        println!(
            "| {what} (s{i}) | {commits:.0} | {reads:.0} | {:.0} us | {:.0} us |",
            pct(&one, 0.5).as_secs_f64() * 1e6,
            pct(&one, 0.99).as_secs_f64() * 1e6
        );
        fleet.close().await;
    }
    Ok(())
}

fn start_nats(repo: &Path, dir: &Path) -> anyhow::Result<Fleet> {
    let bin = sluice::nats_server::binary(repo)?;
    let loopback = std::net::Ipv4Addr::LOCALHOST.into();
    let nats = NatsServer::start(&bin, NatsOptions::new(loopback, dir.join("nats")))?;
    Ok(Fleet {
        dir: dir.to_owned(),
        nats_url: nats.url(),
        _nats: nats,
    })
}

/// Run every measurement and print the tables.
pub async fn run(args: ClusterBenchArgs) -> anyhow::Result<ExitCode> {
    let (echo, chat) = demo_components()?;
    let opts = ClusterBenchArgs {
        subscribers: args.subscribers.max(1),
        samples: args.samples.max(1),
        ..args
    };
    let dir = std::env::temp_dir().join(format!("sluice-bench-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = measure(&repo_root(), &dir, &echo, &chat, &opts).await;
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|()| ExitCode::SUCCESS)
}

async fn measure(
    repo: &Path,
    dir: &Path,
    echo: &Path,
    chat: &Path,
    opts: &ClusterBenchArgs,
) -> anyhow::Result<()> {
    let misbehave = echo.with_file_name("misbehave.wasm");
    let demo = bench_config(echo, chat);
    sluice::dev_files::prepare(dir, &demo)?;
    let base = bench_text(&demo, &misbehave);
    let ca = std::fs::read(dir.join("cert.pem"))?;
    let fleet = tokio::task::block_in_place(|| start_nats(repo, dir))?;
    let cluster = |i: usize, prefix: &str| {
        format!(
            "{base}\n[cluster]\nnats_urls = [\"{}\"]\nnode = \"n{i}\"\nprefix = \"{prefix}\"\n",
            fleet.nats_url
        )
    };
    let token_of = |node: &Node| -> anyhow::Result<String> {
        Ok(Minter::for_tenant(&node.state.config, DEMO_TENANT)?.mint(
            "bench",
            &["chat:write".to_owned()],
            3600,
            serde_json::Map::new(),
        )?)
    };

    println!(
        "sluice bench cluster: nats-server and every node on this machine's {} cores\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Latency.
    let single = [start_node(&base, &fleet.dir).await?];
    let token = token_of(&single[0])?;
    let lat_single = latency(&single, &ca, &token, opts.samples, "live:lat").await?;
    drop(single);
    let two = [
        start_node(&cluster(0, "lat"), &fleet.dir).await?,
        start_node(&cluster(1, "lat"), &fleet.dir).await?,
    ];
    let lat_fleet = latency(&two, &ca, &token, opts.samples, "live:lat").await?;
    drop(two);
    println!(
        "Broadcast latency, publisher on node 0 ({} samples, one publish at a time):",
        opts.samples
    );
    println!("| subscriber | p50 | p99 |\n|---|---|---|");
    let row = |name: &str, d: &[Duration]| {
        println!(
            "| {name} | {:.0} us | {:.0} us |",
            pct(d, 0.5).as_secs_f64() * 1e6,
            pct(d, 0.99).as_secs_f64() * 1e6
        );
    };
    row("one node, no NATS", &lat_single[0]);
    row("fleet, same node (through NATS)", &lat_fleet[0]);
    row("fleet, other node", &lat_fleet[1]);

    // Throughput.
    println!(
        "\nDeliveries per second ({} subscribers per node on one channel, one publisher per node, 32 in flight, {:.0} s):",
        opts.subscribers, opts.seconds
    );
    println!("| nodes | deliveries/s | publishes/s |\n|---|---|---|");
    let single = [start_node(&base, &fleet.dir).await?];
    let (d, p) = throughput(
        &single,
        &ca,
        &token,
        opts.subscribers,
        opts.seconds,
        "live:fan",
    )
    .await?;
    println!("| 1, no NATS | {d:.0} | {p:.0} |");
    drop(single);
    for n in 1..=3 {
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(start_node(&cluster(i, &format!("fan{n}")), &fleet.dir).await?);
        }
        let (d, p) = throughput(
            &nodes,
            &ca,
            &token,
            opts.subscribers,
            opts.seconds,
            "live:fan",
        )
        .await?;
        println!("| {n} | {d:.0} | {p:.0} |");
    }

    // State.
    println!(
        "\nState commits per second (read, add one, commit with the revision read; 16 tasks, {:.0} s):",
        opts.seconds
    );
    println!("| store | commits/s |\n|---|---|");
    let mem: Arc<dyn StateStore> = sluice::sandbox::MemoryStateStore::new();
    println!("| memory | {:.0} |", state_writes(mem, opts.seconds).await);
    let opened = sluice::store::Store::open(&dir.join("state-bench"))?;
    let durable: Arc<dyn StateStore> =
        sluice::server::backends::DurableState::new(opened.store.clone(), opened.state);
    println!(
        "| durable (redb, fsync per batch) | {:.0} |",
        state_writes(durable, opts.seconds).await
    );
    opened.store.close();
    let node = start_node(&cluster(0, "kv"), &fleet.dir).await?;
    // A fleet node's sandbox keeps state on JetStream KV.
    let kv: Arc<dyn StateStore> = node.state.sandbox.state().clone();
    println!(
        "| JetStream KV (R1, file) | {:.0} |",
        state_writes(kv, opts.seconds).await
    );
    drop(node);
    state_on_three_servers(repo, &fleet.dir, &base, opts).await
}
