//! Websocket messages as the server writes them: each one a single final frame, header and
//! payload in one buffer, built once by the router and written as is by the peer's writer task.
//!
//! Server-to-client frames are never masked (RFC 6455 section 5.1), so a frame is the same bytes
//! for every receiver: a fan-out shares one buffer, and the writer copies each frame once, into
//! its socket buffer, instead of encoding a payload, then copying it into a frame, then into a
//! write buffer. Reading stays with tungstenite.

use bytes::{Buf, Bytes};

/// Room left in front of an encoded payload for the largest frame header (2 bytes, 8 of length;
/// server frames have no mask).
pub const HEADER_ROOM: usize = 10;

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
const FIN: u8 = 0x80;

/// One complete websocket frame, ready for the socket. Cloning shares the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireFrame {
    bytes: Bytes,
    header: u8,
}

/// Header length for a payload of `len` bytes.
fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= 0xFFFF {
        4
    } else {
        10
    }
}

impl WireFrame {
    /// Turns `buf` — [`HEADER_ROOM`] bytes of room followed by the payload — into a frame,
    /// writing the header into the end of the room (no copy of the payload).
    pub fn from_room(opcode: u8, mut buf: Vec<u8>) -> WireFrame {
        debug_assert!(buf.len() >= HEADER_ROOM);
        let len = buf.len().saturating_sub(HEADER_ROOM);
        let header = header_len(len);
        let start = HEADER_ROOM - header;
        let head = &mut buf[start..HEADER_ROOM];
        head[0] = FIN | opcode;
        match header {
            2 => head[1] = len as u8,
            4 => {
                head[1] = 126;
                head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                head[1] = 127;
                head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            }
        }
        let mut bytes = Bytes::from(buf);
        bytes.advance(start);
        WireFrame {
            bytes,
            header: header as u8,
        }
    }

    /// A frame carrying a copy of `payload`.
    fn copied(opcode: u8, payload: &[u8]) -> WireFrame {
        let mut buf = Vec::with_capacity(HEADER_ROOM + payload.len());
        buf.resize(HEADER_ROOM, 0);
        buf.extend_from_slice(payload);
        Self::from_room(opcode, buf)
    }

    /// A binary message from a buffer that starts with [`HEADER_ROOM`] bytes of room.
    pub fn binary_from_room(buf: Vec<u8>) -> WireFrame {
        Self::from_room(OP_BINARY, buf)
    }

    /// A binary message (copies `payload`).
    pub fn binary(payload: &[u8]) -> WireFrame {
        Self::copied(OP_BINARY, payload)
    }

    /// A text message (copies `text`).
    pub fn text(text: &str) -> WireFrame {
        Self::copied(OP_TEXT, text.as_bytes())
    }

    /// A ping with an empty payload.
    pub fn ping() -> WireFrame {
        Self::copied(OP_PING, &[])
    }

    /// The pong answering a ping with `payload` (at most 125 bytes, as the peer's ping was).
    pub fn pong(payload: &[u8]) -> WireFrame {
        Self::copied(OP_PONG, &payload[..payload.len().min(125)])
    }

    /// A close frame with `code` and `reason` (the reason cut to fit 123 bytes). Code 1005
    /// ("no status received", which must not be sent) gives a close frame without a payload.
    pub fn close(code: u16, reason: &str) -> WireFrame {
        if code == 1005 {
            return Self::copied(OP_CLOSE, &[]);
        }
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = Vec::with_capacity(2 + end);
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        Self::copied(OP_CLOSE, &payload)
    }

    /// Length of the websocket payload (what the peer's library reports as the message size).
    pub fn len(&self) -> usize {
        self.bytes.len() - self.header as usize
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole frame, header included, as it goes on the wire.
    pub fn as_wire(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

    /// Parses what we produce with tungstenite's own frame parser.
    fn parse(wire: &[u8]) -> (FrameHeader, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(wire);
        let (header, len) = FrameHeader::parse(&mut cursor)
            .expect("valid header")
            .expect("complete header");
        let start = cursor.position() as usize;
        assert_eq!(wire.len() - start, len as usize, "length field matches");
        (header, wire[start..].to_vec())
    }

    #[test]
    fn headers_for_every_length_class() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let frame = WireFrame::binary(&payload);
            assert_eq!(frame.len(), len);
            let (header, body) = parse(frame.as_wire());
            assert!(header.is_final);
            assert!(header.mask.is_none());
            assert_eq!(u8::from(header.opcode), OP_BINARY);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn matches_tungstenite_formatting() {
        for len in [3usize, 300, 70_000] {
            let payload = vec![7u8; len];
            let mut expected = Vec::new();
            Frame::message(payload.clone(), OpCode::Data(Data::Binary), true)
                .format(&mut expected)
                .expect("formats");
            assert_eq!(WireFrame::binary(&payload).as_wire(), &expected[..]);
        }
    }

    #[test]
    fn control_frames() {
        let (h, body) = parse(WireFrame::close(4001, "slow").as_wire());
        assert_eq!(u8::from(h.opcode), OP_CLOSE);
        assert_eq!(body, [&4001u16.to_be_bytes()[..], b"slow"].concat());
        let long = "é".repeat(100);
        let (_, body) = parse(WireFrame::close(1000, &long).as_wire());
        assert!(body.len() <= 125);
        assert!(std::str::from_utf8(&body[2..]).is_ok());
        let (h, body) = parse(WireFrame::close(1005, "ignored").as_wire());
        assert_eq!(u8::from(h.opcode), OP_CLOSE);
        assert!(body.is_empty());
        let (h, body) = parse(WireFrame::ping().as_wire());
        assert_eq!(u8::from(h.opcode), OP_PING);
        assert!(body.is_empty());
        let (h, body) = parse(WireFrame::pong(b"abc").as_wire());
        assert_eq!(u8::from(h.opcode), OP_PONG);
        assert_eq!(body, b"abc");
        let (h, body) = parse(WireFrame::text("héllo").as_wire());
        assert_eq!(u8::from(h.opcode), OP_TEXT);
        assert_eq!(body, "héllo".as_bytes());
    }
}
