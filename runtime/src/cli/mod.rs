//! The `sluice` commands, one module each, each owning its options (a clap
//! `Args`); `main.rs` only dispatches.

pub mod api;
pub mod bench;
pub mod bench_cluster;
pub mod bench_marketplace;
pub mod bench_sandbox;
pub mod bench_store;
pub mod bench_tenants;
pub mod call;
pub mod cert;
pub mod check;
pub mod connect;
pub mod demo_handlers;
pub mod demo_page;
pub mod dev;
pub mod dev_cluster;
pub mod handler;
pub mod health;
pub mod reload;
pub mod report;
pub mod scan;
pub mod serve;
pub mod signals;
pub mod tenant;
pub mod token;
