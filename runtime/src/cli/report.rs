//! A benchmark's report, printed as JSON (`--json`) or for people.

use std::process::ExitCode;

/// Print `report` as pretty JSON when `json`, else with `human`.
pub fn print<R: serde::Serialize>(
    json: bool,
    report: &R,
    human: impl FnOnce(&R),
) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        human(report);
    }
    Ok(ExitCode::SUCCESS)
}
