//! The right to write a subtree. A writer asks a [`LockProvider`] before it changes anything;
//! every grant carries a fencing token that only grows (the meta page keeps the high-water
//! mark, so tokens keep growing across restarts). Within one process [`LocalLocks`] serves it
//! (the database's writer mutex already serializes writers); the master of issue 6 will serve
//! the same trait from its lock table with hierarchical read/write locks and leases.

use crate::error::Result;
use crate::path::Segment;
use std::sync::atomic::{AtomicU64, Ordering};

/// A granted write right on the subtrees at `paths`.
#[derive(Clone, Debug)]
pub struct Grant {
    pub paths: Vec<Vec<Segment>>,
    /// Fencing token: a commit carries it; a store rejects tokens older than one it has seen.
    pub token: u64,
}

impl Grant {
    /// Whether the grant covers writing the subtree at `path`.
    pub fn covers(&self, path: &[Segment]) -> bool {
        self.paths.iter().any(|g| path.starts_with(g))
    }
}

/// Who hands out write rights.
pub trait LockProvider: Send + Sync {
    /// Block until the caller may write the subtrees at `paths`. Tokens issued must be greater
    /// than `floor`, the highest token recorded in the file.
    fn acquire(&self, paths: &[Vec<Segment>], floor: u64) -> Result<Grant>;
    /// Give the right back (after commit or abort).
    fn release(&self, grant: &Grant);
    /// Called in the commit step, right before the commit is written: refuse a grant that has
    /// expired or been superseded (a master compares fencing tokens and leases here).
    fn validate(&self, _grant: &Grant) -> Result<()> {
        Ok(())
    }
    /// Called right after a commit, in the commit step of a coordinated group (so calls
    /// follow commit order): tell the other processes. Must not block for long.
    fn announce(&self, _info: &crate::CommitInfo) {}
}

/// Single-process provider: issues increasing fencing tokens.
#[derive(Default)]
pub struct LocalLocks {
    last: AtomicU64,
}

impl LockProvider for LocalLocks {
    fn acquire(&self, paths: &[Vec<Segment>], floor: u64) -> Result<Grant> {
        let mut cur = self.last.load(Ordering::Relaxed);
        loop {
            let next = cur.max(floor) + 1;
            match self
                .last
                .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Ok(Grant {
                        paths: paths.to_vec(),
                        token: next,
                    })
                }
                Err(c) => cur = c,
            }
        }
    }
    fn release(&self, _grant: &Grant) {}
}
