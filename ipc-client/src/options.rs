//! Connection options.

use std::time::Duration;

/// How to reach the server and who we are.
#[derive(Clone)]
pub struct ClientOptions {
    /// `ws://host:port` or `wss://host:port` (a trailing path is ignored).
    pub url: String,
    /// Namespace to join (usually the database name).
    pub namespace: String,
    /// This peer's id, unique within the namespace.
    pub peer_id: String,
    /// Access token, sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// Extra trusted CA certificates (PEM) for `wss://`, e.g. a self-signed server certificate.
    /// Without it the Mozilla roots are trusted.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// Timeout of `request` calls that do not give their own, and of the handshake.
    pub request_timeout: Duration,
    /// Reconnect after the connection is lost (default true).
    pub reconnect: bool,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// Incoming events buffered before the reader stops reading (flow control).
    pub event_capacity: usize,
    /// Outgoing frames buffered before sends wait.
    pub send_capacity: usize,
}

impl ClientOptions {
    pub fn new(
        url: impl Into<String>,
        namespace: impl Into<String>,
        peer_id: impl Into<String>,
    ) -> Self {
        ClientOptions {
            url: url.into(),
            namespace: namespace.into(),
            peer_id: peer_id.into(),
            token: None,
            tls_ca_pem: None,
            request_timeout: Duration::from_secs(5),
            reconnect: true,
            max_backoff: Duration::from_millis(1000),
            event_capacity: 8192,
            send_capacity: 4096,
        }
    }

    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn reconnect(mut self, reconnect: bool) -> Self {
        self.reconnect = reconnect;
        self
    }
}

/// The peer id pm2 implies for this process: `<app name>-<instance number>` from pm2's
/// `name` and `NODE_APP_INSTANCE` (or `pm_id`) environment, if this process runs under pm2.
/// Instance numbers are reused by restarted instances, so the id survives restarts.
pub fn pm2_peer_id() -> Option<String> {
    let name = std::env::var("name").ok()?;
    let instance = std::env::var("NODE_APP_INSTANCE")
        .or_else(|_| std::env::var("pm_id"))
        .ok()?;
    let id: String = format!("{name}-{instance}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.:@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    protocol::validate_peer_id(&id).is_ok().then_some(id)
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("url", &self.url)
            .field("namespace", &self.namespace)
            .field("peer_id", &self.peer_id)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}
