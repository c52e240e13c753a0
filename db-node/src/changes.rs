//! Record-level changes of one commit, captured by the write transaction so that other
//! processes can raise realtime events (`value`, `child_added`, …) without reading old state
//! that the commit has already replaced.
//!
//! A write transaction of a coordinated group notes, for every key it puts or deletes, the
//! record it found before its first touch (one extra B-tree lookup) and the record it leaves.
//! At commit the list keeps the keys whose record really changed, in key order, encoded as
//!
//! ```text
//! entry = klen u16 | key | olen u16 | old record | nlen u16 | new record
//! ```
//!
//! (little endian; a length of 0 means "absent": records are never empty). The list is bounded
//! by [`BUDGET`] bytes; a commit that changes more has no list at all (`None`), and subscribers
//! must treat its events as missed (see `docs/coordination.md`, *Realtime events*).

use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest record-change list carried by one commit (bytes, before any transport encoding).
pub const BUDGET: usize = 256 * 1024;

/// One changed record: its key and its record before and after the commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change<'a> {
    pub key: &'a [u8],
    pub old: Option<&'a [u8]>,
    pub new: Option<&'a [u8]>,
}

/// A damaged change list.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("record change list damaged at byte {0}")]
pub struct ChangesError(pub usize);

/// A key's record before the transaction's first touch and now (None: absent).
type Touched = (Option<Vec<u8>>, Option<Vec<u8>>);

/// What a write transaction collects (see the module documentation).
#[derive(Default)]
pub(crate) struct Capture {
    on: bool,
    over: bool,
    bytes: usize,
    map: BTreeMap<Vec<u8>, Touched>,
}

impl Capture {
    pub fn new(on: bool) -> Capture {
        Capture {
            on,
            ..Capture::default()
        }
    }

    /// Whether changes are still being collected.
    pub fn active(&self) -> bool {
        self.on && !self.over
    }

    /// Whether `key` was touched before in this transaction (its old record is known).
    pub fn seen(&self, key: &[u8]) -> bool {
        self.map.contains_key(key)
    }

    /// Note that `key` now holds `new` (None: deleted); `old` is its record before the
    /// transaction and is only used on the first touch.
    pub fn note(&mut self, key: &[u8], old: Option<Vec<u8>>, new: Option<&[u8]>) {
        if !self.active() {
            return;
        }
        let new_len = new.map_or(0, <[u8]>::len);
        match self.map.get_mut(key) {
            Some(e) => {
                e.1 = new.map(<[u8]>::to_vec);
                self.bytes += new_len;
            }
            None => {
                self.bytes += 6 + key.len() + old.as_ref().map_or(0, Vec::len) + new_len;
                self.map
                    .insert(key.to_vec(), (old, new.map(<[u8]>::to_vec)));
            }
        }
        if self.bytes > BUDGET {
            self.over = true;
            self.map.clear();
        }
    }

    /// The encoded list of real changes; None when capture was off or over the budget.
    pub fn finish(self) -> Option<Arc<Vec<u8>>> {
        if !self.active() {
            return None;
        }
        let mut out = Vec::with_capacity(self.bytes);
        for (k, (old, new)) in &self.map {
            if old != new {
                encode_entry(&mut out, k, old.as_deref(), new.as_deref());
            }
        }
        Some(Arc::new(out))
    }
}

fn put_part(out: &mut Vec<u8>, b: Option<&[u8]>) {
    let b = b.unwrap_or_default();
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

/// Append one entry (keys ≤ 512 bytes and records ≤ 1024 bytes always fit a u16 length).
pub fn encode_entry(out: &mut Vec<u8>, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) {
    put_part(out, Some(key));
    put_part(out, old);
    put_part(out, new);
}

fn part<'a>(b: &'a [u8], at: &mut usize) -> Result<&'a [u8], ChangesError> {
    let len = b
        .get(*at..*at + 2)
        .map(|l| u16::from_le_bytes([l[0], l[1]]) as usize)
        .ok_or(ChangesError(*at))?;
    let body = b.get(*at + 2..*at + 2 + len).ok_or(ChangesError(*at))?;
    *at += 2 + len;
    Ok(body)
}

/// Decode an encoded change list.
pub fn decode(b: &[u8]) -> Result<Vec<Change<'_>>, ChangesError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let key = part(b, &mut at)?;
        let old = part(b, &mut at)?;
        let new = part(b, &mut at)?;
        out.push(Change {
            key,
            old: (!old.is_empty()).then_some(old),
            new: (!new.is_empty()).then_some(new),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_changes_in_key_order_without_no_ops() {
        let mut c = Capture::new(true);
        c.note(b"b", Some(vec![5, 1]), Some(&[5, 2]));
        c.note(b"a", None, Some(&[7, b'x']));
        c.note(b"c", Some(vec![3]), None);
        c.note(b"c", None, Some(&[3])); // deleted and put back: no change
        c.note(b"b", None, Some(&[5, 3])); // second touch: the first old record stays
        let enc = c.finish().expect("complete");
        let got = decode(&enc).expect("decodes");
        assert_eq!(
            got,
            vec![
                Change {
                    key: b"a",
                    old: None,
                    new: Some(&[7, b'x'])
                },
                Change {
                    key: b"b",
                    old: Some(&[5, 1]),
                    new: Some(&[5, 3])
                },
            ]
        );
        assert!(decode(&enc[..enc.len() - 1]).is_err());
    }

    #[test]
    fn over_the_budget_or_off_there_is_no_list() {
        let mut c = Capture::new(true);
        let big = vec![7u8; 1000];
        for i in 0..300u32 {
            c.note(&i.to_be_bytes(), None, Some(&big));
        }
        assert!(!c.active());
        assert!(c.finish().is_none());
        let mut off = Capture::new(false);
        off.note(b"a", None, Some(&[3]));
        assert!(off.finish().is_none());
    }
}
