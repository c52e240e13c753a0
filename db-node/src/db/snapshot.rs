//! [`Snapshot`]: a consistent read view of one commit, and what it can read.

use super::*;

/// A consistent, read-only view of one committed transaction.
pub struct Snapshot<'a> {
    pub(super) db: &'a Db,
    pub(super) map: Arc<Map>,
    pub(super) head: Head,
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        let mut s = lock(&self.db.shared);
        if let Some(i) = s.readers.iter().position(|r| r.0 == self.head.txn) {
            s.readers[i].1 -= 1;
            if s.readers[i].1 == 0 {
                s.readers.swap_remove(i);
                if let Some(g) = &self.db.group {
                    let oldest = s.readers.iter().map(|r| r.0).min().unwrap_or(0);
                    g.readers.publish(g.slot, oldest);
                }
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
