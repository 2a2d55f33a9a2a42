//! `sluice-faults`: run a fault schedule against real Sluice processes and
//! print the checker's verdicts (`run`), check a recorded history again
//! (`check`), or remove what a killed run left behind (`clean`). Needs
//! root (network namespaces, iptables, a loop mount). `bench/faults` builds
//! everything and runs it.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sluice_faults::nemesis::Mode;
use sluice_faults::nodes::{Binaries, FAKETIME};
use sluice_faults::run::{LONG, RunConfig, SHORT, run};

#[derive(Parser)]
#[command(
    name = "sluice-faults",
    about = "Fault injection and a history checker for Sluice"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Which {
    /// One node with a durable store on its own disk.
    Single,
    /// Three nodes on a three-server NATS JetStream cluster (R3).
    Fleet,
    /// Both at once (every fault family in one run).
    Both,
}

#[derive(Clone, Copy, ValueEnum)]
enum Schedule {
    /// Faults of 3-5 s with 1-3 s between (tests/run).
    Short,
    /// Faults of 5-15 s with 3-10 s between.
    Long,
}

#[derive(Subcommand)]
enum Command {
    /// Run the workload under faults, then check its history.
    Run {
        /// What to run.
        #[arg(long, value_enum, default_value = "both")]
        mode: Which,
        /// Seconds of faults.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Fault durations.
        #[arg(long, value_enum, default_value = "short")]
        schedule: Schedule,
        /// Clients per run.
        #[arg(long, default_value_t = 8)]
        clients: u32,
        /// Rooms (channels with history, and state keys).
        #[arg(long, default_value_t = 3)]
        rooms: u32,
        /// Seed of the schedule and the clients' choices.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output folder (history, report, logs).
        #[arg(long, default_value = "/var/tmp/sluice-faults/out")]
        out: PathBuf,
        /// The sluice binary (default: beside this one).
        #[arg(long)]
        sluice: Option<PathBuf>,
        /// The chat handler component.
        #[arg(long)]
        chat: PathBuf,
        /// nats-server (fleet runs; default `$SLUICE_NATS_SERVER`).
        #[arg(long)]
        nats: Option<PathBuf>,
    },
    /// Check a history file again.
    Check {
        /// The history (JSON lines).
        history: PathBuf,
    },
    /// Remove namespaces, mounts and processes left by runs that died.
    Clean,
}

#[tokio::main]
async fn main() -> ExitCode {
    match main_inner().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sluice-faults: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn main_inner() -> anyhow::Result<bool> {
    match Cli::parse().command {
        Command::Check { history } => {
            let records = sluice_faults::history::read(&history)?;
            let report = sluice_faults::checker::check(&records);
            print!("{report}");
            Ok(report.all_hold())
        }
        Command::Clean => {
            let slots = sluice_faults::slots::clean_dead().await?;
            println!("cleaned slots {slots:?}");
            Ok(true)
        }
        Command::Run {
            mode,
            seconds,
            schedule,
            clients,
            rooms,
            seed,
            out,
            sluice,
            chat,
            nats,
        } => {
            let sluice = match sluice {
                Some(s) => s,
                None => std::env::current_exe()?
                    .parent()
                    .map(|d| d.join("sluice"))
                    .ok_or_else(|| anyhow::anyhow!("no folder beside this binary"))?,
            };
            let faketime = std::path::Path::new(FAKETIME);
            let bins = Binaries {
                sluice,
                nats: nats.or_else(|| std::env::var_os("SLUICE_NATS_SERVER").map(PathBuf::from)),
                chat: std::fs::canonicalize(&chat)
                    .map_err(|e| anyhow::anyhow!("--chat {}: {e}", chat.display()))?,
                faketime: faketime.exists().then(|| faketime.to_owned()),
            };
            let modes: &[Mode] = match mode {
                Which::Single => &[Mode::Single],
                Which::Fleet => &[Mode::Fleet],
                Which::Both => &[Mode::Single, Mode::Fleet],
            };
            let timing = match schedule {
                Schedule::Short => SHORT,
                Schedule::Long => LONG,
            };
            let configs: Vec<RunConfig> = modes
                .iter()
                .map(|m| RunConfig {
                    mode: *m,
                    seconds,
                    timing,
                    only: Vec::new(),
                    clients,
                    rooms,
                    seed,
                    out: out.join(format!("{m:?}").to_lowercase()),
                    bins: bins.clone(),
                })
                .collect();
            let runs = futures_util::future::join_all(configs.iter().map(run));
            let results = tokio::select! {
                r = runs => r,
                _ = shutdown() => {
                    eprintln!("sluice-faults: interrupted; cleaning up");
                    sluice_faults::slots::clean_own().await;
                    return Ok(false);
                }
            };
            let mut all = true;
            for (cfg, r) in configs.iter().zip(results) {
                println!(
                    "== {:?}: {} s of faults, seed {}",
                    cfg.mode, cfg.seconds, cfg.seed
                );
                match r {
                    Ok(r) => {
                        print!("{}", r.report);
                        println!("history: {}", r.history.display());
                        if let Some(e) = &r.history_error {
                            println!(
                                "the history file is incomplete ({e}); the verdicts are from the whole history kept in memory"
                            );
                        }
                        all &= r.report.all_hold();
                    }
                    Err(e) => {
                        println!("the run failed: {e:#}");
                        all = false;
                    }
                }
            }
            Ok(all)
        }
    }
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
