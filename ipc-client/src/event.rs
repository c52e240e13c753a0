//! What a client receives.

use bytes::Bytes;
use protocol::{ErrorCode, LeaveReason};
use std::time::Instant;
use tokio::sync::mpsc;

/// A request another peer sent to this one; answer it with [`crate::Client::reply`].
#[derive(Debug, Clone)]
pub struct IncomingRequest {
    pub from: String,
    pub corr: u64,
    /// The subject it was sent to, if it was sent to a subject rather than to this peer's id.
    pub subject: Option<String>,
    /// When the requester stops waiting.
    pub deadline: Instant,
    pub payload: Bytes,
}

/// Everything that arrives for this peer, in the order it arrived.
#[derive(Debug, Clone)]
pub enum Event {
    /// (Re)connected: our session epoch and the other members at that moment.
    Connected {
        epoch: u64,
        members: Vec<(String, u64)>,
    },
    /// The connection was lost; in-flight requests failed with `Disconnected`.
    Disconnected {
        reason: String,
    },
    Joined {
        peer: String,
        epoch: u64,
    },
    Left {
        peer: String,
        epoch: u64,
        reason: LeaveReason,
    },
    Message {
        from: String,
        payload: Bytes,
    },
    Broadcast {
        from: String,
        payload: Bytes,
    },
    Published {
        from: String,
        subject: String,
        payload: Bytes,
    },
    Request(IncomingRequest),
    /// Something we sent (not a request) could not be delivered or was refused.
    Undeliverable {
        code: ErrorCode,
        target: String,
        message: String,
    },
}

/// The stream of incoming events. If it is not read, the client stops reading its socket once
/// the buffer is full and the server slows the senders down (and eventually disconnects us as
/// a slow consumer).
pub struct Events {
    pub(crate) rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client is closed.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}
