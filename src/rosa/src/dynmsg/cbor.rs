//! [`Value`] and JSON → CBOR (RFC 8949), for rosbridge's `cbor` and `cbor-raw` compressions.
//!
//! A message is a map with its fields in definition order; `uint8[]`/`char[]` are byte strings
//! (as rosbridge_suite sends them, and roslibjs's decoder reads them into `Uint8Array`s); numbers
//! keep their width (a `float32` is a CBOR single, a `float64` a double); other arrays are arrays.

use super::value::{MessageValue, Value};
use serde_json::Value as Json;

/// Append a CBOR head: major type `major`, argument `n` in the shortest form.
pub fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if let Ok(n) = u8::try_from(n) {
        out.extend_from_slice(&[m | 24, n]);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(m | 25);
        out.extend_from_slice(&n.to_be_bytes());
    } else if let Ok(n) = u32::try_from(n) {
        out.push(m | 26);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn int(out: &mut Vec<u8>, v: i128) {
    if v >= 0 {
        head(out, 0, v as u64);
    } else {
        // -1 - n
        head(out, 1, (-1 - v) as u64);
    }
}

pub fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, 2, b.len() as u64);
    out.extend_from_slice(b);
}

/// The head of a map of `n` pairs (write the keys and values after it).
pub fn map_head(out: &mut Vec<u8>, n: usize) {
    head(out, 5, n as u64);
}

/// Append a value.
pub fn encode_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
        Value::Int8(x) => int(out, (*x).into()),
        Value::Uint8(x) => int(out, (*x).into()),
        Value::Int16(x) => int(out, (*x).into()),
        Value::Uint16(x) => int(out, (*x).into()),
        Value::Int32(x) => int(out, (*x).into()),
        Value::Uint32(x) => int(out, (*x).into()),
        Value::Int64(x) => int(out, (*x).into()),
        Value::Uint64(x) => int(out, (*x).into()),
        Value::Float32(x) => {
            out.push(0xfa);
            out.extend_from_slice(&x.to_be_bytes());
        }
        Value::Float64(x) => {
            out.push(0xfb);
            out.extend_from_slice(&x.to_be_bytes());
        }
        Value::String(s) => text(out, s),
        Value::Bytes(b) => bytes(out, b),
        Value::Array(a) => {
            head(out, 4, a.len() as u64);
            for x in a {
                encode_value(out, x);
            }
        }
        Value::Message(m) => encode_message(out, m),
    }
}

/// Append a message as a map of its fields.
pub fn encode_message(out: &mut Vec<u8>, m: &MessageValue) {
    map_head(out, m.fields.len());
    for (f, v) in m.ty.fields.iter().zip(&m.fields) {
        text(out, &f.name);
        encode_value(out, v);
    }
}

/// Append a JSON value (integers as integers, other numbers as doubles).
pub fn encode_json(out: &mut Vec<u8>, j: &Json) {
    match j {
        Json::Null => out.push(0xf6),
        Json::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                head(out, 0, u);
            } else if let Some(i) = n.as_i64() {
                int(out, i.into());
            } else {
                out.push(0xfb);
                out.extend_from_slice(&n.as_f64().unwrap_or(f64::NAN).to_be_bytes());
            }
        }
        Json::String(s) => text(out, s),
        Json::Array(a) => {
            head(out, 4, a.len() as u64);
            for x in a {
                encode_json(out, x);
            }
        }
        Json::Object(o) => {
            map_head(out, o.len());
            for (k, v) in o {
                text(out, k);
                encode_json(out, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_shortest() {
        let mut o = Vec::new();
        head(&mut o, 0, 23);
        head(&mut o, 0, 24);
        head(&mut o, 0, 256);
        head(&mut o, 0, 70_000);
        head(&mut o, 0, 1 << 40);
        assert_eq!(o, [0x17, 0x18, 24, 0x19, 1, 0, 0x1a, 0, 1, 0x11, 0x70, 0x1b, 0, 0, 1, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn values_as_rfc8949_examples() {
        let enc = |v: Value| {
            let mut o = Vec::new();
            encode_value(&mut o, &v);
            o
        };
        assert_eq!(enc(Value::Int8(-1)), [0x20]);
        assert_eq!(enc(Value::Int64(-1000)), [0x39, 0x03, 0xe7]);
        assert_eq!(enc(Value::Float64(1.1)), [0xfb, 0x3f, 0xf1, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a]);
        assert_eq!(enc(Value::Float32(100000.0)), [0xfa, 0x47, 0xc3, 0x50, 0x00]);
        assert_eq!(enc(Value::String("IETF".into())), [0x64, 0x49, 0x45, 0x54, 0x46]);
        assert_eq!(enc(Value::Bytes(vec![1, 2, 3, 4])), [0x44, 1, 2, 3, 4]);
        assert_eq!(enc(Value::Array(vec![Value::Uint8(1), Value::Uint16(2)])), [0x82, 1, 2]);
        assert_eq!(enc(Value::Uint64(u64::MAX)), [0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let mut o = Vec::new();
        encode_json(&mut o, &serde_json::json!({"a": 1, "b": [2, 3]}));
        assert_eq!(o, [0xa2, 0x61, 0x61, 0x01, 0x61, 0x62, 0x82, 0x02, 0x03]);
    }
}
