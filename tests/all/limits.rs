//! Rate limits at every level engage at the configured rate and answer
//! `rate_limited` with `retry_after_ms`; sustained abuse closes with 1008.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::server::{Client, TestServer};

/// Send `n` echo messages at once, then count the answers by type/code.
/// The most a token bucket of `burst` refilled at `rate`/s can let through
/// in `secs` seconds (plus one for a refill landing at the edge).
fn most(burst: usize, rate: f64, secs: f64) -> usize {
    burst + (secs * rate).ceil() as usize + 1
}

async fn burst(c: &mut Client, n: usize) -> (usize, usize, Vec<Value>) {
    let (acks, limited, errors, _) = timed_burst(c, n).await;
    (acks, limited, errors)
}

/// Like [`burst`], also returning how long it took, in seconds.
async fn timed_burst(c: &mut Client, n: usize) -> (usize, usize, Vec<Value>, f64) {
    let started = std::time::Instant::now();
    for i in 0..n {
        c.send(json!({"type": "echo", "id": i.to_string(), "data": i}))
            .await;
    }
    let (mut acks, mut limited, mut errors) = (0, 0, Vec::new());
    for _ in 0..n {
        let f = c.recv().await;
        match (f["type"].as_str(), f["code"].as_str()) {
            (Some("ack"), _) => acks += 1,
            (Some("error"), Some("rate_limited")) => {
                assert!(f["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{f}");
                assert!(
                    f["id"].is_string(),
                    "the refused message's id is echoed: {f}"
                );
                limited += 1;
            }
            _ => errors.push(f),
        }
    }
    (acks, limited, errors, started.elapsed().as_secs_f64())
}

#[tokio::test]
async fn the_connection_limit_engages_at_its_rate() {
    let server = TestServer::start_with(|c| {
        if let Some(a) = c.tenants.get_mut("alpha") {
            a.limits.messages_per_sec = 5;
            a.limits.message_burst = 5;
        }
    })
    .await;
    let mut c = server
        .connect("alpha", &server.token("alpha", "fast", ""))
        .await
        .expect("connect");
    let (acks, limited, errors, secs) = timed_burst(&mut c, 20).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        acks >= 5 && acks <= most(5, 5.0, secs),
        "burst of 5 (plus what refilled in {secs:.2} s): {acks}"
    );
    assert!(limited > 0);
    assert_eq!(acks + limited, 20);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (acks, _, _) = burst(&mut c, 3).await;
    assert_eq!(acks, 3, "the quota refills");
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn sustained_abuse_closes_with_1008() {
    let server = TestServer::start_with(|c| {
        if let Some(a) = c.tenants.get_mut("alpha") {
            a.limits.messages_per_sec = 2;
            a.limits.message_burst = 2;
            a.limits.abuse_close_after = 10;
        }
    })
    .await;
    let mut c = server
        .connect("alpha", &server.token("alpha", "flood", ""))
        .await
        .expect("connect");
    for i in 0..30 {
        if c.socket_send_ok(json!({"type": "echo", "id": i.to_string(), "data": i}))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(c.closed().await, Some(1008));
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn the_subject_limit_spans_its_connections_and_the_tenant_limit_spans_subjects() {
    let server = TestServer::start_with(|c| {
        if let Some(a) = c.tenants.get_mut("alpha") {
            a.limits.subject_messages_per_sec = 3;
        }
        if let Some(b) = c.tenants.get_mut("beta") {
            b.limits.tenant_messages_per_sec = 4;
        }
    })
    .await;
    // Two connections of one subject share a quota of 3/s (burst 6).
    let token = server.token("alpha", "twin", "");
    let mut a = server.connect("alpha", &token).await.expect("a");
    let mut b = server.connect("alpha", &token).await.expect("b");
    let (acks_a, _, _, secs_a) = timed_burst(&mut a, 5).await;
    let (acks_b, limited_b, _, secs_b) = timed_burst(&mut b, 5).await;
    let allowed = most(6, 3.0, secs_a + secs_b);
    assert!(
        acks_a + acks_b <= allowed,
        "shared quota: {acks_a} + {acks_b} > {allowed}"
    );
    assert!(limited_b > 0);
    // Another subject of the same tenant is not limited by twin's quota.
    let mut other = server
        .connect("alpha", &server.token("alpha", "other", ""))
        .await
        .expect("other");
    assert_eq!(burst(&mut other, 5).await.0, 5);

    // Tenant beta: 4/s (burst 8) over all its subjects.
    let mut b1 = server
        .connect("beta", &server.token("beta", "s1", ""))
        .await
        .expect("b1");
    let mut b2 = server
        .connect("beta", &server.token("beta", "s2", ""))
        .await
        .expect("b2");
    let (acks1, _, _, secs1) = timed_burst(&mut b1, 6).await;
    let (acks2, limited2, _, secs2) = timed_burst(&mut b2, 6).await;
    let allowed = most(8, 4.0, secs1 + secs2);
    assert!(
        acks1 + acks2 <= allowed,
        "tenant quota: {acks1} + {acks2} > {allowed}"
    );
    assert!(limited2 > 0);
    // Alpha is not affected by beta's tenant limit.
    server.assert_honest_client_served().await;
}
