//! What the package contains: each file is recognised by its bytes (not its
//! name) and read by the reader for its format; the strings each reader
//! yields go through the endpoint and secret extractors; the platform
//! policies are kept; at the end everything is joined into a [`Report`].

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::android_policy::{self, AndroidPolicy};
use crate::axml;
use crate::dex;
use crate::endpoints::{self, FoundUrl};
use crate::hermes;
use crate::ios_policy::{self, Ats};
use crate::limits::{Budget, Refusal};
use crate::native;
use crate::package::Visitor;
use crate::property_list::{self, Scalar};
use crate::report::{
    Coverage, EndpointUrl, Finding, Host, Location, MAX_PLACES, PackageKind, Platform, Report,
    Severity, Transport,
};
use crate::secrets::{self, Secret};

/// Extensions read as text.
const TEXT_EXTENSIONS: &[&str] = &[
    ".js",
    ".jsbundle",
    ".bundle",
    ".json",
    ".xml",
    ".html",
    ".htm",
    ".properties",
    ".txt",
    ".conf",
    ".cfg",
    ".ini",
    ".yaml",
    ".yml",
    ".env",
    ".pem",
    ".key",
    ".strings",
    ".plist",
    ".mjs",
    ".cjs",
    ".config",
    ".csv",
];
/// Extensions of files this scan does not read, by kind.
const SKIPPED: &[(&str, &[&str])] = &[
    (
        "image",
        &[
            ".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".ico", ".heic", ".car",
        ],
    ),
    ("font", &[".ttf", ".otf", ".woff", ".woff2"]),
    ("media", &[".mp3", ".mp4", ".ogg", ".wav", ".m4a", ".aac"]),
    (
        "signature",
        &[".rsa", ".sf", ".dsa", ".ec", ".mf", ".mobileprovision"],
    ),
];
/// Key candidates kept for verifying embedded HMAC tokens.
const MAX_KEY_CANDIDATES: usize = 500_000;
/// The most embedded HMAC tokens checked against the candidates.
const MAX_TOKENS_VERIFIED: usize = 16;

/// The state of a scan while it reads.
#[derive(Default)]
pub struct Contents {
    urls: BTreeMap<String, BTreeMap<String, EndpointUrl>>,
    findings: Vec<Finding>,
    seen_secrets: HashMap<(String, String), usize>,
    key_candidates: Vec<String>,
    key_seen: HashSet<String>,
    tokens: Vec<(String, Location)>,
    android: AndroidPolicy,
    ios: Vec<Ats>,
    coverage: Coverage,
}

impl Visitor for Contents {
    fn file(&mut self, path: &str, data: &[u8], budget: &Budget) -> Result<(), Refusal> {
        budget.clock(path)?;
        let lower = path.to_ascii_lowercase();
        let result = if data.starts_with(dex::MAGIC) {
            self.read_dex(path, data)
        } else if axml::is_binary_xml(data) {
            self.read_axml(path, data)
        } else if axml::is_resource_table(data) {
            self.read_resources(path, data)
        } else if data.starts_with(&hermes::MAGIC) {
            self.read_hermes(path, data)
        } else if let Some(kind) = native::kind(data) {
            self.read_native(path, data, kind)
        } else if property_list::is_plist(data) {
            self.read_plist(path, data)
        } else if is_documentation(&lower) {
            *self
                .coverage
                .skipped
                .entry("documentation".into())
                .or_default() += 1;
            Ok(())
        } else if TEXT_EXTENSIONS.iter().any(|e| lower.ends_with(e)) || looks_like_text(data) {
            self.read_text(path, data);
            Ok(())
        } else {
            let kind = SKIPPED
                .iter()
                .find(|(_, exts)| exts.iter().any(|e| lower.ends_with(e)))
                .map_or("other_binary", |(k, _)| *k);
            *self.coverage.skipped.entry(kind.into()).or_default() += 1;
            Ok(())
        };
        if let Err(why) = result {
            self.unreadable(path, why);
        }
        Ok(())
    }

    fn unreadable(&mut self, path: &str, why: String) {
        if self.coverage.unreadable.len() < 100 {
            self.coverage.unreadable.push(format!("{path}: {why}"));
        }
    }
}

/// Licences, notices and read-me files: their links are documentation, not
/// connections.
fn is_documentation(lower: &str) -> bool {
    let name = lower.rsplit('/').next().unwrap_or(lower);
    [
        "license",
        "licence",
        "notice",
        "readme",
        "copying",
        "changelog",
        "authors",
    ]
    .iter()
    .any(|p| name.starts_with(p) || name.starts_with(&format!("{p}.")))
        || lower.contains("/license/")
        || lower.starts_with("license/")
}

/// Valid UTF-8 without NUL bytes in its first 8 KiB.
fn looks_like_text(data: &[u8]) -> bool {
    let head = &data[..data.len().min(8 << 10)];
    !head.is_empty()
        && !head.contains(&0)
        && match std::str::from_utf8(head) {
            Ok(_) => true,
            // A multi-byte character cut at the 8 KiB boundary.
            Err(e) => e.valid_up_to() + 4 >= head.len(),
        }
}

impl Contents {
    fn count(&mut self, reader: &str) {
        *self.coverage.read.entry(reader.into()).or_default() += 1;
    }

    fn read_dex(&mut self, path: &str, data: &[u8]) -> Result<(), String> {
        let dex = dex::parse(data)?;
        self.count("dex");
        for s in &dex.strings {
            let loc = Location::new(path, Some(s.offset), format!("string_ids[{}]", s.index));
            self.string(&s.text, loc);
        }
        for f in &dex.statics {
            let Some(value) = dex.strings.get(f.string as usize) else {
                continue;
            };
            let class = f
                .class
                .trim_start_matches('L')
                .trim_end_matches(';')
                .replace('/', ".");
            let loc = Location::new(
                path,
                Some(value.offset),
                format!("static field {class}.{}", f.field),
            );
            if let Some(secret) = secrets::named(&f.field, &value.text) {
                self.secret(secret, loc);
            }
        }
        Ok(())
    }

    fn read_axml(&mut self, path: &str, data: &[u8]) -> Result<(), String> {
        let doc = axml::parse(data)?;
        self.count("android_binary_xml");
        if path == "AndroidManifest.xml" || path.ends_with("!/AndroidManifest.xml") {
            if self.android.manifest.is_none() {
                self.android.manifest = Some(android_policy::manifest(&doc, path));
            }
        } else if doc.root.name == "network-security-config" {
            self.android
                .configs
                .push(android_policy::network_config(&doc.root, path));
        }
        let mut stack = vec![&doc.root];
        while let Some(e) = stack.pop() {
            for a in &e.attrs {
                if let Some(v) = a.value.as_str() {
                    let loc =
                        Location::new(path, Some(e.offset), format!("<{} {}>", e.name, a.name));
                    self.string(v, loc);
                }
            }
            if !e.text.trim().is_empty() {
                let loc = Location::new(path, Some(e.offset), format!("<{}> text", e.name));
                self.string(e.text.trim(), loc);
            }
            stack.extend(e.children.iter());
        }
        Ok(())
    }

    fn read_resources(&mut self, path: &str, data: &[u8]) -> Result<(), String> {
        let pool = axml::resource_strings(data)?;
        self.count("resources_table");
        for (i, (offset, text)) in pool.strings.iter().enumerate() {
            let loc = Location::new(path, Some(*offset), format!("string value #{i}"));
            self.string(text, loc);
        }
        Ok(())
    }

    fn read_hermes(&mut self, path: &str, data: &[u8]) -> Result<(), String> {
        let hbc = hermes::parse(data)?;
        self.count("hermes_bytecode");
        for (i, s) in hbc.strings.iter().enumerate() {
            let loc = Location::new(
                path,
                Some(s.offset),
                format!("Hermes v{} string #{i}", hbc.version),
            );
            self.string(&s.text, loc);
        }
        Ok(())
    }

    fn read_native(&mut self, path: &str, data: &[u8], kind: &str) -> Result<(), String> {
        let strings = native::strings(data)?;
        self.count(kind);
        for s in strings {
            let loc = Location::new(path, Some(s.offset), s.section);
            self.string(&s.text, loc);
        }
        Ok(())
    }

    fn read_plist(&mut self, path: &str, data: &[u8]) -> Result<(), String> {
        let leaves = property_list::leaves(data)?;
        self.count("plist");
        if path.ends_with("Info.plist") {
            self.ios.push(ios_policy::read(&leaves, path));
        }
        for leaf in &leaves {
            if let Scalar::Str(s) = &leaf.value {
                let loc = Location::new(path, None, leaf.display_path());
                if let Some(secret) = leaf.path.last().and_then(|k| secrets::named(k, s)) {
                    self.secret(secret, loc.clone());
                }
                self.string(s, loc);
            }
        }
        Ok(())
    }

    fn read_text(&mut self, path: &str, data: &[u8]) {
        self.count("text");
        let text = String::from_utf8_lossy(data);
        self.coverage.strings += 1;
        for u in endpoints::urls(&text) {
            let loc = Location::new(path, Some(u.start as u64), "");
            self.url(u, loc);
        }
        for s in secrets::in_text(&text) {
            let loc = Location::new(path, Some(s.start as u64), "");
            if s.id == "secret.signing_key" || s.id == "secret.named" {
                self.candidate(&s.value);
            }
            self.secret(s, loc);
        }
    }

    /// One whole string of the package.
    fn string(&mut self, text: &str, loc: Location) {
        self.coverage.strings += 1;
        for u in endpoints::urls(text) {
            let mut at = loc.clone();
            at.offset = at.offset.map(|o| o + u.start as u64);
            self.url(u, at);
        }
        if let Some(host) = endpoints::bare_host(text) {
            self.url(
                FoundUrl {
                    url: host.clone(),
                    scheme: String::new(),
                    host: host.split(':').next().unwrap_or(&host).to_owned(),
                    transport: Transport::Unknown,
                    start: 0,
                    credentials: false,
                },
                loc.clone(),
            );
        }
        if text.len() >= 12 {
            for s in secrets::in_text(text) {
                self.secret(s, loc.clone());
            }
        }
        if (12..=256).contains(&text.len()) && !text.contains(char::is_whitespace) {
            self.candidate(text);
        }
    }

    fn candidate(&mut self, text: &str) {
        if self.key_candidates.len() < MAX_KEY_CANDIDATES && self.key_seen.insert(text.to_owned()) {
            self.key_candidates.push(text.to_owned());
        }
    }

    fn url(&mut self, u: FoundUrl, loc: Location) {
        if endpoints::is_namespace(&u) {
            self.coverage.namespace_identifiers += 1;
            return;
        }
        if u.credentials {
            self.finding(Finding {
                id: "secret.url_credentials".into(),
                severity: Severity::High,
                masvs: "MASVS-CRYPTO-2",
                title: format!("a URL to {} carries a user name and password", u.host),
                location: loc.clone(),
                also: 0,
                detail: "credentials inside a URL ship with every copy of the app. Authenticate users, not the app.".into(),
            });
        }
        let host = self.urls.entry(u.host.clone()).or_default();
        let e = host.entry(u.url.clone()).or_insert_with(|| EndpointUrl {
            url: u.url.clone(),
            scheme: u.scheme.clone(),
            transport: u.transport,
            seen: Vec::new(),
            places: 0,
        });
        e.places += 1;
        if e.seen.len() < MAX_PLACES {
            e.seen.push(loc);
        }
    }

    fn secret(&mut self, s: Secret, loc: Location) {
        if s.id == "secret.jwt"
            && secrets::is_hmac_token(&s.value)
            && self.tokens.len() < MAX_TOKENS_VERIFIED
        {
            self.tokens.push((s.value.clone(), loc.clone()));
        }
        let key = (s.id.to_owned(), s.value.clone());
        if let Some(&i) = self.seen_secrets.get(&key) {
            if let Some(f) = self.findings.get_mut(i) {
                f.also += 1;
            }
            return;
        }
        self.seen_secrets.insert(key, self.findings.len());
        let detail = match s.id {
            "secret.jwt" => {
                "anyone who unpacks the app can present this token. Issue tokens per user from your server at login."
            }
            "secret.signing_key" => {
                "an app that carries the key its tokens are signed with lets anyone mint tokens for any user: handshake authentication is void whatever the server checks. Keep signing keys on the server."
            }
            "secret.private_key" => "a private key in the app is public. Keep it on a server.",
            _ => {
                "a credential in the app is public: anyone can unpack it. Move it to your server and call through it."
            }
        };
        self.findings.push(Finding {
            id: s.id.into(),
            severity: s.severity,
            masvs: s.masvs,
            title: s.title,
            location: loc,
            also: 0,
            detail: detail.into(),
        });
    }

    fn finding(&mut self, f: Finding) {
        let key = (f.id.clone(), f.title.clone());
        if let Some(&i) = self.seen_secrets.get(&key) {
            if let Some(existing) = self.findings.get_mut(i) {
                existing.also += 1;
            }
            return;
        }
        self.seen_secrets.insert(key, self.findings.len());
        self.findings.push(f);
    }

    /// Whether the platform lets the app reach `host` in plaintext.
    fn cleartext_permitted(&self, kind: PackageKind, host: &str) -> Option<bool> {
        match kind {
            PackageKind::Apk | PackageKind::Aab => self.android.cleartext_permitted(host),
            PackageKind::Ipa if !self.ios.is_empty() => {
                Some(self.ios.iter().any(|a| a.cleartext_permitted(host)))
            }
            _ => None,
        }
    }

    /// Join everything into the report.
    pub fn finish(
        mut self,
        package: String,
        kind: PackageKind,
        budget: &Budget,
        today: &str,
    ) -> Report {
        // Keys that verify a token the app carries.
        let tokens = std::mem::take(&mut self.tokens);
        for (token, token_loc) in &tokens {
            if let Some(key) = self
                .key_candidates
                .iter()
                .find(|k| secrets::signs(token, k))
            {
                let title = format!(
                    "the app carries the key that signs its tokens ({}), verified against the token at {token_loc}",
                    secrets::redact(key)
                );
                self.findings.push(Finding {
                    id: "secret.token_signing_key".into(),
                    severity: Severity::High,
                    masvs: "MASVS-AUTH-1",
                    title,
                    location: token_loc.clone(),
                    also: 0,
                    detail: "with the key anyone can mint tokens for any user: handshake authentication is void whatever the server checks. Keep signing keys on the server.".into(),
                });
            }
        }
        let mut findings = std::mem::take(&mut self.findings);
        findings.extend(self.android.findings(today));
        if kind == PackageKind::Aab {
            findings.push(Finding {
                id: "android.manifest_not_read".into(),
                severity: Severity::Info,
                masvs: "MASVS-NETWORK-1",
                title: "the bundle's manifest and network security config are not read".into(),
                location: Location::new("base/manifest/AndroidManifest.xml", None, ""),
                also: 0,
                detail: "an App Bundle keeps them in aapt2's protocol-buffer XML, which this scan does not read (its code, assets and native libraries are read). For the transport policy, scan an APK built from it: bundletool build-apks --mode=universal.".into(),
            });
        }
        for ats in &self.ios {
            findings.extend(ats.findings.iter().cloned());
        }
        let mut hosts = Vec::new();
        for (host, urls) in &self.urls {
            let plaintext: Vec<&EndpointUrl> = urls
                .values()
                .filter(|u| u.transport == Transport::Plaintext)
                .collect();
            if let Some(first) = plaintext.iter().find(|u| u.scheme == "ws") {
                findings.push(Finding {
                    id: "endpoint.plaintext_websocket".into(),
                    severity: if endpoints::is_local(host) { Severity::Low } else { Severity::High },
                    masvs: "MASVS-NETWORK-1",
                    title: format!("the app talks to {host} over plaintext WebSocket ({})", first.url),
                    location: first.seen.first().cloned().unwrap_or_else(|| Location::new("", None, "")),
                    also: plaintext.iter().filter(|u| u.scheme == "ws").count() - 1,
                    detail: "ws:// sends the token and every message readable and changeable on any network on the way, and platform cleartext policies do not cover every WebSocket client. Use wss://.".into(),
                });
            }
            if let Some(first) = plaintext.iter().find(|u| u.scheme == "http") {
                let permitted = self.cleartext_permitted(kind, host);
                let (severity, why) = if endpoints::is_local(host) {
                    (
                        Severity::Low,
                        "a development address left in the build".to_owned(),
                    )
                } else {
                    match permitted {
                        Some(true) => (Severity::High, "the platform policy permits cleartext to this host, so the request goes out readable".to_owned()),
                        Some(false) => (Severity::Medium, "the platform policy refuses cleartext to this host: the request fails at run time, or the URL is dead code".to_owned()),
                        None => (Severity::Medium, "whether the platform permits cleartext to this host could not be told".to_owned()),
                    }
                };
                findings.push(Finding {
                    id: "endpoint.plaintext_http".into(),
                    severity,
                    masvs: "MASVS-NETWORK-1",
                    title: format!("the app carries a plaintext URL to {host} ({})", first.url),
                    location: first
                        .seen
                        .first()
                        .cloned()
                        .unwrap_or_else(|| Location::new("", None, "")),
                    also: plaintext.iter().filter(|u| u.scheme == "http").count() - 1,
                    detail: format!("{why}. Use https://."),
                });
            }
            hosts.push(Host {
                host: host.clone(),
                plaintext: !plaintext.is_empty(),
                urls: urls.values().cloned().collect(),
            });
        }
        self.coverage.entries = budget.entries();
        self.coverage.bytes = budget.bytes();
        let app_id = self
            .android
            .manifest
            .as_ref()
            .and_then(|m| m.package.clone())
            .or_else(|| self.ios.iter().find_map(|a| a.bundle_id.clone()));
        let platform = Platform {
            target_sdk: self.android.manifest.as_ref().and_then(|m| m.target_sdk),
            min_sdk: self.android.manifest.as_ref().and_then(|m| m.min_sdk),
            uses_cleartext_traffic: self
                .android
                .manifest
                .as_ref()
                .and_then(|m| m.uses_cleartext.as_ref().map(|(v, _)| *v)),
            debuggable: self
                .android
                .manifest
                .as_ref()
                .is_some_and(|m| m.debuggable.is_some()),
            network_security_configs: self
                .android
                .configs
                .iter()
                .map(|c| c.file.clone())
                .collect(),
            info_plists: self
                .ios
                .iter()
                .map(|a| (a.file.clone(), a.arbitrary_loads))
                .collect(),
        };
        let mut report = Report {
            package,
            kind,
            app_id,
            platform,
            findings,
            endpoints: hosts,
            coverage: self.coverage,
            summary: BTreeMap::new(),
            probes: Vec::new(),
        };
        report.finish();
        report
    }
}
