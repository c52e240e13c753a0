//! The frames themselves. Field order and variant order are part of the binary wire format:
//! append new variants at the end, never reorder (see `docs/protocol.md`).

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Where a request goes: one peer by id, or one subscriber of a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target<'a> {
    /// The peer with this id in the sender's namespace.
    #[serde(borrow)]
    Peer(Cow<'a, str>),
    /// One subscriber (chosen round-robin) whose pattern matches this subject.
    #[serde(borrow)]
    Subject(Cow<'a, str>),
}

/// A frame sent by a peer to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame<'a> {
    /// Unicast to one peer of the namespace.
    Send {
        #[serde(borrow)]
        to: Cow<'a, str>,
        #[serde(borrow, with = "serde_bytes")]
        payload: Cow<'a, [u8]>,
    },
    /// To every other member of the namespace.
    Broadcast {
        #[serde(borrow, with = "serde_bytes")]
        payload: Cow<'a, [u8]>,
    },
    /// To every subscriber whose pattern matches `subject`.
    Publish {
        #[serde(borrow)]
        subject: Cow<'a, str>,
        #[serde(borrow, with = "serde_bytes")]
        payload: Cow<'a, [u8]>,
    },
    /// Start receiving publications matching `pattern` (`*` one token, `>` the rest).
    Subscribe {
        #[serde(borrow)]
        pattern: Cow<'a, str>,
    },
    /// Stop receiving publications for exactly this pattern.
    Unsubscribe {
        #[serde(borrow)]
        pattern: Cow<'a, str>,
    },
    /// A request expecting one reply with the same `corr` within `timeout_ms`.
    Request {
        corr: u64,
        #[serde(borrow)]
        target: Target<'a>,
        timeout_ms: u32,
        #[serde(borrow, with = "serde_bytes")]
        payload: Cow<'a, [u8]>,
    },
    /// The answer to a request received from peer `to`.
    Reply {
        #[serde(borrow)]
        to: Cow<'a, str>,
        corr: u64,
        #[serde(borrow, with = "serde_bytes")]
        payload: Cow<'a, [u8]>,
    },
    /// Asks for a `Pong` with the same nonce once every earlier frame has been processed.
    Ping { nonce: u64 },
}

/// One member of a namespace: its peer id and the session epoch of its connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    pub epoch: u64,
}

/// The first frame of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome<'a> {
    /// Protocol version in use.
    pub version: u32,
    /// The peer's own id, as the server understood it.
    #[serde(borrow)]
    pub peer: Cow<'a, str>,
    /// Session epoch of this connection; grows with every connection of the same id.
    pub epoch: u64,
    /// Largest payload the server accepts, in bytes.
    pub max_payload: u32,
    /// The server closes connections silent for longer than this (milliseconds).
    pub keepalive_ms: u32,
    /// Every other member of the namespace at the moment this peer joined.
    #[serde(borrow)]
    pub members: Vec<Member<'a>>,
}

/// Why a peer left its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// It closed its connection.
    Closed,
    /// Its connection broke (process killed, network error).
    ConnectionLost,
    /// It stayed silent past the keepalive timeout.
    KeepaliveTimeout,
    /// It could not keep up with its incoming messages.
    SlowConsumer,
    /// It broke the protocol.
    ProtocolError,
    /// The server is shutting down.
    ServerShutdown,
}

/// Typed reasons for an `Error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No peer with that id is connected to the namespace.
    UnknownPeer,
    /// No subscriber matches the request's subject.
    NoResponders,
    /// The request's deadline passed before it could be delivered.
    DeadlineExceeded,
    /// The payload is larger than the server's maximum.
    PayloadTooLarge,
    /// The frame could not be decoded.
    MalformedFrame,
    /// A subject, pattern or peer id breaks the naming rules.
    InvalidName,
}

/// A frame sent by the server to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame<'a> {
    #[serde(borrow)]
    Welcome(Welcome<'a>),
    /// A peer joined the namespace.
    Joined {
        #[serde(borrow)]
        peer: Cow<'a, str>,
        epoch: u64,
    },
    /// A peer left the namespace.
    Left {
        #[serde(borrow)]
        peer: Cow<'a, str>,
        epoch: u64,
        reason: LeaveReason,
    },
    /// A unicast from `from`.
    Message {
        #[serde(borrow)]
        from: Cow<'a, str>,
        #[serde(borrow, with = "serde_bytes")]
        payload: Cow<'a, [u8]>,
    },
    /// A broadcast from `from`.
    Broadcast {
        #[serde(borrow)]
        from: Cow<'a, str>,
        #[serde(borrow, with = "serde_bytes")]
        payload: Cow<'a, [u8]>,
    },
    /// A publication on `subject` that matched one of this peer's subscriptions.
    Published {
        #[serde(borrow)]
        from: Cow<'a, str>,
        #[serde(borrow)]
        subject: Cow<'a, str>,
        #[serde(borrow, with = "serde_bytes")]
        payload: Cow<'a, [u8]>,
    },
    /// A request to answer with a `Reply { to: from, corr, .. }`.
    Request {
        #[serde(borrow)]
        from: Cow<'a, str>,
        corr: u64,
        /// The subject it was sent to, when it was sent to a subject.
        #[serde(borrow)]
        subject: Option<Cow<'a, str>>,
        timeout_ms: u32,
        #[serde(borrow, with = "serde_bytes")]
        payload: Cow<'a, [u8]>,
    },
    /// The reply to this peer's request `corr`.
    Reply {
        #[serde(borrow)]
        from: Cow<'a, str>,
        corr: u64,
        #[serde(borrow, with = "serde_bytes")]
        payload: Cow<'a, [u8]>,
    },
    /// Something this peer sent could not be delivered or processed. `corr` is the request's
    /// correlation id when the failed frame was a request, else 0; `target` names the peer or
    /// subject concerned (may be empty).
    Error {
        code: ErrorCode,
        corr: u64,
        #[serde(borrow)]
        target: Cow<'a, str>,
        #[serde(borrow)]
        message: Cow<'a, str>,
    },
    /// Answer to `Ping { nonce }`.
    Pong { nonce: u64 },
}
