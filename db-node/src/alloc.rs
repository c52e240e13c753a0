//! File space: which pages are in use. The state lives in the file as an allocation bitmap
//! (one bit per page, in bitmap pages listed by an index page the meta points to), so whoever
//! opens the file next (a restarted master, later) recovers it exactly. Bitmap pages are
//! copy-on-write like everything else: a commit writes new copies of the bitmap pages it changed
//! and a new index page, and retires the old ones.
//!
//! Rewriting bitmap pages on every commit would cost two page writes per commit, so a commit
//! normally only appends its changes to an allocation log carried in the meta page (the
//! "delta": allocated and freed page ids since the bitmap checkpoint). When the log is full, or
//! the file outgrows the bitmap, the commit writes a new checkpoint and empties the log. The
//! state of a commit is its checkpoint plus its log, both reachable from its meta page.
//!
//! Two parts:
//! * [`AllocTable`]: the on-file allocation table above, updated by the commit step;
//! * [`SpaceAllocator`]: where a writer gets free pages. [`LocalAllocator`] serves them from the
//!   table's free pages and also knows what the file cannot: pages retired by recent commits that
//!   an open snapshot may still read, reused only after every older snapshot is gone. With a
//!   master (issue 6), the master builds the same free set from the same table and hands pages
//!   to workers; a worker's commit records them in the table.

use crate::meta::MAX_DELTA;
use crate::page::{self, PageId, HEADER, KIND_BITMAP, KIND_INDEX, PAGE_SIZE};
use crate::store::Map;
use std::collections::{BTreeSet, VecDeque};

/// Pages one bitmap page describes.
pub const BITS_PER_PAGE: u64 = ((PAGE_SIZE - HEADER) * 8) as u64;
const WORDS_PER_PAGE: usize = (PAGE_SIZE - HEADER) / 8;
/// Bitmap pages one index page can list (about 63 GiB of data file).
pub const MAX_BITMAP_PAGES: usize = (PAGE_SIZE - HEADER) / 8;
/// Allocation-log flag: the page was allocated (else freed).
pub const DELTA_ALLOC: u64 = 1 << 63;

/// File space as a writer sees it. Today [`LocalAllocator`] serves it from the file; with a
/// master (issue 6) the same calls are answered from the master's allocation table, which hands
/// a worker a batch of pages it owns until it commits or dies.
pub trait SpaceAllocator: Send {
    /// A page no snapshot can reach, owned by the caller until it commits or releases it.
    fn allocate(&mut self) -> Result<PageId, String>;
    /// Give back a page allocated in the current, uncommitted transaction.
    fn release(&mut self, page: PageId);
    /// Pages that commit `txn` made unreachable; reusable once no snapshot older than `txn` lives.
    fn retire(&mut self, txn: u64, pages: Vec<PageId>);
    /// Every snapshot still open has a transaction id of at least `oldest`.
    fn reclaim(&mut self, oldest: u64);
    /// Pages the file must hold (high-water mark of every page handed out).
    fn page_count(&self) -> u64;
    /// Pages waiting for old snapshots to end (for statistics).
    fn retired_pages(&self) -> usize {
        0
    }
}

/// The on-file allocation table of the current state: bitmap checkpoint plus allocation log.
pub struct AllocTable {
    bits: Vec<u64>,
    bitmap_pages: Vec<PageId>,
    index_page: PageId,
    delta: Vec<u64>,
}

/// The single-process source of free pages, built from the table.
pub struct LocalAllocator {
    page_count: u64,
    /// Free pages, handed out lowest first so that a commit's pages tend to be contiguous
    /// (one write request instead of several when the commit is flushed).
    reusable: BTreeSet<PageId>,
    retired: VecDeque<(u64, Vec<PageId>)>,
}

impl LocalAllocator {
    /// Every page below `page_count` that the table marks free is free.
    pub fn from_table(table: &AllocTable, page_count: u64) -> LocalAllocator {
        LocalAllocator {
            page_count,
            reusable: (0..page_count).filter(|&p| !table.get(p)).collect(),
            retired: VecDeque::new(),
        }
    }
}

impl AllocTable {
    /// Read the bitmap checkpoint of a committed state and replay its allocation log.
    pub fn load(
        map: &Map,
        index_page: PageId,
        page_count: u64,
        delta: &[u64],
    ) -> Result<AllocTable, String> {
        let idx = map
            .page(index_page)
            .ok_or_else(|| format!("allocation index page {index_page} beyond the file end"))?;
        if page::kind(idx) != KIND_INDEX {
            return Err(format!("page {index_page} should be the allocation index"));
        }
        let n = page::count(idx);
        let need = page_count.div_ceil(BITS_PER_PAGE) as usize;
        if n != need || n > MAX_BITMAP_PAGES {
            return Err(format!(
                "allocation index lists {n} bitmap pages, {need} expected"
            ));
        }
        let mut a = AllocTable {
            bits: vec![0; n * WORDS_PER_PAGE],
            bitmap_pages: Vec::with_capacity(n),
            index_page,
            delta: delta.to_vec(),
        };
        for i in 0..n {
            let bp = page::rd64(idx, HEADER + 8 * i);
            let b = map
                .page(bp)
                .filter(|_| bp < page_count)
                .ok_or_else(|| format!("bitmap page {bp} beyond the file end"))?;
            if page::kind(b) != KIND_BITMAP || page::link(b) != i as u64 {
                return Err(format!("page {bp} should be bitmap page #{i}"));
            }
            for w in 0..WORDS_PER_PAGE {
                a.bits[i * WORDS_PER_PAGE + w] = page::rd64(b, HEADER + 8 * w);
            }
            a.bitmap_pages.push(bp);
        }
        for &d in delta {
            let p = d & !DELTA_ALLOC;
            if p >= page_count {
                return Err(format!(
                    "allocation log names page {p} beyond the file's {page_count}"
                ));
            }
            a.set(p, d & DELTA_ALLOC != 0);
        }
        if !(a.get(0) && a.get(1) && a.get(index_page)) {
            return Err("allocation bitmap marks a meta or index page free".into());
        }
        Ok(a)
    }

    pub fn get(&self, p: PageId) -> bool {
        self.bits
            .get((p / 64) as usize)
            .is_some_and(|w| w & (1 << (p % 64)) != 0)
    }

    fn set(&mut self, p: PageId, on: bool) {
        let w = (p / 64) as usize;
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        if on {
            self.bits[w] |= 1 << (p % 64);
        } else {
            self.bits[w] &= !(1 << (p % 64));
        }
    }

    pub fn index_page(&self) -> PageId {
        self.index_page
    }
    pub fn bitmap_pages(&self) -> &[PageId] {
        &self.bitmap_pages
    }
    /// Allocation changes since the bitmap checkpoint (stored in the meta page).
    pub fn delta(&self) -> &[u64] {
        &self.delta
    }
    /// Pages marked in use in the committed bitmap.
    pub fn used_pages(&self) -> u64 {
        self.bits.iter().map(|w| w.count_ones() as u64).sum()
    }

    /// Record commit `txn` (pages it allocated and retired) in the table, and lay out the new
    /// copies of the changed bitmap pages and a new index page. Returns the pages to write
    /// (the caller must make the file big enough, then call [`Self::write_pages`]).
    pub fn commit(
        &mut self,
        txn: u64,
        allocated: &[PageId],
        retired: &[PageId],
        space: &mut dyn SpaceAllocator,
    ) -> Result<Vec<PageId>, String> {
        let need = space.page_count().div_ceil(BITS_PER_PAGE) as usize;
        if self.delta.len() + allocated.len() + retired.len() <= MAX_DELTA
            && need <= self.bitmap_pages.len()
        {
            for &p in allocated {
                self.set(p, true);
                self.delta.push(p | DELTA_ALLOC);
            }
            for &p in retired {
                self.set(p, false);
                self.delta.push(p);
            }
            space.retire(txn, retired.to_vec());
            return Ok(Vec::new());
        }
        self.delta.clear();
        let mut dirty = BTreeSet::new();
        for &p in allocated {
            self.set(p, true);
            dirty.insert((p / BITS_PER_PAGE) as usize);
        }
        for &p in retired {
            self.set(p, false);
            dirty.insert((p / BITS_PER_PAGE) as usize);
        }
        let mut gone: Vec<PageId> = Vec::new();
        let new_index = space.allocate()?;
        self.set(new_index, true);
        dirty.insert((new_index / BITS_PER_PAGE) as usize);
        gone.push(self.index_page);
        self.index_page = new_index;
        let mut written = vec![new_index];
        let mut moved = BTreeSet::new();
        loop {
            for &p in &gone {
                self.set(p, false);
                dirty.insert((p / BITS_PER_PAGE) as usize);
            }
            let need = space.page_count().div_ceil(BITS_PER_PAGE) as usize;
            if need > MAX_BITMAP_PAGES {
                return Err(format!("data file exceeds {MAX_BITMAP_PAGES} bitmap pages"));
            }
            for i in self.bitmap_pages.len()..need {
                self.bitmap_pages.push(0);
                dirty.insert(i);
            }
            let next = dirty.iter().copied().find(|i| !moved.contains(i));
            let Some(i) = next else { break };
            let np = space.allocate()?;
            self.set(np, true);
            dirty.insert((np / BITS_PER_PAGE) as usize);
            let old = std::mem::replace(&mut self.bitmap_pages[i], np);
            if old != 0 {
                gone.push(old);
            }
            moved.insert(i);
            written.push(np);
        }
        let mut all_retired = retired.to_vec();
        all_retired.extend(gone);
        space.retire(txn, all_retired);
        Ok(written)
    }

    /// Write the bitmap pages laid out by [`Self::commit`] and the index page into the map.
    ///
    /// # Safety
    /// `written` must be exactly the list `commit` returned, and the map must cover them.
    pub unsafe fn write_pages(&self, map: &Map, txn: u64, written: &[PageId]) {
        if written.is_empty() {
            return;
        }
        for (i, &bp) in self.bitmap_pages.iter().enumerate() {
            if !written.contains(&bp) {
                continue;
            }
            let p = map.page_mut(bp);
            page::init(p, KIND_BITMAP, txn);
            page::set_link(p, i as u64);
            for w in 0..WORDS_PER_PAGE {
                let v = self.bits.get(i * WORDS_PER_PAGE + w).copied().unwrap_or(0);
                page::wr64(p, HEADER + 8 * w, v);
            }
        }
        let p = map.page_mut(self.index_page);
        page::init(p, KIND_INDEX, txn);
        page::set_count(p, self.bitmap_pages.len());
        for (i, &bp) in self.bitmap_pages.iter().enumerate() {
            page::wr64(p, HEADER + 8 * i, bp);
        }
    }
}

impl SpaceAllocator for LocalAllocator {
    fn allocate(&mut self) -> Result<PageId, String> {
        if let Some(p) = self.reusable.pop_first() {
            return Ok(p);
        }
        let p = self.page_count;
        if p >= (MAX_BITMAP_PAGES as u64) * BITS_PER_PAGE {
            return Err("data file reached its maximum size".into());
        }
        self.page_count += 1;
        Ok(p)
    }
    fn release(&mut self, page: PageId) {
        self.reusable.insert(page);
    }
    fn retire(&mut self, txn: u64, pages: Vec<PageId>) {
        if !pages.is_empty() {
            self.retired.push_back((txn, pages));
        }
    }
    fn reclaim(&mut self, oldest: u64) {
        while self.retired.front().is_some_and(|(t, _)| *t <= oldest) {
            if let Some((_, pages)) = self.retired.pop_front() {
                self.reusable.extend(pages);
            }
        }
    }
    fn page_count(&self) -> u64 {
        self.page_count
    }
    fn retired_pages(&self) -> usize {
        self.retired.iter().map(|(_, v)| v.len()).sum()
    }
}
