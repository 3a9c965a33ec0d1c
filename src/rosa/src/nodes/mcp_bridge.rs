//! The `mcp_bridge` node: other ROS robots on the graph as MCP tools, one streamable-HTTP endpoint
//! per bridged robot (`http://127.0.0.1:5002/<robot>/mcp`), each confined to the robot's scope
//! (`ros:` section of the robots registry, see [`crate::bridge::scope`]).
//!
//! Everything ROS goes through the dynamic-message layer ([`crate::dynmsg`]): any installed type,
//! found on every prefix of `AMENT_PREFIX_PATH`. The bridge's own interfaces: `/rosa/bridge/audit`
//! (AuditEntry, plus a JSON-lines file), `/rosa/bridge/approval_requests` (ApprovalRequest,
//! transient-local) and the service `/rosa/bridge/decide_approval` (DecideApproval), and
//! `/rosa/robot_events` (RobotEvent) for triggers.
//!
//! Sessions: each MCP session gets its own handler ([`RobotTools`]) holding a [`Session`]; when
//! the session ends (client's DELETE, idle timeout, the worker killed) the session is dropped and
//! whatever it left moving is stopped: goals it started are cancelled and the robot's configured
//! stop commands are published on the topics it published to.

use crate::bridge::scope::{Access, Kind, Scope};
use crate::bridge::{cap, Caps, Condition};
use crate::dynmsg::{json as djson, DynActionClient, DynNode, DynPublisher, GoalStatus, Graph, MessageValue, Registry, SubscribeOptions, Value};
use crate::input::clamped_seconds;
use crate::mcp_server::{Endpoint, Guard, McpAccess, Sessions};
use crate::ros;
use crate::ConfigurationError;
use r2r::rosa_interfaces::msg::{ApprovalRequest, AuditEntry, RobotEvent};
use r2r::rosa_interfaces::srv::DecideApproval;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, RequestMetaObject, ServerCapabilities, ServerConfig};
use rmcp::{tool, tool_handler, tool_router, ErrorData as McpError, Peer, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{broadcast, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// Parameters of the mcp_bridge node (see `config/rosa.yaml`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct BridgeParams {
    /// The robots registry; the robots with a `ros:` section are served.
    pub robots_file: String,
    /// The MCP server's address: bind beyond loopback only on purpose.
    pub bind: String,
    /// The MCP server's port (0 = any free port; the log says which).
    #[schemars(range(min = 0, max = 65535))]
    pub port: u64,
    /// Who may call the MCP server: `require_token`, `token_file`, `allowed_origins`.
    #[serde(flatten)]
    pub mcp_access: McpAccess,
    /// The data dir (token file, audit file; "" = $ROSA_DATA_DIR, else ~/.local/share/rosa).
    pub data_dir: String,
    /// The audit file, JSON lines ("" = <data_dir>/mcp_bridge_audit.jsonl).
    pub audit_file: String,
    /// Default timeout of reads, service calls and parameter calls, seconds.
    #[schemars(range(min = 0.1, max = 3600.0))]
    pub timeout_sec: f64,
    /// Longest timeout or duration a caller may ask for, seconds.
    #[schemars(range(min = 1.0, max = 86400.0))]
    pub max_timeout_sec: f64,
    /// A name given without a type is looked for on the graph this long (discovery of a robot
    /// that just appeared), seconds.
    #[schemars(range(min = 0.0, max = 60.0))]
    pub graph_wait_sec: f64,
    /// A new publisher waits this long for the topic's subscribers before its first message.
    #[schemars(range(min = 0.0, max = 60.0))]
    pub publish_wait_sec: f64,
    /// Messages one read_topic returns at most.
    #[schemars(range(min = 1, max = 10000))]
    pub max_read_count: u64,
    /// Highest publishing rate of a sequence, Hz.
    #[schemars(range(min = 0.1, max = 1000.0))]
    pub max_rate_hz: f64,
    /// A reply's JSON text at most, bytes (larger messages are capped; the counts are said).
    #[schemars(range(min = 256, max = 10000000))]
    pub max_reply_bytes: u64,
    /// Items of an array kept in a reply.
    #[schemars(range(min = 1, max = 100000))]
    pub max_array_items: u64,
    /// Characters of a string kept in a reply.
    #[schemars(range(min = 16, max = 10000000))]
    pub max_string_chars: u64,
    /// Images are scaled down to at most this many pixels on their longer side.
    #[schemars(range(min = 16, max = 4096))]
    pub image_max_side: u64,
    /// A session without requests for this long is ended (and what it left moving stopped), seconds.
    #[schemars(range(min = 1.0, max = 86400.0))]
    pub session_idle_sec: f64,
    /// Triggers at most (all robots).
    #[schemars(range(min = 0, max = 1000))]
    pub max_triggers: u64,
    /// A trigger fires at most once per this many seconds (a trigger may ask for more).
    #[schemars(range(min = 0.0, max = 86400.0))]
    pub trigger_min_interval_sec: f64,
}

impl crate::params::NodeParams for BridgeParams {
    const DYNAMIC: &'static [&'static str] = &[];
}

impl Default for BridgeParams {
    fn default() -> Self {
        Self {
            robots_file: "robots.yaml".into(),
            bind: "127.0.0.1".into(),
            port: crate::bridge::DEFAULT_PORT as u64,
            mcp_access: McpAccess::default(),
            data_dir: String::new(),
            audit_file: String::new(),
            timeout_sec: 5.0,
            max_timeout_sec: 3600.0,
            graph_wait_sec: 2.0,
            publish_wait_sec: 1.0,
            max_read_count: 100,
            max_rate_hz: 100.0,
            max_reply_bytes: 20_000,
            max_array_items: 32,
            max_string_chars: 2000,
            image_max_side: 320,
            session_idle_sec: 300.0,
            max_triggers: 32,
            trigger_min_interval_sec: 1.0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------------------------

/// Everything the robots' endpoints share: the node, caches, audit, approvals, triggers.
pub struct Bridge {
    dn: DynNode,
    p: BridgeParams,
    caps: Caps,
    publishers: tokio::sync::Mutex<HashMap<(String, String), DynPublisher>>,
    actions: tokio::sync::Mutex<HashMap<(String, String), DynActionClient>>,
    // r2r publishers are Send, not Sync: each behind a mutex.
    audit_pub: Mutex<r2r::Publisher<AuditEntry>>,
    audit_file: Option<Mutex<std::fs::File>>,
    approval_pub: Mutex<r2r::Publisher<ApprovalRequest>>,
    pending: Mutex<HashMap<String, oneshot::Sender<(bool, String)>>>,
    events_pub: Mutex<r2r::Publisher<RobotEvent>>,
    triggers: Mutex<HashMap<String, TriggerInfo>>,
    counter: AtomicU64,
    rt: tokio::runtime::Handle,
}

struct TriggerInfo {
    robot: String,
    topic: String,
    condition: String,
    message: String,
    fired: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

fn now_stamp() -> r2r::builtin_interfaces::msg::Time {
    ros::stamp(SystemTime::now())
}

fn text(s: &str) -> String {
    crate::input::ros_text(s).into_owned()
}

impl Bridge {
    fn timeout(&self, asked: Option<f64>) -> Duration {
        clamped_seconds(asked.unwrap_or(self.p.timeout_sec), 0.01, self.p.max_timeout_sec)
    }

    fn next_id(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let r = crate::mcp_server::new_token().unwrap_or_default();
        format!("{prefix}{n}-{}", &r[..8.min(r.len())])
    }

    fn capped(&self, v: &Json) -> (String, Vec<String>) {
        let c = cap(v, self.caps);
        (serde_json::to_string_pretty(&c.json).unwrap_or_default(), c.notes)
    }

    /// One mutating call, on the audit topic and in the audit file.
    fn audit(&self, robot: &str, session: &str, tool: &str, name: &str, args: &Json, ok: bool, outcome: &str) {
        let args = cap(args, Caps { max_bytes: 4000, ..self.caps }).json.to_string();
        let outcome = crate::input::summary(outcome, 4000).into_owned();
        let stamp = SystemTime::now();
        let entry = AuditEntry {
            stamp: ros::stamp(stamp),
            robot: text(robot),
            session: text(session),
            tool: tool.into(),
            name: text(name),
            arguments: text(&args),
            ok,
            outcome: text(&outcome),
        };
        if let Err(e) = self.audit_pub.lock().unwrap_or_else(|e| e.into_inner()).publish(&entry) {
            tracing::warn!("cannot publish /rosa/bridge/audit: {e}");
        }
        if let Some(f) = &self.audit_file {
            let t = stamp.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            let line = json!({"time": t, "robot": robot, "session": session, "tool": tool, "name": name, "arguments": args, "ok": ok, "outcome": outcome});
            let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = writeln!(f, "{line}") {
                tracing::warn!("cannot write the audit file: {e}");
            }
        }
        tracing::info!(robot, session, tool, name, ok, "audit: {}", crate::input::summary(&outcome, 300));
    }

    /// Wait for a human decision on a mutating call (ApprovalRequest on
    /// /rosa/bridge/approval_requests, answered through /rosa/bridge/decide_approval).
    async fn approval(&self, scope: &Scope, session: &str, tool: &str, name: &str, args: &Json) -> Result<(), String> {
        let id = self.next_id("a");
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), tx);
        let mut req = ApprovalRequest {
            id: id.clone(),
            robot: text(&scope.robot),
            session: text(session),
            tool: tool.into(),
            name: text(name),
            arguments: text(&cap(args, Caps { max_bytes: 4000, ..self.caps }).json.to_string()),
            timeout_sec: scope.approval_timeout_sec,
            state: ApprovalRequest::PENDING as u8,
            stamp: now_stamp(),
        };
        if let Err(e) = self.approval_pub.lock().unwrap_or_else(|e| e.into_inner()).publish(&req) {
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(format!("cannot ask for approval: {e}"));
        }
        tracing::info!(id, robot = %scope.robot, tool, name, "waiting for approval");
        let timeout = clamped_seconds(scope.approval_timeout_sec, 0.01, 86_400.0);
        let decision = tokio::time::timeout(timeout, rx).await;
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        let (state, result) = match decision {
            Ok(Ok((true, _))) => (ApprovalRequest::APPROVED as u8, Ok(())),
            Ok(Ok((false, reason))) => (
                ApprovalRequest::DENIED as u8,
                Err(format!("a human denied this {tool} on {name} (approval {id}){}", if reason.is_empty() { String::new() } else { format!(": {reason}") })),
            ),
            _ => (
                ApprovalRequest::TIMED_OUT as u8,
                Err(format!("no approval for this {tool} on {name} within {:.0} s (approval {id}): denied", timeout.as_secs_f64())),
            ),
        };
        req.state = state;
        req.stamp = now_stamp();
        let _ = self.approval_pub.lock().unwrap_or_else(|e| e.into_inner()).publish(&req);
        result
    }

    fn decide(&self, id: &str, approve: bool, reason: &str) -> (bool, String) {
        match self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(id) {
            Some(tx) => {
                let _ = tx.send((approve, reason.to_string()));
                (true, format!("{} {id}", if approve { "approved" } else { "denied" }))
            }
            None => (false, format!("no pending approval request {id} (unknown, decided or timed out)")),
        }
    }

    /// A publisher (cached per topic and type); a new one waits for the topic's subscribers.
    async fn publisher(&self, topic: &str, type_name: &str) -> Result<DynPublisher, String> {
        let key = (topic.to_string(), type_name.to_string());
        let mut map = self.publishers.lock().await;
        if let Some(p) = map.get(&key) {
            return Ok(p.clone());
        }
        let p = self.dn.publisher(topic, type_name, None).await.map_err(|e| e.to_string())?;
        p.wait_for_subscribers(clamped_seconds(self.p.publish_wait_sec, 0.0, 60.0)).await;
        map.insert(key, p.clone());
        Ok(p)
    }

    async fn action_client(&self, action: &str, type_name: &str) -> Result<DynActionClient, String> {
        let key = (action.to_string(), type_name.to_string());
        let mut map = self.actions.lock().await;
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let c = self.dn.action_client(action, type_name).await.map_err(|e| e.to_string())?;
        map.insert(key, c.clone());
        Ok(c)
    }

    /// The type of a topic / service / action on the graph (the one given wins).
    async fn type_of(&self, kind: Kind, name: &str, given: Option<&str>) -> Result<String, String> {
        if let Some(t) = given.map(str::trim).filter(|t| !t.is_empty()) {
            return Ok(t.to_string());
        }
        let deadline = Instant::now() + clamped_seconds(self.p.graph_wait_sec, 0.0, 60.0);
        loop {
            // Only the part of the graph the kind needs (one rcl query, not the whole graph).
            let known = match kind {
                Kind::Topic => self.dn.topic_types().await,
                Kind::Service => self.dn.service_types().await,
                Kind::Action => self.dn.topic_types().await.map(|t| Graph::actions_of(&t)),
                _ => Ok(Default::default()),
            }
            .map_err(|e| e.to_string())?;
            match known.get(name).map(Vec::as_slice) {
                Some([t]) => return Ok(t.clone()),
                Some(ts) if ts.len() > 1 => return Err(format!("{} {name} has several types ({}): give `type`", kind.name(), ts.join(", "))),
                _ if Instant::now() >= deadline => {
                    return Err(format!("{} {name} is not on the graph (give `type` to use it anyway)", kind.name()))
                }
                _ => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    fn json_value(&self, type_name: &str, msg: &Json, what: &str) -> Result<MessageValue, String> {
        let ty = self.dn.registry().message(type_name).map_err(|e| e.to_string())?;
        djson::from_json(&ty, msg).map_err(|e| format!("{what}: {e}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

/// A goal sent through the bridge, driven by its own task.
struct GoalRecord {
    action: String,
    client: DynActionClient,
    id: [u8; 16],
    feedback: broadcast::Sender<Json>,
    feedback_count: AtomicU64,
    last_feedback: Mutex<Option<Json>>,
    status: watch::Sender<GoalStatus>,
    /// (status, result JSON) once done.
    done: watch::Sender<Option<(GoalStatus, Json)>>,
}

/// One MCP session on one robot: what it started, to stop when it ends.
pub struct Session {
    id: String,
    bridge: Arc<Bridge>,
    scope: Arc<Scope>,
    goals: Mutex<HashMap<String, Arc<GoalRecord>>>,
    /// Topics this session published to, with their types.
    published: Mutex<HashMap<String, String>>,
    /// Cancelled when the session ends (publishing sequences stop).
    ended: CancellationToken,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.ended.cancel();
        let goals: Vec<Arc<GoalRecord>> = self.goals.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, g)| g).collect();
        let published: Vec<(String, String)> = self.published.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        let (bridge, scope, session) = (self.bridge.clone(), self.scope.clone(), self.id.clone());
        tracing::info!(robot = %scope.robot, session, goals = goals.len(), topics = published.len(), "MCP session ended");
        self.bridge.rt.spawn(async move {
            for g in goals {
                if g.done.borrow().is_some() {
                    continue;
                }
                let gid = r2r::uuid::Uuid::from_bytes(g.id).to_string();
                let r = g.client.cancel_goal(g.id, Duration::from_secs(2)).await;
                let (ok, outcome) = match r {
                    Ok(c) => (c.return_code == 0, format!("session ended: goal {gid} cancelled (return code {})", c.return_code)),
                    Err(e) => (false, format!("session ended: cannot cancel goal {gid}: {e}")),
                };
                bridge.audit(&scope.robot, &session, "session_end", &g.action, &json!({"goal_id": gid}), ok, &outcome);
            }
            for (topic, type_name) in published {
                let Some(stop) = scope.stop_for(&topic) else { continue };
                let ty = stop.type_name.clone().unwrap_or(type_name);
                let r = async {
                    let m = bridge.json_value(&ty, &stop.msg, "stop message")?;
                    let p = bridge.publisher(&topic, &ty).await?;
                    p.publish(&m).map_err(|e| e.to_string())
                }
                .await;
                let (ok, outcome) = match r {
                    Ok(()) => (true, format!("session ended: stop command published on {topic}")),
                    Err(e) => (false, format!("session ended: cannot publish the stop command on {topic}: {e}")),
                };
                bridge.audit(&scope.robot, &session, "session_end", &topic, &stop.msg, ok, &outcome);
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
pub struct RobotTools {
    session: Arc<Session>,
    tool_router: ToolRouter<Self>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct Empty {}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DescribeType {
    /// A message, service or action type: `geometry_msgs/msg/Twist`, `std_srvs/srv/Trigger`, `pkg/action/A`.
    #[serde(rename = "type")]
    pub type_name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct NodeArg {
    /// The node's name (relative to the robot's namespace, or absolute).
    pub node: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReadTopic {
    /// The topic (relative to the robot's namespace, or absolute).
    pub topic: String,
    /// Messages to wait for (default 1).
    pub count: Option<u64>,
    /// Instead of a count: every message received during this many seconds (up to the bridge's cap).
    pub duration_sec: Option<f64>,
    /// How long to wait for the messages, seconds (default: the bridge's timeout_sec).
    pub timeout_sec: Option<f64>,
    /// The message type (default: the topic's type on the graph).
    #[serde(rename = "type")]
    pub type_name: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Publish {
    /// The topic (relative to the robot's namespace, or absolute).
    pub topic: String,
    /// The message as JSON (fields left out are zero / default), e.g. {"linear": {"x": 0.2}}.
    pub msg: Json,
    /// The message type (default: the topic's type on the graph).
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    /// Publish repeatedly at this rate, Hz (with duration_sec or count).
    pub rate_hz: Option<f64>,
    /// Publish repeatedly for this many seconds (default rate 10 Hz).
    pub duration_sec: Option<f64>,
    /// Publish this many times (default 1).
    pub count: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CallService {
    /// The service (relative to the robot's namespace, or absolute).
    pub service: String,
    /// The request as JSON (fields left out are default).
    #[serde(default)]
    pub request: Json,
    /// The service type (default: its type on the graph).
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    /// Seconds to wait for the server and its response (default: the bridge's timeout_sec).
    pub timeout_sec: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SendActionGoal {
    /// The action (relative to the robot's namespace, or absolute).
    pub action: String,
    /// The goal as JSON (fields left out are default).
    #[serde(default)]
    pub goal: Json,
    /// The action type (default: its type on the graph).
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    /// Wait for the result (default true; feedback arrives as MCP progress notifications). With
    /// false the goal id is returned at once: ask get_action_result later.
    pub wait: Option<bool>,
    /// Seconds to wait for the server to accept the goal (default: the bridge's timeout_sec). The
    /// goal itself may run as long as it needs.
    pub timeout_sec: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct GoalArg {
    /// The action (relative to the robot's namespace, or absolute).
    pub action: String,
    /// The goal id send_action_goal returned.
    pub goal_id: String,
    /// For get_action_result: seconds to wait for the result (default 0: report the state now).
    pub timeout_sec: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct GetParameters {
    /// The node (relative to the robot's namespace, or absolute).
    pub node: String,
    /// Parameter names (default: every parameter of the node).
    pub names: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SetParameters {
    /// The node (relative to the robot's namespace, or absolute).
    pub node: String,
    /// Name → value (bool, integer, number, string, or an array of one of them).
    pub parameters: Map<String, Json>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct LookupTransform {
    /// The frame to express the pose in, e.g. "odom" or "map".
    pub target_frame: String,
    /// The frame whose pose is wanted, e.g. "base_link".
    pub source_frame: String,
    /// Seconds to collect transforms (default: the bridge's timeout_sec).
    pub timeout_sec: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WatchTopic {
    /// The topic (relative to the robot's namespace, or absolute).
    pub topic: String,
    /// When to fire: an expression on the message's fields, e.g. `percentage < 0.2`,
    /// `status.level >= 2 && name == "motor"`; `any` (default) fires on every message.
    pub condition: Option<String>,
    /// What the kernel is told when it fires.
    pub message: String,
    /// The message type (default: the topic's type on the graph).
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    /// Fire at most once per this many seconds (default: the bridge's trigger_min_interval_sec, which is also the least).
    pub min_interval_sec: Option<f64>,
    /// Remove the trigger after it fired once (default false).
    pub once: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct TriggerArg {
    /// The trigger id watch_topic returned.
    pub trigger_id: String,
}

fn ok(text: impl Into<String>) -> Result<CallToolResult, McpError> {
    Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
}

fn fail(text: impl Into<String>) -> Result<CallToolResult, McpError> {
    Ok(CallToolResult::error(vec![ContentBlock::text(text)]))
}

fn with_notes(mut s: String, notes: &[String]) -> String {
    if !notes.is_empty() {
        s.push_str(&format!("\n(capped: {})", notes.join("; ")));
    }
    s
}

/// A raw image message (`sensor_msgs/msg/Image`) as a frame, or a compressed one as its bytes.
fn image_frame(m: &MessageValue) -> Option<crate::reachy::camera::Frame> {
    use crate::reachy::camera::Frame;
    let name = m.ty.name.to_string();
    let bytes = |f: &str| match m.get(f) {
        Some(Value::Bytes(b)) => Some(b.clone()),
        _ => None,
    };
    if name == "sensor_msgs/msg/Image" {
        let n = |f: &str| m.get(f).and_then(Value::as_f64).and_then(|x| u32::try_from(x as i64).ok());
        Some(Frame::Raw {
            width: n("width")?,
            height: n("height")?,
            encoding: m.get("encoding").and_then(Value::as_str)?.to_string(),
            step: n("step")?,
            data: bytes("data")?,
        })
    } else if name == "sensor_msgs/msg/CompressedImage" {
        Some(Frame::Jpeg(bytes("data")?))
    } else {
        None
    }
}

impl RobotTools {
    pub fn new(bridge: Arc<Bridge>, scope: Arc<Scope>) -> Self {
        let id = bridge.next_id("s");
        Self {
            session: Arc::new(Session {
                id,
                bridge,
                scope,
                goals: Mutex::default(),
                published: Mutex::default(),
                ended: CancellationToken::new(),
            }),
            tool_router: Self::tool_router(),
        }
    }

    fn b(&self) -> &Bridge {
        &self.session.bridge
    }

    fn scope(&self) -> &Scope {
        &self.session.scope
    }

    /// Resolve and check a name.
    fn name(&self, kind: Kind, access: Access, name: &str) -> Result<String, String> {
        let n = self.scope().resolve(name).map_err(|e| e.to_string())?;
        self.scope().check(kind, access, &n).map_err(|e| e.to_string())?;
        Ok(n)
    }

    fn audit(&self, tool: &str, name: &str, args: &Json, r: &Result<String, String>) {
        let (ok, outcome) = match r {
            Ok(s) => (true, s.as_str()),
            Err(e) => (false, e.as_str()),
        };
        self.b().audit(&self.scope().robot, &self.session.id, tool, name, args, ok, outcome);
    }

    /// Limits, then approval when the name needs it.
    async fn gate(&self, tool: &str, name: &str, msg: &mut MessageValue, args: &Json) -> Result<Vec<String>, String> {
        let notes = self.scope().apply_limits(name, msg).map_err(|e| e.to_string())?;
        if self.scope().needs_approval(name) {
            let shown = json!({"args": args, "after_limits": djson::message_to_json(msg)});
            self.b().approval(self.scope(), &self.session.id, tool, name, &shown).await?;
        }
        Ok(notes)
    }

    fn list(&self, kind: Kind, items: &std::collections::BTreeMap<String, Vec<String>>) -> String {
        let visible: Vec<String> = items
            .iter()
            .filter(|(n, _)| !crate::dynmsg::is_hidden(n) && self.scope().visible(kind, n))
            .map(|(n, t)| format!("{n} [{}]", t.join(", ")))
            .collect();
        if visible.is_empty() {
            format!("no {}s in robot {}'s scope ({})", kind.name(), self.scope().robot, self.scope().namespace)
        } else {
            visible.join("\n")
        }
    }

    async fn do_publish(&self, p: &Publish, ct: &CancellationToken) -> Result<String, String> {
        let topic = self.name(Kind::Topic, Access::Write, &p.topic)?;
        let ty = self.b().type_of(Kind::Topic, &topic, p.type_name.as_deref()).await?;
        let mut msg = self.b().json_value(&ty, &p.msg, "msg")?;
        let notes = self.gate("publish", &topic, &mut msg, &p.msg).await?;
        let publisher = self.b().publisher(&topic, &ty).await?;
        self.session.published.lock().unwrap_or_else(|e| e.into_inner()).insert(topic.clone(), ty.clone());
        let max_rate = self.b().p.max_rate_hz;
        let rate = p.rate_hz.unwrap_or(10.0);
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!("rate_hz {rate} is not a positive number"));
        }
        let rate = rate.min(max_rate);
        let count = match (p.count, p.duration_sec) {
            (Some(c), _) => c.max(1),
            (None, Some(d)) => {
                let d = clamped_seconds(d, 0.0, self.b().p.max_timeout_sec).as_secs_f64();
                ((d * rate).round() as u64).max(1)
            }
            (None, None) => 1,
        };
        let count = count.min((self.b().p.max_timeout_sec * rate) as u64).max(1);
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent = 0u64;
        for _ in 0..count {
            tokio::select! {
                _ = tick.tick() => {}
                _ = ct.cancelled() => break,
                _ = self.session.ended.cancelled() => break,
            }
            publisher.publish(&msg).map_err(|e| format!("publish on {topic}: {e}"))?;
            sent += 1;
        }
        let subs = publisher.subscription_count().unwrap_or(0);
        let limited = if notes.is_empty() { String::new() } else { format!(" (limited: {})", notes.join("; ")) };
        let stopped = if sent < count { format!(", stopped early after {sent} of {count}") } else { String::new() };
        Ok(format!(
            "published {sent} {ty} message(s) on {topic}{}{stopped}{limited}; {subs} subscriber(s)",
            if count > 1 { format!(" at {rate} Hz") } else { String::new() }
        ))
    }

    async fn do_call(&self, p: &CallService) -> Result<String, String> {
        let service = self.name(Kind::Service, Access::Write, &p.service)?;
        let ty = self.b().type_of(Kind::Service, &service, p.type_name.as_deref()).await?;
        let st = self.b().dn.registry().service(&ty).map_err(|e| e.to_string())?;
        let req_json = if p.request.is_null() { json!({}) } else { p.request.clone() };
        let mut req = djson::from_json(&st.request, &req_json).map_err(|e| format!("request: {e}"))?;
        let notes = self.gate("call_service", &service, &mut req, &req_json).await?;
        let timeout = self.b().timeout(p.timeout_sec);
        let client = self.b().dn.client(&service, &ty).await.map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        client.wait_for_service(timeout).await.map_err(|_| format!("service {service} has no server (waited {:.1} s)", timeout.as_secs_f64()))?;
        let left = timeout.saturating_sub(t0.elapsed()).max(Duration::from_millis(10));
        let resp = client.call(&req, left).await.map_err(|e| format!("call_service {service}: {e}"))?;
        let (body, cap_notes) = self.b().capped(&djson::message_to_json(&resp));
        let limited = if notes.is_empty() { String::new() } else { format!(" (request limited: {})", notes.join("; ")) };
        Ok(with_notes(format!("{service} responded{limited}:\n{body}"), &cap_notes))
    }
}

#[tool_router]
impl RobotTools {
    #[tool(description = "List the ROS nodes in this robot's scope.", annotations(read_only_hint = true, destructive_hint = false, open_world_hint = true))]
    async fn list_nodes(&self, Parameters(_): Parameters<Empty>) -> Result<CallToolResult, McpError> {
        match self.b().dn.graph().await {
            Ok(g) => {
                let v: Vec<&String> = g.nodes.iter().filter(|n| !crate::dynmsg::is_hidden(n) && self.scope().visible(Kind::Node, n)).collect();
                if v.is_empty() {
                    ok(format!("no nodes in robot {}'s scope ({})", self.scope().robot, self.scope().namespace))
                } else {
                    ok(v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"))
                }
            }
            Err(e) => fail(e.to_string()),
        }
    }

    #[tool(description = "List the topics in this robot's scope with their types.", annotations(read_only_hint = true, destructive_hint = false, open_world_hint = true))]
    async fn list_topics(&self, Parameters(_): Parameters<Empty>) -> Result<CallToolResult, McpError> {
        match self.b().dn.graph().await {
            Ok(g) => ok(self.list(Kind::Topic, &g.topics)),
            Err(e) => fail(e.to_string()),
        }
    }

    #[tool(description = "List the services in this robot's scope with their types.", annotations(read_only_hint = true, destructive_hint = false, open_world_hint = true))]
    async fn list_services(&self, Parameters(_): Parameters<Empty>) -> Result<CallToolResult, McpError> {
        match self.b().dn.graph().await {
            Ok(g) => ok(self.list(Kind::Service, &g.services)),
            Err(e) => fail(e.to_string()),
        }
    }

    #[tool(description = "List the actions in this robot's scope with their types.", annotations(read_only_hint = true, destructive_hint = false, open_world_hint = true))]
    async fn list_actions(&self, Parameters(_): Parameters<Empty>) -> Result<CallToolResult, McpError> {
        match self.b().dn.graph().await {
            Ok(g) => ok(self.list(Kind::Action, &g.actions)),
            Err(e) => fail(e.to_string()),
        }
    }

    #[tool(description = "The definition of a message, service or action type (fields, types, constants, defaults), with the definitions of the message types it uses.", annotations(read_only_hint = true, destructive_hint = false, open_world_hint = false))]
    async fn describe_type(&self, Parameters(p): Parameters<DescribeType>) -> Result<CallToolResult, McpError> {
        let reg: &Registry = self.b().dn.registry();
        let t = p.type_name.trim();
        let r = if t.contains("/srv/") {
            reg.service(t).map(|s| format!("{t}:\n{}", s.text))
        } else if t.contains("/action/") {
            reg.action(t).map(|a| format!("{t}:\n{}", a.text))
        } else {
            reg.ros2msg(t).map(|s| format!("{t}:\n{s}"))
        };
        match r {
            Ok(s) => ok(s),
            Err(e) => fail(e.to_string()),
        }
    }

    #[tool(description = "A node's publishers, subscriptions, services and service clients (only names in this robot's scope).", annotations(read_only_hint = true, destructive_hint = false, open_world_hint = true))]
    async fn node_details(&self, Parameters(p): Parameters<NodeArg>) -> Result<CallToolResult, McpError> {
        let node = match self.name(Kind::Node, Access::Read, &p.node) {
            Ok(n) => n,
            Err(e) => return fail(e),
        };
        let (ns, name) = match node.rsplit_once('/') {
            Some(("", n)) => ("/".to_string(), n.to_string()),
            Some((ns, n)) => (ns.to_string(), n.to_string()),
            None => ("/".to_string(), node.clone()),
        };
        match self.b().dn.node_details(&name, &ns).await {
            Ok(d) => {
                let part = |title: &str, kind: Kind, m: &std::collections::BTreeMap<String, Vec<String>>| {
                    format!("{title}:\n{}", self.list(kind, m))
                };
                ok([
                    part("publishers", Kind::Topic, &d.publishers),
                    part("subscriptions", Kind::Topic, &d.subscribers),
                    part("services", Kind::Service, &d.services),
                    part("service clients", Kind::Service, &d.clients),
                ]
                .join("\n"))
            }
            Err(e) => fail(format!("node {node}: {e}")),
        }
    }

    #[tool(description = "Read messages from a topic: the next one (default), `count` of them, or all within `duration_sec`; with a timeout. Large messages are capped (array items elided, counts said); an image topic (sensor_msgs/Image or CompressedImage) is returned as an image, scaled down.", annotations(read_only_hint = true, destructive_hint = false, open_world_hint = true))]
    async fn read_topic(&self, Parameters(p): Parameters<ReadTopic>) -> Result<CallToolResult, McpError> {
        let topic = match self.name(Kind::Topic, Access::Read, &p.topic) {
            Ok(n) => n,
            Err(e) => return fail(e),
        };
        let ty = match self.b().type_of(Kind::Topic, &topic, p.type_name.as_deref()).await {
            Ok(t) => t,
            Err(e) => return fail(e),
        };
        let max = self.b().p.max_read_count.max(1);
        let (count, window) = match p.duration_sec {
            Some(d) => (max, Some(clamped_seconds(d, 0.0, self.b().p.max_timeout_sec))),
            None => (p.count.unwrap_or(1).clamp(1, max), None),
        };
        let timeout = window.unwrap_or_else(|| self.b().timeout(p.timeout_sec));
        let opts = SubscribeOptions { qos: None, depth: (count as usize).min(1000), capacity: (count as usize + 10).min(10_000) };
        let mut sub = match self.b().dn.subscribe(&topic, &ty, opts).await {
            Ok(s) => s,
            Err(e) => return fail(format!("read_topic {topic}: {e}")),
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got: Vec<MessageValue> = Vec::new();
        let mut bad = 0;
        while (got.len() as u64) < count {
            match tokio::time::timeout_at(deadline, sub.recv()).await {
                Ok(Some(Ok(r))) => got.push(r.message),
                Ok(Some(Err(_))) => bad += 1,
                Ok(None) | Err(_) => break,
            }
        }
        if got.is_empty() {
            return fail(format!(
                "no message on {topic} ({ty}) within {:.1} s{}",
                timeout.as_secs_f64(),
                if bad > 0 { format!(" ({bad} could not be decoded)") } else { String::new() }
            ));
        }
        // One image: as an image.
        if got.len() == 1 {
            if let Some(frame) = image_frame(&got[0]) {
                let side = self.b().p.image_max_side as u32;
                let encoded = tokio::task::spawn_blocking(move || {
                    let small = crate::reachy::camera::downscale(&frame, side);
                    crate::reachy::camera::to_jpeg(&small)
                })
                .await;
                return match encoded {
                    Ok(Ok(jpeg)) if jpeg.starts_with(&[0xFF, 0xD8]) => {
                        use base64::Engine;
                        let b64 = base64::engine::general_purpose::STANDARD.encode(&jpeg);
                        Ok(CallToolResult::success(vec![
                            ContentBlock::text(format!("image from {topic} ({ty}), JPEG {} bytes, at most {side} px a side", jpeg.len())),
                            ContentBlock::image(b64, "image/jpeg"),
                        ]))
                    }
                    Ok(Ok(_)) => fail(format!("the image on {topic} is compressed in a format other than JPEG: not shown")),
                    Ok(Err(e)) => fail(format!("the image on {topic} cannot be shown: {e}")),
                    Err(e) => fail(format!("the image on {topic} cannot be shown: {e}")),
                };
            }
        }
        let n = got.len();
        let v = if n == 1 && window.is_none() { djson::message_to_json(&got[0]) } else { Json::Array(got.iter().map(djson::message_to_json).collect()) };
        let (body, notes) = self.b().capped(&v);
        let short = if window.is_none() && (n as u64) < count { format!(" (only {n} of {count} within {:.1} s)", timeout.as_secs_f64()) } else { String::new() };
        ok(with_notes(format!("{n} message(s) from {topic} ({ty}){short}:\n{body}"), &notes))
    }

    #[tool(description = "Publish a message on a topic: once (default), `count` times, or for `duration_sec` at `rate_hz` (default 10 Hz). Value limits of the robot apply (clamped or refused, as configured); some topics wait for a human's approval. When this MCP session ends, the robot's configured stop command is published on topics it published to.", annotations(read_only_hint = false, destructive_hint = true, open_world_hint = true))]
    async fn publish(&self, Parameters(p): Parameters<Publish>, ct: CancellationToken) -> Result<CallToolResult, McpError> {
        let args = json!({"topic": p.topic, "msg": p.msg, "type": p.type_name, "rate_hz": p.rate_hz, "duration_sec": p.duration_sec, "count": p.count});
        let r = self.do_publish(&p, &ct).await;
        let name = self.scope().resolve(&p.topic).unwrap_or_else(|_| p.topic.clone());
        self.audit("publish", &name, &args, &r);
        match r {
            Ok(s) => ok(s),
            Err(e) => fail(e),
        }
    }

    #[tool(description = "Call a service with a request (JSON) and return its response; with a timeout. Value limits and approval apply as for publish.", annotations(read_only_hint = false, destructive_hint = true, open_world_hint = true))]
    async fn call_service(&self, Parameters(p): Parameters<CallService>) -> Result<CallToolResult, McpError> {
        let args = json!({"service": p.service, "request": p.request, "type": p.type_name});
        let r = self.do_call(&p).await;
        let name = self.scope().resolve(&p.service).unwrap_or_else(|_| p.service.clone());
        self.audit("call_service", &name, &args, &r);
        match r {
            Ok(s) => ok(s),
            Err(e) => fail(e),
        }
    }

    #[tool(description = "Send a goal to an action server. By default waits for the result, reporting feedback as MCP progress notifications (a goal may run as long as it needs; cancelling the request cancels the goal); with wait=false returns the goal id at once (see get_action_result, cancel_action_goal). Goals still running when this MCP session ends are cancelled.", annotations(read_only_hint = false, destructive_hint = true, open_world_hint = true))]
    async fn send_action_goal(
        &self,
        Parameters(p): Parameters<SendActionGoal>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
        ct: CancellationToken,
    ) -> Result<CallToolResult, McpError> {
        let args = json!({"action": p.action, "goal": p.goal, "type": p.type_name});
        let started = self.start_goal(&p).await;
        let name = self.scope().resolve(&p.action).unwrap_or_else(|_| p.action.clone());
        let (rec, notes) = match started {
            Ok(x) => x,
            Err(e) => {
                self.audit("send_action_goal", &name, &args, &Err(e.clone()));
                return fail(e);
            }
        };
        let gid = r2r::uuid::Uuid::from_bytes(rec.id).to_string();
        let limited = if notes.is_empty() { String::new() } else { format!(" (goal limited: {})", notes.join("; ")) };
        self.audit("send_action_goal", &name, &args, &Ok(format!("goal {gid} accepted{limited}")));
        if !p.wait.unwrap_or(true) {
            return ok(format!("goal {gid} accepted by {name}{limited}; it runs on: ask get_action_result or cancel_action_goal with this goal_id"));
        }
        let token = meta.get_progress_token();
        let mut fb = rec.feedback.subscribe();
        let mut done = rec.done.subscribe();
        let mut n = 0u64;
        loop {
            if let Some((status, result)) = done.borrow_and_update().clone() {
                let (body, cap_notes) = self.b().capped(&result);
                let text = format!("goal {gid} on {name} ended {}{limited} after {n} feedback message(s); result:\n{body}", status.name());
                return if status == GoalStatus::Succeeded { ok(with_notes(text, &cap_notes)) } else { fail(with_notes(text, &cap_notes)) };
            }
            tokio::select! {
                f = fb.recv() => {
                    let Ok(f) = f else { continue };
                    n += 1;
                    if let Some(t) = &token {
                        let (body, _) = self.b().capped(&f);
                        let _ = peer.notify_progress(ProgressNotificationParam::new(t.clone(), n as f64).with_message(body)).await;
                    }
                }
                r = done.changed() => {
                    if r.is_err() {
                        return fail(format!("goal {gid}: its result was lost (the bridge is stopping?)"));
                    }
                }
                _ = ct.cancelled() => {
                    let c = rec.client.cancel_goal(rec.id, Duration::from_secs(2)).await;
                    let outcome = format!("request cancelled by the client: goal {gid} cancel {:?}", c.as_ref().map(|c| c.return_code));
                    self.audit("cancel_action_goal", &name, &json!({"goal_id": gid}), &Ok(outcome.clone()));
                    return fail(outcome);
                }
            }
        }
    }

    #[tool(description = "The state of a goal sent with send_action_goal (this session's goals): status, feedback so far, and the result once done. Waits up to timeout_sec for the result (default: report now).", annotations(read_only_hint = true, destructive_hint = false, open_world_hint = true))]
    async fn get_action_result(&self, Parameters(p): Parameters<GoalArg>) -> Result<CallToolResult, McpError> {
        let rec = self.session.goals.lock().unwrap_or_else(|e| e.into_inner()).get(p.goal_id.trim()).cloned();
        let Some(rec) = rec else {
            return fail(format!("no goal {} was sent in this session", p.goal_id.trim()));
        };
        let mut done = rec.done.subscribe();
        if let Some(t) = p.timeout_sec {
            let _ = tokio::time::timeout(clamped_seconds(t, 0.0, self.b().p.max_timeout_sec), done.wait_for(Option::is_some)).await;
        }
        let fbn = rec.feedback_count.load(Ordering::Relaxed);
        let last = rec.last_feedback.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let v = match done.borrow().clone() {
            Some((s, result)) => json!({"status": s.name(), "feedback_count": fbn, "last_feedback": last, "result": result}),
            None => json!({"status": rec.status.borrow().name(), "feedback_count": fbn, "last_feedback": last}),
        };
        let (body, notes) = self.b().capped(&v);
        ok(with_notes(format!("goal {} on {}:\n{body}", p.goal_id.trim(), rec.action), &notes))
    }

    #[tool(description = "Cancel a goal sent with send_action_goal.", annotations(read_only_hint = false, destructive_hint = false, open_world_hint = true))]
    async fn cancel_action_goal(&self, Parameters(p): Parameters<GoalArg>) -> Result<CallToolResult, McpError> {
        let args = json!({"action": p.action, "goal_id": p.goal_id});
        let r = async {
            let action = self.name(Kind::Action, Access::Write, &p.action)?;
            let rec = self.session.goals.lock().unwrap_or_else(|e| e.into_inner()).get(p.goal_id.trim()).cloned();
            let id = match &rec {
                Some(r) => r.id,
                None => *r2r::uuid::Uuid::parse_str(p.goal_id.trim()).map_err(|_| format!("`{}` is not a goal id", p.goal_id))?.as_bytes(),
            };
            let client = match rec {
                Some(r) => r.client.clone(),
                None => {
                    let ty = self.b().type_of(Kind::Action, &action, None).await?;
                    self.b().action_client(&action, &ty).await?
                }
            };
            let c = client.cancel_goal(id, self.b().timeout(None)).await.map_err(|e| format!("cancel on {action}: {e}"))?;
            match c.return_code {
                0 => Ok(format!("goal {} on {action}: cancelling ({} goal(s))", p.goal_id.trim(), c.goals_canceling)),
                1 => Err(format!("the server of {action} rejected the cancel request")),
                2 => Err(format!("{action} knows no goal {}", p.goal_id.trim())),
                3 => Err(format!("goal {} on {action} has already ended", p.goal_id.trim())),
                c => Err(format!("cancel on {action}: return code {c}")),
            }
        }
        .await;
        let name = self.scope().resolve(&p.action).unwrap_or_else(|_| p.action.clone());
        self.audit("cancel_action_goal", &name, &args, &r);
        match r {
            Ok(s) => ok(s),
            Err(e) => fail(e),
        }
    }

    #[tool(description = "List a node's parameters (their names).", annotations(read_only_hint = true, destructive_hint = false, open_world_hint = true))]
    async fn list_parameters(&self, Parameters(p): Parameters<NodeArg>) -> Result<CallToolResult, McpError> {
        let node = match self.name(Kind::Node, Access::Read, &p.node) {
            Ok(n) => n,
            Err(e) => return fail(e),
        };
        match self.b().dn.list_parameters(&node, self.b().timeout(None)).await {
            Ok(names) => {
                let v: Vec<String> = names.into_iter().filter(|n| self.scope().visible(Kind::Parameter, &format!("{node}:{n}"))).collect();
                ok(format!("{node}: {}", v.join(", ")))
            }
            Err(e) => fail(format!("list_parameters {node}: {e}")),
        }
    }

    #[tool(description = "Get parameter values of a node (all of them by default).", annotations(read_only_hint = true, destructive_hint = false, open_world_hint = true))]
    async fn get_parameters(&self, Parameters(p): Parameters<GetParameters>) -> Result<CallToolResult, McpError> {
        let r = async {
            let node = self.name(Kind::Node, Access::Read, &p.node)?;
            let t = self.b().timeout(None);
            let names = match &p.names {
                Some(n) if !n.is_empty() => n.clone(),
                _ => self.b().dn.list_parameters(&node, t).await.map_err(|e| e.to_string())?,
            };
            for n in &names {
                self.scope().check(Kind::Parameter, Access::Read, &format!("{node}:{n}")).map_err(|e| e.to_string())?;
            }
            let values = self.b().dn.get_parameters(&node, &names, t).await.map_err(|e| e.to_string())?;
            let m: Map<String, Json> = values.into_iter().map(|(k, v)| (k, v.unwrap_or(Json::Null))).collect();
            let (body, notes) = self.b().capped(&Json::Object(m));
            Ok::<_, String>(with_notes(format!("{node}:\n{body}"), &notes))
        }
        .await;
        match r {
            Ok(s) => ok(s),
            Err(e) => fail(e),
        }
    }

    #[tool(description = "Set parameters of a node (name → value); says for each whether the node accepted it.", annotations(read_only_hint = false, destructive_hint = true, open_world_hint = true))]
    async fn set_parameters(&self, Parameters(p): Parameters<SetParameters>) -> Result<CallToolResult, McpError> {
        let args = json!({"node": p.node, "parameters": p.parameters});
        let r = async {
            let node = self.name(Kind::Node, Access::Write, &p.node)?;
            if p.parameters.is_empty() {
                return Err("no parameters given".to_string());
            }
            for n in p.parameters.keys() {
                let full = format!("{node}:{n}");
                self.scope().check(Kind::Parameter, Access::Write, &full).map_err(|e| e.to_string())?;
                if self.scope().needs_approval(&full) || self.scope().needs_approval(&node) {
                    self.b().approval(self.scope(), &self.session.id, "set_parameters", &full, &args).await?;
                }
            }
            let values: Vec<(String, Json)> = p.parameters.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let res = self.b().dn.set_parameters(&node, &values, self.b().timeout(None)).await.map_err(|e| e.to_string())?;
            let lines: Vec<String> = values
                .iter()
                .zip(res.iter())
                .map(|((k, _), r)| match r {
                    Ok(()) => format!("{k}: set"),
                    Err(why) => format!("{k}: refused by the node: {why}"),
                })
                .collect();
            if res.iter().any(Result::is_err) {
                Err(format!("{node}:\n{}", lines.join("\n")))
            } else {
                Ok(format!("{node}:\n{}", lines.join("\n")))
            }
        }
        .await;
        let name = self.scope().resolve(&p.node).unwrap_or_else(|_| p.node.clone());
        self.audit("set_parameters", &name, &args, &r);
        match r {
            Ok(s) => ok(s),
            Err(e) => fail(e),
        }
    }

    #[tool(description = "The transform (translation in m, rotation as a quaternion and roll/pitch/yaw in rad) of source_frame in target_frame, from the robot's tf and tf_static topics.", annotations(read_only_hint = true, destructive_hint = false, open_world_hint = true))]
    async fn lookup_transform(&self, Parameters(p): Parameters<LookupTransform>) -> Result<CallToolResult, McpError> {
        let timeout = self.b().timeout(p.timeout_sec);
        let mut topics = Vec::new();
        for t in ["tf", "tf_static", "/tf", "/tf_static"] {
            if let Ok(n) = self.scope().resolve(t) {
                if self.scope().visible(Kind::Topic, &n) && !topics.contains(&n) {
                    topics.push(n);
                }
            }
        }
        if topics.is_empty() {
            return fail(format!("no tf topic is in robot {}'s scope", self.scope().robot));
        }
        let mut tree = crate::bridge::tf::Tree::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Json>(1000);
        let mut tasks = Vec::new();
        for t in &topics {
            let static_ = t.ends_with("tf_static");
            let opts = SubscribeOptions {
                qos: Some(if static_ { r2r::QosProfile::default().reliable().transient_local().keep_last(100) } else { r2r::QosProfile::default().keep_last(100) }),
                ..Default::default()
            };
            match self.b().dn.subscribe(t, "tf2_msgs/msg/TFMessage", opts).await {
                Ok(mut sub) => {
                    let tx = tx.clone();
                    tasks.push(tokio::spawn(async move {
                        while let Some(m) = sub.recv_json().await {
                            if let Ok(m) = m {
                                if tx.send(m).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }));
                }
                Err(e) => tracing::debug!("lookup_transform: cannot subscribe {t}: {e}"),
            }
        }
        drop(tx);
        let deadline = tokio::time::Instant::now() + timeout;
        let result = loop {
            if let Ok(t) = tree.lookup(p.target_frame.trim(), p.source_frame.trim()) {
                break Ok(t);
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => tree.add_message(&m),
                _ => break tree.lookup(p.target_frame.trim(), p.source_frame.trim()),
            }
        };
        for t in tasks {
            t.abort();
        }
        match result {
            Ok(t) => ok(format!("{} in {}: {}", p.source_frame.trim(), p.target_frame.trim(), t.describe())),
            Err(e) => fail(format!("{e} (from {} within {:.1} s)", topics.join(", "), timeout.as_secs_f64())),
        }
    }

    #[tool(description = "Watch a topic for a condition (a trigger): when a message satisfies it, the kernel gets a `[Robot event]` with your message. Rate limited; list_triggers / remove_trigger manage them. An invalid condition is an error here, not later.", annotations(read_only_hint = false, destructive_hint = false, open_world_hint = true))]
    async fn watch_topic(&self, Parameters(p): Parameters<WatchTopic>) -> Result<CallToolResult, McpError> {
        match self.start_trigger(p).await {
            Ok(s) => ok(s),
            Err(e) => fail(e),
        }
    }

    #[tool(description = "List this robot's triggers (from watch_topic).", annotations(read_only_hint = true, destructive_hint = false, open_world_hint = false))]
    async fn list_triggers(&self, Parameters(_): Parameters<Empty>) -> Result<CallToolResult, McpError> {
        let t = self.b().triggers.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<String> = t
            .iter()
            .filter(|(_, i)| i.robot == self.scope().robot)
            .map(|(id, i)| format!("{id}: {} when `{}` → \"{}\" (fired {} time(s))", i.topic, i.condition, i.message, i.fired.load(Ordering::Relaxed)))
            .collect();
        v.sort();
        ok(if v.is_empty() { "no triggers".to_string() } else { v.join("\n") })
    }

    #[tool(description = "Remove a trigger (from watch_topic).", annotations(read_only_hint = false, destructive_hint = false, open_world_hint = false))]
    async fn remove_trigger(&self, Parameters(p): Parameters<TriggerArg>) -> Result<CallToolResult, McpError> {
        let mut t = self.b().triggers.lock().unwrap_or_else(|e| e.into_inner());
        match t.get(p.trigger_id.trim()) {
            Some(i) if i.robot == self.scope().robot => {
                if let Some(i) = t.remove(p.trigger_id.trim()) {
                    i.task.abort();
                }
                ok(format!("trigger {} removed", p.trigger_id.trim()))
            }
            _ => fail(format!("robot {} has no trigger {}", self.scope().robot, p.trigger_id.trim())),
        }
    }
}

impl RobotTools {
    async fn start_goal(&self, p: &SendActionGoal) -> Result<(Arc<GoalRecord>, Vec<String>), String> {
        let action = self.name(Kind::Action, Access::Write, &p.action)?;
        let ty = self.b().type_of(Kind::Action, &action, p.type_name.as_deref()).await?;
        let at = self.b().dn.registry().action(&ty).map_err(|e| e.to_string())?;
        let goal_json = if p.goal.is_null() { json!({}) } else { p.goal.clone() };
        let mut goal = djson::from_json(&at.goal, &goal_json).map_err(|e| format!("goal: {e}"))?;
        let notes = self.gate("send_action_goal", &action, &mut goal, &goal_json).await?;
        let client = self.b().action_client(&action, &ty).await?;
        let timeout = self.b().timeout(p.timeout_sec);
        client.wait_for_server(timeout).await.map_err(|e| e.to_string())?;
        let mut g = client.send_goal(goal, timeout).await.map_err(|e| format!("send_action_goal {action}: {e}"))?;
        let (fb_tx, _) = broadcast::channel(64);
        let (st_tx, _) = watch::channel(GoalStatus::Accepted);
        let (done_tx, _) = watch::channel(None);
        let rec = Arc::new(GoalRecord {
            action: action.clone(),
            client,
            id: g.id,
            feedback: fb_tx,
            feedback_count: AtomicU64::new(0),
            last_feedback: Mutex::new(None),
            status: st_tx,
            done: done_tx,
        });
        self.session.goals.lock().unwrap_or_else(|e| e.into_inner()).insert(g.id_string(), rec.clone());
        let r = rec.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    f = g.feedback.recv() => match f {
                        Some(f) => {
                            let j = djson::message_to_json(&f);
                            r.feedback_count.fetch_add(1, Ordering::Relaxed);
                            *r.last_feedback.lock().unwrap_or_else(|e| e.into_inner()) = Some(j.clone());
                            let _ = r.feedback.send(j);
                        }
                        None => {}
                    },
                    s = g.status.changed() => {
                        if s.is_ok() {
                            r.status.send_replace(*g.status.borrow_and_update());
                        }
                    }
                    res = &mut g.result => {
                        let done = match res {
                            Ok(Ok(gr)) => (gr.status, djson::message_to_json(&gr.result)),
                            Ok(Err(e)) => (GoalStatus::Unknown, json!({"error": e.to_string()})),
                            Err(_) => (GoalStatus::Unknown, json!({"error": "the result was lost"})),
                        };
                        r.status.send_replace(done.0);
                        r.done.send_replace(Some(done));
                        return;
                    }
                }
            }
        });
        Ok((rec, notes))
    }

    async fn start_trigger(&self, p: WatchTopic) -> Result<String, String> {
        let b = self.session.bridge.clone();
        let topic = self.name(Kind::Topic, Access::Read, &p.topic)?;
        let cond = Condition::parse(p.condition.as_deref().unwrap_or("any")).map_err(|e| e.to_string())?;
        let ty = b.type_of(Kind::Topic, &topic, p.type_name.as_deref()).await?;
        // Check the condition's fields against the type's default message now.
        let mt = b.dn.registry().message(&ty).map_err(|e| e.to_string())?;
        let sample = djson::message_to_json(&MessageValue { ty: mt.clone(), fields: match mt.default_value() { Value::Message(m) => m.fields, _ => vec![] } });
        cond.eval(&sample).map_err(|e| format!("{e} (type {ty})"))?;
        if p.message.trim().is_empty() {
            return Err("message is empty: say what the kernel should be told".into());
        }
        {
            let t = b.triggers.lock().unwrap_or_else(|e| e.into_inner());
            if t.len() as u64 >= b.p.max_triggers {
                return Err(format!("{} triggers already (max_triggers): remove one first", t.len()));
            }
        }
        let min_interval = clamped_seconds(p.min_interval_sec.unwrap_or(b.p.trigger_min_interval_sec).max(b.p.trigger_min_interval_sec), 0.0, 86_400.0);
        let mut sub = b.dn.subscribe(&topic, &ty, SubscribeOptions { qos: None, depth: 10, capacity: 100 }).await.map_err(|e| e.to_string())?;
        let id = b.next_id("t");
        let fired = Arc::new(AtomicU64::new(0));
        let once = p.once.unwrap_or(false);
        let (robot, message, cond_text) = (self.scope().robot.clone(), p.message.trim().to_string(), cond.text().to_string());
        let task = {
            let (b, id, topic, fired, robot, message) = (b.clone(), id.clone(), topic.clone(), fired.clone(), robot.clone(), message.clone());
            tokio::spawn(async move {
                let mut last: Option<Instant> = None;
                let mut errors = 0u64;
                while let Some(m) = sub.recv_json().await {
                    let Ok(m) = m else { continue };
                    match cond.eval(&m) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            errors += 1;
                            if errors == 1 || errors % 1000 == 0 {
                                tracing::warn!(trigger = %id, "trigger condition: {e} ({errors} time(s))");
                            }
                            continue;
                        }
                    }
                    if last.is_some_and(|t| t.elapsed() < min_interval) {
                        continue;
                    }
                    last = Some(Instant::now());
                    fired.fetch_add(1, Ordering::Relaxed);
                    let sample = cap(&m, Caps { max_bytes: 2000, max_items: 8, max_chars: 200 }).json.to_string();
                    let ev = RobotEvent {
                        robot: text(&robot),
                        trigger_id: id.clone(),
                        topic: text(&topic),
                        condition: text(cond.text()),
                        message: text(&message),
                        sample: text(&sample),
                        stamp: now_stamp(),
                    };
                    if let Err(e) = b.events_pub.lock().unwrap_or_else(|e| e.into_inner()).publish(&ev) {
                        tracing::warn!("cannot publish /rosa/robot_events: {e}");
                    }
                    tracing::info!(trigger = %id, robot = %robot, topic = %topic, "trigger fired");
                    if once {
                        b.triggers.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                        return;
                    }
                }
            })
        };
        b.triggers.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id.clone(),
            TriggerInfo { robot, topic: topic.clone(), condition: cond_text.clone(), message, fired, task },
        );
        Ok(format!("trigger {id}: {topic} ({ty}) when `{cond_text}`, at most once per {:.1} s{}", min_interval.as_secs_f64(), if once { ", once" } else { "" }))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for RobotTools {
    fn get_info(&self) -> ServerConfig {
        let s = self.scope();
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(format!("rosa-mcp-bridge-{}", s.robot), env!("CARGO_PKG_VERSION")))
            .with_instructions(format!(
                "ROS robot `{}` (namespace {}). Names may be given relative to the namespace (`cmd_vel` = {}). {}",
                s.robot,
                s.namespace,
                s.resolve("cmd_vel").unwrap_or_default(),
                if s.read_only { "This robot is read-only." } else { "Motion is limited by the robot's configured limits; some calls may wait for a human's approval." }
            ))
    }
}

// ---------------------------------------------------------------------------------------------
// The node
// ---------------------------------------------------------------------------------------------

pub async fn run() -> anyhow::Result<()> {
    let ctx = r2r::Context::create()?;
    let mut node = r2r::Node::create(ctx, "mcp_bridge", "/rosa")?;
    let declared = ros::declare_params::<BridgeParams>(&mut node)?;
    ros::attach_rosout(&mut node);
    let p = declared.current();

    let registry_path = crate::config::resolve_config_path(&p.robots_file);
    let robots = crate::robots::Registry::load(&registry_path).map_err(|e| anyhow::Error::new(ConfigurationError(e.to_string())))?;
    let mut scopes = Vec::new();
    for (r, s) in robots.bridged() {
        let scope = crate::bridge::Scope::new(&r.name, s).map_err(|e| anyhow::Error::new(ConfigurationError(e.to_string())))?;
        scopes.push(Arc::new(scope));
    }
    if scopes.is_empty() {
        tracing::warn!(registry = %registry_path.display(), "no robot of the registry has a `ros:` section: nothing to bridge");
    }

    let audit_pub = node.create_publisher::<AuditEntry>("/rosa/bridge/audit", ros::reliable(100))?;
    let approval_pub = node.create_publisher::<ApprovalRequest>("/rosa/bridge/approval_requests", QosProfileExt::latched_depth(100))?;
    let events_pub = node.create_publisher::<RobotEvent>("/rosa/robot_events", ros::reliable(100))?;
    let decide = node.create_service::<DecideApproval::Service>("/rosa/bridge/decide_approval", r2r::QosProfile::services_default())?;

    let data_root = if p.data_dir.is_empty() { crate::data_dir::default_root() } else { PathBuf::from(&p.data_dir) };
    std::fs::create_dir_all(&data_root).map_err(|e| anyhow::Error::new(ConfigurationError(format!("data_dir {}: {e}", data_root.display()))))?;
    let audit_path = if p.audit_file.is_empty() { data_root.join("mcp_bridge_audit.jsonl") } else { PathBuf::from(&p.audit_file) };
    let audit_file = match std::fs::OpenOptions::new().create(true).append(true).open(&audit_path) {
        Ok(f) => Some(Mutex::new(f)),
        Err(e) => return Err(anyhow::Error::new(ConfigurationError(format!("audit_file {}: {e}", audit_path.display())))),
    };

    let registry = Arc::new(Registry::from_env());
    let dn = DynNode::start(node, registry);
    let bridge = Arc::new(Bridge {
        dn: dn.clone(),
        caps: Caps {
            max_items: p.max_array_items.clamp(1, 100_000) as usize,
            max_chars: p.max_string_chars.clamp(16, 10_000_000) as usize,
            max_bytes: p.max_reply_bytes.clamp(256, 10_000_000) as usize,
        },
        p: p.clone(),
        publishers: Default::default(),
        actions: Default::default(),
        audit_pub: Mutex::new(audit_pub),
        audit_file,
        approval_pub: Mutex::new(approval_pub),
        pending: Mutex::default(),
        events_pub: Mutex::new(events_pub),
        triggers: Mutex::default(),
        counter: AtomicU64::new(1),
        rt: tokio::runtime::Handle::current(),
    });
    {
        use futures::StreamExt;
        let bridge = bridge.clone();
        let mut decide = decide;
        tokio::spawn(async move {
            while let Some(req) = decide.next().await {
                let (ok, message) = bridge.decide(req.message.id.trim(), req.message.approve, &req.message.reason);
                tracing::info!(id = %req.message.id, approve = req.message.approve, ok, "approval decision");
                if let Err(e) = req.respond(DecideApproval::Response { ok, message: text(&message) }) {
                    tracing::warn!("cannot answer decide_approval: {e}");
                }
            }
        });
    }

    let port = u16::try_from(p.port).map_err(|_| anyhow::Error::new(ConfigurationError(format!("port {} is not a port", p.port))))?;
    let guard = Guard::new(&p.mcp_access, &p.bind, &data_root).map_err(|e| anyhow::Error::new(ConfigurationError(format!("{e} (./rosa setup creates it)"))))?;
    let token = guard.requires_token();
    let endpoints: Vec<Endpoint<RobotTools>> = scopes
        .iter()
        .map(|s| {
            let (b, s) = (bridge.clone(), s.clone());
            Endpoint::new(&format!("/{}/mcp", s.robot), move || RobotTools::new(b.clone(), s.clone()))
        })
        .collect();
    let cancel = CancellationToken::new();
    let sessions = Sessions { idle_timeout: clamped_seconds(p.session_idle_sec, 1.0, 86_400.0) };
    let (addr, server) = crate::mcp_server::serve_many(endpoints, &p.bind, port, guard, sessions, cancel.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve MCP on {}:{}: {e}", p.bind, p.port))?;
    for s in &scopes {
        tracing::info!(robot = %s.robot, namespace = %s.namespace, mcp = %format!("http://{addr}/{}/mcp", s.robot), "bridged robot");
    }
    tracing::info!(%addr, robots = scopes.len(), token, audit = %audit_path.display(), "mcp_bridge ready");

    ros::shutdown_signal().await;
    tracing::info!("mcp_bridge shutting down");
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    for (_, t) in bridge.triggers.lock().unwrap_or_else(|e| e.into_inner()).drain() {
        t.task.abort();
    }
    dn.stop();
    Ok(())
}

/// Transient-local with a depth (for the pending approvals: a UI started later sees them).
struct QosProfileExt;

impl QosProfileExt {
    fn latched_depth(depth: usize) -> r2r::QosProfile {
        r2r::QosProfile::default().reliable().transient_local().keep_last(depth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let p = BridgeParams::default();
        assert_eq!(p.port, 5002);
        assert_eq!(p.bind, "127.0.0.1");
    }
}
