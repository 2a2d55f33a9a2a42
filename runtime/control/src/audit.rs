//! The management audit log: every change and every refusal, with who asked,
//! from where and when. Kept in memory (at most [`MAX_IN_MEMORY`] entries
//! and [`MAX_IN_MEMORY_BYTES`]) and, with a durable store, on disk (at most
//! `sluice_store::MAX_AUDIT_ENTRIES` and `MAX_AUDIT_BYTES`).
//!
//! What an entry holds is bounded: its detail is cut at [`MAX_DETAIL_BYTES`],
//! and the management API names only configured tenants and valid handler
//! names in it, never what a request's path said. Memory is shared fairly:
//! when the log is full, the oldest entry of the tenant holding the most
//! bytes goes first (entries about no tenant count as one more tenant), so
//! one tenant's requests cannot push another tenant's entries out.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// Entries the API can read back, at most.
pub const MAX_IN_MEMORY: usize = 10_000;
/// Bytes of entries (as JSON) kept in memory, at most.
pub const MAX_IN_MEMORY_BYTES: usize = 8 << 20;
/// An entry's `detail` is cut to this many bytes.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// Who made a management request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// The operator (the admin token): every tenant.
    Operator,
    /// A tenant's management token: that tenant only.
    Tenant(String),
    /// No valid token.
    Anonymous,
}

impl Actor {
    /// As the audit log writes it: `operator`, `tenant:<id>`, `anonymous`.
    pub fn name(&self) -> String {
        match self {
            Actor::Operator => "operator".into(),
            Actor::Tenant(t) => format!("tenant:{t}"),
            Actor::Anonymous => "anonymous".into(),
        }
    }

    /// Whether it may manage `tenant`'s handlers.
    pub fn may_manage(&self, tenant: &str) -> bool {
        match self {
            Actor::Operator => true,
            Actor::Tenant(t) => t == tenant,
            Actor::Anonymous => false,
        }
    }
}

/// One audit entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its sequence number (set when recorded).
    #[serde(default)]
    pub seq: u64,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// Who: `operator`, `tenant:<id>` or `anonymous`.
    pub actor: String,
    /// From where: the client's address.
    pub from: String,
    /// What: `push`, `promote`, `rollback`, `remove`, `list`, `show`, `audit`.
    pub action: String,
    /// The tenant it was about.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The handler it was about.
    #[serde(default)]
    pub handler: Option<String>,
    /// The version it was about.
    #[serde(default)]
    pub version: Option<u32>,
    /// `ok`, `refused` (not allowed) or `failed` (allowed, not done).
    pub outcome: String,
    /// What happened, in words.
    pub detail: String,
}

/// One tenant's entries (or those about no tenant), oldest first, with
/// the bytes of each.
#[derive(Default)]
struct Part {
    entries: VecDeque<(AuditEntry, usize)>,
    bytes: usize,
}

#[derive(Default)]
struct Kept {
    last: u64,
    parts: HashMap<Option<String>, Part>,
    count: usize,
    bytes: usize,
}

impl Kept {
    fn keep(&mut self, entry: AuditEntry, bytes: usize) {
        let part = self.parts.entry(entry.tenant.clone()).or_default();
        part.entries.push_back((entry, bytes));
        part.bytes += bytes;
        self.count += 1;
        self.bytes += bytes;
        while self.count > MAX_IN_MEMORY || self.bytes > MAX_IN_MEMORY_BYTES {
            // The tenant holding the most bytes gives up its oldest entry.
            let Some(key) = self
                .parts
                .iter()
                .max_by_key(|(_, p)| p.bytes)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            let Some(part) = self.parts.get_mut(&key) else {
                break;
            };
            if let Some((_, b)) = part.entries.pop_front() {
                part.bytes -= b;
                self.count -= 1;
                self.bytes -= b;
            }
            if part.entries.is_empty() {
                self.parts.remove(&key);
            }
        }
    }
}

/// The audit log.
#[derive(Default)]
pub struct AuditLog {
    inner: Mutex<Kept>,
}

impl AuditLog {
    /// The log as read back from the store.
    pub fn read_back(rows: &[(u64, Vec<u8>)]) -> Self {
        let mut kept = Kept::default();
        for (seq, bytes) in rows {
            kept.last = kept.last.max(*seq);
            if let Ok(mut e) = serde_json::from_slice::<AuditEntry>(bytes) {
                e.seq = *seq;
                kept.keep(e, bytes.len());
            }
        }
        Self {
            inner: Mutex::new(kept),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record `entry`: its sequence number and its JSON (for the store).
    pub fn push(&self, mut entry: AuditEntry) -> (u64, Vec<u8>) {
        bound(&mut entry);
        let mut kept = self.lock();
        kept.last += 1;
        entry.seq = kept.last;
        log(&entry);
        let bytes = serde_json::to_vec(&entry).unwrap_or_default();
        let seq = kept.last;
        kept.keep(entry, bytes.len());
        (seq, bytes)
    }

    /// Log `entry` and encode it, without keeping it (cluster mode: the
    /// fleet's audit stream numbers it, and [`AuditLog::insert`] keeps it).
    pub fn encode(entry: &AuditEntry) -> Vec<u8> {
        let mut entry = entry.clone();
        bound(&mut entry);
        log(&entry);
        serde_json::to_vec(&entry).unwrap_or_default()
    }

    /// Keep an entry numbered elsewhere (the fleet's audit stream), in order.
    pub fn insert(&self, seq: u64, bytes: &[u8]) {
        let Ok(mut entry) = serde_json::from_slice::<AuditEntry>(bytes) else {
            return;
        };
        entry.seq = seq;
        bound(&mut entry);
        let mut kept = self.lock();
        if seq <= kept.last {
            return;
        }
        kept.last = seq;
        kept.keep(entry, bytes.len());
    }

    /// The highest sequence number kept.
    pub fn last_seq(&self) -> u64 {
        self.lock().last
    }

    /// Entries kept, and their bytes.
    pub fn size(&self) -> (usize, usize) {
        let kept = self.lock();
        (kept.count, kept.bytes)
    }

    /// Entries `actor` may read (a tenant: its own), about `tenant` when
    /// given, the latest `limit`, oldest first.
    pub fn read(&self, actor: &Actor, tenant: Option<&str>, limit: usize) -> Vec<AuditEntry> {
        let kept = self.lock();
        let latest = |part: Option<&Part>| -> Vec<AuditEntry> {
            let Some(part) = part else {
                return Vec::new();
            };
            let skip = part.entries.len().saturating_sub(limit);
            part.entries
                .iter()
                .skip(skip)
                .map(|(e, _)| e.clone())
                .collect()
        };
        let part = |t: &str| kept.parts.get(&Some(t.to_owned()));
        match (actor, tenant) {
            (Actor::Anonymous, _) => Vec::new(),
            (Actor::Tenant(t), Some(asked)) if asked != t => Vec::new(),
            (Actor::Tenant(t), _) => latest(part(t)),
            (Actor::Operator, Some(t)) => latest(part(t)),
            (Actor::Operator, None) => {
                let mut all: Vec<AuditEntry> =
                    kept.parts.values().flat_map(|p| latest(Some(p))).collect();
                all.sort_by_key(|e| e.seq);
                let skip = all.len().saturating_sub(limit);
                all.split_off(skip)
            }
        }
    }
}

/// Cut what an entry holds to its bounds.
fn bound(entry: &mut AuditEntry) {
    if entry.detail.len() > MAX_DETAIL_BYTES {
        let mut cut = MAX_DETAIL_BYTES - 3;
        while !entry.detail.is_char_boundary(cut) {
            cut -= 1;
        }
        entry.detail.truncate(cut);
        entry.detail.push_str("...");
    }
}

fn log(entry: &AuditEntry) {
    tracing::info!(target: "sluice::audit", actor = %entry.actor, from = %entry.from,
        action = %entry.action, tenant = entry.tenant.as_deref().unwrap_or(""),
        handler = entry.handler.as_deref().unwrap_or(""), outcome = %entry.outcome,
        detail = %entry.detail, "management request");
}

/// Now, ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tenant: Option<&str>, detail: &str) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at_ms: 1,
            actor: tenant.map_or("operator".into(), |t| format!("tenant:{t}")),
            from: "127.0.0.1:1".into(),
            action: "push".into(),
            tenant: tenant.map(str::to_owned),
            handler: Some("bot".into()),
            version: None,
            outcome: "failed".into(),
            detail: detail.into(),
        }
    }

    #[test]
    fn the_log_is_bounded_in_bytes_and_one_tenant_cannot_push_out_another() {
        let log = AuditLog::default();
        for n in 0..5 {
            log.push(entry(Some("b"), &format!("b's own entry {n}")));
        }
        // Tenant a makes more than the byte bound in entries with long
        // details (cut to MAX_DETAIL_BYTES each).
        let long = "x".repeat(2 * MAX_DETAIL_BYTES);
        for _ in 0..MAX_IN_MEMORY {
            log.push(entry(Some("a"), &long));
        }
        let (count, bytes) = log.size();
        assert!(bytes <= MAX_IN_MEMORY_BYTES, "{bytes} bytes kept");
        assert!(count <= MAX_IN_MEMORY);
        let a = log.read(&Actor::Tenant("a".into()), None, usize::MAX);
        assert!(a.iter().all(|e| e.detail.len() <= MAX_DETAIL_BYTES));
        assert!(a.len() > 100, "a keeps most of the log: {}", a.len());
        // b's entries are all still there, for b and for the operator.
        let b = log.read(&Actor::Tenant("b".into()), None, 100);
        assert_eq!(b.len(), 5);
        assert_eq!(b[0].detail, "b's own entry 0");
        assert_eq!(
            log.read(&Actor::Operator, Some("b"), 100).len(),
            5,
            "the operator reads b's"
        );
        // Read back from the store, the same bounds hold.
        let rows: Vec<(u64, Vec<u8>)> = (1..=12_000u64)
            .map(|seq| {
                (
                    seq,
                    serde_json::to_vec(&entry(Some("a"), &long[..1000])).unwrap(),
                )
            })
            .collect();
        let back = AuditLog::read_back(&rows);
        let (count, bytes) = back.size();
        assert!(count <= MAX_IN_MEMORY && bytes <= MAX_IN_MEMORY_BYTES);
        assert_eq!(back.last_seq(), 12_000);
    }

    #[test]
    fn the_operator_reads_the_latest_of_every_tenant_in_order() {
        let log = AuditLog::default();
        for n in 0..6 {
            let tenant = [Some("a"), Some("b"), None][n % 3];
            log.push(entry(tenant, &n.to_string()));
        }
        let all = log.read(&Actor::Operator, None, 4);
        let details: Vec<&str> = all.iter().map(|e| e.detail.as_str()).collect();
        assert_eq!(details, ["2", "3", "4", "5"]);
        assert!(
            log.read(&Actor::Tenant("a".into()), Some("b"), 10)
                .is_empty()
        );
        assert!(log.read(&Actor::Anonymous, None, 10).is_empty());
    }
}
