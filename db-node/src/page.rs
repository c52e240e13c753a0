//! Fixed-size pages: the common header, checksums, and the slotted layout of B+tree nodes.
//!
//! Header (32 bytes, little endian): `checksum u64 | txn u64 | kind u8 | pad u8 | n u16 |
//! data_start u16 | frag u16 | link u64`. Node pages keep `n` u16 slot offsets right after the
//! header, in key order, and entry bodies in a heap growing down from the page end.
//! Leaf entry: `klen u16 | vlen u16 | key | value`. Branch entry: `klen u16 | key | child u64`;
//! a branch's leftmost child is `link`, entry `i` holds the first key of child `i + 1`.

use crate::checksum::hash;

pub type PageId = u64;
pub const PAGE_SIZE: usize = 4096;
pub const HEADER: usize = 32;
/// Largest key a node entry may hold; guarantees any two-way split fits.
pub const MAX_KEY: usize = 512;
/// Largest value stored inline in a leaf; longer values are chunked by the tree layer.
pub const MAX_INLINE_VALUE: usize = 1024;

pub const KIND_BRANCH: u8 = 2;
pub const KIND_LEAF: u8 = 3;
pub const KIND_BITMAP: u8 = 4;
pub const KIND_INDEX: u8 = 5;

const OFF_SUM: usize = 0;
const OFF_TXN: usize = 8;
const OFF_KIND: usize = 16;
const OFF_N: usize = 18;
const OFF_DATA: usize = 20;
const OFF_FRAG: usize = 22;
const OFF_LINK: usize = 24;

/// Why a page failed to decode (the caller adds file and page id).
pub type PageErr = String;

#[inline]
pub fn rd16(p: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([p[o], p[o + 1]])
}
#[inline]
pub fn rd64(p: &[u8], o: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&p[o..o + 8]);
    u64::from_le_bytes(b)
}
#[inline]
pub fn wr16(p: &mut [u8], o: usize, v: u16) {
    p[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
#[inline]
pub fn wr64(p: &mut [u8], o: usize, v: u64) {
    p[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn kind(p: &[u8]) -> u8 {
    p[OFF_KIND]
}
pub fn txn(p: &[u8]) -> u64 {
    rd64(p, OFF_TXN)
}
pub fn count(p: &[u8]) -> usize {
    rd16(p, OFF_N) as usize
}
pub fn link(p: &[u8]) -> u64 {
    rd64(p, OFF_LINK)
}
pub fn stored_checksum(p: &[u8]) -> u64 {
    rd64(p, OFF_SUM)
}
pub fn set_count(p: &mut [u8], n: usize) {
    wr16(p, OFF_N, n as u16);
}
pub fn set_link(p: &mut [u8], v: u64) {
    wr64(p, OFF_LINK, v);
}
pub fn set_txn(p: &mut [u8], t: u64) {
    wr64(p, OFF_TXN, t);
}
fn data_start(p: &[u8]) -> usize {
    let d = rd16(p, OFF_DATA) as usize;
    if d == 0 {
        PAGE_SIZE
    } else {
        d
    }
}
fn set_data_start(p: &mut [u8], d: usize) {
    wr16(p, OFF_DATA, if d == PAGE_SIZE { 0 } else { d as u16 });
}

/// Reset `p` to an empty page of `kind` written by `txn`.
pub fn init(p: &mut [u8], kind: u8, txn: u64) {
    p[..HEADER].fill(0);
    p[OFF_KIND] = kind;
    set_txn(p, txn);
    set_data_start(p, PAGE_SIZE);
}

/// Checksum of the meaningful bytes of a page (node pages skip their unused middle).
pub fn compute_checksum(p: &[u8]) -> u64 {
    let k = p[OFF_KIND];
    if k == KIND_LEAF || k == KIND_BRANCH {
        let slots_end = (HEADER + 2 * count(p)).min(PAGE_SIZE);
        let ds = data_start(p).clamp(slots_end, PAGE_SIZE);
        hash(&p[ds..], hash(&p[8..slots_end], 0))
    } else {
        hash(&p[8..], 0)
    }
}
pub fn seal(p: &mut [u8]) -> u64 {
    let c = compute_checksum(p);
    wr64(p, OFF_SUM, c);
    c
}

fn entry_size(kind: u8, p: &[u8], off: usize) -> usize {
    let k = rd16(p, off) as usize;
    if kind == KIND_LEAF {
        4 + k + rd16(p, off + 2) as usize
    } else {
        2 + k + 8
    }
}

/// Check every slot and entry of a node page lies inside the page, so that the unchecked
/// accessors below cannot go out of bounds. Called on every page read from the file before use.
pub fn validate_node(p: &[u8]) -> Result<(), PageErr> {
    let k = kind(p);
    if k != KIND_LEAF && k != KIND_BRANCH {
        return Err(format!("expected a tree node, found page kind {k}"));
    }
    let n = count(p);
    let slots_end = HEADER + 2 * n;
    let ds = data_start(p);
    if slots_end > ds || ds > PAGE_SIZE {
        return Err(format!("bad node layout: {n} slots, data at {ds}"));
    }
    if rd16(p, OFF_FRAG) as usize > PAGE_SIZE - ds {
        return Err("fragmentation count exceeds the heap".into());
    }
    for i in 0..n {
        let off = rd16(p, HEADER + 2 * i) as usize;
        if off < ds || off + 4 > PAGE_SIZE {
            return Err(format!("slot {i} points outside the heap ({off})"));
        }
        let size = entry_size(k, p, off);
        if off + size > PAGE_SIZE {
            return Err(format!("entry {i} runs past the page end"));
        }
    }
    Ok(())
}

/// Bounds-checked u16 read: 0 outside the page (the readers' accessors never panic on a
/// damaged page; `check` and copy-on-write run [`validate_node`] to report the damage).
#[inline(always)]
fn rd16s(p: &[u8], o: usize) -> u16 {
    match p.get(o..o + 2) {
        Some(b) => u16::from_le_bytes([b[0], b[1]]),
        None => 0,
    }
}

/// Cheap structural check done on every node a reader visits.
pub fn header_ok(p: &[u8], want: u8) -> bool {
    kind(p) == want && HEADER + 2 * count(p) <= data_start(p)
}

fn slot(p: &[u8], i: usize) -> usize {
    rd16s(p, HEADER + 2 * i) as usize
}

/// Key of entry `i` (empty if the page is damaged).
pub fn key(p: &[u8], i: usize) -> &[u8] {
    let o = slot(p, i);
    let k = rd16s(p, o) as usize;
    let start = if kind(p) == KIND_LEAF { o + 4 } else { o + 2 };
    p.get(start..start + k).unwrap_or(&[])
}
/// Value of leaf entry `i` (empty if the page is damaged).
pub fn value(p: &[u8], i: usize) -> &[u8] {
    let o = slot(p, i);
    let k = rd16s(p, o) as usize;
    let v = rd16s(p, o + 2) as usize;
    p.get(o + 4 + k..o + 4 + k + v).unwrap_or(&[])
}
/// Child `i` of a branch, `0..=n` (0 if the page is damaged).
pub fn child(p: &[u8], i: usize) -> PageId {
    if i == 0 {
        return link(p);
    }
    let o = slot(p, i - 1);
    let k = rd16s(p, o) as usize;
    match p.get(o + 2 + k..o + 10 + k) {
        Some(_) => rd64(p, o + 2 + k),
        None => 0,
    }
}
pub fn set_child(p: &mut [u8], i: usize, c: PageId) {
    if i == 0 {
        set_link(p, c);
        return;
    }
    let o = slot(p, i - 1);
    let k = rd16(p, o) as usize;
    wr64(p, o + 2 + k, c);
}
/// Raw bytes of entry `i`.
pub fn raw_entry(p: &[u8], i: usize) -> &[u8] {
    let o = slot(p, i);
    &p[o..o + entry_size(kind(p), p, o)]
}

/// Binary search: `Ok(i)` if entry `i` has `k`, else `Err(insertion point)`.
#[inline]
pub fn search(p: &[u8], k: &[u8]) -> Result<usize, usize> {
    let key_at = if kind(p) == KIND_LEAF { 4 } else { 2 };
    let n = count(p);
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        // same as `key(p, mid)`, with the kind test hoisted out of the loop
        let o = rd16s(p, HEADER + 2 * mid) as usize;
        let kl = rd16s(p, o) as usize;
        let probe = p.get(o + key_at..o + key_at + kl).unwrap_or(&[]);
        match probe.cmp(k) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Ok(mid),
        }
    }
    Err(lo)
}
/// Index of the branch child whose range holds `k`.
pub fn child_index(p: &[u8], k: &[u8]) -> usize {
    match search(p, k) {
        Ok(i) => i + 1,
        Err(i) => i,
    }
}

pub fn leaf_entry(k: &[u8], v: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(k.len() as u16).to_le_bytes());
    out.extend_from_slice(&(v.len() as u16).to_le_bytes());
    out.extend_from_slice(k);
    out.extend_from_slice(v);
}
pub fn branch_entry(k: &[u8], c: PageId, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(k.len() as u16).to_le_bytes());
    out.extend_from_slice(k);
    out.extend_from_slice(&c.to_le_bytes());
}

/// Bytes still usable for entries (including fragmented holes reclaimed by compaction).
pub fn free_space(p: &[u8]) -> usize {
    data_start(p).saturating_sub(HEADER + 2 * count(p)) + rd16(p, OFF_FRAG) as usize
}
/// Bytes used by slots and entries.
pub fn used_space(p: &[u8]) -> usize {
    (PAGE_SIZE - HEADER).saturating_sub(free_space(p))
}

/// Insert raw entry `e` at slot `i`; false if it does not fit.
pub fn insert_raw(p: &mut [u8], i: usize, e: &[u8]) -> bool {
    if free_space(p) < e.len() + 2 {
        return false;
    }
    let n = count(p);
    if data_start(p) - (HEADER + 2 * n) < e.len() + 2 {
        compact(p);
    }
    let ds = data_start(p) - e.len();
    p[ds..ds + e.len()].copy_from_slice(e);
    set_data_start(p, ds);
    let s = HEADER + 2 * i;
    p.copy_within(s..HEADER + 2 * n, s + 2);
    wr16(p, s, ds as u16);
    set_count(p, n + 1);
    true
}

/// Remove slot `i`, leaving a hole that compaction reclaims.
pub fn remove(p: &mut [u8], i: usize) {
    let n = count(p);
    let o = slot(p, i);
    let size = entry_size(kind(p), p, o);
    if o == data_start(p) {
        set_data_start(p, o + size);
    } else {
        let f = rd16(p, OFF_FRAG) as usize + size;
        wr16(p, OFF_FRAG, f as u16);
    }
    let s = HEADER + 2 * i;
    p.copy_within(s + 2..HEADER + 2 * n, s);
    set_count(p, n - 1);
}

fn compact(p: &mut [u8]) {
    let mut tmp = [0u8; PAGE_SIZE];
    tmp.copy_from_slice(p);
    let n = count(&tmp);
    let mut ds = PAGE_SIZE;
    for i in 0..n {
        let e = raw_entry(&tmp, i);
        ds -= e.len();
        p[ds..ds + e.len()].copy_from_slice(e);
        wr16(p, HEADER + 2 * i, ds as u16);
    }
    set_data_start(p, ds);
    wr16(p, OFF_FRAG, 0);
}

/// Rewrite `p` as a node of `kind` holding exactly `entries`, keeping `link`.
pub fn rebuild<'a>(
    p: &mut [u8],
    kind: u8,
    txn: u64,
    link: u64,
    entries: impl Iterator<Item = &'a [u8]>,
) {
    init(p, kind, txn);
    set_link(p, link);
    let mut ds = PAGE_SIZE;
    let mut n = 0;
    for e in entries {
        ds -= e.len();
        p[ds..ds + e.len()].copy_from_slice(e);
        wr16(p, HEADER + 2 * n, ds as u16);
        n += 1;
    }
    set_data_start(p, ds);
    set_count(p, n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_compact_keep_order() {
        let mut p = vec![0u8; PAGE_SIZE];
        init(&mut p, KIND_LEAF, 1);
        let mut e = Vec::new();
        for i in (0..50u32).rev() {
            let k = format!("key{i:03}");
            leaf_entry(k.as_bytes(), &[i as u8; 20], &mut e);
            let at = search(&p, k.as_bytes()).unwrap_err();
            assert!(insert_raw(&mut p, at, &e));
        }
        for i in (0..50).step_by(2) {
            let at = search(&p, format!("key{i:03}").as_bytes()).unwrap();
            remove(&mut p, at);
        }
        validate_node(&p).unwrap();
        assert_eq!(count(&p), 25);
        let before = free_space(&p);
        compact(&mut p);
        assert_eq!(free_space(&p), before);
        for i in 0..25 {
            assert_eq!(key(&p, i), format!("key{:03}", 2 * i + 1).as_bytes());
            assert_eq!(value(&p, i), &[(2 * i + 1) as u8; 20]);
        }
        let c = seal(&mut p);
        assert_eq!(compute_checksum(&p), c);
    }
}
