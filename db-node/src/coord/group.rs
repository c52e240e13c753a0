//! Opening a database as a member of a coordinated group, from a library: the role is chosen
//! by configuration (`Master`, `Worker`) or by a race for `master.lock` (`Auto`: whoever takes
//! it first serves the lock table, on a background thread, for as long as it keeps the
//! database open; the others are workers).
//!
//! ```no_run
//! use db_node::coord::{GroupDb, GroupOptions, Role};
//! let mut o = GroupOptions::new("ws://127.0.0.1:9163");
//! o.role = Role::Auto;
//! let db = GroupDb::open("/data/shop", o).expect("open");
//! db.set("users/alice", 31).expect("set");
//! ```
//!
//! Every operation runs in a [`WorkerSession`]: it takes the commit turn, sees the newest
//! committed state, asks the master for its write lock (one round trip) and announces its
//! commit. Even the process that serves as master writes as a worker, through the post office,
//! so every process follows the same path.

use super::files::{FileLockError, MasterLock};
use super::master::{run_master, MasterConfig, MasterError};
use super::watch::{watch, WatchConfig, Watched};
use super::worker::{IpcConfig, WorkerSession};
use crate::error::{Error, Result};
use crate::{Child, CommitInfo, Db, Durability, Value};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Which part a process plays in its group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Serve the lock table; fail if another master serves the directory.
    Master,
    /// Only ask the master.
    Worker,
    /// Master if `master.lock` is free, else worker.
    #[default]
    Auto,
}

/// How to join the group.
#[derive(Clone, Debug)]
pub struct GroupOptions {
    pub url: String,
    pub role: Role,
    pub token: Option<String>,
    pub tls_ca_pem: Option<Vec<u8>>,
    pub namespace: Option<String>,
    pub durability: Durability,
    /// Deadline of each request to the master and of waiting for the commit turn.
    pub timeout: Duration,
    /// Longest lease a master of this process grants.
    pub max_lease: Duration,
}

impl GroupOptions {
    pub fn new(url: impl Into<String>) -> Self {
        GroupOptions {
            url: url.into(),
            role: Role::Auto,
            token: None,
            tls_ca_pem: None,
            namespace: None,
            durability: Durability::Sync,
            timeout: Duration::from_secs(5),
            max_lease: Duration::from_secs(30),
        }
    }
}

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error(transparent)]
    Files(#[from] FileLockError),
    #[error(transparent)]
    Master(#[from] MasterError),
    #[error("the master thread did not start: {0}")]
    MasterThread(String),
}

/// The master served by this process: stopped (and its locks released) on drop.
struct LocalMaster {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LocalMaster {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A database shared by a group of processes. See the module documentation.
pub struct GroupDb {
    // drop order: stop using the files before the master goes away
    session: WorkerSession,
    master: Option<LocalMaster>,
    watch_cfg: WatchConfig,
    dir: PathBuf,
}

impl GroupDb {
    pub fn open(dir: impl AsRef<Path>, o: GroupOptions) -> Result<GroupDb, GroupError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| FileLockError::Db(Error::io(&dir, e)))?;
        let master = match o.role {
            Role::Worker => None,
            Role::Master => Some(start_master(&dir, &o)?),
            Role::Auto => match start_master(&dir, &o) {
                Ok(m) => Some(m),
                Err(GroupError::Master(MasterError::Files(FileLockError::MasterRunning {
                    ..
                }))) => None,
                Err(e) => return Err(e),
            },
        };
        let mut cfg = IpcConfig::new(o.url.clone());
        cfg.token = o.token.clone();
        cfg.tls_ca_pem = o.tls_ca_pem.clone();
        cfg.namespace = o.namespace.clone();
        cfg.timeout = o.timeout;
        let session = WorkerSession::new(&dir, cfg, o.durability)?;
        let watch_cfg = WatchConfig {
            url: o.url.clone(),
            token: o.token.clone(),
            tls_ca_pem: o.tls_ca_pem.clone(),
            namespace: o.namespace.clone(),
            timeout: o.timeout,
        };
        Ok(GroupDb {
            session,
            master,
            watch_cfg,
            dir,
        })
    }

    /// Commits of any process of the group that change paths overlapping `pattern` (`*` for
    /// one segment), with gaps and disconnections, in commit order (see [`super::watch`]).
    /// Returns once the subscription is in effect; watching stops when the receiver is
    /// dropped (noticed at the next announcement).
    pub fn watch(&self, pattern: &str) -> Result<mpsc::Receiver<Watched>> {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<std::result::Result<(), String>>();
        let (dir, cfg, pattern) = (self.dir.clone(), self.watch_cfg.clone(), pattern.to_owned());
        let timeout = cfg.timeout;
        std::thread::Builder::new()
            .name("db-node-watch".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let ready = ready_tx.clone();
                let r = rt.block_on(watch(
                    &dir,
                    cfg,
                    &pattern,
                    move || {
                        let _ = ready.send(Ok(()));
                    },
                    |w| tx.send(w).is_ok(),
                ));
                if let Err(e) = r {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            })
            .map_err(|e| Error::MasterUnavailable(format!("cannot start a watch thread: {e}")))?;
        match ready_rx.recv_timeout(timeout + Duration::from_secs(1)) {
            Ok(Ok(())) => Ok(rx),
            Ok(Err(e)) => Err(Error::MasterUnavailable(format!("cannot watch: {e}"))),
            Err(_) => Err(Error::MasterUnavailable(
                "cannot watch: no subscription in time".into(),
            )),
        }
    }

    /// Whether this process serves as the group's master.
    pub fn is_master(&self) -> bool {
        self.master.is_some()
    }

    /// Run `f` on the newest state, holding the commit turn (see [`WorkerSession::run`]).
    pub fn with<R>(&self, f: impl FnOnce(&Db) -> Result<R>) -> Result<R> {
        self.session.run(f).map_err(|e| match e {
            FileLockError::Db(e) => e,
            e => Error::MasterUnavailable(e.to_string()),
        })
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.with(|db| db.get(path))
    }

    pub fn children(&self, path: &str, after: Option<&str>, limit: usize) -> Result<Vec<Child>> {
        self.with(|db| db.children(path, after, limit))
    }

    pub fn set(&self, path: &str, value: impl Into<Value>) -> Result<CommitInfo> {
        let v = value.into();
        self.with(|db| db.set(path, v))
    }

    pub fn update(&self, path: &str, partial: impl Into<Value>) -> Result<CommitInfo> {
        let v = partial.into();
        self.with(|db| db.update(path, v))
    }

    pub fn remove(&self, path: &str) -> Result<CommitInfo> {
        self.with(|db| db.remove(path))
    }

    /// Read-modify-write of the value at `path` under its write lock (see
    /// [`Db::transaction`]).
    pub fn transaction<F>(&self, path: &str, f: F) -> Result<Option<CommitInfo>>
    where
        F: FnMut(Value) -> Option<Value>,
    {
        self.with(|db| db.transaction(path, f))
    }
}

/// Take `master.lock` here (so the race is decided before any thread starts), then serve on a
/// thread with its own runtime; wait until it serves or failed.
fn start_master(dir: &Path, o: &GroupOptions) -> Result<LocalMaster, GroupError> {
    // Probe: fail fast and typed if another master holds the directory. The lock is taken
    // again, for good, by `run_master` on the thread; a racing process may win in between,
    // which the thread reports the same way.
    drop(MasterLock::acquire(dir).map_err(MasterError::from)?);
    let cfg = MasterConfig {
        dir: PathBuf::from(dir),
        url: o.url.clone(),
        token: o.token.clone(),
        tls_ca_pem: o.tls_ca_pem.clone(),
        namespace: o.namespace.clone(),
        max_lease: o.max_lease,
    };
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), MasterError>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("db-node-master".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(MasterError::Db(Error::io("runtime", e))));
                    return;
                }
            };
            let ready = ready_tx.clone();
            let result = rt.block_on(run_master(
                cfg,
                move |_| {
                    let _ = ready.send(Ok(()));
                },
                async {
                    let _ = stop_rx.await;
                },
            ));
            if let Err(e) = result {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(|e| GroupError::MasterThread(e.to_string()))?;
    let mut m = LocalMaster {
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    match ready_rx.recv_timeout(o.timeout + Duration::from_secs(10)) {
        Ok(Ok(())) => Ok(m),
        Ok(Err(e)) => {
            m.stop = None;
            Err(e.into())
        }
        Err(_) => Err(GroupError::MasterThread(
            "no answer from the master thread in time".into(),
        )),
    }
}
