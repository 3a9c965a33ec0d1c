//! Client of the Reachy Mini daemon: its HTTP API (reqwest) and its `/ws/sdk` state stream
//! (tokio-tungstenite). No r2r here.
//!
//! The stream task keeps the latest [`RobotState`] and the [`Link`] state (connected or not, since
//! when, why). Calls fail fast with [`DaemonError::Down`] while the stream is disconnected, so a tool
//! never hangs on a daemon that is restarting; the stream reconnects by itself.

use super::limits::Motion;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error("the Reachy Mini daemon at {url} is not reachable ({reason}); the driver reconnects by itself, try again shortly")]
    Down { url: String, reason: String },
    #[error("the daemon refused {what}: HTTP {status}: {body}")]
    Http { what: String, status: u16, body: String },
    #[error("the daemon did not answer {what} within {secs:.0} s")]
    Timeout { what: String, secs: f64 },
    #[error("unexpected answer from the daemon to {what}: {message}")]
    Bad { what: String, message: String },
}

/// The robot's state as streamed by the daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct RobotState {
    /// `[yaw_body, stewart_1 … stewart_6]`, radians.
    pub head_joints: Vec<f64>,
    /// `[right, left]`, radians.
    pub antennas: [f64; 2],
    /// The head pose, a row-major 4×4 homogeneous matrix (metres) in the daemon's world frame.
    pub head_pose: [[f64; 4]; 4],
    pub received: SystemTime,
}

impl RobotState {
    pub fn body_yaw(&self) -> f64 {
        self.head_joints.first().copied().unwrap_or(0.0)
    }

    /// The head pose as x, y, z (m) and roll, pitch, yaw (rad, extrinsic xyz as the daemon uses).
    pub fn head_xyzrpy(&self) -> [f64; 6] {
        matrix_to_xyzrpy(&self.head_pose)
    }
}

/// Row-major rotation+translation → x y z roll pitch yaw (R = Rz(yaw)·Ry(pitch)·Rx(roll)).
pub fn matrix_to_xyzrpy(m: &[[f64; 4]; 4]) -> [f64; 6] {
    let pitch = (-m[2][0]).clamp(-1.0, 1.0).asin();
    let (roll, yaw) = if pitch.cos().abs() > 1e-9 {
        (m[2][1].atan2(m[2][2]), m[1][0].atan2(m[0][0]))
    } else {
        (0.0, (-m[0][1]).atan2(m[1][1]))
    };
    [m[0][3], m[1][3], m[2][3], roll, pitch, yaw]
}

/// The daemon connection, as diagnostics report it.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    /// Never connected yet.
    Connecting,
    Connected { since: SystemTime, daemon_state: String, version: String, simulation: String },
    Disconnected { since: SystemTime, reason: String },
}

impl Link {
    pub fn is_connected(&self) -> bool {
        matches!(self, Link::Connected { .. })
    }
}

#[derive(Clone)]
pub struct Daemon {
    base: String,
    http: reqwest::Client,
    link: watch::Receiver<Link>,
    state: watch::Receiver<Option<RobotState>>,
    request_timeout: Duration,
}

/// The sending halves, owned by the stream task.
pub struct StreamHandles {
    pub link: watch::Sender<Link>,
    pub state: watch::Sender<Option<RobotState>>,
}

#[derive(Deserialize)]
struct Uuid {
    uuid: String,
}

impl Daemon {
    /// A client for the daemon at `base` (e.g. `http://localhost:8000`) and the stream handles to
    /// give to [`run_stream`].
    pub fn new(base: &str, request_timeout: Duration) -> Result<(Self, StreamHandles), DaemonError> {
        let base = base.trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(request_timeout)
            .build()
            .map_err(|e| DaemonError::Bad { what: "the HTTP client".into(), message: e.to_string() })?;
        let (link_tx, link) = watch::channel(Link::Connecting);
        let (state_tx, state) = watch::channel(None);
        Ok((
            Self { base, http, link, state, request_timeout },
            StreamHandles { link: link_tx, state: state_tx },
        ))
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn link(&self) -> Link {
        self.link.borrow().clone()
    }

    pub fn link_watch(&self) -> watch::Receiver<Link> {
        self.link.clone()
    }

    pub fn state(&self) -> Option<RobotState> {
        self.state.borrow().clone()
    }

    pub fn state_watch(&self) -> watch::Receiver<Option<RobotState>> {
        self.state.clone()
    }

    /// Fail fast when the stream says the daemon is gone.
    fn check_up(&self) -> Result<(), DaemonError> {
        match &*self.link.borrow() {
            Link::Connected { .. } => Ok(()),
            Link::Connecting => Err(DaemonError::Down { url: self.base.clone(), reason: "not connected yet".into() }),
            Link::Disconnected { since, reason } => Err(DaemonError::Down {
                url: self.base.clone(),
                reason: format!(
                    "{reason}, for {:.0} s",
                    SystemTime::now().duration_since(*since).unwrap_or_default().as_secs_f64()
                ),
            }),
        }
    }

    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Result<Value, DaemonError> {
        self.check_up()?;
        let resp = req.send().await.map_err(|e| self.net_error(what, e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.net_error(what, e))?;
        if !status.is_success() {
            let body = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("detail").map(|d| d.as_str().map(str::to_string).unwrap_or_else(|| d.to_string())))
                .unwrap_or(text);
            return Err(DaemonError::Http { what: what.into(), status: status.as_u16(), body: crate::llm::truncate(&body, 500) });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| DaemonError::Bad { what: what.into(), message: e.to_string() })
    }

    fn net_error(&self, what: &str, e: reqwest::Error) -> DaemonError {
        if e.is_timeout() {
            DaemonError::Timeout { what: what.into(), secs: self.request_timeout.as_secs_f64() }
        } else {
            DaemonError::Down { url: self.base.clone(), reason: format!("{what}: {e}") }
        }
    }

    async fn get(&self, path: &str) -> Result<Value, DaemonError> {
        let what = format!("GET {path}");
        match self.send(&what, self.http.get(format!("{}{path}", self.base))).await {
            // A pooled connection the daemon closed (it does after an error): one retry, GETs only.
            Err(DaemonError::Down { .. }) if self.link.borrow().is_connected() => {
                self.send(&what, self.http.get(format!("{}{path}", self.base))).await
            }
            r => r,
        }
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, DaemonError> {
        self.send(&format!("POST {path}"), self.http.post(format!("{}{path}", self.base)).json(&body)).await
    }

    fn uuid(what: &str, v: Value) -> Result<String, DaemonError> {
        serde_json::from_value::<Uuid>(v)
            .map(|u| u.uuid)
            .map_err(|e| DaemonError::Bad { what: what.into(), message: e.to_string() })
    }

    /// `POST /api/move/goto` with an already clamped motion; returns the move's uuid.
    pub async fn goto(&self, m: &Motion) -> Result<String, DaemonError> {
        let v = self.post("/api/move/goto", goto_body(m)).await?;
        Self::uuid("POST /api/move/goto", v)
    }

    pub async fn running(&self) -> Result<Vec<String>, DaemonError> {
        let v = self.get("/api/move/running").await?;
        serde_json::from_value::<Vec<Uuid>>(v)
            .map(|l| l.into_iter().map(|u| u.uuid).collect())
            .map_err(|e| DaemonError::Bad { what: "GET /api/move/running".into(), message: e.to_string() })
    }

    /// Stop one move. A move that already ended is not an error.
    pub async fn stop(&self, uuid: &str) -> Result<(), DaemonError> {
        match self.post("/api/move/stop", json!({ "uuid": uuid })).await {
            Ok(_) => Ok(()),
            Err(DaemonError::Http { status: 404 | 500, body, .. }) if body.contains("not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Wait until the move `uuid` is no longer running (or `timeout`).
    pub async fn wait_move(&self, uuid: &str, timeout: Duration) -> Result<bool, DaemonError> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.running().await?.iter().any(|u| u == uuid) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    pub async fn wake_up(&self) -> Result<String, DaemonError> {
        let v = self.post("/api/move/play/wake_up", Value::Null).await?;
        Self::uuid("wake_up", v)
    }

    pub async fn goto_sleep(&self) -> Result<String, DaemonError> {
        let v = self.post("/api/move/play/goto_sleep", Value::Null).await?;
        Self::uuid("goto_sleep", v)
    }

    /// Names of the recorded moves of a dataset (`pollen-robotics/reachy-mini-emotions-library`).
    pub async fn list_moves(&self, dataset: &str) -> Result<Vec<String>, DaemonError> {
        let path = format!("/api/move/recorded-move-datasets/list/{dataset}");
        let v = self.get(&path).await?;
        serde_json::from_value(v).map_err(|e| DaemonError::Bad { what: path, message: e.to_string() })
    }

    pub async fn play_move(&self, dataset: &str, name: &str) -> Result<String, DaemonError> {
        let path = format!("/api/move/play/recorded-move-dataset/{dataset}/{name}");
        let v = self.post(&path, Value::Null).await?;
        Self::uuid(&path, v)
    }

    /// The URDF (`GET /api/kinematics/urdf`, `{"urdf": "<robot …>"}`).
    pub async fn urdf(&self) -> Result<String, DaemonError> {
        let v = self.get("/api/kinematics/urdf").await?;
        v.get("urdf")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| DaemonError::Bad { what: "GET /api/kinematics/urdf".into(), message: "no `urdf` field".into() })
    }

    /// Direction of arrival: `Some((angle_rad, speech_detected))`, angle 0 = left, π/2 = front,
    /// π = right; `None` when the daemon has no microphone array.
    pub async fn doa(&self) -> Result<Option<(f64, bool)>, DaemonError> {
        let v = self.get("/api/state/doa").await?;
        if v.is_null() {
            return Ok(None);
        }
        let angle = v.get("angle").and_then(Value::as_f64);
        let speech = v.get("speech_detected").and_then(Value::as_bool).unwrap_or(false);
        Ok(angle.map(|a| (a, speech)))
    }

    pub async fn status(&self) -> Result<Value, DaemonError> {
        self.get("/api/daemon/status").await
    }

    /// Upload a WAV to the daemon's sound directory and play it on the robot's speaker.
    pub async fn play_wav(&self, name: &str, wav: Vec<u8>) -> Result<(), DaemonError> {
        self.check_up()?;
        let part = reqwest::multipart::Part::bytes(wav)
            .file_name(name.to_string())
            .mime_str("audio/wav")
            .map_err(|e| DaemonError::Bad { what: "upload".into(), message: e.to_string() })?;
        let form = reqwest::multipart::Form::new().part("file", part);
        let v = self
            .send("POST /api/media/sounds/upload", self.http.post(format!("{}/api/media/sounds/upload", self.base)).multipart(form))
            .await?;
        let path = v.get("path").and_then(Value::as_str).unwrap_or(name).to_string();
        self.post("/api/media/play_sound", json!({ "file": path })).await?;
        Ok(())
    }

    pub async fn stop_sound(&self) -> Result<(), DaemonError> {
        self.post("/api/media/stop_sound", Value::Null).await.map(|_| ())
    }

    /// Whether the daemon has a speaker it can play to (media enabled and not released).
    pub async fn has_speaker(&self) -> bool {
        match self.status().await {
            Ok(s) => !s.get("no_media").and_then(Value::as_bool).unwrap_or(true)
                && !s.get("media_released").and_then(Value::as_bool).unwrap_or(false),
            Err(_) => false,
        }
    }
}

/// The JSON body of `POST /api/move/goto`.
pub fn goto_body(m: &Motion) -> Value {
    let mut body = json!({ "duration": m.duration, "interpolation": m.interpolation.daemon_name() });
    if let Some(h) = m.head {
        body["head_pose"] = json!({ "x": h.x, "y": h.y, "z": h.z, "roll": h.roll, "pitch": h.pitch, "yaw": h.yaw });
    }
    if let Some(a) = m.antennas {
        body["antennas"] = json!(a);
    }
    if let Some(b) = m.body_yaw {
        body["body_yaw"] = json!(b);
    }
    body
}

/// One message of the `/ws/sdk` stream, applied to the state being built.
#[derive(Debug, PartialEq)]
pub enum StreamMsg {
    Joints { head: Vec<f64>, antennas: [f64; 2] },
    HeadPose([[f64; 4]; 4]),
    Status { state: String, version: String, simulation: String },
    Other,
}

pub fn parse_stream_msg(text: &str) -> StreamMsg {
    let Ok(v) = serde_json::from_str::<Value>(text) else { return StreamMsg::Other };
    let floats = |v: Option<&Value>| -> Option<Vec<f64>> {
        v?.as_array()?.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>()
    };
    match v.get("type").and_then(Value::as_str) {
        Some("joint_positions") => {
            let (Some(head), Some(ant)) = (floats(v.get("head_joint_positions")), floats(v.get("antennas_joint_positions"))) else {
                return StreamMsg::Other;
            };
            if ant.len() != 2 {
                return StreamMsg::Other;
            }
            StreamMsg::Joints { head, antennas: [ant[0], ant[1]] }
        }
        Some("head_pose") => {
            let Some(rows) = v.get("head_pose").and_then(Value::as_array) else { return StreamMsg::Other };
            let mut m = [[0.0; 4]; 4];
            if rows.len() != 4 {
                return StreamMsg::Other;
            }
            for (i, r) in rows.iter().enumerate() {
                match floats(Some(r)) {
                    Some(r) if r.len() == 4 => m[i].copy_from_slice(&r),
                    _ => return StreamMsg::Other,
                }
            }
            StreamMsg::HeadPose(m)
        }
        Some("daemon_status") => {
            let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            let simulation = if v.get("mockup_sim_enabled").and_then(Value::as_bool) == Some(true) {
                "mockup-sim"
            } else if v.get("simulation_enabled").and_then(Value::as_bool) == Some(true) {
                "mujoco"
            } else {
                "none (real robot)"
            };
            StreamMsg::Status { state: s("state"), version: s("version"), simulation: simulation.into() }
        }
        _ => StreamMsg::Other,
    }
}

/// Keep the stream connected forever: connect to `<base>/ws/sdk`, publish the state and link,
/// reconnect after `retry` when it drops. A stream that stays silent for `stale` counts as down.
pub async fn run_stream(base: String, h: StreamHandles, retry: Duration, stale: Duration) {
    let ws_url = format!("{}/ws/sdk", base.replacen("http", "ws", 1));
    let logged = Arc::new(Mutex::new(String::new()));
    loop {
        let reason = match tokio::time::timeout(Duration::from_secs(3), tokio_tungstenite::connect_async(&ws_url)).await {
            Err(_) => "connecting timed out".to_string(),
            Ok(Err(e)) => format!("cannot connect to {ws_url}: {e}"),
            Ok(Ok((mut ws, _))) => {
                tracing::info!(url = %ws_url, "daemon stream connected");
                *logged.lock().expect("lock") = String::new();
                let mut joints: Option<(Vec<f64>, [f64; 2])> = None;
                let mut pose: Option<[[f64; 4]; 4]> = None;
                let mut marked = false;
                loop {
                    let msg = match tokio::time::timeout(stale, ws.next()).await {
                        Err(_) => break format!("no data from {ws_url} for {:.1} s", stale.as_secs_f64()),
                        Ok(None) => break "the daemon closed the stream".to_string(),
                        Ok(Some(Err(e))) => break format!("stream error: {e}"),
                        Ok(Some(Ok(m))) => m,
                    };
                    let text = match msg {
                        tokio_tungstenite::tungstenite::Message::Text(t) => t.to_string(),
                        tokio_tungstenite::tungstenite::Message::Close(_) => break "the daemon closed the stream".to_string(),
                        _ => continue,
                    };
                    // A state is published per joints message (the daemon's control rate), with
                    // the latest head pose.
                    match parse_stream_msg(&text) {
                        StreamMsg::Joints { head, antennas } => joints = Some((head, antennas)),
                        StreamMsg::HeadPose(m) => {
                            pose = Some(m);
                            if marked {
                                continue;
                            }
                        }
                        StreamMsg::Status { state, version, simulation } => {
                            let link = Link::Connected { since: SystemTime::now(), daemon_state: state, version, simulation };
                            h.link.send_if_modified(|l| match (l, &link) {
                                (Link::Connected { daemon_state: a, version: va, simulation: sa, .. },
                                 Link::Connected { daemon_state: b, version: vb, simulation: sb, .. })
                                    if a == b && va == vb && sa == sb => false,
                                (l, _) => {
                                    *l = link.clone();
                                    true
                                }
                            });
                            marked = true;
                            continue;
                        }
                        StreamMsg::Other => continue,
                    }
                    if !marked {
                        // Data flows before the first status message: the daemon is up.
                        h.link.send_replace(Link::Connected {
                            since: SystemTime::now(),
                            daemon_state: "running".into(),
                            version: String::new(),
                            simulation: String::new(),
                        });
                        marked = true;
                    }
                    if let (Some((head, antennas)), Some(m)) = (&joints, &pose) {
                        h.state.send_replace(Some(RobotState {
                            head_joints: head.clone(),
                            antennas: *antennas,
                            head_pose: *m,
                            received: SystemTime::now(),
                        }));
                    }
                }
            }
        };
        {
            let mut last = logged.lock().expect("lock");
            if *last != reason {
                tracing::warn!(url = %ws_url, "daemon stream down: {reason}");
                *last = reason.clone();
            }
        }
        let since = match &*h.link.borrow() {
            Link::Disconnected { since, .. } => *since,
            _ => SystemTime::now(),
        };
        h.link.send_replace(Link::Disconnected { since, reason });
        tokio::time::sleep(retry).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reachy::limits::{HeadPose, Interpolation};

    #[test]
    fn goto_body_has_the_daemon_field_names() {
        let m = Motion {
            head: Some(HeadPose { x: 0.01, z: -0.02, yaw: 0.5, ..Default::default() }),
            antennas: Some([0.1, -0.1]),
            body_yaw: None,
            duration: 1.0,
            interpolation: Interpolation::Ease,
        };
        let b = goto_body(&m);
        assert_eq!(b["interpolation"], "ease_in_out");
        assert_eq!(b["head_pose"]["x"], 0.01);
        assert_eq!(b["head_pose"]["yaw"], 0.5);
        assert_eq!(b["antennas"], json!([0.1, -0.1]));
        assert!(b.get("body_yaw").is_none());
        assert_eq!(goto_body(&Motion { duration: 0.5, ..Default::default() }), json!({"duration": 0.5, "interpolation": "minjerk"}));
    }

    #[test]
    fn stream_messages_are_parsed_and_garbage_ignored() {
        let j = r#"{"type": "joint_positions", "head_joint_positions": [0.1, 0.6, -0.6, 0.6, -0.6, 0.6, -0.6], "antennas_joint_positions": [-0.17, 0.17]}"#;
        match parse_stream_msg(j) {
            StreamMsg::Joints { head, antennas } => {
                assert_eq!(head.len(), 7);
                assert_eq!(antennas, [-0.17, 0.17]);
            }
            other => panic!("{other:?}"),
        }
        let p = r#"{"type": "head_pose", "head_pose": [[1,0,0,0.01],[0,1,0,0],[0,0,1,0.02],[0,0,0,1]]}"#;
        assert!(matches!(parse_stream_msg(p), StreamMsg::HeadPose(m) if m[0][3] == 0.01 && m[2][3] == 0.02));
        let s = r#"{"type": "daemon_status", "state": "running", "version": "1.12.0", "mockup_sim_enabled": true}"#;
        assert_eq!(parse_stream_msg(s), StreamMsg::Status { state: "running".into(), version: "1.12.0".into(), simulation: "mockup-sim".into() });
        for bad in ["", "nope", "{}", r#"{"type": "head_pose", "head_pose": [[1,2]]}"#,
                    r#"{"type": "joint_positions", "head_joint_positions": ["a"], "antennas_joint_positions": [1, 2]}"#,
                    r#"{"type": "joint_positions", "head_joint_positions": [1], "antennas_joint_positions": [1]}"#] {
            assert_eq!(parse_stream_msg(bad), StreamMsg::Other, "{bad}");
        }
    }

    #[test]
    fn matrix_to_xyzrpy_inverts_the_daemon_convention() {
        let (r, p, y) = (0.1f64, -0.2f64, 0.3f64);
        let (cr, sr, cp, sp, cy, sy) = (r.cos(), r.sin(), p.cos(), p.sin(), y.cos(), y.sin());
        // R = Rz(y) Ry(p) Rx(r)
        let m = [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr, 0.01],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr, 0.02],
            [-sp, cp * sr, cp * cr, 0.03],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let v = matrix_to_xyzrpy(&m);
        for (a, b) in v.iter().zip([0.01, 0.02, 0.03, r, p, y]) {
            assert!((a - b).abs() < 1e-12, "{v:?}");
        }
    }

    #[tokio::test]
    async fn calls_fail_fast_while_the_stream_is_down() {
        let (d, h) = Daemon::new("http://127.0.0.1:9", Duration::from_secs(5)).unwrap();
        let t = Instant::now();
        let e = d.running().await.unwrap_err();
        assert!(matches!(e, DaemonError::Down { .. }), "{e}");
        assert!(e.to_string().contains("not connected yet"), "{e}");
        h.link.send_replace(Link::Disconnected { since: SystemTime::now(), reason: "connection refused".into() });
        let e = d.goto(&Motion::default()).await.unwrap_err();
        assert!(e.to_string().contains("connection refused"), "{e}");
        assert!(t.elapsed() < Duration::from_millis(100));
    }
}
