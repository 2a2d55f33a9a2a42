//! The marketplace control plane: handlers pushed through the management
//! API, verified before they serve, canaried (sticky per connection),
//! shadowed (compared, never applied), promoted and rolled back under load,
//! audited, kept across a restart; tenant tokens confined to their tenant.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sluice::config::{Capability, ChannelAccess, ManagedConfig, StoreKind};
use sluice::control::Stage;
use sluice::control::client::push_body;
use sluice::control::verify::Sample;
use sluice_tests::handlers;
use sluice_tests::server::{TempDir, TestServer, route};

pub(crate) const OPERATOR: &str = "operator-token-0123456789abcdef0123456789";
pub(crate) const ALPHA_MANAGER: &str = "alpha-manager-0123456789abcdef0123456789";
pub(crate) const BETA_MANAGER: &str = "beta-manager-0123456789abcdef01234567890";

/// A test server where alpha and beta push handlers: alpha's route `bot`
/// (no channel) and `chat.send` (publish, schema `text`) go to its pushed
/// handlers `bot` and `room`; `grants` are what pushed handlers may import.
pub(crate) async fn server(
    grants: &[Capability],
    customize: impl FnOnce(&mut sluice::config::Config),
) -> TestServer {
    let grants = grants.to_vec();
    TestServer::start_with(move |c| {
        let dir = c.base_dir.clone();
        for (file, token) in [
            ("admin.token", OPERATOR),
            ("alpha-manage.token", ALPHA_MANAGER),
            ("beta-manage.token", BETA_MANAGER),
        ] {
            std::fs::write(dir.join(file), token).expect("token");
        }
        c.server.admin_token = Some(sluice::config::SecretRef {
            secret_env: None,
            secret_file: Some("admin.token".into()),
        });
        for (tenant, file) in [
            ("alpha", "alpha-manage.token"),
            ("beta", "beta-manage.token"),
        ] {
            let t = c.tenants.get_mut(tenant).expect("tenant");
            t.managed = Some(ManagedConfig {
                token: Some(sluice::config::SecretRef {
                    secret_env: None,
                    secret_file: Some(file.into()),
                }),
                grants: grants.clone(),
                isolation: Default::default(),
                limits: Default::default(),
                max_component_bytes: None,
                max_versions: 20,
            });
            t.routes
                .insert("bot".into(), route("bot", ChannelAccess::None, &[], None));
            if let Some(r) = t.routes.get_mut("chat.send") {
                r.handler = "room".into();
            }
        }
        customize(c);
    })
    .await
}

/// One request to `server`'s management API (HTTPS) with `token`: the
/// status and the answer (JSON, or the text as a JSON string).
pub(crate) async fn api(
    server: &TestServer,
    method: &str,
    path: &str,
    token: &str,
    body: Value,
) -> (u16, Value) {
    server.manage(method, path, token, body).await
}

pub(crate) async fn push(
    server: &TestServer,
    token: &str,
    tenant: &str,
    name: &str,
    bytes: &[u8],
    samples: Option<Vec<Sample>>,
    stage: Option<(Stage, Option<u8>)>,
) -> (u16, Value) {
    let body = push_body(
        bytes,
        samples.as_deref(),
        stage.map(|s| s.0),
        stage.and_then(|s| s.1),
    );
    let (status, answer) = server
        .management_client()
        .request(
            http::Method::POST,
            &format!("/v1/tenants/{tenant}/handlers/{name}/versions"),
            Some(token),
            body,
        )
        .await
        .expect("the management API answers");
    (
        status,
        serde_json::from_slice(&answer).expect("JSON answer"),
    )
}

pub(crate) fn component(path: &str) -> Vec<u8> {
    std::fs::read(path).expect("component")
}

pub(crate) fn sample(route: &str, data: Value) -> Sample {
    Sample {
        route: route.into(),
        channel: None,
        data,
    }
}

/// The failed checks of a refused push's report, by name.
fn failed_checks(answer: &Value) -> Vec<(String, String)> {
    answer["report"]["checks"]
        .as_array()
        .expect("a report with checks")
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["detail"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn bot_answer(client: &mut sluice_tests::server::Client, id: &str) -> Value {
    client
        .request(json!({"type": "bot", "id": id, "data": {"mode": "ok"}}))
        .await
}

#[tokio::test]
async fn bad_components_are_refused_with_a_report_naming_the_problem() {
    // Pushed handlers may import `state` and `log`, not `clock`; beta's
    // components may be 100 KB at most.
    let server = server(&[Capability::State, Capability::Log], |c| {
        let t = c.tenants.get_mut("beta").expect("beta");
        if let Some(m) = &mut t.managed {
            m.max_component_bytes = Some(100_000);
        }
    })
    .await;

    // The chat handler imports `clock`, which is not granted.
    let (status, answer) = alpha_push(&server, "room", handlers::CHAT, None, None).await;
    assert_eq!(status, 422, "{answer}");
    let failed = failed_checks(&answer);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "imports");
    assert!(
        failed[0].1.contains("capability `clock` is not granted"),
        "{failed:?}"
    );

    // Not a component: a core module, and bytes that are not wasm at all.
    for (bytes, words) in [
        (b"\0asm\x01\0\0\0".to_vec(), "core wasm module"),
        (b"hello, this is not wasm".to_vec(), "magic number"),
    ] {
        let (status, answer) =
            push(&server, ALPHA_MANAGER, "alpha", "bot", &bytes, None, None).await;
        assert_eq!(status, 422, "{answer}");
        let failed = failed_checks(&answer);
        assert_eq!(failed[0].0, "component", "{failed:?}");
        assert!(failed[0].1.contains(words), "{failed:?}");
        // Checks after the first failure are not run.
        let smoke = answer["report"]["checks"]
            .as_array()
            .expect("checks")
            .last()
            .cloned();
        assert_eq!(smoke.expect("smoke")["status"], "skipped");
    }

    // Traps on its sample message.
    let (status, answer) = alpha_push(
        &server,
        "bot",
        handlers::MISBEHAVE,
        Some(vec![
            sample("bot", json!({"mode": "ok"})),
            sample("bot", json!({"mode": "panic"})),
        ]),
        None,
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    let failed = failed_checks(&answer);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "smoke");
    assert!(failed[0].1.contains("trap"), "{failed:?}");
    let smoke = answer["report"]["smoke"].as_array().expect("smoke calls");
    assert_eq!(smoke.len(), 4, "connect, two samples, disconnect");
    assert_eq!(smoke[1]["outcome"], "ok");
    assert!(smoke[1]["fuel"].as_u64().expect("fuel") > 0);
    assert!(smoke[1]["memory_bytes"].as_u64().expect("memory") > 0);
    assert_eq!(smoke[2]["passed"], false);

    // A sample that does not fit its route is the push's problem.
    let (status, answer) = alpha_push(
        &server,
        "room",
        handlers::ECHO,
        Some(vec![sample("chat.send", json!({"text": 5}))]),
        None,
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(failed_checks(&answer)[0].0, "samples");

    // Over the size limit (beta's).
    let chat = component(handlers::CHAT);
    assert!(chat.len() > 100_000);
    let (status, answer) = push(&server, BETA_MANAGER, "beta", "room", &chat, None, None).await;
    assert_eq!(status, 422, "{answer}");
    let failed = failed_checks(&answer);
    assert_eq!(failed[0].0, "size");
    assert!(
        failed[0].1.contains("the limit is 100000 bytes"),
        "{failed:?}"
    );

    // Nothing was kept; the route answers `unavailable`, and the honest
    // client is served.
    let (status, list) = api(
        &server,
        "GET",
        "/v1/tenants/alpha/handlers",
        ALPHA_MANAGER,
        Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["handlers"], json!([]));
    let token = server.token("alpha", "u1", "");
    let mut client = server.connect("alpha", &token).await.expect("connect");
    assert_eq!(bot_answer(&mut client, "1").await["code"], "unavailable");
    server.assert_honest_client_served().await;

    // A good push then serves at once, and the same bytes again are
    // recognised.
    let echo = component(handlers::ECHO);
    let (status, answer) = push(&server, ALPHA_MANAGER, "alpha", "bot", &echo, None, None).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["version"], 1);
    assert_eq!(answer["routing"]["stable"], 1);
    assert!(
        answer["report"]["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .all(|c| c["status"] == "pass")
    );
    let reply = bot_answer(&mut client, "2").await;
    assert_eq!(reply["type"], "ack", "{reply}");
    assert_eq!(reply["data"], json!({"mode": "ok"}));
    let (status, again) = push(&server, ALPHA_MANAGER, "alpha", "bot", &echo, None, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (again["version"].clone(), again["already"].clone()),
        (json!(1), json!(true))
    );

    // Every refusal is in the audit log, with who and from where.
    let (_, audit) = api(
        &server,
        "GET",
        "/v1/audit?tenant=alpha",
        ALPHA_MANAGER,
        Value::Null,
    )
    .await;
    let entries = audit["entries"].as_array().expect("entries");
    let failed_pushes = entries
        .iter()
        .filter(|e| e["action"] == "push" && e["outcome"] == "failed")
        .count();
    assert_eq!(failed_pushes, 5, "{audit:#}");
    assert!(entries.iter().all(|e| {
        e["actor"] == "tenant:alpha"
            && e["from"]
                .as_str()
                .is_some_and(|f| f.starts_with("127.0.0.1:"))
    }));
}

#[tokio::test]
async fn a_tenant_token_manages_its_own_tenant_only() {
    let server = server(&[], |_| {}).await;
    let echo = component(handlers::ECHO);
    let (status, _) = push(&server, ALPHA_MANAGER, "alpha", "bot", &echo, None, None).await;
    assert_eq!(status, 201);

    // Beta's token cannot list, show, push, promote, roll back or remove
    // alpha's handlers, nor read alpha's audit entries.
    let attempts = [
        ("GET", "/v1/tenants/alpha/handlers", Value::Null),
        ("GET", "/v1/tenants/alpha/handlers/bot", Value::Null),
        (
            "POST",
            "/v1/tenants/alpha/handlers/bot/promote",
            json!({"version": 1}),
        ),
        (
            "POST",
            "/v1/tenants/alpha/handlers/bot/rollback",
            Value::Null,
        ),
        ("DELETE", "/v1/tenants/alpha/handlers/bot", Value::Null),
        ("GET", "/v1/audit?tenant=alpha", Value::Null),
    ];
    for (method, path, body) in &attempts {
        let (status, answer) = api(&server, method, path, BETA_MANAGER, body.clone()).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["code"], "forbidden");
    }
    let (status, _) = push(&server, BETA_MANAGER, "alpha", "bot", &echo, None, None).await;
    assert_eq!(status, 403);
    // No token, or a wrong one: 401.
    for token in ["", "not-a-token"] {
        let (status, _) = api(
            &server,
            "GET",
            "/v1/tenants/alpha/handlers",
            token,
            Value::Null,
        )
        .await;
        assert_eq!(status, 401);
    }
    // A tenant's handler named in the config file is the operator's.
    let (status, answer) = push(&server, OPERATOR, "alpha", "echo", &echo, None, None).await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (409, json!("configured_handler"))
    );

    // Alpha's handler is untouched and serves; beta's own audit shows
    // nothing of alpha's, and the refusals are audited for the operator.
    let (status, list) = api(
        &server,
        "GET",
        "/v1/tenants/alpha/handlers",
        ALPHA_MANAGER,
        Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["handlers"][0]["routing"]["stable"], 1);
    let token = server.token("alpha", "u1", "");
    let mut client = server.connect("alpha", &token).await.expect("connect");
    assert_eq!(bot_answer(&mut client, "1").await["type"], "ack");
    let (_, beta_audit) = api(&server, "GET", "/v1/audit", BETA_MANAGER, Value::Null).await;
    assert_eq!(
        beta_audit["entries"],
        json!([]),
        "beta reads only entries about beta"
    );
    let (_, all) = api(&server, "GET", "/v1/audit", OPERATOR, Value::Null).await;
    let refused = all["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["outcome"] == "refused" && e["actor"] == "tenant:beta")
        .count();
    assert_eq!(refused, attempts.len() + 1, "{all:#}");
    assert!(
        all["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["outcome"] == "refused" && e["actor"] == "anonymous")
    );
}

#[tokio::test]
async fn a_canary_splits_connections_each_sticking_to_its_version_then_promote_and_rollback_lose_nothing()
 {
    let server = server(&[Capability::State, Capability::Log], |c| {
        // The load below is many messages of one tenant.
        let limits = &mut c.tenants.get_mut("alpha").expect("alpha").limits;
        limits.messages_per_sec = 100_000;
        limits.message_burst = 100_000;
        limits.subject_messages_per_sec = 100_000;
        limits.tenant_messages_per_sec = 100_000;
    })
    .await;
    // v1 (echo) answers with the data; v2 (misbehave, mode ok) with {"ok": true}.
    let (s1, _) = alpha_push(&server, "bot", handlers::ECHO, None, None).await;
    let (s2, v2) = alpha_push(
        &server,
        "bot",
        handlers::MISBEHAVE,
        Some(vec![sample("bot", json!({"mode": "ok"}))]),
        Some((Stage::Canary, Some(50))),
    )
    .await;
    assert_eq!((s1, s2), (201, 201), "{v2}");
    assert_eq!(
        v2["routing"],
        json!({"stable": 1, "canary": {"version": 2, "percent": 50}, "shadow": null})
    );

    let version_of = |answer: &Value| -> u32 {
        assert_eq!(answer["type"], "ack", "{answer}");
        if answer["data"] == json!({"ok": true}) {
            2
        } else {
            1
        }
    };
    let token = server.token("alpha", "u1", "");
    let mut seen = BTreeSet::new();
    for c in 0..24 {
        let mut client = server.connect("alpha", &token).await.expect("connect");
        let first = version_of(&bot_answer(&mut client, "a").await);
        for i in 0..4 {
            let v = version_of(&bot_answer(&mut client, &format!("{c}-{i}")).await);
            assert_eq!(v, first, "a connection sticks to its version");
        }
        seen.insert(first);
    }
    assert_eq!(seen, BTreeSet::from([1, 2]), "both versions serve at 50%");

    // Under load: 8 connections send without pause while v2 is promoted,
    // v1 rolled back to, and v2 promoted again. Every message is answered.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for c in 0..8 {
        let mut client = server.connect("alpha", &token).await.expect("connect");
        let (stop, answered) = (stop.clone(), answered.clone());
        senders.push(tokio::spawn(async move {
            let mut versions = BTreeSet::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let answer = bot_answer(&mut client, &format!("{c}-{n}")).await;
                assert_eq!(answer["type"], "ack", "no message fails: {answer}");
                versions.insert(if answer["data"] == json!({"ok": true}) {
                    2
                } else {
                    1
                });
                answered.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            (n, versions)
        }));
    }
    let steps = [
        (
            "promote",
            json!({"version": 2}),
            json!({"stable": 2, "canary": null, "shadow": null}),
        ),
        (
            "rollback",
            Value::Null,
            json!({"stable": 1, "canary": null, "shadow": null}),
        ),
        (
            "promote",
            json!({"version": 2}),
            json!({"stable": 2, "canary": null, "shadow": null}),
        ),
    ];
    for (what, body, routing) in steps {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, answer) = api(
            &server,
            "POST",
            &format!("/v1/tenants/alpha/handlers/bot/{what}"),
            ALPHA_MANAGER,
            body,
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["routing"], routing);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for s in senders {
        let (n, versions) = s.await.expect("sender");
        sent += n;
        assert!(versions.contains(&2), "every connection saw the promotion");
    }
    assert_eq!(answered.load(Ordering::Relaxed), sent);
    assert!(sent > 50, "load ran: {sent} messages");
    // Right after the last promote, a new message runs on v2.
    let mut client = server.connect("alpha", &token).await.expect("connect");
    assert_eq!(version_of(&bot_answer(&mut client, "z").await), 2);

    // Per-version metrics: on the API and on /metrics.
    let (_, show) = api(
        &server,
        "GET",
        "/v1/tenants/alpha/handlers/bot",
        OPERATOR,
        Value::Null,
    )
    .await;
    let v2 = &show["versions"][1];
    assert_eq!(v2["stage"], "stable");
    assert!(v2["metrics"]["calls"].as_u64().expect("calls") > 0);
    let (_, metrics) = crate::admin::get(&server, "/metrics").await;
    assert!(
        metrics.contains("sluice_handler_calls_total{tenant=\"alpha\",handler=\"bot\",version=\"2\",outcome=\"ok\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_shadow_is_compared_and_its_actions_never_reach_a_client_or_the_state() {
    let server = server(&[Capability::State, Capability::Clock], |_| {}).await;
    // Stable v1 echoes; shadow v2 is the chat handler, which stores the
    // room and publishes to it.
    let (s1, _) = alpha_push(&server, "room", handlers::ECHO, None, None).await;
    let (s2, shadowed) = alpha_push(
        &server,
        "room",
        handlers::CHAT,
        None,
        Some((Stage::Shadow, None)),
    )
    .await;
    assert_eq!((s1, s2), (201, 201), "{shadowed}");
    // The smoke calls of the chat handler wrote nothing either.
    let usage = server
        .state
        .sandbox
        .state()
        .usage("alpha")
        .await
        .expect("usage");
    assert_eq!(usage.keys, 0);

    let token = server.token("alpha", "u1", "chat:write");
    let mut listener = server.connect("alpha", &token).await.expect("connect");
    let ack = listener
        .request(json!({"type": "subscribe", "id": "s", "channel": "room:1"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let mut sender = server.connect("alpha", &token).await.expect("connect");
    for i in 0..5 {
        let answer = sender
            .request(json!({"type": "chat.send", "id": format!("m{i}"), "channel": "room:1", "data": {"text": "hi"}}))
            .await;
        assert_eq!(answer["type"], "ack", "{answer}");
        assert_eq!(
            answer["data"],
            json!({"text": "hi"}),
            "stable (echo) answers"
        );
    }
    // Nothing published by the shadow reaches the subscriber.
    listener.assert_usable().await;
    let next = tokio::time::timeout(Duration::from_millis(500), listener.next_event()).await;
    assert!(next.is_err(), "no event: {next:?}");
    let usage = server
        .state
        .sandbox
        .state()
        .usage("alpha")
        .await
        .expect("usage");
    assert_eq!(usage.keys, 0, "the shadow's state writes were dropped");

    // The diff report says where they diverge.
    let (_, show) = api(
        &server,
        "GET",
        "/v1/tenants/alpha/handlers/room",
        ALPHA_MANAGER,
        Value::Null,
    )
    .await;
    let shadow = &show["shadow"];
    assert_eq!(shadow["version"], 2);
    assert_eq!(shadow["compared"], 5);
    assert_eq!(shadow["diverged"], 5);
    let d = &shadow["divergences"][0];
    assert_eq!(d["route"], "chat.send");
    assert_eq!(d["stable"], json!({"actions": [{"reply": {"text": "hi"}}]}));
    let shadow_actions = d["shadow"]["actions"].as_array().expect("shadow actions");
    assert!(
        shadow_actions
            .iter()
            .any(|a| a["publish"]["channel"] == "room:1"),
        "{d:#}"
    );

    // Promoted, the chat version applies its actions.
    let (status, _) = api(
        &server,
        "POST",
        "/v1/tenants/alpha/handlers/room/promote",
        ALPHA_MANAGER,
        json!({"version": 2}),
    )
    .await;
    assert_eq!(status, 200);
    let answer = sender
        .request(json!({"type": "chat.send", "id": "live", "channel": "room:1", "data": {"text": "now"}}))
        .await;
    assert_eq!(answer["type"], "ack", "{answer}");
    let event = listener.next_event().await;
    assert_eq!(event["data"]["text"], "now", "{event}");
}

#[tokio::test]
async fn versions_and_routing_survive_a_restart_and_the_cli_reads_them() {
    let data = TempDir::new();
    let data_dir = data.0.clone();
    let durable = |c: &mut sluice::config::Config| {
        c.store.kind = StoreKind::Durable;
        c.store.data_dir = data_dir.clone();
    };
    let mut first = server(&[Capability::State, Capability::Log], durable).await;
    let echo = component(handlers::ECHO);
    let misbehave = component(handlers::MISBEHAVE);
    let samples = Some(vec![sample("bot", json!({"mode": "ok"}))]);
    assert_eq!(
        push(&first, ALPHA_MANAGER, "alpha", "bot", &echo, None, None)
            .await
            .0,
        201
    );
    assert_eq!(
        push(
            &first,
            ALPHA_MANAGER,
            "alpha",
            "bot",
            &misbehave,
            samples,
            Some((Stage::Canary, Some(30)))
        )
        .await
        .0,
        201
    );
    let (_, before) = api(
        &first,
        "GET",
        "/v1/tenants/alpha/handlers/bot",
        OPERATOR,
        Value::Null,
    )
    .await;
    first.shutdown().await;
    drop(first);

    let second = server(&[Capability::State, Capability::Log], |c| {
        c.store.kind = StoreKind::Durable;
        c.store.data_dir = data.0.clone();
    })
    .await;
    let (status, after) = api(
        &second,
        "GET",
        "/v1/tenants/alpha/handlers/bot",
        OPERATOR,
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["routing"], before["routing"]);
    assert_eq!(
        after["routing"]["canary"],
        json!({"version": 2, "percent": 30})
    );
    for i in 0..2 {
        assert_eq!(
            after["versions"][i]["digest"],
            before["versions"][i]["digest"]
        );
        assert_eq!(
            after["versions"][i]["report"],
            before["versions"][i]["report"]
        );
    }
    // Both versions serve again, from the store's bytes.
    let token = second.token("alpha", "u1", "");
    let mut seen = BTreeSet::new();
    for c in 0..20 {
        let mut client = second.connect("alpha", &token).await.expect("connect");
        let answer = bot_answer(&mut client, &c.to_string()).await;
        assert_eq!(answer["type"], "ack", "{answer}");
        seen.insert(answer["data"] == json!({"ok": true}));
    }
    assert_eq!(
        seen.len(),
        2,
        "stable and canary both serve after the restart"
    );
    // The audit log survived too.
    let (_, audit) = api(&second, "GET", "/v1/audit", OPERATOR, Value::Null).await;
    assert_eq!(audit["entries"].as_array().expect("entries").len(), 2);

    // The CLI, with a tenant token: list and roll back.
    let token_file = data.0.join("alpha.token");
    std::fs::write(&token_file, ALPHA_MANAGER).expect("token file");
    let (ok, out) = cli(&second, &token_file, &["list", "alpha"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("bot: stable v1, canary v2 at 30% (2 version(s))"),
        "{out}"
    );
    let (ok, out) = cli(&second, &token_file, &["promote", "alpha", "bot", "v2"]).await;
    assert!(ok && out.contains("routing: stable v2"), "{out}");
    let (ok, out) = cli(
        &second,
        &token_file,
        &["--json", "rollback", "alpha", "bot"],
    )
    .await;
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(v["routing"]["stable"], 1);
    let (ok, out) = cli(&second, &token_file, &["list", "beta"]).await;
    assert!(!ok && out.contains("error (403)"), "{out}");
    let (ok, out) = cli(
        &second,
        &token_file,
        &["rm", "alpha", "bot", "--version", "2"],
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = cli(&second, &token_file, &["show", "alpha", "bot"]).await;
    assert!(ok && out.contains("v1 ") && !out.contains("v2 "), "{out}");
    assert!(Path::new(&data.0).exists());
}

/// `sluice handler --url ADDR --ca CERT --token-file FILE <args>` against
/// `server`'s management API (HTTPS): success and output.
async fn cli(server: &TestServer, token_file: &Path, args: &[&str]) -> (bool, String) {
    let url = server
        .management
        .expect("a management listener")
        .to_string();
    let ca = token_file.with_file_name("management-ca.pem");
    std::fs::write(&ca, &server.ca_pem).expect("the CA file");
    let out = tokio::process::Command::new(sluice_tests::sluice_bin())
        .arg("handler")
        .args(["--url", &url, "--ca"])
        .arg(&ca)
        .arg("--token-file")
        .arg(token_file)
        .args(args)
        .output()
        .await
        .expect("sluice handler runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn a_reload_that_revokes_a_grant_a_serving_version_imports_is_refused() {
    let server = server(&[Capability::State, Capability::Log], |_| {}).await;
    let samples = Some(vec![sample("bot", json!({"mode": "ok"}))]);
    let (status, _) = alpha_push(&server, "bot", handlers::MISBEHAVE, samples, None).await;
    assert_eq!(status, 201);

    let mut revoked = server.state.config.clone();
    if let Some(m) = &mut revoked.tenants.get_mut("alpha").expect("alpha").managed {
        m.grants = vec![Capability::Log];
    }
    let refused = server.state.reload(revoked).await.expect_err("refused");
    let problems = refused.to_string();
    assert!(
        problems.contains("pushed handler bot v1 no longer loads")
            && problems.contains("capability `state` is not granted"),
        "{problems}"
    );
    // The old configuration keeps serving the version.
    let token = server.token("alpha", "u1", "");
    let mut client = server.connect("alpha", &token).await.expect("connect");
    assert_eq!(
        bot_answer(&mut client, "1").await["data"],
        json!({"ok": true})
    );

    // A reload that grants more: accepted; the version serves under it.
    let mut tighter = server.state.config.clone();
    if let Some(m) = &mut tighter.tenants.get_mut("alpha").expect("alpha").managed {
        m.grants.push(Capability::Clock);
    }
    server.state.reload(tighter).await.expect("reload");
    assert_eq!(
        bot_answer(&mut client, "2").await["data"],
        json!({"ok": true})
    );
}

/// Push the component at `path` as alpha's handler `name`, with alpha's token.
async fn alpha_push(
    server: &TestServer,
    name: &str,
    path: &str,
    samples: Option<Vec<Sample>>,
    stage: Option<(Stage, Option<u8>)>,
) -> (u16, Value) {
    push(
        server,
        ALPHA_MANAGER,
        "alpha",
        name,
        &component(path),
        samples,
        stage,
    )
    .await
}

#[tokio::test]
async fn in_a_fleet_a_push_on_one_node_serves_on_every_node() {
    let nats = sluice_tests::cluster::Nats::start();
    let node = |name: &'static str| {
        let cluster = sluice_tests::cluster::cluster(&nats, name);
        server(&[Capability::State, Capability::Log], move |c| {
            c.cluster = Some(cluster);
        })
    };
    let a = node("a").await;
    let b = node("b").await;

    // Pushed on a, served on b.
    let (status, answer) = alpha_push(&a, "bot", handlers::ECHO, None, None).await;
    assert_eq!(status, 201, "{answer}");
    let token = b.token("alpha", "u1", "");
    let mut on_b = b.connect("alpha", &token).await.expect("connect");
    let served = async {
        loop {
            let answer = bot_answer(&mut on_b, "1").await;
            if answer["type"] == "ack" {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("b serves a's push");
    assert_eq!(answer["data"], json!({"mode": "ok"}));

    // A second version pushed on b and promoted there serves on a.
    let (status, _) = push(
        &b,
        ALPHA_MANAGER,
        "alpha",
        "bot",
        &component(handlers::MISBEHAVE),
        Some(vec![sample("bot", json!({"mode": "ok"}))]),
        Some((Stage::Stable, None)),
    )
    .await;
    assert_eq!(status, 201);
    let mut on_a = a.connect("alpha", &token).await.expect("connect");
    let promoted = async {
        loop {
            if bot_answer(&mut on_a, "2").await["data"] == json!({"ok": true}) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), promoted)
        .await
        .expect("a serves b's promotion");

    // Both nodes list the same versions, and the audit log is the fleet's.
    let (_, list_a) = api(
        &a,
        "GET",
        "/v1/tenants/alpha/handlers/bot",
        OPERATOR,
        Value::Null,
    )
    .await;
    let (_, list_b) = api(
        &b,
        "GET",
        "/v1/tenants/alpha/handlers/bot",
        OPERATOR,
        Value::Null,
    )
    .await;
    assert_eq!(
        list_a["routing"],
        json!({"stable": 2, "canary": null, "shadow": null})
    );
    assert_eq!(list_a["routing"], list_b["routing"]);
    assert_eq!(list_a["versions"].as_array().map(Vec::len), Some(2));
    let (_, audit) = api(&a, "GET", "/v1/audit", OPERATOR, Value::Null).await;
    let pushes = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "push" && e["outcome"] == "ok")
        .count();
    assert_eq!(pushes, 2, "{audit:#}");
}
