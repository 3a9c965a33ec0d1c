//! Writing a bag: MCAP files (`<name>_<n>.mcap`, profile `ros2`, `ros2msg` schemas, `cdr`
//! messages, chunked with message and chunk indexes, statistics, summary offsets) and
//! `metadata.yaml`, split by size or duration, as `ros2 bag record -s mcap` does on Jazzy.
//!
//! Chunks are written straight to the file; [`BagWriter::flush`] closes the open chunk and syncs
//! the file, so after a crash every message up to the last flush is in complete chunks that
//! [`super::repair`] (or any linear MCAP reader) recovers.

use super::metadata::{FileInfo, Metadata, Nanoseconds, Stamp, TopicMetadata, TopicWithCount};
use super::qos::{self, Qos};
use super::BagError;
use mcap::records::MessageHeader;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Chunk compression (rosbag2's mcap storage presets: none, or zstd).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
    Lz4,
}

impl std::str::FromStr for Compression {
    type Err = BagError;
    fn from_str(s: &str) -> Result<Self, BagError> {
        match s.to_ascii_lowercase().as_str() {
            "" | "none" => Ok(Self::None),
            "zstd" => Ok(Self::Zstd),
            "lz4" => Ok(Self::Lz4),
            other => Err(BagError::Invalid(format!("compression '{other}' is not one of none, zstd, lz4"))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Target uncompressed chunk size, bytes.
    pub chunk_size: u64,
    pub compression: Compression,
    /// Start a new file beyond this size (0: never), bytes.
    pub max_file_size: u64,
    /// Start a new file after this long (0: never), nanoseconds of recorded time.
    pub max_file_duration_ns: u64,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self { chunk_size: 1 << 20, compression: Compression::None, max_file_size: 0, max_file_duration_ns: 0 }
    }
}

/// What the bag says about a topic.
#[derive(Clone, Debug)]
pub struct TopicInfo {
    pub name: String,
    pub type_name: String,
    /// The `ros2msg` schema text (the type's definition and its dependencies).
    pub schema: String,
    /// `RIHS01_…` or empty.
    pub type_hash: String,
    pub offered_qos: Vec<Qos>,
}

/// A topic of a [`BagWriter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TopicId(pub usize);

/// A file written through a shared handle, so the writer can sync it while mcap owns the buffer.
struct SharedFile(Arc<File>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for SharedFile {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        (&*self.0).seek(pos)
    }
}

/// One MCAP file of a bag (also what `repair` rewrites a damaged file with).
pub struct McapFile {
    path: PathBuf,
    file: Arc<File>,
    writer: mcap::Writer<BufWriter<SharedFile>>,
    channels: Vec<Option<u16>>,
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) count: u64,
    pub(crate) bytes: u64,
}

impl McapFile {
    pub fn create(path: &Path, opts: &WriterOptions) -> Result<Self, BagError> {
        let file = Arc::new(File::options().write(true).create_new(true).open(path).map_err(|e| BagError::io(path, e))?);
        let compression = match opts.compression {
            Compression::None => None,
            Compression::Zstd => Some(mcap::Compression::Zstd),
            Compression::Lz4 => Some(mcap::Compression::Lz4),
        };
        let writer = mcap::WriteOptions::new()
            .profile("ros2")
            .library(concat!("rosa ", env!("CARGO_PKG_VERSION"), " (mcap-rs)"))
            .compression(compression)
            .compression_threads(0)
            .chunk_size(Some(opts.chunk_size.max(4096)))
            .create(BufWriter::with_capacity(256 << 10, SharedFile(file.clone())))
            .map_err(|e| BagError::mcap(path, e))?;
        Ok(Self { path: path.to_path_buf(), file, writer, channels: Vec::new(), first: u64::MAX, last: 0, count: 0, bytes: 0 })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Schema and channel of `topic` (index `id`), added once.
    pub fn add_topic(&mut self, id: usize, topic: &TopicInfo) -> Result<u16, BagError> {
        if let Some(Some(c)) = self.channels.get(id) {
            return Ok(*c);
        }
        let schema = self.writer.add_schema(&topic.type_name, "ros2msg", topic.schema.as_bytes()).map_err(|e| BagError::mcap(&self.path, e))?;
        let mut meta = BTreeMap::new();
        meta.insert("offered_qos_profiles".to_string(), qos::to_yaml(&topic.offered_qos));
        meta.insert("topic_type_hash".to_string(), topic.type_hash.clone());
        let channel = self.writer.add_channel(schema, &topic.name, "cdr", &meta).map_err(|e| BagError::mcap(&self.path, e))?;
        if self.channels.len() <= id {
            self.channels.resize(id + 1, None);
        }
        self.channels[id] = Some(channel);
        Ok(channel)
    }

    pub fn write(&mut self, id: usize, topic: &TopicInfo, sequence: u32, log_time: u64, publish_time: u64, data: &[u8]) -> Result<(), BagError> {
        let channel_id = self.add_topic(id, topic)?;
        let header = MessageHeader { channel_id, sequence, log_time, publish_time };
        self.writer.write_to_known_channel(&header, data).map_err(|e| BagError::mcap(&self.path, e))?;
        self.first = self.first.min(log_time);
        self.last = self.last.max(log_time);
        self.count += 1;
        // A message record: opcode, length, header (22 bytes), data; plus its index entry.
        self.bytes += data.len() as u64 + 31 + 16;
        Ok(())
    }

    /// Close the open chunk, write it out and sync the file.
    pub fn flush(&mut self) -> Result<(), BagError> {
        self.writer.flush().map_err(|e| BagError::mcap(&self.path, e))?;
        self.file.sync_data().map_err(|e| BagError::io(&self.path, e))
    }

    /// Write the summary (with rosbag2's `rosbag2` metadata record) and close the file.
    pub fn finish(mut self, metadata: Option<&Metadata>) -> Result<FileInfo, BagError> {
        if let Some(m) = metadata {
            let mut md = BTreeMap::new();
            md.insert("serialized_metadata".to_string(), m.to_inner_yaml());
            md.insert("ROS_DISTRO".to_string(), m.ros_distro.clone().unwrap_or_else(|| "jazzy".into()));
            self.writer
                .write_metadata(&mcap::records::Metadata { name: "rosbag2".into(), metadata: md })
                .map_err(|e| BagError::mcap(&self.path, e))?;
        }
        self.writer.finish().map_err(|e| BagError::mcap(&self.path, e))?;
        let info = self.info();
        let (path, file) = (self.path.clone(), self.file.clone());
        let buf = self.writer.into_inner();
        buf.into_inner().map_err(|e| BagError::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| BagError::io(&path, e))?;
        Ok(info)
    }

    fn info(&self) -> FileInfo {
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (start, duration) = if self.count == 0 { (0, 0) } else { (self.first, self.last - self.first) };
        FileInfo { path: name, starting_time: Stamp { nanoseconds_since_epoch: start }, duration: Nanoseconds { nanoseconds: duration }, message_count: self.count }
    }
}

struct TopicState {
    info: TopicInfo,
    count: u64,
    sequence: u32,
}

/// A rosbag2 bag being written (a directory of MCAP files and `metadata.yaml`).
pub struct BagWriter {
    dir: PathBuf,
    name: String,
    opts: WriterOptions,
    topics: Vec<TopicState>,
    file: Option<McapFile>,
    files: Vec<FileInfo>,
    next_index: usize,
    first: u64,
    last: u64,
}

impl BagWriter {
    /// Create the bag directory `dir` (it must not exist, or be empty) and its first file.
    pub fn create(dir: &Path, opts: WriterOptions) -> Result<Self, BagError> {
        if dir.exists() {
            let empty = std::fs::read_dir(dir).map_err(|e| BagError::io(dir, e))?.next().is_none();
            if !empty {
                return Err(BagError::Invalid(format!("{} exists and is not empty: give another output directory", dir.display())));
            }
        } else {
            std::fs::create_dir_all(dir).map_err(|e| BagError::io(dir, e))?;
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .unwrap_or_else(|| "rosbag2".into());
        let mut w = Self { dir: dir.to_path_buf(), name, opts, topics: Vec::new(), file: None, files: Vec::new(), next_index: 0, first: u64::MAX, last: 0 };
        w.open_next()?;
        // A metadata.yaml from the start: the bag is a bag (and `repair` knows its files) even
        // if the recorder is killed before it finishes.
        w.metadata().write(&w.dir)?;
        Ok(w)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open_next(&mut self) -> Result<(), BagError> {
        let path = self.dir.join(format!("{}_{}.mcap", self.name, self.next_index));
        self.next_index += 1;
        let mut f = McapFile::create(&path, &self.opts)?;
        for (i, t) in self.topics.iter().enumerate() {
            f.add_topic(i, &t.info)?;
        }
        self.file = Some(f);
        Ok(())
    }

    pub fn add_topic(&mut self, info: TopicInfo) -> Result<TopicId, BagError> {
        let id = self.topics.len();
        if let Some(f) = self.file.as_mut() {
            f.add_topic(id, &info)?;
        }
        self.topics.push(TopicState { info, count: 0, sequence: 0 });
        Ok(TopicId(id))
    }

    pub fn topic(&self, id: TopicId) -> Option<&TopicInfo> {
        self.topics.get(id.0).map(|t| &t.info)
    }

    /// Write one message (`log_time`: when it was received, `publish_time`: when it was
    /// published; ns since the epoch). Splits the bag first when the file is full.
    pub fn write(&mut self, id: TopicId, log_time: u64, publish_time: u64, data: &[u8]) -> Result<(), BagError> {
        if id.0 >= self.topics.len() {
            return Err(BagError::Invalid(format!("no topic {}", id.0)));
        }
        if self.should_split(log_time) {
            self.split()?;
        }
        let t = &mut self.topics[id.0];
        t.sequence = t.sequence.wrapping_add(1);
        let file = self.file.as_mut().ok_or_else(|| BagError::Invalid("the bag is finished".into()))?;
        file.write(id.0, &t.info, t.sequence, log_time, publish_time, data)?;
        t.count += 1;
        self.first = self.first.min(log_time);
        self.last = self.last.max(log_time);
        Ok(())
    }

    fn should_split(&self, log_time: u64) -> bool {
        let Some(f) = &self.file else { return false };
        if f.count == 0 {
            return false;
        }
        (self.opts.max_file_size > 0 && f.bytes >= self.opts.max_file_size)
            || (self.opts.max_file_duration_ns > 0 && log_time.saturating_sub(f.first) >= self.opts.max_file_duration_ns)
    }

    /// Finish the current file and start the next one (metadata.yaml then lists both).
    pub fn split(&mut self) -> Result<(), BagError> {
        if let Some(f) = self.file.take() {
            let m = self.metadata();
            self.files.push(f.finish(Some(&m))?);
        }
        self.open_next()?;
        self.metadata().write(&self.dir)
    }

    /// Close the open chunk and sync (see the module's notes).
    pub fn flush(&mut self) -> Result<(), BagError> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }

    pub fn message_count(&self) -> u64 {
        self.topics.iter().map(|t| t.count).sum()
    }

    pub fn counts(&self) -> Vec<(String, u64)> {
        self.topics.iter().map(|t| (t.info.name.clone(), t.count)).collect()
    }

    /// The metadata of what is written so far.
    pub fn metadata(&self) -> Metadata {
        let mut m = Metadata::new();
        let count = self.message_count();
        m.message_count = count;
        if count > 0 {
            m.starting_time.nanoseconds_since_epoch = self.first;
            m.duration.nanoseconds = self.last - self.first;
        }
        // compression_format/mode stay "": chunk compression is the mcap storage's own (rosbag2's
        // file and message modes are something else).
        m.topics_with_message_count = self
            .topics
            .iter()
            .map(|t| TopicWithCount {
                topic_metadata: TopicMetadata {
                    name: t.info.name.clone(),
                    type_name: t.info.type_name.clone(),
                    serialization_format: "cdr".into(),
                    offered_qos_profiles: t.info.offered_qos.clone(),
                    type_description_hash: t.info.type_hash.clone(),
                },
                message_count: t.count,
            })
            .collect();
        let mut files = self.files.clone();
        if let Some(f) = &self.file {
            files.push(f.info());
        }
        m.relative_file_paths = files.iter().map(|f| f.path.clone()).collect();
        m.files = files;
        m
    }

    /// Finish the last file and write the final metadata.yaml.
    pub fn finish(mut self) -> Result<Metadata, BagError> {
        if let Some(f) = self.file.take() {
            let m = self.metadata_with(&f);
            self.files.push(f.finish(Some(&m))?);
        }
        let m = self.metadata();
        m.write(&self.dir)?;
        Ok(m)
    }

    fn metadata_with(&mut self, f: &McapFile) -> Metadata {
        let mut m = self.metadata();
        let info = f.info();
        if m.files.last().map(|x| &x.path) != Some(&info.path) {
            m.relative_file_paths.push(info.path.clone());
            m.files.push(info);
        }
        m
    }
}
