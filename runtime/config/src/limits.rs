//! Limits and settings of the sandbox: engine-wide ([`SandboxConfig`]) and
//! per handler ([`HandlerLimits`], [`Isolation`], [`Capability`]).
//!
//! Every default is a named constant, documented here and in
//! docs/configuration.md (*Handler limits*).
//! Everything is denied unless granted: a handler gets no capability it was
//! not given, and every call is bounded in CPU (fuel), wall-clock time
//! (epoch deadline), memory, stack, output and logging.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Fuel (roughly: wasm instructions) one call may spend. An infinite loop
/// burns 10M fuel in about 10 ms on the reference machine.
pub const DEFAULT_FUEL: u64 = 10_000_000;
/// Wall-clock budget of one call, instantiation included in `fresh` mode.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(100);
/// Linear memory one instance may hold, summed over all its memories.
pub const DEFAULT_MEMORY_BYTES: usize = 32 << 20;
/// Fuel per call of an interpreter component (see [`INTERPRETER_INITIAL_MEMORY`]).
/// The JavaScript chat handler spends up to ~16M on `chat.send` with a
/// 500-character text and a full history (Rust: ~2.3M, Python: ~5.6M).
pub const DEFAULT_INTERPRETER_FUEL: u64 = 50_000_000;
/// Wall-clock budget of one call of an interpreter component. The first
/// call of a new instance measured 8-39 ms (Python) and 6-62 ms
/// (JavaScript) on the reference machine.
pub const DEFAULT_INTERPRETER_DEADLINE: Duration = Duration::from_millis(250);
/// Memory per instance of an interpreter component. The JavaScript and
/// Python chat handlers hold ~9 and ~12.5 MiB.
pub const DEFAULT_INTERPRETER_MEMORY_BYTES: usize = 64 << 20;
/// A component that declares a linear memory of at least this initial size
/// is an interpreter component (componentize-js and componentize-py ship a
/// pre-initialized interpreter heap of ~9-12 MiB; Rust and C handlers start
/// with ~0.1 MiB): its fuel, deadline and memory limits that the
/// configuration leaves unset take the `DEFAULT_INTERPRETER_*` values.
pub const INTERPRETER_INITIAL_MEMORY: usize = 4 << 20;
/// Table elements one instance may hold (per table).
pub const DEFAULT_TABLE_ELEMENTS: usize = 20_000;
/// Core instances, tables and memories one component instance may create.
pub const DEFAULT_MAX_CORE_INSTANCES: usize = 64;
/// See [`DEFAULT_MAX_CORE_INSTANCES`].
pub const DEFAULT_MAX_TABLES: usize = 64;
/// See [`DEFAULT_MAX_CORE_INSTANCES`].
pub const DEFAULT_MAX_MEMORIES: usize = 8;
/// Actions one call may return.
pub const DEFAULT_MAX_ACTIONS: usize = 64;
/// Bytes of payload (data, channels, subjects, reasons) one call may return.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 256 << 10;
/// Log lines one call may write; the rest are dropped and counted.
pub const DEFAULT_MAX_LOG_LINES: usize = 32;
/// Longest log line kept; longer lines are truncated.
pub const DEFAULT_MAX_LOG_LINE_BYTES: usize = 1024;
/// Bytes of stdout and of stderr kept per call; the rest are dropped.
pub const DEFAULT_MAX_STDIO_BYTES: usize = 4096;
/// Longest state key.
pub const DEFAULT_MAX_STATE_KEY_BYTES: usize = 256;
/// Longest state value.
pub const DEFAULT_MAX_STATE_VALUE_BYTES: usize = 64 << 10;
/// State writes (set or delete) one call may buffer.
pub const DEFAULT_MAX_STATE_WRITES: usize = 64;
/// Keys one tenant may hold in state.
pub const DEFAULT_MAX_STATE_KEYS: usize = 10_000;
/// Bytes of state per tenant, keys and values counted (64 MiB).
pub const DEFAULT_MAX_STATE_BYTES: usize = 64 << 20;
/// Log lines per second one handler may write, over all its calls; the
/// rest are dropped and counted.
pub const DEFAULT_LOG_LINES_PER_SEC: u32 = 100;
/// Bytes the host copies out of a guest at one boundary crossing beyond the
/// handler's output and state-value limits (the host-copy budget is
/// `max_output_bytes + max_state_value_bytes + this`).
pub const HOST_COPY_SLACK_BYTES: usize = 64 << 10;
/// Consecutive failed calls that quarantine a handler.
pub const DEFAULT_QUARANTINE_AFTER: u32 = 5;
/// How long a quarantined handler is refused before it is tried again.
pub const DEFAULT_QUARANTINE_FOR: Duration = Duration::from_secs(30);
/// Calls of one handler that may run at once; more wait their turn.
pub const DEFAULT_MAX_CONCURRENCY: usize = 64;
/// Warm instances kept per handler in `reuse` mode.
pub const DEFAULT_MAX_IDLE_INSTANCES: usize = 8;
/// Instances made ahead of calls per handler in `fresh` mode: none, each
/// call makes its own. Making them on a background thread (and tearing used
/// ones down there) cost more CPU per message than it saved on a 2-core
/// machine, where no core is ever idle under load (docs/performance.md,
/// round two).
pub const DEFAULT_READY_INSTANCES: usize = 0;

/// How often the epoch ticks: the resolution of call deadlines, and the
/// longest a running handler holds an async worker before it yields.
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(2);
/// Wasm stack one call may use.
pub const DEFAULT_MAX_WASM_STACK: usize = 512 << 10;
/// Native stack of the fiber a call runs on; must exceed the wasm stack
/// with room for host frames.
pub const DEFAULT_ASYNC_STACK: usize = 2 << 20;
/// Component instances the pooling allocator keeps slots for.
pub const DEFAULT_POOL_INSTANCES: u32 = 1000;
/// Largest linear memory a pool slot holds: the ceiling for any handler's
/// memory limit.
pub const DEFAULT_POOL_MAX_MEMORY: usize = 512 << 20;
/// Largest component file accepted for loading.
pub const DEFAULT_MAX_COMPONENT_BYTES: usize = 64 << 20;
/// Bytes of a freed memory slot reset by `memset` rather than `madvise`
/// (cheaper for the small memories of typical handlers).
pub const DEFAULT_KEEP_RESIDENT: usize = 256 << 10;
/// Longest a pushed component may take to compile; a push whose compile
/// takes longer is refused (`compile_timeout`), and so is one that waited
/// this long for a compile worker (`busy`). Cranelift compiles the 12 MB
/// JavaScript chat component in a few seconds on one core.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(60);

/// How instances of a handler are shared between calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// A warm instance is reused across calls (and connections) of the same
    /// handler; it is discarded after any trap. Fast.
    #[default]
    Reuse,
    /// A new instance for every call, from the pooling allocator with
    /// copy-on-write memory: nothing one call leaves in memory can be seen
    /// by the next. For handlers nobody fully trusts.
    Fresh,
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolation::Reuse => "reuse",
            Isolation::Fresh => "fresh",
        })
    }
}

impl FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reuse" => Ok(Isolation::Reuse),
            "fresh" => Ok(Isolation::Fresh),
            other => Err(format!(
                "unknown isolation {other:?} (expected reuse or fresh)"
            )),
        }
    }
}

/// A host interface a handler may import only when granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// `sluice:handler/state`: tenant-scoped key-value state.
    State,
    /// `sluice:handler/log`: lines into the host's logs.
    Log,
    /// `sluice:handler/clock`: wall-clock time.
    Clock,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Capability; 3] = [Capability::State, Capability::Log, Capability::Clock];

    /// The WIT interface name, without package or version.
    pub fn interface(self) -> &'static str {
        match self {
            Capability::State => "state",
            Capability::Log => "log",
            Capability::Clock => "clock",
        }
    }

    /// The capability behind a `sluice:handler` interface name.
    pub fn from_interface(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.interface() == name)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.interface())
    }
}

impl FromStr for Capability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_interface(s)
            .ok_or_else(|| format!("unknown capability {s:?} (expected state, log or clock)"))
    }
}

/// Limits applied to every call of one handler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandlerLimits {
    /// Fuel per call ([`DEFAULT_FUEL`]); ignored when the sandbox runs
    /// without fuel.
    pub fuel: u64,
    /// Wall-clock budget per call ([`DEFAULT_DEADLINE`]).
    #[serde(with = "duration_ms", rename = "deadline_ms")]
    pub deadline: Duration,
    /// Memory per instance ([`DEFAULT_MEMORY_BYTES`]).
    pub memory_bytes: usize,
    /// Elements per table ([`DEFAULT_TABLE_ELEMENTS`]).
    pub table_elements: usize,
    /// Actions per call ([`DEFAULT_MAX_ACTIONS`]).
    pub max_actions: usize,
    /// Payload bytes per call ([`DEFAULT_MAX_OUTPUT_BYTES`]).
    pub max_output_bytes: usize,
    /// Log lines per call ([`DEFAULT_MAX_LOG_LINES`]).
    pub max_log_lines: usize,
    /// Bytes per log line ([`DEFAULT_MAX_LOG_LINE_BYTES`]).
    pub max_log_line_bytes: usize,
    /// Bytes of stdout and of stderr kept per call ([`DEFAULT_MAX_STDIO_BYTES`]).
    pub max_stdio_bytes: usize,
    /// Bytes per state key ([`DEFAULT_MAX_STATE_KEY_BYTES`]).
    pub max_state_key_bytes: usize,
    /// Bytes per state value ([`DEFAULT_MAX_STATE_VALUE_BYTES`]).
    pub max_state_value_bytes: usize,
    /// State writes per call ([`DEFAULT_MAX_STATE_WRITES`]).
    pub max_state_writes: usize,
    /// Keys per tenant ([`DEFAULT_MAX_STATE_KEYS`]).
    pub max_state_keys: usize,
    /// Bytes of keys and values per tenant ([`DEFAULT_MAX_STATE_BYTES`]).
    pub max_state_bytes: usize,
    /// Log lines per second over all calls ([`DEFAULT_LOG_LINES_PER_SEC`]).
    pub log_lines_per_sec: u32,
    /// Consecutive failures before quarantine ([`DEFAULT_QUARANTINE_AFTER`]).
    pub quarantine_after: u32,
    /// Quarantine length ([`DEFAULT_QUARANTINE_FOR`]).
    #[serde(with = "duration_ms", rename = "quarantine_ms")]
    pub quarantine_for: Duration,
    /// Concurrent calls ([`DEFAULT_MAX_CONCURRENCY`]).
    pub max_concurrency: usize,
    /// Warm instances kept in `reuse` mode ([`DEFAULT_MAX_IDLE_INSTANCES`]).
    pub max_idle_instances: usize,
    /// Never-called instances made ahead of calls, off the call path, in
    /// `fresh` mode ([`DEFAULT_READY_INSTANCES`]); 0 makes each call's
    /// instance on its own path.
    pub ready_instances: usize,
    /// Which of `fuel`, `deadline_ms` and `memory_bytes` the configuration
    /// set explicitly (filled by the config loader). A limit that is neither
    /// set nor changed from its default is sized for the component at load
    /// (see [`HandlerLimits::sized_for`]).
    #[serde(skip)]
    pub explicit: ExplicitLimits,
}

/// Limits a configuration file set explicitly, even to their default value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExplicitLimits {
    /// `fuel` was set.
    pub fuel: bool,
    /// `deadline_ms` was set.
    pub deadline: bool,
    /// `memory_bytes` was set.
    pub memory_bytes: bool,
}

/// What kind of guest a component is, as far as its limits go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComponentKind {
    /// Compiled code (Rust, C, ...): a small initial memory.
    Compiled,
    /// An interpreter with its heap (JavaScript, Python): a declared
    /// initial memory of at least [`INTERPRETER_INITIAL_MEMORY`].
    Interpreter,
}

impl ComponentKind {
    /// The kind of a component whose largest declared initial memory is
    /// `initial_memory` bytes.
    pub fn from_initial_memory(initial_memory: usize) -> Self {
        if initial_memory >= INTERPRETER_INITIAL_MEMORY {
            ComponentKind::Interpreter
        } else {
            ComponentKind::Compiled
        }
    }
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ComponentKind::Compiled => "compiled",
            ComponentKind::Interpreter => "interpreter",
        })
    }
}

impl Default for HandlerLimits {
    fn default() -> Self {
        Self {
            fuel: DEFAULT_FUEL,
            deadline: DEFAULT_DEADLINE,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            table_elements: DEFAULT_TABLE_ELEMENTS,
            max_actions: DEFAULT_MAX_ACTIONS,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_log_lines: DEFAULT_MAX_LOG_LINES,
            max_log_line_bytes: DEFAULT_MAX_LOG_LINE_BYTES,
            max_stdio_bytes: DEFAULT_MAX_STDIO_BYTES,
            max_state_key_bytes: DEFAULT_MAX_STATE_KEY_BYTES,
            max_state_value_bytes: DEFAULT_MAX_STATE_VALUE_BYTES,
            max_state_writes: DEFAULT_MAX_STATE_WRITES,
            max_state_keys: DEFAULT_MAX_STATE_KEYS,
            max_state_bytes: DEFAULT_MAX_STATE_BYTES,
            log_lines_per_sec: DEFAULT_LOG_LINES_PER_SEC,
            quarantine_after: DEFAULT_QUARANTINE_AFTER,
            quarantine_for: DEFAULT_QUARANTINE_FOR,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            max_idle_instances: DEFAULT_MAX_IDLE_INSTANCES,
            ready_instances: DEFAULT_READY_INSTANCES,
            explicit: ExplicitLimits::default(),
        }
    }
}

impl HandlerLimits {
    /// These limits for a component of `kind`: for an interpreter, `fuel`,
    /// `deadline` and `memory_bytes` that were neither set explicitly nor
    /// changed from their default take the interpreter defaults. Everything
    /// set stays as set; compiled components keep every value.
    #[must_use]
    pub fn sized_for(&self, kind: ComponentKind) -> Self {
        let mut limits = self.clone();
        if kind == ComponentKind::Interpreter {
            if !self.explicit.fuel && self.fuel == DEFAULT_FUEL {
                limits.fuel = DEFAULT_INTERPRETER_FUEL;
            }
            if !self.explicit.deadline && self.deadline == DEFAULT_DEADLINE {
                limits.deadline = DEFAULT_INTERPRETER_DEADLINE;
            }
            if !self.explicit.memory_bytes && self.memory_bytes == DEFAULT_MEMORY_BYTES {
                limits.memory_bytes = DEFAULT_INTERPRETER_MEMORY_BYTES;
            }
        }
        limits
    }

    /// Read limits from a config table, remembering which of the sized
    /// limits it set.
    pub fn from_table<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let table = toml::Table::deserialize(d)?;
        let explicit = ExplicitLimits {
            fuel: table.contains_key("fuel"),
            deadline: table.contains_key("deadline_ms"),
            memory_bytes: table.contains_key("memory_bytes"),
        };
        let mut limits = HandlerLimits::deserialize(toml::Value::Table(table))
            .map_err(|e| D::Error::custom(e.message()))?;
        limits.explicit = explicit;
        Ok(limits)
    }

    /// The most the host copies out of the guest at one boundary crossing
    /// (a host import's arguments, or the actions a call returns): the
    /// output limit, plus one state value, plus a little for structure.
    /// Past it, the call traps before the host allocates more.
    pub fn host_copy_bytes(&self) -> usize {
        self.max_output_bytes
            .saturating_add(self.max_state_value_bytes)
            .saturating_add(HOST_COPY_SLACK_BYTES)
    }

    /// Every problem with these limits, checked against the sandbox's
    /// engine-wide settings; empty when they are usable.
    pub fn problems(&self, sandbox: &SandboxConfig) -> Vec<String> {
        let mut problems = Vec::new();
        let mut positive = |name: &str, value: u64| {
            if value == 0 {
                problems.push(format!("{name} must be greater than zero"));
            }
        };
        positive("fuel", self.fuel);
        positive("deadline_ms", self.deadline.as_millis() as u64);
        positive("memory_bytes", self.memory_bytes as u64);
        positive("max_actions", self.max_actions as u64);
        positive("max_output_bytes", self.max_output_bytes as u64);
        positive("max_state_key_bytes", self.max_state_key_bytes as u64);
        positive("max_concurrency", self.max_concurrency as u64);
        positive("max_state_bytes", self.max_state_bytes as u64);
        positive("quarantine_after", u64::from(self.quarantine_after));
        if self.memory_bytes > sandbox.pool_max_memory {
            problems.push(format!(
                "memory_bytes {} exceeds the sandbox's pool slot size {} (raise pool_max_memory)",
                self.memory_bytes, sandbox.pool_max_memory
            ));
        }
        problems
    }
}

/// Engine-wide settings, fixed when the [`super::Sandbox`] is created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Meter fuel (deterministic CPU budget) on every call. Off leaves only
    /// the wall-clock deadline; measured cost of fuel is in docs/performance.md.
    pub fuel: bool,
    /// Epoch tick ([`DEFAULT_EPOCH_TICK`]).
    #[serde(with = "duration_ms", rename = "epoch_tick_ms")]
    pub epoch_tick: Duration,
    /// Wasm stack per call ([`DEFAULT_MAX_WASM_STACK`]).
    pub max_wasm_stack: usize,
    /// Fiber stack per call ([`DEFAULT_ASYNC_STACK`]).
    pub async_stack: usize,
    /// Component instance slots in the pool ([`DEFAULT_POOL_INSTANCES`]).
    pub pool_instances: u32,
    /// Memory slot size, the ceiling of any handler's memory limit
    /// ([`DEFAULT_POOL_MAX_MEMORY`]).
    pub pool_max_memory: usize,
    /// Bytes of a memory slot reset with memset on reuse ([`DEFAULT_KEEP_RESIDENT`]).
    pub keep_resident: usize,
    /// Largest component accepted ([`DEFAULT_MAX_COMPONENT_BYTES`]).
    pub max_component_bytes: usize,
    /// Directory of wasmtime's compilation cache; `None` compiles every
    /// distinct component once per process.
    pub cache_dir: Option<PathBuf>,
    /// Threads that compile pushed components, and so pushes compiled at
    /// once; `None`: half the cores, at least one. Components from the
    /// config file and the registry's own versions compile beside them.
    pub compile_workers: Option<usize>,
    /// Longest a pushed component may take to compile
    /// ([`DEFAULT_COMPILE_TIMEOUT`]).
    #[serde(with = "duration_ms", rename = "compile_timeout_ms")]
    pub compile_timeout: Duration,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            fuel: true,
            epoch_tick: DEFAULT_EPOCH_TICK,
            max_wasm_stack: DEFAULT_MAX_WASM_STACK,
            async_stack: DEFAULT_ASYNC_STACK,
            pool_instances: DEFAULT_POOL_INSTANCES,
            pool_max_memory: DEFAULT_POOL_MAX_MEMORY,
            keep_resident: DEFAULT_KEEP_RESIDENT,
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
            cache_dir: None,
            compile_workers: None,
            compile_timeout: DEFAULT_COMPILE_TIMEOUT,
        }
    }
}

/// Durations as whole milliseconds in config files.
mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreters_get_more_only_where_nothing_was_set() {
        let defaults = HandlerLimits::default();
        assert_eq!(defaults.sized_for(ComponentKind::Compiled), defaults);
        let sized = defaults.sized_for(ComponentKind::Interpreter);
        assert_eq!(sized.fuel, DEFAULT_INTERPRETER_FUEL);
        assert_eq!(sized.deadline, DEFAULT_INTERPRETER_DEADLINE);
        assert_eq!(sized.memory_bytes, DEFAULT_INTERPRETER_MEMORY_BYTES);
        assert_eq!(sized.max_actions, DEFAULT_MAX_ACTIONS);

        // Changed in code: kept.
        let custom = HandlerLimits {
            fuel: 1_000,
            ..HandlerLimits::default()
        };
        let sized = custom.sized_for(ComponentKind::Interpreter);
        assert_eq!(sized.fuel, 1_000);
        assert_eq!(sized.memory_bytes, DEFAULT_INTERPRETER_MEMORY_BYTES);

        // Set in a config file, even to the compiled default: kept.
        #[derive(Deserialize)]
        struct H {
            #[serde(deserialize_with = "HandlerLimits::from_table")]
            limits: HandlerLimits,
        }
        let h: H = toml::from_str("limits = { fuel = 10000000, max_actions = 3 }").unwrap();
        assert!(h.limits.explicit.fuel && !h.limits.explicit.memory_bytes);
        let sized = h.limits.sized_for(ComponentKind::Interpreter);
        assert_eq!(sized.fuel, DEFAULT_FUEL);
        assert_eq!(sized.max_actions, 3);
        assert_eq!(sized.memory_bytes, DEFAULT_INTERPRETER_MEMORY_BYTES);
        assert!(toml::from_str::<H>("limits = { fule = 1 }").is_err());
    }

    #[test]
    fn the_kind_follows_the_declared_initial_memory() {
        assert_eq!(
            ComponentKind::from_initial_memory(0),
            ComponentKind::Compiled
        );
        assert_eq!(
            ComponentKind::from_initial_memory(INTERPRETER_INITIAL_MEMORY - 1),
            ComponentKind::Compiled
        );
        assert_eq!(
            ComponentKind::from_initial_memory(INTERPRETER_INITIAL_MEMORY),
            ComponentKind::Interpreter
        );
    }
}
