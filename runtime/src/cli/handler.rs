//! `sluice handler push | list | show | promote | rollback | rm | audit`:
//! pushed handlers through the management API (HTTPS; see [`super::api`]
//! for the address, the CA and the token).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::Value;
use sluice::control::Stage;
use sluice::control::verify::Sample;

use super::api::Target;

/// `sluice handler`.
#[derive(clap::Args)]
pub struct HandlerArgs {
    #[command(flatten)]
    target: Target,
    /// Print the API's JSON answer instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: HandlerCommand,
}

#[derive(clap::Subcommand)]
enum HandlerCommand {
    /// Push a component as a new version: verified (size, world, imports
    /// against the tenant's grants, memory, compile, smoke calls) before
    /// it may serve. The first version becomes stable; later ones are kept
    /// without serving unless --stable, --canary or --shadow says otherwise.
    Push {
        /// The tenant.
        tenant: String,
        /// The handler's name (what routes name).
        name: String,
        /// The component (.wasm).
        component: PathBuf,
        /// A sample message for the smoke calls, as JSON:
        /// {"route": "...", "channel": "...", "data": {...}} (repeatable).
        /// Without samples, the `examples` of the routes' schemas are used.
        #[arg(long = "sample")]
        samples: Vec<String>,
        /// Serve it to every connection at once.
        #[arg(long, conflicts_with_all = ["canary", "shadow"])]
        stable: bool,
        /// Serve it to this percentage of connections.
        #[arg(long, value_name = "PERCENT")]
        canary: Option<u8>,
        /// Rehearse it beside stable on every message (never applied).
        #[arg(long, conflicts_with = "canary")]
        shadow: bool,
    },
    /// List a tenant's pushed handlers and what serves.
    List {
        /// The tenant.
        tenant: String,
    },
    /// One handler: versions, their reports and metrics, routing, the
    /// shadow's diff report.
    Show {
        /// The tenant.
        tenant: String,
        /// The handler.
        name: String,
    },
    /// Route a version: stable (default), --canary PERCENT, --shadow, or
    /// --off (stop it as canary or shadow).
    Promote {
        /// The tenant.
        tenant: String,
        /// The handler.
        name: String,
        /// The version (e.g. 3 or v3).
        version: String,
        /// Serve it to this percentage of connections.
        #[arg(long, value_name = "PERCENT", conflicts_with_all = ["shadow", "off"])]
        canary: Option<u8>,
        /// Rehearse it beside stable.
        #[arg(long, conflicts_with = "off")]
        shadow: bool,
        /// Stop serving it as canary or shadow.
        #[arg(long)]
        off: bool,
    },
    /// Make the previous stable version (or --to) stable again; the canary
    /// and the shadow stop.
    Rollback {
        /// The tenant.
        tenant: String,
        /// The handler.
        name: String,
        /// The version to return to.
        #[arg(long)]
        to: Option<String>,
    },
    /// Remove a version that does not serve (--version), or the handler
    /// with every version (its routes then answer `unavailable`).
    Rm {
        /// The tenant.
        tenant: String,
        /// The handler.
        name: String,
        /// Only this version.
        #[arg(long)]
        version: Option<String>,
    },
    /// The audit log: who changed what, when, from where.
    Audit {
        /// Only this tenant's entries.
        #[arg(long)]
        tenant: Option<String>,
        /// The latest N entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

fn version(v: &str) -> anyhow::Result<u32> {
    v.trim_start_matches('v')
        .parse()
        .with_context(|| format!("{v:?} is not a version number"))
}

/// Run `sluice handler ...`.
pub async fn run(args: HandlerArgs) -> anyhow::Result<ExitCode> {
    let api = args.target.api()?;
    let path = |tenant: &str, rest: &str| format!("/v1/tenants/{tenant}/handlers{rest}");
    use http::Method;
    let (method, uri, body) = match &args.command {
        HandlerCommand::Push {
            tenant,
            name,
            component,
            samples,
            stable,
            canary,
            shadow,
        } => {
            let bytes = std::fs::read(component)
                .with_context(|| format!("reading {}", component.display()))?;
            let samples = if samples.is_empty() {
                None
            } else {
                Some(
                    samples
                        .iter()
                        .map(|s| {
                            serde_json::from_str::<Sample>(s).with_context(|| {
                                format!("--sample {s}: expected {{\"route\": ..., \"data\": ...}}")
                            })
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?,
                )
            };
            let (stage, percent) = match (stable, canary, shadow) {
                (true, _, _) => (Some(Stage::Stable), None),
                (_, Some(p), _) => (Some(Stage::Canary), Some(*p)),
                (_, _, true) => (Some(Stage::Shadow), None),
                _ => (None, None),
            };
            let body =
                sluice::control::client::push_body(&bytes, samples.as_deref(), stage, percent);
            (
                Method::POST,
                path(tenant, &format!("/{name}/versions")),
                body,
            )
        }
        HandlerCommand::List { tenant } => (Method::GET, path(tenant, ""), Vec::new()),
        HandlerCommand::Show { tenant, name } => {
            (Method::GET, path(tenant, &format!("/{name}")), Vec::new())
        }
        HandlerCommand::Promote {
            tenant,
            name,
            version: v,
            canary,
            shadow,
            off,
        } => {
            let (stage, percent) = match (canary, shadow, off) {
                (Some(p), _, _) => ("canary", Some(*p)),
                (_, true, _) => ("shadow", None),
                (_, _, true) => ("none", None),
                _ => ("stable", None),
            };
            let body =
                serde_json::json!({ "version": version(v)?, "stage": stage, "percent": percent });
            (
                Method::POST,
                path(tenant, &format!("/{name}/promote")),
                body.to_string().into_bytes(),
            )
        }
        HandlerCommand::Rollback { tenant, name, to } => {
            let to = to.as_deref().map(version).transpose()?;
            let body = serde_json::json!({ "to": to });
            (
                Method::POST,
                path(tenant, &format!("/{name}/rollback")),
                body.to_string().into_bytes(),
            )
        }
        HandlerCommand::Rm {
            tenant,
            name,
            version: v,
        } => {
            let rest = match v {
                Some(v) => format!("/{name}/versions/{}", version(v)?),
                None => format!("/{name}"),
            };
            (Method::DELETE, path(tenant, &rest), Vec::new())
        }
        HandlerCommand::Audit { tenant, limit } => {
            let mut uri = format!("/v1/audit?limit={limit}");
            if let Some(t) = tenant {
                uri.push_str(&format!("&tenant={t}"));
            }
            (Method::GET, uri, Vec::new())
        }
    };
    let (status, answer) = api
        .management
        .request(method, &uri, Some(&api.token), body)
        .await?;
    let value = super::api::parse(&answer);
    let ok = (200..300).contains(&status);
    if args.json {
        println!("{value:#}");
    } else if ok {
        print!("{}", summary(&args.command, &value));
    } else {
        eprint!("{}", failure(status, &value));
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn routing(r: &Value) -> String {
    let mut parts = Vec::new();
    match r["stable"].as_u64() {
        Some(v) => parts.push(format!("stable v{v}")),
        None => parts.push("nothing stable".to_owned()),
    }
    if let Some(c) = r["canary"].as_object() {
        parts.push(format!(
            "canary v{} at {}%",
            c.get("version").and_then(Value::as_u64).unwrap_or(0),
            c.get("percent").and_then(Value::as_u64).unwrap_or(0)
        ));
    }
    if let Some(s) = r["shadow"].as_u64() {
        parts.push(format!("shadow v{s}"));
    }
    parts.join(", ")
}

fn report_lines(report: &Value) -> String {
    let mut out = String::new();
    for c in report["checks"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<9} {:<7} {}\n",
            c["name"].as_str().unwrap_or(""),
            c["status"].as_str().unwrap_or(""),
            c["detail"].as_str().unwrap_or("")
        ));
    }
    for s in report["smoke"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  smoke {} {}: {} (fuel {}, {} us, {} bytes of memory)\n",
            s["export"].as_str().unwrap_or(""),
            s["route"].as_str().unwrap_or(""),
            s["outcome"].as_str().unwrap_or(""),
            s["fuel"].as_u64().map_or("-".into(), |f| f.to_string()),
            s["elapsed_us"].as_u64().unwrap_or(0),
            s["memory_bytes"].as_u64().unwrap_or(0)
        ));
    }
    out
}

fn summary(command: &HandlerCommand, v: &Value) -> String {
    match command {
        HandlerCommand::Push { name, .. } => {
            let version = v["version"].as_u64().unwrap_or(0);
            if v["already"].as_bool() == Some(true) {
                format!(
                    "{name}: these bytes are v{version} already; routing: {}\n",
                    routing(&v["routing"])
                )
            } else {
                format!(
                    "{name} v{version} pushed and verified in {} ms\n{}routing: {}\n",
                    v["report"]["took_ms"].as_u64().unwrap_or(0),
                    report_lines(&v["report"]),
                    routing(&v["routing"])
                )
            }
        }
        HandlerCommand::List { tenant } => {
            let mut out = String::new();
            let handlers = v["handlers"].as_array().cloned().unwrap_or_default();
            if handlers.is_empty() {
                out.push_str(&format!("tenant {tenant} has no pushed handlers\n"));
            }
            for h in handlers {
                out.push_str(&format!(
                    "{}: {} ({} version(s))\n",
                    h["name"].as_str().unwrap_or(""),
                    routing(&h["routing"]),
                    h["versions"].as_array().map_or(0, Vec::len)
                ));
            }
            out
        }
        HandlerCommand::Show { name, .. } => {
            let mut out = format!("{name}: {}\n", routing(&v["routing"]));
            for ver in v["versions"].as_array().into_iter().flatten() {
                let m = &ver["metrics"];
                out.push_str(&format!(
                    "v{} {} {} bytes, pushed by {}{}{}\n",
                    ver["version"].as_u64().unwrap_or(0),
                    &ver["digest"].as_str().unwrap_or("")
                        [..12.min(ver["digest"].as_str().unwrap_or("").len())],
                    ver["size"].as_u64().unwrap_or(0),
                    ver["pushed_by"].as_str().unwrap_or(""),
                    ver["stage"]
                        .as_str()
                        .map_or(String::new(), |s| format!(" [{s}]")),
                    if m.is_object() {
                        format!(
                            "; calls {} (ok {}), fuel {}",
                            m["calls"].as_u64().unwrap_or(0),
                            m["ok"].as_u64().unwrap_or(0),
                            m["fuel_consumed"].as_u64().unwrap_or(0)
                        )
                    } else {
                        String::new()
                    }
                ));
            }
            let s = &v["shadow"];
            if s["version"].is_u64() {
                out.push_str(&format!(
                    "shadow v{}: {} compared, {} same, {} diverged ({} where the shadow failed)\n",
                    s["version"], s["compared"], s["same"], s["diverged"], s["shadow_failed"]
                ));
                for d in s["divergences"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "  {}: stable {} | shadow {}\n",
                        d["route"].as_str().unwrap_or(""),
                        d["stable"],
                        d["shadow"]
                    ));
                }
            }
            out
        }
        HandlerCommand::Promote { .. } | HandlerCommand::Rollback { .. } => {
            format!("routing: {}\n", routing(&v["routing"]))
        }
        HandlerCommand::Rm { .. } => format!("{}\n", v["removed"].as_str().unwrap_or("removed")),
        HandlerCommand::Audit { .. } => {
            let mut out = String::new();
            for e in v["entries"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "#{} {} {} from {}: {} {}/{}{} -> {}: {}\n",
                    e["seq"],
                    e["at_ms"],
                    e["actor"].as_str().unwrap_or(""),
                    e["from"].as_str().unwrap_or(""),
                    e["action"].as_str().unwrap_or(""),
                    e["tenant"].as_str().unwrap_or("-"),
                    e["handler"].as_str().unwrap_or("-"),
                    e["version"]
                        .as_u64()
                        .map_or(String::new(), |v| format!(" v{v}")),
                    e["outcome"].as_str().unwrap_or(""),
                    e["detail"].as_str().unwrap_or("")
                ));
            }
            out
        }
    }
}

fn failure(status: u16, v: &Value) -> String {
    let mut out = super::api::failure(status, v);
    if v["report"].is_object() {
        out.push_str(&report_lines(&v["report"]));
    }
    out
}
