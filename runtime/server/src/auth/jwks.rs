//! Fetching a tenant's JWKS over HTTPS (rustls, hyper), bounded in size and
//! time. Keys are refreshed in the background and when a token names a kid
//! the current set does not have (at most once per [`MIN_REFETCH`]), so an
//! identity provider can rotate keys without a restart. A failed refresh
//! keeps the keys the tenant had; a key this server cannot use (no `alg`,
//! an encryption key, an algorithm it does not support) is skipped with a
//! warning and does not fail the refresh. After
//! [`STALE_AFTER_INTERVALS`] refresh intervals without a successful refresh
//! the JWKS is *stale*: `/metrics` says so and `/readyz` answers 503.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use rustls::pki_types::ServerName;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 256 << 10;
/// Time for one fetch: connect, TLS, request, body.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest interval between two fetches triggered by unknown kids.
pub const MIN_REFETCH: Duration = Duration::from_secs(30);
/// A JWKS whose last successful refresh is this many refresh intervals old,
/// and whose last refresh failed, is stale: revocations at the identity
/// provider no longer reach this server, so `/readyz` answers 503 and
/// `sluice_jwks_stale` is 1 until a refresh succeeds.
pub const STALE_AFTER_INTERVALS: u32 = 3;

/// Why a JWKS could not be used: each names the URL or the step that
/// failed (for logs and `sluice check`; clients never see it).
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The URL cannot be fetched from (not https, no host, unparsable).
    #[error("JWKS URL {url}: {why}")]
    Url {
        /// The configured URL.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// Fetching it failed: connection, TLS, HTTP, a status, the body.
    #[error("{step}: {source}")]
    Fetch {
        /// What was being done (`connecting to host:443`, `GET url`).
        step: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The fetch took longer than [`FETCH_TIMEOUT`].
    #[error("fetching {0} timed out")]
    Timeout(String),
    /// The document is not a JWKS.
    #[error("not a JWKS document: {0}")]
    NotJwks(#[source] serde_json::Error),
    /// No key of the document can be used (each key's reason is listed).
    #[error("no usable key in the JWKS ({0})")]
    NoUsableKey(String),
    /// The extra CA file cannot be used.
    #[error("{0}")]
    Ca(String),
    /// A JWKS file cannot be read.
    #[error("{0}")]
    Read(#[from] std::io::Error),
}

impl JwksError {
    fn fetch(
        step: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Fetch {
            step: step.into(),
            source: source.into(),
        }
    }
}

/// A JWKS document with its keys left unparsed, so that one key this
/// server cannot read (an unknown `kty`, an encryption curve) does not make
/// the whole document unreadable: each key is judged on its own.
#[derive(Debug, Deserialize)]
pub struct Document {
    /// The keys, as published.
    pub keys: Vec<serde_json::Value>,
}

impl Document {
    /// Parse a JWKS document (`{"keys": [...]}`).
    pub fn parse(bytes: &[u8]) -> Result<Self, JwksError> {
        serde_json::from_slice(bytes).map_err(JwksError::NotJwks)
    }
}

/// Fetch and parse a JWKS from an `https://` URL.
pub async fn fetch(url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Document, JwksError> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_inner(url, tls))
        .await
        .map_err(|_| JwksError::Timeout(url.to_owned()))?
}

async fn fetch_inner(url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Document, JwksError> {
    let bad = |why: String| JwksError::Url {
        url: url.to_owned(),
        why,
    };
    let uri: http::Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("must be https://".into()));
    }
    let host = uri
        .host()
        .ok_or_else(|| bad("has no host".into()))?
        .to_owned();
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((bare_host.as_str(), port))
        .await
        .map_err(|e| JwksError::fetch(format!("connecting to {host}:{port}"), e))?;
    let name = ServerName::try_from(bare_host.clone()).map_err(|e| bad(e.to_string()))?;
    let stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| JwksError::fetch(format!("TLS with {host}"), e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| JwksError::fetch(format!("HTTP with {host}"), e))?;
    let driver = tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::get(path)
        .header(
            http::header::HOST,
            uri.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "sluice")
        .body(Empty::<Bytes>::new())
        .map_err(|e| bad(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| JwksError::fetch(format!("GET {url}"), e))?;
    if !response.status().is_success() {
        driver.abort();
        return Err(JwksError::fetch(
            format!("GET {url}"),
            format!("HTTP {}", response.status()),
        ));
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| JwksError::fetch(format!("reading {url}"), e))?
        .to_bytes();
    driver.abort();
    Document::parse(&body)
}

/// A TLS client trusting the public web roots plus `extra_ca_pem`.
pub fn client_config(extra_ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, JwksError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            roots
                .add(cert.map_err(|e| JwksError::Ca(e.to_string()))?)
                .map_err(|e| JwksError::Ca(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| JwksError::Ca(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}
