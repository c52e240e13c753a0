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
//! A slot names its holder (pid and the process's start time, so a reused pid is not taken
//! for the holder). A slot whose process is gone is ignored and taken over.
//!
//! Layout: a 4 KiB header (`DBNREAD1`, slot count u64, slots ever claimed u64: readers scan
//! only those), then 1,024 slots of 32 bytes:
//! `pid` u64 (0: free), `start` u64 (process start time, clock ticks since boot), `txn` u64
//! (0: no snapshot), 8 bytes reserved. Every access is an atomic 8-byte operation.

use crate::error::{Error, Result};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

pub const READERS_FILE: &str = "readers.map";
const MAGIC: &[u8; 8] = b"DBNREAD1";
const HEADER: usize = 4096;
const SLOTS: usize = 1024;
const SLOT: usize = 32;
const LEN: usize = HEADER + SLOTS * SLOT;

/// A mapping of `readers.map`.
pub struct ReaderTable {
    raw: MmapRaw,
}

impl ReaderTable {
    /// Map the table of `dir`, creating it if needed.
    pub fn open(dir: &Path) -> Result<ReaderTable> {
        let path = dir.join(READERS_FILE);
        let io = |e| Error::io(&path, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        if file.metadata().map_err(io)?.len() < LEN as u64 {
            // zeroes: every slot free; several processes may do this at once, harmlessly
            file.set_len(LEN as u64).map_err(io)?;
        }
        let raw = MmapOptions::new().len(LEN).map_raw(&file).map_err(io)?;
        let t = ReaderTable { raw };
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
        assert!(i < LEN / 8);
        // SAFETY: the mapping is LEN bytes long, page aligned, and lives as long as `self`;
        // every access to it, in every process, is an atomic 8-byte operation.
        unsafe { &*(self.raw.as_mut_ptr().add(i * 8) as *const AtomicU64) }
    }

    fn slot(&self, i: usize, field: usize) -> &AtomicU64 {
        self.word((HEADER + i * SLOT) / 8 + field)
    }

    /// Take a free slot (or one of a process that is gone) for this process.
    pub fn claim(&self) -> Result<usize> {
        let me = Holder::current();
        for pass in 0..2 {
            for i in 0..SLOTS {
                let pid = self.slot(i, 0).load(Ordering::SeqCst);
                let free = pid == 0
                    || (pass == 1 && !Holder::alive(pid, self.slot(i, 1).load(Ordering::SeqCst)));
                if free
                    && self
                        .slot(i, 0)
                        .compare_exchange(pid, me.pid, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    self.slot(i, 2).store(0, Ordering::SeqCst);
                    self.slot(i, 1).store(me.start, Ordering::SeqCst);
                    self.word(2).fetch_max(i as u64 + 1, Ordering::SeqCst);
                    return Ok(i);
                }
            }
        }
        Err(Error::Aborted(format!(
            "all {SLOTS} reader slots of {READERS_FILE} are taken by live processes"
        )))
    }

    /// Publish the oldest commit slot `i` may read (0: none).
    pub fn publish(&self, i: usize, txn: u64) {
        self.slot(i, 2).store(txn, Ordering::SeqCst);
    }

    /// Give slot `i` back.
    pub fn release(&self, i: usize) {
        self.slot(i, 2).store(0, Ordering::SeqCst);
        self.slot(i, 1).store(0, Ordering::SeqCst);
        self.slot(i, 0).store(0, Ordering::SeqCst);
    }

    /// The oldest commit any live process may still read (`u64::MAX`: none). Slots of
    /// processes that are gone are cleared on the way.
    pub fn oldest(&self) -> u64 {
        let mut oldest = u64::MAX;
        let used = (self.word(2).load(Ordering::SeqCst) as usize).min(SLOTS);
        for i in 0..used {
            let txn = self.slot(i, 2).load(Ordering::SeqCst);
            if txn == 0 || txn >= oldest {
                continue;
            }
            let pid = self.slot(i, 0).load(Ordering::SeqCst);
            if pid != 0 && !Holder::alive(pid, self.slot(i, 1).load(Ordering::SeqCst)) {
                // the holder died with a snapshot open
                let _ =
                    self.slot(i, 2)
                        .compare_exchange(txn, 0, Ordering::SeqCst, Ordering::SeqCst);
                continue;
            }
            oldest = txn;
        }
        oldest
    }
}

/// A process, as `/proc` names it.
struct Holder {
    pid: u64,
    start: u64,
}

impl Holder {
    fn current() -> Holder {
        let pid = std::process::id() as u64;
        Holder {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    /// Whether process `pid`, started at `start`, still runs. Without `/proc` a process is
    /// taken to be alive (a slot is then never taken over: safe, maybe wasteful).
    fn alive(pid: u64, start: u64) -> bool {
        if !Path::new("/proc/self").exists() {
            return true;
        }
        match start_time(pid) {
            Some(s) => start == 0 || s == start,
            None => false,
        }
    }
}

/// Start time of process `pid` (field 22 of `/proc/PID/stat`), if it exists.
fn start_time(pid: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name (field 2) is in parentheses and may contain anything
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dbnode-readers-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_oldest_reader_holds_back_and_dead_ones_do_not() {
        let d = tmp("oldest");
        let a = ReaderTable::open(&d).unwrap();
        let b = ReaderTable::open(&d).unwrap();
        assert_eq!(a.oldest(), u64::MAX);
        let (sa, sb) = (a.claim().unwrap(), b.claim().unwrap());
        assert_ne!(sa, sb);
        a.publish(sa, 7);
        b.publish(sb, 5);
        assert_eq!(a.oldest(), 5);
        b.publish(sb, 0);
        assert_eq!(b.oldest(), 7);
        // a slot of a process that is gone (a pid that cannot exist) does not count
        let ghost = b.claim().unwrap();
        b.slot(ghost, 0)
            .store(u32::MAX as u64 + 7, Ordering::SeqCst);
        b.publish(ghost, 2);
        assert_eq!(a.oldest(), 7);
        a.release(sa);
        assert_eq!(a.oldest(), u64::MAX);
        assert!(start_time(std::process::id() as u64).is_some());
    }
}
