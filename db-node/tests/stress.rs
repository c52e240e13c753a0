//! Randomized stress against a `BTreeMap`: thousands of keys with values of random length
//! (inline and chunked), removals, whole-subtree replacements, batches, reopens and snapshots
//! held across commits; the database must match the map and pass `check` throughout.
//! `STRESS_OPS=200000 cargo test --release -p db-node --test stress` for a long run.

use db_node::{Db, Durability, Options, Value};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

fn value(rng: &mut impl Rng) -> String {
    let len = match rng.random_range(0..10) {
        0 => rng.random_range(1000..5000),
        1..=3 => rng.random_range(100..1000),
        _ => rng.random_range(0..40),
    };
    let c = rng.random_range(b'a'..=b'z') as char;
    std::iter::repeat_n(c, len).collect()
}

#[test]
fn random_workload_matches_a_map() {
    let ops: usize = std::env::var("STRESS_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    let seed: u64 = rand::random();
    eprintln!("stress seed {seed}, {ops} operations");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = std::env::temp_dir().join(format!("dbnode-stress-{}-{seed}", std::process::id()));
    let mut durability = Durability::NoSync;
    let mut db = Db::open(
        &dir,
        Options {
            durability,
            ..Options::default()
        },
    )
    .unwrap();
    let mut model: BTreeMap<(u32, u32), String> = BTreeMap::new();
    let key = |g: u32, k: u32| format!("g{g:02}/k{k:05}");
    let compare = |db: &Db, model: &BTreeMap<(u32, u32), String>, g: u32| {
        let got = db.get(&format!("g{g:02}")).unwrap();
        let want: BTreeMap<String, Value> = model
            .range((g, 0)..(g + 1, 0))
            .map(|((_, k), v)| (format!("k{k:05}"), Value::String(v.clone())))
            .collect();
        if want.is_empty() {
            assert!(matches!(got, Value::Null | Value::Object(_)), "{got:?}");
            if let Value::Object(o) = got {
                assert!(o.is_empty(), "seed {seed}: group {g} should be empty");
            }
        } else {
            assert_eq!(got, Value::Object(want), "seed {seed}: group {g}");
        }
    };
    for step in 0..ops {
        let g = rng.random_range(0..8u32);
        match rng.random_range(0..100) {
            0..=59 => {
                let k = rng.random_range(0..2000);
                let v = value(&mut rng);
                db.set(&key(g, k), v.as_str()).unwrap();
                model.insert((g, k), v);
            }
            60..=79 => {
                let k = rng.random_range(0..2000);
                db.remove(&key(g, k)).unwrap();
                model.remove(&(g, k));
            }
            80..=89 => {
                let n = rng.random_range(1..50);
                let items: Vec<(u32, String)> = (0..n)
                    .map(|_| (rng.random_range(0..2000), value(&mut rng)))
                    .collect();
                db.write(|t| {
                    for (k, v) in &items {
                        t.set(&key(g, *k), Value::String(v.clone()))?;
                    }
                    Ok(())
                })
                .unwrap();
                for (k, v) in items {
                    model.insert((g, k), v);
                }
            }
            90..=93 => {
                // replace a whole group, keeping a snapshot of the old one open meanwhile
                let snap = db.snapshot().unwrap();
                let before = snap.get(&format!("g{g:02}")).unwrap();
                let n = rng.random_range(0..30);
                let fresh: BTreeMap<u32, String> = (0..n)
                    .map(|_| (rng.random_range(0..2000), value(&mut rng)))
                    .collect();
                let obj: BTreeMap<String, Value> = fresh
                    .iter()
                    .map(|(k, v)| (format!("k{k:05}"), Value::String(v.clone())))
                    .collect();
                db.set(&format!("g{g:02}"), Value::Object(obj)).unwrap();
                assert_eq!(
                    snap.get(&format!("g{g:02}")).unwrap(),
                    before,
                    "seed {seed}: snapshot changed"
                );
                drop(snap);
                model.retain(|(mg, _), _| *mg != g);
                for (k, v) in fresh {
                    model.insert((g, k), v);
                }
            }
            94..=96 => compare(&db, &model, g),
            97 => {
                drop(db);
                durability = if rng.random_bool(0.5) {
                    Durability::Sync
                } else {
                    Durability::NoSync
                };
                db = Db::open(
                    &dir,
                    Options {
                        durability,
                        ..Options::default()
                    },
                )
                .unwrap();
            }
            98 => {
                db.close_without_checkpoint();
                db = Db::open(
                    &dir,
                    Options {
                        durability,
                        ..Options::default()
                    },
                )
                .unwrap();
            }
            _ => {
                let r = db.check();
                assert!(
                    r.ok(),
                    "seed {seed} step {step}: {:?}",
                    &r.problems[..r.problems.len().min(5)]
                );
            }
        }
    }
    for g in 0..8 {
        compare(&db, &model, g);
    }
    let r = db.check();
    assert!(
        r.ok(),
        "seed {seed}: {:?}",
        &r.problems[..r.problems.len().min(5)]
    );
    assert_eq!(
        r.records as usize,
        model.len()
            + 8
            + model
                .values()
                .map(|v| if v.len() > 1000 {
                    v.len().div_ceil(1000)
                } else {
                    0
                })
                .sum::<usize>()
            - (0..8)
                .filter(|g| !db.exists(&format!("g{g:02}")).unwrap())
                .count()
    );
    drop(db);
    std::fs::remove_dir_all(&dir).unwrap();
}
