//! QoS profiles as rosbag2 stores them (`offered_qos_profiles`): a YAML list in `metadata.yaml`
//! (version 9) and the same list as a YAML string in each MCAP channel's metadata. No ROS here:
//! the nodes convert to and from r2r's `QosProfile`.

use serde::{Deserialize, Serialize};

/// rmw's "infinite" duration, as rosbag2 writes it.
pub const INFINITE: RosDuration = RosDuration { sec: 9_223_372_036, nsec: 854_775_807 };

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosDuration {
    pub sec: u64,
    pub nsec: u64,
}

impl RosDuration {
    pub fn from_std(d: std::time::Duration) -> Self {
        Self { sec: d.as_secs(), nsec: u64::from(d.subsec_nanos()) }
    }

    /// As a std duration (rmw's infinite and anything beyond std's range saturate).
    pub fn to_std(self) -> std::time::Duration {
        let extra = self.nsec / 1_000_000_000;
        std::time::Duration::new(self.sec.saturating_add(extra), (self.nsec % 1_000_000_000) as u32)
    }
}

/// One offered QoS profile (rosbag2's field names and lower-case policy names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qos {
    #[serde(deserialize_with = "policy")]
    pub history: String,
    #[serde(default)]
    pub depth: u64,
    #[serde(deserialize_with = "policy")]
    pub reliability: String,
    #[serde(deserialize_with = "policy")]
    pub durability: String,
    #[serde(default)]
    pub deadline: RosDuration,
    #[serde(default)]
    pub lifespan: RosDuration,
    #[serde(deserialize_with = "policy", default = "automatic")]
    pub liveliness: String,
    #[serde(default)]
    pub liveliness_lease_duration: RosDuration,
    #[serde(default)]
    pub avoid_ros_namespace_conventions: bool,
}

fn automatic() -> String {
    "automatic".into()
}

/// Policies are names in version 9 and numbers (rmw's enum values) in version 8 and before.
fn policy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum P {
        Name(String),
        Number(u64),
    }
    Ok(match P::deserialize(d)? {
        P::Name(s) => s.to_ascii_lowercase(),
        P::Number(n) => n.to_string(),
    })
}

impl Qos {
    /// Reliable, volatile, keep last `depth`, everything else the system default.
    pub fn reliable_volatile(depth: u64) -> Self {
        Self {
            history: "keep_last".into(),
            depth,
            reliability: "reliable".into(),
            durability: "volatile".into(),
            deadline: RosDuration::default(),
            lifespan: RosDuration::default(),
            liveliness: "automatic".into(),
            liveliness_lease_duration: RosDuration::default(),
            avoid_ros_namespace_conventions: false,
        }
    }

    /// Reliability as rmw numbers it in version 8 bags ("1" reliable, "2" best effort).
    pub fn is_best_effort(&self) -> bool {
        matches!(self.reliability.as_str(), "best_effort" | "2")
    }

    pub fn is_transient_local(&self) -> bool {
        matches!(self.durability.as_str(), "transient_local" | "1")
    }

    pub fn is_keep_all(&self) -> bool {
        matches!(self.history.as_str(), "keep_all" | "2")
    }
}

/// The YAML text of a list of profiles (what the MCAP channel metadata holds).
pub fn to_yaml(profiles: &[Qos]) -> String {
    if profiles.is_empty() {
        return String::new();
    }
    serde_yaml::to_string(profiles).unwrap_or_default().trim_end().to_string()
}

/// Profiles from the YAML text of a channel's metadata (empty text: none).
pub fn from_yaml(text: &str) -> Result<Vec<Qos>, serde_yaml::Error> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_yaml::from_str(text)
}

/// The profile to publish a recorded topic with, as `ros2 bag play` adapts it: reliable unless
/// a recorded publisher was best-effort, transient-local only if all were, depth the largest.
pub fn for_playback(offered: &[Qos]) -> Qos {
    let mut q = Qos::reliable_volatile(offered.iter().map(|p| p.depth).max().unwrap_or(10).clamp(1, 100_000));
    if offered.iter().any(Qos::is_best_effort) {
        q.reliability = "best_effort".into();
    }
    if !offered.is_empty() && offered.iter().all(Qos::is_transient_local) {
        q.durability = "transient_local".into();
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_round_trip_and_version_8_numbers() {
        let mut q = Qos::reliable_volatile(7);
        q.durability = "transient_local".into();
        q.deadline = INFINITE;
        let text = to_yaml(&[q.clone()]);
        assert!(text.contains("durability: transient_local"), "{text}");
        assert!(text.contains("sec: 9223372036"), "{text}");
        assert_eq!(from_yaml(&text).unwrap(), vec![q]);
        let v8 = "- history: 3\n  depth: 0\n  reliability: 1\n  durability: 2\n  deadline:\n    sec: 0\n    nsec: 0\n  lifespan:\n    sec: 0\n    nsec: 0\n  liveliness: 1\n  liveliness_lease_duration:\n    sec: 0\n    nsec: 0\n  avoid_ros_namespace_conventions: false";
        let p = from_yaml(v8).unwrap();
        assert_eq!(p[0].reliability, "1");
        assert!(!p[0].is_best_effort() && !p[0].is_transient_local());
        assert!(from_yaml("").unwrap().is_empty());
        assert!(from_yaml("- [not a profile").is_err());
    }

    #[test]
    fn playback_profile_adapts_to_every_recorded_publisher() {
        let mut latched = Qos::reliable_volatile(1);
        latched.durability = "transient_local".into();
        assert!(for_playback(&[latched.clone()]).is_transient_local());
        assert!(!for_playback(&[latched.clone(), Qos::reliable_volatile(10)]).is_transient_local());
        let mut be = Qos::reliable_volatile(5);
        be.reliability = "best_effort".into();
        assert!(for_playback(&[be, latched]).is_best_effort());
        assert_eq!(for_playback(&[]).depth, 10);
    }

    #[test]
    fn durations_saturate() {
        assert_eq!(INFINITE.to_std().as_secs(), 9_223_372_036);
        let d = RosDuration { sec: u64::MAX, nsec: u64::MAX }.to_std();
        assert_eq!(d.as_secs(), u64::MAX);
    }
}
