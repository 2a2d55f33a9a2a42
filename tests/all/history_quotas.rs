//! History is bounded across channels (issue 26, finding 6): a tenant's
//! quota (`[tenants.<id>.quotas] history_channels`, `history_bytes`) and
//! the node's (`[store] history_channels`, `history_bytes`), also when the
//! store is read back at start. A handler publishing to a fresh channel
//! per message only ever evicts its own tenant's history.

use serde_json::{Value, json};
use sluice::config::{Config, HistoryConfig};
use sluice_tests::server::{Client, TempDir, TestServer};

/// Rooms of alpha and beta keep 100 events; rate limits out of the way.
fn rooms_with_history(c: &mut Config) {
    for t in ["alpha", "beta"] {
        let t = c.tenants.get_mut(t).expect("tenant");
        t.channels[0].history = Some(HistoryConfig {
            size: 100,
            ttl_secs: 600,
        });
        let l = &mut t.limits;
        l.messages_per_sec = 100_000;
        l.message_burst = 100_000;
        l.subject_messages_per_sec = 100_000;
        l.tenant_messages_per_sec = 100_000;
    }
}

async fn client(server: &TestServer, tenant: &str) -> Client {
    let token = server.token(tenant, "publisher", "chat:write");
    server.connect(tenant, &token).await.expect("connect")
}

/// The misbehave handler publishes to `room` (`{"hi":true}`, or 32 KiB
/// with `big`): `n` times, acknowledged each time.
async fn publish(c: &mut Client, room: &str, big: bool) {
    let mode = if big { "publish-big" } else { "publish" };
    let ack = c
        .request(json!({"type": "misbehave", "id": room, "data": {"mode": mode, "target": room}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

/// Subscribe with `since`: the ack's data, and the events replayed.
async fn recover(c: &mut Client, room: &str, since: (u64, &str)) -> (Value, usize) {
    let ack = c
        .request(json!({"type": "subscribe", "id": "s", "channel": room,
            "data": {"since": {"offset": since.0, "epoch": since.1}}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let mut events = 0;
    while let Ok(f) = tokio::time::timeout(std::time::Duration::from_millis(300), c.recv()).await {
        if f["type"] == "event" && f["channel"] == room {
            events += 1;
        }
    }
    (ack["data"].clone(), events)
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

/// Beta's room with `n` events: its epoch.
async fn beta_room(server: &TestServer, n: usize) -> String {
    let mut beta = client(server, "beta").await;
    let ack = beta
        .request(json!({"type": "subscribe", "id": "s", "channel": "room:beta"}))
        .await;
    let epoch = ack["data"]["epoch"].as_str().expect("epoch").to_owned();
    for _ in 0..n {
        publish(&mut beta, "room:beta", false).await;
    }
    epoch
}

async fn assert_beta_untouched(server: &TestServer, epoch: &str, n: usize) {
    let mut reader = client(server, "beta").await;
    let (ack, events) = recover(&mut reader, "room:beta", (0, epoch)).await;
    assert_eq!(ack["recovered"], true, "beta's history was touched: {ack}");
    assert_eq!(events, n);
}

#[tokio::test]
async fn a_fresh_channel_per_message_stays_within_the_tenants_quota_and_spares_other_tenants() {
    let server = TestServer::start_with(|c: &mut Config| {
        rooms_with_history(c);
        let q = &mut c.tenants.get_mut("alpha").expect("alpha").quotas;
        q.history_channels = 20;
        q.history_bytes = 16 << 10;
    })
    .await;
    let beta_epoch = beta_room(&server, 10).await;

    let mut alpha = client(&server, "alpha").await;
    let rooms: Vec<String> = (0..300u64)
        .map(|i| format!("room:{i}-{:016x}", i.wrapping_mul(0x9E37_79B9)))
        .collect();
    // A reader of alpha's first room, to try resuming there later.
    let mut reader = client(&server, "alpha").await;
    let ack = reader
        .request(json!({"type": "subscribe", "id": "first", "channel": rooms[0]}))
        .await;
    let first_epoch = ack["data"]["epoch"].as_str().expect("epoch").to_owned();
    for room in &rooms {
        publish(&mut alpha, room, false).await;
    }
    let _ = recover_drain(&mut reader).await;
    let channels = metric(&server, "sluice_history_channels", "alpha").await;
    let bytes = metric(&server, "sluice_history_bytes", "alpha").await;
    assert!(channels <= 20, "alpha keeps {channels} channels of history");
    assert!(bytes <= 16 << 10, "alpha keeps {bytes} bytes of history");
    assert_eq!(metric(&server, "sluice_history_channels", "beta").await, 1);
    assert_beta_untouched(&server, &beta_epoch, 10).await;

    // What alpha published last is kept; its first rooms were dropped, so
    // a client resuming there is told it missed events.
    let last = rooms.last().expect("rooms");
    let ack = reader
        .request(json!({"type": "subscribe", "id": "e", "channel": last}))
        .await;
    let epoch = ack["data"]["epoch"].as_str().expect("epoch").to_owned();
    assert_eq!(ack["data"]["offset"], 1, "{ack}");
    let (ack, events) = recover(&mut reader, last, (0, &epoch)).await;
    assert_eq!(
        (ack["recovered"].clone(), events),
        (json!(true), 1),
        "{ack}"
    );
    let (ack, _) = recover(&mut reader, &rooms[0], (1, &first_epoch)).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    server.assert_honest_client_served().await;
}

/// Whatever arrived for a while.
async fn recover_drain(c: &mut Client) -> usize {
    let mut n = 0;
    while tokio::time::timeout(std::time::Duration::from_millis(300), c.recv())
        .await
        .is_ok()
    {
        n += 1;
    }
    n
}

#[tokio::test]
async fn past_the_nodes_history_bound_the_tenant_holding_the_most_loses_first() {
    let server = TestServer::start_with(|c: &mut Config| {
        rooms_with_history(c);
        c.store.history_bytes = 160 << 10;
    })
    .await;
    let beta_epoch = beta_room(&server, 10).await;
    // Alpha's quota (the default, 64 MiB) is far above the node's bound.
    let mut alpha = client(&server, "alpha").await;
    for i in 0..40 {
        publish(&mut alpha, &format!("room:big{i}"), true).await;
    }
    let alpha_bytes = metric(&server, "sluice_history_bytes", "alpha").await;
    let beta_bytes = metric(&server, "sluice_history_bytes", "beta").await;
    assert!(
        alpha_bytes + beta_bytes <= 160 << 10,
        "the node keeps {alpha_bytes} + {beta_bytes} bytes of history"
    );
    assert!(
        alpha_bytes >= 64 << 10,
        "alpha keeps its newest: {alpha_bytes}"
    );
    assert_beta_untouched(&server, &beta_epoch, 10).await;
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn a_restart_reads_back_no_more_history_than_the_quotas_allow() {
    let data = TempDir::new();
    let dir = data.0.join("data");
    let with = |channels: u32| {
        let dir = dir.clone();
        move |c: &mut Config| {
            rooms_with_history(c);
            c.store.data_dir = dir;
            c.tenants
                .get_mut("alpha")
                .expect("alpha")
                .quotas
                .history_channels = channels;
        }
    };
    let mut server = TestServer::start_with(with(100)).await;
    let mut alpha = client(&server, "alpha").await;
    for i in 0..30 {
        publish(&mut alpha, &format!("room:r{i:02}"), false).await;
    }
    let mut epochs = Vec::new();
    for room in ["room:r29", "room:r00"] {
        let ack = alpha
            .request(json!({"type": "subscribe", "id": room, "channel": room}))
            .await;
        epochs.push(ack["data"]["epoch"].as_str().expect("epoch").to_owned());
    }
    drop(alpha);
    assert_eq!(
        metric(&server, "sluice_history_channels", "alpha").await,
        30
    );
    server.shutdown().await;

    // The quota is lowered: the five most recently published rooms are read
    // back, the others are not (and are gone from the disk).
    let mut server = TestServer::start_with(with(5)).await;
    assert_eq!(metric(&server, "sluice_history_channels", "alpha").await, 5);
    let mut reader = client(&server, "alpha").await;
    let (ack, events) = recover(&mut reader, "room:r29", (0, &epochs[0])).await;
    assert_eq!(
        (ack["recovered"].clone(), events),
        (json!(true), 1),
        "{ack}"
    );
    let (ack, _) = recover(&mut reader, "room:r00", (0, &epochs[1])).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    server.shutdown().await;
    let server = TestServer::start_with(with(100)).await;
    assert!(metric(&server, "sluice_history_channels", "alpha").await <= 6);
    server.assert_honest_client_served().await;
}
