//! Speech in, without ROS: audio sources, resampling to 16 kHz mono, voice activity detection and
//! endpointing, muting while the robot speaks (and barge-in), the wake word, whisper.
//!
//! The pieces, in the order audio flows through them:
//! - [`audio`]: where audio comes from ([`audio::SourceSpec`]: the default input device, a WAV
//!   file, a ROS topic, none), and [`audio::Resampler`] to 16 kHz mono;
//! - [`endpoint`]: WebRTC's VAD on fixed frames and the endpointer that cuts the stream into
//!   utterances (pre-roll, minimum utterance, end-of-speech silence);
//! - [`listener`]: resampling + endpointing + the robot's own speech (mute, tail, barge-in);
//! - [`transcribe`]: the transcriber seam, whisper behind it, and the worker thread with its
//!   bounded queue of utterances;
//! - [`wake`]: the wake-word gate that decides which transcripts are forwarded;
//! - [`model`]: checks a ggml model file before whisper.cpp sees it (clear errors, no aborts);
//! - [`params`]: the node's parameters.
//!
//! `crate::nodes::stt` wires them to ROS.
pub mod audio;
pub mod capture;
pub mod endpoint;
pub mod listener;
pub mod model;
pub mod params;
pub mod transcribe;
pub mod wake;

/// The sample rate everything after the resampler works at (whisper's and the VAD's).
pub const SAMPLE_RATE: u32 = 16_000;

/// Seconds of audio at [`SAMPLE_RATE`] in `samples` samples.
pub fn secs(samples: u64) -> f64 {
    samples as f64 / SAMPLE_RATE as f64
}

/// Samples at [`SAMPLE_RATE`] in `secs` seconds (rounded, never negative).
pub fn samples(secs: f64) -> u64 {
    (secs.max(0.0) * SAMPLE_RATE as f64).round() as u64
}
