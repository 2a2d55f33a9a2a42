//! Sluice's client-side tools: a wss client ([`client`]), the load
//! generator behind `sluice bench load|fanout|storm|idle` ([`loadgen`]) and
//! the sandbox benchmark behind `sluice bench sandbox` ([`bench`]). Kept out
//! of the server library so that a server build does not carry them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod bench_store;
pub mod client;
pub mod loadgen;
