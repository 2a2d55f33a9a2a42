//! Tenants created through the management API, across a fleet (issue 27):
//! the fleet's KV bucket of tenants (`sluice_fleet::tenants`) as two and
//! three nodes' fleet parts see it, on a real nats-server on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::config::Config;
use sluice::fleet::Cluster;
use sluice::server::backends::tenants::{Expected, StoredTenant, TenantChange, TenantStoreError};
use sluice_tests::cluster::{Nats, cluster};
use tokio::sync::mpsc;

/// A node's part of the fleet on `nats`, with nothing else of a node.
async fn join(nats: &Nats, name: &str) -> Arc<Cluster> {
    Arc::new(
        Cluster::connect(&Config::default(), &cluster(nats, name))
            .await
            .expect("joined the fleet"),
    )
}

/// Every change `node` sees from now on, with when it arrived.
async fn follow(node: &Cluster) -> mpsc::UnboundedReceiver<(Instant, TenantChange)> {
    let (tx, rx) = mpsc::unbounded_channel();
    node.follow_tenants(move |change| {
        let _ = tx.send((Instant::now(), change));
        Box::pin(async {})
    })
    .await
    .expect("following the fleet's tenants");
    rx
}

async fn next(
    rx: &mut mpsc::UnboundedReceiver<(Instant, TenantChange)>,
) -> (Instant, TenantChange) {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a change within 5 s")
        .expect("the follower runs")
}

/// Nothing more arrives within `quiet`.
async fn nothing_more(rx: &mut mpsc::UnboundedReceiver<(Instant, TenantChange)>, quiet: Duration) {
    if let Ok(Some((_, change))) = tokio::time::timeout(quiet, rx.recv()).await {
        panic!("an unexpected change: {change:?}");
    }
}

fn record(n: u32) -> Vec<u8> {
    format!(r#"{{"tenant":{{"n":{n}}}}}"#).into_bytes()
}

fn put(id: &str, revision: u64, n: u32) -> TenantChange {
    (id.to_owned(), Some((revision, record(n))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_written_on_one_node_reaches_every_node_and_only_one_writer_wins() {
    let nats = Nats::start();
    let (a, b) = (join(&nats, "a").await, join(&nats, "b").await);
    let (fa, fb) = (a.backends().tenants, b.backends().tenants);
    assert!(fa.durable() && fa.shared());
    assert!(fb.take_contents().is_empty(), "a new fleet has no tenants");
    let mut on_a = follow(&a).await;
    let mut on_b = follow(&b).await;

    // A create on A: B sees it (and A its own write), once.
    let start = Instant::now();
    let r1 = fa
        .write("acme", Expected::Absent, Some(record(1)))
        .await
        .expect("created");
    let (at, change) = next(&mut on_b).await;
    println!(
        "tenant created on node a, seen on node b after {:?}",
        at - start
    );
    assert_eq!(change, put("acme", r1, 1));
    assert_eq!(next(&mut on_a).await.1, put("acme", r1, 1));

    // The same id created on both nodes at once: exactly one wins, the
    // other is told the winner's revision.
    let (ra, rb) = tokio::join!(
        fa.write("shop", Expected::Absent, Some(record(2))),
        fb.write("shop", Expected::Absent, Some(record(3))),
    );
    let (won, n) = match (ra, rb) {
        (Ok(r), Err(TenantStoreError::Conflict { current })) => {
            assert_eq!(current, Some(r));
            (r, 2)
        }
        (Err(TenantStoreError::Conflict { current }), Ok(r)) => {
            assert_eq!(current, Some(r));
            (r, 3)
        }
        other => panic!("not exactly one create won: {other:?}"),
    };
    assert_eq!(next(&mut on_b).await.1, put("shop", won, n));
    assert_eq!(next(&mut on_a).await.1, put("shop", won, n));

    // An update from a stale read is refused with the revision there now.
    let r2 = fa
        .write("acme", Expected::Revision(r1), Some(record(4)))
        .await
        .expect("updated");
    assert!(r2 > r1);
    assert_eq!(
        fb.write("acme", Expected::Revision(r1), Some(record(5)))
            .await,
        Err(TenantStoreError::Conflict { current: Some(r2) })
    );
    assert_eq!(
        fb.write("acme", Expected::Absent, Some(record(5))).await,
        Err(TenantStoreError::Conflict { current: Some(r2) }),
        "a create of a kept id"
    );
    assert_eq!(next(&mut on_b).await.1, put("acme", r2, 4));
    assert_eq!(next(&mut on_a).await.1, put("acme", r2, 4));

    // A removal (from B) is seen as `None`; its revision is its own, and
    // no write expecting it or the removed one holds.
    let r3 = fb
        .write("acme", Expected::Revision(r2), None)
        .await
        .expect("removed");
    assert!(r3 > r2);
    assert_eq!(next(&mut on_a).await.1, ("acme".to_owned(), None));
    assert_eq!(next(&mut on_b).await.1, ("acme".to_owned(), None));
    for stale in [r2, r3] {
        for rec in [Some(record(6)), None] {
            assert_eq!(
                fa.write("acme", Expected::Revision(stale), rec).await,
                Err(TenantStoreError::Conflict { current: None }),
                "a write to a removed tenant expecting revision {stale}"
            );
        }
    }
    // Re-created: a new revision, never an old one.
    let r4 = fa
        .write("acme", Expected::Absent, Some(record(7)))
        .await
        .expect("re-created");
    assert!(r4 > r3);
    assert_eq!(next(&mut on_b).await.1, put("acme", r4, 7));
    assert_eq!(next(&mut on_a).await.1, put("acme", r4, 7));

    // What the API would never write is refused before NATS sees it.
    for (id, rec) in [
        ("Acme", record(1)),
        ("a.b", record(1)),
        ("ok", b"[1]".to_vec()),
    ] {
        assert!(
            matches!(
                fa.write(id, Expected::Absent, Some(rec)).await,
                Err(TenantStoreError::Failed(_))
            ),
            "{id}"
        );
    }

    // Garbage put into the bucket directly is ignored by every node: the
    // next change each sees is the valid one written after it.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("NATS"));
    let kv = js
        .get_key_value("sluice_tenants")
        .await
        .expect("the bucket");
    for (key, value) in [
        ("Upper", &br#"{"a":1}"#[..]),
        ("a.b", br#"{"a":1}"#),
        ("junk", b"not json"),
        ("list", b"[1,2]"),
        ("shop", b"\"a string\""),
    ] {
        kv.put(key, value.to_vec().into()).await.expect("put");
    }
    let r5 = fa
        .write("after", Expected::Absent, Some(record(8)))
        .await
        .expect("created");
    assert_eq!(next(&mut on_a).await.1, put("after", r5, 8));
    assert_eq!(next(&mut on_b).await.1, put("after", r5, 8));

    // A node joining now reads what is kept (not the garbage: `shop`'s
    // record is garbage now), and follows from just after what it read:
    // a change between its join and its follow is not missed, nothing
    // before it comes again.
    let c = join(&nats, "c").await;
    let mut kept = c.backends().tenants.take_contents();
    kept.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(
        kept,
        [
            StoredTenant {
                id: "acme".into(),
                revision: r4,
                record: record(7)
            },
            StoredTenant {
                id: "after".into(),
                revision: r5,
                record: record(8)
            },
        ]
    );
    assert!(
        c.backends().tenants.take_contents().is_empty(),
        "taken once"
    );
    let r6 = fb
        .write("late", Expected::Absent, Some(record(9)))
        .await
        .expect("created");
    let mut on_c = follow(&c).await;
    assert_eq!(next(&mut on_c).await.1, put("late", r6, 9));
    nothing_more(&mut on_c, Duration::from_millis(300)).await;
    for rx in [&mut on_a, &mut on_b] {
        assert_eq!(next(rx).await.1, put("late", r6, 9));
        nothing_more(rx, Duration::from_millis(300)).await;
    }

    // Closed: no more changes reach the node.
    a.close().await;
    let r7 = fb
        .write("late", Expected::Revision(r6), Some(record(10)))
        .await
        .expect("updated");
    assert_eq!(next(&mut on_c).await.1, put("late", r7, 10));
    nothing_more(&mut on_a, Duration::from_millis(300)).await;
    b.close().await;
    c.close().await;
}

/// The time from a create on node A to the change reaching node B's
/// follower, over 100 creates one after another (printed; the issue's
/// bound is 1 s, checked on the median so a loaded machine's outlier does
/// not fail the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_reaches_another_node_within_a_second() {
    let nats = Nats::start();
    let (a, b) = (join(&nats, "a").await, join(&nats, "b").await);
    let fa = a.backends().tenants;
    let mut on_b = follow(&b).await;
    let mut delays = Vec::new();
    for i in 0..100 {
        let id = format!("t{i}");
        let start = Instant::now();
        let revision = fa
            .write(&id, Expected::Absent, Some(record(i)))
            .await
            .expect("created");
        let (at, change) = next(&mut on_b).await;
        assert_eq!(change, put(&id, revision, i));
        delays.push(at - start);
    }
    delays.sort();
    let (median, p99, max) = (delays[49], delays[98], delays[99]);
    println!(
        "create on node a -> node b's follower, 100 creates, one nats-server on loopback: median {median:?}, p99 {p99:?}, max {max:?}"
    );
    assert!(median < Duration::from_secs(1), "median {median:?}");
    a.close().await;
    b.close().await;
}
