//! The upgrade request: handshake authentication, Origin, and whether
//! compression is negotiated. Every refusal must come before the upgrade:
//! a `101` is a failure whatever follows it.

use crate::report::{Check, Spec, Status};
use crate::target::{Endpoint, Request, Upgrade};
use crate::tokens::{Derived, Jwt};

const AUTH: &str = "Handshake authentication";
const ORIGIN: &str = "Origin";
const AUTH_REFS: &str = "OWASP WebSocket CS: Authentication and Authorization; ASVS 5.0 4.4.3";

/// `auth.control`.
pub const CONTROL: Spec = Spec {
    id: "auth.control",
    group: AUTH,
    title: "the unmodified --token (and --origin) is accepted: the control for what follows",
    refs: "control, no requirement",
};
/// `auth.no_token`.
pub const NO_TOKEN: Spec = Spec {
    id: "auth.no_token",
    group: AUTH,
    title: "an upgrade without a token is refused before the upgrade",
    refs: AUTH_REFS,
};
/// `auth.garbage`.
pub const GARBAGE: Spec = Spec {
    id: "auth.garbage",
    group: AUTH,
    title: "a token that is not a JWT is refused before the upgrade",
    refs: "OWASP WebSocket CS: Authentication and Authorization; ASVS 5.0 4.4.3, 9.1.1",
};
/// `auth.alg_none`.
pub const ALG_NONE: Spec = Spec {
    id: "auth.alg_none",
    group: AUTH,
    title: "the token re-encoded with alg: none and no signature is refused",
    refs: "OWASP WebSocket CS: Authentication and Authorization; ASVS 5.0 9.1.2",
};
/// `auth.tampered_signature`.
pub const TAMPERED: Spec = Spec {
    id: "auth.tampered_signature",
    group: AUTH,
    title: "the token with a tampered signature is refused",
    refs: "OWASP WebSocket CS: Authentication and Authorization; ASVS 5.0 9.1.1",
};
/// `auth.expired`.
pub const EXPIRED: Spec = Spec {
    id: "auth.expired",
    group: AUTH,
    title: "the token re-encoded as expired is refused",
    refs: "OWASP WebSocket CS: Session Management; ASVS 5.0 9.2.1, 9.1.1",
};
/// `auth.wrong_audience`.
pub const WRONG_AUDIENCE: Spec = Spec {
    id: "auth.wrong_audience",
    group: AUTH,
    title: "the token re-encoded for another audience is refused",
    refs: "OWASP WebSocket CS: Authentication and Authorization; ASVS 5.0 9.2.3, 9.1.1",
};
const ORIGIN_REFS: &str =
    "OWASP WebSocket CS: Origin Header Validation (CSWSH); ASVS 5.0 4.4.2; CWE-1385";
/// `origin.foreign`.
pub const FOREIGN: Spec = Spec {
    id: "origin.foreign",
    group: ORIGIN,
    title: "a foreign Origin is refused",
    refs: ORIGIN_REFS,
};
/// `origin.null`.
pub const NULL: Spec = Spec {
    id: "origin.null",
    group: ORIGIN,
    title: "Origin: null is refused",
    refs: ORIGIN_REFS,
};
/// `origin.lookalike`.
pub const LOOKALIKE: Spec = Spec {
    id: "origin.lookalike",
    group: ORIGIN,
    title: "a look-alike of the --origin (its host as a prefix of another) is refused",
    refs: ORIGIN_REFS,
};
/// `compression.permessage_deflate`.
pub const COMPRESSION: Spec = Spec {
    id: "compression.permessage_deflate",
    group: "Compression",
    title: "permessage-deflate is not negotiated",
    refs: "OWASP WebSocket CS: WebSocket Protocol Configuration (compression security)",
};

/// Every check of this module, in order.
pub const SPECS: [Spec; 11] = [
    CONTROL,
    NO_TOKEN,
    GARBAGE,
    ALG_NONE,
    TAMPERED,
    EXPIRED,
    WRONG_AUDIENCE,
    FOREIGN,
    NULL,
    LOOKALIKE,
    COMPRESSION,
];

/// A foreign Origin.
pub const FOREIGN_ORIGIN: &str = "https://sluice-probe.invalid";
/// What the garbage token is.
pub const GARBAGE_TOKEN: &str = "sluice-probe-garbage-token";
/// The offered extension.
pub const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// How a token is derived from `--token`.
type Derive = fn(&Jwt) -> Derived;

/// The base request every check varies: `--token` and `--origin`.
#[derive(Clone, Copy, Debug)]
pub struct Base<'a> {
    /// `--token`.
    pub token: Option<&'a str>,
    /// `--origin`.
    pub origin: Option<&'a str>,
}

impl<'a> Base<'a> {
    /// As a request.
    pub fn request(self) -> Request<'a> {
        Request {
            token: self.token,
            origin: self.origin,
            extensions: None,
        }
    }

    fn describe(self) -> String {
        let mut s = String::from("an upgrade request");
        match self.token {
            Some(_) => s.push_str(" with the --token as Authorization: Bearer"),
            None => s.push_str(" without a token"),
        }
        if let Some(o) = self.origin {
            s.push_str(&format!(" and Origin: {o}"));
        }
        s
    }
}

/// The outcome of the control upgrade.
#[derive(Clone, Debug)]
pub struct Control {
    /// It answered HTTP at all.
    pub reachable: bool,
    /// It upgraded (101).
    pub accepted: bool,
    /// What came back.
    pub summary: String,
}

/// Upgrade with the base request: does the endpoint answer, and accept?
pub async fn control(endpoint: &Endpoint, base: Base<'_>) -> Control {
    let answer = endpoint.upgrade(&base.request()).await;
    Control {
        reachable: answer.status().is_some(),
        accepted: matches!(answer, Upgrade::Open(..)),
        summary: answer.summary(),
    }
}

/// The authentication, Origin and compression checks.
pub async fn run(endpoint: &Endpoint, base: Base<'_>, control: &Control) -> Vec<Check> {
    let mut checks = Vec::new();
    let token_given = base.token.is_some();
    checks.push(match (token_given, control.accepted) {
        (true, true) => Check::new(CONTROL, Status::Pass, base.describe(), &control.summary),
        (true, false) => Check::new(
            CONTROL,
            Status::CouldNotTell,
            base.describe(),
            &control.summary,
        )
        .detail(
            "the unmodified token was refused too, so the refusals below say less than \
                 they seem: check --token, --origin and the URL",
        ),
        (false, _) => Check::new(
            CONTROL,
            Status::NotApplicable,
            base.describe(),
            &control.summary,
        )
        .detail("no --token given: the checks derived from it do not run"),
    });

    let no_token = Base {
        token: None,
        ..base
    };
    checks.push(refusal(endpoint, NO_TOKEN, no_token, None, control, false).await);
    let garbage = Base {
        token: Some(GARBAGE_TOKEN),
        ..base
    };
    checks.push(
        refusal(
            endpoint,
            GARBAGE,
            garbage,
            Some(format!("token {GARBAGE_TOKEN:?}")),
            control,
            false,
        )
        .await,
    );

    let jwt = base.token.and_then(Jwt::parse);
    let derived: [(Spec, Derive); 4] = [
        (ALG_NONE, Jwt::alg_none),
        (TAMPERED, Jwt::tampered_signature),
        (EXPIRED, |j| j.expired(now())),
        (WRONG_AUDIENCE, Jwt::wrong_audience),
    ];
    for (spec, derive) in derived {
        let Some(jwt) = &jwt else {
            let why = if token_given {
                "--token is not a JWT (header.claims.signature, base64url JSON)"
            } else {
                "derived from --token, which was not given"
            };
            checks.push(Check::skipped(spec, Status::NotApplicable, why));
            continue;
        };
        let d = derive(jwt);
        let req = Base {
            token: Some(&d.token),
            ..base
        };
        checks.push(refusal(endpoint, spec, req, Some(d.how), control, true).await);
    }

    let lookalike = base.origin.and_then(lookalike_origin);
    for (spec, origin) in [
        (FOREIGN, Some(FOREIGN_ORIGIN.to_owned())),
        (NULL, Some("null".to_owned())),
        (LOOKALIKE, lookalike),
    ] {
        let Some(origin) = origin else {
            checks.push(Check::skipped(
                spec,
                Status::NotApplicable,
                "derived from --origin, which was not given (or is not scheme://host[:port])",
            ));
            continue;
        };
        checks.push(origin_check(endpoint, spec, base, &origin, control).await);
    }
    checks.push(compression(endpoint, base).await);
    checks
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `https://app.example.com:8443` -> `https://app.example.com.sluice-probe.invalid:8443`:
/// what a prefix or `contains` match lets through.
pub fn lookalike_origin(origin: &str) -> Option<String> {
    let (scheme, rest) = origin.split_once("://")?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => (h, Some(p)),
        _ => (rest, None),
    };
    Some(match port {
        Some(p) => format!("{scheme}://{host}.sluice-probe.invalid:{p}"),
        None => format!("{scheme}://{host}.sluice-probe.invalid"),
    })
}

/// Send `req` and expect a refusal before the upgrade. `derived`: the
/// token was derived from `--token`, so the verdict needs the control.
async fn refusal(
    endpoint: &Endpoint,
    spec: Spec,
    req: Base<'_>,
    how: Option<String>,
    control: &Control,
    derived: bool,
) -> Check {
    let mut sent = req.describe();
    if let Some(how) = how {
        sent = format!("{}; {how}", sent.replace("the --token", "a token"));
    }
    if !control.reachable {
        return Check::new(spec, Status::CouldNotTell, sent, "not sent").detail(format!(
            "the control upgrade got no HTTP answer ({})",
            control.summary
        ));
    }
    let answer = endpoint.upgrade(&req.request()).await;
    let mut check = judge(spec, sent, &answer);
    if derived && check.status == Status::Pass && !control.accepted {
        check.status = Status::CouldNotTell;
        check.detail = "refused, but so was the unmodified --token (see auth.control)".into();
    }
    check
}

/// A refusal is an HTTP status that says "no" (401, 403, other 4xx but
/// 404 and 429) or a close without an answer.
fn judge(spec: Spec, sent: String, answer: &Upgrade) -> Check {
    let got = answer.summary();
    match answer {
        Upgrade::Open(..) => Check::new(spec, Status::Fail, sent, got).detail(
            "upgraded: anyone can open this connection. Verify the token (signature, \
             algorithm allow-list, exp/nbf, iss, aud) before answering 101 (Sluice does, \
             per tenant: [tenants.<id>.auth])",
        ),
        Upgrade::Refused(head) => match head.status {
            404 => Check::new(spec, Status::CouldNotTell, sent, got)
                .detail("404: the path is unknown, so the refusal says nothing about this check"),
            429 => Check::new(spec, Status::CouldNotTell, sent, got)
                .detail("rate limited: run the probe again later"),
            400..=499 => {
                Check::new(spec, Status::Pass, sent, got).detail("refused before the upgrade")
            }
            _ => Check::new(spec, Status::CouldNotTell, sent, got)
                .detail("neither an upgrade nor a refusal (4xx)"),
        },
        Upgrade::Failed(why) if why.starts_with("no answer") || why.contains("timed out") => {
            Check::new(spec, Status::CouldNotTell, sent, got)
        }
        Upgrade::Failed(why) if why.contains("closed") => {
            Check::new(spec, Status::Pass, sent, got).detail("closed without upgrading")
        }
        Upgrade::Failed(_) => Check::new(spec, Status::CouldNotTell, sent, got),
    }
}

async fn origin_check(
    endpoint: &Endpoint,
    spec: Spec,
    base: Base<'_>,
    origin: &str,
    control: &Control,
) -> Check {
    let req = Base {
        origin: Some(origin),
        ..base
    };
    let sent = req.describe();
    if !control.reachable {
        return Check::new(spec, Status::CouldNotTell, sent, "not sent").detail(format!(
            "the control upgrade got no HTTP answer ({})",
            control.summary
        ));
    }
    let answer = endpoint.upgrade(&req.request()).await;
    let mut check = judge(spec, sent, &answer);
    match answer.status() {
        Some(101) => {
            check.detail =
                "a page on that origin can open this connection from a victim's browser \
                (cross-site WebSocket hijacking). Compare the Origin, when present, with an exact \
                allow-list (Sluice: tenants.<id>.origins; require_origin for browser-only tenants)"
                    .into();
        }
        Some(401) if !control.accepted => {
            check.status = Status::CouldNotTell;
            check.detail =
                "refused for the missing or refused token: give a working --token to see the Origin \
                 check alone"
                    .into();
        }
        _ => {}
    }
    check
}

async fn compression(endpoint: &Endpoint, base: Base<'_>) -> Check {
    let sent = format!(
        "{}, offering Sec-WebSocket-Extensions: {DEFLATE_OFFER}",
        base.describe()
    );
    let answer = endpoint
        .upgrade(&Request {
            extensions: Some(DEFLATE_OFFER),
            ..base.request()
        })
        .await;
    match &answer {
        Upgrade::Open(head, _) => match head.header("sec-websocket-extensions") {
            Some(ext) if ext.contains("permessage-deflate") => Check::new(
                COMPRESSION,
                Status::Note,
                sent,
                format!("{}; Sec-WebSocket-Extensions: {ext}", head.status_line),
            )
            .detail(
                "compression is negotiated: when a message mixes a secret with data an attacker \
                 controls, its compressed size leaks the secret (CRIME/BREACH), and a small frame \
                 can inflate to a large one (decompression bomb). Disable it unless needed, or \
                 bound inflated sizes and never compress secrets with attacker data",
            ),
            _ => Check::new(
                COMPRESSION,
                Status::Pass,
                sent,
                format!("{} without extensions", head.status_line),
            ),
        },
        _ => Check::new(COMPRESSION, Status::CouldNotTell, sent, answer.summary())
            .detail("needs an upgrade the endpoint accepts"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_alike_origins_keep_scheme_and_port() {
        assert_eq!(
            lookalike_origin("https://app.example.com").as_deref(),
            Some("https://app.example.com.sluice-probe.invalid")
        );
        assert_eq!(
            lookalike_origin("https://localhost:8443").as_deref(),
            Some("https://localhost.sluice-probe.invalid:8443")
        );
        assert_eq!(lookalike_origin("null"), None);
        assert_eq!(lookalike_origin("https://a.example/path"), None);
    }
}
