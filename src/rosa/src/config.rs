//! Node configuration: plain structs with defaults, filled from ROS parameters.
//!
//! ROS parameters arrive flat (`llm.urls`, `max_processes`, …); [`from_params`] nests them by their
//! dots and deserializes them into a config struct whose `#[serde(default)]` fields give the defaults.
//! No r2r in here: the node wiring turns its parameters into `(name, serde_json::Value)` pairs.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("parameter `{name}` conflicts with `{other}`")]
    Conflict { name: String, other: String },
    #[error("invalid parameters: {0}")]
    Invalid(#[from] serde_json::Error),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Nest flat dotted parameter names into a JSON object and deserialize it.
pub fn from_params<T: DeserializeOwned>(
    params: impl IntoIterator<Item = (String, Value)>,
) -> Result<T, ConfigError> {
    let mut root = Map::new();
    for (name, value) in params {
        let mut node = &mut root;
        let parts: Vec<&str> = name.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            if i + 1 == parts.len() {
                node.insert((*part).to_string(), value.clone());
                break;
            }
            let entry = node
                .entry((*part).to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            node = match entry {
                Value::Object(map) => map,
                _ => {
                    return Err(ConfigError::Conflict {
                        name: name.clone(),
                        other: parts[..=i].join("."),
                    })
                }
            };
        }
    }
    Ok(serde_json::from_value(Value::Object(root))?)
}

/// Flatten a config back into dotted parameter names (to declare the effective values on the node,
/// so that `ros2 param list/get` shows them).
pub fn to_params<T: Serialize>(config: &T) -> Vec<(String, Value)> {
    fn walk(prefix: &str, value: Value, out: &mut Vec<(String, Value)>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let name = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                    walk(&name, v, out);
                }
            }
            Value::Null => {}
            other => out.push((prefix.to_string(), other)),
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::to_value(config) {
        walk("", v, &mut out);
    }
    out
}

/// One OpenAI-compatible endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provider {
    /// Base URL, e.g. `http://localhost:6000/v1`.
    pub url: String,
    pub model: String,
    /// Name of the environment variable holding the API key ("" = no key).
    pub key_env: String,
}

/// The LLM client's parameters (`llm.*`), shared by the kernel, the process manager and workers.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct LlmConfig {
    /// Provider base URLs in order of preference; the first reachable one is used.
    pub urls: Vec<String>,
    /// Model per provider (the last one is reused when there are fewer models than URLs).
    pub models: Vec<String>,
    /// Environment variable holding each provider's key ("" = none; the last one is reused).
    pub key_envs: Vec<String>,
    /// Whole-request timeout, seconds.
    #[schemars(range(min = 0.1, max = 3600.0))]
    pub timeout_sec: f64,
    /// Connection timeout, seconds (a provider that does not answer is failed over quickly).
    #[schemars(range(min = 0.1, max = 600.0))]
    pub connect_timeout_sec: f64,
    /// Retries on 429 and 5xx before falling over to the next provider.
    #[schemars(range(min = 0, max = 10))]
    pub max_retries: u32,
    /// First backoff delay, seconds (doubles on each retry).
    #[schemars(range(min = 0.0, max = 60.0))]
    pub backoff_sec: f64,
    /// Sampling temperature of the model.
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: f64,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            urls: vec![
                "http://localhost:6000/v1".into(),
                "https://api.groq.com/openai/v1".into(),
            ],
            models: vec!["openai/gpt-oss-120b".into()],
            key_envs: vec!["".into(), "GROQ_API_KEY".into()],
            timeout_sec: 120.0,
            connect_timeout_sec: 3.0,
            max_retries: 2,
            backoff_sec: 0.5,
            temperature: 0.2,
        }
    }
}

impl LlmConfig {
    pub fn providers(&self) -> Vec<Provider> {
        let pick = |list: &[String], i: usize| {
            list.get(i).or(list.last()).cloned().unwrap_or_default()
        };
        self.urls
            .iter()
            .enumerate()
            .filter(|(_, u)| !u.trim().is_empty())
            .map(|(i, url)| Provider {
                url: url.trim_end_matches('/').to_string(),
                model: pick(&self.models, i),
                key_env: pick(&self.key_envs, i),
            })
            .collect()
    }
}

/// Where a config file named by a parameter is looked up: as given if absolute or existing,
/// else relative to `share/rosa/config` of the install (or the source tree's `config/`).
pub fn resolve_config_path(name: &str) -> PathBuf {
    let p = PathBuf::from(name);
    if p.is_absolute() || p.exists() {
        return p;
    }
    for dir in config_dirs() {
        let candidate = dir.join(name);
        if candidate.exists() {
            return candidate;
        }
    }
    p
}

/// `$ROSA_CONFIG_DIR`, then `<prefix>/share/rosa/config` next to the executable, then `$ROSA_ROOT/config`.
pub fn config_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(d) = std::env::var("ROSA_CONFIG_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe() {
        // <prefix>/lib/rosa/<exe> -> <prefix>/share/rosa/config
        if let Some(prefix) = exe.parent().and_then(|p| p.parent()).and_then(|p| p.parent()) {
            dirs.push(prefix.join("share/rosa/config"));
        }
    }
    if let Ok(root) = std::env::var("ROSA_ROOT") {
        dirs.push(PathBuf::from(root).join("config"));
    }
    dirs
}

pub fn read_text(path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize, Serialize, Default)]
    #[serde(default)]
    struct Cfg {
        llm: LlmConfig,
        max_processes: u32,
    }

    #[test]
    fn nests_dotted_parameters_and_keeps_defaults() {
        let cfg: Cfg = from_params(vec![
            ("llm.urls".to_string(), json!(["http://a/v1/"])),
            ("max_processes".to_string(), json!(3)),
        ])
        .unwrap();
        assert_eq!(cfg.max_processes, 3);
        assert_eq!(cfg.llm.urls, vec!["http://a/v1/"]);
        assert_eq!(cfg.llm.max_retries, 2);
        let providers = cfg.llm.providers();
        assert_eq!(providers.len(), 1);
        assert_eq!(providers[0].url, "http://a/v1");
        assert_eq!(providers[0].model, "openai/gpt-oss-120b");
        assert_eq!(providers[0].key_env, "");
    }

    #[test]
    fn wrong_type_is_a_clear_error() {
        let err = from_params::<Cfg>(vec![("max_processes".to_string(), json!("many"))]).unwrap_err();
        assert!(err.to_string().contains("invalid"), "{err}");
    }

    #[test]
    fn conflicting_names_are_rejected() {
        let err = from_params::<Cfg>(vec![
            ("llm".to_string(), json!(1)),
            ("llm.urls".to_string(), json!([])),
        ])
        .unwrap_err();
        assert!(matches!(err, ConfigError::Conflict { .. }));
    }

    #[test]
    fn round_trips_through_flat_parameters() {
        let cfg = Cfg { max_processes: 7, ..Default::default() };
        let flat = to_params(&cfg);
        assert!(flat.iter().any(|(k, v)| k == "llm.timeout_sec" && v == &json!(120.0)));
        let back: Cfg = from_params(flat).unwrap();
        assert_eq!(back.max_processes, 7);
    }

    #[test]
    fn providers_reuse_the_last_model_and_key() {
        let llm = LlmConfig {
            urls: vec!["http://a/v1".into(), "http://b/v1".into()],
            models: vec!["m".into()],
            key_envs: vec!["K".into()],
            ..Default::default()
        };
        let p = llm.providers();
        assert_eq!(p[1].model, "m");
        assert_eq!(p[1].key_env, "K");
    }
}
