//! Commit-to-event latency of realtime events between two processes, through a real
//! `ipc-server` and a running `db-node master`:
//!
//! ```sh
//! ipc-server --port 9163 & db-node --db /tmp/lat --ipc ws://127.0.0.1:9163 master &
//! events_latency sub   ws://127.0.0.1:9163 /tmp/lat 2000 &   # prints p50/p99 at the end
//! events_latency write ws://127.0.0.1:9163 /tmp/lat 2000      # or write-obj
//! ```
//!
//! The writer sets `lat/<i % 10>` in a transaction whose closure runs in the commit step and
//! stores the wall clock (ns) at that moment; the subscriber (`value` events of `lat/*`)
//! subtracts it from the wall clock when the event reaches its receiver. `write-obj` writes
//! objects over objects instead of integers, so every value is read back from the file
//! (`reread`).

use db_node::coord::events::EventKind;
use db_node::coord::realtime::Received;
use db_node::{Db, Durability, IpcOptions, Options, Role, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, url, dir, n] = args.as_slice() else {
        return Err("usage: events_latency sub|write URL DIR COUNT".into());
    };
    let n: usize = n.parse()?;
    let mut ipc = IpcOptions::new(url.as_str());
    ipc.role = Role::Worker;
    let o = Options {
        durability: Durability::NoSync,
        ipc: Some(ipc),
        ..Options::default()
    };
    let db = Db::open(dir, o)?;
    if mode == "write" || mode == "write-obj" {
        for i in 0..n {
            // write-obj: an object that existed before, so the subscriber reads it back
            let v = |t: i64| match mode.as_str() {
                "write" => Value::Int(t),
                _ => Value::from(serde_json::json!({"t": t, "n": i})),
            };
            db.transaction(&format!("lat/{}", i % 10), |_| Some(v(now_ns())))?;
            std::thread::sleep(Duration::from_millis(1));
        }
        return Ok(());
    }
    let rx = db.on("lat/*", EventKind::Value)?;
    eprintln!("events_latency: subscribed");
    let mut lat = Vec::with_capacity(n);
    let (mut reread, mut markers) = (0, 0);
    while lat.len() < n {
        match rx.recv_timeout(Duration::from_secs(30))? {
            Received::Event(e) => {
                let t = match &e.value {
                    Value::Int(t) => Some(*t),
                    Value::Object(o) => match o.get("t") {
                        Some(Value::Int(t)) => Some(*t),
                        _ => None,
                    },
                    _ => None,
                };
                if let Some(t) = t {
                    lat.push(now_ns() - t);
                }
                reread += e.reread as usize;
            }
            _ => markers += 1,
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    println!(
        "commit->event over {n} events: p50 {:.1} us, p90 {:.1} us, p99 {:.1} us, max {:.1} us ({reread} reread, {markers} markers)",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
