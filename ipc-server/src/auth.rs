//! The access token: where a peer may present it, and a comparison whose time does not depend
//! on how much of a guess is right. The token is never logged and never accepted in a URL.

use crate::http::Request;

/// The server's access token.
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// `None` for an empty token.
    pub fn new(token: &str) -> Option<Token> {
        (!token.is_empty()).then(|| Token(token.as_bytes().to_vec()))
    }

    /// Constant-time equality: always looks at every byte of the expected token, and folds a
    /// length mismatch into the result instead of returning early.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let expected = &self.0;
        let mut diff = (expected.len() ^ candidate.len()) as u64;
        for (i, e) in expected.iter().enumerate() {
            let c = candidate.get(i).copied().unwrap_or(!*e);
            diff |= u64::from(e ^ c);
        }
        std::hint::black_box(diff) == 0
    }

    /// Whether the request carries this token, as `Authorization: Bearer <token>` or as a
    /// websocket subprotocol `bearer.<token>` (for browsers, which cannot set headers).
    pub fn admits(&self, req: &Request) -> bool {
        let mut ok = false;
        if let Some(value) = req.header("authorization") {
            if let Some((scheme, credential)) = value.trim().split_once(' ') {
                if scheme.eq_ignore_ascii_case("bearer") {
                    ok |= self.matches(credential.trim().as_bytes());
                }
            }
        }
        for offered in subprotocols(req) {
            if let Some(credential) = offered.strip_prefix("bearer.") {
                ok |= self.matches(credential.as_bytes());
            }
        }
        ok
    }
}

/// The websocket subprotocols a request offers, in order.
pub fn subprotocols(req: &Request) -> impl Iterator<Item = &str> {
    req.header("sec-websocket-protocol")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_whole_tokens_only() {
        let t = Token::new("s3cret").expect("non-empty");
        assert!(t.matches(b"s3cret"));
        assert!(!t.matches(b"s3cre"));
        assert!(!t.matches(b"s3cret!"));
        assert!(!t.matches(b""));
        assert!(!t.matches(b"S3cret"));
        assert!(Token::new("").is_none());
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }
}
