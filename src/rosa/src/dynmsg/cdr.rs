//! CDR, as ROS 2 puts it on the wire and in bags, driven by a [`MessageType`]: encode a
//! [`MessageValue`] into bytes, decode bytes into one. Pure Rust, no ROS.
//!
//! The encoding is what Fast DDS (rmw_fastrtps, ROS 2 Jazzy) writes: a 4-byte encapsulation header
//! (`00 01 00 00`, little-endian plain CDR), then the fields in order, each primitive aligned to its
//! size (8-byte types to 8) counted from the end of the header; strings as a `uint32` length that
//! includes the terminating NUL, the bytes and the NUL; `wstring`s as a `uint32` count of UTF-16
//! code units, each written as 4 bytes; sequences as a `uint32` count and the elements; fixed
//! arrays as their elements; an empty message as one zero byte; nothing after the last field. That
//! is byte for byte what an rclpy publisher puts on the wire (padding bytes are zero here; Fast DDS
//! leaves them uninitialised: see [`padding_mask`]). rclpy's `serialize_message` gives the same
//! bytes followed by slack: rmw sizes its buffer by an estimate (plain types rounded up to 4
//! bytes, alignment counted for empty sequences, a terminator for each wstring).
//!
//! The decoder takes little- and big-endian plain CDR, ignores trailing padding, and returns a
//! clear error (with the field path and byte offset) for truncated or inconsistent data, never
//! panicking and never allocating more than the data could hold.

use super::types::{ArrayKind, BaseType, FieldType, MessageType, Primitive};
use super::value::{MessageValue, Path, Value};
use std::sync::Arc;

/// The encapsulation header rosa writes: CDR, little-endian.
pub const CDR_LE: [u8; 4] = [0x00, 0x01, 0x00, 0x00];

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CdrError {
    #[error("{path}: {message}")]
    Encode { path: String, message: String },
    #[error("CDR data ends early: {path} needs bytes past the end ({len} bytes)")]
    Truncated { path: String, len: usize },
    #[error("invalid CDR at byte {offset}: {path}: {message}")]
    Invalid { path: String, offset: usize, message: String },
    #[error("unsupported CDR encapsulation {0:02x} {1:02x} (rosa reads plain CDR, little or big endian)")]
    Encapsulation(u8, u8),
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

struct Writer<'a> {
    buf: &'a mut Vec<u8>,
    origin: usize,
    pad: u8,
}

impl Writer<'_> {
    fn align(&mut self, n: usize) {
        let pos = self.buf.len() - self.origin;
        let pad = (n - pos % n) % n;
        self.buf.resize(self.buf.len() + pad, self.pad);
    }
    fn u32(&mut self, v: u32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
}

fn enc_err(path: &Path, message: impl Into<String>) -> CdrError {
    CdrError::Encode { path: path.name(), message: message.into() }
}

/// Encode a message into CDR (header included).
pub fn encode(msg: &MessageValue) -> Result<Vec<u8>, CdrError> {
    let mut buf = Vec::with_capacity(64);
    encode_into(msg, &mut buf)?;
    Ok(buf)
}

/// Encode into `buf` (cleared first), so a caller can reuse one buffer.
pub fn encode_into(msg: &MessageValue, buf: &mut Vec<u8>) -> Result<(), CdrError> {
    encode_padded(msg, buf, 0)
}

fn encode_padded(msg: &MessageValue, buf: &mut Vec<u8>, pad: u8) -> Result<(), CdrError> {
    buf.clear();
    buf.extend_from_slice(&CDR_LE);
    let mut w = Writer { buf, origin: 4, pad };
    write_message(&mut w, msg, &Path::Root)
}

/// Which bytes of `encode(msg)` are alignment padding (true) rather than data: Fast DDS leaves
/// its padding uninitialised, so comparisons with its bytes skip these.
pub fn padding_mask(msg: &MessageValue) -> Result<Vec<bool>, CdrError> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    encode_padded(msg, &mut a, 0x00)?;
    encode_padded(msg, &mut b, 0xff)?;
    Ok(a.iter().zip(&b).map(|(x, y)| x != y).collect())
}

fn write_message(w: &mut Writer, msg: &MessageValue, path: &Path) -> Result<(), CdrError> {
    if msg.ty.fields.is_empty() {
        w.buf.push(0);
        return Ok(());
    }
    if msg.fields.len() != msg.ty.fields.len() {
        return Err(enc_err(path, format!("{} values for the {} fields of {}", msg.fields.len(), msg.ty.fields.len(), msg.ty.name)));
    }
    for (f, v) in msg.ty.fields.iter().zip(&msg.fields) {
        write_field(w, &f.ty, v, &Path::Field(path, &f.name))?;
    }
    Ok(())
}

fn write_field(w: &mut Writer, ty: &FieldType, v: &Value, path: &Path) -> Result<(), CdrError> {
    match ty.array {
        ArrayKind::Single => write_single(w, &ty.base, v, path),
        kind => {
            let len = match v {
                Value::Bytes(b) => b.len(),
                Value::Array(a) => a.len(),
                _ => return Err(enc_err(path, format!("expected an array ({}), got {}", ty.display(), kind_name(v)))),
            };
            match kind {
                ArrayKind::Fixed(n) if len != n => return Err(enc_err(path, format!("{len} elements for an array of exactly {n}"))),
                ArrayKind::Bounded(n) if len > n => return Err(enc_err(path, format!("{len} elements for an array of at most {n}"))),
                ArrayKind::Fixed(_) => {}
                _ => w.u32(u32::try_from(len).map_err(|_| enc_err(path, "more than 2^32 elements"))?),
            }
            match v {
                Value::Bytes(b) => match ty.base {
                    BaseType::Primitive(p) if p.size() == 1 => {
                        w.buf.extend_from_slice(b);
                        Ok(())
                    }
                    _ => Err(enc_err(path, format!("binary data for an array of {}", ty.display()))),
                },
                Value::Array(a) => {
                    for (i, e) in a.iter().enumerate() {
                        write_single(w, &ty.base, e, &Path::Index(path, i))?;
                    }
                    Ok(())
                }
                _ => unreachable!("checked above"),
            }
        }
    }
}

fn write_single(w: &mut Writer, base: &BaseType, v: &Value, path: &Path) -> Result<(), CdrError> {
    macro_rules! prim {
        ($x:expr, $n:expr) => {{
            w.align($n);
            w.buf.extend_from_slice(&$x.to_le_bytes());
            Ok(())
        }};
    }
    match (base, v) {
        (BaseType::Primitive(p), v) => match (p, v) {
            (Primitive::Bool, Value::Bool(b)) => {
                w.buf.push(u8::from(*b));
                Ok(())
            }
            (Primitive::Byte | Primitive::Char | Primitive::Uint8, Value::Uint8(x)) => prim!(x, 1),
            (Primitive::Int8, Value::Int8(x)) => prim!(x, 1),
            (Primitive::Int16, Value::Int16(x)) => prim!(x, 2),
            (Primitive::Uint16, Value::Uint16(x)) => prim!(x, 2),
            (Primitive::Int32, Value::Int32(x)) => prim!(x, 4),
            (Primitive::Uint32, Value::Uint32(x)) => prim!(x, 4),
            (Primitive::Float32, Value::Float32(x)) => prim!(x, 4),
            (Primitive::Int64, Value::Int64(x)) => prim!(x, 8),
            (Primitive::Uint64, Value::Uint64(x)) => prim!(x, 8),
            (Primitive::Float64, Value::Float64(x)) => prim!(x, 8),
            _ => Err(enc_err(path, format!("expected {}, got {}", p.name(), kind_name(v)))),
        },
        (BaseType::String { bound }, Value::String(s)) => {
            if let Some(b) = bound {
                if s.len() > *b {
                    return Err(enc_err(path, format!("string of {} bytes for string<={b}", s.len())));
                }
            }
            let n = u32::try_from(s.len() + 1).map_err(|_| enc_err(path, "string longer than 4 GiB"))?;
            w.u32(n);
            w.buf.extend_from_slice(s.as_bytes());
            w.buf.push(0);
            Ok(())
        }
        (BaseType::WString { bound }, Value::String(s)) => {
            let units: Vec<u16> = s.encode_utf16().collect();
            if let Some(b) = bound {
                if units.len() > *b {
                    return Err(enc_err(path, format!("wstring of {} characters for wstring<={b}", units.len())));
                }
            }
            w.u32(u32::try_from(units.len()).map_err(|_| enc_err(path, "wstring too long"))?);
            for u in units {
                w.buf.extend_from_slice(&u32::from(u).to_le_bytes());
            }
            Ok(())
        }
        (BaseType::Message(t), Value::Message(m)) => {
            if m.ty.name != t.name {
                return Err(enc_err(path, format!("expected a {}, got a {}", t.name, m.ty.name)));
            }
            write_message(w, m, path)
        }
        (base, v) => Err(enc_err(
            path,
            format!(
                "expected {}, got {}",
                FieldType { base: base.clone(), array: ArrayKind::Single }.display(),
                kind_name(v)
            ),
        )),
    }
}

pub(crate) fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "a bool",
        Value::Int8(_) => "an int8",
        Value::Uint8(_) => "a uint8",
        Value::Int16(_) => "an int16",
        Value::Uint16(_) => "a uint16",
        Value::Int32(_) => "an int32",
        Value::Uint32(_) => "a uint32",
        Value::Int64(_) => "an int64",
        Value::Uint64(_) => "a uint64",
        Value::Float32(_) => "a float32",
        Value::Float64(_) => "a float64",
        Value::String(_) => "a string",
        Value::Bytes(_) => "binary data",
        Value::Array(_) => "an array",
        Value::Message(_) => "a message",
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    origin: usize,
    le: bool,
}

impl<'a> Reader<'a> {
    fn truncated(&self, path: &Path) -> CdrError {
        CdrError::Truncated { path: path.name(), len: self.data.len() }
    }
    fn align(&mut self, n: usize) {
        let rel = self.pos - self.origin;
        self.pos += (n - rel % n) % n;
    }
    fn take(&mut self, n: usize, path: &Path) -> Result<&'a [u8], CdrError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.data.len()).ok_or_else(|| self.truncated(path))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, path: &Path) -> Result<[u8; N], CdrError> {
        self.align(N);
        let s = self.take(N, path)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        if !self.le {
            a.reverse();
        }
        Ok(a)
    }
    fn u32(&mut self, path: &Path) -> Result<u32, CdrError> {
        Ok(u32::from_le_bytes(self.array::<4>(path)?))
    }
    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }
}

/// Decode CDR bytes (header included) into a message of type `ty`.
pub fn decode(ty: &Arc<MessageType>, data: &[u8]) -> Result<MessageValue, CdrError> {
    if data.len() < 4 {
        return Err(CdrError::Truncated { path: "(encapsulation header)".into(), len: data.len() });
    }
    let le = match (data[0], data[1]) {
        (0x00, 0x01) => true,
        (0x00, 0x00) => false,
        (a, b) => return Err(CdrError::Encapsulation(a, b)),
    };
    let mut r = Reader { data, pos: 4, origin: 4, le };
    read_message(&mut r, ty, &Path::Root)
}

fn read_message(r: &mut Reader, ty: &Arc<MessageType>, path: &Path) -> Result<MessageValue, CdrError> {
    if ty.fields.is_empty() {
        r.take(1, path)?;
        return Ok(MessageValue { ty: ty.clone(), fields: Vec::new() });
    }
    let mut fields = Vec::with_capacity(ty.fields.len());
    for f in &ty.fields {
        fields.push(read_field(r, &f.ty, &Path::Field(path, &f.name))?);
    }
    Ok(MessageValue { ty: ty.clone(), fields })
}

fn min_wire_size(base: &BaseType) -> usize {
    match base {
        BaseType::Primitive(p) => p.size(),
        BaseType::String { .. } | BaseType::WString { .. } => 4,
        BaseType::Message(_) => 1,
    }
}

fn read_field(r: &mut Reader, ty: &FieldType, path: &Path) -> Result<Value, CdrError> {
    let n = match ty.array {
        ArrayKind::Single => return read_single(r, &ty.base, path),
        ArrayKind::Fixed(n) => n,
        ArrayKind::Bounded(_) | ArrayKind::Unbounded => {
            let at = r.pos;
            let n = r.u32(path)? as usize;
            if let ArrayKind::Bounded(b) = ty.array {
                if n > b {
                    return Err(CdrError::Invalid { path: path.name(), offset: at, message: format!("{n} elements for an array of at most {b}") });
                }
            }
            n
        }
    };
    if n.saturating_mul(min_wire_size(&ty.base)) > r.remaining() {
        return Err(r.truncated(path));
    }
    if ty.is_binary() {
        return Ok(Value::Bytes(r.take(n, path)?.to_vec()));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(read_single(r, &ty.base, &Path::Index(path, i))?);
    }
    Ok(Value::Array(out))
}

fn read_single(r: &mut Reader, base: &BaseType, path: &Path) -> Result<Value, CdrError> {
    Ok(match base {
        BaseType::Primitive(p) => match p {
            Primitive::Bool => Value::Bool(r.take(1, path)?[0] != 0),
            Primitive::Byte | Primitive::Char | Primitive::Uint8 => Value::Uint8(r.take(1, path)?[0]),
            Primitive::Int8 => Value::Int8(i8::from_le_bytes(r.array::<1>(path)?)),
            Primitive::Int16 => Value::Int16(i16::from_le_bytes(r.array::<2>(path)?)),
            Primitive::Uint16 => Value::Uint16(u16::from_le_bytes(r.array::<2>(path)?)),
            Primitive::Int32 => Value::Int32(i32::from_le_bytes(r.array::<4>(path)?)),
            Primitive::Uint32 => Value::Uint32(u32::from_le_bytes(r.array::<4>(path)?)),
            Primitive::Float32 => Value::Float32(f32::from_le_bytes(r.array::<4>(path)?)),
            Primitive::Int64 => Value::Int64(i64::from_le_bytes(r.array::<8>(path)?)),
            Primitive::Uint64 => Value::Uint64(u64::from_le_bytes(r.array::<8>(path)?)),
            Primitive::Float64 => Value::Float64(f64::from_le_bytes(r.array::<8>(path)?)),
        },
        BaseType::String { .. } => {
            let n = r.u32(path)? as usize;
            let bytes = r.take(n, path)?;
            let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
            Value::String(String::from_utf8_lossy(bytes).into_owned())
        }
        BaseType::WString { .. } => {
            let n = r.u32(path)? as usize;
            if n.saturating_mul(4) > r.remaining() {
                return Err(r.truncated(path));
            }
            let mut units = Vec::with_capacity(n);
            for _ in 0..n {
                units.push((r.u32(path)? & 0xffff) as u16);
            }
            Value::String(String::from_utf16_lossy(&units))
        }
        BaseType::Message(t) => Value::Message(read_message(r, t, path)?),
    })
}
