//! The master: the one process of a coordinated group that serves the lock table.
//!
//! Start-up order matters for "exactly one master":
//! 1. take `master.lock` (fs2, exclusive, never waits): a second master stops here with
//!    [`MasterError::Files`] naming the holder's pid — before it touches the post office;
//! 2. take the directory lock shared (an uncoordinated single-process open now fails, and we
//!    fail if one is running);
//! 3. read the fencing high-water mark from the meta page (under the commit turn) and the
//!    reservation in `master.fence`; tokens start above both;
//! 4. join the database's namespace as the well-known peer `master`. The post office refuses a
//!    duplicate id, a second line of defence; a just-killed master's session may linger for a
//!    moment, so that refusal is retried for a few seconds.
//!
//! Then one task serves requests and membership events in arrival order. A worker that
//! `Left` (SIGKILL is reported within about a second) loses its locks and queued requests at
//! once; a worker that reconnects with a new session epoch loses those of its old session;
//! a hung worker loses them when its lease runs out.

use super::fence_map::FenceMap;
use super::files::{namespace_for, FenceReserve, FileLockError, MasterLock};
use super::lock_table::{Changes, Granted, LockTable, Outcome, Owner};
use super::pages::PageRanges;
use super::space::SpaceTable;
use super::wire::{ErrorKind, Reply, Request, MASTER_PEER};
use crate::alloc::NoSpace;
use crate::error::Error;
use crate::readers::ReaderTable;
use crate::store::ProcessLock;
use crate::{Db, Options};
use ipc_client::{Client, ClientError, ClientOptions, Event, IncomingRequest};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How to run a master.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    pub dir: PathBuf,
    /// `ws://` or `wss://` URL of the post office.
    pub url: String,
    pub token: Option<String>,
    /// Extra trusted CA certificates (PEM) for `wss://`.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// Namespace; by default the database directory's name.
    pub namespace: Option<String>,
    /// Longest lease granted, whatever a worker asks for.
    pub max_lease: Duration,
}

/// Why a master stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Files(#[from] FileLockError),
    #[error(transparent)]
    Db(#[from] Error),
    #[error("cannot join the post office at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: ClientError,
    },
    #[error("the post office connection was closed")]
    Closed,
}

/// Everything the master holds while it runs; dropping it releases the file locks.
struct Held {
    _master: MasterLock,
    _dir: ProcessLock,
}

/// Run a master until `shutdown` completes. `ready` is called with the namespace once the
/// master serves requests.
pub async fn run_master(
    cfg: MasterConfig,
    ready: impl FnOnce(&str),
    shutdown: impl Future<Output = ()>,
) -> Result<(), MasterError> {
    std::fs::create_dir_all(&cfg.dir).map_err(|e| Error::io(&cfg.dir, e))?;
    let master = MasterLock::acquire(&cfg.dir)?;
    let dir_lock = ProcessLock::acquire_mode(&cfg.dir, true)?;
    let _held = Held {
        _master: master,
        _dir: dir_lock,
    };
    // The master's own view of the files: it never writes through it, it follows the
    // allocation state (see `space`).
    let db = Db::open(
        &cfg.dir,
        Options {
            coordinated: true,
            ..Options::default()
        },
    )?;
    db.set_space(|pc| Box::new(NoSpace(pc)));
    let fence = db.fence_high_water();
    let space = db
        .follow_alloc(Duration::from_secs(10), |table, pc, txn, _| {
            SpaceTable::new(pc, txn, |p| table.get(p))
        })?
        .ok_or_else(|| {
            Error::LockTimeout("the commit turn stayed busy while the master started".into())
        })?;
    let mut reserve = FenceReserve::load(&cfg.dir)?;
    let table = LockTable::new(fence.max(reserve.ceiling()));
    reserve.ensure(table.last_token() + 1)?;
    // a new era in fence.map: every token of an earlier master is void from here on
    let fences = FenceMap::start(&cfg.dir, table.last_token())?;
    let ns = cfg
        .namespace
        .clone()
        .unwrap_or_else(|| namespace_for(&cfg.dir));
    let mut opts = ClientOptions::new(cfg.url.clone(), ns.clone(), MASTER_PEER);
    opts.token = cfg.token.clone();
    opts.tls_ca_pem = cfg.tls_ca_pem.clone();
    let (client, mut events) =
        connect_retrying(opts)
            .await
            .map_err(|source| MasterError::Connect {
                url: cfg.url.clone(),
                source,
            })?;
    let mut m = Master {
        client: client.clone(),
        table,
        reserve,
        era: fences.base(),
        fences,
        db,
        space,
        readers: ReaderTable::open(&cfg.dir)?,
        members: HashMap::new(),
        pending: HashMap::new(),
        by_rid: HashMap::new(),
        max_lease: cfg.max_lease,
    };
    ready(&ns);
    tokio::pin!(shutdown);
    let result = loop {
        let wake = m
            .table
            .next_deadline()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        // settling pages are looked at within 100 ms
        let wake = match m.space.settling_pages() {
            0 => wake,
            _ => wake.min(Instant::now() + Duration::from_millis(100)),
        };
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                if let Err(e) = m.reserve_for_promotion() {
                    break Err(e.into());
                }
                if m.space.settling_pages() > 0 {
                    m.follow();
                }
                let ch = m.table.expire(Instant::now());
                m.answer(ch).await;
            }
            ev = events.recv() => match ev {
                None => break Err(MasterError::Closed),
                Some(ev) => {
                    if let Err(e) = m.on_event(ev).await {
                        break Err(e);
                    }
                }
            },
        }
    };
    client.close().await;
    result
}

/// Connect; a refusal of our id as a duplicate is retried for a while (the previous master's
/// session may not have been noticed as gone yet).
async fn connect_retrying(
    opts: ClientOptions,
) -> Result<(Client, ipc_client::Events), ClientError> {
    let start = Instant::now();
    loop {
        match Client::connect(opts.clone()).await {
            Err(ClientError::DuplicatePeer(_)) if start.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => return r,
        }
    }
}

/// How long the master waits for the commit turn to look at the files' allocation state.
const FOLLOW_WAIT: Duration = Duration::from_millis(2);
/// Most pages one request gets.
const MAX_PAGES_PER_GRANT: u64 = 1 << 16;

struct Master {
    client: Client,
    table: LockTable,
    reserve: FenceReserve,
    /// Live tokens, for workers to check in their commit step.
    fences: FenceMap,
    /// This master's era: the pages it hands out belong to it.
    era: u64,
    /// Its view of the files, to follow the allocation state.
    db: Db,
    /// Its allocation table.
    space: SpaceTable,
    /// The oldest commit that snapshots of the group may still read.
    readers: ReaderTable,
    /// Session epoch of every member, from the welcome and later joined/left events.
    members: HashMap<String, u64>,
    /// Queued lock requests, by lock id, waiting for an answer (with the pages they want).
    pending: HashMap<u64, (IncomingRequest, u64)>,
    /// Lock ids of the requests that carried a request id, so that a request sent again
    /// gets the same lock and a cancel finds it.
    by_rid: HashMap<(Owner, u64), u64>,
    max_lease: Duration,
}

impl Master {
    async fn on_event(&mut self, ev: Event) -> Result<(), MasterError> {
        let now = Instant::now();
        match ev {
            Event::Connected { members, .. } => {
                self.members = members.into_iter().collect();
                let members = self.members.clone();
                self.reserve_for_promotion()?;
                // (Re)connected: sessions not in the member list are over (after a post-office
                // restart every session is new), so their locks go.
                let gone = |o: &Owner| members.get(&o.peer) != Some(&o.epoch);
                self.space.owners_gone(gone);
                let ch = self.table.release_owners(gone, now);
                self.answer(ch).await;
            }
            Event::Joined { peer, epoch } => {
                self.members.insert(peer.clone(), epoch);
                self.reserve_for_promotion()?;
                let gone = |o: &Owner| o.peer == peer && o.epoch < epoch;
                self.space.owners_gone(gone);
                let ch = self.table.release_owners(gone, now);
                self.answer(ch).await;
            }
            Event::Left { peer, epoch, .. } => {
                if self.members.get(&peer) == Some(&epoch) {
                    self.members.remove(&peer);
                }
                self.pending.retain(|_, (r, _)| r.from != peer);
                self.reserve_for_promotion()?;
                let gone = |o: &Owner| o.peer == peer && o.epoch <= epoch;
                self.space.owners_gone(gone);
                let ch = self.table.release_owners(gone, now);
                // its pages come back now if the turn is free (else at the next look)
                if self.space.settling_pages() > 0 {
                    self.follow();
                }
                self.answer(ch).await;
            }
            Event::Request(req) => self.on_request(req, now).await?,
            // A release sent as a plain message (no reply): the worker does not wait for it.
            Event::Message { from, payload } => {
                let owner = Owner {
                    epoch: self.members.get(&from).copied().unwrap_or(0),
                    peer: from,
                };
                let id = match Request::decode(&payload) {
                    Ok(Request::Release { id }) => id,
                    Ok(Request::Cancel { rid }) => match self.by_rid.get(&(owner.clone(), rid)) {
                        Some(&id) => id,
                        None => return Ok(()),
                    },
                    _ => return Ok(()),
                };
                self.reserve_for_promotion()?;
                let (_, ch) = self.table.release(id, &owner, now);
                self.pending.remove(&id);
                self.answer(ch).await;
            }
            _ => {}
        }
        Ok(())
    }

    /// Reserve tokens for everything that one operation may grant (the request itself plus
    /// every waiting request), before the table hands any of them out.
    fn reserve_for_promotion(&mut self) -> Result<(), Error> {
        let (_, waiting) = self.table.counts();
        self.reserve
            .ensure(self.table.last_token() + waiting as u64 + 1)
    }

    async fn on_request(&mut self, req: IncomingRequest, now: Instant) -> Result<(), MasterError> {
        let owner = Owner {
            peer: req.from.clone(),
            epoch: self.members.get(&req.from).copied().unwrap_or(0),
        };
        let parsed = match Request::decode(&req.payload) {
            Ok(r) => r,
            Err(e) => {
                let reply = Reply::Error {
                    kind: ErrorKind::BadRequest,
                    message: format!("cannot parse the request: {e}"),
                };
                let _ = self.client.reply(&req, &reply.encode()).await;
                return Ok(());
            }
        };
        match parsed {
            Request::Lock {
                rid,
                items,
                floor,
                lease_ms,
                wait_ms,
                pages,
                used,
            } => {
                self.space.used(&owner, &PageRanges::from_wire(&used));
                let req = match rid {
                    0 => req,
                    _ => match self.repeated(&owner, rid, req).await {
                        Some(req) => req,
                        None => return Ok(()),
                    },
                };
                let lease = Duration::from_millis(lease_ms.max(1)).min(self.max_lease);
                let deadline = (now + Duration::from_millis(wait_ms)).min(req.deadline);
                self.table.raise_floor(floor);
                self.reserve_for_promotion()?;
                let key = (owner.clone(), rid);
                match self.table.request(owner, items, lease, deadline, now) {
                    Outcome::Granted(g) => {
                        if rid != 0 {
                            self.by_rid.insert(key, g.id);
                        }
                        self.fences.set_live(g.token);
                        self.send_granted(&req, &g, pages, now).await;
                    }
                    Outcome::Queued(id) => {
                        if rid != 0 {
                            self.by_rid.insert(key, id);
                        }
                        self.pending.insert(id, (req, pages));
                    }
                }
            }
            Request::Release { id } => {
                self.reserve_for_promotion()?;
                let (held, ch) = self.table.release(id, &owner, now);
                self.pending.remove(&id);
                let _ = self
                    .client
                    .reply(&req, &Reply::Done { held }.encode())
                    .await;
                self.answer(ch).await;
            }
            Request::Space { pages, used } => {
                self.space.used(&owner, &PageRanges::from_wire(&used));
                // sent from inside a commit step: the turn is taken, do not wait for it
                let reply = Reply::Space {
                    pages: self.give_pages(&owner, pages, false),
                    era: self.era,
                };
                let _ = self.client.reply(&req, &reply.encode()).await;
            }
            Request::Cancel { rid } => {
                let id = self.by_rid.get(&(owner.clone(), rid)).copied();
                let (held, ch) = match id {
                    Some(id) => self.table.release(id, &owner, now),
                    None => (false, Changes::default()),
                };
                if let Some(id) = id {
                    self.pending.remove(&id);
                }
                let _ = self
                    .client
                    .reply(&req, &Reply::Done { held }.encode())
                    .await;
                self.answer(ch).await;
            }
            Request::Renew { id, lease_ms } => {
                let lease = Duration::from_millis(lease_ms.max(1)).min(self.max_lease);
                let held = self.table.renew(id, &owner, lease, now);
                let _ = self
                    .client
                    .reply(&req, &Reply::Done { held }.encode())
                    .await;
            }
        }
        Ok(())
    }

    /// A lock request sent again (same owner and `rid`): answer with the lock already granted
    /// for it, or let the new copy wait in place of the old one. Gives the request back when
    /// it is not a repetition or the first request's lock is gone (then it is served anew).
    async fn repeated(
        &mut self,
        owner: &Owner,
        rid: u64,
        req: IncomingRequest,
    ) -> Option<IncomingRequest> {
        let Some(&id) = self.by_rid.get(&(owner.clone(), rid)) else {
            return Some(req);
        };
        if let Some(g) = self.table.get(id).cloned() {
            // (pages sent with the first reply, if it was lost, stay this session's until
            // it ends)
            self.send_granted(&req, &g, 0, Instant::now()).await;
            return None;
        }
        if let Some((old, _)) = self.pending.get_mut(&id) {
            *old = req;
            return None;
        }
        self.by_rid.remove(&(owner.clone(), rid));
        Some(req)
    }

    /// Answer `req` with lock `g`: the lease it has left at `now`, and `want` pages for its
    /// owner.
    async fn send_granted(&mut self, req: &IncomingRequest, g: &Granted, want: u64, now: Instant) {
        let reply = Reply::Granted {
            id: g.id,
            token: g.token,
            lease_ms: g.expires.saturating_duration_since(now).as_millis() as u64,
            pages: self.give_pages(&g.owner, want, true),
            era: self.era,
        };
        let _ = self.client.reply(req, &reply.encode()).await;
    }

    /// Hand `want` pages to `owner` (`[start, count]` ranges). When free pages run short and
    /// `may_wait`, first look at the files for pages freed since (waiting a moment for the
    /// commit turn); else the file grows.
    fn give_pages(&mut self, owner: &Owner, want: u64, may_wait: bool) -> Vec<(u64, u64)> {
        if want == 0 {
            return Vec::new();
        }
        // (settling pages are looked at by the timer; a request waits for the turn only when
        // the free list cannot serve it)
        if may_wait && self.space.free_pages() < want {
            self.follow();
        }
        // pages retired by commits that a snapshot somewhere may still read wait
        self.space.release(self.readers.oldest());
        self.space
            .grant(owner, want.min(MAX_PAGES_PER_GRANT))
            .to_wire()
    }

    /// Catch up with the files' allocation state (see `space`). Skipped when the commit turn
    /// stays busy for [`FOLLOW_WAIT`]: the next look catches up.
    fn follow(&mut self) {
        let space = &mut self.space;
        let r = self
            .db
            .follow_alloc(FOLLOW_WAIT, |table, pc, txn, changed| {
                if changed.full {
                    space.rebuild(pc, txn, |p| table.get(p));
                } else {
                    space.follow(pc, txn, &changed.flipped, |p| table.get(p));
                }
            });
        if let Err(e) = r {
            eprintln!("db-node master: cannot read the allocation state: {e}");
        }
    }

    /// Forget the request ids of locks that are neither granted nor waiting any more.
    fn forget_rids(&mut self) {
        let (table, pending) = (&self.table, &self.pending);
        self.by_rid
            .retain(|_, id| table.get(*id).is_some() || pending.contains_key(id));
    }

    /// Answer the requesters whose requests were granted or gave up. Ended locks are marked
    /// in `fence.map` first, so their holders can no longer commit when the next holder of a
    /// conflicting lock hears of its grant.
    async fn answer(&mut self, ch: Changes) {
        for &t in &ch.ended {
            self.fences.set_ended(t);
        }
        for g in &ch.granted {
            self.fences.set_live(g.token);
        }
        for g in ch.granted {
            if let Some((req, want)) = self.pending.remove(&g.id) {
                self.send_granted(&req, &g, want, Instant::now()).await;
            }
        }
        for id in ch.gave_up {
            if let Some((req, _)) = self.pending.remove(&id) {
                let reply = Reply::Error {
                    kind: ErrorKind::Timeout,
                    message: "conflicting locks were still held".into(),
                };
                let _ = self.client.reply(&req, &reply.encode()).await;
            }
        }
        if self.by_rid.len() > 2 * (self.table.counts().0 + self.pending.len()) + 64 {
            self.forget_rids();
        }
    }
}
