//! The `reachy_driver` node: the Reachy Mini daemon on the ROS graph, and its MCP tools.
//!
//! Publishes `/joint_states`, `/tf` and `/tf_static` (from the daemon's `/ws/sdk` stream),
//! `/robot_description` (transient-local, from the daemon's URDF), `/diagnostics` (the daemon
//! connection) and `/rosa/speaking`; subscribes `/rosa/stop_speaking` (barge-in) and, when
//! configured, a camera topic. The MCP server gets the daemon client, the speech queue and camera
//! frames through channels: it never holds the node.

use crate::config::LlmConfig;
use crate::data_dir::DataDir;
use crate::input::{clamped_seconds, clamped_size};
use crate::mcp_server::{Guard, McpAccess};
use crate::reachy::camera::{Camera, Frame, Stamped};
use crate::reachy::daemon::{self, Daemon, Link, RobotState};
use crate::reachy::limits::REACHY_MINI;
use crate::reachy::speech::{AudioSink, DaemonSpeaker, Espeak, LocalSpeaker, OpenAiTts, SpeechQueue, Tts, WavFiles};
use crate::reachy::tools::{self, Driver, ReachyTools};
use crate::reachy::urdf::{self, Mat, Urdf};
use crate::reachy::vision::Vision;
use crate::ros::{self, Spinner};
use futures::StreamExt;
use r2r::diagnostic_msgs::msg::{DiagnosticArray, DiagnosticStatus, KeyValue};
use r2r::geometry_msgs::msg::{Quaternion, Transform, TransformStamped, Vector3};
use r2r::sensor_msgs::msg::{CompressedImage, Image, JointState};
use r2r::std_msgs::msg::{Bool, Empty, Header};
use r2r::tf2_msgs::msg::TFMessage;
use r2r::{Node, Publisher, QosProfile};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use crate::ConfigurationError;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Speech parameters (`speech.*`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct SpeechParams {
    /// "espeak" (local espeak-ng) or "openai" (an OpenAI-compatible /audio/speech endpoint).
    pub engine: String,
    /// espeak-ng voice (e.g. en-us, fr) or the endpoint's voice name.
    pub voice: String,
    /// espeak-ng speed, words per minute.
    #[schemars(range(min = 80, max = 450))]
    pub rate_wpm: u64,
    /// "auto" (the robot's speaker if the daemon has one, else the local device, else WAV files),
    /// "daemon", "local" or "files".
    pub output: String,
    /// Where "files" output writes its WAVs ("" = <data_dir>/speech).
    pub output_dir: String,
    /// Utterances waiting at most.
    #[schemars(range(min = 1, max = 1000))]
    pub queue_size: u64,
    /// Characters one `speak` may have at most (longer texts are refused; the engine gets them
    /// in pieces of at most 1000 bytes).
    #[schemars(range(min = 1, max = 1000000))]
    pub max_chars: u64,
    /// For engine "openai": the endpoint's base URL.
    pub url: String,
    /// For engine "openai": the speech model.
    pub model: String,
    /// For engine "openai": the environment variable holding the key.
    pub key_env: String,
}

impl Default for SpeechParams {
    fn default() -> Self {
        Self {
            engine: "espeak".into(),
            voice: "en-us".into(),
            rate_wpm: 170,
            output: "auto".into(),
            output_dir: String::new(),
            queue_size: 16,
            max_chars: crate::reachy::speech::DEFAULT_MAX_CHARS as u64,
            url: "https://api.groq.com/openai/v1".into(),
            model: "playai-tts".into(),
            key_env: "GROQ_API_KEY".into(),
        }
    }
}

/// Camera parameters (`camera.*`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct CameraParams {
    /// "" (none), a V4L2 device (`/dev/video0`), or an image topic: `sensor_msgs/Image`, or
    /// `sensor_msgs/CompressedImage` when the name ends with `/compressed`.
    pub source: String,
    /// A topic frame older than this is refused as stale, seconds.
    #[schemars(range(min = 0.1, max = 3600.0))]
    pub max_age_sec: f64,
}

impl Default for CameraParams {
    fn default() -> Self {
        Self { source: String::new(), max_age_sec: 2.0 }
    }
}

/// Parameters of the reachy_driver node (see `config/rosa.yaml`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct ReachyParams {
    /// The daemon's base URL.
    pub daemon_url: String,
    /// The MCP server's (streamable HTTP) address: bind beyond loopback only on purpose.
    pub mcp_bind: String,
    /// The MCP server's port (0 = any free port; the log says which).
    #[schemars(range(min = 0, max = 65535))]
    pub mcp_port: u64,
    /// The MCP server's path.
    pub mcp_path: String,
    /// Who may call the MCP server: `require_token`, `token_file`, `allowed_origins`.
    #[serde(flatten)]
    pub mcp_access: McpAccess,
    /// /joint_states and /tf rate at most, Hz (the daemon streams at ~50 Hz).
    #[schemars(range(min = 1.0, max = 200.0))]
    pub publish_rate_hz: f64,
    /// HTTP request timeout to the daemon, seconds.
    #[schemars(range(min = 0.5, max = 600.0))]
    pub request_timeout_sec: f64,
    /// Delay between reconnection attempts, seconds.
    #[schemars(range(min = 0.1, max = 600.0))]
    pub reconnect_sec: f64,
    /// Pictures and speech files go here ("" = $ROSA_DATA_DIR, else ~/.local/share/rosa).
    pub data_dir: String,
    /// The recorded-moves dataset played by play_emotion.
    pub emotions_dataset: String,
    /// Extra time past a move's duration a tool waits for it, seconds.
    #[schemars(range(min = 0.5, max = 600.0))]
    pub move_timeout_margin_sec: f64,
    /// Text to speech.
    pub speech: SpeechParams,
    /// Frames for take_picture.
    pub camera: CameraParams,
    /// Vision model for describe_image / take_picture (OpenAI-compatible, as `llm.*`).
    pub vision: LlmConfig,
}

impl crate::params::NodeParams for ReachyParams {
    // The daemon client, the MCP server, speech, camera and vision are set up once, at start.
    const DYNAMIC: &'static [&'static str] = &["publish_rate_hz"];
}

impl Default for ReachyParams {
    fn default() -> Self {
        Self {
            daemon_url: "http://localhost:8000".into(),
            mcp_bind: "127.0.0.1".into(),
            mcp_port: 5001,
            mcp_path: "/mcp".into(),
            mcp_access: McpAccess::default(),
            publish_rate_hz: 100.0,
            request_timeout_sec: 10.0,
            reconnect_sec: 1.0,
            data_dir: String::new(),
            emotions_dataset: "pollen-robotics/reachy-mini-emotions-library".into(),
            move_timeout_margin_sec: 5.0,
            speech: SpeechParams::default(),
            camera: CameraParams::default(),
            vision: LlmConfig {
                models: vec!["meta-llama/llama-4-scout-17b-16e-instruct".into()],
                timeout_sec: 60.0,
                ..LlmConfig::default()
            },
        }
    }
}

fn data_dir(p: &ReachyParams) -> PathBuf {
    if p.data_dir.is_empty() {
        crate::data_dir::default_root()
    } else {
        PathBuf::from(&p.data_dir)
    }
}

fn header(stamp: SystemTime, frame: &str) -> Header {
    Header { stamp: ros::stamp(stamp), frame_id: frame.into() }
}

fn transform(parent: &str, child: &str, m: &Mat, stamp: SystemTime) -> TransformStamped {
    let q = urdf::quaternion(m);
    TransformStamped {
        header: header(stamp, parent),
        child_frame_id: child.into(),
        transform: Transform {
            translation: Vector3 { x: m[0][3], y: m[1][3], z: m[2][3] },
            rotation: Quaternion { x: q[0], y: q[1], z: q[2], w: q[3] },
        },
    }
}

/// The state topics, published from the latest stream state at up to `rate` Hz.
struct StatePublisher {
    joints: Publisher<JointState>,
    tf: Publisher<TFMessage>,
    tf_static: Publisher<TFMessage>,
    description: Publisher<r2r::std_msgs::msg::String>,
    urdf: Option<Urdf>,
    urdf_text: String,
    static_sent: bool,
}

impl StatePublisher {
    fn set_urdf(&mut self, text: String) {
        if text == self.urdf_text {
            return;
        }
        match Urdf::parse(&text) {
            Ok(u) => {
                tracing::info!(root = %u.root, joints = u.joints.len(), "robot description from the daemon");
                self.urdf = Some(u);
                self.static_sent = false;
            }
            Err(e) => tracing::error!("the daemon's URDF cannot be used for /tf: {e}"),
        }
        if let Err(e) = self.description.publish(&r2r::std_msgs::msg::String { data: text.clone() }) {
            tracing::error!("cannot publish /robot_description: {e}");
        }
        self.urdf_text = text;
    }

    fn publish(&mut self, s: &RobotState) {
        let stamp = SystemTime::now();
        let named = urdf::joint_positions(&s.head_joints, s.antennas);
        let msg = JointState {
            header: header(stamp, ""),
            name: named.iter().map(|(n, _)| n.clone()).collect(),
            position: named.iter().map(|(_, v)| *v).collect(),
            velocity: vec![],
            effort: vec![],
        };
        if let Err(e) = self.joints.publish(&msg) {
            tracing::warn!("cannot publish /joint_states: {e}");
        }
        let Some(u) = &self.urdf else { return };
        let positions: HashMap<String, f64> = named.into_iter().collect();
        let all = u.transforms(&positions, Some(&s.head_pose));
        let fixed: std::collections::HashSet<&str> =
            u.joints.iter().filter(|j| j.kind == "fixed").map(|j| j.child.as_str()).collect();
        let (stat, dynamic): (Vec<_>, Vec<_>) = all.iter().partition(|(_, c, _)| fixed.contains(c.as_str()));
        let tf = TFMessage { transforms: dynamic.iter().map(|(p, c, m)| transform(p, c, m, stamp)).collect() };
        if let Err(e) = self.tf.publish(&tf) {
            tracing::warn!("cannot publish /tf: {e}");
        }
        if !self.static_sent {
            let tf = TFMessage { transforms: stat.iter().map(|(p, c, m)| transform(p, c, m, stamp)).collect() };
            self.static_sent = self.tf_static.publish(&tf).is_ok();
        }
    }
}

/// How often `/diagnostics` is published (and at once when the level changes).
const DIAGNOSTICS_PERIOD: Duration = Duration::from_secs(1);

/// The diagnostic level of the daemon link.
fn link_level(link: &Link) -> u8 {
    match link {
        Link::Connected { daemon_state, .. } if daemon_state == "running" => DiagnosticStatus::OK as u8,
        Link::Connected { .. } => DiagnosticStatus::WARN as u8,
        Link::Connecting | Link::Disconnected { .. } => DiagnosticStatus::ERROR as u8,
    }
}

fn diagnostics(link: &Link, url: &str, rate: f64, speech: &str, speaking: bool) -> DiagnosticArray {
    let kv = |k: &str, v: String| KeyValue { key: k.into(), value: v };
    let since = |t: &SystemTime| format!("{:.0} s", SystemTime::now().duration_since(*t).unwrap_or_default().as_secs_f64());
    let (level, message, mut values) = match link {
        Link::Connecting => (link_level(link), "connecting to the daemon".to_string(), vec![]),
        Link::Connected { since: t, daemon_state, version, simulation } => (
            link_level(link),
            format!("connected, daemon {daemon_state}"),
            vec![kv("daemon_state", daemon_state.clone()), kv("version", version.clone()), kv("simulation", simulation.clone()), kv("connected_for", since(t))],
        ),
        Link::Disconnected { since: t, reason } => (
            link_level(link),
            format!("disconnected: {reason}"),
            vec![kv("disconnected_for", since(t))],
        ),
    };
    values.insert(0, kv("daemon_url", url.into()));
    values.push(kv("joint_states_hz", format!("{rate:.1}")));
    values.push(kv("speech_output", speech.into()));
    values.push(kv("speaking", speaking.to_string()));
    DiagnosticArray {
        header: header(SystemTime::now(), ""),
        status: vec![DiagnosticStatus {
            level,
            name: "reachy_driver: daemon connection".into(),
            message,
            hardware_id: url.into(),
            values,
        }],
    }
}

async fn choose_sink(p: &ReachyParams, daemon: &Daemon, dir: &Path) -> anyhow::Result<Arc<dyn AudioSink>> {
    let files = || -> anyhow::Result<Arc<dyn AudioSink>> {
        let d = if p.speech.output_dir.is_empty() { dir.join("speech") } else { PathBuf::from(&p.speech.output_dir) };
        let dir = DataDir::open(&d).map_err(|e| anyhow::Error::new(ConfigurationError(format!("speech.output_dir: {e}"))))?;
        Ok(Arc::new(WavFiles { dir, count: AtomicU64::new(0) }))
    };
    let speaker = || -> Arc<dyn AudioSink> { Arc::new(DaemonSpeaker { daemon: daemon.clone(), count: AtomicU64::new(0) }) };
    Ok(match p.speech.output.as_str() {
        "files" => files()?,
        "daemon" => speaker(),
        "local" => Arc::new(LocalSpeaker),
        other => {
            if other != "auto" {
                tracing::warn!(output = other, "unknown speech.output, using auto");
            }
            // Give the stream a moment to connect before asking the daemon about its speaker.
            let mut link = daemon.link_watch();
            let _ = tokio::time::timeout(Duration::from_secs(3), link.wait_for(Link::is_connected)).await;
            if daemon.has_speaker().await {
                speaker()
            } else if LocalSpeaker::available() {
                Arc::new(LocalSpeaker)
            } else {
                tracing::warn!("no speaker on the daemon and no local audio device: speech goes to WAV files");
                files()?
            }
        }
    })
}

pub async fn run() -> anyhow::Result<()> {
    let ctx = r2r::Context::create()?;
    let mut node = Node::create(ctx, "reachy_driver", "/rosa")?;
    let declared = ros::declare_params::<ReachyParams>(&mut node)?;
    ros::attach_rosout(&mut node);
    let params = declared.current();

    let joints = node.create_publisher::<JointState>("/joint_states", ros::reliable(10))?;
    let tf = node.create_publisher::<TFMessage>("/tf", ros::reliable(100))?;
    let tf_static = node.create_publisher::<TFMessage>("/tf_static", ros::latched())?;
    let description = node.create_publisher::<r2r::std_msgs::msg::String>("/robot_description", ros::latched())?;
    let diag = node.create_publisher::<DiagnosticArray>("/diagnostics", ros::reliable(10))?;
    let speaking_pub = node.create_publisher::<Bool>("/rosa/speaking", ros::latched())?;
    let stop_speaking = node.subscribe::<Empty>("/rosa/stop_speaking", ros::reliable(10))?;

    // The camera: a topic subscription feeding a watch channel, or a device.
    let source = params.camera.source.trim().to_string();
    let (frames_tx, frames_rx) = watch::channel::<Option<Stamped>>(None);
    let camera = if source.is_empty() {
        Camera::None
    } else if source.starts_with("/dev/") {
        Camera::Device { path: source.clone() }
    } else {
        let tx = frames_tx.clone();
        if source.ends_with("/compressed") {
            let sub = node.subscribe::<CompressedImage>(&source, QosProfile::sensor_data())?;
            tokio::spawn(sub.for_each(move |m| {
                tx.send_replace(Some(Stamped { frame: Frame::Jpeg(m.data), received: SystemTime::now() }));
                futures::future::ready(())
            }));
        } else {
            let sub = node.subscribe::<Image>(&source, QosProfile::sensor_data())?;
            tokio::spawn(sub.for_each(move |m| {
                let frame = Frame::Raw { width: m.width, height: m.height, encoding: m.encoding, step: m.step, data: m.data };
                tx.send_replace(Some(Stamped { frame, received: SystemTime::now() }));
                futures::future::ready(())
            }));
        }
        Camera::Topic { topic: source.clone(), frames: frames_rx, max_age: clamped_seconds(params.camera.max_age_sec, 0.1, 86_400.0) }
    };
    let spinner = Spinner::start(node, Duration::from_millis(5));

    // The daemon: client, and the stream that keeps its state and the link.
    let (daemon, handles) = Daemon::new(&params.daemon_url, clamped_seconds(params.request_timeout_sec, 0.5, 3600.0))?;
    tokio::spawn(daemon::run_stream(
        daemon.base_url().to_string(),
        handles,
        clamped_seconds(params.reconnect_sec, 0.1, 3600.0),
        Duration::from_secs(3),
    ));

    // Speech.
    let dir = data_dir(&params);
    let data = DataDir::open(&dir).map_err(|e| anyhow::Error::new(ConfigurationError(format!("data_dir: {e}"))))?;
    let tts: Arc<dyn Tts> = match params.speech.engine.as_str() {
        "openai" => Arc::new(OpenAiTts {
            url: params.speech.url.clone(),
            model: params.speech.model.clone(),
            voice: params.speech.voice.clone(),
            key_env: params.speech.key_env.clone(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
        }),
        other => {
            if other != "espeak" {
                tracing::warn!(engine = other, "unknown speech.engine, using espeak");
            }
            Arc::new(Espeak { voice: params.speech.voice.clone(), rate: params.speech.rate_wpm.clamp(80, 450) as u32 })
        }
    };
    let sink = choose_sink(&params, &daemon, data.root()).await?;
    let speech = SpeechQueue::start(tts, sink, clamped_size(params.speech.queue_size, 1, 10_000))
        .with_max_chars(clamped_size(params.speech.max_chars, 1, 1_000_000));
    tracing::info!(output = %speech.sink_name(), "speech output");
    {
        let speech = speech.clone();
        tokio::spawn(stop_speaking.for_each(move |_| {
            tracing::info!("stop_speaking: stopping speech and draining the queue");
            speech.stop();
            futures::future::ready(())
        }));
    }
    {
        let mut speaking = speech.speaking();
        tokio::spawn(async move {
            let _ = speaking_pub.publish(&Bool { data: false });
            while speaking.changed().await.is_ok() {
                let v = *speaking.borrow_and_update();
                if let Err(e) = speaking_pub.publish(&Bool { data: v }) {
                    tracing::warn!("cannot publish /rosa/speaking: {e}");
                }
            }
        });
    }

    // State topics and the robot description.
    let rate = Arc::new(Mutex::new(0.0f64));
    {
        let daemon = daemon.clone();
        let rate = rate.clone();
        let mut rate_param = declared.watch();
        let period_now = move |p: &ReachyParams| Duration::from_secs_f64(1.0 / p.publish_rate_hz.clamp(1.0, 200.0));
        let mut period = period_now(&rate_param.borrow());
        let mut pubs = StatePublisher { joints, tf, tf_static, description, urdf: None, urdf_text: String::new(), static_sent: false };
        tokio::spawn(async move {
            // Publish each new state from the stream (at most every `period`); check the link and
            // the URDF at least every 200 ms.
            let mut states = daemon.state_watch();
            let mut last_sent = std::time::Instant::now() - period;
            let mut was_connected = false;
            let mut urdf_due = true;
            let (mut count, mut window) = (0u32, std::time::Instant::now());
            loop {
                if rate_param.has_changed().unwrap_or(false) {
                    period = period_now(&rate_param.borrow_and_update());
                }
                let fresh = tokio::select! {
                    r = states.changed() => r.is_ok(),
                    _ = tokio::time::sleep(Duration::from_millis(200)) => false,
                };
                let connected = daemon.link().is_connected();
                if connected && !was_connected {
                    urdf_due = true; // (re)connected: the daemon may have restarted
                }
                was_connected = connected;
                if connected && urdf_due {
                    match daemon.urdf().await {
                        Ok(text) => {
                            pubs.set_urdf(urdf::with_daemon_meshes(&text, daemon.base_url()));
                            urdf_due = false;
                        }
                        Err(e) => tracing::warn!("cannot get the URDF yet: {e}"),
                    }
                }
                if fresh && connected && last_sent.elapsed() >= period.mul_f64(0.9) {
                    let s = states.borrow_and_update().clone();
                    if let Some(s) = s {
                        pubs.publish(&s);
                        last_sent = std::time::Instant::now();
                        count += 1;
                    }
                }
                let el = window.elapsed().as_secs_f64();
                if el >= 2.0 {
                    *rate.lock().expect("rate lock") = count as f64 / el;
                    count = 0;
                    window = std::time::Instant::now();
                }
            }
        });
    }
    {
        let daemon = daemon.clone();
        let url = params.daemon_url.clone();
        let sink = speech.sink_name().to_string();
        let speaking = speech.speaking();
        let rate = rate.clone();
        tokio::spawn(async move {
            // One status per period, and one more at once when the level changes (OK, WARN,
            // ERROR): while the daemon is down the link goes connecting → disconnected → … at every
            // attempt, which is no news.
            let mut tick = tokio::time::interval(DIAGNOSTICS_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut link = daemon.link_watch();
            let mut last_level = None;
            loop {
                tokio::select! {
                    _ = tick.tick() => {},
                    r = link.changed() => {
                        if r.is_err() {
                            return;
                        }
                        if Some(link_level(&link.borrow_and_update())) == last_level {
                            continue;
                        }
                    }
                }
                let l = link.borrow_and_update().clone();
                let r = *rate.lock().expect("rate lock");
                let msg = diagnostics(&l, &url, r, &sink, *speaking.borrow());
                last_level = Some(link_level(&l));
                if let Err(e) = diag.publish(&msg) {
                    tracing::warn!("cannot publish /diagnostics: {e}");
                }
                tick.reset();
            }
        });
    }

    // The MCP server.
    let vision = match Vision::new(params.vision.clone()) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!("no vision model: {e}");
            None
        }
    };
    let driver = Arc::new(Driver {
        daemon: daemon.clone(),
        limits: REACHY_MINI,
        speech: speech.clone(),
        camera,
        vision,
        data_dir: data.clone(),
        emotions_dataset: params.emotions_dataset.clone(),
        move_timeout_margin: clamped_seconds(params.move_timeout_margin_sec, 0.5, 600.0).as_secs_f64(),
    });
    let cancel = tokio_util::sync::CancellationToken::new();
    let port = u16::try_from(params.mcp_port).map_err(|_| anyhow::anyhow!("mcp_port {} is not a port", params.mcp_port))?;
    let guard = Guard::new(&params.mcp_access, &params.mcp_bind, data.root())
        .map_err(|e| anyhow::Error::new(ConfigurationError(format!("{e} (./rosa setup creates it)"))))?;
    let token = guard.requires_token();
    let (addr, server) = tools::serve(ReachyTools::new(driver), &params.mcp_bind, port, &params.mcp_path, guard, cancel.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve MCP on {}:{}: {e}", params.mcp_bind, params.mcp_port))?;
    tracing::info!(mcp = %format!("http://{addr}{}", params.mcp_path), token, daemon = %params.daemon_url, "reachy_driver ready");

    ros::shutdown_signal().await;
    tracing::info!("reachy_driver shutting down");
    speech.stop();
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    spinner.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_levels_follow_the_link() {
        let up = Link::Connected { since: SystemTime::now(), daemon_state: "running".into(), version: "1.12.0".into(), simulation: "mockup-sim".into() };
        let d = diagnostics(&up, "http://x", 50.0, "files", false);
        assert_eq!(d.status[0].level, DiagnosticStatus::OK as u8);
        assert!(d.status[0].values.iter().any(|k| k.key == "joint_states_hz" && k.value == "50.0"));
        let down = Link::Disconnected { since: SystemTime::now(), reason: "refused".into() };
        let d = diagnostics(&down, "http://x", 0.0, "files", false);
        assert_eq!(d.status[0].level, DiagnosticStatus::ERROR as u8);
        assert!(d.status[0].message.contains("refused"));
    }

    #[test]
    fn defaults_match_the_contract() {
        let p: ReachyParams = crate::config::from_params(vec![("llm.urls".into(), serde_json::json!(["http://a/v1"]))]).unwrap();
        assert_eq!(p.mcp_port, 5001);
        assert_eq!(p.mcp_path, "/mcp");
        assert_eq!(p.mcp_bind, "127.0.0.1");
        assert_eq!(p.daemon_url, "http://localhost:8000");
    }
}
