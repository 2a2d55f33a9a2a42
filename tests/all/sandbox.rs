//! The sandbox, through its public API, with real handlers built from
//! `handlers/`: round trips, state, every kind of misbehaviour contained,
//! isolation modes, quarantine, and components refused at load.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::sandbox::{
    Action, CallErrorKind, Capability, Handler, HandlerLimits, HandlerSpec, Isolation, LoadError,
    Sandbox, SandboxConfig,
};
use sluice_tests::{component, conn, handlers, msg};

const BOTH: [Isolation; 2] = [Isolation::Reuse, Isolation::Fresh];

/// A sandbox with a small instance pool, so tests running in parallel do not
/// reserve address space for thousands of instances each.
fn sandbox() -> Sandbox {
    sandbox_with(SandboxConfig::default())
}

fn sandbox_with(config: SandboxConfig) -> Sandbox {
    Sandbox::new(SandboxConfig {
        pool_instances: 32,
        ..config
    })
    .expect("sandbox")
}

async fn load(sandbox: &Sandbox, path: &str, spec: HandlerSpec) -> Handler {
    sandbox
        .load(component(path), spec)
        .await
        .unwrap_or_else(|e| panic!("loading {path}: {e}"))
}

fn all_caps() -> BTreeSet<Capability> {
    Capability::ALL.into_iter().collect()
}

fn reply_json(actions: &[Action]) -> Value {
    let replies: Vec<&String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Reply(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(
        replies.len(),
        1,
        "exactly one reply expected in {actions:?}"
    );
    serde_json::from_str(replies[0]).expect("reply is JSON")
}

async fn misbehave(
    handler: &Handler,
    mode: &str,
) -> Result<sluice::sandbox::CallOutcome, sluice::sandbox::CallError> {
    handler
        .on_message(
            &conn("t1", "mallory"),
            &msg("misbehave", None, json!({ "mode": mode })),
        )
        .await
}

/// The handler still serves: a well-behaved call right after succeeds.
async fn assert_still_serves(handler: &Handler) {
    let out = misbehave(handler, "ok")
        .await
        .expect("the next call is served");
    assert_eq!(reply_json(&out.actions), json!({"ok": true}));
}

#[tokio::test]
async fn echo_round_trip_in_both_isolation_modes() {
    let sandbox = sandbox();
    for isolation in BOTH {
        let echo = load(
            &sandbox,
            handlers::ECHO,
            HandlerSpec::new("echo", "t1").isolation(isolation),
        )
        .await;
        for i in 0..3 {
            let data = json!({"text": "hello", "n": i, "nested": {"list": [1, 2, 3]}});
            let out = echo
                .on_message(
                    &conn("t1", "alice"),
                    &msg("echo", Some("room:1"), data.clone()),
                )
                .await
                .expect("echo call");
            assert_eq!(out.actions.len(), 1);
            assert_eq!(reply_json(&out.actions), data);
            // A reused instance is created once; a fresh one every call.
            let expect_new = isolation == Isolation::Fresh || i == 0;
            assert_eq!(out.report.instantiated, expect_new, "{isolation} call {i}");
            assert!(out.report.fuel_consumed.is_some_and(|f| f > 0));
        }
        // on-connect and on-disconnect default to no actions.
        let c = conn("t1", "alice");
        assert!(
            echo.on_connect(&c)
                .await
                .expect("connect")
                .actions
                .is_empty()
        );
        assert!(
            echo.on_disconnect(&c)
                .await
                .expect("disconnect")
                .actions
                .is_empty()
        );
    }
}

#[tokio::test]
async fn chat_keeps_room_history_in_state_across_calls() {
    let sandbox = sandbox();
    let spec = HandlerSpec::new("chat", "t1").grant([Capability::State, Capability::Clock]);
    let chat = load(&sandbox, handlers::CHAT, spec).await;
    let alice = conn("t1", "alice");
    let room = Some("room:42");

    let joined = chat
        .on_message(&alice, &msg("chat.join", room, json!({})))
        .await
        .expect("join");
    assert!(matches!(&joined.actions[0], Action::Subscribe(c) if c == "room:42"));
    assert!(matches!(&joined.actions[1], Action::Publish(p) if p.channel == "room:42"));
    assert_eq!(reply_json(&joined.actions), json!({"history": []}));

    for (i, text) in ["hi", "anyone here?"].iter().enumerate() {
        let sent = chat
            .on_message(&alice, &msg("chat.send", room, json!({ "text": text })))
            .await
            .expect("send");
        assert_eq!(reply_json(&sent.actions), json!({"seq": i + 1}));
        let Action::Publish(p) = &sent.actions[0] else {
            panic!("publish expected")
        };
        let event: Value = serde_json::from_str(&p.data).expect("event JSON");
        assert_eq!(event["kind"], "message");
        assert_eq!(event["from"], "alice");
        assert_eq!(event["text"], *text);
    }

    // Rejections carry the handler's code and leave state untouched.
    for (data, code) in [
        (json!({"text": "   "}), "empty_text"),
        (json!({"text": "x".repeat(501)}), "text_too_long"),
    ] {
        let err = chat
            .on_message(&alice, &msg("chat.send", room, data))
            .await
            .expect_err("rejected");
        assert_eq!(err.kind.name(), "rejected");
        assert_eq!(sluice::server::rejection::client_code(&err.kind), code);
    }
    let err = chat
        .on_message(&alice, &msg("chat.send", None, json!({"text": "hi"})))
        .await
        .expect_err("no channel");
    assert_eq!(
        sluice::server::rejection::client_code(&err.kind),
        "channel_required"
    );

    // Another subject joining later sees the history, oldest first, and the
    // sequence continues where it was (the rejections committed nothing).
    let bob = conn("t1", "bob");
    let joined = chat
        .on_message(&bob, &msg("chat.join", room, json!({})))
        .await
        .expect("join");
    let history = reply_json(&joined.actions)["history"].clone();
    let texts: Vec<&str> = history
        .as_array()
        .expect("array")
        .iter()
        .map(|l| l["text"].as_str().expect("text"))
        .collect();
    assert_eq!(texts, ["hi", "anyone here?"]);
    let sent = chat
        .on_message(&bob, &msg("chat.send", room, json!({"text": "me"})))
        .await
        .expect("send");
    assert_eq!(reply_json(&sent.actions), json!({"seq": 3}));
}

#[tokio::test]
async fn state_is_scoped_to_the_handlers_tenant() {
    let sandbox = sandbox();
    let grants = [Capability::State, Capability::Clock];
    let chat_a = load(
        &sandbox,
        handlers::CHAT,
        HandlerSpec::new("chat", "tenant-a").grant(grants),
    )
    .await;
    let chat_b = load(
        &sandbox,
        handlers::CHAT,
        HandlerSpec::new("chat", "tenant-b").grant(grants),
    )
    .await;
    chat_a
        .on_message(
            &conn("tenant-a", "alice"),
            &msg("chat.send", Some("room:1"), json!({"text": "secret"})),
        )
        .await
        .expect("send");
    // Same room name, other tenant: nothing to see.
    let joined = chat_b
        .on_message(
            &conn("tenant-b", "eve"),
            &msg("chat.join", Some("room:1"), json!({})),
        )
        .await
        .expect("join");
    assert_eq!(reply_json(&joined.actions), json!({"history": []}));
    let store = sandbox.state();
    assert_eq!(store.usage("tenant-a").await.expect("usage").keys, 1);
    assert_eq!(store.usage("tenant-b").await.expect("usage").keys, 0);
}

#[tokio::test]
async fn every_kind_of_misbehaviour_is_contained_and_the_next_call_served() {
    let sandbox = sandbox();
    let limits = HandlerLimits {
        memory_bytes: 16 << 20,
        quarantine_after: 100,
        // Generous: these calls are bounded by fuel and limits, and the
        // machine may be busy with other tests.
        deadline: Duration::from_secs(5),
        ..HandlerLimits::default()
    };
    for isolation in BOTH {
        let spec = HandlerSpec::new("misbehave", "t1")
            .isolation(isolation)
            .limits(limits.clone())
            .grant(all_caps());
        let handler = load(&sandbox, handlers::MISBEHAVE, spec).await;
        assert_still_serves(&handler).await;

        let cases: [(&str, &str); 7] = [
            ("spin", "out_of_fuel"),
            ("alloc", "memory_limit"),
            ("recurse", "stack_overflow"),
            ("big-reply", "output_too_large"),
            ("many-actions", "too_many_actions"),
            ("panic", "trap"),
            ("state-then-trap", "trap"),
        ];
        for (mode, kind) in cases {
            let started = Instant::now();
            let err = misbehave(&handler, mode).await.expect_err(mode);
            let took = started.elapsed();
            assert_eq!(err.kind.name(), kind, "{isolation} {mode}: {}", err.kind);
            assert!(took < Duration::from_secs(10), "{mode} took {took:?}");
            assert!(err.kind.is_handler_failure());
            // A refused call never returns actions and never commits state.
            assert!(
                sandbox
                    .state()
                    .get("t1", "poison")
                    .await
                    .expect("the in-memory store answers")
                    .is_none(),
                "{mode} left state behind"
            );
            assert_still_serves(&handler).await;
        }

        // The panic message reached the captured stderr, not the host's.
        let err = misbehave(&handler, "panic").await.expect_err("panic");
        assert!(
            err.report.stderr.contains("asked to panic"),
            "stderr: {:?}",
            err.report.stderr
        );
        assert_eq!(
            sluice::server::rejection::client_code(&err.kind),
            "handler_failed"
        );

        // Spin out of fuel: the whole budget was spent.
        let err = misbehave(&handler, "spin").await.expect_err("spin");
        assert_eq!(err.report.fuel_consumed, Some(limits.fuel));
        assert_eq!(
            sluice::server::rejection::client_code(&err.kind),
            "handler_timeout"
        );
    }
}

#[tokio::test]
async fn floods_of_logs_and_stdout_are_capped_not_fatal() {
    let sandbox = sandbox();
    // Generous time and fuel: what is tested are the caps, and the machine
    // may be busy with other tests.
    let generous = HandlerLimits {
        deadline: Duration::from_secs(5),
        fuel: 200_000_000,
        ..HandlerLimits::default()
    };
    for isolation in BOTH {
        let spec = HandlerSpec::new("misbehave", "t1")
            .isolation(isolation)
            .limits(generous.clone())
            .grant(all_caps());
        let handler = load(&sandbox, handlers::MISBEHAVE, spec).await;
        let limits = &handler.spec().limits;

        let out = misbehave(&handler, "log-flood")
            .await
            .unwrap_or_else(|e| panic!("log flood still replies: {}", e.kind));
        assert_eq!(reply_json(&out.actions), json!({"logged": 5_000}));
        assert_eq!(out.report.logs.len(), limits.max_log_lines);
        assert_eq!(out.report.logs_dropped, 5_000 - limits.max_log_lines as u64);
        assert_eq!(out.report.logs[0].message, "flood line 0");

        let out = misbehave(&handler, "stdout-flood")
            .await
            .unwrap_or_else(|e| panic!("stdout flood still replies: {}", e.kind));
        assert_eq!(out.report.stdout.len(), limits.max_stdio_bytes);
        assert_eq!(out.report.stderr.len(), limits.max_stdio_bytes);
        assert_eq!(
            out.report.stdio_dropped,
            2 * ((1 << 20) - limits.max_stdio_bytes as u64)
        );

        // The caps are per call: the next call starts with empty buffers.
        let out = misbehave(&handler, "ok").await.expect("ok");
        assert!(out.report.logs.is_empty() && out.report.stdout.is_empty());
    }
}

#[tokio::test]
async fn the_deadline_stops_a_loop_when_fuel_is_off() {
    let sandbox = sandbox_with(SandboxConfig {
        fuel: false,
        ..SandboxConfig::default()
    });
    let limits = HandlerLimits {
        deadline: Duration::from_millis(50),
        ..HandlerLimits::default()
    };
    let spec = HandlerSpec::new("misbehave", "t1")
        .limits(limits)
        .grant(all_caps());
    let handler = load(&sandbox, handlers::MISBEHAVE, spec).await;
    let started = Instant::now();
    let err = misbehave(&handler, "spin").await.expect_err("spin");
    assert_eq!(err.kind, CallErrorKind::Deadline);
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(err.report.fuel_consumed, None);
    assert_still_serves(&handler).await;
}

#[test]
fn a_spinning_handler_does_not_block_the_async_runtime() {
    // One worker thread: if a running handler held it, nothing else could
    // run until the handler's deadline.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sandbox = sandbox_with(SandboxConfig {
            fuel: false,
            ..SandboxConfig::default()
        });
        let slow = HandlerLimits {
            deadline: Duration::from_millis(3000),
            ..HandlerLimits::default()
        };
        let spinner = load(
            &sandbox,
            handlers::MISBEHAVE,
            HandlerSpec::new("spin", "noisy")
                .limits(slow)
                .grant(all_caps()),
        )
        .await;
        let echo = load(&sandbox, handlers::ECHO, HandlerSpec::new("echo", "quiet")).await;
        let spinning = tokio::spawn(async move { misbehave(&spinner, "spin").await });
        tokio::task::yield_now().await;
        let mut served = 0;
        for i in 0..50 {
            echo.on_message(&conn("quiet", "q"), &msg("echo", None, json!(i)))
                .await
                .expect("echo");
            served += 1;
        }
        assert!(
            !spinning.is_finished(),
            "the echo calls should all finish while the spinner runs"
        );
        let err = spinning.await.expect("join").expect_err("spin");
        assert_eq!(err.kind, CallErrorKind::Deadline);
        assert_eq!(served, 50);
    });
}

#[tokio::test]
async fn reuse_keeps_instance_memory_and_fresh_does_not() {
    let sandbox = sandbox();
    for (isolation, expected) in [(Isolation::Reuse, [1, 2, 3]), (Isolation::Fresh, [1, 1, 1])] {
        let spec = HandlerSpec::new("misbehave", "t1")
            .isolation(isolation)
            .grant(all_caps());
        let handler = load(&sandbox, handlers::MISBEHAVE, spec).await;
        for want in expected {
            let out = misbehave(&handler, "count").await.expect("count");
            assert_eq!(
                reply_json(&out.actions),
                json!({"count": want}),
                "{isolation}"
            );
        }
    }
}

#[tokio::test]
async fn fresh_instances_made_ahead_are_each_called_once() {
    let sandbox = sandbox();
    let limits = HandlerLimits {
        ready_instances: 2,
        ..Default::default()
    };
    let spec = HandlerSpec::new("misbehave", "t1")
        .isolation(Isolation::Fresh)
        .limits(limits)
        .grant(all_caps());
    let handler = load(&sandbox, handlers::MISBEHAVE, spec).await;
    for call in 1..=6u64 {
        let out = misbehave(&handler, "count").await.expect("count");
        // A never-called instance every time, whether it was made ahead on
        // the background thread or on this call's path.
        assert_eq!(reply_json(&out.actions), json!({"count": 1}), "call {call}");
        assert!(out.report.instantiated, "call {call}");
        // The next instances are made while the caller goes on.
        let deadline = Instant::now() + Duration::from_secs(10);
        while handler.idle_instances() < 2 {
            assert!(
                Instant::now() < deadline,
                "no instance was made ahead after call {call}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(handler.stats().instances_created >= call + 2, "call {call}");
    }
}

#[tokio::test]
async fn a_trapped_instance_is_discarded_in_reuse_mode() {
    let sandbox = sandbox();
    let spec = HandlerSpec::new("misbehave", "t1").grant(all_caps());
    let handler = load(&sandbox, handlers::MISBEHAVE, spec).await;
    assert_eq!(
        reply_json(&misbehave(&handler, "count").await.expect("count").actions),
        json!({"count": 1})
    );
    assert_eq!(
        reply_json(&misbehave(&handler, "count").await.expect("count").actions),
        json!({"count": 2})
    );
    assert_eq!(handler.idle_instances(), 1);
    misbehave(&handler, "panic").await.expect_err("panic");
    assert_eq!(
        handler.idle_instances(),
        0,
        "the trapped instance must not go back to the pool"
    );
    let out = misbehave(&handler, "count").await.expect("count");
    assert!(out.report.instantiated);
    assert_eq!(
        reply_json(&out.actions),
        json!({"count": 1}),
        "a new instance starts clean"
    );
    // A rejection is not a trap: the instance stays.
    misbehave(&handler, "no-such-mode")
        .await
        .expect_err("rejected");
    assert_eq!(handler.idle_instances(), 1);
}

#[tokio::test]
async fn a_handler_that_keeps_failing_is_quarantined_then_tried_again() {
    let sandbox = sandbox();
    let limits = HandlerLimits {
        quarantine_after: 3,
        quarantine_for: Duration::from_millis(400),
        ..HandlerLimits::default()
    };
    let spec = HandlerSpec::new("misbehave", "t1")
        .limits(limits)
        .grant(all_caps());
    let handler = load(&sandbox, handlers::MISBEHAVE, spec).await;
    for _ in 0..3 {
        assert_eq!(
            misbehave(&handler, "panic")
                .await
                .expect_err("panic")
                .kind
                .name(),
            "trap"
        );
    }
    // Quarantined: even a good call is refused, without running the handler.
    let err = misbehave(&handler, "ok").await.expect_err("quarantined");
    assert!(
        matches!(err.kind, CallErrorKind::Quarantined { .. }),
        "{}",
        err.kind
    );
    assert_eq!(
        sluice::server::rejection::client_code(&err.kind),
        "unavailable"
    );
    assert!(!err.kind.is_handler_failure());
    let stats = handler.stats();
    assert_eq!(stats.quarantines, 1);
    assert_eq!(stats.errors.get("trap"), Some(&3));
    assert_eq!(stats.errors.get("quarantined"), Some(&1));

    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_still_serves(&handler).await;
    // Rejections are not failures: they never quarantine.
    for _ in 0..5 {
        misbehave(&handler, "no-such-mode")
            .await
            .expect_err("rejected");
    }
    assert_still_serves(&handler).await;
}

async fn load_err(sandbox: &Sandbox, bytes: Vec<u8>, spec: HandlerSpec) -> LoadError {
    match sandbox.load(bytes, spec).await {
        Ok(_) => panic!("the component should have been refused"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn components_that_do_not_fit_the_world_are_refused_with_a_readable_error() {
    let sandbox = sandbox();
    let spec = || HandlerSpec::new("h", "t1");

    // No exports at all.
    let err = load_err(&sandbox, b"(component)".to_vec(), spec()).await;
    assert!(
        err.to_string()
            .contains("does not export `sluice:handler/events@0.2.0`"),
        "{err}"
    );

    // Built against another version of the package.
    let other_version = br#"(component
        (core module $m (func (export "f")))
        (core instance $i (instantiate $m))
        (func $f (canon lift (core func $i "f")))
        (instance $events (export "ping" (func $f)))
        (export "sluice:handler/events@0.0.9" (instance $events)))"#;
    let err = load_err(&sandbox, other_version.to_vec(), spec()).await;
    assert!(
        err.to_string()
            .contains("built against sluice:handler@0.0.9"),
        "{err}"
    );

    // The right name but the wrong shape.
    let wrong_shape = br#"(component
        (core module $m (func (export "f")))
        (core instance $i (instantiate $m))
        (func $f (canon lift (core func $i "f")))
        (instance $events (export "on-message" (func $f)))
        (export "sluice:handler/events@0.2.0" (instance $events)))"#;
    let err = load_err(&sandbox, wrong_shape.to_vec(), spec()).await;
    assert!(matches!(err, LoadError::World(_)), "{err}");

    // An import Sluice does not provide (a socket of its own, say).
    let foreign_import = br#"(component
        (import "wasi:http/outgoing-handler@0.2.0" (instance))
        (import "evil:net/raw" (instance)))"#;
    let err = load_err(&sandbox, foreign_import.to_vec(), spec())
        .await
        .to_string();
    assert!(err.contains("`wasi:http/outgoing-handler@0.2.0`"), "{err}");
    assert!(
        err.contains("`evil:net/raw`, which Sluice does not provide"),
        "{err}"
    );
    assert!(
        err.contains("does not export"),
        "every problem is reported at once: {err}"
    );

    // A capability the tenant did not grant: chat needs state and clock.
    let err = load_err(
        &sandbox,
        component(handlers::CHAT),
        spec().grant([Capability::Clock]),
    )
    .await;
    assert!(
        err.to_string()
            .contains("capability `state` is not granted"),
        "{err}"
    );
    assert!(!err.to_string().contains("`clock`"), "{err}");

    // A core module, garbage, and an oversized file.
    let core = wat_core_module();
    let err = load_err(&sandbox, core, spec()).await;
    assert!(err.to_string().contains("core wasm module"), "{err}");
    let err = load_err(&sandbox, b"MZ\x90\x00 not wasm".to_vec(), spec()).await;
    assert!(matches!(err, LoadError::NotAComponent(_)), "{err}");
    let small = sandbox_with(SandboxConfig {
        max_component_bytes: 1024,
        ..SandboxConfig::default()
    });
    let err = load_err(&small, component(handlers::ECHO), spec()).await;
    assert!(
        matches!(err, LoadError::TooLarge { max: 1024, .. }),
        "{err}"
    );

    // Limits the sandbox cannot honour.
    let huge = HandlerLimits {
        memory_bytes: usize::MAX,
        fuel: 0,
        ..HandlerLimits::default()
    };
    let err = load_err(&sandbox, component(handlers::ECHO), spec().limits(huge))
        .await
        .to_string();
    assert!(
        err.contains("memory_bytes") && err.contains("fuel must be greater than zero"),
        "{err}"
    );

    // A component whose declared initial memory exceeds its memory limit
    // could never start: refused at load, with the fix.
    let big_start = br#"(component
        (core module $m (memory 96))
        (core instance (instantiate $m)))"#;
    let tight = HandlerLimits {
        memory_bytes: 4 << 20,
        ..HandlerLimits::default()
    };
    let err = load_err(&sandbox, big_start.to_vec(), spec().limits(tight))
        .await
        .to_string();
    assert!(
        err.contains("6291456 bytes of initial linear memory")
            && err.contains("raise memory_bytes"),
        "{err}"
    );
    // With the defaults it is sized as an interpreter (64 MiB), so what
    // refuses it is only the missing export.
    let err = load_err(&sandbox, big_start.to_vec(), spec())
        .await
        .to_string();
    assert!(err.contains("does not export"), "{err}");

    // And the sandbox still loads and serves honest handlers afterwards.
    let echo = load(&sandbox, handlers::ECHO, spec()).await;
    echo.on_message(&conn("t1", "a"), &msg("echo", None, json!(1)))
        .await
        .expect("echo");
}

/// The smallest core wasm module, in binary form.
fn wat_core_module() -> Vec<u8> {
    b"\0asm\x01\0\0\0".to_vec()
}

#[tokio::test]
async fn the_same_component_is_compiled_once_while_used_and_freed_after() {
    let sandbox = sandbox();
    let started = Instant::now();
    let first_handler = load(
        &sandbox,
        handlers::CHAT,
        HandlerSpec::new("a", "t1").grant(all_caps()),
    )
    .await;
    let first = started.elapsed();
    let started = Instant::now();
    let second_handler = load(
        &sandbox,
        handlers::CHAT,
        HandlerSpec::new("b", "t2").grant(all_caps()),
    )
    .await;
    let second = started.elapsed();
    // Not a timing assertion on the machine's speed: the second load skips
    // compilation entirely, which is orders of magnitude cheaper.
    assert!(second < first, "second load {second:?} vs first {first:?}");
    assert_eq!(second_handler.digest().len(), 64);
    let usage = sandbox.usage();
    assert_eq!(usage.compiled_components, 1, "{usage:?}");
    // Held by each tenant that loaded it, freed with the last handler.
    assert_eq!(usage.tenants["t1"].compiled_bytes, usage.compiled_bytes);
    assert_eq!(usage.tenants["t2"].compiled_bytes, usage.compiled_bytes);
    drop((first_handler, second_handler));
    let usage = sandbox.usage();
    assert_eq!(
        (usage.compiled_components, usage.compiled_bytes),
        (0, 0),
        "{usage:?}"
    );
    assert_eq!(usage.tenants["t1"].compiled_bytes, 0);
}

#[tokio::test]
async fn the_compilation_cache_on_disk_is_used_when_configured() {
    let dir = sluice_tests::server::TempDir::new();
    let sandbox = sandbox_with(SandboxConfig {
        cache_dir: Some(dir.0.clone()),
        ..SandboxConfig::default()
    });
    let echo = load(&sandbox, handlers::ECHO, HandlerSpec::new("echo", "t1")).await;
    echo.on_message(&conn("t1", "a"), &msg("echo", None, json!(1)))
        .await
        .expect("echo");
    fn files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        files(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
    }
    // wasmtime writes its cache entries from a background thread.
    let started = Instant::now();
    while files(&dir.0) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nothing was cached in {}",
            dir.0.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
