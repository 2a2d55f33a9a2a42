//! The sandbox: runs tenant handlers (WebAssembly components of the
//! `sluice:handler` world) under hard limits.
//!
//! One wasmtime [`Engine`] per sandbox, with the pooling allocator
//! (copy-on-write memory images), epoch interruption driven by one ticker
//! thread, and fuel metering. A loaded [`Handler`] is a compiled component
//! plus an `InstancePre`, made once; every call runs under the handler's
//! [`HandlerLimits`]: fuel, a wall-clock deadline, a memory cap, a stack
//! cap, and caps on output, logs and stdio. A call never blocks the async
//! runtime: it runs on a fiber and yields at every epoch tick.
//!
//! Guarantees:
//! - a handler can only import `sluice:handler` capabilities it was granted
//!   and an empty WASI context (checked at load, with a readable error);
//! - a trap, timeout or limit breach costs only that call: the instance is
//!   dropped, no state write of the call is committed, no action applied;
//! - the next call of the same handler is served by a clean instance;
//! - a handler that keeps failing is quarantined for a cooling period.

#![forbid(unsafe_code)]

mod background;
mod bindings;
mod budget;
mod call;
mod capabilities;
mod clock;
mod compiled;
mod export;
mod handler;
mod histogram;
mod load;
mod log;
mod quarantine;
mod spec;
mod state;
mod stdio;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use background::Background;
use budget::Budget;
use compiled::{Compiled, CompiledCache, PushCompiler};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel,
    PoolingAllocationConfig,
};

pub use self::bindings::sluice::handler::types::{
    Action, CloseRequest, Connection, Message, Position, Principal, Publish, Resubscribe,
    SendToSubject,
};
pub use self::budget::{SandboxUsage, TenantUsage};
pub use self::call::{
    CallError, CallErrorKind, CallOutcome, CallReport, HARD_DEADLINE_FACTOR,
    MAX_REJECTION_MESSAGE_BYTES,
};
pub use self::export::Export;
pub use self::handler::{CALL_SECONDS_BUCKETS, Handler, HandlerStats};
pub use self::histogram::{Histogram, HistogramSnapshot};
pub use self::load::{EVENTS_EXPORT, LoadError, WORLD_VERSION};
pub use self::log::{GUEST_LOG_QUEUE, GuestLog, LogLevel, LogLine, escape_control};
pub use self::spec::HandlerSpec;
pub use self::state::{
    Attach, Attachment, BoxFuture, CommitError, MemoryStateStore, Revisions, StateStore,
    StoreError, Usage, Versioned, Writes,
};
pub use sluice_config::{
    Capability, ComponentKind, DEFAULT_ASYNC_STACK, DEFAULT_DEADLINE, DEFAULT_EPOCH_TICK,
    DEFAULT_FUEL, DEFAULT_INTERPRETER_DEADLINE, DEFAULT_INTERPRETER_FUEL,
    DEFAULT_INTERPRETER_MEMORY_BYTES, DEFAULT_KEEP_RESIDENT, DEFAULT_MAX_ACTIONS,
    DEFAULT_MAX_COMPONENT_BYTES, DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_CORE_INSTANCES,
    DEFAULT_MAX_IDLE_INSTANCES, DEFAULT_MAX_LOG_LINE_BYTES, DEFAULT_MAX_LOG_LINES,
    DEFAULT_MAX_MEMORIES, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_MAX_STATE_KEY_BYTES,
    DEFAULT_MAX_STATE_KEYS, DEFAULT_MAX_STATE_VALUE_BYTES, DEFAULT_MAX_STATE_WRITES,
    DEFAULT_MAX_STDIO_BYTES, DEFAULT_MAX_TABLES, DEFAULT_MAX_WASM_STACK, DEFAULT_MEMORY_BYTES,
    DEFAULT_POOL_INSTANCES, DEFAULT_POOL_MAX_MEMORY, DEFAULT_QUARANTINE_AFTER,
    DEFAULT_QUARANTINE_FOR, DEFAULT_TABLE_ELEMENTS, ExplicitLimits, HandlerLimits,
    INTERPRETER_INITIAL_MEMORY, Isolation, Quotas, SandboxConfig,
};
pub use sluice_protocol::{HandlerCode, truncate_utf8};

use self::call::CallCtx;

/// Runs handlers. Cheap to clone; every clone shares the engine.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<SandboxInner>,
}

struct SandboxInner {
    engine: Engine,
    linker: Linker<CallCtx>,
    config: SandboxConfig,
    state: Arc<dyn StateStore>,
    /// Compiled components by SHA-256 of their bytes, while a handler uses
    /// them: a component loaded twice (several tenants, a reload) is
    /// compiled once, and freed when nothing uses it.
    compiled: CompiledCache,
    /// Where pushed components compile: bounded, under a time limit.
    pushes: PushCompiler,
    /// Instances and compiled code per tenant and for the node.
    budget: Arc<Budget>,
    /// Where `fresh` instances are made ahead and torn down: started by the
    /// first handler loaded with `ready_instances`.
    background: Mutex<Option<Arc<Background>>>,
    _ticker: EpochTicker,
}

/// Why a sandbox could not be made. Each says what failed and why
/// (wasmtime's chain of causes, in one line).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// wasmtime refused the engine's settings, or its compilation cache
    /// could not be opened.
    #[error("{0:#}")]
    Engine(anyhow::Error),
    /// WASI or a capability's interface could not be linked (a bug of this
    /// build, not of the configuration).
    #[error("{0:#}")]
    Link(anyhow::Error),
    /// The thread that advances the epoch could not be started.
    #[error("starting the epoch thread: {0}")]
    EpochThread(std::io::Error),
}

impl Sandbox {
    /// A sandbox with in-memory state.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        Self::with_state(config, MemoryStateStore::new())
    }

    /// A sandbox whose handlers keep state in `state`.
    pub fn with_state(
        config: SandboxConfig,
        state: Arc<dyn StateStore>,
    ) -> Result<Self, SandboxError> {
        let engine = engine_config(&config)
            .and_then(|c| {
                Engine::new(&c)
                    .map_err(anyhow::Error::from)
                    .context("creating the wasm engine")
            })
            .map_err(SandboxError::Engine)?;
        let mut linker = Linker::<CallCtx>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI")
            .and_then(|()| capabilities::link_all(&mut linker))
            .map_err(SandboxError::Link)?;
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick)
            .map_err(SandboxError::EpochThread)?;
        Ok(Self {
            inner: Arc::new(SandboxInner {
                pushes: PushCompiler::new(config.compile_workers, config.compile_timeout),
                budget: Budget::new(config.pool_instances),
                engine,
                linker,
                config,
                state,
                compiled: CompiledCache::default(),
                background: Mutex::new(None),
                _ticker: ticker,
            }),
        })
    }

    /// The engine-wide settings.
    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// The state store shared by every handler of this sandbox.
    pub fn state(&self) -> &Arc<dyn StateStore> {
        &self.inner.state
    }

    /// Load a component from a file.
    pub async fn load_file(&self, path: &Path, spec: HandlerSpec) -> Result<Handler, LoadError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| LoadError::Read {
                path: path.to_owned(),
                source,
            })?;
        self.load(bytes, spec).await
    }

    /// `tenant`'s quotas (`[tenants.<id>.quotas]`): the instances its
    /// handlers may hold and their compiled code. Set when the tenant is
    /// loaded or reloaded; a tenant never set gets the defaults.
    pub fn set_quotas(&self, tenant: &str, quotas: &Quotas) {
        self.inner.budget.set_quotas(tenant, quotas);
    }

    /// What the sandbox holds now: instances per tenant and for the node,
    /// compiled components and their bytes.
    pub fn usage(&self) -> SandboxUsage {
        let (instances, pool_instances, evicted, tenants) = self.inner.budget.usage();
        let (compiled_components, compiled_bytes) = self.inner.compiled.usage();
        let pool_in_use = self
            .inner
            .engine
            .pooling_allocator_metrics()
            .map_or(0, |m| m.component_instances());
        SandboxUsage {
            instances,
            pool_instances,
            pool_in_use,
            evicted,
            compiled_components,
            compiled_bytes,
            tenants,
        }
    }

    /// Load a component (binary or WAT text) the operator provided, or one
    /// verified before: check its size and header, compile it off the async
    /// runtime (once per distinct component in use), check it against the
    /// world and the spec's grants, and prepare instances.
    pub async fn load(&self, bytes: Vec<u8>, spec: HandlerSpec) -> Result<Handler, LoadError> {
        self.load_as(bytes, spec, Origin::Trusted).await
    }

    /// Load a component a tenant pushed, as [`Sandbox::load`] does, but
    /// compiled by the bounded compile workers under `compile_timeout`
    /// ([`LoadError::Busy`], [`LoadError::CompileTimeout`]) and refused when
    /// its compiled code would take the tenant past its `compiled_bytes`
    /// quota ([`LoadError::Quota`]). Nothing of a refused push stays cached.
    pub async fn load_pushed(
        &self,
        bytes: Vec<u8>,
        spec: HandlerSpec,
    ) -> Result<Handler, LoadError> {
        self.load_as(bytes, spec, Origin::Pushed).await
    }

    async fn load_as(
        &self,
        bytes: Vec<u8>,
        mut spec: HandlerSpec,
        origin: Origin,
    ) -> Result<Handler, LoadError> {
        let config = &self.inner.config;
        if bytes.len() > config.max_component_bytes {
            return Err(LoadError::TooLarge {
                size: bytes.len(),
                max: config.max_component_bytes,
            });
        }
        load::check_header(&bytes)?;
        let problems = spec.limits.problems(config);
        if !problems.is_empty() {
            return Err(LoadError::InvalidLimits(problems));
        }
        let digest = digest(&bytes);
        let account = self.inner.budget.account(&spec.tenant);
        if origin == Origin::Pushed
            && self.inner.compiled.get(&digest).is_none()
            && let Some(over) = account.compiled_full()
        {
            return Err(quota_error(over));
        }
        let compiled = self.compile(&digest, bytes, origin).await?;
        let holding = account
            .hold(&digest, compiled.bytes, origin == Origin::Pushed)
            .map_err(quota_error)?;
        let component = &compiled.component;

        // Size the limits the configuration left unset for what the
        // component is (an interpreter starts with a heap of several MiB),
        // and refuse limits it cannot start under.
        let initial_memory = load::initial_memory(component);
        let kind = ComponentKind::from_initial_memory(initial_memory);
        spec.limits = spec.limits.sized_for(kind);
        let mut problems = spec.limits.problems(config);
        if initial_memory > spec.limits.memory_bytes {
            problems.push(format!(
                "the component declares {initial_memory} bytes of initial linear memory, more than \
                 its memory_bytes limit {} (raise memory_bytes)",
                spec.limits.memory_bytes
            ));
        }
        if !problems.is_empty() {
            return Err(LoadError::InvalidLimits(problems));
        }
        if kind == ComponentKind::Interpreter {
            tracing::debug!(handler = %spec.name, tenant = %spec.tenant, initial_memory,
                fuel = spec.limits.fuel, deadline_ms = spec.limits.deadline.as_millis() as u64,
                memory_bytes = spec.limits.memory_bytes, "interpreter component: limits sized for it");
        }

        let engine = &self.inner.engine;
        let mut problems = load::check_world(engine, component, &spec.grants);
        if !problems.is_empty() {
            return Err(LoadError::World(problems));
        }
        let background = (spec.isolation == Isolation::Fresh && spec.limits.ready_instances > 0)
            .then(|| self.background())
            .flatten();
        let pre = self
            .inner
            .linker
            .instantiate_pre(component)
            .and_then(bindings::HandlerPre::new);
        match pre {
            Ok(pre) => Ok(Handler::new(
                engine.clone(),
                pre,
                spec,
                digest,
                self.inner.state.clone(),
                config.fuel,
                background,
                handler::Held {
                    budget: self.inner.budget.clone(),
                    account,
                    _compiled: compiled,
                    _holding: holding,
                },
            )),
            Err(e) => {
                problems.push(format!("{e:#}"));
                Err(LoadError::World(problems))
            }
        }
    }

    async fn compile(
        &self,
        digest: &str,
        bytes: Vec<u8>,
        origin: Origin,
    ) -> Result<Arc<Compiled>, LoadError> {
        if let Some(compiled) = self.inner.compiled.get(digest) {
            return Ok(compiled);
        }
        let engine = self.inner.engine.clone();
        let component = match origin {
            Origin::Trusted => tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
                .await
                .map_err(|e| LoadError::Compile(format!("the compiler task failed: {e}")))?
                .map_err(|e| LoadError::Compile(format!("{e:#}")))?,
            Origin::Pushed => self.inner.pushes.compile(engine, bytes).await?,
        };
        Ok(self.inner.compiled.insert(digest, component))
    }
}

/// Where a component comes from: what bounds its compile and whether its
/// compiled code is held to the tenant's quota.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The config file, or a version verified before.
    Trusted,
    /// A tenant's push, being verified.
    Pushed,
}

fn quota_error(over: budget::OverQuota) -> LoadError {
    LoadError::Quota {
        held: over.held,
        size: over.size,
        max: over.max,
    }
}

impl Sandbox {
    /// The thread that makes `fresh` instances ahead, started on first use.
    /// If it cannot start, handlers make each call's instance on its path.
    fn background(&self) -> Option<Arc<Background>> {
        let mut slot = self
            .inner
            .background
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            match Background::start() {
                Ok(background) => *slot = Some(Arc::new(background)),
                Err(e) => tracing::warn!(error = %e,
                    "could not start the instance thread: fresh instances are made on the call path"),
            }
        }
        slot.clone()
    }
}

fn engine_config(config: &SandboxConfig) -> anyhow::Result<Config> {
    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(config.fuel)
        .max_wasm_stack(config.max_wasm_stack)
        .async_stack_size(config.async_stack)
        .cranelift_opt_level(OptLevel::Speed)
        .memory_init_cow(true);
    let n = config.pool_instances;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_memory_size(config.pool_max_memory)
        .table_elements(DEFAULT_TABLE_ELEMENTS)
        .max_core_instances_per_component(DEFAULT_MAX_CORE_INSTANCES as u32)
        .max_memories_per_component(DEFAULT_MAX_MEMORIES as u32)
        .max_tables_per_component(DEFAULT_MAX_TABLES as u32)
        .linear_memory_keep_resident(config.keep_resident)
        .table_keep_resident(config.keep_resident.min(TABLE_KEEP_RESIDENT))
        .decommit_batch_size(DECOMMIT_BATCH)
        .pagemap_scan(Enabled::Auto);
    cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    if let Some(dir) = &config.cache_dir {
        let mut cache = CacheConfig::new();
        cache.with_directory(dir);
        cfg.cache(Some(
            Cache::new(cache)
                .map_err(anyhow::Error::from)
                .context("opening the compilation cache")?,
        ));
    }
    Ok(cfg)
}

/// SHA-256 of a component's bytes, in hex: what [`Handler::digest`] says
/// and what compiled components are cached by.
pub fn digest(component: &[u8]) -> String {
    hex(&Sha256::digest(component))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Bytes of a freed table slot reset by memset (tables of handlers are
/// small; resetting more costs more than the madvise it saves).
const TABLE_KEEP_RESIDENT: usize = 65536;

/// Freed slots whose pages are returned to the kernel in one batch: one
/// madvise round (and one TLB shootdown) per batch instead of per instance.
const DECOMMIT_BATCH: usize = 32;

/// One thread that advances the engine's epoch every tick; stopped (and
/// joined) when the sandbox is dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
