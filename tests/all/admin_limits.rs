//! The admin listener and the management API under abuse (issue 26,
//! findings 3 and 4, and the management quotas): slowloris is cut off and
//! holds a bounded number of descriptors; requests without a token reach
//! the audit log once per source per minute, naming nothing they chose; a
//! tenant's token has its own request rate and one push in flight. Every
//! refusal is followed by an honest request that is served.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::config::Capability;
use sluice::server::admin::HEADER_TIMEOUT;
use sluice::server::admin::connections::MAX_CONNECTIONS;
use sluice_tests::handlers;
use sluice_tests::server::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::admin::get;
use crate::marketplace::{
    ALPHA_MANAGER, BETA_MANAGER, OPERATOR, api, component, push, sample, server,
};

/// Open file descriptors of this process (the server runs in it).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// Whether the server closed `tcp` before `deadline` (whatever it wrote
/// first).
async fn closed_by(tcp: &mut TcpStream, deadline: tokio::time::Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A TLS connection to `server`'s management listener, trusting its
/// certificate.
pub(crate) async fn management_tls(
    server: &TestServer,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&server.ca_pem) {
        roots.add(cert.expect("PEM")).expect("root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(server.management.expect("management listener")).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
}

/// One request on its own connection to the management API (HTTPS):
/// status, headers (lower-case names) and body.
pub(crate) async fn raw(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Vec<(String, String)>, Value) {
    let addr = server.management.expect("management listener");
    let mut tls = management_tls(server).await.expect("TLS");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    tls.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut raw = Vec::new();
    // The server closes without a TLS close_notify at times: what was read
    // before counts.
    let _ = tls.read_to_end(&mut raw).await;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn slowloris_on_the_admin_listener_is_cut_off_and_everyone_is_still_served() {
    let server = server(&[], |_| {}).await;
    let admin = server.admin.expect("admin listener");
    let before = open_fds();
    // 2,000 connections that each start a request and never finish it.
    let stalled_count = 2_000;
    let mut stalled = Vec::with_capacity(stalled_count);
    for _ in 0..stalled_count {
        let mut tcp = TcpStream::connect(admin).await.expect("connect");
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .expect("write");
        stalled.push(tcp);
    }
    let connected = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The server holds at most its cap of them (this process holds both
    // ends: the test's 2,000, the server's at most MAX_CONNECTIONS).
    let held = open_fds().saturating_sub(before);
    assert!(
        held <= stalled_count + MAX_CONNECTIONS + 64,
        "{held} descriptors for {stalled_count} stalled connections"
    );

    // Meanwhile: the public listener accepts and serves, the admin
    // listener serves /metrics, and the management listener a request.
    server.assert_honest_client_served().await;
    let (status, metrics) = get(&server, "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    let (status, list) = api(
        &server,
        "GET",
        "/v1/tenants/alpha/handlers",
        ALPHA_MANAGER,
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{list}");

    // Every stalled connection is closed within the header timeout (with
    // a margin for a loaded machine: the listener accepts the last ones
    // after the test connected them).
    let deadline = connected + HEADER_TIMEOUT + Duration::from_secs(10);
    let mut open = 0;
    for tcp in &mut stalled {
        if !closed_by(tcp, deadline).await {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "{open} of {stalled_count} stalled connections still open"
    );
    drop(stalled);
    let (status, _) = get(&server, "/metrics").await;
    assert_eq!(status, 200);
    server.assert_honest_client_served().await;
}

/// How a stalled client of the management listener stops.
#[derive(Clone, Copy, Debug)]
enum Stall {
    /// Opens TCP and sends nothing.
    Silent,
    /// Sends the first bytes of a TLS ClientHello record, never the rest.
    HalfHello,
    /// Completes the TLS handshake, then starts a request and never
    /// finishes its head.
    HalfRequest,
}

/// Whether the server closed `tls` before `deadline`.
async fn tls_closed_by(
    tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
    deadline: tokio::time::Instant,
) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn slowloris_on_the_management_listener_is_cut_off_and_everyone_is_still_served() {
    let server = server(&[], |_| {}).await;
    let management = server.management.expect("management listener");
    let before = open_fds();
    // 2,000 TCP connections that never finish the TLS handshake (half of
    // them silent, half stopping inside the ClientHello record), then 100
    // that finish it and never finish a request's head: the newest, so the
    // server holds them (and the newest others) until the header timeout.
    let hello_start = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let mut stalled = Vec::new();
    for n in 0..2_000 {
        let kind = if n % 2 == 0 {
            Stall::Silent
        } else {
            Stall::HalfHello
        };
        let mut tcp = TcpStream::connect(management).await.expect("connect");
        if let Stall::HalfHello = kind {
            tcp.write_all(&hello_start).await.expect("write");
        }
        stalled.push((kind, tcp));
    }
    let mut half_requests = Vec::new();
    for _ in 0..100 {
        let mut tls = management_tls(&server).await.expect("TLS");
        tls.write_all(b"GET /v1/audit HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .expect("write");
        tls.flush().await.expect("flush");
        half_requests.push(tls);
    }
    let connected = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The server holds at most its cap of them (this process holds both
    // ends: the test's 2,100, the server's at most MAX_CONNECTIONS).
    let stalled_count = stalled.len() + half_requests.len();
    let held = open_fds().saturating_sub(before);
    assert!(
        held <= stalled_count + MAX_CONNECTIONS + 64,
        "{held} descriptors for {stalled_count} stalled connections"
    );

    // Meanwhile: the public listener, the admin listener and the
    // management API serve honest clients.
    server.assert_honest_client_served().await;
    let (status, metrics) = get(&server, "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    let (status, list) = api(
        &server,
        "GET",
        "/v1/tenants/alpha/handlers",
        ALPHA_MANAGER,
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{list}");

    // Every stalled connection is closed within the header timeout (the
    // TLS handshake's and the request head's; with a margin for a loaded
    // machine).
    let deadline = connected + HEADER_TIMEOUT + Duration::from_secs(10);
    let mut open = Vec::new();
    for (kind, tcp) in &mut stalled {
        if !closed_by(tcp, deadline).await {
            open.push(format!("{kind:?}"));
        }
    }
    for tls in &mut half_requests {
        if !tls_closed_by(tls, deadline).await {
            open.push(format!("{:?}", Stall::HalfRequest));
        }
    }
    assert!(
        open.is_empty(),
        "{} of {stalled_count} stalled connections still open: {open:?}",
        open.len()
    );
    drop((stalled, half_requests));
    let (status, _) = api(&server, "GET", "/v1/audit", OPERATOR, Value::Null).await;
    assert_eq!(status, 200);
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn requests_without_a_token_reach_the_audit_log_once_per_source_naming_nothing() {
    let server = server(&[], |_| {}).await;
    let junk = "x".repeat(60_000);
    let paths = [
        format!("/v1/tenants/alpha/handlers/{junk}"),
        format!("/v1/tenants/{junk}/handlers/bot/versions"),
        format!("/v1/tenants/beta/handlers/{junk}/promote"),
    ];
    for n in 0..300 {
        let path = &paths[n % paths.len()];
        let method = if path.ends_with("handlers/") || n % 3 == 0 {
            "GET"
        } else {
            "POST"
        };
        let token = (n % 2 == 0).then_some("not-a-token");
        let (status, _, answer) = raw(&server, method, path, token, "").await;
        assert_eq!(status, 401, "{answer}");
    }
    // A tenant's token on a path naming no configured tenant and an
    // invalid handler name: refused, and audited without those names.
    let (status, _, _) = raw(
        &server,
        "GET",
        &format!("/v1/tenants/{}/handlers", "v".repeat(200)),
        Some(BETA_MANAGER),
        "",
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = raw(
        &server,
        "GET",
        &format!("/v1/tenants/alpha/handlers/{}", "BAD!".repeat(100)),
        Some(ALPHA_MANAGER),
        "",
    )
    .await;
    assert_eq!(status, 400);

    let (status, all) = api(
        &server,
        "GET",
        "/v1/audit?limit=10000",
        OPERATOR,
        Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    let entries = all["entries"].as_array().expect("entries");
    let anonymous: Vec<&Value> = entries
        .iter()
        .filter(|e| e["actor"] == "anonymous")
        .collect();
    assert_eq!(
        anonymous.len(),
        1,
        "one record for 127.0.0.1: {anonymous:#?}"
    );
    assert_eq!(anonymous[0]["action"], "unauthenticated");
    assert_eq!(anonymous[0]["from"], "127.0.0.1");
    assert_eq!(anonymous[0]["tenant"], Value::Null);
    assert_eq!(anonymous[0]["handler"], Value::Null);
    for e in entries {
        let text = e.to_string();
        assert!(text.len() < 2048, "an entry of {} bytes", text.len());
        assert!(!text.contains("xxxxxxxx") && !text.contains("vvvvvvvv") && !text.contains("BAD!"));
    }
    // Alpha's own view has nothing that anyone else planted in its name.
    let (_, alpha) = api(&server, "GET", "/v1/audit", ALPHA_MANAGER, Value::Null).await;
    let alpha = alpha["entries"].as_array().expect("entries").clone();
    assert!(
        alpha.iter().all(|e| e["actor"] == "tenant:alpha"),
        "{alpha:#?}"
    );

    // An honest push is served and audited for alpha.
    let echo = component(handlers::ECHO);
    let (status, answer) = push(&server, ALPHA_MANAGER, "alpha", "bot", &echo, None, None).await;
    assert_eq!(status, 201, "{answer}");
    let (_, alpha) = api(&server, "GET", "/v1/audit", ALPHA_MANAGER, Value::Null).await;
    assert!(
        alpha["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["action"] == "push" && e["outcome"] == "ok" && e["handler"] == "bot"),
        "{alpha:#}"
    );
}

#[tokio::test]
async fn a_tenants_management_requests_have_their_own_rate() {
    let server = server(&[], |c| {
        let alpha = c.tenants.get_mut("alpha").expect("alpha");
        alpha.quotas.management_requests_per_sec = 2;
    })
    .await;
    let list = "/v1/tenants/alpha/handlers";
    for _ in 0..2 {
        let (status, _, answer) = raw(&server, "GET", list, Some(ALPHA_MANAGER), "").await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, headers, answer) = raw(&server, "GET", list, Some(ALPHA_MANAGER), "").await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"]["code"], "rate_limited");
    let retry: u64 = header(&headers, "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds");
    assert!((1..=2).contains(&retry), "Retry-After: {retry}");
    // Beta's token and the operator's are not held back by alpha's rate.
    for token in [
        BETA_MANAGER,
        BETA_MANAGER,
        BETA_MANAGER,
        OPERATOR,
        OPERATOR,
        OPERATOR,
    ] {
        let path = if token == BETA_MANAGER {
            "/v1/tenants/beta/handlers"
        } else {
            list
        };
        let (status, _, answer) = raw(&server, "GET", path, Some(token), "").await;
        assert_eq!(status, 200, "{answer}");
    }
    // After the wait it asked for, alpha is served again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let (status, _, answer) = raw(&server, "GET", list, Some(ALPHA_MANAGER), "").await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn a_tenant_has_one_push_in_flight_and_another_tenant_is_not_refused() {
    let server = std::sync::Arc::new(
        server(&[Capability::State, Capability::Log], |c| {
            let alpha = c.tenants.get_mut("alpha").expect("alpha");
            if let Some(m) = &mut alpha.managed {
                m.limits.deadline = Duration::from_millis(1500);
            }
        })
        .await,
    );
    // Alpha's first push: its smoke call sleeps until the deadline.
    let slow = {
        let server = server.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let misbehave = component(handlers::MISBEHAVE);
            let answer = push(
                &server,
                ALPHA_MANAGER,
                "alpha",
                "bot",
                &misbehave,
                Some(vec![sample("bot", json!({"mode": "sleep"}))]),
                None,
            )
            .await;
            (answer, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let echo = component(handlers::ECHO);
    let body = sluice::control::client::push_body(&echo, None, None, None);
    let body = String::from_utf8(body).expect("JSON");
    let (status, headers, answer) = raw(
        &server,
        "POST",
        "/v1/tenants/alpha/handlers/other/versions",
        Some(ALPHA_MANAGER),
        &body,
    )
    .await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"]["code"], "push_in_flight");
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    // Beta pushes meanwhile: not refused.
    let (status, answer) = push(&server, BETA_MANAGER, "beta", "bot", &echo, None, None).await;
    assert_eq!(status, 201, "{answer}");

    let ((status, answer), took) = slow.await.expect("the slow push");
    assert!(
        took >= Duration::from_millis(1000),
        "the push was in flight {took:?}"
    );
    assert_eq!(status, 422, "the sleeping sample ran out of time: {answer}");
    // Once it is done, alpha pushes again.
    let (status, answer) = push(&server, ALPHA_MANAGER, "alpha", "other", &echo, None, None).await;
    assert_eq!(status, 201, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_refused_before_its_body_is_read_still_gets_its_answer() {
    // A 401 or 429 is answered before the body is read; closing the socket
    // with the body unread used to reset the connection, so a client still
    // writing a push of a few MiB got "broken pipe" instead of the answer.
    let server = server(&[], |c| {
        let alpha = c.tenants.get_mut("alpha").expect("alpha");
        alpha.quotas.management_requests_per_sec = 1;
    })
    .await;
    let api = server.management_client();
    let path = "/v1/tenants/alpha/handlers/big/versions";
    let body = vec![b'x'; 8 * 1024 * 1024];
    for _ in 0..20 {
        let (status, answer) = api
            .request(http::Method::POST, path, None, body.clone())
            .await
            .expect("the 401 reaches the client, not a reset");
        let answer: Value = serde_json::from_slice(&answer).expect("JSON");
        assert_eq!(
            (status, &answer["error"]["code"]),
            (401, &json!("unauthorized")),
            "{answer}"
        );
    }
    // Alpha's token, over its rate: 429, also before the body.
    let mut codes = Vec::new();
    for _ in 0..3 {
        let (status, answer) = api
            .request(http::Method::POST, path, Some(ALPHA_MANAGER), body.clone())
            .await
            .expect("the answer reaches the client, not a reset");
        let answer: Value = serde_json::from_slice(&answer).expect("JSON");
        codes.push((status, answer["error"]["code"].clone()));
    }
    assert!(codes.contains(&(429, json!("rate_limited"))), "{codes:?}");
    // An honest request is served after.
    let (status, _, answer) = raw(
        &server,
        "GET",
        "/v1/tenants/beta/handlers",
        Some(BETA_MANAGER),
        "",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}
