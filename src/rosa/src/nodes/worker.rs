//! The `worker` node: one task, one OS process, one ROS node (`/rosa/worker_<id>`).
//!
//! Reads its [`WorkerSpec`] from stdin and reports progress and its outcome as JSON lines on stdout;
//! the process manager turns them into action feedback and the final `WorkerCallback` (see
//! `nodes::process_manager::Ctx::publish_outcome` for why the worker does not publish it itself).

use crate::llm::OpenAiChat;
use crate::mcp_tools::McpToolBox;
use crate::process::{WorkerReport, WorkerSpec};
use crate::ros::Spinner;
use r2r::Node;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

fn emit(report: &WorkerReport) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", report.to_line());
    let _ = out.flush();
}

fn fail(message: String) -> WorkerReport {
    let r = WorkerReport::Final { done: false, message };
    emit(&r);
    r
}

pub async fn run() -> anyhow::Result<()> {
    // The worker is a ROS node of its own (`/rosa/worker_<id>` in the graph while it runs). The ROS
    // context starts while the spec is awaited (a warm worker waits here), and the node is created
    // off the critical path, while the robots connect.
    let (name_tx, name_rx) = std::sync::mpsc::channel::<String>();
    let ros = std::thread::spawn(move || -> Result<Option<Spinner>, r2r::Error> {
        let ctx = r2r::Context::create()?;
        let Ok(name) = name_rx.recv() else { return Ok(None) };
        let mut node = Node::create(ctx, &name, "/rosa")?;
        crate::ros::attach_rosout(&mut node);
        tracing::debug!("ROS node up");
        Ok(Some(Spinner::start(node, Duration::from_millis(50))))
    });

    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    if input.trim().is_empty() {
        // A warm worker whose process manager went away: nothing to do.
        return Ok(());
    }
    let spec: WorkerSpec = serde_json::from_str(&input)
        .map_err(|e| anyhow::anyhow!("the worker expects its spec as JSON on stdin: {e}"))?;
    let id = spec.worker_id.clone();
    tracing::debug!("spec read");
    let _ = name_tx.send(format!("worker_{id}"));

    let urls = spec.llm.urls.iter().chain(spec.robots.iter().map(|(_, u)| u)).map(String::as_str);
    let http = crate::http::client(crate::input::clamped_seconds(spec.llm.connect_timeout_sec, 0.1, 600.0), urls)?;
    let tool_timeout = crate::input::clamped_seconds(spec.tool_timeout_sec, 0.1, 86_400.0);
    let model = OpenAiChat::with_http(&spec.llm, http.clone()).map(|m| m.with_client_id(format!("worker_{id}")));
    let last = match (model, McpToolBox::connect(&spec.robots, &spec.robot_tokens, tool_timeout, &http).await) {
        (Err(e), _) => fail(format!("worker {id}: {e}")),
        (_, Err(e)) => fail(format!("worker {id}: {e}")),
        (Ok(model), Ok(tools)) => {
            let last = crate::worker::run(&spec, Arc::new(model), &tools, &mut |r| emit(&r)).await;
            tools.close().await;
            last
        }
    };
    match &last {
        WorkerReport::Final { done: true, message } => tracing::info!(worker_id = %id, %message, "worker done"),
        WorkerReport::Final { message, .. } => tracing::warn!(worker_id = %id, %message, "worker failed"),
        _ => {}
    }
    match ros.join() {
        Ok(Ok(Some(spinner))) => spinner.stop(),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the worker's ROS node could not be created"),
        Err(_) => tracing::warn!("the worker's ROS node thread panicked"),
    }
    Ok(())
}
