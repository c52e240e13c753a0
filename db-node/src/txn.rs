//! A write transaction: the JSON-tree operations (set, update, remove, reads that see the
//! transaction's own writes) applied copy-on-write to a private root, and the commit that makes
//! them visible in one step.

use crate::btree::{self, Pages, PagesMut};
use crate::changes::Capture;
use crate::commit::{self, Changes};
use crate::db::{node, CommitInfo, Head, Writer};
use crate::error::{Error, Result};
use crate::lock::Grant;
use crate::page::{self, PageId, MAX_KEY};
use crate::path::{self, Segment, SEP};
use crate::tree::{self, Child};
use crate::value::{self, Kind, Value, T_ARRAY, T_CHUNK, T_OBJECT};

/// An open write transaction (see [`crate::Db::write`]).
pub struct WriteTxn<'a> {
    w: &'a mut Writer,
    grant: Grant,
    txn: u64,
    root: PageId,
    records: u64,
    allocated: Vec<PageId>,
    /// Pages this transaction allocated and then dropped; reused before asking for more.
    spare: Vec<PageId>,
    retired: Vec<PageId>,
    changed: Vec<String>,
    /// Record-level changes for realtime events (group members only; see [`crate::changes`]).
    changes: Capture,
    buf: Vec<u8>,
    /// Redo log of this transaction's record changes (`sync` mode, while it fits the meta page).
    log: Vec<u8>,
    log_ok: bool,
    log_room: usize,
    force_checkpoint: bool,
}

impl Pages for WriteTxn<'_> {
    fn node(&self, id: PageId, kind: Option<u8>) -> Result<&[u8]> {
        let pc = self.w.space.page_count();
        node(&self.w.file.map, &self.w.file.path, pc, id, kind)
    }
    fn corrupt(&self, detail: String) -> Error {
        Error::Corrupt {
            path: self.w.file.path.clone(),
            detail,
        }
    }
}

impl PagesMut for WriteTxn<'_> {
    fn txn(&self) -> u64 {
        self.txn
    }
    fn alloc(&mut self) -> Result<PageId> {
        let id = match self.spare.pop() {
            Some(id) => id,
            None => {
                let id = self.w.space.allocate().map_err(Error::Full)?;
                self.w.file.ensure_pages(self.w.space.page_count())?;
                self.allocated.push(id);
                id
            }
        };
        // SAFETY: a freshly allocated page is reachable by no snapshot.
        let p = unsafe { self.w.file.map.page_mut(id) };
        page::init(p, 0, self.txn);
        Ok(id)
    }
    fn free(&mut self, id: PageId) {
        if self.is_dirty(id) {
            self.spare.push(id);
        } else {
            self.retired.push(id);
        }
    }
    fn is_dirty(&self, id: PageId) -> bool {
        self.w
            .file
            .map
            .page(id)
            .is_some_and(|p| page::txn(p) == self.txn)
    }
    fn page_mut(&mut self, id: PageId) -> &mut [u8] {
        debug_assert!(self.is_dirty(id));
        // SAFETY: only pages this transaction allocated are dirty; no snapshot can reach them.
        unsafe { self.w.file.map.page_mut(id) }
    }
    fn copy_node(&mut self, from: PageId, to: PageId) -> Result<()> {
        let src = self.node(from, None)?;
        page::validate_node(src).map_err(|d| self.corrupt(format!("page {from}: {d}")))?;
        let mut tmp = [0u8; page::PAGE_SIZE];
        tmp.copy_from_slice(src);
        let txn = self.txn;
        let dst = self.page_mut(to);
        dst.copy_from_slice(&tmp);
        page::set_txn(dst, txn);
        Ok(())
    }
}

fn child_key(parent: &[u8], seg: &Segment) -> Vec<u8> {
    let mut k = parent.to_vec();
    path::push_segment(&mut k, seg);
    k
}

impl<'a> WriteTxn<'a> {
    pub(crate) fn new(w: &'a mut Writer, grant: Grant) -> WriteTxn<'a> {
        let log_room = commit::log_room(w);
        let log_ok = w.sync && !w.group;
        let changes = Capture::new(w.group);
        WriteTxn {
            txn: w.meta.txn + 1,
            root: w.meta.root,
            records: w.meta.records,
            w,
            grant,
            allocated: Vec::new(),
            spare: Vec::new(),
            retired: Vec::new(),
            changed: Vec::new(),
            changes,
            buf: Vec::new(),
            log: Vec::new(),
            log_ok,
            log_room,
            force_checkpoint: false,
        }
    }

    fn target(&self, p: &str) -> Result<(Vec<Segment>, Vec<u8>)> {
        let segs = path::parse(p)?;
        if !self.grant.covers(&segs) {
            return Err(Error::InvalidPath {
                path: p.to_string(),
                reason: "outside the subtrees this transaction may write".into(),
            });
        }
        let key = path::encode(p, &segs)?;
        Ok((segs, key))
    }

    /// The value at `path` as this transaction sees it.
    pub fn get(&self, p: &str) -> Result<Value> {
        let segs = path::parse(p)?;
        tree::read(self, self.root, &path::encode(p, &segs)?)
    }
    pub fn exists(&self, p: &str) -> Result<bool> {
        let segs = path::parse(p)?;
        Ok(tree::kind_at(self, self.root, &path::encode(p, &segs)?)?.is_some())
    }
    pub fn children(&self, p: &str, after: Option<&str>, limit: usize) -> Result<Vec<Child>> {
        let segs = path::parse(p)?;
        let after = match after {
            Some(a) => path::parse(a)?.pop(),
            None => None,
        };
        tree::children(
            self,
            self.root,
            &path::encode(p, &segs)?,
            after.as_ref(),
            limit,
        )
    }

    /// Replace the subtree at `path` with `value` (null removes it).
    pub fn set(&mut self, p: &str, value: Value) -> Result<()> {
        let (segs, key) = self.target(p)?;
        self.changed.push(path::render(&segs));
        if segs.is_empty() {
            return self.set_root(value);
        }
        if value.is_null() {
            return self.delete_subtree(&key);
        }
        self.ensure_parents(p, &segs)?;
        self.replace(&key, &value)
    }

    /// Merge the children of `partial` (an object) into the node at `path`; null children
    /// are removed. A non-object `partial` behaves like `set`.
    pub fn update(&mut self, p: &str, partial: Value) -> Result<()> {
        let Value::Object(children) = partial else {
            return self.set(p, partial);
        };
        let (segs, key) = self.target(p)?;
        self.changed.push(path::render(&segs));
        let mut is_array = false;
        if !segs.is_empty() {
            self.ensure_parents(p, &segs)?;
            match tree::kind_at(self, self.root, &key)? {
                Some(Kind::Object) => {}
                Some(Kind::Array) => is_array = true,
                None => self.put(&key, &[T_OBJECT])?,
                Some(_) => self.replace(&key, &Value::Object(Default::default()))?,
            }
        }
        for (k, v) in children {
            let seg = if is_array {
                let digits = k.trim_start_matches('[').trim_end_matches(']');
                Segment::Index(digits.parse().map_err(|_| Error::TypeMismatch {
                    path: p.to_string(),
                    reason: format!("{k:?} is not an index of this array"),
                })?)
            } else {
                path::check_key(p, &k)?;
                Segment::Key(k)
            };
            let ck = child_key(&key, &seg);
            if v.is_null() {
                self.delete_subtree(&ck)?;
            } else {
                self.check_slot(p, &key, &seg)?;
                self.replace(&ck, &v)?;
            }
        }
        Ok(())
    }

    /// Remove the subtree at `path`.
    pub fn remove(&mut self, p: &str) -> Result<()> {
        self.set(p, Value::Null)
    }

    fn set_root(&mut self, value: Value) -> Result<()> {
        let children = match value {
            Value::Null => Default::default(),
            Value::Object(o) => o,
            _ => {
                return Err(Error::TypeMismatch {
                    path: String::new(),
                    reason: "the root can only hold an object".into(),
                })
            }
        };
        self.delete_subtree(&[])?;
        for (k, v) in children {
            path::check_key("", &k)?;
            self.write_value(k.as_bytes(), &v)?;
        }
        Ok(())
    }

    /// Make every ancestor of `segs` a container of the kind its child segment needs.
    fn ensure_parents(&mut self, p: &str, segs: &[Segment]) -> Result<()> {
        if let Some(Segment::Index(_)) = segs.first() {
            return Err(Error::TypeMismatch {
                path: p.to_string(),
                reason: "the root is an object, not an array".into(),
            });
        }
        let mut key = Vec::new();
        for i in 0..segs.len() - 1 {
            self.check_slot(p, &key, &segs[i])?;
            path::push_segment(&mut key, &segs[i]);
            let want = match segs[i + 1] {
                Segment::Index(_) => Kind::Array,
                Segment::Key(_) => Kind::Object,
            };
            match tree::kind_at(self, self.root, &key)? {
                Some(k) if k == want => {}
                Some(k @ (Kind::Object | Kind::Array)) => {
                    return Err(Error::TypeMismatch {
                        path: p.to_string(),
                        reason: format!("{} is {k:?}, not {want:?}", path::render(&segs[..=i])),
                    })
                }
                Some(_) => {
                    self.delete_subtree(&key)?;
                    self.put(&key, &[marker(want)])?;
                }
                None => self.put(&key, &[marker(want)])?,
            }
        }
        match segs.last() {
            Some(last) => self.check_slot(p, &key, last),
            None => Ok(()),
        }
    }

    /// Arrays grow one element at a time: a new element `[n]` needs `[n - 1]`, so an array
    /// never has to be rebuilt with a huge gap of nulls.
    fn check_slot(&self, p: &str, parent: &[u8], seg: &Segment) -> Result<()> {
        let Segment::Index(n) = seg else {
            return Ok(());
        };
        if *n == 0 || tree::kind_at(self, self.root, &child_key(parent, seg))?.is_some() {
            return Ok(());
        }
        let prev = child_key(parent, &Segment::Index(n - 1));
        if tree::kind_at(self, self.root, &prev)?.is_none() {
            return Err(Error::TypeMismatch {
                path: p.to_string(),
                reason: format!("array index [{n}] is beyond the end of the array"),
            });
        }
        Ok(())
    }

    fn replace(&mut self, key: &[u8], v: &Value) -> Result<()> {
        let old = tree::subtree_keys(self, self.root, key)?;
        let simple =
            !matches!(v, Value::Object(_) | Value::Array(_)) && value::chunks(v).is_empty();
        if simple && (old.is_empty() || (old.len() == 1 && old[0] == key)) {
            return self.write_value(key, v);
        }
        for k in old {
            self.delete(&k)?;
        }
        self.write_value(key, v)
    }

    fn write_value(&mut self, key: &[u8], v: &Value) -> Result<()> {
        if key.len() > MAX_KEY - 16 {
            return Err(Error::InvalidPath {
                path: String::from_utf8_lossy(key).replace('\0', "/"),
                reason: format!("longer than {} bytes encoded", MAX_KEY - 16),
            });
        }
        match v {
            Value::Null => Ok(()),
            Value::Object(o) => {
                self.put(key, &[T_OBJECT])?;
                for (k, c) in o {
                    path::check_key(k, k)?;
                    self.write_value(&child_key(key, &Segment::Key(k.clone())), c)?;
                }
                Ok(())
            }
            Value::Array(a) => {
                self.put(key, &[T_ARRAY])?;
                for (i, c) in a.iter().enumerate() {
                    self.write_value(&child_key(key, &Segment::Index(i as u64)), c)?;
                }
                Ok(())
            }
            _ => {
                let mut rec = std::mem::take(&mut self.buf);
                value::encode_record(v, &mut rec);
                let r = self.put(key, &rec);
                self.buf = rec;
                r?;
                for (i, chunk) in value::chunks(v).into_iter().enumerate() {
                    let mut ck = key.to_vec();
                    ck.push(SEP);
                    value::chunk_segment(i, &mut ck);
                    let mut rec = Vec::with_capacity(chunk.len() + 1);
                    rec.push(T_CHUNK);
                    rec.extend_from_slice(chunk);
                    self.put(&ck, &rec)?;
                }
                Ok(())
            }
        }
    }

    fn put(&mut self, key: &[u8], rec: &[u8]) -> Result<()> {
        self.record(key, Some(rec));
        self.capture(key, Some(rec))?;
        let (root, new) = btree::put(self, self.root, key, rec)?;
        self.root = root;
        self.records += new as u64;
        Ok(())
    }

    fn record(&mut self, key: &[u8], rec: Option<&[u8]>) {
        if self.log_ok {
            commit::encode_op(&mut self.log, key, rec);
            self.log_ok = self.log.len() <= self.log_room;
        }
    }

    /// Note a record change for realtime events: the record before the transaction's first
    /// touch of `key` costs one lookup.
    fn capture(&mut self, key: &[u8], rec: Option<&[u8]>) -> Result<()> {
        if !self.changes.active() {
            return Ok(());
        }
        let old = match self.changes.seen(key) {
            true => None,
            false => btree::get(self, self.root, key)?.map(<[u8]>::to_vec),
        };
        self.changes.note(key, old, rec);
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.record(key, None);
        self.capture(key, None)?;
        let (root, found) = btree::delete(self, self.root, key)?;
        self.root = root;
        self.records -= found as u64;
        Ok(())
    }

    fn delete_subtree(&mut self, key: &[u8]) -> Result<()> {
        for k in tree::subtree_keys(self, self.root, key)? {
            self.delete(&k)?;
        }
        Ok(())
    }

    /// Give back every page this transaction allocated.
    pub(crate) fn abort(self) {
        for p in self.allocated {
            self.w.space.release(p);
        }
    }

    /// Make the transaction visible in one step (see the protocol in [`crate::commit`]).
    pub(crate) fn commit(self) -> Result<(CommitInfo, Option<Head>)> {
        let fence = self.grant.token.max(self.w.meta.fence);
        if self.allocated.is_empty() && self.retired.is_empty() && !self.force_checkpoint {
            let info = CommitInfo {
                txn: self.w.meta.txn,
                fence,
                changed: Vec::new(),
                records: None,
                head: None,
            };
            return Ok((info, None));
        }
        let w = self.w;
        let mut allocated = self.allocated;
        if !self.spare.is_empty() {
            let spare: std::collections::HashSet<PageId> = self.spare.iter().copied().collect();
            allocated.retain(|p| !spare.contains(p));
            for &p in &self.spare {
                w.space.release(p);
            }
        }
        let c = Changes {
            txn: self.txn,
            root: self.root,
            records: self.records,
            fence,
            allocated,
            retired: self.retired,
            log: if self.log_ok && !self.force_checkpoint {
                Some(self.log)
            } else {
                None
            },
        };
        let head = match commit::commit(w, c) {
            Ok(h) => h,
            Err(e) => {
                w.fail(e.to_string());
                return Err(e);
            }
        };
        let info = CommitInfo {
            txn: self.txn,
            fence,
            changed: self.changed,
            records: self.changes.finish(),
            head: Some((head.root, head.page_count)),
        };
        Ok((info, Some(head)))
    }

    /// Make this commit write a checkpoint even if it changes nothing.
    pub(crate) fn force_checkpoint(&mut self) {
        self.force_checkpoint = true;
    }

    /// Re-apply a redo log (recovery after a crash in `sync` mode).
    pub(crate) fn replay(&mut self, log: &[u8]) -> Result<()> {
        for op in commit::decode_log(log).map_err(|d| self.corrupt(format!("redo log: {d}")))? {
            match op {
                (k, Some(v)) => self.put(&k, &v)?,
                (k, None) => self.delete(&k)?,
            }
        }
        self.force_checkpoint = true;
        Ok(())
    }
}

fn marker(k: Kind) -> u8 {
    if k == Kind::Array {
        T_ARRAY
    } else {
        T_OBJECT
    }
}
