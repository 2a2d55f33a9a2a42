//! The fault-injection suite's short schedule (runtime/faults, see
//! docs/faults.md): real `sluice serve` processes, each in its own network
//! namespace (and, for the fleet, three nats-servers in a JetStream cluster
//! with three replicas), a workload of clients recording a history, every
//! fault family of the mode injected at least once, then the checker's
//! verdicts, which must all be "holds". Needs root (namespaces, iptables,
//! a loop mount); tests/run installs the tools (scripts/install-fault-tools).

use std::path::{Path, PathBuf};

use sluice_faults::checker::{Report, Status};
use sluice_faults::nemesis::{Fault, Mode, Timing};
use sluice_faults::nodes::{Binaries, FAKETIME};
use sluice_faults::run::{RunConfig, SHORT, run};

use sluice_tests::cluster::nats_server_bin;

/// Violations the suite found whose fix lies outside what this branch may
/// change (docs/faults.md, "Found"): reported, not failed, until fixed;
/// every other verdict must hold. Remove an entry with its fix (and the
/// `ignore` of the test that demonstrates it).
///
/// Found 4 (reads answered by a lagging replica) is fixed, and
/// `cluster::a_state_read_through_a_partitioned_nats_server_is_current_or_refused`
/// guards it; what is left of stale reads is NATS's (Found 6), rare in a
/// short schedule (a partitioned state stream leader past the 4 s election
/// timeout), but possible.
const KNOWN: &[(Mode, &str, &str)] = &[(
    Mode::Fleet,
    "state-reads-not-stale",
    "Found 6: a NATS stream leader cut off from the others answers reads until it steps down",
)];

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
    let report = run_checked(mode, seconds, Vec::new(), SHORT).await;
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
}

/// Run `mode` for `seconds` with `only` these faults (every fault of the
/// mode when empty): every verdict must hold, but for the known violations
/// (which only a run of every fault tolerates).
async fn run_checked(mode: Mode, seconds: u64, only: Vec<Fault>, timing: Timing) -> Report {
    let out = std::env::temp_dir().join(format!(
        "sluice-faults-test-{}-{mode:?}-{}",
        std::process::id(),
        only.len()
    ));
    let cfg = RunConfig {
        mode,
        seconds,
        timing,
        only: only.clone(),
        clients: 6,
        rooms: 2,
        seed: 29,
        out: out.clone(),
        bins: binaries(),
    };
    let run = run(&cfg)
        .await
        .unwrap_or_else(|e| panic!("the {mode:?} run failed: {e:#} (logs in {})", out.display()));
    let report = run.report;
    eprintln!("{mode:?}:\n{report}");
    assert_eq!(run.history_error, None, "the history file");
    for v in &report.verdicts {
        if let Some((_, _, why)) = KNOWN.iter().find(|(m, n, _)| *m == mode && *n == v.name)
            && v.status() == Status::Violated
            && only.is_empty()
        {
            eprintln!("{mode:?}: {} violated, a known violation: {why}", v.name);
            continue;
        }
        assert_eq!(
            v.status(),
            Status::Holds,
            "{}: {}\n{report}\nhistory: {}",
            v.name,
            v.statement,
            run.history.display()
        );
    }
    let _ = std::fs::remove_dir_all(&out);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_keeps_every_guarantee_under_every_fault_family() {
    short_run(Mode::Single, 45).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_keeps_every_guarantee_under_every_fault_family() {
    short_run(Mode::Fleet, 70).await;
}

/// A node cut off from every NATS server for 12-15 s, again and again,
/// while clients on all three nodes chat: its open connections must not
/// silently miss the events published meanwhile (the long run of
/// docs/faults.md found ~70 per room missed on every connection of the
/// node, Found 3; the relay now reads them back from the stream). About
/// 85 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_loses_no_event_for_its_subscribers() {
    let timing = Timing {
        fault_secs: (12, 15),
        quiet_secs: (3, 5),
    };
    run_checked(Mode::Fleet, 60, vec![Fault::PartitionNode], timing).await;
}

/// Read-modify-writes of one state key from many connections at once (the
/// chat room's sequence number, as the suite's `state-no-lost-update`
/// checks): every acknowledged `chat.send` must get its own number, and the
/// room must end at as many numbers as there were acknowledgements. A
/// conflict (`conflict`: nothing written) is allowed and not counted.
async fn concurrent_read_modify_writes_lose_nothing(kind: sluice::config::StoreKind) {
    use serde_json::json;
    let server = sluice_tests::server::TestServer::start_with(move |c| {
        c.store.kind = kind;
        let l = &mut c.tenants.get_mut("alpha").expect("alpha").limits;
        l.messages_per_sec = 100_000;
        l.message_burst = 100_000;
        l.subject_messages_per_sec = 100_000;
    })
    .await;
    let mut tasks = Vec::new();
    for c in 0..12 {
        let token = server.token("alpha", &format!("racer{c}"), "chat:write");
        let mut client = server.connect("alpha", &token).await.expect("connect");
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for n in 0..40 {
                let id = format!("r{c}-{n}");
                let answer = client
                    .request(json!({"type": "chat.send", "id": id, "channel": "room:race", "data": {"text": id}}))
                    .await;
                match answer["type"].as_str() {
                    Some("ack") => seqs.push(answer["data"]["seq"].as_u64().expect("a seq")),
                    _ => assert_eq!(answer["code"], "conflict", "{answer}"),
                }
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a racer"));
    }
    let acked = all.len();
    all.sort_unstable();
    let before = all.len();
    all.dedup();
    assert_eq!(
        all.len(),
        before,
        "{} acknowledged sends were given a number another acknowledged send also got (lost updates)",
        before - all.len()
    );
    assert_eq!(
        all.last().copied(),
        Some(acked as u64),
        "numbers skipped or lost"
    );
}

#[tokio::test]
async fn concurrent_read_modify_writes_on_the_memory_store_lose_nothing() {
    concurrent_read_modify_writes_lose_nothing(sluice::config::StoreKind::Memory).await;
}

/// The durable store checks revisions like the memory store, and a write
/// in flight (queued, not yet on disk) holds its keys until it lands
/// (docs/faults.md, "Found" 2).
#[tokio::test]
async fn concurrent_read_modify_writes_on_the_durable_store_lose_nothing() {
    concurrent_read_modify_writes_lose_nothing(sluice::config::StoreKind::Durable).await;
}
