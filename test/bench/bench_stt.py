#!/usr/bin/env python3
"""Benchmark of the stt node: latency, real-time factor, CPU while listening to silence.

    ./rosa bench stt [--runs 12] [--end-silence 1.5] [--cpu-secs 20] [--json OUT]

The real `stt` binary with the model ./rosa setup made (whisper tiny.en), real DDS on loopback.

1. Latency. An rclpy peer streams audio in real time (20 ms AudioData chunks on a topic, as a
   microphone driver would): 2-second commands spoken by espeak-ng, each followed by silence.
   "End of speech" is when the last sample of the command was captured (streamed); the
   transcript's arrival at the peer ends the measurement. Reported:
   - speech end -> transcript: what the user waits for; it includes the end-of-speech silence
     (`vad.end_silence_sec`, 1.5 s by default) that the endpointer needs to decide the user is done;
   - endpoint -> transcript: from that decision to the transcript being published (whisper, the
     queue, publishing), measured in the node (its log).
2. Real-time factor: whisper's time / the utterance's duration, per utterance.
3. CPU: the node listening to silence in real time, from a 48 kHz stereo WAV (read, down-mixed,
   resampled, VAD) and from 16 kHz AudioData on a topic; user+system time from /proc over
   --cpu-secs, as % of one core.
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from array import array
from pathlib import Path

DOMAIN = int(os.environ.get("ROSA_BENCH_DOMAIN", "101"))
os.environ["ROS_DOMAIN_ID"] = str(DOMAIN)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test/: conftest and support/

import numpy as np  # noqa: E402

from conftest import ROOT, Graph, Peer, wait_until  # noqa: E402
from rosa_interfaces.msg import AudioData, Transcript  # noqa: E402
from support.speech import RATE, say, silence, words, write_wav  # noqa: E402

PHRASES = [
    "turn your head to the left", "wake up and look at me", "what do you see in front of you",
    "turn to the right and stop", "describe what you see", "reset your head position",
    "go to sleep now please", "look down at the table", "play a happy emotion", "shake your head slowly",
]
LOG_RE = re.compile(r'transcript published text=(.*?) wake_word=\w+ audio_sec="([\d.]+)" whisper_sec="([\d.]+)" '
                    r'rtf="([\d.]+)" endpoint_to_publish_sec="([\d.]+)"')
TICKS = os.sysconf("SC_CLK_TCK")


def two_seconds(text):
    """The phrase spoken so that it lasts about 2 s (espeak-ng's rate scaled)."""
    d = len(say(text)) / RATE
    wpm = int(min(260, max(80, round(150 * d / 2.0))))
    return say(text, wpm=wpm)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))]


def cpu_seconds(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICKS  # utime, stime


def rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Streamer:
    """Streams int16 mono audio on a topic at real-time pace; remembers when each sample went out."""

    def __init__(self, peer, topic, rate=RATE, chunk_ms=20):
        self.pub = peer.publisher(topic, AudioData)
        self.rate, self.n = rate, rate * chunk_ms // 1000
        self.t0 = None
        self.sent = 0  # samples

    def send(self, x):
        if self.t0 is None:
            self.t0 = time.monotonic()
        for i in range(0, len(x), self.n):
            c = np.asarray(x[i:i + self.n], dtype=np.int16)
            delay = self.t0 + (self.sent + len(c)) / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.pub.publish(AudioData(sample_rate=self.rate, channels=1, samples=array("h", c.tobytes())))
            self.sent += len(c)

    def now_sample_time(self):
        """Monotonic time at which the next sample is captured."""
        return self.t0 + self.sent / self.rate


def start(graph, **params):
    params.setdefault("wake_word", "''")
    proc = graph.start("stt", **params)
    wait_until(lambda: "stt ready" in graph.log("stt") or proc.poll() is not None, 60, "the stt node")
    if proc.poll() is not None:
        sys.exit(f"the stt node failed to start:\n{graph.log('stt')}")
    return proc


def bench_latency(tmp, runs, end_silence, extra):
    graph = Graph(tmp, DOMAIN, "http://127.0.0.1:9/v1", {})
    peer = Peer(DOMAIN)
    try:
        peer.listen("/rosa/stt/transcript", Transcript)
        start(graph, audio_source="topic:/bench/audio", **{"vad.end_silence_sec": end_silence, **extra})
        s = Streamer(peer, "/bench/audio")
        s.send(silence(1.0))
        rows = []
        for i in range(runs):
            phrase = PHRASES[i % len(PHRASES)]
            clip = two_seconds(phrase)
            s.send(clip)
            speech_end = s.now_sample_time()
            have = len(peer.received("/rosa/stt/transcript"))
            deadline = time.monotonic() + end_silence + 8.0
            while len(peer.received("/rosa/stt/transcript")) == have and time.monotonic() < deadline:
                s.send(silence(0.1))
            got = peer.received_at("/rosa/stt/transcript")[have:]
            if not got:
                print(f"  run {i + 1}: no transcript for {phrase!r}")
                continue
            t, msg = got[0]
            rows.append({"phrase": phrase, "text": msg.text, "clip_sec": len(clip) / RATE, "speech_end_to_transcript": t - speech_end})
            s.send(silence(0.5))
        time.sleep(0.5)
        logged = LOG_RE.findall(graph.log("stt"))
        for row, (text, audio, whisper, rtf, endpoint) in zip(rows, logged):
            row.update(audio_sec=float(audio), whisper_sec=float(whisper), rtf=float(rtf), endpoint_to_publish=float(endpoint))
        return rows
    finally:
        graph.stop()
        peer.close()


def bench_cpu(tmp, secs):
    out = {}
    # 1. A 48 kHz stereo WAV of silence, played in real time (a microphone's worth of work).
    wav = tmp / "silence-48k-stereo.wav"
    write_wav(wav, np.zeros(int((secs + 15) * 48000) * 2, dtype=np.int16), rate=48000, channels=2)
    (tmp / "file").mkdir(exist_ok=True)
    graph = Graph(tmp / "file", DOMAIN, "http://127.0.0.1:9/v1", {})
    peer = Peer(DOMAIN)
    try:
        peer.listen("/rosa/stt/transcript", Transcript)  # the file plays once someone listens
        proc = start(graph, audio_source=f"file:{wav}", file_realtime="true")
        time.sleep(3.0)
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(secs)
        out["file_48k_stereo"] = 100 * (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
        out["rss_mb"] = rss_mb(proc.pid)
    finally:
        graph.stop()
    # 2. 16 kHz mono silence streamed on a topic.
    (tmp / "topic").mkdir(exist_ok=True)
    graph = Graph(tmp / "topic", DOMAIN, "http://127.0.0.1:9/v1", {})
    try:
        proc = start(graph, audio_source="topic:/bench/silence")
        s = Streamer(peer, "/bench/silence", rate=16000)
        s.send(silence(2.0, rate=16000))
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        s.send(silence(secs, rate=16000))
        out["topic_16k_mono"] = 100 * (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
    finally:
        graph.stop()
        peer.close()
    return out


def main():
    p = argparse.ArgumentParser(description="stt benchmark: latency, real-time factor, CPU on silence")
    p.add_argument("--runs", type=int, default=12, help="2-second utterances (default 12)")
    p.add_argument("--end-silence", type=float, default=1.5, help="vad.end_silence_sec (default 1.5, the seed's)")
    p.add_argument("--cpu-secs", type=float, default=20.0, help="seconds of silence to measure CPU over")
    p.add_argument("--param", "-p", action="append", default=[], metavar="NAME:=VALUE",
                   help="another stt parameter for the latency runs, e.g. -p vad.early_transcribe_sec:=0.3")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU measurement")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    model = ROOT / ".rosa" / "models" / "ggml-tiny.en.bin"
    if not model.is_file():
        sys.exit(f"{model} is missing: run ./rosa setup")

    tmp = Path(tempfile.mkdtemp(prefix="rosa-bench-stt-"))
    try:
        print(f"stt benchmark: whisper tiny.en, {os.cpu_count()} cores, ROS_DOMAIN_ID={DOMAIN}, "
              f"load average {os.getloadavg()[0]:.2f}")
        extra = dict(kv.split(":=", 1) for kv in args.param)
        rows = bench_latency(tmp, args.runs, args.end_silence, extra)
        cpu = None if args.no_cpu else bench_cpu(tmp, args.cpu_secs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def stats(key, unit="s"):
        xs = [r[key] for r in rows if key in r]
        return {"p50": pct(xs, 50), "p95": pct(xs, 95), "max": max(xs), "n": len(xs)} if xs else None

    res = {
        "runs": args.runs, "transcribed": len(rows), "end_silence_sec": args.end_silence, "params": args.param,
        "clip_sec_mean": float(np.mean([r["clip_sec"] for r in rows])) if rows else None,
        "speech_end_to_transcript_sec": stats("speech_end_to_transcript"),
        "endpoint_to_transcript_sec": stats("endpoint_to_publish"),
        "whisper_sec": stats("whisper_sec"),
        "rtf": stats("rtf"),
        "cpu_percent_of_a_core_on_silence": cpu,
        "word_errors": sum(1 for r in rows if words(r["text"]) != words(r["phrase"])),
        "rows": rows,
    }
    print(f"\n{len(rows)}/{args.runs} utterances of {res['clip_sec_mean'] or 0:.2f} s on average transcribed "
          f"({res['word_errors']} not word-perfect)")
    for label, key in [("speech end -> transcript at the peer", "speech_end_to_transcript_sec"),
                       ("endpoint -> transcript published", "endpoint_to_transcript_sec"),
                       ("whisper time per utterance", "whisper_sec"), ("real-time factor", "rtf")]:
        st = res[key]
        if st:
            print(f"  {label:40} p50 {st['p50']:.3f}  p95 {st['p95']:.3f}  max {st['max']:.3f}")
    print(f"  (speech end -> transcript includes vad.end_silence_sec = {args.end_silence} s)")
    if cpu:
        print(f"  CPU listening to silence: {cpu['file_48k_stereo']:.1f} % of a core (48 kHz stereo WAV), "
              f"{cpu['topic_16k_mono']:.1f} % (16 kHz topic); RSS {cpu['rss_mb']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
        print(f"results in {args.json}")


if __name__ == "__main__":
    main()
