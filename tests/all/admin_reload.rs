//! `POST /reload` on the management listener (HTTPS): only with the admin
//! token; the admin listener (plain HTTP) reloads nothing and still answers
//! only a `Host` naming it; one reload at a time, and rate-limit buckets
//! survive it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::config::Config;
use sluice_tests::handlers;
use sluice_tests::server::{AUDIENCE, Client, ISSUER, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::reload::{ADMIN_TOKEN, post_admin, post_reload};

/// The server's configuration file: tenant `alpha` (the honest client's)
/// with an echo route, `shout` too when `shout`, and this subject rate.
fn write_config(dir: &Path, shout: bool, subject_rate: u32) -> PathBuf {
    let shout = if shout {
        "[tenants.alpha.routes.shout]\nhandler = \"echo\"\n"
    } else {
        ""
    };
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
tls_cert = "cert.pem"
tls_key = "key.pem"
admin_token = {{ secret_file = "admin.token" }}
max_connections_per_ip = 10000
handshakes_per_ip_per_sec = 10000
handshake_burst_per_ip = 10000

[management]
# Not the default 127.0.0.1:9443: tests run side by side.
listen = "127.0.0.1:0"

[tenants.alpha.auth]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"

[[tenants.alpha.auth.keys]]
kid = "k1"
algorithm = "HS256"
secret_file = "alpha.secret"

[tenants.alpha.limits]
messages_per_sec = 1000
message_burst = 1000
subject_messages_per_sec = {subject_rate}

[tenants.alpha.handlers.echo]
component = {echo:?}
# Generous: the machine may be busy with other tests (as in TestServer).
limits = {{ deadline_ms = 2000 }}

[tenants.alpha.routes.echo]
handler = "echo"
{shout}"#,
        echo = handlers::ECHO,
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// A server started from [`write_config`]'s file; returns it and the path.
async fn start(subject_rate: u32) -> (TestServer, PathBuf) {
    let mut path = None;
    let server = TestServer::start_with(|c| {
        std::fs::write(c.base_dir.join("admin.token"), ADMIN_TOKEN).expect("token");
        let p = write_config(&c.base_dir, false, subject_rate);
        *c = Config::load(&p).expect("the test config loads");
        path = Some(p);
    })
    .await;
    (server, path.expect("written"))
}

async fn shout(c: &mut Client, id: &str) -> serde_json::Value {
    c.request(json!({"type": "shout", "id": id, "data": "hi"}))
        .await
}

async fn get(addr: std::net::SocketAddr, host: &str, path: &str) -> u16 {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.expect("read");
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn post_reload_needs_the_admin_token_and_only_the_management_listener_reloads() {
    let (server, path) = start(100).await;
    let admin = server.admin.expect("admin");
    let mut c = server
        .connect("alpha", &server.token("alpha", "ops", ""))
        .await
        .expect("connect");
    assert_eq!(shout(&mut c, "0").await["code"], "unknown_type");
    // The file now has a `shout` route: each refused reload leaves it out.
    write_config(path.parent().expect("dir"), true, 100);

    let (status, body) = post_reload(&server, None).await;
    assert_eq!(status, 401, "no token: {body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let wrong = ADMIN_TOKEN.replace('0', "1");
    let (status, _) = post_reload(&server, Some(&wrong)).await;
    assert_eq!(status, 401, "a wrong token");
    let (status, _) = post_reload(&server, Some(&ADMIN_TOKEN[..20])).await;
    assert_eq!(status, 401, "a prefix of the token");
    // The admin listener does not reload, even with the token: 404 naming
    // the management listener from a Host naming it, 403 from a foreign
    // Host (DNS rebinding) as for everything it serves.
    for host in ["localhost", "127.0.0.1", &admin.to_string()] {
        let (status, body) = post_admin(admin, host, "/reload", Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 404, "Host {host}: {body}");
        assert!(body.contains("[management] listen"), "{body}");
    }
    for host in [
        "evil.example",
        "evil.example:80",
        "localhost.evil.example",
        "8.8.8.8",
    ] {
        let (status, body) = post_admin(admin, host, "/reload", Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 403, "Host {host}: {body}");
        assert_eq!(get(admin, host, "/metrics").await, 403, "Host {host}");
    }
    assert_eq!(get(admin, "localhost", "/metrics").await, 200);
    assert_eq!(get(admin, &admin.to_string(), "/metrics").await, 200);
    assert_eq!(
        shout(&mut c, "1").await["code"],
        "unknown_type",
        "nothing was reloaded"
    );

    // The token, over HTTPS: reloaded.
    let (status, body) = post_reload(&server, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("reloaded: 1 tenant(s)"), "{body}");
    assert_eq!(
        shout(&mut c, "2").await,
        json!({"type": "ack", "id": "2", "data": "hi"})
    );

    // What `sluice reload -c` sends: the token of the file.
    write_config(path.parent().expect("dir"), false, 100);
    let config = Config::load(&path).expect("config");
    let token = config.admin_token().expect("the token file reads");
    let (status, body) = post_reload(&server, token.as_deref()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(shout(&mut c, "3").await["code"], "unknown_type");
    assert_eq!(get(admin, "localhost", "/healthz").await, 200);
    c.assert_usable().await;
    server.assert_honest_client_served().await;
}

/// Sends two echoes back to back; how many were answered with an ack.
async fn burst_of_two(c: &mut Client, tag: &str) -> usize {
    let mut acks = 0;
    for i in 0..2 {
        let answer = c
            .request(json!({"type": "echo", "id": format!("{tag}{i}"), "data": 1}))
            .await;
        match answer["type"].as_str() {
            Some("ack") => acks += 1,
            _ => assert_eq!(answer["code"], "rate_limited", "{answer}"),
        }
    }
    acks
}

#[tokio::test]
async fn a_subject_over_its_rate_stays_limited_across_a_reload() {
    // One message a second per subject, a burst of two.
    let (server, path) = start(1).await;
    let mut c = server
        .connect("alpha", &server.token("alpha", "flooder", ""))
        .await
        .expect("connect");
    assert_eq!(burst_of_two(&mut c, "a").await, 2);
    let limited = c
        .request(json!({"type": "echo", "id": "over", "data": 1}))
        .await;
    assert_eq!(limited["code"], "rate_limited", "{limited}");
    let emptied = Instant::now();

    write_config(path.parent().expect("dir"), true, 1);
    let (status, body) = post_reload(&server, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    // Fresh buckets would answer both; the kept bucket refills one message
    // a second, so within 2 s of emptying it at most one gets through.
    let acks = burst_of_two(&mut c, "b").await;
    assert!(
        emptied.elapsed() < Duration::from_secs(2),
        "the machine is too slow for this test's timing"
    );
    assert!(
        acks <= 1,
        "{acks} messages got through: the reload reset the bucket"
    );
    // Another subject of the tenant is served meanwhile.
    server.assert_honest_client_served().await;

    // A reload that changes the rate starts new buckets at the new rate.
    write_config(path.parent().expect("dir"), true, 100);
    let (status, body) = post_reload(&server, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(burst_of_two(&mut c, "c").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_run_one_at_a_time_and_the_last_asked_for_stays() {
    let (server, path) = start(100).await;
    let dir = path.parent().expect("dir").to_owned();
    // Reload A reads a route's schema from a FIFO: it is held there, half
    // done, until the test writes the schema.
    let fifo = dir.join("slow.schema.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let route = |schema_file: Option<PathBuf>| sluice::config::RouteConfig {
        handler: "echo".into(),
        scopes: vec![],
        channel: sluice::config::ChannelAccess::None,
        schema: None,
        schema_file,
    };
    let mut a = server.state.config.clone();
    let alpha = a.tenants.get_mut("alpha").expect("alpha");
    alpha
        .routes
        .insert("slow".into(), route(Some(fifo.clone())));
    let mut b = server.state.config.clone();
    let alpha = b.tenants.get_mut("alpha").expect("alpha");
    alpha.routes.insert("shout".into(), route(None));

    let state = server.state.clone();
    let first = tokio::spawn(async move { state.reload(a).await.map_err(|e| e.to_string()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = server.state.clone();
    let second = tokio::spawn(async move { state.reload(b).await.map_err(|e| e.to_string()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Read before asserting: a failed assertion must not leave reload A
    // blocked on the FIFO (the runtime could not shut down).
    let (a_waits, b_waits) = (!first.is_finished(), !second.is_finished());
    if !a_waits {
        panic!("reload A did not wait for its schema: {:?}", first.await);
    }
    tokio::task::spawn_blocking(move || std::fs::write(&fifo, br#"{"type":"string"}"#))
        .await
        .expect("join")
        .expect("schema written");
    assert!(
        b_waits,
        "reload B must wait for reload A, not run beside it"
    );
    let first = tokio::time::timeout(Duration::from_secs(30), first).await;
    first
        .expect("A finishes")
        .expect("join")
        .expect("A applies");
    let second = tokio::time::timeout(Duration::from_secs(30), second).await;
    second
        .expect("B finishes")
        .expect("join")
        .expect("B applies");
    let alpha = server.state.tenant("alpha").expect("alpha");
    assert!(
        alpha.routes.contains_key("shout") && !alpha.routes.contains_key("slow"),
        "the reload asked for last is the configuration that serves"
    );
    server.assert_honest_client_served().await;
}
