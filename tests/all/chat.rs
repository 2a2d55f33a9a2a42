//! End to end: two clients chat in a room through the chat handler.

use serde_json::json;
use sluice_tests::server::TestServer;

#[tokio::test]
async fn two_clients_chat_in_a_room() {
    let server = TestServer::start().await;
    let mut alice = server
        .connect("alpha", &server.token("alpha", "alice", "chat:write"))
        .await
        .expect("alice");
    let mut bob = server
        .connect("alpha", &server.token("alpha", "bob", "chat:write"))
        .await
        .expect("bob");

    let joined = alice
        .request(json!({"type": "chat.join", "id": "a1", "channel": "room:42"}))
        .await;
    assert_eq!(
        joined,
        json!({"type": "ack", "id": "a1", "data": {"history": []}})
    );
    let joined = bob
        .request(json!({"type": "chat.join", "id": "b1", "channel": "room:42"}))
        .await;
    assert_eq!(joined["type"], "ack");
    // Alice sees bob join.
    let event = alice.next_event().await;
    assert_eq!(event["channel"], "room:42");
    assert_eq!(event["data"], json!({"kind": "joined", "from": "bob"}));

    let sent = alice.request(json!({"type": "chat.send", "id": "a2", "channel": "room:42", "data": {"text": "hi bob"}})).await;
    assert_eq!(sent, json!({"type": "ack", "id": "a2", "data": {"seq": 1}}));
    let event = bob.next_event().await;
    assert_eq!(event["data"]["kind"], "message");
    assert_eq!(event["data"]["from"], "alice");
    assert_eq!(event["data"]["text"], "hi bob");

    let sent = bob.request(json!({"type": "chat.send", "id": "b2", "channel": "room:42", "data": {"text": "hi alice"}})).await;
    assert_eq!(sent["data"], json!({"seq": 2}));
    let event = alice.next_event().await;
    assert_eq!(event["data"]["text"], "hi alice");

    // A handler's own rejection reaches the client with its code.
    let err = alice
        .request(
            json!({"type": "chat.send", "id": "a3", "channel": "room:42", "data": {"text": "   "}}),
        )
        .await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "empty_text");

    // A third client joining later gets the history.
    let mut carol = server
        .connect("alpha", &server.token("alpha", "carol", ""))
        .await
        .expect("carol");
    let joined = carol
        .request(json!({"type": "chat.join", "id": "c1", "channel": "room:42"}))
        .await;
    let texts: Vec<&str> = joined["data"]["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|l| l["text"].as_str().unwrap_or(""))
        .collect();
    // Carol has no chat:write: she may subscribe but the join's "joined"
    // publish is refused by the host, and so is sending.
    assert_eq!(texts, ["hi bob", "hi alice"]);
    let err = carol
        .request(
            json!({"type": "chat.send", "id": "c2", "channel": "room:42", "data": {"text": "x"}}),
        )
        .await;
    assert_eq!(err["code"], "forbidden");

    // Leaving stops delivery.
    bob.request(json!({"type": "chat.leave", "id": "b3", "channel": "room:42"}))
        .await;
    alice.request(json!({"type": "chat.send", "id": "a4", "channel": "room:42", "data": {"text": "gone?"}})).await;
    bob.assert_usable().await;
    assert_eq!(server.state.subscribers("alpha", "room:42"), 2);
}
