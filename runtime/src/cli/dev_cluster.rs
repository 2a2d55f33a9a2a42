//! `sluice dev --cluster N`: a local fleet in one command. A nats-server
//! with JetStream (installed by scripts/install-nats-server, pinned) and N
//! Sluice nodes (`sluice serve`, one process each) on consecutive ports,
//! sharing channels, sends and channel history through NATS. Prints every
//! node's URL, pid and a token; a node that dies is reported and the others
//! go on; Ctrl-C stops them all.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// Most nodes `--cluster` starts.
pub const MAX_NODES: usize = 9;

/// Starts of nats-server or a node tried before giving up.
const START_ATTEMPTS: usize = 3;

/// How long a node may take to start listening.
const NODE_START: Duration = Duration::from_secs(180);

/// The nats-server to run: `$SLUICE_NATS_SERVER`, or the pinned one the
/// project's script installs.
pub fn nats_server(repo: &Path) -> anyhow::Result<PathBuf> {
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

fn free_port(ip: std::net::IpAddr) -> anyhow::Result<u16> {
    Ok(TcpListener::bind(SocketAddr::new(ip, 0))?
        .local_addr()?
        .port())
}

async fn wait_listening(
    addr: SocketAddr,
    child: &mut Child,
    what: &str,
    log: &Path,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + NODE_START;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            bail!(
                "{what} exited ({status}) before listening on {addr}; the end of {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{what} did not listen on {addr} within {NODE_START:?}; see {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn_logged(program: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

/// A node's configuration: the demo config with its own listener, admin
/// listener, data directory and `[cluster]` section.
fn node_config(demo: &str, node: usize, admin: SocketAddr, nats_url: &str) -> String {
    let config = demo
        .replacen(
            "[server]\n",
            &format!("[server]\nadmin_listen = \"{admin}\"\n"),
            1,
        )
        .replacen(
            "data_dir = \"data\"  # dev/data",
            &format!("data_dir = \"node-{node}/data\""),
            1,
        );
    format!("{config}\n[cluster]\nnats_urls = [\"{nats_url}\"]\nnode = \"node-{node}\"\n")
}

/// Stop a child gently (SIGTERM: a node drains), then for good.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

fn child_pid(pids: &[Option<u32>], i: usize) -> String {
    pids.get(i)
        .copied()
        .flatten()
        .map_or_else(|| "?".to_owned(), |p| p.to_string())
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
    let nats = nats_server(&repo)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    // One config to share the certificate, secret and admin token.
    let shared = sluice::dev::prepare(&dir, &listen, &echo, &chat)?;
    let demo = std::fs::read_to_string(&shared)?;

    let nats_log = dir.join("nats.log");
    let nats_dir = dir.join("nats");
    // A free port can be taken by another process before the child binds
    // it: each start is retried on a new port.
    let mut attempt = 0;
    let (mut nats_child, nats_url) = loop {
        attempt += 1;
        let nats_port = free_port(base.ip())?;
        let mut child = spawn_logged(
            &nats,
            &[
                "-js".into(),
                "-a".into(),
                base.ip().to_string(),
                "-p".into(),
                nats_port.to_string(),
                "-sd".into(),
                nats_dir.display().to_string(),
                "-n".into(),
                "sluice-dev".into(),
            ],
            &nats_log,
        )?;
        match wait_listening(
            SocketAddr::new(base.ip(), nats_port),
            &mut child,
            "nats-server",
            &nats_log,
        )
        .await
        {
            Ok(()) => break (child, format!("nats://{}:{nats_port}", base.ip())),
            Err(e) if attempt >= START_ATTEMPTS => return Err(e),
            Err(_) => {}
        }
    };

    let exe = std::env::current_exe().context("locating the sluice binary")?;
    let mut children = Vec::new();
    let mut admins = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let path = dir.join(format!("node-{i}.toml"));
        let log = dir.join(format!("node-{i}.log"));
        let mut attempt = 0;
        let (child, admin) = loop {
            attempt += 1;
            let admin = SocketAddr::new(base.ip(), free_port(base.ip())?);
            let text = node_config(&demo, i, admin, &nats_url).replacen(
                &format!("listen = \"{listen}\""),
                &format!("listen = \"{addr}\""),
                1,
            );
            std::fs::write(&path, text)?;
            let mut child = spawn_logged(
                &exe,
                &["serve".into(), "-c".into(), path.display().to_string()],
                &log,
            )?;
            match wait_listening(*addr, &mut child, &format!("node-{i}"), &log).await {
                Ok(()) => break (child, admin),
                Err(e) if attempt >= START_ATTEMPTS => return Err(e),
                Err(_) => {}
            }
        };
        children.push((child, *addr, log));
        admins.push(admin);
    }

    let config = sluice::config::Config::load(&dir.join("node-0.toml"))?;
    let tc = config
        .tenants
        .get("demo")
        .context("the demo tenant is missing")?;
    let keys = sluice::server::auth::KeySet::load("demo", &tc.auth, &tc.scopes_claim, &config)
        .await
        .map_err(|p| anyhow::anyhow!(p.join("; ")))?;
    let token = keys
        .mint(
            "dev-user",
            &["chat:write".to_owned()],
            3600,
            serde_json::Map::new(),
        )
        .map_err(anyhow::Error::msg)?;
    let cert = dir.join("cert.pem");
    let children_pids: Vec<Option<u32>> = children.iter().map(|(c, _, _)| c.id()).collect();
    println!("Sluice dev cluster: {nodes} nodes sharing channels and history through NATS");
    println!(
        "  nats:  {nats_url} (JetStream, data in {}, log {})",
        nats_dir.display(),
        nats_log.display()
    );
    for (i, ((_, addr, log), admin)) in children.iter().zip(&admins).enumerate() {
        println!(
            "  node-{i}: wss://{addr}/ws/demo  admin http://{admin}/readyz  pid {}  log {}",
            child_pid(&children_pids, i),
            log.display()
        );
    }
    println!(
        "  dev token (subject dev-user, scope chat:write, 1 hour; valid on every node):\n\n{token}\n"
    );
    println!("Connect to two nodes (one terminal each), join room:1 on both, send on one:\n");
    for (_, addr, _) in children.iter().take(2) {
        println!(
            "  {} connect wss://{addr}/ws/demo --ca {} --token {token}",
            exe.display(),
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
            for (i, (child, _, log)) in children.iter_mut().enumerate() {
                if !reported[i]
                    && let Ok(Some(status)) = child.try_wait()
                {
                    reported[i] = true;
                    println!(
                        "node-{i} exited ({status}); see {}. The other nodes go on.",
                        log.display()
                    );
                }
            }
            if !reported[children.len()]
                && let Ok(Some(status)) = nats_child.try_wait()
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
        () = crate::shutdown_signal() => {}
        () = watch => {}
    }
    for (child, _, _) in &mut children {
        stop(child).await;
    }
    stop(&mut nats_child).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_gets_its_own_admin_port_data_dir_and_name() {
        let demo = sluice::dev::demo_config(
            "127.0.0.1:8443",
            Path::new("/e.wasm"),
            Path::new("/c.wasm"),
            &[],
        );
        let text = node_config(
            &demo,
            2,
            "127.0.0.1:9999".parse().unwrap(),
            "nats://127.0.0.1:4222",
        );
        let config = sluice::config::Config::parse(&text, Path::new("/tmp")).unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.node, "node-2");
        assert_eq!(cluster.nats_urls, vec!["nats://127.0.0.1:4222".to_owned()]);
        assert_eq!(config.store.data_dir, PathBuf::from("node-2/data"));
        assert_eq!(
            config.server.admin_listen,
            Some("127.0.0.1:9999".parse().unwrap())
        );
    }
}
