//! Native code: ELF shared libraries (Android `lib/*/*.so`, Flutter's
//! `libapp.so`) and Mach-O executables and frameworks (iOS, thin or
//! universal). Parsed with the `object` crate; the strings are the
//! printable runs of the sections that hold data (read-only strings and
//! constants, initialised data), never of the code.

use object::read::macho::{FatArch, MachOFatFile32, MachOFatFile64};
use object::{FileKind, Object, ObjectSection, SectionKind};

/// Shortest printable run kept as a string.
pub const MIN_RUN: usize = 6;
/// Most architectures read out of a universal binary.
const MAX_ARCHES: usize = 8;

/// A string found in a data section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeString {
    /// Offset in the file.
    pub offset: u64,
    /// The section it was in (`.rodata`, `__TEXT,__cstring`).
    pub section: String,
    /// The text.
    pub text: String,
}

/// Which format a native binary is, if it is one.
pub fn kind(d: &[u8]) -> Option<&'static str> {
    match FileKind::parse(d).ok()? {
        FileKind::Elf32 | FileKind::Elf64 => Some("elf"),
        FileKind::MachO32 | FileKind::MachO64 => Some("mach_o"),
        // 0xcafebabe is also a Java class file's magic: a universal binary
        // names few architectures, a class file's "count" is its version.
        FileKind::MachOFat32 | FileKind::MachOFat64 => {
            let count = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
            (1..=MAX_ARCHES as u32).contains(&count).then_some("mach_o")
        }
        _ => None,
    }
}

/// The strings of an ELF or Mach-O file (every architecture of a universal one).
pub fn strings(d: &[u8]) -> Result<Vec<NativeString>, String> {
    let mut out = Vec::new();
    match FileKind::parse(d).map_err(|e| e.to_string())? {
        FileKind::MachOFat32 => {
            let fat = MachOFatFile32::parse(d).map_err(|e| e.to_string())?;
            for arch in fat.arches().iter().take(MAX_ARCHES) {
                let (start, _) = arch.file_range();
                let slice = arch.data(d).map_err(|e| e.to_string())?;
                one(slice, start, &mut out)?;
            }
        }
        FileKind::MachOFat64 => {
            let fat = MachOFatFile64::parse(d).map_err(|e| e.to_string())?;
            for arch in fat.arches().iter().take(MAX_ARCHES) {
                let (start, _) = arch.file_range();
                let slice = arch.data(d).map_err(|e| e.to_string())?;
                one(slice, start, &mut out)?;
            }
        }
        _ => one(d, 0, &mut out)?,
    }
    Ok(out)
}

fn one(d: &[u8], base: u64, out: &mut Vec<NativeString>) -> Result<(), String> {
    let file = object::File::parse(d).map_err(|e| e.to_string())?;
    for section in file.sections() {
        let wanted = matches!(
            section.kind(),
            SectionKind::ReadOnlyString
                | SectionKind::ReadOnlyData
                | SectionKind::ReadOnlyDataWithRel
                | SectionKind::Data
        );
        let Some((start, size)) = section.file_range() else {
            continue;
        };
        if !wanted || size == 0 {
            continue;
        }
        let name = match (section.segment_name().ok().flatten(), section.name()) {
            (Some(seg), Ok(name)) => format!("{seg},{name}"),
            (None, Ok(name)) => name.to_owned(),
            _ => "?".to_owned(),
        };
        let data = section.data().map_err(|e| format!("{name}: {e}"))?;
        for (at, text) in printable_runs(data, MIN_RUN) {
            out.push(NativeString {
                offset: base + start + at as u64,
                section: name.clone(),
                text,
            });
        }
    }
    Ok(())
}

/// Runs of printable ASCII (and tab) at least `min` long, with their offsets.
pub fn printable_runs(d: &[u8], min: usize) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &b) in d.iter().enumerate() {
        let printable = (0x20..0x7f).contains(&b) || b == b'\t';
        match (printable, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if i - s >= min {
                    out.push((s, String::from_utf8_lossy(&d[s..i]).into_owned()));
                }
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start
        && d.len() - s >= min
    {
        out.push((s, String::from_utf8_lossy(&d[s..]).into_owned()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_at_unprintable_bytes() {
        let d = b"\0\0wss://a.example/ws\0ab\0https://b.example\x01";
        let runs = printable_runs(d, MIN_RUN);
        assert_eq!(
            runs,
            vec![
                (2, "wss://a.example/ws".to_owned()),
                (24, "https://b.example".to_owned())
            ]
        );
    }

    #[test]
    fn a_java_class_is_not_a_universal_binary() {
        // cafebabe, minor 0, major 52 (Java 8).
        let class = [0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 52, 0, 0, 0, 0];
        assert_eq!(kind(&class), None);
        assert!(strings(b"not a binary").is_err());
    }
}
