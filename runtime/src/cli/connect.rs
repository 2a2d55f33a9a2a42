//! `sluice connect`: an interactive wss client.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use sluice::client::{ClientOptions, ConnectError, TokenVia, connect};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

/// After stdin ends, how long to wait for the answers still due.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Arguments of `sluice connect`.
#[derive(clap::Args)]
pub struct ConnectArgs {
    /// e.g. wss://127.0.0.1:8443/ws/demo
    url: String,
    /// PEM certificate(s) to trust (the dev server's dev/cert.pem). Without
    /// it, the public web PKI roots are trusted, as a browser would.
    #[arg(long)]
    ca: Option<PathBuf>,
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

/// Run the client until the server closes, or stdin ends and every message
/// sent has been answered (so `sluice connect ... < messages` prints the
/// answers to all of them).
pub async fn run(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let via = match args.via.as_str() {
        "header" => TokenVia::Header,
        "subprotocol" => TokenVia::Subprotocol,
        "query" => TokenVia::Query,
        other => anyhow::bail!("--via {other:?}: expected header, subprotocol or query"),
    };
    let ca_pem = match &args.ca {
        Some(ca) => std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?,
        None => Vec::new(),
    };
    let opts = ClientOptions {
        ca_pem,
        token: args.token,
        via,
        origin: args.origin,
        ..Default::default()
    };
    let socket = match connect(&args.url, &opts).await {
        Ok(socket) => socket,
        Err(ConnectError::Certificate(e)) if args.ca.is_none() => bail!(
            "{e}: the server's certificate is not issued by a public CA (is it self-signed, \
             like sluice dev's?); pass the certificate to trust with --ca, e.g. --ca dev/cert.pem"
        ),
        Err(e) => return Err(e.into()),
    };
    let (mut sink, mut stream) = socket.split();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    // Messages sent and not yet answered: each gets one ack, error or pong.
    let mut unanswered: u64 = 0;
    let give_up = tokio::time::sleep(Duration::MAX);
    tokio::pin!(give_up);
    loop {
        if !stdin_open && unanswered == 0 {
            let _ = sink.close().await;
            break;
        }
        tokio::select! {
            line = lines.next_line(), if stdin_open => match line? {
                Some(line) if line.trim().is_empty() => {}
                Some(line) => {
                    sink.send(Message::text(line)).await?;
                    unanswered += 1;
                }
                None => {
                    stdin_open = false;
                    give_up.as_mut().reset(tokio::time::Instant::now() + ANSWER_WAIT);
                }
            },
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    println!("{t}");
                    if is_answer(&t) {
                        unanswered = unanswered.saturating_sub(1);
                    }
                }
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
            () = &mut give_up => {
                eprintln!("error: {unanswered} message(s) not answered within {} s", ANSWER_WAIT.as_secs());
                let _ = sink.close().await;
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a frame from the server answers a message (`ack`, `error` or
/// `pong`), as opposed to `welcome` or an `event`.
fn is_answer(frame: &str) -> bool {
    let ty = serde_json::from_str::<serde_json::Value>(frame)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned));
    matches!(ty.as_deref(), Some("ack" | "error" | "pong"))
}
