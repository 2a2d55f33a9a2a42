//! The benchmark baseline: a bare tokio-tungstenite + rustls wss echo
//! server. No auth, no schema, no limits, no sandbox: every text (or binary)
//! frame comes back unchanged. It shows what the stack itself costs, so that
//! Sluice's full pipeline can be reported as a fraction of it.
//!
//! Same as Sluice:
//! - TLS: `sluice_tls::server_config` itself (rustls, aws-lc-rs
//!   provider, TLS 1.3 and 1.2, ALPN `http/1.1`, stateless session tickets
//!   from the aws-lc-rs ticketer, rustls' default session cache);
//! - the tokio multi-thread runtime with one worker per core, TCP_NODELAY
//!   on every accepted socket;
//! - `max_message_size` / `max_frame_size` at Sluice's defaults (64 KiB
//!   each), so both servers accept the same frames; no permessage-deflate
//!   (tungstenite never negotiates it), masked client frames required.
//!
//! Not Sluice's (its own tuning, or its protection, which the baseline is
//! meant to be without): the read and write buffer sizes and the write
//! buffer cap stay at tungstenite's defaults (128 KiB read buffer, 128 KiB
//! write buffer, unbounded cap); no handshake deadline, connection caps,
//! pings or idle timeout; no welcome frame.
//!
//! The echo loop is what a user would write: read a message, `send` it
//! (which flushes), repeat.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Sluice's `max_message_bytes` and `max_frame_bytes` defaults.
const MAX_MESSAGE_BYTES: usize = sluice_protocol::DEFAULT_MAX_MESSAGE_BYTES;
const MAX_FRAME_BYTES: usize = sluice_protocol::DEFAULT_MAX_FRAME_BYTES;

/// A bare wss echo server (benchmark baseline).
#[derive(Parser)]
#[command(name = "echo-baseline", version)]
struct Args {
    /// Address to listen on (port 0: any free port; the bound address is
    /// printed on stdout as `listening on ADDR`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// PEM certificate chain.
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key.
    #[arg(long)]
    key: PathBuf,
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .accept_unmasked_frames(false)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tls = sluice_tls::server_config(&args.cert, &args.key).map_err(anyhow::Error::msg)?;
    let acceptor = TlsAcceptor::from(tls);
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("listening on {addr}\n").as_bytes())
        .await?;
    stdout.flush().await?;
    let config = ws_config();
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, say: back off a little.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // A client that goes away mid-conversation is not news.
            let _ = echo(acceptor, tcp, config).await;
        });
    }
}

/// TLS, the upgrade, then echo until the client closes.
async fn echo(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    config: WebSocketConfig,
) -> anyhow::Result<()> {
    let _ = tcp.set_nodelay(true);
    let tls = acceptor.accept(tcp).await?;
    let mut ws = tokio_tungstenite::accept_async_with_config(tls, Some(config)).await?;
    while let Some(msg) = ws.next().await {
        let msg = msg?;
        if msg.is_text() || msg.is_binary() {
            ws.send(msg).await?;
        }
        // Pings are answered and close frames returned by tungstenite itself.
    }
    Ok(())
}
