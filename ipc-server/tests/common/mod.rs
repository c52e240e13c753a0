//! Test support: start the real `ipc-server` binary on a free loopback port, restart it on the
//! same port, connect clients, and wait for events with deadlines (nothing waits forever).

#![allow(dead_code)]

use ipc_client::{Client, ClientOptions, Event, Events, LeaveReason};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `ipc-server` child process; killed when dropped.
pub struct ServerProc {
    pub child: Child,
    pub port: u16,
    pub url: String,
    args: Vec<String>,
}

pub const SERVER: &str = env!("CARGO_BIN_EXE_ipc-server");
pub const PEER: &str = env!("CARGO_BIN_EXE_ipc-peer");

impl ServerProc {
    /// Starts a server on a free port with extra flags.
    pub fn start(args: &[&str]) -> ServerProc {
        Self::start_on(0, args.iter().map(|s| s.to_string()).collect())
    }

    fn start_on(port: u16, args: Vec<String>) -> ServerProc {
        let mut child = Command::new(SERVER)
            .arg("--port")
            .arg(port.to_string())
            .arg("--host")
            .arg("127.0.0.1")
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ipc-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server printed its listening line");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("ws://") || w.starts_with("wss://"))
            .expect("url in listening line")
            .to_owned();
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in url");
        ServerProc {
            child,
            port,
            url,
            args,
        }
    }

    /// The http:// base URL for plain requests.
    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL and starts it again on the same port.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port may take a moment to be free again.
            let attempt = std::panic::catch_unwind(|| Self::start_on(self.port, self.args.clone()));
            match attempt {
                Ok(new) => {
                    *self = new;
                    return;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects a client with default options.
pub async fn client(server: &ServerProc, ns: &str, id: &str) -> (Client, Events) {
    connect(ClientOptions::new(&server.url, ns, id)).await
}

pub async fn connect(opts: ClientOptions) -> (Client, Events) {
    let (client, mut events) = Client::connect(opts).await.expect("client connects");
    // The first event is always Connected.
    match events.recv().await {
        Some(Event::Connected { .. }) => {}
        other => panic!("expected Connected first, got {other:?}"),
    }
    (client, events)
}

/// Waits up to `timeout` for an event matching `pred`, skipping others.
pub async fn wait_for<F: FnMut(&Event) -> bool>(
    events: &mut Events,
    timeout: Duration,
    mut pred: F,
) -> Event {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) if pred(&event) => return event,
            Ok(Some(_)) => {}
            Ok(None) => panic!("event stream ended"),
            Err(_) => panic!("no matching event within {timeout:?}"),
        }
    }
}

/// Waits up to `timeout` for `peer` to be reported left and returns why it left.
pub async fn left_reason(events: &mut Events, peer: &str, timeout: Duration) -> LeaveReason {
    let e = wait_for(
        events,
        timeout,
        |e| matches!(e, Event::Left { peer: p, .. } if p == peer),
    )
    .await;
    match e {
        Event::Left { reason, .. } => reason,
        other => panic!("expected left, got {other:?}"),
    }
}

/// Asserts that no event matching `pred` arrives within `window`.
pub async fn none_within<F: FnMut(&Event) -> bool>(
    events: &mut Events,
    window: Duration,
    mut pred: F,
) {
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
        assert!(!pred(&event), "unexpected event {event:?}");
    }
}

pub const SECOND: Duration = Duration::from_secs(1);

/// A raw HTTP GET with optional extra headers; returns (status, body).
pub async fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
