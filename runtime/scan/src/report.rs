//! The report: findings with a severity, the MASVS control they fall under,
//! and where in the package each was seen; the endpoints grouped by host;
//! what was read and what was not. Rendered one line per finding for
//! people, or as JSON for CI.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// How bad a finding is. Any [`Severity::High`] makes the exit status 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing; not a weakness by itself.
    Info,
    /// A weakness with limited reach, or one the platform may still block.
    Low,
    /// A weakness to fix before release.
    Medium,
    /// Fix before this package ships: the exit status is 1.
    High,
}

impl Severity {
    fn label(self) -> &'static str {
        match self {
            Self::High => "HIGH",
            Self::Medium => "MED ",
            Self::Low => "LOW ",
            Self::Info => "INFO",
        }
    }
}

/// Where something was seen: a file of the package (`a.apk!/classes.dex`
/// for an archive inside an archive), a byte offset in it when the format
/// has one, and what the offset points at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Location {
    /// Path inside the package.
    pub file: String,
    /// Byte offset in that file, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// What is there: `string_ids[12]`, `<application
    /// android:usesCleartextTraffic>`, `NSAppTransportSecurity.NSAllowsArbitraryLoads`.
    pub what: String,
}

impl Location {
    /// A location in `file`.
    pub fn new(file: &str, offset: Option<u64>, what: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            offset,
            what: what.into(),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(offset) = self.offset {
            write!(f, "@0x{offset:x}")?;
        }
        if !self.what.is_empty() {
            write!(f, " ({})", self.what)?;
        }
        Ok(())
    }
}

/// One finding.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// Stable identifier, what CI matches on: `endpoint.plaintext`,
    /// `android.cleartext_permitted`, `ios.ats.arbitrary_loads`,
    /// `secret.private_key`, `probe.<check id>`, ...
    pub id: String,
    /// How bad.
    pub severity: Severity,
    /// The OWASP MASVS v2 control: `MASVS-NETWORK-1`, `MASVS-NETWORK-2`,
    /// `MASVS-AUTH-1`, `MASVS-CRYPTO-2`.
    pub masvs: &'static str,
    /// What was found, in a sentence.
    pub title: String,
    /// Where (the first place; `also` counts the others).
    pub location: Location,
    /// How many more places carry the same thing.
    #[serde(skip_serializing_if = "is_zero")]
    pub also: usize,
    /// Why it matters and what to do.
    pub detail: String,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// How an endpoint is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// `https://`, `wss://`.
    Tls,
    /// `http://`, `ws://`.
    Plaintext,
    /// A bare host name: the scheme is decided at run time.
    Unknown,
}

/// One URL (or bare host) and every place it was seen.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointUrl {
    /// The URL as the app carries it (a bare host for [`Transport::Unknown`]).
    pub url: String,
    /// Its scheme, lowercased (empty for a bare host).
    pub scheme: String,
    /// TLS or not.
    pub transport: Transport,
    /// The first places it was seen (at most [`MAX_PLACES`]).
    pub seen: Vec<Location>,
    /// How many places in all.
    pub places: usize,
}

/// Places kept per URL.
pub const MAX_PLACES: usize = 5;

/// The endpoints of one host.
#[derive(Clone, Debug, Serialize)]
pub struct Host {
    /// Lowercased host name or address.
    pub host: String,
    /// Whether any URL of this host is plaintext.
    pub plaintext: bool,
    /// Its URLs, sorted.
    pub urls: Vec<EndpointUrl>,
}

/// What kind of package was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PackageKind {
    /// An Android `.apk` (or an unpacked one).
    Apk,
    /// An Android App Bundle.
    Aab,
    /// An iOS `.ipa` (or an unpacked `.app`).
    Ipa,
    /// Neither could be recognised: the files were read as they came.
    Unknown,
}

/// What was read, for the reader of the report to judge its coverage.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Coverage {
    /// Entries seen.
    pub entries: u64,
    /// Bytes inflated and read.
    pub bytes: u64,
    /// Files read, by the reader that understood them (`dex`,
    /// `android_binary_xml`, `resources_table`, `elf`, `mach_o`,
    /// `hermes_bytecode`, `plist`, `text`, `archive`).
    pub read: BTreeMap<String, u64>,
    /// Files not read, by kind (`image`, `font`, `other_binary`, ...).
    pub skipped: BTreeMap<String, u64>,
    /// Files a reader started on and could not finish (malformed or of a
    /// version it does not know), each with the reason; the rest of the
    /// package is still reported.
    pub unreadable: Vec<String>,
    /// Strings examined.
    pub strings: u64,
    /// URLs that name an XML namespace or schema (`http://schemas.android.com/...`,
    /// `http://www.w3.org/...`): identifiers, not connections, so not
    /// listed as endpoints.
    pub namespace_identifiers: u64,
}

/// The platform facts the policy findings rest on, for checking them
/// against other tools (`aapt dump xmltree`, `plutil`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Platform {
    /// Android `uses-sdk android:targetSdkVersion`.
    pub target_sdk: Option<i64>,
    /// Android `uses-sdk android:minSdkVersion`.
    pub min_sdk: Option<i64>,
    /// Android `application android:usesCleartextTraffic`, when set.
    pub uses_cleartext_traffic: Option<bool>,
    /// Android `application android:debuggable="true"`.
    pub debuggable: bool,
    /// Android network security configuration files read.
    pub network_security_configs: Vec<String>,
    /// iOS `Info.plist` files read, with `NSAllowsArbitraryLoads`.
    pub info_plists: BTreeMap<String, bool>,
}

/// The whole scan.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The package scanned, as given.
    pub package: String,
    /// What it is.
    pub kind: PackageKind,
    /// Application id (Android `package`, iOS `CFBundleIdentifier`), when found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// The platform facts.
    pub platform: Platform,
    /// Every finding, most severe first.
    pub findings: Vec<Finding>,
    /// Endpoints grouped by host, sorted.
    pub endpoints: Vec<Host>,
    /// What was read.
    pub coverage: Coverage,
    /// Counts per severity.
    pub summary: BTreeMap<String, usize>,
    /// The probe of the endpoints (`--probe`), one report each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<sluice_probe::Report>,
}

impl Report {
    /// Sort the findings (most severe first, then by id and place) and count them.
    pub fn finish(&mut self) {
        self.findings.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then_with(|| a.id.cmp(&b.id))
                .then_with(|| a.location.cmp(&b.location))
        });
        self.summary.clear();
        for s in ["high", "medium", "low", "info"] {
            self.summary.insert(s.to_owned(), 0);
        }
        for f in &self.findings {
            let key = match f.severity {
                Severity::High => "high",
                Severity::Medium => "medium",
                Severity::Low => "low",
                Severity::Info => "info",
            };
            *self.summary.entry(key.to_owned()).or_default() += 1;
        }
    }

    /// Whether any finding is high (the exit status is then 1).
    pub fn has_high(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::High)
    }

    /// The findings with this id.
    pub fn with_id<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Finding> + 'a {
        self.findings.iter().filter(move |f| f.id == id)
    }

    /// The readable report: one line per finding, then the endpoints.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let kind = match self.kind {
            PackageKind::Apk => "Android APK",
            PackageKind::Aab => "Android App Bundle",
            PackageKind::Ipa => "iOS app",
            PackageKind::Unknown => "package of unknown kind",
        };
        let _ = write!(out, "sluice scan {} ({kind}", self.package);
        if let Some(id) = &self.app_id {
            let _ = write!(out, " {id}");
        }
        let _ = writeln!(
            out,
            "): {} entries, {} KiB read",
            self.coverage.entries,
            self.coverage.bytes >> 10
        );
        let _ = writeln!(out, "\nFindings");
        if self.findings.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for f in &self.findings {
            let also = if f.also > 0 {
                format!(" (+{} more)", f.also)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  {}  {:<18} {}  [{}]  at {}{also}",
                f.severity.label(),
                f.masvs,
                f.title,
                f.id,
                f.location
            );
        }
        let _ = writeln!(out, "\nEndpoints ({} hosts)", self.endpoints.len());
        for h in &self.endpoints {
            let _ = writeln!(
                out,
                "  {}{}",
                h.host,
                if h.plaintext { "  (plaintext!)" } else { "" }
            );
            for u in &h.urls {
                let t = match u.transport {
                    Transport::Tls => "tls      ",
                    Transport::Plaintext => "PLAINTEXT",
                    Transport::Unknown => "host     ",
                };
                let first = u.seen.first().map(ToString::to_string).unwrap_or_default();
                let more = if u.places > 1 {
                    format!(" (+{} more)", u.places - 1)
                } else {
                    String::new()
                };
                let _ = writeln!(out, "    {t} {}  at {first}{more}", u.url);
            }
        }
        let c = &self.coverage;
        let read: Vec<String> = c.read.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let skipped: Vec<String> = c.skipped.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            out,
            "\nRead: {}; not read: {}; {} strings; {} XML namespace URLs left out",
            if read.is_empty() {
                "nothing".into()
            } else {
                read.join(", ")
            },
            if skipped.is_empty() {
                "nothing".into()
            } else {
                skipped.join(", ")
            },
            c.strings,
            c.namespace_identifiers
        );
        for u in &c.unreadable {
            let _ = writeln!(out, "  could not read: {u}");
        }
        for p in &self.probes {
            let _ = writeln!(
                out,
                "\nProbe of {}: {} passed, {} failed, {} could not tell",
                p.url, p.summary.pass, p.summary.fail, p.summary.could_not_tell
            );
        }
        let s = |k: &str| self.summary.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "\n{} high, {} medium, {} low, {} info",
            s("high"),
            s("medium"),
            s("low"),
            s("info")
        );
        out
    }
}
