//! `sluice bench` against a real server: the load generator counts what the
//! server answered, refusals included, and fan-out reaches every subscriber.

use std::time::Duration;

use sluice::loadgen::TargetArgs;
use sluice::loadgen::fanout::{FanoutArgs, run as fanout};
use sluice::loadgen::messages::{LoadArgs, run as load};
use sluice_tests::server::{TempDir, TestServer};

fn target(server: &TestServer, dir: &TempDir, token: String) -> TargetArgs {
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, &server.ca_pem).expect("write the CA");
    TargetArgs {
        url: server.url("alpha"),
        ca,
        config: None,
        tenant: None,
        scopes: Vec::new(),
        subject: "bench-{n}".into(),
        token: Some(token),
        via: "header".into(),
        sources: 2,
        protocol: sluice::loadgen::Protocol::Sluice,
        server_pid: Some(std::process::id()),
        json: true,
        quiet: true,
    }
}

fn load_args(target: TargetArgs, rate: f64) -> LoadArgs {
    LoadArgs {
        target,
        connections: 2,
        duration: Duration::from_millis(1500),
        warmup: Duration::from_millis(300),
        depth: 1,
        rate: Some(rate),
        routes: vec!["echo".into()],
        data: r#"{"n":1}"#.into(),
        join: None,
        connect_parallel: 2,
        keys: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_counts_answers_and_refusals() {
    let server = TestServer::start().await;
    let dir = TempDir::new();
    // Within the subject's limit (100/s): everything is answered.
    let token = server.token("alpha", "bench", "");
    let honest = load(load_args(target(&server, &dir, token.clone()), 40.0))
        .await
        .expect("load run");
    assert_eq!(honest.refused, 0, "{honest:?}");
    assert_eq!(honest.failed_connections, 0, "{honest:?}");
    assert!(
        (40..=80).contains(&honest.answered),
        "about 40/s for 1.5 s: {honest:?}"
    );
    assert_eq!(honest.latency.count, honest.answered);
    assert!(honest.server_cpu_us_per_message.is_some_and(|c| c > 0.0));

    // Ten times the subject's limit: the server refuses the excess, the
    // generator counts refusals apart from answers.
    let flood = load(load_args(target(&server, &dir, token), 1000.0))
        .await
        .expect("load run");
    assert!(flood.refused > flood.answered, "{flood:?}");
    assert!(flood.answered > 0, "{flood:?}");
    server.assert_honest_client_served().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keys_every_message_runs_under_a_fresh_key() {
    let server = TestServer::start().await;
    let dir = TempDir::new();
    let token = server.token("alpha", "bench", "");
    let mut args = load_args(target(&server, &dir, token), 40.0);
    args.keys = true;
    let report = load(args).await.expect("load run");
    assert_eq!(report.refused, 0, "{report:?}");
    assert_eq!(report.failed_connections, 0, "{report:?}");
    assert!(report.answered > 0, "{report:?}");
    // Every message took a new entry; none was answered from the table
    // (no key came twice) and none was refused.
    let table = server
        .state
        .idempotency
        .as_ref()
        .expect("the server takes keys");
    let c = table.counters("alpha");
    assert!(c.entries as u64 >= report.answered, "{c:?} {report:?}");
    assert_eq!(
        (c.hits, c.waits, c.conflicts, c.refusals),
        (0, 0, 0, 0),
        "{c:?}"
    );
    server.assert_honest_client_served().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reaches_every_subscriber() {
    let server = TestServer::start().await;
    let dir = TempDir::new();
    let token = server.token("alpha", "bench", "chat:write");
    let report = fanout(FanoutArgs {
        target: target(&server, &dir, token),
        subscribers: 5,
        channel: "room:fan".into(),
        join: "subscribe".into(),
        publish: "chat.send".into(),
        broadcasts: 10,
        rate: 0.0,
        timeout: Duration::from_secs(10),
        connect_parallel: 5,
    })
    .await
    .expect("fanout run");
    assert_eq!(report.expected_deliveries, 50);
    assert_eq!(report.deliveries, 50, "{report:?}");
    assert_eq!(report.complete_broadcasts, 10, "{report:?}");
    assert_eq!(report.last_delivery_latency.count, 10);
}
