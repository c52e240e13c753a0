//! Power-cut simulations on real files: pages that the kernel had not written back when the
//! machine died are reverted to their previous contents, or a page of the last commit is torn.
//! The database must open at a complete commit: every commit acknowledged in `sync` mode.

use db_node::meta::Meta;
use db_node::{Db, Durability, Options, Value};
use rand::Rng;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dbnode-power-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Mix two images of a file page by page: each page from `new` with probability `p`.
fn mix(old: &[u8], new: &[u8], p: f64) -> Vec<u8> {
    let mut rng = rand::rng();
    let mut out = new.to_vec();
    for (i, page) in out.chunks_mut(4096).enumerate() {
        let start = i * 4096;
        if !rng.random_bool(p) {
            match old.get(start..start + page.len()) {
                Some(o) => page.copy_from_slice(o),
                None => page.fill(0),
            }
        }
    }
    out
}

#[test]
fn unflushed_tree_pages_lost_after_logged_commits() {
    for round in 0..6 {
        let dir = tmp(&format!("logged{round}"));
        let db = Db::open(&dir, Options::default()).unwrap();
        for i in 0..150 {
            db.set(&format!("base/k{i:04}"), Value::Int(i)).unwrap();
        }
        db.checkpoint().unwrap();
        let flushed = std::fs::read(dir.join("data.db")).unwrap();
        // acknowledged sync commits that only reached the redo file
        for i in 0..25 {
            db.set(&format!("logged/k{i:04}"), Value::Int(i)).unwrap();
            db.remove(&format!("base/k{:04}", i * 3)).unwrap();
        }
        assert!(db.stats().redo_bytes > 0);
        db.close_without_checkpoint();
        let written = std::fs::read(dir.join("data.db")).unwrap();
        // the machine dies: some of the data-file pages written since the flush are lost
        let p = [0.0, 0.3, 0.7, 1.0, 0.5, 0.1][round];
        std::fs::write(dir.join("data.db"), mix(&flushed, &written, p)).unwrap();

        let db = Db::open(&dir, Options::default()).unwrap();
        let r = db.check();
        assert!(r.ok(), "round {round}: {:?}", r.problems);
        for i in 0..25 {
            assert_eq!(db.get(&format!("logged/k{i:04}")).unwrap(), Value::Int(i));
            assert!(!db.exists(&format!("base/k{:04}", i * 3)).unwrap());
        }
        assert_eq!(db.get("base/k0001").unwrap(), Value::Int(1));
        assert_eq!(db.children("base", None, 1000).unwrap().len(), 150 - 25);
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn newest_meta(data: &[u8]) -> (usize, Meta) {
    let metas: Vec<(usize, Meta)> = (0..2)
        .filter_map(|s| {
            Meta::decode(&data[s * 4096..(s + 1) * 4096])
                .ok()
                .map(|m| (s, m))
        })
        .collect();
    metas.into_iter().max_by_key(|(_, m)| m.txn).unwrap()
}

#[test]
fn torn_checkpoint_falls_back_to_the_previous_commit() {
    let dir = tmp("torn");
    let opts = || Options {
        durability: Durability::NoSync,
        ..Options::default()
    };
    let db = Db::open(&dir, opts()).unwrap();
    for i in 0..100 {
        db.set(&format!("k/{i:03}"), Value::Int(i)).unwrap();
    }
    let before = db.get("").unwrap();
    db.set("k/050", "changed").unwrap();
    drop(db);
    let path = dir.join("data.db");
    let data = std::fs::read(&path).unwrap();
    let (_, meta) = newest_meta(&data);
    assert!(!meta.written.is_empty());
    for (n, &(page, _)) in meta.written.iter().enumerate() {
        // tear one page of the last commit: its second half never reached the disk
        let mut torn = data.clone();
        let at = page as usize * 4096;
        torn[at + 2048..at + 4096].fill(0xAA);
        std::fs::write(&path, &torn).unwrap();
        let db = Db::open(&dir, opts()).unwrap();
        assert!(db.stats().recovered, "page {n}");
        assert_eq!(db.get("").unwrap(), before);
        assert!(db.check().ok());
        drop(db);
    }
    // a torn meta page: the previous meta wins
    let (slot, _) = newest_meta(&data);
    let mut torn = data.clone();
    torn[slot * 4096 + 60..slot * 4096 + 200].fill(0);
    std::fs::write(&path, &torn).unwrap();
    let db = Db::open(&dir, opts()).unwrap();
    assert_eq!(db.get("").unwrap(), before);
    db.set("after", 1).unwrap();
    drop(db);
    let db = Db::open(&dir, opts()).unwrap();
    assert_eq!(db.get("after").unwrap(), Value::Int(1));
    assert!(db.check().ok());
    drop(db);
    cleanup(&dir);
}

fn cleanup(dir: &Path) {
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_stale_redo_slot_never_resurrects_an_old_state() {
    let dir = tmp("stale");
    let db = Db::open(&dir, Options::default()).unwrap();
    for i in 0..20 {
        db.set(&format!("a/k{i}"), Value::Int(i)).unwrap();
    }
    assert!(db.stats().redo_bytes > 0);
    db.close_without_checkpoint();
    // later work in nosync mode: checkpoints only, reusing the old pages
    let db = Db::open(
        &dir,
        Options {
            durability: Durability::NoSync,
            ..Options::default()
        },
    )
    .unwrap();
    for i in 0..300 {
        db.set(&format!("a/k{}", i % 20), Value::Int(1000 + i))
            .unwrap();
    }
    drop(db);
    // both data-file metas damaged: the redo slots must not be used (their checkpoint is gone)
    let path = dir.join("data.db");
    let mut data = std::fs::read(&path).unwrap();
    data[100] ^= 1;
    data[4096 + 100] ^= 1;
    std::fs::write(&path, &data).unwrap();
    match Db::open(&dir, Options::default()) {
        Err(db_node::Error::Corrupt { detail, .. }) => {
            assert!(
                detail.contains("meta page 0") && detail.contains("meta page 1"),
                "{detail}"
            );
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened at a stale redo state"),
    }
    cleanup(&dir);
}
