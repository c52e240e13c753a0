//! [`PageRanges`]: a set of page ids kept as disjoint ranges, the currency of file space
//! between the master and its workers (a grant of 256 pages is usually one range).

use crate::page::PageId;
use std::collections::BTreeMap;

/// A set of page ids stored as disjoint, non-adjacent `[start, end)` ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageRanges {
    /// start → end (exclusive)
    ranges: BTreeMap<PageId, PageId>,
    len: u64,
}

impl PageRanges {
    /// The set of the `(start, count)` ranges given (overlaps are merged).
    pub fn from_wire(ranges: &[(PageId, u64)]) -> PageRanges {
        let mut r = PageRanges::default();
        for &(start, n) in ranges {
            r.insert_range(start, start.saturating_add(n));
        }
        r
    }

    /// `(start, count)` pairs, lowest first.
    pub fn to_wire(&self) -> Vec<(PageId, u64)> {
        self.ranges.iter().map(|(&s, &e)| (s, e - s)).collect()
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, p: PageId) -> bool {
        self.ranges
            .range(..=p)
            .next_back()
            .is_some_and(|(_, &e)| p < e)
    }

    /// Every page, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = PageId> + '_ {
        self.ranges.iter().flat_map(|(&s, &e)| s..e)
    }

    pub fn insert(&mut self, p: PageId) {
        self.insert_range(p, p + 1);
    }

    /// Add `[start, end)`.
    pub fn insert_range(&mut self, mut start: PageId, mut end: PageId) {
        if start >= end {
            return;
        }
        // absorb every range that overlaps or touches [start, end)
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                self.ranges.remove(&s);
                self.len -= e - s;
            }
        }
        while let Some((&s, &e)) = self.ranges.range(start..=end).next() {
            end = end.max(e);
            self.ranges.remove(&s);
            self.len -= e - s;
        }
        self.ranges.insert(start, end);
        self.len += end - start;
    }

    /// Remove `p`; whether it was there.
    pub fn remove(&mut self, p: PageId) -> bool {
        let Some((&s, &e)) = self.ranges.range(..=p).next_back() else {
            return false;
        };
        if p >= e {
            return false;
        }
        self.ranges.remove(&s);
        if s < p {
            self.ranges.insert(s, p);
        }
        if p + 1 < e {
            self.ranges.insert(p + 1, e);
        }
        self.len -= 1;
        true
    }

    /// Remove every page of `other` that is here.
    pub fn remove_all(&mut self, other: &PageRanges) {
        for p in other.iter() {
            self.remove(p);
        }
    }

    /// Take up to `n` pages, lowest first.
    pub fn take(&mut self, n: u64) -> PageRanges {
        let mut out = PageRanges::default();
        while out.len < n {
            let Some((s, e)) = self.ranges.pop_first() else {
                break;
            };
            let k = (e - s).min(n - out.len);
            out.insert_range(s, s + k);
            if s + k < e {
                self.ranges.insert(s + k, e);
            }
            self.len -= k;
        }
        out
    }

    /// Take the lowest page.
    pub fn pop(&mut self) -> Option<PageId> {
        let (&s, _) = self.ranges.iter().next()?;
        self.remove(s);
        Some(s)
    }

    /// Move every page of `other` here.
    pub fn append(&mut self, other: PageRanges) {
        for (s, e) in other.ranges {
            self.insert_range(s, e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_split_and_hand_out_lowest_first() {
        let mut r = PageRanges::default();
        r.insert_range(10, 20);
        r.insert_range(30, 40);
        r.insert_range(20, 30); // joins both
        assert_eq!(r.to_wire(), vec![(10, 30)]);
        assert!(r.remove(15) && !r.remove(15));
        assert!(!r.contains(15) && r.contains(14) && r.contains(16));
        assert_eq!(r.len(), 29);
        r.insert(15);
        assert_eq!(r.to_wire(), vec![(10, 30)]);
        let t = r.take(5);
        assert_eq!(t.to_wire(), vec![(10, 5)]);
        assert_eq!(r.pop(), Some(15));
        r.insert_range(5, 12);
        assert_eq!(r.to_wire(), vec![(5, 7), (16, 24)]);
        let all = r.take(100);
        assert_eq!(all.len(), 31);
        assert!(r.is_empty());
        let mut a = PageRanges::from_wire(&[(1, 3), (2, 5)]);
        assert_eq!(a.to_wire(), vec![(1, 6)]);
        a.remove_all(&PageRanges::from_wire(&[(2, 2)]));
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![1, 4, 5, 6]);
    }
}
