//! The checker against hand-made histories: a valid one holds everywhere,
//! and each kind of violation is caught by the guarantee it breaks (and
//! only a checker that can fail is worth running).

use serde_json::{Value, json};

use super::publish::{HISTORY_ORDER, STABLE_POSITIONS, STORED_ONCE, SUBSCRIBERS};
use super::state::{NO_LOST_UPDATES, READS_CURRENT, READS_VALID};
use super::{Report, Status, check};
use crate::history::{OpKind, Phase, Position, Record};

const R: &str = "room:a";
const E: &str = "ep1";

/// A history under construction; every record gets the next time.
#[derive(Default, Clone)]
struct H {
    recs: Vec<Record>,
    t: u64,
}

impl H {
    fn tick(&mut self) -> u64 {
        self.t += 10;
        self.t
    }

    fn connect(&mut self, client: u32, conn: u32) -> &mut Self {
        let t = self.tick();
        self.recs.push(Record::Connect {
            t,
            client,
            conn,
            node: "n1".into(),
        });
        self
    }

    fn disconnect(&mut self, client: u32, conn: u32) -> &mut Self {
        let t = self.tick();
        self.recs.push(Record::Disconnect {
            t,
            client,
            conn,
            reason: "lost".into(),
        });
        self
    }

    fn send(&mut self, client: u32, conn: u32, op: u64) -> &mut Self {
        let t = self.tick();
        self.recs.push(Record::Invoke {
            t,
            client,
            conn,
            op,
            f: OpKind::Send,
            room: R.into(),
            text: Some(text(client, op)),
            since: None,
        });
        self
    }

    fn ok(&mut self, client: u32, op: u64, value: Value) -> &mut Self {
        let t = self.tick();
        self.recs.push(Record::Ok {
            t,
            client,
            op,
            value,
        });
        self
    }

    fn error(&mut self, client: u32, op: u64, code: &str) -> &mut Self {
        let t = self.tick();
        self.recs.push(Record::Error {
            t,
            client,
            op,
            code: code.into(),
        });
        self
    }

    fn info(&mut self, client: u32, op: u64) -> &mut Self {
        let t = self.tick();
        self.recs.push(Record::Info {
            t,
            client,
            op,
            reason: "timeout".into(),
        });
        self
    }

    fn join(&mut self, client: u32, conn: u32, op: u64, since: Option<u64>) -> &mut Self {
        let t = self.tick();
        self.recs.push(Record::Invoke {
            t,
            client,
            conn,
            op,
            f: OpKind::Join,
            room: R.into(),
            text: None,
            since: since.map(|offset| Position {
                offset,
                epoch: E.into(),
            }),
        });
        self
    }

    fn subscribed(
        &mut self,
        client: u32,
        conn: u32,
        offset: u64,
        recovered: Option<bool>,
    ) -> &mut Self {
        let t = self.tick();
        self.recs.push(Record::Subscribed {
            t,
            client,
            conn,
            room: R.into(),
            offset,
            epoch: E.into(),
            recovered,
        });
        self
    }

    fn event(&mut self, client: u32, conn: u32, offset: u64, data: Value) -> &mut Self {
        let t = self.tick();
        self.recs.push(Record::Event {
            t,
            client,
            conn,
            room: R.into(),
            offset,
            epoch: E.into(),
            data,
        });
        self
    }

    fn final_read(&mut self, client: u32) -> &mut Self {
        let t = self.tick();
        self.recs.push(Record::FinalRead {
            t,
            client,
            room: R.into(),
        });
        self
    }

    fn check(&self) -> Report {
        check(&self.recs)
    }
}

fn text(client: u32, op: u64) -> String {
    format!("c{client}-{op}")
}

fn msg(client: u32, op: u64, seq: u64) -> Value {
    json!({"kind": "message", "seq": seq, "from": format!("c{client}"), "text": text(client, op), "at": 0})
}

fn joined(client: u32) -> Value {
    json!({"kind": "joined", "from": format!("c{client}")})
}

fn lines(items: &[(u64, u32, u64)]) -> Value {
    let history: Vec<Value> = items
        .iter()
        .map(|(seq, c, op)| json!({"seq": seq, "from": format!("c{c}"), "text": text(*c, *op), "at": 0}))
        .collect();
    json!({ "history": history })
}

/// Client 1 subscribes and stays; client 2 joins, sends twice, drops,
/// recovers on a new connection and sends again; client 3's send times out
/// and (as it may) took effect; client 4's send is refused; the final
/// reader (9) reads everything from offset 0.
///
/// Offsets: 1 joined c1, 2 joined c2, 3 c2-2 (seq 1), 4 c2-3 (seq 2),
/// 5 c3-1 (seq 3, unanswered), 6 joined c2 (the recovery's), 7 c2-5 (seq 4).
fn valid() -> H {
    let mut h = H::default();
    h.connect(1, 1)
        .join(1, 1, 1, None)
        .subscribed(1, 1, 0, None);
    h.event(1, 1, 1, joined(1)).ok(1, 1, lines(&[]));
    h.connect(2, 1)
        .join(2, 1, 1, None)
        .subscribed(2, 1, 1, None);
    h.event(1, 1, 2, joined(2))
        .event(2, 1, 2, joined(2))
        .ok(2, 1, lines(&[]));
    h.send(2, 1, 2)
        .event(1, 1, 3, msg(2, 2, 1))
        .event(2, 1, 3, msg(2, 2, 1))
        .ok(2, 2, json!({"seq": 1}));
    h.send(2, 1, 3)
        .event(1, 1, 4, msg(2, 3, 2))
        .ok(2, 3, json!({"seq": 2}));
    // Client 2 lost offset 4 with its connection; client 3's send goes
    // unanswered but lands; client 4's is refused.
    h.disconnect(2, 1);
    h.connect(3, 1)
        .send(3, 1, 1)
        .event(1, 1, 5, msg(3, 1, 3))
        .info(3, 1);
    h.connect(4, 1).send(4, 1, 1).error(4, 1, "conflict");
    // Client 2 recovers from 3: gets 4 and 5 replayed, then its join.
    h.connect(2, 2)
        .join(2, 2, 4, Some(3))
        .subscribed(2, 2, 5, Some(true));
    h.event(2, 2, 4, msg(2, 3, 2)).event(2, 2, 5, msg(3, 1, 3));
    h.event(1, 1, 6, joined(2)).event(2, 2, 6, joined(2));
    h.ok(2, 4, lines(&[(1, 2, 2), (2, 2, 3), (3, 3, 1)]));
    h.send(2, 2, 5)
        .event(1, 1, 7, msg(2, 5, 4))
        .event(2, 2, 7, msg(2, 5, 4))
        .ok(2, 5, json!({"seq": 4}));
    h.recs.push(Record::Nemesis {
        t: 1,
        fault: "process/kill".into(),
        target: "n1".into(),
        phase: Phase::Start,
    });
    // The final reader.
    h.connect(9, 1)
        .join(9, 1, 1, None)
        .subscribed(9, 1, 7, None);
    h.ok(9, 1, lines(&[(1, 2, 2), (2, 2, 3), (3, 3, 1), (4, 2, 5)]));
    h.disconnect(9, 1);
    h.connect(9, 2)
        .join(9, 2, 2, Some(0))
        .subscribed(9, 2, 8, Some(true));
    h.event(9, 2, 1, joined(1))
        .event(9, 2, 2, joined(2))
        .event(9, 2, 3, msg(2, 2, 1))
        .event(9, 2, 4, msg(2, 3, 2))
        .event(9, 2, 5, msg(3, 1, 3))
        .event(9, 2, 6, joined(2))
        .event(9, 2, 7, msg(2, 5, 4))
        .event(9, 2, 8, joined(9));
    h.ok(9, 2, lines(&[(1, 2, 2), (2, 2, 3), (3, 3, 1), (4, 2, 5)]));
    h.final_read(9);
    h
}

/// Every verdict, with the ones named in `broken` violated and the rest
/// holding.
fn assert_only(report: &Report, broken: &[&str]) {
    for v in &report.verdicts {
        let want = if broken.contains(&v.name) {
            Status::Violated
        } else {
            Status::Holds
        };
        assert_eq!(v.status(), want, "{}\n{report}", v.name);
    }
}

/// Replace the `n`th record matching `pick` with `with` (or drop it).
fn edit(h: &mut H, pick: impl Fn(&Record) -> bool, with: Option<Record>) {
    let i = h.recs.iter().position(pick).expect("a record to edit");
    match with {
        Some(r) => h.recs[i] = r,
        None => {
            h.recs.remove(i);
        }
    }
}

fn is_event(r: &Record, client: u32, offset: u64) -> bool {
    matches!(r, Record::Event { client: c, offset: o, .. } if *c == client && *o == offset)
}

#[test]
fn a_valid_history_holds_everywhere() {
    let report = valid().check();
    assert!(report.all_hold(), "{report}");
    assert_eq!(report.counts.indeterminate_sends, (1, 0), "{report}");
    assert_eq!(report.counts.recoveries, (2, 0));
    assert_eq!(report.counts.faults["process/kill"], 1);
    assert_eq!(report.counts.ops["send ok"], 3);
    assert_eq!(report.counts.ops["send failed"], 1);
    assert_eq!(report.counts.ops["send indeterminate"], 1);
}

#[test]
fn an_unanswered_send_that_never_landed_is_allowed_too() {
    let mut h = valid();
    // Client 3's send did not land: no event 5 anywhere, and seq 3 was
    // never given (the next send got it).
    h.recs
        .retain(|r| !matches!(r, Record::Event { offset: 5, .. }));
    for r in &mut h.recs {
        if let Record::Ok { value, .. } = r
            && let Some(history) = value.get_mut("history")
        {
            *history = Value::Array(
                history
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|l| l["text"] != "c3-1")
                    .cloned()
                    .collect(),
            );
        }
    }
    let report = h.check();
    assert!(report.all_hold(), "{report}");
    assert_eq!(report.counts.indeterminate_sends, (0, 1));
}

#[test]
fn a_lost_acknowledged_publish_is_caught() {
    let mut h = valid();
    // The final read lacks offset 4, which c2-3's ack promised.
    edit(&mut h, |r| is_event(r, 9, 4), None);
    let report = h.check();
    let v = report.verdict(STORED_ONCE).unwrap();
    assert_eq!(v.status(), Status::Violated, "{report}");
    assert!(
        v.examples[0].contains("send c2-3 was acknowledged"),
        "{report}"
    );
    assert!(v.examples[0].contains("lost"), "{report}");
    // And the subscribers that saw 4 are not faulted for it.
    assert_eq!(report.verdict(SUBSCRIBERS).unwrap().status(), Status::Holds);
}

#[test]
fn a_duplicated_publish_is_caught() {
    let mut h = valid();
    // c2-2 stored twice: the final read has it at 3 and again at 8.
    edit(
        &mut h,
        |r| is_event(r, 9, 8),
        Some(Record::Event {
            t: 0,
            client: 9,
            conn: 2,
            room: R.into(),
            offset: 8,
            epoch: E.into(),
            data: msg(2, 2, 1),
        }),
    );
    let report = h.check();
    let v = report.verdict(STORED_ONCE).unwrap();
    assert_eq!(v.status(), Status::Violated, "{report}");
    assert!(
        v.examples
            .iter()
            .any(|e| e.contains("2 times") && e.contains("duplicate")),
        "{report}"
    );
}

#[test]
fn a_subscriber_seeing_events_out_of_order_is_caught() {
    let mut h = valid();
    // Client 1 got 4 before 3.
    let i3 = h.recs.iter().position(|r| is_event(r, 1, 3)).unwrap();
    let i4 = h.recs.iter().position(|r| is_event(r, 1, 4)).unwrap();
    let (a, b) = (h.recs[i3].clone(), h.recs[i4].clone());
    h.recs[i3] = b;
    h.recs[i4] = a;
    let report = h.check();
    let v = report.verdict(SUBSCRIBERS).unwrap();
    assert_eq!(v.status(), Status::Violated, "{report}");
    assert!(
        v.examples.iter().any(|e| e.contains("offset 3 after 4")),
        "{report}"
    );
}

#[test]
fn a_subscriber_seeing_an_event_twice_is_caught() {
    let mut h = valid();
    let i = h.recs.iter().position(|r| is_event(r, 1, 3)).unwrap();
    let dup = h.recs[i].clone();
    h.recs.insert(i + 1, dup);
    let report = h.check();
    assert_only(&report, &[SUBSCRIBERS]);
    assert!(
        report.verdict(SUBSCRIBERS).unwrap().examples[0].contains("duplicate"),
        "{report}"
    );
}

#[test]
fn a_history_stored_against_real_time_order_is_caught() {
    let mut h = valid();
    // c2-5 was sent after c2-3 was acknowledged, yet the final history
    // (and every subscriber) has it first: swap what offsets 4 and 7 hold.
    for r in &mut h.recs {
        if let Record::Event { offset, data, .. } = r {
            if *offset == 4 {
                *data = msg(2, 5, 4);
            } else if *offset == 7 {
                *data = msg(2, 3, 2);
            }
        }
    }
    let report = h.check();
    let v = report.verdict(HISTORY_ORDER).unwrap();
    assert_eq!(v.status(), Status::Violated, "{report}");
    assert!(
        v.examples[0].contains("send c2-3 was acknowledged"),
        "{report}"
    );
}

#[test]
fn two_events_at_one_offset_in_one_epoch_are_caught() {
    let mut h = valid();
    // Client 1 saw something else at offset 4 than everyone else.
    edit(
        &mut h,
        |r| is_event(r, 1, 4),
        Some(Record::Event {
            t: 0,
            client: 1,
            conn: 1,
            room: R.into(),
            offset: 4,
            epoch: E.into(),
            data: json!({"kind": "message", "seq": 9, "from": "c5", "text": "c5-1", "at": 0}),
        }),
    );
    let report = h.check();
    let v = report.verdict(STABLE_POSITIONS).unwrap();
    assert_eq!(v.status(), Status::Violated, "{report}");
    assert!(v.examples[0].contains("offset 4"), "{report}");
}

#[test]
fn an_event_seen_at_two_offsets_is_caught() {
    let mut h = valid();
    // Client 1 saw c2-2 at 3; client 2's recovery replayed it again as
    // 5 (and the final read agrees with client 1).
    let i = h.recs.iter().position(|r| is_event(r, 2, 5)).unwrap();
    h.recs[i] = Record::Event {
        t: 0,
        client: 2,
        conn: 2,
        room: R.into(),
        offset: 5,
        epoch: E.into(),
        data: msg(2, 2, 1),
    };
    let report = h.check();
    let v = report.verdict(STABLE_POSITIONS).unwrap();
    assert_eq!(v.status(), Status::Violated, "{report}");
}

#[test]
fn a_recovery_that_skips_an_event_is_caught() {
    let mut h = valid();
    // Told recovered:true from 3, but 4 never came.
    edit(&mut h, |r| is_event(r, 2, 4), None);
    let report = h.check();
    assert_only(&report, &[SUBSCRIBERS]);
    let e = &report.verdict(SUBSCRIBERS).unwrap().examples[0];
    assert!(e.contains("missed offsets [4]"), "{report}");
    assert!(e.contains("after a recovery"), "{report}");
}

#[test]
fn a_live_gap_on_an_open_connection_is_caught() {
    let mut h = valid();
    edit(&mut h, |r| is_event(r, 1, 5), None);
    let report = h.check();
    assert_only(&report, &[SUBSCRIBERS]);
    let e = &report.verdict(SUBSCRIBERS).unwrap().examples[0];
    assert!(
        e.contains("missed offsets [5]") && e.contains("live"),
        "{report}"
    );
}

#[test]
fn a_subscribe_acknowledged_without_a_position_is_caught() {
    let mut h = valid();
    for r in &mut h.recs {
        if let Record::Subscribed {
            client: 1, epoch, ..
        } = r
        {
            epoch.clear();
        }
    }
    let report = h.check();
    let v = report.verdict(SUBSCRIBERS).unwrap();
    assert_eq!(v.status(), Status::Violated, "{report}");
    assert!(
        v.examples
            .iter()
            .any(|e| e.contains("client 1") && e.contains("without a position")),
        "{report}"
    );
}

#[test]
fn a_recovery_told_false_owes_nothing() {
    let mut h = valid();
    // The recovery was refused (recovered:false) and replayed nothing.
    h.recs.retain(|r| !is_event(r, 2, 4) && !is_event(r, 2, 5));
    for r in &mut h.recs {
        if let Record::Subscribed {
            client: 2,
            conn: 2,
            recovered,
            ..
        } = r
        {
            *recovered = Some(false);
        }
    }
    let report = h.check();
    assert!(report.all_hold(), "{report}");
    assert_eq!(report.counts.recoveries, (1, 1));
}

#[test]
fn a_refused_publish_that_took_effect_is_caught() {
    let mut h = valid();
    // Client 4's send was refused with `conflict`, yet it is in the history.
    edit(
        &mut h,
        |r| is_event(r, 9, 8),
        Some(Record::Event {
            t: 0,
            client: 9,
            conn: 2,
            room: R.into(),
            offset: 8,
            epoch: E.into(),
            data: msg(4, 1, 5),
        }),
    );
    let report = h.check();
    let v = report.verdict(STORED_ONCE).unwrap();
    assert!(
        v.examples.iter().any(|e| e.contains("refused (conflict)")),
        "{report}"
    );
}

#[test]
fn a_lost_update_is_caught() {
    let mut h = valid();
    // c2-5 read the state from before c2-3 and was acknowledged with the
    // same number: c2-3's write was overwritten.
    for r in &mut h.recs {
        match r {
            Record::Ok {
                client: 2,
                op: 5,
                value,
                ..
            } => *value = json!({"seq": 2}),
            Record::Event {
                offset: 7, data, ..
            } => *data = msg(2, 5, 2),
            _ => {}
        }
    }
    let report = h.check();
    let v = report.verdict(NO_LOST_UPDATES).unwrap();
    assert_eq!(v.status(), Status::Violated, "{report}");
    assert!(
        v.examples[0].contains("send c2-3, send c2-5 were all acknowledged with seq 2"),
        "{report}"
    );
}

#[test]
fn a_state_that_rolled_back_is_caught() {
    let mut h = valid();
    // The final state ends at seq 3: c2-5's acknowledged write is gone.
    for r in &mut h.recs {
        if let Record::Ok {
            client: 9,
            op: 2,
            value,
            ..
        } = r
        {
            *value = lines(&[(1, 2, 2), (2, 2, 3), (3, 3, 1)]);
        }
    }
    let report = h.check();
    let v = report.verdict(NO_LOST_UPDATES).unwrap();
    assert_eq!(v.status(), Status::Violated, "{report}");
    assert!(
        v.examples[0].contains("final state ends at seq 3"),
        "{report}"
    );
}

#[test]
fn a_read_of_a_value_never_written_is_caught() {
    let mut h = valid();
    for r in &mut h.recs {
        if let Record::Ok {
            client: 2,
            op: 4,
            value,
            ..
        } = r
        {
            *value = lines(&[(1, 2, 2), (2, 2, 3), (3, 7, 7)]);
        }
    }
    let report = h.check();
    let v = report.verdict(READS_VALID).unwrap();
    assert_eq!(v.status(), Status::Violated, "{report}");
    assert!(v.examples[0].contains("which no client sent"), "{report}");
}

#[test]
fn a_read_of_a_refused_write_is_caught() {
    let mut h = valid();
    for r in &mut h.recs {
        if let Record::Ok {
            client: 2,
            op: 4,
            value,
            ..
        } = r
        {
            *value = lines(&[(1, 2, 2), (2, 2, 3), (3, 4, 1)]);
        }
    }
    let report = h.check();
    let v = report.verdict(READS_VALID).unwrap();
    assert!(v.examples[0].contains("refused (conflict)"), "{report}");
}

#[test]
fn a_stale_read_is_caught() {
    let mut h = valid();
    // Client 2's recovery read (sent after c2-3 was acknowledged with
    // seq 2) saw only seq 1.
    for r in &mut h.recs {
        if let Record::Ok {
            client: 2,
            op: 4,
            value,
            ..
        } = r
        {
            *value = lines(&[(1, 2, 2)]);
        }
    }
    let report = h.check();
    assert_only(&report, &[READS_CURRENT]);
}

#[test]
fn without_a_final_read_the_checker_cannot_decide() {
    let mut h = valid();
    h.recs.retain(|r| !matches!(r, Record::FinalRead { .. }));
    let report = h.check();
    assert!(!report.all_hold());
    assert_eq!(
        report.verdict(STORED_ONCE).unwrap().status(),
        Status::Unknown,
        "{report}"
    );
}

#[test]
fn an_empty_history_holds_nothing() {
    let report = check(&[]);
    assert!(!report.all_hold());
    assert!(
        report
            .verdicts
            .iter()
            .all(|v| v.status() == Status::Unknown),
        "{report}"
    );
}

#[test]
fn error_codes_are_classified() {
    use super::definite;
    for code in ["conflict", "rate_limited", "schema_invalid", "empty_text"] {
        assert!(definite(code), "{code}");
    }
    for code in ["unavailable", "handler_timeout", "handler_failed"] {
        assert!(!definite(code), "{code}");
    }
}
