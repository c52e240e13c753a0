//! The messages between workers and the master, as JSON payloads of post-office requests.
//!
//! A worker sends a [`Request`] with `Client::request("master", …)` and gets one [`Reply`].
//! Every failure the master can report is a [`Reply::Error`] with a machine-readable
//! [`ErrorKind`]; transport failures (no master, timeout, lost connection) are the requester's
//! own `RequestError`, which the worker maps to `MasterUnavailable`.

use super::lock_table::{LockPath, Mode};
use serde::{Deserialize, Serialize};

/// The well-known peer id of the master in a database's namespace.
pub const MASTER_PEER: &str = "master";

/// What a worker asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Lock `items` (all or nothing). `floor` is the highest fencing token the worker saw in
    /// the file (the master raises its counter to it). The master waits at most `wait_ms` for
    /// conflicting locks to go away, then answers [`ErrorKind::Timeout`].
    Lock {
        /// The worker's id for this request (0: none). A request sent again with the same
        /// `rid` in the same session gets the same lock, not a second one.
        #[serde(default)]
        rid: u64,
        items: Vec<(LockPath, Mode)>,
        floor: u64,
        lease_ms: u64,
        wait_ms: u64,
        /// File pages wanted with the lock (0: none).
        #[serde(default, skip_serializing_if = "is_zero")]
        pages: u64,
        /// Pages of earlier grants that this worker's commits used since its last report,
        /// as `[start, count]` ranges.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        used: Vec<(u64, u64)>,
    },
    /// File pages wanted now (a commit step ran out), plus the used-pages report.
    Space {
        pages: u64,
        #[serde(default)]
        used: Vec<(u64, u64)>,
    },
    /// Give a lock back.
    Release { id: u64 },
    /// Withdraw lock request `rid`, granted or still waiting (the worker gave up on it).
    Cancel { rid: u64 },
    /// Extend a lock's lease.
    Renew { id: u64, lease_ms: u64 },
}

/// The master's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// The lock is held until released, renewed-and-released, or `lease_ms` from now.
    Granted {
        id: u64,
        token: u64,
        lease_ms: u64,
        /// File pages now owned by the worker, as `[start, count]` ranges.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pages: Vec<(u64, u64)>,
        /// The master's era (its `fence.map` base) the pages belong to.
        #[serde(default)]
        era: u64,
    },
    /// Answer to `Space`.
    Space {
        pages: Vec<(u64, u64)>,
        era: u64,
    },
    /// Answer to `Release`/`Renew`: whether the lock was still held.
    Done {
        held: bool,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// Why the master refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Conflicting locks were still held when the wait ended.
    Timeout,
    /// The request did not parse or made no sense.
    BadRequest,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        // serialising these plain enums cannot fail
        serde_json::to_vec(self).unwrap_or_default()
    }
    pub fn decode(b: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(b)
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    pub fn decode(b: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_json() {
        let r = Request::Lock {
            rid: 9,
            items: vec![(vec!["users".into(), "alice".into()], Mode::Write)],
            floor: 3,
            lease_ms: 100,
            wait_ms: 50,
            pages: 256,
            used: vec![(10, 4)],
        };
        let text = String::from_utf8(r.encode()).unwrap();
        assert!(text.contains("\"op\":\"lock\"") && text.contains("\"write\""));
        assert!(text.contains("\"used\":[[10,4]]"), "{text}");
        assert_eq!(Request::decode(text.as_bytes()).unwrap(), r);
        let e = Reply::Error {
            kind: ErrorKind::Timeout,
            message: "x".into(),
        };
        assert_eq!(Reply::decode(&e.encode()).unwrap(), e);
        assert!(Request::decode(b"{\"op\":\"nope\"}").is_err());
    }
}
