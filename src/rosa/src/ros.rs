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
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn"));
    // whisper.cpp logs every load step at info: keep it at warnings unless RUST_LOG names it.
    if !std::env::var("RUST_LOG").unwrap_or_default().contains("whisper_rs") {
        if let Ok(d) = "whisper_rs=warn".parse() {
            filter = filter.add_directive(d);
        }
    }
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
