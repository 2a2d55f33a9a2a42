//! Handler state on the durable store: reads are served from memory (the
//! whole state is read back at start), and a call's commit returns only
//! once its writes are on disk, so the call's `ack` never acknowledges a
//! write that a crash could lose.
//!
//! Memory takes a commit only after the disk did: the store's writer
//! applies it once the transaction is fsync'd, in the writer's queue order
//! (the disk's order), whether or not the call that made it still waits,
//! and never when the write failed. So no read ever sees a value that the
//! disk does not hold or will not hold (a failed write leaves memory as the
//! disk is), and memory and disk agree.
//!
//! Versioned like the memory store: a call's commit writes nothing and
//! answers [`CommitError::Conflict`] if a key it writes changed since it
//! read it (calls of a tenant run concurrently; unchecked, two
//! read-modify-writes of one key would both be acknowledged with the same
//! value: a lost update). Since memory moves only once the disk has a
//! write, a key whose write is queued but not yet on disk is *in flight*:
//! a checked commit touching it first waits until that write has landed
//! (or failed), then checks against memory. So a check and the write it
//! allows are one step in the disk's order, and no two checked writes of a
//! key are ever queued at once.
//!
//! A keyed call's answer goes into the same write transaction as its state
//! ([`StateStore::commit_attached`]): a crash leaves both or neither.
//! Once on disk, the answer is also handed to the node's
//! [`DurableOutcomes`] (which serves it from memory).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use sluice_sandbox::{
    Attachment, BoxFuture, CommitError, MemoryStateStore, Revisions, StateStore, StoreError, Usage,
    Versioned, Writes,
};
use sluice_store::{Durable, Outcome, Permit, Store};

use super::durable_outcomes::DurableOutcomes;

/// Keys with a checked write queued and not yet on disk, by tenant.
type InFlight = HashMap<String, HashSet<String>>;

/// [`StateStore`] on [`Store`].
pub struct DurableState {
    memory: Arc<MemoryStateStore>,
    store: Arc<Store>,
    in_flight: Arc<Mutex<InFlight>>,
    /// Woken whenever an in-flight write landed or failed.
    landed: Arc<tokio::sync::Notify>,
    /// Told of every answer written with a call's state, once on disk.
    outcomes: Option<Arc<DurableOutcomes>>,
}

/// Marks a checked write's keys in flight; they are released when it is
/// dropped: after the writer applied the write to memory (the callback
/// owns it), or if the write is dropped unqueued (the writer stopped).
struct Landing {
    tenant: String,
    keys: Vec<String>,
    in_flight: Arc<Mutex<InFlight>>,
    landed: Arc<tokio::sync::Notify>,
}

impl Drop for Landing {
    fn drop(&mut self) {
        let mut map = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(keys) = map.get_mut(&self.tenant) {
            for k in &self.keys {
                keys.remove(k);
            }
            if keys.is_empty() {
                map.remove(&self.tenant);
            }
        }
        drop(map);
        self.landed.notify_waiters();
    }
}

impl DurableState {
    /// State in `store`, starting from what it read back.
    pub fn new(store: Arc<Store>, state: Vec<(String, String, Vec<u8>)>) -> Arc<Self> {
        Self::build(store, state, None)
    }

    /// [`DurableState::new`], handing the answers written with a call's
    /// state ([`StateStore::commit_attached`]) to `outcomes` once they are
    /// on disk.
    pub fn with_outcomes(
        store: Arc<Store>,
        state: Vec<(String, String, Vec<u8>)>,
        outcomes: Arc<DurableOutcomes>,
    ) -> Arc<Self> {
        Self::build(store, state, Some(outcomes))
    }

    fn build(
        store: Arc<Store>,
        state: Vec<(String, String, Vec<u8>)>,
        outcomes: Option<Arc<DurableOutcomes>>,
    ) -> Arc<Self> {
        let memory = MemoryStateStore::new();
        let mut by_tenant: std::collections::BTreeMap<String, Writes> = Default::default();
        for (tenant, key, value) in state {
            by_tenant
                .entry(tenant)
                .or_default()
                .insert(key, Some(value));
        }
        for (tenant, writes) in by_tenant {
            memory.commit_now(&tenant, writes);
        }
        Arc::new(Self {
            memory,
            store,
            in_flight: Arc::default(),
            landed: Arc::default(),
            outcomes,
        })
    }

    /// Under the in-flight lock: if no key of `writes` is in flight, check
    /// `expected` against memory and, if it holds, queue the write on
    /// `permit` (its keys in flight until it lands). `Err(permit)`: a key
    /// is in flight, wait and try again.
    fn check_and_queue(
        &self,
        tenant: &str,
        expected: &Revisions,
        writes: &Writes,
        outcome: &Option<Outcome>,
        permit: Permit,
    ) -> Result<Result<Durable, CommitError>, Permit> {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(keys) = in_flight.get(tenant)
            && writes.keys().any(|k| keys.contains(k))
        {
            return Err(permit);
        }
        let changed = expected
            .iter()
            .any(|(k, rev)| self.memory.get_versioned_now(tenant, k).1 != *rev);
        if changed {
            // The unused permit goes back to the queue; nothing is written.
            return Ok(Err(CommitError::Conflict));
        }
        let keys: Vec<String> = writes.keys().cloned().collect();
        in_flight
            .entry(tenant.to_owned())
            .or_default()
            .extend(keys.iter().cloned());
        let landing = Landing {
            tenant: tenant.to_owned(),
            keys,
            in_flight: self.in_flight.clone(),
            landed: self.landed.clone(),
        };
        Ok(Ok(self.queue(
            permit,
            tenant,
            writes.clone(),
            outcome.clone(),
            landing,
        )))
    }

    /// Queue `writes` (with `outcome` in the same transaction); memory
    /// takes them once they are on disk, then `landing` (if any) is
    /// dropped.
    fn queue(
        &self,
        permit: Permit,
        tenant: &str,
        writes: Writes,
        outcome: Option<Outcome>,
        landing: impl Send + 'static,
    ) -> Durable {
        let list = writes.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let memory = self.memory.clone();
        let owner = tenant.to_owned();
        let Some(outcome) = outcome else {
            return permit.commit_state_then(
                tenant,
                list,
                Box::new(move |written| {
                    if written.is_ok() {
                        memory.commit_now(&owner, writes);
                    }
                    drop(landing);
                }),
            );
        };
        let outcomes = self.outcomes.clone();
        let kept = outcome.clone();
        permit.commit_state_and_outcome_then(
            list,
            outcome,
            Box::new(move |written| {
                if written.is_ok() {
                    memory.commit_now(&owner, writes);
                    if let Some(outcomes) = outcomes {
                        outcomes.kept(&kept);
                    }
                }
                drop(landing);
            }),
        )
    }
}

/// Await a queued write: on disk, or the store's error (logged).
async fn durable(tenant: &str, written: Durable) -> Result<(), StoreError> {
    written.wait().await.map_err(|e| {
        tracing::error!(tenant, error = %e, "state writes could not be made durable");
        StoreError(e.to_string())
    })
}

impl StateStore for DurableState {
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        self.memory.get(tenant, key)
    }

    fn entry_bytes<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<usize>, StoreError>> {
        self.memory.entry_bytes(tenant, key)
    }

    fn usage<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<Usage, StoreError>> {
        self.memory.usage(tenant)
    }

    fn commit<'a>(
        &'a self,
        tenant: &'a str,
        writes: Writes,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if writes.is_empty() {
                return Ok(());
            }
            let permit = self
                .store
                .reserve()
                .await
                .map_err(|e| StoreError(e.to_string()))?;
            durable(tenant, self.queue(permit, tenant, writes, None, ())).await
        })
    }

    fn versioned(&self) -> bool {
        true
    }

    fn get_versioned<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Versioned, StoreError>> {
        Box::pin(std::future::ready(Ok(self
            .memory
            .get_versioned_now(tenant, key))))
    }

    fn commit_checked<'a>(
        &'a self,
        tenant: &'a str,
        expected: Revisions,
        writes: Writes,
    ) -> BoxFuture<'a, Result<(), CommitError>> {
        if writes.is_empty() {
            return Box::pin(std::future::ready(Ok(())));
        }
        self.commit_with(tenant, expected, writes, None)
    }

    fn attaches(&self) -> bool {
        true
    }

    fn commit_attached<'a>(
        &'a self,
        tenant: &'a str,
        expected: Revisions,
        writes: Writes,
        attachment: Attachment,
    ) -> BoxFuture<'a, Result<(), CommitError>> {
        let outcome = Outcome {
            tenant: tenant.to_owned(),
            subject: attachment.subject,
            key: attachment.key,
            expires_at_ms: attachment.expires_at_ms,
            record: attachment.record,
        };
        self.commit_with(tenant, expected, writes, Some(outcome))
    }
}

impl DurableState {
    /// A checked commit of `writes` (possibly none), with `outcome` in the
    /// same transaction.
    fn commit_with<'a>(
        &'a self,
        tenant: &'a str,
        expected: Revisions,
        writes: Writes,
        outcome: Option<Outcome>,
    ) -> BoxFuture<'a, Result<(), CommitError>> {
        Box::pin(async move {
            let mut permit = self
                .store
                .reserve()
                .await
                .map_err(|e| CommitError::Store(StoreError(e.to_string())))?;
            let written = loop {
                // Registered before the check: a landing in between wakes it.
                let landed = self.landed.notified();
                tokio::pin!(landed);
                landed.as_mut().enable();
                match self.check_and_queue(tenant, &expected, &writes, &outcome, permit) {
                    Ok(Ok(written)) => break written,
                    Ok(Err(conflict)) => return Err(conflict),
                    Err(unused) => permit = unused,
                }
                landed.await;
            };
            durable(tenant, written).await.map_err(CommitError::Store)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_store::MemoryDisk;

    #[tokio::test]
    async fn a_write_the_disk_refused_is_never_read() {
        let disk = MemoryDisk::new();
        let opened = Store::open_on(disk.clone(), std::path::Path::new("memory")).unwrap();
        let state = DurableState::new(opened.store, opened.state);
        let write = |v: &str| Writes::from([("k".to_owned(), Some(v.as_bytes().to_vec()))]);
        state.commit("t", write("v1")).await.unwrap();
        assert_eq!(state.get("t", "k").await.unwrap(), Some(b"v1".to_vec()));
        disk.fail(true);
        assert!(state.commit("t", write("v2")).await.is_err());
        assert_eq!(
            state.get("t", "k").await.unwrap(),
            Some(b"v1".to_vec()),
            "memory holds what the disk holds, not the write it refused"
        );
        assert_eq!(state.usage("t").await.unwrap().keys, 1);
    }

    fn open() -> (MemoryDisk, Arc<DurableState>) {
        let disk = MemoryDisk::new();
        let opened = Store::open_on(disk.clone(), std::path::Path::new("memory")).unwrap();
        (disk, DurableState::new(opened.store, opened.state))
    }

    fn write(v: &str) -> Writes {
        Writes::from([("k".to_owned(), Some(v.as_bytes().to_vec()))])
    }

    #[tokio::test]
    async fn a_read_modify_write_that_lost_a_race_writes_nothing() {
        let (_disk, state) = open();
        assert!(state.versioned());
        let (_, seen) = state.get_versioned("t", "k").await.unwrap();
        let expected = Revisions::from([("k".to_owned(), seen)]);
        state
            .commit_checked("t", expected.clone(), write("first"))
            .await
            .unwrap();
        assert_eq!(
            state.commit_checked("t", expected, write("second")).await,
            Err(CommitError::Conflict)
        );
        assert_eq!(state.get("t", "k").await.unwrap(), Some(b"first".to_vec()));
        assert_eq!(
            state
                .commit_checked("u", Revisions::from([("k".to_owned(), 0)]), write("u"))
                .await,
            Ok(()),
            "another tenant's key of the same name is another key"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_increments_each_count_once() {
        let (_disk, state) = open();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let state = state.clone();
            tasks.push(tokio::spawn(async move {
                let mut conflicts = 0;
                loop {
                    let (value, seen) = state.get_versioned("t", "k").await.unwrap();
                    let n: u64 =
                        value.map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap());
                    let expected = Revisions::from([("k".to_owned(), seen)]);
                    match state
                        .commit_checked("t", expected, write(&(n + 1).to_string()))
                        .await
                    {
                        Ok(()) => return conflicts,
                        Err(CommitError::Conflict) => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(state.get("t", "k").await.unwrap(), Some(b"16".to_vec()));
    }

    /// A keyed call's answer rides in its state transaction: on disk
    /// together (read back after a restart, served by the outcome store at
    /// once), or, when the disk refuses the write, neither in memory nor on
    /// disk, and the outcome store does not serve it.
    #[tokio::test]
    async fn a_keyed_calls_answer_is_committed_with_its_state_or_not_at_all() {
        use crate::idempotency::{EntryId, OutcomeStore as _, Record, Stored};
        use sluice_protocol::{Answer, Fingerprint};

        let disk = MemoryDisk::new();
        let name = std::path::Path::new("memory");
        let now = 1_000;
        let record = |seq: u32| Record {
            fingerprint: Fingerprint([seq as u8; 32]),
            expires_at_ms: u64::MAX,
            answer: Answer::ack_json(&format!(r#"{{"seq":{seq}}}"#)).expect("json"),
        };
        let attachment = |key: &str, seq: u32| Attachment {
            subject: "alice".into(),
            key: key.into(),
            expires_at_ms: u64::MAX,
            record: record(seq).encode(),
        };
        {
            let opened = Store::open_on(disk.clone(), name).unwrap();
            let outcomes = DurableOutcomes::new(opened.store.clone(), opened.outcomes);
            let state =
                DurableState::with_outcomes(opened.store.clone(), opened.state, outcomes.clone());
            assert!(state.attaches());
            state
                .commit_attached("t", Revisions::new(), write("v1"), attachment("k1", 1))
                .await
                .unwrap();
            let id = EntryId::new("t", "alice", "k1");
            assert_eq!(
                outcomes.get(&id, now).await,
                Ok(Some(Stored::Done(record(1)))),
                "served as soon as it is on disk"
            );
            disk.fail(true);
            assert!(matches!(
                state
                    .commit_attached("t", Revisions::new(), write("v2"), attachment("k2", 2))
                    .await,
                Err(CommitError::Store(_))
            ));
            assert_eq!(state.get("t", "k").await.unwrap(), Some(b"v1".to_vec()));
            let id2 = EntryId::new("t", "alice", "k2");
            assert_eq!(outcomes.get(&id2, now).await, Ok(None));
            disk.fail(false);
            // An answer without state writes (the call wrote nothing).
            state
                .commit_attached("t", Revisions::new(), Writes::new(), attachment("k3", 3))
                .await
                .unwrap();
            opened.store.close();
        }
        let opened = Store::open_on(disk.clone(), name).unwrap();
        assert_eq!(
            opened.state,
            vec![("t".to_owned(), "k".to_owned(), b"v1".to_vec())]
        );
        let keys: Vec<&str> = opened.outcomes.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["k1", "k3"], "the refused write left no answer");
        assert_eq!(Record::decode(&opened.outcomes[0].record), Some(record(1)));
    }

    #[tokio::test]
    async fn a_checked_write_the_disk_refused_changes_nothing_and_holds_no_key() {
        let (disk, state) = open();
        let at = |rev| Revisions::from([("k".to_owned(), rev)]);
        state.commit_checked("t", at(0), write("v1")).await.unwrap();
        let (_, seen) = state.get_versioned("t", "k").await.unwrap();
        disk.fail(true);
        assert!(matches!(
            state.commit_checked("t", at(seen), write("v2")).await,
            Err(CommitError::Store(_))
        ));
        assert_eq!(
            state.get_versioned("t", "k").await.unwrap(),
            (Some(b"v1".to_vec()), seen)
        );
        disk.fail(false);
        // The failed write released its key: the same read's commit goes
        // through now.
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            state.commit_checked("t", at(seen), write("v3")),
        )
        .await
        .expect("not left waiting on the failed write")
        .unwrap();
        assert_eq!(state.get("t", "k").await.unwrap(), Some(b"v3".to_vec()));
    }
}
