//! The commit turn of a directory shared by several processes (a coordinated group, see
//! `docs/coordination.md`).
//!
//! With one copy-on-write root, two writers that changed disjoint subtrees still both produce
//! a new root, so the *commit step* (read the newest meta page, apply the transaction to the
//! newest tree, write its pages and a new meta page) is serialized across processes. The
//! turn is held *shared* by whoever reads state that commits may rewrite at any moment: the
//! master reading the allocation bitmap, `check`. Snapshots do not take it: they register in
//! the reader table instead (`crate::readers`), so no reader holds up a commit.
//!
//! The turn is an fs2 (`flock`) lock on `turn.lock`: the kernel drops it when its holder dies,
//! so a SIGKILLed writer never leaves it taken. A process uses two descriptors of the file: one
//! for its writer (exclusive; its threads are already serialized by the writer mutex) and one
//! for its readers (shared, taken by the first reader and given back by the last), so a writer
//! thread waits for the readers of its own process as it waits for anybody else's.
//!
//! Nobody waits without a deadline: a busy turn is polled (a few yields, then sleeps that grow
//! from 20 µs to 1 ms) until it is free or the deadline passes.

use crate::error::{Error, Result};
use crate::store::open_lock_file;
use fs2::FileExt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const TURN_FILE: &str = "turn.lock";

/// The turn of one directory, as one process sees it.
pub struct Turn {
    path: PathBuf,
    writer: File,
    reader: File,
    /// Snapshots of this process that hold the shared turn.
    readers: Mutex<ReaderState>,
    changed: Condvar,
    wait: Duration,
}

#[derive(Default)]
struct ReaderState {
    count: usize,
    /// A thread is taking the shared lock for everybody.
    taking: bool,
}

/// Holding the turn exclusively (the commit step). Released on drop.
pub struct ExclusiveTurn<'a> {
    turn: &'a Turn,
}

/// Holding the turn shared (a reader of state commits rewrite: the master following the
/// allocation table). Released on drop, by the last reader of the process.
pub struct SharedTurn {
    turn: Arc<Turn>,
}

fn poll(what: impl Fn() -> bool, deadline: Instant) -> bool {
    let mut pause = Duration::from_micros(20);
    for i in 0u32.. {
        if what() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        if i < 16 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }
    false
}

impl Turn {
    /// Open `turn.lock` in `dir`; `wait` bounds every wait for the turn.
    pub fn open(dir: &Path, wait: Duration) -> Result<Turn> {
        let path = dir.join(TURN_FILE);
        Ok(Turn {
            writer: open_lock_file(&path)?,
            reader: open_lock_file(&path)?,
            path,
            readers: Mutex::new(ReaderState::default()),
            changed: Condvar::new(),
            wait,
        })
    }

    fn busy(&self, what: &str) -> Error {
        Error::LockTimeout(format!(
            "{}: the commit turn was not free for {what} within {:?} (a long-lived snapshot or \
             a stalled writer holds it)",
            self.path.display(),
            self.wait
        ))
    }

    /// Take the turn exclusively. The caller serializes its own threads (writer mutex).
    pub fn exclusive(&self) -> Result<ExclusiveTurn<'_>> {
        let deadline = Instant::now() + self.wait;
        if poll(|| self.writer.try_lock_exclusive().is_ok(), deadline) {
            Ok(ExclusiveTurn { turn: self })
        } else {
            Err(self.busy("a commit"))
        }
    }

    /// Take the turn shared, waiting at most the turn's own wait.
    pub fn shared(self: &Arc<Self>) -> Result<SharedTurn> {
        self.shared_for(self.wait)
    }

    /// Take the turn shared, waiting at most `wait`.
    pub fn shared_for(self: &Arc<Self>, wait: Duration) -> Result<SharedTurn> {
        let deadline = Instant::now() + wait;
        let mut st = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.count > 0 {
                st.count += 1;
                return Ok(SharedTurn { turn: self.clone() });
            }
            if !st.taking {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.busy("a read"));
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        st.taking = true;
        drop(st);
        let got = poll(|| FileExt::try_lock_shared(&self.reader).is_ok(), deadline);
        let mut st = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        st.taking = false;
        if got {
            st.count += 1;
        }
        self.changed.notify_all();
        if got {
            Ok(SharedTurn { turn: self.clone() })
        } else {
            Err(self.busy("a read"))
        }
    }
}

impl Drop for ExclusiveTurn<'_> {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.turn.writer);
    }
}

impl Drop for SharedTurn {
    fn drop(&mut self) {
        let mut st = self.turn.readers.lock().unwrap_or_else(|p| p.into_inner());
        st.count -= 1;
        if st.count == 0 {
            let _ = FileExt::unlock(&self.turn.reader);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        crate::test_dirs::fresh("turn", name)
    }

    #[test]
    fn readers_share_and_exclude_a_writer_until_the_last_leaves() {
        let d = tmp("share");
        let a = Arc::new(Turn::open(&d, Duration::from_millis(50)).unwrap());
        let b = Arc::new(Turn::open(&d, Duration::from_millis(50)).unwrap());
        let r1 = a.shared().unwrap();
        let r2 = a.shared().unwrap();
        let r3 = b.shared().unwrap();
        assert!(matches!(b.exclusive(), Err(Error::LockTimeout(_))));
        drop(r1);
        drop(r3);
        assert!(b.exclusive().is_err(), "one reader of a is left");
        drop(r2);
        let w = b.exclusive().unwrap();
        let t = Instant::now();
        assert!(a.shared().is_err());
        assert!(a.exclusive().is_err());
        assert!(t.elapsed() < Duration::from_secs(2));
        drop(w);
        a.exclusive().unwrap();
    }

    #[test]
    fn a_busy_turn_is_handed_over_when_the_holder_lets_go() {
        let d = tmp("handover");
        let a = Arc::new(Turn::open(&d, Duration::from_secs(5)).unwrap());
        let b = Turn::open(&d, Duration::from_secs(5)).unwrap();
        let r = a.shared().unwrap();
        let t = Instant::now();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            drop(r);
        });
        b.exclusive().unwrap();
        assert!(t.elapsed() < Duration::from_secs(1));
        h.join().unwrap();
    }
}
