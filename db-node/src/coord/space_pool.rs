//! The worker's side of file space: the pages the master handed to this process.
//!
//! [`SpacePool`] is shared by the threads of the process. Lock requests top it up (at most one
//! request at a time asks for pages: [`TOP_UP`] when fewer than [`LOW_WATER`] are left) and
//! carry the report of the pages commits used since the last report. [`GrantedSpace`] is the
//! writer's [`SpaceAllocator`]: it takes pages from the pool in the commit step and asks the
//! master directly only when the pool runs dry (a big transaction).
//!
//! Pages belong to the era of the master that granted them (its `fence.map` base): when a new
//! master takes over, the pool is emptied before any of them is used, since the new master
//! knows nothing of them.

use super::pages::PageRanges;
use super::worker::IpcLocks;
use crate::alloc::{AllocTable, SpaceAllocator};
use crate::page::PageId;
use std::sync::{Arc, Mutex, MutexGuard};

/// Ask for more pages when fewer than this are left.
pub const LOW_WATER: u64 = 64;
/// Pages a top-up brings the pool to.
pub const TOP_UP: u64 = 256;

/// See the module documentation.
#[derive(Default)]
pub struct SpacePool {
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    era: u64,
    free: PageRanges,
    /// Pages commits used, not yet reported to the master.
    used: PageRanges,
    /// A request asking for pages is on its way.
    asking: bool,
}

/// What one request to the master carries about space.
#[derive(Debug, Default)]
pub struct Ask {
    /// Pages wanted (0: none).
    pub want: u64,
    /// Pages used since the last report.
    pub used: PageRanges,
    /// This is the pool's one top-up request in flight.
    top_up: bool,
}

impl SpacePool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For a lock request: the used pages to report, and pages to ask for if the pool runs
    /// low and nobody else is asking already. Answer with [`SpacePool::answered`].
    pub fn ask(&self) -> Ask {
        let mut s = self.lock();
        let used = std::mem::take(&mut s.used);
        let want = match s.free.len() < LOW_WATER && !s.asking {
            true => {
                s.asking = true;
                TOP_UP - s.free.len()
            }
            false => 0,
        };
        Ask {
            want,
            used,
            top_up: want > 0,
        }
    }

    /// For a request from the commit step: ask for `want` whatever the pool holds.
    pub fn ask_now(&self, want: u64) -> Ask {
        let mut s = self.lock();
        Ask {
            want,
            used: std::mem::take(&mut s.used),
            top_up: false,
        }
    }

    /// The master answered the request `ask` with `pages` of era `era` (`None`: the request
    /// failed, so the used pages are reported again next time).
    pub fn answered(&self, ask: Ask, reply: Option<(u64, PageRanges)>) {
        let mut s = self.lock();
        if ask.top_up {
            s.asking = false;
        }
        match reply {
            None => s.used.append(ask.used),
            Some((era, pages)) => {
                if era > s.era {
                    // a new master: the pages of its predecessor mean nothing to it
                    s.free = PageRanges::default();
                    s.used = PageRanges::default();
                    s.era = era;
                }
                if era == s.era {
                    s.free.append(pages);
                }
            }
        }
    }

    /// A page of the current era `era`, if the pool has one.
    fn take(&self, era: u64) -> Option<PageId> {
        let mut s = self.lock();
        if s.era != era {
            s.free = PageRanges::default();
            s.used = PageRanges::default();
            return None;
        }
        s.free.pop()
    }

    fn give_back(&self, p: PageId) {
        self.lock().free.insert(p);
    }

    fn used(&self, pages: impl IntoIterator<Item = PageId>) {
        let mut s = self.lock();
        for p in pages {
            s.used.insert(p);
        }
    }

    /// Pages in the pool (for statistics and tests).
    pub fn free_pages(&self) -> u64 {
        self.lock().free.len()
    }
}

/// The [`SpaceAllocator`] of a worker's writer: pages from the master.
pub struct GrantedSpace {
    locks: Arc<IpcLocks>,
    page_count: u64,
    /// Pages taken by the commit in progress.
    in_txn: Vec<PageId>,
}

impl GrantedSpace {
    pub fn new(locks: Arc<IpcLocks>, page_count: u64) -> GrantedSpace {
        GrantedSpace {
            locks,
            page_count,
            in_txn: Vec::new(),
        }
    }

    /// The pages of the commit in progress are used (or may be: the master checks the file).
    fn settle(&mut self) {
        self.locks.pool().used(self.in_txn.drain(..));
    }
}

impl SpaceAllocator for GrantedSpace {
    fn allocate(&mut self) -> Result<PageId, String> {
        for _ in 0..3 {
            let era = self.locks.era().map_err(|e| e.to_string())?;
            if let Some(p) = self.locks.pool().take(era) {
                self.in_txn.push(p);
                self.page_count = self.page_count.max(p + 1);
                return Ok(p);
            }
            self.locks
                .ask_space(TOP_UP)
                .map_err(|e| format!("no file space from the master: {e}"))?;
        }
        Err("the master granted no usable file space".into())
    }

    fn release(&mut self, page: PageId) {
        if let Some(i) = self.in_txn.iter().position(|&p| p == page) {
            self.in_txn.swap_remove(i);
            self.locks.pool().give_back(page);
        }
    }

    /// Called once per commit, after its last allocation: its pages are used. The pages it
    /// retired are free in the file now; the master learns that from the file.
    fn retire(&mut self, _txn: u64, _pages: Vec<PageId>) {
        self.settle();
    }

    /// Nothing waits for readers here: pages come from the master, which hands out a page
    /// only once no snapshot can reach it (see `crate::readers`).
    fn reclaim(&mut self, _oldest: u64) {}

    fn page_count(&self) -> u64 {
        self.page_count
    }

    fn adopt(&mut self, _: &AllocTable, page_count: u64, _: u64, _: Option<&[PageId]>) {
        // whatever a failed commit took is reported too: the master checks the file
        self.settle();
        self.page_count = page_count;
    }
}
