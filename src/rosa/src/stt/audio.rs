//! Audio: where it comes from, WAV files, down-mixing and resampling to 16 kHz mono.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AudioError {
    #[error("audio_source `{0}` is not one of: default, device:<name>, file:<path>, topic:<name>, none")]
    BadSource(String),
    #[error("cannot read the WAV file {path}: {message}")]
    Wav { path: PathBuf, message: String },
    #[error("audio input device: {0}")]
    Device(String),
    #[error("unsupported audio format: {0}")]
    Format(String),
}

/// The `audio_source` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// The default input device (cpal).
    Default,
    /// The input device whose name is this (cpal).
    Device(String),
    /// A WAV file.
    File(PathBuf),
    /// `rosa_interfaces/msg/AudioData` chunks on this topic.
    Topic(String),
    /// No audio: the node runs and publishes nothing.
    None,
}

impl FromStr for SourceSpec {
    type Err = AudioError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let nonempty = |rest: &str| if rest.trim().is_empty() { Err(AudioError::BadSource(s.into())) } else { Ok(rest.trim().to_string()) };
        Ok(match t {
            "default" => SourceSpec::Default,
            "none" | "" => SourceSpec::None,
            _ if t.starts_with("file:") => SourceSpec::File(PathBuf::from(nonempty(&t[5..])?)),
            _ if t.starts_with("topic:") => SourceSpec::Topic(nonempty(&t[6..])?),
            _ if t.starts_with("device:") => SourceSpec::Device(nonempty(&t[7..])?),
            _ => return Err(AudioError::BadSource(s.into())),
        })
    }
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceSpec::Default => write!(f, "default"),
            SourceSpec::Device(n) => write!(f, "device:{n}"),
            SourceSpec::File(p) => write!(f, "file:{}", p.display()),
            SourceSpec::Topic(t) => write!(f, "topic:{t}"),
            SourceSpec::None => write!(f, "none"),
        }
    }
}

/// A chunk of captured audio: interleaved samples in [-1, 1].
#[derive(Debug, Clone)]
pub struct Chunk {
    pub samples: Vec<f32>,
    pub channels: u16,
    pub rate: u32,
    /// When the chunk's last sample was captured (wall clock).
    pub end: SystemTime,
}

impl Chunk {
    pub fn frames(&self) -> usize {
        self.samples.len() / self.channels.max(1) as usize
    }
    pub fn duration_secs(&self) -> f64 {
        self.frames() as f64 / self.rate.max(1) as f64
    }
}

/// Mean of the channels of interleaved samples (a trailing partial frame is dropped).
pub fn downmix(samples: &[f32], channels: u16) -> Vec<f32> {
    let c = channels.max(1) as usize;
    if c == 1 {
        return samples.to_vec();
    }
    samples.chunks_exact(c).map(|f| f.iter().sum::<f32>() / c as f32).collect()
}

/// Convert 16-bit PCM to floats in [-1, 1).
pub fn i16_to_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|&s| s as f32 / 32768.0).collect()
}

/// A chunk from 16-bit interleaved PCM as it arrives on a topic (`rosa_interfaces/msg/AudioData`).
/// `first_sample` is the capture time of the first sample (`None`: it ends now).
pub fn chunk_from_pcm(samples: &[i16], channels: u16, rate: u32, first_sample: Option<SystemTime>) -> Result<Chunk, AudioError> {
    if channels == 0 || channels > 64 {
        return Err(AudioError::Format(format!("{channels} channels")));
    }
    if !(1_000..=384_000).contains(&rate) {
        return Err(AudioError::Format(format!("a sample rate of {rate} Hz (1000..384000 are accepted)")));
    }
    let frames = samples.len() / channels as usize;
    let dur = std::time::Duration::from_secs_f64(frames as f64 / rate as f64);
    let end = match first_sample {
        Some(t) => t + dur,
        None => SystemTime::now(),
    };
    Ok(Chunk { samples: i16_to_f32(&samples[..frames * channels as usize]), channels, rate, end })
}

/// A whole WAV file: interleaved samples in [-1, 1].
#[derive(Debug, Clone)]
pub struct Wav {
    pub samples: Vec<f32>,
    pub channels: u16,
    pub rate: u32,
}

impl Wav {
    pub fn duration_secs(&self) -> f64 {
        self.samples.len() as f64 / self.channels.max(1) as f64 / self.rate.max(1) as f64
    }
}

/// Read a WAV file (PCM 8/16/24/32-bit integer or 32-bit float, any rate, any channel count).
pub fn read_wav(path: &Path) -> Result<Wav, AudioError> {
    let err = |message: String| AudioError::Wav { path: path.to_path_buf(), message };
    let reader = hound::WavReader::open(path).map_err(|e| err(e.to_string()))?;
    let spec = reader.spec();
    if spec.channels == 0 || spec.sample_rate == 0 {
        return Err(err("no channels or a zero sample rate".into()));
    }
    let samples: Result<Vec<f32>, hound::Error> = match spec.sample_format {
        hound::SampleFormat::Float => reader.into_samples::<f32>().collect(),
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader.into_samples::<i32>().map(|s| s.map(|v| v as f32 * scale)).collect()
        }
    };
    let samples = samples.map_err(|e| err(e.to_string()))?;
    Ok(Wav { samples, channels: spec.channels, rate: spec.sample_rate })
}

/// Streaming band-limited resampler (windowed sinc, Blackman window) for one channel.
///
/// The kernel is tabulated (256 phases per input sample, linear interpolation between them), so a
/// sample costs about `2 × half_width` multiply-adds. When downsampling, the cut-off is 95 % of the
/// output's Nyquist frequency, so nothing above it aliases into the speech band.
pub struct Resampler {
    from: u32,
    to: u32,
    /// Input samples per output sample.
    step: f64,
    /// Zero crossings of the kernel on each side, in input samples.
    half: usize,
    table: Vec<f32>,
    /// Input not yet consumed; `buf[0]` is input sample `base`.
    buf: Vec<f32>,
    /// Position of the next output sample, in input samples relative to `buf[0]`.
    pos: f64,
}

const PHASES: usize = 256;

impl Resampler {
    pub fn new(from: u32, to: u32) -> Self {
        let from = from.max(1);
        let to = to.max(1);
        let step = from as f64 / to as f64;
        let cutoff = if to < from { 0.95 * to as f64 / from as f64 } else { 1.0 };
        // Eight zero crossings of the sinc on each side.
        let half = ((8.0 / cutoff).ceil() as usize).clamp(8, 128);
        let n = 2 * half * PHASES + 1;
        let table = (0..n)
            .map(|i| {
                let x = i as f64 / PHASES as f64 - half as f64; // in input samples
                let sinc = if x.abs() < 1e-12 {
                    1.0
                } else {
                    let a = std::f64::consts::PI * cutoff * x;
                    a.sin() / a
                };
                let w = {
                    let t = (x / half as f64 + 1.0) / 2.0; // 0..1 over the window
                    let tau = 2.0 * std::f64::consts::PI * t;
                    0.42 - 0.5 * tau.cos() + 0.08 * (2.0 * tau).cos()
                };
                (cutoff * sinc * w) as f32
            })
            .collect();
        // Start with `half` zeros of history so that the first output is input sample 0.
        Self { from, to, step, half, table, buf: vec![0.0; half], pos: half as f64 }
    }

    pub fn rates(&self) -> (u32, u32) {
        (self.from, self.to)
    }

    /// Resample `input` (the next samples of the stream), appending the output to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        if self.from == self.to {
            out.extend_from_slice(input);
            return;
        }
        self.buf.extend_from_slice(input);
        let half = self.half as isize;
        loop {
            let center = self.pos.floor() as isize;
            if center + half >= self.buf.len() as isize {
                break;
            }
            // The kernel at distance (pos - k) for k = center-half+1 ..= center+half: the table
            // index steps down by PHASES per tap and the interpolation weight is the same for all.
            let x0 = (self.pos - (center - half + 1) as f64 + half as f64) * PHASES as f64;
            let i0 = x0.floor() as usize;
            let f = (x0 - i0 as f64) as f32;
            let first = (center - half + 1) as usize;
            let mut acc = 0.0f32;
            for (j, x) in self.buf[first..=(center + half) as usize].iter().enumerate() {
                let i = i0 - j * PHASES;
                let h = if i + 1 < self.table.len() { self.table[i] * (1.0 - f) + self.table[i + 1] * f } else { 0.0 };
                acc += x * h;
            }
            out.push(acc);
            self.pos += self.step;
        }
        // Drop input no longer needed (keep `half` samples of history before the next output).
        let keep_from = (self.pos.floor() as isize - half + 1).max(0) as usize;
        if keep_from > 0 {
            self.buf.drain(..keep_from.min(self.buf.len()));
            self.pos -= keep_from as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, rate: u32, secs: f64) -> Vec<f32> {
        (0..(rate as f64 * secs) as usize).map(|i| (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin() as f32 * 0.5).collect()
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
    }

    /// Amplitude of the `freq` component of `x` (sampled at `rate`).
    fn tone_amplitude(x: &[f32], freq: f64, rate: u32) -> f64 {
        let (mut re, mut im) = (0.0, 0.0);
        for (i, v) in x.iter().enumerate() {
            let a = 2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64;
            re += *v as f64 * a.cos();
            im += *v as f64 * a.sin();
        }
        2.0 * (re * re + im * im).sqrt() / x.len() as f64
    }

    #[test]
    fn sources_parse_from_the_parameter() {
        assert_eq!("default".parse::<SourceSpec>().unwrap(), SourceSpec::Default);
        assert_eq!("none".parse::<SourceSpec>().unwrap(), SourceSpec::None);
        assert_eq!("file:/tmp/a.wav".parse::<SourceSpec>().unwrap(), SourceSpec::File("/tmp/a.wav".into()));
        assert_eq!("topic:/rosa/audio".parse::<SourceSpec>().unwrap(), SourceSpec::Topic("/rosa/audio".into()));
        assert_eq!("device:USB Mic".parse::<SourceSpec>().unwrap(), SourceSpec::Device("USB Mic".into()));
        for bad in ["file:", "topic: ", "mic", "alsa:hw0"] {
            let e = bad.parse::<SourceSpec>().unwrap_err().to_string();
            assert!(e.contains("default, device:<name>, file:<path>, topic:<name>, none"), "{e}");
        }
        assert_eq!(SourceSpec::File("/x.wav".into()).to_string(), "file:/x.wav");
    }

    #[test]
    fn topic_chunks_are_checked_and_timed() {
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100);
        let c = chunk_from_pcm(&[16384, -16384, 0, 0, 1], 2, 16_000, Some(t0)).unwrap();
        assert_eq!(c.samples, vec![0.5, -0.5, 0.0, 0.0]);
        assert_eq!(c.end, t0 + std::time::Duration::from_secs_f64(2.0 / 16_000.0));
        assert!(chunk_from_pcm(&[0; 4], 0, 16_000, None).unwrap_err().to_string().contains("0 channels"));
        assert!(chunk_from_pcm(&[0; 4], 1, 0, None).unwrap_err().to_string().contains("sample rate of 0 Hz"));
        assert!(chunk_from_pcm(&[], 1, 48_000, None).unwrap().samples.is_empty());
    }

    #[test]
    fn downmix_averages_channels() {
        assert_eq!(downmix(&[1.0, 0.0, 0.5, 0.5, 0.2], 2), vec![0.5, 0.5]);
        assert_eq!(downmix(&[0.1, 0.2], 1), vec![0.1, 0.2]);
    }

    #[test]
    fn resampling_keeps_a_tone_and_the_length() {
        for from in [8_000, 22_050, 44_100, 48_000] {
            let x = sine(440.0, from, 1.0);
            let mut r = Resampler::new(from, 16_000);
            let mut y = Vec::new();
            r.process(&x, &mut y);
            let expect = 16_000.0 * x.len() as f64 / from as f64;
            assert!((y.len() as f64 - expect).abs() <= 130.0, "{from}: {} samples, expected ~{expect}", y.len());
            // Skip the filter's start-up; the tone's amplitude survives.
            let a = tone_amplitude(&y[400..y.len() - 400], 440.0, 16_000);
            assert!((a - 0.5).abs() < 0.02, "{from} Hz: 440 Hz amplitude {a}");
        }
    }

    #[test]
    fn downsampling_removes_what_would_alias() {
        // 12 kHz at 48 kHz would alias to 4 kHz at 16 kHz.
        let x = sine(12_000.0, 48_000, 0.5);
        let mut y = Vec::new();
        Resampler::new(48_000, 16_000).process(&x, &mut y);
        assert!(rms(&y[200..]) < 0.005, "aliased energy {}", rms(&y[200..]));
    }

    #[test]
    fn streaming_in_chunks_equals_one_shot() {
        let x = sine(300.0, 44_100, 0.7);
        let mut one = Vec::new();
        Resampler::new(44_100, 16_000).process(&x, &mut one);
        let mut r = Resampler::new(44_100, 16_000);
        let mut many = Vec::new();
        for c in x.chunks(441 + 7) {
            r.process(c, &mut many);
        }
        assert_eq!(one.len(), many.len());
        for (a, b) in one.iter().zip(&many) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn same_rate_passes_through() {
        let x = sine(300.0, 16_000, 0.1);
        let mut y = Vec::new();
        Resampler::new(16_000, 16_000).process(&x, &mut y);
        assert_eq!(x, y);
    }

    #[test]
    fn wav_files_are_read_in_every_pcm_format() {
        let dir = std::env::temp_dir().join(format!("rosa-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p16 = dir.join("s16.wav");
        let spec = hound::WavSpec { channels: 2, sample_rate: 22_050, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
        let mut w = hound::WavWriter::create(&p16, spec).unwrap();
        for s in [16384i16, -16384, 0, 32767] {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        let wav = read_wav(&p16).unwrap();
        assert_eq!((wav.channels, wav.rate), (2, 22_050));
        assert_eq!(wav.samples[..2], [0.5, -0.5]);

        let pf = dir.join("f32.wav");
        let spec = hound::WavSpec { channels: 1, sample_rate: 16_000, bits_per_sample: 32, sample_format: hound::SampleFormat::Float };
        let mut w = hound::WavWriter::create(&pf, spec).unwrap();
        w.write_sample(0.25f32).unwrap();
        w.finalize().unwrap();
        assert_eq!(read_wav(&pf).unwrap().samples, vec![0.25]);

        let bad = dir.join("bad.wav");
        std::fs::write(&bad, b"this is not a wav file").unwrap();
        let e = read_wav(&bad).unwrap_err().to_string();
        assert!(e.contains("cannot read the WAV file") && e.contains("bad.wav"), "{e}");
        let e = read_wav(&dir.join("missing.wav")).unwrap_err().to_string();
        assert!(e.contains("missing.wav"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
