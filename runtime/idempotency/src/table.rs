//! The table: per (tenant, subject, key), a request that runs (retries
//! wait for it) or its answer (retries get it without a call), for a
//! window; quotas, counters, expiry.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use sluice_protocol::{Answer, ErrorCode, Fingerprint, Rejection};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::limits::{ENTRY_OVERHEAD_BYTES, Limits};
use crate::store::{Claim, EntryId, OutcomeStore, Record, StoreError, Stored};

/// What [`IdempotencyTable::begin`] says to do with a keyed request.
#[derive(Debug)]
pub enum Begin {
    /// The first attempt: run it, then [`Ticket::complete`] (or
    /// [`Ticket::completed`]) with its answer, or [`Ticket::abandon`] when
    /// it had no effect. Dropping the ticket abandons it.
    Run(Ticket),
    /// A retry: answer with this (under the retry's own `id`); do not run.
    Replay(Answer),
}

/// Why a keyed request is refused; nothing was run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The key was used within the window with another type, channel or
    /// data.
    KeyReused,
    /// The tenant's (or the subject's) entries or bytes are at their quota.
    TooManyKeys {
        /// When the tenant's oldest entry is forgotten (a lower bound for
        /// the subject's).
        retry_after_ms: u64,
    },
    /// The store failed, or another node's attempt did not finish within
    /// its lease.
    Unavailable,
}

impl Refusal {
    /// The wire response.
    pub fn rejection(&self) -> Rejection {
        match self {
            Refusal::KeyReused => Rejection::error(
                ErrorCode::KeyReused,
                "this key was used with another type, channel or data",
            ),
            Refusal::TooManyKeys { retry_after_ms } => Rejection::retry(
                ErrorCode::TooManyKeys,
                "too many requests with keys are remembered",
                *retry_after_ms,
            ),
            Refusal::Unavailable => Rejection::retry(
                ErrorCode::Unavailable,
                "the request's key could not be checked",
                1000,
            ),
        }
    }
}

/// Counters of one tenant's entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Retries answered with a stored answer (without a call).
    pub hits: u64,
    /// Retries that waited for the first attempt, still running.
    pub waits: u64,
    /// Retries refused with `key_reused`.
    pub conflicts: u64,
    /// Entries forgotten at the end of their window.
    pub evictions: u64,
    /// Requests refused with `too_many_keys`.
    pub refusals: u64,
    /// Entries held now.
    pub entries: usize,
    /// Bytes they count for.
    pub bytes: usize,
}

/// The idempotency table of a node: one for every tenant.
#[derive(Clone)]
pub struct IdempotencyTable {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IdempotencyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyTable")
            .field("node", &self.inner.node)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

struct Inner {
    limits: Limits,
    store: Arc<dyn OutcomeStore>,
    clock: Arc<dyn Clock>,
    node: u64,
    generation: AtomicU64,
    tenants: RwLock<HashMap<String, Arc<Mutex<Tenant>>>>,
}

#[derive(Default)]
struct Tenant {
    limits: Option<Limits>,
    /// Subject -> key -> entry (looked up by `&str`, no allocation).
    subjects: HashMap<String, HashMap<String, Entry>>,
    /// Entries in all subjects.
    entries: usize,
    /// (expires_at_ms, generation) -> (subject, key).
    expiry: BTreeMap<(u64, u64), (String, String)>,
    bytes: usize,
    counters: Counters,
}

struct Entry {
    generation: u64,
    fingerprint: Fingerprint,
    expires_at_ms: u64,
    bytes: usize,
    state: State,
}

enum State {
    /// Runs on this node. `expired`: its window passed while it ran, so its
    /// answer goes to the waiters and the store but is not kept here.
    Running {
        answers: watch::Receiver<Option<Answer>>,
        expired: bool,
    },
    Done(Answer),
}

/// What one look at the local entries decided.
enum Step {
    Replay(Answer),
    Refuse(Refusal),
    Wait(watch::Receiver<Option<Answer>>),
    New(Ticket),
}

impl Tenant {
    fn limits<'a>(&'a self, default: &'a Limits) -> &'a Limits {
        self.limits.as_ref().unwrap_or(default)
    }

    fn get(&self, subject: &str, key: &str) -> Option<&Entry> {
        self.subjects.get(subject)?.get(key)
    }

    fn get_mut(&mut self, subject: &str, key: &str) -> Option<&mut Entry> {
        self.subjects.get_mut(subject)?.get_mut(key)
    }

    /// Remove entry (subject, key) if it is `generation`, un-charging it.
    fn remove(&mut self, subject: &str, key: &str, generation: u64) -> Option<Entry> {
        let keys = self.subjects.get_mut(subject)?;
        if keys.get(key).is_none_or(|e| e.generation != generation) {
            return None;
        }
        let e = keys.remove(key)?;
        if keys.is_empty() {
            self.subjects.remove(subject);
        }
        self.expiry.remove(&(e.expires_at_ms, e.generation));
        self.bytes -= e.bytes;
        self.entries -= 1;
        self.counters.entries = self.entries;
        self.counters.bytes = self.bytes;
        Some(e)
    }

    /// Forget every entry whose window passed by `now_ms`.
    fn sweep(&mut self, now_ms: u64) {
        while let Some((&(at, generation), _)) = self.expiry.first_key_value() {
            if at > now_ms {
                break;
            }
            let Some((_, (subject, key))) = self.expiry.pop_first() else {
                break;
            };
            let done = match self.get_mut(&subject, &key) {
                Some(e) if e.generation == generation => match &mut e.state {
                    State::Running { expired, .. } => {
                        // Forgotten when it finishes.
                        *expired = true;
                        false
                    }
                    State::Done(_) => true,
                },
                _ => false,
            };
            if done {
                self.remove(&subject, &key, generation);
                self.counters.evictions += 1;
            }
        }
    }

    /// When the oldest entry is forgotten, from `now_ms` (at least 1 ms).
    fn retry_after(&self, now_ms: u64) -> u64 {
        self.expiry
            .first_key_value()
            .map_or(1, |(&(at, _), _)| at.saturating_sub(now_ms).max(1))
    }
}

impl IdempotencyTable {
    /// A table with `limits` for every tenant (see
    /// [`IdempotencyTable::set_limits`]), keeping answers in `store` too,
    /// reading time from `clock`. `node` tells this node's claims from
    /// other nodes' in a shared store (any value unique in the fleet, e.g.
    /// random at start).
    pub fn new(
        limits: Limits,
        store: Arc<dyn OutcomeStore>,
        clock: Arc<dyn Clock>,
        node: u64,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                limits,
                store,
                clock,
                node,
                generation: AtomicU64::new(1),
                tenants: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// `tenant`'s own limits (from its configuration; on reload). A shorter
    /// window applies to entries made from now on.
    pub fn set_limits(&self, tenant: &str, limits: Limits) {
        let t = self.tenant(tenant);
        t.lock().unwrap_or_else(PoisonError::into_inner).limits = Some(limits);
    }

    /// `tenant`'s counters.
    pub fn counters(&self, tenant: &str) -> Counters {
        let tenants = self
            .inner
            .tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        tenants.get(tenant).map_or_else(Counters::default, |t| {
            t.lock().unwrap_or_else(PoisonError::into_inner).counters
        })
    }

    /// Forget what expired, in every tenant and in the store; how many
    /// entries the store dropped. Run it every few seconds.
    pub fn sweep(&self) -> usize {
        let now = self.inner.clock.now_ms();
        let tenants: Vec<_> = self
            .inner
            .tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for t in tenants {
            t.lock().unwrap_or_else(PoisonError::into_inner).sweep(now);
        }
        self.inner.store.sweep(now)
    }

    fn tenant(&self, tenant: &str) -> Arc<Mutex<Tenant>> {
        if let Some(t) = self
            .inner
            .tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
        {
            return t.clone();
        }
        self.inner
            .tenants
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant.to_owned())
            .or_default()
            .clone()
    }

    /// Start a keyed request `id` whose [`Fingerprint`] is `fingerprint`.
    ///
    /// - Nothing remembered: [`Begin::Run`] (counted against the quota).
    /// - The same request ran and was answered within the window (here, on
    ///   another node, or before a restart): [`Begin::Replay`].
    /// - The same request runs now: waits for it, then [`Begin::Replay`];
    ///   if it ends without an answer, this one runs instead.
    /// - Another request used the key: [`Refusal::KeyReused`].
    ///
    /// Cancel-safe: dropping the future leaves nothing behind.
    pub async fn begin(&self, id: &EntryId, fingerprint: Fingerprint) -> Result<Begin, Refusal> {
        let tenant = self.tenant(&id.tenant);
        loop {
            let now = self.inner.clock.now_ms();
            let step = {
                let mut t = tenant.lock().unwrap_or_else(PoisonError::into_inner);
                self.look(&mut t, &tenant, id, fingerprint, now)
            };
            match step {
                Step::Replay(answer) => return Ok(Begin::Replay(answer)),
                Step::Refuse(r) => return Err(r),
                Step::Wait(mut answers) => {
                    let answered = answers
                        .wait_for(Option::is_some)
                        .await
                        .ok()
                        .and_then(|a| a.clone());
                    if let Some(answer) = answered {
                        self.count(&tenant, |c| c.hits += 1);
                        return Ok(Begin::Replay(answer));
                    }
                    // The first attempt ended without an answer: try again.
                }
                Step::New(ticket) => return self.claim(ticket, now).await,
            }
        }
    }

    fn count(&self, tenant: &Mutex<Tenant>, f: impl FnOnce(&mut Counters)) {
        f(&mut tenant
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .counters);
    }

    /// The local part of [`IdempotencyTable::begin`], under the tenant's lock.
    fn look(
        &self,
        t: &mut Tenant,
        tenant: &Arc<Mutex<Tenant>>,
        id: &EntryId,
        fingerprint: Fingerprint,
        now: u64,
    ) -> Step {
        t.sweep(now);
        if let Some(e) = t.get(&id.subject, &id.key) {
            if e.fingerprint != fingerprint {
                t.counters.conflicts += 1;
                return Step::Refuse(Refusal::KeyReused);
            }
            match &e.state {
                State::Done(answer) => {
                    let answer = answer.clone();
                    t.counters.hits += 1;
                    return Step::Replay(answer);
                }
                State::Running { answers, .. } => {
                    let answers = answers.clone();
                    t.counters.waits += 1;
                    return Step::Wait(answers);
                }
            }
        }
        let limits = t.limits(&self.inner.limits).clone();
        let bytes = ENTRY_OVERHEAD_BYTES + id.subject.len() + id.key.len();
        let subject_entries = t.subjects.get(&id.subject).map_or(0, HashMap::len);
        if t.entries >= limits.max_entries
            || t.bytes + bytes > limits.max_bytes
            || subject_entries >= limits.max_entries_per_subject
        {
            t.counters.refusals += 1;
            return Step::Refuse(Refusal::TooManyKeys {
                retry_after_ms: t.retry_after(now),
            });
        }
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        let expires_at_ms = now.saturating_add(limits.window.as_millis() as u64);
        let (tx, rx) = watch::channel(None);
        let entry = Entry {
            generation,
            fingerprint,
            expires_at_ms,
            bytes,
            state: State::Running {
                answers: rx,
                expired: false,
            },
        };
        match t.subjects.get_mut(&id.subject) {
            Some(keys) => {
                keys.insert(id.key.clone(), entry);
            }
            None => {
                t.subjects
                    .insert(id.subject.clone(), HashMap::from([(id.key.clone(), entry)]));
            }
        }
        t.expiry.insert(
            (expires_at_ms, generation),
            (id.subject.clone(), id.key.clone()),
        );
        t.entries += 1;
        t.bytes += bytes;
        t.counters.entries = t.entries;
        t.counters.bytes = t.bytes;
        Step::New(Ticket {
            inner: self.inner.clone(),
            tenant: tenant.clone(),
            id: id.clone(),
            fingerprint,
            generation,
            expires_at_ms,
            lease: limits.in_flight_lease,
            poll: limits.poll_interval,
            answers: Some(tx),
        })
    }

    /// The shared part: is it held elsewhere (another node, or answered
    /// before a restart)?
    async fn claim(&self, mut ticket: Ticket, mut now: u64) -> Result<Begin, Refusal> {
        let store = self.inner.store.clone();
        let lease_ms = ticket.lease.as_millis() as u64;
        // Polls of another node's attempt: at most its lease, in real time.
        let max_polls = (lease_ms / (ticket.poll.as_millis() as u64).max(1)).max(1) + 1;
        let mut polls = 0u64;
        let mut waited = false;
        loop {
            let held = match store
                .claim(
                    &ticket.id,
                    ticket.fingerprint,
                    self.inner.node,
                    now,
                    now.saturating_add(lease_ms),
                )
                .await
            {
                Ok(Claim::Claimed) => return Ok(Begin::Run(ticket)),
                Ok(Claim::Held(held)) => held,
                Err(_) => {
                    ticket.drop_local();
                    return Err(Refusal::Unavailable);
                }
            };
            let mut held = Some(held);
            // Poll until it is done, or the claim lapses or is released.
            while let Some(stored) = held.take() {
                match stored {
                    Stored::Done(record) => return self.adopt(ticket, record),
                    Stored::InFlight { fingerprint, .. } if fingerprint != ticket.fingerprint => {
                        ticket.drop_local();
                        self.count(&ticket.tenant, |c| c.conflicts += 1);
                        return Err(Refusal::KeyReused);
                    }
                    Stored::InFlight { .. } => {
                        if !waited {
                            waited = true;
                            self.count(&ticket.tenant, |c| c.waits += 1);
                        }
                        polls += 1;
                        if polls > max_polls {
                            ticket.drop_local();
                            return Err(Refusal::Unavailable);
                        }
                        tokio::time::sleep(ticket.poll).await;
                        now = self.inner.clock.now_ms();
                        match store.get(&ticket.id, now).await {
                            Ok(found) => held = found,
                            Err(_) => {
                                ticket.drop_local();
                                return Err(Refusal::Unavailable);
                            }
                        }
                    }
                }
            }
            // Nothing held any more: claim it again.
        }
    }

    /// A record found in the store answers this request (and its local
    /// waiters), or refuses it when its fingerprint differs.
    fn adopt(&self, mut ticket: Ticket, record: Record) -> Result<Begin, Refusal> {
        if record.fingerprint != ticket.fingerprint {
            ticket.drop_local();
            self.count(&ticket.tenant, |c| c.conflicts += 1);
            return Err(Refusal::KeyReused);
        }
        self.count(&ticket.tenant, |c| c.hits += 1);
        let answer = record.answer.clone();
        ticket.finish_local(answer.clone(), Some(record.expires_at_ms));
        Ok(Begin::Replay(answer))
    }
}

/// The right to run a keyed request, and the duty to say how it ended.
pub struct Ticket {
    inner: Arc<Inner>,
    tenant: Arc<Mutex<Tenant>>,
    id: EntryId,
    fingerprint: Fingerprint,
    generation: u64,
    expires_at_ms: u64,
    lease: Duration,
    poll: Duration,
    /// `None` once finished or abandoned.
    answers: Option<watch::Sender<Option<Answer>>>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("id", &self.id)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    /// The entry.
    pub fn id(&self) -> &EntryId {
        &self.id
    }

    /// When the entry is forgotten (Unix ms).
    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }

    /// The record to write with the call's effects, in the same
    /// transaction (a durable store), before [`Ticket::completed`].
    pub fn record(&self, answer: &Answer) -> Record {
        Record {
            fingerprint: self.fingerprint,
            expires_at_ms: self.expires_at_ms,
            answer: answer.clone(),
        }
    }

    /// The request was answered with `answer`: keep it for the window,
    /// answer the waiting retries, and write it to the store. Kept here
    /// even if the store fails (the error is returned for the logs), and
    /// even if this future is dropped before the store answers.
    pub async fn complete(mut self, answer: Answer) -> Result<(), StoreError> {
        let record = self.record(&answer);
        self.finish_local(answer, None);
        let store = self.inner.store.clone();
        store.complete(&self.id, &record).await
    }

    /// The request was answered with `answer`, and its [`Ticket::record`]
    /// was already written with the call's effects: keep it here and answer
    /// the waiting retries.
    pub fn completed(mut self, answer: Answer) {
        self.finish_local(answer, None);
    }

    /// The request ended without effects and without an answer worth
    /// keeping (refused before it ran, failed, timed out, cut off): forget
    /// it, so that a retry runs it. Dropping the ticket does the same here;
    /// this also releases the claim in a shared store at once (otherwise
    /// another node's retry waits until the claim's lease lapses).
    pub async fn abandon(mut self) {
        self.drop_local();
        let store = self.inner.store.clone();
        let _ = store.release(&self.id, self.inner.node).await;
    }

    fn finish_local(&mut self, answer: Answer, expires_at_ms: Option<u64>) {
        let Some(tx) = self.answers.take() else {
            return;
        };
        {
            let mut t = self.tenant.lock().unwrap_or_else(PoisonError::into_inner);
            let (subject, key) = (self.id.subject.as_str(), self.id.key.as_str());
            let expired = match t.get(subject, key) {
                Some(e) if e.generation == self.generation => {
                    matches!(e.state, State::Running { expired: true, .. })
                        || expires_at_ms.is_some_and(|at| at <= self.inner.clock.now_ms())
                }
                _ => true,
            };
            if expired {
                if t.remove(subject, key, self.generation).is_some() {
                    t.counters.evictions += 1;
                }
            } else {
                let size = answer.size();
                let mut moved = None;
                if let Some(e) = t.get_mut(subject, key) {
                    e.state = State::Done(answer.clone());
                    e.bytes += size;
                    // A record from the store keeps its own window.
                    if let Some(at) = expires_at_ms.filter(|at| *at != e.expires_at_ms) {
                        moved = Some((e.expires_at_ms, at));
                        e.expires_at_ms = at;
                    }
                }
                if let Some((old, at)) = moved
                    && let Some(v) = t.expiry.remove(&(old, self.generation))
                {
                    t.expiry.insert((at, self.generation), v);
                }
                t.bytes += size;
                t.counters.bytes = t.bytes;
            }
        }
        let _ = tx.send(Some(answer));
    }

    fn drop_local(&mut self) {
        let Some(tx) = self.answers.take() else {
            return;
        };
        self.tenant
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id.subject, &self.id.key, self.generation);
        // Waiters wake once the entry is gone, and try again.
        drop(tx);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.drop_local();
    }
}
