//! One tenant cannot take what another needs, in a fleet (issue 26,
//! findings 6-10): history bounded per tenant on JetStream, presence that
//! scales with thousands of channels, connection caps that fail closed, a
//! recovery that does not stall live delivery, and nothing from NATS
//! trusted as it comes. Against a real nats-server on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::config::{Config, HistoryConfig};
use sluice_tests::server::{Client, TestServer};

use sluice_tests::cluster::{Nats, cluster};

/// Rooms keep `history` events (if any) with presence and its events;
/// rate limits out of the way.
fn rooms(history: Option<usize>) -> impl Fn(&mut Config) + Clone {
    move |c: &mut Config| {
        for t in ["alpha", "beta"] {
            let t = c.tenants.get_mut(t).expect("tenant");
            let room = &mut t.channels[0];
            room.history = history.map(|size| HistoryConfig {
                size,
                ttl_secs: 600,
            });
            room.presence = true;
            room.presence_events = true;
            let l = &mut t.limits;
            l.messages_per_sec = 100_000;
            l.message_burst = 100_000;
            l.subject_messages_per_sec = 100_000;
            l.tenant_messages_per_sec = 100_000;
            l.presence_debounce_ms = 200;
        }
    }
}

async fn node(
    nats: &Nats,
    name: &str,
    customize: impl FnOnce(&mut Config) + Send + 'static,
) -> TestServer {
    let cluster = cluster(nats, name);
    TestServer::start_with(move |c: &mut Config| {
        c.cluster = Some(cluster);
        customize(c);
    })
    .await
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

/// The misbehave handler publishes `{"hi":true}` (or 32 KiB) to `room`.
async fn publish(c: &mut Client, room: &str, big: bool) {
    let mode = if big { "publish-big" } else { "publish" };
    let ack = c
        .request(json!({"type": "misbehave", "id": room, "data": {"mode": mode, "target": room}}))
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

async fn nats_client(nats: &Nats) -> async_nats::Client {
    async_nats::connect(nats.url()).await.expect("NATS")
}

/// Alpha's channels and messages in JetStream, over every stream.
async fn alpha_in_jetstream(nats: &Nats) -> (usize, usize) {
    use futures_util::StreamExt as _;
    let js = async_nats::jetstream::new(nats_client(nats).await);
    let mut names = js.stream_names();
    let (mut channels, mut messages) = (0, 0);
    while let Some(Ok(name)) = names.next().await {
        let stream = js.get_stream(&name).await.expect("stream");
        let mut info = stream
            .info_with_subjects("sluice.h.alpha.*")
            .await
            .expect("stream info");
        while let Some(Ok((_, n))) = info.next().await {
            channels += 1;
            messages += n;
        }
    }
    (channels, messages)
}

#[tokio::test]
async fn a_fresh_channel_per_message_stays_within_the_tenants_jetstream_limits() {
    let nats = Nats::start();
    let quotas = |c: &mut Config| {
        rooms(Some(100))(c);
        let q = &mut c.tenants.get_mut("alpha").expect("alpha").quotas;
        q.history_channels = 20;
        q.history_bytes = 96 << 10;
    };
    let a = node(&nats, "a", quotas).await;
    let b = node(&nats, "b", quotas).await;
    // Beta's room, read later from the other node.
    let mut beta = client(&a, "beta", "writer").await;
    let epoch = subscribe(&mut beta, "room:beta", None).await["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    for _ in 0..10 {
        publish(&mut beta, "room:beta", false).await;
    }

    let mut alpha = client(&a, "alpha", "flood").await;
    for i in 0..200 {
        publish(&mut alpha, &format!("room:fresh{i}"), false).await;
    }
    for i in 0..10 {
        publish(&mut alpha, &format!("room:big{i}"), true).await;
    }
    let (channels, messages) = alpha_in_jetstream(&nats).await;
    assert!(channels <= 20, "alpha has {channels} channels in JetStream");
    // 96 KiB hold at most two 32 KiB events and the small ones.
    assert!(
        messages <= 2 + 20,
        "alpha keeps {messages} messages in JetStream"
    );

    // Beta's history is whole, from the other node.
    let mut reader = client(&b, "beta", "reader").await;
    let ack = subscribe(&mut reader, "room:beta", Some((0, &epoch))).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let events = drain(&mut reader, Duration::from_millis(700)).await;
    assert_eq!(events.iter().filter(|f| f["type"] == "event").count(), 10);
    // And alpha's newest channel is still there.
    let mut again = client(&b, "alpha", "reader").await;
    let fresh = subscribe(&mut again, "room:big9", None).await;
    assert!(fresh["offset"].as_u64() > Some(0), "{fresh}");
    b.assert_honest_client_served().await;
}

/// The subjects listed by a `presence` answer.
fn members(ack: &Value) -> Vec<String> {
    ack["data"]["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["subject"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Poll `presence` of `channel` on `c` until `subject` is listed; how
/// long it took.
async fn until_listed(c: &mut Client, channel: &str, subject: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let ack = c
            .request(json!({"type": "presence", "id": "p", "channel": channel}))
            .await;
        if members(&ack).iter().any(|m| m == subject) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{subject} not listed in {channel} after {within:?}: {ack}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn thousands_of_presence_channels_neither_stall_changes_nor_outlast_the_ttl() {
    const HOLDERS: usize = 24;
    const EACH: usize = 250;
    let nats = Nats::start();
    let a = node(&nats, "a", rooms(None)).await;
    let b = node(&nats, "b", rooms(None)).await;

    // 6,000 presence channels on node A, each with a member.
    let holders = futures_util::future::join_all((0..HOLDERS).map(|h| {
        let a = &a;
        async move {
            let mut c = client(a, "alpha", &format!("holder{h}")).await;
            for i in 0..EACH {
                c.send(json!({"type": "subscribe", "id": i.to_string(),
                    "channel": format!("room:p{h}-{i}")}))
                    .await;
            }
            let mut acks = 0;
            while acks < EACH {
                let f = c.recv().await;
                assert_ne!(f["type"], "error", "{f}");
                acks += usize::from(f["type"] == "ack");
            }
            c
        }
    }))
    .await;
    let mut on_b = client(&b, "alpha", "watcher").await;
    subscribe(&mut on_b, "room:watch", None).await;
    let mut alice_a = client(&a, "alpha", "alice").await;
    subscribe(&mut alice_a, "room:watch", None).await;
    let mut alice_b = client(&b, "alpha", "alice").await;
    subscribe(&mut alice_b, "room:watch", None).await;
    // Node B sees every one of them.
    for h in [0, HOLDERS - 1] {
        let channel = format!("room:p{h}-{}", EACH - 1);
        until_listed(
            &mut on_b,
            &channel,
            &format!("holder{h}"),
            Duration::from_secs(60),
        )
        .await;
    }
    let _ = drain(&mut on_b, Duration::from_millis(300)).await;
    let started = Instant::now();

    // Over three heartbeats and past the TTL: a change on A shows on B at
    // once, whatever A's thousands of channels cost to keep alive.
    let mut prober = client(&a, "alpha", "prober").await;
    let mut slowest = Duration::ZERO;
    let mut j = 0;
    while started.elapsed() < sluice::fleet::presence::ENTRY_TTL + Duration::from_secs(4) {
        let channel = format!("room:probe{j}");
        subscribe(&mut prober, &channel, None).await;
        let took = until_listed(&mut on_b, &channel, "prober", Duration::from_secs(20)).await;
        slowest = slowest.max(took);
        j += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        slowest < Duration::from_millis(1500),
        "a join on A took {slowest:?} to show on B ({j} probes)"
    );
    // A's old entries are all still there on B.
    for h in [0, HOLDERS / 2, HOLDERS - 1] {
        let channel = format!("room:p{h}-0");
        until_listed(
            &mut on_b,
            &channel,
            &format!("holder{h}"),
            Duration::from_secs(1),
        )
        .await;
    }
    // Alice leaves B but is still on A: no `leave` for her on B.
    let _ = drain(&mut on_b, Duration::from_millis(200)).await;
    drop(alice_b);
    let frames = drain(&mut on_b, Duration::from_millis(1500)).await;
    let leaves: Vec<&Value> = frames.iter().filter(|f| f["type"] == "leave").collect();
    assert!(leaves.is_empty(), "a spurious leave: {leaves:?}");
    // She leaves the fleet: one leave.
    drop(alice_a);
    let frames = drain(&mut on_b, Duration::from_millis(1500)).await;
    let leaves: Vec<&Value> = frames.iter().filter(|f| f["type"] == "leave").collect();
    assert_eq!(leaves.len(), 1, "{frames:?}");
    drop(holders);
    b.assert_honest_client_served().await;
}

#[tokio::test]
async fn a_tenant_at_its_cap_stays_there_with_a_report_over_max_payload_or_a_silent_node() {
    // Reports of a node with 150 subjects do not fit in 4 KiB.
    let nats = Nats::start_with_config("max_payload: 4096\n");
    let capped = |c: &mut Config| {
        c.tenants
            .get_mut("alpha")
            .expect("alpha")
            .limits
            .max_connections = 160;
        c.tenants
            .get_mut("beta")
            .expect("beta")
            .limits
            .max_connections = 55;
    };
    let a = node(&nats, "a", capped).await;
    let b = node(&nats, "b", capped).await;
    let mut held = Vec::new();
    for i in 0..150 {
        held.push(client(&a, "alpha", &format!("a-subject-with-a-long-name-{i:04}")).await);
    }
    tokio::time::sleep(sluice::fleet::caps::GOSSIP_EVERY * 6).await;
    let mut on_b = Vec::new();
    for i in 0..10 {
        on_b.push(client(&b, "alpha", &format!("b{i}")).await);
    }
    let token = b.token("alpha", "one-too-many", "");
    let Err(e) = b.connect("alpha", &token).await else {
        panic!("alpha went over its cap of 160 across the fleet");
    };
    assert!(e.to_string().contains("429"), "{e}");

    // A node that falls silent (its last report: 50 of beta's
    // connections) still counts past the old 5 s, for the hold it named.
    let report = json!({"node": "ghost", "tenants": {"beta": [50, {"x": 50}]},
        "round": 1, "part": 0, "parts": 1, "hold_ms": 12_000});
    let nc = nats_client(&nats).await;
    nc.publish("sluice.conns", report.to_string().into())
        .await
        .expect("publish");
    nc.flush().await.expect("flush");
    let heard = Instant::now();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let mut betas = Vec::new();
    for i in 0..5 {
        betas.push(client(&b, "beta", &format!("beta{i}")).await);
    }
    let token = b.token("beta", "sixth", "");
    let Err(e) = b.connect("beta", &token).await else {
        panic!("beta went over its cap while a silent node's connections were forgotten");
    };
    assert!(e.to_string().contains("429"), "{e}");
    // Past the hold the silent node no longer counts.
    tokio::time::sleep(Duration::from_secs(13).saturating_sub(heard.elapsed())).await;
    betas.push(
        b.connect("beta", &token)
            .await
            .expect("served after the hold"),
    );
    drop(held);
}

#[tokio::test]
async fn a_node_cut_off_from_the_counts_sheds_its_connections_before_the_others_forget_them() {
    let mut nats = Nats::start();
    let quick_pings = |c: &mut Config| c.server.ping_interval_ms = 1000;
    let a = node(&nats, "a", quick_pings).await;
    let mut held = client(&a, "alpha", "held").await;
    nats.kill();
    let cut = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(30), held.closed())
        .await
        .expect("the connection was closed");
    let after = cut.elapsed();
    assert_eq!(closed, Some(1001));
    assert!(
        after >= sluice::fleet::caps::SHED_AFTER - Duration::from_secs(1),
        "closed after {after:?}"
    );
    // Within the hold it announced: by the time others forget it, it holds nothing.
    assert!(
        after < sluice::fleet::caps::SHED_AFTER + Duration::from_secs(4),
        "{after:?}"
    );
}

#[tokio::test]
async fn a_large_recovery_does_not_stall_live_delivery_and_stays_exactly_once_in_order() {
    const MISSED: usize = 3000;
    let nats = Nats::start();
    let a = node(&nats, "a", rooms(Some(10_000))).await;
    let b = node(&nats, "b", rooms(Some(10_000))).await;
    let mut other = client(&a, "alpha", "other").await;
    let epoch = subscribe(&mut other, "room:big", None).await["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    let mut writer = client(&b, "alpha", "writer").await;
    for i in 0..MISSED {
        writer
            .send(json!({"type": "misbehave", "id": i.to_string(),
                "data": {"mode": "publish", "target": "room:big"}}))
            .await;
    }
    let mut acked = 0;
    while acked < MISSED {
        let f = writer.recv().await;
        assert_ne!(f["type"], "error", "{f}");
        acked += usize::from(f["type"] == "ack");
    }
    let offsets = |frames: &[Value]| -> Vec<u64> {
        frames
            .iter()
            .filter(|f| f["type"] == "event")
            .filter_map(|f| f["offset"].as_u64())
            .collect()
    };
    let mut seen = offsets(&drain(&mut other, Duration::from_millis(1000)).await);
    assert_eq!(seen.len(), MISSED);

    // A client recovers everything on node A while live events flow: each
    // is published on B and waited for on A by the other subscriber.
    let mut recovering = client(&a, "alpha", "recovering").await;
    let acked = Arc::new(AtomicBool::new(false));
    let flag = acked.clone();
    let epoch2 = epoch.clone();
    let reader = tokio::spawn(async move {
        recovering
            .send(
                json!({"type": "subscribe", "id": "r", "channel": "room:big",
                "data": {"since": {"offset": 0, "epoch": epoch2}}}),
            )
            .await;
        let mut frames = Vec::new();
        loop {
            // The answer may take a while (it comes after the replay is
            // read); then frames follow each other closely.
            let wait = if frames.is_empty() { 30 } else { 3 };
            let Ok(f) = tokio::time::timeout(Duration::from_secs(wait), recovering.recv()).await
            else {
                break;
            };
            if f["type"] == "ack" {
                flag.store(true, Ordering::SeqCst);
            }
            frames.push(f);
        }
        frames
    });
    let mut during = 0;
    let started = Instant::now();
    while !acked.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
        publish(&mut writer, "room:big", false).await;
        let f = tokio::time::timeout(Duration::from_secs(30), other.next_event())
            .await
            .expect("a live event reached the other subscriber");
        seen.push(f["offset"].as_u64().expect("offset"));
        if !acked.load(Ordering::SeqCst) {
            during += 1;
        }
    }
    // A few more after the recovery.
    for _ in 0..5 {
        publish(&mut writer, "room:big", false).await;
    }
    seen.extend(offsets(
        &drain(&mut other, Duration::from_millis(1000)).await,
    ));
    let frames = reader.await.expect("reader");
    assert_eq!(frames[0]["type"], "ack", "{:?}", frames.first());
    assert_eq!(frames[0]["data"]["recovered"], true, "{}", frames[0]);
    assert!(
        during >= 5,
        "only {during} live events reached the other subscriber while {MISSED} were recovered"
    );
    // Every event exactly once, in order: what the other subscriber saw.
    assert_eq!(offsets(&frames), seen);
    b.assert_honest_client_served().await;
}

#[tokio::test]
async fn frames_forged_on_nats_never_reach_a_client() {
    let nats = Nats::start();
    let a = node(&nats, "a", rooms(Some(100))).await;
    let mut reader = client(&a, "alpha", "reader").await;
    subscribe(&mut reader, "room:x", None).await;
    subscribe(&mut reader, "room:plain", None).await;
    let nc = nats_client(&nats).await;
    let forged = [
        ("sluice.d.alpha.room:x.e", "not json".to_owned()),
        (
            "sluice.d.alpha.room:x.e",
            json!({"type": "welcome", "data": {}}).to_string(),
        ),
        (
            "sluice.d.alpha.room:x.e",
            json!({"type": "event", "channel": "room:other", "data": {}}).to_string(),
        ),
        (
            "sluice.d.alpha.room:x.r",
            json!({"forged": true}).to_string(),
        ),
        (
            "sluice.s.alpha.reader",
            json!({"type": "ack", "id": "1", "data": {}}).to_string(),
        ),
    ];
    for (subject, payload) in forged {
        nc.publish(subject, payload.into()).await.expect("publish");
    }
    // A history event with a forged offset, as if republished by a stream.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Sequence", "999999999");
    nc.publish_with_headers("sluice.d.alpha.room:x.r", headers, "{}".into())
        .await
        .expect("publish");
    nc.flush().await.expect("flush");
    let mut writer = client(&a, "alpha", "writer").await;
    publish(&mut writer, "room:x", false).await;
    publish(&mut writer, "room:plain", false).await;
    let mut got = drain(&mut reader, Duration::from_millis(1000)).await;
    // The real subjects' presence (room:plain has presence events) may
    // arrive now too; nothing else may.
    got.retain(|f| {
        let presence = f["type"] == "join" || f["type"] == "leave";
        !(presence
            && f["channel"] == "room:plain"
            && ["reader", "writer"].contains(&f["data"]["subject"].as_str().unwrap_or("")))
    });
    assert_eq!(got.len(), 2, "only the two real events: {got:?}");
    assert!(
        got.iter()
            .all(|f| f["type"] == "event" && f["data"] == json!({"hi": true}))
    );
    assert_eq!(got[0]["offset"], 1, "{got:?}");
}
