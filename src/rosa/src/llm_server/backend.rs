//! The model behind the endpoint: llama.cpp's own `llama-server`, run as a child on a private
//! loopback port and spoken to through its native `/completion` API (a raw prompt, our grammar,
//! `cache_prompt`, an explicit slot), streamed.
//!
//! [`Backend`] is the seam: [`LlamaServer`] in the product, a scripted generator in unit tests.
//! Dropping a generation's stream closes its HTTP request, and llama-server then stops that
//! generation (a client that goes away costs nothing more).

use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A grammar for one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Grammar {
    pub gbnf: String,
    /// Applied only from a trigger on (the `<tool_call>` token, or a `{` opening the reply).
    pub lazy: bool,
}

/// One generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generate {
    pub prompt: String,
    pub max_tokens: u32,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Vec<String>,
    pub grammar: Option<Grammar>,
}

/// What a generation streams.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Prompt processing: `processed` of `total` tokens (`cached` of them were in the cache).
    Progress { processed: u64, total: u64, cached: u64 },
    /// Generated text.
    Text(String),
    /// The end.
    Done(Stats),
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stop {
    #[default]
    Eos,
    /// `max_tokens` reached.
    Length,
    /// A stop string.
    Word,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub prompt_ms: f64,
    pub predicted_ms: f64,
    pub stop: Stop,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum BackendError {
    /// The request cannot be served (too long for the context, a grammar the engine refuses).
    #[error("{0}")]
    BadRequest(String),
    /// The model is not there (loading, failed, restarting).
    #[error("{0}")]
    Unavailable(String),
    /// It broke while generating.
    #[error("{0}")]
    Failed(String),
}

/// The model server's state (for `/health` and `/diagnostics`).
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Not started: it loads on the first request.
    Idle,
    Loading,
    Ready { pid: u32, load_sec: f64 },
    Failed(String),
}

/// Where generations come from.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Start a generation; its events end with [`Event::Done`] (or an error).
    async fn generate(&self, req: Generate) -> Result<BoxStream<'static, Result<Event, BackendError>>, BackendError>;
    fn state(&self) -> State;
    /// The model server's resident memory, bytes (0 if unknown).
    fn rss_bytes(&self) -> u64 {
        0
    }
}

/// How to run llama-server.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub executable: PathBuf,
    pub model: PathBuf,
    /// Context (KV cache) per slot, tokens.
    pub ctx_per_slot: u32,
    /// Slots (each keeps its own prompt cached: the kernel's and the workers' prefixes).
    pub slots: u32,
    /// Threads generating (0 = llama.cpp's default: one per core).
    pub threads: u32,
    /// Threads processing prompts (0 = llama.cpp's default).
    pub threads_batch: u32,
    /// Host memory for cached prompts of idle slots, MiB (llama-server's `--cache-ram`).
    pub prompt_cache_mib: u32,
    /// How long loading may take, seconds.
    pub load_timeout: Duration,
    /// Extra arguments (`llama-server --help`).
    pub extra_args: Vec<String>,
}

/// What each slot was last used for: its cached text and when.
#[derive(Debug, Clone, Default)]
struct Slot {
    text: String,
    busy: bool,
    used: u64,
}

struct Child {
    pid: u32,
    port: u16,
}

/// llama-server as a supervised child.
pub struct LlamaServer {
    cfg: LlamaConfig,
    http: reqwest::Client,
    state: watch::Sender<State>,
    child: Mutex<Option<Child>>,
    slots: Mutex<Vec<Slot>>,
    clock: std::sync::atomic::AtomicU64,
    started: std::sync::atomic::AtomicBool,
    stopping: std::sync::atomic::AtomicBool,
}

/// Tokens Qwen2.5's vocabulary has as single special tokens that a lazy grammar triggers on.
const PRESERVED: [&str; 2] = ["<tool_call>", "</tool_call>"];

impl LlamaServer {
    pub fn new(cfg: LlamaConfig) -> Result<Arc<Self>, BackendError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .tls_certs_only(std::iter::empty())
            .build()
            .map_err(|e| BackendError::Failed(format!("HTTP client: {e}")))?;
        let slots = vec![Slot::default(); cfg.slots.max(1) as usize];
        Ok(Arc::new(Self {
            cfg,
            http,
            state: watch::channel(State::Idle).0,
            child: Mutex::new(None),
            slots: Mutex::new(slots),
            clock: 1.into(),
            started: false.into(),
            stopping: false.into(),
        }))
    }

    /// Start the child now (idempotent) and keep it running: restarted after a crash.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move { me.supervise().await });
    }

    /// Stop the child (at shutdown).
    pub fn shutdown(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(c) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // Its own process group: SIGTERM it (the supervisor reaps it).
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(c.pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
    }

    fn args(&self, port: u16) -> Vec<String> {
        let c = &self.cfg;
        let mut a: Vec<String> = vec![
            "--model".into(),
            c.model.display().to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--ctx-size".into(),
            (u64::from(c.ctx_per_slot) * u64::from(c.slots.max(1))).to_string(),
            "--parallel".into(),
            c.slots.max(1).to_string(),
            "--cache-ram".into(),
            c.prompt_cache_mib.to_string(),
            "--no-webui".into(),
            // Our own template is applied before the prompt reaches it.
            "--no-jinja".into(),
        ];
        if c.threads > 0 {
            a.extend(["--threads".into(), c.threads.to_string()]);
        }
        if c.threads_batch > 0 {
            a.extend(["--threads-batch".into(), c.threads_batch.to_string()]);
        }
        a.extend(c.extra_args.iter().filter(|x| !x.trim().is_empty()).cloned());
        a
    }

    async fn supervise(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let began = Instant::now();
            let outcome = self.run_once().await;
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let msg = match outcome {
                Ok(status) => format!("llama-server exited ({status})"),
                Err(e) => e,
            };
            tracing::error!("{msg}; restarting in {:.0} s", backoff.as_secs_f64());
            self.state.send_replace(State::Failed(msg));
            tokio::time::sleep(backoff).await;
            backoff = if began.elapsed() > Duration::from_secs(60) { Duration::from_secs(1) } else { (backoff * 2).min(Duration::from_secs(30)) };
        }
    }

    /// Run the child until it exits.
    async fn run_once(&self) -> Result<String, String> {
        let port = free_port().map_err(|e| format!("no free port for llama-server: {e}"))?;
        self.state.send_replace(State::Loading);
        let t0 = Instant::now();
        let mut cmd = tokio::process::Command::new(&self.cfg.executable);
        cmd.args(self.args(port))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // If this node dies, even by SIGKILL, the model server dies with it (no orphan holding the
        // model's memory and a port). The spawning thread is a runtime worker, which lives as long
        // as the node.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e} (./rosa setup builds it)", self.cfg.executable.display()))?;
        let pid = child.id().unwrap_or(0);
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(Child { pid, port });
        // Its log: at debug, except what looks like an error.
        let last_lines = Arc::new(Mutex::new(std::collections::VecDeque::<String>::new()));
        for pipe in [child.stdout.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>), child.stderr.take().map(|p| Box::new(p) as _)]
            .into_iter()
            .flatten()
        {
            let last = last_lines.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(pipe).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if l.contains("error") || l.contains("failed") {
                        tracing::warn!(target: "llama_server", "{l}");
                    } else {
                        tracing::debug!(target: "llama_server", "{l}");
                    }
                    let mut g = last.lock().unwrap_or_else(|e| e.into_inner());
                    g.push_back(l);
                    if g.len() > 8 {
                        g.pop_front();
                    }
                }
            });
        }
        // Ready when /health says so.
        let health = format!("http://127.0.0.1:{port}/health");
        let ready = loop {
            if let Ok(Some(status)) = child.try_wait() {
                let tail: Vec<String> = last_lines.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
                return Err(format!("llama-server exited while loading ({status}): {}", tail.join(" | ")));
            }
            if t0.elapsed() > self.cfg.load_timeout {
                let _ = child.start_kill();
                let _ = child.wait().await;
                break false;
            }
            if let Ok(r) = self.http.get(&health).timeout(Duration::from_secs(2)).send().await {
                if r.status().is_success() {
                    break true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if !ready {
            return Err(format!("llama-server did not load {} within {:.0} s", self.cfg.model.display(), self.cfg.load_timeout.as_secs_f64()));
        }
        let load_sec = t0.elapsed().as_secs_f64();
        tracing::info!(pid, port, load_sec, model = %self.cfg.model.display(), "model loaded");
        // A restarted server has empty caches.
        for s in self.slots.lock().unwrap_or_else(|e| e.into_inner()).iter_mut() {
            s.text.clear();
        }
        self.state.send_replace(State::Ready { pid, load_sec });
        let status = child.wait().await.map_err(|e| e.to_string())?;
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(status.to_string())
    }

    /// Wait until the model is loaded (starting it if it was idle).
    async fn ready(self: &Arc<Self>) -> Result<u16, BackendError> {
        self.start();
        let mut rx = self.state.subscribe();
        let deadline = tokio::time::Instant::now() + self.cfg.load_timeout + Duration::from_secs(5);
        loop {
            let st = rx.borrow_and_update().clone();
            match st {
                State::Ready { .. } => {
                    if let Some(c) = self.child.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                        return Ok(c.port);
                    }
                }
                State::Failed(m) => return Err(BackendError::Unavailable(format!("the local model is not available: {m}"))),
                State::Idle | State::Loading => {}
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(BackendError::Unavailable("the local model is still loading".into())),
            }
        }
    }

    /// The idle slot whose cached text shares the longest start with `prompt`, counted only when
    /// that start is at least half of what the slot caches (llama-server's own rule for keeping a
    /// slot's cache); else an empty slot; else the one used longest ago. Marked busy.
    ///
    /// The kernel's and the workers' prompts share their first words (`<|im_start|>system\nYou
    /// are `): counting those made a worker take the kernel's slot rather than the empty one, so
    /// the two evicted each other's prefix at every turn (measured: a worker's 2,690-token prefix
    /// processed again from token 0, 72 s, after the same prefix had just been sent).
    fn take_slot(&self, prompt: &str) -> Option<usize> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let kept = |s: &Slot| {
            let shared = common_prefix(&s.text, prompt);
            if shared * 2 >= s.text.len() && !s.text.is_empty() {
                shared
            } else {
                0
            }
        };
        let best = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.busy)
            .max_by_key(|(_, s)| (kept(s), s.text.is_empty(), std::cmp::Reverse(s.used)))
            .map(|(i, _)| i)?;
        slots[best].busy = true;
        slots[best].used = self.clock.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(best)
    }
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Gives its slot back (with the text now cached in it) when the generation ends or is dropped.
struct SlotGuard {
    server: Arc<LlamaServer>,
    slot: usize,
    text: String,
    complete: bool,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut slots = self.server.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.get_mut(self.slot) {
            s.busy = false;
            // A cancelled generation leaves an unknown tail in the cache: keep only the prompt.
            s.text = std::mem::take(&mut self.text);
            let _ = self.complete;
        }
    }
}

/// `{"processed", "total", "cache"}` of `prompt_progress`.
fn progress(v: &Value) -> Option<Event> {
    let p = v.get("prompt_progress")?;
    Some(Event::Progress {
        processed: p.get("processed").and_then(Value::as_u64).unwrap_or(0),
        total: p.get("total").and_then(Value::as_u64).unwrap_or(0),
        cached: p.get("cache").and_then(Value::as_u64).unwrap_or(0),
    })
}

fn stats(v: &Value) -> Stats {
    let t = v.get("timings").cloned().unwrap_or(Value::Null);
    let n = |k: &str| t.get(k).and_then(Value::as_u64).unwrap_or(0);
    let f = |k: &str| t.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    Stats {
        prompt_tokens: n("prompt_n") + n("cache_n"),
        cached_tokens: n("cache_n"),
        completion_tokens: n("predicted_n"),
        prompt_ms: f("prompt_ms"),
        predicted_ms: f("predicted_ms"),
        stop: match v.get("stop_type").and_then(Value::as_str) {
            Some("limit") => Stop::Length,
            Some("word") => Stop::Word,
            _ => Stop::Eos,
        },
    }
}

/// The `/completion` request for `req` in `slot`.
fn completion_body(req: &Generate, slot: usize) -> Value {
    let mut stop: Vec<String> = super::template::STOP.iter().map(|s| s.to_string()).collect();
    stop.extend(req.stop.iter().cloned());
    let mut body = json!({
        "prompt": req.prompt,
        "n_predict": req.max_tokens,
        "temperature": req.temperature,
        "stop": stop,
        "stream": true,
        "cache_prompt": true,
        "id_slot": slot,
        "return_progress": true,
        // JSON repeats keys and brackets: a repetition penalty would push the model off valid output.
        "repeat_penalty": 1.0,
        "special": false,
    });
    if let Some(p) = req.top_p {
        body["top_p"] = json!(p);
    }
    if let Some(s) = req.seed {
        body["seed"] = json!(s);
    }
    if let Some(g) = &req.grammar {
        body["grammar"] = json!(g.gbnf);
        if g.lazy {
            body["grammar_lazy"] = json!(true);
            // Types: 1 = word (a single-token word becomes a token trigger), 3 = full-text pattern.
            body["grammar_triggers"] = json!([
                {"type": 1, "value": "<tool_call>"},
                {"type": 3, "value": "^\\s*(?:```(?:json)?\\s*)?(\\{)[\\s\\S]*"}
            ]);
            body["preserved_tokens"] = json!(PRESERVED);
        }
    }
    body
}

#[async_trait::async_trait]
impl Backend for Arc<LlamaServer> {
    async fn generate(&self, req: Generate) -> Result<BoxStream<'static, Result<Event, BackendError>>, BackendError> {
        let port = self.ready().await?;
        let slot = self.take_slot(&req.prompt).ok_or_else(|| BackendError::Unavailable("no free slot".into()))?;
        let mut guard = SlotGuard { server: self.clone(), slot, text: req.prompt.clone(), complete: false };
        let body = completion_body(&req, slot);
        let resp = self
            .http
            .post(format!("http://127.0.0.1:{port}/completion"))
            .json(&body)
            .send()
            .await
            .map_err(|e| BackendError::Unavailable(format!("the local model server did not answer: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_string))
                .unwrap_or(text);
            return Err(match status.as_u16() {
                400 => BackendError::BadRequest(msg),
                503 => BackendError::Unavailable(msg),
                _ => BackendError::Failed(format!("llama-server {status}: {msg}")),
            });
        }
        let stream = async_stream_events(resp);
        let out = stream.map(move |ev| {
            match &ev {
                Ok(Event::Text(t)) => guard.text.push_str(t),
                Ok(Event::Done(_)) => guard.complete = true,
                _ => {}
            }
            ev
        });
        Ok(out.boxed())
    }

    fn state(&self) -> State {
        self.state.borrow().clone()
    }

    fn rss_bytes(&self) -> u64 {
        let pid = self.child.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|c| c.pid);
        pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
            .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
            .map_or(0, |kb| kb * 1024)
    }
}

/// llama-server's SSE stream as [`Event`]s.
fn async_stream_events(resp: reqwest::Response) -> impl futures::Stream<Item = Result<Event, BackendError>> + Send {
    struct St {
        resp: reqwest::Response,
        buf: Vec<u8>,
        queue: std::collections::VecDeque<Result<Event, BackendError>>,
        done: bool,
    }
    futures::stream::unfold(St { resp, buf: Vec::new(), queue: Default::default(), done: false }, |mut st| async move {
        loop {
            if let Some(ev) = st.queue.pop_front() {
                if matches!(ev, Ok(Event::Done(_)) | Err(_)) {
                    st.done = true;
                }
                return Some((ev, st));
            }
            if st.done {
                return None;
            }
            match st.resp.chunk().await {
                Ok(Some(b)) => {
                    st.buf.extend_from_slice(&b);
                    while let Some(i) = st.buf.windows(2).position(|w| w == b"\n\n") {
                        let event: Vec<u8> = st.buf.drain(..i + 2).collect();
                        let text = String::from_utf8_lossy(&event);
                        for line in text.lines() {
                            let Some(data) = line.strip_prefix("data:") else { continue };
                            let Ok(v) = serde_json::from_str::<Value>(data.trim()) else {
                                st.queue.push_back(Err(BackendError::Failed(format!("llama-server sent {}", crate::llm::truncate(data, 200)))));
                                continue;
                            };
                            if let Some(e) = v.get("error") {
                                let m = e.get("message").and_then(Value::as_str).unwrap_or("error").to_string();
                                st.queue.push_back(Err(BackendError::Failed(m)));
                                continue;
                            }
                            if let Some(p) = progress(&v) {
                                st.queue.push_back(Ok(p));
                            }
                            if let Some(c) = v.get("content").and_then(Value::as_str).filter(|c| !c.is_empty()) {
                                st.queue.push_back(Ok(Event::Text(c.to_string())));
                            }
                            if v.get("stop").and_then(Value::as_bool) == Some(true) {
                                st.queue.push_back(Ok(Event::Done(stats(&v))));
                            }
                        }
                    }
                }
                Ok(None) => {
                    st.queue.push_back(Err(BackendError::Failed("llama-server ended the stream before the answer was complete".into())));
                }
                Err(e) => st.queue.push_back(Err(BackendError::Failed(format!("the stream from llama-server broke: {e}")))),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_completion_request_caches_the_prompt_in_its_slot_and_triggers_lazily() {
        let req = Generate {
            prompt: "P".into(),
            max_tokens: 16,
            temperature: 0.1,
            top_p: None,
            seed: Some(1),
            stop: vec!["END".into()],
            grammar: Some(Grammar { gbnf: "root ::= \"x\"".into(), lazy: true }),
        };
        let b = completion_body(&req, 1);
        assert_eq!(b["id_slot"], 1);
        assert_eq!(b["cache_prompt"], true);
        assert_eq!(b["stop"], json!(["<|im_end|>", "<|endoftext|>", "END"]));
        assert_eq!(b["grammar_lazy"], true);
        assert_eq!(b["grammar_triggers"][0]["value"], "<tool_call>");
        assert_eq!(b["preserved_tokens"], json!(["<tool_call>", "</tool_call>"]));
        // The pattern trigger's first group is where the grammar starts: at the `{`.
        let re = b["grammar_triggers"][1]["value"].as_str().unwrap();
        assert!(re.starts_with('^') && re.contains("(\\{)"));
    }

    #[test]
    fn timings_become_stats() {
        let v = json!({"stop": true, "stop_type": "limit", "timings": {"cache_n": 600, "prompt_n": 40, "prompt_ms": 500.0, "predicted_n": 12, "predicted_ms": 600.0}});
        assert_eq!(stats(&v), Stats { prompt_tokens: 640, cached_tokens: 600, completion_tokens: 12, prompt_ms: 500.0, predicted_ms: 600.0, stop: Stop::Length });
    }

    #[tokio::test]
    async fn slots_go_to_the_longest_shared_prefix() {
        let s = LlamaServer::new(LlamaConfig {
            executable: "/nonexistent".into(),
            model: "/nonexistent".into(),
            ctx_per_slot: 1024,
            slots: 2,
            threads: 0,
            threads_batch: 0,
            prompt_cache_mib: 0,
            load_timeout: Duration::from_secs(1),
            extra_args: vec![],
        })
        .unwrap();
        let release = |i: usize, text: &str| {
            let mut g = s.slots.lock().unwrap();
            g[i].text = text.into();
            g[i].busy = false;
        };
        // As rendered: both prompts start with the same words.
        let kernel = |e: &str| format!("<|im_start|>system\nYou are the kernel of rosa.<|im_end|>\n<|im_start|>user\n{e}");
        let worker = |t: &str| format!("<|im_start|>system\nYou are a worker process of rosa.<|im_end|>\n<|im_start|>user\n{t}");
        let a = s.take_slot(&kernel("event 1")).unwrap();
        release(a, &kernel("event 1"));
        let b = s.take_slot(&worker("task 1")).unwrap();
        assert_ne!(a, b, "the empty slot, not the kernel's, whose start the worker's shares");
        release(b, &worker("task 1"));
        assert_eq!(s.take_slot(&kernel("event 2")), Some(a));
        release(a, &kernel("event 2"));
        assert_eq!(s.take_slot(&worker("task 2 and its tool results")), Some(b));
        assert_eq!(s.take_slot("anything"), Some(a), "the only idle one");
        assert_eq!(s.take_slot("anything"), None, "both busy");
        // No slot worth keeping and none empty: the one used longest ago.
        release(a, &kernel("event 3"));
        release(b, &worker("task 3"));
        let _ = s.take_slot(&worker("task 3 step 2")).unwrap();
        release(b, &worker("task 3 step 2"));
        assert_eq!(s.take_slot("a prompt like no other"), Some(a));
        // Without the binary, asking for a generation is a clear error, not a hang.
        let err = s.generate(req_for("x")).await.err().unwrap();
        assert!(matches!(&err, BackendError::Unavailable(m) if m.contains("cannot start")), "{err:?}");
    }

    fn req_for(p: &str) -> Generate {
        Generate { prompt: p.into(), max_tokens: 1, temperature: 0.0, top_p: None, seed: None, stop: vec![], grammar: None }
    }
}
