use super::*;
use proptest::prelude::*;

fn p(s: &str) -> LockPath {
    s.split('/')
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

fn owner(peer: &str) -> Owner {
    Owner {
        peer: peer.into(),
        epoch: 1,
    }
}

const LEASE: Duration = Duration::from_secs(10);

fn req(t: &mut LockTable, who: &str, items: &[(&str, Mode)], now: Instant) -> Outcome {
    let items = items.iter().map(|(s, m)| (p(s), *m)).collect();
    t.request(owner(who), items, LEASE, now + LEASE, now)
}

fn granted(o: Outcome) -> Granted {
    match o {
        Outcome::Granted(g) => g,
        Outcome::Queued(id) => panic!("request {id} was queued"),
    }
}

fn queued(o: Outcome) -> u64 {
    match o {
        Outcome::Queued(id) => id,
        Outcome::Granted(g) => panic!("request {} was granted", g.id),
    }
}

use Mode::{Read, Write};

#[test]
fn disjoint_sibling_writes_proceed_in_parallel() {
    let now = Instant::now();
    let mut t = LockTable::new(0);
    granted(req(&mut t, "a", &[("users/alice", Write)], now));
    granted(req(&mut t, "b", &[("users/bob", Write)], now));
    granted(req(&mut t, "c", &[("users/alicex", Write)], now));
    assert_eq!(t.counts(), (3, 0));
}

#[test]
fn a_write_conflicts_with_its_subtree_and_its_ancestors() {
    let now = Instant::now();
    let mut t = LockTable::new(0);
    granted(req(&mut t, "a", &[("users/alice", Write)], now));
    queued(req(&mut t, "b", &[("users/alice/age", Read)], now));
    queued(req(&mut t, "c", &[("users", Write)], now));
    queued(req(&mut t, "d", &[("", Write)], now));
    queued(req(&mut t, "e", &[("users/alice", Read)], now));
    t.check_invariants().unwrap();
}

#[test]
fn readers_share_and_a_root_write_excludes_everything() {
    let now = Instant::now();
    let mut t = LockTable::new(0);
    granted(req(&mut t, "a", &[("users", Read)], now));
    granted(req(&mut t, "b", &[("users/alice", Read)], now));
    granted(req(&mut t, "c", &[("", Read)], now));
    queued(req(&mut t, "d", &[("", Write)], now));
    t.check_invariants().unwrap();
}

#[test]
fn tokens_only_grow_and_start_above_the_floor() {
    let now = Instant::now();
    let mut t = LockTable::new(41);
    let a = granted(req(&mut t, "a", &[("x", Write)], now));
    assert_eq!(a.token, 42);
    let (ok, _) = t.release(a.id, &owner("a"), now);
    assert!(ok);
    let b = granted(req(&mut t, "a", &[("x", Write)], now));
    assert!(b.token > a.token);
    t.raise_floor(100);
    let c = granted(req(&mut t, "b", &[("y", Write)], now));
    assert_eq!(c.token, 101);
    t.raise_floor(5);
    assert_eq!(t.last_token(), 101);
}

#[test]
fn a_waiting_writer_is_not_starved_by_later_readers() {
    let now = Instant::now();
    let mut t = LockTable::new(0);
    let r1 = granted(req(&mut t, "r1", &[("doc", Read)], now));
    let w = queued(req(&mut t, "w", &[("doc", Write)], now));
    // a new reader would be compatible with r1, but must queue behind the writer
    let r2 = queued(req(&mut t, "r2", &[("doc", Read)], now));
    // an unrelated request is not held up by the queue
    granted(req(&mut t, "x", &[("other", Write)], now));
    let (_, ch) = t.release(r1.id, &owner("r1"), now);
    assert_eq!(ch.granted.iter().map(|g| g.id).collect::<Vec<_>>(), vec![w]);
    let (_, ch) = t.release(w, &owner("w"), now);
    assert_eq!(
        ch.granted.iter().map(|g| g.id).collect::<Vec<_>>(),
        vec![r2]
    );
    t.check_invariants().unwrap();
}

#[test]
fn release_grants_waiters_in_fifo_order_and_batches_compatible_readers() {
    let now = Instant::now();
    let mut t = LockTable::new(0);
    let w0 = granted(req(&mut t, "w0", &[("a", Write)], now));
    let r1 = queued(req(&mut t, "r1", &[("a/b", Read)], now));
    let r2 = queued(req(&mut t, "r2", &[("a", Read)], now));
    let w3 = queued(req(&mut t, "w3", &[("a/c", Write)], now));
    let (_, ch) = t.release(w0.id, &owner("w0"), now);
    assert_eq!(
        ch.granted.iter().map(|g| g.id).collect::<Vec<_>>(),
        vec![r1, r2]
    );
    assert!(t.get(w3).is_none());
    let toks: Vec<u64> = ch.granted.iter().map(|g| g.token).collect();
    assert!(toks[0] > w0.token && toks[1] > toks[0]);
}

#[test]
fn only_the_owner_can_release() {
    let now = Instant::now();
    let mut t = LockTable::new(0);
    let g = granted(req(&mut t, "a", &[("x", Write)], now));
    let (ok, _) = t.release(g.id, &owner("b"), now);
    assert!(!ok);
    let stale = Owner {
        peer: "a".into(),
        epoch: 0,
    };
    assert!(!t.release(g.id, &stale, now).0);
    assert!(t.get(g.id).is_some());
}

#[test]
fn a_peer_that_left_loses_everything_at_once() {
    let now = Instant::now();
    let mut t = LockTable::new(0);
    granted(req(&mut t, "dead", &[("c", Write)], now));
    granted(req(&mut t, "dead", &[("d", Write)], now));
    let q = queued(req(&mut t, "dead", &[("c/x", Write)], now));
    let w = queued(req(&mut t, "live", &[("c", Write), ("d", Read)], now));
    let ch = t.release_owners(|o| o.peer == "dead", now);
    assert_eq!(ch.granted.iter().map(|g| g.id).collect::<Vec<_>>(), vec![w]);
    assert!(t.get(q).is_none());
    assert_eq!(t.counts(), (1, 0));
}

#[test]
fn only_the_matching_session_is_dropped() {
    let now = Instant::now();
    let mut t = LockTable::new(0);
    let old = Owner {
        peer: "w".into(),
        epoch: 1,
    };
    let new = Owner {
        peer: "w".into(),
        epoch: 2,
    };
    t.request(old.clone(), vec![(p("a"), Write)], LEASE, now + LEASE, now);
    let g = t.request(new.clone(), vec![(p("b"), Write)], LEASE, now + LEASE, now);
    t.release_owners(|o| o == &old, now);
    assert!(t.get(granted(g).id).is_some());
    assert_eq!(t.counts(), (1, 0));
}

#[test]
fn leases_expire_and_renewal_extends_them() {
    let now = Instant::now();
    let mut t = LockTable::new(0);
    let a = granted(req(&mut t, "a", &[("x", Write)], now));
    let b = granted(req(&mut t, "b", &[("y", Write)], now));
    let wa = queued(req(&mut t, "c", &[("x", Write)], now));
    assert_eq!(t.next_deadline(), Some(now + LEASE));
    let later = now + Duration::from_secs(5);
    assert!(t.renew(b.id, &owner("b"), LEASE, later));
    assert!(!t.renew(b.id, &owner("a"), LEASE, later));
    // the waiter's deadline is also now + LEASE, so move it out of the way: it gives up
    let end = now + LEASE;
    let ch = t.expire(end);
    assert_eq!(ch.expired, vec![a.id]);
    assert_eq!(ch.gave_up, vec![wa]);
    assert!(t.get(b.id).is_some());
    assert!(!t.renew(a.id, &owner("a"), LEASE, end));
}

#[test]
fn an_expired_lease_lets_the_next_writer_in() {
    let now = Instant::now();
    let mut t = LockTable::new(0);
    let a = t.request(
        owner("hung"),
        vec![(p("x"), Write)],
        Duration::from_millis(100),
        now + LEASE,
        now,
    );
    let a = granted(a);
    let w = queued(req(&mut t, "b", &[("x", Write)], now));
    let ch = t.expire(now + Duration::from_millis(100));
    assert_eq!(ch.expired, vec![a.id]);
    assert_eq!(ch.granted.len(), 1);
    assert_eq!(ch.granted[0].id, w);
    assert!(ch.granted[0].token > a.token);
}

#[test]
fn withdrawing_a_waiting_request_unblocks_those_behind_it() {
    let now = Instant::now();
    let mut t = LockTable::new(0);
    granted(req(&mut t, "r", &[("x", Read)], now));
    let w = queued(req(&mut t, "w", &[("x", Write)], now));
    let r2 = queued(req(&mut t, "r2", &[("x", Read)], now));
    let (ok, ch) = t.release(w, &owner("w"), now);
    assert!(ok);
    assert_eq!(
        ch.granted.iter().map(|g| g.id).collect::<Vec<_>>(),
        vec![r2]
    );
}

// ---- property test: random operations keep the invariants -------------------------------

#[derive(Clone, Debug)]
enum Op {
    Request {
        who: u8,
        items: Vec<(u8, bool)>,
        lease_ms: u64,
    },
    Release(u8),
    Leave(u8),
    Advance(u64),
}

const PATHS: &[&str] = &["", "a", "a/b", "a/b/c", "a/d", "e", "e/f"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, prop::collection::vec((0u8..PATHS.len() as u8, any::<bool>()), 1..3), 1u64..50)
            .prop_map(|(who, items, lease_ms)| Op::Request { who, items, lease_ms }),
        3 => any::<u8>().prop_map(Op::Release),
        1 => (0u8..4).prop_map(Op::Leave),
        1 => (1u64..30).prop_map(Op::Advance),
    ]
}

proptest! {
    #[test]
    fn random_operations_keep_the_invariants(ops in prop::collection::vec(op(), 1..80)) {
        let start = Instant::now();
        let mut now = start;
        let mut t = LockTable::new(7);
        let mut last_token = 7;
        let mut ids: Vec<(u64, Owner)> = Vec::new();
        let check_grants = |gs: &[Granted], last: &mut u64| {
            for g in gs {
                assert!(g.token > *last, "tokens must only grow");
                *last = g.token;
            }
        };
        for op in ops {
            match op {
                Op::Request { who, items, lease_ms } => {
                    let o = owner(&format!("p{who}"));
                    let items = items.iter().map(|(i, w)| (p(PATHS[*i as usize]), if *w { Write } else { Read })).collect();
                    let out = t.request(o.clone(), items, Duration::from_millis(lease_ms), now + Duration::from_millis(40), now);
                    match out {
                        Outcome::Granted(g) => { check_grants(std::slice::from_ref(&g), &mut last_token); ids.push((g.id, o)); }
                        Outcome::Queued(id) => ids.push((id, o)),
                    }
                }
                Op::Release(k) => {
                    if !ids.is_empty() {
                        let (id, o) = ids[k as usize % ids.len()].clone();
                        let (_, ch) = t.release(id, &o, now);
                        check_grants(&ch.granted, &mut last_token);
                    }
                }
                Op::Leave(who) => {
                    let name = format!("p{who}");
                    let ch = t.release_owners(|o| o.peer == name, now);
                    check_grants(&ch.granted, &mut last_token);
                }
                Op::Advance(ms) => {
                    now += Duration::from_millis(ms);
                    let ch = t.expire(now);
                    check_grants(&ch.granted, &mut last_token);
                }
            }
            prop_assert_eq!(t.check_invariants(), Ok(()));
            prop_assert!(t.last_token() == last_token);
        }
    }
}
