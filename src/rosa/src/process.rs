//! Processes: the process table, the worker protocol, and spawning/terminating worker OS processes.
//!
//! A worker is started as its own process group, given its [`WorkerSpec`] as one JSON document on
//! stdin, and reports progress as JSON lines ([`WorkerReport`]) on stdout; its logs go to stderr.
//! Termination escalates SIGTERM → SIGKILL after a grace period, and the child is always reaped.

use crate::config::LlmConfig;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Everything a worker needs, sent on its stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub worker_id: String,
    /// The system prompt: worker rules and robot prompts (the same for every task on these robots).
    pub system_prompt: String,
    /// The task (the kernel's `system_prompt` of the goal): the worker's first user message.
    #[serde(default)]
    pub task: String,
    /// `tool_choice` of the worker's steps (`auto`, or `required`: one call per step).
    #[serde(default)]
    pub tool_choice: crate::llm::ToolChoice,
    /// The first step must call a tool (see [`crate::agent::AgentOptions::act_first`]).
    #[serde(default)]
    pub act_first: bool,
    /// (robot name, MCP URL)
    pub robots: Vec<(String, String)>,
    pub max_steps: u32,
    pub tool_timeout_sec: f64,
    pub llm: LlmConfig,
    /// Bearer tokens for the robots' MCP servers that need one (rosa's own, see `mcp_server`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub robot_tokens: Vec<RobotToken>,
}

/// The bearer token a worker sends to one robot's MCP server (never printed by `Debug`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct RobotToken {
    pub robot: String,
    pub token: String,
}

impl std::fmt::Debug for RobotToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RobotToken").field("robot", &self.robot).field("token", &"(redacted)").finish()
    }
}

/// A worker's progress, one JSON line each on its stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerReport {
    /// Connected to its robots; about to call the model.
    Running { tools: Vec<String> },
    /// Agent step `step`; `tool` set once a tool was called in it.
    Step { step: u32, tool: Option<String> },
    /// The outcome, sent (and published as a WorkerCallback) just before exiting.
    Final { done: bool, message: String },
}

impl WorkerReport {
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The id of the worker for an action goal: "w" + the first 8 hex digits of the goal UUID.
pub fn worker_id_for_goal(uuid: &[u8]) -> String {
    let hex: String = uuid.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("w{hex}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Starting,
    Running,
    Succeeded,
    Failed,
    Terminated,
    TimedOut,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Terminated => "terminated",
            State::TimedOut => "timed_out",
        }
    }
    pub fn is_live(self) -> bool {
        matches!(self, State::Starting | State::Running)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub worker_id: String,
    pub pid: i32,
    pub state: State,
    pub system_prompt: String,
    pub robots: Vec<String>,
    pub step: u32,
    pub last_tool: String,
    pub started: SystemTime,
}

/// The process table: live rows plus the most recent ended ones.
#[derive(Debug, Clone)]
pub struct ProcessTable {
    pub max_processes: usize,
    keep_ended: usize,
    rows: Vec<Row>,
}

impl ProcessTable {
    pub fn new(max_processes: usize, keep_ended: usize) -> Self {
        Self { max_processes, keep_ended, rows: Vec::new() }
    }

    /// New limits (parameters set at run time): running processes are kept; ended rows beyond
    /// `keep_ended` go when the next process ends.
    pub fn set_limits(&mut self, max_processes: usize, keep_ended: usize) {
        self.max_processes = max_processes;
        self.keep_ended = keep_ended;
    }

    pub fn live_count(&self) -> usize {
        self.rows.iter().filter(|r| r.state.is_live()).count()
    }

    /// May one more process start? Otherwise the reason.
    pub fn admit(&self) -> Result<(), String> {
        let live = self.live_count();
        if live >= self.max_processes {
            Err(format!("{live} processes are running, the limit is max_processes={}", self.max_processes))
        } else {
            Ok(())
        }
    }

    pub fn insert(&mut self, row: Row) {
        self.rows.retain(|r| r.worker_id != row.worker_id);
        self.rows.push(row);
    }

    pub fn get(&self, worker_id: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.worker_id == worker_id)
    }

    /// Change a row; returns false when there is no such row.
    pub fn update(&mut self, worker_id: &str, f: impl FnOnce(&mut Row)) -> bool {
        match self.rows.iter_mut().find(|r| r.worker_id == worker_id) {
            Some(r) => {
                f(r);
                true
            }
            None => false,
        }
    }

    /// Mark a row ended and forget the oldest ended rows beyond `keep_ended`.
    pub fn finish(&mut self, worker_id: &str, state: State) {
        self.update(worker_id, |r| {
            r.state = state;
            r.pid = 0;
        });
        let ended: Vec<String> = self.rows.iter().filter(|r| !r.state.is_live()).map(|r| r.worker_id.clone()).collect();
        if ended.len() > self.keep_ended {
            let drop: Vec<String> = ended[..ended.len() - self.keep_ended].to_vec();
            self.rows.retain(|r| !drop.contains(&r.worker_id));
        }
    }

    /// [`Self::snapshot`] without copying the rows (their prompts may be megabytes).
    pub fn rows_in_order(&self, include_ended: bool) -> Vec<&Row> {
        let live = self.rows.iter().filter(|r| r.state.is_live());
        let ended = self.rows.iter().filter(|r| include_ended && !r.state.is_live());
        live.chain(ended).collect()
    }

    /// Live rows first (oldest first), then ended ones (most recent last).
    pub fn snapshot(&self, include_ended: bool) -> Vec<Row> {
        let mut out: Vec<Row> = self.rows.iter().filter(|r| r.state.is_live()).cloned().collect();
        if include_ended {
            out.extend(self.rows.iter().filter(|r| !r.state.is_live()).cloned());
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    #[error("cannot start worker {exe}: {source}")]
    Start { exe: String, source: std::io::Error },
    #[error("cannot hand the spec to worker: {0}")]
    Spec(std::io::Error),
}

/// A running worker OS process.
pub struct WorkerProcess {
    pub child: Child,
    pub pid: i32,
    pub reports: Lines<BufReader<ChildStdout>>,
    /// The write end of the worker's stdin, kept open and never written after the spec: the worker
    /// exits when it reads end-of-file, i.e. when this process manager dies, however it dies.
    pub lifeline: ChildStdin,
}

/// A started worker waiting for its spec (the warm pool): it has already paid for exec, dynamic
/// linking and runtime start-up.
pub struct IdleWorker {
    child: Child,
    pid: i32,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl IdleWorker {
    /// Still alive (not crashed while waiting)?
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Hand the worker its spec (one JSON line; stdin then stays open as its lifeline): it starts at once.
    pub async fn assign(mut self, spec: &WorkerSpec) -> Result<WorkerProcess, SpawnError> {
        let mut doc = serde_json::to_vec(spec).map_err(|e| SpawnError::Spec(e.into()))?;
        doc.push(b'\n');
        if let Err(e) = self.stdin.write_all(&doc).await {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
            return Err(SpawnError::Spec(e));
        }
        if let Err(e) = self.stdin.flush().await {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
            return Err(SpawnError::Spec(e));
        }
        Ok(WorkerProcess { child: self.child, pid: self.pid, reports: BufReader::new(self.stdout).lines(), lifeline: self.stdin })
    }
}

/// Start `exe` as a process-group leader with `args`, its spec to come on stdin.
/// The discovery settings (`ROS_DOMAIN_ID`, `ROS_AUTOMATIC_DISCOVERY_RANGE`, `ROS_LOCALHOST_ONLY`)
/// are passed on explicitly.
pub fn spawn_idle(exe: &Path, args: &[String]) -> Result<IdleWorker, SpawnError> {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true);
    // The parent's DDS sockets are not close-on-exec: a worker inheriting them would swallow
    // datagrams meant for the process manager. Mark every descriptor above stdio close-on-exec
    // (closing them here would also close the pipe std uses to report a failed exec).
    // SAFETY: close_range is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC);
            Ok(())
        });
    }
    for var in ["ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY", "RMW_IMPLEMENTATION"] {
        if let Ok(v) = std::env::var(var) {
            cmd.env(var, v);
        }
    }
    let mut child = cmd.spawn().map_err(|source| SpawnError::Start { exe: exe.display().to_string(), source })?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    Ok(IdleWorker { child, pid, stdin, stdout })
}

/// Start a worker and hand it `spec`.
pub async fn spawn_worker(exe: &Path, args: &[String], spec: &WorkerSpec) -> Result<WorkerProcess, SpawnError> {
    spawn_idle(exe, args)?.assign(spec).await
}

/// A process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22): with the pid,
/// what identifies a process across a restart of this node (pids are recycled).
pub fn start_ticks(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Is the process `pid` still the one that started at `ticks` (and not a zombie)?
pub fn is_same_process(pid: i32, ticks: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let zombie = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()) == Some("Z");
    !zombie && start_ticks(pid) == Some(ticks)
}

/// End a worker of an earlier run of this process manager (not our child: it cannot be reaped
/// here): SIGKILL to its process group if it is still that process, then wait up to `wait` for it
/// to be gone. Returns whether it was still running.
pub async fn kill_orphan(pid: i32, ticks: u64, wait: Duration) -> bool {
    if pid <= 0 || !is_same_process(pid, ticks) {
        return false;
    }
    signal_group(pid, Signal::SIGKILL);
    let t0 = std::time::Instant::now();
    while is_same_process(pid, ticks) && t0.elapsed() < wait {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// The Fast DDS shared-memory segments process `pid` owns: `/dev/shm/fastrtps_<id>` whose lock
/// file `fastrtps_<id>_el` it holds open (a process maps the segments of the writers it reads from
/// too, but only opens its own segments' lock files). A participant removes its segment when it
/// is deleted; one that is killed, or exits without deleting it (a worker past its exit bound),
/// leaves it in /dev/shm (RAM) for good: ~0.5 MB each.
pub fn owned_shm_segments(pid: i32) -> Vec<PathBuf> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let mut out = Vec::new();
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else { continue };
        let Some(name) = target.strip_prefix("/dev/shm").ok().and_then(|n| n.to_str()) else { continue };
        let Some(id) = name.strip_prefix("fastrtps_").and_then(|n| n.strip_suffix("_el")) else { continue };
        // Segments have hex ids; ports (fastrtps_port<N>) belong to a port number and are reused.
        if !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            out.push(PathBuf::from(format!("/dev/shm/fastrtps_{id}")));
        }
    }
    out
}

/// Remove shared-memory segments (and their lock files) of a process that is gone; returns how
/// many were still there.
pub fn remove_shm_segments(segments: &[PathBuf]) -> usize {
    let mut removed = 0;
    for seg in segments {
        if std::fs::remove_file(seg).is_ok() {
            removed += 1;
        }
        let mut lock = seg.clone().into_os_string();
        lock.push("_el");
        let _ = std::fs::remove_file(PathBuf::from(lock));
    }
    removed
}

/// Signal the worker's whole process group.
pub fn signal_group(pid: i32, signal: Signal) {
    if pid > 0 {
        if let Err(e) = killpg(Pid::from_raw(pid), signal) {
            tracing::debug!(pid, ?signal, error = %e, "killpg");
        }
    }
}

/// Stop a worker: SIGTERM (unless `force`), then SIGKILL after `grace`; always reaps it.
pub async fn terminate(child: &mut Child, pid: i32, force: bool, grace: Duration) -> Option<ExitStatus> {
    if !force {
        signal_group(pid, Signal::SIGTERM);
        if let Ok(Ok(status)) = tokio::time::timeout(grace, child.wait()).await {
            return Some(status);
        }
        tracing::warn!(pid, "worker ignored SIGTERM for {:.1} s, killing it", grace.as_secs_f64());
    }
    signal_group(pid, Signal::SIGKILL);
    child.wait().await.ok()
}

/// A readable exit description, e.g. "exit code 3" or "killed by SIGKILL".
pub fn describe_exit(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        None => "unknown exit status".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(sig) => format!("killed by {sig}"),
                Err(_) => format!("killed by signal {sig}"),
            },
            _ => "unknown exit status".into(),
        },
    }
}

/// Run `task`; if it panics (or is aborted), call `on_failure` with why. For the process
/// manager's goal tasks: whatever happens inside one, its goal still ends and its slot is freed.
pub fn spawn_supervised<F>(task: F, on_failure: impl FnOnce(String) + Send + 'static) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let inner = tokio::spawn(task);
    tokio::spawn(async move {
        if let Err(e) = inner.await {
            let why = if e.is_panic() {
                let p = e.into_panic();
                p.downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .map(|m| format!("panicked: {m}"))
                    .unwrap_or_else(|| "panicked".into())
            } else {
                e.to_string()
            };
            on_failure(why);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> Row {
        Row {
            worker_id: id.into(),
            pid: 1,
            state: State::Running,
            system_prompt: "t".into(),
            robots: vec![],
            step: 0,
            last_tool: String::new(),
            started: SystemTime::now(),
        }
    }

    #[test]
    fn worker_ids_come_from_the_goal_uuid() {
        assert_eq!(worker_id_for_goal(&[0xde, 0xad, 0xbe, 0xef, 1, 2]), "wdeadbeef");
    }

    #[test]
    fn admission_follows_the_limit_and_ended_rows_are_bounded() {
        let mut t = ProcessTable::new(2, 3);
        t.insert(row("a"));
        t.insert(row("b"));
        assert!(t.admit().unwrap_err().contains("max_processes=2"));
        t.finish("a", State::Succeeded);
        assert!(t.admit().is_ok());
        for i in 0..10 {
            let id = format!("x{i}");
            t.insert(row(&id));
            t.finish(&id, State::Failed);
        }
        assert_eq!(t.snapshot(true).len(), 4, "1 live + 3 ended");
        assert_eq!(t.rows_in_order(true).into_iter().cloned().collect::<Vec<_>>(), t.snapshot(true));
        assert_eq!(t.rows_in_order(false).len(), 1);
        assert_eq!(t.snapshot(false).len(), 1);
        assert_eq!(t.snapshot(true).last().unwrap().worker_id, "x9");
        assert_eq!(t.get("x9").unwrap().pid, 0);
    }

    #[test]
    fn reports_round_trip_as_json_lines() {
        let r = WorkerReport::Final { done: true, message: "ok".into() };
        let line = r.to_line();
        assert_eq!(line, r#"{"event":"final","done":true,"message":"ok"}"#);
        assert_eq!(serde_json::from_str::<WorkerReport>(&line).unwrap(), r);
    }

    fn spec() -> WorkerSpec {
        WorkerSpec {
            worker_id: "w1".into(),
            system_prompt: "s".into(),
            task: "t".into(),
            tool_choice: Default::default(),
            act_first: false,
            robots: vec![],
            max_steps: 1,
            tool_timeout_sec: 1.0,
            llm: LlmConfig::default(),
            robot_tokens: vec![],
        }
    }

    #[tokio::test]
    async fn spawn_reads_reports_and_terminate_escalates_to_sigkill() {
        // A "worker" that echoes its spec's id, then ignores SIGTERM.
        let script = r#"trap '' TERM; read spec; echo "{\"event\":\"running\",\"tools\":[]}"; sleep 30"#;
        let mut w = spawn_worker(Path::new("/bin/sh"), &["-c".into(), script.into()], &spec()).await.unwrap();
        let line = w.reports.next_line().await.unwrap().unwrap();
        assert_eq!(serde_json::from_str::<WorkerReport>(&line).unwrap(), WorkerReport::Running { tools: vec![] });
        let t0 = std::time::Instant::now();
        let status = terminate(&mut w.child, w.pid, false, Duration::from_millis(300)).await;
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert_eq!(describe_exit(status), "killed by SIGKILL");
    }

    #[tokio::test]
    async fn sigterm_is_enough_for_a_cooperative_worker() {
        let mut w = spawn_worker(Path::new("/bin/sh"), &["-c".into(), "read spec; exec sleep 30".into()], &spec()).await.unwrap();
        let status = terminate(&mut w.child, w.pid, false, Duration::from_secs(5)).await;
        assert_eq!(describe_exit(status), "killed by SIGTERM");
    }

    #[tokio::test]
    async fn an_idle_worker_waits_for_its_spec() {
        // `head -c 1` exits as soon as the spec's first byte arrives.
        let mut idle = spawn_idle(Path::new("/usr/bin/head"), &["-c".into(), "1".into()]).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(idle.is_alive(), "it waits for stdin");
        let mut w = idle.assign(&spec()).await.unwrap();
        assert_eq!(w.reports.next_line().await.unwrap().as_deref(), Some("{"));
        assert!(w.child.wait().await.unwrap().success());
    }

    #[tokio::test]
    async fn a_worker_sees_end_of_file_on_its_lifeline_when_the_manager_lets_go() {
        // `read spec; cat` echoes what comes after the spec on stdin until end-of-file.
        let mut w = spawn_worker(Path::new("/bin/sh"), &["-c".into(), "read spec; cat; echo eof".into()], &spec()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(w.child.try_wait().unwrap().is_none(), "it waits on its lifeline");
        drop(w.lifeline);
        assert_eq!(w.reports.next_line().await.unwrap().as_deref(), Some("eof"));
        assert!(w.child.wait().await.unwrap().success());
    }

    #[tokio::test]
    async fn processes_are_identified_by_pid_and_start_time() {
        let me = std::process::id() as i32;
        let ticks = start_ticks(me).unwrap();
        assert!(is_same_process(me, ticks));
        assert!(!is_same_process(me, ticks + 1));
        assert_eq!(start_ticks(0), None);
        let mut child = tokio::process::Command::new("/bin/sleep").arg("30").process_group(0).spawn().unwrap();
        let pid = child.id().unwrap() as i32;
        let t = start_ticks(pid).unwrap();
        let reaper = tokio::spawn(async move { child.wait().await });
        assert!(kill_orphan(pid, t, Duration::from_secs(2)).await);
        let status = reaper.await.unwrap().unwrap();
        assert_eq!(describe_exit(Some(status)), "killed by SIGKILL");
        assert!(!kill_orphan(pid, t, Duration::from_secs(1)).await, "gone: nothing to do");
    }

    #[test]
    fn owned_shared_memory_segments_are_found_by_their_lock_files() {
        let id = format!("{:016x}", std::process::id() as u64 * 7919);
        let seg = PathBuf::from(format!("/dev/shm/fastrtps_{id}"));
        let lock = PathBuf::from(format!("/dev/shm/fastrtps_{id}_el"));
        let port = PathBuf::from("/dev/shm/fastrtps_port99999_el");
        std::fs::write(&seg, b"segment").unwrap();
        let held = std::fs::File::create(&lock).unwrap();
        let port_held = std::fs::File::create(&port).unwrap();
        let mine = owned_shm_segments(std::process::id() as i32);
        assert!(mine.contains(&seg), "{mine:?}");
        assert!(!mine.iter().any(|p| p.to_string_lossy().contains("port")), "ports are not segments: {mine:?}");
        drop((held, port_held));
        assert_eq!(remove_shm_segments(&[seg.clone()]), 1);
        assert!(!seg.exists() && !lock.exists());
        let _ = std::fs::remove_file(&port);
        assert_eq!(remove_shm_segments(&[seg]), 0, "already gone");
    }

    #[tokio::test]
    async fn a_task_that_panics_is_reported() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let h = spawn_supervised(async { panic!("a NUL in a C string") }, move |why| {
            let _ = tx.send(why);
        });
        h.await.unwrap();
        assert_eq!(rx.await.unwrap(), "panicked: a NUL in a C string");
        let (tx, mut rx) = tokio::sync::oneshot::channel::<String>();
        spawn_supervised(async {}, move |why| {
            let _ = tx.send(why);
        })
        .await
        .unwrap();
        assert!(rx.try_recv().is_err(), "no failure, no report");
    }

    #[tokio::test]
    async fn a_missing_executable_is_a_clear_error() {
        let err = spawn_worker(Path::new("/nonexistent/worker"), &[], &spec()).await.err().unwrap();
        assert!(err.to_string().contains("/nonexistent/worker"));
    }
}
