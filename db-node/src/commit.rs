//! Making a transaction durable and visible in one step.
//!
//! Every commit writes a meta page: checkpoints alternate between the two slots at the start of
//! the data file, logged commits between the two slots of the redo file. At open, the valid
//! meta with the highest transaction id among the four wins. There are two kinds of commit:
//!
//! * **Checkpoint**: the meta points at the new tree root and allocation state. Every page the
//!   commit wrote is sealed with its checksum and listed in the meta with it; in `sync` mode one
//!   fdatasync then makes the commit durable (an interrupted flush leaves either a torn meta or
//!   a listed page whose checksum does not match, and the open falls back to the other meta,
//!   whose pages this commit never touched). Commits too big to list flush their pages first and
//!   the meta after.
//! * **Logged** (`sync` mode, small commits): the tree pages are written to the map but not
//!   flushed; the meta keeps pointing at the last checkpoint and carries a redo log of every
//!   record change since it. It goes to the redo file, which is flushed on its own: one page
//!   write plus one fdatasync of a small file per commit. Pages of the checkpoint's tree that
//!   logged commits replace stay untouched until the next checkpoint is durable, so that tree
//!   stays intact on disk; an open replays the log on top of it. Pages allocated and replaced
//!   again since the checkpoint belong to no durable state and are reused as soon as no
//!   snapshot reads them. A checkpoint happens when
//!   the log is full, for a commit too big to log, and on `check` and close.
//!
//! In `nosync` mode every commit is a checkpoint without flushes.

use crate::db::{Head, Writer};
use crate::error::{Error, Result};
use crate::meta::{self, Meta, FLAG_LIST_COMPLETE, MAX_LISTED};
use crate::page::{self, PageId};
use std::collections::HashSet;

/// What a transaction changed.
pub(crate) struct Changes {
    pub txn: u64,
    pub root: PageId,
    pub records: u64,
    pub fence: u64,
    pub allocated: Vec<PageId>,
    pub retired: Vec<PageId>,
    /// Redo log of the record changes, if the transaction may be committed by logging.
    pub log: Option<Vec<u8>>,
}

/// The state on disk at the last checkpoint, and what happened since.
#[derive(Default)]
pub(crate) struct SinceCheckpoint {
    /// Transaction id of the checkpoint.
    pub txn: u64,
    pub root: PageId,
    pub records: u64,
    pub page_count: u64,
    /// Pages allocated by logged commits since the checkpoint and still in use.
    pub allocated: HashSet<PageId>,
    /// Pages of the checkpoint's tree that logged commits replaced: kept until the next
    /// checkpoint is durable.
    pub retired: Vec<PageId>,
    pub log: Vec<u8>,
}

const OP_PUT: u8 = 1;
const OP_DEL: u8 = 2;

/// Append one record change to a redo log: `op u8 | klen u16 | key | [vlen u16 | value]`.
pub(crate) fn encode_op(log: &mut Vec<u8>, key: &[u8], rec: Option<&[u8]>) {
    log.push(if rec.is_some() { OP_PUT } else { OP_DEL });
    log.extend_from_slice(&(key.len() as u16).to_le_bytes());
    log.extend_from_slice(key);
    if let Some(r) = rec {
        log.extend_from_slice(&(r.len() as u16).to_le_bytes());
        log.extend_from_slice(r);
    }
}

type Op = (Vec<u8>, Option<Vec<u8>>);

/// Decode a redo log.
pub(crate) fn decode_log(mut log: &[u8]) -> std::result::Result<Vec<Op>, String> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> std::result::Result<&'a [u8], String> {
        if b.len() < n {
            return Err("truncated entry".into());
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h)
    }
    fn len16(b: &mut &[u8]) -> std::result::Result<usize, String> {
        let x = take(b, 2)?;
        Ok(u16::from_le_bytes([x[0], x[1]]) as usize)
    }
    let mut out = Vec::new();
    while !log.is_empty() {
        let op = take(&mut log, 1)?[0];
        let kl = len16(&mut log)?;
        let key = take(&mut log, kl)?.to_vec();
        match op {
            OP_PUT => {
                let vl = len16(&mut log)?;
                out.push((key, Some(take(&mut log, vl)?.to_vec())));
            }
            OP_DEL => out.push((key, None)),
            x => return Err(format!("unknown operation {x}")),
        }
    }
    Ok(out)
}

/// Bytes of redo log the next transaction may still add.
pub(crate) fn log_room(w: &Writer) -> usize {
    meta::log_capacity(w.table.delta().len()).saturating_sub(w.since.log.len())
}

/// Commit `c`: logged if it can be, else as a checkpoint.
pub(crate) fn commit(w: &mut Writer, c: Changes) -> Result<Head> {
    match c.log {
        Some(ref log) if w.sync && log.len() <= log_room(w) => {}
        _ => return checkpoint(w, c),
    }
    for &p in &c.allocated {
        // SAFETY: pages of this commit; no snapshot reaches them yet.
        page::seal(unsafe { w.file.map.page_mut(p) });
    }
    w.since
        .log
        .extend_from_slice(c.log.as_deref().unwrap_or(&[]));
    w.since.allocated.extend(c.allocated.iter().copied());
    // Pages allocated since the checkpoint and replaced again are in no durable state: recovery
    // rebuilds from the checkpoint's tree and the redo log. They only wait for readers.
    let mut recycle = Vec::new();
    for &p in &c.retired {
        if w.since.allocated.remove(&p) {
            recycle.push(p);
        } else {
            w.since.retired.push(p);
        }
    }
    w.space.retire(c.txn, recycle);
    let m = Meta {
        txn: c.txn,
        root: w.since.root,
        alloc_index: w.table.index_page(),
        page_count: w.since.page_count,
        fence: c.fence,
        records: w.since.records,
        flags: 0,
        written: Vec::new(),
        delta: w.table.delta().to_vec(),
        log: w.since.log.clone(),
        base: w.since.txn,
    };
    let mut buf = vec![0u8; page::PAGE_SIZE];
    m.encode(&mut buf);
    w.redo.write(w.next_redo_slot, &buf)?;
    w.next_redo_slot ^= 1;
    finish(w, &c)
}

fn finish(w: &mut Writer, c: &Changes) -> Result<Head> {
    let page_count = w.space.page_count();
    w.meta = Meta {
        txn: c.txn,
        root: c.root,
        alloc_index: w.table.index_page(),
        page_count,
        fence: c.fence,
        records: c.records,
        ..Meta::default()
    };
    Ok(Head {
        txn: c.txn,
        root: c.root,
        page_count,
    })
}

fn checkpoint(w: &mut Writer, c: Changes) -> Result<Head> {
    let mut allocated: Vec<PageId> = std::mem::take(&mut w.since.allocated).into_iter().collect();
    let from_logged = allocated.len();
    allocated.extend_from_slice(&c.allocated);
    let mut retired = std::mem::take(&mut w.since.retired);
    retired.extend_from_slice(&c.retired);
    w.since.log.clear();
    let extra = w
        .table
        .commit(c.txn, &allocated, &retired, &mut *w.space)
        .map_err(Error::Full)?;
    w.file.ensure_pages(w.space.page_count())?;
    // SAFETY: `extra` are pages the allocator just handed to this commit.
    unsafe { w.table.write_pages(&w.file.map, c.txn, &extra) };
    let gone: HashSet<PageId> = if retired.is_empty() || from_logged == 0 {
        HashSet::new()
    } else {
        retired.iter().copied().collect()
    };
    let mut written = Vec::with_capacity(allocated.len() + extra.len());
    for &p in allocated.iter().chain(extra.iter()) {
        if gone.contains(&p) {
            continue;
        }
        // SAFETY: pages of this checkpoint that no snapshot reaches yet, or pages of earlier
        // logged commits, immutable since and sealed with the same checksum again.
        let sum = page::seal(unsafe { w.file.map.page_mut(p) });
        written.push((p, sum));
    }
    let complete = written.len() <= MAX_LISTED;
    let m = Meta {
        txn: c.txn,
        root: c.root,
        alloc_index: w.table.index_page(),
        page_count: w.space.page_count(),
        fence: c.fence,
        records: c.records,
        flags: if complete { FLAG_LIST_COMPLETE } else { 0 },
        written: if complete { written } else { Vec::new() },
        delta: w.table.delta().to_vec(),
        log: Vec::new(),
        base: c.txn,
    };
    if w.sync && !complete {
        w.file.sync()?;
    }
    // Readers of other processes read the meta page without a lock: every page it names is
    // written before it.
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    // SAFETY: the other slot holds the previous checkpoint; a reader that reads this one while
    // it is written sees a bad checksum and takes the other.
    m.encode(unsafe { w.file.map.page_mut(w.next_ckpt_slot) });
    w.next_ckpt_slot ^= 1;
    if w.sync {
        w.file.sync()?;
    }
    w.since.txn = c.txn;
    w.since.root = c.root;
    w.since.records = c.records;
    w.since.page_count = m.page_count;
    finish(w, &c)
}
