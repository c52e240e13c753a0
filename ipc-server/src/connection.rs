//! The life of one upgraded websocket connection: a reader (routing every frame in order), a
//! writer task (draining the peer's outbox, one flush per batch), a keepalive watchdog, and the
//! single place where the peer leaves its namespace, whatever ended the connection.

use crate::metrics::Counter;
use crate::outbox::CloseReason;
use crate::registry::{Encoding, Peer};
use crate::router::Session;
use crate::Shared;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use protocol::{close_code, ErrorCode, LeaveReason};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// How long the writer may take to deliver the final close frame.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Runs the connection until it ends, then removes the peer from its namespace.
pub async fn run<S>(
    ws: WebSocketStream<S>,
    mut session: Session,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = session.me.clone();
    let ns = session.ns.clone();
    let (sink, mut stream) = ws.split();
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

/// Reads and routes frames until the connection ends; returns why it ended.
async fn read_loop<S>(
    stream: &mut SplitStream<WebSocketStream<S>>,
    session: &mut Session,
    heard: &AtomicU64,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        // Publish the local counters whenever the reader is about to wait.
        let next = match stream.next().now_or_never() {
            Some(next) => next,
            None => {
                session.flush_counts();
                stream.next().await
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
            Message::Close(_) => {
                return CloseReason {
                    leave: LeaveReason::Closed,
                    code: 1000,
                    text: "bye".into(),
                };
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
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
            peer.outbox.push_control(Message::Ping(Default::default()));
        }
    }
}

/// Writes everything the outbox holds, one flush per batch, until the outbox closes; then sends
/// the close frame that says why.
async fn write_loop<S>(mut sink: SplitSink<WebSocketStream<S>, Message>, peer: Arc<Peer>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut batch = Vec::with_capacity(256);
    while let Some(bytes) = peer.outbox.next_batch(&mut batch).await {
        let mut failed = None;
        for message in batch.drain(..) {
            if let Err(e) = sink.feed(message).await {
                failed = Some(e);
                break;
            }
        }
        if failed.is_none() {
            failed = sink.flush().await.err();
        }
        batch.clear();
        peer.outbox.release(bytes);
        if let Some(e) = failed {
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
            let frame = CloseFrame {
                code: CloseCode::from(reason.code),
                reason: truncate(&reason.text, 120).into(),
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
        }
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
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
