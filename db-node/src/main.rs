//! `db-node`: command-line access to a database directory.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use db_node::coord::{self, MasterConfig};
use db_node::{Db, Durability, Options, Value};
use db_node::{IpcOptions, Role};
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "db-node", about = "Read, write and verify a db-node database")]
struct Cli {
    /// Database directory.
    #[arg(long, env = "DB_NODE_DB", global = true, default_value = ".")]
    db: PathBuf,
    /// Acknowledge writes without flushing them to disk.
    #[arg(long, env = "DB_NODE_NOSYNC", global = true)]
    nosync: bool,
    /// Post office URL (ws:// or wss://): join the database's group as a worker for this
    /// operation (or, for `master`, serve it).
    #[arg(long, env = "DB_NODE_IPC", global = true)]
    ipc: Option<String>,
    /// Access token of the post office.
    #[arg(long, env = "DB_NODE_IPC_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Namespace in the post office (default: the database directory's name).
    #[arg(long, env = "DB_NODE_IPC_NAMESPACE", global = true)]
    namespace: Option<String>,
    /// Deadline of each request to the master, in milliseconds.
    #[arg(
        long,
        env = "DB_NODE_IPC_TIMEOUT_MS",
        global = true,
        default_value_t = 5000
    )]
    ipc_timeout_ms: u64,
    /// Test hook: pause before each commit, in milliseconds.
    #[arg(
        long,
        env = "DB_NODE_TEST_PAUSE_BEFORE_COMMIT_MS",
        global = true,
        hide = true
    )]
    pause_before_commit_ms: Option<u64>,
    #[arg(
        long,
        env = "DB_NODE_TEST_PAUSE_AFTER_GRANT_MS",
        global = true,
        hide = true
    )]
    pause_after_grant_ms: Option<u64>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the value at PATH as JSON (null if absent).
    Get {
        path: String,
        /// Only these children (comma separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Replace the value at PATH with JSON (argument, or stdin when omitted).
    Set { path: String, json: Option<String> },
    /// Merge the JSON object's children into PATH (null children are removed).
    Update { path: String, json: Option<String> },
    /// Remove the subtree at PATH.
    Remove { path: String },
    /// List the children of PATH in key order, one JSON object per line.
    List {
        path: String,
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Verify every page and record; exits 1 when a problem is found.
    Check,
    /// Print figures about the database as JSON.
    Stats,
    /// Add BY to the integer at PATH, TIMES times, each in its own transaction (with `--ipc`,
    /// each under the master's lock); prints the last value (of the last thread to finish).
    Incr {
        path: String,
        #[arg(long, default_value_t = 1)]
        by: i64,
        #[arg(long, default_value_t = 1)]
        times: u64,
        /// Threads sharing the work (as the request handlers of a server would).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Write COUNT small values PREFIX/0 .. PREFIX/COUNT-1, each in its own transaction (with
    /// `--ipc`, each with its own lock from the master): a load generator.
    Fill {
        prefix: String,
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Threads sharing the work.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Print the commits of the group (`--ipc`) that change paths overlapping PATTERN (`*`
    /// matches one segment) as JSON lines: `{"txn","fence","changed"}`, `{"gap":{"from","to"}}`
    /// when commits were missed, `{"disconnected":true}` when the post office went away.
    /// With `--events KIND`: realtime events instead, one JSON line each:
    /// `{"seq","txn","event","path","child"?,"value","reread"?}`, `{"seq","missed":{"from","to"}}`,
    /// `{"seq","disconnected":true}`.
    Watch {
        pattern: String,
        /// value, child_added, child_changed or child_removed.
        #[arg(long)]
        events: Option<coord::events::EventKind>,
    },
    /// Serve the database's lock table to workers through the post office (`--ipc`). Exits 2
    /// if another master already serves the directory.
    Master {
        /// Longest lease granted to a worker, in milliseconds.
        #[arg(long, env = "DB_NODE_MAX_LEASE_MS", default_value_t = 30_000)]
        max_lease_ms: u64,
    },
}

/// Exit code of `master` when another master already serves the directory.
const EXIT_MASTER_RUNNING: i32 = 2;

fn run_master(cli: &Cli, max_lease_ms: u64) -> anyhow::Result<i32> {
    let Some(url) = cli.ipc.clone() else {
        bail!("master needs --ipc URL (or DB_NODE_IPC)");
    };
    let cfg = MasterConfig {
        dir: cli.db.clone(),
        url,
        token: cli.token.clone(),
        tls_ca_pem: None,
        namespace: cli.namespace.clone(),
        max_lease: Duration::from_millis(max_lease_ms.max(1)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let dir = cli.db.display().to_string();
    let result = rt.block_on(async move {
        let shutdown = async {
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            match term {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        let ready = |ns: &str| {
            println!(
                "db-node master ready: {dir} in namespace {ns} (pid {})",
                std::process::id()
            );
        };
        coord::run_master(cfg, ready, shutdown).await
    });
    match result {
        Ok(()) => Ok(0),
        Err(coord::MasterError::Files(e @ coord::files::FileLockError::MasterRunning { .. })) => {
            eprintln!("db-node: {e}");
            Ok(EXIT_MASTER_RUNNING)
        }
        Err(e) => Err(e.into()),
    }
}

fn input_text(arg: Option<String>) -> anyhow::Result<String> {
    Ok(match arg {
        Some(t) => t,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading stdin")?;
            s
        }
    })
}

fn input(arg: Option<String>) -> anyhow::Result<Value> {
    let text = input_text(arg)?;
    let j: serde_json::Value = serde_json::from_str(&text).context("parsing the JSON value")?;
    Ok(Value::from_json(&j))
}

/// A data command with `--ipc` joins the group as a worker (the master is `db-node master`).
fn ipc_config(cli: &Cli, url: &str) -> IpcOptions {
    let mut cfg = IpcOptions::new(url);
    cfg.role = Role::Worker;
    cfg.token = cli.token.clone();
    cfg.namespace = cli.namespace.clone();
    cfg.timeout = Duration::from_millis(cli.ipc_timeout_ms.max(1));
    cfg.pause_before_commit = cli.pause_before_commit_ms.map(Duration::from_millis);
    cfg.pause_after_grant = cli.pause_after_grant_ms.map(Duration::from_millis);
    cfg
}

/// One transactional increment of the integer at `path` (absent counts as 0).
fn increment(db: &Db, path: &str, by: i64) -> db_node::Result<i64> {
    let mut last = 0;
    db.transaction(path, |v| {
        let cur = match v {
            Value::Int(i) => i,
            _ => 0,
        };
        last = cur.wrapping_add(by);
        Some(Value::Int(last))
    })?;
    Ok(last)
}

/// Open the database: for this process alone, or (`--ipc`) as a worker of its group.
fn open_db(
    dir: &std::path::Path,
    ipc: Option<IpcOptions>,
    durability: Durability,
) -> anyhow::Result<Db> {
    Ok(Db::open(
        dir,
        Options {
            durability,
            ipc,
            ..Options::default()
        },
    )?)
}

fn run_incr(
    cli: &Cli,
    durability: Durability,
    path: &str,
    by: i64,
    times: u64,
    threads: usize,
) -> anyhow::Result<i32> {
    let db = open_db(
        &cli.db,
        cli.ipc.as_ref().map(|url| ipc_config(cli, url)),
        durability,
    )?;
    let last = std::sync::atomic::AtomicI64::new(0);
    spread(threads, times, |_| {
        let v = increment(&db, path, by)?;
        last.store(v, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    })?;
    println!("{}", last.into_inner());
    Ok(0)
}

/// Run operations `0..times` on `threads` threads (thread `t` runs `t`, `t + threads`, …);
/// the first error stops everything and is returned.
fn spread(
    threads: usize,
    times: u64,
    op: impl Fn(u64) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<()> {
    let threads = threads.clamp(1, 256) as u64;
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (op, failed) = (&op, &failed);
                scope.spawn(move || -> anyhow::Result<()> {
                    let mut i = t;
                    while i < times && !failed.load(std::sync::atomic::Ordering::Relaxed) {
                        if let Err(e) = op(i) {
                            failed.store(true, std::sync::atomic::Ordering::Relaxed);
                            return Err(e);
                        }
                        i += threads;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a worker thread panicked")))
            })
            .collect::<anyhow::Result<Vec<()>>>()
            .map(|_| ())
    })
}

fn run_fill(
    cli: &Cli,
    durability: Durability,
    prefix: &str,
    count: u64,
    threads: usize,
) -> anyhow::Result<i32> {
    let db = open_db(
        &cli.db,
        cli.ipc.as_ref().map(|url| ipc_config(cli, url)),
        durability,
    )?;
    spread(threads, count, |i| {
        db.set(&format!("{prefix}/{i}"), Value::Int(i as i64))?;
        Ok(())
    })?;
    println!("{count}");
    Ok(0)
}

/// Where `watch` connects: `--ipc` is required.
fn watch_config(cli: &Cli) -> anyhow::Result<coord::watch::WatchConfig> {
    let Some(url) = cli.ipc.clone() else {
        bail!("watch needs --ipc URL (or DB_NODE_IPC)");
    };
    Ok(coord::watch::WatchConfig {
        url,
        token: cli.token.clone(),
        tls_ca_pem: None,
        namespace: cli.namespace.clone(),
        timeout: Duration::from_millis(cli.ipc_timeout_ms.max(1)),
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn run_events(cli: &Cli, pattern: &str, kind: coord::events::EventKind) -> anyhow::Result<i32> {
    let cfg = watch_config(cli)?;
    let pattern = coord::events::Pattern::parse(pattern)?;
    let db = coord::realtime::open_reader(&cli.db, cfg.timeout)?;
    let rt = runtime()?;
    // printed from the subscription's own thread: no handoff between threads per event
    let text = pattern.as_str().to_owned();
    rt.block_on(coord::realtime::run(
        &db,
        cfg,
        pattern,
        kind,
        || eprintln!("db-node: watching {text} for {kind} events"),
        |r| {
            println!("{}", r.to_json());
            true
        },
    ))?;
    Ok(0)
}

fn run_watch(cli: &Cli, pattern: &str) -> anyhow::Result<i32> {
    let cfg = watch_config(cli)?;
    let rt = runtime()?;
    rt.block_on(coord::watch::watch(
        &cli.db,
        cfg,
        pattern,
        || eprintln!("db-node: watching {pattern}"),
        |w| {
            let line = match w {
                coord::watch::Watched::Commit(a) => {
                    serde_json::json!({"txn": a.txn, "fence": a.fence, "changed": a.changed})
                }
                coord::watch::Watched::Gap { from, to } => {
                    serde_json::json!({"gap": {"from": from, "to": to}})
                }
                coord::watch::Watched::Disconnected => serde_json::json!({"disconnected": true}),
            };
            println!("{line}");
            true
        },
    ))?;
    Ok(0)
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let durability = if cli.nosync {
        Durability::NoSync
    } else {
        Durability::Sync
    };
    match &cli.cmd {
        Cmd::Master { max_lease_ms } => return run_master(&cli, *max_lease_ms),
        Cmd::Incr {
            path,
            by,
            times,
            threads,
        } => return run_incr(&cli, durability, path, *by, *times, *threads),
        Cmd::Watch {
            pattern,
            events: Some(kind),
        } => return run_events(&cli, pattern, *kind),
        Cmd::Watch { pattern, .. } => return run_watch(&cli, pattern),
        Cmd::Fill {
            prefix,
            count,
            threads,
        } => return run_fill(&cli, durability, prefix, *count, *threads),
        _ => {}
    }
    let ipc = cli.ipc.as_ref().map(|url| ipc_config(&cli, url));
    // Read stdin before opening: no lock is held while waiting for input.
    let cmd = read_stdin_input(cli.cmd)?;
    data(&open_db(&cli.db, ipc, durability)?, cmd)
}

/// Read the JSON input of `set`/`update` from stdin now, before any lock is held.
fn read_stdin_input(cmd: Cmd) -> anyhow::Result<Cmd> {
    Ok(match cmd {
        Cmd::Set { path, json } => Cmd::Set {
            path,
            json: Some(input_text(json)?),
        },
        Cmd::Update { path, json } => Cmd::Update {
            path,
            json: Some(input_text(json)?),
        },
        c => c,
    })
}

/// Run one data command on an open database.
fn data(db: &Db, cmd: Cmd) -> anyhow::Result<i32> {
    let out = |j: serde_json::Value| println!("{j}");
    match cmd {
        Cmd::Get { path, only } => {
            let v = if only.is_empty() {
                db.get(&path)?
            } else {
                let only: Vec<&str> = only.iter().map(String::as_str).collect();
                db.get_children(&path, &only)?
            };
            out(v.to_json());
        }
        Cmd::Set { path, json } => {
            let info = db.set(&path, input(json)?)?;
            out(serde_json::json!({"txn": info.txn, "changed": info.changed}));
        }
        Cmd::Update { path, json } => {
            let v = input(json)?;
            if !matches!(v, Value::Object(_)) {
                bail!("update needs a JSON object");
            }
            let info = db.update(&path, v)?;
            out(serde_json::json!({"txn": info.txn, "changed": info.changed}));
        }
        Cmd::Remove { path } => {
            let info = db.remove(&path)?;
            out(serde_json::json!({"txn": info.txn, "changed": info.changed}));
        }
        Cmd::List { path, after, limit } => {
            for c in db.children(&path, after.as_deref(), limit)? {
                out(
                    serde_json::json!({"key": c.segment.to_string(), "kind": format!("{:?}", c.kind).to_lowercase()}),
                );
            }
        }
        Cmd::Check => {
            let r = db.check();
            out(serde_json::json!({
                "ok": r.ok(), "txn": r.txn, "pages": r.pages_checked,
                "records": r.records, "problems": r.problems,
            }));
            return Ok(if r.ok() { 0 } else { 1 });
        }
        Cmd::Stats => {
            let s = db.stats();
            out(serde_json::json!({
                "txn": s.txn, "records": s.records, "page_count": s.page_count,
                "used_pages": s.used_pages, "retired_pages": s.retired_pages,
                "file_bytes": s.file_bytes, "recovered": s.recovered, "redo_bytes": s.redo_bytes,
            }));
        }
        Cmd::Master { .. } | Cmd::Incr { .. } | Cmd::Watch { .. } | Cmd::Fill { .. } => {
            bail!("handled before opening the database")
        }
    }
    Ok(0)
}

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("db-node: {e:#}");
            std::process::exit(1);
        }
    }
}
