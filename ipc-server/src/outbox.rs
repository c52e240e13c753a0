//! The outbound queue of one peer: what the router has decided to deliver to it and its writer
//! task has not yet written to the socket.
//!
//! It is bounded by bytes, not by message count, so memory stays bounded whatever the mix of
//! sizes. When it is full a sender *waits* for space (flow control: the sender's own socket stops
//! being read, so TCP slows the sending process down). Only a consumer that makes no progress
//! for the whole slow-consumer timeout is declared slow and disconnected; a consumer that is
//! merely slower than its senders throttles them instead of being dropped.
//!
//! The writer takes everything queued in one step ([`Outbox::next_batch`]) and writes it with a
//! single flush, so one syscall carries many frames under load.

use crate::wire::WireFrame;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::time::Instant;
use tokio::sync::Notify;

/// Why an outbox was closed; the writer turns it into a websocket close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub leave: protocol::LeaveReason,
    pub code: u16,
    pub text: String,
}

/// Outcome of a push.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The outbox is closed (the peer is leaving); the message is dropped.
    Closed,
    /// No space freed up before the deadline.
    TimedOut,
}

struct Inner {
    queue: VecDeque<WireFrame>,
    /// Bytes queued plus bytes taken by the writer and not yet flushed.
    bytes: usize,
    closed: Option<CloseReason>,
    /// The writer found the queue empty and waits to be woken.
    writer_parked: bool,
    /// Senders waiting for space.
    senders_waiting: usize,
}

/// See the module documentation.
pub struct Outbox {
    inner: Mutex<Inner>,
    /// Wakes the parked writer.
    writer_wake: Notify,
    /// Wakes senders waiting for space, or for the close.
    space: Notify,
    /// Wakes whoever waits in [`Outbox::closed`].
    closing: Notify,
    limit: usize,
}

/// Bytes a message occupies for accounting: its payload plus a fixed overhead.
pub fn weight(message: &WireFrame) -> usize {
    message.len() + 64
}

impl Outbox {
    /// An outbox that holds at most `limit` bytes (a single message larger than the limit is
    /// still accepted when the outbox is empty, so the limit only needs to exceed the overhead).
    pub fn new(limit: usize) -> Self {
        Outbox {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                bytes: 0,
                closed: None,
                writer_parked: false,
                senders_waiting: 0,
            }),
            writer_wake: Notify::new(),
            space: Notify::new(),
            closing: Notify::new(),
            limit,
        }
    }

    /// Queues `message` under the lock if there is room; says whether the writer must be woken.
    fn push_locked(
        &self,
        inner: &mut Inner,
        message: WireFrame,
    ) -> Result<bool, (WireFrame, PushError)> {
        if inner.closed.is_some() {
            return Err((message, PushError::Closed));
        }
        let w = weight(&message);
        if inner.bytes > 0 && inner.bytes + w > self.limit {
            return Err((message, PushError::TimedOut));
        }
        inner.bytes += w;
        inner.queue.push_back(message);
        Ok(std::mem::take(&mut inner.writer_parked))
    }

    /// Queues `message` if there is room; gives it back if there is not.
    pub fn try_push(&self, message: WireFrame) -> Result<(), (WireFrame, PushError)> {
        let wake = self.push_locked(&mut self.inner.lock(), message)?;
        if wake {
            self.writer_wake.notify_one();
        }
        Ok(())
    }

    /// Queues a control message (welcome, membership event, error, pong) without waiting: these
    /// are small and must not block the router. If they push the queue past twice its limit the
    /// consumer is hopelessly behind and the outbox is closed as a slow consumer.
    pub fn push_control(&self, message: WireFrame) {
        let w = weight(&message);
        let mut inner = self.inner.lock();
        if inner.closed.is_some() {
            return;
        }
        if inner.bytes + w > self.limit.saturating_mul(2) {
            drop(inner);
            let detail = format!("queue passed {} bytes", self.limit.saturating_mul(2));
            self.close(slow_consumer_reason(&detail));
            return;
        }
        inner.bytes += w;
        inner.queue.push_back(message);
        let wake = std::mem::take(&mut inner.writer_parked);
        drop(inner);
        if wake {
            self.writer_wake.notify_one();
        }
    }

    /// Queues `message`, waiting for space until `deadline`.
    pub async fn push(&self, message: WireFrame, deadline: Instant) -> Result<(), PushError> {
        let mut message = message;
        loop {
            // Register before checking, so a release between the check and the wait is seen.
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = self.inner.lock();
                match self.push_locked(&mut inner, message) {
                    Ok(wake) => {
                        drop(inner);
                        if wake {
                            self.writer_wake.notify_one();
                        }
                        return Ok(());
                    }
                    Err((_, PushError::Closed)) => return Err(PushError::Closed),
                    Err((m, PushError::TimedOut)) => {
                        message = m;
                        inner.senders_waiting += 1;
                    }
                }
            }
            let timed_out = tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err();
            self.inner.lock().senders_waiting -= 1;
            if timed_out {
                // One last try: space may have freed between the wake-up and the timeout.
                return self.try_push(message).map_err(|(_, e)| e);
            }
        }
    }

    /// Waits for queued messages and moves them all into `batch`; returns the bytes taken (to be
    /// passed to [`Outbox::release`] once written), or `None` once closed.
    pub async fn next_batch(&self, batch: &mut Vec<WireFrame>) -> Option<usize> {
        loop {
            {
                let mut inner = self.inner.lock();
                if inner.closed.is_some() {
                    return None;
                }
                if !inner.queue.is_empty() {
                    let mut taken = 0;
                    for m in inner.queue.drain(..) {
                        taken += weight(&m);
                        batch.push(m);
                    }
                    return Some(taken);
                }
                inner.writer_parked = true;
            }
            // A push after we parked calls notify_one, which leaves a permit if we are not
            // waiting yet, so no wake-up is lost.
            self.writer_wake.notified().await;
        }
    }

    /// Returns the space of a written batch and wakes waiting senders.
    pub fn release(&self, bytes: usize) {
        let mut inner = self.inner.lock();
        inner.bytes = inner.bytes.saturating_sub(bytes);
        let wake = inner.senders_waiting > 0;
        drop(inner);
        if wake {
            self.space.notify_waiters();
        }
    }

    /// Closes the outbox (first reason wins); queued messages are dropped, waiters woken.
    pub fn close(&self, reason: CloseReason) {
        let mut inner = self.inner.lock();
        if inner.closed.is_none() {
            inner.closed = Some(reason);
            inner.queue.clear();
        }
        drop(inner);
        self.writer_wake.notify_one();
        self.space.notify_waiters();
        self.closing.notify_waiters();
    }

    /// The reason it was closed, if it was.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.inner.lock().closed.clone()
    }

    /// Resolves once the outbox is closed, with the reason.
    pub async fn closed(&self) -> CloseReason {
        loop {
            let notified = self.closing.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.close_reason() {
                return reason;
            }
            notified.await;
        }
    }

    /// Bytes currently accounted to this outbox.
    pub fn queued_bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

/// The close reason for a consumer that made no progress for the slow-consumer timeout.
pub fn slow_consumer_reason(detail: &str) -> CloseReason {
    CloseReason {
        leave: protocol::LeaveReason::SlowConsumer,
        code: protocol::close_code::SLOW_CONSUMER,
        text: format!("slow consumer: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn msg(n: usize) -> WireFrame {
        WireFrame::binary(&vec![0u8; n])
    }

    #[tokio::test]
    async fn batches_everything_queued_and_bounds_bytes() {
        let outbox = Outbox::new(1000);
        assert!(outbox.try_push(msg(100)).is_ok());
        assert!(outbox.try_push(msg(100)).is_ok());
        assert!(outbox.try_push(msg(100)).is_ok());
        // 3 * 164 = 492; another 600 + 64 would exceed 1000.
        assert!(matches!(
            outbox.try_push(msg(600)),
            Err((_, PushError::TimedOut))
        ));
        let mut batch = Vec::new();
        let taken = outbox.next_batch(&mut batch).await.expect("open");
        assert_eq!(batch.len(), 3);
        assert_eq!(taken, 492);
        // Space comes back only after release (bytes in flight still count).
        assert!(outbox.try_push(msg(600)).is_err());
        outbox.release(taken);
        assert!(outbox.try_push(msg(600)).is_ok());
    }

    #[tokio::test]
    async fn a_waiting_sender_proceeds_when_space_frees_and_times_out_otherwise() {
        let outbox = std::sync::Arc::new(Outbox::new(200));
        outbox.try_push(msg(100)).expect("first fits");
        let o = outbox.clone();
        let waiter = tokio::spawn(async move {
            o.push(msg(100), Instant::now() + Duration::from_secs(5))
                .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut batch = Vec::new();
        let taken = outbox.next_batch(&mut batch).await.expect("open");
        outbox.release(taken);
        assert_eq!(waiter.await.expect("joins"), Ok(()));
        let r = outbox
            .push(msg(100), Instant::now() + Duration::from_millis(30))
            .await;
        assert_eq!(r, Err(PushError::TimedOut));
    }

    #[tokio::test]
    async fn close_wakes_everyone_and_control_overflow_closes() {
        let outbox = Outbox::new(200);
        outbox.push_control(msg(100));
        outbox.push_control(msg(100));
        assert!(outbox.close_reason().is_none());
        outbox.push_control(msg(200));
        let reason = outbox.close_reason().expect("closed as slow");
        assert_eq!(reason.leave, protocol::LeaveReason::SlowConsumer);
        let mut batch = Vec::new();
        assert_eq!(outbox.next_batch(&mut batch).await, None);
        assert_eq!(
            outbox.closed().await.code,
            protocol::close_code::SLOW_CONSUMER
        );
    }
}
