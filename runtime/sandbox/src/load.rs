//! Loading a handler: refuse anything that is not a component of the
//! `sluice:handler` world with only granted imports, with an error a handler
//! author can act on.

use std::collections::BTreeSet;
use std::path::PathBuf;

use wasmtime::Engine;
use wasmtime::component::Component;

use sluice_config::Capability;

/// The version of the `sluice:handler` package this host implements.
pub const WORLD_VERSION: &str = "0.2.0";
/// The interface every handler exports.
pub const EVENTS_EXPORT: &str = "sluice:handler/events@0.2.0";

/// WASI packages linked (with an empty context) for guests that import them.
const WASI_PACKAGES: [&str; 6] = ["cli", "clocks", "filesystem", "io", "random", "sockets"];

/// Why a handler was refused at load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Bigger than the sandbox accepts.
    #[error("the component is {size} bytes; the limit is {max} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A core module or something else that is not a component.
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    /// The handler's limits are unusable.
    #[error("invalid limits: {}", .0.join("; "))]
    InvalidLimits(Vec<String>),
    /// wasmtime could not compile it.
    #[error("the component does not compile: {0}")]
    Compile(String),
    /// A pushed component took longer to compile than `[sandbox]
    /// compile_timeout_ms`.
    #[error("compiling took longer than {} ms (the limit, [sandbox] compile_timeout_ms)", .0.as_millis())]
    CompileTimeout(std::time::Duration),
    /// Every compile worker stayed busy: the push may be tried again.
    #[error("{0}")]
    Busy(String),
    /// A pushed component's compiled code would take its tenant past
    /// `[tenants.<id>.quotas] compiled_bytes`.
    #[error(
        "its compiled code ({size} bytes) would take the tenant past its compiled_bytes quota: {held} of {max} bytes are held by its loaded handlers (remove versions or handlers it no longer needs)"
    )]
    Quota {
        /// Bytes of compiled code the tenant holds.
        held: usize,
        /// This component's (0 when refused before compiling).
        size: usize,
        /// The quota.
        max: usize,
    },
    /// It does not implement the world, or imports what it may not.
    #[error("the component does not fit world sluice:handler/handler@{WORLD_VERSION}: {}", .0.join("; "))]
    World(Vec<String>),
}

/// Check the first bytes: a core module is the most common mistake.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if let Some(rest) = bytes.strip_prefix(b"\0asm") {
        if rest.starts_with(&[1, 0, 0, 0]) {
            return Err(LoadError::NotAComponent(
                "this is a core wasm module; build for wasm32-wasip2 (which emits a component) \
                 or wrap it with `wasm-tools component new`"
                    .into(),
            ));
        }
        return Ok(());
    }
    // wasmtime also accepts the text format (WAT); anything else is refused.
    if std::str::from_utf8(bytes).is_ok_and(|t| t.trim_start().starts_with('(')) {
        return Ok(());
    }
    Err(LoadError::NotAComponent(
        "the file does not start with the wasm magic number".into(),
    ))
}

/// The largest initial size, in bytes, of the linear memories the
/// component's core modules declare (0 when it cannot be told statically).
pub(crate) fn initial_memory(component: &Component) -> usize {
    component
        .resources_required()
        .and_then(|r| r.max_initial_memory_size)
        .map_or(0, |pages| {
            usize::try_from(pages.saturating_mul(65536)).unwrap_or(usize::MAX)
        })
}

/// Every way the component's imports and exports miss the world, at once.
pub(crate) fn check_world(
    engine: &Engine,
    component: &Component,
    grants: &BTreeSet<Capability>,
) -> Vec<String> {
    let ty = component.component_type();
    let mut problems = Vec::new();

    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    if !exports.iter().any(|n| n == EVENTS_EXPORT) {
        match exports
            .iter()
            .find_map(|n| n.strip_prefix("sluice:handler/events@"))
        {
            Some(version) => problems.push(format!(
                "it was built against sluice:handler@{version}, but this host implements \
                 sluice:handler@{WORLD_VERSION}"
            )),
            None => problems.push(format!(
                "it does not export `{EVENTS_EXPORT}` (its exports: [{}])",
                exports.join(", ")
            )),
        }
    }

    for (name, _) in ty.imports(engine) {
        if let Some(rest) = name.strip_prefix("sluice:handler/") {
            let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
            if version != WORLD_VERSION {
                problems.push(format!(
                    "it imports `{name}`, but this host implements sluice:handler@{WORLD_VERSION}"
                ));
            } else if interface == "types" {
                // Type definitions only: nothing to grant.
            } else {
                match Capability::from_interface(interface) {
                    Some(cap) if grants.contains(&cap) => {}
                    Some(cap) => problems.push(format!(
                        "it imports `{name}`, but capability `{cap}` is not granted to it"
                    )),
                    None => problems.push(format!(
                        "it imports `{name}`, which is not part of the sluice:handler world"
                    )),
                }
            }
        } else if let Some(rest) = name.strip_prefix("wasi:") {
            let package = rest.split('/').next().unwrap_or_default();
            if !WASI_PACKAGES.contains(&package) {
                problems.push(format!(
                    "it imports `{name}`; Sluice links only an empty WASI context \
                     ({}), so a handler can reach nothing outside the host",
                    WASI_PACKAGES.map(|p| format!("wasi:{p}")).join(", ")
                ));
            }
        } else {
            problems.push(format!(
                "it imports `{name}`, which Sluice does not provide: a handler reaches the \
                 host only through sluice:handler and an empty WASI context"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wit_file_declares_the_version_the_host_implements() {
        let wit = include_str!("../../../wit/handler.wit");
        assert!(wit.contains(&format!("package sluice:handler@{WORLD_VERSION};")));
        assert_eq!(
            EVENTS_EXPORT,
            format!("sluice:handler/events@{WORLD_VERSION}")
        );
    }

    #[test]
    fn core_modules_and_garbage_are_refused_by_their_header() {
        let core = b"\0asm\x01\0\0\0";
        assert!(
            matches!(check_header(core), Err(LoadError::NotAComponent(m)) if m.contains("core wasm module"))
        );
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
        assert!(check_header(b"(component)").is_ok());
        assert!(matches!(
            check_header(b"ELF..."),
            Err(LoadError::NotAComponent(_))
        ));
    }
}
