//! The `worker` node: one task, one OS process, one ROS node (`/rosa/worker_<id>`).
//!
//! Reads its [`WorkerSpec`] from stdin, reports progress as JSON lines on stdout (for the process
//! manager), publishes its outcome as a final `WorkerCallback` and an `Update`, then exits.

use crate::llm::OpenAiChat;
use crate::mcp_tools::McpToolBox;
use crate::process::{WorkerReport, WorkerSpec};
use crate::ros::{self, Spinner};
use r2r::rosa_interfaces::msg::{Update, WorkerCallback};
use r2r::{Node, Publisher};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn emit(report: &WorkerReport) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", report.to_line());
    let _ = out.flush();
}

/// Wait (bounded) until someone listens, so the one message a worker sends is not lost to discovery.
async fn wait_for_listener<T: r2r::WrappedTypesupport + 'static>(p: &Publisher<T>, max: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < max {
        if p.get_inter_process_subscription_count().unwrap_or(0) > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tracing::warn!("nobody subscribes to {}: the report may not be heard", std::any::type_name::<T>());
}

pub async fn run() -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let spec: WorkerSpec = serde_json::from_str(&input)
        .map_err(|e| anyhow::anyhow!("the worker expects its spec as JSON on stdin: {e}"))?;
    let id = spec.worker_id.clone();

    // ROS first, so that discovery runs while the worker connects to its robots and the LLM.
    let ctx = r2r::Context::create()?;
    let mut node = Node::create(ctx, &format!("worker_{id}"), "/rosa")?;
    let callback_pub = node.create_publisher::<WorkerCallback>("/rosa/worker_callback", ros::reliable(100))?;
    let update_pub = node.create_publisher::<Update>("/rosa/updates", ros::reliable(100))?;
    let spinner = Spinner::start(node, Duration::from_millis(20));

    let last = match (OpenAiChat::new(&spec.llm), McpToolBox::connect(&spec.robots, Duration::from_secs_f64(spec.tool_timeout_sec.max(0.1))).await) {
        (Err(e), _) => WorkerReport::Final { done: false, message: format!("worker {id}: {e}") },
        (_, Err(e)) => WorkerReport::Final { done: false, message: format!("worker {id}: {e}") },
        (Ok(model), Ok(tools)) => {
            let last = crate::worker::run(&spec, Arc::new(model), &tools, &mut |r| {
                if !matches!(r, WorkerReport::Final { .. }) {
                    emit(&r)
                }
            })
            .await;
            tools.close().await;
            last
        }
    };
    let WorkerReport::Final { done, message } = &last else { unreachable!("run returns a Final report") };
    tracing::info!(worker_id = %id, done, %message, "worker finished");

    wait_for_listener(&callback_pub, Duration::from_secs(3)).await;
    let stamp = ros::now();
    callback_pub.publish(&WorkerCallback { worker_id: id.clone(), message: message.clone(), done: *done, final_: true, stamp: stamp.clone() })?;
    update_pub.publish(&Update { role: "worker".into(), text: message.clone(), worker_id: id.clone(), stamp })?;
    // Tell the process manager only once the callback is out: a worker that dies before this line
    // gets its callback from the process manager instead.
    emit(&last);
    // Give reliable delivery a moment to complete before the process (and its DDS writer) goes.
    tokio::time::sleep(Duration::from_millis(150)).await;
    spinner.stop();
    Ok(())
}
