//! Realtime event subscriptions (`on(pattern, kind)`) for any process of a group.
//!
//! A subscription joins the post office, subscribes to the commit announcements
//! ([`super::announce`]), puts them back in commit order ([`super::order`]) and computes the
//! events of each commit from the record changes it carries ([`super::events`]). Values the
//! changes do not hold are read from the files through a database handle of its own (a short
//! shared snapshot per commit, no master round trip). Writers do no per-subscriber work: the
//! post office fans the announcement out.
//!
//! Everything a subscription delivers is numbered 1, 2, 3, … (`seq`), events and markers
//! alike. [`Received::Missed`] says that the events of commits `from_txn..=to_txn` could not be
//! delivered (announcements lost, e.g. while disconnected; a commit too big to carry its
//! record changes; a read that failed); [`Received::Disconnected`] that the post-office
//! connection dropped. The subscription resumes by itself when the connection is back, and
//! then reports the commits made meanwhile (up to the newest in the files) as missed at once.
//! After either marker, read the state again.

use super::announce::{Announcement, COMMITS_SUBJECT};
use super::background::{self, Ready, Started};
use super::events::{compute, EventKind, Pattern, Source};
use super::order::{InOrder, Step};
use super::watch::{sleep_until, subscribe_commits, WatchConfig, REORDER_WAIT};
use crate::error::{Error, Result};
use crate::path;
use crate::{Db, Durability, Options, Snapshot, Value};
use ipc_client::{ClientError, Event as IpcEvent};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One realtime event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Position in this subscription's delivery (1, 2, 3, …; markers count too).
    pub seq: u64,
    /// The commit that raised it.
    pub txn: u64,
    pub kind: EventKind,
    /// The concrete path P the pattern matched.
    pub path: String,
    /// The child of P (`child_*` kinds).
    pub child: Option<String>,
    /// New value (old value for `child_removed`); null when removed.
    pub value: Value,
    /// The value was read from the file after the commit: the state as of `txn` or later.
    pub reread: bool,
}

/// What a subscription delivers.
#[derive(Clone, Debug, PartialEq)]
pub enum Received {
    Event(Event),
    /// The events of commits `from_txn..=to_txn` were not delivered: read the state again.
    Missed {
        seq: u64,
        from_txn: u64,
        to_txn: u64,
    },
    /// The post-office connection dropped; events may be missed until it is back.
    Disconnected {
        seq: u64,
    },
}

impl Received {
    pub fn seq(&self) -> u64 {
        match self {
            Received::Event(e) => e.seq,
            Received::Missed { seq, .. } | Received::Disconnected { seq } => *seq,
        }
    }

    /// The JSON line `db-node watch --events` prints (see `docs/coordination.md`).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Received::Event(e) => {
                let mut j =
                    json!({"seq": e.seq, "txn": e.txn, "event": e.kind.as_str(), "path": e.path});
                if let Some(c) = &e.child {
                    j["child"] = json!(c);
                }
                j["value"] = e.value.to_json();
                if e.reread {
                    j["reread"] = json!(true);
                }
                j
            }
            Received::Missed {
                seq,
                from_txn,
                to_txn,
            } => json!({"seq": seq, "missed": {"from": from_txn, "to": to_txn}}),
            Received::Disconnected { seq } => json!({"seq": seq, "disconnected": true}),
        }
    }
}

/// Values read from the newest state: one snapshot, taken on the first read, for one commit.
struct Latest<'a> {
    db: &'a Db,
    snap: Option<Snapshot<'a>>,
}

impl Source for Latest<'_> {
    fn read(&mut self, p: &str) -> Result<Value> {
        if self.snap.is_none() {
            self.snap = Some(self.db.snapshot()?);
        }
        match &self.snap {
            Some(s) => s.get(p),
            None => Ok(Value::Null),
        }
    }
}

/// Numbering and delivery of one subscription.
struct Feed<'a, F> {
    db: &'a Db,
    pattern: Pattern,
    kind: EventKind,
    seq: u64,
    out: F,
}

impl<F: FnMut(Received) -> bool> Feed<'_, F> {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn missed(&mut self, from_txn: u64, to_txn: u64) -> bool {
        let seq = self.next_seq();
        (self.out)(Received::Missed {
            seq,
            from_txn,
            to_txn,
        })
    }

    /// Deliver what the reorder buffer handed out; false when the receiver wants no more.
    fn steps(&mut self, steps: Vec<Step<Announcement>>) -> bool {
        for step in steps {
            let keep = match step {
                Step::Gap { from, to } => self.missed(from, to),
                Step::Item(txn, a) => self.commit(txn, &a),
            };
            if !keep {
                return false;
            }
        }
        true
    }

    fn commit(&mut self, txn: u64, a: &Announcement) -> bool {
        let concerned = a.changed.iter().any(|c| match path::parse(c) {
            Ok(segs) => self.pattern.overlaps(&segs),
            Err(_) => true,
        });
        if !concerned {
            return true;
        }
        let Some(records) = a.records() else {
            return self.missed(txn, txn); // too big to carry its changes
        };
        let computed = match crate::changes::decode(&records) {
            Ok(changes) => {
                let mut src = Latest {
                    db: self.db,
                    snap: None,
                };
                compute(&self.pattern, self.kind, &changes, &mut src)
            }
            Err(_) => return self.missed(txn, txn),
        };
        let Ok(events) = computed else {
            return self.missed(txn, txn);
        };
        for c in events {
            let seq = self.next_seq();
            let e = Event {
                seq,
                txn,
                kind: c.kind,
                path: c.path,
                child: c.child,
                value: c.value,
                reread: c.reread,
            };
            if !(self.out)(Received::Event(e)) {
                return false;
            }
        }
        true
    }
}

/// A database handle for reading the newest state of a group's files (it never writes).
pub fn open_reader(dir: &Path, timeout: Duration) -> Result<Db> {
    Db::open(
        dir,
        Options {
            durability: Durability::NoSync,
            locks: None,
            coordinated: true,
            turn_wait: Some(timeout),
            ipc: None,
        },
    )
}

/// Deliver the events `kind` of `pattern` (every commit after the subscription took effect)
/// to `out` until it returns false or the client closes. `db` reads the values the commits do
/// not carry; `ready` is called once the subscription is in effect.
pub async fn run(
    db: &Db,
    cfg: WatchConfig,
    pattern: Pattern,
    kind: EventKind,
    ready: impl FnOnce(),
    out: impl FnMut(Received) -> bool,
) -> std::result::Result<(), ClientError> {
    let (client, mut events) = subscribe_commits(db.dir(), cfg, "events").await?;
    let mut order = InOrder::new(REORDER_WAIT);
    // every commit after this one is announced to us: the subscription is in effect, and a
    // commit takes the turn that this snapshot holds shared
    if let Ok(s) = db.snapshot() {
        order.start_at(s.txn() + 1);
    }
    ready();
    let mut feed = Feed {
        db,
        pattern,
        kind,
        seq: 0,
        out,
    };
    let mut down = false;
    loop {
        let deadline = order.deadline();
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = sleep_until(deadline) => {
                if !feed.steps(order.expire(Instant::now())) {
                    break;
                }
                continue;
            }
        };
        let Some(ev) = ev else { break };
        let keep = match ev {
            IpcEvent::Published {
                subject, payload, ..
            } if subject == COMMITS_SUBJECT => match Announcement::decode(&payload) {
                Ok(a) => feed.steps(order.push(a.txn, a, Instant::now())),
                Err(_) => true,
            },
            IpcEvent::Disconnected { .. } => {
                down = true;
                let seq = feed.next_seq();
                (feed.out)(Received::Disconnected { seq })
            }
            IpcEvent::Connected { .. } if down => {
                // back: once the restored subscription is in effect, the commits up to the
                // newest one in the files that were not announced to us are missed
                down = false;
                let _ = client.flush().await;
                match db.snapshot().map(|s| s.txn()) {
                    Ok(last) => feed.steps(order.skip_through(last)),
                    Err(_) => true,
                }
            }
            _ => true,
        };
        if !keep {
            break;
        }
    }
    client.close().await;
    Ok(())
}

/// Subscribe on a thread of its own: returns once the subscription is in effect; it stops
/// when the receiver is dropped (noticed at the next delivery).
pub fn spawn(
    dir: &Path,
    cfg: WatchConfig,
    pattern: &str,
    kind: EventKind,
) -> Result<mpsc::Receiver<Received>> {
    let pattern = Pattern::parse(pattern).map_err(|e| Error::InvalidPath {
        path: pattern.to_string(),
        reason: e.to_string(),
    })?;
    let db = open_reader(dir, cfg.timeout)?;
    let (tx, rx) = mpsc::channel();
    let wait = cfg.timeout + Duration::from_secs(1);
    let (_, started) = background::start(
        "db-node-events",
        wait,
        |e| e.to_string(),
        move |ready: Ready<String>| async move {
            run(
                &db,
                cfg,
                pattern,
                kind,
                move || ready.signal(),
                |r| tx.send(r).is_ok(),
            )
            .await
            .map_err(|e| e.to_string())
        },
    )
    .map_err(|e| Error::MasterUnavailable(format!("cannot start an events thread: {e}")))?;
    match started {
        Started::Ready => Ok(rx),
        Started::Failed(e) => Err(Error::MasterUnavailable(format!("cannot subscribe: {e}"))),
        Started::TimedOut => Err(Error::MasterUnavailable(
            "cannot subscribe: no subscription in time".into(),
        )),
    }
}
