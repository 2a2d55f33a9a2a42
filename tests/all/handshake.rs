//! Transport and handshake (SECURITY.md): each attack refused with its
//! documented response, and an honest client served right after.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice::client::{ClientOptions, ConnectError, TokenVia};
use sluice_tests::server::{ALPHA_ORIGIN, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn plaintext_ws_never_reaches_the_upgrade() {
    let server = TestServer::start().await;
    let token = server.token("alpha", "eve", "");
    let mut tcp = TcpStream::connect(server.addr).await.expect("tcp");
    tcp.write_all(
        upgrade_request("/ws/alpha", &format!("Authorization: Bearer {token}\r\n")).as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("answer or close");
    let text = String::from_utf8_lossy(&buf[..read.unwrap_or(0)]).to_string();
    assert!(!text.contains("101"), "plaintext got an upgrade: {text:?}");
    assert!(
        !text.starts_with("HTTP/1.1"),
        "plaintext got an HTTP answer: {text:?}"
    );
    server.assert_honest_client_served().await;
}

async fn status_with_origin(
    server: &TestServer,
    tenant: &str,
    origin: Option<&str>,
) -> Result<(), u16> {
    let opts = ClientOptions {
        token: Some(server.token(tenant, "web", "")),
        origin: origin.map(str::to_owned),
        ..server.options()
    };
    match server.connect_with(tenant, opts).await {
        Ok(_) => Ok(()),
        Err(ConnectError::Refused(status)) => Err(status),
        Err(e) => panic!("unexpected failure: {e}"),
    }
}

#[tokio::test]
async fn origins_are_matched_exactly_before_any_101() {
    let server = TestServer::start_with(|c| {
        if let Some(beta) = c.tenants.get_mut("beta") {
            beta.require_origin = true;
        }
    })
    .await;
    assert_eq!(
        status_with_origin(&server, "alpha", Some(ALPHA_ORIGIN)).await,
        Ok(())
    );
    assert_eq!(
        status_with_origin(&server, "alpha", None).await,
        Ok(()),
        "native clients send no Origin"
    );
    for hostile in [
        "https://evil.example.com",
        "null",
        "https://app.example.com.evil.com",
        "https://evil.com/https://app.example.com",
        "http://app.example.com",
        "https://APP.example.com",
        "https://app.example.com:443",
    ] {
        assert_eq!(
            status_with_origin(&server, "alpha", Some(hostile)).await,
            Err(403),
            "origin {hostile}"
        );
    }
    // A tenant that requires an Origin refuses clients without one.
    assert_eq!(status_with_origin(&server, "beta", None).await, Err(403));
    assert_eq!(
        status_with_origin(&server, "beta", Some(ALPHA_ORIGIN)).await,
        Ok(())
    );
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn unknown_tenants_and_paths_get_404() {
    let server = TestServer::start().await;
    let token = server.token("alpha", "a", "");
    for path in ["nosuch", "alpha/extra", ""] {
        let opts = ClientOptions {
            token: Some(token.clone()),
            ..server.options()
        };
        match server.connect_with(path, opts).await {
            Err(ConnectError::Refused(404)) => {}
            other => panic!("{path}: {:?}", other.err()),
        }
    }
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn tokens_are_accepted_from_the_subprotocol_and_from_the_query_only_when_allowed() {
    let server = TestServer::start_with(|c| {
        if let Some(beta) = c.tenants.get_mut("beta") {
            beta.query_token = true;
        }
    })
    .await;
    let opts = |tenant: &str, via| ClientOptions {
        token: Some(server.token(tenant, "b", "")),
        via,
        ..server.options()
    };
    server
        .connect_with("alpha", opts("alpha", TokenVia::Subprotocol))
        .await
        .expect("subprotocol token");
    match server
        .connect_with("alpha", opts("alpha", TokenVia::Query))
        .await
    {
        Err(ConnectError::Refused(401)) => {}
        other => panic!("query token accepted where not enabled: {:?}", other.err()),
    }
    server
        .connect_with("beta", opts("beta", TokenVia::Query))
        .await
        .expect("query token where enabled");
    // No token at all.
    match server.connect_with("alpha", server.options()).await {
        Err(ConnectError::Refused(401)) => {}
        other => panic!("{:?}", other.err()),
    }
    server.assert_honest_client_served().await;
}

/// TLS, then a hand-written upgrade request; returns the response head.
async fn raw_upgrade(server: &TestServer, extra_headers: &str) -> String {
    use std::sync::Arc;

    use rustls::pki_types::ServerName;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&server.ca_pem) {
        roots.add(c.expect("pem")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(server.addr).await.expect("tcp");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
        .expect("tls");
    tls.write_all(upgrade_request("/ws/alpha", extra_headers).as_bytes())
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut byte))
            .await
            .expect("response")
        {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).to_lowercase()
}

#[tokio::test]
async fn permessage_deflate_is_never_negotiated() {
    let server = TestServer::start().await;
    let token = server.token("alpha", "z", "");
    let head = raw_upgrade(
        &server,
        &format!("Authorization: Bearer {token}\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"),
    )
    .await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        !head.contains("sec-websocket-extensions"),
        "compression negotiated: {head}"
    );
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn slow_handshakes_are_dropped_at_the_deadline_and_do_not_block_others() {
    let server = TestServer::start_with(|c| c.server.handshake_timeout_ms = 800).await;
    // 1000 clients that dribble one byte every 200 ms.
    let mut slow = Vec::new();
    for _ in 0..1000 {
        slow.push(tokio::spawn({
            let addr = server.addr;
            async move {
                let started = Instant::now();
                let Ok(mut tcp) = TcpStream::connect(addr).await else {
                    return None;
                };
                for b in b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
                    .iter()
                    .cycle()
                {
                    if tcp.write_all(&[*b]).await.is_err() {
                        return Some(started.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if started.elapsed() > Duration::from_secs(15) {
                        return None;
                    }
                    let mut probe = [0u8; 1];
                    if let Ok(Ok(0)) =
                        tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut probe)).await
                    {
                        return Some(started.elapsed());
                    }
                }
                None
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Honest clients connect and are served while the slow ones hang on.
    for _ in 0..3 {
        server.assert_honest_client_served().await;
    }
    let mut dropped = 0;
    for s in slow {
        if let Some(after) = s.await.expect("join") {
            // The deadline is 0.8 s; the bound leaves room for 1000
            // client tasks in this process on a busy 2-core machine to
            // notice (the server dropped them long before).
            assert!(
                after < Duration::from_secs(10),
                "dropped only after {after:?}"
            );
            dropped += 1;
        }
    }
    assert_eq!(
        dropped, 1000,
        "every slow handshake is dropped by the server"
    );
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn per_ip_connection_cap_and_handshake_rate() {
    let server = TestServer::start_with(|c| c.server.max_connections_per_ip = 3).await;
    let token = server.token("alpha", "ip", "");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            server
                .connect("alpha", &token)
                .await
                .expect("under the cap"),
        );
    }
    assert!(
        server.connect("alpha", &token).await.is_err(),
        "a 4th connection from one IP is dropped"
    );
    held.pop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    held.push(
        server
            .connect("alpha", &token)
            .await
            .expect("a slot was freed"),
    );

    let server = TestServer::start_with(|c| {
        c.server.handshakes_per_ip_per_sec = 1;
        c.server.handshake_burst_per_ip = 3;
    })
    .await;
    let token = server.token("alpha", "storm", "");
    let mut ok = 0;
    let started = std::time::Instant::now();
    for _ in 0..8 {
        if server.connect("alpha", &token).await.is_ok() {
            ok += 1;
        }
    }
    // A burst of 3, then 1 per second for however long the attempts took.
    let most = 3 + started.elapsed().as_secs_f64().ceil() as usize + 1;
    assert!(
        ok >= 3 && ok <= most.min(7),
        "{ok} of 8 connected (at most {most})"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn per_subject_and_per_tenant_connection_caps_answer_429() {
    let server = TestServer::start_with(|c| {
        if let Some(a) = c.tenants.get_mut("alpha") {
            a.limits.max_connections_per_subject = 2;
            a.limits.max_connections = 4;
        }
    })
    .await;
    let t = |sub: &str| server.token("alpha", sub, "");
    let _a1 = server.connect("alpha", &t("same")).await.expect("1");
    let a2 = server.connect("alpha", &t("same")).await.expect("2");
    match server.connect("alpha", &t("same")).await {
        Err(ConnectError::Refused(429)) => {}
        other => panic!("{:?}", other.err()),
    }
    let _b1 = server.connect("alpha", &t("other1")).await.expect("3");
    let _b2 = server.connect("alpha", &t("other2")).await.expect("4");
    match server.connect("alpha", &t("other3")).await {
        Err(ConnectError::Refused(429)) => {}
        other => panic!("{:?}", other.err()),
    }
    // Another tenant is not affected by alpha's cap.
    let mut beta = server
        .connect("beta", &server.token("beta", "x", ""))
        .await
        .expect("beta");
    beta.assert_usable().await;
    drop(a2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = server
        .connect("alpha", &t("same"))
        .await
        .expect("a slot was freed");
    let ack = again
        .request(json!({"type": "echo", "id": "1", "data": 1}))
        .await;
    assert_eq!(ack["data"], 1);
}
