//! What a key costs a request, before the server wires the table in: a
//! chat message decoded, fingerprinted, begun and completed in the table,
//! against decoded alone (what every message costs today).
//!
//! ```text
//! cargo run --release -p sluice-idempotency --example table_cost            # wall clock, both, one run
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!   target/release/examples/table_cost decode 20000                         # instructions: decode only
//!   ... table_cost keyed 20000                                               # decode + key
//! ```
//!
//! Every key is new (the first attempt: the table's most expensive path);
//! the table holds up to N entries.

use std::sync::Arc;
use std::time::Instant;

use sluice_idempotency::{
    Begin, EntryId, IdempotencyTable, Limits, MemoryOutcomeStore, SystemClock,
};
use sluice_protocol::{Answer, decode_keyed};

fn frame(i: usize) -> String {
    format!(
        r#"{{"type":"chat.send","id":"c{i}","key":"k{i:020}","channel":"room:42","data":{{"text":"hello from the train, message number {i}","to":"everyone"}}}}"#
    )
}

/// Handle every frame; with `keyed`, through the table. Returns ns/message.
fn run(rt: &tokio::runtime::Runtime, frames: &[String], keyed: bool) -> f64 {
    let n = frames.len();
    let table = IdempotencyTable::new(
        Limits {
            max_entries: n,
            max_entries_per_subject: n,
            max_bytes: usize::MAX,
            ..Limits::default()
        },
        Arc::new(MemoryOutcomeStore::new()),
        Arc::new(SystemClock),
        1,
    );
    let answer = Answer::ack_json(r#"{"seq":12}"#);
    let t = Instant::now();
    let mut seen = 0usize;
    rt.block_on(async {
        for f in frames {
            let Ok(e) = decode_keyed(f, 32) else { continue };
            seen += e.kind.len();
            if !keyed {
                continue;
            }
            let id = EntryId::new("t", "alice", e.key.clone().unwrap_or_default());
            if let (Ok(Begin::Run(ticket)), Some(a)) =
                (table.begin(&id, e.fingerprint()).await, &answer)
            {
                let _ = ticket.complete(a.clone()).await;
            }
        }
    });
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    std::hint::black_box(seen);
    ns
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(2).map_or(Ok(100_000), |a| a.parse())?;
    let frames: Vec<String> = (0..n).map(frame).collect();
    match args.get(1).map(String::as_str) {
        Some("decode") => {
            run(&rt, &frames, false);
        }
        Some("keyed") => {
            run(&rt, &frames, true);
        }
        _ => {
            let (mut plain, mut keyed) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                plain.push(run(&rt, &frames, false));
                keyed.push(run(&rt, &frames, true));
            }
            plain.sort_by(f64::total_cmp);
            keyed.sort_by(f64::total_cmp);
            let (p, k) = (plain[2], keyed[2]);
            println!(
                "{n} chat messages of {} bytes, median of 5 alternating rounds, one thread, wall clock",
                frames[0].len()
            );
            println!("decode only:                                 {p:8.0} ns/message");
            println!(
                "decode + fingerprint + begin + complete:     {k:8.0} ns/message ({:.2}x)",
                k / p
            );
        }
    }
    Ok(())
}
