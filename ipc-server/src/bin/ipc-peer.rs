//! `ipc-peer`: a command-line peer for trying a server by hand, scripting, and tests.
//!
//! It connects, subscribes to the given patterns, prints every event as one JSON line on
//! stdout, answers requests by echoing them when `--echo` is set, and executes commands read
//! from stdin, one per line:
//!
//! ```text
//! send <peer> <text>        broadcast <text>        publish <subject> <text>
//! request <peer> <text>     request-subject <subject> <text>
//! subscribe <pattern>       unsubscribe <pattern>   quit
//! ```

use anyhow::Context as _;
use clap::Parser;
use ipc_client::{Client, ClientOptions, Event};
use serde_json::json;
use std::io::Write as _;
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(
    name = "ipc-peer",
    version,
    about = "A command-line peer of ipc-server"
)]
struct Args {
    /// Server URL (ws:// or wss://).
    #[arg(long, env = "IPC_URL", default_value = "ws://127.0.0.1:9163")]
    url: String,
    /// Namespace to join.
    #[arg(long, env = "IPC_NAMESPACE")]
    namespace: String,
    /// Our peer id (default under pm2: `<app name>-<instance number>`).
    #[arg(long, env = "IPC_PEER_ID")]
    id: Option<String>,
    /// Access token.
    #[arg(long, env = "IPC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file with a CA certificate to trust for wss://.
    #[arg(long, env = "IPC_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// Patterns to subscribe to at start.
    #[arg(long)]
    subscribe: Vec<String>,
    /// Answer every request with its own payload.
    #[arg(long)]
    echo: bool,
}

fn print(value: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipc-peer: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let id = match args.id.clone().or_else(ipc_client::pm2_peer_id) {
        Some(id) => id,
        None => {
            anyhow::bail!("give --id (or IPC_PEER_ID); under pm2 it defaults to <name>-<instance>")
        }
    };
    let mut opts = ClientOptions::new(&args.url, &args.namespace, id);
    opts.token = args.token.clone();
    if let Some(path) = &args.tls_ca {
        opts.tls_ca_pem =
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?);
    }
    // Under pm2 the post office and its peers start together: a peer that comes up first
    // waits for it (up to 30 s) instead of exiting and being restarted.
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(50);
    let (client, mut events) = loop {
        match Client::connect(opts.clone()).await {
            Ok(c) => break c,
            Err(e @ (ipc_client::ClientError::Io(_) | ipc_client::ClientError::WebSocket(_)))
                if started.elapsed() < std::time::Duration::from_secs(30) =>
            {
                if pause == std::time::Duration::from_millis(50) {
                    eprintln!(
                        "ipc-peer: waiting for the post office at {} ({e})",
                        args.url
                    );
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
            }
            Err(e) => return Err(e).context("connecting"),
        }
    };
    for pattern in &args.subscribe {
        client
            .subscribe(pattern)
            .await
            .with_context(|| format!("subscribing to {pattern}"))?;
    }
    print(json!({"event": "ready", "epoch": client.epoch()}));
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                match event {
                    Event::Connected { epoch, members } => print(json!({"event": "connected", "epoch": epoch, "members": members})),
                    Event::Disconnected { reason } => print(json!({"event": "disconnected", "reason": reason})),
                    Event::Joined { peer, epoch } => print(json!({"event": "joined", "peer": peer, "epoch": epoch})),
                    Event::Left { peer, epoch, reason } => print(json!({"event": "left", "peer": peer, "epoch": epoch, "reason": format!("{reason:?}")})),
                    Event::Message { from, payload } => print(json!({"event": "message", "from": from, "text": text(&payload)})),
                    Event::Broadcast { from, payload } => print(json!({"event": "broadcast", "from": from, "text": text(&payload)})),
                    Event::Published { from, subject, payload } => print(json!({"event": "published", "from": from, "subject": subject, "text": text(&payload)})),
                    Event::Request(req) => {
                        print(json!({"event": "request", "from": req.from, "corr": req.corr, "subject": req.subject, "text": text(&req.payload)}));
                        if args.echo {
                            let _ = client.reply(&req, &req.payload).await;
                        }
                    }
                    Event::Undeliverable { code, target, message } => print(json!({"event": "undeliverable", "code": format!("{code:?}"), "target": target, "message": message})),
                }
            }
            line = stdin.next_line(), if stdin_open => {
                match line {
                    Ok(Some(line)) => {
                        if !command(&client, line.trim()).await {
                            break;
                        }
                    }
                    _ => stdin_open = false,
                }
            }
        }
    }
    client.close().await;
    Ok(())
}

/// Runs one stdin command; false means quit.
async fn command(client: &Client, line: &str) -> bool {
    let mut parts = line.splitn(3, ' ');
    let (verb, a, b) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let result = match verb {
        "" => Ok(()),
        "quit" => return false,
        "send" => client.send(a, b.as_bytes()).await,
        "broadcast" => {
            client
                .broadcast(line.trim_start_matches("broadcast").trim().as_bytes())
                .await
        }
        "publish" => client.publish(a, b.as_bytes()).await,
        "subscribe" => client.subscribe(a).await,
        "unsubscribe" => client.unsubscribe(a).await,
        "request" | "request-subject" => {
            let reply = if verb == "request" {
                client.request(a, b.as_bytes(), None).await
            } else {
                client.request_subject(a, b.as_bytes(), None).await
            };
            match reply {
                Ok(payload) => print(json!({"event": "reply", "text": text(&payload)})),
                Err(e) => print(json!({"event": "request_failed", "error": e.to_string()})),
            }
            Ok(())
        }
        other => {
            print(json!({"event": "error", "error": format!("unknown command {other:?}")}));
            Ok(())
        }
    };
    if let Err(e) = result {
        print(json!({"event": "error", "error": e.to_string()}));
    }
    true
}
