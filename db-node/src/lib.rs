//! `db-node`: the storage engine of the database — a JSON-like tree addressed by paths
//! (`users/alice/age`), stored in one crash-safe, memory-mapped file per database directory.
//!
//! This crate owns the on-disk format (see `docs/storage.md`), copy-on-write B+tree pages,
//! the allocation bitmap, snapshots for readers and the atomic commit. It must not know about
//! networking, IPC or other processes: the right to write a subtree ([`LockProvider`]) and
//! file space ([`SpaceAllocator`]) come through traits that a local implementation serves today
//! and a master process will serve later. It must never panic or overwrite on a foreign,
//! newer, truncated or corrupt file: it reports a typed [`Error`] naming the file.

pub mod alloc;
pub mod btree;
pub mod changes;
pub mod check;
mod checksum;
pub mod commit;
pub mod coord;
pub mod db;
pub mod error;
pub mod lock;
pub mod meta;
mod open;
pub mod page;
pub mod path;
pub mod readers;
mod shared_words;
pub mod store;
#[cfg(test)]
mod test_dirs;
pub mod tree;
pub mod turn;
pub mod txn;
pub mod value;

pub use alloc::SpaceAllocator;
pub use coord::{IpcOptions, Role};
pub use db::{CommitInfo, Db, Durability, Options, Snapshot, Stats};
pub use error::{Error, Result};
pub use lock::{Grant, LocalLocks, LockProvider};
pub use path::Segment;
pub use tree::Child;
pub use txn::WriteTxn;
pub use value::{Kind, Value};
