//! The stt node's parameters (`/rosa/stt` in config/rosa.yaml) and what they turn into.

use super::audio::{AudioError, SourceSpec};
use super::endpoint::{EndpointConfig, EndpointError};
use super::listener::ListenerConfig;
use super::transcribe::WhisperConfig;
use serde::{Deserialize, Serialize};

/// Voice activity detection and endpointing (`vad.*`): the VAD's aggressiveness, and the
/// endpointer's own configuration under the same names (`vad.frame_ms`, `vad.end_silence_sec`…).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct VadParams {
    /// WebRTC VAD aggressiveness, 0 (keeps most sound as speech) to 3 (most aggressive).
    #[schemars(range(min = 0, max = 3))]
    pub aggressiveness: i64,
    #[serde(flatten)]
    pub endpoint: EndpointConfig,
}

impl Default for VadParams {
    fn default() -> Self {
        Self { aggressiveness: 2, endpoint: EndpointConfig::default() }
    }
}

/// Parameters of the stt node (see `config/rosa.yaml` and README.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct SttParams {
    /// `default` (input device), `device:<name>`, `file:<wav>`, `topic:<name>` (AudioData), `none`.
    pub audio_source: String,
    /// `file:` sources: play at real-time pace (true) or as fast as they are processed (false).
    pub file_realtime: bool,
    /// `file:` sources: wait up to this long for a subscriber of /rosa/stt/transcript (the kernel, a
    /// test) before playing, so that nothing said is lost; 0 = play at once. Seconds.
    #[schemars(range(min = 0.0, max = 3600.0))]
    pub file_wait_sec: f64,
    /// A ggml whisper model: absolute, or relative to .rosa/models (see README.md).
    pub model: String,
    /// Spoken language for multilingual models (English-only models ignore it).
    pub language: String,
    /// whisper threads; 0 = one per core.
    #[schemars(range(min = 0, max = 256))]
    pub threads: u32,
    /// whisper encoder context (20 ms frames): 0 = the full 30 s; -1 = fit each utterance (faster,
    /// much less accurate with tiny.en); n = n frames.
    #[schemars(range(min = -1, max = 1500))]
    pub audio_ctx: i64,
    /// Beam search width; 1 = greedy decoding.
    #[schemars(range(min = 1, max = 16))]
    pub beam_size: i64,
    /// Text that primes whisper's decoder (names, vocabulary); empty = none.
    pub initial_prompt: String,
    /// whisper segments more likely than this not to be speech are dropped.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub no_speech_threshold: f64,
    /// Utterances waiting for whisper; more are dropped (counted and logged).
    #[schemars(range(min = 1, max = 1000))]
    pub queue_size: u64,
    /// Voice activity detection and endpointing.
    pub vad: VadParams,
    /// Forward only what follows this word (and what comes within the window); empty = everything.
    pub wake_word: String,
    /// After the wake word (or a forwarded utterance), how long utterances are forwarded, seconds.
    #[schemars(range(min = 0.0, max = 86400.0))]
    pub wake_window_sec: f64,
    /// Audio skipped after the robot stops speaking (its echo), seconds.
    #[schemars(range(min = 0.0, max = 60.0))]
    pub speaking_tail_sec: f64,
    /// Let the user interrupt the robot: speech while it speaks asks it to stop (/rosa/stop_speaking).
    pub barge_in: bool,
    /// Speech needed to barge in, seconds.
    #[schemars(range(min = 0.0, max = 60.0))]
    pub barge_in_sec: f64,
    /// header.frame_id of the transcripts.
    pub frame_id: String,
}

impl Default for SttParams {
    fn default() -> Self {
        let l = ListenerConfig::default();
        let w = WhisperConfig::default();
        Self {
            audio_source: "default".into(),
            file_realtime: true,
            file_wait_sec: 10.0,
            model: "ggml-tiny.en.bin".into(),
            language: w.language,
            threads: 0,
            audio_ctx: w.audio_ctx as i64,
            beam_size: w.beam_size as i64,
            initial_prompt: w.initial_prompt,
            no_speech_threshold: 0.6,
            queue_size: 4,
            vad: VadParams::default(),
            wake_word: "hello".into(),
            wake_window_sec: 10.0,
            speaking_tail_sec: l.speaking_tail_sec,
            barge_in: l.barge_in,
            barge_in_sec: l.barge_in_sec,
            frame_id: "microphone".into(),
        }
    }
}

impl crate::params::NodeParams for SttParams {
    // Listening (VAD, endpointing, muting, barge-in), the wake word and the transcripts' frame are
    // applied at once; the audio source, the model and whisper's threads/context/queue at start.
    const DYNAMIC: &'static [&'static str] =
        &["vad.", "wake_word", "wake_window_sec", "speaking_tail_sec", "barge_in", "barge_in_sec", "frame_id"];

    fn check(&self) -> Result<(), String> {
        self.validate().map_err(|e| e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("{0}")]
    Invalid(String),
}

impl SttParams {
    pub fn source(&self) -> Result<SourceSpec, ParamError> {
        Ok(self.audio_source.parse()?)
    }

    pub fn listener(&self) -> ListenerConfig {
        ListenerConfig {
            endpoint: self.vad.endpoint.clone(),
            speaking_tail_sec: self.speaking_tail_sec,
            barge_in: self.barge_in,
            barge_in_sec: self.barge_in_sec,
        }
    }

    pub fn whisper(&self) -> WhisperConfig {
        WhisperConfig {
            language: self.language.clone(),
            threads: self.threads as usize,
            audio_ctx: self.audio_ctx.clamp(-1, 1500) as i32,
            beam_size: self.beam_size.clamp(1, 16) as i32,
            initial_prompt: self.initial_prompt.clone(),
            no_speech_threshold: self.no_speech_threshold as f32,
        }
    }

    /// Everything that can be checked before the node starts.
    pub fn validate(&self) -> Result<(), ParamError> {
        self.source()?;
        self.listener().endpoint.validate()?;
        if !(0..=3).contains(&self.vad.aggressiveness) {
            return Err(EndpointError::Aggressiveness(self.vad.aggressiveness).into());
        }
        for (name, v) in [("file_wait_sec", self.file_wait_sec), ("wake_window_sec", self.wake_window_sec), ("speaking_tail_sec", self.speaking_tail_sec), ("barge_in_sec", self.barge_in_sec)] {
            if !v.is_finite() || v < 0.0 {
                return Err(ParamError::Invalid(format!("{name} must be a finite number >= 0 (got {v})")));
            }
        }
        if self.queue_size == 0 {
            return Err(ParamError::Invalid("queue_size must be at least 1".into()));
        }
        if self.model.trim().is_empty() {
            return Err(ParamError::Invalid("model must name a ggml whisper model file".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_the_seed_values() {
        let p = SttParams::default();
        assert_eq!((p.vad.endpoint.pre_roll_sec, p.vad.endpoint.min_utterance_sec, p.vad.endpoint.end_silence_sec), (0.25, 0.5, 1.5));
        assert_eq!(p.wake_word, "hello");
        p.validate().unwrap();
    }

    #[test]
    fn the_shipped_config_file_is_valid_for_the_stt_node() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/rosa.yaml")).unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let section = doc.get("/rosa/stt").and_then(|s| s.get("ros__parameters")).expect("a /rosa/stt section");
        let json = serde_json::to_value(section).unwrap();
        let p: SttParams = serde_json::from_value(json).unwrap();
        p.validate().unwrap();
        assert_eq!(p, SttParams::default(), "config/rosa.yaml and the defaults in code should agree");
    }

    #[test]
    fn flat_ros_parameters_fill_the_nested_struct() {
        let p: SttParams = crate::config::from_params(vec![
            ("audio_source".to_string(), json!("file:/tmp/x.wav")),
            ("vad.end_silence_sec".to_string(), json!(1)),
            ("wake_word".to_string(), json!("")),
            ("llm.urls".to_string(), json!(["http://x/v1"])), // the /** section: ignored
        ])
        .unwrap();
        assert_eq!(p.source().unwrap(), SourceSpec::File("/tmp/x.wav".into()));
        assert_eq!(p.listener().endpoint.end_silence_sec, 1.0);
        assert_eq!(p.vad.endpoint.frame_ms, 30);
    }

    #[test]
    fn invalid_values_are_named() {
        let mut p = SttParams { audio_source: "mic".into(), ..Default::default() };
        assert!(p.validate().unwrap_err().to_string().contains("audio_source `mic`"));
        p.audio_source = "none".into();
        p.vad.aggressiveness = 5;
        assert!(p.validate().unwrap_err().to_string().contains("vad.aggressiveness"));
        p.vad.aggressiveness = 1;
        p.wake_window_sec = -1.0;
        assert!(p.validate().unwrap_err().to_string().contains("wake_window_sec"));
    }
}
