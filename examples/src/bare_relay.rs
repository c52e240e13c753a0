//! The baseline for request/reply latency: a websocket relay with no protocol at all, run as a
//! separate process (`bench-broker --serve-bare-relay`), with the same reader → queue → writer
//! shape as `ipc-server`.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Pairs =
    Arc<std::sync::Mutex<std::collections::HashMap<String, tokio::sync::mpsc::Sender<Message>>>>;

/// A websocket relay with no protocol: a connection to `/<pair>/a` and one to `/<pair>/b`
/// exchange frames; each connection has a reader that forwards into the partner's queue and a
/// writer that drains its own queue (feed everything ready, then flush).
pub async fn serve() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("bare-relay listening on {}", listener.local_addr()?);
    let pairs: Pairs = Default::default();
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let pairs = pairs.clone();
        tokio::spawn(async move {
            let mut path = String::new();
            #[allow(clippy::result_large_err)] // the error type is tungstenite's
            let callback = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                            resp| {
                path = req.uri().path().to_owned();
                Ok(resp)
            };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                return;
            };
            let partner = match path.strip_suffix("/a") {
                Some(p) => format!("{p}/b"),
                None => format!("{}/a", path.trim_end_matches("/b")),
            };
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(4096);
            if let Ok(mut p) = pairs.lock() {
                p.insert(path.clone(), tx);
            }
            let (mut sink, mut stream) = ws.split();
            tokio::spawn(async move {
                let mut batch = Vec::new();
                while rx.recv_many(&mut batch, 1024).await > 0 {
                    for m in batch.drain(..) {
                        if sink.feed(m).await.is_err() {
                            return;
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
            });
            let mut partner_tx = None;
            while let Some(Ok(m)) = stream.next().await {
                if !matches!(m, Message::Binary(_)) {
                    continue;
                }
                while partner_tx.is_none() {
                    partner_tx = pairs.lock().ok().and_then(|p| p.get(&partner).cloned());
                    if partner_tx.is_none() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                if let Some(tx) = &partner_tx {
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

pub async fn latency(addr: &str, secs: Duration) -> anyhow::Result<Vec<Duration>> {
    let mut responder = connect(addr, "/rr/b").await?;
    let echo = tokio::spawn(async move {
        while let Some(Ok(m)) = responder.next().await {
            if matches!(m, Message::Binary(_)) && responder.send(m).await.is_err() {
                return;
            }
        }
    });
    let mut ws = connect(addr, "/rr/a").await?;
    let payload = Bytes::from(vec![1u8; 80]);
    let mut samples = Vec::new();
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < secs || samples.len() < 1000 {
        n += 1;
        let t = Instant::now();
        ws.send(Message::Binary(payload.clone())).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(_))) => break,
                Some(Ok(_)) => {}
                _ => anyhow::bail!("relay closed"),
            }
        }
        if n > 200 {
            samples.push(t.elapsed());
        }
    }
    echo.abort();
    samples.sort();
    Ok(samples)
}

async fn connect(
    addr: &str,
    path: &str,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp).await?;
    Ok(ws)
}
