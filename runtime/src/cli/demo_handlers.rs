//! The demo handlers (echo and chat, and the chat handler in other
//! languages) that `sluice dev` and the benchmarks serve, built from the
//! repository's `handlers/` when needed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// Where the repository's handlers are built.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The component of handler `name` in `lang` (js, python, c), built (or
/// taken from its cache) by `handlers/build-lang`, which installs the
/// language's pinned tools.
pub fn lang_component(lang: &str, name: &str) -> anyhow::Result<PathBuf> {
    let script = repo_root().join("handlers/build-lang");
    eprintln!("building the {lang} {name} handler with handlers/build-lang {lang} (cached)...");
    let output = Command::new("bash")
        .arg(&script)
        .arg(lang)
        .stdin(Stdio::null())
        .output()
        .context("running handlers/build-lang")?;
    if !output.status.success() {
        std::io::stderr().write_all(&output.stderr)?;
        bail!("handlers/build-lang {lang} failed");
    }
    // One line per handler: `<lang> <name> <path>`.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ' ');
            (parts.next() == Some(lang) && parts.next() == Some(name))
                .then(|| parts.next().map(PathBuf::from))
                .flatten()
        })
        .with_context(|| format!("handlers/build-lang {lang} printed no {name} component"))
}

/// The demo handlers (echo, chat), built by `handlers/build` when needed.
pub fn demo_components() -> anyhow::Result<(PathBuf, PathBuf)> {
    let release = repo_root().join("handlers/target/wasm32-wasip2/release");
    let (echo, chat) = (release.join("echo.wasm"), release.join("chat.wasm"));
    let script = repo_root().join("handlers/build");
    let built = echo.exists() && chat.exists();
    // From a clone, handlers/build always runs: cargo rebuilds the demo
    // handlers only when their sources or wit/ changed (a second or two),
    // so a pull that moves the WIT version never serves stale components.
    if !built || script.exists() {
        if !script.exists() {
            bail!(
                "the demo handlers are not built and {} is missing: run sluice dev from a clone of the repository",
                script.display()
            );
        }
        // One line while it runs; the build's own output only if it fails.
        if built {
            eprintln!("checking the demo handlers are up to date (handlers/build)...");
        } else {
            eprintln!(
                "building the demo handlers with handlers/build (first run: a few minutes)..."
            );
        }
        let output = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .context("running handlers/build")?;
        if !output.status.success() {
            std::io::stderr().write_all(&output.stdout)?;
            std::io::stderr().write_all(&output.stderr)?;
            bail!("{} failed ({})", script.display(), output.status);
        }
    }
    Ok((echo.canonicalize()?, chat.canonicalize()?))
}
