//! Tokens never reach the logs, even where a tenant accepts them in the
//! query string (which is where access logs pick them up).

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use sluice::client::{ClientOptions, TokenVia};
use sluice::logging::RedactingWriter;
use sluice_tests::server::TestServer;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_full_run_with_query_tokens_logs_no_token() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(RedactingWriter(move || sink.clone()))
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // A current-thread test runtime: the server's tasks run on this thread,
    // under the subscriber set above.
    let server = TestServer::start_with(|c| {
        if let Some(beta) = c.tenants.get_mut("beta") {
            beta.query_token = true;
        }
    })
    .await;
    let good = server.token("beta", "quinn", "");
    let opts = |token: &str| ClientOptions {
        token: Some(token.to_owned()),
        via: TokenVia::Query,
        ..server.options()
    };
    let mut c = server
        .connect_with("beta", opts(&good))
        .await
        .expect("query token");
    c.assert_usable().await;
    // A message body and a handler failure, so the logs have more to say.
    c.request(
        serde_json::json!({"type": "echo", "id": "b", "data": {"note": "BODY-SENTINEL-4711"}}),
    )
    .await;
    c.request(serde_json::json!({"type": "misbehave", "id": "p", "data": {"mode": "panic", "target": "BODY-SENTINEL-4711"}})).await;
    let forged = format!("{good}x");
    assert!(server.connect_with("beta", opts(&forged)).await.is_err());
    assert!(server.connect_with("alpha", opts(&good)).await.is_err());
    drop(c);
    drop(server);

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(PoisonError::into_inner))
        .to_string();
    assert!(
        logs.contains("token refused"),
        "the run was logged:\n{logs}"
    );
    let signature = good.rsplit('.').next().unwrap_or_default();
    assert!(
        !logs.contains(signature),
        "a token reached the logs:\n{logs}"
    );
    assert!(
        !logs.contains("access_token=ey"),
        "a query token reached the logs"
    );
    assert!(
        !logs.contains("BODY-SENTINEL-4711"),
        "a message body reached the logs"
    );
    for secret in [
        sluice_tests::server::ALPHA_SECRET,
        sluice_tests::server::BETA_SECRET,
    ] {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
}
