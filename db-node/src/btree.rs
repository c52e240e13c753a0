//! A copy-on-write B+tree of byte keys and byte values over fixed-size pages. Committed pages
//! are never modified: a writer copies the path from the root to the leaf it changes into pages
//! of its own transaction (modified in place afterwards) and retires the originals.

use crate::error::Result;
use crate::page::{self, PageId, KIND_BRANCH, KIND_LEAF, PAGE_SIZE};

/// Read access to tree pages.
pub trait Pages {
    /// Node page `id`, with its kind checked against `kind`.
    fn node(&self, id: PageId, kind: Option<u8>) -> Result<&[u8]>;
    /// A corruption error naming the file.
    fn corrupt(&self, detail: String) -> crate::error::Error;
}

/// Write access for the current transaction.
pub trait PagesMut: Pages {
    fn txn(&self) -> u64;
    /// A fresh page owned by this transaction.
    fn alloc(&mut self) -> Result<PageId>;
    /// The page is no longer part of the tree this transaction builds.
    fn free(&mut self, id: PageId);
    /// True if this transaction wrote the page (so it may be modified in place).
    fn is_dirty(&self, id: PageId) -> bool;
    /// Mutable bytes of a dirty page.
    fn page_mut(&mut self, id: PageId) -> &mut [u8];
    /// Copy a committed node (validated first) into a dirty page.
    fn copy_node(&mut self, from: PageId, to: PageId) -> Result<()>;
}

fn node_kind(p: &[u8]) -> u8 {
    page::kind(p)
}

/// No B+tree of 4 KiB pages is this deep; a deeper path means a cycle in a damaged file.
const MAX_DEPTH: usize = 48;

fn too_deep<P: Pages>(pages: &P, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(pages.corrupt(format!("tree deeper than {MAX_DEPTH} levels (a cycle?)")));
    }
    Ok(())
}

/// Value stored at `key`.
pub fn get<'a, P: Pages>(pages: &'a P, root: PageId, key: &[u8]) -> Result<Option<&'a [u8]>> {
    if root == 0 {
        return Ok(None);
    }
    let mut id = root;
    for depth in 0.. {
        too_deep(pages, depth)?;
        let p = pages.node(id, None)?;
        if node_kind(p) == KIND_BRANCH {
            id = page::child(p, page::child_index(p, key));
            continue;
        }
        return Ok(page::search(p, key).ok().map(|i| page::value(p, i)));
    }
    unreachable!("the loop above only returns")
}

/// A position in the tree: the path of (page, index) from the root to a leaf entry.
pub struct Cursor {
    stack: Vec<(PageId, usize)>,
}

impl Cursor {
    /// Position at the first entry with a key >= `key`.
    pub fn seek<P: Pages>(pages: &P, root: PageId, key: &[u8]) -> Result<Cursor> {
        let mut c = Cursor { stack: Vec::new() };
        c.reseek(pages, root, key)?;
        Ok(c)
    }

    /// Move to the first entry with a key >= `key`.
    pub fn reseek<P: Pages>(&mut self, pages: &P, root: PageId, key: &[u8]) -> Result<()> {
        self.stack.clear();
        if root == 0 {
            return Ok(());
        }
        let mut id = root;
        loop {
            too_deep(pages, self.stack.len())?;
            let p = pages.node(id, None)?;
            if node_kind(p) == KIND_BRANCH {
                let ci = page::child_index(p, key);
                self.stack.push((id, ci));
                id = page::child(p, ci);
                continue;
            }
            let i = match page::search(p, key) {
                Ok(i) | Err(i) => i,
            };
            self.stack.push((id, i));
            return self.settle(pages);
        }
    }

    /// If the leaf position is past its end, climb and descend to the next leaf.
    fn settle<P: Pages>(&mut self, pages: &P) -> Result<()> {
        loop {
            let Some(&(leaf, i)) = self.stack.last() else {
                return Ok(());
            };
            if i < page::count(pages.node(leaf, Some(KIND_LEAF))?) {
                return Ok(());
            }
            self.stack.pop();
            // climb to the first ancestor with a next child
            loop {
                let Some(&(b, ci)) = self.stack.last() else {
                    return Ok(());
                };
                let bp = pages.node(b, Some(KIND_BRANCH))?;
                if ci < page::count(bp) {
                    if let Some(top) = self.stack.last_mut() {
                        top.1 = ci + 1;
                    }
                    let mut id = page::child(bp, ci + 1);
                    loop {
                        too_deep(pages, self.stack.len())?;
                        let p = pages.node(id, None)?;
                        if node_kind(p) == KIND_BRANCH {
                            self.stack.push((id, 0));
                            id = page::link(p);
                        } else {
                            self.stack.push((id, 0));
                            break;
                        }
                    }
                    break;
                }
                self.stack.pop();
            }
        }
    }

    /// The entry under the cursor, or None at the end.
    pub fn current<'a, P: Pages>(&self, pages: &'a P) -> Result<Option<(&'a [u8], &'a [u8])>> {
        match self.stack.last() {
            None => Ok(None),
            Some(&(leaf, i)) => {
                let p = pages.node(leaf, Some(KIND_LEAF))?;
                Ok(Some((page::key(p, i), page::value(p, i))))
            }
        }
    }

    pub fn advance<P: Pages>(&mut self, pages: &P) -> Result<()> {
        if let Some(top) = self.stack.last_mut() {
            top.1 += 1;
        }
        self.settle(pages)
    }
}

fn writable<W: PagesMut>(w: &mut W, id: PageId) -> Result<PageId> {
    if w.is_dirty(id) {
        return Ok(id);
    }
    let n = w.alloc()?;
    w.copy_node(id, n)?;
    w.free(id);
    Ok(n)
}

/// Insert or replace; returns the new root and whether the key is new.
pub fn put<W: PagesMut>(w: &mut W, root: PageId, key: &[u8], val: &[u8]) -> Result<(PageId, bool)> {
    let mut e = Vec::with_capacity(4 + key.len() + val.len());
    page::leaf_entry(key, val, &mut e);
    if root == 0 {
        let id = w.alloc()?;
        let txn = w.txn();
        let p = w.page_mut(id);
        page::init(p, KIND_LEAF, txn);
        page::insert_raw(p, 0, &e);
        return Ok((id, true));
    }
    let (id, split, new) = insert(w, root, key, &e, 0)?;
    let Some((sep, right)) = split else {
        return Ok((id, new));
    };
    let r = w.alloc()?;
    let txn = w.txn();
    let p = w.page_mut(r);
    page::init(p, KIND_BRANCH, txn);
    page::set_link(p, id);
    page::branch_entry(&sep, right, &mut e);
    page::insert_raw(p, 0, &e);
    Ok((r, new))
}

type Split = Option<(Vec<u8>, PageId)>;

fn insert<W: PagesMut>(
    w: &mut W,
    id: PageId,
    key: &[u8],
    e: &[u8],
    depth: usize,
) -> Result<(PageId, Split, bool)> {
    too_deep(w, depth)?;
    let id = writable(w, id)?;
    let p = w.page_mut(id);
    if node_kind(p) == KIND_LEAF {
        let (at, new) = match page::search(p, key) {
            Ok(i) => {
                page::remove(p, i);
                (i, false)
            }
            Err(i) => (i, true),
        };
        if page::insert_raw(p, at, e) {
            return Ok((id, None, new));
        }
        let split = split(w, id, at, e)?;
        return Ok((id, Some(split), new));
    }
    let ci = page::child_index(p, key);
    let c = page::child(p, ci);
    let (nc, split_child, new) = insert(w, c, key, e, depth + 1)?;
    let p = w.page_mut(id);
    page::set_child(p, ci, nc);
    let Some((sep, right)) = split_child else {
        return Ok((id, None, new));
    };
    let mut be = Vec::with_capacity(sep.len() + 10);
    page::branch_entry(&sep, right, &mut be);
    if page::insert_raw(p, ci, &be) {
        return Ok((id, None, new));
    }
    let s = split(w, id, ci, &be)?;
    Ok((id, Some(s), new))
}

fn entry_key(kind: u8, e: &[u8]) -> &[u8] {
    let k = page::rd16(e, 0) as usize;
    if kind == KIND_LEAF {
        &e[4..4 + k]
    } else {
        &e[2..2 + k]
    }
}

/// Split page `id` after inserting raw entry `e` at `at`; returns (separator, right page).
fn split<W: PagesMut>(w: &mut W, id: PageId, at: usize, e: &[u8]) -> Result<(Vec<u8>, PageId)> {
    let mut tmp = [0u8; PAGE_SIZE];
    tmp.copy_from_slice(w.page_mut(id));
    let kind = node_kind(&tmp);
    let n = page::count(&tmp);
    let mut entries: Vec<&[u8]> = (0..n).map(|i| page::raw_entry(&tmp, i)).collect();
    entries.insert(at, e);
    let total: usize = entries.iter().map(|x| x.len() + 2).sum();
    let mut j = 0;
    let mut acc = 0;
    while j < entries.len() - 1 && acc + entries[j].len() + 2 <= total / 2 {
        acc += entries[j].len() + 2;
        j += 1;
    }
    // Taking one more entry to the left may balance better.
    if j + 1 < entries.len() {
        let with = acc + entries[j].len() + 2;
        if with.max(total - with) < acc.max(total - acc) {
            j += 1;
        }
    }
    // Appending at the end of the page (keys arriving in order): keep the old entries together
    // and start the right page with the new one, so ordered inserts fill pages completely.
    if at == n && n >= 2 {
        j = n;
    }
    let j = j.max(1);
    let txn = w.txn();
    let right = w.alloc()?;
    let sep = entry_key(kind, entries[j]).to_vec();
    if kind == KIND_LEAF {
        page::rebuild(w.page_mut(id), kind, txn, 0, entries[..j].iter().copied());
        page::rebuild(
            w.page_mut(right),
            kind,
            txn,
            0,
            entries[j..].iter().copied(),
        );
    } else {
        let k = sep.len();
        let rlink = page::rd64(entries[j], 2 + k);
        page::rebuild(
            w.page_mut(id),
            kind,
            txn,
            page::link(&tmp),
            entries[..j].iter().copied(),
        );
        page::rebuild(
            w.page_mut(right),
            kind,
            txn,
            rlink,
            entries[j + 1..].iter().copied(),
        );
    }
    Ok((sep, right))
}

/// Remove `key`; returns the new root and whether it was present.
pub fn delete<W: PagesMut>(w: &mut W, root: PageId, key: &[u8]) -> Result<(PageId, bool)> {
    if root == 0 || get(w, root, key)?.is_none() {
        return Ok((root, false));
    }
    let mut root = remove_rec(w, root, key, 0)?.unwrap_or(0);
    // collapse branch roots with a single child
    for depth in 0.. {
        too_deep(w, depth)?;
        if root == 0 {
            break;
        }
        let p = w.node(root, None)?;
        if node_kind(p) == KIND_BRANCH && page::count(p) == 0 {
            let only = page::link(p);
            w.free(root);
            root = only;
        } else {
            break;
        }
    }
    Ok((root, true))
}

fn remove_rec<W: PagesMut>(
    w: &mut W,
    id: PageId,
    key: &[u8],
    depth: usize,
) -> Result<Option<PageId>> {
    too_deep(w, depth)?;
    let id = writable(w, id)?;
    let p = w.page_mut(id);
    if node_kind(p) == KIND_LEAF {
        if let Ok(i) = page::search(p, key) {
            page::remove(p, i);
        }
        if page::count(p) == 0 {
            w.free(id);
            return Ok(None);
        }
        return Ok(Some(id));
    }
    let ci = page::child_index(p, key);
    let c = page::child(p, ci);
    let nc = remove_rec(w, c, key, depth + 1)?;
    let p = w.page_mut(id);
    match nc {
        Some(nc) => {
            page::set_child(p, ci, nc);
            let small = page::used_space(w.node(nc, None)?) < PAGE_SIZE / 4;
            if small {
                merge(w, id, ci)?;
            }
        }
        None => {
            let n = page::count(p);
            if n == 0 {
                w.free(id);
                return Ok(None);
            }
            if ci == 0 {
                let first = page::child(p, 1);
                page::set_link(p, first);
                page::remove(p, 0);
            } else {
                page::remove(p, ci - 1);
            }
        }
    }
    Ok(Some(id))
}

/// Merge child `ci` of branch `parent` with a neighbour if both fit in one page.
fn merge<W: PagesMut>(w: &mut W, parent: PageId, ci: usize) -> Result<()> {
    let pp = w.page_mut(parent);
    let n = page::count(pp);
    if n == 0 {
        return Ok(());
    }
    let (l, r) = if ci < n { (ci, ci + 1) } else { (ci - 1, ci) };
    let (lid, rid) = (page::child(pp, l), page::child(pp, r));
    let sep = page::key(pp, l).to_vec();
    let rp = w.node(rid, None)?;
    let kind = node_kind(rp);
    let extra = if kind == KIND_BRANCH {
        2 + 2 + sep.len() + 8
    } else {
        0
    };
    let need = page::used_space(w.node(lid, Some(kind))?) + page::used_space(rp) + extra;
    if need > PAGE_SIZE - page::HEADER {
        return Ok(());
    }
    let mut tmp = [0u8; PAGE_SIZE];
    tmp.copy_from_slice(rp);
    let lid = writable(w, lid)?;
    let lp = w.page_mut(lid);
    let mut at = page::count(lp);
    if kind == KIND_BRANCH {
        let mut e = Vec::new();
        page::branch_entry(&sep, page::link(&tmp), &mut e);
        page::insert_raw(lp, at, &e);
        at += 1;
    }
    for i in 0..page::count(&tmp) {
        page::insert_raw(lp, at + i, page::raw_entry(&tmp, i));
    }
    w.free(rid);
    let pp = w.page_mut(parent);
    page::set_child(pp, l, lid);
    page::remove(pp, l);
    Ok(())
}
