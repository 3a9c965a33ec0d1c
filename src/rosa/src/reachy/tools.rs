//! The Reachy Mini's MCP tools (rmcp, streamable HTTP): the names fixed by DESIGN.md.
//!
//! [`ReachyTools`] holds the daemon client, the speech queue and the camera, never the ROS node:
//! the ROS side reaches it through channels (speech stop, camera frames, robot state). A robot
//! failure (daemon down, bad argument, no camera) is a tool result with `is_error`.

use super::camera::{self, Camera};
use super::daemon::{Daemon, DaemonError};
use super::limits::{HeadPose, Interpolation, Limits, Motion};
use super::speech::SpeechQueue;
use super::vision::Vision;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{tool, tool_handler, tool_router, ErrorData as McpError, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;
use std::f64::consts::FRAC_PI_2;
use crate::data_dir::DataDir;
use crate::mcp_server::Guard;
use std::sync::Arc;
use std::time::Duration;

/// Head yaw per `multiple` of move_head_left/right, degrees.
pub const HEAD_STEP_DEG: f64 = 15.0;
/// Largest `multiple` of move_head_left/right.
pub const MAX_MULTIPLE: u32 = 4;

/// Everything the tools need.
pub struct Driver {
    pub daemon: Daemon,
    pub limits: Limits,
    pub speech: SpeechQueue,
    pub camera: Camera,
    pub vision: Option<Vision>,
    /// Where pictures go and the only place images are read from (see [`DataDir`]).
    pub data_dir: DataDir,
    pub emotions_dataset: String,
    /// Extra time allowed past a move's duration when waiting for it, seconds.
    pub move_timeout_margin: f64,
}

#[derive(Clone)]
pub struct ReachyTools {
    driver: Arc<Driver>,
    tool_router: ToolRouter<Self>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum PositionUnit {
    /// millimetres (default)
    #[default]
    Mm,
    /// metres
    M,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum AngleUnit {
    /// degrees (default)
    #[default]
    Deg,
    /// radians
    Rad,
}

/// A head/antennas/body target. Omitted head values keep their present value.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct GotoTarget {
    /// Head position forward (+) / backward (−), in `position_unit`. Limit −30…+30 mm.
    pub x: Option<f64>,
    /// Head position left (+) / right (−), in `position_unit`. Limit −30…+30 mm.
    pub y: Option<f64>,
    /// Head position up (+) / down (−), in `position_unit`. Limit −30…+20 mm.
    pub z: Option<f64>,
    /// Head roll (tilt toward the right shoulder +), in `angle_unit`. Limit ±35° (roll and pitch together stay within a 35° cone).
    pub roll: Option<f64>,
    /// Head pitch (look down +, up −), in `angle_unit`. Limit ±35°.
    pub pitch: Option<f64>,
    /// Head yaw (turn left +, right −), in `angle_unit`. Limit: body yaw ±55°, and ±179° overall.
    pub yaw: Option<f64>,
    /// Antenna angles [right, left], in `angle_unit`. Limit ±3.05 rad (±174.8°) each.
    pub antennas: Option<[f64; 2]>,
    /// Body rotation (left +), in `angle_unit`. Limit ±160°.
    pub body_yaw: Option<f64>,
    /// Duration of the move in seconds (default 1.0). Limit 0.2…30 s.
    pub duration: Option<f64>,
    /// Interpolation: linear, minjerk (default), ease, cartoon.
    pub interpolation: Option<Interpolation>,
    /// Unit of x, y, z: "mm" (default) or "m".
    pub position_unit: Option<PositionUnit>,
    /// Unit of roll, pitch, yaw, antennas and body_yaw: "deg" (default) or "rad".
    pub angle_unit: Option<AngleUnit>,
    /// Wait until the move has finished (default true); with false the move's id is returned at once.
    pub wait: Option<bool>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct MoveHead {
    /// How many 15° steps to turn (default 1, at most 4). The result stays within the head's yaw limit.
    pub multiple: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct PlayEmotion {
    /// The emotion's name, from list_emotions (e.g. "cheerful"); a random variant is played when
    /// several exist ("cheerful1", "cheerful2"…), or give the exact variant's name.
    pub emotion: String,
    /// Wait until the emotion has been played (default true).
    pub wait: Option<bool>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct TakePicture {
    /// Also describe the picture with the vision model (default false).
    pub describe: Option<bool>,
    /// What to ask the vision model about the picture (implies describe).
    pub question: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DescribeImage {
    /// A JPEG/PNG/GIF/WebP file of the robot's data dir (e.g. a path from take_picture; relative
    /// paths are taken in the data dir; nothing outside it is read) or an http(s) URL.
    pub image: String,
    /// What to ask about the image (default: describe it briefly).
    pub question: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Speak {
    /// What to say (plain text, in the user's language).
    pub text: String,
    /// Stop what is being said and drop queued speech first (default false: queue after it).
    pub forcefully_interrupt: Option<bool>,
}

fn ok(text: impl Into<String>) -> Result<CallToolResult, McpError> {
    Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
}

fn fail(text: impl Into<String>) -> Result<CallToolResult, McpError> {
    Ok(CallToolResult::error(vec![ContentBlock::text(text)]))
}

fn deg(v: f64) -> String {
    format!("{:.1}°", v.to_degrees())
}

/// The emotion to play for `wanted` among the dataset's `names`: the exact name, else a random
/// one of its numbered variants. `None` when nothing matches.
pub fn pick_emotion(names: &[String], wanted: &str, random: u64) -> Option<String> {
    let wanted = wanted.trim().to_lowercase();
    if let Some(n) = names.iter().find(|n| n.to_lowercase() == wanted) {
        return Some(n.clone());
    }
    let variants: Vec<&String> = names.iter().filter(|n| base_name(n).to_lowercase() == wanted).collect();
    if variants.is_empty() {
        return None;
    }
    Some(variants[(random % variants.len() as u64) as usize].clone())
}

/// "cheerful1" → "cheerful".
pub fn base_name(name: &str) -> &str {
    name.trim_end_matches(|c: char| c.is_ascii_digit())
}

/// Emotion names grouped by base name, with their variant counts, sorted.
pub fn group_emotions(names: &[String]) -> Vec<(String, usize)> {
    let mut m = std::collections::BTreeMap::<String, usize>::new();
    for n in names {
        *m.entry(base_name(n).to_string()).or_default() += 1;
    }
    m.into_iter().collect()
}

/// How far the robot's state is from a motion's target, beyond 3 mm / 3° per value.
pub fn shortfall(m: &Motion, s: &super::daemon::RobotState) -> Vec<String> {
    const POS: f64 = 0.003;
    let ang = 3f64.to_radians();
    let mut out = Vec::new();
    let [x, y, z, roll, pitch, yaw] = s.head_xyzrpy();
    if let Some(h) = m.head {
        for (name, want, got) in [("x", h.x, x), ("y", h.y, y), ("z", h.z, z)] {
            if (want - got).abs() > POS {
                out.push(format!("{name} {:.1} mm instead of {:.1} mm", got * 1000.0, want * 1000.0));
            }
        }
        for (name, want, got) in [("roll", h.roll, roll), ("pitch", h.pitch, pitch), ("yaw", h.yaw, yaw)] {
            if (want - got).abs() > ang {
                out.push(format!("{name} {} instead of {}", deg(got), deg(want)));
            }
        }
    }
    if let Some(b) = m.body_yaw {
        if (b - s.body_yaw()).abs() > ang {
            out.push(format!("body_yaw {} instead of {}", deg(s.body_yaw()), deg(b)));
        }
    }
    if let Some(a) = m.antennas {
        for (i, name) in ["right antenna", "left antenna"].iter().enumerate() {
            if (a[i] - s.antennas[i]).abs() > ang {
                out.push(format!("{name} {} instead of {}", deg(s.antennas[i]), deg(a[i])));
            }
        }
    }
    out
}

/// The head yaw toward a direction of arrival (0 = left, π/2 = front, π = right).
pub fn yaw_toward(doa: f64) -> f64 {
    FRAC_PI_2 - doa
}

fn random() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.subsec_nanos() as u64).wrapping_mul(6364136223846793005) ^ t.as_secs()
}

impl ReachyTools {
    /// The dataset's move names, with a clear message when the daemon does not have the library.
    async fn emotions(&self) -> Result<Vec<String>, String> {
        let ds = &self.driver.emotions_dataset;
        match self.driver.daemon.list_moves(ds).await {
            Ok(n) => Ok(n),
            Err(DaemonError::Http { status: 404 | 500, body, .. }) => Err(format!(
                "the emotions library `{ds}` is not available on the daemon: it must be in the daemon's \
                 Hugging Face cache ($HF_HOME/hub/datasets--{}) or downloadable ({})",
                ds.replace('/', "--"),
                crate::llm::truncate(&body, 200)
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn new(driver: Arc<Driver>) -> Self {
        Self { driver, tool_router: Self::tool_router() }
    }

    fn current(&self) -> (HeadPose, f64) {
        match self.driver.daemon.state() {
            Some(s) => {
                let [x, y, z, roll, pitch, yaw] = s.head_xyzrpy();
                (HeadPose { x, y, z, roll, pitch, yaw }, s.body_yaw())
            }
            None => (HeadPose::default(), 0.0),
        }
    }

    /// Clamp, send, and (optionally) wait: the one path every motion takes.
    async fn move_to(&self, m: Motion, wait: bool, what: &str) -> Result<String, String> {
        let (_, body) = self.current();
        let c = self.driver.limits.clamp(&m, body).map_err(|e| format!("{what}: {e}"))?;
        let uuid = self.driver.daemon.goto(&c.motion).await.map_err(|e| e.to_string())?;
        let clamped = if c.notes.is_empty() { String::new() } else { format!(" (limited: {})", c.notes.join("; ")) };
        if !wait {
            return Ok(format!("{what}: move {uuid} started, {:.2} s{clamped}", c.motion.duration));
        }
        let timeout = Duration::from_secs_f64(c.motion.duration + self.driver.move_timeout_margin);
        match self.driver.daemon.wait_move(&uuid, timeout).await {
            Ok(true) => {
                // The stream lags the move's end by a sample or two.
                tokio::time::sleep(Duration::from_millis(60)).await;
                let short = self.driver.daemon.state().map(|s| shortfall(&c.motion, &s)).unwrap_or_default();
                let short = if short.is_empty() {
                    String::new()
                } else {
                    format!(" NOTE: the robot stopped short of the target ({}): that pose is outside what it can reach", short.join(", "))
                };
                Ok(format!("{what}: done in {:.2} s{clamped}; {}{short}", c.motion.duration, self.pose_text()))
            }
            Ok(false) => Err(format!("{what}: move {uuid} still running after {:.1} s", timeout.as_secs_f64())),
            Err(e) => Err(format!("{what}: {e}")),
        }
    }

    fn pose_text(&self) -> String {
        match self.driver.daemon.state() {
            Some(s) => {
                let [x, y, z, roll, pitch, yaw] = s.head_xyzrpy();
                format!(
                    "head x={:.1} y={:.1} z={:.1} mm, roll={} pitch={} yaw={}; body_yaw={}; antennas=[{}, {}]",
                    x * 1000.0, y * 1000.0, z * 1000.0, deg(roll), deg(pitch), deg(yaw), deg(s.body_yaw()),
                    deg(s.antennas[0]), deg(s.antennas[1])
                )
            }
            None => "no state from the daemon yet".into(),
        }
    }

    async fn wait_named(&self, what: &str, uuid: Result<String, DaemonError>, limit: f64) -> Result<CallToolResult, McpError> {
        let uuid = match uuid {
            Ok(u) => u,
            Err(e) => return fail(format!("{what}: {e}")),
        };
        match self.driver.daemon.wait_move(&uuid, Duration::from_secs_f64(limit)).await {
            Ok(true) => ok(format!("{what}: done; {}", self.pose_text())),
            Ok(false) => fail(format!("{what}: move {uuid} still running after {limit:.0} s")),
            Err(e) => fail(format!("{what}: {e}")),
        }
    }

    async fn turn(&self, direction: f64, p: MoveHead, what: &str) -> Result<CallToolResult, McpError> {
        let n = p.multiple.unwrap_or(1);
        if n == 0 {
            return fail(format!("{what}: multiple must be at least 1"));
        }
        let n = n.min(MAX_MULTIPLE);
        let (mut head, _) = self.current();
        head.yaw += direction * (HEAD_STEP_DEG * n as f64).to_radians();
        let m = Motion { head: Some(head), duration: 0.3 + 0.2 * n as f64, ..Default::default() };
        match self.move_to(m, true, what).await {
            Ok(t) => ok(t),
            Err(e) => fail(e),
        }
    }
}

#[tool_router]
impl ReachyTools {
    #[tool(description = "Move the Reachy Mini's head (position and orientation), antennas and/or body to a target. \
        Positions in mm (or m), angles in degrees (or radians); omitted head values keep their present value. \
        Every value is limited to what the robot can do safely (the reply says what was limited). \
        Waits for the move to finish unless wait=false, which returns the move's id at once.")]
    async fn goto_target(&self, Parameters(p): Parameters<GotoTarget>) -> Result<CallToolResult, McpError> {
        let pu = if p.position_unit.unwrap_or_default() == PositionUnit::M { 1.0 } else { 1e-3 };
        let au = |v: f64| if p.angle_unit.unwrap_or_default() == AngleUnit::Rad { v } else { v.to_radians() };
        let any_head = [p.x, p.y, p.z, p.roll, p.pitch, p.yaw].iter().any(Option::is_some);
        if !any_head && p.antennas.is_none() && p.body_yaw.is_none() {
            return fail("goto_target: give at least one of x, y, z, roll, pitch, yaw, antennas, body_yaw");
        }
        let (now, _) = self.current();
        let head = any_head.then(|| HeadPose {
            x: p.x.map_or(now.x, |v| v * pu),
            y: p.y.map_or(now.y, |v| v * pu),
            z: p.z.map_or(now.z, |v| v * pu),
            roll: p.roll.map_or(now.roll, au),
            pitch: p.pitch.map_or(now.pitch, au),
            yaw: p.yaw.map_or(now.yaw, au),
        });
        let m = Motion {
            head,
            antennas: p.antennas.map(|[r, l]| [au(r), au(l)]),
            body_yaw: p.body_yaw.map(au),
            duration: p.duration.unwrap_or(1.0),
            interpolation: p.interpolation.unwrap_or_default(),
        };
        match self.move_to(m, p.wait.unwrap_or(true), "goto_target").await {
            Ok(t) => ok(t),
            Err(e) => fail(e),
        }
    }

    #[tool(description = "Turn the head to the left by 15° per `multiple` (default 1, at most 4), within the head's yaw limit.")]
    async fn move_head_left(&self, Parameters(p): Parameters<MoveHead>) -> Result<CallToolResult, McpError> {
        self.turn(1.0, p, "move_head_left").await
    }

    #[tool(description = "Turn the head to the right by 15° per `multiple` (default 1, at most 4), within the head's yaw limit.")]
    async fn move_head_right(&self, Parameters(p): Parameters<MoveHead>) -> Result<CallToolResult, McpError> {
        self.turn(-1.0, p, "move_head_right").await
    }

    #[tool(description = "Bring the head, antennas and body back to the neutral pose (looking straight ahead) in 1 s.")]
    async fn reset_head(&self) -> Result<CallToolResult, McpError> {
        let m = Motion {
            head: Some(HeadPose::default()),
            antennas: Some([0.0, 0.0]),
            body_yaw: Some(0.0),
            duration: 1.0,
            interpolation: Interpolation::Minjerk,
        };
        match self.move_to(m, true, "reset_head").await {
            Ok(t) => ok(t),
            Err(e) => fail(e),
        }
    }

    #[tool(description = "Stop every running move (goto_target, emotions, wake_up, go_to_sleep) where it is.")]
    async fn stop_move(&self) -> Result<CallToolResult, McpError> {
        let running = match self.driver.daemon.running().await {
            Ok(r) => r,
            Err(e) => return fail(format!("stop_move: {e}")),
        };
        for u in &running {
            if let Err(e) = self.driver.daemon.stop(u).await {
                return fail(format!("stop_move: {e}"));
            }
        }
        ok(format!("stop_move: stopped {} move(s); {}", running.len(), self.pose_text()))
    }

    #[tool(description = "Wake the robot up (its wake-up animation; head to the neutral pose). Waits until done.")]
    async fn wake_up(&self) -> Result<CallToolResult, McpError> {
        let r = self.driver.daemon.wake_up().await;
        self.wait_named("wake_up", r, 15.0).await
    }

    #[tool(description = "Put the robot to sleep (head down, antennas folded). Waits until done.")]
    async fn go_to_sleep(&self) -> Result<CallToolResult, McpError> {
        let r = self.driver.daemon.goto_sleep().await;
        self.wait_named("go_to_sleep", r, 15.0).await
    }

    #[tool(description = "List the emotions the robot can play with play_emotion (recorded moves; numbered variants are grouped).")]
    async fn list_emotions(&self) -> Result<CallToolResult, McpError> {
        match self.emotions().await {
            Ok(names) if names.is_empty() => fail("list_emotions: the emotions library is empty"),
            Ok(names) => {
                let groups = group_emotions(&names);
                let list: Vec<String> = groups
                    .iter()
                    .map(|(n, c)| if *c > 1 { format!("{n} ({c} variants)") } else { n.clone() })
                    .collect();
                ok(format!("{} emotions: {}", groups.len(), list.join(", ")))
            }
            Err(e) => fail(format!("list_emotions: {e}")),
        }
    }

    #[tool(description = "Play a recorded emotion (from list_emotions) with the head and antennas; a random variant when several exist. Waits until done unless wait=false.")]
    async fn play_emotion(&self, Parameters(p): Parameters<PlayEmotion>) -> Result<CallToolResult, McpError> {
        let names = match self.emotions().await {
            Ok(n) => n,
            Err(e) => return fail(format!("play_emotion: {e}")),
        };
        let Some(name) = pick_emotion(&names, &p.emotion, random()) else {
            let valid: Vec<String> = group_emotions(&names).into_iter().map(|(n, _)| n).collect();
            return fail(format!("play_emotion: unknown emotion `{}`; valid emotions: {}", p.emotion, valid.join(", ")));
        };
        let uuid = match self.driver.daemon.play_move(&self.driver.emotions_dataset, &name).await {
            Ok(u) => u,
            Err(e) => return fail(format!("play_emotion `{name}`: {e}")),
        };
        if !p.wait.unwrap_or(true) {
            return ok(format!("play_emotion: playing `{name}` (move {uuid})"));
        }
        match self.driver.daemon.wait_move(&uuid, Duration::from_secs(60)).await {
            Ok(true) => ok(format!("play_emotion: played `{name}`")),
            Ok(false) => fail(format!("play_emotion: `{name}` still playing after 60 s")),
            Err(e) => fail(format!("play_emotion: {e}")),
        }
    }

    #[tool(description = "Take a picture with the robot's camera; saves a JPEG and returns its path (and a description when describe=true or a question is given).")]
    async fn take_picture(&self, Parameters(p): Parameters<TakePicture>) -> Result<CallToolResult, McpError> {
        let frame = match self.driver.camera.grab().await {
            Ok(f) => f,
            Err(e) => return fail(format!("take_picture: {e}")),
        };
        let path = match camera::save(&self.driver.data_dir, frame).await {
            Ok(p) => p,
            Err(e) => return fail(format!("take_picture: {e}")),
        };
        let mut text = format!("picture saved to {}", path.display());
        if p.describe.unwrap_or(false) || p.question.is_some() {
            match &self.driver.vision {
                None => text += "; no vision model is configured to describe it",
                Some(v) => match v.describe(&self.driver.data_dir, &path.to_string_lossy(), p.question.as_deref().unwrap_or_default()).await {
                    Ok(d) => text += &format!("\n{d}"),
                    Err(e) => text += &format!("; describing it failed: {e}"),
                },
            }
        }
        ok(text)
    }

    #[tool(description = "Describe an image (a file of the robot's data dir such as a path from take_picture, or an http(s) URL) with a vision model, or answer a question about it.")]
    async fn describe_image(&self, Parameters(p): Parameters<DescribeImage>) -> Result<CallToolResult, McpError> {
        let Some(v) = &self.driver.vision else { return fail("describe_image: no vision model is configured (vision.urls)") };
        match v.describe(&self.driver.data_dir, &p.image, p.question.as_deref().unwrap_or_default()).await {
            Ok(d) => ok(d),
            Err(e) => fail(format!("describe_image: {e}")),
        }
    }

    #[tool(description = "Say something out loud (text to speech). Speech is queued after what is being said, unless forcefully_interrupt=true, which stops it and drops the queue first. Returns once queued.")]
    async fn speak(&self, Parameters(p): Parameters<Speak>) -> Result<CallToolResult, McpError> {
        match self.driver.speech.say(&p.text, p.forcefully_interrupt.unwrap_or(false)) {
            Ok(0) => ok(format!("speaking on {}", self.driver.speech.sink_name())),
            Ok(n) => ok(format!("queued after {n} utterance(s)")),
            Err(e) => fail(format!("speak: {e}")),
        }
    }

    #[tool(description = "Turn the head toward where the last sound came from (the microphone array's direction of arrival).")]
    async fn move_to_audio(&self) -> Result<CallToolResult, McpError> {
        let doa = match self.driver.daemon.doa().await {
            Ok(Some((a, _))) if a.is_finite() => a,
            Ok(_) => return fail("move_to_audio: no direction of arrival: the robot has no microphone array reading (none in simulation)"),
            Err(e) => return fail(format!("move_to_audio: {e}")),
        };
        let (mut head, _) = self.current();
        head.yaw = yaw_toward(doa);
        let m = Motion { head: Some(head), duration: 0.8, ..Default::default() };
        match self.move_to(m, true, &format!("move_to_audio (sound at {} from the left)", deg(doa))).await {
            Ok(t) => ok(t),
            Err(e) => fail(e),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for ReachyTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("reachy-mini", env!("CARGO_PKG_VERSION")))
            .with_instructions("Reachy Mini: a small expressive robot head. Moves are limited to the robot's safe range.")
    }
}

/// Serve the tools over streamable HTTP at `http://<bind>:<port><path>` until `cancel`, with the
/// Origin and token checks of `guard` (see [`crate::mcp_server`]).
pub async fn serve(
    tools: ReachyTools,
    bind: &str,
    port: u16,
    path: &str,
    guard: Guard,
    cancel: tokio_util::sync::CancellationToken,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    crate::mcp_server::serve(tools, bind, port, path, guard, cancel).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn emotions_resolve_to_a_variant() {
        let n = names(&["cheerful1", "cheerful2", "sad1", "yes"]);
        assert_eq!(pick_emotion(&n, "yes", 0).as_deref(), Some("yes"));
        assert_eq!(pick_emotion(&n, "Cheerful2", 0).as_deref(), Some("cheerful2"));
        assert_eq!(pick_emotion(&n, "cheerful", 0).as_deref(), Some("cheerful1"));
        assert_eq!(pick_emotion(&n, "cheerful", 1).as_deref(), Some("cheerful2"));
        assert_eq!(pick_emotion(&n, "sad", 7).as_deref(), Some("sad1"));
        assert_eq!(pick_emotion(&n, "angry", 0), None);
        assert_eq!(group_emotions(&n), vec![("cheerful".into(), 2), ("sad".into(), 1), ("yes".into(), 1)]);
    }

    #[test]
    fn a_target_not_reached_is_reported() {
        use crate::reachy::urdf::from_xyz_rpy;
        let s = crate::reachy::daemon::RobotState {
            head_joints: vec![0.0; 7],
            antennas: [0.0, 0.0],
            head_pose: from_xyz_rpy([0.01, 0.0, 0.0], [0.0, 0.0, 0.4]),
            received: std::time::SystemTime::now(),
        };
        let reached = Motion { head: Some(HeadPose { x: 0.0105, yaw: 0.41, ..Default::default() }), ..Default::default() };
        assert!(shortfall(&reached, &s).is_empty());
        let m = Motion { head: Some(HeadPose { x: 0.02, yaw: 0.8, ..Default::default() }), antennas: Some([1.0, 0.0]), ..Default::default() };
        let short = shortfall(&m, &s);
        assert_eq!(short.len(), 3, "{short:?}");
        assert!(short[0].starts_with("x 10.0 mm instead of 20.0 mm"), "{short:?}");
    }

    #[test]
    fn direction_of_arrival_maps_to_head_yaw() {
        assert!((yaw_toward(FRAC_PI_2)).abs() < 1e-12); // front
        assert!((yaw_toward(0.0) - FRAC_PI_2).abs() < 1e-12); // left: turn left (+)
        assert!((yaw_toward(std::f64::consts::PI) + FRAC_PI_2).abs() < 1e-12); // right
    }

    #[test]
    fn tool_schemas_document_units_and_ranges() {
        let tools = ReachyTools::tool_router().list_all();
        let names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
        for want in ["goto_target", "move_head_left", "move_head_right", "reset_head", "stop_move", "wake_up",
                     "go_to_sleep", "list_emotions", "play_emotion", "take_picture", "describe_image", "speak", "move_to_audio"] {
            assert!(names.iter().any(|n| n == want), "missing tool {want}: {names:?}");
        }
        let goto = tools.iter().find(|t| t.name == "goto_target").unwrap();
        let schema = serde_json::to_string(&goto.input_schema).unwrap();
        for s in ["−30…+30 mm", "±35°", "±160°", "0.2…30 s", "minjerk", "\"mm\"", "\"deg\""] {
            assert!(schema.contains(s), "goto_target schema lacks {s}: {schema}");
        }
    }

    /// Over real HTTP, with a daemon that is not there: every robot tool fails fast with a clear
    /// message as an `is_error` result; speak still works (it needs no daemon).
    #[tokio::test]
    async fn tools_over_http_fail_fast_without_a_daemon() {
        use crate::reachy::speech::{Audio, SpeechError, Tts, WavFiles};
        use rmcp::model::{CallToolRequestParams, ClientConfig};
        use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
        use rmcp::transport::StreamableHttpClientTransport;
        use rmcp::ServiceExt;

        struct Beep;
        #[async_trait::async_trait]
        impl Tts for Beep {
            async fn synthesize(&self, _: &str) -> Result<Audio, SpeechError> {
                Ok(Audio { samples: vec![1000; 1600], sample_rate: 16_000 })
            }
        }
        let dir = std::env::temp_dir().join(format!("rosa-tools-test-{}", std::process::id()));
        let (daemon, _handles) = Daemon::new("http://127.0.0.1:9", Duration::from_secs(2)).unwrap();
        let sink = Arc::new(WavFiles { dir: DataDir::open(&dir.join("speech")).unwrap(), count: Default::default() });
        let driver = Arc::new(Driver {
            daemon,
            limits: Limits::default(),
            speech: SpeechQueue::start(Arc::new(Beep), sink, 4),
            camera: Camera::None,
            vision: None,
            data_dir: DataDir::open(&dir).unwrap(),
            emotions_dataset: "pollen-robotics/reachy-mini-emotions-library".into(),
            move_timeout_margin: 1.0,
        });
        let cancel = tokio_util::sync::CancellationToken::new();
        let (addr, server) = serve(ReachyTools::new(driver), "127.0.0.1", 0, "/mcp", Guard::loopback(), cancel.clone()).await.unwrap();
        let transport = StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(format!("http://{addr}/mcp")));
        let client = ClientConfig::default().serve(transport).await.unwrap();
        let call = |name: &str, args: serde_json::Value| {
            let p = CallToolRequestParams::new(name.to_string()).with_arguments(args.as_object().cloned().unwrap_or_default());
            let client = &client;
            async move {
                let r = tokio::time::timeout(Duration::from_secs(5), client.call_tool(p)).await.expect("answered").expect("routed");
                let text: Vec<String> = r.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect();
                (r.is_error == Some(true), text.join("\n"))
            }
        };
        for (tool, args) in [
            ("goto_target", serde_json::json!({"yaw": 10})),
            ("move_head_left", serde_json::json!({})),
            ("reset_head", serde_json::json!({})),
            ("stop_move", serde_json::json!({})),
            ("wake_up", serde_json::json!({})),
            ("go_to_sleep", serde_json::json!({})),
            ("list_emotions", serde_json::json!({})),
            ("play_emotion", serde_json::json!({"emotion": "cheerful"})),
            ("move_to_audio", serde_json::json!({})),
        ] {
            let t = std::time::Instant::now();
            let (err, text) = call(tool, args).await;
            assert!(err, "{tool}: {text}");
            assert!(text.contains("not reachable") && text.contains("http://127.0.0.1:9"), "{tool}: {text}");
            assert!(t.elapsed() < Duration::from_millis(500), "{tool} took {:?}", t.elapsed());
        }
        let (err, text) = call("take_picture", serde_json::json!({})).await;
        assert!(err && text.contains("no camera is configured"), "{text}");
        let (err, text) = call("describe_image", serde_json::json!({"image": "x.jpg"})).await;
        assert!(err && text.contains("no vision model"), "{text}");
        let (err, text) = call("goto_target", serde_json::json!({"duration": 2})).await;
        assert!(err && text.contains("at least one of"), "{text}");
        let (err, text) = call("speak", serde_json::json!({"text": "hello"})).await;
        assert!(!err, "{text}");
        let (err, _) = call("speak", serde_json::json!({"text": " "})).await;
        assert!(err);
        tokio::time::timeout(Duration::from_secs(5), async {
            while !dir.join("speech/speech-0001.wav").exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the utterance was written");
        let _ = client.cancel().await;
        cancel.cancel();
        let _ = server.await;
        std::fs::remove_dir_all(&dir).ok();
    }
    /// 10,000 calls with fuzzed arguments (hostile strings, NaN/inf-ish numbers, wrong types,
    /// unknown tools, paths at /etc/shadow, /dev/zero, FIFOs and symlinks out) through the real
    /// router over an in-memory MCP session: the server answers every one and never panics.
    #[tokio::test]
    async fn fuzzed_tool_arguments_never_panic() {
        use crate::fuzz_tests::{Rng, CASES};
        use crate::reachy::speech::{Audio, SpeechError, Tts, WavFiles};
        use rmcp::model::{CallToolRequestParams, ClientConfig};
        use rmcp::ServiceExt;

        struct Beep;
        #[async_trait::async_trait]
        impl Tts for Beep {
            async fn synthesize(&self, _: &str) -> Result<Audio, SpeechError> {
                Ok(Audio { samples: vec![1000; 16], sample_rate: 16_000 })
            }
        }
        let dir = std::env::temp_dir().join(format!("rosa-tools-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data = DataDir::open(&dir.join("data")).unwrap();
        std::fs::write(dir.join("outside.jpg"), [0xFF, 0xD8, 0xFF, 0]).unwrap();
        std::os::unix::fs::symlink(dir.join("outside.jpg"), data.root().join("link.jpg")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", data.root().join("zero.jpg")).unwrap();
        let fifo = std::ffi::CString::new(data.root().join("fifo.jpg").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let (daemon, _handles) = Daemon::new("http://127.0.0.1:9", Duration::from_secs(2)).unwrap();
        let vision = Vision::new(crate::config::LlmConfig { urls: vec!["http://127.0.0.1:9/v1".into()], ..Default::default() }).unwrap();
        let sink = Arc::new(WavFiles { dir: DataDir::open(&dir.join("speech")).unwrap(), count: Default::default() });
        let driver = Arc::new(Driver {
            daemon,
            limits: Limits::default(),
            speech: SpeechQueue::start(Arc::new(Beep), sink, 4),
            camera: Camera::None,
            vision: Some(vision),
            data_dir: data,
            emotions_dataset: "pollen-robotics/reachy-mini-emotions-library".into(),
            move_timeout_margin: 1.0,
        });
        let (server_io, client_io) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            let running = ReachyTools::new(driver).serve(server_io).await.expect("server up");
            let _ = running.waiting().await;
        });
        let client = ClientConfig::default().serve(client_io).await.unwrap();
        let names = ["goto_target", "move_head_left", "move_head_right", "reset_head", "stop_move", "wake_up", "go_to_sleep",
                     "list_emotions", "play_emotion", "take_picture", "describe_image", "speak", "move_to_audio", "no_such_tool", ""];
        let paths = ["/etc/shadow", "/dev/zero", "fifo.jpg", "link.jpg", "zero.jpg", "../outside.jpg", "/proc/self/environ",
                     "http://127.0.0.1:9/x.jpg", "data:image/png;base64,AAAA", "", "\0"];
        let mut rng = Rng::new(0x5eed_0005);
        let (mut results, mut refused) = (0, 0);
        for i in 0..CASES {
            let name = *rng.pick(&names);
            let mut args = match rng.json(3) {
                serde_json::Value::Object(m) => m,
                other => serde_json::Map::from_iter([("text".to_string(), other)]),
            };
            if name == "describe_image" && rng.below(2) == 0 {
                args.insert("image".into(), serde_json::json!(rng.pick(&paths)));
            }
            let p = CallToolRequestParams::new(name.to_string()).with_arguments(args.clone());
            match tokio::time::timeout(Duration::from_secs(10), client.call_tool(p)).await {
                Err(_) => panic!("case {i}: {name} {args:?} did not answer"),
                Ok(Ok(r)) => {
                    results += 1;
                    let text: String = r.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect();
                    if name == "describe_image" && text.contains("data dir") {
                        assert!(!text.contains("No such file") && !text.contains("JPEG"), "case {i}: an oracle: {text}");
                    }
                }
                Ok(Err(_)) => refused += 1, // not routable: unknown tool, arguments of the wrong shape
            }
        }
        assert!(results > 3000 && refused > 1000, "results {results}, refused {refused}");
        assert!(client.list_all_tools().await.unwrap().len() >= 13, "the server still serves");
        let _ = client.cancel().await;
        server.abort();
        std::fs::remove_dir_all(&dir).ok();
    }
}
