//! Long-lived connections: token expiry and refresh, idle clients, and a
//! graceful drain on shutdown.

use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use sluice_tests::server::{ALPHA_SECRET, TestServer, claims, now, sign_hs};

fn token_with(sub: &str, exp_in: u64, extra: Value) -> String {
    let mut c = claims(sub);
    c.insert("exp".into(), json!(now() + exp_in));
    if let Value::Object(extra) = extra {
        c.extend(extra);
    }
    sign_hs(
        ALPHA_SECRET,
        &Value::Object(c),
        Algorithm::HS256,
        Some("k1"),
    )
}

#[tokio::test]
async fn an_expired_token_closes_the_connection_with_1008_unless_refreshed() {
    let server = TestServer::start().await;
    let started = Instant::now();
    let mut short = server
        .connect("alpha", &token_with("sam", 2, json!({})))
        .await
        .expect("connect");
    let mut refreshed = server
        .connect("alpha", &token_with("rae", 2, json!({})))
        .await
        .expect("connect");

    // Refresh: a new token for the same subject extends the connection.
    let ack = refreshed
        .request(json!({"type": "refresh", "id": "r1", "data": {"token": token_with("rae", 3600, json!({}))}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert!(
        ack["data"]["expires_at"]
            .as_u64()
            .is_some_and(|e| e > now() + 3000)
    );
    assert_eq!(ack["data"]["dropped"], json!([]));
    // Not with another subject's token, nor with an invalid one.
    let err = refreshed
        .request(json!({"type": "refresh", "id": "r2", "data": {"token": token_with("mallory", 3600, json!({}))}}))
        .await;
    assert_eq!(err["code"], "forbidden");
    let err = refreshed
        .request(json!({"type": "refresh", "id": "r3", "data": {"token": "garbage"}}))
        .await;
    assert_eq!(err["code"], "invalid_token");

    assert_eq!(
        short.closed().await,
        Some(1008),
        "the unrefreshed connection closes at expiry"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the token expired"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    refreshed.assert_usable().await;
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn a_refresh_drops_subscriptions_the_new_claims_no_longer_allow() {
    let server = TestServer::start().await;
    let mut c = server
        .connect(
            "alpha",
            &token_with("tess", 3600, json!({"teams": ["red", "blue"]})),
        )
        .await
        .expect("connect");
    for (id, ch) in [("1", "team:red"), ("2", "team:blue"), ("3", "room:1")] {
        let ack = c
            .request(json!({"type": "subscribe", "id": id, "channel": ch}))
            .await;
        assert_eq!(ack["type"], "ack", "{ch}");
    }
    let new = token_with("tess", 3600, json!({"teams": ["blue"]}));
    let ack = c
        .request(json!({"type": "refresh", "id": "r", "data": {"token": new}}))
        .await;
    assert_eq!(ack["data"]["dropped"], json!(["team:red"]));
    assert_eq!(server.state.subscribers("alpha", "team:red"), 0);
    assert_eq!(server.state.subscribers("alpha", "team:blue"), 1);
    let err = c
        .request(json!({"type": "subscribe", "id": "4", "channel": "team:red"}))
        .await;
    assert_eq!(err["code"], "forbidden");
}

#[tokio::test]
async fn idle_clients_are_closed_and_active_ones_kept() {
    let server = TestServer::start_with(|c| {
        c.server.ping_interval_ms = 200;
        c.server.idle_timeout_ms = 1000;
    })
    .await;
    let mut silent = server
        .connect("alpha", &server.token("alpha", "silent", ""))
        .await
        .expect("connect");
    let mut active = server
        .connect("alpha", &server.token("alpha", "active", ""))
        .await
        .expect("connect");
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        active.assert_usable().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The silent client never read, so it never answered a ping: the server
    // closed it and released its slot (a client that does not read cannot
    // see the close code: its automatic pongs hit the closed socket first).
    let alpha = server.state.tenant("alpha").expect("alpha");
    let waiting = Instant::now();
    while alpha.subject_connections.count(&"silent".to_owned()) > 0 {
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "the silent client was never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(alpha.subject_connections.count(&"active".to_owned()), 1);
    let ended = loop {
        match futures_util::StreamExt::next(&mut silent.socket).await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => {
                break f.map(|f| u16::from(f.code));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    assert!(matches!(ended, None | Some(1000)), "{ended:?}");
    active.assert_usable().await;
}

#[tokio::test]
async fn shutdown_drains_connections_with_1001_and_loses_nothing_acknowledged() {
    let mut server = TestServer::start_with(|c| c.server.drain_timeout_ms = 5000).await;
    let mut c = server
        .connect("alpha", &server.token("alpha", "dana", ""))
        .await
        .expect("connect");
    for i in 0..20 {
        c.send(json!({"type": "echo", "id": i.to_string(), "data": i}))
            .await;
    }
    let drain = server.shutdown().await;
    assert!(drain < Duration::from_secs(5), "drained in {drain:?}");
    // Every message answered was answered in order, with its own data, and
    // the connection then closed with 1001.
    let mut answered = 0;
    let code = loop {
        match tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::StreamExt::next(&mut c.socket),
        )
        .await
        {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                let f: Value = serde_json::from_str(t.as_str()).expect("json");
                assert_eq!(f["type"], "ack", "{f}");
                assert_eq!(f["id"], answered.to_string());
                assert_eq!(f["data"], answered);
                answered += 1;
            }
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame)))) => {
                break frame.map(|f| u16::from(f.code));
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("unexpected end: {other:?}"),
        }
    };
    assert_eq!(code, Some(1001));
    assert!(answered <= 20);
    // The listener is gone.
    assert!(
        server
            .connect("alpha", &server.token("alpha", "late", ""))
            .await
            .is_err()
    );
}

/// Reads `client` until it has seen `pings` WebSocket pings, or `within`
/// passed: how many it saw.
async fn pings_seen(
    client: &mut sluice_tests::server::Client,
    pings: usize,
    within: Duration,
) -> usize {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = 0;
    while seen < pings {
        match tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut client.socket))
            .await
        {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_)))) => seen += 1,
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(c)))) => {
                panic!("closed by the server: {c:?}")
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("read failed: {e}"),
            Ok(None) => panic!("the connection ended"),
            Err(_) => break,
        }
    }
    seen
}

#[tokio::test]
async fn a_tenants_connections_are_pinged_at_its_own_interval() {
    // The server pings every 30 s; tenant alpha asks for 150 ms.
    let server = TestServer::start_with(|c| {
        c.server.ping_interval_ms = 30_000;
        c.tenants
            .get_mut("alpha")
            .expect("alpha")
            .limits
            .ping_interval_ms = Some(150);
    })
    .await;
    let started = Instant::now();
    let mut alpha = server
        .connect("alpha", &server.token("alpha", "pinged", ""))
        .await
        .expect("connect");
    let mut beta = server
        .connect("beta", &server.token("beta", "quiet", ""))
        .await
        .expect("connect");
    // Four pings at 150 ms: never sooner than 600 ms after the connection
    // began (a tick is never early), and well within 10 s however loaded
    // the machine is.
    assert_eq!(pings_seen(&mut alpha, 4, Duration::from_secs(10)).await, 4);
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "4 pings at 150 ms came after {:?}",
        started.elapsed()
    );
    // Meanwhile beta's connection (the server's 30 s) got none.
    assert_eq!(
        pings_seen(&mut beta, 1, Duration::from_millis(300)).await,
        0,
        "beta is pinged at the server's interval"
    );
    // Both still serve.
    alpha.assert_usable().await;
    beta.assert_usable().await;

    // A reload that gives beta 150 ms applies to its open connection.
    let mut config = server.state.config.clone();
    config
        .tenants
        .get_mut("beta")
        .expect("beta")
        .limits
        .ping_interval_ms = Some(150);
    server.state.reload(config).await.expect("reload");
    assert_eq!(pings_seen(&mut beta, 2, Duration::from_secs(10)).await, 2);
    beta.assert_usable().await;
}
