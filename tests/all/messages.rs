//! Messages (SECURITY.md): every frame is untrusted. Malformed input gets an
//! error frame and the connection stays usable; invalid UTF-8 and oversized
//! input close it with 1007 / 1009; every action is authorized, including
//! each action a handler returns.

use futures_util::SinkExt;
use serde_json::{Value, json};
use sluice_tests::server::{Client, TestServer};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

async fn alpha(server: &TestServer, sub: &str, scopes: &str) -> Client {
    server
        .connect("alpha", &server.token("alpha", sub, scopes))
        .await
        .expect("connect")
}

/// Send raw text and return the error frame that answers it.
async fn error_for(client: &mut Client, text: &str) -> Value {
    client.send_text(text).await;
    loop {
        let frame = client.recv().await;
        if frame["type"] == "error" {
            return frame;
        }
    }
}

#[tokio::test]
async fn malformed_messages_get_an_error_frame_and_the_connection_stays_usable() {
    let server = TestServer::start().await;
    let mut c = alpha(&server, "fuzzy", "chat:write").await;
    let deep = format!(
        "{{\"type\":\"echo\",\"data\":{}{}}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    let cases: Vec<(String, &str)> = vec![
        ("{".into(), "bad_json"),
        ("not json at all".into(), "bad_json"),
        ("".into(), "bad_json"),
        ("[1,2,3]".into(), "bad_envelope"),
        ("42".into(), "bad_envelope"),
        (deep, "too_deep"),
        (r#"{"id":"x"}"#.into(), "bad_envelope"),
        (r#"{"type":7}"#.into(), "bad_envelope"),
        (r#"{"type":"echo","id":5}"#.into(), "bad_envelope"),
        (
            format!(r#"{{"type":"echo","id":"{}"}}"#, "i".repeat(65)),
            "bad_envelope",
        ),
        (r#"{"type":"echo","extra":true}"#.into(), "bad_envelope"),
        (
            r#"{"type":"echo","type":"admin.echo"}"#.into(),
            "bad_envelope",
        ),
        (r#"{"type":"no.such.route"}"#.into(), "unknown_type"),
        (r#"{"type":"welcome"}"#.into(), "unknown_type"),
        (r#"{"type":"sluice.internal"}"#.into(), "unknown_type"),
        (
            r#"{"type":"echo","channel":"room:1"}"#.into(),
            "bad_envelope",
        ),
        (
            r#"{"type":"chat.send","data":{"text":"x"}}"#.into(),
            "bad_envelope",
        ),
        (
            r#"{"type":"chat.send","channel":"room 1","data":{"text":"x"}}"#.into(),
            "invalid_channel",
        ),
        (r#"{"type":"subscribe"}"#.into(), "bad_envelope"),
        (
            r#"{"type":"subscribe","channel":"../etc"}"#.into(),
            "invalid_channel",
        ),
        (r#"{"type":"echo","data":1e999999}"#.into(), "bad_json"),
    ];
    for (text, code) in cases {
        let err = error_for(&mut c, &text).await;
        assert_eq!(err["code"], code, "input {text:.80}: {err}");
        let message = err["message"].as_str().unwrap_or_default();
        assert!(message.len() < 200, "short messages only: {message}");
        c.assert_usable().await;
    }
    // Binary frames are refused, the connection stays.
    c.socket
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    let err = c.recv().await;
    assert_eq!(err["code"], "binary_not_supported");
    c.assert_usable().await;
    // Huge numbers that are valid JSON pass through untouched.
    let ack = c
        .request(json!({"type": "echo", "id": "n", "data": 123456789012345678u64}))
        .await;
    assert_eq!(ack["data"], 123456789012345678u64);
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let server = TestServer::start().await;
    let mut c = alpha(&server, "bytes", "").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.socket.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(c.closed().await, Some(1007));
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn oversized_messages_and_endless_fragments_close_with_1009() {
    let server = TestServer::start_with(|c| {
        c.server.max_message_bytes = 2048;
        c.server.max_frame_bytes = 1024;
    })
    .await;
    // One frame over the frame limit.
    let mut c = alpha(&server, "big", "").await;
    c.send_text(&format!(
        r#"{{"type":"echo","data":"{}"}}"#,
        "x".repeat(1500)
    ))
    .await;
    assert_eq!(c.closed().await, Some(1009));
    // Small fragments that never end.
    let mut c = alpha(&server, "frag", "").await;
    let first = Frame::message(
        b"{\"type\":\"echo\",\"data\":\"".to_vec(),
        OpCode::Data(Data::Text),
        false,
    );
    c.socket.send(Message::Frame(first)).await.expect("send");
    let mut closed = None;
    for _ in 0..100 {
        let more = Frame::message(vec![b'x'; 500], OpCode::Data(Data::Continue), false);
        if c.socket.send(Message::Frame(more)).await.is_err() {
            break;
        }
        if let Ok(code) =
            tokio::time::timeout(std::time::Duration::from_millis(20), c.closed()).await
        {
            closed = Some(code);
            break;
        }
    }
    let code = match closed {
        Some(code) => code,
        None => c.closed().await,
    };
    assert_eq!(code, Some(1009));
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn schema_violations_name_the_schema_location_and_keyword_never_the_input() {
    let server = TestServer::start().await;
    let mut c = alpha(&server, "schema", "").await;
    let cases = [
        (json!({"age": 3}), "/required", "required"),
        (
            json!({"name": "abc", "SECRET_extra": 1}),
            "/additionalProperties",
            "additionalProperties",
        ),
        (json!({"name": 5}), "/properties/name/type", "type"),
        (
            json!({"name": ""}),
            "/properties/name/minLength",
            "minLength",
        ),
        (
            json!({"name": "abcdefghijklmnopqrstuvwxyz"}),
            "/properties/name/maxLength",
            "maxLength",
        ),
        (
            json!({"name": "SECRET"}),
            "/properties/name/pattern",
            "pattern",
        ),
        (
            json!({"name": "ok", "age": -1}),
            "/properties/age/minimum",
            "minimum",
        ),
        (
            json!({"name": "ok", "age": 151}),
            "/properties/age/maximum",
            "maximum",
        ),
        (
            json!({"name": "ok", "age": 1.5}),
            "/properties/age/type",
            "type",
        ),
        (
            json!({"name": "ok", "tags": ["a", "b", "c", "d"]}),
            "/properties/tags/maxItems",
            "maxItems",
        ),
        (
            json!({"name": "ok", "tags": ["a", "a"]}),
            "/properties/tags/uniqueItems",
            "uniqueItems",
        ),
        (
            json!({"name": "ok", "tags": [1]}),
            "/properties/tags/items/type",
            "type",
        ),
        (
            json!({"name": "ok", "kind": "c"}),
            "/properties/kind/enum",
            "enum",
        ),
        (
            json!({"name": "ok", "score": 0.3}),
            "/properties/score/multipleOf",
            "multipleOf",
        ),
        (
            json!({"name": "ok", "score": 10}),
            "/properties/score/exclusiveMaximum",
            "exclusiveMaximum",
        ),
        (json!("not an object"), "/type", "type"),
    ];
    for (data, at, keyword) in cases {
        let err = c
            .request(json!({"type": "profile.set", "id": "s", "data": data}))
            .await;
        assert_eq!(err["code"], "schema_invalid", "{data}");
        assert_eq!(
            err["message"],
            format!("data fails `{keyword}` at schema #{at}"),
            "{data}"
        );
        assert!(!err.to_string().contains("SECRET"));
    }
    let ok = c
        .request(json!({"type": "profile.set", "id": "s", "data": {"name": "ada", "age": 36}}))
        .await;
    assert_eq!(ok["type"], "ack");
}

#[tokio::test]
async fn channel_rules_decide_subscribe_and_publish() {
    let server = TestServer::start().await;
    let mut c = alpha(&server, "alice", "").await;
    let sub = |ch: &str, id: &str| json!({"type": "subscribe", "id": id, "channel": ch});
    assert_eq!(c.request(sub("room:1", "1")).await["type"], "ack");
    assert_eq!(c.request(sub("user:alice", "2")).await["type"], "ack");
    assert_eq!(
        c.request(sub("team:red", "3")).await["type"],
        "ack",
        "teams claim includes red"
    );
    for (ch, id) in [
        ("user:bob", "4"),
        ("team:blue", "5"),
        ("secret:1", "6"),
        ("room:1:2", "7"),
    ] {
        let err = c.request(sub(ch, id)).await;
        assert_eq!(err["code"], "forbidden", "{ch}");
    }
    // chat.send publishes: needs chat:write and a publishable channel.
    let err = c
        .request(
            json!({"type": "chat.send", "id": "8", "channel": "room:1", "data": {"text": "x"}}),
        )
        .await;
    assert_eq!(err["code"], "forbidden");
    let mut writer = alpha(&server, "writer", "chat:write").await;
    let err = writer.request(json!({"type": "chat.send", "id": "9", "channel": "user:writer", "data": {"text": "x"}})).await;
    assert_eq!(err["code"], "forbidden", "user channels are subscribe-only");
    let ok = writer
        .request(
            json!({"type": "chat.send", "id": "10", "channel": "room:1", "data": {"text": "x"}}),
        )
        .await;
    assert_eq!(ok["type"], "ack");
    assert_eq!(c.next_event().await["data"]["text"], "x");
    c.request(json!({"type": "unsubscribe", "id": "11", "channel": "room:1"}))
        .await;
    assert_eq!(server.state.subscribers("alpha", "room:1"), 0);
}

#[tokio::test]
async fn actions_a_handler_returns_are_authorized_again() {
    let server = TestServer::start().await;
    let mut victim = alpha(&server, "victim", "").await;
    victim
        .request(json!({"type": "subscribe", "id": "v", "channel": "user:victim"}))
        .await;
    victim
        .request(json!({"type": "subscribe", "id": "v2", "channel": "room:7"}))
        .await;
    let mut beta_listener = server
        .connect("beta", &server.token("beta", "b", ""))
        .await
        .expect("beta");
    beta_listener
        .request(json!({"type": "subscribe", "id": "b", "channel": "room:7"}))
        .await;

    // A principal without chat:write asks the handler to publish: refused
    // by the host, nothing delivered; the reply still arrives.
    let mut mallory = alpha(&server, "mallory", "").await;
    let publish = |target: &str, id: &str| json!({"type": "misbehave", "id": id, "data": {"mode": "publish", "target": target}});
    for (target, id) in [
        ("user:victim", "1"),
        ("room:7", "2"),
        ("no such channel!", "3"),
    ] {
        let ack = mallory.request(publish(target, id)).await;
        assert_eq!(ack["data"], json!({"published": true}), "{target}");
    }
    // A handler cannot subscribe its caller to someone else's channel.
    mallory.request(json!({"type": "misbehave", "id": "4", "data": {"mode": "subscribe", "target": "user:victim"}})).await;
    assert_eq!(server.state.subscribers("alpha", "user:victim"), 1);

    // A principal with chat:write may publish to room:7 through the
    // handler, and only alpha's subscribers get it, never beta's.
    let mut writer = alpha(&server, "writer", "chat:write").await;
    writer.request(publish("room:7", "5")).await;
    let event = victim.next_event().await;
    assert_eq!(
        event,
        json!({"type": "event", "channel": "room:7", "data": {"hi": true}})
    );
    beta_listener.assert_usable().await;
    victim.assert_usable().await;
    // The victim got exactly one event: the allowed one (the pings above
    // returned with nothing before them).
    assert_eq!(server.state.subscribers("beta", "room:7"), 1);
}

#[tokio::test]
async fn hostile_handlers_answer_with_codes_and_the_connection_stays() {
    let server = TestServer::start().await;
    let mut c = alpha(&server, "h", "").await;
    for (mode, code) in [
        ("spin", "handler_timeout"),
        ("panic", "handler_failed"),
        ("alloc", "handler_failed"),
        ("many-actions", "handler_failed"),
    ] {
        let err = c
            .request(json!({"type": "misbehave", "id": mode, "data": {"mode": mode}}))
            .await;
        assert_eq!(err["code"], code, "{mode}");
        c.assert_usable().await;
    }
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn keys_and_values_the_client_chose_never_come_back_in_an_error() {
    let server = TestServer::start_with(|c| {
        if let Some(alpha) = c.tenants.get_mut("alpha") {
            alpha.routes.insert(
                "counts.set".into(),
                sluice_tests::server::route(
                    "echo",
                    sluice::config::ChannelAccess::None,
                    &[],
                    Some(json!({"type": "object", "additionalProperties": {"type": "integer"}})),
                ),
            );
        }
    })
    .await;
    let mut c = alpha(&server, "keys", "").await;
    // The schema: a key of the client's choosing, at any depth.
    for (id, data) in [
        ("1", json!({"SECRET_token_abc": "x"})),
        (
            "2",
            json!({"ok": 1, "SECRET_token_abc": {"SECRET_nested": 1}}),
        ),
    ] {
        let err = c
            .request(json!({"type": "counts.set", "id": id, "data": data}))
            .await;
        assert_eq!(err["code"], "schema_invalid", "{err}");
        assert_eq!(
            err["message"],
            "data fails `type` at schema #/additionalProperties/type"
        );
        assert!(!err.to_string().contains("SECRET"), "{err}");
        c.assert_usable().await;
    }
    // A Rust handler's `msg.data::<T>()` (the guest SDK): serde's own error
    // would quote the string.
    for (id, data) in [
        ("3", json!("SECRET_token_abc")),
        ("4", json!({"mode": "ok", "target": ["SECRET_token_abc"]})),
    ] {
        let err = c
            .request(json!({"type": "misbehave", "id": id, "data": data}))
            .await;
        assert_eq!(err["code"], "invalid_data", "{err}");
        assert_eq!(err["message"], "data does not fit the expected shape");
        assert!(!err.to_string().contains("SECRET"), "{err}");
        c.assert_usable().await;
    }
    let ack = c
        .request(json!({"type": "counts.set", "id": "5", "data": {"a": 1}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let ack = c
        .request(json!({"type": "misbehave", "id": "6", "data": {"mode": "ok"}}))
        .await;
    assert_eq!(ack["data"], json!({"ok": true}));
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn a_subject_or_claim_with_a_colon_cannot_name_another_subjects_channel() {
    let server = TestServer::start_with(|c| {
        if let Some(alpha) = c.tenants.get_mut("alpha") {
            alpha
                .channels
                .push(sluice_tests::server::rule("user:{sub}:inbox", false, &[]));
        }
    })
    .await;
    let sub = |ch: &str, id: &str| json!({"type": "subscribe", "id": id, "channel": ch});
    // `user:{sub}` for subject `bob:inbox` would be bob's `user:{sub}:inbox`.
    let mut forger = alpha(&server, "bob:inbox", "").await;
    let err = forger.request(sub("user:bob:inbox", "1")).await;
    assert_eq!(err["code"], "forbidden", "{err}");
    // A claim value is one segment too: `team:{claim:teams}` for a team
    // `red:x` does not reach `team:red:x`.
    let claims = json!({
        "sub": "carol", "iss": sluice_tests::server::ISSUER, "aud": sluice_tests::server::AUDIENCE,
        "exp": sluice_tests::server::now() + 60, "teams": ["red:x"],
    });
    let token = sluice_tests::server::sign_hs(
        sluice_tests::server::ALPHA_SECRET,
        &claims,
        jsonwebtoken::Algorithm::HS256,
        Some("k1"),
    );
    let mut carol = server.connect("alpha", &token).await.expect("connect");
    let err = carol.request(sub("team:red:x", "2")).await;
    assert_eq!(err["code"], "forbidden", "{err}");
    forger.assert_usable().await;
    carol.assert_usable().await;

    // bob is served on both of his channels.
    let mut bob = alpha(&server, "bob", "").await;
    assert_eq!(bob.request(sub("user:bob:inbox", "3")).await["type"], "ack");
    assert_eq!(bob.request(sub("user:bob", "4")).await["type"], "ack");
    assert_eq!(server.state.subscribers("alpha", "user:bob:inbox"), 1);
    server.assert_honest_client_served().await;
}
