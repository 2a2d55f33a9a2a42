//! The history, indexed: operations with their outcome, the final read of
//! each room, and each client's records in order.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::verdict::{Counts, definite};
use crate::history::{OpKind, Phase, Position, Record};

/// How an operation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// Acknowledged, with the `ack`'s data.
    Ok {
        /// When.
        t: u64,
        /// The reply.
        value: Value,
    },
    /// Refused: took no effect.
    Failed {
        /// When.
        t: u64,
        /// The code.
        code: String,
    },
    /// May or may not have taken effect.
    Indeterminate {
        /// Why (a code, `timeout`, `connection lost`, or `no answer` when
        /// the history ends first).
        reason: String,
    },
}

/// One operation.
#[derive(Debug, Clone)]
pub struct Op {
    /// Client.
    pub client: u32,
    /// Operation number.
    pub op: u64,
    /// Connection it was sent on.
    pub conn: u32,
    /// What.
    pub kind: OpKind,
    /// Room.
    pub room: String,
    /// `send`: its text.
    pub text: Option<String>,
    /// `join`: its `since`.
    pub since: Option<Position>,
    /// Invoked at.
    pub invoked: u64,
    /// How it ended.
    pub end: End,
}

impl Op {
    /// Acknowledged.
    pub fn acked(&self) -> bool {
        matches!(self.end, End::Ok { .. })
    }

    /// Refused: took no effect.
    pub fn failed(&self) -> bool {
        matches!(self.end, End::Failed { .. })
    }

    /// When the acknowledgement came.
    pub fn completed(&self) -> Option<u64> {
        match self.end {
            End::Ok { t, .. } => Some(t),
            _ => None,
        }
    }

    /// `send`: the sequence number the acknowledgement carried.
    pub fn acked_seq(&self) -> Option<u64> {
        match &self.end {
            End::Ok { value, .. } => value.get("seq").and_then(Value::as_u64),
            _ => None,
        }
    }

    /// `join`: the state lines the acknowledgement carried, `(seq, text)`.
    pub fn read_lines(&self) -> Option<Vec<(u64, String)>> {
        let End::Ok { value, .. } = &self.end else {
            return None;
        };
        let lines = value.get("history")?.as_array()?;
        Some(
            lines
                .iter()
                .map(|l| {
                    (
                        l.get("seq").and_then(Value::as_u64).unwrap_or(0),
                        l.get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    )
                })
                .collect(),
        )
    }

    /// A short name for counter-examples.
    pub fn name(&self) -> String {
        match &self.text {
            Some(t) => format!("send {t}"),
            None => format!("join c{}-{}", self.client, self.op),
        }
    }
}

/// A received event.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Offset.
    pub offset: u64,
    /// Epoch.
    pub epoch: String,
    /// Data.
    pub data: Value,
}

impl Seen {
    /// The text of a `message` event.
    pub fn text(&self) -> Option<&str> {
        message_text(&self.data)
    }

    /// The subject of a `joined` event.
    pub fn joined(&self) -> Option<&str> {
        match self.data.get("kind").and_then(Value::as_str) {
            Some("joined") => self.data.get("from").and_then(Value::as_str),
            _ => None,
        }
    }
}

/// The text of a chat `message` event's data.
pub fn message_text(data: &Value) -> Option<&str> {
    match data.get("kind").and_then(Value::as_str) {
        Some("message") => data.get("text").and_then(Value::as_str),
        _ => None,
    }
}

/// A room's final read: its channel's whole history from offset 0, and its
/// state, after the run.
#[derive(Debug, Clone)]
pub struct FinalRead {
    /// The reader.
    pub client: u32,
    /// The channel's epoch.
    pub epoch: String,
    /// The last offset the `subscribed` frame gave.
    pub upto: u64,
    /// Every event, in the order received.
    pub events: Vec<Seen>,
    /// The join that read it.
    pub join: (u32, u64),
}

/// The indexed history.
pub struct Model<'a> {
    /// Every record, in file order.
    pub records: &'a [Record],
    /// Operations by (client, op).
    pub ops: BTreeMap<(u32, u64), Op>,
    /// `send` operations by text.
    pub sends: HashMap<String, (u32, u64)>,
    /// Final reads by room; `Err` says why a room's final read is unusable.
    pub finals: BTreeMap<String, Result<FinalRead, String>>,
    /// Rooms the workload used.
    pub rooms: Vec<String>,
}

impl<'a> Model<'a> {
    /// Index `records`.
    pub fn build(records: &'a [Record]) -> Self {
        let mut ops = BTreeMap::new();
        let mut sends = HashMap::new();
        let mut rooms: Vec<String> = Vec::new();
        for r in records {
            match r {
                Record::Invoke {
                    t,
                    client,
                    conn,
                    op,
                    f,
                    room,
                    text,
                    since,
                } => {
                    if !rooms.contains(room) {
                        rooms.push(room.clone());
                    }
                    if let Some(text) = text {
                        sends.insert(text.clone(), (*client, *op));
                    }
                    ops.insert(
                        (*client, *op),
                        Op {
                            client: *client,
                            op: *op,
                            conn: *conn,
                            kind: *f,
                            room: room.clone(),
                            text: text.clone(),
                            since: since.clone(),
                            invoked: *t,
                            end: End::Indeterminate {
                                reason: "no answer".into(),
                            },
                        },
                    );
                }
                Record::Ok {
                    t,
                    client,
                    op,
                    value,
                } => {
                    if let Some(o) = ops.get_mut(&(*client, *op)) {
                        o.end = End::Ok {
                            t: *t,
                            value: value.clone(),
                        };
                    }
                }
                Record::Error {
                    t,
                    client,
                    op,
                    code,
                } => {
                    if let Some(o) = ops.get_mut(&(*client, *op)) {
                        o.end = if definite(code) {
                            End::Failed {
                                t: *t,
                                code: code.clone(),
                            }
                        } else {
                            End::Indeterminate {
                                reason: code.clone(),
                            }
                        };
                    }
                }
                Record::Info {
                    client, op, reason, ..
                } => {
                    if let Some(o) = ops.get_mut(&(*client, *op)) {
                        o.end = End::Indeterminate {
                            reason: reason.clone(),
                        };
                    }
                }
                _ => {}
            }
        }
        rooms.sort();
        let finals = rooms
            .iter()
            .map(|room| (room.clone(), final_read(records, &ops, room)))
            .collect();
        Self {
            records,
            ops,
            sends,
            finals,
            rooms,
        }
    }

    /// The `send` whose text is `text`.
    pub fn send(&self, text: &str) -> Option<&Op> {
        self.sends.get(text).and_then(|k| self.ops.get(k))
    }

    /// The operations of `room`, of `kind`.
    pub fn ops_of<'b>(&'b self, room: &'b str, kind: OpKind) -> impl Iterator<Item = &'b Op> {
        self.ops
            .values()
            .filter(move |o| o.room == room && o.kind == kind)
    }

    /// Whether `(client, op)` is a final reader's join (its effects land
    /// after the final read, by construction).
    pub fn is_final_join(&self, key: (u32, u64)) -> bool {
        self.finals
            .values()
            .any(|f| matches!(f, Ok(f) if f.join == key))
    }

    /// Counts for the report.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for o in self.ops.values() {
            let kind = match o.kind {
                OpKind::Send => "send",
                OpKind::Join => "join",
            };
            let outcome = match &o.end {
                End::Ok { .. } => "ok",
                End::Failed { code, .. } => {
                    *c.refusals.entry(code.clone()).or_default() += 1;
                    "failed"
                }
                End::Indeterminate { reason } => {
                    *c.refusals.entry(reason.clone()).or_default() += 1;
                    "indeterminate"
                }
            };
            *c.ops.entry(format!("{kind} {outcome}")).or_default() += 1;
        }
        for r in self.records {
            match r {
                Record::Event { .. } => c.events += 1,
                Record::Connect { .. } => c.connections += 1,
                Record::Subscribed {
                    recovered: Some(true),
                    ..
                } => c.recoveries.0 += 1,
                Record::Subscribed {
                    recovered: Some(false),
                    ..
                } => c.recoveries.1 += 1,
                Record::Nemesis {
                    fault,
                    phase: Phase::Start,
                    ..
                } => *c.faults.entry(fault.clone()).or_default() += 1,
                _ => {}
            }
        }
        c
    }
}

/// The final read of `room`: its reader's last join of the room, which
/// recovered from offset 0 and was acknowledged, and the events that came
/// on that connection up to the position it was told.
fn final_read(
    records: &[Record],
    ops: &BTreeMap<(u32, u64), Op>,
    room: &str,
) -> Result<FinalRead, String> {
    let Some(client) = records.iter().rev().find_map(|r| match r {
        Record::FinalRead {
            client, room: r, ..
        } if r == room => Some(*client),
        _ => None,
    }) else {
        return Err(format!("no final read of {room}"));
    };
    let join = ops
        .values()
        .rev()
        .find(|o| o.client == client && o.room == room && o.kind == OpKind::Join)
        .ok_or_else(|| format!("the final reader of {room} made no join"))?;
    if !join.acked() {
        return Err(format!("the final read of {room} was not acknowledged"));
    }
    if join.since.as_ref().map(|s| s.offset) != Some(0) {
        return Err(format!("the final read of {room} did not recover from 0"));
    }
    let mut subscribed = None;
    let mut events = Vec::new();
    for r in records {
        match r {
            Record::Subscribed {
                client: c,
                conn,
                room: r,
                offset,
                epoch,
                recovered,
                ..
            } if *c == client && *conn == join.conn && r == room => {
                if *recovered != Some(true) {
                    return Err(format!(
                        "the final read of {room} was told recovered: {recovered:?}"
                    ));
                }
                subscribed = Some((*offset, epoch.clone()));
                events.clear();
            }
            Record::Event {
                client: c,
                conn,
                room: r,
                offset,
                epoch,
                data,
                ..
            } if *c == client && *conn == join.conn && r == room => events.push(Seen {
                offset: *offset,
                epoch: epoch.clone(),
                data: data.clone(),
            }),
            _ => {}
        }
    }
    let (upto, epoch) =
        subscribed.ok_or_else(|| format!("the final read of {room} got no subscribed frame"))?;
    events.retain(|e| e.offset <= upto);
    Ok(FinalRead {
        client,
        epoch,
        upto,
        events,
        join: (join.client, join.op),
    })
}
