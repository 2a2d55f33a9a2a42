//! `sluice bench`: every benchmark, each printing figures (never a timed
//! test). The load generator's modes live in `sluice-tools`; the sandbox,
//! store, cluster and marketplace benchmarks here, beside what they call.

use std::process::ExitCode;

use clap::Subcommand;
use sluice::loadgen::{fanout, idle, messages, storm};

use super::{bench_cluster, bench_marketplace, bench_sandbox, bench_store, bench_tenants, report};

/// The benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// What a handler costs: size, compile time, first call, fuel and memory
    /// per call, and per-call time in reuse vs fresh, fuel on vs off.
    Sandbox(bench_sandbox::SandboxBenchArgs),
    /// Request/answer load over N connections: closed loop (--depth) or
    /// open loop (--rate); HDR latency, server CPU per message.
    Load(messages::LoadArgs),
    /// What a fleet costs (a nats-server and nodes on this machine):
    /// broadcast latency on one node, on the publisher's node and across
    /// nodes; deliveries per second with 1, 2 and 3 nodes; state commits
    /// per second on JetStream KV against the embedded stores.
    Cluster(bench_cluster::ClusterBenchArgs),
    /// What the marketplace control plane costs: push to serving (upload,
    /// verification, compile, smoke calls, first message) for the Rust and
    /// JavaScript chat handlers, and shadow mode per message.
    Marketplace(bench_marketplace::MarketplaceBenchArgs),
    /// What durability costs: publish throughput with channel history off,
    /// in memory and durable; the time to recover missed events; state
    /// commits per second, durable against in memory.
    Store(bench_store::StoreBenchArgs),
    /// What tenants created through the management API cost: the time to
    /// create N, memory per tenant (none and 10 routes), start-up with N.
    Tenants(bench_tenants::TenantsBenchArgs),
    /// One publisher, M subscribers of a channel: delivery latency and
    /// deliveries per second.
    Fanout(fanout::FanoutArgs),
    /// Connect-and-close storm: new sessions (TCP + TLS + upgrade + token)
    /// per second.
    Storm(storm::StormArgs),
    /// Hold N idle connections (over several processes) and report the
    /// server's memory per connection.
    Idle(idle::IdleArgs),
}

/// Run one benchmark.
pub async fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Sandbox(args) => bench_sandbox::run(args).await,
        BenchCommand::Cluster(args) => bench_cluster::run(args).await,
        BenchCommand::Marketplace(args) => bench_marketplace::run(args).await,
        BenchCommand::Store(args) => bench_store::run(args).await,
        BenchCommand::Tenants(args) => bench_tenants::run(args).await,
        BenchCommand::Load(args) => {
            let json = args.target.json;
            report::print(json, &messages::run(args).await?, messages::print_human)
        }
        BenchCommand::Fanout(args) => {
            let json = args.target.json;
            report::print(json, &fanout::run(args).await?, fanout::print_human)
        }
        BenchCommand::Storm(args) => {
            let json = args.target.json;
            report::print(json, &storm::run(args).await?, storm::print_human)
        }
        BenchCommand::Idle(args) => {
            let json = args.target.json;
            match idle::run(args).await? {
                Some(r) => report::print(json, &r, idle::print_human),
                None => Ok(ExitCode::SUCCESS),
            }
        }
    }
}
