//! A ROS message as a typed value tree: what CDR decodes into and encodes from, and what JSON (and
//! later CBOR) are renderings of. Each message value carries its [`MessageType`], so a value knows
//! its field names and types without a schema beside it.

use super::types::MessageType;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Bool(bool),
    Int8(i8),
    /// `uint8`, `byte` and `char`.
    Uint8(u8),
    Int16(i16),
    Uint16(u16),
    Int32(i32),
    Uint32(u32),
    Int64(i64),
    Uint64(u64),
    Float32(f32),
    Float64(f64),
    /// `string` and `wstring`.
    String(String),
    /// An array (fixed, bounded or not) of `uint8` or `char`: binary data.
    Bytes(Vec<u8>),
    /// Any other array.
    Array(Vec<Value>),
    Message(MessageValue),
}

#[derive(Clone, Debug)]
pub struct MessageValue {
    pub ty: Arc<MessageType>,
    /// One value per field of `ty`, in order.
    pub fields: Vec<Value>,
}

impl PartialEq for MessageValue {
    fn eq(&self, other: &Self) -> bool {
        self.ty.name == other.ty.name && self.fields == other.fields
    }
}

impl MessageValue {
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.ty.field(field).and_then(|(i, _)| self.fields.get(i))
    }

    pub fn get_mut(&mut self, field: &str) -> Option<&mut Value> {
        let i = self.ty.field(field)?.0;
        self.fields.get_mut(i)
    }
}

impl Value {
    /// The value at a dotted path with optional indexes: `pose.position.x`, `poses[2].x`, `data[0]`.
    pub fn path(&self, path: &str) -> Option<&Value> {
        let mut v = self;
        for part in path.split('.').filter(|p| !p.is_empty()) {
            let (name, indexes) = split_indexes(part)?;
            if !name.is_empty() {
                v = match v {
                    Value::Message(m) => m.get(name)?,
                    _ => return None,
                };
            }
            for i in indexes {
                v = match v {
                    Value::Array(a) => a.get(i)?,
                    _ => return None,
                };
            }
        }
        Some(v)
    }

    /// Mutable access by the same paths as [`Value::path`].
    pub fn path_mut(&mut self, path: &str) -> Option<&mut Value> {
        let mut v = self;
        for part in path.split('.').filter(|p| !p.is_empty()) {
            let (name, indexes) = split_indexes(part)?;
            if !name.is_empty() {
                v = match v {
                    Value::Message(m) => m.get_mut(name)?,
                    _ => return None,
                };
            }
            for i in indexes {
                v = match v {
                    Value::Array(a) => a.get_mut(i)?,
                    _ => return None,
                };
            }
        }
        Some(v)
    }

    /// A number as f64 (integers too; large 64-bit integers lose precision); None for the rest.
    pub fn as_f64(&self) -> Option<f64> {
        Some(match *self {
            Value::Int8(v) => v.into(),
            Value::Uint8(v) => v.into(),
            Value::Int16(v) => v.into(),
            Value::Uint16(v) => v.into(),
            Value::Int32(v) => v.into(),
            Value::Uint32(v) => v.into(),
            Value::Int64(v) => v as f64,
            Value::Uint64(v) => v as f64,
            Value::Float32(v) => v.into(),
            Value::Float64(v) => v,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_message(&self) -> Option<&MessageValue> {
        match self {
            Value::Message(m) => Some(m),
            _ => None,
        }
    }

    /// Set a number in place, keeping this value's type (clamped into its range, rounded for
    /// integers): for value limits such as "linear.x ≤ 0.5". False if this is not a number.
    pub fn set_f64(&mut self, x: f64) -> bool {
        fn int<T: TryFrom<i128>>(x: f64, lo: i128, hi: i128) -> Option<T> {
            if x.is_nan() {
                return None;
            }
            let r = x.round().clamp(lo as f64, hi as f64) as i128;
            T::try_from(r.clamp(lo, hi)).ok()
        }
        let ok = match self {
            Value::Float32(v) => {
                *v = x as f32;
                true
            }
            Value::Float64(v) => {
                *v = x;
                true
            }
            Value::Int8(v) => int(x, i8::MIN.into(), i8::MAX.into()).map(|n| *v = n).is_some(),
            Value::Uint8(v) => int(x, 0, u8::MAX.into()).map(|n| *v = n).is_some(),
            Value::Int16(v) => int(x, i16::MIN.into(), i16::MAX.into()).map(|n| *v = n).is_some(),
            Value::Uint16(v) => int(x, 0, u16::MAX.into()).map(|n| *v = n).is_some(),
            Value::Int32(v) => int(x, i32::MIN.into(), i32::MAX.into()).map(|n| *v = n).is_some(),
            Value::Uint32(v) => int(x, 0, u32::MAX.into()).map(|n| *v = n).is_some(),
            Value::Int64(v) => int(x, i64::MIN.into(), i64::MAX.into()).map(|n| *v = n).is_some(),
            Value::Uint64(v) => int(x, 0, u64::MAX.into()).map(|n| *v = n).is_some(),
            _ => false,
        };
        ok
    }
}

fn split_indexes(part: &str) -> Option<(&str, Vec<usize>)> {
    let (name, mut rest) = match part.find('[') {
        Some(i) => (&part[..i], &part[i..]),
        None => return Some((part, Vec::new())),
    };
    let mut idx = Vec::new();
    while !rest.is_empty() {
        let close = rest.find(']')?;
        idx.push(rest.get(1..close)?.trim().parse().ok()?);
        rest = &rest[close + 1..];
        if !rest.is_empty() && !rest.starts_with('[') {
            return None;
        }
    }
    Some((name, idx))
}

/// A field path, built on the stack as the codecs descend and only written out for an error.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    /// `pose.position.x`, `poses[3]`; `(message)` for the message itself.
    pub(crate) fn name(&self) -> String {
        fn write(p: &Path, out: &mut String) {
            match p {
                Path::Root => {}
                Path::Field(parent, n) => {
                    write(parent, out);
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(n);
                }
                Path::Index(parent, i) => {
                    write(parent, out);
                    out.push_str(&format!("[{i}]"));
                }
            }
        }
        let mut s = String::new();
        write(self, &mut s);
        if s.is_empty() {
            "(message)".into()
        } else {
            s
        }
    }
}
