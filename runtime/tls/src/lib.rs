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

use std::path::{Path, PathBuf};
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

/// Why a TLS configuration could not be built; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file cannot be read.
    #[error("cannot read certificate {path}: {source}")]
    ReadCert {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate in the file is not PEM that rustls can read.
    #[error("bad certificate {path}: {source}")]
    BadCert {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate in {0}")]
    NoCert(PathBuf),
    /// The private key file cannot be read, or holds no key.
    #[error("cannot read private key {path}: {source}")]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// The key is not the certificate's.
    #[error("certificate and key do not match: {0}")]
    Mismatch(rustls::Error),
    /// rustls refused the protocol versions or the session ticketer.
    #[error("TLS: {0}")]
    Setup(rustls::Error),
    /// A self-signed certificate could not be made.
    #[error("self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
}

/// Build the server's TLS configuration from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|source| TlsError::ReadCert {
            path: cert.to_owned(),
            source,
        })?
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::BadCert {
            path: cert.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(cert.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::ReadKey {
        path: key.to_owned(),
        source,
    })?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Mismatch)?;
    // The server's order of cipher suites, not the client's.
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(TlsError::Setup)?;
    Ok(Arc::new(config))
}

/// A self-signed certificate for `names` (dev mode and tests): PEM
/// certificate and PEM private key (ECDSA P-256).
pub fn self_signed(names: &[&str]) -> Result<(String, String), TlsError> {
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let cert = rcgen::generate_simple_self_signed(names)?;
    Ok((cert.cert.pem(), cert.signing_key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files(PathBuf);

    impl Files {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("sluice-tls-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_self_signed_pair_serves_tls_1_2_and_1_3_in_the_server_s_order() {
        let f = Files::new("pair");
        let (cert, key) = self_signed(&["localhost"]).unwrap();
        let config = server_config(&f.write("c.pem", &cert), &f.write("k.pem", &key)).unwrap();
        assert!(config.ignore_client_order, "the server picks the suite");
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
        assert!(
            config.ticketer.enabled(),
            "session tickets resume handshakes"
        );
        let versions: Vec<_> = config
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.version().version)
            .collect();
        assert!(versions.contains(&rustls::ProtocolVersion::TLSv1_3));
        assert!(versions.contains(&rustls::ProtocolVersion::TLSv1_2));
        let groups: Vec<_> = config
            .crypto_provider()
            .kx_groups
            .iter()
            .map(|g| g.name())
            .collect();
        assert_eq!(
            groups[0],
            rustls::NamedGroup::X25519MLKEM768,
            "hybrid first"
        );
    }

    #[test]
    fn each_broken_file_is_named_in_its_error() {
        let f = Files::new("broken");
        let (cert, key) = self_signed(&["localhost"]).unwrap();
        let (_, other_key) = self_signed(&["localhost"]).unwrap();
        let (c, k) = (f.write("c.pem", &cert), f.write("k.pem", &key));
        let err = |c: &Path, k: &Path| server_config(c, k).err().unwrap().to_string();
        let missing = f.0.join("missing.pem");
        assert!(err(&missing, &k).starts_with("cannot read certificate"));
        let empty = f.write("empty.pem", "");
        assert!(err(&empty, &k).starts_with("no certificate in"));
        assert!(err(&c, &missing).starts_with("cannot read private key"));
        assert!(
            err(&c, &f.write("other.pem", &other_key))
                .starts_with("certificate and key do not match")
        );
        assert!(err(&c, &f.write("notkey.pem", &cert)).starts_with("cannot read private key"));
    }
}
