//! Typed errors.

use protocol::ErrorCode;

/// Why connecting or sending failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid name: {0}")]
    InvalidName(#[from] protocol::NameError),
    #[error("cannot connect: {0}")]
    Io(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the server refused the token (401)")]
    Unauthorized,
    #[error("the server refused a duplicate peer id (409): {0}")]
    DuplicatePeer(String),
    #[error("the server does not speak this protocol version: {0}")]
    UnsupportedVersion(String),
    #[error("the server refused the connection ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("websocket: {0}")]
    WebSocket(String),
    #[error("the server did not send a welcome: {0}")]
    NoWelcome(String),
    #[error("payload of {len} bytes exceeds the server's maximum of {max}")]
    PayloadTooLarge { len: usize, max: u32 },
    #[error("not connected to the server (reconnecting)")]
    Disconnected,
    #[error("the client was closed")]
    Closed,
}

// Not `#[from]`: that would also make the I/O error the `source`, and chains would print it twice.
impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// Why a request got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("no reply within the timeout")]
    Timeout,
    #[error("the connection to the server was lost before the reply arrived")]
    Disconnected,
    #[error("no peer {0:?} in the namespace")]
    UnknownPeer(String),
    #[error("no responder subscribed to {0:?}")]
    NoResponders(String),
    #[error("the request's deadline passed before it could be delivered")]
    DeadlineExceeded,
    #[error("the server rejected the request ({code:?}): {message}")]
    Rejected { code: ErrorCode, message: String },
    #[error("payload of {len} bytes exceeds the server's maximum of {max}")]
    PayloadTooLarge { len: usize, max: u32 },
    #[error("the client was closed")]
    Closed,
}

impl RequestError {
    /// The error for an `Error` frame that answered a request.
    pub(crate) fn from_server(code: ErrorCode, target: &str, message: &str) -> Self {
        match code {
            ErrorCode::UnknownPeer => RequestError::UnknownPeer(target.to_owned()),
            ErrorCode::NoResponders => RequestError::NoResponders(target.to_owned()),
            ErrorCode::DeadlineExceeded => RequestError::DeadlineExceeded,
            code => RequestError::Rejected {
                code,
                message: message.to_owned(),
            },
        }
    }
}
