//! Routing: what the server does with each frame a peer sends. Runs in the peer's reader task,
//! so frames of one sender are routed one after another, which is what gives per-sender FIFO to
//! every receiver. Destinations are resolved through a per-connection cache that is dropped
//! whenever the namespace's generation changes.

use crate::metrics::{Counter, Metrics};
use crate::outbox::{slow_consumer_reason, PushError};
use crate::registry::{LazyFrame, Namespace, Peer};
use protocol::{ClientFrame, ErrorCode, ServerFrame, Target};
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Limits that routing enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_payload: u32,
    pub slow_consumer: Duration,
}

/// A fast, non-cryptographic hasher (the multiply-rotate scheme of rustc's FxHash) for the
/// per-connection caches. Their keys come from that connection's own peer, which can at worst
/// slow down its own cache, and a cache is cleared at [`CACHE_LIMIT`] entries anyway.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Destinations resolved at one namespace generation. Subjects are validated when they are
/// first resolved, so a cached subject is known to be valid.
#[derive(Default)]
struct RouteCache {
    generation: u64,
    peers: FastMap<Box<str>, Option<Arc<Peer>>>,
    subjects: FastMap<Box<str>, Arc<[Arc<Peer>]>>,
    others: Option<Arc<[Arc<Peer>]>>,
}

/// Counters kept per connection and added to the shared metrics when the reader goes idle.
#[derive(Default)]
struct LocalCounts {
    frames: u64,
    bytes_in: u64,
    routed: u64,
    bytes_routed: u64,
}

/// Entries a cache may hold before it is simply cleared.
const CACHE_LIMIT: usize = 4096;

impl RouteCache {
    fn sync(&mut self, generation: u64) {
        if self.generation != generation || self.peers.len() + self.subjects.len() > CACHE_LIMIT {
            self.peers.clear();
            self.subjects.clear();
            self.others = None;
            self.generation = generation;
        }
    }
}

/// One connected peer's routing state.
pub struct Session {
    pub ns: Arc<Namespace>,
    pub me: Arc<Peer>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    cache: RouteCache,
    counts: LocalCounts,
}

/// Where a request-deadline check applies during delivery.
struct RequestInfo<'a> {
    deadline: Instant,
    corr: u64,
    target: &'a str,
}

impl Session {
    pub fn new(ns: Arc<Namespace>, me: Arc<Peer>, metrics: Arc<Metrics>, limits: Limits) -> Self {
        Session {
            ns,
            me,
            metrics,
            limits,
            cache: RouteCache::default(),
            counts: LocalCounts::default(),
        }
    }

    fn count(&self, counter: Counter, n: u64) {
        self.metrics.add(self.me.conn, counter, n);
    }

    /// Counts one received frame of `len` bytes.
    #[inline]
    pub fn note_received(&mut self, len: usize) {
        self.counts.frames += 1;
        self.counts.bytes_in += len as u64;
    }

    /// Adds the locally kept counters to the shared metrics.
    pub fn flush_counts(&mut self) {
        let c = std::mem::take(&mut self.counts);
        if c.frames > 0 {
            self.count(Counter::FramesReceived, c.frames);
            self.count(Counter::BytesReceived, c.bytes_in);
        }
        if c.routed > 0 {
            self.count(Counter::MessagesRouted, c.routed);
            self.count(Counter::BytesRouted, c.bytes_routed);
        }
    }

    /// Sends an error frame back to this peer.
    pub fn error(&self, code: ErrorCode, corr: u64, target: &str, message: String) {
        let counter = match code {
            ErrorCode::UnknownPeer => Counter::ErrUnknownPeer,
            ErrorCode::NoResponders => Counter::ErrNoResponders,
            ErrorCode::DeadlineExceeded => Counter::ErrDeadlineExceeded,
            ErrorCode::PayloadTooLarge => Counter::ErrPayloadTooLarge,
            ErrorCode::MalformedFrame => Counter::ErrMalformedFrame,
            ErrorCode::InvalidName => Counter::ErrInvalidName,
        };
        self.count(counter, 1);
        let frame = ServerFrame::Error {
            code,
            corr,
            target: target.into(),
            message: message.into(),
        };
        self.me.send_control(&frame);
    }

    fn peer(&mut self, id: &str) -> Option<Arc<Peer>> {
        self.cache.sync(self.ns.generation());
        if let Some(found) = self.cache.peers.get(id) {
            return found.clone();
        }
        let found = self.ns.peer(id);
        self.cache.peers.insert(id.into(), found.clone());
        found
    }

    fn subscribers(&mut self, subject: &str) -> Result<Arc<[Arc<Peer>]>, protocol::NameError> {
        self.cache.sync(self.ns.generation());
        if let Some(found) = self.cache.subjects.get(subject) {
            return Ok(found.clone());
        }
        protocol::validate_subject(subject)?;
        let found: Arc<[Arc<Peer>]> = self.ns.subscribers(subject).into();
        self.cache.subjects.insert(subject.into(), found.clone());
        Ok(found)
    }

    fn others(&mut self) -> Arc<[Arc<Peer>]> {
        self.cache.sync(self.ns.generation());
        let me = self.me.conn;
        self.cache
            .others
            .get_or_insert_with(|| self.ns.others(me).into())
            .clone()
    }

    fn payload_ok(&self, payload: &[u8], corr: u64) -> bool {
        if payload.len() > self.limits.max_payload as usize {
            self.error(
                ErrorCode::PayloadTooLarge,
                corr,
                "",
                format!(
                    "payload of {} bytes exceeds the maximum of {}",
                    payload.len(),
                    self.limits.max_payload
                ),
            );
            return false;
        }
        true
    }

    /// Routes one frame from this peer.
    pub async fn route(&mut self, frame: ClientFrame<'_>) {
        match frame {
            ClientFrame::Send { to, payload } => {
                if !self.payload_ok(&payload, 0) {
                    return;
                }
                match self.peer(&to) {
                    Some(dest) => {
                        let frame = ServerFrame::Message {
                            from: self.me.id.as_ref().into(),
                            payload,
                        };
                        let routed = self.deliver(&[dest], LazyFrame::new(frame), None).await;
                        self.tally(routed);
                    }
                    None => self.unknown_peer(&to, 0),
                }
            }
            ClientFrame::Broadcast { payload } => {
                if !self.payload_ok(&payload, 0) {
                    return;
                }
                let dests = self.others();
                let frame = ServerFrame::Broadcast {
                    from: self.me.id.as_ref().into(),
                    payload,
                };
                let routed = self.deliver(&dests, LazyFrame::new(frame), None).await;
                self.tally(routed);
            }
            ClientFrame::Publish { subject, payload } => {
                if !self.payload_ok(&payload, 0) {
                    return;
                }
                let dests = match self.subscribers(&subject) {
                    Ok(dests) => dests,
                    Err(e) => {
                        return self.error(ErrorCode::InvalidName, 0, &subject, e.to_string())
                    }
                };
                if dests.is_empty() {
                    return;
                }
                let frame = ServerFrame::Published {
                    from: self.me.id.as_ref().into(),
                    subject,
                    payload,
                };
                let routed = self.deliver(&dests, LazyFrame::new(frame), None).await;
                self.tally(routed);
            }
            ClientFrame::Subscribe { pattern } => match protocol::validate_pattern(&pattern) {
                Ok(()) => self.ns.subscribe(&self.me, &pattern),
                Err(e) => self.error(ErrorCode::InvalidName, 0, &pattern, e.to_string()),
            },
            ClientFrame::Unsubscribe { pattern } => match protocol::validate_pattern(&pattern) {
                Ok(()) => self.ns.unsubscribe(&self.me, &pattern),
                Err(e) => self.error(ErrorCode::InvalidName, 0, &pattern, e.to_string()),
            },
            ClientFrame::Request {
                corr,
                target,
                timeout_ms,
                payload,
            } => self.request(corr, target, timeout_ms, payload).await,
            ClientFrame::Reply { to, corr, payload } => {
                // Errors about a reply carry corr 0: the corr belongs to the requester's
                // numbering, and must not be mistaken for one of this peer's own requests.
                if !self.payload_ok(&payload, 0) {
                    return;
                }
                match self.peer(&to) {
                    Some(dest) => {
                        let frame = ServerFrame::Reply {
                            from: self.me.id.as_ref().into(),
                            corr,
                            payload,
                        };
                        let routed = self.deliver(&[dest], LazyFrame::new(frame), None).await;
                        self.tally(routed);
                    }
                    None => self.unknown_peer(&to, 0),
                }
            }
            ClientFrame::Ping { nonce } => self.me.send_control(&ServerFrame::Pong { nonce }),
        }
    }

    fn unknown_peer(&self, id: &str, corr: u64) {
        self.error(
            ErrorCode::UnknownPeer,
            corr,
            id,
            format!("no peer {id:?} in namespace {:?}", self.ns.name.as_ref()),
        );
    }

    async fn request(
        &mut self,
        corr: u64,
        target: Target<'_>,
        timeout_ms: u32,
        payload: Cow<'_, [u8]>,
    ) {
        let name = match &target {
            Target::Peer(p) => p.as_ref(),
            Target::Subject(s) => s.as_ref(),
        };
        if timeout_ms == 0 {
            return self.error(
                ErrorCode::DeadlineExceeded,
                corr,
                name,
                "request timeout is 0 ms".into(),
            );
        }
        if !self.payload_ok(&payload, corr) {
            return;
        }
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
        let (dest, subject) = match &target {
            Target::Peer(id) => match self.peer(id) {
                Some(dest) => (dest, None),
                None => return self.unknown_peer(id, corr),
            },
            Target::Subject(subject) => {
                let responders = match self.subscribers(subject) {
                    Ok(responders) => responders,
                    Err(e) => {
                        return self.error(ErrorCode::InvalidName, corr, subject, e.to_string())
                    }
                };
                if responders.is_empty() {
                    return self.error(
                        ErrorCode::NoResponders,
                        corr,
                        subject,
                        format!("no subscriber for subject {subject:?}"),
                    );
                }
                let pick = self.ns.next_round_robin() % responders.len();
                (responders[pick].clone(), Some(subject.clone()))
            }
        };
        let frame = ServerFrame::Request {
            from: self.me.id.as_ref().into(),
            corr,
            subject,
            timeout_ms,
            payload,
        };
        let info = RequestInfo {
            deadline,
            corr,
            target: name,
        };
        self.deliver(&[dest], LazyFrame::new(frame), Some(info))
            .await;
    }

    /// Queues `frame` for every destination, waiting (flow control) where a queue is full. A
    /// destination whose queue stays full for the slow-consumer timeout is disconnected.
    async fn deliver(
        &self,
        dests: &[Arc<Peer>],
        mut frame: LazyFrame<'_>,
        request: Option<RequestInfo<'_>>,
    ) -> (u64, u64) {
        let mut delivered = 0u64;
        let mut bytes = 0u64;
        for (i, dest) in dests.iter().enumerate() {
            // The last destination takes the encoded frame instead of sharing it.
            let message = if i + 1 == dests.len() {
                frame.take(dest.encoding)
            } else {
                frame.get(dest.encoding)
            };
            let Some(message) = message else { continue };
            let len = message.len() as u64;
            let message = match dest.outbox.try_push(message) {
                Ok(()) => {
                    delivered += 1;
                    bytes += len;
                    continue;
                }
                Err((_, PushError::Closed)) => continue,
                Err((message, PushError::TimedOut)) => message,
            };
            let slow_deadline = Instant::now() + self.limits.slow_consumer;
            let deadline = match &request {
                Some(r) => r.deadline.min(slow_deadline),
                None => slow_deadline,
            };
            // While we wait, this peer's socket is not read: its silence is ours, not its own.
            self.me
                .waiting_on_others
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let pushed = dest.outbox.push(message, deadline).await;
            self.me
                .waiting_on_others
                .store(false, std::sync::atomic::Ordering::Relaxed);
            match pushed {
                Ok(()) => {
                    delivered += 1;
                    bytes += len;
                }
                Err(PushError::Closed) => {}
                Err(PushError::TimedOut) => match &request {
                    Some(r) if r.deadline <= slow_deadline => self.error(
                        ErrorCode::DeadlineExceeded,
                        r.corr,
                        r.target,
                        "request deadline passed while the responder's queue was full".into(),
                    ),
                    _ => {
                        self.count(Counter::SlowConsumerDisconnects, 1);
                        dest.outbox.close(slow_consumer_reason(&format!(
                            "queue stayed full for {} ms",
                            self.limits.slow_consumer.as_millis()
                        )));
                    }
                },
            }
        }
        (delivered, bytes)
    }

    /// Adds what one delivery routed to the local counters.
    fn tally(&mut self, (delivered, bytes): (u64, u64)) {
        self.counts.routed += delivered;
        self.counts.bytes_routed += bytes;
    }
}
