//! The nemesis: faults injected on a schedule while the workload runs,
//! each healed before the next, every start and end recorded in the
//! history.
//!
//! | family | fault | how |
//! |---|---|---|
//! | process | `kill-node` | `kill -9` a Sluice node, restart it after a while |
//! | process | `pause-node` | SIGSTOP a node, SIGCONT it (a stall, like a long GC pause) |
//! | process | `kill-nats` | `kill -9` one of three NATS servers, restart it |
//! | process | `kill-nats-leader` | the same, on the leader of the history or the state stream |
//! | network | `partition-node` | drop all traffic between a node and every NATS server |
//! | network | `partition-nats` | cut one NATS server (the leader, every other time) off from the other two; nodes still reach it |
//! | network | `slow-link` | 200 ms each way and 5% loss on one member's link |
//! | network | `flap-link` | a member's link down and up every second or so |
//! | disk | `disk-full` | fill the single node's store file system to the last block |
//! | disk | `slow-fsync` | throttle the node's writes to 5 per second (every fsync waits) |
//! | clock | `clock-jump` | a node's wall clock jumps an hour ahead, then an hour back, then home (monotonic time is untouched, as with a real jump) |

use std::time::Duration;

use anyhow::Context as _;
use rustix::process::Signal;

use crate::disk::Disk;
use crate::history::{HistoryWriter, Phase, Record};
use crate::net::Net;
use crate::nodes::{MONITOR_PORT, Proc, stream_leader};
use crate::rng::Rng;

/// The stream that holds channel history (prefix `sluice`).
const HISTORY_STREAM: &str = "SLUICE_HISTORY";
/// The stream behind the state bucket.
const STATE_STREAM: &str = "KV_sluice_state";

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` a node, restart it.
    KillNode,
    /// SIGSTOP a node, then SIGCONT.
    PauseNode,
    /// `kill -9` a NATS server, restart it.
    KillNats,
    /// `kill -9` the leader of the history or state stream, restart it.
    KillNatsLeader,
    /// A node cannot reach any NATS server.
    PartitionNode,
    /// A NATS server cannot reach the other two.
    PartitionNats,
    /// Delay and loss on a link.
    SlowLink,
    /// A link going down and up.
    FlapLink,
    /// The store's file system is full.
    DiskFull,
    /// Every write of the node's store is throttled.
    SlowFsync,
    /// The node's wall clock jumps.
    ClockJump,
}

impl Fault {
    /// `family/kind`, as in the history.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillNode => "process/kill-node",
            Fault::PauseNode => "process/pause-node",
            Fault::KillNats => "process/kill-nats",
            Fault::KillNatsLeader => "process/kill-nats-leader",
            Fault::PartitionNode => "network/partition-node",
            Fault::PartitionNats => "network/partition-nats",
            Fault::SlowLink => "network/slow-link",
            Fault::FlapLink => "network/flap-link",
            Fault::DiskFull => "disk/disk-full",
            Fault::SlowFsync => "disk/slow-fsync",
            Fault::ClockJump => "clock/clock-jump",
        }
    }
}

/// What is under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One node, durable store on its own disk.
    Single,
    /// Three nodes on a three-server NATS JetStream cluster (R3).
    Fleet,
}

impl Mode {
    /// The faults that apply.
    pub fn faults(self) -> &'static [Fault] {
        match self {
            Mode::Single => &[
                Fault::KillNode,
                Fault::DiskFull,
                Fault::SlowLink,
                Fault::PauseNode,
                Fault::SlowFsync,
                Fault::FlapLink,
                Fault::ClockJump,
            ],
            Mode::Fleet => &[
                Fault::KillNatsLeader,
                Fault::PartitionNode,
                Fault::KillNode,
                Fault::SlowLink,
                Fault::PartitionNats,
                Fault::PauseNode,
                Fault::KillNats,
                Fault::FlapLink,
                Fault::ClockJump,
            ],
        }
    }
}

/// How long faults last and how long the system gets between them.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A fault lasts this long (seconds, uniform).
    pub fault_secs: (u64, u64),
    /// Quiet time after healing (seconds, uniform).
    pub quiet_secs: (u64, u64),
}

/// Everything under test, which the nemesis acts on.
pub struct System {
    /// Single or fleet.
    pub mode: Mode,
    /// The network.
    pub net: Net,
    /// Sluice nodes.
    pub nodes: Vec<Proc>,
    /// NATS servers.
    pub nats: Vec<Proc>,
    /// The single node's disk.
    pub disk: Option<Disk>,
}

impl System {
    /// Start (or restart) Sluice node `i`, putting it under the disk's
    /// throttle.
    pub async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..3 {
            match self.nodes[i].start().await {
                Ok(()) => {
                    if let (Some(d), Some(pid)) = (&self.disk, self.nodes[i].pid()) {
                        d.attach(pid)?;
                    }
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("node {i} did not start")))
    }

    /// Restart whatever is not running, heal every link, free the disk,
    /// lift the throttle, set every clock home.
    pub async fn heal_all(&mut self) -> anyhow::Result<()> {
        for m in &self.net.members {
            self.net.heal(m).await?;
        }
        if let Some(d) = &self.disk {
            d.unfill()?;
            d.throttle(None)?;
        }
        for n in self.nodes.iter_mut().chain(self.nats.iter_mut()) {
            if n.running() {
                let _ = n.signal(Signal::CONT);
            }
            if let Some(f) = &n.clock_file {
                std::fs::write(f, "+0\n")?;
            }
        }
        for i in 0..self.nats.len() {
            if !self.nats[i].running() {
                self.nats[i].start().await?;
            }
        }
        for i in 0..self.nodes.len() {
            if !self.nodes[i].running() {
                self.start_node(i).await?;
            }
        }
        Ok(())
    }
}

/// Runs faults on a schedule.
pub struct Nemesis<'a> {
    /// The system.
    pub sys: &'a mut System,
    /// Where starts and ends are recorded.
    pub history: HistoryWriter,
    /// Durations.
    pub timing: Timing,
    /// Choices.
    pub rng: Rng,
    /// The faults to cycle through (empty: every fault of the mode).
    pub only: Vec<Fault>,
}

impl Nemesis<'_> {
    /// Inject faults one after another (every fault of the mode in turn,
    /// then again) until `for_` has passed; heal everything at the end.
    pub async fn run(&mut self, for_: Duration) -> anyhow::Result<()> {
        let end = tokio::time::Instant::now() + for_;
        let faults: Vec<Fault> = match self.only.as_slice() {
            [] => self.sys.mode.faults().to_vec(),
            only => only.to_vec(),
        };
        let mut i = 0;
        while tokio::time::Instant::now() < end {
            let fault = faults[i % faults.len()];
            i += 1;
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let hold = Duration::from_secs(
                self.rng
                    .range(self.timing.fault_secs.0, self.timing.fault_secs.1),
            )
            .min(left.max(Duration::from_secs(1)));
            self.inject(fault, hold)
                .await
                .with_context(|| format!("fault {}", fault.name()))?;
            let quiet = self
                .rng
                .range(self.timing.quiet_secs.0, self.timing.quiet_secs.1);
            tokio::time::sleep(Duration::from_secs(quiet)).await;
        }
        self.sys.heal_all().await
    }

    fn record(&self, fault: Fault, target: &str, phase: Phase) {
        self.history.push(Record::Nemesis {
            t: self.history.now(),
            fault: fault.name().to_owned(),
            target: target.to_owned(),
            phase,
        });
        if phase == Phase::Start {
            eprintln!(
                "[{:?} {:>7.1}s] {} on {target}",
                self.sys.mode,
                self.history.now() as f64 / 1e6,
                fault.name()
            );
        }
    }

    /// Inject `fault` for `hold`, then heal it.
    async fn inject(&mut self, fault: Fault, hold: Duration) -> anyhow::Result<()> {
        let node = self.rng.below(self.sys.nodes.len());
        let node_name = self.sys.nodes[node].name.clone();
        match fault {
            Fault::KillNode => {
                self.record(fault, &node_name, Phase::Start);
                self.sys.nodes[node].kill().await;
                tokio::time::sleep(hold).await;
                self.sys.start_node(node).await?;
                self.record(fault, &node_name, Phase::End);
            }
            Fault::PauseNode => {
                self.record(fault, &node_name, Phase::Start);
                self.sys.nodes[node].signal(Signal::STOP)?;
                tokio::time::sleep(hold).await;
                self.sys.nodes[node].signal(Signal::CONT)?;
                self.record(fault, &node_name, Phase::End);
            }
            Fault::KillNats | Fault::KillNatsLeader => {
                let target = match fault {
                    Fault::KillNatsLeader => self.leader().await,
                    _ => None,
                }
                .unwrap_or_else(|| self.rng.below(self.sys.nats.len()));
                let name = self.sys.nats[target].name.clone();
                self.record(fault, &name, Phase::Start);
                self.sys.nats[target].kill().await;
                tokio::time::sleep(hold).await;
                self.sys.nats[target].start().await?;
                self.record(fault, &name, Phase::End);
            }
            Fault::PartitionNode => {
                let member = self.sys.net.member(&node_name)?.clone();
                let servers: Vec<_> = self
                    .sys
                    .nats
                    .iter()
                    .filter_map(|p| match p.addr.ip() {
                        std::net::IpAddr::V4(ip) => Some(ip),
                        std::net::IpAddr::V6(_) => None,
                    })
                    .collect();
                self.record(fault, &format!("{node_name} from NATS"), Phase::Start);
                self.sys.net.partition(&member, &servers).await?;
                tokio::time::sleep(hold).await;
                self.sys.net.heal(&member).await?;
                self.record(fault, &format!("{node_name} from NATS"), Phase::End);
            }
            Fault::PartitionNats => {
                let target = if self.rng.below(2) == 0 {
                    self.leader().await
                } else {
                    None
                }
                .unwrap_or_else(|| self.rng.below(self.sys.nats.len()));
                let name = self.sys.nats[target].name.clone();
                let member = self.sys.net.member(&name)?.clone();
                let others: Vec<_> = self
                    .sys
                    .nats
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != target)
                    .filter_map(|(_, p)| match p.addr.ip() {
                        std::net::IpAddr::V4(ip) => Some(ip),
                        std::net::IpAddr::V6(_) => None,
                    })
                    .collect();
                self.record(
                    fault,
                    &format!("{name} from the other NATS servers"),
                    Phase::Start,
                );
                self.sys.net.partition(&member, &others).await?;
                tokio::time::sleep(hold).await;
                self.sys.net.heal(&member).await?;
                self.record(
                    fault,
                    &format!("{name} from the other NATS servers"),
                    Phase::End,
                );
            }
            Fault::SlowLink | Fault::FlapLink => {
                let all = &self.sys.net.members;
                let member = all[self.rng.below(all.len())].clone();
                self.record(fault, &member.name, Phase::Start);
                if fault == Fault::SlowLink {
                    let line = self.sys.net.slow(&member, 200, 5).await?;
                    tokio::time::sleep(hold).await;
                    self.sys.net.heal(&member).await?;
                    drop(line);
                } else {
                    let until = tokio::time::Instant::now() + hold;
                    while tokio::time::Instant::now() < until {
                        self.sys.net.link(&member, false).await?;
                        tokio::time::sleep(Duration::from_millis(self.rng.range(300, 1500))).await;
                        self.sys.net.link(&member, true).await?;
                        tokio::time::sleep(Duration::from_millis(self.rng.range(300, 1500))).await;
                    }
                    self.sys.net.heal(&member).await?;
                }
                self.record(fault, &member.name, Phase::End);
            }
            Fault::DiskFull => {
                let disk = self.sys.disk.as_ref().context("no disk to fill")?;
                self.record(fault, &node_name, Phase::Start);
                disk.fill().await?;
                tokio::time::sleep(hold).await;
                disk.unfill()?;
                self.record(fault, &node_name, Phase::End);
            }
            Fault::SlowFsync => {
                let disk = self.sys.disk.as_ref().context("no disk to throttle")?;
                self.record(fault, &node_name, Phase::Start);
                disk.throttle(Some(5))?;
                tokio::time::sleep(hold).await;
                disk.throttle(None)?;
                self.record(fault, &node_name, Phase::End);
            }
            Fault::ClockJump => {
                let file = self.sys.nodes[node]
                    .clock_file
                    .clone()
                    .context("clock faults need libfaketime (apt-get install libfaketime)")?;
                self.record(fault, &node_name, Phase::Start);
                let third = hold / 3;
                std::fs::write(&file, "+3600\n")?;
                tokio::time::sleep(third).await;
                std::fs::write(&file, "-3600\n")?;
                tokio::time::sleep(third).await;
                std::fs::write(&file, "+0\n")?;
                tokio::time::sleep(third).await;
                self.record(fault, &node_name, Phase::End);
            }
        }
        Ok(())
    }

    /// The index of the server leading the history stream or (every other
    /// time) the state stream, if any server answers.
    async fn leader(&mut self) -> Option<usize> {
        let stream = if self.rng.below(2) == 0 {
            HISTORY_STREAM
        } else {
            STATE_STREAM
        };
        for p in &self.sys.nats {
            let monitor = std::net::SocketAddr::new(p.addr.ip(), MONITOR_PORT);
            if let Ok(name) = stream_leader(monitor, stream).await {
                return self.sys.nats.iter().position(|n| n.name == name);
            }
        }
        None
    }
}
