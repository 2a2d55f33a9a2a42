//! Sluice's integration tests, in one binary (one link, shared helpers).

#![allow(
    clippy::expect_used,
    reason = "helpers of tests fail the test that called them by panicking"
)]

mod accept;
mod admin;
mod admin_limits;
mod admin_reload;
mod adversarial;
mod call_budget;
mod chat;
mod cluster;
mod config;
mod conformance;
mod corpus;
mod deploy;
mod faults;
mod fleet_isolation;
mod fleet_tenants;
mod handshake;
mod history;
mod history_quotas;
mod idempotency;
mod jwks;
mod lifecycle;
mod limits;
mod loadgen;
mod logs;
mod marketplace;
mod messages;
mod noisy_neighbour;
mod peers;
mod probe;
mod pushed_isolation;
mod quickstart;
mod reload;
mod sandbox;
mod scan;
mod slow_consumer;
mod supply_chain;
mod tenants;
mod tls;
mod tokens;
