//! The workload: clients that chat in a few rooms on channels with
//! history, through whichever node they reach, and record everything.
//!
//! Each client connects to a node (the next one after a drop, as a load
//! balancer would send it), joins every room (`chat.join`: a recovery with
//! `since` from the last position it knows, and a read of the room's state),
//! then sends lines (`chat.send`: a read-modify-write of the room's state
//! that publishes the line) with a little think time between, and after a
//! while drops the connection on purpose. A request without an answer in
//! time, or whose connection dies, is recorded as such and the connection
//! is abandoned. At the end every client resumes once more (its last
//! recovery), and a final reader per room reads the whole channel from
//! offset 0 and the room's state.
//!
//! A client's position only moves with what it actually received: an
//! event's offset; the position a fresh subscribe reported; or, once a
//! recovery's join is acknowledged (every replayed event came before the
//! ack), the position the recovery reported.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::client::{Conn, Connector};
use crate::history::{HistoryWriter, OpKind, Position, Record};
use crate::rng::Rng;

/// The tenant the nodes serve.
pub const TENANT: &str = "faults";

/// A node clients can reach.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its name in the history.
    pub name: String,
    /// Its wss address.
    pub addr: SocketAddr,
}

/// Mints a token for a subject.
pub trait Tokens: Send + Sync {
    /// A token for `subject` with the `chat:write` scope.
    fn token(&self, subject: &str) -> anyhow::Result<String>;
}

/// How the clients behave.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How many clients.
    pub clients: u32,
    /// The rooms.
    pub rooms: Vec<String>,
    /// Think time between requests, milliseconds (uniform in the range).
    pub think_ms: (u64, u64),
    /// Requests per connection before dropping it on purpose.
    pub ops_per_conn: (u64, u64),
    /// How long a request may wait for its answer.
    pub op_timeout: Duration,
    /// Seed of the clients' choices.
    pub seed: u64,
}

/// Everything the clients share.
pub struct Workload {
    /// Nodes.
    pub targets: Vec<Target>,
    /// TLS.
    pub connector: Connector,
    /// Tokens.
    pub tokens: Arc<dyn Tokens>,
    /// The history.
    pub history: HistoryWriter,
    /// Behaviour.
    pub settings: Settings,
}

/// A client's state across its connections.
pub struct ClientState {
    id: u32,
    conn: u32,
    op: u64,
    positions: HashMap<String, Position>,
    rng: Rng,
}

/// How a request ended.
enum Answer {
    Ok,
    Error(String),
    /// No answer; the connection is unusable.
    Lost(String),
}

/// One connection of a client.
struct Session<'a> {
    w: &'a Workload,
    conn: Conn,
    number: u32,
    /// Rooms whose recovery is waiting for its join's ack: the position it
    /// reported.
    pending: HashMap<String, u64>,
    /// What the last `subscribed` frame of each room said about recovery.
    recovered: HashMap<String, Option<bool>>,
}

impl Workload {
    /// Run the clients until `stop` turns true; each finishes its request
    /// in flight. Their states, for [`Workload::finish`].
    pub async fn run(self: &Arc<Self>, stop: watch::Receiver<bool>) -> Vec<ClientState> {
        let mut rng = Rng::new(self.settings.seed);
        let mut tasks = Vec::new();
        for id in 1..=self.settings.clients {
            let state = ClientState {
                id,
                conn: 0,
                op: 0,
                positions: HashMap::new(),
                rng: rng.fork(u64::from(id)),
            };
            let w = self.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move { w.client(state, stop).await }));
        }
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(s) = t.await {
                out.push(s);
            }
        }
        out
    }

    async fn client(&self, mut st: ClientState, stop: watch::Receiver<bool>) -> ClientState {
        let mut node = st.id as usize % self.targets.len().max(1);
        while !*stop.borrow() {
            let target = &self.targets[node];
            node = (node + 1) % self.targets.len();
            let Some(mut s) = self.open(&mut st, target).await else {
                let pause = st.rng.range(200, 600);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            };
            let mut alive = s.join_all(&mut st).await;
            let ops = st
                .rng
                .range(self.settings.ops_per_conn.0, self.settings.ops_per_conn.1);
            let mut done = 0;
            while alive && done < ops && !*stop.borrow() {
                let think = st
                    .rng
                    .range(self.settings.think_ms.0, self.settings.think_ms.1);
                if let Err(e) = s.pump(&mut st, Duration::from_millis(think)).await {
                    s.lost(&st, &e);
                    alive = false;
                    break;
                }
                let room = self.settings.rooms[st.rng.below(self.settings.rooms.len())].clone();
                alive = !matches!(
                    s.request(&mut st, OpKind::Send, &room, None, self.settings.op_timeout)
                        .await,
                    Answer::Lost(_)
                );
                done += 1;
            }
            if alive {
                s.close(&st, "dropped on purpose").await;
            }
        }
        st
    }

    /// Open a connection for `st` to `target`; `None` (after recording
    /// nothing: no connection was made) when it fails.
    async fn open<'a>(&'a self, st: &mut ClientState, target: &Target) -> Option<Session<'a>> {
        let token = self.tokens.token(&format!("c{}", st.id)).ok()?;
        let conn = self
            .connector
            .connect(target.addr, TENANT, &token)
            .await
            .ok()?;
        st.conn += 1;
        self.history.push(Record::Connect {
            t: self.history.now(),
            client: st.id,
            conn: st.conn,
            node: target.name.clone(),
        });
        Some(Session {
            w: self,
            conn,
            number: st.conn,
            pending: HashMap::new(),
            recovered: HashMap::new(),
        })
    }

    /// After the run: every client resumes every room once more from its
    /// position, then a final reader per room reads the whole channel and
    /// the room's state. Err when a final read could not be made.
    pub async fn finish(self: &Arc<Self>, clients: Vec<ClientState>) -> anyhow::Result<()> {
        let mut tasks = Vec::new();
        for mut st in clients {
            let w = self.clone();
            tasks.push(tokio::spawn(async move {
                for attempt in 0..10 {
                    let target = &w.targets[(st.id as usize + attempt) % w.targets.len()];
                    if let Some(mut s) = w.open(&mut st, target).await
                        && s.join_all(&mut st).await
                    {
                        s.close(&st, "final resume done").await;
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let mut readers = Vec::new();
        for (i, room) in self.settings.rooms.iter().enumerate() {
            let w = self.clone();
            let room = room.clone();
            let id = 10_000 + i as u32;
            readers.push(tokio::spawn(async move { w.final_read(id, &room).await }));
        }
        for r in readers {
            r.await??;
        }
        Ok(())
    }

    /// A fresh client joins `room` to learn its epoch, then joins again
    /// recovering from offset 0: the whole channel, and the room's state.
    async fn final_read(&self, id: u32, room: &str) -> anyhow::Result<()> {
        let mut st = ClientState {
            id,
            conn: 0,
            op: 0,
            positions: HashMap::new(),
            rng: Rng::new(u64::from(id)),
        };
        let within = Duration::from_secs(120);
        let mut why = String::new();
        for attempt in 0..8 {
            let target = &self.targets[attempt % self.targets.len()];
            let Some(mut s) = self.open(&mut st, target).await else {
                why = format!("could not connect to {}", target.name);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            st.positions.remove(room);
            let first = s.request(&mut st, OpKind::Join, room, None, within).await;
            s.close(&st, "final read: learnt the epoch").await;
            let Some(epoch) = st.positions.get(room).map(|p| p.epoch.clone()) else {
                why = format!("no position from the first join ({})", describe(&first));
                continue;
            };
            let Some(mut s) = self.open(&mut st, target).await else {
                continue;
            };
            let since = Position { offset: 0, epoch };
            let answer = s
                .request(&mut st, OpKind::Join, room, Some(since), within)
                .await;
            let recovered = s.recovered.get(room).copied().flatten();
            match (&answer, recovered) {
                (Answer::Ok, Some(true)) => {
                    self.history.push(Record::FinalRead {
                        t: self.history.now(),
                        client: id,
                        room: room.to_owned(),
                    });
                    s.close(&st, "final read done").await;
                    return Ok(());
                }
                _ => {
                    why = format!(
                        "the recovery from 0 answered {}, recovered {recovered:?}",
                        describe(&answer)
                    );
                    s.close(&st, "final read failed").await;
                }
            }
        }
        anyhow::bail!("no final read of {room}: {why}")
    }
}

fn describe(a: &Answer) -> String {
    match a {
        Answer::Ok => "ok".into(),
        Answer::Error(c) => format!("error {c}"),
        Answer::Lost(w) => w.clone(),
    }
}

impl Session<'_> {
    /// Join every room (recovering from the client's positions). False when
    /// the connection was lost.
    async fn join_all(&mut self, st: &mut ClientState) -> bool {
        for room in self.w.settings.rooms.clone() {
            let since = st.positions.get(&room).cloned();
            let answer = self
                .request(st, OpKind::Join, &room, since, self.w.settings.op_timeout)
                .await;
            if matches!(answer, Answer::Lost(_)) {
                return false;
            }
        }
        true
    }

    /// Send one request and wait for its answer, handling every other
    /// frame meanwhile. Records the invocation and the outcome.
    async fn request(
        &mut self,
        st: &mut ClientState,
        f: OpKind,
        room: &str,
        since: Option<Position>,
        within: Duration,
    ) -> Answer {
        st.op += 1;
        let op = st.op;
        let id = format!("c{}-{op}", st.id);
        let text = (f == OpKind::Send).then(|| id.clone());
        let frame = match (f, &since) {
            (OpKind::Send, _) => {
                json!({"type": "chat.send", "id": id, "channel": room, "data": {"text": id}})
            }
            (OpKind::Join, Some(p)) => json!({"type": "chat.join", "id": id, "channel": room,
                "data": {"since": {"offset": p.offset, "epoch": p.epoch}}}),
            (OpKind::Join, None) => {
                json!({"type": "chat.join", "id": id, "channel": room, "data": {}})
            }
        };
        let h = &self.w.history;
        h.push(Record::Invoke {
            t: h.now(),
            client: st.id,
            conn: self.number,
            op,
            f,
            room: room.to_owned(),
            text,
            since,
        });
        if f == OpKind::Join {
            self.pending.remove(room);
            self.recovered.remove(room);
        }
        if let Err(e) = self.conn.send(&frame).await {
            return self.unanswered(st, op, format!("connection lost: {e}"));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.conn.recv()).await {
                Err(_) => return self.unanswered(st, op, "timeout".into()),
                Ok(Err(e)) => return self.unanswered(st, op, format!("connection lost: {e}")),
                Ok(Ok(None)) => return self.unanswered(st, op, "connection lost: closed".into()),
                Ok(Ok(Some(frame))) => frame,
            };
            let answers = frame["id"].as_str() == Some(id.as_str());
            match frame["type"].as_str() {
                Some("ack") if answers => {
                    h.push(Record::Ok {
                        t: h.now(),
                        client: st.id,
                        op,
                        value: frame["data"].clone(),
                    });
                    if f == OpKind::Join
                        && let Some(upto) = self.pending.remove(room)
                        && let Some(p) = st.positions.get_mut(room)
                    {
                        p.offset = p.offset.max(upto);
                    }
                    return Answer::Ok;
                }
                Some("error") if answers || frame.get("id").is_none() => {
                    let code = frame["code"].as_str().unwrap_or("error").to_owned();
                    h.push(Record::Error {
                        t: h.now(),
                        client: st.id,
                        op,
                        code: code.clone(),
                    });
                    return Answer::Error(code);
                }
                _ => self.handle(st, &frame),
            }
        }
    }

    fn unanswered(&mut self, st: &ClientState, op: u64, reason: String) -> Answer {
        let h = &self.w.history;
        h.push(Record::Info {
            t: h.now(),
            client: st.id,
            op,
            reason: if reason.starts_with("connection lost") {
                "connection lost".into()
            } else {
                reason.clone()
            },
        });
        self.lost(st, &reason);
        Answer::Lost(reason)
    }

    /// Handle frames for `dur`.
    async fn pump(&mut self, st: &mut ClientState, dur: Duration) -> Result<(), String> {
        let until = tokio::time::Instant::now() + dur;
        loop {
            match tokio::time::timeout_at(until, self.conn.recv()).await {
                Err(_) => return Ok(()),
                Ok(Err(e)) => return Err(format!("connection lost: {e}")),
                Ok(Ok(None)) => return Err("connection lost: closed".into()),
                Ok(Ok(Some(frame))) => self.handle(st, &frame),
            }
        }
    }

    /// An event or a `subscribed` frame: record it, move the position.
    fn handle(&mut self, st: &mut ClientState, frame: &Value) {
        let h = &self.w.history;
        let Some(room) = frame["channel"].as_str() else {
            return;
        };
        let data = &frame["data"];
        match frame["type"].as_str() {
            Some("subscribed") => {
                let (Some(offset), Some(epoch)) = (data["offset"].as_u64(), data["epoch"].as_str())
                else {
                    return;
                };
                let recovered = data["recovered"].as_bool();
                h.push(Record::Subscribed {
                    t: h.now(),
                    client: st.id,
                    conn: self.number,
                    room: room.to_owned(),
                    offset,
                    epoch: epoch.to_owned(),
                    recovered,
                });
                self.recovered.insert(room.to_owned(), recovered);
                if recovered == Some(true) {
                    self.pending.insert(room.to_owned(), offset);
                } else {
                    st.positions.insert(
                        room.to_owned(),
                        Position {
                            offset,
                            epoch: epoch.to_owned(),
                        },
                    );
                }
            }
            Some("event") => {
                let (Some(offset), Some(epoch)) =
                    (frame["offset"].as_u64(), frame["epoch"].as_str())
                else {
                    return;
                };
                h.push(Record::Event {
                    t: h.now(),
                    client: st.id,
                    conn: self.number,
                    room: room.to_owned(),
                    offset,
                    epoch: epoch.to_owned(),
                    data: data.clone(),
                });
                st.positions.insert(
                    room.to_owned(),
                    Position {
                        offset,
                        epoch: epoch.to_owned(),
                    },
                );
            }
            _ => {}
        }
    }

    fn lost(&self, st: &ClientState, reason: &str) {
        let h = &self.w.history;
        h.push(Record::Disconnect {
            t: h.now(),
            client: st.id,
            conn: self.number,
            reason: reason.to_owned(),
        });
    }

    async fn close(self, st: &ClientState, reason: &str) {
        self.lost(st, reason);
        self.conn.close().await;
    }
}
