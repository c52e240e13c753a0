//! The AceBase dialect frame by frame, with raw websocket peers: handshake refusals, welcome,
//! `connect:`/`disconnect:` scoped to one database, unicast, `to:all;`, broadcast, ping/pong,
//! large messages delivered in order as ordinary frames, and the HTTP side channel.

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Raw =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn peer(server: &ServerProc, db: &str, id: &str, token: &str) -> Raw {
    let url = format!("{}/{db}/connect?v=1.0.0&id={id}&t={token}", server.url);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let welcome = text(&mut ws).await;
    assert!(welcome.starts_with("welcome:{\"maxPayload\":"), "{welcome}");
    ws
}

async fn text(ws: &mut Raw) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await
            .expect("frame in time")
        {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

async fn silent(ws: &mut Raw) {
    if let Ok(Some(Ok(Message::Text(t)))) =
        tokio::time::timeout(Duration::from_millis(200), ws.next()).await
    {
        panic!("unexpected frame {t}");
    }
}

async fn post(port: u16, path: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn handshake_refusals_use_the_codes_acebase_understands() {
    let server = ServerProc::start(&["--token", "tok"]);
    let upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    assert_eq!(
        http_get(
            server.port,
            "/db_data/connect?v=1.0.0&id=abcdef&t=bad",
            &upgrade
        )
        .await
        .0,
        403
    );
    assert_eq!(
        http_get(
            server.port,
            "/db_data/connect?v=2.0.0&id=abcdef&t=tok",
            &upgrade
        )
        .await
        .0,
        409
    );
    assert_eq!(
        http_get(
            server.port,
            "/db_data/connect?v=1.0.0&id=abc&t=tok",
            &upgrade
        )
        .await
        .0,
        400
    );
    let _first = peer(&server, "db_data", "[master]", "tok").await;
    let (status, body) = http_get(
        server.port,
        "/db_data/connect?v=1.0.0&id=[master]&t=tok",
        &upgrade,
    )
    .await;
    assert_eq!(
        status, 409,
        "a second master is refused, not flapped: {body}"
    );
    assert!(body.contains("already connected"), "{body}");
    assert_eq!(http_get(server.port, "/db_data/clients", &[]).await.0, 403);
    let (status, body) = http_get(server.port, "/db_data/clients?t=tok", &[]).await;
    assert_eq!((status, body.as_str()), (200, r#"["[master]"]"#));
    assert_eq!(
        http_get(server.port, "/db_data/receive?id=x&msg=1&t=tok", &[])
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn frames_route_within_one_database_only() {
    let server = ServerProc::start(&[]);
    let mut master = peer(&server, "app_data", "[master]", "").await;
    let mut w1 = peer(&server, "app_data", "worker-one", "").await;
    assert_eq!(text(&mut master).await, "connect:worker-one");
    let mut other_db = peer(&server, "other_data", "worker-two", "").await;
    silent(&mut master).await; // connect: of another database is not sent
    let mut w2 = peer(&server, "app_data", "worker-two", "").await; // same id, other db: fine
    assert_eq!(text(&mut master).await, "connect:worker-two");
    assert_eq!(text(&mut w1).await, "connect:worker-two");

    w1.send(Message::Text(
        r#"to:[master];{"type":"lock-request","id":"1"}"#.into(),
    ))
    .await
    .expect("send");
    assert_eq!(
        text(&mut master).await,
        r#"{"type":"lock-request","id":"1"}"#
    );
    w1.send(Message::Text(r#"{"type":"notification"}"#.into()))
        .await
        .expect("send");
    assert_eq!(text(&mut master).await, r#"{"type":"notification"}"#);
    assert_eq!(text(&mut w2).await, r#"{"type":"notification"}"#);
    master
        .send(Message::Text(r#"to:all;{"type":"hello"}"#.into()))
        .await
        .expect("send");
    assert_eq!(text(&mut w1).await, r#"{"type":"hello"}"#);
    assert_eq!(text(&mut w2).await, r#"{"type":"hello"}"#);
    silent(&mut other_db).await;
    w1.send(Message::Text("ping".into())).await.expect("ping");
    assert_eq!(text(&mut w1).await, "pong");

    // A message far above what the original server allowed arrives as one ordinary frame, in order.
    let big = format!(r#"{{"type":"event","val":"{}"}}"#, "x".repeat(300_000));
    w1.send(Message::Text(r#"to:[master];{"n":1}"#.into()))
        .await
        .expect("send");
    w1.send(Message::Text(format!("to:[master];{big}").into()))
        .await
        .expect("send");
    w1.send(Message::Text(r#"to:[master];{"n":3}"#.into()))
        .await
        .expect("send");
    assert_eq!(text(&mut master).await, r#"{"n":1}"#);
    assert_eq!(text(&mut master).await, big);
    assert_eq!(text(&mut master).await, r#"{"n":3}"#);

    // The side channel still works, and is delivered as an ordinary frame.
    let status = post(
        server.port,
        "/app_data/send?id=worker-one&t=",
        format!("to:[master];{big}").as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(text(&mut master).await, big);
    assert_eq!(
        post(server.port, "/app_data/send?id=nobody-here&t=", b"{}").await,
        404
    );

    drop(w1);
    assert_eq!(text(&mut master).await, "disconnect:worker-one");
    assert_eq!(text(&mut w2).await, "disconnect:worker-one");
    silent(&mut other_db).await;
}
