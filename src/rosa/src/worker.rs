//! A worker's logic: connect to its robots, run the agent on its task, report the outcome.

use crate::agent::{Agent, AgentEvent, Memory, ToolBox};
use crate::llm::ChatModel;
use crate::process::{WorkerReport, WorkerSpec};
use crate::robots::Robot;
use std::sync::Arc;

/// The first user message of every worker.
pub const START_MESSAGE: &str =
    "Carry out your task now, using your tools. When you are finished (or cannot go on), answer with a short report for the user, without calling a tool.";

/// Compose a worker's system prompt: the worker rules, each robot's prompt, then the task.
pub fn compose_system_prompt(rules: &str, robots: &[&Robot], task: &str) -> String {
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
    s.push_str("\n\n## Your task\n");
    s.push_str(task.trim());
    s
}

/// Run the task with `tools`; every report goes to `report` (the last one is `Final`).
pub async fn run<M: ChatModel + ?Sized>(
    spec: &WorkerSpec,
    model: Arc<M>,
    tools: &dyn ToolBox,
    report: &mut (dyn FnMut(WorkerReport) + Send),
) -> WorkerReport {
    report(WorkerReport::Running { tools: tools.specs().into_iter().map(|s| s.name).collect() });
    // A worker is short-lived: its memory only needs to hold one task.
    let memory = Memory::new(spec.system_prompt.clone(), 64_000);
    let mut agent = Agent::new(model, memory, spec.max_steps);
    let result = agent
        .run_turn(START_MESSAGE.to_string(), tools, &mut |e| match e {
            AgentEvent::Step { step } => report(WorkerReport::Step { step, tool: None }),
            AgentEvent::ToolStarted { step, tool } => report(WorkerReport::Step { step, tool: Some(tool) }),
            AgentEvent::ToolCalled { .. } => {}
        })
        .await;
    let last = match result {
        Ok(text) if text.trim().is_empty() => WorkerReport::Final { done: true, message: "(finished without a report)".into() },
        Ok(text) => WorkerReport::Final { done: true, message: text },
        Err(e) => WorkerReport::Final { done: false, message: format!("worker failed: {e}") },
    };
    report(last.clone());
    last
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
    async fn step_limit_is_a_failure_with_the_reason() {
        let model = ScriptedModel::new(vec![call("wave", "{}"), call("wave", "{}")]);
        let last = run(&spec(1), model, &Wave, &mut |_| {}).await;
        match last {
            WorkerReport::Final { done: false, message } => assert!(message.contains("step limit"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn system_prompt_has_rules_robots_and_task() {
        let r = Robot { name: "bot".into(), url: "http://x".into(), description: "A bot.".into(), prompt_file: None, prompt: "Move slowly.".into(), ros: None };
        let s = compose_system_prompt("Rules.", &[&r], "Wave.");
        assert!(s.starts_with("Rules."));
        assert!(s.contains("## Robot `bot`\nA bot.\nMove slowly."));
        assert!(s.ends_with("## Your task\nWave."));
    }
}
