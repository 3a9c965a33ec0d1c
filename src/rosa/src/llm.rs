//! The LLM client shared by the kernel and the workers: OpenAI-compatible chat completions with
//! tool calling, over an ordered provider list with failover, timeouts and retries.
//!
//! The wire format is written and read here (async-openai's "bring your own types" calls), so that
//! servers that add or omit fields (vLLM, Groq, llama.cpp…) are accepted as long as the core
//! OpenAI shape is there.

use crate::config::{LlmConfig, Provider};
use async_openai::{config::OpenAIConfig, error::OpenAIError, Client};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
    fn to_wire(&self) -> Value {
        json!({"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}})
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
    #[error("LLM error {status}: {message}")]
    Api { status: u16, message: String },
    #[error("LLM answer not understood: {0}")]
    BadResponse(String),
}

/// The seam where the model enters: the OpenAI client in the product, a fake in unit tests.
#[async_trait::async_trait]
pub trait ChatModel: Send + Sync {
    async fn complete(&self, messages: &[Message], tools: &[ToolSpec]) -> Result<Completion, LlmError>;
}

struct Endpoint {
    provider: Provider,
    client: Client<OpenAIConfig>,
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
}

enum Failure {
    /// Worth retrying on the same provider (429, 5xx, timeout).
    Transient(LlmError),
    /// Go to the next provider at once (connection refused, 401…).
    Provider(LlmError),
    /// The request itself is at fault: stop (400, 404, 422).
    Fatal(LlmError),
}

impl OpenAiChat {
    /// A client of `config`'s providers with its own HTTP client.
    pub fn new(config: &LlmConfig) -> Result<Self, LlmError> {
        let http = crate::http::client(
            Duration::from_secs_f64(config.connect_timeout_sec.max(0.1)),
            config.urls.iter().map(String::as_str),
        )
        .map_err(|e| LlmError::Unreachable(format!("HTTP client: {e}")))?;
        Self::with_http(config, http)
    }

    /// A client over a shared HTTP client (see [`crate::http::client`]); each request gets
    /// `llm.timeout_sec` as its deadline.
    pub fn with_http(config: &LlmConfig, http: reqwest::Client) -> Result<Self, LlmError> {
        let providers = config.providers();
        if providers.is_empty() {
            return Err(LlmError::NoProvider);
        }
        let endpoints = providers
            .into_iter()
            .map(|provider| {
                let key = if provider.key_env.is_empty() {
                    String::new()
                } else {
                    std::env::var(&provider.key_env).unwrap_or_default()
                };
                let cfg = OpenAIConfig::new().with_api_base(provider.url.clone()).with_api_key(key);
                let client = Client::build(http.clone(), cfg);
                Endpoint { provider, client }
            })
            .collect();
        Ok(Self { endpoints, active: AtomicUsize::new(0), config: config.clone(), http })
    }

    /// The provider calls go to now.
    pub fn active_provider(&self) -> &Provider {
        &self.endpoints[self.active.load(Ordering::Relaxed) % self.endpoints.len()].provider
    }

    /// Probe `GET <url>/models` on each provider in order and make the first that answers the active
    /// one. Returns it, or `None` when none answered (calls will still try them all).
    pub async fn probe(&self) -> Option<&Provider> {
        for (i, ep) in self.endpoints.iter().enumerate() {
            let mut req = self
                .http
                .get(format!("{}/models", ep.provider.url))
                .timeout(Duration::from_secs_f64(self.config.connect_timeout_sec.max(0.1)));
            if !ep.provider.key_env.is_empty() {
                match std::env::var(&ep.provider.key_env) {
                    Ok(key) if !key.is_empty() => req = req.bearer_auth(key),
                    _ => {
                        tracing::info!(url = %ep.provider.url, key_env = %ep.provider.key_env,
                            "skipping LLM provider: its key variable is not set");
                        continue;
                    }
                }
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

    fn request_body(&self, model: &str, messages: &[Message], tools: &[ToolSpec]) -> Value {
        let mut body = json!({
            "model": model,
            "messages": messages.iter().map(Message::to_wire).collect::<Vec<_>>(),
            "temperature": self.config.temperature,
            "stream": false,
        });
        if !tools.is_empty() {
            body["tools"] = tools.iter().map(ToolSpec::to_wire).collect();
            body["tool_choice"] = json!("auto");
        }
        body
    }

    async fn call_once(&self, ep: &Endpoint, body: &Value) -> Result<Completion, Failure> {
        let deadline = Duration::from_secs_f64(self.config.timeout_sec.max(0.1));
        let chat = ep.client.chat();
        match tokio::time::timeout(deadline, chat.create_byot::<&Value, Value>(body)).await {
            Err(_) => Err(Failure::Transient(LlmError::Unreachable(format!(
                "no answer within {:.0} s (llm.timeout_sec)",
                deadline.as_secs_f64()
            )))),
            Ok(Ok(v)) => parse_completion(&v).map_err(Failure::Fatal),
            Ok(Err(e)) => Err(classify(e)),
        }
    }
}

fn classify(e: OpenAIError) -> Failure {
    match e {
        OpenAIError::Reqwest(e) if e.is_timeout() => Failure::Transient(LlmError::Unreachable(e.to_string())),
        OpenAIError::Reqwest(e) => Failure::Provider(LlmError::Unreachable(format!("{e} ({e:?})"))),
        OpenAIError::ApiError(api) => {
            let status = api.status_code.as_u16();
            let err = LlmError::Api { status, message: api.api_error.message.clone() };
            match status {
                429 | 500..=599 => Failure::Transient(err),
                401 | 403 => Failure::Provider(err),
                _ => Failure::Fatal(err),
            }
        }
        OpenAIError::JSONDeserialize(e, body) => {
            Failure::Fatal(LlmError::BadResponse(format!("{e}: {}", truncate(&body, 300))))
        }
        other => Failure::Provider(LlmError::Unreachable(other.to_string())),
    }
}

#[async_trait::async_trait]
impl ChatModel for OpenAiChat {
    async fn complete(&self, messages: &[Message], tools: &[ToolSpec]) -> Result<Completion, LlmError> {
        let n = self.endpoints.len();
        let start = self.active.load(Ordering::Relaxed);
        let mut last_err = LlmError::NoProvider;
        for k in 0..n {
            let i = (start + k) % n;
            let ep = &self.endpoints[i];
            let body = self.request_body(&ep.provider.model, messages, tools);
            let mut delay = Duration::from_secs_f64(self.config.backoff_sec.max(0.0));
            for attempt in 0..=self.config.max_retries {
                match self.call_once(ep, &body).await {
                    Ok(c) => {
                        if i != start {
                            tracing::warn!(url = %ep.provider.url, "LLM failed over to this provider");
                            self.active.store(i, Ordering::Relaxed);
                        }
                        return Ok(c);
                    }
                    Err(Failure::Fatal(e)) => return Err(e),
                    Err(Failure::Provider(e)) => {
                        tracing::warn!(url = %ep.provider.url, error = %e, "LLM provider failed");
                        last_err = e;
                        break;
                    }
                    Err(Failure::Transient(e)) => {
                        tracing::warn!(url = %ep.provider.url, attempt, error = %e, "LLM call failed, retrying");
                        last_err = e;
                        if attempt < self.config.max_retries {
                            tokio::time::sleep(delay).await;
                            delay *= 2;
                        }
                    }
                }
            }
        }
        Err(last_err)
    }
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

    #[tokio::test]
    async fn unreachable_provider_is_a_clear_error() {
        // Port 9 on loopback: nothing listens, the connection is refused at once.
        let cfg = LlmConfig { urls: vec!["http://127.0.0.1:9/v1".into()], max_retries: 0, ..Default::default() };
        let chat = OpenAiChat::new(&cfg).unwrap();
        let err = chat.complete(&[Message::User("hi".into())], &[]).await.unwrap_err();
        assert!(matches!(err, LlmError::Unreachable(_)), "{err}");
        assert!(chat.probe().await.is_none());
    }
}
