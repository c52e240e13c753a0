//! Test support for coordination tests: the real `ipc-server` binary on a free loopback port,
//! `db-node` processes (masters and workers) that are killed when dropped, and reading their
//! output with deadlines (nothing waits forever).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const DB_NODE: &str = env!("CARGO_BIN_EXE_db-node");

/// The `ipc-server` binary: `$IPC_SERVER_BIN`, else next to this test's target profile
/// directory (where `cargo test --workspace` puts it), else built once into a private target
/// directory (for `cargo test -p db-node`, without touching the build directory cargo holds).
pub fn ipc_server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("IPC_SERVER_BIN") {
            return PathBuf::from(p);
        }
        // <target>/<profile>/deps/<test exe>
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target profile directory")
            .to_path_buf();
        let beside = profile_dir.join("ipc-server");
        if beside.exists() {
            return beside;
        }
        let private = profile_dir.join("coord-test-ipc-server");
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "ipc-server", "--bin", "ipc-server"])
            .env("CARGO_TARGET_DIR", &private)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo to build ipc-server");
        assert!(status.success(), "building ipc-server failed");
        private.join("debug").join("ipc-server")
    })
    .clone()
}

/// Lines of a child's stream, forwarded by a thread.
pub struct Lines(Receiver<String>);

impl Lines {
    pub fn of(r: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(rx)
    }

    /// The first line containing `needle`, within `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            match self.0.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Everything until the stream ends (at most `timeout`).
    pub fn rest(&self, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        let mut out = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.0.recv_timeout(left) {
                Ok(l) => out.push(l),
                Err(_) => break,
            }
        }
        out.join("\n")
    }

    /// Everything received so far.
    pub fn drain(&self) -> String {
        self.0.try_iter().collect::<Vec<_>>().join("\n")
    }
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = Lines::of(child.stdout.take().expect("stdout"));
        let stderr = Lines::of(child.stderr.take().expect("stderr"));
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status, if the process ends within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `ipc-server` on a free loopback port.
pub struct Server {
    pub proc: Proc,
    pub url: String,
}

impl Server {
    pub fn start() -> Server {
        Self::start_on(0).expect("ipc-server printed its listening line")
    }

    fn start_on(port: u16) -> Option<Server> {
        let port = port.to_string();
        let mut proc = Proc::spawn(
            Command::new(ipc_server_bin())
                .args(["--port", &port, "--host", "127.0.0.1"])
                .env("RUST_LOG", "warn"),
        );
        let Some(line) = proc
            .stdout
            .wait_for("listening on", Duration::from_secs(20))
        else {
            proc.kill();
            return None;
        };
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("ws://"))
            .expect("url in the listening line")
            .to_owned();
        Some(Server { proc, url })
    }

    /// SIGKILL the server and start it again on the same port (retrying while the port is
    /// not free yet).
    pub fn restart(&mut self) {
        self.proc.kill();
        let port: u16 = self
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in the url");
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = Self::start_on(port) {
                *self = s;
                return;
            }
            assert!(
                Instant::now() < end,
                "could not restart ipc-server on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A fresh database directory under the system temp dir.
pub fn temp_db(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "dbnode-coord-{}-{name}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp db dir");
    d
}

/// `db-node --db DIR --ipc URL ARGS…` as a command.
pub fn db_node(dir: &Path, url: &str, args: &[&str]) -> Command {
    let mut c = Command::new(DB_NODE);
    c.arg("--db").arg(dir).arg("--ipc").arg(url).args(args);
    c
}

/// Start a master and wait until it serves.
pub fn master(dir: &Path, url: &str) -> Proc {
    let p = Proc::spawn(&mut db_node(dir, url, &["master"]));
    if p.stdout
        .wait_for("ready", Duration::from_secs(15))
        .is_none()
    {
        panic!("master did not get ready: {}", p.stderr.drain());
    }
    p
}

/// Run a db-node command to completion (bounded), returning (success, stdout, stderr).
pub fn run(cmd: &mut Command, timeout: Duration) -> (bool, String, String) {
    let mut p = Proc::spawn(cmd);
    let status = p.wait_exit(timeout);
    let out = p.stdout.rest(Duration::from_secs(2));
    let err = p.stderr.rest(Duration::from_secs(2));
    match status {
        Some(s) => (s.success(), out, err),
        None => panic!("command did not finish within {timeout:?}: {err}"),
    }
}

/// A member of the group in this process (nosync), opened with the IPC options `tweak` sets
/// (the role is `Worker` unless it says otherwise).
#[allow(dead_code)]
pub fn member_with(
    dir: &Path,
    url: &str,
    tweak: impl FnOnce(&mut db_node::IpcOptions),
) -> db_node::Result<db_node::Db> {
    let mut ipc = db_node::IpcOptions::new(url);
    ipc.role = db_node::Role::Worker;
    tweak(&mut ipc);
    db_node::Db::open(
        dir,
        db_node::Options {
            durability: db_node::Durability::NoSync,
            ipc: Some(ipc),
            ..db_node::Options::default()
        },
    )
}

/// Writes 20 keys through `a`, takes a snapshot, and has `b` rewrite every key 30 times while
/// the snapshot lives: every commit retires pages the snapshot reads, and none of them may be
/// handed out again before it is dropped, so the snapshot must read its values every round.
/// Afterwards the space is reused and both see the newest values, and the file checks clean.
/// Returns how long the 30 rounds took.
pub fn snapshot_outlives_rewrites(a: &db_node::Db, b: &db_node::Db) -> Duration {
    let blob = |i: i64| db_node::Value::from(format!("{i}-{}", "x".repeat(3000)));
    for k in 0..20 {
        a.set(&format!("k/{k}"), blob(0)).expect("set");
    }
    let snap = a.snapshot().expect("snapshot");
    let rounds = Instant::now();
    for round in 1..=30 {
        for k in 0..20 {
            b.set(&format!("k/{k}"), blob(round))
                .expect("a commit while a snapshot lives");
        }
        for k in 0..20 {
            assert_eq!(snap.get(&format!("k/{k}")).expect("get"), blob(0));
        }
    }
    let took = rounds.elapsed();
    drop(snap);
    for k in 0..20 {
        b.set(&format!("k/{k}"), blob(99)).expect("set");
    }
    assert_eq!(a.get("k/7").expect("get"), blob(99));
    let report = a.check();
    assert!(report.ok(), "{:?}", report.problems);
    took
}
