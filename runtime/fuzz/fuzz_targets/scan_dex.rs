//! A Dalvik executable: every string the reader returns lies inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(dex) = sluice_scan::dex::parse(data) {
        for s in &dex.strings {
            assert!((s.offset as usize) < data.len());
        }
        for f in &dex.statics {
            assert!((f.offset as usize) < data.len());
        }
    }
});
