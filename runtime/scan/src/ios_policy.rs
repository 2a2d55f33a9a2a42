//! iOS App Transport Security, from each `Info.plist` of an app (the app's
//! and its extensions'): arbitrary loads, per-domain exceptions (insecure
//! HTTP, minimum TLS version, forward secrecy) and pinned domains. Mapped
//! to MASVS-NETWORK-1 and -2.

use crate::property_list::{Leaf, Scalar};
use crate::report::{Finding, Location, Severity};

const ATS: &str = "NSAppTransportSecurity";

/// One domain exception.
#[derive(Clone, Debug)]
pub struct Exception {
    /// The domain, lowercased.
    pub domain: String,
    /// `NSIncludesSubdomains`.
    pub subdomains: bool,
    /// `NSExceptionAllowsInsecureHTTPLoads` (or the temporary variant).
    pub insecure_http: bool,
}

/// The ATS settings of one `Info.plist`.
#[derive(Clone, Debug, Default)]
pub struct Ats {
    /// Path of the plist.
    pub file: String,
    /// `CFBundleIdentifier`.
    pub bundle_id: Option<String>,
    /// `NSAllowsArbitraryLoads`.
    pub arbitrary_loads: bool,
    /// Domain exceptions.
    pub exceptions: Vec<Exception>,
    /// Findings of the plist itself.
    pub findings: Vec<Finding>,
}

fn bool_at(leaves: &[Leaf], path: &[&str]) -> Option<bool> {
    leaves.iter().find_map(|l| {
        (l.path.len() == path.len() && l.path.iter().zip(path).all(|(a, b)| a == b))
            .then_some(&l.value)
            .and_then(|v| match v {
                Scalar::Bool(b) => Some(*b),
                Scalar::Str(s) => match s.as_str() {
                    "YES" | "true" => Some(true),
                    "NO" | "false" => Some(false),
                    _ => None,
                },
                Scalar::Int(i) => Some(*i != 0),
                Scalar::Other => None,
            })
    })
}

/// Read ATS out of an `Info.plist`'s leaves.
pub fn read(leaves: &[Leaf], file: &str) -> Ats {
    let mut ats = Ats {
        file: file.to_owned(),
        ..Ats::default()
    };
    ats.bundle_id = leaves.iter().find_map(|l| match (&l.path[..], &l.value) {
        ([k], Scalar::Str(s)) if k == "CFBundleIdentifier" => Some(s.clone()),
        _ => None,
    });
    let loc = |what: String| Location::new(file, None, what);
    let mut finding = |id: &str, severity, masvs, title: String, what: String, detail: &str| {
        ats.findings.push(Finding {
            id: id.into(),
            severity,
            masvs,
            title,
            location: loc(what),
            also: 0,
            detail: detail.into(),
        });
    };
    ats.arbitrary_loads = bool_at(leaves, &[ATS, "NSAllowsArbitraryLoads"]) == Some(true);
    if ats.arbitrary_loads {
        finding(
            "ios.ats.arbitrary_loads",
            Severity::High,
            "MASVS-NETWORK-1",
            "App Transport Security is off: NSAllowsArbitraryLoads is true".into(),
            format!("{ATS}.NSAllowsArbitraryLoads"),
            "the app may load anything over plain HTTP and over weak TLS. Remove the key; add a narrow NSExceptionDomains entry where a server truly cannot do TLS.",
        );
    }
    for (key, id, what) in [
        (
            "NSAllowsArbitraryLoadsInWebContent",
            "ios.ats.arbitrary_loads_web",
            "web views",
        ),
        (
            "NSAllowsArbitraryLoadsForMedia",
            "ios.ats.arbitrary_loads_media",
            "AV Foundation media",
        ),
    ] {
        if bool_at(leaves, &[ATS, key]) == Some(true) {
            finding(
                id,
                Severity::Medium,
                "MASVS-NETWORK-1",
                format!("ATS is off for {what}: {key} is true"),
                format!("{ATS}.{key}"),
                "content loaded there may come over plain HTTP.",
            );
        }
    }
    if bool_at(leaves, &[ATS, "NSAllowsLocalNetworking"]) == Some(true) {
        finding(
            "ios.ats.local_networking",
            Severity::Info,
            "MASVS-NETWORK-1",
            "plain HTTP to local network hosts is allowed (NSAllowsLocalNetworking)".into(),
            format!("{ATS}.NSAllowsLocalNetworking"),
            "limited to unqualified names and .local hosts.",
        );
    }
    let mut domains: Vec<String> = leaves
        .iter()
        .filter(|l| l.path.len() >= 4 && l.path[0] == ATS && l.path[1] == "NSExceptionDomains")
        .map(|l| l.path[2].clone())
        .collect();
    domains.dedup();
    for d in domains {
        let key = |k: &str| bool_at(leaves, &[ATS, "NSExceptionDomains", &d, k]);
        let insecure = key("NSExceptionAllowsInsecureHTTPLoads") == Some(true)
            || key("NSTemporaryExceptionAllowsInsecureHTTPLoads") == Some(true);
        let subdomains = key("NSIncludesSubdomains") == Some(true);
        let path = |k: &str| format!("{ATS}.NSExceptionDomains.{d}.{k}");
        if insecure {
            finding(
                "ios.ats.insecure_http_domain",
                Severity::Medium,
                "MASVS-NETWORK-1",
                format!(
                    "plain HTTP is allowed to {d}{}",
                    if subdomains {
                        " and its subdomains"
                    } else {
                        ""
                    }
                ),
                path("NSExceptionAllowsInsecureHTTPLoads"),
                "a per-domain exception: anything sent there can be read and changed on the way. Serve the domain over TLS and remove the exception.",
            );
        }
        let min_tls = leaves.iter().find_map(|l| {
            (l.path.len() == 4
                && l.path[2] == d
                && (l.path[3] == "NSExceptionMinimumTLSVersion"
                    || l.path[3] == "NSTemporaryExceptionMinimumTLSVersion"))
                .then_some(&l.value)
                .and_then(|v| match v {
                    Scalar::Str(s) => Some(s.clone()),
                    _ => None,
                })
        });
        if let Some(v) = min_tls.filter(|v| v == "TLSv1.0" || v == "TLSv1.1") {
            finding(
                "ios.ats.min_tls",
                Severity::Medium,
                "MASVS-NETWORK-1",
                format!("{d} may be reached over {v}"),
                path("NSExceptionMinimumTLSVersion"),
                "TLS 1.0 and 1.1 are deprecated (RFC 8996). Require TLSv1.2 or later.",
            );
        }
        if key("NSExceptionRequiresForwardSecrecy") == Some(false) {
            finding(
                "ios.ats.no_forward_secrecy",
                Severity::Low,
                "MASVS-NETWORK-1",
                format!("{d} may be reached without forward secrecy"),
                path("NSExceptionRequiresForwardSecrecy"),
                "a key stolen later decrypts recorded traffic.",
            );
        }
        ats.exceptions.push(Exception {
            domain: d.to_ascii_lowercase(),
            subdomains,
            insecure_http: insecure,
        });
    }
    let mut pinned: Vec<String> = leaves
        .iter()
        .filter(|l| l.path.len() >= 3 && l.path[0] == ATS && l.path[1] == "NSPinnedDomains")
        .map(|l| l.path[2].clone())
        .collect();
    pinned.dedup();
    for d in pinned {
        finding(
            "ios.ats.pinned_domain",
            Severity::Info,
            "MASVS-NETWORK-2",
            format!("{d} is pinned (NSPinnedDomains)"),
            format!("{ATS}.NSPinnedDomains.{d}"),
            "certificate pinning is in force for this domain.",
        );
    }
    ats
}

impl Ats {
    /// Whether ATS lets the app reach `host` over plain HTTP.
    pub fn cleartext_permitted(&self, host: &str) -> bool {
        let exception = self
            .exceptions
            .iter()
            .filter(|e| {
                host == e.domain || (e.subdomains && host.ends_with(&format!(".{}", e.domain)))
            })
            .max_by_key(|e| e.domain.len());
        match exception {
            Some(e) => e.insecure_http || self.arbitrary_loads,
            None => self.arbitrary_loads,
        }
    }
}
