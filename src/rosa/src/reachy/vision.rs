//! `describe_image`: ask a vision-capable OpenAI-compatible model about an image (a local path or
//! an http(s) URL). Providers are configured as for the kernel (`vision.urls/models/key_envs`),
//! tried in order.

use crate::config::LlmConfig;
use crate::data_dir::{DataDir, FileError};
use base64::Engine;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VisionError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot use the image {0}")]
    Read(String),
    #[error("no vision model answered: {0}")]
    Model(String),
}

pub struct Vision {
    config: LlmConfig,
    http: reqwest::Client,
}

/// The largest image sent to a vision model (OpenAI's limit for an image is 20 MB).
pub const MAX_IMAGE_BYTES: u64 = 20 << 20;

/// The image as the `image_url.url` of a chat message: an http(s) URL as is, a data URL as is (up
/// to the size of a base64 [`MAX_IMAGE_BYTES`]), a file of the data dir as a data URL. Files
/// outside the data dir are never read (see [`DataDir`]).
pub async fn image_url(data: &DataDir, image: &str) -> Result<String, VisionError> {
    let image = image.trim();
    if image.starts_with("http://") || image.starts_with("https://") {
        return Ok(image.to_string());
    }
    if image.starts_with("data:") {
        if image.len() as u64 > MAX_IMAGE_BYTES / 3 * 4 + 100 {
            return Err(VisionError::Read(format!("a data URL of {} bytes (at most {MAX_IMAGE_BYTES} bytes of image)", image.len())));
        }
        return Ok(image.to_string());
    }
    let (path, bytes) = data.read(image, MAX_IMAGE_BYTES).await?;
    let mime = match bytes.get(..4) {
        Some([0x89, b'P', b'N', b'G']) => "image/png",
        Some([b'G', b'I', b'F', _]) => "image/gif",
        Some([b'R', b'I', b'F', b'F']) => "image/webp",
        Some([0xFF, 0xD8, ..]) => "image/jpeg",
        _ => return Err(VisionError::Read(format!("{} is not a JPEG, PNG, GIF or WebP image", path.display()))),
    };
    Ok(format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

impl Vision {
    pub fn new(config: LlmConfig) -> Result<Self, VisionError> {
        let http = reqwest::Client::builder()
            .timeout(crate::input::clamped_seconds(config.timeout_sec, 1.0, 3600.0))
            .connect_timeout(crate::input::clamped_seconds(config.connect_timeout_sec, 0.1, 600.0))
            .build()
            .map_err(|e| VisionError::Model(e.to_string()))?;
        Ok(Self { config, http })
    }

    /// Ask about `image`: an http(s) URL, a data URL, or a file of the data dir `data`.
    pub async fn describe(&self, data: &DataDir, image: &str, question: &str) -> Result<String, VisionError> {
        let url = image_url(data, image).await?;
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

    #[tokio::test]
    async fn images_become_urls_and_only_data_dir_files_are_read() {
        let dir = std::env::temp_dir().join(format!("rosa-vision-{}", std::process::id()));
        let data = DataDir::open(&dir).unwrap();
        assert_eq!(image_url(&data, " https://x/y.jpg ").await.unwrap(), "https://x/y.jpg");
        let p = dir.join("a.jpg");
        std::fs::write(&p, [0xFF, 0xD8, 0xFF, 0xE0, 1, 2]).unwrap();
        assert!(image_url(&data, p.to_str().unwrap()).await.unwrap().starts_with("data:image/jpeg;base64,"));
        assert!(image_url(&data, "a.jpg").await.unwrap().starts_with("data:image/jpeg;base64,"));
        std::fs::write(&p, b"hello").unwrap();
        assert!(image_url(&data, "a.jpg").await.unwrap_err().to_string().contains("is not a JPEG"));
        // Outside the data dir: the same answer whether the file exists or not, and it is not read.
        let shadow = image_url(&data, "/etc/shadow").await.unwrap_err().to_string();
        let missing = image_url(&data, "/no/such/file.jpg").await.unwrap_err().to_string();
        assert_eq!(shadow.replace("/etc/shadow", "X"), missing.replace("/no/such/file.jpg", "X"));
        assert!(!shadow.contains("JPEG") && !shadow.contains("No such file"), "{shadow}");
        let huge = format!("data:image/png;base64,{}", "A".repeat(30 << 20));
        assert!(image_url(&data, &huge).await.is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
