//! Per-sender FIFO to every receiver, for every message size, under load: several senders
//! with payloads from 1 byte to nearly the maximum, through unicast and through a topic.

mod common;
use common::*;
use ipc_client::Event;
use rand::Rng;
use std::time::Duration;

const SENDERS: usize = 3;
const PER_SENDER: u32 = 1500;

fn payload(sender: usize, seq: u32, rng: &mut impl Rng) -> Vec<u8> {
    // Mostly small, some medium, a few near the 1 MiB maximum.
    let len = match rng.random_range(0..100) {
        0..=79 => rng.random_range(8..256),
        80..=97 => rng.random_range(256..64 * 1024),
        _ => rng.random_range(512 * 1024..1024 * 1024 - 64),
    };
    let mut p = vec![(seq % 251) as u8; len];
    p[0] = sender as u8;
    p[1..5].copy_from_slice(&seq.to_le_bytes());
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_per_sender_with_mixed_sizes() {
    let server = ServerProc::start(&[]);
    let (_rx1, mut unicast_ev) = client(&server, "db", "sink").await;
    let (topic_client, mut topic_ev) = client(&server, "db", "topic-sink").await;
    topic_client.subscribe("load.>").await.expect("sub");
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let (sender, _ev) = client(&server, "db", &format!("sender-{s}")).await;
        tasks.push(tokio::spawn(async move {
            let _keep = _ev;
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(s as u64);
            for seq in 0..PER_SENDER {
                let p = payload(s, seq, &mut rng);
                sender.send("sink", &p).await.expect("send");
                sender
                    .publish(&format!("load.s{s}"), &p)
                    .await
                    .expect("publish");
            }
            sender.flush().await.expect("flush");
        }));
    }
    async fn check(events: &mut ipc_client::Events) {
        {
            let mut next = [0u32; SENDERS];
            let total = SENDERS as u32 * PER_SENDER;
            let mut got = 0;
            while got < total {
                let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
                    .await
                    .expect("in time")
                    .expect("open");
                let p = match event {
                    Event::Message { payload, .. } | Event::Published { payload, .. } => payload,
                    _ => continue,
                };
                let s = p[0] as usize;
                let seq = u32::from_le_bytes([p[1], p[2], p[3], p[4]]);
                assert_eq!(seq, next[s], "sender {s}: expected #{} got #{seq}", next[s]);
                assert!(
                    p[5..].iter().all(|b| *b == (seq % 251) as u8),
                    "payload intact"
                );
                next[s] += 1;
                got += 1;
            }
        }
    }
    tokio::join!(check(&mut unicast_ev), check(&mut topic_ev));
    for t in tasks {
        t.await.expect("sender");
    }
}
