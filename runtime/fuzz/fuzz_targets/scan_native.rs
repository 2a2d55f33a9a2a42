//! ELF and Mach-O (thin or universal): strings come from inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(strings) = sluice_scan::native::strings(data) {
        assert!(strings.iter().all(|s| (s.offset as usize) < data.len()));
    }
});
