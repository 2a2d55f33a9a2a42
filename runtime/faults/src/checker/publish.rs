//! Guarantees of channels with history: what an acknowledged publish
//! promises, and what a subscriber that recovers across drops sees.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::model::End;
use super::model::{FinalRead, Model, message_text};
use super::verdict::Verdict;
use crate::history::{OpKind, Position, Record};

/// Name of [`stored_once`]'s verdict.
pub const STORED_ONCE: &str = "acked-publish-stored-once";
/// Name of [`stable_positions`]'s verdict.
pub const STABLE_POSITIONS: &str = "one-event-per-offset";
/// Name of [`history_order`]'s verdict.
pub const HISTORY_ORDER: &str = "history-in-real-time-order";
/// Name of [`subscribers`]' verdict.
pub const SUBSCRIBERS: &str = "subscriber-gapless";

/// Every publish guarantee.
pub fn check(m: &Model<'_>) -> Vec<Verdict> {
    vec![
        stored_once(m),
        stable_positions(m),
        history_order(m),
        subscribers(m),
    ]
}

fn finals<'m>(m: &'m Model<'_>, v: &mut Verdict) -> Vec<(&'m str, &'m FinalRead)> {
    let mut out = Vec::new();
    for (room, f) in &m.finals {
        match f {
            Ok(f) => out.push((room.as_str(), f)),
            Err(why) => v.cannot_decide(why.clone()),
        }
    }
    if m.finals.is_empty() {
        v.cannot_decide("the history has no operations".into());
    }
    out
}

/// Every acknowledged publish is in its channel's history exactly once
/// (the final read); no publish is there twice; nothing is there that was
/// never published or whose publish was refused.
fn stored_once(m: &Model<'_>) -> Verdict {
    let mut v = Verdict::new(
        STORED_ONCE,
        "every acknowledged publish is in the channel's history exactly once; a refused one never; an unanswered one at most once",
    );
    for (room, f) in finals(m, &mut v) {
        let mut texts: HashMap<&str, Vec<u64>> = HashMap::new();
        let mut joined: HashMap<&str, u64> = HashMap::new();
        for e in &f.events {
            if let Some(t) = e.text() {
                texts.entry(t).or_default().push(e.offset);
            } else if let Some(s) = e.joined() {
                *joined.entry(s).or_default() += 1;
            } else {
                v.violation(format!(
                    "{room}: offset {} holds an event no client published: {}",
                    e.offset, e.data
                ));
            }
        }
        for send in m.ops_of(room, OpKind::Send) {
            let Some(text) = send.text.as_deref() else {
                continue;
            };
            v.checked += 1;
            let at = texts.remove(text).unwrap_or_default();
            match (&send.end, at.len()) {
                (End::Ok { .. }, 1)
                | (End::Indeterminate { .. }, 0 | 1)
                | (End::Failed { .. }, 0) => {}
                (End::Ok { t, .. }, 0) => v.violation(format!(
                    "{room}: {} was acknowledged at {} but is not in the history (lost)",
                    send.name(),
                    ms(*t)
                )),
                (End::Failed { code, .. }, _) => v.violation(format!(
                    "{room}: {} was refused ({code}) but is in the history at {at:?}",
                    send.name()
                )),
                (_, _) => v.violation(format!(
                    "{room}: {} is in the history {} times, at offsets {at:?} (duplicate)",
                    send.name(),
                    at.len()
                )),
            }
        }
        for (text, at) in texts {
            v.violation(format!(
                "{room}: the history holds {text:?} at {at:?}, which no client sent"
            ));
        }
        // `joined` events: one per join of the subject, whose count must
        // lie between its acknowledged and its possibly-taken joins.
        let mut bounds: HashMap<String, (u64, u64)> = HashMap::new();
        for join in m.ops_of(room, OpKind::Join) {
            if m.is_final_join((join.client, join.op)) {
                continue;
            }
            v.checked += 1;
            let b = bounds.entry(format!("c{}", join.client)).or_default();
            match join.end {
                End::Ok { .. } => {
                    b.0 += 1;
                    b.1 += 1;
                }
                End::Indeterminate { .. } => b.1 += 1,
                End::Failed { .. } => {}
            }
        }
        for (subject, (low, high)) in &bounds {
            let n = joined.remove(subject.as_str()).unwrap_or(0);
            if n < *low {
                v.violation(format!(
                    "{room}: {subject} had {low} acknowledged joins but the history has {n} joined events (lost)"
                ));
            } else if n > *high {
                v.violation(format!(
                    "{room}: {subject} made at most {high} joins that may have published, but the history has {n} joined events (duplicate)"
                ));
            }
        }
        for (subject, n) in joined {
            v.violation(format!(
                "{room}: {n} joined events from {subject}, which never joined"
            ));
        }
    }
    v
}

/// No two different events share an offset within an epoch, and an event
/// is seen at one offset only, by every subscriber and the final read.
fn stable_positions(m: &Model<'_>) -> Verdict {
    let mut v = Verdict::new(
        STABLE_POSITIONS,
        "no two different events share an offset within an epoch; every subscriber sees an event at the same offset",
    );
    let mut at: HashMap<(&str, &str, u64), (&serde_json::Value, u32)> = HashMap::new();
    let mut of_text: HashMap<(&str, &str, &str), (u64, u32)> = HashMap::new();
    for r in m.records {
        let Record::Event {
            client,
            room,
            offset,
            epoch,
            data,
            ..
        } = r
        else {
            continue;
        };
        v.checked += 1;
        match at.get(&(room.as_str(), epoch.as_str(), *offset)) {
            Some((first, by)) if *first != data => v.violation(format!(
                "{room} epoch {epoch} offset {offset}: client {by} saw {first}, client {client} saw {data}"
            )),
            Some(_) => {}
            None => {
                at.insert((room, epoch, *offset), (data, *client));
            }
        }
        if let Some(text) = message_text(data) {
            match of_text.get(&(room.as_str(), epoch.as_str(), text)) {
                Some((o, by)) if o != offset => v.violation(format!(
                    "{room} epoch {epoch}: {text:?} at offset {o} for client {by}, at {offset} for client {client}"
                )),
                Some(_) => {}
                None => {
                    of_text.insert((room, epoch, text), (*offset, *client));
                }
            }
        }
    }
    v
}

/// The final history is in strictly increasing offsets, and publishes
/// are stored in real-time order: one acknowledged before another was
/// sent has the lower offset.
fn history_order(m: &Model<'_>) -> Verdict {
    let mut v = Verdict::new(
        HISTORY_ORDER,
        "offsets strictly increase; a publish acknowledged before another was sent has the lower offset",
    );
    for (room, f) in finals(m, &mut v) {
        let mut offsets: HashMap<&str, u64> = HashMap::new();
        let mut last = 0;
        for e in &f.events {
            v.checked += 1;
            if e.offset <= last {
                v.violation(format!(
                    "{room}: the final read got offset {} after {last}",
                    e.offset
                ));
            }
            last = e.offset;
            if e.epoch != f.epoch {
                v.violation(format!(
                    "{room}: an event of epoch {} in a read of epoch {}",
                    e.epoch, f.epoch
                ));
            }
            if let Some(t) = e.text() {
                offsets.insert(t, e.offset);
            }
        }
        // Acknowledged sends with their offsets, by completion time, and
        // the highest offset among those completed so far: a send must get
        // a higher offset than every send completed before it was invoked.
        let mut done: Vec<(u64, u64, String)> = m
            .ops_of(room, OpKind::Send)
            .filter_map(|o| {
                let text = o.text.as_deref()?;
                Some((o.completed()?, *offsets.get(text)?, o.name()))
            })
            .collect();
        done.sort();
        let mut best: Vec<(u64, u64, String)> = Vec::with_capacity(done.len());
        for (t, offset, name) in done {
            let top = match best.last() {
                Some((_, o, n)) if *o > offset => (t, *o, n.clone()),
                _ => (t, offset, name),
            };
            best.push(top);
        }
        for o in m.ops_of(room, OpKind::Send) {
            let Some(offset) = o.text.as_deref().and_then(|t| offsets.get(t)) else {
                continue;
            };
            let i = best.partition_point(|(t, _, _)| *t < o.invoked);
            if i > 0 {
                let (t, before, name) = &best[i - 1];
                if before > offset {
                    v.violation(format!(
                        "{room}: {name} was acknowledged at {} with offset {before}, before {} was sent at {}, which got offset {offset}",
                        ms(*t),
                        o.name(),
                        ms(o.invoked)
                    ));
                }
            }
        }
    }
    v
}

/// A client's subscription to one room across its connections: a span
/// starts at a subscribe that did not recover (or was told
/// `recovered: false`) and goes on across recoveries.
struct Span {
    epoch: String,
    /// The last offset received (or the position subscribed at).
    last: u64,
    /// The last subscribed position on the current connection, until the
    /// join's acknowledgement proves everything up to it was replayed.
    pending: Option<(u32, u64)>,
    /// Whether the next event is the first after a recovery.
    after_recovery: bool,
}

/// Every subscriber sees every event of the channel exactly once, in
/// order, across its recoveries, unless it was told `recovered: false`.
fn subscribers(m: &Model<'_>) -> Verdict {
    let mut v = Verdict::new(
        SUBSCRIBERS,
        "a subscriber sees every event exactly once, in order, across drops and recoveries, unless told recovered:false",
    );
    let mut canonical: HashMap<&str, (&str, BTreeSet<u64>)> = HashMap::new();
    for (room, f) in finals(m, &mut v) {
        canonical.insert(
            room,
            (
                f.epoch.as_str(),
                f.events.iter().map(|e| e.offset).collect(),
            ),
        );
    }
    let finals: BTreeSet<u32> = m.finals.values().flatten().map(|f| f.client).collect();
    let missed = |room: &str, epoch: &str, from: u64, to: u64| -> Vec<u64> {
        match canonical.get(room) {
            Some((e, offsets)) if *e == epoch && from < to => {
                offsets.range(from + 1..to).copied().collect()
            }
            _ => Vec::new(),
        }
    };
    let mut spans: BTreeMap<(u32, &str), Span> = BTreeMap::new();
    // Joins in flight, by (client, op): (conn, room, since).
    let mut joins: HashMap<(u32, u64), (u32, &str, Option<&Position>)> = HashMap::new();
    for r in m.records {
        match r {
            Record::Invoke {
                client,
                conn,
                op,
                f: OpKind::Join,
                room,
                since,
                ..
            } => {
                joins.retain(|(c, _), (_, r, _)| c != client || *r != room.as_str());
                joins.insert((*client, *op), (*conn, room, since.as_ref()));
            }
            Record::Subscribed {
                client,
                conn,
                room,
                offset,
                epoch,
                recovered,
                ..
            } if !finals.contains(client) => {
                let key = (*client, room.as_str());
                // A subscribe is refused (`unavailable`) rather than
                // acknowledged without a position (docs/faults.md, Found 7).
                if epoch.is_empty() {
                    v.checked += 1;
                    v.violation(format!(
                        "client {client} {room} conn {conn}: subscribe acknowledged without a position (epoch \"\", offset {offset})"
                    ));
                }
                let since = joins
                    .iter()
                    .find(|((c, _), (cn, r, _))| c == client && cn == conn && *r == room.as_str())
                    .and_then(|(_, (_, _, s))| *s);
                match (recovered, spans.get_mut(&key), since) {
                    (Some(true), Some(span), Some(since)) if since.epoch == *epoch => {
                        v.checked += 1;
                        // Resuming from further back only repeats events
                        // (the span goes back with it); from further ahead
                        // would hide a gap: the workload never does that.
                        if since.offset > span.last {
                            v.violation(format!(
                                "client {client} {room}: resumed from {} but had seen only up to {} (a workload bug: the checker needs the client's own position)",
                                since.offset, span.last
                            ));
                        }
                        if span.epoch != *epoch {
                            v.violation(format!(
                                "client {client} {room}: recovered into epoch {epoch} from a span of epoch {}",
                                span.epoch
                            ));
                            span.epoch = epoch.clone();
                        }
                        span.last = since.offset;
                        span.after_recovery = true;
                        span.pending = Some((*conn, *offset));
                    }
                    (Some(true), _, since) => {
                        v.checked += 1;
                        v.violation(format!(
                            "client {client} {room}: told recovered:true in epoch {epoch} for since {since:?}"
                        ));
                        spans.insert(key, new_span(epoch, *conn, *offset));
                    }
                    _ => {
                        // A new span: nothing before it is owed (a span
                        // ends where its client stopped knowing more, and
                        // that was checked at each acknowledgement).
                        spans.insert(key, new_span(epoch, *conn, *offset));
                    }
                }
            }
            Record::Event {
                client,
                conn,
                room,
                offset,
                epoch,
                ..
            } if !finals.contains(client) => {
                v.checked += 1;
                let Some(span) = spans.get_mut(&(*client, room.as_str())) else {
                    v.violation(format!(
                        "client {client} {room}: event {offset} before any subscribe"
                    ));
                    continue;
                };
                if span.epoch != *epoch {
                    v.violation(format!(
                        "client {client} {room} conn {conn}: event of epoch {epoch} in a subscription of epoch {}",
                        span.epoch
                    ));
                    continue;
                }
                if *offset <= span.last {
                    v.violation(format!(
                        "client {client} {room} conn {conn}: offset {offset} after {} ({})",
                        span.last,
                        if *offset == span.last {
                            "duplicate"
                        } else {
                            "out of order or duplicate"
                        }
                    ));
                    continue;
                }
                let gap = missed(room, epoch, span.last, *offset);
                if !gap.is_empty() {
                    v.violation(format!(
                        "client {client} {room} conn {conn}: missed offsets {} between {} and {offset} ({})",
                        list(&gap),
                        span.last,
                        if span.after_recovery {
                            "right after a recovery told recovered:true"
                        } else {
                            "live, on an open connection"
                        }
                    ));
                }
                span.last = *offset;
                span.after_recovery = false;
            }
            Record::Ok { client, op, .. } if !finals.contains(client) => {
                let Some((conn, room, _)) = joins.remove(&(*client, *op)) else {
                    continue;
                };
                let Some(span) = spans.get_mut(&(*client, room)) else {
                    continue;
                };
                // The ack follows every replayed event.
                if let Some((c, upto)) = span.pending.take()
                    && c == conn
                    && upto > span.last
                {
                    let gap = missed(room, &span.epoch, span.last, upto + 1);
                    if !gap.is_empty() {
                        v.violation(format!(
                            "client {client} {room} conn {conn}: the subscribe at {upto} did not replay offsets {} (its last event: {})",
                            list(&gap),
                            span.last
                        ));
                    }
                    span.last = upto;
                    span.after_recovery = false;
                }
            }
            Record::Disconnect { client, conn, .. } => {
                for ((c, _), span) in spans.iter_mut() {
                    if c == client && matches!(span.pending, Some((pc, _)) if pc == *conn) {
                        span.pending = None;
                    }
                }
            }
            _ => {}
        }
    }
    v
}

fn new_span(epoch: &str, conn: u32, offset: u64) -> Span {
    Span {
        epoch: epoch.to_owned(),
        last: offset,
        pending: Some((conn, offset)),
        after_recovery: false,
    }
}

fn list(offsets: &[u64]) -> String {
    if offsets.len() <= 6 {
        format!("{offsets:?}")
    } else {
        format!(
            "[{}, {}, {} ... {}] ({} events)",
            offsets[0],
            offsets[1],
            offsets[2],
            offsets[offsets.len() - 1],
            offsets.len()
        )
    }
}

/// Microseconds as milliseconds, for counter-examples.
pub fn ms(t: u64) -> String {
    format!("{:.1} ms", t as f64 / 1000.0)
}
