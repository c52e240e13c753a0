//! Watching a database from any process: subscribe to the commit announcements of its group
//! and report those that concern a path pattern.
//!
//! What is reported today is the announcement itself (transaction id, fence, changed paths),
//! in commit order (see [`super::order`]), plus a `gap` whenever transaction ids are missing,
//! so a watcher knows it missed commits (e.g. while its post-office connection was down) and
//! must read the current state again.
//! Value-level events (`value`, `child_added`, …) are in [`super::realtime`].

use super::announce::{concerns, Announcement, COMMITS_SUBJECT};
use super::files::namespace_for;
use super::order::{InOrder, Step};
use ipc_client::{Client, ClientError, ClientOptions, Event, Events};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long an announcement that overtook an earlier one waits for it.
pub const REORDER_WAIT: Duration = Duration::from_millis(30);

pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Hand out ordered announcements that concern `pattern`; false when `out` wants no more.
fn emit(
    steps: Vec<Step<Announcement>>,
    pattern: &str,
    out: &mut impl FnMut(Watched) -> bool,
) -> bool {
    for step in steps {
        let keep = match step {
            Step::Gap { from, to } => out(Watched::Gap { from, to }),
            Step::Item(_, mut a) => {
                a.changed.retain(|c| concerns(pattern, c));
                a.changed.is_empty() || out(Watched::Commit(a))
            }
        };
        if !keep {
            return false;
        }
    }
    true
}

/// What a watcher reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watched {
    /// A commit that changed paths overlapping the pattern (`changed` is filtered to those).
    Commit(Announcement),
    /// Commits `from..=to` were not seen.
    Gap { from: u64, to: u64 },
    /// The post-office connection was lost (watching resumes when it comes back).
    Disconnected,
}

/// Where a watcher connects.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    pub url: String,
    pub token: Option<String>,
    /// Extra trusted CA certificates (PEM) for `wss://`.
    pub tls_ca_pem: Option<Vec<u8>>,
    pub namespace: Option<String>,
    pub timeout: Duration,
}

/// Join the namespace of the database in `dir` as peer `<prefix>-<pid>-<random>` and
/// subscribe to its commit announcements.
pub(crate) async fn subscribe_commits(
    dir: &Path,
    cfg: WatchConfig,
    prefix: &str,
) -> Result<(Client, Events), ClientError> {
    let ns = cfg.namespace.clone().unwrap_or_else(|| namespace_for(dir));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let id = format!("{prefix}-{}-{nanos:x}", std::process::id());
    let mut opts = ClientOptions::new(cfg.url, ns, id).request_timeout(cfg.timeout);
    opts.token = cfg.token;
    opts.tls_ca_pem = cfg.tls_ca_pem;
    let (client, events) = Client::connect(opts).await?;
    client.subscribe(COMMITS_SUBJECT).await?;
    Ok((client, events))
}

/// Watch commits of the database in `dir` that concern `pattern` until `out` returns false or
/// the client closes. `ready` is called once the subscription is in effect.
pub async fn watch(
    dir: &Path,
    cfg: WatchConfig,
    pattern: &str,
    ready: impl FnOnce(),
    mut out: impl FnMut(Watched) -> bool,
) -> Result<(), ClientError> {
    let (client, mut events) = subscribe_commits(dir, cfg, "watch").await?;
    ready();
    let mut order = InOrder::new(REORDER_WAIT);
    loop {
        let deadline = order.deadline();
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = sleep_until(deadline) => {
                if !emit(order.expire(Instant::now()), pattern, &mut out) {
                    break;
                }
                continue;
            }
        };
        let Some(ev) = ev else { break };
        let keep = match ev {
            Event::Published {
                subject, payload, ..
            } if subject == COMMITS_SUBJECT => match Announcement::decode(&payload) {
                Ok(a) => emit(order.push(a.txn, a, Instant::now()), pattern, &mut out),
                Err(_) => true,
            },
            Event::Disconnected { .. } => out(Watched::Disconnected),
            _ => true,
        };
        if !keep {
            break;
        }
    }
    client.close().await;
    Ok(())
}
