//! The kernel half of `./rosa bench llm`: the kernel's own logic — its prompt, its tools, its
//! agent loop and options, its LLM client — run on each event of the decision set against an LLM
//! endpoint; one JSON line per event on stdout.
//!
//! Only the process manager is left out: a recorder answers `launch_process` with a new id,
//! `list_processes` with the workers the event's history launched, and `terminate_process` with
//! success, so that a decision is judged on what the kernel's LLM did, not on workers.
//!
//! Input (stdin, JSON): {"llm": LlmConfig, "prompt_file": path, "robots": [{"name", "description"}],
//! "max_steps": n, "deadline_sec": s, "events": [{"event": text, "history": [{"user", "launched"}]}]}

use rosa::agent::{Agent, Memory};
use rosa::config::LlmConfig;
use rosa::kernel::{agent_options, Event, Kernel, KernelOutput, KernelTools, ProcessControl, ProcessRow, Source};
use rosa::llm::{ChatModel, ChatRequest, Completion, LlmError, Message, OpenAiChat, ToolCall};
use rosa::robots::Robot;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

#[derive(Deserialize)]
struct Input {
    llm: LlmConfig,
    prompt_file: String,
    robots: Vec<RobotIn>,
    max_steps: u32,
    deadline_sec: f64,
    events: Vec<EventIn>,
}

#[derive(Deserialize)]
struct RobotIn {
    name: String,
    description: String,
}

#[derive(Deserialize)]
struct EventIn {
    event: String,
    #[serde(default)]
    history: Vec<Past>,
}

#[derive(Deserialize, Clone)]
struct Past {
    user: String,
    launched: String,
}

/// The process manager's answers, recorded.
struct Recorder {
    running: Vec<Past>,
    actions: Mutex<Vec<Value>>,
}

#[async_trait::async_trait]
impl ProcessControl for Recorder {
    async fn launch(&self, system_prompt: String, robots: Vec<String>) -> Result<String, String> {
        let mut a = self.actions.lock().unwrap();
        a.push(json!({"tool": "launch_process", "system_prompt": system_prompt, "robots": robots}));
        Ok(format!("w{:08x}", 0xbe5c_0000u32 + a.len() as u32))
    }
    async fn list(&self) -> Result<Vec<ProcessRow>, String> {
        self.actions.lock().unwrap().push(json!({"tool": "list_processes"}));
        Ok(self
            .running
            .iter()
            .map(|p| ProcessRow {
                worker_id: p.launched.clone(),
                state: "running".into(),
                system_prompt: p.user.clone(),
                robots: vec!["reachy-mini".into()],
                step: 2,
                last_tool: "goto_target".into(),
            })
            .collect())
    }
    async fn terminate(&self, worker_id: String, force: bool) -> Result<String, String> {
        self.actions.lock().unwrap().push(json!({"tool": "terminate_process", "worker_id": worker_id, "force": force}));
        Ok(format!("{worker_id} terminated on request (SIGTERM)"))
    }
}

/// The LLM client, timing each call.
struct Timed {
    inner: OpenAiChat,
    calls: Mutex<Vec<(f64, usize, bool)>>, // seconds, tool calls, had text
}

#[async_trait::async_trait]
impl ChatModel for Timed {
    async fn complete(&self, request: ChatRequest<'_>) -> Result<Completion, LlmError> {
        let t0 = Instant::now();
        let r = self.inner.complete(request).await;
        if let Ok(c) = &r {
            self.calls.lock().unwrap().push((t0.elapsed().as_secs_f64(), c.tool_calls.len(), c.content.is_some()));
        }
        r
    }
}

struct Sink {
    updates: Mutex<Vec<(String, String)>>,
}

impl KernelOutput for Sink {
    fn event(&self, _seq: u64, _s: Source, _t: &str, _r: SystemTime) {}
    fn update(&self, role: &str, text: &str) {
        self.updates.lock().unwrap().push((role.into(), text.into()));
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let input: Input = serde_json::from_str(&input)?;
    let template = std::fs::read_to_string(&input.prompt_file)?;
    let robots: Vec<Robot> = input
        .robots
        .iter()
        .map(|r| Robot { name: r.name.clone(), url: String::new(), description: r.description.clone(), prompt_file: None, prompt: String::new(), ros: None })
        .collect();
    let model = Arc::new(Timed { inner: OpenAiChat::new(&input.llm)?.with_client_id("kernel"), calls: Mutex::new(vec![]) });
    for ev in &input.events {
        let rec = Arc::new(Recorder { running: ev.history.clone(), actions: Mutex::new(vec![]) });
        let (_tx, rx) = tokio::sync::watch::channel(robots.clone());
        let tools = KernelTools { processes: rec.clone(), robots: rx, triggers: None };
        let mut memory = Memory::new("", 12_000);
        for (i, p) in ev.history.iter().enumerate() {
            let id = format!("call_h{i}");
            memory.push_turn(vec![
                Message::User(p.user.clone()),
                Message::Assistant {
                    content: None,
                    tool_calls: vec![ToolCall {
                        id: id.clone(),
                        name: "launch_process".into(),
                        arguments: json!({"system_prompt": p.user.trim_start_matches(|c| c != ']').trim_start_matches("] "), "robots": ["reachy-mini"]}).to_string(),
                    }],
                },
                Message::Tool { call_id: id, content: format!("launched worker_id={}; it will report back with a [Worker callback]", p.launched) },
                Message::Assistant { content: Some("I asked a worker to do it.".into()), tool_calls: vec![] },
            ]);
        }
        let deadline = Some(Duration::from_secs_f64(input.deadline_sec));
        let agent = Agent::new(model.clone(), memory, agent_options(input.max_steps, deadline));
        let mut kernel = Kernel::new(agent, tools, template.clone());
        model.calls.lock().unwrap().clear();
        let sink = Sink { updates: Mutex::new(vec![]) };
        let t0 = Instant::now();
        let event = Event::new(Source::Command, ev.event.clone());
        let result = kernel.handle(event, &sink).await;
        let calls = model.calls.lock().unwrap().clone();
        let line = json!({
            "event": ev.event,
            "actions": *rec.actions.lock().unwrap(),
            "reply": result.as_ref().ok(),
            "error": result.as_ref().err(),
            "seconds": t0.elapsed().as_secs_f64(),
            "llm_calls": calls.iter().map(|(s, n, t)| json!({"seconds": s, "tool_calls": n, "text": t})).collect::<Vec<_>>(),
        });
        println!("{line}");
    }
    Ok(())
}
