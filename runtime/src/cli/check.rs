//! `sluice check`: a configuration checked as the server would build it
//! (syntax, unknown fields, files, keys, schemas, handlers against the WIT
//! world), every problem reported at once; neither the store nor NATS is
//! opened.

use std::path::PathBuf;
use std::process::ExitCode;

use sluice::config::{Config, StoreKind};

/// Arguments of `sluice check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The configuration file.
    #[arg(short, long)]
    config: PathBuf,
}

/// Check, and print what was found (or every problem, on stderr).
pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let path = args.config;
    let loaded = match Config::load(&path) {
        // A check never opens the store (a running server holds it) and
        // never contacts NATS.
        Ok(config) => {
            sluice::node::Node::with_state(config, sluice::sandbox::MemoryStateStore::new())
                .await
                .map(|node| node.state)
        }
        Err(e) => Err(e),
    };
    match loaded {
        Ok(state) => {
            for (id, t) in state.tenants().iter() {
                println!(
                    "tenant {id}: {} route(s), {} handler(s), {} channel rule(s)",
                    t.routes.len(),
                    t.handlers.len(),
                    t.channels.len()
                );
                if let Some(config) = state.config.tenants.get(id) {
                    for line in quota_lines(config) {
                        println!("  {line}");
                    }
                }
            }
            let store = &state.config.store;
            match (&state.config.cluster, store.kind) {
                (Some(c), _) => println!(
                    "cluster: node {} on NATS {} (not contacted by check; history, state and presence on JetStream)",
                    c.node,
                    c.nats_urls.join(", ")
                ),
                (None, StoreKind::Durable) => println!(
                    "store: durable, in {}",
                    state.config.path(&store.data_dir).display()
                ),
                (None, StoreKind::Memory) => {
                    println!("store: memory (nothing survives a restart)")
                }
            }
            println!("{}: ok", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// What the tenant may make the host hold, each with its value and what
/// happens past it: its `[tenants.<id>.quotas]`, then the quotas that live
/// elsewhere (connections, handler state).
fn quota_lines(t: &sluice::config::TenantConfig) -> Vec<String> {
    let mut lines = t.quotas.explain();
    lines.push(format!(
        "limits.max_connections = {}, max_connections_per_subject = {}: one more connection is refused (429; in a fleet, counted over every node)",
        t.limits.max_connections, t.limits.max_connections_per_subject
    ));
    for (name, h) in &t.handlers {
        lines.push(format!(
            "handlers.{name}.limits.max_state_keys = {}, max_state_bytes = {}: the tenant's handler state; a write past either fails in the handler (`quota-exceeded`)",
            h.limits.max_state_keys, h.limits.max_state_bytes
        ));
    }
    lines
}
