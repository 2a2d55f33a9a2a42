//! Slots: one number per run, claimed with a file holding the runner's
//! pid (`/run/sluice-faults/slot-N.pid`), under a lock every run on the
//! machine takes, and everything a run creates is named after it. What a
//! dead run left (its processes, namespaces, bridge, mount, cgroup) is
//! removed by the next one.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::command::sh;

/// Where slot files live (cleared at boot, like network namespaces).
pub const SLOTS: &str = "/run/sluice-faults";
/// Most runs at once on one machine.
pub const MAX_SLOTS: u32 = 64;
/// Where each slot keeps its disk image and mount.
pub const SLOT_DIRS: &str = "/var/tmp/sluice-faults";

fn slot_file(slot: u32) -> PathBuf {
    Path::new(SLOTS).join(format!("slot-{slot}.pid"))
}

/// The folder a slot keeps its disk in.
pub fn slot_dir(slot: u32) -> PathBuf {
    Path::new(SLOT_DIRS).join(format!("slot-{slot}"))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Remove what dead runs left, under the slots' lock (`sluice-faults
/// clean`). Returns the slots cleaned.
pub async fn clean_dead() -> anyhow::Result<Vec<u32>> {
    let _lock = SlotLock::take().await?;
    clean_stale().await
}

/// Remove whatever runs that died left behind: their processes, network
/// namespaces, bridges, mounts and cgroups. Returns the slots cleaned.
/// Only under the slots' lock.
pub async fn clean_stale() -> anyhow::Result<Vec<u32>> {
    std::fs::create_dir_all(SLOTS).with_context(|| format!("creating {SLOTS}"))?;
    let mut stale = Vec::new();
    for slot in 0..MAX_SLOTS {
        let owner = std::fs::read_to_string(slot_file(slot))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let leftovers = namespaces_of(slot).await?;
        let dead = match owner {
            Some(pid) => !alive(pid),
            None => !leftovers.is_empty() || slot_dir(slot).exists(),
        };
        if dead {
            clean_slot(slot).await;
            stale.push(slot);
        }
    }
    Ok(stale)
}

async fn namespaces_of(slot: u32) -> anyhow::Result<Vec<String>> {
    let prefix = format!("sf{slot}-");
    let list = sh("ip", &["netns", "list"]).await?;
    Ok(list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_owned)
        .collect())
}

/// Remove every slot this process claimed (on an interrupt).
pub async fn clean_own() {
    let me = std::process::id();
    for slot in 0..MAX_SLOTS {
        let owner = std::fs::read_to_string(slot_file(slot))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if owner == Some(me) {
            clean_slot(slot).await;
        }
    }
}

/// Remove everything of `slot`, ignoring what is already gone.
pub async fn clean_slot(slot: u32) {
    if let Ok(list) = namespaces_of(slot).await {
        for ns in list {
            let mut killed = Vec::new();
            if let Ok(pids) = sh("ip", &["netns", "pids", &ns]).await {
                for pid in pids.split_whitespace() {
                    let _ = sh("kill", &["-CONT", pid]).await;
                    let _ = sh("kill", &["-KILL", pid]).await;
                    killed.extend(pid.parse::<u32>().ok());
                }
            }
            // A namespace (and its veth) goes only with its last process.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while killed.iter().any(|p| alive(*p)) && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let _ = sh("ip", &["netns", "del", &ns]).await;
        }
    }
    // The host ends of the slot's veths (`sf{slot}{name}`, a name starting
    // with a letter), in case their namespaces were already gone.
    if let Ok(links) = sh("ip", &["-o", "link", "show"]).await {
        let prefix = format!("sf{slot}");
        for link in links.lines().filter_map(|l| l.split(':').nth(1)) {
            let name = link.trim().split('@').next().unwrap_or_default();
            if name
                .strip_prefix(&prefix)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_alphabetic()))
            {
                let _ = sh("ip", &["link", "del", name]).await;
            }
        }
    }
    let _ = sh("ip", &["link", "del", &format!("sfb{slot}")]).await;
    crate::disk::clean(&slot_dir(slot), slot).await;
    let _ = std::fs::remove_file(slot_file(slot));
}

/// An exclusive lock on `{SLOTS}/lock` (flock: released when the file
/// closes, also when the process dies).
pub struct SlotLock {
    _file: std::fs::File,
}

impl SlotLock {
    /// Wait for the lock.
    pub async fn take() -> anyhow::Result<Self> {
        std::fs::create_dir_all(SLOTS).with_context(|| format!("creating {SLOTS}"))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Path::new(SLOTS).join("lock"))?;
        let file = tokio::task::spawn_blocking(move || {
            rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map(|()| file)
        })
        .await?
        .context("locking the slots")?;
        Ok(Self { _file: file })
    }
}

/// Claim the first free slot: a file created only if absent.
pub fn claim() -> anyhow::Result<u32> {
    std::fs::create_dir_all(SLOTS).with_context(|| format!("creating {SLOTS}"))?;
    for slot in 0..MAX_SLOTS {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(slot_file(slot));
        if let Ok(mut f) = file {
            use std::io::Write as _;
            writeln!(f, "{}", std::process::id())?;
            return Ok(slot);
        }
    }
    bail!("every one of {MAX_SLOTS} slots is taken (see {SLOTS})")
}
