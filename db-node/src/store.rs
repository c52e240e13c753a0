//! The files of a database directory: the memory-mapped data file (grown in chunks of real
//! zero-filled blocks, remapped as it grows) and the process lock that keeps a second,
//! uncoordinated process out.

use crate::error::{Error, Result};
use crate::page::{PageId, PAGE_SIZE};
use fs2::FileExt;
use memmap2::{MmapOptions, MmapRaw};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const DATA_FILE: &str = "data.db";
pub const LOCK_FILE: &str = "lock";

/// One mapping of the data file. Old mappings stay valid (and are kept alive by the snapshots
/// that use them) after the file grows and a bigger mapping replaces them.
pub struct Map {
    raw: MmapRaw,
    len: usize,
}

impl Map {
    pub fn pages(&self) -> u64 {
        (self.len / PAGE_SIZE) as u64
    }
    /// The bytes of page `id`, or None if the mapping does not reach it.
    pub fn page(&self, id: PageId) -> Option<&[u8]> {
        if id >= self.pages() {
            return None;
        }
        // SAFETY: in bounds of the mapping; pages reachable from a registered snapshot are never
        // written (copy-on-write + reader-aware reuse), so no mutable alias exists for them.
        Some(unsafe {
            std::slice::from_raw_parts(self.raw.as_ptr().add(id as usize * PAGE_SIZE), PAGE_SIZE)
        })
    }
    /// Mutable bytes of page `id`.
    ///
    /// # Safety
    /// Only the writer may call this, only for a page no snapshot can reach (allocated in the
    /// current transaction, or a meta slot), and without holding another reference to that page.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn page_mut(&self, id: PageId) -> &mut [u8] {
        assert!(id < self.pages(), "page {id} beyond the mapping");
        std::slice::from_raw_parts_mut(
            self.raw.as_mut_ptr().add(id as usize * PAGE_SIZE),
            PAGE_SIZE,
        )
    }
}

/// The data file and its current mapping.
pub struct DataFile {
    pub path: PathBuf,
    file: File,
    pub map: Arc<Map>,
}

impl DataFile {
    /// Open (or create empty) the data file. Returns the file and whether it is empty.
    pub fn open(path: PathBuf) -> Result<(DataFile, bool)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len() as usize;
        let map = Arc::new(map_file(&path, &file, len)?);
        Ok((DataFile { path, file, map }, len == 0))
    }

    /// Make sure the file holds at least `pages` pages; grows by a quarter (1 MiB..64 MiB) of
    /// real zero blocks and remaps. Another process of a coordinated group may have grown the
    /// file since it was mapped here: then the file's real length counts, and only the mapping
    /// is renewed (never zeroing what the other process wrote).
    pub fn ensure_pages(&mut self, pages: u64) -> Result<()> {
        if pages <= self.map.pages() {
            return Ok(());
        }
        let len = self.real_len()?;
        let have = len / PAGE_SIZE as u64;
        if pages <= have {
            self.map = Arc::new(map_file(&self.path, &self.file, len as usize)?);
            return Ok(());
        }
        let step = (have / 4).clamp(256, 16384);
        let target = pages.max(have + step) as usize * PAGE_SIZE;
        let zeros = vec![0u8; 1 << 20];
        let mut at = have as usize * PAGE_SIZE;
        while at < target {
            let n = (target - at).min(zeros.len());
            self.file
                .write_all_at(&zeros[..n], at as u64)
                .map_err(|e| Error::io(&self.path, e))?;
            at += n;
        }
        self.map = Arc::new(map_file(&self.path, &self.file, target)?);
        Ok(())
    }

    fn real_len(&self) -> Result<u64> {
        Ok(self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, e))?
            .len())
    }

    /// A second handle on the file, for mapping it again from another place (readers of a
    /// coordinated group remap when another process grew the file).
    pub fn handle(&self) -> Result<File> {
        self.file.try_clone().map_err(|e| Error::io(&self.path, e))
    }

    /// fdatasync: everything written to the map so far is on disk when this returns.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }

    pub fn file_len(&self) -> u64 {
        self.map.len as u64
    }
}

/// Map the whole file as it is now.
pub fn map_current(path: &Path, file: &File) -> Result<Map> {
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len() as usize;
    map_file(path, file, len)
}

fn map_file(path: &Path, file: &File, len: usize) -> Result<Map> {
    if len == 0 {
        // memmap2 refuses empty mappings; map one page of an anonymous placeholder instead.
        let raw = MmapOptions::new()
            .len(PAGE_SIZE)
            .map_anon()
            .map_err(|e| Error::io(path, e))?;
        let raw = MmapRaw::from(raw);
        return Ok(Map { raw, len: 0 });
    }
    let raw = MmapOptions::new()
        .len(len)
        .map_raw(file)
        .map_err(|e| Error::io(path, e))?;
    Ok(Map { raw, len })
}

/// Ownership of a database directory (an fs2 lock on `lock`). A single-process open holds it
/// exclusively and records its pid for the error message of the next one who tries; the
/// processes of a coordinated group (master and workers, see `docs/coordination.md`) hold it
/// shared, so neither side can open the directory while the other has it.
pub struct ProcessLock {
    _file: File,
}

/// Opens (creating) a lock file for reading and writing, without truncating it.
pub(crate) fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// The pid recorded in a lock file someone else holds, or `?`.
pub(crate) fn lock_holder(file: &mut File) -> String {
    let mut pid = String::new();
    let _ = file.read_to_string(&mut pid);
    match pid.trim() {
        "" => "?".into(),
        p => p.to_string(),
    }
}

/// Replaces a held lock file's content with this process's pid.
pub(crate) fn record_holder(file: &mut File, path: &Path) -> Result<()> {
    let write = |f: &mut File| -> std::io::Result<()> {
        f.set_len(0)?;
        f.seek(SeekFrom::Start(0))?;
        write!(f, "{}", std::process::id())?;
        f.flush()
    };
    write(file).map_err(|e| Error::io(path, e))
}

impl ProcessLock {
    /// Take the lock; `shared` for a member of a coordinated group.
    pub fn acquire_mode(dir: &Path, shared: bool) -> Result<ProcessLock> {
        if !shared {
            return Self::acquire(dir);
        }
        let mut file = open_lock_file(&dir.join(LOCK_FILE))?;
        if FileExt::try_lock_shared(&file).is_err() {
            let pid = lock_holder(&mut file);
            return Err(Error::Locked {
                path: dir.to_path_buf(),
                pid,
            });
        }
        // Name one live member for the error message of a later single-process open: one
        // fixed-width write at offset 0, so concurrent members never interleave digits.
        let _ = file.write_all_at(format!("{:<20}", std::process::id()).as_bytes(), 0);
        Ok(ProcessLock { _file: file })
    }

    /// Take the lock exclusively (single-process open).
    pub fn acquire(dir: &Path) -> Result<ProcessLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = open_lock_file(&path)?;
        if file.try_lock_exclusive().is_err() {
            let pid = lock_holder(&mut file);
            return Err(Error::Locked {
                path: dir.to_path_buf(),
                pid,
            });
        }
        record_holder(&mut file, &path)?;
        Ok(ProcessLock { _file: file })
    }
}

pub const REDO_FILE: &str = "redo.db";

/// The redo file: two meta-page slots for logged commits (see [`crate::commit`]), flushed on
/// their own so that a logged commit costs one page write and one flush.
pub struct RedoFile {
    pub path: PathBuf,
    file: File,
}

impl RedoFile {
    /// Open or create (two zero pages, flushed) the redo file.
    pub fn open(path: PathBuf) -> Result<RedoFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len < 2 * PAGE_SIZE as u64 {
            file.write_all_at(&vec![0u8; 2 * PAGE_SIZE - len as usize], len)
                .and_then(|_| file.sync_all())
                .map_err(|e| Error::io(&path, e))?;
            // make the new directory entry durable too, before any commit relies on the file
            if let Some(dir) = path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| Error::io(dir, e))?;
            }
        }
        Ok(RedoFile { path, file })
    }

    /// The bytes of both slots.
    pub fn read_slots(&self) -> Result<[Vec<u8>; 2]> {
        let mut out = [vec![0u8; PAGE_SIZE], vec![0u8; PAGE_SIZE]];
        for (i, buf) in out.iter_mut().enumerate() {
            self.file
                .read_exact_at(buf, (i * PAGE_SIZE) as u64)
                .map_err(|e| Error::io(&self.path, e))?;
        }
        Ok(out)
    }

    /// Write slot `slot` and flush it.
    pub fn write(&self, slot: u64, page: &[u8]) -> Result<()> {
        self.file
            .write_all_at(page, slot * PAGE_SIZE as u64)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))
    }
}
