//! Hot reload: new routes and handlers take effect on open connections
//! without dropping them; a configuration that fails to load is refused and
//! the old one keeps serving.

use std::path::PathBuf;

use serde_json::json;
use sluice::config::{ChannelAccess, RouteConfig};
use sluice_tests::server::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn echo_route() -> RouteConfig {
    RouteConfig {
        handler: "echo".into(),
        scopes: vec![],
        channel: ChannelAccess::None,
        schema: None,
        schema_file: None,
    }
}

#[tokio::test]
async fn a_reload_changes_routes_on_open_connections_and_a_bad_one_is_refused() {
    let server = TestServer::start().await;
    let mut c = server
        .connect("alpha", &server.token("alpha", "rita", ""))
        .await
        .expect("connect");
    let err = c
        .request(json!({"type": "shout", "id": "1", "data": "hi"}))
        .await;
    assert_eq!(err["code"], "unknown_type");

    // Add a route; the open connection uses it at its next message.
    let mut config = server.state.config.clone();
    let alpha = config.tenants.get_mut("alpha").expect("alpha");
    alpha.routes.insert("shout".into(), echo_route());
    // A message in flight while the reload happens is still answered.
    c.send(json!({"type": "misbehave", "id": "inflight", "data": {"mode": "log-flood"}}))
        .await;
    let summary = server.state.reload(config.clone()).await.expect("reload");
    assert!(summary.contains("3 tenant(s)"), "{summary}");
    let inflight = loop {
        let f = c.recv().await;
        if f["id"] == "inflight" {
            break f;
        }
    };
    assert_eq!(inflight["type"], "ack", "{inflight}");
    let ack = c
        .request(json!({"type": "shout", "id": "2", "data": "hi"}))
        .await;
    assert_eq!(ack, json!({"type": "ack", "id": "2", "data": "hi"}));
    // The live counts survived the swap.
    assert_eq!(
        server
            .state
            .tenant("alpha")
            .expect("alpha")
            .connections
            .count(&()),
        1
    );

    // A reload with a handler that does not exist is refused as a whole.
    let mut broken = config.clone();
    let alpha = broken.tenants.get_mut("alpha").expect("alpha");
    alpha.routes.remove("shout");
    alpha.handlers.get_mut("echo").expect("echo").component =
        PathBuf::from("/nonexistent/echo.wasm");
    let err = server
        .state
        .reload(broken)
        .await
        .expect_err("refused")
        .to_string();
    assert!(err.contains("/nonexistent/echo.wasm"), "{err}");
    let ack = c
        .request(json!({"type": "shout", "id": "3", "data": "still"}))
        .await;
    assert_eq!(ack["data"], "still", "the old configuration keeps serving");

    // Removing a route takes effect too; the connection was never dropped.
    let mut fewer = config;
    fewer
        .tenants
        .get_mut("alpha")
        .expect("alpha")
        .routes
        .remove("shout");
    server.state.reload(fewer).await.expect("reload");
    let err = c
        .request(json!({"type": "shout", "id": "4", "data": "x"}))
        .await;
    assert_eq!(err["code"], "unknown_type");
    c.assert_usable().await;
}

#[tokio::test]
async fn reload_over_the_admin_listener_reports_why_it_cannot() {
    let server = TestServer::start().await;
    let addr = server.admin.expect("admin");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(
        b"POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.expect("read");
    assert!(raw.starts_with("HTTP/1.1 422"), "{raw}");
    assert!(raw.contains("not started from a config file"), "{raw}");
    server.assert_honest_client_served().await;
}
