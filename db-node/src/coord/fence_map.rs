//! `fence.map`: which fencing tokens are live grants right now, shared through the file system.
//!
//! The master is the only writer. Before it answers a lock request it marks the new grant's
//! token live; when a lock ends (released, lease expired, its holder left the post office) it
//! clears the token **before** it grants a conflicting lock to anybody else. A worker checks
//! its token in the commit step, inside the commit turn, right before it writes the meta page.
//! So a worker whose lock was taken away is refused even if it has not noticed yet (its socket
//! died a moment ago, it was stopped past its lease, or the master it got the lock from was
//! replaced): it can only pass the check before the master took the lock back, and then its
//! commit, which holds the turn, is ordered before any commit of the next holder.
//!
//! A new master writes a new `base` (every token of earlier masters is at most `base`) and
//! clears the bitmap before it grants anything.
//!
//! Layout (little endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `DBNFENCE` |
//! | 8 | 8 | `base`: tokens ≤ base are void |
//! | 16 | 8 | `bits`: size of the bitmap in bits (2^21) |
//! | 4096 | bits / 8 | bitmap: bit `t mod bits` set ⇔ token `t` is a live grant |
//!
//! Tokens `t` and `t + bits` share a bit. Two live grants sharing a bit can only make a check
//! fail (a spurious `Fenced`). A stale holder of `t` could wrongly pass only if the master
//! granted `t + bits` while that holder's lease still runs by its own clock (which `validate`
//! checks first): two million grants within one lease, 70,000 grants/s for the 30 s default.

use crate::error::{Error, Result};
use crate::shared_words::SharedWords;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

pub const FENCE_MAP_FILE: &str = "fence.map";
const MAGIC: &[u8; 8] = b"DBNFENCE";
const BITS: u64 = 1 << 21;
const HEADER: usize = 4096;
const LEN: usize = HEADER + (BITS / 8) as usize;

/// A mapping of `fence.map`.
pub struct FenceMap {
    words: SharedWords,
}

impl FenceMap {
    /// The master's side: create or reuse the file, start a new era at `base` (every token it
    /// will grant is above it) with no live token. Call before granting anything.
    pub fn start(dir: &Path, base: u64) -> Result<FenceMap> {
        let path = dir.join(FENCE_MAP_FILE);
        let m = FenceMap {
            words: SharedWords::create(&path, LEN)?,
        };
        // the base first: from this store on, tokens of earlier masters are refused
        m.word(1).store(base, Ordering::SeqCst);
        m.word(2).store(BITS, Ordering::SeqCst);
        for i in HEADER / 8..LEN / 8 {
            m.word(i).store(0, Ordering::Relaxed);
        }
        m.word(0)
            .store(u64::from_le_bytes(*MAGIC), Ordering::SeqCst);
        Ok(m)
    }

    /// A worker's side: map the file the master wrote.
    pub fn open(dir: &Path) -> Result<FenceMap> {
        let path = dir.join(FENCE_MAP_FILE);
        let Some(words) = SharedWords::open(&path, LEN)? else {
            return Err(Error::Fenced(format!(
                "{}: too short; no master has started here",
                path.display()
            )));
        };
        let m = FenceMap { words };
        if m.word(0).load(Ordering::SeqCst) != u64::from_le_bytes(*MAGIC) {
            return Err(Error::Fenced(format!(
                "{}: not a fence map",
                path.display()
            )));
        }
        Ok(m)
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        self.words.word(i)
    }

    fn bit(&self, token: u64) -> (&AtomicU64, u64) {
        let b = token % BITS;
        (self.word(HEADER / 8 + (b / 64) as usize), 1 << (b % 64))
    }

    /// Tokens at or below this belong to earlier masters.
    pub fn base(&self) -> u64 {
        self.word(1).load(Ordering::SeqCst)
    }

    /// Master: `token` is granted.
    pub fn set_live(&self, token: u64) {
        let (w, m) = self.bit(token);
        w.fetch_or(m, Ordering::SeqCst);
    }

    /// Master: the lock of `token` ended.
    pub fn set_ended(&self, token: u64) {
        let (w, m) = self.bit(token);
        w.fetch_and(!m, Ordering::SeqCst);
    }

    /// Worker: may a commit be made under `token`? `Err` says why not.
    pub fn check(&self, token: u64) -> std::result::Result<(), String> {
        let base = self.base();
        if token <= base {
            return Err(format!(
                "token {token} was granted by an earlier master (the current one started above \
                 {base})"
            ));
        }
        let (w, m) = self.bit(token);
        if w.load(Ordering::SeqCst) & m == 0 {
            return Err(format!(
                "the master has taken back the lock of token {token} (lease ran out, or the \
                 post office reported this worker gone)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        crate::test_dirs::fresh("fmap", name)
    }

    #[test]
    fn a_token_is_valid_from_grant_to_end_and_a_new_master_voids_the_old_ones() {
        let d = tmp("life");
        assert!(FenceMap::open(&d).is_err());
        let master = FenceMap::start(&d, 10).unwrap();
        let worker = FenceMap::open(&d).unwrap();
        assert!(worker.check(11).is_err(), "not granted yet");
        master.set_live(11);
        master.set_live(12);
        worker.check(11).unwrap();
        master.set_ended(11);
        assert!(worker.check(11).unwrap_err().contains("taken back"));
        worker.check(12).unwrap();
        // a new master starts above everything the old one granted
        let next = FenceMap::start(&d, 100).unwrap();
        assert!(worker.check(12).unwrap_err().contains("earlier master"));
        next.set_live(101);
        worker.check(101).unwrap();
        assert_eq!(worker.base(), 100);
    }
}
