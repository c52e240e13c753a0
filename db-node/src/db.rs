//! The database: opening (and validating) a directory, snapshots for readers, and the single
//! writer that commits transactions.
//!
//! Commit protocol: the writer fills pages of its own (never reachable by any snapshot), then
//! records them in the allocation bitmap, seals every written page with its checksum and writes
//! the meta slot `txn % 2`, listing each written page with its checksum. In `sync` mode one
//! fdatasync then makes the commit durable: if the machine dies before it completes, the next
//! open finds the new meta torn, or a listed page whose checksum does not match, and falls back
//! to the previous meta, whose pages this commit never touched. Commits too big to list flush
//! their pages first and the meta after (two flushes).

use crate::alloc::{LocalAllocator, SpaceAllocator};
use crate::btree::Pages;
use crate::error::{Error, Result};
use crate::lock::{Grant, LocalLocks, LockProvider};
use crate::meta::{Meta, MetaErr, FLAG_LIST_COMPLETE};
use crate::page::{self, PageId, KIND_BRANCH, KIND_LEAF, PAGE_SIZE};
use crate::path::{self, Segment};
use crate::store::{DataFile, Map, ProcessLock, DATA_FILE};
use crate::tree::{self, Child};
use crate::txn::WriteTxn;
use crate::value::{Kind, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};

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
    readers: BTreeMap<u64, usize>,
}

pub(crate) struct Writer {
    pub file: DataFile,
    pub alloc: LocalAllocator,
    pub meta: Meta,
    pub sync: bool,
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
    _lock: ProcessLock,
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

impl Db {
    /// Open the database in `dir`, creating it if the directory or its data file is missing.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Db> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let plock = ProcessLock::acquire(&dir)?;
        let data_path = dir.join(DATA_FILE);
        if !data_path.exists() || std::fs::metadata(&data_path).map(|m| m.len()).unwrap_or(0) == 0 {
            create_file(&data_path)?;
        }
        let (file, _) = DataFile::open(data_path.clone())?;
        let (meta, recovered) = choose_meta(&file)?;
        let alloc = LocalAllocator::load(&file.map, meta.alloc_index, meta.page_count, &meta.delta)
            .map_err(|d| Error::Corrupt {
                path: data_path.clone(),
                detail: d,
            })?;
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
            readers: BTreeMap::new(),
        };
        let writer = Writer {
            file,
            alloc,
            meta,
            sync: options.durability == Durability::Sync,
            failed: None,
            recovered,
        };
        Ok(Db {
            dir,
            data_path,
            shared: Mutex::new(shared),
            writer: Mutex::new(writer),
            locks: options
                .locks
                .unwrap_or_else(|| Arc::new(LocalLocks::default())),
            subscribers: Mutex::new(Vec::new()),
            _lock: plock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A consistent read view of the latest commit; never blocks on (or blocks) the writer.
    pub fn snapshot(&self) -> Snapshot<'_> {
        let mut s = lock(&self.shared);
        let head = s.head;
        *s.readers.entry(head.txn).or_insert(0) += 1;
        Snapshot {
            db: self,
            map: s.map.clone(),
            head,
        }
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.snapshot().get(path)
    }
    pub fn get_children(&self, path: &str, only: &[&str]) -> Result<Value> {
        self.snapshot().get_children(path, only)
    }
    pub fn exists(&self, path: &str) -> Result<bool> {
        self.snapshot().exists(path)
    }
    pub fn children(&self, path: &str, after: Option<&str>, limit: usize) -> Result<Vec<Child>> {
        self.snapshot().children(path, after, limit)
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
    /// or None to abort (then nothing is written and None is returned). `f` may run more than
    /// once (when another writer got in first, with coordinated writers), so it must be pure.
    pub fn transaction<F>(&self, path: &str, mut f: F) -> Result<Option<CommitInfo>>
    where
        F: FnMut(Value) -> Option<Value>,
    {
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
    pub fn write_paths<R>(
        &self,
        paths: &[&str],
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<R>,
    ) -> Result<(R, CommitInfo)> {
        let segs: Vec<Vec<Segment>> = paths
            .iter()
            .map(|p| path::parse(p))
            .collect::<Result<_>>()?;
        let mut w = lock(&self.writer);
        if let Some(f) = &w.failed {
            return Err(Error::Aborted(format!(
                "an earlier commit failed ({f}); reopen the database"
            )));
        }
        let grant = self.locks.acquire(&segs, w.meta.fence)?;
        let oldest = lock(&self.shared)
            .readers
            .keys()
            .next()
            .copied()
            .unwrap_or(w.meta.txn);
        w.alloc.reclaim(oldest);
        let result = self.run(&mut w, &grant, f);
        self.locks.release(&grant);
        let (r, info, head) = result?;
        if let Some(head) = head {
            let mut s = lock(&self.shared);
            s.head = head;
            s.map = w.file.map.clone();
        }
        drop(w);
        if !info.changed.is_empty() {
            let mut subs = lock(&self.subscribers);
            subs.retain(|s| s.send(info.clone()).is_ok());
        }
        Ok((r, info))
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
                let (info, head) = t.commit()?;
                Ok((r, info, head))
            }
        }
    }

    /// Receive a [`CommitInfo`] for every commit that changes something.
    pub fn subscribe(&self) -> Receiver<CommitInfo> {
        let (tx, rx) = channel();
        lock(&self.subscribers).push(tx);
        rx
    }

    pub fn stats(&self) -> Stats {
        let w = lock(&self.writer);
        Stats {
            txn: w.meta.txn,
            records: w.meta.records,
            page_count: w.meta.page_count,
            used_pages: w.alloc.used_pages(),
            retired_pages: w.alloc.retired_pages() as u64,
            file_bytes: w.file.file_len(),
            recovered: w.recovered,
        }
    }

    /// Ids of the pages the allocation bitmap marks in use (for tools and tests).
    pub fn used_page_ids(&self) -> Vec<PageId> {
        let w = lock(&self.writer);
        (0..w.meta.page_count).filter(|&p| w.alloc.get(p)).collect()
    }

    /// Verify every page and record reachable from the latest commit (see [`crate::check`]).
    pub fn check(&self) -> crate::check::Report {
        let w = lock(&self.writer);
        crate::check::run(&w.file, &w.alloc, &w.meta)
    }
}

impl Writer {
    pub(crate) fn fail(&mut self, why: String) {
        self.failed = Some(why);
    }
}

/// Write a fresh, empty database file next to `path`, flush it, and rename it into place.
fn create_file(path: &Path) -> Result<()> {
    let mut buf = vec![0u8; 4 * PAGE_SIZE];
    {
        let (metas, rest) = buf.split_at_mut(2 * PAGE_SIZE);
        let meta = Meta {
            txn: 0,
            root: 0,
            alloc_index: 3,
            page_count: 4,
            ..Meta::default()
        };
        meta.encode(&mut metas[..PAGE_SIZE]);
        let (bitmap, index) = rest.split_at_mut(PAGE_SIZE);
        page::init(bitmap, page::KIND_BITMAP, 0);
        page::wr64(bitmap, page::HEADER, 0b1111);
        page::seal(bitmap);
        page::init(index, page::KIND_INDEX, 0);
        page::set_count(index, 1);
        page::wr64(index, page::HEADER, 2);
        page::seal(index);
    }
    let tmp = path.with_extension("db.tmp");
    let io = |e| Error::io(&tmp, e);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&buf).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Pick the meta to open at: the valid one with the highest txn whose listed pages are intact.
fn choose_meta(file: &DataFile) -> Result<(Meta, bool)> {
    let path = &file.path;
    let len = file.file_len();
    if len < 2 * PAGE_SIZE as u64 {
        let first = file
            .map
            .page(0)
            .map(|p| p[..8] == crate::meta::MAGIC)
            .unwrap_or(false);
        return Err(if first || len == 0 {
            Error::Truncated {
                path: path.clone(),
                detail: format!("{len} bytes, shorter than the two meta pages"),
            }
        } else {
            Error::NotADatabase { path: path.clone() }
        });
    }
    let slots: Vec<std::result::Result<Meta, MetaErr>> = (0..2)
        .map(|i| file.map.page(i).map_or(Err(MetaErr::NoMagic), Meta::decode))
        .collect();
    if slots.iter().all(|s| matches!(s, Err(MetaErr::NoMagic))) {
        return Err(Error::NotADatabase { path: path.clone() });
    }
    if let Some(v) = slots.iter().find_map(|s| match s {
        Err(MetaErr::Newer(v)) => Some(*v),
        _ => None,
    }) {
        return Err(Error::NewerVersion {
            path: path.clone(),
            found: v,
            supported: crate::meta::FORMAT_VERSION,
        });
    }
    let mut valid: Vec<Meta> = slots
        .iter()
        .filter_map(|s| s.as_ref().ok().cloned())
        .collect();
    valid.sort_by_key(|m| std::cmp::Reverse(m.txn));
    let mut problems: Vec<String> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Err(MetaErr::Bad(d)) => Some(format!("meta page {i}: {d}")),
            Err(MetaErr::NoMagic) => Some(format!("meta page {i}: no magic")),
            _ => None,
        })
        .collect();
    for (n, m) in valid.iter().enumerate() {
        if m.page_count * PAGE_SIZE as u64 > len {
            return Err(Error::Truncated {
                path: path.clone(),
                detail: format!(
                    "{len} bytes but transaction {} uses {} pages of {PAGE_SIZE} bytes",
                    m.txn, m.page_count
                ),
            });
        }
        match verify_written(&file.map, m) {
            Ok(()) => return Ok((strip(m.clone()), n > 0)),
            Err(d) => problems.push(format!("transaction {}: {d}", m.txn)),
        }
    }
    Err(Error::Corrupt {
        path: path.clone(),
        detail: if problems.is_empty() {
            "no usable meta page".into()
        } else {
            problems.join("; ")
        },
    })
}

fn strip(mut m: Meta) -> Meta {
    m.written = Vec::new();
    m.flags &= !FLAG_LIST_COMPLETE;
    m
}

/// Check the pages a commit lists still carry the checksums it wrote.
pub(crate) fn verify_written(map: &Map, m: &Meta) -> std::result::Result<(), String> {
    if m.flags & FLAG_LIST_COMPLETE == 0 {
        return Ok(());
    }
    for &(id, sum) in &m.written {
        let p = map
            .page(id)
            .filter(|_| id < m.page_count)
            .ok_or_else(|| format!("written page {id} beyond the file end"))?;
        if page::stored_checksum(p) != sum || page::compute_checksum(p) != sum {
            return Err(format!(
                "page {id} written by this commit is torn or damaged"
            ));
        }
    }
    Ok(())
}

/// A consistent, read-only view of one committed transaction.
pub struct Snapshot<'a> {
    db: &'a Db,
    map: Arc<Map>,
    head: Head,
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        let mut s = lock(&self.db.shared);
        if let Some(n) = s.readers.get_mut(&self.head.txn) {
            *n -= 1;
            if *n == 0 {
                s.readers.remove(&self.head.txn);
            }
        }
    }
}

impl Pages for Snapshot<'_> {
    fn node(&self, id: PageId, kind: Option<u8>) -> Result<&[u8]> {
        node(
            &self.map,
            &self.db.data_path,
            self.head.page_count,
            id,
            kind,
        )
    }
    fn corrupt(&self, detail: String) -> Error {
        Error::Corrupt {
            path: self.db.data_path.clone(),
            detail,
        }
    }
}

impl Snapshot<'_> {
    /// Transaction id this snapshot shows.
    pub fn txn(&self) -> u64 {
        self.head.txn
    }
    fn key(path: &str) -> Result<Vec<u8>> {
        path::key_of(path)
    }
    /// The whole value at `path` (Null if absent).
    pub fn get(&self, path: &str) -> Result<Value> {
        tree::read(self, self.head.root, &Self::key(path)?)
    }
    /// The object at `path` with only the listed children.
    pub fn get_children(&self, path: &str, only: &[&str]) -> Result<Value> {
        let segs: Vec<Segment> = only
            .iter()
            .map(|c| {
                let s = path::parse(c)?;
                match s.as_slice() {
                    [one] => Ok(one.clone()),
                    _ => Err(Error::InvalidPath {
                        path: c.to_string(),
                        reason: "expected one child key".into(),
                    }),
                }
            })
            .collect::<Result<_>>()?;
        tree::read_some(self, self.head.root, &Self::key(path)?, &segs)
    }
    pub fn exists(&self, path: &str) -> Result<bool> {
        Ok(self.kind(path)?.is_some())
    }
    pub fn kind(&self, path: &str) -> Result<Option<Kind>> {
        tree::kind_at(self, self.head.root, &Self::key(path)?)
    }
    /// Children of `path` in key order, after the child `after`, at most `limit`.
    pub fn children(&self, path: &str, after: Option<&str>, limit: usize) -> Result<Vec<Child>> {
        let after = match after {
            None => None,
            Some(a) => path::parse(a)?.pop(),
        };
        tree::children(
            self,
            self.head.root,
            &Self::key(path)?,
            after.as_ref(),
            limit,
        )
    }
}
