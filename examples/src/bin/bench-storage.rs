//! Storage benchmark: small sets at new paths, updates, gets, transactional increments and the
//! file size after churn, in `nosync` and `sync` mode, beside the raw fsync rate of the disk.
//!
//! `cargo run --release -p examples --bin bench-storage [-- --json]`

use anyhow::Result;
use clap::Parser;
use db_node::{Db, Durability, Options, Value};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// One JSON object per line: {"figure":..,"value":..,"unit":..}.
    #[arg(long)]
    json: bool,
    /// Directory for the benchmark databases (a fresh temporary one by default).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds per timed figure in sync mode.
    #[arg(long, default_value_t = 2.0)]
    sync_secs: f64,
    /// Updates of the churn figure (nosync; sync mode stops after --sync-secs).
    #[arg(long, default_value_t = 1_000_000)]
    churn: u64,
}

struct Out {
    json: bool,
}

impl Out {
    fn fig(&self, figure: &str, value: f64, unit: &str) {
        if self.json {
            println!(
                "{}",
                serde_json::json!({"figure": figure, "value": value, "unit": unit})
            );
        } else {
            println!("{figure:<40} {value:>14.2} {unit}");
        }
    }
}

/// Run `op(i)` for `n` iterations or until `limit` elapses; returns operations per second.
fn rate(n: u64, limit: Duration, mut op: impl FnMut(u64) -> Result<()>) -> Result<(f64, u64)> {
    let t0 = Instant::now();
    let mut i = 0;
    while i < n {
        op(i)?;
        i += 1;
        if i % 64 == 0 && t0.elapsed() > limit {
            break;
        }
    }
    Ok((i as f64 / t0.elapsed().as_secs_f64(), i))
}

fn raw_fsync_rate(dir: &Path, secs: f64) -> Result<f64> {
    let path = dir.join("raw-fsync");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let buf = vec![0x5au8; 4096];
    f.write_all_at(&buf, 0)?;
    f.sync_all()?;
    let (r, _) = rate(u64::MAX, Duration::from_secs_f64(secs), |_| {
        f.write_all_at(&buf, 0)?;
        f.sync_data()?;
        Ok(())
    })?;
    std::fs::remove_file(path)?;
    Ok(r)
}

fn bench_mode(out: &Out, base: &Path, mode: Durability, args: &Args) -> Result<()> {
    let name = if mode == Durability::Sync {
        "sync"
    } else {
        "nosync"
    };
    let dir = base.join(name);
    let db = Db::open(
        &dir,
        Options {
            durability: mode,
            ..Options::default()
        },
    )?;
    let (n, limit) = match mode {
        Durability::NoSync => (300_000, Duration::from_secs(20)),
        Durability::Sync => (u64::MAX, Duration::from_secs_f64(args.sync_secs)),
    };
    let (sets, written) = rate(n, limit, |i| {
        db.set(&format!("bench/k{i:08}"), Value::Int(i as i64))?;
        Ok(())
    })?;
    out.fig(&format!("{name}: small sets at new paths"), sets, "sets/s");
    let keys = written.min(10_000);
    let (updates, _) = rate(n, limit, |i| {
        db.set(&format!("bench/k{:08}", i % keys), Value::Int(-(i as i64)))?;
        Ok(())
    })?;
    out.fig(&format!("{name}: updates"), updates, "updates/s");
    let (incs, _) = rate(n, limit, |_| {
        db.transaction("counter", |v| match v {
            Value::Int(c) => Some(Value::Int(c + 1)),
            _ => Some(Value::Int(1)),
        })?;
        Ok(())
    })?;
    out.fig(
        &format!("{name}: transactional increments"),
        incs,
        "increments/s",
    );
    if mode == Durability::NoSync {
        // paths formatted beforehand: the figure measures the database, not `format!`
        let paths: Vec<String> = (0..written)
            .map(|i| format!("bench/k{:08}", (i * 7919) % written))
            .collect();
        let (gets, _) = rate(2_000_000, Duration::from_secs(10), |i| {
            let v = db.get(&paths[(i % written) as usize])?;
            debug_assert!(!v.is_null());
            std::hint::black_box(v);
            Ok(())
        })?;
        out.fig("gets (one snapshot each)", gets, "gets/s");
    }
    drop(db);
    let churn_limit = match mode {
        Durability::NoSync => Duration::from_secs(120),
        Durability::Sync => limit,
    };
    churn(out, base, mode, name, args.churn, churn_limit)
}

/// Updates over a constant live set (1000 nodes of ~100 bytes) in a fresh database: the file
/// must stay at the live data plus a constant.
fn churn(
    out: &Out,
    base: &Path,
    mode: Durability,
    name: &str,
    n: u64,
    limit: Duration,
) -> Result<()> {
    let db = Db::open(
        base.join(format!("churn-{name}")),
        Options {
            durability: mode,
            ..Options::default()
        },
    )?;
    let live: u64 = 1000;
    db.write(|t| {
        for i in 0..live {
            t.set(&format!("churn/c{i:05}"), Value::String("v".repeat(100)))?;
        }
        Ok(())
    })?;
    let s0 = db.stats();
    let (churn_rate, done) = rate(n, limit, |i| {
        db.set(
            &format!("churn/c{:05}", i % live),
            Value::String(format!("{i:0100}")),
        )?;
        Ok(())
    })?;
    let check = db.check();
    anyhow::ensure!(check.ok(), "check failed after churn: {:?}", check.problems);
    let s1 = db.stats();
    out.fig(&format!("{name}: churn updates"), churn_rate, "updates/s");
    out.fig(
        &format!("{name}: churn update count"),
        done as f64,
        "updates",
    );
    out.fig(
        &format!("{name}: churn pages in use"),
        s1.used_pages as f64 * 4.0,
        "KiB",
    );
    out.fig(
        &format!("{name}: file size before churn"),
        s0.file_bytes as f64 / 1024.0,
        "KiB",
    );
    out.fig(
        &format!("{name}: file size after churn"),
        s1.file_bytes as f64 / 1024.0,
        "KiB",
    );
    Ok(())
}

/// Sync sets and raw fsyncs measured in alternating slices, so that both see the same disk.
fn sync_vs_raw(out: &Out, base: &Path, args: &Args) -> Result<()> {
    let db = Db::open(base.join("interleaved"), Options::default())?;
    let slice = args.sync_secs / 4.0;
    let (mut sets, mut raws) = (0.0, 0.0);
    let mut n = 0u64;
    for _ in 0..4 {
        raws += raw_fsync_rate(base, slice)?;
        let (r, done) = rate(u64::MAX, Duration::from_secs_f64(slice), |i| {
            db.set(&format!("inter/k{:08}", n + i), Value::Int(i as i64))?;
            Ok(())
        })?;
        n += done;
        sets += r;
    }
    out.fig(
        "interleaved: raw 4 KiB pwrite + fdatasync",
        raws / 4.0,
        "fsyncs/s",
    );
    out.fig("interleaved: sync small sets", sets / 4.0, "sets/s");
    out.fig("sync sets / raw fsync rate", sets / raws, "ratio");
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let out = Out { json: args.json };
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("bench-storage-{}", std::process::id())),
    };
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    let raw = raw_fsync_rate(&base, args.sync_secs)?;
    out.fig("raw 4 KiB pwrite + fdatasync", raw, "fsyncs/s");
    bench_mode(&out, &base, Durability::NoSync, &args)?;
    bench_mode(&out, &base, Durability::Sync, &args)?;
    sync_vs_raw(&out, &base, &args)?;
    if args.dir.is_none() {
        std::fs::remove_dir_all(&base)?;
    }
    Ok(())
}
