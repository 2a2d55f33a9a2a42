//! A tenant whose keys come from a JWKS URL: fetched over HTTPS at start,
//! refreshed, so a key rotation at the identity provider takes effect
//! without a restart.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sluice::client::ConnectError;
use sluice::config::KeyConfig;
use sluice_tests::server::{TempDir, TestServer, claims};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A P-256 key as a JWK, and the PEM to sign with.
fn ec_key(kid: &str) -> (Value, String) {
    let kp = rcgen::KeyPair::generate().expect("key");
    let raw = kp.public_key_raw();
    assert_eq!(raw.len(), 65, "uncompressed P-256 point");
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
    });
    (jwk, kp.serialize_pem())
}

fn es256(private_pem: &str, kid: &str, sub: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    let key = EncodingKey::from_ec_pem(private_pem.as_bytes()).expect("ec pem");
    jsonwebtoken::encode(&header, &Value::Object(claims(sub)), &key).expect("sign")
}

/// An HTTPS server that answers every request with the current document,
/// or with a 503 while `failing` is set.
struct JwksServer {
    url: String,
    document: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    _dir: TempDir,
    ca_path: std::path::PathBuf,
}

async fn jwks_server(document: Value) -> JwksServer {
    let dir = TempDir::new();
    let (cert, key) = sluice::server::tls::self_signed(&["127.0.0.1"]).expect("cert");
    let (cert_path, key_path) = (dir.0.join("jwks-cert.pem"), dir.0.join("jwks-key.pem"));
    std::fs::write(&cert_path, cert).expect("cert");
    std::fs::write(&key_path, key).expect("key");
    let tls = tokio_rustls::TlsAcceptor::from(
        sluice::server::tls::server_config(&cert_path, &key_path).expect("tls"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!(
        "https://{}/.well-known/jwks.json",
        listener.local_addr().expect("addr")
    );
    let doc = Arc::new(Mutex::new(document.to_string()));
    let fetches = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let (served_doc, served, fail) = (doc.clone(), fetches.clone(), failing.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (tls, doc, served, fail) = (
                tls.clone(),
                served_doc.clone(),
                served.clone(),
                fail.clone(),
            );
            tokio::spawn(async move {
                let Ok(mut s) = tls.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).await.is_ok_and(|n| n == 1) {
                    head.push(b[0]);
                }
                let body = doc.lock().unwrap_or_else(PoisonError::into_inner).clone();
                served.fetch_add(1, Ordering::Relaxed);
                let status = if fail.load(Ordering::Relaxed) {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    JwksServer {
        url,
        document: doc,
        fetches,
        failing,
        ca_path: cert_path,
        _dir: dir,
    }
}

#[tokio::test]
async fn keys_from_a_jwks_url_verify_and_rotate_without_a_restart() {
    let (jwk1, pem1) = ec_key("jw1");
    let (jwk2, pem2) = ec_key("jw2");
    let idp = jwks_server(json!({"keys": [jwk1]})).await;
    let (url, ca) = (idp.url.clone(), idp.ca_path.clone());
    let server = TestServer::start_with(move |c| {
        let mut delta = sluice_tests::server::tenant("unused");
        delta.auth.keys = Vec::<KeyConfig>::new();
        delta.auth.jwks_url = Some(url);
        delta.auth.jwks_ca_file = Some(ca);
        delta.auth.jwks_refresh_secs = 1;
        c.tenants.insert("delta".into(), delta);
    })
    .await;
    assert!(idp.fetches.load(Ordering::Relaxed) >= 1, "fetched at start");

    let mut c = server
        .connect("delta", &es256(&pem1, "jw1", "dora"))
        .await
        .expect("a key from the JWKS URL");
    c.assert_usable().await;
    match server.connect("delta", &es256(&pem2, "jw2", "dora")).await {
        Err(ConnectError::Refused(401)) => {}
        other => panic!("jw2 is not published yet: {:?}", other.err()),
    }

    // The identity provider rotates: jw2 in, jw1 out.
    *idp.document.lock().unwrap_or_else(PoisonError::into_inner) =
        json!({"keys": [jwk2]}).to_string();
    let started = Instant::now();
    loop {
        match server.connect("delta", &es256(&pem2, "jw2", "dora")).await {
            Ok(_) => break,
            Err(ConnectError::Refused(401)) if started.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("jw2 never became valid: {e}"),
        }
    }
    match server.connect("delta", &es256(&pem1, "jw1", "dora")).await {
        Err(ConnectError::Refused(401)) => {}
        other => panic!("jw1 was rotated out: {:?}", other.err()),
    }
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn keys_from_a_jwks_file_verify() {
    let (jwk, pem) = ec_key("file1");
    let dir = TempDir::new();
    let path = dir.0.join("jwks.json");
    std::fs::write(&path, json!({"keys": [jwk]}).to_string()).expect("write");
    let server = TestServer::start_with(move |c| {
        let mut epsilon = sluice_tests::server::tenant("unused");
        epsilon.auth.keys = Vec::<KeyConfig>::new();
        epsilon.auth.jwks_file = Some(path);
        c.tenants.insert("epsilon".into(), epsilon);
    })
    .await;
    server
        .connect("epsilon", &es256(&pem, "file1", "erin"))
        .await
        .expect("a key from the JWKS file");
    let (_, other) = ec_key("file1");
    match server
        .connect("epsilon", &es256(&other, "file1", "erin"))
        .await
    {
        Err(ConnectError::Refused(401)) => {}
        res => panic!(
            "a token signed by another key with the same kid: {:?}",
            res.err()
        ),
    }
    drop(dir);
}

/// A JWKS as identity providers publish them: signing keys beside keys this
/// server cannot use. Returns the document and the good key's PEM.
fn mixed_jwks() -> (Value, String) {
    let (good, pem) = ec_key("good");
    let (enc, _) = ec_key("enc");
    let (no_alg, _) = ec_key("no-alg");
    let (es512, _) = ec_key("es512");
    let mut enc = enc;
    enc["use"] = json!("enc");
    let mut no_alg = no_alg;
    if let Some(o) = no_alg.as_object_mut() {
        o.remove("alg");
    }
    let mut es512 = es512;
    es512["alg"] = json!("ES512");
    let ecdh = json!({"kty": "OKP", "crv": "X25519", "use": "enc", "kid": "ecdh", "x": "AAAA"});
    (json!({"keys": [enc, no_alg, es512, ecdh, good]}), pem)
}

/// The keys beside the good one are skipped; tokens naming them are refused.
async fn only_the_good_key_verifies(server: &TestServer, tenant: &str, good_pem: &str) {
    let mut c = server
        .connect(tenant, &es256(good_pem, "good", "gina"))
        .await
        .expect("the good key verifies");
    c.assert_usable().await;
    for kid in ["enc", "no-alg", "es512", "ecdh"] {
        match server.connect(tenant, &es256(good_pem, kid, "gina")).await {
            Err(ConnectError::Refused(401)) => {}
            other => panic!("kid {kid} was skipped: {:?}", other.err()),
        }
    }
}

#[tokio::test]
async fn unusable_keys_in_a_jwks_file_are_skipped_and_the_good_key_verifies() {
    let (doc, pem) = mixed_jwks();
    let dir = TempDir::new();
    let path = dir.0.join("jwks.json");
    std::fs::write(&path, doc.to_string()).expect("write");
    let server = TestServer::start_with(move |c| {
        let mut epsilon = sluice_tests::server::tenant("unused");
        epsilon.auth.keys = Vec::<KeyConfig>::new();
        epsilon.auth.jwks_file = Some(path);
        c.tenants.insert("epsilon".into(), epsilon);
    })
    .await;
    only_the_good_key_verifies(&server, "epsilon", &pem).await;
    server.assert_honest_client_served().await;
    drop(dir);
}

async fn admin_get(server: &TestServer, path: &str) -> (u16, String) {
    crate::admin::get(server, path).await
}

fn gauge(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// Poll `/readyz` until it answers `status`, within `within`.
async fn readyz_becomes(server: &TestServer, status: u16, within: Duration) -> (Duration, String) {
    let started = Instant::now();
    loop {
        let (got, body) = admin_get(server, "/readyz").await;
        if got == status {
            return (started.elapsed(), body);
        }
        assert!(
            started.elapsed() < within,
            "/readyz still {got} ({body:?}) after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_jwks_url_with_unusable_keys_serves_the_good_key_and_a_failing_one_turns_stale() {
    let (doc, pem) = mixed_jwks();
    let idp = jwks_server(doc).await;
    let (url, ca) = (idp.url.clone(), idp.ca_path.clone());
    let server = TestServer::start_with(move |c| {
        let mut delta = sluice_tests::server::tenant("unused");
        delta.auth.keys = Vec::<KeyConfig>::new();
        delta.auth.jwks_url = Some(url);
        delta.auth.jwks_ca_file = Some(ca);
        delta.auth.jwks_refresh_secs = 1;
        c.tenants.insert("delta".into(), delta);
    })
    .await;
    only_the_good_key_verifies(&server, "delta", &pem).await;

    // Refreshes keep succeeding with the unusable keys in the document.
    let fetched = idp.fetches.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(idp.fetches.load(Ordering::Relaxed) > fetched, "refreshed");
    let (status, _) = admin_get(&server, "/readyz").await;
    assert_eq!(status, 200);
    let (_, m) = admin_get(&server, "/metrics").await;
    assert_eq!(
        gauge(&m, r#"sluice_jwks_stale{tenant="delta"}"#),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        gauge(&m, r#"sluice_jwks_refresh_failures{tenant="delta"}"#),
        Some(0.0)
    );
    assert_eq!(gauge(&m, r#"sluice_jwks_keys{tenant="delta"}"#), Some(1.0));
    assert_eq!(
        gauge(&m, r#"sluice_jwks_skipped_keys{tenant="delta"}"#),
        Some(4.0)
    );
    assert!(
        gauge(
            &m,
            r#"sluice_jwks_last_refresh_age_seconds{tenant="delta"}"#
        )
        .is_some_and(|a| a < 2.5)
    );
    assert_eq!(
        gauge(&m, r#"sluice_jwks_stale{tenant="alpha"}"#),
        None,
        "no JWKS URL"
    );

    // The identity provider starts failing: stale after 3 intervals (3 s).
    idp.failing.store(true, Ordering::Relaxed);
    let (after, body) = readyz_becomes(&server, 503, Duration::from_secs(20)).await;
    assert_eq!(body, "JWKS stale for tenant delta\n");
    assert!(
        after >= Duration::from_secs(1),
        "stale after {after:?}: not at once"
    );
    let (_, m) = admin_get(&server, "/metrics").await;
    assert_eq!(
        gauge(&m, r#"sluice_jwks_stale{tenant="delta"}"#),
        Some(1.0),
        "{m}"
    );
    assert!(gauge(&m, r#"sluice_jwks_refresh_failures{tenant="delta"}"#).is_some_and(|n| n >= 1.0));
    assert!(
        gauge(
            &m,
            r#"sluice_jwks_last_refresh_age_seconds{tenant="delta"}"#
        )
        .is_some_and(|a| a >= 3.0)
    );
    // The keys it had still verify, and other tenants are served.
    server
        .connect("delta", &es256(&pem, "good", "gina"))
        .await
        .expect("the last good keys are kept");
    server.assert_honest_client_served().await;

    // It recovers: ready again, not stale.
    idp.failing.store(false, Ordering::Relaxed);
    readyz_becomes(&server, 200, Duration::from_secs(20)).await;
    let (_, m) = admin_get(&server, "/metrics").await;
    assert_eq!(
        gauge(&m, r#"sluice_jwks_stale{tenant="delta"}"#),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        gauge(&m, r#"sluice_jwks_refresh_failures{tenant="delta"}"#),
        Some(0.0)
    );
}
