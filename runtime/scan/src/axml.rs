//! Android's binary XML (`AndroidManifest.xml` and `res/xml/*.xml` inside
//! an APK) and the string pool it shares with `resources.arsc`, whose
//! global pool holds every string resource (`strings.xml` values).
//!
//! Format: `ResourceTypes.h` in the Android framework (chunks of
//! `ResChunk_header`: a string pool, a resource id map, then namespace,
//! element and text chunks). Sizes and offsets are checked before use;
//! depth and element count are bounded; a malformed file is an error.

/// `RES_STRING_POOL_TYPE`.
const STRING_POOL: u16 = 0x0001;
/// `RES_TABLE_TYPE` (`resources.arsc`).
const TABLE: u16 = 0x0002;
/// `RES_XML_TYPE`.
const XML: u16 = 0x0003;
const XML_START_ELEMENT: u16 = 0x0102;
const XML_END_ELEMENT: u16 = 0x0103;
const XML_CDATA: u16 = 0x0104;
const XML_RESOURCE_MAP: u16 = 0x0180;
const UTF8_FLAG: u32 = 1 << 8;
/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 64;

/// A typed attribute value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A string (`TYPE_STRING`, or the raw text of an uncompiled value).
    Str(String),
    /// `TYPE_INT_BOOLEAN`.
    Bool(bool),
    /// `TYPE_INT_DEC` / `TYPE_INT_HEX`.
    Int(i64),
    /// `TYPE_REFERENCE`: a resource id such as `@xml/network_security_config`.
    Reference(u32),
    /// Anything else: the type and the data word.
    Other(u8, u32),
}

impl Value {
    /// `true`/`false` from a boolean or a string spelling one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            Self::Str(s) => match s.trim() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// The text of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An integer, or a string of digits.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            Self::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// One attribute.
#[derive(Clone, Debug)]
pub struct Attr {
    /// Its name as stored (may be empty in shrunk manifests: use `id`).
    pub name: String,
    /// The framework resource id of the attribute (`android:*`), if mapped.
    pub id: Option<u32>,
    /// Its value.
    pub value: Value,
}

/// One element with its children.
#[derive(Clone, Debug, Default)]
pub struct Element {
    /// Tag name.
    pub name: String,
    /// Attributes in file order.
    pub attrs: Vec<Attr>,
    /// Child elements.
    pub children: Vec<Element>,
    /// Text content (concatenated).
    pub text: String,
    /// Offset of its start chunk in the file.
    pub offset: u64,
}

impl Element {
    /// The attribute with this framework id, or else this name.
    pub fn attr(&self, id: u32, name: &str) -> Option<&Attr> {
        self.attrs
            .iter()
            .find(|a| a.id == Some(id))
            .or_else(|| self.attrs.iter().find(|a| a.name == name))
    }

    /// Every descendant (and itself) named `name`, depth first.
    pub fn find_all<'a>(&'a self, name: &str, out: &mut Vec<&'a Element>) {
        if self.name == name {
            out.push(self);
        }
        for c in &self.children {
            c.find_all(name, out);
        }
    }
}

fn u16_at(d: &[u8], at: usize) -> Result<u16, String> {
    d.get(at..at.saturating_add(2))
        .filter(|b| b.len() == 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| format!("u16 at 0x{at:x} is past the end"))
}

fn u32_at(d: &[u8], at: usize) -> Result<u32, String> {
    d.get(at..at.saturating_add(4))
        .filter(|b| b.len() == 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| format!("u32 at 0x{at:x} is past the end"))
}

/// A chunk's type, header size and total size, checked to fit in `d`.
fn chunk(d: &[u8], at: usize) -> Result<(u16, usize, usize), String> {
    let kind = u16_at(d, at)?;
    let header = usize::from(u16_at(d, at + 2)?);
    let size = u32_at(d, at + 4)? as usize;
    if header < 8 || size < header || at.saturating_add(size) > d.len() {
        return Err(format!(
            "chunk 0x{kind:04x} at 0x{at:x}: header {header} / size {size} do not fit the file"
        ));
    }
    Ok((kind, header, size))
}

/// A decoded string pool: each string with the offset of its data.
#[derive(Clone, Debug, Default)]
pub struct StringPool {
    /// The strings, in index order.
    pub strings: Vec<(u64, String)>,
}

impl StringPool {
    fn get(&self, i: u32) -> Option<&str> {
        self.strings.get(i as usize).map(|(_, s)| s.as_str())
    }
}

/// Decode the string pool chunk at `at`.
pub fn string_pool(d: &[u8], at: usize) -> Result<StringPool, String> {
    let (kind, header, size) = chunk(d, at)?;
    if kind != STRING_POOL || header < 28 {
        return Err(format!("expected a string pool at 0x{at:x}"));
    }
    let count = u32_at(d, at + 8)? as usize;
    let flags = u32_at(d, at + 16)?;
    let strings_start = at + u32_at(d, at + 20)? as usize;
    let end = at + size;
    if count.saturating_mul(4) > size {
        return Err(format!(
            "string pool at 0x{at:x}: {count} strings cannot fit"
        ));
    }
    let mut strings = Vec::with_capacity(count);
    for i in 0..count {
        let off = strings_start.saturating_add(u32_at(d, at + header + 4 * i)? as usize);
        if off >= end {
            return Err(format!("string {i} at 0x{off:x} is outside its pool"));
        }
        let text = if flags & UTF8_FLAG != 0 {
            let mut p = off;
            let len8 = |p: &mut usize| -> Result<usize, String> {
                let a = *d.get(*p).ok_or("string length past the end")?;
                *p += 1;
                if a & 0x80 != 0 {
                    let b = *d.get(*p).ok_or("string length past the end")?;
                    *p += 1;
                    Ok((usize::from(a & 0x7f) << 8) | usize::from(b))
                } else {
                    Ok(usize::from(a))
                }
            };
            let _chars = len8(&mut p)?;
            let bytes = len8(&mut p)?;
            let s = d
                .get(p..p + bytes)
                .filter(|_| p + bytes <= end)
                .ok_or_else(|| format!("string {i} runs past its pool"))?;
            String::from_utf8_lossy(s).into_owned()
        } else {
            let mut p = off;
            let a = usize::from(u16_at(d, p)?);
            p += 2;
            let units = if a & 0x8000 != 0 {
                let b = usize::from(u16_at(d, p)?);
                p += 2;
                ((a & 0x7fff) << 16) | b
            } else {
                a
            };
            let bytes = units.checked_mul(2).ok_or("string length overflow")?;
            let s = d
                .get(p..p + bytes)
                .filter(|_| p + bytes <= end)
                .ok_or_else(|| format!("string {i} runs past its pool"))?;
            let units: Vec<u16> = s
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        };
        strings.push((off as u64, text));
    }
    Ok(StringPool { strings })
}

/// Whether `d` starts like a binary XML file.
pub fn is_binary_xml(d: &[u8]) -> bool {
    d.len() >= 8 && u16_at(d, 0).ok() == Some(XML) && u16_at(d, 2).ok() == Some(8)
}

/// Whether `d` starts like a resource table.
pub fn is_resource_table(d: &[u8]) -> bool {
    d.len() >= 12 && u16_at(d, 0).ok() == Some(TABLE) && u16_at(d, 2).ok() == Some(12)
}

/// The global string pool of `resources.arsc`: every string value of the
/// app's resources.
pub fn resource_strings(d: &[u8]) -> Result<StringPool, String> {
    let (kind, header, _) = chunk(d, 0)?;
    if kind != TABLE {
        return Err("not a resource table".into());
    }
    string_pool(d, header)
}

/// A parsed binary XML document: its root element and the string pool.
#[derive(Clone, Debug)]
pub struct Document {
    /// The root element.
    pub root: Element,
    /// Every string of the file (attribute values, text, names).
    pub pool: StringPool,
}

/// Parse a binary XML file.
pub fn parse(d: &[u8]) -> Result<Document, String> {
    let (kind, header, size) = chunk(d, 0)?;
    if kind != XML {
        return Err("not Android binary XML".into());
    }
    let mut pool = StringPool::default();
    let mut ids: Vec<u32> = Vec::new();
    let mut stack: Vec<Element> = vec![Element::default()];
    let mut at = header;
    while at + 8 <= size {
        let (kind, header, csize) = chunk(d, at)?;
        match kind {
            STRING_POOL => pool = string_pool(d, at)?,
            XML_RESOURCE_MAP => {
                ids = (at + header..at + csize)
                    .step_by(4)
                    .filter_map(|p| u32_at(d, p).ok())
                    .collect();
            }
            XML_START_ELEMENT => {
                if stack.len() > MAX_DEPTH {
                    return Err(format!("elements nested deeper than {MAX_DEPTH}"));
                }
                let ext = at + header;
                let name = pool.get(u32_at(d, ext + 4)?).unwrap_or("").to_owned();
                let attr_start = usize::from(u16_at(d, ext + 8)?);
                let attr_size = usize::from(u16_at(d, ext + 10)?).max(20);
                let count = usize::from(u16_at(d, ext + 12)?);
                let mut attrs = Vec::with_capacity(count);
                for i in 0..count {
                    let a = ext + attr_start + i * attr_size;
                    if a + 20 > at + csize {
                        return Err(format!("attribute {i} of <{name}> runs past its chunk"));
                    }
                    let name_idx = u32_at(d, a + 4)?;
                    let raw = u32_at(d, a + 8)?;
                    let kind = d[a + 15];
                    let data = u32_at(d, a + 16)?;
                    let value = match kind {
                        0x03 => Value::Str(pool.get(data).unwrap_or("").to_owned()),
                        0x12 => Value::Bool(data != 0),
                        0x10 | 0x11 => Value::Int(i64::from(data as i32)),
                        0x01 => Value::Reference(data),
                        _ if raw != u32::MAX => Value::Str(pool.get(raw).unwrap_or("").to_owned()),
                        other => Value::Other(other, data),
                    };
                    attrs.push(Attr {
                        name: pool.get(name_idx).unwrap_or("").to_owned(),
                        id: ids.get(name_idx as usize).copied(),
                        value,
                    });
                }
                stack.push(Element {
                    name,
                    attrs,
                    offset: at as u64,
                    ..Element::default()
                });
            }
            XML_END_ELEMENT => {
                if stack.len() < 2 {
                    return Err(format!("unbalanced end element at 0x{at:x}"));
                }
                if let (Some(done), Some(parent)) = (stack.pop(), stack.last_mut()) {
                    parent.children.push(done);
                }
            }
            XML_CDATA => {
                let idx = u32_at(d, at + header)?;
                if let (Some(text), Some(top)) = (pool.get(idx), stack.last_mut()) {
                    top.text.push_str(text);
                }
            }
            _ => {}
        }
        at += csize;
    }
    // Close what a truncated file left open.
    while stack.len() > 1 {
        if let (Some(done), Some(parent)) = (stack.pop(), stack.last_mut()) {
            parent.children.push(done);
        }
    }
    let mut doc = stack.pop().unwrap_or_default();
    if doc.children.len() != 1 {
        return Err("no single root element".into());
    }
    let root = doc.children.pop().unwrap_or_default();
    Ok(Document { root, pool })
}
