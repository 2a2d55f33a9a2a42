//! Android binary XML and resource tables: errors, never panics; strings
//! lie inside the file; nesting stays within its bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_scan::axml;

fn depth(e: &axml::Element) -> usize {
    1 + e.children.iter().map(depth).max().unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = axml::parse(data) {
        assert!(depth(&doc.root) <= axml::MAX_DEPTH + 1);
        assert!(doc.pool.strings.iter().all(|(o, _)| (*o as usize) < data.len()));
    }
    if let Ok(pool) = axml::resource_strings(data) {
        assert!(pool.strings.iter().all(|(o, _)| (*o as usize) < data.len()));
    }
});
