//! The files `sluice dev` serves from, written to a folder: the server's
//! configuration, the demo tenant (in the file for the benchmarks and the
//! fleet; created through the management API by `sluice dev`, see
//! [`DemoConfig::tenant_json`]), a self-signed certificate, an HMAC secret
//! and tokens, each secret private to its owner.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use sluice_config::{Config, DEFAULT_DATA_DIR};
use sluice_token::{MintError, Minter};

/// `bytes` random bytes from the OS, as hex.
pub fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut buf)
        .map_err(|_| anyhow::anyhow!("no secure random source"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The demo tenant: its id (`/ws/demo`), and what its tokens must say.
pub const DEMO_TENANT: &str = "demo";
/// See [`DEMO_TENANT`].
pub const DEMO_ISSUER: &str = "sluice-dev";
/// See [`DEMO_TENANT`].
pub const DEMO_AUDIENCE: &str = "sluice";
/// The subject of the token `sluice dev` prints.
pub const DEV_SUBJECT: &str = "dev-user";
/// The scope of the token `sluice dev` prints: it may send to rooms.
pub const DEV_SCOPE: &str = "chat:write";
/// The kid of the demo tenant's generated key when `sluice dev` creates it
/// through the management API.
pub const DEMO_KID: &str = "k1";

/// The demo tenant's `auth` tables: its issuer, audience and HMAC key
/// (`secret.key`, beside the config, written by [`write_secret`]). Every
/// configuration with the demo tenant starts from these (`sluice dev`, its
/// fleet, the cluster and marketplace benchmarks).
pub fn demo_auth() -> String {
    format!(
        r#"[tenants.{DEMO_TENANT}.auth]
issuer = "{DEMO_ISSUER}"
audience = "{DEMO_AUDIENCE}"

[[tenants.{DEMO_TENANT}.auth.keys]]
algorithm = "HS256"
secret_file = "secret.key"
"#
    )
}

/// The token `sluice dev` prints (for [`DEV_SUBJECT`], scope [`DEV_SCOPE`],
/// valid for an hour), minted with the demo tenant's key in `config`.
pub fn dev_token(config: &Config) -> Result<String, MintError> {
    Minter::for_tenant(config, DEMO_TENANT)?.mint(
        DEV_SUBJECT,
        &[DEV_SCOPE.to_owned()],
        3600,
        serde_json::Map::new(),
    )
}

/// What the demo configuration is made of: `sluice dev`'s, and the
/// variations its fleet and the benchmarks run (another store, a node of a
/// fleet). Paths are relative to the folder the file is written to.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// `[server] listen`.
    pub listen: String,
    /// The echo handler's component.
    pub echo: PathBuf,
    /// The chat handler's component.
    pub chat: PathBuf,
    /// More browser origins for the demo tenant (the demo page's).
    pub page_origins: Vec<String>,
    /// `[server] admin_listen` (None: the default).
    pub admin_listen: Option<SocketAddr>,
    /// Where the durable store lives (None: in memory).
    pub data_dir: Option<String>,
    /// A node of a fleet: `[cluster]` with this NATS URL and node name.
    pub node: Option<(String, String)>,
    /// `[management] listen` (None: the default, 127.0.0.1:9443).
    pub management_listen: Option<SocketAddr>,
    /// The demo tenant in the file (false: `sluice dev` creates it through
    /// the management API, and the file has no tenant).
    pub tenant_in_file: bool,
}

impl DemoConfig {
    /// Durable under `data`, the default admin listener, the demo tenant
    /// in the file, the management API on any free loopback port (several
    /// servers of benchmarks and tests run side by side; `sluice dev` sets
    /// the one it bound).
    pub fn new(listen: &str, echo: &Path, chat: &Path) -> Self {
        Self {
            listen: listen.to_owned(),
            echo: echo.to_owned(),
            chat: chat.to_owned(),
            page_origins: Vec::new(),
            admin_listen: None,
            data_dir: Some(DEFAULT_DATA_DIR.to_owned()),
            node: None,
            management_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            tenant_in_file: true,
        }
    }

    /// The configuration file's text.
    pub fn toml(&self) -> String {
        let admin_listen = self
            .admin_listen
            .map(|a| format!("admin_listen = \"{a}\"\n"))
            .unwrap_or_default();
        let store = match &self.data_dir {
            Some(data_dir) => format!(
                "kind = \"durable\"   # handler state, channel history and API tenants survive restarts\n\
                 data_dir = {data_dir:?}  # beside this file"
            ),
            None => "kind = \"memory\"   # nothing survives a restart".to_owned(),
        };
        let management = self
            .management_listen
            .map(|a| {
                format!(
                    "\n# The management API (HTTPS, this certificate): `sluice tenant`, `sluice handler`, `sluice reload`.\n\
                     [management]\nlisten = \"{a}\"\n"
                )
            })
            .unwrap_or_default();
        let cluster = self
            .node
            .as_ref()
            .map(|(nats_url, node)| {
                format!("\n[cluster]\nnats_urls = [{nats_url:?}]\nnode = {node:?}\n")
            })
            .unwrap_or_default();
        let (header, tenant) = if self.tenant_in_file {
            (
                "a demo tenant for local development",
                format!("\n{}", self.tenant_toml(false)),
            )
        } else {
            (
                "the server; its demo tenant is created through the management API \
                 (`sluice tenant show demo -c sluice.toml`)",
                String::new(),
            )
        };
        format!(
            r#"# Generated by `sluice dev`: {header}.
[server]
listen = "{listen}"
{admin_listen}tls_cert = "cert.pem"
tls_key = "key.pem"
admin_token = {{ secret_file = "admin.token" }}   # the operator's: `sluice reload -c`, `sluice tenant -c`

[store]
{store}
{management}{tenant}{cluster}"#,
            listen = self.listen,
        )
    }

    /// The demo tenant as the management API takes it (the JSON of its
    /// `[tenants.demo]` table): an HS256 key [`DEMO_KID`] without a
    /// source (the server generates its secret), no management token (the
    /// API makes one).
    pub fn tenant_json(&self) -> anyhow::Result<serde_json::Value> {
        let text = self.tenant_toml(true);
        let table: toml::Table =
            toml::from_str(&text).context("the demo tenant's TOML does not parse")?;
        let tenant = table
            .get("tenants")
            .and_then(|t| t.get(DEMO_TENANT))
            .context("the demo tenant's TOML has no [tenants.demo]")?;
        Ok(serde_json::to_value(tenant)?)
    }

    /// The `[tenants.demo]` tables; `for_api`: as the management API takes
    /// them (see [`DemoConfig::tenant_json`]).
    fn tenant_toml(&self, for_api: bool) -> String {
        let mut origins = vec![
            "https://localhost:8443".to_owned(),
            "http://localhost:5173".to_owned(),
        ];
        origins.extend(self.page_origins.iter().cloned());
        let (auth, managed) = if for_api {
            (
                format!(
                    r#"[tenants.{DEMO_TENANT}.auth]
issuer = "{DEMO_ISSUER}"
audience = "{DEMO_AUDIENCE}"

[[tenants.{DEMO_TENANT}.auth.keys]]
kid = "{DEMO_KID}"
algorithm = "HS256"
"#
                ),
                String::new(),
            )
        } else {
            (
                demo_auth(),
                format!(
                    "token = {{ secret_file = \"{DEMO_MANAGE_TOKEN}\" }}   # manages tenant demo only\n"
                ),
            )
        };
        format!(
            r#"[tenants.{DEMO_TENANT}]
origins = {origins:?}
exposed_claims = ["name"]

{auth}
[tenants.demo.handlers.echo]
component = {echo:?}

[tenants.demo.handlers.chat]
component = {chat:?}
grants = ["state", "clock"]

[tenants.demo.routes.echo]
handler = "echo"

[tenants.demo.routes."chat.join"]
handler = "chat"
channel = "subscribe"

[tenants.demo.routes."chat.leave"]
handler = "chat"
channel = "subscribe"

[tenants.demo.routes."chat.send"]
handler = "chat"
channel = "publish"
scopes = ["{DEV_SCOPE}"]
schema = {{ type = "object", required = ["text"], additionalProperties = false, properties = {{ text = {{ type = "string", minLength = 1, maxLength = 500 }} }} }}

# Handlers the demo tenant pushes itself: `sluice handler push demo bot <file.wasm>`
# (verified, versioned; canary, shadow and rollback without a restart).
[tenants.demo.managed]
{managed}grants = ["state", "log", "clock"]

[tenants.demo.routes.bot]
handler = "bot"   # a pushed handler: `unavailable` until one is pushed

[[tenants.demo.channels]]
pattern = "room:{{id}}"
publish_scopes = ["{DEV_SCOPE}"]
history = {{ size = 100, ttl_secs = 600 }}   # reconnecting clients recover what they missed
presence = true                             # {{"type":"presence","channel":"room:1"}}
presence_events = true                      # join / leave events

[[tenants.demo.channels]]
pattern = "user:{{sub}}"
publish = false
"#,
            echo = self.echo.display().to_string(),
            chat = self.chat.display().to_string(),
        )
    }
}

/// The chat handler `sluice dev` serves: `custom` (`--chat`), checked to
/// be a readable file and made absolute, or the Rust demo handler.
pub fn chat_component(custom: Option<&Path>, rust_chat: &Path) -> anyhow::Result<PathBuf> {
    let Some(path) = custom else {
        return Ok(rust_chat.to_owned());
    };
    path.canonicalize().with_context(|| {
        format!(
            "--chat {}: no such component (build one with handlers/build-lang js|python|c)",
            path.display()
        )
    })
}

/// Write the certificate (once), the secret and tokens (once) and the demo
/// config into `dir`; returns the config's path.
pub fn prepare(dir: &Path, demo: &DemoConfig) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_cert(dir, false)?;
    write_secret(dir, false)?;
    write_admin_token(dir)?;
    if demo.tenant_in_file {
        write_token(dir, DEMO_MANAGE_TOKEN)?;
    }
    let config_path = dir.join("sluice.toml");
    std::fs::write(&config_path, demo.toml())?;
    Ok(config_path)
}

/// Names a self-signed certificate made by [`write_cert`] is valid for.
pub const CERT_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// Write `dir/cert.pem` and `dir/key.pem`: a self-signed ECDSA P-256
/// certificate for [`CERT_NAMES`] (the dev server's, the benchmark's), valid
/// for [`CERT_VALIDITY_DAYS`]. An existing pair is kept unless `overwrite`,
/// or unless [`cert_needs_renewal`] says so (expired, about to expire, or
/// not one this version makes). Returns both paths.
pub fn write_cert(dir: &Path, overwrite: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if overwrite || !cert.exists() || !key.exists() || cert_needs_renewal(&cert, SystemTime::now())
    {
        let (c, k) = dev_cert(SystemTime::now())?;
        std::fs::write(&cert, c).with_context(|| format!("writing {}", cert.display()))?;
        write_private(&key, k.as_bytes())?;
    } else {
        keep_private(&key)?;
    }
    Ok((cert, key))
}

/// Write `dir/secret.key`: a random HMAC secret (64 hex characters). An
/// existing one is kept unless `overwrite`. Returns its path.
pub fn write_secret(dir: &Path, overwrite: bool) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let secret = dir.join("secret.key");
    if overwrite || !secret.exists() {
        write_private(&secret, random_hex(32)?.as_bytes())?;
    } else {
        keep_private(&secret)?;
    }
    Ok(secret)
}

/// How long a certificate made by [`write_cert`] is valid.
pub const CERT_VALIDITY_DAYS: u64 = 90;

/// A certificate with less than this left is replaced by [`write_cert`].
pub const CERT_RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The dev certificate made at `now`: valid from a day before `now` (clocks
/// drift) for [`CERT_VALIDITY_DAYS`] after it. PEM certificate and key.
pub fn dev_cert(now: SystemTime) -> anyhow::Result<(String, String)> {
    let from = now.checked_sub(DAY).unwrap_or(now);
    let until = now + DAY * CERT_VALIDITY_DAYS as u32;
    self_signed_valid(&CERT_NAMES, from, until)
}

/// A self-signed ECDSA P-256 certificate for `names`, valid from `from`
/// until `until` (both after 1970). PEM certificate and key.
pub fn self_signed_valid(
    names: &[&str],
    from: SystemTime,
    until: SystemTime,
) -> anyhow::Result<(String, String)> {
    let since_epoch = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .context("a certificate date before 1970")
    };
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let mut params = rcgen::CertificateParams::new(names)?;
    params.not_before = epoch + since_epoch(from)?;
    params.not_after = epoch + since_epoch(until)?;
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Whether the certificate in `path` should be replaced at `now`: it cannot
/// be read, it is not yet valid, it has less than [`CERT_RENEW_BEFORE`]
/// left, or it is valid for longer than [`write_cert`] makes them (one from
/// an older version, valid for centuries).
pub fn cert_needs_renewal(path: &Path, now: SystemTime) -> bool {
    let Some((from, until)) = std::fs::read(path).ok().and_then(|pem| cert_validity(&pem)) else {
        return true;
    };
    let longest = now + DAY * (CERT_VALIDITY_DAYS as u32 + 1);
    from > now + DAY || until < now + CERT_RENEW_BEFORE || until > longest
}

/// The validity (notBefore, notAfter) of the first certificate in `pem`.
pub fn cert_validity(pem: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let der = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (cert, _) = der::expect(der.as_ref(), der::SEQUENCE)?;
    let (mut tbs, _) = der::expect(cert, der::SEQUENCE)?;
    if tbs.first() == Some(&der::VERSION) {
        tbs = der::next(tbs)?.2;
    }
    // serialNumber, signature, issuer, then validity.
    for tag in [der::INTEGER, der::SEQUENCE, der::SEQUENCE] {
        tbs = der::expect(tbs, tag)?.1;
    }
    let (validity, _) = der::expect(tbs, der::SEQUENCE)?;
    let (tag, not_before, rest) = der::next(validity)?;
    let from = der::time(tag, not_before)?;
    let (tag, not_after, _) = der::next(rest)?;
    Some((from, der::time(tag, not_after)?))
}

/// `t` as a UTC calendar date, `YYYY-MM-DD`.
pub fn format_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) -> days since 1970-01-01 (`days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Just enough DER to find a certificate's validity.
mod der {
    use std::time::{Duration, SystemTime};

    pub const INTEGER: u8 = 0x02;
    pub const SEQUENCE: u8 = 0x30;
    /// `[0] EXPLICIT Version` of a TBSCertificate.
    pub const VERSION: u8 = 0xa0;
    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;

    /// The first element of `input`: (tag, contents, what follows).
    pub fn next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }

    /// The first element, which must have `tag`: (contents, what follows).
    pub fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (t, contents, rest) = next(input)?;
        (t == tag).then_some((contents, rest))
    }

    /// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
    pub fn time(tag: u8, contents: &[u8]) -> Option<SystemTime> {
        let text = std::str::from_utf8(contents).ok()?.strip_suffix('Z')?;
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let num = |s: &str| s.parse::<u32>().ok();
        let (year, rest) = match (tag, text.len()) {
            (UTC_TIME, 12) => {
                let yy = i64::from(num(&text[..2])?);
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
            }
            (GENERALIZED_TIME, 14) => (i64::from(num(&text[..4])?), &text[4..]),
            _ => return None,
        };
        let (month, day) = (num(&rest[0..2])?, num(&rest[2..4])?);
        let (h, m, s) = (num(&rest[4..6])?, num(&rest[6..8])?, num(&rest[8..10])?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
            return None;
        }
        let days = super::days_from_civil(year, month, day);
        let secs = days * 86_400 + i64::from(h * 3600 + m * 60 + s);
        let secs = u64::try_from(secs).ok()?;
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
    }
}

/// Write `dir/admin.token` (once): the bearer token `POST /reload` on the
/// admin listener requires, which `sluice reload -c` reads. Returns its path.
pub fn write_admin_token(dir: &Path) -> anyhow::Result<PathBuf> {
    write_token(dir, "admin.token")
}

/// The demo tenant's management token file ([`write_token`]).
pub const DEMO_MANAGE_TOKEN: &str = "demo-manage.token";

/// Write a random token to `dir/name` once (kept private); its path.
pub fn write_token(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let token = dir.join(name);
    if token.exists() {
        keep_private(&token)?;
    } else {
        write_private(&token, random_hex(32)?.as_bytes())?;
    }
    Ok(token)
}

/// Permissions of the private key and the HMAC secret: the owner may read
/// and write them, nobody else may read them.
#[cfg(unix)]
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Write a secret to `path` so that only its owner can read it: the bytes
/// go to a new file created with [`PRIVATE_FILE_MODE`] (never readable by
/// others, not even for a moment), which then replaces `path` at once.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let context = || format!("writing {}", path.display());
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        name.as_deref().unwrap_or("secret"),
        std::process::id()
    ));
    // A file left by a crashed run may have other permissions: create anew.
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, PRIVATE_FILE_MODE);
    let written = options
        .open(&tmp)
        .and_then(|mut f| f.write_all(contents).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(context)
}

/// An existing secret that is kept: if an earlier version of Sluice wrote it
/// readable by others, make it private and say so (the old contents may have
/// been read; replace it with `sluice cert --force` to be sure).
fn keep_private(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))
                .with_context(|| format!("making {} private", path.display()))?;
            tracing::warn!(
                file = %path.display(),
                "the file was readable by other users; it is now private (0600). \
                 Replace it (sluice cert --force) if others may have read it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-dev-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_private_key_and_the_secret_are_readable_by_their_owner_only() {
        let dir = temp_dir("modes");
        let config = prepare(
            &dir,
            &DemoConfig::new("127.0.0.1:0", Path::new("e.wasm"), Path::new("c.wasm")),
        )
        .unwrap();
        assert_eq!(mode(&dir.join("key.pem")), 0o600);
        assert_eq!(mode(&dir.join("secret.key")), 0o600);
        assert_eq!(mode(&dir.join("admin.token")), 0o600);
        assert_eq!(mode(&dir.join(DEMO_MANAGE_TOKEN)), 0o600);
        // Public files stay readable: only secrets are private.
        assert_ne!(mode(&dir.join("cert.pem")) & 0o044, 0);
        assert_ne!(mode(&config) & 0o044, 0);
        // Forced replacement writes a new private file, even over a
        // world-readable one, and leaves no temporary file behind.
        std::fs::set_permissions(
            dir.join("secret.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let old = std::fs::read_to_string(dir.join("secret.key")).unwrap();
        write_secret(&dir, true).unwrap();
        write_cert(&dir, true).unwrap();
        assert_ne!(
            std::fs::read_to_string(dir.join("secret.key")).unwrap(),
            old
        );
        assert_eq!(mode(&dir.join("secret.key")), 0o600);
        assert_eq!(mode(&dir.join("key.pem")), 0o600);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "admin.token",
                "cert.pem",
                "demo-manage.token",
                "key.pem",
                "secret.key",
                "sluice.toml"
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_kept_secret_that_others_could_read_is_made_private() {
        let dir = temp_dir("legacy");
        // What earlier versions wrote: 0644.
        std::fs::write(dir.join("secret.key"), "a".repeat(64)).unwrap();
        std::fs::set_permissions(
            dir.join("secret.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        write_cert(&dir, false).unwrap();
        std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        let key = std::fs::read_to_string(dir.join("key.pem")).unwrap();
        prepare(
            &dir,
            &DemoConfig::new("127.0.0.1:0", Path::new("e.wasm"), Path::new("c.wasm")),
        )
        .unwrap();
        // Kept (not replaced), but no longer readable by others.
        assert_eq!(
            std::fs::read_to_string(dir.join("secret.key")).unwrap(),
            "a".repeat(64)
        );
        assert_eq!(std::fs::read_to_string(dir.join("key.pem")).unwrap(), key);
        assert_eq!(mode(&dir.join("secret.key")), 0o600);
        assert_eq!(mode(&dir.join("key.pem")), 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
