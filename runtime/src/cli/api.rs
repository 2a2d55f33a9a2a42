//! What `sluice tenant`, `sluice handler` and `sluice reload` share: where
//! the management API is (HTTPS), whom to trust for it, which token to
//! send, and how a refusal is told.
//!
//! The address: `--url`, else the config's `[management] listen`, else
//! 127.0.0.1:9443. The CA: `--ca`, else the config's `[server] tls_cert`
//! (the dev server's self-signed certificate is its own CA), else the public
//! web roots. The token: `--token-file`, else `$SLUICE_TOKEN`, else the
//! config's `admin_token` (the operator's).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use serde_json::Value;
use sluice::server::admin::client::Management;

/// How to reach the management API.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Target {
    /// The server's configuration file: its management listener, its
    /// certificate (the CA to trust) and, without another token, its admin
    /// token (the operator's).
    #[arg(short, long, global = true)]
    pub config: Option<PathBuf>,
    /// The management API, host:port or https://host:port (default: the
    /// config's [management] listen, else 127.0.0.1:9443).
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub url: Option<String>,
    /// The CA certificate (PEM) to trust for the API (default: the config's
    /// tls_cert, else the public web roots). For `sluice dev`: dev/cert.pem.
    #[arg(long, global = true, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// A file holding the token: the operator's, or a tenant's management
    /// token. Default: $SLUICE_TOKEN, else the config's admin token.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// The API, reached and authenticated.
pub struct Api {
    /// Where, and whom to trust.
    pub management: Management,
    /// The bearer token.
    pub token: String,
}

/// The environment variable holding the token (the operator's or a
/// tenant's management token).
pub const TOKEN_ENV: &str = "SLUICE_TOKEN";
/// Its former name, still read.
const OLD_TOKEN_ENV: &str = "SLUICE_MANAGEMENT_TOKEN";

impl Target {
    /// The config, the API and the token this target names.
    pub fn api(&self) -> anyhow::Result<Api> {
        let config = match &self.config {
            Some(path) => Some(sluice::config::Config::load(path)?),
            None => None,
        };
        let env = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let token = match &self.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading --token-file {}", f.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => match env(TOKEN_ENV).or_else(|| env(OLD_TOKEN_ENV)) {
                Some(t) => Some(t),
                None => match &config {
                    Some(c) => c.admin_token().map_err(anyhow::Error::msg)?,
                    None => None,
                },
            },
        };
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            bail!(
                "no token: pass --token-file FILE, set ${TOKEN_ENV}, or -c <config> (its admin token)"
            );
        };
        let management =
            Management::for_config(config.as_ref(), self.url.as_deref(), self.ca.as_deref())?;
        Ok(Api { management, token })
    }
}

impl Api {
    /// One request: the status and the answer (JSON, or its text as a
    /// JSON string).
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let body = body.map_or_else(Vec::new, |b| b.to_string().into_bytes());
        let (status, answer) = self
            .management
            .request(method, path, Some(&self.token), body)
            .await?;
        Ok((status, parse(&answer)))
    }
}

/// An answer as JSON, or its text as a JSON string.
pub fn parse(answer: &[u8]) -> Value {
    serde_json::from_slice(answer)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(answer).into_owned()))
}

/// A refusal as the user reads it: `error (<status>): <code>: <message>`,
/// then every problem (422) and field (403 operator_only) one per line.
pub fn failure(status: u16, v: &Value) -> String {
    let error = &v["error"];
    let mut out = match (error["code"].as_str(), error["message"].as_str()) {
        (Some(code), Some(m)) => format!("error ({status}): {code}: {m}\n"),
        (None, Some(m)) => format!("error ({status}): {m}\n"),
        _ => match v.as_str() {
            Some(text) => format!("error ({status}): {}\n", text.trim()),
            None => format!("error ({status}): {v}\n"),
        },
    };
    for list in ["problems", "fields"] {
        let items = v[list].as_array().or_else(|| error[list].as_array());
        for p in items.into_iter().flatten() {
            match p.as_str() {
                Some(s) => out.push_str(&format!("  {s}\n")),
                None => out.push_str(&format!("  {p}\n")),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_refusal_names_the_status_the_code_and_every_problem() {
        let v = json!({"error": {"code": "invalid", "message": "2 problems"},
                       "problems": ["tenants.a.routes.x: unknown handler", "tenants.a.origins[0]: not a URL"]});
        assert_eq!(
            failure(422, &v),
            "error (422): invalid: 2 problems\n  tenants.a.routes.x: unknown handler\n  tenants.a.origins[0]: not a URL\n"
        );
        let v = json!({"error": {"code": "operator_only", "message": "only the operator"}, "fields": ["limits"]});
        assert_eq!(
            failure(403, &v),
            "error (403): operator_only: only the operator\n  limits\n"
        );
        assert_eq!(
            failure(404, &Value::String("no such path\n".into())),
            "error (404): no such path\n"
        );
    }

    #[test]
    fn without_any_token_the_user_is_told_the_three_ways_to_give_one() {
        if std::env::var_os(TOKEN_ENV).is_some() || std::env::var_os(OLD_TOKEN_ENV).is_some() {
            return;
        }
        let e = Target::default().api().err().expect("no token").to_string();
        assert!(
            e.contains("--token-file") && e.contains("$SLUICE_TOKEN") && e.contains("-c"),
            "{e}"
        );
    }
}
