//! Verification of a pushed component, before it may serve: size, that it
//! is a component, its limits, that it compiles, its declared memory, the
//! world and version it was built for, its imports against the tenant's
//! grants, then smoke calls (on-connect, each sample message, on-disconnect)
//! rehearsed under the handler's limits: state read, never written. Every
//! check is reported; the first failure skips the checks after it.
//!
//! Verification holds no lock another tenant or a reload waits on: the
//! component compiles on the sandbox's bounded compile workers under a time
//! limit ([`Sandbox::load_pushed`]), its compiled code counted against the
//! tenant's `compiled_bytes` quota, and the smoke calls are ordinary calls
//! under the handler's limits, at most [`MAX_SAMPLES`] messages of them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_config::ManagedConfig;
use sluice_sandbox::{
    CallError, CallOutcome, Connection, Export, Handler, HandlerSpec, LoadError, Message,
    Principal, Sandbox,
};

use sluice_server::tenant::Tenant;

use crate::refusal::Refusal;
pub use crate::report::{Check, Report, SmokeCall, Status};

/// Sample messages a push may carry (each is one smoke call, run under the
/// handler's deadline).
pub const MAX_SAMPLES: usize = 32;

/// A sample message for the smoke calls.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Its route (message type); the route must go to the pushed handler.
    pub route: String,
    /// Its channel, for routes that take one.
    #[serde(default)]
    pub channel: Option<String>,
    /// Its `data`.
    #[serde(default)]
    pub data: Value,
}

/// The check names, in the order they run.
const CHECKS: [&str; 9] = [
    "size",
    "component",
    "limits",
    "compile",
    "memory",
    "world",
    "imports",
    "samples",
    "smoke",
];

struct Checks(Vec<Check>);

impl Checks {
    fn new() -> Self {
        Self(
            CHECKS
                .iter()
                .map(|n| Check {
                    name: (*n).to_owned(),
                    status: Status::Skipped,
                    detail: String::new(),
                })
                .collect(),
        )
    }

    fn set(&mut self, name: &str, status: Status, detail: impl Into<String>) {
        if let Some(c) = self.0.iter_mut().find(|c| c.name == name) {
            c.status = status;
            c.detail = detail.into();
        }
    }

    /// Mark every check before `name` as passed (those not set yet).
    fn passed_before(&mut self, name: &str) {
        for c in &mut self.0 {
            if c.name == name {
                break;
            }
            if c.status == Status::Skipped {
                c.status = Status::Pass;
            }
        }
    }
}

/// Verify `bytes` as version of `name`: the report and the loaded handler
/// when every check passed; else why not, with the report when the
/// component was looked at (422 `verification_failed`, 422
/// `compile_timeout`, 409 `quota`, 503 `busy`).
pub async fn verify(
    sandbox: &Sandbox,
    tenant: &Tenant,
    config: &ManagedConfig,
    name: &str,
    bytes: &[u8],
    digest: &str,
    samples: &[Sample],
) -> Result<(Report, Handler), Refusal> {
    let mut refused = None;
    let (report, handler) = run(
        sandbox,
        tenant,
        config,
        name,
        bytes,
        digest,
        samples,
        &mut refused,
    )
    .await;
    match (handler, refused) {
        (Some(handler), _) => Ok((report, handler)),
        (None, Some((status, code, message))) => Err(Refusal {
            report: Some(Box::new(report)),
            ..Refusal::new(status, code, message)
        }),
        (None, None) => Err(Refusal {
            report: Some(Box::new(report)),
            ..Refusal::new(
                422,
                "verification_failed",
                "the component failed verification; see the report",
            )
        }),
    }
}

/// A refusal that is not the component failing a check: its status, code
/// and message.
type Refused = Option<(u16, &'static str, String)>;

#[expect(
    clippy::too_many_arguments,
    reason = "verify's arguments and where a refusal goes"
)]
async fn run(
    sandbox: &Sandbox,
    tenant: &Tenant,
    config: &ManagedConfig,
    name: &str,
    bytes: &[u8],
    digest: &str,
    samples: &[Sample],
    refused: &mut Refused,
) -> (Report, Option<Handler>) {
    let started = std::time::Instant::now();
    let mut checks = Checks::new();
    let mut report = Report {
        digest: digest.to_owned(),
        size: bytes.len(),
        ..Report::default()
    };
    let max = config
        .max_component_bytes
        .unwrap_or(sandbox.config().max_component_bytes)
        .min(sandbox.config().max_component_bytes);
    let handler = if bytes.len() > max {
        checks.set(
            "size",
            Status::Fail,
            format!(
                "the component is {} bytes; the limit is {max} bytes",
                bytes.len()
            ),
        );
        None
    } else {
        checks.set(
            "size",
            Status::Pass,
            format!("{} bytes (limit {max})", bytes.len()),
        );
        // The version number is not known yet: the spec's name says so.
        let spec = spec(&tenant.id, name, 0, config);
        match sandbox.load_pushed(bytes.to_vec(), spec).await {
            Ok(h) => {
                let limits = &h.spec().limits;
                checks.set("component", Status::Pass, "a WebAssembly component");
                checks.set(
                    "limits",
                    Status::Pass,
                    format!(
                        "fuel {}, deadline {} ms, memory_bytes {} ({} isolation)",
                        limits.fuel,
                        limits.deadline.as_millis(),
                        limits.memory_bytes,
                        serde_json::to_value(h.spec().isolation)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    ),
                );
                checks.set("compile", Status::Pass, "compiled (Cranelift)");
                checks.set(
                    "memory",
                    Status::Pass,
                    format!(
                        "initial linear memory within memory_bytes {}",
                        limits.memory_bytes
                    ),
                );
                checks.set(
                    "world",
                    Status::Pass,
                    format!("exports {}", sluice_sandbox::EVENTS_EXPORT),
                );
                checks.set("imports", Status::Pass, imports_detail(config));
                Some(h)
            }
            Err(e) => {
                *refused = match &e {
                    LoadError::Quota { .. } => Some((409, "quota", e.to_string())),
                    LoadError::Busy(m) => Some((503, "busy", m.clone())),
                    LoadError::CompileTimeout(_) => Some((422, "compile_timeout", e.to_string())),
                    _ => None,
                };
                record_load_error(&mut checks, e);
                None
            }
        }
    };
    if let Some(handler) = handler {
        let messages = match sample_messages(tenant, name, samples) {
            Ok(m) => {
                checks.set(
                    "samples",
                    Status::Pass,
                    if m.is_empty() {
                        "no sample messages (none given, no `examples` in the schemas of its routes): on-connect and on-disconnect only".to_owned()
                    } else {
                        format!("{} sample message(s)", m.len())
                    },
                );
                Some(m)
            }
            Err(problems) => {
                checks.set("samples", Status::Fail, problems.join("; "));
                None
            }
        };
        if let Some(messages) = messages {
            report.smoke = smoke(&handler, &tenant.id, &messages).await;
            let failed: Vec<String> = report
                .smoke
                .iter()
                .filter(|s| !s.passed)
                .map(|s| match &s.route {
                    Some(r) => format!("{} ({r}): {}", s.export, s.outcome),
                    None => format!("{}: {}", s.export, s.outcome),
                })
                .collect();
            if failed.is_empty() {
                checks.set(
                    "smoke",
                    Status::Pass,
                    format!("{} call(s) passed", report.smoke.len()),
                );
            } else {
                checks.set("smoke", Status::Fail, failed.join("; "));
            }
        }
        report.passed = checks.0.iter().all(|c| c.status == Status::Pass);
        report.checks = checks.0;
        report.took_ms = started.elapsed().as_millis() as u64;
        let handler = report.passed.then_some(handler);
        return (report, handler);
    }
    report.checks = checks.0;
    report.took_ms = started.elapsed().as_millis() as u64;
    (report, None)
}

fn imports_detail(config: &ManagedConfig) -> String {
    let granted: Vec<String> = config.grants.iter().map(ToString::to_string).collect();
    format!(
        "imports only granted capabilities (granted: [{}])",
        granted.join(", ")
    )
}

/// Place a load failure on the check it belongs to; the ones before pass.
fn record_load_error(checks: &mut Checks, e: LoadError) {
    let detail = e.to_string();
    match e {
        LoadError::TooLarge { .. } => {
            checks.set("size", Status::Fail, detail);
        }
        LoadError::NotAComponent(m) => {
            checks.passed_before("component");
            checks.set(
                "component",
                Status::Fail,
                format!("not a WebAssembly component: {m}"),
            );
        }
        LoadError::InvalidLimits(problems) => {
            let memory: Vec<&String> = problems
                .iter()
                .filter(|p| p.contains("initial linear memory"))
                .collect();
            if memory.is_empty() {
                checks.passed_before("limits");
                checks.set("limits", Status::Fail, problems.join("; "));
            } else {
                checks.passed_before("memory");
                checks.set(
                    "memory",
                    Status::Fail,
                    memory
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join("; "),
                );
            }
        }
        LoadError::Compile(m) | LoadError::Busy(m) => {
            checks.passed_before("compile");
            checks.set("compile", Status::Fail, m);
        }
        LoadError::CompileTimeout(_) | LoadError::Quota { .. } => {
            checks.passed_before("compile");
            checks.set("compile", Status::Fail, detail);
        }
        LoadError::World(problems) => {
            checks.passed_before("world");
            let (imports, world): (Vec<String>, Vec<String>) = problems
                .into_iter()
                .partition(|p| p.starts_with("it imports"));
            if world.is_empty() {
                checks.set(
                    "world",
                    Status::Pass,
                    "exports sluice:handler/events".to_owned(),
                );
            } else {
                checks.set("world", Status::Fail, world.join("; "));
            }
            if imports.is_empty() {
                checks.set("imports", Status::Pass, "");
            } else {
                checks.set("imports", Status::Fail, imports.join("; "));
            }
        }
        LoadError::Read { .. } => {
            checks.set("component", Status::Fail, detail);
        }
    }
}

/// The samples as messages: each on a route of the tenant that goes to
/// `name`, its data valid against the route's schema.
fn sample_messages(
    tenant: &Tenant,
    name: &str,
    samples: &[Sample],
) -> Result<Vec<Message>, Vec<String>> {
    if samples.len() > MAX_SAMPLES {
        return Err(vec![format!(
            "{} sample messages; at most {MAX_SAMPLES} are run",
            samples.len()
        )]);
    }
    let mut problems = Vec::new();
    let mut messages = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let Some(route) = tenant.config.routes.get(&s.route) else {
            problems.push(format!(
                "sample {i}: tenant {} has no route {:?}",
                tenant.id, s.route
            ));
            continue;
        };
        if route.handler != name {
            problems.push(format!(
                "sample {i}: route {:?} goes to handler {:?}, not {name:?}",
                s.route, route.handler
            ));
            continue;
        }
        if let Some(schema) = tenant.routes.get(&s.route).and_then(|r| r.schema.as_ref())
            && let Err(sluice_protocol::Rejection::Error { message, .. }) = schema.check(&s.data)
        {
            problems.push(format!(
                "sample {i}: its data does not match the schema of route {:?}: {message}",
                s.route,
            ));
            continue;
        }
        messages.push(Message {
            route: s.route.clone(),
            channel: s.channel.clone(),
            data: s.data.to_string(),
        });
    }
    if problems.is_empty() {
        Ok(messages)
    } else {
        Err(problems)
    }
}

/// Samples from the `examples` of the JSON Schemas of the routes that go
/// to `name` (a push without samples): the first [`MAX_SAMPLES`].
pub fn schema_examples(tenant: &Tenant, name: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for (route, rc) in &tenant.config.routes {
        if rc.handler != name {
            continue;
        }
        let examples = tenant
            .schema_sources
            .get(route)
            .and_then(|s| s.get("examples"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let channel =
            (rc.channel != sluice_config::ChannelAccess::None).then(|| "smoke".to_owned());
        for data in examples {
            samples.push(Sample {
                route: route.clone(),
                channel: channel.clone(),
                data,
            });
        }
    }
    samples.truncate(MAX_SAMPLES);
    samples
}

/// The connection smoke calls run as.
fn smoke_connection(tenant: &str) -> Connection {
    Connection {
        id: 0,
        principal: Principal {
            tenant: tenant.to_owned(),
            subject: "sluice-verify".to_owned(),
            claims: "{}".to_owned(),
        },
    }
}

async fn smoke(handler: &Handler, tenant: &str, messages: &[Message]) -> Vec<SmokeCall> {
    let conn = smoke_connection(tenant);
    let none = Message {
        route: String::new(),
        channel: None,
        data: "null".to_owned(),
    };
    let mut calls = Vec::new();
    let r = handler.rehearse(Export::Connect, &conn, &none).await;
    calls.push(smoke_call("on-connect", None, &r));
    for m in messages {
        let r = handler.rehearse(Export::Message, &conn, m).await;
        calls.push(smoke_call("on-message", Some(&m.route), &r));
    }
    let r = handler.rehearse(Export::Disconnect, &conn, &none).await;
    calls.push(smoke_call("on-disconnect", None, &r));
    calls
}

fn smoke_call(export: &str, route: Option<&str>, r: &Result<CallOutcome, CallError>) -> SmokeCall {
    let (outcome, passed, actions, report) = match r {
        Ok(o) => ("ok".to_owned(), true, o.actions.len(), &o.report),
        Err(e) => match &e.kind {
            sluice_sandbox::CallErrorKind::Rejected { code, .. } => {
                (format!("rejected: {code}"), true, 0, &e.report)
            }
            kind => (format!("{}: {kind}", kind.name()), false, 0, &e.report),
        },
    };
    SmokeCall {
        export: export.to_owned(),
        route: route.map(str::to_owned),
        outcome,
        passed,
        actions,
        fuel: report.fuel_consumed,
        elapsed_us: report.elapsed_us,
        memory_bytes: report.memory_bytes,
    }
}
/// The spec a pushed version runs under: the tenant's managed settings.
pub fn spec(tenant: &str, name: &str, version: u32, config: &ManagedConfig) -> HandlerSpec {
    HandlerSpec::new(format!("{name}@v{version}"), tenant)
        .isolation(config.isolation)
        .limits(config.limits.clone())
        .grant(config.grants.iter().copied())
}
