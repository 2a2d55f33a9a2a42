//! The durable embedded store: handler state and channel history in one
//! redb database (`<data_dir>/sluice.redb`), written by one thread.
//!
//! Writers (calls committing state, publishes appending to a channel's
//! history) first [`Store::reserve`] a place in the writer's bounded queue,
//! then hand it one operation and get a [`Durable`] to await. The writer
//! takes everything queued at that moment into one write transaction and
//! commits it with `Durability::Immediate` (fsync): concurrent writers share
//! one fsync (group commit). A [`Durable`] resolves only after the fsync, so
//! whoever awaits it before answering a client never acknowledges anything
//! a `kill -9` could lose. Operations commit in queue order.
//!
//! At open the whole content is read back ([`Opened`]): the server keeps
//! state and history in memory and the disk is their durable copy.
//!
//! A clean shutdown is recorded. After an unclean one (a crash, `kill -9`)
//! the history offsets a channel hands out next jump past any offset that
//! might have been delivered live but not yet written ([`Opened::unclean`]):
//! offsets stay strictly increasing, never reused.
//!
//! A failed write (a full disk, an I/O error) fails the batch it was in;
//! redb then refuses every later transaction until the database is opened
//! again, so the writer reopens it before the next batch (retrying at each
//! batch while that fails): once the disk has room again the store takes
//! writes again, without a restart. What the failed batch held is lost and
//! was never acknowledged (a publish answers an error, a state write is
//! not applied); a history offset it held stays unused. The run is then
//! never recorded as clean, so the next start jumps offsets past whatever
//! was handed out but never written.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod memory_disk;

pub use memory_disk::MemoryDisk;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

pub use redb::StorageBackend;
use redb::{
    Database, Durability, Key, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, Value,
};
use tokio::sync::{mpsc, oneshot};

/// Handler state: (tenant, key) -> value.
const STATE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("state");
/// Channels with history: (tenant, channel) -> (epoch, last offset).
const CHANNELS: TableDefinition<(&str, &str), (&str, u64)> = TableDefinition::new("channels");
/// History entries: (tenant, channel, offset) -> (unix ms, event data).
const HISTORY: TableDefinition<(&str, &str, u64), (u64, &[u8])> = TableDefinition::new("history");
/// Components pushed through the management API: SHA-256 (hex) -> bytes.
const COMPONENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("components");
/// Pushed handlers: (tenant, name) -> their record (JSON: versions,
/// verification reports, routing).
const HANDLERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("handlers");
/// The management audit log: sequence number -> entry (JSON).
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// Audit entries kept on disk (and read back) at most; older ones are
/// removed as new ones are written.
pub const MAX_AUDIT_ENTRIES: u64 = 10_000;
/// Bytes of audit entries kept on disk at most (the entries themselves,
/// as handed to the store); the oldest are removed first.
pub const MAX_AUDIT_BYTES: u64 = 16 << 20;
/// Answers remembered under idempotency keys: (tenant, subject, key) ->
/// (when the entry is forgotten, unix ms; the record, as the idempotency
/// table encodes it). Opaque to the store but for the expiry.
const OUTCOMES: TableDefinition<(&str, &str, &str), (u64, &[u8])> =
    TableDefinition::new("outcomes");
/// Store metadata: `clean` (1 after a clean shutdown, 0 while running),
/// `audit_bytes` (the bytes of the audit entries kept).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Tenants created through the management API: id -> (revision, record).
const TENANTS: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("tenants");
/// The key in `meta` of the highest tenant revision handed out.
const TENANT_REVISION: &str = "tenant_revision";

/// Operations the writer queue holds at most; a writer waits for room.
pub const QUEUE: usize = 8192;
/// Operations one transaction takes at most.
const MAX_BATCH: usize = 4096;
/// How far a channel's offsets jump after an unclean shutdown: more than
/// could have been handed out without being written (queue plus a batch).
pub const UNCLEAN_OFFSET_JUMP: u64 = (QUEUE + MAX_BATCH) as u64 + 1;

/// The store failed (disk, corruption, or it was closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// One history entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its offset in the channel.
    pub offset: u64,
    /// When it was published, ms since the Unix epoch.
    pub unix_ms: u64,
    /// The event's `data`, JSON text.
    pub data: Vec<u8>,
}

/// A channel's history as read at open.
#[derive(Clone, Debug)]
pub struct ChannelHistory {
    /// The tenant.
    pub tenant: String,
    /// The channel.
    pub channel: String,
    /// The channel's epoch.
    pub epoch: String,
    /// The last offset handed out (that reached the disk).
    pub last_offset: u64,
    /// The entries kept, oldest first.
    pub entries: Vec<Entry>,
}

/// What [`Store::open`] read back.
pub struct Opened {
    /// The store, ready for writes.
    pub store: Arc<Store>,
    /// Every tenant's state: (tenant, key, value).
    pub state: Vec<(String, String, Vec<u8>)>,
    /// Every channel with history.
    pub channels: Vec<ChannelHistory>,
    /// The last run did not shut down cleanly.
    pub unclean: bool,
    /// Pushed handlers' records: (tenant, name, record).
    pub handlers: Vec<(String, String, Vec<u8>)>,
    /// The audit log, oldest first: (sequence number, entry).
    pub audit: Vec<(u64, Vec<u8>)>,
    /// Answers remembered under idempotency keys (expired ones included:
    /// the reader drops them, and the next [`Permit::expire_outcomes`]).
    pub outcomes: Vec<Outcome>,
    /// Tenants created through the management API: (id, revision, record).
    pub tenants: Vec<(String, u64, Vec<u8>)>,
    /// The highest tenant revision ever handed out (removed tenants'
    /// included: a revision is never reused).
    pub tenant_revision: u64,
}

/// An answer remembered under an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The tenant.
    pub tenant: String,
    /// The subject whose key it is.
    pub subject: String,
    /// The key.
    pub key: String,
    /// When it is forgotten (unix ms).
    pub expires_at_ms: u64,
    /// The record (its fingerprint and answer), as the table encodes it.
    pub record: Vec<u8>,
}

/// A pushed handler's record by (tenant, name); `None` removes it.
pub type RecordWrite = ((String, String), Option<Vec<u8>>);

/// One change to the handler registry, written atomically.
#[derive(Debug, Default)]
pub struct RegistryWrite {
    /// Components to keep, by digest (a digest already kept is rewritten
    /// with the same bytes).
    pub components: Vec<(String, Vec<u8>)>,
    /// Components no version refers to any more.
    pub forget_components: Vec<String>,
    /// A handler's new record (`None`: the handler is removed).
    pub record: Option<RecordWrite>,
    /// An audit entry: (sequence number, entry).
    pub audit: Option<(u64, Vec<u8>)>,
}

/// One write.
enum Op {
    /// A call's state writes (`None` deletes), and the answer under its
    /// idempotency key, if any (same tenant), in the same transaction.
    State {
        tenant: String,
        writes: Vec<(String, Option<Vec<u8>>)>,
        outcome: Option<Outcome>,
    },
    /// An entry appended to a channel's history; entries up to
    /// `trim_through` removed.
    Append {
        tenant: String,
        channel: String,
        epoch: String,
        entry: Entry,
        trim_through: u64,
    },
    /// Entries up to `through` removed (expired).
    Trim {
        tenant: String,
        channel: String,
        through: u64,
    },
    /// A channel forgotten (no entries left, idle past its TTL).
    Forget { tenant: String, channel: String },
    /// A change to the handler registry.
    Registry(RegistryWrite),
    /// An answer under an idempotency key.
    Outcome(Outcome),
    /// Answers whose window ended by `now_ms` removed.
    ExpireOutcomes { now_ms: u64 },
    /// A tenant's record at a revision (`None`: the tenant is removed).
    Tenant {
        id: String,
        revision: u64,
        record: Option<Vec<u8>>,
    },
}

/// What runs on the writer's thread once a write's transaction committed
/// or failed, before the write's [`Durable`] resolves (in queue order).
pub type OnDurable = Box<dyn FnOnce(&Result<(), StoreError>) + Send>;

struct Queued {
    op: Op,
    then: Option<OnDurable>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// A write failed during this run: the shutdown is not recorded as clean.
type Failed = Arc<std::sync::atomic::AtomicBool>;

/// The open database, shared by the writer (which replaces it when it
/// reopens the file) and readers beside it; emptied by [`Store::close`].
type Slot = Arc<Mutex<Option<Arc<Database>>>>;

/// Opens the database again after an I/O error.
type Reopen = Box<dyn Fn() -> Result<Database, StoreError> + Send>;

/// The durable store.
pub struct Store {
    /// For reads beside the writer; released by [`Store::close`].
    db: Slot,
    tx: Mutex<Option<mpsc::Sender<Queued>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

/// A place in the writer's queue.
pub struct Permit(mpsc::OwnedPermit<Queued>);

/// A write in the queue: await it before acknowledging.
pub struct Durable(oneshot::Receiver<Result<(), StoreError>>);

impl Durable {
    /// Resolves once the write is on disk (fsync'd).
    pub async fn wait(self) -> Result<(), StoreError> {
        self.0
            .await
            .unwrap_or_else(|_| Err(StoreError("the writer stopped".into())))
    }
}

impl Permit {
    fn queue(self, op: Op) -> Durable {
        self.queue_then(op, None)
    }

    fn queue_then(self, op: Op, then: Option<OnDurable>) -> Durable {
        let (done, rx) = oneshot::channel();
        self.0.send(Queued { op, then, done });
        Durable(rx)
    }

    /// Commit a call's state writes (`None` deletes), atomically.
    pub fn commit_state(self, tenant: &str, writes: Vec<(String, Option<Vec<u8>>)>) -> Durable {
        self.queue(Op::State {
            tenant: tenant.to_owned(),
            writes,
            outcome: None,
        })
    }

    /// [`Permit::commit_state`], and `then` with the outcome on the
    /// writer's thread once the transaction is on disk (or failed), before
    /// the [`Durable`] resolves. Callbacks run in queue order, also when
    /// whoever awaits the [`Durable`] has gone: a copy of the state kept in
    /// memory is updated by them in the disk's order, and only with what
    /// reached the disk.
    pub fn commit_state_then(
        self,
        tenant: &str,
        writes: Vec<(String, Option<Vec<u8>>)>,
        then: OnDurable,
    ) -> Durable {
        self.queue_then(
            Op::State {
                tenant: tenant.to_owned(),
                writes,
                outcome: None,
            },
            Some(then),
        )
    }

    /// [`Permit::commit_state_then`] with `outcome` (an answer under an
    /// idempotency key of the same tenant) in the same write transaction:
    /// once the [`Durable`] resolves `Ok` both are on disk; a failed write
    /// (or a crash before its fsync) leaves neither. `writes` may be empty
    /// (a call that answered without writing state).
    pub fn commit_state_and_outcome_then(
        self,
        writes: Vec<(String, Option<Vec<u8>>)>,
        outcome: Outcome,
        then: OnDurable,
    ) -> Durable {
        self.queue_then(
            Op::State {
                tenant: outcome.tenant.clone(),
                writes,
                outcome: Some(outcome),
            },
            Some(then),
        )
    }

    /// Append `entry` to a channel's history (creating or updating the
    /// channel's record with `epoch` and the entry's offset) and remove
    /// entries up to `trim_through`.
    pub fn append(
        self,
        tenant: &str,
        channel: &str,
        epoch: &str,
        entry: Entry,
        trim_through: u64,
    ) -> Durable {
        self.queue(Op::Append {
            tenant: tenant.to_owned(),
            channel: channel.to_owned(),
            epoch: epoch.to_owned(),
            entry,
            trim_through,
        })
    }

    /// Remove a channel's entries up to `through`.
    pub fn trim(self, tenant: &str, channel: &str, through: u64) -> Durable {
        self.queue(Op::Trim {
            tenant: tenant.to_owned(),
            channel: channel.to_owned(),
            through,
        })
    }

    /// Forget a channel: its record and every entry.
    pub fn forget(self, tenant: &str, channel: &str) -> Durable {
        self.queue(Op::Forget {
            tenant: tenant.to_owned(),
            channel: channel.to_owned(),
        })
    }

    /// Write a change to the handler registry, atomically.
    pub fn registry(self, write: RegistryWrite) -> Durable {
        self.queue(Op::Registry(write))
    }

    /// Keep an answer under an idempotency key (replacing one under the
    /// same key).
    pub fn outcome(self, outcome: Outcome) -> Durable {
        self.queue(Op::Outcome(outcome))
    }

    /// Remove the answers whose window ended by `now_ms`.
    pub fn expire_outcomes(self, now_ms: u64) -> Durable {
        self.queue(Op::ExpireOutcomes { now_ms })
    }

    /// Keep a tenant's record at `revision`, or remove the tenant
    /// (`None`; the removal still takes the revision). The caller checks
    /// revisions: the store keeps what it is given, and the highest
    /// revision it was given.
    pub fn tenant(self, id: &str, revision: u64, record: Option<Vec<u8>>) -> Durable {
        self.queue(Op::Tenant {
            id: id.to_owned(),
            revision,
            record,
        })
    }
}

impl Store {
    /// Open (or create) the store in `dir`, read everything back, and start
    /// the writer. Fails if another process holds the database.
    pub fn open(dir: &Path) -> Result<Opened, StoreError> {
        Self::open_bounded(dir, &HistoryBound::everything())
    }

    /// Open (or create) the store in `dir` and start the writer, reading
    /// back at most what `bound` allows of the channel history: the most
    /// recently published channels first, each from its newest event back.
    /// What is not read back is removed from the disk before the writer
    /// starts (channels), or by the channel's next write (older events).
    pub fn open_bounded(dir: &Path, bound: &HistoryBound<'_>) -> Result<Opened, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("sluice.redb");
        let db = Database::create(&path).map_err(|e| {
            StoreError(format!(
                "cannot open {}: {e} (is another Sluice using this data_dir?)",
                path.display()
            ))
        })?;
        let again = path.clone();
        let reopen: Reopen = Box::new(move || {
            Database::create(&again)
                .map_err(|e| StoreError(format!("cannot open {} again: {e}", again.display())))
        });
        Self::start(db, path, reopen, bound)
    }

    /// Open (or create) the store on another of redb's storage backends
    /// (memory; one that fails on demand, to test what a failing disk
    /// does); `name` stands for its path in messages.
    pub fn open_on(
        backend: impl StorageBackend + Clone,
        name: &Path,
    ) -> Result<Opened, StoreError> {
        let db = Database::builder()
            .create_with_backend(backend.clone())
            .map_err(|e| StoreError(format!("cannot open {}: {e}", name.display())))?;
        let again = name.to_owned();
        let reopen: Reopen = Box::new(move || {
            Database::builder()
                .create_with_backend(backend.clone())
                .map_err(|e| StoreError(format!("cannot open {} again: {e}", again.display())))
        });
        Self::start(db, name.to_owned(), reopen, &HistoryBound::everything())
    }

    fn start(
        db: Database,
        path: PathBuf,
        reopen: Reopen,
        bound: &HistoryBound<'_>,
    ) -> Result<Opened, StoreError> {
        let (state, channels, unclean, dropped) = read_back(&db, bound)?;
        let (handlers, audit) = read_registry(&db)?;
        let outcomes = {
            let txn = db.begin_read().map_err(err)?;
            every_row(
                &txn,
                OUTCOMES,
                |(tenant, subject, key), (expires_at_ms, record)| Outcome {
                    tenant: tenant.to_owned(),
                    subject: subject.to_owned(),
                    key: key.to_owned(),
                    expires_at_ms,
                    record: record.to_vec(),
                },
            )?
        };
        let (tenants, tenant_revision) = {
            let txn = db.begin_read().map_err(err)?;
            let rows = every_row(&txn, TENANTS, |id, (revision, record)| {
                (id.to_owned(), revision, record.to_vec())
            })?;
            let last = match existing(&txn, META)? {
                Some(meta) => meta.get(TENANT_REVISION).map_err(err)?.map(|v| v.value()),
                None => None,
            };
            let highest = rows.iter().map(|(_, r, _)| *r).max().unwrap_or(0);
            (rows, last.unwrap_or(0).max(highest))
        };
        // Running: not clean until a clean shutdown says so.
        let mut txn = db.begin_write().map_err(err)?;
        txn.set_durability(Durability::Immediate).map_err(err)?;
        {
            let mut meta = txn.open_table(META).map_err(err)?;
            meta.insert("clean", 0).map_err(err)?;
            txn.open_table(STATE).map_err(err)?;
            let mut kept = txn.open_table(CHANNELS).map_err(err)?;
            let mut history = txn.open_table(HISTORY).map_err(err)?;
            for (t, c) in &dropped {
                let (t, c) = (t.as_str(), c.as_str());
                kept.remove((t, c)).map_err(err)?;
                history
                    .retain_in((t, c, 0)..=(t, c, u64::MAX), |_, _| false)
                    .map_err(err)?;
            }
            txn.open_table(COMPONENTS).map_err(err)?;
            txn.open_table(HANDLERS).map_err(err)?;
            txn.open_table(OUTCOMES).map_err(err)?;
            txn.open_table(TENANTS).map_err(err)?;
            let audit_table = txn.open_table(AUDIT).map_err(err)?;
            // Stores written before the byte bound: count the bytes once.
            if meta.get("audit_bytes").map_err(err)?.is_none() {
                let mut bytes = 0u64;
                for row in audit_table.iter().map_err(err)? {
                    bytes += row.map_err(err)?.1.value().len() as u64;
                }
                meta.insert("audit_bytes", bytes).map_err(err)?;
            }
        }
        txn.commit().map_err(err)?;
        let db: Slot = Arc::new(Mutex::new(Some(Arc::new(db))));
        let failed = Failed::default();
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = {
            let (db, failed) = (db.clone(), failed.clone());
            std::thread::Builder::new()
                .name("sluice-store".into())
                .spawn(move || write_loop(&db, &reopen, rx, &failed))
                .map_err(err)?
        };
        Ok(Opened {
            handlers,
            audit,
            outcomes,
            tenants,
            tenant_revision,
            store: Arc::new(Self {
                db,
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
                path,
            }),
            state,
            channels,
            unclean,
        })
    }

    /// The bytes of a pushed component, by digest (reads the disk: call it
    /// off the async runtime).
    pub fn component(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let db = self
            .db
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError("the store is closed".into()))?;
        let txn = db.begin_read().map_err(err)?;
        let table = txn.open_table(COMPONENTS).map_err(err)?;
        Ok(table.get(digest).map_err(err)?.map(|v| v.value().to_vec()))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A place in the writer's queue (waits while the queue is full).
    pub async fn reserve(&self) -> Result<Permit, StoreError> {
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError("the store is closed".into()))?;
        tx.reserve_owned()
            .await
            .map(Permit)
            .map_err(|_| StoreError("the writer stopped".into()))
    }

    /// Stop taking writes, let the writer finish what is queued, record a
    /// clean shutdown and release the database. Writes still holding a
    /// [`Permit`] are written before the writer stops.
    pub fn close(&self) {
        drop(
            self.tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = writer {
            let _ = w.join();
        }
        drop(
            self.db
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// How much channel history [`Store::open_bounded`] reads back: the bounds
/// the server keeps history within, so that a start never holds more than
/// a running node may (after quotas were lowered, say).
pub struct HistoryBound<'a> {
    /// A tenant's bound: (channels, bytes).
    pub tenant: &'a dyn Fn(&str) -> (usize, usize),
    /// The node's bound over every tenant: (channels, bytes).
    pub node: (usize, usize),
    /// Events read back per channel at most.
    pub events_per_channel: usize,
    /// What one channel costs besides its events, in bytes.
    pub channel_cost: usize,
}

impl HistoryBound<'static> {
    /// No bound: everything is read back.
    pub fn everything() -> Self {
        Self {
            tenant: &|_| (usize::MAX, usize::MAX),
            node: (usize::MAX, usize::MAX),
            events_per_channel: usize::MAX,
            channel_cost: 0,
        }
    }
}

/// What an event read back costs in memory beyond its data: the frame
/// around it (type, channel, offset, epoch).
const EVENT_FRAME_COST: usize = 96;

type ReadBack = (
    Vec<(String, String, Vec<u8>)>,
    Vec<ChannelHistory>,
    bool,
    Vec<(String, String)>,
);

/// One channel's record, read before its events.
struct ChannelMeta {
    tenant: String,
    channel: String,
    epoch: String,
    last_offset: u64,
    newest_ms: u64,
}

fn read_back(db: &Database, bound: &HistoryBound<'_>) -> Result<ReadBack, StoreError> {
    let txn = db.begin_read().map_err(err)?;
    let clean = match existing(&txn, META)? {
        Some(meta) => meta.get("clean").map_err(err)?.map(|v| v.value()),
        None => None,
    };
    let state = every_row(&txn, STATE, |(tenant, key), value| {
        (tenant.to_owned(), key.to_owned(), value.to_vec())
    })?;
    let mut channels = Vec::new();
    let mut dropped = Vec::new();
    if let (Some(table), Some(history)) = (existing(&txn, CHANNELS)?, existing(&txn, HISTORY)?) {
        // First the channels alone (no events), with when each was last
        // published to; then the events, most recent channel first, newest
        // event first, until a bound is reached.
        let mut metas = Vec::new();
        for row in table.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            let (tenant, channel) = k.value();
            let (epoch, last_offset) = v.value();
            let newest_ms = history
                .range((tenant, channel, 0)..=(tenant, channel, u64::MAX))
                .map_err(err)?
                .next_back()
                .transpose()
                .map_err(err)?
                .map_or(0, |(_, v)| v.value().0);
            metas.push(ChannelMeta {
                tenant: tenant.to_owned(),
                channel: channel.to_owned(),
                epoch: epoch.to_owned(),
                last_offset,
                newest_ms,
            });
        }
        metas.sort_by_key(|m| std::cmp::Reverse(m.newest_ms));
        let mut used: std::collections::HashMap<String, (usize, usize)> =
            std::collections::HashMap::new();
        let mut node = (0usize, 0usize);
        for m in metas {
            let quota = (bound.tenant)(&m.tenant);
            let u = used.entry(m.tenant.clone()).or_default();
            let cost = bound.channel_cost;
            if u.0 >= quota.0
                || node.0 >= bound.node.0
                || u.1.saturating_add(cost) > quota.1
                || node.1.saturating_add(cost) > bound.node.1
            {
                dropped.push((m.tenant, m.channel));
                continue;
            }
            u.0 += 1;
            u.1 += cost;
            node.0 += 1;
            node.1 += cost;
            let (t, c) = (m.tenant.as_str(), m.channel.as_str());
            let mut entries = Vec::new();
            for e in history
                .range((t, c, 0)..=(t, c, u64::MAX))
                .map_err(err)?
                .rev()
            {
                let (k, v) = e.map_err(err)?;
                let (unix_ms, data) = v.value();
                let size = data.len() + c.len() + EVENT_FRAME_COST;
                if entries.len() >= bound.events_per_channel
                    || u.1.saturating_add(size) > quota.1
                    || node.1.saturating_add(size) > bound.node.1
                {
                    break;
                }
                u.1 += size;
                node.1 += size;
                entries.push(Entry {
                    offset: k.value().2,
                    unix_ms,
                    data: data.to_vec(),
                });
            }
            entries.reverse();
            channels.push(ChannelHistory {
                tenant: m.tenant,
                channel: m.channel,
                epoch: m.epoch,
                last_offset: m.last_offset,
                entries,
            });
        }
    }
    // A new database (no META yet) is clean; one that says 0 was running.
    let unclean = clean == Some(0);
    Ok((state, channels, unclean, dropped))
}

type RegistryReadBack = (Vec<(String, String, Vec<u8>)>, Vec<(u64, Vec<u8>)>);

fn read_registry(db: &Database) -> Result<RegistryReadBack, StoreError> {
    let txn = db.begin_read().map_err(err)?;
    let handlers = every_row(&txn, HANDLERS, |(tenant, name), record| {
        (tenant.to_owned(), name.to_owned(), record.to_vec())
    })?;
    let audit = every_row(&txn, AUDIT, |seq, entry| (seq, entry.to_vec()))?;
    Ok((handlers, audit))
}

/// `table` in `txn`, or `None` when it was never created (a new database,
/// or nothing of its kind was ever written).
fn existing<K: Key + 'static, V: Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(err(e)),
    }
}

/// Every row of `table` (none if it was never created), each made into a
/// `T` by `row`.
fn every_row<K: Key + 'static, V: Value + 'static, T>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
    mut row: impl for<'a> FnMut(K::SelfType<'a>, V::SelfType<'a>) -> T,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    if let Some(table) = existing(txn, table)? {
        for r in table.iter().map_err(err)? {
            let (k, v) = r.map_err(err)?;
            out.push(row(k.value(), v.value()));
        }
    }
    Ok(out)
}

fn current(slot: &Slot) -> Result<Arc<Database>, StoreError> {
    slot.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or_else(|| StoreError("the store is closed".into()))
}

/// Whether redb refuses every transaction after an earlier I/O error
/// (until the database is opened again).
fn poisoned(db: &Database) -> bool {
    matches!(
        db.begin_write(),
        Err(redb::TransactionError::Storage(
            redb::StorageError::PreviousIo
        ))
    )
}

/// Close the database and open it again (redb's way out of an earlier I/O
/// error). Readers hold their clone only for one read: wait for them.
fn reopen(slot: &Slot, open: &Reopen) -> Result<(), StoreError> {
    let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(mut old) = guard.take() else {
        return Err(StoreError("the store is closed".into()));
    };
    for _ in 0..500 {
        match Arc::try_unwrap(old) {
            Ok(db) => {
                drop(db);
                let db = open()?;
                *guard = Some(Arc::new(db));
                return Ok(());
            }
            Err(shared) => {
                old = shared;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
    *guard = Some(old);
    Err(StoreError(
        "cannot reopen the database: a reader still holds it".into(),
    ))
}

fn write_loop(slot: &Slot, open: &Reopen, mut rx: mpsc::Receiver<Queued>, failed: &Failed) {
    let mut batch = Vec::with_capacity(64);
    // The database needs opening again before the next batch.
    let mut broken = false;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        if broken {
            match reopen(slot, open) {
                Ok(()) => {
                    broken = false;
                    tracing::warn!("store reopened after a failed write");
                }
                Err(e) => tracing::error!(error = %e, "store still failing"),
            }
        }
        let result = current(slot).and_then(|db| {
            let result = apply(&db, &batch);
            broken = result.is_err() && poisoned(&db);
            result
        });
        if let Err(e) = &result {
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(error = %e, writes = batch.len(), "store write failed");
        }
        for q in batch.drain(..) {
            if let Some(then) = q.then {
                then(&result);
            }
            let _ = q.done.send(result.clone());
        }
    }
    // Every sender is gone: nothing more can be queued. After a failed
    // write the shutdown is not clean: offsets handed out with it never
    // reached the disk, and the next start must jump past them.
    if failed.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!("not recording a clean shutdown: a store write failed during this run");
        return;
    }
    let Ok(db) = current(slot) else {
        return;
    };
    let clean = (|| -> Result<(), StoreError> {
        let mut txn = db.begin_write().map_err(err)?;
        txn.set_durability(Durability::Immediate).map_err(err)?;
        txn.open_table(META)
            .map_err(err)?
            .insert("clean", 1)
            .map_err(err)?;
        txn.commit().map_err(err)
    })();
    if let Err(e) = clean {
        tracing::warn!(error = %e, "could not record a clean shutdown");
    }
}

fn apply(db: &Database, batch: &[Queued]) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(err)?;
    txn.set_durability(Durability::Immediate).map_err(err)?;
    {
        let mut state = txn.open_table(STATE).map_err(err)?;
        let mut channels = txn.open_table(CHANNELS).map_err(err)?;
        let mut history = txn.open_table(HISTORY).map_err(err)?;
        let mut components = txn.open_table(COMPONENTS).map_err(err)?;
        let mut handlers = txn.open_table(HANDLERS).map_err(err)?;
        let mut audit = txn.open_table(AUDIT).map_err(err)?;
        let mut meta = txn.open_table(META).map_err(err)?;
        let mut outcomes = txn.open_table(OUTCOMES).map_err(err)?;
        let mut tenants = txn.open_table(TENANTS).map_err(err)?;
        for q in batch {
            match &q.op {
                Op::State {
                    tenant,
                    writes,
                    outcome,
                } => {
                    for (key, value) in writes {
                        match value {
                            Some(v) => {
                                state
                                    .insert((tenant.as_str(), key.as_str()), v.as_slice())
                                    .map_err(err)?;
                            }
                            None => {
                                state.remove((tenant.as_str(), key.as_str())).map_err(err)?;
                            }
                        }
                    }
                    if let Some(o) = outcome {
                        keep_outcome(&mut outcomes, o)?;
                    }
                }
                Op::Append {
                    tenant,
                    channel,
                    epoch,
                    entry,
                    trim_through,
                } => {
                    let (t, c) = (tenant.as_str(), channel.as_str());
                    channels
                        .insert((t, c), (epoch.as_str(), entry.offset))
                        .map_err(err)?;
                    history
                        .insert((t, c, entry.offset), (entry.unix_ms, entry.data.as_slice()))
                        .map_err(err)?;
                    if *trim_through > 0 {
                        history
                            .retain_in((t, c, 0)..=(t, c, *trim_through), |_, _| false)
                            .map_err(err)?;
                    }
                }
                Op::Trim {
                    tenant,
                    channel,
                    through,
                } => {
                    let (t, c) = (tenant.as_str(), channel.as_str());
                    history
                        .retain_in((t, c, 0)..=(t, c, *through), |_, _| false)
                        .map_err(err)?;
                }
                Op::Forget { tenant, channel } => {
                    let (t, c) = (tenant.as_str(), channel.as_str());
                    channels.remove((t, c)).map_err(err)?;
                    history
                        .retain_in((t, c, 0)..=(t, c, u64::MAX), |_, _| false)
                        .map_err(err)?;
                }
                Op::Registry(w) => {
                    for (digest, bytes) in &w.components {
                        components
                            .insert(digest.as_str(), bytes.as_slice())
                            .map_err(err)?;
                    }
                    for digest in &w.forget_components {
                        components.remove(digest.as_str()).map_err(err)?;
                    }
                    if let Some(((t, n), record)) = &w.record {
                        match record {
                            Some(r) => {
                                handlers
                                    .insert((t.as_str(), n.as_str()), r.as_slice())
                                    .map_err(err)?;
                            }
                            None => {
                                handlers.remove((t.as_str(), n.as_str())).map_err(err)?;
                            }
                        }
                    }
                    if let Some((seq, entry)) = &w.audit {
                        keep_audit(&mut audit, &mut meta, *seq, entry)?;
                    }
                }
                Op::Outcome(o) => keep_outcome(&mut outcomes, o)?,
                Op::ExpireOutcomes { now_ms } => {
                    outcomes
                        .retain(|_, (expires_at_ms, _)| expires_at_ms > *now_ms)
                        .map_err(err)?;
                }
                Op::Tenant {
                    id,
                    revision,
                    record,
                } => {
                    match record {
                        Some(bytes) => {
                            tenants
                                .insert(id.as_str(), (*revision, bytes.as_slice()))
                                .map_err(err)?;
                        }
                        None => {
                            tenants.remove(id.as_str()).map_err(err)?;
                        }
                    }
                    let last = meta.get(TENANT_REVISION).map_err(err)?.map(|v| v.value());
                    if last.is_none_or(|last| last < *revision) {
                        meta.insert(TENANT_REVISION, *revision).map_err(err)?;
                    }
                }
            }
        }
    }
    txn.commit().map_err(err)
}

/// Keep an answer under an idempotency key (replacing one under the same
/// key).
fn keep_outcome(
    outcomes: &mut redb::Table<(&str, &str, &str), (u64, &[u8])>,
    o: &Outcome,
) -> Result<(), StoreError> {
    outcomes
        .insert(
            (o.tenant.as_str(), o.subject.as_str(), o.key.as_str()),
            (o.expires_at_ms, o.record.as_slice()),
        )
        .map_err(err)?;
    Ok(())
}

/// Keep an audit entry, then drop the oldest until the log is within
/// [`MAX_AUDIT_ENTRIES`] and [`MAX_AUDIT_BYTES`].
fn keep_audit(
    audit: &mut redb::Table<u64, &[u8]>,
    meta: &mut redb::Table<&str, u64>,
    seq: u64,
    entry: &[u8],
) -> Result<(), StoreError> {
    let mut bytes = meta
        .get("audit_bytes")
        .map_err(err)?
        .map_or(0, |v| v.value());
    if let Some(old) = audit.insert(seq, entry).map_err(err)? {
        bytes = bytes.saturating_sub(old.value().len() as u64);
    }
    bytes += entry.len() as u64;
    while audit.len().map_err(err)? > MAX_AUDIT_ENTRIES || bytes > MAX_AUDIT_BYTES {
        match audit.pop_first().map_err(err)? {
            Some((_, v)) => bytes = bytes.saturating_sub(v.value().len() as u64),
            None => break,
        }
    }
    meta.insert("audit_bytes", bytes).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn entry(offset: u64) -> Entry {
        Entry {
            offset,
            unix_ms: 1000 + offset,
            data: format!("{{\"n\":{offset}}}").into_bytes(),
        }
    }

    #[tokio::test]
    async fn what_was_acknowledged_is_read_back_and_history_is_trimmed() {
        let d = dir("readback");
        let opened = Store::open(&d).unwrap();
        assert!(!opened.unclean && opened.state.is_empty() && opened.channels.is_empty());
        let store = opened.store;
        let p = store.reserve().await.unwrap();
        p.commit_state(
            "t1",
            vec![("k".into(), Some(b"v1".to_vec())), ("gone".into(), None)],
        )
        .wait()
        .await
        .unwrap();
        for n in 1..=10u64 {
            let trim = n.saturating_sub(3);
            let p = store.reserve().await.unwrap();
            p.append("t1", "room:1", "e1", entry(n), trim)
                .wait()
                .await
                .unwrap();
        }
        // Another tenant's channel of the same name is separate.
        let p = store.reserve().await.unwrap();
        p.append("t2", "room:1", "e2", entry(1), 0)
            .wait()
            .await
            .unwrap();
        store.close();
        drop(store);

        let opened = Store::open(&d).unwrap();
        assert!(!opened.unclean, "a closed store is clean");
        assert_eq!(
            opened.state,
            vec![("t1".into(), "k".into(), b"v1".to_vec())]
        );
        let mut chans = opened.channels;
        chans.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        assert_eq!(chans.len(), 2);
        assert_eq!(chans[0].epoch, "e1");
        assert_eq!(chans[0].last_offset, 10);
        let offsets: Vec<u64> = chans[0].entries.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, vec![8, 9, 10]);
        assert_eq!(chans[1].entries, vec![entry(1)]);
        let store = opened.store;
        store
            .reserve()
            .await
            .unwrap()
            .forget("t1", "room:1")
            .wait()
            .await
            .unwrap();
        store.close();
        drop(store);
        let opened = Store::open(&d).unwrap();
        assert_eq!(opened.channels.len(), 1);
        drop(opened);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn answers_under_keys_are_read_back_until_they_expire() {
        let d = dir("outcomes");
        let outcome = |key: &str, expires_at_ms: u64| Outcome {
            tenant: "t".into(),
            subject: "alice".into(),
            key: key.into(),
            expires_at_ms,
            record: vec![1, 2, 3],
        };
        {
            let opened = Store::open(&d).unwrap();
            assert!(opened.outcomes.is_empty());
            for o in [outcome("k1", 1_000), outcome("k2", 2_000)] {
                opened
                    .store
                    .reserve()
                    .await
                    .unwrap()
                    .outcome(o)
                    .wait()
                    .await
                    .unwrap();
            }
            opened.store.close();
        }
        let opened = Store::open(&d).unwrap();
        assert_eq!(
            opened.outcomes,
            [outcome("k1", 1_000), outcome("k2", 2_000)]
        );
        opened
            .store
            .reserve()
            .await
            .unwrap()
            .expire_outcomes(1_000)
            .wait()
            .await
            .unwrap();
        opened.store.close();
        drop(opened);
        let opened = Store::open(&d).unwrap();
        assert_eq!(opened.outcomes, [outcome("k2", 2_000)], "k1's window ended");
        drop(opened);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A call's state and the answer under its key are one write: the disk
    /// stopped at every point of it (a crash there) leaves both or
    /// neither, never the effects without the answer.
    #[tokio::test]
    async fn a_calls_state_and_its_answer_land_together_wherever_the_disk_stops() {
        let name = Path::new("memory");
        let answer = Outcome {
            tenant: "t".into(),
            subject: "alice".into(),
            key: "k1".into(),
            expires_at_ms: u64::MAX,
            record: vec![7; 300],
        };
        let (mut neither, mut both) = (0, 0);
        for n in 1..500 {
            let disk = MemoryDisk::new();
            let store = Store::open_on(disk.clone(), name).unwrap().store;
            disk.fail_after(n);
            let written = store
                .reserve()
                .await
                .unwrap()
                .commit_state_and_outcome_then(
                    vec![
                        ("balance".into(), Some(vec![1; 2000])),
                        ("orders".into(), Some(vec![2; 2000])),
                    ],
                    answer.clone(),
                    Box::new(|_| {}),
                )
                .wait()
                .await;
            store.close();
            drop(store);
            disk.fail(false);
            let opened = Store::open_on(disk.clone(), name).unwrap();
            let has_state = opened.state.len();
            let has_answer = opened.outcomes.len();
            match (has_state, has_answer) {
                (0, 0) => {
                    assert!(written.is_err(), "a write that said ok is on disk");
                    neither += 1;
                }
                (2, 1) => {
                    assert_eq!(opened.outcomes, std::slice::from_ref(&answer));
                    both += 1;
                }
                other => panic!(
                    "the disk stopped after {n} operations: (state keys, answers) = {other:?}"
                ),
            }
            opened.store.close();
            if written.is_ok() {
                assert!(
                    neither > 0,
                    "the disk stopped before the write at least once"
                );
                assert!(both > 0);
                return;
            }
        }
        panic!("the write never went through with 500 disk operations");
    }

    #[tokio::test]
    async fn a_store_not_closed_reads_back_as_unclean() {
        let d = dir("unclean");
        let opened = Store::open(&d).unwrap();
        opened
            .store
            .reserve()
            .await
            .unwrap()
            .commit_state("t", vec![("k".into(), Some(vec![1]))])
            .wait()
            .await
            .unwrap();
        // Simulate a crash: the writer never records a clean shutdown.
        // (Leaking the store keeps its thread and the file lock; open a copy.)
        let copy = dir("unclean-copy");
        std::fs::create_dir_all(&copy).unwrap();
        std::fs::copy(d.join("sluice.redb"), copy.join("sluice.redb")).unwrap();
        let reopened = Store::open(&copy).unwrap();
        assert!(reopened.unclean);
        assert_eq!(reopened.state.len(), 1);
        drop(reopened);
        drop(opened);
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&copy);
    }

    #[tokio::test]
    async fn after_a_failed_write_the_store_reopens_and_the_next_start_is_unclean() {
        let disk = MemoryDisk::new();
        let name = Path::new("memory");
        let store = Store::open_on(disk.clone(), name).unwrap().store;
        for n in 1..=3 {
            let p = store.reserve().await.unwrap();
            p.append("t", "room:1", "e1", entry(n), 0)
                .wait()
                .await
                .unwrap();
        }
        disk.fail(true);
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let seen = outcomes.clone();
        let failed = store
            .reserve()
            .await
            .unwrap()
            .commit_state_then(
                "t",
                vec![("k".into(), Some(b"v".to_vec()))],
                Box::new(move |r| seen.lock().unwrap().push(r.is_ok())),
            )
            .wait()
            .await;
        assert!(failed.is_err(), "the write on a failing disk fails");
        assert_eq!(
            *outcomes.lock().unwrap(),
            vec![false],
            "the callback saw the failure before the write resolved"
        );
        // The disk works again, but an offset handed out now would sit
        // behind one that never reached the disk: the store takes no more
        // until it is opened again.
        // The disk works again: the writer opens the database again and
        // takes writes, without a restart.
        disk.fail(false);
        store
            .reserve()
            .await
            .unwrap()
            .commit_state("t", vec![("k2".into(), Some(b"v2".to_vec()))])
            .wait()
            .await
            .expect("a write after the disk recovered succeeds");
        store.close();
        drop(store);

        let opened = Store::open_on(disk.clone(), name).unwrap();
        assert!(
            opened.unclean,
            "a run with a failed write is never recorded as clean: offsets jump at the next start"
        );
        assert_eq!(opened.channels[0].last_offset, 3);
        assert_eq!(
            opened.state,
            vec![("t".to_owned(), "k2".to_owned(), b"v2".to_vec())],
            "the failed write is not on disk, the one after the recovery is"
        );
        // Opened again, it serves.
        opened
            .store
            .reserve()
            .await
            .unwrap()
            .commit_state("t", vec![("k".into(), Some(b"v".to_vec()))])
            .wait()
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn callbacks_run_in_queue_order_before_their_writes_resolve() {
        let store = Store::open_on(MemoryDisk::new(), Path::new("memory"))
            .unwrap()
            .store;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waits = Vec::new();
        for i in 0..5 {
            let seen = order.clone();
            let p = store.reserve().await.unwrap();
            waits.push(p.commit_state_then(
                "t",
                vec![(format!("k{i}"), Some(vec![i]))],
                Box::new(move |r| seen.lock().unwrap().push((i, r.is_ok()))),
            ));
        }
        // Awaited last first: each callback has run whoever waits first.
        for w in waits.into_iter().rev() {
            w.wait().await.unwrap();
        }
        let expected: Vec<(u8, bool)> = (0..5).map(|i| (i, true)).collect();
        assert_eq!(*order.lock().unwrap(), expected);
    }

    #[tokio::test]
    async fn the_audit_log_on_disk_is_bounded_in_bytes() {
        let disk = MemoryDisk::new();
        let store = Store::open_on(disk.clone(), Path::new("memory"))
            .unwrap()
            .store;
        // 200 entries of 128 KiB: 25 MiB, far under the count bound.
        let big = vec![b'x'; 128 << 10];
        for seq in 1..=200u64 {
            store
                .reserve()
                .await
                .unwrap()
                .registry(RegistryWrite {
                    audit: Some((seq, big.clone())),
                    ..Default::default()
                })
                .wait()
                .await
                .unwrap();
        }
        store.close();
        drop(store);
        let opened = Store::open_on(disk, Path::new("memory")).unwrap();
        let kept: u64 = opened.audit.iter().map(|(_, e)| e.len() as u64).sum();
        assert!(kept <= MAX_AUDIT_BYTES, "{kept} bytes kept");
        assert!(
            kept > MAX_AUDIT_BYTES - (128 << 10),
            "only the excess is dropped"
        );
        let seqs: Vec<u64> = opened.audit.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs.last(), Some(&200), "the newest are kept");
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "the oldest go first"
        );
        // Still taking entries, still bounded.
        let store = opened.store;
        store
            .reserve()
            .await
            .unwrap()
            .registry(RegistryWrite {
                audit: Some((201, b"{}".to_vec())),
                ..Default::default()
            })
            .wait()
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_dir_is_refused_with_a_clear_error() {
        let d = dir("twice");
        let first = Store::open(&d).unwrap();
        let second = Store::open(&d);
        assert!(
            matches!(&second, Err(StoreError(m)) if m.contains("another Sluice")),
            "{:?}",
            second.err()
        );
        drop(first);
        let _ = std::fs::remove_dir_all(&d);
    }
}
