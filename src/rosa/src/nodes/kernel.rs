//! The `kernel` node: ROS endpoints around [`crate::kernel::Kernel`].

use crate::agent::{Agent, Memory};
use crate::config::{self, LlmConfig};
use crate::input::{self, clamped_size, ros_text};
use crate::kernel::{Event, EventQueue, Kernel, KernelOutput, KernelTools, Limits, ProcessControl, ProcessRow, Source};
use crate::llm::{ChatModel, Completion, LlmError, Message, OpenAiChat, ToolSpec};
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
}

impl crate::params::NodeParams for KernelParams {
    // The queue, the prompt and the registry are set up once; queue_size is the bound of the
    // queue's channel.
    const DYNAMIC: &'static [&'static str] =
        &["llm.", "memory_tokens", "max_steps", "reachability_period_sec", "process_manager_timeout_sec"];

    fn check(&self) -> Result<(), String> {
        check_llm("llm", &self.llm)
    }
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
    async fn complete(&self, messages: &[Message], tools: &[ToolSpec]) -> Result<Completion, LlmError> {
        self.current().complete(messages, tools).await
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
        }
    }
}

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

    async fn wait_for_server(&self) -> Result<(), String> {
        if self.server_seen.load(Ordering::Relaxed) {
            return Ok(());
        }
        let fut = Node::is_available(&self.launch).map_err(|e| e.to_string())?;
        match tokio::time::timeout(self.timeout(), fut).await {
            Ok(Ok(())) => {
                self.server_seen.store(true, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(format!("the process manager (/rosa/launch_process) is not available after {:.0} s", self.timeout().as_secs_f64())),
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
        self.wait_for_server().await?;
        let goal = LaunchProcess::Goal { system_prompt, robots, max_steps: 0, timeout_sec: 0.0 };
        let sent = self.launch.send_goal_request(goal).map_err(|e| e.to_string())?;
        let accepted = match tokio::time::timeout(self.timeout(), sent).await {
            Ok(r) => r,
            Err(_) => return Err(format!("the process manager did not answer within {:.0} s", self.timeout().as_secs_f64())),
        };
        match accepted {
            Ok((handle, result, mut feedback)) => {
                let id = worker_id_for_goal(handle.uuid.as_bytes());
                // Drain feedback and the result: the outcome comes back as a WorkerCallback event.
                let wid = id.clone();
                tokio::spawn(async move {
                    let drain = async { while feedback.next().await.is_some() {} };
                    let (_, r) = tokio::join!(drain, result);
                    tracing::debug!(worker_id = %wid, result = ?r.map(|(s, r)| (s, r.success)), "goal finished");
                });
                Ok(id)
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

    let commands = node.subscribe::<r2r::std_msgs::msg::String>("/rosa/command", ros::reliable(100))?;
    let transcripts = node.subscribe::<Transcript>("/rosa/stt/transcript", ros::reliable(100))?;
    let callbacks = node.subscribe::<WorkerCallback>("/rosa/worker_callback", ros::reliable(100))?;
    let robot_events = node.subscribe::<RobotEvent>("/rosa/robot_events", ros::reliable(100))?;
    let mut chats = node.create_service::<Chat::Service>("/rosa/chat", QosProfile::services_default())?;
    let events = node.create_publisher::<KernelEvent>("/rosa/events", ros::recent(100))?;
    let updates = node.create_publisher::<Update>("/rosa/updates", ros::recent(50))?;
    let processes = RosProcesses {
        launch: node.create_action_client::<LaunchProcess::Action>("/rosa/launch_process")?,
        list: node.create_client::<ListProcesses::Service>("/rosa/list_processes", QosProfile::services_default())?,
        terminate: node.create_client::<TerminateProcess::Service>("/rosa/terminate_process", QosProfile::services_default())?,
        server_seen: Arc::new(AtomicBool::new(false)),
        params: declared.watch(),
    };
    let spinner = Spinner::start(node, Duration::from_millis(10));

    let first = Arc::new(OpenAiChat::new(&params.llm)?);
    tokio::spawn(probe(first.clone()));
    let model = Arc::new(Providers(std::sync::RwLock::new(first)));
    let limits = |p: &KernelParams| Limits { max_steps: p.max_steps, memory_tokens: p.memory_tokens as usize };
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
                match OpenAiChat::new(&p.llm) {
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

    let (queue, rx) = EventQueue::new(clamped_size(params.queue_size, 1, 100_000));
    let forward = |stream: futures::stream::BoxStream<'static, Event>| {
        let queue = queue.clone();
        let updates = updates.clone();
        tokio::spawn(stream.for_each(move |e| {
            if let Err((e, why)) = queue.push(e) {
                refuse(&updates, &e, &why);
            }
            futures::future::ready(())
        }))
    };
    let (u1, u2) = (updates.clone(), updates.clone());
    forward(commands.filter_map(move |m| futures::future::ready(accept_user_text(&u1, "command", m.data))).map(|t| Event::command(&t)).boxed());
    forward(transcripts.filter_map(move |m| futures::future::ready(accept_user_text(&u2, "transcript", m.text))).map(|t| Event::transcript(&t)).boxed());
    forward(callbacks.map(|m| Event::worker_callback(&m.worker_id, &m.message, m.done)).boxed());
    forward(robot_events.map(|m| Event::robot_event(&m.robot, &m.topic, &m.trigger_id, &m.message, &m.sample)).boxed());
    {
        let queue = queue.clone();
        let updates = updates.clone();
        tokio::spawn(async move {
            while let Some(req) = chats.next().await {
                if let Some(why) = input::user_text_refusal("chat prompt", &req.message.prompt) {
                    let _ = accept_user_text(&updates, "chat prompt", req.message.prompt.clone());
                    let _ = req.respond(Chat::Response { success: false, reply: ros_text(&why).into_owned() });
                    continue;
                }
                let (event, reply) = Event::chat(&req.message.prompt);
                if let Err((e, why)) = queue.push(event) {
                    refuse(&updates, &e, &why);
                    let _ = req.respond(Chat::Response { success: false, reply: why });
                    continue;
                }
                tokio::spawn(async move {
                    let resp = match reply.await {
                        Ok(Ok(text)) => Chat::Response { success: true, reply: ros_text(&text).into_owned() },
                        Ok(Err(e)) => Chat::Response { success: false, reply: ros_text(&e).into_owned() },
                        Err(_) => Chat::Response { success: false, reply: "the kernel stopped".into() },
                    };
                    if let Err(e) = req.respond(resp) {
                        tracing::warn!(error = %e, "cannot answer /rosa/chat");
                    }
                });
            }
        });
    }

    let triggers: Arc<dyn crate::kernel::RobotTriggers> = Arc::new(McpTriggers {
        http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?,
        timeout: Duration::from_secs(15),
    });
    let tools = KernelTools { processes: Arc::new(processes), robots: robots_rx, triggers: Some(triggers) };
    let agent = Agent::new(model, Memory::new("", params.memory_tokens as usize), params.max_steps);
    let kernel = Kernel::new(agent, tools, template).with_limits(limits_rx);
    let out: Arc<dyn KernelOutput> = Arc::new(RosOutput { events: events.into(), updates: updates.into() });
    tracing::info!(registry = %registry_path.display(), robots = ?registry.names(), "kernel ready");

    tokio::select! {
        _ = kernel.run(rx, out) => {},
        _ = ros::shutdown_signal() => tracing::info!("kernel shutting down"),
    }
    spinner.stop();
    Ok(())
}
