//! Sluice: a WebSocket runtime for realtime apps whose business logic runs
//! as tenant-supplied WebAssembly components.
//!
//! The host does all security-critical work itself and hands a tenant's
//! handler only authorized, validated, bounded input; the handler proposes
//! actions, the host disposes. This crate is the host: [`sandbox`] runs
//! handlers under hard limits.

#![warn(missing_docs)]

pub mod bench;
pub mod sandbox;
