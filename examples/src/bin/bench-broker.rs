//! `bench-broker`: throughput and latency of `ipc-server`, measured over real websockets.
//!
//! Starts a release `ipc-server` itself (or measures the one at `--url`), connects every
//! publisher and subscriber on its own connection, and prints: p2p 1→1, fan-out 1→8 and
//! fan-in 8→1 for 64 B and 1 KiB payloads, request/reply latency with one outstanding request
//! through a responder peer, and request/reply throughput with 4 requesters × 64 outstanding.
//! For the latency figure it also runs a bare tokio-tungstenite relay (no protocol, same
//! reader→queue→writer shape) in a separate process, so the ratio comes from the same run.
//! Loss and reordering are counted on every stream (each payload carries a sequence number).
//!
//! `cargo run --release -p examples --bin bench-broker [-- --json] [--url ws://host:port] [--secs 2]`

use bytes::Bytes;
use clap::Parser;
use examples::{
    build_binary, percentile, spawn_and_wait_line, tally, Report, SeqCheck, FLUSH_EVERY, MARKER,
};
use futures_util::{FutureExt, SinkExt, StreamExt};
use protocol::{ClientFrame, ServerFrame, Target};
use std::borrow::Cow;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[derive(Parser)]
#[command(about = "Broker benchmark for ipc-server")]
struct Args {
    /// Print one JSON object per line: {"figure": ..., "value": ..., "unit": ...}.
    #[arg(long)]
    json: bool,
    /// Measure a running server instead of starting one (ws:// only).
    #[arg(long)]
    url: Option<String>,
    /// Token for --url.
    #[arg(long)]
    token: Option<String>,
    /// Seconds per throughput figure.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Skip the bare-relay baseline.
    #[arg(long)]
    no_relay: bool,
    /// Only run figures whose name contains this text (e.g. p2p, fanout, reqrep).
    #[arg(long)]
    only: Option<String>,
    /// Also measure `nats-server` (from PATH) with the same load, right after each figure, and
    /// print the ratio ours / NATS.
    #[arg(long)]
    nats: bool,
    /// Internal: run the bare relay and print its port.
    #[arg(long, hide = true)]
    serve_bare_relay: bool,
}

type Ws = WebSocketStream<TcpStream>;

struct Broker {
    addr: String,
    token: Option<String>,
}

async fn connect_raw(addr: &str, path: &str, token: Option<&str>) -> anyhow::Result<Ws> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{addr}{path}"),
    )?;
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse()?);
    }
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config)).await?;
    Ok(ws)
}

/// Connects a peer and consumes its welcome.
async fn peer(target: &Broker, ns: &str, id: &str) -> anyhow::Result<Ws> {
    let mut ws = connect_raw(
        &target.addr,
        &format!("/ipc/v1/{ns}?id={id}"),
        target.token.as_deref(),
    )
    .await?;
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => match protocol::decode_server(&b)? {
            ServerFrame::Welcome(_) => Ok(ws),
            other => anyhow::bail!("expected welcome, got {other:?}"),
        },
        other => anyhow::bail!("expected welcome, got {other:?}"),
    }
}

fn frame(f: &ClientFrame<'_>) -> Message {
    Message::Binary(Bytes::from(protocol::encode_client(f)))
}

/// Sends a ping and waits for its pong (everything sent before is then applied).
async fn sync(ws: &mut Ws) -> anyhow::Result<()> {
    ws.send(frame(&ClientFrame::Ping { nonce: 1 })).await?;
    while let Some(m) = ws.next().await {
        if let Message::Binary(b) = m? {
            if let ServerFrame::Pong { .. } = protocol::decode_server(&b)? {
                return Ok(());
            }
        }
    }
    anyhow::bail!("closed while waiting for pong")
}

/// Counts publications until every publisher's end marker arrived, checking their order.
async fn subscribe_and_count(
    mut ws: Ws,
    publishers: usize,
    timeout: Duration,
) -> (SeqCheck, Instant) {
    let mut check = SeqCheck::new(publishers);
    let deadline = tokio::time::Instant::now() + timeout;
    while !check.done() {
        let m = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(m))) => m,
            _ => break,
        };
        let Message::Binary(b) = m else { continue };
        if let Ok(ServerFrame::Published { payload, .. }) = protocol::decode_server(&b) {
            check.observe(&payload);
        }
    }
    (check, Instant::now())
}

/// Publishes as fast as flow control allows for `secs`, then sends an end marker; returns the
/// number sent.
async fn publish_for(mut ws: Ws, subject: String, size: usize, index: u8, secs: Duration) -> u64 {
    let mut payload = vec![0u8; size.max(9)];
    payload[8] = index;
    let start = Instant::now();
    let mut seq = 0u64;
    'outer: loop {
        for _ in 0..FLUSH_EVERY {
            payload[0..8].copy_from_slice(&seq.to_le_bytes());
            let f = frame(&ClientFrame::Publish {
                subject: subject.as_str().into(),
                payload: Cow::Borrowed(&payload),
            });
            if ws.feed(f).await.is_err() {
                break 'outer;
            }
            seq += 1;
        }
        if ws.flush().await.is_err() || start.elapsed() >= secs {
            break;
        }
    }
    payload[0..8].copy_from_slice(&MARKER.to_le_bytes());
    let _ = ws
        .send(frame(&ClientFrame::Publish {
            subject: subject.as_str().into(),
            payload: Cow::Borrowed(&payload),
        }))
        .await;
    // Keep the connection open until the marker has surely been routed.
    let _ = sync(&mut ws).await;
    seq
}

/// N publishers → M subscribers on one subject; returns (deliveries/s, lost, out of order).
async fn pubsub(
    target: &Broker,
    name: &str,
    publishers: usize,
    subscribers: usize,
    size: usize,
    secs: Duration,
) -> anyhow::Result<(f64, u64, u64)> {
    let ns = format!("bench-{name}");
    let subject = format!("bench.{name}");
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let mut ws = peer(target, &ns, &format!("sub-{i}")).await?;
        ws.send(frame(&ClientFrame::Subscribe {
            pattern: subject.as_str().into(),
        }))
        .await?;
        sync(&mut ws).await?;
        subs.push(ws);
    }
    let mut pubs = Vec::new();
    for i in 0..publishers {
        pubs.push(peer(target, &ns, &format!("pub-{i}")).await?);
    }
    let timeout = secs * 4 + Duration::from_secs(20);
    let counters: Vec<_> = subs
        .into_iter()
        .map(|ws| tokio::spawn(subscribe_and_count(ws, publishers, timeout)))
        .collect();
    let start = Instant::now();
    let senders: Vec<_> = pubs
        .into_iter()
        .enumerate()
        .map(|(i, ws)| tokio::spawn(publish_for(ws, subject.clone(), size, i as u8, secs)))
        .collect();
    let mut sent = 0;
    for s in senders {
        sent += s.await?;
    }
    let mut seen = Vec::new();
    for c in counters {
        seen.push(c.await?);
    }
    Ok(tally(start, sent, &seen))
}

/// Answers every request with its own payload, flushing only when nothing more is ready.
async fn respond_forever(mut ws: Ws) {
    loop {
        let m = match ws.next().await {
            Some(Ok(m)) => m,
            _ => return,
        };
        let mut pending = Some(m);
        while let Some(m) = pending.take() {
            if let Message::Binary(b) = m {
                if let Ok(ServerFrame::Request {
                    from,
                    corr,
                    payload,
                    ..
                }) = protocol::decode_server(&b)
                {
                    if ws
                        .feed(frame(&ClientFrame::Reply {
                            to: from,
                            corr,
                            payload,
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            pending = match ws.next().now_or_never() {
                Some(Some(Ok(m))) => Some(m),
                Some(_) => return,
                None => None,
            };
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

fn request(corr: u64, payload: &[u8]) -> Message {
    frame(&ClientFrame::Request {
        corr,
        target: Target::Peer("responder".into()),
        timeout_ms: 5000,
        payload: Cow::Borrowed(payload),
    })
}

async fn await_reply(ws: &mut Ws) -> anyhow::Result<u64> {
    while let Some(m) = ws.next().await {
        if let Message::Binary(b) = m? {
            match protocol::decode_server(&b)? {
                ServerFrame::Reply { corr, .. } => return Ok(corr),
                ServerFrame::Error { message, .. } => anyhow::bail!("request failed: {message}"),
                _ => {}
            }
        }
    }
    anyhow::bail!("closed while waiting for a reply")
}

/// Request/reply latency with one outstanding request; returns sorted samples.
async fn reqrep_latency(target: &Broker, secs: Duration) -> anyhow::Result<Vec<Duration>> {
    let responder = peer(target, "bench-rr", "responder").await?;
    let responder = tokio::spawn(respond_forever(responder));
    let mut ws = peer(target, "bench-rr", "requester").await?;
    let payload = [1u8; 64];
    let mut samples = Vec::new();
    let start = Instant::now();
    let mut corr = 0;
    while start.elapsed() < secs || samples.len() < 1000 {
        corr += 1;
        let t = Instant::now();
        ws.send(request(corr, &payload)).await?;
        let got = await_reply(&mut ws).await?;
        anyhow::ensure!(got == corr, "reply {got} for request {corr}");
        if corr > 200 {
            samples.push(t.elapsed());
        }
    }
    responder.abort();
    samples.sort();
    Ok(samples)
}

/// Request/reply throughput: `requesters` connections with `outstanding` requests each.
async fn reqrep_throughput(
    target: &Broker,
    requesters: usize,
    outstanding: usize,
    secs: Duration,
) -> anyhow::Result<f64> {
    let responder = peer(target, "bench-rrt", "responder").await?;
    let responder = tokio::spawn(respond_forever(responder));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for i in 0..requesters {
        let mut ws = peer(target, "bench-rrt", &format!("requester-{i}")).await?;
        tasks.push(tokio::spawn(async move {
            let payload = [2u8; 64];
            let mut corr = 0u64;
            for _ in 0..outstanding {
                corr += 1;
                ws.feed(request(corr, &payload)).await?;
            }
            ws.flush().await?;
            let mut done = 0u64;
            let mut in_flight = outstanding as u64;
            while in_flight > 0 {
                await_reply(&mut ws).await?;
                let mut replies = 1;
                // Take every reply that is already here before flushing the requests they
                // free up (the NATS load flushes when its read buffer is empty, too).
                while let Some(next) = ws.next().now_or_never() {
                    let Some(m) = next else { break };
                    if let Message::Binary(b) = m? {
                        match protocol::decode_server(&b)? {
                            ServerFrame::Reply { .. } => replies += 1,
                            ServerFrame::Error { message, .. } => {
                                anyhow::bail!("request failed: {message}")
                            }
                            _ => {}
                        }
                    }
                }
                in_flight -= replies;
                done += replies;
                if start.elapsed() < secs {
                    for _ in 0..replies {
                        corr += 1;
                        ws.feed(request(corr, &payload)).await?;
                    }
                    in_flight += replies;
                    ws.flush().await?;
                }
            }
            anyhow::Ok(done)
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    responder.abort();
    Ok(done as f64 / elapsed)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.serve_bare_relay {
        return runtime.block_on(examples::bare_relay::serve());
    }
    let report = Report::new(args.json);
    let secs = Duration::from_secs_f64(args.secs);
    let mut _server = None;
    let addr = match &args.url {
        Some(url) => url
            .trim_start_matches("ws://")
            .trim_end_matches('/')
            .to_owned(),
        None => {
            let bin = build_binary("ipc-server", "ipc-server")?;
            let (guard, line) = spawn_and_wait_line(
                &bin,
                &[
                    "--port",
                    "0",
                    "--keepalive-ms",
                    "60000",
                    "--queue-bytes",
                    "16777216",
                ],
                "listening on",
            )?;
            _server = Some(guard);
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("ws://"))
                .ok_or_else(|| anyhow::anyhow!("no url in {line:?}"))?
                .to_owned()
        }
    };
    report.note(&format!(
        "ipc-server at ws://{addr}; {} s per throughput figure",
        args.secs
    ));
    let target = Broker {
        addr,
        token: args.token.clone(),
    };
    let wanted = |name: &str| args.only.as_deref().is_none_or(|o| name.contains(o));
    let mut _nats_server = None;
    let nats = if args.nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("cannot start nats-server (apt-get install nats-server): {e}")
            })?;
        _nats_server = Some(examples::ChildGuard(child));
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        report.note(&format!(
            "nats-server at {addr}, same load right after each figure"
        ));
        Some(addr)
    } else {
        None
    };
    runtime.block_on(async {
        let mut problems = 0u64;
        for (size, label) in [(64usize, "64B"), (1024, "1KiB")] {
            for (name, pubs, subs, unit) in [
                ("p2p_1to1", 1, 1, "msg/s"),
                ("fanout_1to8", 1, 8, "deliveries/s"),
                ("fanin_8to1", 8, 1, "msg/s"),
            ] {
                if !wanted(&format!("{name}_{label}")) {
                    continue;
                }
                let (rate, lost, reordered) =
                    pubsub(&target, &format!("{name}-{label}"), pubs, subs, size, secs).await?;
                report.figure(&format!("{name}_{label}"), rate, unit);
                if let Some(nats) = &nats {
                    let (n_rate, n_lost, _) = examples::nats::pubsub(
                        nats,
                        &format!("{name}-{label}"),
                        pubs,
                        subs,
                        size,
                        secs,
                    )
                    .await?;
                    report.figure(&format!("nats_{name}_{label}"), n_rate, unit);
                    if n_lost > 0 {
                        report.figure(
                            &format!("nats_{name}_{label}_lost"),
                            n_lost as f64,
                            "messages",
                        );
                    }
                    report.figure(&format!("{name}_{label}_vs_nats"), rate / n_rate, "ratio");
                }
                if lost + reordered > 0 {
                    report.figure(&format!("{name}_{label}_lost"), lost as f64, "messages");
                    report.figure(
                        &format!("{name}_{label}_out_of_order"),
                        reordered as f64,
                        "messages",
                    );
                    problems += lost + reordered;
                }
            }
        }
        if !wanted("reqrep") {
            report.figure("lost_or_reordered_total", problems as f64, "messages");
            return anyhow::Ok(());
        }
        let samples = reqrep_latency(&target, secs).await?;
        let p50 = percentile(&samples, 50.0).as_secs_f64() * 1e6;
        report.figure("reqrep_latency_p50", p50, "us");
        report.figure(
            "reqrep_latency_p99",
            percentile(&samples, 99.0).as_secs_f64() * 1e6,
            "us",
        );
        let rate = reqrep_throughput(&target, 4, 64, secs).await?;
        report.figure("reqrep_4x64", rate, "req/s");
        if let Some(nats) = &nats {
            let samples = examples::nats::reqrep_latency(nats, secs).await?;
            let n_p50 = percentile(&samples, 50.0).as_secs_f64() * 1e6;
            report.figure("nats_reqrep_latency_p50", n_p50, "us");
            report.figure(
                "nats_reqrep_latency_p99",
                percentile(&samples, 99.0).as_secs_f64() * 1e6,
                "us",
            );
            let n_rate = examples::nats::reqrep_throughput(nats, 4, 64, secs).await?;
            report.figure("nats_reqrep_4x64", n_rate, "req/s");
            report.figure("reqrep_4x64_vs_nats", rate / n_rate, "ratio");
        }
        if !args.no_relay {
            let exe = std::env::current_exe()?;
            let (_relay, line) =
                spawn_and_wait_line(&exe, &["--serve-bare-relay"], "bare-relay listening on")?;
            let relay_addr = line.rsplit(' ').next().unwrap_or_default().to_owned();
            let samples = examples::bare_relay::latency(&relay_addr, secs).await?;
            let relay_p50 = percentile(&samples, 50.0).as_secs_f64() * 1e6;
            report.figure("bare_relay_reqrep_latency_p50", relay_p50, "us");
            report.figure(
                "bare_relay_reqrep_latency_p99",
                percentile(&samples, 99.0).as_secs_f64() * 1e6,
                "us",
            );
            report.figure("reqrep_p50_vs_bare_relay", p50 / relay_p50, "ratio");
        }
        report.figure("lost_or_reordered_total", problems as f64, "messages");
        anyhow::Ok(())
    })
}
