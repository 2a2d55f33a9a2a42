//! Under attack, everyone else is still served: a flooding client with a
//! hostile handler in one tenant while another tenant chats, and a storm of
//! reconnecting clients.

use std::time::Duration;

use serde_json::json;
use sluice_tests::server::TestServer;

#[tokio::test]
async fn a_flood_with_a_hostile_handler_does_not_disturb_another_tenants_chat() {
    let server = TestServer::start_with(|c| {
        if let Some(a) = c.tenants.get_mut("alpha") {
            a.limits.messages_per_sec = 20;
            a.limits.message_burst = 20;
            a.limits.abuse_close_after = 1_000_000;
        }
    })
    .await;
    // Alpha: one client floods a spinning handler at far above its rate.
    let mut flooder = server
        .connect("alpha", &server.token("alpha", "flood", ""))
        .await
        .expect("flooder");
    let flood = tokio::spawn(async move {
        let mut codes = std::collections::BTreeMap::<String, u32>::new();
        for round in 0..10 {
            for i in 0..20 {
                let id = format!("{round}-{i}");
                flooder
                    .send(json!({"type": "misbehave", "id": id, "data": {"mode": "spin"}}))
                    .await;
            }
            for _ in 0..20 {
                let f = flooder.recv().await;
                let code = f["code"].as_str().unwrap_or("ack").to_owned();
                *codes.entry(code).or_default() += 1;
            }
        }
        codes
    });

    // Beta: two clients chat, every message acknowledged and delivered in order.
    let mut ann = server
        .connect("beta", &server.token("beta", "ann", "chat:write"))
        .await
        .expect("ann");
    let mut ben = server
        .connect("beta", &server.token("beta", "ben", "chat:write"))
        .await
        .expect("ben");
    ann.request(json!({"type": "chat.join", "id": "j", "channel": "room:9"}))
        .await;
    ben.request(json!({"type": "chat.join", "id": "j", "channel": "room:9"}))
        .await;
    let mut seen = Vec::new();
    for i in 1..=30u64 {
        let ack = ann
            .request(json!({"type": "chat.send", "id": i.to_string(), "channel": "room:9", "data": {"text": format!("m{i}")}}))
            .await;
        assert_eq!(ack["type"], "ack", "beta's message {i}: {ack}");
        loop {
            let e = ben.next_event().await;
            if e["data"]["kind"] == "message" {
                seen.push(e["data"]["seq"].as_u64().expect("seq"));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen,
        (1..=30).collect::<Vec<_>>(),
        "nothing acknowledged was lost or reordered"
    );

    let codes = flood.await.expect("flood task");
    assert!(
        codes.get("rate_limited").is_some_and(|n| *n > 0),
        "{codes:?}"
    );
    // The spinning handler ran out of time, then was quarantined.
    assert!(
        codes.get("handler_timeout").is_some_and(|n| *n >= 5),
        "{codes:?}"
    );
    assert!(
        codes.get("unavailable").is_some_and(|n| *n > 0),
        "{codes:?}"
    );
    assert!(!codes.contains_key("ack"), "{codes:?}");
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn a_reconnect_storm_is_served_and_leaves_nothing_behind() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let mut tasks = Vec::new();
    for worker in 0..50 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut served = 0;
            for i in 0..40 {
                let sub = format!("storm-{worker}-{i}");
                let mut c = server
                    .connect("alpha", &server.token("alpha", &sub, ""))
                    .await
                    .expect("connect");
                let ack = c
                    .request(json!({"type": "echo", "id": "1", "data": i}))
                    .await;
                assert_eq!(ack["data"], i);
                served += 1;
            }
            served
        }));
    }
    let mut served = 0;
    for t in tasks {
        served += t.await.expect("worker");
    }
    assert_eq!(served, 2000);
    let alpha = server.state.tenant("alpha").expect("alpha");
    let started = std::time::Instant::now();
    while alpha.connections.count(&()) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "connections left open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        alpha.subject_connections.keys(),
        0,
        "no per-subject state left behind"
    );
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn every_misbehave_mode_live_through_the_server_while_another_tenant_chats() {
    let server = TestServer::start_with(|c| {
        if let Some(a) = c.tenants.get_mut("alpha") {
            let h = a.handlers.get_mut("misbehave").expect("misbehave");
            h.limits.quarantine_after = 1000;
            h.limits.fuel = 50_000_000;
        }
    })
    .await;
    let mut beta = server
        .connect("beta", &server.token("beta", "calm", "chat:write"))
        .await
        .expect("beta");
    beta.request(json!({"type": "chat.join", "id": "j", "channel": "room:1"}))
        .await;
    let mut hostile = server
        .connect("alpha", &server.token("alpha", "evil", ""))
        .await
        .expect("alpha");
    let modes = [
        ("spin", "handler_timeout"),
        ("alloc", "handler_failed"),
        ("recurse", "handler_failed"),
        ("big-reply", "handler_failed"),
        ("many-actions", "handler_failed"),
        ("panic", "handler_failed"),
        ("state-then-trap", "handler_failed"),
        ("log-flood", "ack"),
        ("stdout-flood", "ack"),
    ];
    for (i, (mode, expected)) in modes.iter().enumerate() {
        let f = hostile
            .request(json!({"type": "misbehave", "id": mode, "data": {"mode": mode}}))
            .await;
        let got = f["code"].as_str().unwrap_or("ack");
        assert_eq!(got, *expected, "{mode}: {f}");
        // The other tenant is served between every two hostile calls.
        let ack = beta
            .request(json!({"type": "chat.send", "id": i.to_string(), "channel": "room:1", "data": {"text": mode}}))
            .await;
        assert_eq!(ack["type"], "ack", "beta after {mode}: {ack}");
    }
    hostile.assert_usable().await;
    // Nothing the trapping call wrote survived.
    let ok = hostile
        .request(json!({"type": "misbehave", "id": "c", "data": {"mode": "ok"}}))
        .await;
    assert_eq!(ok["data"], json!({"ok": true}));
    assert!(
        server
            .state
            .sandbox
            .state()
            .get("alpha", "poison")
            .await
            .expect("the in-memory store answers")
            .is_none()
    );
}
