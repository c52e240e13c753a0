//! Bad input gets a clear error and affects only the peer that sent it: refused handshakes
//! (HTTP status + JSON body, before any frame), malformed and oversized frames, bad flags.

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use ipc_client::{Client, ClientError, ClientOptions, Event};
use protocol::{ErrorCode, ServerFrame};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Raw =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw(server: &ServerProc, ns: &str, id: &str) -> Raw {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}/ipc/v1/{ns}?id={id}", server.url))
            .await
            .expect("connect");
    let welcome = next_binary(&mut ws).await;
    assert!(matches!(
        protocol::decode_server(&welcome),
        Ok(ServerFrame::Welcome(_))
    ));
    ws
}

async fn next_binary(ws: &mut Raw) -> Vec<u8> {
    loop {
        match tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await
            .expect("frame in time")
        {
            Some(Ok(Message::Binary(b))) => return b.to_vec(),
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }
}

async fn expect_error(ws: &mut Raw, code: ErrorCode) -> String {
    let frame = next_binary(ws).await;
    match protocol::decode_server(&frame).expect("decodes") {
        ServerFrame::Error {
            code: got, message, ..
        } => {
            assert_eq!(got, code, "{message}");
            message.into_owned()
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn handshake_refusals_are_clear_http_errors() {
    let server = ServerProc::start(&["--token", "s3cret"]);
    let upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut h = upgrade.to_vec();
        h.push(extra);
        h
    };
    let (status, body) = http_get(
        server.port,
        "/ipc/v9/db?id=a",
        &with(("Authorization", "Bearer s3cret")),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("\"supported\":[\"v1\"]"), "{body}");
    let (status, body) = http_get(server.port, "/ipc/v1/db?id=a", &upgrade).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = http_get(
        server.port,
        "/ipc/v1/db?id=a",
        &with(("Authorization", "Bearer wrong")),
    )
    .await;
    assert_eq!(status, 401);
    // The token is never accepted in the URL.
    let (status, _) = http_get(server.port, "/ipc/v1/db?id=a&token=s3cret", &upgrade).await;
    assert_eq!(status, 401);
    let (status, body) = http_get(
        server.port,
        "/ipc/v1/db",
        &with(("Authorization", "Bearer s3cret")),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("missing_peer_id"), "{body}");
    let (status, body) = http_get(
        server.port,
        "/ipc/v1/bad%20ns?id=a",
        &with(("Authorization", "Bearer s3cret")),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid_namespace"), "{body}");
    let (status, _) = http_get(
        server.port,
        "/ipc/v1/db?id=a",
        &[("Authorization", "Bearer s3cret")],
    )
    .await;
    assert_eq!(status, 426, "a plain GET is told to upgrade");
    let (status, _) = http_get(server.port, "/nope", &[]).await;
    assert_eq!(status, 404);
    // Peer listings need the token too; health and metrics do not.
    let (status, _) = http_get(server.port, "/ipc/v1/db/peers", &[]).await;
    assert_eq!(status, 401);
    let (status, body) = http_get(
        server.port,
        "/ipc/v1/db/peers",
        &[("Authorization", "Bearer s3cret")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(http_get(server.port, "/health", &[]).await.0, 200);

    // The Rust client reports the refusal as a typed error.
    let err =
        ipc_client::Client::connect(ClientOptions::new(&server.url, "db", "a").token("wrong"))
            .await
            .err();
    assert!(matches!(err, Some(ClientError::Unauthorized)), "{err:?}");
    let (c, _ev) = connect(ClientOptions::new(&server.url, "db", "a").token("s3cret")).await;
    assert!(c.is_connected());
    // Browsers offer the token as a subprotocol.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("{}/ipc/v1/db?id=browser", server.url),
    )
    .expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "ipc.v1, bearer.s3cret".parse().expect("header"),
    );
    let (_ws, response) = tokio_tungstenite::connect_async(req)
        .await
        .expect("subprotocol token accepted");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("ipc.v1")
    );
}

#[tokio::test]
async fn malformed_and_oversized_frames_affect_only_their_sender() {
    let server = ServerProc::start(&["--max-payload", "4096"]);
    let (good, mut good_ev) = client(&server, "db", "good").await;
    let (_other, mut other_ev) = client(&server, "db", "other").await;
    let mut bad = raw(&server, "db", "bad").await;

    bad.send(Message::Binary(
        vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3].into(),
    ))
    .await
    .expect("send");
    expect_error(&mut bad, ErrorCode::MalformedFrame).await;
    bad.send(Message::Text("{not json".into()))
        .await
        .expect("send");
    expect_error(&mut bad, ErrorCode::MalformedFrame).await;
    bad.send(Message::Text(r#"{"type":"send"}"#.into()))
        .await
        .expect("send");
    let m = expect_error(&mut bad, ErrorCode::MalformedFrame).await;
    assert!(m.contains("to"), "{m}");
    let big = protocol::encode_client(&protocol::ClientFrame::Send {
        to: "other".into(),
        payload: vec![1u8; 5000].into(),
    });
    bad.send(Message::Binary(big.into())).await.expect("send");
    let m = expect_error(&mut bad, ErrorCode::PayloadTooLarge).await;
    assert!(m.contains("5000"), "{m}");
    bad.send(Message::Text(
        r#"{"type":"subscribe","pattern":"a.>.b"}"#.into(),
    ))
    .await
    .expect("send");
    expect_error(&mut bad, ErrorCode::InvalidName).await;

    // Still connected and routed normally after all that.
    let ok = protocol::encode_client(&protocol::ClientFrame::Send {
        to: "other".into(),
        payload: b"fine".as_slice().into(),
    });
    bad.send(Message::Binary(ok.into())).await.expect("send");
    let e = wait_for(&mut other_ev, SECOND, |e| {
        matches!(e, Event::Message { .. })
    })
    .await;
    assert!(matches!(e, Event::Message { ref from, .. } if from == "bad"));

    // A frame far beyond the limit closes only that connection, with 1009.
    bad.send(Message::Binary(vec![0u8; 200_000].into()))
        .await
        .expect("send");
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(2), bad.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1009));
    let reason = left_reason(&mut good_ev, "bad", SECOND).await;
    assert_eq!(reason, ipc_client::LeaveReason::ProtocolError);

    // The Rust client refuses oversized payloads locally, and the server keeps serving.
    assert!(matches!(
        good.send("other", &[0u8; 5000]).await,
        Err(ClientError::PayloadTooLarge { .. })
    ));
    good.send("other", b"still here").await.expect("send");
    wait_for(
        &mut other_ev,
        SECOND,
        |e| matches!(e, Event::Message { payload, .. } if &payload[..] == b"still here"),
    )
    .await;
    let (_, metrics) = http_get(server.port, "/metrics", &[]).await;
    assert!(
        metrics.contains("ipc_errors_total{kind=\"malformed_frame\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ipc_errors_total{kind=\"payload_too_large\"} 1"),
        "{metrics}"
    );
}

#[test]
fn bad_configuration_exits_non_zero_with_a_message() {
    let cases: &[&[&str]] = &[
        &["--max-payload", "10"],
        &["--token-file", "/nonexistent/token"],
        &["--token", ""],
        &[
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ],
        &["--tls-cert", "/nonexistent/cert.pem"],
        &["--keepalive-ms", "5"],
        &["--max-connections", "0"],
    ];
    for args in cases {
        let out = std::process::Command::new(SERVER)
            .args(["--port", "0"])
            .args(*args)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.trim().len() > 10,
            "{args:?}: no clear message: {stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "{args:?}: must not print a listening line"
        );
    }
    // A port that is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let out = std::process::Command::new(SERVER)
        .args(["--port", &port])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
}

#[tokio::test]
async fn connections_over_the_limit_get_503_and_the_others_keep_working() {
    let server = ServerProc::start(&["--max-connections", "2"]);
    let (a, _a_ev) = client(&server, "db", "a").await;
    let (_b, mut b_ev) = client(&server, "db", "b").await;
    let upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    // A third connection, peer or plain HTTP, is told why and closed.
    let (status, body) = http_get(server.port, "/ipc/v1/db?id=c", &upgrade).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"server_full\""), "{body}");
    assert!(body.contains("--max-connections"), "{body}");
    let (status, _) = http_get(server.port, "/health", &[]).await;
    assert_eq!(status, 503);
    assert!(
        Client::connect(ClientOptions::new(&server.url, "db", "c"))
            .await
            .is_err(),
        "a third peer must be refused"
    );

    // The two peers inside keep talking.
    a.send("b", b"still here").await.expect("send");
    let e = wait_for(&mut b_ev, SECOND, |e| matches!(e, Event::Message { .. })).await;
    assert!(matches!(e, Event::Message { ref payload, .. } if &payload[..] == b"still here"));

    // Once one leaves, a newcomer gets its place.
    a.close().await;
    drop(a);
    let mut newcomer = None;
    for _ in 0..50 {
        if let Ok(c) = Client::connect(ClientOptions::new(&server.url, "db", "c")).await {
            newcomer = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (c, _c_ev) = newcomer.expect("a place frees up when a peer leaves");
    c.close().await;
    drop(c);
    let mut metrics = String::new();
    for _ in 0..50 {
        let (status, body) = http_get(server.port, "/metrics", &[]).await;
        if status == 200 {
            metrics = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ipc_connections_refused_full_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("refusal counter in /metrics");
    assert!(refused >= 3, "{metrics}");
}
