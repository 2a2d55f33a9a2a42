//! Property lists, binary and XML: bounded in depth and values, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_scan::limits::{MAX_PLIST_DEPTH, MAX_PLIST_EVENTS};

fuzz_target!(|data: &[u8]| {
    if let Ok(leaves) = sluice_scan::property_list::leaves(data) {
        assert!(leaves.len() <= MAX_PLIST_EVENTS);
        assert!(leaves.iter().all(|l| l.path.len() <= MAX_PLIST_DEPTH + 1));
    }
});
