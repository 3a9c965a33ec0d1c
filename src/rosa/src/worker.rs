//! A worker's logic: connect to its robots, run the agent on its task, report the outcome.

use crate::agent::{Agent, AgentEvent, AgentOptions, Ending, Memory, ToolBox};
use crate::llm::{ChatModel, LlmError};
use crate::process::{WorkerReport, WorkerSpec};
use crate::robots::Robot;
use std::sync::Arc;

/// What follows the task in a worker's first user message.
pub const START_MESSAGE: &str =
    "Carry out this task now, using your tools, one call at a time. When you are finished (or cannot go on), answer with a short report for the user, without calling a tool.";

/// A worker's system prompt: the worker rules, then each robot's description and prompt. The task
/// is not in it but in the first user message ([`first_message`]), so every worker of the same
/// robots sends the same long prefix (rules, robot prompts, tool schemas), which a local model
/// keeps processed in its cache.
pub fn compose_system_prompt(rules: &str, robots: &[&Robot]) -> String {
    let mut s = rules.trim().to_string();
    for r in robots {
        s.push_str(&format!("\n\n## Robot `{}`\n", r.name));
        if !r.description.is_empty() {
            s.push_str(&r.description);
            s.push('\n');
        }
        if !r.prompt.is_empty() {
            s.push_str(&r.prompt);
            s.push('\n');
        }
    }
    s.trim_end().to_string()
}

/// A worker's first user message: its task, then how to go about it.
pub fn first_message(task: &str) -> String {
    format!("## Your task\n{}\n\n{START_MESSAGE}", task.trim())
}

/// The options of a worker's turn: one call per step (`spec.tool_choice`), the loop guard, and a
/// report asked at the last step.
pub fn agent_options(spec: &WorkerSpec) -> AgentOptions {
    let mut o = AgentOptions::new(spec.max_steps);
    o.tool_choice = spec.tool_choice;
    o.act_first = spec.act_first;
    o.loop_guard = true;
    o.report_on_last_step = true;
    o.report_request = "Stop calling tools now. Answer with your short report for the user: what you did and what the outcome was (or why you could not finish).".into();
    o
}

/// The agent of a task of `spec`. A worker is short-lived: its memory only needs to hold one task.
fn agent<M: ChatModel + ?Sized>(spec: &WorkerSpec, model: Arc<M>) -> Agent<M> {
    Agent::new(model, Memory::new(spec.system_prompt.clone(), 64_000), agent_options(spec))
}

/// Have the LLM process the prefix every task on `spec`'s robots begins with — rules, robot
/// prompts, tool schemas, the start of the first message ([`Agent::warm_prefix`]).
pub async fn warm_prefix<M: ChatModel + ?Sized>(spec: &WorkerSpec, model: Arc<M>, tools: &dyn ToolBox) -> Result<(), LlmError> {
    agent(spec, model).warm_prefix(first_message(""), tools).await
}

/// Run the task with `tools`; every report goes to `report` (the last one is `Final`).
pub async fn run<M: ChatModel + ?Sized>(
    spec: &WorkerSpec,
    model: Arc<M>,
    tools: &dyn ToolBox,
    report: &mut (dyn FnMut(WorkerReport) + Send),
) -> WorkerReport {
    report(WorkerReport::Running { tools: tools.specs().into_iter().map(|s| s.name).collect() });
    let result = agent(spec, model)
        .run_turn(first_message(&spec.task), tools, &mut |e| match e {
            AgentEvent::Step { step } => report(WorkerReport::Step { step, tool: None }),
            AgentEvent::ToolStarted { step, tool } => report(WorkerReport::Step { step, tool: Some(tool) }),
            AgentEvent::ToolCalled { .. } => {}
        })
        .await;
    let last = match result {
        Ok(t) if t.ending == Ending::StepLimit => WorkerReport::Final {
            done: false,
            message: format!("step limit reached ({} LLM calls); last report: {}", spec.max_steps, non_empty(&t.text)),
        },
        Ok(t) => WorkerReport::Final { done: true, message: non_empty(&t.text).to_string() },
        Err(e) => WorkerReport::Final { done: false, message: format!("worker failed: {e}") },
    };
    report(last.clone());
    last
}

fn non_empty(s: &str) -> &str {
    if s.trim().is_empty() {
        "(finished without a report)"
    } else {
        s.trim()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::testutil::*;
    use crate::agent::ToolOutput;
    use crate::config::LlmConfig;
    use crate::llm::ToolSpec;
    use serde_json::{json, Map, Value};

    struct Wave;
    #[async_trait::async_trait]
    impl ToolBox for Wave {
        fn specs(&self) -> Vec<ToolSpec> {
            vec![ToolSpec { name: "wave".into(), description: "".into(), parameters: json!({"type": "object"}) }]
        }
        async fn call(&self, _n: &str, _a: Map<String, Value>) -> ToolOutput {
            ToolOutput::ok("waved")
        }
    }

    fn spec(max_steps: u32) -> WorkerSpec {
        WorkerSpec {
            worker_id: "w1".into(),
            system_prompt: "sys".into(),
            task: "Wave.".into(),
            tool_choice: crate::llm::ToolChoice::Auto,
            act_first: false,
            robots: vec![],
            max_steps,
            tool_timeout_sec: 1.0,
            llm: LlmConfig::default(),
            robot_tokens: vec![],
        }
    }

    #[tokio::test]
    async fn reports_steps_and_a_final_success() {
        let model = ScriptedModel::new(vec![call("wave", "{}"), text("I waved.")]);
        let mut reports = vec![];
        let last = run(&spec(4), model, &Wave, &mut |r| reports.push(r)).await;
        assert_eq!(last, WorkerReport::Final { done: true, message: "I waved.".into() });
        assert_eq!(reports[0], WorkerReport::Running { tools: vec!["wave".into()] });
        assert!(reports.contains(&WorkerReport::Step { step: 1, tool: Some("wave".into()) }));
        assert_eq!(reports.last(), Some(&last));
    }

    #[tokio::test]
    async fn step_limit_is_a_failure_with_the_report() {
        let model = ScriptedModel::new(vec![call("wave", r#"{"n":1}"#), call("wave", r#"{"n":2}"#), text("Waved twice.")]);
        let last = run(&spec(3), model.clone(), &Wave, &mut |_| {}).await;
        match last {
            WorkerReport::Final { done: false, message } => {
                assert!(message.contains("step limit") && message.contains("Waved twice."), "{message}")
            }
            other => panic!("{other:?}"),
        }
        // The task is the first user message, not part of the system prompt.
        let first = model.seen.lock().unwrap()[0].clone();
        assert!(matches!(&first[0], crate::llm::Message::System(s) if s == "sys"));
        assert!(matches!(&first[1], crate::llm::Message::User(u) if u.starts_with("## Your task\nWave.")));
    }

    #[tokio::test]
    async fn a_repeated_call_ends_the_task_with_its_report() {
        let model = ScriptedModel::new(vec![call("wave", "{}"), call("wave", "{}"), text("I waved.")]);
        let last = run(&spec(10), model, &Wave, &mut |_| {}).await;
        assert_eq!(last, WorkerReport::Final { done: true, message: "I waved.".into() });
    }

    #[test]
    fn system_prompt_has_rules_and_robots_and_the_task_comes_first_in_the_user_message() {
        let r = Robot { name: "bot".into(), url: "http://x".into(), description: "A bot.".into(), prompt_file: None, prompt: "Move slowly.".into(), ros: None };
        let s = compose_system_prompt("Rules.", &[&r]);
        assert!(s.starts_with("Rules."));
        assert!(s.ends_with("## Robot `bot`\nA bot.\nMove slowly."));
        let m = first_message(" Wave. ");
        assert!(m.starts_with("## Your task\nWave.\n\n"));
    }
}
