//! The fault-injection suite's short schedule (runtime/faults, see
//! docs/faults.md): real `sluice serve` processes, each in its own network
//! namespace (and, for the fleet, three nats-servers in a JetStream cluster
//! with three replicas), a workload of clients recording a history, every
//! fault family of the mode injected at least once, then the checker's
//! verdicts, which must all be "holds". Needs root (namespaces, iptables,
//! a loop mount); tests/run installs the tools (scripts/install-fault-tools).

use std::path::{Path, PathBuf};

use sluice_faults::checker::Status;
use sluice_faults::nemesis::Mode;
use sluice_faults::nodes::{Binaries, FAKETIME};
use sluice_faults::run::{RunConfig, SHORT, run};

use crate::cluster::nats_server_bin;

fn binaries() -> Binaries {
    assert!(
        Path::new(FAKETIME).exists(),
        "{FAKETIME} is missing: run scripts/install-fault-tools (tests/run does)"
    );
    Binaries {
        sluice: sluice_tests::sluice_bin(),
        nats: Some(nats_server_bin()),
        chat: PathBuf::from(sluice_tests::handlers::CHAT),
        faketime: Some(PathBuf::from(FAKETIME)),
    }
}

async fn short_run(mode: Mode, seconds: u64) {
    let out = std::env::temp_dir().join(format!(
        "sluice-faults-test-{}-{mode:?}",
        std::process::id()
    ));
    let cfg = RunConfig {
        mode,
        seconds,
        timing: SHORT,
        clients: 6,
        rooms: 2,
        seed: 29,
        out: out.clone(),
        bins: binaries(),
    };
    let run = run(&cfg)
        .await
        .unwrap_or_else(|e| panic!("the {mode:?} run failed: {e:#} (logs in {})", out.display()));
    let report = &run.report;
    eprintln!("{mode:?}:\n{report}");
    for v in &report.verdicts {
        assert_eq!(
            v.status(),
            Status::Holds,
            "{}: {}\n{report}\nhistory: {}",
            v.name,
            v.statement,
            run.history.display()
        );
    }
    for fault in mode.faults() {
        assert!(
            report.counts.faults.contains_key(fault.name()),
            "{} was never injected\n{report}",
            fault.name()
        );
    }
    let acked = report.counts.ops.get("send ok").copied().unwrap_or(0);
    assert!(
        acked >= 50,
        "only {acked} sends were acknowledged\n{report}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_keeps_every_guarantee_under_every_fault_family() {
    short_run(Mode::Single, 45).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_keeps_every_guarantee_under_every_fault_family() {
    short_run(Mode::Fleet, 70).await;
}
