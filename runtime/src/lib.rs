//! Sluice: a WebSocket runtime for realtime apps whose business logic runs
//! as tenant-supplied WebAssembly components.
//!
//! The host does all security-critical work itself and hands a tenant's
//! handler only authorized, validated, bounded input; the handler proposes
//! actions, the host disposes.
//!
//! This crate is the `sluice` command and a facade over the workspace crates
//! whose dependency graph is the architecture (docs/ARCHITECTURE.md):
//!
//! ```text
//! sluice (CLI, node) ──> sluice-fleet ───┐
//!    │               ──> sluice-control ─┴──> sluice-server ──> sluice-sandbox ──> sluice-config ──> sluice-protocol
//!    │                                              └──> sluice-tls, sluice-store
//!    └──> sluice-tools (client, load generator) ──> sluice-token ──> sluice-config
//! ```
//!
//! [`node`] composes a node: it chooses the backends for the configured
//! mode and plugs the control plane into the data path.
//! [`server`] is the data path, from TCP accept to a handler's effects;
//! [`fleet`] is cluster mode on NATS; [`control`] the pushed handlers;
//! [`sandbox`] runs handlers under hard limits; [`config`] is the strict
//! configuration file; [`protocol`] is the wire format; [`client`] is a wss
//! client for tools and tests; [`token`] mints dev tokens.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use sluice_config as config;
pub use sluice_control as control;
pub use sluice_fleet as fleet;
pub use sluice_protocol as protocol;
pub use sluice_sandbox as sandbox;
pub use sluice_server as server;
pub use sluice_store as store;
pub use sluice_tls as tls;
pub use sluice_token as token;
pub use sluice_tools::{client, loadgen};

pub mod dev_files;
pub mod listening_child;
pub mod logging;
pub mod nats_server;
pub mod node;
