//! Several opens of one directory as members of a coordinated group, without a master (each
//! with its own local lock provider, writing disjoint subtrees): the commit step must adopt
//! the other members' commits, grow and remap the shared file safely, and readers must see
//! every member's commits.

use db_node::{Db, Durability, Options, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dbnode-shared-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn member(d: &PathBuf) -> Db {
    Db::open(
        d,
        Options {
            durability: Durability::NoSync,
            coordinated: true,
            turn_wait: Some(Duration::from_secs(10)),
            ..Options::default()
        },
    )
    .expect("open as a group member")
}

#[test]
fn members_commit_in_turns_grow_the_file_and_see_each_other() {
    let d = dir("grow");
    let members: Vec<Arc<Db>> = (0..3).map(|_| Arc::new(member(&d))).collect();
    let per = 400;
    // 500-byte values: the file must grow several times while members interleave
    let blob = "x".repeat(500);
    let threads: Vec<_> = members
        .iter()
        .enumerate()
        .map(|(m, db)| {
            let db = db.clone();
            let blob = blob.clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    db.set(&format!("m{m}/k{i}"), format!("{m}-{i}-{blob}"))
                        .expect("set");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer thread");
    }
    for (reader, db) in members.iter().enumerate() {
        for m in 0..3 {
            for i in [0, per / 2, per - 1] {
                assert_eq!(
                    db.get(&format!("m{m}/k{i}")).expect("get"),
                    Value::from(format!("{m}-{i}-{blob}")),
                    "member {reader} reading m{m}/k{i}"
                );
            }
        }
    }
    let stats = members[0].stats();
    assert!(stats.file_bytes > 1 << 20, "the file grew: {stats:?}");
    assert_eq!(stats.txn, 3 * per as u64, "one transaction id per commit");
    let report = members[1].check();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    drop(members);
    // reopened alone, as a single process, everything is there
    let db = Db::open(&d, Options::default()).expect("reopen");
    assert_eq!(
        db.children("m2", None, 10_000).expect("children").len(),
        per
    );
}

#[test]
fn a_snapshot_holds_back_commits_of_other_members_only_while_it_lives() {
    let d = dir("snapshot");
    let a = member(&d);
    let b = Db::open(
        &d,
        Options {
            durability: Durability::NoSync,
            coordinated: true,
            turn_wait: Some(Duration::from_millis(100)),
            ..Options::default()
        },
    )
    .expect("second member");
    a.set("x", 1).expect("set");
    let snap = a.snapshot().expect("snapshot");
    // b cannot commit while a reads (it could reuse pages the snapshot reaches) ...
    let err = b.set("y", 2).expect_err("the turn is held shared");
    assert!(err.to_string().contains("commit turn"), "{err}");
    assert_eq!(snap.get("x").expect("get"), Value::Int(1));
    drop(snap);
    // ... and can once the snapshot is gone; a sees b's commit
    b.set("y", 2).expect("set after the snapshot");
    assert_eq!(a.get("y").expect("get"), Value::Int(2));
}
