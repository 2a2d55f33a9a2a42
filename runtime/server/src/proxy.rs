//! The PROXY protocol, version 2 (binary), read only from the TCP load
//! balancers the configuration names (`[server] proxy_protocol_from`).
//!
//! Behind a TCP load balancer every connection comes from the balancer's
//! address, so per-IP limits would count all clients as one. A balancer
//! that speaks the PROXY protocol starts each connection with a header that
//! carries the client's address; Sluice reads it, before TLS, and keys the
//! per-IP limits on that address.
//!
//! - From a configured balancer, the header is required: a connection that
//!   does not start with a valid v2 header (none, version 1 text, a UDP or
//!   Unix-socket address) is closed.
//! - From any other address no header is read: a client cannot choose the
//!   address it is counted under. A header it sends is what TLS reads
//!   first, and the TLS handshake fails.
//! - `LOCAL` (the balancer's own health checks) and the unspecified family
//!   keep the balancer's address, as the specification says.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12 bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Why a header was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The connection does not start with the v2 signature.
    #[error("no PROXY protocol v2 header")]
    Missing,
    /// A version or command other than v2 PROXY/LOCAL.
    #[error("unsupported PROXY protocol version or command {0:#04x}")]
    Version(u8),
    /// An address family other than TCP over IPv4/IPv6 or unspecified.
    #[error("unsupported PROXY protocol address family {0:#04x}")]
    Family(u8),
    /// The header's length is shorter than its addresses.
    #[error("PROXY protocol header too short for its addresses")]
    Short,
    /// The connection ended or failed inside the header.
    #[error("reading the PROXY protocol header: {0}")]
    Io(String),
}

/// Read a v2 header from the start of `stream`, consuming exactly the
/// header (TLS follows). Returns the client's address, or `None` when the
/// header says to keep the connection's own (`LOCAL`, unspecified family).
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<IpAddr>, ProxyError> {
    let io = |e: std::io::Error| ProxyError::Io(e.to_string());
    let mut fixed = [0u8; 16];
    // The signature first, alone: a client that sent something else gets
    // no further read.
    stream.read_exact(&mut fixed[..12]).await.map_err(io)?;
    if fixed[..12] != SIGNATURE {
        return Err(ProxyError::Missing);
    }
    stream.read_exact(&mut fixed[12..]).await.map_err(io)?;
    let (version_command, family) = (fixed[12], fixed[13]);
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let local = match version_command {
        0x20 => true,
        0x21 => false,
        other => return Err(ProxyError::Version(other)),
    };
    let address_len = match family {
        0x00 => 0,
        0x11 => 12,
        0x21 => 36,
        // LOCAL ignores the family; whatever follows is skipped.
        _ if local => 0,
        other => return Err(ProxyError::Family(other)),
    };
    if len < address_len {
        return Err(ProxyError::Short);
    }
    let mut addresses = [0u8; 36];
    stream
        .read_exact(&mut addresses[..address_len])
        .await
        .map_err(io)?;
    // TLVs (and anything else the header holds) are skipped, not kept.
    let rest = (len - address_len) as u64;
    let skipped = tokio::io::copy(&mut (&mut *stream).take(rest), &mut tokio::io::sink())
        .await
        .map_err(io)?;
    if skipped != rest {
        return Err(ProxyError::Io(
            "the connection ended inside the header".into(),
        ));
    }
    if local {
        return Ok(None);
    }
    Ok(match family {
        0x11 => {
            let src: [u8; 4] = addresses[..4].try_into().map_err(|_| ProxyError::Short)?;
            Some(IpAddr::V4(Ipv4Addr::from(src)))
        }
        0x21 => {
            let src: [u8; 16] = addresses[..16].try_into().map_err(|_| ProxyError::Short)?;
            Some(IpAddr::V6(Ipv6Addr::from(src)))
        }
        _ => None,
    })
}

/// A v2 `PROXY` header for a TCP connection from `src` to `dst` (what a
/// load balancer sends; tests and tools use it).
pub fn header(src: std::net::SocketAddr, dst: std::net::SocketAddr) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(0x21);
    match (src, dst) {
        (std::net::SocketAddr::V4(s), std::net::SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: std::net::SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    async fn read(bytes: &[u8]) -> (Result<Option<IpAddr>, ProxyError>, Vec<u8>) {
        let mut stream = bytes;
        let result = read_header(&mut stream).await;
        (result, stream.to_vec())
    }

    #[tokio::test]
    async fn a_header_gives_the_client_address_and_leaves_what_follows() {
        let h = header(
            "203.0.113.7:5555".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
        );
        let (ip, rest) = read(&cat(&[h.as_slice(), b"\x16\x03\x01TLS"])).await;
        assert_eq!(ip, Ok(Some("203.0.113.7".parse().unwrap())));
        assert_eq!(rest, b"\x16\x03\x01TLS");

        let h = header(
            "[2001:db8::7]:5555".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
        );
        let (ip, rest) = read(&cat(&[h.as_slice(), b"next"])).await;
        assert_eq!(ip, Ok(Some("2001:db8::7".parse().unwrap())));
        assert_eq!(rest, b"next");
    }

    #[tokio::test]
    async fn tlvs_are_skipped_and_local_keeps_the_connections_address() {
        let mut h = header(
            "198.51.100.2:1".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
        );
        // Append a TLV (type 0x04, "NOOP", 3 bytes) and grow the length.
        h[15] += 6;
        h.extend_from_slice(&[0x04, 0x00, 0x03, 1, 2, 3]);
        let (ip, rest) = read(&cat(&[h.as_slice(), b"T"])).await;
        assert_eq!(ip, Ok(Some("198.51.100.2".parse().unwrap())));
        assert_eq!(rest, b"T");

        let local = cat(&[&SIGNATURE[..], &[0x20, 0x00, 0x00, 0x00], b"T"]);
        assert_eq!(read(&local).await, (Ok(None), b"T".to_vec()));
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        let (r, _) = read(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x00").await;
        assert_eq!(r, Err(ProxyError::Missing), "a TLS ClientHello");
        let (r, rest) = read(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").await;
        assert_eq!(r, Err(ProxyError::Missing), "version 1 is not spoken");
        assert_eq!(
            rest, b".2.3.4 5.6.7.8 1 2\r\n",
            "nothing is read past the signature's length"
        );
        let udp = cat(&[&SIGNATURE[..], &[0x21, 0x12, 0x00, 0x0c], &[0; 12]]);
        assert_eq!(read(&udp).await.0, Err(ProxyError::Family(0x12)));
        let v1cmd = cat(&[&SIGNATURE[..], &[0x11, 0x11, 0x00, 0x0c], &[0; 12]]);
        assert_eq!(read(&v1cmd).await.0, Err(ProxyError::Version(0x11)));
        let short = cat(&[&SIGNATURE[..], &[0x21, 0x11, 0x00, 0x04], &[0; 4]]);
        assert_eq!(read(&short).await.0, Err(ProxyError::Short));
        let cut = cat(&[&SIGNATURE[..], &[0x21, 0x11, 0x00, 0x0c], &[0; 5]]);
        assert!(matches!(read(&cut).await.0, Err(ProxyError::Io(_))));
        let (r, _) = read(&SIGNATURE[..7]).await;
        assert!(
            matches!(r, Err(ProxyError::Io(_))),
            "ended inside the signature"
        );
    }
}
