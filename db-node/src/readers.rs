//! `readers.map`: the oldest commit each open database handle of a coordinated group may
//! still be reading, shared through the file system (after LMDB's reader table).
//!
//! A snapshot reads the pages of one commit without holding anything else, so the pages that
//! later commits retire must not be handed out again while a snapshot that reaches them is
//! open. Each handle publishes in its slot the oldest commit its open snapshots read (0: none).
//! The master frees pages retired up to commit `T` only when no slot holds a commit older
//! than `T` ([`ReaderTable::oldest`]).
//!
//! Registration cannot miss a commit: a handle stores the commit id it is about to read in its
//! slot, then reads the newest meta page again. If no newer commit appeared, every commit
//! that retires pages of it comes later, and the master (which looks at the slots after it
//! looked at such a commit) sees the slot. If one appeared, the handle starts over with it.
//!
//! **Who holds a slot** is decided by a kernel lock, not by process ids: the holder keeps an
//! open-file-description lock (`F_OFD_SETLK`) on the slot's 32 bytes for as long as its handle
//! is open, and the kernel drops it when the process dies. A slot whose lock nobody holds is
//! free, whatever it contains. This also works between processes in different pid namespaces
//! (containers sharing the volume on one host), where process ids mean nothing.
//!
//! Every commit of the group bumps a counter in the header after its meta page is written and
//! before it gives the commit turn back. A snapshot reads it before and after publishing: if
//! it did not move, no commit can have slipped in unseen, and when it has not moved since the
//! last snapshot the newest meta page need not even be read again.
//!
//! Layout: a 4 KiB header (`DBNREAD1`, slot count u64, slots ever claimed u64: readers scan
//! only those, commit counter u64), then 1,024 slots of 32 bytes: `pid` u64 (for people reading the file), `txn`
//! u64 (0: no snapshot), 16 bytes reserved. Every access is an atomic 8-byte operation.

use crate::error::{Error, Result};
use crate::shared_words::SharedWords;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub const READERS_FILE: &str = "readers.map";
const MAGIC: &[u8; 8] = b"DBNREAD1";
const HEADER: usize = 4096;
const SLOTS: usize = 1024;
const SLOT: usize = 32;
const LEN: usize = HEADER + SLOTS * SLOT;

/// A mapping of `readers.map`, with the slots this handle holds.
pub struct ReaderTable {
    /// The mapping; its open file description holds this handle's slot locks.
    words: SharedWords,
    mine: Mutex<Vec<usize>>,
}

impl ReaderTable {
    /// Map the table of `dir`, creating it if needed.
    pub fn open(dir: &Path) -> Result<ReaderTable> {
        let path = dir.join(READERS_FILE);
        let t = ReaderTable {
            words: SharedWords::create(&path, LEN)?,
            mine: Mutex::new(Vec::new()),
        };
        let magic = u64::from_le_bytes(*MAGIC);
        let _ = t
            .word(0)
            .compare_exchange(0, magic, Ordering::SeqCst, Ordering::SeqCst);
        t.word(1).store(SLOTS as u64, Ordering::SeqCst);
        if t.word(0).load(Ordering::SeqCst) != magic {
            return Err(Error::Corrupt {
                path,
                detail: "not a reader table".into(),
            });
        }
        Ok(t)
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        self.words.word(i)
    }

    fn slot(&self, i: usize, field: usize) -> &AtomicU64 {
        self.word((HEADER + i * SLOT) / 8 + field)
    }

    fn mine(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.mine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a slot nobody holds (free, or left by a process that died).
    pub fn claim(&self) -> Result<usize> {
        for i in 0..SLOTS {
            if slot_lock(&self.words.file, i, Lock::Take) {
                self.slot(i, 1).store(0, Ordering::SeqCst);
                self.slot(i, 0)
                    .store(std::process::id() as u64, Ordering::SeqCst);
                self.word(2).fetch_max(i as u64 + 1, Ordering::SeqCst);
                self.mine().push(i);
                return Ok(i);
            }
        }
        Err(Error::Aborted(format!(
            "all {SLOTS} reader slots of {READERS_FILE} are held by open handles"
        )))
    }

    /// The group's commit counter.
    pub fn commits(&self) -> u64 {
        self.word(3).load(Ordering::SeqCst)
    }

    /// A commit was made (its meta page is written; the committer still holds the turn).
    /// Returns the new counter.
    pub fn bump(&self) -> u64 {
        self.word(3).fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Publish the oldest commit slot `i` may read (0: none).
    pub fn publish(&self, i: usize, txn: u64) {
        self.slot(i, 1).store(txn, Ordering::SeqCst);
    }

    /// Give slot `i` back.
    pub fn release(&self, i: usize) {
        self.slot(i, 1).store(0, Ordering::SeqCst);
        self.slot(i, 0).store(0, Ordering::SeqCst);
        self.mine().retain(|&s| s != i);
        slot_lock(&self.words.file, i, Lock::Give);
    }

    /// The oldest commit any open handle may still read (`u64::MAX`: none). Slots nobody
    /// holds any more (their process died) are cleared on the way.
    pub fn oldest(&self) -> u64 {
        let mut oldest = u64::MAX;
        let used = (self.word(2).load(Ordering::SeqCst) as usize).min(SLOTS);
        for i in 0..used {
            let txn = self.slot(i, 1).load(Ordering::SeqCst);
            if txn == 0 || txn >= oldest {
                continue;
            }
            if !self.mine().contains(&i) && !slot_lock(&self.words.file, i, Lock::IsHeld) {
                // the holder died with a snapshot open
                let _ =
                    self.slot(i, 1)
                        .compare_exchange(txn, 0, Ordering::SeqCst, Ordering::SeqCst);
                continue;
            }
            oldest = txn;
        }
        oldest
    }
}

enum Lock {
    /// Lock the slot if nobody holds it; whether we got it.
    Take,
    /// Unlock it.
    Give,
    /// Whether another open file description holds it.
    IsHeld,
}

/// Open-file-description locks on slot `i`'s bytes (Linux). They belong to the open file,
/// not to a process id, and the kernel drops them when the last descriptor closes.
#[cfg(target_os = "linux")]
fn slot_lock(file: &File, i: usize, what: Lock) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed `flock` is a valid value; the fields that matter are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = (HEADER + i * SLOT) as libc::off_t;
    fl.l_len = SLOT as libc::off_t;
    let (cmd, kind) = match what {
        Lock::Take => (libc::F_OFD_SETLK, libc::F_WRLCK),
        Lock::Give => (libc::F_OFD_SETLK, libc::F_UNLCK),
        Lock::IsHeld => (libc::F_OFD_GETLK, libc::F_WRLCK),
    };
    fl.l_type = kind as libc::c_short;
    // SAFETY: `fl` is a valid flock for the duration of the call; the descriptor is open.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) };
    match what {
        Lock::Take | Lock::Give => r == 0,
        // a conflicting lock is described in `fl`; none leaves F_UNLCK there
        Lock::IsHeld => r != 0 || fl.l_type != libc::F_UNLCK as libc::c_short,
    }
}

/// Elsewhere: slots are taken by process-local bookkeeping only and never taken over.
#[cfg(not(target_os = "linux"))]
fn slot_lock(_file: &File, _i: usize, what: Lock) -> bool {
    !matches!(what, Lock::Take)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        crate::test_dirs::fresh("readers", name)
    }

    #[test]
    fn the_oldest_reader_holds_back_and_slots_nobody_holds_do_not() {
        let d = tmp("oldest");
        let a = ReaderTable::open(&d).unwrap();
        let b = ReaderTable::open(&d).unwrap();
        let master = ReaderTable::open(&d).unwrap();
        assert_eq!(master.oldest(), u64::MAX);
        let (sa, sb) = (a.claim().unwrap(), b.claim().unwrap());
        assert_ne!(sa, sb, "a held slot is not taken again");
        a.publish(sa, 7);
        b.publish(sb, 5);
        assert_eq!(master.oldest(), 5);
        assert_eq!(a.oldest(), 5, "its own slot counts too");
        b.publish(sb, 0);
        assert_eq!(master.oldest(), 7);
        // a handle that goes away without releasing (its process died): the kernel drops its
        // lock, and its slot no longer counts
        drop(a);
        assert_eq!(master.oldest(), u64::MAX);
        // and it can be taken again
        let c = ReaderTable::open(&d).unwrap();
        assert_eq!(c.claim().unwrap(), sa);
    }
}
