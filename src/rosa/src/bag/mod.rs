//! rosbag2 bags without rosbag2: recording, reading, repairing and describing the bags
//! `ros2 bag record -s mcap` writes on Jazzy (a directory with `metadata.yaml` version 9 and
//! `<name>_<n>.mcap` files: profile `ros2`, `ros2msg` schemas, `cdr` messages). No ROS here: the
//! `bag_recorder` node and the `rosa_bag` tool (src/nodes/bag.rs) feed it raw CDR from the
//! dynamic-message layer and publish what it reads.

pub mod metadata;
pub mod qos;
pub mod reader;
pub mod writer;

pub use metadata::Metadata;
pub use qos::Qos;
pub use reader::{repair, Bag, BagMessage, BagTopic, RepairReport};
pub use writer::{BagWriter, Compression, TopicId, TopicInfo, WriterOptions};

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BagError {
    #[error("{}: {source}{}", path.display(), hint(source))]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {why}", path.display())]
    Mcap { path: PathBuf, why: String },
    #[error("{}: invalid metadata.yaml: {why}", path.display())]
    Metadata { path: PathBuf, why: String },
    #[error("{}: ends early after {messages} messages ({why}); `./rosa bag repair` makes the bag whole", path.display())]
    Truncated { path: PathBuf, messages: u64, why: String },
    #[error("{0}")]
    Invalid(String),
}

fn hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => " (the disk is full: recording stopped)",
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => " (not writable: choose another output directory)",
        _ => "",
    }
}

impl BagError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn mcap(path: &Path, e: mcap::McapError) -> Self {
        match e {
            mcap::McapError::Io(source) => Self::Io { path: path.to_path_buf(), source },
            other => Self::Mcap { path: path.to_path_buf(), why: other.to_string() },
        }
    }
}

/// The topics `./rosa bag record` and `./rosa up --record` take when none are named.
pub const DEFAULT_TOPICS: &[&str] = &["/rosa/*", "/joint_states", "/tf", "/tf_static", "/robot_description", "/diagnostics", "/rosout"];

/// Audio topics, recorded only when asked (`--audio`): they are large.
pub const AUDIO_TOPICS: &[&str] = &["/rosa/audio*", "/audio*", "*/audio"];

/// Which topics a recording takes: `include` globs (`*` any characters, `?` one), or every
/// topic with `all`; minus the `exclude` globs.
#[derive(Clone, Debug, Default)]
pub struct TopicSelector {
    pub all: bool,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl TopicSelector {
    pub fn selects(&self, topic: &str) -> bool {
        (self.all || self.include.iter().any(|g| glob_match(g, topic))) && !self.exclude.iter().any(|g| glob_match(g, topic))
    }
}

/// `*` matches any run of characters (`/` included), `?` one character; nothing else is special.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// `ros2 bag info`'s description of a bag.
pub fn describe(bag: &Bag) -> Result<String, BagError> {
    use std::fmt::Write;
    let topics = bag.topics()?;
    let size: u64 = bag.files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    let (start, duration, count, distro) = match &bag.metadata {
        Some(m) => (m.starting_time.nanoseconds_since_epoch, m.duration.nanoseconds, m.message_count, m.ros_distro.clone().unwrap_or_default()),
        None => {
            let mut first = u64::MAX;
            let mut last = 0;
            for m in bag.messages().flatten() {
                first = first.min(m.log_time);
                last = last.max(m.log_time);
            }
            let n = topics.iter().map(|t| t.message_count).sum();
            (if n == 0 { 0 } else { first }, if n == 0 { 0 } else { last - first }, n, String::new())
        }
    };
    let mut s = String::new();
    let files: Vec<String> = bag.files.iter().map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()).collect();
    let _ = writeln!(s, "Files:             {}", files.join("\n                   "));
    let _ = writeln!(s, "Bag size:          {}", human_size(size));
    let _ = writeln!(s, "Storage id:        mcap");
    let _ = writeln!(s, "ROS Distro:        {}", if distro.is_empty() { "unknown" } else { &distro });
    let _ = writeln!(s, "Duration:          {:.9}s", duration as f64 / 1e9);
    let _ = writeln!(s, "Start:             {}", stamp_text(start));
    let _ = writeln!(s, "End:               {}", stamp_text(start + duration));
    let _ = writeln!(s, "Messages:          {count}");
    let _ = write!(s, "Topic information: ");
    for (i, t) in topics.iter().enumerate() {
        if i > 0 {
            let _ = write!(s, "                   ");
        }
        let _ = writeln!(s, "Topic: {} | Type: {} | Count: {} | Serialization Format: cdr", t.name, t.type_name, t.message_count);
    }
    if topics.is_empty() {
        let _ = writeln!(s);
    }
    if bag.metadata.is_none() {
        let _ = writeln!(s, "(no metadata.yaml: counted from the files; `./rosa bag repair` writes one)");
    }
    Ok(s)
}

fn human_size(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{v:.1} {}", units[u]) }
}

fn stamp_text(ns: u64) -> String {
    format!("{}.{:09} (ns since the epoch: {ns})", ns / 1_000_000_000, ns % 1_000_000_000)
}

#[cfg(test)]
mod tests;
