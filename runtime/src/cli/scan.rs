//! `sluice scan`: the pre-submission check of a mobile app from the
//! binary's side (the `sluice-scan` crate does the work; see docs/scan.md).

use std::process::ExitCode;

pub use sluice_scan::ScanArgs;

/// Scan the package, print the report, and return its exit status: 1 on
/// any high finding, 2 when the package was refused, 0 otherwise.
pub async fn run(args: ScanArgs) -> anyhow::Result<ExitCode> {
    sluice_scan::run(args).await
}
