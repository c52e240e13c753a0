//! Realtime event subscriptions (`on(pattern, kind)`) for any process of a group.
//!
//! A process has one **feed** ([`Hub`]) for all its subscriptions: one post-office connection
//! subscribed to the commit announcements ([`super::announce`]), one reorder buffer putting
//! them back in commit order ([`super::order`]), and one database handle reading the values
//! the announcements do not carry (one short snapshot per commit, whatever the number
//! of subscribers; no master round trip). Each subscriber computes the events of each commit
//! from the record changes it carries ([`super::events`]). Writers do no per-subscriber work:
//! the post office fans the announcement out to each process once.
//!
//! Everything a subscription delivers is numbered 1, 2, 3, … (`seq`), events and markers
//! alike. [`Received::Missed`] says that the events of commits `from_txn..=to_txn` could not be
//! delivered (announcements lost, e.g. while disconnected; a commit too big to carry its
//! record changes; a read that failed); [`Received::Disconnected`] that the post-office
//! connection dropped. The subscription resumes by itself when the connection is back, and
//! then reports the commits made meanwhile (up to the newest in the files) as missed at once.
//! After either marker, read the state again.

use super::announce::{Announcement, COMMITS_SUBJECT};
use super::background::{self, Ready};
use super::events::{compute, EventKind, Pattern, Source};
use super::order::{InOrder, Step};
use super::watch::{sleep_until, subscribe_commits, WatchConfig, REORDER_WAIT};
use crate::changes::Change;
use crate::error::{Error, Result};
use crate::path;
use crate::{Db, Durability, Options, Snapshot, Value};
use ipc_client::{ClientError, Event as IpcEvent};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc as amc;

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

/// One subscriber: its pattern, kind, numbering and receiver.
struct Sub {
    pattern: Pattern,
    kind: EventKind,
    seq: u64,
    /// It started right after this commit: earlier ones do not concern it.
    after: u64,
    out: Box<dyn FnMut(Received) -> bool + Send>,
}

impl Sub {
    fn new(
        pattern: Pattern,
        kind: EventKind,
        out: impl FnMut(Received) -> bool + Send + 'static,
    ) -> Sub {
        Sub {
            pattern,
            kind,
            seq: 0,
            after: 0,
            out: Box::new(out),
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn missed(&mut self, from_txn: u64, to_txn: u64) -> bool {
        let from_txn = from_txn.max(self.after + 1);
        if from_txn > to_txn {
            return true;
        }
        let seq = self.next_seq();
        (self.out)(Received::Missed {
            seq,
            from_txn,
            to_txn,
        })
    }

    fn disconnected(&mut self) -> bool {
        let seq = self.next_seq();
        (self.out)(Received::Disconnected { seq })
    }

    /// The events of commit `txn` for this subscriber (`changes`: its record changes, `None`
    /// when it did not carry them or they were damaged); false when the receiver is gone.
    fn commit(
        &mut self,
        txn: u64,
        changed: &[Vec<crate::path::Segment>],
        changes: Option<&[Change<'_>]>,
        src: &mut impl Source,
    ) -> bool {
        if txn <= self.after || !changed.iter().any(|c| self.pattern.overlaps(c)) {
            return true;
        }
        let Some(changes) = changes else {
            return self.missed(txn, txn);
        };
        let Ok(events) = compute(&self.pattern, self.kind, changes, src) else {
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

/// Values read from the state of the commit itself.
struct At<'s, 'a> {
    snap: &'s Snapshot<'a>,
}

impl Source for At<'_, '_> {
    fn read(&mut self, p: &str) -> Result<Value> {
        self.snap.get(p)
    }
    fn exact(&self) -> bool {
        true
    }
}

/// Deliver what the reorder buffer handed out to every subscriber, dropping those whose
/// receiver is gone.
///
/// `pin` is a snapshot of the last commit delivered (or older): while it is open no process
/// reuses the pages of any later commit, so the values of commit `txn` are read from `txn`'s
/// own tree (its root travels in the announcement), exactly as they were. Then the pin moves
/// to `txn`. Without a pin or a root, values come from the newest state (`reread`).
fn deliver<'a>(
    db: &'a Db,
    subs: &mut Vec<Sub>,
    pin: &mut Option<Snapshot<'a>>,
    steps: Vec<Step<Announcement>>,
) {
    for step in steps {
        match step {
            Step::Gap { from, to } => subs.retain_mut(|s| s.missed(from, to)),
            Step::Item(txn, a) => {
                let changed: Vec<_> = a
                    .changed
                    .iter()
                    // an unreadable path concerns everybody: the root
                    .map(|c| path::parse(c).unwrap_or_default())
                    .collect();
                let records = a.records();
                let changes = records
                    .as_deref()
                    .and_then(|r| crate::changes::decode(r).ok());
                let pinned = pin.as_ref().map(|p| p.txn());
                let fresh = match (pinned, a.head) {
                    (Some(p), Some((root, pages))) if p < txn => {
                        db.snapshot_of(txn, root, pages).ok()
                    }
                    _ => None,
                };
                let exact = match (&fresh, pin.as_ref()) {
                    (Some(f), _) => Some(f),
                    (None, Some(p)) if p.txn() == txn => Some(p),
                    _ => None,
                };
                match exact {
                    Some(snap) => {
                        let mut src = At { snap };
                        subs.retain_mut(|s| s.commit(txn, &changed, changes.as_deref(), &mut src));
                    }
                    None => {
                        let mut src = Latest { db, snap: None };
                        subs.retain_mut(|s| s.commit(txn, &changed, changes.as_deref(), &mut src));
                    }
                }
                if fresh.is_some() {
                    *pin = fresh;
                } else if pinned.is_none_or(|p| p < txn) {
                    // lost track: follow from the newest state on
                    *pin = db.snapshot().ok();
                }
            }
        }
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

/// The newest commit in the files (a new subscriber starts after it).
fn newest(db: &Db) -> Option<u64> {
    db.snapshot().ok().map(|s| s.txn())
}

/// A subscriber joining a running feed; `ready` is told once it is in effect.
struct Join {
    sub: Sub,
    ready: mpsc::Sender<()>,
}

/// Run a feed: deliver to `subs` and to the subscribers that `joins` brings, until the client
/// closes, or `joins` is closed, or (without `joins`) no subscriber is left. `ready` is called
/// once the feed's subscription to the announcements is in effect.
async fn serve(
    db: &Db,
    cfg: WatchConfig,
    mut subs: Vec<Sub>,
    mut joins: Option<amc::UnboundedReceiver<Join>>,
    ready: impl FnOnce(),
) -> std::result::Result<(), ClientError> {
    let (client, mut events) = subscribe_commits(db.dir(), cfg, "events").await?;
    let mut order = InOrder::new(REORDER_WAIT);
    // every commit after this one is announced to us: the subscription is in effect, and a
    // commit is announced after its meta page is written, so after this read saw an older one
    // the pin: see `deliver`
    let mut pin = db.snapshot().ok();
    if let Some(last) = pin.as_ref().map(|p| p.txn()) {
        order.start_at(last + 1);
        for s in &mut subs {
            s.after = last;
        }
    }
    ready();
    let mut down = false;
    loop {
        if joins.is_none() && subs.is_empty() {
            break;
        }
        let deadline = order.deadline();
        let join = async {
            match joins.as_mut() {
                Some(j) => j.recv().await,
                None => std::future::pending().await,
            }
        };
        let ev = tokio::select! {
            ev = events.recv() => ev,
            j = join => {
                let Some(mut j) = j else { break };
                // starts after the newest commit in the files: every later one is announced
                // to this feed (subscribed already), so it is delivered or reported missed
                j.sub.after = newest(db).unwrap_or(0);
                subs.push(j.sub);
                let _ = j.ready.send(());
                continue;
            }
            _ = sleep_until(deadline) => {
                deliver(db, &mut subs, &mut pin, order.expire(Instant::now()));
                continue;
            }
        };
        let Some(ev) = ev else { break };
        match ev {
            IpcEvent::Published {
                subject, payload, ..
            } if subject == COMMITS_SUBJECT => {
                if let Ok(a) = Announcement::decode(&payload) {
                    deliver(
                        db,
                        &mut subs,
                        &mut pin,
                        order.push(a.txn, a, Instant::now()),
                    );
                }
            }
            IpcEvent::Disconnected { .. } => {
                down = true;
                // commits go on without us: do not hold their space back
                pin = None;
                subs.retain_mut(|s| s.disconnected());
            }
            IpcEvent::Connected { .. } if down => {
                // back: once the restored subscription is in effect, the commits up to the
                // newest one in the files that were not announced to us are missed
                down = false;
                let _ = client.flush().await;
                pin = db.snapshot().ok();
                if let Some(last) = pin.as_ref().map(|p| p.txn()) {
                    deliver(db, &mut subs, &mut pin, order.skip_through(last));
                }
            }
            _ => {}
        }
    }
    client.close().await;
    Ok(())
}

/// Deliver the events `kind` of `pattern` (every commit after the subscription took effect)
/// to `out` until it returns false or the client closes: a feed with one subscriber (the
/// CLI's `watch --events`). `db` reads the values the commits do not carry; `ready` is called
/// once the subscription is in effect.
pub async fn run(
    db: &Db,
    cfg: WatchConfig,
    pattern: Pattern,
    kind: EventKind,
    ready: impl FnOnce(),
    out: impl FnMut(Received) -> bool + Send + 'static,
) -> std::result::Result<(), ClientError> {
    serve(db, cfg, vec![Sub::new(pattern, kind, out)], None, ready).await
}

/// The feed of a process: one thread, one post-office connection and one read handle for all
/// its subscriptions. It stops when dropped.
pub struct Hub {
    joins: amc::UnboundedSender<Join>,
    wait: Duration,
}

impl Hub {
    /// Start the feed of the database in `dir`; returns once it is subscribed.
    pub fn start(dir: &Path, cfg: WatchConfig) -> Result<Hub> {
        let db = open_reader(dir, cfg.timeout)?;
        let (joins, rx) = amc::unbounded_channel();
        let wait = cfg.timeout + Duration::from_secs(1);
        background::start_subscription(
            "db-node-events",
            "an events",
            "cannot subscribe",
            cfg.timeout,
            move |ready: Ready<String>| async move {
                serve(&db, cfg, Vec::new(), Some(rx), move || ready.signal())
                    .await
                    .map_err(|e| e.to_string())
            },
        )?;
        Ok(Hub { joins, wait })
    }

    /// Whether the feed still runs (it stops if its connection is closed for good).
    pub fn is_running(&self) -> bool {
        !self.joins.is_closed()
    }

    /// Subscribe: returns once the subscription is in effect; it ends when the receiver is
    /// dropped (noticed at the next delivery).
    pub fn on(&self, pattern: &str, kind: EventKind) -> Result<mpsc::Receiver<Received>> {
        let pattern = Pattern::parse(pattern).map_err(|e| Error::InvalidPath {
            path: pattern.to_string(),
            reason: e.to_string(),
        })?;
        let (tx, rx) = mpsc::channel();
        let (ready, joined) = mpsc::channel();
        let sub = Sub::new(pattern, kind, move |r| tx.send(r).is_ok());
        self.joins
            .send(Join { sub, ready })
            .map_err(|_| Error::MasterUnavailable("the events feed has stopped".into()))?;
        joined.recv_timeout(self.wait).map_err(|_| {
            Error::MasterUnavailable("cannot subscribe: the feed did not answer".into())
        })?;
        Ok(rx)
    }
}
