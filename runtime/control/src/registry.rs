//! The registry's workflow: push (verify, keep as a new version, route),
//! promote, rollback and remove, each written to the registry's storage
//! before it is answered; the slots routes read; changes another node
//! made, applied here. What it keeps goes through [`crate::storage::Kept`]
//! to whichever `RegistryStorage` the node was built on (memory, the
//! durable store, the fleet).
//!
//! The records are locked only to read and to commit: a push is verified
//! (compile, smoke calls) with no lock held, then committed under the lock,
//! where the digest and the tenant's handler quota are checked again and
//! the version numbered, so two pushes never get one number and a reload
//! or another tenant's request never waits for a compile. A tenant has one
//! push in flight at a time (another is refused 429 `push_in_flight`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use sluice_config::ManagedConfig;
use sluice_sandbox::{BoxFuture, Handler, Sandbox};
use sluice_server::backends::RegistryStorage;
use sluice_server::slot::{HandlerSlot, PushedHandlers};
use sluice_server::tenant::Tenant;

use crate::audit::{Actor, AuditEntry, AuditLog};
use crate::record::{Canary, Record, Routing, Stage, VersionInfo};
use crate::refusal::Refusal;
use crate::slot::{Loaded, Serving, Slot};
use crate::storage::Kept;
use crate::verify::{self, Report, Sample, spec};

/// The registry of pushed handlers of every tenant.
pub struct Registry {
    sandbox: Sandbox,
    kept: Kept,
    /// Records by (tenant, name); held to read, and across a change's
    /// commit (never its verification), so commits run one at a time and
    /// each is written before the next starts.
    records: tokio::sync::Mutex<BTreeMap<(String, String), Record>>,
    slots: Mutex<HashMap<(String, String), Arc<Slot>>>,
    /// Tenants with a push in flight.
    pushing: Mutex<HashSet<String>>,
    /// The audit log.
    pub audit: AuditLog,
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
    /// A registry over `storage`, starting from what it kept.
    pub fn open(sandbox: Sandbox, storage: Arc<dyn RegistryStorage>) -> Self {
        let contents = storage.take_contents();
        let mut records = BTreeMap::new();
        for (tenant, name, bytes) in contents.records {
            match serde_json::from_slice::<Record>(&bytes) {
                Ok(r) => {
                    records.insert((tenant, name), r);
                }
                Err(e) => tracing::error!(%tenant, handler = %name, error = %e,
                    "a pushed handler's record could not be read; it is not served"),
            }
        }
        Self {
            sandbox,
            audit: AuditLog::read_back(&contents.audit),
            kept: Kept::new(storage),
            records: tokio::sync::Mutex::new(records),
            slots: Mutex::default(),
            pushing: Mutex::default(),
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
        self.kept.durable()
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
        tenant: &Tenant,
        config: &ManagedConfig,
        name: &str,
        bytes: Vec<u8>,
        samples: Option<Vec<Sample>>,
        stage: Option<(Stage, Option<u8>)>,
        actor: &Actor,
    ) -> Result<Pushed, Refusal> {
        let key = (tenant.id.clone(), name.to_owned());
        let digest = sluice_sandbox::digest(&bytes);
        let _pushing = self.one_push(&tenant.id)?;
        {
            let records = self.records.lock().await;
            if let Some(pushed) = already(&records, &key, &digest) {
                return Ok(pushed);
            }
            within_handler_quota(&records, tenant, &key)?;
        }
        let samples = match samples {
            Some(s) => s,
            None => verify::schema_examples(tenant, name),
        };
        // No lock held: a compile or a slow smoke call delays this push only.
        let (report, verified) = verify::verify(
            &self.sandbox,
            tenant,
            config,
            name,
            &bytes,
            &digest,
            &samples,
        )
        .await?;
        // Commit: what another change did meanwhile is seen here.
        let mut records = self.records.lock().await;
        if let Some(pushed) = already(&records, &key, &digest) {
            return Ok(pushed);
        }
        within_handler_quota(&records, tenant, &key)?;
        let mut record = records
            .get(&key)
            .cloned()
            .unwrap_or_else(|| Record::new(&tenant.id, name));
        let version = record.next_version;
        // The version serves from a handler of its own, named with its
        // number and with counters that start at its first real call (the
        // compiled component is the verified one's, held by it until this
        // load has it: no second compile).
        let handler = self
            .sandbox
            .load(bytes.clone(), spec(&tenant.id, name, version, config))
            .await
            .map_err(|e| Refusal::new(500, "load_failed", e.to_string()))?;
        drop(verified);
        record.next_version += 1;
        record.versions.push(VersionInfo {
            version,
            digest: digest.clone(),
            size: bytes.len(),
            pushed_at_ms: crate::audit::now_ms(),
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
        self.kept
            .write(&key, Some(&record), Some((&digest, bytes)), dropped)
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
                self.kept.write(&key, Some(&record), None, dropped).await?;
                let routing = record.routing;
                records.insert(key, record);
                Ok(Some(routing))
            }
            None => {
                let empty = Record::new(tenant, name);
                let forgotten: Vec<String> =
                    record.versions.iter().map(|v| v.digest.clone()).collect();
                let dropped = self.unreferenced(&records, &key, &empty, &forgotten);
                self.kept.write(&key, None, None, dropped).await?;
                records.remove(&key);
                self.slot_for_change(tenant, name, Serving::default(), config);
                // Its versions are unloaded (their instances and compiled
                // code freed once no message holds them); the slot goes too
                // unless a route of the tenant holds it.
                let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
                if slots.get(&key).is_some_and(|s| Arc::strong_count(s) == 1) {
                    slots.remove(&key);
                }
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
        self.kept
            .write(&key, Some(&record), None, Vec::new())
            .await?;
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
        let bytes = self
            .kept
            .component(&info.digest)
            .await
            .map_err(|e| e.to_string())?;
        self.sandbox
            .load(bytes, spec(tenant, name, info.version, config))
            .await
            .map_err(|e| e.to_string())
    }

    /// Record an audit entry (kept in memory, and where the storage keeps
    /// it).
    pub async fn record_audit(&self, entry: AuditEntry) {
        self.kept.audit(&self.audit, entry).await;
    }
}

impl Registry {
    /// Mark `tenant` as pushing until the guard is dropped; refused when it
    /// is pushing already.
    fn one_push(&self, tenant: &str) -> Result<Pushing<'_>, Refusal> {
        let mut pushing = self.pushing.lock().unwrap_or_else(PoisonError::into_inner);
        if !pushing.insert(tenant.to_owned()) {
            return Err(Refusal::new(
                429,
                "push_in_flight",
                format!(
                    "tenant {tenant} has a push in flight; one push at a time per tenant, try again when it is answered"
                ),
            ));
        }
        Ok(Pushing {
            registry: self,
            tenant: tenant.to_owned(),
        })
    }
}

/// A tenant's push in flight.
struct Pushing<'a> {
    registry: &'a Registry,
    tenant: String,
}

impl Drop for Pushing<'_> {
    fn drop(&mut self) {
        self.registry
            .pushing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.tenant);
    }
}

/// The answer to a push of bytes `key` has as a version already.
fn already(
    records: &BTreeMap<(String, String), Record>,
    key: &(String, String),
    digest: &str,
) -> Option<Pushed> {
    let record = records.get(key)?;
    let v = record.versions.iter().find(|v| v.digest == digest)?;
    Some(Pushed {
        version: v.version,
        already: true,
        report: v.report.clone(),
        routing: record.routing,
    })
}

/// Refused when `key` is a new handler and its tenant has all the pushed
/// handlers its quota allows.
fn within_handler_quota(
    records: &BTreeMap<(String, String), Record>,
    tenant: &Tenant,
    key: &(String, String),
) -> Result<(), Refusal> {
    if records.contains_key(key) {
        return Ok(());
    }
    let max = tenant.config.quotas.pushed_handlers;
    let held = records.keys().filter(|(t, _)| *t == tenant.id).count();
    if held >= max as usize {
        return Err(Refusal::new(
            409,
            "quota",
            format!(
                "tenant {} has {held} pushed handlers, its pushed_handlers quota is {max}: push a new version of one, or remove one first",
                tenant.id
            ),
        ));
    }
    Ok(())
}

fn not_found(tenant: &str, name: &str) -> Refusal {
    Refusal::new(
        404,
        "no_such_handler",
        format!("tenant {tenant} has no pushed handler named {name}"),
    )
}

impl PushedHandlers for Registry {
    fn names<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Vec<String>> {
        Box::pin(Registry::names(self, tenant))
    }

    fn slot<'a>(
        &'a self,
        tenant: &'a str,
        name: &'a str,
        config: &'a ManagedConfig,
    ) -> BoxFuture<'a, Result<Arc<dyn HandlerSlot>, Vec<String>>> {
        Box::pin(async move {
            let slot: Arc<dyn HandlerSlot> = Registry::slot(self, tenant, name, config).await?;
            Ok(slot)
        })
    }

    fn slots_of(&self, tenant: &str) -> Vec<Arc<dyn HandlerSlot>> {
        Registry::slots_of(self, tenant)
            .into_iter()
            .map(|s| -> Arc<dyn HandlerSlot> { s })
            .collect()
    }
}
