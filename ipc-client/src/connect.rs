//! Opening one connection: URL, TCP, optional TLS, the websocket handshake with the token, and
//! the server's welcome. Refusals come back as typed errors carrying the server's message.

use crate::error::ClientError;
use crate::options::ClientOptions;
use futures_util::StreamExt;
use protocol::{ServerFrame, Welcome};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Any byte stream a websocket can run on (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub type Ws = WebSocketStream<Box<dyn Io>>;

/// The parts of a `ws://` / `wss://` URL we need.
#[derive(Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// Parses `ws://host[:port][/...]` or `wss://...`.
pub fn parse_url(url: &str) -> Result<Endpoint, ClientError> {
    let bad = |reason: &str| ClientError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("ws://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("wss://") {
        (true, rest)
    } else {
        return Err(bad("must start with ws:// or wss://"));
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(bad(
            "credentials in the URL are not accepted; use the token option",
        ));
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed IPv6 bracket"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
            None => default_port,
        };
        (host.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad("invalid port"))?),
            None => (authority.to_owned(), default_port),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok(Endpoint { tls, host, port })
}

fn tls_connector(opts: &ClientOptions) -> Result<tokio_rustls::TlsConnector, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    match &opts.tls_ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert =
                    cert.map_err(|e| ClientError::Tls(format!("bad CA certificate PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Tls(format!("unusable CA certificate: {e}")))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Opens a connection and waits for the welcome.
pub async fn open(opts: &ClientOptions) -> Result<(Ws, Welcome<'static>), ClientError> {
    protocol::validate_namespace(&opts.namespace)?;
    protocol::validate_peer_id(&opts.peer_id)?;
    let endpoint = parse_url(&opts.url)?;
    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
    tcp.set_nodelay(true)?;
    let stream: Box<dyn Io> = if endpoint.tls {
        let name = ServerName::try_from(endpoint.host.clone()).map_err(|e| {
            ClientError::Tls(format!("invalid server name {:?}: {e}", endpoint.host))
        })?;
        let tls = tls_connector(opts)?
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let scheme = if endpoint.tls { "wss" } else { "ws" };
    let host = if endpoint.host.contains(':') {
        format!("[{}]", endpoint.host)
    } else {
        endpoint.host.clone()
    };
    let uri = format!(
        "{scheme}://{host}:{}{}?id={}",
        endpoint.port,
        protocol::connect_path(&opts.namespace),
        opts.peer_id
    );
    let mut request = uri
        .into_client_request()
        .map_err(|e| ClientError::WebSocket(e.to_string()))?;
    if let Some(token) = &opts.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::InvalidUrl {
                url: opts.url.clone(),
                reason: "token is not a valid header value".into(),
            })?;
        request.headers_mut().insert("authorization", value);
    }
    // tungstenite zero-fills its read buffer up to this size before every read; its 128 KiB
    // default costs a 128 KiB memset per small frame (the server measured 32 KiB best).
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None)
        .read_buffer_size(32 * 1024);
    let (mut ws, _response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(handshake_error)?;
    let first = tokio::time::timeout(opts.request_timeout, ws.next())
        .await
        .map_err(|_| ClientError::NoWelcome("timed out".into()))?;
    let welcome = match first {
        Some(Ok(Message::Binary(bytes))) => match protocol::decode_server(&bytes) {
            Ok(ServerFrame::Welcome(w)) => into_owned(w),
            Ok(other) => return Err(ClientError::NoWelcome(format!("first frame was {other:?}"))),
            Err(e) => return Err(ClientError::NoWelcome(e.to_string())),
        },
        Some(Ok(other)) => {
            return Err(ClientError::NoWelcome(format!(
                "unexpected first message {other:?}"
            )))
        }
        Some(Err(e)) => return Err(ClientError::WebSocket(e.to_string())),
        None => return Err(ClientError::NoWelcome("connection closed".into())),
    };
    Ok((ws, welcome))
}

fn into_owned(w: Welcome<'_>) -> Welcome<'static> {
    Welcome {
        version: w.version,
        peer: w.peer.into_owned().into(),
        epoch: w.epoch,
        max_payload: w.max_payload,
        keepalive_ms: w.keepalive_ms,
        members: w
            .members
            .into_iter()
            .map(|m| protocol::Member {
                id: m.id.into_owned().into(),
                epoch: m.epoch,
            })
            .collect(),
    }
}

fn handshake_error(e: WsError) -> ClientError {
    match e {
        WsError::Http(response) => {
            let status = response.status().as_u16();
            let body = response.body().as_deref().unwrap_or_default();
            let message = serde_message(body);
            match status {
                401 => ClientError::Unauthorized,
                409 => ClientError::DuplicatePeer(message),
                400 if message.contains("not supported") => {
                    ClientError::UnsupportedVersion(message)
                }
                _ => ClientError::Refused { status, message },
            }
        }
        WsError::Io(e) => ClientError::Io(e),
        other => ClientError::WebSocket(other.to_string()),
    }
}

/// The `message` field of the server's JSON error body, or the body as text.
fn serde_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("ws://127.0.0.1:9163").ok(),
            Some(Endpoint {
                tls: false,
                host: "127.0.0.1".into(),
                port: 9163
            })
        );
        assert_eq!(
            parse_url("wss://ipc.example.com/x").ok(),
            Some(Endpoint {
                tls: true,
                host: "ipc.example.com".into(),
                port: 443
            })
        );
        assert_eq!(
            parse_url("ws://[::1]:80").ok(),
            Some(Endpoint {
                tls: false,
                host: "::1".into(),
                port: 80
            })
        );
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("ws://user:pw@x").is_err());
        assert!(parse_url("ws://x:notaport").is_err());
    }
}
