//! nats-server with JetStream on this machine, for local fleets: `sluice dev
//! --cluster`, `sluice bench cluster` and the cluster tests start, restart
//! and stop it here. The binary is `$SLUICE_NATS_SERVER`, or the pinned one
//! `scripts/install-nats-server` installs.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::listening_child::{ListeningChild, free_port};

/// Starts tried, each on a new free port, before giving up.
const START_ATTEMPTS: usize = 5;

/// How long a nats-server may take to listen.
const START_PATIENCE: Duration = Duration::from_secs(20);

/// The nats-server to run: `$SLUICE_NATS_SERVER`, or the pinned one that
/// `<repo>/scripts/install-nats-server` installs (and prints the path of).
pub fn binary(repo: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SLUICE_NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let script = repo.join("scripts/install-nats-server");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    if path.is_empty() {
        bail!("{} printed no path", script.display());
    }
    Ok(PathBuf::from(path))
}

/// How to run one nats-server.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// The address it listens on.
    pub ip: IpAddr,
    /// JetStream's storage directory.
    pub store_dir: PathBuf,
    /// Its server name (`-n`).
    pub name: Option<String>,
    /// Where its output goes (None: nowhere).
    pub log: Option<PathBuf>,
    /// A member of a NATS cluster: its routes.
    pub routes: Option<NatsRoutes>,
    /// A configuration file (`-c`), for settings without a flag
    /// (`max_payload`, say); the flags win over it.
    pub config_file: Option<PathBuf>,
}

impl NatsOptions {
    /// A lone server on `ip` keeping JetStream's data in `store_dir`.
    pub fn new(ip: IpAddr, store_dir: PathBuf) -> Self {
        Self {
            ip,
            store_dir,
            name: None,
            log: None,
            routes: None,
            config_file: None,
        }
    }
}

/// The routes of one member of a NATS cluster.
#[derive(Clone, Debug)]
pub struct NatsRoutes {
    /// The cluster's name (`--cluster_name`).
    pub cluster: String,
    /// The port this member listens on for routes.
    pub port: u16,
    /// The other members' route URLs (`nats://host:port`).
    pub peers: Vec<String>,
}

/// A running nats-server with JetStream, killed when dropped.
pub struct NatsServer {
    bin: PathBuf,
    options: NatsOptions,
    port: u16,
    child: Option<ListeningChild>,
}

impl NatsServer {
    /// Start `bin` on a free port. A free port can be taken by another
    /// process before nats-server binds it: each start is tried again on a
    /// new one.
    pub fn start(bin: &Path, options: NatsOptions) -> anyhow::Result<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut server = Self {
                bin: bin.to_owned(),
                port: free_port(options.ip)?,
                options: options.clone(),
                child: None,
            };
            match server.restart() {
                Ok(()) => return Ok(server),
                Err(e) if attempt >= START_ATTEMPTS => return Err(e),
                Err(_) => {}
            }
        }
    }

    /// Start it again (after [`NatsServer::kill`] or its death), on the same
    /// port with the same store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let o = &self.options;
        let mut args = Vec::new();
        if let Some(file) = &o.config_file {
            args.extend(["-c".to_owned(), file.display().to_string()]);
        }
        args.extend([
            "-js".to_owned(),
            "-a".to_owned(),
            o.ip.to_string(),
            "-p".to_owned(),
            self.port.to_string(),
            "-sd".to_owned(),
            o.store_dir.display().to_string(),
        ]);
        if let Some(name) = &o.name {
            args.extend(["-n".to_owned(), name.clone()]);
        }
        if let Some(r) = &o.routes {
            args.extend([
                "--cluster_name".to_owned(),
                r.cluster.clone(),
                "-cluster".to_owned(),
                format!("nats://{}:{}", o.ip, r.port),
                "-routes".to_owned(),
                r.peers.join(","),
            ]);
        }
        self.child = Some(ListeningChild::start(
            "nats-server",
            &self.bin,
            &args,
            o.log.as_deref(),
            SocketAddr::new(o.ip, self.port),
            START_PATIENCE,
        )?);
        Ok(())
    }

    /// Its client URL, `nats://ip:port`.
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.options.ip, self.port)
    }

    /// Its exit status, if it has exited by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(ListeningChild::exited)
    }

    /// Stop it gently (SIGTERM), then for good after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            child.stop(grace);
        }
    }

    /// Kill it at once (SIGKILL: a crash, as far as its clients can tell).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }
}
