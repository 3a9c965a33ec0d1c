//! The `bag_recorder` node and the `rosa_bag` tool (`./rosa bag record|info|play|repair`): ROS
//! around [`crate::bag`], on the dynamic-message layer (raw CDR subscriptions with rmw's message
//! info, publishers of any installed type with a given QoS).
//!
//! Recording: a discovery task finds the selected topics as their publishers appear and
//! subscribes with a QoS matched to them (transient-local when they all are, so latched state
//! such as `/rosa/processes` and `/robot_description` reaches a recorder that joins late).
//! Subscription callbacks (in the spin thread) only push the CDR bytes into one bounded queue
//! (bounded in messages and in bytes; what does not fit is counted as dropped and logged);
//! one writer thread owns the bag and flushes a chunk every `flush_period_sec`.

use crate::bag::{self, Bag, BagError, BagWriter, Compression, Qos, TopicId, TopicInfo, TopicSelector, WriterOptions};
use crate::dynmsg::{is_hidden, match_publishers, DynNode, DynPublisher, RawCallbackSubscription, Registry, SerializedMessage, TopicEndpointInfo};
use crate::ros;
use crate::ConfigurationError;
use r2r::qos::{DurabilityPolicy, HistoryPolicy, LivelinessPolicy, ReliabilityPolicy};
use r2r::QosProfile;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, SendError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Parameters of the bag_recorder node (see `config/rosa.yaml`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct RecorderParams {
    /// The bag directory (must not exist or be empty); empty: `rosbag2_<date>-<time>` in the current directory.
    pub output: String,
    /// Topics to record (exact names or globs with `*` and `?`); empty: the default set (everything under /rosa, /joint_states, /tf, /tf_static, /robot_description, /diagnostics, /rosout).
    pub topics: Vec<String>,
    /// Record every topic (then `topics` is ignored).
    pub all: bool,
    /// Topics never recorded (globs).
    pub exclude: Vec<String>,
    /// Also record audio topics (large): /rosa/audio*, /audio*, */audio.
    pub audio: bool,
    /// Also record hidden topics (a name part starting with `_`, such as actions' feedback and status), as rosbag2's --include-hidden-topics.
    pub include_hidden: bool,
    /// Chunk compression: none, zstd or lz4.
    pub compression: String,
    /// Target chunk size, bytes.
    #[schemars(range(min = 4096, max = 1073741824))]
    pub chunk_size: u64,
    /// Start a new file beyond this size, bytes (0: never).
    #[schemars(range(min = 0, max = 1099511627776u64))]
    pub max_bag_size: u64,
    /// Start a new file after this long, seconds (0: never).
    #[schemars(range(min = 0.0, max = 31536000.0))]
    pub max_bag_duration_sec: f64,
    /// How often the open chunk is written out and synced (what a crash can lose at most), seconds.
    #[schemars(range(min = 0.01, max = 3600.0))]
    pub flush_period_sec: f64,
    /// How often the graph is looked at for new topics, seconds.
    #[schemars(range(min = 0.01, max = 60.0))]
    pub discovery_period_sec: f64,
    /// History depth of each best-effort subscription (reliable topics are read keep-all).
    #[schemars(range(min = 1, max = 100000))]
    pub depth: u64,
    /// Messages waiting for the writer at most (beyond: a callback waits up to 2 s, then drops and counts).
    #[schemars(range(min = 1, max = 10000000))]
    pub queue_messages: u64,
    /// Bytes waiting for the writer at most (beyond: a callback waits up to 2 s, then drops and counts).
    #[schemars(range(min = 65536, max = 17179869184u64))]
    pub queue_bytes: u64,
}

impl Default for RecorderParams {
    fn default() -> Self {
        Self {
            output: String::new(),
            topics: Vec::new(),
            all: false,
            exclude: Vec::new(),
            audio: false,
            include_hidden: false,
            compression: "none".into(),
            chunk_size: 1 << 20,
            max_bag_size: 0,
            max_bag_duration_sec: 0.0,
            flush_period_sec: 1.0,
            discovery_period_sec: 0.1,
            depth: 1000,
            queue_messages: 100_000,
            queue_bytes: 16 << 20,
        }
    }
}

impl crate::params::NodeParams for RecorderParams {
    const DYNAMIC: &'static [&'static str] = &[];

    fn check(&self) -> Result<(), String> {
        self.compression.parse::<Compression>().map(|_| ()).map_err(|e| e.to_string())
    }
}

impl RecorderParams {
    fn selector(&self) -> TopicSelector {
        let mut include: Vec<String> = if self.topics.is_empty() {
            bag::DEFAULT_TOPICS.iter().map(|s| s.to_string()).collect()
        } else {
            self.topics.clone()
        };
        let mut exclude = self.exclude.clone();
        if self.audio {
            include.extend(bag::AUDIO_TOPICS.iter().map(|s| s.to_string()));
        } else if self.topics.is_empty() && !self.all {
            // The default set takes no audio unless asked (named topics are taken as named).
            exclude.extend(bag::AUDIO_TOPICS.iter().map(|s| s.to_string()));
        }
        TopicSelector { all: self.all, include, exclude }
    }

    fn writer_options(&self) -> WriterOptions {
        WriterOptions {
            chunk_size: self.chunk_size,
            compression: self.compression.parse().unwrap_or(Compression::None),
            max_file_size: self.max_bag_size,
            max_file_duration_ns: (self.max_bag_duration_sec.clamp(0.0, 31_536_000.0) * 1e9) as u64,
        }
    }
}

/// The default bag directory name, as rosbag2 makes it (local time is not known here: UTC).
pub fn default_bag_name(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("rosbag2_{y:04}_{m:02}_{d:02}-{:02}_{:02}_{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

// ---------------------------------------------------------------------------------------------
// QoS between r2r and the bag
// ---------------------------------------------------------------------------------------------

pub fn qos_to_bag(q: &QosProfile) -> Qos {
    let history = match q.history {
        HistoryPolicy::KeepAll => "keep_all",
        HistoryPolicy::KeepLast => "keep_last",
        HistoryPolicy::SystemDefault => "system_default",
        HistoryPolicy::Unknown => "unknown",
    };
    let reliability = match q.reliability {
        ReliabilityPolicy::BestEffort => "best_effort",
        ReliabilityPolicy::Reliable => "reliable",
        ReliabilityPolicy::SystemDefault => "system_default",
        ReliabilityPolicy::BestAvailable => "best_available",
        ReliabilityPolicy::Unknown => "unknown",
    };
    let durability = match q.durability {
        DurabilityPolicy::TransientLocal => "transient_local",
        DurabilityPolicy::Volatile => "volatile",
        DurabilityPolicy::SystemDefault => "system_default",
        DurabilityPolicy::BestAvailable => "best_available",
        DurabilityPolicy::Unknown => "unknown",
    };
    let liveliness = match q.liveliness {
        LivelinessPolicy::Automatic => "automatic",
        LivelinessPolicy::ManualByNode => "manual_by_node",
        LivelinessPolicy::ManualByTopic => "manual_by_topic",
        LivelinessPolicy::SystemDefault => "system_default",
        LivelinessPolicy::BestAvailable => "best_available",
        LivelinessPolicy::Unknown => "unknown",
    };
    Qos {
        history: history.into(),
        depth: q.depth as u64,
        reliability: reliability.into(),
        durability: durability.into(),
        deadline: bag::qos::RosDuration::from_std(q.deadline),
        lifespan: bag::qos::RosDuration::from_std(q.lifespan),
        liveliness: liveliness.into(),
        liveliness_lease_duration: bag::qos::RosDuration::from_std(q.liveliness_lease_duration),
        avoid_ros_namespace_conventions: q.avoid_ros_namespace_conventions,
    }
}

/// The profile to publish with: history, depth, reliability and durability as recorded (deadline,
/// lifespan and liveliness stay the defaults, as `ros2 bag play` leaves them).
pub fn qos_from_bag(q: &Qos) -> QosProfile {
    let depth = usize::try_from(q.depth.clamp(1, 100_000)).unwrap_or(10);
    let mut p = if q.is_keep_all() { QosProfile::default().keep_all() } else { QosProfile::default().keep_last(depth) };
    p = if q.is_best_effort() { p.best_effort() } else { p.reliable() };
    if q.is_transient_local() {
        p.transient_local()
    } else {
        p.volatile()
    }
}

// ---------------------------------------------------------------------------------------------
// The recorder
// ---------------------------------------------------------------------------------------------

enum Item {
    Topic(TopicInfo),
    Message(TopicId, SerializedMessage),
}

/// How long a subscription callback waits for room in a full queue before dropping a message.
const FULL_QUEUE_WAIT: Duration = Duration::from_secs(2);

/// The messages between the subscriptions and the writer thread, bounded by `queue_messages` and
/// `queue_bytes` with counters of our own: a `sync_channel` of 100,000 slots allocates (and
/// touches) all of them at once, 12 MB of the recorder's idle RSS.
struct Queue {
    tx: Sender<Item>,
    bytes: Arc<AtomicU64>,
    max_bytes: u64,
    messages: Arc<AtomicU64>,
    max_messages: u64,
    dropped: Arc<AtomicU64>,
    /// Set when the writer thread has stopped or the recorder is stopping: no more waiting for room.
    closed: Arc<AtomicBool>,
}

impl Queue {
    /// The subscription callback of topic `id` (runs in the spin thread; blocks only while the
    /// queue is full, at most `FULL_QUEUE_WAIT`).
    fn callback(&self, id: TopicId) -> Box<dyn FnMut(SerializedMessage) -> bool + Send> {
        let (tx, bytes, max, dropped) = (self.tx.clone(), self.bytes.clone(), self.max_bytes, self.dropped.clone());
        let (messages, max_messages, closed) = (self.messages.clone(), self.max_messages, self.closed.clone());
        Box::new(move |m: SerializedMessage| {
            let len = m.data.len() as u64;
            // A message larger than the whole byte budget still goes in when the queue is empty.
            let full = || {
                (bytes.load(Ordering::Relaxed) + len > max && messages.load(Ordering::Relaxed) > 0)
                    || messages.load(Ordering::Relaxed) >= max_messages
            };
            // When the writer is behind, wait for it (up to FULL_QUEUE_WAIT) instead of dropping:
            // the spin thread then takes nothing, a reliable topic's keep-all reader holds back
            // its acknowledgements, and a publisher that keeps all waits too.
            let t0 = Instant::now();
            while full() && t0.elapsed() < FULL_QUEUE_WAIT && !closed.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            if full() {
                dropped.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            bytes.fetch_add(len, Ordering::Relaxed);
            messages.fetch_add(1, Ordering::Relaxed);
            match tx.send(Item::Message(id, m)) {
                Ok(()) => true,
                Err(SendError(_)) => false,
            }
        })
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The writer thread: everything in the queue goes into the bag, a chunk is flushed every
/// `flush`; when the queue closes the bag is finished. An error ends recording (the bag is
/// finished as far as it can be) and is returned.
fn write_loop(
    mut w: BagWriter, rx: Receiver<Item>, queued: (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicBool>), flush: Duration, written: Arc<AtomicU64>,
) -> Result<bag::Metadata, BagError> {
    let (bytes, messages, closed) = queued;
    let mut last_flush = Instant::now();
    let mut dirty = false;
    let result = loop {
        let item = match rx.recv_timeout(flush.saturating_sub(last_flush.elapsed())) {
            Ok(item) => Some(item),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break Ok(()),
        };
        let r = match item {
            Some(Item::Topic(info)) => w.add_topic(info).map(|_| ()),
            Some(Item::Message(id, m)) => {
                let len = m.data.len() as u64;
                let log_time = match u64::try_from(m.info.received_timestamp_ns) {
                    Ok(t) if t > 0 => t,
                    _ => now_ns(),
                };
                let publish_time = u64::try_from(m.info.source_timestamp_ns).unwrap_or(0);
                let r = w.write(id, log_time, publish_time, &m.data);
                bytes.fetch_sub(len, Ordering::Relaxed);
                messages.fetch_sub(1, Ordering::Relaxed);
                written.fetch_add(1, Ordering::Relaxed);
                dirty = true;
                r
            }
            None => Ok(()),
        };
        if let Err(e) = r {
            break Err(e);
        }
        if last_flush.elapsed() >= flush {
            if dirty {
                if let Err(e) = w.flush() {
                    break Err(e);
                }
                dirty = false;
            }
            last_flush = Instant::now();
        }
    };
    closed.store(true, Ordering::Relaxed);
    drop(rx);
    match result {
        Ok(()) => w.finish(),
        Err(e) => {
            let dir = w.dir().to_path_buf();
            if let Err(e2) = w.finish() {
                tracing::error!("the bag {} could not be finished either ({e2}): `./rosa bag repair {}` recovers what was flushed", dir.display(), dir.display());
            }
            Err(e)
        }
    }
}

struct Recording {
    subscriptions: Vec<RawCallbackSubscription>,
    known: HashSet<String>,
    next_id: usize,
}

/// Look at the graph once; subscribe to every new selected topic that has a publisher.
async fn discover(dn: &DynNode, registry: &Registry, selector: &TopicSelector, hidden: bool, depth: usize, queue: &Queue, rec: &mut Recording) {
    let topics = match dn.with_node(|n| n.get_topic_names_and_types()).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return tracing::warn!("cannot read the graph: {e}"),
        Err(_) => return,
    };
    let mut names: Vec<_> = topics.into_iter().collect();
    names.sort();
    for (topic, types) in names {
        if rec.known.contains(&topic) || !selector.selects(&topic) || (!hidden && is_hidden(&topic)) {
            continue;
        }
        let publishers: Vec<TopicEndpointInfo> = dn.publishers_info(&topic).await.unwrap_or_default();
        if publishers.is_empty() {
            continue; // subscribed to once it is published, with its publishers' QoS
        }
        let type_name = publishers.first().map(|p| p.topic_type.clone()).or_else(|| types.first().cloned()).unwrap_or_default();
        rec.known.insert(topic.clone());
        let schema = match registry.ros2msg(&type_name) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(topic = %topic, "not recorded: its type {type_name} is not installed here ({e})");
                continue;
            }
        };
        let same_type: Vec<TopicEndpointInfo> = publishers.into_iter().filter(|p| p.topic_type == type_name).collect();
        let info = TopicInfo {
            name: topic.clone(),
            type_name: type_name.clone(),
            schema,
            type_hash: registry.type_hash(&type_name).unwrap_or_default(),
            offered_qos: same_type.iter().map(|p| qos_to_bag(&p.qos_profile)).collect(),
        };
        let qos = recording_qos(&same_type, depth);
        let id = TopicId(rec.next_id);
        if queue.tx.send(Item::Topic(info)).is_err() {
            return;
        }
        rec.next_id += 1;
        match dn.subscribe_raw_with(&topic, &type_name, qos.clone(), queue.callback(id)).await {
            Ok(s) => {
                tracing::info!(topic = %topic, msg_type = %type_name, durability = ?qos.durability, reliability = ?qos.reliability, "recording");
                rec.subscriptions.push(s);
            }
            Err(e) => tracing::warn!(topic = %topic, "cannot subscribe: {e}"),
        }
    }
}

/// The recorder's QoS for a topic: reliability and durability matched to its publishers; a
/// reliable topic is read keep-all, a best-effort one keep-last `depth`. (A publisher's history
/// is not in DDS discovery, so it cannot be matched.) A keep-all reliable reader acknowledges a
/// sample only once it has room for it: a writer that keeps all waits for the recorder instead of
/// losing samples, one that keeps last loses only what its own history no longer holds, and the
/// recorder's reader never overwrites what it has not taken yet (a keep-last 1000 reader lost
/// 13,085 of 20,000 1 kB messages published in 0.46 s).
fn recording_qos(publishers: &[TopicEndpointInfo], depth: usize) -> QosProfile {
    let q = match_publishers(publishers, depth);
    if q.reliability == ReliabilityPolicy::Reliable {
        q.keep_all()
    } else {
        q
    }
}

pub async fn run_recorder() -> anyhow::Result<()> {
    let ctx = r2r::Context::create()?;
    let mut node = r2r::Node::create(ctx, "bag_recorder", "/rosa")?;
    let declared = ros::declare_params::<RecorderParams>(&mut node)?;
    ros::attach_rosout(&mut node);
    let p = declared.current();
    let dir = if p.output.trim().is_empty() { PathBuf::from(default_bag_name(SystemTime::now())) } else { PathBuf::from(p.output.trim()) };
    let writer = BagWriter::create(&dir, p.writer_options())
        .map_err(|e| anyhow::Error::new(ConfigurationError(format!("cannot record into {}: {e}", dir.display()))))?;
    let dn = DynNode::start(node, Arc::new(Registry::from_env()));

    let (tx, rx) = channel::<Item>();
    let queue = Queue {
        tx,
        bytes: Arc::default(),
        max_bytes: p.queue_bytes,
        messages: Arc::default(),
        max_messages: p.queue_messages.max(1),
        dropped: Arc::default(),
        closed: Arc::default(),
    };
    let written = Arc::new(AtomicU64::new(0));
    let flush = Duration::from_secs_f64(p.flush_period_sec.clamp(0.01, 3600.0));
    let writer_thread = {
        let (queued, written) = ((queue.bytes.clone(), queue.messages.clone(), queue.closed.clone()), written.clone());
        std::thread::Builder::new().name("bag-writer".into()).spawn(move || write_loop(writer, rx, queued, flush, written))?
    };
    tracing::info!(bag = %dir.display(), "bag_recorder ready");

    let selector = p.selector();
    let depth = usize::try_from(p.depth).unwrap_or(1000);
    let period = Duration::from_secs_f64(p.discovery_period_sec.clamp(0.01, 60.0));
    let mut rec = Recording { subscriptions: Vec::new(), known: HashSet::new(), next_id: 0 };
    let registry = dn.registry().clone();
    let shutdown = ros::shutdown_signal();
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(period);
    let mut report = tokio::time::interval(Duration::from_secs(10));
    let mut dropped_seen = 0;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                if writer_thread.is_finished() {
                    break;
                }
                discover(&dn, &registry, &selector, p.include_hidden, depth, &queue, &mut rec).await;
            }
            _ = report.tick() => {
                let dropped = queue.dropped.load(Ordering::Relaxed);
                if dropped > dropped_seen {
                    tracing::warn!(dropped = dropped - dropped_seen, "messages dropped: the writer could not keep up (queue_messages / queue_bytes)");
                    dropped_seen = dropped;
                }
                tracing::debug!(messages = written.load(Ordering::Relaxed), topics = rec.subscriptions.len(), "recording");
            }
        }
    }
    // Stop taking messages, then let the writer drain the queue and finish the bag.
    queue.closed.store(true, Ordering::Relaxed);
    drop(rec.subscriptions);
    dn.stop();
    drop(queue.tx);
    let result = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    let dropped = queue.dropped.load(Ordering::Relaxed);
    match result {
        Ok(Ok(Ok(m))) => {
            tracing::info!(bag = %dir.display(), messages = m.message_count, topics = m.topics_with_message_count.len(), dropped, "bag finished");
            Ok(())
        }
        Ok(Ok(Err(e))) => Err(anyhow::Error::new(ConfigurationError(format!("recording stopped: {e}; the graph goes on without it")))),
        _ => Err(anyhow::anyhow!("the bag writer thread panicked; `./rosa bag repair {}` recovers what was flushed", dir.display())),
    }
}

// ---------------------------------------------------------------------------------------------
// The tool: ./rosa bag record|info|play|repair
// ---------------------------------------------------------------------------------------------

const USAGE: &str = "usage: ./rosa bag record [-o DIR] [TOPIC…] [--all] [--exclude GLOB]… [--audio] [--include-hidden-topics] [--compression none|zstd|lz4] [--max-bag-size BYTES] [--max-bag-duration SEC]
       ./rosa bag info DIR
       ./rosa bag play DIR [--rate R] [--topics TOPIC…] [--loop] [--start-offset SEC] [--delay SEC] [--wait-for-subscribers SEC]
       ./rosa bag repair DIR";

fn usage(why: &str) -> anyhow::Error {
    anyhow::Error::new(ConfigurationError(format!("{why}\n{USAGE}")))
}

fn value<'a>(args: &mut impl Iterator<Item = &'a String>, flag: &str) -> anyhow::Result<&'a String> {
    args.next().ok_or_else(|| usage(&format!("{flag} needs a value")))
}

fn number(text: &str, flag: &str, min: f64, max: f64) -> anyhow::Result<f64> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && (min..=max).contains(&v) => Ok(v),
        _ => Err(usage(&format!("{flag} {text}: give a number from {min} to {max}"))),
    }
}

/// `rosa_bag record …`: run the bag_recorder node with these arguments as its parameters.
fn record(args: &[String]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut params: Vec<(String, serde_json::Value)> = Vec::new();
    let (mut topics, mut exclude) = (Vec::<String>::new(), Vec::<String>::new());
    let mut it = args.iter();
    let mut ros_args = Vec::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" | "--output" => params.push(("output".into(), value(&mut it, a)?.clone().into())),
            "-a" | "--all" => params.push(("all".into(), true.into())),
            "-e" | "--exclude" => exclude.push(value(&mut it, a)?.clone()),
            "--audio" => params.push(("audio".into(), true.into())),
            "--include-hidden-topics" => params.push(("include_hidden".into(), true.into())),
            "--compression" => {
                let c = value(&mut it, a)?;
                c.parse::<Compression>().map_err(|e| usage(&e.to_string()))?;
                params.push(("compression".into(), c.clone().into()));
            }
            "--max-bag-size" => params.push(("max_bag_size".into(), (number(value(&mut it, a)?, a, 0.0, 1099511627776.0)? as u64).into())),
            "--max-bag-duration" => params.push(("max_bag_duration_sec".into(), number(value(&mut it, a)?, a, 0.0, 31536000.0)?.into())),
            "--ros-args" => {
                ros_args.extend(std::iter::once(a.clone()).chain(it.by_ref().cloned()));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            flag if flag.starts_with('-') => return Err(usage(&format!("unknown option {flag}"))),
            topic => topics.push(topic.to_string()),
        }
    }
    if !topics.is_empty() {
        params.push(("topics".into(), topics.into()));
    }
    if !exclude.is_empty() {
        params.push(("exclude".into(), exclude.into()));
    }
    let exe = std::env::current_exe()?.with_file_name("bag_recorder");
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("--ros-args");
    for (k, v) in params {
        cmd.arg("-p").arg(format!("{k}:={v}"));
    }
    if !ros_args.is_empty() {
        cmd.args(&ros_args[1..]);
    }
    Err(anyhow::anyhow!("cannot run {}: {}", exe.display(), cmd.exec()))
}

struct PlayOptions {
    rate: f64,
    topics: Vec<String>,
    looped: bool,
    start_offset: f64,
    delay: f64,
    wait: f64,
}

fn parse_play(args: &[String]) -> anyhow::Result<(PathBuf, PlayOptions)> {
    let mut o = PlayOptions { rate: 1.0, topics: Vec::new(), looped: false, start_offset: 0.0, delay: 0.0, wait: 2.0 };
    let mut dir = None;
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-r" | "--rate" => o.rate = number(value(&mut it, a)?, a, 0.001, 1000.0)?,
            "-l" | "--loop" => o.looped = true,
            "--start-offset" => o.start_offset = number(value(&mut it, a)?, a, 0.0, 1e9)?,
            "-d" | "--delay" => o.delay = number(value(&mut it, a)?, a, 0.0, 3600.0)?,
            "--wait-for-subscribers" => o.wait = number(value(&mut it, a)?, a, 0.0, 3600.0)?,
            "--topics" => {
                while let Some(t) = it.next_if(|t| !t.starts_with('-')) {
                    o.topics.push(t.clone());
                }
            }
            flag if flag.starts_with('-') => return Err(usage(&format!("unknown option {flag}"))),
            d if dir.is_none() => dir = Some(PathBuf::from(d)),
            extra => return Err(usage(&format!("one bag at a time ({extra}?)"))),
        }
    }
    Ok((dir.ok_or_else(|| usage("which bag?"))?, o))
}

/// `rosa_bag play`: republish with the recorded QoS and timing.
async fn play(args: &[String]) -> anyhow::Result<()> {
    let (dir, o) = parse_play(args)?;
    let bag = Bag::open(&dir)?;
    let topics = bag.topics()?;
    let registry = Arc::new(Registry::from_env());
    let ctx = r2r::Context::create()?;
    let node = r2r::Node::create(ctx, "rosa_bag_player", "/")?;
    let dn = DynNode::start(node, registry);
    let mut publishers: std::collections::HashMap<String, DynPublisher> = std::collections::HashMap::new();
    for t in &topics {
        if !o.topics.is_empty() && !o.topics.iter().any(|g| bag::glob_match(g, &t.name)) {
            continue;
        }
        let qos = qos_from_bag(&bag::qos::for_playback(&t.offered_qos));
        match dn.publisher(&t.name, &t.type_name, Some(qos)).await {
            Ok(p) => {
                publishers.insert(t.name.clone(), p);
            }
            Err(e) => eprintln!("rosa bag play: {} is not played: {e}", t.name),
        }
    }
    if publishers.is_empty() {
        return Err(anyhow::anyhow!("nothing to play in {} (topics: {})", dir.display(), topics.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")));
    }
    // Discovery takes a moment: give the subscribers that are there time to match.
    let wait = Duration::from_secs_f64(o.wait);
    futures::future::join_all(publishers.values().map(|p| p.wait_for_subscribers(wait))).await;
    tokio::time::sleep(Duration::from_secs_f64(o.delay)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        ros::shutdown_signal().await;
        flag.store(true, Ordering::Relaxed);
    });
    let start_time = match &bag.metadata {
        Some(m) if m.message_count > 0 => Some(m.starting_time.nanoseconds_since_epoch),
        _ => None,
    };
    // Played here, in the node's task (the publishers are not Send); tokio's timer keeps the
    // recorded spacing (millisecond resolution).
    let mut played = 0;
    loop {
        played += play_once(&bag, &publishers, &o, start_time, &stop).await;
        if !o.looped || stop.load(Ordering::Relaxed) {
            break;
        }
    }
    // Reliable subscribers get the last messages before the publishers go.
    tokio::time::sleep(Duration::from_millis(300)).await;
    eprintln!("rosa bag play: {played} messages played");
    dn.stop();
    Ok(())
}

async fn play_once(bag: &Bag, pubs: &std::collections::HashMap<String, DynPublisher>, o: &PlayOptions, start_time: Option<u64>, stop: &AtomicBool) -> u64 {
    let offset = (o.start_offset * 1e9) as u64;
    let mut first: Option<u64> = start_time;
    let mut clock: Option<(tokio::time::Instant, u64)> = None;
    let mut n = 0;
    for m in bag.messages() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                eprintln!("rosa bag play: {e}");
                continue;
            }
        };
        let begin = *first.get_or_insert(m.log_time);
        if m.log_time < begin.saturating_add(offset) {
            continue;
        }
        let Some(p) = pubs.get(&*m.topic) else { continue };
        let (wall0, bag0) = *clock.get_or_insert((tokio::time::Instant::now(), m.log_time));
        let due = wall0 + Duration::from_secs_f64(m.log_time.saturating_sub(bag0) as f64 / 1e9 / o.rate);
        while tokio::time::Instant::now() < due {
            if stop.load(Ordering::Relaxed) {
                return n;
            }
            tokio::time::sleep_until(due.min(tokio::time::Instant::now() + Duration::from_millis(100))).await;
        }
        match p.publish_cdr(&m.data) {
            Ok(()) => n += 1,
            Err(e) => eprintln!("rosa bag play: {}: {e}", m.topic),
        }
    }
    n
}

fn info(args: &[String]) -> anyhow::Result<()> {
    let [dir] = args else { return Err(usage("info takes one bag")) };
    print!("{}", bag::describe(&Bag::open(Path::new(dir))?)?);
    Ok(())
}

fn repair(args: &[String]) -> anyhow::Result<()> {
    let [dir] = args else { return Err(usage("repair takes one bag")) };
    let r = bag::repair(Path::new(dir))?;
    for (f, n) in &r.repaired {
        println!("repaired {f}: {n} messages recovered");
    }
    if r.repaired.is_empty() {
        println!("every file is whole");
    }
    println!("{}: {} messages; metadata.yaml rewritten", dir, r.messages);
    Ok(())
}

/// `rosa_bag SUBCOMMAND …` (what `./rosa bag` runs).
pub async fn run_tool() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else { return Err(usage("which subcommand?")) };
    match cmd.as_str() {
        "record" => record(rest),
        "info" => info(rest),
        "play" => play(rest).await,
        "repair" => repair(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(usage(&format!("unknown subcommand {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_rosbag2_s() {
        let t = UNIX_EPOCH + Duration::from_secs(1_764_547_200 + 3661); // 2025-12-01 01:01:01 UTC (midnight + 1 h 1 min 1 s)
        assert_eq!(default_bag_name(t), "rosbag2_2025_12_01-01_01_01");
        assert_eq!(default_bag_name(UNIX_EPOCH), "rosbag2_1970_01_01-00_00_00");
    }

    #[test]
    fn qos_round_trips_through_the_bag() {
        for q in [ros::latched(), ros::reliable(100), QosProfile::sensor_data()] {
            let b = qos_to_bag(&q);
            let back = qos_from_bag(&b);
            assert_eq!((back.reliability, back.durability, back.depth), (q.reliability, q.durability, q.depth));
        }
    }

    #[test]
    fn the_default_selection_leaves_audio_out_unless_asked() {
        let p = RecorderParams::default();
        let s = p.selector();
        assert!(s.selects("/rosa/processes") && !s.selects("/rosa/audio") && !s.selects("/chatter"));
        let s = RecorderParams { audio: true, ..Default::default() }.selector();
        assert!(s.selects("/rosa/audio") && s.selects("/audio"));
        let s = RecorderParams { topics: vec!["/mic/audio".into()], ..Default::default() }.selector();
        assert!(s.selects("/mic/audio") && !s.selects("/rosa/processes"));
    }

    #[test]
    fn play_arguments() {
        let a: Vec<String> = ["b", "--rate", "2", "--topics", "/a", "/b", "--loop"].iter().map(|s| s.to_string()).collect();
        let (d, o) = parse_play(&a).unwrap();
        assert_eq!(d, PathBuf::from("b"));
        assert_eq!((o.rate, o.topics.len(), o.looped), (2.0, 2, true));
        for bad in [&["b", "--rate", "0"][..], &["b", "--rate", "nan"], &["b", "--start-offset"], &["--bogus"], &[]] {
            let a: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            assert!(parse_play(&a).is_err(), "{bad:?}");
        }
    }
}
