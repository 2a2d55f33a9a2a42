//! Idempotency keys on a real server (docs/exactly-once.md): a retry gets
//! the first attempt's answer without a call and without its effects; a
//! key reused with other data is `key_reused`; a call that failed without
//! effect leaves the key free; after the window a key runs again; a
//! tenant's keys stay within its quota while another tenant is served.

use std::time::Duration;

use serde_json::{Value, json};
use sluice::client::{ClientOptions, connect};
use sluice_tests::server::{Client, TestServer};

use crate::admin::get;

async fn alice(server: &TestServer) -> Client {
    server
        .connect("alpha", &server.token("alpha", "alice", "chat:write"))
        .await
        .expect("alice")
}

fn send(id: &str, key: &str, text: &str) -> Value {
    json!({"type": "chat.send", "id": id, "key": key, "channel": "room:7", "data": {"text": text}})
}

/// The value of `name{tenant="..."}` in `/metrics`.
async fn metric(server: &TestServer, name: &str, tenant: &str) -> u64 {
    let (status, text) = get(server, "/metrics").await;
    assert_eq!(status, 200);
    let prefix = format!("{name}{{tenant=\"{tenant}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} for {tenant} in /metrics"))
}

#[tokio::test]
async fn the_welcome_says_the_window_and_a_retry_gets_the_first_answer_without_a_call() {
    let server = TestServer::start_with(|c| {
        c.tenants
            .get_mut("alpha")
            .expect("alpha")
            .limits
            .idempotency_window_secs = 120;
    })
    .await;
    // The welcome advertises keys and the tenant's window.
    let opts = ClientOptions {
        token: Some(server.token("alpha", "alice", "chat:write")),
        ..server.options()
    };
    let mut first = Client {
        socket: connect(&server.url("alpha"), &opts).await.expect("connect"),
    };
    let welcome = first.recv().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["data"]["idempotency"], json!({"window_secs": 120}));

    let mut bob = server
        .connect("alpha", &server.token("alpha", "bob", "chat:write"))
        .await
        .expect("bob");
    bob.request(json!({"type": "chat.join", "id": "b1", "channel": "room:7"}))
        .await;

    let sent = first
        .request(send("c1", "Qm3x-9kT2_LpV0aZr8YbWc", "hi"))
        .await;
    assert_eq!(sent, json!({"type": "ack", "id": "c1", "data": {"seq": 1}}));
    let event = bob.next_event().await;
    assert_eq!(event["data"]["seq"], 1);
    // The first connection is gone (the tunnel); the retry comes on a new
    // one, under another id, with the data's members in another order.
    drop(first);
    let mut again = alice(&server).await;
    let retry = json!({"type": "chat.send", "id": "c9", "channel": "room:7", "key": "Qm3x-9kT2_LpV0aZr8YbWc", "data": {"text": "hi"}});
    assert_eq!(
        again.request(retry.clone()).await,
        json!({"type": "ack", "id": "c9", "data": {"seq": 1}}),
        "the first call's answer under the retry's id"
    );
    assert_eq!(
        again.request(retry).await["data"],
        json!({"seq": 1}),
        "and again"
    );
    // Nothing was posted twice: the next message is seq 2, and it is the
    // next event bob sees.
    let next = again.request(send("c10", "k-2", "next")).await;
    assert_eq!(next["data"], json!({"seq": 2}));
    let event = bob.next_event().await;
    assert_eq!(event["data"]["seq"], 2, "no second event for the retry");
    assert_eq!(event["data"]["text"], "next");
    // The room's own history (the handler's state) holds each message once.
    let joined = bob
        .request(json!({"type": "chat.join", "id": "b2", "channel": "room:7"}))
        .await;
    let texts: Vec<&str> = joined["data"]["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|l| l["text"].as_str())
        .collect();
    assert_eq!(texts, ["hi", "next"]);

    // Keys are per subject: bob's equal key is his own request.
    let bobs = bob
        .request(send("b3", "Qm3x-9kT2_LpV0aZr8YbWc", "mine"))
        .await;
    assert_eq!(bobs["data"], json!({"seq": 3}));

    assert_eq!(
        metric(&server, "sluice_idempotency_hits_total", "alpha").await,
        2
    );
    assert_eq!(
        metric(&server, "sluice_idempotency_misses_total", "alpha").await,
        3
    );
    assert_eq!(
        metric(&server, "sluice_idempotency_entries", "alpha").await,
        3
    );
}

#[tokio::test]
async fn a_key_reused_with_other_data_is_refused_and_an_honest_request_after_is_served() {
    let server = TestServer::start().await;
    let mut c = alice(&server).await;
    assert_eq!(
        c.request(send("1", "order:1234", "one")).await["data"],
        json!({"seq": 1})
    );
    for (id, other) in [
        ("2", send("2", "order:1234", "two")),
        (
            "3",
            json!({"type": "chat.send", "id": "3", "key": "order:1234", "channel": "room:8", "data": {"text": "one"}}),
        ),
        (
            "4",
            json!({"type": "echo", "id": "4", "key": "order:1234", "data": {"text": "one"}}),
        ),
    ] {
        let refused = c.request(other).await;
        assert_eq!(refused["type"], "error", "{refused}");
        assert_eq!(refused["code"], "key_reused", "{refused}");
        assert_eq!(refused["id"], id);
    }
    // Nothing ran: the next message is seq 2; the key still answers its own
    // request; the connection is usable.
    assert_eq!(
        c.request(send("5", "order:1235", "two")).await["data"],
        json!({"seq": 2})
    );
    assert_eq!(
        c.request(send("6", "order:1234", "one")).await["data"],
        json!({"seq": 1})
    );
    // An invalid key is bad_envelope (nothing kept), a key on a reserved
    // type too (refused while decoding, like any malformed envelope).
    c.send(send("7", "a b", "x")).await;
    assert_eq!(c.recv().await["code"], "bad_envelope");
    c.send(json!({"type": "subscribe", "id": "8", "key": "k", "channel": "room:7"}))
        .await;
    assert_eq!(c.recv().await["code"], "bad_envelope");
    c.assert_usable().await;
    assert_eq!(
        metric(&server, "sluice_idempotency_conflicts_total", "alpha").await,
        3
    );
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn a_handlers_rejection_is_the_answer_and_a_failed_call_leaves_the_key_free() {
    let server = TestServer::start().await;
    let mut c = alice(&server).await;
    // A handler's own refusal is an answer: replayed, not run again.
    for id in ["1", "2"] {
        let refused = c.request(send(id, "empty-1", "   ")).await;
        assert_eq!(refused["code"], "empty_text", "{refused}");
        assert_eq!(refused["id"], id);
    }
    assert_eq!(
        metric(&server, "sluice_idempotency_hits_total", "alpha").await,
        1
    );
    // A call that failed (a trap: nothing written, nothing published) is
    // not remembered: its retry runs again.
    for id in ["3", "4"] {
        let failed = c
            .request(
                json!({"type": "misbehave", "id": id, "key": "trap-1", "data": {"mode": "panic"}}),
            )
            .await;
        assert_eq!(failed["code"], "handler_failed", "{failed}");
    }
    assert_eq!(
        metric(&server, "sluice_idempotency_hits_total", "alpha").await,
        1,
        "no replay of a failure"
    );
    assert_eq!(
        metric(&server, "sluice_idempotency_misses_total", "alpha").await,
        3
    );
    // A refusal before the call (the schema) takes no entry either.
    let invalid = c
        .request(json!({"type": "chat.send", "id": "5", "key": "schema-1", "channel": "room:7", "data": {"text": 5}}))
        .await;
    assert_eq!(invalid["code"], "schema_invalid", "{invalid}");
    assert_eq!(
        metric(&server, "sluice_idempotency_entries", "alpha").await,
        1,
        "only the handler's refusal is remembered"
    );
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn a_retry_after_the_window_gets_a_fresh_call() {
    let server = TestServer::start_with(|c| {
        c.tenants
            .get_mut("alpha")
            .expect("alpha")
            .limits
            .idempotency_window_secs = 1;
    })
    .await;
    let mut c = alice(&server).await;
    assert_eq!(
        c.request(send("1", "late", "hi")).await["data"],
        json!({"seq": 1})
    );
    assert_eq!(
        c.request(send("2", "late", "hi")).await["data"],
        json!({"seq": 1}),
        "within the window"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        c.request(send("3", "late", "hi")).await["data"],
        json!({"seq": 2}),
        "after the window the key is forgotten: a fresh call"
    );
    // And the fresh call's answer is remembered in turn.
    assert_eq!(
        c.request(send("4", "late", "hi")).await["data"],
        json!({"seq": 2})
    );
}

#[tokio::test]
async fn ten_thousand_keys_stay_within_the_quota_while_another_tenant_is_served() {
    const QUOTA: u32 = 2_000;
    const SUBJECTS: usize = 20;
    const PER_SUBJECT: usize = 500;
    let server = TestServer::start_with(|c| {
        for t in c.tenants.values_mut() {
            let l = &mut t.limits;
            l.messages_per_sec = 100_000;
            l.message_burst = 100_000;
            l.subject_messages_per_sec = 100_000;
            l.tenant_messages_per_sec = 100_000;
        }
        c.tenants
            .get_mut("alpha")
            .expect("alpha")
            .quotas
            .idempotency_keys = QUOTA;
    })
    .await;
    let mut beta = server
        .connect("beta", &server.token("beta", "bea", ""))
        .await
        .expect("beta");
    let (mut served, mut refused) = (0usize, 0usize);
    for s in 0..SUBJECTS {
        let mut c = server
            .connect("alpha", &server.token("alpha", &format!("user{s}"), ""))
            .await
            .expect("alpha client");
        // Pipelined: every request of this subject, then every answer.
        for i in 0..PER_SUBJECT {
            c.send(json!({"type": "echo", "id": i.to_string(), "key": format!("k{s}-{i}"), "data": {"i": i}}))
                .await;
        }
        for _ in 0..PER_SUBJECT {
            let answer = c.recv().await;
            match (answer["type"].as_str(), answer["code"].as_str()) {
                (Some("ack"), _) => served += 1,
                (Some("error"), Some("too_many_keys")) => {
                    refused += 1;
                    let after = answer["retry_after_ms"].as_u64().expect("retry_after_ms");
                    assert!(
                        (1..=300_000).contains(&after),
                        "when the oldest key is forgotten: {answer}"
                    );
                }
                _ => panic!("unexpected answer {answer}"),
            }
        }
        // Another tenant is served all along, with keys of its own.
        let b = beta
            .request(json!({"type": "echo", "id": format!("b{s}"), "key": format!("b{s}"), "data": {"s": s}}))
            .await;
        assert_eq!(b["type"], "ack", "{b}");
    }
    assert_eq!(served + refused, SUBJECTS * PER_SUBJECT);
    assert_eq!(served, QUOTA as usize, "exactly the quota ran");
    assert_eq!(
        metric(&server, "sluice_idempotency_entries", "alpha").await,
        u64::from(QUOTA)
    );
    assert_eq!(
        metric(&server, "sluice_idempotency_refusals_total", "alpha").await,
        refused as u64
    );
    assert_eq!(
        metric(&server, "sluice_idempotency_entries", "beta").await,
        SUBJECTS as u64
    );
    // A request without a key is served for alpha, over its quota of keys.
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn a_retry_on_another_node_of_the_fleet_gets_the_first_answer() {
    let nats = sluice_tests::cluster::Nats::start();
    let node = |name: &'static str| {
        let cluster = sluice_tests::cluster::cluster(&nats, name);
        TestServer::start_with(move |c| c.cluster = Some(cluster))
    };
    let (one, two) = (node("n1").await, node("n2").await);
    let mut bob = two
        .connect("alpha", &two.token("alpha", "bob", "chat:write"))
        .await
        .expect("bob");
    bob.request(json!({"type": "subscribe", "id": "b1", "channel": "room:7"}))
        .await;
    // The first attempt on node one; its ack is lost; the retry reaches
    // node two.
    let mut first = alice(&one).await;
    assert_eq!(
        first.request(send("1", "fleet-1", "hi")).await["data"],
        json!({"seq": 1})
    );
    drop(first);
    let mut retry = alice(&two).await;
    assert_eq!(
        retry.request(send("9", "fleet-1", "hi")).await,
        json!({"type": "ack", "id": "9", "data": {"seq": 1}}),
        "node two answers with node one's answer"
    );
    let refused = retry.request(send("10", "fleet-1", "other")).await;
    assert_eq!(refused["code"], "key_reused", "{refused}");
    assert_eq!(
        retry.request(send("11", "fleet-2", "next")).await["data"],
        json!({"seq": 2})
    );
    let event = bob.next_event().await;
    assert_eq!(event["data"]["text"], "hi");
    let event = bob.next_event().await;
    assert_eq!(
        event["data"]["text"], "next",
        "the retry posted nothing on node two"
    );
    assert_eq!(
        metric(&two, "sluice_idempotency_hits_total", "alpha").await,
        1
    );
}

#[tokio::test]
async fn a_retry_on_another_node_waits_while_the_first_attempt_runs_there() {
    let nats = sluice_tests::cluster::Nats::start();
    let node = |name: &'static str| {
        let cluster = sluice_tests::cluster::cluster(&nats, name);
        TestServer::start_with(move |c| c.cluster = Some(cluster))
    };
    let (one, two) = (node("w1").await, node("w2").await);
    // A call that runs until its 2 s deadline stops it (handler_timeout:
    // no effect, so its key is released, not answered).
    let slow = |id: &str| json!({"type": "misbehave", "id": id, "key": "slow-1", "data": {"mode": "sleep"}});
    let mut first = alice(&one).await;
    first.send(slow("1")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut retry = alice(&two).await;
    let started = std::time::Instant::now();
    retry.send(slow("2")).await;
    let answer = first.recv().await;
    assert_eq!(answer["code"], "handler_timeout", "{answer}");
    let waited = started.elapsed();
    // The retry waited for node one's attempt, then (nothing was left
    // behind) ran itself, until its own deadline.
    let answer = retry.recv().await;
    assert_eq!(answer["code"], "handler_timeout", "{answer}");
    assert!(
        started.elapsed() >= waited + Duration::from_millis(1_500),
        "the retry ran after the first attempt ended: {:?} then {:?}",
        waited,
        started.elapsed()
    );
    assert_eq!(
        metric(&two, "sluice_idempotency_waits_total", "alpha").await,
        1
    );
    assert_eq!(
        metric(&two, "sluice_idempotency_hits_total", "alpha").await,
        0
    );
}
