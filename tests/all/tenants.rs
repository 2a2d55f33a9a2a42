//! Tenants as data (issue 27): created, changed and removed through the
//! management API over real TLS, served at once, re-checking only that
//! tenant's live sessions.

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use sluice::client::ClientOptions;
use sluice_tests::handlers;
use sluice_tests::server::{AUDIENCE, ISSUER, TestServer, now, sign_hs};

use crate::marketplace::{ALPHA_MANAGER, OPERATOR};

const ACME_ORIGIN: &str = "https://app.acme.example";

/// A chat tenant as the API takes it: one generated HS256 key `k1`, the
/// test chat handler (a file on the server: the operator's to name).
fn acme() -> Value {
    json!({
        "auth": {"issuer": ISSUER, "audience": AUDIENCE, "keys": [{"kid": "k1", "algorithm": "HS256"}]},
        "origins": [ACME_ORIGIN],
        "handlers": {"chat": {"component": handlers::CHAT, "grants": ["state", "clock"]}},
        "routes": {
            "chat.join": {"handler": "chat", "channel": "subscribe"},
            "chat.send": {"handler": "chat", "channel": "publish", "scopes": ["chat:write"],
                          "schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "maxLength": 100}}}}
        },
        "channels": [{"pattern": "room:{id}", "publish": true, "publish_scopes": ["chat:write"]}],
        "managed": {"grants": ["state"]}
    })
}

fn token(secret: &str, kid: &str, sub: &str) -> String {
    let claims = json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "scope": "chat:write", "exp": now() + 3600});
    sign_hs(secret, &claims, Algorithm::HS256, Some(kid))
}

async fn server() -> TestServer {
    crate::marketplace::server(&[], |_| {}).await
}

/// Create `id` as `tenant`: (revision, management token, secret of k1).
async fn create(server: &TestServer, id: &str, tenant: Value) -> (u64, String, String) {
    let (status, created) = server
        .manage(
            "POST",
            "/v1/tenants",
            OPERATOR,
            json!({"id": id, "tenant": tenant}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    (
        created["revision"].as_u64().expect("revision"),
        created["token"].as_str().expect("token").to_owned(),
        created["secrets"]["k1"]
            .as_str()
            .expect("k1's secret")
            .to_owned(),
    )
}

async fn connect_from(
    server: &TestServer,
    tenant: &str,
    token: &str,
    origin: Option<&str>,
) -> sluice_tests::server::Client {
    server
        .connect_with(
            tenant,
            ClientOptions {
                token: Some(token.into()),
                origin: origin.map(str::to_owned),
                ..server.options()
            },
        )
        .await
        .expect("connects")
}

#[tokio::test]
async fn a_tenant_created_through_the_api_serves_at_once_and_chats() {
    let server = server().await;
    let (revision, _, secret) = create(&server, "acme", acme()).await;
    assert!(revision > 0);
    let mut alice = connect_from(&server, "acme", &token(&secret, "k1", "alice"), None).await;
    let mut bob = connect_from(
        &server,
        "acme",
        &token(&secret, "k1", "bob"),
        Some(ACME_ORIGIN),
    )
    .await;
    let joined = alice
        .request(json!({"type": "chat.join", "id": "1", "channel": "room:1"}))
        .await;
    assert_eq!(joined["type"], "ack", "{joined}");
    bob.request(json!({"type": "chat.join", "id": "1", "channel": "room:1"}))
        .await;
    let _ = alice.next_event().await; // bob joined
    let sent = bob
        .request(
            json!({"type": "chat.send", "id": "2", "channel": "room:1", "data": {"text": "hi"}}),
        )
        .await;
    assert_eq!(sent, json!({"type": "ack", "id": "2", "data": {"seq": 1}}));
    assert_eq!(alice.next_event().await["data"]["text"], "hi");
    // The schema the API was given is enforced.
    let refused = bob
        .request(json!({"type": "chat.send", "id": "3", "channel": "room:1", "data": {"text": 7}}))
        .await;
    assert_eq!(refused["code"], "schema_invalid", "{refused}");

    // Read back: the generated secret is hidden; the list names both kinds.
    let (status, shown) = server
        .manage("GET", "/v1/tenants/acme", OPERATOR, Value::Null)
        .await;
    assert_eq!(status, 200);
    assert_eq!(shown["tenant"]["auth"]["keys"][0]["secret"], "(hidden)");
    assert_eq!(shown["source"], "api");
    let (_, list) = server
        .manage("GET", "/v1/tenants", OPERATOR, Value::Null)
        .await;
    let sources: Vec<(String, String)> = list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().into(),
                t["source"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(sources.contains(&("acme".into(), "api".into())), "{list}");
    assert!(
        sources.contains(&("alpha".into(), "config".into())),
        "{list}"
    );
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn changing_origins_closes_only_that_origins_sessions_and_only_that_tenants() {
    let server = server().await;
    let (revision, acme_token, secret) = create(&server, "acme", acme()).await;
    let mut browser = connect_from(
        &server,
        "acme",
        &token(&secret, "k1", "web"),
        Some(ACME_ORIGIN),
    )
    .await;
    let mut native = connect_from(&server, "acme", &token(&secret, "k1", "app"), None).await;
    let mut alpha = server
        .connect("alpha", &server.token("alpha", "a", ""))
        .await
        .expect("alpha");
    // The tenant's own token may change its origins.
    let (status, changed) = server
        .manage(
            "PATCH",
            "/v1/tenants/acme",
            &acme_token,
            json!({"revision": revision, "patch": {"origins": ["https://new.acme.example"]}}),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert!(changed["revision"].as_u64().unwrap() > revision);
    assert_eq!(
        browser.closed().await,
        Some(1008),
        "a session from a removed origin closes"
    );
    native.assert_usable().await;
    alpha.assert_usable().await;
    // The new origin connects; the old one is refused at the handshake.
    connect_from(
        &server,
        "acme",
        &token(&secret, "k1", "web2"),
        Some("https://new.acme.example"),
    )
    .await;
    let refused = server
        .connect_with(
            "acme",
            ClientOptions {
                token: Some(token(&secret, "k1", "web3")),
                origin: Some(ACME_ORIGIN.into()),
                ..server.options()
            },
        )
        .await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn rotating_keys_closes_the_old_keys_sessions_with_1008() {
    let server = server().await;
    let (revision, acme_token, secret) = create(&server, "acme", acme()).await;
    let mut old = connect_from(&server, "acme", &token(&secret, "k1", "old"), None).await;
    let (status, rotated) = server
        .manage(
            "POST",
            "/v1/tenants/acme/keys",
            &acme_token,
            json!({"revision": revision, "rotate": "HS256"}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let secrets = rotated["secrets"].as_object().expect("secrets");
    let (kid, new_secret) = secrets.iter().next().expect("one new key");
    assert_eq!(old.closed().await, Some(1008));
    let mut fresh = connect_from(
        &server,
        "acme",
        &token(new_secret.as_str().unwrap(), kid, "new"),
        None,
    )
    .await;
    fresh.assert_usable().await;
    assert!(
        server
            .connect("acme", &token(&secret, "k1", "late"))
            .await
            .is_err(),
        "the old key no longer verifies"
    );
    // A new management token: the old one stops at once.
    let (_, shown) = server
        .manage("GET", "/v1/tenants/acme", &acme_token, Value::Null)
        .await;
    let current = shown["revision"].as_u64().unwrap();
    let (status, renewed) = server
        .manage(
            "POST",
            "/v1/tenants/acme/keys",
            &acme_token,
            json!({"revision": current, "management_token": true}),
        )
        .await;
    assert_eq!(status, 200, "{renewed}");
    let (status, _) = server
        .manage("GET", "/v1/tenants/acme", &acme_token, Value::Null)
        .await;
    assert_eq!(status, 401);
    let (status, _) = server
        .manage(
            "GET",
            "/v1/tenants/acme",
            renewed["token"].as_str().unwrap(),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn removing_a_tenant_closes_its_sessions_1001_and_frees_its_connections() {
    let server = server().await;
    let mut tenant = acme();
    tenant["limits"] = json!({"max_connections": 2});
    let (revision, _, secret) = create(&server, "acme", tenant.clone()).await;
    let mut a = connect_from(&server, "acme", &token(&secret, "k1", "a"), None).await;
    let _b = connect_from(&server, "acme", &token(&secret, "k1", "b"), None).await;
    assert!(
        server
            .connect("acme", &token(&secret, "k1", "c"))
            .await
            .is_err(),
        "at its connection quota"
    );
    let mut alpha = server
        .connect("alpha", &server.token("alpha", "a", ""))
        .await
        .expect("alpha");
    let (status, removed) = server
        .manage(
            "DELETE",
            &format!("/v1/tenants/acme?revision={revision}"),
            OPERATOR,
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{removed}");
    assert_eq!(a.closed().await, Some(1001));
    alpha.assert_usable().await;
    assert!(
        server
            .connect("acme", &token(&secret, "k1", "a"))
            .await
            .is_err()
    );
    let (status, _) = server
        .manage("GET", "/v1/tenants/acme", OPERATOR, Value::Null)
        .await;
    assert_eq!(status, 404);
    // Created again: a new tenant with its whole quota.
    let (_, _, secret) = create(&server, "acme", tenant).await;
    connect_from(&server, "acme", &token(&secret, "k1", "a"), None).await;
    connect_from(&server, "acme", &token(&secret, "k1", "b"), None).await;
}

#[tokio::test]
async fn an_invalid_tenant_is_refused_with_every_problem_and_nothing_is_kept() {
    let server = server().await;
    let mut bad = acme();
    bad["routes"]["chat.send"]["schema"] = json!({"type": "no-such-type"});
    bad["handlers"]["chat"]["grants"] = json!(["state", "teleport"]);
    bad["routes"]["ghost"] = json!({"handler": "nobody"});
    bad["limits"] = json!({"max_conections": 5});
    let (status, refused) = server
        .manage(
            "POST",
            "/v1/tenants",
            OPERATOR,
            json!({"id": "acme", "tenant": bad}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    let problems: Vec<&str> = refused["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for needle in ["teleport", "max_conections"] {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{needle} not among {problems:?}"
        );
    }
    assert!(
        problems.iter().all(|p| p.starts_with("tenants.acme")),
        "{problems:?}"
    );
    let (status, _) = server
        .manage("GET", "/v1/tenants/acme", OPERATOR, Value::Null)
        .await;
    assert_eq!(status, 404, "nothing was kept");
    // Each of the other problems, alone, is refused too.
    let mut schema = acme();
    schema["routes"]["chat.send"]["schema"] = json!({"type": "no-such-type"});
    // A route to a handler that is neither configured nor pushable (no
    // `managed` section).
    let mut ghost = acme();
    ghost["routes"]["ghost"] = json!({"handler": "nobody"});
    ghost.as_object_mut().unwrap().remove("managed");
    for (what, tenant) in [("schema", schema), ("route", ghost)] {
        let (status, refused) = server
            .manage(
                "POST",
                "/v1/tenants",
                OPERATOR,
                json!({"id": "acme", "tenant": tenant}),
            )
            .await;
        assert_eq!(status, 422, "{what}: {refused}");
    }
    // The file's tenants are read-only here.
    let (status, refused) = server
        .manage(
            "PATCH",
            "/v1/tenants/alpha",
            OPERATOR,
            json!({"revision": 1, "patch": {"origins": []}}),
        )
        .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("configured_tenant"))
    );
    let (status, refused) = server
        .manage(
            "POST",
            "/v1/tenants",
            OPERATOR,
            json!({"id": "alpha", "tenant": acme()}),
        )
        .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("configured_tenant"))
    );
    // And an honest create still works.
    create(&server, "acme", acme()).await;
}

#[tokio::test]
async fn a_tenant_token_reaches_only_its_tenant_and_cannot_raise_its_limits() {
    let server = server().await;
    // This test makes more requests with acme's token than its default
    // management rate allows in a second (a quota the operator sets).
    let mut tenant = acme();
    tenant["quotas"] = json!({"management_requests_per_sec": 1000});
    let (revision, acme_token, _) = create(&server, "acme", tenant).await;
    let (_, _, _) = create(&server, "umbrella", acme()).await;
    // Another tenant (of the API, of the file, or none at all): the same 403.
    for path in [
        "/v1/tenants/umbrella",
        "/v1/tenants/alpha",
        "/v1/tenants/nobody",
    ] {
        let (status, _) = server.manage("GET", path, &acme_token, Value::Null).await;
        assert_eq!(status, 403, "{path}");
        let (status, _) = server
            .manage(
                "PATCH",
                path,
                &acme_token,
                json!({"revision": 1, "patch": {"origins": []}}),
            )
            .await;
        assert_eq!(status, 403, "{path}");
    }
    for (method, path) in [
        ("GET", "/v1/tenants"),
        ("POST", "/v1/tenants"),
        ("DELETE", "/v1/tenants/acme"),
    ] {
        let (status, _) = server
            .manage(method, path, &acme_token, json!({"id": "x", "tenant": {}}))
            .await;
        assert_eq!(status, 403, "{method} {path}");
    }
    // A config tenant's token cannot reach an API tenant either.
    let (status, _) = server
        .manage("GET", "/v1/tenants/acme", ALPHA_MANAGER, Value::Null)
        .await;
    assert_eq!(status, 403);
    // Limits, quotas and grants stay the operator's.
    let (status, refused) = server
        .manage(
            "PATCH",
            "/v1/tenants/acme",
            &acme_token,
            json!({"revision": revision, "patch": {"limits": {"max_connections": 1000000}, "quotas": {"instances": 500}, "managed": {"grants": ["state", "log", "clock"]}}}),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["error"]["code"], "operator_only");
    let fields = refused["fields"].to_string();
    for f in [
        "limits.max_connections",
        "quotas.instances",
        "managed.grants",
    ] {
        assert!(fields.contains(f), "{f} in {fields}");
    }
    // Unauthenticated: 401, whatever the path.
    let (status, _) = server
        .manage(
            "GET",
            "/v1/tenants/acme",
            "not-a-token-at-all-0123456789",
            Value::Null,
        )
        .await;
    assert_eq!(status, 401);
    // Its own tenant it reads and changes (a schema).
    let (status, _) = server
        .manage("GET", "/v1/tenants/acme", &acme_token, Value::Null)
        .await;
    assert_eq!(status, 200);
    let (status, changed) = server
        .manage(
            "PATCH",
            "/v1/tenants/acme",
            &acme_token,
            json!({"revision": revision, "patch": {"routes": {"chat.send": {"schema": {"type": "object"}}}}}),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    // Every refusal is audited.
    let (_, audit) = server
        .manage("GET", "/v1/audit?tenant=acme", OPERATOR, Value::Null)
        .await;
    let refusals = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "tenant.update" && e["outcome"] == "refused")
        .count();
    assert!(refusals >= 1, "{audit}");
}

#[tokio::test]
async fn concurrent_updates_lose_nothing_one_gets_409() {
    let server = server().await;
    let (revision, _, _) = create(&server, "acme", acme()).await;
    let a = server.manage(
        "PATCH",
        "/v1/tenants/acme",
        OPERATOR,
        json!({"revision": revision, "patch": {"exposed_claims": ["name"]}}),
    );
    let b = server.manage(
        "PATCH",
        "/v1/tenants/acme",
        OPERATOR,
        json!({"revision": revision, "patch": {"origins": ["https://b.example"]}}),
    );
    let ((sa, ra), (sb, rb)) = tokio::join!(a, b);
    let mut statuses = [sa, sb];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{ra} {rb}");
    let loser = if sa == 409 { &ra } else { &rb };
    let current = loser["revision"]
        .as_u64()
        .expect("the conflict says the current revision");
    // The loser applies its change to what is there now: both stay.
    let patch = if sa == 409 {
        json!({"exposed_claims": ["name"]})
    } else {
        json!({"origins": ["https://b.example"]})
    };
    let (status, _) = server
        .manage(
            "PATCH",
            "/v1/tenants/acme",
            OPERATOR,
            json!({"revision": current, "patch": patch}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, shown) = server
        .manage("GET", "/v1/tenants/acme", OPERATOR, Value::Null)
        .await;
    assert_eq!(shown["tenant"]["exposed_claims"], json!(["name"]));
    assert_eq!(shown["tenant"]["origins"], json!(["https://b.example"]));
}

#[tokio::test]
async fn the_management_api_speaks_https_only_and_the_admin_listener_points_there() {
    let server = server().await;
    let addr = server.management.expect("management listener");
    // Plain HTTP is answered in plain text and closed.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tcp.write_all(
        format!(
            "GET /v1/tenants HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {OPERATOR}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut answer = String::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tcp.read_to_string(&mut answer),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("HTTPS only"), "{answer}");
    assert!(
        !answer.contains("acme") && !answer.contains("alpha"),
        "{answer}"
    );
    // TLS 1.1 is refused as on the main listener.
    let hello = sluice_probe::hello::client_hello(
        sluice_probe::hello::TLS11,
        &[0xc013, 0xc014, 0x002f, 0x0035],
        Some("localhost"),
        sluice_probe::hello::random(),
    );
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let refused = sluice_probe::hello::exchange(tcp, &hello).await;
    assert!(
        !matches!(
            refused,
            sluice_probe::hello::ServerAnswer::ServerHello { .. }
        ),
        "TLS 1.1 got {}",
        refused.describe()
    );
    // The admin listener no longer serves /v1/ or /reload, and says where.
    let admin = server.admin.expect("admin").to_string();
    for path in ["/v1/tenants", "/reload"] {
        let (status, body) = sluice::server::admin::client::request(
            &admin,
            http::Method::POST,
            path,
            Some(OPERATOR),
            Vec::new(),
        )
        .await
        .expect("admin answers");
        assert_eq!(status, 404, "{path}");
        assert!(String::from_utf8_lossy(&body).contains("HTTPS"), "{path}");
    }
    // HTTPS works.
    let (status, _) = server
        .manage("GET", "/v1/tenants", OPERATOR, Value::Null)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn api_tenants_survive_a_restart_of_a_node_with_a_durable_store() {
    let data = sluice_tests::server::TempDir::new();
    let dir = data.0.clone();
    let durable = move |c: &mut sluice::config::Config| {
        c.store.kind = sluice::config::StoreKind::Durable;
        c.store.data_dir = dir.clone();
    };
    let mut first = crate::marketplace::server(&[], durable.clone()).await;
    let (revision, acme_token, secret) = create(&first, "acme", acme()).await;
    first.shutdown().await;
    drop(first);
    let second = crate::marketplace::server(&[], durable).await;
    let (status, shown) = second
        .manage("GET", "/v1/tenants/acme", &acme_token, Value::Null)
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["revision"].as_u64(), Some(revision));
    let mut c = connect_from(&second, "acme", &token(&secret, "k1", "a"), None).await;
    c.assert_usable().await;
}

/// Until `tenant` on `server` accepts `token` (or 10 s pass): how long.
async fn accepted_within(server: &TestServer, tenant: &str, token: &str) -> std::time::Duration {
    let started = std::time::Instant::now();
    loop {
        if server.connect(tenant, token).await.is_ok() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{tenant} never accepted a connection on this node"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn across_three_fleet_nodes_a_create_an_update_and_a_removal_take_effect_everywhere() {
    let nats = sluice_tests::cluster::Nats::start();
    let node = |name: &'static str| {
        let cluster = sluice_tests::cluster::cluster(&nats, name);
        crate::marketplace::server(&[], move |c| c.cluster = Some(cluster))
    };
    let (n1, n2, n3) = (node("n1").await, node("n2").await, node("n3").await);

    let (revision, acme_token, secret) = create(&n1, "acme", acme()).await;
    let after = accepted_within(&n3, "acme", &token(&secret, "k1", "first")).await;
    println!("created on node 1: node 3 accepted a connection {after:?} after the answer");
    assert!(
        after < std::time::Duration::from_secs(5),
        "node 3 took {after:?}"
    );
    let mut browser =
        connect_from(&n3, "acme", &token(&secret, "k1", "web"), Some(ACME_ORIGIN)).await;
    let mut native = connect_from(&n2, "acme", &token(&secret, "k1", "app"), None).await;

    // Every node reads the same tenant at the same revision.
    for n in [&n1, &n2, &n3] {
        let shown = async {
            loop {
                let (status, shown) = n
                    .manage("GET", "/v1/tenants/acme", &acme_token, Value::Null)
                    .await;
                if status == 200 {
                    return shown;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        let shown = tokio::time::timeout(std::time::Duration::from_secs(10), shown)
            .await
            .expect("every node knows the tenant and its token");
        assert_eq!(shown["revision"].as_u64(), Some(revision));
    }

    // Updated on node 2 (the tenant's own token): node 3's session from the
    // removed origin closes; the native app's session on node 2 stays.
    let (status, changed) = n2
        .manage(
            "PATCH",
            "/v1/tenants/acme",
            &acme_token,
            json!({"revision": revision, "patch": {"origins": ["https://new.acme.example"]}}),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(browser.closed().await, Some(1008));
    native.assert_usable().await;
    // A stale revision on another node is a conflict there too.
    let (status, conflict) = n1
        .manage(
            "PATCH",
            "/v1/tenants/acme",
            OPERATOR,
            json!({"revision": revision, "patch": {"origins": []}}),
        )
        .await;
    assert_eq!(status, 409, "{conflict}");

    // Removed on node 3: node 2's session closes 1001, no node accepts it.
    let (status, _) = n3
        .manage("DELETE", "/v1/tenants/acme", OPERATOR, Value::Null)
        .await;
    assert_eq!(status, 200);
    assert_eq!(native.closed().await, Some(1001));
    for n in [&n1, &n2, &n3] {
        let gone = async {
            while n
                .connect("acme", &token(&secret, "k1", "late"))
                .await
                .is_ok()
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), gone)
            .await
            .expect("every node refuses the removed tenant");
    }
    n1.assert_honest_client_served().await;
}
