//! The LLM client shared by the kernel and the workers: OpenAI-compatible chat completions with
//! tool calling, over an ordered provider list with failover, timeouts and retries.
//!
//! The HTTP exchange is written here on reqwest (no client library in between), so that:
//! - retries are counted once: our own, `llm.max_retries` per provider, nothing retried below us;
//! - a 429 (or 503) is honoured whatever its body (JSON, plain text, empty), with its `Retry-After`;
//! - replies are streamed (`stream: true`), which tells a slow provider from a dead one: the stream
//!   must start within `llm.first_token_timeout_sec` (a token, or a keep-alive comment from a server
//!   that queues or prefills), may not fall silent for more than `llm.stall_timeout_sec`, and one
//!   attempt ends after `llm.timeout_sec`; a caller's deadline ([`ChatRequest::deadline`]) bounds
//!   the whole call, retries and backoff included;
//! - servers that add or omit fields (vLLM, Groq, llama.cpp, rosa's own `llm_server`) are read
//!   leniently: only the core OpenAI shape matters, and a tool call that a small model wrote into its
//!   text (bare, fenced or `<tool_call>`-tagged `{"name": …, "arguments": …}` naming an offered
//!   tool) is taken as the call it means ([`extract_tool_calls`]).

use crate::config::{LlmConfig, Provider};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// One message of a conversation (the OpenAI chat roles). Serializable: the kernel journals its
/// conversation memory (`kernel_queue`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    System(String),
    User(String),
    Assistant { content: Option<String>, tool_calls: Vec<ToolCall> },
    Tool { call_id: String, content: String },
}

impl Message {
    pub fn to_wire(&self) -> Value {
        match self {
            Message::System(c) => json!({"role": "system", "content": c}),
            Message::User(c) => json!({"role": "user", "content": c}),
            Message::Assistant { content, tool_calls } => {
                let mut m = json!({"role": "assistant", "content": content});
                if !tool_calls.is_empty() {
                    m["tool_calls"] = tool_calls
                        .iter()
                        .map(|c| {
                            json!({"id": c.id, "type": "function",
                                   "function": {"name": c.name, "arguments": c.arguments}})
                        })
                        .collect();
                }
                m
            }
            Message::Tool { call_id, content } => {
                json!({"role": "tool", "tool_call_id": call_id, "content": content})
            }
        }
    }

    /// Characters of text carried (for the memory's token estimate).
    pub fn text_len(&self) -> usize {
        match self {
            Message::System(c) | Message::User(c) => c.len(),
            Message::Assistant { content, tool_calls } => {
                content.as_deref().map_or(0, str::len)
                    + tool_calls.iter().map(|c| c.name.len() + c.arguments.len()).sum::<usize>()
            }
            Message::Tool { content, .. } => content.len(),
        }
    }
}

/// A tool call as the model made it: `arguments` is the raw JSON text, not yet validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
}

impl ToolSpec {
    pub fn to_wire(&self) -> Value {
        json!({"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}})
    }
}

/// OpenAI's `tool_choice`: may the model answer in text (`Auto`), must it call a tool (`Required`),
/// or may it not (`None`: the tools are not offered at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    #[default]
    Auto,
    Required,
    None,
}

impl ToolChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolChoice::Auto => "auto",
            ToolChoice::Required => "required",
            ToolChoice::None => "none",
        }
    }
}

/// One call of the model.
#[derive(Debug, Clone, Copy)]
pub struct ChatRequest<'a> {
    pub messages: &'a [Message],
    pub tools: &'a [ToolSpec],
    pub tool_choice: ToolChoice,
    /// The call (retries and backoff included) gives up at this instant.
    pub deadline: Option<Instant>,
    /// `max_tokens` of this call, instead of `llm.max_tokens` (a prefix warm-up asks for 1).
    pub max_tokens: Option<u32>,
}

impl<'a> ChatRequest<'a> {
    pub fn new(messages: &'a [Message], tools: &'a [ToolSpec]) -> Self {
        Self { messages, tools, tool_choice: ToolChoice::Auto, deadline: None, max_tokens: None }
    }
}

/// What the model answered: text, tool calls, or both.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Completion {
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    #[error("no LLM provider configured (llm.urls is empty)")]
    NoProvider,
    #[error("LLM unreachable: {0}")]
    Unreachable(String),
    #[error("LLM timed out: {0}")]
    Timeout(String),
    #[error("LLM error {status}: {message}")]
    Api { status: u16, message: String },
    #[error("LLM answer not understood: {0}")]
    BadResponse(String),
}

/// The seam where the model enters: the OpenAI client in the product, a fake in unit tests.
#[async_trait::async_trait]
pub trait ChatModel: Send + Sync {
    async fn complete(&self, request: ChatRequest<'_>) -> Result<Completion, LlmError>;
}

struct Endpoint {
    provider: Provider,
    key: String,
    /// The key variable is named but not set: the provider is skipped.
    missing_key: bool,
}

/// OpenAI-compatible chat over an ordered provider list.
///
/// Calls go to the active provider; a connection failure (or a provider still failing after the
/// retries) moves on to the next one, and the one that answered becomes the active one.
pub struct OpenAiChat {
    endpoints: Vec<Endpoint>,
    active: AtomicUsize,
    config: LlmConfig,
    http: reqwest::Client,
    /// Sent as OpenAI's `user` field: who is asking (the kernel, a worker). A server that queues
    /// requests fairly (rosa's `llm_server`) tells its clients apart by it.
    client_id: String,
}

/// How one attempt failed.
#[derive(Debug)]
enum Failure {
    /// Worth retrying on the same provider (429, 5xx, a timeout, a broken stream), after
    /// `retry_after` if the server said so.
    Transient { error: LlmError, retry_after: Option<Duration> },
    /// Go to the next provider at once (connection refused, 401…).
    Provider(LlmError),
    /// The request itself is at fault: stop (400, 404, 422).
    Fatal(LlmError),
}

fn transient(error: LlmError) -> Failure {
    Failure::Transient { error, retry_after: None }
}

/// The most of a non-streamed answer or an error body that is read.
const MAX_BODY: usize = 16 << 20;

impl OpenAiChat {
    /// A client of `config`'s providers with its own HTTP client.
    pub fn new(config: &LlmConfig) -> Result<Self, LlmError> {
        let http = crate::http::client(secs(config.connect_timeout_sec, 0.1), config.urls.iter().map(String::as_str))
            .map_err(|e| LlmError::Unreachable(format!("HTTP client: {e}")))?;
        Self::with_http(config, http)
    }

    /// A client over a shared HTTP client (see [`crate::http::client`]).
    pub fn with_http(config: &LlmConfig, http: reqwest::Client) -> Result<Self, LlmError> {
        let providers = config.providers();
        if providers.is_empty() {
            return Err(LlmError::NoProvider);
        }
        let endpoints = providers
            .into_iter()
            .map(|provider| {
                let (key, missing_key) = if provider.key_env.is_empty() {
                    (String::new(), false)
                } else {
                    match std::env::var(&provider.key_env) {
                        Ok(k) if !k.is_empty() => (k, false),
                        _ => (String::new(), true),
                    }
                };
                Endpoint { provider, key, missing_key }
            })
            .collect();
        Ok(Self {
            endpoints,
            active: AtomicUsize::new(0),
            config: config.clone(),
            http,
            client_id: String::new(),
        })
    }

    /// Name this client in its requests (OpenAI's `user` field).
    pub fn with_client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// The provider calls go to now.
    pub fn active_provider(&self) -> &Provider {
        &self.endpoints[self.active.load(Ordering::Relaxed) % self.endpoints.len()].provider
    }

    /// Probe `GET <url>/models` on each provider in order and make the first that answers the active
    /// one. Returns it, or `None` when none answered (calls will still try them all).
    pub async fn probe(&self) -> Option<&Provider> {
        for (i, ep) in self.endpoints.iter().enumerate() {
            if ep.missing_key {
                tracing::info!(url = %ep.provider.url, key_env = %ep.provider.key_env,
                    "skipping LLM provider: its key variable is not set");
                continue;
            }
            let mut req = self
                .http
                .get(format!("{}/models", ep.provider.url))
                .timeout(secs(self.config.connect_timeout_sec, 0.1));
            if !ep.key.is_empty() {
                req = req.bearer_auth(&ep.key);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    self.active.store(i, Ordering::Relaxed);
                    return Some(&ep.provider);
                }
                Ok(r) => tracing::warn!(url = %ep.provider.url, status = %r.status(), "LLM provider probe failed"),
                Err(e) => tracing::warn!(url = %ep.provider.url, error = %e, "LLM provider unreachable"),
            }
        }
        None
    }

    fn request_body(&self, model: &str, req: &ChatRequest<'_>) -> Value {
        let mut body = json!({
            "model": model,
            "messages": req.messages.iter().map(Message::to_wire).collect::<Vec<_>>(),
            "temperature": self.config.temperature,
            "stream": self.config.stream,
        });
        if !req.tools.is_empty() && req.tool_choice != ToolChoice::None {
            body["tools"] = req.tools.iter().map(ToolSpec::to_wire).collect();
            body["tool_choice"] = json!(req.tool_choice.as_str());
        }
        match req.max_tokens {
            Some(n) => body["max_tokens"] = json!(n.max(1)),
            None if self.config.max_tokens > 0 => body["max_tokens"] = json!(self.config.max_tokens),
            None => {}
        }
        if !self.client_id.is_empty() {
            body["user"] = json!(self.client_id);
        }
        body
    }

    /// One HTTP exchange, ending at `attempt_end` at the latest.
    async fn call_once(&self, ep: &Endpoint, body: &Value, attempt_end: Instant) -> Result<Completion, Failure> {
        let mut req = self.http.post(format!("{}/chat/completions", ep.provider.url)).json(body);
        if !ep.key.is_empty() {
            req = req.bearer_auth(&ep.key);
        }
        if self.config.stream {
            req = req.header(reqwest::header::ACCEPT, "text/event-stream");
        }
        let first = Instant::now() + secs(self.config.first_token_timeout_sec, 0.1);
        let stall = secs(self.config.stall_timeout_sec, 0.1);
        let started = Instant::now();
        let resp = match tokio::time::timeout_at(first.min(attempt_end), req.send()).await {
            Err(_) => return Err(transient(timed_out(started, first, attempt_end, "no answer"))),
            Ok(Err(e)) if e.is_timeout() => return Err(transient(LlmError::Timeout(e.to_string()))),
            Ok(Err(e)) => return Err(Failure::Provider(LlmError::Unreachable(describe_reqwest(&e)))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if !status.is_success() {
            let retry_after = retry_after(resp.headers());
            let text = read_text(resp, attempt_end, 64 << 10).await.unwrap_or_default();
            let error = LlmError::Api { status: status.as_u16(), message: error_message(&text, status) };
            return Err(match status.as_u16() {
                408 | 409 | 425 | 429 | 500..=599 => Failure::Transient { error, retry_after },
                401 | 403 => Failure::Provider(error),
                _ => Failure::Fatal(error),
            });
        }
        let is_sse = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if is_sse {
            return read_stream(resp, first.min(attempt_end), stall, attempt_end, started).await;
        }
        // A whole JSON answer (stream off, or a server that ignored `stream: true`).
        let text = match read_text(resp, attempt_end, MAX_BODY).await {
            Ok(t) => t,
            Err(f) => return Err(f),
        };
        match serde_json::from_str::<Value>(&text) {
            Ok(v) => parse_completion(&v).map_err(Failure::Fatal),
            Err(e) => Err(Failure::Fatal(LlmError::BadResponse(format!("{e}: {}", truncate(&text, 300))))),
        }
    }
}

fn secs(s: f64, min: f64) -> Duration {
    // Finite and within a day: a config value never panics here.
    let s = if s.is_finite() { s.clamp(min, 86_400.0) } else { 86_400.0 };
    Duration::from_secs_f64(s)
}

fn timed_out(started: Instant, first: Instant, attempt_end: Instant, what: &str) -> LlmError {
    let waited = started.elapsed().as_secs_f64();
    if first <= attempt_end {
        LlmError::Timeout(format!("{what} within {waited:.0} s (llm.first_token_timeout_sec)"))
    } else {
        LlmError::Timeout(format!("{what} within {waited:.0} s (llm.timeout_sec or the caller's deadline)"))
    }
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    // reqwest's Display hides the cause ("error sending request"); the source chain says why.
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s.min(86_400.0)));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// The message of an error body: OpenAI's `{"error": {"message": …}}`, other JSON shapes, or text.
fn error_message(text: &str, status: reqwest::StatusCode) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        let m = v
            .pointer("/error/message")
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"))
            .and_then(Value::as_str);
        if let Some(m) = m {
            return truncate(m, 500);
        }
    }
    let t = text.trim();
    if t.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        truncate(t, 500)
    }
}

async fn read_text(mut resp: reqwest::Response, end: Instant, max: usize) -> Result<String, Failure> {
    let mut buf = Vec::new();
    loop {
        match tokio::time::timeout_at(end, resp.chunk()).await {
            Err(_) => return Err(transient(LlmError::Timeout("the answer did not arrive in time".into()))),
            Ok(Err(e)) => return Err(transient(LlmError::Unreachable(describe_reqwest(&e)))),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(b))) => {
                if buf.len() + b.len() > max {
                    return Err(Failure::Fatal(LlmError::BadResponse(format!("the answer is larger than {} MiB", max >> 20))));
                }
                buf.extend_from_slice(&b);
            }
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The assistant message being put together from `chat.completion.chunk`s.
#[derive(Default)]
struct Assembly {
    content: String,
    calls: Vec<(String, String, String)>, // id, name, arguments
    finish: Option<String>,
}

impl Assembly {
    fn add(&mut self, chunk: &Value) -> Result<(), LlmError> {
        if let Some(err) = chunk.get("error") {
            let message = err.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| err.to_string());
            let status = err.get("code").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok()).unwrap_or(500);
            return Err(LlmError::Api { status, message });
        }
        let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else { return Ok(()) };
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_string());
        }
        // Some servers send a whole `message` in the last chunk instead of deltas.
        let delta = choice.get("delta").or_else(|| choice.get("message")).unwrap_or(&Value::Null);
        if let Some(c) = delta.get("content").and_then(Value::as_str) {
            self.content.push_str(c);
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for (pos, c) in calls.iter().enumerate() {
                let index = c.get("index").and_then(Value::as_u64).map_or(pos, |i| i as usize);
                if index > 1024 {
                    return Err(LlmError::BadResponse(format!("tool call index {index}")));
                }
                while self.calls.len() <= index {
                    self.calls.push(Default::default());
                }
                let slot = &mut self.calls[index];
                if let Some(id) = c.get("id").and_then(Value::as_str) {
                    slot.0 = id.to_string();
                }
                let f = c.get("function").unwrap_or(&Value::Null);
                if let Some(n) = f.get("name").and_then(Value::as_str) {
                    slot.1.push_str(n);
                }
                match f.get("arguments") {
                    Some(Value::String(s)) => slot.2.push_str(s),
                    Some(Value::Null) | None => {}
                    Some(other) => slot.2.push_str(&other.to_string()),
                }
            }
        }
        if self.content.len() + self.calls.iter().map(|c| c.2.len()).sum::<usize>() > MAX_BODY {
            return Err(LlmError::BadResponse(format!("the answer is larger than {} MiB", MAX_BODY >> 20)));
        }
        Ok(())
    }

    fn finish(self) -> Completion {
        let tool_calls = self
            .calls
            .into_iter()
            .enumerate()
            .filter(|(_, c)| !c.1.is_empty())
            .map(|(i, (id, name, arguments))| ToolCall {
                id: if id.is_empty() { format!("call_{i}") } else { id },
                name,
                arguments: if arguments.trim().is_empty() { "{}".into() } else { arguments },
            })
            .collect();
        let content = Some(self.content.trim().to_string()).filter(|s| !s.is_empty());
        Completion { content, tool_calls }
    }
}

/// Read a server-sent-events answer: `data:` lines carry chunks, `:` lines are keep-alives,
/// `data: [DONE]` ends it.
async fn read_stream(
    mut resp: reqwest::Response,
    first: Instant,
    stall: Duration,
    end: Instant,
    started: Instant,
) -> Result<Completion, Failure> {
    let mut asm = Assembly::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut data = String::new();
    let mut got_any = false;
    loop {
        let wait_until = if got_any { (Instant::now() + stall).min(end) } else { first };
        let chunk = match tokio::time::timeout_at(wait_until, resp.chunk()).await {
            Err(_) if !got_any => return Err(transient(timed_out(started, first, end, "the stream did not start"))),
            Err(_) if Instant::now() >= end => {
                return Err(transient(LlmError::Timeout(format!(
                    "the answer was still streaming after {:.0} s (llm.timeout_sec or the caller's deadline)",
                    started.elapsed().as_secs_f64()
                ))))
            }
            Err(_) => {
                return Err(transient(LlmError::Timeout(format!(
                    "the stream stalled: nothing for {:.0} s (llm.stall_timeout_sec)",
                    stall.as_secs_f64()
                ))))
            }
            Ok(Err(e)) => return Err(transient(LlmError::Unreachable(format!("the stream broke: {}", describe_reqwest(&e))))),
            Ok(Ok(None)) => {
                if asm.finish.is_some() {
                    return Ok(asm.finish());
                }
                return Err(transient(LlmError::BadResponse("the stream ended before the answer was complete".into())));
            }
            Ok(Ok(Some(b))) => b,
        };
        got_any = true;
        pending.extend_from_slice(&chunk);
        if pending.len() > MAX_BODY {
            return Err(Failure::Fatal(LlmError::BadResponse("an event of the stream is larger than 16 MiB".into())));
        }
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                // End of an event.
                if data.is_empty() {
                    continue;
                }
                let event = std::mem::take(&mut data);
                if event.trim() == "[DONE]" {
                    return Ok(asm.finish());
                }
                let v: Value = serde_json::from_str(&event).map_err(|e| {
                    Failure::Fatal(LlmError::BadResponse(format!("stream event is not JSON ({e}): {}", truncate(&event, 300))))
                })?;
                asm.add(&v).map_err(|e| match e {
                    LlmError::Api { status, .. } if status == 429 || status >= 500 => transient(e),
                    e @ LlmError::Api { .. } => Failure::Fatal(e),
                    e => Failure::Fatal(e),
                })?;
            } else if let Some(rest) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            }
            // `:` comments (keep-alives), `event:`, `id:`, `retry:` lines: nothing to do.
        }
    }
}

#[async_trait::async_trait]
impl ChatModel for OpenAiChat {
    async fn complete(&self, request: ChatRequest<'_>) -> Result<Completion, LlmError> {
        let n = self.endpoints.len();
        let start = self.active.load(Ordering::Relaxed);
        let deadline = request.deadline;
        let mut last_err: Option<LlmError> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let ep = &self.endpoints[i];
            if ep.missing_key {
                last_err.get_or_insert_with(|| {
                    LlmError::Unreachable(format!("{}: its key variable {} is not set", ep.provider.url, ep.provider.key_env))
                });
                continue;
            }
            let body = self.request_body(&ep.provider.model, &request);
            let mut delay = secs(self.config.backoff_sec, 0.0);
            for attempt in 0..=self.config.max_retries {
                let per_attempt = Instant::now() + secs(self.config.timeout_sec, 0.1);
                let attempt_end = deadline.map_or(per_attempt, |d| d.min(per_attempt));
                if attempt_end <= Instant::now() {
                    return Err(last_err.unwrap_or_else(|| LlmError::Timeout("the deadline had passed before the call".into())));
                }
                match self.call_once(ep, &body, attempt_end).await {
                    Ok(c) => {
                        if i != start {
                            tracing::warn!(url = %ep.provider.url, "LLM failed over to this provider");
                            self.active.store(i, Ordering::Relaxed);
                        }
                        return Ok(lenient(c, &request));
                    }
                    Err(Failure::Fatal(e)) => return Err(e),
                    Err(Failure::Provider(e)) => {
                        tracing::warn!(url = %ep.provider.url, error = %e, "LLM provider failed");
                        last_err = Some(e);
                        break;
                    }
                    Err(Failure::Transient { error, retry_after }) => {
                        tracing::warn!(url = %ep.provider.url, attempt, error = %error, "LLM call failed");
                        last_err = Some(error);
                        if attempt == self.config.max_retries {
                            break;
                        }
                        let wait = retry_after.unwrap_or(delay);
                        if retry_after.is_some_and(|w| w > secs(self.config.max_retry_after_sec, 0.0)) {
                            tracing::warn!(url = %ep.provider.url, retry_after_sec = wait.as_secs_f64(),
                                "the provider asks to wait longer than llm.max_retry_after_sec: next provider");
                            break;
                        }
                        if deadline.is_some_and(|d| Instant::now() + wait >= d) {
                            return Err(last_err.unwrap_or(LlmError::NoProvider));
                        }
                        tokio::time::sleep(wait).await;
                        delay = delay.saturating_mul(2);
                    }
                }
            }
        }
        Err(last_err.unwrap_or(LlmError::NoProvider))
    }
}

/// A completion without structured tool calls whose text is a call of an offered tool becomes
/// that call.
fn lenient(mut c: Completion, request: &ChatRequest<'_>) -> Completion {
    if !c.tool_calls.is_empty() || request.tools.is_empty() || request.tool_choice == ToolChoice::None {
        return c;
    }
    if let Some(text) = c.content.as_deref() {
        let names: Vec<&str> = request.tools.iter().map(|t| t.name.as_str()).collect();
        let (rest, calls) = extract_tool_calls(text, &names);
        if !calls.is_empty() {
            tracing::debug!(calls = calls.len(), "tool calls read from the model's text");
            c.tool_calls = calls;
            c.content = rest;
        }
    }
    c
}

static CALL_IDS: AtomicU64 = AtomicU64::new(1);

/// A fresh tool-call id (`call_<n>`), unique in this process.
pub fn new_call_id() -> String {
    format!("call_{:x}", CALL_IDS.fetch_add(1, Ordering::Relaxed))
}

/// Tool calls written into a model's text: `<tool_call>{…}</tool_call>` blocks (the closing tag
/// may be missing at the end), fenced ```` ```json {…} ``` ```` blocks, or bare JSON objects, each
/// `{"name": <one of tools>, "arguments": {…}}` (`arguments` may also be a JSON string holding the
/// object, or be called `parameters`). Returns the text that is left (None when nothing is) and the
/// calls, in order; text that names no offered tool is left as it is.
pub fn extract_tool_calls(text: &str, tools: &[&str]) -> (Option<String>, Vec<ToolCall>) {
    let mut calls = Vec::new();
    let mut rest = String::new();
    let mut i = 0;
    while i < text.len() {
        // The earliest place a JSON object starts.
        let Some(off) = text[i..].find('{') else { break };
        let at = i + off;
        let mut de = serde_json::Deserializer::from_str(&text[at..]).into_iter::<Value>();
        match de.next() {
            Some(Ok(v)) => {
                let end = at + de.byte_offset();
                if let Some(call) = as_call(&v, tools) {
                    // Drop the wrapping of this call: a `<tool_call>` tag or a ``` fence before it,
                    // and its closing after it.
                    let before = strip_opening(&text[i..at]);
                    rest.push_str(before);
                    calls.push(call);
                    i = skip_closing(text, end);
                    continue;
                }
                rest.push_str(&text[i..end]);
                i = end;
            }
            _ => {
                rest.push_str(&text[i..=at]);
                i = at + 1;
            }
        }
    }
    rest.push_str(&text[i.min(text.len())..]);
    let rest = rest.trim();
    (if rest.is_empty() { None } else { Some(rest.to_string()) }, calls)
}

fn as_call(v: &Value, tools: &[&str]) -> Option<ToolCall> {
    let o = v.as_object()?;
    let name = o.get("name")?.as_str()?;
    if !tools.contains(&name) {
        return None;
    }
    let args = match o.get("arguments").or_else(|| o.get("parameters")) {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => v,
            _ => return None,
        },
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return None,
    };
    Some(ToolCall { id: new_call_id(), name: name.to_string(), arguments: args.to_string() })
}

/// `text` without a trailing `<tool_call>` tag or ``` fence (and the whitespace around them).
fn strip_opening(text: &str) -> &str {
    let t = text.trim_end();
    for open in ["<tool_call>", "```json", "```JSON", "```"] {
        if let Some(s) = t.strip_suffix(open) {
            return s;
        }
    }
    text
}

/// Where the text goes on after a call that ended at `end`: past a `</tool_call>` or a closing fence.
fn skip_closing(text: &str, end: usize) -> usize {
    let after = &text[end..];
    let trimmed = after.trim_start();
    let ws = after.len() - trimmed.len();
    for close in ["</tool_call>", "```"] {
        if trimmed.starts_with(close) {
            return end + ws + close.len();
        }
    }
    end
}

/// Read a chat.completion leniently: only `choices[0].message` matters.
pub fn parse_completion(v: &Value) -> Result<Completion, LlmError> {
    let msg = v
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("message"))
        .ok_or_else(|| LlmError::BadResponse(format!("no choices[0].message in {}", truncate(&v.to_string(), 300))))?;
    let content = msg
        .get("content")
        .and_then(Value::as_str)
        .map(str::to_string)
        .filter(|s| !s.trim().is_empty());
    let mut tool_calls = Vec::new();
    if let Some(calls) = msg.get("tool_calls").and_then(Value::as_array) {
        for (i, c) in calls.iter().enumerate() {
            let f = c.get("function").unwrap_or(&Value::Null);
            let name = f.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            // Arguments are a JSON string on the wire; some servers send an object.
            let arguments = match f.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => "{}".to_string(),
                Some(other) => other.to_string(),
            };
            let id = c
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("call_{i}"));
            tool_calls.push(ToolCall { id, name, arguments });
        }
    }
    Ok(Completion { content, tool_calls })
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn parses_tool_calls_and_text() {
        let v = json!({"choices": [{"message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "wave", "arguments": "{\"times\":2}"}},
                           {"type": "function", "function": {"name": "x", "arguments": {"a": 1}}}]}}]});
        let c = parse_completion(&v).unwrap();
        assert_eq!(c.content, None);
        assert_eq!(c.tool_calls[0], ToolCall { id: "c1".into(), name: "wave".into(), arguments: "{\"times\":2}".into() });
        assert_eq!(c.tool_calls[1].id, "call_1");
        assert_eq!(c.tool_calls[1].arguments, "{\"a\":1}");
    }

    #[test]
    fn rejects_a_response_without_choices() {
        assert!(matches!(parse_completion(&json!({"error": "x"})), Err(LlmError::BadResponse(_))));
    }

    #[test]
    fn wire_format_of_messages() {
        let m = Message::Assistant {
            content: None,
            tool_calls: vec![ToolCall { id: "a".into(), name: "t".into(), arguments: "{}".into() }],
        };
        let w = m.to_wire();
        assert_eq!(w["tool_calls"][0]["function"]["name"], "t");
        assert_eq!(Message::Tool { call_id: "a".into(), content: "ok".into() }.to_wire()["tool_call_id"], "a");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(truncate("abc", 5), "abc");
    }

    const TOOLS: &[&str] = &["launch_process", "list_processes"];

    #[test]
    fn tool_calls_in_text_bare_fenced_and_tagged() {
        let bare = r#"{"name": "launch_process", "arguments": {"system_prompt": "Wave.", "robots": ["reachy-mini"]}}"#;
        let (rest, calls) = extract_tool_calls(bare, TOOLS);
        assert_eq!(rest, None);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "launch_process");
        let args: Value = serde_json::from_str(&calls[0].arguments).unwrap();
        assert_eq!(args["robots"][0], "reachy-mini");

        let fenced = "I will start a worker.\n```json\n{\"name\": \"list_processes\", \"arguments\": {}}\n```\n";
        let (rest, calls) = extract_tool_calls(fenced, TOOLS);
        assert_eq!(rest.as_deref(), Some("I will start a worker."));
        assert_eq!(calls[0].name, "list_processes");

        let tagged = "<tool_call>\n{\"name\": \"list_processes\", \"arguments\": \"{}\"}\n</tool_call>\n<tool_call>\n{\"name\": \"launch_process\", \"parameters\": {\"system_prompt\": \"x\"}}";
        let (rest, calls) = extract_tool_calls(tagged, TOOLS);
        assert_eq!(rest, None, "the unterminated last tag is dropped too");
        assert_eq!(calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["list_processes", "launch_process"]);
        assert_eq!(calls[1].arguments, r#"{"system_prompt":"x"}"#);
        assert_ne!(calls[0].id, calls[1].id);
    }

    #[test]
    fn text_that_is_no_call_of_an_offered_tool_stays_text() {
        for t in [
            "Sure, the robot is idle.",
            r#"{"name": "fly", "arguments": {}}"#,                   // not offered
            r#"{"name": "list_processes", "arguments": [1]}"#,       // arguments not an object
            r#"Use {"braces"} and { unbalanced"#,                    // not a call, not even JSON
            r#"{"name": "list_processes", "arguments": "not json"}"#, // string that is no object
        ] {
            let (rest, calls) = extract_tool_calls(t, TOOLS);
            assert!(calls.is_empty(), "{t}");
            assert_eq!(rest.as_deref(), Some(t.trim()), "{t}");
        }
    }

    #[test]
    fn lenient_applies_only_when_tools_were_offered() {
        let c = Completion { content: Some(r#"{"name": "list_processes", "arguments": {}}"#.into()), tool_calls: vec![] };
        let specs = [ToolSpec { name: "list_processes".into(), description: String::new(), parameters: json!({}) }];
        let msgs = [Message::User("x".into())];
        let with = lenient(c.clone(), &ChatRequest::new(&msgs, &specs));
        assert_eq!(with.tool_calls.len(), 1);
        assert_eq!(with.content, None);
        let without = lenient(c.clone(), &ChatRequest::new(&msgs, &[]));
        assert!(without.tool_calls.is_empty());
        let none = lenient(c, &ChatRequest { tool_choice: ToolChoice::None, ..ChatRequest::new(&msgs, &specs) });
        assert!(none.tool_calls.is_empty());
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        h.insert(reqwest::header::RETRY_AFTER, httpdate::fmt_http_date(later).parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30), "{d:?}");
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "-1".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn error_messages_from_any_body() {
        let s = reqwest::StatusCode::TOO_MANY_REQUESTS;
        assert_eq!(error_message(r#"{"error": {"message": "slow down"}}"#, s), "slow down");
        assert_eq!(error_message(r#"{"error": "busy"}"#, s), "busy");
        assert_eq!(error_message("Rate limit exceeded, try later", s), "Rate limit exceeded, try later");
        assert_eq!(error_message("", s), "Too Many Requests");
    }

    /// A tiny HTTP server answering each request with the next scripted raw response (status line,
    /// headers, body parts with pauses), recording how many requests came.
    struct Raw {
        url: String,
        hits: Arc<Mutex<u32>>,
    }

    #[derive(Clone)]
    enum Part {
        Bytes(&'static str),
        Pause(u64),
    }

    async fn raw_server(script: Vec<Vec<Part>>) -> Raw {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(0u32));
        let h = hits.clone();
        tokio::spawn(async move {
            let mut script = script.into_iter();
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let parts = script.next().unwrap_or_else(|| vec![Part::Bytes("HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")]);
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    // Read the request head and body (small requests: one read is enough here).
                    let _ = sock.read(&mut buf).await;
                    *h.lock().unwrap() += 1;
                    for p in parts {
                        match p {
                            Part::Bytes(b) => {
                                if sock.write_all(b.as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                            Part::Pause(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                        }
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        Raw { url, hits }
    }

    fn client(url: &str, f: impl FnOnce(&mut LlmConfig)) -> OpenAiChat {
        let mut cfg = LlmConfig {
            urls: vec![url.into()],
            key_envs: vec!["".into()],
            max_retries: 2,
            backoff_sec: 0.01,
            first_token_timeout_sec: 2.0,
            stall_timeout_sec: 2.0,
            timeout_sec: 10.0,
            ..Default::default()
        };
        f(&mut cfg);
        OpenAiChat::new(&cfg).unwrap()
    }

    #[test]
    fn a_requests_own_max_tokens_wins_over_the_configured_one() {
        let c = OpenAiChat::new(&LlmConfig { urls: vec!["http://127.0.0.1:9/v1".into()], max_tokens: 256, ..Default::default() }).unwrap();
        let msgs = [Message::User("hi".into())];
        assert_eq!(c.request_body("m", &ChatRequest::new(&msgs, &[]))["max_tokens"], json!(256));
        let one = ChatRequest { max_tokens: Some(1), ..ChatRequest::new(&msgs, &[]) };
        assert_eq!(c.request_body("m", &one)["max_tokens"], json!(1));
        let unset = OpenAiChat::new(&LlmConfig { urls: vec!["http://127.0.0.1:9/v1".into()], ..Default::default() }).unwrap();
        assert!(unset.request_body("m", &ChatRequest::new(&msgs, &[])).get("max_tokens").is_none());
    }

    const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";

    #[tokio::test]
    async fn streams_text_and_tool_calls_through_keepalives() {
        let srv = raw_server(vec![vec![
            Part::Bytes(SSE_HEAD),
            Part::Bytes(": queued\n\n"),
            Part::Bytes("data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n"),
            Part::Pause(20),
            Part::Bytes("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\",\"tool_calls\":[{\"index\":0,\"id\":\"c9\",\"function\":{\"name\":\"wave\",\"arguments\":\"{\\\"ti\"}}]}}]}\n\n"),
            Part::Bytes("data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"mes\\\":2}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\ndata: [DONE]\n\n"),
        ]])
        .await;
        let c = client(&srv.url, |_| {});
        let msgs = [Message::User("hi".into())];
        let out = c.complete(ChatRequest::new(&msgs, &[])).await.unwrap();
        assert_eq!(out.content.as_deref(), Some("Hello"));
        assert_eq!(out.tool_calls, vec![ToolCall { id: "c9".into(), name: "wave".into(), arguments: r#"{"times":2}"#.into() }]);
    }

    #[tokio::test]
    async fn a_persistent_500_is_tried_exactly_max_retries_plus_one_times() {
        let resp = vec![Part::Bytes("HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: 27\r\nconnection: close\r\n\r\n{\"error\":{\"message\":\"boom\"}}")];
        let srv = raw_server(vec![resp.clone(), resp.clone(), resp.clone(), resp.clone(), resp]).await;
        let c = client(&srv.url, |_| {});
        let msgs = [Message::User("hi".into())];
        let err = c.complete(ChatRequest::new(&msgs, &[])).await.unwrap_err();
        assert!(matches!(&err, LlmError::Api { status: 500, .. }), "{err}");
        assert_eq!(*srv.hits.lock().unwrap(), 3, "llm.max_retries = 2: three HTTP requests in all");
    }

    #[tokio::test]
    async fn a_429_with_a_text_body_is_retried_after_its_retry_after() {
        let srv = raw_server(vec![
            vec![Part::Bytes("HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\nretry-after: 1\r\ncontent-length: 19\r\nconnection: close\r\n\r\nRate limit exceeded")],
            vec![
                Part::Bytes(SSE_HEAD),
                Part::Bytes("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"),
            ],
        ])
        .await;
        let c = client(&srv.url, |cfg| cfg.backoff_sec = 0.0);
        let msgs = [Message::User("hi".into())];
        let t0 = Instant::now();
        let out = c.complete(ChatRequest::new(&msgs, &[])).await.unwrap();
        assert_eq!(out.content.as_deref(), Some("ok"));
        assert!(t0.elapsed() >= Duration::from_millis(950), "waited {:?}: Retry-After was honoured", t0.elapsed());
        assert_eq!(*srv.hits.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_stream_that_never_starts_or_stalls_is_a_timeout_and_the_deadline_bounds_a_drip() {
        // Headers, then silence: the first chunk never comes.
        let silent = vec![Part::Bytes(SSE_HEAD), Part::Pause(5_000)];
        let srv = raw_server(vec![silent]).await;
        let c = client(&srv.url, |cfg| {
            cfg.max_retries = 0;
            cfg.first_token_timeout_sec = 0.3;
        });
        let msgs = [Message::User("hi".into())];
        let t0 = Instant::now();
        let err = c.complete(ChatRequest::new(&msgs, &[])).await.unwrap_err();
        assert!(matches!(&err, LlmError::Timeout(m) if m.contains("did not start")), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(2));

        // Starts, then stalls.
        let stalls = vec![Part::Bytes(SSE_HEAD), Part::Bytes("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"), Part::Pause(5_000)];
        let srv = raw_server(vec![stalls]).await;
        let c = client(&srv.url, |cfg| {
            cfg.max_retries = 0;
            cfg.stall_timeout_sec = 0.3;
        });
        let err = c.complete(ChatRequest::new(&msgs, &[])).await.unwrap_err();
        assert!(matches!(&err, LlmError::Timeout(m) if m.contains("stalled")), "{err}");

        // Drips a keep-alive every 100 ms forever: neither silent nor done; the caller's deadline ends it.
        let mut drip = vec![Part::Bytes(SSE_HEAD)];
        for _ in 0..200 {
            drip.push(Part::Bytes(": still here\n\n"));
            drip.push(Part::Pause(100));
        }
        let srv = raw_server(vec![drip.clone(), drip.clone(), drip]).await;
        let c = client(&srv.url, |cfg| cfg.stall_timeout_sec = 1.0);
        let t0 = Instant::now();
        let req = ChatRequest { deadline: Some(Instant::now() + Duration::from_millis(800)), ..ChatRequest::new(&msgs, &[]) };
        let err = c.complete(req).await.unwrap_err();
        let took = t0.elapsed();
        assert!(matches!(&err, LlmError::Timeout(_)), "{err}");
        assert!(took >= Duration::from_millis(750) && took < Duration::from_millis(1500), "{took:?}");
        assert_eq!(*srv.hits.lock().unwrap(), 1, "no retry past the deadline");
    }

    #[tokio::test]
    async fn a_whole_json_answer_is_read_too() {
        let body = r#"{"choices":[{"message":{"role":"assistant","content":"{\"name\": \"list_processes\", \"arguments\": {}}"}}]}"#;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
        let srv = raw_server(vec![vec![Part::Bytes(Box::leak(head.into_boxed_str())), Part::Bytes(body)]]).await;
        let c = client(&srv.url, |_| {});
        let msgs = [Message::User("hi".into())];
        let specs = [ToolSpec { name: "list_processes".into(), description: String::new(), parameters: json!({"type": "object"}) }];
        let out = c.complete(ChatRequest::new(&msgs, &specs)).await.unwrap();
        assert_eq!(out.tool_calls.len(), 1, "the call written as text became a call");
        assert_eq!(out.tool_calls[0].name, "list_processes");
    }

    #[tokio::test]
    async fn unreachable_provider_is_a_clear_error() {
        // Port 9 on loopback: nothing listens, the connection is refused at once.
        let cfg = LlmConfig { urls: vec!["http://127.0.0.1:9/v1".into()], max_retries: 0, ..Default::default() };
        let chat = OpenAiChat::new(&cfg).unwrap();
        let msgs = [Message::User("hi".into())];
        let err = chat.complete(ChatRequest::new(&msgs, &[])).await.unwrap_err();
        assert!(matches!(err, LlmError::Unreachable(_)), "{err}");
        assert!(chat.probe().await.is_none());
    }

    #[tokio::test]
    async fn a_provider_whose_key_is_not_set_is_skipped() {
        let srv = raw_server(vec![vec![
            Part::Bytes(SSE_HEAD),
            Part::Bytes("data: {\"choices\":[{\"delta\":{\"content\":\"from b\"},\"finish_reason\":\"stop\"}]}\n\n"),
        ]])
        .await;
        let cfg = LlmConfig {
            urls: vec!["http://127.0.0.1:9/v1".into(), srv.url.clone()],
            key_envs: vec!["ROSA_TEST_SURELY_UNSET_KEY".into(), "".into()],
            max_retries: 0,
            ..Default::default()
        };
        let chat = OpenAiChat::new(&cfg).unwrap();
        let msgs = [Message::User("hi".into())];
        assert_eq!(chat.complete(ChatRequest::new(&msgs, &[])).await.unwrap().content.as_deref(), Some("from b"));
        assert_eq!(chat.active_provider().url, srv.url);
    }
}
