//! A corpus of hostile input, well over a hundred cases. Each gets its
//! documented response, and the connection stays usable after every one of
//! those that answer with an error frame.

use futures_util::SinkExt;
use serde_json::{Value, json};
use sluice_tests::server::{Client, TestServer};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;

fn corpus() -> Vec<(String, &'static str)> {
    let mut cases: Vec<(String, &'static str)> = Vec::new();
    // Not JSON.
    for text in [
        "",
        " ",
        "{",
        "}",
        "[",
        "nul",
        "tru",
        "'single'",
        r#"{"type":}"#,
        "\u{1}",
        "{,}",
        r#"{"type":"echo",}"#,
        "NaN",
        "Infinity",
        "{\"type\":\"echo\"}{}",
    ] {
        cases.push((text.to_owned(), "bad_json"));
    }
    // JSON, but not an object envelope.
    for text in [
        "1",
        "-1",
        "1.5",
        r#""str""#,
        "true",
        "false",
        "null",
        "[]",
        "[1]",
        r#"[{"type":"echo"}]"#,
        // serde would read this as a positional envelope.
        r#"["echo","x",null,{"a":1}]"#,
    ] {
        cases.push((text.to_owned(), "bad_envelope"));
    }
    // Every envelope field with every wrong type.
    let wrong: [Value; 6] = [
        json!(1),
        json!(1.5),
        json!(true),
        json!(null),
        json!([]),
        json!({}),
    ];
    for v in &wrong {
        cases.push((json!({"type": v}).to_string(), "bad_envelope"));
        if !v.is_null() {
            cases.push((json!({"type": "echo", "id": v}).to_string(), "bad_envelope"));
            cases.push((
                json!({"type": "chat.send", "channel": v, "data": {"text": "x"}}).to_string(),
                "bad_envelope",
            ));
        }
    }
    // Missing, empty, long or unknown fields; duplicate keys.
    cases.push((r#"{}"#.into(), "bad_envelope"));
    cases.push((r#"{"id":"1","data":{}}"#.into(), "bad_envelope"));
    cases.push((json!({"type": ""}).to_string(), "bad_envelope"));
    cases.push((json!({"type": "x".repeat(200)}).to_string(), "bad_envelope"));
    cases.push((
        json!({"type": "echo", "id": "i".repeat(65)}).to_string(),
        "bad_envelope",
    ));
    for extra in ["Type", "TYPE", "extra", "__proto__", "constructor"] {
        cases.push((
            json!({"type": "echo", extra: 1}).to_string(),
            "bad_envelope",
        ));
    }
    for dup in [
        r#"{"type":"echo","type":"echo"}"#,
        r#"{"type":"echo","id":"a","id":"b"}"#,
        r#"{"type":"echo","data":1,"data":2}"#,
    ] {
        cases.push((dup.into(), "bad_envelope"));
    }
    // Depth bombs.
    for depth in [33, 100, 1000, 10_000] {
        cases.push((
            format!(
                r#"{{"type":"echo","data":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            ),
            "too_deep",
        ));
        cases.push((
            format!(
                r#"{{"type":"echo","data":{}1{}}}"#,
                "{\"a\":".repeat(depth),
                "}".repeat(depth)
            ),
            "too_deep",
        ));
    }
    // Numbers out of range.
    for n in ["1e400", "-1e400", "1e999999"] {
        cases.push((format!(r#"{{"type":"echo","data":{n}}}"#), "bad_json"));
    }
    // Channel names that are not channel names.
    for ch in [
        "",
        " ",
        "a b",
        "a/b",
        "ä",
        "room:1\n",
        "<script>",
        "room;1",
        "../x",
        "room\u{0}1",
        &"a".repeat(129),
    ] {
        cases.push((
            json!({"type": "subscribe", "channel": ch}).to_string(),
            "invalid_channel",
        ));
    }
    // Reserved types misused, unknown types.
    for t in [
        "welcome",
        "ack",
        "error",
        "event",
        "pong",
        "sluice.admin",
        "sluice.",
    ] {
        cases.push((json!({"type": t}).to_string(), "unknown_type"));
    }
    for t in ["Echo", "echo ", "chat", "chat.sen", "admin", "../echo"] {
        cases.push((json!({"type": t}).to_string(), "unknown_type"));
    }
    cases.push((json!({"type": "subscribe"}).to_string(), "bad_envelope"));
    cases.push((json!({"type": "unsubscribe"}).to_string(), "bad_envelope"));
    cases.push((json!({"type": "refresh"}).to_string(), "bad_envelope"));
    cases.push((
        json!({"type": "refresh", "data": {"token": 5}}).to_string(),
        "bad_envelope",
    ));
    cases.push((
        json!({"type": "refresh", "data": {"token": "x.y.z"}}).to_string(),
        "invalid_token",
    ));
    // Channels where none is taken, none where one is needed, channels the
    // rules forbid, scopes missing.
    cases.push((
        json!({"type": "echo", "channel": "room:1"}).to_string(),
        "bad_envelope",
    ));
    cases.push((json!({"type": "chat.join"}).to_string(), "bad_envelope"));
    cases.push((
        json!({"type": "chat.join", "channel": "secret:1"}).to_string(),
        "forbidden",
    ));
    cases.push((
        json!({"type": "chat.join", "channel": "user:someone-else"}).to_string(),
        "forbidden",
    ));
    cases.push((
        json!({"type": "subscribe", "channel": "team:blue"}).to_string(),
        "forbidden",
    ));
    cases.push((
        json!({"type": "admin.echo", "data": 1}).to_string(),
        "forbidden",
    ));
    // Every schema keyword violated (route profile.set).
    for data in [
        json!({}),
        json!({"name": "ok", "x": 1}),
        json!({"name": 1}),
        json!({"name": ""}),
        json!({"name": "a".repeat(21)}),
        json!({"name": "A"}),
        json!({"name": "ok", "age": -1}),
        json!({"name": "ok", "age": 151}),
        json!({"name": "ok", "age": "1"}),
        json!({"name": "ok", "tags": ["a", "b", "c", "d"]}),
        json!({"name": "ok", "tags": ["a", "a"]}),
        json!({"name": "ok", "tags": [1]}),
        json!({"name": "ok", "kind": "z"}),
        json!({"name": "ok", "score": 0.25}),
        json!({"name": "ok", "score": 10}),
        json!([1]),
        json!(null),
    ] {
        cases.push((
            json!({"type": "profile.set", "data": data}).to_string(),
            "schema_invalid",
        ));
    }
    cases
}

async fn answer(c: &mut Client, text: &str) -> Value {
    c.send_text(text).await;
    loop {
        let f = c.recv().await;
        if f["type"] == "error" || f["type"] == "ack" {
            return f;
        }
    }
}

#[tokio::test]
async fn a_corpus_of_hostile_messages_gets_documented_errors_and_the_connection_stays() {
    let server = TestServer::start_with(|c| {
        if let Some(a) = c.tenants.get_mut("alpha") {
            a.limits.messages_per_sec = 10_000;
            a.limits.message_burst = 10_000;
            a.limits.subject_messages_per_sec = 10_000;
        }
    })
    .await;
    let cases = corpus();
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    let mut c = server
        .connect("alpha", &server.token("alpha", "fuzz", ""))
        .await
        .expect("connect");
    for (text, code) in &cases {
        let f = answer(&mut c, text).await;
        assert_eq!(f["type"], "error", "input {text:.100}: {f}");
        assert_eq!(f["code"], *code, "input {text:.100}: {f}");
        let message = f["message"].as_str().unwrap_or_default();
        assert!(
            message.len() < 200 && !message.contains("script"),
            "{message}"
        );
    }
    c.assert_usable().await;
    // Binary frames of any size are refused without closing.
    for size in [0usize, 1, 4096] {
        c.socket
            .send(Message::binary(vec![0u8; size]))
            .await
            .expect("send");
        assert_eq!(c.recv().await["code"], "binary_not_supported");
    }
    c.assert_usable().await;
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn control_frame_abuse_closes_with_1002() {
    let server = TestServer::start().await;
    // A ping longer than the 125 bytes RFC 6455 allows.
    let mut c = server
        .connect("alpha", &server.token("alpha", "ctl", ""))
        .await
        .expect("connect");
    let frame = Frame::ping(vec![b'p'; 200]);
    c.socket.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(c.closed().await, Some(1002));
    // A fragmented control frame.
    let mut c = server
        .connect("alpha", &server.token("alpha", "ctl2", ""))
        .await
        .expect("connect");
    let mut frame = Frame::ping(b"x".to_vec());
    frame.header_mut().is_final = false;
    c.socket.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(c.closed().await, Some(1002));
    server.assert_honest_client_served().await;
}
