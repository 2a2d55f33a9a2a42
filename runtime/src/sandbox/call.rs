//! One call into a handler: the store's data ([`CallCtx`]), what a call
//! returns ([`CallOutcome`], [`CallError`]), and how a failure is classified
//! into the error kind a user sees.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::sluice::handler::types::{Action, HandlerError};
use super::limits::{
    DEFAULT_MAX_CORE_INSTANCES, DEFAULT_MAX_MEMORIES, DEFAULT_MAX_TABLES, HandlerLimits,
};
use super::log::{LogLine, truncate_utf8};
use super::state::StateStore;
use super::stdio::CapturedOutput;

/// What every call of one handler shares.
pub(crate) struct HandlerShared {
    pub(crate) tenant: String,
    pub(crate) limits: HandlerLimits,
    pub(crate) state: Arc<dyn StateStore>,
}

/// What one call accumulates; reset before every call.
#[derive(Default)]
pub(crate) struct CallState {
    pub(crate) deadline: Option<Instant>,
    /// Epoch ticks seen by this call so far.
    pub(crate) ticks: u32,
    pub(crate) writes: BTreeMap<String, Option<Vec<u8>>>,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) logs_dropped: u64,
}

/// The data of a handler instance's store.
pub(crate) struct CallCtx {
    pub(crate) handler: Arc<HandlerShared>,
    pub(crate) call: CallState,
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
        // network (every address denied, no name lookups), stdin closed.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limiter = Limiter::new(&handler.limits);
        Self {
            handler,
            call: CallState::default(),
            limiter,
            wasi,
            table: ResourceTable::new(),
            stdout,
            stderr,
        }
    }

    /// Start a call: empty buffers, a fresh deadline.
    pub(crate) fn begin(&mut self, deadline: Instant) {
        self.call = CallState {
            deadline: Some(deadline),
            ..CallState::default()
        };
        self.limiter.denied = None;
    }

    /// Collect what the call left behind for its report.
    pub(crate) fn finish(&mut self, report: &mut CallReport) {
        report.logs = std::mem::take(&mut self.call.logs);
        report.logs_dropped = self.call.logs_dropped;
        let (stdout, out_dropped) = self.stdout.take();
        let (stderr, err_dropped) = self.stderr.take();
        report.stdout = stdout;
        report.stderr = stderr;
        report.stdio_dropped = out_dropped + err_dropped;
        report.memory_bytes = self.limiter.memory_total as u64;
    }

    /// Commit the call's buffered state writes.
    pub(crate) fn commit(&mut self) {
        let writes = std::mem::take(&mut self.call.writes);
        self.handler.state.commit(&self.handler.tenant, writes);
    }
}

/// `sluice:handler/types` defines types only; it has no functions to host.
impl super::bindings::sluice::handler::types::Host for CallCtx {}

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
/// its detail goes to logs, the client only sees [`CallErrorKind::client_code`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallErrorKind {
    /// The handler refused the message with a code the client may see.
    Rejected {
        /// The handler's code (validated: 1-64 of `a-z 0-9 _ .`).
        code: String,
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
    /// No instance could be created (pool exhausted, instantiation error).
    Unavailable {
        /// Why.
        detail: String,
    },
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
        }
    }

    /// The error code the client gets in its `error` frame.
    pub fn client_code(&self) -> &str {
        match self {
            CallErrorKind::Rejected { code, .. } => code,
            CallErrorKind::OutOfFuel | CallErrorKind::Deadline => "handler_timeout",
            CallErrorKind::Quarantined { .. } | CallErrorKind::Unavailable { .. } => "unavailable",
            _ => "handler_failed",
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
        }
    }
}

/// Classify an error that came out of wasmtime during instantiation or a
/// call.
pub(crate) fn classify(error: &wasmtime::Error, denied: Option<Denied>) -> CallErrorKind {
    if error.downcast_ref::<DeadlineExceeded>().is_some() {
        return CallErrorKind::Deadline;
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
        HandlerError::Reject(r) if is_valid_code(&r.code) => CallErrorKind::Rejected {
            code: r.code,
            message: truncate_utf8(r.message, MAX_REJECTION_MESSAGE_BYTES),
        },
        HandlerError::Reject(r) => CallErrorKind::Failed {
            detail: format!(
                "rejected with an invalid code {:?} (codes are 1-64 of a-z 0-9 _ .)",
                truncate_utf8(r.code, 80)
            ),
        },
        HandlerError::Fail(detail) => CallErrorKind::Failed {
            detail: truncate_utf8(detail, 1024),
        },
    }
}

fn is_valid_code(code: &str) -> bool {
    (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
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
        Action::Close(c) => c.reason.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::bindings::sluice::handler::types::Rejection;

    #[test]
    fn rejection_codes_are_validated() {
        let ok = from_handler_error(HandlerError::Reject(Rejection {
            code: "empty_text".into(),
            message: "x".repeat(1000),
        }));
        match ok {
            CallErrorKind::Rejected { code, message } => {
                assert_eq!(code, "empty_text");
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
            assert_eq!(kind.client_code(), "handler_failed");
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
