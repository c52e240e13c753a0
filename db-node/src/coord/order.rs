//! Putting commit announcements back in commit order.
//!
//! Transaction ids are one sequence for the whole database: every commit that changes
//! something takes the next one, in the commit turn. Announcements of different processes
//! travel on different connections, so one may overtake another on its way through the post
//! office. [`InOrder`] hands them out by transaction id: an announcement that arrives early
//! waits (at most `hold`) for the ones before it; ids still missing when the wait is over are
//! reported as a gap (a writer died between its commit and its announcement, or this
//! subscriber was disconnected), and the subscriber must read the state again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What comes out, in transaction order.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<T> {
    Item(u64, T),
    /// Transactions `from..=to` were not announced in time.
    Gap {
        from: u64,
        to: u64,
    },
}

/// A reorder buffer keyed by transaction id (see the module documentation).
pub struct InOrder<T> {
    next: Option<u64>,
    early: BTreeMap<u64, T>,
    /// When the oldest early arrival started to wait.
    waiting_since: Option<Instant>,
    hold: Duration,
}

/// Early arrivals kept at most; beyond this the missing ids are given up at once.
const MAX_EARLY: usize = 4096;

impl<T> InOrder<T> {
    pub fn new(hold: Duration) -> Self {
        InOrder {
            next: None,
            early: BTreeMap::new(),
            waiting_since: None,
            hold,
        }
    }

    /// Expect `next` as the first transaction, if nothing was taken in yet: earlier ones are
    /// dropped as already seen, a later one waits for it like any early arrival.
    pub fn start_at(&mut self, next: u64) {
        self.next.get_or_insert(next);
    }

    /// Everything up to `last` is settled (e.g. read from the files after a reconnection):
    /// hand out what waits up to it in order, the ids missing up to it as gaps, and drop
    /// anything up to it that arrives later.
    pub fn skip_through(&mut self, last: u64) -> Vec<Step<T>> {
        let mut out = Vec::new();
        let Some(mut n) = self.next else {
            self.next = Some(last + 1);
            return out;
        };
        while n <= last {
            match self.early.first_key_value().map(|(&k, _)| k) {
                Some(k) if k <= last => {
                    if k > n {
                        out.push(Step::Gap { from: n, to: k - 1 });
                    }
                    if let Some(item) = self.early.remove(&k) {
                        out.push(Step::Item(k, item));
                    }
                    n = k + 1;
                }
                _ => {
                    out.push(Step::Gap { from: n, to: last });
                    n = last + 1;
                }
            }
        }
        self.next = Some(n);
        self.drain(&mut out);
        if self.early.is_empty() {
            self.waiting_since = None;
        }
        out
    }

    /// Take in the announcement of transaction `txn`; returns what can be handed out now.
    pub fn push(&mut self, txn: u64, item: T, now: Instant) -> Vec<Step<T>> {
        let mut out = Vec::new();
        match self.next {
            None => {
                out.push(Step::Item(txn, item));
                self.next = Some(txn + 1);
            }
            Some(n) if txn < n => {} // a duplicate, or too late: given up as a gap already
            Some(n) if txn == n => {
                out.push(Step::Item(txn, item));
                self.next = Some(n + 1);
                self.drain(&mut out);
            }
            Some(_) => {
                self.early.insert(txn, item);
                self.waiting_since.get_or_insert(now);
                if self.early.len() > MAX_EARLY {
                    self.give_up(&mut out);
                }
            }
        }
        if self.early.is_empty() {
            self.waiting_since = None;
        }
        out
    }

    /// When [`Self::expire`] must be called (None: nothing waits).
    pub fn deadline(&self) -> Option<Instant> {
        self.waiting_since.map(|t| t + self.hold)
    }

    /// Give up waiting for missing ids if the deadline passed.
    pub fn expire(&mut self, now: Instant) -> Vec<Step<T>> {
        let mut out = Vec::new();
        if self.deadline().is_some_and(|d| now >= d) {
            self.give_up(&mut out);
        }
        out
    }

    fn give_up(&mut self, out: &mut Vec<Step<T>>) {
        if let (Some(n), Some((&first, _))) = (self.next, self.early.first_key_value()) {
            out.push(Step::Gap {
                from: n,
                to: first - 1,
            });
            self.next = Some(first);
        }
        self.drain(out);
        self.waiting_since = if self.early.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
    }

    fn drain(&mut self, out: &mut Vec<Step<T>>) {
        while let Some(n) = self.next {
            match self.early.remove(&n) {
                Some(item) => {
                    out.push(Step::Item(n, item));
                    self.next = Some(n + 1);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(steps: &[Step<()>]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Item(t, ()) => t.to_string(),
                Step::Gap { from, to } => format!("gap {from}-{to}"),
            })
            .collect()
    }

    #[test]
    fn overtaken_announcements_come_out_in_order() {
        let mut o = InOrder::new(Duration::from_millis(20));
        let t = Instant::now();
        assert_eq!(ids(&o.push(5, (), t)), ["5"]);
        assert!(o.push(7, (), t).is_empty());
        assert!(o.push(8, (), t).is_empty());
        assert!(o.deadline().is_some());
        assert_eq!(ids(&o.push(6, (), t)), ["6", "7", "8"]);
        assert!(o.deadline().is_none());
        assert!(o.push(6, (), t).is_empty(), "duplicates are dropped");
    }

    #[test]
    fn skipping_hands_out_what_waits_and_reports_the_rest_as_gaps() {
        let mut o = InOrder::new(Duration::from_millis(20));
        let t = Instant::now();
        o.start_at(3);
        assert!(o.push(2, (), t).is_empty(), "before the start");
        assert!(o.push(5, (), t).is_empty());
        assert!(o.push(9, (), t).is_empty());
        assert_eq!(ids(&o.skip_through(7)), ["gap 3-4", "5", "gap 6-7"]);
        assert!(o.push(7, (), t).is_empty(), "settled already");
        assert_eq!(ids(&o.push(8, (), t)), ["8", "9"]);
        assert!(o.deadline().is_none());
        assert!(o.skip_through(4).is_empty());
    }

    #[test]
    fn a_missing_id_becomes_a_gap_after_the_wait() {
        let mut o = InOrder::new(Duration::from_millis(20));
        let t = Instant::now();
        o.push(1, (), t);
        assert!(o.push(4, (), t).is_empty());
        assert!(o.expire(t + Duration::from_millis(5)).is_empty());
        let out = o.expire(t + Duration::from_millis(25));
        assert_eq!(ids(&out), ["gap 2-3", "4"]);
        assert!(o.push(2, (), t).is_empty(), "too late");
        assert_eq!(ids(&o.push(5, (), t)), ["5"]);
    }
}
