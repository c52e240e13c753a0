//! `check`: verify everything reachable from the current commit — every page's checksum and
//! layout, key order and separator bounds, every record's encoding, the tree shape of the
//! records (each node's parent exists and is a container of the right kind, chunked values are
//! complete), the record count, and that the allocation bitmap marks exactly the pages in use.

use crate::alloc::AllocTable;
use crate::btree::{Cursor, Pages};
use crate::db::node;
use crate::error::{Error, Result};
use crate::meta::Meta;
use crate::page::{self, PageId, KIND_BITMAP, KIND_BRANCH, KIND_INDEX, KIND_LEAF};
use crate::path::{self, Segment, CHUNK_MARK, SEP};
use crate::store::{DataFile, Map};
use crate::value::{self, T_ARRAY, T_CHUNK, T_CHUNKED, T_OBJECT};
use std::path::Path;

/// Result of a check.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub txn: u64,
    pub pages_checked: u64,
    pub records: u64,
    pub problems: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

struct View<'a> {
    map: &'a Map,
    path: &'a Path,
    page_count: u64,
}

impl Pages for View<'_> {
    fn node(&self, id: PageId, kind: Option<u8>) -> Result<&[u8]> {
        node(self.map, self.path, self.page_count, id, kind)
    }
    fn corrupt(&self, detail: String) -> Error {
        Error::Corrupt {
            path: self.path.to_path_buf(),
            detail,
        }
    }
}

pub(crate) fn run(file: &DataFile, alloc: &AllocTable, meta: &Meta) -> Report {
    let view = View {
        map: &file.map,
        path: &file.path,
        page_count: meta.page_count,
    };
    let mut r = Report {
        txn: meta.txn,
        ..Report::default()
    };
    let mut seen = vec![false; meta.page_count as usize];
    for p in [0, 1] {
        seen[p] = true;
    }
    let mut mark = |r: &mut Report, id: PageId, what: &str| -> bool {
        match seen.get_mut(id as usize) {
            None => {
                r.problems.push(format!(
                    "{what} page {id} is beyond the file's {} pages",
                    meta.page_count
                ));
                false
            }
            Some(s) if *s => {
                r.problems.push(format!("{what} page {id} is used twice"));
                false
            }
            Some(s) => {
                *s = true;
                true
            }
        }
    };
    // allocation pages
    if mark(&mut r, meta.alloc_index, "allocation index") {
        check_sum(&view, &mut r, meta.alloc_index, KIND_INDEX);
    }
    for &bp in alloc.bitmap_pages() {
        if mark(&mut r, bp, "bitmap") {
            check_sum(&view, &mut r, bp, KIND_BITMAP);
        }
    }
    // tree pages
    if meta.root != 0 {
        let mut leaf_depth = None;
        let mut stack = vec![(meta.root, None::<Vec<u8>>, None::<Vec<u8>>, 0usize)];
        while let Some((id, lo, hi, depth)) = stack.pop() {
            if !mark(&mut r, id, "tree") {
                continue;
            }
            let Some(p) = check_sum(&view, &mut r, id, 0) else {
                continue;
            };
            if let Err(e) = page::validate_node(p) {
                r.problems.push(format!("page {id}: {e}"));
                continue;
            }
            let n = page::count(p);
            for i in 0..n {
                let k = page::key(p, i);
                if i > 0 && page::key(p, i - 1) >= k {
                    r.problems
                        .push(format!("page {id}: keys out of order at entry {i}"));
                }
                if lo.as_ref().is_some_and(|l| k < l.as_slice())
                    || hi.as_ref().is_some_and(|h| k >= h.as_slice())
                {
                    r.problems
                        .push(format!("page {id}: key {i} outside its parent's range"));
                }
            }
            if page::kind(p) == KIND_LEAF {
                if n == 0 && id != meta.root {
                    r.problems.push(format!("page {id}: empty leaf"));
                }
                if *leaf_depth.get_or_insert(depth) != depth {
                    r.problems.push(format!(
                        "page {id}: leaf at depth {depth}, others at {leaf_depth:?}"
                    ));
                }
                continue;
            }
            for ci in 0..=n {
                let clo = if ci == 0 {
                    lo.clone()
                } else {
                    Some(page::key(p, ci - 1).to_vec())
                };
                let chi = if ci == n {
                    hi.clone()
                } else {
                    Some(page::key(p, ci).to_vec())
                };
                stack.push((page::child(p, ci), clo, chi, depth + 1));
            }
        }
    }
    r.pages_checked = seen.iter().filter(|s| **s).count() as u64;
    for (id, s) in seen.iter().enumerate() {
        let marked = alloc.get(id as u64);
        if *s && !marked {
            r.problems
                .push(format!("page {id} is in use but marked free"));
        } else if !*s && marked {
            r.problems.push(format!(
                "page {id} is marked in use but unreachable (leaked)"
            ));
        }
    }
    if r.problems.is_empty() {
        check_records(&view, meta, &mut r);
    }
    r
}

fn check_sum<'a>(view: &View<'a>, r: &mut Report, id: PageId, kind: u8) -> Option<&'a [u8]> {
    let Some(p) = view.map.page(id) else {
        r.problems.push(format!("page {id} is beyond the file end"));
        return None;
    };
    let k = page::kind(p);
    let ok_kind = if kind == 0 {
        k == KIND_LEAF || k == KIND_BRANCH
    } else {
        k == kind
    };
    if !ok_kind {
        r.problems
            .push(format!("page {id}: unexpected page kind {k}"));
        return None;
    }
    if page::compute_checksum(p) != page::stored_checksum(p) {
        r.problems.push(format!(
            "page {id}: checksum mismatch (torn or corrupt page)"
        ));
        return None;
    }
    Some(p)
}

struct Open {
    key: Vec<u8>,
    tag: u8,
    chunk_bytes: u64,
    chunk_total: u64,
}

fn close(r: &mut Report, o: &Open) {
    if o.tag == T_CHUNKED && o.chunk_bytes != o.chunk_total {
        r.problems.push(format!(
            "record {:?}: {} of {} chunked bytes present",
            pretty(&o.key),
            o.chunk_bytes,
            o.chunk_total
        ));
    }
}

fn pretty(k: &[u8]) -> String {
    String::from_utf8_lossy(k).replace('\0', "/")
}

fn check_records(view: &View<'_>, meta: &Meta, r: &mut Report) {
    let mut cur = match Cursor::seek(view, meta.root, &[]) {
        Ok(c) => c,
        Err(e) => return r.problems.push(e.to_string()),
    };
    let mut open: Vec<Open> = Vec::new();
    loop {
        let (k, v) = match cur.current(view) {
            Ok(Some((k, v))) => (k.to_vec(), v.to_vec()),
            Ok(None) => break,
            Err(e) => return r.problems.push(e.to_string()),
        };
        r.records += 1;
        while let Some(top) = open.last() {
            if k.len() > top.key.len() && k.starts_with(&top.key) && k[top.key.len()] == SEP {
                break;
            }
            close(r, top);
            open.pop();
        }
        let (parent, last) = match k.iter().rposition(|&b| b == SEP) {
            Some(i) => (&k[..i], &k[i + 1..]),
            None => (&k[..0], &k[..]),
        };
        let ptag = open.last().map_or(T_OBJECT, |o| o.tag);
        if open.last().map_or(&[][..], |o| o.key.as_slice()) != parent {
            r.problems
                .push(format!("record {:?} has no parent record", pretty(&k)));
        } else if last.first() == Some(&CHUNK_MARK) {
            match (open.last_mut(), v.first()) {
                (Some(o), Some(&T_CHUNK)) if o.tag == T_CHUNKED => {
                    o.chunk_bytes += v.len() as u64 - 1
                }
                _ => r
                    .problems
                    .push(format!("stray chunk record {:?}", pretty(&k))),
            }
        } else {
            match path::decode_segment(last) {
                None => r
                    .problems
                    .push(format!("record {:?}: undecodable key", pretty(&k))),
                Some(Segment::Index(_)) if ptag != T_ARRAY => r.problems.push(format!(
                    "record {:?}: array index under a non-array",
                    pretty(&k)
                )),
                Some(Segment::Key(_)) if ptag != T_OBJECT => r
                    .problems
                    .push(format!("record {:?}: key under a non-object", pretty(&k))),
                Some(_) => {}
            }
            match v.first() {
                Some(&T_OBJECT) | Some(&T_ARRAY) => open.push(Open {
                    key: k.clone(),
                    tag: v[0],
                    chunk_bytes: 0,
                    chunk_total: 0,
                }),
                Some(&T_CHUNKED) => match value::chunked_head(&v) {
                    Some((_, total)) => open.push(Open {
                        key: k.clone(),
                        tag: T_CHUNKED,
                        chunk_bytes: 0,
                        chunk_total: total,
                    }),
                    None => r
                        .problems
                        .push(format!("record {:?}: bad chunked head", pretty(&k))),
                },
                _ => {
                    if value::decode_scalar(&v).is_none() {
                        r.problems
                            .push(format!("record {:?}: undecodable value", pretty(&k)));
                    }
                    // scalars have no children: later keys under it are orphans
                    open.push(Open {
                        key: k.clone(),
                        tag: 0,
                        chunk_bytes: 0,
                        chunk_total: 0,
                    });
                }
            }
        }
        if let Err(e) = cur.advance(view) {
            return r.problems.push(e.to_string());
        }
    }
    for o in open.iter().rev() {
        close(r, o);
    }
    if r.records != meta.records {
        r.problems.push(format!(
            "meta counts {} records, the tree holds {}",
            meta.records, r.records
        ));
    }
}
