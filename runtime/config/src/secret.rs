//! Secrets by reference (`{ secret_env = "VAR" }` or `{ secret_file = "x" }`),
//! never inline, and how they are read: the admin token and the tenants'
//! management tokens.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Shortest admin token accepted, in bytes (`[server] admin_token`).
pub const MIN_ADMIN_TOKEN_BYTES: usize = 32;

/// A secret by reference: exactly one of an environment variable or a file
/// (its contents, trimmed), never the secret inline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Environment variable holding the secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the secret (relative to the config file).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

impl SecretRef {
    /// Whether it names exactly one source (what [`SecretRef::read`] needs).
    pub fn names_one_source(&self) -> bool {
        self.secret_env.is_some() != self.secret_file.is_some()
    }

    /// Read the secret; `at` names the setting in messages, a relative
    /// `secret_file` is found in `base`'s directory (the config file's).
    pub fn read(&self, base: &(impl BaseDir + ?Sized), at: &str) -> Result<String, String> {
        let base_dir = base.base_dir();
        let (secret, from) = match (&self.secret_env, &self.secret_file) {
            (Some(var), None) => (
                std::env::var(var)
                    .map_err(|_| format!("{at}: environment variable ${var} is not set"))?,
                format!("${var}"),
            ),
            (None, Some(file)) => {
                let path = resolve(base_dir, file);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{at}: cannot read {}: {e}", path.display()))?;
                (text, path.display().to_string())
            }
            _ => return Err(format!("{at}: set exactly one of secret_env, secret_file")),
        };
        let secret = secret.trim();
        if secret.len() < MIN_ADMIN_TOKEN_BYTES {
            return Err(format!(
                "{at}: the secret in {from} is shorter than {MIN_ADMIN_TOKEN_BYTES} bytes"
            ));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{at}: the secret in {from} must be printable ASCII without spaces (it is sent in an HTTP header)"
            ));
        }
        Ok(secret.to_owned())
    }
}

/// What relative paths in the configuration resolve against: the
/// configuration (its file's directory), or a directory itself.
pub trait BaseDir {
    /// The directory.
    fn base_dir(&self) -> &Path;
}

impl BaseDir for Path {
    fn base_dir(&self) -> &Path {
        self
    }
}

/// A path from the configuration file, resolved against `base_dir`.
pub fn resolve(base_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn file(name: &str) -> SecretRef {
        SecretRef {
            secret_env: None,
            secret_file: Some(PathBuf::from(name)),
        }
    }

    #[test]
    fn a_secret_file_is_read_trimmed_relative_to_the_config() {
        let dir = temp_dir("secret");
        std::fs::write(dir.join("ok.token"), format!("  {}\n", "t".repeat(40))).unwrap();
        assert_eq!(
            file("ok.token").read(dir.as_path(), "x").unwrap(),
            "t".repeat(40)
        );
        let absolute = file(dir.join("ok.token").to_str().unwrap());
        assert_eq!(
            absolute.read(Path::new("/nowhere"), "x").unwrap(),
            "t".repeat(40)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_unusable_secret_is_refused_naming_the_setting_and_the_source() {
        let dir = temp_dir("bad-secret");
        std::fs::write(dir.join("short"), "abc").unwrap();
        std::fs::write(dir.join("spaced"), format!("{} x", "t".repeat(40))).unwrap();
        let short = file("short").read(dir.as_path(), "at").unwrap_err();
        assert_eq!(
            short,
            format!(
                "at: the secret in {} is shorter than 32 bytes",
                dir.join("short").display()
            )
        );
        let spaced = file("spaced").read(dir.as_path(), "at").unwrap_err();
        assert!(
            spaced
                .ends_with("must be printable ASCII without spaces (it is sent in an HTTP header)"),
            "{spaced}"
        );
        let missing = file("missing").read(dir.as_path(), "at").unwrap_err();
        assert!(
            missing.starts_with(&format!(
                "at: cannot read {}",
                dir.join("missing").display()
            )),
            "{missing}"
        );
        let unset = SecretRef {
            secret_env: Some("SLUICE_CONFIG_TEST_UNSET_VARIABLE".into()),
            secret_file: None,
        };
        assert_eq!(
            unset.read(dir.as_path(), "at").unwrap_err(),
            "at: environment variable $SLUICE_CONFIG_TEST_UNSET_VARIABLE is not set"
        );
        let neither = SecretRef {
            secret_env: None,
            secret_file: None,
        };
        assert!(!neither.names_one_source());
        assert_eq!(
            neither.read(dir.as_path(), "at").unwrap_err(),
            "at: set exactly one of secret_env, secret_file"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
