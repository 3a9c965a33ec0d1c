//! rosa: a ROS 2 agentic operating system.
//!
//! The logic lives in r2r-free modules (unit-tested without ROS); `nodes` wires it to ROS.
pub mod agent;
pub mod bag;
pub mod bridge;
pub mod config;
pub mod data_dir;
pub mod dynmsg;
pub mod http;
pub mod input;
pub mod journal;
pub mod kernel;
pub mod kernel_queue;
pub mod llm;
pub mod llm_server;
pub mod logging;
pub mod mcp_server;
pub mod mcp_tools;
pub mod pacer;
pub mod params;
pub mod process;
pub mod process_journal;
pub mod reachy;
pub mod robots;
pub mod stt;
pub mod web;
pub mod worker;

pub mod nodes;
pub mod ros;

#[cfg(test)]
mod fuzz_tests;

/// The exit code of a node whose configuration is wrong (`EX_CONFIG`): supervisors do not
/// restart it (tools/supervise.py).
pub const EXIT_CONFIG: i32 = 78;

/// Wrap an error in this (`anyhow::Error::new(ConfigurationError(..))`) to make the node exit
/// with [`EXIT_CONFIG`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigurationError(pub String);

/// A node's `main`: logging, a tokio runtime, the node's `run`, and a clear error on failure.
pub fn node_main<F, Fut>(name: &str, run: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    ros::init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run()) {
        tracing::error!("{name}: {e:#}");
        rt.shutdown_timeout(std::time::Duration::from_millis(200));
        // A configuration error (a missing model, a bad parameter) is not fixed by restarting.
        std::process::exit(if e.downcast_ref::<ConfigurationError>().is_some() { EXIT_CONFIG } else { 1 });
    }
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
}
