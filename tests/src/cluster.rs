//! Processes the cluster tests run: nats-server with JetStream on loopback
//! (one, or three in a NATS cluster), started and stopped by the same
//! module `sluice dev --cluster` uses (`sluice::nats_server`), and `sluice
//! dev --cluster 3` itself, read from its banner.

#![expect(
    clippy::expect_used,
    reason = "test helpers fail the test that called them by panicking"
)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::config::ClusterConfig;
use sluice::listening_child::{free_port as free_port_on, free_port_run};
use sluice::nats_server::{NatsOptions, NatsRoutes, NatsServer};

use crate::server::{Client, TempDir};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The pinned nats-server: `$SLUICE_NATS_SERVER` (tests/run sets it), or
/// installed by the project's script.
pub fn nats_server_bin() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    sluice::nats_server::binary(&repo).expect("scripts/install-nats-server")
}

/// A free loopback port.
pub fn free_port() -> u16 {
    free_port_on(LOOPBACK).expect("a free port")
}

/// A nats-server with JetStream on a loopback port, stopped on drop.
pub struct Nats {
    server: NatsServer,
    _dir: TempDir,
}

impl Nats {
    /// Start one (on another port if one is taken first).
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// Started with `config` (nats-server's configuration file format) as
    /// well as the test's flags.
    pub fn start_with_config(config: &str) -> Self {
        let dir = TempDir::new();
        let mut options = NatsOptions::new(LOOPBACK, dir.0.join("js"));
        if !config.is_empty() {
            let file = dir.0.join("nats.conf");
            std::fs::write(&file, config).expect("nats config");
            options.config_file = Some(file);
        }
        let server = NatsServer::start(&nats_server_bin(), options).expect("nats-server started");
        Self { server, _dir: dir }
    }

    /// Its client URL.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Start again, on the same port and store.
    pub fn restart(&mut self) {
        self.server
            .restart()
            .expect("nats-server did not start again");
    }

    /// Kill it (SIGKILL).
    pub fn kill(&mut self) {
        self.server.kill();
    }
}

/// A node's `[cluster]` section on `nats`.
pub fn cluster(nats: &Nats, node: &str) -> ClusterConfig {
    ClusterConfig {
        nats_urls: vec![nats.url()],
        node: node.to_owned(),
        user: None,
        password: None,
        token: None,
        credentials_file: None,
        replicas: 1,
        prefix: "sluice".into(),
    }
}

/// Three nats-servers in one NATS cluster with JetStream, on loopback.
pub struct NatsCluster {
    servers: Vec<NatsServer>,
    _dir: TempDir,
}

impl NatsCluster {
    /// Start all three.
    pub fn start() -> Self {
        let dir = TempDir::new();
        let bin = nats_server_bin();
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let servers = (0..3)
            .map(|i| {
                let peers = (0..3)
                    .filter(|j| *j != i)
                    .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
                    .collect();
                let options = NatsOptions {
                    name: Some(format!("s{i}")),
                    routes: Some(NatsRoutes {
                        cluster: "sluice-test".into(),
                        port: routes[i],
                        peers,
                    }),
                    ..NatsOptions::new(LOOPBACK, dir.0.join(format!("s{i}")))
                };
                NatsServer::start(&bin, options).expect("nats-server started")
            })
            .collect();
        Self { servers, _dir: dir }
    }

    /// Their client URLs.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }

    /// Kill server `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill();
    }
}

/// `sluice dev --cluster 3`: the banner's URLs and pids, the token, the
/// certificate.
pub struct DevCluster {
    child: Child,
    /// Each node's `wss://` URL.
    pub urls: Vec<String>,
    /// Each node's process id.
    pub pids: Vec<u32>,
    /// The dev token the banner printed.
    pub token: String,
    cert: PathBuf,
    _dir: TempDir,
}

impl DevCluster {
    /// Start it; another test may take one of the free ports first, so a
    /// start that finds a port taken is tried again on others.
    pub fn start() -> Self {
        let mut last = String::new();
        for _ in 0..4 {
            match Self::try_start() {
                Ok(dev) => return dev,
                Err(e) if e.contains("is not free") => last = e,
                Err(e) => panic!("no banner from sluice dev --cluster 3; its stderr:\n{e}"),
            }
        }
        panic!("sluice dev --cluster 3 never found free ports: {last}");
    }

    fn try_start() -> Result<Self, String> {
        use std::io::BufRead;
        let dir = TempDir::new();
        let base = free_port_run(LOOPBACK, 3).expect("free ports");
        let mut child = Command::new(crate::sluice_bin())
            .args([
                "dev",
                "--cluster",
                "3",
                "--listen",
                &format!("127.0.0.1:{base}"),
            ])
            .arg("--dir")
            .arg(dir.0.join("dev"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.0.join("dev.stderr")).expect("stderr file"))
            .spawn()
            .expect("start sluice dev --cluster 3");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let (mut urls, mut pids, mut token) = (Vec::new(), Vec::new(), None);
        let mut next_is_token = false;
        let deadline = Instant::now() + Duration::from_secs(600);
        while token.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::fs::read_to_string(dir.0.join("dev.stderr")).unwrap_or_default());
            };
            if let Some(rest) = line.trim().strip_prefix("node-") {
                let words: Vec<&str> = rest.split_whitespace().collect();
                urls.push(words[1].to_owned());
                let pid = words.iter().position(|w| *w == "pid").expect("pid");
                pids.push(words[pid + 1].parse().expect("a pid"));
            }
            if next_is_token && line.starts_with("ey") {
                token = Some(line.clone());
            }
            next_is_token |= line.contains("dev token");
        }
        Ok(Self {
            child,
            urls,
            pids,
            token: token.unwrap_or_default(),
            cert: dir.0.join("dev/cert.pem"),
            _dir: dir,
        })
    }

    /// A token of the demo tenant for `sub` (`sluice token`).
    pub fn token_for(&self, sub: &str) -> String {
        let config = self.cert.with_file_name("node-0.toml");
        let out = Command::new(crate::sluice_bin())
            .args([
                "token",
                "--tenant",
                "demo",
                "--sub",
                sub,
                "--scope",
                "chat:write",
                "-c",
            ])
            .arg(config)
            .output()
            .expect("sluice token");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A client of node `node` with the banner's token, welcomed.
    pub async fn client(&self, node: usize) -> Client {
        self.client_as(node, &self.token.clone()).await
    }

    /// A client of node `node` with `token`, welcomed.
    pub async fn client_as(&self, node: usize, token: &str) -> Client {
        let opts = sluice::client::ClientOptions {
            ca_pem: std::fs::read(&self.cert).expect("cert"),
            token: Some(token.to_owned()),
            via: sluice::client::TokenVia::Header,
            ..Default::default()
        };
        let socket = sluice::client::connect(&self.urls[node], &opts)
            .await
            .expect("connect to a dev node");
        let mut c = Client { socket };
        assert_eq!(c.recv().await["type"], "welcome");
        c
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in &self.pids {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}
