//! Subcommands of the `sluice` binary that need more than a few lines.

pub mod bench_cluster;
pub mod bench_marketplace;
pub mod cert;
pub mod connect;
pub mod demo_page;
pub mod dev;
pub mod dev_cluster;
pub mod handler;
pub mod scan;
