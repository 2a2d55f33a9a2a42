//! The configuration parser reads operator files; it must report problems,
//! never panic, whatever the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(errors) = sluice::config::Config::parse(text, std::path::Path::new(".")) {
        assert!(!errors.0.is_empty());
    }
});
