//! The AceBase IPC server dialect, so that unmodified AceBase 1.x peers (`storage.ipc = { host,
//! port, token, role }`) use this server as their post office.
//!
//! Handshake `GET /<db>/connect?v=1.x.y&id=<peer id>&t=<token>`; text frames only:
//! `welcome:{"maxPayload":N}`, `connect:<id>` / `disconnect:<id>` (peers of the same database
//! only), `ping` → `pong`, `to:<id>;<json>` (unicast; `to:all;` copies to every other peer) and
//! a bare `<json>` (broadcast to the other peers of the database). The large-message side
//! channel (`POST /<db>/send`) still works, but the welcome announces a payload limit large
//! enough that AceBase does not need it, and this server delivers every message, whatever its
//! size, as an ordinary frame in order (it never sends `get:<id>`).
//!
//! AceBase peers live in their own registry: they and native peers never see each other. The
//! routing, flow control, keepalive and shutdown are the native ones.

use crate::http::{read_body, respond, Request};
use crate::registry::{Encoding, JoinRequest};
use crate::router::Session;
use crate::server::refuse;
use crate::Shared;
use protocol::{ClientFrame, ServerFrame};
use std::borrow::Cow;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// What an AceBase-style path asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Connect,
    Send,
    Receive,
    Clients,
}

/// Splits `/<db>/<action>`; `None` for any other path.
pub fn parse_path(path: &str) -> Option<(&str, Action)> {
    let rest = path.strip_prefix('/')?;
    let (db, action) = rest.split_once('/')?;
    let action = match action {
        "connect" => Action::Connect,
        "send" => Action::Send,
        "receive" => Action::Receive,
        "clients" => Action::Clients,
        _ => return None,
    };
    (!db.is_empty()).then_some((db, action))
}

/// AceBase peer ids are `[master]` or generated ids; the original server required at least 5
/// characters. `;` ends the id in `to:<id>;` frames, so it cannot be part of one.
pub fn validate_peer_id(id: &str) -> Result<(), String> {
    if id.len() < 5 || id.len() > protocol::MAX_NAME_LEN {
        return Err(format!(
            "peer id must have 5 to {} characters",
            protocol::MAX_NAME_LEN
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || *c == ';')
    {
        return Err(format!("peer id contains {c:?}"));
    }
    Ok(())
}

/// The text frame for a server frame, if AceBase has one.
pub fn encode(frame: &ServerFrame<'_>) -> Option<String> {
    match frame {
        ServerFrame::Welcome(w) => Some(format!("welcome:{{\"maxPayload\":{}}}", w.max_payload)),
        ServerFrame::Joined { peer, .. } => Some(format!("connect:{peer}")),
        ServerFrame::Left { peer, .. } => Some(format!("disconnect:{peer}")),
        ServerFrame::Message { payload, .. } | ServerFrame::Broadcast { payload, .. } => {
            Some(String::from_utf8_lossy(payload).into_owned())
        }
        ServerFrame::Pong { .. } => Some("pong".to_owned()),
        _ => None,
    }
}

/// Reads one AceBase text frame as a native frame; `Ok(None)` for frames that need nothing.
pub fn parse(text: &str) -> Result<Option<ClientFrame<'_>>, String> {
    if text == "ping" {
        return Ok(Some(ClientFrame::Ping { nonce: 0 }));
    }
    if text == "pong" {
        return Ok(None);
    }
    if let Some(rest) = text.strip_prefix("to:") {
        let (to, json) = rest
            .split_once(';')
            .ok_or("a to: frame needs ';' after the peer id")?;
        let payload = Cow::Borrowed(json.as_bytes());
        return Ok(Some(if to == "all" {
            ClientFrame::Broadcast { payload }
        } else {
            ClientFrame::Send {
                to: to.into(),
                payload,
            }
        }));
    }
    if text.starts_with('{') {
        return Ok(Some(ClientFrame::Broadcast {
            payload: Cow::Borrowed(text.as_bytes()),
        }));
    }
    Err(format!(
        "unknown frame {:?}",
        text.chars().take(40).collect::<String>()
    ))
}

fn token_ok(shared: &Shared, req: &Request) -> bool {
    match &shared.token {
        None => true,
        // AceBase can only send its token in the URL; it is still compared in constant time
        // and never logged. A header works too, for other clients.
        Some(token) => token.matches(req.query("t").unwrap_or("").as_bytes()) || token.admits(req),
    }
}

/// Serves one AceBase-style request.
pub async fn handle<S>(
    mut stream: S,
    req: Request,
    db: String,
    action: Action,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) where
    S: crate::connection::Transport,
{
    let method_ok = match action {
        Action::Send => req.method == "POST",
        _ => req.method == "GET",
    };
    if !method_ok {
        return refuse(
            &mut stream,
            &shared,
            405,
            "method_not_allowed",
            "wrong method for this endpoint",
        )
        .await;
    }
    // The original server answered 403 for a wrong token; AceBase stops retrying on it.
    if !token_ok(&shared, &req) {
        return refuse(
            &mut stream,
            &shared,
            403,
            "unauthorized",
            "a valid token is required (t=<token>)",
        )
        .await;
    }
    if let Err(e) = protocol::validate_namespace(&db) {
        return refuse(
            &mut stream,
            &shared,
            400,
            "invalid_database_name",
            &e.to_string(),
        )
        .await;
    }
    match action {
        Action::Connect => connect(stream, req, db, shared, shutdown).await,
        Action::Send => side_channel_send(stream, req, db, shared).await,
        Action::Receive => {
            let message =
                "this server never sends get:<id>; every message arrives as an ordinary frame";
            refuse(&mut stream, &shared, 404, "unknown_message", message).await
        }
        Action::Clients => {
            let ids: Vec<String> = shared
                .acebase
                .namespace(&db)
                .map(|ns| ns.listing().into_iter().map(|p| p.0.to_string()).collect())
                .unwrap_or_default();
            let body = serde_json::json!(ids).to_string();
            let _ = respond(&mut stream, 200, "application/json", &[], body.as_bytes()).await;
        }
    }
}

async fn connect<S>(
    mut stream: S,
    req: Request,
    db: String,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) where
    S: crate::connection::Transport,
{
    let major = req
        .query("v")
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    if major != Some(1) {
        // 409 is what AceBase understands as "unsupported client version".
        let message = format!(
            "unsupported AceBase IPC client version {:?}; this server speaks 1.x",
            req.query("v")
        );
        return refuse(&mut stream, &shared, 409, "unsupported_version", &message).await;
    }
    let Some(id) = req.query("id").map(str::to_owned) else {
        return refuse(
            &mut stream,
            &shared,
            400,
            "missing_peer_id",
            "add id=<peer id>",
        )
        .await;
    };
    if let Err(e) = validate_peer_id(&id) {
        return refuse(&mut stream, &shared, 400, "invalid_peer_id", &e).await;
    }
    let Some(key) = crate::server::upgrade_key(&mut stream, &shared, &req).await else {
        return;
    };
    let join = JoinRequest {
        namespace: &db,
        id: &id,
        encoding: Encoding::AceBase,
        outbox_limit: shared.queue_bytes,
        // AceBase compares this with the length of its JSON *string*; a character takes at most
        // 3 bytes in UTF-8, which the byte limit of AceBase sessions allows for.
        max_payload: shared.limits.max_payload,
        keepalive_ms: shared.keepalive.as_millis() as u32,
    };
    let limits = shared.acebase_limits();
    crate::server::accept_peer(stream, req, &key, None, &join, limits, shared, shutdown).await;
}

/// `POST /<db>/send?id=<sender>&t=<token>`: a message too large for the sender's idea of the
/// payload limit. It is routed like a frame from that sender's connection.
async fn side_channel_send<S>(mut stream: S, req: Request, db: String, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = shared.acebase_limits();
    let body = match read_body(&mut stream, &req, limits.max_payload as usize + 64).await {
        Ok(body) => body,
        Err(e) => {
            return refuse(&mut stream, &shared, e.status(), "bad_body", &e.to_string()).await
        }
    };
    let sender = req.query("id").unwrap_or("");
    let Some((ns, peer)) = shared
        .acebase
        .namespace(&db)
        .and_then(|ns| ns.peer(sender).map(|p| (ns, p)))
    else {
        return refuse(
            &mut stream,
            &shared,
            404,
            "unknown_peer",
            "the sender is not connected to this database",
        )
        .await;
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return refuse(
            &mut stream,
            &shared,
            400,
            "bad_body",
            "the message is not UTF-8",
        )
        .await;
    };
    match parse(text) {
        Ok(Some(frame)) => {
            let mut session = Session::new(ns, peer, shared.metrics.clone(), limits);
            session.route(frame).await;
            session.flush_counts();
            let _ = respond(&mut stream, 200, "text/plain", &[], b"").await;
        }
        Ok(None) => {
            let _ = respond(&mut stream, 200, "text/plain", &[], b"").await;
        }
        Err(e) => refuse(&mut stream, &shared, 400, "bad_message", &e).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_frames() {
        assert_eq!(
            parse_path("/mydb_data/connect"),
            Some(("mydb_data", Action::Connect))
        );
        assert_eq!(parse_path("/db/send"), Some(("db", Action::Send)));
        assert_eq!(parse_path("/db/other"), None);
        assert_eq!(parse_path("//connect"), None);
        assert_eq!(
            parse(r#"to:abcde;{"a":1}"#),
            Ok(Some(ClientFrame::Send {
                to: "abcde".into(),
                payload: Cow::Borrowed(br#"{"a":1}"#)
            }))
        );
        assert_eq!(
            parse(r#"to:all;{"a":1}"#),
            Ok(Some(ClientFrame::Broadcast {
                payload: Cow::Borrowed(br#"{"a":1}"#)
            }))
        );
        assert_eq!(
            parse(r#"{"b":2}"#),
            Ok(Some(ClientFrame::Broadcast {
                payload: Cow::Borrowed(br#"{"b":2}"#)
            }))
        );
        assert_eq!(parse("ping"), Ok(Some(ClientFrame::Ping { nonce: 0 })));
        assert_eq!(parse("pong"), Ok(None));
        assert!(parse("to:abcde").is_err());
        assert!(parse("hello").is_err());
        assert!(validate_peer_id("[master]").is_ok());
        assert!(validate_peer_id("abcd").is_err());
        assert!(validate_peer_id("ab;cde").is_err());
        assert_eq!(
            encode(&ServerFrame::Joined {
                peer: "[master]".into(),
                epoch: 1
            })
            .as_deref(),
            Some("connect:[master]")
        );
        assert_eq!(
            encode(&ServerFrame::Pong { nonce: 3 }).as_deref(),
            Some("pong")
        );
        assert_eq!(
            encode(&ServerFrame::Error {
                code: protocol::ErrorCode::UnknownPeer,
                corr: 0,
                target: "x".into(),
                message: "m".into()
            }),
            None
        );
    }
}
