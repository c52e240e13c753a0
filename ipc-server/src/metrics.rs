//! Counters for `GET /metrics`. Hot-path counters are sharded by connection id over padded
//! cache lines, so two connections on two cores never write the same line.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

const SHARDS: usize = 16;

/// What is counted.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub enum Counter {
    FramesReceived,
    BytesReceived,
    MessagesRouted,
    BytesRouted,
    Connections,
    SlowConsumerDisconnects,
    KeepaliveTimeouts,
    ErrUnknownPeer,
    ErrNoResponders,
    ErrDeadlineExceeded,
    ErrPayloadTooLarge,
    ErrMalformedFrame,
    ErrInvalidName,
    HandshakeUnauthorized,
    HandshakeRejected,
    HandshakeDuplicatePeer,
    ConnectionsRefusedFull,
}

const COUNTERS: usize = Counter::ConnectionsRefusedFull as usize + 1;

#[repr(align(128))]
struct Shard([AtomicU64; COUNTERS]);

/// Server-wide counters.
pub struct Metrics {
    shards: Box<[Shard]>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            shards: (0..SHARDS)
                .map(|_| Shard(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }
}

impl Metrics {
    /// Adds `n` to `counter` in the shard of connection `conn`.
    #[inline]
    pub fn add(&self, conn: u64, counter: Counter, n: u64) {
        self.shards[conn as usize % SHARDS].0[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// The total of `counter` over all shards.
    pub fn get(&self, counter: Counter) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0[counter as usize].load(Ordering::Relaxed))
            .sum()
    }

    /// Prometheus text exposition; `peers` lists (namespace, dialect, peer count).
    pub fn render(&self, peers: &[(String, &'static str, usize)]) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |c: Counter| vec![(String::new(), self.get(c))];
        let peer_lines: Vec<(String, u64)> = peers
            .iter()
            .map(|(ns, dialect, n)| {
                let ns = ns.replace(['"', '\\'], "_");
                (
                    format!("{{namespace=\"{ns}\",dialect=\"{dialect}\"}}"),
                    *n as u64,
                )
            })
            .collect();
        metric(
            "ipc_peers",
            "gauge",
            "Connected peers per namespace.",
            &peer_lines,
        );
        metric(
            "ipc_connections_total",
            "counter",
            "Websocket sessions accepted.",
            &one(Counter::Connections),
        );
        metric(
            "ipc_connections_refused_full_total",
            "counter",
            "Connections answered 503 because --max-connections were open.",
            &one(Counter::ConnectionsRefusedFull),
        );
        metric(
            "ipc_frames_received_total",
            "counter",
            "Frames received from peers.",
            &one(Counter::FramesReceived),
        );
        metric(
            "ipc_bytes_received_total",
            "counter",
            "Frame bytes received from peers.",
            &one(Counter::BytesReceived),
        );
        metric(
            "ipc_messages_routed_total",
            "counter",
            "Messages delivered to peer queues (one per receiver).",
            &one(Counter::MessagesRouted),
        );
        metric(
            "ipc_bytes_routed_total",
            "counter",
            "Frame bytes delivered to peer queues.",
            &one(Counter::BytesRouted),
        );
        metric(
            "ipc_slow_consumer_disconnects_total",
            "counter",
            "Peers disconnected because their queue stayed full.",
            &one(Counter::SlowConsumerDisconnects),
        );
        metric(
            "ipc_keepalive_timeouts_total",
            "counter",
            "Peers disconnected because they went silent.",
            &one(Counter::KeepaliveTimeouts),
        );
        let errors = [
            ("unknown_peer", Counter::ErrUnknownPeer),
            ("no_responders", Counter::ErrNoResponders),
            ("deadline_exceeded", Counter::ErrDeadlineExceeded),
            ("payload_too_large", Counter::ErrPayloadTooLarge),
            ("malformed_frame", Counter::ErrMalformedFrame),
            ("invalid_name", Counter::ErrInvalidName),
            ("handshake_unauthorized", Counter::HandshakeUnauthorized),
            ("handshake_rejected", Counter::HandshakeRejected),
            ("handshake_duplicate_peer", Counter::HandshakeDuplicatePeer),
        ];
        let error_lines: Vec<(String, u64)> = errors
            .iter()
            .map(|(k, c)| (format!("{{kind=\"{k}\"}}"), self.get(*c)))
            .collect();
        metric(
            "ipc_errors_total",
            "counter",
            "Errors by kind.",
            &error_lines,
        );
        out
    }
}
