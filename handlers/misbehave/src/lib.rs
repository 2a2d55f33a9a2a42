//! A deliberately hostile handler, driven by its data `{"mode": "..."}`, for
//! testing that the host contains every kind of misbehaviour:
//!
//! | mode | what it does |
//! |---|---|
//! | `ok` | replies `{"ok":true}` (proves the handler still serves) |
//! | `spin` | loops forever |
//! | `alloc` | allocates 1 MiB blocks until the host refuses memory |
//! | `recurse` | recurses without bound (stack overflow) |
//! | `big-reply` | replies with 1 MiB of data |
//! | `many-actions` | returns 1,000 actions |
//! | `panic` | panics (a trap) |
//! | `state-then-trap` | writes state key `poison`, then panics |
//! | `log-flood` | writes 5,000 log lines, then replies |
//! | `stdout-flood` | prints 1 MiB to stdout and stderr, then replies |
//! | `publish` | publishes `{"hi":true}` to the channel named in `target` (to test that the host re-authorizes actions) |
//! | `publish-big` | publishes 32 KiB to the channel named in `target` |
//! | `subscribe` | subscribes the connection to the channel named in `target` |
//! | `count` | replies with how many calls this instance has served (a static counter: 1 on every call in `fresh` mode) |
//! | `sleep` | sleeps 30 s in a WASI sleep (a host wait epoch interruption cannot see), then replies |
//! | `block` | sleeps for ever (a pollable that never resolves in practice: `u64::MAX` ns) |
//! | `burn` | spins `target` iterations (default 1,500,000: most of the default fuel), then replies `{"ok":true}` |
//! | `clock` | replies with what the WASI clocks say: `{"wall_ms":..,"mono_ns":..}` (both 0 without the `clock` grant) |
//! | `alias-reply` | returns 1,000 `reply` actions whose strings all point at one 8 MiB buffer (a host-copy amplification) |

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use sluice_guest_sdk::{
    Actions, Connection, Handler, HandlerError, HandlerResult, Message, log, state,
};

#[derive(Deserialize)]
struct Mode {
    mode: String,
    #[serde(default)]
    target: String,
}

static CALLS: AtomicU64 = AtomicU64::new(0);

static DEPTH: AtomicU64 = AtomicU64::new(0);

/// Recursion whose frames live on the wasm stack (bounded by the host's
/// max_wasm_stack), not on the shadow stack in linear memory: no local needs
/// an address, and the side effects around the call keep it from being
/// turned into a loop.
#[inline(never)]
#[expect(unconditional_recursion, reason = "the point is to overflow the stack")]
fn recurse() -> u64 {
    let depth = DEPTH.fetch_add(1, Ordering::Relaxed);
    let below = recurse();
    DEPTH.fetch_sub(1, Ordering::Relaxed);
    below.wrapping_add(depth)
}

/// 1,000 `reply` actions whose strings share one leaked 8 MiB buffer: the
/// guest holds 8 MiB, a host that copied every string would hold 8 GB. The
/// host must refuse the copy past its budget. (Aliasing `String`s is
/// undefined behaviour in Rust once they are freed; the host traps the call
/// while lifting them, before the guest's post-return could free any.)
fn alias_reply() -> Actions {
    let buffer: &'static mut str = "\"".repeat(8 << 20).leak();
    let (ptr, len) = (buffer.as_mut_ptr(), buffer.len());
    let mut actions = Actions::new();
    for _ in 0..1_000 {
        // SAFETY: none; see above. The strings are never read by the guest.
        let alias = unsafe { String::from_raw_parts(ptr, len, len) };
        actions = actions.reply_raw(alias);
    }
    actions
}

struct Misbehave;

impl Handler for Misbehave {
    fn on_message(_conn: &Connection, msg: &Message) -> HandlerResult {
        let Mode { mode, target } = msg.data()?;
        match mode.as_str() {
            "publish" => Ok(Actions::new()
                .publish(target, &serde_json::json!({"hi": true}))
                .reply(&serde_json::json!({"published": true}))),
            "publish-big" => {
                let data = format!("\"{}\"", "z".repeat(32 << 10));
                Ok(Actions::new().push(sluice_guest_sdk::Action::Publish(
                    sluice_guest_sdk::Publish {
                        channel: target,
                        data,
                    },
                )))
            }
            "subscribe" => Ok(Actions::new().subscribe(target)),
            "send" => Ok(Actions::new()
                .send(target, &serde_json::json!({"dm": true}))
                .reply(&serde_json::json!({"sent": true}))),
            "count" => {
                let n = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
                Ok(Actions::new().reply(&serde_json::json!({"count": n})))
            }
            "ok" => Ok(Actions::new().reply(&serde_json::json!({"ok": true}))),
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut blocks: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Reserve without filling: memory grows, fuel is not the limit.
                    let mut block = Vec::<u8>::with_capacity(1 << 20);
                    block.push(7);
                    blocks.push(black_box(block));
                }
            }
            "recurse" => {
                let depth = recurse();
                Ok(Actions::new().reply(&depth))
            }
            "big-reply" => {
                // Built by copying, not serialized char by char: the output
                // limit, not fuel, is what must stop it.
                let text = format!("\"{}\"", "x".repeat(1 << 20));
                Ok(Actions::new().reply_raw(text))
            }
            "many-actions" => {
                let mut actions = Actions::new();
                for i in 0..1_000 {
                    actions = actions.subscribe(format!("room:{i}"));
                }
                Ok(actions)
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(30));
                Ok(Actions::new().reply(&serde_json::json!({"slept": true})))
            }
            "block" => {
                std::thread::sleep(std::time::Duration::from_nanos(u64::MAX));
                Ok(Actions::new().reply(&serde_json::json!({"woke": true})))
            }
            "burn" => {
                let n: u64 = target.parse().unwrap_or(1_500_000);
                let mut x: u64 = 0;
                for i in 0..n {
                    x = black_box(x.wrapping_add(i));
                }
                Ok(Actions::new().reply(&serde_json::json!({"ok": true, "x": x})))
            }
            "clock" => {
                let wall_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let start = std::time::Instant::now();
                let mono_ns = start.elapsed().as_nanos() as u64;
                Ok(Actions::new()
                    .reply(&serde_json::json!({"wall_ms": wall_ms, "mono_ns": mono_ns})))
            }
            "alias-reply" => Ok(alias_reply()),
            "panic" => panic!("misbehave: asked to panic"),
            "state-then-trap" => {
                state::set("poison", b"1").map_err(|e| HandlerError::fail(format!("{e:?}")))?;
                panic!("misbehave: trap after writing state")
            }
            "log-flood" => {
                for i in 0..5_000u32 {
                    log::info(&format!("flood line {i}"));
                }
                Ok(Actions::new().reply(&serde_json::json!({"logged": 5_000})))
            }
            "stdout-flood" => {
                let line = "y".repeat(1023);
                for _ in 0..1024 {
                    println!("{line}");
                    eprintln!("{line}");
                }
                Ok(Actions::new().reply(&serde_json::json!({"printed": 1 << 20})))
            }
            other => Err(HandlerError::reject(
                "unknown_mode",
                format!("no mode {other:?}"),
            )),
        }
    }
}

sluice_guest_sdk::export_handler!(Misbehave);
