//! `sluice dev --cluster N`: a local fleet in one command. A nats-server
//! with JetStream (installed by scripts/install-nats-server, pinned) and N
//! Sluice nodes (`sluice serve`, one process each) on consecutive ports,
//! sharing channels, sends and channel history through NATS. Prints every
//! node's URL, pid and a token; a node that dies is reported and the others
//! go on; Ctrl-C stops them all.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use sluice::dev_files::{DemoConfig, dev_token};
use sluice::listening_child::{ListeningChild, free_port};
use sluice::nats_server::{NatsOptions, NatsServer};

use super::signals::shutdown_signal;

/// Most nodes `--cluster` starts.
pub const MAX_NODES: usize = 9;

/// Starts of a node tried before giving up.
const START_ATTEMPTS: usize = 3;

/// How long a node may take to start listening.
const NODE_START: Duration = Duration::from_secs(180);

/// How long a node or nats-server gets to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Node `node`'s configuration: the demo's, with its own listener, admin
/// listener, data directory and `[cluster]` section.
fn node_config(
    demo: &DemoConfig,
    node: usize,
    listen: SocketAddr,
    admin: SocketAddr,
    nats_url: &str,
) -> String {
    DemoConfig {
        listen: listen.to_string(),
        admin_listen: Some(admin),
        data_dir: Some(format!("node-{node}/data")),
        node: Some((nats_url.to_owned(), format!("node-{node}"))),
        ..demo.clone()
    }
    .toml()
}

/// Run the fleet until Ctrl-C.
pub async fn run(
    dir: PathBuf,
    listen: String,
    echo: PathBuf,
    chat: PathBuf,
    repo: PathBuf,
    nodes: usize,
) -> anyhow::Result<()> {
    if !(2..=MAX_NODES).contains(&nodes) {
        bail!("--cluster {nodes}: a dev cluster has 2 to {MAX_NODES} nodes");
    }
    let base: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen}: expected an address like 127.0.0.1:8443"))?;
    let addrs: Vec<SocketAddr> = (0..nodes)
        .map(|i| SocketAddr::new(base.ip(), base.port().saturating_add(i as u16)))
        .collect();
    for a in &addrs {
        if let Err(e) = TcpListener::bind(a) {
            bail!("{a} is not free ({e}); pick other ports with --listen");
        }
    }
    let nats_bin = sluice::nats_server::binary(&repo)?;
    let exe = std::env::current_exe().context("locating the sluice binary")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    // One config to share the certificate, secret and admin token.
    let demo = DemoConfig::new(&listen, &echo, &chat);
    sluice::dev_files::prepare(&dir, &demo)?;

    let nats_log = dir.join("nats.log");
    let nats_dir = dir.join("nats");
    let nats_options = NatsOptions {
        name: Some("sluice-dev".into()),
        log: Some(nats_log.clone()),
        ..NatsOptions::new(base.ip(), nats_dir.clone())
    };
    // Starting processes and waiting for their ports blocks: nothing else
    // runs on this runtime until the fleet is up.
    let (mut nats, mut children) = tokio::task::block_in_place(|| {
        let nats = NatsServer::start(&nats_bin, nats_options)?;
        let nodes = start_nodes(&exe, &dir, &demo, &addrs, &nats.url())?;
        anyhow::Ok((nats, nodes))
    })?;
    let nats_url = nats.url();

    let config = sluice::config::Config::load(&dir.join("node-0.toml"))?;
    let token = dev_token(&config)?;
    let cert = dir.join("cert.pem");
    println!("Sluice dev cluster: {nodes} nodes sharing channels and history through NATS");
    println!(
        "  nats:  {nats_url} (JetStream, data in {}, log {})",
        nats_dir.display(),
        nats_log.display()
    );
    for (i, node) in children.iter().enumerate() {
        println!(
            "  node-{i}: wss://{}/ws/demo  admin http://{}/readyz  pid {}  log {}",
            node.child.addr(),
            node.admin,
            node.child.pid(),
            node.log.display()
        );
    }
    println!(
        "  dev token (subject dev-user, scope chat:write, 1 hour; valid on every node):\n\n{token}\n"
    );
    println!("Connect to two nodes (one terminal each), join room:1 on both, send on one:\n");
    for node in children.iter().take(2) {
        println!(
            "  {} connect wss://{}/ws/demo --ca {} --token {token}",
            exe.display(),
            node.child.addr(),
            cert.display()
        );
    }
    println!();
    println!(r#"  {{"type":"subscribe","id":"1","channel":"room:1"}}"#);
    println!(
        r#"  {{"type":"chat.send","id":"2","channel":"room:1","data":{{"text":"hi from another node"}}}}"#
    );
    println!(
        "\nKill a node (kill -9 <pid>) and the others go on; Ctrl-C stops them all and nats-server.\n"
    );

    // A node or nats-server that dies is reported, and the rest go on:
    // kill one to see the others keep serving.
    let watch = async {
        let mut reported = vec![false; children.len() + 1];
        loop {
            for (i, node) in children.iter_mut().enumerate() {
                if !reported[i]
                    && let Some(status) = node.child.exited()
                {
                    reported[i] = true;
                    println!(
                        "node-{i} exited ({status}); see {}. The other nodes go on.",
                        node.log.display()
                    );
                }
            }
            if !reported[children.len()]
                && let Some(status) = nats.exited()
            {
                reported[children.len()] = true;
                println!(
                    "nats-server exited ({status}); see {}. The nodes refuse new connections until NATS is back.",
                    nats_log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::select! {
        () = shutdown_signal() => {}
        () = watch => {}
    }
    tokio::task::block_in_place(|| {
        for node in &mut children {
            node.child.stop(STOP_GRACE);
        }
        nats.stop(STOP_GRACE);
    });
    Ok(())
}

/// One node of the fleet.
struct Node {
    child: ListeningChild,
    admin: SocketAddr,
    log: PathBuf,
}

/// `exe serve` once per address, each with its config `node-<i>.toml` and
/// log `node-<i>.log` in `dir`; an admin port taken before the node binds
/// it is tried again on another.
fn start_nodes(
    exe: &Path,
    dir: &Path,
    demo: &DemoConfig,
    addrs: &[SocketAddr],
    nats_url: &str,
) -> anyhow::Result<Vec<Node>> {
    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let path = dir.join(format!("node-{i}.toml"));
        let log = dir.join(format!("node-{i}.log"));
        let mut attempt = 0;
        let (child, admin) = loop {
            attempt += 1;
            let admin = SocketAddr::new(addr.ip(), free_port(addr.ip())?);
            std::fs::write(&path, node_config(demo, i, *addr, admin, nats_url))?;
            let args = ["serve".into(), "-c".into(), path.display().to_string()];
            match ListeningChild::start(
                &format!("node-{i}"),
                exe,
                &args,
                Some(&log),
                *addr,
                NODE_START,
            ) {
                Ok(child) => break (child, admin),
                Err(e) if attempt >= START_ATTEMPTS => return Err(e),
                Err(_) => {}
            }
        };
        nodes.push(Node { child, admin, log });
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_gets_its_own_admin_port_data_dir_and_name() {
        let demo = DemoConfig::new("127.0.0.1:8443", Path::new("/e.wasm"), Path::new("/c.wasm"));
        let text = node_config(
            &demo,
            2,
            "127.0.0.1:8445".parse().unwrap(),
            "127.0.0.1:9999".parse().unwrap(),
            "nats://127.0.0.1:4222",
        );
        let config = sluice::config::Config::parse(&text, Path::new("/tmp")).unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.node, "node-2");
        assert_eq!(cluster.nats_urls, vec!["nats://127.0.0.1:4222".to_owned()]);
        assert_eq!(config.store.data_dir, PathBuf::from("node-2/data"));
        assert_eq!(config.server.listen, "127.0.0.1:8445".parse().unwrap());
        assert_eq!(
            config.server.admin_listen,
            Some("127.0.0.1:9999".parse().unwrap())
        );
    }
}
