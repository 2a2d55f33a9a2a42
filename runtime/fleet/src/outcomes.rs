//! Answers under idempotency keys across the fleet, on a JetStream KV
//! bucket (`{prefix}_outcomes`): a retry that lands on another node finds
//! the first attempt's answer, or waits for it while it runs there.
//!
//! One key per entry, `kv_token(tenant).kv_token(subject).kv_token(key)`,
//! holding either a claim (`I`: the running attempt's fingerprint, its
//! node, and when its lease lapses) or the record (`D`: the table's
//! [`Record`] bytes). A claim is made with create-if-absent (expected
//! revision 0): of two nodes claiming at once one wins, the other waits
//! for its answer. A lapsed claim (its node died), an expired record or
//! this node's own claim is taken over with an update at the revision
//! read, so two nodes taking over at once cannot both win either.
//!
//! The bucket's TTL (`max_age`) is the longest window of the tenants
//! configured when the node started (an existing bucket with a shorter
//! one is lengthened); each record also carries its own expiry, checked on
//! every read, so a tenant with a shorter window is not answered past it.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use sluice_server::idempotency::{
    BoxFuture, Claim, EntryId, OutcomeStore, Record, StoreError, Stored,
};

use crate::bucket::{kv_token, open_bucket};
use crate::error::FleetError;

/// [`OutcomeStore`] on a JetStream KV bucket.
pub struct KvOutcomes {
    store: kv::Store,
}

/// Attempts at a claim that lost races (an update at a revision another
/// node changed first) before the request is answered `unavailable`.
const CLAIM_ATTEMPTS: usize = 5;

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("JetStream KV: {e}"))
}

fn entry_key(id: &EntryId) -> String {
    format!(
        "{}.{}.{}",
        kv_token(&id.tenant),
        kv_token(&id.subject),
        kv_token(&id.key)
    )
}

fn encode(stored: &Stored) -> Bytes {
    match stored {
        Stored::InFlight {
            fingerprint,
            node,
            lease_until_ms,
        } => {
            let mut out = Vec::with_capacity(49);
            out.push(b'I');
            out.extend_from_slice(&fingerprint.0);
            out.extend_from_slice(&node.to_be_bytes());
            out.extend_from_slice(&lease_until_ms.to_be_bytes());
            Bytes::from(out)
        }
        Stored::Done(record) => {
            let mut out = vec![b'D'];
            out.extend_from_slice(&record.encode());
            Bytes::from(out)
        }
    }
}

fn decode(bytes: &[u8]) -> Option<Stored> {
    let (&tag, rest) = bytes.split_first()?;
    match tag {
        b'I' if rest.len() == 48 => Some(Stored::InFlight {
            fingerprint: sluice_protocol::Fingerprint(rest[..32].try_into().ok()?),
            node: u64::from_be_bytes(rest[32..40].try_into().ok()?),
            lease_until_ms: u64::from_be_bytes(rest[40..48].try_into().ok()?),
        }),
        b'D' => Record::decode(rest).map(Stored::Done),
        _ => None,
    }
}

fn live(stored: &Stored, now_ms: u64) -> bool {
    match stored {
        Stored::InFlight { lease_until_ms, .. } => *lease_until_ms > now_ms,
        Stored::Done(r) => r.expires_at_ms > now_ms,
    }
}

impl KvOutcomes {
    /// Open (or create) the bucket with a TTL of `window` (the longest
    /// configured), lengthening an existing bucket's shorter one.
    pub async fn open(
        js: &jetstream::Context,
        prefix: &str,
        replicas: usize,
        window: Duration,
    ) -> Result<Self, FleetError> {
        let bucket = format!("{prefix}_outcomes");
        let store = open_bucket(
            js,
            kv::Config {
                bucket: bucket.clone(),
                description: "Sluice answers under idempotency keys".into(),
                history: 1,
                max_age: window,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let stream_name = format!("KV_{bucket}");
        let mut stream = js
            .get_stream(&stream_name)
            .await
            .map_err(|e| FleetError::nats("the outcomes bucket's stream", e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| FleetError::nats("the outcomes bucket's stream", e))?;
        if info.config.max_age < window {
            let mut config = info.config.clone();
            config.max_age = window;
            js.update_stream(config)
                .await
                .map_err(|e| FleetError::nats(format!("cannot lengthen {stream_name}'s TTL"), e))?;
        }
        Ok(Self { store })
    }

    async fn read(&self, key: &str) -> Result<Option<(Stored, u64)>, StoreError> {
        let entry = self.store.entry(key).await.map_err(failed)?;
        Ok(entry.and_then(|e| match e.operation {
            kv::Operation::Put => decode(&e.value).map(|s| (s, e.revision)),
            kv::Operation::Delete | kv::Operation::Purge => None,
        }))
    }
}

impl OutcomeStore for KvOutcomes {
    fn claim<'a>(
        &'a self,
        id: &'a EntryId,
        fingerprint: sluice_protocol::Fingerprint,
        node: u64,
        now_ms: u64,
        lease_until_ms: u64,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            let key = entry_key(id);
            let mine = encode(&Stored::InFlight {
                fingerprint,
                node,
                lease_until_ms,
            });
            for _ in 0..CLAIM_ATTEMPTS {
                // What the last revision holds (an unreadable value counts
                // as nothing: it is replaced).
                let entry = self.store.entry(key.as_str()).await.map_err(failed)?;
                let current = entry.as_ref().and_then(|e| match e.operation {
                    kv::Operation::Put => Some((decode(&e.value), e.revision)),
                    kv::Operation::Delete | kv::Operation::Purge => None,
                });
                match current {
                    None => match self.store.create(key.as_str(), mine.clone()).await {
                        Ok(_) => return Ok(Claim::Claimed),
                        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(failed(e)),
                    },
                    Some((Some(stored), _))
                        if live(&stored, now_ms)
                            && !matches!(&stored, Stored::InFlight { node: n, .. } if *n == node) =>
                    {
                        return Ok(Claim::Held(stored));
                    }
                    // Expired, lapsed, this node's own, or unreadable.
                    Some((_, revision)) => {
                        if self
                            .store
                            .update(key.as_str(), mine.clone(), revision)
                            .await
                            .is_ok()
                        {
                            return Ok(Claim::Claimed);
                        }
                    }
                }
            }
            Err(StoreError(
                "JetStream KV: the claim kept losing races".into(),
            ))
        })
    }

    fn get<'a>(
        &'a self,
        id: &'a EntryId,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .read(&entry_key(id))
                .await?
                .map(|(s, _)| s)
                .filter(|s| live(s, now_ms)))
        })
    }

    fn complete<'a>(
        &'a self,
        id: &'a EntryId,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.store
                .put(entry_key(id), encode(&Stored::Done(record.clone())))
                .await
                .map(|_| ())
                .map_err(failed)
        })
    }

    fn release<'a>(&'a self, id: &'a EntryId, node: u64) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = entry_key(id);
            if let Some((Stored::InFlight { node: holder, .. }, revision)) = self.read(&key).await?
                && holder == node
            {
                // Only that revision: a record or another claim written
                // since stays.
                self.store
                    .delete_expect_revision(key, Some(revision))
                    .await
                    .map_err(failed)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::{Answer, Fingerprint};

    #[test]
    fn claims_and_records_round_trip_and_garbage_is_nothing() {
        let claim = Stored::InFlight {
            fingerprint: Fingerprint([9; 32]),
            node: 42,
            lease_until_ms: 1_800_000_000_000,
        };
        assert_eq!(decode(&encode(&claim)), Some(claim));
        let done = Stored::Done(Record {
            fingerprint: Fingerprint([1; 32]),
            expires_at_ms: 1_800_000_300_000,
            answer: Answer::ack_json(r#"{"seq":1}"#).expect("json"),
        });
        assert_eq!(decode(&encode(&done)), Some(done));
        for bad in [&b""[..], b"I", b"X123", b"D\x02"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        assert_eq!(
            entry_key(&EntryId::new("t", "alice", "order:1.2")),
            "t.alice.order=3A1=2E2"
        );
    }
}
