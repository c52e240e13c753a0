//! TLS with a self-signed certificate generated here, and a JSON text-frame client (what a
//! Node.js or browser peer speaks) talking with a Rust binary-frame client.

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use ipc_client::{ClientOptions, Event};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn tls_with_a_self_signed_certificate() {
    let dir = std::env::temp_dir().join(format!("ipc-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert_pem = cert.cert.pem();
    std::fs::write(dir.join("cert.pem"), &cert_pem).expect("write cert");
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).expect("write key");
    let cert_path = dir.join("cert.pem").display().to_string();
    let key_path = dir.join("key.pem").display().to_string();
    let server = ServerProc::start(&[
        "--tls-cert",
        &cert_path,
        "--tls-key",
        &key_path,
        "--token",
        "t0k",
    ]);
    assert!(server.url.starts_with("wss://"));
    let url = format!("wss://localhost:{}", server.port);
    let opts = |id: &str| {
        ClientOptions::new(&url, "secure", id)
            .token("t0k")
            .tls_ca_pem(cert_pem.clone())
    };
    let (a, _a_ev) = connect(opts("a")).await;
    let (_b, mut b_ev) = connect(opts("b")).await;
    a.send("b", b"over tls").await.expect("send");
    let e = wait_for(&mut b_ev, SECOND, |e| matches!(e, Event::Message { .. })).await;
    assert!(matches!(e, Event::Message { ref payload, .. } if &payload[..] == b"over tls"));
    // Without trusting the certificate the client refuses the server.
    let untrusted =
        ipc_client::Client::connect(ClientOptions::new(&url, "secure", "c").token("t0k")).await;
    assert!(
        matches!(untrusted, Err(ipc_client::ClientError::Tls(_))),
        "{:?}",
        untrusted.err()
    );
    // Plain ws:// against the TLS port fails cleanly too, and the server keeps serving.
    let plain = ipc_client::Client::connect(ClientOptions::new(
        format!("ws://127.0.0.1:{}", server.port),
        "secure",
        "d",
    ))
    .await;
    assert!(plain.is_err());
    a.send("b", b"still fine").await.expect("send");
    wait_for(
        &mut b_ev,
        SECOND,
        |e| matches!(e, Event::Message { payload, .. } if &payload[..] == b"still fine"),
    )
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

type Raw =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Raw) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await
            .expect("frame in time")
        {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(&t).expect("server sends valid JSON")
            }
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

async fn send_json(ws: &mut Raw, value: Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .expect("send");
}

#[tokio::test]
async fn json_text_frame_client_interoperates_with_binary_clients() {
    let server = ServerProc::start(&[]);
    let (rust, mut rust_ev) = client(&server, "db", "rust").await;
    let (mut js, _) = tokio_tungstenite::connect_async(format!(
        "{}/ipc/v1/db?id=node-1&encoding=json",
        server.url
    ))
    .await
    .expect("connect");
    let welcome = next_json(&mut js).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["peer"], "node-1");
    assert_eq!(welcome["members"][0]["id"], "rust");
    assert!(welcome["epoch"].as_u64().is_some() && welcome["max_payload"].as_u64().is_some());
    wait_for(
        &mut rust_ev,
        SECOND,
        |e| matches!(e, Event::Joined { peer, .. } if peer == "node-1"),
    )
    .await;

    // JSON -> Rust: the payload is the JSON text of "data".
    send_json(
        &mut js,
        json!({"type": "send", "to": "rust", "data": {"n": 1, "s": "x"}}),
    )
    .await;
    let e = wait_for(&mut rust_ev, SECOND, |e| matches!(e, Event::Message { .. })).await;
    let Event::Message { payload, from } = e else {
        unreachable!()
    };
    assert_eq!(from, "node-1");
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).expect("json"),
        json!({"n": 1, "s": "x"})
    );

    // Rust -> JSON: JSON payloads arrive as "data", other bytes as "data_b64".
    rust.send("node-1", br#"[1,2,3]"#).await.expect("send");
    let m = next_json(&mut js).await;
    assert_eq!(
        (m["type"].as_str(), m["from"].as_str(), &m["data"]),
        (Some("message"), Some("rust"), &json!([1, 2, 3]))
    );
    rust.send("node-1", &[0xff, 0x00]).await.expect("send");
    let m = next_json(&mut js).await;
    assert_eq!(m["data_b64"], "/wA=");

    // Topics and request/reply across the two encodings.
    send_json(&mut js, json!({"type": "subscribe", "pattern": "jobs.*"})).await;
    send_json(&mut js, json!({"type": "ping", "nonce": 5})).await;
    assert_eq!(
        next_json(&mut js).await,
        json!({"type": "pong", "nonce": 5})
    );
    let responder = {
        let rust = rust.clone();
        tokio::spawn(async move {
            let e = wait_for(&mut rust_ev, SECOND, |e| matches!(e, Event::Request(_))).await;
            let Event::Request(req) = e else {
                unreachable!()
            };
            rust.reply(&req, br#""pong""#).await.expect("reply");
            req
        })
    };
    send_json(
        &mut js,
        json!({"type": "request", "corr": 42, "to": "rust", "timeout_ms": 2000, "data": "ping"}),
    )
    .await;
    let reply = next_json(&mut js).await;
    assert_eq!(
        reply,
        json!({"type": "reply", "from": "rust", "corr": 42, "data": "pong"})
    );
    let req = responder.await.expect("responder");
    assert_eq!(&req.payload[..], br#""ping""#);

    rust.publish("jobs.new", br#"{"id":7}"#)
        .await
        .expect("publish");
    let p = next_json(&mut js).await;
    assert_eq!(
        p,
        json!({"type": "published", "from": "rust", "subject": "jobs.new", "data": {"id": 7}})
    );
    let reply = rust
        .request("node-1", b"{}", Some(Duration::from_millis(100)))
        .await;
    assert_eq!(
        reply,
        Err(ipc_client::RequestError::Timeout),
        "the JSON peer does not answer"
    );
    let req = next_json(&mut js).await;
    assert_eq!(req["type"], "request");
    assert_eq!(req["subject"], Value::Null);

    // Errors are JSON too.
    send_json(
        &mut js,
        json!({"type": "request", "corr": 9, "subject": "nobody.home", "timeout_ms": 100}),
    )
    .await;
    let err = next_json(&mut js).await;
    assert_eq!(
        (
            err["type"].as_str(),
            err["code"].as_str(),
            err["corr"].as_u64()
        ),
        (Some("error"), Some("no_responders"), Some(9))
    );
}
