//! Reading bags (ours, `ros2 bag`'s, `rosbags`'): metadata.yaml when there is one, then the MCAP
//! files in order, streamed (memory bounded by the largest chunk, not the file). A file cut
//! short (a recorder killed with SIGKILL, power loss) yields every message of its complete
//! chunks, then [`BagError::Truncated`]; [`repair`] rewrites such files and the metadata.

use super::metadata::{FileInfo, Metadata, Nanoseconds, Stamp, TopicMetadata, TopicWithCount};
use super::qos::{self, Qos};
use super::writer::{McapFile, TopicInfo, WriterOptions};
use super::BagError;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A topic as the bag describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct BagTopic {
    pub name: String,
    pub type_name: String,
    pub offered_qos: Vec<Qos>,
    pub type_hash: String,
    pub message_count: u64,
}

/// One recorded message.
#[derive(Clone, Debug)]
pub struct BagMessage {
    pub topic: Arc<str>,
    pub type_name: Arc<str>,
    /// When it was received (rosbag2's timestamp), ns since the epoch.
    pub log_time: u64,
    /// When it was published (0 if the recorder did not know), ns since the epoch.
    pub publish_time: u64,
    pub data: Vec<u8>,
}

/// A bag opened for reading.
#[derive(Clone, Debug)]
pub struct Bag {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub metadata: Option<Metadata>,
}

impl Bag {
    /// `path`: a bag directory (with or without metadata.yaml) or one `.mcap` file.
    pub fn open(path: &Path) -> Result<Self, BagError> {
        if path.is_file() {
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            return Ok(Self { dir, files: vec![path.to_path_buf()], metadata: None });
        }
        if !path.is_dir() {
            return Err(BagError::Invalid(format!("{} is not a bag (no such directory or file)", path.display())));
        }
        let metadata = if path.join(super::metadata::FILE_NAME).exists() { Some(Metadata::read(path)?) } else { None };
        let files = match &metadata {
            Some(m) if !m.relative_file_paths.is_empty() => {
                if m.storage_identifier != "mcap" {
                    return Err(BagError::Invalid(format!(
                        "{}: storage '{}' (rosa reads mcap bags; convert with `ros2 bag convert` or rosbags)",
                        path.display(),
                        m.storage_identifier
                    )));
                }
                let files: Vec<PathBuf> = m.relative_file_paths.iter().map(|f| path.join(f)).collect();
                if let Some(missing) = files.iter().find(|f| !f.exists()) {
                    return Err(BagError::Invalid(format!("{}: {} is listed in metadata.yaml but missing", path.display(), missing.display())));
                }
                files
            }
            _ => mcap_files(path)?,
        };
        if files.is_empty() {
            return Err(BagError::Invalid(format!("{} has no .mcap file", path.display())));
        }
        Ok(Self { dir: path.to_path_buf(), files, metadata })
    }

    /// The topics with their counts: from metadata.yaml, else by reading every message.
    pub fn topics(&self) -> Result<Vec<BagTopic>, BagError> {
        if let Some(m) = &self.metadata {
            return Ok(m
                .topics_with_message_count
                .iter()
                .map(|t| BagTopic {
                    name: t.topic_metadata.name.clone(),
                    type_name: t.topic_metadata.type_name.clone(),
                    offered_qos: t.topic_metadata.offered_qos_profiles.clone(),
                    type_hash: t.topic_metadata.type_description_hash.clone(),
                    message_count: t.message_count,
                })
                .collect());
        }
        let mut scan = Scan::default();
        for f in &self.files {
            let _ = scan.file(f, None)?;
        }
        Ok(scan.topics.into_iter().map(|(_, t)| t).collect())
    }

    /// Every message in file order. A file that ends early yields [`BagError::Truncated`] after
    /// its last complete chunk, and reading goes on with the next file.
    pub fn messages(&self) -> Messages {
        Messages { files: self.files.clone().into(), current: None, types: HashMap::new() }
    }
}

/// The `.mcap` files of a directory, in split order (`x_2` before `x_10`).
fn mcap_files(dir: &Path) -> Result<Vec<PathBuf>, BagError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| BagError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "mcap") && p.is_file())
        .collect();
    let index = |p: &PathBuf| -> (String, u64) {
        let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        match stem.rsplit_once('_') {
            Some((base, n)) if n.parse::<u64>().is_ok() => (base.to_string(), n.parse().unwrap_or(0)),
            _ => (stem, 0),
        }
    };
    files.sort_by_key(index);
    Ok(files)
}

type Reader = mcap::io::MessageReader<BufReader<File>>;

pub struct Messages {
    files: std::collections::VecDeque<PathBuf>,
    current: Option<(PathBuf, Reader, u64)>,
    types: HashMap<String, Arc<str>>,
}

impl Iterator for Messages {
    type Item = Result<BagMessage, BagError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let path = self.files.pop_front()?;
                match File::open(&path) {
                    Ok(f) => self.current = Some((path, mcap::io::MessageReader::new(BufReader::with_capacity(1 << 20, f)), 0)),
                    Err(e) => return Some(Err(BagError::io(&path, e))),
                }
            }
            let (path, reader, n) = self.current.as_mut()?;
            match reader.next() {
                None => self.current = None,
                Some(Ok(m)) => {
                    *n += 1;
                    let schema = m.channel.schema.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                    let type_name = self.types.entry(schema.clone()).or_insert_with(|| Arc::from(schema.as_str())).clone();
                    return Some(Ok(BagMessage {
                        topic: Arc::from(m.channel.topic.as_str()),
                        type_name,
                        log_time: m.log_time,
                        publish_time: m.publish_time,
                        data: m.data.into_owned(),
                    }));
                }
                Some(Err(e)) => {
                    let err = BagError::Truncated { path: path.clone(), messages: *n, why: e.to_string() };
                    self.current = None;
                    return Some(Err(err));
                }
            }
        }
    }
}

/// Counts and channels of files read message by message.
#[derive(Default)]
struct Scan {
    topics: Vec<(String, BagTopic)>,
}

/// What one file held.
struct FileScan {
    info: FileInfo,
    complete: bool,
}

impl Scan {
    fn topic_index(&mut self, ch: &mcap::Channel<'_>) -> usize {
        if let Some(i) = self.topics.iter().position(|(n, _)| n == &ch.topic) {
            return i;
        }
        let offered_qos = ch.metadata.get("offered_qos_profiles").and_then(|t| qos::from_yaml(t).ok()).unwrap_or_default();
        self.topics.push((
            ch.topic.clone(),
            BagTopic {
                name: ch.topic.clone(),
                type_name: ch.schema.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
                offered_qos,
                type_hash: ch.metadata.get("topic_type_hash").cloned().unwrap_or_default(),
                message_count: 0,
            },
        ));
        self.topics.len() - 1
    }

    /// Read `path`; with `out`, copy every readable message into that file too.
    fn file(&mut self, path: &Path, mut out: Option<&mut McapFile>) -> Result<FileScan, BagError> {
        let f = File::open(path).map_err(|e| BagError::io(path, e))?;
        let mut reader = mcap::io::MessageReader::new(BufReader::with_capacity(1 << 20, f));
        let (mut first, mut last, mut count, mut complete) = (u64::MAX, 0u64, 0u64, true);
        let mut infos: HashMap<u16, (usize, TopicInfo)> = HashMap::new();
        for m in reader.by_ref() {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(file = %path.display(), messages = count, "ends early: {e}");
                    complete = false;
                    break;
                }
            };
            let i = self.topic_index(&m.channel);
            self.topics[i].1.message_count += 1;
            first = first.min(m.log_time);
            last = last.max(m.log_time);
            count += 1;
            if let Some(out) = out.as_deref_mut() {
                let (idx, info) = infos.entry(m.channel.id).or_insert_with(|| {
                    let t = &self.topics[i].1;
                    let schema = m.channel.schema.as_ref().map(|s| String::from_utf8_lossy(&s.data).into_owned()).unwrap_or_default();
                    (i, TopicInfo { name: t.name.clone(), type_name: t.type_name.clone(), schema, type_hash: t.type_hash.clone(), offered_qos: t.offered_qos.clone() })
                });
                out.write(*idx, info, m.sequence, m.log_time, m.publish_time, &m.data)?;
            }
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (start, duration) = if count == 0 { (0, 0) } else { (first, last - first) };
        Ok(FileScan {
            info: FileInfo { path: name, starting_time: Stamp { nanoseconds_since_epoch: start }, duration: Nanoseconds { nanoseconds: duration }, message_count: count },
            complete,
        })
    }
}

/// What [`repair`] did.
#[derive(Debug, Default)]
pub struct RepairReport {
    /// Files rewritten because they ended early (name, messages recovered).
    pub repaired: Vec<(String, u64)>,
    pub messages: u64,
    pub metadata: Option<Metadata>,
}

/// Make a bag whole after its recorder died: every file that ends early is rewritten with every
/// message of its complete chunks and a summary; metadata.yaml is rebuilt from the files.
pub fn repair(dir: &Path) -> Result<RepairReport, BagError> {
    if !dir.is_dir() {
        return Err(BagError::Invalid(format!("{} is not a bag directory", dir.display())));
    }
    let files = mcap_files(dir)?;
    if files.is_empty() {
        return Err(BagError::Invalid(format!("{} has no .mcap file", dir.display())));
    }
    let old = Metadata::read(dir).ok();
    let mut scan = Scan::default();
    let mut report = RepairReport::default();
    let mut infos = Vec::new();
    for path in &files {
        let before: Vec<u64> = scan.topics.iter().map(|(_, t)| t.message_count).collect();
        let s = scan.file(path, None)?;
        if s.complete {
            infos.push(s.info);
            continue;
        }
        // Read it again into a new file (the counts of this file are counted once more).
        for (t, n) in scan.topics.iter_mut().zip(before.iter().copied().chain(std::iter::repeat(0))) {
            t.1.message_count = n;
        }
        let tmp = path.with_extension("mcap.repairing");
        let _ = std::fs::remove_file(&tmp);
        let mut out = McapFile::create(&tmp, &WriterOptions::default())?;
        let s = scan.file(path, Some(&mut out))?;
        out.finish(None)?;
        std::fs::rename(&tmp, path).map_err(|e| BagError::io(path, e))?;
        report.repaired.push((s.info.path.clone(), s.info.message_count));
        infos.push(s.info);
    }
    let mut m = Metadata::new();
    if let Some(o) = &old {
        m.ros_distro = o.ros_distro.clone();
        m.custom_data = o.custom_data.clone();
    }
    m.message_count = infos.iter().map(|f| f.message_count).sum();
    let with = infos.iter().filter(|f| f.message_count > 0);
    let start = with.clone().map(|f| f.starting_time.nanoseconds_since_epoch).min().unwrap_or(0);
    let end = with.map(|f| f.starting_time.nanoseconds_since_epoch + f.duration.nanoseconds).max().unwrap_or(0);
    m.starting_time.nanoseconds_since_epoch = start;
    m.duration.nanoseconds = end.saturating_sub(start);
    m.topics_with_message_count = scan
        .topics
        .into_iter()
        .map(|(_, t)| TopicWithCount {
            topic_metadata: TopicMetadata {
                name: t.name,
                type_name: t.type_name,
                serialization_format: "cdr".into(),
                offered_qos_profiles: t.offered_qos,
                type_description_hash: t.type_hash,
            },
            message_count: t.message_count,
        })
        .collect();
    m.relative_file_paths = infos.iter().map(|f| f.path.clone()).collect();
    m.files = infos;
    m.write(dir)?;
    report.messages = m.message_count;
    report.metadata = Some(m);
    Ok(report)
}
