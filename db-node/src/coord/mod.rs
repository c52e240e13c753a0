//! Coordination of several processes that share one database directory (issue 6).
//!
//! One process is the **master**: it owns the lock table and hands out write rights. The
//! others are **workers**: they ask the master through the post office (`ipc-server`) and
//! write the files themselves. See `docs/coordination.md`.

pub mod lock_table;

pub use lock_table::{LockPath, LockTable, Mode, Owner};
