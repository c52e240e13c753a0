//! The accept loop: TCP (optionally TLS), one task per connection, dispatch of each request
//! head, and graceful shutdown (every peer gets a going-away close frame, then we return).

use crate::auth::subprotocols;
use crate::http::{error_body, read_head, respond, HeadError, Request, HEAD_TIMEOUT};
use crate::metrics::Counter;
use crate::registry::{Encoding, JoinRequest};
use crate::router::{Limits, Session};
use crate::{Settings, Shared};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Bytes tungstenite reads from a socket at a time. Before each read it zero-fills the free
/// part of its buffer up to this size, so its 128 KiB default costs a 128 KiB memset per read
/// however little arrives; measured on p2p 1 KiB: 32 KiB was best of 16, 32, 64 and 128 KiB.
const READ_BUFFER: usize = 32 * 1024;

/// How long shutdown waits for connections to close before returning anyway (pm2 kills 1.6 s
/// after its SIGINT).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1000);

/// A bound, not yet running, server.
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    max_connections: usize,
}

/// Connections over the limit that are being told so (503) at once; any more are closed
/// without an answer, so a flood cannot grow this either.
const MAX_REFUSING: usize = 64;

/// Time a refused connection gets to send its request head and read the 503.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(2);

impl Server {
    /// Binds the listening socket.
    pub async fn bind(settings: Settings) -> std::io::Result<Server> {
        let listener = TcpListener::bind((settings.host.as_str(), settings.port)).await?;
        let shared = Arc::new(Shared {
            registry: Default::default(),
            acebase: Default::default(),
            metrics: Default::default(),
            token: settings.token,
            limits: settings.limits,
            keepalive: settings.keepalive,
            queue_bytes: settings.queue_bytes,
            started: Instant::now(),
        });
        Ok(Server {
            listener,
            tls: settings.tls,
            shared,
            max_connections: settings.max_connections,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The URL peers connect to, e.g. `ws://127.0.0.1:9163`.
    pub fn url(&self) -> std::io::Result<String> {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        Ok(format!("{scheme}://{}", self.local_addr()?))
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until `stop` resolves, then closes every connection with "going away" and
    /// returns within about a second.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        let mut refusing = JoinSet::new();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                accepted = self.listener.accept() => {
                    let (tcp, addr) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    if connections.len() >= self.max_connections {
                        self.shared.metrics.add(0, Counter::ConnectionsRefusedFull, 1);
                        if refusing.len() < MAX_REFUSING {
                            refusing.spawn(refuse_full(tcp, self.tls.clone(), self.max_connections));
                        }
                        continue;
                    }
                    let shared = self.shared.clone();
                    let shutdown = shutdown_rx.clone();
                    match self.tls.clone() {
                        None => { connections.spawn(handle(tcp, shared, shutdown)); }
                        Some(tls) => {
                            connections.spawn(async move {
                                match tokio::time::timeout(HEAD_TIMEOUT, tls.accept(tcp)).await {
                                    Ok(Ok(stream)) => handle(stream, shared, shutdown).await,
                                    Ok(Err(e)) => tracing::debug!(%addr, "TLS handshake failed: {e}"),
                                    Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                Some(_) = refusing.join_next(), if !refusing.is_empty() => {}
            }
        }
        drop(self.listener);
        refusing.abort_all();
        let _ = shutdown_tx.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("{} connections did not close in time", connections.len());
            connections.abort_all();
        }
    }
}

/// Answers a connection over `--max-connections` with 503 (after its request head, so that the
/// client reads the answer instead of a reset) and closes it.
async fn refuse_full(tcp: tokio::net::TcpStream, tls: Option<TlsAcceptor>, max: usize) {
    async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, max: usize) {
        let _ = read_head(&mut stream).await;
        let message =
            format!("the server has {max} open connections (--max-connections); try again later");
        let body = error_body("server_full", &message, None);
        let headers = [("Retry-After", "1")];
        let _ = respond(&mut stream, 503, "application/json", &headers, &body).await;
    }
    let _ = tokio::time::timeout(REFUSE_TIMEOUT, async move {
        match tls {
            None => answer(tcp, max).await,
            Some(tls) => {
                if let Ok(stream) = tls.accept(tcp).await {
                    answer(stream, max).await;
                }
            }
        }
    })
    .await;
}

/// Serves one accepted connection: one HTTP request, or a websocket session.
async fn handle<S>(mut stream: S, shared: Arc<Shared>, shutdown: watch::Receiver<bool>)
where
    S: crate::connection::Transport,
{
    let req = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(req)) => req,
        Ok(Err(HeadError::TooLarge)) => {
            let body = error_body("head_too_large", "request head too large", None);
            let _ = respond(&mut stream, 431, "application/json", &[], &body).await;
            return;
        }
        Ok(Err(HeadError::Malformed(m))) => {
            let body = error_body("bad_request", &m, None);
            let _ = respond(&mut stream, 400, "application/json", &[], &body).await;
            return;
        }
        Ok(Err(_)) | Err(_) => return,
    };
    let result = match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/health") => health(&mut stream, &shared).await,
        ("GET", "/metrics") => {
            let text = shared.metrics.render(&shared.census());
            respond(
                &mut stream,
                200,
                "text/plain; version=0.0.4",
                &[],
                text.as_bytes(),
            )
            .await
        }
        (_, "/health" | "/metrics") => method_not_allowed(&mut stream).await,
        (method, path) => match protocol::parse_connect_path(path) {
            Some(_) if method != "GET" => method_not_allowed(&mut stream).await,
            Some(cp) if cp.rest == "peers" => {
                peers(&mut stream, &shared, &req, cp.version, cp.namespace).await
            }
            Some(cp) if cp.rest.is_empty() => {
                let (version, namespace) = (cp.version, cp.namespace.to_owned());
                return connect(stream, req, version, namespace, shared, shutdown).await;
            }
            Some(_) => not_found(&mut stream).await,
            None => match crate::acebase::parse_path(path) {
                Some((db, action)) => {
                    let db = db.to_owned();
                    return crate::acebase::handle(stream, req, db, action, shared, shutdown).await;
                }
                None => not_found(&mut stream).await,
            },
        },
    };
    if let Err(e) = result {
        tracing::debug!("response failed: {e}");
    }
}

async fn health<S: AsyncWrite + Unpin>(stream: &mut S, shared: &Shared) -> std::io::Result<()> {
    let census = shared.census();
    let body = serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol_versions": protocol::SUPPORTED_VERSIONS.iter().map(|v| format!("v{v}")).collect::<Vec<_>>(),
        "uptime_s": shared.started.elapsed().as_secs(),
        "namespaces": census.len(),
        "peers": census.iter().map(|(_, _, n)| n).sum::<usize>(),
    });
    respond(
        stream,
        200,
        "application/json",
        &[],
        body.to_string().as_bytes(),
    )
    .await
}

/// Refuses `req` if the server has a token and the request does not carry it.
async fn check_token<S: AsyncWrite + Unpin>(
    stream: &mut S,
    shared: &Shared,
    req: &Request,
) -> bool {
    match &shared.token {
        Some(token) if !token.admits(req) => {
            shared.metrics.add(0, Counter::HandshakeUnauthorized, 1);
            let body = error_body(
                "unauthorized",
                "a valid token is required: send it as 'Authorization: Bearer <token>' or as the websocket subprotocol 'bearer.<token>'",
                None,
            );
            let _ = respond(
                stream,
                401,
                "application/json",
                &[("WWW-Authenticate", "Bearer")],
                &body,
            )
            .await;
            false
        }
        _ => true,
    }
}

/// Answers with an error status and a JSON body, counting it as a refused request.
pub(crate) async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    shared: &Shared,
    status: u16,
    code: &str,
    message: &str,
) {
    let counter = match status {
        401 | 403 => Counter::HandshakeUnauthorized,
        _ => Counter::HandshakeRejected,
    };
    shared.metrics.add(0, counter, 1);
    let body = error_body(code, message, None);
    let _ = respond(stream, status, "application/json", &[], &body).await;
}

async fn not_found<S: AsyncWrite + Unpin>(stream: &mut S) -> std::io::Result<()> {
    let message = "no such endpoint; peers connect to /ipc/v1/<namespace>?id=<peer id>";
    respond(
        stream,
        404,
        "application/json",
        &[],
        &error_body("not_found", message, None),
    )
    .await
}

/// 405 for a known path with the wrong method.
async fn method_not_allowed<S: AsyncWrite + Unpin>(stream: &mut S) -> std::io::Result<()> {
    let body = error_body("method_not_allowed", "use GET", None);
    respond(stream, 405, "application/json", &[("Allow", "GET")], &body).await
}

async fn unsupported_version<S: AsyncWrite + Unpin>(stream: &mut S, shared: &Shared, version: u32) {
    shared.metrics.add(0, Counter::HandshakeRejected, 1);
    let supported: Vec<String> = protocol::SUPPORTED_VERSIONS
        .iter()
        .map(|v| format!("v{v}"))
        .collect();
    let body = error_body(
        "unsupported_version",
        &format!(
            "protocol version v{version} is not supported; this server speaks {}",
            supported.join(", ")
        ),
        Some(("supported", serde_json::json!(supported))),
    );
    let _ = respond(stream, 400, "application/json", &[], &body).await;
}

/// `GET /ipc/v1/<namespace>/peers`: the members of a namespace (token required).
async fn peers<S: AsyncWrite + Unpin>(
    stream: &mut S,
    shared: &Shared,
    req: &Request,
    version: u32,
    namespace: &str,
) -> std::io::Result<()> {
    if !protocol::SUPPORTED_VERSIONS.contains(&version) {
        unsupported_version(stream, shared, version).await;
        return Ok(());
    }
    if !check_token(stream, shared, req).await {
        return Ok(());
    }
    let list: Vec<serde_json::Value> = shared
        .registry
        .namespace(namespace)
        .map(|ns| ns.listing())
        .unwrap_or_default()
        .into_iter()
        .map(|(id, epoch, encoding, subscriptions, since)| {
            let since_ms = since
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            serde_json::json!({
                "id": id.as_ref(),
                "epoch": epoch,
                "encoding": encoding.name(),
                "subscriptions": subscriptions,
                "connected_at_ms": since_ms,
            })
        })
        .collect();
    let body = serde_json::json!({ "namespace": namespace, "peers": list });
    respond(
        stream,
        200,
        "application/json",
        &[],
        body.to_string().as_bytes(),
    )
    .await
}

/// A websocket connect: every check that can refuse happens here, with an HTTP status, before
/// the 101 response; then the connection runs until it ends.
async fn connect<S>(
    mut stream: S,
    req: Request,
    version: u32,
    namespace: String,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) where
    S: crate::connection::Transport,
{
    if !protocol::SUPPORTED_VERSIONS.contains(&version) {
        return unsupported_version(&mut stream, &shared, version).await;
    }
    if !check_token(&mut stream, &shared, &req).await {
        return;
    }
    if let Err(e) = protocol::validate_namespace(&namespace) {
        return refuse(
            &mut stream,
            &shared,
            400,
            "invalid_namespace",
            &e.to_string(),
        )
        .await;
    }
    let Some(id) = req.query("id").map(str::to_owned) else {
        return refuse(
            &mut stream,
            &shared,
            400,
            "missing_peer_id",
            "add ?id=<peer id> to the connect URL",
        )
        .await;
    };
    if let Err(e) = protocol::validate_peer_id(&id) {
        return refuse(&mut stream, &shared, 400, "invalid_peer_id", &e.to_string()).await;
    }
    let offered: Vec<String> = subprotocols(&req).map(str::to_owned).collect();
    let encoding = match req.query("encoding") {
        Some("json") => Encoding::Json,
        Some("binary") | Some("bincode") => Encoding::Binary,
        None if offered.iter().any(|p| p == "ipc.v1.json") => Encoding::Json,
        None => Encoding::Binary,
        Some(other) => {
            let message = format!("unknown encoding {other:?}; use json or binary");
            return refuse(&mut stream, &shared, 400, "invalid_encoding", &message).await;
        }
    };
    let Some(key) = upgrade_key(&mut stream, &shared, &req).await else {
        return;
    };
    // Browsers require the server to pick one of the offered subprotocols.
    let chosen = ["ipc.v1.json", "ipc.v1"]
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .map(|p| p.to_string())
        .or_else(|| offered.iter().find(|p| p.starts_with("bearer.")).cloned());

    let join = JoinRequest {
        namespace: &namespace,
        id: &id,
        encoding,
        outbox_limit: shared.queue_bytes,
        max_payload: shared.limits.max_payload,
        keepalive_ms: shared.keepalive.as_millis() as u32,
    };
    let limits = shared.limits.clone();
    accept_peer(stream, req, &key, chosen, &join, limits, shared, shutdown).await;
}

/// Checks the websocket upgrade headers and returns the client's key; on failure answers with
/// 426 or 400 and returns `None`.
pub(crate) async fn upgrade_key<S: AsyncWrite + Unpin>(
    stream: &mut S,
    shared: &Shared,
    req: &Request,
) -> Option<String> {
    let is_upgrade = req.header_has_token("connection", "upgrade")
        && req.header_has_token("upgrade", "websocket");
    let refusal = if !is_upgrade {
        Some((
            "upgrade_required",
            "this endpoint speaks websocket only",
            ("Upgrade", "websocket"),
        ))
    } else if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        Some((
            "unsupported_websocket_version",
            "Sec-WebSocket-Version must be 13",
            ("Sec-WebSocket-Version", "13"),
        ))
    } else {
        None
    };
    if let Some((code, message, header)) = refusal {
        shared.metrics.add(0, Counter::HandshakeRejected, 1);
        let _ = respond(
            stream,
            426,
            "application/json",
            &[header],
            &error_body(code, message, None),
        )
        .await;
        return None;
    }
    let key = req.header("sec-websocket-key").map(|k| k.trim().to_owned());
    if key.is_none() {
        refuse(
            stream,
            shared,
            400,
            "bad_handshake",
            "missing Sec-WebSocket-Key",
        )
        .await;
    }
    key
}

/// Joins the peer to its registry (a live duplicate id is refused with 409), completes the
/// upgrade and runs the connection until it ends. Shared by both dialects.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn accept_peer<S>(
    mut stream: S,
    req: Request,
    key: &str,
    subprotocol: Option<String>,
    join: &JoinRequest<'_>,
    limits: Limits,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) where
    S: crate::connection::Transport,
{
    let registry = shared.registry_for(join.encoding);
    let (ns, peer) = match registry.join(join) {
        Ok(joined) => joined,
        Err(e) => {
            // Refusing the newcomer (not closing the older connection) means two processes
            // that claim one id cannot kick each other out in a loop.
            shared.metrics.add(0, Counter::HandshakeDuplicatePeer, 1);
            tracing::info!(namespace = %join.namespace, peer = %join.id, dialect = join.encoding.name(), "refused a duplicate peer id");
            let body = error_body("duplicate_peer_id", &e.to_string(), None);
            let _ = respond(&mut stream, 409, "application/json", &[], &body).await;
            return;
        }
    };
    let mut head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if let Some(p) = subprotocol {
        head.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    head.push_str("\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() || stream.flush().await.is_err() {
        registry.leave(&ns, &peer, protocol::LeaveReason::ConnectionLost);
        return;
    }
    shared.metrics.add(peer.conn, Counter::Connections, 1);
    tracing::debug!(namespace = %join.namespace, peer = %join.id, epoch = peer.epoch, dialect = join.encoding.name(), "peer joined");
    // Room for the frame header and for JSON frames, whose base64 payloads are 4/3 larger.
    let hard_cap = limits.max_payload as usize * 2 + 64 * 1024;
    let config = WebSocketConfig::default()
        .max_message_size(Some(hard_cap))
        .max_frame_size(Some(hard_cap))
        .read_buffer_size(READ_BUFFER);
    let session = Session::new(ns, peer, shared.metrics.clone(), limits);
    crate::connection::run(stream, req.rest, config, session, shared, shutdown).await;
}
