//! HTTP plumbing shared by every node: one client per process (the LLM client and the MCP
//! clients), and the listener every server (MCP, `rosa_web`, `llm_server`) accepts on.
//!
//! Building a TLS-capable client loads and parses the system's root certificates (tens of ms in a
//! debug build); a worker must not pay that more than once, nor at all when every endpoint it talks
//! to is plain `http://` (the usual case: vLLM and the robots on this machine).

use std::time::Duration;

/// A client with a connection timeout and no overall timeout (MCP streams may stay open; callers put
/// their own deadline around each request). TLS roots are loaded only if some URL is `https://`.
pub fn client<'a>(connect_timeout: Duration, urls: impl IntoIterator<Item = &'a str>) -> reqwest::Result<reqwest::Client> {
    let tls = urls.into_iter().any(|u| u.trim_start().to_ascii_lowercase().starts_with("https://"));
    let mut builder = reqwest::Client::builder().connect_timeout(connect_timeout).tcp_nodelay(true);
    if !tls {
        builder = builder.tls_certs_only(std::iter::empty());
    }
    builder.build()
}

/// A listener whose connections have TCP_NODELAY set. Without it a reply written in pieces (HTTP
/// headers then SSE events, or one small WebSocket frame per message) waits for the peer's delayed
/// ACK behind Nagle's algorithm: measured ~40 ms per MCP call, and the p95 of `rosa_web`'s frames.
pub fn nodelay(listener: tokio::net::TcpListener) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_with_and_without_tls() {
        assert!(client(Duration::from_secs(1), ["http://127.0.0.1:1/v1"]).is_ok());
        assert!(client(Duration::from_secs(1), ["http://127.0.0.1:1/v1", "https://api.groq.com/openai/v1"]).is_ok());
    }
}
