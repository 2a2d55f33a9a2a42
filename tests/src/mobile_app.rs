//! A small builder of mobile app packages for the `sluice scan` tests:
//! Dalvik executables (valid enough for Debian's `dexdump` to read back),
//! Android binary XML (read back by `aapt dump xmltree`), zip archives
//! (well-formed through the `zip` crate, or hand-written with whatever
//! names and sizes a hostile package claims), binary plists (the `plist`
//! crate) and Mach-O objects (the `object` crate's writer).

use std::io::Write as _;

/// `android:` attribute resource ids used by the builder's manifests.
pub mod attr {
    /// `android:usesCleartextTraffic`.
    pub const USES_CLEARTEXT_TRAFFIC: u32 = 0x0101_04ec;
    /// `android:networkSecurityConfig`.
    pub const NETWORK_SECURITY_CONFIG: u32 = 0x0101_0527;
    /// `android:minSdkVersion`.
    pub const MIN_SDK_VERSION: u32 = 0x0101_020c;
    /// `android:targetSdkVersion`.
    pub const TARGET_SDK_VERSION: u32 = 0x0101_0270;
    /// `android:name`.
    pub const NAME: u32 = 0x0101_0003;
}

const ANDROID_NS: &str = "http://schemas.android.com/apk/res/android";

/// An attribute value of binary XML.
#[derive(Clone, Debug)]
pub enum XmlValue {
    /// `TYPE_STRING`.
    Str(String),
    /// `TYPE_INT_BOOLEAN`.
    Bool(bool),
    /// `TYPE_INT_DEC`.
    Int(i32),
    /// `TYPE_REFERENCE` (`@xml/...`).
    Reference(u32),
}

/// An element to write as binary XML.
#[derive(Clone, Debug, Default)]
pub struct XmlElement {
    /// Tag name.
    pub name: String,
    /// `(android attribute id or None, name, value)`.
    pub attrs: Vec<(Option<u32>, String, XmlValue)>,
    /// Text content, written as a CDATA chunk.
    pub text: Option<String>,
    /// Children.
    pub children: Vec<XmlElement>,
}

impl XmlElement {
    /// `<name>`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// With an `android:` attribute.
    pub fn android(mut self, id: u32, name: &str, value: XmlValue) -> Self {
        self.attrs.push((Some(id), name.into(), value));
        self
    }

    /// With a plain attribute.
    pub fn attr(mut self, name: &str, value: XmlValue) -> Self {
        self.attrs.push((None, name.into(), value));
        self
    }

    /// With text.
    pub fn text(mut self, text: &str) -> Self {
        self.text = Some(text.into());
        self
    }

    /// With a child.
    pub fn child(mut self, child: XmlElement) -> Self {
        self.children.push(child);
        self
    }
}

fn u16le(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn u32le(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// The strings of a document: attribute names with ids first (their order
/// is the resource map's), then every other string.
struct Pool {
    strings: Vec<String>,
    ids: Vec<u32>,
}

impl Pool {
    fn index(&mut self, s: &str) -> u32 {
        if let Some(i) = self.strings.iter().position(|x| x == s) {
            return i as u32;
        }
        self.strings.push(s.to_owned());
        (self.strings.len() - 1) as u32
    }

    fn collect(&mut self, e: &XmlElement) {
        for (id, name, _) in &e.attrs {
            if let Some(id) = id
                && !self.strings[..self.ids.len()].contains(name)
            {
                self.strings.insert(self.ids.len(), name.clone());
                self.ids.push(*id);
            }
        }
        for c in &e.children {
            self.collect(c);
        }
    }

    fn chunk(&self) -> Vec<u8> {
        let mut data = Vec::new();
        let mut offsets = Vec::new();
        for s in &self.strings {
            offsets.push(data.len() as u32);
            let units: Vec<u16> = s.encode_utf16().collect();
            u16le(&mut data, units.len() as u16);
            for u in units {
                u16le(&mut data, u);
            }
            u16le(&mut data, 0);
        }
        while data.len() % 4 != 0 {
            data.push(0);
        }
        let header = 28u32;
        let strings_start = header + 4 * self.strings.len() as u32;
        let mut out = Vec::new();
        u16le(&mut out, 0x0001);
        u16le(&mut out, header as u16);
        u32le(&mut out, strings_start + data.len() as u32);
        u32le(&mut out, self.strings.len() as u32);
        u32le(&mut out, 0);
        u32le(&mut out, 0);
        u32le(&mut out, strings_start);
        u32le(&mut out, 0);
        for o in offsets {
            u32le(&mut out, o);
        }
        out.extend_from_slice(&data);
        out
    }
}

/// Write `root` as Android binary XML (the format of a compiled
/// `AndroidManifest.xml` or `res/xml/*.xml`).
pub fn binary_xml(root: &XmlElement) -> Vec<u8> {
    let mut pool = Pool {
        strings: Vec::new(),
        ids: Vec::new(),
    };
    pool.collect(root);
    let android = pool.index("android");
    let uri = pool.index(ANDROID_NS);
    let mut body = Vec::new();
    // Start namespace.
    u16le(&mut body, 0x0100);
    u16le(&mut body, 16);
    u32le(&mut body, 24);
    u32le(&mut body, 1);
    u32le(&mut body, u32::MAX);
    u32le(&mut body, android);
    u32le(&mut body, uri);
    element(root, &mut pool, uri, &mut body);
    u16le(&mut body, 0x0101);
    u16le(&mut body, 16);
    u32le(&mut body, 24);
    u32le(&mut body, 1);
    u32le(&mut body, u32::MAX);
    u32le(&mut body, android);
    u32le(&mut body, uri);

    let strings = pool.chunk();
    let mut map = Vec::new();
    u16le(&mut map, 0x0180);
    u16le(&mut map, 8);
    u32le(&mut map, 8 + 4 * pool.ids.len() as u32);
    for id in &pool.ids {
        u32le(&mut map, *id);
    }
    let mut out = Vec::new();
    u16le(&mut out, 0x0003);
    u16le(&mut out, 8);
    u32le(
        &mut out,
        (8 + strings.len() + map.len() + body.len()) as u32,
    );
    out.extend_from_slice(&strings);
    out.extend_from_slice(&map);
    out.extend_from_slice(&body);
    out
}

fn element(e: &XmlElement, pool: &mut Pool, uri: u32, out: &mut Vec<u8>) {
    let name = pool.index(&e.name);
    let mut attrs = Vec::new();
    for (id, attr_name, value) in &e.attrs {
        let ns = if id.is_some() { uri } else { u32::MAX };
        let name_idx = pool.index(attr_name);
        let (raw, kind, data) = match value {
            XmlValue::Str(s) => {
                let i = pool.index(s);
                (i, 0x03u8, i)
            }
            XmlValue::Bool(b) => (u32::MAX, 0x12, if *b { u32::MAX } else { 0 }),
            XmlValue::Int(i) => (u32::MAX, 0x10, *i as u32),
            XmlValue::Reference(r) => (u32::MAX, 0x01, *r),
        };
        u32le(&mut attrs, ns);
        u32le(&mut attrs, name_idx);
        u32le(&mut attrs, raw);
        u16le(&mut attrs, 8);
        attrs.push(0);
        attrs.push(kind);
        u32le(&mut attrs, data);
    }
    u16le(out, 0x0102);
    u16le(out, 16);
    u32le(out, 16 + 20 + attrs.len() as u32);
    u32le(out, 1);
    u32le(out, u32::MAX);
    u32le(out, u32::MAX);
    u32le(out, name);
    u16le(out, 20);
    u16le(out, 20);
    u16le(out, e.attrs.len() as u16);
    u16le(out, 0);
    u16le(out, 0);
    u16le(out, 0);
    out.extend_from_slice(&attrs);
    if let Some(text) = &e.text {
        let idx = pool.index(text);
        u16le(out, 0x0104);
        u16le(out, 16);
        u32le(out, 28);
        u32le(out, 1);
        u32le(out, u32::MAX);
        u32le(out, idx);
        u16le(out, 8);
        out.push(0);
        out.push(0);
        u32le(out, 0);
    }
    for c in &e.children {
        element(c, pool, uri, out);
    }
    u16le(out, 0x0103);
    u16le(out, 16);
    u32le(out, 24);
    u32le(out, 1);
    u32le(out, u32::MAX);
    u32le(out, u32::MAX);
    u32le(out, name);
}

fn uleb(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

/// A Dalvik executable: `strings` in its string table, and one class
/// `class` (a descriptor such as `Lcom/example/Config;`) whose
/// `public static final String` fields are initialised to the given values.
pub fn dex(strings: &[&str], class: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let object = "Ljava/lang/Object;";
    let string = "Ljava/lang/String;";
    let mut all: Vec<String> = strings.iter().map(|s| (*s).to_owned()).collect();
    all.extend([class.to_owned(), object.to_owned(), string.to_owned()]);
    for (name, value) in fields {
        all.push((*name).to_owned());
        all.push((*value).to_owned());
    }
    // The string table is sorted (by UTF-16 code units: ASCII here) and unique.
    all.sort();
    all.dedup();
    let sidx = |s: &str| all.iter().position(|x| x == s).unwrap_or(0) as u32;
    let mut types: Vec<u32> = vec![sidx(class), sidx(object), sidx(string)];
    types.sort_unstable();
    let tidx = |s: &str| types.iter().position(|t| *t == sidx(s)).unwrap_or(0) as u32;
    let mut field_ids: Vec<(u32, u32, u32, &str)> = fields
        .iter()
        .map(|(name, value)| (tidx(class), sidx(name), tidx(string), *value))
        .collect();
    field_ids.sort_by_key(|f| (f.0, f.1, f.2));

    let string_ids_off = 0x70usize;
    let type_ids_off = string_ids_off + 4 * all.len();
    let field_ids_off = type_ids_off + 4 * types.len();
    let class_defs_off = field_ids_off + 8 * field_ids.len();
    let data_off = class_defs_off + 32;
    let mut data = Vec::new();
    let mut string_offsets = Vec::new();
    for s in &all {
        string_offsets.push((data_off + data.len()) as u32);
        uleb(&mut data, s.encode_utf16().count() as u32);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
    }
    let class_data_off = data_off + data.len();
    uleb(&mut data, field_ids.len() as u32);
    uleb(&mut data, 0);
    uleb(&mut data, 0);
    uleb(&mut data, 0);
    for (i, _) in field_ids.iter().enumerate() {
        uleb(&mut data, u32::from(i > 0));
        uleb(&mut data, 0x19);
    }
    let static_values_off = data_off + data.len();
    uleb(&mut data, field_ids.len() as u32);
    for f in &field_ids {
        let idx = sidx(f.3);
        let bytes: Vec<u8> = idx.to_le_bytes().into_iter().collect();
        let len = if idx < 0x100 {
            1
        } else if idx < 0x1_0000 {
            2
        } else {
            4
        };
        data.push(0x17 | (((len - 1) as u8) << 5));
        data.extend_from_slice(&bytes[..len]);
    }
    while !(data_off + data.len()).is_multiple_of(4) {
        data.push(0);
    }
    let map_off = data_off + data.len();
    let items: [(u16, usize, usize); 9] = [
        (0x0000, 1, 0),
        (0x0001, all.len(), string_ids_off),
        (0x0002, types.len(), type_ids_off),
        (0x0004, field_ids.len(), field_ids_off),
        (0x0006, 1, class_defs_off),
        (0x2002, all.len(), data_off),
        (0x2000, 1, class_data_off),
        (0x2005, 1, static_values_off),
        (0x1000, 1, map_off),
    ];
    u32le(&mut data, items.len() as u32);
    for (kind, size, off) in items {
        u16le(&mut data, kind);
        u16le(&mut data, 0);
        u32le(&mut data, size as u32);
        u32le(&mut data, off as u32);
    }
    let file_size = data_off + data.len();

    let mut out = Vec::with_capacity(file_size);
    out.extend_from_slice(b"dex\n035\0");
    u32le(&mut out, 0); // checksum, below
    out.extend_from_slice(&[0u8; 20]); // signature
    for v in [
        file_size,
        0x70,
        0x1234_5678,
        0,
        0,
        map_off,
        all.len(),
        string_ids_off,
        types.len(),
        type_ids_off,
        0,
        0,
        field_ids.len(),
        field_ids_off,
        0,
        0,
        1,
        class_defs_off,
        file_size - data_off,
        data_off,
    ] {
        u32le(&mut out, v as u32);
    }
    for o in string_offsets {
        u32le(&mut out, o);
    }
    for t in &types {
        u32le(&mut out, *t);
    }
    for (class_idx, name_idx, type_idx, _) in &field_ids {
        u16le(&mut out, *class_idx as u16);
        u16le(&mut out, *type_idx as u16);
        u32le(&mut out, *name_idx);
    }
    for v in [
        tidx(class),
        0x0001,
        tidx(object),
        0,
        u32::MAX,
        0,
        class_data_off as u32,
        static_values_off as u32,
    ] {
        u32le(&mut out, v);
    }
    out.extend_from_slice(&data);
    let checksum = adler32(&out[12..]);
    out[8..12].copy_from_slice(&checksum.to_le_bytes());
    out
}

/// A zip archive of `entries`, deflated, written by the `zip` crate.
pub fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        w.start_file(*name, opts)
            .unwrap_or_else(|e| panic!("zip {name}: {e}"));
        w.write_all(data)
            .unwrap_or_else(|e| panic!("zip {name}: {e}"));
    }
    w.finish()
        .unwrap_or_else(|e| panic!("zip: {e}"))
        .into_inner()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A zip archive written by hand, stored (not compressed), with the names
/// given as they are (`../../etc/passwd` included): what a hostile package
/// holds, which a well-behaved writer would not produce.
pub fn raw_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32(data);
        for (sig, buf) in [(0x0403_4b50u32, &mut out), (0x0201_4b50, &mut central)] {
            let is_central = sig == 0x0201_4b50;
            u32le(buf, sig);
            if is_central {
                u16le(buf, 20);
            }
            u16le(buf, 20);
            u16le(buf, 0);
            u16le(buf, 0);
            u16le(buf, 0);
            u16le(buf, 0x21);
            u32le(buf, crc);
            u32le(buf, data.len() as u32);
            u32le(buf, data.len() as u32);
            u16le(buf, name.len() as u16);
            u16le(buf, 0);
            if is_central {
                u16le(buf, 0);
                u16le(buf, 0);
                u16le(buf, 0);
                u32le(buf, 0);
                u32le(buf, offset);
            }
            buf.extend_from_slice(name.as_bytes());
        }
        out.extend_from_slice(data);
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    u32le(&mut out, 0x0605_4b50);
    u16le(&mut out, 0);
    u16le(&mut out, 0);
    u16le(&mut out, entries.len() as u16);
    u16le(&mut out, entries.len() as u16);
    u32le(&mut out, central.len() as u32);
    u32le(&mut out, cd_offset);
    u16le(&mut out, 0);
    out
}

/// A binary property list of `value`.
pub fn binary_plist(value: &plist::Value) -> Vec<u8> {
    let mut out = Vec::new();
    value
        .to_writer_binary(&mut out)
        .unwrap_or_else(|e| panic!("binary plist: {e}"));
    out
}

/// A Mach-O object (arm64) whose `__TEXT,__cstring` holds `strings`.
pub fn mach_o(strings: &[&str]) -> Vec<u8> {
    use object::write::{Object, StandardSection};
    let mut obj = Object::new(
        object::BinaryFormat::MachO,
        object::Architecture::Aarch64,
        object::Endianness::Little,
    );
    let section = obj.section_id(StandardSection::ReadOnlyString);
    for s in strings {
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0);
        obj.append_section_data(section, &bytes, 1);
    }
    obj.write().unwrap_or_else(|e| panic!("Mach-O: {e}"))
}
