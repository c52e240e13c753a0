//! `bench-cluster`: db-node master + N worker processes through a real `ipc-server`.
//!
//! Figures, for N = 1, 2, 4 worker processes (each a `db-node` process with one post-office
//! connection, see `docs/coordination.md`):
//! * small writes/s at distinct paths (`db-node fill`, one transaction and one lock per write);
//! * transactional increments/s of one shared counter (`db-node incr`), checked for lost updates;
//! * the N=4 / N=1 write ratio;
//! * event latency p50/p99: from the commit step of a write in this process (a `Db`
//!   opened as a worker; the clock starts at the end of the transaction, right before its pages and meta
//!   page are written and the commit is announced) to its `value` event printed by a
//!   `db-node watch --events value` process, read back through its stdout pipe (which the
//!   figure includes).
//!
//! `cargo run --release -p examples --bin bench-cluster [-- --json] [--sync]`

use anyhow::{bail, Context};
use clap::Parser;
use db_node::{Db, Durability, IpcOptions, Options, Role};
use examples::{build_binary, percentile, spawn_and_wait_line, ChildGuard, Report};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "db-node master and worker processes through ipc-server")]
struct Args {
    /// One JSON object per line: {"figure":..,"value":..,"unit":..}.
    #[arg(long)]
    json: bool,
    /// Writes per worker process.
    #[arg(long, default_value_t = 4000)]
    writes: u64,
    /// Increments per worker process.
    #[arg(long, default_value_t = 2000)]
    increments: u64,
    /// Writer threads per worker process (each runs one transaction at a time); the figures
    /// are measured with 1 and with this many.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Writes timed for the event latency.
    #[arg(long, default_value_t = 300)]
    events: usize,
    /// Also measure in `sync` mode (flushed commits); `nosync` is always measured.
    #[arg(long)]
    sync: bool,
}

struct Bench {
    db_node: PathBuf,
    url: String,
}

impl Bench {
    fn cmd(&self, dir: &Path, sync: bool, args: &[&str]) -> Command {
        let mut c = Command::new(&self.db_node);
        c.arg("--db").arg(dir).arg("--ipc").arg(&self.url);
        if !sync {
            c.arg("--nosync");
        }
        c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    fn master(&self, dir: &Path) -> anyhow::Result<ChildGuard> {
        let dir = dir.to_string_lossy().into_owned();
        let (m, _) = spawn_and_wait_line(
            &self.db_node,
            &["--db", &dir, "--ipc", &self.url, "master"],
            "ready",
        )
        .context("starting the master")?;
        Ok(m)
    }

    /// Run one command per worker at the same time; the wall time until all succeeded.
    fn parallel(&self, dir: &Path, sync: bool, argv: &[Vec<String>]) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let children = argv
            .iter()
            .map(|a| {
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                self.cmd(dir, sync, &a).spawn()
            })
            .collect::<Result<Vec<_>, _>>()?;
        for c in children {
            let out = c.wait_with_output()?;
            if !out.status.success() {
                bail!("worker failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(start.elapsed())
    }

    fn get(&self, dir: &Path, path: &str) -> anyhow::Result<String> {
        let out = self.cmd(dir, false, &["get", path]).output()?;
        if !out.status.success() {
            bail!("get failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

fn event_latency(b: &Bench, dir: &Path, n: usize) -> anyhow::Result<Vec<Duration>> {
    let _m = b.master(dir)?;
    let mut watch = b
        .cmd(dir, false, &["watch", "--events", "value", "ev/*"])
        .spawn()?;
    let stdout = watch.stdout.take().context("watch stdout")?;
    let stderr = watch.stderr.take().context("watch stderr")?;
    let _watch = ChildGuard(watch);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("watching") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .context("the watcher did not start")?;
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let mut ipc = IpcOptions::new(b.url.clone());
    ipc.role = Role::Worker;
    let db = Db::open(
        dir,
        Options {
            durability: Durability::NoSync,
            ipc: Some(ipc),
            ..Options::default()
        },
    )?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let path = format!("ev/{i}");
        // the clock starts inside the commit step, right before the commit is written and
        // announced (after the lock round trip)
        let mut t0 = Instant::now();
        db.write_paths(&[&path], |t| {
            t.set(&path, db_node::Value::Int(i as i64))?;
            t0 = Instant::now();
            Ok(())
        })?;
        let want = format!("\"path\":\"{path}\"");
        loop {
            let (at, line) = rx
                .recv_timeout(Duration::from_secs(5))
                .context("no event within 5 s")?;
            if line.contains(&want) {
                samples.push(at - t0);
                break;
            }
        }
    }
    samples.sort();
    Ok(samples)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let report = Report::new(args.json);
    let ipc = build_binary("ipc-server", "ipc-server")?;
    let db_node = build_binary("db-node", "db-node")?;
    let (_server, line) = spawn_and_wait_line(
        &ipc,
        &["--port", "0", "--host", "127.0.0.1"],
        "listening on",
    )?;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .context("url in the server's listening line")?
        .to_owned();
    let b = Bench { db_node, url };
    let base = std::env::temp_dir().join(format!("bench-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    report.note(
        "each write and each increment is one transaction under a master-granted lock; \
         T = writer threads per worker process",
    );
    let modes: &[bool] = if args.sync { &[false, true] } else { &[false] };
    let mut threads_list = vec![1, args.threads.max(1)];
    threads_list.dedup();
    for (&sync, &threads) in modes
        .iter()
        .flat_map(|m| threads_list.iter().map(move |t| (m, t)))
    {
        let mode = if sync {
            format!("sync T={threads}")
        } else {
            format!("nosync T={threads}")
        };
        let threads_arg = threads.to_string();
        let mut writes_at = Vec::new();
        for n in [1usize, 2, 4] {
            let dir = base.join(format!("{sync}-{threads}-{n}"));
            let _m = b.master(&dir)?;
            let argv: Vec<Vec<String>> = (0..n)
                .map(|k| {
                    vec![
                        "fill".into(),
                        format!("w{k}"),
                        "--count".into(),
                        args.writes.to_string(),
                        "--threads".into(),
                        threads_arg.clone(),
                    ]
                })
                .collect();
            let t = b.parallel(&dir, sync, &argv)?;
            let wps = (n as u64 * args.writes) as f64 / t.as_secs_f64();
            writes_at.push(wps);
            report.figure(&format!("writes/s N={n} {mode}"), wps, "writes/s");
            let argv: Vec<Vec<String>> = (0..n)
                .map(|_| {
                    vec![
                        "incr".into(),
                        "counter".into(),
                        "--times".into(),
                        args.increments.to_string(),
                        "--threads".into(),
                        threads_arg.clone(),
                    ]
                })
                .collect();
            let t = b.parallel(&dir, sync, &argv)?;
            let total = n as u64 * args.increments;
            let value = b.get(&dir, "counter")?;
            if value != total.to_string() {
                bail!("lost updates: counter is {value}, expected {total}");
            }
            report.figure(
                &format!("increments/s N={n} {mode}"),
                total as f64 / t.as_secs_f64(),
                "increments/s",
            );
        }
        if let (Some(one), Some(four)) = (writes_at.first(), writes_at.last()) {
            report.figure(&format!("writes N=4/N=1 {mode}"), four / one, "ratio");
        }
    }
    let lat = event_latency(&b, &base.join("events"), args.events)?;
    report.figure(
        "event latency p50 (commit to event)",
        percentile(&lat, 50.0).as_secs_f64() * 1e3,
        "ms",
    );
    report.figure(
        "event latency p99 (commit to event)",
        percentile(&lat, 99.0).as_secs_f64() * 1e3,
        "ms",
    );
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
