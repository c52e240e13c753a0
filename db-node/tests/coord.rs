//! Master and workers as real processes around a real `ipc-server` (issue 6).

mod common;

use common::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

#[test]
fn a_second_master_and_an_uncoordinated_open_are_refused() {
    let server = Server::start();
    let dir = temp_db("second");
    let _m = master(&dir, &server.url);
    let (ok, _, err) = run(&mut db_node(&dir, &server.url, &["master"]), T);
    assert!(!ok);
    assert!(err.contains("another master"), "{err}");
    // a plain open (no --ipc) must not touch the files the group shares
    let (ok, _, err) = run(
        std::process::Command::new(DB_NODE)
            .arg("--db")
            .arg(&dir)
            .args(["get", "x"]),
        T,
    );
    assert!(!ok);
    assert!(err.contains("run workers with an IPC role"), "{err}");
    // and it names the live master, not a stale pid
    let pid = _m.child.id().to_string();
    assert!(err.contains(&pid), "{err}");
}

#[test]
fn concurrent_master_starts_yield_exactly_one_master() {
    let server = Server::start();
    let dir = temp_db("race");
    // 100 rounds of 2 simultaneous starts, then 5 rounds of 20, each round right after the
    // previous master was SIGKILLed
    let plan = std::iter::repeat_n(2, 100).chain(std::iter::repeat_n(20, 5));
    for (round, per_round) in plan.enumerate() {
        let mut procs: Vec<Proc> = (0..per_round)
            .map(|_| Proc::spawn(&mut db_node(&dir, &server.url, &["master"])))
            .collect();
        // every loser exits with code 2; exactly one stays and becomes ready
        let end = Instant::now() + T;
        let mut alive: Vec<usize> = (0..per_round).collect();
        while alive.len() > 1 && Instant::now() < end {
            alive.retain(|&i| match procs[i].child.try_wait() {
                Ok(Some(status)) => {
                    assert_eq!(status.code(), Some(2), "round {round}: a loser must exit 2");
                    false
                }
                _ => true,
            });
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(alive.len(), 1, "round {round}: live masters {alive:?}");
        let winner = &mut procs[alive[0]];
        assert!(
            winner.stdout.wait_for("ready", T).is_some(),
            "round {round}: the winner did not get ready: {}",
            winner.stderr.drain()
        );
        assert!(winner.child.try_wait().ok().flatten().is_none());
        // kill it the hard way: the next round's winner must take over at once
        winner.kill();
    }
}

fn get(dir: &std::path::Path, url: &str, path: &str) -> String {
    let (ok, out, err) = run(&mut db_node(dir, url, &["get", path]), T);
    assert!(ok, "get {path}: {err}");
    out.trim().to_string()
}

fn set(dir: &std::path::Path, url: &str, path: &str, json: &str) {
    let (ok, _, err) = run(&mut db_node(dir, url, &["--nosync", "set", path, json]), T);
    assert!(ok, "set {path}: {err}");
}

/// A worker running `set PATH VALUE` (nosync) that stops for `ms` at the test hook `hook`
/// (`before-commit`: in the commit step, its pages written; `after-grant`: holding its lock,
/// before the commit turn), returned once it says it has stopped there.
fn paused_set(
    dir: &std::path::Path,
    url: &str,
    hook: &str,
    ms: u64,
    path: &str,
    value: &str,
) -> Proc {
    let flag = format!("--pause-{hook}-ms");
    let ms = ms.to_string();
    let p = Proc::spawn(&mut db_node(
        dir,
        url,
        &["--nosync", &flag, &ms, "set", path, value],
    ));
    let said = match hook {
        "after-grant" => "granted; pausing",
        _ => "pausing",
    };
    assert!(
        p.stderr.wait_for(said, T).is_some(),
        "the worker never got its lock"
    );
    p
}

#[test]
fn a_worker_killed_holding_a_write_lock_frees_it_within_a_second() {
    let server = Server::start();
    let dir = temp_db("killed");
    let _m = master(&dir, &server.url);
    set(&dir, &server.url, "users/alice", "0");
    let iterations = 20;
    let mut worst = Duration::ZERO;
    for i in 0..iterations {
        // a worker that got its lock, wrote its pages, and hangs before the commit
        let mut hung = paused_set(
            &dir,
            &server.url,
            "before-commit",
            60_000,
            "users/alice",
            "{\"half\":\"done\"}",
        );
        hung.kill();
        let killed = Instant::now();
        if i == 0 {
            // the killed transaction is invisible (this read also waits for the turn)
            assert_eq!(get(&dir, &server.url, "users/alice"), "0");
        }
        let value = format!("{}", i + 1);
        set(&dir, &server.url, "users/alice", &value);
        let took = killed.elapsed();
        worst = worst.max(took);
        assert!(
            took < Duration::from_secs(1),
            "iteration {i}: the next writer needed {took:?}"
        );
    }
    eprintln!("worst handoff after SIGKILL: {worst:?}");
    // the half-done transactions are invisible; the database checks clean
    assert_eq!(
        get(&dir, &server.url, "users/alice"),
        iterations.to_string()
    );
    let (ok, out, err) = run(&mut db_node(&dir, &server.url, &["check"]), T);
    assert!(ok, "check: {out} {err}");
}

#[test]
fn without_a_master_a_write_fails_with_master_unavailable_in_time() {
    let server = Server::start();
    let dir = temp_db("nomaster");
    // never had a master
    let start = Instant::now();
    let (ok, _, err) = run(
        &mut db_node(
            &dir,
            &server.url,
            &["--ipc-timeout-ms", "300", "set", "a", "1"],
        ),
        T,
    );
    assert!(!ok);
    assert!(err.contains("master unavailable"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // reads need nobody
    assert_eq!(get(&dir, &server.url, "a"), "null");
    // a master that was SIGKILLed
    let mut m = master(&dir, &server.url);
    set(&dir, &server.url, "a", "1");
    m.kill();
    let (ok, _, err) = run(
        &mut db_node(
            &dir,
            &server.url,
            &["--ipc-timeout-ms", "300", "set", "a", "2"],
        ),
        T,
    );
    assert!(!ok);
    assert!(err.contains("master unavailable"), "{err}");
    // a new master: workers continue by themselves, nothing committed was lost
    let _m = master(&dir, &server.url);
    assert_eq!(get(&dir, &server.url, "a"), "1");
    set(&dir, &server.url, "a", "3");
    assert_eq!(get(&dir, &server.url, "a"), "3");
}

#[test]
fn a_post_office_that_is_down_is_master_unavailable() {
    // a port nobody listens on (bound, then released)
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let url = format!("ws://127.0.0.1:{port}");
    let dir = temp_db("nooffice");
    let (ok, _, err) = run(
        &mut db_node(&dir, &url, &["--ipc-timeout-ms", "300", "set", "a", "1"]),
        T,
    );
    assert!(!ok);
    assert!(err.contains("master unavailable"), "{err}");
}

#[test]
fn four_workers_incrementing_one_counter_lose_no_update() {
    let server = Server::start();
    let dir = temp_db("counter");
    let _m = master(&dir, &server.url);
    let per_worker: u64 = std::env::var("COORD_COUNTER_PER_WORKER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let times = per_worker.to_string();
    let start = Instant::now();
    // two single-threaded workers, and two whose 4 threads hand the counter's lock to each
    // other without the master
    let mut workers: Vec<Proc> = (0..4)
        .map(|k| {
            let threads = if k % 2 == 0 { "1" } else { "4" };
            Proc::spawn(&mut db_node(
                &dir,
                &server.url,
                &[
                    "--nosync",
                    "incr",
                    "counters/c",
                    "--times",
                    &times,
                    "--threads",
                    threads,
                ],
            ))
        })
        .collect();
    for (i, w) in workers.iter_mut().enumerate() {
        let status = w
            .wait_exit(Duration::from_secs(90))
            .expect("worker finished");
        assert!(status.success(), "worker {i}: {}", w.stderr.rest(T));
    }
    eprintln!(
        "{} increments by 4 workers in {:?}",
        4 * per_worker,
        start.elapsed()
    );
    assert_eq!(
        get(&dir, &server.url, "counters/c"),
        (4 * per_worker).to_string()
    );
    let (ok, out, err) = run(&mut db_node(&dir, &server.url, &["check"]), T);
    assert!(ok, "check: {out} {err}");
}

fn watcher(dir: &std::path::Path, url: &str, pattern: &str) -> Proc {
    let w = Proc::spawn(&mut db_node(dir, url, &["watch", pattern]));
    assert!(
        w.stderr.wait_for("watching", T).is_some(),
        "watcher did not start"
    );
    w
}

fn next_json(p: &Proc) -> serde_json::Value {
    let line = p
        .stdout
        .wait_for("{", Duration::from_secs(5))
        .expect("a watch line within 5 s");
    serde_json::from_str(&line).expect("watch lines are JSON")
}

#[test]
fn commits_are_announced_to_watchers_that_joined_before_or_after() {
    let server = Server::start();
    let dir = temp_db("watch");
    let _m = master(&dir, &server.url);
    let early = watcher(&dir, &server.url, "users/*");
    set(&dir, &server.url, "users/alice", "1");
    set(&dir, &server.url, "posts/1", "\"hello\"");
    set(&dir, &server.url, "users/bob", "2");
    let a = next_json(&early);
    assert_eq!(a["changed"], serde_json::json!(["users/alice"]), "{a}");
    // posts/1 is filtered out, and no gap is reported: ids are consecutive
    let b = next_json(&early);
    assert_eq!(b["changed"], serde_json::json!(["users/bob"]), "{b}");
    assert_eq!(
        b["txn"].as_u64(),
        a["txn"].as_u64().map(|t| t + 2),
        "{a} {b}"
    );
    let late = watcher(&dir, &server.url, "users/carol");
    set(&dir, &server.url, "users/carol", "{\"age\": 3}");
    for w in [&early, &late] {
        let c = next_json(w);
        assert_eq!(c["changed"], serde_json::json!(["users/carol"]), "{c}");
    }
}

#[test]
fn a_post_office_restart_under_load_loses_no_committed_write() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let mut server = Server::start();
    let url = server.url.clone();
    let dir = temp_db("restart");
    let _m = master(&dir, &url);
    let w = watcher(&dir, &url, "c");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // two workers increment in a loop; a failed increment must not have happened
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (dir, url) = (dir.clone(), url.clone());
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (success, _, err) = run(
                        &mut db_node(
                            &dir,
                            &url,
                            &["--nosync", "--ipc-timeout-ms", "1000", "incr", "c"],
                        ),
                        T,
                    );
                    if success {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        // Either no master was reachable, or the restart ended the session
                        // that held the lock between its grant and the commit, and the commit
                        // was fenced. Both refuse the write before anything is written.
                        assert!(
                            err.contains("master unavailable")
                                || err.contains("write right lost before the commit"),
                            "{err}"
                        );
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    server.restart();
    let restarted = Instant::now();
    // the master is back in the namespace and grants again within 2 s
    loop {
        let (success, _, _) = run(
            &mut db_node(
                &dir,
                &url,
                &["--nosync", "--ipc-timeout-ms", "300", "incr", "c"],
            ),
            T,
        );
        if success {
            ok.fetch_add(1, Ordering::Relaxed);
            break;
        }
        failed.fetch_add(1, Ordering::Relaxed);
        assert!(
            restarted.elapsed() < Duration::from_secs(2),
            "no grant within 2 s of the restart"
        );
    }
    eprintln!(
        "a write went through {:?} after the restart",
        restarted.elapsed()
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().expect("load thread");
    }
    let ok = ok.load(Ordering::Relaxed);
    eprintln!(
        "{ok} increments, {} failed cleanly",
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(get(&dir, &url, "c"), ok.to_string());
    // the watcher came back and still receives commits
    assert!(
        w.stdout.wait_for("disconnected", T).is_some(),
        "the watcher saw the restart"
    );
    set(&dir, &url, "c", "100");
    assert!(
        w.stdout
            .wait_for("\"txn\"", Duration::from_secs(5))
            .is_some(),
        "the watcher receives commits after the restart"
    );
}

#[test]
fn a_lock_request_queued_at_a_master_that_dies_fails_at_once() {
    use db_node::coord::{IpcConfig, IpcLocks};
    use db_node::{Error, LockProvider};
    let server = Server::start();
    let dir = temp_db("masterdies");
    let mut m = master(&dir, &server.url);
    let url = server.url.clone();
    let cfg = move || {
        let mut c = IpcConfig::new(url.clone());
        c.timeout = Duration::from_secs(20);
        c.lock_wait = Duration::from_secs(20);
        c
    };
    let x = vec![db_node::path::parse("x").expect("path")];
    let holder = IpcLocks::new(&dir, cfg()).expect("provider");
    let grant = holder.acquire(&x, 0).expect("first lock");
    assert!(grant.token > 0);
    let waiter = std::thread::spawn(move || {
        let other = IpcLocks::new(&dir, cfg()).expect("provider");
        let started = Instant::now();
        let r = other.acquire(&x, 0);
        (r, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    m.kill();
    let (r, took) = waiter.join().expect("waiter thread");
    match r {
        Err(Error::MasterUnavailable(msg)) => assert!(msg.contains("left"), "{msg}"),
        other => panic!("expected MasterUnavailable, got {other:?}"),
    }
    // queued ~0.3 s, then the master's departure ended the wait (not the 40 s deadline)
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn library_roles_auto_master_and_worker() {
    use db_node::{Error, Role, Value};
    let server = Server::start();
    let dir = temp_db("roles");
    let open = |role: Role| {
        member_with(&dir, &server.url, |ipc| {
            ipc.role = role;
            ipc.timeout = Duration::from_millis(1500);
        })
    };
    let a = open(Role::Auto).expect("first auto");
    assert!(a.is_master());
    let b = open(Role::Auto).expect("second auto");
    assert!(!b.is_master());
    match open(Role::Master) {
        Err(e @ Error::MasterRunning { .. }) => {
            assert!(e.to_string().contains("another master"), "{e}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a second master was accepted"),
    }
    // both write through the master, concurrently
    std::thread::scope(|s| {
        for db in [&a, &b] {
            s.spawn(move || {
                for _ in 0..100 {
                    db.transaction("n", |v| match v {
                        Value::Int(i) => Some(Value::Int(i + 1)),
                        _ => Some(Value::Int(1)),
                    })
                    .expect("increment");
                }
            });
        }
    });
    assert_eq!(b.get("n").expect("get"), Value::Int(200));
    // a member watches what another one commits
    let events = b.watch("users/*").expect("watch");
    a.set("users/ann", 1).expect("set");
    a.set("posts/1", 1).expect("set");
    a.set("users/bo", 2).expect("set");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match events
            .recv_timeout(Duration::from_secs(5))
            .expect("an event")
        {
            db_node::coord::watch::Watched::Commit(c) => seen.extend(c.changed),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, vec!["users/ann".to_string(), "users/bo".to_string()]);
    drop(events);
    // the master goes away: writes fail typed and in time, reads go on
    drop(a);
    let t = Instant::now();
    match b.set("x", 1) {
        Err(Error::MasterUnavailable(_)) => {}
        other => panic!("expected MasterUnavailable, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(b.get("n").expect("get"), Value::Int(200));
    // a new master appears; the worker continues by itself
    let c = open(Role::Auto).expect("new auto");
    assert!(c.is_master());
    b.set("x", 2).expect("set after the new master came");
    assert_eq!(c.get("x").expect("get"), Value::Int(2));
}

#[test]
fn a_grant_whose_post_office_session_ended_is_fenced_at_the_commit() {
    let mut server = Server::start();
    let dir = temp_db("fenced");
    let _m = master(&dir, &server.url);
    set(&dir, &server.url, "users/alice", "0");
    // a worker holds the lock and is about to commit when its session ends
    let mut stale = paused_set(&dir, &server.url, "before-commit", 1500, "users/alice", "1");
    // the post office restarts: the master drops every lock of the sessions that ended
    server.restart();
    let status = stale
        .wait_exit(Duration::from_secs(20))
        .expect("the stale worker ends");
    let err = stale.stderr.rest(T);
    assert!(!status.success(), "a superseded grant committed");
    assert!(err.contains("session that ended"), "{err}");
    // nothing of it was written; the group goes on
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let (ok, _, err) = run(
            &mut db_node(&dir, &server.url, &["--nosync", "set", "users/bob", "2"]),
            T,
        );
        if ok {
            break;
        }
        assert!(Instant::now() < end, "no write after the restart: {err}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&dir, &server.url, "users/alice"), "0");
}

#[test]
fn a_grant_of_a_master_that_was_replaced_is_fenced_at_the_commit() {
    let server = Server::start();
    let dir = temp_db("replaced");
    let mut first = master(&dir, &server.url);
    set(&dir, &server.url, "users/alice", "0");
    // a worker gets its lock from the first master, then stalls before its commit
    let mut stale = paused_set(&dir, &server.url, "after-grant", 2500, "users/alice", "1");
    // the master dies and another one takes over; its tokens start above the old ones
    first.kill();
    let _second = master(&dir, &server.url);
    set(&dir, &server.url, "users/alice", "2");
    // the stale worker wakes up with a lease that has not run out, a post-office session that
    // is still alive, and a lock the new master never granted: refused at the commit
    let status = stale
        .wait_exit(Duration::from_secs(20))
        .expect("the stale worker ends");
    let err = stale.stderr.rest(T);
    assert!(!status.success(), "a grant of a replaced master committed");
    assert!(err.contains("earlier master"), "{err}");
    assert_eq!(get(&dir, &server.url, "users/alice"), "2");
    let (ok, out, err) = run(&mut db_node(&dir, &server.url, &["check"]), T);
    assert!(ok, "check failed: {out} {err}");
}

#[test]
fn a_worker_renews_the_lease_of_a_lock_it_holds_for_long() {
    let server = Server::start();
    let dir = temp_db("renew");
    // leases of 600 ms; the transaction below takes 1.5 s in its commit step
    let m = Proc::spawn(&mut db_node(
        &dir,
        &server.url,
        &["master", "--max-lease-ms", "600"],
    ));
    assert!(m.stdout.wait_for("ready", T).is_some(), "no master");
    set(&dir, &server.url, "users/alice", "0");
    let (ok, _, err) = run(
        &mut db_node(
            &dir,
            &server.url,
            &[
                "--nosync",
                "--pause-before-commit-ms",
                "1500",
                "set",
                "users/alice",
                "1",
            ],
        ),
        T,
    );
    assert!(ok, "a renewed lock was refused: {err}");
    assert_eq!(get(&dir, &server.url, "users/alice"), "1");
}

/// A raw post-office peer speaking the master's JSON protocol.
fn ask_master(
    rt: &tokio::runtime::Runtime,
    c: &ipc_client::Client,
    json: serde_json::Value,
) -> serde_json::Value {
    let body = serde_json::to_vec(&json).unwrap();
    let reply = rt
        .block_on(c.request("master", &body, Some(Duration::from_secs(10))))
        .expect("the master answers");
    serde_json::from_slice(&reply).unwrap()
}

#[test]
fn a_repeated_lock_request_gets_the_same_lock_and_a_cancelled_one_frees_it() {
    let server = Server::start();
    let dir = temp_db("rid");
    let _m = master(&dir, &server.url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ns = dir.file_name().unwrap().to_string_lossy().into_owned();
    let connect = |id: &str| {
        let opts = ipc_client::ClientOptions::new(server.url.clone(), ns.clone(), id);
        rt.block_on(ipc_client::Client::connect(opts)).unwrap().0
    };
    let (a, b) = (connect("tester-a"), connect("tester-b"));
    let lock = |rid: u64, wait_ms: u64| {
        serde_json::json!({"op": "lock", "rid": rid, "items": [[["x"], "write"]],
            "floor": 0, "lease_ms": 30000, "wait_ms": wait_ms})
    };
    let first = ask_master(&rt, &a, lock(7, 1000));
    assert_eq!(first["reply"], "granted", "{first}");
    // the same request again (a retry after a lost reply): the same lock, not a second one
    let again = ask_master(&rt, &a, lock(7, 1000));
    assert_eq!(again["reply"], "granted", "{again}");
    assert_eq!(
        (&again["id"], &again["token"]),
        (&first["id"], &first["token"])
    );
    // while it is held, another peer waits in vain
    let refused = ask_master(&rt, &b, lock(1, 200));
    assert_eq!(refused["kind"], "timeout", "{refused}");
    // the requester gives up on it: a cancel (a plain message) frees it at once
    let cancel = serde_json::to_vec(&serde_json::json!({"op": "cancel", "rid": 7})).unwrap();
    rt.block_on(a.send("master", &cancel)).unwrap();
    let t = Instant::now();
    let granted = ask_master(&rt, &b, lock(2, 5000));
    assert_eq!(granted["reply"], "granted", "{granted}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(granted["token"].as_u64() > first["token"].as_u64());
}

fn file_mib(dir: &std::path::Path) -> f64 {
    std::fs::metadata(dir.join("data.db")).unwrap().len() as f64 / (1 << 20) as f64
}

#[test]
fn file_space_held_by_dead_or_finished_workers_goes_back_to_the_master() {
    let server = Server::start();
    let dir = temp_db("space");
    let _m = master(&dir, &server.url);
    set(&dir, &server.url, "warm", "1");
    // 30 workers one after the other: each gets a pool of pages with its lock and leaves
    // with most of it unused; the master takes the rest back when it leaves
    for i in 0..30 {
        set(&dir, &server.url, &format!("small/{i}"), "1");
    }
    let after_small = file_mib(&dir);
    assert!(
        after_small < 3.0,
        "{after_small:.1} MiB after 30 small writes"
    );
    // 10 workers SIGKILLed in the commit step, after writing the pages of a 100 KB value
    let big = format!("\"{}\"", "x".repeat(100_000));
    for i in 0..10 {
        let mut w = paused_set(
            &dir,
            &server.url,
            "before-commit",
            5000,
            &format!("big/{i}"),
            &big,
        );
        w.kill();
    }
    // their writes are invisible; the space they held is reused by the next writers
    for i in 0..10 {
        set(&dir, &server.url, &format!("big/{i}"), &big);
    }
    let end = file_mib(&dir);
    // 10 committed values need ~4 MiB with their pages; without the space of the dead
    // workers coming back the file would be more than 10 MiB bigger
    assert!(end < after_small + 8.0, "{end:.1} MiB at the end");
    let (ok, out, err) = run(&mut db_node(&dir, &server.url, &["check"]), T);
    assert!(ok, "check failed: {out} {err}");
    assert_eq!(get(&dir, &server.url, "big/3").len(), big.len());
}

#[test]
fn workers_that_outlive_several_masters_keep_the_files_consistent() {
    use db_node::{Error, Value};
    let server = Server::start();
    let dir = temp_db("eras");
    let mut m = master(&dir, &server.url);
    let open = || {
        member_with(&dir, &server.url, |ipc| {
            ipc.timeout = Duration::from_millis(1000)
        })
        .expect("open a worker")
    };
    let workers = [open(), open()];
    let stop = std::sync::atomic::AtomicBool::new(false);
    let written = std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .iter()
            .enumerate()
            .flat_map(|(w, db)| (0..2).map(move |t| (w, t, db)))
            .map(|(w, t, db)| {
                let stop = &stop;
                s.spawn(move || {
                    // values of 3 KB: every commit takes pages from the process's pool
                    let value = Value::from("v".repeat(3000));
                    let mut ok = Vec::new();
                    let mut i = 0u32;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let path = format!("w{w}/t{t}/{i}");
                        match db.set(&path, value.clone()) {
                            Ok(_) => ok.push(path),
                            Err(Error::MasterUnavailable(_)) | Err(Error::Fenced(_)) => {
                                std::thread::sleep(Duration::from_millis(20))
                            }
                            Err(e) => panic!("unexpected error {e}"),
                        }
                        i += 1;
                    }
                    ok
                })
            })
            .collect();
        // the master is SIGKILLed and replaced four times under the load
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(400));
            m.kill();
            m = master(&dir, &server.url);
        }
        std::thread::sleep(Duration::from_millis(400));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("writer thread"))
            .collect::<Vec<_>>()
    });
    assert!(written.len() > 100, "only {} writes", written.len());
    // every write that succeeded is there, and the files are consistent
    for path in &written {
        assert_ne!(
            workers[0].get(path).expect("get"),
            Value::Null,
            "{path} lost"
        );
    }
    let report = workers[1].check();
    assert!(report.ok(), "{:?}", report.problems);
    drop(workers);
    let (ok, out, err) = run(&mut db_node(&dir, &server.url, &["check"]), T);
    assert!(ok, "check failed: {out} {err}");
}

#[test]
fn a_slow_transaction_callback_holds_up_only_writers_of_its_path() {
    use db_node::Value;
    let server = Server::start();
    let dir = temp_db("slowtxn");
    let _m = master(&dir, &server.url);
    let db = member_with(&dir, &server.url, |_| {}).expect("open a worker");
    db.set("slow", 1).expect("set");
    std::thread::scope(|s| {
        let (started_tx, started) = std::sync::mpsc::channel();
        let slow = s.spawn(|| {
            db.transaction("slow", move |v| {
                let _ = started_tx.send(());
                std::thread::sleep(Duration::from_millis(1500));
                match v {
                    Value::Int(i) => Some(Value::Int(i + 1)),
                    _ => None,
                }
            })
        });
        started.recv_timeout(T).expect("the callback runs");
        // meanwhile another process writes and reads elsewhere, at full speed
        let t = Instant::now();
        set(&dir, &server.url, "other", "7");
        assert_eq!(get(&dir, &server.url, "other"), "7");
        assert_eq!(get(&dir, &server.url, "slow"), "1", "not committed yet");
        let took = t.elapsed();
        assert!(took < Duration::from_millis(1000), "held up for {took:?}");
        assert!(slow.join().expect("thread").expect("commit").is_some());
    });
    assert_eq!(get(&dir, &server.url, "slow"), "2");
}

#[test]
fn a_long_snapshot_blocks_no_writer_and_its_pages_are_not_handed_out_again() {
    let server = Server::start();
    let dir = temp_db("snapshot");
    let _m = master(&dir, &server.url);
    let open = || {
        member_with(&dir, &server.url, |ipc| {
            ipc.lock_wait = Duration::from_millis(500)
        })
        .expect("open a worker")
    };
    let (a, b) = (open(), open());
    // another worker rewrites every key 30 times while the snapshot lives: it is never held
    // up (lock_wait 500 ms), and the master hands none of the retired pages out again
    let took = snapshot_outlives_rewrites(&a, &b);
    assert!(took < Duration::from_secs(10), "{took:?}");
}
