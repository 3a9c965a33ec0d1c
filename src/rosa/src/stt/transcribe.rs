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
    /// Encoder context in frames of 20 ms: 0 = whisper's 30 s (what the models were trained on);
    /// -1 = fit each utterance (several times faster, but tiny.en then often loops or drops words).
    pub audio_ctx: i32,
    /// Beam search with this many beams; 0 or 1 = greedy decoding. With tiny.en, 5 beams cost
    /// no more time than greedy decoding with its temperature fallbacks and make fewer errors.
    pub beam_size: i32,
    pub initial_prompt: String,
    /// Segments whisper itself thinks are not speech above this probability are dropped.
    pub no_speech_threshold: f32,
}

impl Default for WhisperConfig {
    fn default() -> Self {
        Self { language: "en".into(), threads: 0, audio_ctx: 0, beam_size: 5, initial_prompt: String::new(), no_speech_threshold: 0.6 }
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

/// Tokens whisper may write for `n` samples: a command of D seconds has ~3 words per second;
/// the cap stops the repetition loops whisper sometimes falls into on short contexts.
pub fn max_tokens(n: usize) -> i32 {
    (12.0 + 8.0 * super::secs(n as u64)).ceil().min(220.0) as i32
}

/// Drop consecutive repeats of a sentence or of a clause of two or more words: whisper's
/// repetition loops ("Go to sleep now! Go to sleep now!", "shake your head, shake your head").
pub fn collapse_repeats(text: &str) -> String {
    fn key(s: &str) -> String {
        s.split(|c: char| !c.is_alphanumeric() && c != '\'').filter(|w| !w.is_empty()).map(|w| w.to_lowercase()).collect::<Vec<_>>().join(" ")
    }
    // Pieces end after . ! ? , ; … (the delimiter stays with its piece).
    let mut pieces: Vec<&str> = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if matches!(c, '.' | '!' | '?' | ',' | ';' | '…') {
            let end = i + c.len_utf8();
            pieces.push(&text[start..end]);
            start = end;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    let mut out = String::new();
    let mut last = String::new();
    for p in pieces {
        let k = key(p);
        if k.is_empty() {
            if !out.is_empty() || !p.trim().is_empty() {
                out.push_str(p);
            }
            continue;
        }
        if k == last && k.contains(' ') {
            continue;
        }
        last = k;
        out.push_str(p);
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ").trim_end_matches([',', ';']).to_string()
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
        let mut p = if self.cfg.beam_size > 1 {
            FullParams::new(SamplingStrategy::BeamSearch { beam_size: self.cfg.beam_size.min(16), patience: -1.0 })
        } else {
            FullParams::new(SamplingStrategy::Greedy { best_of: 1 })
        };
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
        // A short encoder context makes the encoder's cost follow the utterance's length.
        let ctx = match self.cfg.audio_ctx {
            c if c < 0 => fitted_audio_ctx(pcm.len()),
            c => c.min(1500),
        };
        if ctx > 0 {
            p.set_audio_ctx(ctx);
        }
        p.set_max_tokens(max_tokens(pcm.len()));
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
        Ok(collapse_repeats(&clean_text(&text)))
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
    /// Jobs queued or being transcribed.
    in_flight: Arc<AtomicU64>,
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
        let in_flight = Arc::new(AtomicU64::new(0));
        let busy = in_flight.clone();
        let thread = std::thread::Builder::new()
            .name("whisper".into())
            .spawn(move || {
                for job in rx {
                    let t0 = Instant::now();
                    let result = transcriber.transcribe(&job.pcm);
                    done(Done { tag: job.tag, result, audio_secs: super::secs(job.pcm.len() as u64), took: t0.elapsed() });
                    busy.fetch_sub(1, Ordering::Relaxed);
                }
            })
            .expect("spawn the whisper thread");
        Self { tx: Some(tx), dropped: Arc::new(AtomicU64::new(0)), in_flight, thread: Some(thread) }
    }

    /// Queue a job, or drop it when the queue is full.
    pub fn submit(&self, job: Job<T>) -> Result<(), Refused> {
        let Some(tx) = &self.tx else { return Err(Refused::Stopped) };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let r = tx.try_send(job);
        if r.is_err() {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        match r {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Refused::Full { dropped: self.dropped.fetch_add(1, Ordering::Relaxed) + 1 }),
            Err(TrySendError::Disconnected(_)) => Err(Refused::Stopped),
        }
    }

    /// Queue a job, waiting for room.
    pub fn submit_wait(&self, job: Job<T>) -> Result<(), Refused> {
        let Some(tx) = &self.tx else { return Err(Refused::Stopped) };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        tx.send(job).map_err(|_| {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            Refused::Stopped
        })
    }

    /// Nothing queued, nothing being transcribed.
    pub fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
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

    /// A transcriber that says when it starts a job and finishes it only when told to.
    struct Gated {
        started: std::sync::mpsc::Sender<()>,
        go: std::sync::mpsc::Receiver<()>,
    }
    impl Transcriber for Gated {
        fn transcribe(&mut self, pcm: &[f32]) -> Result<String, SttError> {
            let _ = self.started.send(());
            let _ = self.go.recv();
            Ok(format!("{} samples", pcm.len()))
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_results_come_in_order() {
        let (started_tx, started) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let w = Worker::start(Gated { started: started_tx, go: go_rx }, 2, move |d: Done<u32>| g.lock().unwrap().push((d.tag, d.result.unwrap())));
        assert!(w.idle());
        w.submit(Job { pcm: vec![0.0; 10], tag: 0 }).unwrap();
        assert!(!w.idle());
        started.recv_timeout(Duration::from_secs(5)).unwrap(); // job 0 is being transcribed
        let mut refused = Vec::new();
        for i in 1..6u32 {
            if let Err(r) = w.submit(Job { pcm: vec![0.0; 10 + i as usize], tag: i }) {
                refused.push((i, r));
            }
        }
        // Two wait in the queue: the other three are dropped, each counted.
        assert_eq!(refused, vec![(3, Refused::Full { dropped: 1 }), (4, Refused::Full { dropped: 2 }), (5, Refused::Full { dropped: 3 })]);
        assert_eq!(w.dropped(), 3);
        for _ in 0..3 {
            go.send(()).unwrap();
        }
        let t0 = Instant::now();
        while !w.idle() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(w.idle());
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
    fn repetition_loops_are_collapsed() {
        assert_eq!(collapse_repeats("Go to sleep now! Go to sleep now! Go to sleep now!"), "Go to sleep now!");
        assert_eq!(collapse_repeats("Turn your head to the left. Turn your head to the left."), "Turn your head to the left.");
        assert_eq!(collapse_repeats("Shake your head, shake your head, shake your head"), "Shake your head");
        assert_eq!(collapse_repeats("Left, left, left."), "Left, left, left.", "single words may repeat");
        assert_eq!(collapse_repeats("Turn left. Then turn right."), "Turn left. Then turn right.");
        assert_eq!(collapse_repeats("What do you see?"), "What do you see?");
        assert_eq!(collapse_repeats(""), "");
        assert!(max_tokens(16_000 * 2) >= 20 && max_tokens(16_000 * 100) == 220);
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
