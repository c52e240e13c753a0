//! JSON text frames: the same frames as the binary encoding, as flat JSON objects with a
//! `"type"` field, for peers written in other languages (browsers, Node.js).
//!
//! Payloads are bytes on the wire. In JSON a payload travels as `"data"` (any JSON value; the
//! payload is that value's JSON text) or as `"data_b64"` (standard base64, for bytes that are not
//! JSON). The server writes `"data"` whenever the payload is valid JSON, else `"data_b64"`.

use crate::binary::DecodeError;
use crate::frames::{ClientFrame, ErrorCode, LeaveReason, Member, ServerFrame, Target, Welcome};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The flat shape every JSON client frame is read into; `kind` says which fields matter.
#[derive(Deserialize)]
struct JsonIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    subject: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pattern: Option<Cow<'a, str>>,
    #[serde(default)]
    corr: Option<u64>,
    #[serde(default)]
    timeout_ms: Option<u32>,
    #[serde(default)]
    nonce: Option<u64>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data_b64: Option<Cow<'a, str>>,
}

fn missing(field: &str, kind: &str) -> DecodeError {
    DecodeError::Json(serde::de::Error::custom(format!(
        "a \"{kind}\" frame needs the field \"{field}\""
    )))
}

fn need<T>(value: Option<T>, field: &str, kind: &str) -> Result<T, DecodeError> {
    value.ok_or_else(|| missing(field, kind))
}

/// Decodes a JSON text frame sent by a client.
pub fn decode_client(text: &str) -> Result<ClientFrame<'_>, DecodeError> {
    let frame: JsonIn<'_> = serde_json::from_str(text)?;
    let kind = frame.kind.as_ref();
    let payload = || -> Result<Cow<'_, [u8]>, DecodeError> {
        match (&frame.data, &frame.data_b64) {
            (Some(raw), _) => Ok(Cow::Borrowed(raw.get().as_bytes())),
            (None, Some(b64)) => Ok(Cow::Owned(
                base64::engine::general_purpose::STANDARD.decode(b64.as_bytes())?,
            )),
            (None, None) => Ok(Cow::Borrowed(&[])),
        }
    };
    Ok(match kind {
        "send" => ClientFrame::Send {
            to: need(frame.to.clone(), "to", kind)?,
            payload: payload()?,
        },
        "broadcast" => ClientFrame::Broadcast {
            payload: payload()?,
        },
        "publish" => ClientFrame::Publish {
            subject: need(frame.subject.clone(), "subject", kind)?,
            payload: payload()?,
        },
        "subscribe" => ClientFrame::Subscribe {
            pattern: need(frame.pattern.clone(), "pattern", kind)?,
        },
        "unsubscribe" => ClientFrame::Unsubscribe {
            pattern: need(frame.pattern.clone(), "pattern", kind)?,
        },
        "request" => {
            let target = match (&frame.to, &frame.subject) {
                (Some(to), None) => Target::Peer(to.clone()),
                (None, Some(subject)) => Target::Subject(subject.clone()),
                _ => return Err(missing("to\" or \"subject", kind)),
            };
            ClientFrame::Request {
                corr: need(frame.corr, "corr", kind)?,
                target,
                timeout_ms: need(frame.timeout_ms, "timeout_ms", kind)?,
                payload: payload()?,
            }
        }
        "reply" => ClientFrame::Reply {
            to: need(frame.to.clone(), "to", kind)?,
            corr: need(frame.corr, "corr", kind)?,
            payload: payload()?,
        },
        "ping" => ClientFrame::Ping {
            nonce: frame.nonce.unwrap_or(0),
        },
        other => {
            return Err(DecodeError::Json(serde::de::Error::custom(format!(
                "unknown frame type \"{other}\""
            ))))
        }
    })
}

/// `"data": null` is the payload `null`, not an absent payload.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The flat shape every JSON server frame is written from.
#[derive(Serialize, Default)]
struct JsonOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_payload: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keepalive_ms: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<&'a [Member<'a>]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<LeaveReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    corr: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<ErrorCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_b64: Option<String>,
}

impl<'a> JsonOut<'a> {
    fn with_payload(mut self, payload: &'a [u8]) -> Self {
        match serde_json::from_slice::<&RawValue>(payload) {
            Ok(raw) => self.data = Some(raw),
            Err(_) => {
                self.data_b64 = Some(base64::engine::general_purpose::STANDARD.encode(payload))
            }
        }
        self
    }
}

/// Encodes a server frame as a JSON text frame.
pub fn encode_server(frame: &ServerFrame<'_>) -> String {
    let out = match frame {
        ServerFrame::Welcome(Welcome {
            version,
            peer,
            epoch,
            max_payload,
            keepalive_ms,
            members,
        }) => JsonOut {
            kind: "welcome",
            version: Some(*version),
            peer: Some(peer),
            epoch: Some(*epoch),
            max_payload: Some(*max_payload),
            keepalive_ms: Some(*keepalive_ms),
            members: Some(members),
            ..JsonOut::default()
        },
        ServerFrame::Joined { peer, epoch } => JsonOut {
            kind: "joined",
            peer: Some(peer),
            epoch: Some(*epoch),
            ..JsonOut::default()
        },
        ServerFrame::Left {
            peer,
            epoch,
            reason,
        } => JsonOut {
            kind: "left",
            peer: Some(peer),
            epoch: Some(*epoch),
            reason: Some(*reason),
            ..JsonOut::default()
        },
        ServerFrame::Message { from, payload } => JsonOut {
            kind: "message",
            from: Some(from),
            ..JsonOut::default()
        }
        .with_payload(payload),
        ServerFrame::Broadcast { from, payload } => JsonOut {
            kind: "broadcast",
            from: Some(from),
            ..JsonOut::default()
        }
        .with_payload(payload),
        ServerFrame::Published {
            from,
            subject,
            payload,
        } => JsonOut {
            kind: "published",
            from: Some(from),
            subject: Some(Some(subject)),
            ..JsonOut::default()
        }
        .with_payload(payload),
        ServerFrame::Request {
            from,
            corr,
            subject,
            timeout_ms,
            payload,
        } => JsonOut {
            kind: "request",
            from: Some(from),
            corr: Some(*corr),
            subject: Some(subject.as_deref()),
            timeout_ms: Some(*timeout_ms),
            ..JsonOut::default()
        }
        .with_payload(payload),
        ServerFrame::Reply {
            from,
            corr,
            payload,
        } => JsonOut {
            kind: "reply",
            from: Some(from),
            corr: Some(*corr),
            ..JsonOut::default()
        }
        .with_payload(payload),
        ServerFrame::Error {
            code,
            corr,
            target,
            message,
        } => JsonOut {
            kind: "error",
            code: Some(*code),
            corr: Some(*corr),
            target: Some(target),
            message: Some(message),
            ..JsonOut::default()
        },
        ServerFrame::Pong { nonce } => JsonOut {
            kind: "pong",
            nonce: Some(*nonce),
            ..JsonOut::default()
        },
    };
    // Every field is a plain string, number or already-valid raw JSON: this cannot fail.
    serde_json::to_string(&out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_client_frames_decode() {
        let f = decode_client(r#"{"type":"send","to":"b","data":{"x":[1,2]}}"#).expect("send");
        assert_eq!(
            f,
            ClientFrame::Send {
                to: "b".into(),
                payload: Cow::Borrowed(br#"{"x":[1,2]}"#)
            }
        );
        let f =
            decode_client(r#"{"type":"publish","subject":"a.b","data_b64":"AAEC"}"#).expect("pub");
        assert_eq!(
            f,
            ClientFrame::Publish {
                subject: "a.b".into(),
                payload: Cow::Owned(vec![0, 1, 2])
            }
        );
        let f = decode_client(r#"{"type":"request","corr":5,"subject":"svc","timeout_ms":100}"#)
            .expect("request");
        assert!(matches!(
            f,
            ClientFrame::Request {
                corr: 5,
                target: Target::Subject(_),
                ..
            }
        ));
        assert!(
            decode_client(r#"{"type":"send","data":1}"#).is_err(),
            "missing to"
        );
        let f = decode_client(r#"{"type":"broadcast","data":null}"#).expect("null data");
        assert_eq!(
            f,
            ClientFrame::Broadcast {
                payload: Cow::Borrowed(b"null")
            }
        );
        let f = decode_client(r#"{"type":"broadcast"}"#).expect("no data");
        assert_eq!(
            f,
            ClientFrame::Broadcast {
                payload: Cow::Borrowed(b"")
            }
        );
        assert!(decode_client(r#"{"type":"teleport"}"#).is_err());
        assert!(decode_client("not json").is_err());
    }

    #[test]
    fn json_server_frames_pick_data_or_base64() {
        let text = encode_server(&ServerFrame::Message {
            from: "a".into(),
            payload: Cow::Borrowed(b"[1,2]"),
        });
        assert_eq!(text, r#"{"type":"message","from":"a","data":[1,2]}"#);
        let text = encode_server(&ServerFrame::Message {
            from: "a".into(),
            payload: Cow::Borrowed(&[0xff, 0]),
        });
        assert_eq!(text, r#"{"type":"message","from":"a","data_b64":"/wA="}"#);
        let text = encode_server(&ServerFrame::Request {
            from: "a".into(),
            corr: 1,
            subject: None,
            timeout_ms: 9,
            payload: Cow::Borrowed(b"\"q\""),
        });
        assert_eq!(
            text,
            r#"{"type":"request","from":"a","subject":null,"corr":1,"timeout_ms":9,"data":"q"}"#
        );
    }
}
