//! What a scan may cost, whatever the package holds: every byte read out of
//! an archive, every entry, every nested archive and every second is
//! counted against one [`Budget`], and going over any bound refuses the
//! package with a [`Refusal`] that says which bound and where.
//!
//! Declared sizes in a zip's directory can lie, so they are checked before
//! reading (cheap refusals of obvious bombs) *and* the bytes actually
//! inflated are counted while reading.

use std::time::{Duration, Instant};

/// Most entries (files) in a package, nested archives included. The
/// largest real package in the tests has 3,841.
pub const DEFAULT_MAX_ENTRIES: u64 = 50_000;
/// Most bytes one entry may inflate to. Real DEX files reach ~11 MiB,
/// Flutter's `libapp.so` and `libflutter.so` tens of MiB.
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 256 << 20;
/// Most bytes all entries together may inflate to.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 2 << 30;
/// Highest inflated / compressed ratio of an entry larger than
/// [`RATIO_APPLIES_ABOVE`]. Deflate cannot do better than ~1032:1; real
/// code and resources stay under ~20:1, zip bombs are built at 1000:1.
pub const DEFAULT_MAX_RATIO: u64 = 200;
/// Entries smaller than this are not held to the ratio (a 4 KiB file of
/// spaces is legitimate and compresses 100:1).
pub const RATIO_APPLIES_ABOVE: u64 = 1 << 20;
/// Deepest archive inside an archive (an APK inside an APK inside ...).
pub const DEFAULT_MAX_NESTING: u32 = 3;
/// Deepest array/dict nesting in a property list, and the most plist
/// events (a plist whose objects share children expands exponentially).
pub const MAX_PLIST_DEPTH: usize = 64;
/// See [`MAX_PLIST_DEPTH`].
pub const MAX_PLIST_EVENTS: usize = 250_000;
/// Wall-clock bound on the reading (not on `--probe`, which has its own).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The bounds of one scan.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// See [`DEFAULT_MAX_ENTRIES`].
    pub max_entries: u64,
    /// See [`DEFAULT_MAX_ENTRY_BYTES`].
    pub max_entry_bytes: u64,
    /// See [`DEFAULT_MAX_TOTAL_BYTES`].
    pub max_total_bytes: u64,
    /// See [`DEFAULT_MAX_RATIO`].
    pub max_ratio: u64,
    /// See [`DEFAULT_MAX_NESTING`].
    pub max_nesting: u32,
    /// See [`DEFAULT_TIMEOUT`].
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            max_ratio: DEFAULT_MAX_RATIO,
            max_nesting: DEFAULT_MAX_NESTING,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Why a package was refused: the scan stops and reports no findings,
/// since a package built to defeat the reader can hide anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// More entries than [`Limits::max_entries`].
    TooManyEntries { limit: u64 },
    /// One entry inflates past [`Limits::max_entry_bytes`].
    EntryTooLarge { entry: String, limit: u64 },
    /// All entries together inflate past [`Limits::max_total_bytes`].
    TotalTooLarge { entry: String, limit: u64 },
    /// An entry's declared ratio is past [`Limits::max_ratio`].
    RatioTooHigh {
        entry: String,
        ratio: u64,
        limit: u64,
    },
    /// Archives nested deeper than [`Limits::max_nesting`].
    TooDeep { entry: String, limit: u32 },
    /// An entry name that leaves the archive (`../`, an absolute path):
    /// "Zip Slip", which Android's installer refuses too.
    PathTraversal { entry: String },
    /// The scan ran past [`Limits::timeout`].
    Timeout { limit: Duration, at: String },
    /// The archive itself is not a readable zip.
    BadArchive { what: String, error: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooManyEntries { limit } => write!(
                f,
                "the package has more than {limit} entries (a bound against archive bombs)"
            ),
            Self::EntryTooLarge { entry, limit } => write!(
                f,
                "{entry}: inflates past {} MiB, the bound per entry (zip bomb?)",
                limit >> 20
            ),
            Self::TotalTooLarge { entry, limit } => write!(
                f,
                "{entry}: the package inflates past {} MiB in total, the bound (zip bomb?)",
                limit >> 20
            ),
            Self::RatioTooHigh {
                entry,
                ratio,
                limit,
            } => write!(
                f,
                "{entry}: compressed {ratio}:1, past the bound of {limit}:1 (zip bomb?)"
            ),
            Self::TooDeep { entry, limit } => {
                write!(f, "{entry}: archives nested deeper than {limit} levels")
            }
            Self::PathTraversal { entry } => write!(
                f,
                "entry {entry:?} points outside the archive (path traversal, \"zip slip\"): \
                 no installer should accept this package"
            ),
            Self::Timeout { limit, at } => write!(
                f,
                "the scan ran past its bound of {} s (at {at})",
                limit.as_secs()
            ),
            Self::BadArchive { what, error } => write!(f, "{what}: not a readable zip: {error}"),
        }
    }
}

impl std::error::Error for Refusal {}

/// The running count against [`Limits`].
#[derive(Debug)]
pub struct Budget {
    /// The bounds.
    pub limits: Limits,
    started: Instant,
    entries: u64,
    bytes: u64,
}

impl Budget {
    /// A fresh budget; the clock starts now.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            started: Instant::now(),
            entries: 0,
            bytes: 0,
        }
    }

    /// Count one more entry.
    pub fn entry(&mut self) -> Result<(), Refusal> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(Refusal::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    /// Check an entry's declared sizes before reading it.
    pub fn declared(&self, entry: &str, size: u64, compressed: u64) -> Result<(), Refusal> {
        if size > self.limits.max_entry_bytes {
            return Err(Refusal::EntryTooLarge {
                entry: entry.to_owned(),
                limit: self.limits.max_entry_bytes,
            });
        }
        if size > RATIO_APPLIES_ABOVE {
            let ratio = size / compressed.max(1);
            if ratio > self.limits.max_ratio {
                return Err(Refusal::RatioTooHigh {
                    entry: entry.to_owned(),
                    ratio,
                    limit: self.limits.max_ratio,
                });
            }
        }
        self.room(entry, size)
    }

    /// Whether `more` bytes still fit in the total.
    pub fn room(&self, entry: &str, more: u64) -> Result<(), Refusal> {
        if self.bytes.saturating_add(more) > self.limits.max_total_bytes {
            return Err(Refusal::TotalTooLarge {
                entry: entry.to_owned(),
                limit: self.limits.max_total_bytes,
            });
        }
        Ok(())
    }

    /// Count bytes actually read.
    pub fn read(&mut self, entry: &str, n: u64) -> Result<(), Refusal> {
        self.room(entry, n)?;
        self.bytes += n;
        Ok(())
    }

    /// Fail once the scan has run past its time bound.
    pub fn clock(&self, at: &str) -> Result<(), Refusal> {
        if self.started.elapsed() > self.limits.timeout {
            return Err(Refusal::Timeout {
                limit: self.limits.timeout,
                at: at.to_owned(),
            });
        }
        Ok(())
    }

    /// Bytes inflated so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Entries seen so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bound_refuses_with_its_own_reason() {
        let limits = Limits {
            max_entries: 2,
            max_entry_bytes: 10 << 20,
            max_total_bytes: 12 << 20,
            ..Limits::default()
        };
        let mut b = Budget::new(limits);
        assert!(b.entry().is_ok() && b.entry().is_ok());
        assert_eq!(b.entry(), Err(Refusal::TooManyEntries { limit: 2 }));
        assert!(matches!(
            b.declared("a", 11 << 20, 11 << 20),
            Err(Refusal::EntryTooLarge { .. })
        ));
        assert!(matches!(
            b.declared("a", 5 << 20, 1 << 10),
            Err(Refusal::RatioTooHigh { ratio: 5120, .. })
        ));
        // Small entries are not held to the ratio.
        assert!(b.declared("a", 4096, 1).is_ok());
        assert!(b.read("a", 8 << 20).is_ok());
        assert!(matches!(
            b.read("b", 8 << 20),
            Err(Refusal::TotalTooLarge { .. })
        ));
        assert!(
            Refusal::PathTraversal {
                entry: "../x".into()
            }
            .to_string()
            .contains("path traversal")
        );
    }
}
