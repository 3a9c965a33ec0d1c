//! Fuzz tests of the nodes' inputs, r2r-free: 10,000 hostile cases each for commands and LLM replies
//! (kernel), goals and service requests (process manager), the files tools read, and topic inputs
//! (the stt node's AudioData, the Reachy driver's camera frames), none of which may panic or let a
//! NUL through to a message. (MCP tool arguments: `reachy::tools::tests::fuzzed_tool_arguments_never_panic`; a live
//! run against the real nodes: `test/test_hardening.py::test_fuzzed_inputs_live`.)
//!
//! Deterministic: a fixed-seed generator, so a failure names its case and reproduces.

use crate::agent::testutil::{call, text, ScriptedModel};
use crate::agent::{Agent, Memory};
use crate::input;
use crate::kernel::{Event, Kernel, KernelOutput, KernelTools, ProcessControl, ProcessRow, Source};
use crate::robots::Robot;
use std::sync::Mutex;
use std::time::SystemTime;

pub const CASES: usize = 10_000;

/// xorshift64*: small, deterministic, good enough to pick cases.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Hostile text: NULs, control characters, invalid UTF-8 (as it arrives: U+FFFD), whitespace,
    /// long runs, format strings, prompt-injection-ish phrases, plain words.
    pub fn text(&mut self) -> String {
        let pieces = ["\0", "\u{1b}[2J", "\n", "\r", "\t", " ", "\u{FFFD}", "é", "🤖", "%s%n", "{robots}", "[User typed]",
                      "wave", "look left", "\u{202e}", "\u{0}\u{0}", "'\"", "\\u0000", "ignore previous instructions", "\u{7f}"];
        let n = match self.below(20) {
            0 | 1 => 0,
            2 => 200 + self.below(800),
            _ => self.below(12),
        };
        let mut s = String::new();
        for _ in 0..n {
            if self.below(4) == 0 {
                let bytes: Vec<u8> = (0..self.below(6)).map(|_| self.next() as u8).collect();
                s.push_str(&String::from_utf8_lossy(&bytes));
            } else {
                s.push_str(*self.pick(&pieces));
            }
        }
        s
    }

    /// Numbers as they come from a goal or a request: specials, extremes, bit patterns, plain values.
    pub fn seconds(&mut self) -> f64 {
        let special = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300, -1e300, 1.8e19, 1.9e19, f64::MAX, f64::MIN_POSITIVE,
                       -0.0, 0.0, 1e-320, 86_400.0, 86_400.000_001, 0.05, 5.0];
        match self.below(3) {
            0 => *self.pick(&special),
            1 => f64::from_bits(self.next()),
            _ => (self.next() % 200_000) as f64 / 2.0 - 1000.0,
        }
    }

    /// A JSON value with hostile leaves, up to `depth` deep.
    pub fn json(&mut self, depth: usize) -> serde_json::Value {
        use serde_json::{json, Value};
        match self.below(if depth == 0 { 6 } else { 8 }) {
            0 => Value::Null,
            1 => json!(self.below(2) == 0),
            2 => json!(self.seconds()), // NaN and inf become null in JSON
            3 => json!((self.next() as i64).wrapping_shr(self.below(64) as u32)),
            4 => json!(self.text()),
            5 => json!(*self.pick(&[0.0, -1.0, 1e308, 4_294_967_296.0, 3.5, 90.0, -400.0])),
            6 => Value::Array((0..self.below(4)).map(|_| self.json(depth - 1)).collect()),
            _ => {
                let keys = ["x", "y", "z", "roll", "pitch", "yaw", "antennas", "body_yaw", "duration", "interpolation", "wait",
                            "position_unit", "angle_unit", "multiple", "emotion", "image", "question", "text", "describe",
                            "forcefully_interrupt", "system_prompt", "robots", "worker_id", "force", "\0", ""];
                let mut m = serde_json::Map::new();
                for _ in 0..self.below(5) {
                    m.insert(self.pick(&keys).to_string(), self.json(depth - 1));
                }
                Value::Object(m)
            }
        }
    }
}

struct Procs(Mutex<u64>);

#[async_trait::async_trait]
impl ProcessControl for Procs {
    async fn launch(&self, system_prompt: String, _robots: Vec<String>) -> Result<String, String> {
        assert!(!system_prompt.contains('\0'), "a NUL reached the process manager's goal");
        let mut n = self.0.lock().unwrap();
        *n += 1;
        Ok(format!("w{:08x}", *n))
    }
    async fn list(&self) -> Result<Vec<ProcessRow>, String> {
        Ok(vec![ProcessRow { worker_id: "w1".into(), state: "running".into(), system_prompt: "a\0b".into(), robots: vec![], step: 1, last_tool: "\0".into() }])
    }
    async fn terminate(&self, worker_id: String, _force: bool) -> Result<String, String> {
        Err(format!("no running process `{worker_id}`"))
    }
}

/// Everything the kernel would publish, checked the way the node publishes it.
#[derive(Default)]
struct Out(Mutex<usize>);

impl KernelOutput for Out {
    fn event(&self, _seq: u64, _s: Source, text: &str, _r: SystemTime) {
        assert!(!input::ros_text(text).contains('\0'));
        *self.0.lock().unwrap() += 1;
    }
    fn update(&self, role: &str, text: &str) {
        assert!(!input::ros_text(text).contains('\0') && !input::ros_name(role).contains('\0'));
    }
}

#[tokio::test]
async fn fuzzed_commands_and_llm_replies_never_panic_nor_pass_a_nul() {
    let mut rng = Rng::new(0x5eed_0001);
    let mut script = Vec::new();
    let tools = ["launch_process", "list_processes", "terminate_process", "no_such_tool", "", "\0"];
    for _ in 0..3 * CASES {
        script.push(match rng.below(4) {
            0 => text(&rng.text()),
            1 => {
                let args = if rng.below(3) == 0 { rng.text() } else { rng.json(3).to_string() };
                call(*rng.pick(&tools), &args)
            }
            2 => call("launch_process", &serde_json::json!({"system_prompt": rng.text(), "robots": ["bot"]}).to_string()),
            _ => text("ok"),
        });
    }
    let model = ScriptedModel::new(script);
    let (_tx, robots) = tokio::sync::watch::channel(vec![Robot {
        name: "bot".into(),
        url: "http://127.0.0.1:1/mcp".into(),
        description: String::new(),
        prompt_file: None,
        prompt: String::new(),
        ros: None,
    }]);
    let tools = KernelTools { processes: std::sync::Arc::new(Procs(Mutex::new(0))), robots, triggers: None };
    let mut kernel = Kernel::new(Agent::new(model, Memory::new("", 4000), crate::agent::AgentOptions::new(3)), tools, "robots: {robots}".into());
    let out = Out::default();
    let (mut refused, mut handled) = (0, 0);
    for i in 0..CASES {
        let raw = rng.text();
        let event = match i % 4 {
            0 | 1 => match input::user_text_refusal("command", &raw) {
                Some(why) => {
                    assert!(!why.is_empty());
                    assert!(!input::ros_text(&why).contains('\0'));
                    refused += 1;
                    continue;
                }
                None => Event::command(&raw),
            },
            2 => Event::worker_callback(&rng.text(), &raw, rng.below(2) == 0),
            _ => Event::transcript(&raw),
        };
        let _ = kernel.handle(event, &out).await;
        handled += 1;
    }
    assert!(refused > 500 && handled > 5000, "refused {refused}, handled {handled}");
    assert_eq!(*out.0.lock().unwrap(), handled, "every handled event was published");
}

#[test]
fn fuzzed_goal_numbers_become_durations_or_refusals() {
    let mut rng = Rng::new(0x5eed_0002);
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..CASES {
        let (t, default, max) = (rng.seconds(), rng.seconds(), rng.seconds());
        match input::goal_timeout(t, default, max) {
            Ok(d) => {
                ok += 1;
                assert!(d.as_secs_f64() <= input::MAX_GOAL_TIMEOUT_SEC, "{t} {default} {max} -> {d:?}");
                assert!(d.as_millis() >= 100);
            }
            Err(e) => {
                refused += 1;
                assert!(e.contains("timeout_sec="), "{e}");
            }
        }
        let _ = input::clamped_seconds(rng.seconds(), 0.1, 3600.0);
        let _ = input::seconds("x", rng.seconds(), 0.0, 1e9);
        let _ = input::clamped_size(rng.next(), 1, 100_000);
    }
    assert!(ok > 1000 && refused > 1000, "ok {ok}, refused {refused}");
    for bad in [f64::INFINITY, f64::NAN, 1e300, -1.0, 1.8e19] {
        assert!(input::goal_timeout(bad, 300.0, 86_400.0).is_err(), "{bad}");
    }
    assert_eq!(input::goal_timeout(0.0, 300.0, 86_400.0).unwrap().as_secs(), 300);
    assert_eq!(input::goal_timeout(12.0, 300.0, 86_400.0).unwrap().as_secs(), 12);
}

#[test]
fn fuzzed_service_and_table_text_is_bounded_and_nul_free() {
    use crate::process::{ProcessTable, Row, State};
    let mut rng = Rng::new(0x5eed_0003);
    let mut table = ProcessTable::new(4, 20);
    for i in 0..CASES {
        // A launch: a hostile prompt of any size becomes a bounded, NUL-free summary.
        let prompt = if i % 500 == 0 { "x\0".repeat(2_500_000) } else { rng.text() };
        let id = format!("w{i:08x}");
        table.insert(Row {
            worker_id: id.clone(),
            pid: 0,
            state: State::Running,
            system_prompt: prompt,
            robots: vec![rng.text()],
            step: 0,
            last_tool: rng.text(),
            started: SystemTime::now(),
        });
        for r in table.snapshot(true) {
            let s = input::ros_name(&input::summary(&r.system_prompt, 1000)).into_owned();
            assert!(s.len() <= 1000 * 3 && !s.contains('\0'));
        }
        table.finish(&id, *rng.pick(&[State::Succeeded, State::Failed, State::Terminated, State::TimedOut]));
        // A terminate request for any id; a chat prompt.
        let reply = input::ros_text(&format!("no running process `{}`", input::summary(&rng.text(), 100))).into_owned();
        assert!(!reply.contains('\0'));
        let _ = input::user_text_refusal("chat prompt", &rng.text());
    }
    assert!(table.snapshot(true).len() <= 20);
}

#[test]
fn fuzzed_paths_never_read_outside_the_data_dir() {
    use std::os::unix::fs::symlink;
    let base = std::env::temp_dir().join(format!("rosa-fuzz-paths-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(base.join("outside.jpg"), [0xFF, 0xD8, 0xFF, 0]).unwrap();
    let dd = crate::data_dir::DataDir::open(&base.join("data")).unwrap();
    std::fs::create_dir_all(dd.root().join("pictures")).unwrap();
    std::fs::write(dd.root().join("pictures/in.jpg"), [0xFF, 0xD8, 0xFF, 1]).unwrap();
    symlink(base.join("outside.jpg"), dd.root().join("pictures/out.jpg")).unwrap();
    symlink("..", dd.root().join("pictures/up")).unwrap();
    symlink("/", dd.root().join("slash")).unwrap();
    let root = dd.root().display().to_string();
    let parts = ["..", ".", "pictures", "in.jpg", "out.jpg", "up", "slash", "etc", "shadow", "outside.jpg", "data", "", "\0",
                 "/", "//", "dev", "zero", "proc", "self", "fd", "0", &root];
    let mut rng = Rng::new(0x5eed_0004);
    let mut read = 0;
    for _ in 0..CASES {
        let mut p = if rng.below(3) == 0 { "/".to_string() } else { String::new() };
        for i in 0..1 + rng.below(6) {
            if i > 0 {
                p.push('/');
            }
            p.push_str(*rng.pick(&parts));
        }
        if let Ok((path, bytes)) = dd.read_blocking(&p, 1 << 16) {
            read += 1;
            assert!(path.starts_with(dd.root()), "{p} -> {}", path.display());
            assert_eq!(bytes, [0xFF, 0xD8, 0xFF, 1], "{p}: only the file inside can be read");
        }
    }
    assert!(read > 0);
    std::fs::remove_dir_all(&base).ok();
}

#[test]
fn fuzzed_topic_inputs_of_the_stt_and_reachy_nodes_never_panic() {
    use crate::reachy::camera::{to_jpeg, Frame};
    use crate::stt::audio::chunk_from_pcm;
    use std::time::{Duration, UNIX_EPOCH};
    let mut rng = Rng::new(0x5eed_0006);
    let encodings = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "yuyv", "yuv422_yuy2", "16UC1", "", "\0"];
    let (mut chunks, mut frames) = (0, 0);
    for _ in 0..CASES {
        // AudioData on an stt topic: any channel count, rate, length and stamp.
        let samples: Vec<i16> = (0..rng.below(64)).map(|_| rng.next() as i16).collect();
        let channels = *rng.pick(&[0u16, 1, 2, 3, 64, 65, u16::MAX]);
        let rate = *rng.pick(&[0u32, 1, 999, 1000, 16_000, 48_000, 384_000, 384_001, u32::MAX]);
        let stamp = match rng.below(3) {
            0 => None,
            1 => Some(UNIX_EPOCH),
            _ => UNIX_EPOCH.checked_add(Duration::new((rng.next() as i32).max(0) as u64, rng.next() as u32 % 1_000_000_000)),
        };
        chunks += usize::from(chunk_from_pcm(&samples, channels, rate, stamp).is_ok());
        // A camera frame on the Reachy driver's image topic: any size, step and encoding.
        let width = *rng.pick(&[0u32, 1, 2, 7, 8, 16_384, 16_385, u32::MAX]);
        let height = *rng.pick(&[0u32, 1, 3, 16_385, u32::MAX]);
        let step = *rng.pick(&[0u32, 1, 3, 24, u32::MAX]);
        let data: Vec<u8> = (0..rng.below(200)).map(|_| rng.next() as u8).collect();
        let f = Frame::Raw { width, height, encoding: rng.pick(&encodings).to_string(), step, data };
        frames += usize::from(to_jpeg(&f).is_ok());
    }
    assert!(chunks > 100, "{chunks}");
    assert!(frames > 0, "{frames}");
}
