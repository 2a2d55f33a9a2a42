//! Before TLS: IPv6 clients share per-IP limits per /64, a global cap on
//! connections in the TLS/upgrade phase, and the PROXY protocol v2 from
//! configured load balancers only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use sluice::config::Cidr;
use sluice::server::metrics::AcceptRefusal;
use sluice::server::proxy;
use sluice_tests::server::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A client connection to `addr`: `prefix` written first (a PROXY header),
/// then TLS for `localhost` and the upgrade with a token for `sub`; an echo
/// round trip proves it is served. `Err` says where it failed.
async fn client(
    server: &TestServer,
    addr: SocketAddr,
    prefix: &[u8],
    sub: &str,
) -> Result<impl Sized + use<>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&server.ca_pem) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("tcp: {e}"))?;
    tcp.write_all(prefix)
        .await
        .map_err(|e| format!("prefix: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let mut request = format!("wss://localhost:{}/ws/alpha", addr.port())
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        tokio_tungstenite::tungstenite::http::header::AUTHORIZATION,
        format!("Bearer {}", server.token("alpha", sub, ""))
            .parse()
            .expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    ws.next()
        .await
        .ok_or("no welcome")?
        .map_err(|e| e.to_string())?;
    ws.send(Message::text(
        json!({"type": "echo", "id": "e", "data": sub}).to_string(),
    ))
    .await
    .map_err(|e| e.to_string())?;
    let ack = ws
        .next()
        .await
        .ok_or("no ack")?
        .map_err(|e| e.to_string())?;
    let ack: serde_json::Value = serde_json::from_str(ack.to_text().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    if ack != json!({"type": "ack", "id": "e", "data": sub}) {
        return Err(format!("answer: {ack}"));
    }
    Ok(ws)
}

/// A PROXY v2 header for a client at `ip` reaching `server`.
fn proxied(ip: &str, server: SocketAddr) -> Vec<u8> {
    proxy::header(SocketAddr::new(ip.parse().expect("ip"), 40000), server)
}

fn cidr(s: &str) -> Cidr {
    Cidr::try_from(s.to_owned()).expect("cidr")
}

#[tokio::test]
async fn ipv6_loopback_clients_are_capped_per_prefix() {
    let server = TestServer::start_with(|c| {
        c.server.listen = "[::1]:0".parse().expect("addr");
        c.server.max_connections_per_ip = 2;
    })
    .await;
    assert!(server.addr.is_ipv6());
    let a = client(&server, server.addr, b"", "v6a")
        .await
        .expect("first");
    let b = client(&server, server.addr, b"", "v6b")
        .await
        .expect("second");
    let third = client(&server, server.addr, b"", "v6c").await;
    assert!(third.is_err(), "a third connection from ::/64 is closed");
    assert_eq!(server.state.refused.get(AcceptRefusal::IpConnections), 1);
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(200)).await;
    client(&server, server.addr, b"", "v6d")
        .await
        .expect("served once the others left");
}

#[tokio::test]
async fn connections_past_the_handshake_cap_are_closed_at_once() {
    let server = TestServer::start_with(|c| {
        c.server.max_handshakes_in_flight = 4;
        // Long enough that only the cap can explain a quick close.
        c.server.handshake_timeout_ms = 20_000;
    })
    .await;
    // Four connections that never start TLS fill the cap.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.state.handshakes_in_flight() < 4 {
        assert!(
            Instant::now() < deadline,
            "the idle connections were not accepted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The fifth is closed at once: EOF (or a reset) long before the
    // handshake deadline.
    let started = Instant::now();
    let mut fifth = TcpStream::connect(server.addr).await.expect("connect");
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), fifth.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the fifth connection is closed at once: {read:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        server
            .connect("alpha", &server.token("alpha", "x", ""))
            .await
            .is_err()
    );
    assert!(server.state.refused.get(AcceptRefusal::HandshakesInFlight) >= 2);
    assert_eq!(server.state.handshakes_in_flight(), 4);

    // Once they go, an honest client is served.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.state.handshakes_in_flight() > 0 {
        assert!(Instant::now() < deadline, "the slots were not released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.assert_honest_client_served().await;
    assert_eq!(server.state.handshakes_in_flight(), 0);
}

#[tokio::test]
async fn a_proxy_header_from_a_configured_balancer_sets_the_client_address() {
    let server = TestServer::start_with(|c| {
        c.server.proxy_protocol_from = vec![cidr("127.0.0.0/8")];
        c.server.max_connections_per_ip = 1;
    })
    .await;
    let lb = server.addr;
    // One client per address, whatever the balancer's own address.
    let first = client(&server, lb, &proxied("203.0.113.7", lb), "p1")
        .await
        .expect("a client behind the balancer");
    let refused = client(&server, lb, &proxied("203.0.113.7", lb), "p2").await;
    assert!(
        refused.is_err(),
        "a second connection of 203.0.113.7 is over its cap"
    );
    let other = client(&server, lb, &proxied("198.51.100.9", lb), "p3")
        .await
        .expect("another client address has its own cap");
    // IPv6 clients share their /64.
    let v6 = client(&server, lb, &proxied("2001:db8:1:2::1", lb), "p4")
        .await
        .expect("an IPv6 client");
    let same_64 = client(&server, lb, &proxied("2001:db8:1:2:ffff::2", lb), "p5").await;
    assert!(same_64.is_err(), "the same /64 shares the cap");
    let next_64 = client(&server, lb, &proxied("2001:db8:1:3::1", lb), "p6")
        .await
        .expect("the next /64 has its own");
    assert_eq!(server.state.refused.get(AcceptRefusal::IpConnections), 2);

    // A balancer that sends no header is refused; one that does is served.
    assert!(client(&server, lb, b"", "nohdr").await.is_err());
    assert!(
        client(&server, lb, b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2\r\n", "v1")
            .await
            .is_err()
    );
    assert_eq!(server.state.refused.get(AcceptRefusal::ProxyHeader), 2);
    drop((first, other, v6, next_64));
    tokio::time::sleep(Duration::from_millis(200)).await;
    client(&server, lb, &proxied("203.0.113.7", lb), "p7")
        .await
        .expect("served again once its connection closed");
}

#[tokio::test]
async fn a_proxy_header_from_anyone_else_is_refused() {
    let server = TestServer::start_with(|c| {
        c.server.proxy_protocol_from = vec![cidr("10.0.0.0/8"), cidr("2001:db8::/32")];
        c.server.max_connections_per_ip = 2;
    })
    .await;
    let addr = server.addr;
    // A client that claims another address gets no further than TLS.
    let spoofed = client(&server, addr, &proxied("10.9.9.9", addr), "spoof").await;
    let err = spoofed.err().expect("refused");
    assert!(err.starts_with("tls"), "{err}");
    // No header was read from it: the header's bytes went to TLS.
    assert_eq!(server.state.refused.get(AcceptRefusal::ProxyHeader), 0);
    let v6 = client(&server, addr, &proxied("2001:db8::1", addr), "spoof6").await;
    assert!(v6.err().expect("refused").starts_with("tls"));
    server.assert_honest_client_served().await;
}
