//! The life of one upgraded websocket connection: a reader (routing every frame in order), a
//! writer task (draining the peer's outbox, one flush per batch), a keepalive watchdog, and the
//! single place where the peer leaves its namespace, whatever ended the connection.
//!
//! The socket is split into its two directions. tungstenite parses what the peer sends (over
//! the read half only; it never writes); the writer task owns the write half and writes the
//! ready-made frames of the outbox ([`crate::wire`]) itself: small frames gathered into one
//! reused buffer, larger ones straight from the router's buffers, in one vectored write. Pongs
//! and close replies, which tungstenite would otherwise write, go through the outbox like
//! everything else.

use crate::metrics::Counter;
use crate::outbox::CloseReason;
use crate::registry::{Encoding, Peer};
use crate::router::Session;
use crate::wire::WireFrame;
use crate::Shared;
use futures_util::{FutureExt, StreamExt};
use protocol::{close_code, ErrorCode, LeaveReason};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// How long the writer may take to deliver the final close frame.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Small frames are gathered into one buffer up to about this size per write.
const WRITE_CHUNK: usize = 64 * 1024;

/// A frame at least this large is written from its own buffer (one slice of a vectored write)
/// instead of being copied into the write buffer first. Frames routed under load have usually
/// left the cache by the time they are written, so every copy of them is a trip to memory;
/// measured on p2p 1 KiB: +20 % msg/s over copying every frame.
const WRITE_DIRECT: usize = 512;

/// A connection's byte stream that can be split into a read half and a write half, used from
/// two tasks without a lock between them where the transport allows it.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Reader: AsyncRead + Unpin + Send + 'static;
    type Writer: AsyncWrite + Unpin + Send + 'static;
    fn into_halves(self) -> (Self::Reader, Self::Writer);
}

impl Transport for TcpStream {
    type Reader = tokio::net::tcp::OwnedReadHalf;
    type Writer = tokio::net::tcp::OwnedWriteHalf;
    fn into_halves(self) -> (Self::Reader, Self::Writer) {
        self.into_split()
    }
}

/// TLS state is shared by both directions, so its halves share a lock.
impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    type Reader = tokio::io::ReadHalf<Self>;
    type Writer = tokio::io::WriteHalf<Self>;
    fn into_halves(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
}

/// The read half, as the duplex stream tungstenite wants. Whatever tungstenite would write
/// (automatic pongs and close replies) is dropped: the connection answers those through the
/// outbox instead, in order with everything else it sends.
pub struct ReadOnly<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for ReadOnly<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ReadOnly<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Runs the connection until it ends, then removes the peer from its namespace. `rest` is what
/// was read after the upgrade request's head.
pub async fn run<S: Transport>(
    stream: S,
    rest: Vec<u8>,
    config: WebSocketConfig,
    mut session: Session,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = session.me.clone();
    let ns = session.ns.clone();
    let (reader, sink) = stream.into_halves();
    let mut stream =
        WebSocketStream::from_partially_read(ReadOnly(reader), rest, Role::Server, Some(config))
            .await;
    // Frames heard from the peer: bumped by the reader, watched by the keepalive watchdog (no
    // clock reads on the hot path).
    let heard = AtomicU64::new(0);
    let writer = tokio::spawn(write_loop(sink, peer.clone()));

    let reason = {
        let read = read_loop(&mut stream, &mut session, &heard);
        let watchdog = keepalive(&peer, &heard, shared.keepalive);
        tokio::select! {
            reason = read => reason,
            reason = peer.outbox.closed() => reason,
            reason = watchdog => reason,
            _ = shutdown.wait_for(|stop| *stop) => CloseReason {
                leave: LeaveReason::ServerShutdown,
                code: 1001,
                text: "server shutting down".into(),
            },
        }
    };
    match reason.leave {
        LeaveReason::SlowConsumer => {
            tracing::warn!(peer = %peer.id, namespace = %ns.name, "{}", reason.text)
        }
        LeaveReason::KeepaliveTimeout => {
            shared.metrics.add(peer.conn, Counter::KeepaliveTimeouts, 1);
            tracing::info!(peer = %peer.id, namespace = %ns.name, "{}", reason.text)
        }
        _ => {
            tracing::debug!(peer = %peer.id, namespace = %ns.name, reason = ?reason.leave, "peer left")
        }
    }
    let leave = reason.leave;
    peer.outbox.close(reason);
    shared.registry_for(peer.encoding).leave(&ns, &peer, leave);
    if tokio::time::timeout(CLOSE_GRACE * 2, writer).await.is_err() {
        tracing::debug!(peer = %peer.id, "writer did not finish in time");
    }
}

/// Yields once to the runtime, so that the task goes to the back of the run queue, where an idle
/// worker thread can take it.
///
/// Without it, a lone message (request/reply at low load) is read, routed and written by the
/// one worker thread that was woken, while the other cores sit halted; the next hop of the
/// exchange then lands on a halted core, and waking one costs tens of microseconds on a VM.
/// A yield wakes a second worker as soon as work arrives, so its core is already up when the
/// next hop comes. Under load the reader rarely waits and batches are large, so the yields are
/// rare. Measured on a 2-core VM, the benchmark's request/reply p50 fell from ~165 to ~115 µs,
/// with throughput unchanged.
async fn hand_over() {
    tokio::task::yield_now().await;
}

/// Reads and routes frames until the connection ends; returns why it ended.
async fn read_loop<R>(
    stream: &mut WebSocketStream<ReadOnly<R>>,
    session: &mut Session,
    heard: &AtomicU64,
) -> CloseReason
where
    R: AsyncRead + Unpin,
{
    loop {
        // Publish the local counters whenever the reader is about to wait.
        let next = match stream.next().now_or_never() {
            Some(next) => next,
            None => {
                session.flush_counts();
                let next = stream.next().await;
                // A frame that found the connection idle is routed after one yield: see
                // [`hand_over`].
                hand_over().await;
                next
            }
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(WsError::Capacity(e))) => {
                return CloseReason {
                    leave: LeaveReason::ProtocolError,
                    code: 1009,
                    text: format!(
                        "message too big: {e}; the maximum payload is {} bytes",
                        session.limits.max_payload
                    ),
                }
            }
            Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                return CloseReason {
                    leave: LeaveReason::ConnectionLost,
                    code: 1006,
                    text: "connection reset".into(),
                }
            }
            Some(Err(WsError::Utf8(e))) => {
                return CloseReason {
                    leave: LeaveReason::ProtocolError,
                    code: 1007,
                    text: format!("text frame is not UTF-8: {e}"),
                }
            }
            Some(Err(WsError::Protocol(e))) => {
                return CloseReason {
                    leave: LeaveReason::ProtocolError,
                    code: 1002,
                    text: format!("protocol error: {e}"),
                }
            }
            Some(Err(e)) => {
                return CloseReason {
                    leave: LeaveReason::ConnectionLost,
                    code: 1006,
                    text: format!("connection lost: {e}"),
                }
            }
            None => {
                return CloseReason {
                    leave: LeaveReason::ConnectionLost,
                    code: 1006,
                    text: "connection closed without a close frame".into(),
                }
            }
        };
        // Only this task writes `heard`, so a plain load and store suffice (no locked add).
        heard.store(heard.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        match message {
            Message::Binary(bytes) => {
                session.note_received(bytes.len());
                match protocol::decode_client(&bytes) {
                    Ok(frame) => session.route(frame).await,
                    Err(e) => session.error(ErrorCode::MalformedFrame, 0, "", e.to_string()),
                }
            }
            Message::Text(text) => {
                session.note_received(text.len());
                if session.me.encoding == Encoding::AceBase {
                    match crate::acebase::parse(&text) {
                        Ok(Some(frame)) => session.route(frame).await,
                        Ok(None) => {}
                        Err(e) => session.error(ErrorCode::MalformedFrame, 0, "", e),
                    }
                    continue;
                }
                match protocol::json::decode_client(&text) {
                    Ok(frame) => session.route(frame).await,
                    Err(e) => session.error(ErrorCode::MalformedFrame, 0, "", e.to_string()),
                }
            }
            Message::Close(frame) => {
                // The reply echoes the peer's code and reason (tungstenite has already turned a
                // code that may not be sent into 1002); a close without a code gets an empty
                // close frame back (1005, which the writer never puts on the wire).
                let (code, text) = match frame {
                    Some(f) => (u16::from(f.code), f.reason.as_str().to_owned()),
                    None => (1005, String::new()),
                };
                return CloseReason {
                    leave: LeaveReason::Closed,
                    code,
                    text,
                };
            }
            Message::Ping(data) => session.me.outbox.push_control(WireFrame::pong(&data)),
            Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// Pings a quiet peer and returns once it has been silent for the whole keepalive timeout.
async fn keepalive(peer: &Peer, heard: &AtomicU64, timeout: Duration) -> CloseReason {
    let timeout_ms = timeout.as_millis() as u64;
    let tick = (timeout / 8).max(Duration::from_millis(20));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_count = heard.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        interval.tick().await;
        let count = heard.load(Ordering::Relaxed);
        // Time spent waiting for other peers' queues is not this peer's silence.
        if count != last_count || peer.waiting_on_others.load(Ordering::Relaxed) {
            last_count = count;
            last_change = Instant::now();
            peer.silent_ms.store(0, Ordering::Relaxed);
            continue;
        }
        let silent = last_change.elapsed().as_millis() as u64;
        peer.silent_ms.store(silent, Ordering::Relaxed);
        if silent >= timeout_ms {
            return CloseReason {
                leave: LeaveReason::KeepaliveTimeout,
                code: close_code::KEEPALIVE_TIMEOUT,
                text: format!("nothing heard for {silent} ms (keepalive timeout {timeout_ms} ms)"),
            };
        }
        if silent >= timeout_ms / 4 {
            peer.outbox.push_control(WireFrame::ping());
        }
    }
}

/// Writes everything the outbox holds, one flush per batch, until the outbox closes; then sends
/// the close frame that says why.
async fn write_loop<W: AsyncWrite + Unpin>(mut sink: W, peer: Arc<Peer>) {
    let mut batch = Vec::with_capacity(256);
    let mut buf = Vec::with_capacity(WRITE_CHUNK);
    while let Some(bytes) = peer.outbox.next_batch(&mut batch).await {
        if batch.len() == 1 {
            // A lone frame: see [`hand_over`]. Frames routed meanwhile still go in this write.
            hand_over().await;
        }
        let result = write_batch(&mut sink, &mut batch, &mut buf).await;
        batch.clear();
        peer.outbox.release(bytes);
        if let Err(e) = result {
            peer.outbox.close(CloseReason {
                leave: LeaveReason::ConnectionLost,
                code: 1006,
                text: format!("write failed: {e}"),
            });
            return;
        }
    }
    if let Some(reason) = peer.outbox.close_reason() {
        if reason.code != 1006 {
            let frame = WireFrame::close(reason.code, truncate(&reason.text, 120));
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                sink.write_all(frame.as_wire()).await?;
                sink.flush().await
            })
            .await;
        }
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.shutdown()).await;
}

/// Writes `batch` in order, then flushes. Small frames are copied into `buf` and go out as one
/// slice; frames of at least [`WRITE_DIRECT`] bytes go out from their own buffers, in the same
/// vectored write (the kernel then copies them once, straight from where the router built them).
async fn write_batch<W: AsyncWrite + Unpin>(
    sink: &mut W,
    batch: &mut Vec<WireFrame>,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    if !sink.is_write_vectored() {
        return write_batch_copied(sink, batch, buf).await;
    }
    // (own buffer?, frame index or start in `buf`, end in `buf`) of each slice; the slices are
    // made only once `buf` is complete, since it may move while it grows.
    let mut spans: Vec<(bool, usize, usize)> = Vec::with_capacity(batch.len().min(MAX_SLICES));
    let mut start = 0;
    while start < batch.len() {
        // One vectored write covers at most MAX_SLICES slices and about WRITE_CHUNK bytes
        // gathered into `buf`.
        buf.clear();
        spans.clear();
        let mut end = start;
        while end < batch.len() && spans.len() < MAX_SLICES && buf.len() < WRITE_CHUNK {
            let wire = batch[end].as_wire();
            if wire.len() >= WRITE_DIRECT {
                spans.push((true, end, 0));
            } else {
                let from = buf.len();
                buf.extend_from_slice(wire);
                match spans.last_mut() {
                    Some((false, _, to)) if *to == from => *to = buf.len(),
                    _ => spans.push((false, from, buf.len())),
                }
            }
            end += 1;
        }
        let mut slices: Vec<io::IoSlice<'_>> = spans
            .iter()
            .map(|&(own, a, b)| {
                if own {
                    io::IoSlice::new(batch[a].as_wire())
                } else {
                    io::IoSlice::new(&buf[a..b])
                }
            })
            .collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = sink.write_vectored(rest).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            io::IoSlice::advance_slices(&mut rest, n);
        }
        start = end;
    }
    batch.clear();
    sink.flush().await
}

/// At most this many slices per vectored write (Linux takes up to 1024).
const MAX_SLICES: usize = 512;

/// [`write_batch`] for transports without vectored writes (TLS): everything through `buf`.
async fn write_batch_copied<W: AsyncWrite + Unpin>(
    sink: &mut W,
    batch: &mut Vec<WireFrame>,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    buf.clear();
    for frame in batch.drain(..) {
        buf.extend_from_slice(frame.as_wire());
        if buf.len() >= WRITE_CHUNK {
            sink.write_all(buf).await?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        sink.write_all(buf).await?;
        buf.clear();
    }
    sink.flush().await
}

/// Close reasons are limited to 123 bytes on the wire.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
