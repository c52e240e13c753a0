//! The database: opening (and validating) a directory, snapshots for readers, and the single
//! writer that commits transactions.
//!
//! How a commit becomes durable is described in [`crate::commit`].

use crate::alloc::{AllocTable, LocalAllocator, SpaceAllocator};
use crate::btree::Pages;
use crate::error::{Error, Result};
use crate::lock::{Grant, LocalLocks, LockProvider};
use crate::meta::Meta;
use crate::page::{self, PageId, KIND_BRANCH, KIND_LEAF};
use crate::path::{self, Segment};
use crate::store::{DataFile, Map, ProcessLock, RedoFile, DATA_FILE, REDO_FILE};
use crate::tree::{self, Child};
use crate::turn::Turn;
use crate::txn::WriteTxn;
use crate::value::{Kind, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// When a commit is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Flushed to disk before the call returns (survives power loss).
    #[default]
    Sync,
    /// Written to the shared mapping; the OS flushes later (survives a process crash only).
    NoSync,
}

/// How to open a database.
#[derive(Clone, Default)]
pub struct Options {
    pub durability: Durability,
    /// Who grants write rights; [`LocalLocks`] when None.
    pub locks: Option<Arc<dyn LockProvider>>,
    /// Open as a member of a coordinated group (master or worker): the directory lock is
    /// taken shared instead of exclusive, every commit step runs under the group's commit
    /// turn on the newest state of the files, and snapshots register in the group's reader
    /// table (see [`crate::turn`], [`crate::readers`]). Only `coord` sets this, together with
    /// a lock provider that asks the master; see `docs/coordination.md`.
    pub coordinated: bool,
    /// Longest wait for the commit turn of a coordinated group (default 10 s).
    pub turn_wait: Option<Duration>,
    /// Join the directory's group through the post office, as master, worker or whichever
    /// the race for `master.lock` decides (see `docs/coordination.md`). None: the database
    /// belongs to this process alone.
    pub ipc: Option<crate::coord::IpcOptions>,
}

/// What one commit changed: announced to subscribers (and, later, to other processes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    /// Monotonic transaction id (unchanged if the transaction changed nothing).
    pub txn: u64,
    /// Fencing token of the grant the commit was made under.
    pub fence: u64,
    /// Paths whose subtrees changed.
    pub changed: Vec<String>,
    /// The records this commit changed, old and new, encoded as described in
    /// [`crate::changes`] (group members only; None elsewhere and when the commit changed more
    /// than [`crate::changes::BUDGET`]). Realtime events are computed from it.
    pub records: Option<Arc<Vec<u8>>>,
    /// Root page and page count of the commit (None when it changed nothing): another
    /// process that still protects its pages (`crate::readers`) can read this very state.
    pub head: Option<(PageId, u64)>,
}

/// Figures about a database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub txn: u64,
    pub records: u64,
    pub page_count: u64,
    pub used_pages: u64,
    pub retired_pages: u64,
    pub file_bytes: u64,
    /// The last commit before this open was incomplete and was rolled back.
    pub recovered: bool,
    /// Bytes of redo log written since the last checkpoint (`sync` mode).
    pub redo_bytes: u64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Head {
    pub txn: u64,
    pub root: PageId,
    pub page_count: u64,
}

struct Shared {
    head: Head,
    map: Arc<Map>,
    /// Open snapshots: (transaction id, count). A short vector (few distinct ids are open at
    /// once) that keeps its capacity, so taking a snapshot does not allocate.
    readers: Vec<(u64, usize)>,
    /// Group: the commit counter (`crate::readers`) when `head` was last brought up to date.
    seen_commits: u64,
}

pub(crate) struct Writer {
    /// Member of a coordinated group: other processes commit too, so every commit is a
    /// checkpoint (their state must be readable from the data file's meta pages alone).
    pub group: bool,
    pub file: DataFile,
    /// The on-file allocation table of the current state.
    pub table: AllocTable,
    /// Where the writer's pages come from.
    pub space: Box<dyn SpaceAllocator>,
    pub meta: Meta,
    pub sync: bool,
    pub since: crate::commit::SinceCheckpoint,
    pub redo: RedoFile,
    pub next_ckpt_slot: u64,
    pub next_redo_slot: u64,
    /// Group: the commit counter (`crate::readers`) when this writer last adopted the files.
    pub seen_commits: u64,
    failed: Option<String>,
    recovered: bool,
}

/// An open database directory. Cheap to share between threads (`&Db` is enough).
pub struct Db {
    dir: PathBuf,
    data_path: PathBuf,
    shared: Mutex<Shared>,
    writer: Mutex<Writer>,
    locks: Arc<dyn LockProvider>,
    subscribers: Mutex<Vec<Sender<CommitInfo>>>,
    checkpoint_on_close: std::sync::atomic::AtomicBool,
    /// Coordinated group only: the commit turn and a handle to remap the file for readers.
    group: Option<Group>,
    /// Highest fencing token seen in the file (the floor of the next lock request).
    fence_seen: AtomicU64,
    _lock: ProcessLock,
    /// Opened with an IPC setting: the master thread (if this process serves) and the post
    /// office. Dropped last, after the files.
    membership: Option<crate::coord::Membership>,
}

struct Group {
    turn: Arc<Turn>,
    data: std::fs::File,
    /// The group's reader table and this handle's slot in it.
    readers: crate::readers::ReaderTable,
    slot: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Node-page lookup shared by snapshots and write transactions.
pub(crate) fn node<'a>(
    map: &'a Map,
    path: &Path,
    page_count: u64,
    id: PageId,
    kind: Option<u8>,
) -> Result<&'a [u8]> {
    let corrupt = |d: String| Error::Corrupt {
        path: path.to_path_buf(),
        detail: format!("page {id}: {d}"),
    };
    if id < 2 || id >= page_count {
        return Err(corrupt(format!(
            "tree points outside the file ({page_count} pages)"
        )));
    }
    let p = map
        .page(id)
        .ok_or_else(|| corrupt("beyond the mapping".into()))?;
    let k = page::kind(p);
    let want = kind.unwrap_or(if k == KIND_BRANCH {
        KIND_BRANCH
    } else {
        KIND_LEAF
    });
    if !page::header_ok(p, want) {
        return Err(corrupt(format!(
            "expected a tree node of kind {want}, found kind {k}"
        )));
    }
    Ok(p)
}

mod group;
mod snapshot;
pub use snapshot::Snapshot;

impl Db {
    /// Open the database in `dir`, creating it if the directory or its data file is missing.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Db> {
        if let Some(ipc) = options.ipc.clone() {
            return crate::coord::group::open_member(dir.as_ref(), options, ipc);
        }
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let plock = ProcessLock::acquire_mode(&dir, options.coordinated)?;
        let turn = match options.coordinated {
            true => {
                let wait = options.turn_wait.unwrap_or(Duration::from_secs(10));
                Some(Arc::new(Turn::open(&dir, wait)?))
            }
            false => None,
        };
        // a group member opens (and maybe recovers) the files in its commit turn
        let held = match &turn {
            Some(t) => Some(t.exclusive()?),
            None => None,
        };
        let data_path = dir.join(DATA_FILE);
        if !data_path.exists() || std::fs::metadata(&data_path).map(|m| m.len()).unwrap_or(0) == 0 {
            // a new database: any redo file left from an old one must not be replayed
            let _ = std::fs::remove_file(dir.join(REDO_FILE));
            crate::open::create_file(&data_path)?;
        }
        let (file, _) = DataFile::open(data_path.clone())?;
        let redo_file = RedoFile::open(dir.join(REDO_FILE))?;
        let chosen = crate::open::choose_meta(&file, &redo_file)?;
        let (mut meta, recovered) = (chosen.meta, chosen.recovered);
        let table = AllocTable::load(&file.map, meta.alloc_index, meta.page_count, &meta.delta)
            .map_err(|d| Error::Corrupt {
                path: data_path.clone(),
                detail: d,
            })?;
        let mut space: Box<dyn SpaceAllocator> =
            Box::new(LocalAllocator::from_table(&table, meta.page_count));
        if options.coordinated {
            // other processes' snapshots may read any page freed lately: none is reused
            // before the readers of this moment are done
            space.adopt(&table, meta.page_count, meta.txn, None);
        }
        if meta.root != 0 {
            node(&file.map, &data_path, meta.page_count, meta.root, None)?;
        }
        let head = Head {
            txn: meta.txn,
            root: meta.root,
            page_count: meta.page_count,
        };
        let shared = Shared {
            head,
            map: file.map.clone(),
            readers: Vec::with_capacity(8),
            seen_commits: u64::MAX,
        };
        let since = crate::commit::SinceCheckpoint {
            txn: meta.base,
            root: meta.root,
            records: meta.records,
            page_count: meta.page_count,
            ..Default::default()
        };
        let redo = std::mem::take(&mut meta.log);
        let group = match &turn {
            Some(t) => {
                let readers = crate::readers::ReaderTable::open(&dir)?;
                let slot = readers.claim()?;
                Some(Group {
                    turn: t.clone(),
                    data: file.handle()?,
                    readers,
                    slot,
                })
            }
            None => None,
        };
        let fence_seen = AtomicU64::new(meta.fence);
        let writer = Writer {
            group: options.coordinated,
            file,
            table,
            space,
            meta,
            sync: options.durability == Durability::Sync,
            since,
            redo: redo_file,
            next_ckpt_slot: chosen.next_ckpt_slot,
            next_redo_slot: chosen.next_redo_slot,
            seen_commits: u64::MAX,
            failed: None,
            recovered,
        };
        let db = Db {
            dir,
            data_path,
            shared: Mutex::new(shared),
            writer: Mutex::new(writer),
            locks: options
                .locks
                .unwrap_or_else(|| Arc::new(LocalLocks::default())),
            subscribers: Mutex::new(Vec::new()),
            checkpoint_on_close: true.into(),
            group,
            fence_seen,
            _lock: plock,
            membership: None,
        };
        if !redo.is_empty() {
            // the last commits were logged, not checkpointed: replay them and checkpoint
            // Damage can surface here as any error (a record of the wrong type, a bad key):
            // report it against the file, as every other open error is.
            let replay = |t: &mut WriteTxn<'_>| t.replay(&redo);
            let r = match held {
                // in the turn already: the replay restores committed state, no new write
                // right is needed from anybody
                Some(_) => {
                    let mut w = lock(&db.writer);
                    let fence = w.meta.fence;
                    let grant = Grant {
                        paths: vec![Vec::new()],
                        token: fence,
                    };
                    db.commit_step(&mut w, &grant, replay).map(|_| ())
                }
                None => db.write_paths(&[""], replay).map(|_| ()),
            };
            r.map_err(|e| e.in_file(&db.data_path, "replaying the redo log"))?;
        }
        drop(held);
        Ok(db)
    }

    /// Write a checkpoint if commits were logged since the last one (see [`crate::commit`]).
    pub fn checkpoint(&self) -> Result<()> {
        if lock(&self.writer).since.log.is_empty() {
            return Ok(());
        }
        self.write_paths(&[""], |t| {
            t.force_checkpoint();
            Ok(())
        })
        .map(|_| ())
    }

    /// Close without the final checkpoint, as a crash would (for recovery tests).
    #[doc(hidden)]
    pub fn close_without_checkpoint(self) {
        self.checkpoint_on_close
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn with_membership(mut self, m: crate::coord::Membership) -> Db {
        self.membership = Some(m);
        self
    }

    pub(crate) fn membership(&self) -> Option<&crate::coord::Membership> {
        self.membership.as_ref()
    }

    /// A consistent read view of the latest commit. It never blocks on (or blocks) a writer.
    /// In a coordinated group it shows the newest commit of any process; the pages it reads
    /// are not reused by anybody until it is dropped (see [`crate::readers`]).
    pub fn snapshot(&self) -> Result<Snapshot<'_>> {
        let mut s = lock(&self.shared);
        if let Some(g) = &self.group {
            // register in the reader table before the pages are read (see `crate::readers`)
            loop {
                let before = g.readers.commits();
                if before != s.seen_commits {
                    self.refresh_head(&mut s, g)?;
                }
                let t = s.head.txn;
                if !s.readers.iter().any(|r| r.0 <= t) {
                    g.readers.publish(g.slot, t);
                    if g.readers.commits() != before {
                        continue; // a commit slipped in: start over with it
                    }
                } // else an older snapshot of this handle protects it already
                s.seen_commits = before;
                break;
            }
        }
        let head = s.head;
        match s.readers.iter_mut().find(|r| r.0 == head.txn) {
            Some(r) => r.1 += 1,
            None => s.readers.push((head.txn, 1)),
        }
        Ok(Snapshot {
            db: self,
            map: s.map.clone(),
            head,
        })
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.snapshot()?.get(path)
    }
    pub fn get_children(&self, path: &str, only: &[&str]) -> Result<Value> {
        self.snapshot()?.get_children(path, only)
    }
    pub fn exists(&self, path: &str) -> Result<bool> {
        self.snapshot()?.exists(path)
    }
    pub fn children(&self, path: &str, after: Option<&str>, limit: usize) -> Result<Vec<Child>> {
        self.snapshot()?.children(path, after, limit)
    }

    /// Replace the subtree at `path` (null removes it).
    pub fn set(&self, path: &str, value: impl Into<Value>) -> Result<CommitInfo> {
        let v = value.into();
        Ok(self.write_paths(&[path], |t| t.set(path, v))?.1)
    }
    /// Merge the children of `partial` into the object at `path` (null children are removed).
    pub fn update(&self, path: &str, partial: impl Into<Value>) -> Result<CommitInfo> {
        let v = partial.into();
        Ok(self.write_paths(&[path], |t| t.update(path, v))?.1)
    }
    pub fn remove(&self, path: &str) -> Result<CommitInfo> {
        Ok(self.write_paths(&[path], |t| t.remove(path))?.1)
    }

    /// Atomic read-modify-write of `path`: `f` gets the current value and returns the new one,
    /// or None to abort (then nothing is written and None is returned). Keep `f` pure: a
    /// future version may run it again.
    ///
    /// In a coordinated group `f` runs under the write lock on `path` only, outside the commit
    /// turn: a slow `f` delays other writers of `path`, not the other writers and readers of
    /// the database (AceBase holds its global lock across such a callback).
    pub fn transaction<F>(&self, path: &str, mut f: F) -> Result<Option<CommitInfo>>
    where
        F: FnMut(Value) -> Option<Value>,
    {
        if self.group.is_some() {
            return self.transaction_in_group(path, f);
        }
        let (done, info) = self.write_paths(&[path], |t| {
            let cur = t.get(path)?;
            match f(cur) {
                None => Ok(false),
                Some(v) => t.set(path, v).map(|_| true),
            }
        })?;
        Ok(done.then_some(info))
    }

    /// Run `f` as one atomic transaction over the whole tree (a batch of operations).
    pub fn write<R>(
        &self,
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<R>,
    ) -> Result<(R, CommitInfo)> {
        self.write_paths(&[""], f)
    }

    /// Run `f` as one atomic transaction allowed to write only the subtrees at `paths`.
    ///
    /// In a coordinated group `f` runs in the commit step, holding the commit turn that every
    /// commit and snapshot of the group needs: keep it short (use [`Db::transaction`] for a
    /// read-modify-write that takes time).
    pub fn write_paths<R>(
        &self,
        paths: &[&str],
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<R>,
    ) -> Result<(R, CommitInfo)> {
        let segs: Vec<Vec<Segment>> = paths
            .iter()
            .map(|p| path::parse(p))
            .collect::<Result<_>>()?;
        if self.group.is_some() {
            return self.write_in_group(&segs, f);
        }
        let mut w = lock(&self.writer);
        if let Some(f) = &w.failed {
            return Err(Error::Aborted(format!(
                "an earlier commit failed ({f}); reopen the database"
            )));
        }
        let grant = self.locks.acquire(&segs, w.meta.fence)?;
        let oldest = lock(&self.shared)
            .readers
            .iter()
            .map(|r| r.0)
            .min()
            .unwrap_or(w.meta.txn);
        w.space.reclaim(oldest);
        let result = self.run(&mut w, &grant, f);
        self.locks.release(&grant);
        let (r, info, head) = result?;
        if let Some(head) = head {
            let mut s = lock(&self.shared);
            s.head = head;
            s.map = w.file.map.clone();
        }
        drop(w);
        self.notify(&info);
        Ok((r, info))
    }

    /// Hand a commit that changed something to the local subscribers ([`Db::subscribe`]).
    fn notify(&self, info: &CommitInfo) {
        if !info.changed.is_empty() {
            lock(&self.subscribers).retain(|s| s.send(info.clone()).is_ok());
        }
    }

    fn run<R>(
        &self,
        w: &mut Writer,
        grant: &Grant,
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<R>,
    ) -> Result<(R, CommitInfo, Option<Head>)> {
        let mut t = WriteTxn::new(w, grant.clone());
        match f(&mut t) {
            Err(e) => {
                t.abort();
                Err(e)
            }
            Ok(r) => {
                if let Err(e) = self.locks.validate(grant) {
                    t.abort();
                    return Err(e);
                }
                let (info, head) = t.commit()?;
                Ok((r, info, head))
            }
        }
    }

    /// The highest fencing token recorded in the current meta page: new grants must carry a
    /// greater one.
    pub fn fence_high_water(&self) -> u64 {
        self.fresh_writer().meta.fence
    }

    /// Receive a [`CommitInfo`] for every commit that changes something.
    pub fn subscribe(&self) -> Receiver<CommitInfo> {
        let (tx, rx) = channel();
        lock(&self.subscribers).push(tx);
        rx
    }

    /// The writer, with the newest state of the files adopted when this is a group member.
    fn fresh_writer(&self) -> MutexGuard<'_, Writer> {
        let mut w = lock(&self.writer);
        if let Some(g) = &self.group {
            if let Ok(_turn) = g.turn.exclusive() {
                let _ = self.refresh_writer(&mut w);
            }
        }
        w
    }

    pub fn stats(&self) -> Stats {
        let w = self.fresh_writer();
        Stats {
            txn: w.meta.txn,
            records: w.meta.records,
            page_count: w.meta.page_count,
            used_pages: w.table.used_pages(),
            retired_pages: w.space.retired_pages() as u64,
            file_bytes: w.file.file_len(),
            recovered: w.recovered,
            redo_bytes: w.since.log.len() as u64,
        }
    }

    /// Ids of the pages the allocation bitmap marks in use (for tools and tests).
    pub fn used_page_ids(&self) -> Vec<PageId> {
        let w = self.fresh_writer();
        (0..w.meta.page_count).filter(|&p| w.table.get(p)).collect()
    }

    /// Verify every page and record reachable from the latest commit (see [`crate::check`]).
    pub fn check(&self) -> crate::check::Report {
        if let Err(e) = self.checkpoint() {
            return crate::check::Report {
                problems: vec![format!("checkpoint before the check failed: {e}")],
                ..Default::default()
            };
        }
        let mut w = lock(&self.writer);
        let _turn = match &self.group {
            Some(g) => match g.turn.exclusive() {
                Ok(t) => Some(t),
                Err(e) => {
                    return crate::check::Report {
                        problems: vec![format!("cannot check: {e}")],
                        ..Default::default()
                    }
                }
            },
            None => None,
        };
        if let Err(e) = self.refresh_writer_if_group(&mut w) {
            return crate::check::Report {
                problems: vec![format!("cannot read the newest state: {e}")],
                ..Default::default()
            };
        }
        crate::check::run(&w.file, &w.table, &w.meta)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if self
            .checkpoint_on_close
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let _ = self.checkpoint();
        }
        if let Some(g) = &self.group {
            g.readers.release(g.slot);
        }
    }
}

impl Writer {
    pub(crate) fn fail(&mut self, why: String) {
        self.failed = Some(why);
    }
}

fn newest_checkpoint(map: &Map) -> Option<(u64, Meta)> {
    (0..2u64)
        .filter_map(|i| Some((i, Meta::decode(map.page(i)?).ok()?)))
        .max_by_key(|(_, m)| m.txn)
}
