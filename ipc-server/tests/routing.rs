//! Routing of every kind through the real server: unicast, broadcast, topics with wildcards,
//! request/reply to a peer and to a subject, typed errors, namespace isolation, membership.

mod common;
use common::*;
use ipc_client::{ErrorCode, Event, LeaveReason, RequestError};
use std::time::Duration;

#[tokio::test]
async fn unicast_broadcast_and_namespace_isolation() {
    let server = ServerProc::start(&[]);
    let (a, mut a_ev) = client(&server, "db1", "alice").await;
    let (_b, mut b_ev) = client(&server, "db1", "bob").await;
    let (_c, mut c_ev) = client(&server, "db1", "carol").await;
    let (_x, mut x_ev) = client(&server, "db2", "bob").await; // same id, other namespace: allowed

    a.send("bob", b"to bob").await.expect("send");
    let e = wait_for(&mut b_ev, SECOND, |e| matches!(e, Event::Message { .. })).await;
    assert!(
        matches!(e, Event::Message { ref from, ref payload } if from == "alice" && &payload[..] == b"to bob")
    );

    a.broadcast(b"hello all").await.expect("broadcast");
    for events in [&mut b_ev, &mut c_ev] {
        let e = wait_for(events, SECOND, |e| matches!(e, Event::Broadcast { .. })).await;
        assert!(
            matches!(e, Event::Broadcast { ref from, ref payload } if from == "alice" && &payload[..] == b"hello all")
        );
    }
    // The sender does not get its own broadcast, and nothing crosses into db2.
    none_within(&mut a_ev, Duration::from_millis(200), |e| {
        matches!(e, Event::Broadcast { .. })
    })
    .await;
    none_within(&mut x_ev, Duration::from_millis(100), |e| {
        matches!(
            e,
            Event::Broadcast { .. } | Event::Message { .. } | Event::Joined { .. }
        )
    })
    .await;
}

#[tokio::test]
async fn topics_reach_only_matching_subscribers_once() {
    let server = ServerProc::start(&[]);
    let (publisher, _p_ev) = client(&server, "db", "pub").await;
    let (s1, mut s1_ev) = client(&server, "db", "s1").await;
    let (s2, mut s2_ev) = client(&server, "db", "s2").await;
    let (_s3, mut s3_ev) = client(&server, "db", "s3").await; // subscribes to nothing
    s1.subscribe("orders.*").await.expect("sub");
    s1.subscribe("orders.>").await.expect("overlapping sub");
    s2.subscribe("orders.eu.>").await.expect("sub");

    publisher
        .publish("orders.new", b"1")
        .await
        .expect("publish");
    publisher
        .publish("orders.eu.paid", b"2")
        .await
        .expect("publish");
    publisher
        .publish("invoices.new", b"3")
        .await
        .expect("publish");
    publisher.flush().await.expect("flush");

    let mut s1_got = Vec::new();
    while s1_got.len() < 2 {
        if let Event::Published {
            subject, payload, ..
        } = wait_for(&mut s1_ev, SECOND, |e| matches!(e, Event::Published { .. })).await
        {
            s1_got.push((subject, payload));
        }
    }
    assert_eq!(s1_got[0].0, "orders.new");
    assert_eq!(s1_got[1].0, "orders.eu.paid");
    // Overlapping patterns still deliver once.
    none_within(&mut s1_ev, Duration::from_millis(200), |e| {
        matches!(e, Event::Published { .. })
    })
    .await;
    let e = wait_for(&mut s2_ev, SECOND, |e| matches!(e, Event::Published { .. })).await;
    assert!(matches!(e, Event::Published { ref subject, .. } if subject == "orders.eu.paid"));
    none_within(&mut s2_ev, Duration::from_millis(100), |e| {
        matches!(e, Event::Published { .. })
    })
    .await;
    none_within(&mut s3_ev, Duration::from_millis(100), |e| {
        matches!(e, Event::Published { .. })
    })
    .await;

    // After unsubscribing, nothing more arrives.
    s2.unsubscribe("orders.eu.>").await.expect("unsub");
    publisher
        .publish("orders.eu.paid", b"4")
        .await
        .expect("publish");
    publisher.flush().await.expect("flush");
    none_within(&mut s2_ev, Duration::from_millis(200), |e| {
        matches!(e, Event::Published { .. })
    })
    .await;
}

#[tokio::test]
async fn request_reply_to_peer_and_subject_with_typed_errors() {
    let server = ServerProc::start(&[]);
    let (requester, mut r_ev) = client(&server, "db", "requester").await;
    let (w1, w1_ev) = client(&server, "db", "worker-1").await;
    let (w2, w2_ev) = client(&server, "db", "worker-2").await;
    w1.subscribe("svc.echo").await.expect("sub");
    w2.subscribe("svc.echo").await.expect("sub");
    let answer = |client: ipc_client::Client, mut events: ipc_client::Events, tag: &'static str| {
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let Event::Request(req) = event {
                    let mut reply = tag.as_bytes().to_vec();
                    reply.extend_from_slice(&req.payload);
                    let _ = client.reply(&req, &reply).await;
                }
            }
        })
    };
    let _h1 = answer(w1.clone(), w1_ev, "w1:");
    let _h2 = answer(w2.clone(), w2_ev, "w2:");

    let reply = requester
        .request("worker-1", b"ping", None)
        .await
        .expect("reply");
    assert_eq!(&reply[..], b"w1:ping");

    // Requests to a subject are spread over its subscribers.
    let mut seen = std::collections::HashSet::new();
    for i in 0..10 {
        let reply = requester
            .request_subject("svc.echo", format!("{i}").as_bytes(), None)
            .await
            .expect("reply");
        seen.insert(reply[..3].to_vec());
        assert!(reply.ends_with(format!("{i}").as_bytes()));
    }
    assert_eq!(seen.len(), 2, "both responders answered");

    // Typed errors, at once.
    let t = std::time::Instant::now();
    assert_eq!(
        requester.request("nobody", b"x", None).await,
        Err(RequestError::UnknownPeer("nobody".into()))
    );
    assert_eq!(
        requester.request_subject("svc.none", b"x", None).await,
        Err(RequestError::NoResponders("svc.none".into()))
    );
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "errors come at once"
    );
    // A peer that never answers: the deadline ends the request.
    let (_silent, _s_ev) = client(&server, "db", "silent").await;
    let t = std::time::Instant::now();
    let r = requester
        .request("silent", b"x", Some(Duration::from_millis(200)))
        .await;
    assert_eq!(r, Err(RequestError::Timeout));
    assert!(t.elapsed() < Duration::from_millis(600));
    // Unicast to an unknown peer is reported as undeliverable.
    requester.send("ghost", b"x").await.expect("queued");
    let e = wait_for(&mut r_ev, SECOND, |e| {
        matches!(e, Event::Undeliverable { .. })
    })
    .await;
    assert!(
        matches!(e, Event::Undeliverable { code: ErrorCode::UnknownPeer, ref target, .. } if target == "ghost")
    );
}

#[tokio::test]
async fn membership_welcome_joined_left_and_duplicate_ids() {
    let server = ServerProc::start(&[]);
    let (a, mut a_ev) = client(&server, "db", "alice").await;
    let (b, _b_ev) = client(&server, "db", "bob").await;
    let e = wait_for(&mut a_ev, SECOND, |e| matches!(e, Event::Joined { .. })).await;
    let Event::Joined {
        peer,
        epoch: bob_epoch,
    } = e
    else {
        unreachable!()
    };
    assert_eq!(peer, "bob");
    assert_eq!(bob_epoch, b.epoch());
    assert!(b.epoch() > a.epoch(), "epochs grow");
    assert_eq!(
        b.members(),
        vec![("alice".to_string(), a.epoch())],
        "welcome lists current members"
    );

    // A second connection with a live id is refused with a clear reason.
    let dup =
        ipc_client::Client::connect(ipc_client::ClientOptions::new(&server.url, "db", "bob")).await;
    match dup {
        Err(ipc_client::ClientError::DuplicatePeer(msg)) => {
            assert!(msg.contains("already connected"), "{msg}")
        }
        Err(e) => panic!("expected DuplicatePeer, got {e}"),
        Ok(_) => panic!("expected DuplicatePeer, got a connection"),
    }
    // bob leaves cleanly; alice is told; bob can come back with a larger epoch.
    b.close().await;
    let e = wait_for(&mut a_ev, SECOND, |e| matches!(e, Event::Left { .. })).await;
    assert!(
        matches!(e, Event::Left { ref peer, reason: LeaveReason::Closed, epoch } if peer == "bob" && epoch == bob_epoch)
    );
    let (b2, _b2_ev) = client(&server, "db", "bob").await;
    assert!(b2.epoch() > bob_epoch);
    wait_for(&mut a_ev, SECOND, |e| matches!(e, Event::Joined { .. })).await;
    assert_eq!(a.members(), vec![("bob".to_string(), b2.epoch())]);
}
