//! The listening pipeline before whisper: any audio → 16 kHz mono → endpointer, muted while the
//! robot speaks (plus a short tail for the room's echo), with barge-in when allowed.
//!
//! Muting: while `/rosa/speaking` is true the microphone mostly hears the robot, so nothing is
//! endpointed and speech in progress is dropped; after it turns false, `speaking_tail_sec` more
//! are skipped. With `barge_in`, the endpointer keeps listening while the robot speaks: once an
//! utterance has `barge_in_sec` of speech the listener asks the robot to stop ([`Heard::BargeIn`])
//! and that utterance is kept and transcribed; utterances that do not get there are dropped as the
//! robot's own voice. (Barge-in needs a microphone with echo cancellation or a headset: without
//! one the robot's voice itself is speech to the VAD.)

use super::audio::{downmix, Chunk, Resampler};
use super::endpoint::{Endpoint, EndpointConfig, EndpointError, Endpointer, Utterance, VoiceDetector};
use super::{samples, SAMPLE_RATE};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub endpoint: EndpointConfig,
    pub speaking_tail_sec: f64,
    pub barge_in: bool,
    pub barge_in_sec: f64,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self { endpoint: EndpointConfig::default(), speaking_tail_sec: 0.3, barge_in: false, barge_in_sec: 0.6 }
    }
}

/// What the listener heard.
#[derive(Debug, Clone, PartialEq)]
pub enum Heard {
    SpeechStarted { start: u64 },
    /// An utterance to transcribe, with the wall-clock time of its first and last sample.
    Utterance { utterance: Utterance, start: SystemTime, end: SystemTime },
    /// A pause: the utterance so far, which may turn out to be the whole utterance (see
    /// [`Endpoint::Pause`]); never muted speech.
    Pause { utterance: Utterance, start: SystemTime, end: SystemTime },
    /// Speech that will not be transcribed, and why.
    Dropped { start: u64, why: &'static str },
    /// The user talks over the robot: ask it to stop speaking.
    BargeIn,
}

pub struct Listener<V: VoiceDetector> {
    cfg: ListenerConfig,
    ep: Endpointer<V>,
    resampler: Option<(u32, u16, Resampler)>,
    speaking: bool,
    /// Skip audio until this stream position (the tail after the robot spoke).
    mute_until: u64,
    /// The utterance in progress barged in.
    barged: bool,
    /// Wall clock of the last sample pushed, and its stream position.
    anchor: Option<(u64, SystemTime)>,
}

impl<V: VoiceDetector> Listener<V> {
    pub fn new(cfg: ListenerConfig, vad: V) -> Result<Self, EndpointError> {
        for (name, value) in [("speaking_tail_sec", cfg.speaking_tail_sec), ("barge_in_sec", cfg.barge_in_sec)] {
            if !value.is_finite() || value < 0.0 {
                return Err(EndpointError::Negative { name, value });
            }
        }
        let ep = Endpointer::new(cfg.endpoint.clone(), vad)?;
        Ok(Self { cfg, ep, resampler: None, speaking: false, mute_until: 0, barged: false, anchor: None })
    }

    /// New settings (parameters set at run time), with a new VAD: the stream position goes on,
    /// speech in progress is dropped.
    pub fn reconfigure(&mut self, cfg: ListenerConfig, vad: V) -> Result<(), EndpointError> {
        let mut next = Self::new(cfg, vad)?;
        next.ep.skip(self.position());
        next.resampler = self.resampler.take();
        next.anchor = self.anchor;
        next.mute_until = self.mute_until;
        next.speaking = self.speaking;
        *self = next;
        Ok(())
    }

    /// Stream position: 16 kHz samples heard (or skipped) so far.
    pub fn position(&self) -> u64 {
        self.ep.position()
    }

    pub fn speaking(&self) -> bool {
        self.speaking
    }

    /// Whether the listener hears the user now (not muted by the robot's speech or its tail).
    pub fn hearing(&self) -> bool {
        !self.speaking && self.position() >= self.mute_until
    }

    /// The robot started or stopped speaking.
    pub fn set_speaking(&mut self, speaking: bool) {
        if speaking == self.speaking {
            return;
        }
        self.speaking = speaking;
        let user_talking = self.barged && self.ep.in_speech().is_some();
        if speaking {
            // Whatever was being said is mixed with the robot's voice from now on.
            self.ep.reset();
            self.barged = false;
        } else if !user_talking {
            self.ep.reset();
            self.mute_until = self.position() + samples(self.cfg.speaking_tail_sec);
        }
    }

    /// Any audio: down-mixed, resampled to 16 kHz, endpointed.
    pub fn push_chunk(&mut self, chunk: &Chunk) -> Vec<Heard> {
        let mono = downmix(&chunk.samples, chunk.channels);
        let pcm = match &mut self.resampler {
            Some((rate, ch, r)) if *rate == chunk.rate && *ch == chunk.channels => {
                let mut out = Vec::with_capacity(mono.len() * SAMPLE_RATE as usize / chunk.rate.max(1) as usize + 1);
                r.process(&mono, &mut out);
                out
            }
            _ => {
                let mut r = Resampler::new(chunk.rate, SAMPLE_RATE);
                let mut out = Vec::new();
                r.process(&mono, &mut out);
                self.resampler = Some((chunk.rate, chunk.channels, r));
                out
            }
        };
        self.push_16k(&pcm, chunk.end)
    }

    /// 16 kHz mono audio whose last sample was captured at `end`.
    pub fn push_16k(&mut self, pcm: &[f32], end: SystemTime) -> Vec<Heard> {
        let mut out = Vec::new();
        let pos = self.position();
        self.anchor = Some((pos + pcm.len() as u64, end));
        if self.speaking && !self.cfg.barge_in {
            self.ep.skip(pcm.len() as u64);
            return out;
        }
        let mut pcm = pcm;
        if !self.speaking && pos < self.mute_until && !(self.barged && self.ep.in_speech().is_some()) {
            let n = ((self.mute_until - pos) as usize).min(pcm.len());
            self.ep.skip(n as u64);
            pcm = &pcm[n..];
        }
        let events = self.ep.push(pcm);
        self.handle(events, &mut out);
        if self.speaking && self.cfg.barge_in && !self.barged {
            if let Some(speech) = self.ep.in_speech() {
                if speech >= self.cfg.barge_in_sec {
                    self.barged = true;
                    out.push(Heard::BargeIn);
                }
            }
        }
        out
    }

    /// End of the stream: the utterance in progress ends here.
    pub fn flush(&mut self) -> Vec<Heard> {
        let mut out = Vec::new();
        let events = self.ep.flush();
        self.handle(events, &mut out);
        out
    }

    /// Wall-clock time of stream position `pos` (from the last chunk's capture time).
    pub fn wall_time(&self, pos: u64) -> SystemTime {
        match self.anchor {
            Some((at, t)) if pos <= at => t.checked_sub(Duration::from_secs_f64(super::secs(at - pos))).unwrap_or(t),
            Some((at, t)) => t + Duration::from_secs_f64(super::secs(pos - at)),
            None => SystemTime::now(),
        }
    }

    fn handle(&mut self, events: Vec<Endpoint>, out: &mut Vec<Heard>) {
        for e in events {
            match e {
                Endpoint::Started { start } => out.push(Heard::SpeechStarted { start }),
                Endpoint::Discarded { start, .. } => out.push(Heard::Dropped { start, why: "too short" }),
                Endpoint::Pause(u) => {
                    if !self.speaking || self.barged {
                        let (start, end) = (self.wall_time(u.start), self.wall_time(u.end));
                        out.push(Heard::Pause { utterance: u, start, end });
                    }
                }
                Endpoint::Utterance(u) => {
                    if self.speaking && !self.barged {
                        out.push(Heard::Dropped { start: u.start, why: "the robot was speaking" });
                    } else {
                        let (start, end) = (self.wall_time(u.start), self.wall_time(u.end));
                        out.push(Heard::Utterance { utterance: u, start, end });
                    }
                    self.barged = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::endpoint::tests::{silence, tone, Loud};
    use super::*;

    fn listener(cfg: ListenerConfig) -> Listener<Loud> {
        Listener::new(cfg, Loud).unwrap()
    }

    fn feed(l: &mut Listener<Loud>, x: &[f32]) -> Vec<Heard> {
        let mut out = Vec::new();
        for c in x.chunks(320) {
            out.extend(l.push_16k(c, SystemTime::now()));
        }
        out
    }

    fn count_utterances(h: &[Heard]) -> usize {
        h.iter().filter(|e| matches!(e, Heard::Utterance { .. })).count()
    }

    #[test]
    fn any_rate_and_channel_count_is_heard() {
        let mut l = listener(ListenerConfig::default());
        // One second of stereo 48 kHz "speech", then silence.
        let mono = |secs: f64, loud: bool| -> Vec<f32> {
            (0..(48_000.0 * secs) as usize).flat_map(|i| {
                let v = if loud { (i as f32 * 0.1).sin() * 0.5 } else { 0.0 };
                [v, v]
            }).collect()
        };
        let mut heard = Vec::new();
        for part in [mono(0.5, false), mono(1.0, true), mono(2.0, false)] {
            for c in part.chunks(960 * 2) {
                heard.extend(l.push_chunk(&Chunk { samples: c.to_vec(), channels: 2, rate: 48_000, end: SystemTime::now() }));
            }
        }
        assert_eq!(count_utterances(&heard), 1);
        assert!((l.position() as i64 - samples(3.5) as i64).abs() < 100, "{}", l.position());
    }

    #[test]
    fn nothing_is_heard_while_the_robot_speaks_nor_in_the_tail() {
        let mut l = listener(ListenerConfig::default());
        l.set_speaking(true);
        assert!(!l.hearing());
        assert_eq!(count_utterances(&feed(&mut l, &[tone(1.0), silence(2.0)].concat())), 0);
        // Speech in progress when the robot starts speaking is dropped too.
        l.set_speaking(false);
        feed(&mut l, &silence(0.5));
        feed(&mut l, &tone(0.8));
        l.set_speaking(true);
        assert_eq!(count_utterances(&feed(&mut l, &silence(2.0))), 0);
        // The tail: speech right after the robot stops is skipped for speaking_tail_sec.
        l.set_speaking(false);
        assert!(!l.hearing());
        feed(&mut l, &silence(0.3));
        assert!(l.hearing());
        let h = feed(&mut l, &[tone(1.0), silence(2.0)].concat());
        assert_eq!(count_utterances(&h), 1);
    }

    #[test]
    fn without_barge_in_the_user_cannot_interrupt() {
        let mut l = listener(ListenerConfig::default());
        l.set_speaking(true);
        let h = feed(&mut l, &[tone(2.0), silence(2.0)].concat());
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn barge_in_asks_the_robot_to_stop_and_keeps_the_utterance() {
        let mut l = listener(ListenerConfig { barge_in: true, ..Default::default() });
        l.set_speaking(true);
        // Short sounds while the robot speaks are its own voice: dropped, no barge-in.
        let h = feed(&mut l, &[tone(0.4), silence(2.0)].concat());
        assert!(!h.iter().any(|e| matches!(e, Heard::BargeIn)) && count_utterances(&h) == 0, "{h:?}");
        // Sustained speech barges in once, and is transcribed when it ends.
        let h = feed(&mut l, &tone(1.5));
        assert_eq!(h.iter().filter(|e| matches!(e, Heard::BargeIn)).count(), 1);
        l.set_speaking(false); // the driver stopped talking; the user goes on
        let h = feed(&mut l, &[tone(0.5), silence(2.0)].concat());
        assert_eq!(count_utterances(&h), 1);
        if let Some(Heard::Utterance { utterance, .. }) = h.iter().find(|e| matches!(e, Heard::Utterance { .. })) {
            assert!(utterance.duration_secs() > 1.9, "{}", utterance.duration_secs());
        }
    }

    #[test]
    fn wall_times_follow_the_capture_clock() {
        let mut l = listener(ListenerConfig::default());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let x = [silence(1.0), tone(1.0), silence(2.0)].concat();
        let mut heard = Vec::new();
        for (i, c) in x.chunks(1600).enumerate() {
            let end = t0 + Duration::from_millis(100 * (i as u64 + 1));
            heard.extend(l.push_16k(c, end));
        }
        let Some(Heard::Utterance { start, end, utterance }) = heard.into_iter().find(|e| matches!(e, Heard::Utterance { .. })) else {
            panic!("no utterance")
        };
        let at = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64() - 1000.0;
        assert!((at(start) - super::super::secs(utterance.start)).abs() < 1e-3);
        assert!((at(end) - super::super::secs(utterance.end)).abs() < 1e-3);
    }
}
