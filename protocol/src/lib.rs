//! Wire types of the post office and their encodings, shared by the server and every client.
//!
//! This crate owns what travels on a websocket between a peer and `ipc-server`: the frames a
//! client sends ([`ClientFrame`]), the frames the server sends ([`ServerFrame`]), their binary
//! encoding (bincode, for Rust peers) and their JSON encoding (text frames, for every other
//! language), plus the naming rules for namespaces, peer ids and subjects. It must not do I/O,
//! hold state or know about sockets: the server and the client build on it, never the reverse.
//! `docs/protocol.md` is the normative description of everything here.

mod binary;
mod frames;
pub mod json;
mod names;

pub use binary::{
    decode_client, decode_server, encode_client, encode_server, encode_server_after, DecodeError,
};
pub use frames::{ClientFrame, ErrorCode, LeaveReason, Member, ServerFrame, Target, Welcome};
pub use names::MAX_NAME_LEN;
pub use names::{
    connect_path, parse_connect_path, subject_matches, validate_namespace, validate_pattern,
    validate_peer_id, validate_subject, ConnectPath, NameError,
};

/// The protocol version this crate speaks; it appears in the connect path as `/ipc/v1/...`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Every protocol version the server accepts.
pub const SUPPORTED_VERSIONS: &[u32] = &[1];

/// Default largest payload (bytes) a peer may send; the server announces its own in the welcome.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1024 * 1024;

/// Websocket close codes the server uses, besides the standard ones (1000 normal, 1001 going
/// away, 1002 protocol error, 1009 message too big).
pub mod close_code {
    /// The peer did not read its messages fast enough and its outbound queue stayed full.
    pub const SLOW_CONSUMER: u16 = 4001;
    /// Nothing was heard from the peer within the keepalive timeout.
    pub const KEEPALIVE_TIMEOUT: u16 = 4002;
}
