//! The history: every operation a client invoked and how it ended, every
//! frame a subscriber received that says where a channel is, and every
//! fault, as JSON lines. The checker reads nothing else.
//!
//! Times are microseconds since the run started, from one monotonic clock
//! shared by every client (they run in one process), so "A completed before
//! B was invoked" is a fact about real time, not about any node's clock.

use std::io::{BufRead as _, Write as _};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What an operation does.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// `chat.send`: a read-modify-write of the room's state (its next
    /// sequence number and last lines) that publishes the line on the
    /// room's channel, which keeps history.
    Send,
    /// `chat.join`: subscribe (with `since` when the client has a
    /// position: a recovery), read the room's state (the reply), publish a
    /// `joined` event.
    Join,
}

/// A position in a channel's stream.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The offset.
    pub offset: u64,
    /// The channel's epoch.
    pub epoch: String,
}

/// Start or end of a fault.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Injected.
    Start,
    /// Healed.
    End,
}

/// One line of the history.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// A client opened a connection (`conn` counts its connections).
    Connect {
        /// Time.
        t: u64,
        /// Client.
        client: u32,
        /// The client's connection number.
        conn: u32,
        /// Which node it reached.
        node: String,
    },
    /// A connection ended (closed by either side, or lost).
    Disconnect {
        /// Time.
        t: u64,
        /// Client.
        client: u32,
        /// Connection.
        conn: u32,
        /// Why, as the client saw it.
        reason: String,
    },
    /// A request was sent.
    Invoke {
        /// Time.
        t: u64,
        /// Client.
        client: u32,
        /// Connection it was sent on.
        conn: u32,
        /// Operation number, unique per client.
        op: u64,
        /// What it does.
        f: OpKind,
        /// The room (channel and state key).
        room: String,
        /// `send`: the text, unique in the run (`c{client}-{op}`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// `join`: the position it recovers from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Position>,
    },
    /// The request was acknowledged; `value` is the `ack`'s data.
    Ok {
        /// Time.
        t: u64,
        /// Client.
        client: u32,
        /// Operation.
        op: u64,
        /// The handler's reply.
        value: Value,
    },
    /// The request was answered with an `error` frame (the checker decides
    /// from the code whether it may have taken effect).
    Error {
        /// Time.
        t: u64,
        /// Client.
        client: u32,
        /// Operation.
        op: u64,
        /// The error code.
        code: String,
    },
    /// No answer that says what happened: a timeout, a lost connection, or
    /// an error code after which the request may have taken effect.
    Info {
        /// Time.
        t: u64,
        /// Client.
        client: u32,
        /// Operation.
        op: u64,
        /// What the client saw.
        reason: String,
    },
    /// A `subscribed` frame: the channel's position when this connection
    /// joined it, and (with `since`) whether everything after `since`
    /// follows.
    Subscribed {
        /// Time.
        t: u64,
        /// Client.
        client: u32,
        /// Connection.
        conn: u32,
        /// The room.
        room: String,
        /// The channel's last offset.
        offset: u64,
        /// Its epoch.
        epoch: String,
        /// `Some` when the subscribe asked to recover.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    /// An event with a position.
    Event {
        /// Time.
        t: u64,
        /// Client.
        client: u32,
        /// Connection.
        conn: u32,
        /// The room.
        room: String,
        /// Offset.
        offset: u64,
        /// Epoch.
        epoch: String,
        /// The event's data.
        data: Value,
    },
    /// This client's last `join` of `room` read the whole channel from
    /// offset 0 after the faults were healed and the workload stopped:
    /// the channel's history and the room's state as they ended.
    FinalRead {
        /// Time.
        t: u64,
        /// The final reader.
        client: u32,
        /// The room.
        room: String,
    },
    /// A fault started or ended.
    Nemesis {
        /// Time.
        t: u64,
        /// The fault's family and kind, e.g. `process/kill`.
        fault: String,
        /// What it hit (a node, a NATS server, a link).
        target: String,
        /// Start or end.
        phase: Phase,
    },
}

impl Record {
    /// The record's time.
    pub fn t(&self) -> u64 {
        match self {
            Record::Connect { t, .. }
            | Record::Disconnect { t, .. }
            | Record::Invoke { t, .. }
            | Record::Ok { t, .. }
            | Record::Error { t, .. }
            | Record::Info { t, .. }
            | Record::Subscribed { t, .. }
            | Record::Event { t, .. }
            | Record::FinalRead { t, .. }
            | Record::Nemesis { t, .. } => *t,
        }
    }
}

/// Appends records to a JSON-lines file, shared by every client task. A
/// record is written whole under the lock, so lines never interleave; each
/// client's records are in the order it saw things.
#[derive(Clone)]
pub struct HistoryWriter {
    inner: Arc<Mutex<Writer>>,
    start: Instant,
}

struct Writer {
    out: std::io::BufWriter<std::fs::File>,
    records: Vec<Record>,
    error: Option<String>,
}

impl HistoryWriter {
    /// Write to `path` (created or truncated); records are also kept in
    /// memory for the checker.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
        Ok(Self {
            inner: Arc::new(Mutex::new(Writer {
                out: std::io::BufWriter::new(file),
                records: Vec::new(),
                error: None,
            })),
            start: Instant::now(),
        })
    }

    /// Microseconds since the run started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Append one record.
    pub fn push(&self, record: Record) {
        let mut w = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if w.error.is_none() {
            let line = serde_json::to_string(&record).map_err(|e| e.to_string());
            let written = line.and_then(|l| writeln!(w.out, "{l}").map_err(|e| e.to_string()));
            if let Err(e) = written {
                w.error = Some(e);
            }
        }
        w.records.push(record);
    }

    /// Flush the file and hand over every record so far (records pushed
    /// after this are written to the file only), with the first error
    /// writing the file, if any: the records are whole either way.
    pub fn finish(&self) -> (Vec<Record>, Option<String>) {
        let mut w = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if w.error.is_none()
            && let Err(e) = w.out.flush()
        {
            w.error = Some(e.to_string());
        }
        let error = w
            .error
            .clone()
            .map(|e| format!("writing the history file: {e}"));
        (std::mem::take(&mut w.records), error)
    }
}

/// Read a history written by [`HistoryWriter`].
pub fn read(path: &Path) -> anyhow::Result<Vec<Record>> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), n + 1))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_json_lines() {
        let dir =
            std::env::temp_dir().join(format!("sluice-faults-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.jsonl");
        let w = HistoryWriter::create(&path).unwrap();
        let records = vec![
            Record::Invoke {
                t: 1,
                client: 2,
                conn: 1,
                op: 3,
                f: OpKind::Send,
                room: "room:a".into(),
                text: Some("c2-3".into()),
                since: None,
            },
            Record::Ok {
                t: 5,
                client: 2,
                op: 3,
                value: serde_json::json!({"seq": 1}),
            },
            Record::Nemesis {
                t: 6,
                fault: "process/kill".into(),
                target: "n1".into(),
                phase: Phase::Start,
            },
        ];
        for r in &records {
            w.push(r.clone());
        }
        assert_eq!(w.finish(), (records.clone(), None));
        assert_eq!(read(&path).unwrap(), records);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(r#"{"type":"invoke","t":1,"#), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
