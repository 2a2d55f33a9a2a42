//! TLS details: the hybrid post-quantum key exchange is offered and taken,
//! and the server's order of cipher suites wins over the client's.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rustls::crypto::aws_lc_rs::{cipher_suite, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CipherSuite, NamedGroup, SupportedCipherSuite, SupportedProtocolVersion};
use serde_json::json;
use sluice_tests::server::TestServer;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A TLS handshake with the test server from a rustls client that offers
/// exactly these suites, groups and versions, in this order.
async fn handshake(
    server: &TestServer,
    suites: &[SupportedCipherSuite],
    groups: &[&'static dyn SupportedKxGroup],
    versions: &[&'static SupportedProtocolVersion],
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&server.ca_pem) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let provider = CryptoProvider {
        cipher_suites: suites.to_vec(),
        kx_groups: groups.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(server.addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
}

/// Upgrade an established TLS stream and round-trip an echo: the client is
/// served, not only handshaken.
async fn assert_served(server: &TestServer, tls: TlsStream<TcpStream>) {
    let mut request = server.url("alpha").into_client_request().expect("request");
    request.headers_mut().insert(
        tokio_tungstenite::tungstenite::http::header::AUTHORIZATION,
        format!("Bearer {}", server.token("alpha", "tls", ""))
            .parse()
            .expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("upgrade");
    let welcome = ws.next().await.expect("frame").expect("ok");
    assert!(welcome.to_text().expect("text").contains("welcome"));
    ws.send(Message::text(
        json!({"type": "echo", "id": "t", "data": "pq"}).to_string(),
    ))
    .await
    .expect("send");
    let ack = ws.next().await.expect("frame").expect("ok");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(ack.to_text().expect("text")).expect("json"),
        json!({"type": "ack", "id": "t", "data": "pq"})
    );
}

const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

#[tokio::test]
async fn a_client_offering_only_the_hybrid_post_quantum_group_gets_it() {
    let server = TestServer::start().await;
    let suites = rustls::crypto::aws_lc_rs::DEFAULT_CIPHER_SUITES;
    let tls = handshake(&server, suites, &[kx_group::X25519MLKEM768], TLS13)
        .await
        .expect("a handshake with X25519MLKEM768 only");
    let (_, conn) = tls.get_ref();
    assert_eq!(
        conn.negotiated_key_exchange_group().map(|g| g.name()),
        Some(NamedGroup::X25519MLKEM768)
    );
    assert_served(&server, tls).await;

    // A classical client is still served, with X25519.
    let tls = handshake(&server, suites, &[kx_group::X25519], TLS13)
        .await
        .expect("a handshake with X25519 only");
    assert_eq!(
        tls.get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|g| g.name()),
        Some(NamedGroup::X25519)
    );
    assert_served(&server, tls).await;

    // The server offers nothing weaker than its list: a client with only a
    // group the server does not enable (ML-KEM-768 on its own) is refused.
    assert!(
        handshake(&server, suites, &[kx_group::MLKEM768], TLS13)
            .await
            .is_err()
    );
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn the_server_picks_its_own_first_cipher_suite_not_the_clients() {
    let server = TestServer::start().await;
    let groups = rustls::crypto::aws_lc_rs::ALL_KX_GROUPS;
    // TLS 1.3: ChaCha20 first, AES-128 second. The server prefers AES
    // (its order: AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305).
    let tls = handshake(
        &server,
        &[
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
        ],
        groups,
        TLS13,
    )
    .await
    .expect("handshake");
    assert_eq!(
        tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
        Some(CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
    assert_served(&server, tls).await;

    // TLS 1.2 (the test certificate is ECDSA): ChaCha20 first, AES-256 last.
    let tls = handshake(
        &server,
        &[
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ],
        groups,
        TLS12,
    )
    .await
    .expect("handshake");
    assert_eq!(
        tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
        Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
    );
    assert_served(&server, tls).await;

    // A client that offers only ChaCha20 still gets it.
    let tls = handshake(
        &server,
        &[cipher_suite::TLS13_CHACHA20_POLY1305_SHA256],
        groups,
        TLS13,
    )
    .await
    .expect("handshake");
    assert_eq!(
        tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
        Some(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256)
    );
    server.assert_honest_client_served().await;
}
