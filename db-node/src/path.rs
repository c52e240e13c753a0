//! Paths (`users/alice/items[3]`) and their encoding as B+tree keys.
//!
//! A key is the path's segments joined by a 0x00 byte, which sorts below every byte a segment
//! may contain, so a node's whole subtree is the contiguous key range `[K, K ++ 0x01)` and its
//! direct children follow it in key order. Object keys are stored as their UTF-8 bytes (bytes
//! below 0x03 and `/ [ ]` are not allowed); array indexes as `0x01, b'0' + digits, digits…`,
//! which sorts numerically; `0x02` starts the hidden segments that hold chunks of long values.

use crate::error::{Error, Result};
use crate::page::MAX_KEY;

pub const SEP: u8 = 0x00;
pub const INDEX_MARK: u8 = 0x01;
pub const CHUNK_MARK: u8 = 0x02;

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Segment {
    Key(String),
    Index(u64),
}

impl std::fmt::Display for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Segment::Key(k) => f.write_str(k),
            Segment::Index(i) => write!(f, "[{i}]"),
        }
    }
}

fn invalid(path: &str, reason: impl Into<String>) -> Error {
    Error::InvalidPath {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// Check an object key.
pub fn check_key(path: &str, k: &str) -> Result<()> {
    if k.is_empty() {
        return Err(invalid(path, "empty key"));
    }
    if let Some(c) = k
        .bytes()
        .find(|&b| b < 3 || b == b'/' || b == b'[' || b == b']')
    {
        return Err(invalid(
            path,
            format!("key {k:?} contains the reserved byte {c:#04x}"),
        ));
    }
    Ok(())
}

/// Parse `a/b[2]/c` into segments; "" and "/" are the root.
pub fn parse(path: &str) -> Result<Vec<Segment>> {
    let mut out = Vec::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            check_key(path, name)?;
            out.push(Segment::Key(name.to_string()));
        }
        while !rest.is_empty() {
            let close = rest.find(']').ok_or_else(|| invalid(path, "unclosed ["))?;
            let digits = &rest[1..close];
            let i: u64 = digits
                .parse()
                .map_err(|_| invalid(path, format!("bad array index {digits:?}")))?;
            out.push(Segment::Index(i));
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return Err(invalid(path, "text after ]"));
            }
        }
    }
    Ok(out)
}

/// Encode a path string straight into a key (same result as `encode(parse(path))`, without
/// the intermediate segments; used on the read path).
pub fn key_of(path: &str) -> Result<Vec<u8>> {
    let simple = path.bytes().all(|b| b >= 3 && b != b'[' && b != b']');
    if !simple {
        let segs = parse(path)?;
        return encode(path, &segs);
    }
    let mut k = Vec::with_capacity(path.len());
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if !k.is_empty() {
            k.push(SEP);
        }
        k.extend_from_slice(part.as_bytes());
    }
    if k.len() > MAX_KEY - 16 {
        return Err(invalid(
            path,
            format!("longer than {} bytes encoded", MAX_KEY - 16),
        ));
    }
    Ok(k)
}

/// Render segments back as a path string.
pub fn render(segs: &[Segment]) -> String {
    let mut s = String::new();
    for seg in segs {
        match seg {
            Segment::Key(k) => {
                if !s.is_empty() {
                    s.push('/');
                }
                s.push_str(k);
            }
            Segment::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Append one segment's encoding.
pub fn push_segment(out: &mut Vec<u8>, seg: &Segment) {
    if !out.is_empty() {
        out.push(SEP);
    }
    match seg {
        Segment::Key(k) => out.extend_from_slice(k.as_bytes()),
        Segment::Index(i) => {
            let d = i.to_string();
            out.push(INDEX_MARK);
            out.push(b'0' + d.len() as u8);
            out.extend_from_slice(d.as_bytes());
        }
    }
}

/// Encode a full path as a key, checking its length.
pub fn encode(path: &str, segs: &[Segment]) -> Result<Vec<u8>> {
    let mut k = Vec::with_capacity(path.len() + 8);
    for s in segs {
        push_segment(&mut k, s);
    }
    if k.len() > MAX_KEY - 16 {
        return Err(invalid(
            path,
            format!("longer than {} bytes encoded", MAX_KEY - 16),
        ));
    }
    Ok(k)
}

/// Decode one encoded segment (None for chunk segments or damaged bytes).
pub fn decode_segment(b: &[u8]) -> Option<Segment> {
    match b.first()? {
        &INDEX_MARK => {
            let d = std::str::from_utf8(b.get(2..)?).ok()?;
            if b[1] as usize != b'0' as usize + d.len() {
                return None;
            }
            d.parse().ok().map(Segment::Index)
        }
        &CHUNK_MARK | &SEP => None,
        _ => std::str::from_utf8(b)
            .ok()
            .map(|s| Segment::Key(s.to_string())),
    }
}

/// Decode a whole key into segments.
pub fn decode_key(k: &[u8]) -> Option<Vec<Segment>> {
    if k.is_empty() {
        return Some(Vec::new());
    }
    k.split(|&b| b == SEP).map(decode_segment).collect()
}

/// The key range `[lo, hi)` holding the subtree at key `k` (everything for the root).
pub fn subtree_range(k: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    if k.is_empty() {
        return (Vec::new(), None);
    }
    let mut hi = k.to_vec();
    hi.push(0x01);
    (k.to_vec(), Some(hi))
}

/// Prefix shared by the keys of `k`'s children.
pub fn child_prefix(k: &[u8]) -> Vec<u8> {
    let mut p = k.to_vec();
    if !p.is_empty() {
        p.push(SEP);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_render_and_order() {
        let s = parse("/users/alice/items[3][10]/x").unwrap();
        assert_eq!(render(&s), "users/alice/items[3][10]/x");
        assert!(parse("a/b\u{1}").is_err());
        assert!(parse("a[x]").is_err());
        let k = |p: &str| encode(p, &parse(p).unwrap()).unwrap();
        assert!(k("a[2]") < k("a[10]"));
        assert!(k("a") < k("a/b") && k("a/b") < k("a/c") && k("a/zz") < k("aa"));
        let (lo, hi) = subtree_range(&k("a"));
        assert!(lo <= k("a/b/c") && k("a/b/c") < hi.clone().unwrap());
        assert!(k("a!") >= hi.unwrap());
        assert_eq!(decode_key(&k("a/b[7]")).unwrap(), parse("a/b[7]").unwrap());
        for p in ["a/b[7]/c", "/x//y/", "", "a\u{1}"] {
            assert_eq!(
                key_of(p).ok(),
                parse(p).and_then(|s| encode(p, &s)).ok(),
                "{p}"
            );
        }
    }
}
