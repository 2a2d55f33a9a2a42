//! Android's transport policy: `android:usesCleartextTraffic` and the
//! target SDK in the manifest, and the network security configuration
//! (`res/xml/*.xml` whose root is `<network-security-config>`): cleartext
//! per domain, user-installed CAs trusted, certificate pins and their
//! expiry. Mapped to MASVS-NETWORK-1 (secure traffic) and -2 (pinning).
//!
//! The effective rule for a host follows the platform's: the most specific
//! `<domain-config>` (nested ones inherit from their parent), else
//! `<base-config>`, else the default — cleartext permitted for apps that
//! target API 27 or lower, refused from API 28 on; `usesCleartextTraffic`
//! counts only when there is no network security configuration.

use crate::axml::{Document, Element};
use crate::report::{Finding, Location, Severity};

const USES_CLEARTEXT: u32 = 0x0101_04ec;
const NETWORK_SECURITY_CONFIG: u32 = 0x0101_0527;
const DEBUGGABLE: u32 = 0x0101_000f;
const TARGET_SDK: u32 = 0x0101_0270;
const MIN_SDK: u32 = 0x0101_020c;
/// The first API level whose default refuses cleartext.
pub const CLEARTEXT_OFF_FROM_API: i64 = 28;

/// What the manifest says.
#[derive(Clone, Debug, Default)]
pub struct Manifest {
    /// The `package` attribute.
    pub package: Option<String>,
    /// `uses-sdk android:targetSdkVersion`.
    pub target_sdk: Option<i64>,
    /// `uses-sdk android:minSdkVersion`.
    pub min_sdk: Option<i64>,
    /// `application android:usesCleartextTraffic`, where it is set.
    pub uses_cleartext: Option<(bool, Location)>,
    /// Whether `android:networkSecurityConfig` is set.
    pub has_network_config: bool,
    /// `application android:debuggable="true"`, where.
    pub debuggable: Option<Location>,
    /// Where the manifest is.
    pub file: String,
}

/// Read the facts out of a parsed manifest.
pub fn manifest(doc: &Document, file: &str) -> Manifest {
    let root = &doc.root;
    let at = |e: &Element, what: &str| Location::new(file, Some(e.offset), what);
    let mut m = Manifest {
        package: root
            .attrs
            .iter()
            .find(|a| a.name == "package")
            .and_then(|a| a.value.as_str().map(str::to_owned)),
        file: file.to_owned(),
        ..Manifest::default()
    };
    let mut sdks = Vec::new();
    root.find_all("uses-sdk", &mut sdks);
    if let Some(sdk) = sdks.first() {
        m.target_sdk = sdk
            .attr(TARGET_SDK, "targetSdkVersion")
            .and_then(|a| a.value.as_int());
        m.min_sdk = sdk
            .attr(MIN_SDK, "minSdkVersion")
            .and_then(|a| a.value.as_int());
    }
    let mut apps = Vec::new();
    root.find_all("application", &mut apps);
    if let Some(app) = apps.first() {
        m.uses_cleartext = app
            .attr(USES_CLEARTEXT, "usesCleartextTraffic")
            .and_then(|a| a.value.as_bool())
            .map(|v| {
                (
                    v,
                    at(
                        app,
                        &format!("<application android:usesCleartextTraffic=\"{v}\">"),
                    ),
                )
            });
        m.has_network_config = app
            .attr(NETWORK_SECURITY_CONFIG, "networkSecurityConfig")
            .is_some();
        m.debuggable = app
            .attr(DEBUGGABLE, "debuggable")
            .and_then(|a| a.value.as_bool())
            .filter(|v| *v)
            .map(|_| at(app, "<application android:debuggable=\"true\">"));
    }
    m
}

/// Certificate pins of a domain.
#[derive(Clone, Debug)]
pub struct Pins {
    /// `expiration="YYYY-MM-DD"`, if set.
    pub expiration: Option<String>,
    /// How many `<pin>`s.
    pub count: usize,
    /// Where.
    pub location: Location,
}

/// One `<domain>` with the rules in force for it.
#[derive(Clone, Debug)]
pub struct DomainRule {
    /// The domain, lowercased.
    pub domain: String,
    /// `includeSubdomains="true"`.
    pub subdomains: bool,
    /// `cleartextTrafficPermitted`, inherited from enclosing domain-configs.
    pub cleartext: Option<bool>,
    /// Whether its trust anchors include user-installed CAs (inherited).
    pub user_certs: bool,
    /// Its pins, if any.
    pub pins: Option<Pins>,
    /// Where its `<domain-config>` starts.
    pub location: Location,
}

/// One network security configuration file.
#[derive(Clone, Debug, Default)]
pub struct NetworkConfig {
    /// Path in the package.
    pub file: String,
    /// `<base-config cleartextTrafficPermitted>`.
    pub base_cleartext: Option<(bool, Location)>,
    /// `<base-config>` trusting user CAs.
    pub base_user_certs: Option<Location>,
    /// `<debug-overrides>` trusting user CAs (debuggable builds only).
    pub debug_user_certs: Option<Location>,
    /// Every domain, flattened with inherited rules.
    pub domains: Vec<DomainRule>,
}

fn user_certs(e: &Element) -> bool {
    e.children
        .iter()
        .filter(|c| c.name == "trust-anchors")
        .flat_map(|t| t.children.iter())
        .any(|c| {
            c.name == "certificates"
                && c.attr(0, "src")
                    .and_then(|a| a.value.as_str())
                    .is_some_and(|s| s.trim() == "user")
        })
}

fn cleartext_attr(e: &Element) -> Option<bool> {
    e.attr(0, "cleartextTrafficPermitted")
        .and_then(|a| a.value.as_bool())
}

/// Read a `<network-security-config>` document.
pub fn network_config(root: &Element, file: &str) -> NetworkConfig {
    let mut cfg = NetworkConfig {
        file: file.to_owned(),
        ..NetworkConfig::default()
    };
    let at = |e: &Element, what: &str| Location::new(file, Some(e.offset), what);
    for child in &root.children {
        match child.name.as_str() {
            "base-config" => {
                cfg.base_cleartext = cleartext_attr(child).map(|v| {
                    (
                        v,
                        at(
                            child,
                            &format!("<base-config cleartextTrafficPermitted=\"{v}\">"),
                        ),
                    )
                });
                if user_certs(child) {
                    cfg.base_user_certs = Some(at(
                        child,
                        "<base-config><trust-anchors><certificates src=\"user\">",
                    ));
                }
            }
            "debug-overrides" if user_certs(child) => {
                cfg.debug_user_certs = Some(at(
                    child,
                    "<debug-overrides><trust-anchors><certificates src=\"user\">",
                ));
            }
            "domain-config" => domain_config(child, None, false, file, &mut cfg.domains),
            _ => {}
        }
    }
    cfg
}

fn domain_config(
    e: &Element,
    parent_cleartext: Option<bool>,
    parent_user: bool,
    file: &str,
    out: &mut Vec<DomainRule>,
) {
    let cleartext = cleartext_attr(e).or(parent_cleartext);
    let user = user_certs(e) || parent_user;
    let pins = e
        .children
        .iter()
        .find(|c| c.name == "pin-set")
        .map(|p| Pins {
            expiration: p
                .attr(0, "expiration")
                .and_then(|a| a.value.as_str().map(|s| s.trim().to_owned())),
            count: p.children.iter().filter(|c| c.name == "pin").count(),
            location: Location::new(file, Some(p.offset), "<pin-set>"),
        });
    for d in e.children.iter().filter(|c| c.name == "domain") {
        out.push(DomainRule {
            domain: d.text.trim().to_ascii_lowercase(),
            subdomains: d
                .attr(0, "includeSubdomains")
                .and_then(|a| a.value.as_bool())
                .unwrap_or(false),
            cleartext,
            user_certs: user,
            pins: pins.clone(),
            location: Location::new(
                file,
                Some(e.offset),
                format!("<domain-config> for {}", d.text.trim()),
            ),
        });
    }
    for nested in e.children.iter().filter(|c| c.name == "domain-config") {
        domain_config(nested, cleartext, user, file, out);
    }
}

/// The manifest and every network security configuration of an app.
#[derive(Clone, Debug, Default)]
pub struct AndroidPolicy {
    /// The manifest, if it was read.
    pub manifest: Option<Manifest>,
    /// The network security configurations found.
    pub configs: Vec<NetworkConfig>,
}

impl AndroidPolicy {
    fn default_cleartext(&self) -> Option<bool> {
        let m = self.manifest.as_ref()?;
        if self.configs.is_empty()
            && let Some((v, _)) = &m.uses_cleartext
        {
            return Some(*v);
        }
        m.target_sdk.map(|t| t < CLEARTEXT_OFF_FROM_API)
    }

    fn rule_for(&self, host: &str) -> Option<&DomainRule> {
        self.configs
            .iter()
            .flat_map(|c| c.domains.iter())
            .filter(|r| {
                host == r.domain || (r.subdomains && host.ends_with(&format!(".{}", r.domain)))
            })
            .max_by_key(|r| (host == r.domain, r.domain.len()))
    }

    /// Whether the platform lets the app reach `host` in plaintext (`None`:
    /// cannot tell, e.g. no manifest or no target SDK).
    pub fn cleartext_permitted(&self, host: &str) -> Option<bool> {
        if let Some(rule) = self.rule_for(host)
            && let Some(v) = rule.cleartext
        {
            return Some(v);
        }
        if let Some((v, _)) = self.configs.iter().find_map(|c| c.base_cleartext.as_ref()) {
            return Some(*v);
        }
        self.default_cleartext()
    }

    /// The findings of the policy itself; `today` is `YYYY-MM-DD`.
    pub fn findings(&self, today: &str) -> Vec<Finding> {
        let mut out = Vec::new();
        let Some(m) = &self.manifest else {
            return out;
        };
        let base = self.configs.iter().find_map(|c| c.base_cleartext.clone());
        let source = match (&base, &m.uses_cleartext, self.configs.is_empty()) {
            (Some((true, loc)), _, _) => Some((
                loc.clone(),
                "the network security configuration's base-config permits cleartext for every host"
                    .to_owned(),
            )),
            (None, Some((true, loc)), true) => Some((
                loc.clone(),
                "usesCleartextTraffic=\"true\" permits cleartext for every host".to_owned(),
            )),
            (None, None, _) if m.target_sdk.is_some_and(|t| t < CLEARTEXT_OFF_FROM_API) => Some((
                Location::new(
                    &m.file,
                    None,
                    format!(
                        "<uses-sdk android:targetSdkVersion=\"{}\">",
                        m.target_sdk.unwrap_or(0)
                    ),
                ),
                format!(
                    "the app targets API {} (< 28), whose default permits cleartext for every host",
                    m.target_sdk.unwrap_or(0)
                ),
            )),
            _ => None,
        };
        if let Some((location, why)) = source {
            out.push(Finding {
                id: "android.cleartext_permitted".into(),
                severity: Severity::High,
                masvs: "MASVS-NETWORK-1",
                title: "cleartext traffic is permitted to every host".into(),
                location,
                also: 0,
                detail: format!("{why}: on café and carrier networks the traffic can be read and changed. Set cleartextTrafficPermitted=\"false\" in <base-config> (and target API 28+)."),
            });
        }
        for c in &self.configs {
            if let Some(loc) = &c.base_user_certs {
                out.push(user_cert_finding(loc.clone(), "every host"));
            }
            if let Some(loc) = &c.debug_user_certs {
                out.push(Finding {
                    id: "android.nsc.debug_user_certificates".into(),
                    severity: Severity::Info,
                    masvs: "MASVS-NETWORK-1",
                    title: "debug builds trust user-installed CAs".into(),
                    location: loc.clone(),
                    also: 0,
                    detail: "<debug-overrides> apply only when android:debuggable is true: fine for testing, as long as release builds are not debuggable.".into(),
                });
            }
            for r in &c.domains {
                if r.cleartext == Some(true) {
                    out.push(Finding {
                        id: "android.nsc.cleartext_domain".into(),
                        severity: Severity::Medium,
                        masvs: "MASVS-NETWORK-1",
                        title: format!("cleartext traffic is permitted to {}{}", r.domain, if r.subdomains { " and its subdomains" } else { "" }),
                        location: r.location.clone(),
                        also: 0,
                        detail: "a per-domain exception: anything sent there can be read and changed on the way. Serve the domain over TLS and remove the exception.".into(),
                    });
                }
                if r.user_certs {
                    out.push(user_cert_finding(r.location.clone(), &r.domain));
                }
                if let Some(p) = &r.pins {
                    match &p.expiration {
                        Some(exp) if exp.as_str() < today => out.push(Finding {
                            id: "android.nsc.pins_expired".into(),
                            severity: Severity::Medium,
                            masvs: "MASVS-NETWORK-2",
                            title: format!("the certificate pins for {} expired on {exp}", r.domain),
                            location: p.location.clone(),
                            also: 0,
                            detail: "after its expiration date a pin-set is not enforced: the domain is no longer pinned. Renew the pins and the date.".into(),
                        }),
                        _ => out.push(Finding {
                            id: "android.nsc.pins".into(),
                            severity: Severity::Info,
                            masvs: "MASVS-NETWORK-2",
                            title: format!("{} pin(s) for {}{}", p.count, r.domain, p.expiration.as_ref().map(|e| format!(", until {e}")).unwrap_or_default()),
                            location: p.location.clone(),
                            also: 0,
                            detail: "certificate pinning is in force for this domain.".into(),
                        }),
                    }
                }
            }
        }
        if !self
            .configs
            .iter()
            .flat_map(|c| &c.domains)
            .any(|r| r.pins.is_some())
        {
            out.push(Finding {
                id: "android.no_pinning".into(),
                severity: Severity::Info,
                masvs: "MASVS-NETWORK-2",
                title: "no certificate pinning in the network security configuration".into(),
                location: Location::new(&m.file, None, "<application>"),
                also: 0,
                detail: "pinning (a <pin-set> per domain) is MASVS-NETWORK-2; it may also be done in code (OkHttp's CertificatePinner), which this scan does not see.".into(),
            });
        }
        if let Some(loc) = &m.debuggable {
            out.push(Finding {
                id: "android.debuggable".into(),
                severity: Severity::Medium,
                masvs: "MASVS-RESILIENCE-4",
                title: "the app is debuggable".into(),
                location: loc.clone(),
                also: 0,
                detail: "a debuggable build lets anyone with the device attach a debugger and read the app's memory, and turns on <debug-overrides>. Ship a release build.".into(),
            });
        }
        out
    }
}

fn user_cert_finding(location: Location, scope: &str) -> Finding {
    Finding {
        id: "android.nsc.user_certificates".into(),
        severity: Severity::High,
        masvs: "MASVS-NETWORK-1",
        title: format!("user-installed CAs are trusted for {scope}"),
        location,
        also: 0,
        detail: "any CA a user (or an MDM profile, or malware that talks the user into it) installs can then intercept the app's TLS. Trust system CAs only outside <debug-overrides>.".into(),
    }
}
