//! The noisy-neighbour suite (issue 26): tenant alpha drives every shared
//! resource to its quota at the same time — it pushes handlers until
//! refused, floods the management listener without a token and holds
//! slowloris connections to it, makes management requests past its rate, opens
//! connections past its cap and burns its whole fuel on every call from
//! each, publishes to a fresh channel per message and joins presence on
//! as many channels as it may — while tenant beta's honest clients run
//! echo and chat at a fixed rate, subscribe with presence, push a handler
//! and read the management API.
//!
//! Asserted: every one of beta's requests is served (100%), beta's
//! subscriber gets every event and its history and presence are whole;
//! alpha is refused at each step by the quota the documentation names
//! (docs/configuration.md, "Tenant quotas") and holds no more than its
//! quotas. Once on one node, once on a fleet of two nodes on NATS (alpha
//! on one node, beta's load through the other; history on JetStream,
//! connection caps over both). Latency is not asserted here:
//! `bench/noisy-neighbour` measures it. About 15 s of wall time each (the
//! management listener's header timeout).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::config::{Config, HistoryConfig, Quotas};
use sluice_tests::cluster::{Nats, cluster};
use sluice_tests::handlers;
use sluice_tests::server::{Client, TestServer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::admin_limits::raw;
use crate::marketplace::{ALPHA_MANAGER, BETA_MANAGER, OPERATOR, api, component, push, server};
use crate::pushed_isolation::{route_pushed, variant};

/// The node's instance pool.
const POOL: u32 = 40;
/// Alpha's quotas, small enough to reach in a few seconds.
const ALPHA: Quotas = Quotas {
    instances: 6,
    compiled_bytes: 256 << 20,
    pushed_handlers: 4,
    history_channels: 20,
    history_bytes: 1 << 20,
    presence_channels: 10,
    presence_members: 100,
    management_requests_per_sec: 5,
    idempotency_keys: 1000,
};
/// Alpha's connection cap.
const ALPHA_CONNECTIONS: u32 = 8;
/// How long beta's load runs at least (alpha's storm usually ends first).
const BETA_FOR: Duration = Duration::from_secs(8);

fn configure(c: &mut Config) {
    c.sandbox.pool_instances = POOL;
    route_pushed(c, "alpha", ALPHA.pushed_handlers + 2);
    for id in ["alpha", "beta"] {
        let t = c.tenants.get_mut(id).expect("tenant");
        // Chat on the configured handler (the marketplace's server routes
        // it to a pushed one).
        if let Some(r) = t.routes.get_mut("chat.send") {
            r.handler = "chat".into();
        }
        let room = &mut t.channels[0];
        // Beta's whole run stays in its room's history.
        room.history = Some(HistoryConfig {
            size: 2000,
            ttl_secs: 600,
        });
        room.presence = true;
        let l = &mut t.limits;
        l.messages_per_sec = 1000;
        l.message_burst = 1000;
        l.subject_messages_per_sec = 1000;
    }
    let alpha = c.tenants.get_mut("alpha").expect("alpha");
    alpha.quotas = ALPHA;
    alpha.limits.max_connections = ALPHA_CONNECTIONS;
}

/// What beta's honest clients saw.
#[derive(Default, Debug)]
struct BetaLoad {
    echoes: usize,
    chats: usize,
    /// Every answer that was not the expected one.
    failures: Vec<String>,
    slowest: Duration,
}

async fn connect(server: &TestServer, tenant: &str, sub: &str) -> Client {
    server
        .connect(tenant, &server.token(tenant, sub, "chat:write"))
        .await
        .expect("connects")
}

/// Beta's echo every 20 ms and chat line every 50 ms until `stop` (and
/// at least [`BETA_FOR`]).
async fn beta_load(server: Arc<TestServer>, stop: Arc<AtomicBool>) -> BetaLoad {
    let mut echoer = connect(&server, "beta", "echoer").await;
    let mut chatter = connect(&server, "beta", "chatter").await;
    let mut load = BetaLoad::default();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut n = 0u64;
    while started.elapsed() < BETA_FOR || !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        n += 1;
        let id = format!("e{n}");
        let sent = Instant::now();
        let answer = echoer
            .request(json!({"type": "echo", "id": id, "data": {"n": n}}))
            .await;
        load.slowest = load.slowest.max(sent.elapsed());
        if answer == json!({"type": "ack", "id": id, "data": {"n": n}}) {
            load.echoes += 1;
        } else {
            load.failures.push(format!("echo: {answer}"));
        }
        if n.is_multiple_of(3) {
            let id = format!("c{n}");
            let sent = Instant::now();
            let answer = chatter
                .request(json!({"type": "chat.send", "id": id, "channel": "room:beta", "data": {"text": id}}))
                .await;
            load.slowest = load.slowest.max(sent.elapsed());
            if answer["type"] == "ack" {
                load.chats += 1;
            } else {
                load.failures.push(format!("chat: {answer}"));
            }
        }
    }
    load
}

/// How alpha was refused, per resource.
#[derive(Default, Debug)]
struct AlphaRefusals {
    pushes_refused_quota: usize,
    management_rate_limited: usize,
    unauthenticated: usize,
    slowloris_held: usize,
    connections_refused: usize,
    calls_stopped: usize,
    history_channels_published: usize,
    presence_truncated: usize,
}

/// Pushes until one is refused for the handler quota (a 429 for the
/// management rate is waited out, as a client would).
async fn alpha_pushes(server: &TestServer) -> usize {
    let echo = component(handlers::ECHO);
    let mut refused = 0;
    for i in 0..ALPHA.pushed_handlers + 2 {
        loop {
            let (status, answer) = push(
                server,
                ALPHA_MANAGER,
                "alpha",
                &format!("h{i}"),
                &variant(&echo, i),
                None,
                None,
            )
            .await;
            match status {
                201 => assert!(
                    i < ALPHA.pushed_handlers,
                    "push {i} past the quota: {answer}"
                ),
                409 => {
                    assert_eq!(answer["error"]["code"], "quota", "{answer}");
                    assert!(i >= ALPHA.pushed_handlers, "push {i} refused: {answer}");
                    refused += 1;
                }
                429 => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                _ => panic!("push {i}: {status} {answer}"),
            }
            break;
        }
    }
    refused
}

/// Management requests with alpha's token as fast as they are answered.
async fn alpha_management_flood(server: &TestServer) -> usize {
    let mut limited = 0;
    for _ in 0..40 {
        let (status, _, answer) = raw(
            server,
            "GET",
            "/v1/tenants/alpha/handlers",
            Some(ALPHA_MANAGER),
            "",
        )
        .await;
        match status {
            200 => {}
            429 => {
                assert_eq!(answer["error"]["code"], "rate_limited", "{answer}");
                limited += 1;
            }
            _ => panic!("{status} {answer}"),
        }
    }
    limited
}

/// Requests without a token, with long paths naming beta.
async fn alpha_unauthenticated_flood(server: &TestServer) -> usize {
    let junk = "x".repeat(16_000);
    let mut refused = 0;
    for n in 0..200 {
        let path = format!("/v1/tenants/beta/handlers/{junk}{n}/promote");
        let (status, _, answer) = raw(server, "POST", &path, Some("not-a-token"), "").await;
        assert_eq!(status, 401, "{answer}");
        refused += 1;
    }
    refused
}

/// Connections to the management listener that start a TLS handshake
/// and never finish it (or send nothing at all); how many the server still
/// held after its header timeout.
async fn alpha_slowloris(server: &TestServer) -> usize {
    let management = server.management.expect("management listener");
    let hello_start = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let mut stalled = Vec::new();
    // Under the listener's connection cap, so all are accepted at once.
    for n in 0..200 {
        let Ok(mut tcp) = TcpStream::connect(management).await else {
            continue;
        };
        if n % 2 == 0 || tcp.write_all(&hello_start).await.is_ok() {
            stalled.push(tcp);
        }
    }
    tokio::time::sleep(sluice::server::admin::HEADER_TIMEOUT + Duration::from_secs(2)).await;
    let mut held = 0;
    for tcp in &mut stalled {
        let mut buf = [0u8; 256];
        // Closed by the server: EOF or an error, at once.
        match tokio::time::timeout(Duration::from_millis(20), async {
            use tokio::io::AsyncReadExt;
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        {
            Ok(()) => {}
            Err(_) => held += 1,
        }
    }
    held
}

/// Connections up to the cap (one more refused), each burning its whole
/// fuel (or deadline) on every call; fresh channels and presence on one.
async fn alpha_clients(server: &TestServer, other: &TestServer, refusals: &mut AlphaRefusals) {
    let mut clients = Vec::new();
    for i in 0..ALPHA_CONNECTIONS {
        clients.push(connect(server, "alpha", &format!("hog{i}")).await);
    }
    // One more, on the other node of a fleet once the counts have spread
    // (gossip every 500 ms): the cap is the fleet's.
    if !std::ptr::eq(server, other) {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let token = other.token("alpha", "one-more", "chat:write");
    match other.connect("alpha", &token).await {
        Ok(_) => panic!("alpha connected past max_connections"),
        Err(e) => {
            assert!(e.to_string().contains("429"), "{e}");
            refusals.connections_refused += 1;
        }
    }
    let mut spinners = Vec::new();
    for (i, mut c) in clients.drain(1..).enumerate() {
        spinners.push(tokio::spawn(async move {
            let mut stopped = 0;
            for n in 0..4 {
                let id = format!("s{i}-{n}");
                let answer = c
                    .request(json!({"type": "misbehave", "id": id, "data": {"mode": "spin"}}))
                    .await;
                assert_eq!(answer["type"], "error", "{answer}");
                let code = answer["code"].as_str().unwrap_or_default();
                assert!(
                    ["handler_timeout", "unavailable"].contains(&code),
                    "{answer}"
                );
                stopped += 1;
            }
            stopped
        }));
    }
    let mut publisher = clients.pop().expect("one client left");
    // A fresh channel per message: three times its history_channels (with
    // the chat handler: the spinners get `misbehave` quarantined).
    for n in 0..ALPHA.history_channels * 3 {
        let room = format!("room:fresh{n}");
        let ack = publisher
            .request(
                json!({"type": "chat.send", "id": room, "channel": room, "data": {"text": "x"}}),
            )
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        refusals.history_channels_published += 1;
    }
    // Presence on as many channels as it may, and more.
    for n in 0..ALPHA.presence_channels + 5 {
        let room = format!("room:p{n}");
        let ack = publisher
            .request(json!({"type": "subscribe", "id": room, "channel": room}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let presence = publisher
            .request(json!({"type": "presence", "id": room, "channel": room}))
            .await;
        if presence["data"]["truncated"] == true {
            refusals.presence_truncated += 1;
        }
    }
    for s in spinners {
        refusals.calls_stopped += s.await.expect("a spinner");
    }
}

/// The value of a tenant's series on `/metrics` (0 when absent).
async fn metric(server: &TestServer, name: &str, tenant: &str) -> u64 {
    let (status, m) = crate::admin::get(server, "/metrics").await;
    assert_eq!(status, 200);
    let prefix = format!("{name}{{tenant=\"{tenant}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().expect("a number"))
}

/// Alpha's storm on `server` (its one connection too many on `other`);
/// beta's load on `other`, its subscriber, management calls and final
/// checks on `server`. `nats`: the fleet's, whose history is on
/// JetStream.
async fn storm(server: Arc<TestServer>, other: Arc<TestServer>, nats: Option<&Nats>) {
    // Beta's subscriber, with presence, before the storm.
    let mut reader = connect(&server, "beta", "reader").await;
    let ack = reader
        .request(json!({"type": "subscribe", "id": "s", "channel": "room:beta"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let epoch = ack["data"]["epoch"].as_str().expect("an epoch").to_owned();
    // Until the last line, sent once the storm is over.
    let reading = tokio::spawn(async move {
        let mut events = 0;
        loop {
            let f = reader.recv().await;
            if f["type"] == "event" && f["channel"] == "room:beta" {
                if f["data"]["text"] == "end" {
                    break;
                }
                events += 1;
            }
        }
        (reader, events)
    });

    let stop = Arc::new(AtomicBool::new(false));
    let beta = tokio::spawn(beta_load(other.clone(), stop.clone()));
    // Beta's management calls during the storm: its own rate, its pushes.
    let beta_manager = {
        let server = server.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let echo = component(handlers::ECHO);
            let (status, answer) =
                push(&server, BETA_MANAGER, "beta", "bot", &echo, None, None).await;
            assert_eq!(status, 201, "beta's push during the storm: {answer}");
            for _ in 0..4 {
                let (status, answer) = api(
                    &server,
                    "GET",
                    "/v1/tenants/beta/handlers",
                    BETA_MANAGER,
                    Value::Null,
                )
                .await;
                assert_eq!(status, 200, "{answer}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    let mut refusals = AlphaRefusals::default();
    let (pushed, limited, unauthenticated, held, ()) = tokio::join!(
        alpha_pushes(&server),
        alpha_management_flood(&server),
        alpha_unauthenticated_flood(&server),
        alpha_slowloris(&server),
        alpha_clients(&server, &other, &mut refusals),
    );
    refusals.pushes_refused_quota = pushed;
    refusals.management_rate_limited = limited;
    refusals.unauthenticated = unauthenticated;
    refusals.slowloris_held = held;
    stop.store(true, Ordering::SeqCst);
    let load = beta.await.expect("beta's load");
    beta_manager.await.expect("beta's management calls");
    eprintln!("beta: {load:?}\nalpha: {refusals:?}");

    // Beta: every request served, every event delivered.
    assert!(
        load.failures.is_empty(),
        "beta was refused or failed {} times of {}: {:?}",
        load.failures.len(),
        load.echoes + load.chats + load.failures.len(),
        load.failures
    );
    assert!(load.echoes >= 100 && load.chats >= 30, "{load:?}");
    let mut closer = connect(&server, "beta", "closer").await;
    let ack = closer
        .request(json!({"type": "chat.send", "id": "end", "channel": "room:beta", "data": {"text": "end"}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let (mut reader, events) = reading.await.expect("beta's reader");
    assert_eq!(events, load.chats, "beta's subscriber missed events");
    reader.assert_usable().await;
    let presence = reader
        .request(json!({"type": "presence", "id": "p", "channel": "room:beta"}))
        .await;
    assert_eq!(presence["data"]["truncated"], false, "{presence}");
    let mut late = connect(&server, "beta", "late").await;
    let ack = late
        .request(
            json!({"type": "subscribe", "id": "s", "channel": "room:beta",
            "data": {"since": {"offset": 0, "epoch": epoch}}}),
        )
        .await;
    assert_eq!(ack["data"]["recovered"], true, "beta's history: {ack}");

    // Alpha: refused by the documented quota at every step, and holding no
    // more than its quotas.
    assert_eq!(refusals.pushes_refused_quota, 2, "{refusals:?}");
    assert!(refusals.management_rate_limited > 0, "{refusals:?}");
    assert_eq!(refusals.unauthenticated, 200);
    assert_eq!(
        refusals.slowloris_held, 0,
        "slowloris connections outlived the header timeout"
    );
    assert_eq!(refusals.connections_refused, 1);
    assert_eq!(refusals.calls_stopped, 4 * (ALPHA_CONNECTIONS as usize - 1));
    assert_eq!(refusals.presence_truncated, 5, "{refusals:?}");
    let u = server.state.sandbox.usage();
    let alpha_instances = u.tenants.get("alpha").map_or(0, |t| t.instances);
    assert!(alpha_instances <= ALPHA.instances, "{u:?}");
    assert!(u.pool_in_use <= u64::from(POOL), "{u:?}");
    let channels = match nats {
        None => metric(&server, "sluice_history_channels", "alpha").await,
        Some(nats) => alpha_channels_in_jetstream(nats).await,
    };
    assert!(
        channels <= u64::from(ALPHA.history_channels),
        "alpha keeps history on {channels} channels"
    );
    let presence = metric(&server, "sluice_presence_channels", "alpha").await;
    assert!(
        presence <= u64::from(ALPHA.presence_channels),
        "alpha has presence on {presence} channels"
    );
    // The audit log holds one record of the unauthenticated flood, naming
    // nothing alpha chose; beta's own view has only beta's actions.
    let (status, all) = api(
        &server,
        "GET",
        "/v1/audit?limit=10000",
        OPERATOR,
        Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    let anonymous = all["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["actor"] == "anonymous")
        .count();
    assert_eq!(anonymous, 1, "{all}");
    let (_, mine) = api(&server, "GET", "/v1/audit", BETA_MANAGER, Value::Null).await;
    assert!(
        mine["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .all(|e| e["actor"] == "tenant:beta"),
        "{mine}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_every_quota_at_once_leaves_another_tenant_fully_served() {
    let server = Arc::new(server(&[], configure).await);
    storm(server.clone(), server, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_fleet_a_tenant_at_every_quota_leaves_another_served_on_every_node() {
    // Two nodes on one nats-server: alpha storms node a (one connection
    // too many on node b), beta's load runs through node b, its subscriber
    // and management calls on node a; history is on JetStream, connection
    // caps count both nodes.
    let nats = Nats::start();
    let on = |node: &str| {
        let cluster = cluster(&nats, node);
        move |c: &mut Config| {
            configure(c);
            c.cluster = Some(cluster);
        }
    };
    let a = Arc::new(server(&[], on("a")).await);
    let b = Arc::new(server(&[], on("b")).await);
    storm(a, b, Some(&nats)).await;
}

/// Alpha's channels with history in JetStream, over every stream.
async fn alpha_channels_in_jetstream(nats: &Nats) -> u64 {
    use futures_util::StreamExt as _;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("NATS"));
    let mut names = js.stream_names();
    let mut channels = 0;
    while let Some(Ok(name)) = names.next().await {
        let stream = js.get_stream(&name).await.expect("stream");
        let mut info = stream
            .info_with_subjects("sluice.h.alpha.*")
            .await
            .expect("stream info");
        while let Some(Ok(_)) = info.next().await {
            channels += 1;
        }
    }
    channels
}
