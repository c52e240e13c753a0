//! Running a post-office task (the master, a watch, an events subscription) on a thread of its
//! own with a single-threaded runtime, so that plain threads can start it and wait until it
//! is in effect, with a deadline.

use std::future::Future;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Handed to the task: call [`Ready::signal`] once it is in effect.
pub(crate) struct Ready<E>(mpsc::Sender<Result<(), E>>);

impl<E> Ready<E> {
    pub(crate) fn signal(self) {
        let _ = self.0.send(Ok(()));
    }
}

/// How the start went.
pub(crate) enum Started<E> {
    Ready,
    /// The task (or its runtime) failed before it was ready.
    Failed(E),
    /// Neither within the wait.
    TimedOut,
}

/// Start `task` on thread `name`, and wait at most `wait` until it signals ready or fails.
/// `runtime_error` turns a failure to build the runtime into the task's error type. The
/// thread runs until the task ends.
pub(crate) fn start<E, F, Fut>(
    name: &str,
    wait: Duration,
    runtime_error: impl FnOnce(std::io::Error) -> E + Send + 'static,
    task: F,
) -> std::io::Result<(JoinHandle<()>, Started<E>)>
where
    E: Send + 'static,
    F: FnOnce(Ready<E>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>>,
{
    let (tx, rx) = mpsc::channel::<Result<(), E>>();
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(runtime_error(e)));
                    return;
                }
            };
            if let Err(e) = rt.block_on(task(Ready(tx.clone()))) {
                let _ = tx.send(Err(e));
            }
        })?;
    let started = match rx.recv_timeout(wait) {
        Ok(Ok(())) => Started::Ready,
        Ok(Err(e)) => Started::Failed(e),
        Err(_) => Started::TimedOut,
    };
    Ok((thread, started))
}

/// [`start`] for a subscription to the post office (a watch, the events feed): its thread is
/// called `name`, it has the post-office `timeout` plus a second to be in effect, and every
/// failure is `MasterUnavailable`: "cannot start `thread` thread: …" when the thread cannot
/// start, "`verb`: …" when the subscription fails or is not in effect in time.
pub(crate) fn start_subscription<F, Fut>(
    name: &str,
    thread: &str,
    verb: &str,
    timeout: Duration,
    task: F,
) -> crate::error::Result<()>
where
    F: FnOnce(Ready<String>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>>,
{
    use crate::error::Error::MasterUnavailable;
    let (_, started) = start(
        name,
        timeout + Duration::from_secs(1),
        |e| e.to_string(),
        task,
    )
    .map_err(|e| MasterUnavailable(format!("cannot start {thread} thread: {e}")))?;
    match started {
        Started::Ready => Ok(()),
        Started::Failed(e) => Err(MasterUnavailable(format!("{verb}: {e}"))),
        Started::TimedOut => Err(MasterUnavailable(format!(
            "{verb}: no subscription in time"
        ))),
    }
}
