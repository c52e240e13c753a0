//! The parts of [`Db`] that only a member of a coordinated group uses: the commit step under
//! the commit turn, following other processes' commits (meta, allocation table, mapping),
//! snapshots of past commits, and read-modify-write outside the turn. See
//! `docs/coordination.md`.

use super::*;

/// The newest valid checkpoint among the data file's two meta slots, and its slot. Group
/// members only read it in the turn, so no meta page is being written meanwhile.
/// What adopting a newer commit changed in the allocation table.
#[derive(Debug, Default)]
pub(crate) struct Refreshed {
    /// Pages whose state (in use / free) flipped.
    pub flipped: Vec<PageId>,
    /// The table was loaded whole: `flipped` is unknown.
    pub full: bool,
}

impl Db {
    /// A snapshot of commit `txn` (root page `root`, `page_count` pages), whatever commits came
    /// since. Sound only while an open snapshot of this handle at `txn` or older protects the
    /// pages of that commit (see [`crate::readers`]); refused otherwise.
    pub(crate) fn snapshot_of(
        &self,
        txn: u64,
        root: PageId,
        page_count: u64,
    ) -> Result<Snapshot<'_>> {
        let g = self
            .group
            .as_ref()
            .ok_or_else(|| Error::Aborted("only a group member reads past commits".into()))?;
        let mut s = lock(&self.shared);
        if !s.readers.iter().any(|r| r.0 <= txn) {
            return Err(Error::Aborted(format!(
                "the pages of commit {txn} are not protected by a snapshot"
            )));
        }
        if page_count > s.map.pages() {
            s.map = Arc::new(crate::store::map_current(&self.data_path, &g.data)?);
        }
        match s.readers.iter_mut().find(|r| r.0 == txn) {
            Some(r) => r.1 += 1,
            None => s.readers.push((txn, 1)),
        }
        Ok(Snapshot {
            db: self,
            map: s.map.clone(),
            head: Head {
                txn,
                root,
                page_count,
            },
        })
    }

    /// Readers of a group: adopt the newest commit in the data file (any process's).
    pub(super) fn refresh_head(&self, s: &mut Shared, g: &Group) -> Result<()> {
        let Some((_, m)) = newest_checkpoint(&s.map) else {
            return Err(Error::Corrupt {
                path: self.data_path.clone(),
                detail: "no valid meta page (another process damaged it?)".into(),
            });
        };
        if m.txn == s.head.txn {
            return Ok(());
        }
        if m.page_count > s.map.pages() {
            s.map = Arc::new(crate::store::map_current(&self.data_path, &g.data)?);
        }
        s.head = Head {
            txn: m.txn,
            root: m.root,
            page_count: m.page_count,
        };
        self.fence_seen.fetch_max(m.fence, Ordering::Relaxed);
        Ok(())
    }

    /// [`Db::transaction`] of a group member: read under the lock from a snapshot, run `f`
    /// with no turn held, then write the result in a commit step. Nobody else can change
    /// `path` in between: the write lock on it is ours until the commit (the lease is renewed
    /// while `f` runs; a lock taken back meanwhile makes the commit fail with `Fenced`).
    pub(super) fn transaction_in_group<F>(&self, path: &str, mut f: F) -> Result<Option<CommitInfo>>
    where
        F: FnMut(Value) -> Option<Value>,
    {
        let segs = vec![path::parse(path)?];
        let grant = self
            .locks
            .acquire(&segs, self.fence_seen.load(Ordering::Relaxed))?;
        let result = (|| {
            let current = self.snapshot()?.get(path)?;
            let Some(new) = f(current) else {
                return Ok(None);
            };
            let (_, info) =
                self.commit_step(&mut lock(&self.writer), &grant, |t| t.set(path, new))?;
            Ok(Some(info))
        })();
        self.locks.release(&grant);
        if let Ok(Some(info)) = &result {
            self.notify(info);
        }
        result
    }

    /// A coordinated write: the write right first (a round trip to the master, while other
    /// threads and processes go on committing), then the short commit step in the turn.
    pub(super) fn write_in_group<R>(
        &self,
        segs: &[Vec<Segment>],
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<R>,
    ) -> Result<(R, CommitInfo)> {
        let grant = self
            .locks
            .acquire(segs, self.fence_seen.load(Ordering::Relaxed))?;
        let result = self.commit_step(&mut lock(&self.writer), &grant, f);
        self.locks.release(&grant);
        let (r, info) = result?;
        self.notify(&info);
        Ok((r, info))
    }

    /// The commit step of a group member, in the turn: adopt the newest state of the files,
    /// run `f` on it, commit, and announce the commit while still in the turn (so
    /// announcements leave in commit order).
    pub(super) fn commit_step<R>(
        &self,
        w: &mut Writer,
        grant: &Grant,
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<R>,
    ) -> Result<(R, CommitInfo)> {
        let g = self
            .group
            .as_ref()
            .ok_or_else(|| Error::Aborted("commit step outside a coordinated group".into()))?;
        let _turn = g.turn.exclusive()?;
        // nobody committed since this writer's last look: its state is the newest
        let counter = g.readers.commits();
        if counter != w.seen_commits || w.failed.is_some() {
            self.refresh_writer(w)?;
            w.seen_commits = counter;
        }
        // pages retired by commits that a snapshot somewhere may still read wait
        w.space.reclaim(g.readers.oldest());
        let (r, info, head) = self.run(w, grant, f)?;
        if let Some(head) = head {
            // still in the turn: nobody else committed since, so the counter now names ours
            let counter = g.readers.bump();
            w.seen_commits = counter;
            let mut s = lock(&self.shared);
            s.head = head;
            s.seen_commits = counter;
            s.map = w.file.map.clone();
            drop(s);
            self.fence_seen.fetch_max(w.meta.fence, Ordering::Relaxed);
            self.locks.announce(&info);
        }
        Ok((r, info))
    }

    /// Adopt the newest commit in the data file (made by any process of the group): its meta,
    /// its allocation table, and a mapping that covers it. Cheap when this process made the
    /// last commit (nothing to do).
    pub(super) fn refresh_writer(&self, w: &mut Writer) -> Result<Refreshed> {
        let Some((slot, m)) = newest_checkpoint(&w.file.map) else {
            return Err(Error::Corrupt {
                path: self.data_path.clone(),
                detail: "no valid meta page".into(),
            });
        };
        if m.txn == w.meta.txn && w.failed.is_none() {
            return Ok(Refreshed::default());
        }
        w.file.ensure_pages(m.page_count)?;
        // Read only what changed since the state this process knew (usually the allocation
        // log in the meta page and a bitmap page or two); a full load if that fails.
        let refreshed = match w
            .table
            .reload(&w.file.map, m.alloc_index, m.page_count, &m.delta)
        {
            Ok(flipped) => Refreshed {
                flipped,
                full: false,
            },
            Err(_) => {
                w.table = AllocTable::load(&w.file.map, m.alloc_index, m.page_count, &m.delta)
                    .map_err(|d| Error::Corrupt {
                        path: self.data_path.clone(),
                        detail: d,
                    })?;
                Refreshed {
                    flipped: Vec::new(),
                    full: true,
                }
            }
        };
        let flipped = (!refreshed.full).then_some(refreshed.flipped.as_slice());
        let (table, space) = (&w.table, &mut w.space);
        space.adopt(table, m.page_count, m.txn, flipped);
        w.since = crate::commit::SinceCheckpoint {
            txn: m.txn,
            root: m.root,
            records: m.records,
            page_count: m.page_count,
            ..Default::default()
        };
        w.next_ckpt_slot = slot ^ 1;
        w.meta = Meta {
            written: Vec::new(),
            ..m
        };
        w.failed = None;
        self.fence_seen.fetch_max(w.meta.fence, Ordering::Relaxed);
        Ok(refreshed)
    }

    /// A group member's handle follows the allocation state of the files (the master does,
    /// for its allocation table): adopt the newest commit under the shared turn, waiting at
    /// most `wait` for it (`None` if it stayed busy), and call `f` with the table, the page
    /// count and what changed since the last call.
    pub(crate) fn follow_alloc<R>(
        &self,
        wait: Duration,
        f: impl FnOnce(&AllocTable, u64, u64, &Refreshed) -> R,
    ) -> Result<Option<R>> {
        let g = self
            .group
            .as_ref()
            .ok_or_else(|| Error::Aborted("only a group member follows the files".into()))?;
        let mut w = lock(&self.writer);
        let _turn = match g.turn.shared_for(wait) {
            Ok(t) => t,
            Err(Error::LockTimeout(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let r = self.refresh_writer(&mut w)?;
        Ok(Some(f(&w.table, w.meta.page_count, w.meta.txn, &r)))
    }

    /// Where this handle's writer gets file space (a group member: from the master).
    pub(crate) fn set_space(&self, space: impl FnOnce(u64) -> Box<dyn SpaceAllocator>) {
        let mut w = lock(&self.writer);
        let pc = w.space.page_count();
        w.space = space(pc);
    }

    pub(super) fn refresh_writer_if_group(&self, w: &mut Writer) -> Result<()> {
        match self.group {
            Some(_) => self.refresh_writer(w).map(|_| ()),
            None => Ok(()),
        }
    }
}
