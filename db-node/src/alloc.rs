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
    /// Another process committed: `table` (with `page_count` pages) is the state of commit
    /// `txn`; `flipped` the pages whose state changed since the last state this writer knew
    /// (`None`: unknown, the table was read whole).
    fn adopt(&mut self, table: &AllocTable, page_count: u64, txn: u64, flipped: Option<&[PageId]>);
}

/// The on-file allocation table of the current state: bitmap checkpoint plus allocation log.
pub struct AllocTable {
    bits: Vec<u64>,
    bitmap_pages: Vec<PageId>,
    /// Transaction stamp of each bitmap page: a page id with the same stamp holds the same
    /// words, so [`AllocTable::reload`] can skip it.
    stamps: Vec<u64>,
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

/// The allocation index page of a state, checked against the file size it claims.
fn index(map: &Map, index_page: PageId, page_count: u64) -> Result<&[u8], String> {
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
    Ok(idx)
}

/// Bitmap page #`i` named by index page `idx`, checked.
fn bitmap_page<'m>(
    map: &'m Map,
    idx: &[u8],
    i: usize,
    page_count: u64,
) -> Result<(PageId, &'m [u8]), String> {
    let bp = page::rd64(idx, HEADER + 8 * i);
    let b = map
        .page(bp)
        .filter(|_| bp < page_count)
        .ok_or_else(|| format!("bitmap page {bp} beyond the file end"))?;
    if page::kind(b) != KIND_BITMAP || page::link(b) != i as u64 {
        return Err(format!("page {bp} should be bitmap page #{i}"));
    }
    Ok((bp, b))
}

impl AllocTable {
    /// Read the bitmap checkpoint of a committed state and replay its allocation log.
    pub fn load(
        map: &Map,
        index_page: PageId,
        page_count: u64,
        delta: &[u64],
    ) -> Result<AllocTable, String> {
        let idx = index(map, index_page, page_count)?;
        let n = page::count(idx);
        let mut a = AllocTable {
            bits: vec![0; n * WORDS_PER_PAGE],
            bitmap_pages: Vec::with_capacity(n),
            stamps: Vec::with_capacity(n),
            index_page,
            delta: delta.to_vec(),
        };
        for i in 0..n {
            let (bp, b) = bitmap_page(map, idx, i, page_count)?;
            for w in 0..WORDS_PER_PAGE {
                a.bits[i * WORDS_PER_PAGE + w] = page::rd64(b, HEADER + 8 * w);
            }
            a.bitmap_pages.push(bp);
            a.stamps.push(page::txn(b));
        }
        a.apply_delta(page_count)?;
        Ok(a)
    }

    fn apply_delta(&mut self, page_count: u64) -> Result<(), String> {
        for i in 0..self.delta.len() {
            let d = self.delta[i];
            let p = d & !DELTA_ALLOC;
            if p >= page_count {
                return Err(format!(
                    "allocation log names page {p} beyond the file's {page_count}"
                ));
            }
            self.set(p, d & DELTA_ALLOC != 0);
        }
        if !(self.get(0) && self.get(1) && self.get(self.index_page)) {
            return Err("allocation bitmap marks a meta or index page free".into());
        }
        Ok(())
    }

    /// Move to another committed state (a newer commit of another process) reading only what
    /// changed: the bitmap pages whose id or stamp differs, and the allocation logs. Returns
    /// the pages whose bit flipped. On error the table is unusable (load it again).
    pub fn reload(
        &mut self,
        map: &Map,
        index_page: PageId,
        page_count: u64,
        delta: &[u64],
    ) -> Result<Vec<PageId>, String> {
        let idx = index(map, index_page, page_count)?;
        let n = page::count(idx);
        let mut words: Vec<usize> = Vec::new();
        let mut fresh: Vec<(usize, PageId, u64)> = Vec::new();
        for i in 0..n {
            let (bp, b) = bitmap_page(map, idx, i, page_count)?;
            let stamp = page::txn(b);
            if self.bitmap_pages.get(i) != Some(&bp) || self.stamps.get(i) != Some(&stamp) {
                fresh.push((i, bp, stamp));
                words.extend(i * WORDS_PER_PAGE..(i + 1) * WORDS_PER_PAGE);
            }
        }
        for &d in self.delta.iter().chain(delta) {
            words.push(((d & !DELTA_ALLOC) / 64) as usize);
        }
        words.sort_unstable();
        words.dedup();
        let old: Vec<u64> = words
            .iter()
            .map(|&w| self.bits.get(w).copied().unwrap_or(0))
            .collect();
        self.bits.resize(n * WORDS_PER_PAGE, 0);
        self.bitmap_pages.resize(n, 0);
        self.stamps.resize(n, 0);
        for (i, bp, stamp) in fresh {
            self.bitmap_pages[i] = bp;
            self.stamps[i] = stamp;
        }
        for &w in &words {
            let i = w / WORDS_PER_PAGE;
            let b = self
                .bitmap_pages
                .get(i)
                .and_then(|&bp| map.page(bp))
                .ok_or_else(|| format!("allocation log names a page beyond bitmap page #{i}"))?;
            self.bits[w] = page::rd64(b, HEADER + 8 * (w % WORDS_PER_PAGE));
        }
        self.index_page = index_page;
        self.delta = delta.to_vec();
        self.apply_delta(page_count)?;
        let mut flipped = Vec::new();
        for (&w, &was) in words.iter().zip(&old) {
            let mut diff = was ^ self.bits.get(w).copied().unwrap_or(0);
            while diff != 0 {
                let b = diff.trailing_zeros() as u64;
                flipped.push(w as u64 * 64 + b);
                diff &= diff - 1;
            }
        }
        Ok(flipped)
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
        // The log is folded into the new bitmap pages: every bitmap page it touched is
        // rewritten, not only those this commit touches.
        let mut dirty: BTreeSet<usize> = self
            .delta
            .iter()
            .map(|d| ((d & !DELTA_ALLOC) / BITS_PER_PAGE) as usize)
            .collect();
        self.delta.clear();
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
                self.stamps.push(0);
                dirty.insert(i);
            }
            let next = dirty.iter().copied().find(|i| !moved.contains(i));
            let Some(i) = next else { break };
            let np = space.allocate()?;
            self.set(np, true);
            dirty.insert((np / BITS_PER_PAGE) as usize);
            let old = std::mem::replace(&mut self.bitmap_pages[i], np);
            self.stamps[i] = txn;
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

/// The space of a handle that never writes (the master's view of the files): it only follows
/// the page count.
pub struct NoSpace(pub u64);

impl SpaceAllocator for NoSpace {
    fn allocate(&mut self) -> Result<PageId, String> {
        Err("this handle only reads the files".into())
    }
    fn release(&mut self, _page: PageId) {}
    fn retire(&mut self, _txn: u64, _pages: Vec<PageId>) {}
    fn reclaim(&mut self, _oldest: u64) {}
    fn page_count(&self) -> u64 {
        self.0
    }
    fn adopt(&mut self, _: &AllocTable, page_count: u64, _: u64, _: Option<&[PageId]>) {
        self.0 = page_count;
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
    /// Pages other processes' commits freed may still be read by their snapshots: they wait
    /// as retired by commit `txn` (released by [`SpaceAllocator::reclaim`] with the oldest
    /// reader of the group). Pages they took are no longer free.
    fn adopt(&mut self, table: &AllocTable, page_count: u64, txn: u64, flipped: Option<&[PageId]>) {
        let freed: Vec<PageId> = match flipped {
            Some(flipped) => {
                let mut freed = Vec::new();
                for &p in flipped {
                    if table.get(p) {
                        self.reusable.remove(&p);
                        for (_, pages) in self.retired.iter_mut() {
                            pages.retain(|&q| q != p);
                        }
                    } else {
                        freed.push(p);
                    }
                }
                freed
            }
            None => {
                // unknown history: every free page waits for the readers of the moment
                self.reusable.clear();
                self.retired.clear();
                (0..page_count).filter(|&p| !table.get(p)).collect()
            }
        };
        self.page_count = self.page_count.max(page_count);
        self.retire(txn, freed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Meta;
    use crate::store::DataFile;

    /// A fresh data file, its table and a local allocator.
    fn fresh(name: &str) -> (DataFile, AllocTable, LocalAllocator) {
        let d = std::env::temp_dir().join(format!("dbnode-alloc-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("data.db");
        crate::open::create_file(&path).unwrap();
        let (file, _) = DataFile::open(path).unwrap();
        let m = Meta::decode(file.map.page(0).unwrap()).unwrap();
        let t = AllocTable::load(&file.map, m.alloc_index, m.page_count, &m.delta).unwrap();
        let a = LocalAllocator::from_table(&t, m.page_count);
        (file, t, a)
    }

    /// Commit `alloc`/`retire` into `t`, write its pages, and return what a meta page would
    /// name: (index page, page count, log).
    fn commit(
        file: &mut DataFile,
        t: &mut AllocTable,
        a: &mut LocalAllocator,
        txn: u64,
        alloc: &[PageId],
        retire: &[PageId],
    ) -> (PageId, u64, Vec<u64>) {
        let extra = t.commit(txn, alloc, retire, a).unwrap();
        file.ensure_pages(a.page_count()).unwrap();
        // SAFETY: test file, nobody else maps it
        unsafe { t.write_pages(&file.map, txn, &extra) };
        a.reclaim(u64::MAX);
        (t.index_page(), a.page_count(), t.delta().to_vec())
    }

    fn same(a: &AllocTable, b: &AllocTable, pages: u64) {
        let diff: Vec<u64> = (0..pages).filter(|&p| a.get(p) != b.get(p)).collect();
        assert!(diff.is_empty(), "tables differ at {diff:?}");
    }

    #[test]
    fn a_log_folded_into_bitmap_pages_rewrites_every_page_it_touched_and_reload_follows() {
        let (mut file, mut t, mut a) = fresh("fold");
        let mut follower = AllocTable::load(&file.map, t.index_page(), 4, &[]).unwrap();
        // grow past one bitmap page: a checkpoint with two bitmap pages
        let many: Vec<PageId> = (0..BITS_PER_PAGE + 100)
            .map(|_| a.allocate().unwrap())
            .collect();
        let mut txn = 1;
        let (idx, pc, log) = commit(&mut file, &mut t, &mut a, txn, &many, &[]);
        assert_eq!(t.bitmap_pages().len(), 2);
        let flipped = follower.reload(&file.map, idx, pc, &log).unwrap();
        assert!(flipped.len() >= many.len());
        same(&follower, &t, pc);
        // a checkpoint that moves the index page into the first bitmap page's range
        txn += 1;
        let (idx, pc, log) = commit(&mut file, &mut t, &mut a, txn, &[], &many[10..310]);
        assert!(idx < BITS_PER_PAGE && log.is_empty());
        follower.reload(&file.map, idx, pc, &log).unwrap();
        same(&follower, &t, pc);
        // a small logged change in the second bitmap page's range...
        txn += 1;
        let mut low_ones = Vec::new();
        let high = loop {
            let p = a.allocate().unwrap();
            if p >= BITS_PER_PAGE {
                break p;
            }
            low_ones.push(p);
        };
        for p in low_ones {
            a.release(p);
        }
        let (idx, pc, log) = commit(&mut file, &mut t, &mut a, txn, &[high], &[]);
        assert_eq!(log, vec![high | DELTA_ALLOC]);
        assert_eq!(
            follower.reload(&file.map, idx, pc, &log).unwrap(),
            vec![high]
        );
        same(&follower, &t, pc);
        // ...then a commit too big for the log that touches only the first page's range
        txn += 1;
        let low: Vec<PageId> = many[400..400 + MAX_DELTA].to_vec();
        let before: Vec<bool> = (0..pc).map(|p| t.get(p)).collect();
        let (idx, pc, log) = commit(&mut file, &mut t, &mut a, txn, &[], &low);
        assert!(log.is_empty(), "a checkpoint of the bitmap");
        // a table read from the file alone must hold the folded log entry too
        let loaded = AllocTable::load(&file.map, idx, pc, &log).unwrap();
        same(&loaded, &t, pc);
        let mut flipped = follower.reload(&file.map, idx, pc, &log).unwrap();
        flipped.sort_unstable();
        let was = |p: u64| before.get(p as usize).copied().unwrap_or(false);
        let expect: Vec<u64> = (0..pc).filter(|&p| was(p) != t.get(p)).collect();
        assert_eq!(flipped, expect);
        same(&follower, &t, pc);
        // many small commits: the follower stays equal to a full load
        for round in 0..40 {
            txn += 1;
            let p = a.allocate().unwrap();
            let gone = [many[1000 + round]];
            let (idx, pc, log) = commit(&mut file, &mut t, &mut a, txn, &[p], &gone);
            follower.reload(&file.map, idx, pc, &log).unwrap();
            same(
                &follower,
                &AllocTable::load(&file.map, idx, pc, &log).unwrap(),
                pc,
            );
        }
    }
}
