//! Small pieces every node needs from r2r: spinning, parameters, time stamps, QoS, logging.

use r2r::{builtin_interfaces::msg::Time, Node, ParameterValue, QosProfile};
use serde::Serialize;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `tracing` to stderr, `RUST_LOG` to filter (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_target(false).try_init();
}

/// The node, spun in its own thread until [`Spinner::stop`].
pub struct Spinner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Spinner {
    pub fn start(mut node: Node, period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ros-spin".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    node.spin_once(period);
                }
                // The node (and its endpoints) is dropped here, in the thread that owned it.
            })
            .expect("spawn the spin thread");
        Self { stop, thread: Some(thread) }
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
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
/// the parameter services.
pub fn load_config<T>(node: &mut Node) -> anyhow::Result<T>
where
    T: serde::de::DeserializeOwned + Serialize,
{
    let given: Vec<(String, Value)> = {
        let params = node.params.lock().expect("params lock");
        params.iter().filter_map(|(k, p)| to_json(&p.value).map(|v| (k.clone(), v))).collect()
    };
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
