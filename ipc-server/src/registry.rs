//! Namespaces and their members: who is connected, with which session epoch, and where to put
//! messages for them. Joining and leaving happen here, under one lock per namespace, so that the
//! member list in a welcome and the `joined`/`left` events that follow it are consistent.
//!
//! Routing reads the member table and the subject index under the namespace's read lock only on
//! a cache miss: every change bumps the namespace's `generation`, and each connection keeps its
//! own cache of resolved destinations tagged with the generation it was built at.

use crate::outbox::Outbox;
use crate::subjects::SubjectIndex;
use crate::wire::{WireFrame, HEADER_ROOM};
use parking_lot::{Mutex, RwLock};
use protocol::{LeaveReason, Member, ServerFrame, Welcome};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// How a peer wants its frames: bincode binary frames, JSON text frames, or the text framing of
/// the AceBase IPC server (see [`crate::acebase`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Binary = 0,
    Json = 1,
    AceBase = 2,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Binary => "binary",
            Encoding::Json => "json",
            Encoding::AceBase => "acebase",
        }
    }
}

/// A connected peer, as the router sees it.
pub struct Peer {
    pub id: Arc<str>,
    pub epoch: u64,
    /// Server-unique connection id (distinguishes two connections of one id over time).
    pub conn: u64,
    pub encoding: Encoding,
    pub outbox: Outbox,
    pub connected_at: SystemTime,
    /// Patterns this peer subscribed to (for cleanup and for the peer listing).
    pub patterns: Mutex<Vec<String>>,
    /// Set while routing one of this peer's frames waits for room in another peer's queue; the
    /// keepalive watchdog does not count that time as the peer's silence.
    pub waiting_on_others: std::sync::atomic::AtomicBool,
    /// How long the peer has been silent, as last seen by its keepalive watchdog (ms).
    pub silent_ms: AtomicU64,
}

/// A server frame encoded lazily, at most once per encoding, for fan-out.
pub struct LazyFrame<'a> {
    frame: ServerFrame<'a>,
    slots: [Option<WireFrame>; 3],
}

impl<'a> LazyFrame<'a> {
    pub fn new(frame: ServerFrame<'a>) -> Self {
        LazyFrame {
            frame,
            slots: Default::default(),
        }
    }

    /// The frame in `encoding`, moved out: for the last receiver, which then needs no shared
    /// reference count. `None` if the encoding has no such frame.
    pub fn take(&mut self, encoding: Encoding) -> Option<WireFrame> {
        self.slots[encoding as usize]
            .take()
            .or_else(|| encode(&self.frame, encoding))
    }

    /// The frame as a websocket frame in `encoding` (cheap clone after the first call).
    pub fn get(&mut self, encoding: Encoding) -> Option<WireFrame> {
        let slot = &mut self.slots[encoding as usize];
        if slot.is_none() {
            *slot = encode(&self.frame, encoding);
        }
        slot.clone()
    }
}

/// Encodes one server frame for one peer; `None` when the peer's dialect has no such frame
/// (AceBase peers get no errors, pongs with nonces, topics or requests).
pub fn encode(frame: &ServerFrame<'_>, encoding: Encoding) -> Option<WireFrame> {
    match encoding {
        // Encoded behind room for the websocket header: one allocation, one copy of the payload.
        Encoding::Binary => Some(WireFrame::binary_from_room(protocol::encode_server_after(
            HEADER_ROOM,
            frame,
        ))),
        Encoding::Json => Some(WireFrame::text(&protocol::json::encode_server(frame))),
        Encoding::AceBase => crate::acebase::encode(frame).map(|text| WireFrame::text(&text)),
    }
}

impl Peer {
    /// Queues a control frame (never waits), if the peer's dialect has it.
    pub fn send_control(&self, frame: &ServerFrame<'_>) {
        if let Some(message) = encode(frame, self.encoding) {
            self.outbox.push_control(message);
        }
    }
}

#[derive(Default)]
struct NamespaceState {
    peers: HashMap<Arc<str>, Arc<Peer>>,
    subjects: SubjectIndex<Arc<Peer>>,
}

/// One namespace: an isolated set of peers and subscriptions.
pub struct Namespace {
    pub name: Arc<str>,
    state: RwLock<NamespaceState>,
    generation: AtomicU64,
    round_robin: AtomicUsize,
}

impl Namespace {
    fn new(name: &str) -> Self {
        Namespace {
            name: name.into(),
            state: RwLock::new(NamespaceState::default()),
            generation: AtomicU64::new(1),
            round_robin: AtomicUsize::new(0),
        }
    }

    /// Changes with every join, leave, subscribe and unsubscribe.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The peer with this id, if connected.
    pub fn peer(&self, id: &str) -> Option<Arc<Peer>> {
        self.state.read().peers.get(id).cloned()
    }

    /// Every peer except the one with connection id `except`.
    pub fn others(&self, except: u64) -> Vec<Arc<Peer>> {
        self.state
            .read()
            .peers
            .values()
            .filter(|p| p.conn != except)
            .cloned()
            .collect()
    }

    /// Every subscriber whose pattern matches `subject`, once each.
    pub fn subscribers(&self, subject: &str) -> Vec<Arc<Peer>> {
        let mut found = Vec::new();
        self.state.read().subjects.matches(subject, &mut found);
        found.into_iter().map(|(_, p)| p).collect()
    }

    /// A number for round-robin choices among responders.
    pub fn next_round_robin(&self) -> usize {
        self.round_robin.fetch_add(1, Ordering::Relaxed)
    }

    /// Records `peer`'s interest in `pattern` (already validated).
    pub fn subscribe(&self, peer: &Arc<Peer>, pattern: &str) {
        let mut state = self.state.write();
        if state.subjects.insert(pattern, peer.conn, peer.clone()) {
            peer.patterns.lock().push(pattern.to_owned());
            self.bump();
        }
    }

    /// Drops `peer`'s interest in exactly `pattern`.
    pub fn unsubscribe(&self, peer: &Peer, pattern: &str) {
        let mut state = self.state.write();
        if state.subjects.remove(pattern, peer.conn) {
            peer.patterns.lock().retain(|p| p != pattern);
            self.bump();
        }
    }

    /// (id, epoch, encoding, subscription count, connected since) of every member.
    pub fn listing(&self) -> Vec<(Arc<str>, u64, Encoding, usize, SystemTime)> {
        let state = self.state.read();
        let mut list: Vec<_> = state
            .peers
            .values()
            .map(|p| {
                (
                    p.id.clone(),
                    p.epoch,
                    p.encoding,
                    p.patterns.lock().len(),
                    p.connected_at,
                )
            })
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Number of connected peers.
    pub fn peer_count(&self) -> usize {
        self.state.read().peers.len()
    }
}

/// Why a join was refused.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("peer id {id:?} is already connected to namespace {namespace:?} (session epoch {epoch}); a second connection with the same id is refused until the first one is gone")]
    Duplicate {
        namespace: String,
        id: String,
        epoch: u64,
    },
}

/// All namespaces of the server.
pub struct Registry {
    namespaces: Mutex<HashMap<Arc<str>, Arc<Namespace>>>,
    next_epoch: AtomicU64,
    next_conn: AtomicU64,
}

/// What a joining peer asks for.
pub struct JoinRequest<'a> {
    pub namespace: &'a str,
    pub id: &'a str,
    pub encoding: Encoding,
    pub outbox_limit: usize,
    pub max_payload: u32,
    pub keepalive_ms: u32,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// Session epochs start at the current time in microseconds, so they keep growing across
    /// server restarts (as long as the clock does not go back) and grow with every connection.
    pub fn new() -> Self {
        let now_us = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Registry {
            namespaces: Mutex::new(HashMap::new()),
            next_epoch: AtomicU64::new(now_us),
            next_conn: AtomicU64::new(1),
        }
    }

    /// Adds a peer: queues its welcome (with the current members) and tells every other member.
    pub fn join(&self, req: &JoinRequest<'_>) -> Result<(Arc<Namespace>, Arc<Peer>), JoinError> {
        let mut namespaces = self.namespaces.lock();
        let ns = namespaces
            .entry(req.namespace.into())
            .or_insert_with(|| Arc::new(Namespace::new(req.namespace)))
            .clone();
        let mut state = ns.state.write();
        if let Some(existing) = state.peers.get(req.id).cloned() {
            // A live peer answers the watchdog's pings within a round trip, so it is never
            // silent for half the keepalive. One that is has lost its connection without a
            // close (a half-open socket after a network cut): the newcomer replaces it now
            // instead of waiting for the keepalive to expire.
            let silent = existing.silent_ms.load(Ordering::Relaxed);
            if silent < u64::from(req.keepalive_ms / 2) {
                return Err(JoinError::Duplicate {
                    namespace: req.namespace.to_owned(),
                    id: req.id.to_owned(),
                    epoch: existing.epoch,
                });
            }
            Self::remove(&mut state, &existing, LeaveReason::KeepaliveTimeout);
            existing.outbox.close(crate::outbox::CloseReason {
                leave: LeaveReason::KeepaliveTimeout,
                code: protocol::close_code::KEEPALIVE_TIMEOUT,
                text: format!("replaced by a new connection after {silent} ms of silence"),
            });
        }
        let peer = Arc::new(Peer {
            id: req.id.into(),
            epoch: self.next_epoch.fetch_add(1, Ordering::Relaxed),
            conn: self.next_conn.fetch_add(1, Ordering::Relaxed),
            encoding: req.encoding,
            outbox: Outbox::new(req.outbox_limit),
            connected_at: SystemTime::now(),
            patterns: Mutex::new(Vec::new()),
            waiting_on_others: Default::default(),
            silent_ms: AtomicU64::new(0),
        });
        let mut members: Vec<Member<'_>> = state
            .peers
            .values()
            .map(|p| Member {
                id: p.id.as_ref().into(),
                epoch: p.epoch,
            })
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        let welcome = ServerFrame::Welcome(Welcome {
            version: protocol::PROTOCOL_VERSION,
            peer: req.id.into(),
            epoch: peer.epoch,
            max_payload: req.max_payload,
            keepalive_ms: req.keepalive_ms,
            members,
        });
        peer.send_control(&welcome);
        let mut joined = LazyFrame::new(ServerFrame::Joined {
            peer: req.id.into(),
            epoch: peer.epoch,
        });
        for other in state.peers.values() {
            if let Some(m) = joined.get(other.encoding) {
                other.outbox.push_control(m);
            }
        }
        state.peers.insert(peer.id.clone(), peer.clone());
        drop(state);
        ns.bump();
        Ok((ns, peer))
    }

    /// Removes a peer (if it is still the registered connection for its id), drops its
    /// subscriptions and tells every other member. Empty namespaces are forgotten.
    pub fn leave(&self, ns: &Namespace, peer: &Peer, reason: LeaveReason) {
        let mut namespaces = self.namespaces.lock();
        let mut state = ns.state.write();
        if state.peers.get(&peer.id).map(|p| p.conn) != Some(peer.conn) {
            return;
        }
        Self::remove(&mut state, peer, reason);
        let empty = state.peers.is_empty();
        drop(state);
        ns.bump();
        if empty {
            namespaces.remove(&ns.name);
        }
    }

    /// Takes `peer` out of the namespace state and tells the others it left.
    fn remove(state: &mut NamespaceState, peer: &Peer, reason: LeaveReason) {
        state.peers.remove(&peer.id);
        for pattern in peer.patterns.lock().drain(..) {
            state.subjects.remove(&pattern, peer.conn);
        }
        let mut left = LazyFrame::new(ServerFrame::Left {
            peer: peer.id.as_ref().into(),
            epoch: peer.epoch,
            reason,
        });
        for other in state.peers.values() {
            if let Some(m) = left.get(other.encoding) {
                other.outbox.push_control(m);
            }
        }
    }

    /// The namespace with this name, if it has peers.
    pub fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.namespaces.lock().get(name).cloned()
    }

    /// (name, peer count) of every namespace, sorted by name.
    pub fn census(&self) -> Vec<(String, usize)> {
        let namespaces: Vec<Arc<Namespace>> = self.namespaces.lock().values().cloned().collect();
        let mut out: Vec<(String, usize)> = namespaces
            .iter()
            .map(|ns| (ns.name.to_string(), ns.peer_count()))
            .collect();
        out.sort();
        out
    }

    /// Every connected peer of every namespace (for shutdown).
    pub fn all_peers(&self) -> Vec<Arc<Peer>> {
        let namespaces: Vec<Arc<Namespace>> = self.namespaces.lock().values().cloned().collect();
        namespaces.iter().flat_map(|ns| ns.others(0)).collect()
    }
}
