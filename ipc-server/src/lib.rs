//! `ipc-server`: a websocket post office that routes messages between processes.
//!
//! This crate owns the server side of the protocol in the `protocol` crate: accepting TCP and
//! TLS connections, the HTTP front door (upgrade, token check, health, metrics), namespaces and
//! their members, the subject index, per-peer bounded outboxes with flow control, keepalive and
//! graceful shutdown. It routes payloads as opaque bytes and must not interpret them, persist
//! anything, or know about databases: `db-node` and other clients build on it through the
//! `ipc-client` crate, never by linking the server.
//!
//! Layout: [`server`] accepts connections and dispatches them through [`http`]; an upgraded
//! connection runs in [`connection`], routes each frame through [`router`] against the
//! [`registry`] (namespaces, members, [`subjects`]) and delivers into [`outbox`]es, as
//! ready-made websocket frames ([`wire`]).

pub mod acebase;
pub mod auth;
pub mod config;
pub mod connection;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod pm2;
pub mod registry;
pub mod router;
pub mod server;
pub mod subjects;
pub mod tls;
pub mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

/// State shared by every connection of one server.
pub struct Shared {
    pub registry: registry::Registry,
    /// AceBase peers, kept apart from native ones.
    pub acebase: registry::Registry,
    pub metrics: Arc<metrics::Metrics>,
    pub token: Option<auth::Token>,
    pub limits: router::Limits,
    pub keepalive: Duration,
    pub queue_bytes: usize,
    pub started: Instant,
}

impl Shared {
    /// The registry a peer of this encoding belongs to.
    pub fn registry_for(&self, encoding: registry::Encoding) -> &registry::Registry {
        match encoding {
            registry::Encoding::AceBase => &self.acebase,
            _ => &self.registry,
        }
    }

    /// (namespace, dialect, peer count) of every namespace of both registries.
    pub fn census(&self) -> Vec<(String, &'static str, usize)> {
        let native = self
            .registry
            .census()
            .into_iter()
            .map(|(ns, n)| (ns, "native", n));
        let acebase = self
            .acebase
            .census()
            .into_iter()
            .map(|(ns, n)| (ns, "acebase", n));
        native.chain(acebase).collect()
    }

    /// Limits for AceBase sessions: AceBase measures its limit in UTF-16 characters of a JSON
    /// string, which may take up to 3 bytes each.
    pub fn acebase_limits(&self) -> router::Limits {
        router::Limits {
            max_payload: self.limits.max_payload.saturating_mul(3),
            slow_consumer: self.limits.slow_consumer,
        }
    }
}

/// Tunes glibc's allocator for a message router; call once at start-up, before other threads.
///
/// Every routed message is one allocation that lives from its sender's reader to its receiver's
/// writer, so under load the queued bytes (up to `--queue-bytes` per peer) are allocated and freed
/// in waves. With glibc's defaults each wave returns the top of the heap to the kernel (trim above
/// 128 KiB) and the next one takes it back one page fault at a time; profiles of a 1 KiB p2p load
/// showed about a quarter of the server's CPU time in those faults. Fixed thresholds keep up to
/// 64 MiB of freed heap per malloc arena for reuse, and serve blocks up to 32 MiB (the ceiling
/// glibc's own adaptive threshold reaches) from the heap instead of fresh mappings.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before the runtime starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

pub use config::{Config, ConfigError, Settings};
pub use server::Server;
