//! The crash test: a child process commits in a loop and is killed with SIGKILL at a random
//! moment, 50 times; after each kill the database opens, `check` passes, every commit the
//! child reported as acknowledged is present, and every batch is all-or-nothing.

use db_node::{Db, Durability, Options, Value};
use rand::Rng;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEEP: i64 = 40;

/// Runs only as the child of `sigkill_50_times` (it does nothing in a normal test run).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("DBNODE_CRASH_DIR") else {
        return;
    };
    let iter: u64 = std::env::var("DBNODE_CRASH_ITER").unwrap().parse().unwrap();
    let sync = std::env::var("DBNODE_CRASH_SYNC").is_ok();
    let db = Db::open(
        &dir,
        Options {
            durability: if sync {
                Durability::Sync
            } else {
                Durability::NoSync
            },
            ..Options::default()
        },
    )
    .unwrap();
    let mut rng = rand::rng();
    for n in 0i64.. {
        let pad = "p".repeat(rng.random_range(0..2500));
        db.write(|t| {
            t.set(
                &format!("runs/r{iter}/n{n:07}"),
                json!({"n": n, "pad": pad}).into(),
            )?;
            t.update("totals", json!({ format!("r{iter}"): n }).into())?;
            if n >= KEEP {
                t.remove(&format!("runs/r{iter}/n{:07}", n - KEEP))?;
            }
            Ok(())
        })
        .unwrap();
        db.transaction("counter", |v| match v {
            Value::Int(i) => Some(Value::Int(i + 1)),
            _ => Some(Value::Int(1)),
        })
        .unwrap();
        println!("ACK {n}");
    }
}

#[test]
fn sigkill_50_times() {
    let dir = std::env::temp_dir().join(format!("dbnode-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    let mut counter_floor = 0;
    for iter in 0..50u64 {
        let mut cmd = Command::new(&exe);
        cmd.args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("DBNODE_CRASH_DIR", &dir)
            .env("DBNODE_CRASH_ITER", iter.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if iter % 2 == 1 {
            cmd.env("DBNODE_CRASH_SYNC", "1");
        }
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let acks = Arc::new(Mutex::new(Vec::<i64>::new()));
        let acks2 = acks.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("ACK ") {
                    acks2.lock().unwrap().push(n.parse().unwrap());
                }
            }
        });
        // wait for the child to start committing, then kill it at a random moment; every
        // seventh child is killed early, possibly while it opens (and replays) the database
        let early = iter % 7 == 3;
        let t0 = std::time::Instant::now();
        while !early && acks.lock().unwrap().is_empty() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(0..30_000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let acks = acks.lock().unwrap().clone();
        assert!(early || !acks.is_empty(), "child {iter} never committed");
        let last = acks.last().copied().unwrap_or(-1);

        let db = Db::open(&dir, Options::default()).unwrap();
        let report = db.check();
        assert!(report.ok(), "iteration {iter}: {:?}", report.problems);
        let total = match db.get(&format!("totals/r{iter}")).unwrap() {
            Value::Int(i) => i,
            Value::Null if last < 0 => -1,
            v => panic!("iteration {iter}: totals = {v:?}"),
        };
        assert!(
            total >= last,
            "iteration {iter}: acknowledged {last}, found {total}"
        );
        // the batch that wrote `total` is complete; older acknowledged entries are present
        for n in (total - KEEP + 1).max(0)..=total {
            let v = db.get(&format!("runs/r{iter}/n{n:07}/n")).unwrap();
            assert_eq!(v, Value::Int(n), "iteration {iter}: entry {n} of {total}");
        }
        assert!(!db
            .exists(&format!("runs/r{iter}/n{:07}", total + 1))
            .unwrap());
        assert!(!db
            .exists(&format!("runs/r{iter}/n{:07}", total - KEEP))
            .unwrap());
        let counter = match db.get("counter").unwrap() {
            Value::Int(i) => i,
            _ => 0,
        };
        assert!(
            counter > counter_floor + last,
            "iteration {iter}: counter {counter}"
        );
        counter_floor = counter;
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
