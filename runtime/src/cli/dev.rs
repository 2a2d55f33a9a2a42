//! `sluice dev`: one command from a fresh clone to a running server with a
//! self-signed certificate, a demo tenant (echo and chat handlers), a dev
//! token and a copy-paste client command.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use sluice::config::Config;

/// Where the repository's handlers are built.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The component of handler `name` in `lang` (js, python, c), built (or
/// taken from its cache) by `handlers/build-lang`, which installs the
/// language's pinned tools.
pub fn lang_component(lang: &str, name: &str) -> anyhow::Result<PathBuf> {
    let script = repo_root().join("handlers/build-lang");
    eprintln!("building the {lang} {name} handler with handlers/build-lang {lang} (cached)...");
    let output = Command::new("bash")
        .arg(&script)
        .arg(lang)
        .stdin(Stdio::null())
        .output()
        .context("running handlers/build-lang")?;
    if !output.status.success() {
        std::io::stderr().write_all(&output.stderr)?;
        bail!("handlers/build-lang {lang} failed");
    }
    // One line per handler: `<lang> <name> <path>`.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ' ');
            (parts.next() == Some(lang) && parts.next() == Some(name))
                .then(|| parts.next().map(PathBuf::from))
                .flatten()
        })
        .with_context(|| format!("handlers/build-lang {lang} printed no {name} component"))
}

/// The demo handlers (echo, chat), built by `handlers/build` when needed.
pub fn demo_components() -> anyhow::Result<(PathBuf, PathBuf)> {
    let release = repo_root().join("handlers/target/wasm32-wasip2/release");
    let (echo, chat) = (release.join("echo.wasm"), release.join("chat.wasm"));
    let script = repo_root().join("handlers/build");
    let built = echo.exists() && chat.exists();
    // From a clone, handlers/build always runs: cargo rebuilds the demo
    // handlers only when their sources or wit/ changed (a second or two),
    // so a pull that moves the WIT version never serves stale components.
    if !built || script.exists() {
        if !script.exists() {
            bail!(
                "the demo handlers are not built and {} is missing: run sluice dev from a clone of the repository",
                script.display()
            );
        }
        // One line while it runs; the build's own output only if it fails.
        if built {
            eprintln!("checking the demo handlers are up to date (handlers/build)...");
        } else {
            eprintln!(
                "building the demo handlers with handlers/build (first run: a few minutes)..."
            );
        }
        let output = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .context("running handlers/build")?;
        if !output.status.success() {
            std::io::stderr().write_all(&output.stdout)?;
            std::io::stderr().write_all(&output.stderr)?;
            bail!("{} failed ({})", script.display(), output.status);
        }
    }
    Ok((echo.canonicalize()?, chat.canonicalize()?))
}

/// Run the dev server.
pub async fn run(
    dir: PathBuf,
    listen: String,
    chat: Option<PathBuf>,
    page: String,
    cluster: Option<usize>,
) -> anyhow::Result<()> {
    // Before the handlers build, so a busy port is known in a second.
    check_listen(&listen)?;
    let (echo, rust_chat) = demo_components()?;
    let chat = sluice::dev::chat_component(chat.as_deref(), &rust_chat)?;
    if let Some(nodes) = cluster {
        return super::dev_cluster::run(dir, listen, echo, chat, repo_root(), nodes).await;
    }
    // The demo page is a convenience: a busy port turns it off (said after
    // the banner), not the server.
    let page = super::demo_page::bind(&page).await;
    let origins = page.as_ref().map(|p| p.origins()).unwrap_or_default();
    let config_path = sluice::dev::prepare_with_origins(&dir, &listen, &echo, &chat, &origins)?;
    let cert = dir.join("cert.pem");
    let valid_until = std::fs::read(&cert)
        .ok()
        .and_then(|pem| sluice::dev::cert_validity(&pem))
        .map_or_else(String::new, |(_, until)| {
            format!(", valid until {}", sluice::dev::format_date(until))
        });
    let sluice = own_command();
    let config = Config::load(&config_path)?;
    let node = sluice::node::Node::build(config).await?;
    let state = node.state.clone();
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
            dir.join(sluice::dev::DEMO_MANAGE_TOKEN).display()
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
    crate::reload_on_sighup(server.state().clone());
    server.run(crate::shutdown_signal()).await;
    Ok(())
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
