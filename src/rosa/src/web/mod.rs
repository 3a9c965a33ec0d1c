//! `rosa_web`'s logic without ROS: which protocol a WebSocket speaks, who may use which names
//! (rosbridge_suite's globs), the bounded per-client outbox (drop oldest, counted), rosbridge
//! fragments both ways, and the Foxglove WebSocket protocol's binary frames ([`foxglove`]).
//! The node (`nodes::rosa_web`) puts these around the dynamic-message layer (`dynmsg`).

pub mod foxglove;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The Foxglove subprotocols, in order of preference (the server picks the first the client offers).
pub const FOXGLOVE_SUBPROTOCOLS: [&str; 2] = ["foxglove.sdk.v1", "foxglove.websocket.v1"];

/// What a WebSocket upgrade speaks, from its `Sec-WebSocket-Protocol` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// No subprotocol (roslibjs, roslibpy), or none we know: rosbridge v2.
    Rosbridge,
    /// The Foxglove WebSocket protocol under the subprotocol chosen.
    Foxglove(&'static str),
}

/// `offered` is the header's value (comma-separated), if any.
pub fn speaks(offered: Option<&str>) -> Speaks {
    let offers: Vec<&str> = offered.unwrap_or_default().split(',').map(str::trim).collect();
    for p in FOXGLOVE_SUBPROTOCOLS {
        if offers.iter().any(|o| *o == p) {
            return Speaks::Foxglove(p);
        }
    }
    Speaks::Rosbridge
}

/// A name as rosbridge resolves a client's names: relative names are relative to `/`.
pub fn absolute(name: &str) -> String {
    let n = name.trim();
    if n.starts_with('/') {
        n.to_string()
    } else {
        format!("/{n}")
    }
}

/// fnmatch-style glob (`*` any run, `?` one character, `[abc]`/`[!a-z]` a class), as
/// rosbridge_suite matches its `topics_glob` & co.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with backtracking on the last `*`.
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class_match(&p, pi, n[ni]) {
                        if matched {
                            pi = next;
                            ni += 1;
                            continue;
                        }
                    } else if n[ni] == '[' {
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
                c if c == n[ni] => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A `[...]` class at `p[start]`: (does `c` match, index after the class); None if unterminated.
fn class_match(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

/// Which names clients may use (rosbridge_suite's `topics_glob`, `services_glob`, `params_glob`,
/// plus actions). An empty list allows everything, as in rosbridge_suite.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Access {
    pub topics: Vec<String>,
    pub services: Vec<String>,
    pub params: Vec<String>,
    pub actions: Vec<String>,
}

/// What a name is, for [`Access::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Topic,
    Service,
    Param,
    Action,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Topic => "topic",
            Kind::Service => "service",
            Kind::Param => "parameter",
            Kind::Action => "action",
        }
    }
}

impl Access {
    fn globs(&self, kind: Kind) -> &[String] {
        match kind {
            Kind::Topic => &self.topics,
            Kind::Service => &self.services,
            Kind::Param => &self.params,
            Kind::Action => &self.actions,
        }
    }

    pub fn allows(&self, kind: Kind, name: &str) -> bool {
        let g = self.globs(kind);
        g.is_empty() || g.iter().any(|p| glob_match(p.trim(), name))
    }

    /// `Err` with the message a client gets when `name` is not allowed.
    pub fn check(&self, kind: Kind, name: &str) -> Result<(), String> {
        if self.allows(kind, name) {
            Ok(())
        } else {
            Err(format!("{} {name} is not allowed by this server's {}s_glob", kind.name(), if kind == Kind::Param { "param" } else { kind.name() }))
        }
    }
}

/// A frame to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

impl Frame {
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(t) => t.len(),
            Frame::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A client's outgoing queue: bounded in frames and bytes; when full, the oldest frames go (and are
/// counted), so a slow client loses old messages rather than slowing ROS or other clients.
/// One writer task drains it into the socket.
pub struct Outbox {
    inner: Mutex<OutboxInner>,
    notify: tokio::sync::Notify,
    max_frames: usize,
    max_bytes: usize,
    dropped: AtomicU64,
}

struct OutboxInner {
    frames: VecDeque<Frame>,
    bytes: usize,
    closed: bool,
}

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(OutboxInner { frames: VecDeque::new(), bytes: 0, closed: false }),
            notify: tokio::sync::Notify::new(),
            max_frames: max_frames.max(1),
            max_bytes: max_bytes.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a frame; drops the oldest ones while over the bounds (a frame larger than the byte
    /// bound alone is still queued, by itself). False once closed.
    pub fn push(&self, f: Frame) -> bool {
        let mut q = self.lock();
        if q.closed {
            return false;
        }
        q.bytes += f.len();
        q.frames.push_back(f);
        while q.frames.len() > 1 && (q.frames.len() > self.max_frames || q.bytes > self.max_bytes) {
            if let Some(old) = q.frames.pop_front() {
                q.bytes -= old.len();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(q);
        self.notify.notify_one();
        true
    }

    /// Wait for the next frame; None once closed and drained.
    pub async fn pop(&self) -> Option<Frame> {
        loop {
            {
                let mut q = self.lock();
                if let Some(f) = q.frames.pop_front() {
                    q.bytes -= f.len();
                    return Some(f);
                }
                if q.closed {
                    return None;
                }
            }
            self.notify.notified().await;
        }
    }

    /// Take every frame queued now (for batched writes).
    pub fn drain_now(&self, max: usize) -> Vec<Frame> {
        let mut q = self.lock();
        let n = q.frames.len().min(max);
        let out: Vec<Frame> = q.frames.drain(..n).collect();
        q.bytes -= out.iter().map(Frame::len).sum::<usize>();
        out
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// rosbridge `fragment` ops for a message longer than `size` bytes (split on UTF-8 boundaries).
pub fn fragments(message: &str, size: usize, id: &str) -> Vec<String> {
    let size = size.max(1);
    let mut parts = Vec::new();
    let mut start = 0;
    while start < message.len() {
        let mut end = (start + size).min(message.len());
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        if end == start {
            // `size` smaller than one character: take the whole character.
            end = start + message[start..].chars().next().map_or(1, char::len_utf8);
        }
        parts.push(&message[start..end]);
        start = end;
    }
    let total = parts.len();
    parts
        .iter()
        .enumerate()
        .map(|(i, d)| serde_json::json!({"op": "fragment", "id": id, "data": d, "num": i, "total": total}).to_string())
        .collect()
}

/// Why a fragment was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FragmentError {
    #[error("fragment: {0}")]
    Invalid(String),
    #[error("fragment {id}: the message would be larger than {max} bytes")]
    TooLarge { id: String, max: usize },
    #[error("fragment {id}: more than {max} messages are being reassembled")]
    TooMany { id: String, max: usize },
}

/// Fragments of one message at most (the slots are allocated when its first fragment comes).
pub const MAX_FRAGMENTS: usize = 100_000;

/// Reassembles incoming `fragment` ops into whole messages (bounded in size and count; partial
/// messages older than `ttl` are forgotten).
pub struct Reassembly {
    partial: HashMap<String, Partial>,
    max_bytes: usize,
    max_messages: usize,
    ttl: Duration,
}

struct Partial {
    total: usize,
    parts: Vec<Option<String>>,
    bytes: usize,
    got: usize,
    started: Instant,
}

impl Reassembly {
    pub fn new(max_bytes: usize, max_messages: usize, ttl: Duration) -> Self {
        Self { partial: HashMap::new(), max_bytes, max_messages, ttl }
    }

    /// One fragment (the op's JSON object). Some(message) when it completes one.
    pub fn add(&mut self, op: &serde_json::Value) -> Result<Option<String>, FragmentError> {
        let id = match op.get("id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(FragmentError::Invalid("needs an 'id' (a string)".into())),
        };
        let data = op.get("data").and_then(|d| d.as_str()).ok_or_else(|| FragmentError::Invalid(format!("{id}: needs 'data' (a string)")))?;
        let num = op.get("num").and_then(|n| n.as_u64()).ok_or_else(|| FragmentError::Invalid(format!("{id}: needs 'num' (an integer ≥ 0)")))?;
        let total = op.get("total").and_then(|n| n.as_u64()).ok_or_else(|| FragmentError::Invalid(format!("{id}: needs 'total' (an integer ≥ 1)")))?;
        let (num, total) = (usize::try_from(num).unwrap_or(usize::MAX), usize::try_from(total).unwrap_or(usize::MAX));
        if total == 0 || num >= total {
            return Err(FragmentError::Invalid(format!("{id}: num {num} is not below total {total}")));
        }
        if total > self.max_bytes {
            return Err(FragmentError::TooLarge { id, max: self.max_bytes });
        }
        if total > MAX_FRAGMENTS {
            return Err(FragmentError::Invalid(format!("{id}: {total} fragments is more than {MAX_FRAGMENTS}")));
        }
        let now = Instant::now();
        let ttl = self.ttl;
        self.partial.retain(|_, p| now.duration_since(p.started) < ttl);
        if !self.partial.contains_key(&id) && self.partial.len() >= self.max_messages {
            return Err(FragmentError::TooMany { id, max: self.max_messages });
        }
        let p = self.partial.entry(id.clone()).or_insert_with(|| Partial { total, parts: vec![None; total], bytes: 0, got: 0, started: now });
        if p.total != total {
            self.partial.remove(&id);
            return Err(FragmentError::Invalid(format!("{id}: total changed from one fragment to the next")));
        }
        if p.parts[num].is_none() {
            p.bytes += data.len();
            p.got += 1;
        } else {
            p.bytes = p.bytes - p.parts[num].as_ref().map_or(0, String::len) + data.len();
        }
        if p.bytes > self.max_bytes {
            self.partial.remove(&id);
            return Err(FragmentError::TooLarge { id, max: self.max_bytes });
        }
        p.parts[num] = Some(data.to_string());
        if p.got < p.total {
            return Ok(None);
        }
        let p = self.partial.remove(&id).ok_or_else(|| FragmentError::Invalid(id.clone()))?;
        Ok(Some(p.parts.into_iter().map(Option::unwrap_or_default).collect()))
    }

    pub fn pending(&self) -> usize {
        self.partial.len()
    }
}

/// A throttle: at most one message per `period`; the latest `queue_length` (≥ 1) held meanwhile.
pub struct Throttle<T> {
    period: Duration,
    queue_length: usize,
    last: Option<Instant>,
    held: VecDeque<T>,
}

impl<T> Throttle<T> {
    pub fn new(period: Duration, queue_length: usize) -> Self {
        Self { period, queue_length: queue_length.max(1), last: None, held: VecDeque::new() }
    }

    /// A message arrived at `now`: what to send now (if anything).
    pub fn offer(&mut self, m: T, now: Instant) -> Option<T> {
        if self.period.is_zero() {
            return Some(m);
        }
        if self.held.is_empty() && self.last.is_none_or(|l| now.duration_since(l) >= self.period) {
            self.last = Some(now);
            return Some(m);
        }
        self.held.push_back(m);
        while self.held.len() > self.queue_length {
            self.held.pop_front();
        }
        None
    }

    /// When the next held message is due.
    pub fn due(&self) -> Option<Instant> {
        if self.held.is_empty() {
            None
        } else {
            Some(self.last.map_or_else(Instant::now, |l| l + self.period))
        }
    }

    /// The held message due at `now`, if any.
    pub fn take_due(&mut self, now: Instant) -> Option<T> {
        let due = self.due()?;
        if now >= due {
            self.last = Some(now);
            self.held.pop_front()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dispatch_by_subprotocol() {
        assert_eq!(speaks(None), Speaks::Rosbridge);
        assert_eq!(speaks(Some("")), Speaks::Rosbridge);
        assert_eq!(speaks(Some("chat, superchat")), Speaks::Rosbridge);
        assert_eq!(speaks(Some("foxglove.websocket.v1")), Speaks::Foxglove("foxglove.websocket.v1"));
        assert_eq!(speaks(Some("foxglove.websocket.v1, foxglove.sdk.v1")), Speaks::Foxglove("foxglove.sdk.v1"));
    }

    #[test]
    fn globs_as_fnmatch() {
        assert!(glob_match("*", "/anything/at/all"));
        assert!(glob_match("/rosa/*", "/rosa/updates"));
        assert!(glob_match("/rosa/*", "/rosa/a/b"));
        assert!(!glob_match("/rosa/*", "/other"));
        assert!(glob_match("/r?/cmd", "/r1/cmd"));
        assert!(!glob_match("/r?/cmd", "/r12/cmd"));
        assert!(glob_match("/r[0-9]/cmd", "/r7/cmd"));
        assert!(!glob_match("/r[!0-9]/cmd", "/r7/cmd"));
        assert!(glob_match("*updates", "/rosa/updates"));
        assert!(glob_match("/a*b*c", "/axxbyyc"));
        assert!(!glob_match("/a*b*c", "/axxbyy"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "/x"));
    }

    #[test]
    fn access_lists() {
        let a = Access { topics: vec!["/rosa/*".into()], ..Default::default() };
        assert!(a.allows(Kind::Topic, "/rosa/updates"));
        assert!(!a.allows(Kind::Topic, "/secret"));
        assert!(a.allows(Kind::Service, "/anything"));
        let e = a.check(Kind::Topic, "/secret").unwrap_err();
        assert!(e.contains("/secret") && e.contains("topics_glob"), "{e}");
    }

    #[test]
    fn outbox_drops_oldest_and_counts() {
        let o = Outbox::new(3, 1 << 20);
        for i in 0..10 {
            o.push(Frame::Text(i.to_string()));
        }
        assert_eq!(o.dropped(), 7);
        let got = o.drain_now(100);
        assert_eq!(got, vec![Frame::Text("7".into()), Frame::Text("8".into()), Frame::Text("9".into())]);
        let b = Outbox::new(100, 10);
        b.push(Frame::Binary(vec![0; 6]));
        b.push(Frame::Binary(vec![1; 6]));
        assert_eq!((b.len(), b.dropped()), (1, 1));
        b.push(Frame::Binary(vec![2; 50]));
        assert_eq!((b.len(), b.dropped()), (1, 2), "an oversize frame goes alone");
        b.close();
        assert!(!b.push(Frame::Text("late".into())));
    }

    #[tokio::test]
    async fn outbox_pop_waits_and_ends() {
        let o = std::sync::Arc::new(Outbox::new(10, 1000));
        let o2 = o.clone();
        let t = tokio::spawn(async move { o2.pop().await });
        tokio::task::yield_now().await;
        o.push(Frame::Text("x".into()));
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), t).await.unwrap().unwrap(), Some(Frame::Text("x".into())));
        o.close();
        assert_eq!(o.pop().await, None);
    }

    #[test]
    fn fragments_round_trip() {
        let msg = json!({"op": "publish", "topic": "/t", "msg": {"data": "héllo wörld ".repeat(50)}}).to_string();
        let frags = fragments(&msg, 17, "m1");
        assert!(frags.len() > 10);
        let mut r = Reassembly::new(1 << 20, 10, Duration::from_secs(60));
        let mut out = None;
        // Out of order, one repeated before the message completes (the last one completes it).
        let mut order: Vec<usize> = (0..frags.len()).rev().collect();
        order.insert(1, frags.len() - 1);
        for i in order {
            let v: serde_json::Value = serde_json::from_str(&frags[i]).unwrap();
            if let Some(m) = r.add(&v).unwrap() {
                out = Some(m);
            }
        }
        assert_eq!(out.as_deref(), Some(msg.as_str()));
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn broken_fragments_are_errors() {
        let mut r = Reassembly::new(100, 2, Duration::from_secs(60));
        assert!(r.add(&json!({"op": "fragment"})).is_err());
        assert!(r.add(&json!({"id": "a", "data": "x", "num": 3, "total": 2})).is_err());
        assert!(r.add(&json!({"id": "a", "data": "x", "num": 0, "total": 0})).is_err());
        assert!(r.add(&json!({"id": "a", "data": 5, "num": 0, "total": 2})).is_err());
        assert!(matches!(r.add(&json!({"id": "a", "data": "x", "num": 0, "total": 1_000_000})), Err(FragmentError::TooLarge { .. })));
        let mut big = Reassembly::new(1 << 30, 2, Duration::from_secs(60));
        assert!(matches!(big.add(&json!({"id": "a", "data": "x", "num": 0, "total": 500_000_000})), Err(FragmentError::Invalid(_))));
        assert_eq!(r.add(&json!({"id": "a", "data": "x", "num": 0, "total": 2})), Ok(None));
        assert!(r.add(&json!({"id": "a", "data": "x", "num": 1, "total": 3})).is_err(), "total changed");
        assert_eq!(r.add(&json!({"id": "b", "data": "x", "num": 0, "total": 2})), Ok(None));
        assert_eq!(r.add(&json!({"id": "c", "data": "x", "num": 0, "total": 2})), Ok(None));
        assert!(matches!(r.add(&json!({"id": "d", "data": "x", "num": 0, "total": 2})), Err(FragmentError::TooMany { .. })));
        assert!(matches!(r.add(&json!({"id": "b", "data": "y".repeat(200), "num": 1, "total": 2})), Err(FragmentError::TooLarge { .. })));
    }

    #[test]
    fn throttle_keeps_latest() {
        let t0 = Instant::now();
        let mut th = Throttle::new(Duration::from_millis(100), 1);
        assert_eq!(th.offer(1, t0), Some(1));
        assert_eq!(th.offer(2, t0 + Duration::from_millis(10)), None);
        assert_eq!(th.offer(3, t0 + Duration::from_millis(20)), None);
        assert_eq!(th.due(), Some(t0 + Duration::from_millis(100)));
        assert_eq!(th.take_due(t0 + Duration::from_millis(50)), None);
        assert_eq!(th.take_due(t0 + Duration::from_millis(100)), Some(3));
        assert_eq!(th.offer(4, t0 + Duration::from_millis(250)), Some(4));
        let mut none = Throttle::new(Duration::ZERO, 1);
        assert_eq!(none.offer(1, t0), Some(1));
        assert_eq!(none.offer(2, t0), Some(2));
    }

    #[test]
    fn names_are_absolute() {
        assert_eq!(absolute("rosapi/get_param"), "/rosapi/get_param");
        assert_eq!(absolute("/rosa/updates"), "/rosa/updates");
    }
}
