//! The Foxglove WebSocket protocol's binary frames (v1, as `@foxglove/ws-protocol` and
//! foxglove_bridge speak it): server → client message data and service responses; client →
//! server message data and service requests. JSON ops are built by the node with `serde_json`.

/// Server → client opcodes.
pub const SERVER_MESSAGE_DATA: u8 = 0x01;
pub const SERVER_TIME: u8 = 0x02;
pub const SERVER_SERVICE_CALL_RESPONSE: u8 = 0x03;
/// Client → server opcodes.
pub const CLIENT_MESSAGE_DATA: u8 = 0x01;
pub const CLIENT_SERVICE_CALL_REQUEST: u8 = 0x02;

/// Status levels of the `status` op.
pub const STATUS_INFO: u8 = 0;
pub const STATUS_WARNING: u8 = 1;
pub const STATUS_ERROR: u8 = 2;

/// Message data for subscription `sub`, received at `timestamp_ns`.
pub fn message_data(sub: u32, timestamp_ns: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + payload.len());
    out.push(SERVER_MESSAGE_DATA);
    out.extend_from_slice(&sub.to_le_bytes());
    out.extend_from_slice(&timestamp_ns.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A service call response (or request: same layout after the opcode).
pub fn service_call(opcode: u8, service: u32, call: u32, encoding: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + encoding.len() + payload.len());
    out.push(opcode);
    out.extend_from_slice(&service.to_le_bytes());
    out.extend_from_slice(&call.to_le_bytes());
    out.extend_from_slice(&(encoding.len() as u32).to_le_bytes());
    out.extend_from_slice(encoding.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// A binary frame from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientBinary<'a> {
    MessageData { channel: u32, payload: &'a [u8] },
    ServiceCallRequest { service: u32, call: u32, encoding: &'a str, payload: &'a [u8] },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("binary frame: {0}")]
pub struct FrameError(pub String);

fn u32_at(b: &[u8], at: usize) -> Result<u32, FrameError> {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| FrameError(format!("{} bytes is too short", b.len())))
}

pub fn parse_client_binary(b: &[u8]) -> Result<ClientBinary<'_>, FrameError> {
    match b.first() {
        None => Err(FrameError("empty".into())),
        Some(&CLIENT_MESSAGE_DATA) => Ok(ClientBinary::MessageData { channel: u32_at(b, 1)?, payload: &b[5..] }),
        Some(&CLIENT_SERVICE_CALL_REQUEST) => {
            let service = u32_at(b, 1)?;
            let call = u32_at(b, 5)?;
            let n = usize::try_from(u32_at(b, 9)?).map_err(|_| FrameError("encoding length".into()))?;
            let enc = b.get(13..13usize.saturating_add(n)).ok_or_else(|| FrameError(format!("encoding of {n} bytes past the end")))?;
            let encoding = std::str::from_utf8(enc).map_err(|_| FrameError("encoding is not UTF-8".into()))?;
            Ok(ClientBinary::ServiceCallRequest { service, call, encoding, payload: &b[13 + n..] })
        }
        Some(op) => Err(FrameError(format!("unknown opcode 0x{op:02x}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let m = message_data(7, 0x0102030405060708, b"abc");
        assert_eq!(m, [1, 7, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1, b'a', b'b', b'c']);
        let req = service_call(CLIENT_SERVICE_CALL_REQUEST, 3, 9, "cdr", b"xy");
        assert_eq!(parse_client_binary(&req), Ok(ClientBinary::ServiceCallRequest { service: 3, call: 9, encoding: "cdr", payload: b"xy" }));
        assert_eq!(parse_client_binary(&[1, 5, 0, 0, 0, 9]), Ok(ClientBinary::MessageData { channel: 5, payload: &[9] }));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_client_binary(&[]).is_err());
        assert!(parse_client_binary(&[9, 1, 2]).is_err());
        assert!(parse_client_binary(&[1, 1]).is_err());
        assert!(parse_client_binary(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255]).is_err());
    }
}
