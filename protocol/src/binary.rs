//! Binary frames: bincode 1.x with its default (legacy) options, i.e. fixed-width little-endian
//! integers, `u32` enum tags, `u64` length prefixes. Payloads are the last field of their frame,
//! so a receiver can slice them out of the frame buffer without copying.

use crate::frames::{ClientFrame, ServerFrame};

/// A frame that is not a valid encoding of the expected type.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed binary frame: {0}")]
    Binary(#[from] bincode::Error),
    #[error("malformed JSON frame: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid base64 in data_b64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("frame has trailing bytes after its last field")]
    TrailingBytes,
}

/// The legacy bincode 1 layout (fixed-width little-endian integers), but rejecting trailing
/// bytes in the same pass instead of measuring the value again.
fn options() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
}

fn decode<'a, T: serde::Deserialize<'a>>(frame: &'a [u8]) -> Result<T, DecodeError> {
    use bincode::Options;
    options().deserialize(frame).map_err(|e| match *e {
        bincode::ErrorKind::Custom(ref m) if m.contains("remaining") => DecodeError::TrailingBytes,
        _ => DecodeError::Binary(e),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain structs into a Vec cannot fail: no maps with non-string keys, no
    // sequences of unknown length.
    bincode::serialize(value).unwrap_or_default()
}

/// [`encode`] after `prefix` zero bytes.
fn encode_after<T: serde::Serialize>(prefix: usize, value: &T) -> Vec<u8> {
    let size = bincode::serialized_size(value).unwrap_or(0) as usize;
    let mut out = Vec::with_capacity(prefix + size);
    out.resize(prefix, 0);
    // As above, this cannot fail; on the impossible error the frame is just the prefix.
    if bincode::serialize_into(&mut out, value).is_err() {
        out.truncate(prefix);
    }
    out
}

/// Writes the bincode layout of the frequent frames by hand (one pass, exact capacity); the
/// tests check it against bincode byte for byte.
struct Writer(Vec<u8>);

impl Writer {
    fn new(tag: u32, capacity: usize) -> Self {
        Self::after(0, tag, capacity)
    }
    /// A writer whose buffer starts with `prefix` zero bytes (room for a header the caller
    /// fills in later, so the frame needs no second copy).
    fn after(prefix: usize, tag: u32, capacity: usize) -> Self {
        let mut v = Vec::with_capacity(prefix + 4 + capacity);
        v.resize(prefix, 0);
        v.extend_from_slice(&tag.to_le_bytes());
        Writer(v)
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(&(b.len() as u64).to_le_bytes());
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Self {
        self.bytes(s.as_bytes())
    }
    fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_le_bytes());
        self
    }
    fn u32(mut self, n: u32) -> Self {
        self.0.extend_from_slice(&n.to_le_bytes());
        self
    }
    fn opt_str(mut self, s: Option<&str>) -> Self {
        match s {
            Some(s) => {
                self.0.push(1);
                self.str(s)
            }
            None => {
                self.0.push(0);
                self
            }
        }
    }
}

/// Encodes a client frame as a binary websocket payload.
pub fn encode_client(frame: &ClientFrame<'_>) -> Vec<u8> {
    match frame {
        ClientFrame::Send { to, payload } => {
            Writer::new(0, 16 + to.len() + payload.len())
                .str(to)
                .bytes(payload)
                .0
        }
        ClientFrame::Publish { subject, payload } => {
            Writer::new(2, 16 + subject.len() + payload.len())
                .str(subject)
                .bytes(payload)
                .0
        }
        ClientFrame::Reply { to, corr, payload } => {
            Writer::new(6, 24 + to.len() + payload.len())
                .str(to)
                .u64(*corr)
                .bytes(payload)
                .0
        }
        other => encode(other),
    }
}

/// Decodes a binary client frame, borrowing strings and payload from `frame`.
pub fn decode_client(frame: &[u8]) -> Result<ClientFrame<'_>, DecodeError> {
    decode(frame)
}

/// Encodes a server frame as a binary websocket payload.
pub fn encode_server(frame: &ServerFrame<'_>) -> Vec<u8> {
    encode_server_after(0, frame)
}

/// Encodes a server frame after `prefix` zero bytes: the returned buffer is `prefix` bytes
/// followed by exactly what [`encode_server`] returns, allocated once with exact capacity. A
/// server uses the prefix for the websocket frame header.
pub fn encode_server_after(prefix: usize, frame: &ServerFrame<'_>) -> Vec<u8> {
    match frame {
        ServerFrame::Message { from, payload } => {
            Writer::after(prefix, 3, 16 + from.len() + payload.len())
                .str(from)
                .bytes(payload)
                .0
        }
        ServerFrame::Broadcast { from, payload } => {
            Writer::after(prefix, 4, 16 + from.len() + payload.len())
                .str(from)
                .bytes(payload)
                .0
        }
        ServerFrame::Published {
            from,
            subject,
            payload,
        } => {
            Writer::after(prefix, 5, 24 + from.len() + subject.len() + payload.len())
                .str(from)
                .str(subject)
                .bytes(payload)
                .0
        }
        ServerFrame::Request {
            from,
            corr,
            subject,
            timeout_ms,
            payload,
        } => {
            let subject_len = subject.as_ref().map_or(0, |s| s.len() + 8);
            Writer::after(prefix, 6, 29 + from.len() + subject_len + payload.len())
                .str(from)
                .u64(*corr)
                .opt_str(subject.as_deref())
                .u32(*timeout_ms)
                .bytes(payload)
                .0
        }
        ServerFrame::Reply {
            from,
            corr,
            payload,
        } => {
            Writer::after(prefix, 7, 24 + from.len() + payload.len())
                .str(from)
                .u64(*corr)
                .bytes(payload)
                .0
        }
        other => encode_after(prefix, other),
    }
}

/// Decodes a binary server frame, borrowing strings and payload from `frame`.
pub fn decode_server(frame: &[u8]) -> Result<ServerFrame<'_>, DecodeError> {
    decode(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::*;
    use std::borrow::Cow;

    #[test]
    fn client_frames_round_trip_and_borrow() {
        let frames = [
            ClientFrame::Send {
                to: "b".into(),
                payload: Cow::Borrowed(b"hi"),
            },
            ClientFrame::Broadcast {
                payload: Cow::Borrowed(b""),
            },
            ClientFrame::Publish {
                subject: "a.b".into(),
                payload: Cow::Borrowed(&[0, 1, 2]),
            },
            ClientFrame::Subscribe {
                pattern: "a.*".into(),
            },
            ClientFrame::Unsubscribe {
                pattern: "a.>".into(),
            },
            ClientFrame::Request {
                corr: 7,
                target: Target::Subject("svc".into()),
                timeout_ms: 250,
                payload: Cow::Borrowed(b"q"),
            },
            ClientFrame::Reply {
                to: "a".into(),
                corr: 7,
                payload: Cow::Borrowed(b"r"),
            },
            ClientFrame::Ping { nonce: 9 },
        ];
        for frame in frames {
            let bytes = encode_client(&frame);
            let back = decode_client(&bytes).expect("decodes");
            assert_eq!(back, frame);
            if let ClientFrame::Send { payload, to } = back {
                assert!(
                    matches!(payload, Cow::Borrowed(_)),
                    "payload must not be copied"
                );
                assert!(matches!(to, Cow::Borrowed(_)));
            }
        }
    }

    #[test]
    fn documented_layout_of_send() {
        // Send = variant 0; "to" = u64 length + bytes; payload = u64 length + bytes.
        let bytes = encode_client(&ClientFrame::Send {
            to: "b".into(),
            payload: Cow::Borrowed(b"xy"),
        });
        let mut expected = vec![0, 0, 0, 0];
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.push(b'b');
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(b"xy");
        assert_eq!(bytes, expected);
    }

    #[test]
    fn garbage_and_trailing_bytes_are_errors() {
        assert!(decode_client(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_client(&[]).is_err());
        let mut bytes = encode_client(&ClientFrame::Ping { nonce: 1 });
        bytes.push(0);
        assert!(matches!(
            decode_client(&bytes),
            Err(DecodeError::TrailingBytes)
        ));
        // A length prefix pointing far past the end must fail cleanly, not allocate.
        let mut huge = vec![0, 0, 0, 0];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_client(&huge).is_err());
    }

    #[test]
    fn server_frames_round_trip() {
        let frames = [
            ServerFrame::Welcome(Welcome {
                version: 1,
                peer: "a".into(),
                epoch: 3,
                max_payload: 1024,
                keepalive_ms: 10_000,
                members: vec![Member {
                    id: "b".into(),
                    epoch: 2,
                }],
            }),
            ServerFrame::Left {
                peer: "b".into(),
                epoch: 2,
                reason: LeaveReason::SlowConsumer,
            },
            ServerFrame::Request {
                from: "a".into(),
                corr: 1,
                subject: Some("svc".into()),
                timeout_ms: 5,
                payload: Cow::Borrowed(b"x"),
            },
            ServerFrame::Error {
                code: ErrorCode::UnknownPeer,
                corr: 0,
                target: "zz".into(),
                message: "no peer zz".into(),
            },
            ServerFrame::Pong { nonce: 4 },
        ];
        for frame in frames {
            assert_eq!(
                decode_server(&encode_server(&frame)).expect("decodes"),
                frame
            );
        }
    }

    #[test]
    fn hand_written_encoders_match_bincode_byte_for_byte() {
        let payloads: [&[u8]; 3] = [b"", b"x", &[7u8; 300]];
        for p in payloads {
            let client = [
                ClientFrame::Send {
                    to: "peer-1".into(),
                    payload: Cow::Borrowed(p),
                },
                ClientFrame::Publish {
                    subject: "a.b.c".into(),
                    payload: Cow::Borrowed(p),
                },
                ClientFrame::Reply {
                    to: "r".into(),
                    corr: u64::MAX - 3,
                    payload: Cow::Borrowed(p),
                },
            ];
            for f in client {
                assert_eq!(
                    encode_client(&f),
                    bincode::serialize(&f).expect("bincode"),
                    "{f:?}"
                );
            }
            let server = [
                ServerFrame::Message {
                    from: "a".into(),
                    payload: Cow::Borrowed(p),
                },
                ServerFrame::Broadcast {
                    from: "ab".into(),
                    payload: Cow::Borrowed(p),
                },
                ServerFrame::Published {
                    from: "abc".into(),
                    subject: "x.y".into(),
                    payload: Cow::Borrowed(p),
                },
                ServerFrame::Request {
                    from: "q".into(),
                    corr: 9,
                    subject: None,
                    timeout_ms: 17,
                    payload: Cow::Borrowed(p),
                },
                ServerFrame::Request {
                    from: "q".into(),
                    corr: 9,
                    subject: Some("s.t".into()),
                    timeout_ms: 17,
                    payload: Cow::Borrowed(p),
                },
                ServerFrame::Reply {
                    from: "w".into(),
                    corr: 1 << 40,
                    payload: Cow::Borrowed(p),
                },
            ];
            for f in server {
                assert_eq!(
                    encode_server(&f),
                    bincode::serialize(&f).expect("bincode"),
                    "{f:?}"
                );
                let after = encode_server_after(10, &f);
                assert_eq!(after.len(), after.capacity(), "exact capacity: {f:?}");
                assert_eq!(&after[..10], &[0u8; 10]);
                assert_eq!(&after[10..], &encode_server(&f)[..]);
            }
        }
    }
}
