//! `sluice probe` against real servers: a `sluice dev` server passes every
//! check; the Node peer is told what it lacks; a deliberately weak server
//! is flagged check by check; hostile servers get a bounded-time report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use sluice::config::Config;
use sluice::dev_files::{DEMO_TENANT, DEV_SCOPE, DemoConfig};
use sluice::node::Node;
use sluice::token::Minter;
use sluice_probe::ProbeArgs;
use sluice_tests::handlers;
use sluice_tests::server::{TempDir, now};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::peers::{self, Files, Peer};

/// Bound on one whole probe run in these tests.
const RUN_BOUND: Duration = Duration::from_secs(120);

fn args(url: String) -> ProbeArgs {
    ProbeArgs {
        url,
        token: None,
        origin: None,
        ca: None,
        active: true,
        json: true,
        wait: 3,
    }
}

/// Run the probe, bounded, and return its JSON report.
async fn probe(args: &ProbeArgs) -> (Value, Duration) {
    let started = Instant::now();
    let report = tokio::time::timeout(RUN_BOUND, sluice_probe::audit(args))
        .await
        .unwrap_or_else(|_| panic!("the probe of {} ran past {RUN_BOUND:?}", args.url))
        .unwrap_or_else(|e| panic!("the probe of {} failed to run: {e:#}", args.url));
    let json = serde_json::to_value(&report).expect("the report serializes");
    assert_eq!(
        json["summary"]["fail"].as_u64().map(|n| n > 0),
        Some(report.failed())
    );
    (json, started.elapsed())
}

/// `id` -> status, for every check of a report.
fn statuses(report: &Value) -> Vec<(String, String)> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            (
                c["id"].as_str().expect("id").to_owned(),
                c["status"].as_str().expect("status").to_owned(),
            )
        })
        .collect()
}

fn check<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {report:#}"))
}

/// Assert each `(id, status)`, reporting every mismatch at once with its
/// evidence.
fn assert_statuses(report: &Value, expected: &[(&str, &str)]) {
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(id, status)| check(report, id)["status"] != *status)
        .map(|(id, status)| {
            let c = check(report, id);
            format!(
                "{id}: expected {status}, got {} (sent: {}; got: {}; {})",
                c["status"], c["sent"], c["received"], c["detail"]
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every check id the probe reports, in order.
const ALL: [&str; 24] = [
    "transport.plaintext",
    "transport.tls10",
    "transport.tls11",
    "transport.aead_only",
    "transport.certificate",
    "auth.control",
    "auth.no_token",
    "auth.garbage",
    "auth.alg_none",
    "auth.tampered_signature",
    "auth.expired",
    "auth.wrong_audience",
    "origin.foreign",
    "origin.null",
    "origin.lookalike",
    "messages.malformed_json",
    "messages.deep_json",
    "messages.oversize",
    "messages.invalid_utf8",
    "messages.binary",
    "flood.burst",
    "timeouts.handshake",
    "timeouts.idle",
    "compression.permessage_deflate",
];

fn all_ids() -> Vec<&'static str> {
    ALL.to_vec()
}

/// A server with `sluice dev`'s configuration (`sluice::dev_files::prepare`), on
/// port 0, without the admin listener.
pub(crate) struct DevSluice {
    pub(crate) addr: SocketAddr,
    dir: TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl DevSluice {
    pub(crate) async fn start() -> Self {
        let dir = TempDir::new();
        let config_path = sluice::dev_files::prepare(
            &dir.0,
            &DemoConfig::new(
                "127.0.0.1:0",
                Path::new(handlers::ECHO),
                Path::new(handlers::CHAT),
            ),
        )
        .expect("the dev files");
        let mut config = Config::load(&config_path).expect("the dev config loads");
        config.server.admin_listen = None;
        // Not the default 127.0.0.1:9443: tests run side by side.
        config.management.listen = "127.0.0.1:0".parse().expect("addr");
        let node = match Node::build(config).await {
            Ok(n) => n,
            Err(e) => panic!("the dev config builds: {e}"),
        };
        let server = node
            .bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = server.local_addr();
        let task = tokio::spawn(server.run(std::future::pending()));
        Self { addr, dir, task }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    /// A token as `sluice dev` prints it (another subject), minted with the
    /// demo tenant's key.
    pub(crate) fn token(&self) -> String {
        let config = Config::load(&self.path("sluice.toml")).expect("the dev config");
        Minter::for_tenant(&config, DEMO_TENANT)
            .and_then(|m| m.mint("probe", &[DEV_SCOPE.to_owned()], 3600, Map::new()))
            .expect("a dev token")
    }
}

impl Drop for DevSluice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn every_check_passes_against_a_sluice_dev_server() {
    let server = DevSluice::start().await;
    let report_args = ProbeArgs {
        token: Some(server.token()),
        origin: Some("https://localhost:8443".into()),
        ca: Some(server.path("cert.pem")),
        // Sluice pings an idle connection after 20 s (its default).
        wait: 25,
        ..args(format!("wss://{}/ws/demo", server.addr))
    };
    let (report, _) = probe(&report_args).await;
    let ids: Vec<String> = statuses(&report).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, all_ids(), "every check, in checklist order");
    let expected: Vec<(&str, &str)> = all_ids().into_iter().map(|id| (id, "pass")).collect();
    assert_statuses(&report, &expected);
    for (id, code) in [
        ("messages.oversize", "close 1009"),
        ("messages.invalid_utf8", "close 1007"),
        ("flood.burst", "close 1008"),
    ] {
        let received = check(&report, id)["received"].as_str().unwrap_or_default();
        assert!(received.contains(code), "{id}: {received}");
    }
}

#[tokio::test]
async fn the_probe_without_the_ca_fails_the_certificate_and_sends_no_token() {
    let server = DevSluice::start().await;
    let report_args = ProbeArgs {
        token: Some(server.token()),
        ..args(format!("wss://{}/ws/demo", server.addr))
    };
    let (report, _) = probe(&report_args).await;
    let cert = check(&report, "transport.certificate");
    assert_eq!(cert["status"], "fail", "{cert:#}");
    assert!(
        cert["received"]
            .as_str()
            .is_some_and(|r| r.contains("UnknownIssuer")),
        "{cert:#}"
    );
    for id in [
        "auth.no_token",
        "auth.alg_none",
        "messages.deep_json",
        "timeouts.idle",
    ] {
        assert_eq!(check(&report, id)["status"], "could_not_tell", "{id}");
        assert_eq!(check(&report, id)["sent"], "nothing", "{id}");
    }
}

#[tokio::test]
async fn the_probe_reports_what_the_node_peer_lacks() {
    let files = Files::new();
    let node = Peer::node(&files);
    let report_args = ProbeArgs {
        token: Some(peers::token("alice", "chat:write")),
        origin: Some(peers::ORIGIN.into()),
        ca: Some(files.path("cert.pem")),
        // Node's header timeout is 60 s: past this bound.
        wait: 8,
        ..args(format!("wss://{}/ws/{}", node.addr, peers::TENANT))
    };
    let (report, _) = probe(&report_args).await;
    assert_statuses(
        &report,
        &[
            ("transport.plaintext", "pass"),
            ("transport.tls10", "pass"),
            ("transport.tls11", "pass"),
            // Node's default cipher list still has CBC suites.
            ("transport.aead_only", "fail"),
            ("transport.certificate", "pass"),
            ("auth.control", "pass"),
            ("auth.no_token", "pass"),
            ("auth.garbage", "pass"),
            ("auth.alg_none", "pass"),
            ("auth.tampered_signature", "pass"),
            ("auth.expired", "pass"),
            ("auth.wrong_audience", "pass"),
            ("origin.foreign", "pass"),
            ("origin.null", "pass"),
            ("origin.lookalike", "pass"),
            ("messages.malformed_json", "pass"),
            // What it lacks: a JSON depth limit, rate limits, a handshake
            // deadline, server pings.
            ("messages.deep_json", "fail"),
            ("messages.oversize", "pass"),
            ("messages.invalid_utf8", "pass"),
            ("messages.binary", "pass"),
            ("flood.burst", "fail"),
            ("timeouts.handshake", "fail"),
            ("timeouts.idle", "could_not_tell"),
            ("compression.permessage_deflate", "pass"),
        ],
    );
    assert!(
        check(&report, "flood.burst")["received"]
            .as_str()
            .is_some_and(|r| r.contains("500 served")),
        "{report:#}"
    );
}

/// A weak server: plaintext ws, no authentication, any Origin, no limits;
/// echoes every message.
async fn weak_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An unsigned-looking JWT for a server that checks nothing.
fn some_jwt() -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64.encode(json!({"sub": "x", "aud": "app", "exp": now() + 600}).to_string()),
        b64.encode([1u8; 32])
    )
}

#[tokio::test]
async fn a_weak_server_is_flagged_check_by_check() {
    let addr = weak_server().await;
    let report_args = ProbeArgs {
        token: Some(some_jwt()),
        origin: Some("https://app.example.com".into()),
        ..args(format!("ws://{addr}/ws"))
    };
    let (report, _) = probe(&report_args).await;
    assert_statuses(
        &report,
        &[
            ("transport.plaintext", "fail"),
            ("transport.tls10", "not_applicable"),
            ("transport.certificate", "not_applicable"),
            ("auth.control", "pass"),
            ("auth.no_token", "fail"),
            ("auth.garbage", "fail"),
            ("auth.alg_none", "fail"),
            ("auth.tampered_signature", "fail"),
            ("auth.expired", "fail"),
            ("auth.wrong_audience", "fail"),
            ("origin.foreign", "fail"),
            ("origin.null", "fail"),
            ("origin.lookalike", "fail"),
            ("messages.malformed_json", "fail"),
            ("messages.deep_json", "fail"),
            ("messages.oversize", "fail"),
            ("messages.binary", "fail"),
            ("flood.burst", "fail"),
            ("timeouts.handshake", "fail"),
            ("timeouts.idle", "could_not_tell"),
        ],
    );
    // The exit status is non-zero: the summary counts every failure.
    let fails = statuses(&report)
        .iter()
        .filter(|(_, s)| s == "fail")
        .count();
    assert!(fails >= 16, "{report:#}");
    assert_eq!(report["summary"]["fail"], fails);
    assert!(
        check(&report, "origin.lookalike")["sent"]
            .as_str()
            .is_some_and(|s| s.contains("https://app.example.com.sluice-probe.invalid")),
        "{report:#}"
    );
}

/// A listener whose connections get `behave`, each in its own task.
async fn hostile<F, Fut>(behave: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(behave(tcp));
        }
    });
    addr
}

/// Read a request head; the value of its Sec-WebSocket-Key.
async fn read_request(tcp: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
        if tcp.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).lines().find_map(|l| {
        l.to_ascii_lowercase()
            .starts_with("sec-websocket-key:")
            .then(|| l[18..].trim().to_owned())
    })
}

/// Hold the connection open, reading and discarding, never answering.
async fn hold(mut tcp: TcpStream) {
    let mut buf = [0u8; 4096];
    while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
}

#[tokio::test]
async fn the_probe_survives_hostile_servers_in_bounded_time() {
    // Accepts, reads, never answers a byte.
    let silent = hostile(hold).await;
    // Upgrades, then sends frames that break the protocol.
    let garbage = hostile(|mut tcp| async move {
        let Some(key) = read_request(&mut tcp).await else {
            return;
        };
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        let _ = tcp.write_all(head.as_bytes()).await;
        for _ in 0..64 {
            if tcp.write_all(&[0xff; 1024]).await.is_err() {
                return;
            }
        }
        hold(tcp).await;
    })
    .await;
    // Answers the upgrade with a header that never ends.
    let huge = hostile(|mut tcp| async move {
        if read_request(&mut tcp).await.is_none() {
            return;
        }
        let _ = tcp
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nX-Filler: ")
            .await;
        let chunk = vec![b'a'; 64 << 10];
        for _ in 0..256 {
            if tcp.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
    .await;

    let token = some_jwt();
    let with = |url: String| ProbeArgs {
        token: Some(token.clone()),
        origin: Some("https://app.example.com".into()),
        wait: 2,
        ..args(url)
    };
    let runs = [
        with(format!("ws://{silent}/ws")),
        with(format!("wss://{silent}/ws")),
        with(format!("ws://{garbage}/ws")),
        with(format!("ws://{huge}/ws")),
    ];
    let (silent_ws, silent_wss, garbage, huge) = tokio::join!(
        probe(&runs[0]),
        probe(&runs[1]),
        probe(&runs[2]),
        probe(&runs[3])
    );
    for (name, (report, took)) in [
        ("silent ws", &silent_ws),
        ("silent wss", &silent_wss),
        ("garbage", &garbage),
        ("huge header", &huge),
    ] {
        let ids: Vec<String> = statuses(report).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, all_ids(), "{name}: every check is reported");
        assert!(*took < Duration::from_secs(90), "{name} took {took:?}");
    }

    let (silent_ws, _) = silent_ws;
    assert_statuses(
        &silent_ws,
        &[
            ("transport.plaintext", "could_not_tell"),
            ("auth.no_token", "could_not_tell"),
            ("origin.foreign", "could_not_tell"),
            ("messages.deep_json", "could_not_tell"),
            // It holds a half-sent upgrade open forever: that is a finding.
            ("timeouts.handshake", "fail"),
            ("timeouts.idle", "could_not_tell"),
        ],
    );

    let (silent_wss, _) = silent_wss;
    assert_statuses(
        &silent_wss,
        &[
            ("transport.tls10", "could_not_tell"),
            ("transport.aead_only", "could_not_tell"),
            ("transport.certificate", "could_not_tell"),
            ("auth.no_token", "could_not_tell"),
        ],
    );

    let (garbage, _) = garbage;
    assert_statuses(
        &garbage,
        &[
            // It upgrades anyone...
            ("auth.no_token", "fail"),
            // ...but nothing it sends after is WebSocket: no verdict.
            ("messages.malformed_json", "could_not_tell"),
            ("flood.burst", "could_not_tell"),
            ("timeouts.idle", "could_not_tell"),
        ],
    );

    let (huge, _) = huge;
    assert_statuses(
        &huge,
        &[
            ("auth.control", "could_not_tell"),
            ("auth.no_token", "could_not_tell"),
            ("messages.deep_json", "could_not_tell"),
        ],
    );
    let control = check(&huge, "auth.control");
    assert!(
        control["received"]
            .as_str()
            .is_some_and(|r| r.contains("exceeded 16 KiB")),
        "{control:#}"
    );
}

#[tokio::test]
async fn a_token_is_never_sent_over_plaintext_to_another_machine() {
    // A plaintext URL of another machine (TEST-NET-1: nothing answers).
    let started = Instant::now();
    let refused = sluice_probe::audit(&ProbeArgs {
        token: Some(some_jwt()),
        ..args("ws://192.0.2.1:9/ws".into())
    })
    .await
    .expect_err("the probe refuses before connecting");
    let why = format!("{refused:#}");
    assert!(
        why.contains("refusing to send --token over ws://") && why.contains("wss://"),
        "{why}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once, without a connection attempt"
    );
    // To this machine, ws:// with a token is probed as before.
    let addr = weak_server().await;
    let (report, _) = probe(&ProbeArgs {
        token: Some(some_jwt()),
        active: false,
        wait: 1,
        ..args(format!("ws://{addr}/ws"))
    })
    .await;
    assert_eq!(
        check(&report, "auth.control")["status"],
        "pass",
        "the token was sent: {report:#}"
    );
}
