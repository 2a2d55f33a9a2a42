//! `sluice tenant create | list | show | update | rm | keys`: tenants as
//! data, through the management API (HTTPS; see [`super::api`] for the
//! address, the CA and the token). docs/management.md is the reference.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use http::Method;
use serde_json::{Map, Value, json};

use super::api::{Api, Target, failure};

/// `sluice tenant`.
#[derive(clap::Args)]
pub struct TenantArgs {
    #[command(flatten)]
    target: Target,
    /// Print the API's JSON answer instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: TenantCommand,
}

#[derive(clap::Subcommand)]
enum TenantCommand {
    /// Create a tenant (the operator): prints its revision, its management
    /// token and the HMAC secrets the server generated, once.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["file", "toml"])))]
    Create {
        /// The tenant's id (its URL: wss://host/ws/<ID>).
        id: String,
        /// The tenant as JSON: what a [tenants.<ID>] table holds (an HS key
        /// given as {"kid": "k1", "algorithm": "HS256"} gets a generated
        /// secret).
        #[arg(long, value_name = "JSON")]
        file: Option<PathBuf>,
        /// The tenant as TOML: a [tenants.<ID>] table (or its fields at the
        /// top level), as in the config file; public_key_file is read here
        /// and sent inline.
        #[arg(long, value_name = "TOML")]
        toml: Option<PathBuf>,
        /// Write the management token to DIR/<ID>.token and each generated
        /// secret to DIR/<ID>.<KID>.secret (mode 0600) instead of printing
        /// them.
        #[arg(long, value_name = "DIR")]
        secrets_out: Option<PathBuf>,
    },
    /// Every tenant: id, revision, source (api or config). The operator.
    List,
    /// One tenant as the server keeps it (generated secrets hidden).
    Show {
        /// The tenant.
        id: String,
    },
    /// Change a tenant with a JSON merge patch (RFC 7386): --patch FILE, or
    /// --set FIELD=JSON (repeatable). A tenant's own token may change
    /// origins, require_origin and routes' schemas.
    #[command(group(clap::ArgGroup::new("change").required(true).args(["patch", "set"])))]
    Update {
        /// The tenant.
        id: String,
        /// The revision the change is made against (default: the current
        /// one, read first). A concurrent change makes it fail with 409.
        #[arg(long)]
        revision: Option<u64>,
        /// The merge patch, a JSON file.
        #[arg(long, value_name = "JSON")]
        patch: Option<PathBuf>,
        /// FIELD=JSON: set one field, e.g. origins='["https://a.example"]' or
        /// routes."chat.send".schema='{"type":"object"}' (null removes it).
        #[arg(long, value_name = "FIELD=JSON")]
        set: Vec<String>,
    },
    /// Remove a tenant (the operator): its sessions close with 1001.
    Rm {
        /// The tenant.
        id: String,
        /// The revision (default: the current one, read first).
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Change a tenant's keys: rotate, add, remove, or a new management
    /// token. Sessions whose token no longer verifies close with 1008.
    #[command(group(clap::ArgGroup::new("change").required(true).args(
        ["rotate", "add_public_key", "add_secret", "remove", "management_token"]
    )))]
    Keys {
        /// The tenant.
        id: String,
        /// The revision (default: the current one, read first).
        #[arg(long)]
        revision: Option<u64>,
        /// Replace every key by one new generated key of this algorithm
        /// (HS256, HS384, HS512); its kid is k<revision>.
        #[arg(long, value_name = "ALGORITHM")]
        rotate: Option<String>,
        /// Add a public key (PEM file; with --kid and --algorithm).
        #[arg(long, value_name = "PEM", requires_all = ["kid", "algorithm"])]
        add_public_key: Option<PathBuf>,
        /// Add a generated HMAC secret (with --kid; --algorithm default HS256).
        #[arg(long, requires = "kid")]
        add_secret: bool,
        /// The kid of the added key.
        #[arg(long)]
        kid: Option<String>,
        /// The algorithm of the added key (ES256, RS256, EdDSA, HS256...).
        #[arg(long)]
        algorithm: Option<String>,
        /// Remove the key with this kid.
        #[arg(long, value_name = "KID")]
        remove: Option<String>,
        /// A new management token for the tenant (the old one stops at once).
        #[arg(long)]
        management_token: bool,
        /// Write the new token and secrets to DIR (see `create`).
        #[arg(long, value_name = "DIR")]
        secrets_out: Option<PathBuf>,
    },
}

/// Run `sluice tenant ...`.
pub async fn run(args: TenantArgs) -> anyhow::Result<ExitCode> {
    let api = args.target.api()?;
    let json = args.json;
    match args.command {
        TenantCommand::Create {
            id,
            file,
            toml,
            secrets_out,
        } => {
            let tenant = match (file, toml) {
                (Some(f), _) => tenant_from_json_file(&f)?,
                (None, Some(t)) => tenant_from_toml_file(&id, &t)?,
                (None, None) => {
                    bail!("give the tenant with --file tenant.json or --toml tenant.toml")
                }
            };
            let body = json!({ "id": id, "tenant": tenant });
            let (status, v) = api.call(Method::POST, "/v1/tenants", Some(&body)).await?;
            if status != 201 {
                return Ok(refused(status, &v, json));
            }
            let written = match &secrets_out {
                Some(dir) => write_secrets(dir, &id, &v)?,
                None => Vec::new(),
            };
            if json {
                println!("{v:#}");
            } else {
                print!(
                    "{}",
                    created(&id, &tenant, &v, secrets_out.as_deref(), &written)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TenantCommand::List => {
            let (status, v) = api.call(Method::GET, "/v1/tenants", None).await?;
            if status != 200 {
                return Ok(refused(status, &v, json));
            }
            if json {
                println!("{v:#}");
            } else {
                let tenants = v["tenants"].as_array().cloned().unwrap_or_default();
                if tenants.is_empty() {
                    println!("no tenants");
                }
                for t in tenants {
                    println!(
                        "{} {} {}",
                        t["id"].as_str().unwrap_or(""),
                        t["source"].as_str().unwrap_or(""),
                        t["revision"]
                            .as_u64()
                            .map_or("-".to_owned(), |r| format!("revision {r}")),
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TenantCommand::Show { id } => {
            let (status, v) = api.call(Method::GET, &path(&id), None).await?;
            if status != 200 {
                return Ok(refused(status, &v, json));
            }
            if json {
                println!("{v:#}");
            } else {
                println!(
                    "tenant {id} ({}, revision {})",
                    v["source"].as_str().unwrap_or("?"),
                    v["revision"]
                        .as_u64()
                        .map_or("-".to_owned(), |r| r.to_string())
                );
                println!("{:#}", v["tenant"]);
            }
            Ok(ExitCode::SUCCESS)
        }
        TenantCommand::Update {
            id,
            revision,
            patch,
            set,
        } => {
            let patch = match patch {
                Some(f) => read_json(&f)?,
                None => patch_from_sets(&set)?,
            };
            let Some(revision) = revision_or_current(&api, &id, revision).await? else {
                return Ok(ExitCode::FAILURE);
            };
            let body = json!({ "revision": revision, "patch": patch });
            let (status, v) = api.call(Method::PATCH, &path(&id), Some(&body)).await?;
            if status != 200 {
                return Ok(refused_change(status, &v, json, &id, revision));
            }
            if json {
                println!("{v:#}");
            } else {
                println!(
                    "tenant {id} updated: revision {}",
                    v["revision"].as_u64().unwrap_or(0)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TenantCommand::Rm { id, revision } => {
            let Some(revision) = revision_or_current(&api, &id, revision).await? else {
                return Ok(ExitCode::FAILURE);
            };
            let uri = format!("{}?revision={revision}", path(&id));
            let (status, v) = api.call(Method::DELETE, &uri, None).await?;
            if status != 200 {
                return Ok(refused_change(status, &v, json, &id, revision));
            }
            if json {
                println!("{v:#}");
            } else {
                println!("tenant {id} removed (its sessions were closed with 1001)");
            }
            Ok(ExitCode::SUCCESS)
        }
        TenantCommand::Keys {
            id,
            revision,
            rotate,
            add_public_key,
            add_secret,
            kid,
            algorithm,
            remove,
            management_token,
            secrets_out,
        } => {
            let change = keys_change(
                rotate,
                add_public_key.as_deref(),
                add_secret,
                kid,
                algorithm,
                remove,
                management_token,
            )?;
            let Some(revision) = revision_or_current(&api, &id, revision).await? else {
                return Ok(ExitCode::FAILURE);
            };
            let mut body = change;
            body["revision"] = json!(revision);
            let uri = format!("{}/keys", path(&id));
            let (status, v) = api.call(Method::POST, &uri, Some(&body)).await?;
            if status != 200 {
                return Ok(refused_change(status, &v, json, &id, revision));
            }
            let written = match &secrets_out {
                Some(dir) => write_secrets(dir, &id, &v)?,
                None => Vec::new(),
            };
            if json {
                println!("{v:#}");
            } else {
                println!(
                    "tenant {id} keys changed: revision {}",
                    v["revision"].as_u64().unwrap_or(0)
                );
                print!("{}", shown_once(&v, secrets_out.as_deref(), &written));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn path(id: &str) -> String {
    format!("/v1/tenants/{id}")
}

/// Print a refusal (with --json, the answer as it came) and fail.
fn refused(status: u16, v: &Value, json: bool) -> ExitCode {
    if json {
        println!("{v:#}");
    } else {
        eprint!("{}", failure(status, v));
    }
    ExitCode::FAILURE
}

/// A refused change; a conflict says which revision is current and what
/// to do.
fn refused_change(status: u16, v: &Value, json: bool, id: &str, sent: u64) -> ExitCode {
    let code = refused(status, v, json);
    if !json && status == 409 && v["error"]["code"] == "conflict" {
        match v["revision"].as_u64() {
            Some(current) => eprintln!(
                "tenant {id} is at revision {current}, not {sent}: someone changed it since. \
                 Read it again (sluice tenant show {id}), then retry with --revision {current}"
            ),
            None => eprintln!("tenant {id} no longer exists (sluice tenant list)"),
        }
    }
    code
}

/// `revision`, or the tenant's current one (read, and said on stderr);
/// `None` when reading it was refused (the refusal printed).
async fn revision_or_current(
    api: &Api,
    id: &str,
    revision: Option<u64>,
) -> anyhow::Result<Option<u64>> {
    if let Some(r) = revision {
        return Ok(Some(r));
    }
    let (status, v) = api.call(Method::GET, &path(id), None).await?;
    if status != 200 {
        eprint!("{}", failure(status, &v));
        return Ok(None);
    }
    let Some(r) = v["revision"].as_u64() else {
        bail!(
            "tenant {id} comes from the config file ({}): change it there and reload",
            v["source"].as_str().unwrap_or("no revision")
        );
    };
    eprintln!(
        "tenant {id} is at revision {r}: changing that (pass --revision to be sure it is the one you read)"
    );
    Ok(Some(r))
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// The tenant of a `--file`: the tenant object, or `{"id", "tenant"}` as
/// the API takes it.
fn tenant_from_json_file(path: &Path) -> anyhow::Result<Value> {
    let v = read_json(path)?;
    match v.as_object() {
        Some(o) if o.len() == 2 && o.contains_key("id") && o["tenant"].is_object() => {
            Ok(o["tenant"].clone())
        }
        Some(_) => Ok(v),
        None => bail!("{}: a tenant is a JSON object", path.display()),
    }
}

/// The tenant of a `--toml` file, as JSON: its `[tenants.<id>]` table (or,
/// with no `tenants` table, the whole file), with each key's
/// `public_key_file` read (relative to the file) and sent inline as
/// `public_key_pem`: the server may not see this machine's files.
fn tenant_from_toml_file(id: &str, path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    tenant_from_toml(id, &text, base).with_context(|| path.display().to_string())
}

fn tenant_from_toml(id: &str, text: &str, base: &Path) -> anyhow::Result<Value> {
    let root: toml::Table = toml::from_str(text).context("not valid TOML")?;
    let table = match root.get("tenants") {
        Some(toml::Value::Table(tenants)) => match tenants.get(id) {
            Some(toml::Value::Table(t)) => t.clone(),
            _ => bail!(
                "no [tenants.{id}] table (it has: {})",
                tenants.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        },
        Some(_) => bail!("`tenants` must be a table of tenants"),
        None => root,
    };
    let mut tenant = serde_json::to_value(&table)?;
    if let Some(keys) = tenant
        .pointer_mut("/auth/keys")
        .and_then(Value::as_array_mut)
    {
        for (i, key) in keys.iter_mut().enumerate() {
            let Some(k) = key.as_object_mut() else {
                continue;
            };
            if let Some(file) = k.remove("public_key_file") {
                let file = base.join(file.as_str().unwrap_or_default());
                let pem = std::fs::read_to_string(&file).with_context(|| {
                    format!("auth.keys[{i}].public_key_file: reading {}", file.display())
                })?;
                k.insert("public_key_pem".into(), Value::String(pem));
            }
        }
    }
    Ok(tenant)
}

/// The merge patch `--set FIELD=JSON ...` describe. FIELD is dotted; a
/// part with dots is quoted: routes."chat.send".schema.
fn patch_from_sets(sets: &[String]) -> anyhow::Result<Value> {
    let mut patch = Value::Object(Map::new());
    for set in sets {
        let (field, value) = set
            .split_once('=')
            .with_context(|| format!("--set {set}: expected FIELD=JSON"))?;
        let value: Value = serde_json::from_str(value).with_context(|| {
            format!(
                "--set {set}: the value is not JSON (a string needs quotes: {field}='\"text\"')"
            )
        })?;
        let parts = field_path(field).with_context(|| format!("--set {set}"))?;
        let mut at = &mut patch;
        for part in &parts[..parts.len() - 1] {
            let map = at.as_object_mut().with_context(|| {
                format!("--set {set}: a field above {part} is set to a value, not an object")
            })?;
            at = map
                .entry(part.clone())
                .or_insert_with(|| Value::Object(Map::new()));
        }
        let last = &parts[parts.len() - 1];
        at.as_object_mut()
            .with_context(|| {
                format!("--set {set}: a field above {last} is set to a value, not an object")
            })?
            .insert(last.clone(), value);
    }
    Ok(patch)
}

/// `a.b."c.d"` -> [a, b, c.d].
fn field_path(field: &str) -> anyhow::Result<Vec<String>> {
    let mut parts = Vec::new();
    let mut rest = field.trim();
    loop {
        let (part, after) = if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted
                .find('"')
                .with_context(|| format!("{field}: an unclosed quote"))?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        if part.is_empty() {
            bail!("{field}: an empty field name");
        }
        parts.push(part.to_owned());
        match after.strip_prefix('.') {
            Some(next) => rest = next,
            None if after.is_empty() => return Ok(parts),
            None => bail!("{field}: expected a dot after {part:?}"),
        }
    }
}

/// The body of `POST /v1/tenants/{id}/keys` (without the revision).
fn keys_change(
    rotate: Option<String>,
    add_public_key: Option<&Path>,
    add_secret: bool,
    kid: Option<String>,
    algorithm: Option<String>,
    remove: Option<String>,
    management_token: bool,
) -> anyhow::Result<Value> {
    Ok(if let Some(alg) = rotate {
        json!({ "rotate": alg })
    } else if let Some(pem) = add_public_key {
        let text = std::fs::read_to_string(pem)
            .with_context(|| format!("reading --add-public-key {}", pem.display()))?;
        if !text.contains("-----BEGIN PUBLIC KEY-----") {
            bail!(
                "--add-public-key {}: expected a PEM public key (-----BEGIN PUBLIC KEY-----)",
                pem.display()
            );
        }
        json!({ "add": { "kid": kid, "algorithm": algorithm, "public_key_pem": text } })
    } else if add_secret {
        let algorithm = algorithm.unwrap_or_else(|| "HS256".to_owned());
        json!({ "add": { "kid": kid, "algorithm": algorithm } })
    } else if let Some(kid) = remove {
        json!({ "remove": kid })
    } else if management_token {
        json!({ "management_token": true })
    } else {
        bail!(
            "say what to change: --rotate, --add-public-key, --add-secret, --remove or --management-token"
        )
    })
}

/// A name safe as a file name: what is not [A-Za-z0-9._-] becomes `_`.
fn file_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Write the answer's token (`DIR/<id>.token`) and secrets
/// (`DIR/<id>.<kid>.secret`), private: the files written.
fn write_secrets(dir: &Path, id: &str, v: &Value) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    if let Some(token) = v["token"].as_str() {
        let file = dir.join(format!("{}.token", file_part(id)));
        sluice::dev_files::write_private(&file, token.as_bytes())?;
        written.push(file);
    }
    for (kid, secret) in v["secrets"].as_object().into_iter().flatten() {
        if let Some(secret) = secret.as_str() {
            let file = dir.join(format!("{}.{}.secret", file_part(id), file_part(kid)));
            sluice::dev_files::write_private(&file, secret.as_bytes())?;
            written.push(file);
        }
    }
    Ok(written)
}

/// The management token and secrets of an answer: printed (shown this
/// once), or where they were written.
fn shown_once(v: &Value, dir: Option<&Path>, written: &[PathBuf]) -> String {
    let mut out = String::new();
    if dir.is_some() {
        for f in written {
            out.push_str(&format!("  written: {} (0600)\n", f.display()));
        }
        return out;
    }
    if let Some(token) = v["token"].as_str() {
        out.push_str(&format!("  management token (shown once): {token}\n"));
    }
    for (kid, secret) in v["secrets"].as_object().into_iter().flatten() {
        out.push_str(&format!(
            "  secret of key {kid} (shown once): {}\n",
            secret.as_str().unwrap_or_default()
        ));
    }
    if !out.is_empty() {
        out.push_str("  Keep them now: the server keeps only a digest of the token, and shows secrets never again (--secrets-out DIR writes them to files).\n");
    }
    out
}

/// What `create` prints: the revision, the token and secrets once, and
/// how to mint a token with a generated secret.
fn created(id: &str, tenant: &Value, v: &Value, dir: Option<&Path>, written: &[PathBuf]) -> String {
    let mut out = format!(
        "tenant {id} created: revision {}\n",
        v["revision"].as_u64().unwrap_or(0)
    );
    out.push_str(&shown_once(v, dir, written));
    let auth = &tenant["auth"];
    if let Some((kid, _)) = v["secrets"].as_object().and_then(|s| s.iter().next()) {
        let secret_file = match dir {
            Some(d) => d
                .join(format!("{}.{}.secret", file_part(id), file_part(kid)))
                .display()
                .to_string(),
            None => "<file holding the secret>".to_owned(),
        };
        out.push_str(&format!(
            "Mint a token: sluice token --secret-file {secret_file} --kid {kid} --issuer {} --audience {} --sub <user>\n",
            auth["issuer"].as_str().unwrap_or("<issuer>"),
            auth["audience"].as_str().unwrap_or("<audience>"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_builds_one_merge_patch_with_quoted_parts_and_json_values() {
        let patch = patch_from_sets(&[
            r#"origins=["https://a.example"]"#.to_owned(),
            r#"routes."chat.send".schema={"type":"object"}"#.to_owned(),
            "routes.\"chat.send\".scopes=null".to_owned(),
            "require_origin=true".to_owned(),
        ])
        .unwrap();
        assert_eq!(
            patch,
            json!({
                "origins": ["https://a.example"],
                "routes": {"chat.send": {"schema": {"type": "object"}, "scopes": null}},
                "require_origin": true
            })
        );
        let e = patch_from_sets(&["origins=https://a".to_owned()]).unwrap_err();
        assert!(format!("{e:#}").contains("a string needs quotes"), "{e:#}");
        assert!(patch_from_sets(&["origins".to_owned()]).is_err());
        assert!(patch_from_sets(&["a..b=1".to_owned()]).is_err());
        assert!(patch_from_sets(&["\"a=1".to_owned()]).is_err());
        let e = patch_from_sets(&["a=1".to_owned(), "a.b=2".to_owned()]).unwrap_err();
        assert!(e.to_string().contains("not an object"), "{e}");
    }

    #[test]
    fn a_toml_tenant_table_becomes_the_json_the_api_takes_with_public_keys_inline() {
        let dir = std::env::temp_dir().join(format!("sluice-tenant-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n";
        std::fs::write(dir.join("acme.pub.pem"), pem).unwrap();
        let text = r#"
[tenants.acme]
origins = ["https://acme.example"]

[tenants.acme.auth]
issuer = "https://id.acme.example"
audience = "acme"

[[tenants.acme.auth.keys]]
kid = "k1"
algorithm = "HS256"

[[tenants.acme.auth.keys]]
kid = "e1"
algorithm = "ES256"
public_key_file = "acme.pub.pem"

[tenants.acme.routes.echo]
handler = "echo"
"#;
        let t = tenant_from_toml("acme", text, &dir).unwrap();
        assert_eq!(t["origins"], json!(["https://acme.example"]));
        assert_eq!(
            t["auth"]["keys"][0],
            json!({"kid": "k1", "algorithm": "HS256"})
        );
        assert_eq!(
            t["auth"]["keys"][1],
            json!({"kid": "e1", "algorithm": "ES256", "public_key_pem": pem})
        );
        assert_eq!(t["routes"]["echo"]["handler"], "echo");
        // The same fields at the top level: the whole file is the tenant.
        let bare = "origins = [\"https://b.example\"]\n";
        assert_eq!(
            tenant_from_toml("b", bare, &dir).unwrap(),
            json!({"origins": ["https://b.example"]})
        );
        let e = tenant_from_toml("other", text, &dir).unwrap_err();
        assert_eq!(e.to_string(), "no [tenants.other] table (it has: acme)");
        let e = tenant_from_toml(
            "x",
            "[[tenants.x.auth.keys]]\nalgorithm = \"ES256\"\npublic_key_file = \"none.pem\"\n",
            &dir,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("auth.keys[0].public_key_file: reading"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn generated_secrets_go_to_private_files_named_by_tenant_and_kid() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("sluice-tenant-out-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let v = json!({"id": "acme", "revision": 3, "token": "the-management-token", "secrets": {"k1": "the-k1-secret", "keys[1]": "the-other-secret"}});
        let written = write_secrets(&dir, "acme", &v).unwrap();
        assert_eq!(
            written,
            [
                dir.join("acme.token"),
                dir.join("acme.k1.secret"),
                dir.join("acme.keys_1_.secret")
            ]
        );
        for f in &written {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
        assert_eq!(
            std::fs::read_to_string(dir.join("acme.k1.secret")).unwrap(),
            "the-k1-secret"
        );
        let tenant = json!({"auth": {"issuer": "iss", "audience": "aud"}});
        let out = created("acme", &tenant, &v, Some(&dir), &written);
        assert!(
            !out.contains("the-management-token") && !out.contains("the-k1-secret"),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "sluice token --secret-file {} --kid k1 --issuer iss --audience aud --sub <user>",
                dir.join("acme.k1.secret").display()
            )),
            "{out}"
        );
        let printed = created("acme", &tenant, &v, None, &[]);
        assert!(
            printed.contains("management token (shown once): the-management-token")
                && printed.contains("secret of key k1 (shown once): the-k1-secret"),
            "{printed}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
