//! The robots registry: which MCP servers (robots, device drivers) exist and how to reach them.
//!
//! `config/robots.yaml`:
//! ```yaml
//! robots:
//!   - name: reachy-mini
//!     url: http://127.0.0.1:5001/mcp
//!     description: Reachy Mini, a small expressive robot head
//!     prompt_file: prompts/reachy-mini.txt   # optional, relative to the registry file
//! ```
//! The seed's `drivers.json` is accepted too: `{"mcpServers": {"<name>": {"url": …, "description": …}}}`.
//!
//! A robot with a `ros:` section is another ROS robot served by the `mcp_bridge` node (see
//! [`crate::bridge::scope`]); its url may be left out: it is then `http://127.0.0.1:5002/<name>/mcp`.

use crate::config::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Robot {
    pub name: String,
    /// The MCP endpoint (for a `ros:` robot: the bridge's, by default).
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_file: Option<String>,
    /// The prompt file's text (loaded with the registry).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prompt: String,
    /// A ROS robot bridged by the mcp_bridge: its namespace and safety rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ros: Option<crate::bridge::RosSection>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    pub robots: Vec<Robot>,
}

#[derive(Deserialize)]
struct YamlFile {
    #[serde(default)]
    robots: Vec<Robot>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DriversJson {
    mcp_servers: BTreeMap<String, DriverEntry>,
}

#[derive(Deserialize)]
struct DriverEntry {
    url: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    prompt_file: Option<String>,
}

impl Registry {
    /// Load a registry file (YAML, or the seed's drivers.json). Prompt files are read relative to
    /// the registry file; a missing prompt file is logged and left empty.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = crate::config::read_text(path)?;
        let mut reg = Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_path_buf(), message })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        for r in &mut reg.robots {
            if let Some(f) = &r.prompt_file {
                let p = if Path::new(f).is_absolute() { PathBuf::from(f) } else { base.join(f) };
                match std::fs::read_to_string(&p) {
                    Ok(t) => r.prompt = t.trim().to_string(),
                    Err(e) => tracing::warn!(robot = %r.name, path = %p.display(), error = %e, "robot prompt file unreadable"),
                }
            }
        }
        Ok(reg)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let robots = if text.trim_start().starts_with('{') && text.contains("mcpServers") {
            let d: DriversJson = serde_json::from_str(text).map_err(|e| e.to_string())?;
            d.mcp_servers
                .into_iter()
                .map(|(name, e)| Robot { name, url: e.url, description: e.description, prompt_file: e.prompt_file, prompt: String::new(), ros: None })
                .collect()
        } else {
            let y: YamlFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
            y.robots
        };
        let mut robots = robots;
        for r in &mut robots {
            if r.url.trim().is_empty() && r.ros.is_some() {
                r.url = crate::bridge::default_url(&r.name);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for r in &robots {
            if r.name.trim().is_empty() {
                return Err("a robot has an empty name".into());
            }
            if !seen.insert(r.name.clone()) {
                return Err(format!("robot `{}` is listed twice", r.name));
            }
            if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
                return Err(format!("robot `{}`: url `{}` is not http(s)", r.name, r.url));
            }
        }
        Ok(Self { robots })
    }

    pub fn get(&self, name: &str) -> Option<&Robot> {
        self.robots.iter().find(|r| r.name == name)
    }

    /// The robots the mcp_bridge serves (those with a `ros:` section).
    pub fn bridged(&self) -> impl Iterator<Item = (&Robot, &crate::bridge::RosSection)> {
        self.robots.iter().filter_map(|r| r.ros.as_ref().map(|s| (r, s)))
    }

    pub fn names(&self) -> Vec<String> {
        self.robots.iter().map(|r| r.name.clone()).collect()
    }
}

/// Is something listening at the robot's URL? (A TCP connect with a short timeout.)
pub async fn reachable(url: &str, timeout: Duration) -> bool {
    let Some((host, port)) = host_port(url) else { return false };
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port))).await,
        Ok(Ok(_))
    )
}

fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit('@').next()?;
    let default = if scheme == "https" { 443 } else { 80 };
    if let Some(stripped) = authority.strip_prefix('[') {
        let (h, rest) = stripped.split_once(']')?;
        let port = rest.strip_prefix(':').map(|p| p.parse().ok()).unwrap_or(Some(default))?;
        return Some((h.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((authority.to_string(), default)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_yaml_and_drivers_json() {
        let y = Registry::parse("robots:\n  - name: a\n    url: http://127.0.0.1:5001/mcp\n    description: A\n").unwrap();
        assert_eq!(y.robots[0].name, "a");
        let j = Registry::parse(r#"{"mcpServers": {"reachy": {"url": "http://localhost:5001/mcp", "description": "R"}}}"#).unwrap();
        assert_eq!(j.get("reachy").unwrap().description, "R");
    }

    #[test]
    fn ros_robots_get_the_bridge_url() {
        let y = Registry::parse("robots:\n  - name: r1\n    description: A\n    ros:\n      namespace: /r1\n      deny: ['/r1/secret*']\n  - {name: b, url: 'http://x:1/mcp'}\n").unwrap();
        assert_eq!(y.get("r1").unwrap().url, "http://127.0.0.1:5002/r1/mcp");
        assert_eq!(y.get("r1").unwrap().ros.as_ref().unwrap().namespace, "/r1");
        assert_eq!(y.bridged().count(), 1);
        // A robot needs a url unless it is bridged.
        assert!(Registry::parse("robots:\n  - {name: c}\n").unwrap_err().contains("not http"));
        assert!(Registry::parse("robots:\n  - {name: c, ros: {namespce: /c}}\n").is_err());
    }

    #[test]
    fn rejects_duplicates_and_bad_urls() {
        assert!(Registry::parse("robots:\n  - {name: a, url: 'http://x'}\n  - {name: a, url: 'http://y'}\n").unwrap_err().contains("twice"));
        assert!(Registry::parse("robots:\n  - {name: a, url: 'ftp://x'}\n").unwrap_err().contains("not http"));
        assert!(Registry::parse("robots: [").is_err());
    }

    #[test]
    fn host_and_port_from_urls() {
        assert_eq!(host_port("http://127.0.0.1:5001/mcp"), Some(("127.0.0.1".into(), 5001)));
        assert_eq!(host_port("https://example.org/x"), Some(("example.org".into(), 443)));
        assert_eq!(host_port("http://[::1]:8/mcp"), Some(("::1".into(), 8)));
        assert_eq!(host_port("nonsense"), None);
    }

    #[tokio::test]
    async fn reachability_is_a_tcp_connect() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(reachable(&format!("http://127.0.0.1:{port}/mcp"), Duration::from_millis(500)).await);
        drop(l);
        assert!(!reachable(&format!("http://127.0.0.1:{port}/mcp"), Duration::from_millis(500)).await);
    }

    #[test]
    fn loads_prompt_files_relative_to_the_registry() {
        let dir = std::env::temp_dir().join(format!("rosa-robots-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("prompts")).unwrap();
        std::fs::write(dir.join("prompts/a.txt"), "Be gentle.\n").unwrap();
        std::fs::write(dir.join("robots.yaml"), "robots:\n  - {name: a, url: 'http://x:1/mcp', prompt_file: prompts/a.txt}\n").unwrap();
        let reg = Registry::load(&dir.join("robots.yaml")).unwrap();
        assert_eq!(reg.robots[0].prompt, "Be gentle.");
        std::fs::remove_dir_all(dir).ok();
    }
}
