//! Command-line flags (each also an environment variable, for pm2 `env:` blocks) and their
//! resolution into ready-to-use settings. Every bad combination is reported here, before the
//! server listens.

use crate::auth::Token;
use crate::router::Limits;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// `ipc-server`: a websocket post office for processes.
#[derive(Debug, Clone, Parser)]
#[command(name = "ipc-server", version, about)]
pub struct Config {
    /// TCP port to listen on (0 picks a free port; the listening line says which).
    #[arg(long, env = "IPC_PORT", default_value_t = 9163)]
    pub port: u16,
    /// Address to bind (use 0.0.0.0 to accept connections from other hosts).
    #[arg(long, env = "IPC_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Access token peers must present (Authorization: Bearer, or subprotocol bearer.<token>).
    #[arg(
        long,
        env = "IPC_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// File holding the access token (surrounding whitespace is ignored).
    #[arg(long, env = "IPC_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain: serve wss:// (needs --tls-key).
    #[arg(long, env = "IPC_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "IPC_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Largest payload a peer may send, in bytes.
    #[arg(long, env = "IPC_MAX_PAYLOAD", default_value_t = protocol::DEFAULT_MAX_PAYLOAD)]
    pub max_payload: u32,
    /// A peer silent for this long (no frame, no pong) is disconnected, in milliseconds.
    #[arg(long, env = "IPC_KEEPALIVE_MS", default_value_t = 10_000)]
    pub keepalive_ms: u64,
    /// Bytes that may wait in one peer's outbound queue before its senders are slowed down.
    #[arg(long, env = "IPC_QUEUE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub queue_bytes: usize,
    /// A peer whose full queue makes no progress for this long is disconnected as a slow
    /// consumer, in milliseconds.
    #[arg(long, env = "IPC_SLOW_CONSUMER_MS", default_value_t = 2_000)]
    pub slow_consumer_ms: u64,
    /// Open connections (peers and HTTP requests) served at once; more are answered 503 and
    /// closed. With --queue-bytes this bounds the memory the server can be made to hold.
    #[arg(long, env = "IPC_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token is empty (from {0})")]
    EmptyToken(&'static str),
    #[error("--max-payload must be between 1024 and {max} bytes, got {got}", max = MAX_PAYLOAD_LIMIT)]
    MaxPayload { got: u32 },
    #[error("--keepalive-ms must be at least 100, got {0}")]
    Keepalive(u64),
    #[error("--slow-consumer-ms must be at least 10, got {0}")]
    SlowConsumer(u64),
    #[error("--queue-bytes must be at least 65536 and at least --max-payload, got {0}")]
    QueueBytes(usize),
    #[error("--max-connections must be at least 1")]
    MaxConnections,
    #[error("TLS: {0}")]
    Tls(String),
}

/// Largest --max-payload accepted.
pub const MAX_PAYLOAD_LIMIT: u32 = 256 * 1024 * 1024;

/// Everything the server needs, checked.
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub token: Option<Token>,
    pub tls: Option<TlsAcceptor>,
    pub limits: Limits,
    pub keepalive: Duration,
    pub queue_bytes: usize,
    pub max_connections: usize,
}

impl Config {
    /// Checks the flags and loads the token and TLS material.
    pub fn resolve(&self) -> Result<Settings, ConfigError> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => {
                Some(Token::new(t).ok_or(ConfigError::EmptyToken("--token / IPC_TOKEN"))?)
            }
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::TokenFile {
                        path: path.clone(),
                        source,
                    })?;
                Some(Token::new(text.trim()).ok_or(ConfigError::EmptyToken("--token-file"))?)
            }
            (None, None) => None,
        };
        if !(1024..=MAX_PAYLOAD_LIMIT).contains(&self.max_payload) {
            return Err(ConfigError::MaxPayload {
                got: self.max_payload,
            });
        }
        if self.keepalive_ms < 100 {
            return Err(ConfigError::Keepalive(self.keepalive_ms));
        }
        if self.slow_consumer_ms < 10 {
            return Err(ConfigError::SlowConsumer(self.slow_consumer_ms));
        }
        if self.queue_bytes < 65536 || self.queue_bytes < self.max_payload as usize {
            return Err(ConfigError::QueueBytes(self.queue_bytes));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::MaxConnections);
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        Ok(Settings {
            host: self.host.clone(),
            port: self.port,
            token,
            tls,
            limits: Limits {
                max_payload: self.max_payload,
                slow_consumer: Duration::from_millis(self.slow_consumer_ms),
            },
            keepalive: Duration::from_millis(self.keepalive_ms),
            queue_bytes: self.queue_bytes,
            max_connections: self.max_connections,
        })
    }
}
