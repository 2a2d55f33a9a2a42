//! Dalvik executables (`classes*.dex`): the string table, and the initial
//! values of static fields (`static final String API_KEY = "..."` keeps
//! its name beside its value here, which the string table alone loses).
//!
//! Format: <https://source.android.com/docs/core/runtime/dex-format>. Every
//! offset and count is checked against the file before it is used; a
//! malformed file is an error, never a panic, and the work is linear in the
//! file's size.

/// A string of the table, with the file offset of its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DexString {
    /// Index in `string_ids`.
    pub index: u32,
    /// Offset of its `string_data_item`.
    pub offset: u64,
    /// The text (modified UTF-8 decoded; unpaired surrogates replaced).
    pub text: String,
}

/// A static field's initial string value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticString {
    /// The class descriptor, e.g. `Lcom/example/Config;`.
    pub class: String,
    /// The field's name.
    pub field: String,
    /// Index of the value in the string table.
    pub string: u32,
    /// Offset of the class's `encoded_array_item`.
    pub offset: u64,
}

/// What a DEX file yields.
#[derive(Clone, Debug, Default)]
pub struct Dex {
    /// The DEX version (`035` ... `041`).
    pub version: String,
    /// Every string, in table order.
    pub strings: Vec<DexString>,
    /// Static fields initialised with a string.
    pub statics: Vec<StaticString>,
}

/// The magic's first four bytes.
pub const MAGIC: &[u8; 4] = b"dex\n";
const HEADER_SIZE: usize = 0x70;
const ENDIAN_CONSTANT: u32 = 0x1234_5678;
/// Deepest nesting of encoded arrays and annotations followed.
const MAX_VALUE_DEPTH: u32 = 16;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u32(&self, at: usize) -> Result<u32, String> {
        let b = self
            .0
            .get(at..at.checked_add(4).ok_or("offset overflow")?)
            .ok_or_else(|| format!("u32 at 0x{at:x} is past the end"))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn uleb(&self, at: &mut usize) -> Result<u32, String> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let b = *self
                .0
                .get(*at)
                .ok_or_else(|| format!("uleb128 at 0x{at:x} is past the end"))?;
            *at += 1;
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("uleb128 before 0x{at:x} is longer than 5 bytes"))
    }

    /// A table of `count` items of `size` bytes at `off`, checked to fit.
    fn table(&self, what: &str, count: u32, off: u32, size: usize) -> Result<usize, String> {
        let end = (off as usize)
            .checked_add((count as usize).checked_mul(size).ok_or("size overflow")?)
            .ok_or("size overflow")?;
        if count > 0 && end > self.0.len() {
            return Err(format!(
                "{what}: {count} entries at 0x{off:x} run past the end of the file"
            ));
        }
        Ok(off as usize)
    }
}

/// Parse a DEX file.
pub fn parse(data: &[u8]) -> Result<Dex, String> {
    if data.len() < HEADER_SIZE || &data[..4] != MAGIC || data[7] != 0 {
        return Err("not a DEX file (bad magic or shorter than its header)".into());
    }
    let version = String::from_utf8_lossy(&data[4..7]).into_owned();
    let b = Bytes(data);
    if b.u32(0x28)? != ENDIAN_CONSTANT {
        return Err("byte-swapped or corrupt DEX (endian tag)".into());
    }
    let header_size = b.u32(0x24)? as usize;
    if header_size < HEADER_SIZE || header_size > data.len() {
        return Err(format!("header size 0x{header_size:x} is impossible"));
    }
    let strings_off = b.table("string_ids", b.u32(0x38)?, b.u32(0x3c)?, 4)?;
    let string_count = b.u32(0x38)?;
    let mut strings = Vec::with_capacity(string_count.min(1 << 20) as usize);
    for index in 0..string_count {
        let data_off = b.u32(strings_off + 4 * index as usize)? as usize;
        let mut at = data_off;
        let _utf16_len = b.uleb(&mut at)?;
        let rest = data
            .get(at..)
            .ok_or_else(|| format!("string {index}: data at 0x{data_off:x} is past the end"))?;
        let len = rest
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| format!("string {index}: no terminating NUL"))?;
        strings.push(DexString {
            index,
            offset: data_off as u64,
            text: mutf8(&rest[..len]),
        });
    }
    let statics = statics(&b, &strings).unwrap_or_default();
    Ok(Dex {
        version,
        strings,
        statics,
    })
}

/// Decode modified UTF-8 (Java's: NUL as two bytes, supplementary
/// characters as surrogate pairs of three bytes each).
pub fn mutf8(bytes: &[u8]) -> String {
    if bytes.is_ascii() {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let mut units: Vec<u16> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let a = bytes[i];
        let cont = |k: usize| bytes.get(i + k).map_or(0, |c| u16::from(c & 0x3f));
        if a < 0x80 {
            units.push(u16::from(a));
            i += 1;
        } else if a & 0xe0 == 0xc0 {
            units.push((u16::from(a & 0x1f) << 6) | cont(1));
            i += 2;
        } else if a & 0xf0 == 0xe0 {
            units.push((u16::from(a & 0x0f) << 12) | (cont(1) << 6) | cont(2));
            i += 3;
        } else {
            units.push(0xfffd);
            i += 1;
        }
    }
    String::from_utf16_lossy(&units)
}

/// Static fields whose initial value is a string.
fn statics(b: &Bytes<'_>, strings: &[DexString]) -> Result<Vec<StaticString>, String> {
    let text = |i: u32| strings.get(i as usize).map(|s| s.text.as_str());
    let type_count = b.u32(0x40)?;
    let types_off = b.table("type_ids", type_count, b.u32(0x44)?, 4)?;
    let field_count = b.u32(0x50)?;
    let fields_off = b.table("field_ids", field_count, b.u32(0x54)?, 8)?;
    let class_count = b.u32(0x60)?;
    let classes_off = b.table("class_defs", class_count, b.u32(0x64)?, 32)?;
    let mut out = Vec::new();
    for c in 0..class_count as usize {
        let def = classes_off + 32 * c;
        let class_data = b.u32(def + 24)? as usize;
        let static_values = b.u32(def + 28)? as usize;
        if class_data == 0 || static_values == 0 {
            continue;
        }
        let class_idx = b.u32(def)?;
        let class = if class_idx < type_count {
            text(b.u32(types_off + 4 * class_idx as usize)?).unwrap_or("?")
        } else {
            "?"
        };
        // class_data_item: the static fields' ids, in order.
        let mut at = class_data;
        let static_fields = b.uleb(&mut at)?;
        for _ in 0..3 {
            b.uleb(&mut at)?;
        }
        let mut field_ids = Vec::new();
        let mut field_idx: u32 = 0;
        for _ in 0..static_fields.min(1 << 16) {
            field_idx = field_idx.wrapping_add(b.uleb(&mut at)?);
            b.uleb(&mut at)?;
            field_ids.push(field_idx);
        }
        // encoded_array_item: one value per static field, in the same order.
        let mut at = static_values;
        let count = b.uleb(&mut at)?;
        for (i, &field) in field_ids.iter().enumerate().take(count as usize) {
            let value = encoded_value(b, &mut at, 0)?;
            let (Some(string), true) = (value, field < field_count) else {
                continue;
            };
            let _ = i;
            let name_idx = b.u32(fields_off + 8 * field as usize + 4)?;
            out.push(StaticString {
                class: class.to_owned(),
                field: text(name_idx).unwrap_or("?").to_owned(),
                string,
                offset: static_values as u64,
            });
        }
    }
    Ok(out)
}

/// Read one `encoded_value`; the string index when it is a string.
fn encoded_value(b: &Bytes<'_>, at: &mut usize, depth: u32) -> Result<Option<u32>, String> {
    if depth > MAX_VALUE_DEPTH {
        return Err("encoded values nested too deep".into());
    }
    let head = *b.0.get(*at).ok_or("encoded value past the end")?;
    *at += 1;
    let (kind, arg) = (head & 0x1f, usize::from(head >> 5));
    match kind {
        0x17 => {
            let bytes =
                b.0.get(*at..*at + arg + 1)
                    .ok_or("string value past the end")?;
            *at += arg + 1;
            let mut idx: u32 = 0;
            for (i, byte) in bytes.iter().enumerate().take(4) {
                idx |= u32::from(*byte) << (8 * i);
            }
            Ok(Some(idx))
        }
        0x00 | 0x02 | 0x03 | 0x04 | 0x06 | 0x10 | 0x11 | 0x15 | 0x16 | 0x18 | 0x19 | 0x1a
        | 0x1b => {
            *at += arg + 1;
            Ok(None)
        }
        0x1c => {
            let n = b.uleb(at)?;
            for _ in 0..n {
                encoded_value(b, at, depth + 1)?;
            }
            Ok(None)
        }
        0x1d => {
            b.uleb(at)?;
            let n = b.uleb(at)?;
            for _ in 0..n {
                b.uleb(at)?;
                encoded_value(b, at, depth + 1)?;
            }
            Ok(None)
        }
        0x1e | 0x1f => Ok(None),
        other => Err(format!("unknown encoded value type 0x{other:02x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modified_utf8_decodes_nul_and_surrogate_pairs() {
        assert_eq!(mutf8(b"wss://a"), "wss://a");
        assert_eq!(mutf8(&[0xc0, 0x80]), "\0");
        assert_eq!(mutf8(&[0xc3, 0xa9]), "é");
        // U+1F600 as a CESU-8 surrogate pair.
        assert_eq!(mutf8(&[0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80]), "\u{1F600}");
    }

    #[test]
    fn malformed_files_are_errors() {
        assert!(parse(b"dex\n035\0").is_err());
        let mut header = vec![0u8; 0x70];
        header[..8].copy_from_slice(b"dex\n035\0");
        header[0x24] = 0x70;
        header[0x28..0x2c].copy_from_slice(&ENDIAN_CONSTANT.to_le_bytes());
        // A million strings claimed in a 112-byte file.
        header[0x38..0x3c].copy_from_slice(&1_000_000u32.to_le_bytes());
        header[0x3c] = 0x70;
        let err = parse(&header).err().unwrap_or_default();
        assert!(err.contains("run past the end"), "{err}");
        header[0x38..0x3c].copy_from_slice(&0u32.to_le_bytes());
        assert!(parse(&header).is_ok_and(|d| d.strings.is_empty()));
    }
}
