//! The master's allocation table: which file pages are free, and which belong to which worker.
//!
//! A worker gets pages with its lock grant (or, rarely, with a `space` request from inside its
//! commit step) and owns them until it reports them **used** (a commit of it named them) or it
//! leaves the post office. Either way the pages are then *settling*: the next look at the
//! file decides their fate. A page the newest committed allocation bitmap marks in use is part
//! of the database; one it marks free (the commit never happened, or the worker died first)
//! goes back to the free list. So nothing a dead worker held is lost, and nothing a worker
//! committed is handed out again.
//!
//! The master follows the file through [`SpaceTable::follow`]: the pages whose bit flipped
//! since it last looked. A page freed by a commit joins the free list, unless a worker still
//! owns or settles it (it will come back through settling).
//!
//! A restarted master rebuilds the table from the file alone ([`SpaceTable::new`]): workers'
//! pages from its predecessor are void (they belong to an earlier era, see `fence_map`), and
//! every page the file does not mark in use is free.
//!
//! Snapshots of any process may still read pages that commits retired: a page found free at
//! a look at commit `T` is *quarantined* until no reader holds a commit older than `T`
//! ([`SpaceTable::release`], with the oldest reader from `readers.map`).

use super::lock_table::Owner;
use super::pages::PageRanges;
use crate::page::PageId;
use std::collections::HashMap;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct SpaceTable {
    free: PageRanges,
    owned: HashMap<Owner, PageRanges>,
    settling: PageRanges,
    /// Pages found free at a look at commit `T`, waiting for older readers to finish.
    quarantine: std::collections::VecDeque<(u64, PageRanges)>,
    /// No page at or above `end` is in the file's state or has been handed out.
    end: PageId,
}

impl SpaceTable {
    /// The table of committed state `txn`: `in_use(p)` for every page below `page_count`.
    pub fn new(page_count: u64, txn: u64, in_use: impl Fn(PageId) -> bool) -> SpaceTable {
        let mut free = PageRanges::default();
        let mut run: Option<PageId> = None;
        for p in 0..page_count {
            match (in_use(p), run) {
                (false, None) => run = Some(p),
                (true, Some(s)) => {
                    free.insert_range(s, p);
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run {
            free.insert_range(s, page_count);
        }
        SpaceTable {
            free: PageRanges::default(),
            owned: HashMap::new(),
            settling: PageRanges::default(),
            quarantine: [(txn, free)].into(),
            end: page_count,
        }
    }

    /// Readers hold commits `oldest` and newer only: pages found free at those looks are free.
    pub fn release(&mut self, oldest: u64) {
        while self.quarantine.front().is_some_and(|(t, _)| *t <= oldest) {
            if let Some((_, pages)) = self.quarantine.pop_front() {
                self.free.append(pages);
            }
        }
    }

    /// Pages waiting for older readers.
    pub fn quarantined_pages(&self) -> u64 {
        self.quarantine.iter().map(|(_, r)| r.len()).sum()
    }

    fn found_free(&mut self, txn: u64) -> &mut PageRanges {
        if self.quarantine.back().is_none_or(|(t, _)| *t != txn) {
            self.quarantine.push_back((txn, PageRanges::default()));
        }
        match self.quarantine.back_mut() {
            Some((_, r)) => r,
            None => unreachable!("pushed above"),
        }
    }

    /// Free pages (known to be free, not counting settling ones).
    pub fn free_pages(&self) -> u64 {
        self.free.len()
    }

    /// Pages owned by workers.
    pub fn owned_pages(&self) -> u64 {
        self.owned.values().map(|r| r.len()).sum()
    }

    /// Pages waiting for the next look at the file.
    pub fn settling_pages(&self) -> u64 {
        self.settling.len()
    }

    /// The end of the space handed out or in the file.
    pub fn end(&self) -> PageId {
        self.end
    }

    /// Hand `want` pages to `owner`: free ones first (lowest first), then new ones at the end
    /// of the file.
    pub fn grant(&mut self, owner: &Owner, want: u64) -> PageRanges {
        let mut got = self.free.take(want);
        let short = want - got.len();
        if short > 0 {
            got.insert_range(self.end, self.end + short);
            self.end += short;
        }
        self.owned
            .entry(owner.clone())
            .or_default()
            .append(got.clone());
        got
    }

    /// `owner` committed with these pages (or may have): they settle. Pages it does not own
    /// (a report sent twice, pages of another era) are ignored.
    pub fn used(&mut self, owner: &Owner, pages: &PageRanges) {
        let Some(mine) = self.owned.get_mut(owner) else {
            return;
        };
        for p in pages.iter() {
            if mine.remove(p) {
                self.settling.insert(p);
            }
        }
        if mine.is_empty() {
            self.owned.remove(owner);
        }
    }

    /// Owners matching `gone` left: everything they owned settles.
    pub fn owners_gone(&mut self, gone: impl Fn(&Owner) -> bool) {
        let leaving: Vec<Owner> = self.owned.keys().filter(|o| gone(o)).cloned().collect();
        for o in leaving {
            if let Some(r) = self.owned.remove(&o) {
                self.settling.append(r);
            }
        }
    }

    /// The allocation state of commit `txn` had to be read whole: every page below
    /// `page_count` that is free in it and neither owned, settling nor already known free is
    /// found free; so are the pages between `page_count` and the end that nobody owns.
    pub fn rebuild(&mut self, page_count: u64, txn: u64, in_use: impl Fn(PageId) -> bool) {
        let end = self.end.max(page_count);
        let held = |p: PageId| {
            self.settling.contains(p)
                || self.free.contains(p)
                || self.quarantine.iter().any(|(_, r)| r.contains(p))
                || self.owned.values().any(|r| r.contains(p))
        };
        let mut found = PageRanges::default();
        for p in 0..end {
            if !held(p) && (p >= page_count || !in_use(p)) {
                found.insert(p);
            }
        }
        self.found_free(txn).append(found);
        self.end = end;
        self.follow(page_count, txn, &[], in_use);
    }

    /// The master looked at the newest committed state, commit `txn` with `page_count`
    /// pages: `flipped` pages changed state since the last look, `in_use(p)` is the new state.
    /// The look must have started after every event this table was told of.
    pub fn follow(
        &mut self,
        page_count: u64,
        txn: u64,
        flipped: &[PageId],
        in_use: impl Fn(PageId) -> bool,
    ) {
        self.end = self.end.max(page_count);
        let mut found = PageRanges::default();
        for &p in flipped {
            if in_use(p) {
                self.free.remove(p);
            } else if !self.settling.contains(p) && !self.owned.values().any(|r| r.contains(p)) {
                found.insert(p);
            }
        }
        for p in std::mem::take(&mut self.settling).iter() {
            if !in_use(p) {
                found.insert(p);
            }
        }
        if !found.is_empty() {
            self.found_free(txn).append(found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn owner(p: &str) -> Owner {
        Owner {
            peer: p.into(),
            epoch: 1,
        }
    }

    #[test]
    fn pages_of_a_dead_worker_come_back_and_committed_ones_do_not() {
        // pages 0..4 in use, 4..8 free
        let mut file: BTreeSet<PageId> = (0..4).collect();
        let mut t = SpaceTable::new(8, 1, |p| file.contains(&p));
        t.release(u64::MAX);
        assert_eq!(t.free_pages(), 4);
        let (a, b) = (owner("a"), owner("b"));
        let ga = t.grant(&a, 6); // 4..8 and 8..10 from the end
        assert_eq!(ga.to_wire(), vec![(4, 6)]);
        assert_eq!(t.end(), 10);
        let gb = t.grant(&b, 2);
        assert_eq!(gb.to_wire(), vec![(10, 2)]);
        // a commits with 4 and 5 (and frees 2); b dies before committing anything
        file.extend([4, 5]);
        file.remove(&2);
        t.used(&a, &PageRanges::from_wire(&[(4, 2)]));
        t.owners_gone(|o| o == &b);
        assert_eq!(t.settling_pages(), 4);
        t.follow(10, 2, &[2, 4, 5], |p| file.contains(&p));
        // a snapshot of commit 1 may still read page 2
        t.release(1);
        assert_eq!(t.free_pages(), 0);
        assert_eq!(t.quarantined_pages(), 3);
        t.release(2);
        // 2 (freed by the commit) and b's 10, 11 are free again; 4, 5 are the database's;
        // a still owns 6..10
        let mut free = Vec::new();
        while t.free_pages() > 0 {
            free.extend(t.grant(&owner("c"), 1).iter());
        }
        assert_eq!(free, vec![2, 10, 11]);
        assert_eq!(t.owned_pages(), 4 + 3);
    }

    #[test]
    fn a_page_used_and_freed_again_before_the_report_comes_back_through_settling() {
        let mut file: BTreeSet<PageId> = (0..2).collect();
        let mut t = SpaceTable::new(2, 1, |p| file.contains(&p));
        let a = owner("a");
        t.grant(&a, 1); // page 2
                        // two commits of a: one uses 2, the next frees it; the master looks in between reports
        t.follow(3, 2, &[], |p| file.contains(&p));
        file.insert(2);
        file.remove(&2);
        t.follow(3, 4, &[], |p| file.contains(&p));
        t.release(u64::MAX);
        assert_eq!(t.free_pages(), 0, "still a's");
        t.used(&a, &PageRanges::from_wire(&[(2, 1)]));
        t.used(&a, &PageRanges::from_wire(&[(2, 1)])); // a repeated report changes nothing
        t.follow(3, 4, &[], |p| file.contains(&p));
        t.release(u64::MAX);
        assert_eq!(t.free_pages(), 1);
        assert_eq!(t.owned_pages(), 0);
    }
}
