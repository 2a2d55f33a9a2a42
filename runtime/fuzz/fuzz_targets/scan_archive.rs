//! A whole app package from an attacker: `sluice scan` must refuse or
//! report, never panic, and never read more than its bounds allow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_scan::Limits;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_entries: 64,
        max_entry_bytes: 1 << 20,
        max_total_bytes: 4 << 20,
        ..Limits::default()
    };
    if let Ok(report) = sluice_scan::read_bytes(data, limits) {
        assert!(report.coverage.bytes <= 4 << 20);
        assert!(report.coverage.entries <= 64);
    }
});
