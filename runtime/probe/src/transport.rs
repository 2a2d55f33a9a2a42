//! Transport: plaintext refused, TLS 1.0 and 1.1 refused, AEAD suites only,
//! a certificate valid for the host, in date, with a complete chain.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::hello::{self, CBC_SUITES, ServerAnswer, TLS10, TLS11, TLS12};
use crate::report::{Check, Spec, Status};
use crate::target::{Endpoint, Request, STEP, Scheme, Target, Upgrade, upgrade_on};

const GROUP: &str = "Transport";

/// `transport.plaintext`.
pub const PLAINTEXT: Spec = Spec {
    id: "transport.plaintext",
    group: GROUP,
    title: "the plaintext ws:// equivalent is refused",
    refs: "OWASP WebSocket CS: Transport Security (always use WSS); ASVS 5.0 4.4.1, 12.2.1",
};
/// `transport.tls10`.
pub const TLS10_SPEC: Spec = Spec {
    id: "transport.tls10",
    group: GROUP,
    title: "TLS 1.0 is refused",
    refs: "OWASP WebSocket CS: Transport Security (TLS CS); ASVS 5.0 12.1.1",
};
/// `transport.tls11`.
pub const TLS11_SPEC: Spec = Spec {
    id: "transport.tls11",
    group: GROUP,
    title: "TLS 1.1 is refused",
    refs: "OWASP WebSocket CS: Transport Security (TLS CS); ASVS 5.0 12.1.1",
};
/// `transport.aead_only`.
pub const AEAD: Spec = Spec {
    id: "transport.aead_only",
    group: GROUP,
    title: "only AEAD cipher suites: a TLS 1.2 hello offering only CBC suites is refused",
    refs: "OWASP WebSocket CS: Transport Security (TLS CS); ASVS 5.0 12.1.2",
};
/// `transport.certificate`.
pub const CERTIFICATE: Spec = Spec {
    id: "transport.certificate",
    group: GROUP,
    title: "the certificate is valid for the host, in date, with a complete chain",
    refs: "OWASP WebSocket CS: Transport Security (TLS CS); ASVS 5.0 12.2.2",
};

/// The TLS configuration every `wss` connection of the probe uses: the CA
/// file's certificates, or the public web roots, TLS 1.2 and 1.3.
pub fn client_config(ca: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| anyhow::anyhow!("--ca {}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| anyhow::anyhow!("--ca {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("--ca {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                anyhow::bail!("--ca {}: no certificate in the file", path.display());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Run the transport checks. Returns them and whether the certificate
/// verified (the probe sends the token over no connection it could not
/// verify).
pub async fn run(endpoint: &Endpoint, ca: Option<&Path>) -> (Vec<Check>, bool) {
    let target = &endpoint.target;
    if target.scheme == Scheme::Ws {
        let na = |spec| {
            Check::skipped(
                spec,
                Status::NotApplicable,
                "the URL is ws://: there is no TLS to check (see transport.plaintext)",
            )
        };
        return (
            vec![
                plaintext_url(endpoint).await,
                na(TLS10_SPEC),
                na(TLS11_SPEC),
                na(AEAD),
                na(CERTIFICATE),
            ],
            true,
        );
    }
    let (plain, v10, v11, aead, cert) = tokio::join!(
        plaintext_port(endpoint),
        old_version(endpoint, TLS10_SPEC, TLS10),
        old_version(endpoint, TLS11_SPEC, TLS11),
        cbc_only(endpoint),
        certificate(endpoint, ca),
    );
    let ok = cert.status == Status::Pass;
    (vec![plain, v10, v11, aead, cert], ok)
}

/// A `ws://` URL: the endpoint itself is plaintext; the upgrade (without
/// a token) shows whether it answers.
async fn plaintext_url(endpoint: &Endpoint) -> Check {
    let sent = format!(
        "an HTTP upgrade request in plaintext to {} (no token)",
        endpoint.target.authority
    );
    let answer = endpoint.upgrade(&Request::default()).await;
    match answer {
        Upgrade::Failed(why) => Check::new(PLAINTEXT, Status::CouldNotTell, sent, why)
            .detail("the URL is ws:// but no HTTP answer came back"),
        other => Check::new(PLAINTEXT, Status::Fail, sent, other.summary()).detail(
            "the URL is ws://: the endpoint speaks WebSocket in plaintext, so tokens and \
             messages cross the network readable and changeable. Serve wss:// only \
             (Sluice serves nothing but wss)",
        ),
    }
}

/// A `wss://` URL: the same host and port, spoken to in plaintext.
async fn plaintext_port(endpoint: &Endpoint) -> Check {
    let target = &endpoint.target;
    let sent = format!(
        "an HTTP upgrade request in plaintext (no TLS, no token) to {}",
        target.authority
    );
    let tcp = match endpoint.tcp().await {
        Ok(tcp) => tcp,
        Err(e) => return Check::new(PLAINTEXT, Status::CouldNotTell, sent, e),
    };
    let request = endpoint.request_text(&Request::default());
    match upgrade_on(Box::new(tcp), &request).await {
        Upgrade::Open(head, _) => Check::new(PLAINTEXT, Status::Fail, sent, head.status_line)
            .detail("the port upgrades plaintext connections: serve only TLS on it"),
        Upgrade::Refused(head) if matches!(head.status, 401 | 403 | 429) => {
            Check::new(PLAINTEXT, Status::Fail, sent, head.status_line).detail(
                "the port judged the plaintext upgrade like a real one (it only lacked a token): \
                 with a token it would upgrade without TLS. Serve only TLS on it",
            )
        }
        Upgrade::Refused(head) => Check::new(PLAINTEXT, Status::Pass, sent, head.status_line)
            .detail("the plaintext request was refused"),
        Upgrade::Failed(why) if why.starts_with("no answer") => {
            Check::new(PLAINTEXT, Status::CouldNotTell, sent, why)
                .detail("neither an answer nor a close within the bound")
        }
        Upgrade::Failed(why) => Check::new(PLAINTEXT, Status::Pass, sent, why)
            .detail("no WebSocket upgrade over plaintext"),
    }
}

fn sni(target: &Target) -> Option<&str> {
    target.host_is_dns_name().then_some(target.host.as_str())
}

/// A TLS 1.0 / 1.1 hello over raw TCP.
async fn old_version(endpoint: &Endpoint, spec: Spec, version: u16) -> Check {
    let target = &endpoint.target;
    let suites: Vec<u16> = CBC_SUITES.iter().map(|(s, _)| *s).collect();
    let sent = format!(
        "a {} ClientHello offering {} CBC suites",
        hello::version_name(version),
        suites.len()
    );
    let tcp = match endpoint.tcp().await {
        Ok(tcp) => tcp,
        Err(e) => return Check::new(spec, Status::CouldNotTell, sent, e),
    };
    let answer = hello::exchange(
        tcp,
        &hello::client_hello(version, &suites, sni(target), hello::random()),
    )
    .await;
    let status = match &answer {
        ServerAnswer::ServerHello { version: v, .. } if *v == version => Status::Fail,
        ServerAnswer::ServerHello { .. } => Status::CouldNotTell,
        ServerAnswer::Alert { .. } | ServerAnswer::Closed => Status::Pass,
        ServerAnswer::NotTls(_) | ServerAnswer::NoAnswer(_) => Status::CouldNotTell,
    };
    let detail = match status {
        Status::Fail => format!(
            "{} is deprecated (RFC 8996); a downgrade exposes clients to its weaknesses. \
             Allow TLS 1.2 and 1.3 only (Sluice's rustls speaks nothing older)",
            hello::version_name(version)
        ),
        Status::Pass => "refused".into(),
        _ => String::new(),
    };
    Check::new(spec, status, sent, answer.describe()).detail(detail)
}

/// A TLS 1.2 hello offering only CBC suites.
async fn cbc_only(endpoint: &Endpoint) -> Check {
    let suites: Vec<u16> = CBC_SUITES.iter().map(|(s, _)| *s).collect();
    let sent = format!(
        "a TLS 1.2 ClientHello offering only CBC suites ({})",
        CBC_SUITES
            .iter()
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let tcp = match endpoint.tcp().await {
        Ok(tcp) => tcp,
        Err(e) => return Check::new(AEAD, Status::CouldNotTell, sent, e),
    };
    let answer = hello::exchange(
        tcp,
        &hello::client_hello(TLS12, &suites, sni(&endpoint.target), hello::random()),
    )
    .await;
    let (status, detail) = match &answer {
        ServerAnswer::ServerHello { .. } => (
            Status::Fail,
            "the server agreed to a CBC (MAC-then-encrypt) suite, the family of padding-oracle \
             attacks (Lucky13, POODLE-style). Offer only AEAD suites (AES-GCM, ChaCha20-Poly1305); \
             Sluice's rustls has no CBC suites",
        ),
        ServerAnswer::Alert { .. } | ServerAnswer::Closed => (Status::Pass, "refused"),
        _ => (Status::CouldNotTell, ""),
    };
    Check::new(AEAD, status, sent, answer.describe()).detail(detail)
}

/// A full TLS handshake verified by rustls against `--ca` or the web roots.
async fn certificate(endpoint: &Endpoint, ca: Option<&Path>) -> Check {
    let roots = match ca {
        Some(p) => format!("--ca {}", p.display()),
        None => "the public web roots (webpki-roots)".to_owned(),
    };
    let sent = format!(
        "a TLS 1.2/1.3 handshake verifying the certificate for {:?} against {roots}",
        endpoint.target.host
    );
    let config = match client_config(ca) {
        Ok(c) => c,
        Err(e) => return Check::new(CERTIFICATE, Status::CouldNotTell, sent, e.to_string()),
    };
    let name = match endpoint.target.server_name() {
        Ok(n) => n,
        Err(e) => return Check::new(CERTIFICATE, Status::CouldNotTell, sent, e.to_string()),
    };
    let tcp = match endpoint.tcp().await {
        Ok(tcp) => tcp,
        Err(e) => return Check::new(CERTIFICATE, Status::CouldNotTell, sent, e),
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    match tokio::time::timeout(STEP, connector.connect(name, tcp)).await {
        Ok(Ok(tls)) => {
            let (_, conn) = tls.get_ref();
            let received = format!(
                "{:?} with {:?}; {} certificate(s) sent; chain, name and dates verified",
                conn.protocol_version()
                    .unwrap_or(rustls::ProtocolVersion::Unknown(0)),
                conn.negotiated_cipher_suite()
                    .map(|s| s.suite())
                    .unwrap_or(rustls::CipherSuite::Unknown(0)),
                conn.peer_certificates().map_or(0, <[_]>::len)
            );
            Check::new(CERTIFICATE, Status::Pass, sent, received)
        }
        Ok(Err(e)) => {
            let invalid = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
            if invalid {
                Check::new(CERTIFICATE, Status::Fail, sent, e.to_string()).detail(
                    "a client that checks certificates (every mobile OS does) cannot connect, \
                     and one that does not is open to interception. Serve a certificate for \
                     this host from a public CA, in date, with the intermediates (Sluice: \
                     server.tls_cert is the full chain, leaf first). A private CA: pass --ca. \
                     The probe stops here: it does not send the token over a connection it \
                     could not verify",
                )
            } else {
                Check::new(
                    CERTIFICATE,
                    Status::CouldNotTell,
                    sent,
                    format!("TLS handshake failed: {e}"),
                )
            }
        }
        Err(_) => Check::new(
            CERTIFICATE,
            Status::CouldNotTell,
            sent,
            format!("TLS handshake timed out after {} s", STEP.as_secs()),
        ),
    }
}
