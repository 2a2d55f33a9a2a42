//! The admin listener: Prometheus metrics per tenant, health and readiness.

use serde_json::json;
use sluice_tests::server::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` on the admin listener: status and body.
pub(crate) async fn get(server: &TestServer, path: &str) -> (u16, String) {
    let addr = server.admin.expect("admin listener");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.expect("read");
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

#[tokio::test]
async fn metrics_count_messages_outcomes_handlers_and_connections() {
    let server = TestServer::start().await;
    let mut c = server
        .connect("alpha", &server.token("alpha", "m", ""))
        .await
        .expect("connect");
    c.request(json!({"type": "echo", "id": "1", "data": 1}))
        .await;
    c.request(json!({"type": "profile.set", "id": "2", "data": {}}))
        .await;
    c.request(json!({"type": "misbehave", "id": "3", "data": {"mode": "panic"}}))
        .await;
    c.request(json!({"type": "misbehave", "id": "4", "data": {"mode": "publish", "target": "user:other"}})).await;

    // Echo ran twice: on-connect (every handler of the tenant gets it) and
    // the echo message.
    let (status, m) = get(&server, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        value(&m, r#"sluice_connections{tenant="alpha"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(value(&m, r#"sluice_connections{tenant="beta"}"#), Some(0.0));
    assert_eq!(
        value(&m, r#"sluice_messages_total{tenant="alpha",outcome="ok"}"#),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            r#"sluice_messages_total{tenant="alpha",outcome="schema_invalid"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            r#"sluice_messages_total{tenant="alpha",outcome="handler_failed"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&m, r#"sluice_refused_actions_total{tenant="alpha"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            r#"sluice_handler_calls_total{tenant="alpha",handler="misbehave",outcome="trap"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            r#"sluice_handler_calls_total{tenant="alpha",handler="echo",outcome="ok"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        value(&m, r#"sluice_message_seconds_count{tenant="alpha"}"#),
        Some(4.0)
    );
    assert!(
        value(
            &m,
            r#"sluice_handler_fuel_total{tenant="alpha",handler="misbehave"}"#
        )
        .is_some_and(|f| f > 0.0)
    );
    // Per-handler call durations: the echo calls ran, and every one of
    // them took at most a second.
    assert_eq!(
        value(
            &m,
            r#"sluice_handler_call_seconds_count{tenant="alpha",handler="echo"}"#
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            r#"sluice_handler_call_seconds_bucket{tenant="alpha",handler="echo",le="1"}"#
        ),
        Some(2.0),
        "{m}"
    );
    assert!(!m.contains("eyJ"), "no token in the metrics");

    assert_eq!(get(&server, "/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(get(&server, "/readyz").await.0, 200);
    assert_eq!(get(&server, "/nope").await.0, 404);
    c.assert_usable().await;
}
