//! The `rosa_web` node: one HTTP server on two ports (9090 and 8765 by default). On either port a
//! WebSocket with no subprotocol speaks rosbridge v2 (roslibjs, roslibpy), one offering a
//! Foxglove subprotocol speaks the Foxglove WebSocket protocol, and `GET /` serves the browser UI
//! (embedded in the binary). Every message goes through the dynamic-message layer (`dynmsg`):
//! any installed ROS type, JSON / CBOR / raw CDR out of one codec.

use crate::dynmsg::json::json_kind;
use crate::dynmsg::{self, cbor, DynActionClient, DynError, DynNode, DynPublisher, GoalStatus, MessageType, Registry, SubscribeOptions};
use crate::mcp_server::{is_loopback_bind, Guard, McpAccess};
use crate::ros;
use crate::web::foxglove as fx;
use crate::web::{self, absolute, Access, Frame, Kind, Outbox, Reassembly, Speaks, Throttle};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use r2r::QosProfile;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a client's new publisher waits for the subscribers the graph already has (once per topic).
const MATCH_WAIT: Duration = Duration::from_secs(5);

/// The browser UI: one page, no external assets.
const INDEX_HTML: &str = include_str!("../web/ui/index.html");

/// Parameters of `rosa_web` (see `config/rosa.yaml`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct WebParams {
    /// The address both ports bind ("127.0.0.1"; beyond loopback a token is required).
    pub bind: String,
    /// Ports served, each speaking everything (rosbridge's 9090, the UI's and Foxglove's 8765); 0 = any free port.
    pub ports: Vec<i64>,
    /// rosbridge_suite's topics_glob: topics clients may use ([] = all).
    pub topics_glob: Vec<String>,
    /// Services clients may call or advertise ([] = all).
    pub services_glob: Vec<String>,
    /// Parameters (`/node:name`) clients may read or set ([] = all).
    pub params_glob: Vec<String>,
    /// Actions clients may use ([] = all).
    pub actions_glob: Vec<String>,
    /// Largest message a client may send (bytes, also a reassembled fragment message).
    #[schemars(range(min = 1024, max = 1073741824))]
    pub max_message_size: u64,
    /// Frames waiting for one client beyond this are dropped, oldest first (and counted).
    #[schemars(range(min = 1, max = 1000000))]
    pub client_queue: u64,
    /// Bytes waiting for one client beyond this are dropped, oldest first.
    #[schemars(range(min = 1024, max = 2147483647))]
    pub client_queue_bytes: u64,
    /// A service call without a `timeout` waits this long, seconds.
    #[schemars(range(min = 0.01, max = 86400.0))]
    pub call_timeout_sec: f64,
    /// How often Foxglove clients' channels and services follow the graph, seconds.
    #[schemars(range(min = 0.1, max = 3600.0))]
    pub graph_period_sec: f64,
    /// Token and browser origins (a token is required beyond loopback, with `?token=` or
    /// `Authorization: Bearer`).
    #[serde(flatten)]
    pub access: McpAccess,
    /// Where the token file is ("" = $ROSA_DATA_DIR or ~/.local/share/rosa).
    pub data_dir: String,
}

impl Default for WebParams {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1".into(),
            ports: vec![9090, 8765],
            topics_glob: vec![],
            services_glob: vec![],
            params_glob: vec![],
            actions_glob: vec![],
            max_message_size: 10 << 20,
            client_queue: 1000,
            client_queue_bytes: 64 << 20,
            call_timeout_sec: 30.0,
            graph_period_sec: 1.0,
            access: McpAccess::default(),
            data_dir: String::new(),
        }
    }
}

impl crate::params::NodeParams for WebParams {
    const DYNAMIC: &'static [&'static str] = &[];

    fn check(&self) -> Result<(), String> {
        if self.ports.is_empty() {
            return Err("ports is empty (give at least one, e.g. [9090, 8765])".into());
        }
        for p in &self.ports {
            if u16::try_from(*p).is_err() {
                return Err(format!("ports: {p} is not a TCP port (0-65535)"));
            }
        }
        Ok(())
    }
}

/// What every session shares.
struct Server {
    dn: DynNode,
    registry: Arc<Registry>,
    access: Access,
    guard: Guard,
    max_message_size: usize,
    client_queue: usize,
    client_queue_bytes: usize,
    call_timeout: Duration,
    graph_period: Duration,
    /// Action clients, one per action and type (each has subscriptions of its own).
    actions: tokio::sync::Mutex<HashMap<(String, String), DynActionClient>>,
    sessions: AtomicU64,
    next_session: AtomicU64,
}

pub async fn run() -> anyhow::Result<()> {
    let ctx = r2r::Context::create()?;
    let mut node = r2r::Node::create(ctx, "rosa_web", "/rosa")?;
    let declared = ros::declare_params::<WebParams>(&mut node)?;
    ros::attach_rosout(&mut node);
    let params = declared.current();
    let data_dir = if params.data_dir.is_empty() { crate::data_dir::default_root() } else { PathBuf::from(&params.data_dir) };
    let guard = Guard::new(&params.access, &params.bind, &data_dir).map_err(|e| anyhow::Error::new(crate::ConfigurationError(e.to_string())))?;
    let registry = Arc::new(Registry::from_env());
    let dn = DynNode::start(node, registry.clone());
    let server = Arc::new(Server {
        dn: dn.clone(),
        registry,
        access: Access {
            topics: params.topics_glob.clone(),
            services: params.services_glob.clone(),
            params: params.params_glob.clone(),
            actions: params.actions_glob.clone(),
        },
        guard,
        max_message_size: usize::try_from(params.max_message_size).unwrap_or(usize::MAX),
        client_queue: usize::try_from(params.client_queue).unwrap_or(1000),
        client_queue_bytes: usize::try_from(params.client_queue_bytes).unwrap_or(usize::MAX),
        call_timeout: crate::input::clamped_seconds(params.call_timeout_sec, 0.01, 86400.0),
        graph_period: crate::input::clamped_seconds(params.graph_period_sec, 0.1, 3600.0),
        actions: Default::default(),
        sessions: AtomicU64::new(0),
        next_session: AtomicU64::new(1),
    });
    if !is_loopback_bind(&params.bind) {
        tracing::warn!(bind = %params.bind, "bound beyond loopback: clients need the token (?token= or Authorization: Bearer)");
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for p in &params.ports {
        let port = u16::try_from(*p).unwrap_or(0);
        let listener = tokio::net::TcpListener::bind((params.bind.as_str(), port))
            .await
            // A taken port is not fixed by restarting: a configuration error (exit 78).
            .map_err(|e| anyhow::Error::new(crate::ConfigurationError(format!("cannot listen on {}:{port}: {e} (set ports in the params file)", params.bind))))?;
        let addr = listener.local_addr()?;
        // A line tests and ./rosa up read: the address each port got.
        tracing::info!("rosa_web listening on http://{addr}/ (rosbridge v2, Foxglove WebSocket, UI)");
        let router = axum::Router::new().fallback(root).with_state(server.clone());
        let c = cancel.clone();
        // One WebSocket frame per message: without TCP_NODELAY a frame could wait for the client's
        // delayed ACK.
        let listener = crate::http::nodelay(listener);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(async move { c.cancelled_owned().await }).await {
                tracing::error!("rosa_web server: {e}");
            }
        }));
    }
    ros::shutdown_signal().await;
    tracing::info!("rosa_web stopping");
    cancel.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    dn.stop();
    Ok(())
}

/// Every request: a WebSocket upgrade (rosbridge or Foxglove), else the UI page.
async fn root(State(server): State<Arc<Server>>, uri: Uri, headers: HeaderMap, ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>) -> Response {
    // The token may come as ?token= (browsers cannot set headers on a WebSocket).
    let mut h = headers.clone();
    if let Some(t) = uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token="))) {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", percent_decode(t))) {
            h.insert(header::AUTHORIZATION, v);
        }
    }
    if let Err((status, message)) = server.guard.check(&h) {
        tracing::warn!(%status, "request refused: {message}");
        return (status, message).into_response();
    }
    match ws {
        Ok(ws) => {
            let offered = headers.get(header::SEC_WEBSOCKET_PROTOCOL).and_then(|v| v.to_str().ok());
            let speaks = web::speaks(offered);
            // Frames up to twice the limit are read, so that an oversize one gets a status error
            // (and the connection lives); beyond that the socket is closed.
            let limit = server.max_message_size.saturating_mul(2).saturating_add(1 << 16);
            let ws = ws.max_message_size(limit).max_frame_size(limit);
            match speaks {
                Speaks::Rosbridge => ws.on_upgrade(move |socket| rosbridge_session(server, socket)).into_response(),
                Speaks::Foxglove(p) => ws.protocols([p]).on_upgrade(move |socket| foxglove_session(server, socket)).into_response(),
            }
        }
        Err(_) if uri.path() == "/" || uri.path() == "/index.html" => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")],
            [(header::HeaderName::from_static("content-security-policy"), "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self' ws: wss:")],
            INDEX_HTML,
        )
            .into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "not found: rosa_web serves the UI at / and WebSockets (rosbridge v2, Foxglove) on any path\n").into_response(),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Write an outbox into a socket until it closes; batches what is queued into one flush.
async fn writer(outbox: Arc<Outbox>, mut sink: futures::stream::SplitSink<WebSocket, Message>) {
    let to_msg = |f: Frame| match f {
        Frame::Text(t) => Message::Text(t.into()),
        Frame::Binary(b) => Message::Binary(b.into()),
    };
    while let Some(f) = outbox.pop().await {
        if sink.feed(to_msg(f)).await.is_err() {
            break;
        }
        let mut ok = true;
        for f in outbox.drain_now(256) {
            if sink.feed(to_msg(f)).await.is_err() {
                ok = false;
                break;
            }
        }
        if !ok || sink.flush().await.is_err() {
            break;
        }
    }
    outbox.close();
    let _ = sink.close().await;
}

/// `pkg/Type` → `pkg/<ns>/Type`.
fn full_type(t: &str, ns: &str) -> String {
    let t = t.trim();
    match t.split('/').count() {
        2 => {
            let (p, n) = t.split_once('/').unwrap_or((t, ""));
            format!("{p}/{ns}/{n}")
        }
        _ => t.to_string(),
    }
}

fn json_str(j: &Json) -> String {
    serde_json::to_string(j).unwrap_or_else(|_| "null".into())
}

fn system_time_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

// =============================================================================================
// rosbridge v2
// =============================================================================================

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Level {
    Info = 0,
    Warning = 1,
    Error = 2,
    None = 3,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "info" => Level::Info,
            "warning" => Level::Warning,
            "error" => Level::Error,
            "none" => Level::None,
            _ => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
            Level::None => "none",
        }
    }
}

/// One rosbridge client.
struct Rb {
    server: Arc<Server>,
    out: Arc<Outbox>,
    level: Arc<Mutex<Level>>,
    /// topic → (subscriber ids, the forwarding task).
    subs: HashMap<String, (HashSet<String>, tokio::task::JoinHandle<()>)>,
    /// topic → publisher (advertised, or made by a first publish).
    pubs: HashMap<String, DynPublisher>,
    /// advertised services: name → the task answering ROS requests.
    services: HashMap<String, tokio::task::JoinHandle<()>>,
    /// Requests waiting for this client's service_response: request id → the request.
    pending: Arc<Mutex<HashMap<String, dynmsg::DynServiceRequest>>>,
    /// Goals sent: rosbridge id → (action client, goal id, task).
    goals: Arc<Mutex<HashMap<String, (DynActionClient, [u8; 16])>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    reassembly: Reassembly,
}

/// Send a status op (when `level` passes the client's set_level).
fn status(out: &Outbox, client_level: &Mutex<Level>, level: Level, id: Option<&Json>, msg: &str) {
    let wanted = *client_level.lock().unwrap_or_else(|e| e.into_inner());
    if level < wanted {
        return;
    }
    let mut m = json!({"op": "status", "level": level.name(), "msg": msg});
    if let Some(id) = id {
        m["id"] = id.clone();
    }
    out.push(Frame::Text(m.to_string()));
}

fn field_str<'a>(op: &'a Json, name: &str) -> Result<&'a str, String> {
    match op.get(name) {
        Some(Json::String(s)) => Ok(s),
        Some(other) => Err(format!("'{name}' must be a string, not {}", json_kind(other))),
        None => Err(format!("needs '{name}'")),
    }
}

fn opt_str<'a>(op: &'a Json, name: &str) -> Result<Option<&'a str>, String> {
    match op.get(name) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("'{name}' must be a string, not {}", json_kind(other))),
    }
}

fn opt_num(op: &Json, name: &str) -> Result<Option<f64>, String> {
    match op.get(name) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) => n.as_f64().filter(|x| x.is_finite() && *x >= 0.0).map(Some).ok_or_else(|| format!("'{name}' must be a number ≥ 0")),
        Some(other) => Err(format!("'{name}' must be a number, not {}", json_kind(other))),
    }
}


async fn rosbridge_session(server: Arc<Server>, socket: WebSocket) {
    let session = server.next_session.fetch_add(1, Ordering::Relaxed);
    server.sessions.fetch_add(1, Ordering::Relaxed);
    tracing::info!(session, "rosbridge client connected");
    let (sink, mut stream) = socket.split();
    let out = Arc::new(Outbox::new(server.client_queue, server.client_queue_bytes));
    let writer = tokio::spawn(writer(out.clone(), sink));
    let mut rb = Rb {
        server: server.clone(),
        out: out.clone(),
        level: Arc::new(Mutex::new(Level::Error)),
        subs: HashMap::new(),
        pubs: HashMap::new(),
        services: HashMap::new(),
        pending: Arc::default(),
        goals: Arc::default(),
        tasks: Vec::new(),
        reassembly: Reassembly::new(server.max_message_size, 64, Duration::from_secs(60)),
    };
    while let Some(m) = stream.next().await {
        let text = match m {
            Ok(Message::Text(t)) => t.to_string(),
            Ok(Message::Binary(b)) => match String::from_utf8(b.to_vec()) {
                Ok(t) => t,
                Err(_) => {
                    rb.status(Level::Error, None, "binary frames must hold JSON text (BSON is not supported)");
                    continue;
                }
            },
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(session, "rosbridge socket: {e}");
                break;
            }
        };
        rb.handle_text(&text).await;
        rb.tasks.retain(|t| !t.is_finished());
    }
    out.close();
    for (_, (_, t)) in rb.subs.drain() {
        t.abort();
    }
    for (_, t) in rb.services.drain() {
        t.abort();
    }
    for t in rb.tasks.drain(..) {
        t.abort();
    }
    let _ = writer.await;
    server.sessions.fetch_sub(1, Ordering::Relaxed);
    tracing::info!(session, dropped = out.dropped(), "rosbridge client disconnected");
}

impl Rb {
    fn status(&self, level: Level, id: Option<&Json>, msg: &str) {
        status(&self.out, &self.level, level, id, msg);
    }

    async fn handle_text(&mut self, text: &str) {
        if text.len() > self.server.max_message_size {
            self.status(Level::Error, None, &format!("message of {} bytes is larger than max_message_size ({} bytes)", text.len(), self.server.max_message_size));
            return;
        }
        let op: Json = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                self.status(Level::Error, None, &format!("not JSON: {e}"));
                return;
            }
        };
        self.handle(op, 0).await;
    }

    async fn handle(&mut self, op: Json, depth: u8) {
        let id = op.get("id").cloned();
        let name = match op.get("op") {
            Some(Json::String(s)) => s.clone(),
            Some(other) => {
                self.status(Level::Error, id.as_ref(), &format!("'op' must be a string, not {}", json_kind(other)));
                return;
            }
            None => {
                self.status(Level::Error, id.as_ref(), if op.is_object() { "no 'op' field" } else { "a rosbridge message is a JSON object with an 'op'" });
                return;
            }
        };
        let r = match name.as_str() {
            "subscribe" => self.subscribe(&op).await,
            "unsubscribe" => self.unsubscribe(&op),
            "advertise" => self.advertise(&op).await,
            "unadvertise" => self.unadvertise(&op),
            "publish" => self.publish(&op).await,
            "call_service" => self.call_service(op.clone()),
            "service_response" => self.service_response(&op),
            "advertise_service" => self.advertise_service(&op).await,
            "unadvertise_service" => self.unadvertise_service(&op),
            "send_action_goal" => self.send_action_goal(op.clone()),
            "cancel_action_goal" => self.cancel_action_goal(&op),
            "advertise_action" | "unadvertise_action" | "action_result" | "action_feedback" => {
                Err(format!("{name}: serving actions from a client is not supported by rosa_web (it can send goals: send_action_goal)"))
            }
            "set_level" => match op.get("level").and_then(Json::as_str).and_then(Level::parse) {
                Some(l) => {
                    *self.level.lock().unwrap_or_else(|e| e.into_inner()) = l;
                    Ok(())
                }
                None => Err("set_level: 'level' must be one of info, warning, error, none".into()),
            },
            "fragment" => match self.reassembly.add(&op) {
                Ok(Some(whole)) if depth == 0 => match serde_json::from_str::<Json>(&whole) {
                    Ok(inner) => {
                        Box::pin(self.handle(inner, depth + 1)).await;
                        Ok(())
                    }
                    Err(e) => Err(format!("fragment: the reassembled message is not JSON: {e}")),
                },
                Ok(Some(_)) => Err("fragment: fragments inside fragments are not supported".into()),
                Ok(None) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
            "auth" => Ok(()),
            "status" => Ok(()),
            other => Err(format!("unknown op '{}'", crate::input::summary(other, 100))),
        };
        if let Err(e) = r {
            let msg = if e.starts_with(&name) { e } else { format!("{name}: {e}") };
            self.status(Level::Error, id.as_ref(), &msg);
        }
    }

    // -- topics ------------------------------------------------------------------------------

    async fn topic_type(&self, topic: &str, given: Option<&str>) -> Result<String, String> {
        if let Some(t) = given.filter(|t| !t.is_empty()) {
            return Ok(full_type(t, "msg"));
        }
        let g = self.server.dn.graph().await.map_err(|e| e.to_string())?;
        g.topics.get(topic).and_then(|t| t.first().cloned()).ok_or_else(|| format!("{topic} has no type: give 'type' (the topic is not in the graph)"))
    }

    async fn subscribe(&mut self, op: &Json) -> Result<(), String> {
        let topic = absolute(field_str(op, "topic")?);
        self.server.access.check(Kind::Topic, &topic)?;
        let sid = match op.get("id") {
            Some(Json::String(s)) => s.clone(),
            Some(Json::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        let ty = self.topic_type(&topic, opt_str(op, "type")?).await?;
        let throttle = opt_num(op, "throttle_rate")?.unwrap_or(0.0);
        let queue_length = opt_num(op, "queue_length")?.unwrap_or(1.0);
        let fragment_size = opt_num(op, "fragment_size")?;
        let compression = opt_str(op, "compression")?.unwrap_or("none").to_string();
        if !matches!(compression.as_str(), "none" | "cbor" | "cbor-raw" | "png" | "") {
            return Err(format!("compression '{}' is not one of none, cbor, cbor-raw", crate::input::summary(&compression, 50)));
        }
        if let Some((ids, _)) = self.subs.get_mut(&topic) {
            ids.insert(sid);
            return Ok(());
        }
        let mty = self.server.registry.message(&ty).map_err(|e| e.to_string())?;
        let raw = self
            .server
            .dn
            .subscribe_raw(&topic, &ty, SubscribeOptions { qos: None, depth: 100, capacity: self.server.client_queue.clamp(10, 10_000) })
            .await
            .map_err(|e| e.to_string())?;
        if compression == "png" {
            self.status(Level::Warning, op.get("id"), "subscribe: png compression is not supported; sending JSON (use cbor for binary)");
        }
        let fwd = Forward {
            out: self.out.clone(),
            topic_json: json_str(&Json::String(topic.clone())),
            topic: topic.clone(),
            ty: mty,
            compression,
            fragment_size: fragment_size.map(|f| f.clamp(1.0, 1e12) as usize),
            level: self.level.clone(),
            next_fragment: 0,
        };
        let period = crate::input::clamped_seconds(throttle / 1000.0, 0.0, 86400.0);
        let task = tokio::spawn(forward(raw, fwd, Throttle::new(period, queue_length.clamp(1.0, 10_000.0) as usize)));
        self.subs.insert(topic, (HashSet::from([sid]), task));
        Ok(())
    }

    fn unsubscribe(&mut self, op: &Json) -> Result<(), String> {
        let topic = absolute(field_str(op, "topic")?);
        let sid = match op.get("id") {
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let Some((ids, _)) = self.subs.get_mut(&topic) else { return Ok(()) };
        match sid {
            Some(s) => {
                ids.remove(&s);
            }
            None => ids.clear(),
        }
        if ids.is_empty() {
            if let Some((_, t)) = self.subs.remove(&topic) {
                t.abort();
            }
        }
        Ok(())
    }

    async fn advertise(&mut self, op: &Json) -> Result<(), String> {
        let topic = absolute(field_str(op, "topic")?);
        self.server.access.check(Kind::Topic, &topic)?;
        let ty = full_type(field_str(op, "type")?, "msg");
        let latch = op.get("latch").and_then(Json::as_bool).unwrap_or(false);
        let depth = opt_num(op, "queue_size")?.unwrap_or(100.0).clamp(1.0, 10_000.0) as usize;
        if let Some(p) = self.pubs.get(&topic) {
            if p.message_type().name.to_string() == ty {
                return Ok(());
            }
        }
        let mut qos = QosProfile::default().keep_last(depth);
        if latch {
            qos = qos.transient_local();
        }
        let p = self.server.dn.publisher(&topic, &ty, Some(qos)).await.map_err(|e| e.to_string())?;
        self.wait_for_known_subscribers(&p).await;
        self.pubs.insert(topic, p);
        Ok(())
    }

    /// A new publisher's first messages would be lost before discovery matches the subscribers
    /// the graph already has: wait for them, up to [`MATCH_WAIT`] (1 s was not enough on a loaded
    /// machine: a roslibjs client's first command never reached the kernel).
    async fn wait_for_known_subscribers(&self, p: &DynPublisher) {
        let known = self.server.dn.subscriptions_info(p.topic()).await.map(|s| s.len()).unwrap_or(0);
        if known > 0 {
            let deadline = Instant::now() + MATCH_WAIT;
            while Instant::now() < deadline && p.subscription_count().unwrap_or(0) < known {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    fn unadvertise(&mut self, op: &Json) -> Result<(), String> {
        let topic = absolute(field_str(op, "topic")?);
        self.pubs.remove(&topic);
        Ok(())
    }

    async fn publish(&mut self, op: &Json) -> Result<(), String> {
        let topic = absolute(field_str(op, "topic")?);
        self.server.access.check(Kind::Topic, &topic)?;
        let msg = op.get("msg").ok_or("needs 'msg'")?;
        if !self.pubs.contains_key(&topic) {
            let ty = self.topic_type(&topic, opt_str(op, "type")?).await?;
            let p = self.server.dn.publisher(&topic, &ty, Some(QosProfile::default().keep_last(100))).await.map_err(|e| e.to_string())?;
            self.wait_for_known_subscribers(&p).await;
            self.pubs.insert(topic.clone(), p);
        }
        let p = self.pubs.get(&topic).ok_or("no publisher")?;
        p.publish_json(msg).map_err(|e| format!("{topic}: {e}"))
    }

    // -- services ----------------------------------------------------------------------------

    /// Errors come back as a `service_response` with `result: false` (what callers wait for).
    fn call_service(&mut self, op: Json) -> Result<(), String> {
        let server = self.server.clone();
        let out = self.out.clone();
        let respond = move |service: &str, id: Option<Json>, r: Result<Json, String>| {
            let mut m = match r {
                Ok(values) => json!({"op": "service_response", "service": service, "values": values, "result": true}),
                Err(e) => json!({"op": "service_response", "service": service, "values": e, "result": false}),
            };
            if let Some(id) = id {
                m["id"] = id;
            }
            out.push(Frame::Text(m.to_string()));
        };
        let service = absolute(field_str(&op, "service")?);
        let prepared = (|| -> Result<_, String> {
            let given_type = opt_str(&op, "type")?.map(str::to_string);
            let timeout = match opt_num(&op, "timeout")? {
                Some(t) if t > 0.0 => crate::input::clamped_seconds(t, 0.001, 86400.0),
                _ => server.call_timeout,
            };
            if !service.starts_with("/rosapi/") {
                server.access.check(Kind::Service, &service)?;
            }
            Ok((given_type, timeout))
        })();
        let (given_type, timeout) = match prepared {
            Ok(p) => p,
            Err(e) => {
                respond(&service, op.get("id").cloned(), Err(format!("call_service: {e}")));
                return Ok(());
            }
        };
        self.tasks.push(tokio::spawn(async move {
            let id = op.get("id").cloned();
            let args = op.get("args").cloned().unwrap_or(Json::Null);
            let args = match args {
                // roslibpy/roslibjs send [] for an empty request.
                Json::Array(a) if a.is_empty() => Json::Object(Default::default()),
                other => other,
            };
            let r = if let Some(api) = service.strip_prefix("/rosapi/") {
                rosapi(&server, api, &args).await
            } else {
                call_ros_service(&server, &service, given_type.as_deref(), &args, timeout).await
            };
            respond(&service, id, r);
        }));
        Ok(())
    }

    async fn advertise_service(&mut self, op: &Json) -> Result<(), String> {
        let service = absolute(field_str(op, "service")?);
        self.server.access.check(Kind::Service, &service)?;
        let ty = full_type(field_str(op, "type")?, "srv");
        if self.services.contains_key(&service) {
            return Err(format!("{service} is already advertised by this client"));
        }
        let mut srv = self.server.dn.advertise_service(&service, &ty, 100).await.map_err(|e| e.to_string())?;
        let out = self.out.clone();
        let pending = self.pending.clone();
        let name = service.clone();
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(req) = srv.recv().await {
                n += 1;
                let args = match req.request_json() {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(service = %name, "undecodable request: {e}");
                        continue;
                    }
                };
                let id = format!("service_request:{name}:{n}");
                pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), req);
                out.push(Frame::Text(json!({"op": "call_service", "id": id, "service": name, "args": args}).to_string()));
            }
        });
        self.services.insert(service, task);
        Ok(())
    }

    fn unadvertise_service(&mut self, op: &Json) -> Result<(), String> {
        let service = absolute(field_str(op, "service")?);
        match self.services.remove(&service) {
            Some(t) => {
                t.abort();
                Ok(())
            }
            None => Err(format!("{service} is not advertised by this client")),
        }
    }

    fn service_response(&mut self, op: &Json) -> Result<(), String> {
        let id = field_str(op, "id")?;
        let req = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(id).ok_or_else(|| format!("no request with id {id} is waiting"))?;
        if op.get("result").and_then(Json::as_bool) == Some(false) {
            return Err(format!("{id}: the client failed the request; ROS callers time out (a ROS service cannot answer with an error)"));
        }
        let values = op.get("values").cloned().unwrap_or(Json::Null);
        req.respond_json(&values).map_err(|e| e.to_string())
    }

    // -- actions -----------------------------------------------------------------------------

    fn send_action_goal(&mut self, op: Json) -> Result<(), String> {
        let action = absolute(field_str(&op, "action")?);
        self.server.access.check(Kind::Action, &action)?;
        let ty = full_type(field_str(&op, "action_type")?, "action");
        let id = op.get("id").cloned().unwrap_or(Json::Null);
        let key = match &id {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        };
        let feedback = op.get("feedback").and_then(Json::as_bool).unwrap_or(false);
        let args = op.get("args").cloned().unwrap_or(Json::Null);
        let server = self.server.clone();
        let out = self.out.clone();
        let goals = self.goals.clone();
        let level = self.level.clone();
        self.tasks.push(tokio::spawn(async move {
            let fail = |msg: String| {
                status(&out, &level, Level::Error, Some(&id), &format!("send_action_goal: {msg}"));
                out.push(Frame::Text(json!({"op": "action_result", "id": id, "action": action, "values": msg, "status": 6, "result": false}).to_string()));
            };
            let client = match server.action_client(&action, &ty).await {
                Ok(c) => c,
                Err(e) => return fail(e.to_string()),
            };
            if let Err(e) = client.wait_for_server(server.call_timeout.min(Duration::from_secs(10))).await {
                return fail(e.to_string());
            }
            let mut goal = match client.send_goal_json(&args, server.call_timeout).await {
                Ok(g) => g,
                Err(e) => return fail(e.to_string()),
            };
            goals.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), (client.clone(), goal.id));
            let result = loop {
                tokio::select! {
                    fb = goal.feedback.recv() => match fb {
                        Some(fb) if feedback => {
                            let values = dynmsg::json::message_to_json(&fb);
                            out.push(Frame::Text(json!({"op": "action_feedback", "id": id, "action": action, "values": values}).to_string()));
                        }
                        Some(_) => {}
                        None => {}
                    },
                    r = &mut goal.result => break r,
                }
            };
            goals.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            match result {
                Ok(Ok(r)) => {
                    let code = status_code(r.status);
                    let values = dynmsg::json::message_to_json(&r.result);
                    out.push(Frame::Text(json!({"op": "action_result", "id": id, "action": action, "values": values, "status": code, "result": true}).to_string()));
                }
                Ok(Err(e)) => fail(e.to_string()),
                Err(_) => fail("the goal's result was lost".into()),
            }
        }));
        Ok(())
    }

    fn cancel_action_goal(&mut self, op: &Json) -> Result<(), String> {
        let key = match op.get("id") {
            Some(Json::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => return Err("needs 'id' (the goal's send_action_goal id)".into()),
        };
        let goal = self.goals.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        let (client, gid) = goal.ok_or_else(|| format!("no goal with id {key} is running"))?;
        let out = self.out.clone();
        let level = self.level.clone();
        let timeout = self.server.call_timeout;
        self.tasks.push(tokio::spawn(async move {
            match client.cancel_goal(gid, timeout).await {
                Ok(r) if r.return_code == 0 => {}
                Ok(r) => status(&out, &level, Level::Warning, Some(&Json::String(key)), &format!("cancel_action_goal: the server answered return code {}", r.return_code)),
                Err(e) => status(&out, &level, Level::Error, Some(&Json::String(key)), &format!("cancel_action_goal: {e}")),
            }
        }));
        Ok(())
    }
}

fn status_code(s: GoalStatus) -> i8 {
    match s {
        GoalStatus::Unknown => 0,
        GoalStatus::Accepted => 1,
        GoalStatus::Executing => 2,
        GoalStatus::Canceling => 3,
        GoalStatus::Succeeded => 4,
        GoalStatus::Canceled => 5,
        GoalStatus::Aborted => 6,
    }
}

impl Server {
    async fn action_client(&self, action: &str, ty: &str) -> Result<DynActionClient, DynError> {
        let key = (action.to_string(), ty.to_string());
        let mut cache = self.actions.lock().await;
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let c = self.dn.action_client(action, ty).await?;
        cache.insert(key, c.clone());
        Ok(c)
    }
}

async fn call_ros_service(server: &Server, service: &str, given: Option<&str>, args: &Json, timeout: Duration) -> Result<Json, String> {
    let ty = match given.filter(|t| !t.is_empty()) {
        Some(t) => full_type(t, "srv"),
        None => {
            let g = server.dn.graph().await.map_err(|e| e.to_string())?;
            g.services.get(service).and_then(|t| t.first().cloned()).ok_or_else(|| format!("service {service} is not in the graph (give 'type' to wait for it)"))?
        }
    };
    let client = server.dn.client(service, &ty).await.map_err(|e| e.to_string())?;
    client.call_json(args, timeout).await.map_err(|e| e.to_string())
}

/// A subscription's forwarding to one client.
struct Forward {
    out: Arc<Outbox>,
    topic: String,
    topic_json: String,
    ty: Arc<MessageType>,
    compression: String,
    fragment_size: Option<usize>,
    level: Arc<Mutex<Level>>,
    next_fragment: u64,
}

impl Forward {
    fn send(&mut self, m: &dynmsg::SerializedMessage) {
        let frame = match self.compression.as_str() {
            "cbor-raw" => {
                let mut b = Vec::with_capacity(m.data.len() + 64);
                let ns = if m.info.source_timestamp_ns > 0 { m.info.source_timestamp_ns } else { m.info.received_timestamp_ns };
                let (secs, nsecs) = (ns.max(0) / 1_000_000_000, ns.max(0) % 1_000_000_000);
                cbor::map_head(&mut b, 3);
                cbor::text(&mut b, "op");
                cbor::text(&mut b, "publish");
                cbor::text(&mut b, "topic");
                cbor::text(&mut b, &self.topic);
                cbor::text(&mut b, "msg");
                cbor::map_head(&mut b, 3);
                cbor::text(&mut b, "secs");
                cbor::encode_value(&mut b, &dynmsg::Value::Int64(secs));
                cbor::text(&mut b, "nsecs");
                cbor::encode_value(&mut b, &dynmsg::Value::Int64(nsecs));
                cbor::text(&mut b, "bytes");
                cbor::bytes(&mut b, &m.data);
                Frame::Binary(b)
            }
            c => {
                let v = match dynmsg::cdr::decode(&self.ty, &m.data) {
                    Ok(v) => v,
                    Err(e) => {
                        status(&self.out, &self.level, Level::Warning, None, &format!("{}: a message could not be decoded: {e}", self.topic));
                        return;
                    }
                };
                if c == "cbor" {
                    let mut b = Vec::with_capacity(m.data.len() * 2 + 64);
                    cbor::map_head(&mut b, 3);
                    cbor::text(&mut b, "op");
                    cbor::text(&mut b, "publish");
                    cbor::text(&mut b, "topic");
                    cbor::text(&mut b, &self.topic);
                    cbor::text(&mut b, "msg");
                    cbor::encode_message(&mut b, &v);
                    Frame::Binary(b)
                } else {
                    let msg = json_str(&dynmsg::json::message_to_json(&v));
                    let text = format!("{{\"op\":\"publish\",\"topic\":{},\"msg\":{msg}}}", self.topic_json);
                    match self.fragment_size {
                        Some(size) if text.len() > size => {
                            self.next_fragment += 1;
                            let id = format!("{}:{}", self.topic, self.next_fragment);
                            for f in web::fragments(&text, size, &id) {
                                self.out.push(Frame::Text(f));
                            }
                            return;
                        }
                        _ => Frame::Text(text),
                    }
                }
            }
        };
        self.out.push(frame);
    }
}

async fn forward(mut raw: dynmsg::RawSubscription, mut fwd: Forward, mut throttle: Throttle<dynmsg::SerializedMessage>) {
    loop {
        let due = throttle.due();
        tokio::select! {
            m = raw.recv() => match m {
                Some(m) => {
                    if let Some(m) = throttle.offer(m, Instant::now()) {
                        fwd.send(&m);
                    }
                }
                None => break,
            },
            _ = async { match due { Some(d) => tokio::time::sleep_until(d.into()).await, None => std::future::pending().await } } => {
                if let Some(m) = throttle.take_due(Instant::now()) {
                    fwd.send(&m);
                }
            }
        }
    }
}

// =============================================================================================
// rosapi (served in process, by absolute or relative name)
// =============================================================================================

fn arg_str<'a>(args: &'a Json, name: &str) -> Result<&'a str, String> {
    args.get(name).and_then(Json::as_str).ok_or_else(|| format!("needs '{name}' (a string)"))
}

/// rosapi's typedef of a message type and the types it uses (message_details & co.).
fn typedefs(registry: &Registry, ty: &str) -> Result<Json, String> {
    let t = registry.message(&full_type(ty, "msg")).map_err(|e| e.to_string())?;
    let mut all = vec![t.clone()];
    all.extend(t.nested_types());
    let defs: Vec<Json> = all
        .iter()
        .map(|m| {
            let fieldtypes: Vec<String> = m
                .fields
                .iter()
                .map(|f| match &f.ty.base {
                    dynmsg::BaseType::Message(n) => n.name.to_string(),
                    dynmsg::BaseType::Primitive(p) => p.name().to_string(),
                    dynmsg::BaseType::String { .. } => "string".into(),
                    dynmsg::BaseType::WString { .. } => "wstring".into(),
                })
                .collect();
            let arraylen: Vec<i64> = m
                .fields
                .iter()
                .map(|f| match f.ty.array {
                    dynmsg::ArrayKind::Single => -1,
                    dynmsg::ArrayKind::Fixed(n) => i64::try_from(n).unwrap_or(i64::MAX),
                    _ => 0,
                })
                .collect();
            json!({
                "type": m.name.to_string(),
                "fieldnames": m.fields.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
                "fieldtypes": fieldtypes,
                "fieldarraylen": arraylen,
                "examples": m.fields.iter().map(|f| dynmsg::json::to_json(&dynmsg::types::field_default(f)).to_string()).collect::<Vec<_>>(),
                "constnames": m.constants.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
                "constvalues": m.constants.iter().map(|c| dynmsg::json::to_json(&c.value).to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json!({ "typedefs": defs }))
}

/// `/node:param` (rosapi's form for ROS 2) → (node, param).
fn split_param(name: &str) -> Result<(String, String), String> {
    let (n, p) = name.split_once(':').ok_or_else(|| format!("parameter '{name}' is not of the form /node:name"))?;
    if p.is_empty() {
        return Err(format!("parameter '{name}' has no name after ':'"));
    }
    Ok((absolute(n), p.to_string()))
}

async fn rosapi(server: &Server, api: &str, args: &Json) -> Result<Json, String> {
    let dn = &server.dn;
    let acc = &server.access;
    let graph = || async { dn.graph().await.map_err(|e| e.to_string()) };
    let visible_topics = |g: &dynmsg::Graph| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = g
            .topics
            .iter()
            .filter(|(t, _)| !dynmsg::is_hidden(t) && acc.allows(Kind::Topic, t))
            .filter_map(|(t, tys)| tys.first().map(|ty| (t.clone(), ty.clone())))
            .collect();
        // Foxglove's rosbridge player takes a graph for ROS 2 only when rcl_interfaces/msg/Log is listed.
        if !v.iter().any(|(t, _)| t == "/rosout") && acc.allows(Kind::Topic, "/rosout") {
            v.push(("/rosout".into(), "rcl_interfaces/msg/Log".into()));
        }
        v.sort();
        v
    };
    Ok(match api {
        "topics" => {
            let g = graph().await?;
            let (topics, types): (Vec<_>, Vec<_>) = visible_topics(&g).into_iter().unzip();
            json!({"topics": topics, "types": types})
        }
        "topics_and_raw_types" => {
            let g = graph().await?;
            let (topics, types): (Vec<_>, Vec<_>) = visible_topics(&g).into_iter().unzip();
            let texts: Vec<String> = types.iter().map(|t| server.registry.ros2msg(t).unwrap_or_default()).collect();
            json!({"topics": topics, "types": types, "typedefs_full_text": texts})
        }
        "topic_type" => {
            let t = absolute(arg_str(args, "topic")?);
            let g = graph().await?;
            json!({"type": g.topics.get(&t).and_then(|v| v.first().cloned()).unwrap_or_default()})
        }
        "topics_for_type" => {
            let want = full_type(arg_str(args, "type")?, "msg");
            let g = graph().await?;
            json!({"topics": visible_topics(&g).into_iter().filter(|(_, ty)| *ty == want).map(|(t, _)| t).collect::<Vec<_>>()})
        }
        "nodes" => json!({"nodes": graph().await?.nodes}),
        "node_details" => {
            let full = absolute(arg_str(args, "node")?);
            let (ns, name) = match full.rsplit_once('/') {
                Some(("", n)) => ("/".to_string(), n.to_string()),
                Some((ns, n)) => (ns.to_string(), n.to_string()),
                None => ("/".to_string(), full.clone()),
            };
            let d = dn.node_details(&name, &ns).await.map_err(|e| e.to_string())?;
            json!({
                "subscribing": d.subscribers.keys().collect::<Vec<_>>(),
                "publishing": d.publishers.keys().collect::<Vec<_>>(),
                "services": d.services.keys().collect::<Vec<_>>(),
            })
        }
        "services" => {
            let g = graph().await?;
            let mut s: Vec<String> = g.services.keys().filter(|s| !dynmsg::is_hidden(s) && acc.allows(Kind::Service, s)).cloned().collect();
            s.extend(ROSAPI_SERVICES.iter().map(|n| format!("/rosapi/{n}")));
            s.sort();
            json!({"services": s})
        }
        "service_type" => {
            let s = absolute(arg_str(args, "service")?);
            let g = graph().await?;
            json!({"type": g.services.get(&s).and_then(|v| v.first().cloned()).unwrap_or_default()})
        }
        "services_for_type" => {
            let want = full_type(arg_str(args, "type")?, "srv");
            let g = graph().await?;
            json!({"services": g.services.iter().filter(|(_, t)| t.contains(&want)).map(|(s, _)| s.clone()).collect::<Vec<_>>()})
        }
        "service_providers" | "service_node" => {
            let s = absolute(arg_str(args, "service")?);
            let g = graph().await?;
            let mut providers = Vec::new();
            for n in &g.nodes {
                let (ns, name) = n.rsplit_once('/').map(|(a, b)| (if a.is_empty() { "/" } else { a }, b)).unwrap_or(("/", n));
                if let Ok(d) = dn.node_details(name, ns).await {
                    if d.services.contains_key(&s) {
                        providers.push(n.clone());
                    }
                }
            }
            if api == "service_node" {
                json!({"node": providers.first().cloned().unwrap_or_default()})
            } else {
                json!({"providers": providers})
            }
        }
        "publishers" | "subscribers" => {
            let t = absolute(arg_str(args, "topic")?);
            let infos = if api == "publishers" { dn.publishers_info(&t).await } else { dn.subscriptions_info(&t).await }.map_err(|e| e.to_string())?;
            let mut names: Vec<String> = infos.iter().map(|i| if i.node_namespace.ends_with('/') { format!("{}{}", i.node_namespace, i.node_name) } else { format!("{}/{}", i.node_namespace, i.node_name) }).collect();
            names.sort();
            names.dedup();
            json!({ api: names })
        }
        "message_details" => typedefs(&server.registry, arg_str(args, "type")?)?,
        "service_request_details" | "service_response_details" => {
            let s = server.registry.service(&full_type(arg_str(args, "type")?, "srv")).map_err(|e| e.to_string())?;
            let part = if api == "service_request_details" { &s.request } else { &s.response };
            typedefs(&server.registry, &part.name.to_string())?
        }
        "action_servers" => {
            let g = graph().await?;
            json!({"action_servers": g.actions.keys().filter(|a| acc.allows(Kind::Action, a)).collect::<Vec<_>>()})
        }
        "interfaces" => json!({"interfaces": server.registry.installed()}),
        "get_ros_version" => json!({"version": 2, "distro": std::env::var("ROS_DISTRO").unwrap_or_else(|_| "jazzy".into())}),
        "get_time" => {
            let ns = system_time_ns();
            json!({"time": {"sec": ns / 1_000_000_000, "nanosec": ns % 1_000_000_000}})
        }
        "get_param_names" => {
            let g = graph().await?;
            let mut names = Vec::new();
            for n in &g.nodes {
                if let Ok(ps) = dn.list_parameters(n, Duration::from_secs(2)).await {
                    names.extend(ps.into_iter().map(|p| format!("{n}:{p}")).filter(|p| acc.allows(Kind::Param, p)));
                }
            }
            json!({"names": names})
        }
        "has_param" => {
            let name = arg_str(args, "name")?;
            let (node, p) = split_param(name)?;
            let ps = dn.list_parameters(&node, Duration::from_secs(2)).await.map_err(|e| e.to_string())?;
            json!({"exists": ps.contains(&p)})
        }
        "get_param" => {
            let name = arg_str(args, "name")?;
            acc.check(Kind::Param, name)?;
            let (node, p) = split_param(name)?;
            let got = dn.get_parameters(&node, std::slice::from_ref(&p), Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
            match got.into_iter().next().and_then(|(_, v)| v) {
                Some(v) => json!({"value": v.to_string()}),
                None => json!({"value": args.get("default").and_then(Json::as_str).unwrap_or("")}),
            }
        }
        "set_param" => {
            let name = arg_str(args, "name")?;
            acc.check(Kind::Param, name)?;
            let (node, p) = split_param(name)?;
            let text = arg_str(args, "value")?;
            let v: Json = serde_json::from_str(text).map_err(|e| format!("value must be JSON text ({e})"))?;
            let r = dn.set_parameters(&node, &[(p, v)], Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
            match r.into_iter().next() {
                Some(Ok(())) => json!({}),
                Some(Err(reason)) => return Err(reason),
                None => return Err("no answer".into()),
            }
        }
        "delete_param" | "search_param" => return Err(format!("rosapi/{api} is not supported (ROS 2 parameters belong to their nodes)")),
        other => return Err(format!("unknown rosapi service /rosapi/{}", crate::input::summary(other, 80))),
    })
}

const ROSAPI_SERVICES: &[&str] = &[
    "topics", "topics_and_raw_types", "topic_type", "topics_for_type", "nodes", "node_details", "services", "service_type",
    "services_for_type", "service_providers", "service_node", "publishers", "subscribers", "message_details",
    "service_request_details", "service_response_details", "action_servers", "interfaces", "get_ros_version", "get_time",
    "get_param_names", "has_param", "get_param", "set_param",
];

// =============================================================================================
// Foxglove WebSocket
// =============================================================================================

/// What a Foxglove client was advertised (channels, services): id → (name, type), and the reverse.
struct Advertised {
    by_id: BTreeMap<u32, (String, String)>,
    ids: HashMap<(String, String), u32>,
    next: u32,
}

impl Advertised {
    fn new() -> Self {
        Self { by_id: BTreeMap::new(), ids: HashMap::new(), next: 1 }
    }

    fn get(&self, id: u32) -> Option<&(String, String)> {
        self.by_id.get(&id)
    }

    /// Follow the graph's `now`: forget what is gone (its ids are returned), and give an id to
    /// each new (name, type) that `describe` can describe (in name order; one it cannot, a type
    /// not installed, is tried again next time).
    fn follow(&mut self, now: HashSet<(String, String)>, mut describe: impl FnMut(u32, &str, &str) -> Option<Json>) -> (Vec<u32>, Vec<Json>) {
        let gone: Vec<u32> = self.by_id.iter().filter(|(_, k)| !now.contains(*k)).map(|(id, _)| *id).collect();
        for id in &gone {
            if let Some(k) = self.by_id.remove(id) {
                self.ids.remove(&k);
            }
        }
        let mut fresh: Vec<_> = now.into_iter().filter(|k| !self.ids.contains_key(k)).collect();
        fresh.sort();
        let mut new = Vec::new();
        for (name, ty) in fresh {
            let Some(j) = describe(self.next, &name, &ty) else { continue };
            new.push(j);
            self.ids.insert((name.clone(), ty.clone()), self.next);
            self.by_id.insert(self.next, (name, ty));
            self.next += 1;
        }
        (gone, new)
    }
}

struct Fox {
    server: Arc<Server>,
    out: Arc<Outbox>,
    /// Our channels (topic, type).
    channels: Advertised,
    /// Subscriptions: client subscription id → forwarding task.
    subs: HashMap<u32, tokio::task::JoinHandle<()>>,
    /// Client channels: id → publisher.
    client_channels: HashMap<u32, DynPublisher>,
    /// Our services (name, type).
    services: Advertised,
    graph_subscribed: bool,
    last_graph: Option<Json>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn fox_status(out: &Outbox, level: u8, msg: &str) {
    out.push(Frame::Text(json!({"op": "status", "level": level, "message": msg}).to_string()));
}

async fn foxglove_session(server: Arc<Server>, socket: WebSocket) {
    let session = server.next_session.fetch_add(1, Ordering::Relaxed);
    server.sessions.fetch_add(1, Ordering::Relaxed);
    tracing::info!(session, "Foxglove client connected");
    let (sink, mut stream) = socket.split();
    let out = Arc::new(Outbox::new(server.client_queue, server.client_queue_bytes));
    let writer = tokio::spawn(writer(out.clone(), sink));
    out.push(Frame::Text(
        json!({
            "op": "serverInfo",
            "name": "rosa_web",
            "capabilities": ["clientPublish", "services", "parameters", "connectionGraph"],
            "supportedEncodings": ["cdr"],
            "metadata": {"ROS_DISTRO": std::env::var("ROS_DISTRO").unwrap_or_else(|_| "jazzy".into())},
            "sessionId": format!("{}-{session}", std::process::id()),
        })
        .to_string(),
    ));
    let mut fx = Fox {
        server: server.clone(),
        out: out.clone(),
        channels: Advertised::new(),
        subs: HashMap::new(),
        client_channels: HashMap::new(),
        services: Advertised::new(),
        graph_subscribed: false,
        last_graph: None,
        tasks: Vec::new(),
    };
    fx.refresh().await;
    let mut tick = tokio::time::interval(server.graph_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = stream.next() => match m {
                Some(Ok(Message::Text(t))) => fx.handle_text(t.as_str()).await,
                Some(Ok(Message::Binary(b))) => fx.handle_binary(&b).await,
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(session, "Foxglove socket: {e}");
                    break;
                }
            },
            _ = tick.tick() => fx.refresh().await,
        }
        fx.tasks.retain(|t| !t.is_finished());
        if out.is_closed() {
            break;
        }
    }
    out.close();
    for (_, t) in fx.subs.drain() {
        t.abort();
    }
    for t in fx.tasks.drain(..) {
        t.abort();
    }
    let _ = writer.await;
    server.sessions.fetch_sub(1, Ordering::Relaxed);
    tracing::info!(session, dropped = out.dropped(), "Foxglove client disconnected");
}

impl Fox {
    /// Follow the graph: advertise new topics and services, unadvertise the gone ones.
    async fn refresh(&mut self) {
        let Ok(g) = self.server.dn.graph().await else { return };
        let acc = &self.server.access;
        let now: HashSet<(String, String)> = g
            .topics
            .iter()
            .filter(|(t, _)| acc.allows(Kind::Topic, t) && !t.contains("/_action/"))
            .flat_map(|(t, tys)| tys.iter().map(move |ty| (t.clone(), ty.clone())))
            .collect();
        let registry = &self.server.registry;
        let (gone, new) = self.channels.follow(now, |id, topic, ty| {
            let schema = registry.ros2msg(ty).ok()?;
            Some(json!({"id": id, "topic": topic, "encoding": "cdr", "schemaName": ty, "schema": schema, "schemaEncoding": "ros2msg"}))
        });
        if !gone.is_empty() {
            self.out.push(Frame::Text(json!({"op": "unadvertise", "channelIds": gone}).to_string()));
        }
        if !new.is_empty() {
            self.out.push(Frame::Text(json!({"op": "advertise", "channels": new}).to_string()));
        }
        // Services.
        let snow: HashSet<(String, String)> = g
            .services
            .iter()
            .filter(|(s, _)| acc.allows(Kind::Service, s) && !s.contains("/_action/"))
            .flat_map(|(s, tys)| tys.iter().map(move |ty| (s.clone(), ty.clone())))
            .collect();
        let (sgone, snew) = self.services.follow(snow, |id, name, ty| {
            let (Ok(req), Ok(resp)) = (registry.ros2msg(&format!("{ty}_Request")), registry.ros2msg(&format!("{ty}_Response"))) else { return None };
            Some(json!({
                "id": id, "name": name, "type": ty,
                "requestSchema": req, "responseSchema": resp,
                "request": {"encoding": "cdr", "schemaName": format!("{ty}_Request"), "schemaEncoding": "ros2msg", "schema": req},
                "response": {"encoding": "cdr", "schemaName": format!("{ty}_Response"), "schemaEncoding": "ros2msg", "schema": resp},
            }))
        });
        if !sgone.is_empty() {
            self.out.push(Frame::Text(json!({"op": "unadvertiseServices", "serviceIds": sgone}).to_string()));
        }
        if !snew.is_empty() {
            self.out.push(Frame::Text(json!({"op": "advertiseServices", "services": snew}).to_string()));
        }
        if self.graph_subscribed {
            self.send_graph(&g).await;
        }
    }

    async fn send_graph(&mut self, g: &dynmsg::Graph) {
        let mut published = Vec::new();
        let mut subscribed = Vec::new();
        for t in g.topics.keys() {
            let fq = |i: &dynmsg::TopicEndpointInfo| if i.node_namespace.ends_with('/') { format!("{}{}", i.node_namespace, i.node_name) } else { format!("{}/{}", i.node_namespace, i.node_name) };
            if let Ok(p) = self.server.dn.publishers_info(t).await {
                if !p.is_empty() {
                    published.push(json!({"name": t, "publisherIds": p.iter().map(fq).collect::<Vec<_>>()}));
                }
            }
            if let Ok(s) = self.server.dn.subscriptions_info(t).await {
                if !s.is_empty() {
                    subscribed.push(json!({"name": t, "subscriberIds": s.iter().map(fq).collect::<Vec<_>>()}));
                }
            }
        }
        let services: Vec<Json> = g.services.keys().map(|s| json!({"name": s, "providerIds": []})).collect();
        let update = json!({"publishedTopics": published, "subscribedTopics": subscribed, "advertisedServices": services});
        if self.last_graph.as_ref() == Some(&update) {
            return;
        }
        let mut m = update.clone();
        m["op"] = json!("connectionGraphUpdate");
        m["removedTopics"] = json!([]);
        m["removedServices"] = json!([]);
        self.out.push(Frame::Text(m.to_string()));
        self.last_graph = Some(update);
    }

    async fn handle_text(&mut self, text: &str) {
        if text.len() > self.server.max_message_size {
            fox_status(&self.out, fx::STATUS_ERROR, &format!("message of {} bytes is larger than max_message_size", text.len()));
            return;
        }
        let op: Json = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return fox_status(&self.out, fx::STATUS_ERROR, &format!("not JSON: {e}")),
        };
        let name = op.get("op").and_then(Json::as_str).unwrap_or_default().to_string();
        let r = match name.as_str() {
            "subscribe" => self.subscribe(&op).await,
            "unsubscribe" => {
                for id in op.get("subscriptionIds").and_then(Json::as_array).into_iter().flatten().filter_map(Json::as_u64) {
                    if let Some(t) = u32::try_from(id).ok().and_then(|id| self.subs.remove(&id)) {
                        t.abort();
                    }
                }
                Ok(())
            }
            "advertise" => self.client_advertise(&op).await,
            "unadvertise" => {
                for id in op.get("channelIds").and_then(Json::as_array).into_iter().flatten().filter_map(Json::as_u64) {
                    if let Ok(id) = u32::try_from(id) {
                        self.client_channels.remove(&id);
                    }
                }
                Ok(())
            }
            "getParameters" => self.get_parameters(&op).await,
            "setParameters" => self.set_parameters(&op).await,
            "subscribeParameterUpdates" | "unsubscribeParameterUpdates" => Ok(()),
            "subscribeConnectionGraph" => {
                self.graph_subscribed = true;
                self.last_graph = None;
                if let Ok(g) = self.server.dn.graph().await {
                    self.send_graph(&g).await;
                }
                Ok(())
            }
            "unsubscribeConnectionGraph" => {
                self.graph_subscribed = false;
                Ok(())
            }
            "" => Err("a message needs an 'op' (a string)".into()),
            other => Err(format!("unknown op '{}'", crate::input::summary(other, 100))),
        };
        if let Err(e) = r {
            fox_status(&self.out, fx::STATUS_ERROR, &format!("{name}: {e}"));
        }
    }

    async fn subscribe(&mut self, op: &Json) -> Result<(), String> {
        let subs = op.get("subscriptions").and_then(Json::as_array).ok_or("needs 'subscriptions' (an array)")?;
        let mut errors = Vec::new();
        for s in subs {
            let (Some(id), Some(ch)) = (s.get("id").and_then(Json::as_u64).and_then(|v| u32::try_from(v).ok()), s.get("channelId").and_then(Json::as_u64).and_then(|v| u32::try_from(v).ok())) else {
                errors.push("a subscription needs 'id' and 'channelId' (integers)".to_string());
                continue;
            };
            let Some((topic, ty)) = self.channels.get(ch).cloned() else {
                errors.push(format!("no channel {ch}"));
                continue;
            };
            if self.subs.contains_key(&id) {
                errors.push(format!("subscription {id} exists"));
                continue;
            }
            match self.server.dn.subscribe_raw(&topic, &ty, SubscribeOptions { qos: None, depth: 100, capacity: self.server.client_queue.clamp(10, 10_000) }).await {
                Ok(mut raw) => {
                    let out = self.out.clone();
                    self.subs.insert(
                        id,
                        tokio::spawn(async move {
                            while let Some(m) = raw.recv().await {
                                let ts = u64::try_from(m.info.received_timestamp_ns).ok().filter(|t| *t > 0).unwrap_or_else(system_time_ns);
                                out.push(Frame::Binary(fx::message_data(id, ts, &m.data)));
                            }
                        }),
                    );
                }
                Err(e) => errors.push(format!("{topic}: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    async fn client_advertise(&mut self, op: &Json) -> Result<(), String> {
        let chans = op.get("channels").and_then(Json::as_array).ok_or("needs 'channels' (an array)")?;
        for c in chans {
            let id = c.get("id").and_then(Json::as_u64).and_then(|v| u32::try_from(v).ok()).ok_or("a channel needs 'id' (an integer)")?;
            let topic = absolute(c.get("topic").and_then(Json::as_str).ok_or("a channel needs 'topic'")?);
            self.server.access.check(Kind::Topic, &topic)?;
            let enc = c.get("encoding").and_then(Json::as_str).unwrap_or("cdr");
            if enc != "cdr" {
                return Err(format!("channel {id}: encoding '{}' is not supported (cdr only)", crate::input::summary(enc, 40)));
            }
            let ty = full_type(c.get("schemaName").and_then(Json::as_str).ok_or("a channel needs 'schemaName' (the ROS type)")?, "msg");
            let p = self.server.dn.publisher(&topic, &ty, None).await.map_err(|e| e.to_string())?;
            self.client_channels.insert(id, p);
        }
        Ok(())
    }

    async fn handle_binary(&mut self, b: &[u8]) {
        match fx::parse_client_binary(b) {
            Ok(fx::ClientBinary::MessageData { channel, payload }) => match self.client_channels.get(&channel) {
                Some(p) => {
                    if let Err(e) = p.publish_cdr(payload) {
                        fox_status(&self.out, fx::STATUS_ERROR, &format!("channel {channel}: {e}"));
                    }
                }
                None => fox_status(&self.out, fx::STATUS_ERROR, &format!("no client channel {channel} (advertise it first)")),
            },
            Ok(fx::ClientBinary::ServiceCallRequest { service, call, encoding, payload }) => {
                let Some((name, ty)) = self.services.get(service).cloned() else {
                    self.out.push(Frame::Text(json!({"op": "serviceCallFailure", "serviceId": service, "callId": call, "message": format!("no service {service}")}).to_string()));
                    return;
                };
                if encoding != "cdr" {
                    self.out.push(Frame::Text(json!({"op": "serviceCallFailure", "serviceId": service, "callId": call, "message": "encoding must be cdr"}).to_string()));
                    return;
                }
                let payload = payload.to_vec();
                let server = self.server.clone();
                let out = self.out.clone();
                self.tasks.push(tokio::spawn(async move {
                    let r = match server.dn.client(&name, &ty).await {
                        Ok(c) => c.call_cdr(&payload, server.call_timeout).await,
                        Err(e) => Err(e),
                    };
                    match r {
                        Ok(resp) => out.push(Frame::Binary(fx::service_call(fx::SERVER_SERVICE_CALL_RESPONSE, service, call, "cdr", &resp))),
                        Err(e) => out.push(Frame::Text(json!({"op": "serviceCallFailure", "serviceId": service, "callId": call, "message": e.to_string()}).to_string())),
                    };
                }));
            }
            Err(e) => fox_status(&self.out, fx::STATUS_ERROR, &e.to_string()),
        }
    }

    /// Foxglove names parameters `/node.param` (as foxglove_bridge does).
    fn split(name: &str) -> Option<(String, String)> {
        let slash = name.rfind('/')?;
        let dot = name[slash..].find('.')? + slash;
        Some((name[..dot].to_string(), name[dot + 1..].to_string()))
    }

    async fn get_parameters(&mut self, op: &Json) -> Result<(), String> {
        let names: Vec<String> = op.get("parameterNames").and_then(Json::as_array).map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_string)).collect()).unwrap_or_default();
        let dn = &self.server.dn;
        let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if names.is_empty() {
            let g = dn.graph().await.map_err(|e| e.to_string())?;
            for n in g.nodes {
                if let Ok(ps) = dn.list_parameters(&n, Duration::from_secs(1)).await {
                    by_node.insert(n, ps);
                }
            }
        } else {
            for n in &names {
                let (node, p) = Self::split(n).ok_or_else(|| format!("parameter '{n}' is not of the form /node.name"))?;
                by_node.entry(node).or_default().push(p);
            }
        }
        let mut params = Vec::new();
        for (node, ps) in by_node {
            if let Ok(vals) = dn.get_parameters(&node, &ps, Duration::from_secs(2)).await {
                for (p, v) in vals {
                    let full = format!("{node}.{p}");
                    if let Some(v) = v.filter(|_| self.server.access.allows(Kind::Param, &format!("{node}:{p}"))) {
                        params.push(json!({"name": full, "value": v}));
                    }
                }
            }
        }
        let mut m = json!({"op": "parameterValues", "parameters": params});
        if let Some(id) = op.get("id") {
            m["id"] = id.clone();
        }
        self.out.push(Frame::Text(m.to_string()));
        Ok(())
    }

    async fn set_parameters(&mut self, op: &Json) -> Result<(), String> {
        let ps = op.get("parameters").and_then(Json::as_array).ok_or("needs 'parameters' (an array)")?;
        let mut names = Vec::new();
        for p in ps {
            let name = p.get("name").and_then(Json::as_str).ok_or("a parameter needs 'name'")?;
            let (node, pn) = Self::split(name).ok_or_else(|| format!("parameter '{name}' is not of the form /node.name"))?;
            self.server.access.check(Kind::Param, &format!("{node}:{pn}"))?;
            let v = p.get("value").cloned().unwrap_or(Json::Null);
            let r = self.server.dn.set_parameters(&node, &[(pn, v)], Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
            if let Some(Err(reason)) = r.into_iter().next() {
                fox_status(&self.out, fx::STATUS_WARNING, &format!("{name}: {reason}"));
            }
            names.push(json!(name));
        }
        if op.get("id").is_some() {
            let mut get = json!({"op": "getParameters", "parameterNames": names});
            get["id"] = op["id"].clone();
            self.get_parameters(&get).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[(&str, &str)]) -> HashSet<(String, String)> {
        items.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn advertised_follows_the_graph_and_retries_what_it_could_not_describe() {
        let mut a = Advertised::new();
        let describe_all = |id: u32, name: &str, _: &str| Some(json!({"id": id, "name": name}));
        let (gone, new) = a.follow(set(&[("/b", "T"), ("/a", "T")]), describe_all);
        assert!(gone.is_empty());
        assert_eq!(new, vec![json!({"id": 1, "name": "/a"}), json!({"id": 2, "name": "/b"})]);
        // /a goes, /c comes but cannot be described (its type is not installed): not advertised.
        let (gone, new) = a.follow(set(&[("/b", "T"), ("/c", "U")]), |id, name, ty| (ty != "U").then(|| json!({"id": id, "name": name})));
        assert_eq!((gone, new), (vec![1], vec![]));
        assert_eq!(a.get(2), Some(&("/b".to_string(), "T".to_string())));
        assert_eq!(a.get(1), None);
        // Next time it can: a new id, never a reused one.
        let (gone, new) = a.follow(set(&[("/b", "T"), ("/c", "U")]), describe_all);
        assert_eq!((gone, new), (vec![], vec![json!({"id": 3, "name": "/c"})]));
    }
}
