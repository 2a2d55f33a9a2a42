//! Tokens (SECURITY.md): every attack on the JWT is refused at the handshake
//! with 401 and no detail, and an honest client is served right after.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sluice::client::ConnectError;
use sluice_tests::server::{
    ALPHA_SECRET, AUDIENCE, ISSUER, TestServer, claims, now, sign_hs, sign_raw,
};

async fn refused(server: &TestServer, tenant: &str, token: &str, what: &str) {
    match server.connect(tenant, token).await {
        Err(ConnectError::Refused(401)) => {}
        Err(e) => panic!("{what}: expected 401, got {e}"),
        Ok(_) => panic!("{what}: the token was accepted"),
    }
}

fn with(mut c: serde_json::Map<String, Value>, key: &str, value: Value) -> Value {
    if value.is_null() {
        c.remove(key);
    } else {
        c.insert(key.into(), value);
    }
    Value::Object(c)
}

fn hs(claims: &Value) -> String {
    sign_hs(ALPHA_SECRET, claims, Algorithm::HS256, Some("k1"))
}

#[tokio::test]
async fn claim_attacks_are_refused_with_401() {
    let server = TestServer::start().await;
    let c = || claims("mallory");
    let cases: Vec<(&str, String)> = vec![
        ("expired exp", hs(&with(c(), "exp", json!(now() - 10)))),
        ("missing exp", hs(&with(c(), "exp", Value::Null))),
        (
            "string exp",
            hs(&with(c(), "exp", json!((now() + 3600).to_string()))),
        ),
        (
            "nbf in the future",
            hs(&with(c(), "nbf", json!(now() + 600))),
        ),
        ("string nbf", hs(&with(c(), "nbf", json!("0")))),
        (
            "wrong iss",
            hs(&with(c(), "iss", json!("https://evil.example.com"))),
        ),
        ("missing iss", hs(&with(c(), "iss", Value::Null))),
        ("wrong aud", hs(&with(c(), "aud", json!("someone-else")))),
        ("missing aud", hs(&with(c(), "aud", Value::Null))),
        ("missing sub", hs(&with(c(), "sub", Value::Null))),
        ("numeric sub", hs(&with(c(), "sub", json!(42)))),
    ];
    for (what, token) in cases {
        refused(&server, "alpha", &token, what).await;
    }
    // Control: the same claims, valid, are accepted.
    server
        .connect("alpha", &hs(&Value::Object(c())))
        .await
        .expect("valid token");
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn algorithm_and_key_attacks_are_refused_with_401() {
    let server = TestServer::start().await;
    let body = Value::Object(claims("mallory"));

    // alg: none, with and without a signature.
    let none_header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(body.to_string());
    refused(
        &server,
        "alpha",
        &format!("{none_header}.{payload}."),
        "alg none",
    )
    .await;
    refused(
        &server,
        "alpha",
        &format!("{none_header}.{payload}"),
        "alg none, two parts",
    )
    .await;

    // An algorithm outside the key's pin (the secret is right).
    refused(
        &server,
        "alpha",
        &sign_hs(ALPHA_SECRET, &body, Algorithm::HS512, Some("k1")),
        "HS512 on an HS256 key",
    )
    .await;

    // Key confusion: HS256 "signed" with gamma's EC public key as the secret.
    let confused = sign_hs(&server.ec.public_pem, &body, Algorithm::HS256, Some("ec1"));
    refused(&server, "gamma", &confused, "HS256 with the EC public key").await;
    // Control: a real ES256 token of gamma works.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec1".into());
    let es = jsonwebtoken::encode(
        &header,
        &body,
        &EncodingKey::from_ec_pem(server.ec.private_pem.as_bytes()).expect("ec key"),
    )
    .expect("sign");
    server
        .connect("gamma", &es)
        .await
        .expect("a valid ES256 token");

    // Unknown kid; kids that look like paths or URLs; no kid at all.
    for (kid, what) in [
        (Some("k2"), "unknown kid"),
        (Some("../../../../etc/passwd"), "path kid"),
        (Some("https://evil.example.com/key"), "URL kid"),
        (None, "no kid where the key has one"),
    ] {
        refused(
            &server,
            "alpha",
            &sign_hs(ALPHA_SECRET, &body, Algorithm::HS256, kid),
            what,
        )
        .await;
    }

    // Headers that bring their own key or key location, or crit extensions.
    for (extra, what) in [
        (json!({"jku": "https://evil.example.com/jwks.json"}), "jku"),
        (json!({"x5u": "https://evil.example.com/cert.pem"}), "x5u"),
        (
            json!({"jwk": {"kty": "oct", "k": URL_SAFE_NO_PAD.encode("attacker-key")}}),
            "jwk",
        ),
        (json!({"crit": ["exp"]}), "crit"),
    ] {
        let mut header = json!({"alg": "HS256", "typ": "JWT", "kid": "k1"});
        for (k, v) in extra.as_object().expect("object") {
            header[k] = v.clone();
        }
        refused(
            &server,
            "alpha",
            &sign_raw(&header, &body, ALPHA_SECRET.as_bytes()),
            what,
        )
        .await;
    }
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn tampering_and_cross_tenant_tokens_are_refused_with_401() {
    let server = TestServer::start().await;
    let good = server.token("alpha", "alice", "chat:write");
    let parts: Vec<&str> = good.split('.').collect();

    // A payload swapped for another subject, signature kept.
    let forged = URL_SAFE_NO_PAD.encode(json!({"sub": "admin", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 3600, "scope": "admin"}).to_string());
    refused(
        &server,
        "alpha",
        &format!("{}.{forged}.{}", parts[0], parts[2]),
        "tampered payload",
    )
    .await;
    // A flipped signature byte.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("sig");
    sig[0] ^= 1;
    refused(
        &server,
        "alpha",
        &format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig)),
        "tampered signature",
    )
    .await;
    // Garbage.
    refused(&server, "alpha", "not-a-token", "garbage").await;
    refused(&server, "alpha", &"a".repeat(4000), "long garbage").await;

    // A valid token of tenant alpha presented to tenant beta (same kid).
    refused(&server, "beta", &good, "alpha's token at beta").await;
    // And beta's own token works there.
    server
        .connect("beta", &server.token("beta", "bob", ""))
        .await
        .expect("beta token at beta");
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn scopes_and_exposed_claims_reach_the_session_not_the_token() {
    let server = TestServer::start().await;
    // The echo route `admin.echo` needs scope admin.
    let mut user = server
        .connect("alpha", &server.token("alpha", "user", "chat:write"))
        .await
        .expect("user");
    let err = user
        .request(json!({"type": "admin.echo", "id": "1", "data": 1}))
        .await;
    assert_eq!(err["code"], "forbidden");
    let mut admin = server
        .connect("alpha", &server.token("alpha", "root", "admin chat:write"))
        .await
        .expect("admin");
    let ack = admin
        .request(json!({"type": "admin.echo", "id": "1", "data": 1}))
        .await;
    assert_eq!(ack["type"], "ack");
    user.assert_usable().await;
}
