//! Where answers outlive the table's memory: the [`OutcomeStore`] seam.
//!
//! The table keeps what runs and what was answered on this node; a store
//! keeps answers where a restart (a durable store) or another node of a
//! fleet (a shared one) finds them. Three implementations are meant:
//!
//! - [`MemoryOutcomeStore`] (here): the reference implementation, shared by
//!   several tables in tests to stand for a fleet or a restart;
//! - a durable store on one node, where the answer is written **in the
//!   same transaction as the call's effects** ([`crate::Ticket::record`],
//!   then [`crate::Ticket::completed`]): a crash between the effects and
//!   the ack leaves both or neither, so the retry after a restart gets the
//!   answer, or runs on state the first attempt never touched;
//! - a JetStream KV bucket in a fleet, whose per-message TTL forgets
//!   answers, and whose create-if-absent makes [`OutcomeStore::claim`]
//!   exclusive across nodes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

use sluice_protocol::{Answer, Fingerprint};

/// A boxed future, as the store's methods return (object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What an entry is for: a tenant, a subject (the token's `sub`) and the
/// key that subject chose. Two subjects never share an entry, whatever
/// their keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EntryId {
    /// The tenant.
    pub tenant: String,
    /// The subject.
    pub subject: String,
    /// The idempotency key.
    pub key: String,
}

impl EntryId {
    /// An entry id.
    pub fn new(
        tenant: impl Into<String>,
        subject: impl Into<String>,
        key: impl Into<String>,
    ) -> Self {
        Self {
            tenant: tenant.into(),
            subject: subject.into(),
            key: key.into(),
        }
    }
}

/// A finished request as stored: its fingerprint, when it is forgotten,
/// and its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The first attempt's fingerprint.
    pub fingerprint: Fingerprint,
    /// When the entry is forgotten (Unix ms).
    pub expires_at_ms: u64,
    /// The answer a retry gets.
    pub answer: Answer,
}

const RECORD_VERSION: u8 = 1;

impl Record {
    /// The record as bytes (what a durable or networked store writes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.answer.size());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.fingerprint.0);
        out.extend_from_slice(&self.expires_at_ms.to_be_bytes());
        match &self.answer {
            Answer::Ack(None) => out.push(0),
            Answer::Ack(Some(raw)) => {
                out.push(1);
                field(&mut out, raw.get());
            }
            Answer::Error { code, message } => {
                out.push(2);
                field(&mut out, code.as_str());
                field(&mut out, message);
            }
        }
        out
    }

    /// A record from [`Record::encode`]'s bytes; `None` for anything else
    /// (another version, truncated, not UTF-8, invalid JSON or code).
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let (&version, rest) = bytes.split_first()?;
        if version != RECORD_VERSION || rest.len() < 41 {
            return None;
        }
        let fingerprint = Fingerprint(rest[..32].try_into().ok()?);
        let expires_at_ms = u64::from_be_bytes(rest[32..40].try_into().ok()?);
        let mut body = &rest[41..];
        let answer = match rest[40] {
            0 => Answer::Ack(None),
            1 => Answer::ack_json(take(&mut body)?)?,
            2 => {
                let code = take(&mut body)?;
                Answer::error(code, take(&mut body)?.to_owned())?
            }
            _ => return None,
        };
        if !body.is_empty() {
            return None;
        }
        Some(Record {
            fingerprint,
            expires_at_ms,
            answer,
        })
    }
}

/// A length-prefixed (u32) UTF-8 field.
fn field(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// The next [`field`] of `body`, advancing it.
fn take<'a>(body: &mut &'a [u8]) -> Option<&'a str> {
    let len = u32::from_be_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let text = std::str::from_utf8(body.get(4..4usize.checked_add(len)?)?).ok()?;
    *body = &body[4 + len..];
    Some(text)
}

/// What a store holds for an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// A node runs the request (its claim lasts until `lease_until_ms`;
    /// past it, a retry may run the request itself: that node died).
    InFlight {
        /// The running attempt's fingerprint.
        fingerprint: Fingerprint,
        /// The node that claimed it.
        node: u64,
        /// When the claim lapses (Unix ms).
        lease_until_ms: u64,
    },
    /// It finished.
    Done(Record),
}

/// What [`OutcomeStore::claim`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Nothing (or a lapsed claim, or this node's own): the caller runs it.
    Claimed,
    /// Another node runs it, or it finished.
    Held(Stored),
}

/// A store failed; the request is answered `unavailable` and not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "idempotency store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

/// Where finished requests are kept beyond the table's memory.
pub trait OutcomeStore: Send + Sync + 'static {
    /// Atomically: if `id` holds a finished record or another node's live
    /// claim, say so ([`Claim::Held`]); otherwise mark it in flight for
    /// `node` until `lease_until_ms` and say [`Claim::Claimed`]. A record
    /// whose `expires_at_ms` has passed, a claim whose lease has passed,
    /// and a claim of the same `node` (the table knows what it runs) count
    /// as nothing. A store that only keeps answers (one node) may skip the
    /// marking: the table itself knows what runs on its node.
    fn claim<'a>(
        &'a self,
        id: &'a EntryId,
        fingerprint: Fingerprint,
        node: u64,
        now_ms: u64,
        lease_until_ms: u64,
    ) -> BoxFuture<'a, Result<Claim, StoreError>>;

    /// What `id` holds now (expired records and lapsed claims: `None`).
    fn get<'a>(
        &'a self,
        id: &'a EntryId,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Stored>, StoreError>>;

    /// Keep `record` under `id` until its `expires_at_ms` (replacing the
    /// claim).
    fn complete<'a>(
        &'a self,
        id: &'a EntryId,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Drop `node`'s claim on `id` (the attempt ended without an answer:
    /// the next attempt runs). A finished record stays.
    fn release<'a>(&'a self, id: &'a EntryId, node: u64) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Forget what expired by `now_ms`; how many entries went. Stores with
    /// their own TTL do nothing.
    fn sweep(&self, now_ms: u64) -> usize {
        let _ = now_ms;
        0
    }
}

/// The in-memory [`OutcomeStore`]: the reference implementation of the
/// contract. One store shared by two tables stands for two nodes of a
/// fleet; a new table on the same store stands for a restart with a
/// durable store.
#[derive(Debug, Default)]
pub struct MemoryOutcomeStore {
    entries: Mutex<HashMap<EntryId, Stored>>,
}

impl MemoryOutcomeStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many entries it holds (expired ones included until a sweep).
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn live(stored: &Stored, now_ms: u64) -> bool {
    match stored {
        Stored::InFlight { lease_until_ms, .. } => *lease_until_ms > now_ms,
        Stored::Done(r) => r.expires_at_ms > now_ms,
    }
}

impl OutcomeStore for MemoryOutcomeStore {
    fn claim<'a>(
        &'a self,
        id: &'a EntryId,
        fingerprint: Fingerprint,
        node: u64,
        now_ms: u64,
        lease_until_ms: u64,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let held = match entries.get(id) {
            Some(s @ Stored::Done(_)) if live(s, now_ms) => Some(s.clone()),
            Some(s @ Stored::InFlight { node: holder, .. })
                if live(s, now_ms) && *holder != node =>
            {
                Some(s.clone())
            }
            _ => None,
        };
        let claim = match held {
            Some(s) => Claim::Held(s),
            None => {
                entries.insert(
                    id.clone(),
                    Stored::InFlight {
                        fingerprint,
                        node,
                        lease_until_ms,
                    },
                );
                Claim::Claimed
            }
        };
        Box::pin(std::future::ready(Ok(claim)))
    }

    fn get<'a>(
        &'a self,
        id: &'a EntryId,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let found = entries.get(id).filter(|s| live(s, now_ms)).cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn complete<'a>(
        &'a self,
        id: &'a EntryId,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), Stored::Done(record.clone()));
        Box::pin(std::future::ready(Ok(())))
    }

    fn release<'a>(&'a self, id: &'a EntryId, node: u64) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(entries.get(id), Some(Stored::InFlight { node: holder, .. }) if *holder == node)
        {
            entries.remove(id);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn sweep(&self, now_ms: u64) -> usize {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let before = entries.len();
        entries.retain(|_, s| live(s, now_ms));
        before - entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::{Code, ErrorCode};

    fn record(answer: Answer) -> Record {
        Record {
            fingerprint: Fingerprint([7; 32]),
            expires_at_ms: 1_800_000_300_000,
            answer,
        }
    }

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        for answer in [
            Answer::Ack(None),
            Answer::ack_json(r#"{"seq":12,"text":"hé"}"#).expect("json"),
            Answer::error("empty_text", "say something".into()).expect("code"),
            Answer::Error {
                code: Code::Host(ErrorCode::HandlerFailed),
                message: String::new(),
            },
        ] {
            let r = record(answer);
            assert_eq!(Record::decode(&r.encode()), Some(r.clone()));
            let bytes = r.encode();
            for cut in 0..bytes.len() {
                assert_eq!(Record::decode(&bytes[..cut]), None, "cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(b'x');
            assert_eq!(Record::decode(&longer), None);
        }
        let mut other_version = record(Answer::Ack(None)).encode();
        other_version[0] = 2;
        assert_eq!(Record::decode(&other_version), None);
        let mut bad_code = record(Answer::error("x", "m".into()).expect("code")).encode();
        let at = bad_code.iter().rposition(|b| *b == b'x').expect("the code");
        bad_code[at] = b'X'; // not a code
        assert_eq!(Record::decode(&bad_code), None);
    }

    #[tokio::test]
    async fn claims_are_exclusive_between_nodes_until_their_lease() {
        let s = MemoryOutcomeStore::new();
        let id = EntryId::new("t", "alice", "k1");
        let fp = Fingerprint([1; 32]);
        assert_eq!(s.claim(&id, fp, 1, 1000, 2000).await, Ok(Claim::Claimed));
        // The same node again: its table decides.
        assert_eq!(s.claim(&id, fp, 1, 1001, 2000).await, Ok(Claim::Claimed));
        assert!(matches!(
            s.claim(&id, fp, 2, 1500, 2500).await,
            Ok(Claim::Held(Stored::InFlight { node: 1, .. }))
        ));
        // The lease lapsed: node 1 died; node 2 takes over.
        assert_eq!(s.claim(&id, fp, 2, 2000, 3000).await, Ok(Claim::Claimed));
        // Released by someone else's node: no effect.
        s.release(&id, 1).await.expect("release");
        assert!(matches!(
            s.get(&id, 2100).await,
            Ok(Some(Stored::InFlight { node: 2, .. }))
        ));
        s.release(&id, 2).await.expect("release");
        assert_eq!(s.get(&id, 2100).await, Ok(None));
        let r = record(Answer::Ack(None));
        s.complete(&id, &r).await.expect("complete");
        assert_eq!(
            s.claim(&id, fp, 3, 2200, 3200).await,
            Ok(Claim::Held(Stored::Done(r.clone())))
        );
        s.release(&id, 3).await.expect("release");
        assert_eq!(s.get(&id, 2200).await, Ok(Some(Stored::Done(r.clone()))));
        // Expired: gone for reads and claims, and swept.
        assert_eq!(s.get(&id, r.expires_at_ms).await, Ok(None));
        assert_eq!(s.sweep(r.expires_at_ms), 1);
        assert!(s.is_empty());
    }
}
