//! `sluice bench marketplace`: what the control plane costs, in one run:
//! - push to serving: from the start of `POST .../versions` (upload,
//!   verification, compile, smoke calls) to the first message answered by
//!   the new version, for the Rust and JavaScript chat handlers, each on a
//!   fresh server (nothing compiled yet, no compilation cache);
//! - shadow mode per message: chat messages at depth 1 against a stable
//!   version alone, then with a shadow version (the same component with an
//!   extra custom section: a new digest, the same behaviour), rounds
//!   alternating.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::SinkExt as _;
use tokio_tungstenite::tungstenite::Message;

use sluice::dev_files::{DEMO_TENANT, DemoConfig, demo_auth};
use sluice::server::admin::client::Management;
use sluice::token::Minter;

use super::bench_cluster::{Node, Socket, client, next_json, pct, start_node_with};
use super::demo_handlers::{demo_components, lang_component};

/// Arguments of `sluice bench marketplace`.
#[derive(clap::Args)]
pub struct MarketplaceBenchArgs {
    /// The JavaScript chat component (default: built by
    /// `handlers/build-lang js`).
    #[arg(long)]
    js_chat: Option<PathBuf>,
    /// Leave the JavaScript handler out.
    #[arg(long)]
    no_js: bool,
    /// Pushes per component, each on a fresh server.
    #[arg(long, default_value_t = 3)]
    pushes: usize,
    /// Connections sending in the shadow runs.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Seconds per shadow run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Rounds of the shadow runs (stable only and with shadow alternate).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

const OPERATOR: &str = "bench-operator-token-0123456789abcdef";

fn config(echo: &Path) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
tls_cert = "cert.pem"
tls_key = "key.pem"
admin_token = {{ secret_file = "operator.token" }}

[store]
kind = "memory"   # pushed versions in memory: every push compiles afresh

{auth}
[tenants.demo.handlers.echo]
component = {echo:?}

[tenants.demo.managed]
grants = ["state", "log", "clock"]

[tenants.demo.routes."chat.join"]
handler = "room"
channel = "subscribe"

[tenants.demo.routes."chat.send"]
handler = "room"
channel = "publish"
schema = {{ type = "object", required = ["text"], properties = {{ text = {{ type = "string" }} }}, examples = [{{ text = "hello" }}] }}

[[tenants.demo.channels]]
pattern = "room:{{id}}"
"#,
        auth = demo_auth(),
        echo = echo.display().to_string()
    )
}

/// `bytes` with one more custom section: a different digest, the same
/// component.
fn with_custom_section(bytes: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let name = b"sluice-bench";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// The management API of `node` (HTTPS, trusting the bench certificate
/// in `dir`).
fn api(node: &Node, dir: &Path) -> anyhow::Result<Management> {
    let addr = node.management.context("no management listener")?;
    Management::new(&addr.to_string(), Some(&dir.join("cert.pem")))
}

async fn push(
    node: &Node,
    dir: &Path,
    bytes: &[u8],
    stage: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let api = api(node, dir)?;
    let stage = stage
        .map(|s| serde_json::from_value(serde_json::json!(s)))
        .transpose()?;
    let body = sluice::control::client::push_body(bytes, None, stage, None);
    let (status, answer) = api
        .request(
            http::Method::POST,
            "/v1/tenants/demo/handlers/room/versions",
            Some(OPERATOR),
            body,
        )
        .await?;
    let answer: serde_json::Value = serde_json::from_slice(&answer)?;
    if status != 201 {
        bail!("push refused ({status}): {answer}");
    }
    Ok(answer)
}

async fn request(s: &mut Socket, msg: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let id = msg["id"].clone();
    s.send(Message::text(msg.to_string())).await?;
    loop {
        let f = next_json(s).await?;
        if (f["type"] == "ack" || f["type"] == "error") && f["id"] == id {
            return Ok(f);
        }
    }
}

fn token(node: &Node) -> anyhow::Result<String> {
    Ok(Minter::for_tenant(&node.state.config, DEMO_TENANT)?.mint(
        "bench",
        &[],
        3600,
        serde_json::Map::new(),
    )?)
}

/// Run the benchmark.
pub async fn run(args: MarketplaceBenchArgs) -> anyhow::Result<ExitCode> {
    let (echo, chat) = demo_components()?;
    let js_chat = match (&args.js_chat, args.no_js) {
        (_, true) => None,
        (Some(p), false) => Some(p.clone()),
        (None, false) => Some(lang_component("js", "chat")?),
    };
    let opts = MarketplaceBenchArgs {
        pushes: args.pushes.max(1),
        connections: args.connections.max(1),
        rounds: args.rounds.max(1),
        ..args
    };
    let dir = std::env::temp_dir().join(format!("sluice-bench-marketplace-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir, &echo, &chat, js_chat.as_deref(), &opts).await;
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|()| ExitCode::SUCCESS)
}

async fn measure(
    dir: &Path,
    echo: &Path,
    chat: &Path,
    js_chat: Option<&Path>,
    opts: &MarketplaceBenchArgs,
) -> anyhow::Result<()> {
    sluice::dev_files::write_cert(dir, false)?;
    sluice::dev_files::prepare(dir, &DemoConfig::new("127.0.0.1:0", echo, chat))?;
    std::fs::write(dir.join("operator.token"), OPERATOR)?;
    let text = config(echo);
    let ca = std::fs::read(dir.join("cert.pem"))?;
    println!(
        "sluice bench marketplace: server and clients in this process, on this machine's {} cores\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    println!(
        "Push to serving ({} pushes each, every one on a fresh server: verification and compile included):",
        opts.pushes
    );
    println!(
        "| component | size | push answered (median) | first message served (median) | verification alone (median) |"
    );
    println!("|---|---|---|---|---|");
    let mut components = vec![("Rust chat", chat.to_owned())];
    if let Some(js) = js_chat {
        components.push(("JavaScript chat", js.to_owned()));
    }
    for (name, path) in components {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let (mut answered, mut served, mut verified) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..opts.pushes {
            let node = start_node_with(&text, dir, true).await?;
            let mut c = client(&node, &ca, &token(&node)?).await?;
            let started = Instant::now();
            let pushed = push(&node, dir, &bytes, None).await?;
            answered.push(started.elapsed());
            let answer = request(
                &mut c,
                serde_json::json!({"type": "chat.join", "id": format!("j{i}"), "channel": "room:1"}),
            )
            .await?;
            served.push(started.elapsed());
            if answer["type"] != "ack" {
                bail!("the first message was not served: {answer}");
            }
            verified.push(Duration::from_millis(
                pushed["report"]["took_ms"].as_u64().unwrap_or(0),
            ));
        }
        for v in [&mut answered, &mut served, &mut verified] {
            v.sort();
        }
        println!(
            "| {name} | {:.1} MB | {:.0} ms | {:.0} ms | {:.0} ms |",
            bytes.len() as f64 / 1e6,
            pct(&answered, 0.5).as_secs_f64() * 1e3,
            pct(&served, 0.5).as_secs_f64() * 1e3,
            pct(&verified, 0.5).as_secs_f64() * 1e3,
        );
    }

    println!(
        "\nShadow mode per message (Rust chat, `chat.send` at depth 1 on {} connections, {} rounds of {:.0} s, alternating):",
        opts.connections, opts.rounds, opts.seconds
    );
    let chat_bytes = std::fs::read(chat)?;
    let node = start_node_with(&text, dir, true).await?;
    push(&node, dir, &chat_bytes, None).await?;
    let shadow = with_custom_section(&chat_bytes, "shadow");
    let admin = api(&node, dir)?;
    let mut rows: [(Vec<f64>, Vec<Duration>, Vec<f64>); 2] = Default::default();
    let mut shadow_version = None;
    for round in 0..opts.rounds {
        for (i, with_shadow) in [false, true].into_iter().enumerate() {
            if with_shadow {
                match shadow_version {
                    None => {
                        let p = push(&node, dir, &shadow, Some("shadow")).await?;
                        shadow_version = p["version"].as_u64();
                    }
                    Some(v) => {
                        promote(&admin, v, "shadow").await?;
                    }
                }
            } else if let Some(v) = shadow_version {
                promote(&admin, v, "none").await?;
            }
            let cpu0 = cpu_seconds();
            let (msgs, mut lat) = load(&node, &ca, opts.connections, opts.seconds, round).await?;
            let cpu = cpu_seconds() - cpu0;
            lat.sort();
            rows[i].0.push(msgs as f64 / opts.seconds);
            rows[i].1.extend(lat);
            rows[i].2.push(cpu / msgs.max(1) as f64 * 1e6);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "| stable only / with shadow | msg/s (median) | p50 | p99 | process CPU per message |"
    );
    println!("|---|---|---|---|---|");
    for (i, name) in ["stable only", "stable + shadow"].into_iter().enumerate() {
        let r = &mut rows[i];
        r.1.sort();
        let (rate, cpu) = (median(&mut r.0), median(&mut r.2));
        println!(
            "| {name} | {rate:.0} | {:.0} us | {:.0} us | {cpu:.1} us |",
            pct(&r.1, 0.5).as_secs_f64() * 1e6,
            pct(&r.1, 0.99).as_secs_f64() * 1e6,
        );
    }
    let show = admin
        .request(
            http::Method::GET,
            "/v1/tenants/demo/handlers/room",
            Some(OPERATOR),
            Vec::new(),
        )
        .await?;
    let show: serde_json::Value = serde_json::from_slice(&show.1)?;
    let s = &show["shadow"];
    println!(
        "\nShadow report: {} compared, {} same, {} diverged (the same component: only the `at` time of chat events, read from the clock in each call, can differ)",
        s["compared"], s["same"], s["diverged"]
    );
    Ok(())
}

async fn promote(admin: &Management, version: u64, stage: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({"version": version, "stage": stage}).to_string();
    let (status, answer) = admin
        .request(
            http::Method::POST,
            "/v1/tenants/demo/handlers/room/promote",
            Some(OPERATOR),
            body.into_bytes(),
        )
        .await?;
    if status != 200 {
        bail!(
            "promote refused ({status}): {}",
            String::from_utf8_lossy(&answer)
        );
    }
    Ok(())
}

/// This process's CPU time (user + system), seconds.
fn cpu_seconds() -> f64 {
    sluice::loadgen::probe::Probe::new(std::process::id())
        .and_then(|p| p.read())
        .map_or(0.0, |r| r.cpu.as_secs_f64())
}

/// `connections` clients, each on its own room, sending `chat.send` one at
/// a time for `seconds`: messages answered and their latencies.
async fn load(
    node: &Node,
    ca: &[u8],
    connections: usize,
    seconds: f64,
    round: usize,
) -> anyhow::Result<(u64, Vec<Duration>)> {
    let token = token(node)?;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let mut s = client(node, ca, &token).await?;
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let a = request(
                    &mut s,
                    serde_json::json!({"type": "chat.send", "id": n.to_string(), "channel": format!("room:{round}-{c}"), "data": {"text": "hi"}}),
                )
                .await?;
                if a["type"] != "ack" {
                    bail!("not served: {a}");
                }
                lat.push(t.elapsed());
                n += 1;
            }
            Ok::<_, anyhow::Error>((n, lat))
        }));
    }
    let (mut total, mut all) = (0, Vec::new());
    for t in tasks {
        let (n, lat) = t.await??;
        total += n;
        all.extend(lat);
    }
    Ok((total, all))
}
