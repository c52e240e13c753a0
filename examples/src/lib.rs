//! Shared pieces of the benchmark binaries: printing figures (text or JSON lines), starting
//! release builds of our binaries as child processes, and small statistics helpers.

pub mod bare_relay;
pub mod nats;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Prints figures as aligned text, or as one JSON object per line with `--json`.
pub struct Report {
    json: bool,
}

impl Report {
    pub fn new(json: bool) -> Self {
        Report { json }
    }

    /// One measured figure.
    pub fn figure(&self, figure: &str, value: f64, unit: &str) {
        let mut out = std::io::stdout().lock();
        if self.json {
            let line = serde_json::json!({ "figure": figure, "value": round(value), "unit": unit });
            let _ = writeln!(out, "{line}");
        } else {
            let _ = writeln!(out, "{figure:<44} {:>14} {unit}", format_value(value));
        }
        let _ = out.flush();
    }

    /// A free-text note (text mode only; JSON mode stays machine-readable).
    pub fn note(&self, text: &str) {
        if !self.json {
            println!("# {text}");
        } else {
            eprintln!("# {text}");
        }
    }
}

fn round(v: f64) -> f64 {
    if v.abs() >= 100.0 {
        v.round()
    } else {
        (v * 100.0).round() / 100.0
    }
}

fn format_value(v: f64) -> String {
    if v.abs() >= 1000.0 {
        let s = format!("{:.0}", v);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{v:.2}")
    }
}

/// The directory holding our own executables (`target/release` when run with `--release`).
pub fn exe_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

/// Builds `bin` of `package` in the current profile (a no-op when up to date) and returns its
/// path next to the running executable.
pub fn build_binary(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let release = exe_dir().ends_with("release");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--quiet", "-p", package, "--bin", bin]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status()?;
    anyhow::ensure!(
        status.success(),
        "cargo build -p {package} --bin {bin} failed"
    );
    Ok(exe_dir().join(bin))
}

/// A child process killed on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program args` and returns it with the first stdout line that contains `marker`.
pub fn spawn_and_wait_line(
    program: &PathBuf,
    args: &[&str],
    marker: &str,
) -> anyhow::Result<(ChildGuard, String)> {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let guard = ChildGuard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    let marker = marker.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(&marker) {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(20))?;
    Ok((guard, line))
}

/// The `p`-th percentile (0..=100) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Publications each load generator queues per flush (one write syscall carries them all).
pub const FLUSH_EVERY: usize = 128;

/// The sequence number that ends a publisher's stream.
pub const MARKER: u64 = u64::MAX;

/// Per-publisher order checking, shared by the load generators: payload bytes 0..8 carry the
/// sequence number (little-endian, [`MARKER`] at the end), byte 8 the publisher's index.
pub struct SeqCheck {
    next: Vec<u64>,
    markers: usize,
    pub received: u64,
    pub out_of_order: u64,
}

impl SeqCheck {
    pub fn new(publishers: usize) -> Self {
        SeqCheck {
            next: vec![0; publishers.max(1)],
            markers: 0,
            received: 0,
            out_of_order: 0,
        }
    }

    /// Whether every publisher's end marker arrived.
    pub fn done(&self) -> bool {
        self.markers >= self.next.len()
    }

    /// Accounts for one received payload.
    pub fn observe(&mut self, payload: &[u8]) {
        let (Some(seq), Some(index)) = (payload.get(0..8), payload.get(8)) else {
            return;
        };
        let seq = u64::from_le_bytes(seq.try_into().unwrap_or_default());
        if seq == MARKER {
            self.markers += 1;
            return;
        }
        let slot = *index as usize % self.next.len();
        let next = &mut self.next[slot];
        if seq != *next {
            self.out_of_order += 1;
        }
        *next = seq + 1;
        self.received += 1;
    }
}

/// (deliveries/s, lost, out of order) of a pub/sub run that started at `start`, from what the
/// publishers sent and what each subscriber saw (with the time it saw its last marker).
pub fn tally(start: Instant, sent: u64, seen: &[(SeqCheck, Instant)]) -> (f64, u64, u64) {
    let received: u64 = seen.iter().map(|(s, _)| s.received).sum();
    let out_of_order = seen.iter().map(|(s, _)| s.out_of_order).sum();
    let end = seen.iter().map(|(_, t)| *t).max().unwrap_or(start);
    let expected = sent * seen.len() as u64;
    (
        received as f64 / (end - start).as_secs_f64(),
        expected.saturating_sub(received),
        out_of_order,
    )
}
