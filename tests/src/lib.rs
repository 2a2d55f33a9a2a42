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

pub mod server;

/// The `sluice` binary of this build (`cargo test --workspace` builds it
/// next to the test binary's `deps/` folder).
pub fn sluice_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the target profile folder");
    let bin = dir.join("sluice");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (tests/run), which builds it",
        bin.display()
    );
    bin
}
