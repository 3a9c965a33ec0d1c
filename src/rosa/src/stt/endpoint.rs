//! Voice activity detection and endpointing: a 16 kHz mono stream in, utterances out.
//!
//! The stream is cut into frames of `frame_ms`; a [`VoiceDetector`] (WebRTC's VAD) says which are
//! voiced. Speech starts when at least 60 % of the frames of the last 0.2 s are voiced; the
//! utterance then begins `pre_roll_sec` before that window. It ends once `end_silence_sec` of
//! unvoiced frames follow the last voiced one; an utterance whose speech (first to last voiced
//! frame) is shorter than `min_utterance_sec` is discarded, and one that reaches
//! `max_utterance_sec` is cut there (and the speech goes on as a new utterance).
//!
//! Early transcription: once a pause reaches `early_transcribe_sec` (shorter than the end
//! silence), the utterance so far is offered as an [`Endpoint::Pause`]: whisper can start on it
//! while the endpointer waits to know whether the user is done. If the pause becomes the end, the
//! final utterance is the same audio (same `start` and `speech_end`) and its transcript is ready
//! sooner; if the user goes on, the early transcript is thrown away.

use super::{samples, SAMPLE_RATE};
use std::collections::VecDeque;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    #[error("vad.frame_ms must be 10, 20 or 30 (got {0})")]
    FrameMs(u32),
    #[error("vad.aggressiveness must be 0, 1, 2 or 3 (got {0})")]
    Aggressiveness(i64),
    #[error("{name} must be a finite number >= 0 (got {value})")]
    Negative { name: &'static str, value: f64 },
}

/// Says whether a frame of 16 kHz audio is voiced.
pub trait VoiceDetector {
    fn is_voice(&mut self, frame: &[i16]) -> bool;
    fn reset(&mut self);
}

/// WebRTC's VAD (the `webrtc-vad` crate, libfvad).
pub struct WebRtcVad {
    vad: webrtc_vad::Vad,
    mode: webrtc_vad::VadMode,
}

impl WebRtcVad {
    pub fn new(aggressiveness: i64) -> Result<Self, EndpointError> {
        use webrtc_vad::VadMode::*;
        let mode = match aggressiveness {
            0 => Quality,
            1 => LowBitrate,
            2 => Aggressive,
            3 => VeryAggressive,
            n => return Err(EndpointError::Aggressiveness(n)),
        };
        let vad = webrtc_vad::Vad::new_with_rate_and_mode(webrtc_vad::SampleRate::Rate16kHz, mode_copy(&mode));
        Ok(Self { vad, mode })
    }
}

fn mode_copy(m: &webrtc_vad::VadMode) -> webrtc_vad::VadMode {
    use webrtc_vad::VadMode::*;
    match m {
        Quality => Quality,
        LowBitrate => LowBitrate,
        Aggressive => Aggressive,
        VeryAggressive => VeryAggressive,
    }
}

impl VoiceDetector for WebRtcVad {
    fn is_voice(&mut self, frame: &[i16]) -> bool {
        // Only fails on a frame length other than 10/20/30 ms, which the endpointer never sends.
        self.vad.is_voice_segment(frame).unwrap_or(false)
    }
    fn reset(&mut self) {
        self.vad.reset();
        self.vad.set_sample_rate(webrtc_vad::SampleRate::Rate16kHz);
        self.vad.set_mode(mode_copy(&self.mode));
    }
}

/// Endpointing parameters (the stt node's `vad.*` parameters).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct EndpointConfig {
    /// VAD frame: 10, 20 or 30 ms.
    #[schemars(range(min = 10, max = 30))]
    pub frame_ms: u32,
    /// Audio kept before the detected start of speech, seconds.
    #[schemars(range(min = 0.0, max = 10.0))]
    pub pre_roll_sec: f64,
    /// Shorter speech is dropped (coughs, clicks), seconds.
    #[schemars(range(min = 0.0, max = 60.0))]
    pub min_utterance_sec: f64,
    /// Silence that ends an utterance, seconds.
    #[schemars(range(min = 0.0, max = 60.0))]
    pub end_silence_sec: f64,
    /// Longer speech is cut into utterances of this length, seconds.
    #[schemars(range(min = 0.0, max = 600.0))]
    pub max_utterance_sec: f64,
    /// Start whisper on a pause this long, before the end silence has passed (its transcript is
    /// published as soon as the pause turns out to be the end); 0 = off. Seconds.
    #[schemars(range(min = 0.0, max = 60.0))]
    pub early_transcribe_sec: f64,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self { frame_ms: 30, pre_roll_sec: 0.25, min_utterance_sec: 0.5, end_silence_sec: 1.5, max_utterance_sec: 20.0, early_transcribe_sec: 0.3 }
    }
}

impl EndpointConfig {
    pub fn validate(&self) -> Result<(), EndpointError> {
        if ![10, 20, 30].contains(&self.frame_ms) {
            return Err(EndpointError::FrameMs(self.frame_ms));
        }
        for (name, value) in [
            ("vad.pre_roll_sec", self.pre_roll_sec),
            ("vad.min_utterance_sec", self.min_utterance_sec),
            ("vad.end_silence_sec", self.end_silence_sec),
            ("vad.max_utterance_sec", self.max_utterance_sec),
            ("vad.early_transcribe_sec", self.early_transcribe_sec),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(EndpointError::Negative { name, value });
            }
        }
        Ok(())
    }
}

/// A stretch of speech, with sample positions counted from the start of the stream (16 kHz).
#[derive(Debug, Clone, PartialEq)]
pub struct Utterance {
    pub samples: Vec<f32>,
    /// First sample (pre-roll included).
    pub start: u64,
    /// One past the last sample.
    pub end: u64,
    /// End of the last voiced frame: where the speaker stopped.
    pub speech_end: u64,
}

impl Utterance {
    pub fn duration_secs(&self) -> f64 {
        super::secs(self.end - self.start)
    }
}

/// What the endpointer saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    /// Speech started (the utterance will begin at `start`).
    Started { start: u64 },
    /// An utterance ended (end-of-speech silence, or the maximum length).
    Utterance(Utterance),
    /// Speech too short to be an utterance (a cough, a click).
    Discarded { start: u64, speech_secs: f64 },
    /// A pause of `early_transcribe_sec`: the utterance so far, in case the pause is its end.
    Pause(Utterance),
}

pub struct Endpointer<V: VoiceDetector> {
    cfg: EndpointConfig,
    vad: V,
    frame_len: usize,
    /// Samples not yet making a whole frame.
    pending: Vec<f32>,
    /// Position (in samples) of the first sample of `pending`.
    pos: u64,
    /// Recent audio before speech starts: pre-roll + the start window.
    history: VecDeque<f32>,
    history_cap: usize,
    /// Voiced flags of the frames of the start window.
    window: VecDeque<bool>,
    window_len: usize,
    speech: Option<Speech>,
}

struct Speech {
    samples: Vec<f32>,
    start: u64,
    /// First voiced frame's start.
    voice_start: u64,
    /// End of the last voiced frame.
    voice_end: u64,
    /// A [`Endpoint::Pause`] was offered for the current pause.
    paused: bool,
}

impl<V: VoiceDetector> Endpointer<V> {
    pub fn new(cfg: EndpointConfig, vad: V) -> Result<Self, EndpointError> {
        cfg.validate()?;
        let frame_len = (SAMPLE_RATE as usize * cfg.frame_ms as usize) / 1000;
        let window_len = ((200 / cfg.frame_ms) as usize).max(3);
        let history_cap = samples(cfg.pre_roll_sec) as usize + window_len * frame_len;
        Ok(Self {
            cfg,
            vad,
            frame_len,
            pending: Vec::with_capacity(frame_len),
            pos: 0,
            history: VecDeque::with_capacity(history_cap),
            history_cap,
            window: VecDeque::with_capacity(window_len),
            window_len,
            speech: None,
        })
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.cfg
    }

    /// Samples consumed so far (the stream position).
    pub fn position(&self) -> u64 {
        self.pos + self.pending.len() as u64
    }

    /// Whether an utterance is in progress, and for how long its speech has lasted (seconds).
    pub fn in_speech(&self) -> Option<f64> {
        self.speech.as_ref().map(|s| super::secs(s.voice_end.saturating_sub(s.voice_start)))
    }

    /// Forget any speech in progress (the stream position goes on).
    pub fn reset(&mut self) {
        self.speech = None;
        self.history.clear();
        self.window.clear();
        self.vad.reset();
    }

    /// Skip `n` samples without listening to them (muted): position advances, nothing is heard.
    pub fn skip(&mut self, n: u64) {
        self.reset();
        self.pos += self.pending.len() as u64 + n;
        self.pending.clear();
    }

    /// Feed 16 kHz mono samples; returns what happened, in order.
    pub fn push(&mut self, input: &[f32]) -> Vec<Endpoint> {
        let mut out = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let need = self.frame_len - self.pending.len();
            let take = need.min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == self.frame_len {
                let frame = std::mem::take(&mut self.pending);
                self.frame(&frame, &mut out);
                self.pos += frame.len() as u64;
                self.pending = frame;
                self.pending.clear();
            }
        }
        out
    }

    /// End of stream: finish the utterance in progress as if silence followed.
    pub fn flush(&mut self) -> Vec<Endpoint> {
        let mut out = Vec::new();
        if let Some(s) = self.speech.take() {
            self.finish(s, &mut out);
        }
        self.reset();
        out
    }

    fn frame(&mut self, frame: &[f32], out: &mut Vec<Endpoint>) {
        let pcm: Vec<i16> = frame.iter().map(|&x| (x.clamp(-1.0, 1.0) * 32767.0) as i16).collect();
        let voiced = self.vad.is_voice(&pcm);
        let frame_end = self.pos + frame.len() as u64;
        let flen = self.frame_len as u64;

        if let Some(s) = self.speech.as_mut() {
            s.samples.extend_from_slice(frame);
            if voiced {
                s.voice_end = frame_end;
                s.paused = false;
            }
            let silence = frame_end - s.voice_end;
            let early = samples(self.cfg.early_transcribe_sec);
            if early > 0 && !s.paused && silence >= early && silence < samples(self.cfg.end_silence_sec) {
                s.paused = true;
                if let Some(u) = Self::utterance(&self.cfg, s) {
                    out.push(Endpoint::Pause(u));
                }
            }
            let too_long = frame_end - s.start >= samples(self.cfg.max_utterance_sec).max(flen);
            if silence >= samples(self.cfg.end_silence_sec).max(flen) || too_long {
                let s = self.speech.take().expect("speech in progress");
                let cut_in_speech = too_long && voiced;
                self.finish(s, out);
                if cut_in_speech {
                    // The speaker goes on: a new utterance starts right here.
                    self.speech = Some(Speech { samples: Vec::new(), start: frame_end, voice_start: frame_end, voice_end: frame_end, paused: false });
                    out.push(Endpoint::Started { start: frame_end });
                }
            }
            return;
        }

        self.history.extend(frame.iter().copied());
        while self.history.len() > self.history_cap {
            self.history.pop_front();
        }
        self.window.push_back(voiced);
        if self.window.len() > self.window_len {
            self.window.pop_front();
        }
        let n_voiced = self.window.iter().filter(|v| **v).count();
        if self.window.len() == self.window_len && n_voiced * 10 >= self.window_len * 6 {
            let first_voiced = self.window.iter().position(|v| *v).unwrap_or(0) as u64;
            let window_start = frame_end - self.window_len as u64 * flen;
            let samples: Vec<f32> = self.history.drain(..).collect();
            let start = frame_end - samples.len() as u64;
            self.window.clear();
            self.speech = Some(Speech { samples, start, voice_start: window_start + first_voiced * flen, voice_end: frame_end, paused: false });
            out.push(Endpoint::Started { start });
        }
    }

    fn finish(&mut self, s: Speech, out: &mut Vec<Endpoint>) {
        match Self::utterance(&self.cfg, &s) {
            Some(u) => out.push(Endpoint::Utterance(u)),
            None => out.push(Endpoint::Discarded { start: s.start, speech_secs: super::secs(s.voice_end.saturating_sub(s.voice_start)) }),
        }
    }

    /// The utterance of `s` (its speech plus a tail of the silence after it, as much as the
    /// pre-roll), or `None` if its speech is shorter than the minimum.
    fn utterance(cfg: &EndpointConfig, s: &Speech) -> Option<Utterance> {
        let speech_secs = super::secs(s.voice_end.saturating_sub(s.voice_start));
        if speech_secs < cfg.min_utterance_sec {
            return None;
        }
        let keep_end = (s.voice_end + samples(cfg.pre_roll_sec)).min(s.start + s.samples.len() as u64);
        let samples = s.samples[..(keep_end - s.start) as usize].to_vec();
        Some(Utterance { samples, start: s.start, end: keep_end, speech_end: s.voice_end })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A detector that calls a frame voiced when its mean absolute value is above a threshold
    /// (synthetic signals: silence is 0, "speech" is a loud tone).
    pub(crate) struct Loud;
    impl VoiceDetector for Loud {
        fn is_voice(&mut self, frame: &[i16]) -> bool {
            frame.iter().map(|s| (*s as i64).abs()).sum::<i64>() / frame.len() as i64 > 1000
        }
        fn reset(&mut self) {}
    }

    pub(crate) fn tone(secs: f64) -> Vec<f32> {
        (0..samples(secs)).map(|i| (i as f32 * 0.3).sin() * 0.5).collect()
    }
    pub(crate) fn silence(secs: f64) -> Vec<f32> {
        vec![0.0; samples(secs) as usize]
    }

    fn utterances(ev: &[Endpoint]) -> Vec<&Utterance> {
        ev.iter().filter_map(|e| if let Endpoint::Utterance(u) = e { Some(u) } else { None }).collect()
    }

    fn run(cfg: EndpointConfig, parts: &[Vec<f32>]) -> Vec<Endpoint> {
        let mut ep = Endpointer::new(cfg, Loud).unwrap();
        let mut ev = Vec::new();
        for p in parts {
            for c in p.chunks(333) {
                ev.extend(ep.push(c));
            }
        }
        ev
    }

    #[test]
    fn an_utterance_ends_after_the_end_silence_with_pre_roll_and_a_short_tail() {
        let cfg = EndpointConfig::default();
        let ev = run(cfg.clone(), &[silence(1.0), tone(2.0), silence(2.0)]);
        assert!(matches!(ev[0], Endpoint::Started { .. }));
        let u = utterances(&ev);
        assert_eq!(u.len(), 1);
        let u = u[0];
        // Speech from 1.0 s to 3.0 s; pre-roll 0.25 s before the start window; tail 0.25 s.
        let s = |x: f64| samples(x);
        assert!(u.start <= s(1.0 - 0.25) && u.start >= s(1.0 - 0.25 - 0.25), "start {}", u.start);
        assert!(u.speech_end >= s(3.0) && u.speech_end <= s(3.03), "speech_end {}", u.speech_end);
        assert_eq!(u.end, u.speech_end + s(0.25));
        assert_eq!(u.samples.len() as u64, u.end - u.start);
    }

    #[test]
    fn no_utterance_until_the_end_silence_has_passed() {
        let ev = run(EndpointConfig::default(), &[silence(0.5), tone(1.0), silence(1.4)]);
        assert!(utterances(&ev).is_empty());
        let ev = run(EndpointConfig::default(), &[silence(0.5), tone(1.0), silence(1.55)]);
        assert_eq!(utterances(&ev).len(), 1);
    }

    #[test]
    fn short_sounds_are_discarded_and_silence_gives_nothing() {
        let ev = run(EndpointConfig::default(), &[silence(1.0), tone(0.3), silence(2.0)]);
        assert!(utterances(&ev).is_empty());
        assert!(matches!(ev.last(), Some(Endpoint::Discarded { speech_secs, .. }) if *speech_secs < 0.5));
        assert!(run(EndpointConfig::default(), &[silence(10.0)]).is_empty());
    }

    #[test]
    fn three_phrases_separated_by_silence_are_three_utterances() {
        let ev = run(EndpointConfig::default(), &[tone(1.0), silence(2.0), tone(1.5), silence(2.0), tone(0.8), silence(2.0)]);
        let u = utterances(&ev);
        assert_eq!(u.len(), 3);
        assert!(u[0].end < u[1].start && u[1].end < u[2].start);
    }

    #[test]
    fn a_pause_shorter_than_the_end_silence_does_not_split() {
        let ev = run(EndpointConfig::default(), &[tone(1.0), silence(1.0), tone(1.0), silence(2.0)]);
        assert_eq!(utterances(&ev).len(), 1);
    }

    #[test]
    fn long_speech_is_cut_at_the_maximum_and_goes_on() {
        let cfg = EndpointConfig { max_utterance_sec: 2.0, ..Default::default() };
        let ev = run(cfg, &[tone(5.0), silence(2.0)]);
        let u = utterances(&ev);
        assert_eq!(u.len(), 3, "{:?}", u.iter().map(|u| (u.start, u.end)).collect::<Vec<_>>());
        assert!(u.iter().all(|u| u.duration_secs() <= 2.3));
    }

    #[test]
    fn a_pause_offers_the_utterance_early_and_the_final_one_is_the_same_audio() {
        let ev = run(EndpointConfig::default(), &[silence(0.5), tone(1.0), silence(2.0)]);
        let pauses: Vec<&Utterance> = ev.iter().filter_map(|e| if let Endpoint::Pause(u) = e { Some(u) } else { None }).collect();
        assert_eq!(pauses.len(), 1);
        assert_eq!(pauses[0], utterances(&ev)[0]);
        // The pause comes before the end: whisper gets end_silence - early_transcribe_sec ahead.
        let pos = |pred: &dyn Fn(&Endpoint) -> bool| ev.iter().position(pred).unwrap();
        assert!(pos(&|e| matches!(e, Endpoint::Pause(_))) < pos(&|e| matches!(e, Endpoint::Utterance(_))));
        // A pause after which the user goes on: offered, then a longer final utterance.
        let ev = run(EndpointConfig::default(), &[tone(1.0), silence(0.8), tone(1.0), silence(2.0)]);
        let pauses: Vec<&Utterance> = ev.iter().filter_map(|e| if let Endpoint::Pause(u) = e { Some(u) } else { None }).collect();
        let u = utterances(&ev);
        assert_eq!((pauses.len(), u.len()), (2, 1));
        assert!(pauses[0].speech_end < u[0].speech_end && pauses[1] == u[0]);
        // Off.
        let ev = run(EndpointConfig { early_transcribe_sec: 0.0, ..Default::default() }, &[tone(1.0), silence(2.0)]);
        assert!(!ev.iter().any(|e| matches!(e, Endpoint::Pause(_))));
    }

    #[test]
    fn flush_finishes_speech_in_progress() {
        let mut ep = Endpointer::new(EndpointConfig::default(), Loud).unwrap();
        ep.push(&tone(1.0));
        assert_eq!(utterances(&ep.flush()).len(), 1);
        assert!(ep.flush().is_empty());
    }

    #[test]
    fn skipping_drops_speech_in_progress_and_keeps_time() {
        let mut ep = Endpointer::new(EndpointConfig::default(), Loud).unwrap();
        ep.push(&tone(1.0));
        assert!(ep.in_speech().is_some());
        ep.skip(samples(1.0));
        assert!(ep.in_speech().is_none());
        assert_eq!(ep.position(), samples(2.0));
        let ev = ep.push(&[tone(1.0), silence(2.0)].concat());
        let u = utterances(&ev);
        assert!(u[0].start >= samples(1.7), "{}", u[0].start);
    }

    #[test]
    fn bad_parameters_are_refused_clearly() {
        let e = Endpointer::new(EndpointConfig { frame_ms: 25, ..Default::default() }, Loud).err().unwrap();
        assert_eq!(e.to_string(), "vad.frame_ms must be 10, 20 or 30 (got 25)");
        let e = Endpointer::new(EndpointConfig { end_silence_sec: -1.0, ..Default::default() }, Loud).err().unwrap();
        assert!(e.to_string().contains("vad.end_silence_sec"));
        assert!(WebRtcVad::new(4).is_err());
    }

    #[test]
    fn webrtc_vad_hears_a_voice_like_signal_and_not_silence() {
        // A buzz with a 120 Hz fundamental and formant-like harmonics, amplitude-modulated.
        let voice: Vec<f32> = (0..samples(1.0))
            .map(|i| {
                let t = i as f32 / SAMPLE_RATE as f32;
                let f0 = 120.0;
                let mut v = 0.0;
                for (h, a) in [(1.0, 1.0), (2.0, 0.8), (3.0, 0.6), (5.0, 0.5), (8.0, 0.3), (12.0, 0.2)] {
                    v += a * (2.0 * std::f32::consts::PI * f0 * h * t).sin();
                }
                v * 0.1 * (1.0 + (2.0 * std::f32::consts::PI * 4.0 * t).sin()) / 2.0 + 0.05 * v
            })
            .collect();
        for frame_ms in [10, 20, 30] {
            let mut vad = WebRtcVad::new(2).unwrap();
            let n = (16 * frame_ms) as usize;
            let pcm = |x: &[f32]| x.iter().map(|v| (v * 32767.0) as i16).collect::<Vec<i16>>();
            let voiced = voice.chunks_exact(n).filter(|f| vad.is_voice(&pcm(f))).count();
            let total = voice.len() / n;
            assert!(voiced * 2 > total, "{frame_ms} ms: {voiced}/{total} voiced");
            let quiet = vec![0.0f32; 16000];
            vad.reset();
            assert_eq!(quiet.chunks_exact(n).filter(|f| vad.is_voice(&pcm(f))).count(), 0);
        }
    }
}
