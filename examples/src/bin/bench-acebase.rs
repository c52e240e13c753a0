//! `bench-acebase`: AceBase's own throughput through `ipc-server` versus through a minimal Node
//! `ws` relay with the same framing (`ipc-server/tests/acebase/relay.js`).
//!
//! The same three processes each time: one AceBase master and two AceBase workers (real AceBase
//! 1.29, installed by `npm ci` in `ipc-server/tests/acebase`), each worker writing `--count`
//! records at new paths, then making `--count` transactional increments of one shared counter.
//!
//! `cargo run --release -p examples --bin bench-acebase [-- --json] [--count 300]`

use clap::Parser;
use examples::{build_binary, spawn_and_wait_line, ChildGuard, Report};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(Parser)]
#[command(about = "AceBase throughput through ipc-server vs a minimal Node relay")]
struct Args {
    #[arg(long)]
    json: bool,
    /// Records and increments per worker.
    #[arg(long, default_value_t = 200)]
    count: u32,
    /// Rounds (alternating between the two relays); medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn acebase_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ipc-server/tests/acebase")
}

/// Runs `node peer.js args` and returns its `@@RESULT` lines (up to `want` of them, or all
/// until it exits).
fn node(
    args: &[&str],
) -> anyhow::Result<(ChildGuard, std::sync::mpsc::Receiver<serde_json::Value>)> {
    let mut child = Command::new("node")
        .arg("peer.js")
        .args(args)
        .current_dir(acebase_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(json) = line.strip_prefix("@@RESULT ") {
                if let Ok(v) = serde_json::from_str(json) {
                    let _ = tx.send(v);
                }
            }
        }
    });
    Ok((ChildGuard(child), rx))
}

fn wait(
    rx: &std::sync::mpsc::Receiver<serde_json::Value>,
    event: &str,
) -> anyhow::Result<serde_json::Value> {
    loop {
        let v = rx
            .recv_timeout(Duration::from_secs(120))
            .map_err(|_| anyhow::anyhow!("no {event:?} from an AceBase process within 120 s"))?;
        if v["event"] == event {
            return Ok(v);
        }
    }
}

/// (writes/s, increments/s) for master + 2 workers through the post office on `port`.
fn run(port: u16, token: &str, count: u32) -> anyhow::Result<(f64, f64)> {
    let dir = std::env::temp_dir().join(format!("bench-acebase-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let d = dir.display().to_string();
    let p = port.to_string();
    let n = count.to_string();
    let (_master, m) = node(&["master", "serve", &d, &p, token])?;
    wait(&m, "ready")?;
    let (_w1, r1) = node(&["worker", "write", &d, &p, token, "w1", &n])?;
    let (_w2, r2) = node(&["worker", "write", &d, &p, token, "w2", &n])?;
    let (d1, d2) = (wait(&r1, "done")?, wait(&r2, "done")?);
    let ms = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let writes_ms = ms(&d1, "writes_ms").max(ms(&d2, "writes_ms"));
    let increments_ms = ms(&d1, "increments_ms").max(ms(&d2, "increments_ms"));
    let _ = std::fs::remove_dir_all(&dir);
    let total = 2.0 * f64::from(count);
    Ok((
        total / (writes_ms / 1000.0),
        total / (increments_ms / 1000.0),
    ))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let report = Report::new(args.json);
    anyhow::ensure!(
        acebase_dir().join("node_modules/acebase").is_dir(),
        "run `npm ci` in {} first",
        acebase_dir().display()
    );
    let bin = build_binary("ipc-server", "ipc-server")?;
    let (_server, line) =
        spawn_and_wait_line(&bin, &["--port", "0", "--token", "bench"], "listening on")?;
    let port: u16 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ws://"))
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no port in {line:?}"))?;
    let (_relay, relay_line) = {
        let node = which_node()?;
        spawn_and_wait_line(
            &node,
            &[&acebase_dir().join("relay.js").display().to_string(), "0"],
            "relay listening on",
        )?
    };
    let relay_port: u16 = relay_line
        .rsplit(' ')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0);
    report.note(&format!(
        "AceBase master + 2 workers, {} records and {} increments per worker",
        args.count, args.count
    ));
    let (mut ours, mut relay) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds.max(1) {
        ours.push(run(port, "bench", args.count)?);
        relay.push(run(relay_port, "", args.count)?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let ours_w = median(&mut ours.iter().map(|r| r.0).collect());
    let ours_i = median(&mut ours.iter().map(|r| r.1).collect());
    let relay_w = median(&mut relay.iter().map(|r| r.0).collect());
    let relay_i = median(&mut relay.iter().map(|r| r.1).collect());
    report.figure("acebase_writes_via_ipc_server", ours_w, "writes/s");
    report.figure("acebase_writes_via_node_relay", relay_w, "writes/s");
    report.figure("acebase_increments_via_ipc_server", ours_i, "increments/s");
    report.figure("acebase_increments_via_node_relay", relay_i, "increments/s");
    report.figure(
        "acebase_writes_ratio_ours_to_relay",
        ours_w / relay_w,
        "ratio",
    );
    report.figure(
        "acebase_increments_ratio_ours_to_relay",
        ours_i / relay_i,
        "ratio",
    );
    Ok(())
}

fn which_node() -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("node"))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| anyhow::anyhow!("node is not on PATH"))
}
