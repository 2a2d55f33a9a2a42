//! `sluice scan`: the pre-submission check of a mobile app, from the
//! binary's side. Reads an Android `.apk`/`.aab` or an iOS `.ipa` (or a
//! folder of one unpacked) without running it, and reports the endpoints
//! it talks to (grouped by host, plaintext or TLS), the platform's
//! transport policy (Android cleartext and network security config, iOS
//! App Transport Security), and secrets that belong on a server, each with
//! the file and offset where it was seen and the OWASP MASVS control it
//! falls under. With `--probe`, its `wss://` endpoints are audited with
//! `sluice probe`'s checks and the results joined into the same report.
//!
//! Hostile packages are refused (zip bombs, path traversal, nesting) within
//! bounds on bytes, entries, ratio, depth and time (`limits`); every
//! format reader checks offsets before use and returns errors, never
//! panics (fuzz targets in `runtime/fuzz`).

#![forbid(unsafe_code)]

pub mod android_policy;
pub mod axml;
pub mod contents;
pub mod dex;
pub mod endpoints;
pub mod hermes;
pub mod ios_policy;
pub mod limits;
pub mod native;
pub mod package;
pub mod property_list;
pub mod report;
pub mod secrets;
pub mod server_audit;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

pub use limits::{Limits, Refusal};
pub use report::{Finding, Report, Severity};

use crate::contents::Contents;
use crate::limits::Budget;
use crate::server_audit::ProbeOptions;

/// `sluice scan`'s arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct ScanArgs {
    /// The app: an .apk, .aab or .ipa, or a folder of one unpacked.
    pub app: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Then audit every wss:// endpoint found (or those --allow names) with
    /// `sluice probe`'s checks.
    #[arg(long)]
    pub probe: bool,
    /// With --probe: a token for the endpoints, sent as `Authorization: Bearer`.
    #[arg(long, requires = "probe")]
    pub token: Option<String>,
    /// With --probe: a token for one host, as HOST=TOKEN or HOST:PORT=TOKEN
    /// (repeatable; overrides --token there).
    #[arg(long = "token-for", value_name = "HOST=TOKEN", requires = "probe")]
    pub token_for: Vec<String>,
    /// With --probe: PEM file of CA certificates to trust instead of the
    /// public web roots.
    #[arg(long, value_name = "FILE", requires = "probe")]
    pub ca: Option<PathBuf>,
    /// With --probe: only probe endpoints on these hosts (HOST, HOST:PORT,
    /// or *.DOMAIN; repeatable).
    #[arg(long, value_name = "HOST", requires = "probe")]
    pub allow: Vec<String>,
    /// With --probe: seconds the timeout checks wait for a server to cut off
    /// a hanging handshake or ping an idle connection.
    #[arg(long, value_name = "SECS", default_value_t = sluice_probe::DEFAULT_WAIT_SECS)]
    pub wait: u64,
    /// Bound on the reading, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = limits::DEFAULT_TIMEOUT.as_secs())]
    pub timeout: u64,
}

impl ScanArgs {
    /// Arguments for scanning `app` with the defaults.
    pub fn new(app: impl Into<PathBuf>) -> Self {
        Self {
            app: app.into(),
            json: false,
            probe: false,
            token: None,
            token_for: Vec::new(),
            ca: None,
            allow: Vec::new(),
            wait: sluice_probe::DEFAULT_WAIT_SECS,
            timeout: limits::DEFAULT_TIMEOUT.as_secs(),
        }
    }
}

/// Exit status when the package was refused or could not be read.
pub const EXIT_REFUSED: u8 = 2;

/// Scan, print, and return the exit status: 1 when any finding is high,
/// 2 when the package was refused, 0 otherwise.
pub async fn run(args: ScanArgs) -> anyhow::Result<ExitCode> {
    let report = match scan(&args).await {
        Ok(r) => r,
        Err(refusal) => {
            eprintln!("sluice scan: refused: {refusal}");
            return Ok(ExitCode::from(EXIT_REFUSED));
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.human());
    }
    Ok(if report.has_high() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Read the package (on a blocking thread), then probe if asked.
pub async fn scan(args: &ScanArgs) -> Result<Report, Refusal> {
    let limits = Limits {
        timeout: Duration::from_secs(args.timeout.max(1)),
        ..Limits::default()
    };
    let app = args.app.clone();
    let mut report = tokio::task::spawn_blocking(move || read(&app, limits))
        .await
        .map_err(|e| Refusal::BadArchive {
            what: args.app.display().to_string(),
            error: format!("the reader stopped: {e}"),
        })??;
    if args.probe {
        let tokens_for = args
            .token_for
            .iter()
            .filter_map(|t| t.split_once('=').map(|(h, t)| (h.to_owned(), t.to_owned())))
            .collect();
        let opts = ProbeOptions {
            token: args.token.clone(),
            tokens_for,
            ca: args.ca.clone(),
            allow: args.allow.clone(),
            wait: args.wait.max(1),
        };
        server_audit::probe(&mut report, &opts).await;
    }
    Ok(report)
}

/// Read a package within `limits` (synchronous).
pub fn read(app: &Path, limits: Limits) -> Result<Report, Refusal> {
    let mut budget = Budget::new(limits);
    let mut contents = Contents::default();
    let kind = package::walk(app, &mut budget, &mut contents)?;
    Ok(contents.finish(app.display().to_string(), kind, &budget, &today()))
}

/// Read a package held in memory (a zip), within `limits`: for fuzzing
/// and tests.
pub fn read_bytes(data: &[u8], limits: Limits) -> Result<Report, Refusal> {
    let mut budget = Budget::new(limits);
    let mut contents = Contents::default();
    let kind = package::walk_bytes(data, &mut budget, &mut contents)?;
    Ok(contents.finish("(memory)".into(), kind, &budget, &today()))
}

/// Today's date, `YYYY-MM-DD` (UTC), for pin expiry.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn today_is_a_date() {
        let t = super::today();
        assert_eq!(t.len(), 10);
        assert!(t.as_str() > "2024-01-01", "{t}");
    }
}
