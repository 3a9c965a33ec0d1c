//! The `kernel` node: ROS endpoints around [`crate::kernel::Kernel`].

use crate::agent::{Agent, Memory};
use crate::config::{self, LlmConfig};
use crate::input::{self, clamped_size, ros_text};
use crate::kernel::{Event, Kernel, KernelOutput, KernelStatus, KernelTools, Limits, ProcessControl, ProcessRow, Source};
use crate::kernel_queue::{callback_key, KernelQueue, Refusal};
use crate::llm::{ChatModel, ChatRequest, Completion, LlmError, OpenAiChat};
use crate::process::worker_id_for_goal;
use crate::robots::{self, Registry, Robot};
use crate::ros::{self, Spinner};
use futures::StreamExt;
use r2r::rosa_interfaces::action::LaunchProcess;
use r2r::rosa_interfaces::msg::{KernelEvent, RobotEvent, Transcript, Update, WorkerCallback};
use r2r::rosa_interfaces::srv::{Chat, ListProcesses, TerminateProcess};
use r2r::{ActionClient, Client, Node, Publisher, QosProfile};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Parameters of the kernel node (see `config/rosa.yaml`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct KernelParams {
    /// The kernel's LLM providers.
    pub llm: LlmConfig,
    /// Robots registry (YAML or drivers.json); relative paths are looked up in share/rosa/config.
    pub robots_file: String,
    /// Kernel prompt template; `{robots}` is replaced by the reachable robots.
    pub prompt_file: String,
    /// Events waiting beyond this are refused (and the refusal is published on /rosa/updates).
    #[schemars(range(min = 1, max = 100000))]
    pub queue_size: u64,
    /// Conversation memory budget, in (estimated) tokens.
    #[schemars(range(min = 100, max = 10000000))]
    pub memory_tokens: u64,
    /// LLM calls per event at most.
    #[schemars(range(min = 1, max = 1000))]
    pub max_steps: u32,
    /// How often robot reachability is re-checked, seconds.
    #[schemars(range(min = 0.5, max = 86400.0))]
    pub reachability_period_sec: f64,
    /// How long to wait for the process manager to accept or answer, seconds.
    #[schemars(range(min = 0.1, max = 3600.0))]
    pub process_manager_timeout_sec: f64,
    /// Where the journal of the event queue goes ("" = $ROSA_DATA_DIR/state/domain<ROS_DOMAIN_ID>).
    pub journal_dir: String,
    /// Sync each accepted event to disk before it is queued (survives a power cut, ~4 ms a burst).
    pub journal_sync: bool,
    /// History depth of the intake (/rosa/command, /rosa/stt/transcript, /rosa/chat requests):
    /// what may arrive at once before the kernel takes it (a burst); each is then queued or refused.
    #[schemars(range(min = 10, max = 100000))]
    pub intake_depth: u64,
    /// History of the kernel's /rosa/updates (its answers and notices): what a transient-local late
    /// joiner gets, and what a reliable reader that falls behind in a burst can still be resent (DDS
    /// repairs a lost sample only from the writer's history: at 100, one answer of a 5,000-command
    /// burst was lost on a loaded machine). Refusals have a writer of their own, as deep as `intake_depth`.
    #[schemars(range(min = 1, max = 10000))]
    pub updates_history: u64,
    /// One event (every LLM call, retry and tool call for it) gets this long at most, seconds;
    /// then the kernel says it could not handle it and goes on with the next (0 = no limit).
    #[schemars(range(min = 0.0, max = 86400.0))]
    pub event_deadline_sec: f64,
    /// While idle, send the LLM the prompt prefix of the next event (system prompt, tools, memory)
    /// with `max_tokens` 1: at start and when the reachable robots change. For a local model with a
    /// prompt cache (`./rosa up` sets it for the embedded one): the first event then pays only for
    /// its own tokens. Off for remote providers, which would bill the prefix.
    pub warm_prefix: bool,
}

impl crate::params::NodeParams for KernelParams {
    // The queue (its journal, its bound), the intake's depths, the prompt and the registry are set
    // up once.
    const DYNAMIC: &'static [&'static str] =
        &["llm.", "memory_tokens", "max_steps", "reachability_period_sec", "process_manager_timeout_sec", "event_deadline_sec"];

    fn check(&self) -> Result<(), String> {
        check_llm("llm", &self.llm)
    }
}

/// `event_deadline_sec` as a deadline (0 = none; at most a day).
fn event_deadline(sec: f64) -> Option<Duration> {
    (sec.is_finite() && sec > 0.0).then(|| crate::input::clamped_seconds(sec, 0.1, 86_400.0))
}

/// `llm.*` must name at least one provider.
pub fn check_llm(prefix: &str, llm: &LlmConfig) -> Result<(), String> {
    if llm.providers().is_empty() {
        return Err(format!("{prefix}.urls names no provider (give at least one OpenAI-compatible base URL)"));
    }
    Ok(())
}

/// The LLM client, replaced when `llm.*` is set: the event in progress finishes with the client it
/// started with, the next one uses the new providers.
struct Providers(std::sync::RwLock<Arc<OpenAiChat>>);

impl Providers {
    fn current(&self) -> Arc<OpenAiChat> {
        match self.0.read() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn replace(&self, model: OpenAiChat) {
        let model = Arc::new(model);
        match self.0.write() {
            Ok(mut m) => *m = model.clone(),
            Err(p) => *p.into_inner() = model.clone(),
        }
        tokio::spawn(probe(model));
    }
}

#[async_trait::async_trait]
impl ChatModel for Providers {
    async fn complete(&self, request: ChatRequest<'_>) -> Result<Completion, LlmError> {
        self.current().complete(request).await
    }
}

async fn probe(model: Arc<OpenAiChat>) {
    match model.probe().await {
        Some(p) => tracing::info!(url = %p.url, model = %p.model, "LLM provider"),
        None => tracing::warn!("no LLM provider answered GET /models; calls will try each in order"),
    }
}

impl Default for KernelParams {
    fn default() -> Self {
        Self {
            llm: LlmConfig::default(),
            robots_file: "robots.yaml".into(),
            prompt_file: "prompts/kernel.txt".into(),
            queue_size: 64,
            memory_tokens: 12_000,
            max_steps: 8,
            reachability_period_sec: 10.0,
            process_manager_timeout_sec: 10.0,
            journal_dir: String::new(),
            journal_sync: true,
            intake_depth: 5000,
            updates_history: 1000,
            event_deadline_sec: 120.0,
            warm_prefix: false,
        }
    }
}

/// Callbacks the kernel can get back from the process manager's history after a restart (the
/// process manager keeps as many: `nodes::process_manager::CALLBACK_HISTORY`).
const CALLBACK_HISTORY: usize = 100;
// The kernel queue's deduplication window must outlast the history it may be replayed.
const _: () = assert!(crate::kernel_queue::KEYS_KEPT >= 10 * CALLBACK_HISTORY);
/// How long a launch waits for its answer before it asks whether the worker exists after all.
const LAUNCH_ANSWER_WAIT: Duration = Duration::from_secs(2);
/// How long a refusal stays in its writer's history (for subscribers behind in a burst, late joiners).
const REFUSAL_LIFESPAN: Duration = Duration::from_secs(30);

/// r2r publishers are `Send` but not `Sync`: each sits behind a mutex.
struct RosOutput {
    events: std::sync::Mutex<Publisher<KernelEvent>>,
    updates: std::sync::Mutex<Publisher<Update>>,
}

impl KernelOutput for RosOutput {
    fn event(&self, seq: u64, source: Source, text: &str, received: SystemTime) {
        let msg = KernelEvent { seq, source: source.as_str().into(), text: ros_text(text).into_owned(), stamp: ros::stamp(received) };
        if let Err(e) = self.events.lock().expect("publisher lock").publish(&msg) {
            tracing::error!(error = %e, "cannot publish /rosa/events");
        }
    }
    fn update(&self, role: &str, text: &str) {
        tracing::info!(role, "says: {text}");
        publish_update(&self.updates.lock().expect("publisher lock"), role, text);
    }
}

fn publish_update(p: &Publisher<Update>, role: &str, text: &str) {
    let msg = Update { role: role.into(), text: ros_text(text).into_owned(), worker_id: String::new(), stamp: ros::now() };
    if let Err(e) = p.publish(&msg) {
        tracing::error!(error = %e, "cannot publish /rosa/updates");
    }
}

/// The process manager through its action and services.
struct RosProcesses {
    launch: ActionClient<LaunchProcess::Action>,
    list: Client<ListProcesses::Service>,
    terminate: Client<TerminateProcess::Service>,
    server_seen: Arc<AtomicBool>,
    params: watch::Receiver<KernelParams>,
}

impl RosProcesses {
    /// `process_manager_timeout_sec` now (its range keeps it a valid duration).
    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.params.borrow().process_manager_timeout_sec.clamp(0.1, 3600.0))
    }

    /// Wait until `endpoint` (the action or a service of the process manager) is matched. Checked
    /// before every request: a restarted process manager is a new server, and a request sent
    /// before it is matched is lost (measured: a launch 1 s after a restart got no answer). When
    /// it is matched this resolves at the next spin of the node (within 10 ms).
    async fn wait_for<F>(&self, available: r2r::Result<F>, name: &str) -> Result<(), String>
    where
        F: std::future::Future<Output = r2r::Result<()>>,
    {
        let fut = available.map_err(|e| e.to_string())?;
        let wait = if self.server_seen.load(Ordering::Relaxed) { self.timeout() } else { self.timeout().max(Duration::from_secs(10)) };
        match tokio::time::timeout(wait, fut).await {
            Ok(Ok(())) => {
                self.server_seen.store(true, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(format!("the process manager ({name}) is not available after {:.0} s", wait.as_secs_f64())),
        }
    }

    /// Is `worker_id` in the process manager's table (running or ended)?
    async fn has_worker(&self, worker_id: &str) -> bool {
        if self.wait_for(Node::is_available(&self.list), "/rosa/list_processes").await.is_err() {
            return false;
        }
        let req = ListProcesses::Request { include_ended: true, full_system_prompts: false };
        match self.request(self.list.request(&req)).await {
            Ok(t) => t.processes.iter().any(|p| p.worker_id == worker_id),
            Err(_) => false,
        }
    }

    async fn request<S, F>(&self, fut: Result<F, r2r::Error>) -> Result<S, String>
    where
        F: std::future::Future<Output = Result<S, r2r::Error>>,
    {
        let fut = fut.map_err(|e| e.to_string())?;
        match tokio::time::timeout(self.timeout(), fut).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("the process manager did not answer within {:.0} s", self.timeout().as_secs_f64())),
        }
    }
}

#[async_trait::async_trait]
impl ProcessControl for RosProcesses {
    async fn launch(&self, system_prompt: String, robots: Vec<String>) -> Result<String, String> {
        self.wait_for(Node::is_available(&self.launch), "/rosa/launch_process").await?;
        let goal = LaunchProcess::Goal { system_prompt, robots, max_steps: 0, timeout_sec: 0.0 };
        // The goal id is ours, so the worker can be found if the answer is lost (patches/r2r/0202).
        let uuid = r2r::uuid::Uuid::new_v4();
        let worker_id = worker_id_for_goal(uuid.as_bytes());
        let sent = self.launch.send_goal_request_with_uuid(uuid, goal.clone()).map_err(|e| e.to_string())?;
        tokio::pin!(sent);
        let first = self.timeout().min(LAUNCH_ANSWER_WAIT);
        let accepted = match tokio::time::timeout(first, &mut sent).await {
            Ok(r) => r,
            Err(_) => {
                // A process manager that has just (re)started may answer before it has matched
                // our reader: the answer is then lost, while the worker runs. Ask its table.
                if self.has_worker(&worker_id).await {
                    tracing::warn!(%worker_id, "the answer to launch_process was lost, but the process manager has the worker");
                    return Ok(worker_id);
                }
                // Or the request was written before it had matched our writer (a volatile writer
                // does not send it again): send it again, same goal id. A process manager that
                // has it after all rejects the copy as a duplicate (and the table says so).
                tracing::warn!(%worker_id, "no answer to launch_process within {:.0} s: sending the goal again", first.as_secs_f64());
                let again = self.launch.send_goal_request_with_uuid(uuid, goal).map_err(|e| e.to_string())?;
                tokio::pin!(again);
                let either = futures::future::select(sent.as_mut(), again.as_mut());
                match tokio::time::timeout(self.timeout().saturating_sub(first), either).await {
                    Ok(futures::future::Either::Left((r, _)) | futures::future::Either::Right((r, _))) => r,
                    Err(_) if self.has_worker(&worker_id).await => return Ok(worker_id),
                    Err(_) => return Err(format!("the process manager did not answer within {:.0} s", self.timeout().as_secs_f64())),
                }
            }
        };
        match accepted {
            Ok((handle, result, feedback)) => {
                // The outcome comes back as a WorkerCallback event: neither the feedback nor the
                // result is awaited (a goal whose process manager restarts never gets a result,
                // and nothing may wait for it forever). Dropping them frees r2r's per-goal state.
                drop((result, feedback));
                Ok(worker_id_for_goal(handle.uuid.as_bytes()))
            }
            Err(r2r::Error::RCL_RET_ACTION_GOAL_REJECTED) if self.has_worker(&worker_id).await => {
                // The copy of a goal sent again was rejected as a duplicate: the first one is running.
                Ok(worker_id)
            }
            Err(r2r::Error::RCL_RET_ACTION_GOAL_REJECTED) => {
                let req = ListProcesses::Request { include_ended: false, full_system_prompts: false };
                Err(match self.request(self.list.request(&req)).await {
                    Ok(t) if t.processes.len() >= t.max_processes as usize => format!(
                        "rejected by the process manager: {} of at most {} processes are running; wait for one to finish or terminate one",
                        t.processes.len(),
                        t.max_processes
                    ),
                    _ => "rejected by the process manager (see its log for the reason)".to_string(),
                })
            }
            Err(e) => Err(e.to_string()),
        }
    }

    async fn list(&self) -> Result<Vec<ProcessRow>, String> {
        self.wait_for(Node::is_available(&self.list), "/rosa/list_processes").await?;
        let req = ListProcesses::Request { include_ended: true, full_system_prompts: false };
        let resp = self.request(self.list.request(&req)).await?;
        Ok(resp
            .processes
            .into_iter()
            .map(|p| ProcessRow {
                worker_id: p.worker_id,
                state: p.state,
                system_prompt: p.system_prompt,
                robots: p.robots,
                step: p.step,
                last_tool: p.last_tool,
            })
            .collect())
    }

    async fn terminate(&self, worker_id: String, force: bool) -> Result<String, String> {
        self.wait_for(Node::is_available(&self.terminate), "/rosa/terminate_process").await?;
        let req = TerminateProcess::Request { worker_id, force };
        let resp = self.request(self.terminate.request(&req)).await?;
        if resp.ok {
            Ok(resp.message)
        } else {
            Err(resp.message)
        }
    }
}

/// Keep the reachable robots in `tx`, re-checking every `reachability_period_sec`.
async fn watch_robots(all: Vec<Robot>, tx: watch::Sender<Vec<Robot>>, mut params: watch::Receiver<KernelParams>) {
    loop {
        let period = Duration::from_secs_f64(params.borrow_and_update().reachability_period_sec.clamp(0.5, 86400.0));
        let mut up = Vec::new();
        for r in &all {
            if robots::reachable(&r.url, Duration::from_millis(500)).await {
                up.push(r.clone());
            }
        }
        if *tx.borrow() != up {
            let names: Vec<&str> = up.iter().map(|r| r.name.as_str()).collect();
            let down: Vec<&str> = all.iter().filter(|r| !up.contains(r)).map(|r| r.name.as_str()).collect();
            tracing::info!(reachable = ?names, unreachable = ?down, "robots");
            tx.send_replace(up);
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {},
            _ = params.changed() => {},
        }
    }
}

fn refuse(updates: &Publisher<Update>, event: &Event, why: &str) {
    let text = format!("refused {}: {why}", crate::llm::truncate(&event.text, 200));
    tracing::warn!("{text}");
    publish_update(updates, "system", &text);
}

/// A user's text (`what`: "command", "transcript", "chat prompt") that is empty, only whitespace or
/// not valid UTF-8 is refused out loud on /rosa/updates and never reaches the LLM.
fn accept_user_text(updates: &Publisher<Update>, what: &str, text: String) -> Option<String> {
    match input::user_text_refusal(what, &text) {
        None => Some(text),
        Some(why) => {
            let text = format!("refused a {what}: {why}");
            tracing::warn!("{text}");
            publish_update(updates, "system", &text);
            None
        }
    }
}

/// The longest run of events handed to the queue in one journal write (a burst).
const INTAKE_BATCH: usize = 512;

/// A `/rosa/chat` call waiting for the kernel's answer.
type ChatCall = (r2r::ServiceRequest<Chat::Service>, tokio::sync::oneshot::Receiver<Result<String, String>>);

/// An event from the intake, with its deduplication key and, for a chat call, where to answer.
struct Intake {
    event: Event,
    key: Option<String>,
    chat: Option<ChatCall>,
}

type SharedPacer = Arc<std::sync::Mutex<crate::pacer::Pacer>>;

/// Answer a chat call, paced: every client of the service receives every response (rmw_fastrtps),
/// so a burst of answers would push some callers' own answers out of their readers (`pacer`).
async fn answer_chat(pacer: &SharedPacer, req: r2r::ServiceRequest<Chat::Service>, resp: Chat::Response) {
    crate::pacer::paced(pacer).await;
    if let Err(e) = req.respond(resp) {
        tracing::error!(error = %e, "cannot answer /rosa/chat");
    }
}

/// Hand a batch of arrivals to the queue (one journal write); say out loud what is refused, and
/// what is queued while the kernel is busy with an event (waiting on the LLM): the user hears that
/// it was received.
fn offer(queue: &KernelQueue, updates: &Publisher<Update>, pacer: &SharedPacer, status: &KernelStatus, batch: Vec<Intake>) {
    let busy = status.busy();
    let mut chats = Vec::with_capacity(batch.len());
    let mut events = Vec::with_capacity(batch.len());
    let mut first_note = None;
    for Intake { event, key, chat } in batch {
        if let (Some((seq, dt)), None) = (busy, &first_note) {
            first_note = Some(crate::kernel::queued_note(&event, seq, dt));
        }
        events.push((event, key));
        chats.push(chat);
    }
    let mut queued = 0usize;
    for (outcome, chat) in queue.push_batch(events).into_iter().zip(chats) {
        let (event, why) = match outcome {
            Ok(()) => {
                queued += 1;
                if let Some((req, reply)) = chat {
                    let pacer = pacer.clone();
                    tokio::spawn(async move {
                        let resp = match reply.await {
                            Ok(Ok(text)) => Chat::Response { success: true, reply: ros_text(&text).into_owned() },
                            Ok(Err(e)) => Chat::Response { success: false, reply: ros_text(&e).into_owned() },
                            Err(_) => Chat::Response { success: false, reply: "the kernel stopped".into() },
                        };
                        answer_chat(&pacer, req, resp).await;
                    });
                }
                continue;
            }
            Err(Refusal::Duplicate(key)) => {
                tracing::debug!(%key, "worker callback already accepted: not handled again");
                continue;
            }
            Err(Refusal::Full(e, why)) => (e, why),
            Err(Refusal::Closed(e)) => (e, "the kernel is stopping".to_string()),
        };
        refuse(updates, &event, &why);
        if let Some((req, _)) = chat {
            let pacer = pacer.clone();
            tokio::spawn(async move { answer_chat(&pacer, req, Chat::Response { success: false, reply: ros_text(&why).into_owned() }).await });
        }
    }
    // One note per burst, not one per event.
    if let (Some(note), Some((seq, _))) = (first_note, busy) {
        let note = match queued {
            0 => return,
            1 => note,
            n => format!("queued {n} events: the kernel is still on event {seq}; they come next, in order"),
        };
        tracing::info!("{note}");
        publish_update(updates, "system", &note);
    }
}

/// Feed `stream` to the queue, a burst at a time (whatever has arrived is journaled in one write).
fn forward<S>(stream: S, queue: Arc<KernelQueue>, updates: Publisher<Update>, pacer: SharedPacer, status: KernelStatus) -> tokio::task::JoinHandle<()>
where
    S: futures::Stream<Item = Intake> + Send + Unpin + 'static,
{
    tokio::spawn(stream.ready_chunks(INTAKE_BATCH).for_each(move |batch| {
        offer(&queue, &updates, &pacer, &status, batch);
        futures::future::ready(())
    }))
}

fn stamp_ns(t: &r2r::builtin_interfaces::msg::Time) -> i64 {
    i64::from(t.sec) * 1_000_000_000 + i64::from(t.nanosec)
}

/// The kernel's trigger tools, forwarded to the mcp_bridge's endpoint of the robot (one short MCP
/// session per call).
struct McpTriggers {
    http: reqwest::Client,
    timeout: Duration,
}

#[async_trait::async_trait]
impl crate::kernel::RobotTriggers for McpTriggers {
    async fn call(&self, robot: &crate::robots::Robot, tool: &str, args: serde_json::Map<String, serde_json::Value>) -> crate::agent::ToolOutput {
        let servers = [(robot.name.clone(), robot.url.clone())];
        match crate::mcp_tools::McpToolBox::connect(&servers, &[], self.timeout, &self.http).await {
            Ok(tb) => {
                let out = crate::agent::ToolBox::call(&tb, tool, args).await;
                tb.close().await;
                out
            }
            Err(e) => crate::agent::ToolOutput::error(format!("{e} (is the mcp_bridge running?)")),
        }
    }
}

pub async fn run() -> anyhow::Result<()> {
    let ctx = r2r::Context::create()?;
    let mut node = Node::create(ctx, "kernel", "/rosa")?;
    let declared = ros::declare_params::<KernelParams>(&mut node)?;
    ros::attach_rosout(&mut node);
    let params = declared.current();

    let template_path = config::resolve_config_path(&params.prompt_file);
    let template = config::read_text(&template_path)?;
    let registry_path = config::resolve_config_path(&params.robots_file);
    let registry = match Registry::load(&registry_path) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "no robots registry: the kernel will have no robots");
            Registry::default()
        }
    };

    // The intake holds a burst in DDS's history and in r2r's channel (sized from the same depth,
    // patches/r2r/0200) until the forwarders below take it: each event is then queued or refused.
    let depth = clamped_size(params.intake_depth, 10, 100_000);
    let commands = node.subscribe::<r2r::std_msgs::msg::String>("/rosa/command", ros::reliable(depth))?;
    let transcripts = node.subscribe::<Transcript>("/rosa/stt/transcript", ros::reliable(depth))?;
    // Transient-local: a restarted kernel gets the callbacks published while it was down from the
    // process manager's history; those it had already accepted are dropped by key.
    let callbacks = node.subscribe::<WorkerCallback>("/rosa/worker_callback", ros::recent(CALLBACK_HISTORY))?;
    let chats = node.create_service::<Chat::Service>("/rosa/chat", ros::service_qos(depth))?;
    // Robot events (the mcp_bridge's triggers) are queued like the others.
    let robot_events = node.subscribe::<RobotEvent>("/rosa/robot_events", ros::reliable(depth))?;
    let events = node.create_publisher::<KernelEvent>("/rosa/events", ros::recent(100))?;
    let updates = node.create_publisher::<Update>("/rosa/updates", ros::recent(clamped_size(params.updates_history, 1, 10_000)))?;
    // Refusals have a writer of their own on /rosa/updates: a burst of commands is a burst of
    // refusals, which a subscriber that falls behind gets back from this writer's history (as deep
    // as the intake; measured: with 1000, a subscriber lost ~100 of a 5000 burst, with 5000 none).
    // Each is kept REFUSAL_LIFESPAN, so the history is empty again once a burst is over.
    let refusals = node.create_publisher::<Update>("/rosa/updates", ros::burst(depth, REFUSAL_LIFESPAN))?;
    let processes = RosProcesses {
        launch: node.create_action_client::<LaunchProcess::Action>("/rosa/launch_process")?,
        list: node.create_client::<ListProcesses::Service>("/rosa/list_processes", QosProfile::services_default())?,
        terminate: node.create_client::<TerminateProcess::Service>("/rosa/terminate_process", QosProfile::services_default())?,
        server_seen: Arc::new(AtomicBool::new(false)),
        params: declared.watch(),
    };

    // The durable queue: replay the journal of the previous run (if any) before taking anything.
    let journal = crate::journal::state_dir(&params.journal_dir).join("kernel.journal");
    let (queue, recovery) = KernelQueue::open(&journal, clamped_size(params.queue_size, 1, 100_000), params.journal_sync, clamped_size(params.memory_tokens, 100, 10_000_000))
        .map_err(|e| anyhow::Error::new(crate::ConfigurationError(format!("the kernel's event queue: {e}"))))?;
    let queue = Arc::new(queue);
    let started_at = SystemTime::now();
    let fresh = !recovery.restarted;
    let spinner = Spinner::start(node, Duration::from_millis(10));

    let first = Arc::new(OpenAiChat::new(&params.llm)?.with_client_id("kernel"));
    tokio::spawn(probe(first.clone()));
    let model = Arc::new(Providers(std::sync::RwLock::new(first)));
    let limits = |p: &KernelParams| Limits {
        max_steps: p.max_steps,
        memory_tokens: p.memory_tokens as usize,
        event_deadline: event_deadline(p.event_deadline_sec),
    };
    let (limits_tx, limits_rx) = watch::channel(limits(&params));
    {
        let (model, llm) = (model.clone(), std::sync::Mutex::new(params.llm.clone()));
        declared.on_change(move |p| {
            limits_tx.send_if_modified(|l| {
                let new = limits(p);
                let changed = *l != new;
                *l = new;
                changed
            });
            let Ok(mut llm) = llm.lock() else { return };
            if serde_json::to_value(&*llm).ok() != serde_json::to_value(&p.llm).ok() {
                match OpenAiChat::new(&p.llm).map(|m| m.with_client_id("kernel")) {
                    Ok(m) => {
                        model.replace(m);
                        *llm = p.llm.clone();
                    }
                    Err(e) => tracing::error!("the new llm.* parameters cannot be used, keeping the previous providers: {e}"),
                }
            }
        });
    }

    let (robots_tx, robots_rx) = watch::channel(Vec::new());
    tokio::spawn(watch_robots(registry.robots.clone(), robots_tx, declared.watch()));

    let pacer: SharedPacer = Arc::new(std::sync::Mutex::new(crate::pacer::Pacer::for_responses()));
    let status = KernelStatus::default();
    let plain = |event| Intake { event, key: None, chat: None };
    let (u1, u2) = (refusals.clone(), refusals.clone());
    forward(
        commands.filter_map(move |m| futures::future::ready(accept_user_text(&u1, "command", m.data).map(|t| plain(Event::command(&t))))),
        queue.clone(),
        refusals.clone(),
        pacer.clone(),
        status.clone(),
    );
    forward(
        transcripts.filter_map(move |m| futures::future::ready(accept_user_text(&u2, "transcript", m.text).map(|t| plain(Event::transcript(&t))))),
        queue.clone(),
        refusals.clone(),
        pacer.clone(),
        status.clone(),
    );
    let callbacks = callbacks.filter_map(move |m| {
        // A first start (no journal) does not take up callbacks of an earlier session that the
        // process manager still holds in its history: nobody here asked for them.
        let stale = fresh && SystemTime::UNIX_EPOCH + Duration::from_nanos(stamp_ns(&m.stamp).max(0) as u64) < started_at;
        if stale {
            tracing::debug!(worker_id = %m.worker_id, "ignoring a worker callback from before this kernel's first start");
        }
        let key = callback_key(&m.worker_id, m.final_, stamp_ns(&m.stamp), &m.message);
        futures::future::ready((!stale).then(|| Intake { event: Event::worker_callback(&m.worker_id, &m.message, m.done), key: Some(key), chat: None }))
    });
    forward(Box::pin(callbacks), queue.clone(), refusals.clone(), pacer.clone(), status.clone());
    let robot_events = robot_events.map(|m| Intake { event: Event::robot_event(&m.robot, &m.topic, &m.trigger_id, &m.message, &m.sample), key: None, chat: None });
    forward(Box::pin(robot_events), queue.clone(), refusals.clone(), pacer.clone(), status.clone());
    let (u3, p3) = (refusals.clone(), pacer.clone());
    let chats = chats.filter_map(move |req| {
        // An empty, blank or invalid UTF-8 prompt is refused at once (out loud), never queued.
        let refused = input::user_text_refusal("chat prompt", &req.message.prompt);
        futures::future::ready(match refused {
            Some(why) => {
                let _ = accept_user_text(&u3, "chat prompt", req.message.prompt.clone());
                let p3 = p3.clone();
                tokio::spawn(async move { answer_chat(&p3, req, Chat::Response { success: false, reply: ros_text(&why).into_owned() }).await });
                None
            }
            None => {
                let (event, reply) = Event::chat(&req.message.prompt);
                Some(Intake { event, key: None, chat: Some((req, reply)) })
            }
        })
    });
    forward(Box::pin(chats), queue.clone(), refusals, pacer, status.clone());

    let triggers: Arc<dyn crate::kernel::RobotTriggers> = Arc::new(McpTriggers {
        http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?,
        timeout: Duration::from_secs(15),
    });
    let tools = KernelTools { processes: Arc::new(processes), robots: robots_rx, triggers: Some(triggers) };
    let options = crate::kernel::agent_options(params.max_steps, event_deadline(params.event_deadline_sec));
    let mut agent = Agent::new(model, Memory::new("", params.memory_tokens as usize), options);
    agent.memory.restore(recovery.memory.clone());
    let mut kernel = Kernel::new(agent, tools, template).with_limits(limits_rx).with_warm_prefix(params.warm_prefix);
    kernel.resume_seq(recovery.seq);
    if let Some(text) = recovery.announcement() {
        tracing::warn!(journal = %journal.display(), "{text}");
        publish_update(&updates, "system", &text);
    }
    let out: Arc<dyn KernelOutput> = Arc::new(RosOutput { events: events.into(), updates: updates.into() });
    tracing::info!(registry = %registry_path.display(), robots = ?registry.names(), journal = %journal.display(), "kernel ready");

    tokio::select! {
        _ = kernel.run(queue.clone(), out, status) => {},
        _ = ros::shutdown_signal() => tracing::info!("kernel shutting down"),
    }
    // What is still queued stays in the journal for the next start.
    queue.close();
    spinner.stop();
    Ok(())
}
