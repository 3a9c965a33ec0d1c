//! Small pieces every node needs from r2r: spinning, parameters, time stamps, QoS, logging.

use crate::params::{self, Declared, Kind, NodeParams, Range};
use futures::StreamExt;
use r2r::{builtin_interfaces::msg::Time, Node, ParameterValue, Publisher, QosProfile};
use serde::Serialize;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// `tracing` to stderr (`RUST_LOG` to filter, default `info`), one escaped line per event (see
/// [`crate::logging`]), and to `/rosout` once [`attach_rosout`] has a publisher for it.
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn"));
    // whisper.cpp logs every load step at info: keep it at warnings unless RUST_LOG names it.
    if !std::env::var("RUST_LOG").unwrap_or_default().contains("whisper_rs") {
        if let Ok(d) = "whisper_rs=warn".parse() {
            filter = filter.add_directive(d);
        }
    }
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .fmt_fields(crate::logging::EscapedFields);
    let _ = tracing_subscriber::registry().with(filter).with(stderr).with(RosoutLayer).try_init();
}

/// `/rosout`: at most this many messages in a burst, and this many per second on average; a message
/// longer than `ROSOUT_MAX_BYTES` is cut. What is not published stays in the stderr log.
pub const ROSOUT_BURST: u32 = 100;
pub const ROSOUT_PER_SEC: f64 = 20.0;
pub const ROSOUT_MAX_BYTES: usize = 4096;

/// Where events go once [`attach_rosout`] ran: the node's logger name (`rosa.kernel`), its
/// `/rosout` publisher and the rate limit.
struct Rosout {
    logger: String,
    out: std::sync::Mutex<(Publisher<r2r::rcl_interfaces::msg::Log>, crate::logging::RateLimit)>,
}

static ROSOUT: std::sync::OnceLock<Rosout> = std::sync::OnceLock::new();

thread_local! {
    /// Set while an event is being published (an event raised meanwhile is not published again).
    static FORWARDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Publishes `tracing` events on `/rosout` (`rcl_interfaces/msg/Log`, `name` the node's logger
/// name, e.g. `rosa.kernel`, as rclcpp's nodes do), rate-limited.
struct RosoutLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RosoutLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        use crate::logging::Admit;
        use r2r::rcl_interfaces::msg::Log;
        let Some(rosout) = ROSOUT.get() else { return };
        if FORWARDING.with(|f| f.replace(true)) {
            return; // raised while publishing (r2r's own logging): not again
        }
        let meta = event.metadata();
        let level = match *meta.level() {
            tracing::Level::TRACE | tracing::Level::DEBUG => Log::DEBUG as u8,
            tracing::Level::INFO => Log::INFO as u8,
            tracing::Level::WARN => Log::WARN as u8,
            tracing::Level::ERROR => Log::ERROR as u8,
        };
        if let Ok(mut out) = rosout.out.lock() {
            if let Admit::Send { dropped } = out.1.admit(std::time::Instant::now()) {
                let log = |level: u8, msg: String, file: &str, function: &str, line: u32| Log {
                    stamp: now(),
                    level,
                    name: rosout.logger.clone(),
                    msg,
                    file: file.to_string(),
                    function: function.to_string(),
                    line,
                };
                if dropped > 0 {
                    let note = format!(
                        "{dropped} log messages were not published on /rosout (more than {ROSOUT_BURST} at once or \
                         {ROSOUT_PER_SEC}/s); the node's stderr log has them"
                    );
                    let _ = out.0.publish(&log(Log::WARN as u8, note, file!(), module_path!(), line!()));
                }
                let text = crate::logging::event_text(event);
                let msg = crate::logging::clip(&text, ROSOUT_MAX_BYTES).into_owned();
                let file = meta.file().unwrap_or_default();
                let _ = out.0.publish(&log(level, msg, file, meta.module_path().unwrap_or(meta.target()), meta.line().unwrap_or(0)));
            }
        }
        FORWARDING.with(|f| f.set(false));
    }
}

/// From now on every `tracing` event of this process also goes to `/rosout` under `node`'s
/// logger name (rate-limited: [`ROSOUT_BURST`], [`ROSOUT_PER_SEC`]), unless the node was started
/// with `--ros-args --disable-rosout-logs`. Call once, after the node is created. (rcl of Jazzy
/// leaves the node's `/rosout` publisher to the client library; r2r has none.)
pub fn attach_rosout(node: &mut Node) {
    // SAFETY: a plain getter of rcl's logging configuration, set up in Context::create.
    if !unsafe { r2r_rcl::rcl_logging_rosout_enabled() } {
        return;
    }
    // rcl's rosout QoS: reliable, transient-local, keep last 1000, 10 s lifespan.
    let mut qos = QosProfile::default().reliable().transient_local().keep_last(1000);
    qos.lifespan = Duration::from_secs(10);
    match node.create_publisher::<r2r::rcl_interfaces::msg::Log>("/rosout", qos) {
        Ok(p) => {
            let out = std::sync::Mutex::new((p, crate::logging::RateLimit::new(ROSOUT_BURST, ROSOUT_PER_SEC)));
            let _ = ROSOUT.set(Rosout { logger: node.logger().to_string(), out });
        }
        Err(e) => tracing::warn!(error = %e, "no /rosout publisher: logs go to stderr only"),
    }
}

/// The node, spun in its own thread until [`Spinner::stop`].
pub struct Spinner {
    stop: Arc<AtomicBool>,
    waker: Option<r2r::SpinWaker>,
    thread: Option<JoinHandle<()>>,
}

impl Spinner {
    pub fn start(mut node: Node, period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // The waker's guard condition is always in the node's wait set. Without it, a node with
        // nothing to wait on (a worker: publishers only) has an empty wait set, rcl_wait returns
        // RCL_RET_WAIT_SET_EMPTY at once and this loop spins a whole core — the core the local
        // LLM's threads needed (measured: a worker at 60 % CPU, its model's prefill 3.3x slower).
        let waker = match node.spin_waker() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "no spin waker: a node with nothing to wait on would spin");
                None
            }
        };
        let thread = std::thread::Builder::new()
            .name("ros-spin".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    node.spin_once(period);
                }
                // The node (and its endpoints) is dropped here, in the thread that owned it.
            })
            .expect("spawn the spin thread");
        Self { stop, waker, thread: Some(thread) }
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = &self.waker {
            w.wake();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn to_json(v: &ParameterValue) -> Option<Value> {
    Some(match v {
        ParameterValue::NotSet => return None,
        ParameterValue::Bool(b) => Value::from(*b),
        ParameterValue::Integer(i) => Value::from(*i),
        ParameterValue::Double(d) => Value::from(*d),
        ParameterValue::String(s) => Value::from(s.clone()),
        ParameterValue::BoolArray(a) => Value::from(a.clone()),
        ParameterValue::ByteArray(a) => Value::from(a.clone()),
        ParameterValue::IntegerArray(a) => Value::from(a.clone()),
        ParameterValue::DoubleArray(a) => Value::from(a.clone()),
        ParameterValue::StringArray(a) => Value::from(a.clone()),
    })
}

fn from_json(v: &Value) -> Option<ParameterValue> {
    Some(match v {
        Value::Bool(b) => ParameterValue::Bool(*b),
        Value::Number(n) if n.is_i64() || n.is_u64() => ParameterValue::Integer(n.as_i64().unwrap_or(i64::MAX)),
        Value::Number(n) => ParameterValue::Double(n.as_f64()?),
        Value::String(s) => ParameterValue::String(s.clone()),
        Value::Array(a) if a.iter().all(Value::is_string) => {
            ParameterValue::StringArray(a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        }
        Value::Array(a) if a.iter().all(|x| x.is_i64()) => {
            ParameterValue::IntegerArray(a.iter().filter_map(Value::as_i64).collect())
        }
        Value::Array(a) if a.iter().all(Value::is_number) => {
            ParameterValue::DoubleArray(a.iter().filter_map(Value::as_f64).collect())
        }
        Value::Array(a) if a.iter().all(Value::is_boolean) => {
            ParameterValue::BoolArray(a.iter().filter_map(Value::as_bool).collect())
        }
        _ => return None,
    })
}

/// Read the node's parameters (params file and `-p` overrides) into `T`, write the effective values
/// back as the node's parameters (so `ros2 param list/get` show them, defaults included), and serve
/// r2r's parameter services, which accept any set without applying it. The rosa nodes use
/// [`declare_params`] instead; this stays for a node whose struct is not yet a
/// [`NodeParams`].
pub fn load_config<T>(node: &mut Node) -> anyhow::Result<T>
where
    T: serde::de::DeserializeOwned + Serialize,
{
    let mut given: Vec<(String, Value)> = {
        let params = node.params.lock().expect("params lock");
        params.iter().filter_map(|(k, p)| to_json(&p.value).map(|v| (k.clone(), v))).collect()
    };
    // r2r merges the params file's `/**` and `/<node>` sections and the `-p` overrides in file
    // order, so a node section could win over `-p`. Re-apply the command line: it comes last.
    for (k, v) in cli_overrides(std::env::args()) {
        given.retain(|(name, _)| name != &k);
        given.push((k, v));
    }
    // An int given for a float field ("timeout_sec: 5") is fine: serde_json accepts it.
    let config: T = crate::config::from_params(given)
        .map_err(|e| anyhow::anyhow!("node {}: {e}", node.name().unwrap_or_default()))?;
    {
        let mut params = node.params.lock().expect("params lock");
        for (k, v) in crate::config::to_params(&config) {
            if let Some(pv) = from_json(&v) {
                params.entry(k).or_insert_with(|| r2r::Parameter::new(pv));
            }
        }
    }
    let (handler, _changes) = node.make_parameter_handler()?;
    tokio::spawn(handler);
    Ok(config)
}

/// A node's declared parameters (see [`crate::params`]): the current values, and what to do when
/// they are set at run time.
pub struct Params<T> {
    rx: watch::Receiver<T>,
    hooks: Hooks<T>,
}

type Hooks<T> = Arc<std::sync::Mutex<Vec<Box<dyn Fn(&T) + Send>>>>;

impl<T: Clone> Params<T> {
    /// The current values.
    pub fn current(&self) -> T {
        self.rx.borrow().clone()
    }

    /// The values, updated on every accepted set.
    pub fn watch(&self) -> watch::Receiver<T> {
        self.rx.clone()
    }

    /// Call `f` with the new values on every accepted set, before the set is answered (so the
    /// change has taken effect when `ros2 param set` says it succeeded).
    pub fn on_change(&self, f: impl Fn(&T) + Send + 'static) {
        if let Ok(mut h) = self.hooks.lock() {
            h.push(Box::new(f));
        }
    }
}

/// Declare the node's parameters from `T` (types, descriptions, ranges, read-only), with the values
/// of the params files and `-p` overrides, and serve the six `rcl_interfaces` parameter services
/// and `/parameter_events`. A value that does not fit is a configuration error (exit code 78).
pub fn declare_params<T: NodeParams>(node: &mut Node) -> anyhow::Result<Params<T>> {
    use r2r::rcl_interfaces::{msg, srv};
    let fqn = node.fully_qualified_name()?;
    let mut given: Vec<(String, Value)> = {
        let params = node.params.lock().map_err(|_| anyhow::anyhow!("parameters lock poisoned"))?;
        params.iter().filter_map(|(k, p)| to_json(&p.value).map(|v| (k.clone(), v))).collect()
    };
    // r2r merges the params file's `/**` and `/<node>` sections and the `-p` overrides in file
    // order, so a node section could win over `-p`. Re-apply the command line: it comes last.
    for (k, v) in cli_overrides(std::env::args()) {
        given.retain(|(name, _)| name != &k);
        given.push((k, v));
    }
    let (declared, ignored) = Declared::<T>::load(&fqn, given).map_err(|e| anyhow::Error::new(crate::ConfigurationError(e.to_string())))?;
    // Shared sections (`/**`) carry other nodes' parameters: only a name no rosa node uses is news.
    let shared = |n: &String| n.starts_with("llm.") || n == "robots_file" || n == "use_sim_time";
    if ignored.iter().any(|n| !shared(n)) {
        tracing::warn!(node = %fqn, "ignoring parameters this node does not declare: {}", ignored.join(", "));
    } else if !ignored.is_empty() {
        tracing::debug!(node = %fqn, "not this node's parameters: {}", ignored.join(", "));
    }
    let (tx, rx) = watch::channel(declared.config().clone());
    let hooks: Hooks<T> = Arc::default();
    let state = Arc::new(std::sync::Mutex::new((declared, tx)));

    let name = node.name()?;
    let qos = QosProfile::services_default;
    let mut set = node.create_service::<srv::SetParameters::Service>(&format!("{name}/set_parameters"), qos())?;
    let mut set_atomically = node.create_service::<srv::SetParametersAtomically::Service>(&format!("{name}/set_parameters_atomically"), qos())?;
    let mut get = node.create_service::<srv::GetParameters::Service>(&format!("{name}/get_parameters"), qos())?;
    let mut list = node.create_service::<srv::ListParameters::Service>(&format!("{name}/list_parameters"), qos())?;
    let mut describe = node.create_service::<srv::DescribeParameters::Service>(&format!("{name}/describe_parameters"), qos())?;
    let mut types = node.create_service::<srv::GetParameterTypes::Service>(&format!("{name}/get_parameter_types"), qos())?;
    // rclcpp's /parameter_events QoS: reliable, volatile, keep last 1000.
    let events = node.create_publisher::<msg::ParameterEvent>("/parameter_events", QosProfile::default().reliable().keep_last(1000))?;

    let event = |fqn: &str, new: Vec<msg::Parameter>, changed: Vec<msg::Parameter>| msg::ParameterEvent {
        stamp: now(),
        node: fqn.to_string(),
        new_parameters: new,
        changed_parameters: changed,
        deleted_parameters: vec![],
    };
    {
        let s = state.lock().map_err(|_| anyhow::anyhow!("parameters lock poisoned"))?;
        let all = s.0.all().map(|(d, v)| msg::Parameter { name: d.name.clone(), value: value_msg(d.kind, v) }).collect();
        Event(event(&fqn, all, vec![])).publish(&events);
    }

    // Apply a set (all or nothing), run the hooks, publish the event; the reason on refusal.
    let events = std::sync::Mutex::new(events);
    let apply = {
        let (state, hooks, fqn) = (state.clone(), hooks.clone(), fqn.clone());
        move |changes: &[msg::Parameter]| -> Result<(), String> {
            let mut parsed = Vec::with_capacity(changes.len());
            for p in changes {
                parsed.push((p.name.clone(), kind_and_json(&p.value).map_err(|why| format!("parameter `{}`: {why}", p.name))?));
            }
            let parsed: Vec<_> = parsed.into_iter().map(|(n, (k, v))| (n, k, v)).collect();
            let mut s = state.lock().map_err(|_| "parameters lock poisoned".to_string())?;
            let changed = s.0.set(&parsed)?;
            if changed.is_empty() {
                return Ok(());
            }
            let config = s.0.config().clone();
            let params: Vec<msg::Parameter> = changed
                .iter()
                .filter_map(|n| s.0.get(n).map(|(k, v)| msg::Parameter { name: n.clone(), value: value_msg(k, v) }))
                .collect();
            s.1.send_replace(config.clone());
            drop(s);
            if let Ok(h) = hooks.lock() {
                for f in h.iter() {
                    f(&config);
                }
            }
            tracing::info!(node = %fqn, "parameters set: {}", changed.join(", "));
            if let Ok(p) = events.lock() {
                Event(event(&fqn, vec![], params)).publish(&p);
            }
            Ok(())
        }
    };
    let apply = Arc::new(apply);
    {
        let apply = apply.clone();
        tokio::spawn(async move {
            while let Some(req) = set.next().await {
                // Each parameter on its own, in order (rclcpp's SetParameters).
                let results = req
                    .message
                    .parameters
                    .iter()
                    .map(|p| set_result(apply(std::slice::from_ref(p))))
                    .collect();
                let _ = req.respond(srv::SetParameters::Response { results });
            }
        });
    }
    {
        let apply = apply.clone();
        tokio::spawn(async move {
            while let Some(req) = set_atomically.next().await {
                let result = set_result(apply(&req.message.parameters));
                let _ = req.respond(srv::SetParametersAtomically::Response { result });
            }
        });
    }
    {
        let state = state.clone();
        tokio::spawn(async move {
            while let Some(req) = get.next().await {
                let values = match state.lock() {
                    Ok(s) => req.message.names.iter().map(|n| s.0.get(n).map(|(k, v)| value_msg(k, v)).unwrap_or_default()).collect(),
                    Err(_) => vec![],
                };
                let _ = req.respond(srv::GetParameters::Response { values });
            }
        });
    }
    {
        let state = state.clone();
        tokio::spawn(async move {
            while let Some(req) = list.next().await {
                let (names, prefixes) = match state.lock() {
                    Ok(s) => params::list(s.0.descriptors().iter().map(|d| d.name.as_str()), &req.message.prefixes, req.message.depth),
                    Err(_) => Default::default(),
                };
                let _ = req.respond(srv::ListParameters::Response { result: msg::ListParametersResult { names, prefixes } });
            }
        });
    }
    {
        let state = state.clone();
        tokio::spawn(async move {
            while let Some(req) = describe.next().await {
                let descriptors = match state.lock() {
                    Ok(s) => req
                        .message
                        .names
                        .iter()
                        .map(|n| match s.0.descriptor(n) {
                            Some(d) => descriptor_msg(d),
                            None => msg::ParameterDescriptor { name: n.clone(), ..Default::default() },
                        })
                        .collect(),
                    Err(_) => vec![],
                };
                let _ = req.respond(srv::DescribeParameters::Response { descriptors });
            }
        });
    }
    tokio::spawn(async move {
        while let Some(req) = types.next().await {
            let types = match state.lock() {
                Ok(s) => req.message.names.iter().map(|n| s.0.get(n).map_or(0, |(k, _)| k.ros_type())).collect(),
                Err(_) => vec![],
            };
            let _ = req.respond(srv::GetParameterTypes::Response { types });
        }
    });
    Ok(Params { rx, hooks })
}

/// A `/parameter_events` message about to be published.
struct Event(r2r::rcl_interfaces::msg::ParameterEvent);

impl Event {
    fn publish(self, p: &Publisher<r2r::rcl_interfaces::msg::ParameterEvent>) {
        if let Err(e) = p.publish(&self.0) {
            tracing::debug!(error = %e, "cannot publish /parameter_events");
        }
    }
}

fn set_result(r: Result<(), String>) -> r2r::rcl_interfaces::msg::SetParametersResult {
    match r {
        Ok(()) => r2r::rcl_interfaces::msg::SetParametersResult { successful: true, reason: String::new() },
        Err(reason) => r2r::rcl_interfaces::msg::SetParametersResult { successful: false, reason },
    }
}

/// A ROS parameter value as its kind and JSON (`None` = PARAMETER_NOT_SET).
fn kind_and_json(v: &r2r::rcl_interfaces::msg::ParameterValue) -> Result<(Option<Kind>, Value), String> {
    let Some(kind) = Kind::from_ros(v.type_) else {
        return match v.type_ {
            0 => Ok((None, Value::Null)),
            5 => Err("byte arrays are not used by rosa".into()),
            t => Err(format!("unknown parameter type {t}")),
        };
    };
    let finite = |d: f64| if d.is_finite() { Ok(Value::from(d)) } else { Err(format!("{d} is not a finite number")) };
    Ok((
        Some(kind),
        match kind {
            Kind::Bool => Value::from(v.bool_value),
            Kind::Integer => Value::from(v.integer_value),
            Kind::Double => finite(v.double_value)?,
            Kind::String => Value::from(v.string_value.clone()),
            Kind::BoolArray => Value::from(v.bool_array_value.clone()),
            Kind::IntegerArray => Value::from(v.integer_array_value.clone()),
            Kind::DoubleArray => Value::Array(v.double_array_value.iter().map(|d| finite(*d)).collect::<Result<_, _>>()?),
            Kind::StringArray => Value::from(v.string_array_value.clone()),
        },
    ))
}

fn value_msg(kind: Kind, v: &Value) -> r2r::rcl_interfaces::msg::ParameterValue {
    let mut m = r2r::rcl_interfaces::msg::ParameterValue { type_: kind.ros_type(), ..Default::default() };
    let strings = |v: &Value| v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default();
    match kind {
        Kind::Bool => m.bool_value = v.as_bool().unwrap_or_default(),
        Kind::Integer => m.integer_value = v.as_i64().unwrap_or_default(),
        Kind::Double => m.double_value = v.as_f64().unwrap_or_default(),
        Kind::String => m.string_value = v.as_str().unwrap_or_default().to_string(),
        Kind::BoolArray => m.bool_array_value = v.as_array().map(|a| a.iter().filter_map(Value::as_bool).collect()).unwrap_or_default(),
        Kind::IntegerArray => m.integer_array_value = v.as_array().map(|a| a.iter().filter_map(Value::as_i64).collect()).unwrap_or_default(),
        Kind::DoubleArray => m.double_array_value = v.as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default(),
        Kind::StringArray => m.string_array_value = strings(v),
    }
    m
}

fn descriptor_msg(d: &params::Descriptor) -> r2r::rcl_interfaces::msg::ParameterDescriptor {
    use r2r::rcl_interfaces::msg::{FloatingPointRange, IntegerRange, ParameterDescriptor};
    let (floating_point_range, integer_range) = match d.range {
        Some(Range::Integer { from, to }) => (vec![], vec![IntegerRange { from_value: from, to_value: to, step: 0 }]),
        Some(Range::Double { from, to }) => (vec![FloatingPointRange { from_value: from, to_value: to, step: 0.0 }], vec![]),
        None => (vec![], vec![]),
    };
    ParameterDescriptor {
        name: d.name.clone(),
        type_: d.kind.ros_type(),
        description: d.description.clone(),
        additional_constraints: d.additional_constraints.clone(),
        read_only: d.read_only,
        dynamic_typing: false,
        floating_point_range,
        integer_range,
    }
}

/// `-p name:=value` / `--param name:=value` pairs inside `--ros-args … [--]` sections; values
/// are YAML, as for rcl. (`node:name:=value` forms are for other nodes and are skipped.)
pub fn cli_overrides(args: impl IntoIterator<Item = String>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut in_ros = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ros-args" => in_ros = true,
            "--" => in_ros = false,
            "-p" | "--param" if in_ros => {
                let Some(kv) = it.next() else { break };
                let Some((k, v)) = kv.split_once(":=") else { continue };
                if k.contains(':') {
                    continue;
                }
                if let Ok(v) = serde_yaml::from_str::<Value>(v) {
                    out.push((k.to_string(), v));
                }
            }
            _ => {}
        }
    }
    out
}

pub fn stamp(t: SystemTime) -> Time {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Time { sec: d.as_secs() as i32, nanosec: d.subsec_nanos() }
}

pub fn now() -> Time {
    stamp(SystemTime::now())
}

/// Reliable, keep-last `depth`: events and commands.
pub fn reliable(depth: usize) -> QosProfile {
    QosProfile::default().reliable().keep_last(depth)
}

/// Reliable, transient-local, keep-last 1: state topics (the process table).
pub fn latched() -> QosProfile {
    QosProfile::default().reliable().transient_local().keep_last(1)
}

/// Reliable, transient-local, keep-last `depth`: the conversation topics (`/rosa/updates`,
/// `/rosa/events`, `/rosa/worker_callback`). A subscriber that asks for transient-local (a UI that
/// connects late, a test) gets the recent history; volatile subscribers (the kernel, `ros2 topic
/// echo`) get only what follows, so a respawned kernel does not consume old callbacks again.
pub fn recent(depth: usize) -> QosProfile {
    QosProfile::default().reliable().transient_local().keep_last(depth)
}

/// Like [`recent`], each sample kept `lifespan` at most: a writer whose messages come in bursts
/// (the kernel's refusals) keeps a whole burst for the subscribers that fall behind, and nothing
/// once it is over (no memory held in quiet times).
pub fn burst(depth: usize, lifespan: std::time::Duration) -> QosProfile {
    recent(depth).lifespan(lifespan)
}

/// A service's QoS (reliable, volatile) keeping `depth` requests: the default of 10 loses the
/// requests of a burst of callers before the node takes them (measured: 60 concurrent /rosa/chat
/// calls got 12-42 answers). r2r's request channel is sized from it (patches/r2r/0201).
pub fn service_qos(depth: usize) -> QosProfile {
    QosProfile::services_default().keep_last(depth)
}

/// Resolve when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn command_line_overrides_are_parsed_as_yaml() {
        let args = ["exe", "--ros-args", "--params-file", "f.yaml", "-p", "max_processes:=2", "-p", "llm.urls:=['http://a/v1']",
            "--param", "name:=kernel", "-p", "other_node:x:=1", "--", "-p", "not_ros:=1"];
        let o = cli_overrides(args.iter().map(|s| s.to_string()));
        assert_eq!(o, vec![
            ("max_processes".to_string(), json!(2)),
            ("llm.urls".to_string(), json!(["http://a/v1"])),
            ("name".to_string(), json!("kernel")),
        ]);
    }

    #[test]
    fn parameter_values_convert_both_ways() {
        for v in [json!(true), json!(3), json!(2.5), json!("s"), json!(["a", "b"]), json!([1, 2]), json!([1.5, 2])] {
            let pv = from_json(&v).unwrap();
            let back = to_json(&pv).unwrap();
            assert_eq!(back.as_array().map(|a| a.len()), v.as_array().map(|a| a.len()));
        }
    }
}
