//! The values of the JSON-like tree, their JSON form, and their encoding as leaf records.
//!
//! Record value = tag byte + payload: 1 object, 2 array (containers; their children are
//! separate records), 3 false, 4 true, 5 i64 LE, 6 f64 LE bits, 7 UTF-8 string, 8 binary,
//! 9 chunked (inner tag 7|8, u64 total length; the bytes follow in hidden chunk records,
//! tag 10, of at most [`CHUNK`] bytes). Null is never stored: a null value is an absent node.

use base64::Engine as _;
use std::collections::BTreeMap;

pub const T_OBJECT: u8 = 1;
pub const T_ARRAY: u8 = 2;
pub const T_FALSE: u8 = 3;
pub const T_TRUE: u8 = 4;
pub const T_INT: u8 = 5;
pub const T_FLOAT: u8 = 6;
pub const T_STRING: u8 = 7;
pub const T_BINARY: u8 = 8;
pub const T_CHUNKED: u8 = 9;
pub const T_CHUNK: u8 = 10;
/// Bytes per chunk record of a long string or binary value.
pub const CHUNK: usize = 1000;
const _: () = assert!(CHUNK < crate::page::MAX_INLINE_VALUE);

/// A value in the tree.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Binary(Vec<u8>),
    Array(Vec<Value>),
    Object(BTreeMap<String, Value>),
}

/// What a node is, without its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    Bool,
    Int,
    Float,
    String,
    Binary,
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// JSON form; binary becomes `{"$binary": "<base64>"}`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::String(s) => J::String(s.clone()),
            Value::Binary(b) => {
                let mut m = serde_json::Map::new();
                m.insert(
                    "$binary".into(),
                    J::String(base64::engine::general_purpose::STANDARD.encode(b)),
                );
                J::Object(m)
            }
            Value::Array(a) => J::Array(a.iter().map(Value::to_json).collect()),
            Value::Object(o) => {
                J::Object(o.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    /// From JSON; `{"$binary": "<base64>"}` becomes binary.
    pub fn from_json(j: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match j {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => Value::String(s.clone()),
            J::Array(a) => Value::Array(a.iter().map(Value::from_json).collect()),
            J::Object(o) => {
                if o.len() == 1 {
                    if let Some(J::String(b)) = o.get("$binary") {
                        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b) {
                            return Value::Binary(bytes);
                        }
                    }
                }
                Value::Object(
                    o.iter()
                        .map(|(k, v)| (k.clone(), Value::from_json(v)))
                        .collect(),
                )
            }
        }
    }
}

impl From<serde_json::Value> for Value {
    fn from(j: serde_json::Value) -> Value {
        Value::from_json(&j)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::String(s)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Float(f)
    }
}

/// Encoded record of a scalar or container marker. Long strings/binaries return the head
/// record; the caller writes the chunks (see [`chunks`]).
pub fn encode_record(v: &Value, out: &mut Vec<u8>) {
    out.clear();
    match v {
        Value::Null => {}
        Value::Object(_) => out.push(T_OBJECT),
        Value::Array(_) => out.push(T_ARRAY),
        Value::Bool(false) => out.push(T_FALSE),
        Value::Bool(true) => out.push(T_TRUE),
        Value::Int(i) => {
            out.push(T_INT);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Value::Float(f) => {
            out.push(T_FLOAT);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::String(s) => bytes_record(T_STRING, s.as_bytes(), out),
        Value::Binary(b) => bytes_record(T_BINARY, b, out),
    }
}

fn bytes_record(tag: u8, b: &[u8], out: &mut Vec<u8>) {
    if b.len() <= CHUNK {
        out.push(tag);
        out.extend_from_slice(b);
    } else {
        out.push(T_CHUNKED);
        out.push(tag);
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    }
}

/// The chunks of a long string/binary (empty when it fits its head record).
pub fn chunks(v: &Value) -> Vec<&[u8]> {
    let b: &[u8] = match v {
        Value::String(s) => s.as_bytes(),
        Value::Binary(b) => b,
        _ => return Vec::new(),
    };
    if b.len() <= CHUNK {
        return Vec::new();
    }
    b.chunks(CHUNK).collect()
}

/// Hidden segment of chunk `i`: 0x02 then 5 bytes of 7 bits with the high bit set (never 0x00,
/// ordered).
pub fn chunk_segment(i: usize, out: &mut Vec<u8>) {
    out.push(crate::path::CHUNK_MARK);
    for s in (0..5).rev() {
        out.push(0x80 | ((i >> (7 * s)) & 0x7f) as u8);
    }
}

/// Kind of a record, or None if the tag is unknown.
pub fn record_kind(r: &[u8]) -> Option<Kind> {
    Some(match *r.first()? {
        T_OBJECT => Kind::Object,
        T_ARRAY => Kind::Array,
        T_FALSE | T_TRUE => Kind::Bool,
        T_INT => Kind::Int,
        T_FLOAT => Kind::Float,
        T_STRING => Kind::String,
        T_BINARY => Kind::Binary,
        T_CHUNKED => match r.get(1) {
            Some(&T_STRING) => Kind::String,
            Some(&T_BINARY) => Kind::Binary,
            _ => return None,
        },
        _ => return None,
    })
}

/// Decode an inline scalar record (not containers, not chunked heads).
pub fn decode_scalar(r: &[u8]) -> Option<Value> {
    let (&tag, rest) = r.split_first()?;
    Some(match tag {
        T_FALSE => Value::Bool(false),
        T_TRUE => Value::Bool(true),
        T_INT => Value::Int(i64::from_le_bytes(rest.try_into().ok()?)),
        T_FLOAT => Value::Float(f64::from_bits(u64::from_le_bytes(rest.try_into().ok()?))),
        T_STRING => Value::String(String::from_utf8(rest.to_vec()).ok()?),
        T_BINARY => Value::Binary(rest.to_vec()),
        _ => return None,
    })
}

/// Head of a chunked record: (inner tag, total length).
pub fn chunked_head(r: &[u8]) -> Option<(u8, u64)> {
    if r.len() != 10 || r[0] != T_CHUNKED {
        return None;
    }
    Some((r[1], u64::from_le_bytes(r[2..10].try_into().ok()?)))
}

/// Assemble a chunked value's bytes.
pub fn from_chunks(tag: u8, bytes: Vec<u8>) -> Option<Value> {
    match tag {
        T_STRING => String::from_utf8(bytes).ok().map(Value::String),
        T_BINARY => Some(Value::Binary(bytes)),
        _ => None,
    }
}
