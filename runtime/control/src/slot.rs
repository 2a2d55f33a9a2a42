//! A pushed handler as routes see it: the [`Slot`] holds the versions
//! serving now ([`Serving`]: stable, a canary with its percentage, a
//! shadow), swapped as a whole by a promote or a rollback, and picks the
//! version each connection runs on. It is the data path's
//! [`HandlerSlot`]: a message in flight holds the version it started on, so
//! a change takes effect from the next message and never fails one.

use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use sluice_config::ManagedConfig;
use sluice_sandbox::{CallError, CallOutcome, Handler};
use sluice_server::slot::{HandlerSlot, Picked};

use crate::shadow::ShadowReport;

/// A loaded version.
#[derive(Clone)]
pub struct Loaded {
    /// Its number.
    pub version: u32,
    /// The handler.
    pub handler: Handler,
}

/// The versions serving now.
#[derive(Clone, Default)]
pub struct Serving {
    /// Every connection not in the canary.
    pub stable: Option<Loaded>,
    /// The canary and its percentage.
    pub canary: Option<(Loaded, u8)>,
    /// Rehearsed beside stable.
    pub shadow: Option<Loaded>,
}

impl Serving {
    /// Every loaded version (stable, canary, shadow), each once.
    pub fn loaded(&self) -> impl Iterator<Item = &Loaded> {
        let mut seen = Vec::with_capacity(3);
        [
            self.stable.as_ref(),
            self.canary.as_ref().map(|(l, _)| l),
            self.shadow.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter(move |l| {
            let first = !seen.contains(&l.version);
            seen.push(l.version);
            first
        })
    }
}

/// One pushed handler as routes see it.
pub struct Slot {
    /// Its tenant.
    pub tenant: String,
    /// Its name.
    pub name: String,
    salt: u64,
    serving: RwLock<(Arc<Serving>, ManagedConfig)>,
    /// Divergences of the shadow version.
    pub shadow: Mutex<ShadowReport>,
}

impl Slot {
    pub(crate) fn new(tenant: &str, name: &str, serving: Serving, config: ManagedConfig) -> Self {
        let mut h = std::hash::DefaultHasher::new();
        (tenant, name).hash(&mut h);
        let shadow_version = serving.shadow.as_ref().map(|s| s.version);
        Self {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            salt: h.finish(),
            serving: RwLock::new((Arc::new(serving), config)),
            shadow: Mutex::new(ShadowReport::new(shadow_version)),
        }
    }

    pub(crate) fn config(&self) -> ManagedConfig {
        self.serving
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    pub(crate) fn swap(&self, serving: Serving, config: ManagedConfig) {
        let shadow_version = serving.shadow.as_ref().map(|s| s.version);
        *self.serving.write().unwrap_or_else(PoisonError::into_inner) = (Arc::new(serving), config);
        let mut report = self.shadow.lock().unwrap_or_else(PoisonError::into_inner);
        if report.version != shadow_version {
            *report = ShadowReport::new(shadow_version);
        }
    }

    /// The versions serving now.
    pub fn serving(&self) -> Arc<Serving> {
        self.serving
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    pub(crate) fn loaded(&self, version: u32) -> Option<Handler> {
        self.serving()
            .loaded()
            .find(|l| l.version == version)
            .map(|l| l.handler.clone())
    }

    /// The version connection `conn_id` runs on: the canary for a fixed
    /// share of connections (the same connection always lands on the same
    /// side while the percentage stays), else stable. `None`: nothing is
    /// serving.
    pub fn pick(&self, conn_id: u64) -> Option<Picked> {
        let s = self.serving();
        let chosen = match &s.canary {
            Some((canary, percent)) if self.bucket(conn_id) < u64::from(*percent) => Some(canary),
            _ => s.stable.as_ref(),
        }?;
        Some(Picked {
            handler: chosen.handler.clone(),
            version: chosen.version,
            shadow: s.shadow.as_ref().map(|l| l.handler.clone()),
        })
    }

    /// A connection's place, 0-99, in this handler's canary split.
    fn bucket(&self, conn_id: u64) -> u64 {
        // splitmix64 of the id mixed with the handler's salt: consecutive
        // connection ids spread evenly.
        let mut z = conn_id ^ self.salt;
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % 100
    }
}

impl HandlerSlot for Slot {
    fn name(&self) -> &str {
        &self.name
    }

    fn pick(&self, conn_id: u64) -> Option<Picked> {
        Slot::pick(self, conn_id)
    }

    fn compare_shadow(
        &self,
        route: &str,
        served: &Result<CallOutcome, CallError>,
        rehearsed: &Result<CallOutcome, CallError>,
    ) {
        self.shadow
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .compare(route, served, rehearsed);
    }

    fn serving(&self) -> Vec<(u32, Handler)> {
        Slot::serving(self)
            .loaded()
            .map(|l| (l.version, l.handler.clone()))
            .collect()
    }
}
