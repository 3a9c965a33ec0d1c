//! The `worker` node: one task, one OS process, one ROS node (`/rosa/worker_<id>`).
//!
//! Reads its [`WorkerSpec`] from stdin (one JSON line; stdin then stays open as its lifeline: the
//! worker ends when it closes) and reports progress and its outcome as JSON lines on stdout;
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
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", report.to_line());
        let _ = out.flush();
    }
    if matches!(report, WorkerReport::Final { .. }) {
        // The report is flushed: nothing is left to do but tidy up (close the MCP sessions and the
        // ROS node), so the process is gone within EXIT_BOUND whatever that does (the DDS teardown
        // has been seen spinning forever in Fast DDS's participant deletion). The process manager
        // kills a worker that lingers longer than its grace.
        exit_after(EXIT_BOUND);
    }
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

    // The spec is one JSON line; stdin then stays open as the lifeline to the process manager.
    let mut input = String::new();
    std::io::stdin().read_line(&mut input)?;
    if input.trim().is_empty() {
        // A warm worker whose process manager went away: nothing to do.
        return Ok(());
    }
    watch_lifeline();
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
    exit_now(0)
}

/// How long a worker that has sent its final report may spend closing its ROS node.
const EXIT_BOUND: Duration = Duration::from_millis(150);
/// The exit code of a worker whose process manager died (`EX_TEMPFAIL`).
const EXIT_ORPHANED: i32 = 75;

/// Leave now: stdout is flushed, and nothing else (atexit handlers, DDS's static destructors) runs.
fn exit_now(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    // A participant not (fully) deleted leaves its shared-memory segment behind: remove ours.
    let left = crate::process::remove_shm_segments(&crate::process::owned_shm_segments(std::process::id() as i32));
    if left > 0 {
        tracing::debug!(segments = left, "removed this worker's leftover DDS shared memory");
    }
    // SAFETY: _exit ends the process at once; nothing of ours needs to run after this.
    unsafe { libc::_exit(code) }
}

fn exit_after(bound: Duration) {
    let spawned = std::thread::Builder::new().name("exit-bound".into()).spawn(move || {
        std::thread::sleep(bound);
        tracing::warn!("the ROS node did not close within {} ms of the report: exiting without it", bound.as_millis());
        exit_now(0);
    });
    if spawned.is_err() {
        exit_now(0);
    }
}

/// The worker's stdin stays open as long as its process manager lives (it never writes after the
/// spec): end-of-file means the process manager is gone, and the worker ends at once — a worker
/// never outlives its process manager, which journals its table and reports this worker's end
/// when it is started again (see `process_journal`).
fn watch_lifeline() {
    let spawned = std::thread::Builder::new().name("lifeline".into()).spawn(|| {
        let mut buf = [0u8; 64];
        loop {
            match std::io::stdin().read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        tracing::warn!("the process manager is gone (stdin closed): the worker ends");
        exit_now(EXIT_ORPHANED);
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot watch the lifeline to the process manager");
    }
}
