//! The locks a worker process holds from the master, shared between its threads.
//!
//! When several threads of one process write the same subtree (a counter incremented by every
//! request handler), sending each one's lock request to the master and each release back would
//! cost a round trip per write. Instead, a thread that releases a grant while another thread
//! of the process waits for exactly the same paths hands it over locally: no message at all.
//! Commits stay serialized (one holder at a time) and every commit still carries the grant's
//! fencing token. To stay fair to other processes queued at the master, a grant is handed
//! over at most [`MAX_HANDOVERS`] times and for at most [`MAX_HOLD`]; then it goes back to the
//! master. A grant is never handed over when less than [`LEASE_MARGIN`] of its lease is left.

use crate::path::Segment;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Local handovers of one grant before it must go back to the master.
pub const MAX_HANDOVERS: u32 = 64;
/// Longest time one grant circulates between the threads of a process.
pub const MAX_HOLD: Duration = Duration::from_millis(5);
/// Lease that must be left for a grant to be handed over.
pub const LEASE_MARGIN: Duration = Duration::from_secs(1);

/// A grant from the master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterGrant {
    /// Lock id in the master's table (for the release).
    pub id: u64,
    pub token: u64,
    /// Conservative local end of the lease (measured from before the request was sent).
    pub expires: Instant,
    /// Post-office session the grant belongs to: the master drops every lock of a session
    /// that ends, so a grant of an earlier session is void.
    pub epoch: u64,
    /// The lease the master granted (renewals extend `expires` by as much).
    pub lease: Duration,
}

struct Held {
    /// Local id of the entry.
    key: u64,
    paths: Vec<Vec<Segment>>,
    /// None while one thread asks the master for everybody.
    grant: Option<MasterGrant>,
    since: Instant,
    handovers: u32,
    /// A thread is using it (else it waits for a waiter to pick it up).
    busy: bool,
    waiters: u32,
}

/// What a thread should do to get its lock.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// Handed over by another thread of this process: use it.
    Local(MasterGrant),
    /// Ask the master, then report the answer with [`Grants::granted`] or
    /// [`Grants::refused`]. Other threads that want the same paths wait meanwhile.
    AskMaster,
    /// Waited `wait` for a local holder in vain.
    TimedOut,
}

/// What to do with a grant a thread is done with.
#[derive(Debug, PartialEq, Eq)]
pub enum Give {
    /// A waiting thread takes it over.
    HandedOver,
    /// Send the release to the master.
    Release(MasterGrant),
    /// Unknown token (already released).
    Unknown,
}

/// See the module documentation.
#[derive(Default)]
pub struct Grants {
    held: Mutex<Entries>,
    changed: Condvar,
}

#[derive(Default)]
struct Entries {
    list: Vec<Held>,
    next_key: u64,
}

impl Grants {
    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take the grant for exactly `paths` from another thread of this process, waiting up to
    /// `wait` while one is in use (or being asked for) here; or learn that this thread must
    /// ask the master.
    pub fn take(&self, paths: &[Vec<Segment>], wait: Duration) -> Take {
        let deadline = Instant::now() + wait;
        let mut e = self.lock();
        loop {
            let Some(h) = e.list.iter_mut().find(|h| h.paths == paths) else {
                let key = e.next_key;
                e.next_key += 1;
                e.list.push(Held {
                    key,
                    paths: paths.to_vec(),
                    grant: None,
                    since: Instant::now(),
                    handovers: 0,
                    busy: true,
                    waiters: 0,
                });
                return Take::AskMaster;
            };
            if let (false, Some(g)) = (h.busy, &h.grant) {
                h.busy = true;
                h.handovers += 1;
                return Take::Local(g.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Take::TimedOut;
            }
            let key = h.key;
            h.waiters += 1;
            e = self
                .changed
                .wait_timeout(e, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if let Some(h) = e.list.iter_mut().find(|h| h.key == key) {
                h.waiters -= 1;
            }
        }
    }

    /// The master granted `paths` to the thread that was told [`Take::AskMaster`].
    pub fn granted(&self, paths: &[Vec<Segment>], grant: MasterGrant) {
        let mut e = self.lock();
        match e
            .list
            .iter_mut()
            .find(|h| h.paths == paths && h.grant.is_none())
        {
            Some(h) => {
                h.grant = Some(grant);
                h.since = Instant::now();
            }
            None => {
                let key = e.next_key;
                e.next_key += 1;
                e.list.push(Held {
                    key,
                    paths: paths.to_vec(),
                    grant: Some(grant),
                    since: Instant::now(),
                    handovers: 0,
                    busy: true,
                    waiters: 0,
                });
            }
        }
    }

    /// Asking the master for `paths` failed: the threads waiting here ask for themselves.
    pub fn refused(&self, paths: &[Vec<Segment>]) {
        let mut e = self.lock();
        e.list.retain(|h| !(h.paths == paths && h.grant.is_none()));
        self.changed.notify_all();
    }

    /// The thread holding `token` is done with it.
    pub fn give(&self, token: u64) -> Give {
        let mut e = self.lock();
        let Some(i) = e
            .list
            .iter()
            .position(|h| h.grant.as_ref().is_some_and(|g| g.token == token))
        else {
            return Give::Unknown;
        };
        let now = Instant::now();
        let h = &mut e.list[i];
        let keep = h.waiters > 0
            && h.handovers < MAX_HANDOVERS
            && now.duration_since(h.since) < MAX_HOLD
            && h.grant
                .as_ref()
                .is_some_and(|g| g.expires > now + LEASE_MARGIN);
        if keep {
            h.busy = false;
            self.changed.notify_all();
            return Give::HandedOver;
        }
        let h = e.list.swap_remove(i);
        self.changed.notify_all();
        match h.grant {
            Some(g) => Give::Release(g),
            None => Give::Unknown,
        }
    }

    /// Grants held with less than half of their lease left: time to renew them.
    pub fn due_for_renewal(&self, now: Instant) -> Vec<MasterGrant> {
        self.lock()
            .list
            .iter()
            .filter_map(|h| h.grant.as_ref())
            .filter(|g| g.expires < now + g.lease / 2)
            .cloned()
            .collect()
    }

    /// The master renewed the lease of `token` (asked at `sent`).
    pub fn renewed(&self, token: u64, sent: Instant) {
        let mut e = self.lock();
        for g in e.list.iter_mut().filter_map(|h| h.grant.as_mut()) {
            if g.token == token {
                g.expires = g.expires.max(sent + g.lease);
            }
        }
    }

    /// The grant with `token`, if this process holds it.
    pub fn get(&self, token: u64) -> Option<MasterGrant> {
        self.lock()
            .list
            .iter()
            .filter_map(|h| h.grant.as_ref())
            .find(|g| g.token == token)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn paths(p: &str) -> Vec<Vec<Segment>> {
        vec![crate::path::parse(p).unwrap()]
    }

    fn grant(token: u64) -> MasterGrant {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        MasterGrant {
            id: token * 10,
            token,
            expires: *START.get_or_init(Instant::now) + Duration::from_secs(30),
            epoch: 1,
            lease: Duration::from_secs(30),
        }
    }

    #[test]
    fn grants_past_half_their_lease_are_due_for_renewal_and_renewal_extends_them() {
        let g = Grants::default();
        let t0 = Instant::now();
        let short = MasterGrant {
            expires: t0 + Duration::from_millis(400),
            lease: Duration::from_secs(1),
            ..grant(3)
        };
        g.granted(&paths("a"), short);
        g.granted(&paths("b"), grant(4));
        let due = g.due_for_renewal(t0);
        assert_eq!(due.iter().map(|d| d.token).collect::<Vec<_>>(), vec![3]);
        g.renewed(3, t0 + Duration::from_millis(100));
        assert_eq!(g.get(3).unwrap().expires, t0 + Duration::from_millis(1100));
        assert!(g.due_for_renewal(t0).is_empty());
    }

    #[test]
    fn without_waiters_a_grant_goes_back_to_the_master() {
        let g = Grants::default();
        let p = paths("counters/a");
        assert_eq!(g.take(&p, Duration::ZERO), Take::AskMaster);
        g.granted(&p, grant(7));
        assert_eq!(g.give(7), Give::Release(grant(7)));
        assert_eq!(g.give(7), Give::Unknown);
        assert_eq!(g.take(&p, Duration::ZERO), Take::AskMaster);
        g.refused(&p);
        assert_eq!(g.take(&p, Duration::ZERO), Take::AskMaster);
    }

    #[test]
    fn a_waiting_thread_of_the_process_gets_the_grant_handed_over() {
        let g = Arc::new(Grants::default());
        let p = paths("counters/a");
        assert_eq!(g.take(&p, Duration::ZERO), Take::AskMaster);
        // a second thread waits for the answer of the first one's request
        let (g2, p2) = (g.clone(), p.clone());
        let waiter = std::thread::spawn(move || g2.take(&p2, Duration::from_secs(5)));
        let t = Instant::now();
        while g.lock().list[0].waiters == 0 && t.elapsed() < Duration::from_secs(5) {
            std::thread::yield_now();
        }
        g.granted(&p, grant(7));
        assert_eq!(g.give(7), Give::HandedOver);
        assert_eq!(waiter.join().unwrap(), Take::Local(grant(7)));
        // other paths are not served by it
        assert_eq!(
            g.take(&paths("counters/b"), Duration::ZERO),
            Take::AskMaster
        );
        assert_eq!(g.give(7), Give::Release(grant(7)));
    }

    #[test]
    fn a_busy_grant_times_out_a_waiter_and_a_short_lease_is_not_handed_over() {
        let g = Grants::default();
        let p = paths("x");
        g.granted(&p, grant(1));
        assert_eq!(g.take(&p, Duration::from_millis(20)), Take::TimedOut);
        let short = MasterGrant {
            expires: Instant::now() + Duration::from_millis(10),
            ..grant(2)
        };
        g.granted(&paths("y"), short.clone());
        g.lock().list[1].waiters = 1;
        assert_eq!(g.give(2), Give::Release(short));
    }
}
