//! Dependencies stay at or above the releases that fixed known advisories
//! (SECURITY.md). The RustSec database itself cannot be fetched here (no
//! network but the package registries): `.ci/supply-chain` runs cargo-deny
//! against an offline snapshot of it, which ages; these floors are the
//! second line, checked against Cargo.lock on every test run.

use std::path::Path;

/// (crate, lowest acceptable version, why)
const FLOORS: [(&str, [u64; 3], &str); 5] = [
    (
        "wasmtime",
        [43, 0, 1],
        "the advisory floor SECURITY.md names",
    ),
    (
        "rustls",
        [0, 23, 45],
        "the advisory floor SECURITY.md names",
    ),
    (
        "jsonwebtoken",
        [10, 3, 0],
        "the advisory floor SECURITY.md names",
    ),
    (
        "tungstenite",
        [0, 20, 1],
        "RUSTSEC-2023-0065 (handshake header DoS) was fixed in 0.20.1",
    ),
    (
        "jsonschema",
        [0, 61, 0],
        "the version whose resolver and regex options Sluice configures",
    ),
];

fn parse(v: &str) -> [u64; 3] {
    let mut parts = v
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    [
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    ]
}

#[test]
fn locked_dependencies_are_at_or_above_their_advisory_floors() {
    let lock_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    let lock = std::fs::read_to_string(&lock_path).expect("Cargo.lock");
    let mut checked = 0;
    for (name, floor, why) in FLOORS {
        let needle = format!("name = \"{name}\"\nversion = \"");
        let versions: Vec<&str> = lock
            .match_indices(&needle)
            .filter_map(|(i, _)| lock[i + needle.len()..].split('"').next())
            .collect();
        assert!(!versions.is_empty(), "{name} is not in Cargo.lock");
        for v in versions {
            assert!(parse(v) >= floor, "{name} {v} is below {floor:?}: {why}");
            checked += 1;
        }
    }
    assert!(checked >= FLOORS.len());
}
