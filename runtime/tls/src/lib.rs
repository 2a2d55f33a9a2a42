//! TLS: rustls with the aws-lc-rs provider, TLS 1.2 and 1.3, a PEM chain and
//! key, session tickets. Sluice serves wss:// only: a plaintext client fails
//! the TLS handshake and never reaches the WebSocket upgrade.
//!
//! The server, not the client, picks the cipher suite (its first that the
//! client offers: AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305, AEAD only),
//! so a client cannot steer it to the weakest suite both support. The key
//! exchange groups are offered hybrid post-quantum first: X25519MLKEM768,
//! then X25519, P-256, P-384. (rustls takes the group in the client's order
//! of preference among those both support; a client that offers the hybrid
//! group gets it.)

#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::aws_lc_rs::kx_group;
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Key exchange groups, in the server's order of preference: the hybrid
/// post-quantum X25519MLKEM768 (TLS 1.3 only) first, then the classical
/// groups (whatever rustls' own feature flags would order).
pub static KX_GROUPS: &[&dyn SupportedKxGroup] = &[
    kx_group::X25519MLKEM768,
    kx_group::X25519,
    kx_group::SECP256R1,
    kx_group::SECP384R1,
];

/// The server's crypto provider: aws-lc-rs with its default (AEAD-only)
/// cipher suites in their order, and [`KX_GROUPS`].
pub fn provider() -> CryptoProvider {
    CryptoProvider {
        kx_groups: KX_GROUPS.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    }
}

/// Build the server's TLS configuration from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    // The server's order of cipher suites, not the client's.
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer =
        rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| format!("session tickets: {e}"))?;
    Ok(Arc::new(config))
}

/// A self-signed certificate for `names` (dev mode and tests): PEM
/// certificate and PEM private key (ECDSA P-256).
pub fn self_signed(names: &[&str]) -> Result<(String, String), String> {
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let cert = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    Ok((cert.cert.pem(), cert.signing_key.serialize_pem()))
}
