//! Files that are not (or no longer) good databases: clear errors naming the file, never a
//! panic, never an overwrite; and the second-process refusal.

use db_node::{Db, Durability, Error, Options, Value};
use rand::Rng;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dbnode-files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts() -> Options {
    Options {
        durability: Durability::NoSync,
        ..Options::default()
    }
}

/// Fill a database; returns the pages in use.
fn populate(dir: &Path) -> Vec<u64> {
    let db = Db::open(dir, opts()).unwrap();
    for i in 0..300 {
        db.set(
            &format!("items/i{i:04}"),
            serde_json::json!({"n": i, "s": "some text here"}),
        )
        .unwrap();
    }
    db.used_page_ids()
}

fn open_err(dir: &Path) -> Error {
    match Db::open(dir, opts()) {
        Ok(_) => panic!("opened a bad database"),
        Err(e) => e,
    }
}

#[test]
fn foreign_file_is_refused_untouched() {
    let dir = tmp("foreign");
    let data = dir.join("data.db");
    let text = "this is a text file, not a database\n".repeat(400);
    std::fs::write(&data, &text).unwrap();
    let e = open_err(&dir);
    assert!(matches!(e, Error::NotADatabase { .. }), "{e}");
    assert!(e.to_string().contains("data.db"), "{e}");
    assert_eq!(std::fs::read_to_string(&data).unwrap(), text);
    std::fs::write(&data, b"short").unwrap();
    assert!(matches!(open_err(&dir), Error::NotADatabase { .. }));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn newer_version_truncated_and_corrupt_metas() {
    let dir = tmp("meta");
    populate(&dir);
    let data = dir.join("data.db");
    let orig = std::fs::read(&data).unwrap();

    let mut newer = orig.clone();
    for slot in [0, 4096] {
        newer[slot + 8..slot + 12].copy_from_slice(&7u32.to_le_bytes());
    }
    std::fs::write(&data, &newer).unwrap();
    let e = open_err(&dir);
    assert!(matches!(e, Error::NewerVersion { found: 7, .. }), "{e}");
    assert_eq!(std::fs::read(&data).unwrap(), newer);

    std::fs::write(&data, &orig[..6000]).unwrap();
    let e = open_err(&dir);
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("data.db"));
    std::fs::write(&data, &orig[..5 * 4096]).unwrap();
    assert!(matches!(open_err(&dir), Error::Truncated { .. }));

    let mut bad = orig.clone();
    bad[100] ^= 0xff;
    bad[4096 + 100] ^= 0xff;
    std::fs::write(&data, &bad).unwrap();
    let e = open_err(&dir);
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert_eq!(std::fs::read(&data).unwrap(), bad);

    // one damaged meta: the other one still opens (an older but complete commit)
    let mut one = orig.clone();
    one[100] ^= 0xff;
    std::fs::write(&data, &one).unwrap();
    let db = Db::open(&dir, opts()).unwrap();
    assert!(db.check().ok());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn damaged_pages_are_reported_never_panic() {
    let dir = tmp("damage");
    let pages = populate(&dir);
    let data = dir.join("data.db");
    let orig = std::fs::read(&data).unwrap();
    let mut rng = rand::rng();
    let mut reported = 0;
    for round in 0..120 {
        let mut bad = orig.clone();
        let page = pages[rng.random_range(2..pages.len())] as usize;
        for _ in 0..rng.random_range(1..4) {
            let at = page * 4096 + rng.random_range(0..4096);
            bad[at] ^= rng.random_range(1..=255u8);
        }
        if round % 3 == 0 {
            // a torn page: its tail replaced by zeros
            let at = page * 4096 + rng.random_range(0..4096);
            bad[at..(page + 1) * 4096].fill(0);
        }
        std::fs::write(&data, &bad).unwrap();
        match Db::open(&dir, opts()) {
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains("data.db") || text.contains("redo.db"),
                    "the error must name the file: {text}"
                );
                reported += 1;
            }
            Ok(db) => {
                let _ = db.get("");
                let _ = db.children("items", None, 1000);
                let r = db.check();
                if db.stats().recovered {
                    // the damage hit the last commit: it was rolled back like a torn write
                    reported += 1;
                } else if !r.ok() {
                    reported += 1;
                    assert!(r.problems.iter().all(|p| !p.is_empty()));
                }
            }
        }
    }
    eprintln!(
        "{reported} of 120 damaged files reported ({} pages)",
        pages.len()
    );
    assert!(
        reported > 80,
        "only {reported} of 120 damaged files were reported"
    );
    std::fs::write(&data, &orig).unwrap();
    let db = Db::open(&dir, opts()).unwrap();
    assert!(db.check().ok());
    assert_eq!(db.get("items/i0042/n").unwrap(), Value::Int(42));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn second_process_is_refused() {
    let dir = tmp("lock");
    let db = Db::open(&dir, opts()).unwrap();
    db.set("a", 1).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_db-node"))
        .args(["--db", dir.to_str().unwrap(), "get", "a"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("open by process {}", std::process::id())),
        "{err}"
    );
    drop(db);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_db-node"))
        .args(["--db", dir.to_str().unwrap(), "get", "a"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_cycle_in_the_tree_is_an_error_not_a_hang() {
    let dir = tmp("cycle");
    populate(&dir);
    let data = dir.join("data.db");
    let mut bytes = std::fs::read(&data).unwrap();
    let (slot, mut meta) = (0..2)
        .filter_map(|s| {
            db_node::meta::Meta::decode(&bytes[s * 4096..(s + 1) * 4096])
                .ok()
                .map(|m| (s, m))
        })
        .max_by_key(|(_, m)| m.txn)
        .unwrap();
    let root = meta.root as usize;
    let page = &mut bytes[root * 4096..(root + 1) * 4096];
    assert_eq!(db_node::page::kind(page), db_node::page::KIND_BRANCH);
    // the root's leftmost child becomes the root itself, with valid checksums everywhere
    db_node::page::set_link(page, root as u64);
    let sum = db_node::page::seal(page);
    for w in meta.written.iter_mut().filter(|w| w.0 == root as u64) {
        w.1 = sum;
    }
    meta.encode(&mut bytes[slot * 4096..(slot + 1) * 4096]);
    std::fs::write(&data, &bytes).unwrap();
    match Db::open(&dir, opts()) {
        Err(e) => assert!(e.to_string().contains("data.db"), "{e}"),
        Ok(db) => {
            let e = db.get("items").unwrap_err();
            assert!(matches!(e, Error::Corrupt { .. }), "{e}");
            assert!(db.children("items", None, 10).is_err());
            assert!(!db.check().ok());
            let _ = db.set("items/i0000", 5);
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}
