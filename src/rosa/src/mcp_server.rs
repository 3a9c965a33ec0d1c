//! Serving MCP tools over streamable HTTP (rmcp), the way every rosa MCP server does it (the Reachy
//! driver; the MCP bridge): `Host` and `Origin` checked against DNS rebinding, and a bearer token.
//!
//! - `Host`: rmcp's allow-list (loopback names) when bound to loopback.
//! - `Origin` (the MCP spec's MUST for streamable HTTP): a request carrying one is refused (403)
//!   unless it is a loopback origin (`http(s)://localhost|127.x.x.x|[::1]`, any port) or listed
//!   in `allowed_origins`. Requests without `Origin` (non-browser clients) pass this check.
//! - Token: `Authorization: Bearer <token>` is required when the server is bound beyond loopback,
//!   and on loopback too with `require_token`. The token is the file `<data_dir>/mcp_token`
//!   (`./rosa setup` creates it; a server that needs it and finds none creates it), which the
//!   process manager hands to the workers with their robots' URLs. Compared in constant time.
//!
//! No r2r here.

use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::{session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService};
use rmcp::ServerHandler;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The token file's name in the data dir.
pub const TOKEN_FILE: &str = "mcp_token";

/// Who may call an MCP server (parameters, flattened into the node's: `require_token`,
/// `token_file`, `allowed_origins`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct McpAccess {
    /// Require the bearer token on loopback too (it is always required beyond loopback).
    pub require_token: bool,
    /// The token file ("" = <data_dir>/mcp_token, which ./rosa setup creates).
    pub token_file: String,
    /// Browser origins allowed besides loopback ones, e.g. "https://ui.example.org:8443".
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    #[error("the MCP token file {path} cannot be used: {message}")]
    Token { path: String, message: String },
}

/// The checks a running server applies.
#[derive(Debug, Clone)]
pub struct Guard {
    token: Option<String>,
    allowed_origins: Vec<String>,
}

/// Is `bind` a loopback address (or `localhost`)?
pub fn is_loopback_bind(bind: &str) -> bool {
    let b = bind.trim().trim_start_matches('[').trim_end_matches(']');
    b.eq_ignore_ascii_case("localhost") || b.parse::<IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

/// Is the URL's host loopback (`http://127.0.0.1:5001/mcp`)?
pub fn is_loopback_url(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    is_loopback_bind(host)
}

/// Is an `Origin` header value a loopback origin (any port)?
pub fn is_loopback_origin(origin: &str) -> bool {
    let o = origin.trim();
    let Some((scheme, rest)) = o.split_once("://") else { return false };
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) || rest.contains(['/', '@', '?', '#']) {
        return false;
    }
    is_loopback_url(o)
}

fn same_origin(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/').eq_ignore_ascii_case(b.trim().trim_end_matches('/'))
}

/// Equal, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token in `path`, if the file exists (surrounding whitespace removed).
pub fn read_token(path: &Path) -> Result<Option<String>, AccessError> {
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().is_empty() => Err(AccessError::Token { path: path.display().to_string(), message: "it is empty".into() }),
        Ok(t) => Ok(Some(t.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AccessError::Token { path: path.display().to_string(), message: e.to_string() }),
    }
}

/// A new random token: 32 bytes from the kernel, as 64 hex digits.
pub fn new_token() -> Result<String, std::io::Error> {
    let mut buf = [0u8; 32];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most the remaining length into the buffer.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The token in `path`, created (mode 0600, atomically: written aside, then linked into place) if
/// there is none. Two processes creating it at once end up with the same token.
pub fn read_or_create_token(path: &Path) -> Result<String, AccessError> {
    let err = |m: String| AccessError::Token { path: path.display().to_string(), message: m };
    if let Some(t) = read_token(path)? {
        return Ok(t);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let token = new_token().map_err(|e| err(e.to_string()))?;
    let aside = path.with_extension(format!("new.{}.{}", std::process::id(), &token[..16]));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&aside).map_err(|e| err(e.to_string()))?;
    let written = f.write_all(format!("{token}\n").as_bytes()).and_then(|_| f.sync_all());
    drop(f);
    let linked = written.and_then(|_| std::fs::hard_link(&aside, path));
    let _ = std::fs::remove_file(&aside);
    match linked {
        Ok(()) => Ok(token),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_token(path)?.ok_or_else(|| err("it vanished".into())),
        Err(e) => Err(err(e.to_string())),
    }
}

/// The token file of `access` (its `token_file`, else `<data_dir>/mcp_token`).
pub fn token_path(access: &McpAccess, data_dir: &Path) -> PathBuf {
    if access.token_file.trim().is_empty() {
        data_dir.join(TOKEN_FILE)
    } else {
        PathBuf::from(access.token_file.trim())
    }
}

impl Guard {
    /// The checks for a server bound to `bind`: with a token when bound beyond loopback or when
    /// `require_token` (read, or created, from the token file).
    pub fn new(access: &McpAccess, bind: &str, data_dir: &Path) -> Result<Self, AccessError> {
        let token = if access.require_token || !is_loopback_bind(bind) {
            Some(read_or_create_token(&token_path(access, data_dir))?)
        } else {
            None
        };
        Ok(Self { token, allowed_origins: access.allowed_origins.clone() })
    }

    /// No token, loopback origins only (tests, and servers that never leave loopback).
    pub fn loopback() -> Self {
        Self { token: None, allowed_origins: vec![] }
    }

    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    /// Why a request with these headers is refused (status and message), if it is.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let o = origin.to_str().unwrap_or_default();
            if !is_loopback_origin(o) && !self.allowed_origins.iter().any(|a| same_origin(a, o)) {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!("Forbidden: Origin `{}` is not allowed (loopback origins only, or the server's allowed_origins)", crate::input::summary(o, 200)),
                ));
            }
        }
        if let Some(token) = &self.token {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .map(str::trim);
            if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized: this MCP server needs `Authorization: Bearer <token>`, the token of the data dir's mcp_token file (workers get it from the process manager)".into(),
                ));
            }
        }
        Ok(())
    }
}

async fn guard_layer(guard: Arc<Guard>, req: Request, next: Next) -> Response {
    match guard.check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err((status, message)) => {
            tracing::warn!(%status, method = %req.method(), "MCP request refused: {message}");
            let mut r = (status, message).into_response();
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"rosa\""));
            }
            r
        }
    }
}

/// Serve `server` at `http://<bind>:<port><path>` until `cancel`, behind `guard`. Returns the
/// address bound (port 0 = any free port) and the server's task.
pub async fn serve<S>(
    server: S,
    bind: &str,
    port: u16,
    path: &str,
    guard: Guard,
    cancel: tokio_util::sync::CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)>
where
    S: ServerHandler + Clone + Send + Sync + 'static,
{
    let endpoint = Endpoint::new(path, move || server.clone());
    serve_many(vec![endpoint], bind, port, guard, Sessions::default(), cancel).await
}

/// One MCP endpoint of a server: its path and a factory called once per MCP session (a new
/// handler for each session, dropped when the session ends: see [`serve_many`]).
pub struct Endpoint<S> {
    pub path: String,
    pub factory: Arc<dyn Fn() -> S + Send + Sync>,
}

impl<S> Endpoint<S> {
    pub fn new(path: &str, factory: impl Fn() -> S + Send + Sync + 'static) -> Self {
        Self { path: path.to_string(), factory: Arc::new(factory) }
    }
}

/// How sessions are kept.
#[derive(Debug, Clone, Copy)]
pub struct Sessions {
    /// A session without requests for this long is closed (its handler dropped).
    pub idle_timeout: std::time::Duration,
}

impl Default for Sessions {
    fn default() -> Self {
        Self { idle_timeout: std::time::Duration::from_secs(300) }
    }
}

/// Serve several MCP endpoints on one port (e.g. the MCP bridge's `/<robot>/mcp`), each behind
/// `guard`, until `cancel`. Each endpoint's factory makes the handler of one session; the handler
/// is dropped when its session ends (the client's DELETE, or `sessions.idle_timeout` without a
/// request), which is where per-session state is let go.
pub async fn serve_many<S>(
    endpoints: Vec<Endpoint<S>>,
    bind: &str,
    port: u16,
    guard: Guard,
    sessions: Sessions,
    cancel: tokio_util::sync::CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)>
where
    S: ServerHandler + Send + Sync + 'static,
{
    let mut config = StreamableHttpServerConfig::default().with_cancellation_token(cancel.child_token());
    if !is_loopback_bind(bind) {
        // Bound beyond loopback on purpose: any Host (the token guards it).
        config = config.disable_allowed_hosts();
    }
    let mut router = axum::Router::new();
    for e in endpoints {
        let mut manager = LocalSessionManager::default();
        manager.session_config.keep_alive = Some(sessions.idle_timeout);
        let factory = e.factory.clone();
        let service: StreamableHttpService<S, LocalSessionManager> =
            StreamableHttpService::new(move || Ok(factory()), Arc::new(manager), config.clone());
        router = router.nest_service(&e.path, service);
    }
    let guard = Arc::new(guard);
    let router = router.layer(axum::middleware::from_fn(move |req: Request, next: Next| guard_layer(guard.clone(), req, next)));
    let listener = tokio::net::TcpListener::bind((bind, port)).await?;
    let addr = listener.local_addr()?;
    // TCP_NODELAY: without it the last piece of a reply waited ~40 ms (measured: 48 ms per call,
    // see README, `./rosa bench bridge`).
    let listener = crate::http::nodelay(listener);
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(async move { cancel.cancelled_owned().await }).await {
            tracing::error!("MCP server: {e}");
        }
    });
    Ok((addr, handle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn loopback_binds_urls_and_origins() {
        for b in ["127.0.0.1", "localhost", "::1", "[::1]", "127.1.2.3"] {
            assert!(is_loopback_bind(b), "{b}");
        }
        for b in ["0.0.0.0", "::", "192.168.1.2", "reachy.local"] {
            assert!(!is_loopback_bind(b), "{b}");
        }
        assert!(is_loopback_url("http://127.0.0.1:5001/mcp"));
        assert!(is_loopback_url("http://[::1]:5001/mcp"));
        assert!(is_loopback_url("http://localhost/mcp"));
        assert!(!is_loopback_url("http://127.0.0.1.evil.org/mcp"));
        assert!(!is_loopback_url("http://10.0.0.2:5001/mcp"));
        assert!(!is_loopback_url("http://user@10.0.0.2/"));
        for o in ["http://localhost:8765", "http://127.0.0.1", "https://[::1]:1", "HTTP://LOCALHOST:3000"] {
            assert!(is_loopback_origin(o), "{o}");
        }
        for o in ["null", "http://evil.example", "http://localhost.evil.example", "http://127.0.0.1.nip.io:80",
                  "file://", "http://localhost:1/x", "ws://localhost", "http://evil@localhost", ""] {
            assert!(!is_loopback_origin(o), "{o}");
        }
    }

    #[test]
    fn origin_and_token_checks() {
        let open = Guard::loopback();
        assert!(open.check(&headers(&[])).is_ok());
        assert!(open.check(&headers(&[("origin", "http://localhost:8765")])).is_ok());
        assert_eq!(open.check(&headers(&[("origin", "http://evil.example")])).unwrap_err().0, StatusCode::FORBIDDEN);
        assert_eq!(open.check(&headers(&[("origin", "null")])).unwrap_err().0, StatusCode::FORBIDDEN);
        let listed = Guard { token: None, allowed_origins: vec!["https://ui.example.org:8443".into()] };
        assert!(listed.check(&headers(&[("origin", "https://ui.example.org:8443")])).is_ok());
        assert!(listed.check(&headers(&[("origin", "https://ui.example.org")])).is_err());

        let locked = Guard::loopback().with_token("s3cret");
        assert_eq!(locked.check(&headers(&[])).unwrap_err().0, StatusCode::UNAUTHORIZED);
        assert_eq!(locked.check(&headers(&[("authorization", "Bearer wrong")])).unwrap_err().0, StatusCode::UNAUTHORIZED);
        assert_eq!(locked.check(&headers(&[("authorization", "Basic s3cret")])).unwrap_err().0, StatusCode::UNAUTHORIZED);
        assert!(locked.check(&headers(&[("authorization", "Bearer s3cret")])).is_ok());
        // A bad origin is refused before the token is looked at.
        let e = locked.check(&headers(&[("authorization", "Bearer s3cret"), ("origin", "http://evil.example")])).unwrap_err();
        assert_eq!(e.0, StatusCode::FORBIDDEN);
        assert!(!e.1.contains("s3cret"));
    }

    #[test]
    fn tokens_are_created_once_private_and_shared() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rosa-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join(TOKEN_FILE);
        assert_eq!(read_token(&path).unwrap(), None);
        let a = read_or_create_token(&path).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_or_create_token(&path).unwrap(), a);
        assert_ne!(new_token().unwrap(), a);
        // Guards: loopback without require_token needs none; beyond loopback uses the file's.
        let access = McpAccess { token_file: path.display().to_string(), ..Default::default() };
        assert!(!Guard::new(&access, "127.0.0.1", &dir).unwrap().requires_token());
        let g = Guard::new(&access, "0.0.0.0", &dir).unwrap();
        assert_eq!(g.token.as_deref(), Some(a.as_str()));
        let g = Guard::new(&McpAccess { require_token: true, ..access.clone() }, "127.0.0.1", &dir).unwrap();
        assert!(g.requires_token());
        // Concurrent creation agrees on one token.
        let p2 = dir.join("race").join(TOKEN_FILE);
        let ts: Vec<_> = (0..8).map(|_| { let p = p2.clone(); std::thread::spawn(move || read_or_create_token(&p).unwrap()) }).collect();
        let got: std::collections::HashSet<String> = ts.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(got.len(), 1);
        std::fs::remove_dir_all(&dir).ok();
    }
}
