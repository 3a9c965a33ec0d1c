//! `metadata.yaml`, rosbag2's description of a bag (version 9, as Jazzy writes it; versions 4-9
//! are read: `offered_qos_profiles` was a YAML string before 9).

use super::qos::{self, Qos};
use super::BagError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const VERSION: u32 = 9;
pub const FILE_NAME: &str = "metadata.yaml";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetadataFile {
    pub rosbag2_bagfile_information: Metadata,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nanoseconds {
    pub nanoseconds: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub nanoseconds_since_epoch: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Metadata {
    pub version: u32,
    pub storage_identifier: String,
    pub duration: Nanoseconds,
    pub starting_time: Stamp,
    pub message_count: u64,
    pub topics_with_message_count: Vec<TopicWithCount>,
    #[serde(default)]
    pub compression_format: String,
    #[serde(default)]
    pub compression_mode: String,
    #[serde(default)]
    pub relative_file_paths: Vec<String>,
    #[serde(default)]
    pub files: Vec<FileInfo>,
    #[serde(default)]
    pub custom_data: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub ros_distro: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopicWithCount {
    pub topic_metadata: TopicMetadata,
    pub message_count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicMetadata {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub serialization_format: String,
    #[serde(deserialize_with = "profiles", default)]
    pub offered_qos_profiles: Vec<Qos>,
    /// `RIHS01_<sha256>` or empty (a type whose description was not installed).
    #[serde(default)]
    pub type_description_hash: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: String,
    pub starting_time: Stamp,
    pub duration: Nanoseconds,
    pub message_count: u64,
}

fn profiles<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Qos>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum P {
        Text(String),
        List(Vec<Qos>),
    }
    Ok(match Option::<P>::deserialize(d)? {
        None => Vec::new(),
        Some(P::List(l)) => l,
        Some(P::Text(t)) => qos::from_yaml(&t).map_err(serde::de::Error::custom)?,
    })
}

impl Metadata {
    pub fn new() -> Self {
        Self {
            version: VERSION,
            storage_identifier: "mcap".into(),
            duration: Nanoseconds::default(),
            starting_time: Stamp::default(),
            message_count: 0,
            topics_with_message_count: Vec::new(),
            compression_format: String::new(),
            compression_mode: String::new(),
            relative_file_paths: Vec::new(),
            files: Vec::new(),
            custom_data: None,
            ros_distro: Some("jazzy".into()),
        }
    }

    pub fn read(dir: &Path) -> Result<Self, BagError> {
        let path = dir.join(FILE_NAME);
        let text = std::fs::read_to_string(&path).map_err(|e| BagError::io(&path, e))?;
        let file: MetadataFile = serde_yaml::from_str(&text).map_err(|e| BagError::Metadata { path: path.clone(), why: e.to_string() })?;
        let m = file.rosbag2_bagfile_information;
        if m.version > VERSION {
            return Err(BagError::Metadata { path, why: format!("version {} is newer than rosbag2 Jazzy's ({VERSION})", m.version) });
        }
        Ok(m)
    }

    /// Write atomically (a temporary file renamed over the old one).
    pub fn write(&self, dir: &Path) -> Result<(), BagError> {
        let text = self.to_yaml();
        let path = dir.join(FILE_NAME);
        let tmp = dir.join(".metadata.yaml.tmp");
        std::fs::write(&tmp, text).map_err(|e| BagError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| BagError::io(&path, e))
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(&MetadataFile { rosbag2_bagfile_information: self.clone() }).unwrap_or_default()
    }

    /// The metadata without its top-level key (rosbag2 stores it in the MCAP's `rosbag2` metadata record).
    pub fn to_inner_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }
}

impl Default for Metadata {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_writes_and_older_string_profiles() {
        let dir = std::env::temp_dir().join(format!("rosa-meta-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut m = Metadata::new();
        m.message_count = 3;
        m.topics_with_message_count.push(TopicWithCount {
            topic_metadata: TopicMetadata {
                name: "/a".into(),
                type_name: "std_msgs/msg/String".into(),
                serialization_format: "cdr".into(),
                offered_qos_profiles: vec![Qos::reliable_volatile(10)],
                type_description_hash: String::new(),
            },
            message_count: 3,
        });
        m.write(&dir).unwrap();
        let back = Metadata::read(&dir).unwrap();
        assert_eq!(back.topics_with_message_count[0].topic_metadata, m.topics_with_message_count[0].topic_metadata);
        let text = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        assert!(text.starts_with("rosbag2_bagfile_information:\n  version: 9\n"), "{text}");
        assert!(text.contains("offered_qos_profiles:\n    - history: keep_last") || text.contains("offered_qos_profiles:\n      - history: keep_last")
            || text.contains("offered_qos_profiles:\n    - history") || text.contains("- history: keep_last"), "{text}");

        let v8 = "rosbag2_bagfile_information:\n  version: 8\n  storage_identifier: sqlite3\n  duration: {nanoseconds: 1}\n  starting_time: {nanoseconds_since_epoch: 2}\n  message_count: 1\n  topics_with_message_count:\n    - topic_metadata: {name: /b, type: std_msgs/msg/Int32, serialization_format: cdr, offered_qos_profiles: \"- history: 3\\n  depth: 0\\n  reliability: 1\\n  durability: 2\"}\n      message_count: 1\n";
        std::fs::write(dir.join(FILE_NAME), v8).unwrap();
        let old = Metadata::read(&dir).unwrap();
        assert_eq!(old.topics_with_message_count[0].topic_metadata.offered_qos_profiles[0].reliability, "1");
        std::fs::write(dir.join(FILE_NAME), "rosbag2_bagfile_information: {version: 10}").unwrap();
        assert!(matches!(Metadata::read(&dir), Err(BagError::Metadata { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
