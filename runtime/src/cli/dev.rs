//! `sluice dev`: one command from a fresh clone to a running server with a
//! self-signed certificate, a demo tenant (echo and chat handlers), a dev
//! token and a copy-paste client command.
//!
//! The demo tenant is created the way a user creates one: once the server
//! runs, `POST /v1/tenants` to its own management API (HTTPS, with the
//! operator token); the generated secret and management token go to
//! `dev/demo.k1.secret` and `dev/demo.token`. On a restart the tenant is in
//! the durable store already: kept, with its handlers brought up to date.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use http::Method;
use serde_json::{Value, json};
use sluice::config::{Config, JwtAlgorithm};
use sluice::dev_files::{
    DEMO_AUDIENCE, DEMO_ISSUER, DEMO_KID, DEMO_TENANT, DEV_SCOPE, DEV_SUBJECT, DemoConfig,
};
use sluice::server::admin::client::Management;
use sluice::token::Minter;

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
    // Another dev server holds the default management port: any free one
    // (bound now, written into the config, so `-c` finds it).
    let management = bind_or_any(
        sluice::config::DEFAULT_MANAGEMENT_LISTEN
            .parse()
            .context("the default management address does not parse")?,
        "management",
    )
    .await?;
    let demo = DemoConfig {
        page_origins: origins,
        management_listen: Some(management.local_addr()?),
        tenant_in_file: false,
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
    let listen_addr = state.config.server.listen;
    let listener = tokio::net::TcpListener::bind(listen_addr)
        .await
        .with_context(|| format!("cannot listen on {listen_addr}"))?;
    // Another dev server (or sluice serve) holds the default admin port:
    // take any free one rather than fail (bound here, so two dev servers
    // starting at once cannot both take it); the banner says which.
    let admin = match state.config.server.admin_listen {
        Some(admin) => Some(bind_or_any(admin, "admin").await?),
        None => None,
    };
    let server = node.serve_on_all(listener, admin, management);
    let addr = server.local_addr();
    let admin_addr = server.admin_addr();
    let api_addr = server.management_addr().context("no management listener")?;
    let served_state = server.state().clone();
    let running = tokio::spawn(server.run(shutdown_signal()));
    // The demo tenant, through the API, as `sluice tenant create` does.
    let api = Management::new(&api_addr.to_string(), Some(&cert))?;
    let operator = std::fs::read_to_string(dir.join("admin.token"))
        .context("reading the operator token (admin.token)")?
        .trim()
        .to_owned();
    let (kid, secret) = demo_tenant(&api, &operator, &demo, &dir).await?;
    let token = Minter::from_secret(
        secret.as_bytes(),
        Some(&kid),
        JwtAlgorithm::Hs256,
        DEMO_ISSUER,
        DEMO_AUDIENCE,
        "scope",
    )?
    .mint(
        DEV_SUBJECT,
        &[DEV_SCOPE.to_owned()],
        3600,
        serde_json::Map::new(),
    )?;
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
    if let Some(admin) = admin_addr {
        println!("  admin:        http://{admin}/metrics (health)");
    }
    let dir_word = |name: &str| shell_word(&dir.join(name).display().to_string());
    let (ca, operator_file) = (dir_word("cert.pem"), dir_word("admin.token"));
    println!(
        "  management:   https://{api_addr}/v1/ (sluice tenant | handler | reload; HTTPS only)"
    );
    println!("  operator token (every tenant): {operator_file}");
    println!(
        "  tenant demo:  created through the API; its management token {}, its key {kid} {}",
        dir_word(&format!("{DEMO_TENANT}.token")),
        dir_word(&format!("{DEMO_TENANT}.{kid}.secret"))
    );
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
    let config_word = shell_word(&config_path.display().to_string());
    let api_flags = format!("--url {api_addr} --ca {ca} --token-file {operator_file}");
    println!("\nA second tenant (acme.json: see docs/management.md):");
    println!(
        "  {sluice} tenant create acme --file acme.json --secrets-out {} {api_flags}",
        shell_word(&dir.display().to_string())
    );
    println!(
        "  {sluice} token --secret-file {} --kid k1 --issuer <its auth.issuer> --audience <its auth.audience> --sub alice",
        dir_word("acme.k1.secret")
    );
    println!(
        "\nMore tokens: {sluice} token --secret-file {} --kid {kid} --issuer {DEMO_ISSUER} --audience {DEMO_AUDIENCE} --sub alice --scope chat:write",
        dir_word(&format!("{DEMO_TENANT}.{kid}.secret"))
    );
    println!("Tenants: {sluice} tenant list {api_flags}");
    println!("Reload after editing the config: {sluice} reload -c {config_word}");
    println!(
        "Push a handler for route `bot`: {sluice} handler push demo bot <component.wasm> --url {api_addr} --ca {ca} --token-file {}\n",
        dir_word(&format!("{DEMO_TENANT}.token"))
    );
    match page.map(|page| (page, super::demo_page::client_bundle(&repo_root()))) {
        Err(e) => println!("Chat demo page off: {e:#}\n"),
        Ok((page, Ok(client_js))) => {
            let page_url = page.url();
            page.serve(
                &cert,
                &dir.join("key.pem"),
                std::sync::Arc::downgrade(&served_state),
                url.clone(),
                client_js,
            )?;
            println!("Chat demo page (open it in two tabs): {page_url}\n");
        }
        Ok((_, Err(e))) => println!("Chat demo page off: {e:#}\n"),
    }
    reload_on_sighup(served_state);
    running.await.context("the server stopped")?;
    Ok(ExitCode::SUCCESS)
}

/// A listener on `addr`, or on any free port of its address when another
/// process (another dev server, `sluice serve`) holds it; the banner says
/// which.
async fn bind_or_any(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0))
                .await
                .with_context(|| format!("cannot listen on {} ({what})", addr.ip()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on {addr} ({what})")),
    }
}

/// Create the demo tenant through the management API, or keep the one the
/// store has (its components brought up to date: `--chat` may differ);
/// the kid and secret of its HMAC key. A secret or management token shown
/// once goes to `dir` (`demo.<kid>.secret`, `demo.token`, 0600); one lost
/// since is replaced through the API.
async fn demo_tenant(
    api: &Management,
    operator: &str,
    demo: &DemoConfig,
    dir: &Path,
) -> anyhow::Result<(String, String)> {
    let call = |method: Method, path: String, body: Option<Value>| async move {
        let body = body.map_or_else(Vec::new, |b| b.to_string().into_bytes());
        let (status, answer) = api
            .request(method.clone(), &path, Some(operator), body)
            .await
            .with_context(|| format!("{method} {path} to this server's management API"))?;
        anyhow::Ok((status, super::api::parse(&answer)))
    };
    let refused = |what: &str, status: u16, v: &Value| {
        anyhow::anyhow!(
            "{what} the demo tenant through the management API: {}",
            super::api::failure(status, v).trim_end()
        )
    };
    let keep = |v: &Value| -> anyhow::Result<()> {
        if let Some(token) = v["token"].as_str() {
            sluice::dev_files::write_private(
                &dir.join(format!("{DEMO_TENANT}.token")),
                token.as_bytes(),
            )?;
        }
        for (kid, secret) in v["secrets"].as_object().into_iter().flatten() {
            sluice::dev_files::write_private(
                &dir.join(format!("{DEMO_TENANT}.{kid}.secret")),
                secret.as_str().unwrap_or_default().as_bytes(),
            )?;
        }
        Ok(())
    };
    let wanted = demo.tenant_json()?;
    let body = json!({ "id": DEMO_TENANT, "tenant": wanted });
    let (status, v) = call(Method::POST, "/v1/tenants".into(), Some(body)).await?;
    match (status, v["error"]["code"].as_str()) {
        (201, _) => {
            keep(&v)?;
            let secret = v["secrets"][DEMO_KID].as_str().unwrap_or_default();
            return Ok((DEMO_KID.to_owned(), secret.to_owned()));
        }
        (409, Some("exists")) => {}
        _ => return Err(refused("creating", status, &v)),
    }
    // Kept from an earlier run.
    let path = format!("/v1/tenants/{DEMO_TENANT}");
    let (status, current) = call(Method::GET, path.clone(), None).await?;
    if status != 200 {
        return Err(refused("reading", status, &current));
    }
    let mut revision = current["revision"].as_u64().unwrap_or(0);
    let have = &current["tenant"];
    let mut patch = serde_json::Map::new();
    for field in ["origins", "handlers"] {
        if have[field] != wanted[field] {
            patch.insert(field.to_owned(), wanted[field].clone());
        }
    }
    if !patch.is_empty() {
        let body = json!({ "revision": revision, "patch": patch });
        let (status, v) = call(Method::PATCH, path.clone(), Some(body)).await?;
        if status != 200 {
            return Err(refused("updating", status, &v));
        }
        revision = v["revision"].as_u64().unwrap_or(revision);
    }
    if !dir.join(format!("{DEMO_TENANT}.token")).exists() {
        let body = json!({ "revision": revision, "management_token": true });
        let (status, v) = call(Method::POST, format!("{path}/keys"), Some(body)).await?;
        if status != 200 {
            return Err(refused("a management token for", status, &v));
        }
        keep(&v)?;
        revision = v["revision"].as_u64().unwrap_or(revision);
    }
    let kids: Vec<String> = have["auth"]["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["algorithm"] == "HS256")
        .filter_map(|k| k["kid"].as_str().map(str::to_owned))
        .collect();
    for kid in &kids {
        if let Ok(secret) = std::fs::read_to_string(dir.join(format!("{DEMO_TENANT}.{kid}.secret")))
        {
            return Ok((kid.clone(), secret.trim().to_owned()));
        }
    }
    // The secret file is gone: a new key (shown once, kept this time).
    let body = json!({ "revision": revision, "rotate": "HS256" });
    let (status, v) = call(Method::POST, format!("{path}/keys"), Some(body)).await?;
    if status != 200 {
        return Err(refused("a new key for", status, &v));
    }
    keep(&v)?;
    let (kid, secret) = v["secrets"]
        .as_object()
        .and_then(|s| s.iter().next())
        .context("the rotated key's secret is missing from the answer")?;
    Ok((kid.clone(), secret.as_str().unwrap_or_default().to_owned()))
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
