//! `sluice bench tenants`: what tenants created through the management API
//! cost, in one run, on the real binary:
//!
//! - the time to create N tenants (default 10,000) through the HTTPS
//!   management API with the operator token: total, per tenant, and the
//!   p50/p99 of one request, over a few keep-alive connections;
//! - the server's resident memory (VmRSS of its process) before and after,
//!   and the difference per tenant;
//! - the server restarted on the same durable store: the time from spawn
//!   until the management API answers with all N tenants listed (tenants
//!   are loaded before the listeners bind), and its memory then.
//!
//! Two phases, each on a fresh store: tenants with no routes (auth only: one
//! generated HS256 key), then tenants with 10 routes each (a small schema
//! each, naming a handler the tenant would push). The server is this
//! binary (`sluice serve`, a child process: its memory is its own, not the
//! client's), with a self-signed certificate and `[store] kind = "durable"`
//! in a temporary directory (or `--dir`). Figures only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use serde_json::{Value, json};

const OPERATOR: &str = "bench-operator-token-0123456789abcdef";

/// Arguments of `sluice bench tenants`.
#[derive(clap::Args, Clone, Debug)]
pub struct TenantsBenchArgs {
    /// Tenants to create per phase.
    #[arg(long, default_value_t = 10_000)]
    tenants: usize,
    /// Routes per tenant in the second phase (0: that phase is left out).
    #[arg(long, default_value_t = 10)]
    routes: usize,
    /// Keep-alive HTTPS connections creating tenants concurrently.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Where the phases' stores go (kept; default: a temporary directory,
    /// removed after).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The server binary (default: this one, `sluice serve`).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Leave out the phase with no routes.
    #[arg(long)]
    no_empty: bool,
}

/// One phase's figures.
struct Phase {
    routes: usize,
    tenants: usize,
    first_start: Duration,
    create: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
    rss_empty_kb: u64,
    rss_created_kb: u64,
    restart: Duration,
    loaded_ms: Option<u64>,
    rss_restarted_kb: u64,
    store_bytes: u64,
}

/// Run the benchmark and print the figures.
pub async fn run(args: TenantsBenchArgs) -> anyhow::Result<ExitCode> {
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("the path of this binary")?,
    };
    let (base, temporary) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("sluice-bench-tenants-{}", std::process::id())),
            true,
        ),
    };
    let n = args.tenants.max(1);
    let connections = args.connections.max(1);
    println!(
        "sluice bench tenants: {n} tenants per phase, created with the operator token over {connections} keep-alive HTTPS connections (POST /v1/tenants)"
    );
    println!(
        "server: {} serve (a child process; RSS is its VmRSS), [store] kind = \"durable\" under {}, on this machine's {} cores\n",
        bin.display(),
        base.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut phases = Vec::new();
    if !args.no_empty {
        phases.push(0);
    }
    if args.routes > 0 {
        phases.push(args.routes);
    }
    let mut results = Vec::new();
    let mut outcome = Ok(());
    for routes in phases {
        let dir = base.join(format!("routes-{routes}"));
        let _ = std::fs::remove_dir_all(&dir);
        match phase(&bin, &dir, n, routes, connections).await {
            Ok(p) => {
                print_phase(&p);
                results.push(p);
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&base);
    }
    outcome?;
    if !results.is_empty() {
        println!(
            "| routes per tenant | create {n} | per tenant | p50 | p99 | RSS per tenant (after create) | RSS per tenant (after restart) | start-up with {n} (empty store) |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for p in &results {
            println!(
                "| {} | {:.1} s | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} KiB | {:.1} KiB | {:.2} s ({:.2} s) |",
                p.routes,
                p.create.as_secs_f64(),
                p.create.as_secs_f64() * 1e3 / p.tenants as f64,
                ms(p.p50),
                ms(p.p99),
                per_tenant_kib(p.rss_created_kb, p.rss_empty_kb, p.tenants),
                per_tenant_kib(p.rss_restarted_kb, p.rss_empty_kb, p.tenants),
                p.restart.as_secs_f64(),
                p.first_start.as_secs_f64(),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn per_tenant_kib(after_kb: u64, before_kb: u64, n: usize) -> f64 {
    (after_kb as f64 - before_kb as f64) / n as f64
}

fn print_phase(p: &Phase) {
    println!("{} tenants with {} routes each:", p.tenants, p.routes);
    println!(
        "  first start (empty store):   {:>9.3} s until the management API answers",
        p.first_start.as_secs_f64()
    );
    println!(
        "  create:                      {:>9.2} s total, {:.2} ms per tenant; one request p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        p.create.as_secs_f64(),
        p.create.as_secs_f64() * 1e3 / p.tenants as f64,
        ms(p.p50),
        ms(p.p99),
        ms(p.max)
    );
    println!(
        "  RSS:                         {:>9} KiB empty, {} KiB after creating: {:.1} KiB per tenant",
        p.rss_empty_kb,
        p.rss_created_kb,
        per_tenant_kib(p.rss_created_kb, p.rss_empty_kb, p.tenants)
    );
    println!(
        "  restart on the same store:   {:>9.3} s until the API lists all {} tenants{}",
        p.restart.as_secs_f64(),
        p.tenants,
        p.loaded_ms
            .map(|t| format!(" (the server's own log: loaded in {t} ms)"))
            .unwrap_or_default()
    );
    println!(
        "  RSS after restart:           {:>9} KiB: {:.1} KiB per tenant over the empty server",
        p.rss_restarted_kb,
        per_tenant_kib(p.rss_restarted_kb, p.rss_empty_kb, p.tenants)
    );
    println!(
        "  store on disk:               {:>9.1} MiB ({:.1} KiB per tenant)\n",
        p.store_bytes as f64 / (1 << 20) as f64,
        p.store_bytes as f64 / 1024.0 / p.tenants as f64
    );
}

/// A free loopback port (bound, read, released: the server binds it next).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn config(main: u16, admin: u16, management: u16) -> String {
    format!(
        r#"# sluice bench tenants: no tenant in the file, all come from the API.
[server]
listen = "127.0.0.1:{main}"
admin_listen = "127.0.0.1:{admin}"
tls_cert = "cert.pem"
tls_key = "key.pem"
admin_token = {{ secret_file = "operator.token" }}

[store]
kind = "durable"
data_dir = "data"

[management]
listen = "127.0.0.1:{management}"
"#
    )
}

/// Tenant `i`'s body: one generated HS256 key, and `routes` routes with a
/// small schema each, to a handler it would push (`managed`).
fn tenant_body(i: usize, routes: usize) -> Value {
    let mut tenant = json!({
        "auth": {"issuer": "sluice-bench", "audience": "sluice", "keys": [{"kid": "k1", "algorithm": "HS256"}]},
    });
    if routes > 0 {
        let mut r = serde_json::Map::new();
        for j in 0..routes {
            r.insert(
                format!("app.r{j}"),
                json!({
                    "handler": "app",
                    "schema": {
                        "type": "object",
                        "required": ["text"],
                        "properties": {"text": {"type": "string", "maxLength": 200}, "n": {"type": "integer", "minimum": 0}},
                        "additionalProperties": false
                    }
                }),
            );
        }
        tenant["routes"] = Value::Object(r);
        tenant["managed"] = json!({"grants": ["state"]});
    }
    json!({"id": format!("t{i:06}"), "tenant": tenant})
}

/// The server process, stopped (SIGTERM, then SIGKILL) when dropped.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn spawn(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        let log = log_path(dir);
        let out = std::fs::File::create(&log)?;
        let child = std::process::Command::new(bin)
            .arg("serve")
            .arg("-c")
            .arg(dir.join("sluice.toml"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self { child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// VmRSS of the server process, KiB.
    fn rss_kb(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .context("reading the server's /proc status (Linux only)")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in the server's /proc status")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Still running? (The log's tail when not.)
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "the server exited ({status}):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// SIGTERM, and wait (SIGKILL after 30 s).
    async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A new log file in `dir` for each server started.
fn log_path(dir: &Path) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    dir.join(format!("server-{}.log", N.fetch_add(1, Ordering::Relaxed)))
}

/// HTTPS to the management API, one keep-alive connection.
struct Api {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

type Sender = SendRequest<Full<Bytes>>;

impl Api {
    fn new(addr: SocketAddr, ca_pem: &[u8]) -> anyhow::Result<Self> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert.map_err(|e| anyhow::anyhow!("the server's certificate: {e}"))?)?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            addr,
            tls: Arc::new(tls),
        })
    }

    async fn connect(&self) -> anyhow::Result<Sender> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

async fn send(
    sender: &mut Sender,
    method: http::Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Bytes)> {
    sender.ready().await?;
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::AUTHORIZATION, format!("Bearer {OPERATOR}"));
    let bytes = match body {
        Some(b) => {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(serde_json::to_vec(b)?)
        }
        None => Bytes::new(),
    };
    let response = sender.send_request(request.body(Full::new(bytes))?).await?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading an answer: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// Poll until `GET /v1/tenants` answers 200 listing `expect` tenants: the
/// time since `since`.
async fn until_serving(
    server: &mut Server,
    api: &Api,
    expect: usize,
    since: Instant,
) -> anyhow::Result<Duration> {
    let deadline = since + Duration::from_secs(600);
    loop {
        server.check_alive()?;
        if let Ok(mut s) = api.connect().await
            && let Ok((200, body)) = send(&mut s, http::Method::GET, "/v1/tenants", None).await
        {
            let took = since.elapsed();
            let list: Value = serde_json::from_slice(&body)?;
            let listed = list["tenants"].as_array().map_or(0, Vec::len);
            if listed != expect {
                bail!("the restarted server lists {listed} tenants, not {expect}");
            }
            return Ok(took);
        }
        if Instant::now() > deadline {
            bail!("the server did not answer within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The server's own `took_ms` of "tenants of the management API loaded".
fn loaded_ms(log: &str) -> Option<u64> {
    log.lines()
        .filter(|l| l.contains("tenants of the management API loaded"))
        .find_map(|l| {
            let at = l.find("took_ms")?;
            l[at..]
                .trim_start_matches("took_ms")
                .trim_start_matches(['=', ':', '"', ' '])
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// One phase: a fresh store, N tenants with `routes` routes, a restart.
async fn phase(
    bin: &Path,
    dir: &Path,
    n: usize,
    routes: usize,
    connections: usize,
) -> anyhow::Result<Phase> {
    std::fs::create_dir_all(dir)?;
    sluice::dev_files::write_cert(dir, false)?;
    std::fs::write(dir.join("operator.token"), OPERATOR)?;
    let management = free_port()?;
    std::fs::write(
        dir.join("sluice.toml"),
        config(free_port()?, free_port()?, management),
    )?;
    let api = Arc::new(Api::new(
        SocketAddr::from(([127, 0, 0, 1], management)),
        &std::fs::read(dir.join("cert.pem"))?,
    )?);

    let started = Instant::now();
    let mut server = Server::spawn(bin, dir)?;
    let first_start = until_serving(&mut server, &api, 0, started).await?;
    // Let start-up's transient allocations settle before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_empty_kb = server.rss_kb()?;

    let next = Arc::new(AtomicUsize::new(0));
    let begun = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (api, next) = (api.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = api.connect().await?;
            let mut times = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(times);
                }
                let body = tenant_body(i, routes);
                let t = Instant::now();
                let (status, answer) =
                    send(&mut sender, http::Method::POST, "/v1/tenants", Some(&body)).await?;
                times.push(t.elapsed());
                if status != 201 {
                    bail!(
                        "creating tenant {i} answered {status}: {}",
                        String::from_utf8_lossy(&answer)
                    );
                }
            }
        }));
    }
    let mut times = Vec::with_capacity(n);
    for t in tasks {
        times.extend(t.await??);
    }
    let create = begun.elapsed();
    times.sort();
    server.check_alive()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_created_kb = server.rss_kb()?;
    server.stop().await;

    let restarted = Instant::now();
    let mut server = Server::spawn(bin, dir)?;
    let restart = until_serving(&mut server, &api, n, restarted).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_restarted_kb = server.rss_kb()?;
    let loaded_ms = loaded_ms(&server.log_text());
    server.stop().await;

    Ok(Phase {
        routes,
        tenants: n,
        first_start,
        create,
        p50: percentile(&times, 0.50),
        p99: percentile(&times, 0.99),
        max: times.last().copied().unwrap_or_default(),
        rss_empty_kb,
        rss_created_kb,
        restart,
        loaded_ms,
        rss_restarted_kb,
        store_bytes: dir_bytes(&dir.join("data")),
    })
}
