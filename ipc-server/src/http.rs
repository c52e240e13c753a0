//! The HTTP/1.1 front door, just enough of it: read one request head, answer plain requests
//! (`/health`, `/metrics`, peer listings) with `Connection: close`, and turn websocket connect
//! requests into an upgrade or a clear refusal (status code and JSON body) before any frame.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Time a client has to send its request head (protects against idle sockets).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed request head.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Bytes read past the head (the first websocket frames, or a body).
    pub rest: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a header holds `token` in its comma-separated list (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.header(name)
            .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    }
}

/// Why no request head could be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("connection closed before a full request head")]
    Eof,
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads and parses one request head.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Request, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HeadError::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let target = req.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                return Ok(Request {
                    method: req.method.unwrap_or("").to_owned(),
                    path: percent_decode(path),
                    query: parse_query(query),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                    rest: buf[len..].to_vec(),
                });
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err(HeadError::TooLarge),
            Err(e) => return Err(HeadError::Malformed(e.to_string())),
        }
    }
}

fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (as space); invalid escapes are kept as they are.
pub fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("a Content-Length header is required")]
    NoLength,
    #[error("body of {0} bytes exceeds the limit of {1}")]
    TooLarge(usize, usize),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl BodyError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::NoLength => 411,
            BodyError::TooLarge(..) => 413,
            BodyError::Io(_) => 400,
        }
    }
}

/// Reads the body announced by `Content-Length`, at most `limit` bytes.
pub async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    req: &Request,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let len: usize = req
        .header("content-length")
        .and_then(|v| v.trim().parse().ok())
        .ok_or(BodyError::NoLength)?;
    if len > limit {
        return Err(BodyError::TooLarge(len, limit));
    }
    let mut body = req.rest.clone();
    body.truncate(len);
    if body.len() < len {
        let mut more = vec![0u8; len - body.len()];
        tokio::time::timeout(HEAD_TIMEOUT, stream.read_exact(&mut more))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "body not received in time")
            })??;
        body.extend_from_slice(&more);
    }
    Ok(body)
}

/// Writes a complete response and closes the exchange.
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        reason_phrase(status),
        body.len()
    );
    for (k, v) in extra_headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).await?;
    stream.flush().await?;
    let _ = stream.shutdown().await;
    Ok(())
}

/// A JSON error body: `{"error": code, "message": text, ...extra}`.
pub fn error_body(code: &str, message: &str, extra: Option<(&str, serde_json::Value)>) -> Vec<u8> {
    let mut body = serde_json::json!({ "error": code, "message": message });
    if let (Some((k, v)), Some(map)) = (extra, body.as_object_mut()) {
        map.insert(k.to_owned(), v);
    }
    body.to_string().into_bytes()
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        411 => "Length Required",
        409 => "Conflict",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_head_query_and_keeps_the_rest() {
        let raw = b"GET /ipc/v1/db?id=a%40b&encoding=json HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\nFRAME";
        let mut input: &[u8] = raw;
        let req = read_head(&mut input).await.expect("parses");
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/ipc/v1/db");
        assert_eq!(req.query("id"), Some("a@b"));
        assert_eq!(req.query("encoding"), Some("json"));
        assert_eq!(req.header("upgrade"), Some("websocket"));
        assert_eq!(req.rest, b"FRAME");
    }

    #[tokio::test]
    async fn refuses_garbage_and_eof() {
        let mut input: &[u8] = b"\x00\x01\x02 nonsense\r\n\r\n";
        assert!(matches!(
            read_head(&mut input).await,
            Err(HeadError::Malformed(_))
        ));
        let mut input: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(matches!(read_head(&mut input).await, Err(HeadError::Eof)));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
