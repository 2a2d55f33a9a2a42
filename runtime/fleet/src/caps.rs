//! Connection caps across the fleet (`max_connections` per tenant and
//! `max_connections_per_subject`), approximately, and failing closed.
//!
//! Every [`GOSSIP_EVERY`] each node publishes its connection counts (per
//! tenant, and per subject with at least one connection) on
//! `{prefix}.conns`, in as many parts as NATS' `max_payload` needs (a
//! report never goes unsent because a node has many subjects); every node
//! keeps the latest complete report of every other node. A handshake is
//! admitted while this node's count plus the others' last reports is under
//! the cap. So the fleet can overshoot a cap by the connections other nodes
//! accepted since their last report (at most one gossip interval's worth),
//! never more; with one node the caps are exact as before.
//!
//! Failing closed: a node that falls silent keeps counting with its last
//! report for the hold it announced ([`Report::hold_ms`]), not a fixed few
//! seconds. The hold is longer than the node itself stays up without
//! reaching the fleet: a node hears its own reports come back, and one
//! that has not for [`SHED_AFTER`] (cut off from NATS, or its reports
//! lost) refuses new connections and closes the ones it has at their next
//! ping (within `ping_interval_ms`), so by the time the others stop
//! counting it, it holds nothing. A node that shuts down cleanly says so
//! and stops counting at once. The price: a node that dies (`kill -9`)
//! still counts for its hold, so its clients reconnecting elsewhere may be
//! refused (429) for up to that long when their tenant or subject is at
//! its cap.
//!
//! Reports are checked as they come: a node name that is not a name, a
//! part outside its report, an oversized count, anything that does not
//! parse, is dropped and counted nowhere.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;

use sluice_server::state::ServerState;

/// How often a node reports its counts.
pub const GOSSIP_EVERY: Duration = Duration::from_millis(500);

/// A node that has not heard its own report for this long is cut off
/// from the fleet's counts: it refuses new connections and sheds the ones
/// it has.
pub const SHED_AFTER: Duration = Duration::from_secs(10);

/// Added to a node's hold for delivery delays between nodes.
const HOLD_MARGIN: Duration = Duration::from_secs(3);

/// The longest hold a report may ask for (a larger one is cut to this).
pub const MAX_HOLD: Duration = Duration::from_secs(600);

/// The hold of a report that names none (from a node of an earlier
/// version): as long as a node with the default ping interval may keep
/// connections while cut off.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(35);

/// Parts one report may have at most.
const MAX_PARTS: u32 = 100_000;

/// Room left in each part for what is not a subject's count.
const PART_OVERHEAD: usize = 1024;

/// Counts per tenant: (its connections, per subject).
type Counts = HashMap<String, (u32, HashMap<String, u32>)>;

/// One part of one node's report.
#[derive(serde::Serialize, serde::Deserialize, Default)]
pub struct Report {
    /// The reporting node.
    pub node: String,
    /// Per tenant: (its connections, per subject); a tenant's subjects may
    /// be spread over several parts.
    pub tenants: Counts,
    /// Which report of the node this part belongs to.
    #[serde(default)]
    pub round: u64,
    /// This part's index.
    #[serde(default)]
    pub part: u32,
    /// The report's parts.
    #[serde(default = "one")]
    pub parts: u32,
    /// How long to keep counting this report when nothing more is heard
    /// from the node, ms (0: [`DEFAULT_HOLD`]).
    #[serde(default)]
    pub hold_ms: u64,
    /// The node left the fleet: stop counting it now.
    #[serde(default)]
    pub gone: bool,
}

fn one() -> u32 {
    1
}

fn is_node_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Report {
    /// Whether this part is well formed.
    fn valid(&self) -> bool {
        if self.gone {
            return is_node_name(&self.node);
        }
        is_node_name(&self.node)
            && (1..=MAX_PARTS).contains(&self.parts)
            && self.part < self.parts
            && self.tenants.values().all(|(total, subjects)| {
                subjects.values().all(|n| *n <= *total) && *total < u32::MAX / 2
            })
    }

    fn hold(&self) -> Duration {
        match self.hold_ms {
            0 => DEFAULT_HOLD,
            ms => Duration::from_millis(ms).clamp(GOSSIP_EVERY * 2, MAX_HOLD),
        }
    }
}

/// How many bytes `s` takes as a JSON string.
fn json_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// `counts` as parts that each fit in `max_payload` bytes.
fn split(
    node: &str,
    round: u64,
    hold: Duration,
    counts: Counts,
    max_payload: usize,
) -> Vec<Report> {
    let budget = max_payload.saturating_sub(PART_OVERHEAD).max(256);
    let mut parts: Vec<Counts> = vec![Counts::new()];
    let mut size = 0usize;
    for (tenant, (total, subjects)) in counts {
        let head = json_len(&tenant) + 24;
        if size + head > budget {
            parts.push(Counts::new());
            size = 0;
        }
        size += head;
        let mut current: HashMap<String, u32> = HashMap::new();
        for (subject, n) in subjects {
            let cost = json_len(&subject) + 12;
            if size + cost > budget && !current.is_empty() {
                if let Some(p) = parts.last_mut() {
                    p.insert(tenant.clone(), (total, std::mem::take(&mut current)));
                }
                parts.push(Counts::new());
                size = head;
            }
            size += cost;
            current.insert(subject, n);
        }
        if let Some(p) = parts.last_mut() {
            p.insert(tenant, (total, current));
        }
    }
    let n = parts.len() as u32;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, tenants)| Report {
            node: node.to_owned(),
            tenants,
            round,
            part: i as u32,
            parts: n,
            hold_ms: hold.as_millis() as u64,
            gone: false,
        })
        .collect()
}

/// A report being put together from its parts.
struct Pending {
    round: u64,
    parts: u32,
    got: HashSet<u32>,
    counts: Counts,
}

struct Heard {
    at: Instant,
    hold: Duration,
    counts: Counts,
}

impl Heard {
    fn live(&self) -> bool {
        self.at.elapsed() <= self.hold
    }
}

/// The other nodes' connection counts.
pub struct FleetCounts {
    others: RwLock<HashMap<String, Heard>>,
    pending: Mutex<HashMap<String, Pending>>,
    /// When this node last heard one of its own reports come back.
    own_heard: Mutex<Instant>,
    started: AtomicBool,
}

impl Default for FleetCounts {
    fn default() -> Self {
        Self {
            others: RwLock::default(),
            pending: Mutex::default(),
            own_heard: Mutex::new(Instant::now()),
            started: AtomicBool::new(false),
        }
    }
}

impl FleetCounts {
    /// Connections other nodes reported for a tenant, and for one of its
    /// subjects.
    pub fn elsewhere(&self, tenant: &str, subject: &str) -> (u32, u32) {
        let others = self.others.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = (0u32, 0u32);
        for heard in others.values().filter(|h| h.live()) {
            if let Some((total, subjects)) = heard.counts.get(tenant) {
                out.0 = out.0.saturating_add(*total);
                out.1 = out
                    .1
                    .saturating_add(subjects.get(subject).copied().unwrap_or(0));
            }
        }
        out
    }

    /// Whether this node has not heard its own report for
    /// [`SHED_AFTER`]: it must refuse and shed connections.
    pub fn cut_off(&self) -> bool {
        self.started.load(Ordering::Relaxed)
            && self
                .own_heard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .elapsed()
                > SHED_AFTER
    }

    /// Take in one part of a report (this node's own: only noted).
    fn heard(&self, me: &str, report: Report) {
        if !report.valid() {
            tracing::debug!("a malformed connection report was dropped");
            return;
        }
        if report.node == me {
            *self
                .own_heard
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
            return;
        }
        let mut others = self.others.write().unwrap_or_else(PoisonError::into_inner);
        others.retain(|_, h| h.live());
        if report.gone {
            others.remove(&report.node);
            return;
        }
        let hold = report.hold();
        let node = report.node.clone();
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let p = pending.entry(node.clone()).or_insert_with(|| Pending {
            round: report.round,
            parts: report.parts,
            got: HashSet::new(),
            counts: Counts::new(),
        });
        if p.round != report.round || p.parts != report.parts {
            // A new report started (a part of the last one was lost: the
            // last complete one keeps counting until its hold ends).
            *p = Pending {
                round: report.round,
                parts: report.parts,
                got: HashSet::new(),
                counts: Counts::new(),
            };
        }
        if !p.got.insert(report.part) {
            return;
        }
        for (tenant, (total, subjects)) in report.tenants {
            let e = p.counts.entry(tenant).or_default();
            e.0 = total;
            e.1.extend(subjects);
        }
        if p.got.len() as u32 == p.parts {
            let counts = std::mem::take(&mut p.counts);
            pending.remove(&node);
            others.insert(
                node,
                Heard {
                    at: Instant::now(),
                    hold,
                    counts,
                },
            );
        }
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
        self.started.store(true, Ordering::Relaxed);
        *self
            .own_heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
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
                if let Ok(report) = serde_json::from_slice::<Report>(&msg.payload) {
                    me.heard(&n, report);
                }
            }
        })
        .abort_handle();
        let report = tokio::spawn(async move {
            let mut every = tokio::time::interval(GOSSIP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut round = 0u64;
            loop {
                every.tick().await;
                let Some(state) = state.upgrade() else { break };
                let ping = Duration::from_millis(state.config.server.ping_interval_ms);
                let mut counts = Counts::new();
                for (id, t) in state.tenants().iter() {
                    let total: u32 = t.connections.snapshot().iter().map(|(_, n)| n).sum();
                    if total == 0 {
                        continue;
                    }
                    let subjects = t.subject_connections.snapshot().into_iter().collect();
                    counts.insert(id.clone(), (total, subjects));
                }
                drop(state);
                round += 1;
                let hold = SHED_AFTER + ping + HOLD_MARGIN;
                let max_payload = client.server_info().max_payload;
                for part in split(&node, round, hold, counts, max_payload) {
                    let Ok(bytes) = serde_json::to_vec(&part) else {
                        continue;
                    };
                    if let Err(e) = client.publish(subject.clone(), Bytes::from(bytes)).await {
                        tracing::warn!(error = %e, "a connection report could not be sent");
                    }
                }
            }
        })
        .abort_handle();
        vec![listen, report]
    }

    /// Tell the fleet this node is leaving: its connections stop counting
    /// at once.
    pub(crate) async fn leave(client: &async_nats::Client, subject: String, node: &str) {
        let gone = Report {
            node: node.to_owned(),
            gone: true,
            ..Default::default()
        };
        if let Ok(bytes) = serde_json::to_vec(&gone) {
            let _ = client.publish(subject, Bytes::from(bytes)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(subjects: usize) -> Counts {
        let per: HashMap<String, u32> =
            (0..subjects).map(|i| (format!("user-{i:06}"), 1)).collect();
        [("alpha".to_owned(), (subjects as u32, per))].into()
    }

    #[test]
    fn a_report_over_max_payload_is_split_and_put_together_again() {
        let parts = split("a", 7, Duration::from_secs(30), counts(5000), 4096);
        assert!(parts.len() > 20, "{}", parts.len());
        for p in &parts {
            let bytes = serde_json::to_vec(p).unwrap();
            assert!(bytes.len() <= 4096, "a part of {} bytes", bytes.len());
        }
        let fleet = FleetCounts::default();
        let n = parts.len();
        for (i, p) in parts.into_iter().enumerate() {
            // Until the last part arrives, the last complete report counts.
            assert_eq!(
                fleet.elsewhere("alpha", "user-000001"),
                (0, 0),
                "part {i} of {n}"
            );
            fleet.heard("b", p);
        }
        assert_eq!(fleet.elsewhere("alpha", "user-004999"), (5000, 1));
    }

    #[test]
    fn malformed_reports_count_nowhere_and_a_goodbye_stops_counting() {
        let fleet = FleetCounts::default();
        let mut bad = split("a b", 1, DEFAULT_HOLD, counts(3), 1 << 20);
        fleet.heard("me", bad.remove(0));
        let mut outside = split("a", 1, DEFAULT_HOLD, counts(3), 1 << 20).remove(0);
        outside.part = 5;
        fleet.heard("me", outside);
        let mut inflated = split("a", 1, DEFAULT_HOLD, counts(3), 1 << 20).remove(0);
        if let Some(t) = inflated.tenants.get_mut("alpha") {
            t.1.insert("x".into(), 1000);
        }
        fleet.heard("me", inflated);
        assert_eq!(fleet.elsewhere("alpha", "user-000001"), (0, 0));
        for p in split("a", 2, DEFAULT_HOLD, counts(3), 1 << 20) {
            fleet.heard("me", p);
        }
        assert_eq!(fleet.elsewhere("alpha", "user-000001"), (3, 1));
        fleet.heard(
            "me",
            Report {
                node: "a".into(),
                gone: true,
                ..Default::default()
            },
        );
        assert_eq!(fleet.elsewhere("alpha", "user-000001"), (0, 0));
    }
}
