//! The `process_manager` node: the `/rosa/launch_process` action server and the process table.

use crate::config::{self, LlmConfig};
use crate::input::{self, clamped_seconds, clamped_size, ros_name, ros_text};
use crate::process::{self, ProcessTable, RobotToken, Row, State, WorkerReport, WorkerSpec};
use crate::process_journal::{LiveRow, ProcessJournal, Recovered};
use crate::robots::Registry;
use crate::ros::{self, Spinner};
use crate::worker::compose_system_prompt;
use futures::StreamExt;
use r2r::rosa_interfaces::action::LaunchProcess;
use r2r::rosa_interfaces::msg::{ProcessInfo, ProcessTable as ProcessTableMsg, Update, WorkerCallback};
use r2r::rosa_interfaces::srv::{ListProcesses, TerminateProcess};
use r2r::{ActionServerGoal, ActionServerGoalRequest, Node, Publisher};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};

/// Parameters of the process manager (see `config/rosa.yaml`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct ProcessManagerParams {
    /// Handed to every worker.
    pub llm: LlmConfig,
    /// The robots registry (YAML or drivers.json); relative paths are looked up in share/rosa/config.
    pub robots_file: String,
    /// Rules every worker gets at the top of its system prompt.
    pub worker_prompt_file: String,
    /// Concurrent workers at most; goals beyond are rejected (lowering it stops no running worker).
    #[schemars(range(min = 0, max = 256))]
    pub max_processes: u64,
    /// Default per-process timeout, seconds (a goal's timeout_sec overrides it).
    #[schemars(range(min = 0.1, max = 86400.0))]
    pub timeout_sec: f64,
    /// Default LLM calls per worker (a goal's max_steps overrides it).
    #[schemars(range(min = 1, max = 1000))]
    pub max_steps: u32,
    /// SIGTERM → SIGKILL grace period, seconds.
    #[schemars(range(min = 0.0, max = 60.0))]
    pub grace_sec: f64,
    /// Ended processes kept in the table.
    #[schemars(range(min = 0, max = 10000))]
    pub keep_ended: u64,
    /// Per tool call timeout in workers, seconds.
    #[schemars(range(min = 0.1, max = 3600.0))]
    pub tool_timeout_sec: f64,
    /// The worker executable ("" = `worker` next to this executable).
    pub worker_executable: String,
    /// Workers kept started and waiting for a task (0 = start each on demand).
    #[schemars(range(min = 0, max = 16))]
    pub warm_workers: u64,
    /// `tool_choice` of each worker step: `auto` (the model may answer in text at any step) or
    /// `required` (one call per step; the loop guard and the last step ask for the report).
    pub worker_tool_choice: crate::llm::ToolChoice,
    /// A worker's first step must call a tool (`required`), later steps follow
    /// `worker_tool_choice`: `./rosa up` sets it for the embedded model, which otherwise tends to
    /// answer the task in text without doing it.
    pub worker_act_first: bool,
    /// At start, send the LLM the prompt prefix of a task on the registry's first robot (worker
    /// rules, robot prompt, its MCP tools) with `max_tokens` 1, once that robot's MCP server
    /// answers. For a local model with a prompt cache (`./rosa up` sets it for the embedded one):
    /// the first worker then pays only for its task. Off for remote providers (billed).
    pub warm_prefix: bool,
    /// The largest timeout_sec a goal may ask for, seconds (larger, negative, NaN and inf are rejected).
    #[schemars(range(min = 1.0, max = 31536000.0))]
    pub max_timeout_sec: f64,
    /// The MCP token handed to workers for their robots ("" = <data_dir>/mcp_token, made by ./rosa setup).
    pub mcp_token_file: String,
    /// Robots (by name) that get the MCP token besides those whose URL is on loopback.
    pub mcp_token_robots: Vec<String>,
    /// A worker still running this long after its final report is killed (SIGKILL), counted and
    /// logged; workers exit by themselves within 150 ms of it.
    #[schemars(range(min = 0.0, max = 60.0))]
    pub exit_grace_sec: f64,
    /// Where the journal of the process table goes ("" = $ROSA_DATA_DIR/state/domain<ROS_DOMAIN_ID>).
    pub journal_dir: String,
    /// Sync the journal to disk at each accepted goal, started worker and final report.
    pub journal_sync: bool,
    /// History depth of the list and terminate requests (a burst of callers).
    #[schemars(range(min = 10, max = 100000))]
    pub request_depth: u64,
}

impl crate::params::NodeParams for ProcessManagerParams {
    // Every goal reads these when it starts; the registry, the worker rules and the executable are
    // loaded once.
    const DYNAMIC: &'static [&'static str] =
        &["llm.", "max_processes", "timeout_sec", "max_steps", "grace_sec", "keep_ended", "tool_timeout_sec", "warm_workers", "max_timeout_sec", "mcp_token_robots", "worker_tool_choice", "worker_act_first", "exit_grace_sec"];
}

impl Default for ProcessManagerParams {
    fn default() -> Self {
        Self {
            llm: LlmConfig::default(),
            robots_file: "robots.yaml".into(),
            worker_prompt_file: "prompts/worker.txt".into(),
            max_processes: 4,
            timeout_sec: 300.0,
            max_steps: 20,
            grace_sec: 3.0,
            keep_ended: 20,
            tool_timeout_sec: 60.0,
            worker_executable: String::new(),
            warm_workers: 2,
            worker_tool_choice: crate::llm::ToolChoice::Auto,
            worker_act_first: false,
            warm_prefix: false,
            max_timeout_sec: 86_400.0,
            mcp_token_file: String::new(),
            mcp_token_robots: vec![],
            exit_grace_sec: 0.5,
            journal_dir: String::new(),
            journal_sync: true,
            request_depth: 1000,
        }
    }
}

/// A terminate request for a running goal: force, and where to say how it ended.
type TerminateRequest = (bool, oneshot::Sender<String>);

struct Shared {
    table: ProcessTable,
    terminators: HashMap<String, mpsc::Sender<TerminateRequest>>,
}

#[derive(Clone)]
struct Ctx {
    shared: Arc<Mutex<Shared>>,
    table_pub: Publisher<ProcessTableMsg>,
    callback_pub: Publisher<WorkerCallback>,
    update_pub: Publisher<Update>,
    /// The parameters now (set at run time: each goal takes them when it starts).
    params: watch::Receiver<ProcessManagerParams>,
    registry: Arc<Registry>,
    rules: Arc<String>,
    worker_exe: Arc<PathBuf>,
    pool: Arc<Mutex<std::collections::VecDeque<process::IdleWorker>>>,
    journal: Arc<Mutex<ProcessJournal>>,
    /// Workers killed because they lingered past `exit_grace_sec` after their report.
    lingered: Arc<AtomicU64>,
}

/// Callbacks kept for late joiners, and for a restarted kernel (it subscribes transient-local and
/// drops those it had already accepted).
pub const CALLBACK_HISTORY: usize = 100;

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// Bytes of each system prompt in the process table (/rosa/processes, and /rosa/list_processes
/// unless full_system_prompts): the table stays small whatever the prompts.
pub const PROMPT_SUMMARY_BYTES: usize = 1000;

/// A row as a message: the prompt's bounded summary (or, with `full_prompt`, all of it), and text
/// fit for rcl (no NUL).
fn info(r: &Row, full_prompt: bool) -> ProcessInfo {
    let prompt = if full_prompt { Cow::Borrowed(r.system_prompt.as_str()) } else { input::summary(&r.system_prompt, PROMPT_SUMMARY_BYTES) };
    ProcessInfo {
        worker_id: r.worker_id.clone(),
        pid: r.pid,
        state: r.state.as_str().into(),
        system_prompt: ros_name(&prompt).into_owned(),
        robots: r.robots.iter().map(|n| ros_name(n).into_owned()).collect(),
        step: r.step,
        last_tool: ros_name(&r.last_tool).into_owned(),
        started: ros::stamp(r.started),
        system_prompt_size: r.system_prompt.len() as u64,
    }
}

/// A goal's timeout (its timeout_sec, 0 = the default), range-checked; the error is why the goal
/// is rejected.
fn goal_limits(goal: &LaunchProcess::Goal, params: &ProcessManagerParams) -> Result<Duration, String> {
    input::goal_timeout(goal.timeout_sec, params.timeout_sec, params.max_timeout_sec)
}

impl Ctx {
    fn with_table<T>(&self, f: impl FnOnce(&mut ProcessTable) -> T) -> T {
        let out = {
            let mut s = self.shared.lock().expect("table lock");
            f(&mut s.table)
        };
        self.publish_table();
        out
    }

    fn publish_table(&self) {
        let msg = {
            let s = self.shared.lock().expect("table lock");
            ProcessTableMsg {
                stamp: ros::now(),
                max_processes: input::saturating_u32(s.table.max_processes as u64),
                processes: s.table.rows_in_order(true).into_iter().map(|r| info(r, false)).collect(),
            }
        };
        if let Err(e) = self.table_pub.publish(&msg) {
            tracing::error!(error = %e, "cannot publish /rosa/processes");
        }
    }

    /// Publish a worker's outcome: the final `WorkerCallback` (what the kernel consumes) and an
    /// `Update` for the user. The worker hands its report over stdout and the process manager
    /// publishes it: a DDS writer in a process that lives 50 ms is not matched by every subscriber
    /// in time, while this node's writer is, so every subscriber (kernel, UI, rosbag) gets it once.
    ///
    /// The report is journaled before it is published and marked published after: a process
    /// manager that dies in between publishes it again when it restarts (same stamp; the kernel
    /// drops the repeat), one that dies before never loses it.
    fn publish_outcome(&self, worker_id: &str, done: bool, message: &str, role: &str) {
        let now = SystemTime::now();
        let stamp_ns = now.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)).unwrap_or(0);
        self.lock_journal().final_report(worker_id, done, message, stamp_ns);
        publish_final(&self.callback_pub, &self.update_pub, worker_id, done, message, role, ros::stamp(now));
        self.lock_journal().published(worker_id);
    }

    fn lock_journal(&self) -> std::sync::MutexGuard<'_, ProcessJournal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admit or reject a goal request; on accept, run it in its own task.
    fn on_goal_request(&self, req: ActionServerGoalRequest<LaunchProcess::Action>) {
        let worker_id = process::worker_id_for_goal(req.uuid.as_bytes());
        let unknown: Vec<&String> = req.goal.robots.iter().filter(|r| self.registry.get(r).is_none()).collect();
        let duplicate = self.shared.lock().expect("table lock").table.get(&worker_id).is_some();
        let refusal = if duplicate {
            // A client that got no answer sends its goal again with the same id (the kernel does):
            // the first one is in the table, the copy is refused.
            Some(format!("worker {worker_id} already exists: a goal with this id was sent twice"))
        } else if !unknown.is_empty() {
            Some(format!("unknown robot(s) {unknown:?}; the registry has {:?}", self.registry.names()))
        } else if let Err(why) = goal_limits(&req.goal, &self.params.borrow()) {
            Some(why)
        } else {
            self.shared.lock().expect("table lock").table.admit().err()
        };
        if let Some(why) = refusal {
            tracing::warn!(%worker_id, "rejecting goal: {why}");
            if let Err(e) = req.reject() {
                tracing::error!(error = %e, "cannot reject goal");
            }
            return;
        }
        // Journaled before it is accepted: an accepted goal is never unknown to a restarted
        // process manager. The journal keeps the prompt's bounded summary (what the table shows),
        // so that a task of megabytes is not written to disk nor kept twice in memory.
        let started = SystemTime::now();
        self.lock_journal().accepted(LiveRow {
            worker_id: worker_id.clone(),
            system_prompt: input::summary(&req.goal.system_prompt, PROMPT_SUMMARY_BYTES).into_owned(),
            robots: req.goal.robots.clone(),
            started_ms: unix_ms(started),
            pid: 0,
            start_ticks: 0,
            report: None,
        });
        let (mut handle, cancel) = match req.accept() {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot accept goal");
                self.lock_journal().ended(&worker_id, State::Failed);
                return;
            }
        };
        // The goal moves out of the handle (r2r does not use it): clones of the handle, and the
        // handle itself, then do not carry a prompt that may be megabytes.
        let goal = std::mem::take(&mut handle.goal);
        let (term_tx, term_rx) = mpsc::channel(4);
        {
            let mut s = self.shared.lock().expect("table lock");
            s.table.insert(Row {
                worker_id: worker_id.clone(),
                pid: 0,
                state: State::Starting,
                system_prompt: goal.system_prompt.clone(),
                robots: goal.robots.clone(),
                step: 0,
                last_tool: String::new(),
                started,
            });
            s.terminators.insert(worker_id.clone(), term_tx);
        }
        self.publish_table();
        let ctx = self.clone();
        let task = self.clone().run_goal(worker_id.clone(), goal, handle.clone(), cancel, term_rx);
        process::spawn_supervised(task, move |why| ctx.goal_task_failed(&worker_id, handle, &why));
    }

    /// A goal task that panicked (or was cancelled) still ends its goal: a final callback, the row
    /// ended (the slot freed), the goal aborted. Its worker was killed when the task dropped it.
    fn goal_task_failed(&self, worker_id: &str, mut handle: ActionServerGoal<LaunchProcess::Action>, why: &str) {
        let message = format!("worker {worker_id} failed: the process manager's goal task failed ({why})");
        tracing::error!(%worker_id, "{message}");
        if self.shared.is_poisoned() {
            self.shared.clear_poison();
        }
        let reported = {
            let mut s = self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let ended = s.table.get(worker_id).map(|r| r.state).filter(|st| !st.is_live());
            s.terminators.remove(worker_id);
            s.table.finish(worker_id, ended.unwrap_or(State::Failed));
            ended.is_some()
        };
        if !reported {
            self.publish_outcome(worker_id, false, &message, "system");
        }
        self.lock_journal().ended(worker_id, State::Failed);
        self.publish_table();
        let result = LaunchProcess::Result { worker_id: worker_id.into(), success: false, message: ros_text(&message).into_owned() };
        if let Err(e) = handle.abort(result) {
            tracing::warn!(%worker_id, error = %e, "cannot abort the goal");
        }
    }

    /// Parameters set at run time: the table's limits now, the pool's size soon.
    fn apply_params(&self, p: &ProcessManagerParams) {
        self.shared.lock().expect("table lock").table.set_limits(p.max_processes as usize, p.keep_ended as usize);
        self.publish_table();
        let extra: Vec<_> = {
            let mut pool = self.pool.lock().expect("pool lock");
            let keep = (p.warm_workers as usize).min(pool.len());
            pool.drain(keep..).collect()
        };
        drop(extra); // their stdin closes: they exit (and are killed on drop)
        self.refill_pool();
    }

    /// A warm worker from the pool, if one is alive; the pool is refilled behind.
    fn take_warm(&self) -> Option<process::IdleWorker> {
        let warm = loop {
            let next = self.pool.lock().expect("pool lock").pop_front();
            match next {
                Some(mut w) => {
                    if w.is_alive() {
                        break Some(w);
                    }
                    tracing::warn!(pid = w.pid(), "a warm worker died while waiting; discarding it");
                }
                None => break None,
            }
        };
        self.refill_pool();
        warm
    }

    /// Top the pool up to `warm_workers` (in the background).
    fn refill_pool(&self) {
        let ctx = self.clone();
        tokio::spawn(async move {
            loop {
                let want = ctx.params.borrow().warm_workers as usize;
                if ctx.pool.lock().expect("pool lock").len() >= want {
                    return;
                }
                match process::spawn_idle(&ctx.worker_exe, &[]) {
                    Ok(w) => ctx.pool.lock().expect("pool lock").push_back(w),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a warm worker");
                        return;
                    }
                }
            }
        });
    }

    /// `warm_prefix`: the prefix of a task on the registry's first robot, sent once its MCP server
    /// answers (it may start after this node; waited for up to WARM_WAIT).
    async fn warm_worker_prefix(self) {
        let Some(robot) = self.registry.robots.first().map(|r| r.name.clone()) else { return };
        let spec = self.spec("warm-up", &LaunchProcess::Goal { robots: vec![robot.clone()], ..Default::default() });
        let urls = spec.llm.urls.iter().chain(spec.robots.iter().map(|(_, u)| u)).map(String::as_str);
        let http = match crate::http::client(clamped_seconds(spec.llm.connect_timeout_sec, 0.1, 600.0), urls) {
            Ok(h) => h,
            Err(e) => return tracing::warn!(error = %e, "cannot warm the LLM with a worker's prompt prefix"),
        };
        let since = std::time::Instant::now();
        let tools = loop {
            match crate::mcp_tools::McpToolBox::connect(&spec.robots, &spec.robot_tokens, Duration::from_secs(10), &http).await {
                Ok(t) => break t,
                Err(e) if since.elapsed() >= WARM_WAIT => {
                    return tracing::warn!(%robot, error = %e, "no worker prompt prefix for the LLM: the robot's MCP server did not answer")
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        };
        let t = std::time::Instant::now();
        let warmed = match crate::llm::OpenAiChat::with_http(&spec.llm, http) {
            Ok(m) => crate::worker::warm_prefix(&spec, Arc::new(m.with_client_id("process_manager")), &tools).await,
            Err(e) => Err(e),
        };
        match warmed {
            Ok(()) => tracing::info!(%robot, seconds = format!("{:.1}", t.elapsed().as_secs_f64()), "the LLM has a worker's prompt prefix"),
            Err(e) => tracing::warn!(%robot, error = %e, "could not warm the LLM with a worker's prompt prefix"),
        }
        tools.close().await;
    }

    fn spec(&self, worker_id: &str, goal: &LaunchProcess::Goal) -> WorkerSpec {
        let p = self.params.borrow().clone();
        let robots: Vec<_> = goal.robots.iter().filter_map(|n| self.registry.get(n)).collect();
        WorkerSpec {
            worker_id: worker_id.into(),
            system_prompt: compose_system_prompt(&self.rules, &robots),
            task: goal.system_prompt.clone(),
            tool_choice: p.worker_tool_choice,
            act_first: p.worker_act_first,
            robots: robots.iter().map(|r| (r.name.clone(), r.url.clone())).collect(),
            max_steps: if goal.max_steps > 0 { goal.max_steps } else { p.max_steps },
            tool_timeout_sec: clamped_seconds(p.tool_timeout_sec, 0.1, 86_400.0).as_secs_f64(),
            llm: p.llm.clone(),
            robot_tokens: self.robot_tokens(&robots),
        }
    }

    /// The MCP token for the robots that get it: those on loopback (rosa's own servers) and those
    /// named in `mcp_token_robots`. Read at each launch (`./rosa setup` or a server may create it
    /// later); no file, no token.
    fn robot_tokens(&self, robots: &[&crate::robots::Robot]) -> Vec<RobotToken> {
        let token_file = self.params.borrow().mcp_token_file.trim().to_string();
        let path = if token_file.is_empty() {
            crate::data_dir::default_root().join(crate::mcp_server::TOKEN_FILE)
        } else {
            PathBuf::from(token_file)
        };
        let token = match crate::mcp_server::read_token(&path) {
            Ok(Some(t)) => t,
            Ok(None) => return vec![],
            Err(e) => {
                tracing::warn!("workers get no MCP token: {e}");
                return vec![];
            }
        };
        robots
            .iter()
            .filter(|r| crate::mcp_server::is_loopback_url(&r.url) || self.params.borrow().mcp_token_robots.contains(&r.name))
            .map(|r| RobotToken { robot: r.name.clone(), token: token.clone() })
            .collect()
    }

    async fn run_goal(
        self,
        worker_id: String,
        goal: LaunchProcess::Goal,
        mut handle: ActionServerGoal<LaunchProcess::Action>,
        mut cancel: impl futures::Stream<Item = r2r::ActionServerCancelRequest> + Unpin,
        mut term_rx: mpsc::Receiver<TerminateRequest>,
    ) {
        let p = self.params.borrow().clone();
        // Checked when the goal was accepted; the fallback is never used.
        let timeout_d = goal_limits(&goal, &p).unwrap_or(Duration::from_secs(300));
        let timeout = timeout_d.as_secs_f64();
        let grace = clamped_seconds(p.grace_sec, 0.0, 3600.0);
        let exit_grace = clamped_seconds(p.exit_grace_sec, 0.0, 60.0);
        let spec = self.spec(&worker_id, &goal);

        enum End {
            Exited(Option<std::process::ExitStatus>),
            Cancelled(Option<std::process::ExitStatus>),
            Terminated(Option<std::process::ExitStatus>, oneshot::Sender<String>),
            TimedOut(Option<std::process::ExitStatus>),
            SpawnFailed(String),
        }
        let mut final_report: Option<(bool, String)> = None;
        let mut reported_at: Option<std::time::Instant> = None;
        // The worker's DDS shared memory, noted while it runs: removed if it is left behind.
        let mut shm: Vec<PathBuf> = Vec::new();
        let started = match self.take_warm() {
            Some(w) => w.assign(&spec).await,
            None => process::spawn_worker(&self.worker_exe, &[], &spec).await,
        };
        let end = match started {
            Err(e) => End::SpawnFailed(e.to_string()),
            Ok(mut w) => {
                tracing::info!(%worker_id, pid = w.pid, robots = ?goal.robots, "worker started");
                self.lock_journal().spawned(&worker_id, w.pid, process::start_ticks(w.pid).unwrap_or(0));
                self.with_table(|t| t.update(&worker_id, |r| r.pid = w.pid));
                feedback(&handle, &worker_id, "starting", 0, "");
                let deadline = tokio::time::sleep(timeout_d);
                tokio::pin!(deadline);
                // Armed by the final report: a worker still there after the grace is killed.
                let linger = tokio::time::sleep(Duration::from_secs(3600 * 24 * 365));
                tokio::pin!(linger);
                let mut lingering = false;
                let mut cancel_open = true;
                let mut stdout_open = true;
                loop {
                    tokio::select! {
                        line = w.reports.next_line(), if stdout_open => match line {
                            Ok(Some(line)) => match serde_json::from_str::<WorkerReport>(&line) {
                                Ok(WorkerReport::Running { .. }) => {
                                    self.with_table(|t| t.update(&worker_id, |r| r.state = State::Running));
                                    feedback(&handle, &worker_id, "running", 0, "");
                                }
                                Ok(WorkerReport::Step { step, tool }) => {
                                    shm = process::owned_shm_segments(w.pid);
                                    let tool = tool.unwrap_or_default();
                                    let (step, last) = self.with_table(|t| {
                                        let mut out = (step, String::new());
                                        t.update(&worker_id, |r| {
                                            r.step = step;
                                            if !tool.is_empty() { r.last_tool = tool.clone(); }
                                            out = (r.step, r.last_tool.clone());
                                        });
                                        out
                                    });
                                    feedback(&handle, &worker_id, "running", step, &last);
                                }
                                Ok(WorkerReport::Final { done, message }) => {
                                    shm = process::owned_shm_segments(w.pid);
                                    // Published at once: the kernel need not wait for the exit. The
                                    // task is over, so it no longer counts against max_processes
                                    // while the process winds down its ROS node.
                                    self.publish_outcome(&worker_id, done, &message, "worker");
                                    let state = if done { State::Succeeded } else { State::Failed };
                                    self.with_table(|t| t.update(&worker_id, |r| r.state = state));
                                    final_report = Some((done, message));
                                    linger.as_mut().reset(tokio::time::Instant::now() + exit_grace);
                                    lingering = true;
                                    reported_at = Some(std::time::Instant::now());
                                }
                                Err(_) => tracing::debug!(%worker_id, %line, "non-report output from worker"),
                            },
                            // stdout closed: the worker is exiting.
                            _ => stdout_open = false,
                        },
                        status = w.child.wait(), if !stdout_open => break End::Exited(status.ok()),
                        c = cancel.next(), if cancel_open => match c {
                            Some(c) => {
                                c.accept();
                                let s = process::terminate(&mut w.child, w.pid, false, grace).await;
                                break End::Cancelled(s);
                            }
                            None => cancel_open = false,
                        },
                        t = term_rx.recv() => if let Some((force, reply)) = t {
                            let s = process::terminate(&mut w.child, w.pid, force, grace).await;
                            break End::Terminated(s, reply);
                        },
                        _ = &mut linger, if lingering => {
                            lingering = false;
                            let n = self.lingered.fetch_add(1, Ordering::Relaxed) + 1;
                            tracing::warn!(%worker_id, pid = w.pid, lingered_total = n,
                                "worker still running {:.1} s after its final report: killing it", exit_grace.as_secs_f64());
                            process::signal_group(w.pid, nix::sys::signal::Signal::SIGKILL);
                        }
                        _ = &mut deadline, if final_report.is_none() => {
                            let s = process::terminate(&mut w.child, w.pid, false, grace).await;
                            break End::TimedOut(s);
                        }
                    }
                }
            }
        };

        let leaked = process::remove_shm_segments(&shm);
        if leaked > 0 {
            tracing::info!(%worker_id, segments = leaked, "removed the DDS shared memory the worker left behind");
        }

        // What happened, and whether the kernel still needs to hear about it.
        let reported = final_report.is_some();
        let cancelled = matches!(end, End::Cancelled(_));
        let (state, success, message, needs_callback) = match end {
            End::SpawnFailed(e) => (State::Failed, false, e, true),
            End::Exited(status) => match final_report.take() {
                Some((true, m)) => (State::Succeeded, true, m, false),
                Some((false, m)) => (State::Failed, false, m, false),
                None => (
                    State::Failed,
                    false,
                    format!("worker {worker_id} crashed before reporting ({})", process::describe_exit(status)),
                    true,
                ),
            },
            End::Cancelled(s) => (
                State::Terminated,
                false,
                format!("worker {worker_id} was terminated: its goal was cancelled ({})", process::describe_exit(s)),
                !reported,
            ),
            End::Terminated(s, reply) => {
                let m = format!("worker {worker_id} was terminated on request ({})", process::describe_exit(s));
                let _ = reply.send(m.clone());
                (State::Terminated, false, m, !reported)
            }
            End::TimedOut(s) => (
                State::TimedOut,
                false,
                format!("worker {worker_id} timed out after {timeout:.0} s ({})", process::describe_exit(s)),
                !reported,
            ),
        };
        match reported_at {
            // How long the process took to be gone once it had reported (bench soak reads this).
            Some(t) => tracing::info!(%worker_id, state = state.as_str(), exit_after_report_ms = format!("{:.1}", t.elapsed().as_secs_f64() * 1e3), %message, "worker ended"),
            None => tracing::info!(%worker_id, state = state.as_str(), %message, "worker ended"),
        }
        if needs_callback {
            self.publish_outcome(&worker_id, false, &message, "system");
        }
        {
            let mut s = self.shared.lock().expect("table lock");
            s.terminators.remove(&worker_id);
            s.table.finish(&worker_id, state);
        }
        self.lock_journal().ended(&worker_id, state);
        self.publish_table();
        let result = LaunchProcess::Result { worker_id: worker_id.clone(), success, message: ros_text(&message).into_owned() };
        let sent = match state {
            State::Succeeded => handle.succeed(result),
            _ if cancelled => {
                // The accepted cancel request moves the goal to CANCELING in the spin thread; only
                // from there may it become CANCELED.
                let t0 = std::time::Instant::now();
                while !handle.is_cancelling().unwrap_or(false) && t0.elapsed() < Duration::from_secs(2) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                handle.cancel(result.clone()).or_else(|e| {
                    tracing::warn!(%worker_id, error = %e, "cannot mark the goal canceled, aborting it");
                    handle.abort(result)
                })
            }
            _ => handle.abort(result),
        };
        if let Err(e) = sent {
            tracing::warn!(%worker_id, error = %e, "cannot send goal result");
        }
    }
}

/// Publish a worker's final `WorkerCallback` and its `Update` (text fit for rcl: no NUL).
fn publish_final(
    callback_pub: &Publisher<WorkerCallback>,
    update_pub: &Publisher<Update>,
    worker_id: &str,
    done: bool,
    message: &str,
    role: &str,
    stamp: r2r::builtin_interfaces::msg::Time,
) {
    let message = ros_text(message);
    let cb = WorkerCallback { worker_id: worker_id.into(), message: message.to_string(), done, final_: true, stamp: stamp.clone() };
    if let Err(e) = callback_pub.publish(&cb) {
        tracing::error!(error = %e, "cannot publish /rosa/worker_callback");
    }
    let up = Update { role: role.into(), text: message.into_owned(), worker_id: worker_id.into(), stamp };
    if let Err(e) = update_pub.publish(&up) {
        tracing::error!(error = %e, "cannot publish /rosa/updates");
    }
}

fn time_of_ns(ns: i64) -> r2r::builtin_interfaces::msg::Time {
    ros::stamp(UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0)))
}

impl Ctx {
    /// A restarted process manager ends what its journal says was running: each worker process
    /// still there is killed (they exit by themselves when their process manager dies: the
    /// lifeline), and each worker gets its one final callback — its own report if it had arrived,
    /// else `done=false` "the process manager restarted". The table shows them ended.
    async fn recover(&self, rec: Recovered) {
        {
            let mut s = self.shared.lock().expect("table lock");
            for e in &rec.ended {
                s.table.insert(Row {
                    worker_id: e.worker_id.clone(),
                    pid: 0,
                    state: e.state,
                    system_prompt: e.system_prompt.clone(),
                    robots: e.robots.clone(),
                    step: 0,
                    last_tool: String::new(),
                    started: UNIX_EPOCH + Duration::from_millis(e.started_ms),
                });
            }
        }
        if rec.live.is_empty() {
            return;
        }
        let ids: Vec<&str> = rec.live.iter().map(|r| r.worker_id.as_str()).collect();
        tracing::warn!(workers = ?ids, "the process manager restarted: ending the workers its journal says were running");
        for r in &rec.live {
            let killed = process::kill_orphan(r.pid, r.start_ticks, Duration::from_secs(2)).await;
            if killed {
                tracing::warn!(worker_id = %r.worker_id, pid = r.pid, "a worker of the previous process manager was still running: killed");
            }
            let state = match &r.report {
                Some(rep) => {
                    if !rep.published {
                        publish_final(&self.callback_pub, &self.update_pub, &r.worker_id, rep.done, &rep.message, "worker", time_of_ns(rep.stamp_ns));
                        self.lock_journal().published(&r.worker_id);
                    }
                    if rep.done { State::Succeeded } else { State::Failed }
                }
                None => {
                    let message = format!(
                        "worker {} ended: the process manager restarted while it ran (it had started {}); its outcome is unknown",
                        r.worker_id,
                        if r.pid > 0 { format!("as pid {}", r.pid) } else { "no process yet".to_string() }
                    );
                    self.publish_outcome(&r.worker_id, false, &message, "system");
                    State::Failed
                }
            };
            {
                let mut s = self.shared.lock().expect("table lock");
                s.table.insert(Row {
                    worker_id: r.worker_id.clone(),
                    pid: 0,
                    state: State::Starting,
                    system_prompt: r.system_prompt.clone(),
                    robots: r.robots.clone(),
                    step: 0,
                    last_tool: String::new(),
                    started: UNIX_EPOCH + Duration::from_millis(r.started_ms),
                });
                s.table.finish(&r.worker_id, state);
            }
            self.lock_journal().ended(&r.worker_id, state);
        }
        self.publish_table();
    }
}

fn feedback(handle: &ActionServerGoal<LaunchProcess::Action>, worker_id: &str, state: &str, step: u32, tool: &str) {
    let fb = LaunchProcess::Feedback { worker_id: worker_id.into(), state: state.into(), step, last_tool: ros_name(tool).into_owned() };
    if let Err(e) = handle.publish_feedback(fb) {
        tracing::debug!(error = %e, "feedback");
    }
}


/// How long `warm_prefix` waits for the robot's MCP server.
const WARM_WAIT: Duration = Duration::from_secs(120);

pub async fn run() -> anyhow::Result<()> {
    let ctx = r2r::Context::create()?;
    let mut node = Node::create(ctx, "process_manager", "/rosa")?;
    let declared = ros::declare_params::<ProcessManagerParams>(&mut node)?;
    ros::attach_rosout(&mut node);
    let params = declared.current();

    let registry_path = config::resolve_config_path(&params.robots_file);
    let registry = Registry::load(&registry_path).unwrap_or_else(|e| {
        tracing::error!(error = %e, "no robots registry: every goal naming a robot will be rejected");
        Registry::default()
    });
    let rules = config::read_text(&config::resolve_config_path(&params.worker_prompt_file))?;
    let worker_exe = if params.worker_executable.is_empty() {
        std::env::current_exe()?.with_file_name("worker")
    } else {
        PathBuf::from(&params.worker_executable)
    };
    if !worker_exe.exists() {
        anyhow::bail!("worker executable {} does not exist (parameter worker_executable)", worker_exe.display());
    }

    // The action's goal/cancel/result services keep 1000 requests (patches/r2r/0201), as do these.
    let depth = clamped_size(params.request_depth, 10, 100_000);
    let mut goals = node.create_action_server::<LaunchProcess::Action>("/rosa/launch_process")?;
    let mut lists = node.create_service::<ListProcesses::Service>("/rosa/list_processes", ros::service_qos(depth))?;
    let mut terms = node.create_service::<TerminateProcess::Service>("/rosa/terminate_process", ros::service_qos(depth))?;
    let table_pub = node.create_publisher::<ProcessTableMsg>("/rosa/processes", ros::latched())?;
    let callback_pub = node.create_publisher::<WorkerCallback>("/rosa/worker_callback", ros::recent(CALLBACK_HISTORY))?;
    let update_pub = node.create_publisher::<Update>("/rosa/updates", ros::recent(50))?;

    let journal_path = crate::journal::state_dir(&params.journal_dir).join("process_manager.journal");
    let (journal, recovered) = ProcessJournal::open(&journal_path, params.journal_sync, clamped_size(params.keep_ended, 0, 100_000))
        .map_err(|e| anyhow::Error::new(crate::ConfigurationError(format!("the process table's journal: {e}"))))?;
    let spinner = Spinner::start(node, Duration::from_millis(10));

    let ctx = Ctx {
        shared: Arc::new(Mutex::new(Shared {
            table: ProcessTable::new(clamped_size(params.max_processes, 0, 100_000), clamped_size(params.keep_ended, 0, 100_000)),
            terminators: HashMap::new(),
        })),
        table_pub,
        callback_pub,
        update_pub,
        params: declared.watch(),
        registry: Arc::new(registry),
        rules: Arc::new(rules),
        worker_exe: Arc::new(worker_exe),
        pool: Arc::new(Mutex::new(Default::default())),
        journal: Arc::new(Mutex::new(journal)),
        lingered: Arc::new(AtomicU64::new(0)),
    };
    ctx.recover(recovered).await;
    ctx.publish_table();
    ctx.refill_pool();
    if params.warm_prefix {
        tokio::spawn(ctx.clone().warm_worker_prefix());
    }
    {
        let ctx = ctx.clone();
        declared.on_change(move |p| ctx.apply_params(p));
    }

    {
        let ctx = ctx.clone();
        // Paced: an action client receives the goal responses meant for every client, so a burst
        // of rejections would push a caller's own answer out of its reader (crate::pacer).
        let mut pacer = crate::pacer::Pacer::for_responses();
        tokio::spawn(async move {
            while let Some(req) = goals.next().await {
                let wait = pacer.reserve();
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                ctx.on_goal_request(req);
            }
        });
    }
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut pacer = crate::pacer::Pacer::for_responses();
            while let Some(req) = lists.next().await {
                let wait = pacer.reserve();
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                let resp = {
                    let s = ctx.shared.lock().expect("table lock");
                    ListProcesses::Response {
                        max_processes: input::saturating_u32(s.table.max_processes as u64),
                        processes: s.table.rows_in_order(req.message.include_ended).into_iter().map(|r| info(r, req.message.full_system_prompts)).collect(),
                    }
                };
                if let Err(e) = req.respond(resp) {
                    tracing::warn!(error = %e, "cannot answer /rosa/list_processes");
                }
            }
        });
    }
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            while let Some(req) = terms.next().await {
                let id = req.message.worker_id.trim().to_string();
                let sender = ctx.shared.lock().expect("table lock").terminators.get(&id).cloned();
                let Some(sender) = sender else {
                    let _ = req.respond(TerminateProcess::Response { ok: false, message: ros_text(&format!("no running process `{}`", input::summary(&id, 100))).into_owned() });
                    continue;
                };
                let (tx, rx) = oneshot::channel();
                if sender.send((req.message.force, tx)).await.is_err() {
                    let _ = req.respond(TerminateProcess::Response { ok: false, message: format!("process `{id}` has already ended") });
                    continue;
                }
                tokio::spawn(async move {
                    let resp = match rx.await {
                        Ok(m) => TerminateProcess::Response { ok: true, message: ros_text(&m).into_owned() },
                        Err(_) => TerminateProcess::Response { ok: false, message: format!("process `{id}` ended on its own") },
                    };
                    let _ = req.respond(resp);
                });
            }
        });
    }

    tracing::info!(max_processes = params.max_processes, worker = %ctx.worker_exe.display(), journal = %journal_path.display(), "process manager ready");
    ros::shutdown_signal().await;
    tracing::info!("process manager shutting down: terminating workers");
    let senders: Vec<_> = ctx.shared.lock().expect("table lock").terminators.values().cloned().collect();
    let mut waits = Vec::new();
    for s in senders {
        let (tx, rx) = oneshot::channel();
        if s.send((false, tx)).await.is_ok() {
            waits.push(rx);
        }
    }
    let _ = tokio::time::timeout(clamped_seconds(ctx.params.borrow().grace_sec, 0.0, 3600.0) + Duration::from_secs(2), futures::future::join_all(waits)).await;
    // Warm workers get EOF on stdin and exit; kill_on_drop makes sure of it.
    ctx.pool.lock().expect("pool lock").clear();
    spinner.stop();
    Ok(())
}
