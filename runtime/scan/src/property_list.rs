//! Property lists (`Info.plist`, binary or XML, and any other `.plist`):
//! read with the `plist` crate's event reader, walked here with a depth and
//! an event bound (a binary plist whose objects share children expands
//! exponentially; the crate already refuses objects that contain
//! themselves). The event reader is behind the crate's
//! `enable_unstable_features_that_may_break_with_minor_version_bumps`
//! feature, so the version is pinned exactly in Cargo.toml: building a
//! `plist::Value` instead would expand such a plist in memory before any
//! bound could apply.

use std::io::Cursor;

use plist::stream::{Event, Reader};

use crate::limits::{MAX_PLIST_DEPTH, MAX_PLIST_EVENTS};

/// A scalar value of a plist.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// An integer (as i128 covers both signed and unsigned).
    Int(i128),
    /// A real, a date, data or a UID: not interpreted.
    Other,
}

/// A leaf: the keys (and array indexes) leading to it, and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Leaf {
    /// Path from the root, e.g. `["NSAppTransportSecurity", "NSAllowsArbitraryLoads"]`.
    pub path: Vec<String>,
    /// Its value.
    pub value: Scalar,
}

impl Leaf {
    /// The path joined for display.
    pub fn display_path(&self) -> String {
        self.path.join(".")
    }
}

enum Frame {
    Dict { key: Option<String> },
    Array { index: usize },
}

/// Whether `d` looks like a property list.
pub fn is_plist(d: &[u8]) -> bool {
    if d.starts_with(b"bplist0") {
        return true;
    }
    let head = &d[..d.len().min(512)];
    let text = String::from_utf8_lossy(head);
    text.contains("<plist") || text.contains("<!DOCTYPE plist")
}

/// Every leaf of a property list.
pub fn leaves(d: &[u8]) -> Result<Vec<Leaf>, String> {
    if !d.starts_with(b"bplist") {
        check_xml_depth(d)?;
    }
    let mut out = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut events = 0usize;
    for event in Reader::new(Cursor::new(d)) {
        events += 1;
        if events > MAX_PLIST_EVENTS {
            return Err(format!(
                "more than {MAX_PLIST_EVENTS} values (objects shared many times over?)"
            ));
        }
        let event = event.map_err(|e| e.to_string())?;
        // A dict's key comes as a string event in key position.
        if let Event::String(s) = &event
            && let Some(Frame::Dict { key }) = stack.last_mut()
            && key.is_none()
        {
            *key = Some(s.to_string());
            continue;
        }
        // The name of the position this value takes.
        let here = match stack.last_mut() {
            Some(Frame::Dict { key }) => key.take().unwrap_or_default(),
            Some(Frame::Array { index }) => {
                *index += 1;
                (*index - 1).to_string()
            }
            None => String::new(),
        };
        match event {
            Event::StartArray(_) | Event::StartDictionary(_) => {
                if stack.len() >= MAX_PLIST_DEPTH {
                    return Err(format!("nested deeper than {MAX_PLIST_DEPTH} levels"));
                }
                if !stack.is_empty() {
                    path.push(here);
                }
                stack.push(if matches!(event, Event::StartArray(_)) {
                    Frame::Array { index: 0 }
                } else {
                    Frame::Dict { key: None }
                });
            }
            Event::EndCollection => {
                stack.pop();
                if !stack.is_empty() {
                    path.pop();
                }
            }
            other => {
                let value = match other {
                    Event::String(s) => Scalar::Str(s.into_owned()),
                    Event::Boolean(b) => Scalar::Bool(b),
                    Event::Integer(i) => i
                        .as_signed()
                        .map(i128::from)
                        .or_else(|| i.as_unsigned().map(i128::from))
                        .map_or(Scalar::Other, Scalar::Int),
                    _ => Scalar::Other,
                };
                let mut p = path.clone();
                if !stack.is_empty() {
                    p.push(here);
                }
                out.push(Leaf { path: p, value });
            }
        }
    }
    Ok(out)
}

/// Refuse an XML plist nested deeper than the bound before the parser sees
/// it (its reader is recursive-descent free, but a deep document still
/// costs a frame per level in our walk and in memory).
fn check_xml_depth(d: &[u8]) -> Result<(), String> {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(p) = d[i..].iter().position(|&b| b == b'<') {
        let at = i + p;
        let rest = &d[at..];
        if rest.starts_with(b"<dict>") || rest.starts_with(b"<array>") {
            depth += 1;
            if depth > MAX_PLIST_DEPTH {
                return Err(format!("nested deeper than {MAX_PLIST_DEPTH} levels"));
            }
        } else if rest.starts_with(b"</dict>") || rest.starts_with(b"</array>") {
            depth = depth.saturating_sub(1);
        }
        i = at + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ATS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict>
<key>CFBundleIdentifier</key><string>com.example.app</string>
<key>NSAppTransportSecurity</key><dict>
  <key>NSAllowsArbitraryLoads</key><true/>
  <key>NSExceptionDomains</key><dict>
    <key>legacy.example.net</key><dict><key>NSExceptionMinimumTLSVersion</key><string>TLSv1.0</string></dict>
  </dict>
</dict>
<key>Endpoints</key><array><string>wss://a.example/ws</string><integer>3</integer></array>
</dict></plist>"#;

    #[test]
    fn leaves_carry_their_key_paths() {
        let leaves = leaves(ATS.as_bytes()).unwrap_or_default();
        let find = |p: &str| {
            leaves
                .iter()
                .find(|l| l.display_path() == p)
                .map(|l| &l.value)
        };
        assert_eq!(
            find("CFBundleIdentifier"),
            Some(&Scalar::Str("com.example.app".into()))
        );
        assert_eq!(
            find("NSAppTransportSecurity.NSAllowsArbitraryLoads"),
            Some(&Scalar::Bool(true))
        );
        let tls = leaves
            .iter()
            .find(|l| {
                l.path
                    .last()
                    .is_some_and(|k| k == "NSExceptionMinimumTLSVersion")
            })
            .map(|l| l.path.clone());
        assert_eq!(
            tls,
            Some(vec![
                "NSAppTransportSecurity".into(),
                "NSExceptionDomains".into(),
                "legacy.example.net".into(),
                "NSExceptionMinimumTLSVersion".into()
            ])
        );
        assert_eq!(
            find("Endpoints.0"),
            Some(&Scalar::Str("wss://a.example/ws".into()))
        );
        assert_eq!(find("Endpoints.1"), Some(&Scalar::Int(3)));
    }

    #[test]
    fn a_deep_xml_plist_is_refused() {
        let deep = format!(
            "<plist><dict>{}</dict></plist>",
            "<key>a</key><dict>".repeat(100) + &"</dict>".repeat(100)
        );
        assert!(leaves(deep.as_bytes()).is_err_and(|e| e.contains("deeper")));
    }
}
