//! `sluice bench load|fanout|storm|idle`: a load generator for any Sluice
//! deployment (and for the comparison peers, which speak the same client
//! protocol).
//!
//! What it shares between modes lives here: the target (URL, CA, the
//! client protocol: Sluice's, or Centrifuge's for `peers/centrifuge`, tokens
//! minted per connection from a tenant's key, several source addresses so
//! that connection counts beyond one address's ephemeral ports work), a
//! sharded HDR latency histogram, the server probe (CPU time and RSS of the
//! server process, read from `/proc`), the progress line and the summary.

pub mod centrifuge;
pub mod fanout;
pub mod frame_kind;
pub mod idle;
pub mod messages;
pub mod probe;
pub mod storm;

pub use frame_kind::{FrameKind, classify};

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use crate::client::{ClientOptions, ClientSocket, ConnectError, Connector, TokenVia};
use sluice_token::Minter;

/// Where to connect and how to authenticate: the arguments every mode takes.
#[derive(clap::Args, Clone, Debug)]
pub struct TargetArgs {
    /// The server, e.g. wss://127.0.0.1:8443/ws/demo.
    pub url: String,
    /// PEM certificate(s) to trust (the server's CA or self-signed cert).
    #[arg(long)]
    pub ca: PathBuf,
    /// Mint a token per connection from this Sluice config's tenant key
    /// (the tenant is the URL's last path segment unless --tenant).
    #[arg(long, conflicts_with = "token")]
    pub config: Option<PathBuf>,
    /// The tenant whose key mints tokens (with --config).
    #[arg(long, requires = "config")]
    pub tenant: Option<String>,
    /// Scopes put in minted tokens (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub scopes: Vec<String>,
    /// The subject of connection N's minted token; `{n}` is replaced by N.
    #[arg(long, default_value = "bench-{n}")]
    pub subject: String,
    /// One fixed token for every connection (instead of --config).
    #[arg(long)]
    pub token: Option<String>,
    /// Where to send the token: header, subprotocol or query.
    #[arg(long, default_value = "header")]
    pub via: String,
    /// Connect from this many source addresses, 127.0.0.1, .2, ... (each
    /// has about 28,000 ephemeral ports here).
    #[arg(long, default_value_t = 1)]
    pub sources: u8,
    /// The client protocol: `sluice` (Sluice's envelope, which the Node peer
    /// and the bare echo answer too) or `centrifuge` (Centrifuge's JSON
    /// protocol: the token in a connect command, routes as RPCs, channels
    /// as subscribe and publish commands, several replies per frame).
    #[arg(long, value_enum, default_value_t = Protocol::Sluice)]
    pub protocol: Protocol,
    /// The server's process id: report its CPU time per message and RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the summary as JSON (one object on stdout).
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// The client protocol a server speaks.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Sluice's envelope (`{"type":...,"data":...}`), one reply per frame.
    #[default]
    Sluice,
    /// Centrifuge's JSON protocol ([`centrifuge`]).
    Centrifuge,
}

impl Protocol {
    /// The text of one message of `route` (to `channel`, if any); `id`
    /// numbers Centrifuge's commands (Sluice's messages carry none).
    pub fn request(self, id: u32, route: &str, channel: Option<&str>, data: &Value) -> String {
        match self {
            Self::Sluice => {
                let mut env = serde_json::Map::new();
                env.insert("type".into(), Value::String(route.to_owned()));
                if let Some(c) = channel {
                    env.insert("channel".into(), Value::String(c.to_owned()));
                }
                env.insert("data".into(), data.clone());
                Value::Object(env).to_string()
            }
            Self::Centrifuge => centrifuge::request(id, route, channel, data),
        }
    }

    /// The text that joins `channel`: Sluice's `route` (`subscribe`, or a
    /// handler's route such as `chat.join`), Centrifuge's subscribe command.
    pub fn join(self, id: u32, route: &str, channel: Option<&str>) -> String {
        match self {
            Self::Sluice => self.request(id, route, channel, &Value::Object(Default::default())),
            Self::Centrifuge => centrifuge::subscribe(id, channel.unwrap_or_default()),
        }
    }

    /// Each reply in a text frame, with what it is: a Sluice frame is one
    /// reply; a Centrifuge frame holds one per line.
    pub fn replies(self, text: &str) -> impl Iterator<Item = (FrameKind, &str)> {
        let (whole, lines) = match self {
            Self::Sluice => (Some((classify(text), text)), None),
            Self::Centrifuge => (
                None,
                Some(centrifuge::replies(text).map(|l| (centrifuge::classify(l), l))),
            ),
        };
        whole.into_iter().chain(lines.into_iter().flatten())
    }
}

/// Tokens for connections: none, one fixed, or minted per connection.
enum Tokens {
    None,
    Fixed(String),
    Minted {
        minter: Box<Minter>,
        subject: String,
        scopes: Vec<String>,
    },
}

/// A prepared target: connectors (one per source address) and tokens.
pub struct Target {
    url: String,
    connectors: Vec<Connector>,
    tokens: Tokens,
    /// `--protocol`.
    pub protocol: Protocol,
    /// Set by `--server-pid`.
    pub server_pid: Option<u32>,
    /// `--json`.
    pub json: bool,
    /// `--quiet`.
    pub quiet: bool,
}

impl Target {
    /// Load the CA, the tenant key and build one connector per source.
    pub async fn new(args: &TargetArgs, resume_sessions: bool) -> anyhow::Result<Self> {
        let via = match args.via.as_str() {
            "header" => TokenVia::Header,
            "subprotocol" => TokenVia::Subprotocol,
            "query" => TokenVia::Query,
            other => bail!("--via {other:?}: expected header, subprotocol or query"),
        };
        let ca_pem =
            std::fs::read(&args.ca).with_context(|| format!("reading {}", args.ca.display()))?;
        if args.sources == 0 {
            bail!("--sources must be at least 1");
        }
        let mut connectors = Vec::new();
        for i in 0..args.sources {
            let bind = (args.sources > 1).then_some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i)));
            connectors.push(
                Connector::new(&ClientOptions {
                    ca_pem: ca_pem.clone(),
                    via,
                    bind,
                    resume_sessions,
                    ..ClientOptions::default()
                })
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            );
        }
        let tokens = match (&args.config, &args.token) {
            (Some(path), _) => {
                let config = sluice_config::Config::load(path)?;
                let tenant = match &args.tenant {
                    Some(t) => t.clone(),
                    None => args
                        .url
                        .trim_end_matches('/')
                        .rsplit('/')
                        .next()
                        .unwrap_or_default()
                        .split('?')
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                };
                if !config.tenants.contains_key(&tenant) {
                    bail!("no tenant {tenant:?} in {} (use --tenant)", path.display());
                }
                Tokens::Minted {
                    minter: Box::new(Minter::for_tenant(&config, &tenant)?),
                    subject: args.subject.clone(),
                    scopes: args.scopes.clone(),
                }
            }
            (None, Some(token)) => Tokens::Fixed(token.clone()),
            (None, None) => Tokens::None,
        };
        Ok(Self {
            url: args.url.clone(),
            connectors,
            tokens,
            protocol: args.protocol,
            server_pid: args.server_pid,
            json: args.json,
            quiet: args.quiet,
        })
    }

    /// The token of connection `n`.
    pub fn token(&self, n: u64) -> anyhow::Result<Option<String>> {
        Ok(match &self.tokens {
            Tokens::None => None,
            Tokens::Fixed(t) => Some(t.clone()),
            Tokens::Minted {
                minter,
                subject,
                scopes,
            } => Some(minter.mint(
                &subject.replace("{n}", &n.to_string()),
                scopes,
                24 * 3600,
                serde_json::Map::new(),
            )?),
        })
    }

    /// Open connection `n` with `token` (from its source address), and
    /// with Centrifuge send its connect command and wait for the reply.
    pub async fn connect(&self, n: u64, token: Option<&str>) -> Result<ClientSocket, ConnectError> {
        let connector = &self.connectors[(n % self.connectors.len() as u64) as usize];
        match self.protocol {
            Protocol::Sluice => connector.connect(&self.url, token).await,
            Protocol::Centrifuge => {
                let mut socket = connector.connect(&self.url, None).await?;
                centrifuge::authenticate(&mut socket, token).await?;
                Ok(socket)
            }
        }
    }

    /// Open `count` connections, `parallel` at a time; each is handed to
    /// `ready` (in any order). Fails on the first refused connection.
    pub async fn open_many(
        self: &Arc<Self>,
        count: u64,
        parallel: usize,
        first: u64,
    ) -> anyhow::Result<Vec<(u64, ClientSocket)>> {
        let tokens = (first..first + count)
            .map(|n| Ok((n, self.token(n)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for (n, token) in tokens {
            let target = Arc::clone(self);
            let permit = Arc::clone(&sem)
                .acquire_owned()
                .await
                .context("semaphore closed")?;
            tasks.spawn(async move {
                let _permit = permit;
                let socket = target
                    .connect(n, token.as_deref())
                    .await
                    .with_context(|| format!("connection {n}"))?;
                anyhow::Ok((n, socket))
            });
        }
        let mut out = Vec::with_capacity(count as usize);
        while let Some(r) = tasks.join_next().await {
            out.push(r.context("connect task panicked")??);
        }
        Ok(out)
    }
}

/// Latencies in microseconds, sharded so that many connection tasks can
/// record without contending on one lock.
pub struct Latencies {
    shards: Vec<Mutex<Histogram<u64>>>,
    empty: Histogram<u64>,
}

impl Latencies {
    /// 16 shards, 1 us to 60 s at 3 significant figures.
    pub fn new() -> anyhow::Result<Self> {
        let empty = new_histogram()?;
        Ok(Self {
            shards: (0..16).map(|_| Mutex::new(empty.clone())).collect(),
            empty,
        })
    }

    /// Record `d` from the task with key `key`.
    pub fn record(&self, key: u64, d: Duration) {
        let shard = &self.shards[(key % self.shards.len() as u64) as usize];
        if let Ok(mut h) = shard.lock() {
            h.saturating_record(d.as_micros().max(1) as u64);
        }
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = self.empty.clone();
        for shard in &self.shards {
            if let Ok(h) = shard.lock() {
                let _ = all.add(&*h);
            }
        }
        all
    }
}

/// An empty histogram of microseconds (1 us to 60 s, 3 significant figures).
pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("creating a latency histogram")
}

/// The text of a frame read from the server (none for a ping or pong); a
/// close frame ends the run.
pub fn text_of(frame: &tokio_tungstenite::tungstenite::Message) -> anyhow::Result<Option<&str>> {
    use tokio_tungstenite::tungstenite::Message;
    match frame {
        Message::Text(t) => Ok(Some(t.as_str())),
        Message::Close(_) => bail!("closed by the server"),
        _ => Ok(None),
    }
}

/// Percentiles of a histogram, in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
}

impl LatencySummary {
    /// Summarise `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }

    /// `p50 0.41 ms  p99 1.20 ms  p99.9 2.01 ms  max 7.50 ms`.
    pub fn line(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us)
        )
    }
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// Counters shared by connection tasks and the progress line.
#[derive(Default)]
pub struct Counters {
    /// Set when the measured window starts (after warm-up).
    pub measuring: AtomicBool,
    /// Set when the run is over: tasks stop sending.
    pub stop: AtomicBool,
    /// Answers (`ack` or echo) in the measured window.
    pub answered: AtomicU64,
    /// `error` frames in the measured window.
    pub refused: AtomicU64,
    /// Answers at any time (for the progress line).
    pub total: AtomicU64,
    /// Connections that failed or were closed by the server mid-run.
    pub failed_connections: AtomicU64,
}

impl Counters {
    /// Whether samples count now.
    pub fn measuring(&self) -> bool {
        self.measuring.load(Ordering::Relaxed)
    }

    /// Whether the run is over.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Print `[  3s] 45,120/s ...` to stderr once a second until `stop`.
pub fn spawn_progress(
    counters: Arc<Counters>,
    what: &'static str,
    quiet: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if quiet {
            return;
        }
        let start = Instant::now();
        let mut last = 0u64;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            if counters.stopped() {
                break;
            }
            let now = counters.total.load(Ordering::Relaxed);
            eprintln!(
                "[{:>4.0}s] {:>9} {what}/s   refused {}   failed connections {}{}",
                start.elapsed().as_secs_f64(),
                thousands(now - last),
                counters.refused.load(Ordering::Relaxed),
                counters.failed_connections.load(Ordering::Relaxed),
                if counters.measuring() {
                    ""
                } else {
                    "   (warming up)"
                },
            );
            last = now;
        }
    })
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Seconds from a `--duration`-style argument (`8`, `8s`, `500ms`, `2m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 8s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_classified_by_their_leading_type() {
        assert_eq!(classify(r#"{"type":"ack","id":"1"}"#), FrameKind::Answer);
        assert_eq!(classify(r#"{"type":"echo","data":{}}"#), FrameKind::Answer);
        assert_eq!(
            classify(r#"{"type":"error","code":"rate_limited"}"#),
            FrameKind::Refused
        );
        assert_eq!(
            classify(r#"{"type":"event","channel":"x"}"#),
            FrameKind::Other
        );
        assert_eq!(
            classify(r#"{"type":"welcome","data":{}}"#),
            FrameKind::Other
        );
        // A payload mentioning "error" far from the start is still an answer.
        assert_eq!(
            classify(r#"{"type":"ack","data":{"x":"\"type\":\"error\""}}"#),
            FrameKind::Answer
        );
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("8"), Ok(Duration::from_secs(8)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
