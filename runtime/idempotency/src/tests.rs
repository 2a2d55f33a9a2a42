//! Every rule of the table, on a manual clock.

use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::{Answer, ErrorCode, Fingerprint, Rejection, fingerprint};

use crate::*;

const T0: u64 = 1_800_000_000_000;

struct Setup {
    clock: Arc<ManualClock>,
    store: Arc<MemoryOutcomeStore>,
    table: IdempotencyTable,
}

fn setup(limits: Limits) -> Setup {
    let clock = Arc::new(ManualClock::new(T0));
    let store = Arc::new(MemoryOutcomeStore::new());
    let table = IdempotencyTable::new(limits, store.clone(), clock.clone(), 1);
    Setup {
        clock,
        store,
        table,
    }
}

fn fp(text: &str) -> Fingerprint {
    fingerprint("chat.send", Some("room:1"), &serde_json_value(text))
}

fn serde_json_value(text: &str) -> serde_json::Value {
    serde_json::Value::String(text.to_owned())
}

fn ack(seq: u64) -> Answer {
    Answer::ack_json(&format!(r#"{{"seq":{seq}}}"#)).expect("json")
}

fn id(key: &str) -> EntryId {
    EntryId::new("t", "alice", key)
}

async fn run(table: &IdempotencyTable, id: &EntryId, f: Fingerprint) -> Ticket {
    match table.begin(id, f).await {
        Ok(Begin::Run(t)) => t,
        other => panic!("expected to run, got {other:?}"),
    }
}

async fn replay(table: &IdempotencyTable, id: &EntryId, f: Fingerprint) -> Answer {
    match table.begin(id, f).await {
        Ok(Begin::Replay(a)) => a,
        other => panic!("expected a replay, got {other:?}"),
    }
}

#[tokio::test]
async fn a_retry_after_the_answer_gets_it_without_a_call() {
    let s = setup(Limits::default());
    let t = run(&s.table, &id("k1"), fp("hi")).await;
    t.complete(ack(12)).await.expect("stored");
    for _ in 0..3 {
        let a = replay(&s.table, &id("k1"), fp("hi")).await;
        assert_eq!(
            a.frame(Some("c9")),
            r#"{"type":"ack","id":"c9","data":{"seq":12}}"#
        );
    }
    let c = s.table.counters("t");
    assert_eq!((c.hits, c.waits, c.conflicts, c.entries), (3, 0, 0, 1));
    // A handler's refusal is an answer too.
    let t = run(&s.table, &id("k2"), fp("")).await;
    let refused = Answer::error("empty_text", "say something".into()).expect("code");
    t.complete(refused.clone()).await.expect("stored");
    assert_eq!(replay(&s.table, &id("k2"), fp("")).await, refused);
    // Keys are per subject and per tenant.
    let _bob = run(&s.table, &EntryId::new("t", "bob", "k1"), fp("hi")).await;
    let _other = run(&s.table, &EntryId::new("u", "alice", "k1"), fp("hi")).await;
}

#[tokio::test]
async fn a_retry_while_the_first_runs_waits_and_gets_its_answer() {
    let s = setup(Limits::default());
    let first = run(&s.table, &id("k1"), fp("hi")).await;
    let table = s.table.clone();
    let retries: Vec<_> = (0..3)
        .map(|_| {
            let table = table.clone();
            tokio::spawn(async move { replay(&table, &id("k1"), fp("hi")).await })
        })
        .collect();
    // Let the retries reach their wait.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(s.table.counters("t").waits, 3);
    first.complete(ack(7)).await.expect("stored");
    for r in retries {
        assert_eq!(r.await.expect("joined"), ack(7));
    }
    assert_eq!(s.table.counters("t").hits, 3);
}

#[tokio::test]
async fn a_first_attempt_cut_off_without_an_answer_lets_the_retry_run() {
    let s = setup(Limits::default());
    // Dropped (the call was cut off): the waiting retry runs instead.
    let first = run(&s.table, &id("k1"), fp("hi")).await;
    let table = s.table.clone();
    let retry = tokio::spawn(async move {
        match table.begin(&id("k1"), fp("hi")).await {
            Ok(Begin::Run(t)) => {
                t.complete(ack(2)).await.expect("stored");
                true
            }
            _ => false,
        }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    drop(first);
    assert!(retry.await.expect("joined"), "the retry ran");
    assert_eq!(replay(&s.table, &id("k1"), fp("hi")).await, ack(2));
    // Abandoned explicitly (no effect): the next attempt runs, and the
    // store holds no claim.
    let t = run(&s.table, &id("k3"), fp("x")).await;
    t.abandon().await;
    assert!(matches!(s.store.get(&id("k3"), T0).await, Ok(None)));
    let _again = run(&s.table, &id("k3"), fp("x")).await;
    assert_eq!(s.table.counters("t").entries, 2);
}

#[tokio::test]
async fn the_same_key_with_another_request_is_refused() {
    let s = setup(Limits::default());
    let t = run(&s.table, &id("k1"), fp("hi")).await;
    // While it runs, and after.
    assert_eq!(
        s.table.begin(&id("k1"), fp("HI")).await.err(),
        Some(Refusal::KeyReused)
    );
    t.complete(ack(1)).await.expect("stored");
    for other in [
        fp("hi!"),
        fingerprint("chat.send", Some("room:2"), &serde_json_value("hi")),
        fingerprint("chat.edit", Some("room:1"), &serde_json_value("hi")),
    ] {
        assert_eq!(
            s.table.begin(&id("k1"), other).await.err(),
            Some(Refusal::KeyReused)
        );
    }
    assert_eq!(s.table.counters("t").conflicts, 4);
    // The honest retry is still answered.
    assert_eq!(replay(&s.table, &id("k1"), fp("hi")).await, ack(1));
    match Refusal::KeyReused.rejection() {
        Rejection::Error { code, .. } => assert_eq!(code.as_str(), "key_reused"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn after_the_window_the_key_is_fresh() {
    let s = setup(Limits {
        window: Duration::from_secs(300),
        ..Limits::default()
    });
    let t = run(&s.table, &id("k1"), fp("hi")).await;
    t.complete(ack(1)).await.expect("stored");
    s.clock.advance(Duration::from_millis(299_999));
    assert_eq!(replay(&s.table, &id("k1"), fp("hi")).await, ack(1));
    s.clock.advance(Duration::from_millis(1));
    // A fresh call, even with other data: the first is forgotten.
    let t = run(&s.table, &id("k1"), fp("other")).await;
    let c = s.table.counters("t");
    assert_eq!((c.evictions, c.entries), (1, 1));
    t.complete(ack(2)).await.expect("stored");
    assert_eq!(replay(&s.table, &id("k1"), fp("other")).await, ack(2));
    // The store forgets too.
    s.clock.advance(Duration::from_secs(300));
    assert_eq!(s.table.sweep(), 1);
    assert!(s.store.is_empty());
    assert_eq!(s.table.counters("t").entries, 0);
}

#[tokio::test]
async fn quotas_refuse_new_keys_and_say_when_to_retry() {
    let s = setup(Limits {
        max_entries: 5,
        max_entries_per_subject: 3,
        ..Limits::default()
    });
    for k in ["a", "b", "c"] {
        run(&s.table, &id(k), fp(k))
            .await
            .complete(ack(0))
            .await
            .expect("stored");
        s.clock.advance(Duration::from_secs(10));
    }
    // alice has her 3; bob gets 2 more, then the tenant is full.
    let refused = s.table.begin(&id("d"), fp("d")).await.err();
    assert_eq!(
        refused,
        Some(Refusal::TooManyKeys {
            retry_after_ms: 270_000
        })
    );
    for k in ["a", "b"] {
        run(&s.table, &EntryId::new("t", "bob", k), fp(k))
            .await
            .completed(ack(0));
    }
    assert!(matches!(
        s.table
            .begin(&EntryId::new("t", "carol", "a"), fp("a"))
            .await,
        Err(Refusal::TooManyKeys { .. })
    ));
    // Retries of what is remembered are still answered; other tenants are not affected.
    assert_eq!(replay(&s.table, &id("a"), fp("a")).await, ack(0));
    let _u = run(&s.table, &EntryId::new("u", "alice", "d"), fp("d")).await;
    assert_eq!(s.table.counters("t").refusals, 2);
    match (Refusal::TooManyKeys { retry_after_ms: 5 }).rejection() {
        Rejection::Error {
            code,
            retry_after_ms,
            ..
        } => {
            assert_eq!(code.as_str(), ErrorCode::TooManyKeys.as_str());
            assert_eq!(retry_after_ms, Some(5));
        }
        other => panic!("{other:?}"),
    }
    // Once the oldest is forgotten, alice has room again.
    s.clock.advance(Duration::from_secs(280));
    let _d = run(&s.table, &id("d"), fp("d")).await;
}

#[tokio::test]
async fn bytes_are_counted_and_bounded() {
    let s = setup(Limits {
        max_bytes: 2 * ENTRY_OVERHEAD_BYTES + 100,
        ..Limits::default()
    });
    let t = run(&s.table, &id("k1"), fp("x")).await;
    let before = s.table.counters("t").bytes;
    assert_eq!(before, ENTRY_OVERHEAD_BYTES + "alice".len() + "k1".len());
    let big = Answer::ack_json(&format!(r#""{}""#, "x".repeat(150))).expect("json");
    t.complete(big).await.expect("stored");
    assert_eq!(s.table.counters("t").bytes, before + 152);
    assert!(matches!(
        s.table.begin(&id("k2"), fp("x")).await,
        Err(Refusal::TooManyKeys { .. })
    ));
}

#[tokio::test]
async fn ten_thousand_keys_stay_within_the_quota() {
    let s = setup(Limits {
        max_entries: 2_000,
        max_entries_per_subject: 2_000,
        ..Limits::default()
    });
    let (mut ran, mut refused) = (0, 0);
    for i in 0..10_000 {
        match s.table.begin(&id(&format!("k{i}")), fp("x")).await {
            Ok(Begin::Run(t)) => {
                ran += 1;
                t.completed(ack(i));
            }
            Err(Refusal::TooManyKeys { .. }) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((ran, refused), (2_000, 8_000));
    let c = s.table.counters("t");
    assert_eq!(c.entries, 2_000);
    assert!(c.bytes < 2_000 * (ENTRY_OVERHEAD_BYTES + 32), "{}", c.bytes);
}

#[tokio::test]
async fn another_node_or_a_restart_finds_the_answer_in_the_store() {
    let s = setup(Limits::default());
    run(&s.table, &id("k1"), fp("hi"))
        .await
        .complete(ack(5))
        .await
        .expect("stored");
    // A second node on the same store (or this one after a restart).
    let other = IdempotencyTable::new(Limits::default(), s.store.clone(), s.clock.clone(), 2);
    assert_eq!(replay(&other, &id("k1"), fp("hi")).await, ack(5));
    assert_eq!(
        other.begin(&id("k1"), fp("bye")).await.err(),
        Some(Refusal::KeyReused)
    );
    // Kept locally from then on.
    assert_eq!(other.counters("t").entries, 1);
    // A record written with the call's effects (a durable store's transaction).
    let t = run(&s.table, &id("k2"), fp("hi")).await;
    let record = t.record(&ack(6));
    s.store
        .complete(t.id(), &record)
        .await
        .expect("written with the effects");
    t.completed(ack(6));
    assert_eq!(replay(&other, &id("k2"), fp("hi")).await, ack(6));
}

#[tokio::test]
async fn a_retry_on_another_node_waits_for_the_first_nodes_call() {
    let limits = Limits {
        poll_interval: Duration::from_millis(1),
        ..Limits::default()
    };
    let s = setup(limits.clone());
    let other = IdempotencyTable::new(limits.clone(), s.store.clone(), s.clock.clone(), 2);
    let first = run(&s.table, &id("k1"), fp("hi")).await;
    let retry = {
        let other = other.clone();
        tokio::spawn(async move { replay(&other, &id("k1"), fp("hi")).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!retry.is_finished());
    first.complete(ack(9)).await.expect("stored");
    assert_eq!(retry.await.expect("joined"), ack(9));
    assert_eq!(other.counters("t").waits, 1);

    // The first node dies mid-call (its claim is never released): the
    // retry runs once the claim's lease lapses.
    let dead = IdempotencyTable::new(limits.clone(), s.store.clone(), s.clock.clone(), 3);
    let ticket = run(&dead, &id("k2"), fp("hi")).await;
    std::mem::forget(ticket);
    let retry = {
        let other = other.clone();
        tokio::spawn(
            async move { matches!(other.begin(&id("k2"), fp("hi")).await, Ok(Begin::Run(_))) },
        )
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!retry.is_finished(), "waits while the lease holds");
    s.clock.advance(limits.in_flight_lease);
    assert!(retry.await.expect("joined"), "runs once it lapsed");

    // Another node's attempt with other data: refused at once.
    let _held = run(&s.table, &id("k3"), fp("a")).await;
    assert_eq!(
        other.begin(&id("k3"), fp("b")).await.err(),
        Some(Refusal::KeyReused)
    );
}

#[tokio::test]
async fn an_answer_kept_locally_survives_a_failing_store() {
    struct Failing;
    impl OutcomeStore for Failing {
        fn claim<'a>(
            &'a self,
            _: &'a EntryId,
            _: Fingerprint,
            _: u64,
            _: u64,
            _: u64,
        ) -> BoxFuture<'a, Result<Claim, StoreError>> {
            Box::pin(async { Ok(Claim::Claimed) })
        }
        fn get<'a>(
            &'a self,
            _: &'a EntryId,
            _: u64,
        ) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
            Box::pin(async { Err(StoreError("down".into())) })
        }
        fn complete<'a>(
            &'a self,
            _: &'a EntryId,
            _: &'a Record,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async { Err(StoreError("down".into())) })
        }
        fn release<'a>(&'a self, _: &'a EntryId, _: u64) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async { Ok(()) })
        }
    }
    let clock = Arc::new(ManualClock::new(T0));
    let table = IdempotencyTable::new(Limits::default(), Arc::new(Failing), clock, 1);
    let t = run(&table, &id("k1"), fp("hi")).await;
    assert!(t.complete(ack(1)).await.is_err(), "the error is reported");
    assert_eq!(replay(&table, &id("k1"), fp("hi")).await, ack(1));

    struct Down;
    impl OutcomeStore for Down {
        fn claim<'a>(
            &'a self,
            _: &'a EntryId,
            _: Fingerprint,
            _: u64,
            _: u64,
            _: u64,
        ) -> BoxFuture<'a, Result<Claim, StoreError>> {
            Box::pin(async { Err(StoreError("down".into())) })
        }
        fn get<'a>(
            &'a self,
            _: &'a EntryId,
            _: u64,
        ) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
            Box::pin(async { Err(StoreError("down".into())) })
        }
        fn complete<'a>(
            &'a self,
            _: &'a EntryId,
            _: &'a Record,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async { Err(StoreError("down".into())) })
        }
        fn release<'a>(&'a self, _: &'a EntryId, _: u64) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async { Ok(()) })
        }
    }
    let table = IdempotencyTable::new(
        Limits::default(),
        Arc::new(Down),
        Arc::new(ManualClock::new(T0)),
        1,
    );
    assert_eq!(
        table.begin(&id("k1"), fp("hi")).await.err(),
        Some(Refusal::Unavailable)
    );
    assert_eq!(table.counters("t").entries, 0, "nothing left behind");
}

#[tokio::test]
async fn a_begin_dropped_while_waiting_leaves_nothing_behind() {
    let s = setup(Limits::default());
    let first = run(&s.table, &id("k1"), fp("hi")).await;
    let table = s.table.clone();
    let waiting = tokio::spawn(async move { table.begin(&id("k1"), fp("hi")).await.is_ok() });
    tokio::task::yield_now().await;
    waiting.abort();
    let _ = waiting.await;
    first.complete(ack(3)).await.expect("stored");
    assert_eq!(replay(&s.table, &id("k1"), fp("hi")).await, ack(3));
    assert_eq!(s.table.counters("t").entries, 1);
}
