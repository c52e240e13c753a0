//! The client: a cheap-to-clone handle for sending, and one background task per client that
//! owns the connection, reads and dispatches incoming frames, and reconnects with backoff.

use crate::connect::{open, Ws};
use crate::error::{ClientError, RequestError};
use crate::event::{Event, Events, IncomingRequest};
use crate::options::ClientOptions;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use protocol::{ClientFrame, ServerFrame, Target, Welcome};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

type Reply = Result<Bytes, RequestError>;

/// State shared by the handles and the background task.
struct Inner {
    opts: ClientOptions,
    /// Where frames go while connected; `None` while disconnected.
    link: Mutex<Option<mpsc::Sender<Message>>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    pings: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_id: AtomicU64,
    patterns: Mutex<Vec<String>>,
    members: Mutex<BTreeMap<String, u64>>,
    epoch: AtomicU64,
    max_payload: AtomicU32,
    keepalive_ms: AtomicU32,
    closing: watch::Sender<bool>,
}

/// Closes the client when the last [`Client`] handle is dropped.
struct Handle {
    inner: Arc<Inner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.closing.send_replace(true);
    }
}

/// A connected peer. Clone it freely; the connection closes when the last clone is dropped or
/// [`Client::close`] is called.
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

impl Client {
    /// Connects (failing at once if this first attempt fails) and starts the background task
    /// that keeps the connection alive. Returns the client and its stream of events.
    pub async fn connect(opts: ClientOptions) -> Result<(Client, Events), ClientError> {
        let (ws, welcome) = open(&opts).await?;
        let (events_tx, events_rx) = mpsc::channel(opts.event_capacity.max(1));
        let inner = Arc::new(Inner {
            opts,
            link: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            pings: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            patterns: Mutex::new(Vec::new()),
            members: Mutex::new(BTreeMap::new()),
            epoch: AtomicU64::new(0),
            max_payload: AtomicU32::new(0),
            keepalive_ms: AtomicU32::new(0),
            closing: watch::channel(false).0,
        });
        let connected = inner.welcome(&welcome);
        let _ = events_tx.try_send(connected);
        let link = inner.start_link(ws).await;
        tokio::spawn(supervise(inner.clone(), link, events_tx));
        Ok((
            Client {
                handle: Arc::new(Handle { inner }),
            },
            Events { rx: events_rx },
        ))
    }

    fn inner(&self) -> &Inner {
        &self.handle.inner
    }

    /// This peer's id.
    pub fn peer_id(&self) -> &str {
        &self.inner().opts.peer_id
    }

    /// Session epoch of the current (or last) connection.
    pub fn epoch(&self) -> u64 {
        self.inner().epoch.load(Ordering::Relaxed)
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.inner().link.lock().is_some()
    }

    /// The other members of the namespace as last reported (id, epoch).
    pub fn members(&self) -> Vec<(String, u64)> {
        self.inner()
            .members
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Largest payload the server accepts.
    pub fn max_payload(&self) -> u32 {
        self.inner().max_payload.load(Ordering::Relaxed)
    }

    fn check_size(&self, payload: &[u8]) -> Result<(), ClientError> {
        let max = self.max_payload();
        if payload.len() > max as usize {
            return Err(ClientError::PayloadTooLarge {
                len: payload.len(),
                max,
            });
        }
        Ok(())
    }

    async fn push(&self, frame: &ClientFrame<'_>) -> Result<(), ClientError> {
        let tx = self
            .inner()
            .link
            .lock()
            .clone()
            .ok_or(ClientError::Disconnected)?;
        let message = Message::Binary(protocol::encode_client(frame).into());
        tx.send(message)
            .await
            .map_err(|_| ClientError::Disconnected)
    }

    /// Sends `payload` to peer `to`. Delivery errors (unknown peer) arrive as
    /// [`Event::Undeliverable`].
    pub async fn send(&self, to: &str, payload: &[u8]) -> Result<(), ClientError> {
        self.check_size(payload)?;
        self.push(&ClientFrame::Send {
            to: to.into(),
            payload: Cow::Borrowed(payload),
        })
        .await
    }

    /// Sends `payload` to every other member of the namespace.
    pub async fn broadcast(&self, payload: &[u8]) -> Result<(), ClientError> {
        self.check_size(payload)?;
        self.push(&ClientFrame::Broadcast {
            payload: Cow::Borrowed(payload),
        })
        .await
    }

    /// Publishes `payload` on `subject` to every matching subscriber.
    pub async fn publish(&self, subject: &str, payload: &[u8]) -> Result<(), ClientError> {
        self.check_size(payload)?;
        protocol::validate_subject(subject)?;
        self.push(&ClientFrame::Publish {
            subject: subject.into(),
            payload: Cow::Borrowed(payload),
        })
        .await
    }

    /// Subscribes to `pattern` and waits until the server has applied it. The subscription is
    /// remembered and restored after every reconnection (also when this call returns
    /// `Disconnected`).
    pub async fn subscribe(&self, pattern: &str) -> Result<(), ClientError> {
        protocol::validate_pattern(pattern)?;
        {
            let mut patterns = self.inner().patterns.lock();
            if !patterns.iter().any(|p| p == pattern) {
                patterns.push(pattern.to_owned());
            }
        }
        self.push(&ClientFrame::Subscribe {
            pattern: pattern.into(),
        })
        .await?;
        self.flush().await
    }

    /// Drops the subscription to exactly `pattern`.
    pub async fn unsubscribe(&self, pattern: &str) -> Result<(), ClientError> {
        self.inner().patterns.lock().retain(|p| p != pattern);
        self.push(&ClientFrame::Unsubscribe {
            pattern: pattern.into(),
        })
        .await?;
        self.flush().await
    }

    /// Waits until the server has processed every frame sent before this call.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let nonce = self.inner().next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner().pings.lock().insert(nonce, tx);
        if let Err(e) = self.push(&ClientFrame::Ping { nonce }).await {
            self.inner().pings.lock().remove(&nonce);
            return Err(e);
        }
        match tokio::time::timeout(self.inner().opts.request_timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ClientError::Disconnected),
            Err(_) => {
                self.inner().pings.lock().remove(&nonce);
                Err(ClientError::WebSocket(
                    "no pong within the request timeout".into(),
                ))
            }
        }
    }

    /// Sends a request to peer `to` and waits for its reply (or `timeout`, default the
    /// client's request timeout).
    pub async fn request(
        &self,
        to: &str,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Bytes, RequestError> {
        self.request_to(Target::Peer(to.into()), payload, timeout)
            .await
    }

    /// Sends a request to one subscriber of `subject` (the server picks round-robin).
    pub async fn request_subject(
        &self,
        subject: &str,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Bytes, RequestError> {
        self.request_to(Target::Subject(subject.into()), payload, timeout)
            .await
    }

    async fn request_to(
        &self,
        target: Target<'_>,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Bytes, RequestError> {
        let max = self.max_payload();
        if payload.len() > max as usize {
            return Err(RequestError::PayloadTooLarge {
                len: payload.len(),
                max,
            });
        }
        let timeout = timeout.unwrap_or(self.inner().opts.request_timeout);
        let timeout_ms = timeout.as_millis().clamp(1, u32::MAX as u128) as u32;
        let corr = self.inner().next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner().pending.lock().insert(corr, tx);
        let frame = ClientFrame::Request {
            corr,
            target,
            timeout_ms,
            payload: Cow::Borrowed(payload),
        };
        let outcome = async {
            self.push(&frame)
                .await
                .map_err(|_| RequestError::Disconnected)?;
            match rx.await {
                Ok(reply) => reply,
                Err(_) => Err(RequestError::Disconnected),
            }
        };
        match tokio::time::timeout(timeout, outcome).await {
            Ok(result) => {
                self.inner().pending.lock().remove(&corr);
                result
            }
            Err(_) => {
                self.inner().pending.lock().remove(&corr);
                Err(RequestError::Timeout)
            }
        }
    }

    /// Answers a request received as [`Event::Request`].
    pub async fn reply(
        &self,
        request: &IncomingRequest,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        self.check_size(payload)?;
        self.push(&ClientFrame::Reply {
            to: request.from.as_str().into(),
            corr: request.corr,
            payload: Cow::Borrowed(payload),
        })
        .await
    }

    /// Closes the connection and stops reconnecting; pending requests fail with `Closed`.
    pub async fn close(&self) {
        self.inner().closing.send_replace(true);
        let link = self.inner().link.lock().take();
        if let Some(tx) = link {
            let _ = tx.send(Message::Close(None)).await;
        }
        self.inner().fail_all(RequestError::Closed);
    }
}

impl Inner {
    /// Records a welcome and returns the matching `Connected` event.
    fn welcome(&self, welcome: &Welcome<'_>) -> Event {
        self.epoch.store(welcome.epoch, Ordering::Relaxed);
        self.max_payload
            .store(welcome.max_payload, Ordering::Relaxed);
        self.keepalive_ms
            .store(welcome.keepalive_ms, Ordering::Relaxed);
        let members: Vec<(String, u64)> = welcome
            .members
            .iter()
            .map(|m| (m.id.to_string(), m.epoch))
            .collect();
        *self.members.lock() = members.iter().cloned().collect();
        Event::Connected {
            epoch: welcome.epoch,
            members,
        }
    }

    /// Starts the writer of a fresh connection, queues the remembered subscriptions first, and
    /// only then makes the connection available to senders (so they come after).
    async fn start_link(&self, ws: Ws) -> Link {
        let (sink, stream) = ws.split();
        let (tx, rx) = mpsc::channel(self.opts.send_capacity.max(16));
        let writer = tokio::spawn(write_loop(sink, rx));
        let patterns = self.patterns.lock().clone();
        for pattern in patterns {
            let frame = ClientFrame::Subscribe {
                pattern: pattern.as_str().into(),
            };
            // The writer is running, so this waits at most for the socket.
            if tx
                .send(Message::Binary(protocol::encode_client(&frame).into()))
                .await
                .is_err()
            {
                break;
            }
        }
        *self.link.lock() = Some(tx);
        Link { stream, writer }
    }

    fn fail_all(&self, error: RequestError) {
        let pending: Vec<_> = self.pending.lock().drain().collect();
        for (_, tx) in pending {
            let _ = tx.send(Err(error.clone()));
        }
        self.pings.lock().clear();
    }
}

/// The reading half of one live connection and its writer task.
struct Link {
    stream: SplitStream<Ws>,
    writer: tokio::task::JoinHandle<()>,
}

/// Owns the connection for the client's whole life: reads until it breaks, fails what was in
/// flight, reconnects with backoff, repeats.
async fn supervise(inner: Arc<Inner>, first: Link, events: mpsc::Sender<Event>) {
    let mut closing = inner.closing.subscribe();
    let mut link = first;
    loop {
        let reason = tokio::select! {
            reason = read_loop(&inner, &mut link.stream, &events) => reason,
            _ = closing.wait_for(|c| *c) => String::from("closed by the application"),
        };
        let tx = inner.link.lock().take();
        drop(tx);
        inner.fail_all(RequestError::Disconnected);
        if *closing.borrow() {
            let _ = tokio::time::timeout(Duration::from_millis(500), link.writer).await;
            break;
        }
        link.writer.abort();
        tracing::debug!(peer = %inner.opts.peer_id, "disconnected: {reason}");
        let _ = events.send(Event::Disconnected { reason }).await;
        if !inner.opts.reconnect {
            break;
        }
        let mut backoff = Duration::from_millis(25);
        link = loop {
            let jitter = rand::random_range(0.75..1.25);
            tokio::select! {
                _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                _ = closing.wait_for(|c| *c) => return,
            }
            match open(&inner.opts).await {
                Ok((ws, welcome)) => {
                    let event = inner.welcome(&welcome);
                    let link = inner.start_link(ws).await;
                    let _ = events.send(event).await;
                    break link;
                }
                Err(e) => {
                    tracing::debug!(peer = %inner.opts.peer_id, "reconnect failed: {e}");
                    backoff = (backoff * 2).min(inner.opts.max_backoff);
                }
            }
        };
    }
}

/// Reads and dispatches frames until the connection ends or the server goes silent for longer
/// than its keepalive; returns why. A quiet server is pinged first (websocket ping), so a
/// client that only sends still hears from a live server.
async fn read_loop(
    inner: &Inner,
    stream: &mut SplitStream<Ws>,
    events: &mpsc::Sender<Event>,
) -> String {
    let keepalive = Duration::from_millis(u64::from(
        inner.keepalive_ms.load(Ordering::Relaxed).max(100),
    ));
    let mut last_heard = Instant::now();
    let mut tick = tokio::time::interval(keepalive / 4);
    loop {
        let message = tokio::select! {
            m = stream.next() => m,
            _ = tick.tick() => {
                let silent = last_heard.elapsed();
                if silent > keepalive {
                    return format!("nothing heard from the server for {} ms", silent.as_millis());
                }
                if silent > keepalive / 3 {
                    let link = inner.link.lock().clone();
                    if let Some(tx) = link {
                        let _ = tx.try_send(Message::Ping(Bytes::new()));
                    }
                }
                continue;
            }
        };
        last_heard = Instant::now();
        match message {
            Some(Ok(Message::Binary(bytes))) => {
                if let Some(event) = inner.dispatch(&bytes) {
                    let _ = events.send(event).await;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return match frame {
                    Some(f) => format!(
                        "server closed the connection ({}): {}",
                        u16::from(f.code),
                        f.reason
                    ),
                    None => "server closed the connection".into(),
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return format!("connection error: {e}"),
            None => return "connection closed".into(),
        }
    }
}

impl Inner {
    /// Handles one server frame: replies and pongs complete their waiters, everything else
    /// becomes an event.
    fn dispatch(&self, bytes: &Bytes) -> Option<Event> {
        let frame = match protocol::decode_server(bytes) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!("undecodable frame from the server: {e}");
                return None;
            }
        };
        let payload = |p: Cow<'_, [u8]>| match p {
            Cow::Borrowed(slice) => bytes.slice_ref(slice),
            Cow::Owned(vec) => Bytes::from(vec),
        };
        Some(match frame {
            ServerFrame::Message { from, payload: p } => Event::Message {
                from: from.into_owned(),
                payload: payload(p),
            },
            ServerFrame::Broadcast { from, payload: p } => Event::Broadcast {
                from: from.into_owned(),
                payload: payload(p),
            },
            ServerFrame::Published {
                from,
                subject,
                payload: p,
            } => Event::Published {
                from: from.into_owned(),
                subject: subject.into_owned(),
                payload: payload(p),
            },
            ServerFrame::Request {
                from,
                corr,
                subject,
                timeout_ms,
                payload: p,
            } => Event::Request(IncomingRequest {
                from: from.into_owned(),
                corr,
                subject: subject.map(Cow::into_owned),
                deadline: Instant::now() + Duration::from_millis(u64::from(timeout_ms)),
                payload: payload(p),
            }),
            ServerFrame::Reply {
                corr, payload: p, ..
            } => {
                if let Some(tx) = self.pending.lock().remove(&corr) {
                    let _ = tx.send(Ok(payload(p)));
                }
                return None;
            }
            ServerFrame::Error {
                code,
                corr,
                target,
                message,
            } => {
                if corr != 0 {
                    if let Some(tx) = self.pending.lock().remove(&corr) {
                        let _ = tx.send(Err(RequestError::from_server(code, &target, &message)));
                        return None;
                    }
                }
                Event::Undeliverable {
                    code,
                    target: target.into_owned(),
                    message: message.into_owned(),
                }
            }
            ServerFrame::Pong { nonce } => {
                if let Some(tx) = self.pings.lock().remove(&nonce) {
                    let _ = tx.send(());
                }
                return None;
            }
            ServerFrame::Joined { peer, epoch } => {
                self.members.lock().insert(peer.to_string(), epoch);
                Event::Joined {
                    peer: peer.into_owned(),
                    epoch,
                }
            }
            ServerFrame::Left {
                peer,
                epoch,
                reason,
            } => {
                let mut members = self.members.lock();
                if members.get(peer.as_ref()) == Some(&epoch) {
                    members.remove(peer.as_ref());
                }
                Event::Left {
                    peer: peer.into_owned(),
                    epoch,
                    reason,
                }
            }
            ServerFrame::Welcome(_) => return None,
        })
    }
}

/// Writes queued frames, as many as are ready per flush, until the queue closes.
async fn write_loop(mut sink: SplitSink<Ws, Message>, mut rx: mpsc::Receiver<Message>) {
    let mut ready = Vec::with_capacity(256);
    while rx.recv_many(&mut ready, 1024).await > 0 {
        for message in ready.drain(..) {
            let is_close = matches!(message, Message::Close(_));
            if sink.feed(message).await.is_err() {
                return;
            }
            if is_close {
                let _ = sink.flush().await;
                let _ = sink.close().await;
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.send(Message::Close(None)).await;
    let _ = sink.close().await;
}
