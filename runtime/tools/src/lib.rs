//! Sluice's client-side tools: a wss client ([`client`]) and the load
//! generator behind `sluice bench load|fanout|storm|idle` ([`loadgen`]),
//! which mints its tokens with `sluice-token`. Kept out of the server
//! library so that a server build does not carry them, and free of the
//! server, the store and the sandbox so that they do not carry wasmtime.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod loadgen;
