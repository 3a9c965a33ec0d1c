//! Speech to text: the [`Transcriber`] seam, whisper (whisper-rs) behind it, and the worker
//! thread that transcribes utterances one at a time from a bounded queue, so capture never waits
//! for whisper. When the queue is full a new utterance is dropped, counted and logged (live
//! audio), or the caller waits (a file played as fast as possible).

use super::model::{self, ModelError, ModelInfo};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SttError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("whisper could not load {path}: {why}")]
    Load { path: PathBuf, why: String },
    #[error("whisper failed: {0}")]
    Whisper(String),
}

/// Turns 16 kHz mono audio into text.
pub trait Transcriber: Send {
    fn transcribe(&mut self, pcm: &[f32]) -> Result<String, SttError>;
}

/// Whisper's decoding parameters (see the stt node's parameters).
#[derive(Debug, Clone, PartialEq)]
pub struct WhisperConfig {
    pub language: String,
    /// 0 = all cores.
    pub threads: usize,
    /// Encoder context in frames of 20 ms: -1 = fit the utterance (faster), 0 = whisper's 30 s.
    pub audio_ctx: i32,
    pub initial_prompt: String,
    /// Segments whisper itself thinks are not speech above this probability are dropped.
    pub no_speech_threshold: f32,
}

impl Default for WhisperConfig {
    fn default() -> Self {
        Self { language: "en".into(), threads: 0, audio_ctx: -1, initial_prompt: String::new(), no_speech_threshold: 0.6 }
    }
}

/// The encoder context for `n` samples with `audio_ctx = -1`: the utterance's 20 ms frames plus
/// margin, at least 3 s' worth (whisper is poor on shorter contexts), at most the model's 1500.
pub fn fitted_audio_ctx(n: usize) -> i32 {
    let frames = (n as f64 / super::SAMPLE_RATE as f64 * 50.0).ceil() as i32;
    (frames + 64).clamp(150, 1500)
}

pub struct Whisper {
    cfg: WhisperConfig,
    state: whisper_rs::WhisperState,
    _ctx: whisper_rs::WhisperContext,
    pub info: ModelInfo,
    pub path: PathBuf,
}

impl Whisper {
    /// Check and load the model, and run it once on silence (a broken model fails here, at
    /// start, and the first real utterance does not pay for whisper's warm-up).
    pub fn load(path: &Path, cfg: WhisperConfig) -> Result<Self, SttError> {
        let info = model::check(path)?;
        whisper_rs::install_logging_hooks();
        let load_err = |why: String| SttError::Load { path: path.to_path_buf(), why };
        let mut params = whisper_rs::WhisperContextParameters::default();
        params.use_gpu(false);
        let ctx = whisper_rs::WhisperContext::new_with_params(path, params).map_err(|e| load_err(format!("{e:?}")))?;
        let state = ctx.create_state().map_err(|e| load_err(format!("{e:?}")))?;
        if info.english_only() && cfg.language != "en" {
            tracing::warn!(model = %path.display(), language = %cfg.language, "an English-only model: the language parameter is ignored");
        }
        let mut w = Self { cfg, state, _ctx: ctx, info, path: path.to_path_buf() };
        w.transcribe(&vec![0.0; super::SAMPLE_RATE as usize]).map_err(|e| load_err(format!("a test run failed: {e}")))?;
        Ok(w)
    }

    fn threads(&self) -> i32 {
        let n = if self.cfg.threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) } else { self.cfg.threads };
        n.clamp(1, 16) as i32
    }
}

/// Remove what whisper writes for non-speech: "[BLANK_AUDIO]", "(wind blowing)", "*music*".
pub fn clean_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut depth: i32 = 0;
    let mut star = false;
    for c in text.chars() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth = (depth - 1).max(0),
            '*' | '♪' => star = !star,
            _ if depth == 0 && !star => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Transcriber for Whisper {
    fn transcribe(&mut self, pcm: &[f32]) -> Result<String, SttError> {
        use whisper_rs::{FullParams, SamplingStrategy};
        if pcm.is_empty() {
            return Ok(String::new());
        }
        let mut p = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        p.set_n_threads(self.threads());
        let lang = if self.info.english_only() { "en" } else { self.cfg.language.as_str() };
        p.set_language(Some(lang));
        p.set_translate(false);
        p.set_no_context(true);
        p.set_single_segment(true);
        p.set_no_timestamps(true);
        p.set_print_special(false);
        p.set_print_progress(false);
        p.set_print_realtime(false);
        p.set_print_timestamps(false);
        p.set_suppress_blank(true);
        // A short utterance gets a short encoder context: the encoder's cost follows it.
        let ctx = match self.cfg.audio_ctx {
            c if c < 0 => fitted_audio_ctx(pcm.len()),
            c => c.min(1500),
        };
        if ctx > 0 {
            p.set_audio_ctx(ctx);
        }
        if !self.cfg.initial_prompt.is_empty() {
            p.set_initial_prompt(&self.cfg.initial_prompt);
        }
        // Whisper wants at least a second of audio; pad shorter input with silence.
        let padded: Vec<f32>;
        let audio = if pcm.len() < super::SAMPLE_RATE as usize {
            padded = pcm.iter().copied().chain(std::iter::repeat(0.0)).take(super::SAMPLE_RATE as usize).collect();
            &padded[..]
        } else {
            pcm
        };
        self.state.full(p, audio).map_err(|e| SttError::Whisper(format!("{e:?}")))?;
        let mut text = String::new();
        for seg in self.state.as_iter() {
            if seg.no_speech_probability() > self.cfg.no_speech_threshold {
                tracing::debug!(p = seg.no_speech_probability(), "whisper: a segment that is not speech");
                continue;
            }
            match seg.to_str_lossy() {
                Ok(t) => text.push_str(&t),
                Err(e) => return Err(SttError::Whisper(format!("{e:?}"))),
            }
        }
        Ok(clean_text(&text))
    }
}

/// A job for the worker, with whatever the caller wants back alongside the text.
pub struct Job<T> {
    pub pcm: Vec<f32>,
    pub tag: T,
}

/// What the worker produced for a job.
pub struct Done<T> {
    pub tag: T,
    pub result: Result<String, SttError>,
    pub audio_secs: f64,
    pub took: Duration,
}

/// The transcription thread and its bounded queue.
pub struct Worker<T> {
    tx: Option<SyncSender<Job<T>>>,
    dropped: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// The queue is full: the utterance is dropped (the count so far).
    Full { dropped: u64 },
    /// The worker has stopped.
    Stopped,
}

impl<T: Send + 'static> Worker<T> {
    /// Start the thread; `done` is called there with every result, in order.
    pub fn start<X, F>(mut transcriber: X, capacity: usize, mut done: F) -> Self
    where
        X: Transcriber + 'static,
        F: FnMut(Done<T>) + Send + 'static,
    {
        let (tx, rx): (SyncSender<Job<T>>, Receiver<Job<T>>) = sync_channel(capacity.max(1));
        let thread = std::thread::Builder::new()
            .name("whisper".into())
            .spawn(move || {
                for job in rx {
                    let t0 = Instant::now();
                    let result = transcriber.transcribe(&job.pcm);
                    done(Done { tag: job.tag, result, audio_secs: super::secs(job.pcm.len() as u64), took: t0.elapsed() });
                }
            })
            .expect("spawn the whisper thread");
        Self { tx: Some(tx), dropped: Arc::new(AtomicU64::new(0)), thread: Some(thread) }
    }

    /// Queue a job, or drop it when the queue is full.
    pub fn submit(&self, job: Job<T>) -> Result<(), Refused> {
        let Some(tx) = &self.tx else { return Err(Refused::Stopped) };
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Refused::Full { dropped: self.dropped.fetch_add(1, Ordering::Relaxed) + 1 }),
            Err(TrySendError::Disconnected(_)) => Err(Refused::Stopped),
        }
    }

    /// Queue a job, waiting for room.
    pub fn submit_wait(&self, job: Job<T>) -> Result<(), Refused> {
        let Some(tx) = &self.tx else { return Err(Refused::Stopped) };
        tx.send(job).map_err(|_| Refused::Stopped)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Finish the queued jobs and stop the thread.
    pub fn stop(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A transcriber that takes its time and says how many samples it got.
    struct Slow(Duration);
    impl Transcriber for Slow {
        fn transcribe(&mut self, pcm: &[f32]) -> Result<String, SttError> {
            std::thread::sleep(self.0);
            Ok(format!("{} samples", pcm.len()))
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_results_come_in_order() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let w = Worker::start(Slow(Duration::from_millis(200)), 2, move |d: Done<u32>| g.lock().unwrap().push((d.tag, d.result.unwrap())));
        let mut refused = Vec::new();
        for i in 0..6u32 {
            if let Err(r) = w.submit(Job { pcm: vec![0.0; 10 + i as usize], tag: i }) {
                refused.push(r);
            }
        }
        // One job runs, two wait: the other three are dropped, each counted.
        assert_eq!(refused, vec![Refused::Full { dropped: 1 }, Refused::Full { dropped: 2 }, Refused::Full { dropped: 3 }]);
        assert_eq!(w.dropped(), 3);
        w.stop();
        let got = got.lock().unwrap();
        assert_eq!(*got, vec![(0, "10 samples".to_string()), (1, "11 samples".into()), (2, "12 samples".into())]);
    }

    #[test]
    fn waiting_submission_never_drops() {
        let n = Arc::new(AtomicU64::new(0));
        let c = n.clone();
        let w = Worker::start(Slow(Duration::from_millis(5)), 1, move |_: Done<()>| {
            c.fetch_add(1, Ordering::Relaxed);
        });
        for _ in 0..10 {
            w.submit_wait(Job { pcm: vec![0.0; 4], tag: () }).unwrap();
        }
        w.stop();
        assert_eq!(n.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn non_speech_annotations_are_removed() {
        assert_eq!(clean_text(" [BLANK_AUDIO]"), "");
        assert_eq!(clean_text("(wind blowing) Turn left. [MUSIC]"), "Turn left.");
        assert_eq!(clean_text("*music* ♪ la la ♪ nod"), "nod");
        assert_eq!(clean_text("  Look   up. "), "Look up.");
    }

    #[test]
    fn the_encoder_context_fits_the_utterance() {
        assert_eq!(fitted_audio_ctx(16_000), 150);
        assert_eq!(fitted_audio_ctx(16_000 * 4), 264);
        assert_eq!(fitted_audio_ctx(16_000 * 40), 1500);
    }

    #[test]
    fn loading_a_broken_model_fails_clearly() {
        let d = std::env::temp_dir().join(format!("rosa-whisper-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("junk.bin");
        std::fs::write(&p, vec![7u8; 4096]).unwrap();
        let e = Whisper::load(&p, WhisperConfig::default()).err().unwrap().to_string();
        assert!(e.contains("not a usable ggml whisper model"), "{e}");
        // Structurally whole but numerically meaningless: whisper.cpp itself refuses the shapes.
        let p = d.join("fake.bin");
        super::super::model::tests::tiny_fake_model(&p, None);
        let e = Whisper::load(&p, WhisperConfig::default()).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("whisper could not load")), "{e:?}");
    }
}
