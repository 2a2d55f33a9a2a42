//! Opening the package: an `.apk`, `.aab` or `.ipa` (zip archives, read
//! with the `zip` crate) or a folder of one unpacked. Every file is handed
//! to a visitor with its path; archives inside the package are opened in
//! turn (`outer.apk!/inner.apk!/classes.dex`), to a bounded depth. Nothing
//! is ever written to disk, and every byte counts against the [`Budget`].

use std::io::{Cursor, Read, Seek};
use std::path::{Component, Path};

use crate::limits::{Budget, Refusal};
use crate::report::PackageKind;

/// Extensions of archives opened in turn when found inside the package.
const NESTED_ARCHIVES: &[&str] = &[".apk", ".aab", ".jar", ".aar", ".zip", ".apks", ".xapk"];

/// Something that takes each file of the package.
pub trait Visitor {
    /// One file: its path in the package and its bytes.
    fn file(&mut self, path: &str, data: &[u8], budget: &Budget) -> Result<(), Refusal>;
    /// A file that could not be read (an unsupported compression method,
    /// encryption), with the reason; the scan goes on.
    fn unreadable(&mut self, path: &str, why: String);
}

/// What kind of package the names describe.
pub fn kind_of(names: &[String]) -> PackageKind {
    if names.iter().any(|n| n == "AndroidManifest.xml") {
        PackageKind::Apk
    } else if names
        .iter()
        .any(|n| n == "base/manifest/AndroidManifest.xml")
    {
        PackageKind::Aab
    } else if names
        .iter()
        .any(|n| (n.starts_with("Payload/") && n.contains(".app/")) || n == "Info.plist")
    {
        PackageKind::Ipa
    } else {
        PackageKind::Unknown
    }
}

/// Read `app` (a file or a folder) and hand every file to `visitor`.
pub fn walk(
    app: &Path,
    budget: &mut Budget,
    visitor: &mut dyn Visitor,
) -> Result<PackageKind, Refusal> {
    let meta = std::fs::symlink_metadata(app).map_err(|e| Refusal::BadArchive {
        what: app.display().to_string(),
        error: e.to_string(),
    })?;
    if meta.is_dir() {
        let mut files = Vec::new();
        list_dir(app, app, budget, &mut files)?;
        let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        let kind = kind_of(&names);
        for (name, path) in files {
            budget.clock(&name)?;
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            budget.declared(&name, size, size)?;
            let data = match std::fs::File::open(&path) {
                Ok(f) => read_bounded(f, &name, budget)?,
                Err(e) => {
                    visitor.unreadable(&name, e.to_string());
                    continue;
                }
            };
            dispatch(&name, &data, 0, budget, visitor)?;
        }
        return Ok(kind);
    }
    let file = std::fs::File::open(app).map_err(|e| Refusal::BadArchive {
        what: app.display().to_string(),
        error: e.to_string(),
    })?;
    archive(file, &app.display().to_string(), "", 0, budget, visitor)
}

/// Read a package held in memory (a zip archive).
pub fn walk_bytes(
    data: &[u8],
    budget: &mut Budget,
    visitor: &mut dyn Visitor,
) -> Result<PackageKind, Refusal> {
    archive(Cursor::new(data), "(memory)", "", 0, budget, visitor)
}

/// Every regular file under `dir`, relative names with `/`; symbolic links
/// are not followed (a link could point anywhere on this machine).
fn list_dir(
    root: &Path,
    dir: &Path,
    budget: &mut Budget,
    out: &mut Vec<(String, std::path::PathBuf)>,
) -> Result<(), Refusal> {
    let entries = std::fs::read_dir(dir).map_err(|e| Refusal::BadArchive {
        what: dir.display().to_string(),
        error: e.to_string(),
    })?;
    let mut paths: Vec<std::path::PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            list_dir(root, &path, budget, out)?;
        } else if meta.is_file() {
            budget.entry()?;
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .filter_map(|c| match c {
                    Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("/");
            out.push((rel, path));
        }
    }
    Ok(())
}

/// Read at most the entry bound (plus one byte, to notice a lie), counting
/// every byte.
fn read_bounded(mut r: impl Read, name: &str, budget: &mut Budget) -> Result<Vec<u8>, Refusal> {
    let cap = budget.limits.max_entry_bytes;
    let mut data = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Refusal::BadArchive {
                    what: name.to_owned(),
                    error: e.to_string(),
                });
            }
        };
        budget.read(name, n as u64)?;
        if data.len() as u64 + n as u64 > cap {
            return Err(Refusal::EntryTooLarge {
                entry: name.to_owned(),
                limit: cap,
            });
        }
        data.extend_from_slice(&chunk[..n]);
        budget.clock(name)?;
    }
    Ok(data)
}

/// Read a zip archive; `prefix` is the path of the archive inside the
/// package (`""` for the package itself).
fn archive<R: Read + Seek>(
    reader: R,
    what: &str,
    prefix: &str,
    depth: u32,
    budget: &mut Budget,
    visitor: &mut dyn Visitor,
) -> Result<PackageKind, Refusal> {
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| Refusal::BadArchive {
        what: what.to_owned(),
        error: e.to_string(),
    })?;
    if zip.len() as u64 > budget.limits.max_entries {
        return Err(Refusal::TooManyEntries {
            limit: budget.limits.max_entries,
        });
    }
    let names: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .collect();
    let kind = kind_of(&names);
    for i in 0..zip.len() {
        budget.entry()?;
        budget.clock(what)?;
        let mut entry = match zip.by_index(i) {
            Ok(e) => e,
            Err(e) => {
                let name = format!("{prefix}entry #{i}");
                visitor.unreadable(&name, e.to_string());
                continue;
            }
        };
        let raw_name = entry.name().map(|n| n.into_owned()).unwrap_or_default();
        let name = format!("{prefix}{raw_name}");
        if entry.enclosed_name().is_none() || raw_name.starts_with('/') || raw_name.contains('\\') {
            return Err(Refusal::PathTraversal { entry: name });
        }
        if entry.is_dir() {
            continue;
        }
        budget.declared(&name, entry.size(), entry.compressed_size())?;
        let data = read_bounded(&mut entry, &name, budget)?;
        drop(entry);
        dispatch(&name, &data, depth, budget, visitor)?;
    }
    Ok(kind)
}

/// A file: an archive to open in turn, or one for the visitor.
fn dispatch(
    name: &str,
    data: &[u8],
    depth: u32,
    budget: &mut Budget,
    visitor: &mut dyn Visitor,
) -> Result<(), Refusal> {
    let lower = name.to_ascii_lowercase();
    let nested =
        data.starts_with(b"PK\x03\x04") && NESTED_ARCHIVES.iter().any(|ext| lower.ends_with(ext));
    if nested {
        if depth + 1 > budget.limits.max_nesting {
            return Err(Refusal::TooDeep {
                entry: name.to_owned(),
                limit: budget.limits.max_nesting,
            });
        }
        // A nested archive is read out of memory already counted once; its
        // own entries count again, as the bytes they inflate to.
        return archive(
            Cursor::new(data),
            name,
            &format!("{name}!/"),
            depth + 1,
            budget,
            visitor,
        )
        .map(|_| ());
    }
    visitor.file(name, data, budget)
}
