//! Hand-built TLS ClientHellos, for what rustls cannot say: TLS 1.0 and 1.1
//! hellos, and a TLS 1.2 hello offering only CBC cipher suites. The probe
//! sends one over raw TCP and reads the first record that comes back: a
//! ServerHello means the server accepted the offer, an alert (or a closed
//! connection) means it refused.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::target::STEP;

/// TLS 1.0.
pub const TLS10: u16 = 0x0301;
/// TLS 1.1.
pub const TLS11: u16 = 0x0302;
/// TLS 1.2.
pub const TLS12: u16 = 0x0303;

/// CBC (non-AEAD) suites, with their names: what an old client offers.
pub const CBC_SUITES: [(u16, &str); 10] = [
    (0xc009, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"),
    (0xc00a, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"),
    (0xc023, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"),
    (0xc024, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384"),
    (0xc013, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"),
    (0xc014, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA"),
    (0xc027, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256"),
    (0xc028, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384"),
    (0x002f, "TLS_RSA_WITH_AES_128_CBC_SHA"),
    (0x0035, "TLS_RSA_WITH_AES_256_CBC_SHA"),
];

/// The name of a protocol version.
pub fn version_name(v: u16) -> String {
    match v {
        0x0300 => "SSL 3.0".into(),
        TLS10 => "TLS 1.0".into(),
        TLS11 => "TLS 1.1".into(),
        TLS12 => "TLS 1.2".into(),
        0x0304 => "TLS 1.3".into(),
        other => format!("version 0x{other:04x}"),
    }
}

/// The name of a suite the probe offered.
pub fn suite_name(suite: u16) -> String {
    CBC_SUITES
        .iter()
        .find(|(s, _)| *s == suite)
        .map_or_else(|| format!("suite 0x{suite:04x}"), |(_, n)| (*n).to_owned())
}

/// A ClientHello record offering `version` and `suites`, with SNI for
/// `sni` and the extensions a TLS 1.0-1.2 client sends (groups, point
/// formats, signature algorithms, renegotiation info). No
/// TLS_FALLBACK_SCSV: the hello must look like a genuine old client's.
pub fn client_hello(version: u16, suites: &[u16], sni: Option<&str>, random: [u8; 32]) -> Vec<u8> {
    let mut ext = Vec::new();
    if let Some(name) = sni {
        let name = name.as_bytes();
        let mut list = Vec::new();
        list.push(0u8);
        put_u16(&mut list, name.len());
        list.extend_from_slice(name);
        let mut body = Vec::new();
        put_u16(&mut body, list.len());
        body.extend_from_slice(&list);
        extension(&mut ext, 0x0000, &body);
    }
    // supported_groups: x25519, secp256r1, secp384r1
    extension(
        &mut ext,
        0x000a,
        &[0x00, 0x06, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18],
    );
    // ec_point_formats: uncompressed
    extension(&mut ext, 0x000b, &[0x01, 0x00]);
    // signature_algorithms: ecdsa p256/p384 sha256/384, rsa-pss, rsa pkcs1, sha1 variants
    let sigs: [u16; 9] = [
        0x0403, 0x0503, 0x0804, 0x0805, 0x0401, 0x0501, 0x0201, 0x0203, 0x0601,
    ];
    let mut body = Vec::new();
    put_u16(&mut body, sigs.len() * 2);
    for s in sigs {
        body.extend_from_slice(&s.to_be_bytes());
    }
    extension(&mut ext, 0x000d, &body);
    // renegotiation_info, empty
    extension(&mut ext, 0xff01, &[0x00]);

    let mut hello = Vec::new();
    hello.extend_from_slice(&version.to_be_bytes());
    hello.extend_from_slice(&random);
    hello.push(0); // no session id
    put_u16(&mut hello, suites.len() * 2);
    for s in suites {
        hello.extend_from_slice(&s.to_be_bytes());
    }
    hello.extend_from_slice(&[0x01, 0x00]); // compression: null only
    put_u16(&mut hello, ext.len());
    hello.extend_from_slice(&ext);

    let mut handshake = vec![0x01];
    put_u24(&mut handshake, hello.len());
    handshake.extend_from_slice(&hello);

    let mut record = vec![0x16];
    record.extend_from_slice(&TLS10.to_be_bytes());
    put_u16(&mut record, handshake.len());
    record.extend_from_slice(&handshake);
    record
}

fn put_u16(buf: &mut Vec<u8>, n: usize) {
    buf.extend_from_slice(&(n as u16).to_be_bytes());
}

fn put_u24(buf: &mut Vec<u8>, n: usize) {
    buf.extend_from_slice(&(n as u32).to_be_bytes()[1..]);
}

fn extension(buf: &mut Vec<u8>, kind: u16, body: &[u8]) {
    buf.extend_from_slice(&kind.to_be_bytes());
    put_u16(buf, body.len());
    buf.extend_from_slice(body);
}

/// What the server answered to a hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAnswer {
    /// It accepted: a ServerHello with this version and suite.
    ServerHello {
        /// The version it chose.
        version: u16,
        /// The suite it chose.
        suite: u16,
    },
    /// It refused with an alert.
    Alert {
        /// Warning (1) or fatal (2).
        level: u8,
        /// The alert's description code.
        description: u8,
    },
    /// It closed the connection without a TLS answer.
    Closed,
    /// It answered something that is not TLS.
    NotTls(String),
    /// Nothing within the bound, or a socket error.
    NoAnswer(String),
}

impl ServerAnswer {
    /// In words.
    pub fn describe(&self) -> String {
        match self {
            Self::ServerHello { version, suite } => format!(
                "a ServerHello choosing {} and {}",
                version_name(*version),
                suite_name(*suite)
            ),
            Self::Alert { level, description } => format!(
                "a {} alert: {} ({description})",
                if *level == 2 { "fatal" } else { "warning" },
                alert_name(*description)
            ),
            Self::Closed => "the connection closed without a ServerHello".into(),
            Self::NotTls(what) => format!("an answer that is not TLS: {what}"),
            Self::NoAnswer(why) => why.clone(),
        }
    }
}

fn alert_name(code: u8) -> &'static str {
    match code {
        10 => "unexpected_message",
        40 => "handshake_failure",
        47 => "illegal_parameter",
        50 => "decode_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        109 => "missing_extension",
        112 => "unrecognized_name",
        _ => "alert",
    }
}

/// Parse the first record of a server's answer.
pub fn parse_answer(bytes: &[u8]) -> ServerAnswer {
    if bytes.is_empty() {
        return ServerAnswer::Closed;
    }
    if bytes.len() < 5 || !matches!(bytes[0], 0x15 | 0x16) || bytes[1] != 0x03 {
        return ServerAnswer::NotTls(crate::target::preview(bytes));
    }
    let body = &bytes[5..];
    match bytes[0] {
        0x15 if body.len() >= 2 => ServerAnswer::Alert {
            level: body[0],
            description: body[1],
        },
        // handshake: type 2 = ServerHello; version(2) random(32) sid(1+n) suite(2)
        0x16 if body.len() > 4 + 2 + 32 && body[0] == 0x02 => {
            let hello = &body[4..];
            let version = u16::from_be_bytes([hello[0], hello[1]]);
            let sid_len = hello[34] as usize;
            let at = 35 + sid_len;
            match hello.get(at..at + 2) {
                Some(s) => ServerAnswer::ServerHello {
                    version,
                    suite: u16::from_be_bytes([s[0], s[1]]),
                },
                None => ServerAnswer::NotTls(crate::target::preview(bytes)),
            }
        }
        _ => ServerAnswer::NotTls(crate::target::preview(bytes)),
    }
}

/// Send `hello` on `tcp` and read the first record back (bounded by
/// [`STEP`] and 64 bytes past the ServerHello's suite).
pub async fn exchange(mut tcp: TcpStream, hello: &[u8]) -> ServerAnswer {
    if let Err(e) = tcp.write_all(hello).await {
        return ServerAnswer::NoAnswer(format!("sending the ClientHello failed: {e}"));
    }
    let mut buf = Vec::with_capacity(128);
    let read = async {
        let mut chunk = [0u8; 128];
        // Enough for an alert or a ServerHello's version and suite.
        while buf.len() < 80 {
            match tcp.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if buf.is_empty() => {
                    // A reset in answer to the hello is a refusal too.
                    return Err(e);
                }
                Err(_) => break,
            }
            if buf.len() >= 7 && buf[0] == 0x15 {
                break;
            }
        }
        Ok(())
    };
    let result = tokio::time::timeout(STEP, read).await;
    match result {
        Ok(Ok(())) => parse_answer(&buf),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => ServerAnswer::Closed,
        Ok(Err(e)) => ServerAnswer::NoAnswer(format!("reading the answer failed: {e}")),
        Err(_) if buf.is_empty() => {
            ServerAnswer::NoAnswer(format!("no answer within {} s", STEP.as_secs()))
        }
        Err(_) => parse_answer(&buf),
    }
}

/// 32 random bytes for a hello.
pub fn random() -> [u8; 32] {
    let mut r = [0u8; 32];
    let _ = rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_is_framed_with_consistent_lengths() {
        let suites: Vec<u16> = CBC_SUITES.iter().map(|(s, _)| *s).collect();
        let rec = client_hello(TLS11, &suites, Some("example.com"), [7; 32]);
        assert_eq!(rec[0], 0x16);
        let record_len = u16::from_be_bytes([rec[3], rec[4]]) as usize;
        assert_eq!(record_len, rec.len() - 5);
        assert_eq!(rec[5], 0x01, "a ClientHello");
        let hs_len = u32::from_be_bytes([0, rec[6], rec[7], rec[8]]) as usize;
        assert_eq!(hs_len, rec.len() - 9);
        assert_eq!(u16::from_be_bytes([rec[9], rec[10]]), TLS11);
        assert_eq!(rec[43], 0, "empty session id");
        assert_eq!(
            u16::from_be_bytes([rec[44], rec[45]]) as usize,
            suites.len() * 2
        );
        let sni = b"example.com";
        assert!(rec.windows(sni.len()).any(|w| w == sni));
    }

    #[test]
    fn answers_are_told_apart() {
        assert_eq!(
            parse_answer(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 70]),
            ServerAnswer::Alert {
                level: 2,
                description: 70
            }
        );
        let mut hello = vec![
            0x16, 0x03, 0x01, 0x00, 0x2a, 0x02, 0x00, 0x00, 0x26, 0x03, 0x01,
        ];
        hello.extend_from_slice(&[0; 32]);
        hello.extend_from_slice(&[0x00, 0xc0, 0x13, 0x00]);
        assert_eq!(
            parse_answer(&hello),
            ServerAnswer::ServerHello {
                version: TLS10,
                suite: 0xc013
            }
        );
        assert_eq!(parse_answer(&[]), ServerAnswer::Closed);
        assert!(matches!(
            parse_answer(b"HTTP/1.1 400 Bad"),
            ServerAnswer::NotTls(_)
        ));
        assert!(
            ServerAnswer::Alert {
                level: 2,
                description: 70
            }
            .describe()
            .contains("protocol_version")
        );
    }
}
