//! The marketplace control plane: handlers a tenant pushes through the
//! management API (`api.rs`), verified before they may serve (`verify.rs`),
//! kept content-addressed with every version and its report (`record.rs`,
//! on the store), routed `stable` / `canary` (a percentage, sticky per
//! connection) / `shadow` (rehearsed beside stable, compared, never
//! applied: `shadow.rs`), and audited (`audit.rs`).
//!
//! A route names a pushed handler like a configured one; what reaches it is
//! a [`Slot`]: the versions serving now, swapped as a whole by a promote or a
//! rollback. A message in flight holds the version it started on, so a
//! change takes effect from the next message and never fails one.

pub mod api;
pub mod audit;
pub mod client;
pub mod record;
pub mod shadow;
pub mod verify;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use sluice_config::ManagedConfig;
use sluice_sandbox::{Handler, HandlerSpec, Sandbox};

use self::audit::{Actor, AuditEntry, AuditLog};
use self::record::{Canary, Record, Routing, VersionInfo};
use self::shadow::ShadowReport;
use self::verify::{Report, Sample};

/// Where the registry keeps components, records and the audit log.
enum Storage {
    /// In memory: gone at restart (`[store] kind = "memory"`).
    Memory(Mutex<HashMap<String, Arc<Vec<u8>>>>),
    /// In the durable store.
    Durable(Arc<sluice_store::Store>),
    /// On NATS: every node of the fleet shares it.
    Fleet(Arc<crate::cluster::registry::FleetRegistry>),
}

/// Where a registry keeps what it holds, with what it read back.
pub enum Source {
    /// In memory.
    Memory,
    /// The durable store.
    Durable(RegistryStore),
    /// The fleet's buckets (cluster mode), with the records as they were
    /// at connect.
    Fleet(
        Arc<crate::cluster::registry::FleetRegistry>,
        Vec<(String, String, Vec<u8>)>,
    ),
}

/// The durable store and what it read back for the registry: pushed
/// handlers' records (tenant, name, record) and the audit log.
pub type RegistryStore = (
    Arc<sluice_store::Store>,
    Vec<(String, String, Vec<u8>)>,
    Vec<(u64, Vec<u8>)>,
);

/// The registry of pushed handlers of every tenant.
pub struct Registry {
    sandbox: Sandbox,
    storage: Storage,
    /// Records by (tenant, name); held across a whole change, so changes
    /// run one at a time and each is written before the next starts.
    records: tokio::sync::Mutex<BTreeMap<(String, String), Record>>,
    slots: Mutex<HashMap<(String, String), Arc<Slot>>>,
    /// The audit log.
    pub audit: AuditLog,
}

/// A change the API asked for could not be made: its HTTP status and why.
#[derive(Debug)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// A code for programs.
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// The verification report, when a push was refused by it.
    pub report: Option<Report>,
}

impl Refusal {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            report: None,
        }
    }
}

/// How a push or a promote routes the version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Every connection (the previous stable is kept for a rollback).
    Stable,
    /// A percentage of connections, each sticking to its version.
    Canary,
    /// A rehearsal beside stable on every message; never applied.
    Shadow,
    /// Kept, not serving.
    None,
}

/// The result of a push.
#[derive(Debug, serde::Serialize)]
pub struct Pushed {
    /// The version number.
    pub version: u32,
    /// The same bytes were pushed before: no new version was made.
    pub already: bool,
    /// The report of its verification.
    pub report: Report,
    /// The routing after the push.
    pub routing: Routing,
}

impl Registry {
    /// A registry over `source`.
    pub fn open(sandbox: Sandbox, source: Source) -> Self {
        let mut records = BTreeMap::new();
        let mut read = |handlers: Vec<(String, String, Vec<u8>)>| {
            for (tenant, name, bytes) in handlers {
                match serde_json::from_slice::<Record>(&bytes) {
                    Ok(r) => {
                        records.insert((tenant, name), r);
                    }
                    Err(e) => tracing::error!(%tenant, handler = %name, error = %e,
                        "a pushed handler's record could not be read; it is not served"),
                }
            }
        };
        let (storage, audit) = match source {
            Source::Durable((store, handlers, audit)) => {
                read(handlers);
                (Storage::Durable(store), AuditLog::read_back(&audit))
            }
            Source::Fleet(fleet, handlers) => {
                read(handlers);
                (Storage::Fleet(fleet), AuditLog::default())
            }
            Source::Memory => (Storage::Memory(Mutex::default()), AuditLog::default()),
        };
        Self {
            sandbox,
            storage,
            records: tokio::sync::Mutex::new(records),
            slots: Mutex::default(),
            audit,
        }
    }

    /// A change another node made (or this node's own, seen again): keep
    /// the record and serve what it routes (with `config`, the tenant's
    /// managed settings here).
    pub async fn apply_remote(
        &self,
        key: (String, String),
        value: Option<Vec<u8>>,
        config: Option<ManagedConfig>,
    ) {
        let mut records = self.records.lock().await;
        let Some(bytes) = value else {
            if records.remove(&key).is_some()
                && let Some(config) = &config
            {
                self.slot_for_change(&key.0, &key.1, Serving::default(), config);
            }
            return;
        };
        let record = match serde_json::from_slice::<Record>(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(tenant = %key.0, handler = %key.1, error = %e,
                    "a pushed handler's record from the fleet could not be read");
                return;
            }
        };
        let known = records
            .get(&key)
            .and_then(|r| serde_json::to_vec(r).ok())
            .is_some_and(|b| b == bytes);
        if known {
            return;
        }
        if let Some(config) = &config {
            match self
                .load_routing(&key.0, &key.1, config, Some(&record), &record.routing, None)
                .await
            {
                Ok(serving) => self.slot_for_change(&key.0, &key.1, serving, config),
                Err(problems) => {
                    tracing::error!(tenant = %key.0, handler = %key.1, problems = %problems.join("; "),
                        "a pushed handler changed on another node does not load here; the previous versions keep serving");
                }
            }
        }
        records.insert(key, record);
    }

    /// Whether changes survive a restart.
    pub fn durable(&self) -> bool {
        matches!(self.storage, Storage::Durable(_) | Storage::Fleet(_))
    }

    /// The slot of a pushed handler, ready for the tenant's current managed
    /// settings: its routed versions are (re)loaded when the slot is new or
    /// the settings changed. An error names each version that no longer
    /// loads (a reload that revokes a grant a serving version imports is
    /// refused).
    pub async fn slot(
        &self,
        tenant: &str,
        name: &str,
        config: &ManagedConfig,
    ) -> Result<Arc<Slot>, Vec<String>> {
        let key = (tenant.to_owned(), name.to_owned());
        let records = self.records.lock().await;
        let existing = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned();
        if let Some(slot) = &existing
            && slot.config() == *config
        {
            return Ok(slot.clone());
        }
        let routing = records.get(&key).map(|r| r.routing).unwrap_or_default();
        let serving = self
            .load_routing(tenant, name, config, records.get(&key), &routing, None)
            .await?;
        let slot = match existing {
            Some(slot) => {
                slot.swap(serving, config.clone());
                slot
            }
            None => {
                let slot = Arc::new(Slot::new(tenant, name, serving, config.clone()));
                self.slots
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key, slot.clone());
                slot
            }
        };
        Ok(slot)
    }

    /// The slots of `tenant` (for lifecycle calls).
    pub fn slots_of(&self, tenant: &str) -> Vec<Arc<Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Names of the pushed handlers of `tenant`.
    pub async fn names(&self, tenant: &str) -> Vec<String> {
        self.records
            .lock()
            .await
            .keys()
            .filter(|(t, _)| t == tenant)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// The records of `tenant`.
    pub async fn list(&self, tenant: &str) -> Vec<Record> {
        self.records
            .lock()
            .await
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// One record.
    pub async fn get(&self, tenant: &str, name: &str) -> Option<Record> {
        self.records
            .lock()
            .await
            .get(&(tenant.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The slot of a handler, if it has one now.
    pub fn existing_slot(&self, tenant: &str, name: &str) -> Option<Arc<Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(tenant.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Push a component: verify it (see [`verify`]); if it passes, keep it
    /// as a new version and route it as `stage` says (`None`: stable when
    /// nothing is stable yet, else kept without serving).
    #[expect(clippy::too_many_arguments, reason = "one push, spelled out")]
    pub async fn push(
        &self,
        tenant: &crate::tenant::Tenant,
        config: &ManagedConfig,
        name: &str,
        bytes: Vec<u8>,
        samples: Option<Vec<Sample>>,
        stage: Option<(Stage, Option<u8>)>,
        actor: &Actor,
    ) -> Result<Pushed, Refusal> {
        let key = (tenant.id.clone(), name.to_owned());
        let digest = sluice_sandbox::digest(&bytes);
        let mut records = self.records.lock().await;
        if let Some(v) = records
            .get(&key)
            .and_then(|r| r.versions.iter().find(|v| v.digest == digest))
        {
            let record = &records[&key];
            return Ok(Pushed {
                version: v.version,
                already: true,
                report: v.report.clone(),
                routing: record.routing,
            });
        }
        let samples = match samples {
            Some(s) => s,
            None => verify::schema_examples(tenant, name),
        };
        let (report, handler) = verify::verify(
            &self.sandbox,
            tenant,
            config,
            name,
            &bytes,
            &digest,
            &samples,
        )
        .await;
        let Some(verified) = handler else {
            return Err(Refusal {
                report: Some(report),
                ..Refusal::new(
                    422,
                    "verification_failed",
                    "the component failed verification; see the report",
                )
            });
        };
        let mut record = records
            .get(&key)
            .cloned()
            .unwrap_or_else(|| Record::new(&tenant.id, name));
        let version = record.next_version;
        // The version serves from a handler of its own, named with its
        // number and with counters that start at its first real call (the
        // compiled component is reused: no second compile).
        drop(verified);
        let handler = self
            .sandbox
            .load(bytes.clone(), spec(&tenant.id, name, version, config))
            .await
            .map_err(|e| Refusal::new(500, "load_failed", e.to_string()))?;
        record.next_version += 1;
        record.versions.push(VersionInfo {
            version,
            digest: digest.clone(),
            size: bytes.len(),
            pushed_at_ms: audit::now_ms(),
            pushed_by: actor.name(),
            report: report.clone(),
        });
        let stage = match stage {
            Some(s) => s,
            None if record.routing.stable.is_none() => (Stage::Stable, None),
            None => (Stage::None, None),
        };
        record
            .route(version, stage.0, stage.1)
            .map_err(|m| Refusal::new(409, "routing", m))?;
        let forgotten = record.forget_past(config.max_versions);
        let serving = self
            .load_routing(
                &tenant.id,
                name,
                config,
                Some(&record),
                &record.routing,
                Some((version, handler)),
            )
            .await
            .map_err(|p| Refusal::new(500, "load_failed", p.join("; ")))?;
        let dropped = self.unreferenced(&records, &key, &record, &forgotten);
        self.write(&key, Some(&record), Some((&digest, bytes)), dropped)
            .await?;
        self.slot_for_change(&tenant.id, name, serving, config);
        let routing = record.routing;
        records.insert(key, record);
        Ok(Pushed {
            version,
            already: false,
            report,
            routing,
        })
    }

    /// Route an existing version: stable, canary at `percent`, shadow, or
    /// none (stop serving it as canary or shadow).
    pub async fn promote(
        &self,
        tenant: &str,
        config: &ManagedConfig,
        name: &str,
        version: u32,
        stage: Stage,
        percent: Option<u8>,
    ) -> Result<Routing, Refusal> {
        self.change(tenant, config, name, |r| r.route(version, stage, percent))
            .await
    }

    /// Make the previous stable version stable again (or `to`), ending any
    /// canary and shadow.
    pub async fn rollback(
        &self,
        tenant: &str,
        config: &ManagedConfig,
        name: &str,
        to: Option<u32>,
    ) -> Result<Routing, Refusal> {
        self.change(tenant, config, name, |r| r.rollback(to)).await
    }

    /// Remove one version that is not routed, or (`version` `None`) the
    /// whole handler: its routes then answer `unavailable`.
    pub async fn remove(
        &self,
        tenant: &str,
        config: &ManagedConfig,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<Routing>, Refusal> {
        let key = (tenant.to_owned(), name.to_owned());
        let mut records = self.records.lock().await;
        let Some(record) = records.get(&key).cloned() else {
            return Err(not_found(tenant, name));
        };
        match version {
            Some(v) => {
                let mut record = record;
                record
                    .remove_version(v)
                    .map_err(|m| Refusal::new(409, "version_serving", m))?;
                let forgotten: Vec<String> = records[&key]
                    .versions
                    .iter()
                    .filter(|x| x.version == v)
                    .map(|x| x.digest.clone())
                    .collect();
                let dropped = self.unreferenced(&records, &key, &record, &forgotten);
                self.write(&key, Some(&record), None, dropped).await?;
                let routing = record.routing;
                records.insert(key, record);
                Ok(Some(routing))
            }
            None => {
                let empty = Record::new(tenant, name);
                let forgotten: Vec<String> =
                    record.versions.iter().map(|v| v.digest.clone()).collect();
                let dropped = self.unreferenced(&records, &key, &empty, &forgotten);
                self.write(&key, None, None, dropped).await?;
                records.remove(&key);
                self.slot_for_change(tenant, name, Serving::default(), config);
                Ok(None)
            }
        }
    }

    async fn change(
        &self,
        tenant: &str,
        config: &ManagedConfig,
        name: &str,
        edit: impl FnOnce(&mut Record) -> Result<(), String>,
    ) -> Result<Routing, Refusal> {
        let key = (tenant.to_owned(), name.to_owned());
        let mut records = self.records.lock().await;
        let Some(mut record) = records.get(&key).cloned() else {
            return Err(not_found(tenant, name));
        };
        edit(&mut record).map_err(|m| Refusal::new(409, "routing", m))?;
        let serving = self
            .load_routing(tenant, name, config, Some(&record), &record.routing, None)
            .await
            .map_err(|p| Refusal::new(500, "load_failed", p.join("; ")))?;
        self.write(&key, Some(&record), None, Vec::new()).await?;
        self.slot_for_change(tenant, name, serving, config);
        let routing = record.routing;
        records.insert(key, record);
        Ok(routing)
    }

    /// Swap `serving` into the handler's slot (made if it has none yet).
    fn slot_for_change(&self, tenant: &str, name: &str, serving: Serving, config: &ManagedConfig) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        match slots.get(&(tenant.to_owned(), name.to_owned())) {
            Some(slot) => slot.swap(serving, config.clone()),
            None => {
                slots.insert(
                    (tenant.to_owned(), name.to_owned()),
                    Arc::new(Slot::new(tenant, name, serving, config.clone())),
                );
            }
        }
    }

    /// Digests among `forgotten` that no version of any handler refers to
    /// once `key`'s record is `record`.
    fn unreferenced(
        &self,
        records: &BTreeMap<(String, String), Record>,
        key: &(String, String),
        record: &Record,
        forgotten: &[String],
    ) -> Vec<String> {
        forgotten
            .iter()
            .filter(|d| {
                !record.versions.iter().any(|v| &v.digest == *d)
                    && !records
                        .iter()
                        .filter(|(k, _)| *k != key)
                        .any(|(_, r)| r.versions.iter().any(|v| &v.digest == *d))
            })
            .cloned()
            .collect()
    }

    /// Load the handlers `routing` names (reusing those the slot holds with
    /// the same settings, and `fresh`, just verified).
    async fn load_routing(
        &self,
        tenant: &str,
        name: &str,
        config: &ManagedConfig,
        record: Option<&Record>,
        routing: &Routing,
        fresh: Option<(u32, Handler)>,
    ) -> Result<Serving, Vec<String>> {
        let current = self
            .existing_slot(tenant, name)
            .filter(|s| s.config() == *config);
        let mut problems = Vec::new();
        let mut loaded: HashMap<u32, Handler> = HashMap::new();
        if let Some((v, h)) = fresh {
            loaded.insert(v, h);
        }
        for version in routing.versions() {
            if loaded.contains_key(&version) {
                continue;
            }
            if let Some(h) = current.as_ref().and_then(|s| s.loaded(version)) {
                loaded.insert(version, h);
                continue;
            }
            let Some(info) = record.and_then(|r| r.version(version)) else {
                problems.push(format!(
                    "tenants.{tenant}: pushed handler {name} v{version} is routed but unknown"
                ));
                continue;
            };
            match self.load_version(tenant, name, config, info).await {
                Ok(h) => {
                    loaded.insert(version, h);
                }
                Err(e) => problems.push(format!(
                    "tenants.{tenant}: pushed handler {name} v{version} no longer loads: {e}"
                )),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let pick = |v: u32| {
            loaded.get(&v).map(|h| Loaded {
                version: v,
                handler: h.clone(),
            })
        };
        Ok(Serving {
            stable: routing.stable.and_then(pick),
            canary: routing
                .canary
                .and_then(|Canary { version, percent }| pick(version).map(|l| (l, percent))),
            shadow: routing.shadow.and_then(pick),
        })
    }

    async fn load_version(
        &self,
        tenant: &str,
        name: &str,
        config: &ManagedConfig,
        info: &VersionInfo,
    ) -> Result<Handler, String> {
        let bytes = self.component(&info.digest).await?;
        self.sandbox
            .load(bytes, spec(tenant, name, info.version, config))
            .await
            .map_err(|e| e.to_string())
    }

    async fn component(&self, digest: &str) -> Result<Vec<u8>, String> {
        match &self.storage {
            Storage::Memory(m) => m
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(digest)
                .map(|b| b.to_vec())
                .ok_or_else(|| format!("component {digest} is not kept")),
            Storage::Durable(store) => {
                let store = store.clone();
                let d = digest.to_owned();
                tokio::task::spawn_blocking(move || store.component(&d))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("component {digest} is missing from the store"))
            }
            Storage::Fleet(fleet) => fleet.component(digest).await,
        }
    }

    /// Write a change (and its audit entry is written by [`Registry::audit`]
    /// separately): the record (`None`: removed), a new component, and
    /// components no longer referred to.
    async fn write(
        &self,
        key: &(String, String),
        record: Option<&Record>,
        component: Option<(&str, Vec<u8>)>,
        forget: Vec<String>,
    ) -> Result<(), Refusal> {
        let failed = |e: String| Refusal::new(503, "store_failed", e);
        match &self.storage {
            Storage::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some((d, b)) = component {
                    m.insert(d.to_owned(), Arc::new(b));
                }
                for d in &forget {
                    m.remove(d);
                }
                Ok(())
            }
            Storage::Durable(store) => {
                let record = match record {
                    Some(r) => Some(serde_json::to_vec(r).map_err(|e| failed(e.to_string()))?),
                    None => None,
                };
                let write = sluice_store::RegistryWrite {
                    components: component
                        .map(|(d, b)| vec![(d.to_owned(), b)])
                        .unwrap_or_default(),
                    forget_components: forget,
                    record: Some((key.clone(), record)),
                    audit: None,
                };
                store
                    .reserve()
                    .await
                    .map_err(|e| failed(e.to_string()))?
                    .registry(write)
                    .wait()
                    .await
                    .map_err(|e| failed(e.to_string()))
            }
            Storage::Fleet(fleet) => {
                let record = match record {
                    Some(r) => Some(serde_json::to_vec(r).map_err(|e| failed(e.to_string()))?),
                    None => None,
                };
                fleet
                    .write(key, record, component, forget)
                    .await
                    .map_err(|e| match e {
                        crate::cluster::registry::WriteError::Conflict => Refusal::new(
                            409,
                            "conflict",
                            "the handler was changed on another node at the same moment: try again",
                        ),
                        crate::cluster::registry::WriteError::Failed(e) => failed(e),
                    })
            }
        }
    }

    /// Record an audit entry (kept in memory, and on disk with a durable
    /// store).
    pub async fn record_audit(&self, entry: AuditEntry) {
        if let Storage::Fleet(fleet) = &self.storage {
            // The fleet's stream numbers it; this node keeps it once its
            // follower has it (waited for, so a read right after sees it).
            match fleet.audit(AuditLog::encode(&entry)).await {
                Ok(seq) => {
                    let waited = std::time::Instant::now();
                    while self.audit.last_seq() < seq
                        && waited.elapsed() < std::time::Duration::from_secs(2)
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "an audit entry could not be written to NATS")
                }
            }
            return;
        }
        let (seq, bytes) = self.audit.push(entry);
        if let Storage::Durable(store) = &self.storage {
            let write = sluice_store::RegistryWrite {
                audit: Some((seq, bytes)),
                ..Default::default()
            };
            let written = match store.reserve().await {
                Ok(p) => p.registry(write).wait().await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                tracing::error!(error = %e, "an audit entry could not be written to the store");
            }
        }
    }
}

fn not_found(tenant: &str, name: &str) -> Refusal {
    Refusal::new(
        404,
        "no_such_handler",
        format!("tenant {tenant} has no pushed handler named {name}"),
    )
}

/// The spec a pushed version runs under: the tenant's managed settings.
pub fn spec(tenant: &str, name: &str, version: u32, config: &ManagedConfig) -> HandlerSpec {
    HandlerSpec::new(format!("{name}@v{version}"), tenant)
        .isolation(config.isolation)
        .limits(config.limits.clone())
        .grant(config.grants.iter().copied())
}

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

/// What a message (or a lifecycle call) of one connection runs on.
pub struct Picked {
    /// The version that answers.
    pub handler: Handler,
    /// Its number.
    pub version: u32,
    /// The shadow to rehearse beside it, with the slot to report to.
    pub shadow: Option<(Arc<Slot>, Loaded)>,
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
    fn new(tenant: &str, name: &str, serving: Serving, config: ManagedConfig) -> Self {
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

    fn config(&self) -> ManagedConfig {
        self.serving
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    fn swap(&self, serving: Serving, config: ManagedConfig) {
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

    fn loaded(&self, version: u32) -> Option<Handler> {
        self.serving()
            .loaded()
            .find(|l| l.version == version)
            .map(|l| l.handler.clone())
    }

    /// The version connection `conn_id` runs on: the canary for a fixed
    /// share of connections (the same connection always lands on the same
    /// side while the percentage stays), else stable. `None`: nothing is
    /// serving.
    pub fn pick(self: &Arc<Self>, conn_id: u64) -> Option<Picked> {
        let s = self.serving();
        let chosen = match &s.canary {
            Some((canary, percent)) if self.bucket(conn_id) < u64::from(*percent) => Some(canary),
            _ => s.stable.as_ref(),
        }?;
        Some(Picked {
            handler: chosen.handler.clone(),
            version: chosen.version,
            shadow: s.shadow.clone().map(|l| (self.clone(), l)),
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
