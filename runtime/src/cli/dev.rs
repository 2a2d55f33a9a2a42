//! `sluice dev`: one command from a fresh clone to a running server with a
//! self-signed certificate, a demo tenant (echo and chat handlers), a dev
//! token and a copy-paste client command.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use sluice::config::Config;
use sluice::server::{Server, ServerState};

/// Where the repository's handlers are built.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The demo handlers, built if they are missing.
fn demo_components() -> anyhow::Result<(PathBuf, PathBuf)> {
    let release = repo_root().join("handlers/target/wasm32-wasip2/release");
    let (echo, chat) = (release.join("echo.wasm"), release.join("chat.wasm"));
    if !echo.exists() || !chat.exists() {
        let script = repo_root().join("handlers/build");
        if !script.exists() {
            bail!(
                "the demo handlers are not built and {} is missing: run sluice dev from a clone of the repository",
                script.display()
            );
        }
        eprintln!("building the demo handlers (first run only)...");
        let status = Command::new("bash")
            .arg(&script)
            .status()
            .context("running handlers/build")?;
        if !status.success() {
            bail!("handlers/build failed");
        }
    }
    Ok((echo.canonicalize()?, chat.canonicalize()?))
}

/// Run the dev server.
pub async fn run(dir: PathBuf, listen: String, chat: Option<PathBuf>) -> anyhow::Result<()> {
    let (echo, rust_chat) = demo_components()?;
    let chat = sluice::dev::chat_component(chat.as_deref(), &rust_chat)?;
    println!("chat handler: {}", chat.display());
    let config_path = sluice::dev::prepare(&dir, &listen, &echo, &chat)?;
    let cert = dir.join("cert.pem");
    let config = Config::load(&config_path)?;
    let state = ServerState::build(config).await?;
    let tenant = state.tenant("demo").context("the demo tenant is missing")?;
    let token = tenant
        .keys
        .mint(
            "dev-user",
            &["chat:write".to_owned()],
            3600,
            serde_json::Map::new(),
        )
        .map_err(anyhow::Error::msg)?;
    let listen_addr = state.config.server.listen;
    let server = Server::bind_state(state, listen_addr).await?;
    let addr = server.local_addr();
    let url = format!("wss://{addr}/ws/demo");
    println!("Sluice dev server on {url}");
    println!("  config:      {}", config_path.display());
    println!("  certificate: {} (self-signed)", cert.display());
    println!("  dev token (subject dev-user, scope chat:write, 1 hour):\n\n{token}\n");
    println!("Connect (type JSON messages, one per line):\n");
    println!(
        "  cargo run -p sluice -- connect {url} --ca {} --token {token}\n",
        cert.display()
    );
    println!("Then try:");
    println!(r#"  {{"type":"echo","id":"1","data":{{"hello":"world"}}}}"#);
    println!(r#"  {{"type":"chat.join","id":"2","channel":"room:1"}}"#);
    println!(r#"  {{"type":"chat.send","id":"3","channel":"room:1","data":{{"text":"hi"}}}}"#);
    println!(
        "\nMore tokens: cargo run -p sluice -- token -c {} --tenant demo --sub alice --scope chat:write",
        config_path.display()
    );
    println!(
        "Reload after editing the config: cargo run -p sluice -- reload -c {}\n",
        config_path.display()
    );
    crate::reload_on_sighup(server.state().clone());
    server.run(crate::shutdown_signal()).await;
    Ok(())
}
