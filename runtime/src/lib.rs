//! Sluice: a WebSocket runtime for realtime apps whose business logic runs
//! as tenant-supplied WebAssembly components.
//!
//! The host does all security-critical work itself and hands a tenant's
//! handler only authorized, validated, bounded input; the handler proposes
//! actions, the host disposes. [`server`] is the pipeline from TCP accept to
//! a handler's effects; [`sandbox`] runs handlers under hard limits;
//! [`config`] is the strict configuration file; [`client`] is a wss client
//! for tools and tests.

#![warn(missing_docs)]

pub mod bench;
pub mod client;
pub mod config;
pub mod dev;
pub mod loadgen;
pub mod logging;
pub mod sandbox;
pub mod server;
