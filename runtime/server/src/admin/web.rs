//! HTTP helpers the admin listener and the management API share: plain
//! answers, the bearer token, constant-time comparison of secrets, the
//! `Host` check that defeats DNS rebinding, and reading a body within a
//! size and a time.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

/// How long a request's body may take to arrive, whole (the management
/// API's pushes are the largest): then the request is answered 408 and
/// the connection closed.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request's body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// Over this many bytes (413).
    TooLarge(usize),
    /// Not all there within [`BODY_TIMEOUT`] (408).
    TimedOut,
    /// The connection failed or the framing was wrong (400).
    Unreadable(String),
}

/// A request's whole body: at most `max` bytes, within `within`.
pub async fn read_body(body: Incoming, max: usize, within: Duration) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(within, Limited::new(body, max).collect()).await {
        Err(_) => Err(BodyError::TimedOut),
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge(max)),
        Ok(Err(e)) => Err(BodyError::Unreadable(e.to_string())),
    }
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

/// Whether `host` (a `Host` header's value) names this admin listener: a
/// loopback name or address, the configured `admin_listen` address or the
/// address the request arrived on (`local`). The port is not compared.
pub fn host_allowed(host: &str, local: SocketAddr, configured: Option<SocketAddr>) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6] or [v6]:port
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.starts_with(':') => v6,
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port))
                if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                name
            }
            Some(_) => return false,
            None => host,
        },
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let Ok(ip) = name.parse::<IpAddr>() else {
        return false;
    };
    ip.is_loopback()
        || ip == local.ip()
        || configured.is_some_and(|c| !c.ip().is_unspecified() && c.ip() == ip)
}

/// Compare without an early exit, so the time taken does not tell how much
/// of a guessed token was right.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hosts_that_name_the_admin_listener_are_allowed() {
        let local: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let private: SocketAddr = "10.1.2.3:9464".parse().unwrap();
        for ok in [
            "localhost",
            "LOCALHOST:9464",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:9464",
            "127.8.9.10:1",
            "[::1]",
            "[::1]:9464",
        ] {
            assert!(host_allowed(ok, local, None), "{ok}");
        }
        // The address the request arrived on, and the configured one.
        assert!(host_allowed("10.1.2.3:9464", private, None));
        assert!(host_allowed(
            "10.9.9.9",
            local,
            Some("10.9.9.9:9464".parse().unwrap())
        ));
        for refused in [
            "",
            "evil.example",
            "evil.example:9464",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.1.2.4:9464",
            "0.0.0.0:9464",
            "::1",
            "[::1",
            "[::1]x",
            "127.0.0.1:80:80",
            "localhost:port",
        ] {
            assert!(
                !host_allowed(refused, private, Some("0.0.0.0:9464".parse().unwrap())),
                "{refused}"
            );
        }
    }
}
