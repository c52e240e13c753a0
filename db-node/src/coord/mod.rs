//! Coordination of several processes that share one database directory (issue 6).
//!
//! One process is the **master**: it owns the lock table and hands out write rights with
//! growing fencing tokens. The others are **workers**: they ask the master through the post
//! office (`ipc-server`, namespace = database name) and write the files themselves. See
//! `docs/coordination.md` for the protocol, the files and what is still missing.
//!
//! * [`lock_table`]: the master's hierarchical read/write lock table (pure data structure);
//! * [`wire`]: the JSON messages between workers and the master;
//! * [`files`]: `master.lock`, the commit turn and the fencing reservation;
//! * [`fence_map`]: `fence.map`, the live fencing tokens that workers check at commit;
//! * [`master`]: the master process loop;
//! * [`worker`]: the lock provider that asks the master, and worker sessions;
//! * [`announce`], [`watch`]: commit announcements and watching them;
//! * [`events`], [`realtime`]: realtime events (`value`, `child_*`) computed from the record
//!   changes that announcements carry, and subscriptions to them;
//! * [`group`]: `Db::open` with an IPC setting ([`IpcOptions`]): roles master, worker, auto.

pub mod announce;
mod background;
pub mod events;
pub mod fence_map;
pub mod files;
pub mod grants;
pub mod group;
pub mod lock_table;
pub mod master;
pub mod order;
pub mod pages;
pub mod realtime;
pub mod space;
pub mod space_pool;
pub mod watch;
pub mod wire;
pub mod worker;

pub use group::{IpcOptions, Membership, Role};
pub use lock_table::{LockPath, LockTable, Mode, Owner};
pub use master::{run_master, MasterConfig, MasterError};
pub use worker::{IpcConfig, IpcLocks};
