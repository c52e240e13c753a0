//! Liveness and failure behaviour with real processes: SIGKILLed peers, hung (SIGSTOPped)
//! peers, slow consumers, server restarts, graceful shutdown, pm2 readiness.

mod common;
use common::*;
use ipc_client::{Event, LeaveReason, RequestError};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts an `ipc-peer` process and waits until `observer` sees it join.
async fn spawn_peer(
    server: &ServerProc,
    id: &str,
    observer: &mut ipc_client::Events,
) -> std::process::Child {
    let child = Command::new(PEER)
        .args(["--url", &server.url, "--namespace", "db", "--id", id])
        .stdin(Stdio::piped()) // kept open: the peer runs until killed
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn ipc-peer");
    wait_for(
        observer,
        Duration::from_secs(10),
        |e| matches!(e, Event::Joined { peer, .. } if peer == id),
    )
    .await;
    child
}

#[tokio::test]
async fn sigkilled_peer_is_reported_left_within_one_second() {
    let server = ServerProc::start(&[]);
    let (_obs, mut events) = client(&server, "db", "observer").await;
    for round in 0..3 {
        let id = format!("victim-{round}");
        let mut child = spawn_peer(&server, &id, &mut events).await;
        let killed = Instant::now();
        child.kill().expect("SIGKILL");
        let e = wait_for(
            &mut events,
            Duration::from_secs(2),
            |e| matches!(e, Event::Left { peer, .. } if *peer == id),
        )
        .await;
        let took = killed.elapsed();
        let _ = child.wait();
        assert!(
            matches!(
                e,
                Event::Left {
                    reason: LeaveReason::ConnectionLost,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "left reported after {took:?}"
        );
    }
}

#[tokio::test]
async fn hung_peer_is_reported_left_after_the_keepalive_timeout() {
    let server = ServerProc::start(&["--keepalive-ms", "600"]);
    let (_obs, mut events) = client(&server, "db", "observer").await;
    let mut child = spawn_peer(&server, "sleeper", &mut events).await;
    // A peer that keeps answering pings stays, well past the timeout.
    none_within(&mut events, Duration::from_millis(1500), |e| {
        matches!(e, Event::Left { .. })
    })
    .await;
    unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
    let stopped = Instant::now();
    let reason = left_reason(&mut events, "sleeper", Duration::from_secs(3)).await;
    let took = stopped.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(reason, LeaveReason::KeepaliveTimeout);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1200),
        "took {took:?}"
    );
}

#[tokio::test]
async fn a_consumer_that_never_reads_is_disconnected_and_others_keep_going() {
    let server = ServerProc::start(&[
        "--queue-bytes",
        "65536",
        "--max-payload",
        "65536",
        "--slow-consumer-ms",
        "300",
    ]);
    let (publisher, _p_ev) = client(&server, "db", "publisher").await;
    let (healthy, mut h_ev) = client(&server, "db", "healthy").await;
    let (_obs, mut obs_ev) = client(&server, "db", "observer").await;
    healthy.subscribe("feed").await.expect("sub");
    // A raw websocket peer that subscribes and then never reads its socket again.
    let url = format!("{}/ipc/v1/db?id=stuck", server.url);
    let (mut stuck, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("raw connect");
    use futures_util::SinkExt;
    let sub = protocol::encode_client(&protocol::ClientFrame::Subscribe {
        pattern: "feed".into(),
    });
    stuck
        .send(tokio_tungstenite::tungstenite::Message::Binary(sub.into()))
        .await
        .expect("subscribe");
    wait_for(
        &mut obs_ev,
        SECOND,
        |e| matches!(e, Event::Joined { peer, .. } if peer == "stuck"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let payload = vec![7u8; 16 * 1024];
    let reader = tokio::spawn(async move {
        let mut n = 0u32;
        while n < 2000 {
            match tokio::time::timeout(Duration::from_secs(20), h_ev.recv()).await {
                Ok(Some(Event::Published { .. })) => n += 1,
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        n
    });
    let started = Instant::now();
    for _ in 0..2000 {
        publisher.publish("feed", &payload).await.expect("publish");
    }
    let reason = left_reason(&mut obs_ev, "stuck", Duration::from_secs(20)).await;
    assert_eq!(reason, LeaveReason::SlowConsumer);
    assert_eq!(
        reader.await.expect("reader"),
        2000,
        "the healthy subscriber got everything"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let (_, metrics) = http_get(server.port, "/metrics", &[]).await;
    assert!(
        metrics.contains("ipc_slow_consumer_disconnects_total 1"),
        "{metrics}"
    );
    drop(stuck);
}

#[tokio::test]
async fn clients_reconnect_after_a_server_restart_and_resubscribe() {
    let mut server = ServerProc::start(&[]);
    let (a, mut a_ev) = client(&server, "db", "alice").await;
    let (b, mut b_ev) = client(&server, "db", "bob").await;
    a.subscribe("news.>").await.expect("sub");
    // bob never answers this one: the restart must end it with Disconnected, not a hang.
    let pending = {
        let b = b.clone();
        tokio::spawn(async move {
            b.request("alice", b"unanswered", Some(Duration::from_secs(30)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let restarted = Instant::now();
    server.restart();
    let r = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("request ended")
        .expect("join");
    assert_eq!(r, Err(RequestError::Disconnected));
    for events in [&mut a_ev, &mut b_ev] {
        wait_for(events, Duration::from_secs(2), |e| {
            matches!(e, Event::Disconnected { .. })
        })
        .await;
        wait_for(events, Duration::from_secs(2), |e| {
            matches!(e, Event::Connected { .. })
        })
        .await;
    }
    assert!(
        restarted.elapsed() < Duration::from_secs(3),
        "reconnected after {:?}",
        restarted.elapsed()
    );
    // Subscriptions came back: bob's publication reaches alice.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        b.publish("news.today", b"after restart")
            .await
            .expect("publish");
        b.flush().await.expect("flush");
        match tokio::time::timeout(Duration::from_millis(200), a_ev.recv()).await {
            Ok(Some(Event::Published { payload, .. })) => {
                assert_eq!(&payload[..], b"after restart");
                break;
            }
            _ if Instant::now() < deadline => continue,
            other => panic!("subscription not restored: {other:?}"),
        }
    }
    assert!(a.is_connected() && b.is_connected());
}

#[tokio::test]
async fn sigterm_and_sigint_close_every_connection_and_exit_zero_quickly() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut server = ServerProc::start(&[]);
        let (_a, mut a_ev) = client(&server, "db", "alice").await;
        let (_b, _b_ev) = client(&server, "db2", "bob").await;
        let sent = Instant::now();
        server.signal(signal);
        let e = wait_for(&mut a_ev, Duration::from_secs(2), |e| {
            matches!(e, Event::Disconnected { .. })
        })
        .await;
        assert!(
            matches!(e, Event::Disconnected { ref reason } if reason.contains("1001")),
            "{e:?}"
        );
        let status = loop {
            if let Some(status) = server.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                sent.elapsed() < Duration::from_millis(1500),
                "still running after 1.5 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(status.success(), "exit status {status:?}");
    }
}

#[test]
fn pm2_gets_exactly_one_ready_line_on_a_cloexec_channel() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let their_fd = theirs.as_raw_fd();
    let mut cmd = Command::new(SERVER);
    cmd.args(["--port", "0"])
        .env("NODE_CHANNEL_FD", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(their_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears FD_CLOEXEC, as pm2's spawn leaves it: the server must set it.
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn");
    drop(theirs);
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        assert_eq!(ours.read(&mut byte).expect("ready line in time"), 1);
        line.push(byte[0]);
    }
    assert_eq!(line, b"\"ready\"\n");
    let fdinfo = std::fs::read_to_string(format!("/proc/{}/fdinfo/3", child.id())).expect("fdinfo");
    let flags = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(str::trim)
        .expect("flags");
    let flags = u32::from_str_radix(flags, 8).expect("octal");
    assert_ne!(
        flags & libc::O_CLOEXEC as u32,
        0,
        "fd 3 must be close-on-exec"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().expect("wait").success());
    // Nothing else was ever written to the channel.
    let mut rest = Vec::new();
    ours.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let _ = ours.read_to_end(&mut rest);
    assert!(rest.is_empty(), "extra bytes on the pm2 channel: {rest:?}");
}

#[tokio::test]
async fn a_client_that_only_sends_stays_connected_past_the_keepalive() {
    // Well past several keepalive periods, with enough slack for a loaded CI machine.
    let server = ServerProc::start(&["--keepalive-ms", "900"]);
    let (sender, mut events) = client(&server, "db", "sender").await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(3000) {
        sender
            .publish("nobody.listens", b"x")
            .await
            .expect("still connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    none_within(&mut events, Duration::from_millis(10), |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    assert!(sender.is_connected());
}

#[tokio::test]
async fn a_half_open_connection_is_replaced_by_its_reconnecting_peer_before_the_keepalive() {
    use ipc_client::{Client, ClientError, ClientOptions};
    let server = ServerProc::start(&["--keepalive-ms", "2000"]);
    let (_obs, mut events) = client(&server, "db", "observer").await;
    let mut child = spawn_peer(&server, "phoenix", &mut events).await;
    // While the first connection is alive, a second one with its id is refused.
    let dup = Client::connect(ClientOptions::new(&server.url, "db", "phoenix")).await;
    assert!(
        matches!(dup, Err(ClientError::DuplicatePeer(_))),
        "{:?}",
        dup.err()
    );
    none_within(&mut events, Duration::from_millis(300), |e| {
        matches!(e, Event::Left { .. })
    })
    .await;

    // The process freezes: its socket stays open but it answers nothing (a half-open link).
    unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
    let stopped = Instant::now();
    let newcomer = loop {
        match Client::connect(ClientOptions::new(&server.url, "db", "phoenix")).await {
            Ok((c, _events)) => break c,
            Err(ClientError::DuplicatePeer(_)) if stopped.elapsed() < Duration::from_secs(3) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("reconnect failed: {e}"),
        }
    };
    let took = stopped.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        took < Duration::from_millis(1800),
        "admitted only after {took:?} (keepalive is 2 s)"
    );
    let reason = left_reason(&mut events, "phoenix", SECOND).await;
    assert_eq!(reason, LeaveReason::KeepaliveTimeout);
    let e = wait_for(
        &mut events,
        SECOND,
        |e| matches!(e, Event::Joined { peer, .. } if peer == "phoenix"),
    )
    .await;
    assert!(matches!(e, Event::Joined { epoch, .. } if epoch == newcomer.epoch()));
}

/// The server answers a websocket ping with a pong carrying the same data; a peer's close frame
/// is echoed (code and reason), others see the peer leave as `closed`, and the server then ends
/// the TCP connection. A close without a code gets an empty close frame back.
#[tokio::test]
async fn a_client_closed_right_after_connecting_stays_closed() {
    // close() used to be lost when it came before the client's background task had started,
    // and the closed client then reconnected by itself.
    let server = ServerProc::start(&[]);
    let (_watcher, mut w_ev) = client(&server, "db", "watcher").await;
    for i in 0..20 {
        let (c, _events) = client(&server, "db", &format!("c{i}")).await;
        c.close().await;
    }
    let mut left = 0;
    while left < 20 {
        wait_for(&mut w_ev, 2 * SECOND, |e| matches!(e, Event::Left { .. })).await;
        left += 1;
    }
    none_within(&mut w_ev, Duration::from_millis(500), |e| {
        matches!(e, Event::Joined { .. })
    })
    .await;
}

#[tokio::test]
async fn websocket_pings_get_pongs_and_a_close_is_answered() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;
    let server = ServerProc::start(&[]);
    let (_watcher, mut watcher_ev) = client(&server, "db", "watcher").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/ipc/v1/db?id=raw", server.url))
        .await
        .expect("connect");
    match next_within(&mut ws).await {
        Some(Ok(Message::Binary(b))) => assert!(matches!(
            protocol::decode_server(&b),
            Ok(protocol::ServerFrame::Welcome(_))
        )),
        other => panic!("expected the welcome, got {other:?}"),
    }
    for data in [&b""[..], b"hello", &[7u8; 125]] {
        ws.send(Message::Ping(data.to_vec().into()))
            .await
            .expect("ping");
        match next_within(&mut ws).await {
            Some(Ok(Message::Pong(got))) => assert_eq!(&got[..], data),
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    let bye = CloseFrame {
        code: CloseCode::from(4000),
        reason: "done here".into(),
    };
    ws.send(Message::Close(Some(bye.clone())))
        .await
        .expect("close");
    let mut closed_with = None;
    loop {
        match next_within(&mut ws).await {
            Some(Ok(Message::Close(frame))) => closed_with = frame,
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            None | Some(Err(_)) => break,
        }
    }
    assert_eq!(closed_with, Some(bye));
    let reason = left_reason(&mut watcher_ev, "raw", Duration::from_secs(2)).await;
    assert_eq!(reason, LeaveReason::Closed);

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/ipc/v1/db?id=raw2", server.url))
        .await
        .expect("connect");
    ws.send(Message::Close(None)).await.expect("close");
    let mut replies = Vec::new();
    loop {
        match next_within(&mut ws).await {
            Some(Ok(Message::Close(frame))) => replies.push(frame),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => break,
        }
    }
    assert_eq!(replies, vec![None]);
}

async fn next_within<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
) -> Option<Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .expect("a message in time")
}
