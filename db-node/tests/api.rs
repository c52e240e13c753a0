//! The JSON tree API on real files: values round-trip, pagination, transactions, batches,
//! reopen, big trees (splits and merges), long values, space reuse, snapshots.

use db_node::{Db, Durability, Kind, Options, Segment, Value};
use serde_json::json;

fn opts() -> Options {
    Options {
        durability: Durability::NoSync,
        ..Options::default()
    }
}

fn tmp() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "dbnode-api-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn set_get_update_remove_roundtrip() {
    let dir = tmp();
    let db = Db::open(&dir, opts()).unwrap();
    db.set(
        "users/alice",
        json!({"age": 31, "name": "Alice", "tags": ["a", "b"], "ok": true, "h": 1.5}),
    )
    .unwrap();
    assert_eq!(db.get("users/alice/age").unwrap(), Value::Int(31));
    assert_eq!(db.get("users/alice/tags[1]").unwrap(), Value::from("b"));
    assert_eq!(
        db.get("users").unwrap().to_json(),
        json!({"alice": {"age": 31, "name": "Alice", "tags": ["a", "b"], "ok": true, "h": 1.5}})
    );
    db.update(
        "users/alice",
        json!({"age": 32, "name": null, "city": "Oslo"}),
    )
    .unwrap();
    assert_eq!(
        db.get("users/alice").unwrap().to_json(),
        json!({"age": 32, "tags": ["a", "b"], "ok": true, "h": 1.5, "city": "Oslo"})
    );
    assert!(db.exists("users/alice/city").unwrap());
    db.remove("users/alice/tags").unwrap();
    assert!(!db.exists("users/alice/tags").unwrap());
    assert_eq!(db.get("nothing/here").unwrap(), Value::Null);
    // scalar replaced by an object when writing below it
    db.set("users/alice/age/years", 3).unwrap();
    assert_eq!(
        db.get("users/alice/age").unwrap().to_json(),
        json!({"years": 3})
    );
    // an array can not be addressed by key
    assert!(db.set("users/alice/list", json!([1])).is_ok());
    assert!(db.set("users/alice/list/x", 1).is_err());
    // arrays grow at their end; a far index is refused instead of creating a huge gap
    db.set("users/alice/list[1]", 2).unwrap();
    assert!(db.set("users/alice/list[1000000000]", 1).is_err());
    assert!(db.set("users/alice/list[5]/deep", 1).is_err());
    db.update("users/alice/list", json!({"2": 3})).unwrap();
    assert_eq!(
        db.get("users/alice/list").unwrap().to_json(),
        json!([1, 2, 3])
    );
    assert_eq!(
        db.get_children("users/alice", &["city", "ok", "zz"])
            .unwrap()
            .to_json(),
        json!({"city": "Oslo", "ok": true})
    );
    let big = "x".repeat(10_000);
    db.set("blob/s", big.as_str()).unwrap();
    db.set("blob/b", Value::Binary(vec![7u8; 5000])).unwrap();
    drop(db);
    let db = Db::open(&dir, opts()).unwrap();
    assert_eq!(db.get("blob/s").unwrap(), Value::String(big));
    assert_eq!(db.get("blob/b").unwrap(), Value::Binary(vec![7u8; 5000]));
    assert_eq!(db.get("users/alice/city").unwrap(), Value::from("Oslo"));
    db.set("blob/s", "short").unwrap();
    assert_eq!(db.get("blob").unwrap().to_json()["s"], json!("short"));
    let r = db.check();
    assert!(r.ok(), "{:?}", r.problems);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn children_paginate_in_key_order() {
    let dir = tmp();
    let db = Db::open(&dir, opts()).unwrap();
    db.write(|t| {
        for i in 0..250 {
            t.set(
                &format!("list/k{i:04}"),
                json!({"n": i, "sub": {"deep": [1, 2]}}).into(),
            )?;
        }
        t.set("arr", json!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]).into())
    })
    .unwrap();
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = db.children("list", after.as_deref(), 40).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.iter().all(|c| c.kind == Kind::Object));
        after = Some(page.last().unwrap().segment.to_string());
        all.extend(page.into_iter().map(|c| c.segment.to_string()));
    }
    let want: Vec<String> = (0..250).map(|i| format!("k{i:04}")).collect();
    assert_eq!(all, want);
    let idx: Vec<Segment> = db
        .children("arr", None, 100)
        .unwrap()
        .into_iter()
        .map(|c| c.segment)
        .collect();
    assert_eq!(idx, (0..12).map(Segment::Index).collect::<Vec<_>>());
    assert_eq!(db.children("", None, 10).unwrap().len(), 2);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn transactions_batches_and_snapshots() {
    let dir = tmp();
    let db = Db::open(&dir, opts()).unwrap();
    let rx = db.subscribe();
    for _ in 0..100 {
        db.transaction("counter", |v| match v {
            Value::Int(i) => Some(Value::Int(i + 1)),
            _ => Some(Value::Int(1)),
        })
        .unwrap();
    }
    assert_eq!(db.get("counter").unwrap(), Value::Int(100));
    assert!(db.transaction("counter", |_| None).unwrap().is_none());
    let snap = db.snapshot().unwrap();
    let (_, info) = db
        .write(|t| {
            t.set("a", 1.into())?;
            t.set("b", 2.into())?;
            assert_eq!(t.get("a")?, Value::Int(1));
            Ok(())
        })
        .unwrap();
    assert_eq!(info.changed, vec!["a".to_string(), "b".to_string()]);
    // a failed batch leaves nothing behind
    let r = db.write(|t| {
        t.set("c", 3.into())?;
        t.set("bad\u{1}key", 1.into())
    });
    assert!(r.is_err());
    assert!(!db.exists("c").unwrap());
    // the old snapshot still sees the old state
    assert_eq!(snap.get("a").unwrap(), Value::Null);
    assert_eq!(snap.get("counter").unwrap(), Value::Int(100));
    drop(snap);
    let infos: Vec<_> = rx.try_iter().collect();
    assert_eq!(infos.len(), 101);
    assert!(infos.windows(2).all(|w| w[0].txn < w[1].txn));
    // writes outside the granted subtree are refused
    assert!(db.write_paths(&["x"], |t| t.set("y", 1.into())).is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn big_tree_split_merge_and_space_reuse() {
    let dir = tmp();
    let db = Db::open(&dir, opts()).unwrap();
    db.write(|t| {
        for i in 0..20_000 {
            t.set(
                &format!("k/{i:06}"),
                Value::String(format!("value number {i}")),
            )?;
        }
        Ok(())
    })
    .unwrap();
    let r = db.check();
    assert!(r.ok(), "{:?}", &r.problems[..r.problems.len().min(5)]);
    db.write(|t| {
        for i in (0..20_000).filter(|i| i % 3 != 0) {
            t.remove(&format!("k/{i:06}"))?;
        }
        Ok(())
    })
    .unwrap();
    let r = db.check();
    assert!(r.ok(), "{:?}", &r.problems[..r.problems.len().min(5)]);
    assert_eq!(db.children("k", None, 100_000).unwrap().len(), 6667);
    assert_eq!(db.get("k/000300").unwrap(), Value::from("value number 300"));
    // churn: constant live data, the file must stop growing
    for round in 0..20_000 {
        db.set(
            &format!("churn/{}", round % 100),
            Value::String("y".repeat(100)),
        )
        .unwrap();
    }
    let s = db.stats();
    let before = s.file_bytes;
    for round in 0..20_000 {
        db.set(&format!("churn/{}", round % 100), Value::Int(round))
            .unwrap();
    }
    assert_eq!(db.stats().file_bytes, before, "file grew during churn");
    db.remove("k").unwrap();
    let r = db.check();
    assert!(r.ok(), "{:?}", &r.problems[..r.problems.len().min(5)]);
    drop(db);
    let db = Db::open(&dir, opts()).unwrap();
    assert_eq!(db.get("churn/7").unwrap(), Value::Int(19_907));
    assert!(db.check().ok());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sync_commits_are_logged_and_replayed() {
    let dir = tmp();
    let db = Db::open(&dir, Options::default()).unwrap();
    for i in 0..30 {
        db.set(&format!("log/k{i}"), i).unwrap();
    }
    assert!(
        db.stats().redo_bytes > 0,
        "small sync commits should be logged"
    );
    db.close_without_checkpoint();
    let db = Db::open(&dir, Options::default()).unwrap();
    assert_eq!(db.stats().redo_bytes, 0, "the open replays and checkpoints");
    for i in 0..30 {
        assert_eq!(db.get(&format!("log/k{i}")).unwrap(), Value::Int(i));
    }
    // many commits: the log fills up and checkpoints happen by themselves
    for i in 0..500 {
        db.set(&format!("log/m{i}"), Value::String("v".repeat(50)))
            .unwrap();
    }
    assert!(db.stats().redo_bytes < 4096);
    db.set("big", json!({"a": "x".repeat(5000)})).unwrap();
    assert_eq!(
        db.stats().redo_bytes,
        0,
        "a commit too big to log checkpoints"
    );
    let r = db.check();
    assert!(r.ok(), "{:?}", r.problems);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn readers_see_whole_commits_while_pages_are_reused() {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<Db>();
    let dir = tmp();
    let db = Db::open(&dir, opts()).unwrap();
    db.set(
        "pair",
        json!({"a": 0, "b": 0, "pad": {"x": "y".repeat(300)}}),
    )
    .unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut seen = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let snap = db.snapshot().unwrap();
                    let a = snap.get("pair/a").unwrap();
                    // hold the snapshot across several commits
                    std::thread::yield_now();
                    let b = snap.get("pair/b").unwrap();
                    let (Value::Int(a), Value::Int(b)) = (a, b) else {
                        panic!("bad values")
                    };
                    assert_eq!(a + b, 0, "a torn commit was visible");
                    assert!(a >= seen);
                    seen = a;
                    let whole = snap.get("pair").unwrap().to_json();
                    assert_eq!(
                        whole["a"].as_i64().unwrap() + whole["b"].as_i64().unwrap(),
                        0
                    );
                }
            });
        }
        for i in 1..3000i64 {
            db.write(|t| {
                t.set("pair/a", Value::Int(i))?;
                t.set("pair/b", Value::Int(-i))?;
                t.set(&format!("churn/{}", i % 50), Value::String("z".repeat(200)))
            })
            .unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let r = db.check();
    assert!(r.ok(), "{:?}", r.problems);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn concurrent_transactions_from_threads_lose_nothing() {
    let dir = tmp();
    let db = Db::open(&dir, opts()).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..500 {
                    db.transaction("counter", |v| match v {
                        Value::Int(i) => Some(Value::Int(i + 1)),
                        _ => Some(Value::Int(1)),
                    })
                    .unwrap();
                }
            });
        }
    });
    assert_eq!(db.get("counter").unwrap(), Value::Int(2000));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_commit_under_a_lost_grant_is_refused() {
    use db_node::{Error, Grant, LockProvider};
    use std::sync::atomic::{AtomicBool, Ordering};
    struct Flaky(AtomicBool);
    impl LockProvider for Flaky {
        fn acquire(&self, paths: &[Vec<Segment>], floor: u64) -> db_node::Result<Grant> {
            Ok(Grant {
                paths: paths.to_vec(),
                token: floor + 10,
            })
        }
        fn release(&self, _: &Grant) {}
        fn validate(&self, g: &Grant) -> db_node::Result<()> {
            if self.0.load(Ordering::Relaxed) {
                Err(Error::Fenced(format!("token {} superseded", g.token)))
            } else {
                Ok(())
            }
        }
    }
    let dir = tmp();
    let locks = std::sync::Arc::new(Flaky(AtomicBool::new(false)));
    let db = Db::open(
        &dir,
        Options {
            durability: Durability::NoSync,
            locks: Some(locks.clone()),
            ..Options::default()
        },
    )
    .unwrap();
    let info = db.set("a", 1).unwrap();
    assert_eq!(info.fence, 10);
    locks.0.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(db.set("a", 2), Err(Error::Fenced(_))));
    assert_eq!(db.get("a").unwrap(), Value::Int(1));
    locks.0.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        db.set("a", 3).unwrap().fence,
        20,
        "tokens grow above the stored high-water"
    );
    drop(db);
    let db = Db::open(&dir, opts()).unwrap();
    assert_eq!(
        db.set("b", 1).unwrap().fence,
        21,
        "the high-water survives a reopen"
    );
    assert!(db.check().ok());
    std::fs::remove_dir_all(dir).unwrap();
}
