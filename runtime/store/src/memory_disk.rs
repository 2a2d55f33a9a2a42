//! A disk in memory that can be made to fail: a redb storage backend for
//! testing what the store (and what is built on it) does when its disk
//! fails. Clones share the bytes and the switch, so a store can be opened
//! again on what a failed one left behind.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use redb::StorageBackend;

/// Bytes in memory behind redb's [`StorageBackend`], with a switch that
/// makes every write and sync fail (as a full or broken disk would).
#[derive(Clone, Debug, Default)]
pub struct MemoryDisk {
    bytes: Arc<RwLock<Vec<u8>>>,
    failing: Arc<AtomicBool>,
    /// Writes, resizes and syncs left before the disk stops
    /// ([`MemoryDisk::fail_after`]); 0: no such count.
    left: Arc<AtomicU64>,
}

impl MemoryDisk {
    /// An empty disk that works.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on every write, resize and sync fails (`true`), or works.
    pub fn fail(&self, failing: bool) {
        self.left.store(0, Ordering::SeqCst);
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// The next `n` writes, resizes and syncs work, then the disk fails
    /// as [`MemoryDisk::fail`] makes it (a crash at that point: what was
    /// written stays, nothing after it reaches the disk).
    pub fn fail_after(&self, n: u64) {
        self.failing.store(n == 0, Ordering::SeqCst);
        self.left.store(n, Ordering::SeqCst);
    }

    fn check(&self) -> io::Result<()> {
        let counted = self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if counted == Ok(1) {
            // That was the last one: from now on the disk fails.
            self.failing.store(true, Ordering::SeqCst);
            return Ok(());
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(io::Error::other("the disk failed (MemoryDisk::fail)"));
        }
        Ok(())
    }
}

impl StorageBackend for MemoryDisk {
    fn len(&self) -> io::Result<u64> {
        Ok(self
            .bytes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let bytes = self.bytes.read().unwrap_or_else(PoisonError::into_inner);
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let source = bytes
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "read past the end"))?;
        out.copy_from_slice(source);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        self.bytes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.check()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        let mut bytes = self.bytes.write().unwrap_or_else(PoisonError::into_inner);
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + data.len();
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[start..end].copy_from_slice(data);
        Ok(())
    }
}
