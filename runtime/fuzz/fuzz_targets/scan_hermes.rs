//! Hermes bytecode: the string table reader errors, never panics, and every
//! string it returns starts inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = sluice_scan::hermes::MAGIC.to_vec();
    input.extend_from_slice(data);
    if let Ok(h) = sluice_scan::hermes::parse(&input) {
        assert!(h.strings.iter().all(|s| (s.offset as usize) <= input.len()));
    }
});
