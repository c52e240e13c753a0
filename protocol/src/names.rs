//! Naming rules for namespaces, peer ids and subjects, subject pattern matching, and the connect
//! path `/ipc/v<version>/<namespace>?id=<peer id>[&encoding=json]`.

/// Longest namespace, peer id or subject, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// A name that breaks the rules, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {MAX_NAME_LEN} bytes")]
    TooLong { what: &'static str },
    #[error("{what} {name:?} contains {ch:?}; allowed are letters, digits and {allowed}")]
    BadChar {
        what: &'static str,
        name: String,
        ch: char,
        allowed: &'static str,
    },
    #[error("{what} {name:?} has an empty token (two dots, or a dot at an end)")]
    EmptyToken { what: &'static str, name: String },
    #[error("pattern {0:?}: '>' may only be the last token and '*'/'>' must be whole tokens")]
    BadWildcard(String),
}

fn check_chars(what: &'static str, name: &str, extra: &'static str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { what });
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || extra.contains(*c)))
    {
        Some(ch) => Err(NameError::BadChar {
            what,
            name: name.to_owned(),
            ch,
            allowed: extra,
        }),
        None => Ok(()),
    }
}

/// A namespace (usually a database name): letters, digits, `_`, `-`, `.`.
pub fn validate_namespace(name: &str) -> Result<(), NameError> {
    check_chars("namespace", name, "_-.")
}

/// A peer id: letters, digits, `_`, `-`, `.`, `:`, `@`.
pub fn validate_peer_id(id: &str) -> Result<(), NameError> {
    check_chars("peer id", id, "_-.:@")
}

fn check_tokens(what: &'static str, name: &str, extra: &'static str) -> Result<(), NameError> {
    check_chars(what, name, extra)?;
    if name.split('.').any(str::is_empty) {
        return Err(NameError::EmptyToken {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// A subject to publish on: dot-separated tokens of letters, digits, `_`, `-`, `:`, `@`, `/`.
pub fn validate_subject(subject: &str) -> Result<(), NameError> {
    check_tokens("subject", subject, "_-.:@/")
}

/// A subscription pattern: a subject whose tokens may also be `*` (exactly one token) or, as the
/// last token only, `>` (one or more remaining tokens).
pub fn validate_pattern(pattern: &str) -> Result<(), NameError> {
    check_tokens("pattern", pattern, "_-.:@/*>")?;
    let tokens: Vec<&str> = pattern.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        let wild = token.contains('*') || token.contains('>');
        let whole = *token == "*" || (*token == ">" && i + 1 == tokens.len());
        if wild && !whole {
            return Err(NameError::BadWildcard(pattern.to_owned()));
        }
    }
    Ok(())
}

/// Whether `subject` matches `pattern` (both assumed valid).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// The connect path for a namespace: `/ipc/v1/<namespace>`.
pub fn connect_path(namespace: &str) -> String {
    format!("/ipc/v{}/{namespace}", crate::PROTOCOL_VERSION)
}

/// What a connect request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectPath<'a> {
    pub version: u32,
    pub namespace: &'a str,
    /// The rest of the path after the namespace (e.g. `peers`), empty for a plain connect.
    pub rest: &'a str,
}

/// Splits `/ipc/v<version>/<namespace>[/<rest>]` (without query); `None` if the path is not an
/// `/ipc/` path at all. The version is parsed but not checked.
pub fn parse_connect_path(path: &str) -> Option<ConnectPath<'_>> {
    let after = path.strip_prefix("/ipc/v")?;
    let (version, after) = after.split_once('/').unwrap_or((after, ""));
    let version = version.parse().ok()?;
    let (namespace, rest) = after.split_once('/').unwrap_or((after, ""));
    Some(ConnectPath {
        version,
        namespace,
        rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_documented() {
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(!subject_matches("a.b.c", "a.b"));
        assert!(subject_matches("a.*", "a.b"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("*.b.*", "x.b.y"));
        assert!(subject_matches("a.>", "a.b"));
        assert!(subject_matches("a.>", "a.b.c.d"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches(">", "anything.at.all"));
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_namespace("my-db_1.v2").is_ok());
        assert!(validate_namespace("").is_err());
        assert!(validate_namespace("a/b").is_err());
        assert!(validate_peer_id("worker-3@host:1").is_ok());
        assert!(validate_peer_id("a b").is_err());
        assert!(validate_subject("orders.eu.created").is_ok());
        assert!(validate_subject("orders..x").is_err());
        assert!(validate_subject("orders.*").is_err());
        assert!(validate_pattern("orders.*.created").is_ok());
        assert!(validate_pattern("orders.>").is_ok());
        assert!(validate_pattern("orders.>.x").is_err());
        assert!(validate_pattern("ord*rs").is_err());
        assert!(validate_pattern(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn connect_paths_parse() {
        assert_eq!(
            parse_connect_path("/ipc/v1/db"),
            Some(ConnectPath {
                version: 1,
                namespace: "db",
                rest: ""
            })
        );
        assert_eq!(
            parse_connect_path("/ipc/v2/db/peers"),
            Some(ConnectPath {
                version: 2,
                namespace: "db",
                rest: "peers"
            })
        );
        assert_eq!(parse_connect_path("/ipc/vx/db"), None);
        assert_eq!(parse_connect_path("/health"), None);
        assert_eq!(connect_path("db"), "/ipc/v1/db");
    }
}
