//! Under a real pm2 (7.x, installed by `.ci/run`): `ipc-server` is started with `wait_ready`
//! and reports ready through pm2's channel, `ipc-peer` instances join with the pm2-derived ids
//! `worker-0` and `worker-1`, and a `pm2 restart` (SIGINT) is a clean, quick restart after
//! which the peers are back by themselves and requests work again.

mod common;
use common::*;
use ipc_client::{Client, ClientOptions};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A pm2 daemon with its own home directory, killed on drop.
struct Pm2 {
    home: PathBuf,
}

impl Pm2 {
    fn available() -> bool {
        let ok = Command::new("pm2")
            .arg("--version")
            .env("PM2_HOME", std::env::temp_dir().join("pm2-probe"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok && std::env::var_os("CI").is_some() {
            panic!("pm2 is not installed (npm install -g pm2, as .ci/run does)");
        }
        if !ok {
            eprintln!("SKIPPED: pm2 is not installed");
        }
        ok
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("pm2")
            .args(args)
            .env("PM2_HOME", &self.home)
            .output()
            .expect("run pm2")
    }
}

impl Drop for Pm2 {
    fn drop(&mut self) {
        let _ = self.run(&["kill"]);
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

async fn peer_ids(port: u16) -> Vec<String> {
    let (status, body) = http_get(port, "/ipc/v1/demo/peers", &[]).await;
    if status != 200 {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let mut ids: Vec<String> = v["peers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

async fn wait_for_workers(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while peer_ids(port).await != ["worker-0", "worker-1"] {
        assert!(
            Instant::now() < deadline,
            "workers not joined; peers: {:?}",
            peer_ids(port).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pm2_wait_ready_zero_config_ids_and_a_clean_restart() {
    if !Pm2::available() {
        return;
    }
    let home = std::env::temp_dir().join(format!(
        "pm2-test-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&home).expect("pm2 home");
    let pm2 = Pm2 { home: home.clone() };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("ws://127.0.0.1:{port}");
    let config = serde_json::json!({ "apps": [
        {
            "name": "ipc-server", "script": SERVER, "interpreter": "none", "exec_mode": "fork",
            // Without the ready message pm2 would wait this long before calling it online.
            "wait_ready": true, "listen_timeout": 20000, "kill_timeout": 1600, "autorestart": true,
            "env": { "IPC_PORT": port.to_string(), "IPC_HOST": "127.0.0.1", "RUST_LOG": "warn" }
        },
        {
            "name": "worker", "script": PEER, "interpreter": "none", "exec_mode": "fork", "instances": 2,
            "args": "--namespace demo --subscribe jobs.> --echo",
            "env": { "IPC_URL": url }
        }
    ]});
    let file = home.join("ecosystem.json");
    std::fs::write(&file, config.to_string()).expect("write config");

    let started = Instant::now();
    let out = pm2.run(&["start", &file.display().to_string()]);
    assert!(
        out.status.success(),
        "pm2 start failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "pm2 waited {:?}: the ready message did not arrive",
        started.elapsed()
    );
    wait_for_workers(port, Duration::from_secs(15)).await;

    // pm2 counts a restart within its min_uptime (1 s) as unstable: run a little first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // pm2 restart sends SIGINT and would SIGKILL after 1.6 s: the server must be gone before.
    let restarted = Instant::now();
    let out = pm2.run(&["restart", "ipc-server"]);
    assert!(
        out.status.success(),
        "pm2 restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(restarted.elapsed() < Duration::from_secs(10));
    wait_for_workers(port, Duration::from_secs(10)).await;
    let log = std::fs::read_to_string(home.join("pm2.log")).unwrap_or_default();
    assert!(
        !log.contains("SIGKILL") && !log.to_lowercase().contains("error"),
        "pm2 log:\n{log}"
    );
    let list = pm2.run(&["jlist"]);
    let apps: serde_json::Value = serde_json::from_slice(&list.stdout).expect("pm2 jlist is JSON");
    for app in apps.as_array().expect("list") {
        assert_eq!(app["pm2_env"]["status"], "online", "{app}");
        assert_eq!(app["pm2_env"]["unstable_restarts"], 0, "{app}");
        if app["name"] == "ipc-server" {
            assert_eq!(app["pm2_env"]["restart_time"], 1);
            assert_eq!(
                app["pm2_env"]["exit_code"], 0,
                "SIGINT must end in a clean exit"
            );
        }
    }

    // The pool answers requests after the restart.
    let (client, _events) = Client::connect(ClientOptions::new(&url, "demo", "tester"))
        .await
        .expect("connect");
    let reply = client
        .request_subject("jobs.resize", b"hello", Some(Duration::from_secs(5)))
        .await
        .expect("a worker answers");
    assert_eq!(&reply[..], b"hello");
}
