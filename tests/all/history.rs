//! Channel history, recovery and presence, against a real server and real
//! clients (issue: nothing acknowledged is lost).

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::client::{ClientOptions, TokenVia, connect};
use sluice::config::{Config, HistoryConfig, StoreKind};
use sluice_tests::server::{Client, TempDir, TestServer};

/// Rooms keep `size` events for ten minutes, with presence and its events;
/// rate limits out of the way of 1,000-message bursts.
fn rooms_with_history(size: usize, debounce_ms: u64) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        let alpha = c.tenants.get_mut("alpha").expect("alpha");
        let room = &mut alpha.channels[0];
        assert_eq!(room.pattern, "room:{id}");
        room.history = Some(HistoryConfig {
            size,
            ttl_secs: 600,
        });
        room.presence = true;
        room.presence_events = true;
        let l = &mut alpha.limits;
        l.messages_per_sec = 100_000;
        l.message_burst = 100_000;
        l.subject_messages_per_sec = 100_000;
        l.tenant_messages_per_sec = 100_000;
        l.presence_debounce_ms = debounce_ms;
    }
}

/// Subscribe (reserved) and return the ack's data.
async fn subscribe(c: &mut Client, id: &str, channel: &str, since: Option<(u64, &str)>) -> Value {
    let mut msg = json!({"type": "subscribe", "id": id, "channel": channel});
    if let Some((offset, epoch)) = since {
        msg["data"] = json!({"since": {"offset": offset, "epoch": epoch}});
    }
    let ack = c.request(msg).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["data"].clone()
}

/// Send `n` chat messages to `room` back to back, then wait for their acks.
async fn publish_many(c: &mut Client, room: &str, tag: &str, n: usize) {
    for i in 0..n {
        c.send(
            json!({"type": "chat.send", "id": format!("{tag}{i}"), "channel": room,
            "data": {"text": format!("{tag} {i}")}}),
        )
        .await;
    }
    let mut acked = 0;
    while acked < n {
        let f = c.recv().await;
        if f["type"] == "ack" {
            acked += 1;
        }
        assert_ne!(f["type"], "error", "{f}");
    }
}

#[tokio::test]
async fn a_dropped_connection_recovers_every_missed_event_exactly_once_in_order() {
    let server = TestServer::start_with(rooms_with_history(2000, 100)).await;
    let token = server.token("alpha", "reader", "");
    let mut reader = server.connect("alpha", &token).await.expect("connect");
    let first = subscribe(&mut reader, "s1", "room:drop", None).await;
    assert_eq!(first["offset"], 0, "{first}");
    let epoch = first["epoch"].as_str().expect("an epoch").to_owned();
    assert!(first.get("recovered").is_none(), "{first}");

    let writer_token = server.token("alpha", "writer", "chat:write");
    let mut writer = server
        .connect("alpha", &writer_token)
        .await
        .expect("connect");
    let publishing = tokio::spawn(async move {
        publish_many(&mut writer, "room:drop", "m", 1000).await;
        writer
    });
    // Read some, then lose the TCP connection without a close frame.
    let mut seen = Vec::new();
    while seen.len() < 50 {
        let e = reader.next_event().await;
        assert_eq!(e["epoch"], epoch.as_str());
        seen.push(e["offset"].as_u64().expect("offset"));
    }
    let last = *seen.last().expect("events");
    drop(reader);

    // Resubscribe while the publisher is still going.
    let mut again = server.connect("alpha", &token).await.expect("reconnect");
    let ack = subscribe(&mut again, "s2", "room:drop", Some((last, &epoch))).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(ack["epoch"], epoch.as_str());
    let mut writer = publishing.await.expect("publisher");
    let mut offsets = seen.clone();
    while offsets.len() < 1000 {
        let e = again.next_event().await;
        assert_eq!(e["epoch"], epoch.as_str());
        assert_eq!(e["data"]["from"], "writer");
        offsets.push(e["offset"].as_u64().expect("offset"));
    }
    assert_eq!(
        offsets,
        (1..=1000).collect::<Vec<u64>>(),
        "every event once, in order"
    );
    // Nothing more (no duplicate trailing in).
    again.assert_usable().await;
    writer.assert_usable().await;
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn past_the_window_recovery_fails_and_the_ack_says_where_the_channel_is() {
    let server = TestServer::start_with(rooms_with_history(5, 100)).await;
    let mut c = server
        .connect("alpha", &server.token("alpha", "w", "chat:write"))
        .await
        .expect("connect");
    let first = subscribe(&mut c, "s", "room:w", None).await;
    let epoch = first["epoch"].as_str().expect("epoch").to_owned();
    publish_many(&mut c, "room:w", "a", 12).await;
    // Offset 6 was trimmed (12 published, 5 kept: 8..=12): 7 can resume.
    let mut late = server
        .connect("alpha", &server.token("alpha", "late", ""))
        .await
        .expect("connect");
    let ack = subscribe(&mut late, "t1", "room:w", Some((6, &epoch))).await;
    assert_eq!(
        ack,
        json!({"offset": 12, "epoch": epoch, "recovered": false})
    );
    let ack = subscribe(&mut late, "t2", "room:w", Some((7, &epoch))).await;
    assert_eq!(ack["recovered"], true);
    for want in 8..=12 {
        assert_eq!(late.next_event().await["offset"], want);
    }
    // Another epoch: refetch.
    let ack = subscribe(&mut late, "t3", "room:w", Some((12, "not-the-epoch"))).await;
    assert_eq!(ack["recovered"], false);
    // A channel without history: nothing to recover, said plainly.
    let ack = subscribe(&mut late, "t4", "team:red", Some((1, "x"))).await;
    assert_eq!(ack, json!({"recovered": false}));
    late.assert_usable().await;
}

#[tokio::test]
async fn bad_since_values_get_bad_envelope_and_the_connection_stays_usable() {
    let server = TestServer::start_with(rooms_with_history(5, 100)).await;
    let mut c = server
        .connect("alpha", &server.token("alpha", "b", ""))
        .await
        .expect("connect");
    let huge_epoch = "e".repeat(10 * 1024);
    for (i, since) in [
        json!({"offset": -1, "epoch": "e"}),
        json!({"offset": 1e300, "epoch": "e"}),
        json!({"offset": "41", "epoch": "e"}),
        json!({"offset": 9_007_199_254_740_992u64, "epoch": "e"}),
        json!({"offset": 1, "epoch": huge_epoch}),
        json!({"offset": 1}),
        json!("41"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("b{i}");
        let answer = c
            .request(json!({"type": "subscribe", "id": id, "channel": "room:b", "data": {"since": since}}))
            .await;
        assert_eq!(answer["type"], "error", "{since}: {answer}");
        assert_eq!(answer["code"], "bad_envelope", "{answer}");
        let message = answer["message"].as_str().expect("message");
        assert!(message.starts_with("subscribe: since"), "{message}");
        assert!(
            message.len() < 200 && !message.contains("eeee"),
            "{message}"
        );
    }
    c.assert_usable().await;
    // Still subscribes normally afterwards.
    let ack = subscribe(&mut c, "ok", "room:b", None).await;
    assert_eq!(ack["offset"], 0);
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn recovery_is_authorized_like_a_subscribe() {
    let server = TestServer::start_with(rooms_with_history(5, 100)).await;
    let mut c = server
        .connect("alpha", &server.token("alpha", "nosy", ""))
        .await
        .expect("connect");
    // user:{sub} is only the subject's own.
    let answer = c
        .request(
            json!({"type": "subscribe", "id": "x", "channel": "user:someone-else",
            "data": {"since": {"offset": 0, "epoch": "e"}}}),
        )
        .await;
    assert_eq!(answer["code"], "forbidden", "{answer}");
    let answer = c
        .request(json!({"type": "presence", "id": "p", "channel": "user:someone-else"}))
        .await;
    assert_eq!(answer["code"], "forbidden", "{answer}");
    // A channel whose rule has no presence.
    let answer = c
        .request(json!({"type": "presence", "id": "p2", "channel": "team:red"}))
        .await;
    assert_eq!(answer["code"], "forbidden", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or("")
            .contains("presence"),
        "{answer}"
    );
    c.assert_usable().await;
}

/// Files under `dir`, at any depth.
fn walk_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                let p = e.path();
                if p.is_dir() { walk_files(&p) } else { 1 }
            })
            .sum()
    })
}

#[tokio::test]
async fn a_wiped_store_gives_a_new_epoch_and_a_restart_keeps_history() {
    let data = TempDir::new();
    let dir = data.0.join("data");
    let with_dir = |d: std::path::PathBuf| {
        move |c: &mut Config| {
            rooms_with_history(100, 100)(c);
            assert_eq!(c.store.kind, StoreKind::Durable, "durable is the default");
            c.store.data_dir = d;
        }
    };
    let mut server = TestServer::start_with(with_dir(dir.clone())).await;
    let token = server.token("alpha", "w", "chat:write");
    let mut c = server.connect("alpha", &token).await.expect("connect");
    let epoch = subscribe(&mut c, "s", "room:r", None).await["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    publish_many(&mut c, "room:r", "x", 3).await;
    drop(c);
    server.shutdown().await;
    drop(server);
    // The compiled handlers were cached beside the store, for the restart.
    let cached = walk_files(&dir.join("compiled"));
    assert!(cached > 0, "nothing in {}", dir.join("compiled").display());

    // A clean restart on the same data_dir: same epoch, same offsets.
    let mut server = TestServer::start_with(with_dir(dir.clone())).await;
    let mut c = server.connect("alpha", &token).await.expect("connect");
    let ack = subscribe(&mut c, "s", "room:r", Some((0, &epoch))).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(ack["offset"], 3);
    let texts: Vec<Value> = [
        c.next_event().await,
        c.next_event().await,
        c.next_event().await,
    ]
    .iter()
    .map(|e| e["data"]["text"].clone())
    .collect();
    assert_eq!(texts, vec![json!("x 0"), json!("x 1"), json!("x 2")]);
    // Handler state survived too: the room's sequence goes on.
    let sent = c
        .request(
            json!({"type": "chat.send", "id": "n", "channel": "room:r", "data": {"text": "after"}}),
        )
        .await;
    assert_eq!(sent["data"]["seq"], 4, "{sent}");
    drop(c);
    server.shutdown().await;
    drop(server);

    // Wiped: a new epoch, and the old position does not recover.
    std::fs::remove_dir_all(&dir).expect("wipe");
    let server = TestServer::start_with(with_dir(dir.clone())).await;
    let mut c = server.connect("alpha", &token).await.expect("connect");
    let ack = subscribe(&mut c, "s", "room:r", Some((4, &epoch))).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_ne!(ack["epoch"], epoch.as_str());
    assert_eq!(ack["offset"], 0);
}

#[tokio::test]
async fn presence_lists_members_and_debounces_a_quick_reconnect() {
    let server = TestServer::start_with(rooms_with_history(10, 1500)).await;
    let connect = |sub: &'static str| {
        let token = server.token("alpha", sub, "");
        let server = &server;
        async move {
            let mut c = server.connect("alpha", &token).await.expect("connect");
            subscribe(&mut c, "s", "room:p", None).await;
            c
        }
    };
    let mut alice = connect("alice").await;
    // A member sees its own join too.
    assert_eq!(
        alice.next_event_of("join").await["data"]["subject"],
        "alice"
    );
    let bob = connect("bob").await;
    let join = alice.next_event_of("join").await;
    assert_eq!(join["data"]["subject"], "bob");
    assert_eq!(join["data"]["claims"], json!({"name": "bob example"}));
    let carol = connect("carol").await;
    assert_eq!(
        alice.next_event_of("join").await["data"]["subject"],
        "carol"
    );
    let answer = alice
        .request(json!({"type": "presence", "id": "p", "channel": "room:p"}))
        .await;
    let subjects: Vec<&str> = answer["data"]["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["subject"].as_str().expect("subject"))
        .collect();
    assert_eq!(subjects, vec!["alice", "bob", "carol"], "{answer}");
    assert_eq!(answer["data"]["members"][0]["connections"], 1);
    assert_eq!(
        answer["data"]["members"][0]["claims"],
        json!({"name": "alice example"})
    );
    assert_eq!(answer["data"]["truncated"], false);

    // Bob drops and is back inside the debounce: neither leave nor join.
    drop(bob);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _bob = connect("bob").await;
    // Carol leaves for good: one leave, after the debounce.
    let left_at = Instant::now();
    drop(carol);
    let leave = alice.next_presence().await;
    assert_eq!(
        leave["type"], "leave",
        "bob's reconnect must not show: {leave}"
    );
    assert_eq!(leave["data"]["subject"], "carol");
    assert!(
        left_at.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        left_at.elapsed()
    );
    let answer = alice
        .request(json!({"type": "presence", "id": "p2", "channel": "room:p"}))
        .await;
    assert_eq!(
        answer["data"]["members"].as_array().map(Vec::len),
        Some(2),
        "{answer}"
    );
    alice.assert_usable().await;
}

trait PresenceEvents {
    async fn next_event_of(&mut self, kind: &str) -> Value;
    async fn next_presence(&mut self) -> Value;
}

impl PresenceEvents for Client {
    async fn next_event_of(&mut self, kind: &str) -> Value {
        loop {
            let f = self.recv().await;
            if f["type"] == kind {
                return f;
            }
        }
    }

    async fn next_presence(&mut self) -> Value {
        loop {
            let f = self.recv().await;
            if f["type"] == "join" || f["type"] == "leave" {
                return f;
            }
        }
    }
}

/// `sluice dev` in `cwd`, its stdout read line by line.
struct Dev {
    child: Child,
    lines: Receiver<String>,
}

impl Dev {
    fn start(cwd: &Path) -> (Self, String, String) {
        let mut child = Command::new(sluice_tests::sluice_bin())
            .args(["dev", "--listen", "127.0.0.1:0", "--page", "127.0.0.1:0"])
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sluice dev");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let dev = Self { child, lines };
        let (mut url, mut token) = (None, None);
        // The first `sluice dev` of a fresh clone builds the demo handlers
        // (handlers/build) before its banner: minutes on a cold machine.
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut next_is_token = false;
        while url.is_none() || token.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match dev.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(u) = line.strip_prefix("Sluice dev server on ") {
                        url = Some(u.to_owned());
                    }
                    if next_is_token && line.starts_with("ey") {
                        token = Some(line.clone());
                    }
                    next_is_token |= line.contains("dev token");
                }
                Err(RecvTimeoutError::Timeout) => panic!("no banner from sluice dev within 600 s"),
                Err(RecvTimeoutError::Disconnected) => panic!("sluice dev exited"),
            }
        }
        (dev, url.unwrap_or_default(), token.unwrap_or_default())
    }

    fn kill_9(&mut self) {
        // SIGKILL: no drain, no clean shutdown.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.kill_9();
    }
}

async fn dev_client(cwd: &Path, url: &str, token: &str) -> Client {
    let opts = ClientOptions {
        ca_pem: std::fs::read(cwd.join("dev/cert.pem")).expect("dev/cert.pem"),
        token: Some(token.to_owned()),
        via: TokenVia::Header,
        ..Default::default()
    };
    let socket = connect(url, &opts).await.expect("connect to sluice dev");
    let mut c = Client { socket };
    assert_eq!(c.recv().await["type"], "welcome");
    c
}

#[tokio::test]
async fn kill_9_under_load_loses_nothing_that_was_acknowledged() {
    let cwd = TempDir::new();
    let (mut dev, url, token) = Dev::start(&cwd.0);
    let mut c = dev_client(&cwd.0, &url, &token).await;
    let epoch = subscribe(&mut c, "s", "room:k", None).await["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    let (mut sender, mut receiver) = {
        use futures_util::StreamExt;
        let Client { socket } = c;
        socket.split()
    };
    // 40 messages a second (under the demo tenant's 50/s) until killed;
    // every ack's seq is recorded.
    let send = tokio::spawn(async move {
        use futures_util::SinkExt;
        for i in 0..90 {
            let msg = json!({"type": "chat.send", "id": format!("k{i}"), "channel": "room:k",
                "data": {"text": format!("k {i}")}});
            if sender
                .send(tokio_tungstenite::tungstenite::Message::text(
                    msg.to_string(),
                ))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    let acked = tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut acked = BTreeSet::new();
        while let Some(Ok(frame)) = receiver.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = frame {
                let v: Value = serde_json::from_str(t.as_str()).expect("json");
                if v["type"] == "ack"
                    && let Some(seq) = v["data"]["seq"].as_u64()
                {
                    acked.insert(seq);
                }
            }
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    dev.kill_9();
    let acked = acked.await.expect("reader");
    send.abort();
    drop(dev);
    assert!(
        acked.len() >= 10,
        "the load was running: {} acked",
        acked.len()
    );
    let max_acked = *acked.last().expect("acks");

    let (_dev, url, token) = Dev::start(&cwd.0);
    let mut c = dev_client(&cwd.0, &url, &token).await;
    // Every acknowledged history entry: replayed from the start.
    let ack = subscribe(&mut c, "s", "room:k", Some((0, &epoch))).await;
    assert_eq!(ack["recovered"], true, "same store, same epoch: {ack}");
    let mut replayed = BTreeSet::new();
    loop {
        let f = tokio::time::timeout(Duration::from_millis(500), c.recv()).await;
        match f {
            Ok(e) if e["type"] == "event" => {
                if let Some(seq) = e["data"]["seq"].as_u64() {
                    replayed.insert(seq);
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let lost: Vec<&u64> = acked.difference(&replayed).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but lost from history: {lost:?}"
    );
    // Every acknowledged state write: the room's sequence goes on past it.
    let sent = c
        .request(json!({"type": "chat.send", "id": "after", "channel": "room:k", "data": {"text": "after"}}))
        .await;
    let seq = sent["data"]["seq"].as_u64().expect("seq");
    assert!(seq > max_acked, "seq {seq} after {max_acked} acknowledged");
    // Offsets jumped past anything that might have been seen unwritten.
    let last_offset = ack["offset"].as_u64().expect("offset");
    assert!(last_offset > 90, "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_events_into_one_channel_stay_within_the_memory_and_disk_bounds() {
    use std::sync::Arc;

    use serde_json::value::RawValue;
    use sluice::server::backends::history::{HistorySize, HistoryStore as _};
    use sluice::server::backends::{ChannelKey, LocalBroker, LocalHistory};

    let dir = TempDir::new();
    let opened = sluice::store::Store::open(&dir.0).expect("open");
    let broker = Arc::new(LocalBroker::default());
    let history = Arc::new(LocalHistory::durable(
        broker.clone(),
        opened.store,
        opened.channels,
        opened.unclean,
    ));
    let tenant: Arc<str> = "t".into();
    let key = ChannelKey::new(&tenant, "room:flood");
    let rule = HistoryConfig {
        size: 100,
        ttl_secs: 600,
    };
    const EVENTS: usize = 1_000_000;
    const PUBLISHERS: usize = 500;
    let payload: Box<RawValue> =
        RawValue::from_string(format!("{{\"text\":\"{}\"}}", "x".repeat(100))).expect("json");
    let payload: Arc<RawValue> = Arc::from(payload);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..PUBLISHERS {
        let (history, key, payload) = (history.clone(), key.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..EVENTS / PUBLISHERS {
                history.append(&key, rule, &payload).await.expect("durable");
            }
        }));
    }
    let mut peak_file = 0;
    for t in tasks {
        t.await.expect("publisher");
        peak_file =
            peak_file.max(std::fs::metadata(dir.0.join("sluice.redb")).map_or(0, |m| m.len()));
    }
    let took = started.elapsed();
    let sizes = history.sizes();
    let HistorySize {
        channels,
        events,
        bytes,
    } = sizes[&tenant];
    assert_eq!((channels, events), (1, 100));
    // ~190 bytes a frame: memory holds the last 100, nothing more.
    assert!(bytes < 100 * 256, "{bytes} bytes of history in memory");
    history.close();
    let file = std::fs::metadata(dir.0.join("sluice.redb"))
        .expect("db")
        .len();
    // 100 entries of ~120 bytes; the file keeps its free pages, but a
    // million appends and trims must not grow it past a few MiB.
    assert!(
        file < 16 << 20 && peak_file < 16 << 20,
        "{file} bytes on disk (peak {peak_file})"
    );
    let opened = sluice::store::Store::open(&dir.0).expect("reopen");
    assert_eq!(opened.channels[0].entries.len(), 100);
    assert_eq!(opened.channels[0].last_offset, EVENTS as u64);
    eprintln!(
        "flood: {EVENTS} durable history appends in {took:?} ({:.0}/s), file {file} bytes",
        EVENTS as f64 / took.as_secs_f64()
    );
}

#[tokio::test]
async fn history_older_than_its_ttl_is_dropped_from_memory_and_disk() {
    use std::sync::Arc;

    use serde_json::value::RawValue;
    use sluice::server::backends::history::HistoryStore as _;
    use sluice::server::backends::{ChannelKey, LocalBroker, LocalHistory};

    let dir = TempDir::new();
    let opened = sluice::store::Store::open(&dir.0).expect("open");
    let broker = Arc::new(LocalBroker::default());
    let history = LocalHistory::durable(
        broker.clone(),
        opened.store,
        opened.channels,
        opened.unclean,
    );
    let tenant: Arc<str> = "t".into();
    let key = ChannelKey::new(&tenant, "room:old");
    let rule = HistoryConfig {
        size: 100,
        ttl_secs: 1,
    };
    let data: Box<RawValue> = RawValue::from_string("{\"n\":1}".into()).expect("json");
    for _ in 0..3 {
        history.append(&key, rule, &data).await.expect("publish");
    }
    assert_eq!(history.sizes()[&tenant].events, 3);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    history
        .trim(Duration::from_secs(3600), &|_| Some(rule))
        .await;
    assert_eq!(history.sizes()[&tenant].events, 0, "expired in memory");
    history.close();
    let opened = sluice::store::Store::open(&dir.0).expect("reopen");
    assert_eq!(
        opened.channels.len(),
        1,
        "the channel (its epoch) is kept while recent"
    );
    assert!(opened.channels[0].entries.is_empty(), "expired on disk");
    assert_eq!(opened.channels[0].last_offset, 3);
    // Idle past the TTL with nobody subscribed: forgotten altogether.
    let history = LocalHistory::durable(
        broker.clone(),
        opened.store,
        opened.channels,
        opened.unclean,
    );
    history.trim(Duration::ZERO, &|_| Some(rule)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    history.trim(Duration::ZERO, &|_| Some(rule)).await;
    assert!(history.sizes().is_empty());
    history.close();
    let opened = sluice::store::Store::open(&dir.0).expect("reopen");
    assert!(opened.channels.is_empty());
}

#[tokio::test]
async fn a_handler_can_subscribe_with_recovery() {
    let server = TestServer::start_with(rooms_with_history(100, 100)).await;
    let token = server.token("alpha", "reader", "chat:write");
    let mut r = server.connect("alpha", &token).await.expect("connect");
    r.send(json!({"type": "chat.join", "id": "j", "channel": "room:h"}))
        .await;
    // The handler's subscribe: a `subscribed` frame with the position,
    // then the reader's own `joined` event, then the handler's reply.
    let subscribed = r.recv().await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["channel"], "room:h");
    assert_eq!(subscribed["data"]["offset"], 0);
    assert!(
        subscribed["data"].get("recovered").is_none(),
        "{subscribed}"
    );
    let epoch = subscribed["data"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    let joined = r.next_event().await;
    assert_eq!(
        (joined["offset"].clone(), joined["data"]["kind"].clone()),
        (json!(1), json!("joined"))
    );
    drop(r);

    let mut w = server
        .connect("alpha", &server.token("alpha", "writer", "chat:write"))
        .await
        .expect("connect");
    publish_many(&mut w, "room:h", "h", 5).await;

    let mut r = server.connect("alpha", &token).await.expect("reconnect");
    r.send(json!({"type": "chat.join", "id": "j2", "channel": "room:h",
        "data": {"since": {"offset": 1, "epoch": epoch}}}))
        .await;
    let subscribed = r.recv().await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(
        subscribed["data"],
        json!({"offset": 6, "epoch": epoch, "recovered": true})
    );
    for (offset, text) in (2..=6).zip(0..) {
        let e = r.recv().await;
        assert_eq!(e["type"], "event", "{e}");
        assert_eq!(e["offset"], offset);
        assert_eq!(e["data"]["text"], format!("h {text}"));
    }
    // The handler's own `joined` publish and the join's ack: the ack may
    // overtake the event (the event waits for its history write). A
    // presence `join` may come too: the reader's first connection left
    // the channel's presence if the reconnect took longer than the 100 ms
    // debounce (a loaded machine).
    let mut frames = Vec::new();
    while frames.len() < 2 {
        let f = r.recv().await;
        if f["type"] != "join" {
            frames.push(f);
        }
    }
    let (first, second) = (frames.remove(0), frames.remove(0));
    let (own, ack) = if first["type"] == "event" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(
        (own["offset"].clone(), own["data"]["kind"].clone()),
        (json!(7), json!("joined"))
    );
    assert_eq!(
        (ack["type"].clone(), ack["id"].clone()),
        (json!("ack"), json!("j2"))
    );

    // A position from another epoch: subscribed, but not recovered.
    let mut r2 = server.connect("alpha", &token).await.expect("connect");
    r2.send(json!({"type": "chat.join", "id": "j3", "channel": "room:h",
        "data": {"since": {"offset": 1, "epoch": "gone"}}}))
        .await;
    let subscribed = r2.recv().await;
    assert_eq!(subscribed["data"]["recovered"], false, "{subscribed}");
    r2.assert_usable().await;
}

#[tokio::test]
async fn metrics_show_history_recoveries_and_presence() {
    let server = TestServer::start_with(rooms_with_history(3, 100)).await;
    let mut c = server
        .connect("alpha", &server.token("alpha", "m", "chat:write"))
        .await
        .expect("connect");
    let epoch = subscribe(&mut c, "s", "room:m", None).await["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    publish_many(&mut c, "room:m", "m", 5).await;
    subscribe(&mut c, "r1", "room:m", Some((4, &epoch))).await;
    subscribe(&mut c, "r2", "room:m", Some((0, &epoch))).await;
    subscribe(&mut c, "r3", "room:m", Some((5, "other"))).await;
    let (status, m) = crate::admin::get(&server, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "sluice_history_channels{tenant=\"alpha\"} 1",
        "sluice_history_events{tenant=\"alpha\"} 3",
        "sluice_recoveries_total{tenant=\"alpha\",outcome=\"recovered\"} 1",
        "sluice_recoveries_total{tenant=\"alpha\",outcome=\"too_old\"} 1",
        "sluice_recoveries_total{tenant=\"alpha\",outcome=\"epoch_changed\"} 1",
        "sluice_presence_channels{tenant=\"alpha\"} 1",
        "sluice_presence_members{tenant=\"alpha\"} 1",
    ] {
        assert!(m.lines().any(|l| l == line), "missing {line:?} in:\n{m}");
    }
    assert!(m.contains("sluice_history_bytes{tenant=\"alpha\"} "), "{m}");
}
