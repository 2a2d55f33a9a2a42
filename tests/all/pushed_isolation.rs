//! One tenant's pushes cannot take what another tenant needs (issue 26,
//! findings 1 and 2): pushed handlers and their instances are bounded by
//! quotas and given back (idle instances evicted least recently used, for
//! the tenant and for the node's pool; compiled code freed with the last
//! handler that uses it, never kept for a refused push), and a push is
//! verified off the shared path (no lock a reload or another tenant waits
//! on; compiles on bounded workers under a time limit; its body bounded by
//! the tenant's component limit; its samples counted).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::config::{ChannelAccess, Config, Quotas};
use sluice::control::verify::Sample;
use sluice::sandbox::{
    CallErrorKind, Capability, HandlerLimits, HandlerSpec, Sandbox, SandboxConfig, SandboxUsage,
};
use sluice_tests::server::{Client, TestServer, route};
use sluice_tests::{component, conn, handlers, msg};

use crate::marketplace::{ALPHA_MANAGER, BETA_MANAGER, OPERATOR, api, push, server};

/// A component that compiles slowly: one core module of `functions`
/// functions of `steps` mixing steps each (nothing Cranelift can fold), in
/// a component that exports nothing (so it is refused at the world check,
/// after it compiled).
fn slow_component(functions: u32, steps: u32) -> Vec<u8> {
    fn leb(mut n: u32, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len() as u32, out);
        out.extend_from_slice(body);
    }
    let mut body = vec![0x00]; // no locals beside the parameter
    body.extend_from_slice(&[0x20, 0x00]); // local.get 0
    for i in 0..steps {
        // x = ((x rotl k) xor x) * c
        body.extend_from_slice(&[0x20, 0x00, 0x41, (i % 31 + 1) as u8, 0x77, 0x73]);
        body.extend_from_slice(&[0x41, 0x05, 0x6c, 0x22, 0x00]); // i32.const 5, i32.mul, local.tee 0
    }
    body.push(0x0b);
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[0x01, 0x60, 0x01, 0x7f, 0x01, 0x7f], &mut module);
    let mut funcs = Vec::new();
    leb(functions, &mut funcs);
    funcs.extend(std::iter::repeat_n(0u8, functions as usize));
    section(3, &funcs, &mut module);
    let mut code = Vec::new();
    leb(functions, &mut code);
    for _ in 0..functions {
        leb(body.len() as u32, &mut code);
        code.extend_from_slice(&body);
    }
    section(10, &code, &mut module);
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &module, &mut component);
    component
}

/// `bytes` with a custom section appended: the same component, another
/// digest.
pub(crate) fn variant(bytes: &[u8], n: u32) -> Vec<u8> {
    let name = b"sluice-test";
    let payload = n.to_le_bytes();
    let mut out = bytes.to_vec();
    out.push(0);
    out.push((1 + name.len() + payload.len()) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

/// Routes `h0`..`h{n-1}` of `tenant`, each to the pushed handler of the
/// same name.
pub(crate) fn route_pushed(c: &mut Config, tenant: &str, n: u32) {
    let t = c.tenants.get_mut(tenant).expect("tenant");
    for i in 0..n {
        let name = format!("h{i}");
        t.routes
            .insert(name.clone(), route(&name, ChannelAccess::None, &[], None));
    }
}

fn quotas(c: &mut Config, tenant: &str, edit: impl FnOnce(&mut Quotas)) {
    edit(&mut c.tenants.get_mut(tenant).expect("tenant").quotas);
}

fn usage(server: &TestServer) -> SandboxUsage {
    server.state.sandbox.usage()
}

fn tenant_instances(u: &SandboxUsage, tenant: &str) -> u32 {
    u.tenants.get(tenant).map_or(0, |t| t.instances)
}

fn tenant_compiled(u: &SandboxUsage, tenant: &str) -> usize {
    u.tenants.get(tenant).map_or(0, |t| t.compiled_bytes)
}

/// Resident memory of this process (the server runs in it), KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn echo_on(client: &mut Client, route: &str, id: &str) -> Value {
    client
        .request(json!({"type": route, "id": id, "data": {"n": id}}))
        .await
}

fn acked(answer: &Value, id: &str) -> bool {
    *answer == json!({"type": "ack", "id": id, "data": {"n": id}})
}

async fn connect(server: &TestServer, tenant: &str, sub: &str) -> Client {
    server
        .connect(tenant, &server.token(tenant, sub, "chat:write"))
        .await
        .expect("connects")
}

/// Push `bytes` as alpha's or beta's handler `name`.
async fn push_as(server: &TestServer, tenant: &str, name: &str, bytes: &[u8]) -> (u16, Value) {
    let token = if tenant == "alpha" {
        ALPHA_MANAGER
    } else {
        BETA_MANAGER
    };
    push(server, token, tenant, name, bytes, None, None).await
}

async fn remove(server: &TestServer, tenant: &str, name: &str) {
    let (status, answer) = api(
        server,
        "DELETE",
        &format!("/v1/tenants/{tenant}/handlers/{name}"),
        OPERATOR,
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

/// Poll `check` for up to 10 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < until, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_tenants_pushes_and_connections_never_take_the_pool_from_another() {
    // Issue 26, finding 1, as a new tenant would try it: a pool of 50
    // instance slots; alpha pushes 50 distinct echo components, every one
    // named by a route (the worst case: each connection runs on-connect on
    // all of them), and connects. Beta's echo must keep being answered.
    const PUSHED: u32 = 50;
    let server = server(&[], |c| {
        c.sandbox.pool_instances = 50;
        route_pushed(c, "alpha", PUSHED);
        quotas(c, "alpha", |q| q.pushed_handlers = 60);
    })
    .await;
    let echo = component(handlers::ECHO);
    for i in 0..PUSHED {
        let (status, answer) =
            push_as(&server, "alpha", &format!("h{i}"), &variant(&echo, i)).await;
        assert_eq!(status, 201, "push {i}: {answer}");
    }
    let mut alpha = connect(&server, "alpha", "hog").await;
    let mut beta = connect(&server, "beta", "bystander").await;
    for i in 0..20 {
        let id = format!("b{i}");
        let answer = echo_on(&mut beta, "echo", &id).await;
        assert!(acked(&answer, &id), "beta's echo {i}: {answer}");
    }
    // Alpha is served too, on any of its handlers.
    for i in [0, 17, 49] {
        let id = format!("a{i}");
        let answer = echo_on(&mut alpha, &format!("h{i}"), &id).await;
        assert!(acked(&answer, &id), "alpha's h{i}: {answer}");
    }
    let u = usage(&server);
    assert!(u.instances <= 50 && u.pool_in_use <= 50, "{u:?}");
    assert!(u.evicted > 0, "idle instances made room: {u:?}");

    // After alpha disconnects (on-disconnect on every handler), and for a
    // new connection of beta, the same.
    drop(alpha);
    drop(connect(&server, "alpha", "hog2").await);
    let mut beta2 = connect(&server, "beta", "newcomer").await;
    for (i, client) in [&mut beta, &mut beta2].into_iter().enumerate() {
        let id = format!("after{i}");
        let answer = echo_on(client, "echo", &id).await;
        assert!(acked(&answer, &id), "beta after alpha left: {answer}");
    }
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn a_tenant_holds_at_most_its_instance_quota_evicting_its_own_idle_instances() {
    let server = server(&[], |c| {
        route_pushed(c, "alpha", 8);
        quotas(c, "alpha", |q| q.instances = 4);
    })
    .await;
    let echo = component(handlers::ECHO);
    for i in 0..8 {
        let (status, answer) =
            push_as(&server, "alpha", &format!("h{i}"), &variant(&echo, i)).await;
        assert_eq!(status, 201, "{answer}");
    }
    // One connection: on-connect on 8 pushed and 3 configured handlers.
    let mut alpha = connect(&server, "alpha", "many").await;
    let u = usage(&server);
    assert!(tenant_instances(&u, "alpha") <= 4, "{u:?}");
    assert!(u.evicted >= 7, "{u:?}");
    // Every handler still answers (each call evicts the least recently used).
    for round in 0..2 {
        for i in 0..8 {
            let id = format!("r{round}h{i}");
            let answer = echo_on(&mut alpha, &format!("h{i}"), &id).await;
            assert!(acked(&answer, &id), "{answer}");
            assert!(tenant_instances(&usage(&server), "alpha") <= 4);
        }
    }
    // Beta keeps its own share.
    let mut beta = connect(&server, "beta", "b").await;
    let answer = echo_on(&mut beta, "echo", "b1").await;
    assert!(acked(&answer, "b1"), "{answer}");
}

// Two worker threads: the spinner holds one while the test runs on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_instance_quota_with_every_instance_busy_a_call_waits_then_is_unavailable() {
    let sandbox = Sandbox::new(SandboxConfig {
        pool_instances: 8,
        fuel: false,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    sandbox.set_quotas(
        "t",
        &Quotas {
            instances: 1,
            ..Quotas::default()
        },
    );
    let all = [Capability::State, Capability::Log, Capability::Clock];
    let spinner = sandbox
        .load(
            component(handlers::MISBEHAVE),
            HandlerSpec::new("spin", "t")
                .grant(all)
                .limits(HandlerLimits {
                    deadline: Duration::from_millis(400),
                    ..HandlerLimits::default()
                }),
        )
        .await
        .expect("spinner");
    let quick = |tenant: &str| {
        HandlerSpec::new("quick", tenant).limits(HandlerLimits {
            deadline: Duration::from_millis(60),
            ..HandlerLimits::default()
        })
    };
    let echo = sandbox
        .load(component(handlers::ECHO), quick("t"))
        .await
        .expect("echo");
    let other = sandbox
        .load(component(handlers::ECHO), quick("u"))
        .await
        .expect("echo of another tenant");
    let spinning = {
        let spinner = spinner.clone();
        tokio::spawn(async move {
            spinner
                .on_message(
                    &conn("t", "s"),
                    &msg("misbehave", None, json!({"mode": "spin"})),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(!spinning.is_finished(), "the spinner runs to its deadline");
    // Tenant t's only instance is busy: its other handler waits one
    // deadline for it, then is refused; tenant u is not held up.
    let started = Instant::now();
    let refused = echo
        .on_message(&conn("t", "e"), &msg("echo", None, json!(1)))
        .await
        .expect_err("no instance to be had");
    assert!(
        matches!(&refused.kind, CallErrorKind::Unavailable { detail } if detail.contains("quotas")),
        "{:?}",
        refused.kind
    );
    assert!(started.elapsed() >= Duration::from_millis(60));
    other
        .on_message(&conn("u", "o"), &msg("echo", None, json!(2)))
        .await
        .expect("another tenant is served meanwhile");
    // The spinner stops at its deadline (its instance dropped): t is served.
    assert!(
        spinning.await.expect("task").is_err(),
        "the spin ran out of time"
    );
    echo.on_message(&conn("t", "e"), &msg("echo", None, json!(3)))
        .await
        .expect("served once an instance is free");
    assert!(sandbox.usage().tenants["t"].instances <= 1);
}

#[tokio::test]
async fn on_connect_and_on_disconnect_run_only_on_pushed_handlers_a_route_names() {
    let server = server(&[], |_| {}).await;
    let echo = component(handlers::ECHO);
    for (name, n) in [("bot", 1), ("unrouted", 2)] {
        let (status, answer) = push_as(&server, "alpha", name, &variant(&echo, n)).await;
        assert_eq!(status, 201, "{answer}");
    }
    let mut alpha = connect(&server, "alpha", "lifecycle").await;
    let answer = alpha
        .request(json!({"type": "bot", "id": "1", "data": {"n": "1"}}))
        .await;
    assert_eq!(answer["type"], "ack", "{answer}");
    drop(alpha);
    let calls = |name: &'static str| {
        let server = &server;
        async move {
            let (status, answer) = api(
                server,
                "GET",
                &format!("/v1/tenants/alpha/handlers/{name}"),
                ALPHA_MANAGER,
                Value::Null,
            )
            .await;
            assert_eq!(status, 200, "{answer}");
            answer["versions"][0]["metrics"]["calls"]
                .as_u64()
                .unwrap_or(0)
        }
    };
    let until = Instant::now() + Duration::from_secs(5);
    while calls("bot").await < 3 {
        assert!(
            Instant::now() < until,
            "bot: on-connect, the message, on-disconnect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        calls("unrouted").await,
        0,
        "no route names it: never called"
    );
}

#[tokio::test]
async fn removed_handlers_give_back_their_instances_and_compiled_code() {
    const PUSHED: u32 = 10;
    let server = server(&[], |c| route_pushed(c, "alpha", PUSHED)).await;
    let before = usage(&server);
    let rss_before = rss_kib();
    let echo = component(handlers::ECHO);
    for i in 0..PUSHED {
        let (status, answer) =
            push_as(&server, "alpha", &format!("h{i}"), &variant(&echo, i)).await;
        assert_eq!(status, 201, "{answer}");
    }
    let mut alpha = connect(&server, "alpha", "user").await;
    for i in 0..PUSHED {
        let id = format!("m{i}");
        assert!(acked(
            &echo_on(&mut alpha, &format!("h{i}"), &id).await,
            &id
        ));
    }
    let full = usage(&server);
    let rss_full = rss_kib();
    assert_eq!(
        full.compiled_components,
        before.compiled_components + PUSHED as usize,
        "{full:?}"
    );
    assert!(tenant_compiled(&full, "alpha") > tenant_compiled(&before, "alpha"));
    assert!(tenant_instances(&full, "alpha") >= PUSHED, "{full:?}");

    drop(alpha);
    for i in 0..PUSHED {
        remove(&server, "alpha", &format!("h{i}")).await;
    }
    let server = &server;
    eventually(
        "the removed handlers' instances and code are given back",
        || {
            let u = usage(server);
            u.compiled_components == before.compiled_components
            && tenant_compiled(&u, "alpha") == tenant_compiled(&before, "alpha")
            // What is left: one idle instance per configured handler.
            && tenant_instances(&u, "alpha") <= 3
            && u.pool_in_use == u64::from(u.instances)
        },
    )
    .await;
    let after = usage(server);
    println!(
        "compiled: {} B before, {} B with {PUSHED} pushed, {} B after removing them; \
         instances {} / {} / {}; RSS {rss_before} / {rss_full} / {} KiB",
        before.compiled_bytes,
        full.compiled_bytes,
        after.compiled_bytes,
        before.instances,
        full.instances,
        after.instances,
        rss_kib()
    );
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn pushes_refused_by_a_check_leave_nothing_compiled() {
    // Pushed handlers may not import `clock`; the chat component does.
    let server = server(&[Capability::State], |_| {}).await;
    let before = usage(&server);
    let chat = component(handlers::CHAT);
    for i in 0..20 {
        let (status, answer) = push_as(&server, "alpha", "bot", &variant(&chat, i)).await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(answer["error"]["code"], "verification_failed");
    }
    let after = usage(&server);
    assert_eq!(
        after.compiled_components, before.compiled_components,
        "{after:?}"
    );
    assert_eq!(after.compiled_bytes, before.compiled_bytes);
    assert_eq!(
        tenant_compiled(&after, "alpha"),
        tenant_compiled(&before, "alpha")
    );

    // An honest push is served, and so are its clients.
    let (status, answer) = push_as(&server, "alpha", "bot", &component(handlers::ECHO)).await;
    assert_eq!(status, 201, "{answer}");
    let mut alpha = connect(&server, "alpha", "honest").await;
    let answer = alpha
        .request(json!({"type": "bot", "id": "1", "data": {"n": "1"}}))
        .await;
    assert!(acked(&answer, "1"), "{answer}");
}

/// Compiled bytes of `paths` loaded in a sandbox of their own (the same
/// engine settings as the server's).
async fn compiled_size(components: &[Vec<u8>]) -> usize {
    let sandbox = Sandbox::new(SandboxConfig {
        pool_instances: 4,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let all = [Capability::State, Capability::Log, Capability::Clock];
    let mut loaded = Vec::new();
    for (i, c) in components.iter().enumerate() {
        let spec = HandlerSpec::new(format!("h{i}"), "t").grant(all);
        loaded.push(sandbox.load(c.clone(), spec).await.expect("loads"));
    }
    sandbox.usage().compiled_bytes
}

#[tokio::test]
async fn a_push_past_the_handler_or_compiled_code_quota_is_refused_409() {
    let echo = component(handlers::ECHO);
    let configured = compiled_size(&[
        component(handlers::ECHO),
        component(handlers::CHAT),
        component(handlers::MISBEHAVE),
    ])
    .await;
    let one = compiled_size(&[variant(&echo, 0)]).await;
    // Alpha: room for its configured handlers and one pushed echo, not two.
    // Beta: two pushed handlers.
    let server = server(&[], |c| {
        quotas(c, "alpha", |q| {
            q.compiled_bytes = configured + one + one / 2
        });
        quotas(c, "beta", |q| q.pushed_handlers = 2);
    })
    .await;

    let (status, answer) = push_as(&server, "alpha", "h0", &variant(&echo, 0)).await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = push_as(&server, "alpha", "h1", &variant(&echo, 1)).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "quota");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("compiled_bytes")),
        "{answer}"
    );
    // The same bytes again hold nothing more; removing frees the room.
    let (status, _) = push_as(&server, "alpha", "h0", &variant(&echo, 0)).await;
    assert_eq!(status, 200);
    remove(&server, "alpha", "h0").await;
    let (status, answer) = push_as(&server, "alpha", "h1", &variant(&echo, 1)).await;
    assert_eq!(status, 201, "{answer}");

    for name in ["b0", "b1"] {
        let (status, answer) = push_as(&server, "beta", name, &variant(&echo, 10)).await;
        assert_eq!(status, 201, "{answer}");
    }
    let (status, answer) = push_as(&server, "beta", "b2", &variant(&echo, 10)).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "quota");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("pushed_handlers quota is 2")),
        "{answer}"
    );
    // A new version of a handler it has is not one more handler.
    let (status, answer) = push_as(&server, "beta", "b0", &variant(&echo, 11)).await;
    assert_eq!(status, 201, "{answer}");
    remove(&server, "beta", "b1").await;
    let (status, answer) = push_as(&server, "beta", "b2", &variant(&echo, 10)).await;
    assert_eq!(status, 201, "{answer}");
    server.assert_honest_client_served().await;
}

/// A component whose compile takes seconds.
fn slow() -> Vec<u8> {
    slow_component(SLOW_FUNCTIONS, SLOW_STEPS)
}

/// 1.1 MB that Cranelift compiles in about 4 s on one worker of the
/// 2-core test machine.
const SLOW_FUNCTIONS: u32 = 50;
const SLOW_STEPS: u32 = 2000;

#[tokio::test]
async fn a_slow_push_holds_up_no_reload_no_other_tenant_and_a_second_push_is_refused() {
    // Issue 26, finding 2: a push used to hold the registry's one lock
    // through its compile and smoke calls.
    let server = server(&[], |_| {}).await;
    let (status, answer) = push_as(&server, "beta", "bot", &component(handlers::ECHO)).await;
    assert_eq!(status, 201, "{answer}");
    let server = std::sync::Arc::new(server);
    let slow_push = {
        let server = server.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = push_as(&server, "alpha", "bot", &slow()).await;
            (answer, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!slow_push.is_finished(), "the slow push is still compiling");

    // A reload (the operator revoking a key, say) does not wait for it.
    let started = Instant::now();
    server
        .state
        .reload(server.state.config.clone())
        .await
        .expect("reload");
    let reload = started.elapsed();
    assert!(reload < Duration::from_secs(1), "reload took {reload:?}");
    // Nor does another tenant's management.
    for path in ["/v1/tenants/beta/handlers", "/v1/tenants/beta/handlers/bot"] {
        let started = Instant::now();
        let (status, answer) = api(&server, "GET", path, BETA_MANAGER, Value::Null).await;
        assert_eq!(status, 200, "{answer}");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "{path} took {took:?}");
    }
    // The same tenant's second push is refused at once, not queued.
    let started = Instant::now();
    let (status, answer) = push_as(&server, "alpha", "bot", &component(handlers::ECHO)).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"]["code"], "push_in_flight");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        !slow_push.is_finished(),
        "all of that happened during the push"
    );

    let ((status, answer), took) = slow_push.await.expect("push task");
    assert_eq!(
        status, 422,
        "refused at the world check, once compiled: {answer}"
    );
    println!("the slow push took {took:?}; the reload during it {reload:?}");
    // Honest pushes and clients are served after.
    let (status, answer) = push_as(&server, "alpha", "bot", &component(handlers::ECHO)).await;
    assert_eq!(status, 201, "{answer}");
    let mut alpha = connect(&server, "alpha", "honest").await;
    let answer = alpha
        .request(json!({"type": "bot", "id": "1", "data": {"n": "1"}}))
        .await;
    assert!(acked(&answer, "1"), "{answer}");
}

#[tokio::test]
async fn a_compile_past_the_time_limit_is_refused_and_the_next_push_is_served() {
    let server = server(&[], |c| {
        c.sandbox.compile_timeout = Duration::from_millis(300);
    })
    .await;
    let started = Instant::now();
    let (status, answer) = push_as(&server, "alpha", "bot", &slow()).await;
    let took = started.elapsed();
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "compile_timeout");
    let compile = answer["report"]["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "compile"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(compile["status"], "fail", "{answer}");
    assert!(
        compile["detail"]
            .as_str()
            .is_some_and(|d| d.contains("longer than 300 ms")),
        "{compile}"
    );
    assert!(
        took < Duration::from_secs(2),
        "answered at the limit: {took:?}"
    );

    // The compile runs on to its end on its worker; another push waits for
    // a worker (503 `busy` past the limit, with Retry-After) and is served.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, answer) = push_as(&server, "beta", "bot", &component(handlers::ECHO)).await;
        if status == 201 {
            break;
        }
        assert_eq!(status, 503, "{answer}");
        assert_eq!(answer["error"]["code"], "busy");
        assert!(Instant::now() < until, "the worker never came free");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn a_push_body_is_read_only_up_to_the_tenants_component_limit() {
    let server = server(&[], |c| {
        let beta = c.tenants.get_mut("beta").expect("beta");
        if let Some(m) = &mut beta.managed {
            m.max_component_bytes = Some(100_000);
        }
    })
    .await;
    // A 1 MB component: refused while reading the body, before anything is
    // decoded or compiled.
    let (status, answer) = push_as(&server, "beta", "bot", &vec![7u8; 1_000_000]).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "too_large");
    let (status, answer) = push_as(&server, "beta", "bot", &component(handlers::ECHO)).await;
    assert_eq!(status, 201, "{answer}");
    server.assert_honest_client_served().await;
}

#[tokio::test]
async fn a_push_carries_at_most_32_samples() {
    let server = server(&[], |_| {}).await;
    let samples = |n: usize| -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                route: "bot".into(),
                channel: None,
                data: json!({"n": i}),
            })
            .collect()
    };
    let echo = component(handlers::ECHO);
    let (status, answer) = push(
        &server,
        ALPHA_MANAGER,
        "alpha",
        "bot",
        &echo,
        Some(samples(33)),
        None,
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    let samples_check = answer["report"]["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "samples"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(samples_check["status"], "fail", "{answer}");
    assert!(
        samples_check["detail"]
            .as_str()
            .is_some_and(|d| d.contains("33 sample messages; at most 32")),
        "{samples_check}"
    );
    let (status, answer) = push(
        &server,
        ALPHA_MANAGER,
        "alpha",
        "bot",
        &echo,
        Some(samples(32)),
        None,
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["report"]["smoke"].as_array().map(Vec::len), Some(34));
}
