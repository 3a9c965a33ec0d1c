//! Audio sources that run in threads of their own and hand [`Input`]s to the listening thread:
//! a WAV file (in real time, or as fast as it is consumed) and an input device (cpal). The
//! `topic:` source is ROS wiring (`crate::nodes::stt`) and sends the same [`Input`]s.

use super::audio::{AudioError, Chunk, Wav};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// What the listening thread receives, in order.
#[derive(Debug)]
pub enum Input {
    Audio(Chunk),
    /// The source has ended (a file): finish the utterance in progress.
    End,
}

/// Chunks of this length are sent by the file source.
pub const CHUNK_MS: u64 = 20;

/// Play a WAV file (read with [`super::audio::read_wav`]) into `tx`: at real-time pace, or as
/// fast as `tx` takes it (then the chunks' capture times are the file's own timeline starting
/// now). `path` is for the log.
pub fn spawn_file(wav: Wav, path: PathBuf, realtime: bool, tx: SyncSender<Input>, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    let secs = wav.duration_secs();
    std::thread::Builder::new()
        .name("audio-file".into())
        .spawn(move || {
            let ch = wav.channels.max(1) as usize;
            let per_chunk = (wav.rate as u64 * CHUNK_MS / 1000).max(1) as usize * ch;
            let t0 = Instant::now();
            let wall0 = SystemTime::now();
            let mut sent_frames = 0u64;
            for c in wav.samples.chunks(per_chunk) {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                sent_frames += (c.len() / ch) as u64;
                let offset = Duration::from_secs_f64(sent_frames as f64 / wav.rate as f64);
                if realtime {
                    // Sleep until the chunk's last sample "has been captured" (no drift).
                    if let Some(wait) = offset.checked_sub(t0.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                let end = if realtime { SystemTime::now() } else { wall0 + offset };
                let chunk = Chunk { samples: c.to_vec(), channels: wav.channels, rate: wav.rate, end };
                if tx.send(Input::Audio(chunk)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Input::End);
            tracing::info!(path = %path.display(), secs = format!("{secs:.1}"), "audio file played to the end");
        })
}

/// A running input device; capture stops when this is dropped.
pub struct Device {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub name: String,
    pub rate: u32,
    pub channels: u16,
    /// Chunks the listening thread could not take in time (dropped).
    pub overruns: Arc<AtomicU64>,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Open an input device (`None`: the default one) with cpal and send what it captures to `tx`.
/// The stream lives in a thread of its own (cpal streams cannot move between threads); an
/// error opening it comes back here.
pub fn open_device(name: Option<String>, tx: SyncSender<Input>) -> Result<Device, AudioError> {
    let stop = Arc::new(AtomicBool::new(false));
    let overruns = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(String, u32, u16), AudioError>>();
    let (flag, over) = (stop.clone(), overruns.clone());
    let thread = std::thread::Builder::new()
        .name("audio-device".into())
        .spawn(move || {
            let stream = match build_stream(name, tx, over) {
                Ok((stream, info)) => {
                    let _ = ready_tx.send(Ok(info));
                    stream
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(stream);
        })
        .expect("spawn the audio device thread");
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok((name, rate, channels))) => Ok(Device { stop, thread: Some(thread), name, rate, channels, overruns }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            stop.store(true, Ordering::Relaxed);
            Err(AudioError::Device("the audio system did not open the device within 10 s".into()))
        }
    }
}

fn build_stream(name: Option<String>, tx: SyncSender<Input>, overruns: Arc<AtomicU64>) -> Result<(cpal::Stream, (String, u32, u16)), AudioError> {
    use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
    let dev_err = |what: &str, e: &dyn std::fmt::Display| AudioError::Device(format!("{what}: {e}"));
    let host = cpal::default_host();
    let device = match &name {
        None => host.default_input_device().ok_or_else(|| AudioError::Device("there is no default input device".into()))?,
        Some(n) => {
            let devices = host.input_devices().map_err(|e| dev_err("cannot list the input devices", &e))?;
            let all: Vec<cpal::Device> = devices.collect();
            let names: Vec<String> = all.iter().map(|d| d.to_string()).collect();
            all.into_iter().find(|d| d.to_string() == *n).ok_or_else(|| {
                AudioError::Device(format!("no input device named {n:?} (there are: {})", if names.is_empty() { "none".into() } else { names.join(", ") }))
            })?
        }
    };
    let label = device.to_string();
    let config = device.default_input_config().map_err(|e| dev_err(&format!("device {label:?} has no input configuration"), &e))?;
    let (rate, channels) = (config.sample_rate(), config.channels());
    let err_cb = |e: cpal::Error| tracing::warn!(error = %e, "audio input stream");
    macro_rules! stream {
        ($t:ty) => {{
            let tx = tx.clone();
            let overruns = overruns.clone();
            device.build_input_stream::<$t, _, _>(
                config.config(),
                move |data: &[$t], _: &cpal::InputCallbackInfo| {
                    use cpal::Sample;
                    let samples: Vec<f32> = data.iter().map(|s| s.to_sample::<f32>()).collect();
                    let chunk = Chunk { samples, channels, rate, end: SystemTime::now() };
                    // Never block the audio callback: a chunk the listener has no room for is lost.
                    if let Err(TrySendError::Full(_)) = tx.try_send(Input::Audio(chunk)) {
                        overruns.fetch_add(1, Ordering::Relaxed);
                    }
                },
                err_cb,
                None,
            )
        }};
    }
    use cpal::SampleFormat as F;
    let stream = match config.sample_format() {
        F::F32 => stream!(f32),
        F::I16 => stream!(i16),
        F::I32 => stream!(i32),
        F::U16 => stream!(u16),
        F::I8 => stream!(i8),
        F::U8 => stream!(u8),
        other => return Err(AudioError::Format(format!("device {label:?} delivers {other:?} samples"))),
    }
    .map_err(|e| dev_err(&format!("cannot open an input stream on {label:?}"), &e))?;
    stream.play().map_err(|e| dev_err(&format!("cannot start capturing from {label:?}"), &e))?;
    Ok((stream, (label, rate, channels)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_wav(path: &std::path::Path, secs: f64, rate: u32) {
        let spec = hound::WavSpec { channels: 1, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for _ in 0..(secs * rate as f64) as usize {
            w.write_sample(0i16).unwrap();
        }
        w.finalize().unwrap();
    }

    fn collect(rx: std::sync::mpsc::Receiver<Input>) -> (f64, bool) {
        let (mut secs, mut ended) = (0.0, false);
        for i in rx {
            match i {
                Input::Audio(c) => secs += c.duration_secs(),
                Input::End => ended = true,
            }
        }
        (secs, ended)
    }

    #[test]
    fn a_file_plays_in_real_time_or_as_fast_as_it_is_taken() {
        let dir = std::env::temp_dir().join(format!("rosa-capture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("quiet.wav");
        write_wav(&p, 0.5, 22_050);
        for realtime in [true, false] {
            let (tx, rx) = std::sync::mpsc::sync_channel(4);
            let t0 = Instant::now();
            let wav = super::super::audio::read_wav(&p).unwrap();
            assert!((wav.duration_secs() - 0.5).abs() < 1e-3);
            let h = spawn_file(wav, p.clone(), realtime, tx, Arc::new(AtomicBool::new(false))).unwrap();
            let (got, ended) = collect(rx);
            h.join().unwrap();
            let took = t0.elapsed().as_secs_f64();
            assert!((got - 0.5).abs() < 1e-3 && ended);
            if realtime {
                assert!(took >= 0.48, "real time took {took}");
            } else {
                assert!(took < 0.4, "fast took {took}");
            }
        }
    }

    #[test]
    fn a_device_that_does_not_exist_is_a_clear_error() {
        let (tx, _rx) = std::sync::mpsc::sync_channel(4);
        let e = open_device(Some("no such microphone".into()), tx).err().unwrap().to_string();
        assert!(e.starts_with("audio input device:"), "{e}");
    }
}
