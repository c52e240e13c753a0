//! Drop-in compatibility with real, unmodified AceBase 1.29 processes (npm `acebase`, pinned in
//! `tests/acebase/package.json`; `.ci/run` installs it). Each test starts `ipc-server` and real
//! `node` processes running AceBase with `storage.ipc = { host, port, token, role }`.
//!
//! AceBase 1.29's own client has two known faults that these tests name and ignore, and only
//! them: it prints every IPC message it receives on stdout, and its process 'exit' handler calls
//! `ws.close(2)`, which throws "TypeError: First argument must be a valid error code number".

mod common;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const KNOWN_EXIT_BUG: &str = "First argument must be a valid error code number";

/// The prepared test directory, or `None` (with a message) outside CI when npm was not run.
fn acebase_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/acebase");
    if dir.join("node_modules/acebase").is_dir() {
        return Some(dir);
    }
    let hint = format!("run `npm ci` in {} (as .ci/run does)", dir.display());
    if std::env::var_os("CI").is_some() {
        panic!("AceBase is not installed: {hint}");
    }
    eprintln!("SKIPPED: AceBase is not installed; {hint}");
    None
}

/// One AceBase process.
struct Node {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
    results: mpsc::Receiver<Value>,
    name: String,
}

impl Node {
    fn spawn(dir: &PathBuf, name: &str, args: &[&str]) -> Node {
        let mut child = Command::new("node")
            .arg("peer.js")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, results) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for (stream, tx) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, Some(tx)),
            (Box::new(stderr), None),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let (Some(json), Some(tx)) = (line.strip_prefix("@@RESULT "), &tx) {
                        if let Ok(v) = serde_json::from_str(json) {
                            let _ = tx.send(v);
                        }
                    }
                    if let Ok(mut o) = output.lock() {
                        o.push(line);
                    }
                }
            });
        }
        Node {
            child,
            output,
            results,
            name: name.to_owned(),
        }
    }

    /// Waits for a result line with this `event`.
    fn wait(&self, event: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.results.recv_timeout(left) {
                Ok(v) if v["event"] == event => return v,
                Ok(_) => {}
                Err(_) => panic!(
                    "{}: no {event:?} within {timeout:?}; output:\n{}",
                    self.name,
                    self.dump()
                ),
            }
        }
    }

    fn command(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write command");
    }

    fn exit_status(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit; output:\n{}",
                self.name,
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn dump(&self) -> String {
        self.output.lock().map(|o| o.join("\n")).unwrap_or_default()
    }

    /// Fails on any error in the output other than AceBase's known exit bug.
    fn assert_clean(&self) {
        let output = self.output.lock().expect("output").clone();
        let mut in_known_trace = false;
        for line in &output {
            if line.contains(KNOWN_EXIT_BUG) {
                in_known_trace = true;
                continue;
            }
            if in_known_trace && line.trim_start().starts_with("at ") {
                continue;
            }
            in_known_trace = false;
            let bad = line
                .to_lowercase()
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(alarm_word);
            assert!(
                !bad,
                "{}: unexpected line {line:?}\nfull output:\n{}",
                self.name,
                output.join("\n")
            );
        }
    }
}

/// Whether a word of output signals a problem (`Error`, `TypeError`, `errors`, `WARN`,
/// `warning`, `Exception`, `fatal`, `unhandled`). Words are matched whole, and words with
/// digits are skipped: AceBase prints its generated message ids (e.g. `…dvuwarn0u`), whose
/// letters can spell anything.
fn alarm_word(word: &str) -> bool {
    if word.is_empty() || word.bytes().any(|b| b.is_ascii_digit()) {
        return false;
    }
    word.starts_with("error")
        || word.ends_with("error")
        || word.ends_with("errors")
        || word.contains("exception")
        || word.starts_with("warn")
        || word == "fatal"
        || word == "unhandled"
}

#[test]
fn alarm_words_are_whole_words() {
    let bad = |line: &str| {
        line.to_lowercase()
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(alarm_word)
    };
    assert!(bad("TypeError: boom"));
    assert!(bad("[WARN] lock taking long"));
    assert!(bad("Unhandled promise rejection"));
    assert!(bad("2 errors"));
    assert!(!bad(
        r#"{"type":"unlock-request","id":"mwtkj3nh057lm67dvuwarn0u"}"#
    ));
    assert!(!bad(r#"{"type":"lock-result","ok":true}"#));
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn db_dir(tag: &str) -> tempdir::Dir {
    tempdir::Dir::new(tag)
}

mod tempdir {
    /// A temporary directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let path = std::env::temp_dir().join(format!(
                "acebase-{tag}-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&path).expect("temp dir");
            Dir(path)
        }
        pub fn arg(&self) -> String {
            self.0.display().to_string()
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `GET /<db>/clients` until it lists `n` peers.
async fn wait_clients(server: &ServerProc, token: &str, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) =
            http_get(server.port, &format!("/compat_data/clients?t={token}"), &[]).await;
        if status == 200
            && serde_json::from_str::<Vec<String>>(&body)
                .map(|v| v.len())
                .unwrap_or(0)
                == n
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} AceBase peers, last answer {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_and_two_workers_write_and_a_fresh_process_reads_everything() {
    let Some(dir) = acebase_dir() else { return };
    let server = ServerProc::start(&["--token", "s3cret"]);
    let port = server.port.to_string();
    let data = db_dir("rw");
    let master = Node::spawn(
        &dir,
        "master",
        &["master", "serve", &data.arg(), &port, "s3cret"],
    );
    master.wait("ready", Duration::from_secs(30));
    let mut w1 = Node::spawn(
        &dir,
        "worker-1",
        &["worker", "write", &data.arg(), &port, "s3cret", "w1", "500"],
    );
    let mut w2 = Node::spawn(
        &dir,
        "worker-2",
        &["worker", "write", &data.arg(), &port, "s3cret", "w2", "500"],
    );
    for w in [&mut w1, &mut w2] {
        w.wait("done", Duration::from_secs(240));
        assert!(
            w.exit_status(Duration::from_secs(10)).success(),
            "{} failed:\n{}",
            w.name,
            w.dump()
        );
    }
    let mut reader = Node::spawn(
        &dir,
        "reader",
        &["worker", "read", &data.arg(), &port, "s3cret"],
    );
    let read = reader.wait("read", Duration::from_secs(60));
    assert!(reader.exit_status(Duration::from_secs(10)).success());
    assert_eq!(read["records"], 1000, "every record present");
    assert_eq!(read["counter"], 1000, "no lost increments");
    for node in [&master, &w1, &w2, &reader] {
        node.assert_clean();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_events_reach_a_subscriber_in_another_worker() {
    let Some(dir) = acebase_dir() else { return };
    let server = ServerProc::start(&[]);
    let port = server.port.to_string();
    let data = db_dir("events");
    let master = Node::spawn(&dir, "master", &["master", "serve", &data.arg(), &port, ""]);
    master.wait("ready", Duration::from_secs(30));
    let mut writer = Node::spawn(
        &dir,
        "writer",
        &["worker", "commands", &data.arg(), &port, ""],
    );
    writer.wait("ready", Duration::from_secs(30));
    let subscriber = Node::spawn(
        &dir,
        "subscriber",
        &["worker", "subscribe", &data.arg(), &port, ""],
    );
    subscriber.wait("subscribed", Duration::from_secs(30));
    // AceBase announces the subscription to the other peers with a broadcast; let it land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for v in 1..=5 {
        writer.command(&format!("set {v}"));
        writer.wait("set", Duration::from_secs(10));
    }
    for v in 1..=5 {
        let e = subscriber.wait("value", Duration::from_secs(10));
        assert_eq!(e["v"], v, "value events in commit order");
    }
    for node in [&master, &writer, &subscriber] {
        node.assert_clean();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_and_the_others_keep_working() {
    let Some(dir) = acebase_dir() else { return };
    let server = ServerProc::start(&["--token", "right"]);
    let port = server.port.to_string();
    let data = db_dir("token");
    let master = Node::spawn(
        &dir,
        "master",
        &["master", "serve", &data.arg(), &port, "right"],
    );
    master.wait("ready", Duration::from_secs(30));
    let intruder = Node::spawn(
        &dir,
        "intruder",
        &["worker", "read", &data.arg(), &port, "wrong"],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !intruder.dump().contains("unauthorized") {
        assert!(
            Instant::now() < deadline,
            "the intruder was not refused:\n{}",
            intruder.dump()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        intruder.results.try_iter().all(|v| v["event"] != "read"),
        "the intruder must not read"
    );
    drop(intruder);
    let (status, _) = http_get(server.port, "/compat_data/clients?t=wrong", &[]).await;
    assert_eq!(status, 403, "the peer list needs the token");
    let mut worker = Node::spawn(
        &dir,
        "worker",
        &["worker", "write", &data.arg(), &port, "right", "ok", "5"],
    );
    worker.wait("done", Duration::from_secs(60));
    assert!(worker.exit_status(Duration::from_secs(10)).success());
    master.assert_clean();
    worker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_peers_reconnect_after_a_server_restart_and_keep_working() {
    let Some(dir) = acebase_dir() else { return };
    let mut server = ServerProc::start(&["--token", "t0ken"]);
    let port = server.port.to_string();
    let data = db_dir("restart");
    let master = Node::spawn(
        &dir,
        "master",
        &["master", "serve", &data.arg(), &port, "t0ken"],
    );
    master.wait("ready", Duration::from_secs(30));
    let mut writer = Node::spawn(
        &dir,
        "writer",
        &["worker", "commands", &data.arg(), &port, "t0ken"],
    );
    writer.wait("ready", Duration::from_secs(30));
    let subscriber = Node::spawn(
        &dir,
        "subscriber",
        &["worker", "subscribe", &data.arg(), &port, "t0ken"],
    );
    subscriber.wait("subscribed", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(500)).await;
    writer.command("set 1");
    writer.wait("set", Duration::from_secs(10));
    assert_eq!(subscriber.wait("value", Duration::from_secs(10))["v"], 1);

    server.restart();
    wait_clients(&server, "t0ken", 3, Duration::from_secs(15)).await;
    writer.command("set 2");
    writer.wait("set", Duration::from_secs(20));
    assert_eq!(subscriber.wait("value", Duration::from_secs(20))["v"], 2);
}
