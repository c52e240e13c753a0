//! Realtime events computed from one commit's record changes (see [`crate::changes`]).
//!
//! A subscription is a pattern (`users/*`: `*` stands for any one segment) and a kind. For
//! every concrete path P the pattern matches and whose subtree the commit changed:
//!
//! * `value`: the new value of P (null when removed);
//! * `child_added` / `child_removed`: each child of P that appeared / disappeared, with its
//!   new / old value;
//! * `child_changed`: each child of P that existed before and after and whose subtree changed,
//!   with its new value.
//!
//! A change above P (`set("users", {…})` for `users/*`) changes the records of every P below
//! it, so it is found like any other. Values come from the commit's own records whenever
//! they hold the whole value: a removed or added node (all its records are in the list), a
//! node that was a scalar before (it had no descendants) or is an inline scalar now. Otherwise — a container that
//! existed before and after, or a long (chunked) value that was rewritten — the new value is
//! read from the file through a [`Source`], and is then the state *as of this commit or
//! later* (`reread`).

use crate::changes::Change;
use crate::path::{self, Segment, CHUNK_MARK, SEP};
use crate::value::{self, Value, T_ARRAY, T_CHUNK, T_CHUNKED, T_OBJECT};

/// What a subscription listens for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Value,
    ChildAdded,
    ChildChanged,
    ChildRemoved,
}

/// An unknown event kind or a bad pattern.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventsError {
    #[error("unknown event kind {0:?} (value, child_added, child_changed, child_removed)")]
    Kind(String),
    #[error("bad pattern {pattern:?}: {reason}")]
    Pattern { pattern: String, reason: String },
    #[error("undecodable record change at key {0:?}")]
    Record(String),
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Value => "value",
            EventKind::ChildAdded => "child_added",
            EventKind::ChildChanged => "child_changed",
            EventKind::ChildRemoved => "child_removed",
        }
    }
}

impl std::str::FromStr for EventKind {
    type Err = EventsError;
    fn from_str(s: &str) -> Result<Self, EventsError> {
        Ok(match s {
            "value" => EventKind::Value,
            "child_added" => EventKind::ChildAdded,
            "child_changed" => EventKind::ChildChanged,
            "child_removed" => EventKind::ChildRemoved,
            other => return Err(EventsError::Kind(other.to_string())),
        })
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A path pattern: segments, `*` for any one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segs: Vec<Option<Segment>>,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, EventsError> {
        let mut segs = Vec::new();
        for part in text.split('/').filter(|p| !p.is_empty()) {
            if part == "*" {
                segs.push(None);
                continue;
            }
            let parsed = path::parse(part).map_err(|e| EventsError::Pattern {
                pattern: text.to_string(),
                reason: e.to_string(),
            })?;
            segs.extend(parsed.into_iter().map(Some));
        }
        Ok(Pattern {
            text: text.to_string(),
            segs,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a change of the subtree at `segs` can concern this pattern: one of the two is
    /// a prefix of the other (`*` matching any one segment).
    pub fn overlaps(&self, segs: &[Segment]) -> bool {
        self.segs
            .iter()
            .zip(segs)
            .all(|(p, s)| p.as_ref().is_none_or(|p| p == s))
    }

    /// Whether the first segments of `segs` are a path this pattern matches.
    fn matches_prefix(&self, segs: &[Segment]) -> bool {
        segs.len() >= self.segs.len()
            && self
                .segs
                .iter()
                .zip(segs)
                .all(|(p, s)| p.as_ref().is_none_or(|p| p == s))
    }
}

/// One event of one commit (numbered later, per subscriber).
#[derive(Clone, Debug, PartialEq)]
pub struct Computed {
    pub kind: EventKind,
    /// The concrete path P the pattern matched.
    pub path: String,
    /// The child of P (`child_*` kinds).
    pub child: Option<String>,
    pub value: Value,
    /// The value was read from the file after the commit (state as of it or later), not
    /// rebuilt from the commit's own records.
    pub reread: bool,
}

/// Where values come from that the commit's records do not hold (the newest state).
pub trait Source {
    fn read(&mut self, path: &str) -> crate::Result<Value>;
    /// Whether reads show the state of the commit itself (else: of it or a later one, and
    /// the values read are marked `reread`).
    fn exact(&self) -> bool {
        false
    }
}

/// A changed record with its key decoded. `chunk`: a hidden chunk record of the long value at
/// `segs`.
struct Rec<'a> {
    segs: Vec<Segment>,
    chunk: bool,
    old: Option<&'a [u8]>,
    new: Option<&'a [u8]>,
}

fn decode_rec<'a>(c: &Change<'a>) -> Result<Rec<'a>, EventsError> {
    let bad = || EventsError::Record(String::from_utf8_lossy(c.key).replace('\0', "/"));
    let mut segs = Vec::new();
    let mut chunk = false;
    if !c.key.is_empty() {
        for part in c.key.split(|&b| b == SEP) {
            if chunk {
                return Err(bad());
            }
            if part.first() == Some(&CHUNK_MARK) {
                chunk = true;
                continue;
            }
            segs.push(path::decode_segment(part).ok_or_else(bad)?);
        }
    }
    Ok(Rec {
        segs,
        chunk,
        old: c.old,
        new: c.new,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Old,
    New,
}

impl Rec<'_> {
    fn side(&self, s: Side) -> Option<&[u8]> {
        match s {
            Side::Old => self.old,
            Side::New => self.new,
        }
    }
}

/// The events `kind` of `pattern` raised by a commit whose record changes are `changes`.
pub fn compute(
    pattern: &Pattern,
    kind: EventKind,
    changes: &[Change<'_>],
    src: &mut impl Source,
) -> Result<Vec<Computed>, EventsError> {
    let n = pattern.segs.len();
    let recs = changes
        .iter()
        .map(decode_rec)
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    let mut i = 0;
    while i < recs.len() {
        if !pattern.matches_prefix(&recs[i].segs) {
            i += 1;
            continue;
        }
        // the records of P's subtree are contiguous in key order
        let p = &recs[i].segs[..n];
        let end = i + recs[i..]
            .iter()
            .take_while(|r| r.segs.len() >= n && &r.segs[..n] == p)
            .count();
        p_events(kind, p, &recs[i..end], src, &mut out)?;
        i = end;
    }
    Ok(out)
}

fn p_events(
    kind: EventKind,
    p: &[Segment],
    recs: &[Rec<'_>],
    src: &mut impl Source,
    out: &mut Vec<Computed>,
) -> Result<(), EventsError> {
    let n = p.len();
    let path = path::render(p);
    if kind == EventKind::Value {
        let (value, reread) = new_value(&path, n, recs, src)?;
        out.push(Computed {
            kind,
            path,
            child: None,
            value,
            reread,
        });
        return Ok(());
    }
    let mut i = 0;
    while i < recs.len() {
        if recs[i].segs.len() == n {
            i += 1; // P's own record (or its chunks): not a child
            continue;
        }
        let c = &recs[i].segs[..=n];
        let end = i + recs[i..]
            .iter()
            .take_while(|r| r.segs.len() > n && &r.segs[..=n] == c)
            .count();
        let group = &recs[i..end];
        let own = group.first().filter(|r| r.segs.len() == n + 1 && !r.chunk);
        let found = match own.map(|r| (r.old.is_some(), r.new.is_some())) {
            Some((false, true)) => EventKind::ChildAdded,
            Some((true, false)) => EventKind::ChildRemoved,
            _ => EventKind::ChildChanged,
        };
        if found == kind {
            let child_path = path::render(c);
            let (value, reread) = match kind {
                EventKind::ChildRemoved => (build(n + 1, group, Side::Old), false),
                _ => new_value(&child_path, n + 1, group, src)?,
            };
            out.push(Computed {
                kind,
                path: path.clone(),
                child: Some(c[n].to_string()),
                value,
                reread,
            });
        }
        i = end;
    }
    Ok(())
}

/// The new value of the node X whose changed records (X's own first, if it changed) are
/// `recs`, `depth` = X's number of segments.
fn new_value(
    path: &str,
    depth: usize,
    recs: &[Rec<'_>],
    src: &mut impl Source,
) -> Result<(Value, bool), EventsError> {
    let own = recs
        .first()
        .filter(|r| r.segs.len() == depth && !r.chunk && depth > 0);
    if let Some(own) = own {
        // X had no descendants before (absent, or an inline scalar): every record of its
        // new subtree is in the list
        let has_descendants = |r: &[u8]| {
            matches!(
                r.first(),
                Some(&T_OBJECT) | Some(&T_ARRAY) | Some(&T_CHUNKED)
            )
        };
        let alone_before = own.old.is_none_or(|o| !has_descendants(o));
        // or X is now absent or an inline scalar: its record is all of it
        let alone_now = own.new.is_none_or(|n| !has_descendants(n));
        if alone_now || alone_before {
            return Ok((build(depth, recs, Side::New), false));
        }
    }
    match src.read(path) {
        Ok(v) => Ok((v, !src.exact())),
        Err(e) => Err(EventsError::Record(format!("{path}: {e}"))),
    }
}

/// The value of node X on one side of the commit, from records that hold all of it (X's own
/// record first). Damaged or incomplete records give what could be assembled.
fn build(depth: usize, recs: &[Rec<'_>], side: Side) -> Value {
    let mut root = Value::Null;
    let mut i = 0;
    while i < recs.len() {
        let r = &recs[i];
        i += 1;
        let Some(rec) = r.side(side) else { continue };
        if r.chunk {
            continue; // consumed with its head
        }
        let v = match rec.first() {
            Some(&T_OBJECT) => Value::Object(Default::default()),
            Some(&T_ARRAY) => Value::Array(Vec::new()),
            Some(&T_CHUNKED) => {
                let mut bytes = Vec::new();
                while let Some(c) = recs.get(i).filter(|c| c.chunk && c.segs == r.segs) {
                    if let Some(b) = c.side(side).filter(|b| b.first() == Some(&T_CHUNK)) {
                        bytes.extend_from_slice(&b[1..]);
                    }
                    i += 1;
                }
                match value::chunked_head(rec) {
                    Some((tag, len)) if len == bytes.len() as u64 => {
                        value::from_chunks(tag, bytes).unwrap_or(Value::Null)
                    }
                    _ => Value::Null,
                }
            }
            _ => value::decode_scalar(rec).unwrap_or(Value::Null),
        };
        let rel = &r.segs[depth.min(r.segs.len())..];
        if rel.is_empty() {
            root = v;
        } else {
            insert(&mut root, rel, v);
        }
    }
    root
}

fn insert(root: &mut Value, rel: &[Segment], v: Value) {
    let Some((last, parents)) = rel.split_last() else {
        return;
    };
    let mut cur = root;
    for s in parents {
        let next = match (cur, s) {
            (Value::Object(o), Segment::Key(k)) => o.get_mut(k),
            (Value::Array(a), Segment::Index(i)) => a.get_mut(*i as usize),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return, // an orphan on this side: skipped, as readers do
        }
    }
    match (cur, last) {
        (Value::Object(o), Segment::Key(k)) => {
            o.insert(k.clone(), v);
        }
        (Value::Array(a), Segment::Index(i)) => {
            let i = *i as usize;
            if i <= a.len() + 1_000_000 {
                if i >= a.len() {
                    a.resize(i + 1, Value::Null);
                }
                a[i] = v;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
