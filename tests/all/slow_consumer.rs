//! A subscriber that stops reading is disconnected once its bounded queue
//! fills, and nobody else notices.

use std::time::Duration;

use serde_json::json;
use sluice_tests::server::TestServer;

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_the_publisher_keeps_going() {
    let server = TestServer::start_with(|c| {
        c.server.max_outbound_bytes = 256 << 10;
        if let Some(a) = c.tenants.get_mut("alpha") {
            a.limits.messages_per_sec = 100_000;
            a.limits.message_burst = 100_000;
            a.limits.subject_messages_per_sec = 100_000;
            a.routes.get_mut("misbehave").expect("route").scopes.clear();
            if let Some(h) = a.handlers.get_mut("misbehave") {
                h.limits.max_output_bytes = 64 << 10;
            }
        }
    })
    .await;
    let mut stalled = server
        .connect("alpha", &server.token("alpha", "stalled", ""))
        .await
        .expect("stalled");
    stalled
        .request(json!({"type": "subscribe", "id": "s", "channel": "room:5"}))
        .await;
    let mut reader = server
        .connect("alpha", &server.token("alpha", "reader", ""))
        .await
        .expect("reader");
    reader
        .request(json!({"type": "subscribe", "id": "s", "channel": "room:5"}))
        .await;
    // The writer needs publish rights on room:5 (chat:write).
    let mut writer = server
        .connect("alpha", &server.token("alpha", "writer", "chat:write"))
        .await
        .expect("writer");

    // 32 KiB per event; the stalled client's kernel buffers fill, then its
    // 256 KiB queue; the reader keeps up.
    let alpha = server.state.tenant("alpha").expect("alpha");
    let mut published = 0;
    let tripped = |state: &sluice::server::ServerState| {
        sluice::server::admin::metrics::render(state)
            .contains(r#"sluice_closes_total{tenant="alpha",code="1013"} 1"#)
    };
    while !tripped(&server.state) {
        assert!(
            published < 2000,
            "the stalled client was never disconnected"
        );
        let ack = writer
            .request(json!({"type": "misbehave", "id": published.to_string(), "data": {"mode": "publish-big", "target": "room:5"}}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let event = reader.next_event().await;
        assert_eq!(event["channel"], "room:5");
        published += 1;
        if published % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(
        published > 8,
        "it took more than the queue bound to trip: {published}"
    );
    // The server let go of the stalled connection and its subscription.
    let waiting = std::time::Instant::now();
    while alpha.subject_connections.count(&"stalled".to_owned()) > 0 {
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "the stalled connection was kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        server.state.subscribers("alpha", "room:5"),
        1,
        "only the reader is left"
    );
    // Everyone else carries on.
    writer.assert_usable().await;
    reader.assert_usable().await;
}
