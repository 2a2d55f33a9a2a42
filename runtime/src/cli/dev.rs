//! `sluice dev`: one command from a fresh clone to a running server with a
//! self-signed certificate, a demo tenant (echo and chat handlers), a dev
//! token and a copy-paste client command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use sluice::config::Config;
use sluice::dev_files::{DemoConfig, dev_token};

use super::demo_handlers::{demo_components, repo_root};
use super::signals::{reload_on_sighup, shutdown_signal};

/// Arguments of `sluice dev`.
#[derive(clap::Args)]
pub struct DevArgs {
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
}

/// Run the dev server (or fleet) until Ctrl-C.
pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let DevArgs {
        dir,
        listen,
        chat,
        page,
        cluster,
    } = args;
    // Before the handlers build, so a busy port is known in a second.
    check_listen(&listen)?;
    let (echo, rust_chat) = demo_components()?;
    let chat = sluice::dev_files::chat_component(chat.as_deref(), &rust_chat)?;
    if let Some(nodes) = cluster {
        super::dev_cluster::run(dir, listen, echo, chat, repo_root(), nodes).await?;
        return Ok(ExitCode::SUCCESS);
    }
    // The demo page is a convenience: a busy port turns it off (said after
    // the banner), not the server.
    let page = super::demo_page::bind(&page).await;
    let origins = page.as_ref().map(|p| p.origins()).unwrap_or_default();
    let demo = DemoConfig {
        page_origins: origins,
        ..DemoConfig::new(&listen, &echo, &chat)
    };
    let config_path = sluice::dev_files::prepare(&dir, &demo)?;
    let cert = dir.join("cert.pem");
    let valid_until = std::fs::read(&cert)
        .ok()
        .and_then(|pem| sluice::dev_files::cert_validity(&pem))
        .map_or_else(String::new, |(_, until)| {
            format!(", valid until {}", sluice::dev_files::format_date(until))
        });
    let sluice = own_command();
    let config = Config::load(&config_path)?;
    let node = sluice::node::Node::build(config).await?;
    let state = node.state.clone();
    let token = dev_token(&state.config)?;
    let listen_addr = state.config.server.listen;
    let listener = tokio::net::TcpListener::bind(listen_addr)
        .await
        .with_context(|| format!("cannot listen on {listen_addr}"))?;
    // Another dev server (or sluice serve) holds the default admin port:
    // take any free one rather than fail (bound here, so two dev servers
    // starting at once cannot both take it); the banner says which.
    let admin = match state.config.server.admin_listen {
        Some(admin) => Some(match tokio::net::TcpListener::bind(admin).await {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                tokio::net::TcpListener::bind(SocketAddr::new(admin.ip(), 0))
                    .await
                    .with_context(|| format!("cannot listen on {} (admin)", admin.ip()))?
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {admin} (admin)")),
        }),
        None => None,
    };
    let server = node.serve_on(listener, admin);
    let addr = server.local_addr();
    let url = format!("wss://{addr}/ws/demo");
    println!("Sluice dev server on {url}");
    println!("  config:       {}", config_path.display());
    println!(
        "  certificate:  {} (self-signed{valid_until})",
        cert.display()
    );
    println!("  chat handler: {}", chat.display());
    println!(
        "  data:         {} (durable: state and room history survive restarts)",
        dir.join("data").display()
    );
    if let Some(admin) = server.admin_addr() {
        println!("  admin:        http://{admin}/metrics (health, reload)");
        println!(
            "  management:   http://{admin}/v1/ (sluice handler push | list | show | promote | rollback | rm | audit)"
        );
        match std::fs::read_to_string(dir.join("admin.token")) {
            Ok(t) => println!("  operator token (every tenant): {}", t.trim()),
            Err(e) => println!("  operator token: cannot read admin.token: {e}"),
        }
        println!(
            "  tenant demo's management token: {}",
            dir.join(sluice::dev_files::DEMO_MANAGE_TOKEN).display()
        );
    }
    println!("  dev token (subject dev-user, scope chat:write, 1 hour):\n\n{token}\n");
    println!("Connect (type JSON messages, one per line):\n");
    println!(
        "  {sluice} connect {url} --ca {} --token {token}\n",
        shell_word(&cert.display().to_string())
    );
    println!("Then try:");
    println!(r#"  {{"type":"echo","id":"1","data":{{"hello":"world"}}}}"#);
    println!(r#"  {{"type":"chat.join","id":"2","channel":"room:1"}}"#);
    println!(r#"  {{"type":"chat.send","id":"3","channel":"room:1","data":{{"text":"hi"}}}}"#);
    println!(
        "\nMore tokens: {sluice} token -c {} --tenant demo --sub alice --scope chat:write",
        shell_word(&config_path.display().to_string())
    );
    println!(
        "Reload after editing the config: {sluice} reload -c {}",
        shell_word(&config_path.display().to_string())
    );
    println!(
        "Push a handler for route `bot`: {sluice} handler -c {} push demo bot <component.wasm>\n",
        shell_word(&config_path.display().to_string())
    );
    match page.map(|page| (page, super::demo_page::client_bundle(&repo_root()))) {
        Err(e) => println!("Chat demo page off: {e:#}\n"),
        Ok((page, Ok(client_js))) => {
            let page_url = page.url();
            page.serve(
                &cert,
                &dir.join("key.pem"),
                std::sync::Arc::downgrade(server.state()),
                url.clone(),
                client_js,
            )?;
            println!("Chat demo page (open it in two tabs): {page_url}\n");
        }
        Ok((_, Err(e))) => println!("Chat demo page off: {e:#}\n"),
    }
    reload_on_sighup(server.state().clone());
    server.run(shutdown_signal()).await;
    Ok(ExitCode::SUCCESS)
}

/// Refuse an address another process listens on, saying what to do.
fn check_listen(listen: &str) -> anyhow::Result<()> {
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen}: expected an address like 127.0.0.1:8443"))?;
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let next = SocketAddr::new(addr.ip(), addr.port().wrapping_add(1).max(1));
            bail!(
                "{addr} is already in use (another sluice dev?); pick another address with --listen {next}"
            )
        }
        Err(e) => bail!("cannot listen on {addr}: {e}"),
    }
}

/// How to run this very binary again (the build the user already has): its
/// path, relative to the working directory when it lies below it.
fn own_command() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "sluice".to_owned();
    };
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(Path::to_path_buf))
        // `sluice` alone would be looked up in PATH.
        .map(|rel| match rel.components().count() {
            1 => Path::new(".").join(rel),
            _ => rel,
        })
        .unwrap_or(exe);
    shell_word(&shown.display().to_string())
}

/// `word` quoted for a POSIX shell if it needs it.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:=@,%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
