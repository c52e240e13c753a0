//! Commit announcements: after every commit a worker publishes what changed, so the other
//! processes of the group can drop stale state and raise realtime events.
//!
//! Subject `commits` in the database's namespace; payload JSON
//! `{"txn": T, "fence": F, "changed": ["users/alice", …], "rec": "<base64>", "head": [R, P]}`,
//! where `rec` is the commit's record-change list ([`crate::changes`], standard base64 with
//! padding), left out when the commit changed more than [`crate::changes::BUDGET`], and `head`
//! the commit's root page and page count. Transaction ids are one sequence
//! for the whole database (every commit that changes something takes the next one), so a
//! subscriber that sees `txn` jump from 7 to 9 knows it missed commit 8 and must resync.
//! A worker queues the announcement while it still holds the commit turn; subscribers put
//! announcements back in commit order ([`super::order`]).

use crate::db::CommitInfo;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The subject commits are announced on.
pub const COMMITS_SUBJECT: &str = "commits";

/// One commit as announced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub txn: u64,
    pub fence: u64,
    pub changed: Vec<String>,
    /// Record changes, base64 (see the module documentation); None: not available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rec: Option<String>,
    /// `[root page, page count]` of the commit, for subscribers that read its exact state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<(u64, u64)>,
}

impl From<&CommitInfo> for Announcement {
    fn from(c: &CommitInfo) -> Self {
        Announcement {
            txn: c.txn,
            fence: c.fence,
            changed: c.changed.clone(),
            rec: c
                .records
                .as_ref()
                .map(|r| base64::engine::general_purpose::STANDARD.encode(r.as_slice())),
            head: c.head,
        }
    }
}

impl Announcement {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    pub fn decode(b: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(b)
    }
    /// The record-change list (None when the commit carried none or it does not decode).
    pub fn records(&self) -> Option<Vec<u8>> {
        let r = self.rec.as_ref()?;
        base64::engine::general_purpose::STANDARD.decode(r).ok()
    }
}

fn segments(p: &str) -> Vec<&str> {
    p.split('/').filter(|s| !s.is_empty()).collect()
}

/// Whether a change of the subtree at `changed` can affect what `pattern` watches: the two
/// overlap, where `*` in the pattern stands for any one segment. A change at `users/alice`
/// concerns `users/*`, `users`, the root and `users/alice/age`, not `posts/*` or `users/bob`.
pub fn concerns(pattern: &str, changed: &str) -> bool {
    let p = segments(pattern);
    let c = segments(changed);
    p.iter()
        .zip(c.iter())
        .all(|(ps, cs)| *ps == "*" || ps == cs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_overlapping_subtrees_with_star_for_one_segment() {
        assert!(concerns("users/*", "users/alice"));
        assert!(concerns("users/*", "users/alice/age"));
        assert!(concerns("users/*", "users"));
        assert!(concerns("", "x/y"));
        assert!(concerns("users/alice/age", "users/alice"));
        assert!(concerns("*/alice", "users/alice"));
        assert!(!concerns("users/*", "posts/1"));
        assert!(!concerns("users/bob", "users/alice"));
    }

    #[test]
    fn announcements_round_trip() {
        let a = Announcement {
            txn: 9,
            fence: 3,
            changed: vec!["a/b".into()],
            rec: None,
            head: Some((12, 40)),
        };
        assert_eq!(Announcement::decode(&a.encode()).unwrap(), a);
    }
}
