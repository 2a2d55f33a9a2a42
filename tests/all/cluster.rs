//! Cluster mode against a real nats-server with JetStream on loopback:
//! several Sluice nodes share channels, sends and channel history.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::config::{ClusterConfig, Config, HistoryConfig};
use sluice_tests::cluster::{DevCluster, Nats, NatsCluster, cluster, free_port};
use sluice_tests::server::{Client, TempDir, TestServer};

/// A node of the fleet on `nats`; rooms keep `history` if given.
async fn node(nats: &Nats, name: &str, history: Option<usize>) -> TestServer {
    let cluster = cluster(nats, name);
    let base = node_config(history);
    TestServer::start_with(move |c: &mut Config| {
        base(c);
        c.cluster = Some(cluster);
    })
    .await
}

/// A node like [`node`] whose only way to NATS is through `proxy`, so a
/// test can cut it off.
async fn node_via(nats: &Nats, proxy: &CutProxy, name: &str, history: Option<usize>) -> TestServer {
    let mut cluster = cluster(nats, name);
    cluster.nats_urls = vec![proxy.url.clone()];
    let base = node_config(history);
    TestServer::start_with(move |c: &mut Config| {
        base(c);
        c.cluster = Some(cluster);
    })
    .await
}

/// A node's configuration but its `[cluster]`: rooms keep `history` if
/// given; rate limits out of the way.
fn node_config(history: Option<usize>) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        for t in ["alpha", "beta"] {
            let t = c.tenants.get_mut(t).expect("tenant");
            t.channels[0].history = history.map(|size| HistoryConfig {
                size,
                ttl_secs: 600,
            });
            let l = &mut t.limits;
            l.messages_per_sec = 100_000;
            l.message_burst = 100_000;
            l.subject_messages_per_sec = 100_000;
            l.tenant_messages_per_sec = 100_000;
        }
    }
}

async fn client(server: &TestServer, tenant: &str, sub: &str) -> Client {
    let token = server.token(tenant, sub, "chat:write");
    server.connect(tenant, &token).await.expect("connect")
}

async fn subscribe(c: &mut Client, channel: &str, since: Option<(u64, &str)>) -> Value {
    let mut msg = json!({"type": "subscribe", "id": "s", "channel": channel});
    if let Some((offset, epoch)) = since {
        msg["data"] = json!({"since": {"offset": offset, "epoch": epoch}});
    }
    let ack = c.request(msg).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["data"].clone()
}

async fn send_chat(c: &mut Client, room: &str, text: &str) {
    let ack = c
        .request(json!({"type": "chat.send", "id": text, "channel": room, "data": {"text": text}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

/// Every frame that arrives within `quiet` of the last one.
async fn drain(c: &mut Client, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok(f) = tokio::time::timeout(quiet, c.recv()).await {
        out.push(f);
    }
    out
}

fn texts(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["type"] == "event")
        .filter_map(|f| f["data"]["text"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_broadcast_reaches_every_node_exactly_once_and_send_crosses_nodes() {
    let nats = Nats::start();
    let nodes = [
        node(&nats, "a", None).await,
        node(&nats, "b", None).await,
        node(&nats, "c", None).await,
    ];
    let mut readers = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        // Two readers on one node, one on each other: a node subscribes to
        // NATS once per channel, whatever its local subscribers.
        for k in 0..if i == 1 { 2 } else { 1 } {
            let mut r = client(n, "alpha", &format!("reader{i}{k}")).await;
            subscribe(&mut r, "room:fleet", None).await;
            readers.push(r);
        }
    }
    let mut writer = client(&nodes[0], "alpha", "writer").await;
    for i in 0..20 {
        send_chat(&mut writer, "room:fleet", &format!("m{i}")).await;
    }
    let want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    for r in &mut readers {
        let got = texts(&drain(r, Duration::from_millis(700)).await);
        assert_eq!(got, want, "every reader gets each event once, in order");
    }

    // `send` to a subject reaches its connections on every node.
    let mut dm_b = client(&nodes[1], "alpha", "bob").await;
    let mut dm_c = client(&nodes[2], "alpha", "bob").await;
    let ack = writer
        .request(
            json!({"type": "misbehave", "id": "d1", "data": {"mode": "send", "target": "bob"}}),
        )
        .await;
    assert_eq!(ack["data"], json!({"sent": true}), "{ack}");
    for c in [&mut dm_b, &mut dm_c] {
        let got = drain(c, Duration::from_millis(700)).await;
        let dms: Vec<&Value> = got.iter().filter(|f| f["data"]["dm"] == true).collect();
        assert_eq!(dms.len(), 1, "{got:?}");
    }
}

#[tokio::test]
async fn a_tenant_never_receives_another_tenants_events_whatever_the_channel_names() {
    let nats = Nats::start();
    let (a, b) = (node(&nats, "a", None).await, node(&nats, "b", None).await);
    // Names with dots: each must stay one channel of one tenant on the bus.
    let names = ["room:x", "room:x.y", "room:x.y.z", "room:a-b_c"];
    let mut beta = client(&b, "beta", "spy").await;
    let mut alpha_reader = client(&b, "alpha", "reader").await;
    for n in names {
        subscribe(&mut beta, n, None).await;
    }
    subscribe(&mut alpha_reader, "room:x", None).await;
    let mut alpha = client(&a, "alpha", "writer").await;
    for n in names {
        send_chat(&mut alpha, n, &format!("alpha on {n}")).await;
    }
    assert_eq!(
        texts(&drain(&mut alpha_reader, Duration::from_millis(700)).await),
        vec!["alpha on room:x".to_owned()],
        "a channel gets only its own events, not those of room:x.y"
    );
    assert!(
        texts(&drain(&mut beta, Duration::from_millis(300)).await).is_empty(),
        "beta got alpha's events"
    );
    // And beta's own traffic still flows to beta.
    let mut beta_writer = client(&a, "beta", "writer").await;
    send_chat(&mut beta_writer, "room:x.y", "beta's own").await;
    assert_eq!(
        texts(&drain(&mut beta, Duration::from_millis(700)).await),
        vec!["beta's own".to_owned()]
    );
}

#[tokio::test]
async fn a_client_that_moves_to_another_node_recovers_what_it_missed_there() {
    let nats = Nats::start();
    let nodes = [
        node(&nats, "a", Some(1000)).await,
        node(&nats, "b", Some(1000)).await,
        node(&nats, "c", Some(1000)).await,
    ];
    let mut reader = client(&nodes[0], "alpha", "reader").await;
    let first = subscribe(&mut reader, "room:move", None).await;
    let epoch = first["epoch"].as_str().expect("epoch").to_owned();
    let mut writer = client(&nodes[1], "alpha", "writer").await;
    for i in 0..5 {
        send_chat(&mut writer, "room:move", &format!("live{i}")).await;
    }
    let live = drain(&mut reader, Duration::from_millis(700)).await;
    assert_eq!(texts(&live).len(), 5, "{live:?}");
    let last = live
        .iter()
        .filter_map(|f| f["offset"].as_u64())
        .max()
        .expect("offsets");
    assert!(live.iter().all(|f| f["epoch"] == epoch.as_str()));
    drop(reader);

    // Missed while away: published from two nodes, interleaved.
    let mut writer2 = client(&nodes[2], "alpha", "writer2").await;
    for i in 0..100 {
        let w = if i % 2 == 0 {
            &mut writer
        } else {
            &mut writer2
        };
        send_chat(w, "room:move", &format!("missed{i}")).await;
    }
    let mut back = client(&nodes[2], "alpha", "reader").await;
    let ack = subscribe(&mut back, "room:move", Some((last, &epoch))).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let frames = drain(&mut back, Duration::from_millis(700)).await;
    let want: Vec<String> = (0..100).map(|i| format!("missed{i}")).collect();
    assert_eq!(texts(&frames), want, "every missed event once, in order");
    let offsets: Vec<u64> = frames.iter().filter_map(|f| f["offset"].as_u64()).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    assert_eq!(ack["offset"].as_u64(), offsets.last().copied());

    // The same offsets on every node: a reader on node A sees what the
    // recovering reader on C saw.
    let mut on_a = client(&nodes[0], "alpha", "other").await;
    let from_a = subscribe(&mut on_a, "room:move", Some((last, &epoch))).await;
    assert_eq!(from_a["offset"], ack["offset"]);
    let again = drain(&mut on_a, Duration::from_millis(700)).await;
    let offsets_a: Vec<u64> = again.iter().filter_map(|f| f["offset"].as_u64()).collect();
    assert_eq!(offsets_a, offsets);

    // Another epoch, or an offset the channel never had: not recovered,
    // and the honest client is still served.
    let mut liar = client(&nodes[1], "alpha", "liar").await;
    let wrong = subscribe(&mut liar, "room:move", Some((last, "0000000000000000"))).await;
    assert_eq!(wrong["recovered"], false, "{wrong}");
    let ahead = subscribe(&mut liar, "room:other", Some((last + 10_000, &epoch))).await;
    assert_eq!(ahead["recovered"], false, "{ahead}");
    send_chat(&mut writer, "room:move", "after").await;
    assert_eq!(
        texts(&drain(&mut back, Duration::from_millis(700)).await),
        vec!["after".to_owned()]
    );
}

#[tokio::test]
async fn recovery_past_the_window_is_refused_on_every_node() {
    let nats = Nats::start();
    let (a, b) = (
        node(&nats, "a", Some(5)).await,
        node(&nats, "b", Some(5)).await,
    );
    let mut reader = client(&a, "alpha", "reader").await;
    let first = subscribe(&mut reader, "room:win", None).await;
    let epoch = first["epoch"].as_str().expect("epoch").to_owned();
    drop(reader);
    let mut writer = client(&a, "alpha", "writer").await;
    for i in 0..8 {
        send_chat(&mut writer, "room:win", &format!("w{i}")).await;
    }
    let mut back = client(&b, "alpha", "reader").await;
    let ack = subscribe(&mut back, "room:win", Some((0, &epoch))).await;
    assert_eq!(ack["recovered"], false, "8 events, 5 kept: {ack}");
    assert!(texts(&drain(&mut back, Duration::from_millis(400)).await).is_empty());
}

/// GET `path` on an admin listener: (status, body).
async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("admin");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

async fn wait_ready(addr: SocketAddr, ready: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = admin_get(addr, "/readyz").await;
        if (status == 200) == ready {
            return;
        }
        assert!(Instant::now() < deadline, "readyz stayed {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_node_cut_off_from_nats_is_not_ready_refuses_new_connections_and_recovers() {
    let mut nats = Nats::start();
    let (a, b) = (node(&nats, "a", None).await, node(&nats, "b", None).await);
    let mut reader = client(&b, "alpha", "reader").await;
    subscribe(&mut reader, "room:restart", None).await;
    let mut writer = client(&a, "alpha", "writer").await;

    nats.kill();
    let admin = a.admin.expect("admin listener");
    wait_ready(admin, false).await;
    let (_, body) = admin_get(admin, "/readyz").await;
    assert_eq!(body, "cut off from NATS\n");
    let token = a.token("alpha", "newcomer", "");
    let refused = a.connect("alpha", &token).await;
    let Err(e) = refused else {
        panic!("a new connection was accepted while cut off");
    };
    assert!(e.to_string().contains("503"), "{e}");
    // The connections it has stay open.
    writer.assert_usable().await;

    nats.restart();
    wait_ready(admin, true).await;
    wait_ready(b.admin.expect("admin"), true).await;
    // Fan-out resumes by itself: the old subscription is back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        send_chat(&mut writer, "room:restart", "back").await;
        let got = texts(&drain(&mut reader, Duration::from_millis(300)).await);
        if got.iter().any(|t| t == "back") {
            break;
        }
        assert!(Instant::now() < deadline, "fan-out did not resume");
    }
    a.assert_honest_client_served().await;
}

#[tokio::test]
async fn two_nodes_publishing_on_one_channel_at_once_get_distinct_offsets_in_one_order() {
    let nats = Nats::start();
    let (a, b) = (
        node(&nats, "a", Some(1000)).await,
        node(&nats, "b", Some(1000)).await,
    );
    let mut reader_a = client(&a, "alpha", "ra").await;
    let mut reader_b = client(&b, "alpha", "rb").await;
    subscribe(&mut reader_a, "room:race", None).await;
    subscribe(&mut reader_b, "room:race", None).await;
    let wa = client(&a, "alpha", "wa").await;
    let wb = client(&b, "alpha", "wb").await;
    // The chat handler's state is shared too: a call that loses the race
    // for it twice is answered `conflict` and publishes nothing.
    let burst = |mut w: Client, tag: &'static str| async move {
        for i in 0..50 {
            w.send(
                json!({"type": "chat.send", "id": format!("{tag}{i}"), "channel": "room:race",
                "data": {"text": format!("{tag}{i}")}}),
            )
            .await;
        }
        let (mut acked, mut answered) = (0, 0);
        while answered < 50 {
            let f = w.recv().await;
            match f["type"].as_str() {
                Some("ack") => acked += 1,
                Some("error") => assert_eq!(f["code"], "conflict", "{f}"),
                _ => continue,
            }
            answered += 1;
        }
        acked
    };
    let (na, nb) = tokio::join!(burst(wa, "a"), burst(wb, "b"));
    let fa = drain(&mut reader_a, Duration::from_millis(800)).await;
    let fb = drain(&mut reader_b, Duration::from_millis(800)).await;
    let by_offset = |frames: &[Value]| -> BTreeMap<u64, String> {
        frames
            .iter()
            .filter(|f| f["type"] == "event")
            .map(|f| {
                (
                    f["offset"].as_u64().expect("offset"),
                    f["data"]["text"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let (oa, ob) = (by_offset(&fa), by_offset(&fb));
    assert_eq!(
        oa.len(),
        na + nb,
        "every acknowledged event once, each its own offset"
    );
    assert_eq!(oa, ob, "both nodes agree on every event's offset");
    assert_eq!(texts(&fa), texts(&fb), "and deliver them in the same order");
}

#[tokio::test]
async fn two_nodes_committing_the_same_state_key_at_once_lose_nothing() {
    let nats = Nats::start();
    let (a, b) = (node(&nats, "a", None).await, node(&nats, "b", None).await);
    // The chat handler keeps each room's next `seq` in state: read, add
    // one, write. Two writers on two nodes race on the same key.
    const EACH: usize = 40;
    let burst = |mut w: Client, tag: &'static str| async move {
        for i in 0..EACH {
            w.send(
                json!({"type": "chat.send", "id": format!("{tag}{i}"), "channel": "room:kv",
                "data": {"text": format!("{tag}{i}")}}),
            )
            .await;
        }
        let (mut seqs, mut conflicts) = (Vec::new(), 0);
        while seqs.len() + conflicts < EACH {
            let f = w.recv().await;
            match f["type"].as_str() {
                Some("ack") => seqs.push(f["data"]["seq"].as_u64().expect("seq")),
                Some("error") => {
                    assert_eq!(f["code"], "conflict", "{f}");
                    conflicts += 1;
                }
                _ => {}
            }
        }
        (seqs, conflicts)
    };
    let wa = client(&a, "alpha", "wa").await;
    let wb = client(&b, "alpha", "wb").await;
    let ((sa, ca), (sb, cb)) = tokio::join!(burst(wa, "a"), burst(wb, "b"));
    let mut all: Vec<u64> = sa.iter().chain(&sb).copied().collect();
    all.sort_unstable();
    let n = all.len() as u64;
    assert_eq!(
        all,
        (1..=n).collect::<Vec<_>>(),
        "every acknowledged write got its own seq, none lost or doubled ({ca}+{cb} conflicts)"
    );
    assert!(n as usize + ca + cb == 2 * EACH);
    assert!(
        n as usize >= EACH,
        "most calls succeed after one retry: {n}"
    );

    // Both nodes read the same state: a join on either sees every line.
    for node in [&a, &b] {
        let mut c = client(node, "alpha", "late").await;
        let ack = c
            .request(json!({"type": "chat.join", "id": "j", "channel": "room:kv"}))
            .await;
        let history = ack["data"]["history"].as_array().expect("history");
        let last = history.last().expect("lines");
        assert_eq!(last["seq"].as_u64(), Some(n), "{ack}");
    }
}

#[tokio::test]
async fn kill_9_of_one_node_of_sluice_dev_cluster_leaves_the_others_serving() {
    let dev = DevCluster::start();
    assert_eq!(dev.urls.len(), 3, "three nodes in the banner");
    let mut on_b = dev.client_as(1, &dev.token_for("bob")).await;
    let mut on_c = dev.client(2).await;
    let mut on_a = dev.client_as(0, &dev.token_for("alice")).await;
    for c in [&mut on_a, &mut on_b, &mut on_c] {
        subscribe(c, "room:9", None).await;
    }
    send_chat(&mut on_b, "room:9", "before").await;
    let seen_on_a = drain(&mut on_a, Duration::from_millis(700)).await;
    assert_eq!(texts(&seen_on_a), vec!["before"]);
    let before = seen_on_a
        .iter()
        .find(|f| f["type"] == "event")
        .expect("the event");
    let (offset, epoch) = (
        before["offset"].as_u64().expect("offset"),
        before["epoch"].as_str().expect("epoch").to_owned(),
    );
    assert_eq!(
        texts(&drain(&mut on_c, Duration::from_millis(700)).await),
        vec!["before"]
    );
    let _ = drain(&mut on_b, Duration::from_millis(200)).await;
    // Presence spans the fleet: bob, on node-1, sees alice on node-0.
    let members = |ack: &Value| -> Vec<String> {
        ack["data"]["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(|m| m["subject"].as_str().map(str::to_owned))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ack = on_b
            .request(json!({"type": "presence", "id": "p", "channel": "room:9"}))
            .await;
        let who = members(&ack);
        if who.contains(&"alice".to_owned()) && who.contains(&"bob".to_owned()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice never appeared on node-1: {ack}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGKILL node-0: no drain, no goodbye to NATS.
    let status = Command::new("kill")
        .args(["-9", &dev.pids[0].to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    drop(on_a);

    // B and C keep delivering to each other, and neither client was dropped.
    for i in 0..10 {
        send_chat(&mut on_b, "room:9", &format!("after{i}")).await;
    }
    let want: Vec<String> = (0..10).map(|i| format!("after{i}")).collect();
    // (B's client got its acks: `send_chat` checked each.)
    assert_eq!(
        texts(&drain(&mut on_c, Duration::from_millis(700)).await),
        want
    );
    // The dead node's members vanish from every answer within the bound.
    let killed = Instant::now();
    loop {
        let ack = on_b
            .request(json!({"type": "presence", "id": "p", "channel": "room:9"}))
            .await;
        if !members(&ack).contains(&"alice".to_owned()) {
            break;
        }
        assert!(
            killed.elapsed() < sluice::fleet::presence::VANISH_BOUND + Duration::from_secs(5),
            "alice was still present {:?} after node-0 died: {ack}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("a dead node's member vanished after {:?}", killed.elapsed());

    // The dead node's client reconnects to another and recovers there.
    let mut moved = dev.client(2).await;
    let ack = subscribe(&mut moved, "room:9", Some((offset, &epoch))).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let replayed = drain(&mut moved, Duration::from_millis(700)).await;
    assert_eq!(texts(&replayed), want);
}

#[tokio::test]
async fn presence_spans_the_fleet_and_join_leave_mean_the_whole_fleet() {
    let nats = Nats::start();
    let presence_rooms = |c: &mut Config| {
        let room = &mut c.tenants.get_mut("alpha").expect("alpha").channels[0];
        room.presence = true;
        room.presence_events = true;
        c.tenants
            .get_mut("alpha")
            .expect("alpha")
            .limits
            .presence_debounce_ms = 200;
    };
    let (ca, cb) = (cluster(&nats, "a"), cluster(&nats, "b"));
    let a = TestServer::start_with(move |c: &mut Config| {
        c.cluster = Some(ca);
        presence_rooms(c);
    })
    .await;
    let b = TestServer::start_with(move |c: &mut Config| {
        c.cluster = Some(cb);
        presence_rooms(c);
    })
    .await;
    let mut watcher = client(&b, "alpha", "watcher").await;
    subscribe(&mut watcher, "room:p", None).await;
    let mut alice = client(&a, "alpha", "alice").await;
    subscribe(&mut alice, "room:p", None).await;
    let kinds = |frames: &[Value], kind: &str| -> Vec<String> {
        frames
            .iter()
            .filter(|f| f["type"] == kind)
            .filter_map(|f| f["data"]["subject"].as_str().map(str::to_owned))
            .collect()
    };
    let got = drain(&mut watcher, Duration::from_millis(700)).await;
    assert_eq!(kinds(&got, "join"), vec!["watcher", "alice"], "{got:?}");
    // The list on B includes A's member.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ack = watcher
            .request(json!({"type": "presence", "id": "p", "channel": "room:p"}))
            .await;
        let subjects: Vec<&str> = ack["data"]["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(|m| m["subject"].as_str())
            .collect();
        if subjects == ["alice", "watcher"] {
            assert_eq!(ack["data"]["members"][0]["claims"]["name"], "alice example");
            break;
        }
        assert!(Instant::now() < deadline, "{ack}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Alice also connects on B: already in the fleet, so no second join;
    // she leaves B but stays on A: no leave.
    let mut alice_b = client(&b, "alpha", "alice").await;
    subscribe(&mut alice_b, "room:p", None).await;
    drop(alice_b);
    let got = drain(&mut watcher, Duration::from_millis(800)).await;
    assert!(kinds(&got, "join").is_empty(), "{got:?}");
    assert!(kinds(&got, "leave").is_empty(), "{got:?}");
    // She leaves the fleet: one leave.
    drop(alice);
    let got = drain(&mut watcher, Duration::from_millis(1200)).await;
    assert_eq!(kinds(&got, "leave"), vec!["alice"], "{got:?}");
}

#[tokio::test]
async fn the_per_subject_connection_cap_holds_across_nodes() {
    let nats = Nats::start();
    let capped = |name: &str| {
        let cluster = cluster(&nats, name);
        move |c: &mut Config| {
            c.cluster = Some(cluster);
            c.tenants
                .get_mut("alpha")
                .expect("alpha")
                .limits
                .max_connections_per_subject = 2;
        }
    };
    let a = TestServer::start_with(capped("a")).await;
    let b = TestServer::start_with(capped("b")).await;
    let token = a.token("alpha", "capped", "");
    let first = a.connect("alpha", &token).await.expect("first");
    let second = a.connect("alpha", &token).await.expect("second");
    // Once node A has reported its two, node B refuses a third.
    let wait = sluice::fleet::caps::GOSSIP_EVERY * 4;
    tokio::time::sleep(wait).await;
    let Err(e) = b.connect("alpha", &token).await else {
        panic!("a third connection of the subject was accepted on another node");
    };
    assert!(e.to_string().contains("429"), "{e}");
    b.assert_honest_client_served().await;
    // One leaves: the subject may connect on B again.
    drop(first);
    tokio::time::sleep(wait).await;
    let _third = b
        .connect("alpha", &token)
        .await
        .expect("under the cap again");
    drop(second);
}

/// A chat message; its text and seq when acknowledged.
async fn send(w: &mut Client, text: String) -> Option<(String, Option<u64>)> {
    let f = w
        .request(
            json!({"type": "chat.send", "id": text, "channel": "room:r3", "data": {"text": text}}),
        )
        .await;
    if f["type"] != "ack" {
        assert_eq!(f["code"], "unavailable", "{f}");
    }
    (f["type"] == "ack").then_some((text, f["data"]["seq"].as_u64()))
}

#[tokio::test]
async fn with_three_nats_servers_one_killed_nothing_acknowledged_is_lost() {
    let mut nats = NatsCluster::start();
    let node = |name: &str, urls: Vec<String>| {
        let name = name.to_owned();
        move |c: &mut Config| {
            c.cluster = Some(ClusterConfig {
                nats_urls: urls,
                node: name,
                user: None,
                password: None,
                token: None,
                credentials_file: None,
                replicas: 3,
                prefix: "sluice".into(),
            });
            let t = c.tenants.get_mut("alpha").expect("alpha");
            t.channels[0].history = Some(HistoryConfig {
                size: 1000,
                ttl_secs: 600,
            });
        }
    };
    // JetStream needs a meta leader before the first node can create its
    // streams: retry the start for a while.
    let start = |name: &'static str| {
        let urls = nats.urls();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let attempt = tokio::spawn(TestServer::start_with(node(name, urls.clone()))).await;
                match attempt {
                    Ok(s) => return s,
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => panic!("no node could start on the NATS cluster: {e}"),
                }
            }
        }
    };
    let a = start("a").await;
    let b = start("b").await;
    let mut writer = client(&a, "alpha", "writer").await;
    let mut acked = Vec::new();
    for i in 0..30 {
        if let Some(done) = send(&mut writer, format!("before{i}")).await {
            acked.push(done);
        }
    }
    assert_eq!(acked.len(), 30, "all acknowledged while every server is up");
    nats.kill(0);
    // Keep writing through the failover (answered `unavailable` while NATS
    // elects new leaders): whatever is acknowledged must stay.
    let resumed = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while acked.len() < 50 {
        assert!(
            Instant::now() < resumed,
            "writes did not resume after the failover"
        );
        if let Some(done) = send(&mut writer, format!("after{i}")).await {
            acked.push(done);
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A reader on the other node recovers the channel from the start.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut reader = loop {
        let token = b.token("alpha", "reader", "");
        match b.connect("alpha", &token).await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => panic!("node b never served again: {e}"),
        }
    };
    let first = subscribe(&mut reader, "room:none", None).await;
    let epoch = first["epoch"].as_str().expect("epoch").to_owned();
    let ack = subscribe(&mut reader, "room:r3", Some((0, &epoch))).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let replayed = texts(&drain(&mut reader, Duration::from_millis(1500)).await);
    for (text, _) in &acked {
        assert!(
            replayed.contains(text),
            "acknowledged {text} was lost: {replayed:?}"
        );
    }
    // And every acknowledged state write is there: the room's last seq.
    let max_seq = acked.iter().filter_map(|(_, s)| *s).max().expect("seqs");
    let join = reader
        .request(json!({"type": "chat.join", "id": "j", "channel": "room:r3"}))
        .await;
    let last = join["data"]["history"]
        .as_array()
        .and_then(|h| h.last())
        .and_then(|l| l["seq"].as_u64());
    assert!(last >= Some(max_seq), "state lost: {join} < {max_seq}");
}

#[test]
fn sluice_check_accepts_a_cluster_config_without_contacting_nats() {
    let dir = TempDir::new();
    let (cert, key) = sluice::server::tls::self_signed(&["localhost"]).expect("cert");
    std::fs::write(dir.0.join("cert.pem"), cert).expect("cert");
    std::fs::write(dir.0.join("key.pem"), key).expect("key");
    std::fs::write(dir.0.join("secret.key"), "k".repeat(48)).expect("secret");
    let tenant = "\n[tenants.t.auth]\nissuer = \"i\"\naudience = \"a\"\n[[tenants.t.auth.keys]]\nalgorithm = \"HS256\"\nsecret_file = \"secret.key\"\n";
    let config = dir.0.join("sluice.toml");
    // `sluice check` of the config with this [cluster] table.
    let check = |cluster: &str| {
        std::fs::write(
            &config,
            format!(
                "[server]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n{tenant}\n[cluster]\n{cluster}"
            ),
        )
        .expect("config");
        Command::new(sluice_tests::sluice_bin())
            .args(["check", "-c"])
            .arg(&config)
            .output()
            .expect("sluice check")
    };
    // A port nothing listens on.
    let dead = free_port();
    let out = check(&format!(
        "nats_urls = [\"nats://127.0.0.1:{dead}\"]\nnode = \"n1\"\n"
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("cluster: node n1"), "{stdout}");
    // A bad [cluster] table: every problem at once; an unknown field named.
    let refused = |cluster: &str| {
        let out = check(cluster);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = refused("nats_urls = [\"http://x\"]\nnode = \"a.b\"\nreplicas = 9\n");
    for want in ["http://x", "node `a.b`", "replicas must be 1 to 5"] {
        assert!(stderr.contains(want), "{want}: {stderr}");
    }
    let stderr = refused("nats_urls = [\"nats://127.0.0.1:4222\"]\nnode = \"n\"\nsurprise = 1\n");
    assert!(stderr.contains("surprise"), "{stderr}");
}

/// A TCP proxy in front of a nats-server that the test can cut: while cut,
/// every connection through it is dropped and new ones are closed at once
/// (the node's path to NATS is gone; the others' is not).
struct CutProxy {
    url: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    async fn start(nats: &Nats) -> Self {
        let to: SocketAddr = nats
            .url()
            .trim_start_matches("nats://")
            .parse()
            .expect("a NATS address");
        Self::to(to).await
    }

    /// A proxy to any TCP address (a NATS route port, say).
    async fn to(to: SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy");
        let url = format!("nats://{}", listener.local_addr().expect("addr"));
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, l) = (cut.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l.lock().expect("links").push(link.abort_handle());
            }
        });
        Self {
            url,
            cut,
            links,
            accept,
        }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }

    fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Read from `c` until an event with `text` arrived (or `within` passed):
/// every frame on the way.
async fn until_text(c: &mut Client, text: &str, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let Ok(f) = tokio::time::timeout(Duration::from_millis(500), c.recv()).await else {
            continue;
        };
        let done = f["type"] == "event" && f["data"]["text"] == text;
        out.push(f);
        if done {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_delivers_what_was_stored_meanwhile_on_open_connections() {
    // docs/faults.md, Found 3: node b's path to NATS is cut while node a's
    // writer goes on; the events stored meanwhile must reach b's open
    // subscriber once b is back, before the next one and in order (the
    // relay reads them back from the stream). Then the channel's history is
    // purged behind b's back: b cannot know what it missed, so its
    // subscriber is closed (1013) and, resuming with `since`, told
    // `recovered: false`.
    let nats = Nats::start();
    let proxy = CutProxy::start(&nats).await;
    let a = node(&nats, "a", Some(1000)).await;
    let b = node_via(&nats, &proxy, "b", Some(1000)).await;
    let b_admin = b.admin.expect("admin listener");
    let mut reader = client(&b, "alpha", "reader").await;
    let ack = subscribe(&mut reader, "room:cut", None).await;
    let epoch = ack["epoch"].as_str().expect("an epoch").to_owned();
    let mut writer = client(&a, "alpha", "writer").await;
    let mut sent = Vec::new();
    for i in 0..5 {
        let text = format!("before-{i}");
        send_chat(&mut writer, "room:cut", &text).await;
        sent.push(text);
    }
    let mut got = until_text(&mut reader, "before-4", Duration::from_secs(10)).await;

    proxy.cut();
    wait_ready(b_admin, false).await;
    for i in 0..20 {
        let text = format!("during-{i}");
        send_chat(&mut writer, "room:cut", &text).await;
        sent.push(text);
    }
    proxy.heal();
    wait_ready(b_admin, true).await;
    for i in 0..5 {
        let text = format!("after-{i}");
        send_chat(&mut writer, "room:cut", &text).await;
        sent.push(text);
    }
    got.extend(until_text(&mut reader, "after-4", Duration::from_secs(15)).await);
    assert_eq!(texts(&got), sent, "b's open connection, across the cut");
    let offsets: Vec<u64> = got
        .iter()
        .filter(|f| f["type"] == "event")
        .filter_map(|f| f["offset"].as_u64())
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets in order: {offsets:?}"
    );
    let last = *offsets.last().expect("events");
    reader.assert_usable().await;

    // Now the history is dropped while b is cut off: nothing can be read
    // back, and b's subscriber must not go on as if nothing happened.
    proxy.cut();
    wait_ready(b_admin, false).await;
    send_chat(&mut writer, "room:cut", "lost-0").await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("NATS"));
    js.get_stream("SLUICE_HISTORY_alpha")
        .await
        .expect("alpha's history stream")
        .purge()
        .await
        .expect("purged");
    proxy.heal();
    wait_ready(b_admin, true).await;
    send_chat(&mut writer, "room:cut", "after-purge").await;
    assert_eq!(reader.closed().await, Some(1013), "told to resume");
    let mut back = client(&b, "alpha", "reader").await;
    let ack = subscribe(&mut back, "room:cut", Some((last, &epoch))).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    b.assert_honest_client_served().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_whose_position_cannot_be_looked_up_is_refused_not_acked_at_offset_0() {
    // docs/faults.md, Found 5: node b's relay for a channel none of its
    // clients is subscribed to does not know the channel's position; the
    // subscribe looks it up in the stream. With b cut off from NATS that
    // lookup fails: the subscribe was acknowledged at offset 0 in the
    // channel's real epoch, a position it never had. It must be refused
    // `unavailable` instead, and acknowledged at the channel's real
    // position once b reaches NATS again.
    a_subscribe_during_a_cut_is_refused_then_acked_at_the_real_position(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_on_a_node_that_never_opened_the_history_is_refused_not_acked_without_an_epoch()
{
    // docs/faults.md, Found 7: node b has not opened the tenant's history
    // stream when it is cut off from NATS, so it knows no epoch at all; the
    // subscribe was acknowledged with `"epoch":""` and offset 0, and the
    // subscriber took the live events that followed for another epoch's.
    // It must be refused `unavailable` too.
    a_subscribe_during_a_cut_is_refused_then_acked_at_the_real_position(false).await;
}

async fn a_subscribe_during_a_cut_is_refused_then_acked_at_the_real_position(
    stream_opened_before: bool,
) {
    let nats = Nats::start();
    let proxy = CutProxy::start(&nats).await;
    let a = node(&nats, "a", Some(1000)).await;
    let b = node_via(&nats, &proxy, "b", Some(1000)).await;
    let b_admin = b.admin.expect("admin listener");
    let mut reader = client(&b, "alpha", "reader").await;
    if stream_opened_before {
        // b opens alpha's history stream now: later, only the lookup fails.
        subscribe(&mut reader, "room:open", None).await;
    }
    let mut writer = client(&a, "alpha", "writer").await;
    for i in 0..3 {
        send_chat(&mut writer, "room:late", &format!("m-{i}")).await;
    }
    let mut watcher = client(&a, "alpha", "watcher").await;
    let on_a = subscribe(&mut watcher, "room:late", None).await;
    let last = on_a["offset"].as_u64().expect("an offset");
    assert!(last > 0, "{on_a}");

    // The answer takes ~16 s (the relay's subscription barrier times out,
    // then three lookups); b sheds its connections once cut off for 10 s,
    // but only between messages, so the answer comes first.
    proxy.cut();
    let cut = Instant::now();
    reader
        .send(json!({"type": "subscribe", "id": "late", "channel": "room:late"}))
        .await;
    let answer = loop {
        let f = reader.recv_within(Duration::from_secs(30)).await;
        if f["id"] == "late" {
            break f;
        }
    };
    eprintln!("answered {:?} after the cut: {answer}", cut.elapsed());
    assert_eq!(answer["type"], "error", "not refused: {answer}");
    assert_eq!(answer["code"], "unavailable", "{answer}");
    assert!(answer["retry_after_ms"].as_u64().is_some(), "{answer}");

    wait_ready(b_admin, false).await;
    proxy.heal();
    wait_ready(b_admin, true).await;
    let mut reader = client(&b, "alpha", "reader").await;
    let ack = subscribe(&mut reader, "room:late", None).await;
    assert_eq!(ack["offset"].as_u64(), Some(last), "{ack}");
    assert_eq!(ack["epoch"], on_a["epoch"], "{ack}");
    send_chat(&mut writer, "room:late", "after").await;
    let event = reader.next_event().await;
    assert_eq!(event["data"]["text"], "after", "{event}");
    assert!(event["offset"].as_u64() > Some(last), "{event}");
    b.assert_honest_client_served().await;
}

/// Three nats-servers `s0`, `s1`, `s2` in one JetStream cluster, every
/// route of `s2` through a [`CutProxy`] (each server advertises a proxy in
/// front of its route port, so no route learnt by gossip bypasses one):
/// cutting them partitions `s2` from the other two while clients still
/// reach it, as the fault suite's `partition-nats` does.
struct PartitionableNats {
    servers: Vec<sluice::nats_server::NatsServer>,
    proxies: Vec<CutProxy>,
    _dir: TempDir,
}

impl PartitionableNats {
    async fn start() -> Self {
        use sluice::nats_server::{NatsOptions, NatsRoutes, NatsServer};
        let dir = TempDir::new();
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut proxies = Vec::new();
        for port in &routes {
            proxies.push(CutProxy::to(SocketAddr::from(([127, 0, 0, 1], *port))).await);
        }
        let route = |i: usize| format!("nats://127.0.0.1:{}", routes[i]);
        // s0 and s1 route to each other directly; s2 reaches s0 through
        // its proxy, and s1 learns of s2 (at s2's proxy) from s0.
        let peers = [vec![route(1)], vec![route(0)], vec![proxies[0].url.clone()]];
        let mut servers = Vec::new();
        for (i, peers) in peers.into_iter().enumerate() {
            let conf = dir.0.join(format!("s{i}.conf"));
            let advertise = proxies[i].url.trim_start_matches("nats://");
            std::fs::write(&conf, format!("cluster {{ advertise: \"{advertise}\" }}\n"))
                .expect("nats config");
            let options = NatsOptions {
                name: Some(format!("s{i}")),
                routes: Some(NatsRoutes {
                    cluster: "sluice-partition".into(),
                    port: routes[i],
                    peers,
                }),
                config_file: Some(conf),
                ..NatsOptions::new(
                    std::net::Ipv4Addr::LOCALHOST.into(),
                    dir.0.join(format!("s{i}")),
                )
            };
            let bin = sluice_tests::cluster::nats_server_bin();
            servers.push(NatsServer::start(&bin, options).expect("nats-server started"));
        }
        Self {
            servers,
            proxies,
            _dir: dir,
        }
    }

    fn url(&self, i: usize) -> String {
        self.servers[i].url()
    }

    /// Cut `s2` off from `s0` and `s1` (and back with [`Self::heal`]).
    fn partition(&self) {
        self.proxies.iter().for_each(CutProxy::cut);
    }

    fn heal(&self) {
        self.proxies.iter().for_each(CutProxy::heal);
    }
}

/// A fleet node with three replicas on `urls`, started once JetStream has
/// a meta leader (the first start creates the streams).
async fn r3_node(name: &str, urls: Vec<String>) -> TestServer {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (name, urls) = (name.to_owned(), urls.clone());
        let attempt = tokio::spawn(TestServer::start_with(move |c: &mut Config| {
            node_config(None)(c);
            c.cluster = Some(ClusterConfig {
                nats_urls: urls,
                node: name,
                user: None,
                password: None,
                token: None,
                credentials_file: None,
                replicas: 3,
                prefix: "sluice".into(),
            });
        }))
        .await;
        match attempt {
            Ok(s) => return s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("no node could start on the NATS cluster: {e}"),
        }
    }
}

/// The `seq` of the last line a `chat.join` of `room` answered with, or
/// the error frame.
async fn joined_seq(c: &mut Client, room: &str) -> Result<Option<u64>, Value> {
    let answer = c
        .request(json!({"type": "chat.join", "id": "j", "channel": room}))
        .await;
    if answer["type"] != "ack" {
        return Err(answer);
    }
    Ok(answer["data"]["history"]
        .as_array()
        .and_then(|h| h.last())
        .and_then(|l| l["seq"].as_u64()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_read_through_a_partitioned_nats_server_is_current_or_refused() {
    // docs/faults.md, Found 4: node c's only NATS server, s2, is cut off
    // from s0 and s1 while node a goes on writing through them (a
    // majority: acknowledged). s2 still holds a replica of the state
    // bucket, as it was; a KV direct get, which any replica answers, read
    // the room from it: the past. A read must now see the acknowledged
    // writes or fail (s2 cannot reach the stream's leader), never answer
    // from before them.
    const STATE: &str = "KV_sluice_state";
    let nats = PartitionableNats::start().await;
    let a = r3_node("a", vec![nats.url(0), nats.url(1)]).await;
    let c = r3_node("c", vec![nats.url(2)]).await;
    let admin = async_nats::connect(nats.url(0)).await.expect("NATS");
    let js = async_nats::jetstream::new(admin.clone());
    // The state stream's leader must be on the majority side: step it down
    // while s2 leads (a stepdown elects another peer).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut stream = js.get_stream(STATE).await.expect("the state stream");
        let info = stream.info().await.expect("stream info");
        let cluster = info.cluster.as_ref().expect("a clustered stream");
        let leader = cluster.leader.clone().unwrap_or_default();
        let current = cluster.replicas.len() == 2 && cluster.replicas.iter().all(|p| p.current);
        if !leader.is_empty() && leader != "s2" && current {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no leader off s2 with current replicas: {cluster:?}"
        );
        if leader == "s2" {
            let _ = admin
                .request(
                    format!("$JS.API.STREAM.LEADER.STEPDOWN.{STATE}"),
                    bytes::Bytes::new(),
                )
                .await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut writer = client(&a, "alpha", "writer").await;
    let mut reader = client(&c, "alpha", "reader").await;
    for i in 0..3 {
        send_chat(&mut writer, "room:lag", &format!("before-{i}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while joined_seq(&mut reader, "room:lag").await != Ok(Some(3)) {
        assert!(Instant::now() < deadline, "c never read the room's 3 lines");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    nats.partition();
    for i in 0..5 {
        send_chat(&mut writer, "room:lag", &format!("during-{i}")).await;
    }
    // Acknowledged: the room is at 8. Read it on c, twice (the second
    // after s2 noticed it lost its routes).
    for _ in 0..2 {
        let read = joined_seq(&mut reader, "room:lag").await;
        eprintln!("c's read while s2 is cut off: {read:?}");
        match read {
            Ok(seq) => assert_eq!(
                seq,
                Some(8),
                "a read begun after the 8th line was acknowledged answered from the past"
            ),
            Err(e) => assert_eq!(e["code"], "unavailable", "{e}"),
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    nats.heal();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match joined_seq(&mut reader, "room:lag").await {
            Ok(seq) => {
                assert_eq!(seq, Some(8), "after the heal");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "c never read again: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A read answering again does not mean the state stream takes writes
    // yet (its leader may still be settling after the heal): a write
    // refused `unavailable` commits nothing and is asked again, as a
    // client does.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = reader
            .request(
                json!({"type": "chat.send", "id": "after", "channel": "room:lag",
                "data": {"text": "after"}}),
            )
            .await;
        if answer["type"] == "ack" {
            break;
        }
        assert_eq!(answer["code"], "unavailable", "{answer}");
        assert!(Instant::now() < deadline, "c never wrote again: {answer}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(joined_seq(&mut writer, "room:lag").await, Ok(Some(9)));
    c.assert_honest_client_served().await;
}
