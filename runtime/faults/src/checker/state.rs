//! Guarantees of handler state, through the chat room's read-modify-write:
//! `chat.send` reads the room's next sequence number, increments it,
//! appends its line and commits; its `ack` says the sequence number it got,
//! and the published event carries it too. `chat.join` reads the room's
//! last lines. Like a counter whose increments are all distinct: two
//! acknowledged sends with one number means one overwrote the other.

use std::collections::{BTreeMap, HashMap};

use super::model::End;
use super::model::{Model, message_text};
use super::publish::ms;
use super::verdict::Verdict;
use crate::history::OpKind;

/// Name of [`no_lost_updates`]'s verdict.
pub const NO_LOST_UPDATES: &str = "state-no-lost-update";
/// Name of [`reads_valid`]'s verdict.
pub const READS_VALID: &str = "state-reads-only-written";
/// Name of [`reads_current`]'s verdict.
pub const READS_CURRENT: &str = "state-reads-not-stale";

/// Every state guarantee.
pub fn check(m: &Model<'_>) -> Vec<Verdict> {
    vec![no_lost_updates(m), reads_valid(m), reads_current(m)]
}

/// Acknowledged read-modify-writes are never lost: each got its own
/// sequence number, in real-time order, the final state includes them, and
/// the event each published carries the number its ack said.
fn no_lost_updates(m: &Model<'_>) -> Verdict {
    let mut v = Verdict::new(
        NO_LOST_UPDATES,
        "acknowledged read-modify-writes each get their own number, in real-time order, and are in the final state",
    );
    for room in &m.rooms {
        let acked: Vec<_> = m
            .ops_of(room, OpKind::Send)
            .filter_map(|o| Some((o, o.acked_seq()?, o.completed()?)))
            .collect();
        let mut by_seq: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (o, seq, _) in &acked {
            v.checked += 1;
            by_seq.entry(*seq).or_default().push(o.name());
        }
        for (seq, names) in &by_seq {
            if names.len() > 1 {
                v.violation(format!(
                    "{room}: {} were all acknowledged with seq {seq} (lost updates)",
                    names.join(", ")
                ));
            }
        }
        // Real time: a send acknowledged before another was invoked got
        // the lower number.
        let mut done: Vec<(u64, u64, String)> = acked
            .iter()
            .map(|(o, seq, t)| (*t, *seq, o.name()))
            .collect();
        done.sort();
        let mut best: Vec<(u64, u64, String)> = Vec::with_capacity(done.len());
        for (t, seq, name) in done {
            let top = match best.last() {
                Some((_, s, n)) if *s > seq => (t, *s, n.clone()),
                _ => (t, seq, name),
            };
            best.push(top);
        }
        for (o, seq, _) in &acked {
            let i = best.partition_point(|(t, _, _)| *t < o.invoked);
            if i > 0 && best[i - 1].1 >= *seq {
                let (t, before, name) = &best[i - 1];
                v.violation(format!(
                    "{room}: {name} was acknowledged at {} with seq {before}, before {} was sent at {}, which got seq {seq}",
                    ms(*t),
                    o.name(),
                    ms(o.invoked)
                ));
            }
        }
        // The final state and the final history.
        let Some(Ok(f)) = m.finals.get(room) else {
            v.cannot_decide(format!("no final read of {room}"));
            continue;
        };
        let Some(lines) = m.ops.get(&f.join).and_then(|j| j.read_lines()) else {
            v.cannot_decide(format!("the final read of {room} has no state"));
            continue;
        };
        let last = lines.last().map_or(0, |(s, _)| *s);
        let window: HashMap<u64, &str> = lines.iter().map(|(s, t)| (*s, t.as_str())).collect();
        for (o, seq, _) in &acked {
            if *seq > last {
                v.violation(format!(
                    "{room}: {} was acknowledged with seq {seq}, but the final state ends at seq {last} (lost)",
                    o.name()
                ));
            } else if let Some(text) = window.get(seq)
                && Some(*text) != o.text.as_deref()
            {
                v.violation(format!(
                    "{room}: {} was acknowledged with seq {seq}, but the final state has {text:?} there (overwritten)",
                    o.name()
                ));
            }
        }
        for e in &f.events {
            let (Some(text), Some(seq)) = (
                message_text(&e.data),
                e.data.get("seq").and_then(|s| s.as_u64()),
            ) else {
                continue;
            };
            if let Some(o) = m.send(text)
                && let Some(acked) = o.acked_seq()
                && acked != seq
            {
                v.violation(format!(
                    "{room}: {} was acknowledged with seq {acked}, but its event at offset {} says seq {seq}",
                    o.name(),
                    e.offset
                ));
            }
        }
    }
    v
}

/// A read sees only values that were written: every line a `join` read
/// was sent to that room, before the read completed, by a send that was
/// not refused, under the number its ack (if any) gave.
fn reads_valid(m: &Model<'_>) -> Verdict {
    let mut v = Verdict::new(
        READS_VALID,
        "a read sees only lines whose send was acknowledged or unanswered, at the number the ack gave",
    );
    for read in m.ops.values().filter(|o| o.kind == OpKind::Join) {
        let Some(lines) = read.read_lines() else {
            continue;
        };
        let Some(done) = read.completed() else {
            continue;
        };
        v.checked += 1;
        for (seq, text) in lines {
            let Some(send) = m.send(&text) else {
                v.violation(format!(
                    "{}: {} read {text:?} at seq {seq}, which no client sent",
                    read.room,
                    read.name()
                ));
                continue;
            };
            if send.room != read.room {
                v.violation(format!(
                    "{}: {} read {text:?}, sent to {}",
                    read.room,
                    read.name(),
                    send.room
                ));
            } else if send.invoked > done {
                v.violation(format!(
                    "{}: {} read {text:?} before it was sent",
                    read.room,
                    read.name()
                ));
            } else if let End::Failed { code, .. } = &send.end {
                v.violation(format!(
                    "{}: {} read {text:?} at seq {seq}, but its send was refused ({code})",
                    read.room,
                    read.name()
                ));
            } else if let Some(acked) = send.acked_seq()
                && acked != seq
            {
                v.violation(format!(
                    "{}: {} read {text:?} at seq {seq}, but its send was acknowledged with seq {acked}",
                    read.room,
                    read.name()
                ));
            }
        }
    }
    v
}

/// A read begun after a write was acknowledged sees it (or something
/// newer): the state is linearizable, not merely eventually consistent.
fn reads_current(m: &Model<'_>) -> Verdict {
    let mut v = Verdict::new(
        READS_CURRENT,
        "a read begun after a write was acknowledged sees it or a later one",
    );
    for room in &m.rooms {
        let mut done: Vec<(u64, u64, String)> = m
            .ops_of(room, OpKind::Send)
            .filter_map(|o| Some((o.completed()?, o.acked_seq()?, o.name())))
            .collect();
        done.sort();
        let mut best: Vec<(u64, u64, String)> = Vec::with_capacity(done.len());
        for (t, seq, name) in done {
            let top = match best.last() {
                Some((_, s, n)) if *s > seq => (t, *s, n.clone()),
                _ => (t, seq, name),
            };
            best.push(top);
        }
        for read in m.ops_of(room, OpKind::Join) {
            let Some(lines) = read.read_lines() else {
                continue;
            };
            v.checked += 1;
            let seen = lines.last().map_or(0, |(s, _)| *s);
            let i = best.partition_point(|(t, _, _)| *t < read.invoked);
            if i > 0 && best[i - 1].1 > seen {
                let (t, seq, name) = &best[i - 1];
                v.violation(format!(
                    "{room}: {} (sent at {}) read up to seq {seen}, but {name} had been acknowledged with seq {seq} at {}",
                    read.name(),
                    ms(read.invoked),
                    ms(*t)
                ));
            }
        }
    }
    v
}

/// Indeterminate sends: how many took effect (their line is in the final
/// history, or a read saw it) and how many were never seen.
pub fn indeterminate_sends(m: &Model<'_>) -> (u64, u64) {
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for f in m.finals.values().flatten() {
        seen.extend(f.events.iter().filter_map(|e| e.text()));
    }
    let mut read_texts: std::collections::HashSet<String> = std::collections::HashSet::new();
    for o in m.ops.values() {
        if let Some(lines) = o.read_lines() {
            read_texts.extend(lines.into_iter().map(|(_, t)| t));
        }
    }
    let (mut took, mut not) = (0, 0);
    for o in m.ops.values() {
        if let (OpKind::Send, End::Indeterminate { .. }, Some(t)) = (o.kind, &o.end, &o.text) {
            if seen.contains(t.as_str()) || read_texts.contains(t) {
                took += 1;
            } else {
                not += 1;
            }
        }
    }
    (took, not)
}
