//! Connection caps across the fleet (`max_connections` per tenant and
//! `max_connections_per_subject`), approximately.
//!
//! Every [`GOSSIP_EVERY`] each node publishes its connection counts (per
//! tenant, and per subject with at least one connection) on
//! `{prefix}.conns`; every node keeps the latest report of every other
//! node and forgets a node it has not heard from for [`FORGET_AFTER`] (a
//! dead node's connections stop counting). A handshake is admitted while
//! this node's count plus the others' last reports is under the cap. So
//! the fleet can overshoot a cap by the connections other nodes accepted
//! since their last report (at most one gossip interval's worth), never
//! more; with one node the caps are exact as before.
//!
//! A report carries every connected subject, so its size grows with the
//! node's distinct subjects (about 30 bytes each): the first thing to
//! change for fleets with hundreds of thousands of subjects per node.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;

use sluice_server::state::ServerState;

/// How often a node reports its counts.
pub const GOSSIP_EVERY: Duration = Duration::from_millis(500);

/// A node silent this long no longer counts.
pub const FORGET_AFTER: Duration = Duration::from_secs(5);

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Report {
    node: String,
    /// Per tenant: (its connections, per subject).
    tenants: HashMap<String, (u32, HashMap<String, u32>)>,
}

struct Heard {
    at: Instant,
    report: Report,
}

/// The other nodes' connection counts.
#[derive(Default)]
pub struct FleetCounts {
    others: RwLock<HashMap<String, Heard>>,
}

impl FleetCounts {
    /// Connections other nodes reported for a tenant, and for one of its
    /// subjects.
    pub fn elsewhere(&self, tenant: &str, subject: &str) -> (u32, u32) {
        let others = self.others.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = (0, 0);
        for heard in others.values() {
            if heard.at.elapsed() > FORGET_AFTER {
                continue;
            }
            if let Some((total, subjects)) = heard.report.tenants.get(tenant) {
                out.0 += total;
                out.1 += subjects.get(subject).copied().unwrap_or(0);
            }
        }
        out
    }

    /// Publish this node's counts and take in the others', until `state`
    /// is gone.
    pub(crate) fn start(
        self: &Arc<Self>,
        client: async_nats::Client,
        subject: String,
        node: String,
        state: Weak<ServerState>,
    ) -> Vec<tokio::task::AbortHandle> {
        let me = self.clone();
        let (c, s, n) = (client.clone(), subject.clone(), node.clone());
        let listen = tokio::spawn(async move {
            let mut sub = loop {
                match c.subscribe(s.clone()).await {
                    Ok(sub) => break sub,
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            };
            while let Some(msg) = sub.next().await {
                let Ok(report) = serde_json::from_slice::<Report>(&msg.payload) else {
                    continue;
                };
                if report.node == n {
                    continue;
                }
                let mut others = me.others.write().unwrap_or_else(PoisonError::into_inner);
                others.retain(|_, h| h.at.elapsed() <= FORGET_AFTER);
                others.insert(
                    report.node.clone(),
                    Heard {
                        at: Instant::now(),
                        report,
                    },
                );
            }
        })
        .abort_handle();
        let report = tokio::spawn(async move {
            let mut every = tokio::time::interval(GOSSIP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(state) = state.upgrade() else { break };
                let mut report = Report {
                    node: node.clone(),
                    tenants: HashMap::new(),
                };
                for (id, t) in state.tenants().iter() {
                    let total: u32 = t.connections.snapshot().iter().map(|(_, n)| n).sum();
                    if total == 0 {
                        continue;
                    }
                    let subjects = t.subject_connections.snapshot().into_iter().collect();
                    report.tenants.insert(id.clone(), (total, subjects));
                }
                drop(state);
                if let Ok(bytes) = serde_json::to_vec(&report) {
                    let _ = client.publish(subject.clone(), Bytes::from(bytes)).await;
                }
            }
        })
        .abort_handle();
        vec![listen, report]
    }
}
