//! Answers under idempotency keys on the durable store (one node): read
//! back whole at start, served from memory, and written to disk (fsync'd)
//! before the answer is sent, so a node killed after it acknowledged a
//! keyed request answers the retry after its restart with the same answer
//! instead of running the request again.
//!
//! One node needs no claims on disk: its table knows what runs on it, and
//! after a restart nothing runs. So [`OutcomeStore::claim`] only reports a
//! finished record, and `release` has nothing to undo.
//!
//! A keyed call that ran writes its answer in the same transaction as its
//! state ([`super::DurableState`]'s `commit_attached`, which hands the
//! record here with [`DurableOutcomes::kept`] once it is on disk): a crash
//! leaves both or neither. [`OutcomeStore::complete`] writes a record in a
//! transaction of its own: for an answer that involves no state write (a
//! handler's refusal) and to replace the answer written with the state
//! once the call's publishes are done (see `docs/exactly-once.md`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sluice_store::{Outcome, Store};

use crate::idempotency::{
    BoxFuture, Claim, EntryId, OutcomeStore, Record, StoreError, Stored, SystemClock,
};
use sluice_idempotency::Clock as _;

/// [`OutcomeStore`] on [`Store`].
pub struct DurableOutcomes {
    records: Mutex<HashMap<EntryId, Record>>,
    store: Arc<Store>,
}

impl DurableOutcomes {
    /// Answers in `store`, starting from what it read back (expired and
    /// unreadable records are left out; the first sweep removes them).
    pub fn new(store: Arc<Store>, outcomes: Vec<Outcome>) -> Arc<Self> {
        let now = SystemClock.now_ms();
        let mut records = HashMap::new();
        let mut unreadable = 0usize;
        for o in outcomes {
            match Record::decode(&o.record) {
                Some(r) if r.expires_at_ms > now => {
                    records.insert(EntryId::new(o.tenant, o.subject, o.key), r);
                }
                Some(_) => {}
                None => unreadable += 1,
            }
        }
        if unreadable > 0 {
            tracing::warn!(
                unreadable,
                "answers under idempotency keys that could not be read back were dropped"
            );
        }
        Arc::new(Self {
            records: Mutex::new(records),
            store,
        })
    }

    /// `outcome` was written to disk with a call's state: serve it from
    /// now on (an unreadable record is left out, as at start).
    pub fn kept(&self, outcome: &Outcome) {
        let Some(record) = Record::decode(&outcome.record) else {
            tracing::warn!("an answer written with a call's state could not be read back");
            return;
        };
        let id = EntryId::new(
            outcome.tenant.as_str(),
            outcome.subject.as_str(),
            outcome.key.as_str(),
        );
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, record);
    }

    fn live(&self, id: &EntryId, now_ms: u64) -> Option<Record> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .filter(|r| r.expires_at_ms > now_ms)
            .cloned()
    }
}

impl OutcomeStore for DurableOutcomes {
    fn claim<'a>(
        &'a self,
        id: &'a EntryId,
        _fingerprint: sluice_protocol::Fingerprint,
        _node: u64,
        now_ms: u64,
        _lease_until_ms: u64,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        let claim = match self.live(id, now_ms) {
            Some(r) => Claim::Held(Stored::Done(r)),
            None => Claim::Claimed,
        };
        Box::pin(std::future::ready(Ok(claim)))
    }

    fn get<'a>(
        &'a self,
        id: &'a EntryId,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
        let found = self.live(id, now_ms).map(Stored::Done);
        Box::pin(std::future::ready(Ok(found)))
    }

    fn complete<'a>(
        &'a self,
        id: &'a EntryId,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let outcome = Outcome {
                tenant: id.tenant.clone(),
                subject: id.subject.clone(),
                key: id.key.clone(),
                expires_at_ms: record.expires_at_ms,
                record: record.encode(),
            };
            let permit = self
                .store
                .reserve()
                .await
                .map_err(|e| StoreError(e.to_string()))?;
            permit
                .outcome(outcome)
                .wait()
                .await
                .map_err(|e| StoreError(e.to_string()))?;
            self.records
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id.clone(), record.clone());
            Ok(())
        })
    }

    fn release<'a>(
        &'a self,
        _id: &'a EntryId,
        _node: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn sweep(&self, now_ms: u64) -> usize {
        let gone = {
            let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
            let before = records.len();
            records.retain(|_, r| r.expires_at_ms > now_ms);
            before - records.len()
        };
        if gone > 0 {
            let store = self.store.clone();
            // The disk follows in the background; a failure leaves expired
            // records that the next sweep or start drops.
            tokio::spawn(async move {
                if let Ok(permit) = store.reserve().await {
                    let _ = permit.expire_outcomes(now_ms).wait().await;
                }
            });
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::{Answer, Fingerprint};
    use sluice_store::MemoryDisk;

    #[tokio::test]
    async fn an_answer_is_on_disk_when_complete_returns_and_read_back_after_a_restart() {
        let disk = MemoryDisk::new();
        let now = SystemClock.now_ms();
        let id = EntryId::new("t", "alice", "k1");
        let record = Record {
            fingerprint: Fingerprint([3; 32]),
            expires_at_ms: now + 60_000,
            answer: Answer::ack_json(r#"{"seq":12}"#).expect("json"),
        };
        {
            let opened = Store::open_on(disk.clone(), std::path::Path::new("memory")).unwrap();
            let outcomes = DurableOutcomes::new(opened.store.clone(), opened.outcomes);
            assert_eq!(
                outcomes
                    .claim(&id, record.fingerprint, 1, now, now + 1)
                    .await,
                Ok(Claim::Claimed)
            );
            outcomes.complete(&id, &record).await.unwrap();
            opened.store.close();
        }
        // A restart: the answer is found, and expires with its window.
        let opened = Store::open_on(disk.clone(), std::path::Path::new("memory")).unwrap();
        let outcomes = DurableOutcomes::new(opened.store.clone(), opened.outcomes);
        assert_eq!(
            outcomes
                .claim(&id, record.fingerprint, 2, now, now + 1)
                .await,
            Ok(Claim::Held(Stored::Done(record.clone())))
        );
        assert_eq!(outcomes.get(&id, record.expires_at_ms).await, Ok(None));
        assert_eq!(outcomes.sweep(record.expires_at_ms), 1);
        // A disk that refuses the write: the answer is not kept as if it were.
        disk.fail(true);
        let other = EntryId::new("t", "alice", "k2");
        assert!(outcomes.complete(&other, &record).await.is_err());
        assert_eq!(outcomes.get(&other, now).await, Ok(None));
    }
}
