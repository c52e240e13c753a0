//! The subject index: one structure that answers "who is interested in this subject".
//!
//! A trie over dot-separated tokens. Each node has literal children, one `*` child, the
//! subscribers whose pattern ends at that node, and the subscribers whose pattern has `>` at that
//! position. A lookup walks at most two branches per token (the literal and the `*`), so its cost
//! depends on the subject's length and the matches, not on the number of subscriptions.

use std::collections::HashMap;

/// One node of the trie.
struct Node<T> {
    literal: HashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    /// Patterns that end exactly here.
    here: Vec<(u64, T)>,
    /// Patterns with `>` as their next token: they match any one-or-more remaining tokens.
    rest: Vec<(u64, T)>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            literal: HashMap::new(),
            star: None,
            here: Vec::new(),
            rest: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.star.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }
}

/// Subscriptions keyed by pattern; each subscriber is identified by a `u64` key (the connection
/// id) and carries a value `T` (its delivery handle).
pub struct SubjectIndex<T> {
    root: Node<T>,
    len: usize,
}

impl<T> Default for SubjectIndex<T> {
    fn default() -> Self {
        SubjectIndex {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T: Clone> SubjectIndex<T> {
    /// Adds `key`'s interest in `pattern` (already validated). Returns false if `key` already had
    /// exactly this pattern.
    pub fn insert(&mut self, pattern: &str, key: u64, value: T) -> bool {
        let mut node = &mut self.root;
        let mut tokens = pattern.split('.').peekable();
        while let Some(token) = tokens.next() {
            if token == ">" {
                if node.rest.iter().any(|(k, _)| *k == key) {
                    return false;
                }
                node.rest.push((key, value));
                self.len += 1;
                return true;
            }
            node = if token == "*" {
                node.star.get_or_insert_with(Box::default)
            } else {
                node.literal.entry(token.into()).or_default()
            };
            if tokens.peek().is_none() {
                if node.here.iter().any(|(k, _)| *k == key) {
                    return false;
                }
                node.here.push((key, value));
                self.len += 1;
                return true;
            }
        }
        false
    }

    /// Removes `key`'s interest in exactly `pattern`. Returns whether it was there.
    pub fn remove(&mut self, pattern: &str, key: u64) -> bool {
        let tokens: Vec<&str> = pattern.split('.').collect();
        let removed = remove_in(&mut self.root, &tokens, key);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Appends to `out` every subscriber matching `subject`, each key at most once.
    pub fn matches(&self, subject: &str, out: &mut Vec<(u64, T)>) {
        let tokens: Vec<&str> = subject.split('.').collect();
        let start = out.len();
        collect(&self.root, &tokens, out);
        if out.len() - start > 1 {
            let mut found = out.split_off(start);
            found.sort_by_key(|(k, _)| *k);
            found.dedup_by_key(|(k, _)| *k);
            out.extend(found);
        }
    }

    /// Number of (pattern, key) subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no subscriptions at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn collect<T: Clone>(node: &Node<T>, tokens: &[&str], out: &mut Vec<(u64, T)>) {
    let Some((first, rest)) = tokens.split_first() else {
        out.extend(node.here.iter().cloned());
        return;
    };
    out.extend(node.rest.iter().cloned());
    if let Some(child) = node.literal.get(*first) {
        collect(child, rest, out);
    }
    if let Some(child) = &node.star {
        collect(child, rest, out);
    }
}

fn remove_in<T>(node: &mut Node<T>, tokens: &[&str], key: u64) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return false;
    };
    if *first == ">" {
        let before = node.rest.len();
        node.rest.retain(|(k, _)| *k != key);
        return node.rest.len() != before;
    }
    let child = if *first == "*" {
        match node.star.as_deref_mut() {
            Some(c) => c,
            None => return false,
        }
    } else {
        match node.literal.get_mut(*first) {
            Some(c) => c,
            None => return false,
        }
    };
    let removed = if rest.is_empty() {
        let before = child.here.len();
        child.here.retain(|(k, _)| *k != key);
        child.here.len() != before
    } else {
        remove_in(child, rest, key)
    };
    if child.is_empty() {
        if *first == "*" {
            node.star = None;
        } else {
            node.literal.remove(*first);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(index: &SubjectIndex<()>, subject: &str) -> Vec<u64> {
        let mut out = Vec::new();
        index.matches(subject, &mut out);
        let mut k: Vec<u64> = out.into_iter().map(|(k, _)| k).collect();
        k.sort();
        k
    }

    #[test]
    fn literal_star_and_rest() {
        let mut index = SubjectIndex::default();
        assert!(index.insert("a.b", 1, ()));
        assert!(index.insert("a.*", 2, ()));
        assert!(index.insert("a.>", 3, ()));
        assert!(index.insert(">", 4, ()));
        assert!(index.insert("*.b.c", 5, ()));
        assert!(!index.insert("a.b", 1, ()), "duplicate");
        assert_eq!(keys(&index, "a.b"), vec![1, 2, 3, 4]);
        assert_eq!(keys(&index, "a.b.c"), vec![3, 4, 5]);
        assert_eq!(keys(&index, "a"), vec![4]);
        assert_eq!(keys(&index, "x.y"), vec![4]);
        assert_eq!(index.len(), 5);
    }

    #[test]
    fn one_delivery_per_key_even_with_overlapping_patterns() {
        let mut index = SubjectIndex::default();
        index.insert("a.b", 7, ());
        index.insert("a.*", 7, ());
        index.insert("a.>", 7, ());
        assert_eq!(keys(&index, "a.b"), vec![7]);
    }

    #[test]
    fn remove_prunes_and_agrees_with_subject_matches() {
        let patterns = ["a.b", "a.*", "a.>", "*.*", "b.>", ">"];
        let subjects = ["a", "a.b", "a.c", "b.c.d", "c.d"];
        let mut index = SubjectIndex::default();
        for (i, p) in patterns.iter().enumerate() {
            index.insert(p, i as u64, ());
        }
        for s in subjects {
            let expected: Vec<u64> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| protocol::subject_matches(p, s))
                .map(|(i, _)| i as u64)
                .collect();
            assert_eq!(keys(&index, s), expected, "subject {s}");
        }
        for (i, p) in patterns.iter().enumerate() {
            assert!(index.remove(p, i as u64));
            assert!(!index.remove(p, i as u64));
        }
        assert_eq!(index.len(), 0);
        assert!(index.root.is_empty(), "empty nodes are pruned");
    }
}
