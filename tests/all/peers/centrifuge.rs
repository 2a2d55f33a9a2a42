//! The Centrifuge peer (`peers/centrifuge`, Debian's Centrifuge library
//! v0.15), run as a real process: it authenticates with the JWT of the
//! connect command and refuses a bad one, answers the `echo` RPC under the
//! echo route's schema, refuses what the schemas and channel rules refuse,
//! broadcasts to `room:*` subscribers, and `sluice bench --protocol
//! centrifuge` drives it (replies sharing frames included). Needs
//! `peers/build` (which `tests/run` runs).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use sluice::client::{ClientOptions, ClientSocket, ConnectError, TokenVia, connect};
use sluice::loadgen::fanout::{FanoutArgs, run as fanout};
use sluice::loadgen::messages::{LoadArgs, run as load};
use sluice::loadgen::{Protocol, TargetArgs};
use sluice_tests::server::{now, sign_hs};
use tokio_tungstenite::tungstenite::Message;

use super::{Files, ORIGIN, Peer, TENANT, token, token_with};

const WAIT: Duration = Duration::from_secs(10);

/// A Centrifuge client: one command at a time, replies read line by line
/// (the peer may send several in one frame).
struct Centrifuge {
    socket: ClientSocket,
    /// Lines received but not read yet.
    queued: std::collections::VecDeque<Value>,
    next_id: u64,
}

impl Centrifuge {
    /// Open the WebSocket (no token at the upgrade: Centrifuge takes it in
    /// the connect command).
    async fn open(addr: SocketAddr, files: &Files) -> Self {
        let socket = connect(&format!("wss://{addr}/ws/{TENANT}"), &options(files, None))
            .await
            .expect("the upgrade succeeds without a token");
        Self {
            socket,
            queued: Default::default(),
            next_id: 1,
        }
    }

    /// Open and send the connect command with `token`; its reply.
    async fn connected(addr: SocketAddr, files: &Files, token: &str) -> (Self, Value) {
        let mut c = Self::open(addr, files).await;
        let reply = c.command(None, json!({"token": token})).await;
        (c, reply)
    }

    /// Send a command (`method` None: connect) and return its reply,
    /// leaving pushes that came first in the queue.
    async fn command(&mut self, method: Option<u32>, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut cmd = json!({"id": id, "params": params});
        if let Some(m) = method {
            cmd["method"] = json!(m);
        }
        self.socket
            .send(Message::text(cmd.to_string()))
            .await
            .expect("send");
        let mut pushes = Vec::new();
        loop {
            let line = self.line().await;
            if line["id"] == id {
                self.queued.extend(pushes);
                return line;
            }
            assert!(
                line.get("id").is_none(),
                "a reply to another command: {line}"
            );
            pushes.push(line);
        }
    }

    async fn rpc(&mut self, method: &str, data: Value) -> Value {
        self.command(Some(9), json!({"method": method, "data": data}))
            .await
    }

    /// The next reply or push.
    async fn line(&mut self) -> Value {
        if let Some(v) = self.queued.pop_front() {
            return v;
        }
        loop {
            match self.frame().await {
                Message::Text(t) => {
                    assert!(t.ends_with('\n'), "every reply ends with a newline: {t:?}");
                    for l in t.split('\n').filter(|l| !l.is_empty()) {
                        self.queued
                            .push_back(serde_json::from_str(l).expect("each line is JSON"));
                    }
                    if let Some(v) = self.queued.pop_front() {
                        return v;
                    }
                }
                Message::Close(c) => panic!("closed by the peer: {c:?}"),
                _ => {}
            }
        }
    }

    async fn frame(&mut self) -> Message {
        tokio::time::timeout(WAIT, self.socket.next())
            .await
            .expect("a frame in time")
            .expect("the connection is open")
            .expect("a frame")
    }

    /// The close frame the peer ends the connection with.
    async fn closed_with(&mut self) -> (u16, String) {
        match tokio::time::timeout(WAIT, self.socket.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(Some(c)))) => (u16::from(c.code), c.reason.to_string()),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                panic!("closed without a close frame")
            }
            Some(Ok(other)) => panic!("expected a close frame, got {other:?}"),
        }
    }
}

fn options(files: &Files, origin: Option<&str>) -> ClientOptions {
    ClientOptions {
        ca_pem: std::fs::read(files.path("cert.pem")).expect("cert"),
        token: None,
        via: TokenVia::Header,
        origin: origin.map(str::to_owned),
        ..Default::default()
    }
}

/// An honest client is still served: it connects and its echo comes back.
async fn assert_served(addr: SocketAddr, files: &Files) {
    let (mut c, reply) = Centrifuge::connected(addr, files, &token("honest", "")).await;
    assert!(reply["result"]["client"].is_string(), "{reply}");
    let echo = c.rpc("echo", json!({"still": "served"})).await;
    assert_eq!(echo["result"]["data"], json!({"still": "served"}), "{echo}");
}

#[tokio::test]
async fn centrifuge_peer_authenticates_and_echoes_under_the_echo_schema() {
    let files = Files::new();
    let peer = Peer::centrifuge(&files);
    let (mut c, reply) = Centrifuge::connected(peer.addr, &files, &token("alice", "")).await;
    assert_eq!(reply["id"], 1);
    assert!(reply.get("error").is_none(), "{reply}");
    assert!(reply["result"]["client"].is_string(), "{reply}");

    let data = json!({"nested": {"list": [1, "two", true, null, {"x": -7}]}, "text": "h\u{e9}llo \u{2713}", "n": 42});
    let echo = c.rpc("echo", data.clone()).await;
    assert_eq!(echo["result"]["data"], data, "{echo}");

    // peers/schemas/echo.json: an object of at most 64 properties.
    let props: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!(i))).collect();
    for bad in [json!(props), json!(5), json!("text"), json!([1, 2])] {
        let refused = c.rpc("echo", bad.clone()).await;
        assert_eq!(refused["error"]["code"], 400, "{bad}: {refused}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("schema_invalid: ")),
            "{refused}"
        );
        assert!(refused.get("result").is_none());
    }
    let at_limit: serde_json::Map<String, Value> =
        (0..64).map(|i| (format!("k{i}"), json!(i))).collect();
    let echo = c.rpc("echo", json!(at_limit)).await;
    assert_eq!(echo["result"]["data"], json!(at_limit));

    let unknown = c.rpc("nope", json!({})).await;
    assert_eq!(unknown["error"]["code"], 104, "{unknown}");

    // 16 in flight come back in order, several to a frame when the writer
    // finds them queued.
    for i in 0..16 {
        let cmd =
            json!({"id": 100 + i, "method": 9, "params": {"method": "echo", "data": {"n": i}}});
        c.socket
            .feed(Message::text(cmd.to_string()))
            .await
            .expect("feed");
    }
    c.socket.flush().await.expect("flush");
    for i in 0..16 {
        let reply = c.line().await;
        assert_eq!(reply["id"], 100 + i, "{reply}");
        assert_eq!(reply["result"]["data"], json!({"n": i}));
    }
    // Still served after the refusals.
    let echo = c.rpc("echo", json!({"after": "refusals"})).await;
    assert_eq!(echo["result"]["data"], json!({"after": "refusals"}));
    assert_served(peer.addr, &files).await;
}

#[tokio::test]
async fn centrifuge_peer_refuses_a_bad_token_in_the_connect_command() {
    let files = Files::new();
    let peer = Peer::centrifuge(&files);
    let claims =
        |sub: &str| json!({"sub": sub, "iss": "sluice-bench", "aud": "sluice", "exp": now() + 60});
    let invalid = [
        ("no token", String::new()),
        (
            "wrong secret",
            sign_hs(
                "another-secret-0123456789abcdef0123456789",
                &claims("a"),
                Algorithm::HS256,
                None,
            ),
        ),
        (
            "another HMAC algorithm",
            sign_hs(
                "bench-secret-0123456789abcdef0123456789abcdef",
                &claims("a"),
                Algorithm::HS384,
                None,
            ),
        ),
        (
            "wrong issuer",
            token_with("a", "", |c| c["iss"] = json!("someone-else")),
        ),
        (
            "wrong audience",
            token_with("a", "", |c| c["aud"] = json!("other")),
        ),
        (
            "no exp",
            token_with("a", "", |c| {
                c.as_object_mut().expect("object").remove("exp");
            }),
        ),
        (
            "not yet valid",
            token_with("a", "", |c| c["nbf"] = json!(now() + 3600)),
        ),
        (
            "no subject",
            token_with("a", "", |c| {
                c.as_object_mut().expect("object").remove("sub");
            }),
        ),
        ("tampered", format!("{}x", token("a", ""))),
    ];
    for (what, bad) in invalid {
        let mut c = Centrifuge::open(peer.addr, &files).await;
        let connect = json!({"id": 1, "params": {"token": bad}});
        c.socket
            .send(Message::text(connect.to_string()))
            .await
            .expect("send");
        let (code, reason) = c.closed_with().await;
        assert_eq!(code, 3002, "{what}: {reason}");
        assert!(reason.contains("invalid token"), "{what}: {reason}");
    }

    // Expired: Centrifuge answers 109 so that the client refreshes; the
    // connection is not authenticated, so an RPC after it closes it.
    let expired = token_with("a", "", |c| c["exp"] = json!(now() - 3600));
    let (mut c, reply) = Centrifuge::connected(peer.addr, &files, &expired).await;
    assert_eq!(reply["error"]["code"], 109, "{reply}");
    c.socket
        .send(Message::text(
            json!({"id": 2, "method": 9, "params": {"method": "echo", "data": {}}}).to_string(),
        ))
        .await
        .expect("send");
    let (code, _) = c.closed_with().await;
    assert_eq!(code, 3003, "an unauthenticated command is a bad request");

    // A command before connect is refused the same way.
    let mut c = Centrifuge::open(peer.addr, &files).await;
    c.socket
        .send(Message::text(
            json!({"id": 1, "method": 9, "params": {"method": "echo", "data": {}}}).to_string(),
        ))
        .await
        .expect("send");
    assert_eq!(c.closed_with().await.0, 3003);

    // At the upgrade: the path and the Origin, as Sluice checks them.
    let status = |path: &'static str, origin: Option<&'static str>| {
        let opts = options(&files, origin);
        let addr = peer.addr;
        async move {
            match connect(&format!("wss://{addr}{path}"), &opts).await {
                Ok(_) => 101,
                Err(ConnectError::Refused(code)) => code,
                Err(e) => panic!("{path}: {e}"),
            }
        }
    };
    assert_eq!(status("/ws/bench", Some(ORIGIN)).await, 101);
    assert_eq!(
        status("/ws/bench", Some("https://evil.example.com")).await,
        403
    );
    assert_eq!(status("/ws/other", None).await, 404);

    assert_served(peer.addr, &files).await;
}

#[tokio::test]
async fn centrifuge_peer_broadcasts_to_room_subscribers_under_the_rules() {
    let files = Files::new();
    let peer = Peer::centrifuge(&files);
    let (mut alice, _) =
        Centrifuge::connected(peer.addr, &files, &token("alice", "chat:write")).await;
    let (mut bob, _) = Centrifuge::connected(peer.addr, &files, &token("bob", "")).await;

    let sub = bob.command(Some(1), json!({"channel": "room:7"})).await;
    assert!(sub.get("error").is_none(), "{sub}");
    for (channel, code) in [("user:alice", 103), ("team:red", 103), ("room:", 103)] {
        let refused = bob.command(Some(1), json!({"channel": channel})).await;
        assert_eq!(refused["error"]["code"], code, "{channel}: {refused}");
    }
    let own = bob.command(Some(1), json!({"channel": "user:bob"})).await;
    assert!(own.get("error").is_none(), "{own}");

    let published = alice
        .command(
            Some(3),
            json!({"channel": "room:7", "data": {"text": "hi bob"}}),
        )
        .await;
    assert!(published.get("error").is_none(), "{published}");
    let push = bob.line().await;
    assert!(push.get("id").is_none(), "a push: {push}");
    assert_eq!(push["result"]["channel"], "room:7");
    assert_eq!(push["result"]["data"]["data"], json!({"text": "hi bob"}));

    // peers/schemas/chat.send.json: text of 1 to 500 characters, nothing else.
    for bad in [
        json!({"text": ""}),
        json!({"text": "a", "more": 1}),
        json!({}),
        json!({"text": "x".repeat(501)}),
    ] {
        let refused = alice
            .command(Some(3), json!({"channel": "room:7", "data": bad}))
            .await;
        assert_eq!(refused["error"]["code"], 400, "{refused}");
    }
    // Without chat:write, or outside room:*, no publishing.
    let refused = bob
        .command(
            Some(3),
            json!({"channel": "room:7", "data": {"text": "hello?"}}),
        )
        .await;
    assert_eq!(refused["error"]["code"], 103, "{refused}");
    let refused = alice
        .command(
            Some(3),
            json!({"channel": "user:bob", "data": {"text": "psst"}}),
        )
        .await;
    assert_eq!(refused["error"]["code"], 103, "{refused}");

    // Nothing refused reached bob: the next push is the next honest one.
    alice
        .command(
            Some(3),
            json!({"channel": "room:7", "data": {"text": "bye"}}),
        )
        .await;
    let push = bob.line().await;
    assert_eq!(
        push["result"]["data"]["data"],
        json!({"text": "bye"}),
        "{push}"
    );
}

fn target(peer: &Peer, files: &Files) -> TargetArgs {
    TargetArgs {
        url: format!("wss://{}/ws/{TENANT}", peer.addr),
        ca: files.path("cert.pem"),
        config: None,
        tenant: None,
        scopes: Vec::new(),
        subject: "bench-{n}".into(),
        token: Some(token("bench", "chat:write")),
        via: "header".into(),
        sources: 1,
        protocol: Protocol::Centrifuge,
        server_pid: Some(peer.pid()),
        json: true,
        quiet: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_bench_drives_the_centrifuge_peer() {
    let files = Files::new();
    let peer = Peer::centrifuge(&files);
    // Depth 16: the peer's writer puts several replies in one frame; every
    // one is counted, none is taken for an answer nobody asked for.
    let report = load(LoadArgs {
        target: target(&peer, &files),
        connections: 4,
        duration: Duration::from_millis(1000),
        warmup: Duration::from_millis(200),
        depth: 16,
        rate: None,
        routes: vec!["echo".into()],
        data: r#"{"text":"hello"}"#.into(),
        join: None,
        connect_parallel: 4,
        keys: false,
    })
    .await
    .expect("load run");
    assert_eq!(report.failed_connections, 0, "{report:?}");
    assert_eq!(report.refused, 0, "{report:?}");
    assert!(report.answered > 100, "{report:?}");
    assert!(report.server_cpu_us_per_message.is_some_and(|c| c > 0.0));

    // Data the echo schema refuses is counted as refused, not answered.
    let refused = load(LoadArgs {
        target: target(&peer, &files),
        connections: 2,
        duration: Duration::from_millis(500),
        warmup: Duration::from_millis(100),
        depth: 4,
        rate: None,
        routes: vec!["echo".into()],
        data: "5".into(),
        join: None,
        connect_parallel: 2,
        keys: false,
    })
    .await
    .expect("load run");
    assert_eq!(refused.answered, 0, "{refused:?}");
    assert!(refused.refused > 0, "{refused:?}");

    let report = fanout(FanoutArgs {
        target: target(&peer, &files),
        subscribers: 5,
        channel: "room:fan".into(),
        join: "subscribe".into(),
        publish: "chat.send".into(),
        broadcasts: 10,
        rate: 0.0,
        timeout: Duration::from_secs(10),
        connect_parallel: 5,
    })
    .await
    .expect("fanout run");
    assert_eq!(report.deliveries, 50, "{report:?}");
    assert_eq!(report.complete_broadcasts, 10, "{report:?}");
    assert_served(peer.addr, &files).await;
}
