//! The management audit log: every change and every refusal, with who asked,
//! from where and when. Kept in memory (the latest [`MAX_IN_MEMORY`]) and,
//! with a durable store, on disk (the latest `sluice_store::MAX_AUDIT_ENTRIES`).

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// Entries the API can read back.
pub const MAX_IN_MEMORY: usize = 10_000;

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

/// The audit log.
#[derive(Default)]
pub struct AuditLog {
    inner: Mutex<(u64, VecDeque<AuditEntry>)>,
}

impl AuditLog {
    /// The log as read back from the store.
    pub fn read_back(rows: &[(u64, Vec<u8>)]) -> Self {
        let mut entries = VecDeque::new();
        let mut last = 0;
        for (seq, bytes) in rows {
            last = last.max(*seq);
            if let Ok(mut e) = serde_json::from_slice::<AuditEntry>(bytes) {
                e.seq = *seq;
                entries.push_back(e);
            }
        }
        while entries.len() > MAX_IN_MEMORY {
            entries.pop_front();
        }
        Self {
            inner: Mutex::new((last, entries)),
        }
    }

    /// Record `entry`: its sequence number and its JSON (for the store).
    pub fn push(&self, mut entry: AuditEntry) -> (u64, Vec<u8>) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.0 += 1;
        entry.seq = inner.0;
        log(&entry);
        let bytes = serde_json::to_vec(&entry).unwrap_or_default();
        if inner.1.len() == MAX_IN_MEMORY {
            inner.1.pop_front();
        }
        inner.1.push_back(entry);
        (inner.0, bytes)
    }

    /// Log `entry` and encode it, without keeping it (cluster mode: the
    /// fleet's audit stream numbers it, and [`AuditLog::insert`] keeps it).
    pub fn encode(entry: &AuditEntry) -> Vec<u8> {
        log(entry);
        serde_json::to_vec(entry).unwrap_or_default()
    }

    /// Keep an entry numbered elsewhere (the fleet's audit stream), in order.
    pub fn insert(&self, seq: u64, bytes: &[u8]) {
        let Ok(mut entry) = serde_json::from_slice::<AuditEntry>(bytes) else {
            return;
        };
        entry.seq = seq;
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if seq <= inner.0 {
            return;
        }
        inner.0 = seq;
        if inner.1.len() == MAX_IN_MEMORY {
            inner.1.pop_front();
        }
        inner.1.push_back(entry);
    }

    /// The highest sequence number kept.
    pub fn last_seq(&self) -> u64 {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).0
    }

    /// Entries `actor` may read (a tenant: its own), about `tenant` when
    /// given, the latest `limit`, oldest first.
    pub fn read(&self, actor: &Actor, tenant: Option<&str>, limit: usize) -> Vec<AuditEntry> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<AuditEntry> = inner
            .1
            .iter()
            .rev()
            .filter(|e| match (actor, &e.tenant) {
                (Actor::Operator, _) => true,
                (Actor::Tenant(t), Some(et)) => t == et,
                _ => false,
            })
            .filter(|e| tenant.is_none_or(|t| e.tenant.as_deref() == Some(t)))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
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
