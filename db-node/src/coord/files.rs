//! The small files a coordinated group keeps next to the database, all guarded by fs2 locks
//! that the kernel releases when the holder dies (so a SIGKILLed process never leaves a stale
//! lock behind). No caller ever waits on one without a deadline:
//!
//! | file | lock | purpose |
//! |---|---|---|
//! | `master.lock` | exclusive, for the master's whole life | at most one master per directory; holds its pid |
//! | `turn.lock` | see [`crate::turn`] | the commit turn: one process at a time commits |
//! | `fence.map`, `readers.map` | shared mappings, atomic words | live fencing tokens ([`super::fence_map`]); oldest commit each handle reads ([`crate::readers`]) |
//! | `master.fence` | (written under `master.lock`) | fencing tokens reserved by masters, so tokens grow across restarts |

use crate::error::{Error, Result};
use crate::store::{lock_holder, open_lock_file, record_holder};
use fs2::FileExt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MASTER_LOCK: &str = "master.lock";
pub const TURN_LOCK: &str = "turn.lock";
pub const FENCE_FILE: &str = "master.fence";

/// Why a coordination file could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum FileLockError {
    #[error("{dir}: another master (pid {pid}) already serves this database")]
    MasterRunning { dir: PathBuf, pid: String },
    #[error(transparent)]
    Db(#[from] Error),
}

/// Proof that this process is the only master of a directory.
pub struct MasterLock {
    _file: File,
}

impl MasterLock {
    /// Take `master.lock` or report who holds it. Never waits.
    pub fn acquire(dir: &Path) -> Result<MasterLock, FileLockError> {
        let path = dir.join(MASTER_LOCK);
        let mut file = open_lock_file(&path)?;
        if file.try_lock_exclusive().is_err() {
            let pid = lock_holder(&mut file);
            return Err(FileLockError::MasterRunning {
                dir: dir.to_path_buf(),
                pid,
            });
        }
        record_holder(&mut file, &path)?;
        Ok(MasterLock { _file: file })
    }
}

/// Fencing tokens reserved by masters. A master raises the reservation *before* it hands out
/// a token above it, so the next master, which starts above the reservation, never reissues a
/// token that may still be in a worker's hands.
pub struct FenceReserve {
    path: PathBuf,
    ceiling: u64,
}

/// How many tokens one write of `master.fence` reserves.
const RESERVE_BLOCK: u64 = 1 << 16;

impl FenceReserve {
    /// Read the reservation (0 when the file does not exist or is unreadable garbage).
    pub fn load(dir: &Path) -> Result<FenceReserve> {
        let path = dir.join(FENCE_FILE);
        let ceiling = match std::fs::read_to_string(&path) {
            Ok(t) => t.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(Error::io(&path, e)),
        };
        Ok(FenceReserve { path, ceiling })
    }

    /// The highest token any master may have issued.
    pub fn ceiling(&self) -> u64 {
        self.ceiling
    }

    /// Make sure tokens up to `upto` are reserved (durably: write, fsync, rename).
    pub fn ensure(&mut self, upto: u64) -> Result<()> {
        if upto <= self.ceiling {
            return Ok(());
        }
        let next = upto.saturating_add(RESERVE_BLOCK);
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            write!(f, "{next}")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| Error::io(&self.path, e))?;
        self.ceiling = next;
        Ok(())
    }
}

/// The post-office namespace of a database: its directory name, with characters the post
/// office does not allow in names replaced by `_` (`db` if nothing is left).
pub fn namespace_for(dir: &Path) -> String {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let name = canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut ns: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    if ns.is_empty() {
        ns = "db".into();
    }
    ns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        crate::test_dirs::fresh("coordfiles", name)
    }

    #[test]
    fn a_second_master_lock_is_refused_with_the_holders_pid() {
        let d = tmp("master");
        let a = MasterLock::acquire(&d).unwrap();
        let e = MasterLock::acquire(&d).err().unwrap().to_string();
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        drop(a);
        MasterLock::acquire(&d).unwrap();
    }

    #[test]
    fn fence_reservations_persist_and_only_grow() {
        let d = tmp("fence");
        let mut f = FenceReserve::load(&d).unwrap();
        assert_eq!(f.ceiling(), 0);
        f.ensure(5).unwrap();
        let c = f.ceiling();
        assert!(c >= 5);
        f.ensure(3).unwrap();
        assert_eq!(f.ceiling(), c);
        assert_eq!(FenceReserve::load(&d).unwrap().ceiling(), c);
    }

    #[test]
    fn namespaces_are_valid_post_office_names() {
        assert_eq!(namespace_for(Path::new("/x/my db!")), "my_db_");
        assert_eq!(namespace_for(Path::new("/")), "db");
    }
}
