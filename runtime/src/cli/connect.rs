//! `sluice connect`: an interactive wss client.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use futures_util::{SinkExt, StreamExt};
use sluice::client::{ClientOptions, TokenVia, connect};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

/// Arguments of `sluice connect`.
#[derive(clap::Args)]
pub struct ConnectArgs {
    /// e.g. wss://127.0.0.1:8443/ws/demo
    url: String,
    /// PEM certificate(s) to trust (the dev server's dev/cert.pem).
    #[arg(long)]
    ca: PathBuf,
    /// The token.
    #[arg(long)]
    token: Option<String>,
    /// Where to send the token: header, subprotocol or query.
    #[arg(long, default_value = "header")]
    via: String,
    /// An Origin header to send.
    #[arg(long)]
    origin: Option<String>,
}

/// Run the client until stdin ends or the server closes.
pub async fn run(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let via = match args.via.as_str() {
        "header" => TokenVia::Header,
        "subprotocol" => TokenVia::Subprotocol,
        "query" => TokenVia::Query,
        other => anyhow::bail!("--via {other:?}: expected header, subprotocol or query"),
    };
    let ca_pem =
        std::fs::read(&args.ca).with_context(|| format!("reading {}", args.ca.display()))?;
    let opts = ClientOptions {
        ca_pem,
        token: args.token,
        via,
        origin: args.origin,
        ..Default::default()
    };
    let socket = connect(&args.url, &opts).await?;
    let (mut sink, mut stream) = socket.split();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) if line.trim().is_empty() => {}
                Some(line) => sink.send(Message::text(line)).await?,
                None => {
                    let _ = sink.close().await;
                    break;
                }
            },
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(t))) => println!("{t}"),
                Some(Ok(Message::Close(c))) => {
                    println!("closed: {}", c.map(|c| format!("{} {}", u16::from(c.code), c.reason)).unwrap_or_default());
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::FAILURE);
                }
                None => break,
            },
        }
    }
    Ok(ExitCode::SUCCESS)
}
