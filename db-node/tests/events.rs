//! Realtime events (`db-node watch --events`, `Db::on`) across real processes around a
//! real `ipc-server`.

mod common;

use common::*;
use db_node::coord::events::EventKind;
use db_node::coord::realtime::Received;
use db_node::{Db, Durability, Options};
use serde_json::{json, Value as J};
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

/// A `watch --events KIND PATTERN` process, once its subscription is in effect.
fn subscriber(dir: &Path, url: &str, kind: &str, pattern: &str) -> Proc {
    let p = Proc::spawn(&mut db_node(
        dir,
        url,
        &["watch", "--events", kind, pattern],
    ));
    assert!(
        p.stderr.wait_for("watching", T).is_some(),
        "subscriber did not start: {}",
        p.stderr.drain()
    );
    p
}

fn next_json(p: &Proc) -> J {
    let line = p
        .stdout
        .wait_for("{", Duration::from_secs(10))
        .expect("an event line within 10 s");
    serde_json::from_str(&line).expect("event lines are JSON")
}

/// The next `n` lines, checking that `seq` continues from `seq_before`.
fn lines(p: &Proc, n: usize, seq_before: u64) -> Vec<J> {
    let out: Vec<J> = (0..n).map(|_| next_json(p)).collect();
    for (i, l) in out.iter().enumerate() {
        assert_eq!(l["seq"], json!(seq_before + 1 + i as u64), "{out:?}");
    }
    out
}

/// (path, child, value) of event lines.
fn pcv(ls: &[J]) -> Vec<(J, J, J)> {
    ls.iter()
        .map(|l| (l["path"].clone(), l["child"].clone(), l["value"].clone()))
        .collect()
}

/// A member of the group (a worker) in this process.
fn writer(dir: &Path, url: &str) -> Db {
    member_with(dir, url, |_| {}).expect("open a group member")
}

/// Events come in commit order (one commit may raise several).
fn in_commit_order(ls: &[J]) {
    let t: Vec<u64> = ls.iter().filter_map(|l| l["txn"].as_u64()).collect();
    assert!(t.windows(2).all(|w| w[0] <= w[1]), "{ls:?}");
}

#[test]
fn subscribers_that_joined_before_or_after_the_writer_get_its_events() {
    let server = Server::start();
    let dir = temp_db("ev-join");
    let _m = master(&dir, &server.url);
    let early = subscriber(&dir, &server.url, "value", "users/*");
    let w = writer(&dir, &server.url);
    w.set("users/a", 1).expect("set");
    w.set("posts/x", 1).expect("set");
    w.set("users/b", json!({"n": [1, 2]})).expect("set");
    let late = subscriber(&dir, &server.url, "value", "users/*");
    let member = writer(&dir, &server.url);
    let on = member.on("users/*", EventKind::Value).expect("on");
    w.set("users/c", 3).expect("set");
    w.set("users/a", "x").expect("set");
    let e = lines(&early, 4, 0);
    in_commit_order(&e);
    assert_eq!(
        pcv(&e),
        vec![
            (json!("users/a"), J::Null, json!(1)),
            (json!("users/b"), J::Null, json!({"n": [1, 2]})),
            (json!("users/c"), J::Null, json!(3)),
            (json!("users/a"), J::Null, json!("x")),
        ]
    );
    assert!(e
        .iter()
        .all(|l| l["event"] == "value" && l["reread"].is_null()));
    let l = lines(&late, 2, 0);
    assert_eq!(pcv(&l), pcv(&e[2..]));
    assert_eq!(
        [l[0]["txn"].clone(), l[1]["txn"].clone()],
        [e[2]["txn"].clone(), e[3]["txn"].clone()]
    );
    // the library API delivers the same, numbered from 1
    let got: Vec<Received> = (0..2)
        .map(|_| on.recv_timeout(Duration::from_secs(10)).expect("event"))
        .collect();
    for (i, r) in got.iter().enumerate() {
        let Received::Event(ev) = r else {
            panic!("unexpected {r:?}")
        };
        assert_eq!(ev.seq, i as u64 + 1);
        assert_eq!(ev.kind, EventKind::Value);
        assert_eq!(Some(ev.txn), l[i]["txn"].as_u64());
    }
    assert_eq!(
        got.iter().map(Received::to_json).collect::<Vec<_>>(),
        l,
        "the CLI prints Received::to_json"
    );
}

#[test]
fn each_kind_fires_for_set_update_and_remove_including_changes_above() {
    let server = Server::start();
    let dir = temp_db("ev-kinds");
    let _m = master(&dir, &server.url);
    let value = subscriber(&dir, &server.url, "value", "users/*");
    let added = subscriber(&dir, &server.url, "child_added", "users");
    let changed = subscriber(&dir, &server.url, "child_changed", "users");
    let removed = subscriber(&dir, &server.url, "child_removed", "users");
    let w = writer(&dir, &server.url);
    let alice1 = json!({"age": 1, "name": "A"});
    let alice2 = json!({"age": 2, "name": "A"});
    w.set("users/alice", alice1.clone()).expect("set");
    w.update("users/alice", json!({"age": 2})).expect("update");
    // an update inside an existing object is read from the tree of that very commit (the
    // next commits change it at once, and the events still carry this commit's value)
    // a change above the pattern: every users/* is affected
    w.set("users", json!({"bob": 1, "carol": {"x": true}}))
        .expect("set above");
    w.remove("users/bob").expect("remove");
    w.update("users", json!({"carol": 3, "dan": null}))
        .expect("update above");
    w.set("elsewhere", 1).expect("unrelated");
    w.update("users/carol", json!({"k": 1}))
        .expect("scalar to object");

    let v = lines(&value, 8, 0);
    let c = lines(&changed, 1, 0);
    in_commit_order(&v);
    assert_eq!(
        pcv(&v),
        vec![
            (json!("users/alice"), J::Null, alice1.clone()),
            (json!("users/alice"), J::Null, alice2.clone()),
            (json!("users/alice"), J::Null, J::Null),
            (json!("users/bob"), J::Null, json!(1)),
            (json!("users/carol"), J::Null, json!({"x": true})),
            (json!("users/bob"), J::Null, J::Null),
            (json!("users/carol"), J::Null, json!(3)),
            (json!("users/carol"), J::Null, json!({"k": 1})),
        ]
    );
    assert!(v.iter().all(|l| l["reread"].is_null()), "{v:?}");
    let a = lines(&added, 3, 0);
    assert_eq!(
        pcv(&a),
        vec![
            (json!("users"), json!("alice"), alice1),
            (json!("users"), json!("bob"), json!(1)),
            (json!("users"), json!("carol"), json!({"x": true})),
        ]
    );
    let c: Vec<J> = c.into_iter().chain(lines(&changed, 2, 1)).collect();
    assert_eq!(
        pcv(&c),
        vec![
            (json!("users"), json!("alice"), alice2.clone()),
            (json!("users"), json!("carol"), json!(3)),
            (json!("users"), json!("carol"), json!({"k": 1})),
        ]
    );
    let r = lines(&removed, 2, 0);
    assert_eq!(
        pcv(&r),
        vec![
            (json!("users"), json!("alice"), alice2),
            (json!("users"), json!("bob"), json!(1)),
        ]
    );
    in_commit_order(&r);
    assert!(r.iter().chain(&a).chain(&c).all(|l| l["event"].is_string()));
}

#[test]
fn events_of_concurrent_writers_arrive_in_commit_order_with_consecutive_seq() {
    let server = Server::start();
    let dir = temp_db("ev-order");
    let _m = master(&dir, &server.url);
    let sub = subscriber(&dir, &server.url, "value", "users/*/*");
    let writers: Vec<Proc> = ["p1", "p2", "p3"]
        .iter()
        .map(|p| {
            Proc::spawn(&mut db_node(
                &dir,
                &server.url,
                &["--nosync", "fill", &format!("users/{p}"), "--count", "100"],
            ))
        })
        .collect();
    let ls = lines(&sub, 300, 0);
    let txns: Vec<u64> = ls.iter().filter_map(|l| l["txn"].as_u64()).collect();
    assert!(txns.windows(2).all(|w| w[0] + 1 == w[1]), "{txns:?}");
    for p in ["p1", "p2", "p3"] {
        let mine: Vec<J> = ls
            .iter()
            .filter(|l| {
                l["path"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&format!("users/{p}/")))
            })
            .map(|l| l["value"].clone())
            .collect();
        assert_eq!(mine, (0..100).map(|i| json!(i)).collect::<Vec<_>>());
    }
    for mut w in writers {
        assert!(w.wait_exit(T).is_some_and(|s| s.success()));
    }
}

#[test]
fn a_commit_too_big_to_carry_its_changes_is_reported_missed() {
    let server = Server::start();
    let dir = temp_db("ev-big");
    let _m = master(&dir, &server.url);
    let sub = subscriber(&dir, &server.url, "child_added", "big");
    let w = writer(&dir, &server.url);
    let mut big = serde_json::Map::new();
    for i in 0..300 {
        big.insert(format!("k{i}"), json!("x".repeat(1000)));
    }
    let info = w.set("big", J::Object(big)).expect("big set");
    let small = w.update("big", json!({"z": 1})).expect("small");
    let ls = lines(&sub, 2, 0);
    assert_eq!(ls[0]["missed"], json!({"from": info.txn, "to": info.txn}));
    assert_eq!(ls[1]["txn"], json!(small.txn));
    assert_eq!(pcv(&ls[1..]), vec![(json!("big"), json!("z"), json!(1))]);
}

#[test]
fn a_subscriber_whose_connection_drops_is_told_and_learns_what_it_missed() {
    let mut server = Server::start();
    let url = server.url.clone();
    let dir = temp_db("ev-drop");
    let _m = master(&dir, &url);
    let sub = subscriber(&dir, &url, "value", "x");
    let (ok, _, err) = run(&mut db_node(&dir, &url, &["--nosync", "set", "x", "1"]), T);
    assert!(ok, "{err}");
    let first = lines(&sub, 1, 0);
    assert_eq!(first[0]["value"], json!(1));
    // the post office goes down, and a commit is made that nobody announces (as by a writer
    // killed between its commit and its announcement): a member of the group that writes
    // under the commit turn with local locks
    server.proc.kill();
    let down = lines(&sub, 1, 1);
    assert_eq!(down[0]["disconnected"], json!(true), "{down:?}");
    let silent = Db::open(
        &dir,
        Options {
            durability: Durability::NoSync,
            coordinated: true,
            ..Options::default()
        },
    )
    .expect("open as a member without announcements");
    let paused_txn = silent.set("x", 2).expect("silent commit").txn;
    drop(silent);
    server.restart();
    // write until the master is back, then once more after the subscriber surely is
    let end = Instant::now() + T;
    loop {
        let (ok, _, _) = run(
            &mut db_node(
                &dir,
                &url,
                &["--nosync", "--ipc-timeout-ms", "300", "set", "x", "3"],
            ),
            T,
        );
        if ok {
            break;
        }
        assert!(Instant::now() < end, "the master did not come back");
    }
    // the subscriber reports what it missed once it is back, then receives events again
    let mut seq = 2;
    let mut missed = Vec::new();
    let mut value = 4;
    loop {
        let Some(line) = sub.stdout.wait_for("{", Duration::from_millis(300)) else {
            assert!(Instant::now() < end, "no event after the restart");
            let v = value.to_string();
            let (ok, _, err) = run(&mut db_node(&dir, &url, &["--nosync", "set", "x", &v]), T);
            assert!(ok, "{err}");
            value += 1;
            continue;
        };
        let l: J = serde_json::from_str(&line).expect("JSON");
        seq += 1;
        assert_eq!(l["seq"], json!(seq), "{l}");
        if let Some(m) = l.get("missed") {
            missed.push(m.clone());
        }
        if l["event"] == "value" {
            break;
        }
    }
    // the silent commit is among the missed ones
    assert!(
        missed.iter().any(|m| m["from"].as_u64() <= Some(paused_txn)
            && m["to"].as_u64() >= Some(paused_txn)),
        "{missed:?}"
    );
    assert!(first[0]["txn"].as_u64() < Some(paused_txn));
}

/// The peers of the namespace of `dir` whose id starts with `prefix`, as a probe sees them.
fn peers(dir: &Path, url: &str, prefix: &str) -> usize {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ns = dir.file_name().unwrap().to_string_lossy().into_owned();
    let opts = ipc_client::ClientOptions::new(url, ns, "probe");
    let (c, _events) = rt.block_on(ipc_client::Client::connect(opts)).unwrap();
    let n = c
        .members()
        .iter()
        .filter(|(p, _)| p.starts_with(prefix))
        .count();
    rt.block_on(c.close());
    n
}

#[test]
fn the_subscriptions_of_a_process_share_one_connection_and_stay_independent() {
    let server = Server::start();
    let dir = temp_db("hub");
    let _m = master(&dir, &server.url);
    let w = writer(&dir, &server.url);
    w.set("users/ann", 1).unwrap();
    let member = writer(&dir, &server.url);
    // 20 subscriptions of one process: one post-office connection for all of them
    let values: Vec<_> = (0..10)
        .map(|_| member.on("users/*", EventKind::Value).unwrap())
        .collect();
    let added: Vec<_> = (0..10)
        .map(|_| member.on("users", EventKind::ChildAdded).unwrap())
        .collect();
    assert_eq!(peers(&dir, &server.url, "events-"), 1);
    w.set("users/bo", 2).unwrap();
    let next = |rx: &std::sync::mpsc::Receiver<Received>| match rx.recv_timeout(T) {
        Ok(Received::Event(e)) => (e.seq, e.path, e.child, e.value.to_json()),
        other => panic!("expected an event, got {other:?}"),
    };
    for rx in &values {
        assert_eq!(next(rx), (1, "users/bo".into(), None, json!(2)));
    }
    for rx in &added {
        assert_eq!(next(rx), (1, "users".into(), Some("bo".into()), json!(2)));
    }
    // dropping some receivers leaves the others alone; a late subscriber starts after the
    // newest commit, with its own numbering
    drop(values);
    let late = member.on("users/*", EventKind::Value).unwrap();
    w.set("users/cy", 3).unwrap();
    for rx in &added {
        assert_eq!(next(rx), (2, "users".into(), Some("cy".into()), json!(3)));
    }
    assert_eq!(next(&late), (1, "users/cy".into(), None, json!(3)));
    assert_eq!(peers(&dir, &server.url, "events-"), 1);
}

#[test]
fn values_of_updates_inside_an_object_are_those_of_their_own_commit() {
    let server = Server::start();
    let dir = temp_db("ev-exact");
    let _m = master(&dir, &server.url);
    let value = subscriber(&dir, &server.url, "value", "users/*");
    let w = writer(&dir, &server.url);
    w.set("users/alice", json!({"age": 0, "name": "A"}))
        .expect("set");
    // 200 updates in a row, each changing only `age` inside the object: the subscriber must
    // see every intermediate value, read from the tree of its own commit even though the
    // next commits have replaced it by then
    for age in 1..=200 {
        w.update("users/alice", json!({ "age": age }))
            .expect("update");
    }
    let v = lines(&value, 201, 0);
    in_commit_order(&v);
    for (age, l) in v.iter().enumerate() {
        assert_eq!(l["value"], json!({"age": age, "name": "A"}), "{l}");
        assert!(l["reread"].is_null(), "{l}");
    }
}
