//! Speech out: text → audio ([`Tts`]: espeak-ng, or an OpenAI-compatible `/audio/speech`) →
//! an [`AudioSink`] (the robot's speaker through the daemon, the local output device through cpal,
//! or WAV files), behind one queue ([`SpeechQueue`]) that can be interrupted (barge-in).
//! No r2r here: the node maps `/rosa/stop_speaking` to [`SpeechQueue::stop`] and publishes
//! [`SpeechQueue::speaking`] on `/rosa/speaking`.

use crate::data_dir::DataDir;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpeechError {
    #[error("text to speech failed: {0}")]
    Tts(String),
    #[error("audio output failed: {0}")]
    Output(String),
    #[error("the speech queue is full ({0} utterances waiting)")]
    Full(usize),
    #[error("nothing to say: the text is empty")]
    Empty,
    #[error("the text is {chars} characters, more than the {max} one utterance may have (speech.max_chars): say it in shorter parts")]
    TooLong { chars: usize, max: usize },
}

/// Characters one `say` may have by default (about five minutes of speech).
pub const DEFAULT_MAX_CHARS: usize = 5000;

/// Bytes of text handed to the engine at once. espeak-ng takes its text as one argument, which
/// Linux caps at 128 KiB (MAX_ARG_STRLEN: "Argument list too long"), and speech endpoints cap their
/// input (OpenAI's at 4096 characters); short pieces also start speaking sooner and stop sooner.
pub const PIECE_BYTES: usize = 1000;

/// `text` in pieces of at most `max_bytes` bytes, cut after a sentence end (. ! ? ; : or a line
/// break) when there is one, else at a space, else at a character boundary. Pieces are trimmed
/// and never empty.
pub fn pieces(text: &str, max_bytes: usize) -> Vec<&str> {
    let max_bytes = max_bytes.max(4);
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        if rest.len() <= max_bytes {
            out.push(rest);
            break;
        }
        let mut limit = max_bytes;
        while !rest.is_char_boundary(limit) {
            limit -= 1;
        }
        let head = &rest[..limit];
        let cut = head
            .rfind(|c: char| matches!(c, '.' | '!' | '?' | ';' | ':' | '\n'))
            .map(|i| i + 1)
            .filter(|&i| i > limit / 4)
            .or_else(|| head.rfind(char::is_whitespace).filter(|&i| i > 0))
            .unwrap_or(limit);
        let piece = rest[..cut].trim();
        if !piece.is_empty() {
            out.push(piece);
        }
        rest = rest[cut..].trim_start();
    }
    out
}

/// Mono 16-bit audio.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub samples: Vec<i16>,
    pub sample_rate: u32,
}

impl Audio {
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.samples.len() as f64 / self.sample_rate.max(1) as f64)
    }

    /// Decode a WAV file (any channel count: the first channel is kept; 16-bit or float).
    pub fn from_wav(bytes: &[u8]) -> Result<Self, SpeechError> {
        // espeak-ng --stdout streams, so its header claims a huge data size (0x7ffff000): when the
        // declared size is more than there is, fix it to what there is.
        let owned;
        let mut data = bytes;
        let declared = bytes.get(40..44).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        if bytes.len() >= 44 && &bytes[0..4] == b"RIFF" && &bytes[36..40] == b"data" && declared > Some(bytes.len() - 44) {
            let mut fixed = bytes.to_vec();
            let n = ((bytes.len() - 44) & !1) as u32;
            fixed[40..44].copy_from_slice(&n.to_le_bytes());
            fixed[4..8].copy_from_slice(&(n + 36).to_le_bytes());
            fixed.truncate(44 + n as usize);
            owned = fixed;
            data = &owned;
        }
        let reader = hound::WavReader::new(std::io::Cursor::new(data)).map_err(|e| SpeechError::Tts(format!("not a WAV: {e}")))?;
        let spec = reader.spec();
        let ch = spec.channels.max(1) as usize;
        let samples: Vec<i16> = match spec.sample_format {
            hound::SampleFormat::Int if spec.bits_per_sample == 16 => {
                reader.into_samples::<i16>().step_by(ch).collect::<Result<_, _>>()
            }
            hound::SampleFormat::Int => {
                let shift = spec.bits_per_sample.saturating_sub(16);
                reader.into_samples::<i32>().step_by(ch).map(|s| s.map(|v| (v >> shift) as i16)).collect::<Result<_, _>>()
            }
            hound::SampleFormat::Float => reader
                .into_samples::<f32>()
                .step_by(ch)
                .map(|s| s.map(|v| (v.clamp(-1.0, 1.0) * i16::MAX as f32) as i16))
                .collect::<Result<_, _>>(),
        }
        .map_err(|e| SpeechError::Tts(format!("bad WAV data: {e}")))?;
        Ok(Self { samples, sample_rate: spec.sample_rate })
    }

    pub fn to_wav(&self) -> Vec<u8> {
        let spec = hound::WavSpec { channels: 1, sample_rate: self.sample_rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
        let mut cur = std::io::Cursor::new(Vec::with_capacity(44 + self.samples.len() * 2));
        if let Ok(mut w) = hound::WavWriter::new(&mut cur, spec) {
            for s in &self.samples {
                let _ = w.write_sample(*s);
            }
            let _ = w.finalize();
        }
        cur.into_inner()
    }
}

/// Text to speech.
#[async_trait::async_trait]
pub trait Tts: Send + Sync {
    async fn synthesize(&self, text: &str) -> Result<Audio, SpeechError>;
}

/// Local espeak-ng (`espeak-ng --stdout`).
pub struct Espeak {
    pub voice: String,
    /// Words per minute.
    pub rate: u32,
}

#[async_trait::async_trait]
impl Tts for Espeak {
    async fn synthesize(&self, text: &str) -> Result<Audio, SpeechError> {
        let out = tokio::process::Command::new("espeak-ng")
            .arg("--stdout")
            .args(["-v", &self.voice, "-s", &self.rate.to_string()])
            .arg("--")
            .arg(text)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| SpeechError::Tts(format!("cannot run espeak-ng ({e}); install it with ./rosa setup")))?;
        if !out.status.success() {
            return Err(SpeechError::Tts(format!("espeak-ng: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        Audio::from_wav(&out.stdout)
    }
}

/// An OpenAI-compatible `POST <url>/audio/speech` (e.g. Groq's), asking for WAV.
pub struct OpenAiTts {
    pub url: String,
    pub model: String,
    pub voice: String,
    pub key_env: String,
    pub http: reqwest::Client,
}

#[async_trait::async_trait]
impl Tts for OpenAiTts {
    async fn synthesize(&self, text: &str) -> Result<Audio, SpeechError> {
        let mut req = self.http.post(format!("{}/audio/speech", self.url.trim_end_matches('/'))).json(&serde_json::json!({
            "model": self.model, "input": text, "voice": self.voice, "response_format": "wav",
        }));
        if !self.key_env.is_empty() {
            if let Ok(k) = std::env::var(&self.key_env) {
                req = req.bearer_auth(k);
            }
        }
        let resp = req.send().await.map_err(|e| SpeechError::Tts(format!("{}: {e}", self.url)))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| SpeechError::Tts(e.to_string()))?;
        if !status.is_success() {
            return Err(SpeechError::Tts(format!("{} answered {status}: {}", self.url, String::from_utf8_lossy(&body[..body.len().min(300)]))));
        }
        Audio::from_wav(&body)
    }
}

/// Where audio is played. `play` returns when the audio has been played or `stop` fired.
#[async_trait::async_trait]
pub trait AudioSink: Send + Sync {
    fn name(&self) -> String;
    async fn play(&self, audio: &Audio, stop: &mut watch::Receiver<u64>) -> Result<(), SpeechError>;
}

/// Resolve when the stop generation changes (never, if the sender is gone).
async fn stopped(stop: &mut watch::Receiver<u64>) {
    if stop.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Wait for `d` unless stopped; true when stopped.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<u64>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stopped(stop) => true,
    }
}

/// Writes each utterance as a WAV file (`speech-<n>.wav`) in `dir` (a [`DataDir`]: never through a
/// planted symlink or FIFO, off the async threads), and takes the audio's duration as if it were
/// played (so `/rosa/speaking` is true as long as a speaker would speak). For machines without
/// audio (headless tests, CI) and for recording.
pub struct WavFiles {
    pub dir: DataDir,
    pub count: AtomicU64,
}

/// The largest WAV written (an hour of 22 kHz speech is 160 MB; a piece is far shorter).
pub const MAX_WAV_BYTES: u64 = 256 << 20;

#[async_trait::async_trait]
impl AudioSink for WavFiles {
    fn name(&self) -> String {
        format!("WAV files in {}", self.dir.root().display())
    }
    async fn play(&self, audio: &Audio, stop: &mut watch::Receiver<u64>) -> Result<(), SpeechError> {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let path = self
            .dir
            .write("", &format!("speech-{n:04}.wav"), audio.to_wav(), MAX_WAV_BYTES)
            .await
            .map_err(|e| SpeechError::Output(e.to_string()))?;
        tracing::info!(path = %path.display(), seconds = audio.duration().as_secs_f64(), "speech written");
        sleep_or_stop(audio.duration(), stop).await;
        Ok(())
    }
}

/// The robot's speaker, through the daemon (upload, then play).
pub struct DaemonSpeaker {
    pub daemon: super::daemon::Daemon,
    pub count: AtomicU64,
}

#[async_trait::async_trait]
impl AudioSink for DaemonSpeaker {
    fn name(&self) -> String {
        format!("the robot's speaker ({})", self.daemon.base_url())
    }
    async fn play(&self, audio: &Audio, stop: &mut watch::Receiver<u64>) -> Result<(), SpeechError> {
        let n = self.count.fetch_add(1, Ordering::Relaxed) % 8;
        self.daemon
            .play_wav(&format!("rosa-speech-{n}.wav"), audio.to_wav())
            .await
            .map_err(|e| SpeechError::Output(e.to_string()))?;
        if sleep_or_stop(audio.duration(), stop).await {
            let _ = self.daemon.stop_sound().await;
        }
        Ok(())
    }
}

/// The local default output device (cpal), played from a thread of its own.
pub struct LocalSpeaker;

impl LocalSpeaker {
    /// Whether there is a default output device that can be opened (ALSA names a `default`
    /// device even on a machine without a sound card; opening it then fails).
    pub fn available() -> bool {
        use cpal::traits::{DeviceTrait, HostTrait};
        cpal::default_host().default_output_device().is_some_and(|d| d.default_output_config().is_ok())
    }
}

#[async_trait::async_trait]
impl AudioSink for LocalSpeaker {
    fn name(&self) -> String {
        "the local output device".into()
    }
    async fn play(&self, audio: &Audio, stop: &mut watch::Receiver<u64>) -> Result<(), SpeechError> {
        let halt = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let audio = audio.clone();
        let flag = halt.clone();
        std::thread::Builder::new()
            .name("speech-out".into())
            .spawn(move || {
                let _ = done_tx.send(play_local(&audio, &flag));
            })
            .map_err(|e| SpeechError::Output(e.to_string()))?;
        tokio::select! {
            r = done_rx => r.unwrap_or_else(|_| Err(SpeechError::Output("the audio thread died".into()))),
            _ = stopped(stop) => {
                halt.store(true, Ordering::Relaxed);
                Ok(())
            }
        }
    }
}

fn play_local(audio: &Audio, halt: &AtomicBool) -> Result<(), SpeechError> {
    use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
    let device = cpal::default_host()
        .default_output_device()
        .ok_or_else(|| SpeechError::Output("no local audio output device".into()))?;
    let config: cpal::StreamConfig = device.default_output_config().map_err(|e| SpeechError::Output(e.to_string()))?.into();
    let out_rate = config.sample_rate as f64;
    let channels = config.channels as usize;
    let step = audio.sample_rate as f64 / out_rate;
    let samples = Arc::new(audio.samples.clone());
    let pos = Arc::new(AtomicUsize::new(0));
    let (s, p) = (samples.clone(), pos.clone());
    let mut t = 0f64;
    let stream = device
        .build_output_stream(
            config,
            move |data: &mut [f32], _: &cpal::OutputCallbackInfo| {
                for frame in data.chunks_mut(channels) {
                    let i = t as usize;
                    let v = s.get(i).map(|v| *v as f32 / i16::MAX as f32).unwrap_or(0.0);
                    frame.iter_mut().for_each(|x| *x = v);
                    t += step;
                }
                p.store(t as usize, Ordering::Relaxed);
            },
            |e| tracing::warn!("audio output: {e}"),
            None,
        )
        .map_err(|e| SpeechError::Output(e.to_string()))?;
    stream.play().map_err(|e| SpeechError::Output(e.to_string()))?;
    while pos.load(Ordering::Relaxed) < samples.len() && !halt.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

struct Utterance {
    text: String,
    generation: u64,
}

/// The speech queue: utterances are spoken in order by one task; [`SpeechQueue::stop`] (barge-in)
/// stops the current one and drops the waiting ones.
#[derive(Clone)]
pub struct SpeechQueue {
    tx: mpsc::Sender<Utterance>,
    generation: Arc<AtomicU64>,
    stop_tx: Arc<watch::Sender<u64>>,
    speaking: watch::Receiver<bool>,
    waiting: Arc<AtomicUsize>,
    capacity: usize,
    max_chars: usize,
    sink_name: String,
}

impl SpeechQueue {
    /// Start the speaking task. `capacity` bounds the utterances waiting.
    pub fn start(tts: Arc<dyn Tts>, sink: Arc<dyn AudioSink>, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (tx, mut rx) = mpsc::channel::<Utterance>(capacity);
        let generation = Arc::new(AtomicU64::new(0));
        let (stop_tx, stop_rx) = watch::channel(0u64);
        let (speaking_tx, speaking) = watch::channel(false);
        let waiting = Arc::new(AtomicUsize::new(0));
        let sink_name = sink.name();
        {
            let generation = generation.clone();
            let waiting = waiting.clone();
            tokio::spawn(async move {
                while let Some(u) = rx.recv().await {
                    waiting.fetch_sub(1, Ordering::Relaxed);
                    if u.generation != generation.load(Ordering::Relaxed) {
                        continue; // drained by a stop
                    }
                    let mut stop = stop_rx.clone();
                    stop.mark_unchanged();
                    // Piece by piece: the engine never gets more than it takes.
                    for piece in pieces(&u.text, PIECE_BYTES) {
                        let audio = tokio::select! {
                            a = tts.synthesize(piece) => a,
                            _ = stopped(&mut stop) => break,
                        };
                        match audio {
                            Ok(audio) => {
                                speaking_tx.send_replace(true);
                                if let Err(e) = sink.play(&audio, &mut stop).await {
                                    tracing::error!("speech: {e}");
                                }
                            }
                            Err(e) => tracing::error!("speech: {e}"),
                        }
                        if u.generation != generation.load(Ordering::Relaxed) {
                            break; // stopped while playing
                        }
                    }
                    if waiting.load(Ordering::Relaxed) == 0 || u.generation != generation.load(Ordering::Relaxed) {
                        speaking_tx.send_replace(false);
                    }
                }
            });
        }
        Self { tx, generation, stop_tx: Arc::new(stop_tx), speaking, waiting, capacity, max_chars: DEFAULT_MAX_CHARS, sink_name }
    }

    /// Refuse texts longer than `max_chars` characters (speech.max_chars).
    pub fn with_max_chars(mut self, max_chars: usize) -> Self {
        self.max_chars = max_chars.max(1);
        self
    }

    /// Queue `text`; with `interrupt`, stop what is being said and drop what waits first.
    /// Returns how many utterances are ahead of this one.
    pub fn say(&self, text: &str, interrupt: bool) -> Result<usize, SpeechError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SpeechError::Empty);
        }
        // Counted without walking more than max_chars + 1 characters of a huge text.
        let chars = text.chars().take(self.max_chars.saturating_add(1)).count();
        if chars > self.max_chars {
            return Err(SpeechError::TooLong { chars: text.chars().count(), max: self.max_chars });
        }
        if interrupt {
            self.stop();
        }
        let ahead = self.waiting.load(Ordering::Relaxed) + usize::from(*self.speaking.borrow());
        let u = Utterance { text: text.to_string(), generation: self.generation.load(Ordering::Relaxed) };
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.tx.try_send(u).map_err(|_| {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            SpeechError::Full(self.capacity)
        })?;
        Ok(ahead)
    }

    /// Barge-in: stop the current utterance and drain the queue.
    pub fn stop(&self) {
        let g = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.stop_tx.send_replace(g);
    }

    pub fn speaking(&self) -> watch::Receiver<bool> {
        self.speaking.clone()
    }

    pub fn sink_name(&self) -> &str {
        &self.sink_name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A TTS making `n` × 100 ms of silence for a text of `n` words.
    struct Silence;
    #[async_trait::async_trait]
    impl Tts for Silence {
        async fn synthesize(&self, text: &str) -> Result<Audio, SpeechError> {
            let n = text.split_whitespace().count();
            Ok(Audio { samples: vec![0; 1600 * n], sample_rate: 16_000 })
        }
    }

    /// A sink recording what it played and whether it was cut.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(usize, bool)>>);
    #[async_trait::async_trait]
    impl AudioSink for Recorder {
        fn name(&self) -> String {
            "recorder".into()
        }
        async fn play(&self, audio: &Audio, stop: &mut watch::Receiver<u64>) -> Result<(), SpeechError> {
            let cut = sleep_or_stop(audio.duration(), stop).await;
            self.0.lock().unwrap().push((audio.samples.len() / 1600, cut));
            Ok(())
        }
    }

    async fn wait_for(rx: &mut watch::Receiver<bool>, v: bool) {
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|x| *x == v)).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn utterances_play_in_order_and_speaking_follows() {
        let rec = Arc::new(Recorder::default());
        let q = SpeechQueue::start(Arc::new(Silence), rec.clone(), 8);
        let mut speaking = q.speaking();
        assert_eq!(q.say("one", false).unwrap(), 0);
        q.say("two words", false).unwrap();
        wait_for(&mut speaking, true).await;
        wait_for(&mut speaking, false).await;
        assert_eq!(*rec.0.lock().unwrap(), vec![(1, false), (2, false)]);
    }

    #[tokio::test]
    async fn stop_cuts_the_current_utterance_and_drains_the_queue() {
        let rec = Arc::new(Recorder::default());
        let q = SpeechQueue::start(Arc::new(Silence), rec.clone(), 8);
        let mut speaking = q.speaking();
        q.say("a b c d e f g h i j k l m n o p q r s t", false).unwrap(); // 2 s
        q.say("never said", false).unwrap();
        wait_for(&mut speaking, true).await;
        q.stop();
        wait_for(&mut speaking, false).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(*rec.0.lock().unwrap(), vec![(20, true)]);
        // A forceful utterance replaces what is being said.
        q.say("a b c d e f g h i j", false).unwrap();
        wait_for(&mut speaking, true).await;
        q.say("now", true).unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        wait_for(&mut speaking, false).await;
        assert_eq!(rec.0.lock().unwrap()[1..], [(10, true), (1, false)]);
    }

    #[tokio::test]
    async fn empty_text_and_a_full_queue_are_errors() {
        let q = SpeechQueue::start(Arc::new(Silence), Arc::new(Recorder::default()), 1);
        assert!(matches!(q.say("  ", false), Err(SpeechError::Empty)));
        let mut full = false;
        for _ in 0..5 {
            full |= matches!(q.say("a b c d e f g h i j", false), Err(SpeechError::Full(1)));
        }
        assert!(full);
    }

    /// A TTS that records the pieces it was given and refuses more than espeak takes.
    #[derive(Default)]
    struct Pieces(Mutex<Vec<String>>);
    #[async_trait::async_trait]
    impl Tts for Pieces {
        async fn synthesize(&self, text: &str) -> Result<Audio, SpeechError> {
            if text.len() > PIECE_BYTES {
                return Err(SpeechError::Tts("Argument list too long".into()));
            }
            self.0.lock().unwrap().push(text.to_string());
            Ok(Audio { samples: vec![0; 16], sample_rate: 16_000 })
        }
    }

    #[tokio::test]
    async fn long_texts_are_refused_and_the_engine_gets_pieces_it_takes() {
        let tts = Arc::new(Pieces::default());
        let q = SpeechQueue::start(tts.clone(), Arc::new(Recorder::default()), 4);
        let huge = "word ".repeat(80_000); // 400 kB
        match q.say(&huge, false) {
            Err(SpeechError::TooLong { chars, max }) => assert_eq!((chars, max), (399_999, DEFAULT_MAX_CHARS)),
            other => panic!("{other:?}"),
        }
        let q = q.with_max_chars(usize::MAX);
        let text = "This is a sentence. ".repeat(500) + &"x".repeat(3000); // 13 kB, and a 3 kB "word"
        q.say(&text, false).unwrap();
        let mut speaking = q.speaking();
        wait_for(&mut speaking, true).await;
        wait_for(&mut speaking, false).await;
        let got = tts.0.lock().unwrap().clone();
        assert!(got.len() >= 13, "{}", got.len());
        assert!(got.iter().all(|p| !p.is_empty() && p.len() <= PIECE_BYTES));
        assert_eq!(got.concat().replace(' ', ""), text.replace(' ', ""), "nothing lost");
        assert!(got[0].ends_with('.'), "cut after a sentence: {:?}", &got[0][got[0].len() - 20..]);
    }

    #[test]
    fn pieces_cover_the_text() {
        assert_eq!(pieces("  ", 10), Vec::<&str>::new());
        assert_eq!(pieces("Hi there. How are you?", 12), vec!["Hi there.", "How are you?"]);
        assert_eq!(pieces("ééééé", 4), vec!["éé", "éé", "é"]);
        for (t, n) in [("a b c d e f g", 3), ("abcdefghij", 4), ("one. two! three? four", 9)] {
            let p = pieces(t, n);
            assert!(p.iter().all(|x| x.len() <= n.max(4)), "{p:?}");
            assert_eq!(p.concat().replace(' ', ""), t.replace(' ', ""));
        }
    }

    #[test]
    fn streamed_wav_headers_are_accepted() {
        let a = Audio { samples: (0..1000).map(|i| (i * 10) as i16).collect(), sample_rate: 22_050 };
        let mut wav = a.to_wav();
        assert_eq!(Audio::from_wav(&wav).unwrap(), a);
        wav[40..44].copy_from_slice(&[0x00, 0xf0, 0xff, 0x7f]); // as espeak-ng --stdout writes it
        assert_eq!(Audio::from_wav(&wav).unwrap(), a);
        wav[40..44].copy_from_slice(&[0xff; 4]);
        assert_eq!(Audio::from_wav(&wav).unwrap(), a);
        assert!(Audio::from_wav(b"not a wav").is_err());
    }
}
