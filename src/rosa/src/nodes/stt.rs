//! The `stt` node: ROS endpoints around [`crate::stt`].
//!
//! Threads: the audio source (a file, an input device, or the topic's stream in a tokio task)
//! feeds the listening thread (resampling, VAD, endpointing, muting), which queues utterances for
//! the whisper thread; results come back to the tokio side, which applies the wake word and
//! publishes. Capture never waits for whisper.
//!
//! Publishes `/rosa/stt/transcript` (Transcript), `/rosa/stt/listening` (std_msgs/Bool,
//! transient-local: whether what the user says now is forwarded), `/rosa/stop_speaking`
//! (std_msgs/Empty, barge-in). Subscribes `/rosa/speaking` (std_msgs/Bool) and, for
//! `audio_source: topic:<name>`, `<name>` (AudioData, best-effort).

use crate::ros::{self, Spinner};
use crate::stt::audio::{chunk_from_pcm, read_wav, SourceSpec};
use crate::stt::capture::{self, Input};
use crate::stt::endpoint::WebRtcVad;
use crate::stt::listener::{Heard, Listener, ListenerConfig};
use crate::stt::params::SttParams;
use crate::stt::transcribe::{Done, Job, Refused, Whisper, Worker};
use crate::stt::wake::{Decision, WakeGate};
use crate::stt::{model, secs};
use anyhow::Context as _;
use futures::StreamExt;
use r2r::rosa_interfaces::msg::{AudioData, Transcript};
use r2r::std_msgs::msg::{Bool, Empty, Header};
use r2r::{Node, Publisher, QosProfile};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What an utterance carries through the whisper thread.
struct Meta {
    start: SystemTime,
    end: SystemTime,
    /// When the speaker stopped (end of the last voiced frame).
    speech_end: SystemTime,
    /// Stream seconds (the wake-word window's clock).
    start_sec: f64,
    end_sec: f64,
    /// When the endpointer decided the utterance was over (or paused, for an early one).
    endpointed: Instant,
    /// An early transcription, on a pause (see `crate::stt::endpoint`).
    early: bool,
    /// The utterance's identity: its first sample and the end of its speech.
    key: (u64, u64),
}

impl Meta {
    fn new(l: &Listener<WebRtcVad>, u: &crate::stt::endpoint::Utterance, start: SystemTime, end: SystemTime, early: bool) -> Self {
        Meta {
            start,
            end,
            speech_end: l.wall_time(u.speech_end),
            start_sec: secs(u.start),
            end_sec: secs(u.end),
            endpointed: Instant::now(),
            early,
            key: (u.start, u.speech_end),
        }
    }
}

enum Out {
    Done(Done<Meta>),
    /// The utterance has ended and is the audio of the early transcription `key`: publish that.
    Confirm(Meta),
    BargeIn,
}

/// State shared between the listening thread, the subscriptions and the publisher.
#[derive(Default)]
struct Shared {
    /// Stream position, 16 kHz samples, and when it was last updated.
    position: AtomicU64,
    updated: std::sync::Mutex<Option<Instant>>,
    /// Not muted by the robot's speech.
    hearing: AtomicBool,
    /// `/rosa/speaking`.
    speaking: AtomicBool,
    /// Audio is flowing (or may: a topic, a file being played).
    source_up: AtomicBool,
    /// New listening settings (parameters set at run time) for the listening thread.
    reconfigure: std::sync::Mutex<Option<(ListenerConfig, i64)>>,
}

fn listen(rx: Receiver<Input>, cfg: ListenerConfig, aggressiveness: i64, worker: Worker<Meta>, wait_for_whisper: bool, shared: Arc<Shared>, out: tokio::sync::mpsc::UnboundedSender<Out>) {
    let listener = WebRtcVad::new(aggressiveness).map_err(anyhow::Error::from).and_then(|vad| Ok(Listener::new(cfg, vad)?));
    let mut l = match listener {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot start listening: {e}");
            return;
        }
    };
    shared.hearing.store(true, Ordering::Relaxed);
    // Early transcription is pointless when a file is played as fast as whisper goes.
    let early_transcription = !wait_for_whisper;
    let mut early_key: Option<(u64, u64)> = None;
    for input in rx {
        let next = shared.reconfigure.lock().ok().and_then(|mut r| r.take());
        if let Some((cfg, aggressiveness)) = next {
            match WebRtcVad::new(aggressiveness).and_then(|vad| l.reconfigure(cfg, vad)) {
                Ok(()) => tracing::info!("listening with the new vad.*, muting and barge-in parameters"),
                Err(e) => tracing::error!("cannot apply the new listening parameters: {e}"),
            }
        }
        let speaking = shared.speaking.load(Ordering::Relaxed);
        if speaking != l.speaking() {
            l.set_speaking(speaking);
        }
        let heard = match input {
            Input::Audio(chunk) => l.push_chunk(&chunk),
            Input::End => l.flush(),
        };
        for h in heard {
            match h {
                Heard::SpeechStarted { start } => tracing::debug!(at_sec = format!("{:.2}", secs(start)), "speech started"),
                Heard::Dropped { start, why } => tracing::info!(at_sec = format!("{:.2}", secs(start)), "speech not transcribed: {why}"),
                Heard::BargeIn => {
                    tracing::info!("the user talks over the robot: asking it to stop speaking (barge-in)");
                    let _ = out.send(Out::BargeIn);
                }
                Heard::Pause { utterance, start, end } => {
                    // Start whisper now if it has nothing else to do; the end silence may follow.
                    if early_transcription && worker.idle() {
                        let meta = Meta::new(&l, &utterance, start, end, true);
                        let key = meta.key;
                        if worker.submit(Job { pcm: utterance.samples, tag: meta }).is_ok() {
                            early_key = Some(key);
                        }
                    }
                }
                Heard::Utterance { utterance, start, end } => {
                    let meta = Meta::new(&l, &utterance, start, end, false);
                    if early_key.take() == Some(meta.key) {
                        let _ = out.send(Out::Confirm(meta));
                        continue;
                    }
                    let audio_sec = utterance.duration_secs();
                    let job = Job { pcm: utterance.samples, tag: meta };
                    let queued = if wait_for_whisper { worker.submit_wait(job) } else { worker.submit(job) };
                    match queued {
                        Ok(()) => tracing::debug!(audio_sec = format!("{audio_sec:.2}"), "utterance queued for whisper"),
                        Err(Refused::Full { dropped }) => tracing::warn!(
                            audio_sec = format!("{audio_sec:.2}"),
                            dropped_total = dropped,
                            "whisper is behind and its queue is full: utterance dropped"
                        ),
                        Err(Refused::Stopped) => tracing::error!("the whisper thread has stopped: utterance dropped"),
                    }
                }
            }
        }
        shared.position.store(l.position(), Ordering::Relaxed);
        if let Ok(mut t) = shared.updated.lock() {
            *t = Some(Instant::now());
        }
        shared.hearing.store(l.hearing(), Ordering::Relaxed);
    }
    tracing::debug!("listening thread: the audio source is gone");
}

/// A transcript came back from whisper: the wake word decides, then publish (or not) and log.
fn on_transcribed(gate: &mut WakeGate, transcripts: &Publisher<Transcript>, params: &SttParams, d: Done<Meta>) {
    let Done { tag: m, result, audio_secs, took } = d;
    let text = match result {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(audio_sec = format!("{audio_secs:.2}"), "whisper failed on an utterance: {e}");
            return;
        }
    };
    let whisper_sec = took.as_secs_f64();
    let audio_sec = format!("{audio_secs:.2}");
    match gate.decide(&text, m.start_sec, m.end_sec) {
        Decision::Forward { text: fwd, wake_word } => {
            publish_transcript(transcripts, &params.frame_id, &fwd, wake_word, &m);
            tracing::info!(
                text = %fwd,
                wake_word,
                audio_sec,
                whisper_sec = format!("{whisper_sec:.3}"),
                rtf = format!("{:.3}", whisper_sec / audio_secs.max(1e-3)),
                endpoint_to_publish_sec = format!("{:.3}", m.endpointed.elapsed().as_secs_f64()),
                speech_end_to_publish_sec = format!("{:.3}", SystemTime::now().duration_since(m.speech_end).unwrap_or_default().as_secs_f64()),
                "transcript published"
            );
        }
        Decision::Woken => tracing::info!(heard = %text, window_sec = params.wake_window_sec, "wake word: listening"),
        Decision::Ignore if text.is_empty() => tracing::info!(audio_sec, "nothing recognisable in the utterance"),
        Decision::Ignore => tracing::info!(heard = %text, "not forwarded: no wake word"),
    }
}

fn publish_transcript(p: &Publisher<Transcript>, frame_id: &str, text: &str, wake_word: bool, m: &Meta) {
    let msg = Transcript {
        header: Header { stamp: ros::now(), frame_id: frame_id.to_string() },
        text: text.to_string(),
        start_time: ros::stamp(m.start),
        end_time: ros::stamp(m.end),
        wake_word,
        doa_valid: false,
        doa: 0.0,
    };
    if let Err(e) = p.publish(&msg) {
        tracing::error!(error = %e, "cannot publish /rosa/stt/transcript");
    }
}

fn config_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(crate::ConfigurationError(e.to_string()))
}

pub async fn run() -> anyhow::Result<()> {
    let ctx = r2r::Context::create()?;
    let mut node = Node::create(ctx, "stt", "/rosa")?;
    // Declaring checks every value (SttParams::check): a wrong one is a configuration error.
    let declared = ros::declare_params::<SttParams>(&mut node)?;
    ros::attach_rosout(&mut node);
    let params = declared.current();
    let source = params.source().map_err(config_error)?;
    let wav = match &source {
        SourceSpec::File(path) => Some(read_wav(path).map_err(config_error)?),
        _ => None,
    };

    // The model first: a missing or broken one is an error at start, not at the first utterance.
    let model_path = model::resolve(&params.model).map_err(config_error)?;
    let wcfg = params.whisper();
    let t0 = Instant::now();
    let whisper = tokio::task::spawn_blocking(move || Whisper::load(&model_path, wcfg))
        .await
        .context("loading the whisper model")?
        .map_err(config_error)?;
    tracing::info!(
        model = %whisper.path.display(),
        size = whisper.info.size_name(),
        english_only = whisper.info.english_only(),
        load_sec = format!("{:.2}", t0.elapsed().as_secs_f64()),
        "whisper model loaded"
    );

    let transcripts = node.create_publisher::<Transcript>("/rosa/stt/transcript", ros::reliable(100))?;
    let listening_pub = node.create_publisher::<Bool>("/rosa/stt/listening", ros::latched())?;
    let stop_speaking = node.create_publisher::<Empty>("/rosa/stop_speaking", ros::reliable(10))?;
    let speaking_sub = node.subscribe::<Bool>("/rosa/speaking", ros::reliable(10))?;
    let audio_sub = match &source {
        SourceSpec::Topic(t) => Some(node.subscribe::<AudioData>(t, QosProfile::default().best_effort().keep_last(200))?),
        _ => None,
    };
    let spinner = Spinner::start(node, Duration::from_millis(10));
    let stop = Arc::new(AtomicBool::new(false));
    // From here on the node spins in its own thread: stop it on every way out, errors included
    // (exiting with it running trips Fast DDS's and whisper.cpp's destructors).
    let result: anyhow::Result<()> = async {
        let shared = Arc::new(Shared::default());
        {
            let shared = shared.clone();
            declared.on_change(move |p| {
                if let Ok(mut r) = shared.reconfigure.lock() {
                    *r = Some((p.listener(), p.vad.aggressiveness));
                }
            });
        }
        let mut params_rx = declared.watch();
        let mut params = params.clone();
        let (in_tx, in_rx) = sync_channel::<Input>(256);
        let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Out>();
        let done_tx = out_tx.clone();
        let worker = Worker::start(whisper, params.queue_size as usize, move |d| {
            let _ = done_tx.send(Out::Done(d));
        });
        let wait_for_whisper = matches!(source, SourceSpec::File(_)) && !params.file_realtime;
        {
            let (cfg, aggr, sh) = (params.listener(), params.vad.aggressiveness, shared.clone());
            std::thread::Builder::new().name("listen".into()).spawn(move || listen(in_rx, cfg, aggr, worker, wait_for_whisper, sh, out_tx))?;
        }

        {
            let sh = shared.clone();
            tokio::spawn(speaking_sub.for_each(move |m| {
                if sh.speaking.swap(m.data, Ordering::Relaxed) != m.data {
                    tracing::info!(speaking = m.data, "{}", if m.data { "the robot speaks: not listening" } else { "the robot stopped speaking" });
                }
                futures::future::ready(())
            }));
        }

        // The audio source.
        let mut _device = None;
        match &source {
            SourceSpec::File(path) => {
                // Play once someone listens (the kernel, a test), so that nothing said is lost.
                let deadline = Instant::now() + Duration::from_secs_f64(params.file_wait_sec);
                while transcripts.get_inter_process_subscription_count().unwrap_or(0) == 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if transcripts.get_inter_process_subscription_count().unwrap_or(0) == 0 && params.file_wait_sec > 0.0 {
                    tracing::warn!(wait_sec = params.file_wait_sec, "nobody subscribes to /rosa/stt/transcript: playing the file anyway");
                }
                let wav = wav.expect("read above");
                let secs = wav.duration_secs();
                capture::spawn_file(wav, path.clone(), params.file_realtime, in_tx.clone(), stop.clone())?;
                shared.source_up.store(true, Ordering::Relaxed);
                tracing::info!(path = %path.display(), secs = format!("{secs:.1}"), realtime = params.file_realtime, "listening to a WAV file");
            }
            SourceSpec::Default | SourceSpec::Device(_) => {
                let name = if let SourceSpec::Device(n) = &source { Some(n.clone()) } else { None };
                let tx = in_tx.clone();
                match tokio::task::spawn_blocking(move || capture::open_device(name, tx)).await? {
                    Ok(d) => {
                        tracing::info!(device = %d.name, rate = d.rate, channels = d.channels, "listening to an input device");
                        shared.source_up.store(true, Ordering::Relaxed);
                        _device = Some(d);
                    }
                    Err(e) => tracing::error!(
                        "no audio input ({e}); the stt node stays up without audio and /rosa/stt/listening is false. \
                         Set audio_source to device:<name>, file:<wav>, topic:<name> or none"
                    ),
                }
            }
            SourceSpec::Topic(topic) => {
                let mut sub = audio_sub.expect("subscribed above");
                let tx = in_tx.clone();
                let topic = topic.clone();
                shared.source_up.store(true, Ordering::Relaxed);
                tracing::info!(%topic, "listening to rosa_interfaces/msg/AudioData on a topic");
                tokio::spawn(async move {
                    let (mut bad, mut lost) = (0u64, 0u64);
                    while let Some(m) = sub.next().await {
                        let first = (m.header.stamp.sec != 0 || m.header.stamp.nanosec != 0).then(|| {
                            SystemTime::UNIX_EPOCH + Duration::new(m.header.stamp.sec.max(0) as u64, m.header.stamp.nanosec)
                        });
                        match chunk_from_pcm(&m.samples, m.channels, m.sample_rate, first) {
                            Ok(c) => {
                                if let Err(TrySendError::Full(_)) = tx.try_send(Input::Audio(c)) {
                                    lost += 1;
                                    if lost.is_power_of_two() {
                                        tracing::warn!(%topic, lost, "audio chunks arrive faster than they are processed: dropped");
                                    }
                                }
                            }
                            Err(e) => {
                                bad += 1;
                                if bad.is_power_of_two() {
                                    tracing::warn!(%topic, bad, "ignored an AudioData message: {e}");
                                }
                            }
                        }
                    }
                });
            }
            SourceSpec::None => tracing::info!("audio_source is none: not listening"),
        }
        drop(in_tx);

        let mut gate = WakeGate::new(&params.wake_word, params.wake_window_sec);
        if gate.enabled() {
            tracing::info!(wake_word = %params.wake_word, window_sec = params.wake_window_sec, "stt ready: forwarding what follows the wake word");
        } else {
            tracing::info!("stt ready: forwarding everything (no wake word)");
        }
        let mut listening: Option<bool> = None;
        // The latest early transcript, and an utterance that ended waiting for its early transcript.
        let mut early: Option<Done<Meta>> = None;
        let mut confirmed: Option<Meta> = None;
        let mut source_done = false;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let shutdown = ros::shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                o = out_rx.recv(), if !source_done => match o {
                    Some(Out::BargeIn) => {
                        if let Err(e) = stop_speaking.publish(&Empty {}) {
                            tracing::error!(error = %e, "cannot publish /rosa/stop_speaking");
                        }
                    }
                    Some(Out::Done(d)) if d.tag.early => match confirmed.take() {
                        Some(m) if m.key == d.tag.key => on_transcribed(&mut gate, &transcripts, &params, Done { tag: m, ..d }),
                        other => {
                            confirmed = other;
                            early = Some(d);
                        }
                    },
                    Some(Out::Done(d)) => on_transcribed(&mut gate, &transcripts, &params, d),
                    Some(Out::Confirm(m)) => match early.take() {
                        Some(d) if d.tag.key == m.key => {
                            tracing::debug!("the pause ended the utterance: its early transcript is published");
                            on_transcribed(&mut gate, &transcripts, &params, Done { tag: m, ..d })
                        }
                        _ => confirmed = Some(m),
                    },
                    None => {
                        // The source has ended (a file played, no device) and everything heard is
                        // published: stay up, idle, like a microphone nobody speaks into.
                        source_done = true;
                        tracing::debug!("no more audio");
                    }
                },
                _ = tick.tick() => {
                    // Stream time goes on after the last chunk (a file that ended, a silent topic).
                    let since = shared.updated.lock().ok().and_then(|t| t.map(|t| t.elapsed().as_secs_f64())).unwrap_or(0.0);
                    let pos = secs(shared.position.load(Ordering::Relaxed)) + since;
                    let now = shared.source_up.load(Ordering::Relaxed)
                        && !shared.speaking.load(Ordering::Relaxed)
                        && shared.hearing.load(Ordering::Relaxed)
                        && gate.is_open(pos);
                    if listening != Some(now) {
                        listening = Some(now);
                        if let Err(e) = listening_pub.publish(&Bool { data: now }) {
                            tracing::error!(error = %e, "cannot publish /rosa/stt/listening");
                        }
                    }
                }
                r = params_rx.changed() => {
                    if r.is_err() {
                        continue;
                    }
                    let next = params_rx.borrow_and_update().clone();
                    if (&next.wake_word, next.wake_window_sec) != (&params.wake_word, params.wake_window_sec) {
                        // A new gate: a window opened by the old wake word closes.
                        gate = WakeGate::new(&next.wake_word, next.wake_window_sec);
                        tracing::info!(wake_word = %next.wake_word, window_sec = next.wake_window_sec, "new wake word settings");
                    }
                    params = next;
                }
                _ = &mut shutdown => {
                    tracing::info!("stt shutting down");
                    break;
                }
            }
        }
        Ok(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    spinner.stop();
    result
}
