//! Hot reload: new routes and handlers take effect on open connections
//! without dropping them; a configuration that fails to load is refused and
//! the old one keeps serving.

use std::path::PathBuf;

use serde_json::json;
use sluice::config::{ChannelAccess, RouteConfig, SecretRef};
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
async fn reload_over_the_management_listener_reports_why_it_cannot() {
    // No admin token configured: POST /reload is refused, with how to
    // configure one.
    let server = TestServer::start().await;
    let (status, body) = post_reload(&server, None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("admin_token = { secret_file"), "{body}");
    assert!(body.contains("sluice reload -c"), "{body}");
    let (status, body) = post_reload(&server, Some(ADMIN_TOKEN)).await;
    assert_eq!(
        status, 403,
        "a token the server has none to compare with: {body}"
    );
    // The admin listener (plain HTTP) does not reload at all: 404, saying
    // where reloading went.
    let admin = server.admin.expect("admin");
    let (status, body) = post_admin(admin, "localhost", "/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("[management] listen"), "{body}");
    server.assert_honest_client_served().await;

    // A token, but the server was not started from a file: 422, why.
    let server = TestServer::start_with(|c| {
        std::fs::write(c.base_dir.join("admin.token"), ADMIN_TOKEN).expect("token");
        c.server.admin_token = Some(SecretRef {
            secret_env: None,
            secret_file: Some("admin.token".into()),
        });
    })
    .await;
    let (status, body) = post_reload(&server, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("not started from a config file"), "{body}");
    server.assert_honest_client_served().await;
}

/// An admin token of the right length.
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef0123456789";

/// `POST /reload` on `server`'s management listener (HTTPS) with this
/// bearer token: status and body.
pub async fn post_reload(server: &TestServer, token: Option<&str>) -> (u16, String) {
    let (status, body) = server
        .management_client()
        .request(http::Method::POST, "/reload", token, Vec::new())
        .await
        .expect("the management listener answers");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `POST path` on the admin listener at `addr` (plain HTTP) with this
/// `Host` and bearer token: status and body.
pub async fn post_admin(
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    tcp.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
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
