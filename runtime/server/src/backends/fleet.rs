//! The fleet seam: what the data path asks of the other nodes besides
//! channels, state, history and presence. On one node there is no fleet;
//! `sluice-fleet` implements it on NATS.

use sluice_sandbox::BoxFuture;

/// This node's link to the rest of its fleet.
pub trait FleetLink: Send + Sync + 'static {
    /// Whether the fleet's message bus is reachable now: a node cut off
    /// refuses new connections (503) and `/readyz` says so.
    fn connected(&self) -> bool;
    /// Connections other nodes hold for `tenant` and for its `subject`
    /// (approximate: the caps across the fleet).
    fn connections_elsewhere(&self, tenant: &str, subject: &str) -> (u32, u32);
    /// Whether this node has been cut off from the fleet's connection
    /// counts for so long that the others will soon stop counting its
    /// connections: each session then closes (1001) at its next ping, so
    /// that no tenant exceeds its cap while this node's connections are
    /// not counted.
    fn shed_connections(&self) -> bool {
        false
    }
    /// Withdraw this node from the fleet (its presence entries), send what
    /// is buffered and disconnect.
    fn close(&self) -> BoxFuture<'_, ()>;
}
