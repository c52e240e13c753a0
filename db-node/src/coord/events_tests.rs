//! Unit tests of the event computation: change lists are made by diffing the records of two
//! trees, as a write transaction's capture does.

use super::*;
use crate::changes::{decode, encode_entry};
use std::collections::BTreeMap;

/// The records of a whole tree (the root object), as the write transaction lays them out.
fn records(tree: &serde_json::Value) -> BTreeMap<Vec<u8>, Vec<u8>> {
    fn write(out: &mut BTreeMap<Vec<u8>, Vec<u8>>, key: Vec<u8>, v: &Value) {
        let mut rec = Vec::new();
        value::encode_record(v, &mut rec);
        out.insert(key.clone(), rec);
        match v {
            Value::Object(o) => {
                for (k, c) in o {
                    let mut ck = key.clone();
                    path::push_segment(&mut ck, &Segment::Key(k.clone()));
                    write(out, ck, c);
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    let mut ck = key.clone();
                    path::push_segment(&mut ck, &Segment::Index(i as u64));
                    write(out, ck, c);
                }
            }
            _ => {
                for (i, chunk) in value::chunks(v).into_iter().enumerate() {
                    let mut ck = key.clone();
                    ck.push(SEP);
                    value::chunk_segment(i, &mut ck);
                    let mut r = vec![T_CHUNK];
                    r.extend_from_slice(chunk);
                    out.insert(ck, r);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Value::Object(o) = Value::from_json(tree) {
        for (k, v) in &o {
            write(&mut out, k.as_bytes().to_vec(), v);
        }
    }
    out
}

/// The encoded change list between two trees.
fn diff(old: &serde_json::Value, new: &serde_json::Value) -> Vec<u8> {
    let (a, b) = (records(old), records(new));
    let mut keys: Vec<&Vec<u8>> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for k in keys {
        let (o, n) = (a.get(k), b.get(k));
        if o != n {
            encode_entry(&mut out, k, o.map(Vec::as_slice), n.map(Vec::as_slice));
        }
    }
    out
}

/// Reads from the new tree, counting reads.
struct Tree(serde_json::Value, usize);

impl Source for Tree {
    fn read(&mut self, p: &str) -> crate::Result<Value> {
        self.1 += 1;
        let mut cur = &self.0;
        for seg in path::parse(p)? {
            cur = match seg {
                Segment::Key(k) => &cur[k.as_str()],
                Segment::Index(i) => &cur[i as usize],
            };
        }
        Ok(Value::from_json(cur))
    }
}

type Ev = (String, Option<String>, serde_json::Value, bool);

/// (path, child, value JSON, reread) of the events, and the number of file reads.
fn events(
    pattern: &str,
    kind: &str,
    old: serde_json::Value,
    new: serde_json::Value,
) -> (Vec<Ev>, usize) {
    let enc = diff(&old, &new);
    let changes = decode(&enc).expect("decodes");
    let mut src = Tree(new, 0);
    let p = Pattern::parse(pattern).expect("pattern");
    let k: EventKind = kind.parse().expect("kind");
    let got = compute(&p, k, &changes, &mut src).expect("computes");
    assert!(got.iter().all(|e| e.kind == k));
    let evs = got
        .into_iter()
        .map(|e| (e.path, e.child, e.value.to_json(), e.reread))
        .collect();
    (evs, src.1)
}

fn ev(path: &str, child: Option<&str>, v: serde_json::Value, reread: bool) -> Ev {
    (path.to_string(), child.map(str::to_string), v, reread)
}

use serde_json::json;

#[test]
fn kinds_and_patterns_parse() {
    for k in ["value", "child_added", "child_changed", "child_removed"] {
        assert_eq!(k.parse::<EventKind>().expect("kind").as_str(), k);
    }
    assert!("child_moved".parse::<EventKind>().is_err());
    let p = Pattern::parse("users/*/items[2]").expect("pattern");
    let segs = path::parse("users/bob/items[2]/x").expect("path");
    assert!(p.matches_prefix(&segs));
    assert!(!p.matches_prefix(&segs[..2]));
    assert!(!p.matches_prefix(&path::parse("posts/bob/items[2]").expect("path")));
    assert!(Pattern::parse("a/b\u{1}").is_err());
}

#[test]
fn value_of_a_new_scalar_or_subtree_comes_from_the_commit() {
    let (evs, reads) = events(
        "users/*",
        "value",
        json!({"users": {"alice": 1}}),
        json!({"users": {"alice": 1, "bob": {"age": 2, "tags": ["a", "b"]}}, "posts": {"p": 1}}),
    );
    assert_eq!(
        evs,
        vec![ev(
            "users/bob",
            None,
            json!({"age": 2, "tags": ["a", "b"]}),
            false
        )]
    );
    assert_eq!(reads, 0);
    // a scalar replaced by another scalar
    let (evs, reads) = events(
        "users/*",
        "value",
        json!({"users": {"alice": 1}}),
        json!({"users": {"alice": "x"}}),
    );
    assert_eq!(evs, vec![ev("users/alice", None, json!("x"), false)]);
    assert_eq!(reads, 0);
}

#[test]
fn value_inside_an_existing_object_is_read_and_removal_is_null() {
    let old = json!({"users": {"alice": {"age": 1, "name": "A"}, "bob": 2}});
    let new = json!({"users": {"alice": {"age": 2, "name": "A"}}});
    let (evs, reads) = events("users/*", "value", old, new);
    assert_eq!(
        evs,
        vec![
            ev("users/alice", None, json!({"age": 2, "name": "A"}), true),
            ev("users/bob", None, json!(null), false),
        ]
    );
    assert_eq!(reads, 1);
}

#[test]
fn a_change_above_the_pattern_reaches_every_path_below() {
    let old = json!({"users": {"a": 1, "b": 2}});
    let new = json!({"users": {"a": 1, "c": 3}});
    let (evs, _) = events("users/*", "value", old.clone(), new.clone());
    assert_eq!(
        evs,
        vec![
            ev("users/b", None, json!(null), false),
            ev("users/c", None, json!(3), false)
        ]
    );
    // the whole parent removed
    let (evs, _) = events("users/*", "child_removed", old.clone(), json!({}));
    assert!(evs.is_empty(), "scalars have no children: {evs:?}");
    let (evs, _) = events("users/*", "value", old, json!({}));
    assert_eq!(
        evs,
        vec![
            ev("users/a", None, json!(null), false),
            ev("users/b", None, json!(null), false)
        ]
    );
}

#[test]
fn child_events_for_set_update_and_remove() {
    let old = json!({"users": {"alice": {"age": 1}, "bob": 2, "dan": {"x": 1, "y": 1}}});
    let new = json!({"users": {"bob": 3, "carol": {"x": [1, 2]}, "dan": {"x": 1, "y": 2}}});
    let added = events("users", "child_added", old.clone(), new.clone());
    assert_eq!(
        added,
        (
            vec![ev("users", Some("carol"), json!({"x": [1, 2]}), false)],
            0
        )
    );
    let removed = events("users", "child_removed", old.clone(), new.clone());
    assert_eq!(
        removed,
        (
            vec![ev("users", Some("alice"), json!({"age": 1}), false)],
            0
        )
    );
    let (changed, reads) = events("users", "child_changed", old, new);
    assert_eq!(
        changed,
        vec![
            ev("users", Some("bob"), json!(3), false),
            ev("users", Some("dan"), json!({"x": 1, "y": 2}), true)
        ]
    );
    assert_eq!(reads, 1);
}

#[test]
fn wildcards_arrays_and_the_root() {
    let old = json!({"lists": {"a": [1], "b": [5, 6]}});
    let new = json!({"lists": {"a": [1, {"k": true}], "b": [5]}});
    let (evs, _) = events("lists/*", "child_added", old.clone(), new.clone());
    assert_eq!(
        evs,
        vec![ev("lists/a", Some("[1]"), json!({"k": true}), false)]
    );
    let (evs, _) = events("lists/*", "child_removed", old.clone(), new.clone());
    assert_eq!(evs, vec![ev("lists/b", Some("[1]"), json!(6), false)]);
    let (evs, _) = events("*/b[0]", "value", old, new.clone());
    assert!(evs.is_empty(), "b[0] did not change: {evs:?}");
    let (evs, _) = events("", "child_added", json!({}), new);
    assert_eq!(
        evs,
        vec![ev(
            "",
            Some("lists"),
            json!({"a": [1, {"k": true}], "b": [5]}),
            false
        )]
    );
}

#[test]
fn long_values_are_rebuilt_from_their_chunks_or_read() {
    let long = "x".repeat(2500);
    let longer = format!("{long}y");
    let (evs, reads) = events("s", "value", json!({}), json!({"s": long}));
    assert_eq!((evs, reads), (vec![ev("s", None, json!(long), false)], 0));
    let (evs, reads) = events("s", "value", json!({"s": long}), json!({"s": longer}));
    assert_eq!((evs, reads), (vec![ev("s", None, json!(longer), true)], 1));
    let (evs, _) = events("", "child_removed", json!({"s": long}), json!({}));
    assert_eq!(evs, vec![ev("", Some("s"), json!(long), false)]);
}

#[test]
fn nothing_changed_means_no_events() {
    let t = json!({"users": {"a": {"b": 1}}});
    for k in ["value", "child_added", "child_changed", "child_removed"] {
        assert_eq!(events("users/*", k, t.clone(), t.clone()), (vec![], 0));
    }
}

#[test]
fn an_object_replaced_by_a_scalar_needs_no_read() {
    let old = json!({"users": {"a": {"x": 1, "y": 2}}});
    let new = json!({"users": {"a": 7}});
    let (evs, reads) = events("users/*", "value", old.clone(), new.clone());
    assert_eq!(
        (evs, reads),
        (vec![ev("users/a", None, json!(7), false)], 0)
    );
    let (evs, reads) = events("users", "child_changed", old, new);
    assert_eq!(
        (evs, reads),
        (vec![ev("users", Some("a"), json!(7), false)], 0)
    );
}
