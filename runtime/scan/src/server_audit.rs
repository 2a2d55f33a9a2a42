//! `--probe`: the server side. Every `wss://` endpoint the app carries (or
//! those whose host `--allow` names) is audited with `sluice probe`'s
//! checks, all at once, and each failed check becomes a finding beside the
//! app's own: "the app talks to X" and "X accepts connections without a
//! token" in one report. `ws://` endpoints are not probed: the probe would
//! send the token in plaintext, and the app's use of them is already a
//! finding.

use std::path::PathBuf;

use futures_util::future::join_all;
use sluice_probe::{ProbeArgs, Status};

use crate::report::{Finding, Location, Report, Severity, Transport};

/// Most endpoints probed in one scan; the rest are named in a finding.
pub const MAX_PROBED: usize = 16;

/// How to probe.
#[derive(Clone, Debug, Default)]
pub struct ProbeOptions {
    /// A token for every endpoint.
    pub token: Option<String>,
    /// Tokens for given hosts (`HOST` or `HOST:PORT`), overriding `token`.
    pub tokens_for: Vec<(String, String)>,
    /// CA certificates to trust instead of the web roots.
    pub ca: Option<PathBuf>,
    /// Only endpoints whose host (or `HOST:PORT`) matches one of these;
    /// `*.example.com` matches subdomains. Empty: every `wss://` endpoint.
    pub allow: Vec<String>,
    /// Seconds the probe's timeout checks wait.
    pub wait: u64,
}

fn matches(pattern: &str, host: &str, hostport: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    if let Some(suffix) = pattern.strip_prefix("*.") {
        host.ends_with(&format!(".{suffix}"))
    } else {
        pattern == host || pattern == hostport
    }
}

/// `host` and `host:port` of a `wss://` URL.
fn authority(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("wss://").or_else(|| {
        url.get(..6)
            .filter(|s| s.eq_ignore_ascii_case("wss://"))
            .map(|_| &url[6..])
    })?;
    let hostport = rest.split(['/', '?', '#']).next()?.to_ascii_lowercase();
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next()?.to_owned()
    } else {
        hostport.split(':').next()?.to_owned()
    };
    Some((host, hostport))
}

/// Probe the report's endpoints and join the results into it.
pub async fn probe(report: &mut Report, opts: &ProbeOptions) {
    let mut targets: Vec<String> = report
        .endpoints
        .iter()
        .flat_map(|h| h.urls.iter())
        .filter(|u| u.transport == Transport::Tls && u.scheme == "wss")
        .map(|u| {
            // Query and fragment are often filled in at run time.
            u.url.split(['?', '#']).next().unwrap_or(&u.url).to_owned()
        })
        .filter(|u| {
            authority(u).is_some_and(|(host, hp)| {
                opts.allow.is_empty() || opts.allow.iter().any(|p| matches(p, &host, &hp))
            })
        })
        .collect();
    targets.sort();
    targets.dedup();
    if targets.len() > MAX_PROBED {
        let rest = targets.split_off(MAX_PROBED);
        report.findings.push(Finding {
            id: "probe.not_probed".into(),
            severity: Severity::Info,
            masvs: "MASVS-NETWORK-1",
            title: format!("{} more wss:// endpoints were not probed", rest.len()),
            location: Location::new("(network)", None, rest.join(" ")),
            also: 0,
            detail: format!("at most {MAX_PROBED} endpoints are probed per scan: name the ones that matter with --allow."),
        });
    }
    let runs = targets.iter().map(|url| {
        let (host, hostport) = authority(url).unwrap_or_default();
        let token = opts
            .tokens_for
            .iter()
            .find(|(h, _)| matches(h, &host, &hostport))
            .map(|(_, t)| t.clone())
            .or_else(|| opts.token.clone());
        let args = ProbeArgs {
            url: url.clone(),
            token,
            origin: None,
            ca: opts.ca.clone(),
            active: false,
            json: true,
            wait: opts.wait,
        };
        async move { (args.url.clone(), sluice_probe::audit(&args).await) }
    });
    for (url, result) in join_all(runs).await {
        match result {
            Ok(probe) => {
                for c in probe.checks.iter().filter(|c| c.status == Status::Fail) {
                    let masvs = if c.id.starts_with("transport.") {
                        "MASVS-NETWORK-1"
                    } else if c.id.starts_with("auth.") || c.id.starts_with("origin.") {
                        "MASVS-AUTH-1"
                    } else {
                        "server (ASVS)"
                    };
                    report.findings.push(Finding {
                        id: format!("probe.{}", c.id),
                        severity: Severity::High,
                        masvs,
                        title: format!("{url}: {} — failed ({})", c.title, c.received),
                        location: Location::new("(network)", None, url.clone()),
                        also: 0,
                        detail: format!("covers {}. {}", c.refs, c.detail),
                    });
                }
                report.probes.push(probe);
            }
            Err(e) => report.findings.push(Finding {
                id: "probe.error".into(),
                severity: Severity::Info,
                masvs: "MASVS-NETWORK-1",
                title: format!("{url} could not be probed: {e:#}"),
                location: Location::new("(network)", None, url.clone()),
                also: 0,
                detail: String::new(),
            }),
        }
    }
    report.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_patterns_match_hosts_ports_and_subdomains() {
        assert!(matches(
            "api.example.com",
            "api.example.com",
            "api.example.com:443"
        ));
        assert!(matches("127.0.0.1:8443", "127.0.0.1", "127.0.0.1:8443"));
        assert!(!matches("127.0.0.1:8443", "127.0.0.1", "127.0.0.1:9000"));
        assert!(matches("*.example.com", "ws.example.com", "ws.example.com"));
        assert!(!matches("*.example.com", "example.com", "example.com"));
        assert_eq!(
            authority("wss://[::1]:9/ws?x=1"),
            Some(("::1".into(), "[::1]:9".into()))
        );
    }
}
