//! Reading the JSON-like tree out of the B+tree: whole subtrees (one range scan in key order),
//! selected children, node kinds, and paginated child listings.

use crate::btree::{self, Cursor, Pages};
use crate::error::Result;
use crate::page::PageId;
use crate::path::{self, Segment, CHUNK_MARK, SEP};
use crate::value::{self, Kind, Value, T_ARRAY, T_CHUNK, T_CHUNKED, T_OBJECT};
use std::collections::BTreeMap;

/// One child in a listing.
#[derive(Clone, Debug, PartialEq)]
pub struct Child {
    pub segment: Segment,
    pub kind: Kind,
}

/// Kind of the node at `key` (the root is always an object).
pub fn kind_at<P: Pages>(pages: &P, root: PageId, key: &[u8]) -> Result<Option<Kind>> {
    if key.is_empty() {
        return Ok(Some(Kind::Object));
    }
    match btree::get(pages, root, key)? {
        None => Ok(None),
        Some(r) => value::record_kind(r)
            .map(Some)
            .ok_or_else(|| pages.corrupt(format!("unknown record tag in {key:?}"))),
    }
}

/// The whole value at `key` (Null if absent).
pub fn read<P: Pages>(pages: &P, root: PageId, key: &[u8]) -> Result<Value> {
    if !key.is_empty() {
        // fast path: an inline scalar is one lookup
        match btree::get(pages, root, key)? {
            None => return Ok(Value::Null),
            Some(r) if !matches!(r.first(), Some(&T_OBJECT | &T_ARRAY | &T_CHUNKED)) => {
                return value::decode_scalar(r)
                    .ok_or_else(|| pages.corrupt(format!("undecodable record at {key:?}")));
            }
            Some(_) => {}
        }
    }
    let mut cur = Cursor::seek(pages, root, key)?;
    if key.is_empty() {
        return read_container(pages, &mut cur, key, T_OBJECT);
    }
    let rec = match cur.current(pages)? {
        Some((k, v)) if k == key => v.to_vec(),
        _ => return Ok(Value::Null),
    };
    cur.advance(pages)?;
    read_node(pages, &mut cur, key, &rec)
}

/// The object at `key` with only the listed children.
pub fn read_some<P: Pages>(pages: &P, root: PageId, key: &[u8], only: &[Segment]) -> Result<Value> {
    match kind_at(pages, root, key)? {
        Some(Kind::Object) | Some(Kind::Array) => {}
        Some(_) => return read(pages, root, key),
        None => return Ok(Value::Null),
    }
    let mut out = BTreeMap::new();
    for seg in only {
        let mut ck = key.to_vec();
        path::push_segment(&mut ck, seg);
        let v = read(pages, root, &ck)?;
        if !v.is_null() {
            out.insert(seg.to_string(), v);
        }
    }
    Ok(Value::Object(out))
}

fn read_node<P: Pages>(pages: &P, cur: &mut Cursor, key: &[u8], rec: &[u8]) -> Result<Value> {
    match rec.first() {
        Some(&T_OBJECT) | Some(&T_ARRAY) => read_container(pages, cur, key, rec[0]),
        Some(&T_CHUNKED) => {
            let (tag, len) = value::chunked_head(rec)
                .ok_or_else(|| pages.corrupt(format!("bad chunked record at {key:?}")))?;
            let mut prefix = path::child_prefix(key);
            prefix.push(CHUNK_MARK);
            let mut bytes = Vec::with_capacity(len as usize);
            while let Some((k, v)) = cur.current(pages)? {
                if !k.starts_with(&prefix) {
                    break;
                }
                if v.first() != Some(&T_CHUNK) {
                    return Err(pages.corrupt(format!("bad chunk record under {key:?}")));
                }
                bytes.extend_from_slice(&v[1..]);
                cur.advance(pages)?;
            }
            if bytes.len() as u64 != len {
                return Err(pages.corrupt(format!(
                    "value at {key:?} has {} of {len} bytes",
                    bytes.len()
                )));
            }
            value::from_chunks(tag, bytes)
                .ok_or_else(|| pages.corrupt(format!("bad chunked value at {key:?}")))
        }
        _ => value::decode_scalar(rec)
            .ok_or_else(|| pages.corrupt(format!("undecodable record at {key:?}"))),
    }
}

/// Read the children that follow the cursor (positioned after the container's own record).
fn read_container<P: Pages>(pages: &P, cur: &mut Cursor, key: &[u8], tag: u8) -> Result<Value> {
    let prefix = path::child_prefix(key);
    let mut obj = BTreeMap::new();
    let mut arr: Vec<Value> = Vec::new();
    while let Some((k, v)) = cur.current(pages)? {
        if !k.starts_with(&prefix) {
            break;
        }
        let rest = &k[prefix.len()..];
        let seg = if rest.contains(&SEP) {
            None
        } else {
            path::decode_segment(rest)
        };
        let Some(seg) = seg else {
            // an orphan or chunk record: `check` reports it; readers skip it
            cur.advance(pages)?;
            continue;
        };
        let (ck, cv) = (k.to_vec(), v.to_vec());
        cur.advance(pages)?;
        let child = read_node(pages, cur, &ck, &cv)?;
        match (seg, tag) {
            (Segment::Key(s), T_OBJECT) => {
                obj.insert(s, child);
            }
            (Segment::Index(i), T_ARRAY) => {
                // writes never leave gaps wider than the elements removed from an array
                if i > arr.len() as u64 + 1_000_000 {
                    return Err(pages.corrupt(format!("array {key:?} jumps to index {i}")));
                }
                let i = i as usize;
                if i >= arr.len() {
                    arr.resize(i + 1, Value::Null);
                }
                arr[i] = child;
            }
            _ => {}
        }
    }
    Ok(if tag == T_ARRAY {
        Value::Array(arr)
    } else {
        Value::Object(obj)
    })
}

/// Children of `key` in key order, starting after `after`, at most `limit`.
pub fn children<P: Pages>(
    pages: &P,
    root: PageId,
    key: &[u8],
    after: Option<&Segment>,
    limit: usize,
) -> Result<Vec<Child>> {
    let prefix = path::child_prefix(key);
    let mut start = prefix.clone();
    if let Some(a) = after {
        let mut k = key.to_vec();
        path::push_segment(&mut k, a);
        start = k;
        start.push(0x01);
    }
    let mut out = Vec::new();
    let mut cur = Cursor::seek(pages, root, &start)?;
    while out.len() < limit {
        let Some((k, v)) = cur.current(pages)? else {
            break;
        };
        if !k.starts_with(&prefix) {
            break;
        }
        let rest = &k[prefix.len()..];
        if rest.contains(&SEP) || rest.is_empty() {
            cur.advance(pages)?;
            continue;
        }
        let leaf_scalar =
            matches!(v.first(), Some(t) if *t != T_OBJECT && *t != T_ARRAY && *t != T_CHUNKED);
        if let (Some(seg), Some(kind)) = (path::decode_segment(rest), value::record_kind(v)) {
            out.push(Child { segment: seg, kind });
        }
        if leaf_scalar {
            cur.advance(pages)?;
        } else {
            let mut skip = k.to_vec();
            skip.push(0x01);
            cur.reseek(pages, root, &skip)?;
        }
    }
    Ok(out)
}

/// Every key in the subtree at `key` (the whole tree for the root).
pub fn subtree_keys<P: Pages>(pages: &P, root: PageId, key: &[u8]) -> Result<Vec<Vec<u8>>> {
    let (lo, hi) = path::subtree_range(key);
    let mut out = Vec::new();
    let mut cur = Cursor::seek(pages, root, &lo)?;
    while let Some((k, _)) = cur.current(pages)? {
        if hi.as_ref().is_some_and(|h| k >= h.as_slice()) {
            break;
        }
        out.push(k.to_vec());
        cur.advance(pages)?;
    }
    Ok(out)
}
