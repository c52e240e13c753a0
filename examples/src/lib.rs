//! Shared pieces of the benchmark binaries: printing figures (text or JSON lines), starting
//! release builds of our binaries as child processes, and small statistics helpers.

pub mod bare_relay;
pub mod nats;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
