//! Several opens of one directory as members of a coordinated group, without a master (each
//! with its own local lock provider, writing disjoint subtrees): the commit step must adopt
//! the other members' commits, grow and remap the shared file safely, and readers must see
//! every member's commits.

mod common;

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
fn a_snapshot_of_one_member_neither_blocks_the_others_nor_sees_its_pages_reused() {
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
    // b commits at once (turn_wait 100 ms), many times over the keys the snapshot reads
    let _ = common::snapshot_outlives_rewrites(&a, &b);
}
