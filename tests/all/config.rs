//! The configuration: strict, and every problem reported at once.

use std::path::Path;

use serde_json::json;
use sluice::config::Config;
use sluice::dev_files::DemoConfig;
use sluice::node::Node;
use sluice_tests::handlers;
use sluice_tests::server::TempDir;

#[test]
fn every_problem_in_a_config_is_reported_at_once() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let err = Config::load(&dir.join("invalid.toml"))
        .expect_err("invalid")
        .to_string();
    let expected = std::fs::read_to_string(dir.join("invalid.err")).expect("invalid.err");
    // The whole report, in order: nothing missing, nothing extra.
    assert_eq!(
        format!("{err}\n"),
        expected,
        "the report differs from tests/config/invalid.err"
    );
}

#[tokio::test]
async fn files_keys_schemas_and_handlers_are_checked_when_the_server_is_built() {
    let dir = TempDir::new();
    let (cert, key) = sluice::server::tls::self_signed(&["localhost"]).expect("cert");
    std::fs::write(dir.0.join("cert.pem"), cert).expect("cert");
    std::fs::write(dir.0.join("key.pem"), key).expect("key");
    std::fs::write(dir.0.join("short.secret"), "too short").expect("secret");
    let text = format!(
        r#"
[server]
tls_cert = "cert.pem"
tls_key = "key.pem"

[tenants.t]
[tenants.t.auth]
issuer = "i"
audience = "a"
[[tenants.t.auth.keys]]
algorithm = "HS256"
secret_file = "short.secret"
[[tenants.t.auth.keys]]
algorithm = "ES256"
public_key_file = "missing.pem"

[tenants.t.handlers.chat]
component = {chat:?}

[tenants.t.handlers.gone]
component = "gone.wasm"

[tenants.t.routes.a]
handler = "chat"
schema = {{ "$ref" = "file:///etc/passwd" }}

[tenants.t.routes.b]
handler = "chat"
schema = {{ "$ref" = "http://169.254.169.254/latest/meta-data/" }}

[tenants.t.routes.c]
handler = "chat"
schema = {{ type = "string", pattern = "(?<=a)b" }}
"#,
        chat = handlers::CHAT
    );
    std::fs::write(dir.0.join("sluice.toml"), text).expect("config");
    let config = Config::load(&dir.0.join("sluice.toml")).expect("parses");
    let err = match Node::build(config).await {
        Ok(_) => panic!("the config should not build"),
        Err(e) => e.to_string(),
    };
    for expected in [
        "short.secret is shorter than 32 bytes",
        "missing.pem: No such file",
        "capability `state` is not granted",
        "gone.wasm: No such file",
        "routes.a: schema does not compile",
        "file:///etc/passwd",
        "routes.b: schema does not compile",
        "169.254.169.254",
        "routes.c: schema does not compile",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[tokio::test]
async fn the_dev_config_builds_and_serves() {
    let dir = TempDir::new();
    let path = sluice::dev_files::prepare(
        &dir.0,
        &DemoConfig::new(
            "127.0.0.1:0",
            Path::new(handlers::ECHO),
            Path::new(handlers::CHAT),
        ),
    )
    .expect("prepare");
    let config = Config::load(&path).expect("the dev config parses");
    let state = Node::build(config)
        .await
        .unwrap_or_else(|e| panic!("the dev config builds: {e}"))
        .state;
    let tenant = state.tenant("demo").expect("demo tenant");
    // The token `sluice dev` prints, minted without the server.
    let token = sluice::dev_files::dev_token(&state.config).expect("mint");
    let principal = tenant.keys.verify(&token).expect("a minted token verifies");
    assert_eq!(principal.subject, "dev-user");
    assert!(principal.scopes.contains("chat:write"));
    let _ = json!(null);
}

#[tokio::test]
async fn sluice_dev_serves_a_chat_handler_of_another_language() {
    // `sluice dev --chat handlers/target/lang/c-chat.wasm`: the component
    // is checked, then served as the demo's chat handler.
    let missing = sluice::dev_files::chat_component(
        Some(Path::new("/nonexistent/chat.wasm")),
        Path::new(handlers::CHAT),
    )
    .expect_err("a missing component is refused");
    assert!(
        missing.to_string().contains("handlers/build-lang"),
        "{missing}"
    );
    let chat = sluice::dev_files::chat_component(
        Some(Path::new(handlers::C_CHAT)),
        Path::new(handlers::CHAT),
    )
    .expect("the C chat component");
    assert_eq!(
        chat,
        Path::new(handlers::C_CHAT).canonicalize().expect("path")
    );
    assert_eq!(
        sluice::dev_files::chat_component(None, Path::new(handlers::CHAT)).expect("default"),
        Path::new(handlers::CHAT)
    );

    let dir = TempDir::new();
    let path = sluice::dev_files::prepare(
        &dir.0,
        &DemoConfig::new("127.0.0.1:0", Path::new(handlers::ECHO), &chat),
    )
    .expect("prepare");
    let state = Node::build(Config::load(&path).expect("parses"))
        .await
        .unwrap_or_else(|e| panic!("the dev config builds: {e}"))
        .state;
    let tenant = state.tenant("demo").expect("demo tenant");
    let out = tenant.handlers["chat"]
        .on_message(
            &sluice_tests::conn("demo", "dev-user"),
            &sluice_tests::msg("chat.send", Some("room:1"), json!({"text": "hi from C"})),
        )
        .await
        .expect("the C chat handler answers");
    assert_eq!(out.actions.len(), 2, "{:?}", out.actions);
}

#[test]
fn sluice_check_explains_each_tenants_quotas_with_its_value_and_what_happens_past_it() {
    let dir = TempDir::new();
    let (cert, key) = sluice::server::tls::self_signed(&["localhost"]).expect("cert");
    std::fs::write(dir.0.join("cert.pem"), cert).expect("cert");
    std::fs::write(dir.0.join("key.pem"), key).expect("key");
    std::fs::write(dir.0.join("secret.key"), "k".repeat(48)).expect("secret");
    let tenant = |id: &str| {
        format!(
            "[tenants.{id}.auth]\nissuer = \"i\"\naudience = \"a\"\n[[tenants.{id}.auth.keys]]\nalgorithm = \"HS256\"\nsecret_file = \"secret.key\"\n"
        )
    };
    let config = dir.0.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n[store]\nkind = \"memory\"\n{}{}[tenants.small.quotas]\ninstances = 7\nhistory_bytes = 2097152\n[tenants.small.limits]\nmax_connections = 40\n",
            tenant("plain"),
            tenant("small")
        ),
    )
    .expect("config");
    let out = std::process::Command::new(sluice_tests::sluice_bin())
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .expect("sluice check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each tenant's block: its own values, and what happens past each.
    let block = |id: &str| -> String {
        stdout
            .split("tenant ")
            .find(|b| b.starts_with(&format!("{id}:")))
            .unwrap_or_else(|| panic!("tenant {id} listed: {stdout}"))
            .to_owned()
    };
    let (plain, small) = (block("plain"), block("small"));
    for (block, want) in [
        (&small, "quotas.instances = 7: "),
        (&small, "quotas.history_bytes = 2097152 (2 MiB): "),
        (&small, "limits.max_connections = 40, "),
        (&plain, "quotas.instances = 50: "),
        (&plain, "quotas.history_bytes = 67108864 (64 MiB): "),
        (&plain, "limits.max_connections = 10000, "),
    ] {
        assert!(block.contains(want), "{want}: {block}");
    }
    for key in [
        "instances",
        "compiled_bytes",
        "pushed_handlers",
        "history_channels",
        "history_bytes",
        "presence_channels",
        "presence_members",
        "management_requests_per_sec",
        "idempotency_keys",
    ] {
        let line = small
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("quotas.{key} = ")))
            .unwrap_or_else(|| panic!("{key} explained: {small}"));
        assert!(
            line.contains("past it") || line.contains("one more"),
            "{line}"
        );
    }
    assert!(
        small.contains("409 `quota`") && small.contains("429 `rate_limited`"),
        "the refusals are named: {small}"
    );
}
