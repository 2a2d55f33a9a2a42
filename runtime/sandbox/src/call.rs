//! One call into a handler: the store's data ([`CallCtx`]), what a call
//! returns ([`CallOutcome`], [`CallError`]), and how a failure is classified
//! into the error kind a user sees.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Serialize;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::sluice::handler::types::{Action, HandlerError};
use sluice_config::{
    Capability, DEFAULT_MAX_CORE_INSTANCES, DEFAULT_MAX_MEMORIES, DEFAULT_MAX_TABLES, HandlerLimits,
};
use sluice_protocol::{HandlerCode, truncate_utf8};

use super::clock::{ClockHost, FrozenClock};
use super::log::{LogBudget, LogHost, LogLine};
use super::state::{StateHost, StateStore};
use super::stdio::CapturedOutput;

/// What every call of one handler shares.
pub(crate) struct HandlerShared {
    pub(crate) tenant: Arc<str>,
    pub(crate) name: Arc<str>,
    pub(crate) limits: HandlerLimits,
    pub(crate) grants: BTreeSet<Capability>,
    pub(crate) state: Arc<dyn StateStore>,
    pub(crate) log_budget: Arc<LogBudget>,
}

/// What one call accumulates; reset before every call.
#[derive(Default)]
pub(crate) struct CallState {
    /// The call's time budget, charged while it runs or waits on the host.
    pub(crate) clock: Option<Arc<CallClock>>,
    /// Epoch ticks seen by this call so far.
    pub(crate) ticks: u32,
}

/// The data of a handler instance's store: one host struct per capability,
/// each registered in the linker by its own interface (see `capabilities`).
pub(crate) struct CallCtx {
    pub(crate) call: CallState,
    pub(crate) state: StateHost,
    pub(crate) log: LogHost,
    pub(crate) clock: ClockHost,
    pub(crate) limiter: Limiter,
    wasi: WasiCtx,
    table: ResourceTable,
    stdout: CapturedOutput,
    stderr: CapturedOutput,
}

impl CallCtx {
    pub(crate) fn new(handler: Arc<HandlerShared>) -> Self {
        let stdout = CapturedOutput::new(handler.limits.max_stdio_bytes);
        let stderr = CapturedOutput::new(handler.limits.max_stdio_bytes);
        // An empty WASI context: no files, no environment, no arguments, no
        // network (every address denied, no name lookups), stdin closed;
        // clocks frozen at zero unless the handler was granted `clock`.
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if !handler.grants.contains(&Capability::Clock) {
            wasi.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
        }
        let wasi = wasi.build();
        let limiter = Limiter::new(&handler.limits);
        Self {
            state: StateHost::new(
                handler.tenant.to_string(),
                handler.limits.clone(),
                handler.state.clone(),
            ),
            log: LogHost::new(handler.limits.clone(), handler.log_budget.clone()),
            clock: ClockHost,
            call: CallState::default(),
            limiter,
            wasi,
            table: ResourceTable::new(),
            stdout,
            stderr,
        }
    }

    /// Start a call: empty buffers, a fresh time budget.
    pub(crate) fn begin(&mut self, clock: Arc<CallClock>) {
        self.call = CallState {
            clock: Some(clock),
            ticks: 0,
        };
        self.state.begin();
        self.log.begin();
        self.limiter.denied = None;
    }

    /// Collect what the call left behind for its report.
    pub(crate) fn finish(&mut self, report: &mut CallReport) {
        report.logs = std::mem::take(&mut self.log.lines);
        report.logs_dropped = self.log.dropped;
        let (stdout, out_dropped) = self.stdout.take();
        let (stderr, err_dropped) = self.stderr.take();
        report.stdout = stdout;
        report.stderr = stderr;
        report.stdio_dropped = out_dropped + err_dropped;
        report.memory_bytes = self.limiter.memory_total as u64;
    }
}

/// A call's time budget. Charged: the time the call runs, and the time it
/// waits on the host (a WASI sleep, a poll, a networked store). Not
/// charged: the time it waits for a worker thread after yielding at an
/// epoch tick, which is the host's doing (another tenant's load), not the
/// handler's. A hard wall-clock limit backs it up.
pub(crate) struct CallClock {
    budget: Duration,
    hard_deadline: Instant,
    inner: Mutex<ClockState>,
}

#[derive(Default)]
struct ClockState {
    charged: Duration,
    running_since: Option<Instant>,
    waiting_since: Option<Instant>,
    /// The last suspension was a yield at an epoch tick.
    yielded: bool,
}

/// How many budgets a call may take in wall-clock time at most, waiting for
/// threads included, before it is given up as `unavailable`.
pub const HARD_DEADLINE_FACTOR: u32 = 10;

/// Why a metered call was stopped from outside the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// The handler used its budget (running or waiting on the host).
    Deadline,
    /// The host could not give the call its budget in time.
    Overloaded,
}

impl CallClock {
    pub(crate) fn new(budget: Duration) -> Arc<Self> {
        Arc::new(Self {
            budget,
            hard_deadline: Instant::now() + budget * HARD_DEADLINE_FACTOR + Duration::from_secs(1),
            inner: Mutex::new(ClockState::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Time charged so far, as of `now`.
    fn charged(&self, s: &ClockState, now: Instant) -> Duration {
        let running = s.running_since.map_or(Duration::ZERO, |t| now - t);
        let waiting = match (s.waiting_since, s.yielded) {
            (Some(t), false) => now - t,
            _ => Duration::ZERO,
        };
        s.charged + running + waiting
    }

    /// Whether the call must stop now (checked at every epoch tick and
    /// whenever it is polled).
    pub(crate) fn check(&self, now: Instant) -> Option<Stopped> {
        let s = self.lock();
        if self.charged(&s, now) >= self.budget {
            Some(Stopped::Deadline)
        } else if now >= self.hard_deadline {
            Some(Stopped::Overloaded)
        } else {
            None
        }
    }

    /// The guest yields at an epoch tick: the wait that follows is not its.
    pub(crate) fn yielding(&self) {
        self.lock().yielded = true;
    }

    fn resume(&self, now: Instant) {
        let mut s = self.lock();
        if let Some(t) = s.waiting_since.take()
            && !s.yielded
        {
            s.charged += now - t;
        }
        s.yielded = false;
        s.running_since = Some(now);
    }

    /// Suspended: the instant at which the budget runs out if the wait is
    /// charged, or the hard deadline if it is a yield.
    fn suspend(&self, now: Instant) -> Instant {
        let mut s = self.lock();
        if let Some(t) = s.running_since.take() {
            s.charged += now - t;
        }
        s.waiting_since = Some(now);
        if s.yielded {
            self.hard_deadline
        } else {
            let left = self.budget.saturating_sub(s.charged);
            (now + left).min(self.hard_deadline)
        }
    }
}

pin_project_lite::pin_project! {
    /// A guest call (or instantiation) under its [`CallClock`]: stopped
    /// when its budget runs out while it waits on the host, which epoch
    /// interruption cannot see.
    pub(crate) struct Metered<F> {
        #[pin]
        inner: F,
        clock: Arc<CallClock>,
        #[pin]
        timer: tokio::time::Sleep,
    }
}

impl<F> Metered<F> {
    pub(crate) fn new(inner: F, clock: Arc<CallClock>) -> Self {
        let timer = tokio::time::sleep_until(clock.hard_deadline.into());
        Self {
            inner,
            clock,
            timer,
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = Result<F::Output, Stopped>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let now = Instant::now();
        this.clock.resume(now);
        if let Some(stopped) = this.clock.check(now) {
            return Poll::Ready(Err(stopped));
        }
        let polled = this.inner.as_mut().poll(cx);
        let until = this.clock.suspend(Instant::now());
        match polled {
            Poll::Ready(v) => Poll::Ready(Ok(v)),
            Poll::Pending => {
                this.timer.as_mut().reset(until.into());
                if this.timer.as_mut().poll(cx).is_ready() {
                    let stopped = this
                        .clock
                        .check(Instant::now())
                        .unwrap_or(Stopped::Deadline);
                    return Poll::Ready(Err(stopped));
                }
                Poll::Pending
            }
        }
    }
}

impl WasiView for CallCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Which resource a limiter refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Denied {
    Memory,
    Table,
}

/// Caps the memory an instance holds, summed over all its memories, and the
/// size of its tables; remembers a refusal so a trap that follows can be
/// reported as what it is.
pub(crate) struct Limiter {
    memory_cap: usize,
    memory_total: usize,
    table_elements: usize,
    pub(crate) denied: Option<Denied>,
}

impl Limiter {
    fn new(limits: &HandlerLimits) -> Self {
        Self {
            memory_cap: limits.memory_bytes,
            memory_total: 0,
            table_elements: limits.table_elements,
            denied: None,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self
            .memory_total
            .saturating_sub(current)
            .saturating_add(desired);
        if after > self.memory_cap {
            self.denied = Some(Denied::Memory);
            return Ok(false);
        }
        self.memory_total = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.denied = Some(Denied::Table);
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        DEFAULT_MAX_CORE_INSTANCES
    }

    fn tables(&self) -> usize {
        DEFAULT_MAX_TABLES
    }

    fn memories(&self) -> usize {
        DEFAULT_MAX_MEMORIES
    }
}

/// Raised from the epoch callback when a call runs past its deadline.
#[derive(Debug)]
pub(crate) struct DeadlineExceeded;

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("call ran past its wall-clock deadline")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// Raised from the epoch callback when the host could not give a call its
/// budget in time (not the handler's failure).
#[derive(Debug)]
pub(crate) struct Overloaded;

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the host could not run the call within its deadline")
    }
}

impl std::error::Error for Overloaded {}

/// What happened during a call, successful or not: for logs, metrics and the
/// handler author (`sluice call` prints it).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CallReport {
    /// Fuel the call spent (instantiation included in `fresh` mode); `None`
    /// when the sandbox runs without fuel.
    pub fuel_consumed: Option<u64>,
    /// Wall-clock time of the call, in microseconds.
    pub elapsed_us: u64,
    /// Whether a new instance was created for this call.
    pub instantiated: bool,
    /// Lines the handler logged (at most its per-call limit).
    pub logs: Vec<LogLine>,
    /// Log lines dropped past the limit.
    pub logs_dropped: u64,
    /// What the guest printed to stdout (capped).
    pub stdout: String,
    /// What the guest printed to stderr (capped).
    pub stderr: String,
    /// Bytes of stdout and stderr dropped past the cap.
    pub stdio_dropped: u64,
    /// Linear memory the instance held when the call ended, summed over its
    /// memories (what counts against `memory_bytes`).
    pub memory_bytes: u64,
}

/// A successful call: the actions to authorize and apply, in order.
#[derive(Clone, Debug)]
pub struct CallOutcome {
    /// The actions, within the handler's action and output limits.
    pub actions: Vec<Action>,
    /// What happened during the call.
    pub report: CallReport,
    /// Whether the call's attachment (`Handler::on_message_attached`) was
    /// committed with its writes, atomically.
    pub attached: bool,
}

/// A call that produced no actions, and why.
#[derive(Debug)]
pub struct CallError {
    /// Why.
    pub kind: CallErrorKind,
    /// What happened during the call.
    pub report: CallReport,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.fmt(f)
    }
}

impl std::error::Error for CallError {}

/// Why a call produced no actions. Every kind but `Rejected` is internal:
/// its detail goes to logs; the server maps each kind to what the client
/// sees, in one place (`sluice_server::rejection`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallErrorKind {
    /// The handler refused the message with a code the client may see.
    Rejected {
        /// The handler's code (validated: 1-64 of `a-z 0-9 _ .`).
        code: HandlerCode,
        /// The handler's message (truncated to 256 bytes).
        message: String,
    },
    /// The handler returned `fail`, or an invalid rejection.
    Failed {
        /// The handler's own description.
        detail: String,
    },
    /// The call spent all its fuel.
    OutOfFuel,
    /// The call ran past its wall-clock deadline.
    Deadline,
    /// The instance asked for more memory than its limit and trapped.
    MemoryLimit,
    /// The instance asked for a larger table than its limit and trapped.
    TableLimit,
    /// The call overflowed its wasm stack.
    StackOverflow,
    /// Any other trap (a panic, an unreachable, a bad memory access, ...).
    Trap {
        /// The trap as wasmtime describes it.
        detail: String,
    },
    /// The call returned more actions than allowed.
    TooManyActions {
        /// Returned.
        count: usize,
        /// Allowed.
        max: usize,
    },
    /// The call's actions carried more payload than allowed.
    OutputTooLarge {
        /// Returned.
        bytes: usize,
        /// Allowed.
        max: usize,
    },
    /// The handler failed too often in a row and is cooling down.
    Quarantined {
        /// Time left.
        remaining: Duration,
    },
    /// No instance could be created (pool exhausted, instantiation error),
    /// or the state store failed.
    Unavailable {
        /// Why.
        detail: String,
    },
    /// A state key the call read was changed by another node before the
    /// call's commit: nothing was written, the call may run again.
    Conflict,
}

/// Longest rejection message passed to a client.
pub const MAX_REJECTION_MESSAGE_BYTES: usize = 256;

impl CallErrorKind {
    /// A stable name for logs, metrics and `sluice call`.
    pub fn name(&self) -> &'static str {
        match self {
            CallErrorKind::Rejected { .. } => "rejected",
            CallErrorKind::Failed { .. } => "failed",
            CallErrorKind::OutOfFuel => "out_of_fuel",
            CallErrorKind::Deadline => "deadline",
            CallErrorKind::MemoryLimit => "memory_limit",
            CallErrorKind::TableLimit => "table_limit",
            CallErrorKind::StackOverflow => "stack_overflow",
            CallErrorKind::Trap { .. } => "trap",
            CallErrorKind::TooManyActions { .. } => "too_many_actions",
            CallErrorKind::OutputTooLarge { .. } => "output_too_large",
            CallErrorKind::Quarantined { .. } => "quarantined",
            CallErrorKind::Unavailable { .. } => "unavailable",
            CallErrorKind::Conflict => "conflict",
        }
    }

    /// Whether this counts towards quarantine. A rejection is the handler
    /// working as intended; quarantine and unavailability are not the
    /// handler's doing.
    pub fn is_handler_failure(&self) -> bool {
        !matches!(
            self,
            CallErrorKind::Rejected { .. }
                | CallErrorKind::Quarantined { .. }
                | CallErrorKind::Unavailable { .. }
                | CallErrorKind::Conflict
        )
    }

    /// Whether the instance must be thrown away: after a trap its memory may
    /// be in any state, so it is never called again.
    pub(crate) fn poisons_instance(&self) -> bool {
        matches!(
            self,
            CallErrorKind::OutOfFuel
                | CallErrorKind::Deadline
                | CallErrorKind::MemoryLimit
                | CallErrorKind::TableLimit
                | CallErrorKind::StackOverflow
                | CallErrorKind::Trap { .. }
                | CallErrorKind::Unavailable { .. }
        )
    }
}

impl fmt::Display for CallErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallErrorKind::Rejected { code, message } => write!(f, "rejected: {code}: {message}"),
            CallErrorKind::Failed { detail } => write!(f, "handler failed: {detail}"),
            CallErrorKind::OutOfFuel => f.write_str("out of fuel"),
            CallErrorKind::Deadline => f.write_str("deadline exceeded"),
            CallErrorKind::MemoryLimit => f.write_str("memory limit reached"),
            CallErrorKind::TableLimit => f.write_str("table limit reached"),
            CallErrorKind::StackOverflow => f.write_str("stack overflow"),
            CallErrorKind::Trap { detail } => write!(f, "trap: {detail}"),
            CallErrorKind::TooManyActions { count, max } => {
                write!(f, "returned {count} actions; at most {max} allowed")
            }
            CallErrorKind::OutputTooLarge { bytes, max } => {
                write!(f, "returned {bytes} bytes of output; at most {max} allowed")
            }
            CallErrorKind::Quarantined { remaining } => {
                write!(f, "quarantined for another {} ms", remaining.as_millis())
            }
            CallErrorKind::Unavailable { detail } => write!(f, "unavailable: {detail}"),
            CallErrorKind::Conflict => {
                f.write_str("state changed by another node before the commit")
            }
        }
    }
}

/// Classify an error that came out of wasmtime during instantiation or a
/// call.
pub(crate) fn classify(error: &wasmtime::Error, denied: Option<Denied>) -> CallErrorKind {
    if error.downcast_ref::<DeadlineExceeded>().is_some() {
        return CallErrorKind::Deadline;
    }
    if error.downcast_ref::<Overloaded>().is_some() {
        return CallErrorKind::Unavailable {
            detail: Overloaded.to_string(),
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => return CallErrorKind::OutOfFuel,
        Some(Trap::StackOverflow) => return CallErrorKind::StackOverflow,
        Some(Trap::Interrupt) => return CallErrorKind::Deadline,
        _ => {}
    }
    match denied {
        Some(Denied::Memory) => CallErrorKind::MemoryLimit,
        Some(Denied::Table) => CallErrorKind::TableLimit,
        None => {
            let detail = match error.downcast_ref::<Trap>() {
                Some(trap) => trap.to_string(),
                None => error.to_string(),
            };
            CallErrorKind::Trap { detail }
        }
    }
}

/// Turn the handler's own error into a kind.
pub(crate) fn from_handler_error(error: HandlerError) -> CallErrorKind {
    match error {
        HandlerError::Reject(r) => match HandlerCode::new(r.code.as_str()) {
            Some(code) => CallErrorKind::Rejected {
                code,
                message: truncate_utf8(r.message, MAX_REJECTION_MESSAGE_BYTES),
            },
            None => CallErrorKind::Failed {
                detail: format!(
                    "rejected with an invalid code {:?} (codes are 1-64 of a-z 0-9 _ .)",
                    truncate_utf8(r.code, 80)
                ),
            },
        },
        HandlerError::Fail(detail) => CallErrorKind::Failed {
            detail: truncate_utf8(detail, 1024),
        },
    }
}

/// Check returned actions against the output limits.
pub(crate) fn check_output(
    actions: &[Action],
    limits: &HandlerLimits,
) -> Result<(), CallErrorKind> {
    if actions.len() > limits.max_actions {
        return Err(CallErrorKind::TooManyActions {
            count: actions.len(),
            max: limits.max_actions,
        });
    }
    let bytes: usize = actions.iter().map(action_bytes).sum();
    if bytes > limits.max_output_bytes {
        return Err(CallErrorKind::OutputTooLarge {
            bytes,
            max: limits.max_output_bytes,
        });
    }
    Ok(())
}

fn action_bytes(action: &Action) -> usize {
    match action {
        Action::Reply(data) => data.len(),
        Action::Publish(p) => p.channel.len() + p.data.len(),
        Action::Send(s) => s.subject.len() + s.data.len(),
        Action::Subscribe(c) | Action::Unsubscribe(c) => c.len(),
        Action::SubscribeSince(r) => r.channel.len() + r.since.epoch.len() + 8,
        Action::Close(c) => c.reason.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::sluice::handler::types::Rejection;

    #[test]
    fn rejection_codes_are_validated() {
        let ok = from_handler_error(HandlerError::Reject(Rejection {
            code: "empty_text".into(),
            message: "x".repeat(1000),
        }));
        match ok {
            CallErrorKind::Rejected { code, message } => {
                assert_eq!(code.as_str(), "empty_text");
                assert_eq!(message.len(), MAX_REJECTION_MESSAGE_BYTES);
            }
            other => panic!("unexpected {other:?}"),
        }
        for bad in ["", "Has Caps", "a\"b", &"a".repeat(65)] {
            let kind = from_handler_error(HandlerError::Reject(Rejection {
                code: bad.into(),
                message: String::new(),
            }));
            assert_eq!(kind.name(), "failed", "code {bad:?}");
        }
    }

    #[test]
    fn output_limits_count_actions_and_bytes() {
        let limits = HandlerLimits {
            max_actions: 2,
            max_output_bytes: 10,
            ..HandlerLimits::default()
        };
        let two = vec![
            Action::Reply("12345".into()),
            Action::Subscribe("abcde".into()),
        ];
        assert!(check_output(&two, &limits).is_ok());
        let three = vec![Action::Reply(String::new()); 3];
        assert_eq!(
            check_output(&three, &limits),
            Err(CallErrorKind::TooManyActions { count: 3, max: 2 })
        );
        let big = vec![Action::Reply("x".repeat(11))];
        assert_eq!(
            check_output(&big, &limits),
            Err(CallErrorKind::OutputTooLarge { bytes: 11, max: 10 })
        );
    }
}
