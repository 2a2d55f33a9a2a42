//! One run: build the network, start the system, run the workload while
//! the nemesis injects faults, heal, make the final reads, check the
//! history. Everything the run created is removed however it ends.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::checker::{self, Report};
use crate::client::Connector;
use crate::disk::Disk;
use crate::history::HistoryWriter;
use crate::nemesis::{Mode, Nemesis, System, Timing};
use crate::net::Net;
use crate::nodes::{
    Backend, Binaries, MONITOR_PORT, NATS_PORT, Shared, monitor_json, nats_proc, sluice_config,
    sluice_proc,
};
use crate::rng::Rng;
use crate::workload::{Settings, Target, Workload};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Single node or fleet.
    pub mode: Mode,
    /// How long faults are injected.
    pub seconds: u64,
    /// Fault and quiet durations.
    pub timing: Timing,
    /// Only these faults (empty: every fault of the mode).
    pub only: Vec<crate::nemesis::Fault>,
    /// Clients.
    pub clients: u32,
    /// Rooms.
    pub rooms: u32,
    /// Seed of every choice.
    pub seed: u64,
    /// Where the history, the report and the logs go.
    pub out: PathBuf,
    /// Programs.
    pub bins: Binaries,
}

/// What a run found.
#[derive(Debug)]
pub struct RunReport {
    /// The checker's report.
    pub report: Report,
    /// The history file.
    pub history: PathBuf,
    /// Why the history file is incomplete (the verdicts are from the
    /// records kept in memory, which are whole).
    pub history_error: Option<String>,
}

/// The schedule of `tests/run`: faults of a few seconds, one after another.
pub const SHORT: Timing = Timing {
    fault_secs: (3, 5),
    quiet_secs: (1, 3),
};

/// The long run's: longer faults and recoveries.
pub const LONG: Timing = Timing {
    fault_secs: (5, 15),
    quiet_secs: (3, 10),
};

/// Run `cfg` and check its history.
pub async fn run(cfg: &RunConfig) -> anyhow::Result<RunReport> {
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    let names: Vec<&str> = match cfg.mode {
        Mode::Single => vec!["n1"],
        Mode::Fleet => vec!["n1", "n2", "n3", "q1", "q2", "q3"],
    };
    let net = Net::create(&names).await?;
    let slot = net.slot;
    let result = run_on(cfg, net).await;
    crate::slots::clean_slot(slot).await;
    result
}

async fn run_on(cfg: &RunConfig, net: Net) -> anyhow::Result<RunReport> {
    let node_ips: Vec<_> = net
        .members
        .iter()
        .filter(|m| m.name.starts_with('n'))
        .map(|m| m.ip)
        .collect();
    let nats_ips: Vec<_> = net
        .members
        .iter()
        .filter(|m| m.name.starts_with('q'))
        .map(|m| m.ip)
        .collect();
    let shared = Shared::create(&cfg.out.join("shared"), &node_ips)?;
    let disk = match cfg.mode {
        Mode::Single => Some(Disk::create(&crate::slots::slot_dir(net.slot), net.slot, 256).await?),
        Mode::Fleet => None,
    };
    let mut nats = Vec::new();
    if cfg.mode == Mode::Fleet {
        let bin = cfg.bins.nats.as_ref().context("a fleet run needs --nats")?;
        for m in net.members.iter().filter(|m| m.name.starts_with('q')) {
            let peers: Vec<_> = nats_ips.iter().copied().filter(|ip| *ip != m.ip).collect();
            nats.push(nats_proc(
                bin,
                &m.name,
                &m.ns,
                m.ip,
                &peers,
                &cfg.out.join(&m.name),
            )?);
        }
    }
    let urls: Vec<String> = nats_ips
        .iter()
        .map(|ip| format!("nats://{ip}:{NATS_PORT}"))
        .collect();
    let mut nodes = Vec::new();
    for m in net.members.iter().filter(|m| m.name.starts_with('n')) {
        let dir = cfg.out.join(&m.name);
        std::fs::create_dir_all(&dir)?;
        let store = disk.as_ref().map(|d| d.store_dir());
        let backend = match &store {
            Some(s) => Backend::Durable(s),
            None => Backend::Fleet {
                nats: &urls,
                node: &m.name,
            },
        };
        let config = dir.join("sluice.toml");
        std::fs::write(
            &config,
            sluice_config(&shared, &cfg.bins.chat, m.ip, backend),
        )?;
        nodes.push(sluice_proc(
            &cfg.bins,
            &m.name,
            &m.ns,
            m.ip,
            &config,
            &dir.join("sluice.log"),
        ));
    }
    let mut sys = System {
        mode: cfg.mode,
        net,
        nodes,
        nats,
        disk,
    };
    for p in &mut sys.nats {
        p.start().await?;
    }
    if cfg.mode == Mode::Fleet {
        wait_for_jetstream(&sys).await?;
    }
    for i in 0..sys.nodes.len() {
        sys.start_node(i).await?;
    }
    eprintln!(
        "sluice-faults: {:?} up (slot {}): {} node(s), {} NATS server(s); out {}",
        cfg.mode,
        sys.net.slot,
        sys.nodes.len(),
        sys.nats.len(),
        cfg.out.display()
    );

    let history_path = cfg.out.join("history.jsonl");
    let history = HistoryWriter::create(&history_path)?;
    let targets = sys
        .nodes
        .iter()
        .map(|n| Target {
            name: n.name.clone(),
            addr: n.addr,
        })
        .collect();
    let workload = Arc::new(Workload {
        targets,
        connector: Connector::new(&shared.cert_pem)?,
        tokens: Arc::new(shared.minter()?),
        history: history.clone(),
        settings: Settings {
            clients: cfg.clients,
            rooms: (0..cfg.rooms)
                .map(|i| format!("room:{}", (b'a' + i as u8) as char))
                .collect(),
            think_ms: (20, 120),
            ops_per_conn: (10, 60),
            op_timeout: Duration::from_secs(10),
            seed: cfg.seed,
        },
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let w = workload.clone();
    let clients = tokio::spawn(async move { w.run(stopped).await });
    // Let the clients connect and the system warm up before the first fault.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut rng = Rng::new(cfg.seed ^ 0xfa17);
    let mut nemesis = Nemesis {
        sys: &mut sys,
        history: history.clone(),
        timing: cfg.timing,
        rng: rng.fork(1),
        only: cfg.only.clone(),
    };
    let faults = nemesis.run(Duration::from_secs(cfg.seconds)).await;
    // Healed: a little more load on the healthy system, then stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop.send(true);
    let states = clients.await.context("the workload panicked")?;
    faults?;
    // Let indeterminate publishes settle before the final reads.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let finals = workload.finish(states).await;
    let (records, history_error) = history.finish();
    let report = checker::check(&records);
    let mut text = report.to_string();
    if let Some(e) = &history_error {
        text.push_str(&format!("The history file is incomplete ({e}); the verdicts are from the whole history kept in memory.\n"));
    }
    std::fs::write(cfg.out.join("report.txt"), &text)?;
    finals.context("the final reads")?;
    Ok(RunReport {
        report,
        history: history_path,
        history_error,
    })
}

/// Wait until the NATS cluster has a JetStream meta leader.
async fn wait_for_jetstream(sys: &System) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        for p in &sys.nats {
            let IpAddr::V4(ip) = p.addr.ip() else {
                continue;
            };
            let monitor = SocketAddr::from((ip, MONITOR_PORT));
            if meta_leader(monitor).await.is_some() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("the NATS cluster elected no JetStream meta leader within 60 s")
}

async fn meta_leader(monitor: SocketAddr) -> Option<String> {
    let v = monitor_json(monitor, "/jsz").await.ok()?;
    v["meta_cluster"]["leader"].as_str().map(str::to_owned)
}
