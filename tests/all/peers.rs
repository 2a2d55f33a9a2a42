//! The benchmark peers (`peers/`), run as real processes: the bare echo
//! baseline echoes byte for byte; the Node peer refuses what Sluice refuses
//! at the handshake and answers the same transcript with the same frames as
//! Sluice running `peers/sluice-bench.toml`; the Centrifuge peer
//! ([`centrifuge`]) does the same work in Centrifuge's own protocol. Needs
//! `peers/build` (which `tests/run` runs).

mod centrifuge;

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use sluice::client::{ClientOptions, ConnectError, TokenVia, connect};
use sluice::config::Config;
use sluice::node::Node;
use sluice::server::ServerState;
use sluice_tests::handlers;
use sluice_tests::server::{Client, TempDir, now, sign_hs};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// What the Node peer and the benchmark config expect (peers/sluice-bench.toml).
pub(crate) const TENANT: &str = "bench";
const ISSUER: &str = "sluice-bench";
const AUDIENCE: &str = "sluice";
pub(crate) const ORIGIN: &str = "https://bench.example.com";
const SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef";
/// How long a peer may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where cargo put this test binary's workspace outputs:
/// `<target>/debug/deps/all-<hash>` -> `<target>`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// The certificate, key and HMAC secret every server of a test shares.
pub(crate) struct Files {
    dir: TempDir,
    ca_pem: Vec<u8>,
}

impl Files {
    pub(crate) fn new() -> Self {
        let dir = TempDir::new();
        let (cert, _) = sluice::dev_files::write_cert(&dir.0, false).expect("cert");
        std::fs::write(dir.0.join("secret.key"), SECRET).expect("secret");
        let ca_pem = std::fs::read(cert).expect("read cert");
        Self { dir, ca_pem }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }
}

/// A peer process, killed on drop.
pub(crate) struct Peer {
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl Peer {
    /// Start `cmd` and wait for its `listening on ADDR` line.
    fn start(mut cmd: Command, what: &str) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e} (run peers/build)"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after the first line so the child never blocks.
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut peer = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_else(|_| {
            panic!("{what} did not print `listening on ADDR` (did peers/build run?)")
        });
        peer.addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{what} printed {line:?}"));
        peer
    }

    fn baseline(files: &Files) -> Self {
        let bin = target_dir().join("release").join("echo-baseline");
        assert!(
            bin.exists(),
            "{} is missing: run peers/build (tests/run does)",
            bin.display()
        );
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0", "--cert"])
            .arg(files.path("cert.pem"))
            .arg("--key")
            .arg(files.path("key.pem"));
        Self::start(cmd, "echo-baseline")
    }

    pub(crate) fn node(files: &Files) -> Self {
        let dir = repo_root().join("peers/node");
        assert!(
            dir.join("node_modules/ws").exists(),
            "peers/node/node_modules is missing: run peers/build (tests/run does)"
        );
        let mut cmd = Command::new("node");
        cmd.current_dir(&dir)
            .args(["server.js", "--listen", "127.0.0.1:0", "--cert"])
            .arg(files.path("cert.pem"))
            .arg("--key")
            .arg(files.path("key.pem"))
            .arg("--secret-file")
            .arg(files.path("secret.key"));
        Self::start(cmd, "the Node peer")
    }
}

impl Peer {
    /// The Centrifuge peer (`peers/centrifuge`, built by peers/build).
    pub(crate) fn centrifuge(files: &Files) -> Self {
        let bin = target_dir().join("release").join("centrifuge-peer");
        assert!(
            bin.exists(),
            "{} is missing: run peers/build (tests/run does)",
            bin.display()
        );
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0", "--cert"])
            .arg(files.path("cert.pem"))
            .arg("--key")
            .arg(files.path("key.pem"))
            .arg("--secret-file")
            .arg(files.path("secret.key"))
            .arg("--schemas")
            .arg(repo_root().join("peers/schemas"));
        Self::start(cmd, "the Centrifuge peer")
    }

    /// The peer's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sluice with `peers/sluice-bench.toml`, on port 0, with the test's files
/// and the handlers built from source.
struct BenchSluice {
    addr: SocketAddr,
    task: JoinHandle<()>,
    _state: Arc<ServerState>,
}

impl BenchSluice {
    async fn start(files: &Files) -> Self {
        let mut config = Config::load(&repo_root().join("peers/sluice-bench.toml"))
            .expect("peers/sluice-bench.toml parses");
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        config.server.admin_listen = None;
        // Not the default 127.0.0.1:9443: tests run side by side.
        config.management.listen = "127.0.0.1:0".parse().expect("addr");
        config.server.tls_cert = files.path("cert.pem");
        config.server.tls_key = files.path("key.pem");
        let tenant = config.tenants.get_mut(TENANT).expect("tenant bench");
        assert_eq!(tenant.auth.issuer, ISSUER);
        assert_eq!(tenant.auth.audience, AUDIENCE);
        assert_eq!(tenant.origins, [ORIGIN]);
        tenant.auth.keys[0].secret_file = Some(files.path("secret.key"));
        for (name, h) in &mut tenant.handlers {
            h.component = PathBuf::from(match name.as_str() {
                "echo" => handlers::ECHO,
                "chat" => handlers::CHAT,
                other => panic!("unexpected handler {other}"),
            });
        }
        let node = match Node::build(config).await {
            Ok(n) => n,
            Err(e) => panic!("the bench config builds: {e}"),
        };
        let state = node.state.clone();
        let server = node
            .bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = server.local_addr();
        let task = tokio::spawn(server.run(std::future::pending()));
        Self {
            addr,
            task,
            _state: state,
        }
    }
}

impl Drop for BenchSluice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) fn token_with(sub: &str, scope: &str, change: impl FnOnce(&mut Value)) -> String {
    let mut claims = json!({
        "sub": sub, "iss": ISSUER, "aud": AUDIENCE, "scope": scope, "exp": now() + 3600,
    });
    change(&mut claims);
    sign_hs(SECRET, &claims, Algorithm::HS256, None)
}

pub(crate) fn token(sub: &str, scope: &str) -> String {
    token_with(sub, scope, |_| {})
}

fn options(files: &Files, token: Option<String>) -> ClientOptions {
    ClientOptions {
        ca_pem: files.ca_pem.clone(),
        token,
        via: TokenVia::Header,
        origin: None,
        ..Default::default()
    }
}

/// Connect to `/ws/bench` and read the welcome.
async fn client(addr: SocketAddr, files: &Files, token: &str) -> (Client, Value) {
    let socket = connect(
        &format!("wss://{addr}/ws/{TENANT}"),
        &options(files, Some(token.to_owned())),
    )
    .await
    .expect("connects");
    let mut client = Client { socket };
    let welcome = client.recv().await;
    (client, welcome)
}

#[tokio::test]
async fn baseline_echoes_every_frame_byte_for_byte() {
    let files = Files::new();
    let peer = Peer::baseline(&files);
    // No token, no Origin, any path: the baseline checks nothing.
    let mut socket = connect(
        &format!("wss://{}/anything", peer.addr),
        &options(&files, None),
    )
    .await
    .expect("connects without a token");
    let frames = [
        r#"{"type":"echo","id":"1","data":{"hello":"world"}}"#.to_owned(),
        r#"{ "spaced" :  [1, 2.50, 1e3] , "kept":"as is" }"#.to_owned(),
        "not JSON at all".to_owned(),
        "h\u{e9}llo \u{2713} \u{1f600}".to_owned(),
        String::new(),
        "x".repeat(60 << 10),
    ];
    for frame in &frames {
        socket
            .send(Message::text(frame.clone()))
            .await
            .expect("send");
        let back = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an answer in time")
            .expect("open")
            .expect("a frame");
        match back {
            Message::Text(t) => assert_eq!(t.as_str(), frame.as_str()),
            other => panic!("expected text, got {other:?}"),
        }
    }
    // Several in flight come back in order.
    for i in 0..16 {
        socket
            .feed(Message::text(format!("{{\"n\":{i}}}")))
            .await
            .expect("feed");
    }
    socket.flush().await.expect("flush");
    for i in 0..16 {
        let back = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("a frame");
        assert_eq!(back, Message::text(format!("{{\"n\":{i}}}")));
    }
    socket.close(None).await.expect("close");
}

/// The HTTP status of an upgrade attempt (101 when it succeeds).
async fn status(addr: SocketAddr, path: &str, opts: ClientOptions) -> u16 {
    match connect(&format!("wss://{addr}{path}"), &opts).await {
        Ok(_) => 101,
        Err(ConnectError::Refused(code)) => code,
        Err(e) => panic!("{path}: {e}"),
    }
}

#[tokio::test]
async fn node_peer_refuses_at_the_handshake_what_sluice_refuses() {
    let files = Files::new();
    let node = Peer::node(&files);
    let sluice = BenchSluice::start(&files).await;
    let path = format!("/ws/{TENANT}");
    let good = token("alice", "chat:write");
    let with = |token: Option<String>, via: TokenVia, origin: Option<&str>| ClientOptions {
        via,
        origin: origin.map(str::to_owned),
        ..options(&files, token)
    };
    let cases: Vec<(&str, &str, ClientOptions, u16)> = vec![
        (
            "valid, header",
            &path,
            with(Some(good.clone()), TokenVia::Header, None),
            101,
        ),
        (
            "valid, subprotocol",
            &path,
            with(Some(good.clone()), TokenVia::Subprotocol, None),
            101,
        ),
        (
            "valid, allowed origin",
            &path,
            with(Some(good.clone()), TokenVia::Header, Some(ORIGIN)),
            101,
        ),
        (
            "foreign origin",
            &path,
            with(
                Some(good.clone()),
                TokenVia::Header,
                Some("https://evil.example.com"),
            ),
            403,
        ),
        (
            "null origin",
            &path,
            with(Some(good.clone()), TokenVia::Header, Some("null")),
            403,
        ),
        (
            "look-alike origin",
            &path,
            with(
                Some(good.clone()),
                TokenVia::Header,
                Some("https://bench.example.com.evil.com"),
            ),
            403,
        ),
        ("no token", &path, with(None, TokenVia::Header, None), 401),
        (
            "query token (not enabled)",
            &path,
            with(Some(good.clone()), TokenVia::Query, None),
            401,
        ),
        (
            "wrong secret",
            &path,
            with(
                Some(sign_hs(
                    "another-secret-0123456789abcdef0123456789",
                    &json!({"sub": "a", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 60}),
                    Algorithm::HS256,
                    None,
                )),
                TokenVia::Header,
                None,
            ),
            401,
        ),
        (
            "expired",
            &path,
            with(
                Some(token_with("a", "", |c| c["exp"] = json!(now() - 3600))),
                TokenVia::Header,
                None,
            ),
            401,
        ),
        (
            "no exp",
            &path,
            with(
                Some(token_with("a", "", |c| {
                    c.as_object_mut().expect("object").remove("exp");
                })),
                TokenVia::Header,
                None,
            ),
            401,
        ),
        (
            "not yet valid",
            &path,
            with(
                Some(token_with("a", "", |c| c["nbf"] = json!(now() + 3600))),
                TokenVia::Header,
                None,
            ),
            401,
        ),
        (
            "wrong issuer",
            &path,
            with(
                Some(token_with("a", "", |c| c["iss"] = json!("someone-else"))),
                TokenVia::Header,
                None,
            ),
            401,
        ),
        (
            "wrong audience",
            &path,
            with(
                Some(token_with("a", "", |c| c["aud"] = json!("other"))),
                TokenVia::Header,
                None,
            ),
            401,
        ),
        (
            "no subject",
            &path,
            with(
                Some(token_with("a", "", |c| {
                    c.as_object_mut().expect("object").remove("sub");
                })),
                TokenVia::Header,
                None,
            ),
            401,
        ),
        (
            "another HMAC algorithm",
            &path,
            with(
                Some(sign_hs(
                    SECRET,
                    &json!({"sub": "a", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 60}),
                    Algorithm::HS384,
                    None,
                )),
                TokenVia::Header,
                None,
            ),
            401,
        ),
        (
            "a kid the tenant has no key for",
            &path,
            with(
                Some(sign_hs(
                    SECRET,
                    &json!({"sub": "a", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 60}),
                    Algorithm::HS256,
                    Some("k9"),
                )),
                TokenVia::Header,
                None,
            ),
            401,
        ),
        (
            "tampered",
            &path,
            with(Some(format!("{good}x")), TokenVia::Header, None),
            401,
        ),
        (
            "unknown tenant",
            "/ws/other",
            with(Some(good.clone()), TokenVia::Header, None),
            404,
        ),
        (
            "other path",
            "/",
            with(Some(good.clone()), TokenVia::Header, None),
            404,
        ),
    ];
    for (what, path, opts, expected) in cases {
        let from_sluice = status(sluice.addr, path, opts.clone()).await;
        let from_node = status(node.addr, path, opts).await;
        assert_eq!(from_sluice, expected, "Sluice, {what}");
        assert_eq!(from_node, expected, "Node peer, {what}");
    }
}

/// One step of a transcript.
enum Step {
    /// Client `n` sends this text and reads every frame up to the answer
    /// (`ack`, `error` or `pong`), events included.
    Send(usize, String),
    /// Client `n` reads one frame (an event sent by another client's step).
    Recv(usize),
}

/// Frames compared between servers (as text: serde_json keeps the key
/// order here), `at` timestamps and connection ids normalised; error messages dropped where Sluice quotes the parser
/// (`bad_json`).
fn normalise(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, x) in map.iter_mut() {
                    if (k == "at" || k == "connection_id") && x.is_u64() {
                        *x = json!(0);
                    } else {
                        walk(x);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    if v["code"] == "bad_json" {
        v["message"] = json!("<parser's words>");
    }
    v
}

/// Run `steps` with clients holding `tokens` against the server at `addr`;
/// every frame each client received, in order.
async fn transcript(
    addr: SocketAddr,
    files: &Files,
    tokens: &[String],
    steps: &[Step],
) -> Vec<Vec<Value>> {
    let mut clients = Vec::new();
    let mut seen = Vec::new();
    for t in tokens {
        let (c, welcome) = client(addr, files, t).await;
        clients.push(c);
        seen.push(vec![normalise(welcome)]);
    }
    for step in steps {
        match step {
            Step::Send(n, text) => {
                clients[*n].send_text(text).await;
                read_to_answer(&mut clients[*n], &mut seen[*n]).await;
            }
            Step::Recv(n) => {
                let frame = clients[*n].recv().await;
                seen[*n].push(normalise(frame));
            }
        }
    }
    // Nothing else is pending for anyone: a ping is answered by a pong next.
    for (c, s) in clients.iter_mut().zip(&mut seen) {
        c.send_text(r#"{"type":"ping","id":"end"}"#).await;
        read_to_answer(c, s).await;
    }
    seen
}

async fn read_to_answer(client: &mut Client, seen: &mut Vec<Value>) {
    loop {
        let frame = normalise(client.recv().await);
        let done = matches!(frame["type"].as_str(), Some("ack" | "error" | "pong"));
        seen.push(frame);
        if done {
            return;
        }
    }
}

/// Run the same transcript against Sluice (bench config) and the Node peer
/// and compare every frame.
async fn same_frames(tokens: &[String], steps: &[Step]) -> Vec<Vec<Value>> {
    let files = Files::new();
    let node = Peer::node(&files);
    let sluice = BenchSluice::start(&files).await;
    let mut from_sluice = transcript(sluice.addr, &files, tokens, steps).await;
    let from_node = transcript(node.addr, &files, tokens, steps).await;
    // Sluice's welcome says it takes idempotency keys; the Node peer takes
    // none (it is the peer for the frames and the work, not for keys).
    for frames in &mut from_sluice {
        for f in frames.iter_mut().filter(|f| f["type"] == "welcome") {
            if let Some(data) = f["data"].as_object_mut() {
                assert!(data.remove("idempotency").is_some(), "{f}");
            }
        }
    }
    for (n, (s, p)) in from_sluice.iter().zip(&from_node).enumerate() {
        for (i, (a, b)) in s.iter().zip(p).enumerate() {
            // As text: the same keys in the same order, the same bytes.
            assert_eq!(
                a.to_string(),
                b.to_string(),
                "client {n}, frame {i}: Sluice vs the Node peer"
            );
        }
        assert_eq!(s.len(), p.len(), "client {n}: frame counts differ");
    }
    from_sluice
}

#[tokio::test]
async fn node_peer_answers_one_client_with_sluices_frames() {
    use Step::Send;
    let too_many_props = {
        let props: Vec<String> = (0..65).map(|i| format!("\"k{i}\":{i}")).collect();
        format!(
            r#"{{"type":"echo","id":"props","data":{{{}}}}}"#,
            props.join(",")
        )
    };
    let steps = [
        Send(0, r#"{"type":"echo","id":"1","data":{"hello":"world"}}"#.into()),
        Send(
            0,
            r#"{"type":"echo","id":"2","data":{"nested":{"list":[1,"two",true,null,{"x":-7}]},"text":"h\u00e9llo \u2713","n":42}}"#.into(),
        ),
        Send(0, r#"{"data":{"a":1},"id":"3","type":"echo"}"#.into()),
        Send(0, r#"{"type":"echo","data":{"no":"id"}}"#.into()),
        Send(0, r#"{"type":"echo","id":"4"}"#.into()),
        Send(0, r#"{"type":"echo","id":"5","data":5}"#.into()),
        Send(0, r#"{"type":"echo","id":"6","data":{},"channel":"room:1"}"#.into()),
        Send(0, too_many_props),
        Send(0, r#"{"type":"nope","id":"7"}"#.into()),
        Send(0, r#"{"type":"ack","id":"8"}"#.into()),
        Send(0, r#"{"type":"sluice.internal","id":"8b"}"#.into()),
        Send(0, r#"{"type":"echo","id":"9","extra":1}"#.into()),
        Send(0, r#"{"id":"10"}"#.into()),
        Send(0, r#"{"type":5,"id":"11"}"#.into()),
        Send(0, r#""just a string""#.into()),
        Send(0, r#"{"type":"echo","id":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#.into()),
        Send(0, "{not json".into()),
        Send(0, r#"{"type":"ping","id":"p1"}"#.into()),
        Send(0, r#"{"type":"chat.join","id":"12","channel":"room:1"}"#.into()),
        Send(0, r#"{"type":"chat.send","id":"13","channel":"room:1","data":{"text":"hi"}}"#.into()),
        Send(0, r#"{"type":"chat.send","id":"14","channel":"room:1","data":{"text":""}}"#.into()),
        Send(0, r#"{"type":"chat.send","id":"15","channel":"room:1","data":{"text":"   "}}"#.into()),
        Send(0, r#"{"type":"chat.send","id":"16","channel":"room:1","data":{"text":"a","more":1}}"#.into()),
        Send(0, r#"{"type":"chat.send","id":"17","channel":"room:1","data":{}}"#.into()),
        Send(0, r#"{"type":"chat.send","id":"18","data":{"text":"x"}}"#.into()),
        Send(0, r#"{"type":"chat.send","id":"19","channel":"bad channel","data":{"text":"x"}}"#.into()),
        Send(0, r#"{"type":"chat.send","id":"20","channel":"user:alice","data":{"text":"x"}}"#.into()),
        Send(0, r#"{"type":"chat.join","id":"21","channel":"user:bob"}"#.into()),
        Send(0, r#"{"type":"chat.join","id":"22","channel":"user:alice"}"#.into()),
        Send(0, r#"{"type":"chat.join","id":"23","channel":"lobby"}"#.into()),
        Send(0, r#"{"type":"subscribe","id":"24","channel":"room:2"}"#.into()),
        Send(0, r#"{"type":"subscribe","id":"25","channel":"team:red"}"#.into()),
        Send(0, r#"{"type":"subscribe","id":"26"}"#.into()),
        Send(0, r#"{"type":"unsubscribe","id":"27","channel":"room:2"}"#.into()),
        Send(0, r#"{"type":"chat.leave","id":"28","channel":"room:1"}"#.into()),
        Send(0, r#"{"type":"chat.join","id":"29","channel":"room:1"}"#.into()),
        Send(0, r#"{"type":"refresh","id":"30","data":{"token":"not.a.token"}}"#.into()),
        Send(0, r#"{"type":"refresh","id":"31"}"#.into()),
    ];
    let seen = same_frames(&[token("alice", "chat:write")], &steps).await;
    // Spot checks that the transcript exercised what it meant to.
    let frames = &seen[0];
    let answer = |id: &str| {
        frames
            .iter()
            .find(|f| f["id"] == id && f["type"] != "event")
            .unwrap_or_else(|| panic!("no answer to {id}"))
            .clone()
    };
    assert_eq!(
        answer("1"),
        json!({"type": "ack", "id": "1", "data": {"hello": "world"}})
    );
    assert_eq!(answer("5")["code"], "schema_invalid");
    assert_eq!(
        answer("props")["message"],
        "data fails `maxProperties` at schema #/maxProperties"
    );
    assert_eq!(answer("14")["code"], "schema_invalid");
    assert_eq!(answer("15")["code"], "empty_text");
    assert_eq!(answer("29")["data"]["history"][0]["text"], "hi");
    assert_eq!(answer("30")["code"], "invalid_token");
}

#[tokio::test]
async fn node_peer_chats_between_clients_like_sluices_chat_handler() {
    use Step::{Recv, Send};
    // alice may write; bob may only read; carol joins late and gets the last
    // 20 lines of history.
    let tokens = [
        token("alice", "chat:write"),
        token("bob", ""),
        token("carol", "chat:write other"),
    ];
    let mut steps = vec![
        Send(
            0,
            r#"{"type":"chat.join","id":"a1","channel":"room:7"}"#.into(),
        ),
        Send(
            1,
            r#"{"type":"chat.join","id":"b1","channel":"room:7"}"#.into(),
        ),
        // bob's join is not published (he may not publish to room:7), so
        // alice sees nothing; his send is refused.
        Send(
            1,
            r#"{"type":"chat.send","id":"b2","channel":"room:7","data":{"text":"hello?"}}"#.into(),
        ),
        Send(
            0,
            r#"{"type":"chat.send","id":"a2","channel":"room:7","data":{"text":"hi bob"}}"#.into(),
        ),
        Recv(1),
    ];
    for i in 0..21 {
        steps.push(Send(
            0,
            format!(
                r#"{{"type":"chat.send","id":"m{i}","channel":"room:7","data":{{"text":"line {i}"}}}}"#
            ),
        ));
        steps.push(Recv(1));
    }
    steps.extend([
        Send(
            2,
            r#"{"type":"chat.join","id":"c1","channel":"room:7"}"#.into(),
        ),
        Recv(0),
        Recv(1),
        Send(
            2,
            r#"{"type":"chat.leave","id":"c2","channel":"room:7"}"#.into(),
        ),
        Recv(0),
        Recv(1),
        Send(
            1,
            r#"{"type":"chat.leave","id":"b3","channel":"room:7"}"#.into(),
        ),
        Send(
            0,
            r#"{"type":"chat.send","id":"a3","channel":"room:7","data":{"text":"bye"}}"#.into(),
        ),
    ]);
    let seen = same_frames(&tokens, &steps).await;
    let carol = &seen[2];
    let history = carol
        .iter()
        .find(|f| f["id"] == "c1")
        .expect("carol's join answered")["data"]["history"]
        .as_array()
        .expect("history")
        .clone();
    assert_eq!(history.len(), 20);
    assert_eq!(history[0]["seq"], 3);
    assert_eq!(history[19]["text"], "line 20");
    assert_eq!(
        seen[1].iter().find(|f| f["id"] == "b2").expect("b2")["code"],
        "forbidden"
    );
}
