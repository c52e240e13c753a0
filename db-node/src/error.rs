//! Typed errors. Every error about a file names the file.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a db-node database file (bad magic); refusing to touch it")]
    NotADatabase { path: PathBuf },
    #[error("{path}: written by a newer db-node (format version {found}, this build reads up to {supported})")]
    NewerVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path}: truncated: {detail}")]
    Truncated { path: PathBuf, detail: String },
    #[error("{path}: corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: database is open by process {pid}; run workers with an IPC role instead of opening it twice")]
    Locked { path: PathBuf, pid: String },
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("cannot write {path:?}: {reason}")]
    TypeMismatch { path: String, reason: String },
    #[error("database full: {0}")]
    Full(String),
    #[error("transaction aborted: {0}")]
    Aborted(String),
    #[error("write right lost before the commit: {0}")]
    Fenced(String),
    #[error("{path}: another master (pid {pid}) already serves this database")]
    MasterRunning { path: PathBuf, pid: String },
    #[error("master unavailable: {0}")]
    MasterUnavailable(String),
    #[error("lock not granted in time: {0}")]
    LockTimeout(String),
}

impl Error {
    /// This error, or — when it names no file — a `Corrupt` error about `path` that says what
    /// was being done, so that damage found while opening always names the file.
    pub(crate) fn in_file(self, path: &std::path::Path, doing: &str) -> Self {
        match self {
            Error::Io { .. }
            | Error::NotADatabase { .. }
            | Error::NewerVersion { .. }
            | Error::Truncated { .. }
            | Error::Corrupt { .. }
            | Error::Locked { .. }
            | Error::MasterRunning { .. } => self,
            other => Error::Corrupt {
                path: path.to_path_buf(),
                detail: format!("{doing}: {other}"),
            },
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
