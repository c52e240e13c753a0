//! [`SharedWords`]: a small file mapped by several processes and used only as an array of
//! atomic 64-bit words (`fence.map`, `readers.map`). Every access, in every process, is an
//! atomic operation on an aligned word, so no process ever sees a torn value.

use crate::error::{Error, Result};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::AtomicU64;

/// A mapping of a file of `len` bytes (a multiple of 8), and the open file behind it.
pub struct SharedWords {
    raw: MmapRaw,
    len: usize,
    /// Kept open: locks on byte ranges of the file belong to this open file description.
    pub file: File,
}

impl SharedWords {
    /// Map `path` (`len` bytes), creating it zero-filled if needed.
    pub fn create(path: &Path, len: usize) -> Result<SharedWords> {
        Self::map(path, len, true).map(|m| m.expect("created at full length"))
    }

    /// Map the existing file `path`; `None` when it is shorter than `len` bytes.
    pub fn open(path: &Path, len: usize) -> Result<Option<SharedWords>> {
        Self::map(path, len, false)
    }

    fn map(path: &Path, len: usize, create: bool) -> Result<Option<SharedWords>> {
        let io = |e| Error::io(path, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        if file.metadata().map_err(io)?.len() < len as u64 {
            if !create {
                return Ok(None);
            }
            // zeroes; several processes may do this at once, harmlessly
            file.set_len(len as u64).map_err(io)?;
        }
        let raw = MmapOptions::new().len(len).map_raw(&file).map_err(io)?;
        Ok(Some(SharedWords { raw, len, file }))
    }

    /// Word `i`.
    pub fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.len / 8);
        // SAFETY: the mapping is `len` bytes long, page aligned, and lives as long as `self`;
        // every access to it, in every process, is an atomic 8-byte operation.
        unsafe { &*(self.raw.as_mut_ptr().add(i * 8) as *const AtomicU64) }
    }
}
