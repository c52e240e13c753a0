//! `db-node`: command-line access to a database directory.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use db_node::{Db, Durability, Options, Value};
use std::io::Read;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "db-node", about = "Read, write and verify a db-node database")]
struct Cli {
    /// Database directory.
    #[arg(long, env = "DB_NODE_DB", global = true, default_value = ".")]
    db: PathBuf,
    /// Acknowledge writes without flushing them to disk.
    #[arg(long, env = "DB_NODE_NOSYNC", global = true)]
    nosync: bool,
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
}

fn input(arg: Option<String>) -> anyhow::Result<Value> {
    let text = match arg {
        Some(t) => t,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading stdin")?;
            s
        }
    };
    let j: serde_json::Value = serde_json::from_str(&text).context("parsing the JSON value")?;
    Ok(Value::from_json(&j))
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let options = Options {
        durability: if cli.nosync {
            Durability::NoSync
        } else {
            Durability::Sync
        },
        ..Options::default()
    };
    let db = Db::open(&cli.db, options)?;
    let out = |j: serde_json::Value| println!("{j}");
    match cli.cmd {
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
