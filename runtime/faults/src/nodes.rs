//! The processes under test: Sluice nodes (`sluice serve` with a generated
//! configuration) and nats-servers, each started inside its member's
//! network namespace, killed, paused and restarted by the nemesis.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rustix::process::{Pid, Signal};

use crate::workload::{TENANT, Tokens};

/// The port nodes serve wss on.
pub const WSS_PORT: u16 = 8443;
/// NATS client port.
pub const NATS_PORT: u16 = 4222;
/// NATS cluster (route) port.
pub const ROUTE_PORT: u16 = 6222;
/// NATS monitoring port.
pub const MONITOR_PORT: u16 = 8222;

/// How long a process may take to listen after a start.
const START_WITHIN: Duration = Duration::from_secs(120);

/// The programs a run needs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `sluice`.
    pub sluice: PathBuf,
    /// `nats-server` (fleet runs).
    pub nats: Option<PathBuf>,
    /// The chat handler component.
    pub chat: PathBuf,
    /// libfaketime, for clock faults.
    pub faketime: Option<PathBuf>,
}

/// Where Debian puts libfaketime.
pub const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A process in a namespace.
#[derive(Debug)]
pub struct Proc {
    /// Its member's name.
    pub name: String,
    ns: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    /// The address it listens on once up.
    pub addr: SocketAddr,
    child: Option<tokio::process::Child>,
    /// For a node with a clock fault: the file libfaketime reads.
    pub clock_file: Option<PathBuf>,
}

impl Proc {
    /// Start it and wait until it listens.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        let deadline = tokio::time::Instant::now() + START_WITHIN;
        loop {
            let probe = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(self.addr),
            )
            .await;
            if matches!(probe, Ok(Ok(_))) {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited ({status}) before listening on {}; see {}",
                    self.name,
                    self.addr,
                    self.log.display()
                );
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill().await;
                bail!(
                    "{} did not listen on {} within {START_WITHIN:?}; see {}",
                    self.name,
                    self.addr,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// Its pid while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Send `signal`.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .and_then(|p| Pid::from_raw(p as i32))
            .with_context(|| format!("{} is not running", self.name))?;
        rustix::process::kill_process(pid, signal)
            .with_context(|| format!("signalling {}", self.name))
    }

    /// `kill -9`, and reap it.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id().and_then(|p| Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process(pid, Signal::CONT);
            }
            let _ = c.kill().await;
        }
    }

    /// Whether it is running (an exit is noticed here).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

/// Tokens signed with the tenant's HS256 secret.
pub struct Minter {
    key: jsonwebtoken::EncodingKey,
}

impl Tokens for Minter {
    fn token(&self, subject: &str) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let claims = serde_json::json!({
            "sub": subject, "iss": "sluice-faults", "aud": "sluice",
            "exp": now + 24 * 3600, "scope": "chat:write",
        });
        Ok(jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &self.key,
        )?)
    }
}

/// Files every node shares: certificate, key, HMAC secret.
pub struct Shared {
    /// The certificate (PEM), which clients trust.
    pub cert_pem: String,
    dir: PathBuf,
    secret: String,
}

impl Shared {
    /// Write a certificate for `ips` and a secret into `dir`.
    pub fn create(dir: &Path, ips: &[Ipv4Addr]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let names: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (cert, key) = sluice_tls::self_signed(&refs).map_err(anyhow::Error::msg)?;
        std::fs::write(dir.join("cert.pem"), &cert)?;
        std::fs::write(dir.join("key.pem"), key)?;
        let mut bytes = [0u8; 32];
        rustls::crypto::aws_lc_rs::default_provider()
            .secure_random
            .fill(&mut bytes)
            .map_err(|_| anyhow::anyhow!("no secure random source"))?;
        let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(dir.join("secret.key"), &secret)?;
        Ok(Self {
            cert_pem: cert,
            dir: dir.to_owned(),
            secret,
        })
    }

    /// A token minter for the tenant.
    pub fn minter(&self) -> anyhow::Result<Minter> {
        Ok(Minter {
            key: jsonwebtoken::EncodingKey::from_secret(self.secret.as_bytes())?,
        })
    }
}

/// What a node keeps its state in.
pub enum Backend<'a> {
    /// One node with a durable store in `data_dir`.
    Durable(&'a Path),
    /// A fleet node on these NATS servers, named `node`.
    Fleet {
        /// NATS client URLs.
        nats: &'a [String],
        /// Node name.
        node: &'a str,
    },
}

/// The configuration of a Sluice node listening on `ip`.
pub fn sluice_config(shared: &Shared, chat: &Path, ip: Ipv4Addr, backend: Backend<'_>) -> String {
    let dir = shared.dir.display();
    let backend = match backend {
        Backend::Durable(d) => format!(
            "[store]\nkind = \"durable\"\ndata_dir = {:?}\n",
            d.display().to_string()
        ),
        Backend::Fleet { nats, node } => {
            format!("[cluster]\nnats_urls = {nats:?}\nnode = {node:?}\nreplicas = 3\n")
        }
    };
    format!(
        r#"# Written by sluice-faults.
[server]
listen = "{ip}:{WSS_PORT}"
tls_cert = "{dir}/cert.pem"
tls_key = "{dir}/key.pem"
max_outbound_bytes = 268435456
max_connections_per_ip = 10000
handshakes_per_ip_per_sec = 10000
handshake_burst_per_ip = 10000
drain_timeout_ms = 1000

{backend}
[tenants.{TENANT}]

[tenants.{TENANT}.auth]
issuer = "sluice-faults"
audience = "sluice"

[[tenants.{TENANT}.auth.keys]]
algorithm = "HS256"
secret_file = "{dir}/secret.key"

[tenants.{TENANT}.limits]
max_connections_per_subject = 64
messages_per_sec = 10000
message_burst = 10000
subject_messages_per_sec = 10000
tenant_messages_per_sec = 100000

[tenants.{TENANT}.handlers.chat]
component = {chat:?}
grants = ["state", "clock"]
limits = {{ deadline_ms = 5000 }}

[tenants.{TENANT}.routes."chat.join"]
handler = "chat"
channel = "subscribe"

[tenants.{TENANT}.routes."chat.send"]
handler = "chat"
channel = "publish"
scopes = ["chat:write"]

[[tenants.{TENANT}.channels]]
pattern = "room:{{id}}"
publish_scopes = ["chat:write"]
history = {{ size = 100000, ttl_secs = 2592000 }}
"#,
        chat = chat.display().to_string(),
    )
}

/// A Sluice node's process: `sluice serve -c config` in `ns`.
pub fn sluice_proc(
    bins: &Binaries,
    name: &str,
    ns: &str,
    ip: Ipv4Addr,
    config: &Path,
    log: &Path,
) -> Proc {
    let mut envs = vec![("RUST_LOG".to_owned(), "info".to_owned())];
    let mut clock_file = None;
    if let Some(lib) = &bins.faketime {
        // Wall clock only: a jump of the system clock moves CLOCK_REALTIME,
        // never CLOCK_MONOTONIC (which timers run on).
        let file = config.with_extension("clock");
        let _ = std::fs::write(&file, "+0\n");
        envs.extend(
            [
                ("LD_PRELOAD", lib.display().to_string()),
                ("FAKETIME_TIMESTAMP_FILE", file.display().to_string()),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
                ("FAKETIME_CACHE_DURATION", "1".to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        clock_file = Some(file);
    }
    Proc {
        name: name.to_owned(),
        ns: ns.to_owned(),
        program: bins.sluice.clone(),
        args: vec!["serve".into(), "-c".into(), config.display().to_string()],
        envs,
        log: log.to_owned(),
        addr: SocketAddr::from((ip, WSS_PORT)),
        child: None,
        clock_file,
    }
}

/// A nats-server of a three-server JetStream cluster.
pub fn nats_proc(
    nats: &Path,
    name: &str,
    ns: &str,
    ip: Ipv4Addr,
    peers: &[Ipv4Addr],
    dir: &Path,
) -> anyhow::Result<Proc> {
    std::fs::create_dir_all(dir)?;
    let routes: Vec<String> = peers
        .iter()
        .map(|p| format!("nats://{p}:{ROUTE_PORT}"))
        .collect();
    let config = format!(
        "server_name: {name}\nlisten: \"{ip}:{NATS_PORT}\"\nhttp: \"{ip}:{MONITOR_PORT}\"\n\
         jetstream {{ store_dir: {store:?} }}\n\
         cluster {{ name: sluice-faults, listen: \"{ip}:{ROUTE_PORT}\", routes: {routes:?} }}\n",
        store = dir.join("js").display().to_string(),
    );
    let path = dir.join("nats.conf");
    std::fs::write(&path, config)?;
    Ok(Proc {
        name: name.to_owned(),
        ns: ns.to_owned(),
        program: nats.to_owned(),
        args: vec!["-c".into(), path.display().to_string()],
        envs: Vec::new(),
        log: dir.join("nats.log"),
        addr: SocketAddr::from((ip, NATS_PORT)),
        child: None,
        clock_file: None,
    })
}

/// GET `path` from a NATS server's monitoring endpoint, as JSON.
pub async fn monitor_json(monitor: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let body = tokio::time::timeout(Duration::from_secs(3), async {
        let mut s = tokio::net::TcpStream::connect(monitor).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: nats\r\n\r\n").as_bytes())
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        anyhow::Ok(out)
    })
    .await??;
    let text = String::from_utf8_lossy(&body);
    let json = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .context("no HTTP body")?;
    Ok(serde_json::from_str(json)?)
}

/// The name of the server leading JetStream stream `stream`, from a
/// server's monitoring endpoint (`/jsz`).
pub async fn stream_leader(monitor: SocketAddr, stream: &str) -> anyhow::Result<String> {
    let v = monitor_json(monitor, "/jsz?accounts=true&streams=true").await?;
    find_leader(&v, stream).with_context(|| format!("no leader of {stream} in /jsz"))
}

fn find_leader(v: &serde_json::Value, stream: &str) -> Option<String> {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("name").and_then(|n| n.as_str()) == Some(stream)
                && let Some(l) = m
                    .get("cluster")
                    .and_then(|c| c.get("leader"))
                    .and_then(|l| l.as_str())
            {
                return Some(l.to_owned());
            }
            m.values().find_map(|x| find_leader(x, stream))
        }
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_leader(x, stream)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_is_found_in_a_jsz_answer() {
        let jsz = serde_json::json!({"account_details": [{"stream_detail": [
            {"name": "KV_sluice_state", "cluster": {"leader": "q1"}},
            {"name": "SLUICE_HISTORY", "cluster": {"leader": "q3", "replicas": []}}
        ]}]});
        assert_eq!(find_leader(&jsz, "SLUICE_HISTORY").as_deref(), Some("q3"));
        assert_eq!(find_leader(&jsz, "NONE"), None);
    }
}
