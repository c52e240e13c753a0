//! A minimal NATS core-protocol load generator (text protocol over TCP), so `bench-broker
//! --nats` can measure `nats-server` beside `ipc-server` in the same run with the same shape of
//! load: same payloads, same batching (flush every [`FLUSH_EVERY`] publications), same end
//! markers and sequence checks.

use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::{tally, SeqCheck, FLUSH_EVERY, MARKER};

/// One NATS connection.
pub struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: BufWriter<OwnedWriteHalf>,
    line: Vec<u8>,
}

/// A received message.
pub struct Msg {
    pub reply: Option<String>,
    pub payload: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: &str) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (r, w) = tcp.into_split();
        let mut c = Conn {
            r: BufReader::with_capacity(128 * 1024, r),
            w: BufWriter::with_capacity(128 * 1024, w),
            line: Vec::new(),
        };
        c.read_line().await?; // INFO
        c.w.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
            .await?;
        c.sync().await?;
        Ok(c)
    }

    async fn read_line(&mut self) -> anyhow::Result<()> {
        self.line.clear();
        let n = self.r.read_until(b'\n', &mut self.line).await?;
        anyhow::ensure!(n > 0, "nats connection closed");
        Ok(())
    }

    /// PING, then wait for PONG: everything sent before has been processed.
    pub async fn sync(&mut self) -> anyhow::Result<()> {
        self.w.write_all(b"PING\r\n").await?;
        self.w.flush().await?;
        loop {
            self.read_line().await?;
            if self.line.starts_with(b"PONG") {
                return Ok(());
            }
            if self.line.starts_with(b"MSG ") {
                self.skip_payload().await?;
            }
        }
    }

    async fn skip_payload(&mut self) -> anyhow::Result<()> {
        let n = payload_len(&self.line)?;
        let mut sink = vec![0u8; n + 2];
        self.r.read_exact(&mut sink).await?;
        Ok(())
    }

    pub async fn subscribe(&mut self, subject: &str, sid: u32) -> anyhow::Result<()> {
        self.w
            .write_all(format!("SUB {subject} {sid}\r\n").as_bytes())
            .await?;
        Ok(())
    }

    /// Queues a publication (written at the next flush or when the buffer fills).
    pub async fn publish(
        &mut self,
        subject: &str,
        reply: Option<&str>,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        let head = match reply {
            Some(r) => format!("PUB {subject} {r} {}\r\n", payload.len()),
            None => format!("PUB {subject} {}\r\n", payload.len()),
        };
        self.w.write_all(head.as_bytes()).await?;
        self.w.write_all(payload).await?;
        self.w.write_all(b"\r\n").await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        Ok(self.w.flush().await?)
    }

    /// The next message (answers server PINGs on the way).
    pub async fn next_msg(&mut self) -> anyhow::Result<Msg> {
        loop {
            self.read_line().await?;
            if self.line.starts_with(b"MSG ") {
                let n = payload_len(&self.line)?;
                let fields: Vec<&[u8]> = self.line.split(|b| *b == b' ').collect();
                let reply =
                    (fields.len() == 5).then(|| String::from_utf8_lossy(fields[3]).into_owned());
                let mut payload = vec![0u8; n + 2];
                self.r.read_exact(&mut payload).await?;
                payload.truncate(n);
                return Ok(Msg { reply, payload });
            }
            if self.line.starts_with(b"PING") {
                self.w.write_all(b"PONG\r\n").await?;
                self.w.flush().await?;
            }
            if self.line.starts_with(b"-ERR") {
                anyhow::bail!("nats: {}", String::from_utf8_lossy(&self.line).trim());
            }
        }
    }
}

fn payload_len(line: &[u8]) -> anyhow::Result<usize> {
    let text = std::str::from_utf8(line)?.trim_end();
    Ok(text.rsplit(' ').next().unwrap_or("").parse()?)
}

/// N publishers → M subscribers on one subject; returns (deliveries/s, lost, out of order).
pub async fn pubsub(
    addr: &str,
    name: &str,
    publishers: usize,
    subscribers: usize,
    size: usize,
    secs: Duration,
) -> anyhow::Result<(f64, u64, u64)> {
    let subject = format!("bench.{name}");
    let mut counters = Vec::new();
    for _ in 0..subscribers {
        let mut c = Conn::connect(addr).await?;
        c.subscribe(&subject, 1).await?;
        c.sync().await?;
        counters.push(tokio::spawn(async move {
            let mut check = SeqCheck::new(publishers);
            while !check.done() {
                let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(30), c.next_msg()).await
                else {
                    break;
                };
                check.observe(&m.payload);
            }
            (check, Instant::now())
        }));
    }
    let mut pubs = Vec::new();
    for _ in 0..publishers {
        pubs.push(Conn::connect(addr).await?);
    }
    let start = Instant::now();
    let senders: Vec<_> = pubs
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let subject = subject.clone();
            tokio::spawn(async move {
                let mut payload = vec![0u8; size.max(9)];
                payload[8] = i as u8;
                let mut seq = 0u64;
                while start.elapsed() < secs {
                    for _ in 0..FLUSH_EVERY {
                        payload[0..8].copy_from_slice(&seq.to_le_bytes());
                        c.publish(&subject, None, &payload).await?;
                        seq += 1;
                    }
                    c.flush().await?;
                }
                payload[0..8].copy_from_slice(&MARKER.to_le_bytes());
                c.publish(&subject, None, &payload).await?;
                c.sync().await?;
                anyhow::Ok(seq)
            })
        })
        .collect();
    let mut sent = 0;
    for s in senders {
        sent += s.await??;
    }
    let mut seen = Vec::new();
    for c in counters {
        seen.push(c.await?);
    }
    Ok(tally(start, sent, &seen))
}

async fn responder(addr: &str) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut c = Conn::connect(addr).await?;
    c.subscribe("svc", 1).await?;
    c.sync().await?;
    Ok(tokio::spawn(async move {
        while let Ok(m) = c.next_msg().await {
            let Some(reply) = m.reply else { continue };
            if c.publish(&reply, None, &m.payload).await.is_err() {
                return;
            }
            // Flush when no more requests are already buffered.
            if c.r.buffer().is_empty() && c.flush().await.is_err() {
                return;
            }
        }
    }))
}

/// Request/reply latency, one outstanding request through a responder; sorted samples.
pub async fn reqrep_latency(addr: &str, secs: Duration) -> anyhow::Result<Vec<Duration>> {
    let responder = responder(addr).await?;
    let mut c = Conn::connect(addr).await?;
    c.subscribe("_INBOX.lat", 1).await?;
    c.sync().await?;
    let payload = [1u8; 64];
    let mut samples = Vec::new();
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < secs || samples.len() < 1000 {
        n += 1;
        let t = Instant::now();
        c.publish("svc", Some("_INBOX.lat"), &payload).await?;
        c.flush().await?;
        c.next_msg().await?;
        if n > 200 {
            samples.push(t.elapsed());
        }
    }
    responder.abort();
    samples.sort();
    Ok(samples)
}

/// Request/reply throughput with `requesters` connections × `outstanding` requests.
pub async fn reqrep_throughput(
    addr: &str,
    requesters: usize,
    outstanding: usize,
    secs: Duration,
) -> anyhow::Result<f64> {
    let responder = responder(addr).await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..requesters {
        let mut c = Conn::connect(addr).await?;
        let inbox = format!("_INBOX.t{i}");
        c.subscribe(&inbox, 1).await?;
        c.sync().await?;
        tasks.push(tokio::spawn(async move {
            let payload = [2u8; 64];
            for _ in 0..outstanding {
                c.publish("svc", Some(&inbox), &payload).await?;
            }
            c.flush().await?;
            let (mut done, mut in_flight) = (0u64, outstanding);
            while in_flight > 0 {
                c.next_msg().await?;
                in_flight -= 1;
                done += 1;
                if start.elapsed() < secs {
                    c.publish("svc", Some(&inbox), &payload).await?;
                    in_flight += 1;
                    if c.r.buffer().is_empty() {
                        c.flush().await?;
                    }
                }
            }
            anyhow::Ok(done)
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    responder.abort();
    Ok(rate)
}
