//! Endpoints in text: `ws://`, `wss://`, `http://`, `https://` URLs
//! anywhere in a string, and bare host names where a whole string is one
//! (`api.example.com`, as a base URL is often kept). URLs that are XML
//! namespace or schema names are identifiers, not connections, and are
//! counted apart.

use std::sync::LazyLock;

use regex::Regex;

use crate::report::Transport;

/// A URL found in a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundUrl {
    /// The URL, trailing punctuation trimmed.
    pub url: String,
    /// Lowercased scheme.
    pub scheme: String,
    /// Lowercased host (no brackets, no port).
    pub host: String,
    /// TLS or plaintext.
    pub transport: Transport,
    /// Byte index in the text.
    pub start: usize,
    /// Whether the URL carries `user:password@`.
    pub credentials: bool,
}

#[expect(
    clippy::expect_used,
    reason = "a constant pattern, covered by the tests below"
)]
static URL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)\b(wss?|https?)://[^\s"'<>\\^`{|}\x00-\x1f]+"#).expect("the URL pattern")
});

#[expect(
    clippy::expect_used,
    reason = "a constant pattern, covered by the tests below"
)]
static BARE_HOST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:com|net|org|io|dev|app|co|cloud|ai|me|tech|info|biz|us|uk|de|fr|jp|cn|ru|in|br|eu|gg|tv|xyz)(?::[0-9]{1,5})?$",
    )
    .expect("the host pattern")
});

/// Hosts whose URLs name XML namespaces, schemas, DTDs or parser features.
const NAMESPACE_HOSTS: &[&str] = &[
    "schemas.android.com",
    "www.w3.org",
    "w3.org",
    "apache.org",
    "xml.apache.org",
    "xml.org",
    "www.xml.org",
    "java.sun.com",
    "xmlns.jcp.org",
    "relaxng.org",
    "xmlpull.org",
    "ns.adobe.com",
    "purl.org",
    "schemas.xmlsoap.org",
    "schemas.microsoft.com",
    "schemas.openxmlformats.org",
    "json-schema.org",
];

/// First labels of reversed-domain identifiers (`com.example.app` is a
/// Java package, not a host).
const REVERSED_DOMAIN_STARTS: &[&str] = &[
    "com", "org", "net", "io", "android", "androidx", "java", "javax", "kotlin", "kotlinx",
    "dalvik", "sun", "me", "dev", "app", "co",
];

/// Every URL in `text`.
pub fn urls(text: &str) -> Vec<FoundUrl> {
    if !text.contains("://") {
        return Vec::new();
    }
    let mut out = Vec::new();
    for m in URL.find_iter(text) {
        let url = m
            .as_str()
            .trim_end_matches(['.', ',', ';', ':', ')', ']', '\'', '"', '!', '?', '*']);
        let Some((scheme, rest)) = url.split_once("://") else {
            continue;
        };
        let scheme = scheme.to_ascii_lowercase();
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let (credentials, hostport) = match authority.rsplit_once('@') {
            Some((_, hp)) => (true, hp),
            None => (false, authority),
        };
        let host = if let Some(v6) = hostport.strip_prefix('[') {
            v6.split(']').next().unwrap_or("")
        } else {
            hostport.split(':').next().unwrap_or("")
        }
        .to_ascii_lowercase();
        if !valid_host(&host) {
            continue;
        }
        let transport = if scheme == "wss" || scheme == "https" {
            Transport::Tls
        } else {
            Transport::Plaintext
        };
        out.push(FoundUrl {
            url: url.to_owned(),
            scheme,
            host,
            transport,
            start: m.start(),
            credentials,
        });
    }
    out
}

/// A host name (or address): letters, digits, dots, dashes, colons for
/// IPv6; at least one dot unless it is `localhost` or an IPv6 address.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':')
        && (host.contains('.') || host == "localhost" || host.contains(':'))
        && !host.starts_with(['.', '-'])
        && !host.ends_with(['.', '-'])
}

/// `text` as a bare host name, when the whole string is one.
pub fn bare_host(text: &str) -> Option<String> {
    let plausible = text.contains('.')
        && text.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' || b == b':'
        });
    if text.len() > 100 || !plausible || !BARE_HOST.is_match(text) {
        return None;
    }
    let first = text.split('.').next().unwrap_or("");
    if REVERSED_DOMAIN_STARTS.contains(&first) {
        return None;
    }
    Some(text.to_owned())
}

/// Whether the URL names a namespace or schema rather than a server.
pub fn is_namespace(found: &FoundUrl) -> bool {
    NAMESPACE_HOSTS.contains(&found.host.as_str())
        || found.host.starts_with("javax.")
        || (found.host == "www.apple.com" && found.url.contains("/DTDs/"))
}

/// Whether the host is this device or a private network: a development
/// address left in a build rather than a server the public reaches.
pub fn is_local(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") || host == "::1" {
        return true;
    }
    let octets: Vec<u8> = host.split('.').filter_map(|p| p.parse().ok()).collect();
    if octets.len() != 4 || host.split('.').count() != 4 {
        return false;
    }
    matches!(
        (octets[0], octets[1]),
        (127, _) | (10, _) | (192, 168) | (169, 254) | (172, 16..=31)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_found_trimmed_and_classified() {
        let found = urls(
            r#"connect("wss://chat.example.com/ws/app"); see http://legacy.example.net:8080/api. x"#,
        );
        let summary: Vec<(&str, &str, Transport)> = found
            .iter()
            .map(|f| (f.url.as_str(), f.host.as_str(), f.transport))
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "wss://chat.example.com/ws/app",
                    "chat.example.com",
                    Transport::Tls
                ),
                (
                    "http://legacy.example.net:8080/api",
                    "legacy.example.net",
                    Transport::Plaintext
                ),
            ]
        );
        // Templates and bare schemes are not endpoints.
        assert!(urls("wss://%s/ws and https:// and http://${host}/x").is_empty());
        let creds = urls("https://user:pw@api.example.com/");
        assert!(creds[0].credentials && creds[0].host == "api.example.com");
        assert!(is_namespace(
            &urls("http://schemas.android.com/apk/res/android")[0]
        ));
    }

    #[test]
    fn bare_hosts_exclude_java_packages() {
        assert_eq!(
            bare_host("api.example.com").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(bare_host("com.example.app"), None);
        assert_eq!(bare_host("io.appium.settings"), None);
        assert_eq!(bare_host("Main.Activity"), None);
        assert_eq!(bare_host("index.android.bundle"), None);
        assert!(is_local("127.0.0.1") && is_local("10.0.2.2") && !is_local("8.8.8.8"));
    }
}
