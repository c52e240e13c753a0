//! The master's lock table: hierarchical read/write locks on paths, granted in FIFO order.
//!
//! A lock on a path covers the whole subtree at that path (a subtree is one contiguous key
//! range, see `docs/storage.md`). Two locks **conflict** when their subtrees overlap (one path is
//! a prefix of the other, segment by segment) and at least one of them is a write:
//!
//! * write `users/alice` vs read or write `users/alice/age`: conflict (inside its subtree);
//! * write `users/alice` vs write `users`: conflict (an ancestor's subtree contains it);
//! * write `users/alice` vs read `users`: conflict too — a read lock on `users` promises the
//!   whole subtree stays unchanged while it is held (plain reads use snapshots and take no lock);
//! * write `users/alice` vs write `users/bob`: no conflict, they proceed in parallel.
//!
//! **Fairness.** A request is granted only if it conflicts neither with a granted lock nor with
//! an *older waiting* request. A stream of readers therefore cannot overtake a waiting writer
//! (no writer starvation), while a request on a disjoint subtree never waits behind an
//! unrelated queue.
//!
//! **Grants.** Each grant has a lock id, an [`Owner`] (peer id + session epoch, so a restarted
//! peer with the same id is a different owner), a lease, and a fencing token taken from a
//! counter that only grows. The counter starts above a seed supplied by the caller (the master
//! seeds it from the database's high-water mark), so tokens also grow across master restarts.
//!
//! The table is a plain data structure: it never blocks, never reads a clock (callers pass
//! `now`), and reports what changed so the caller can answer the waiting requesters.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A path as its segments (`users/alice` is `["users", "alice"]`; the root is `[]`).
pub type LockPath = Vec<String>;

/// Read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Read,
    Write,
}

/// Who holds a lock: a peer of the post office in one session. A peer that reconnects gets a
/// new epoch, so locks of its previous session can be told apart (and dropped).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub peer: String,
    pub epoch: u64,
}

/// One granted lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granted {
    pub id: u64,
    pub owner: Owner,
    pub items: Vec<(LockPath, Mode)>,
    /// Fencing token: strictly greater than every token granted before by this table.
    pub token: u64,
    /// The lease ends here unless renewed; then the lock is taken away.
    pub expires: Instant,
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Granted(Granted),
    /// Queued under this lock id; it shows up in a later [`Changes::granted`].
    Queued(u64),
}

/// What an operation changed besides its direct result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Waiting requests that were granted, in grant order.
    pub granted: Vec<Granted>,
    /// Ids of granted locks taken away because their lease ran out.
    pub expired: Vec<u64>,
    /// Ids of waiting requests dropped because their wait deadline passed.
    pub gave_up: Vec<u64>,
    /// Fencing tokens of granted locks that ended (released, expired, owner gone): their
    /// holders must not commit under them any more.
    pub ended: Vec<u64>,
}

#[derive(Clone, Debug)]
struct Waiting {
    id: u64,
    owner: Owner,
    items: Vec<(LockPath, Mode)>,
    lease: Duration,
    deadline: Instant,
}

/// Whether two paths' subtrees overlap.
pub fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn conflicts(a: &[(LockPath, Mode)], b: &[(LockPath, Mode)]) -> bool {
    a.iter().any(|(pa, ma)| {
        b.iter()
            .any(|(pb, mb)| (*ma == Mode::Write || *mb == Mode::Write) && overlaps(pa, pb))
    })
}

/// The lock table. See the module documentation.
#[derive(Debug)]
pub struct LockTable {
    granted: HashMap<u64, Granted>,
    waiting: VecDeque<Waiting>,
    next_id: u64,
    last_token: u64,
}

impl LockTable {
    /// An empty table whose first token is `token_floor + 1`.
    pub fn new(token_floor: u64) -> Self {
        LockTable {
            granted: HashMap::new(),
            waiting: VecDeque::new(),
            next_id: 1,
            last_token: token_floor,
        }
    }

    /// The highest token handed out so far (or the floor).
    pub fn last_token(&self) -> u64 {
        self.last_token
    }

    /// Raise the token counter to at least `floor` (e.g. a worker saw a higher high-water mark
    /// in the file than this table knows of).
    pub fn raise_floor(&mut self, floor: u64) {
        self.last_token = self.last_token.max(floor);
    }

    /// Ask for `items` on behalf of `owner`. Granted at once if nothing granted or queued
    /// before it conflicts; otherwise queued until `deadline`. A granted lock lives for
    /// `lease` from the moment it is granted.
    pub fn request(
        &mut self,
        owner: Owner,
        items: Vec<(LockPath, Mode)>,
        lease: Duration,
        deadline: Instant,
        now: Instant,
    ) -> Outcome {
        let id = self.next_id;
        self.next_id += 1;
        let blocked = self.granted.values().any(|g| conflicts(&g.items, &items))
            || self.waiting.iter().any(|w| conflicts(&w.items, &items));
        if blocked {
            self.waiting.push_back(Waiting {
                id,
                owner,
                items,
                lease,
                deadline,
            });
            Outcome::Queued(id)
        } else {
            Outcome::Granted(self.grant(id, owner, items, lease, now))
        }
    }

    fn grant(
        &mut self,
        id: u64,
        owner: Owner,
        items: Vec<(LockPath, Mode)>,
        lease: Duration,
        now: Instant,
    ) -> Granted {
        self.last_token += 1;
        let g = Granted {
            id,
            owner,
            items,
            token: self.last_token,
            expires: now + lease,
        };
        self.granted.insert(id, g.clone());
        g
    }

    /// The granted lock `id`, if it is still held.
    pub fn get(&self, id: u64) -> Option<&Granted> {
        self.granted.get(&id)
    }

    /// Number of granted locks and of waiting requests.
    pub fn counts(&self) -> (usize, usize) {
        (self.granted.len(), self.waiting.len())
    }

    /// Extend the lease of granted lock `id` held by `owner` to `now + lease`. False if the
    /// lock is no longer held by that owner (expired, released, or never existed).
    pub fn renew(&mut self, id: u64, owner: &Owner, lease: Duration, now: Instant) -> bool {
        match self.granted.get_mut(&id) {
            Some(g) if &g.owner == owner && g.expires > now => {
                g.expires = now + lease;
                true
            }
            _ => false,
        }
    }

    /// Release granted lock `id` (only by its owner) or withdraw a waiting request. Returns
    /// whether something was removed, and the requests that became grantable.
    pub fn release(&mut self, id: u64, owner: &Owner, now: Instant) -> (bool, Changes) {
        let mut changes = Changes::default();
        let removed = match self.granted.get(&id) {
            Some(g) if &g.owner == owner => {
                changes.ended.push(g.token);
                self.granted.remove(&id).is_some()
            }
            Some(_) => false,
            None => {
                let before = self.waiting.len();
                self.waiting.retain(|w| !(w.id == id && &w.owner == owner));
                before != self.waiting.len()
            }
        };
        if removed {
            self.promote(now, &mut changes);
        }
        (removed, changes)
    }

    /// Drop every lock and waiting request of owners matching `gone` (a peer that left the
    /// post office, or older sessions of a peer that came back).
    pub fn release_owners(&mut self, gone: impl Fn(&Owner) -> bool, now: Instant) -> Changes {
        let before = (self.granted.len(), self.waiting.len());
        let mut changes = Changes::default();
        self.granted.retain(|_, g| {
            let keep = !gone(&g.owner);
            if !keep {
                changes.ended.push(g.token);
            }
            keep
        });
        self.waiting.retain(|w| !gone(&w.owner));
        if before != (self.granted.len(), self.waiting.len()) {
            self.promote(now, &mut changes);
        }
        changes
    }

    /// Take away leases that ran out and drop waiting requests whose deadline passed; grant
    /// what became grantable.
    pub fn expire(&mut self, now: Instant) -> Changes {
        let mut changes = Changes::default();
        let mut expired: Vec<u64> = self
            .granted
            .values()
            .filter(|g| g.expires <= now)
            .map(|g| g.id)
            .collect();
        expired.sort_unstable();
        for id in &expired {
            if let Some(g) = self.granted.remove(id) {
                changes.ended.push(g.token);
            }
        }
        let mut gave_up = Vec::new();
        self.waiting.retain(|w| {
            let keep = w.deadline > now;
            if !keep {
                gave_up.push(w.id);
            }
            keep
        });
        changes.expired = expired;
        changes.gave_up = gave_up;
        if !changes.expired.is_empty() || !changes.gave_up.is_empty() {
            self.promote(now, &mut changes);
        }
        changes
    }

    /// The earliest instant at which [`LockTable::expire`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let a = self.granted.values().map(|g| g.expires).min();
        let b = self.waiting.iter().map(|w| w.deadline).min();
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Grant waiting requests in FIFO order: one is granted when it conflicts with no granted
    /// lock and with no request still waiting ahead of it.
    fn promote(&mut self, now: Instant, changes: &mut Changes) {
        let mut still: VecDeque<Waiting> = VecDeque::with_capacity(self.waiting.len());
        while let Some(w) = self.waiting.pop_front() {
            let blocked = self.granted.values().any(|g| conflicts(&g.items, &w.items))
                || still.iter().any(|s| conflicts(&s.items, &w.items));
            if blocked {
                still.push_back(w);
            } else {
                let g = self.grant(w.id, w.owner, w.items, w.lease, now);
                changes.granted.push(g);
            }
        }
        self.waiting = still;
    }

    /// Check the table's invariants (used by tests): no two granted locks conflict, and every
    /// waiting request is blocked by a granted lock or an older waiting request.
    pub fn check_invariants(&self) -> Result<(), String> {
        let gs: Vec<&Granted> = self.granted.values().collect();
        for (i, a) in gs.iter().enumerate() {
            if a.token > self.last_token {
                return Err(format!("lock {} has a token above the counter", a.id));
            }
            for b in &gs[i + 1..] {
                if conflicts(&a.items, &b.items) {
                    return Err(format!("granted locks {} and {} conflict", a.id, b.id));
                }
            }
        }
        for (i, w) in self.waiting.iter().enumerate() {
            let blocked = gs.iter().any(|g| conflicts(&g.items, &w.items))
                || self
                    .waiting
                    .iter()
                    .take(i)
                    .any(|o| conflicts(&o.items, &w.items));
            if !blocked {
                return Err(format!("request {} waits although nothing blocks it", w.id));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "lock_table_tests.rs"]
mod tests;
