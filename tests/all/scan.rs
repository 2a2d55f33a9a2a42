//! `sluice scan` on real packages no one here wrote (npm's Appium APKs),
//! checked against Debian's `aapt` and `dexdump`; on packages built here
//! (an APK, an IPA with a Hermes bundle from Meta's `hermesc`), every
//! finding asserted; on hostile archives, each refused in bounded time;
//! with `--probe` against `sluice dev` and the Node peer in one report; and
//! through the `sluice` binary for its output and exit status. Needs
//! `scripts/install-scan-fixtures` (tests/run runs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_scan::report::{PackageKind, Transport};
use sluice_scan::{Limits, Refusal, Report, ScanArgs, Severity};
use sluice_tests::mobile_app::{self, XmlElement, XmlValue, attr};
use sluice_tests::server::TempDir;

use crate::peers::{self, Files, Peer};
use crate::probe::DevSluice;

/// The npm packages installed by scripts/install-scan-fixtures.
fn fixtures() -> PathBuf {
    let dir = std::env::var_os("SLUICE_SCAN_FIXTURES").map(PathBuf::from).unwrap_or_else(|| {
        panic!("SLUICE_SCAN_FIXTURES is not set: run `export SLUICE_SCAN_FIXTURES=$(scripts/install-scan-fixtures)` (tests/run does)")
    });
    assert!(
        dir.is_dir(),
        "{} is missing: run scripts/install-scan-fixtures",
        dir.display()
    );
    dir
}

const SETTINGS_APK: &str = "io.appium.settings/apks/settings_apk-debug.apk";
const UIA2_TEST_APK: &str =
    "appium-uiautomator2-server/apks/appium-uiautomator2-server-debug-androidTest.apk";
const UIA2_SERVER_APK: &str =
    "appium-uiautomator2-server/apks/appium-uiautomator2-server-v10.6.6.apk";
const HERMESC: &str = "hermes-compiler/hermesc/linux64-bin/hermesc";

fn scan(path: &Path) -> Report {
    sluice_scan::read(path, Limits::default())
        .unwrap_or_else(|e| panic!("scanning {}: {e}", path.display()))
}

/// Run a tool and return its stdout, failing the test with its stderr.
fn tool(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (scripts/install-scan-fixtures installs it)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One entry of a zip, written to `dir`.
fn extract(apk: &Path, entry: &str, dir: &Path) -> PathBuf {
    let file = std::fs::File::open(apk).expect("open the APK");
    let mut zip = zip::ZipArchive::new(file).expect("the APK is a zip");
    let mut e = zip.by_name(entry).expect("the entry");
    let out = dir.join(entry.replace('/', "_"));
    let mut f = std::fs::File::create(&out).expect("create");
    std::io::copy(&mut e, &mut f).expect("extract");
    out
}

/// `aapt dump badging`: package name, minSdk, targetSdk.
fn badging(apk: &Path) -> (String, i64, i64) {
    let out = tool(Command::new("aapt").arg("dump").arg("badging").arg(apk));
    let field = |prefix: &str, key: &str| -> String {
        let line = out
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in aapt's badging"));
        let at = line.find(key).map(|i| i + key.len()).unwrap_or(0);
        line[at..].split('\'').next().unwrap_or("").to_owned()
    };
    (
        field("package:", "name='"),
        field("sdkVersion:", "sdkVersion:'")
            .parse()
            .expect("sdkVersion"),
        field("targetSdkVersion:", "targetSdkVersion:'")
            .parse()
            .expect("targetSdkVersion"),
    )
}

/// Whether `aapt dump xmltree` shows `android:debuggable` true.
fn aapt_debuggable(apk: &Path) -> bool {
    tool(
        Command::new("aapt")
            .args(["dump", "xmltree"])
            .arg(apk)
            .arg("AndroidManifest.xml"),
    )
    .lines()
    .any(|l| l.contains("android:debuggable(") && l.contains("0xffffffff"))
}

/// Every `const-string` whose literal is a URL, with the string index
/// dexdump gives it: `(url, index)`.
fn dexdump_urls(dex: &Path) -> Vec<(String, u32)> {
    let out = tool(Command::new("sh").arg("-c").arg(format!(
        "dexdump -d '{}' | grep -F 'const-string'",
        dex.display()
    )));
    let mut urls: Vec<(String, u32)> = out
        .lines()
        .filter_map(|l| {
            let lit = l.split_once(", \"")?.1;
            let (text, rest) = lit.rsplit_once("\" // string@")?;
            let index = u32::from_str_radix(rest.trim(), 16).ok()?;
            let scheme_ok = ["http://", "https://", "ws://", "wss://"]
                .iter()
                .any(|s| text.starts_with(s));
            (scheme_ok && text.len() > 8).then(|| (text.to_owned(), index))
        })
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

/// The endpoint URL `url` of the report, if listed.
fn endpoint<'a>(report: &'a Report, url: &str) -> Option<&'a sluice_scan::report::EndpointUrl> {
    report
        .endpoints
        .iter()
        .flat_map(|h| h.urls.iter())
        .find(|u| u.url == url)
}

fn ids(report: &Report) -> Vec<String> {
    report.findings.iter().map(|f| f.id.clone()).collect()
}

fn finding<'a>(report: &'a Report, id: &str) -> &'a sluice_scan::Finding {
    report
        .findings
        .iter()
        .find(|f| f.id == id)
        .unwrap_or_else(|| panic!("no finding {id} in {}", report.human()))
}

#[test]
fn real_apks_agree_with_aapt_and_dexdump() {
    let dir = TempDir::new();
    for name in [SETTINGS_APK, UIA2_TEST_APK] {
        let apk = fixtures().join(name);
        let report = scan(&apk);
        assert_eq!(report.kind, PackageKind::Apk, "{name}");
        // The manifest, against aapt.
        let (package, min_sdk, target_sdk) = badging(&apk);
        assert_eq!(report.app_id.as_deref(), Some(package.as_str()), "{name}");
        assert_eq!(report.platform.min_sdk, Some(min_sdk), "{name}");
        assert_eq!(report.platform.target_sdk, Some(target_sdk), "{name}");
        let debuggable = aapt_debuggable(&apk);
        assert_eq!(report.platform.debuggable, debuggable, "{name}");
        assert_eq!(
            report.with_id("android.debuggable").count(),
            usize::from(debuggable),
            "{name}"
        );
        // Both target API 28+ and set no cleartext: nothing permits it.
        assert!(target_sdk >= 28);
        assert_eq!(report.with_id("android.cleartext_permitted").count(), 0);
        assert!(
            report.coverage.unreadable.is_empty(),
            "{:?}",
            report.coverage.unreadable
        );

        // Every URL the code loads with const-string, against dexdump: listed,
        // at the string index dexdump gives it (XML namespaces left out).
        let dex = extract(&apk, "classes.dex", &dir.0);
        let urls = dexdump_urls(&dex);
        for (url, index) in &urls {
            if url.contains("schemas.android.com") || url.ends_with("://") {
                continue;
            }
            let e = endpoint(&report, url)
                .unwrap_or_else(|| panic!("{name}: dexdump sees {url}, the scan does not"));
            assert!(
                e.seen
                    .iter()
                    .any(|l| l.file == "classes.dex" && l.what == format!("string_ids[{index}]")),
                "{name}: {url} at {:?}, dexdump says string@{index:x}",
                e.seen
            );
        }
        if name == SETTINGS_APK {
            assert!(
                urls.iter()
                    .any(|(u, _)| u == "https://www.googleapis.com/auth/games")
            );
            let host = report
                .endpoints
                .iter()
                .find(|h| h.host == "www.googleapis.com")
                .expect("googleapis");
            assert!(!host.plaintext);
            assert!(host.urls.iter().all(|u| u.transport == Transport::Tls));
            assert!(!report.has_high(), "{}", report.human());
        }
    }
}

#[test]
fn a_real_apk_carrying_a_private_key_is_flagged_where_dexdump_sees_it() {
    let apk = fixtures().join(UIA2_SERVER_APK);
    let started = Instant::now();
    let report = scan(&apk);
    let took = started.elapsed();
    assert_eq!(report.coverage.entries, 3841);
    let key = finding(&report, "secret.private_key");
    assert_eq!(key.severity, Severity::High);
    assert!(
        !key.title.contains("MIIE"),
        "the key is not printed: {}",
        key.title
    );
    // dexdump shows the same literal loaded by const-string: the instruction
    // `1a RR LL HH` carries the string index.
    let dir = TempDir::new();
    let dex = extract(&apk, &key.location.file, &dir.0);
    let out = tool(Command::new("sh").arg("-c").arg(format!(
        "dexdump -d '{}' | grep -F 'const-string' | grep -F 'BEGIN PRIVATE KEY'",
        dex.display()
    )));
    let indexes: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let code = l
                .split('|')
                .next()?
                .split(':')
                .nth(1)?
                .split_whitespace()
                .collect::<Vec<_>>();
            let lo_hi = code.get(1)?;
            let index =
                u32::from_str_radix(&format!("{}{}", &lo_hi[2..4], &lo_hi[0..2]), 16).ok()?;
            Some(format!("string_ids[{index}]"))
        })
        .collect();
    assert!(
        indexes.contains(&key.location.what),
        "the scan saw the key at {}, dexdump loads {indexes:?}",
        key.location
    );
    eprintln!(
        "scanned {} ({} KiB inflated) in {took:?}",
        UIA2_SERVER_APK,
        report.coverage.bytes >> 10
    );
}

/// The Android app the tests build: a manifest targeting API 34 with a
/// network security config that permits cleartext to one domain and pins
/// another with an expired pin-set; a DEX with `ws://`, `wss://`, `http://`
/// URLs and a `JWT_SECRET` static field; a React Native bundle in assets.
fn chat_apk(extra_strings: &[&str]) -> Vec<u8> {
    let manifest = XmlElement::new("manifest")
        .attr("package", XmlValue::Str("com.example.chat".into()))
        .child(
            XmlElement::new("uses-sdk")
                .android(attr::MIN_SDK_VERSION, "minSdkVersion", XmlValue::Int(24))
                .android(
                    attr::TARGET_SDK_VERSION,
                    "targetSdkVersion",
                    XmlValue::Int(34),
                ),
        )
        .child(
            XmlElement::new("application")
                .android(
                    attr::NETWORK_SECURITY_CONFIG,
                    "networkSecurityConfig",
                    XmlValue::Reference(0x7f0f_0000),
                )
                .android(
                    attr::USES_CLEARTEXT_TRAFFIC,
                    "usesCleartextTraffic",
                    XmlValue::Bool(false),
                )
                .child(XmlElement::new("activity").android(
                    attr::NAME,
                    "name",
                    XmlValue::Str("com.example.chat.Main".into()),
                )),
        );
    let nsc = XmlElement::new("network-security-config")
        .child(
            XmlElement::new("base-config")
                .attr("cleartextTrafficPermitted", XmlValue::Str("false".into())),
        )
        .child(
            XmlElement::new("domain-config")
                .attr("cleartextTrafficPermitted", XmlValue::Str("true".into()))
                .child(
                    XmlElement::new("domain")
                        .attr("includeSubdomains", XmlValue::Str("true".into()))
                        .text("legacy.example.net"),
                ),
        )
        .child(
            XmlElement::new("domain-config")
                .child(XmlElement::new("domain").text("chat.example.com"))
                .child(
                    XmlElement::new("pin-set")
                        .attr("expiration", XmlValue::Str("2020-01-01".into()))
                        .child(
                            XmlElement::new("pin")
                                .attr("digest", XmlValue::Str("SHA-256".into()))
                                .text("7HIpactkIAq2Y49orFOOQKurWxmmSFZhBCoQYcRhJ3Y="),
                        ),
                ),
        );
    let mut strings = vec![
        "wss://chat.example.com/ws/app",
        "ws://legacy.example.net/live",
        "http://legacy.example.net/api",
        "http://metrics.example.org/collect",
        "HS256",
    ];
    strings.extend_from_slice(extra_strings);
    let dex = mobile_app::dex(
        &strings,
        "Lcom/example/chat/Config;",
        &[
            ("JWT_SECRET", "k3y-Th4t-S1gns-Ev3ry-T0ken"),
            ("API_BASE", "https://api.example.com/v1"),
        ],
    );
    let bundle = b"var API = \"https://api.example.com/v1\";\nfetch(\"http://metrics.example.org/collect\");\nvar stripeKey = \"sk_live_51HxExampleExampleExample00\";\n";
    mobile_app::zip(&[
        ("AndroidManifest.xml", &mobile_app::binary_xml(&manifest)),
        (
            "res/xml/network_security_config.xml",
            &mobile_app::binary_xml(&nsc),
        ),
        ("classes.dex", &dex),
        ("assets/index.android.bundle", bundle),
    ])
}

#[test]
fn a_built_apk_reports_each_endpoint_policy_and_secret() {
    let dir = TempDir::new();
    let apk = dir.0.join("chat.apk");
    std::fs::write(&apk, chat_apk(&[])).expect("write the APK");

    // The builder's output is what Android's own tools read back.
    let manifest = tool(
        Command::new("aapt")
            .args(["dump", "xmltree"])
            .arg(&apk)
            .arg("AndroidManifest.xml"),
    );
    assert!(
        manifest.contains("android:targetSdkVersion(0x01010270)=(type 0x10)0x22"),
        "{manifest}"
    );
    assert!(
        manifest.contains("android:usesCleartextTraffic(0x010104ec)=(type 0x12)0x0"),
        "{manifest}"
    );
    let nsc = tool(
        Command::new("aapt")
            .args(["dump", "xmltree"])
            .arg(&apk)
            .arg("res/xml/network_security_config.xml"),
    );
    assert!(nsc.contains("C: \"legacy.example.net\""), "{nsc}");
    let dex = extract(&apk, "classes.dex", &dir.0);
    let fields = tool(Command::new("dexdump").arg("-f").arg(&dex));
    assert!(fields.contains("name          : 'JWT_SECRET'"), "{fields}");

    let report = scan(&apk);
    assert_eq!(report.kind, PackageKind::Apk);
    assert_eq!(report.app_id.as_deref(), Some("com.example.chat"));
    assert_eq!(report.platform.target_sdk, Some(34));
    assert_eq!(report.platform.uses_cleartext_traffic, Some(false));
    assert_eq!(
        report.platform.network_security_configs,
        vec!["res/xml/network_security_config.xml".to_owned()]
    );

    // Endpoints, grouped by host, each plaintext or TLS, with where.
    let hosts: Vec<(&str, bool)> = report
        .endpoints
        .iter()
        .map(|h| (h.host.as_str(), h.plaintext))
        .collect();
    assert_eq!(
        hosts,
        vec![
            ("api.example.com", false),
            ("chat.example.com", false),
            ("legacy.example.net", true),
            ("metrics.example.org", true),
        ]
    );
    let wss = endpoint(&report, "wss://chat.example.com/ws/app").expect("wss");
    assert_eq!(wss.transport, Transport::Tls);
    assert!(wss.seen[0].file == "classes.dex" && wss.seen[0].what.starts_with("string_ids["));
    let metrics = endpoint(&report, "http://metrics.example.org/collect").expect("metrics");
    assert_eq!(metrics.places, 2, "{:?}", metrics.seen);
    assert!(
        metrics
            .seen
            .iter()
            .any(|l| l.file == "assets/index.android.bundle" && l.offset == Some(47))
    );

    // The policy decides the severity of each plaintext URL.
    let ws = finding(&report, "endpoint.plaintext_websocket");
    assert_eq!(ws.severity, Severity::High);
    assert_eq!(ws.masvs, "MASVS-NETWORK-1");
    let http: Vec<(String, Severity)> = report
        .with_id("endpoint.plaintext_http")
        .map(|f| (f.title.clone(), f.severity))
        .collect();
    assert!(
        http.iter()
            .any(|(t, s)| t.contains("legacy.example.net") && *s == Severity::High),
        "the config permits cleartext there: {http:?}"
    );
    assert!(
        http.iter()
            .any(|(t, s)| t.contains("metrics.example.org") && *s == Severity::Medium),
        "the base config refuses cleartext there: {http:?}"
    );
    let cleartext = finding(&report, "android.nsc.cleartext_domain");
    assert!(
        cleartext
            .title
            .contains("legacy.example.net and its subdomains")
    );
    assert_eq!(
        cleartext.location.file,
        "res/xml/network_security_config.xml"
    );
    let pins = finding(&report, "android.nsc.pins_expired");
    assert_eq!(pins.masvs, "MASVS-NETWORK-2");
    assert!(pins.title.contains("chat.example.com") && pins.title.contains("2020-01-01"));
    assert_eq!(report.with_id("android.cleartext_permitted").count(), 0);

    // Secrets: the signing key by its field's name, the Stripe key by shape.
    let key = finding(&report, "secret.signing_key");
    assert_eq!((key.severity, key.masvs), (Severity::High, "MASVS-AUTH-1"));
    assert_eq!(
        key.location.what,
        "static field com.example.chat.Config.JWT_SECRET"
    );
    assert!(!key.title.contains("Th4t"), "redacted: {}", key.title);
    let stripe = finding(&report, "secret.stripe_secret_key");
    assert_eq!(stripe.location.file, "assets/index.android.bundle");
    assert!(report.has_high());
    assert!(
        report.coverage.unreadable.is_empty(),
        "{:?}",
        report.coverage.unreadable
    );

    // The same package unpacked into a folder reads the same.
    let unpacked = dir.0.join("unpacked");
    zip::ZipArchive::new(std::fs::File::open(&apk).expect("open"))
        .and_then(|mut z| z.extract(&unpacked))
        .expect("unpack");
    let from_dir = scan(&unpacked);
    assert_eq!(from_dir.kind, PackageKind::Apk);
    let (mut a, mut b) = (ids(&report), ids(&from_dir));
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[test]
fn a_token_and_the_key_that_signs_it_are_found_together() {
    let claims = serde_json::json!({"sub": "demo", "iss": "chat", "exp": 4_000_000_000u64});
    let token = sluice_tests::server::sign_hs(
        "k3y-Th4t-S1gns-Ev3ry-T0ken",
        &claims,
        jsonwebtoken::Algorithm::HS256,
        None,
    );
    let dir = TempDir::new();
    let apk = dir.0.join("token.apk");
    std::fs::write(&apk, chat_apk(&[&token])).expect("write");
    let report = scan(&apk);
    let jwt = finding(&report, "secret.jwt");
    assert!(
        jwt.title.contains("HS256") && jwt.title.contains("sub"),
        "{}",
        jwt.title
    );
    assert!(!jwt.title.contains(&token[token.len() - 10..]));
    let signing = finding(&report, "secret.token_signing_key");
    assert_eq!(signing.severity, Severity::High);
    assert!(
        signing.title.contains("k3y-… (26 chars)"),
        "{}",
        signing.title
    );
}

#[test]
fn a_built_ipa_reports_ats_mach_o_and_hermes_strings() {
    let dir = TempDir::new();
    // A React Native bundle compiled by Meta's hermesc, whose string
    // storage keeps strings back to back without separators.
    let js = dir.0.join("index.js");
    std::fs::write(
        &js,
        "const LEGACY = \"http://legacy.example.net/api\";\n\
         const SOCKET = \"wss://chat.example.com/ws/app\";\n\
         const KEY = \"sk_live_51HxExampleExampleExample00\";\n\
         globalThis.app = [LEGACY, SOCKET, KEY, new Date()];\n",
    )
    .expect("write js");
    let hbc = dir.0.join("main.jsbundle");
    tool(
        Command::new(fixtures().join(HERMESC))
            .args(["-emit-binary", "-out"])
            .arg(&hbc)
            .arg(&js),
    );
    let bundle = std::fs::read(&hbc).expect("the bundle");

    let mut exception = plist::Dictionary::new();
    exception.insert(
        "NSExceptionAllowsInsecureHTTPLoads".into(),
        plist::Value::Boolean(true),
    );
    exception.insert(
        "NSExceptionMinimumTLSVersion".into(),
        plist::Value::String("TLSv1.0".into()),
    );
    exception.insert("NSIncludesSubdomains".into(), plist::Value::Boolean(true));
    let mut domains = plist::Dictionary::new();
    domains.insert(
        "legacy.example.net".into(),
        plist::Value::Dictionary(exception),
    );
    let mut ats = plist::Dictionary::new();
    ats.insert("NSAllowsArbitraryLoads".into(), plist::Value::Boolean(true));
    ats.insert(
        "NSExceptionDomains".into(),
        plist::Value::Dictionary(domains),
    );
    let mut info = plist::Dictionary::new();
    info.insert(
        "CFBundleIdentifier".into(),
        plist::Value::String("com.example.chat".into()),
    );
    info.insert(
        "CFBundleExecutable".into(),
        plist::Value::String("Chat".into()),
    );
    info.insert(
        "NSAppTransportSecurity".into(),
        plist::Value::Dictionary(ats),
    );
    let info = mobile_app::binary_plist(&plist::Value::Dictionary(info));
    assert!(info.starts_with(b"bplist00"));
    let exe = mobile_app::mach_o(&[
        "wss://rt.example.com/socket",
        "http://tracker.example.org/t",
    ]);
    let ipa = dir.0.join("Chat.ipa");
    std::fs::write(
        &ipa,
        mobile_app::zip(&[
            ("Payload/Chat.app/Info.plist", &info),
            ("Payload/Chat.app/Chat", &exe),
            ("Payload/Chat.app/main.jsbundle", &bundle),
        ]),
    )
    .expect("write the IPA");

    let report = scan(&ipa);
    assert_eq!(report.kind, PackageKind::Ipa);
    assert_eq!(report.app_id.as_deref(), Some("com.example.chat"));
    assert_eq!(report.coverage.read.get("hermes_bytecode"), Some(&1));
    assert_eq!(report.coverage.read.get("mach_o"), Some(&1));
    assert_eq!(report.coverage.read.get("plist"), Some(&1));
    let info_plist = "Payload/Chat.app/Info.plist";
    assert_eq!(report.platform.info_plists.get(info_plist), Some(&true));

    let arbitrary = finding(&report, "ios.ats.arbitrary_loads");
    assert_eq!(
        (arbitrary.severity, arbitrary.masvs),
        (Severity::High, "MASVS-NETWORK-1")
    );
    assert_eq!(arbitrary.location.file, info_plist);
    assert_eq!(
        arbitrary.location.what,
        "NSAppTransportSecurity.NSAllowsArbitraryLoads"
    );
    assert!(
        finding(&report, "ios.ats.insecure_http_domain")
            .title
            .contains("legacy.example.net and its subdomains")
    );
    assert!(
        finding(&report, "ios.ats.min_tls")
            .title
            .contains("TLSv1.0")
    );

    // Each Hermes string on its own: no URL runs into its neighbour.
    for url in [
        "http://legacy.example.net/api",
        "wss://chat.example.com/ws/app",
    ] {
        let e = endpoint(&report, url).unwrap_or_else(|| panic!("{url}: {}", report.human()));
        assert!(
            e.seen
                .iter()
                .any(|l| l.file == "Payload/Chat.app/main.jsbundle"
                    && l.what.starts_with("Hermes v"))
        );
    }
    assert!(
        report
            .endpoints
            .iter()
            .flat_map(|h| &h.urls)
            .all(|u| !u.url.contains("apiwss") && !u.url.contains("appsk_")),
        "{}",
        report.human()
    );
    // The Mach-O's C strings.
    let rt = endpoint(&report, "wss://rt.example.com/socket").expect("rt");
    assert!(rt.seen[0].file == "Payload/Chat.app/Chat" && rt.seen[0].what == "__TEXT,__cstring");
    // ATS permits plain HTTP everywhere: a plaintext URL is high.
    let tracker = report
        .with_id("endpoint.plaintext_http")
        .find(|f| f.title.contains("tracker.example.org"))
        .expect("tracker");
    assert_eq!(tracker.severity, Severity::High);
    assert_eq!(
        finding(&report, "secret.stripe_secret_key").location.file,
        "Payload/Chat.app/main.jsbundle"
    );
}

/// What each hostile package is refused with, within a bound.
#[test]
fn hostile_packages_are_refused_in_bounded_time_and_an_honest_one_is_read_after() {
    const BOUND: Duration = Duration::from_secs(20);
    let check = |what: &str, data: &[u8], limits: Limits| -> Result<Report, Refusal> {
        let started = Instant::now();
        let result = sluice_scan::read_bytes(data, limits);
        assert!(
            started.elapsed() < BOUND,
            "{what} took {:?}",
            started.elapsed()
        );
        result
    };
    // A zip bomb: 64 MiB of zeros deflated to ~64 KiB, declared honestly.
    let zeros = vec![0u8; 64 << 20];
    let bomb = mobile_app::zip(&[("assets/data.bin", &zeros)]);
    assert!(bomb.len() < 1 << 20);
    let refused = check("zip bomb", &bomb, Limits::default()).err();
    assert!(
        matches!(refused, Some(Refusal::RatioTooHigh { ratio, .. }) if ratio > 200),
        "{refused:?}"
    );
    // The same bomb lying about its size in both headers (declared 1 KiB):
    // the bytes inflated are what count.
    let mut liar = bomb.clone();
    for (at, _) in liar
        .clone()
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == [0x50, 0x4b, 0x03, 0x04] || *w == [0x50, 0x4b, 0x01, 0x02])
    {
        let size_at = if liar[at + 2] == 0x03 {
            at + 22
        } else {
            at + 24
        };
        liar[size_at..size_at + 4].copy_from_slice(&1024u32.to_le_bytes());
    }
    let small = Limits {
        max_total_bytes: 8 << 20,
        ..Limits::default()
    };
    let refused = check("lying zip bomb", &liar, small).err();
    assert!(
        matches!(
            refused,
            Some(
                Refusal::TotalTooLarge { .. }
                    | Refusal::EntryTooLarge { .. }
                    | Refusal::BadArchive { .. }
            )
        ),
        "{refused:?}"
    );
    // Path traversal.
    let slip = mobile_app::raw_zip(&[
        ("AndroidManifest.xml", b"x"),
        ("../../../../tmp/evil.so", b"\x7fELF"),
    ]);
    let refused = check("zip slip", &slip, Limits::default()).err();
    assert_eq!(
        refused,
        Some(Refusal::PathTraversal {
            entry: "../../../../tmp/evil.so".into()
        })
    );
    assert!(refused.is_some_and(|r| r.to_string().contains("path traversal")));
    // Archives nested four deep.
    let mut nested = mobile_app::raw_zip(&[("classes.dex", b"dex\n")]);
    for _ in 0..4 {
        nested = mobile_app::raw_zip(&[("inner.apk", &nested)]);
    }
    let refused = check("nested archives", &nested, Limits::default()).err();
    assert!(
        matches!(refused, Some(Refusal::TooDeep { limit: 3, .. })),
        "{refused:?}"
    );
    // Too many entries.
    let names: Vec<String> = (0..200).map(|i| format!("res/raw/f{i}")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let many = mobile_app::raw_zip(&entries);
    let few = Limits {
        max_entries: 100,
        ..Limits::default()
    };
    assert_eq!(
        check("many entries", &many, few).err(),
        Some(Refusal::TooManyEntries { limit: 100 })
    );
    // Not a zip at all.
    assert!(matches!(
        check("garbage", b"PK\x03\x04 not really", Limits::default()).err(),
        Some(Refusal::BadArchive { .. })
    ));

    // Malformed files inside a package: each a clear error of its own,
    // the rest of the package still read.
    let dex = mobile_app::dex(&["wss://a.example.com/ws"], "LA;", &[]);
    let truncated = &dex[..dex.len() / 2];
    // A binary plist whose root array contains itself.
    let mut recursive = b"bplist00".to_vec();
    let array_at = recursive.len();
    recursive.extend_from_slice(&[0xa1, 0x00]); // array of 1: object 0 (itself)
    let offsets_at = recursive.len();
    recursive.push(array_at as u8);
    recursive.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 1]);
    recursive.extend_from_slice(&1u64.to_be_bytes());
    recursive.extend_from_slice(&0u64.to_be_bytes());
    recursive.extend_from_slice(&(offsets_at as u64).to_be_bytes());
    // A binary plist whose objects share children 30 levels deep (2^30 leaves).
    let mut shared = b"bplist00".to_vec();
    let mut offsets = vec![shared.len()];
    shared.extend_from_slice(&[0x10, 0x01]); // object 0: integer 1
    for i in 1..=30u8 {
        offsets.push(shared.len());
        shared.extend_from_slice(&[0xa2, i - 1, i - 1]);
    }
    let table = shared.len();
    for o in &offsets {
        shared.extend_from_slice(&(*o as u16).to_be_bytes());
    }
    shared.extend_from_slice(&[0, 0, 0, 0, 0, 0, 2, 1]);
    shared.extend_from_slice(&(offsets.len() as u64).to_be_bytes());
    shared.extend_from_slice(&30u64.to_be_bytes());
    shared.extend_from_slice(&(table as u64).to_be_bytes());
    let hostile_files = mobile_app::zip(&[
        ("classes.dex", truncated),
        ("Payload/A.app/Info.plist", &recursive),
        ("Payload/A.app/Settings.plist", &shared),
        (
            "assets/config.json",
            b"{\"url\": \"wss://still.example.com/ws\"}",
        ),
    ]);
    let report = check("malformed files", &hostile_files, Limits::default()).expect("read on");
    let unreadable = report.coverage.unreadable.join("\n");
    assert!(unreadable.contains("classes.dex: string"), "{unreadable}");
    assert!(
        unreadable.contains("Info.plist:") && unreadable.to_lowercase().contains("recursive"),
        "{unreadable}"
    );
    assert!(
        unreadable.contains("Settings.plist: more than 250000 values"),
        "{unreadable}"
    );
    assert!(endpoint(&report, "wss://still.example.com/ws").is_some());

    // A time bound of zero refuses at the first entry.
    let apk = chat_apk(&[]);
    let instant = Limits {
        timeout: Duration::ZERO,
        ..Limits::default()
    };
    assert!(matches!(
        check("timeout", &apk, instant).err(),
        Some(Refusal::Timeout { .. })
    ));

    // And an honest package is read in full after all of that.
    let report = check("honest", &apk, Limits::default()).expect("the honest APK");
    assert!(endpoint(&report, "wss://chat.example.com/ws/app").is_some());
    assert!(report.with_id("secret.signing_key").count() == 1);
}

#[tokio::test]
async fn probe_joins_sluice_dev_and_the_node_peer_in_one_report() {
    let dev = DevSluice::start().await;
    let files = Files::new();
    let node = Peer::node(&files);
    let dev_url = format!("wss://{}/ws/demo", dev.addr);
    let node_url = format!("wss://{}/ws/{}", node.addr, peers::TENANT);
    let dir = TempDir::new();
    let apk = dir.0.join("live.apk");
    std::fs::write(&apk, chat_apk(&[&dev_url, &node_url])).expect("write");
    let ca = dir.0.join("ca.pem");
    let mut pem = std::fs::read(dev.path("cert.pem")).expect("dev cert");
    pem.extend(std::fs::read(files.path("cert.pem")).expect("peer cert"));
    std::fs::write(&ca, pem).expect("ca");

    let args = ScanArgs {
        probe: true,
        token_for: vec![
            format!("{}={}", dev.addr, dev.token()),
            format!("{}={}", node.addr, peers::token("alice", "chat:write")),
        ],
        ca: Some(ca),
        allow: vec!["127.0.0.1".into()],
        // Sluice pings an idle connection after 20 s; Node's header timeout is 60 s.
        wait: 25,
        ..ScanArgs::new(&apk)
    };
    let report = tokio::time::timeout(Duration::from_secs(120), sluice_scan::scan(&args))
        .await
        .expect("the scan ends")
        .expect("the scan runs");
    let json = serde_json::to_value(&report).expect("json");
    // Only the allowed loopback endpoints were probed, both of them.
    let probed: Vec<&str> = json["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .filter_map(|p| p["url"].as_str())
        .collect();
    assert_eq!(probed.len(), 2, "{probed:?}");
    assert!(probed.contains(&dev_url.as_str()) && probed.contains(&node_url.as_str()));
    let summary = |url: &str| {
        json["probes"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["url"] == url))
            .map(|p| p["summary"].clone())
            .unwrap_or_default()
    };
    assert_eq!(summary(&dev_url)["fail"], 0, "{:#}", json["probes"]);
    assert_eq!(
        summary(&dev_url)["could_not_tell"],
        0,
        "{:#}",
        json["probes"]
    );
    let node_fails: Vec<&str> = report
        .findings
        .iter()
        .filter(|f| f.id.starts_with("probe.") && f.location.what == node_url)
        .map(|f| f.id.as_str())
        .collect();
    assert!(
        node_fails.contains(&"probe.transport.aead_only"),
        "{node_fails:?}"
    );
    assert!(
        node_fails.contains(&"probe.timeouts.handshake"),
        "{node_fails:?}"
    );
    assert!(report.findings.iter().all(|f| f.location.what != dev_url));
    // The app's own findings are in the same report.
    assert!(ids(&report).contains(&"endpoint.plaintext_websocket".to_owned()));
    assert!(report.human().contains(&format!("Probe of {node_url}")));
}

#[test]
fn the_cli_reports_and_exits_by_severity() {
    let bin = sluice_tests::sluice_bin();
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(&bin)
            .arg("scan")
            .args(args)
            .output()
            .expect("run sluice scan");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A real APK with nothing high: exit 0, a line per finding, the hosts.
    let settings = fixtures().join(SETTINGS_APK);
    let (code, out, err) = run(&[settings.as_os_str()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("(Android APK io.appium.settings)"), "{out}");
    assert!(
        out.contains("MED   MASVS-RESILIENCE-4 the app is debuggable  [android.debuggable]"),
        "{out}"
    );
    assert!(out.contains("  www.googleapis.com\n"), "{out}");
    // A built APK with high findings: exit 1; --json for CI.
    let dir = TempDir::new();
    let apk = dir.0.join("chat.apk");
    std::fs::write(&apk, chat_apk(&[])).expect("write");
    let (code, out, _) = run(&[apk.as_os_str(), "--json".as_ref()]);
    assert_eq!(code, Some(1), "{out}");
    let json: Value = serde_json::from_str(&out).expect("JSON output");
    assert!(
        json["summary"]["high"].as_u64().is_some_and(|n| n >= 3),
        "{json:#}"
    );
    assert_eq!(json["findings"][0]["severity"], "high");
    // A refused package: exit 2 and the reason.
    let bomb = dir.0.join("bomb.apk");
    std::fs::write(&bomb, mobile_app::raw_zip(&[("../evil", b"x")])).expect("write");
    let (code, out, err) = run(&[bomb.as_os_str()]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("refused") && err.contains("path traversal"),
        "{err}"
    );
    // --token without --probe is a usage error, not a silent no-op.
    let (code, _, err) = run(&[apk.as_os_str(), "--token".as_ref(), "x".as_ref()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--probe"), "{err}");
}
