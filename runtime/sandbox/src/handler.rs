//! A loaded handler and the calls into it: instance reuse or a fresh
//! instance per call (with `ready_instances`, made ahead of the call and torn
//! down after it on the sandbox's background thread), per-call budgets,
//! commit-on-success, quarantine.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Semaphore;
use wasmtime::{Engine, PoolConcurrencyLimitError, Store, Trap, UpdateDeadline};

use super::background::Background;
use super::bindings;
use super::bindings::sluice::handler::types::{Connection, Message};
use super::budget::{Account, Budget, Holding, IdlePool, Ticket};
use super::call::{
    CallClock, CallCtx, CallError, CallErrorKind, CallOutcome, CallReport, DeadlineExceeded,
    HandlerShared, Metered, Overloaded, Stopped, check_output, classify, from_handler_error,
};
use super::compiled::Compiled;
use super::export::Export;
use super::histogram::{Histogram, HistogramSnapshot};
use super::log::{GuestLog, LogBudget};
use super::quarantine::Breaker;
use super::spec::HandlerSpec;
use super::state::StateStore;
use sluice_config::Isolation;

/// A handler ready to be called. Cheap to clone; clones share instances,
/// the quarantine breaker and statistics.
#[derive(Clone)]
pub struct Handler {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    pre: bindings::HandlerPre<CallCtx>,
    spec: HandlerSpec,
    digest: String,
    shared: Arc<HandlerShared>,
    fuel: bool,
    /// `reuse`: warm instances between calls.
    idle: Mutex<Vec<Instance>>,
    /// `fresh`: never-called instances made ahead of calls.
    ready: Mutex<Vec<Instance>>,
    /// `fresh`: instances being made for `ready`.
    making: AtomicUsize,
    /// `fresh` with `ready_instances`: where instances are made ahead.
    background: Option<Arc<Background>>,
    permits: Semaphore,
    breaker: Mutex<Breaker>,
    stats: Stats,
    held: Held,
}

/// What a loaded handler holds of what the sandbox shares: its compiled
/// component (kept in memory while the handler lives), its tenant's
/// account (instances and compiled bytes counted there).
pub(crate) struct Held {
    pub(crate) budget: Arc<Budget>,
    pub(crate) account: Arc<Account>,
    /// Kept for as long as the handler lives: the cache only has a weak
    /// reference.
    pub(crate) _compiled: Arc<Compiled>,
    /// Its compiled bytes counted to its tenant until it is dropped.
    pub(crate) _holding: Holding,
}

/// A live instance with its store.
struct Instance {
    store: Store<CallCtx>,
    guest: bindings::Handler,
    /// Its place in the tenant's quota and the node's pool.
    _ticket: Ticket,
    /// When it last went idle ([`Budget::stamp`]): the least recently used
    /// idle instance is evicted first.
    idle_since: u64,
}

/// Whether a successful call's state writes are committed.
#[derive(Clone, Copy)]
enum Commit<'a> {
    Yes,
    /// Commit, and keep the attachment made from the actions with the
    /// writes when the store can (`CallOutcome::attached`).
    Attached(crate::state::Attach<'a>),
    No,
}

enum Event<'a> {
    Connect(&'a Connection),
    Message(&'a Connection, &'a Message),
    Disconnect(&'a Connection),
}

struct Stats {
    call_seconds: Histogram,
    calls: AtomicU64,
    ok: AtomicU64,
    fuel_consumed: AtomicU64,
    instances_created: AtomicU64,
    quarantines: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

/// Upper bounds (seconds) of the handler call duration histogram's buckets.
pub const CALL_SECONDS_BUCKETS: [f64; 15] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 1.0,
];

/// Counters of one handler since it was loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HandlerStats {
    /// Calls made (including refused ones).
    pub calls: u64,
    /// Calls that returned actions.
    pub ok: u64,
    /// Calls that did not, by [`CallErrorKind::name`].
    pub errors: BTreeMap<String, u64>,
    /// Fuel spent over all calls.
    pub fuel_consumed: u64,
    /// Instances created.
    pub instances_created: u64,
    /// Times the handler was quarantined.
    pub quarantines: u64,
    /// Calls that ran (not refused by quarantine), per bucket of
    /// [`CALL_SECONDS_BUCKETS`]: how long a call took, instantiation
    /// included, waiting for a permit excluded.
    pub call_seconds: HistogramSnapshot,
}

impl Handler {
    #[expect(
        clippy::too_many_arguments,
        reason = "what the sandbox hands a handler it loaded, spelled out"
    )]
    pub(crate) fn new(
        engine: Engine,
        pre: bindings::HandlerPre<CallCtx>,
        spec: HandlerSpec,
        digest: String,
        state: Arc<dyn StateStore>,
        fuel: bool,
        background: Option<Arc<Background>>,
        held: Held,
    ) -> Self {
        let shared = Arc::new(HandlerShared {
            tenant: Arc::from(spec.tenant.as_str()),
            name: Arc::from(spec.name.as_str()),
            limits: spec.limits.clone(),
            grants: spec.grants.clone(),
            state,
            log_budget: Arc::new(LogBudget::default()),
        });
        let breaker = Breaker::new(spec.limits.quarantine_after, spec.limits.quarantine_for);
        let permits = Semaphore::new(spec.limits.max_concurrency);
        let handler = Self {
            inner: Arc::new(Inner {
                engine,
                pre,
                spec,
                digest,
                shared,
                fuel,
                idle: Mutex::new(Vec::new()),
                ready: Mutex::new(Vec::new()),
                making: AtomicUsize::new(0),
                background,
                permits,
                breaker: Mutex::new(breaker),
                stats: Stats {
                    call_seconds: Histogram::new(&CALL_SECONDS_BUCKETS),
                    calls: AtomicU64::new(0),
                    ok: AtomicU64::new(0),
                    fuel_consumed: AtomicU64::new(0),
                    instances_created: AtomicU64::new(0),
                    quarantines: AtomicU64::new(0),
                    errors: Mutex::new(BTreeMap::new()),
                },
                held,
            }),
        };
        let pool: std::sync::Weak<dyn IdlePool> = Arc::downgrade(&handler.inner) as _;
        handler.inner.held.account.register(pool);
        handler
    }

    /// The spec it was loaded with.
    pub fn spec(&self) -> &HandlerSpec {
        &self.inner.spec
    }

    /// SHA-256 of the component's bytes, in hex: which version is loaded.
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }

    /// Instances waiting for the next call: warm ones (`reuse`), or
    /// never-called ones made ahead (`fresh`).
    pub fn idle_instances(&self) -> usize {
        let pool = match self.inner.spec.isolation {
            Isolation::Reuse => &self.inner.idle,
            Isolation::Fresh => &self.inner.ready,
        };
        pool.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Counters since load.
    pub fn stats(&self) -> HandlerStats {
        let s = &self.inner.stats;
        HandlerStats {
            calls: s.calls.load(Ordering::Relaxed),
            ok: s.ok.load(Ordering::Relaxed),
            errors: s
                .errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            fuel_consumed: s.fuel_consumed.load(Ordering::Relaxed),
            instances_created: s.instances_created.load(Ordering::Relaxed),
            quarantines: s.quarantines.load(Ordering::Relaxed),
            call_seconds: s.call_seconds.snapshot(),
        }
    }

    /// Call `on-connect`.
    pub async fn on_connect(&self, conn: &Connection) -> Result<CallOutcome, CallError> {
        self.call(Event::Connect(conn), Commit::Yes).await
    }

    /// Call `on-message`.
    pub async fn on_message(
        &self,
        conn: &Connection,
        msg: &Message,
    ) -> Result<CallOutcome, CallError> {
        self.call(Event::Message(conn, msg), Commit::Yes).await
    }

    /// Call `on-message`; once the handler returned `ok`, `attach` makes a
    /// record from its actions that a store which
    /// [`attaches`](crate::StateStore::attaches) commits with the call's
    /// writes, in the same atomic step (`CallOutcome::attached` says
    /// whether it did; with another store the caller keeps it itself).
    pub async fn on_message_attached(
        &self,
        conn: &Connection,
        msg: &Message,
        attach: crate::state::Attach<'_>,
    ) -> Result<CallOutcome, CallError> {
        self.call(Event::Message(conn, msg), Commit::Attached(attach))
            .await
    }

    /// Call `on-disconnect`.
    pub async fn on_disconnect(&self, conn: &Connection) -> Result<CallOutcome, CallError> {
        self.call(Event::Disconnect(conn), Commit::Yes).await
    }

    /// Call `export` as a rehearsal: under the same limits, reading the
    /// committed state, but its state writes are dropped instead of
    /// committed (verification smoke calls, shadow versions). Its actions
    /// are the caller's to look at; nothing applies them.
    pub async fn rehearse(
        &self,
        export: Export,
        conn: &Connection,
        msg: &Message,
    ) -> Result<CallOutcome, CallError> {
        let event = match export {
            Export::Connect => Event::Connect(conn),
            Export::Message => Event::Message(conn, msg),
            Export::Disconnect => Event::Disconnect(conn),
        };
        self.call(event, Commit::No).await
    }

    /// Call `export`; `msg` is used by [`Export::Message`] only.
    pub async fn call_export(
        &self,
        export: Export,
        conn: &Connection,
        msg: &Message,
    ) -> Result<CallOutcome, CallError> {
        match export {
            Export::Connect => self.on_connect(conn).await,
            Export::Message => self.on_message(conn, msg).await,
            Export::Disconnect => self.on_disconnect(conn).await,
        }
    }

    async fn call(&self, event: Event<'_>, commit: Commit<'_>) -> Result<CallOutcome, CallError> {
        let inner = &*self.inner;
        let started = Instant::now();
        inner.stats.calls.fetch_add(1, Ordering::Relaxed);
        let mut report = CallReport::default();

        let quarantined = inner
            .breaker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(started);
        if let Err(remaining) = quarantined {
            return Err(self.failed(CallErrorKind::Quarantined { remaining }, report));
        }
        // Waiting for a permit is bounded too: a handler whose calls all
        // hang (until their deadline) makes the next caller wait at most one
        // deadline, then answers `unavailable`.
        let permit =
            tokio::time::timeout(inner.spec.limits.deadline, inner.permits.acquire()).await;
        let _permit = match permit {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => {
                let kind = CallErrorKind::Unavailable {
                    detail: "the handler is shutting down".into(),
                };
                return Err(self.failed(kind, report));
            }
            Err(_) => {
                let kind = CallErrorKind::Unavailable {
                    detail: "every instance stayed busy for a whole deadline".into(),
                };
                return Err(self.failed(kind, report));
            }
        };

        // The budget starts once the call may run: waiting for a permit is
        // not the handler's time.
        let clock = CallClock::new(inner.spec.limits.deadline);
        let (made, pool) = match inner.spec.isolation {
            Isolation::Reuse => (false, &inner.idle),
            Isolation::Fresh => (true, &inner.ready),
        };
        let waiting = pool.lock().unwrap_or_else(PoisonError::into_inner).pop();
        if made {
            // Make the next call's instance while this one runs.
            self.make_ready();
        }
        let mut instance = match waiting {
            Some(mut instance) => {
                report.instantiated = made;
                self.begin(&mut instance.store, clock.clone());
                instance
            }
            None => {
                report.instantiated = true;
                // A place in the tenant's quota and the node's pool: made
                // by evicting an idle instance, or waited for (not the
                // handler's time) like a permit.
                let held = &inner.held;
                let ticket = match held
                    .budget
                    .ticket(&held.account, inner.spec.limits.deadline)
                    .await
                {
                    Ok(ticket) => ticket,
                    Err(full) => {
                        let kind = CallErrorKind::Unavailable {
                            detail: full.to_string(),
                        };
                        return Err(self.failed(kind, report));
                    }
                };
                inner
                    .stats
                    .instances_created
                    .fetch_add(1, Ordering::Relaxed);
                match self.instantiate(clock.clone(), ticket).await {
                    Ok(instance) => instance,
                    Err((kind, store)) => {
                        let mut store = match store {
                            Some(store) => store,
                            None => self.new_store(),
                        };
                        self.settle(&mut store, &mut report, started);
                        return Err(self.finish_err(kind, report));
                    }
                }
            }
        };

        let guest = instance.guest.sluice_handler_events();
        let store = &mut instance.store;
        let result = {
            let call = async {
                match event {
                    Event::Connect(conn) => guest.call_on_connect(&mut *store, conn).await,
                    Event::Message(conn, msg) => {
                        guest.call_on_message(&mut *store, conn, msg).await
                    }
                    Event::Disconnect(conn) => guest.call_on_disconnect(&mut *store, conn).await,
                }
            };
            Metered::new(call, clock.clone()).await
        };
        // A state store that failed or hung during the call (a networked
        // store cut off) is not the handler's fault: whatever the handler
        // made of it, the call is `unavailable`, and never counts towards
        // quarantine.
        let store_trouble = {
            let state = &mut store.data_mut().state;
            match (state.failed.take(), state.waiting) {
                (Some(e), _) => Some(e.to_string()),
                (None, true) => Some("the state store did not answer within the deadline".into()),
                (None, false) => None,
            }
        };
        let outcome = match (result, store_trouble) {
            (_, Some(detail)) => Err(CallErrorKind::Unavailable { detail }),
            (Err(stopped), None) => Err(stopped_kind(stopped)),
            (Ok(Ok(Ok(actions))), None) => match check_output(&actions, &inner.spec.limits) {
                // A rehearsal's writes are forgotten by the next `begin`.
                Ok(()) if matches!(commit, Commit::No) => Ok((actions, false)),
                Ok(()) => {
                    let state = &mut store.data_mut().state;
                    let attachment = match commit {
                        Commit::Attached(attach) if state.attaches() => Some(attach(&actions)),
                        _ => None,
                    };
                    let attached = attachment.is_some();
                    match state.commit(attachment).await {
                        Ok(()) => Ok((actions, attached)),
                        Err(crate::state::CommitError::Conflict) => Err(CallErrorKind::Conflict),
                        Err(crate::state::CommitError::Store(e)) => {
                            Err(CallErrorKind::Unavailable {
                                detail: e.to_string(),
                            })
                        }
                    }
                }
                Err(kind) => Err(kind),
            },
            (Ok(Ok(Err(handler_error))), None) => Err(from_handler_error(handler_error)),
            (Ok(Err(error)), None) => Err(over_host_copy_budget(
                classify(&error, store.data().limiter.denied),
                &inner.spec.limits,
            )),
        };
        self.settle(store, &mut report, started);

        let keep = match &outcome {
            Ok(_) => true,
            Err(kind) => !kind.poisons_instance(),
        };
        match inner.spec.isolation {
            Isolation::Reuse if keep => {
                instance.idle_since = inner.held.budget.stamp();
                let mut idle = inner.idle.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < inner.spec.limits.max_idle_instances {
                    idle.push(instance);
                }
            }
            Isolation::Reuse => {}
            // Resetting its memory slot is not this call's time.
            Isolation::Fresh => match &inner.background {
                Some(background) => background.drop_later(instance),
                None => drop(instance),
            },
        }
        match outcome {
            Ok((actions, attached)) => {
                self.record(false);
                inner.stats.ok.fetch_add(1, Ordering::Relaxed);
                Ok(CallOutcome {
                    actions,
                    report,
                    attached,
                })
            }
            Err(kind) => Err(self.finish_err(kind, report)),
        }
    }

    /// Start making instances for `ready` on the background thread, up to
    /// `ready_instances` there or on their way. An instance that fails to
    /// start is not retried here: the next call makes its own and reports
    /// why.
    fn make_ready(&self) {
        let inner = &*self.inner;
        let Some(background) = &inner.background else {
            return;
        };
        let target = inner.spec.limits.ready_instances;
        let ready = inner
            .ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        while ready + inner.making.fetch_add(1, Ordering::AcqRel) < target {
            self.make_one_ready(background);
        }
        inner.making.fetch_sub(1, Ordering::AcqRel);
    }

    fn make_one_ready(&self, background: &Background) {
        let handler = Arc::downgrade(&self.inner);
        background.spawn(async move {
            let Some(inner) = handler.upgrade() else {
                return;
            };
            let handler = Handler { inner };
            let inner = &*handler.inner;
            // Made ahead only where the quota and the pool have room now.
            let Ok(ticket) = inner.held.budget.try_ticket(&inner.held.account) else {
                inner.making.fetch_sub(1, Ordering::AcqRel);
                return;
            };
            let made = handler
                .instantiate(CallClock::new(inner.spec.limits.deadline), ticket)
                .await;
            if let Ok(mut instance) = made {
                instance.idle_since = inner.held.budget.stamp();
                inner
                    .stats
                    .instances_created
                    .fetch_add(1, Ordering::Relaxed);
                inner
                    .ready
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(instance);
            }
            inner.making.fetch_sub(1, Ordering::AcqRel);
        });
    }

    fn new_store(&self) -> Store<CallCtx> {
        let mut store = Store::new(&self.inner.engine, CallCtx::new(self.inner.shared.clone()));
        store.limiter(|ctx| &mut ctx.limiter);
        // The host copies at most this much out of the guest at one
        // boundary crossing (a reply list pointing 1,000 times at one 8 MiB
        // string is refused before the host holds it).
        store.set_hostcall_fuel(self.inner.spec.limits.host_copy_bytes());
        store.epoch_deadline_callback(|mut ctx| {
            let call = &mut ctx.data_mut().call;
            let stopped = call.clock.as_ref().and_then(|c| c.check(Instant::now()));
            match stopped {
                Some(Stopped::Deadline) => Err(wasmtime::Error::new(DeadlineExceeded)),
                Some(Stopped::Overloaded) => Err(wasmtime::Error::new(Overloaded)),
                None => {
                    call.ticks += 1;
                    if call.ticks == 1 {
                        // A short call that a tick happens to land in runs on:
                        // yielding it would put it behind every other task
                        // of a busy server, and an overloaded host (not the
                        // handler) could then run it out of wall-clock time.
                        Ok(UpdateDeadline::Continue(1))
                    } else {
                        // A long call: give the worker thread back to other
                        // tasks at every tick, then carry on. The wait for a
                        // thread that follows is not charged to it.
                        if let Some(clock) = &call.clock {
                            clock.yielding();
                        }
                        Ok(UpdateDeadline::Yield(1))
                    }
                }
            }
        });
        store
    }

    /// Reset a store for a new call: empty buffers, full fuel, new deadline.
    fn begin(&self, store: &mut Store<CallCtx>, clock: Arc<CallClock>) {
        store.data_mut().begin(clock);
        if self.inner.fuel {
            // Only fails when fuel is disabled in the engine, checked above.
            let _ = store.set_fuel(self.inner.spec.limits.fuel);
        }
        store.set_epoch_deadline(1);
    }

    async fn instantiate(
        &self,
        clock: Arc<CallClock>,
        ticket: Ticket,
    ) -> Result<Instance, (CallErrorKind, Option<Store<CallCtx>>)> {
        let mut store = self.new_store();
        self.begin(&mut store, clock.clone());
        let mut instantiated =
            Metered::new(self.inner.pre.instantiate_async(&mut store), clock.clone()).await;
        if matches!(&instantiated, Ok(Err(e)) if e.downcast_ref::<PoolConcurrencyLimitError>().is_some())
            && self.inner.held.budget.evict_for_node()
        {
            // The pool ran out of something the budget does not count
            // (core instances, memories, tables of a large component):
            // an idle instance made room, try once more.
            store = self.new_store();
            self.begin(&mut store, clock.clone());
            instantiated = Metered::new(self.inner.pre.instantiate_async(&mut store), clock).await;
        }
        match instantiated {
            Ok(Ok(guest)) => Ok(Instance {
                store,
                guest,
                _ticket: ticket,
                idle_since: 0,
            }),
            Ok(Err(error)) => {
                let denied = store.data().limiter.denied;
                let is_trap = error.downcast_ref::<Trap>().is_some()
                    || error.downcast_ref::<DeadlineExceeded>().is_some()
                    || error.downcast_ref::<Overloaded>().is_some()
                    || denied.is_some();
                let kind = if is_trap {
                    classify(&error, denied)
                } else {
                    CallErrorKind::Unavailable {
                        detail: format!("could not instantiate: {error:#}"),
                    }
                };
                Err((kind, Some(store)))
            }
            // The store was in the middle of instantiation: it is dropped.
            Err(stopped) => Err((stopped_kind(stopped), None)),
        }
    }

    fn settle(&self, store: &mut Store<CallCtx>, report: &mut CallReport, started: Instant) {
        if self.inner.fuel {
            let left = store.get_fuel().unwrap_or(0);
            let spent = self.inner.spec.limits.fuel.saturating_sub(left);
            report.fuel_consumed = Some(spent);
            self.inner
                .stats
                .fuel_consumed
                .fetch_add(spent, Ordering::Relaxed);
        }
        store.data_mut().finish(report);
        let took = started.elapsed();
        report.elapsed_us = took.as_micros() as u64;
        self.inner.stats.call_seconds.observe(took);
        self.emit_logs(report);
    }

    fn emit_logs(&self, report: &CallReport) {
        let shared = &self.inner.shared;
        GuestLog::global().emit(
            &shared.tenant,
            &shared.name,
            &report.logs,
            report.logs_dropped,
        );
    }

    fn record(&self, failed: bool) {
        let opened = self
            .inner
            .breaker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(failed, Instant::now());
        if opened {
            self.inner.stats.quarantines.fetch_add(1, Ordering::Relaxed);
            let spec = &self.inner.spec;
            tracing::warn!(handler = %spec.name, tenant = %spec.tenant,
                failures = spec.limits.quarantine_after,
                cooling_ms = spec.limits.quarantine_for.as_millis() as u64,
                "handler quarantined after consecutive failures");
        }
    }

    fn failed(&self, kind: CallErrorKind, report: CallReport) -> CallError {
        self.count_error(&kind);
        CallError { kind, report }
    }

    fn finish_err(&self, kind: CallErrorKind, report: CallReport) -> CallError {
        if kind.is_handler_failure() {
            let spec = &self.inner.spec;
            tracing::debug!(handler = %spec.name, tenant = %spec.tenant, kind = kind.name(),
                detail = %kind, "handler call failed");
            self.record(true);
        } else if matches!(kind, CallErrorKind::Rejected { .. }) {
            // A rejection is a handled outcome: it closes the breaker.
            self.record(false);
        }
        self.failed(kind, report)
    }

    fn count_error(&self, kind: &CallErrorKind) {
        *self
            .inner
            .stats
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(kind.name())
            .or_default() += 1;
    }
}

/// The error kind of a call stopped from outside the guest.
fn stopped_kind(stopped: Stopped) -> CallErrorKind {
    match stopped {
        Stopped::Deadline => CallErrorKind::Deadline,
        Stopped::Overloaded => CallErrorKind::Unavailable {
            detail: "the host could not run the call within its deadline".into(),
        },
    }
}

/// wasmtime's refusal to copy more than the store's hostcall fuel out of
/// the guest (its error type is private; its message is stable).
const HOSTCALL_FUEL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

/// A call stopped while the host lifted its output past the host-copy
/// budget returned too much output: say so, as the output limit would.
fn over_host_copy_budget(
    kind: CallErrorKind,
    limits: &sluice_config::HandlerLimits,
) -> CallErrorKind {
    match kind {
        CallErrorKind::Trap { detail } if detail.contains(HOSTCALL_FUEL_EXHAUSTED) => {
            CallErrorKind::OutputTooLarge {
                bytes: limits.host_copy_bytes(),
                max: limits.max_output_bytes,
            }
        }
        other => other,
    }
}

impl IdlePool for Inner {
    fn oldest_idle(&self) -> Option<u64> {
        let pool = match self.spec.isolation {
            Isolation::Reuse => &self.idle,
            Isolation::Fresh => &self.ready,
        };
        pool.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first()
            .map(|i| i.idle_since)
    }

    fn drop_oldest_idle(&self) -> bool {
        let pool = match self.spec.isolation {
            Isolation::Reuse => &self.idle,
            Isolation::Fresh => &self.ready,
        };
        let oldest = {
            let mut idle = pool.lock().unwrap_or_else(PoisonError::into_inner);
            (!idle.is_empty()).then(|| idle.remove(0))
        };
        // Dropped outside the lock: resetting its slot is not a caller's wait.
        oldest.is_some()
    }
}
