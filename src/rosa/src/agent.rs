//! The one LLM agent loop, shared by the kernel and the workers, and its bounded memory.
//!
//! A turn starts with a user message; the model is called until it answers without tool calls or
//! the step limit is hit. Tool-call arguments that are not a JSON object, and unknown tool names,
//! are answered to the model as error tool results: the model gets a chance to correct itself.
//!
//! Kernel and workers differ only by [`AgentOptions`]: whether tool calls are required at each
//! step, a nudge for a plain-text reply after tool results (the kernel), a loop guard (a call made
//! again in the same turn is not run: the model is asked for its report, without tools), the last
//! step asked without tools (so a turn ends with a report rather than a step-limit error), and a
//! deadline for the whole turn.

use crate::llm::{truncate, ChatModel, ChatRequest, LlmError, Message, ToolCall, ToolChoice, ToolSpec};
use serde_json::Value;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// What a tool call produced; `is_error` results are shown to the model as errors.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
}

impl ToolOutput {
    pub fn ok(content: impl Into<String>) -> Self {
        Self { content: content.into(), is_error: false }
    }
    pub fn error(content: impl Into<String>) -> Self {
        Self { content: content.into(), is_error: true }
    }
    fn for_model(&self) -> String {
        if self.is_error {
            format!("ERROR: {}", self.content)
        } else {
            self.content.clone()
        }
    }
}

/// A set of tools the agent may call (the kernel's process tools, a worker's MCP tools).
#[async_trait::async_trait]
pub trait ToolBox: Send + Sync {
    fn specs(&self) -> Vec<ToolSpec>;
    /// `args` is always a JSON object here (the loop checks it).
    async fn call(&self, name: &str, args: serde_json::Map<String, Value>) -> ToolOutput;
}

/// Progress of a turn, for feedback (the worker reports it to the process manager).
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// The model is being called for step `step` (1-based).
    Step { step: u32 },
    /// A tool is about to be called.
    ToolStarted { step: u32, tool: String },
    ToolCalled { step: u32, tool: String, output: ToolOutput },
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error("step limit reached ({0} LLM calls) without a final answer")]
    StepLimit(u32),
    #[error("no final answer within the deadline ({0:.0} s)")]
    Deadline(f64),
}

/// How a turn runs (the kernel's and the workers' differences).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// LLM calls per turn at most.
    pub max_steps: u32,
    /// `tool_choice` of the steps that offer tools.
    pub tool_choice: ToolChoice,
    /// The first step must call a tool (`required`), whatever `tool_choice` says for the others:
    /// a worker acts before it reports (a small local model otherwise tends to answer at once).
    pub act_first: bool,
    /// Added (as a system note, not kept in memory) to the request that follows tool results.
    pub after_tool_nudge: Option<String>,
    /// A call identical to an earlier one of the same turn is not run again; the model is asked for
    /// its report instead (without tools).
    pub loop_guard: bool,
    /// The last step is asked without tools, with `report_request`: the turn ends with an answer.
    pub report_on_last_step: bool,
    /// What the model is told when it must answer now (loop guard, last step).
    pub report_request: String,
    /// The whole turn (every LLM call and tool call in it) ends after this.
    pub turn_deadline: Option<Duration>,
}

impl AgentOptions {
    /// Plain: tools offered with `auto` at every step, nothing added, no guard, no deadline.
    pub fn new(max_steps: u32) -> Self {
        Self {
            max_steps: max_steps.max(1),
            tool_choice: ToolChoice::Auto,
            act_first: false,
            after_tool_nudge: None,
            loop_guard: false,
            report_on_last_step: false,
            report_request: "Stop calling tools now. Answer with your short report: what was done and what the outcome was.".into(),
            turn_deadline: None,
        }
    }
}

/// Why a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The model answered without calling a tool.
    Answer,
    /// It repeated a call; it was asked for its report.
    LoopGuard,
    /// The last step came; it was asked for its report.
    StepLimit,
}

/// A turn's final answer.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnOutcome {
    pub text: String,
    pub ending: Ending,
}

/// Conversation memory bounded by a token budget: the system prompt is always kept, whole turns are
/// dropped oldest first, and a short digest of what was dropped stays in the system message.
#[derive(Debug, Clone)]
pub struct Memory {
    system: String,
    turns: VecDeque<Vec<Message>>,
    budget_tokens: usize,
    dropped: VecDeque<String>,
    dropped_total: usize,
}

const DIGEST_LINES: usize = 12;
const DIGEST_CHARS: usize = 160;

impl Memory {
    pub fn new(system: impl Into<String>, budget_tokens: usize) -> Self {
        Self {
            system: system.into(),
            turns: VecDeque::new(),
            budget_tokens,
            dropped: VecDeque::new(),
            dropped_total: 0,
        }
    }

    /// A new token budget (a parameter set at run time); applied from the next turn on.
    pub fn set_budget(&mut self, budget_tokens: usize) {
        self.budget_tokens = budget_tokens;
    }

    pub fn set_system(&mut self, system: impl Into<String>) {
        self.system = system.into();
    }

    pub fn system(&self) -> &str {
        &self.system
    }

    /// Rough token count (4 characters a token, plus a few per message).
    pub fn estimate_tokens(messages: &[Message]) -> usize {
        messages.iter().map(|m| m.text_len() / 4 + 4).sum()
    }

    pub fn tokens(&self) -> usize {
        Self::estimate_tokens(&self.messages())
    }

    pub fn turn_count(&self) -> usize {
        self.turns.len()
    }

    pub fn dropped_turns(&self) -> usize {
        self.dropped_total
    }

    fn system_message(&self) -> Message {
        if self.dropped.is_empty() {
            return Message::System(self.system.clone());
        }
        let mut s = self.system.clone();
        s.push_str(&format!(
            "\n\n[Memory: {} earlier turn(s) were dropped to stay within the context budget. The last ones began with:]\n",
            self.dropped_total
        ));
        for d in &self.dropped {
            s.push_str("- ");
            s.push_str(d);
            s.push('\n');
        }
        Message::System(s)
    }

    /// The messages to send: system first, then the kept turns in order.
    pub fn messages(&self) -> Vec<Message> {
        let mut out = vec![self.system_message()];
        out.extend(self.turns.iter().flatten().cloned());
        out
    }

    /// Add a whole earlier turn (its first message should be the user's), e.g. to restore a
    /// conversation.
    pub fn push_turn(&mut self, turn: Vec<Message>) {
        if !turn.is_empty() {
            self.turns.push_back(turn);
            self.trim();
        }
    }

    fn begin_turn(&mut self, user: String) {
        self.turns.push_back(vec![Message::User(user)]);
    }

    fn push(&mut self, m: Message) {
        match self.turns.back_mut() {
            Some(t) => t.push(m),
            None => self.turns.push_back(vec![m]),
        }
    }

    /// Drop the oldest whole turns until within budget (the current turn is never dropped).
    pub fn trim(&mut self) {
        while self.turns.len() > 1 && self.tokens() > self.budget_tokens {
            if let Some(turn) = self.turns.pop_front() {
                let first = turn.iter().find_map(|m| match m {
                    Message::User(u) => Some(u.clone()),
                    _ => None,
                });
                if let Some(u) = first {
                    self.dropped.push_back(truncate(&u.replace('\n', " "), DIGEST_CHARS));
                    // The digest may use an eighth of the budget (4 characters a token).
                    let max_chars = self.budget_tokens / 2;
                    while self.dropped.len() > DIGEST_LINES
                        || (self.dropped.len() > 1 && self.dropped.iter().map(String::len).sum::<usize>() > max_chars)
                    {
                        self.dropped.pop_front();
                    }
                }
                self.dropped_total += 1;
            }
        }
    }
}

/// What a [`Memory`] holds besides its system prompt and budget: what the kernel journals so that
/// a restarted kernel keeps its conversation (`kernel_queue`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemorySnapshot {
    pub turns: Vec<Vec<Message>>,
    pub dropped: Vec<String>,
    pub dropped_total: usize,
}

impl Memory {
    /// The messages of the newest turn (the one a finished `run_turn` added).
    pub fn last_turn(&self) -> Vec<Message> {
        self.turns.back().cloned().unwrap_or_default()
    }

    pub fn snapshot(&self) -> MemorySnapshot {
        MemorySnapshot {
            turns: self.turns.iter().cloned().collect(),
            dropped: self.dropped.iter().cloned().collect(),
            dropped_total: self.dropped_total,
        }
    }

    /// Replace the conversation with `s` (system prompt and budget stay), within the budget.
    pub fn restore(&mut self, s: MemorySnapshot) {
        self.turns = s.turns.into();
        self.dropped = s.dropped.into();
        self.dropped_total = s.dropped_total;
        self.trim();
    }
}

/// The agent: a model, a memory and the options of its turns.
pub struct Agent<M: ?Sized> {
    pub memory: Memory,
    pub options: AgentOptions,
    model: std::sync::Arc<M>,
}

/// Identity of a call for the loop guard: the tool and its arguments as JSON values (so spacing
/// and key order do not matter).
fn call_key(call: &ToolCall) -> (String, Value) {
    let args = serde_json::from_str::<Value>(&call.arguments).unwrap_or_else(|_| Value::String(call.arguments.clone()));
    (call.name.clone(), args)
}

impl<M: ChatModel + ?Sized> Agent<M> {
    pub fn new(model: std::sync::Arc<M>, memory: Memory, options: AgentOptions) -> Self {
        let mut options = options;
        options.max_steps = options.max_steps.max(1);
        Self { memory, options, model }
    }

    /// Send what the first step of a turn for `user` would send, ask for one token, and keep
    /// nothing of it (memory is unchanged). A server that caches prompts (the embedded model) has
    /// then processed the prefix every later turn shares — the system prompt, the tool schemas,
    /// the turns in memory — and the next real turn pays only for its own tokens.
    pub async fn warm_prefix(&self, user: String, tools: &dyn ToolBox) -> Result<(), LlmError> {
        let mut memory = self.memory.clone();
        memory.begin_turn(user);
        memory.trim();
        let messages = memory.messages();
        let specs = tools.specs();
        let request = ChatRequest {
            messages: &messages,
            tools: &specs,
            // The prompt is the same whatever the choice; `auto` lets one token of text end it.
            tool_choice: ToolChoice::Auto,
            deadline: self.options.turn_deadline.map(|d| Instant::now() + d),
            max_tokens: Some(1),
        };
        self.model.complete(request).await.map(|_| ())
    }

    /// Run one turn for `user` and return the model's final answer.
    pub async fn run_turn(
        &mut self,
        user: String,
        tools: &dyn ToolBox,
        on_event: &mut (dyn FnMut(AgentEvent) + Send),
    ) -> Result<TurnOutcome, AgentError> {
        self.memory.begin_turn(user);
        self.memory.trim();
        let specs = tools.specs();
        let opts = self.options.clone();
        let deadline = opts.turn_deadline.map(|d| Instant::now() + d);
        let mut made: Vec<(String, Value)> = Vec::new();
        let mut after_tool = false;
        let mut must_report: Option<Ending> = None;
        for step in 1..=opts.max_steps {
            if let (Some(d), Some(total)) = (deadline, opts.turn_deadline) {
                if Instant::now() >= d {
                    return Err(AgentError::Deadline(total.as_secs_f64()));
                }
            }
            if must_report.is_none() && step == opts.max_steps && opts.report_on_last_step && step > 1 {
                must_report = Some(Ending::StepLimit);
            }
            on_event(AgentEvent::Step { step });
            let mut messages = self.memory.messages();
            if must_report.is_some() {
                messages.push(Message::System(opts.report_request.clone()));
            } else if after_tool {
                if let Some(n) = &opts.after_tool_nudge {
                    messages.push(Message::System(n.clone()));
                }
            }
            let request = ChatRequest {
                messages: &messages,
                tools: if must_report.is_some() { &[] } else { &specs },
                tool_choice: match must_report {
                    Some(_) => ToolChoice::None,
                    None if step == 1 && opts.act_first && !specs.is_empty() => ToolChoice::Required,
                    None => opts.tool_choice,
                },
                deadline,
                max_tokens: None,
            };
            let completion = match self.model.complete(request).await {
                Ok(c) => c,
                Err(LlmError::Timeout(_)) if deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Err(AgentError::Deadline(opts.turn_deadline.unwrap_or_default().as_secs_f64()))
                }
                Err(e) => return Err(e.into()),
            };
            let calls = completion.tool_calls.clone();
            self.memory.push(Message::Assistant { content: completion.content.clone(), tool_calls: calls.clone() });
            if calls.is_empty() || must_report.is_some() {
                // Calls made when none were offered are not run (each still gets its result, so the
                // conversation stays well-formed for the next turn).
                for call in &calls {
                    self.memory.push(Message::Tool { call_id: call.id.clone(), content: "ERROR: not run: no tools now".into() });
                }
                self.memory.trim();
                return Ok(TurnOutcome {
                    text: completion.content.unwrap_or_default(),
                    ending: must_report.unwrap_or(Ending::Answer),
                });
            }
            for call in calls {
                let key = call_key(&call);
                if opts.loop_guard && made.contains(&key) {
                    tracing::info!(tool = %call.name, "loop guard: a call made again is not run");
                    self.memory.push(Message::Tool {
                        call_id: call.id.clone(),
                        content: "ERROR: not run: this exact call was already made in this task; its result is above.".into(),
                    });
                    must_report = Some(Ending::LoopGuard);
                    continue;
                }
                made.push(key);
                on_event(AgentEvent::ToolStarted { step, tool: call.name.clone() });
                let output = dispatch(tools, &specs, &call).await;
                tracing::debug!(tool = %call.name, is_error = output.is_error, "tool result");
                self.memory.push(Message::Tool { call_id: call.id.clone(), content: output.for_model() });
                on_event(AgentEvent::ToolCalled { step, tool: call.name.clone(), output });
            }
            after_tool = true;
            self.memory.trim();
        }
        Err(AgentError::StepLimit(opts.max_steps))
    }
}

/// Validate one tool call and run it; every failure becomes an error result for the model.
async fn dispatch(tools: &dyn ToolBox, specs: &[ToolSpec], call: &ToolCall) -> ToolOutput {
    if !specs.iter().any(|s| s.name == call.name) {
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        return ToolOutput::error(format!(
            "unknown tool `{}`; the tools are: {}",
            call.name,
            names.join(", ")
        ));
    }
    let raw = if call.arguments.trim().is_empty() { "{}" } else { call.arguments.as_str() };
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(args)) => tools.call(&call.name, args).await,
        Ok(other) => ToolOutput::error(format!(
            "arguments of `{}` must be a JSON object, got: {}",
            call.name,
            truncate(&other.to_string(), 200)
        )),
        Err(e) => ToolOutput::error(format!(
            "arguments of `{}` are not valid JSON ({e}): {}",
            call.name,
            truncate(raw, 200)
        )),
    }
}

#[cfg(test)]
pub mod testutil {
    //! A scripted model for unit tests of the loop and of the nodes' logic.
    use super::*;
    use crate::llm::Completion;
    use std::sync::Mutex;

    pub struct ScriptedModel {
        pub replies: Mutex<VecDeque<Result<Completion, LlmError>>>,
        pub seen: Mutex<Vec<Vec<Message>>>,
        /// Per request: how many tools were offered, and the tool_choice.
        pub requests: Mutex<Vec<(usize, ToolChoice)>>,
        /// Per request: its own `max_tokens`, if any.
        pub max_tokens: Mutex<Vec<Option<u32>>>,
    }

    impl ScriptedModel {
        pub fn new(replies: Vec<Result<Completion, LlmError>>) -> std::sync::Arc<Self> {
            std::sync::Arc::new(Self {
                replies: Mutex::new(replies.into()),
                seen: Mutex::new(Vec::new()),
                requests: Mutex::new(Vec::new()),
                max_tokens: Mutex::new(Vec::new()),
            })
        }
    }

    pub fn text(s: &str) -> Result<Completion, LlmError> {
        Ok(Completion { content: Some(s.into()), tool_calls: vec![] })
    }

    pub fn call(name: &str, args: &str) -> Result<Completion, LlmError> {
        Ok(Completion {
            content: None,
            tool_calls: vec![ToolCall { id: format!("id_{name}"), name: name.into(), arguments: args.into() }],
        })
    }

    #[async_trait::async_trait]
    impl ChatModel for ScriptedModel {
        async fn complete(&self, request: ChatRequest<'_>) -> Result<Completion, LlmError> {
            self.seen.lock().unwrap().push(request.messages.to_vec());
            self.requests.lock().unwrap().push((request.tools.len(), request.tool_choice));
            self.max_tokens.lock().unwrap().push(request.max_tokens);
            self.replies
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Err(LlmError::Unreachable("script exhausted".into())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::llm::Completion;
    use serde_json::json;
    use std::sync::Mutex;

    struct Echo {
        calls: Mutex<Vec<(String, serde_json::Map<String, Value>)>>,
    }

    #[async_trait::async_trait]
    impl ToolBox for Echo {
        fn specs(&self) -> Vec<ToolSpec> {
            vec![ToolSpec { name: "echo".into(), description: "echo".into(), parameters: json!({"type": "object"}) }]
        }
        async fn call(&self, name: &str, args: serde_json::Map<String, Value>) -> ToolOutput {
            self.calls.lock().unwrap().push((name.into(), args.clone()));
            ToolOutput::ok(format!("echo {}", Value::Object(args)))
        }
    }

    fn echo() -> Echo {
        Echo { calls: Mutex::new(vec![]) }
    }

    #[tokio::test]
    async fn runs_tools_until_a_final_answer() {
        let model = ScriptedModel::new(vec![call("echo", r#"{"x":1}"#), text("done")]);
        let mut agent = Agent::new(model.clone(), Memory::new("sys", 10_000), AgentOptions::new(5));
        let tools = echo();
        let mut events = vec![];
        let out = agent.run_turn("go".into(), &tools, &mut |e| events.push(e)).await.unwrap().text;
        assert_eq!(out, "done");
        assert_eq!(tools.calls.lock().unwrap()[0].1["x"], json!(1));
        assert!(matches!(&events[1], AgentEvent::ToolStarted { tool, .. } if tool == "echo"));
        assert!(matches!(&events[2], AgentEvent::ToolCalled { tool, .. } if tool == "echo"));
        // The second request carried the tool result after the assistant's call.
        let second = &model.seen.lock().unwrap()[1];
        assert!(matches!(&second[3], Message::Tool { content, .. } if content.starts_with("echo")));
    }

    #[tokio::test]
    async fn a_warm_up_sends_the_first_steps_request_for_one_token_and_keeps_nothing() {
        // Whatever it answers (here a call) is dropped: no tool runs, memory is unchanged.
        let model = ScriptedModel::new(vec![call("echo", "{}"), call("echo", r#"{"x":1}"#), text("done")]);
        let mut options = AgentOptions::new(5);
        options.act_first = true;
        let mut agent = Agent::new(model.clone(), Memory::new("sys", 10_000), options);
        agent.memory.push_turn(vec![Message::User("earlier".into()), Message::Assistant { content: Some("ok".into()), tool_calls: vec![] }]);
        let tools = echo();
        agent.warm_prefix("go".into(), &tools).await.unwrap();
        assert!(tools.calls.lock().unwrap().is_empty());
        assert_eq!(agent.memory.turn_count(), 1);
        agent.run_turn("go".into(), &tools, &mut |_| {}).await.unwrap();
        let seen = model.seen.lock().unwrap();
        // The same messages as the turn's first request (system, the turn in memory, the user's),
        // the same tools; one token asked, and only by the warm-up.
        assert_eq!(seen[0], seen[1]);
        assert_eq!(seen[0].len(), 4);
        let requests = model.requests.lock().unwrap();
        assert_eq!((requests[0].0, requests[0].1), (1, ToolChoice::Auto));
        assert_eq!(requests[1], (1, ToolChoice::Required));
        assert_eq!(*model.max_tokens.lock().unwrap(), vec![Some(1), None, None]);
    }

    #[tokio::test]
    async fn malformed_arguments_and_unknown_tools_go_back_to_the_model() {
        let model = ScriptedModel::new(vec![
            call("echo", "{not json"),
            call("echo", "[1,2]"),
            call("fly", "{}"),
            text("gave up"),
        ]);
        let mut agent = Agent::new(model.clone(), Memory::new("sys", 10_000), AgentOptions::new(5));
        let tools = echo();
        let out = agent.run_turn("go".into(), &tools, &mut |_| {}).await.unwrap().text;
        assert_eq!(out, "gave up");
        assert!(tools.calls.lock().unwrap().is_empty(), "no bad call reached the tool");
        let last = model.seen.lock().unwrap().last().unwrap().clone();
        let results: Vec<String> = last
            .iter()
            .filter_map(|m| match m {
                Message::Tool { content, .. } => Some(content.clone()),
                _ => None,
            })
            .collect();
        assert!(results[0].contains("not valid JSON"), "{results:?}");
        assert!(results[1].contains("must be a JSON object"), "{results:?}");
        assert!(results[2].contains("unknown tool `fly`") && results[2].contains("echo"), "{results:?}");
    }

    #[tokio::test]
    async fn step_limit_is_an_error() {
        let model = ScriptedModel::new(vec![call("echo", "{}"), call("echo", "{}"), call("echo", "{}")]);
        let mut agent = Agent::new(model, Memory::new("sys", 10_000), AgentOptions::new(2));
        let err = agent.run_turn("go".into(), &echo(), &mut |_| {}).await.unwrap_err();
        assert!(matches!(err, AgentError::StepLimit(2)));
    }

    #[tokio::test]
    async fn llm_failure_is_returned_and_memory_stays_consistent() {
        let model = ScriptedModel::new(vec![Err(LlmError::Unreachable("down".into())), text("back")]);
        let mut agent = Agent::new(model.clone(), Memory::new("sys", 10_000), AgentOptions::new(3));
        let err = agent.run_turn("first".into(), &echo(), &mut |_| {}).await.unwrap_err();
        assert!(err.to_string().contains("down"));
        assert_eq!(agent.run_turn("second".into(), &echo(), &mut |_| {}).await.unwrap().text, "back");
        // The first event is not lost: it is still in the conversation.
        let last = model.seen.lock().unwrap().last().unwrap().clone();
        assert!(last.contains(&Message::User("first".into())));
    }

    #[tokio::test]
    async fn a_repeated_call_is_not_run_and_the_report_is_asked_without_tools() {
        let model = ScriptedModel::new(vec![
            call("echo", r#"{"x": 1}"#),
            call("echo", r#"{ "x":1 }"#), // the same call again, spelled differently
            text("I echoed once."),
        ]);
        let mut opts = AgentOptions::new(8);
        opts.loop_guard = true;
        let mut agent = Agent::new(model.clone(), Memory::new("sys", 10_000), opts);
        let tools = echo();
        let out = agent.run_turn("go".into(), &tools, &mut |_| {}).await.unwrap();
        assert_eq!(out, TurnOutcome { text: "I echoed once.".into(), ending: Ending::LoopGuard });
        assert_eq!(tools.calls.lock().unwrap().len(), 1, "the repeat was not run");
        let reqs = model.requests.lock().unwrap().clone();
        assert_eq!(reqs[0], (1, ToolChoice::Auto));
        assert_eq!(reqs[2], (0, ToolChoice::None), "the report is asked without tools");
        let last = model.seen.lock().unwrap()[2].clone();
        assert!(matches!(last.last(), Some(Message::System(s)) if s.contains("Stop calling tools")));
        assert!(last.iter().any(|m| matches!(m, Message::Tool { content, .. } if content.contains("already made"))));
        // The note asking for the report is not kept in memory.
        assert!(!agent.memory.messages().iter().any(|m| matches!(m, Message::System(s) if s.contains("Stop calling tools"))));
    }

    #[tokio::test]
    async fn act_first_requires_a_call_at_the_first_step_only() {
        let model = ScriptedModel::new(vec![call("echo", r#"{"n":1}"#), text("Echoed once.")]);
        let mut opts = AgentOptions::new(5);
        opts.act_first = true;
        let mut agent = Agent::new(model.clone(), Memory::new("sys", 10_000), opts);
        let out = agent.run_turn("go".into(), &echo(), &mut |_| {}).await.unwrap();
        assert_eq!(out.text, "Echoed once.");
        let reqs = model.requests.lock().unwrap().clone();
        assert_eq!(reqs, vec![(1, ToolChoice::Required), (1, ToolChoice::Auto)]);
    }

    #[tokio::test]
    async fn the_last_step_asks_for_the_report_instead_of_failing() {
        let model = ScriptedModel::new(vec![call("echo", r#"{"n":1}"#), call("echo", r#"{"n":2}"#), text("Echoed twice, ran out of steps.")]);
        let mut opts = AgentOptions::new(3);
        opts.report_on_last_step = true;
        opts.tool_choice = ToolChoice::Required;
        let mut agent = Agent::new(model.clone(), Memory::new("sys", 10_000), opts);
        let out = agent.run_turn("go".into(), &echo(), &mut |_| {}).await.unwrap();
        assert_eq!(out.ending, Ending::StepLimit);
        assert_eq!(out.text, "Echoed twice, ran out of steps.");
        let reqs = model.requests.lock().unwrap().clone();
        assert_eq!(reqs, vec![(1, ToolChoice::Required), (1, ToolChoice::Required), (0, ToolChoice::None)]);
    }

    #[tokio::test]
    async fn the_nudge_follows_tool_results_only_and_is_not_kept() {
        let model = ScriptedModel::new(vec![call("echo", "{}"), text("Done.")]);
        let mut opts = AgentOptions::new(4);
        opts.after_tool_nudge = Some("Reply in plain text.".into());
        let mut agent = Agent::new(model.clone(), Memory::new("sys", 10_000), opts);
        agent.run_turn("go".into(), &echo(), &mut |_| {}).await.unwrap();
        let seen = model.seen.lock().unwrap().clone();
        assert!(!seen[0].iter().any(|m| matches!(m, Message::System(s) if s.contains("plain text"))));
        assert!(matches!(seen[1].last(), Some(Message::System(s)) if s == "Reply in plain text."));
        assert_eq!(agent.memory.messages().iter().filter(|m| matches!(m, Message::System(_))).count(), 1);
    }

    /// A model that takes `delay` to answer.
    struct Slow(Duration);
    #[async_trait::async_trait]
    impl ChatModel for Slow {
        async fn complete(&self, request: ChatRequest<'_>) -> Result<Completion, LlmError> {
            let wait = tokio::time::sleep(self.0);
            match request.deadline {
                Some(d) => tokio::select! { _ = wait => {}, _ = tokio::time::sleep_until(d) => return Err(LlmError::Timeout("deadline".into())) },
                None => wait.await,
            }
            Ok(Completion { content: None, tool_calls: vec![ToolCall { id: "a".into(), name: "echo".into(), arguments: "{}".into() }] })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_turn_deadline_bounds_every_step() {
        let mut opts = AgentOptions::new(50);
        opts.turn_deadline = Some(Duration::from_secs(10));
        let mut agent = Agent::new(std::sync::Arc::new(Slow(Duration::from_secs(3))), Memory::new("sys", 10_000), opts);
        let t0 = Instant::now();
        let err = agent.run_turn("go".into(), &echo(), &mut |_| {}).await.unwrap_err();
        assert!(matches!(err, AgentError::Deadline(d) if d == 10.0), "{err}");
        assert_eq!(t0.elapsed(), Duration::from_secs(10), "ended at the deadline, in the middle of a call");
    }

    #[test]
    fn memory_keeps_the_system_prompt_and_drops_old_turns_within_budget() {
        let mut m = Memory::new("SYSTEM PROMPT", 200);
        for i in 0..100 {
            m.begin_turn(format!("event {i} {}", "x".repeat(100)));
            m.push(Message::Assistant { content: Some("ok".into()), tool_calls: vec![] });
            m.trim();
        }
        assert!(m.tokens() <= 200 + 80, "tokens {}", m.tokens());
        assert!(m.dropped_turns() > 90);
        let msgs = m.messages();
        match &msgs[0] {
            Message::System(s) => {
                assert!(s.starts_with("SYSTEM PROMPT"));
                assert!(s.contains("earlier turn(s) were dropped"));
                assert!(s.contains("event 9"), "digest names recent dropped events: {s}");
            }
            other => panic!("first message is not the system prompt: {other:?}"),
        }
        assert!(matches!(msgs.last(), Some(Message::Assistant { .. })));
        assert!(msgs.iter().any(|m| matches!(m, Message::User(u) if u.starts_with("event 99"))));
    }

    #[test]
    fn memory_drops_whole_turns_so_tool_results_keep_their_calls() {
        let mut m = Memory::new("s", 60);
        for i in 0..20 {
            m.begin_turn(format!("u{i}"));
            m.push(Message::Assistant {
                content: None,
                tool_calls: vec![ToolCall { id: format!("c{i}"), name: "t".into(), arguments: "{}".repeat(20) }],
            });
            m.push(Message::Tool { call_id: format!("c{i}"), content: "r".repeat(40) });
            m.trim();
        }
        let msgs = m.messages();
        // The first message after the system prompt opens a turn.
        assert!(matches!(msgs[1], Message::User(_)), "{msgs:?}");
    }
}
