//! JSON ↔ [`Value`] with rosbridge's conventions, for any [`MessageType`].
//!
//! - A message is an object with its fields in definition order (constants are not fields).
//! - `uint8[]`/`char[]` (any array kind) are base64 strings on the way out; on the way in, a base64
//!   string or a list of numbers.
//! - `builtin_interfaces/Time` and `Duration` are `{"sec": …, "nanosec": …}` like any message; a
//!   Time given as the string `"now"` is the current system time (as rosbridge has it).
//! - Fields left out get their defaults (the definition's, else zero/empty); `null` counts as left out.
//! - Non-finite floats go out as `null` (JSON has no NaN); on the way in, `"nan"`, `"inf"`,
//!   `"-inf"` strings are accepted.
//! - Anything else is a [`JsonError`] naming the field path (`pose.position.x`, `points[3].y`):
//!   an unknown field, a wrong type, an integer out of range, a fixed array of the wrong length, a
//!   bounded string or array over its bound.

use super::types::{field_default, ArrayKind, BaseType, FieldType, MessageType, Primitive};
use super::value::{MessageValue, Path, Value};
use base64::Engine;
use serde_json::{Map, Number, Value as Json};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct JsonError {
    /// The field path, `(message)` for the message itself.
    pub path: String,
    pub message: String,
}

fn err(path: &Path, message: impl Into<String>) -> JsonError {
    JsonError { path: path.name(), message: message.into() }
}

/// A value as JSON.
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Bool(b) => Json::Bool(*b),
        Value::Int8(x) => Json::from(*x),
        Value::Uint8(x) => Json::from(*x),
        Value::Int16(x) => Json::from(*x),
        Value::Uint16(x) => Json::from(*x),
        Value::Int32(x) => Json::from(*x),
        Value::Uint32(x) => Json::from(*x),
        Value::Int64(x) => Json::from(*x),
        Value::Uint64(x) => Json::from(*x),
        // f32 → f64 is exact; printing keeps its shortest f64 form (1.5 stays 1.5; 0.1f32 is 0.10000000149011612).
        Value::Float32(x) => Number::from_f64(f64::from(*x)).map_or(Json::Null, Json::Number),
        Value::Float64(x) => Number::from_f64(*x).map_or(Json::Null, Json::Number),
        Value::String(s) => Json::String(s.clone()),
        Value::Bytes(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        Value::Message(m) => message_to_json(m),
    }
}

pub fn message_to_json(m: &MessageValue) -> Json {
    let mut map = Map::with_capacity(m.fields.len());
    for (f, v) in m.ty.fields.iter().zip(&m.fields) {
        map.insert(f.name.clone(), to_json(v));
    }
    Json::Object(map)
}

/// A message of type `ty` from JSON (an object; fields left out get their defaults).
pub fn from_json(ty: &Arc<MessageType>, j: &Json) -> Result<MessageValue, JsonError> {
    message_from_json(ty, j, &Path::Root)
}

/// What a JSON value is, for error messages ("a string", "an array"…).
pub fn json_kind(j: &Json) -> &'static str {
    match j {
        Json::Null => "null",
        Json::Bool(_) => "a bool",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn message_from_json(ty: &Arc<MessageType>, j: &Json, path: &Path) -> Result<MessageValue, JsonError> {
    if ty.name.package == "builtin_interfaces" && ty.name.name == "Time" && j.as_str() == Some("now") {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let sec = i32::try_from(now.as_secs()).unwrap_or(i32::MAX);
        return Ok(MessageValue { ty: ty.clone(), fields: vec![Value::Int32(sec), Value::Uint32(now.subsec_nanos())] });
    }
    let obj = match j {
        Json::Object(o) => o,
        Json::Null => return Ok(MessageValue { ty: ty.clone(), fields: ty.fields.iter().map(field_default).collect() }),
        other => return Err(err(path, format!("expected an object ({}), got {}", ty.name, json_kind(other)))),
    };
    for key in obj.keys() {
        if ty.field(key).is_none() {
            let names: Vec<&str> = ty.fields.iter().map(|f| f.name.as_str()).collect();
            return Err(err(
                &Path::Field(path, key),
                format!("{} has no field '{key}' (its fields: {})", ty.name, if names.is_empty() { "none".into() } else { names.join(", ") }),
            ));
        }
    }
    let mut fields = Vec::with_capacity(ty.fields.len());
    for f in &ty.fields {
        let p = Path::Field(path, &f.name);
        fields.push(match obj.get(&f.name) {
            None | Some(Json::Null) => field_default(f),
            Some(v) => field_from_json(&f.ty, v, &p)?,
        });
    }
    Ok(MessageValue { ty: ty.clone(), fields })
}

fn check_len(kind: ArrayKind, len: usize, path: &Path) -> Result<(), JsonError> {
    match kind {
        ArrayKind::Fixed(n) if len != n => Err(err(path, format!("{len} elements for an array of exactly {n}"))),
        ArrayKind::Bounded(n) if len > n => Err(err(path, format!("{len} elements for an array of at most {n}"))),
        _ => Ok(()),
    }
}

fn field_from_json(ty: &FieldType, j: &Json, path: &Path) -> Result<Value, JsonError> {
    if !ty.is_array() {
        return single_from_json(&ty.base, j, path);
    }
    if ty.is_binary() {
        let bytes = match j {
            Json::String(s) => base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|e| err(path, format!("expected base64 or a list of numbers for {}: {e}", ty.display())))?,
            Json::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, x)| match single_from_json(&ty.base, x, &Path::Index(path, i))? {
                    Value::Uint8(b) => Ok(b),
                    _ => Err(err(path, "expected numbers 0..255")),
                })
                .collect::<Result<Vec<u8>, _>>()?,
            other => return Err(err(path, format!("expected base64 or a list of numbers for {}, got {}", ty.display(), json_kind(other)))),
        };
        check_len(ty.array, bytes.len(), path)?;
        return Ok(Value::Bytes(bytes));
    }
    let a = j.as_array().ok_or_else(|| err(path, format!("expected an array ({}), got {}", ty.display(), json_kind(j))))?;
    check_len(ty.array, a.len(), path)?;
    let items = a
        .iter()
        .enumerate()
        .map(|(i, x)| single_from_json(&ty.base, x, &Path::Index(path, i)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Value::Array(items))
}

fn int_from_json(p: Primitive, j: &Json, path: &Path) -> Result<i128, JsonError> {
    let bad = || err(path, format!("expected an integer ({}), got {j}", p.name()));
    let v: i128 = match j {
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into()
            } else if let Some(u) = n.as_u64() {
                u.into()
            } else {
                // 3.0 for an integer field is 3; 3.5 is an error.
                let f = n.as_f64().ok_or_else(bad)?;
                if f.fract() != 0.0 || !f.is_finite() || f.abs() > 1.9e19 {
                    return Err(bad());
                }
                f as i128
            }
        }
        // A one-character string for a char.
        Json::String(s) if p == Primitive::Char && s.chars().count() == 1 => s.chars().next().map_or(0, |c| c as i128),
        _ => return Err(bad()),
    };
    Ok(v)
}

fn float_from_json(j: &Json, path: &Path, name: &str) -> Result<f64, JsonError> {
    match j {
        Json::Number(n) => n.as_f64().ok_or_else(|| err(path, format!("expected a number ({name})"))),
        Json::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "nan" => Ok(f64::NAN),
            "inf" | "infinity" | "+inf" => Ok(f64::INFINITY),
            "-inf" | "-infinity" => Ok(f64::NEG_INFINITY),
            _ => Err(err(path, format!("expected a number ({name}), got the string {s:?}"))),
        },
        other => Err(err(path, format!("expected a number ({name}), got {}", json_kind(other)))),
    }
}

fn single_from_json(base: &BaseType, j: &Json, path: &Path) -> Result<Value, JsonError> {
    match base {
        BaseType::Primitive(p) => {
            let p = *p;
            if p == Primitive::Bool {
                return match j {
                    Json::Bool(b) => Ok(Value::Bool(*b)),
                    Json::Number(n) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => Ok(Value::Bool(n.as_u64() == Some(1))),
                    other => Err(err(path, format!("expected a bool, got {}", json_kind(other)))),
                };
            }
            if p == Primitive::Float32 {
                let f = float_from_json(j, path, "float32")?;
                if f.is_finite() && f.abs() > f64::from(f32::MAX) {
                    return Err(err(path, format!("{f} is out of range for float32")));
                }
                return Ok(Value::Float32(f as f32));
            }
            if p == Primitive::Float64 {
                return Ok(Value::Float64(float_from_json(j, path, "float64")?));
            }
            let v = int_from_json(p, j, path)?;
            let out = |ok: Option<Value>| ok.ok_or_else(|| err(path, format!("{v} is out of range for {}", p.name())));
            match p {
                Primitive::Int8 => out(i8::try_from(v).ok().map(Value::Int8)),
                Primitive::Byte | Primitive::Char | Primitive::Uint8 => out(u8::try_from(v).ok().map(Value::Uint8)),
                Primitive::Int16 => out(i16::try_from(v).ok().map(Value::Int16)),
                Primitive::Uint16 => out(u16::try_from(v).ok().map(Value::Uint16)),
                Primitive::Int32 => out(i32::try_from(v).ok().map(Value::Int32)),
                Primitive::Uint32 => out(u32::try_from(v).ok().map(Value::Uint32)),
                Primitive::Int64 => out(i64::try_from(v).ok().map(Value::Int64)),
                Primitive::Uint64 => out(u64::try_from(v).ok().map(Value::Uint64)),
                Primitive::Bool | Primitive::Float32 | Primitive::Float64 => unreachable!("handled above"),
            }
        }
        BaseType::String { bound } | BaseType::WString { bound } => {
            let s = j.as_str().ok_or_else(|| err(path, format!("expected a string, got {}", json_kind(j))))?;
            if let Some(b) = bound {
                let len = if matches!(base, BaseType::WString { .. }) { s.encode_utf16().count() } else { s.len() };
                if len > *b {
                    return Err(err(path, format!("{len} characters for a string of at most {b}")));
                }
            }
            Ok(Value::String(s.to_string()))
        }
        BaseType::Message(t) => Ok(Value::Message(message_from_json(t, j, path)?)),
    }
}
