//! The OpenAI chat-completions wire format, server side: requests read and checked (a bad one is
//! a 400 with OpenAI's error body, naming the field), answers and stream chunks written.

use super::template::Turn;
use crate::llm::ToolCall;
use serde_json::{json, Map, Value};

/// An error answered to the client: HTTP status and OpenAI's `{"error": {…}}` body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
}

impl ApiError {
    pub fn bad_request(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self { status: 400, message: message.into(), kind: "invalid_request_error", param: Some(param.into()) }
    }
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None }
    }
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}})
    }
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    Auto,
    None,
    Required,
    Named(String),
}

/// `response_format`.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    Text,
    JsonObject,
    JsonSchema(Value),
}

/// A tool offered in the request.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub parameters: Value,
    /// The tool as sent (`{"type": "function", "function": {…}}`), for the prompt.
    pub wire: Value,
}

/// A checked chat-completions request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub turns: Vec<Turn>,
    pub tools: Vec<Tool>,
    pub tool_choice: Choice,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Vec<String>,
    pub format: Format,
    /// OpenAI's `user`: who asks (the fair queue's client).
    pub user: String,
}

fn text_of(v: &Value, param: &str) -> Result<String, ApiError> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut s = String::new();
            for (i, p) in parts.iter().enumerate() {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => s.push_str(p.get("text").and_then(Value::as_str).unwrap_or_default()),
                    Some(t @ ("image_url" | "input_audio" | "file")) => {
                        return Err(ApiError::bad_request(format!("{param}[{i}]"), format!("content of type `{t}` is not supported by this model (text only)")))
                    }
                    _ => return Err(ApiError::bad_request(format!("{param}[{i}]"), "a content part must be {\"type\": \"text\", \"text\": …}")),
                }
            }
            Ok(s)
        }
        _ => Err(ApiError::bad_request(param, "content must be a string, an array of text parts, or null")),
    }
}

fn num(o: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(Some(x)),
            _ => Err(ApiError::bad_request(key, format!("`{key}` must be a number from {lo} to {hi}"))),
        },
    }
}

/// Read and check a request body.
pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request("body", format!("the body is not valid JSON: {e}")))?;
    let Value::Object(o) = v else { return Err(ApiError::bad_request("body", "the body must be a JSON object")) };
    let model = match o.get("model") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::bad_request("model", "`model` must be a string")),
    };
    let msgs = match o.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => return Err(ApiError::bad_request("messages", "`messages` is empty")),
        _ => return Err(ApiError::bad_request("messages", "`messages` (an array of messages) is required")),
    };
    let mut turns = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let p = format!("messages[{i}]");
        let Some(m) = m.as_object() else { return Err(ApiError::bad_request(p, "a message must be an object")) };
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let content = text_of(m.get("content").unwrap_or(&Value::Null), &format!("{p}.content"))?;
        turns.push(match role {
            "system" | "developer" => Turn::System(content),
            "user" => Turn::User(content),
            "tool" => Turn::Tool(content),
            "assistant" => {
                let mut calls = Vec::new();
                if let Some(tc) = m.get("tool_calls").filter(|v| !v.is_null()) {
                    let Some(tc) = tc.as_array() else { return Err(ApiError::bad_request(format!("{p}.tool_calls"), "must be an array")) };
                    for (j, c) in tc.iter().enumerate() {
                        let f = c.get("function").and_then(Value::as_object).ok_or_else(|| {
                            ApiError::bad_request(format!("{p}.tool_calls[{j}].function"), "a tool call needs a `function` object")
                        })?;
                        let name = f.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()).ok_or_else(|| {
                            ApiError::bad_request(format!("{p}.tool_calls[{j}].function.name"), "a tool call needs a name")
                        })?;
                        // Arguments are a JSON string on the wire; the prompt shows them as an object.
                        let args = match f.get("arguments") {
                            None | Some(Value::Null) => json!({}),
                            Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
                            Some(other) => other.clone(),
                        };
                        calls.push((name.to_string(), args));
                    }
                }
                Turn::Assistant { content, calls }
            }
            "" => return Err(ApiError::bad_request(format!("{p}.role"), "a message needs a `role`")),
            other => return Err(ApiError::bad_request(format!("{p}.role"), format!("unknown role `{other}` (system, user, assistant or tool)"))),
        });
    }
    let mut tools = Vec::new();
    if let Some(ts) = o.get("tools").filter(|v| !v.is_null()) {
        let Some(ts) = ts.as_array() else { return Err(ApiError::bad_request("tools", "`tools` must be an array")) };
        for (i, t) in ts.iter().enumerate() {
            let p = format!("tools[{i}]");
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(ApiError::bad_request(p, "only tools of type `function` are supported"));
            }
            let f = t.get("function").and_then(Value::as_object).ok_or_else(|| ApiError::bad_request(format!("{p}.function"), "a tool needs a `function` object"))?;
            let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty() || name.len() > 128 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c)) {
                return Err(ApiError::bad_request(format!("{p}.function.name"), "a tool name is 1 to 128 letters, digits, `_`, `-`, `.` or `:`"));
            }
            if tools.iter().any(|x: &Tool| x.name == name) {
                return Err(ApiError::bad_request(format!("{p}.function.name"), format!("tool `{name}` is offered twice")));
            }
            let parameters = match f.get("parameters") {
                None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
                Some(v @ Value::Object(_)) => v.clone(),
                Some(_) => return Err(ApiError::bad_request(format!("{p}.function.parameters"), "`parameters` must be a JSON schema object")),
            };
            tools.push(Tool { name: name.to_string(), parameters, wire: t.clone() });
        }
    }
    let tool_choice = match o.get("tool_choice") {
        None | Some(Value::Null) => Choice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Choice::Auto,
            "none" => Choice::None,
            "required" => Choice::Required,
            other => return Err(ApiError::bad_request("tool_choice", format!("unknown tool_choice `{other}` (auto, none, required, or a named function)"))),
        },
        Some(Value::Object(c)) => {
            let name = c.get("function").and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or_default();
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::bad_request("tool_choice", format!("tool_choice names `{name}`, which is not among the tools")));
            }
            Choice::Named(name.to_string())
        }
        Some(_) => return Err(ApiError::bad_request("tool_choice", "tool_choice must be a string or an object")),
    };
    if matches!(tool_choice, Choice::Required) && tools.is_empty() {
        return Err(ApiError::bad_request("tool_choice", "tool_choice `required` needs tools"));
    }
    let stream = match o.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("stream", "`stream` must be a boolean")),
    };
    let include_usage = o.get("stream_options").and_then(|s| s.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
    let max_tokens = match o.get("max_completion_tokens").or_else(|| o.get("max_tokens")) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            _ => return Err(ApiError::bad_request("max_tokens", "`max_tokens` must be a positive integer")),
        },
    };
    if let Some(n) = o.get("n").filter(|v| !v.is_null()) {
        if n.as_u64() != Some(1) {
            return Err(ApiError::bad_request("n", "only n = 1 is supported"));
        }
    }
    let temperature = num(&o, "temperature", 0.0, 2.0)?;
    let top_p = num(&o, "top_p", 0.0, 1.0)?;
    let seed = match o.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| ApiError::bad_request("seed", "`seed` must be an integer"))?),
    };
    let stop = match o.get("stop") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(Value::is_string) => a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect(),
        Some(_) => return Err(ApiError::bad_request("stop", "`stop` must be a string or up to 4 strings")),
    };
    let format = match o.get("response_format").filter(|v| !v.is_null()) {
        None => Format::Text,
        Some(f) => match f.get("type").and_then(Value::as_str) {
            Some("text") => Format::Text,
            Some("json_object") => Format::JsonObject,
            Some("json_schema") => {
                let schema = f.get("json_schema").and_then(|j| j.get("schema")).cloned().ok_or_else(|| {
                    ApiError::bad_request("response_format.json_schema.schema", "json_schema needs a `schema`")
                })?;
                Format::JsonSchema(schema)
            }
            _ => return Err(ApiError::bad_request("response_format.type", "response_format type must be text, json_object or json_schema")),
        },
    };
    let user = o.get("user").and_then(Value::as_str).unwrap_or_default().chars().take(128).collect();
    Ok(ChatRequest { model, turns, tools, tool_choice, stream, include_usage, max_tokens, temperature, top_p, seed, stop, format, user })
}

/// Token counts and speeds of one completion.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Prompt tokens in all (cached ones included).
    pub prompt_tokens: u64,
    /// Of which were found in the cache (not processed again).
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub prompt_ms: f64,
    pub predicted_ms: f64,
}

impl Usage {
    pub fn to_json(&self) -> Value {
        let per_sec = |n: u64, ms: f64| if ms > 0.0 { n as f64 * 1000.0 / ms } else { 0.0 };
        let processed = self.prompt_tokens.saturating_sub(self.cached_tokens);
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            // Not OpenAI's: how fast this machine processed the prompt and generated.
            "timings": {
                "prompt_processed": processed,
                "prompt_ms": self.prompt_ms,
                "prompt_per_second": per_sec(processed, self.prompt_ms),
                "predicted_ms": self.predicted_ms,
                "predicted_per_second": per_sec(self.completion_tokens, self.predicted_ms),
            }
        })
    }
}

fn wire_calls(calls: &[ToolCall]) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
        .collect()
}

/// A whole `chat.completion`.
pub fn completion(id: &str, created: u64, model: &str, content: Option<&str>, calls: &[ToolCall], finish: &str, usage: &Usage) -> Value {
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        message["tool_calls"] = wire_calls(calls);
    }
    json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": null}],
        "usage": usage.to_json(),
    })
}

/// One `chat.completion.chunk` with `delta`.
pub fn chunk(id: &str, created: u64, model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
    })
}

/// The delta carrying tool calls.
pub fn calls_delta(calls: &[ToolCall]) -> Value {
    json!({"tool_calls": wire_calls(calls)})
}

/// The last chunk (`usage`, empty choices), sent when `stream_options.include_usage` asks for it.
pub fn usage_chunk(id: &str, created: u64, model: &str, usage: &Usage) -> Value {
    json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage.to_json()})
}

/// A server-sent event carrying `v`.
pub fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(body: Value) -> ApiError {
        parse(body.to_string().as_bytes()).unwrap_err()
    }

    #[test]
    fn reads_a_full_request() {
        let r = parse(
            json!({
                "model": "m", "stream": true, "stream_options": {"include_usage": true}, "user": "kernel",
                "max_tokens": 64, "temperature": 0.2, "seed": 7, "stop": "END",
                "messages": [
                    {"role": "system", "content": "S"},
                    {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "wave", "arguments": "{\"times\": 2}"}}]},
                    {"role": "tool", "tool_call_id": "c1", "content": "ok"}
                ],
                "tools": [{"type": "function", "function": {"name": "wave", "parameters": {"type": "object"}}}],
                "tool_choice": {"type": "function", "function": {"name": "wave"}}
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(r.user, "kernel");
        assert!(r.stream && r.include_usage);
        assert_eq!(r.max_tokens, Some(64));
        assert_eq!(r.stop, vec!["END"]);
        assert_eq!(r.tool_choice, Choice::Named("wave".into()));
        assert_eq!(r.turns[1], Turn::User("hi there".into()));
        assert_eq!(r.turns[2], Turn::Assistant { content: String::new(), calls: vec![("wave".into(), json!({"times": 2}))] });
        assert_eq!(r.turns[3], Turn::Tool("ok".into()));
    }

    #[test]
    fn bad_requests_name_their_field() {
        assert_eq!(parse(b"{not json").unwrap_err().param.as_deref(), Some("body"));
        assert_eq!(parse(b"[1]").unwrap_err().param.as_deref(), Some("body"));
        assert_eq!(bad(json!({"model": "m"})).param.as_deref(), Some("messages"));
        assert_eq!(bad(json!({"messages": []})).param.as_deref(), Some("messages"));
        assert_eq!(bad(json!({"messages": [{"role": "wizard", "content": "x"}]})).param.as_deref(), Some("messages[0].role"));
        assert_eq!(bad(json!({"messages": [{"role": "user", "content": 3}]})).param.as_deref(), Some("messages[0].content"));
        let img = bad(json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}));
        assert!(img.message.contains("not supported"), "{img:?}");
        let m = json!([{"role": "user", "content": "x"}]);
        assert_eq!(bad(json!({"messages": m, "tools": [{"type": "retrieval"}]})).param.as_deref(), Some("tools[0]"));
        assert_eq!(bad(json!({"messages": m, "tools": [{"type": "function", "function": {"name": "a b"}}]})).param.as_deref(), Some("tools[0].function.name"));
        assert_eq!(bad(json!({"messages": m, "tool_choice": {"type": "function", "function": {"name": "ghost"}}})).param.as_deref(), Some("tool_choice"));
        assert_eq!(bad(json!({"messages": m, "tool_choice": "required"})).param.as_deref(), Some("tool_choice"));
        assert_eq!(bad(json!({"messages": m, "temperature": 9})).param.as_deref(), Some("temperature"));
        assert_eq!(bad(json!({"messages": m, "max_tokens": 0})).param.as_deref(), Some("max_tokens"));
        assert_eq!(bad(json!({"messages": m, "n": 2})).param.as_deref(), Some("n"));
        assert_eq!(bad(json!({"messages": m, "stream": "yes"})).param.as_deref(), Some("stream"));
        assert_eq!(bad(json!({"messages": m, "response_format": {"type": "xml"}})).param.as_deref(), Some("response_format.type"));
        let e = bad(json!({"messages": m, "stop": 5}));
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");
        assert_eq!(e.status, 400);
    }

    #[test]
    fn usage_reports_speeds() {
        let u = Usage { prompt_tokens: 700, cached_tokens: 650, completion_tokens: 20, prompt_ms: 1000.0, predicted_ms: 1000.0 };
        let j = u.to_json();
        assert_eq!(j["prompt_tokens_details"]["cached_tokens"], 650);
        assert_eq!(j["timings"]["prompt_per_second"], 50.0);
        assert_eq!(j["timings"]["predicted_per_second"], 20.0);
    }
}
