//! Opening a database as a member of a coordinated group: [`Db::open`] with an IPC setting
//! ([`IpcOptions`]). The role is chosen by configuration (`Master`, `Worker`) or by a race for
//! `master.lock` (`Auto`: whoever takes it first serves the lock table, on a background
//! thread, for as long as it keeps the database open; the others are workers).
//!
//! ```no_run
//! use db_node::{Db, IpcOptions, Options, Role};
//! let mut ipc = IpcOptions::new("ws://127.0.0.1:9163");
//! ipc.role = Role::Auto;
//! let db = Db::open("/data/shop", Options { ipc: Some(ipc), ..Options::default() })
//!     .expect("open");
//! db.set("users/alice", 31).expect("set");
//! ```
//!
//! Every write asks the master for its lock (one round trip), then commits in a short turn
//! on the newest state of the files and announces the commit. Even the process that serves
//! as master writes as a worker, through the post office, so every process follows the same
//! path. Reads never ask anybody.

use super::background::{self, Ready, Started};
use super::events::EventKind;
use super::files::{FileLockError, MasterLock};
use super::master::{run_master, MasterConfig, MasterError};
use super::realtime::Received;
use super::space_pool::GrantedSpace;
use super::watch::{watch, WatchConfig, Watched};
use super::worker::{IpcConfig, IpcLocks};
use crate::error::{Error, Result};
use crate::{Db, Options};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
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

impl From<FileLockError> for Error {
    fn from(e: FileLockError) -> Error {
        match e {
            FileLockError::MasterRunning { dir, pid } => Error::MasterRunning { path: dir, pid },
            FileLockError::Db(e) => e,
        }
    }
}

impl From<MasterError> for Error {
    fn from(e: MasterError) -> Error {
        match e {
            MasterError::Files(f) => f.into(),
            MasterError::Db(e) => e,
            e @ (MasterError::Connect { .. } | MasterError::Closed) => {
                Error::MasterUnavailable(format!("the master of this process stopped: {e}"))
            }
        }
    }
}

/// How a database joins its group: `Options { ipc: Some(IpcOptions::new(url)), .. }` in
/// [`Db::open`].
#[derive(Clone, Debug)]
pub struct IpcOptions {
    /// `ws://` or `wss://` URL of the post office.
    pub url: String,
    pub role: Role,
    pub token: Option<String>,
    /// Extra trusted CA certificates (PEM) for `wss://`.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// Namespace in the post office; by default the directory's name.
    pub namespace: Option<String>,
    /// Deadline of each request to the master (and of connecting).
    pub timeout: Duration,
    /// How long a write waits for a conflicting lock or for the commit turn.
    pub lock_wait: Duration,
    /// Longest lease a master of this process grants.
    pub max_lease: Duration,
    /// Test hook: sleep this long right before each commit is validated and written.
    #[doc(hidden)]
    pub pause_before_commit: Option<Duration>,
    /// Test hook: sleep this long after each lock is granted, before the commit turn.
    #[doc(hidden)]
    pub pause_after_grant: Option<Duration>,
}

impl IpcOptions {
    pub fn new(url: impl Into<String>) -> Self {
        IpcOptions {
            url: url.into(),
            role: Role::Auto,
            token: None,
            tls_ca_pem: None,
            namespace: None,
            timeout: Duration::from_secs(5),
            lock_wait: Duration::from_secs(10),
            max_lease: Duration::from_secs(30),
            pause_before_commit: None,
            pause_after_grant: None,
        }
    }

    fn worker_config(&self) -> IpcConfig {
        let mut cfg = IpcConfig::new(self.url.clone());
        cfg.token = self.token.clone();
        cfg.tls_ca_pem = self.tls_ca_pem.clone();
        cfg.namespace = self.namespace.clone();
        cfg.timeout = self.timeout;
        cfg.lock_wait = self.lock_wait;
        cfg.pause_before_commit = self.pause_before_commit;
        cfg.pause_after_grant = self.pause_after_grant;
        cfg
    }

    fn watch_config(&self) -> WatchConfig {
        WatchConfig {
            url: self.url.clone(),
            token: self.token.clone(),
            tls_ca_pem: self.tls_ca_pem.clone(),
            namespace: self.namespace.clone(),
            timeout: self.timeout,
        }
    }
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

/// What a [`Db`] opened with an IPC setting keeps besides the files: the master it serves,
/// if any, and how to reach the post office.
pub struct Membership {
    master: Option<LocalMaster>,
    options: IpcOptions,
    dir: PathBuf,
    /// The events feed of this process, started by the first `on`.
    hub: std::sync::Mutex<Option<super::realtime::Hub>>,
}

/// [`Db::open`] with an IPC setting: pick the role, start the master thread if this process
/// is the master, and open the files as a member of the group whose writes ask the master.
pub(crate) fn open_member(dir: &Path, options: Options, ipc: IpcOptions) -> Result<Db> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let master = match ipc.role {
        Role::Worker => None,
        Role::Master => Some(start_master(dir, &ipc)?),
        Role::Auto => match start_master(dir, &ipc) {
            Ok(m) => Some(m),
            Err(Error::MasterRunning { .. }) => None,
            Err(e) => return Err(e),
        },
    };
    let locks = Arc::new(IpcLocks::new(dir, ipc.worker_config())?);
    let db = Db::open(
        dir,
        Options {
            durability: options.durability,
            locks: Some(locks.clone()),
            coordinated: true,
            turn_wait: Some(ipc.lock_wait),
            ipc: None,
        },
    )?;
    // file space comes from the master, with the locks
    db.set_space(|pc| Box::new(GrantedSpace::new(locks, pc)));
    Ok(db.with_membership(Membership {
        master,
        options: ipc,
        dir: dir.to_path_buf(),
        hub: Default::default(),
    }))
}

impl Membership {
    /// Whether this process serves as the group's master.
    pub fn is_master(&self) -> bool {
        self.master.is_some()
    }

    /// See [`Db::on`].
    pub fn on(&self, pattern: &str, kind: EventKind) -> Result<mpsc::Receiver<Received>> {
        let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        if !hub.as_ref().is_some_and(|h| h.is_running()) {
            *hub = Some(super::realtime::Hub::start(
                &self.dir,
                self.options.watch_config(),
            )?);
        }
        match hub.as_ref() {
            Some(h) => h.on(pattern, kind),
            None => Err(Error::MasterUnavailable("no events feed".into())),
        }
    }

    /// See [`Db::watch`].
    pub fn watch(&self, pattern: &str) -> Result<mpsc::Receiver<Watched>> {
        let (tx, rx) = mpsc::channel();
        let (dir, cfg, pattern) = (
            self.dir.clone(),
            self.options.watch_config(),
            pattern.to_owned(),
        );
        let timeout = cfg.timeout;
        background::start_subscription(
            "db-node-watch",
            "a watch",
            "cannot watch",
            timeout,
            move |ready: Ready<String>| async move {
                watch(
                    &dir,
                    cfg,
                    &pattern,
                    move || ready.signal(),
                    |w| tx.send(w).is_ok(),
                )
                .await
                .map_err(|e| e.to_string())
            },
        )?;
        Ok(rx)
    }
}

impl Db {
    /// Whether this process serves as its group's master (false without an IPC setting).
    pub fn is_master(&self) -> bool {
        self.membership().is_some_and(Membership::is_master)
    }

    /// Commits of any process of the group that change paths overlapping `pattern` (`*` for
    /// one segment), with gaps and disconnections, in commit order (see [`super::watch`]).
    /// Returns once the subscription is in effect; watching stops when the receiver is
    /// dropped (noticed at the next announcement). Needs an IPC setting.
    pub fn watch(&self, pattern: &str) -> Result<mpsc::Receiver<Watched>> {
        match self.membership() {
            Some(m) => m.watch(pattern),
            None => Err(Error::MasterUnavailable(
                "watching needs a database opened with an IPC setting".into(),
            )),
        }
    }

    /// Realtime events `kind` of `pattern` (`*` for one segment) raised by the commits of any
    /// process of the group after this call, in commit order, numbered per subscription, with
    /// markers for missed commits and disconnections (see [`super::realtime`]). Returns once
    /// the subscription is in effect; it stops when the receiver is dropped. Needs an IPC
    /// setting.
    pub fn on(&self, pattern: &str, kind: EventKind) -> Result<mpsc::Receiver<Received>> {
        match self.membership() {
            Some(m) => m.on(pattern, kind),
            None => Err(Error::MasterUnavailable(
                "events need a database opened with an IPC setting".into(),
            )),
        }
    }
}

/// Take `master.lock` here (so the race is decided before any thread starts), then serve on a
/// thread with its own runtime; wait until it serves or failed.
fn start_master(dir: &Path, o: &IpcOptions) -> Result<LocalMaster> {
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
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (thread, started) = background::start(
        "db-node-master",
        o.timeout + Duration::from_secs(10),
        |e| MasterError::Db(Error::io("runtime", e)),
        move |ready: Ready<MasterError>| {
            run_master(cfg, move |_| ready.signal(), async {
                let _ = stop_rx.await;
            })
        },
    )
    .map_err(|e| Error::MasterUnavailable(format!("cannot start the master thread: {e}")))?;
    let mut m = LocalMaster {
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    match started {
        Started::Ready => Ok(m),
        Started::Failed(e) => {
            m.stop = None;
            Err(e.into())
        }
        Started::TimedOut => Err(Error::MasterUnavailable(
            "no answer from the master thread in time".into(),
        )),
    }
}
