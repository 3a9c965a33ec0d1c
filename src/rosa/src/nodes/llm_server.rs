//! The `llm_server` node (`/rosa/llm_server`): the embedded local model as an OpenAI-compatible
//! endpoint on 127.0.0.1 (`port`), with its parameters on the node and its state on `/diagnostics`.
//!
//! It supervises llama.cpp's `llama-server` (built by `./rosa setup` into `.rosa/llama`) on a
//! private loopback port and serves the public endpoint itself (see [`crate::llm_server`]).

use crate::llm_server::backend::{LlamaConfig, LlamaServer, State};
use crate::llm_server::queue::Scheduler;
use crate::llm_server::server::{self, App, ServerConfig, Stats};
use crate::ros::{self, Spinner};
use crate::ConfigurationError;
use r2r::diagnostic_msgs::msg::{DiagnosticArray, DiagnosticStatus, KeyValue};
use r2r::Node;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Parameters of the llm_server node (see `config/rosa.yaml`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct LlmServerParams {
    /// Address of the endpoint (loopback unless you mean to serve other machines).
    pub bind: String,
    /// Port of the endpoint: `http://<bind>:<port>/v1`.
    #[schemars(range(min = 0, max = 65535))]
    pub port: u16,
    /// The GGUF model: absolute, or looked up in `$ROSA_MODELS_DIR`, `$ROSA_ROOT/.rosa/models`,
    /// the checkout's `.rosa/models`.
    pub model: String,
    /// The model's id on `/v1/models` (any name is accepted in requests).
    pub model_name: String,
    /// llama-server: "" = `$ROSA_LLAMA_SERVER`, then `.rosa/llama/bin/llama-server` of the checkout,
    /// then `llama-server` on PATH.
    pub server_executable: String,
    /// KV cache per slot, tokens (the longest prompt plus answer a request may have).
    #[schemars(range(min = 256, max = 131072))]
    pub ctx_per_slot: u32,
    /// Slots, each keeping its own prompt processed (the kernel's, the workers').
    #[schemars(range(min = 1, max = 16))]
    pub slots: u32,
    /// Generations at once (the rest wait in the fair queue).
    #[schemars(range(min = 1, max = 16))]
    pub max_concurrent: u32,
    /// CPU threads generating tokens (0 = one per core). Generation synchronises its threads at
    /// every layer, so a thread sharing its core with a busy process stalls them all; while rosa's
    /// model generates, the rest of the graph waits on it. Measured here (1.5B, 2 cores): 2 threads
    /// 10.6-11.7 tokens/s idle and 9.1-9.8 beside the simulated daemon, 1 thread 5.0-6.0; beside a
    /// process using a whole core, 2 threads 2.9-3.5 and 1 thread 5.2-5.8 (set 1 on a busy machine).
    #[schemars(range(min = 0, max = 256))]
    pub threads: u32,
    /// CPU threads processing prompts (0 = one per core).
    #[schemars(range(min = 0, max = 256))]
    pub threads_batch: u32,
    /// Host memory for the prompt cache of idle slots, MiB.
    #[schemars(range(min = 0, max = 65536))]
    pub prompt_cache_mib: u32,
    /// `max_tokens` when a request gives none, and the most one may ask for.
    #[schemars(range(min = 1, max = 131072))]
    pub max_tokens: u32,
    /// Temperature when a request gives none.
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: f64,
    /// Clients (OpenAI `user`) served before the others in the queue.
    pub priority_clients: Vec<String>,
    /// Constrain tool calls with a grammar from the tools' JSON schemas.
    pub tool_grammar: bool,
    /// Load the model at start (false: on the first request).
    pub preload: bool,
    /// Loading may take this long, seconds.
    #[schemars(range(min = 1.0, max = 3600.0))]
    pub load_timeout_sec: f64,
    /// One generation ends after this, seconds.
    #[schemars(range(min = 1.0, max = 86400.0))]
    pub request_timeout_sec: f64,
    /// Keep-alive comments on waiting streams this often, seconds.
    #[schemars(range(min = 0.05, max = 60.0))]
    pub ping_sec: f64,
    /// More llama-server arguments.
    pub extra_args: Vec<String>,
    /// `/diagnostics` this often, seconds.
    #[schemars(range(min = 0.1, max = 3600.0))]
    pub diagnostics_period_sec: f64,
}

impl crate::params::NodeParams for LlmServerParams {
    // The endpoint, llama-server and its model are set up once, at start.
    const DYNAMIC: &'static [&'static str] = &[];

    fn check(&self) -> Result<(), String> {
        if self.max_concurrent > self.slots {
            return Err(format!("max_concurrent = {} may not exceed slots = {}", self.max_concurrent, self.slots));
        }
        Ok(())
    }
}

impl Default for LlmServerParams {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1".into(),
            port: 6001,
            model: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf".into(),
            model_name: "qwen2.5-coder-1.5b-instruct".into(),
            server_executable: String::new(),
            ctx_per_slot: 8192,
            slots: 2,
            max_concurrent: 1,
            threads: 0,
            threads_batch: 0,
            prompt_cache_mib: 512,
            max_tokens: 1024,
            temperature: 0.2,
            priority_clients: vec!["kernel".into()],
            tool_grammar: true,
            preload: true,
            load_timeout_sec: 120.0,
            request_timeout_sec: 600.0,
            ping_sec: 2.0,
            extra_args: vec![],
            diagnostics_period_sec: 2.0,
        }
    }
}

fn checked_secs(name: &str, v: f64, lo: f64, hi: f64) -> Result<Duration, ConfigurationError> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(ConfigurationError(format!("llm_server: {name} = {v} is out of range ({lo}..{hi})")))
    }
}

/// Find llama-server (see [`LlmServerParams::server_executable`]).
pub fn find_server(param: &str) -> Result<PathBuf, ConfigurationError> {
    let mut looked = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if !param.is_empty() {
        candidates.push(param.into());
    } else {
        if let Ok(p) = std::env::var("ROSA_LLAMA_SERVER") {
            candidates.push(p.into());
        }
        if let Ok(r) = std::env::var("ROSA_ROOT") {
            candidates.push(Path::new(&r).join(".rosa/llama/bin/llama-server"));
        }
        if let Ok(exe) = std::env::current_exe() {
            // <root>/install/rosa/lib/rosa/<exe>
            if let Some(root) = exe.ancestors().nth(5) {
                candidates.push(root.join(".rosa/llama/bin/llama-server"));
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|d| d.join("llama-server")));
        }
    }
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
        looked.push(c.display().to_string());
    }
    Err(ConfigurationError(format!(
        "llm_server: llama-server not found (looked at {}); `./rosa setup` builds it, or set server_executable",
        looked.join(", ")
    )))
}

fn level(state: &State) -> (u8, String) {
    match state {
        State::Ready { .. } => (DiagnosticStatus::OK as u8, "ready".into()),
        State::Idle => (DiagnosticStatus::OK as u8, "idle: the model loads on the first request".into()),
        State::Loading => (DiagnosticStatus::WARN as u8, "loading the model".into()),
        State::Failed(m) => (DiagnosticStatus::ERROR as u8, format!("failed: {m}")),
    }
}

fn diagnostics(app: &App, params: &LlmServerParams, url: &str) -> DiagnosticArray {
    let state = app.backend.state();
    let (lvl, message) = level(&state);
    let kv = |k: &str, v: String| KeyValue { key: k.into(), value: v };
    let q = app.queue.state();
    let mut values = vec![
        kv("url", url.to_string()),
        kv("model", params.model.clone()),
        kv("running", q.running.to_string()),
        kv("waiting", q.waiting.to_string()),
        kv("requests", app.stats.requests.load(Ordering::Relaxed).to_string()),
        kv("failed", app.stats.failed.load(Ordering::Relaxed).to_string()),
        kv("cancelled", app.stats.cancelled.load(Ordering::Relaxed).to_string()),
        kv("rss_mb", format!("{:.0}", app.backend.rss_bytes() as f64 / 1e6)),
    ];
    if let State::Ready { pid, load_sec } = state {
        values.push(kv("pid", pid.to_string()));
        values.push(kv("load_sec", format!("{load_sec:.1}")));
    }
    if let Ok(g) = app.stats.last.lock() {
        if let Some((client, u, secs)) = g.as_ref() {
            let t = u.to_json();
            values.push(kv("last_client", client.clone()));
            values.push(kv("last_seconds", format!("{secs:.2}")));
            values.push(kv("last_prompt_tokens", u.prompt_tokens.to_string()));
            values.push(kv("last_cached_tokens", u.cached_tokens.to_string()));
            values.push(kv("last_prompt_tokens_per_sec", format!("{:.1}", t["timings"]["prompt_per_second"].as_f64().unwrap_or(0.0))));
            values.push(kv("last_generation_tokens_per_sec", format!("{:.1}", t["timings"]["predicted_per_second"].as_f64().unwrap_or(0.0))));
        }
    }
    DiagnosticArray {
        header: r2r::std_msgs::msg::Header { stamp: ros::now(), frame_id: String::new() },
        status: vec![DiagnosticStatus {
            level: lvl,
            name: "llm_server: local model".into(),
            message,
            hardware_id: params.model_name.clone(),
            values,
        }],
    }
}

pub async fn run() -> anyhow::Result<()> {
    let ctx = r2r::Context::create()?;
    let mut node = Node::create(ctx, "llm_server", "/rosa")?;
    let declared = ros::declare_params::<LlmServerParams>(&mut node)?;
    ros::attach_rosout(&mut node);
    let params = declared.current();
    let diag = node.create_publisher::<DiagnosticArray>("/diagnostics", ros::reliable(10))?;
    let spinner = Spinner::start(node, Duration::from_millis(50));

    let bad = |m: String| anyhow::Error::new(ConfigurationError(m));
    if !(256..=131_072).contains(&params.ctx_per_slot) {
        return Err(bad(format!("llm_server: ctx_per_slot = {} is out of range (256..131072)", params.ctx_per_slot)));
    }
    if !(1..=16).contains(&params.slots) || !(1..=params.slots).contains(&params.max_concurrent) {
        return Err(bad(format!("llm_server: slots = {} must be 1..16 and max_concurrent = {} 1..slots", params.slots, params.max_concurrent)));
    }
    let load_timeout = checked_secs("load_timeout_sec", params.load_timeout_sec, 1.0, 3600.0)?;
    let request_timeout = checked_secs("request_timeout_sec", params.request_timeout_sec, 1.0, 86_400.0)?;
    let ping = checked_secs("ping_sec", params.ping_sec, 0.05, 60.0)?;
    let period = checked_secs("diagnostics_period_sec", params.diagnostics_period_sec, 0.1, 3600.0)?;
    if !(params.temperature.is_finite() && (0.0..=2.0).contains(&params.temperature)) {
        return Err(bad(format!("llm_server: temperature = {} must be 0..2", params.temperature)));
    }
    let model = crate::stt::model::resolve(&params.model)
        .map_err(|e| bad(format!("llm_server: {e}; `./rosa setup` installs the local model (or run ./rosa up --llm-url URL)")))?;
    let exe = find_server(&params.server_executable)?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);

    let backend = LlamaServer::new(LlamaConfig {
        executable: exe.clone(),
        model: model.clone(),
        ctx_per_slot: params.ctx_per_slot,
        slots: params.slots,
        threads: if params.threads > 0 { params.threads } else { cores },
        threads_batch: if params.threads_batch > 0 { params.threads_batch } else { cores },
        prompt_cache_mib: params.prompt_cache_mib,
        load_timeout,
        extra_args: params.extra_args.clone(),
    })?;
    if params.preload {
        backend.start();
    }
    let app = Arc::new(App {
        backend: Arc::new(backend.clone()),
        queue: Scheduler::new(params.max_concurrent as usize, params.priority_clients.clone()),
        config: ServerConfig {
            model_name: params.model_name.clone(),
            max_tokens: params.max_tokens.max(1),
            temperature: params.temperature,
            ping,
            tool_grammar: params.tool_grammar,
            request_timeout,
        },
        stats: Arc::new(Stats::default()),
    });
    let addr = format!("{}:{}", params.bind, params.port);
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| anyhow::anyhow!("llm_server: cannot listen on {addr}: {e}"))?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    tracing::info!(%url, model = %model.display(), server = %exe.display(), preload = params.preload, "llm_server ready to serve");

    {
        let (app, params, url) = (app.clone(), params.clone(), url.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                if let Err(e) = diag.publish(&diagnostics(&app, &params, &url)) {
                    tracing::warn!("cannot publish /diagnostics: {e}");
                }
            }
        });
    }
    // Streams may be open for minutes: shutting down does not wait for them.
    let served = tokio::select! {
        // Streamed tokens are small writes: TCP_NODELAY sends each at once.
        r = axum::serve(crate::http::nodelay(listener), server::router(app)) => r,
        _ = ros::shutdown_signal() => Ok(()),
    };
    tracing::info!("llm_server shutting down");
    backend.shutdown();
    spinner.stop();
    served.map_err(|e| anyhow::anyhow!("llm_server: {e}"))
}
