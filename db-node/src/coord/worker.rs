//! The worker side: a [`LockProvider`] that asks the master through the post office and
//! announces commits.
//!
//! Every request to the master has a deadline: a dead, hung or absent master, or a lost
//! post-office connection, ends the request with [`Error::MasterUnavailable`] within
//! `timeout` (plus the lock wait the worker asked for), never a hang. A lock the master could
//! not grant within the wait is [`Error::LockTimeout`].
//!
//! The worker connects lazily, on its first write: reads never talk to anybody.

use super::announce::{Announcement, COMMITS_SUBJECT};
use super::fence_map::FenceMap;
use super::files::namespace_for;
use super::grants::{Give, Grants, MasterGrant, Take};
use super::lock_table::Mode;
use super::pages::PageRanges;
use super::space_pool::{Ask, SpacePool};
use super::wire::{ErrorKind, Reply, Request, MASTER_PEER};
use crate::error::{Error, Result};
use crate::lock::{Grant, LockProvider};
use crate::path::Segment;
use crate::CommitInfo;
use ipc_client::{Client, ClientOptions, Event, RequestError};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How a worker reaches its master.
#[derive(Clone, Debug)]
pub struct IpcConfig {
    /// `ws://` or `wss://` URL of the post office.
    pub url: String,
    pub token: Option<String>,
    /// Extra trusted CA certificates (PEM) for `wss://`.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// Namespace; by default the database directory's name.
    pub namespace: Option<String>,
    /// Deadline of each request to the master (and of connecting).
    pub timeout: Duration,
    /// How long the master may keep a lock request waiting for conflicting locks, and how long
    /// an operation waits for the commit turn.
    pub lock_wait: Duration,
    /// Lease asked for each lock.
    pub lease: Duration,
    /// Test hook: sleep this long right before each commit is validated and written (after
    /// the transaction wrote its pages), so a test can kill the worker mid-transaction.
    pub pause_before_commit: Option<Duration>,
    /// Test hook: sleep this long after each lock is granted by the master, before the
    /// commit turn is taken.
    pub pause_after_grant: Option<Duration>,
}

impl IpcConfig {
    pub fn new(url: impl Into<String>) -> Self {
        IpcConfig {
            url: url.into(),
            token: None,
            tls_ca_pem: None,
            namespace: None,
            timeout: Duration::from_secs(5),
            lock_wait: Duration::from_secs(10),
            lease: Duration::from_secs(30),
            pause_before_commit: None,
            pause_after_grant: None,
        }
    }
}

/// How often held grants are looked at for renewal.
const RENEW_TICK: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// [`LockProvider`] served by the master. Owns a small runtime for its post-office client, so
/// it can be called from plain threads (not from inside another tokio runtime).
pub struct IpcLocks {
    cfg: IpcConfig,
    dir: std::path::PathBuf,
    /// `fence.map`, mapped at the first commit.
    fences: Mutex<Option<std::sync::Arc<FenceMap>>>,
    namespace: String,
    peer_id: String,
    rt: tokio::runtime::Runtime,
    client: Mutex<Option<Client>>,
    /// Grants held from the master, handed between this process's threads.
    grants: std::sync::Arc<Grants>,
    /// File pages from the master (see `space_pool`).
    pool: SpacePool,
    /// Ids of lock requests (`rid`), unique within this process.
    next_rid: std::sync::atomic::AtomicU64,
    /// Counts the master's departures seen in the post office, so a request in flight fails
    /// at once when the master dies instead of waiting for its deadline.
    master_left: tokio::sync::watch::Sender<u64>,
}

impl IpcLocks {
    /// A provider for the database in `dir`; nothing is connected yet.
    pub fn new(dir: &Path, cfg: IpcConfig) -> Result<IpcLocks> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("db-node-ipc")
            .enable_all()
            .build()
            .map_err(|e| Error::MasterUnavailable(format!("cannot start the IPC runtime: {e}")))?;
        let namespace = cfg.namespace.clone().unwrap_or_else(|| namespace_for(dir));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Ok(IpcLocks {
            peer_id: format!("worker-{}-{nanos:x}", std::process::id()),
            cfg,
            dir: dir.to_path_buf(),
            fences: Mutex::new(None),
            namespace,
            rt,
            client: Mutex::new(None),
            grants: Default::default(),
            next_rid: 1.into(),
            pool: SpacePool::default(),
            master_left: tokio::sync::watch::channel(0).0,
        })
    }

    /// This worker's peer id in the namespace.
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    fn client(&self) -> Result<Client> {
        let mut slot = lock(&self.client);
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let mut opts = ClientOptions::new(&self.cfg.url, &self.namespace, &self.peer_id)
            .request_timeout(self.cfg.timeout);
        opts.token = self.cfg.token.clone();
        opts.tls_ca_pem = self.cfg.tls_ca_pem.clone();
        let timeout = self.cfg.timeout;
        let (client, events) = self
            .rt
            .block_on(async { tokio::time::timeout(timeout, Client::connect(opts)).await })
            .map_err(|_| Error::MasterUnavailable("no answer from the post office".into()))?
            .map_err(|e| Error::MasterUnavailable(format!("cannot reach the post office: {e}")))?;
        // Read the events (so the server never sees us as a slow consumer) and watch for the
        // master leaving.
        let master_left = self.master_left.clone();
        self.rt.spawn(async move {
            let mut events = events;
            while let Some(ev) = events.recv().await {
                if matches!(&ev, Event::Left { peer, .. } if peer == MASTER_PEER) {
                    master_left.send_modify(|n| *n += 1);
                }
            }
        });
        // Renew the leases of grants held for long (a long transaction, a long wait for the
        // commit turn): a live worker keeps its locks, a stopped one loses them.
        let (grants, c, timeout) = (self.grants.clone(), client.clone(), self.cfg.timeout);
        self.rt.spawn(async move {
            let mut tick = tokio::time::interval(RENEW_TICK);
            loop {
                tick.tick().await;
                for g in grants.due_for_renewal(Instant::now()) {
                    let sent = Instant::now();
                    let lease_ms = g.lease.as_millis() as u64;
                    let req = Request::Renew { id: g.id, lease_ms }.encode();
                    if let Ok(b) = c.request(MASTER_PEER, &req, Some(timeout)).await {
                        if let Ok(Reply::Done { held: true }) = Reply::decode(&b) {
                            grants.renewed(g.token, sent);
                        }
                    }
                }
            }
        });
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Ask the master and wait for its reply, at most `timeout + wait`. A request whose
    /// connection dropped is sent again, with the same payload (a lock request keeps its
    /// `rid`), once the client has reconnected by itself; the master may still be coming
    /// back then, so "no master" is retried too after a drop. A request in flight fails at
    /// once when the master leaves.
    fn ask(&self, req: &Request, wait: Duration) -> Result<Reply> {
        let client = self.client()?;
        let budget = self.cfg.timeout + wait;
        let end = Instant::now() + budget;
        let payload = req.encode();
        let mut left = self.master_left.subscribe();
        left.mark_unchanged();
        let outcome = self.rt.block_on(async {
            let mut dropped = false;
            loop {
                let remaining = end.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Some(Err(RequestError::Timeout));
                }
                let r = tokio::select! {
                    r = client.request(MASTER_PEER, &payload, Some(remaining)) => r,
                    _ = left.changed() => return None,
                };
                match r {
                    Err(RequestError::Disconnected) => dropped = true,
                    Err(RequestError::UnknownPeer(_)) if dropped => {}
                    r => return Some(r),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                while !client.is_connected() && Instant::now() < end {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        let reply = match outcome {
            None => {
                return Err(Error::MasterUnavailable(
                    "the master left the namespace".into(),
                ))
            }
            Some(r) => r.map_err(|e| match e {
                RequestError::UnknownPeer(_) => {
                    Error::MasterUnavailable("no master has joined the namespace".into())
                }
                RequestError::Timeout => {
                    Error::MasterUnavailable(format!("no reply within {budget:?}"))
                }
                e => Error::MasterUnavailable(e.to_string()),
            })?,
        };
        Reply::decode(&reply)
            .map_err(|e| Error::MasterUnavailable(format!("unreadable reply from the master: {e}")))
    }

    /// Send a message to the master without waiting for an answer (best effort).
    fn tell(&self, req: &Request) {
        if let Ok(client) = self.client() {
            let payload = req.encode();
            let timeout = self.cfg.timeout;
            let _ = self.rt.block_on(async {
                tokio::time::timeout(timeout, client.send(MASTER_PEER, &payload)).await
            });
        }
    }
}

impl IpcLocks {
    pub(crate) fn pool(&self) -> &SpacePool {
        &self.pool
    }

    /// The era of the current master (its `fence.map` base).
    pub(crate) fn era(&self) -> Result<u64> {
        Ok(self.fence_map()?.base())
    }

    /// Ask the master for `want` pages now (from inside a commit step).
    pub(crate) fn ask_space(&self, want: u64) -> Result<()> {
        let ask = self.pool.ask_now(want);
        let req = Request::Space {
            pages: want,
            used: ask.used.to_wire(),
        };
        match self.ask(&req, Duration::ZERO) {
            Ok(Reply::Space { pages, era }) => {
                self.pool
                    .answered(ask, Some((era, PageRanges::from_wire(&pages))));
                Ok(())
            }
            Ok(other) => {
                self.pool.answered(ask, None);
                Err(Error::MasterUnavailable(format!(
                    "unexpected reply to a space request: {other:?}"
                )))
            }
            Err(e) => {
                self.pool.answered(ask, None);
                Err(e)
            }
        }
    }

    fn fence_map(&self) -> Result<std::sync::Arc<FenceMap>> {
        let mut slot = lock(&self.fences);
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let m = std::sync::Arc::new(FenceMap::open(&self.dir)?);
        *slot = Some(m.clone());
        Ok(m)
    }

    /// The current post-office session: (epoch, connected now).
    fn session(&self) -> Option<(u64, bool)> {
        lock(&self.client)
            .as_ref()
            .map(|c| (c.epoch(), c.is_connected()))
    }
}

impl LockProvider for IpcLocks {
    fn acquire(&self, paths: &[Vec<Segment>], floor: u64) -> Result<Grant> {
        match self.grants.take(paths, self.cfg.lock_wait) {
            Take::Local(g) => {
                return Ok(Grant {
                    paths: paths.to_vec(),
                    token: g.token,
                })
            }
            Take::TimedOut => {
                return Err(Error::LockTimeout(format!(
                    "another thread of this process held the lock for {:?}",
                    self.cfg.lock_wait
                )))
            }
            Take::AskMaster => {}
        }
        let items = paths
            .iter()
            .map(|p| (p.iter().map(|s| s.to_string()).collect(), Mode::Write))
            .collect();
        let rid = self
            .next_rid
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let space: Ask = self.pool.ask();
        let req = Request::Lock {
            rid,
            items,
            floor,
            lease_ms: self.cfg.lease.as_millis() as u64,
            wait_ms: self.cfg.lock_wait.as_millis() as u64,
            pages: space.want,
            used: space.used.to_wire(),
        };
        let sent = Instant::now();
        let reply = self.ask(&req, self.cfg.lock_wait);
        match &reply {
            Ok(Reply::Granted { pages, era, .. }) => self
                .pool
                .answered(space, Some((*era, PageRanges::from_wire(pages)))),
            // a refusal from the master still took the report
            Ok(_) => self.pool.answered(space, Some((0, PageRanges::default()))),
            Err(_) => self.pool.answered(space, None),
        }
        if !matches!(reply, Ok(Reply::Granted { .. })) {
            self.grants.refused(paths);
            // The master may grant it after we gave up: withdraw it, so it is not held until
            // our lease or our session ends.
            self.tell(&Request::Cancel { rid });
        }
        match reply? {
            Reply::Granted {
                id,
                token,
                lease_ms,
                ..
            } => {
                let expires = sent + Duration::from_millis(lease_ms);
                let epoch = self.session().map_or(0, |(epoch, _)| epoch);
                self.grants.granted(
                    paths,
                    MasterGrant {
                        id,
                        token,
                        expires,
                        epoch,
                        lease: Duration::from_millis(lease_ms),
                    },
                );
                if let Some(p) = self.cfg.pause_after_grant {
                    eprintln!("db-node: test hook: granted; pausing {p:?}");
                    std::thread::sleep(p);
                }
                Ok(Grant {
                    paths: paths.to_vec(),
                    token,
                })
            }
            Reply::Error {
                kind: ErrorKind::Timeout,
                message,
            } => Err(Error::LockTimeout(message)),
            other => Err(Error::MasterUnavailable(format!(
                "unexpected reply to a lock request: {other:?}"
            ))),
        }
    }

    fn release(&self, grant: &Grant) {
        let h = match self.grants.give(grant.token) {
            Give::Release(h) => h,
            Give::HandedOver | Give::Unknown => return,
        };
        // A plain message, not a request: nobody waits for it, so a write transaction costs
        // one round trip to the master. It reaches the master before anything this worker
        // sends later (per-sender FIFO). If it is lost, our leaving or the lease frees the lock.
        self.tell(&Request::Release { id: h.id });
    }

    /// Publish the commit on [`COMMITS_SUBJECT`]: queued for the post office without waiting
    /// for it (this runs in the commit step). Subscribers put announcements back in commit
    /// order by transaction id; a lost one shows up as a gap.
    fn announce(&self, info: &CommitInfo) {
        let Ok(client) = self.client() else { return };
        let payload = Announcement::from(info).encode();
        let timeout = self.cfg.timeout;
        let sent = self.rt.block_on(async {
            tokio::time::timeout(timeout, client.publish(COMMITS_SUBJECT, &payload)).await
        });
        if !matches!(sent, Ok(Ok(()))) {
            eprintln!("db-node: commit {} not announced", info.txn);
        }
    }

    fn validate(&self, grant: &Grant) -> Result<()> {
        if let Some(p) = self.cfg.pause_before_commit {
            eprintln!("db-node: test hook: pausing {p:?} before the commit");
            std::thread::sleep(p);
        }
        let Some(h) = self.grants.get(grant.token) else {
            return Err(Error::Fenced(format!("token {} is not held", grant.token)));
        };
        if h.expires <= Instant::now() {
            return Err(Error::Fenced(format!(
                "the lease of lock {} (token {}) ran out",
                h.id, grant.token
            )));
        }
        match self.session() {
            Some((epoch, true)) if epoch == h.epoch => {}
            _ => {
                return Err(Error::Fenced(format!(
                    "lock {} (token {}) belonged to a post-office session that ended; the \
                     master has dropped it",
                    h.id, grant.token
                )))
            }
        }
        // The master's own view, even if this process has not noticed yet that its lock was
        // taken back (see `fence_map`).
        self.fence_map()?
            .check(grant.token)
            .map_err(|why| Error::Fenced(format!("lock {}: {why}", h.id)))
    }
}

impl Drop for IpcLocks {
    fn drop(&mut self) {
        if let Some(c) = lock(&self.client).take() {
            // announcements are queued without waiting: let the post office take them first
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = c.flush().await;
                    c.close().await
                })
                .await
            });
        }
    }
}
