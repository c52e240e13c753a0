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
    #[error("frame has {0} trailing bytes")]
    TrailingBytes(usize),
}

fn decode<'a, T: serde::Deserialize<'a> + serde::Serialize>(
    frame: &'a [u8],
) -> Result<T, DecodeError> {
    let value: T = bincode::deserialize(frame)?;
    let used = bincode::serialized_size(&value)? as usize;
    if used != frame.len() {
        return Err(DecodeError::TrailingBytes(frame.len().saturating_sub(used)));
    }
    Ok(value)
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain structs into a Vec cannot fail: no maps with non-string keys, no
    // sequences of unknown length.
    bincode::serialize(value).unwrap_or_default()
}

/// Encodes a client frame as a binary websocket payload.
pub fn encode_client(frame: &ClientFrame<'_>) -> Vec<u8> {
    encode(frame)
}

/// Decodes a binary client frame, borrowing strings and payload from `frame`.
pub fn decode_client(frame: &[u8]) -> Result<ClientFrame<'_>, DecodeError> {
    decode(frame)
}

/// Encodes a server frame as a binary websocket payload.
pub fn encode_server(frame: &ServerFrame<'_>) -> Vec<u8> {
    encode(frame)
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
            Err(DecodeError::TrailingBytes(1))
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
}
