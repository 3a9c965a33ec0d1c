//! `describe_image`: ask a vision-capable OpenAI-compatible model about an image (a local path or
//! an http(s) URL). Providers are configured as for the kernel (`vision.urls/models/key_envs`),
//! tried in order.

use crate::config::LlmConfig;
use base64::Engine;
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VisionError {
    #[error("cannot read the image {0}")]
    Read(String),
    #[error("no vision model answered: {0}")]
    Model(String),
}

pub struct Vision {
    config: LlmConfig,
    http: reqwest::Client,
}

/// The image as the `image_url.url` of a chat message: an http(s) URL as is, a file as a data URL.
pub fn image_url(image: &str) -> Result<String, VisionError> {
    let image = image.trim();
    if image.starts_with("http://") || image.starts_with("https://") || image.starts_with("data:") {
        return Ok(image.to_string());
    }
    let path = image.strip_prefix("file://").unwrap_or(image);
    let bytes = std::fs::read(path).map_err(|e| VisionError::Read(format!("{path}: {e}")))?;
    let mime = match bytes.get(..4) {
        Some([0x89, b'P', b'N', b'G']) => "image/png",
        Some([b'G', b'I', b'F', _]) => "image/gif",
        Some([b'R', b'I', b'F', b'F']) => "image/webp",
        Some([0xFF, 0xD8, ..]) => "image/jpeg",
        _ => return Err(VisionError::Read(format!("{path} is not a JPEG, PNG, GIF or WebP image"))),
    };
    Ok(format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

impl Vision {
    pub fn new(config: LlmConfig) -> Result<Self, VisionError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(config.timeout_sec.max(1.0)))
            .connect_timeout(Duration::from_secs_f64(config.connect_timeout_sec.max(0.1)))
            .build()
            .map_err(|e| VisionError::Model(e.to_string()))?;
        Ok(Self { config, http })
    }

    pub async fn describe(&self, image: &str, question: &str) -> Result<String, VisionError> {
        let url = image_url(image)?;
        let question = if question.trim().is_empty() { "Describe this image briefly." } else { question };
        let mut errors = Vec::new();
        for p in self.config.providers() {
            let body = json!({
                "model": p.model,
                "temperature": self.config.temperature,
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": question},
                    {"type": "image_url", "image_url": {"url": url}},
                ]}],
            });
            let mut req = self.http.post(format!("{}/chat/completions", p.url)).json(&body);
            if !p.key_env.is_empty() {
                match std::env::var(&p.key_env) {
                    Ok(k) if !k.is_empty() => req = req.bearer_auth(k),
                    _ => {
                        errors.push(format!("{}: ${} is not set", p.url, p.key_env));
                        continue;
                    }
                }
            }
            match req.send().await {
                Err(e) => errors.push(format!("{}: {e}", p.url)),
                Ok(r) => {
                    let status = r.status();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    let text = v.pointer("/choices/0/message/content").and_then(Value::as_str);
                    match (status.is_success(), text) {
                        (true, Some(t)) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
                        _ => errors.push(format!("{} answered {status}: {}", p.url, crate::llm::truncate(&v.to_string(), 200))),
                    }
                }
            }
        }
        Err(VisionError::Model(if errors.is_empty() { "no provider configured".into() } else { errors.join("; ") }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_become_urls() {
        assert_eq!(image_url(" https://x/y.jpg ").unwrap(), "https://x/y.jpg");
        let dir = std::env::temp_dir().join(format!("rosa-vision-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.jpg");
        std::fs::write(&p, [0xFF, 0xD8, 0xFF, 0xE0, 1, 2]).unwrap();
        assert!(image_url(p.to_str().unwrap()).unwrap().starts_with("data:image/jpeg;base64,"));
        std::fs::write(&p, b"hello").unwrap();
        assert!(image_url(p.to_str().unwrap()).is_err());
        assert!(image_url("/no/such/file.jpg").unwrap_err().to_string().contains("/no/such/file.jpg"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
