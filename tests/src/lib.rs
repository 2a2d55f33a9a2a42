//! Shared helpers for Sluice's integration tests: a real server and client,
//! the paths of the handlers
//! built from `handlers/`, and ready-made connections and messages.

use sluice::sandbox::{Connection, Message, Principal};

/// Paths of the handler components built by `build.rs`.
pub mod handlers {
    include!(concat!(env!("OUT_DIR"), "/handlers.rs"));
}

/// A connection of `tenant` for `subject`, with no exposed claims.
pub fn conn(tenant: &str, subject: &str) -> Connection {
    Connection {
        id: 7,
        principal: Principal {
            tenant: tenant.into(),
            subject: subject.into(),
            claims: "{}".into(),
        },
    }
}

/// A message on `route` with JSON `data`, optionally on a channel.
pub fn msg(route: &str, channel: Option<&str>, data: serde_json::Value) -> Message {
    Message {
        route: route.into(),
        channel: channel.map(str::to_owned),
        data: data.to_string(),
    }
}

/// Read a component built by `build.rs`.
pub fn component(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

pub mod cluster;
pub mod mobile_app;
pub mod server;

/// `<target>/<profile>/sluice`, beside `<target>/<profile>/deps/all-<hash>`,
/// checked to be newer than every source file of the crates it is built from
/// (`runtime/src` and `runtime/*/src`).
#[expect(
    clippy::expect_used,
    reason = "a test helper fails the test that called it by panicking"
)]
pub fn sluice_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .ancestors()
        .nth(2)
        .expect("the test binary lives in <target>/<profile>/deps")
        .join(format!("sluice{}", std::env::consts::EXE_SUFFIX));
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: build it with `cargo build --workspace --bin sluice` (tests/run does)",
                bin.display()
            )
        });
    let runtime = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime");
    let mut newest = newest_source(&runtime.join("src"));
    for entry in std::fs::read_dir(&runtime)
        .expect("read runtime/")
        .flatten()
    {
        let src = entry.path().join("src");
        // Not built into the binary: the fuzz targets, the fault suite.
        if !["fuzz", "faults"].iter().any(|n| entry.file_name() == *n) && src.is_dir() {
            newest = newest.max(newest_source(&src));
        }
    }
    assert!(
        built >= newest,
        "{} is older than the sources: rebuild it with `cargo build --workspace --bin sluice` (tests/run does)",
        bin.display()
    );
    bin
}

#[expect(
    clippy::expect_used,
    reason = "a test helper fails the test that called it by panicking"
)]
fn newest_source(dir: &std::path::Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir)
        .expect("read a source folder")
        .flatten()
    {
        let path = entry.path();
        let modified = if path.is_dir() {
            newest_source(&path)
        } else if path.extension().is_none_or(|e| e != "rs") {
            continue;
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
        };
        newest = newest.max(modified);
    }
    newest
}
