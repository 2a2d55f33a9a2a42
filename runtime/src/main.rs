//! The `sluice` command.

#![forbid(unsafe_code)]

mod cli;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use sluice::sandbox::{
    Capability, Connection, HandlerLimits, HandlerSpec, Isolation, Message, Principal, Sandbox,
    SandboxConfig,
};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A WebSocket runtime for realtime apps with WebAssembly handlers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve wss:// for the tenants in a config file.
    Serve {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// A dev server: self-signed certificate, demo tenant with the echo and
    /// chat handlers, a printed token and client command.
    Dev {
        /// Where the certificate, secret and config are written.
        #[arg(long, default_value = "dev")]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: String,
        /// Serve this chat handler component instead of the Rust one, e.g.
        /// one built from JavaScript, Python or C by handlers/build-lang
        /// (handlers/target/lang/js-chat.wasm).
        #[arg(long, value_name = "COMPONENT")]
        chat: Option<PathBuf>,
        /// Address of the chat demo page (its own origin, same certificate).
        #[arg(long, default_value = "127.0.0.1:8444")]
        page: String,
        /// Start a local fleet instead: a nats-server with JetStream and
        /// this many nodes (2-9) on consecutive ports from --listen.
        #[arg(long, value_name = "NODES")]
        cluster: Option<usize>,
    },
    /// Write a self-signed ECDSA P-256 certificate (and with --secret an
    /// HMAC secret) to a folder: the files the benchmark peers share.
    Cert(cli::cert::CertArgs),
    /// Mint a token for a tenant with an HMAC key (development and tests).
    Token {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The subject (`sub`).
        #[arg(long)]
        sub: String,
        /// Scopes (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Extra claims as NAME=VALUE (VALUE is JSON, or a string).
        #[arg(long = "claim")]
        claims: Vec<String>,
    },
    /// Check a configuration: syntax, unknown fields, files, keys, schemas,
    /// handlers against the WIT world. Reports every problem at once.
    Check {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Ask a running server to reload its configuration file (same as
    /// SIGHUP), through its admin listener, with the admin token.
    Reload {
        /// The server's configuration file: where its admin listener is
        /// (`admin_listen`) and the token to send (`admin_token`).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// The admin listener's address (default: the config's
        /// `admin_listen`, else 127.0.0.1:9464).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Manage pushed handlers through a running server's management API:
    /// push (verified), list, show, promote (stable, canary, shadow),
    /// rollback, rm, audit.
    Handler(cli::handler::HandlerArgs),
    /// An interactive wss client: sends each line of stdin as a text frame,
    /// prints every frame received.
    Connect(cli::connect::ConnectArgs),
    /// Run one handler call locally, through the same sandbox the server
    /// uses, and print the returned actions as JSON.
    ///
    /// Exit status: 0 when the handler returned actions, 2 when the call
    /// failed (the error kind is printed), 1 when the component could not be
    /// loaded or the arguments are wrong.
    Call(CallArgs),
    /// Print benchmark figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Audit any WebSocket endpoint from the outside: transport, handshake
    /// authentication, Origin, timeouts, compression, and with --active
    /// message validation and flooding. Exit status 1 if a check fails.
    Probe(sluice_probe::ProbeArgs),
    /// Read a mobile app (.apk, .aab, .ipa, or a folder of one) without
    /// running it: the endpoints it talks to, its transport policy, secrets
    /// it carries (MASVS); with --probe, audit its wss:// endpoints too.
    /// Exit status 1 on a high finding, 2 when the package is refused.
    Scan(cli::scan::ScanArgs),
}

#[derive(clap::Args)]
struct CallArgs {
    /// The handler component (.wasm).
    component: PathBuf,
    /// The route (the envelope's `type`), e.g. `chat.send`.
    route: String,
    /// The message's data, as JSON.
    #[arg(long, default_value = "{}")]
    data: String,
    /// The channel the message targets.
    #[arg(long)]
    channel: Option<String>,
    /// Which export to call.
    #[arg(long, default_value = "message")]
    event: sluice::sandbox::Export,
    /// The tenant of the connection and the handler.
    #[arg(long, default_value = "dev")]
    tenant: String,
    /// The subject (`sub`) of the connection.
    #[arg(long, default_value = "dev-user")]
    subject: String,
    /// Claims exposed to the handler, as a JSON object.
    #[arg(long, default_value = "{}")]
    claims: String,
    /// Capabilities granted (comma-separated: state,log,clock).
    #[arg(long, value_delimiter = ',', default_value = "state,log,clock")]
    grant: Vec<Capability>,
    /// Isolation mode: reuse or fresh.
    #[arg(long, default_value = "reuse")]
    isolation: Isolation,
    /// Fuel for the call.
    #[arg(long, default_value_t = sluice::sandbox::DEFAULT_FUEL)]
    fuel: u64,
    /// Run without fuel metering (only the deadline bounds the call).
    #[arg(long)]
    no_fuel: bool,
    /// Wall-clock deadline, in milliseconds.
    #[arg(long, default_value_t = sluice::sandbox::DEFAULT_DEADLINE.as_millis() as u64)]
    deadline_ms: u64,
    /// Memory cap, in bytes.
    #[arg(long, default_value_t = sluice::sandbox::DEFAULT_MEMORY_BYTES)]
    memory: usize,
    /// Print the call report (fuel, time, logs, stdout/stderr) too.
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// What a handler costs: size, compile time, first call, fuel and memory
    /// per call, and per-call time in reuse vs fresh, fuel on vs off.
    Sandbox {
        /// The component (e.g. handlers/target/wasm32-wasip2/release/echo.wasm).
        component: PathBuf,
        /// The route of every message (e.g. `chat.send`).
        #[arg(long, default_value = "echo")]
        route: String,
        /// The channel of every message.
        #[arg(long, default_value = "room:1")]
        channel: String,
        /// The data of every message, as JSON (e.g. '{"text":"hi"}').
        #[arg(long, default_value = r#"{"text":"hello, sluice","n":42}"#)]
        data: String,
        /// Calls per round and configuration.
        #[arg(long, default_value_t = 20_000)]
        calls: u64,
        /// Rounds (configurations alternate between rounds).
        #[arg(long, default_value_t = 7)]
        rounds: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Bytes of a freed memory slot reset by memset (the rest by madvise).
        #[arg(long, default_value_t = sluice::sandbox::DEFAULT_KEEP_RESIDENT)]
        keep_resident: usize,
        /// Fuel per call (default: the handler default).
        #[arg(long)]
        fuel: Option<u64>,
        /// Wall-clock budget per call in ms (default: the handler default).
        #[arg(long)]
        deadline_ms: Option<u64>,
        /// Memory per instance in bytes (default: the handler default).
        #[arg(long)]
        memory: Option<usize>,
    },
    /// Request/answer load over N connections: closed loop (--depth) or
    /// open loop (--rate); HDR latency, server CPU per message.
    Load(sluice::loadgen::messages::LoadArgs),
    /// What a fleet costs (a nats-server and nodes on this machine):
    /// broadcast latency on one node, on the publisher's node and across
    /// nodes; deliveries per second with 1, 2 and 3 nodes; state commits
    /// per second on JetStream KV against the embedded stores.
    Cluster {
        /// Subscribers per node in the throughput runs.
        #[arg(long, default_value_t = 30)]
        subscribers: usize,
        /// Seconds per throughput and state run.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Latency samples per configuration.
        #[arg(long, default_value_t = 500)]
        samples: usize,
    },
    /// What the marketplace control plane costs: push to serving (upload,
    /// verification, compile, smoke calls, first message) for the Rust and
    /// JavaScript chat handlers, and shadow mode per message.
    Marketplace {
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
    },
    /// What durability costs: publish throughput with channel history off,
    /// in memory and durable; the time to recover missed events; state
    /// commits per second, durable against in memory.
    Store {
        /// Where the durable store goes (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Concurrent publishers / committing calls.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds per configuration and round.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Rounds (configurations alternate between rounds).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Missed events to recover.
        #[arg(long, default_value_t = 1000)]
        missed: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One publisher, M subscribers of a channel: delivery latency and
    /// deliveries per second.
    Fanout(sluice::loadgen::fanout::FanoutArgs),
    /// Connect-and-close storm: new sessions (TCP + TLS + upgrade + token)
    /// per second.
    Storm(sluice::loadgen::storm::StormArgs),
    /// Hold N idle connections (over several processes) and report the
    /// server's memory per connection.
    Idle(sluice::loadgen::idle::IdleArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve { .. } | Command::Dev { .. });
    sluice::logging::init(if serving { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { config } => serve(config).await,
            Command::Dev {
                dir,
                listen,
                chat,
                page,
                cluster,
            } => cli::dev::run(dir, listen, chat, page, cluster)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Token {
                config,
                tenant,
                sub,
                scopes,
                ttl,
                claims,
            } => token(config, tenant, sub, scopes, ttl, claims).await,
            Command::Cert(args) => cli::cert::run(&args),
            Command::Check { config } => check(config).await,
            Command::Reload { config, admin } => reload(config, admin).await,
            Command::Connect(args) => cli::connect::run(args).await,
            Command::Handler(args) => cli::handler::run(args).await,
            Command::Call(args) => call(args).await,
            Command::Probe(args) => sluice_probe::run(args).await,
            Command::Scan(args) => cli::scan::run(args).await,
            Command::Bench(BenchCommand::Sandbox {
                component,
                route,
                channel,
                data,
                calls,
                rounds,
                json,
                keep_resident,
                fuel,
                deadline_ms,
                memory,
            }) => {
                let base = SandboxConfig {
                    keep_resident,
                    ..SandboxConfig::default()
                };
                let mut limits = HandlerLimits::default();
                if let Some(fuel) = fuel {
                    limits.fuel = fuel;
                }
                if let Some(ms) = deadline_ms {
                    limits.deadline = std::time::Duration::from_millis(ms);
                }
                if let Some(memory) = memory {
                    limits.memory_bytes = memory;
                }
                let opts = sluice::bench::SandboxBenchOptions {
                    route,
                    channel: Some(channel),
                    data,
                    calls_per_round: calls,
                    rounds,
                    limits,
                };
                bench_sandbox(component, base, opts, json).await
            }
            Command::Bench(BenchCommand::Cluster {
                subscribers,
                seconds,
                samples,
            }) => {
                let (echo, chat) = cli::dev::demo_components()?;
                cli::bench_cluster::run(
                    cli::dev::repo_root(),
                    echo,
                    chat,
                    cli::bench_cluster::Options {
                        subscribers: subscribers.max(1),
                        seconds,
                        samples: samples.max(1),
                    },
                )
                .await
                .map(|()| ExitCode::SUCCESS)
            }
            Command::Bench(BenchCommand::Marketplace {
                js_chat,
                no_js,
                pushes,
                connections,
                seconds,
                rounds,
            }) => {
                let (echo, chat) = cli::dev::demo_components()?;
                let js_chat = match (js_chat, no_js) {
                    (_, true) => None,
                    (Some(p), false) => Some(p),
                    (None, false) => Some(cli::dev::lang_component("js", "chat")?),
                };
                cli::bench_marketplace::run(
                    echo,
                    chat,
                    cli::bench_marketplace::Options {
                        js_chat,
                        pushes: pushes.max(1),
                        connections: connections.max(1),
                        seconds,
                        rounds: rounds.max(1),
                    },
                )
                .await
                .map(|()| ExitCode::SUCCESS)
            }
            Command::Bench(BenchCommand::Store {
                dir,
                concurrency,
                seconds,
                rounds,
                missed,
                json,
            }) => {
                let opts = sluice::bench_store::StoreBenchOptions {
                    dir,
                    concurrency: concurrency.max(1),
                    seconds,
                    rounds: rounds.max(1),
                    missed,
                };
                let report = sluice::bench_store::run(&opts).await?;
                print_report(json, &report, |r| {
                    println!(
                        "sluice bench store: {} concurrent publishers / calls, medians of rounds",
                        r.concurrency
                    );
                    println!(
                        "  publish, history off:      {:>10.0} /s",
                        r.publish_history_off_per_sec
                    );
                    println!(
                        "  publish, history memory:   {:>10.0} /s",
                        r.publish_history_memory_per_sec
                    );
                    println!(
                        "  publish, history durable:  {:>10.0} /s (each on disk before it returns)",
                        r.publish_history_durable_per_sec
                    );
                    println!(
                        "  recover {} missed events: {:>10.0} us (ack + events queued and drained)",
                        r.missed, r.recover_us
                    );
                    println!(
                        "  state commits, memory:     {:>10.0} /s",
                        r.state_commits_memory_per_sec
                    );
                    println!(
                        "  state commits, durable:    {:>10.0} /s (each on disk before it returns)",
                        r.state_commits_durable_per_sec
                    );
                })
            }
            Command::Bench(BenchCommand::Load(args)) => {
                let json = args.target.json;
                let report = sluice::loadgen::messages::run(args).await?;
                print_report(json, &report, sluice::loadgen::messages::print_human)
            }
            Command::Bench(BenchCommand::Fanout(args)) => {
                let json = args.target.json;
                let report = sluice::loadgen::fanout::run(args).await?;
                print_report(json, &report, sluice::loadgen::fanout::print_human)
            }
            Command::Bench(BenchCommand::Storm(args)) => {
                let json = args.target.json;
                let report = sluice::loadgen::storm::run(args).await?;
                print_report(json, &report, sluice::loadgen::storm::print_human)
            }
            Command::Bench(BenchCommand::Idle(args)) => {
                let json = args.target.json;
                match sluice::loadgen::idle::run(args).await? {
                    Some(report) => print_report(json, &report, sluice::loadgen::idle::print_human),
                    None => Ok(ExitCode::SUCCESS),
                }
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

async fn serve(config: PathBuf) -> anyhow::Result<ExitCode> {
    let config = sluice::config::Config::load(&config)?;
    let server = sluice::server::Server::bind(config).await?;
    eprintln!("sluice listening on wss://{}", server.local_addr());
    reload_on_sighup(server.state().clone());
    server.run(shutdown_signal()).await;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP: reload the configuration file; a refused reload is logged and
/// the old configuration keeps serving.
pub(crate) fn reload_on_sighup(state: std::sync::Arc<sluice::server::ServerState>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            match state.reload_from_source().await {
                Ok(summary) => tracing::info!(%summary, "configuration reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "reload refused; the old configuration keeps serving")
                }
            }
        }
    });
}

async fn reload(config: Option<PathBuf>, admin: Option<String>) -> anyhow::Result<ExitCode> {
    let config = match config {
        Some(path) => Some(sluice::config::Config::load(&path)?),
        None => None,
    };
    let (status, body) =
        sluice::server::admin::request_reload(config.as_ref(), admin.as_deref()).await?;
    if status == 200 {
        print!("{body}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprint!("{body}");
        Ok(ExitCode::FAILURE)
    }
}

async fn check(path: PathBuf) -> anyhow::Result<ExitCode> {
    let loaded = match sluice::config::Config::load(&path) {
        // A check never opens the store (a running server holds it) and
        // never contacts NATS.
        Ok(config) => {
            sluice::server::ServerState::build_with_state(
                config,
                Some(sluice::sandbox::MemoryStateStore::new()),
            )
            .await
        }
        Err(e) => Err(e),
    };
    match loaded {
        Ok(state) => {
            for (id, t) in state.tenants().iter() {
                println!(
                    "tenant {id}: {} route(s), {} handler(s), {} channel rule(s)",
                    t.routes.len(),
                    t.handlers.len(),
                    t.channels.len()
                );
            }
            let store = &state.config.store;
            match (&state.config.cluster, store.kind) {
                (Some(c), _) => println!(
                    "cluster: node {} on NATS {} (not contacted by check; history, state and presence on JetStream)",
                    c.node,
                    c.nats_urls.join(", ")
                ),
                (None, sluice::config::StoreKind::Durable) => println!(
                    "store: durable, in {}",
                    state.config.path(&store.data_dir).display()
                ),
                (None, sluice::config::StoreKind::Memory) => {
                    println!("store: memory (nothing survives a restart)")
                }
            }
            println!("{}: ok", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Print a benchmark report as JSON or for people.
fn print_report<R: serde::Serialize>(
    json: bool,
    report: &R,
    human: fn(&R),
) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        human(report);
    }
    Ok(ExitCode::SUCCESS)
}

async fn token(
    config: PathBuf,
    tenant: String,
    sub: String,
    scopes: Vec<String>,
    ttl: u64,
    claims: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let config = sluice::config::Config::load(&config)?;
    let tc = config
        .tenants
        .get(&tenant)
        .with_context(|| format!("no tenant {tenant:?} in the config"))?;
    let keys = sluice::server::auth::KeySet::load(&tenant, &tc.auth, &tc.scopes_claim, &config)
        .await
        .map_err(|p| anyhow::anyhow!(p.join("; ")))?;
    let mut extra = serde_json::Map::new();
    for c in claims {
        let (k, v) = c
            .split_once('=')
            .with_context(|| format!("--claim {c:?} is not NAME=VALUE"))?;
        extra.insert(
            k.to_owned(),
            serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned())),
        );
    }
    println!(
        "{}",
        keys.mint(&sub, &scopes, ttl, extra)
            .map_err(anyhow::Error::msg)?
    );
    Ok(ExitCode::SUCCESS)
}

async fn call(args: CallArgs) -> anyhow::Result<ExitCode> {
    let data: Value = serde_json::from_str(&args.data).context("--data is not valid JSON")?;
    let claims: Value = serde_json::from_str(&args.claims).context("--claims is not valid JSON")?;
    if !claims.is_object() {
        bail!("--claims must be a JSON object");
    }
    let sandbox = Sandbox::new(SandboxConfig {
        fuel: !args.no_fuel,
        ..SandboxConfig::default()
    })?;
    let limits = HandlerLimits {
        fuel: args.fuel,
        deadline: Duration::from_millis(args.deadline_ms),
        memory_bytes: args.memory,
        ..HandlerLimits::default()
    };
    let spec = HandlerSpec::new(args.component.display().to_string(), args.tenant.clone())
        .isolation(args.isolation)
        .limits(limits)
        .grant(args.grant.iter().copied().collect::<BTreeSet<_>>());
    let handler = sandbox
        .load_file(&args.component, spec)
        .await
        .with_context(|| format!("cannot load {}", args.component.display()))?;
    let conn = Connection {
        id: 1,
        principal: Principal {
            tenant: args.tenant,
            subject: args.subject,
            claims: claims.to_string(),
        },
    };
    let msg = Message {
        route: args.route,
        channel: args.channel,
        data: data.to_string(),
    };
    let result = handler.call_export(args.event, &conn, &msg).await;
    let (out, code) = match result {
        Ok(outcome) => {
            let mut out = json!({ "ok": true, "actions": outcome.actions.iter().map(sluice::server::marketplace::shadow::action_json).collect::<Vec<_>>() });
            if args.verbose {
                out["report"] = serde_json::to_value(&outcome.report)?;
            }
            (out, ExitCode::SUCCESS)
        }
        Err(err) => {
            let mut error = json!({ "kind": err.kind.name(), "message": err.kind.to_string(), "client_code": sluice::server::rejection::client_code(&err.kind) });
            if let sluice::sandbox::CallErrorKind::Rejected { code, message } = &err.kind {
                error["code"] = json!(code.as_str());
                error["message"] = json!(message);
            }
            let mut out = json!({ "ok": false, "error": error });
            if args.verbose || !err.report.stderr.is_empty() {
                out["report"] = serde_json::to_value(&err.report)?;
            }
            (out, ExitCode::from(2))
        }
    };
    let mut out = out;
    if args.verbose
        && let Some(peak) = peak_rss_bytes()
    {
        // What running this handler cost the host process at most, for a
        // handler author tuning limits (and the host-copy budget's test).
        out["peak_rss_bytes"] = json!(peak);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(code)
}

/// This process's peak resident memory (Linux: `VmHWM`), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

async fn bench_sandbox(
    component: PathBuf,
    base: SandboxConfig,
    opts: sluice::bench::SandboxBenchOptions,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let bytes = tokio::fs::read(&component)
        .await
        .with_context(|| format!("cannot read {}", component.display()))?;
    let report = sluice::bench::sandbox(bytes, base, &opts).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    let data: String = opts.data.chars().take(40).collect();
    let more = if data.len() < opts.data.len() {
        "..."
    } else {
        ""
    };
    println!(
        "handler {} ({} {data}{more})",
        component.display(),
        opts.route
    );
    println!(
        "  component {:.1} MiB, compiled in {} ms; limits: fuel {}, deadline {} ms, memory {:.0} MiB",
        mib(report.component_bytes as u64),
        report.compile_ms,
        report.fuel_limit,
        report.deadline_ms,
        mib(report.memory_limit_bytes as u64)
    );
    for (what, c) in [
        ("first call (new instance)", &report.first_call),
        ("warm call (reuse)", &report.warm_call),
        ("fresh call (new instance)", &report.fresh_call),
    ] {
        println!(
            "  {what:<26} {:>8} us {:>11} fuel {:>8.1} MiB memory",
            c.elapsed_us,
            c.fuel,
            mib(c.memory_bytes)
        );
    }
    println!(
        "per-call cost ({} rounds x {} calls, median of round means)",
        opts.rounds, opts.calls_per_round
    );
    println!(
        "{:<8} {:<5} {:>10} {:>10} {:>10}",
        "mode", "fuel", "us/call", "min", "max"
    );
    for r in report.rows {
        println!(
            "{:<8} {:<5} {:>10.2} {:>10.2} {:>10.2}",
            r.isolation.to_string(),
            if r.fuel { "on" } else { "off" },
            r.us_per_call,
            r.round_min_us,
            r.round_max_us
        );
    }
    Ok(ExitCode::SUCCESS)
}
