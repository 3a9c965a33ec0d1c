//! The kernel's logic: one ordered event queue, one agent whose only tools manage processes.
//!
//! No r2r here: the node (`nodes::kernel`) feeds [`Event`]s in, implements [`ProcessControl`] with
//! the process manager's action and services, and [`KernelOutput`] with publishers.

use crate::agent::{Agent, AgentEvent, ToolBox, ToolOutput};
use crate::kernel_queue::KernelQueue;
use crate::llm::{ChatModel, ToolSpec};
use crate::robots::Robot;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::{oneshot, watch};

/// Where an event came from (the `source` of `rosa_interfaces/msg/KernelEvent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Command,
    Transcript,
    WorkerCallback,
    Chat,
    RobotEvent,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Command => "command",
            Source::Transcript => "transcript",
            Source::WorkerCallback => "worker_callback",
            Source::Chat => "chat",
            Source::RobotEvent => "robot_event",
        }
    }
}

/// One event for the kernel, already formatted for the LLM.
#[derive(Debug)]
pub struct Event {
    pub source: Source,
    pub text: String,
    pub received: SystemTime,
    /// For `/rosa/chat`: where the reply goes.
    pub reply: Option<oneshot::Sender<Result<String, String>>>,
}

impl Event {
    pub fn new(source: Source, text: String) -> Self {
        Self { source, text, received: SystemTime::now(), reply: None }
    }
    pub fn command(text: &str) -> Self {
        Self::new(Source::Command, format!("[User typed] {}", text.trim()))
    }
    pub fn transcript(text: &str) -> Self {
        Self::new(Source::Transcript, format!("[User said] {}", text.trim()))
    }
    pub fn worker_callback(worker_id: &str, message: &str, done: bool) -> Self {
        Self::new(
            Source::WorkerCallback,
            format!("[Worker callback] {} (worker_id={worker_id}, done={done})", message.trim()),
        )
    }
    /// A trigger of the mcp_bridge fired (`rosa_interfaces/msg/RobotEvent`).
    pub fn robot_event(robot: &str, topic: &str, trigger_id: &str, message: &str, sample: &str) -> Self {
        Self::new(
            Source::RobotEvent,
            format!(
                "[Robot event] {} (robot={robot}, topic={topic}, trigger={trigger_id}): {}",
                message.trim(),
                crate::input::summary(sample.trim(), 2000)
            ),
        )
    }
    pub fn chat(prompt: &str) -> (Self, oneshot::Receiver<Result<String, String>>) {
        let (tx, rx) = oneshot::channel();
        let mut e = Self::new(Source::Chat, format!("[User typed] {}", prompt.trim()));
        e.reply = Some(tx);
        (e, rx)
    }
}

/// One row of the process table, as the kernel's LLM sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessRow {
    pub worker_id: String,
    pub state: String,
    pub system_prompt: String,
    pub robots: Vec<String>,
    pub step: u32,
    pub last_tool: String,
}

/// The process manager, as the kernel uses it.
#[async_trait::async_trait]
pub trait ProcessControl: Send + Sync {
    /// Launch a worker; returns its id once the goal is accepted.
    async fn launch(&self, system_prompt: String, robots: Vec<String>) -> Result<String, String>;
    async fn list(&self) -> Result<Vec<ProcessRow>, String>;
    async fn terminate(&self, worker_id: String, force: bool) -> Result<String, String>;
}

/// Where the kernel's outputs go (`/rosa/events`, `/rosa/updates`).
pub trait KernelOutput: Send + Sync {
    fn event(&self, seq: u64, source: Source, text: &str, received: SystemTime);
    fn update(&self, role: &str, text: &str);
}

/// Calls to a bridged robot's trigger tools (`watch_topic`, `list_triggers`, `remove_trigger`
/// of the mcp_bridge), for the kernel's own trigger tools.
#[async_trait::async_trait]
pub trait RobotTriggers: Send + Sync {
    async fn call(&self, robot: &Robot, tool: &str, args: Map<String, Value>) -> ToolOutput;
}

/// The kernel's tools: processes, and triggers on bridged (ROS) robots when there are any.
pub struct KernelTools {
    pub processes: Arc<dyn ProcessControl>,
    pub robots: watch::Receiver<Vec<Robot>>,
    pub triggers: Option<Arc<dyn RobotTriggers>>,
}

#[derive(Deserialize)]
struct TriggerRobot {
    robot: String,
}

#[derive(Deserialize)]
struct LaunchArgs {
    system_prompt: String,
    #[serde(default)]
    robots: Vec<String>,
}

#[derive(Deserialize)]
struct TerminateArgs {
    worker_id: String,
    #[serde(default)]
    force: bool,
}

fn parse<T: for<'de> Deserialize<'de>>(tool: &str, args: Map<String, Value>) -> Result<T, ToolOutput> {
    serde_json::from_value(Value::Object(args))
        .map_err(|e| ToolOutput::error(format!("bad arguments for `{tool}`: {e}")))
}

#[async_trait::async_trait]
impl ToolBox for KernelTools {
    fn specs(&self) -> Vec<ToolSpec> {
        let names: Vec<String> = self.robots.borrow().iter().map(|r| r.name.clone()).collect();
        let bridged: Vec<String> = self.robots.borrow().iter().filter(|r| r.ros.is_some()).map(|r| r.name.clone()).collect();
        let mut specs = self.process_specs(names);
        if self.triggers.is_some() && !bridged.is_empty() {
            specs.extend(trigger_specs(bridged));
        }
        specs
    }

    async fn call(&self, name: &str, args: Map<String, Value>) -> ToolOutput {
        match name {
            "watch_topic" | "list_triggers" | "remove_trigger" => self.trigger_call(name, args).await,
            _ => self.process_call(name, args).await,
        }
    }
}

/// The trigger tools (DESIGN.md: `watch_topic`; its events reach the LLM as `[Robot event] …`).
fn trigger_specs(bridged: Vec<String>) -> Vec<ToolSpec> {
    let robot = json!({"type": "string", "enum": bridged, "description": "The ROS robot (one with a ros: section in the registry)."});
    vec![
        ToolSpec {
            name: "watch_topic".into(),
            description: "Ask to be told when something happens on a ROS robot: when a message on `topic` satisfies `condition`, you get a [Robot event] with `message`. Rate limited; see list_triggers, remove_trigger.".into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "robot": robot,
                    "topic": {"type": "string", "description": "The topic, relative to the robot's namespace (e.g. battery) or absolute."},
                    "condition": {"type": "string", "description": "An expression on the message's fields, e.g. `percentage < 0.2` or `status.level >= 2 && name == \"motor\"`; `any` fires on every message.", "default": "any"},
                    "message": {"type": "string", "description": "What you want to be told when it fires."},
                    "once": {"type": "boolean", "description": "Remove the trigger after it fired once.", "default": false}
                },
                "required": ["robot", "topic", "message"]
            }),
        },
        ToolSpec {
            name: "list_triggers".into(),
            description: "List the triggers (from watch_topic) of a ROS robot.".into(),
            parameters: json!({"type": "object", "properties": {"robot": robot}, "required": ["robot"]}),
        },
        ToolSpec {
            name: "remove_trigger".into(),
            description: "Remove a trigger (from watch_topic).".into(),
            parameters: json!({"type": "object", "properties": {"robot": robot, "trigger_id": {"type": "string"}}, "required": ["robot", "trigger_id"]}),
        },
    ]
}

impl KernelTools {
    async fn trigger_call(&self, name: &str, mut args: Map<String, Value>) -> ToolOutput {
        let Some(t) = &self.triggers else { return ToolOutput::error(format!("unknown tool `{name}`")) };
        let a: TriggerRobot = match parse(name, args.clone()) {
            Ok(a) => a,
            Err(e) => return e,
        };
        let robot = self.robots.borrow().iter().find(|r| r.name == a.robot).cloned();
        let Some(robot) = robot.filter(|r| r.ros.is_some()) else {
            let bridged: Vec<String> = self.robots.borrow().iter().filter(|r| r.ros.is_some()).map(|r| r.name.clone()).collect();
            return ToolOutput::error(format!("`{}` is not a ROS robot of the registry; ROS robots: [{}]", a.robot, bridged.join(", ")));
        };
        args.remove("robot");
        t.call(&robot, name, args).await
    }

    fn process_specs(&self, names: Vec<String>) -> Vec<ToolSpec> {
        vec![
            ToolSpec {
                name: "launch_process".into(),
                description: "Launch a worker process: an LLM agent that carries out one task with the tools of the given robots, then reports back with a [Worker callback].".into(),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "system_prompt": {"type": "string", "description": "The worker's task and instructions, complete and self-contained."},
                        "robots": {"type": "array", "items": {"type": "string", "enum": names}, "description": "Names of the robots (MCP servers) the worker may use."}
                    },
                    "required": ["system_prompt", "robots"]
                }),
            },
            ToolSpec {
                name: "list_processes".into(),
                description: "List the running worker processes (and the most recent ended ones).".into(),
                parameters: json!({"type": "object", "properties": {}}),
            },
            ToolSpec {
                name: "terminate_process".into(),
                description: "Terminate a running worker process.".into(),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "worker_id": {"type": "string", "description": "The id from launch_process or list_processes."},
                        "force": {"type": "boolean", "description": "Kill at once instead of asking it to stop.", "default": false}
                    },
                    "required": ["worker_id"]
                }),
            },
        ]
    }

    async fn process_call(&self, name: &str, args: Map<String, Value>) -> ToolOutput {
        match name {
            "launch_process" => {
                let a: LaunchArgs = match parse(name, args) {
                    Ok(a) => a,
                    Err(e) => return e,
                };
                if a.system_prompt.trim().is_empty() {
                    return ToolOutput::error("system_prompt is empty: describe the worker's task");
                }
                let known: Vec<String> = self.robots.borrow().iter().map(|r| r.name.clone()).collect();
                if let Some(bad) = a.robots.iter().find(|r| !known.contains(r)) {
                    return ToolOutput::error(format!(
                        "unknown or unreachable robot `{bad}`; available robots: [{}]",
                        known.join(", ")
                    ));
                }
                // A NUL cannot cross into rcl: the worker gets ␀ instead, and the model is told.
                let nuls = a.system_prompt.matches('\0').count();
                let prompt = crate::input::ros_name(&a.system_prompt).into_owned();
                let note = if nuls > 0 { format!(" (note: {nuls} NUL character(s) in system_prompt were replaced by ␀)") } else { String::new() };
                match self.processes.launch(prompt, a.robots).await {
                    Ok(id) => ToolOutput::ok(format!(
                        "launched worker_id={id}; it will report back with a [Worker callback]{note}"
                    )),
                    Err(e) => ToolOutput::error(format!("launch failed: {e}")),
                }
            }
            "list_processes" => match self.processes.list().await {
                Ok(rows) if rows.is_empty() => ToolOutput::ok("no processes"),
                Ok(rows) => ToolOutput::ok(
                    rows.iter()
                        .map(|r| {
                            format!(
                                "worker_id={} state={} step={} last_tool={} robots=[{}] task={}",
                                r.worker_id,
                                r.state,
                                r.step,
                                if r.last_tool.is_empty() { "-" } else { &r.last_tool },
                                r.robots.join(","),
                                crate::llm::truncate(&r.system_prompt.replace('\n', " "), 120)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
                Err(e) => ToolOutput::error(format!("cannot list processes: {e}")),
            },
            "terminate_process" => {
                let a: TerminateArgs = match parse(name, args) {
                    Ok(a) => a,
                    Err(e) => return e,
                };
                match self.processes.terminate(a.worker_id, a.force).await {
                    Ok(m) => ToolOutput::ok(m),
                    Err(e) => ToolOutput::error(e),
                }
            }
            other => ToolOutput::error(format!("unknown tool `{other}`")),
        }
    }
}

/// Fill the kernel prompt template: `{robots}` becomes the list of reachable robots.
pub fn render_prompt(template: &str, robots: &[Robot]) -> String {
    let list = if robots.is_empty() {
        "(no robot is reachable right now)".to_string()
    } else {
        robots
            .iter()
            .map(|r| format!("- {}: {}", r.name, if r.description.is_empty() { "(no description)" } else { &r.description }))
            .collect::<Vec<_>>()
            .join("\n")
    };
    template.replace("{robots}", &list)
}

/// What the kernel is doing now, for the producers of events: an event that arrives while the
/// kernel waits on the LLM is queued out loud ("queued: the kernel is busy with event 3 for 12 s").
#[derive(Clone, Default)]
pub struct KernelStatus(Arc<std::sync::Mutex<Option<(u64, std::time::Instant)>>>);

impl KernelStatus {
    /// `(seq, for how long)` of the event being handled, if any.
    pub fn busy(&self) -> Option<(u64, std::time::Duration)> {
        self.0.lock().ok().and_then(|g| g.map(|(seq, since)| (seq, since.elapsed())))
    }
    fn set(&self, v: Option<u64>) {
        if let Ok(mut g) = self.0.lock() {
            *g = v.map(|seq| (seq, std::time::Instant::now()));
        }
    }
}

/// The note published when an event is queued behind a busy kernel.
pub fn queued_note(event: &Event, seq: u64, busy_for: std::time::Duration) -> String {
    format!(
        "queued {}: the kernel is still on event {seq} ({:.0} s so far); this one comes next",
        crate::llm::truncate(&event.text, 200),
        busy_for.as_secs_f64()
    )
}

/// The nudge after tool results: a small model otherwise tends to call the tool again.
/// (Measured with Qwen2.5-Coder-1.5B: without it, it terminated the worker it had just launched;
/// a nudge listing what not to write was echoed back verbatim; this one gets a sentence.)
pub const AFTER_TOOL_NUDGE: &str = "Now reply to the user in one short sentence, based on the result above; call another tool only if the request still needs one.";

/// The options of the kernel's turns: tools offered (`auto`; the kernel decides better without
/// a grammar forcing a call), the plain-text nudge after tool results, the loop guard, a reply
/// asked at the last step, and `deadline` per event.
pub fn agent_options(max_steps: u32, deadline: Option<std::time::Duration>) -> crate::agent::AgentOptions {
    let mut o = crate::agent::AgentOptions::new(max_steps);
    o.after_tool_nudge = Some(AFTER_TOOL_NUDGE.into());
    o.loop_guard = true;
    o.report_on_last_step = true;
    o.report_request = "Stop calling tools now. Reply to the user in one short plain-text sentence: what happened with this event.".into();
    o.turn_deadline = deadline;
    o
}

/// The agent's limits, which may change while the kernel runs (the kernel's parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_steps: u32,
    pub memory_tokens: usize,
    /// The whole of one event (`event_deadline_sec`; None = no limit).
    pub event_deadline: Option<std::time::Duration>,
}

/// The kernel: consumes the queue in order, one event at a time.
pub struct Kernel<M: ChatModel + ?Sized> {
    pub agent: Agent<M>,
    pub tools: KernelTools,
    pub prompt_template: String,
    seq: u64,
    limits: Option<watch::Receiver<Limits>>,
    warm_prefix: bool,
}

/// How long the robots must stay the same before the kernel warms its prompt prefix (the first
/// reachability checks of a start come in quick succession).
const WARM_SETTLE: std::time::Duration = std::time::Duration::from_millis(1500);

impl<M: ChatModel + ?Sized> Kernel<M> {
    pub fn new(agent: Agent<M>, tools: KernelTools, prompt_template: String) -> Self {
        let mut k = Self { agent, tools, prompt_template, seq: 0, limits: None, warm_prefix: false };
        k.refresh_prompt();
        k
    }

    /// Take new [`Limits`] from `limits` whenever they change, from the next event on.
    pub fn with_limits(mut self, limits: watch::Receiver<Limits>) -> Self {
        self.limits = Some(limits);
        self
    }

    /// While idle, keep the LLM's cache warm with the prompt prefix ([`Agent::warm_prefix`]): at
    /// start and whenever the reachable robots (and so the prompt and the tools) change. For a
    /// local model: a remote provider would bill the prefix for nothing.
    pub fn with_warm_prefix(mut self, on: bool) -> Self {
        self.warm_prefix = on;
        self
    }

    /// Take a new robot list, if there is one, into the prompt.
    fn sync_robots(&mut self) {
        if self.tools.robots.has_changed().unwrap_or(false) {
            self.tools.robots.borrow_and_update();
            self.refresh_prompt();
        }
    }

    /// Send the prefix of the next event's request (see [`with_warm_prefix`](Self::with_warm_prefix)).
    pub async fn warm(&mut self) {
        self.sync_robots();
        let t = std::time::Instant::now();
        match self.agent.warm_prefix(Event::command("").text, &self.tools).await {
            Ok(()) => tracing::info!(seconds = format!("{:.1}", t.elapsed().as_secs_f64()), "the LLM has the kernel's prompt prefix"),
            Err(e) => tracing::warn!(error = %e, "could not warm the LLM with the kernel's prompt prefix"),
        }
    }

    fn refresh_prompt(&mut self) {
        let robots = self.tools.robots.borrow().clone();
        self.agent.memory.set_system(render_prompt(&self.prompt_template, &robots));
    }

    /// Continue `/rosa/events` numbering after `seq` (a restarted kernel).
    pub fn resume_seq(&mut self, seq: u64) {
        self.seq = self.seq.max(seq);
    }

    /// The `seq` the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.seq + 1
    }

    /// Consume one event: publish it, run the agent, publish (and return) the reply.
    pub async fn handle(&mut self, event: Event, out: &dyn KernelOutput) -> Result<String, String> {
        self.handle_with(event, out, &mut |_| {}).await
    }

    /// [`handle`](Self::handle), telling `progress` about each step of the agent (the journal).
    pub async fn handle_with(
        &mut self,
        mut event: Event,
        out: &dyn KernelOutput,
        progress: &mut (dyn FnMut(&AgentEvent) + Send),
    ) -> Result<String, String> {
        self.seq += 1;
        out.event(self.seq, event.source, &event.text, event.received);
        if let Some(rx) = self.limits.as_mut().filter(|rx| rx.has_changed().unwrap_or(false)) {
            let l = *rx.borrow_and_update();
            self.agent.options.max_steps = l.max_steps.max(1);
            self.agent.options.turn_deadline = l.event_deadline;
            self.agent.memory.set_budget(l.memory_tokens);
        }
        self.sync_robots();
        tracing::info!(seq = self.seq, source = event.source.as_str(), text = %event.text, "event");
        let result = self
            .agent
            .run_turn(event.text.clone(), &self.tools, &mut |e| {
                tracing::debug!(?e, "kernel agent");
                progress(&e);
            })
            .await;
        let result = match result.map(|t| t.text) {
            Ok(reply) => {
                if !reply.trim().is_empty() {
                    out.update("kernel", &reply);
                }
                Ok(reply)
            }
            Err(e) => {
                let msg = format!("kernel could not handle {}: {e}", crate::llm::truncate(&event.text, 120));
                tracing::error!("{msg}");
                out.update("system", &msg);
                Err(msg)
            }
        };
        if let Some(reply) = event.reply.take() {
            let _ = reply.send(result.clone());
        }
        result
    }

    /// Run until the queue closes: take each event in order, journal its progress, answer it;
    /// `status` says which event is being handled (events arriving meanwhile are queued out loud).
    pub async fn run(mut self, queue: Arc<KernelQueue>, out: Arc<dyn KernelOutput>, status: KernelStatus) {
        // Its own view of the robots: a change makes a warm-up due (the prompt takes it in `warm`).
        let mut robots = self.tools.robots.clone();
        let mut warm_due = self.warm_prefix;
        loop {
            let next = tokio::select! {
                biased;
                q = queue.next() => q,
                Ok(()) = robots.changed(), if self.warm_prefix => {
                    robots.borrow_and_update();
                    warm_due = true;
                    continue;
                }
                _ = tokio::time::sleep(WARM_SETTLE), if warm_due => {
                    warm_due = false;
                    self.warm().await;
                    continue;
                }
            };
            let Some(q) = next else { break };
            let id = q.id;
            let mut event = q.event;
            if let Some(tools) = &q.interrupted {
                event.text = crate::kernel_queue::resumed_text(&event.text, tools);
            }
            queue.started(id, self.next_seq());
            status.set(Some(self.next_seq()));
            let _ = self.handle_with(event, out.as_ref(), &mut |e| queue.progress(id, e)).await;
            status.set(None);
            queue.done(id, &self.agent.memory);
            // The event's own requests left the prefix cached (a change of the robots meanwhile
            // makes a warm-up due again).
            warm_due = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::testutil::*;
    use crate::agent::Memory;
    use crate::llm::LlmError;
    use std::sync::Mutex;

    #[derive(Default)]
    struct FakeProcesses {
        launched: Mutex<Vec<(String, Vec<String>)>>,
        terminated: Mutex<Vec<(String, bool)>>,
    }

    #[async_trait::async_trait]
    impl ProcessControl for FakeProcesses {
        async fn launch(&self, p: String, r: Vec<String>) -> Result<String, String> {
            self.launched.lock().unwrap().push((p, r));
            Ok("w00000001".into())
        }
        async fn list(&self) -> Result<Vec<ProcessRow>, String> {
            Ok(vec![ProcessRow {
                worker_id: "w00000001".into(),
                state: "running".into(),
                system_prompt: "wave".into(),
                robots: vec!["bot".into()],
                step: 2,
                last_tool: "wave".into(),
            }])
        }
        async fn terminate(&self, id: String, force: bool) -> Result<String, String> {
            self.terminated.lock().unwrap().push((id.clone(), force));
            Ok(format!("terminated {id}"))
        }
    }

    #[derive(Default)]
    struct Sink {
        events: Mutex<Vec<(u64, String)>>,
        updates: Mutex<Vec<(String, String)>>,
    }

    impl KernelOutput for Sink {
        fn event(&self, seq: u64, _s: Source, text: &str, _r: SystemTime) {
            self.events.lock().unwrap().push((seq, text.into()));
        }
        fn update(&self, role: &str, text: &str) {
            self.updates.lock().unwrap().push((role.into(), text.into()));
        }
    }

    fn robot(name: &str) -> Robot {
        Robot { name: name.into(), url: "http://127.0.0.1:1/mcp".into(), description: "a bot".into(), prompt_file: None, prompt: String::new(), ros: None }
    }

    fn kernel(
        replies: Vec<Result<crate::llm::Completion, LlmError>>,
    ) -> (Kernel<ScriptedModel>, Arc<FakeProcesses>, Arc<ScriptedModel>, watch::Sender<Vec<Robot>>) {
        let model = ScriptedModel::new(replies);
        let procs = Arc::new(FakeProcesses::default());
        let (tx, rx) = watch::channel(vec![robot("bot")]);
        let tools = KernelTools { processes: procs.clone(), robots: rx, triggers: None };
        let agent = Agent::new(model.clone(), Memory::new("", 4000), agent_options(6, None));
        (Kernel::new(agent, tools, "You manage robots:\n{robots}".into()), procs, model, tx)
    }

    #[test]
    fn events_are_formatted_as_in_the_seed() {
        assert_eq!(Event::command(" wave ").text, "[User typed] wave");
        assert_eq!(Event::transcript("hi").text, "[User said] hi");
        assert_eq!(
            Event::worker_callback("w1", "waved", true).text,
            "[Worker callback] waved (worker_id=w1, done=true)"
        );
    }

    #[tokio::test]
    async fn command_launches_a_worker_and_the_reply_is_published() {
        let (mut k, procs, model, _tx) = kernel(vec![
            call("launch_process", r#"{"system_prompt":"wave twice","robots":["bot"]}"#),
            text("I asked a worker to wave."),
        ]);
        let sink = Sink::default();
        let reply = k.handle(Event::command("wave at me"), &sink).await.unwrap();
        assert_eq!(reply, "I asked a worker to wave.");
        assert_eq!(procs.launched.lock().unwrap()[0], ("wave twice".to_string(), vec!["bot".to_string()]));
        assert_eq!(sink.events.lock().unwrap()[0], (1, "[User typed] wave at me".to_string()));
        assert_eq!(sink.updates.lock().unwrap()[0], ("kernel".to_string(), reply));
        // The system prompt lists the robots.
        let first = &model.seen.lock().unwrap()[0];
        assert!(matches!(&first[0], crate::llm::Message::System(s) if s.contains("- bot: a bot")));
    }

    #[tokio::test]
    async fn unknown_robot_is_refused_before_launch() {
        let (mut k, procs, model, _tx) = kernel(vec![
            call("launch_process", r#"{"system_prompt":"x","robots":["ghost"]}"#),
            text("sorry"),
        ]);
        k.handle(Event::command("x"), &Sink::default()).await.unwrap();
        assert!(procs.launched.lock().unwrap().is_empty());
        let last = model.seen.lock().unwrap().last().unwrap().clone();
        assert!(last.iter().any(|m| matches!(m, crate::llm::Message::Tool { content, .. } if content.contains("unknown or unreachable robot `ghost`"))));
    }

    #[tokio::test]
    async fn llm_failure_becomes_a_system_update_and_a_chat_error() {
        let (mut k, _procs, _model, _tx) = kernel(vec![Err(LlmError::Unreachable("connection refused".into()))]);
        let sink = Sink::default();
        let (ev, rx) = Event::chat("hello");
        assert!(k.handle(ev, &sink).await.is_err());
        let reply = rx.await.unwrap().unwrap_err();
        assert!(reply.contains("connection refused"), "{reply}");
        assert_eq!(sink.updates.lock().unwrap()[0].0, "system");
    }

    #[tokio::test]
    async fn seq_increases_and_terminate_and_list_reach_the_process_manager() {
        let (mut k, procs, model, _tx) = kernel(vec![
            call("list_processes", "{}"),
            call("terminate_process", r#"{"worker_id":"w00000001","force":true}"#),
            text("stopped"),
            call("terminate_process", r#"{"force":true}"#),
            text("hm"),
        ]);
        let sink = Sink::default();
        k.handle(Event::command("stop it"), &sink).await.unwrap();
        k.handle(Event::command("again"), &sink).await.unwrap();
        assert_eq!(procs.terminated.lock().unwrap()[0], ("w00000001".to_string(), true));
        let seqs: Vec<u64> = sink.events.lock().unwrap().iter().map(|e| e.0).collect();
        assert_eq!(seqs, vec![1, 2]);
        let seen = model.seen.lock().unwrap();
        assert!(seen[1].iter().any(|m| matches!(m, crate::llm::Message::Tool { content, .. } if content.contains("state=running"))));
        assert!(seen[4].iter().any(|m| matches!(m, crate::llm::Message::Tool { content, .. } if content.contains("missing field `worker_id`"))));
    }

    #[tokio::test]
    async fn the_status_says_which_event_is_being_handled() {
        let status = KernelStatus::default();
        assert!(status.busy().is_none());
        let (mut k, _p, _m, _tx) = kernel(vec![text("a")]);
        k.handle(Event::command("x"), &Sink::default()).await.unwrap();
        status.set(Some(2));
        let (seq, _) = status.busy().unwrap();
        assert_eq!(seq, 2);
        let note = queued_note(&Event::command("look left"), 2, std::time::Duration::from_secs(12));
        assert_eq!(note, "queued [User typed] look left: the kernel is still on event 2 (12 s so far); this one comes next");
        status.set(None);
        assert!(status.busy().is_none());
    }

    #[tokio::test]
    async fn after_a_launch_the_kernel_is_nudged_to_reply_in_plain_text() {
        let (mut k, _procs, model, _tx) = kernel(vec![
            call("launch_process", r#"{"system_prompt":"wave","robots":["bot"]}"#),
            text("A worker is waving."),
        ]);
        k.handle(Event::command("wave"), &Sink::default()).await.unwrap();
        let second = model.seen.lock().unwrap()[1].clone();
        assert!(matches!(second.last(), Some(crate::llm::Message::System(s)) if s == AFTER_TOOL_NUDGE));
    }

    #[tokio::test]
    async fn robot_list_changes_update_the_prompt() {
        let (mut k, _p, model, tx) = kernel(vec![text("a"), text("b")]);
        k.handle(Event::command("1"), &Sink::default()).await.unwrap();
        tx.send(vec![robot("bot"), robot("arm")]).unwrap();
        k.handle(Event::command("2"), &Sink::default()).await.unwrap();
        let seen = model.seen.lock().unwrap();
        assert!(matches!(&seen[1][0], crate::llm::Message::System(s) if s.contains("- arm")));
    }
}
