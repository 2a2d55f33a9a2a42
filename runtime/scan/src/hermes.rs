//! Hermes bytecode (React Native's compiled `index.android.bundle` /
//! `main.jsbundle`): its string table.
//!
//! The strings of a Hermes file sit back to back in one storage blob with
//! no separator (`http://a/apiwss://b/ws` in the bytes), so grepping the
//! bytes merges neighbours; the table gives each string's offset and
//! length. Layout (`BytecodeFileFormat.h` in facebook/hermes): a 128-byte
//! header, the function headers, string kinds, identifier hashes, the small
//! string table, the overflow table, then the storage. The function
//! header's size changed between bytecode versions (16 bytes, 12 in recent
//! ones): both are tried and the one whose string kinds add up to the
//! header's string count is taken, so an unknown layout is an error rather
//! than garbage.

/// The file's first eight bytes.
pub const MAGIC: [u8; 8] = [0xc6, 0x1f, 0xbc, 0x03, 0xc1, 0x03, 0x19, 0x1f];
const HEADER_SIZE: usize = 128;

/// A string of the table with the file offset of its first byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HermesString {
    /// Offset in the file.
    pub offset: u64,
    /// Decoded text.
    pub text: String,
}

/// What a Hermes file yields.
#[derive(Clone, Debug)]
pub struct Hermes {
    /// The bytecode version.
    pub version: u32,
    /// Every string, in table order.
    pub strings: Vec<HermesString>,
}

fn u32_at(d: &[u8], at: usize) -> Result<u32, String> {
    d.get(at..at.saturating_add(4))
        .filter(|b| b.len() == 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| format!("u32 at 0x{at:x} is past the end"))
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// Parse the string table of a Hermes bytecode file.
pub fn parse(d: &[u8]) -> Result<Hermes, String> {
    if d.len() < HEADER_SIZE || d[..8] != MAGIC {
        return Err("not Hermes bytecode".into());
    }
    let version = u32_at(d, 8)?;
    let field = |i: usize| u32_at(d, 0x20 + 4 * i).map(|v| v as usize);
    let function_count = field(2)?;
    let kind_count = field(3)?;
    let identifier_count = field(4)?;
    let string_count = field(5)?;
    let overflow_count = field(6)?;
    let storage_size = field(7)?;
    let fits = |n: usize| n <= d.len();
    if ![
        function_count,
        kind_count,
        identifier_count,
        string_count,
        overflow_count,
    ]
    .iter()
    .all(|&n| fits(n.saturating_mul(4)))
        || !fits(storage_size)
    {
        return Err(format!("version {version}: counts larger than the file"));
    }
    let mut last_err = String::new();
    for function_header in [12usize, 16] {
        match layout(d, function_header, function_count, kind_count, string_count) {
            Ok(kinds_end) => {
                let hashes = kinds_end;
                let small = align4(hashes + 4 * identifier_count);
                let overflow = align4(small + 4 * string_count);
                let storage = align4(overflow + 8 * overflow_count);
                if storage.saturating_add(storage_size) > d.len() {
                    last_err = format!("string storage runs past the end ({function_header})");
                    continue;
                }
                let blob = &d[storage..storage + storage_size];
                let mut strings = Vec::with_capacity(string_count);
                for i in 0..string_count {
                    let entry = u32_at(d, small + 4 * i)?;
                    let utf16 = entry & 1 == 1;
                    let mut offset = ((entry >> 1) & 0x7f_ffff) as usize;
                    let mut length = (entry >> 24) as usize;
                    if length == 0xff {
                        let o = overflow + 8 * offset;
                        if offset >= overflow_count {
                            return Err(format!("string {i}: overflow entry {offset} is missing"));
                        }
                        offset = u32_at(d, o)? as usize;
                        length = u32_at(d, o + 4)? as usize;
                    }
                    let bytes = if utf16 {
                        length.saturating_mul(2)
                    } else {
                        length
                    };
                    let s = blob
                        .get(offset..offset.saturating_add(bytes))
                        .ok_or_else(|| format!("string {i} runs past the string storage"))?;
                    let text = if utf16 {
                        let units: Vec<u16> = s
                            .chunks_exact(2)
                            .map(|c| u16::from_le_bytes([c[0], c[1]]))
                            .collect();
                        String::from_utf16_lossy(&units)
                    } else {
                        s.iter().map(|&b| char::from(b)).collect()
                    };
                    strings.push(HermesString {
                        offset: (storage + offset) as u64,
                        text,
                    });
                }
                return Ok(Hermes { version, strings });
            }
            Err(e) => last_err = e,
        }
    }
    Err(format!(
        "Hermes bytecode version {version}: layout not recognised ({last_err})"
    ))
}

/// Where the string kinds end, if a function header of `size` bytes gives
/// string kinds that add up to `string_count`.
fn layout(
    d: &[u8],
    size: usize,
    functions: usize,
    kinds: usize,
    string_count: usize,
) -> Result<usize, String> {
    let start = align4(HEADER_SIZE + size.saturating_mul(functions));
    let mut total: usize = 0;
    for k in 0..kinds {
        let entry = u32_at(d, start + 4 * k)?;
        total = total.saturating_add((entry & 0x7fff_ffff) as usize);
    }
    if total != string_count {
        return Err(format!(
            "with {size}-byte function headers the string kinds count {total}, not {string_count}"
        ));
    }
    Ok(start + 4 * kinds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_or_foreign_file_is_an_error() {
        assert!(parse(&MAGIC).is_err());
        let mut d = vec![0u8; 256];
        d[..8].copy_from_slice(&MAGIC);
        // A billion strings claimed.
        d[0x34..0x38].copy_from_slice(&1_000_000_000u32.to_le_bytes());
        assert!(parse(&d).is_err());
    }
}
