//! One conformance suite for the chat handler in every language: Rust (the
//! reference, `handlers/chat`), JavaScript, Python and C (`handlers/<lang>/chat`).
//!
//! Each language gets a tenant of its own on one real server, with the same
//! routes. The same scenario runs against each, through real wss clients,
//! and every frame each client receives is recorded; the transcripts of
//! JavaScript, Python and C must equal Rust's, frame by frame, after
//! normalising only the `at` timestamps (checked to be the current time) and
//! the wording of `invalid_data` messages (each language's JSON parser words
//! its complaint; the code and the `data does not fit` prefix must match).
//!
//! Then each language's hostile test handler (`handlers/<lang>/misbehave`)
//! is stopped by fuel and by the memory cap, while the other languages'
//! chat handlers keep serving.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sluice::config::{ChannelAccess, Config};
use sluice::sandbox::{Capability, DEFAULT_FUEL, DEFAULT_INTERPRETER_FUEL, SandboxConfig};
use sluice_tests::handlers;
use sluice_tests::server::{Client, TestServer, handler, route, tenant};

/// (tenant, chat component, misbehave component, interpreter?)
const LANGUAGES: [(&str, &str, &str, bool); 4] = [
    ("rust", handlers::CHAT, handlers::MISBEHAVE, false),
    ("js", handlers::JS_CHAT, handlers::JS_MISBEHAVE, true),
    (
        "python",
        handlers::PYTHON_CHAT,
        handlers::PYTHON_MISBEHAVE,
        true,
    ),
    ("c", handlers::C_CHAT, handlers::C_MISBEHAVE, false),
];

/// The memory cap of the misbehave handlers.
const MISBEHAVE_MEMORY: usize = 24 << 20;

/// A server with one tenant per language. Routes: `chat.join`/`chat.leave`
/// (subscribe), `chat.send` (publish, scope `chat:write`, no schema: the
/// handler's own checks are what is compared), `chat.lobby` (no channel),
/// `chat.nope` (a route the chat handler does not know), `misbehave`.
async fn server() -> TestServer {
    TestServer::start_with(|config: &mut Config| {
        // Compiling the interpreter components takes tens of seconds: keep
        // wasmtime's cache between runs and between the tests of one run.
        config.sandbox = SandboxConfig {
            cache_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wasmtime-cache")),
            ..config.sandbox.clone()
        };
        for (name, chat, misbehave, _) in LANGUAGES {
            let mut t = tenant("alpha.secret");
            t.handlers = [
                (
                    "chat".to_owned(),
                    handler(chat, &[Capability::State, Capability::Clock]),
                ),
                ("misbehave".to_owned(), {
                    // A cap of 24 MiB (above the interpreters' ~9-12.5 MiB
                    // start): allocating 1 MiB blocks up to the 64 MiB
                    // interpreter default would run out of fuel first,
                    // since interpreters zero what they allocate.
                    let mut h = handler(misbehave, &Capability::ALL);
                    h.limits.memory_bytes = MISBEHAVE_MEMORY;
                    h
                }),
            ]
            .into();
            t.routes = [
                ("chat.join", ChannelAccess::Subscribe, &[][..], "chat"),
                ("chat.leave", ChannelAccess::Subscribe, &[], "chat"),
                ("chat.send", ChannelAccess::Publish, &["chat:write"], "chat"),
                ("chat.lobby", ChannelAccess::None, &[], "chat"),
                ("chat.nope", ChannelAccess::Publish, &["chat:write"], "chat"),
                ("misbehave", ChannelAccess::None, &[], "misbehave"),
            ]
            .into_iter()
            .map(|(r, access, scopes, h)| (r.to_owned(), route(h, access, scopes, None)))
            .collect();
            // The scenario sends faster than the default per-connection
            // rate; rate limits are not what is compared here.
            t.limits.messages_per_sec = 10_000;
            t.limits.message_burst = 10_000;
            t.limits.subject_messages_per_sec = 10_000;
            config.tenants.insert(name.to_owned(), t);
        }
    })
    .await
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Replace every `at` of a chat line (an event's data or a history entry)
/// by a marker, after checking it is a timestamp within the run.
fn normalise(frame: &mut Value, since: u64) {
    let check = |at: &mut Value| {
        let ms = at
            .as_u64()
            .unwrap_or_else(|| panic!("`at` is not a u64: {at}"));
        assert!(
            (since..=now_ms() + 1).contains(&ms),
            "`at` {ms} is not the current time"
        );
        *at = json!("<at>");
    };
    if let Some(at) = frame.pointer_mut("/data/at") {
        check(at);
    }
    if let Some(history) = frame
        .pointer_mut("/data/history")
        .and_then(Value::as_array_mut)
    {
        for line in history {
            if let Some(at) = line.get_mut("at") {
                check(at);
            }
        }
    }
    if frame["type"] == "error" && frame["code"] == "invalid_data" {
        let message = frame["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("data does not fit"),
            "invalid_data message: {message}"
        );
        frame["message"] = json!("data does not fit: <parser's words>");
    }
}

/// Every frame up to the answer of a ping: events already queued for this
/// client arrive before it.
async fn drain(client: &mut Client) -> Vec<Value> {
    client.send(json!({"type": "ping", "id": "drain"})).await;
    let mut frames = Vec::new();
    loop {
        let frame = client.recv().await;
        if frame["type"] == "pong" {
            return frames;
        }
        frames.push(frame);
    }
}

/// The scenario, run against one language's tenant; returns what each
/// client received, step by step.
async fn transcript(server: &TestServer, tenant: &str) -> Vec<(String, Value)> {
    let since = now_ms();
    let mut clients = Vec::new();
    for (sub, scope) in [
        ("alice", "chat:write"),
        ("bob", "chat:write"),
        ("carol", ""),
    ] {
        let client = server
            .connect(tenant, &server.token(tenant, sub, scope))
            .await
            .unwrap_or_else(|e| panic!("{sub} connects to {tenant}: {e:?}"));
        clients.push((sub, client));
    }
    let long_ok: String = "é\"😀\u{1}".repeat(125);
    let long_bad = format!("{long_ok}x");
    let mut steps: Vec<(usize, Value)> = vec![
        (0, json!({"type": "chat.join", "channel": "room:1"})),
        (1, json!({"type": "chat.join", "channel": "room:1"})),
        (
            0,
            json!({"type": "chat.send", "channel": "room:1", "data": {"text": "hi bob"}}),
        ),
        (
            1,
            json!({"type": "chat.send", "channel": "room:1", "data": ["the array form"]}),
        ),
        (
            0,
            json!({"type": "chat.send", "channel": "room:1", "data": {"text": "x", "extra": [1, {"a": null}]}}),
        ),
        (
            0,
            json!({"type": "chat.send", "channel": "room:1", "data": {"text": long_ok}}),
        ),
        (
            0,
            json!({"type": "chat.send", "channel": "room:1", "data": {"text": long_bad}}),
        ),
        (
            0,
            json!({"type": "chat.send", "channel": "room:1", "data": {"text": ""}}),
        ),
        (
            0,
            json!({"type": "chat.send", "channel": "room:1", "data": {"text": " \t\n\u{3000}\u{a0}\u{85}\u{2028}"}}),
        ),
        // Not white space to Rust (JavaScript's trim and Python's isspace
        // disagree on these): sent as text.
        (
            0,
            json!({"type": "chat.send", "channel": "room:1", "data": {"text": "\u{feff}"}}),
        ),
        (
            0,
            json!({"type": "chat.send", "channel": "room:1", "data": {"text": "\u{1c}"}}),
        ),
        (
            0,
            json!({"type": "chat.send", "channel": "room:1", "data": {"text": 5}}),
        ),
        (
            0,
            json!({"type": "chat.send", "channel": "room:1", "data": {"txt": "hi"}}),
        ),
        (
            0,
            json!({"type": "chat.send", "channel": "room:1", "data": "hi"}),
        ),
        (
            0,
            json!({"type": "chat.send", "channel": "room:1", "data": null}),
        ),
        (
            0,
            json!({"type": "chat.send", "channel": "room:1", "data": 7}),
        ),
        (
            0,
            json!({"type": "chat.send", "channel": "room:1", "data": []}),
        ),
        (
            0,
            json!({"type": "chat.send", "channel": "room:1", "data": ["a", "b"]}),
        ),
        (0, json!({"type": "chat.send", "channel": "room:1"})),
        (0, json!({"type": "chat.lobby"})),
        (0, json!({"type": "chat.nope", "channel": "room:1"})),
        // Carol may subscribe but not publish: the host drops her handler's
        // `joined` publish, and refuses her sends before any handler runs.
        (2, json!({"type": "chat.join", "channel": "room:1"})),
        (
            2,
            json!({"type": "chat.send", "channel": "room:1", "data": {"text": "x"}}),
        ),
        // Another room has its own history.
        (
            1,
            json!({"type": "chat.send", "channel": "room:2", "data": {"text": "elsewhere"}}),
        ),
        (1, json!({"type": "chat.join", "channel": "room:2"})),
    ];
    // Past the history bound: 20 more lines, then a late joiner.
    for i in 0..20 {
        steps.push((
            i % 2,
            json!({"type": "chat.send", "channel": "room:1", "data": {"text": format!("line {i}")}}),
        ));
    }
    steps.push((2, json!({"type": "chat.leave", "channel": "room:1"})));
    steps.push((2, json!({"type": "chat.join", "channel": "room:1"})));
    steps.push((1, json!({"type": "chat.leave", "channel": "room:1"})));
    steps.push((
        0,
        json!({"type": "chat.send", "channel": "room:1", "data": {"text": "bob left"}}),
    ));

    let mut out = Vec::new();
    for (n, (who, mut message)) in steps.into_iter().enumerate() {
        let id = format!("m{n}");
        message["id"] = json!(id);
        let (sender, client) = &mut clients[who];
        client.send(message.clone()).await;
        // Everything up to the answer (e.g. the sender's own `joined`
        // event), then the answer.
        loop {
            let frame = client.recv().await;
            if (frame["type"] == "ack" || frame["type"] == "error") && frame["id"] == id {
                out.push((format!("step {n} {message}: answer to {sender}"), frame));
                break;
            }
            out.push((
                format!("step {n}: {sender} received before the answer"),
                frame,
            ));
        }
        for (sub, client) in &mut clients {
            for frame in drain(client).await {
                out.push((format!("step {n}: {sub} received"), frame));
            }
        }
    }
    for (_, frame) in &mut out {
        normalise(frame, since);
    }
    out
}

#[tokio::test]
async fn the_chat_handler_behaves_alike_in_every_language() {
    let server = server().await;
    let reference = transcript(&server, "rust").await;

    // The reference itself does what handlers/chat documents.
    let answers: Vec<&Value> = reference
        .iter()
        .filter(|(what, _)| what.contains(": answer to"))
        .map(|(_, frame)| frame)
        .collect();
    let codes: Vec<&str> = answers
        .iter()
        .map(|f| f["code"].as_str().unwrap_or("ack"))
        .collect();
    assert_eq!(
        codes[..25],
        [
            "ack",
            "ack",
            "ack",
            "ack",
            "ack",
            "ack",
            "text_too_long",
            "empty_text",
            "empty_text",
            "ack",
            "ack",
            "invalid_data",
            "invalid_data",
            "invalid_data",
            "invalid_data",
            "invalid_data",
            "invalid_data",
            "invalid_data",
            "invalid_data",
            "channel_required",
            "unknown_route",
            "ack",
            "forbidden",
            "ack",
            "ack"
        ]
    );
    // The late joiner gets the last 20 lines of room:1, oldest first.
    let late = answers[answers.len() - 3];
    let history = late["data"]["history"].as_array().expect("history");
    assert_eq!(history.len(), 20, "{late}");
    let texts: Vec<&str> = history.iter().filter_map(|l| l["text"].as_str()).collect();
    let expected: Vec<String> = (0..20).map(|i| format!("line {i}")).collect();
    assert_eq!(texts, expected);
    assert_eq!(history[0]["seq"], 7);
    assert_eq!(history[19]["seq"], 26);
    // room:2 kept its own history.
    assert_eq!(answers[24]["data"]["history"][0]["text"], "elsewhere");

    for (tenant, _, _, _) in &LANGUAGES[1..] {
        let theirs = transcript(&server, tenant).await;
        for (i, ((what, want), (_, got))) in reference.iter().zip(&theirs).enumerate() {
            assert_eq!(got, want, "{tenant} differs from rust at frame {i}, {what}");
        }
        assert_eq!(
            theirs.len(),
            reference.len(),
            "{tenant} received another number of frames than rust"
        );
    }
}

/// One call of a misbehave handler; returns its answer.
async fn misbehave(client: &mut Client, mode: &str) -> Value {
    client
        .request(json!({"type": "misbehave", "id": mode, "data": {"mode": mode}}))
        .await
}

/// Every language's chat handler answers a send.
async fn all_chats_serve(clients: &mut [(&str, Client)], round: usize) {
    for (tenant, client) in clients.iter_mut() {
        let id = format!("serve-{round}");
        let ack = client
            .request(json!({"type": "chat.send", "id": id, "channel": "room:9", "data": {"text": "still here"}}))
            .await;
        assert_eq!(
            ack["type"], "ack",
            "{tenant} chat after round {round}: {ack}"
        );
    }
}

#[tokio::test]
async fn every_language_is_stopped_by_fuel_and_the_memory_cap() {
    let server = server().await;
    let mut clients = Vec::new();
    for (tenant, _, _, _) in LANGUAGES {
        let client = server
            .connect(tenant, &server.token(tenant, "mallory", "chat:write"))
            .await
            .expect("connects");
        clients.push((tenant, client));
    }
    all_chats_serve(&mut clients, 0).await;
    for (i, (tenant, _, _, interpreter)) in LANGUAGES.iter().enumerate() {
        // Limits sized for the component: interpreters get more fuel.
        let tenant_state = server.state.tenant(tenant).expect("tenant");
        let hostile = &tenant_state.handlers["misbehave"];
        let fuel = if *interpreter {
            DEFAULT_INTERPRETER_FUEL
        } else {
            DEFAULT_FUEL
        };
        assert_eq!(hostile.spec().limits.fuel, fuel, "{tenant}");
        assert_eq!(hostile.spec().limits.memory_bytes, MISBEHAVE_MEMORY);

        let client = &mut clients[i].1;
        let ok = misbehave(client, "ok").await;
        assert_eq!(ok["data"], json!({"ok": true}), "{tenant}: {ok}");

        let spun = misbehave(client, "spin").await;
        assert_eq!(spun["code"], "handler_timeout", "{tenant}: {spun}");
        all_chats_serve(&mut clients, 2 * i + 1).await;

        let client = &mut clients[i].1;
        let grew = misbehave(client, "alloc").await;
        assert_eq!(grew["code"], "handler_failed", "{tenant}: {grew}");
        all_chats_serve(&mut clients, 2 * i + 2).await;

        // The same handler serves again, from a clean instance.
        let client = &mut clients[i].1;
        let ok = misbehave(client, "ok").await;
        assert_eq!(ok["data"], json!({"ok": true}), "{tenant}: {ok}");

        let stats = hostile.stats();
        assert_eq!(
            stats.errors.get("out_of_fuel"),
            Some(&1),
            "{tenant}: {stats:?}"
        );
        assert_eq!(
            stats.errors.get("memory_limit"),
            Some(&1),
            "{tenant}: {stats:?}"
        );
        assert_eq!(stats.quarantines, 0, "{tenant}");
    }
}
