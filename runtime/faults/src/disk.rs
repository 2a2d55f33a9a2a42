//! The single node's disk: its store lives on a small ext4 file system in
//! a loop file, so the nemesis can fill it (a full disk) and throttle its
//! writes with the block I/O controller (a slow fsync: every fsync waits
//! for throttled writes).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::command::sh;

/// The largest file system [`Disk::fill`] agrees to fill.
const MAX_FILL_BYTES: u64 = 1 << 30;

/// The loop file system of one run.
#[derive(Debug)]
pub struct Disk {
    mount: PathBuf,
    /// `major:minor` of the loop device.
    device: String,
    cgroup: Cgroup,
}

/// Where the write throttle lives: cgroup v1's blkio controller or v2's io.
#[derive(Debug)]
enum Cgroup {
    V1(PathBuf),
    V2(PathBuf),
}

fn mount_point(dir: &Path) -> PathBuf {
    dir.join("disk")
}

fn cgroup_for(slot: u32) -> Cgroup {
    let v1 = Path::new("/sys/fs/cgroup/blkio");
    let name = format!("sluice-faults-{slot}");
    if v1.is_dir() {
        Cgroup::V1(v1.join(name))
    } else {
        Cgroup::V2(Path::new("/sys/fs/cgroup").join(name))
    }
}

impl Cgroup {
    fn dir(&self) -> &Path {
        match self {
            Cgroup::V1(p) | Cgroup::V2(p) => p,
        }
    }
}

impl Disk {
    /// Make and mount a file system of `mib` MiB in `dir`, for `slot`.
    pub async fn create(dir: &Path, slot: u32, mib: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let image = dir.join("disk.img");
        let mount = mount_point(dir);
        std::fs::create_dir_all(&mount)?;
        let image_s = image.display().to_string();
        let mount_s = mount.display().to_string();
        sh("truncate", &["-s", &format!("{mib}M"), &image_s]).await?;
        sh("mkfs.ext4", &["-q", "-F", "-m", "0", &image_s]).await?;
        sh("mount", &["-o", "loop", &image_s, &mount_s]).await?;
        let source = sh("findmnt", &["-n", "-o", "SOURCE", &mount_s]).await?;
        let device = sh("lsblk", &["-dno", "MAJ:MIN", source.trim()]).await?;
        let device = device.trim().to_owned();
        if device.is_empty() {
            bail!("no device number for {}", source.trim());
        }
        let cgroup = cgroup_for(slot);
        if let Cgroup::V2(_) = cgroup {
            let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+io");
        }
        std::fs::create_dir_all(cgroup.dir())
            .with_context(|| format!("creating the cgroup {}", cgroup.dir().display()))?;
        Ok(Self {
            mount,
            device,
            cgroup,
        })
    }

    /// The store's folder on it.
    pub fn store_dir(&self) -> PathBuf {
        self.mount.join("store")
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }

    /// Put `pid` under the write throttle (a process started or restarted).
    pub fn attach(&self, pid: u32) -> anyhow::Result<()> {
        std::fs::write(self.cgroup.dir().join("cgroup.procs"), pid.to_string())
            .context("moving the node into its cgroup")
    }

    /// Limit writes to `iops` per second, or lift the limit (`None`).
    pub fn throttle(&self, iops: Option<u32>) -> anyhow::Result<()> {
        let (file, line) = match &self.cgroup {
            Cgroup::V1(d) => (
                d.join("blkio.throttle.write_iops_device"),
                format!("{} {}", self.device, iops.unwrap_or(0)),
            ),
            Cgroup::V2(d) => (
                d.join("io.max"),
                format!(
                    "{} wiops={}",
                    self.device,
                    iops.map_or("max".to_owned(), |n| n.to_string())
                ),
            ),
        };
        std::fs::write(&file, line).with_context(|| format!("writing {}", file.display()))
    }

    /// Fill the file system to the last block; the bytes written. Refuses
    /// unless the folder is still the suite's own small mount: filling
    /// whatever lies beneath a vanished mount would fill the machine's disk.
    pub async fn fill(&self) -> anyhow::Result<u64> {
        let m = self.mount.display().to_string();
        let mounts = std::fs::read_to_string("/proc/mounts")?;
        if !mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(m.as_str()))
        {
            bail!("{m} is no longer mounted: not filling it");
        }
        let vfs = rustix::fs::statvfs(&self.mount)?;
        if vfs.f_blocks.saturating_mul(vfs.f_frsize) > MAX_FILL_BYTES {
            bail!("{m} is larger than the suite's disk: not filling it");
        }
        let path = self.filler();
        tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&path)?;
            let mut written = 0u64;
            for size in [1 << 20, 4096, 512] {
                let chunk = vec![0u8; size];
                while f.write_all(&chunk).is_ok() {
                    written += size as u64;
                }
            }
            let _ = f.sync_all();
            Ok(written)
        })
        .await?
    }

    /// Free what [`Disk::fill`] took.
    pub fn unfill(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(self.filler()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// Unmount and remove the disk in `dir` (of `slot`), its cgroup and the
/// folder, whatever is left.
pub async fn clean(dir: &Path, slot: u32) {
    let mount = mount_point(dir);
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let m = mount.display().to_string();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(m.as_str()))
    {
        let _ = sh("umount", &["-l", &m]).await;
    }
    let cgroup = cgroup_for(slot);
    if cgroup.dir().exists() {
        // Processes still in it were killed with their namespace; the
        // folder goes once it is empty.
        for _ in 0..20 {
            if std::fs::remove_dir(cgroup.dir()).is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
