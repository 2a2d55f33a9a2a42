//! Address ranges in CIDR notation (`[server] proxy_protocol_from`), and the
//! masking that per-IP limits key IPv6 clients by.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// An address range in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`; a bare
/// address is one host).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    /// The network's address (bits past the prefix are zero).
    pub addr: IpAddr,
    /// Leading bits that must match.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as
    /// their IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

/// `ip` with every bit past the first `prefix` cleared.
pub fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let keep = u32::from(prefix.min(32));
            let bits = if keep == 0 {
                0
            } else {
                u32::MAX << (32 - keep)
            };
            IpAddr::V4((u32::from(v4) & bits).into())
        }
        IpAddr::V6(v6) => {
            let keep = u32::from(prefix.min(128));
            let bits = if keep == 0 {
                0
            } else {
                u128::MAX << (128 - keep)
            };
            IpAddr::V6((u128::from(v6) & bits).into())
        }
    }
}

/// Why a text is not an address range (the message names the text).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not an address, or a prefix that is not a number within the
    /// address's length.
    #[error("{0:?} is not an address range like 10.0.0.0/8 or 2001:db8::/32")]
    NotARange(String),
    /// An address with bits set past its prefix (`10.0.0.1/8`).
    #[error("{text:?} has bits set past its /{prefix} prefix (did you mean {network}/{prefix}?)")]
    HostBits {
        /// What was written.
        text: String,
        /// Its prefix.
        prefix: u8,
        /// The network it probably meant.
        network: IpAddr,
    },
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;

    fn try_from(s: String) -> Result<Self, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.as_str(), None),
        };
        let Ok(addr) = addr.parse::<IpAddr>() else {
            return Err(CidrError::NotARange(s));
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix.map(|p| p.parse::<u8>().ok().filter(|p| *p <= max)) {
            Some(Some(p)) => p,
            Some(None) => return Err(CidrError::NotARange(s)),
            None => max,
        };
        let network = mask(addr, prefix);
        if network != addr {
            return Err(CidrError::HostBits {
                text: s,
                prefix,
                network,
            });
        }
        Ok(Self { addr, prefix })
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        format!("{}/{}", c.addr, c.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Result<Cidr, String> {
        Cidr::try_from(s.to_owned()).map_err(|e| e.to_string())
    }

    #[test]
    fn ranges_parse_and_contain_their_addresses() {
        let ten = cidr("10.0.0.0/8").unwrap();
        assert!(ten.contains("10.200.1.2".parse().unwrap()));
        assert!(!ten.contains("11.0.0.1".parse().unwrap()));
        // An IPv4-mapped IPv6 address is its IPv4 address.
        assert!(ten.contains("::ffff:10.1.2.3".parse().unwrap()));
        let host = cidr("192.0.2.7").unwrap();
        assert_eq!(host.prefix, 32);
        assert_eq!(String::from(host), "192.0.2.7/32");
        let v6 = cidr("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert_eq!(cidr("0.0.0.0/0").unwrap().prefix, 0);
    }

    #[test]
    fn what_is_not_a_range_is_refused_with_what_was_meant() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/x",
            "example.com",
            "2001:db8::/129",
            "",
        ] {
            assert_eq!(
                cidr(bad),
                Err(format!(
                    "{bad:?} is not an address range like 10.0.0.0/8 or 2001:db8::/32"
                ))
            );
        }
        assert_eq!(
            cidr("10.0.0.1/8"),
            Err("\"10.0.0.1/8\" has bits set past its /8 prefix (did you mean 10.0.0.0/8?)".into())
        );
    }

    #[test]
    fn mask_keeps_the_prefix() {
        assert_eq!(
            mask("2001:db8:1:2:3:4:5:6".parse().unwrap(), 64),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            mask("10.1.2.3".parse().unwrap(), 0),
            "0.0.0.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            mask("10.1.2.3".parse().unwrap(), 40),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }
}
