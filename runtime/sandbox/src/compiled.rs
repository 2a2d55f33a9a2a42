//! Compiled components: shared by digest while something uses them, freed
//! when nothing does, and pushed ones compiled by a bounded set of workers
//! under a time limit.
//!
//! - **The cache holds weak references.** A component loaded twice (several
//!   tenants, a reload, a push verified then loaded under its version's
//!   name) is compiled once while a handler holds it; when the last handler
//!   using it is dropped (a version removed, a tenant's slot emptied, a
//!   push refused by a later check) its code is freed, and nothing that
//!   failed a check stays cached.
//! - **Pushed components compile on workers of their own**: a rayon pool of
//!   `compile_workers` threads (half the cores by default) that wasmtime's
//!   parallel compilation runs inside, so all pushes together use at most
//!   that many cores and the rest stay with the data path; a push waits for
//!   a free worker at most `compile_timeout` (`busy`), and its compile is
//!   given up after `compile_timeout` (`compile_timeout`).
//!
//! What a time limit on Cranelift can and cannot stop: wasmtime cannot
//! interrupt a compile, so the push is answered when the limit passes, but
//! the compile runs on to its end on its worker (which stays taken, so
//! the number of compiles at once stays bounded whatever the pushes do)
//! and its result is dropped. Its memory is bounded by the component's
//! size (the tenant's `max_component_bytes`) times what Cranelift needs per
//! byte, times the workers; its time only by Cranelift itself (roughly
//! linear in the code's size; the size cap bounds it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::load::LoadError;

/// A compiled component and the size of its code in memory.
pub(crate) struct Compiled {
    pub(crate) component: Component,
    /// Bytes of the compiled image (code and data) wasmtime holds.
    pub(crate) bytes: usize,
}

impl Compiled {
    fn new(component: Component) -> Arc<Self> {
        let range = component.image_range();
        let bytes = (range.end as usize).saturating_sub(range.start as usize);
        Arc::new(Self { component, bytes })
    }
}

/// Compiled components by SHA-256 of their bytes, while something uses them.
#[derive(Default)]
pub(crate) struct CompiledCache(Mutex<HashMap<String, Weak<Compiled>>>);

impl CompiledCache {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<Compiled>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn get(&self, digest: &str) -> Option<Arc<Compiled>> {
        self.map().get(digest).and_then(Weak::upgrade)
    }

    /// Keep `component` under `digest` (forgetting those nothing uses).
    pub(crate) fn insert(&self, digest: &str, component: Component) -> Arc<Compiled> {
        let compiled = Compiled::new(component);
        let mut map = self.map();
        map.retain(|_, c| c.strong_count() > 0);
        map.insert(digest.to_owned(), Arc::downgrade(&compiled));
        compiled
    }

    /// Distinct components in memory, and the bytes of their code.
    pub(crate) fn usage(&self) -> (usize, usize) {
        let map = self.map();
        map.values()
            .filter_map(Weak::upgrade)
            .fold((0, 0), |(n, bytes), c| (n + 1, bytes + c.bytes))
    }
}

/// The workers that compile pushed components.
pub(crate) struct PushCompiler {
    workers: usize,
    timeout: Duration,
    /// A push holds one while its compile runs (to its end, even after
    /// its push was answered).
    slots: Arc<Semaphore>,
    /// Started by the first push.
    pool: OnceLock<Option<Arc<rayon::ThreadPool>>>,
}

impl PushCompiler {
    pub(crate) fn new(workers: Option<usize>, timeout: Duration) -> Self {
        let workers = workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        });
        Self {
            workers,
            timeout,
            slots: Arc::new(Semaphore::new(workers)),
            pool: OnceLock::new(),
        }
    }

    fn pool(&self) -> Option<Arc<rayon::ThreadPool>> {
        self.pool
            .get_or_init(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(self.workers)
                    .thread_name(|i| format!("sluice-compile-{i}"))
                    .build()
                    .map(Arc::new)
                    .map_err(|e| {
                        tracing::warn!(error = %e,
                        "could not start the compile workers: pushes compile on the blocking pool")
                    })
                    .ok()
            })
            .clone()
    }

    /// Compile a pushed component: wait for a worker (at most the time
    /// limit), then compile it there (answered at most the time limit
    /// later).
    pub(crate) async fn compile(
        &self,
        engine: Engine,
        bytes: Vec<u8>,
    ) -> Result<Component, LoadError> {
        let limit = self.timeout;
        let Ok(Ok(slot)) = tokio::time::timeout(limit, self.slots.clone().acquire_owned()).await
        else {
            return Err(LoadError::Busy(format!(
                "every compile worker ({}) stayed busy for {} ms; try again",
                self.workers,
                limit.as_millis()
            )));
        };
        let (done, compiled) = oneshot::channel();
        let work = move || {
            let compiled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Component::new(&engine, &bytes)
            }));
            let result = match compiled {
                Ok(r) => r.map_err(|e| format!("{e:#}")),
                Err(_) => Err("the compiler panicked".to_owned()),
            };
            // The worker is free only now, whether or not anyone waits.
            drop(slot);
            let _ = done.send(result);
        };
        match self.pool() {
            Some(pool) => pool.spawn(work),
            None => drop(tokio::task::spawn_blocking(work)),
        }
        match tokio::time::timeout(limit, compiled).await {
            Ok(Ok(result)) => result.map_err(LoadError::Compile),
            Ok(Err(_)) => Err(LoadError::Compile("the compile worker failed".into())),
            Err(_) => Err(LoadError::CompileTimeout(limit)),
        }
    }
}
