//! The session over in-memory frames: no socket, no TLS, no handler. A
//! tenant with channel rules only exercises the reserved requests, the
//! rejection vocabulary, the broker and the connection's limits.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Sink, Stream};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::run;
use crate::backends::keys::{ChannelKey, Member, SubjectKey};
use crate::backends::{Backends, BrokerError};
use crate::handshake::Admitted;
use crate::slot::NoPushedHandlers;
use crate::state::ServerState;

/// One end of an in-memory WebSocket: what the session reads and writes.
struct MemSocket {
    incoming: mpsc::UnboundedReceiver<Result<Message, WsError>>,
    outgoing: mpsc::UnboundedSender<Message>,
}

impl Stream for MemSocket {
    type Item = Result<Message, WsError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx)
    }
}

impl Sink<Message> for MemSocket {
    type Error = WsError;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
        self.outgoing
            .send(item)
            .map_err(|_| WsError::ConnectionClosed)
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
}

/// The client's end.
struct Client {
    tx: mpsc::UnboundedSender<Result<Message, WsError>>,
    rx: mpsc::UnboundedReceiver<Message>,
}

impl Client {
    fn send(&self, v: Value) {
        self.tx
            .send(Ok(Message::Text(v.to_string().into())))
            .unwrap();
    }

    async fn next(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("a frame within 5 s")
            .expect("the session is still writing")
    }

    async fn json(&mut self) -> Value {
        loop {
            match self.next().await {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Ping(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }
}

async fn state(dir: &std::path::Path, extra: &str) -> Arc<ServerState> {
    state_full(dir, extra, "", "").await
}

/// The unit-test server with `extra` under `[server]`, `auth` under the
/// tenant's `[auth]` and `tail` (more tenant tables) at the end.
async fn state_full(
    dir: &std::path::Path,
    extra: &str,
    auth: &str,
    tail: &str,
) -> Arc<ServerState> {
    state_on(dir, extra, auth, tail, Backends::memory()).await
}

/// [`state_full`] on `backends`.
async fn state_on(
    dir: &std::path::Path,
    extra: &str,
    auth: &str,
    tail: &str,
    backends: Backends,
) -> Arc<ServerState> {
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key) = sluice_tls::self_signed(&["localhost"]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    std::fs::write(dir.join("secret"), "0123456789abcdef0123456789abcdef").unwrap();
    let toml = format!(
        r#"
[server]
tls_cert = "cert.pem"
tls_key = "key.pem"
admin_listen = "127.0.0.1:0"
{extra}

[tenants.t.auth]
issuer = "iss"
audience = "aud"
keys = [{{ algorithm = "HS256", secret_file = "secret" }}]
{auth}

[[tenants.t.channels]]
pattern = "room:{{id}}"
subscribe = true
publish = true

{tail}
"#
    );
    let config = sluice_config::Config::parse(&toml, dir).unwrap();
    let sandbox = crate::state::sandbox(&config, &backends).unwrap();
    ServerState::build(config, sandbox, backends, Arc::new(NoPushedHandlers))
        .await
        .unwrap()
}

/// A connection of `subject` admitted with a token valid for `ttl_secs`.
fn admitted(state: &Arc<ServerState>, subject: &str, ttl_secs: u64) -> Admitted {
    let tenant = state.tenant("t").unwrap();
    let token = tenant
        .keys
        .mint(subject, &[], ttl_secs, serde_json::Map::new())
        .unwrap();
    Admitted {
        principal: tenant.keys.verify(&token).unwrap(),
        token: token.into(),
        origin: None,
        slots: (
            tenant
                .subject_connections
                .acquire(subject.to_owned(), 16)
                .unwrap(),
            tenant.connections.acquire((), 16).unwrap(),
        ),
        tenant,
    }
}

fn connect(state: &Arc<ServerState>, subject: &str) -> Client {
    let (tx, incoming) = mpsc::unbounded_channel();
    let (outgoing, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(
        state.clone(),
        MemSocket { incoming, outgoing },
        admitted(state, subject, 3600),
    ));
    Client { tx, rx }
}

fn dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("sluice-session-{name}-{}", std::process::id()))
}

#[tokio::test]
async fn reserved_requests_and_refusals_over_memory_frames() {
    let state = state(&dir("reserved"), "").await;
    let mut c = connect(&state, "alice");
    assert_eq!(c.json().await["type"], "welcome");
    c.send(json!({"type":"ping","id":"p1"}));
    assert_eq!(c.json().await, json!({"type":"pong","id":"p1"}));
    c.send(json!({"type":"subscribe","id":"s1","channel":"lobby"}));
    let refused = c.json().await;
    assert_eq!(refused["code"], "forbidden");
    assert_eq!(refused["id"], "s1");
    c.send(json!({"type":"nope","id":"n"}));
    assert_eq!(c.json().await["code"], "unknown_type");
    c.tx.send(Ok(Message::Binary(vec![1, 2].into()))).unwrap();
    assert_eq!(c.json().await["code"], "binary_not_supported");
    // Still served after every refusal.
    c.send(json!({"type":"subscribe","id":"s2","channel":"room:1"}));
    assert_eq!(c.json().await, json!({"type":"ack","id":"s2","data":null}));
    assert_eq!(state.subscribers("t", "room:1"), 1);
    assert_eq!(state.subscribers("other", "room:1"), 0);
}

#[tokio::test]
async fn a_read_error_closes_with_its_code_and_the_subscription_goes() {
    let state = state(&dir("readerr"), "").await;
    let mut c = connect(&state, "bob");
    assert_eq!(c.json().await["type"], "welcome");
    c.send(json!({"type":"subscribe","id":"s","channel":"room:2"}));
    assert_eq!(c.json().await["type"], "ack");
    c.tx.send(Err(WsError::Utf8("bad".into()))).unwrap();
    match c.next().await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1007);
            assert_eq!(frame.reason.as_str(), "invalid UTF-8");
        }
        other => panic!("{other:?}"),
    }
    drop(c.tx);
    for _ in 0..100 {
        if state.subscribers("t", "room:2") == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the subscription outlived the connection");
}

#[tokio::test]
async fn a_blocked_write_does_not_outlive_the_idle_timeout() {
    // The client reads nothing: the writer is fed but the socket never
    // accepts (`poll_ready` pending). The idle timeout still closes it.
    let state = state(
        &dir("stuck"),
        "idle_timeout_ms = 300\nping_interval_ms = 100",
    )
    .await;
    let tenant = state.tenant("t").unwrap();
    let admitted = admitted(&state, "carol", 3600);
    let (_tx, incoming) = mpsc::unbounded_channel();
    let (outgoing, _rx) = mpsc::unbounded_channel();
    let session = tokio::spawn(run(
        state.clone(),
        Stalled(MemSocket { incoming, outgoing }),
        admitted,
    ));
    // Idle timeout + close grace + writer grace, with margin.
    tokio::time::timeout(Duration::from_secs(6), session)
        .await
        .expect("the session ends although its writes never complete")
        .unwrap();
    assert_eq!(tenant.connections.count(&()), 0, "its slot is released");
}

/// The unit-test config with other channel rules / keys, for reloads.
fn reconfigured(
    dir: &std::path::Path,
    secret: &str,
    rules: &str,
    tenants: &str,
) -> sluice_config::Config {
    std::fs::write(dir.join("secret2"), secret).unwrap();
    let toml = format!(
        r#"
[server]
tls_cert = "cert.pem"
tls_key = "key.pem"
admin_listen = "127.0.0.1:0"

[tenants.t.auth]
issuer = "iss"
audience = "aud"
keys = [{{ algorithm = "HS256", secret_file = "secret2" }}]

{rules}
{tenants}
"#
    );
    sluice_config::Config::parse(&toml, dir).unwrap()
}

async fn closed_with(c: &mut Client) -> (u16, String) {
    loop {
        match c.next().await {
            Message::Close(Some(frame)) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Message::Text(_) | Message::Ping(_) => continue,
            other => panic!("{other:?}"),
        }
    }
}

const SAME_SECRET: &str = "0123456789abcdef0123456789abcdef";
const ROOMS: &str =
    "[[tenants.t.channels]]\npattern = \"room:{id}\"\nsubscribe = true\npublish = true";

#[tokio::test]
async fn a_reload_that_revokes_the_key_closes_live_sessions_with_1008() {
    let d = dir("revoke");
    let state = state(&d, "").await;
    let mut c = connect(&state, "alice");
    assert_eq!(c.json().await["type"], "welcome");
    c.send(json!({"type":"subscribe","id":"s","channel":"room:7"}));
    assert_eq!(c.json().await["type"], "ack");
    // Same key material under another file: nothing happens.
    state
        .reload(reconfigured(&d, SAME_SECRET, ROOMS, ""))
        .await
        .unwrap();
    c.send(json!({"type":"ping","id":"p"}));
    assert_eq!(c.json().await["type"], "pong");
    // The secret rotated: the receive-only session is closed at once.
    state
        .reload(reconfigured(
            &d,
            "another-secret-another-secret-xx",
            ROOMS,
            "",
        ))
        .await
        .unwrap();
    assert_eq!(closed_with(&mut c).await, (1008, "key revoked".into()));
}

#[tokio::test]
async fn a_reload_drops_subscriptions_the_new_rules_refuse_and_says_so() {
    let d = dir("rules");
    let state = state(&d, "").await;
    let mut c = connect(&state, "bob");
    assert_eq!(c.json().await["type"], "welcome");
    c.send(json!({"type":"subscribe","id":"s","channel":"room:7"}));
    assert_eq!(c.json().await["type"], "ack");
    let lobby_only = "[[tenants.t.channels]]\npattern = \"lobby\"\nsubscribe = true";
    state
        .reload(reconfigured(&d, SAME_SECRET, lobby_only, ""))
        .await
        .unwrap();
    let told = c.json().await;
    assert_eq!(told["type"], "unsubscribed", "{told}");
    assert_eq!(told["channel"], "room:7");
    assert_eq!(state.subscribers("t", "room:7"), 0);
    // Still served, under the new rules.
    c.send(json!({"type":"subscribe","id":"l","channel":"lobby"}));
    assert_eq!(c.json().await["type"], "ack");
}

#[tokio::test]
async fn a_removed_tenant_closes_with_1001_and_a_reused_id_adopts_nobody() {
    let d = dir("removed");
    let state = state(&d, "").await;
    let original = state.tenant("t").unwrap().incarnation;
    let mut c = connect(&state, "carol");
    assert_eq!(c.json().await["type"], "welcome");
    // Tenant `t` replaced by `u` only.
    let only_u = "[tenants.u.auth]\nissuer = \"iss\"\naudience = \"aud\"\nkeys = [{ algorithm = \"HS256\", secret_file = \"secret2\" }]";
    let toml = format!(
        "[server]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\nadmin_listen = \"127.0.0.1:0\"\n\n{only_u}\n"
    );
    std::fs::write(d.join("secret2"), SAME_SECRET).unwrap();
    state
        .reload(sluice_config::Config::parse(&toml, &d).unwrap())
        .await
        .unwrap();
    assert_eq!(closed_with(&mut c).await, (1001, "tenant removed".into()));
    let old = state.tenant("t");
    assert!(old.is_none());
    // `t` comes back: a new incarnation, which no old session adopts.
    state
        .reload(reconfigured(&d, SAME_SECRET, ROOMS, ""))
        .await
        .unwrap();
    let back = state.tenant("t").unwrap();
    assert_ne!(back.incarnation, original);
}

/// A socket whose writes never complete (a client that stopped reading).
struct Stalled(MemSocket);

impl Stream for Stalled {
    type Item = Result<Message, WsError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0).poll_next(cx)
    }
}

impl Sink<Message> for Stalled {
    type Error = WsError;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Pending
    }
    fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), WsError> {
        Ok(())
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Pending
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_blocked_write_does_not_outlive_the_token() {
    // Idle timeout far away, no leeway, a 2 s token: the stalled reader's
    // connection ends at its token's expiry, not whenever it reads again.
    let state = state_full(
        &dir("expiry"),
        "idle_timeout_ms = 60000\nping_interval_ms = 20000",
        "leeway_secs = 0",
        "",
    )
    .await;
    let tenant = state.tenant("t").unwrap();
    let admitted = admitted(&state, "dave", 2);
    let (_tx, incoming) = mpsc::unbounded_channel();
    let (outgoing, _rx) = mpsc::unbounded_channel();
    let started = std::time::Instant::now();
    let session = tokio::spawn(run(
        state.clone(),
        Stalled(MemSocket { incoming, outgoing }),
        admitted,
    ));
    tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the session ends at its token's expiry although its writes never complete")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before the expiry"
    );
    assert_eq!(tenant.connections.count(&()), 0, "its slot is released");
}

const TIGHT: &str =
    "[tenants.t.limits]\nmessages_per_sec = 1\nmessage_burst = 1\nabuse_close_after = 5";

#[tokio::test]
async fn limited_frames_are_refused_before_parsing_and_answer_a_peeked_id() {
    let state = state_full(&dir("peek"), "", "", TIGHT).await;
    let mut c = connect(&state, "erin");
    assert_eq!(c.json().await["type"], "welcome");
    c.send(json!({"type":"ping","id":"a"}));
    assert_eq!(c.json().await, json!({"type":"pong","id":"a"}));
    c.send(json!({"type":"ping","id":"b"}));
    let limited = c.json().await;
    assert_eq!(limited["code"], "rate_limited", "{limited}");
    assert_eq!(limited["id"], "b");
    // Not JSON at all: refused by the rate limit, never parsed (no bad_json).
    c.tx.send(Ok(Message::Text("{{{{ not json".into())))
        .unwrap();
    let limited = c.json().await;
    assert_eq!(limited["code"], "rate_limited", "{limited}");
    assert_eq!(limited["id"], Value::Null);
}

#[tokio::test]
async fn a_flood_of_binary_and_control_frames_is_counted_and_closed() {
    let state = state_full(&dir("binflood"), "", "", TIGHT).await;
    let mut c = connect(&state, "frank");
    assert_eq!(c.json().await["type"], "welcome");
    for _ in 0..3 {
        c.tx.send(Ok(Message::Binary(vec![0; 8].into()))).unwrap();
    }
    for _ in 0..10 {
        c.tx.send(Ok(Message::Ping(vec![1].into()))).unwrap();
    }
    assert_eq!(closed_with(&mut c).await, (1008, "rate limit abuse".into()));
    // Another client of the tenant is served.
    let mut honest = connect(&state, "grace");
    assert_eq!(honest.json().await["type"], "welcome");
    honest.send(json!({"type":"ping","id":"p"}));
    assert_eq!(honest.json().await["type"], "pong");
}

/// A session as [`run`] makes it, without its loop: the test applies
/// effects to it and reads what it queued.
fn session_of(
    state: &Arc<ServerState>,
    admitted: Admitted,
) -> (super::Session, crate::outbox::OutboxReader) {
    let Admitted {
        tenant,
        principal,
        token,
        ..
    } = admitted;
    let id = state.next_connection_id();
    let (outbox, reader) = crate::outbox::Outbox::new(1 << 20);
    let session = super::Session {
        conn: sluice_sandbox::Connection {
            id,
            principal: sluice_sandbox::Principal {
                tenant: tenant.id.clone(),
                subject: principal.subject.clone(),
                claims: tenant.exposed_claims(&principal.claims),
            },
        },
        limiter: crate::ratelimit::direct(crate::ratelimit::quota(100, 100)),
        state: state.clone(),
        tenant,
        expires: tokio::time::Instant::now() + Duration::from_secs(3600),
        principal,
        token,
        origin: None,
        id,
        outbox,
        subscriptions: std::collections::HashMap::new(),
        limited_in_a_row: 0,
        started: std::time::Instant::now(),
    };
    (session, reader)
}

/// A broker that fails every publish and send to what is named `broken`.
#[derive(Default)]
struct BrokenBroker(crate::backends::broker::LocalBroker);

impl crate::backends::Broker for BrokenBroker {
    fn subscribe(&self, key: &ChannelKey, member: Member) {
        self.0.subscribe(key, member);
    }
    fn unsubscribe(&self, key: &ChannelKey, id: u64) {
        self.0.unsubscribe(key, id);
    }
    fn join_subject(&self, key: &SubjectKey, member: Member) {
        self.0.join_subject(key, member);
    }
    fn leave_subject(&self, key: &SubjectKey, id: u64) {
        self.0.leave_subject(key, id);
    }
    fn publish<'a>(
        &'a self,
        key: &'a ChannelKey,
        frame: Utf8Bytes,
    ) -> sluice_sandbox::BoxFuture<'a, Result<usize, BrokerError>> {
        if key.channel.contains("broken") {
            return Box::pin(async { Err(BrokerError::Unreachable) });
        }
        self.0.publish(key, frame)
    }
    fn send<'a>(
        &'a self,
        key: &'a SubjectKey,
        frame: Utf8Bytes,
    ) -> sluice_sandbox::BoxFuture<'a, Result<usize, BrokerError>> {
        if key.subject.contains("broken") {
            return Box::pin(async { Err(BrokerError::Unreachable) });
        }
        self.0.send(key, frame)
    }
    fn subscribers(&self, key: &ChannelKey) -> usize {
        self.0.subscribers(key)
    }
    fn channel_count(&self) -> usize {
        self.0.channel_count()
    }
}

#[tokio::test]
async fn a_reply_before_a_failed_publish_is_never_acknowledged() {
    use crate::authz::ChannelFeatures;
    use crate::stages::effects::Effect;
    use serde_json::value::RawValue;
    use sluice_sandbox::Export;

    let mut backends = Backends::memory();
    backends.broker = Arc::new(BrokenBroker::default());
    let state = state_on(&dir("ackorder"), "", "", "", backends).await;
    let (mut session, mut frames) = session_of(&state, admitted(&state, "alice", 3600));
    let tenant = state.tenant("t").unwrap();
    let reply = || Effect::Reply(RawValue::from_string("{\"ok\":true}".into()).unwrap());
    let publish = |channel: &str| Effect::Publish {
        key: ChannelKey::new(&tenant.key, channel),
        data: RawValue::from_string("{\"hi\":1}".into()).unwrap(),
        features: ChannelFeatures::default(),
    };
    let send = |subject: &str| Effect::Send {
        key: SubjectKey::new(&tenant.key, subject),
        frame: Utf8Bytes::from_static("{}"),
    };
    let answer = |frames: &mut crate::outbox::OutboxReader| match frames.rx.try_recv() {
        Ok(crate::outbox::Outgoing::Text(t)) => serde_json::from_str::<Value>(t.as_str()).unwrap(),
        other => panic!("expected one answer, got {other:?}"),
    };
    // Whatever the handler's order, a failed publish or send is never acknowledged.
    for (n, effects) in [
        vec![reply(), publish("room:broken")],
        vec![publish("room:broken"), reply()],
        vec![reply(), send("broken")],
        vec![publish("room:broken")],
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("m{n}");
        session
            .apply(effects, Export::Message, Some(&id), None)
            .await;
        let got = answer(&mut frames);
        assert_eq!(got["type"], "error", "{n}: {got}");
        assert_eq!(got["code"], "unavailable", "{n}: {got}");
        assert_eq!(got["id"], id.as_str());
        assert!(frames.rx.try_recv().is_err(), "{n}: no ack follows");
    }
    // An honest call: replied first, published second, acknowledged once
    // the publish succeeded, with the reply.
    session
        .apply(
            vec![reply(), publish("room:1"), send("bob")],
            Export::Message,
            Some("ok"),
            None,
        )
        .await;
    assert_eq!(
        answer(&mut frames),
        json!({"type":"ack","id":"ok","data":{"ok":true}})
    );
}

/// What an idle connection's task holds is mostly this future: the session
/// and the waits of its loop. Its arguments are not kept beside the session
/// built from them, and a write's state is boxed while it runs (2,024 bytes
/// before both, 1,400 after, in the test build).
#[tokio::test]
async fn an_idle_session_s_future_stays_small() {
    let state = state(&dir("size"), "").await;
    let (_tx, incoming) = mpsc::unbounded_channel();
    let (outgoing, _rx) = mpsc::unbounded_channel();
    let socket = Box::new(MemSocket { incoming, outgoing });
    let session = run(state.clone(), socket, admitted(&state, "a", 3600));
    let size = std::mem::size_of_val(&session);
    assert!(size <= 1300, "the session future is {size} bytes");
}

#[tokio::test]
async fn a_connection_keeps_only_the_claims_its_tenant_reads_and_a_reload_reads_them_again() {
    let d = dir("kept-claims");
    let team = "[[tenants.t.channels]]\npattern = \"team:{claim:team}\"\nsubscribe = true";
    let state = state_full(&d, "", "", team).await;
    let tenant = state.tenant("t").unwrap();
    let mut extra = serde_json::Map::new();
    extra.insert("team".into(), json!("red"));
    extra.insert("org".into(), json!("acme"));
    extra.insert("profile".into(), json!({"bio": "x".repeat(200)}));
    let token = tenant.keys.mint("carol", &[], 3600, extra).unwrap();
    let principal = tenant.keys.verify(&token).unwrap();
    // The rules read `team`; nothing reads `org` or `profile`.
    assert_eq!(principal.claims.get("team"), Some(&json!("red")));
    assert_eq!(principal.claims.get("org"), None);
    assert_eq!(principal.claims.get("profile"), None);

    let (tx, incoming) = mpsc::unbounded_channel();
    let (outgoing, rx) = mpsc::unbounded_channel();
    let admitted = Admitted {
        principal,
        token: token.into(),
        origin: None,
        slots: (
            tenant
                .subject_connections
                .acquire("carol".to_owned(), 16)
                .unwrap(),
            tenant.connections.acquire((), 16).unwrap(),
        ),
        tenant,
    };
    tokio::spawn(run(
        state.clone(),
        MemSocket { incoming, outgoing },
        admitted,
    ));
    let mut c = Client { tx, rx };
    assert_eq!(c.json().await["type"], "welcome");
    c.send(json!({"type":"subscribe","id":"r","channel":"team:red"}));
    assert_eq!(c.json().await["type"], "ack");
    c.send(json!({"type":"subscribe","id":"b","channel":"team:blue"}));
    assert_eq!(c.json().await["code"], "forbidden");

    // A reload whose rules read `org`: the live connection's token is
    // verified again and the claim it dropped is there for the new rule.
    let both = format!(
        "{team}\n[[tenants.t.channels]]\npattern = \"org:{{claim:org}}\"\nsubscribe = true"
    );
    state
        .reload(reconfigured(&d, SAME_SECRET, &both, ""))
        .await
        .unwrap();
    c.send(json!({"type":"subscribe","id":"o","channel":"org:acme"}));
    let answer = c.json().await;
    assert_eq!(answer["type"], "ack", "{answer}");
    c.send(json!({"type":"subscribe","id":"x","channel":"org:other"}));
    assert_eq!(c.json().await["code"], "forbidden");
}

#[tokio::test]
async fn a_drain_closes_live_sessions_and_one_that_starts_during_it_with_1001() {
    let state = state(&dir("drain"), "").await;
    let mut live = connect(&state, "alice");
    assert_eq!(live.json().await["type"], "welcome");
    live.send(json!({"type":"ping","id":"p"}));
    assert_eq!(live.json().await["type"], "pong");
    state.drain();
    assert_eq!(
        closed_with(&mut live).await,
        (1001, "server shutting down".into())
    );
    // A handshake that finished as the drain began: welcomed, then closed.
    let mut late = connect(&state, "bob");
    assert_eq!(late.json().await["type"], "welcome");
    assert_eq!(
        closed_with(&mut late).await,
        (1001, "server shutting down".into())
    );
}
