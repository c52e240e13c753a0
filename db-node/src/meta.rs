//! Meta pages: pages 0 and 1 of the data file (checkpoints) and the two pages of the redo file
//! (logged commits); see [`crate::commit`]. Layout (little endian):
//!
//! ```text
//!  0  [8]  magic "\x89DBNODE\n"
//!  8  u32  format version
//! 12  u32  page size
//! 16  u64  checksum of bytes 0..16 and 24..(96 + 16 * listed)
//! 24  u64  transaction id
//! 32  u64  root page of the data tree (0 = empty)
//! 40  u64  allocation index page
//! 48  u64  page count (high-water mark of the file, in pages)
//! 56  u64  fencing-token high-water mark
//! 64  u64  number of records in the tree
//! 72  u32  flags (bit 0: the page list below is complete)
//! 76  u32  listed: number of (page, checksum) pairs below (at most 122)
//! 80  u32  delta: number of allocation-log entries below (at most 256)
//! 84  u32  redo: bytes of redo log below
//! 88  u64  base: transaction id of the checkpoint this state builds on (its own id for a
//!          checkpoint)
//! 96  listed × (u64 page id, u64 page checksum): every page this commit wrote
//! ..  delta × u64: allocation changes since the bitmap the index page describes, in order;
//!     bit 63 set = page allocated, clear = page freed
//! ..  redo bytes: record changes since the checkpoint this meta points at (see
//!     [`crate::commit`]); entries `op u8 (1 put, 2 delete) | klen u16 | key | [vlen u16 | value]`
//! ```

use crate::checksum::hash;
use crate::page::{rd64, wr64, PageId, PAGE_SIZE};

pub const MAGIC: [u8; 8] = *b"\x89DBNODE\n";
pub const FORMAT_VERSION: u32 = 1;
const LIST_AT: usize = 96;
/// Most pages a meta page can list; bigger commits flush their pages before writing the meta.
pub const MAX_LISTED: usize = 122;
/// Most allocation-log entries a meta page carries before the bitmap is rewritten.
pub const MAX_DELTA: usize = (PAGE_SIZE - LIST_AT - 16 * MAX_LISTED) / 8;
pub const FLAG_LIST_COMPLETE: u32 = 1;

/// The decoded content of a meta page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub txn: u64,
    pub root: PageId,
    pub alloc_index: PageId,
    pub page_count: u64,
    pub fence: u64,
    pub records: u64,
    pub flags: u32,
    /// Pages written by this commit with their checksums (empty unless `FLAG_LIST_COMPLETE`).
    pub written: Vec<(PageId, u64)>,
    /// Allocation changes since the bitmap checkpoint (see [`crate::alloc`]).
    pub delta: Vec<u64>,
    /// Redo log since the tree checkpoint (see [`crate::commit`]).
    pub log: Vec<u8>,
    /// Transaction id of the checkpoint this state builds on (its own id for a checkpoint).
    pub base: u64,
}

/// Bytes of redo log a meta page with `delta` allocation-log entries (and no page list) holds.
pub fn log_capacity(delta: usize) -> usize {
    PAGE_SIZE - LIST_AT - 8 * delta
}

/// Why a meta slot is unusable.
#[derive(Debug, PartialEq, Eq)]
pub enum MetaErr {
    NoMagic,
    Newer(u32),
    Bad(String),
}

fn rd32(p: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]])
}

fn checksum(p: &[u8], end: usize) -> u64 {
    hash(&p[24..end], hash(&p[..16], 7))
}

impl Meta {
    pub fn encode(&self, p: &mut [u8]) {
        p.fill(0);
        p[..8].copy_from_slice(&MAGIC);
        p[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        p[12..16].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        wr64(p, 24, self.txn);
        wr64(p, 32, self.root);
        wr64(p, 40, self.alloc_index);
        wr64(p, 48, self.page_count);
        wr64(p, 56, self.fence);
        wr64(p, 64, self.records);
        wr64(p, 88, self.base);
        let listed = self.written.len().min(MAX_LISTED);
        p[72..76].copy_from_slice(&self.flags.to_le_bytes());
        p[76..80].copy_from_slice(&(listed as u32).to_le_bytes());
        for (i, (id, sum)) in self.written.iter().take(listed).enumerate() {
            wr64(p, LIST_AT + 16 * i, *id);
            wr64(p, LIST_AT + 16 * i + 8, *sum);
        }
        let delta = self.delta.len().min(MAX_DELTA);
        p[80..84].copy_from_slice(&(delta as u32).to_le_bytes());
        let at = LIST_AT + 16 * listed;
        for (i, d) in self.delta.iter().take(delta).enumerate() {
            wr64(p, at + 8 * i, *d);
        }
        let mut end = at + 8 * delta;
        let log = self.log.len().min(PAGE_SIZE - end);
        p[84..88].copy_from_slice(&(log as u32).to_le_bytes());
        p[end..end + log].copy_from_slice(&self.log[..log]);
        end += log;
        let c = checksum(p, end);
        wr64(p, 16, c);
    }

    pub fn decode(p: &[u8]) -> Result<Meta, MetaErr> {
        if p.len() < PAGE_SIZE || p[..8] != MAGIC {
            return Err(MetaErr::NoMagic);
        }
        let version = rd32(p, 8);
        if version > FORMAT_VERSION {
            return Err(MetaErr::Newer(version));
        }
        if version == 0 || rd32(p, 12) as usize != PAGE_SIZE {
            return Err(MetaErr::Bad(format!(
                "unsupported version {version} / page size {}",
                rd32(p, 12)
            )));
        }
        let listed = rd32(p, 76) as usize;
        let delta = rd32(p, 80) as usize;
        if listed > MAX_LISTED || delta > MAX_DELTA {
            return Err(MetaErr::Bad(format!(
                "page list of {listed}, log of {delta} entries"
            )));
        }
        let log_at = LIST_AT + 16 * listed + 8 * delta;
        let log = rd32(p, 84) as usize;
        if log_at + log > PAGE_SIZE {
            return Err(MetaErr::Bad(format!(
                "redo log of {log} bytes overflows the page"
            )));
        }
        if checksum(p, log_at + log) != rd64(p, 16) {
            return Err(MetaErr::Bad("meta page checksum mismatch".into()));
        }
        let m = Meta {
            txn: rd64(p, 24),
            root: rd64(p, 32),
            alloc_index: rd64(p, 40),
            page_count: rd64(p, 48),
            fence: rd64(p, 56),
            records: rd64(p, 64),
            base: rd64(p, 88),
            flags: rd32(p, 72),
            written: (0..listed)
                .map(|i| (rd64(p, LIST_AT + 16 * i), rd64(p, LIST_AT + 16 * i + 8)))
                .collect(),
            delta: (0..delta)
                .map(|i| rd64(p, LIST_AT + 16 * listed + 8 * i))
                .collect(),
            log: p[log_at..log_at + log].to_vec(),
        };
        if m.page_count < 4
            || m.alloc_index < 2
            || m.alloc_index >= m.page_count
            || m.root >= m.page_count
        {
            return Err(MetaErr::Bad(format!("meta fields out of range: {m:?}")));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_detects_damage() {
        let m = Meta {
            txn: 9,
            root: 5,
            alloc_index: 3,
            page_count: 10,
            fence: 4,
            records: 2,
            flags: FLAG_LIST_COMPLETE,
            written: vec![(5, 77), (6, 88)],
            delta: vec![5 | 1 << 63, 4],
            log: b"redo".to_vec(),
            base: 8,
        };
        let mut p = vec![0u8; PAGE_SIZE];
        m.encode(&mut p);
        assert_eq!(Meta::decode(&p).unwrap(), m);
        p[100] ^= 1;
        assert!(matches!(Meta::decode(&p), Err(MetaErr::Bad(_))));
        let mut q = vec![0u8; PAGE_SIZE];
        m.encode(&mut q);
        q[8] = 9;
        assert_eq!(Meta::decode(&q), Err(MetaErr::Newer(9)));
        assert_eq!(Meta::decode(&[0u8; PAGE_SIZE]), Err(MetaErr::NoMagic));
    }
}
